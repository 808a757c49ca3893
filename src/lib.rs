//! # effnet
//!
//! Kernels for EfficientNet-style networks on the CPU: grouped, depthwise and pointwise
//! convolutions and fused Proxy Norm activations, forward and backward, written once
//! over a SIMD abstraction with runtime dispatch (AVX-512, AVX2, portable `wide`,
//! scalar) and run multi-core on `rayon` with results that do not depend on the
//! number of threads.
//!
//! Activations are NHWC (`[batch][height][width][channels]`, channels fastest) and
//! `f32`. Every operation is described by a descriptor that is validated once; invalid
//! input is an [`Error`], never a panic.
//!
//! - [`kernels`]: the operators ([`kernels::conv`] for convolutions).
//! - [`simd`]: the instruction-set abstraction and runtime dispatch.

#![warn(missing_docs)]

pub mod arch;
pub mod bench;
pub mod data;
pub mod error;
pub mod io;
pub mod ipu;
pub mod ipu_check;
pub mod kernels;
pub mod model;
pub mod report;
pub mod rng;
pub mod simd;

pub use error::{Error, Result};
