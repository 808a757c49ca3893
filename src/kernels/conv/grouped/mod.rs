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
//! ([`Conv2d::workspace_len`](super::Conv2d::workspace_len); the plain passes
//! allocate exactly that):
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

use super::{
    ConvPass, ConvShape, FamilyPlan, ForwardWeights, GradMode, bias_grad_in, bias_grad_scratch,
};
use crate::error::Result;
use crate::kernels::conv::pre::Pre;
use crate::kernels::gemm::Post;
use crate::kernels::scratch::{PerWorker, Workspace, WorkspaceLayout};
use crate::simd::{PerLevel, SimdLevel};
use micro::GroupedTable;
use std::sync::OnceLock;

/// The grouped kernels planned for one shape and level: every pass's plan (task split,
/// copy sizes, the microkernel table's entries), each made the first time the pass (or
/// its workspace size) is asked for and kept — an inference plan never makes the
/// backward ones.
#[derive(Debug)]
pub(crate) struct Plan {
    g: Geo,
    shape: ConvShape,
    level: SimdLevel,
    forward: OnceLock<forward::Plan>,
    backward_data: OnceLock<backward_data::Plan>,
    backward_weight: OnceLock<backward_weight::Plan>,
}

impl Plan {
    /// The plan of `shape` at `level`.
    ///
    /// # Errors
    /// [`crate::Error::OutOfMemory`] when a pass would need more than [`MAX_TASKS`]
    /// tasks (a batch of millions of images: split it).
    pub(crate) fn new(level: SimdLevel, shape: &ConvShape) -> crate::error::Result<Plan> {
        let g = Geo::new(shape);
        for (pass, grid) in [
            ("forward", forward::task_grid(level, &g)),
            ("backward-data", backward_data::task_grid(level, &g)),
        ] {
            if grid.count > MAX_TASKS {
                return Err(crate::Error::OutOfMemory(format!(
                    "the grouped convolution's {pass} pass would need {} tasks, more \
                     than the {MAX_TASKS} one plan lists (batch {}): split the batch",
                    grid.count, g.n
                )));
            }
        }
        Ok(Plan {
            g,
            shape: *shape,
            level,
            forward: OnceLock::new(),
            backward_data: OnceLock::new(),
            backward_weight: OnceLock::new(),
        })
    }

    fn forward(&self) -> &forward::Plan {
        self.forward
            .get_or_init(|| forward::Plan::new(self.level, &self.g))
    }

    fn backward_data(&self) -> &backward_data::Plan {
        self.backward_data
            .get_or_init(|| backward_data::Plan::new(self.level, &self.g))
    }

    fn backward_weight(&self) -> &backward_weight::Plan {
        self.backward_weight
            .get_or_init(|| backward_weight::Plan::new(self.level, &self.g))
    }
}

impl FamilyPlan for Plan {
    /// Per call, the packed weights (forward when a group's output channels are not
    /// whole vectors; the transposed weight of backward-data), the packed bias and the
    /// weight-gradient chunk partials (then the bias gradient's partial sums); per
    /// worker thread, the largest task's padded copy.
    fn layout(&self, pass: ConvPass, threads: usize) -> WorkspaceLayout {
        let g = &self.g;
        let mut l = WorkspaceLayout::new(threads);
        match pass {
            ConvPass::Forward => self.forward().layout(g, &mut l),
            ConvPass::BackwardData => self.backward_data().layout(g, &mut l),
            ConvPass::BackwardWeight => {
                self.backward_weight().layout(g, &mut l);
                l.region(bias_grad_scratch(&self.shape));
            }
        }
        l
    }

    fn packed_len(&self) -> usize {
        self.forward().packed_len(&self.g)
    }

    fn pack(&self, w: &[f32], out: &mut [f32]) {
        self.forward().pack_weights(&self.g, w, out);
    }

    /// Nothing to prepare: the forward pass copies every input row it reads into its
    /// padded buffer anyway, and applies the prologue there (tasks of taller bands,
    /// fewer halo rows transformed twice, measured no faster: see BENCHMARKS.md).
    fn stage_input(&mut self) {}

    fn forward(
        &self,
        x: &[f32],
        pre: Option<Pre<'_>>,
        w: ForwardWeights<'_>,
        bias: Option<&[f32]>,
        post: Post<'_>,
        y: &mut [f32],
        ws: &mut Workspace<'_>,
    ) -> Result<()> {
        let (g, plan) = (&self.g, self.forward());
        let x = forward::Input { x, pre };
        match w {
            ForwardWeights::Plain(w) => forward::run(g, plan, x, w, bias, post, y, ws),
            ForwardWeights::Packed(p) => forward::run_prepacked(g, plan, x, p, bias, post, y, ws),
        }
    }

    fn backward_data(
        &self,
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        ws: &mut Workspace<'_>,
    ) -> Result<()> {
        backward_data::run(&self.g, self.backward_data(), dy, w, dx, ws)
    }

    fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
        ws: &mut Workspace<'_>,
    ) -> Result<()> {
        let plan = self.backward_weight();
        backward_weight::run(&self.g, plan, x, dy, dw, mode.accumulate(), ws)?;
        let partials = ws.take(bias_grad_scratch(&self.shape))?;
        if let Some(db) = dbias {
            bias_grad_in(self.level, &self.shape, dy, db, mode, partials);
        }
        Ok(())
    }
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

/// The microkernel table of `level` (clamped to what the CPU runs).
fn table(level: SimdLevel) -> &'static GroupedTable {
    use micro::{avx2_table, avx512_table, small_table};
    static TABLES: PerLevel<GroupedTable> =
        crate::per_level!(small_table, avx2_table, avx512_table);
    TABLES.get(level)
}

use crate::kernels::parallel::balanced_parts as split;

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
fn plan_tasks(grid: TaskGrid) -> Vec<Task> {
    let TaskGrid {
        n,
        rows,
        groups,
        band,
        gbs,
        ..
    } = grid;
    let mut tasks = Vec::with_capacity(grid.count);
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

/// The most tasks a pass's plan may list (40 bytes each: 160 MiB). A shape that would
/// need more — a batch of millions of images — is refused when the plan is made, rather
/// than allocating a task list of gigabytes.
pub(crate) const MAX_TASKS: usize = 1 << 22;

/// The task split of [`plan_tasks`]: images, rows and groups, rows per band, groups
/// per block, and the number of tasks (saturating).
#[derive(Copy, Clone, Debug)]
struct TaskGrid {
    n: usize,
    rows: usize,
    groups: usize,
    band: usize,
    gbs: usize,
    count: usize,
}

/// Sizes the split of `n` images × `rows` output rows × `groups` (see [`plan_tasks`]).
fn task_grid(
    n: usize,
    rows: usize,
    groups: usize,
    w_group: usize,
    row_floats: usize,
    rows_in: impl Fn(usize) -> usize,
) -> TaskGrid {
    const WEIGHT_BUDGET: usize = 32 * 1024;
    const BUDGET: usize = 128 * 1024;
    const MIN_TASKS: usize = 16;
    const MIN_BAND: usize = 4;
    let size =
        |band: usize, gbs: usize| rows_in(band).saturating_mul(row_floats).saturating_mul(gbs);
    let count = |band: usize, gbs: usize| {
        n.saturating_mul(rows.div_ceil(band))
            .saturating_mul(groups.div_ceil(gbs))
    };
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
    TaskGrid {
        n,
        rows,
        groups,
        band,
        gbs,
        count: count(band, gbs),
    }
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
