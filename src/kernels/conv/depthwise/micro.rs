//! The depthwise microkernels and their per-level tables.
//!
//! Every entry works on one *channel block* — `NV` vectors of channels, or one partial
//! vector (`TAIL`, `tail` lanes) — and handles any run length at run time:
//! [`GatherRow`] (every run of one destination row: tap-list runs in tiles of `P`
//! pixels then 4, 2, 1, and sliding-window runs for 3 or 5 taps per kernel row),
//! [`PackRow`] (source pixels into a packed ring row), [`WgradRun`] (weight-
//! gradient sums of up to 5 kernel columns along a run), [`WgradSlide`] (the same
//! with a sliding window on packed rows) and [`BiasRow`] (one row's bias-gradient sum,
//! added with compensation). The tables index them by [`kind`] of channel block.
//! AVX-512 and AVX2 hold every block kind and the sliding-window entries; the scalar
//! and portable levels hold one modest shape (one vector, tiles of 4 pixels) and no
//! sliding windows.

use super::Block;
use super::columns::Tap;
pub(super) use super::gather_tiles::{Gather, SlideRow};
use super::gather_tiles::{gather_run, slide_run};
pub(super) use super::weight_tiles::WSteps;
use super::weight_tiles::{wgrad_group, wgrad_slide};
use crate::kernels::conv::pre::{PreImage, PreVec};
use crate::simd::{Microkernel, Simd};

/// The block kinds a table holds entries for: 1, 2 or 4 full vectors, or one partial
/// vector.
pub(super) const KINDS: usize = 4;

/// The table index of block `b`: 0, 1, 2 for 1, 2, 4 full vectors, 3 for a partial
/// vector.
pub(super) fn kind(b: Block) -> usize {
    match (b.nv, b.tail > 0) {
        (_, true) => 3,
        (4, false) => 2,
        (2, false) => 1,
        _ => 0,
    }
}

/// A [`GatherRow`] entry.
pub(super) type RowFn = unsafe fn(&RowArgs<'_>);
/// A [`PackRow`] entry.
pub(super) type PackFn = unsafe fn(&PackArgs<'_>);
/// A weight-gradient run entry ([`WgradRun`] or [`WgradSlide`]).
pub(super) type WgradFn = unsafe fn(&WgradArgs);
/// A [`BiasRow`] entry.
pub(super) type BiasFn = unsafe fn(&BiasArgs);

/// The microkernels of one level, indexed by [`kind`].
#[derive(Debug)]
pub(super) struct DwTable {
    /// `f32` lanes per vector.
    pub lanes: usize,
    /// Widest channel block, in vectors.
    pub nv_max: usize,
    pub row: [RowFn; KINDS],
    pub pack: [PackFn; KINDS],
    pub wgrad: [WgradFn; KINDS],
    /// Sliding-window weight-gradient runs for 3 and 5 kernel columns.
    pub wgrad_slide: Option<[[WgradFn; KINDS]; 2]>,
    pub bias_row: [BiasFn; KINDS],
}

/// The AVX-512 table (32 registers): blocks of up to 4 vectors, tiles of 8 pixels (4
/// for 4-vector blocks).
pub(super) const fn avx512_table<S: Simd>() -> DwTable {
    DwTable {
        lanes: S::LANES,
        nv_max: 4,
        row: [
            S::call::<GatherRow<1, 8, false, true>>,
            S::call::<GatherRow<2, 8, false, true>>,
            S::call::<GatherRow<4, 4, false, true>>,
            S::call::<GatherRow<1, 8, true, true>>,
        ],
        pack: [
            S::call::<PackRow<1, false>>,
            S::call::<PackRow<2, false>>,
            S::call::<PackRow<4, false>>,
            S::call::<PackRow<1, true>>,
        ],
        wgrad: [
            S::call::<WgradRun<1, false>>,
            S::call::<WgradRun<2, false>>,
            S::call::<WgradRun<4, false>>,
            S::call::<WgradRun<1, true>>,
        ],
        wgrad_slide: Some([
            [
                S::call::<WgradSlide<1, 3>>,
                S::call::<WgradSlide<2, 3>>,
                S::call::<WgradSlide<4, 3>>,
                S::call::<WgradSlide<1, 3>>,
            ],
            [
                S::call::<WgradSlide<1, 5>>,
                S::call::<WgradSlide<2, 5>>,
                S::call::<WgradSlide<4, 5>>,
                S::call::<WgradSlide<1, 5>>,
            ],
        ]),
        bias_row: [
            S::call::<BiasRow<1, false>>,
            S::call::<BiasRow<2, false>>,
            S::call::<BiasRow<4, false>>,
            S::call::<BiasRow<1, true>>,
        ],
    }
}

/// The AVX2 table (16 registers): blocks of up to 2 vectors, tiles of 8 pixels (4 for
/// 2-vector blocks); the 4-vector entries are never used and repeat the 2-vector ones.
pub(super) const fn avx2_table<S: Simd>() -> DwTable {
    DwTable {
        lanes: S::LANES,
        nv_max: 2,
        row: [
            S::call::<GatherRow<1, 8, false, true>>,
            S::call::<GatherRow<2, 4, false, true>>,
            S::call::<GatherRow<2, 4, false, true>>,
            S::call::<GatherRow<1, 8, true, true>>,
        ],
        pack: [
            S::call::<PackRow<1, false>>,
            S::call::<PackRow<2, false>>,
            S::call::<PackRow<2, false>>,
            S::call::<PackRow<1, true>>,
        ],
        wgrad: [
            S::call::<WgradRun<1, false>>,
            S::call::<WgradRun<2, false>>,
            S::call::<WgradRun<2, false>>,
            S::call::<WgradRun<1, true>>,
        ],
        wgrad_slide: Some([
            [
                S::call::<WgradSlide<1, 3>>,
                S::call::<WgradSlide<2, 3>>,
                S::call::<WgradSlide<2, 3>>,
                S::call::<WgradSlide<1, 3>>,
            ],
            [
                S::call::<WgradSlide<1, 5>>,
                S::call::<WgradSlide<2, 5>>,
                S::call::<WgradSlide<2, 5>>,
                S::call::<WgradSlide<1, 5>>,
            ],
        ]),
        bias_row: [
            S::call::<BiasRow<1, false>>,
            S::call::<BiasRow<2, false>>,
            S::call::<BiasRow<2, false>>,
            S::call::<BiasRow<1, true>>,
        ],
    }
}

/// The scalar and portable table: one-vector blocks (and a partial one), tiles of 4
/// pixels, no sliding windows.
pub(super) const fn small_table<S: Simd>() -> DwTable {
    let row: RowFn = S::call::<GatherRow<1, 4, false, false>>;
    let pack: PackFn = S::call::<PackRow<1, false>>;
    let wgrad: WgradFn = S::call::<WgradRun<1, false>>;
    let bias_row: BiasFn = S::call::<BiasRow<1, false>>;
    DwTable {
        lanes: S::LANES,
        nv_max: 1,
        row: [row, row, row, S::call::<GatherRow<1, 4, true, false>>],
        pack: [pack, pack, pack, S::call::<PackRow<1, true>>],
        wgrad: [wgrad, wgrad, wgrad, S::call::<WgradRun<1, true>>],
        wgrad_slide: None,
        bias_row: [bias_row, bias_row, bias_row, S::call::<BiasRow<1, true>>],
    }
}

/// One run of a destination row: `count` pixels from destination offset `dst`
/// (floats from the block's first channel in the row), reading source pixel `src_px`
/// on (in the source's pixels), through the taps `taps` or, with `k` = 3 or 5 taps per
/// kernel row, the sliding-window rows `slide` (ranges into the row's lists; `slide`
/// empty for a tap-list run), in place (`packed` false) or from the ring.
#[derive(Clone, Debug)]
pub(super) struct Run {
    pub packed: bool,
    pub taps: std::ops::Range<u32>,
    pub slide: std::ops::Range<u32>,
    pub k: u32,
    pub count: usize,
    pub src_px: usize,
    pub dst: usize,
}

/// One channel block of a [`GatherRow`] call: its in-place and ring sources, and the
/// range of the call's pack jobs that bring its ring up to date.
#[derive(Copy, Clone)]
pub(super) struct RowBlock {
    pub direct: Gather,
    pub packed: Gather,
    pub jobs: (u32, u32),
}

/// Arguments of [`GatherRow`]: one destination row of channel blocks of one kind, the
/// ring copies they need first (`jobs`, `c` channels per source pixel), the row's runs
/// and their tap lists.
pub(super) struct RowArgs<'a> {
    pub blocks: &'a [RowBlock],
    pub jobs: &'a [PackJob],
    pub c: usize,
    pub runs: &'a [Run],
    pub taps: &'a [Tap],
    pub slide: &'a [SlideRow],
}

/// Every run of one destination row for channel blocks of `NV` vectors (`TAIL`: one
/// partial vector), block after block, each block's ring copies just before its runs
/// (so they are still in L1): tap-list runs in tiles of `P` pixels (then 4, 2, 1), and
/// with `SLIDE` the sliding-window runs for 3 and 5 taps per kernel row.
pub(super) struct GatherRow<const NV: usize, const P: usize, const TAIL: bool, const SLIDE: bool>;

impl<const NV: usize, const P: usize, const TAIL: bool, const SLIDE: bool> Microkernel
    for GatherRow<NV, P, TAIL, SLIDE>
{
    type Args<'a> = RowArgs<'a>;
    /// # Safety
    /// As [`gather_run`] and [`slide_run`] for every run (all its pixels, taps and
    /// sliding rows in bounds; the destination pixels exclusive to the call).
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &RowArgs<'_>) {
        for b in a.blocks {
            let tail = b.direct.tail;
            // SAFETY: forwarded, block by block (copies as `pack_row`).
            unsafe {
                for j in &a.jobs[b.jobs.0 as usize..b.jobs.1 as usize] {
                    pack_row::<S, NV, TAIL>(s, j, a.c, tail);
                }
                Self::block(s, &b.direct, &b.packed, a)
            };
        }
    }
}

impl<const NV: usize, const P: usize, const TAIL: bool, const SLIDE: bool>
    GatherRow<NV, P, TAIL, SLIDE>
{
    /// Every run of the row for one block.
    ///
    /// # Safety
    /// As [`GatherRow::run`].
    #[inline(always)]
    unsafe fn block<S: Simd>(s: S, direct: &Gather, packed: &Gather, a: &RowArgs<'_>) {
        for r in a.runs {
            let g = if r.packed { packed } else { direct };
            let taps = &a.taps[r.taps.start as usize..r.taps.end as usize];
            let rows = &a.slide[r.slide.start as usize..r.slide.end as usize];
            let src_off = r.src_px * g.src_step;
            // SAFETY: forwarded.
            unsafe {
                match (SLIDE && !rows.is_empty(), r.k) {
                    (true, 3) => {
                        slide_run::<S, NV, P, 3, 1, TAIL>(s, g, rows, taps, r.count, src_off, r.dst)
                    }
                    (true, 5) => {
                        slide_run::<S, NV, P, 5, 1, TAIL>(s, g, rows, taps, r.count, src_off, r.dst)
                    }
                    _ => gather_run::<S, NV, P, TAIL>(s, g, taps, r.count, src_off, r.dst),
                }
            }
        }
    }
}

/// One copy of [`PackRow`]: `px` pixels of a channel block from `src` (pixels `c`
/// floats apart) into `dst` (pixels `NV·L` floats apart).
#[derive(Copy, Clone, Debug)]
pub(super) struct PackJob {
    pub src: *const f32,
    pub px: usize,
    pub dst: *mut f32,
    /// The prologue's coefficients for these pixels' channels, when the forward pass
    /// transforms its input as it packs it.
    pub pre: Option<PreImage>,
}

/// Arguments of [`PackRow`]: copies of blocks with `c` channels per source pixel and
/// `tail` lanes in a partial block.
pub(super) struct PackArgs<'a> {
    pub jobs: &'a [PackJob],
    pub c: usize,
    pub tail: usize,
}

/// Copies source pixels into packed rows ([`pack_row`]), every job of the call.
pub(super) struct PackRow<const NV: usize, const TAIL: bool>;

impl<const NV: usize, const TAIL: bool> Microkernel for PackRow<NV, TAIL> {
    type Args<'a> = PackArgs<'a>;
    /// # Safety
    /// As [`pack_row`] for every job.
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &PackArgs<'_>) {
        for j in a.jobs {
            // SAFETY: forwarded.
            unsafe { pack_row::<S, NV, TAIL>(s, j, a.c, a.tail) }
        }
    }
}

/// Arguments of a weight-gradient run: `count` output pixels of `gn ≤ 5` kernel
/// columns ([`WgradRun`]; strides `st`) or of the entry's `K` columns on packed rows
/// of `vb` floats per pixel ([`WgradSlide`]).
pub(super) struct WgradArgs {
    pub gn: usize,
    pub dy: *const f32,
    pub x: *const f32,
    pub out: *mut f32,
    pub count: usize,
    pub st: WSteps,
    pub vb: usize,
}

/// `gn` kernel columns of weight-gradient sums along a run ([`wgrad_group`]).
pub(super) struct WgradRun<const NV: usize, const TAIL: bool>;

impl<const NV: usize, const TAIL: bool> Microkernel for WgradRun<NV, TAIL> {
    type Args<'a> = WgradArgs;
    /// # Safety
    /// As [`wgrad_run`].
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &WgradArgs) {
        // SAFETY: forwarded.
        unsafe { wgrad_group::<S, NV, TAIL>(s, a.gn, a.dy, a.x, a.out, a.count, a.st) }
    }
}

/// `K` kernel columns of weight-gradient sums on packed rows ([`wgrad_slide`]).
pub(super) struct WgradSlide<const NV: usize, const K: usize>;

impl<const NV: usize, const K: usize> Microkernel for WgradSlide<NV, K> {
    type Args<'a> = WgradArgs;
    /// # Safety
    /// As [`wgrad_slide`].
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &WgradArgs) {
        // SAFETY: forwarded.
        unsafe { wgrad_slide::<S, NV, K>(s, a.dy, a.x, a.out, a.count, a.vb) }
    }
}

/// Arguments of [`BiasRow`]: the `count` pixels of one output-gradient row (`step`
/// floats apart), and the block's running sum and compensation (`NV·L` floats each).
pub(super) struct BiasArgs {
    pub dy: *const f32,
    pub step: usize,
    pub count: usize,
    pub sum: *mut f32,
    pub comp: *mut f32,
    pub tail: usize,
}

/// One row's bias-gradient sum (two partial sums), added into the running total with
/// compensation (Kahan): bias gradients are sums of many terms that often nearly
/// cancel.
pub(super) struct BiasRow<const NV: usize, const TAIL: bool>;

impl<const NV: usize, const TAIL: bool> Microkernel for BiasRow<NV, TAIL> {
    type Args<'a> = BiasArgs;
    /// # Safety
    /// The row's pixels (`NV` vectors, `tail` lanes when `TAIL`) must be readable, the
    /// sum and compensation readable and writable and exclusive to the call.
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &BiasArgs) {
        let l = S::LANES;
        let mut bsum = [[s.zero(); NV]; 2];
        // SAFETY: the caller's contract.
        unsafe {
            for ow in 0..a.count {
                let acc = &mut bsum[ow & 1];
                for (v, acc) in acc.iter_mut().enumerate() {
                    let d = ld::<S, TAIL>(s, a.dy.add(ow * a.step + v * l), a.tail);
                    *acc = s.add(*acc, d);
                }
            }
            let [even, odd] = bsum;
            for (v, (e, o)) in even.into_iter().zip(odd).enumerate() {
                let (sp, cp) = (a.sum.add(v * l), a.comp.add(v * l));
                let (sum, comp) = (s.load_ptr(sp), s.load_ptr(cp));
                let y = s.sub(s.add(e, o), comp);
                let t = s.add(sum, y);
                s.store_ptr(cp, s.sub(s.sub(t, sum), y));
                s.store_ptr(sp, t);
            }
        }
    }
}

/// Loads a vector, partially (`n` lanes, the others zero) when `TAIL`.
///
/// # Safety
/// `p..p+LANES` (or `p..p+n` when `TAIL`) must be readable.
#[inline(always)]
pub(super) unsafe fn ld<S: Simd, const TAIL: bool>(s: S, p: *const f32, n: usize) -> S::V {
    // SAFETY: forwarded from the caller.
    unsafe {
        if TAIL {
            s.load_partial_ptr(p, n)
        } else {
            s.load_ptr(p)
        }
    }
}

/// Stores a vector, partially (`n` lanes) when `TAIL`.
///
/// # Safety
/// `p..p+LANES` (or `p..p+n` when `TAIL`) must be writable.
#[inline(always)]
pub(super) unsafe fn st<S: Simd, const TAIL: bool>(s: S, p: *mut f32, v: S::V, n: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if TAIL {
            s.store_partial_ptr(p, v, n)
        } else {
            s.store_ptr(p, v)
        }
    }
}

/// Copies the job's `px` pixels of `NV` vectors (stride `c` floats in the source) into
/// a packed row (stride `NV·LANES`), through the job's prologue if it has one; a
/// `TAIL` block's missing lanes become zeros (or the prologue's value at zero, which
/// the block's zero weight lanes cancel).
///
/// # Safety
/// The source pixels (`tail` lanes when `TAIL`) must be readable, the packed ones
/// writable, and the prologue's coefficients (`NV` vectors, `tail` lanes when `TAIL`)
/// readable.
#[inline(always)]
pub(super) unsafe fn pack_row<S: Simd, const NV: usize, const TAIL: bool>(
    s: S,
    j: &PackJob,
    c: usize,
    tail: usize,
) {
    let l = S::LANES;
    let vb = NV * l;
    let n = if TAIL { tail } else { l };
    // SAFETY: forwarded from the caller.
    unsafe {
        match &j.pre {
            None => {
                for i in 0..j.px {
                    let sp = j.src.add(i * c);
                    let dp = j.dst.add(i * vb);
                    for v in 0..NV {
                        s.store_ptr(dp.add(v * l), ld::<S, TAIL>(s, sp.add(v * l), tail));
                    }
                }
            }
            Some(pre) => {
                // The block's coefficient vectors, loaded once for the whole run (a
                // plain loop: `array::from_fn`'s closure is not inlined into this
                // target-feature context, which would leave the loads out of line).
                let mut k = [PreVec::load(s, &pre.at(0), n); NV];
                for (v, k) in k.iter_mut().enumerate().skip(1) {
                    *k = PreVec::load(s, &pre.at(v * l), n);
                }
                for i in 0..j.px {
                    let sp = j.src.add(i * c);
                    let dp = j.dst.add(i * vb);
                    for (v, k) in k.iter().enumerate() {
                        let x = ld::<S, TAIL>(s, sp.add(v * l), tail);
                        s.store_ptr(dp.add(v * l), k.apply(s, x));
                    }
                }
            }
        }
    }
}
