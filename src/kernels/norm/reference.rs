//! Plain `f64` reference normalizations: slow, short and obviously right. The tests
//! compare the fast kernels with these (and these with finite differences); they are
//! public so that other crates can check against the same oracle.
//!
//! Layouts and semantics are those of [`super::NormDesc`]; the descriptor is not
//! validated here (pass a valid one). Inputs are `f64` so that finite differences can
//! be taken in `f64`.

use super::{NormDesc, NormKind};

/// The set of element `(n, c)`.
type SetFn = Box<dyn Fn(usize, usize) -> usize>;

/// `(set of element (n, c), number of sets, elements per set)`.
fn sets(d: &NormDesc) -> (SetFn, usize, usize) {
    let (n, hw, c) = (d.batch, d.h * d.w, d.channels);
    match d.kind {
        NormKind::BatchNorm => (Box::new(|_, ch| ch), c, n * hw),
        NormKind::LayerNorm => (Box::new(|nn, _| nn), n, hw * c),
        NormKind::GroupNorm { groups, grouping } => {
            let gs = c / groups;
            let f: SetFn = match grouping {
                super::Grouping::Contiguous => Box::new(move |nn, ch| nn * groups + ch / gs),
                super::Grouping::Strided => Box::new(move |nn, ch| nn * groups + ch % groups),
            };
            (f, n * groups, hw * gs)
        }
    }
}

/// Calls `f(index, n, c)` for every element in memory order.
fn each(d: &NormDesc, mut f: impl FnMut(usize, usize, usize)) {
    let (hw, c) = (d.h * d.w, d.channels);
    for n in 0..d.batch {
        for p in 0..hw {
            for ch in 0..c {
                f((n * hw + p) * c + ch, n, ch);
            }
        }
    }
}

/// The result of [`forward`]: the output and each set's mean and biased variance
/// (the layout of [`super::NormStats`]).
#[derive(Clone, Debug)]
pub struct Forward {
    /// `y`, NHWC.
    pub y: Vec<f64>,
    /// Mean per set.
    pub mean: Vec<f64>,
    /// Biased variance per set.
    pub var: Vec<f64>,
}

/// Means and biased variances of every set (two passes).
pub fn statistics(d: &NormDesc, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (set, count, m) = sets(d);
    let mut mean = vec![0.0; count];
    each(d, |i, n, c| mean[set(n, c)] += x[i]);
    for v in &mut mean {
        *v /= m as f64;
    }
    let mut var = vec![0.0; count];
    each(d, |i, n, c| {
        let s = set(n, c);
        var[s] += (x[i] - mean[s]).powi(2);
    });
    for v in &mut var {
        *v /= m as f64;
    }
    (mean, var)
}

/// `y = φ(γ·(x − mean)/√(var + ε) + β)` with given per-set statistics (for
/// BatchNorm inference pass the running mean and variance).
pub fn apply(
    d: &NormDesc,
    x: &[f64],
    mean: &[f64],
    var: &[f64],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
) -> Vec<f64> {
    let (set, _, _) = sets(d);
    let mut y = vec![0.0; x.len()];
    each(d, |i, n, c| {
        let s = set(n, c);
        let xh = (x[i] - mean[s]) / (var[s] + d.eps as f64).sqrt();
        let u = gamma.map_or(1.0, |g| g[c]) * xh + beta.map_or(0.0, |b| b[c]);
        y[i] = d.activation.value(u);
    });
    y
}

/// The forward pass with the statistics of `x`.
pub fn forward(d: &NormDesc, x: &[f64], gamma: Option<&[f64]>, beta: Option<&[f64]>) -> Forward {
    let (mean, var) = statistics(d, x);
    Forward {
        y: apply(d, x, &mean, &var, gamma, beta),
        mean,
        var,
    }
}

/// The gradients of [`forward`] for upstream `dy`: `(dx, dγ, dβ)`.
pub fn backward(
    d: &NormDesc,
    x: &[f64],
    dy: &[f64],
    gamma: Option<&[f64]>,
    beta: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (set, count, m) = sets(d);
    let (mean, var) = statistics(d, x);
    let eps = d.eps as f64;
    let c_total = d.channels;
    let xhat: Vec<f64> = {
        let mut v = vec![0.0; x.len()];
        each(d, |i, n, c| {
            let s = set(n, c);
            v[i] = (x[i] - mean[s]) / (var[s] + eps).sqrt();
        });
        v
    };
    let mut dgamma = vec![0.0; c_total];
    let mut dbeta = vec![0.0; c_total];
    let mut dxhat = vec![0.0; x.len()];
    each(d, |i, _, c| {
        let g = gamma.map_or(1.0, |g| g[c]);
        let u = g * xhat[i] + beta.map_or(0.0, |b| b[c]);
        let du = dy[i] * d.activation.derivative(u);
        dgamma[c] += du * xhat[i];
        dbeta[c] += du;
        dxhat[i] = du * g;
    });
    let mut m1 = vec![0.0; count];
    let mut m2 = vec![0.0; count];
    each(d, |i, n, c| {
        let s = set(n, c);
        m1[s] += dxhat[i] / m as f64;
        m2[s] += dxhat[i] * xhat[i] / m as f64;
    });
    let mut dx = vec![0.0; x.len()];
    each(d, |i, n, c| {
        let s = set(n, c);
        dx[i] = (dxhat[i] - m1[s] - xhat[i] * m2[s]) / (var[s] + eps).sqrt();
    });
    (dx, dgamma, dbeta)
}
