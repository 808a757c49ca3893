//! The IPU execution model: codelets against the f64 oracles, the graph rules
//! (tile-local vertices, memory budget), estimators monotone in work size, and a
//! B0-style block end to end.

mod common;

use common::{Rng, rel_err};
use effnet::Error;
use effnet::ipu::ProxyScale;
use effnet::ipu::codelets::{ConvGeom, NormGeom, SHIM_WORKERS};
use effnet::ipu::graph::{FieldRef, LayerInfo, Program, Strided, Transfer};
use effnet::ipu::reference::{self as oracle, NormActParams};
use effnet::ipu::{Codelet, Engine, Graph, Precision, Target};
use effnet::kernels::conv::{ConvDesc, ConvShape, Padding, reference};

const TOL: f64 = 2e-5;

fn full_geom(s: &ConvShape) -> ConvGeom {
    let d = &s.desc;
    ConvGeom {
        nb: d.batch,
        in_h0: 0,
        in_hn: d.in_h,
        in_w0: 0,
        in_wn: d.in_w,
        out_h0: 0,
        out_hn: s.out_h,
        out_w0: 0,
        out_wn: s.out_w,
        kh: d.kernel_h,
        kw: d.kernel_w,
        stride: d.stride_h,
        pad_t: d.padding.top,
        pad_l: d.padding.left,
        groups: s.groups,
        cin_g: d.group_size,
        cout_g: s.cout_per_group,
    }
}

fn random_conv(rng: &mut Rng, depthwise: bool) -> Option<ConvShape> {
    let r = |rng: &mut Rng, lo: u64, hi: u64| (lo + rng.next_u64() % (hi - lo + 1)) as usize;
    let n = r(rng, 1, 2);
    let h = r(rng, 3, 9);
    let w = r(rng, 3, 9);
    let k = [1, 3, 5][r(rng, 0, 2)];
    let stride = r(rng, 1, 2);
    let groups = r(rng, 1, 3);
    let (cig, cog) = if depthwise {
        (1, 1)
    } else {
        ([1, 2, 3, 16][r(rng, 0, 3)], [1, 2, 5, 16][r(rng, 0, 3)])
    };
    let mut d = ConvDesc::new(n, (h, w), groups * cig, groups * cog, (k, k))
        .with_group_size(cig)
        .with_stride(stride);
    d = if rng.next_u64().is_multiple_of(2) {
        d.with_padding(Padding::symmetric_for(k, k, 1))
    } else {
        d.with_tf_same_padding()
    };
    d.validate().ok()
}

#[test]
fn conv_codelets_match_the_f64_reference() {
    let mut rng = Rng::new(1);
    let mut ran = 0;
    while ran < 40 {
        let depthwise = ran % 2 == 1;
        let Some(s) = random_conv(&mut rng, depthwise) else {
            continue;
        };
        ran += 1;
        let g = full_geom(&s);
        let x = rng.vec(s.x_len);
        let w = rng.vec(s.w_len);
        let dy = rng.vec(s.y_len);
        let (fwd, bwd, wg) = if depthwise {
            (
                Codelet::dw_vmac(g),
                Codelet::dw_vmac_bwd_data(g),
                Codelet::dw_vmac_wgrad(g),
            )
        } else {
            (
                Codelet::conv_amp(g),
                Codelet::conv_amp_bwd_data(g),
                Codelet::conv_wgrad_amp(g),
            )
        };
        let mut b = vec![x.clone(), w.clone(), vec![0.0; s.y_len]];
        fwd.run_on(&mut b).unwrap();
        let e = rel_err(&b[2], &reference::forward(&s, &x, &w, None));
        assert!(e < TOL, "forward {s:?}: {e}");
        let mut b = vec![dy.clone(), w.clone(), vec![0.0; s.x_len]];
        bwd.run_on(&mut b).unwrap();
        let e = rel_err(&b[2], &reference::backward_data(&s, &dy, &w));
        assert!(e < TOL, "backward data {s:?}: {e}");
        let want = reference::backward_weight(&s, &x, &dy).0;
        if depthwise {
            let mut b = vec![x.clone(), dy.clone(), vec![0.0; SHIM_WORKERS * s.w_len]];
            wg.run_on(&mut b).unwrap();
            // The per-worker partials, then the ReducePartials vertex.
            let mut r = vec![b[2].clone(), vec![0.0; s.w_len]];
            Codelet::reduce(SHIM_WORKERS, s.w_len, false)
                .run_on(&mut r)
                .unwrap();
            let e = rel_err(&r[1], &want);
            assert!(e < TOL, "depthwise weight grad {s:?}: {e}");
        } else {
            let mut b = vec![x.clone(), dy.clone(), vec![0.0; s.w_len]];
            wg.run_on(&mut b).unwrap();
            let e = rel_err(&b[2], &want);
            assert!(e < TOL, "weight grad {s:?}: {e}");
        }
    }
}

/// A tile's block: output rows [a, b) from an input window that only covers the rows
/// those outputs read, and backward data for input rows [a, b) from the dy rows they
/// need.
#[test]
fn conv_codelets_on_partial_windows_match_the_reference_rows() {
    let mut rng = Rng::new(2);
    let mut ran = 0;
    while ran < 30 {
        let Some(s) = random_conv(&mut rng, ran % 3 == 0) else {
            continue;
        };
        let d = s.desc;
        if s.out_h < 2 || d.in_h < 2 {
            continue;
        }
        ran += 1;
        let x = rng.vec(s.x_len);
        let w = rng.vec(s.w_len);
        let dy = rng.vec(s.y_len);
        let (st, pt, k) = (d.stride_h, d.padding.top, d.kernel_h);
        let ci = d.in_channels;
        let co = d.out_channels;
        // Forward: output rows [a, b).
        let a = (rng.next_u64() as usize) % s.out_h;
        let b = a + 1 + (rng.next_u64() as usize) % (s.out_h - a);
        let lo = (a * st).saturating_sub(pt);
        let hi = ((b - 1) * st + k).saturating_sub(pt).min(d.in_h);
        let mut g = full_geom(&s);
        g.in_h0 = lo;
        g.in_hn = hi - lo;
        g.out_h0 = a;
        g.out_hn = b - a;
        let mut win = Vec::new();
        for n in 0..d.batch {
            win.extend_from_slice(
                &x[(n * d.in_h + lo) * d.in_w * ci..(n * d.in_h + hi) * d.in_w * ci],
            );
        }
        let mut buf = vec![win.clone(), w.clone(), vec![0.0; g.out_len()]];
        Codelet::conv_amp(g).run_on(&mut buf).unwrap();
        let full = reference::forward(&s, &x, &w, None);
        let mut want = Vec::new();
        for n in 0..d.batch {
            want.extend_from_slice(
                &full[(n * s.out_h + a) * s.out_w * co..(n * s.out_h + b) * s.out_w * co],
            );
        }
        let e = rel_err(&buf[2], &want);
        assert!(e < TOL, "partial forward {s:?} rows {a}..{b}: {e}");
        // Backward data: input rows [a, b) from dy rows [oa, ob).
        let a = (rng.next_u64() as usize) % d.in_h;
        let b = a + 1 + (rng.next_u64() as usize) % (d.in_h - a);
        let oa = (a + pt).saturating_sub(k - 1).div_ceil(st).min(s.out_h);
        let ob = ((b - 1 + pt) / st + 1).min(s.out_h).max(oa);
        let mut g = full_geom(&s);
        g.in_h0 = a;
        g.in_hn = b - a;
        g.out_h0 = oa;
        g.out_hn = ob - oa;
        let mut dwin = Vec::new();
        for n in 0..d.batch {
            dwin.extend_from_slice(
                &dy[(n * s.out_h + oa) * s.out_w * co..(n * s.out_h + ob) * s.out_w * co],
            );
        }
        let mut buf = vec![dwin, w.clone(), vec![0.0; g.in_len()]];
        Codelet::conv_amp_bwd_data(g).run_on(&mut buf).unwrap();
        let full = reference::backward_data(&s, &dy, &w);
        let mut want = Vec::new();
        for n in 0..d.batch {
            want.extend_from_slice(
                &full[(n * d.in_h + a) * d.in_w * ci..(n * d.in_h + b) * d.in_w * ci],
            );
        }
        let e = rel_err(&buf[2], &want);
        assert!(e < TOL, "partial backward data {s:?} rows {a}..{b}: {e}");
    }
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Runs the normalization codelets in the order the layers use them and returns
/// (z, dx, [dγ, dβ, dβ', dγ'] per channel). With a delayed proxy scale, `z` is the
/// norm's `a − μ` times the scale `s` applied after it (as the SE gate does), and `dz`
/// is the gradient of that product: the scale's gradient `Σ dz·(a−μ)` is computed
/// outside the norm codelets and handed to `ProxyNormParamGrad` in `sums[c][0]`.
#[allow(clippy::too_many_arguments)]
fn run_norm_codelets(
    p: &NormActParams,
    x: &[f32],
    params: [&[f32]; 4],
    q: &[f32],
    dz: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, pix, c, cg) = (p.n, p.pix, p.c, p.cg);
    let mut b = vec![x.to_vec(), vec![0.0; n * c * 2]];
    Codelet::norm_stats(n, pix, c).run_on(&mut b).unwrap();
    let (rows, count) = if p.per_sample {
        (n, pix * cg)
    } else {
        (1, n * pix * cg)
    };
    let mut sums = b[1].clone();
    if !p.per_sample {
        let mut r = vec![sums.clone(), vec![0.0; c * 2]];
        Codelet::reduce(n, c * 2, false).run_on(&mut r).unwrap();
        sums = r[1].clone();
    }
    let mut f = vec![sums, vec![0.0; rows * (c / cg) * 2]];
    Codelet::norm_finalize(rows, c, cg, count, p.eps as f32)
        .run_on(&mut f)
        .unwrap();
    let stats = f[1].clone();
    // Proxy statistics over two quantile slices (as on two tiles), each with per-worker
    // partials, reduced together, then finalized.
    let half = q.len() / 2;
    let slices = [&q[..half], &q[half..]];
    let (mu, s) = if p.proxy {
        let mut parts = Vec::new();
        for qs in slices {
            let mut b = vec![
                params[0].to_vec(),
                params[1].to_vec(),
                params[2].to_vec(),
                params[3].to_vec(),
                qs.to_vec(),
                vec![0.0; SHIM_WORKERS * c * 2],
            ];
            Codelet::proxy_stats(c, qs.len(), p.act)
                .run_on(&mut b)
                .unwrap();
            parts.extend_from_slice(&b[5]);
        }
        let mut r = vec![parts, vec![0.0; c * 2]];
        Codelet::reduce(2 * SHIM_WORKERS, c * 2, false)
            .run_on(&mut r)
            .unwrap();
        let mut f = vec![r[1].clone(), vec![0.0; c], vec![0.0; c]];
        Codelet::proxy_finalize(c, q.len(), p.eps_pn as f32)
            .run_on(&mut f)
            .unwrap();
        (f[1].clone(), f[2].clone())
    } else {
        (vec![0.0; c], vec![1.0; c])
    };
    let geom = NormGeom {
        nb: n,
        pix,
        c,
        c0: 0,
        groups: c / cg,
        cg,
        per_sample: p.per_sample,
        act: p.act,
    };
    let full = p.scale == ProxyScale::Full;
    let vertex_scale = if full { s.clone() } else { vec![1.0; c] };
    let common = |extra: Vec<Vec<f32>>| {
        let mut v = vec![
            x.to_vec(),
            stats.clone(),
            params[0].to_vec(),
            params[1].to_vec(),
            mu.clone(),
            vertex_scale.clone(),
        ];
        v.extend(extra);
        v
    };
    let mut b = common(vec![vec![0.0; x.len()]]);
    Codelet::norm_act(geom).run_on(&mut b).unwrap();
    let mut z = b[6].clone();
    let delayed = p.scale == ProxyScale::Delayed;
    // Delayed: the gradient reaching the norm is dz·s, the scale's is Σ dz·(a−μ).
    let mut dz_in = dz.to_vec();
    let mut ds = vec![0.0f32; c];
    if delayed {
        for (i, (zi, d)) in z.iter_mut().zip(dz_in.iter_mut()).enumerate() {
            ds[i % c] += *d * *zi;
            *zi *= s[i % c];
            *d *= s[i % c];
        }
    }
    let mut b = common(vec![dz_in, vec![0.0; n * c * 2], vec![0.0; c * 4]]);
    Codelet::norm_act_grad_partials(geom)
        .run_on(&mut b)
        .unwrap();
    let mut per_image = b[7].clone();
    let mut per_channel = b[8].clone();
    if delayed {
        for ch in 0..c {
            per_channel[ch * 4] = ds[ch];
        }
    }
    if !p.per_sample {
        let mut r = vec![per_image.clone(), vec![0.0; c * 2]];
        Codelet::reduce(n, c * 2, false).run_on(&mut r).unwrap();
        per_image = r[1].clone();
    }
    let mut f = vec![per_image, vec![0.0; rows * (c / cg) * 2]];
    Codelet::norm_grad_finalize(rows, c, cg, count)
        .run_on(&mut f)
        .unwrap();
    let dz_in: Vec<f32> = if delayed {
        dz.iter().enumerate().map(|(i, d)| d * s[i % c]).collect()
    } else {
        dz.to_vec()
    };
    let mut b = common(vec![dz_in, f[1].clone(), vec![0.0; x.len()]]);
    Codelet::norm_act_grad_apply(geom).run_on(&mut b).unwrap();
    let dx = b[8].clone();
    let mut parts = Vec::new();
    for qs in slices {
        let mut b = vec![
            per_channel.clone(),
            params[0].to_vec(),
            params[1].to_vec(),
            params[2].to_vec(),
            params[3].to_vec(),
            qs.to_vec(),
            mu.clone(),
            s.clone(),
            vec![0.0; SHIM_WORKERS * c * 3],
        ];
        Codelet::proxy_param_grad(c, qs.len(), q.len(), p.act, p.scale)
            .run_on(&mut b)
            .unwrap();
        parts.extend_from_slice(&b[8]);
    }
    let mut r = vec![parts, vec![0.0; c * 3]];
    Codelet::reduce(2 * SHIM_WORKERS, c * 3, false)
        .run_on(&mut r)
        .unwrap();
    let mut b = vec![
        per_channel,
        params[0].to_vec(),
        r[1].clone(),
        vec![0.0; c * 4],
    ];
    Codelet::proxy_grad_finalize(c, p.proxy)
        .run_on(&mut b)
        .unwrap();
    (z, dx, b[3].clone())
}

#[test]
fn norm_and_proxy_norm_codelets_match_f64_forward_and_finite_differences() {
    let mut rng = Rng::new(3);
    let k = 16;
    let q64 = oracle::proxy_quantiles(k);
    let q: Vec<f32> = q64.iter().map(|&v| v as f32).collect();
    // (n, pix, c, cg, per_sample, act, proxy, scale): GN+swish, LN+PN (full, delayed
    // and no scale), LN γ-only (projection), BN+swish.
    use ProxyScale::{Delayed, Full, None as NoScale};
    let cases = [
        (2, 5, 8, 2, true, 1, false, Full),
        (2, 6, 5, 5, true, 1, true, Full),
        (2, 6, 5, 5, true, 1, true, Delayed),
        (1, 5, 7, 7, true, 1, true, NoScale),
        (1, 7, 6, 6, true, 0, false, Full),
        (3, 4, 4, 1, false, 1, false, Full),
        (2, 3, 12, 4, true, 1, true, Full),
        (2, 3, 12, 12, true, 1, true, Delayed),
    ];
    for (n, pix, c, cg, per_sample, act, proxy, scale) in cases {
        let p = NormActParams {
            n,
            pix,
            c,
            cg,
            per_sample,
            act,
            proxy,
            scale,
            eps: 1e-3,
            eps_pn: 0.03,
            q: q64.clone(),
        };
        let x: Vec<f32> = rng.vec(n * pix * c).iter().map(|v| 2.0 * v + 0.3).collect();
        let gamma: Vec<f32> = rng.vec(c).iter().map(|v| 1.0 + 0.3 * v).collect();
        let beta: Vec<f32> = rng.vec(c).iter().map(|v| 0.3 * v).collect();
        let (beta2, gamma2): (Vec<f32>, Vec<f32>) = if proxy {
            (
                rng.vec(c).iter().map(|v| 0.2 * v).collect(),
                rng.vec(c).iter().map(|v| 0.2 * v).collect(),
            )
        } else {
            (vec![0.0; c], vec![0.0; c])
        };
        let dz = rng.vec(x.len());
        let (z, dx, grads) = run_norm_codelets(&p, &x, [&gamma, &beta, &beta2, &gamma2], &q, &dz);
        let (x64, g64, b64, b264, g264) = (
            to64(&x),
            to64(&gamma),
            to64(&beta),
            to64(&beta2),
            to64(&gamma2),
        );
        // The f64 output, times the delayed scale when there is one.
        let out64 = |x: &[f64], g: &[f64], b: &[f64], b2: &[f64], g2: &[f64]| -> Vec<f64> {
            let z = oracle::norm_act_forward(&p, x, g, b, b2, g2);
            if scale != Delayed {
                return z;
            }
            let s: Vec<f64> = (0..c)
                .map(|ch| oracle::proxy_stats(g[ch], b[ch], b2[ch], g2[ch], &q64, act, 0.03).1)
                .collect();
            z.iter().enumerate().map(|(i, v)| v * s[i % c]).collect()
        };
        let want = out64(&x64, &g64, &b64, &b264, &g264);
        let e = rel_err(&z, &want);
        assert!(e < TOL, "forward {p:?}: {e}");
        // L = Σ dz·z; central differences in f64.
        let dz64 = to64(&dz);
        let loss = |x: &[f64], g: &[f64], b: &[f64], b2: &[f64], g2: &[f64]| -> f64 {
            out64(x, g, b, b2, g2)
                .iter()
                .zip(&dz64)
                .map(|(a, b)| a * b)
                .sum()
        };
        let h = 1e-6;
        let fd = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
            let mut a = v.to_vec();
            a[i] += h;
            let up = f(&a);
            a[i] -= 2.0 * h;
            (up - f(&a)) / (2.0 * h)
        };
        let want_dx: Vec<f64> = (0..x.len())
            .map(|i| fd(&x64, i, &|v| loss(v, &g64, &b64, &b264, &g264)))
            .collect();
        let e = rel_err(&dx, &want_dx);
        assert!(e < 1e-4, "dx {p:?}: {e}");
        let mut want_g = vec![0.0; c * 4];
        for ch in 0..c {
            want_g[ch * 4] = fd(&g64, ch, &|v| loss(&x64, v, &b64, &b264, &g264));
            want_g[ch * 4 + 1] = fd(&b64, ch, &|v| loss(&x64, &g64, v, &b264, &g264));
            if proxy {
                want_g[ch * 4 + 2] = fd(&b264, ch, &|v| loss(&x64, &g64, &b64, v, &g264));
                want_g[ch * 4 + 3] = fd(&g264, ch, &|v| loss(&x64, &g64, &b64, &b264, v));
            }
        }
        let e = rel_err(&grads, &want_g);
        assert!(e < 1e-4, "param grads {p:?}: {e}");
    }
}

#[test]
fn proxy_norm_statistics_match_the_published_oracle() {
    let q = oracle::proxy_quantiles(200);
    assert!((q[0] - -2.80703).abs() < 1e-5, "q0 = {}", q[0]);
    let (m, s) = oracle::proxy_stats(1.0, 0.0, 0.0, 0.0, &q, 1, 0.03);
    assert!(
        (m - 0.206048).abs() < 1e-6 && (s - 1.714977).abs() < 1e-6,
        "{m} {s}"
    );
    let v = 1.0 / (s * s) - 0.03;
    assert!((v - 0.310004).abs() < 1e-6);
    let qf: Vec<f32> = q.iter().map(|&v| v as f32).collect();
    let mut b = vec![
        vec![1.0],
        vec![0.0],
        vec![0.0],
        vec![0.0],
        qf,
        vec![0.0; SHIM_WORKERS * 2],
    ];
    Codelet::proxy_stats(1, 200, 1).run_on(&mut b).unwrap();
    let mut r = vec![b[5].clone(), vec![0.0; 2]];
    Codelet::reduce(SHIM_WORKERS, 2, false)
        .run_on(&mut r)
        .unwrap();
    let mut f = vec![r[1].clone(), vec![0.0], vec![0.0]];
    Codelet::proxy_finalize(1, 200, 0.03)
        .run_on(&mut f)
        .unwrap();
    assert!(
        (f[1][0] as f64 - 0.206048).abs() < 1e-5 && (f[2][0] as f64 - 1.714977).abs() < 1e-4,
        "{f:?}"
    );
}

#[test]
fn elementwise_codelets_match_f64() {
    let mut rng = Rng::new(4);
    let (nb, pix, c) = (2, 5, 7);
    let n = nb * pix * c;
    let x = rng.vec(n);
    let bias = rng.vec(c);
    let dy = rng.vec(n);
    for a in 0..3u32 {
        let mut b = vec![x.clone(), bias.clone(), vec![0.0; n]];
        Codelet::bias_act(nb * pix, c, a).run_on(&mut b).unwrap();
        let want: Vec<f64> = (0..n)
            .map(|i| oracle::act(a, x[i] as f64 + bias[i % c] as f64))
            .collect();
        assert!(rel_err(&b[2], &want) < TOL);
        let mut b = vec![x.clone(), bias.clone(), dy.clone(), vec![0.0; n]];
        Codelet::bias_act_grad(nb * pix, c, a)
            .run_on(&mut b)
            .unwrap();
        let h = 1e-6;
        let want: Vec<f64> = (0..n)
            .map(|i| {
                let u = x[i] as f64 + bias[i % c] as f64;
                dy[i] as f64 * (oracle::act(a, u + h) - oracle::act(a, u - h)) / (2.0 * h)
            })
            .collect();
        assert!(rel_err(&b[3], &want) < 1e-5);
    }
    let gate = rng.vec(nb * c);
    let mut b = vec![x.clone(), gate.clone(), vec![0.0; n]];
    Codelet::se_gate(nb, pix, c).run_on(&mut b).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| x[i] as f64 * gate[(i / (pix * c)) * c + i % c] as f64)
        .collect();
    assert!(rel_err(&b[2], &want) < TOL);
    let mut b = vec![
        x.clone(),
        gate.clone(),
        dy.clone(),
        vec![0.0; n],
        vec![0.0; nb * c],
    ];
    Codelet::se_gate_grad(nb, pix, c).run_on(&mut b).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| dy[i] as f64 * gate[(i / (pix * c)) * c + i % c] as f64)
        .collect();
    assert!(rel_err(&b[3], &want) < TOL);
    let mut wg = vec![0.0f64; nb * c];
    for i in 0..n {
        wg[(i / (pix * c)) * c + i % c] += dy[i] as f64 * x[i] as f64;
    }
    assert!(rel_err(&b[4], &wg) < TOL);
    let mut b = vec![x.clone(), vec![0.0; nb * c]];
    Codelet::channel_sum(nb, pix, c, 0.5)
        .run_on(&mut b)
        .unwrap();
    let mut want = vec![0.0f64; nb * c];
    for i in 0..n {
        want[(i / (pix * c)) * c + i % c] += 0.5 * x[i] as f64;
    }
    assert!(rel_err(&b[1], &want) < TOL);
    let mut b = vec![gate.clone(), vec![0.0; n]];
    Codelet::pool_grad(nb, pix, c, 0.25).run_on(&mut b).unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| 0.25 * gate[(i / (pix * c)) * c + i % c] as f64)
        .collect();
    assert!(rel_err(&b[1], &want) < TOL);
    let mut b = vec![x.clone(), dy.clone(), vec![0.0; n]];
    Codelet::add(n).run_on(&mut b).unwrap();
    let want: Vec<f64> = (0..n).map(|i| x[i] as f64 + dy[i] as f64).collect();
    assert!(rel_err(&b[2], &want) < TOL);
    let mut b = vec![x.clone(), dy.clone()];
    Codelet::scaled_add(n, -0.5).run_on(&mut b).unwrap();
    let want: Vec<f64> = (0..n).map(|i| x[i] as f64 - 0.5 * dy[i] as f64).collect();
    assert!(rel_err(&b[0], &want) < TOL);
    // Softmax cross-entropy against one-hot targets.
    let (rows, k) = (3, 5);
    let logits = rng.vec(rows * k);
    let mut target = vec![0.0f32; rows * k];
    for r in 0..rows {
        target[r * k + (r * 2) % k] = 1.0;
    }
    let mut b = vec![
        logits.clone(),
        target.clone(),
        vec![0.0],
        vec![0.0; rows * k],
    ];
    Codelet::softmax_xent(rows, k).run_on(&mut b).unwrap();
    let mut loss = 0.0;
    let mut dl = vec![0.0f64; rows * k];
    for r in 0..rows {
        let l: Vec<f64> = to64(&logits[r * k..(r + 1) * k]);
        let lse = l.iter().map(|v| v.exp()).sum::<f64>().ln();
        for j in 0..k {
            loss -= target[r * k + j] as f64 * (l[j] - lse);
            dl[r * k + j] = ((l[j] - lse).exp() - target[r * k + j] as f64) / rows as f64;
        }
    }
    assert!(rel_err(&b[2], &[loss / rows as f64]) < TOL);
    assert!(rel_err(&b[3], &dl) < TOL);
}

#[test]
fn estimators_are_monotone_in_work_size() {
    let t = Target::mk2();
    let base = ConvGeom {
        nb: 2,
        in_h0: 0,
        in_hn: 9,
        in_w0: 0,
        in_wn: 9,
        out_h0: 0,
        out_hn: 9,
        out_w0: 0,
        out_wn: 9,
        kh: 3,
        kw: 3,
        stride: 1,
        pad_t: 1,
        pad_l: 1,
        groups: 3,
        cin_g: 16,
        cout_g: 16,
    };
    type Grow = fn(&mut ConvGeom, usize);
    let grows: [Grow; 8] = [
        |g, s| g.nb = s,
        |g, s| g.out_hn = s,
        |g, s| g.out_wn = s,
        |g, s| g.in_hn = s,
        |g, s| g.in_wn = s,
        |g, s| g.groups = s,
        |g, s| g.cin_g = s,
        |g, s| g.cout_g = s,
    ];
    for p in [Precision::F32, Precision::F16] {
        for grow in grows {
            for make in [
                Codelet::conv_amp,
                Codelet::conv_amp_bwd_data,
                Codelet::conv_wgrad_amp,
            ] {
                let mut last = 0;
                for s in 1..40 {
                    let mut g = base;
                    grow(&mut g, s);
                    let c = make(g).estimate(&t, p).unwrap().cycles;
                    assert!(c >= last, "{:?} not monotone at {s}", make(g).kind);
                    last = c;
                }
            }
            for make in [
                Codelet::dw_vmac,
                Codelet::dw_vmac_bwd_data,
                Codelet::dw_vmac_wgrad,
            ] {
                let mut last = 0;
                for s in 1..40 {
                    let mut g = ConvGeom {
                        cin_g: 1,
                        cout_g: 1,
                        ..base
                    };
                    grow(&mut g, s);
                    g.cin_g = 1;
                    g.cout_g = 1;
                    let c = make(g).estimate(&t, p).unwrap().cycles;
                    assert!(c >= last, "{:?} not monotone at {s}", make(g).kind);
                    last = c;
                }
            }
        }
        type Mk = fn(usize) -> Codelet;
        let others: [Mk; 19] = [
            |s| Codelet::reduce(s, 50, false),
            |s| Codelet::reduce(3, s, false),
            |s| Codelet::norm_stats(2, s, 24),
            |s| Codelet::norm_stats(2, 9, s),
            |s| Codelet::norm_finalize(s, 16, 4, 10, 1e-3),
            |s| {
                Codelet::norm_act(NormGeom {
                    nb: 2,
                    pix: s,
                    c: 16,
                    c0: 0,
                    groups: 4,
                    cg: 4,
                    per_sample: true,
                    act: 1,
                })
            },
            |s| {
                Codelet::norm_act_grad_partials(NormGeom {
                    nb: s,
                    pix: 5,
                    c: 16,
                    c0: 0,
                    groups: 4,
                    cg: 4,
                    per_sample: true,
                    act: 1,
                })
            },
            |s| {
                Codelet::norm_act_grad_apply(NormGeom {
                    nb: 2,
                    pix: 5,
                    c: s,
                    c0: 0,
                    groups: s,
                    cg: 1,
                    per_sample: true,
                    act: 1,
                })
            },
            |s| Codelet::proxy_stats(s, 200, 1),
            |s| Codelet::proxy_stats(3, s, 1),
            |s| Codelet::proxy_param_grad(8, s, 200, 1, ProxyScale::Full),
            |s| Codelet::proxy_finalize(s, 200, 0.03),
            |s| Codelet::proxy_grad_finalize(s, true),
            |s| Codelet::bias_act(s, 8, 1),
            |s| Codelet::bias_act_grad(3, s, 2),
            |s| Codelet::channel_sum(2, s, 8, 1.0),
            |s| Codelet::se_gate_grad(2, 5, s),
            |s| Codelet::add(s),
            |s| Codelet::softmax_xent(2, s),
        ];
        for make in others {
            let mut last = 0;
            for s in 1..60 {
                let c = make(s).estimate(&t, p).unwrap().cycles;
                assert!(c >= last, "{:?} not monotone at {s}", make(s).kind);
                last = c;
            }
        }
    }
}

fn layer(g: &mut Graph) -> effnet::ipu::graph::LayerId {
    g.add_layer(LayerInfo {
        name: "l".into(),
        kind: "pointwise",
        pass: "fwd",
        flops: 0.0,
    })
}

#[test]
fn an_over_budget_graph_fails_naming_the_tile_and_its_tensors() {
    let mut t = Target::mk2();
    t.tiles = 4;
    let budget = t.budget_bytes();
    let mut g = Graph::new(t, Precision::F32).unwrap();
    let l = layer(&mut g);
    // 60 % of 624 KiB = 383 385 bytes; two tensors of 50 000 floats on tile 2 exceed it
    // while both are live (the exchange writes both).
    let a = g.add_tensor("big_a", 50_000, 2).unwrap();
    let b = g.add_tensor("big_b", 50_000, 2).unwrap();
    let small = g.add_tensor("small", 100, 1).unwrap();
    let ex = g
        .add_exchange(
            "x",
            l,
            vec![Transfer {
                src: small,
                dsts: vec![a, b],
                copy: Strided::contiguous(0, 0, 100),
            }],
        )
        .unwrap();
    let prog = Program::Sequence(vec![Program::Exchange(ex)]);
    match g.profile(&prog) {
        Err(Error::TileMemory {
            tile,
            bytes,
            budget: bud,
            tensors,
        }) => {
            assert_eq!(tile, 2);
            assert_eq!(bud, budget);
            assert_eq!(bytes, 400_000);
            let names: Vec<&str> = tensors.iter().map(|t| t.0.as_str()).collect();
            assert_eq!(names, ["big_a", "big_b"]);
            let msg = Error::TileMemory {
                tile,
                bytes,
                budget: bud,
                tensors,
            }
            .to_string();
            assert!(
                msg.contains("tile 2") && msg.contains("big_a") && msg.contains("16615 over"),
                "{msg}"
            );
        }
        other => panic!("expected TileMemory, got {other:?}"),
    }
    // The same tensors live at different times fit (liveness, not the sum).
    let mut g = Graph::new(
        Target {
            tiles: 4,
            ..Target::mk2()
        },
        Precision::F32,
    )
    .unwrap();
    let l = layer(&mut g);
    let a = g.add_tensor("big_a", 50_000, 2).unwrap();
    let b = g.add_tensor("big_b", 50_000, 2).unwrap();
    let small = g.add_tensor("small", 100, 1).unwrap();
    let x1 = g
        .add_exchange(
            "x1",
            l,
            vec![Transfer {
                src: small,
                dsts: vec![a],
                copy: Strided::contiguous(0, 0, 100),
            }],
        )
        .unwrap();
    let x2 = g
        .add_exchange(
            "x2",
            l,
            vec![Transfer {
                src: small,
                dsts: vec![b],
                copy: Strided::contiguous(0, 0, 100),
            }],
        )
        .unwrap();
    let p = g
        .profile(&Program::Sequence(vec![
            Program::Exchange(x1),
            Program::Exchange(x2),
        ]))
        .unwrap();
    assert_eq!(p.tile_peak_bytes[2], 200_000);
}

#[test]
fn vertices_touch_only_tile_local_data_and_never_race() {
    let mut g = Graph::new(
        Target {
            tiles: 4,
            ..Target::mk2()
        },
        Precision::F32,
    )
    .unwrap();
    let l = layer(&mut g);
    let a = g.add_tensor("a", 10, 1).unwrap();
    let b = g.add_tensor("b", 10, 2).unwrap();
    let m = g
        .add_tensor_mapped("m", 20, vec![(0..10, 1), (10..20, 2)])
        .unwrap();
    let cs = g.add_compute_set("cs", l);
    let err = g
        .add_vertex(
            cs,
            1,
            Codelet::add(10),
            vec![
                FieldRef::whole(a, 10),
                FieldRef::whole(b, 10),
                FieldRef::whole(a, 10),
            ],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not on tile 1") && err.contains("tensor b"),
        "{err}"
    );
    // A field straddling two tiles of a mapped tensor is rejected; one inside is fine.
    let f = |o| FieldRef {
        tensor: m,
        offset: o,
        len: 10,
    };
    assert!(
        g.add_vertex(
            cs,
            1,
            Codelet::add(10),
            vec![f(5), f(0), FieldRef::whole(a, 10)]
        )
        .is_err()
    );
    g.add_vertex(
        cs,
        2,
        Codelet::add(10),
        vec![f(10), f(10), FieldRef::whole(b, 10)],
    )
    .unwrap();
    // A second vertex writing `b` in the same compute set races: rejected.
    let err = g
        .add_vertex(
            cs,
            2,
            Codelet::add(10),
            vec![f(10), f(10), FieldRef::whole(b, 10)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("one writes"), "{err}");
    // Wrong field length.
    assert!(
        g.add_vertex(cs, 1, Codelet::add(9), vec![FieldRef::whole(a, 10); 3])
            .is_err()
    );
    // Tile out of range.
    assert!(g.add_tensor("z", 1, 4).is_err());
}

#[test]
fn a_two_tile_convolution_runs_and_profiles_bulk_synchronously() {
    // A 3×3 conv over 6 rows split in two tiles by output rows; each tile receives its
    // input window (with a halo row) by exchange.
    let s = ConvDesc::new(1, (6, 5), 4, 8, (3, 3))
        .with_padding(Padding::symmetric(1))
        .validate()
        .unwrap();
    let mut rng = Rng::new(9);
    let x = rng.vec(s.x_len);
    let w = rng.vec(s.w_len);
    let t = Target {
        tiles: 3,
        ..Target::mk2()
    };
    let mut g = Graph::new(t, Precision::F32).unwrap();
    let l = layer(&mut g);
    let xt = g.add_tensor("x", s.x_len, 0).unwrap();
    let wt = g.add_tensor("w", s.w_len, 0).unwrap();
    g.set_persistent(wt);
    let cs = g.add_compute_set("conv", l);
    let mut transfers = Vec::new();
    let mut outs = Vec::new();
    for (tile, (a, b)) in [(1u32, (0usize, 3usize)), (2, (3, 6))] {
        let lo = a.saturating_sub(1);
        let hi = (b + 1).min(6);
        let geom = ConvGeom {
            in_h0: lo,
            in_hn: hi - lo,
            out_h0: a,
            out_hn: b - a,
            ..full_geom(&s)
        };
        let win = g
            .add_tensor(format!("win{tile}"), geom.in_len(), tile)
            .unwrap();
        let wl = g.add_tensor(format!("w{tile}"), s.w_len, tile).unwrap();
        let out = g
            .add_tensor(format!("y{tile}"), geom.out_len(), tile)
            .unwrap();
        transfers.push(Transfer {
            src: xt,
            dsts: vec![win],
            copy: Strided::contiguous(lo * 5 * 4, 0, geom.in_len()),
        });
        transfers.push(Transfer {
            src: wt,
            dsts: vec![wl],
            copy: Strided::contiguous(0, 0, s.w_len),
        });
        g.add_vertex(
            cs,
            tile,
            Codelet::conv_amp(geom),
            vec![
                FieldRef::whole(win, geom.in_len()),
                FieldRef::whole(wl, s.w_len),
                FieldRef::whole(out, geom.out_len()),
            ],
        )
        .unwrap();
        outs.push(out);
    }
    let ex = g.add_exchange("in", l, transfers).unwrap();
    let prog = Program::Sequence(vec![Program::Exchange(ex), Program::Execute(cs)]);
    let mut e = Engine::new(&g);
    e.write(xt, &x).unwrap();
    e.write(wt, &w).unwrap();
    e.run(&prog).unwrap();
    let mut y = e.read(outs[0]).to_vec();
    y.extend_from_slice(e.read(outs[1]));
    assert!(rel_err(&y, &reference::forward(&s, &x, &w, None)) < TOL);
    let p = g.profile(&prog).unwrap();
    let lp = &p.layers[0];
    // Compute time is the slowest tile; tile 1 has a 4-row window, tile 2 too.
    let per_tile = g.compute_set_tile_cycles(cs).unwrap();
    assert_eq!(p.compute_cycles, *per_tile.iter().max().unwrap());
    assert_eq!(lp.sync_cycles, 2 * g.target.sync_cycles);
    // Exchange: tile 0 sends both windows (4 rows each) and the weights once
    // (broadcast counted per transfer here: two transfers).
    let sent = (2 * 4 * 5 * 4 + 2 * s.w_len) * 4;
    let want = (sent as f64 / 4.0).ceil() as u64 + g.target.exchange_overhead_cycles;
    assert_eq!(p.exchange_cycles, want);
    assert_eq!(lp.tiles_used, 3);
}

fn check_block(spec: effnet::ipu::block::BlockSpec, seed: u64) {
    use effnet::ipu::block::run_block;
    let mut rng = Rng::new(seed);
    let shapes = spec.param_shapes();
    let mut params: Vec<Vec<f32>> = Vec::new();
    for (name, len) in &shapes {
        let v = rng.vec(*len);
        params.push(if name.starts_with("norm") {
            // γ near 1, β, β', γ' small ([4][C], or [C] = γ for a γ-only norm).
            let c = if *name == "norm3" {
                spec.cout
            } else {
                spec.mid()
            };
            v.iter()
                .enumerate()
                .map(|(i, r)| if i < c { 1.0 + 0.3 * r } else { 0.2 * r })
                .collect()
        } else {
            let fan = if *name == "w_spatial" {
                spec.kernel * spec.kernel * spec.group_size
            } else {
                8
            };
            v.iter().map(|r| r / (fan as f32).sqrt()).collect()
        });
    }
    let (oh, ow) = spec.out_hw();
    let x = rng.vec(spec.batch * spec.h * spec.w * spec.cin);
    let dout = rng.vec(spec.batch * oh * ow * spec.cout);
    let r = run_block(&spec, &Target::mk2(), &x, &params, &dout).unwrap();
    let p64: Vec<Vec<f64>> = params.iter().map(|p| to64(p)).collect();
    let x64 = to64(&x);
    let want = oracle::block_forward(&spec, &x64, &p64);
    let e = rel_err(&r.out, &want);
    assert!(e < 1e-4, "block forward {spec:?}: {e}");
    assert!(r.fwd_cycles > 0 && r.bwd_cycles > r.fwd_cycles);
    let d64 = to64(&dout);
    let loss = |x: &[f64], p: &[Vec<f64>]| -> f64 {
        oracle::block_forward(&spec, x, p)
            .iter()
            .zip(&d64)
            .map(|(a, b)| a * b)
            .sum()
    };
    let h = 1e-5;
    let want_dx: Vec<f64> = (0..x.len())
        .map(|i| {
            let mut a = x64.clone();
            a[i] += h;
            let up = loss(&a, &p64);
            a[i] -= 2.0 * h;
            (up - loss(&a, &p64)) / (2.0 * h)
        })
        .collect();
    let e = rel_err(&r.dx, &want_dx);
    assert!(e < 1e-4, "block dx {spec:?}: {e}");
    // Every parameter tensor: a sample of its entries by central differences.
    for (pi, (name, len)) in shapes.iter().enumerate() {
        if *len == 0 {
            continue;
        }
        // Norm gradients are [C][4] against [4][C] parameters ([C] when γ-only).
        let c = if *name == "norm3" {
            spec.cout
        } else {
            spec.mid()
        };
        let norm = name.starts_with("norm") && *len == 4 * c;
        let mut got = Vec::new();
        let mut want = Vec::new();
        for _ in 0..24 {
            let j = (rng.next_u64() as usize) % len;
            // Gradient layout: weights as the parameter; norms [C][4] vs params [4][C].
            let gi = if norm { (j % c) * 4 + j / c } else { j };
            let mut p = p64.clone();
            p[pi][j] += h;
            let up = loss(&x64, &p);
            p[pi][j] -= 2.0 * h;
            want.push((up - loss(&x64, &p)) / (2.0 * h));
            got.push(r.grads[pi][gi]);
        }
        let e = rel_err(&got, &want);
        assert!(e < 1e-3, "block grad {name} {spec:?}: {e}");
    }
}

#[test]
fn a_g16_gn_block_runs_end_to_end_forward_and_backward() {
    use effnet::ipu::block::{BlockNorm, BlockSpec};
    check_block(
        BlockSpec {
            batch: 2,
            h: 5,
            w: 6,
            cin: 16,
            cout: 16,
            expand: 2,
            kernel: 3,
            stride: 1,
            group_size: 16,
            se: 4,
            norm: BlockNorm::Gn(4),
        },
        11,
    );
}

#[test]
fn a_depthwise_strided_block_runs_end_to_end_forward_and_backward() {
    use effnet::ipu::block::{BlockNorm, BlockSpec};
    check_block(
        BlockSpec {
            batch: 3,
            h: 7,
            w: 5,
            cin: 8,
            cout: 12,
            expand: 3,
            kernel: 5,
            stride: 2,
            group_size: 1,
            se: 2,
            norm: BlockNorm::Gn(4),
        },
        12,
    );
}

#[test]
fn a_g16_ln_proxy_norm_block_runs_end_to_end_forward_and_backward() {
    use effnet::ipu::block::{BlockNorm, BlockSpec};
    check_block(
        BlockSpec {
            batch: 2,
            h: 4,
            w: 5,
            cin: 16,
            cout: 16,
            expand: 2,
            kernel: 3,
            stride: 1,
            group_size: 16,
            se: 4,
            norm: BlockNorm::LnPn,
        },
        13,
    );
}

#[test]
fn b0_layer_lists_match_the_published_macs() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::network::{Op, layers};
    // DESIGN.md: B0 0.386 G MACs at 224, B0-G16 0.635 G MACs (convs, SE and FC); the
    // IPU layer list and `arch::ArchConfig::counts` are the same network.
    for (name, want) in [
        ("efficientnet_b0", 0.386e9),
        ("b0_g16_gn", 0.635e9),
        ("b0_g16_lnpn", 0.635e9),
        ("tiny_g1_gn", 0.0),
        ("b3_g16_bn", 0.0),
    ] {
        let arch = ArchConfig::from_name(name).unwrap();
        let res = if want > 0.0 { 224 } else { arch.native_res };
        let ls = layers(&arch, res, 1).unwrap();
        let mut macs = 0.0;
        for l in &ls {
            match &l.op {
                Op::Conv(s) => macs += s.flops() / 2.0,
                Op::Se { reduced } => macs += 2.0 * (*reduced * l.out.3) as f64,
                _ => {}
            }
        }
        let counted = arch.counts(res).macs as f64;
        assert!(
            (macs / counted - 1.0).abs() < 1e-12,
            "{name}: {macs:.4e} MACs in the IPU list, {counted:.4e} in arch"
        );
        if want > 0.0 {
            assert!(
                (macs / want - 1.0).abs() < 0.005,
                "{name}: {macs:.4e} MACs, published {want:.3e}"
            );
        }
    }
}

#[test]
fn the_report_covers_every_layer_with_allowed_kinds_and_consistent_totals() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::network::{layers, report};
    let kinds = [
        "stem",
        "pointwise",
        "depthwise",
        "grouped",
        "norm",
        "activation",
        "se",
        "pool",
        "fc",
        "loss",
    ];
    let a = |n: &str| ArchConfig::from_name(n).unwrap();
    for name in [
        "efficientnet_b0",
        "tf_efficientnet_b0",
        "b0_g16_lnpn",
        "tiny_g16_lnpn",
    ] {
        let arch = a(name);
        let r = report(&arch, 64, 2, &Target::mk2(), Precision::F16).unwrap();
        // A fwd line per layer and a bwd line per layer but the loss (whose gradient
        // comes out of its forward vertex), from the built graph.
        for l in layers(&arch, 64, 2).unwrap() {
            for pass in ["fwd", "bwd"] {
                let want = usize::from(pass == "fwd" || l.kind != "loss");
                let got = r
                    .lines
                    .iter()
                    .filter(|x| x.layer == l.name && x.pass == pass)
                    .count();
                assert_eq!(got, want, "{name}: {} {pass}", l.name);
            }
        }
        for l in &r.lines {
            assert!(kinds.contains(&l.kind), "{}", l.kind);
            assert!(l.cost.tiles >= 1 && l.cost.tiles <= 1472);
            assert!(l.cost.max_tile_bytes <= Target::mk2().budget_bytes());
        }
        let train: u64 = r.lines.iter().map(|l| l.cost.total()).sum();
        let want = 2.0 * 1.33e9 / train as f64;
        assert!((r.training_img_per_s / want - 1.0).abs() < 1e-9);
        assert!(r.inference_img_per_s > r.training_img_per_s);
    }
    // Bow is the same die at a higher clock: same cycles, more images per second.
    let mk2 = report(&a("b0_g16_gn"), 64, 2, &Target::mk2(), Precision::F16).unwrap();
    let bow = report(&a("b0_g16_gn"), 64, 2, &Target::bow(), Precision::F16).unwrap();
    assert!((bow.training_img_per_s / mk2.training_img_per_s - 1.85 / 1.33).abs() < 1e-9);
    // A batch whose saved activations cannot fit is the named memory error.
    match report(&a("b0_g1_gn"), 224, 64, &Target::mk2(), Precision::F32) {
        Err(Error::TileMemory { tensors, .. }) => {
            assert!(tensors[0].0.contains("saved activations"))
        }
        other => panic!("expected TileMemory, got {other:?}"),
    }
}

#[test]
fn the_tile_picture_is_a_png_of_the_tile_grid() {
    use effnet::ipu::picture::{TilePicture, encode_png};
    let pic = TilePicture {
        bytes: (0..1472).map(|t| t * 300).collect(),
        cycles: (0..1472).map(|t| (t % 97) as u64).collect(),
        budget: 383_385,
    };
    let (w, h, px) = pic.render();
    assert_eq!(px.len(), w * h * 3);
    // Tiles over budget are red.
    let last = 1471;
    let cols = (w - 8) / 2 / 8;
    let (x, y) = ((last % cols) * 8 + 1, (last / cols) * 8 + 1);
    assert_eq!(&px[(y * w + x) * 3..(y * w + x) * 3 + 3], &[255, 0, 0]);
    let png = encode_png(w, h, &px);
    assert_eq!(&png[..8], &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!(
        u32::from_be_bytes(png[16..20].try_into().unwrap()) as usize,
        w
    );
    assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
}

#[test]
fn every_conv_of_a_small_network_runs_through_the_model() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::reference::ConvOracle;
    use effnet::ipu::run::run_network;
    // The f64 oracle (the SIMD kernels are compared by `effnet ipu run` once they land).
    let r = run_network(
        &ArchConfig::from_name("b0_g16_lnpn").unwrap(),
        32,
        1,
        &Target::mk2(),
        ConvOracle::F64,
        Some("blocks.1.0.conv_dw"),
    )
    .unwrap();
    // f32 through the planner's splits (partial sums reduced across tiles) against f64.
    assert!(r.max_rel_err < 5e-5, "{}", r.max_rel_err);
    assert!(
        r.layers
            .iter()
            .any(|l| l.pass == "block_bwd" || l.pass == "chain_bwd")
    );
    assert!(r.layers.iter().filter(|l| l.pass == "fwd").count() >= 40);
    let pic = r.picture.unwrap();
    assert_eq!(pic.bytes.len(), 1472);
    assert!(pic.cycles.iter().filter(|&&c| c > 0).count() > 10);
}

#[test]
fn the_blocks_of_a_tiny_network_run_chained_forward_and_backward() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::run::run_blocks_chained;
    for name in ["tiny_g16_lnpn", "tiny_g1_gn"] {
        let a = ArchConfig::from_name(name).unwrap();
        let lines = run_blocks_chained(&a, 32, 2, &Target::mk2(), 7).unwrap();
        let blocks = a.blocks().len();
        for (pass, want) in [
            ("chain_fwd", blocks),
            ("chain_out", 1),
            ("chain_bwd", blocks),
        ] {
            assert_eq!(
                lines.iter().filter(|l| l.pass == pass).count(),
                want,
                "{name} {pass}"
            );
        }
        for l in &lines {
            assert!(
                l.rel_err < 1e-5,
                "{name} {} {}: {}",
                l.name,
                l.pass,
                l.rel_err
            );
        }
    }
    // BatchNorm's batch statistics are not modelled by the block program.
    let bn = ArchConfig::from_name("efficientnet_tiny").unwrap();
    assert!(run_blocks_chained(&bn, 32, 2, &Target::mk2(), 7).is_err());
}

/// `effnet ipu run`'s code path: one training step of the whole network chained on the
/// model (stem → blocks → head → pool → classifier → loss → complete backward)
/// against the model layer's SIMD forward and backward.
fn chain_vs_simd(name: &str, res: usize, target: &Target) -> effnet::ipu_check::CheckResult {
    use effnet::arch::ArchConfig;
    let a = ArchConfig::from_name(name).unwrap().with_classes(10);
    let r = effnet::ipu_check::check(&a, res, 2, target, 3).unwrap();
    // Logits, loss and a gradient for every trainable parameter of the model.
    let net = effnet::model::Network::new(&a, 3).unwrap();
    let trainable = net
        .params()
        .infos()
        .iter()
        .filter(|i| i.kind.trainable())
        .count();
    assert_eq!(r.lines.len(), 2 + trainable, "{name}");
    for l in &r.lines {
        assert!(l.rel_err < 1e-4, "{name} {}: {:.3e}", l.tensor, l.rel_err);
    }
    assert!(r.loss.is_finite() && r.loss > 0.0);
    r
}

#[test]
fn the_whole_tiny_network_chained_on_the_model_matches_the_simd_model() {
    // BatchNorm at 64 px: at 32 px the last blocks are 1×1, and statistics over two
    // values make the backward ill-conditioned in f32 for any implementation.
    for (name, res) in [
        ("tiny_g16_gn", 32),
        ("tiny_g1_bn", 64),
        ("tiny_g16_lnpn", 32),
    ] {
        let r = chain_vs_simd(name, res, &Target::mk2());
        // Training step profiled as one program: every pass of every layer.
        let kinds: std::collections::HashSet<&str> = r.ipu.layers.iter().map(|l| l.kind).collect();
        for k in ["stem", "pointwise", "norm", "se", "pool", "fc", "loss"] {
            assert!(kinds.contains(k), "{name}: no {k} layer");
        }
        assert!(r.ipu.profile.total_cycles() > 0);
    }
}

#[test]
fn a_layer_over_one_tile_per_image_is_split_and_still_matches() {
    use effnet::arch::ArchConfig;
    // A 24 KB budget: one image's stem output (32×32×8 f32 = 32 KB) cannot sit on one
    // tile, nor can the head conv's weights (80×320 f32 = 100 KB).
    let mut t = Target::mk2();
    t.set("tile_bytes=40000").unwrap();
    // (Depthwise: a G16 5×5 group's weights alone, 25 KB, would not fit.)
    let a = ArchConfig::from_name("tiny_g1_gn").unwrap();
    let stem_bytes = 32 * 32 * a.stem_channels() * 4;
    assert!(stem_bytes > t.budget_bytes());
    let r = chain_vs_simd("tiny_g1_gn", 64, &t);
    let stem = r.ipu.splits.iter().find(|s| s.name == "conv_stem").unwrap();
    assert!(stem.boxes > 2, "{stem:?}");
    let head = r.ipu.splits.iter().find(|s| s.name == "conv_head").unwrap();
    assert!(head.chan_parts > 1 || head.row_parts > 1, "{head:?}");
    assert!(
        r.ipu
            .profile
            .tile_peak_bytes
            .iter()
            .all(|&b| b <= t.budget_bytes())
    );
}

#[test]
fn the_chain_parameters_are_the_models_trainable_parameters() {
    use effnet::arch::ArchConfig;
    let a = ArchConfig::from_name("tiny_g1_bn")
        .unwrap()
        .with_classes(10);
    let net = effnet::model::Network::new(&a, 1).unwrap();
    let p = effnet::ipu_check::chain_params(net.params());
    let ch = effnet::ipu::chain::build(&a, 32, 2, &Target::mk2(), Precision::F32).unwrap();
    let shapes = ch.param_shapes();
    assert_eq!(shapes.len(), p.len());
    for (name, len) in shapes {
        assert_eq!(p[&name].len(), len, "{name}");
        let i = net.params().find(&name).unwrap();
        assert_eq!(p[&name], net.params().values[i], "{name}");
    }
    // Running statistics are buffers, not parameters of the training step.
    assert!(p.keys().all(|k| !k.contains("running")));
}

/// The per-layer planner report (`effnet ipu report`'s default) plans B0 at the
/// paper's batch and resolutions for the three variants of the figures table: one
/// forward and one backward line per layer, every line within a tile's budget, totals
/// consistent with the lines; and the same too-large batch is the named memory error.
#[test]
fn planned_report_covers_b0_at_batch_8() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::network::{layers, report_planned};
    let budget = Target::mk2().budget_bytes();
    for name in ["b0_g1_gn", "b0_g16_gn", "b0_g16_lnpn"] {
        let arch = ArchConfig::from_name(name).unwrap();
        for res in [160, 224] {
            let r = report_planned(&arch, res, 8, &Target::mk2(), Precision::F16).unwrap();
            let n = layers(&arch, res, 8).unwrap().len();
            assert_eq!(r.lines.len(), 2 * n, "{name} {res}");
            for l in &r.lines {
                assert!(
                    l.cost.tiles >= 1 && l.cost.tiles <= 1472,
                    "{name} {}",
                    l.layer
                );
                assert!(l.cost.max_tile_bytes <= budget, "{name} {}", l.layer);
            }
            let train: u64 = r.lines.iter().map(|l| l.cost.total()).sum();
            let want = 8.0 * 1.33e9 / train as f64;
            assert!((r.training_img_per_s / want - 1.0).abs() < 1e-9);
            assert!(r.inference_img_per_s > r.training_img_per_s);
            assert!(r.spatial_cycles_per_flop > 0.0);
        }
    }
    let g1 = ArchConfig::from_name("b0_g1_gn").unwrap();
    match report_planned(&g1, 224, 64, &Target::mk2(), Precision::F32) {
        Err(Error::TileMemory { tensors, .. }) => {
            assert!(tensors[0].0.contains("saved activations"))
        }
        other => panic!("expected TileMemory, got {other:?}"),
    }
}

/// The boxes of a Dist: every gather copies exactly the requested box (each element
/// once), and what lies on other tiles is what `remote_elems` counts — against a
/// brute-force walk over every element.
#[test]
fn gathers_cover_the_box_once_and_count_the_remote_elements() {
    use effnet::ipu::chain::{Dist, Grid, Part, gather, remote_elems};
    use effnet::ipu::graph::TensorId;
    let (n, h, w, c) = (3, 7, 2, 10);
    let grid = Grid::new(n, h, c, 2, 3, 4, 2);
    let mut parts = Vec::new();
    for (ii, &(n0, n1)) in grid.imgs.iter().enumerate() {
        for (ri, &(r0, r1)) in grid.rows.iter().enumerate() {
            for (ci, &(c0, c1)) in grid.chans.iter().enumerate() {
                let b = grid.index(ii, ri, ci);
                parts.push(Part {
                    n0,
                    nb: n1 - n0,
                    r0,
                    rn: r1 - r0,
                    c0,
                    cn: c1 - c0,
                    ri,
                    tile: (b % 5) as u32,
                    t: TensorId(b as u32),
                });
            }
        }
    }
    let d = Dist {
        n,
        h,
        w,
        c,
        grid,
        parts,
    };
    let owner = |i: usize, r: usize, ch: usize| {
        d.parts
            .iter()
            .find(|p| {
                (p.n0..p.n0 + p.nb).contains(&i)
                    && (p.r0..p.r0 + p.rn).contains(&r)
                    && (p.c0..p.c0 + p.cn).contains(&ch)
            })
            .unwrap()
    };
    let mut rng = Rng::new(21);
    for _ in 0..50 {
        let pick = |rng: &mut Rng, m: usize| {
            let a = (rng.next_u64() as usize) % m;
            (a, 1 + (rng.next_u64() as usize) % (m - a))
        };
        let ((n0, nb), (r0, rn), (c0, cn)) =
            (pick(&mut rng, n), pick(&mut rng, h), pick(&mut rng, c));
        let tile = (rng.next_u64() % 5) as u32;
        let mut trs = Vec::new();
        gather(&d, n0, nb, r0, rn, c0, cn, TensorId(999), &mut trs);
        let moved: usize = trs.iter().map(|t| t.copy.elems()).sum();
        assert_eq!(moved, nb * rn * w * cn);
        let mut remote = 0;
        for i in n0..n0 + nb {
            for r in r0..r0 + rn {
                for ch in c0..c0 + cn {
                    if owner(i, r, ch).tile != tile {
                        remote += w;
                    }
                }
            }
        }
        assert_eq!(remote_elems(&d, n0, nb, r0, rn, c0, cn, tile), remote);
    }
}

/// The grouped pipeline schedule against a hand-worked example: 2 stages (forward /
/// backward compute 10/20 and 5/15 cycles), 3 micro-batches: steps f0 | f1, f0+b0 |
/// f2+b0, f1+b1 | b1, f2+b2 | b2 = 10 + 20 + 30 + 20 + 20 cycles; one stage runs its
/// micro-batches back to back (A · (F + B)); the ring all-reduce moves 2(R−1)
/// chunks of bytes/R.
#[test]
fn the_grouped_schedule_matches_a_hand_worked_example() {
    use effnet::ipu::system::schedule::{
        CycleSplit, StageTiming, in_flight, ring_allreduce_cycles, step_cycles,
    };
    let mut t = Target::mk2();
    t.external_sync_cycles = 0;
    let st = |f: u64, b: u64| StageTiming {
        fwd: CycleSplit {
            compute: f,
            ..Default::default()
        },
        bwd: CycleSplit {
            compute: b,
            ..Default::default()
        },
        ..Default::default()
    };
    let s = step_cycles(&[st(10, 20), st(5, 15)], 3, 1, &t);
    assert_eq!(s.pipeline_steps, 5);
    assert_eq!(s.compute, 100);
    assert_eq!(s.total(), 100);
    let one = step_cycles(&[st(10, 20)], 3, 1, &t);
    assert_eq!(one.compute, 90);
    assert_eq!(
        (in_flight(0, 2), in_flight(1, 2), in_flight(0, 4)),
        (3, 1, 7)
    );
    // 8 replicas, 8 MB: 14 steps of 1 MB over one 32 GB/s link at 1.33 GHz.
    let c = ring_allreduce_cycles(8 << 20, 8, &t);
    let per = ((1u64 << 20) as f64 / (32e9 / 1.33e9)).ceil() as u64;
    assert_eq!(c, 14 * per);
    assert_eq!(ring_allreduce_cycles(8 << 20, 1, &t), 0);
    // Transfers between the stages count as inter-IPU cycles on the steps that send.
    let mut a = st(10, 20);
    a.out_bytes = 32_000;
    let mut b = st(5, 15);
    b.grad_bytes = 64_000;
    let s = step_cycles(&[a, b], 3, 1, &t);
    let x = |bytes: f64| (bytes / (32e9 / 1.33e9)).ceil() as u64;
    // Steps 0–2 send activations forward, steps 1–3 gradients back.
    assert_eq!(
        s.inter_ipu,
        x(32_000.0) + 2 * x(64_000.0).max(x(32_000.0)) + x(64_000.0)
    );
}

/// Recomputation: keeping only each block's input from the forward to the backward
/// pass lowers the peak tile memory of a training step and costs the forward of
/// every recomputed block again (the `recompute` layers), the gradients unchanged.
#[test]
fn recomputation_trades_memory_for_a_second_forward() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::chain::{ChainOpts, build_stage, network_steps};
    let a = ArchConfig::from_name("tiny_g16_gn").unwrap();
    let ns = network_steps(&a, 64, 4).unwrap();
    let mut t = Target::mk2();
    t.set("tiles=64").unwrap();
    let mut peak = Vec::new();
    let mut cycles = Vec::new();
    for recompute in [true, false] {
        let opts = ChainOpts {
            training: true,
            recompute,
        };
        let ch = build_stage(
            &ns,
            0..ns.segments.len(),
            a.norm_eps,
            &t,
            Precision::F16,
            opts,
        )
        .unwrap();
        let p = ch.graph.profile_unchecked(&ch.fwd, &ch.bwd, 0).unwrap().0;
        let sum = |pass: &str| -> u64 {
            ch.graph
                .layers
                .iter()
                .zip(&p.layers)
                .filter(|(l, _)| l.pass == pass)
                .map(|(_, lp)| lp.compute_cycles)
                .sum()
        };
        peak.push(p.tile_peak_bytes.iter().sum::<usize>());
        cycles.push((sum("fwd"), sum("recompute"), sum("bwd")));
    }
    assert!(peak[0] < peak[1], "peak memory {peak:?}");
    let (with, without) = (cycles[0], cycles[1]);
    assert_eq!(without.1, 0);
    // Every block but the head is recomputed: most of the forward again.
    assert!(with.1 > with.0 / 2 && with.1 <= with.0, "{with:?}");
    // The forward itself barely changes (a split may differ where weights that are
    // broadcast at every pass cost one pass more).
    assert!(
        (with.0 as f64 / without.0 as f64 - 1.0).abs() < 0.05,
        "{with:?} {without:?}"
    );
}

/// `effnet ipu run --stages 2 --replicas 2 --accumulate 2`: one optimizer step of the
/// pipelined, replicated, accumulating system executed through the codelets equals
/// the SIMD model's RMSProp step on the same global batch (the update of every
/// parameter within 1e-4), with and without recomputation; the replicas agree.
#[test]
fn the_pipelined_replicated_step_matches_the_simd_step() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::system::SystemConfig;
    let a = ArchConfig::from_name("tiny_g16_lnpn").unwrap();
    for recompute in [true, false] {
        let cfg = SystemConfig {
            stages: 2,
            replicas: 2,
            micro_batch: 2,
            accumulation: 2,
            recompute,
            splits: Vec::new(),
            provenance: "test".into(),
        };
        let r = effnet::ipu_check::check_system(&a, 32, &cfg, &Target::mk2(), 5).unwrap();
        assert!(r.ipu.replicas_agree);
        assert_eq!(r.ipu.stages.len(), 2);
        assert_eq!(r.ipu.stages[0][0], "stem");
        assert_eq!(r.ipu.stages[1].last().unwrap(), "head");
        for l in &r.lines {
            assert!(
                l.update_rel_err < 1e-4,
                "recompute {recompute} {}: {:.3e}",
                l.tensor,
                l.update_rel_err
            );
        }
        assert!(
            (r.ipu.loss / r.loss - 1.0).abs() < 1e-4,
            "{} {}",
            r.ipu.loss,
            r.loss
        );
        assert!(r.lines.len() > 40);
    }
}

/// The system report: per stage its layers and timing, micro-batches in flight by
/// the grouped schedule, the step's cycle split summing to its total, and images per
/// second = global batch × clock / cycles; a one-IPU inference graph fits and is
/// faster per image than training.
#[test]
fn the_system_report_is_consistent() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::system::{SystemConfig, inference_report, system_report};
    let a = ArchConfig::from_name("tiny_g16_gn").unwrap();
    let mut cfg = SystemConfig::pod16(&a, 64).unwrap();
    cfg.micro_batch = 4;
    let t = Target::mk2();
    let r = system_report(&a, 64, &cfg, &t, Precision::F16).unwrap();
    assert_eq!(r.stages.len(), 2);
    assert_eq!((r.stages[0].in_flight, r.stages[1].in_flight), (3, 1));
    assert!(r.fits && r.stages.iter().all(|s| s.fits));
    assert_eq!(r.splits.len(), 1);
    let s = r.step;
    assert_eq!(s.pipeline_steps, cfg.accumulation + 2);
    assert!(s.compute > 0 && s.exchange > 0 && s.inter_ipu > 0 && s.allreduce > 0 && s.sync > 0);
    let want = cfg.global_batch() as f64 * t.clock_hz / s.total() as f64;
    assert!((r.training_img_per_s / want - 1.0).abs() < 1e-12);
    for st in &r.stages {
        assert!(st.lines.iter().any(|l| l.pass == "recompute"));
        assert!(st.lines.iter().any(|l| l.pass == "update"));
        assert!(st.max_tile_bytes <= t.budget_bytes());
        assert_eq!(st.picture.bytes.len(), t.tiles);
    }
    let inf = inference_report(&a, 64, 8, &t, Precision::F16).unwrap();
    assert!(inf.fits);
    assert!(inf.lines.iter().all(|l| l.pass == "fwd"));
    assert!(inf.img_per_s > r.training_img_per_s / cfg.ipus() as f64);
}

/// The paper's IPU-POD16 system for B0-G16-GN at 224 — 2 stages × 8 replicas,
/// micro-batch 12, accumulation 8, recomputation, the split at block 3b — fits every
/// tile of both stage IPUs with its micro-batches in flight (3 on the first stage,
/// 1 on the second).
#[test]
fn the_published_b0_pod16_configuration_fits() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::system::{SystemConfig, system_report};
    let a = ArchConfig::from_name("b0_g16_gn").unwrap();
    let cfg = SystemConfig::pod16(&a, 224).unwrap();
    assert_eq!(
        (
            cfg.ipus(),
            cfg.stages,
            cfg.micro_batch,
            cfg.accumulation,
            cfg.global_batch()
        ),
        (16, 2, 12, 8, 768)
    );
    // Half resolution (160 for B0): micro-batch 24, accumulation 4, same global batch.
    let half = SystemConfig::pod16(&ArchConfig::from_name("b0_g16_lnpn").unwrap(), 160).unwrap();
    assert_eq!(
        (
            half.stages,
            half.replicas,
            half.micro_batch,
            half.accumulation
        ),
        (2, 8, 24, 4)
    );
    assert_eq!(half.global_batch(), 768);
    // B2–B5: 4 stages x 4 replicas (B5: micro-batch 2, accumulation 96).
    for (name, res) in [("b2_g16_gn", 260), ("b5_g16_gn", 456)] {
        let c = SystemConfig::pod16(&ArchConfig::from_name(name).unwrap(), res).unwrap();
        assert_eq!((c.stages, c.replicas, c.ipus()), (4, 4, 16), "{name}");
    }
    let b5 = SystemConfig::pod16(&ArchConfig::from_name("b5_g16_gn").unwrap(), 456).unwrap();
    assert_eq!((b5.micro_batch, b5.accumulation), (2, 96));
    let r = system_report(&a, 224, &cfg, &Target::mk2(), Precision::F16).unwrap();
    assert_eq!(r.splits, vec!["blocks.2.1".to_string()]);
    assert_eq!(r.stages[0].segments.last().unwrap(), "blocks.2.0");
    for st in &r.stages {
        assert!(st.fits, "{:?}", st.memory_error);
    }
    assert!(r.max_tile_bytes <= Target::mk2().budget_bytes());
    assert!(r.training_img_per_s > 0.0);
}
