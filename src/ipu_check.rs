//! The IPU model against the SIMD kernels, one level above both: the same network
//! parameters (same seed) run through the model layer ([`crate::model::Network`]:
//! SIMD kernels, training mode, dropout and drop-connect off) and through the whole
//! chained IPU program ([`crate::ipu::chain`]), and every tensor both produce
//! compared (`effnet ipu run`). `ipu` itself never depends on `model`; this module
//! sits on top of both, like the CLI.

use crate::arch::ArchConfig;
use crate::error::Result;
use crate::ipu::Target;
use crate::ipu::chain::{self, ChainOpts, ChainParams, ChainResult};
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
    check_with(arch, res, batch, target, seed, ChainOpts::default())
}

/// [`check`] with the chain built for `opts` (recomputation on or off).
///
/// # Errors
/// As [`check`].
pub fn check_with(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    seed: u64,
    opts: ChainOpts,
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
    let ipu = chain::run(arch, res, batch, target, opts, &params, &x, &labels)?;
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

/// One parameter tensor after the optimizer step, IPU system against the SIMD model.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLine {
    /// Parameter name.
    pub tensor: String,
    /// `‖Δw_ipu − Δw_simd‖₂ / ‖Δw_simd‖₂`: the update's relative error, from the
    /// RMSProp momentum slots (after a first step from zero momentum, the update
    /// itself, free of the rounding of `w`; the denominator at least 1e-2 of the RMS
    /// norm of the model's updates).
    pub update_rel_err: f64,
    /// `‖w_ipu − w_simd‖₂ / ‖w_simd‖₂` after the step.
    pub weight_rel_err: f64,
}

/// The comparison of one optimizer step of the system with the SIMD model's step on
/// the same global batch.
#[derive(Clone, Debug)]
pub struct StepCheck {
    /// Per trainable parameter.
    pub lines: Vec<StepLine>,
    /// The largest update error.
    pub max_update_rel_err: f64,
    /// The largest weight error.
    pub max_weight_rel_err: f64,
    /// The system's run.
    pub ipu: crate::ipu::system::exec::SystemRun,
    /// The model's loss over the global batch.
    pub loss: f32,
}

/// One optimizer step of `arch` at `res` on the IPU system `cfg` (pipelined over
/// `cfg.stages` IPUs, `cfg.replicas` replicas, `cfg.accumulation` micro-batches of
/// `cfg.micro_batch` each, recomputation as `cfg.recompute`), executed through the
/// codelets, against the model layer's step (SIMD kernels) on the same global batch:
/// the loss and gradients over the whole batch at once (per micro-batch and averaged
/// for BatchNorm, whose statistics are per micro-batch on the IPU), then the paper's
/// RMSProp (weight decay 1e-5 on convolution and dense weights, learning rate
/// `2⁻¹⁴ · global batch`). Every trainable parameter is compared after the step.
///
/// # Errors
/// As [`Network::new`], [`Network::loss_and_grad`] and
/// [`crate::ipu::system::exec::run_system`].
pub fn check_system(
    arch: &ArchConfig,
    res: usize,
    cfg: &crate::ipu::system::SystemConfig,
    target: &Target,
    seed: u64,
) -> Result<StepCheck> {
    use crate::ipu::system::exec::{micro_batch_range, run_system};
    use crate::ipu::system::train_state::RmsHyper;
    use crate::model::optim::{Optimizer, OptimizerKind};
    let g = cfg.global_batch();
    let mut net = Network::new(arch, seed)?;
    perturb(net.params_mut(), seed);
    let params = chain_params(net.params());
    let rng = CounterRng::new(seed, 0x1C);
    let img = res * res * 3;
    let x: Vec<f32> = (0..g * img)
        .map(|i| 2.0 * rng.uniform(i as u64) - 1.0)
        .collect();
    let k = arch.num_classes;
    let labels: Vec<usize> = (0..g)
        .map(|i| (rng.u64_at((1 << 40) + i as u64) % k as u64) as usize)
        .collect();
    let lr = g as f32 / 16384.0;
    let wd = 1e-5;
    // The model's step.
    let loss = if chain::batch_norm(arch) {
        let mut sum: Vec<Vec<f32>> = net
            .params()
            .grads
            .iter()
            .map(|v| vec![0.0; v.len()])
            .collect();
        let mut loss = 0.0f64;
        for r in 0..cfg.replicas {
            for a in 0..cfg.accumulation {
                let m = micro_batch_range(cfg, r, a);
                let (l, _) = net.loss_and_grad(
                    &x[m.start * img..m.end * img],
                    cfg.micro_batch,
                    res,
                    Targets::Labels(&labels[m]),
                    0.0,
                    &Pass::deterministic_train(),
                )?;
                loss += l as f64;
                for (s, gr) in sum.iter_mut().zip(&net.params().grads) {
                    for (a, b) in s.iter_mut().zip(gr) {
                        *a += b;
                    }
                }
            }
        }
        let mb = (cfg.replicas * cfg.accumulation) as f32;
        let store = net.params_mut();
        for (g, s) in store.grads.iter_mut().zip(&sum) {
            for (a, b) in g.iter_mut().zip(s) {
                *a = b / mb;
            }
        }
        (loss / mb as f64) as f32
    } else {
        net.loss_and_grad(
            &x,
            g,
            res,
            Targets::Labels(&labels),
            0.0,
            &Pass::deterministic_train(),
        )?
        .0
    };
    let decays: std::collections::HashSet<String> = net
        .params()
        .infos()
        .iter()
        .filter(|i| i.kind.decays())
        .map(|i| i.name.clone())
        .collect();
    let mut opt = Optimizer::new(OptimizerKind::paper_rmsprop(), wd, net.params());
    opt.step(net.params_mut(), lr, |_| true)?;
    // The system's step.
    let mut h = RmsHyper::paper(lr);
    h.weight_decay = wd;
    let ipu = run_system(
        arch,
        res,
        cfg,
        target,
        &h,
        &|n| decays.contains(n),
        &params,
        &x,
        &labels,
    )?;
    let store = net.params();
    let state = opt.state(store);
    let sq = |v: &mut dyn Iterator<Item = f64>| v.map(|a| a * a).sum::<f64>();
    let moms: Vec<&[f32]> = ipu
        .masters
        .iter()
        .map(|(name, _)| {
            state
                .get(&format!("optim.momentum.{name}"))
                .map(|t| t.data.as_slice())
                .ok_or_else(|| {
                    crate::Error::InvalidArgument(format!("the model has no momentum for {name}"))
                })
        })
        .collect::<Result<_>>()?;
    let rms = (moms
        .iter()
        .map(|d| sq(&mut d.iter().map(|&a| a as f64)))
        .sum::<f64>()
        / moms.len().max(1) as f64)
        .sqrt();
    let mut lines = Vec::new();
    for (((name, w), (_, mom)), want_mom) in ipu.masters.iter().zip(&ipu.momenta).zip(&moms) {
        let i = store.find(name).ok_or_else(|| {
            crate::Error::InvalidArgument(format!("the model has no parameter {name}"))
        })?;
        let want = &store.values[i];
        if w.len() != want.len() || mom.len() != want_mom.len() {
            return Err(crate::Error::InvalidArgument(format!(
                "{name}: sizes differ"
            )));
        }
        let diff = sq(&mut w.iter().zip(want).map(|(a, b)| *a as f64 - *b as f64)).sqrt();
        let mdiff = sq(&mut mom
            .iter()
            .zip(*want_mom)
            .map(|(a, b)| *a as f64 - *b as f64))
        .sqrt();
        let upd_den = sq(&mut want_mom.iter().map(|&a| a as f64))
            .sqrt()
            .max(1e-2 * rms);
        lines.push(StepLine {
            tensor: name.clone(),
            update_rel_err: if upd_den > 0.0 {
                mdiff / upd_den
            } else {
                mdiff
            },
            weight_rel_err: diff / sq(&mut want.iter().map(|&a| a as f64)).sqrt().max(1e-30),
        });
    }
    let fold = |f: fn(&StepLine) -> f64| {
        lines.iter().map(f).fold(
            0.0,
            |a: f64, b| if b.is_nan() { f64::INFINITY } else { a.max(b) },
        )
    };
    let max_update_rel_err = fold(|l| l.update_rel_err);
    let max_weight_rel_err = fold(|l| l.weight_rel_err);
    Ok(StepCheck {
        lines,
        max_update_rel_err,
        max_weight_rel_err,
        ipu,
        loss,
    })
}
