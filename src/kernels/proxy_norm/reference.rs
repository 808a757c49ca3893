//! Plain `f64` reference of Proxy Norm: the quantiles, the proxy statistics and their
//! backward, the standalone activation and the fused LayerNorm/GroupNorm + Proxy Norm,
//! written straight from the formulas of the [module docs](super) (and DESIGN.md).
//! Inputs are `f64` so that finite differences can be taken in `f64`.

use super::ProxyVariant;
use super::special::normal_quantile;
use crate::kernels::activation::Activation;
use crate::kernels::norm::{NormDesc, reference as norm_ref};

/// The K normal quantiles `q_k = √2·erfinv(2(k+0.5)/K − 1) = Φ⁻¹((k+0.5)/K)`.
pub fn quantiles(k: usize) -> Vec<f64> {
    (0..k)
        .map(|i| normal_quantile((i as f64 + 0.5) / k as f64))
        .collect()
}

/// The parameters, `[channels]` each.
#[derive(Copy, Clone, Debug)]
pub struct Params<'a> {
    /// γ.
    pub gamma: &'a [f64],
    /// β.
    pub beta: &'a [f64],
    /// β′.
    pub beta_prime: &'a [f64],
    /// γ′.
    pub gamma_prime: &'a [f64],
}

/// The settings shared by every function here.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The variant.
    pub variant: ProxyVariant,
    /// φ.
    pub activation: Activation,
    /// The quantiles ([`quantiles`]).
    pub q: Vec<f64>,
    /// ε_pn.
    pub eps_pn: f64,
}

/// Proxy statistics per channel.
#[derive(Clone, Debug)]
pub struct Stats {
    /// μ.
    pub mean: Vec<f64>,
    /// v.
    pub var: Vec<f64>,
    /// s = 1/√(v + ε_pn).
    pub scale: Vec<f64>,
}

/// Gradients of the parameters (and of the input), `[channels]` each.
#[derive(Clone, Debug)]
pub struct Grads {
    /// `∂L/∂x` (or `∂L/∂x̂` for the standalone activation).
    pub dx: Vec<f64>,
    /// `∂L/∂γ`.
    pub dgamma: Vec<f64>,
    /// `∂L/∂β`.
    pub dbeta: Vec<f64>,
    /// `∂L/∂β′`.
    pub dbeta_prime: Vec<f64>,
    /// `∂L/∂γ′`.
    pub dgamma_prime: Vec<f64>,
}

fn proxy_points(su: &Setup, p: &Params, c: usize) -> Vec<(f64, f64)> {
    su.q.iter()
        .map(|&q| {
            let t = p.beta_prime[c] + (1.0 + p.gamma_prime[c]) * q;
            (t, p.gamma[c] * t + p.beta[c])
        })
        .collect()
}

/// μ, v, s of every channel (two passes over the K points).
pub fn stats(su: &Setup, p: &Params) -> Stats {
    let k = su.q.len() as f64;
    let c = p.gamma.len();
    let mut out = Stats {
        mean: vec![0.0; c],
        var: vec![0.0; c],
        scale: vec![0.0; c],
    };
    for ch in 0..c {
        let r: Vec<f64> = proxy_points(su, p, ch)
            .iter()
            .map(|&(_, pk)| su.activation.value(pk))
            .collect();
        let mu = r.iter().sum::<f64>() / k;
        let v = r.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / k;
        out.mean[ch] = mu;
        out.var[ch] = v;
        out.scale[ch] = 1.0 / (v + su.eps_pn).sqrt();
    }
    out
}

/// Backward of [`stats`]: `(dγ, dβ, dβ′, dγ′)` from `dμ`, `ds` (DESIGN.md's formulas).
pub fn stats_backward(
    su: &Setup,
    p: &Params,
    st: &Stats,
    dmu: &[f64],
    ds: &[f64],
) -> [Vec<f64>; 4] {
    let k = su.q.len() as f64;
    let c = p.gamma.len();
    let mut out = [vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]];
    for ch in 0..c {
        let (mu, s) = (st.mean[ch], st.scale[ch]);
        for (i, &(t, pk)) in proxy_points(su, p, ch).iter().enumerate() {
            let r = su.activation.value(pk);
            let g = (dmu[ch] - ds[ch] * s.powi(3) * (r - mu)) / k;
            let h = g * su.activation.derivative(pk);
            out[0][ch] += h * t;
            out[1][ch] += h;
            out[2][ch] += p.gamma[ch] * h;
            out[3][ch] += p.gamma[ch] * h * su.q[i];
        }
    }
    out
}

/// The standalone activation on `x̂` (`[rows][channels]`): `(z, stats)`.
pub fn forward(su: &Setup, xhat: &[f64], p: &Params) -> (Vec<f64>, Stats) {
    let c = p.gamma.len();
    let st = stats(su, p);
    let z = xhat
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let ch = i % c;
            let a = su.activation.value(p.gamma[ch] * x + p.beta[ch]);
            let centered = a - st.mean[ch];
            if su.variant == ProxyVariant::FullScale {
                centered * st.scale[ch]
            } else {
                centered
            }
        })
        .collect();
    (z, st)
}

/// Backward of [`forward`] for upstream `dz` (and `ds` = `∂L/∂s` for the delayed
/// variant): `dx` is `∂L/∂x̂`.
pub fn backward(su: &Setup, xhat: &[f64], dz: &[f64], ds_in: Option<&[f64]>, p: &Params) -> Grads {
    let c = p.gamma.len();
    let st = stats(su, p);
    let full = su.variant == ProxyVariant::FullScale;
    let mut g = Grads {
        dx: vec![0.0; xhat.len()],
        dgamma: vec![0.0; c],
        dbeta: vec![0.0; c],
        dbeta_prime: vec![0.0; c],
        dgamma_prime: vec![0.0; c],
    };
    let mut sdz = vec![0.0; c];
    let mut ds = vec![0.0; c];
    for (i, &x) in xhat.iter().enumerate() {
        let ch = i % c;
        let u = p.gamma[ch] * x + p.beta[ch];
        let a = su.activation.value(u);
        let sc = if full { st.scale[ch] } else { 1.0 };
        if full {
            ds[ch] += dz[i] * (a - st.mean[ch]);
        }
        sdz[ch] += dz[i];
        let du = dz[i] * sc * su.activation.derivative(u);
        g.dgamma[ch] += du * x;
        g.dbeta[ch] += du;
        g.dx[i] = du * p.gamma[ch];
    }
    if su.variant == ProxyVariant::DelayedScale
        && let Some(d) = ds_in
    {
        ds.copy_from_slice(d);
    }
    let dmu: Vec<f64> = (0..c)
        .map(|ch| -(if full { st.scale[ch] } else { 1.0 }) * sdz[ch])
        .collect();
    let [a, b, bp, gp] = stats_backward(su, p, &st, &dmu, &ds);
    for ch in 0..c {
        g.dgamma[ch] += a[ch];
        g.dbeta[ch] += b[ch];
    }
    g.dbeta_prime = bp;
    g.dgamma_prime = gp;
    g
}

/// The fused op: LayerNorm/GroupNorm `norm` (no affine; its activation is ignored)
/// of `x`, then [`forward`].
pub fn fused_forward(norm: &NormDesc, su: &Setup, x: &[f64], p: &Params) -> (Vec<f64>, Stats) {
    let d = plain(norm);
    let xhat = norm_ref::forward(&d, x, None, None).y;
    forward(su, &xhat, p)
}

/// Backward of [`fused_forward`]: [`backward`] then the normalization's backward.
pub fn fused_backward(
    norm: &NormDesc,
    su: &Setup,
    x: &[f64],
    dz: &[f64],
    ds_in: Option<&[f64]>,
    p: &Params,
) -> Grads {
    let d = plain(norm);
    let xhat = norm_ref::forward(&d, x, None, None).y;
    let mut g = backward(su, &xhat, dz, ds_in, p);
    g.dx = norm_ref::backward(&d, x, &g.dx, None, None).0;
    g
}

fn plain(norm: &NormDesc) -> NormDesc {
    NormDesc {
        activation: Activation::Identity,
        ..*norm
    }
}
