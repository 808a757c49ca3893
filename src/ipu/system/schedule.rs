//! The step of a pipelined, data-parallel training system in **estimated** cycles:
//! the grouped pipeline schedule over the stages (fill, steady state and drain, per
//! micro-batch), the transfers between stage IPUs over IPU-Links, the gradient
//! all-reduce across replicas, and the optimizer step.
//!
//! Grouped schedule (Graphcore's default for pipelined training: every IPU runs a
//! forward pass, then a backward pass, in each pipeline step): with `N` stages and
//! `A` micro-batches per optimizer step, IPU `i` runs in step `t` the forward pass
//! of micro-batch `t − i` and the backward pass of micro-batch `t − (2N − 2 − i)`
//! (when they exist); the last stage runs a micro-batch's forward and backward in
//! the same step. There are `A + 2N − 2` steps; each lasts as long as its slowest
//! IPU, then the activations (forward) and gradients (backward) cross to the
//! neighbouring IPUs, then the IPUs sync. IPU `i` holds `2N − 1 − 2i` micro-batches
//! in flight.

use crate::ipu::target::Target;

/// Estimated cycles of a program, split by kind.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleSplit {
    /// Compute sets (slowest tile each).
    pub compute: u64,
    /// On-chip exchange phases.
    pub exchange: u64,
    /// On-chip syncs.
    pub sync: u64,
}

impl CycleSplit {
    /// The sum.
    pub fn total(&self) -> u64 {
        self.compute + self.exchange + self.sync
    }
    /// `self + o`.
    pub fn add(&self, o: &CycleSplit) -> CycleSplit {
        CycleSplit {
            compute: self.compute + o.compute,
            exchange: self.exchange + o.exchange,
            sync: self.sync + o.sync,
        }
    }
}

/// One stage's estimated cycles and traffic.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageTiming {
    /// Forward pass of one micro-batch.
    pub fwd: CycleSplit,
    /// Backward pass of one micro-batch (recomputation included) and its gradient
    /// accumulation.
    pub bwd: CycleSplit,
    /// The optimizer step (once per global batch).
    pub update: CycleSplit,
    /// Bytes of the activations it sends to the next stage per micro-batch.
    pub out_bytes: usize,
    /// Bytes of the input gradient it sends to the previous stage per micro-batch.
    pub grad_bytes: usize,
    /// Bytes of its gradients in the all-reduce (fp32 accumulators).
    pub allreduce_bytes: usize,
}

/// The estimated cycles of one optimizer step of the whole system.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StepCycles {
    /// Compute on the critical path (the slowest IPU of each pipeline step, and the
    /// slowest stage's optimizer step).
    pub compute: u64,
    /// On-chip exchange on the critical path.
    pub exchange: u64,
    /// Activations and gradients crossing between stage IPUs over IPU-Links.
    pub inter_ipu: u64,
    /// The gradient all-reduce across replicas.
    pub allreduce: u64,
    /// On-chip syncs on the critical path and the syncs across IPUs.
    pub sync: u64,
    /// Pipeline steps.
    pub pipeline_steps: usize,
}

impl StepCycles {
    /// The total.
    pub fn total(&self) -> u64 {
        self.compute + self.exchange + self.inter_ipu + self.allreduce + self.sync
    }
}

/// Micro-batches in flight on stage `i` of `n` (whose activations are kept until
/// their backward pass).
pub fn in_flight(i: usize, n: usize) -> usize {
    2 * n - 1 - 2 * i
}

/// Cycles to move `bytes` over `links` IPU-Links.
fn link_cycles(bytes: usize, links: usize, t: &Target) -> u64 {
    (bytes as f64 / t.link_bytes_per_cycle(links)).ceil() as u64
}

/// A ring all-reduce of `bytes` over `replicas` IPUs (reduce-scatter then
/// all-gather: `2(R − 1)` steps, each moving `bytes / R` over the ring's links and
/// ending in a sync across IPUs).
pub fn ring_allreduce_cycles(bytes: usize, replicas: usize, t: &Target) -> u64 {
    if replicas <= 1 || bytes == 0 {
        return 0;
    }
    let steps = 2 * (replicas - 1);
    let chunk = bytes.div_ceil(replicas);
    steps as u64 * (link_cycles(chunk, t.allreduce_links, t) + t.external_sync_cycles)
}

/// The step of `stages` (in pipeline order) run with `micro_batches` micro-batches
/// per replica on `replicas` replicas, by the grouped schedule.
pub fn step_cycles(
    stages: &[StageTiming],
    micro_batches: usize,
    replicas: usize,
    t: &Target,
) -> StepCycles {
    let n = stages.len();
    let a = micro_batches;
    let mut s = StepCycles::default();
    if n == 0 {
        return s;
    }
    let steps = a + 2 * n - 2;
    s.pipeline_steps = steps;
    for step in 0..steps {
        let mut worst = CycleSplit::default();
        let mut xfer = 0u64;
        for (i, st) in stages.iter().enumerate() {
            let f = step.checked_sub(i).filter(|&m| m < a);
            let b = step.checked_sub(2 * n - 2 - i).filter(|&m| m < a);
            let mut w = CycleSplit::default();
            if f.is_some() {
                w = w.add(&st.fwd);
                if i + 1 < n {
                    xfer = xfer.max(link_cycles(st.out_bytes, t.pipeline_links, t));
                }
            }
            if b.is_some() {
                w = w.add(&st.bwd);
                if i > 0 {
                    xfer = xfer.max(link_cycles(st.grad_bytes, t.pipeline_links, t));
                }
            }
            if w.total() > worst.total() {
                worst = w;
            }
        }
        s.compute += worst.compute;
        s.exchange += worst.exchange;
        s.sync += worst.sync;
        s.inter_ipu += xfer;
        if n > 1 {
            s.sync += t.external_sync_cycles;
        }
    }
    // The all-reduce of every stage's gradients runs on all stages at once (each
    // stage's replicas form their own ring); then the optimizer step.
    s.allreduce = stages
        .iter()
        .map(|st| ring_allreduce_cycles(st.allreduce_bytes, replicas, t))
        .max()
        .unwrap_or(0);
    let upd = stages
        .iter()
        .map(|st| st.update)
        .max_by_key(|u| u.total())
        .unwrap_or_default();
    s.compute += upd.compute;
    s.exchange += upd.exchange;
    s.sync += upd.sync;
    s
}
