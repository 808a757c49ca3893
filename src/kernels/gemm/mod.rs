//! Register-tiled `f32` matrix product, `C (+)= A·B (+ bias)`, shared by the pointwise
//! convolutions, the fully-connected classifier and the squeeze-excite layers.
//!
//! # Operands
//! - `A` is `m × k`: element `(i, p)` is `a[rows.offset(i) + p·a_cs]`. A [`RowMap`]
//!   is either a plain row stride ([`RowMap::uniform`]) or the rows of a strided 1×1
//!   convolution's output grid ([`RowMap::grid`]). `Xᵀ` is `RowMap::uniform(1)` with
//!   `a_cs = C`.
//! - `B` is `k × n`: either packed once into column panels ([`PackedB`], any source
//!   strides, e.g. a transposed weight) or read in place from a row-major matrix with a
//!   row stride ([`BOperand::Rows`]).
//! - `C` is `m × n`: row `i` starts at `c[c_rows.offset(i)]`, columns contiguous.
//!
//! # Kernel
//! `C` is cut into tiles of `MR` rows × `NV` vectors; a tile's accumulators live in
//! registers while `k` runs (broadcast one element of `A`, load `NV` vectors of `B`,
//! `MR·NV` fused multiply-adds). With `B` read in place, `k` is cut into short blocks
//! so that a panel of `B` stays in L1 while the row tiles of a block pass over it. Column
//! remainders use masked vectors; row remainders rerun the last valid row and store
//! only the valid ones. Every element of `C` sums its `k` terms in the same order
//! whatever the task split, so results do not depend on the thread count.

mod micro;

use crate::kernels::activation::Activation;
use crate::kernels::reduce::RowStats;
use crate::simd::{PerLevel, SimdLevel};
use micro::{GemmTable, PanelArgs, PanelFn};
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// Maximum depth of one `k` block with a packed `B`: the panel streams from L2 while a
/// tile's rows of `A` stay in L1 (measured: blocking `k` finer only adds passes over
/// `C`).
const KC_PACKED: usize = 2048;
/// Maximum depth of one `k` block with `B` read in place (the weight gradient, where
/// `B` is `dY`): 64 rows of a 4-vector panel (16 KiB) stay in L1 for every row tile.
const KC_ROWS: usize = 64;

/// Maps a row index to an element offset: `(r mod w)·s0 + ((r / w) mod h)·s1 +
/// (r / (w·h))·s2`. [`RowMap::uniform`] is the plain stride `r·s0`.
#[derive(Copy, Clone, Debug)]
pub(crate) struct RowMap {
    w: usize,
    h: usize,
    s0: usize,
    s1: usize,
    s2: usize,
    uniform: bool,
}

impl RowMap {
    /// Row `r` at `r·stride`.
    pub(crate) fn uniform(stride: usize) -> RowMap {
        RowMap {
            w: usize::MAX,
            h: 1,
            s0: stride,
            s1: 0,
            s2: 0,
            uniform: true,
        }
    }

    /// Rows of a `[n][h][w]` grid: row `r = (b·h + y)·w + x` at `x·s0 + y·s1 + b·s2`.
    pub(crate) fn grid(w: usize, h: usize, s0: usize, s1: usize, s2: usize) -> RowMap {
        RowMap {
            w: w.max(1),
            h: h.max(1),
            s0,
            s1,
            s2,
            uniform: false,
        }
    }

    /// The offset of row `r`.
    #[inline(always)]
    pub(crate) fn offset(&self, r: usize) -> usize {
        if self.uniform {
            r * self.s0
        } else {
            let (q, x) = (r / self.w, r % self.w);
            x * self.s0 + (q % self.h) * self.s1 + (q / self.h) * self.s2
        }
    }

    /// An upper bound of the offsets of rows `0..m` (each term at its largest; exact
    /// for the maps used here), or `None` if `m == 0`.
    fn last(&self, m: usize) -> Option<usize> {
        let r = m.checked_sub(1)?;
        if self.uniform {
            return Some(r * self.s0);
        }
        let x = r.min(self.w - 1);
        let y = (r / self.w).min(self.h - 1);
        Some(x * self.s0 + y * self.s1 + (r / self.w / self.h) * self.s2)
    }
}

/// One column panel of `B`: `nv` vectors wide, `valid` real columns from `col`.
#[derive(Copy, Clone, Debug)]
struct Panel {
    col: usize,
    nv: usize,
    valid: usize,
    /// Offset of the panel in a [`PackedB`] (`k` rows of `nv·lanes` floats).
    offset: usize,
}

/// The microkernel table of `level` (clamped to what the CPU runs).
fn table(level: SimdLevel) -> &'static GemmTable {
    use micro::{avx2_table, avx512_table, small_table};
    static TABLES: PerLevel<GemmTable> = crate::per_level!(small_table, avx2_table, avx512_table);
    TABLES.get(level)
}

/// Cuts `n` columns into panels of whole vectors (only the last one partial).
fn panels(level: SimdLevel, n: usize, k: usize) -> Vec<Panel> {
    panel_iter(level, n, k).collect()
}

/// [`panels`] one by one, without a vector (for passes over packed data).
fn panel_iter(level: SimdLevel, n: usize, k: usize) -> impl Iterator<Item = Panel> {
    let t = table(level);
    let (lanes, nvmax) = (t.lanes, t.max_nv);
    // The fewest panels of at most `nvmax` vectors, the vectors spread evenly over
    // them (9 vectors on AVX-512: 3 + 3 + 3, not 4 + 4 + 1, whose one-vector tile
    // keeps too few accumulators to hide the FMA latency).
    let vectors = n.div_ceil(lanes);
    let count = vectors.div_ceil(nvmax);
    let (mut col, mut offset) = (0, 0);
    (0..count).map(move |i| {
        let nv = vectors / count + usize::from(i < vectors % count);
        let valid = (n - col).min(nv * lanes);
        let p = Panel {
            col,
            nv,
            valid,
            offset,
        };
        col += valid;
        offset += k * nv * lanes;
        p
    })
}

/// Columns the kernels compute for an `n`-column product at `level` (`n` rounded up to
/// whole vectors): the cost of an orientation, for callers that can pick one.
pub(crate) fn padded_cols(level: SimdLevel, n: usize) -> usize {
    let level = level.min(crate::simd::detected());
    let lanes = table(level).lanes;
    n.div_ceil(lanes).saturating_mul(lanes)
}

/// `B` packed into column panels for one SIMD level: each panel is `k` rows of
/// `nv·lanes` floats, zero beyond the last column. The packed data is owned
/// ([`PackedB::new`]) or lives in a caller's workspace ([`PackedB::new_in`]).
pub(crate) struct PackedB<'a> {
    level: SimdLevel,
    k: usize,
    n: usize,
    panels: Vec<Panel>,
    data: Cow<'a, [f32]>,
}

impl PackedB<'static> {
    /// Packs the `k × n` matrix with element `(p, j)` at `b[p·rs + j·cs]` (in parallel,
    /// in cache-sized blocks) into a buffer of its own.
    ///
    /// # Panics
    /// If `b` is too short.
    pub(crate) fn new(
        level: SimdLevel,
        k: usize,
        n: usize,
        b: &[f32],
        rs: usize,
        cs: usize,
    ) -> Self {
        let mut data = vec![0.0f32; Self::packed_len(level, k, n)];
        let panels = pack(level, k, n, b, rs, cs, &mut data);
        PackedB {
            level: level.min(crate::simd::detected()),
            k,
            n,
            panels,
            data: Cow::Owned(data),
        }
    }
}

impl<'a> PackedB<'a> {
    /// Floats of packed data for a `k × n` matrix at `level`.
    pub(crate) fn packed_len(level: SimdLevel, k: usize, n: usize) -> usize {
        // The panels hold every vector of columns once, `k` rows each: computed without
        // listing the panels, so a size query for a huge (fuzzed) shape allocates
        // nothing (saturating: such a size is refused by the workspace check).
        let level = level.min(crate::simd::detected());
        let lanes = table(level).lanes;
        n.div_ceil(lanes).saturating_mul(lanes).saturating_mul(k)
    }

    /// [`PackedB::new`] into `buf` (at least [`PackedB::packed_len`] floats, any
    /// contents).
    ///
    /// # Panics
    /// If `b` or `buf` is too short.
    pub(crate) fn new_in(
        level: SimdLevel,
        k: usize,
        n: usize,
        b: &[f32],
        rs: usize,
        cs: usize,
        buf: &'a mut [f32],
    ) -> Self {
        let buf = &mut buf[..Self::packed_len(level, k, n)];
        let panels = pack(level, k, n, b, rs, cs, buf);
        PackedB {
            level: level.min(crate::simd::detected()),
            k,
            n,
            panels,
            data: Cow::Borrowed(buf),
        }
    }
}

/// Writes into `out` the packed `B` of `src` (a `k × n` matrix packed at `level` by
/// [`PackedB::new_in`]; both at least [`PackedB::packed_len`] floats) with row `p`
/// scaled by `scale[p]` (`k` values): the packing of `diag(scale)·B`, bit for bit (each
/// element is the one product `b·scale[p]`; padding columns stay zero), in one pass.
pub(crate) fn scale_packed_rows(
    level: SimdLevel,
    (k, n): (usize, usize),
    src: &[f32],
    scale: &[f32],
    out: &mut [f32],
) {
    assert_eq!(scale.len(), k, "row scale length");
    let level = level.min(crate::simd::detected());
    let lanes = table(level).lanes;
    for p in panel_iter(level, n, k) {
        let width = p.nv * lanes;
        let at = p.offset..p.offset + k * width;
        let rows = src[at.clone()].chunks_exact(width);
        for ((sr, or), &g) in rows.zip(out[at].chunks_exact_mut(width)).zip(scale) {
            for (o, &v) in or[..p.valid].iter_mut().zip(sr) {
                *o = v * g;
            }
            or[p.valid..].fill(0.0);
        }
    }
}

impl<'a> PackedB<'a> {
    /// A `k × n` matrix packed earlier (by [`PackedB::new_in`] at the same `level`)
    /// in `data` (at least [`PackedB::packed_len`] floats), used as it is.
    ///
    /// # Panics
    /// If `data` is too short.
    pub(crate) fn from_packed(level: SimdLevel, k: usize, n: usize, data: &'a [f32]) -> Self {
        let data = &data[..Self::packed_len(level, k, n)];
        PackedB {
            level: level.min(crate::simd::detected()),
            k,
            n,
            panels: panels(level.min(crate::simd::detected()), n, k),
            data: Cow::Borrowed(data),
        }
    }
}

/// Packs `B` (element `(p, j)` at `b[p·rs + j·cs]`) into `data` (exactly the packed
/// length; every element written, padding columns zeroed) and returns the panels.
fn pack(
    level: SimdLevel,
    k: usize,
    n: usize,
    b: &[f32],
    rs: usize,
    cs: usize,
    data: &mut [f32],
) -> Vec<Panel> {
    if k > 0 && n > 0 {
        assert!((k - 1) * rs + (n - 1) * cs < b.len(), "B is too short");
    }
    let level = level.min(crate::simd::detected());
    let lanes = table(level).lanes;
    let panels = panels(level, n, k);
    let mut slices = Vec::with_capacity(panels.len());
    let mut rest = data;
    for p in &panels {
        let (head, tail) = rest.split_at_mut(k * p.nv * lanes);
        slices.push((*p, head));
        rest = tail;
    }
    slices.into_par_iter().for_each(|(p, out)| {
        let width = p.nv * lanes;
        if p.valid < width {
            // The columns past `n` must read zero.
            out.fill(0.0);
        }
        if cs == 1 {
            // Row-major source: each panel row is one contiguous run.
            for (q, row) in out.chunks_exact_mut(width).enumerate() {
                let src = q * rs + p.col;
                row[..p.valid].copy_from_slice(&b[src..src + p.valid]);
            }
        } else {
            // Strided source (a transpose): 16 columns at a time, so that the
            // reads walk 16 sources in step and the writes fill whole runs.
            const T: usize = 16;
            for j0 in (0..p.valid).step_by(T) {
                let jn = T.min(p.valid - j0);
                let src: [usize; T] = std::array::from_fn(|j| (p.col + j0 + j.min(jn - 1)) * cs);
                for (q, row) in out.chunks_exact_mut(width).enumerate() {
                    let d = &mut row[j0..j0 + jn];
                    for (j, d) in d.iter_mut().enumerate() {
                        *d = b[src[j] + q * rs];
                    }
                }
            }
        }
    });
    panels
}

/// The `B` operand of a product.
#[derive(Copy, Clone)]
pub(crate) enum BOperand<'a> {
    /// Packed once (the weights of a layer).
    Packed(&'a PackedB<'a>),
    /// Read in place: element `(p, j)` at `data[p·rs + j]`.
    Rows {
        /// The matrix.
        data: &'a [f32],
        /// Row stride.
        rs: usize,
    },
}

/// `C (+)= A·B (+ bias)`: the shapes and operands; see the module docs. The rows of
/// `C` must not overlap (tasks write them in parallel).
#[derive(Copy, Clone)]
pub(crate) struct Gemm<'a> {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// `A`'s storage.
    pub a: &'a [f32],
    /// Offsets of `A`'s rows.
    pub a_rows: RowMap,
    /// `A`'s column stride.
    pub a_cs: usize,
    /// `B`.
    pub b: BOperand<'a>,
    /// Offsets of `C`'s rows (columns are contiguous).
    pub c_rows: RowMap,
    /// Added to every row of `C` (length `n`).
    pub bias: Option<&'a [f32]>,
    /// `C += A·B` instead of `C = A·B`.
    pub accumulate: bool,
    /// The epilogue, applied to each finished element of `C` (after the bias):
    /// `C = φ(A·B + bias) (+ residual)`.
    pub post: Post<'a>,
}

/// The epilogue of a product: a per-column scale, an activation, then a residual added
/// (element `(i, j)` at the same offset as `C`'s, `c_rows.offset(i) + j`):
/// `C = φ(s ⊙ (A·B + bias)) (+ residual)`. [`Post::NONE`] leaves the sum as it is.
/// `stats`: each task records the channel statistics of the rows of `C` it finished
/// while they are in its cache ([`RowStats`]; `C`'s rows are then pixels, `c_rows`
/// uniform, and every task's row block covers whole image rows of
/// [`RowStats::row_pixels`] pixels, so a row's partial is the same bits whichever
/// task computes it).
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct Post<'a> {
    /// Multiplies column `j` (after the bias, before the activation); length `n`.
    pub scale: Option<&'a [f32]>,
    pub act: Activation,
    pub residual: Option<&'a [f32]>,
    pub stats: Option<RowStats>,
}

impl Post<'_> {
    /// No epilogue.
    pub(crate) const NONE: Post<'static> = Post {
        scale: None,
        act: Activation::Identity,
        residual: None,
        stats: None,
    };
}

/// A raw `C` pointer shared by tasks that write disjoint tiles.
#[derive(Copy, Clone)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint elements of `C` (disjoint row ranges × panel ranges),
// and the owning `&mut [f32]` is borrowed for the whole parallel call.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl Gemm<'_> {
    /// Checks every index the kernels will touch.
    fn check(&self, level: SimdLevel, c_len: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        if m == 0 || n == 0 {
            return;
        }
        if k > 0 {
            let last = self.a_rows.last(m).unwrap() + (k - 1) * self.a_cs;
            assert!(last < self.a.len(), "A is too short");
        }
        assert!(self.c_rows.last(m).unwrap() + n <= c_len, "C is too short");
        assert!(
            self.post.stats.is_none() || self.c_rows.uniform,
            "statistics need uniform rows of C"
        );
        if let Some(r) = self.post.residual {
            assert!(
                self.c_rows.last(m).unwrap() + n <= r.len(),
                "residual is too short"
            );
        }
        if let Some(b) = self.bias {
            assert_eq!(b.len(), n, "bias length");
        }
        if let Some(sc) = self.post.scale {
            assert_eq!(sc.len(), n, "scale length");
        }
        match self.b {
            BOperand::Packed(p) => {
                assert_eq!((p.k, p.n), (k, n), "packed B shape");
                assert_eq!(
                    p.level,
                    level.min(crate::simd::detected()),
                    "packed B level"
                );
            }
            BOperand::Rows { data, rs } => {
                if k > 0 {
                    assert!((k - 1) * rs + n <= data.len(), "B is too short");
                }
            }
        }
    }

    /// Runs the product on the current thread's rayon pool, split into row blocks ×
    /// panel groups.
    ///
    /// # Panics
    /// If an operand is too short for the shapes (a bug in the caller).
    pub(crate) fn run(&self, level: SimdLevel, c: &mut [f32]) {
        let level = level.min(crate::simd::detected());
        self.check(level, c.len());
        let (m, n, k) = (self.m, self.n, self.k);
        if m == 0 || n == 0 {
            return;
        }
        let owned;
        let panels: &[Panel] = match self.b {
            BOperand::Packed(p) => &p.panels,
            BOperand::Rows { .. } => {
                owned = panels(level, n, k);
                &owned
            }
        };
        let tab = table(level);
        if 2 * m * n * k <= SERIAL_FLOP || rayon::current_num_threads() == 1 {
            // Too small to pay for waking the pool (the squeeze-excite's dense
            // layers on one image): one task, the same bits.
            run_block(tab, self, c.as_mut_ptr(), 0..m, panels);
            // SAFETY: the whole product is finished and this call's alone.
            unsafe { self.record_stats(c.as_ptr(), 0..m, panels) };
            return;
        }
        let (mut row_block, panel_group) = split(m, n, k, panels.len());
        if let Some(st) = self.post.stats {
            // Whole image rows per task (any block height gives the same sums).
            row_block = row_block.next_multiple_of(st.row_pixels().max(1));
        }
        // The last block takes the remainder (rather than a sliver of its own).
        let row_blocks = (m / row_block).max(1);
        let groups = panels.len().div_ceil(panel_group);
        let cp = CPtr(c.as_mut_ptr());
        (0..row_blocks * groups).into_par_iter().for_each(|t| {
            let (rb, g) = (t / groups, t % groups);
            let end = if rb + 1 == row_blocks {
                m
            } else {
                (rb + 1) * row_block
            };
            let rows = rb * row_block..end;
            let ps = &panels[g * panel_group..((g + 1) * panel_group).min(panels.len())];
            run_block(tab, self, cp.get(), rows.clone(), ps);
            // SAFETY: this task just finished these rows × panels, which no other
            // task writes or records.
            unsafe { self.record_stats(cp.get(), rows, ps) };
        });
    }

    /// Records the statistics of rows `rows` × the columns of `panels` of `C` (at
    /// `c`) into `post.stats`, if the product gathers them.
    ///
    /// # Safety
    /// Those elements of `C` must be finished, not written meanwhile, and recorded by
    /// no other task; `rows` must be whole image rows.
    unsafe fn record_stats(&self, c: *const f32, rows: Range<usize>, panels: &[Panel]) {
        let (Some(st), Some(first), Some(last)) = (self.post.stats, panels.first(), panels.last())
        else {
            return;
        };
        let ow = st.row_pixels();
        debug_assert!(rows.start.is_multiple_of(ow) && rows.end.is_multiple_of(ow));
        let cols = first.col..last.col + last.valid;
        // SAFETY: `C`'s rows are uniform (the caller's contract of `stats`), so row
        // `rows.start` starts at `c_rows.offset(rows.start)`; the rest is the caller's.
        unsafe {
            let y = c.add(self.c_rows.offset(rows.start));
            st.record(y, rows.start / ow..rows.end / ow, cols);
        }
    }

    /// Runs the whole product on the calling thread (for callers that parallelize
    /// outside, e.g. over batch items).
    ///
    /// # Panics
    /// If an operand is too short for the shapes.
    #[allow(dead_code)]
    pub(crate) fn run_serial(&self, level: SimdLevel, c: &mut [f32]) {
        let level = level.min(crate::simd::detected());
        self.check(level, c.len());
        if self.m == 0 || self.n == 0 {
            return;
        }
        let owned;
        let ps: &[Panel] = match self.b {
            BOperand::Packed(p) => &p.panels,
            BOperand::Rows { .. } => {
                owned = panels(level, self.n, self.k);
                &owned
            }
        };
        run_block(table(level), self, c.as_mut_ptr(), 0..self.m, ps);
    }
}

/// Products of at most this many flops run on the calling thread: a few microseconds
/// of work, less than handing tasks to the pool and waiting for them costs.
const SERIAL_FLOP: usize = 1 << 18;

/// Work split: rows per block (a multiple of 24, which every tile height divides) and
/// panels per group. Blocks of at least 96 rows, so that a panel of `B` brought into
/// cache serves 8 to 16 tiles, and of a few MFLOP; then the panels are dealt into
/// groups until there are enough tasks for the pool. A product too small for that
/// (one image's late layers: tens of rows, one or two panels) gets row blocks down to
/// 24 rows, so that two threads still share it evenly — a task's `B` panel is re-read
/// from cache, not memory. The split never changes a result: every element of `C`
/// sums its `k` terms in the same order in any task.
fn split(m: usize, n: usize, k: usize, npanels: usize) -> (usize, usize) {
    const TASK_FLOP: usize = 4 << 20;
    const MIN_ROWS: usize = 96;
    const MIN_SMALL_ROWS: usize = 24;
    let threads = rayon::current_num_threads();
    let min_tasks = (4 * threads).max(16);
    let per_row = 2 * n * k.max(1);
    let mut rows = (TASK_FLOP / per_row)
        .clamp(MIN_ROWS, 4096)
        .next_multiple_of(24);
    if threads > 1 && (m / rows).max(1) * npanels < min_tasks {
        // Few tasks even with one panel each: smaller row blocks, as many as the
        // tasks want but no fewer than 24 rows.
        let want_blocks = min_tasks.div_ceil(npanels);
        rows = (m / want_blocks)
            .next_multiple_of(24)
            .clamp(MIN_SMALL_ROWS, rows);
    }
    let row_blocks = (m / rows).max(1);
    let mut group = npanels;
    if row_blocks < min_tasks {
        let want = min_tasks.div_ceil(row_blocks);
        group = npanels / want;
    }
    (rows, group.max(1))
}

/// One task: rows × panels of `C`, all of `k` — `k` cut into blocks, each block's
/// panels run by the table's panel microkernels.
fn run_block(t: &GemmTable, g: &Gemm<'_>, c: *mut f32, rows: Range<usize>, panels: &[Panel]) {
    let k = g.k;
    if k == 0 {
        fill_bias(g, c, &rows, panels);
        return;
    }
    let kcmax = match g.b {
        BOperand::Packed(_) => KC_PACKED,
        BOperand::Rows { .. } => KC_ROWS,
    };
    let blocks = k.div_ceil(kcmax);
    let kc = k.div_ceil(blocks);
    let lanes = t.lanes;
    for kb in 0..blocks {
        let p0 = kb * kc;
        let kl = kc.min(k - p0);
        for p in panels {
            let (b, b_rs, masked) = match g.b {
                BOperand::Packed(pb) => (
                    pb.data[p.offset + p0 * p.nv * lanes..].as_ptr(),
                    p.nv * lanes,
                    false,
                ),
                BOperand::Rows { data, rs } => {
                    (data[p0 * rs + p.col..].as_ptr(), rs, p.valid < p.nv * lanes)
                }
            };
            // Rows that fill less than half a tile run as one-row tiles (the same
            // sums, fewer multiply-adds than a tile rerunning its last row) — unless
            // `A` is strided (a transpose: the weight gradient's `Xᵀ`), whose rows
            // share cache lines at each `k` step, so that one-row tiles would walk
            // those lines once per row instead of once per tile.
            let (mr, len) = (t.mr[p.nv - 1], rows.len());
            let rem = if g.a_cs == 1 && 2 * (len % mr) < mr {
                len % mr
            } else {
                0
            };
            let split = rows.end - rem;
            let variant = |tab: &[[[PanelFn; 2]; 2]; 4]| {
                tab[p.nv - 1][usize::from(masked)][usize::from(g.a_cs > 1)]
            };
            let mut args = PanelArgs {
                g,
                c,
                rows: rows.start..split,
                col: p.col,
                last: p.valid - (p.nv - 1) * lanes,
                p0,
                kl,
                b,
                b_rs,
                first: kb == 0,
                final_block: kb + 1 == blocks,
            };
            if split > rows.start {
                // SAFETY: `Gemm::check` proved every index of the product in range,
                // the panel lies inside `B` (packed or in place) and `C`, the tasks
                // write disjoint rows × panels, and the table is for a level this CPU
                // runs.
                unsafe { variant(&t.panel)(&args) };
            }
            if rem > 0 {
                args.rows = split..rows.end;
                // SAFETY: as above, for the task's last rows.
                unsafe { variant(&t.single)(&args) };
            }
        }
    }
}

/// `C = bias` (or `C += bias`, or nothing) for an empty `k`.
fn fill_bias(g: &Gemm, c: *mut f32, rows: &Range<usize>, panels: &[Panel]) {
    for r in rows.clone() {
        let row = g.c_rows.offset(r);
        for p in panels {
            for j in p.col..p.col + p.valid {
                let b = g.bias.map_or(0.0, |b| b[j]);
                // SAFETY: `Gemm::check` proved every row of `C` in range for every
                // panel column; this task owns these rows × panels.
                unsafe {
                    let o = c.add(row + j);
                    *o = if g.accumulate { *o + b } else { b };
                }
            }
        }
    }
}
