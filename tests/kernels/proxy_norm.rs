//! Oracle tests for Proxy Norm: DESIGN.md's values at initialisation, the proxy
//! statistics and their backward, the standalone activation and the fused
//! LayerNorm/GroupNorm + Proxy Norm against the f64 reference at every SIMD level;
//! the reference against finite differences (dx, dγ, dβ, dβ′, dγ′ through the proxy
//! path, all three variants); fused = composition; batch independence; determinism
//! across thread counts; typed errors.

use crate::common::{Rng, abs_err, in_pool, levels, norm2, rel_err, to64};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::GradMode;
use effnet::kernels::norm::{Affine, AffineGrads, Grouping, Norm, NormDesc, NormKind};
use effnet::kernels::proxy_norm::reference::{self, Params, Setup};
use effnet::kernels::proxy_norm::{
    NormProxy, NormProxySaved, ProxyGrads, ProxyNorm, ProxyNormDesc, ProxyParams, ProxyVariant,
    Upstream,
};
use effnet::simd::with_level;

const VARIANTS: [ProxyVariant; 3] = [
    ProxyVariant::FullScale,
    ProxyVariant::DelayedScale,
    ProxyVariant::NoScale,
];

/// Parameters and upstream gradients of one case.
struct P {
    g: Vec<f32>,
    b: Vec<f32>,
    bp: Vec<f32>,
    gp: Vec<f32>,
}

impl P {
    fn random(r: &mut Rng, c: usize) -> P {
        P {
            g: r.vec(c).iter().map(|v| 1.0 + 0.4 * v).collect(),
            b: r.vec(c).iter().map(|v| 0.3 * v).collect(),
            bp: r.vec(c).iter().map(|v| 0.3 * v).collect(),
            gp: r.vec(c).iter().map(|v| 0.3 * v).collect(),
        }
    }
    fn init(c: usize) -> P {
        P {
            g: vec![1.0; c],
            b: vec![0.0; c],
            bp: vec![0.0; c],
            gp: vec![0.0; c],
        }
    }
    fn f32(&self) -> ProxyParams<'_> {
        ProxyParams {
            gamma: &self.g,
            beta: &self.b,
            beta_prime: &self.bp,
            gamma_prime: &self.gp,
        }
    }
    fn f64(&self) -> [Vec<f64>; 4] {
        [to64(&self.g), to64(&self.b), to64(&self.bp), to64(&self.gp)]
    }
}

fn params64(v: &[Vec<f64>; 4]) -> Params<'_> {
    Params {
        gamma: &v[0],
        beta: &v[1],
        beta_prime: &v[2],
        gamma_prime: &v[3],
    }
}

fn setup(d: &ProxyNormDesc) -> Setup {
    Setup {
        variant: d.variant,
        activation: d.activation,
        q: reference::quantiles(d.k),
        eps_pn: d.eps_pn as f64,
    }
}

/// Gradient buffers: `[dγ, dβ, dβ′, dγ′]`.
struct G([Vec<f32>; 4]);

impl G {
    fn new(c: usize, fill: f32) -> G {
        G([vec![fill; c], vec![fill; c], vec![fill; c], vec![fill; c]])
    }
    fn grads(&mut self, mode: GradMode) -> ProxyGrads<'_> {
        let [a, b, c, d] = &mut self.0;
        ProxyGrads {
            dgamma: a,
            dbeta: b,
            dbeta_prime: c,
            dgamma_prime: d,
            mode,
        }
    }
}

/// Results of one forward and one backward of the fused op.
struct Run {
    z: Vec<f32>,
    saved: NormProxySaved,
    dx: Vec<f32>,
    /// `[dγ, dβ, dβ′, dγ′]`, overwritten.
    g: [Vec<f32>; 4],
}

/// Forward then backward (gradients overwritten) at the calling thread's level; the
/// gradient buffers start as `fill` so that unwritten channels show.
fn forward_backward(
    op: &NormProxy,
    x: &[f32],
    p: &P,
    dz: &[f32],
    ds: Option<&[f32]>,
    fill: f32,
) -> Run {
    let n = op.x_len();
    let mut z = vec![0.0; n];
    let mut saved = op.new_saved();
    op.forward(x, p.f32(), &mut z, &mut saved).unwrap();
    let mut dx = vec![0.0; n];
    let mut g = G::new(p.g.len(), fill);
    let up = Upstream { dz, ds };
    op.backward(
        x,
        up,
        p.f32(),
        &saved,
        &mut dx,
        g.grads(GradMode::Overwrite),
    )
    .unwrap();
    Run {
        z,
        saved,
        dx,
        g: g.0,
    }
}

#[test]
fn oracle_values_at_initialisation() {
    let q = reference::quantiles(200);
    assert!((q[0] + 2.80703).abs() < 5e-6, "q_0 = {}", q[0]);
    assert!((q[199] - 2.80703).abs() < 5e-6);
    for (act, mu, v, s) in [
        (Activation::Swish, 0.206048, Some(0.310004), 1.714977),
        (Activation::Relu, 0.398451, None, 1.648373),
    ] {
        let d = ProxyNormDesc::new(5).with_activation(act);
        let p = P::init(5);
        let want = reference::stats(&setup(&d), &params64(&p.f64()));
        let pn = ProxyNorm::new(&d).unwrap();
        assert!((pn.quantiles()[0] as f64 + 2.80703).abs() < 5e-6);
        for ch in 0..5 {
            assert!(
                (want.mean[ch] - mu).abs() < 6e-7,
                "{act:?} μ {}",
                want.mean[ch]
            );
            assert!(
                (want.scale[ch] - s).abs() < 6e-7,
                "{act:?} s {}",
                want.scale[ch]
            );
            if let Some(v) = v {
                assert!(
                    (want.var[ch] - v).abs() < 6e-7,
                    "{act:?} v {}",
                    want.var[ch]
                );
            }
        }
        for level in levels() {
            let pn = pn.clone().with_level(level);
            with_level(level, || {
                let mut st = pn.new_stats();
                pn.stats(p.f32(), &mut st).unwrap();
                for ch in 0..5 {
                    assert!((st.mean[ch] as f64 - mu).abs() < 3e-6, "{level} {act:?} μ");
                    assert!((st.scale[ch] as f64 - s).abs() < 3e-6, "{level} {act:?} s");
                    if let Some(v) = v {
                        assert!((st.var[ch] as f64 - v).abs() < 3e-6, "{level} {act:?} v");
                    }
                }
            });
        }
    }
}

#[test]
fn proxy_statistics_and_their_backward_match_reference() {
    let mut r = Rng::new(77);
    for (i, (k, act, c)) in [
        (200, Activation::Swish, 37),
        (200, Activation::Relu, 16),
        (7, Activation::Sigmoid, 70),
        (1, Activation::Swish, 3),
        (50, Activation::Identity, 9),
        (200, Activation::Swish, 130),
    ]
    .into_iter()
    .enumerate()
    {
        let d = ProxyNormDesc::new(c).with_activation(act).with_k(k);
        let pn = ProxyNorm::new(&d).unwrap();
        let p = P::random(&mut r, c);
        let p64 = p.f64();
        let su = setup(&d);
        let want = reference::stats(&su, &params64(&p64));
        let dmu = r.vec(c);
        let ds = r.vec(c);
        let [wg, wb, wbp, wgp] =
            reference::stats_backward(&su, &params64(&p64), &want, &to64(&dmu), &to64(&ds));
        for level in levels() {
            let pn = pn.clone().with_level(level);
            with_level(level, || {
                let ctx = format!("{level} case {i} {act:?} K {k}");
                let mut st = pn.new_stats();
                pn.stats(p.f32(), &mut st).unwrap();
                assert!(rel_err(&st.mean, &want.mean) < 2e-6, "{ctx} μ");
                if k > 1 && act != Activation::Identity {
                    assert!(rel_err(&st.var, &want.var) < 1e-5, "{ctx} v");
                }
                assert!(rel_err(&st.scale, &want.scale) < 1e-5, "{ctx} s");
                let mut g = G::new(c, 3.0);
                pn.stats_backward(p.f32(), &st, &dmu, &ds, g.grads(GradMode::Overwrite))
                    .unwrap();
                for (got, want, name) in [
                    (&g.0[0], &wg, "dγ"),
                    (&g.0[1], &wb, "dβ"),
                    (&g.0[2], &wbp, "dβ′"),
                    (&g.0[3], &wgp, "dγ′"),
                ] {
                    let e = rel_err(got, want);
                    assert!(e < 2e-5, "{ctx} {name}: {e}");
                }
            });
        }
    }
}

fn random_norm(r: &mut Rng) -> NormDesc {
    let pick = |r: &mut Rng, v: &[usize]| v[(r.next_u64() % v.len() as u64) as usize];
    let batch = pick(r, &[1, 2, 3]);
    let (h, w) = (pick(r, &[1, 2, 3, 5, 7]), pick(r, &[1, 3, 4, 6]));
    let c = pick(r, &[1, 3, 8, 16, 17, 24, 33, 48]);
    let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
    match r.next_u64() % 3 {
        0 => NormDesc::layer_norm(batch, (h, w), c),
        1 => NormDesc::group_norm(batch, (h, w), c, pick(r, &divisors)),
        _ => NormDesc::group_norm(batch, (h, w), c, pick(r, &divisors))
            .with_grouping(Grouping::Strided),
    }
}

/// rstd of the set of every element (from the f64 reference), for error scales.
fn rstd_per_element(d: &NormDesc, x: &[f64]) -> Vec<f64> {
    let st = effnet::kernels::norm::reference::statistics(d, x);
    let (hw, c) = (d.h * d.w, d.channels);
    (0..x.len())
        .map(|i| {
            let (n, ch) = (i / (hw * c), i % c);
            let s = match d.kind {
                NormKind::LayerNorm => n,
                NormKind::GroupNorm { groups, grouping } => {
                    n * groups
                        + match grouping {
                            Grouping::Contiguous => ch / (c / groups),
                            Grouping::Strided => ch % groups,
                        }
                }
                NormKind::BatchNorm => ch,
            };
            1.0 / (st.1[s] + d.eps as f64).sqrt()
        })
        .collect()
}

fn check_fused(nd: &NormDesc, pd: &ProxyNormDesc, seed: u64) {
    let mut r = Rng::new(seed);
    let c = nd.channels;
    let op = NormProxy::new(nd, pd).unwrap();
    let n = op.x_len();
    let x: Vec<f32> = r.vec(n).iter().map(|v| 2.0 * v + 0.5).collect();
    let p = P::random(&mut r, c);
    let dz = r.vec(n);
    let ds = r.vec(c);
    let delayed = pd.variant == ProxyVariant::DelayedScale;
    let ds_in = delayed.then_some(&ds[..]);
    let p64 = p.f64();
    let su = setup(pd);
    let x64 = to64(&x);
    let (z_ref, st_ref) = reference::fused_forward(nd, &su, &x64, &params64(&p64));
    let ds64 = to64(&ds);
    let g_ref = reference::fused_backward(
        nd,
        &su,
        &x64,
        &to64(&dz),
        delayed.then_some(&ds64[..]),
        &params64(&p64),
    );
    // Size of the leading term of dx (r·γ·s·dz), against which one-element sets'
    // cancellation is measured.
    let lead: Vec<f64> = rstd_per_element(nd, &x64)
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let ch = i % c;
            let sc = if pd.variant == ProxyVariant::FullScale {
                st_ref.scale[ch]
            } else {
                1.0
            };
            r * p.g[ch] as f64 * sc * dz[i] as f64
        })
        .collect();
    for level in levels() {
        let op = op.clone().with_level(level);
        with_level(level, || {
            let ctx = format!("{level} {nd:?} {pd:?}");
            let Run { z, saved, dx, g } = forward_backward(&op, &x, &p, &dz, ds_in, 5.0);
            let e = rel_err(&z, &z_ref);
            assert!(e < 1e-5, "{ctx}: z {e}");
            assert!(
                rel_err(&saved.proxy.scale, &st_ref.scale) < 1e-5,
                "{ctx}: s"
            );
            let e = abs_err(&dx, &g_ref.dx) / norm2(&g_ref.dx).max(norm2(&lead));
            assert!(e < 3e-5, "{ctx}: dx {e}");
            for (got, want, name) in [
                (&g[0], &g_ref.dgamma, "dγ"),
                (&g[1], &g_ref.dbeta, "dβ"),
                (&g[2], &g_ref.dbeta_prime, "dβ′"),
                (&g[3], &g_ref.dgamma_prime, "dγ′"),
            ] {
                let e = rel_err(got, want);
                assert!(e < 3e-5, "{ctx}: {name} {e}");
            }
        });
    }
}

#[test]
fn fused_matches_reference_on_random_shapes() {
    let mut r = Rng::new(5);
    for i in 0..36 {
        let nd = random_norm(&mut r);
        let act = [Activation::Swish, Activation::Swish, Activation::Relu][i % 3];
        let pd = ProxyNormDesc::new(nd.channels)
            .with_variant(VARIANTS[(i / 3) % 3])
            .with_activation(act);
        check_fused(&nd, &pd, 1000 + i as u64);
    }
}

#[test]
fn fused_matches_reference_on_fixed_shapes() {
    let cases = [
        (NormDesc::layer_norm(2, (7, 9), 40), ProxyVariant::FullScale),
        (
            NormDesc::group_norm(3, (5, 5), 48, 4),
            ProxyVariant::DelayedScale,
        ),
        (NormDesc::layer_norm(1, (1, 1), 1), ProxyVariant::NoScale),
        // Several chunks per sample, short last chunk.
        (
            NormDesc::layer_norm(2, (23, 29), 32),
            ProxyVariant::FullScale,
        ),
        (
            NormDesc::group_norm(3, (21, 17), 48, 3).with_grouping(Grouping::Strided),
            ProxyVariant::DelayedScale,
        ),
    ];
    for (i, (nd, v)) in cases.iter().enumerate() {
        let pd = ProxyNormDesc::new(nd.channels).with_variant(*v);
        check_fused(nd, &pd, 50 + i as u64);
    }
}

#[test]
fn standalone_activation_matches_reference() {
    let mut r = Rng::new(31);
    for (i, (rows, c)) in [(1, 1), (13, 17), (50, 33), (3, 48), (1200, 24)]
        .into_iter()
        .enumerate()
    {
        for v in VARIANTS {
            let pd = ProxyNormDesc::new(c).with_variant(v);
            let pn = ProxyNorm::new(&pd).unwrap();
            let xh = r.vec(rows * c);
            let p = P::random(&mut r, c);
            let dz = r.vec(rows * c);
            let ds = r.vec(c);
            let delayed = v == ProxyVariant::DelayedScale;
            let p64 = p.f64();
            let su = setup(&pd);
            let (z_ref, _) = reference::forward(&su, &to64(&xh), &params64(&p64));
            let ds64 = to64(&ds);
            let g_ref = reference::backward(
                &su,
                &to64(&xh),
                &to64(&dz),
                delayed.then_some(&ds64[..]),
                &params64(&p64),
            );
            for level in levels() {
                let pn = pn.clone().with_level(level);
                with_level(level, || {
                    let ctx = format!("{level} case {i} {v:?}");
                    let mut z = vec![0.0; xh.len()];
                    let mut st = pn.new_stats();
                    pn.forward(&xh, p.f32(), &mut z, &mut st).unwrap();
                    assert!(rel_err(&z, &z_ref) < 1e-5, "{ctx}: z");
                    let mut dxh = vec![0.0; xh.len()];
                    let mut g = G::new(c, 0.0);
                    let up = Upstream {
                        dz: &dz,
                        ds: delayed.then_some(&ds[..]),
                    };
                    pn.backward(
                        &xh,
                        up,
                        p.f32(),
                        &st,
                        &mut dxh,
                        g.grads(GradMode::Overwrite),
                    )
                    .unwrap();
                    assert!(rel_err(&dxh, &g_ref.dx) < 1e-5, "{ctx}: dx̂");
                    for (got, want) in [
                        (&g.0[0], &g_ref.dgamma),
                        (&g.0[1], &g_ref.dbeta),
                        (&g.0[2], &g_ref.dbeta_prime),
                        (&g.0[3], &g_ref.dgamma_prime),
                    ] {
                        assert!(rel_err(got, want) < 3e-5, "{ctx}: params");
                    }
                });
            }
        }
    }
}

/// The fused kernel equals LayerNorm/GroupNorm followed by the standalone activation,
/// forward and backward.
#[test]
fn fused_equals_composition() {
    let mut r = Rng::new(12);
    for (nd, v) in [
        (NormDesc::layer_norm(2, (9, 7), 24), ProxyVariant::FullScale),
        (
            NormDesc::group_norm(3, (6, 5), 32, 4).with_grouping(Grouping::Strided),
            ProxyVariant::DelayedScale,
        ),
        (NormDesc::layer_norm(4, (20, 30), 40), ProxyVariant::NoScale),
    ] {
        let c = nd.channels;
        let pd = ProxyNormDesc::new(c).with_variant(v);
        let fused = NormProxy::new(&nd, &pd).unwrap();
        let norm = Norm::new(&nd).unwrap();
        let pn = ProxyNorm::new(&pd).unwrap();
        let n = norm.x_len();
        let x = r.vec(n);
        let p = P::random(&mut r, c);
        let dz = r.vec(n);
        let ds = r.vec(c);
        let ds_in = (v == ProxyVariant::DelayedScale).then_some(&ds[..]);
        for level in levels() {
            let fused = fused.clone().with_level(level);
            let norm = norm.clone().with_level(level);
            let pn = pn.clone().with_level(level);
            with_level(level, || {
                // Composition.
                let mut xh = vec![0.0; n];
                let mut ns = norm.new_stats();
                norm.forward(&x, Affine::NONE, &mut xh, &mut ns).unwrap();
                let mut z1 = vec![0.0; n];
                let mut ps = pn.new_stats();
                pn.forward(&xh, p.f32(), &mut z1, &mut ps).unwrap();
                let mut dxh = vec![0.0; n];
                let mut g1 = G::new(c, 0.0);
                let up = Upstream { dz: &dz, ds: ds_in };
                pn.backward(
                    &xh,
                    up,
                    p.f32(),
                    &ps,
                    &mut dxh,
                    g1.grads(GradMode::Overwrite),
                )
                .unwrap();
                let mut dx1 = vec![0.0; n];
                norm.backward(
                    &x,
                    &dxh,
                    Affine::NONE,
                    &ns,
                    &mut dx1,
                    AffineGrads::default(),
                )
                .unwrap();
                // Fused.
                let mut z2 = vec![0.0; n];
                let mut saved = fused.new_saved();
                fused.forward(&x, p.f32(), &mut z2, &mut saved).unwrap();
                assert_eq!(saved.norm, ns);
                assert_eq!(saved.proxy, ps);
                let mut dx2 = vec![0.0; n];
                let mut g2 = G::new(c, 0.0);
                fused
                    .backward(
                        &x,
                        up,
                        p.f32(),
                        &saved,
                        &mut dx2,
                        g2.grads(GradMode::Overwrite),
                    )
                    .unwrap();
                let ctx = format!("{level} {nd:?} {v:?}");
                assert!(rel_err(&z2, &to64(&z1)) < 1e-6, "{ctx}: z");
                assert!(rel_err(&dx2, &to64(&dx1)) < 1e-5, "{ctx}: dx");
                for i in 0..4 {
                    assert!(rel_err(&g2.0[i], &to64(&g1.0[i])) < 1e-5, "{ctx}: grad {i}");
                }
            });
        }
    }
}

/// Central differences in f64 of L = ⟨dz, z⟩ (+ ⟨ds, s⟩ for the delayed variant)
/// through the reference forward, against the reference backward (tight) and the fast
/// backward (f32), for x, γ, β, β′, γ′.
#[test]
#[allow(clippy::needless_range_loop)]
fn backward_matches_finite_differences() {
    let shapes = [
        NormDesc::layer_norm(2, (2, 2), 3),
        NormDesc::group_norm(1, (3, 2), 4, 2),
        NormDesc::group_norm(2, (2, 1), 4, 2).with_grouping(Grouping::Strided),
    ];
    let mut case = 0;
    for nd in shapes {
        for v in VARIANTS {
            for act in [Activation::Swish, Activation::Relu] {
                case += 1;
                let c = nd.channels;
                let pd = ProxyNormDesc::new(c)
                    .with_variant(v)
                    .with_activation(act)
                    .with_k(if case % 2 == 0 { 200 } else { 17 });
                let su = setup(&pd);
                let mut r = Rng::new(900 + case);
                let n = nd.batch * nd.h * nd.w * c;
                let x = to64(&r.vec(n));
                let p = P::random(&mut r, c);
                let dz = to64(&r.vec(n));
                let ds = to64(&r.vec(c));
                let delayed = v == ProxyVariant::DelayedScale;
                let loss = |x: &[f64], p: &[Vec<f64>; 4]| -> f64 {
                    let (z, st) = reference::fused_forward(&nd, &su, x, &params64(p));
                    let mut l: f64 = z.iter().zip(&dz).map(|(a, b)| a * b).sum();
                    if delayed {
                        l += st.scale.iter().zip(&ds).map(|(a, b)| a * b).sum::<f64>();
                    }
                    l
                };
                let p64 = p.f64();
                let g = reference::fused_backward(
                    &nd,
                    &su,
                    &x,
                    &dz,
                    delayed.then_some(&ds[..]),
                    &params64(&p64),
                );
                // The fast kernel (default level) on the same data.
                let op = NormProxy::new(&nd, &pd).unwrap();
                let xf: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let dzf: Vec<f32> = dz.iter().map(|&v| v as f32).collect();
                let dsf: Vec<f32> = ds.iter().map(|&v| v as f32).collect();
                let fast = forward_backward(&op, &xf, &p, &dzf, delayed.then_some(&dsf[..]), 0.0);
                let (dxf, gf) = (fast.dx, fast.g);

                let h = 1e-6;
                let ctx = format!("{nd:?} {v:?} {act:?}");
                for j in 0..n {
                    let mut xp = x.clone();
                    xp[j] += h;
                    let up = loss(&xp, &p64);
                    xp[j] -= 2.0 * h;
                    let fd = (up - loss(&xp, &p64)) / (2.0 * h);
                    assert!(
                        (fd - g.dx[j]).abs() < 2e-6,
                        "{ctx} dx[{j}]: {fd} vs {}",
                        g.dx[j]
                    );
                    assert!((fd - dxf[j] as f64).abs() < 2e-4, "{ctx} fast dx[{j}]");
                }
                let want = [&g.dgamma, &g.dbeta, &g.dbeta_prime, &g.dgamma_prime];
                for (pi, name) in ["dγ", "dβ", "dβ′", "dγ′"].iter().enumerate() {
                    for ch in 0..c {
                        let mut pp = p64.clone();
                        pp[pi][ch] += h;
                        let up = loss(&x, &pp);
                        pp[pi][ch] -= 2.0 * h;
                        let fd = (up - loss(&x, &pp)) / (2.0 * h);
                        let w = want[pi][ch];
                        assert!((fd - w).abs() < 2e-6, "{ctx} {name}[{ch}]: {fd} vs {w}");
                        let f = gf[pi][ch] as f64;
                        assert!(
                            (fd - f).abs() < 2e-4 * (1.0 + fd.abs()),
                            "{ctx} fast {name}[{ch}]: {fd} vs {f}"
                        );
                    }
                }
            }
        }
    }
}

/// LN+PN's output for one sample ignores the rest of the batch; BatchNorm + swish's
/// does not.
#[test]
fn batch_independence() {
    let c = 16;
    let nd = NormDesc::layer_norm(3, (5, 4), c);
    let op = NormProxy::new(&nd, &ProxyNormDesc::new(c)).unwrap();
    let bn =
        Norm::new(&NormDesc::batch_norm(3, (5, 4), c).with_activation(Activation::Swish)).unwrap();
    let p = P::random(&mut Rng::new(2), c);
    let n = op.x_len();
    let per = n / 3;
    let mut x = Rng::new(3).vec(n);
    let run = |x: &[f32]| {
        let mut z = vec![0.0; n];
        let mut saved = op.new_saved();
        op.forward(x, p.f32(), &mut z, &mut saved).unwrap();
        let mut y = vec![0.0; n];
        let mut s = bn.new_stats();
        bn.forward(x, Affine::new(&p.g, &p.b), &mut y, &mut s)
            .unwrap();
        (z, y)
    };
    let (z1, y1) = run(&x);
    for v in &mut x[per..] {
        *v = 4.0 * *v - 1.0;
    }
    let (z2, y2) = run(&x);
    assert_eq!(
        z1[..per],
        z2[..per],
        "LN+PN must not depend on the other samples"
    );
    assert_ne!(y1[..per], y2[..per], "BatchNorm depends on the batch");
    assert_ne!(z1[per..], z2[per..]);
}

#[test]
fn results_do_not_depend_on_thread_count() {
    for (nd, v) in [
        (
            NormDesc::layer_norm(3, (33, 31), 24),
            ProxyVariant::FullScale,
        ),
        (
            NormDesc::layer_norm(4, (20, 21), 40),
            ProxyVariant::DelayedScale,
        ),
        (
            NormDesc::group_norm(3, (30, 30), 32, 4),
            ProxyVariant::NoScale,
        ),
        (
            NormDesc::layer_norm(1, (40, 40), 130),
            ProxyVariant::FullScale,
        ),
    ] {
        let c = nd.channels;
        let op = NormProxy::new(&nd, &ProxyNormDesc::new(c).with_variant(v)).unwrap();
        let n = op.x_len();
        let mut r = Rng::new(4);
        let x = r.vec(n);
        let p = P::random(&mut r, c);
        let dz = r.vec(n);
        let ds = r.vec(c);
        let ds_in = (v == ProxyVariant::DelayedScale).then_some(&ds[..]);
        for level in levels() {
            let op = op.clone().with_level(level);
            let run = || {
                with_level(level, || {
                    let r = forward_backward(&op, &x, &p, &dz, ds_in, 0.0);
                    (r.z, r.saved, r.dx, r.g)
                })
            };
            let one = in_pool(1, run);
            for t in [2, 8] {
                assert!(in_pool(t, run) == one, "{level} {nd:?}: {t} threads differ");
            }
        }
    }
}

#[test]
fn accumulate_adds_to_the_gradients() {
    let nd = NormDesc::layer_norm(2, (3, 3), 8);
    let op = NormProxy::new(&nd, &ProxyNormDesc::new(8)).unwrap();
    let mut r = Rng::new(6);
    let x = r.vec(op.x_len());
    let dz = r.vec(op.x_len());
    let p = P::random(&mut r, 8);
    let mut z = vec![0.0; op.x_len()];
    let mut saved = op.new_saved();
    op.forward(&x, p.f32(), &mut z, &mut saved).unwrap();
    let mut dx = vec![0.0; op.x_len()];
    let up = Upstream { dz: &dz, ds: None };
    let mut g0 = G::new(8, 0.0);
    op.backward(
        &x,
        up,
        p.f32(),
        &saved,
        &mut dx,
        g0.grads(GradMode::Overwrite),
    )
    .unwrap();
    let mut g1 = G::new(8, 1.5);
    op.backward(
        &x,
        up,
        p.f32(),
        &saved,
        &mut dx,
        g1.grads(GradMode::Accumulate),
    )
    .unwrap();
    for i in 0..4 {
        for ch in 0..8 {
            assert!((g1.0[i][ch] - 1.5 - g0.0[i][ch]).abs() < 1e-5);
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let desc_err = |r: effnet::Result<NormProxy>| matches!(r, Err(Error::InvalidDescriptor(_)));
    let ln = NormDesc::layer_norm(2, (3, 3), 8);
    let pd = ProxyNormDesc::new(8);
    assert!(desc_err(NormProxy::new(&ln, &ProxyNormDesc::new(0))));
    assert!(desc_err(NormProxy::new(&ln, &pd.with_k(0))));
    assert!(desc_err(NormProxy::new(&ln, &pd.with_eps(0.0))));
    assert!(desc_err(NormProxy::new(&ln, &pd.with_eps(f32::INFINITY))));
    assert!(desc_err(NormProxy::new(&ln, &ProxyNormDesc::new(9))));
    assert!(desc_err(NormProxy::new(
        &NormDesc::batch_norm(2, (3, 3), 8),
        &pd
    )));
    assert!(desc_err(NormProxy::new(
        &ln.with_activation(Activation::Swish),
        &pd
    )));
    assert!(desc_err(NormProxy::new(
        &NormDesc::group_norm(2, (3, 3), 8, 0),
        &pd
    )));
    assert!(desc_err(NormProxy::new(
        &NormDesc::group_norm(2, (3, 3), 8, 3),
        &pd
    )));
    assert!(matches!(
        ProxyNorm::new(&pd.with_k(0)),
        Err(Error::InvalidDescriptor(_))
    ));

    let op = NormProxy::new(&ln, &pd).unwrap();
    let n = op.x_len();
    let x = vec![0.5f32; n];
    let mut z = vec![0.0f32; n];
    let p = P::init(8);
    let mut saved = op.new_saved();
    let size = |r: effnet::Result<()>, which: &str| {
        assert!(
            matches!(r, Err(Error::BufferSize { name, .. }) if name == which),
            "{which}: {r:?}"
        )
    };
    size(op.forward(&x[1..], p.f32(), &mut z, &mut saved), "x");
    size(op.forward(&x, p.f32(), &mut z[1..], &mut saved), "z");
    let short = vec![0.0f32; 7];
    for (i, name) in ["gamma", "beta", "beta_prime", "gamma_prime"]
        .iter()
        .enumerate()
    {
        let mut pp = p.f32();
        match i {
            0 => pp.gamma = &short,
            1 => pp.beta = &short,
            2 => pp.beta_prime = &short,
            _ => pp.gamma_prime = &short,
        }
        size(op.forward(&x, pp, &mut z, &mut saved), name);
    }
    op.forward(&x, p.f32(), &mut z, &mut saved).unwrap();
    let mut dx = vec![0.0f32; n];
    let mut g = G::new(8, 0.0);
    size(
        op.backward(
            &x,
            Upstream {
                dz: &z[1..],
                ds: None,
            },
            p.f32(),
            &saved,
            &mut dx,
            g.grads(GradMode::Overwrite),
        ),
        "dz",
    );
    size(
        op.backward(
            &x,
            Upstream { dz: &z, ds: None },
            p.f32(),
            &saved,
            &mut dx[1..],
            g.grads(GradMode::Overwrite),
        ),
        "dx",
    );
    let mut bad = G([vec![0.0; 8], vec![0.0; 8], vec![0.0; 7], vec![0.0; 8]]);
    size(
        op.backward(
            &x,
            Upstream { dz: &z, ds: None },
            p.f32(),
            &saved,
            &mut dx,
            bad.grads(GradMode::Overwrite),
        ),
        "dbeta_prime",
    );
    // ds is an input of the delayed-scale variant only.
    let ds = vec![0.0f32; 8];
    assert!(matches!(
        op.backward(
            &x,
            Upstream {
                dz: &z,
                ds: Some(&ds)
            },
            p.f32(),
            &saved,
            &mut dx,
            g.grads(GradMode::Overwrite)
        ),
        Err(Error::InvalidArgument(_))
    ));
    let delayed = NormProxy::new(&ln, &pd.with_variant(ProxyVariant::DelayedScale)).unwrap();
    size(
        delayed.backward(
            &x,
            Upstream {
                dz: &z,
                ds: Some(&ds[1..]),
            },
            p.f32(),
            &saved,
            &mut dx,
            g.grads(GradMode::Overwrite),
        ),
        "ds",
    );
    let mut bad_saved = op.new_saved();
    bad_saved.proxy.scale.pop();
    size(
        op.forward(&x, p.f32(), &mut z, &mut bad_saved),
        "proxy.scale",
    );
    // The standalone activation wants whole rows.
    let pn = ProxyNorm::new(&pd).unwrap();
    let mut st = pn.new_stats();
    size(pn.forward(&x[1..], p.f32(), &mut z[1..], &mut st), "xhat");
    size(
        pn.stats_backward(p.f32(), &st, &ds[1..], &ds, g.grads(GradMode::Overwrite)),
        "dmu",
    );
}

/// The documented bound on K, channels whose per-channel state would not be
/// addressable, and workspace sizes that grow with the rows or saturate (never wrap
/// to less than a smaller problem needs): typed errors, never a panic or an abort.
#[test]
fn huge_sizes_are_typed_errors() {
    use effnet::kernels::proxy_norm::{MAX_K, ProxyPass};
    let pd = ProxyNormDesc::new(8);
    assert!(ProxyNorm::new(&pd.with_k(MAX_K)).is_ok());
    for k in [MAX_K + 1, 1 << 40, 1 << 62, usize::MAX] {
        match ProxyNorm::new(&pd.with_k(k)) {
            Err(Error::InvalidDescriptor(m)) => assert!(m.contains("maximum"), "{k}: {m}"),
            other => panic!("k = {k}: {other:?}"),
        }
        let ln = NormDesc::layer_norm(1, (1, 1), 8);
        assert!(matches!(
            NormProxy::new(&ln, &pd.with_k(k)),
            Err(Error::InvalidDescriptor(_))
        ));
    }
    // 0x01ff_0000_e106_0000 (found by the descriptors fuzz target): its per-channel
    // state fits but a one-row workspace does not; it was accepted and then every
    // workspace query failed.
    for c in [
        1usize << 62,
        usize::MAX,
        isize::MAX as usize / 32,
        0x01ff_0000_e106_0000,
    ] {
        assert!(
            matches!(
                ProxyNorm::new(&ProxyNormDesc::new(c)),
                Err(Error::Overflow(_))
            ),
            "channels = {c}"
        );
    }
    // 2^40 channels: a valid standalone plan (nothing is allocated per channel).
    let c = 1usize << 40;
    let p = ProxyNorm::new(&ProxyNormDesc::new(c)).unwrap();
    for pass in [ProxyPass::Forward, ProxyPass::Backward] {
        let small = p.workspace_len(pass, 3 * c);
        let mut last = small;
        for rows in [1usize << 10, 1 << 20, 1 << 21, 1 << 23, usize::MAX / c] {
            let len = p.workspace_len(pass, rows * c);
            assert!(len >= last, "{pass:?}: {rows} rows need {len} < {last}");
            last = len;
        }
        assert!(small >= 7 * c, "{pass:?}: {small}");
    }
    assert_eq!(
        p.workspace_len(ProxyPass::Backward, usize::MAX / c * c),
        usize::MAX,
        "saturates"
    );
    // The fused plan keeps no per-channel table either (the norm's group of a channel
    // is computed): 2^45 channels is a plan, made at once, with exact sizes.
    let h = 1usize << 45;
    let f = NormProxy::new(&NormDesc::layer_norm(1, (1, 1), h), &ProxyNormDesc::new(h))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(f.norm().x_len(), h);
}
