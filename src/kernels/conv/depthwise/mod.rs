//! Depthwise convolution (one input channel per group, as many outputs as inputs),
//! vectorized over channels.
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc): `x` is `[N][H][W][C]`, `y` is
//! `[N][OH][OW][C]`, the weight is `[kh][kw][C]` and the bias `[C]`.
//!
//! # How the kernels work
//! Channels are contiguous in NHWC, so every kernel works on blocks of 1–4 SIMD
//! vectors of channels (a channel count that is not a multiple of the lane count ends
//! with a block of one partial vector: masked loads and stores at the edges of memory,
//! full vectors with zero lanes inside the scratch buffers).
//!
//! Borders without bounds checks: for one channel block, the source rows a task needs
//! are copied into a small ring of *packed rows* (the block's channels only, contiguous
//! pixels) with zero pixels on both sides wide enough for every tap. Each destination
//! row splits into an *interior* run, whose taps are all real pixels and which reads
//! the tensor in place, and border runs, which read the ring (only the edge pixels are
//! copied). On narrow images (width ≤ 32) and 5×5 stride-1 kernels whole rows are
//! packed instead and every pixel reads the ring: contiguous loads pay off there (see
//! `prefer_packed`). Kernel rows that fall outside the image are left out of a row's
//! tap list. The gathers walk their rows one at a time, all channel blocks per row
//! (one ring per block, weights packed once per task), so a source row is read from
//! memory once for all blocks.
//!
//! - **Forward** (parallel over blocks of output rows): a tile of up to 8 output pixels
//!   × the channel block is accumulated in registers over the row's taps. On packed
//!   stride-1 rows with 3 or 5 kernel columns, *sliding-window* tiles keep one kernel
//!   row's weights in registers and load each input vector once for all the taps that
//!   read it.
//! - **Backward-data** is the same gather with the roles swapped (parallel over blocks
//!   of input rows): for each input row, the kernel rows that reach an output row; for
//!   each residue class of input columns modulo the stride, the kernel columns that
//!   reach an output column (one tap set for the whole class, so a class is again an
//!   interior run plus border runs). Each `dx` element is written once: no scatter, no
//!   atomics.
//! - **Backward-weight** splits the output rows into fixed chunks (independent of the
//!   thread count). Per chunk and channel block, each (kernel row, group of up to 5
//!   kernel columns) accumulates in registers along 32-pixel slices of an output row,
//!   all kernel rows per slice; the per-chunk partial gradients are summed in chunk
//!   order ([`reduce_chunks_in`](crate::kernels::parallel::reduce_chunks_in)), so the result is bitwise identical for any number
//!   of threads. The bias gradient is fused in (compensated summation across rows).
//!
//! Forward and backward-data compute every output element in the same order whatever
//! the split into tasks (the split only decides which thread computes it), so they too
//! are bitwise reproducible across thread counts.
//!
//! # Code structure
//! The drivers (task split, row plans, rings, weight packing) are ordinary code
//! compiled once; the loops over pixels and vectors are the microkernels of a
//! per-level table — one function per channel-block shape and level, each handling
//! any run length — whose entries the plan picks when it is made.
//!
//! Memory: the rings, the packed weights and bias and the weight-gradient
//! accumulators of a task live in its worker's slot of the caller's workspace
//! ([`Conv2d::workspace_len`](super::Conv2d::workspace_len)), the per-chunk
//! weight-gradient partials and the bias sum in per-call regions of it; the plain
//! passes allocate exactly that workspace. Row plans (tap lists, `O(kh·kw)`) and ring tags are small allocations.

mod columns;
mod gather;
mod gather_tiles;
mod micro;
mod weight_grad;
mod weight_tiles;

use super::pre::Pre;
use super::{ConvPass, ConvShape, FamilyPlan, ForwardWeights, GradMode};
use crate::error::Result;
use crate::kernels::gemm::Post;
use crate::kernels::parallel::partials_len;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::{PerLevel, SimdLevel};
use columns::{Columns, Ring, backward_data_columns, forward_columns};
use gather::{Pass, run_gather};
use micro::DwTable;
use weight_grad::wgrad_chunks;

/// The microkernel table of `level` (clamped to what the CPU runs).
fn table(level: SimdLevel) -> &'static DwTable {
    use micro::{avx2_table, avx512_table, small_table};
    static TABLES: PerLevel<DwTable> = crate::per_level!(small_table, avx2_table, avx512_table);
    TABLES.get(level)
}

/// The dimensions of a validated depthwise convolution, as plain numbers.
#[derive(Copy, Clone, Debug)]
struct Geo {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    top: usize,
    left: usize,
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
            c: d.in_channels,
            kh: d.kernel_h,
            kw: d.kernel_w,
            sh: d.stride_h,
            sw: d.stride_w,
            dh: d.dilation_h,
            dw: d.dilation_w,
            top: d.padding.top,
            left: d.padding.left,
            oh: s.out_h,
            ow: s.out_w,
        }
    }

    /// The input row read by output row `oh` through kernel row `kh`, if inside.
    fn in_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.sh + kh * self.dh)
            .checked_sub(self.top)
            .filter(|&ih| ih < self.h)
    }

    /// The output row that reads input row `ih` through kernel row `kh`, if any.
    fn out_row(&self, ih: usize, kh: usize) -> Option<usize> {
        let num = (ih + self.top).checked_sub(kh * self.dh)?;
        (num % self.sh == 0 && num / self.sh < self.oh).then_some(num / self.sh)
    }

    /// Rows of the forward source ring: every row one output row reads.
    fn span_h(&self) -> usize {
        (self.kh - 1) * self.dh + 1
    }
}

/// A block of channels: `nv` vectors from channel `c0`; `tail > 0` means a single
/// partial vector of `tail` lanes.
#[derive(Copy, Clone, Debug)]
struct Block {
    c0: usize,
    nv: usize,
    tail: usize,
}

/// Splits `c` channels into blocks of at most `nv_max` full vectors, then one partial
/// vector if `c` is not a multiple of `lanes`.
fn channel_blocks(c: usize, lanes: usize, nv_max: usize) -> Vec<Block> {
    let mut out = Vec::new();
    let mut full = c / lanes;
    let mut c0 = 0;
    for nv in [4, 2, 1] {
        if nv > nv_max {
            continue;
        }
        while full >= nv {
            out.push(Block { c0, nv, tail: 0 });
            c0 += nv * lanes;
            full -= nv;
        }
    }
    if c0 < c {
        out.push(Block {
            c0,
            nv: 1,
            tail: c - c0,
        });
    }
    out
}

/// Floats of one gather task's scratch at `l` lanes: one ring of packed source rows
/// per channel block (`C_pad` floats per pixel in all), the packed weights
/// `[kh·kw][C_pad]` and the packed bias `[C_pad]`.
fn gather_scratch(g: &Geo, cols: &Columns, l: usize) -> usize {
    let c_pad = g.c.div_ceil(l) * l;
    let slots = if cols.has_border() { g.span_h() } else { 0 };
    slots * cols.rp.pw * c_pad + g.kh * g.kw * c_pad + c_pad
}

/// Floats of one weight-gradient task's scratch with the level's table `tab`: a ring
/// for the widest channel block, the accumulators `[kh·kw + 2][C_pad]` and a packed
/// `dy` row.
fn wgrad_scratch(g: &Geo, cols: &Columns, tab: &DwTable) -> usize {
    let (l, vbm) = (tab.lanes, vb_max(g.c, tab));
    let slots = if cols.has_border() { g.span_h() } else { 0 };
    Ring::len(slots, cols.rp, vbm) + (g.kh * g.kw + 2) * g.c.div_ceil(l) * l + g.ow * vbm
}

/// Rows (of `per_row` floats of traffic each) that fit a task's working set in about
/// half of a core's L2 cache (2 MiB on the reference machines): each channel block
/// passes over the same rows, so the later passes hit the cache instead of memory. (A
/// tile also re-packs the kernel's halo rows: 256 KiB measured slower than 1 MiB.)
fn cache_rows(per_row: usize) -> usize {
    const BUDGET: usize = 1024 * 1024 / std::mem::size_of::<f32>();
    (BUDGET / per_row.max(1)).max(1)
}

/// Floats per packed pixel of the widest block of `c` channels.
fn vb_max(c: usize, tab: &DwTable) -> usize {
    let l = tab.lanes;
    (tab.nv_max * l).min(c.div_ceil(l) * l)
}

/// The depthwise kernels planned for one shape and level: the microkernel table and
/// the column structure of the gathers.
#[derive(Debug)]
pub(crate) struct Plan {
    g: Geo,
    tab: &'static DwTable,
    /// The forward (and weight-gradient) gather columns and the backward-data ones.
    forward: Columns,
    backward_data: Columns,
    /// The forward columns with every source pixel packed into the rings, for a
    /// prologue ([`FamilyPlan::stage_input`]); the forward pass runs on them when set.
    staged: Option<Columns>,
}

impl Plan {
    pub(crate) fn new(level: SimdLevel, shape: &ConvShape) -> Plan {
        let g = Geo::new(shape);
        Plan {
            tab: table(level),
            forward: forward_columns(&g, false),
            staged: None,
            backward_data: backward_data_columns(&g),
            g,
        }
    }
}

impl Plan {
    /// The columns the forward pass gathers on: staged for a prologue, or not.
    fn forward_pass_columns(&self) -> &Columns {
        self.staged.as_ref().unwrap_or(&self.forward)
    }
}

impl FamilyPlan for Plan {
    /// The gathers' rings and packed weights per worker; for the weight gradient, the
    /// per-chunk partials and the bias sum per call and the rings and accumulators per
    /// worker.
    fn layout(&self, pass: ConvPass, threads: usize) -> WorkspaceLayout {
        let (g, tab) = (&self.g, self.tab);
        let mut layout = WorkspaceLayout::new(threads);
        match pass {
            ConvPass::Forward => {
                layout.per_worker(gather_scratch(g, self.forward_pass_columns(), tab.lanes))
            }
            ConvPass::BackwardData => {
                layout.per_worker(gather_scratch(g, &self.backward_data, tab.lanes))
            }
            ConvPass::BackwardWeight => {
                let sum = g.kh * g.kw * g.c + g.c;
                let (rows, chunk) = wgrad_chunks(g);
                layout
                    .region(sum)
                    .region(partials_len(rows, chunk, sum))
                    .per_worker(wgrad_scratch(g, &self.forward, tab))
            }
        };
        layout
    }

    /// The weight itself: each gather task packs the channel blocks it needs into its
    /// worker's slot, next to its row rings, from the original layout (reading weights
    /// packed once per call from a shared region instead measured 13–25 % slower on
    /// the small layers: a cache-placement effect, and the other core's copy traffic).
    fn packed_len(&self) -> usize {
        self.g.kh * self.g.kw * self.g.c
    }

    /// Every source row is packed whole into the rings, transformed on the way.
    fn stage_input(&mut self) {
        self.staged = Some(forward_columns(&self.g, true));
    }

    fn pack(&self, w: &[f32], out: &mut [f32]) {
        out[..w.len()].copy_from_slice(w);
    }

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
        let w = match w {
            ForwardWeights::Plain(w) => w,
            ForwardWeights::Packed(p) => &p[..self.packed_len()],
        };
        let (tab, g, cols) = (self.tab, &self.g, self.forward_pass_columns());
        debug_assert!(pre.is_none() || self.staged.is_some());
        run_gather(tab, g, cols, Pass::Forward, x, pre, w, bias, post, y, ws)
    }

    fn backward_data(
        &self,
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        ws: &mut Workspace<'_>,
    ) -> Result<()> {
        let (tab, g, cols) = (self.tab, &self.g, &self.backward_data);
        run_gather(
            tab,
            g,
            cols,
            Pass::BackwardData,
            dy,
            None,
            w,
            None,
            Post::NONE,
            dx,
            ws,
        )
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
        weight_grad::run(self.tab, &self.g, &self.forward, x, dy, dw, dbias, mode, ws)
    }
}
