//! The whole network — or one pipeline stage of it — as **one IPU's program**: stem
//! → every MBConv block → head conv + norm/act → global pool → classifier → softmax
//! cross-entropy, then the complete backward (the weight gradient of every layer).
//!
//! Placement keeps data where the next layer needs it:
//! - every activation is a [`Dist`]: a regular [`Grid`] of boxes (image ranges × row
//!   ranges × channel ranges) spread evenly over the IPU's tiles, so that two layers
//!   with the same split (or one refining the other) find their boxes on the same
//!   tiles;
//! - each convolution's output split is chosen (`split`) against the layout its input
//!   already has, by the codelet estimators of its busiest box plus the exchange its
//!   input windows need: consecutive layers share a split unless the estimate says a
//!   change pays; a window that is exactly a local box is read in place, otherwise
//!   only the parts on other tiles (halo rows, other channel ranges) cross the
//!   exchange;
//! - norms, activations, squeeze-excitation and the skip addition run on the boxes of
//!   the convolution before them — in place for inference (and for the skip addition
//!   always); their statistics are partial sums per box reduced over the tiles that
//!   hold them; Proxy Norm's (μ, s) are computed per channel chunk, spread over tiles;
//! - weights (and norm parameters) stay resident, as copies on the tiles that use
//!   them; the masters are spread over the tiles and refresh the copies after an
//!   optimizer step ([`Chain::refresh`]); weight-gradient partials are reduced over the
//!   tiles that hold them.
//!
//! With recomputation ([`ChainOpts::recompute`]) only each segment's (block's) input
//! lives from the forward to the backward pass; the segment's forward is built again
//! at the start of its backward. Memory is accounted with liveness by the graph's
//! profile.
//!
//! [`build`] / [`build_stage`] build the graph without any tensor data (sizes and
//! mappings only: what `effnet ipu report` profiles); [`run`] builds, profiles and
//! executes a whole-network step.

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
