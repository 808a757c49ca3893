//! The paper's training system on the model: pipeline stages on several IPUs,
//! data-parallel replicas with gradient accumulation and an all-reduce, the
//! optimizer step — estimated ([`report`]) and executed ([`exec`]).
//!
//! - [`config`]: stages × replicas, micro-batch, accumulation, recomputation, the
//!   split points; the published IPU-POD16 configurations.
//! - [`train_state`]: fp32 masters, gradient accumulators and RMSProp slots added to
//!   a stage's graph, with the accumulation and optimizer programs.
//! - [`schedule`]: the grouped pipeline schedule, the inter-IPU transfers, the ring
//!   all-reduce: one optimizer step in estimated cycles.
//! - [`report`]: every stage built and profiled; per-layer rows, the cycle split,
//!   images per second; inference on one IPU.
//! - [`exec`]: the pipelined, replicated, accumulating step run through the codelets
//!   and checked against the SIMD model's step (`effnet ipu run --stages …`).

pub mod config;
pub mod exec;
pub mod report;
pub mod schedule;
pub mod train_state;

pub use config::{SystemConfig, inference_micro_batch};
pub use report::{
    InferenceReport, StageReport, SystemLine, SystemReport, inference_report, system_report,
};
pub use schedule::{CycleSplit, StageTiming, StepCycles};
