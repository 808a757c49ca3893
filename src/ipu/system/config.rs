//! The shape of a training system: pipeline stages × data-parallel replicas, the
//! micro-batch, gradient accumulation, recomputation and where the pipeline is cut;
//! and the paper's IPU-POD16 configurations.
//!
//! Provenance of the presets (DESIGN.md, "The IPU execution model"; Graphcore's
//! public configurations for the paper): EfficientNet-B0 on an IPU-POD16 as 2
//! pipeline stages × 8 replicas, micro-batch 12 and gradient accumulation 8 at the
//! native resolution (24 and 4 at half resolution), global batch 768, recomputation
//! on, the pipeline split at block 3b (`blocks.2.1`); B2–B5 as 4 stages × 4
//! replicas (B5: micro-batch 2, accumulation 96). Published inference micro-batch on
//! one Mk2: B0-G1-BN 49, B0-G16-GN 106. What the presets fill in beyond that is
//! named as an assumption where it is made.

use crate::arch::ArchConfig;
use crate::error::{Error, Result};

/// A training system: `stages × replicas` IPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemConfig {
    /// Pipeline stages (IPUs per replica).
    pub stages: usize,
    /// Data-parallel replicas.
    pub replicas: usize,
    /// Images per micro-batch (per replica, per pipeline step).
    pub micro_batch: usize,
    /// Micro-batches accumulated per optimizer step (per replica).
    pub accumulation: usize,
    /// Recompute each block from its input in the backward pass.
    pub recompute: bool,
    /// The segments (`blocks.{stage}.{index}`) at which stages 1, 2, … start;
    /// empty: balanced by the per-layer planner's estimates.
    pub splits: Vec<String>,
    /// Where the configuration comes from (printed with the report).
    pub provenance: String,
}

impl SystemConfig {
    /// IPUs in use.
    pub fn ipus(&self) -> usize {
        self.stages * self.replicas
    }
    /// Images per optimizer step.
    pub fn global_batch(&self) -> usize {
        self.micro_batch * self.accumulation * self.replicas
    }
    /// One IPU, one micro-batch per step.
    pub fn one_ipu(micro_batch: usize) -> SystemConfig {
        SystemConfig {
            stages: 1,
            replicas: 1,
            micro_batch,
            accumulation: 1,
            recompute: true,
            splits: Vec::new(),
            provenance: "one IPU".into(),
        }
    }
    /// The paper's IPU-POD16 configuration of `arch` trained at `res` (see the module
    /// documentation): half-resolution settings when `res` is the network's
    /// published half resolution.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a network outside B0–B5 and `tiny` (the tiny
    /// networks take the B0 shape, for tests).
    pub fn pod16(arch: &ArchConfig, res: usize) -> Result<SystemConfig> {
        let k = match arch.scale {
            s @ 0..=5 => s,
            crate::arch::TINY_SCALE => 6,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "{}: no IPU-POD16 configuration (B0–B5)",
                    arch.name
                )));
            }
        };
        let half = arch.half_res() == Some(res);
        Ok(match k {
            0 | 6 => SystemConfig {
                stages: 2,
                replicas: 8,
                micro_batch: if half { 24 } else { 12 },
                accumulation: if half { 4 } else { 8 },
                recompute: true,
                splits: if k == 0 {
                    vec!["blocks.2.1".into()]
                } else {
                    Vec::new()
                },
                provenance: "published: B0 on IPU-POD16, 2 stages x 8 replicas, split at block 3b".into(),
            },
            1 => SystemConfig {
                stages: 2,
                replicas: 8,
                micro_batch: if half { 24 } else { 12 },
                accumulation: if half { 4 } else { 8 },
                recompute: true,
                splits: Vec::new(),
                provenance: "assumed: B1 as B0 (not published here); stages balanced by the planner".into(),
            },
            5 => SystemConfig {
                stages: 4,
                replicas: 4,
                micro_batch: 2,
                accumulation: 96,
                recompute: true,
                splits: Vec::new(),
                provenance: "published: B5 on IPU-POD16, 4 stages x 4 replicas, micro-batch 2, accumulation 96; stages balanced by the planner".into(),
            },
            _ => SystemConfig {
                stages: 4,
                replicas: 4,
                micro_batch: 4,
                accumulation: 48,
                recompute: true,
                splits: Vec::new(),
                provenance: "published: 4 stages x 4 replicas; micro-batch 4 x accumulation 48 (global batch 768) assumed; stages balanced by the planner".into(),
            },
        })
    }

    /// Checks the counts.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero count or a split list that does not have
    /// one entry per stage boundary.
    pub fn validate(&self) -> Result<()> {
        if self.stages == 0 || self.replicas == 0 || self.micro_batch == 0 || self.accumulation == 0
        {
            return Err(Error::InvalidArgument(
                "stages, replicas, micro-batch and accumulation must be at least 1".into(),
            ));
        }
        if !self.splits.is_empty() && self.splits.len() != self.stages - 1 {
            return Err(Error::InvalidArgument(format!(
                "{} stages need {} split points, got {}",
                self.stages,
                self.stages - 1,
                self.splits.len()
            )));
        }
        Ok(())
    }
}

/// The published inference micro-batch on one Mk2 for `arch`: 49 for depthwise (G1)
/// networks (B0-G1-BN), 106 for G16 ones (B0-G16-GN); other variants take the value
/// of their convolution family (an assumption).
pub fn inference_micro_batch(arch: &ArchConfig) -> usize {
    match arch.spatial {
        crate::arch::SpatialConv::G1 => 49,
        _ => 106,
    }
}
