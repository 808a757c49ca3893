//! Grouped and dense k×k convolutions (any group size; fast paths for 8, 16 and 32
//! channels per group; the 3-channel stem).
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc): activations NHWC
//! (`x: [N][H][W][C_in]`, `y: [N][OH][OW][C_out]`), weight
//! `[kh][kw][group_size][C_out]`, bias `[C_out]`.
//!
//! # How the kernels work
//! One kernel walks pixels × groups directly; a group convolution is never a loop of
//! per-group tensor operations. Every pass runs at every [`SimdLevel`]; the fastest
//! paths are for AVX-512 and 16 channels per group (G16), whose 16 output channels are
//! exactly one vector.
//!
//! - **Forward** is a direct convolution. A task owns a band of output rows of one
//!   image and a block of groups (as many as keep their weights in cache). Just before
//!   the first output row that reads them, the input rows are copied into a
//!   zero-padded, group-major buffer (`[group][row][padded column][channel]`), so
//!   border pixels need no checks and every pixel stride is a small constant; the rows
//!   the next output row adds are prefetched while this one computes. The register
//!   tile is `MR` consecutive output pixels × `NV` vectors of one group's output
//!   channels. The general tile broadcasts one input value per multiply-add (with no
//!   horizontal dilation the `kw` taps and channels of a kernel row are one run of
//!   `kw·group_size` values). The sliding tile (AVX-512; G16 3×3 and 5×5, stride 1
//!   and 2; the 3 → 32 stem) holds all `kw` weights of a kernel row in registers, so
//!   one broadcast feeds every output pixel that reads it: `MR + kw − 1` broadcasts
//!   for `MR·kw` multiply-adds at stride 1.
//! - **Backward-data** is the transposed convolution run as a direct convolution over
//!   a padded group-major copy of `dy` with the weight transposed per group
//!   (`[group][kh][kw][co][ci]`, packed once per call). At stride 1 it uses the
//!   sliding tile over the flipped kernel row; otherwise input columns are processed
//!   by residue class modulo the stride, so a run of `dx` pixels shares the same `kw`
//!   taps and reads consecutive `dy` pixels.
//! - **Backward-weight** splits the output rows into fixed chunks (a function of the
//!   shape only: small enough for a chunk's input to stay in L2) and, when that gives
//!   too few tasks, the groups into blocks. A task streams its chunk in steps of a
//!   few hundred pixels and adds, for every tap, register tiles of outer products
//!   into its own `f32` partial: (input channel × output-channel vector) in general;
//!   with AVX-512 and 16 channels per group, (`kw` taps × 4 output channels) tiles of
//!   input-channel vectors, which load `kw` input vectors and broadcast 4 output
//!   gradients per pixel for `4·kw` multiply-adds. The partials are added in chunk
//!   order, so results are bitwise identical for any thread count.
//!
//! # Memory
//! Every tensor-sized buffer comes from the caller's workspace
//! ([`workspace_len`], `*_with_workspace`; the plain passes allocate exactly that):
//! per call, the packed weights (forward when a group's output channels are not whole
//! vectors; the transposed weight of backward-data), the packed bias and the
//! weight-gradient chunk partials; per worker thread, a slot as large as the largest
//! task's padded copy, zeroed by each task before use. Task lists and per-row tap
//! lists are small allocations.

mod backward_data;
mod backward_weight;
mod forward;
mod micro;
mod slide;

use super::{ConvPass, ConvShape, GradMode, bias_grad_in, bias_grad_scratch};
use crate::error::Result;
use crate::kernels::scratch::{PerWorker, Workspace, WorkspaceLayout};
use crate::simd::{self, SimdLevel};

/// Floats of workspace `pass` needs at `level` when the call runs in a pool of
/// `threads` threads (the padded copies are per worker; packed weights and the
/// weight-gradient partials are per call). A function of the shape, the pass, the
/// level and the thread count only.
pub fn workspace_len(level: SimdLevel, shape: &ConvShape, pass: ConvPass, threads: usize) -> usize {
    layout(level, shape, pass, threads).len()
}

/// The regions `pass` takes from its workspace, in order.
fn layout(level: SimdLevel, shape: &ConvShape, pass: ConvPass, threads: usize) -> WorkspaceLayout {
    let g = Geo::new(shape);
    let mut l = WorkspaceLayout::new(threads);
    match pass {
        ConvPass::Forward => forward::Plan::new(level, &g).layout(&g, &mut l),
        ConvPass::BackwardData => backward_data::Plan::new(level, &g).layout(&g, &mut l),
        ConvPass::BackwardWeight => {
            weight_regions(&backward_weight::Plan::new(level, &g), &g, shape, &mut l)
        }
    }
    l
}

/// Runs `f` on a workspace of exactly the size `pass` needs in the current pool, kept
/// by the calling thread between calls.
fn allocating<R>(
    level: SimdLevel,
    shape: &ConvShape,
    pass: ConvPass,
    f: impl FnOnce(&mut [f32]) -> Result<R>,
) -> Result<R> {
    layout(level, shape, pass, rayon::current_num_threads()).with_reused(f)
}

/// The caller's workspace checked against the layout `regions` describes for the
/// current pool (the pass's plan adds its regions, so it is built once per call).
fn workspace<'a>(
    ws: &'a mut [f32],
    regions: impl FnOnce(&mut WorkspaceLayout),
) -> Result<Workspace<'a>> {
    let mut layout = WorkspaceLayout::new(rayon::current_num_threads());
    regions(&mut layout);
    Workspace::new(ws, &layout)
}

/// The backward-weight regions: the plan's, then the bias gradient's partial sums.
fn weight_regions(
    plan: &backward_weight::Plan,
    g: &Geo,
    shape: &ConvShape,
    l: &mut WorkspaceLayout,
) {
    plan.layout(g, l);
    l.region(bias_grad_scratch(shape));
}

/// `y = conv(x, w) (+ bias)`; `y` is overwritten.
///
/// `x: [N][H][W][C_in]`, `w: [kh][kw][group_size][C_out]`, `bias: [C_out]`,
/// `y: [N][OH][OW][C_out]`. Buffer sizes are checked against `shape`. Allocates its
/// workspace; see [`forward_with_workspace`].
pub fn forward(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    allocating(level, shape, ConvPass::Forward, |ws| {
        forward_with_workspace(level, shape, x, w, bias, y, ws)
    })
}

/// [`forward`] with its scratch in `ws`: at least
/// [`workspace_len`]`(level, shape, ConvPass::Forward, threads)` floats for the pool
/// the call runs in, any contents (left unspecified); a shorter one is
/// [`crate::Error::BufferSize`] naming `"workspace"`.
pub fn forward_with_workspace(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    shape.check_forward(x, w, bias, y)?;
    let g = Geo::new(shape);
    let plan = forward::Plan::new(level, &g);
    let mut ws = workspace(ws, |l| plan.layout(&g, l))?;
    forward::run(level, &g, &plan, x, w, bias, y, &mut ws)
}

/// Floats of the forward weights as the kernels read them at `level`
/// ([`pack_forward_weights`]).
pub(super) fn forward_packed_len(level: SimdLevel, shape: &ConvShape) -> usize {
    let g = Geo::new(shape);
    forward::Plan::new(level, &g).packed_len(&g)
}

/// Writes `w` into `out` (at least [`forward_packed_len`] floats) in the layout the
/// forward kernels read at `level`.
pub(super) fn pack_forward_weights(
    level: SimdLevel,
    shape: &ConvShape,
    w: &[f32],
    out: &mut [f32],
) {
    let g = Geo::new(shape);
    forward::Plan::new(level, &g).pack_weights(&g, w, out);
}

/// The forward pass on weights written by [`pack_forward_weights`] at the same `level`
/// (buffers already checked; `ws` as for [`forward_with_workspace`], its
/// packed-weights region left unused).
pub(super) fn forward_prepacked(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    let g = Geo::new(shape);
    let plan = forward::Plan::new(level, &g);
    let mut ws = workspace(ws, |l| plan.layout(&g, l))?;
    forward::run_prepacked(level, &g, &plan, x, packed, bias, y, &mut ws)
}

/// `dx = convᵀ(dy, w)`, the gradient with respect to the input; `dx` is overwritten.
///
/// `dy: [N][OH][OW][C_out]`, `w: [kh][kw][group_size][C_out]`, `dx: [N][H][W][C_in]`.
/// Allocates its workspace; see [`backward_data_with_workspace`].
pub fn backward_data(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    allocating(level, shape, ConvPass::BackwardData, |ws| {
        backward_data_with_workspace(level, shape, dy, w, dx, ws)
    })
}

/// [`backward_data`] with its scratch in `ws` (at least
/// [`workspace_len`]`(level, shape, ConvPass::BackwardData, threads)` floats; as
/// [`forward_with_workspace`]).
pub fn backward_data_with_workspace(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    shape.check_backward_data(dy, w, dx)?;
    let g = Geo::new(shape);
    let plan = backward_data::Plan::new(level, &g);
    let mut ws = workspace(ws, |l| plan.layout(&g, l))?;
    backward_data::run(level, &g, &plan, dy, w, dx, &mut ws)
}

/// Weight (and bias) gradient, overwritten or accumulated per `mode`; deterministic
/// for any thread count.
///
/// `x: [N][H][W][C_in]`, `dy: [N][OH][OW][C_out]`, `dw: [kh][kw][group_size][C_out]`,
/// `dbias: [C_out]`. Allocates its workspace; see [`backward_weight_with_workspace`].
pub fn backward_weight(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
) -> Result<()> {
    allocating(level, shape, ConvPass::BackwardWeight, |ws| {
        backward_weight_with_workspace(level, shape, x, dy, dw, dbias, mode, ws)
    })
}

/// [`backward_weight`] with its scratch in `ws` (at least
/// [`workspace_len`]`(level, shape, ConvPass::BackwardWeight, threads)` floats; as
/// [`forward_with_workspace`]).
#[allow(clippy::too_many_arguments)]
pub fn backward_weight_with_workspace(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
    ws: &mut [f32],
) -> Result<()> {
    shape.check_backward_weight(x, dy, dw, dbias.as_deref())?;
    let g = Geo::new(shape);
    let plan = backward_weight::Plan::new(level, &g);
    let mut ws = workspace(ws, |l| weight_regions(&plan, &g, shape, l))?;
    backward_weight::run(level, &g, &plan, x, dy, dw, mode.accumulate(), &mut ws)?;
    let partials = ws.take(bias_grad_scratch(shape))?;
    if let Some(db) = dbias {
        bias_grad_in(level, shape, dy, db, mode, partials);
    }
    Ok(())
}

/// The sizes of a validated shape, flattened for the kernels.
#[derive(Copy, Clone, Debug)]
struct Geo {
    n: usize,
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    /// Input channels per group.
    cig: usize,
    /// Output channels per group.
    cog: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
    oh: usize,
    ow: usize,
}

impl Geo {
    fn new(s: &ConvShape) -> Geo {
        let d = &s.desc;
        Geo {
            n: d.batch,
            h: d.in_h,
            w: d.in_w,
            cin: d.in_channels,
            cout: d.out_channels,
            groups: s.groups,
            cig: d.group_size,
            cog: s.cout_per_group,
            kh: d.kernel_h,
            kw: d.kernel_w,
            sh: d.stride_h,
            sw: d.stride_w,
            dh: d.dilation_h,
            dw: d.dilation_w,
            pt: d.padding.top,
            pl: d.padding.left,
            oh: s.out_h,
            ow: s.out_w,
        }
    }

    /// Kernel taps (`kh·kw`).
    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Width of a zero-padded input row as the forward pass reads it: every column
    /// `ow·sw + kw·dw` (in padded coordinates) of every output pixel.
    fn padded_w(&self) -> usize {
        (self.ow - 1) * self.sw + (self.kw - 1) * self.dw + 1
    }

    /// Input rows `[lo, hi)` read by the output rows `oh0..oh1` (clipped to the image).
    fn in_rows(&self, oh0: usize, oh1: usize) -> (usize, usize) {
        let lo = (oh0 * self.sh).saturating_sub(self.pt).min(self.h);
        let hi = ((oh1 - 1) * self.sh + (self.kh - 1) * self.dh + 1)
            .saturating_sub(self.pt)
            .min(self.h);
        (lo, hi.max(lo))
    }

    /// Input row read by output row `oh` through kernel row `kh`, if inside the image.
    fn in_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.sh + kh * self.dh)
            .checked_sub(self.pt)
            .filter(|&ih| ih < self.h)
    }

    /// Output columns `[lo, hi)` whose every `kw` tap reads inside the image;
    /// `lo <= hi <= ow` (the columns left of `lo` and from `hi` on are the borders).
    fn interior_cols(&self) -> (usize, usize) {
        let lo = self.pl.div_ceil(self.sw).min(self.ow);
        let span = (self.kw - 1) * self.dw;
        let hi = if self.w - 1 + self.pl >= span {
            (self.w - 1 + self.pl - span) / self.sw + 1
        } else {
            0
        };
        (lo, hi.clamp(lo, self.ow))
    }
}

/// The vector width the kernels run with at `level` (what [`simd::dispatch`] picks).
fn lanes(level: SimdLevel) -> usize {
    simd::dispatch_lanes(level)
}

/// Splits `0..n` into the fewest near-equal parts of at most `max` items:
/// `(start, len)` pairs, longer parts first.
fn split(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let parts = n.div_ceil(max.max(1));
    let base = n.checked_div(parts).unwrap_or(0);
    let extra = n.checked_rem(parts).unwrap_or(0);
    (0..parts).map(move |i| {
        let start = i * base + i.min(extra);
        (start, base + usize::from(i < extra))
    })
}

/// One task of the forward and backward-data passes: output rows `r0..r0 + rows` of
/// image `n`, groups `g0..g0 + ng`.
#[derive(Copy, Clone, Debug)]
struct Task {
    n: usize,
    r0: usize,
    rows: usize,
    g0: usize,
    ng: usize,
}

/// Splits `n` images × `rows` output rows × `groups` into tasks. A block of groups
/// is as large as keeps its weights (`w_group` floats per group) in the inner caches,
/// so that a task reads whole runs of input channels; a band of rows is as large as
/// keeps the padded input copy (`rows_in(band)` rows of `row_floats` per group) within
/// a budget; both shrink until there are enough tasks for the pool. Depends on the
/// shape only.
fn plan_tasks(
    n: usize,
    rows: usize,
    groups: usize,
    w_group: usize,
    row_floats: usize,
    rows_in: impl Fn(usize) -> usize,
) -> Vec<Task> {
    const WEIGHT_BUDGET: usize = 32 * 1024;
    const BUDGET: usize = 128 * 1024;
    const MIN_TASKS: usize = 16;
    const MIN_BAND: usize = 4;
    let size = |band: usize, gbs: usize| rows_in(band) * row_floats * gbs;
    let count = |band: usize, gbs: usize| n * rows.div_ceil(band) * groups.div_ceil(gbs);
    let mut gbs = (WEIGHT_BUDGET / w_group.max(1)).clamp(1, groups);
    let mut band = rows;
    while band > MIN_BAND && size(band, gbs) > BUDGET {
        band = band.div_ceil(2);
    }
    while gbs > 1 && size(band, gbs) > BUDGET {
        gbs = gbs.div_ceil(2);
    }
    while band > 1 && size(band, gbs) > BUDGET {
        band = band.div_ceil(2);
    }
    while band > MIN_BAND && count(band, gbs) < MIN_TASKS {
        band = band.div_ceil(2);
    }
    while gbs > 1 && count(band, gbs) < MIN_TASKS {
        gbs = gbs.div_ceil(2);
    }
    while band > 1 && count(band, gbs) < MIN_TASKS {
        band = band.div_ceil(2);
    }
    let mut tasks = Vec::new();
    for n in 0..n {
        for (r0, rows) in split(rows, band) {
            for (g0, ng) in split(groups, gbs) {
                tasks.push(Task {
                    n,
                    r0,
                    rows,
                    g0,
                    ng,
                });
            }
        }
    }
    tasks
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Copy, Clone)]
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the tasks holding a `SharedOut` write pairwise disjoint elements (each
// driver documents its partition), and the buffer outlives the parallel region.
unsafe impl Send for SharedOut {}
// SAFETY: as above; no element is read through the pointer.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(s: &mut [f32]) -> SharedOut {
        SharedOut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }
}

/// Runs `f` with this worker's slot of `slots`, its first `len` floats zeroed (the
/// padded copies rely on zero borders).
fn with_zeroed<R>(slots: &PerWorker<'_>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    slots.with(|s| {
        let buf = &mut s[..len];
        buf.fill(0.0);
        f(buf)
    })
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_covers_the_range_in_balanced_parts() {
        for n in 0..60 {
            for max in 1..20 {
                let parts: Vec<_> = split(n, max).collect();
                let mut next = 0;
                for &(s, l) in &parts {
                    assert_eq!(s, next);
                    assert!(l >= 1 && l <= max);
                    next = s + l;
                }
                assert_eq!(next, n);
                assert_eq!(parts.len(), n.div_ceil(max));
                if let (Some(a), Some(b)) = (parts.first(), parts.last()) {
                    assert!(a.1 - b.1 <= 1);
                }
            }
        }
    }
}
