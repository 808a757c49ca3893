//! The oracles the IPU model is checked against, in one place.
//!
//! Convolutions go through [`conv_forward`], [`conv_backward_data`] and
//! [`conv_backward_weight`], which dispatch on [`ConvOracle`]: the SIMD kernels
//! ([`crate::kernels::conv::Conv2d`]) or the `f64` reference
//! ([`crate::kernels::conv::reference`]). Switching the default is the one line in
//! [`ConvOracle::default`]. Normalization, Proxy Norm and the small element-wise ops
//! use the plain `f64` formulas below (DESIGN.md, "Proxy Norm"), until the SIMD norm
//! kernels land.

use crate::error::{Error, Result};
use crate::ipu::codelets::ProxyScale;
use crate::ipu::vocab::BlockSpec;
use crate::kernels::conv::{Conv2d, ConvShape, GradMode, reference};

/// Which implementation the convolution results are compared with. A SIMD kernel that
/// is not implemented yet (`Error::Unsupported`) falls back to the `f64` reference.
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
            match Conv2d::new(&s.desc)?.forward(x, w, None, &mut y) {
                Err(Error::Unsupported(_)) => conv_forward(ConvOracle::F64, s, x, w),
                r => r.map(|_| y.iter().map(|&v| v as f64).collect()),
            }
        }
    }
}

/// `dx = convᵀ(dy, w)`.
pub fn conv_backward_data(o: ConvOracle, s: &ConvShape, dy: &[f32], w: &[f32]) -> Result<Vec<f64>> {
    match o {
        ConvOracle::F64 => Ok(reference::backward_data(s, dy, w)),
        ConvOracle::Simd => {
            let mut dx = vec![0.0f32; s.x_len];
            match Conv2d::new(&s.desc)?.backward_data(dy, w, &mut dx) {
                Err(Error::Unsupported(_)) => conv_backward_data(ConvOracle::F64, s, dy, w),
                r => r.map(|_| dx.iter().map(|&v| v as f64).collect()),
            }
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
            match Conv2d::new(&s.desc)?.backward_weight(x, dy, &mut dw, None, GradMode::Overwrite) {
                Err(Error::Unsupported(_)) => conv_backward_weight(ConvOracle::F64, s, x, dy),
                r => r.map(|_| dw.iter().map(|&v| v as f64).collect()),
            }
        }
    }
}

/// The Proxy Norm quantiles `q_k = √2 · erfinv(2(k+0.5)/K − 1)`, `k = 0..K`: those of
/// [`crate::kernels::proxy_norm::reference::quantiles`] (one implementation).
pub fn proxy_quantiles(k: usize) -> Vec<f64> {
    crate::kernels::proxy_norm::reference::quantiles(k)
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

/// Per-channel Proxy Norm statistics `(μ_c, s_c)` in `f64`, by
/// [`crate::kernels::proxy_norm::reference::stats`] (one implementation); `a` is the
/// codelets' activation code (0 identity, 1 swish, 2 sigmoid).
pub fn proxy_stats(g: f64, b: f64, b2: f64, g2: f64, q: &[f64], a: u32, eps: f64) -> (f64, f64) {
    use crate::kernels::activation::Activation;
    use crate::kernels::proxy_norm::{ProxyVariant, reference as pn};
    let su = pn::Setup {
        variant: ProxyVariant::FullScale,
        activation: match a {
            1 => Activation::Swish,
            2 => Activation::Sigmoid,
            _ => Activation::Identity,
        },
        q: q.to_vec(),
        eps_pn: eps,
    };
    let st = pn::stats(
        &su,
        &pn::Params {
            gamma: &[g],
            beta: &[b],
            beta_prime: &[b2],
            gamma_prime: &[g2],
        },
    );
    (st.mean[0], st.scale[0])
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
    /// Where the proxy scale goes: [`ProxyScale::Full`] multiplies by `s` here,
    /// [`ProxyScale::Delayed`] and [`ProxyScale::None`] return `a − μ` (the delayed
    /// scale is applied by the SE gate after it).
    pub scale: ProxyScale,
    /// Normalization ε.
    pub eps: f64,
    /// Proxy Norm ε.
    pub eps_pn: f64,
    /// Quantiles.
    pub q: Vec<f64>,
}

/// `z = (act(γ·x̂ + β) − μ)·s` (or `act(γ·x̂ + β) − μ` when the scale is delayed or
/// absent, [`NormActParams::scale`]) over NHWC `x` (`[n][pix][c]`) in `f64`, with per-channel
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
                let sc = if p.scale == ProxyScale::Full {
                    ms[ch].1
                } else {
                    1.0
                };
                z[k] = (act(p.act, u) - ms[ch].0) * sc;
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

/// Norm `which` (1 after the expansion, 2 after the spatial conv, 3 after the
/// projection) of a block over `x` (`[pix][c]`), parameters `p` (`[4][c]`, or `[c]`
/// for the γ-only LayerNorm of the projection under Proxy Norm).
fn norm(spec: &BlockSpec, which: usize, x: &[f64], pix: usize, c: usize, p: &[f64]) -> Vec<f64> {
    let (cg, act, proxy, scale) = spec.norm_of(which, c);
    let np = NormActParams {
        n: 1,
        pix,
        c,
        cg,
        per_sample: true,
        act,
        proxy,
        scale,
        eps: 1e-3,
        eps_pn: 0.03,
        q: quantiles().to_vec(),
    };
    let zeros = vec![0.0; c];
    let part = |i: usize| {
        if p.len() == c {
            &zeros[..]
        } else {
            &p[i * c..(i + 1) * c]
        }
    };
    norm_act_forward(&np, x, &p[0..c], part(1), part(2), part(3))
}

/// The delayed Proxy Norm scale of norm `which` (`s_c` per channel), or ones.
fn delayed_scale(spec: &BlockSpec, which: usize, c: usize, p: &[f64]) -> Vec<f64> {
    let (_, act, proxy, scale) = spec.norm_of(which, c);
    (0..c)
        .map(|ch| {
            if proxy && scale == ProxyScale::Delayed {
                proxy_stats(
                    p[ch],
                    p[c + ch],
                    p[2 * c + ch],
                    p[3 * c + ch],
                    quantiles(),
                    act,
                    0.03,
                )
                .1
            } else {
                1.0
            }
        })
        .collect()
}

/// The output of an MBConv block ([`crate::ipu::block`]) for all images, in `f64`,
/// with the Proxy Norm placement of DESIGN.md under LN+PN (full scale after the
/// expansion, delayed scale after the spatial conv folded into the SE gate, γ-only
/// LayerNorm with no activation after the projection):
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
        // No norm before the spatial conv at expansion 1 (timm's
        // DepthwiseSeparableConv: conv_dw → bn1 → SE → conv_pw → bn2).
        let a1 = if spec.expand != 1 {
            norm(spec, 1, &e, px, m, &p[1])
        } else {
            e
        };
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
        // The delayed proxy scale is folded into the gate: z·sigmoid(SE(z))·s.
        let s2 = delayed_scale(spec, 2, m, &p[3]);
        let seo: Vec<f64> = (0..opx * m)
            .map(|j| a2[j] * gate[j % m] * s2[j % m])
            .collect();
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
