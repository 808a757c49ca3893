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
//! - [`b0`]: EfficientNet-B0 and its G16 / GN / LN+PN variants as layer lists, and the
//!   per-layer estimated report (`effnet ipu report`).
//! - [`block`]: one MBConv block forward and backward as one program, run through the
//!   codelets.
//! - [`run`]: every convolution (split by the planner) and every block that fits,
//!   executed and compared with the oracles (`effnet ipu run`).
//! - [`reference`]: the oracles, in one place (the convolution oracle switch).
//! - [`picture`]: the per-tile memory / cycles picture as a PNG.
//!
//! Layering: `ipu` uses [`crate::kernels`] only as a reference, never the other way.
//!
//! ```
//! use effnet::ipu::b0::{Arch, report};
//! use effnet::ipu::{Precision, Target};
//! let r = report(Arch::B0G16Gn, 64, 2, &Target::mk2(), Precision::F16).unwrap();
//! assert!(r.training_img_per_s > 0.0); // an estimate, not a measurement
//! ```

pub mod b0;
pub mod block;
pub mod codelets;
pub mod graph;
pub mod picture;
pub mod planner;
pub mod reference;
pub mod run;
pub mod target;

pub use codelets::{Codelet, ConvGeom, Kind, NormGeom};
pub use graph::{Engine, Graph, Program};
pub use target::{Precision, Target};
