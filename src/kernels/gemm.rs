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

use crate::simd::{Simd, SimdKernel, SimdLevel, dispatch};
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

/// The widest panel (in vectors) at a level.
fn max_nv(level: SimdLevel) -> usize {
    match level {
        SimdLevel::Avx512 => 4,
        SimdLevel::Avx2 | SimdLevel::Portable => 2,
        SimdLevel::Scalar => 4,
    }
}

/// Cuts `n` columns into panels: as many full-width panels as fit, then one panel just
/// wide enough for the rest.
fn panels(level: SimdLevel, n: usize, k: usize) -> Vec<Panel> {
    let lanes = level.lanes();
    let nvmax = max_nv(level);
    let mut out = Vec::new();
    let (mut col, mut offset) = (0, 0);
    while col < n {
        let nv = (n - col).div_ceil(lanes).min(nvmax);
        let valid = (n - col).min(nv * lanes);
        out.push(Panel {
            col,
            nv,
            valid,
            offset,
        });
        col += valid;
        offset += k * nv * lanes;
    }
    out
}

/// Columns the kernels compute for an `n`-column product at `level` (`n` rounded up to
/// whole vectors): the cost of an orientation, for callers that can pick one.
pub(crate) fn padded_cols(level: SimdLevel, n: usize) -> usize {
    let level = level.min(crate::simd::detected());
    panels(level, n, 0)
        .iter()
        .map(|p| p.nv * level.lanes())
        .sum()
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
        let level = level.min(crate::simd::detected());
        panels(level, n, k)
            .last()
            .map_or(0, |p| p.offset + k * p.nv * level.lanes())
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
    let lanes = level.lanes();
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
        if let Some(b) = self.bias {
            assert_eq!(b.len(), n, "bias length");
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
        let (row_block, panel_group) = split(m, n, k, panels.len());
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
            dispatch(
                level,
                Block {
                    g: self,
                    c: cp.get(),
                    rows,
                    panels: ps,
                },
            );
        });
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
        dispatch(
            level,
            Block {
                g: self,
                c: c.as_mut_ptr(),
                rows: 0..self.m,
                panels: ps,
            },
        );
    }
}

/// Work split: rows per block (a multiple of 24, which every tile height divides) and
/// panels per group. Blocks of at least 96 rows, so that a panel of `B` brought into
/// cache serves 8 to 16 tiles, and of a few MFLOP; then the panels are dealt into
/// groups until there are enough tasks for the pool. The split never changes a result:
/// every element of `C` sums its `k` terms in the same order in any task.
fn split(m: usize, n: usize, k: usize, npanels: usize) -> (usize, usize) {
    const TASK_FLOP: usize = 4 << 20;
    const MIN_ROWS: usize = 96;
    let min_tasks = (4 * rayon::current_num_threads()).max(16);
    let per_row = 2 * n * k.max(1);
    let rows = (TASK_FLOP / per_row)
        .clamp(MIN_ROWS, 4096)
        .next_multiple_of(24);
    let row_blocks = (m / rows).max(1);
    let mut group = npanels;
    if row_blocks < min_tasks {
        let want = min_tasks.div_ceil(row_blocks);
        group = npanels / want;
    }
    (rows, group.max(1))
}

/// One task: rows × panels of `C`, all of `k`.
struct Block<'a, 'b> {
    g: &'a Gemm<'b>,
    c: *mut f32,
    rows: Range<usize>,
    panels: &'a [Panel],
}

impl SimdKernel for Block<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let g = self.g;
        let k = g.k;
        if k == 0 {
            // SAFETY: `check` proved every row of `C` in range.
            unsafe { fill_bias(s, g, self.c, &self.rows, self.panels) };
            return;
        }
        let kcmax = match g.b {
            BOperand::Packed(_) => KC_PACKED,
            BOperand::Rows { .. } => KC_ROWS,
        };
        let blocks = k.div_ceil(kcmax);
        let kc = k.div_ceil(blocks);
        for kb in 0..blocks {
            let p0 = kb * kc;
            let kl = kc.min(k - p0);
            for p in self.panels {
                let t = Tiles {
                    g,
                    c: self.c,
                    rows: self.rows.clone(),
                    panel: *p,
                    p0,
                    kl,
                    first: kb == 0,
                };
                // SAFETY: `check` proved every index in range.
                unsafe {
                    match (S::LANES, p.nv) {
                        (16, 4) => t.run::<S, 6, 4>(s),
                        (16, 3) => t.run::<S, 8, 3>(s),
                        (16, 2) => t.run::<S, 12, 2>(s),
                        (16, _) => t.run::<S, 8, 1>(s),
                        (8, 2) => t.run::<S, 6, 2>(s),
                        (8, _) => t.run::<S, 6, 1>(s),
                        (_, 4) => t.run::<S, 4, 4>(s),
                        (_, 3) => t.run::<S, 4, 3>(s),
                        (_, 2) => t.run::<S, 4, 2>(s),
                        _ => t.run::<S, 4, 1>(s),
                    }
                }
            }
        }
    }
}

/// `C = bias` (or `C += bias`, or nothing) for an empty `k`.
///
/// # Safety
/// Every row of `rows` of `C` must be in range for every panel column.
#[inline(always)]
unsafe fn fill_bias<S: Simd>(s: S, g: &Gemm, c: *mut f32, rows: &Range<usize>, panels: &[Panel]) {
    for r in rows.clone() {
        let row = g.c_rows.offset(r);
        for p in panels {
            for j in p.col..p.col + p.valid {
                let b = g.bias.map_or(0.0, |b| b[j]);
                // SAFETY: in range by the caller's contract.
                unsafe {
                    let o = c.add(row + j);
                    *o = if g.accumulate { *o + b } else { b };
                }
            }
        }
    }
    let _ = s;
}

/// The row tiles of one panel and one `k` block.
struct Tiles<'a, 'b> {
    g: &'a Gemm<'b>,
    c: *mut f32,
    rows: Range<usize>,
    panel: Panel,
    p0: usize,
    kl: usize,
    first: bool,
}

impl Tiles<'_, '_> {
    /// # Safety
    /// Every index the tiles touch must be in range (checked by `Gemm::check`).
    #[inline(always)]
    unsafe fn run<S: Simd, const MR: usize, const NV: usize>(&self, s: S) {
        let g = self.g;
        let p = self.panel;
        let lanes = S::LANES;
        let (b, b_rs, masked) = match g.b {
            // SAFETY: the panel lies inside the packed buffer.
            BOperand::Packed(pb) => unsafe {
                (
                    pb.data.as_ptr().add(p.offset + self.p0 * NV * lanes),
                    NV * lanes,
                    false,
                )
            },
            BOperand::Rows { data, rs } => (
                // SAFETY: row p0, column p.col is inside `data`.
                unsafe { data.as_ptr().add(self.p0 * rs + p.col) },
                rs,
                p.valid < NV * lanes,
            ),
        };
        let last = p.valid - (NV - 1) * lanes;
        let a = g.a.as_ptr();
        let overwrite = self.first && !g.accumulate;
        let bias = if self.first {
            g.bias.map(|b| &b[p.col..])
        } else {
            None
        };
        let mut r = self.rows.start;
        while r < self.rows.end {
            let mv = MR.min(self.rows.end - r);
            // Rows past the end rerun the last valid row (and are not stored).
            let ap: [*const f32; MR] = std::array::from_fn(|i| {
                // SAFETY: row r + min(i, mv−1) < m; column p0 < k.
                unsafe { a.add(g.a_rows.offset(r + i.min(mv - 1)) + self.p0 * g.a_cs) }
            });
            let c: [*mut f32; MR] = std::array::from_fn(|i| {
                // SAFETY: row r + min(i, mv−1) < m; column p.col < n.
                unsafe { self.c.add(g.c_rows.offset(r + i.min(mv - 1)) + p.col) }
            });
            let out = Out {
                c,
                rows: mv,
                last,
                overwrite,
                bias,
            };
            // SAFETY: rows and columns in range per `check`. Each variant keeps its
            // accumulators in registers from the first step to the store.
            unsafe {
                let (kl, cs) = (self.kl, g.a_cs);
                match (masked, cs > 1) {
                    (false, false) => {
                        micro::<S, MR, NV, false, false>(s, kl, &ap, cs, b, b_rs, &out)
                    }
                    (false, true) => micro::<S, MR, NV, false, true>(s, kl, &ap, cs, b, b_rs, &out),
                    (true, false) => micro::<S, MR, NV, true, false>(s, kl, &ap, cs, b, b_rs, &out),
                    (true, true) => micro::<S, MR, NV, true, true>(s, kl, &ap, cs, b, b_rs, &out),
                }
            }
            r += MR;
        }
    }
}

/// Where a register tile goes: row pointers of `C` (the first `rows` valid), the
/// valid lanes of the last vector, overwrite or add, and the bias of the panel.
struct Out<'a, const MR: usize> {
    c: [*mut f32; MR],
    rows: usize,
    last: usize,
    overwrite: bool,
    bias: Option<&'a [f32]>,
}

/// The register tile: `acc[i][j] = Σ_p a[i][p] · b[p][j·L ..]` over `kl` steps, then
/// stored to `out`. `STRIDED_A` (`a_cs > 1`) prefetches `A` ahead.
///
/// # Safety
/// `a[i] + p·a_cs` readable for `p < kl`; `b + p·b_rs + j·L .. +L` readable for every
/// vector `j`, except the last one when `MASKED`, where only `out.last` lanes are read;
/// `out`'s valid rows writable (and readable unless it overwrites).
#[inline(always)]
unsafe fn micro<
    S: Simd,
    const MR: usize,
    const NV: usize,
    const MASKED: bool,
    const STRIDED_A: bool,
>(
    s: S,
    kl: usize,
    a: &[*const f32; MR],
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    out: &Out<MR>,
) {
    let last = out.last;
    let mut acc = [[s.zero(); NV]; MR];
    let mut bp = b;
    let mut off = 0;
    for _ in 0..kl {
        // SAFETY: in range by the function's contract.
        unsafe {
            if STRIDED_A {
                // Each step of a strided `A` (a transposed matrix) starts new cache
                // lines: fetch them ahead of time.
                prefetch(a[0].wrapping_add(off + PREFETCH_STEPS * a_cs));
                prefetch(a[MR - 1].wrapping_add(off + PREFETCH_STEPS * a_cs));
            }
            let bv: [S::V; NV] = std::array::from_fn(|j| {
                if MASKED && j == NV - 1 {
                    s.load_partial_ptr(bp.add(j * S::LANES), last)
                } else {
                    s.load_ptr(bp.add(j * S::LANES))
                }
            });
            for i in 0..MR {
                let av = s.splat(*a[i].add(off));
                for j in 0..NV {
                    acc[i][j] = s.mul_add(av, bv[j], acc[i][j]);
                }
            }
            bp = bp.add(b_rs);
        }
        off += a_cs;
    }
    // Constant indices (the loop unrolls), so the accumulators stay in registers.
    #[allow(clippy::needless_range_loop)]
    for i in 0..MR {
        if i < out.rows {
            // SAFETY: valid rows of `out`, by the function's contract.
            unsafe { store_row::<S, NV>(s, out.c[i], &acc[i], last, out.overwrite, out.bias) };
        }
    }
}

/// How many `k` steps ahead the kernel prefetches a strided `A`.
const PREFETCH_STEPS: usize = 16;

/// Hints the CPU to bring the line holding `p` into L1 (no effect elsewhere).
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Writes one tile row: `c = acc (+ bias)` or `c += acc (+ bias)`; the last vector
/// holds `last` valid lanes.
///
/// # Safety
/// `c .. c + (NV−1)·L + last` must be writable (and readable unless `overwrite`).
#[inline(always)]
unsafe fn store_row<S: Simd, const NV: usize>(
    s: S,
    c: *mut f32,
    acc: &[S::V; NV],
    last: usize,
    overwrite: bool,
    bias: Option<&[f32]>,
) {
    for (j, &v) in acc.iter().enumerate() {
        let n = if j == NV - 1 { last } else { S::LANES };
        // SAFETY: in range by the function's contract; the bias slice covers the panel.
        unsafe {
            let cj = c.add(j * S::LANES);
            let mut v = v;
            if let Some(b) = bias {
                let bj = b.as_ptr().add(j * S::LANES);
                let bv = if n == S::LANES {
                    s.load_ptr(bj)
                } else {
                    s.load_partial_ptr(bj, n)
                };
                v = s.add(v, bv);
            }
            if n == S::LANES {
                if !overwrite {
                    v = s.add(v, s.load_ptr(cj));
                }
                s.store_ptr(cj, v);
            } else {
                if !overwrite {
                    v = s.add(v, s.load_partial_ptr(cj, n));
                }
                s.store_partial_ptr(cj, v, n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every shape class (column remainders, row remainders, several `k` blocks),
    /// packed and in-place `B`, bias, accumulate, at every level.
    #[test]
    fn gemm_matches_f64_on_every_level() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 5, 3),
            (13, 17, 9),
            (25, 64, 33),
            (30, 100, 300),
            (50, 33, 513),
            (3, 200, 17),
            // Two `k` blocks with a packed `B`.
            (5, 20, 2100),
        ] {
            let a = rand(m * k, 1);
            let b = rand(k * n, 2);
            let bias = rand(n, 3);
            let c0 = rand(m * n, 4);
            for level in SimdLevel::available() {
                for (packed, acc, with_bias) in [
                    (true, false, true),
                    (false, true, false),
                    (true, true, true),
                    (false, false, false),
                ] {
                    let pb = PackedB::new(level, k, n, &b, n, 1);
                    let g = Gemm {
                        m,
                        n,
                        k,
                        a: &a,
                        a_rows: RowMap::uniform(k),
                        a_cs: 1,
                        b: if packed {
                            BOperand::Packed(&pb)
                        } else {
                            BOperand::Rows { data: &b, rs: n }
                        },
                        c_rows: RowMap::uniform(n),
                        bias: with_bias.then_some(&bias[..]),
                        accumulate: acc,
                    };
                    let mut c = c0.clone();
                    g.run(level, &mut c);
                    for i in 0..m {
                        for j in 0..n {
                            let mut want: f64 = (0..k)
                                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                                .sum();
                            if with_bias {
                                want += bias[j] as f64;
                            }
                            if acc {
                                want += c0[i * n + j] as f64;
                            }
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()) * (k as f64).sqrt(),
                                "{level} m{m} n{n} k{k} packed {packed} acc {acc}: ({i},{j}) {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `Aᵀ` operands (row stride 1, column stride) and transposed packing.
    #[test]
    fn transposed_operands() {
        let (m, n, k) = (19, 21, 45);
        // a_t is k × m; A = a_tᵀ.
        let a_t = rand(k * m, 5);
        // b_t is n × k; B = b_tᵀ.
        let b_t = rand(n * k, 6);
        for level in SimdLevel::available() {
            let pb = PackedB::new(level, k, n, &b_t, 1, k);
            let g = Gemm {
                m,
                n,
                k,
                a: &a_t,
                a_rows: RowMap::uniform(1),
                a_cs: m,
                b: BOperand::Packed(&pb),
                c_rows: RowMap::uniform(n + 3),
                bias: None,
                accumulate: false,
            };
            let mut c = vec![7.0; m * (n + 3)];
            g.run_serial(level, &mut c);
            for i in 0..m {
                for j in 0..n + 3 {
                    let got = c[i * (n + 3) + j] as f64;
                    if j >= n {
                        assert_eq!(got, 7.0, "{level}: padding column overwritten");
                        continue;
                    }
                    let want: f64 = (0..k)
                        .map(|p| a_t[p * m + i] as f64 * b_t[j * k + p] as f64)
                        .sum();
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{level} ({i},{j}) {got} vs {want}"
                    );
                }
            }
        }
    }

    /// Packing into a stale workspace (NaN everywhere) gives the owned packing's bits,
    /// padding columns included.
    #[test]
    fn packing_in_place_matches_owned_packing() {
        for level in SimdLevel::available() {
            for &(k, n, rs, cs) in &[(7, 5, 5, 1), (9, 37, 1, 9), (3, 64, 64, 1)] {
                let b = rand(k * n, 7);
                let owned = PackedB::new(level, k, n, &b, rs, cs);
                let len = PackedB::packed_len(level, k, n);
                let mut buf = vec![f32::NAN; len + 3];
                let inplace = PackedB::new_in(level, k, n, &b, rs, cs, &mut buf);
                let bits = |d: &[f32]| d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&owned.data), bits(&inplace.data), "{level} k{k} n{n}");
                assert_eq!(owned.data.len(), len);
            }
        }
    }

    #[test]
    fn grid_row_map() {
        // 2 images of 3×4 output pixels, input 7×9 pixels of 5 channels, stride 2.
        let map = RowMap::grid(4, 3, 2 * 5, 2 * 9 * 5, 7 * 9 * 5);
        let mut r = 0;
        for b in 0..2 {
            for y in 0..3 {
                for x in 0..4 {
                    assert_eq!(map.offset(r), ((b * 7 + 2 * y) * 9 + 2 * x) * 5);
                    r += 1;
                }
            }
        }
    }
}
