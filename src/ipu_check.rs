//! The IPU model against the SIMD kernels, one level above both: the same network
//! parameters (same seed) run through the model layer ([`crate::model::Network`]:
//! SIMD kernels, training mode, dropout and drop-connect off) and through the whole
//! chained IPU program ([`crate::ipu::chain`]), and every tensor both produce
//! compared (`effnet ipu run`). `ipu` itself never depends on `model`; this module
//! sits on top of both, like the CLI.

use crate::arch::ArchConfig;
use crate::error::Result;
use crate::ipu::Target;
use crate::ipu::chain::{self, ChainParams, ChainResult};
use crate::kernels::loss::Targets;
use crate::model::network::{Network, Pass};
use crate::model::params::{ParamKind, ParamStore};
use crate::rng::CounterRng;

/// One compared tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckLine {
    /// `logits`, `loss` or a parameter name with `.grad`.
    pub tensor: String,
    /// `‖ipu − simd‖₂ / ‖simd‖₂` (for gradients, the denominator is at least 1e-2 of
    /// the RMS norm of the model's gradient tensors).
    pub rel_err: f64,
}

/// The comparison.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// Per tensor.
    pub lines: Vec<CheckLine>,
    /// The largest relative error.
    pub max_rel_err: f64,
    /// The IPU run (profile, splits).
    pub ipu: ChainResult,
    /// The model's loss.
    pub loss: f32,
}

/// The chain's parameters from the model's store: the one conversion at the boundary.
/// Both follow timm's names and effnet's layouts, so values pass through unchanged;
/// BatchNorm's running statistics (buffers, unused in training mode) are left out.
pub fn chain_params(store: &ParamStore) -> ChainParams {
    store
        .infos()
        .iter()
        .zip(&store.values)
        .filter(|(i, _)| i.kind.trainable())
        .map(|(i, v)| (i.name.clone(), v.clone()))
        .collect()
}

/// `‖a − b‖₂ / ‖b‖₂` in f64 (`‖a − b‖₂` when `b` is zero).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Moves the norm, proxy and bias parameters off their initial values (γ near 1, the
/// others small), deterministically from `seed`, so that every term of their
/// gradients matters.
pub fn perturb(store: &mut ParamStore, seed: u64) {
    let rng = CounterRng::new(seed, 0x1B);
    let mut k = 0u64;
    let kinds: Vec<ParamKind> = store.infos().iter().map(|i| i.kind).collect();
    for (v, kind) in store.values.iter_mut().zip(kinds) {
        let (base, amp) = match kind {
            ParamKind::NormGamma => (1.0, 0.2),
            ParamKind::NormBeta | ParamKind::ProxyBeta | ParamKind::ProxyGamma => (0.0, 0.2),
            ParamKind::Bias => (0.0, 0.1),
            _ => continue,
        };
        for a in v.iter_mut() {
            *a = base + amp * (2.0 * rng.uniform(k) - 1.0);
            k += 1;
        }
    }
}

/// Runs one training step of `arch` at `res`, batch `batch` through the model layer
/// (SIMD kernels) and the chained IPU program on `target`, from the same parameters
/// (initialised from `seed`, norm/proxy/bias parameters perturbed), images and labels,
/// and compares the logits, the loss and every parameter gradient.
///
/// # Errors
/// Any error of [`Network::new`], [`Network::loss_and_grad`] or [`chain::run`]
/// (an [`crate::Error::TileMemory`] when a layer cannot be split to fit).
pub fn check(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    seed: u64,
) -> Result<CheckResult> {
    let mut net = Network::new(arch, seed)?;
    perturb(net.params_mut(), seed);
    let params = chain_params(net.params());
    let rng = CounterRng::new(seed, 0x1C);
    let x: Vec<f32> = (0..batch * res * res * 3)
        .map(|i| 2.0 * rng.uniform(i as u64) - 1.0)
        .collect();
    let k = arch.num_classes;
    let labels: Vec<usize> = (0..batch)
        .map(|i| (rng.u64_at((1 << 40) + i as u64) % k as u64) as usize)
        .collect();
    let (loss, tape) = net.loss_and_grad(
        &x,
        batch,
        res,
        Targets::Labels(&labels),
        0.0,
        &Pass::deterministic_train(),
    )?;
    let ipu = chain::run(arch, res, batch, target, &params, &x, &labels)?;
    let mut lines = vec![
        CheckLine {
            tensor: "logits".into(),
            rel_err: rel_err(&ipu.logits, &tape.logits),
        },
        CheckLine {
            tensor: "loss".into(),
            rel_err: rel_err(&[ipu.loss], &[loss]),
        },
    ];
    let store = net.params();
    // A gradient that vanishes analytically (the bias of a BatchNorm whose output
    // feeds another BatchNorm through a 1×1 conv: Σ over the batch of a BN input
    // gradient is 0) is noise on both sides; its difference is measured against
    // 1e-2 of the RMS norm of the gradient tensors instead of its own norm.
    let sq = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
    let rms =
        (store.grads.iter().map(|g| sq(g)).sum::<f64>() / store.grads.len().max(1) as f64).sqrt();
    for (name, g) in &ipu.grads {
        let i = store.find(name).ok_or_else(|| {
            crate::Error::InvalidArgument(format!("the model has no parameter {name}"))
        })?;
        let want = &store.grads[i];
        let diff: f64 = g
            .iter()
            .zip(want)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let den = sq(want).sqrt().max(1e-2 * rms);
        lines.push(CheckLine {
            tensor: format!("{name}.grad"),
            rel_err: if g.len() == want.len() && den > 0.0 {
                diff / den
            } else {
                f64::INFINITY
            },
        });
    }
    let max_rel_err = lines.iter().map(|l| l.rel_err).fold(0.0, |a: f64, b| {
        if b.is_nan() { f64::INFINITY } else { a.max(b) }
    });
    Ok(CheckResult {
        lines,
        max_rel_err,
        ipu,
        loss,
    })
}
