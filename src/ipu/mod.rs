//! A host-side model of a Graphcore IPU, in the spirit of Poplar's `IPUModel`: tile
//! codelets (C++ in Poplar's vertex form, `codelets/`) run on the CPU inside a graph
//! of tensors mapped to tiles, with every tile's memory budget enforced and cycles
//! **estimated** (never measured; every figure it reports is an estimate).
//!
//! - [`target`]: the Mk2 (GC200) and Bow presets, every constant with its provenance.
//! - [`graph`]: tensors with tile mappings, vertices, compute sets, exchanges,
//!   programs; the memory check; the bulk-synchronous profile; the host [`graph::Engine`].
//! - [`codelets`]: the vertex classes, their C trampolines and cycle estimators.
//! - [`planner`]: splits a layer over the tiles within the memory budget and picks the
//!   split with the lowest estimated cycles.
//! - [`vocab`]: the shared vocabulary of the builders (chain steps, the norm after a
//!   convolution, an MBConv block), so that they depend on it and not on each other.
//! - [`network`]: any network of [`crate::arch`] (B0–B7, `tiny`, G1/G16, BN/GN/LN+PN)
//!   as a layer list, the per-layer planner's report (`effnet ipu report --layers`)
//!   and the one-IPU report of the built graph.
//! - [`chain`]: the network (or one pipeline stage of it) as one IPU's graph: stem →
//!   blocks → head → pool → classifier → loss, then the backward, each block
//!   recomputed from its input when asked; every activation a grid of boxes spread
//!   over the tiles, each convolution's split chosen against its input's layout,
//!   weights resident where they are used (`effnet ipu run` compares it with the SIMD
//!   model in `crate::ipu_check`).
//! - [`system`]: the paper's training system — pipeline stages on several IPUs,
//!   replicas, gradient accumulation, the all-reduce and the optimizer step —
//!   estimated (`effnet ipu report --system pod16`) and executed (`effnet ipu run
//!   --stages 2 --replicas 2 --accumulate 2`).
//! - [`block`]: one MBConv block forward and backward, built from the chain's steps.
//! - [`run`]: every convolution and every block on random data against the `f64`
//!   oracles (`effnet ipu run --oracle f64`).
//! - [`reference`](mod@reference): the oracles, in one place (the convolution oracle switch).
//! - [`picture`]: the per-tile memory / cycles picture as a PNG.
//!
//! Layering: `ipu` uses [`crate::arch`] (the one description of the networks) and
//! [`crate::kernels`] (as the reference), never the other way.
//!
//! ```
//! use effnet::arch::ArchConfig;
//! use effnet::ipu::network::report;
//! use effnet::ipu::{Precision, Target};
//! let a = ArchConfig::from_name("b0_g16_gn").unwrap();
//! let r = report(&a, 64, 2, &Target::mk2(), Precision::F16).unwrap();
//! assert!(r.training_img_per_s > 0.0); // an estimate, not a measurement
//! ```

pub mod block;
pub mod chain;
pub mod codelets;
pub mod graph;
pub mod network;
pub mod picture;
pub mod planner;
pub mod reference;
pub mod run;
pub mod system;
pub mod target;
pub mod vocab;

pub use codelets::{Codelet, ConvGeom, Kind, NormGeom, ProxyScale};
pub use graph::{Engine, Graph, Program};
pub use target::{Precision, Target};
