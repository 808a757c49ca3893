//! The training system executed on the model: every stage of every replica an
//! [`Engine`] over its stage's graph, the micro-batches pushed through the grouped
//! pipeline schedule (forward passes, then backward passes, then the transfers
//! between stage IPUs, step by step), each stage's activations for the micro-batches
//! in flight kept in a FIFO (the stash the profile counts in tile memory), the
//! gradients accumulated by the codelets, all-reduced across the replicas (ring
//! order, summed by the `ReducePartials` codelet), and one optimizer step (the
//! `RmsPropTf` codelet on every master slice, then the refresh of the resident
//! copies). The comparison with the SIMD model lives above both, in
//! [`crate::ipu_check`].

use super::config::SystemConfig;
use super::report::stage_ranges;
use super::schedule::in_flight;
use super::train_state::{RmsHyper, TrainState, add_train_state};
use crate::arch::ArchConfig;
use crate::error::{Error, Result};
use crate::ipu::chain::{
    Chain, ChainOpts, ChainParams, build_stage, network_steps, one_hot, read_dist, write_dist,
};
use crate::ipu::codelets::Codelet;
use crate::ipu::graph::{Engine, Program, TensorId};
use crate::ipu::target::{Precision, Target};
use std::collections::VecDeque;

/// The result of one optimizer step of the system.
#[derive(Clone, Debug)]
pub struct SystemRun {
    /// The master weights after the step, by name (replica 0).
    pub masters: Vec<(String, Vec<f32>)>,
    /// The RMSProp momentum slots after the step, by name (replica 0): after a first
    /// step from zero momentum, the update itself (`w_before − w_after`, free of the
    /// rounding of `w`).
    pub momenta: Vec<(String, Vec<f32>)>,
    /// Whether every replica holds bitwise the same masters after the step.
    pub replicas_agree: bool,
    /// Mean loss over the micro-batches.
    pub loss: f32,
    /// Segments of each stage.
    pub stages: Vec<Vec<String>>,
    /// Whether every stage fits its tiles (with its micro-batches in flight).
    pub fits: bool,
    /// The largest per-tile peak over the stages (bytes).
    pub max_tile_bytes: usize,
}

/// The images of micro-batch `(replica r, accumulation step a)`: global images
/// `[(r·A + a)·mb, (r·A + a + 1)·mb)`.
pub fn micro_batch_range(cfg: &SystemConfig, r: usize, a: usize) -> std::ops::Range<usize> {
    let k = r * cfg.accumulation + a;
    k * cfg.micro_batch..(k + 1) * cfg.micro_batch
}

/// Runs one optimizer step of `arch` at `res` on the system `cfg` (fp32 on the
/// host) from `params`, over the global batch `x` (`[G][res][res][3]`, `G =`
/// [`SystemConfig::global_batch`]) with `labels`; RMSProp `h`, weight decay on the
/// parameters `decays` selects.
///
/// # Errors
/// [`Error::InvalidArgument`] for mis-sized inputs, a missing parameter or a bad
/// configuration; [`Error::TileMemory`] when a stage does not fit.
#[allow(clippy::too_many_arguments)]
pub fn run_system(
    arch: &ArchConfig,
    res: usize,
    cfg: &SystemConfig,
    target: &Target,
    h: &RmsHyper,
    decays: &dyn Fn(&str) -> bool,
    params: &ChainParams,
    x: &[f32],
    labels: &[usize],
) -> Result<SystemRun> {
    cfg.validate()?;
    let g = cfg.global_batch();
    let img = res * res * 3;
    crate::error::check_len("images", x.len(), g * img)?;
    crate::error::check_len("labels", labels.len(), g)?;
    let ns = network_steps(arch, res, cfg.micro_batch)?;
    let ranges = stage_ranges(&ns, cfg, target, Precision::F32)?;
    let n = ranges.len();
    let opts = ChainOpts {
        training: true,
        recompute: cfg.recompute,
    };
    let scale = 1.0 / (cfg.accumulation * cfg.replicas) as f32;
    let mut chains: Vec<Chain> = Vec::new();
    let mut states: Vec<TrainState> = Vec::new();
    let mut max_tile_bytes = 0;
    for (i, r) in ranges.iter().enumerate() {
        let mut ch = build_stage(&ns, r.clone(), arch.norm_eps, target, Precision::F32, opts)?;
        let ts = add_train_state(&mut ch, h, scale, decays)?;
        let second = Program::Sequence(vec![
            ch.bwd.clone(),
            ts.accumulate.clone(),
            ts.update.clone(),
        ]);
        let p = ch
            .graph
            .profile_stashed(&ch.fwd, &second, in_flight(i, n) - 1)?;
        max_tile_bytes = max_tile_bytes.max(p.tile_peak_bytes.iter().copied().max().unwrap_or(0));
        chains.push(ch);
        states.push(ts);
    }
    let stash: Vec<Vec<TensorId>> = chains
        .iter()
        .map(|c| c.graph.live_across(&c.fwd, &c.bwd))
        .collect();
    let k = ns.classes;
    let mut engines: Vec<Vec<Engine>> = Vec::new();
    for _ in 0..cfg.replicas {
        let mut row = Vec::new();
        for ch in &chains {
            let mut e = Engine::new(&ch.graph);
            ch.load_params(&mut e, params)?;
            row.push(e);
        }
        engines.push(row);
    }
    let a = cfg.accumulation;
    let mut loss_sum = 0.0f64;
    for (r, row) in engines.iter_mut().enumerate() {
        let mut fifo: Vec<VecDeque<Vec<Vec<f32>>>> = vec![VecDeque::new(); n];
        for t in 0..a + 2 * n - 2 {
            let fwd_mb = |i: usize| t.checked_sub(i).filter(|&m| m < a);
            let bwd_mb = |i: usize| t.checked_sub(2 * n - 2 - i).filter(|&m| m < a);
            for i in 0..n {
                let Some(m) = fwd_mb(i) else { continue };
                let (ch, e) = (&chains[i], &mut row[i]);
                let imgs = micro_batch_range(cfg, r, m);
                if i == 0 {
                    write_dist(e, &ch.input, &x[imgs.start * img..imgs.end * img])?;
                }
                if let Some(hd) = ch.head {
                    e.write(hd.targets, &one_hot(&labels[imgs], k)?)?;
                }
                e.run(&ch.fwd)?;
                fifo[i].push_back(stash[i].iter().map(|&t| e.read(t).to_vec()).collect());
            }
            for i in 0..n {
                if bwd_mb(i).is_none() {
                    continue;
                }
                let (ch, e) = (&chains[i], &mut row[i]);
                let saved = fifo[i]
                    .pop_front()
                    .ok_or_else(|| Error::InvalidArgument("pipeline stash underflow".into()))?;
                for (&t, v) in stash[i].iter().zip(&saved) {
                    e.write(t, v)?;
                }
                e.run(&ch.bwd)?;
                e.run(&states[i].accumulate)?;
                if let Some(hd) = ch.head {
                    loss_sum += e.read(hd.loss)[0] as f64;
                }
            }
            // The transfers between stage IPUs: activations forward, gradients back.
            for i in 0..n {
                if i + 1 < n && fwd_mb(i).is_some() {
                    let out = chains[i].out.as_ref().ok_or_else(|| {
                        Error::InvalidArgument("a stage without an output".into())
                    })?;
                    let v = read_dist(&row[i], out);
                    write_dist(&mut row[i + 1], &chains[i + 1].input, &v)?;
                }
                if i > 0 && bwd_mb(i).is_some() {
                    let (dx, dout) = (chains[i].dx.as_ref(), chains[i - 1].dout.as_ref());
                    let (Some(dx), Some(dout)) = (dx, dout) else {
                        return Err(Error::InvalidArgument("a stage without gradients".into()));
                    };
                    let v = read_dist(&row[i], dx);
                    write_dist(&mut row[i - 1], dout, &v)?;
                }
            }
        }
    }
    // The all-reduce of the accumulators across the replicas, then the step.
    let reps = cfg.replicas;
    if reps > 1 {
        for (s, ts) in states.iter().enumerate() {
            for slot in &ts.slots {
                let acc = slot[0];
                let len = chains[s].graph.tensor(acc).len;
                let mut all = Vec::with_capacity(reps * len);
                for row in &engines {
                    all.extend_from_slice(row[s].read(acc));
                }
                let mut bufs = vec![all, vec![0.0; len]];
                Codelet::reduce(reps, len, false).run_on(&mut bufs)?;
                for row in engines.iter_mut() {
                    row[s].write(acc, &bufs[1])?;
                }
            }
        }
    }
    for row in engines.iter_mut() {
        for (s, e) in row.iter_mut().enumerate() {
            e.run(&states[s].update)?;
        }
    }
    let masters_of = |row: &Vec<Engine>| -> Vec<(String, Vec<f32>)> {
        chains
            .iter()
            .zip(row)
            .flat_map(|(ch, e)| {
                ch.params
                    .iter()
                    .map(|p| (p.name.clone(), e.read(p.value).to_vec()))
            })
            .collect()
    };
    let masters = masters_of(&engines[0]);
    let momenta = chains
        .iter()
        .zip(&states)
        .zip(&engines[0])
        .flat_map(|((ch, ts), e)| {
            ch.params
                .iter()
                .zip(&ts.slots)
                .map(|(p, sl)| (p.name.clone(), e.read(sl[2]).to_vec()))
        })
        .collect();
    let replicas_agree = engines.iter().skip(1).all(|row| masters_of(row) == masters);
    Ok(SystemRun {
        masters,
        momenta,
        replicas_agree,
        loss: (loss_sum / (reps * a) as f64) as f32,
        stages: chains.iter().map(|c| c.segments.clone()).collect(),
        fits: true,
        max_tile_bytes,
    })
}
