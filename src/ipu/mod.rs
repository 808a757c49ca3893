//! A host-side model of a Graphcore IPU, in the spirit of Poplar's `IPUModel`: tile
//! codelets (C++ in Poplar's vertex form, `codelets/`) run on the CPU inside a graph
//! of tensors mapped to tiles, with every tile's memory budget enforced and cycles
//! **estimated** (never measured; every figure it reports is an estimate).
//!
//! - [`target`]: the Mk2 (GC200) and Bow presets, every constant with its provenance.
//! - [`graph`]: tensors with tile mappings, vertices, compute sets, exchanges,
//!   programs; the memory check; the bulk-synchronous profile; the host [`graph::Engine`].
//! - [`codelets`]: the vertex classes, their C trampolines and cycle estimators.

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
