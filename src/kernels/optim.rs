//! Element-wise optimizer updates: SGD with momentum, RMSProp with TensorFlow
//! semantics, and the exponential moving average of weights.
//!
//! Every update works on flat `f32` slices of equal length (one parameter tensor and its
//! state), is SIMD with runtime dispatch, runs in parallel over fixed blocks, and is
//! element-wise, so results do not depend on the thread count.

use crate::error::{Error, Result, check_len};
use crate::simd::{self, Simd, SimdKernel, SimdLevel, dispatch};
use rayon::prelude::*;

/// Elements per parallel task.
const BLOCK: usize = 16 * 1024;

/// SGD with (heavy-ball) momentum and L2 weight decay:
/// `g' = g + wd·p ; m = μ·m + g' ; p −= lr·m`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SgdMomentum {
    /// Learning rate.
    pub lr: f32,
    /// Momentum μ.
    pub momentum: f32,
    /// L2 weight decay (0 for parameters that are not decayed).
    pub weight_decay: f32,
}

/// RMSProp as TensorFlow defines it (ε inside the square root), with L2 weight decay:
/// `g' = g + wd·p ; ms = ρ·ms + (1−ρ)·g'² ; mom = μ·mom + lr·g'/√(ms + ε) ; p −= mom`.
/// TensorFlow starts `ms` at 1 (see [`RmsPropTf::initial_mean_square`]).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct RmsPropTf {
    /// Learning rate.
    pub lr: f32,
    /// Decay ρ of the mean square (TensorFlow's `decay`; DESIGN.md's recipe: 0.953125).
    pub decay: f32,
    /// Momentum μ.
    pub momentum: f32,
    /// ε, added inside the square root (the paper: 1e-3).
    pub eps: f32,
    /// L2 weight decay (0 for parameters that are not decayed).
    pub weight_decay: f32,
}

impl RmsPropTf {
    /// The value TensorFlow initializes the mean-square slot with.
    pub const fn initial_mean_square() -> f32 {
        1.0
    }
}

fn check_finite(name: &str, v: f32) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{name} is not finite ({v})"
        )))
    }
}

struct SgdBlock<'a> {
    h: SgdMomentum,
    p: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
}

impl SimdKernel for SgdBlock<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let (lr, mu, wd) = (
            s.splat(self.h.lr),
            s.splat(self.h.momentum),
            s.splat(self.h.weight_decay),
        );
        let it = self
            .p
            .chunks_mut(S::LANES)
            .zip(self.g.chunks(S::LANES))
            .zip(self.m.chunks_mut(S::LANES));
        for ((p, g), m) in it {
            let pv = s.load_upto(p);
            let gv = s.mul_add(wd, pv, s.load_upto(g));
            let mv = s.mul_add(mu, s.load_upto(m), gv);
            s.store_upto(m, mv);
            s.store_upto(p, s.sub(pv, s.mul(lr, mv)));
        }
    }
}

/// Applies one SGD-with-momentum step to `param` with gradient `grad` and momentum
/// buffer `momentum` (all the same length), at the active SIMD level.
pub fn sgd_momentum(
    h: SgdMomentum,
    param: &mut [f32],
    grad: &[f32],
    momentum: &mut [f32],
) -> Result<()> {
    sgd_momentum_with(simd::active(), h, param, grad, momentum)
}

/// [`sgd_momentum`] at `level`.
pub fn sgd_momentum_with(
    level: SimdLevel,
    h: SgdMomentum,
    param: &mut [f32],
    grad: &[f32],
    momentum: &mut [f32],
) -> Result<()> {
    check_len("grad", grad.len(), param.len())?;
    check_len("momentum", momentum.len(), param.len())?;
    for (n, v) in [
        ("lr", h.lr),
        ("momentum", h.momentum),
        ("weight_decay", h.weight_decay),
    ] {
        check_finite(n, v)?;
    }
    param
        .par_chunks_mut(BLOCK)
        .zip(grad.par_chunks(BLOCK))
        .zip(momentum.par_chunks_mut(BLOCK))
        .for_each(|((p, g), m)| dispatch(level, SgdBlock { h, p, g, m }));
    Ok(())
}

struct RmsBlock<'a> {
    h: RmsPropTf,
    p: &'a mut [f32],
    g: &'a [f32],
    ms: &'a mut [f32],
    mom: &'a mut [f32],
}

impl SimdKernel for RmsBlock<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let h = self.h;
        let (lr, rho, one_m_rho) = (s.splat(h.lr), s.splat(h.decay), s.splat(1.0 - h.decay));
        let (mu, eps, wd) = (s.splat(h.momentum), s.splat(h.eps), s.splat(h.weight_decay));
        let it = self
            .p
            .chunks_mut(S::LANES)
            .zip(self.g.chunks(S::LANES))
            .zip(self.ms.chunks_mut(S::LANES))
            .zip(self.mom.chunks_mut(S::LANES));
        for (((p, g), ms), mom) in it {
            let pv = s.load_upto(p);
            let gv = s.mul_add(wd, pv, s.load_upto(g));
            let msv = s.mul_add(rho, s.load_upto(ms), s.mul(one_m_rho, s.mul(gv, gv)));
            s.store_upto(ms, msv);
            let step = s.div(s.mul(lr, gv), s.sqrt(s.add(msv, eps)));
            let momv = s.mul_add(mu, s.load_upto(mom), step);
            s.store_upto(mom, momv);
            s.store_upto(p, s.sub(pv, momv));
        }
    }
}

/// Applies one TensorFlow-RMSProp step to `param` with gradient `grad`, mean-square
/// slot `mean_square` (start it at [`RmsPropTf::initial_mean_square`]) and momentum
/// slot `momentum` (start at 0), at the active SIMD level.
pub fn rmsprop_tf(
    h: RmsPropTf,
    param: &mut [f32],
    grad: &[f32],
    mean_square: &mut [f32],
    momentum: &mut [f32],
) -> Result<()> {
    rmsprop_tf_with(simd::active(), h, param, grad, mean_square, momentum)
}

/// [`rmsprop_tf`] at `level`.
pub fn rmsprop_tf_with(
    level: SimdLevel,
    h: RmsPropTf,
    param: &mut [f32],
    grad: &[f32],
    mean_square: &mut [f32],
    momentum: &mut [f32],
) -> Result<()> {
    check_len("grad", grad.len(), param.len())?;
    check_len("mean_square", mean_square.len(), param.len())?;
    check_len("momentum", momentum.len(), param.len())?;
    for (n, v) in [
        ("lr", h.lr),
        ("decay", h.decay),
        ("momentum", h.momentum),
        ("eps", h.eps),
        ("weight_decay", h.weight_decay),
    ] {
        check_finite(n, v)?;
    }
    if h.eps <= 0.0 || !(0.0..=1.0).contains(&h.decay) {
        return Err(Error::InvalidArgument(format!(
            "RMSProp needs eps > 0 and 0 <= decay <= 1 (eps {}, decay {})",
            h.eps, h.decay
        )));
    }
    param
        .par_chunks_mut(BLOCK)
        .zip(grad.par_chunks(BLOCK))
        .zip(mean_square.par_chunks_mut(BLOCK))
        .zip(momentum.par_chunks_mut(BLOCK))
        .for_each(|(((p, g), ms), mom)| dispatch(level, RmsBlock { h, p, g, ms, mom }));
    Ok(())
}

struct EmaBlock<'a> {
    decay: f32,
    ema: &'a mut [f32],
    p: &'a [f32],
}

impl SimdKernel for EmaBlock<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let d = s.splat(self.decay);
        for (e, p) in self.ema.chunks_mut(S::LANES).zip(self.p.chunks(S::LANES)) {
            let ev = s.load_upto(e);
            let pv = s.load_upto(p);
            // ema + (1−d)(p − ema) = d·ema + (1−d)·p
            s.store_upto(e, s.mul_add(d, s.sub(ev, pv), pv));
        }
    }
}

/// `ema = decay·ema + (1 − decay)·param`, at the active SIMD level.
pub fn ema_update(decay: f32, ema: &mut [f32], param: &[f32]) -> Result<()> {
    ema_update_with(simd::active(), decay, ema, param)
}

/// [`ema_update`] at `level`.
pub fn ema_update_with(level: SimdLevel, decay: f32, ema: &mut [f32], param: &[f32]) -> Result<()> {
    check_len("param", param.len(), ema.len())?;
    if !(0.0..=1.0).contains(&decay) {
        return Err(Error::InvalidArgument(format!(
            "EMA decay {decay} is outside [0, 1]"
        )));
    }
    ema.par_chunks_mut(BLOCK)
        .zip(param.par_chunks(BLOCK))
        .for_each(|(e, p)| dispatch(level, EmaBlock { decay, ema: e, p }));
    Ok(())
}
