//! The codelets against the f64 oracles (convolutions on whole and partial windows,
//! normalization and Proxy Norm with finite differences, element-wise) and the
//! estimators monotone in work size.

use crate::common::{Rng, rel_err};
use crate::*;
use effnet::ipu::ProxyScale;
use effnet::ipu::codelets::{ConvGeom, NormGeom, SHIM_WORKERS};
use effnet::ipu::reference::{self as oracle, NormActParams};
use effnet::ipu::{Codelet, Precision, Target};
use effnet::kernels::conv::{ConvDesc, ConvShape, Padding, reference};

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
