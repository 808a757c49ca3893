//! The oracles the IPU model is checked against, in one place.
//!
//! Convolutions go through [`conv_forward`], [`conv_backward_data`] and
//! [`conv_backward_weight`], which dispatch on [`ConvOracle`]: the SIMD kernels
//! ([`crate::kernels::conv::Conv2d`]) or the `f64` reference
//! ([`crate::kernels::conv::reference`]). Switching the default is the one line in
//! [`ConvOracle::default`]. Normalization, Proxy Norm and the small element-wise ops
//! use the plain `f64` formulas below (DESIGN.md, "Proxy Norm"), until the SIMD norm
//! kernels land.

use crate::error::Result;
use crate::ipu::block::BlockSpec;
use crate::kernels::conv::{Conv2d, ConvShape, GradMode, reference};

/// Which implementation the convolution results are compared with.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum ConvOracle {
    /// `kernels::conv::Conv2d` (the SIMD kernels).
    #[default]
    Simd,
    /// `kernels::conv::reference` (plain `f64`).
    F64,
}

/// `y = conv(x, w)`.
pub fn conv_forward(o: ConvOracle, s: &ConvShape, x: &[f32], w: &[f32]) -> Result<Vec<f64>> {
    match o {
        ConvOracle::F64 => Ok(reference::forward(s, x, w, None)),
        ConvOracle::Simd => {
            let mut y = vec![0.0f32; s.y_len];
            Conv2d::new(&s.desc)?.forward(x, w, None, &mut y)?;
            Ok(y.iter().map(|&v| v as f64).collect())
        }
    }
}

/// `dx = convᵀ(dy, w)`.
pub fn conv_backward_data(o: ConvOracle, s: &ConvShape, dy: &[f32], w: &[f32]) -> Result<Vec<f64>> {
    match o {
        ConvOracle::F64 => Ok(reference::backward_data(s, dy, w)),
        ConvOracle::Simd => {
            let mut dx = vec![0.0f32; s.x_len];
            Conv2d::new(&s.desc)?.backward_data(dy, w, &mut dx)?;
            Ok(dx.iter().map(|&v| v as f64).collect())
        }
    }
}

/// `dw` (without bias).
pub fn conv_backward_weight(
    o: ConvOracle,
    s: &ConvShape,
    x: &[f32],
    dy: &[f32],
) -> Result<Vec<f64>> {
    match o {
        ConvOracle::F64 => Ok(reference::backward_weight(s, x, dy).0),
        ConvOracle::Simd => {
            let mut dw = vec![0.0f32; s.w_len];
            Conv2d::new(&s.desc)?.backward_weight(x, dy, &mut dw, None, GradMode::Overwrite)?;
            Ok(dw.iter().map(|&v| v as f64).collect())
        }
    }
}

/// `erf(x)` in `f64` (Taylor series for |x| ≤ 3, continued fraction beyond).
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a <= 3.0 {
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …))))
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(x)
}

/// `erfinv(y)` for `y` in (−1, 1), by bisection then Newton on [`erf`].
pub fn erfinv(y: f64) -> f64 {
    let (mut lo, mut hi) = (-6.0f64, 6.0f64);
    for _ in 0..80 {
        let m = 0.5 * (lo + hi);
        if erf(m) < y { lo = m } else { hi = m }
    }
    let mut x = 0.5 * (lo + hi);
    for _ in 0..3 {
        let d = 2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp();
        if d > 0.0 {
            x -= (erf(x) - y) / d;
        }
    }
    x
}

/// The Proxy Norm quantiles `q_k = √2 · erfinv(2(k+0.5)/K − 1)`, `k = 0..K`.
pub fn proxy_quantiles(k: usize) -> Vec<f64> {
    (0..k)
        .map(|i| std::f64::consts::SQRT_2 * erfinv(2.0 * (i as f64 + 0.5) / k as f64 - 1.0))
        .collect()
}

fn sigmoid(u: f64) -> f64 {
    1.0 / (1.0 + (-u).exp())
}

/// The activation of the codelets in `f64`: 0 identity, 1 swish, 2 sigmoid.
pub fn act(a: u32, u: f64) -> f64 {
    match a {
        1 => u * sigmoid(u),
        2 => sigmoid(u),
        _ => u,
    }
}

/// Per-channel Proxy Norm statistics `(μ_c, s_c)` in `f64`.
pub fn proxy_stats(g: f64, b: f64, b2: f64, g2: f64, q: &[f64], a: u32, eps: f64) -> (f64, f64) {
    let r: Vec<f64> = q
        .iter()
        .map(|&qk| act(a, g * (b2 + (1.0 + g2) * qk) + b))
        .collect();
    let m = r.iter().sum::<f64>() / r.len() as f64;
    let v = r.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / r.len() as f64;
    (m, 1.0 / (v + eps).sqrt())
}

/// Parameters of [`norm_act_forward`].
#[derive(Clone, Debug)]
pub struct NormActParams {
    /// Images.
    pub n: usize,
    /// Pixels per image.
    pub pix: usize,
    /// Channels.
    pub c: usize,
    /// Channels per group (`c` for LayerNorm, 1 and `per_sample = false` for BatchNorm).
    pub cg: usize,
    /// Statistics per image (GN/LN) or over the batch (BN).
    pub per_sample: bool,
    /// Activation (0 identity, 1 swish).
    pub act: u32,
    /// Proxy Norm on (μ, s from the quantiles) or off (μ = 0, s = 1).
    pub proxy: bool,
    /// Normalization ε.
    pub eps: f64,
    /// Proxy Norm ε.
    pub eps_pn: f64,
    /// Quantiles.
    pub q: Vec<f64>,
}

/// `z = (act(γ·x̂ + β) − μ)·s` over NHWC `x` (`[n][pix][c]`) in `f64`, with per-channel
/// `γ, β, β', γ'`.
pub fn norm_act_forward(
    p: &NormActParams,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    beta2: &[f64],
    gamma2: &[f64],
) -> Vec<f64> {
    let (n, pix, c, cg) = (p.n, p.pix, p.c, p.cg);
    let groups = c / cg;
    let rows = if p.per_sample { n } else { 1 };
    let mut mean = vec![0.0; rows * groups];
    let mut rstd = vec![0.0; rows * groups];
    for r in 0..rows {
        for g in 0..groups {
            let imgs: Vec<usize> = if p.per_sample {
                vec![r]
            } else {
                (0..n).collect()
            };
            let mut vals = Vec::new();
            for &i in &imgs {
                for q in 0..pix {
                    for ch in g * cg..(g + 1) * cg {
                        vals.push(x[(i * pix + q) * c + ch]);
                    }
                }
            }
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / vals.len() as f64;
            mean[r * groups + g] = m;
            rstd[r * groups + g] = 1.0 / (v + p.eps).sqrt();
        }
    }
    let ms: Vec<(f64, f64)> = (0..c)
        .map(|ch| {
            if p.proxy {
                proxy_stats(
                    gamma[ch], beta[ch], beta2[ch], gamma2[ch], &p.q, p.act, p.eps_pn,
                )
            } else {
                (0.0, 1.0)
            }
        })
        .collect();
    let mut z = vec![0.0; x.len()];
    for i in 0..n {
        let r = if p.per_sample { i } else { 0 };
        for q in 0..pix {
            for ch in 0..c {
                let k = (i * pix + q) * c + ch;
                let g = ch / cg;
                let xh = (x[k] - mean[r * groups + g]) * rstd[r * groups + g];
                let u = gamma[ch] * xh + beta[ch];
                z[k] = (act(p.act, u) - ms[ch].0) * ms[ch].1;
            }
        }
    }
    z
}

#[allow(clippy::too_many_arguments)]
fn conv(
    x: &[f64],
    w: &[f64],
    h: usize,
    wd: usize,
    cin: usize,
    cout: usize,
    k: usize,
    s: usize,
    gs: usize,
) -> Vec<f64> {
    let p = k / 2;
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (wd + 2 * p - k) / s + 1);
    let cog = cout / (cin / gs);
    let mut y = vec![0.0; oh * ow * cout];
    for a in 0..oh {
        for b in 0..ow {
            for co in 0..cout {
                let g = co / cog;
                let mut acc = 0.0;
                for kh in 0..k {
                    let ih = (a * s + kh) as isize - p as isize;
                    if ih < 0 || ih >= h as isize {
                        continue;
                    }
                    for kw in 0..k {
                        let iw = (b * s + kw) as isize - p as isize;
                        if iw < 0 || iw >= wd as isize {
                            continue;
                        }
                        for ci in 0..gs {
                            acc += x[(ih as usize * wd + iw as usize) * cin + g * gs + ci]
                                * w[((kh * k + kw) * gs + ci) * cout + co];
                        }
                    }
                }
                y[(a * ow + b) * cout + co] = acc;
            }
        }
    }
    y
}

fn quantiles() -> &'static [f64] {
    static Q: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    Q.get_or_init(|| proxy_quantiles(200))
}

fn norm(spec: &BlockSpec, which: usize, x: &[f64], pix: usize, c: usize, p: &[f64]) -> Vec<f64> {
    let (cg, act, proxy) = spec.norm_of(which, c);
    let np = NormActParams {
        n: 1,
        pix,
        c,
        cg,
        per_sample: true,
        act,
        proxy,
        eps: 1e-3,
        eps_pn: 0.03,
        q: quantiles().to_vec(),
    };
    norm_act_forward(
        &np,
        x,
        &p[0..c],
        &p[c..2 * c],
        &p[2 * c..3 * c],
        &p[3 * c..4 * c],
    )
}

/// The output of an MBConv block ([`crate::ipu::block`]) for all images, in `f64`:
/// `x` is `[N][H][W][C_in]`, `p` the parameters in the order of
/// [`BlockSpec::param_shapes`].
pub fn block_forward(spec: &BlockSpec, x: &[f64], p: &[Vec<f64>]) -> Vec<f64> {
    let (h, w, ci, co, m, k) = (spec.h, spec.w, spec.cin, spec.cout, spec.mid(), spec.kernel);
    let (oh, ow) = spec.out_hw();
    let (px, opx) = (h * w, oh * ow);
    let mut out = Vec::new();
    for i in 0..spec.batch {
        let xi = &x[i * px * ci..(i + 1) * px * ci];
        let e = if spec.expand != 1 {
            conv(xi, &p[0], h, w, ci, m, 1, 1, ci)
        } else {
            xi.to_vec()
        };
        let a1 = norm(spec, 1, &e, px, m, &p[1]);
        let s = conv(&a1, &p[2], h, w, m, m, k, spec.stride, spec.group_size);
        let a2 = norm(spec, 2, &s, opx, m, &p[3]);
        let se = spec.se;
        let pooled: Vec<f64> = (0..m)
            .map(|c| (0..opx).map(|q| a2[q * m + c]).sum::<f64>() / opx as f64)
            .collect();
        let hs: Vec<f64> = (0..se)
            .map(|o| {
                act(
                    1,
                    p[5][o] + (0..m).map(|c| pooled[c] * p[4][c * se + o]).sum::<f64>(),
                )
            })
            .collect();
        let gate: Vec<f64> = (0..m)
            .map(|o| {
                act(
                    2,
                    p[7][o] + (0..se).map(|c| hs[c] * p[6][c * m + o]).sum::<f64>(),
                )
            })
            .collect();
        let seo: Vec<f64> = (0..opx * m).map(|j| a2[j] * gate[j % m]).collect();
        let pr = conv(&seo, &p[8], oh, ow, m, co, 1, 1, m);
        let z = norm(spec, 3, &pr, opx, co, &p[9]);
        if spec.skip() {
            out.extend(z.iter().zip(xi).map(|(a, b)| a + b));
        } else {
            out.extend(z);
        }
    }
    out
}
