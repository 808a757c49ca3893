//! The IPU execution model: codelets against the f64 oracles, the graph rules
//! (tile-local vertices, memory budget), estimators monotone in work size, blocks and
//! the whole network against the SIMD model, and the pipelined, replicated training
//! system. One test binary, so that the library is linked once.

#[path = "../common/mod.rs"]
mod common;

mod codelets;
mod graph;
mod network;
mod system;

use effnet::ipu::codelets::ConvGeom;
use effnet::kernels::conv::ConvShape;

/// Relative tolerance of the codelets against the f64 oracles.
const TOL: f64 = 2e-5;

/// The geometry of a whole convolution on one tile.
pub(crate) fn full_geom(s: &ConvShape) -> ConvGeom {
    let d = &s.desc;
    ConvGeom {
        nb: d.batch,
        in_h0: 0,
        in_hn: d.in_h,
        in_w0: 0,
        in_wn: d.in_w,
        out_h0: 0,
        out_hn: s.out_h,
        out_w0: 0,
        out_wn: s.out_w,
        kh: d.kernel_h,
        kw: d.kernel_w,
        stride: d.stride_h,
        pad_t: d.padding.top,
        pad_l: d.padding.left,
        groups: s.groups,
        cin_g: d.group_size,
        cout_g: s.cout_per_group,
    }
}

/// Widened copy.
pub(crate) fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
