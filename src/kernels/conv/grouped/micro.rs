//! The microkernels of the grouped convolutions and their per-level tables.
//!
//! Each entry is a small function compiled for its level ([`Simd::call`]): a *run* of
//! register tiles along one row ([`ConvRun`]: `width` output pixels in near-equal tiles
//! of at most the level's tile height; [`OuterRun`]: `k_len` input channels of a
//! weight-gradient tile), the group-major row copy ([`CopyRows`]), and on AVX-512 the
//! sliding-window rows of [`super::slide`]. The tile bodies are generic over [`Simd`]
//! and `#[inline(always)]`, so they compile inside their entry. On AVX-512 and AVX2 a
//! run picks an exact tile for every height up to the level's maximum (a remainder
//! costs no wasted work); the scalar and portable levels hold one modest tile (4 pixels
//! × 1 vector) that handles shorter remainders at run time by repeating its last valid
//! pixel and storing only the valid ones.

use super::slide::{SlideRow, SlideWeight};
use crate::kernels::activation::Activation;
use crate::kernels::conv::pre::{PreImage, apply_pixels};
use crate::simd::{Microkernel, Simd, load_n};

/// The microkernels of one level, and its tile parameters.
#[derive(Debug)]
pub(super) struct GroupedTable {
    /// `f32` lanes per vector.
    pub lanes: usize,
    /// Most vectors of output channels one register tile holds.
    pub max_nv: usize,
    /// Largest tile (pixels for [`ConvRun`], input channels for [`OuterRun`]) for
    /// `nv` vectors: `max_tile[nv − 1]`, so that `tile·nv` accumulators, `nv` operand
    /// vectors and a broadcast fit in the level's vector registers.
    pub max_tile: [usize; 4],
    /// `conv[nv − 1][pix]`: [`ConvRun`] for `nv` vectors, `pix` the input pixel stride
    /// class ([`pix_class`]).
    pub conv: [[ConvFn; 4]; 4],
    /// `outer[nv − 1]`: [`OuterRun`].
    pub outer: [OuterFn; 4],
    /// [`CopyRows`].
    pub copy_rows: CopyFn,
    /// AVX-512 sliding-window rows ([`super::slide`]), where the level has them.
    pub slide: Option<SlideFn>,
    /// AVX-512 sliding weight-gradient rows, where the level has them.
    pub slide_weight: Option<SlideWeightFn>,
}

/// A [`ConvRun`] entry.
pub(super) type ConvFn = unsafe fn(&ConvTile<'_>);
/// An [`OuterRun`] entry.
pub(super) type OuterFn = unsafe fn(&OuterTile<'_>);
/// A [`CopyRows`] entry.
pub(super) type CopyFn = unsafe fn(&CopyArgs<'_>);
/// A sliding-window row entry.
pub(super) type SlideFn = unsafe fn(&SlideRow<'_>);
/// A sliding weight-gradient entry.
pub(super) type SlideWeightFn = unsafe fn(&SlideWeight<'_>);

/// The input pixel strides with a tile of their own (every address a base plus a
/// constant offset): class 1, 2, 3 for 8, 16, 32 floats (one or two vectors), class 0
/// for any other stride (read from the arguments).
pub(super) fn pix_class(pix: usize) -> usize {
    match pix {
        8 => 1,
        16 => 2,
        32 => 3,
        _ => 0,
    }
}

impl GroupedTable {
    /// The [`ConvRun`] for `nv` vectors and input pixel stride `pix`.
    pub(super) fn conv(&self, nv: usize, pix: usize) -> ConvFn {
        self.conv[nv - 1][pix_class(pix)]
    }
}

/// The AVX-512 table (32 zmm registers): tiles of 16, 12, 8, 6 pixels for 1–4
/// vectors; the sliding-window rows.
pub(super) const fn avx512_table<S: Simd>() -> GroupedTable {
    GroupedTable {
        lanes: S::LANES,
        max_nv: 4,
        max_tile: [16, 12, 8, 6],
        conv: [
            [
                S::call::<ConvRun16<1, 0>>,
                S::call::<ConvRun16<1, 8>>,
                S::call::<ConvRun16<1, 16>>,
                S::call::<ConvRun16<1, 32>>,
            ],
            [
                S::call::<ConvRun12<2, 0>>,
                S::call::<ConvRun12<2, 0>>,
                S::call::<ConvRun12<2, 16>>,
                S::call::<ConvRun12<2, 32>>,
            ],
            [S::call::<ConvRun8<3, 0>>; 4],
            [S::call::<ConvRun6<4, 0>>; 4],
        ],
        outer: [
            S::call::<OuterRun16<1>>,
            S::call::<OuterRun12<2>>,
            S::call::<OuterRun8<3>>,
            S::call::<OuterRun6<4>>,
        ],
        copy_rows: S::call::<CopyRows>,
        slide: super::slide::ROW,
        slide_weight: super::slide::WEIGHT,
    }
}

/// The AVX2 table (16 ymm registers): tiles of 12, 6, 3, 2 pixels for 1–4 vectors.
pub(super) const fn avx2_table<S: Simd>() -> GroupedTable {
    GroupedTable {
        lanes: S::LANES,
        max_nv: 4,
        max_tile: [12, 6, 3, 2],
        conv: [
            [
                S::call::<ConvRun12<1, 0>>,
                S::call::<ConvRun12<1, 8>>,
                S::call::<ConvRun12<1, 16>>,
                S::call::<ConvRun12<1, 32>>,
            ],
            [
                S::call::<ConvRun6<2, 0>>,
                S::call::<ConvRun6<2, 0>>,
                S::call::<ConvRun6<2, 16>>,
                S::call::<ConvRun6<2, 32>>,
            ],
            [S::call::<ConvRun3<3, 0>>; 4],
            [S::call::<ConvRun2<4, 0>>; 4],
        ],
        outer: [
            S::call::<OuterRun12<1>>,
            S::call::<OuterRun6<2>>,
            S::call::<OuterRun3<3>>,
            S::call::<OuterRun2<4>>,
        ],
        copy_rows: S::call::<CopyRows>,
        slide: None,
        slide_weight: None,
    }
}

/// The scalar and portable table: one tile of 4 pixels (or input channels) × 1
/// vector, shorter remainders at run time.
pub(super) const fn small_table<S: Simd>() -> GroupedTable {
    let conv: ConvFn = S::call::<ConvRun<4, 1, 0>>;
    let outer: OuterFn = S::call::<OuterRun<4, 1>>;
    GroupedTable {
        lanes: S::LANES,
        max_nv: 1,
        max_tile: [4; 4],
        conv: [[conv; 4]; 4],
        outer: [outer; 4],
        copy_rows: S::call::<CopyRows>,
        slide: None,
        slide_weight: None,
    }
}

/// Arguments of a [`ConvRun`]: `dst[p][v·L..] (=) init + Σ_taps Σ_k
/// src[tap.0 + p·src_pix + k] · w[tap.1 + k·w_k + v·L..]` for output pixels
/// `p < width` and the entry's `NV` vectors.
#[derive(Copy, Clone)]
pub(super) struct ConvTile<'a> {
    /// Input base (pixel 0, `k` 0) of the run.
    pub src: *const f32,
    /// Floats between consecutive pixels in the input.
    pub src_pix: usize,
    /// Weight base (vector 0 of the tile's output channels).
    pub w: *const f32,
    /// Floats between consecutive `k` in the weights.
    pub w_k: usize,
    /// `(input offset, weight offset)` of each tap.
    pub taps: &'a [(usize, usize)],
    /// Reduction length per tap.
    pub k_len: usize,
    /// `NV·L` initial values (the bias), or null for zero.
    pub init: *const f32,
    /// Output base (pixel 0, vector 0).
    pub dst: *mut f32,
    /// Floats between consecutive pixels in the output.
    pub dst_pix: usize,
    /// Lanes of the last vector to store (`1..=L`).
    pub last: usize,
    /// Output pixels in the run.
    pub width: usize,
    /// The epilogue: each output vector multiplied by the channel scale at `scale`
    /// (the tile's first output channel, `nv` vectors, the last `last` lanes; null for
    /// none), the activation, then the residual at `res` (the destination's layout;
    /// null for none).
    pub scale: *const f32,
    pub act: Activation,
    pub res: *const f32,
}

impl ConvTile<'_> {
    /// The same run from pixel `p0` on.
    fn at(&self, p0: usize) -> Self {
        ConvTile {
            src: self.src.wrapping_add(p0 * self.src_pix),
            dst: self.dst.wrapping_add(p0 * self.dst_pix),
            res: offset_res(self.res, p0 * self.dst_pix),
            ..*self
        }
    }
}

/// Defines run microkernels with an exact tile for every height up to their maximum:
/// `$name<NV, PIX>` cuts the run into the fewest near-equal tiles of at most `$mr`
/// pixels and runs each with the tile of its height.
macro_rules! exact_conv_runs {
    ($($name:ident $mr:literal [$($t:literal)*];)*) => {$(
        #[doc = concat!("A run of [`ConvTile`] tiles of up to ", stringify!($mr),
            " pixels × `NV` vectors, each of exactly its height.")]
        pub(super) struct $name<const NV: usize, const PIX: usize>;

        impl<const NV: usize, const PIX: usize> Microkernel for $name<NV, PIX> {
            type Args<'a> = ConvTile<'a>;
            /// # Safety
            /// As [`conv_tile`] for every pixel of the run.
            #[inline(always)]
            unsafe fn run<S: Simd>(s: S, a: &ConvTile<'_>) {
                for (p0, m) in super::split(a.width, $mr) {
                    let t = a.at(p0);
                    match m {
                        // SAFETY: the tile covers pixels of the run only.
                        $($t => unsafe { conv_tile::<S, $t, NV, PIX>(s, &t, $t) },)*
                        _ => unreachable!("tile of {m} pixels"),
                    }
                }
            }
        }
    )*};
}

exact_conv_runs! {
    ConvRun16 16 [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16];
    ConvRun12 12 [1 2 3 4 5 6 7 8 9 10 11 12];
    ConvRun8 8 [1 2 3 4 5 6 7 8];
    ConvRun6 6 [1 2 3 4 5 6];
    ConvRun3 3 [1 2 3];
    ConvRun2 2 [1 2];
}

/// A run of [`ConvTile`] tiles of `MR` pixels × `NV` vectors, one tile for every
/// remainder (the small levels).
pub(super) struct ConvRun<const MR: usize, const NV: usize, const PIX: usize>;

impl<const MR: usize, const NV: usize, const PIX: usize> Microkernel for ConvRun<MR, NV, PIX> {
    type Args<'a> = ConvTile<'a>;
    /// # Safety
    /// As [`conv_tile`] for every pixel of the run.
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &ConvTile<'_>) {
        for (p0, m) in super::split(a.width, MR) {
            // SAFETY: the tile covers pixels of the run only.
            unsafe { conv_tile::<S, MR, NV, PIX>(s, &a.at(p0), m) };
        }
    }
}

/// A direct-convolution register tile: `m ≤ MR` output pixels × `NV` vectors of
/// output channels; one broadcast input value times one weight vector per
/// multiply-add. With `m < MR` the rows past `m` repeat pixel `m − 1` and are not
/// stored. `PIX` is the input pixel stride when it is a constant (then every input
/// address is a base plus a constant offset), or 0 to read `src_pix`.
///
/// # Safety
/// Every address described on [`ConvTile`] for pixels `p < m` must be in bounds: reads
/// of `src[tap.0 + p·src_pix + k]`, `w[tap.1 + k·w_k + v·L .. +L]`, `init[..NV·L]`,
/// and writes of `dst[p·dst_pix + v·L ..]` (`last` lanes for the last vector), and no
/// other thread may access the written elements meanwhile.
// Debug builds keep the tiles out of line: inlined unoptimized, their stack slots
// add up to frames larger than a thread's stack.
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
pub(super) unsafe fn conv_tile<S: Simd, const MR: usize, const NV: usize, const PIX: usize>(
    s: S,
    a: &ConvTile<'_>,
    m: usize,
) {
    let l = S::LANES;
    debug_assert!(PIX == 0 || PIX == a.src_pix);
    debug_assert!((1..=MR).contains(&m));
    let pix = if PIX == 0 { a.src_pix } else { PIX };
    // Pixel offsets, the rows past `m` on pixel `m − 1` (constants when m == MR).
    let off: [usize; MR] = std::array::from_fn(|p| p.min(m - 1) * pix);
    // SAFETY: `init` is null or holds `NV·L` floats (caller contract).
    let mut acc = unsafe { init_tile::<S, MR, NV>(s, a.init) };
    for &(ti, tw) in a.taps {
        // SAFETY (whole loop): the caller guarantees every `src` and `w` address the
        // loop forms is in bounds.
        unsafe {
            let ip = a.src.add(ti);
            let wp = a.w.add(tw);
            for k in 0..a.k_len {
                let mut wv = [s.zero(); NV];
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = s.load_ptr(wp.add(k * a.w_k + v * l));
                }
                let xp = ip.add(k);
                for (p, acc) in acc.iter_mut().enumerate() {
                    let b = s.splat(*xp.add(off[p]));
                    for v in 0..NV {
                        acc[v] = s.mul_add(b, wv[v], acc[v]);
                    }
                }
            }
        }
    }
    // SAFETY: the caller guarantees the output tile is in bounds and exclusive.
    unsafe {
        store_tile(
            s,
            &acc,
            a.dst,
            a.dst_pix,
            a.last,
            m,
            (a.act, a.res, a.scale),
        )
    };
}

/// One row of pixels of an [`OuterTile`].
#[derive(Copy, Clone)]
pub(super) struct OuterRow {
    /// Input of pixel 0 (`i` 0).
    pub x: *const f32,
    /// Floats between consecutive pixels in the input.
    pub x_pix: usize,
    /// Output gradient of pixel 0 (vector 0).
    pub dy: *const f32,
    /// Pixels in the row.
    pub npix: usize,
}

/// Arguments of an [`OuterRun`]: `out[i·out_k + v·L..] += Σ_rows Σ_{p<npix}
/// row.x[p·x_pix + x_off + i] · row.dy[p·dy_pix + dy_off + v·L..]` for input channels
/// `i < k_len` and the entry's `NV` vectors.
#[derive(Copy, Clone)]
pub(super) struct OuterTile<'a> {
    /// The rows of pixels summed over.
    pub rows: &'a [OuterRow],
    /// Added to every row's `x` pointer (the run's first input channel).
    pub x_off: usize,
    /// Added to every row's `dy` pointer (the tile's first output vector).
    pub dy_off: usize,
    /// Floats between consecutive pixels in the output gradient.
    pub dy_pix: usize,
    /// Result base (`i` 0, vector 0); the sums are added to it.
    pub out: *mut f32,
    /// Floats between consecutive `i` in the result.
    pub out_k: usize,
    /// Lanes of the last vector to load and store (`1..=L`).
    pub last: usize,
    /// Input channels in the run.
    pub k_len: usize,
}

impl OuterTile<'_> {
    /// The same run from input channel `i0` on.
    fn at(&self, i0: usize) -> Self {
        OuterTile {
            x_off: self.x_off + i0,
            out: self.out.wrapping_add(i0 * self.out_k),
            ..*self
        }
    }
}

/// Defines weight-gradient run microkernels with an exact tile for every height up to
/// their maximum (as [`exact_conv_runs!`]).
macro_rules! exact_outer_runs {
    ($($name:ident $mr:literal [$($t:literal)*];)*) => {$(
        #[doc = concat!("A run of [`OuterTile`] tiles of up to ", stringify!($mr),
            " input channels × `NV` vectors, each of exactly its height.")]
        pub(super) struct $name<const NV: usize>;

        impl<const NV: usize> Microkernel for $name<NV> {
            type Args<'a> = OuterTile<'a>;
            /// # Safety
            /// As [`outer_tile`] for every input channel of the run.
            #[inline(always)]
            unsafe fn run<S: Simd>(s: S, a: &OuterTile<'_>) {
                for (i0, m) in super::split(a.k_len, $mr) {
                    let t = a.at(i0);
                    match m {
                        // SAFETY: the tile covers channels of the run only.
                        $($t => unsafe { outer_tile::<S, $t, NV>(s, &t, $t) },)*
                        _ => unreachable!("tile of {m} channels"),
                    }
                }
            }
        }
    )*};
}

exact_outer_runs! {
    OuterRun16 16 [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16];
    OuterRun12 12 [1 2 3 4 5 6 7 8 9 10 11 12];
    OuterRun8 8 [1 2 3 4 5 6 7 8];
    OuterRun6 6 [1 2 3 4 5 6];
    OuterRun3 3 [1 2 3];
    OuterRun2 2 [1 2];
}

/// A run of [`OuterTile`] tiles of `MI` input channels × `NV` vectors, one tile for
/// every remainder (the small levels).
pub(super) struct OuterRun<const MI: usize, const NV: usize>;

impl<const MI: usize, const NV: usize> Microkernel for OuterRun<MI, NV> {
    type Args<'a> = OuterTile<'a>;
    /// # Safety
    /// As [`outer_tile`] for every input channel of the run.
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &OuterTile<'_>) {
        for (i0, m) in super::split(a.k_len, MI) {
            // SAFETY: the tile covers channels of the run only.
            unsafe { outer_tile::<S, MI, NV>(s, &a.at(i0), m) };
        }
    }
}

/// A weight-gradient register tile: `m ≤ MI` input channels × `NV` vectors of output
/// channels, summed over rows of pixels as outer products (one broadcast input value
/// times one output-gradient vector per multiply-add) and added to the result. With
/// `m < MI` the rows past `m` repeat channel `m − 1` and are neither loaded nor
/// stored.
///
/// # Safety
/// Every address described on [`OuterTile`] for channels `i < m` must be in bounds
/// (reads of `x` and `dy` for all rows and pixels, full vectors of `dy`; reads and
/// writes of `out`, `last` lanes for the last vector) and the result elements exclusive
/// to this call.
// Debug builds keep the tiles out of line: inlined unoptimized, their stack slots
// add up to frames larger than a thread's stack.
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
pub(super) unsafe fn outer_tile<S: Simd, const MI: usize, const NV: usize>(
    s: S,
    a: &OuterTile<'_>,
    m: usize,
) {
    let l = S::LANES;
    debug_assert!((1..=MI).contains(&m));
    let off: [usize; MI] = std::array::from_fn(|i| i.min(m - 1));
    // SAFETY: the caller guarantees the result tile is in bounds and exclusive.
    let mut acc = unsafe { load_tile::<S, MI, NV>(s, a.out, a.out_k, a.last, m) };
    for r in a.rows {
        // SAFETY (whole loop): the caller guarantees every `x` and `dy` address the loop
        // forms is in bounds.
        unsafe {
            let xp = r.x.add(a.x_off);
            let yp = r.dy.add(a.dy_off);
            for p in 0..r.npix {
                let mut dv = [s.zero(); NV];
                let yq = yp.add(p * a.dy_pix);
                for (v, dv) in dv.iter_mut().enumerate() {
                    *dv = s.load_ptr(yq.add(v * l));
                }
                let xq = xp.add(p * r.x_pix);
                for (i, acc) in acc.iter_mut().enumerate() {
                    let b = s.splat(*xq.add(off[i]));
                    for v in 0..NV {
                        acc[v] = s.mul_add(b, dv[v], acc[v]);
                    }
                }
            }
        }
    }
    // SAFETY: as above.
    unsafe { store_tile(s, &acc, a.out, a.out_k, a.last, m, NO_POST) };
}

/// A register tile of `M` rows × `NV` vectors, every row the `NV·L` values at `init`
/// (all zero when `init` is null).
///
/// # Safety
/// `init` must be null or `NV·L` floats readable.
#[inline(always)]
pub(super) unsafe fn init_tile<S: Simd, const M: usize, const NV: usize>(
    s: S,
    init: *const f32,
) -> [[S::V; NV]; M] {
    let mut row = [s.zero(); NV];
    if !init.is_null() {
        for (v, r) in row.iter_mut().enumerate() {
            // SAFETY: `init` holds `NV·L` floats (caller contract).
            *r = unsafe { s.load_ptr(init.add(v * S::LANES)) };
        }
    }
    [row; M]
}

/// Loads a register tile: row `i < rows`, vector `v` from `base + i·stride + v·L`, the
/// last vector of a row `last` lanes (`1..=L`; the other lanes zero); rows from `rows`
/// on are zero.
///
/// # Safety
/// Every element named must be readable.
#[inline(always)]
pub(super) unsafe fn load_tile<S: Simd, const M: usize, const NV: usize>(
    s: S,
    base: *const f32,
    stride: usize,
    last: usize,
    rows: usize,
) -> [[S::V; NV]; M] {
    let l = S::LANES;
    let mut acc = [[s.zero(); NV]; M];
    for (i, acc) in acc.iter_mut().enumerate().take(rows) {
        // SAFETY: in bounds (caller contract).
        unsafe {
            let d = base.add(i * stride);
            for (v, acc) in acc.iter_mut().enumerate().take(NV - 1) {
                *acc = s.load_ptr(d.add(v * l));
            }
            let d = d.add((NV - 1) * l);
            acc[NV - 1] = if last >= l {
                s.load_ptr(d)
            } else {
                s.load_partial_ptr(d, last)
            };
        }
    }
    acc
}

/// `p + n` for a residual pointer, null staying null (null means "no residual").
pub(super) fn offset_res(p: *const f32, n: usize) -> *const f32 {
    if p.is_null() { p } else { p.wrapping_add(n) }
}

/// No epilogue for [`store_tile`].
pub(super) const NO_POST: TilePost = (Activation::Identity, std::ptr::null(), std::ptr::null());

/// A tile's epilogue for [`store_tile`]: the activation, the residual pointer (at the
/// destination's offsets) and the channel scale pointer (the tile's first channel;
/// null: none).
pub(super) type TilePost = (Activation, *const f32, *const f32);

/// Stores rows `0..rows` of a register tile where [`load_tile`] loads them (`last`
/// lanes of each row's last vector), through the epilogue `post`: the channel scale
/// (null: none), the activation, then the residual at the same offsets from its
/// pointer (null: none).
///
/// # Safety
/// Every element named must be writable (and the residual's readable), and no other
/// thread may access them meanwhile.
#[inline(always)]
pub(super) unsafe fn store_tile<S: Simd, const M: usize, const NV: usize>(
    s: S,
    acc: &[[S::V; NV]; M],
    base: *mut f32,
    stride: usize,
    last: usize,
    rows: usize,
    (act, res, scale): TilePost,
) {
    let l = S::LANES;
    let mut sv = [s.zero(); NV];
    if !scale.is_null() {
        for (v, sv) in sv.iter_mut().enumerate() {
            let n = if v == NV - 1 { last.min(l) } else { l };
            // SAFETY: the scale's `NV` vectors (the last `last` lanes) are readable
            // (caller contract).
            *sv = unsafe { load_n(s, scale.add(v * l), n) };
        }
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        // SAFETY: in bounds and exclusive (caller contract).
        unsafe {
            let o = i * stride;
            for (v, &a) in acc.iter().enumerate() {
                let n = if v == NV - 1 { last.min(l) } else { l };
                let a = if scale.is_null() { a } else { s.mul(a, sv[v]) };
                let mut a = act.apply(s, a);
                if !res.is_null() {
                    a = s.add(a, load_n(s, res.add(o + v * l), n));
                }
                let d = base.add(o + v * l);
                if n == l {
                    s.store_ptr(d, a);
                } else {
                    s.store_partial_ptr(d, a, n);
                }
            }
        }
    }
}

/// Asks the CPU to bring the cache line holding `p` into the caches (no effect on
/// other architectures). Never faults, whatever the address.
#[inline(always)]
pub(super) fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and has no visible effect.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches `width` floats of each of the pixels `cols` of a row that starts at
/// `base` with pixels `pix` floats apart.
#[inline(always)]
pub(super) fn prefetch_pixels(
    base: *const f32,
    cols: std::ops::Range<usize>,
    pix: usize,
    width: usize,
) {
    const LINE: usize = 16;
    if pix <= LINE {
        let mut f = cols.start * pix;
        while f < cols.end * pix {
            prefetch(base.wrapping_add(f));
            f += LINE;
        }
    } else {
        for c in cols {
            let mut f = 0;
            while f < width {
                prefetch(base.wrapping_add(c * pix + f));
                f += LINE;
            }
        }
    }
}

/// `dst[..n] = src[..n]` with vector loads and stores (`n` = `src.len()`).
#[inline(always)]
pub(super) fn copy<S: Simd>(s: S, src: &[f32], dst: &mut [f32]) {
    let dst = &mut dst[..src.len()];
    let mut si = src.chunks_exact(S::LANES);
    let mut di = dst.chunks_exact_mut(S::LANES);
    for (a, b) in (&mut si).zip(&mut di) {
        s.store(b, s.load(a));
    }
    let (a, b) = (si.remainder(), di.into_remainder());
    if !a.is_empty() {
        s.store_upto(b, s.load_upto(a));
    }
}

/// Copies `rows` rows of an NHWC image into a zero-padded, group-major buffer:
/// `dst[gl][r][pad + c][..cg] = src[row0 + r][c][(g0 + gl)·cg ..+cg]` for `gl < ng`,
/// `c < width`; `dst` rows are `dst_w` pixels of `dst_c ≥ cg` floats, groups
/// `g_stride` floats apart. Other elements of `dst` are left as they are (zero).
#[derive(Copy, Clone)]
pub(super) struct GroupMajor {
    /// Source pixels per row.
    pub width: usize,
    /// Source channels per pixel.
    pub src_c: usize,
    /// Channels per group.
    pub cg: usize,
    /// First group copied.
    pub g0: usize,
    /// Groups copied.
    pub ng: usize,
    /// Zero pixels left of each destination row.
    pub pad: usize,
    /// Destination pixels per row.
    pub dst_w: usize,
    /// Destination floats per pixel.
    pub dst_c: usize,
    /// Destination floats between groups.
    pub g_stride: usize,
}

impl GroupMajor {
    /// Prefetches pixels `cols` of the copied groups in the source rows `rows` of
    /// `img` (rows of `width·src_c` floats).
    #[inline(always)]
    pub(super) fn prefetch_rows(
        &self,
        img: &[f32],
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) {
        for r in rows {
            let base = img
                .as_ptr()
                .wrapping_add(r * self.width * self.src_c + self.g0 * self.cg);
            prefetch_pixels(base, cols.clone(), self.src_c, self.ng * self.cg);
        }
    }

    /// Copies source rows `src_rows` (each `width·src_c` floats, consecutive) into
    /// destination rows starting at `dst_row0` with the table's [`CopyRows`] entry
    /// `copy` (the destination rows must lie inside `dst`), through the prologue
    /// `pre` (the image's coefficients from channel 0, `src_c` of each) if given.
    pub(super) fn copy_rows(
        &self,
        copy: CopyFn,
        src_rows: &[f32],
        pre: Option<PreImage>,
        dst_row0: usize,
        dst: &mut [f32],
    ) {
        let a = CopyArgs {
            gm: *self,
            src: src_rows,
            pre,
            dst_row0,
            dst: dst.as_mut_ptr(),
            dst_len: dst.len(),
        };
        // SAFETY: `dst` is exclusively borrowed for the call and its length is passed
        // along; the entry comes from a table this CPU runs.
        unsafe { copy(&a) };
    }
}

/// Arguments of [`CopyRows`]: [`GroupMajor`]'s copy of `src` into the `dst_len`
/// floats at `dst`.
pub(super) struct CopyArgs<'a> {
    pub gm: GroupMajor,
    pub src: &'a [f32],
    /// The prologue applied to every copied element (coefficients indexed by source
    /// channel); `None`: a plain copy.
    pub pre: Option<PreImage>,
    pub dst_row0: usize,
    pub dst: *mut f32,
    pub dst_len: usize,
}

/// The group-major row copy ([`GroupMajor::copy_rows`]), prefetching a few pixels
/// ahead.
pub(super) struct CopyRows;

impl Microkernel for CopyRows {
    type Args<'a> = CopyArgs<'a>;
    /// # Safety
    /// `dst` must hold `dst_len` writable floats that no one else accesses during the
    /// call (every write is index-checked against `dst_len`); `pre`'s coefficients
    /// readable for every source channel.
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &CopyArgs<'_>) {
        const AHEAD: usize = 8;
        // SAFETY: the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(a.dst, a.dst_len) };
        let (gm, dst_row0) = (&a.gm, a.dst_row0);
        let row_len = gm.width * gm.src_c;
        let cols = gm.width.min(gm.dst_w.saturating_sub(gm.pad));
        let span = gm.ng * gm.cg;
        let cbase = gm.g0 * gm.cg;
        for (r, src) in a.src.chunks_exact(row_len).enumerate() {
            if let Some(pre) = &a.pre {
                for gl in 0..gm.ng {
                    let c0 = cbase + gl * gm.cg;
                    let at = gl * gm.g_stride + ((dst_row0 + r) * gm.dst_w + gm.pad) * gm.dst_c;
                    let need = (cols.max(1) - 1) * gm.dst_c + gm.cg;
                    let to = &mut dst[at..][..need];
                    assert!(cols == 0 || (cols - 1) * gm.src_c + c0 + gm.cg <= src.len());
                    // SAFETY: `cols` pixels of `cg` channels from `c0` in the source row
                    // and in `to` (both checked just above); the coefficients of
                    // channels `c0 ..+cg` (the caller's contract).
                    unsafe {
                        let src = (src[c0..].as_ptr(), gm.src_c);
                        let dst = (to.as_mut_ptr(), gm.dst_c);
                        apply_pixels(s, &pre.at(c0), src, dst, cols, gm.cg);
                    }
                }
                continue;
            }
            if gm.ng == 1 && gm.cg == gm.src_c && gm.dst_c == gm.cg {
                // One dense group: the row is one contiguous run.
                let base = ((dst_row0 + r) * gm.dst_w + gm.pad) * gm.dst_c;
                copy(s, &src[..cols * gm.cg], &mut dst[base..]);
                continue;
            }
            let row = src.as_ptr().wrapping_add(cbase);
            prefetch_pixels(row, 0..AHEAD.min(cols), gm.src_c, span);
            for c in 0..cols {
                if c + AHEAD < cols {
                    prefetch_pixels(row, c + AHEAD..c + AHEAD + 1, gm.src_c, span);
                }
                let px = &src[c * gm.src_c + cbase..][..span];
                for (gl, from) in px.chunks_exact(gm.cg).enumerate() {
                    let at = gl * gm.g_stride + ((dst_row0 + r) * gm.dst_w + gm.pad + c) * gm.dst_c;
                    copy(s, from, &mut dst[at..][..gm.cg]);
                }
            }
        }
    }
}
