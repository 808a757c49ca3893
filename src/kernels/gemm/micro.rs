//! The product's microkernels and their per-level tables.
//!
//! One microkernel runs the row tiles of one column panel of `C` for one `k` block:
//! tiles of `MR` rows × `NV` vectors whose accumulators live in registers while `k`
//! runs (broadcast one element of `A`, load `NV` vectors of `B`, `MR·NV` fused
//! multiply-adds). The last tile of a row range reruns its last valid row in the rows
//! past the end and stores only the valid ones, so any row count works with one tile
//! height; the last vector of a panel stores `last` lanes (a lane mask). `MASKED` reads
//! the last vector of `B` partially (a panel of `B` read in place, whose last vector
//! runs past the matrix); `STRIDED` prefetches a strided `A` (a transposed matrix).
//!
//! Tables: AVX-512 and AVX2 hold a tile per panel width (1–4 vectors on AVX-512, 1–2
//! on AVX2) and `MASKED` × `STRIDED`; the scalar and portable levels hold one modest
//! tile (4 rows × 1 vector, masked and prefetching, which is correct in every case).
//! Every level also holds one-row tiles of each width, for the rows that fill less
//! than half a tile.

use super::Gemm;
use crate::kernels::activation::{Act, Activation, with_act};
use crate::simd::{Microkernel, Simd};
use std::ops::Range;

/// Arguments of a panel microkernel: rows `rows` of `C` for the panel starting at
/// column `col`, `k` steps `p0..p0 + kl`.
pub(super) struct PanelArgs<'a> {
    /// The product (operands, row maps, bias, accumulate).
    pub g: &'a Gemm<'a>,
    /// `C`'s storage.
    pub c: *mut f32,
    pub rows: Range<usize>,
    /// First column of the panel.
    pub col: usize,
    /// Valid lanes of the panel's last vector (`1..=L`).
    pub last: usize,
    /// First `k` step of the block and the block's length.
    pub p0: usize,
    pub kl: usize,
    /// `B` at row `p0`, column `col` (packed panel or in place) and its row stride.
    pub b: *const f32,
    pub b_rs: usize,
    /// The first `k` block (adds the bias; overwrites unless accumulating).
    pub first: bool,
    /// The last `k` block (applies the epilogue).
    pub final_block: bool,
}

/// A panel's tile function.
pub(super) type PanelFn = unsafe fn(&PanelArgs<'_>);

/// The microkernels of one level.
#[derive(Debug)]
pub(super) struct GemmTable {
    /// `f32` lanes per vector.
    pub lanes: usize,
    /// Widest panel, in vectors.
    pub max_nv: usize,
    /// `panel[nv − 1][masked][strided]`.
    pub panel: [[[PanelFn; 2]; 2]; 4],
    /// The tile height of `panel[nv − 1]`.
    pub mr: [usize; 4],
    /// One-row tiles of each panel width, `single[nv − 1][masked][strided]`: the rows
    /// of a product with a row-major `A` that fill less than half a tile (one image's
    /// dense layers, the tail of an odd row count), where a full tile would rerun its
    /// last row in the rest — up to `mr − 1` times the multiply-adds. A row's sum is
    /// the same chain in either, so the choice never changes a bit.
    pub single: [[[PanelFn; 2]; 2]; 4],
}

/// The AVX-512 table: tiles of as many rows as keep `MR·NV` accumulators, `NV`
/// operand vectors and a broadcast in the 32 zmm registers.
pub(super) const fn avx512_table<S: Simd>() -> GemmTable {
    GemmTable {
        lanes: S::LANES,
        max_nv: 4,
        panel: [
            variants::<S, 8, 1>(),
            variants::<S, 12, 2>(),
            variants::<S, 8, 3>(),
            variants::<S, 6, 4>(),
        ],
        mr: [8, 12, 8, 6],
        single: [
            variants::<S, 1, 1>(),
            variants::<S, 1, 2>(),
            variants::<S, 1, 3>(),
            variants::<S, 1, 4>(),
        ],
    }
}

/// The AVX2 table: 6 rows of one or two vectors (16 ymm registers); the unused
/// wider entries repeat the widest tile.
pub(super) const fn avx2_table<S: Simd>() -> GemmTable {
    let two = variants::<S, 6, 2>();
    let single_two = variants::<S, 1, 2>();
    GemmTable {
        lanes: S::LANES,
        max_nv: 2,
        panel: [variants::<S, 6, 1>(), two, two, two],
        mr: [6; 4],
        single: [variants::<S, 1, 1>(), single_two, single_two, single_two],
    }
}

/// The four `[masked][strided]` variants of one tile shape.
const fn variants<S: Simd, const MR: usize, const NV: usize>() -> [[PanelFn; 2]; 2] {
    [
        [
            S::call::<PanelTiles<MR, NV, false, false>>,
            S::call::<PanelTiles<MR, NV, false, true>>,
        ],
        [
            S::call::<PanelTiles<MR, NV, true, false>>,
            S::call::<PanelTiles<MR, NV, true, true>>,
        ],
    ]
}

/// The table of the scalar and portable levels: one tile, 4 rows × 1 vector.
pub(super) const fn small_table<S: Simd>() -> GemmTable {
    let one: PanelFn = S::call::<PanelTiles<4, 1, true, true>>;
    let single: PanelFn = S::call::<PanelTiles<1, 1, true, true>>;
    GemmTable {
        lanes: S::LANES,
        max_nv: 1,
        panel: [[[one; 2]; 2]; 4],
        mr: [4; 4],
        single: [[[single; 2]; 2]; 4],
    }
}

/// The row tiles of one panel and one `k` block, `MR` rows × `NV` vectors.
pub(super) struct PanelTiles<
    const MR: usize,
    const NV: usize,
    const MASKED: bool,
    const STRIDED: bool,
>;

impl<const MR: usize, const NV: usize, const MASKED: bool, const STRIDED: bool> Microkernel
    for PanelTiles<MR, NV, MASKED, STRIDED>
{
    type Args<'a> = PanelArgs<'a>;

    /// # Safety
    /// Every index of the product is in range (checked by `Gemm::check`), `b` points
    /// at the panel's `kl` rows (`NV` full vectors each, the last one `last` lanes
    /// when `MASKED`), and the rows × panel of `C` are exclusive to the call.
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, t: &PanelArgs<'_>) {
        // The activation chosen once per call (the epilogue's, on the last `k`
        // block): each variant's epilogue is straight code that keeps the tile in
        // registers (no dispatch per vector).
        let act = if t.final_block {
            t.g.post.act
        } else {
            Activation::Identity
        };
        with_act!(act, A => {
            // SAFETY: the caller's contract.
            unsafe { row_tiles::<S, MR, NV, MASKED, STRIDED, A>(s, t) }
        })
    }
}

/// The row tiles of [`PanelTiles::run`] with the activation `A`.
///
/// # Safety
/// As [`PanelTiles::run`].
#[inline(always)]
unsafe fn row_tiles<
    S: Simd,
    const MR: usize,
    const NV: usize,
    const MASKED: bool,
    const STRIDED: bool,
    A: Act,
>(
    s: S,
    t: &PanelArgs<'_>,
) {
    let g = t.g;
    let a = g.a.as_ptr();
    let overwrite = t.first && !g.accumulate;
    let bias = if t.first {
        g.bias.map(|b| &b[t.col..])
    } else {
        None
    };
    let post = if t.final_block {
        g.post
    } else {
        super::Post::NONE
    };
    let res = post.residual.map_or(std::ptr::null(), |r| r.as_ptr());
    let mut r = t.rows.start;
    while r < t.rows.end {
        let mv = MR.min(t.rows.end - r);
        // Rows past the end rerun the last valid row (and are not stored).
        let ap: [*const f32; MR] = std::array::from_fn(|i| {
            a.wrapping_add(g.a_rows.offset(r + i.min(mv - 1)) + t.p0 * g.a_cs)
        });
        let off: [usize; MR] = std::array::from_fn(|i| g.c_rows.offset(r + i.min(mv - 1)) + t.col);
        let out = Out {
            scale: post.scale.map(|sc| &sc[t.col..]),
            c: off.map(|o| t.c.wrapping_add(o)),
            res: off.map(|o| res.wrapping_add(o)),
            rows: mv,
            last: t.last,
            overwrite,
            bias,
            residual: !res.is_null(),
        };
        // SAFETY: rows and columns in range (the caller's contract). Each
        // variant keeps its accumulators in registers from the first step to the
        // store.
        unsafe { tile::<S, MR, NV, MASKED, STRIDED, A>(s, t.kl, &ap, g.a_cs, t.b, t.b_rs, &out) };
        r += MR;
    }
}

/// Where a register tile goes: row pointers of `C` (the first `rows` valid), the
/// valid lanes of the last vector, overwrite or add, and the bias of the panel.
struct Out<'a, const MR: usize> {
    c: [*mut f32; MR],
    /// The residual rows (at `C`'s offsets), read when `residual`.
    res: [*const f32; MR],
    rows: usize,
    last: usize,
    overwrite: bool,
    bias: Option<&'a [f32]>,
    /// The per-column scale of the panel (the last `k` block only).
    scale: Option<&'a [f32]>,
    residual: bool,
}

/// The register tile: `acc[i][j] = Σ_p a[i][p] · b[p][j·L ..]` over `kl` steps, then
/// stored to `out`. `STRIDED_A` (`a_cs > 1`) prefetches `A` ahead.
///
/// # Safety
/// `a[i] + p·a_cs` readable for `p < kl`; `b + p·b_rs + j·L .. +L` readable for every
/// vector `j`, except the last one when `MASKED`, where only `out.last` lanes are read;
/// `out`'s valid rows writable (and readable unless it overwrites).
#[inline(always)]
unsafe fn tile<
    S: Simd,
    const MR: usize,
    const NV: usize,
    const MASKED: bool,
    const STRIDED_A: bool,
    A: Act,
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
            unsafe { store_row::<S, NV, MR, A>(s, out, i, &acc[i], last) };
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

/// Writes row `i` of a tile: `c = φ(s ⊙ (acc (+ bias))) (+ residual)` or `c = φ(s ⊙ (c +
/// acc (+ bias))) (+ residual)` (`s` the scale, when there is one); the last vector
/// holds `last` valid lanes.
///
/// # Safety
/// Row `i` of `out` must be writable for `(NV−1)·L + last` floats (and readable unless
/// `overwrite`), and its residual row readable when there is one.
#[inline(always)]
unsafe fn store_row<S: Simd, const NV: usize, const MR: usize, A: Act>(
    s: S,
    out: &Out<MR>,
    i: usize,
    acc: &[S::V; NV],
    last: usize,
) {
    let (c, r) = (out.c[i], out.res[i]);
    for (j, &v) in acc.iter().enumerate() {
        let n = if j == NV - 1 { last } else { S::LANES };
        // SAFETY: in range by the function's contract; the bias slice covers the panel.
        unsafe {
            let cj = c.add(j * S::LANES);
            let ld = |p: *const f32| {
                if n == S::LANES {
                    s.load_ptr(p)
                } else {
                    s.load_partial_ptr(p, n)
                }
            };
            let mut v = v;
            if let Some(b) = out.bias {
                v = s.add(v, ld(b.as_ptr().add(j * S::LANES)));
            }
            if !out.overwrite {
                v = s.add(v, ld(cj));
            }
            if let Some(sc) = out.scale {
                v = s.mul(v, ld(sc.as_ptr().add(j * S::LANES)));
            }
            v = A::f(s, v);
            if out.residual {
                v = s.add(v, ld(r.add(j * S::LANES)));
            }
            if n == S::LANES {
                s.store_ptr(cj, v);
            } else {
                s.store_partial_ptr(cj, v, n);
            }
        }
    }
}
