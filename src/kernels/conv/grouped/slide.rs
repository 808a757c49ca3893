//! Sliding-window register tiles for the shapes that matter (G16 3×3 and 5×5 at
//! stride 1 and 2, the 3-channel stem), AVX-512 only.
//!
//! The plain [`conv_tile`](super::micro::conv_tile) broadcasts one input value per
//! multiply-add. Here all `kw` taps of a kernel row are in registers at once, so one
//! broadcast input value feeds every output pixel of the tile that reads it through
//! some tap: `(MR−1)·SW + KW` broadcasts for `MR·KW` multiply-adds per vector of
//! output channels (16 + 4 for 80 with `MR` = 16, `KW` = 5), which takes the tile from
//! load-bound to FMA-bound. Every input address is a base plus a constant offset, so
//! the pixel stride `PIX` is a constant too.

#[cfg(target_arch = "x86_64")]
use super::micro::{init_tile, load_tile, store_tile};
use super::split;

/// One output row (or a run of one) computed with sliding tiles:
/// `dst[p][v·L..] (=) init + Σ_rows Σ_{kw<KW} Σ_{k<k_len}
/// src[row.0 + (p·sw + kw)·pix + k] · w[row.1 + kw·w_kw + k·w_k + v·L..]`
/// for `p < width`, `v < nv`.
#[derive(Copy, Clone)]
pub(super) struct SlideRow<'a> {
    /// Input of output pixel 0, tap row offsets added.
    pub src: *const f32,
    /// `(input offset, weight offset)` of each kernel row.
    pub rows: &'a [(usize, usize)],
    /// Reduction length per tap (`≤ pix`).
    pub k_len: usize,
    /// Weight base.
    pub w: *const f32,
    /// Floats between consecutive kw taps in the weights (negative for a flipped
    /// kernel).
    pub w_kw: isize,
    /// Floats between consecutive `k` in the weights.
    pub w_k: usize,
    /// `nv·L` initial values, or null for zero.
    pub init: *const f32,
    /// Output of pixel 0.
    pub dst: *mut f32,
    /// Floats between consecutive output pixels.
    pub dst_pix: usize,
    /// Lanes of the last output vector (`1..=L`).
    pub last: usize,
    /// Output pixels.
    pub width: usize,
    /// Taps per kernel row.
    pub kw: usize,
    /// Stride along the row.
    pub sw: usize,
    /// Input pixel stride (floats).
    pub pix: usize,
    /// Vectors of output channels.
    pub nv: usize,
    /// The epilogue (see [`super::micro::ConvTile`]).
    pub scale: *const f32,
    pub act: crate::kernels::activation::Activation,
    pub res: *const f32,
}

/// The AVX-512 table's sliding-window row entry ([`slide_row`]; none elsewhere).
#[cfg(target_arch = "x86_64")]
pub(super) const ROW: Option<super::micro::SlideFn> = Some(slide_row);
/// The AVX-512 table's sliding-window row entry (none on this architecture).
#[cfg(not(target_arch = "x86_64"))]
pub(super) const ROW: Option<super::micro::SlideFn> = None;
/// The AVX-512 table's sliding weight-gradient entry ([`slide_weight`]; none elsewhere).
#[cfg(target_arch = "x86_64")]
pub(super) const WEIGHT: Option<super::micro::SlideWeightFn> = Some(slide_weight);
/// The AVX-512 table's sliding weight-gradient entry (none on this architecture).
#[cfg(not(target_arch = "x86_64"))]
pub(super) const WEIGHT: Option<super::micro::SlideWeightFn> = None;

/// Whether [`slide_row`] has a tile for this configuration.
pub(super) fn supported(kw: usize, sw: usize, pix: usize, nv: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && matches!(
            (kw, sw, pix, nv),
            (3, 1, 16, 1) | (5, 1, 16, 1) | (3, 2, 16, 1) | (5, 2, 16, 1) | (3, 2, 3, 2)
        )
}

/// Computes one [`SlideRow`] with AVX-512 sliding tiles.
///
/// # Safety
/// The CPU must support AVX-512F/VL/DQ/BW, AVX2 and FMA; the configuration must be
/// [`supported`]; every address the row describes must be in bounds (reads of `src`
/// for columns `0..(width−1)·sw + kw` of every row, `w`, `init`; writes of `dst`), and
/// the written elements exclusive to this call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
pub(super) unsafe fn slide_row(a: &SlideRow<'_>) {
    use crate::simd::Avx512;
    let s = Avx512::try_new().expect("AVX-512 was detected");
    let max_mr = if a.nv == 1 { 16 } else { 12 };
    for (ow0, m) in split(a.width, max_mr) {
        let t = SlideRow {
            src: a.src.wrapping_add(ow0 * a.sw * a.pix),
            dst: a.dst.wrapping_add(ow0 * a.dst_pix),
            res: super::micro::offset_res(a.res, ow0 * a.dst_pix),
            width: m,
            ..*a
        };
        macro_rules! go {
            ($kw:literal, $sw:literal, $pix:literal, $nv:literal, [$($mr:literal)*]) => {
                match m {
                    // SAFETY: forwarded from this function's contract.
                    $($mr => unsafe { tile::<Avx512, $mr, $nv, $kw, $sw, $pix>(s, &t) },)*
                    _ => unreachable!("sliding tile of {m}"),
                }
            };
        }
        match (a.kw, a.sw, a.pix, a.nv) {
            (3, 1, 16, 1) => go!(3, 1, 16, 1, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            (5, 1, 16, 1) => go!(5, 1, 16, 1, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            (3, 2, 16, 1) => go!(3, 2, 16, 1, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            (5, 2, 16, 1) => go!(5, 2, 16, 1, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            (3, 2, 3, 2) => go!(3, 2, 3, 2, [1 2 3 4 5 6 7 8 9 10 11 12]),
            _ => unreachable!("no sliding tile for this configuration"),
        }
    }
}

/// One sliding tile: `MR` output pixels × `NV` vectors, kernel rows of `KW` taps at
/// stride `SW`, input pixels `PIX` floats apart.
///
/// # Safety
/// As [`slide_row`], for `MR` pixels.
#[cfg(target_arch = "x86_64")]
// Debug builds keep the tiles out of line: inlined unoptimized, their stack slots
// add up to frames larger than a thread's stack.
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
unsafe fn tile<
    S: crate::simd::Simd,
    const MR: usize,
    const NV: usize,
    const KW: usize,
    const SW: usize,
    const PIX: usize,
>(
    s: S,
    a: &SlideRow<'_>,
) {
    let l = S::LANES;
    // SAFETY: `init` is null or holds `NV·L` floats (caller contract).
    let mut acc = unsafe { init_tile::<S, MR, NV>(s, a.init) };
    for &(ti, tw) in a.rows {
        // SAFETY (whole loop): the caller guarantees every address formed here is in
        // bounds.
        unsafe {
            let ip = a.src.add(ti);
            let wp = a.w.add(tw);
            for k in 0..a.k_len {
                let mut wv = [[s.zero(); NV]; KW];
                for (kw, wv) in wv.iter_mut().enumerate() {
                    let wk = wp.offset(kw as isize * a.w_kw).add(k * a.w_k);
                    for (v, wv) in wv.iter_mut().enumerate() {
                        *wv = s.load_ptr(wk.add(v * l));
                    }
                }
                let xp = ip.add(k);
                // Input column q feeds output pixel p = (q − kw) / SW through tap kw.
                macro_rules! column {
                    ($($q:literal)*) => {$(
                        if $q < (MR - 1) * SW + KW {
                            let b = s.splat(*xp.add($q * PIX));
                            macro_rules! tap {
                                ($kw:literal) => {
                                    if $kw < KW && $q >= $kw && ($q - $kw) % SW == 0
                                        && ($q - $kw) / SW < MR
                                    {
                                        let p = ($q - $kw) / SW;
                                        for v in 0..NV {
                                            acc[p][v] = s.mul_add(b, wv[$kw][v], acc[p][v]);
                                        }
                                    }
                                };
                            }
                            tap!(0);
                            tap!(1);
                            tap!(2);
                            tap!(3);
                            tap!(4);
                        }
                    )*};
                }
                column!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26
                    27 28 29 30 31 32 33 34);
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
            MR,
            (a.act, a.res, a.scale),
        )
    };
}

/// One row of pixels of a [`SlideWeight`]: input vectors `x + p·x_pix + kw·x_kw`
/// (16 floats each), output gradients `dy + p·dy_pix` (the group's channels).
#[derive(Copy, Clone)]
pub(super) struct WeightRow {
    /// Input of pixel 0, tap 0, at the group's first channel.
    pub x: *const f32,
    /// Floats between consecutive pixels in the input.
    pub x_pix: usize,
    /// Floats between consecutive kw taps in the input.
    pub x_kw: usize,
    /// Output gradient of pixel 0 at the group's first channel.
    pub dy: *const f32,
    /// Pixels in the row.
    pub npix: usize,
}

/// Weight-gradient sums of one kernel row for a group with 16 input channels, with the
/// input channels as the vector axis: for every tap `kw < KW` and output channel `co`,
/// `out[kw·out_kw + co·16 + ci] += Σ_rows Σ_{p<npix} x[p][kw][ci] · dy[p][co]`.
///
/// A tile keeps `KW` × 4 vectors of sums: per pixel it loads the `KW` input vectors
/// once and broadcasts 4 output-gradient values, `KW + 4` loads for `4·KW`
/// multiply-adds.
#[derive(Copy, Clone)]
pub(super) struct SlideWeight<'a> {
    /// Rows of pixels.
    pub rows: &'a [WeightRow],
    /// Floats between consecutive pixels in `dy`.
    pub dy_pix: usize,
    /// Output channels of the group (a multiple of 4).
    pub cog: usize,
    /// Sums of tap 0, output channel 0, channel 0.
    pub out: *mut f32,
    /// Floats between consecutive kw taps in `out`.
    pub out_kw: usize,
    /// Taps per kernel row.
    pub kw: usize,
}

/// Output channels per weight tile.
const COT: usize = 4;

/// Whether [`slide_weight`] has a tile for this configuration (16 input channels per
/// group, a multiple of 4 output channels, no horizontal dilation).
pub(super) fn weight_supported(kw: usize, cig: usize, cog: usize) -> bool {
    cfg!(target_arch = "x86_64") && cig == 16 && matches!(kw, 3 | 5) && cog.is_multiple_of(COT)
}

/// Computes one [`SlideWeight`] with AVX-512.
///
/// # Safety
/// The CPU must support AVX-512F/VL/DQ/BW, AVX2 and FMA; the configuration must be
/// [`weight_supported`]; every row's input vectors and output gradients (`cog`
/// channels) must be readable, `out` readable and writable for every tap, channel and
/// output channel, and exclusive to this call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
pub(super) unsafe fn slide_weight(a: &SlideWeight<'_>) {
    use crate::simd::Avx512;
    let s = Avx512::try_new().expect("AVX-512 was detected");
    // SAFETY (every arm): forwarded from this function's contract.
    match a.kw {
        3 => unsafe { weight_tile::<Avx512, 3>(s, a) },
        5 => unsafe { weight_tile::<Avx512, 5>(s, a) },
        _ => unreachable!("no sliding weight tile for this configuration"),
    }
}

/// # Safety
/// As [`slide_weight`].
#[cfg(target_arch = "x86_64")]
// Debug builds keep the tiles out of line: inlined unoptimized, their stack slots
// add up to frames larger than a thread's stack.
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
#[allow(clippy::needless_range_loop)] // register tiles read best indexed
unsafe fn weight_tile<S: crate::simd::Simd, const KW: usize>(s: S, a: &SlideWeight<'_>) {
    const CI: usize = 16;
    debug_assert_eq!(S::LANES, CI);
    for co0 in (0..a.cog).step_by(COT) {
        // SAFETY (whole block): the caller guarantees every address formed here is in
        // bounds and the sums exclusive.
        unsafe {
            // Row kw, vector j at `out + kw·out_kw + (co0 + j)·CI` (CI = L).
            let sums = a.out.add(co0 * CI);
            let mut acc = load_tile::<S, KW, COT>(s, sums, a.out_kw, CI, KW);
            for r in a.rows {
                let mut xp = r.x;
                let mut yp = r.dy.add(co0);
                for _ in 0..r.npix {
                    let mut xv = [s.zero(); KW];
                    for (kw, xv) in xv.iter_mut().enumerate() {
                        *xv = s.load_ptr(xp.add(kw * r.x_kw));
                    }
                    for j in 0..COT {
                        let b = s.splat(*yp.add(j));
                        for kw in 0..KW {
                            acc[kw][j] = s.mul_add(b, xv[kw], acc[kw][j]);
                        }
                    }
                    xp = xp.wrapping_add(r.x_pix);
                    yp = yp.wrapping_add(a.dy_pix);
                }
            }
            store_tile(s, &acc, sums, a.out_kw, CI, KW, super::micro::NO_POST);
        }
    }
}
