//! The whole network as **one program** on the model: stem → every MBConv block →
//! head conv + norm/act → global pool → classifier → softmax cross-entropy, then the
//! complete backward (the weight gradient of every layer), each layer fed by the
//! previous layer's output where it lies on the model's tiles.
//!
//! Every activation is a [`Dist`]: boxes of (images, rows, channels) on tiles. A
//! convolution gathers its input windows (with their halo rows) from the previous
//! layer's boxes by one exchange and writes its output in its own split, chosen by the
//! [`Planner`] (output rows × output channels or whole groups, one image per box)
//! within the tile budget: a layer whose activations do not fit one tile per image is
//! split over more tiles, never skipped. Norms, activations, squeeze-excitation and
//! skip additions run in place on the boxes of the convolution before them; their
//! statistics (per image for GN/LN, over the batch for BN) are partial sums per box,
//! gathered and reduced on a tile and broadcast back. Parameters (timm names, effnet
//! layouts, see [`ChainParams`]) live spread over their own tiles; each box receives
//! the slice it needs; weight-gradient partials are reduced over the boxes in pieces
//! that fit a tile.
//!
//! [`build`] builds the graph without any tensor data (sizes and mappings only: what
//! `effnet ipu report` profiles); [`run`] builds, profiles and executes it.

mod add;
mod boxes;
mod context;
mod conv;
mod driver;
mod head;
mod norm;
mod pool;
mod se;
mod split;
mod steps;

pub use super::vocab::Step;
pub use boxes::{Dist, Grid, Part, gather, ranges, read_dist, remote_elems, write_dist};
pub use context::{ChainOpts, ChainParam, ChainParams, LayerSplit};
pub use driver::{
    Chain, ChainResult, Head, Segment, batch_norm, build, build_segment, build_stage, one_hot, run,
};
pub use steps::{NetSegment, NetSteps, network_steps, segments, steps_of};
