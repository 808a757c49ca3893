//! The **estimated** report of a training system (and of inference on one IPU):
//! every pipeline stage built as its own IPU's graph, with its training state,
//! profiled with the micro-batches it holds in flight; the step by the grouped
//! schedule; per-layer rows, the cycle split and the per-tile pictures.

use super::config::SystemConfig;
use super::schedule::{CycleSplit, StageTiming, StepCycles, in_flight, step_cycles};
use super::train_state::{RmsHyper, add_train_state};
use crate::arch::ArchConfig;
use crate::error::{Error, Result};
use crate::ipu::chain::{Chain, ChainOpts, NetSteps, build_stage, network_steps};
use crate::ipu::graph::{Profile, Program};
use crate::ipu::picture::TilePicture;
use crate::ipu::planner::{Pass, Planner};
use crate::ipu::target::{Precision, Target};
use crate::ipu::vocab::Step;
use std::ops::Range;

/// One row of the report: a layer label of one stage (every figure **estimated**).
#[derive(Clone, Debug, PartialEq)]
pub struct SystemLine {
    /// Stage (IPU of a replica).
    pub stage: usize,
    /// Layer name.
    pub layer: String,
    /// Kind (`stem`, `pointwise`, … `update`).
    pub kind: &'static str,
    /// `fwd`, `recompute`, `bwd` or `update`.
    pub pass: &'static str,
    /// Tiles with work.
    pub tiles: usize,
    /// Peak live bytes on its busiest tile.
    pub max_tile_bytes: usize,
    /// The cycles of the layer's compute sets, exchanges and syncs.
    pub cycles: CycleSplit,
    /// Useful FLOPs.
    pub flops: f64,
}

/// One stage of the system.
#[derive(Clone, Debug)]
pub struct StageReport {
    /// Segments it holds (`stem`, `blocks.{s}.{i}`, `head`).
    pub segments: Vec<String>,
    /// Its layers.
    pub lines: Vec<SystemLine>,
    /// Its cycles and traffic.
    pub timing: StageTiming,
    /// Micro-batches it holds in flight.
    pub in_flight: usize,
    /// Whether every tile stays within its budget.
    pub fits: bool,
    /// The memory error when it does not.
    pub memory_error: Option<String>,
    /// Peak live bytes on its busiest tile.
    pub max_tile_bytes: usize,
    /// Per-tile peak memory and cycles (one micro-batch forward + backward, and the
    /// optimizer step).
    pub picture: TilePicture,
}

/// The system's report.
#[derive(Clone, Debug)]
pub struct SystemReport {
    /// The configuration.
    pub config: SystemConfig,
    /// The split points actually used (segment names starting stages 1, 2, …).
    pub splits: Vec<String>,
    /// Per stage.
    pub stages: Vec<StageReport>,
    /// One optimizer step.
    pub step: StepCycles,
    /// Estimated images per second of the whole system.
    pub training_img_per_s: f64,
    /// Whether every stage fits.
    pub fits: bool,
    /// The largest per-tile peak over the stages.
    pub max_tile_bytes: usize,
}

/// The segments of each stage: at the named split points, or balanced.
///
/// # Errors
/// [`Error::InvalidArgument`] for an unknown split point, split points out of order,
/// or more stages than segments.
pub fn stage_ranges(
    ns: &NetSteps,
    cfg: &SystemConfig,
    target: &Target,
    precision: Precision,
) -> Result<Vec<Range<usize>>> {
    let nseg = ns.segments.len();
    if cfg.stages > nseg {
        return Err(Error::InvalidArgument(format!(
            "{} stages for {nseg} segments",
            cfg.stages
        )));
    }
    let cuts: Vec<usize> = if cfg.stages == 1 {
        Vec::new()
    } else if !cfg.splits.is_empty() {
        let mut v = Vec::new();
        for s in &cfg.splits {
            let i = ns
                .segment(s)
                .ok_or_else(|| Error::InvalidArgument(format!("no segment {s:?} to split at")))?;
            if i == 0 || v.last().is_some_and(|&l| i <= l) {
                return Err(Error::InvalidArgument(format!(
                    "split points {:?} out of order",
                    cfg.splits
                )));
            }
            v.push(i);
        }
        v
    } else {
        balanced_cuts(ns, cfg.stages, target, precision)?
    };
    let mut v = Vec::new();
    let mut a = 0;
    for c in cuts {
        v.push(a..c);
        a = c;
    }
    v.push(a..nseg);
    Ok(v)
}

/// Cuts minimising the largest stage's cost, a segment's cost being the per-layer
/// planner's estimate of its convolutions (forward and backward).
fn balanced_cuts(
    ns: &NetSteps,
    stages: usize,
    target: &Target,
    precision: Precision,
) -> Result<Vec<usize>> {
    let pl = Planner::new(target.clone(), precision);
    let mut cost = Vec::new();
    for seg in &ns.segments {
        let mut c = 0u64;
        for st in &ns.steps[seg.steps.clone()] {
            if let Step::Conv { shape, .. } = st {
                for pass in [Pass::Fwd, Pass::Bwd] {
                    c += pl.plan_conv(shape, pass).map(|r| r.1.total()).unwrap_or(0);
                }
            }
        }
        cost.push(c);
    }
    // best[k][j]: the smallest largest-stage cost of the first j segments in k stages.
    let n = cost.len();
    let pre: Vec<u64> = std::iter::once(0)
        .chain(cost.iter().scan(0, |s, &c| {
            *s += c;
            Some(*s)
        }))
        .collect();
    let inf = u64::MAX;
    let mut best = vec![vec![inf; n + 1]; stages + 1];
    let mut from = vec![vec![0usize; n + 1]; stages + 1];
    best[0][0] = 0;
    for k in 1..=stages {
        for j in k..=n {
            for i in (k - 1)..j {
                if best[k - 1][i] == inf {
                    continue;
                }
                let v = best[k - 1][i].max(pre[j] - pre[i]);
                if v < best[k][j] {
                    best[k][j] = v;
                    from[k][j] = i;
                }
            }
        }
    }
    let mut cuts = Vec::new();
    let mut j = n;
    for k in (1..=stages).rev() {
        let i = from[k][j];
        if k > 1 {
            cuts.push(i);
        }
        j = i;
    }
    cuts.reverse();
    Ok(cuts)
}

/// The cycles of the layers of `ch` whose pass is in `passes`.
fn split_of(ch: &Chain, p: &Profile, passes: &[&str]) -> CycleSplit {
    let mut s = CycleSplit::default();
    for (info, lp) in ch.graph.layers.iter().zip(&p.layers) {
        if passes.contains(&info.pass) {
            s.compute += lp.compute_cycles;
            s.exchange += lp.exchange_cycles;
            s.sync += lp.sync_cycles;
        }
    }
    s
}

fn lines_of(ch: &Chain, p: &Profile, stage: usize) -> Vec<SystemLine> {
    ch.graph
        .layers
        .iter()
        .zip(&p.layers)
        .filter(|(i, lp)| lp.tiles_used > 0 && i.name != "input")
        .map(|(i, lp)| SystemLine {
            stage,
            layer: i.name.clone(),
            kind: i.kind,
            pass: i.pass,
            tiles: lp.tiles_used,
            max_tile_bytes: lp.max_tile_bytes,
            cycles: CycleSplit {
                compute: lp.compute_cycles,
                exchange: lp.exchange_cycles,
                sync: lp.sync_cycles,
            },
            flops: i.flops,
        })
        .collect()
}

fn picture_of(ch: &Chain, p: &Profile) -> TilePicture {
    let tiles = ch.graph.target.tiles;
    let mut cycles = vec![0u64; tiles];
    for lp in &p.layers {
        for (a, c) in cycles.iter_mut().zip(&lp.tile_cycles) {
            *a += c;
        }
    }
    TilePicture {
        bytes: p.tile_peak_bytes.clone(),
        cycles,
        budget: ch.graph.target.budget_bytes(),
    }
}

/// The estimated report of `arch` trained at `res` on the system `cfg`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad configuration or network; a stage over its
/// tile budget is reported (`fits: false`), not an error.
pub fn system_report(
    arch: &ArchConfig,
    res: usize,
    cfg: &SystemConfig,
    target: &Target,
    precision: Precision,
) -> Result<SystemReport> {
    cfg.validate()?;
    target.validate()?;
    let ns = network_steps(arch, res, cfg.micro_batch)?;
    let ranges = stage_ranges(&ns, cfg, target, precision)?;
    let n = ranges.len();
    let opts = ChainOpts {
        training: true,
        recompute: cfg.recompute,
    };
    let h = RmsHyper::paper(1e-3);
    let scale = 1.0 / (cfg.accumulation * cfg.replicas) as f32;
    let eb = precision.bytes();
    let mut stages = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        let mut ch = build_stage(&ns, r.clone(), arch.norm_eps, target, precision, opts)?;
        let ts = add_train_state(&mut ch, &h, scale, &|_| true)?;
        let second = Program::Sequence(vec![
            ch.bwd.clone(),
            ts.accumulate.clone(),
            ts.update.clone(),
        ]);
        let fl = in_flight(i, n);
        let (p, over) = ch.graph.profile_unchecked(&ch.fwd, &second, fl - 1)?;
        let bwd = split_of(&ch, &p, &["recompute", "bwd"]);
        let timing = StageTiming {
            fwd: split_of(&ch, &p, &["fwd"]),
            bwd,
            update: split_of(&ch, &p, &["update"]),
            out_bytes: ch
                .out
                .as_ref()
                .map(|d| d.n * d.h * d.w * d.c * eb)
                .unwrap_or(0),
            grad_bytes: ch
                .dx
                .as_ref()
                .map(|d| d.n * d.h * d.w * d.c * eb)
                .unwrap_or(0),
            allreduce_bytes: ch.params.iter().map(|p| p.len * 4).sum(),
        };
        let max_tile_bytes = p.tile_peak_bytes.iter().copied().max().unwrap_or(0);
        stages.push(StageReport {
            segments: ch.segments.clone(),
            lines: lines_of(&ch, &p, i),
            timing,
            in_flight: fl,
            fits: over.is_none(),
            memory_error: over.map(|e| e.to_string()),
            max_tile_bytes,
            picture: picture_of(&ch, &p),
        });
    }
    let timings: Vec<StageTiming> = stages.iter().map(|s| s.timing.clone()).collect();
    let step = step_cycles(&timings, cfg.accumulation, cfg.replicas, target);
    let images = cfg.global_batch() as f64;
    let fits = stages.iter().all(|s| s.fits);
    let max_tile_bytes = stages.iter().map(|s| s.max_tile_bytes).max().unwrap_or(0);
    let splits = ranges
        .iter()
        .skip(1)
        .map(|r| ns.segments[r.start].name.clone())
        .collect();
    Ok(SystemReport {
        config: cfg.clone(),
        splits,
        stages,
        step,
        training_img_per_s: images * target.clock_hz / step.total().max(1) as f64,
        fits,
        max_tile_bytes,
    })
}

/// Inference of `arch` at `res` on one IPU, micro-batch `micro_batch` (every figure
/// **estimated**).
#[derive(Clone, Debug)]
pub struct InferenceReport {
    /// Images per micro-batch.
    pub micro_batch: usize,
    /// Cycles of one forward pass.
    pub cycles: CycleSplit,
    /// Estimated images per second.
    pub img_per_s: f64,
    /// Whether every tile stays within its budget.
    pub fits: bool,
    /// The memory error when it does not.
    pub memory_error: Option<String>,
    /// Peak live bytes on the busiest tile.
    pub max_tile_bytes: usize,
    /// Its layers (stage 0).
    pub lines: Vec<SystemLine>,
}

/// The inference graph of `arch` at `res` on one IPU: forward only, element-wise steps
/// in place, weights resident; profiled for one micro-batch.
///
/// # Errors
/// As [`build_stage`].
pub fn inference_report(
    arch: &ArchConfig,
    res: usize,
    micro_batch: usize,
    target: &Target,
    precision: Precision,
) -> Result<InferenceReport> {
    let ns = network_steps(arch, res, micro_batch)?;
    let opts = ChainOpts {
        training: false,
        recompute: false,
    };
    let ch = build_stage(
        &ns,
        0..ns.segments.len(),
        arch.norm_eps,
        target,
        precision,
        opts,
    )?;
    let (p, over) = ch
        .graph
        .profile_unchecked(&ch.fwd, &Program::Sequence(Vec::new()), 0)?;
    let cycles = split_of(&ch, &p, &["fwd"]);
    Ok(InferenceReport {
        micro_batch,
        cycles,
        img_per_s: micro_batch as f64 * target.clock_hz / cycles.total().max(1) as f64,
        fits: over.is_none(),
        memory_error: over.map(|e| e.to_string()),
        max_tile_bytes: p.tile_peak_bytes.iter().copied().max().unwrap_or(0),
        lines: lines_of(&ch, &p, 0),
    })
}
