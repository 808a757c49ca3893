//! Grouped and dense k×k convolutions (any group size; fast paths for 8, 16 and 32
//! channels per group; the 3-channel stem).
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc): activations NHWC
//! (`x: [N][H][W][C_in]`, `y: [N][OH][OW][C_out]`), weight
//! `[kh][kw][group_size][C_out]`, bias `[C_out]`.
//!
//! # How the kernels work
//! One kernel walks pixels × groups directly; a group convolution is never a loop of
//! per-group tensor operations.
//!
//! - **Forward** is a direct convolution. A task owns a band of output rows of one image
//!   and a block of groups; it first copies the input rows it needs into a zero-padded,
//!   group-major buffer (`[group][row][padded column][channel of the group]`), so that
//!   border pixels need no checks and, with no horizontal dilation, the `kw` taps of a
//!   row and the group's input channels form one contiguous run of `kw·group_size`
//!   values. The microkernel keeps a register tile of `MR` consecutive output pixels ×
//!   `NV` vectors of the group's output channels, broadcasts one input value and
//!   multiply-adds it with a weight vector. With AVX-512 a G16 group is exactly one
//!   vector (`MR` up to 16 pixels); the stem (3 → 32 channels) is `MR` pixels × 2
//!   vectors over 27 taps.
//! - **Backward-data** is the transposed convolution run as a direct convolution over
//!   `dy` with the weight transposed per group (`[group][kh][kw][co][ci]`, packed once
//!   per call). Input columns are processed by residue class modulo the stride, so a
//!   run of `dx` pixels shares the same `kw` taps and reads consecutive `dy` pixels.
//! - **Backward-weight** splits the output rows into fixed chunks (a function of the
//!   shape only) and the groups into blocks; each task accumulates, for every tap,
//!   (input channel × output-channel vector) register tiles over the chunk's pixels
//!   (outer products) into its own `f32` partial, and the partials are added in chunk
//!   order. Results are bitwise identical for any thread count.

mod backward_data;
mod backward_weight;
mod forward;
mod micro;

use super::{ConvShape, GradMode};
use crate::error::Result;
use crate::simd::{self, SimdLevel};
use std::cell::RefCell;

/// `y = conv(x, w) (+ bias)`; `y` is overwritten.
///
/// `x: [N][H][W][C_in]`, `w: [kh][kw][group_size][C_out]`, `bias: [C_out]`,
/// `y: [N][OH][OW][C_out]`. Buffer sizes are checked against `shape`.
pub fn forward(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    shape.check_forward(x, w, bias, y)?;
    forward::run(level, &Geo::new(shape), x, w, bias, y);
    Ok(())
}

/// `dx = convᵀ(dy, w)`, the gradient with respect to the input; `dx` is overwritten.
///
/// `dy: [N][OH][OW][C_out]`, `w: [kh][kw][group_size][C_out]`, `dx: [N][H][W][C_in]`.
pub fn backward_data(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    shape.check_backward_data(dy, w, dx)?;
    backward_data::run(level, &Geo::new(shape), dy, w, dx);
    Ok(())
}

/// Weight (and bias) gradient, overwritten or accumulated per `mode`; deterministic
/// for any thread count.
///
/// `x: [N][H][W][C_in]`, `dy: [N][OH][OW][C_out]`, `dw: [kh][kw][group_size][C_out]`,
/// `dbias: [C_out]`.
pub fn backward_weight(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
) -> Result<()> {
    shape.check_backward_weight(x, dy, dw, dbias.as_deref())?;
    backward_weight::run(level, &Geo::new(shape), x, dy, dw, mode.accumulate());
    if let Some(db) = dbias {
        super::bias_grad(level, shape, dy, db, mode);
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
}

/// The vector width the kernels run with at `level` (what [`simd::dispatch`] picks).
fn lanes(level: SimdLevel) -> usize {
    let level = level.min(simd::detected());
    #[cfg(not(target_arch = "x86_64"))]
    let level = level.min(SimdLevel::Portable);
    level.lanes()
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

thread_local! {
    /// Per-thread scratch for the padded copies (reused across calls and tasks).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a zeroed scratch buffer of `len` floats owned by this thread.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            v.clear();
            v.resize(len, 0.0);
            f(&mut v[..])
        }
        // Re-entered on this thread (a task of a nested call): use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
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
