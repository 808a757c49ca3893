//! Register-tile microkernels shared by the three passes, and the table of tile sizes
//! per SIMD level.
//!
//! Everything here is `#[inline(always)]` and generic over [`Simd`], so it is compiled
//! inside the target-feature trampoline of the caller's [`crate::simd::dispatch`].

use crate::simd::{Simd, SimdLevel};

/// Largest tile (pixels for [`conv_tile`], input channels for [`outer_tile`]) for `nv`
/// vectors of output channels, chosen so that `tile·nv` accumulators, `nv` operand
/// vectors and a broadcast fit in the level's vector registers. Must stay within the
/// arms of [`tile_dispatch!`].
#[inline(always)]
pub(super) fn max_tile<S: Simd>(nv: usize) -> usize {
    let table: [usize; 4] = match S::LEVEL {
        // 32 zmm registers.
        SimdLevel::Avx512 => [16, 12, 8, 6],
        // 16 ymm registers.
        SimdLevel::Avx2 => [12, 6, 3, 2],
        // `wide::f32x8` is two xmm registers without AVX.
        SimdLevel::Portable => [4, 2, 1, 1],
        SimdLevel::Scalar => [8, 4, 3, 2],
    };
    table[nv - 1]
}

/// Most vectors of output channels one register tile holds.
#[inline(always)]
pub(super) fn max_nv<S: Simd>() -> usize {
    match S::LEVEL {
        SimdLevel::Portable => 2,
        _ => 4,
    }
}

/// Calls `$call!(TILE, NV)` with the runtime `$nv` (1..=4) and `$m`
/// (1..=`max_tile(nv)`) turned into constants.
macro_rules! tile_dispatch {
    ($nv:expr, $m:expr, $call:ident) => {
        match $nv {
            1 => tile_dispatch!(@m $m, 1, $call, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            2 => tile_dispatch!(@m $m, 2, $call, [1 2 3 4 5 6 7 8 9 10 11 12]),
            3 => tile_dispatch!(@m $m, 3, $call, [1 2 3 4 5 6 7 8]),
            4 => tile_dispatch!(@m $m, 4, $call, [1 2 3 4 5 6]),
            _ => unreachable!("tile with {} vectors", $nv),
        }
    };
    (@m $m:expr, $nv:literal, $call:ident, [$($t:literal)*]) => {
        match $m {
            $($t => $call!($t, $nv),)*
            _ => unreachable!("tile of {} with {} vectors", $m, $nv),
        }
    };
}
pub(super) use tile_dispatch;

/// Like [`tile_dispatch!`] for [`conv_tile`]: `$call!(TILE, NV, PIX)`, with the input
/// pixel stride `$pix` a constant for the common 16 and 32 (one or two vectors; 0
/// means "read it from the arguments").
macro_rules! conv_dispatch {
    ($nv:expr, $m:expr, $pix:expr, $call:ident) => {
        match ($nv, $pix) {
            (1, 16) => conv_dispatch!(@m $m, 1, 16, $call, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            (1, 32) => conv_dispatch!(@m $m, 1, 32, $call, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            (2, 16) => conv_dispatch!(@m $m, 2, 16, $call, [1 2 3 4 5 6 7 8 9 10 11 12]),
            (2, 32) => conv_dispatch!(@m $m, 2, 32, $call, [1 2 3 4 5 6 7 8 9 10 11 12]),
            (1, _) => conv_dispatch!(@m $m, 1, 0, $call, [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16]),
            (2, _) => conv_dispatch!(@m $m, 2, 0, $call, [1 2 3 4 5 6 7 8 9 10 11 12]),
            (3, _) => conv_dispatch!(@m $m, 3, 0, $call, [1 2 3 4 5 6 7 8]),
            (4, _) => conv_dispatch!(@m $m, 4, 0, $call, [1 2 3 4 5 6]),
            _ => unreachable!("tile with {} vectors", $nv),
        }
    };
    (@m $m:expr, $nv:literal, $pix:literal, $call:ident, [$($t:literal)*]) => {
        match $m {
            $($t => $call!($t, $nv, $pix),)*
            _ => unreachable!("tile of {} with {} vectors", $m, $nv),
        }
    };
}
pub(super) use conv_dispatch;

/// Arguments of [`conv_tile`]: `dst[p][v·L..] (=) init + Σ_taps Σ_k
/// src[tap.0 + p·src_pix + k] · w[tap.1 + k·w_k + v·L..]` for `p < MR`, `v < NV`.
pub(super) struct ConvTile<'a> {
    /// Input base (pixel 0, `k` 0) of the tile.
    pub src: *const f32,
    /// Floats between consecutive tile pixels in the input.
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
    /// Floats between consecutive tile pixels in the output.
    pub dst_pix: usize,
    /// Lanes of the last vector to store (`1..=L`).
    pub last: usize,
}

/// A direct-convolution register tile: `MR` output pixels × `NV` vectors of output
/// channels; one broadcast input value times one weight vector per multiply-add.
/// `PIX` is the input pixel stride when it is a constant (then every input address is
/// a base plus a constant offset), or 0 to read `src_pix`.
///
/// # Safety
/// Every address described on [`ConvTile`] must be in bounds: reads of
/// `src[tap.0 + p·src_pix + k]`, `w[tap.1 + k·w_k + v·L .. +L]`, `init[..NV·L]`, and
/// writes of `dst[p·dst_pix + v·L ..]` (`last` lanes for the last vector), and no other
/// thread may access the written elements meanwhile.
#[inline(always)]
pub(super) unsafe fn conv_tile<S: Simd, const MR: usize, const NV: usize, const PIX: usize>(
    s: S,
    a: &ConvTile<'_>,
) {
    let l = S::LANES;
    debug_assert!(PIX == 0 || PIX == a.src_pix);
    let pix = if PIX == 0 { a.src_pix } else { PIX };
    let mut acc = [[s.zero(); NV]; MR];
    if !a.init.is_null() {
        let mut b = [s.zero(); NV];
        for (v, b) in b.iter_mut().enumerate() {
            // SAFETY: `init` holds `NV·L` floats (caller contract).
            *b = unsafe { s.load_ptr(a.init.add(v * l)) };
        }
        for row in acc.iter_mut() {
            *row = b;
        }
    }
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
                    let b = s.splat(*xp.add(p * pix));
                    for v in 0..NV {
                        acc[v] = s.mul_add(b, wv[v], acc[v]);
                    }
                }
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees the output tile is in bounds and exclusive.
        unsafe {
            let d = a.dst.add(p * a.dst_pix);
            for (v, acc) in acc.iter().enumerate().take(NV - 1) {
                s.store_ptr(d.add(v * l), *acc);
            }
            let d = d.add((NV - 1) * l);
            if a.last >= l {
                s.store_ptr(d, acc[NV - 1]);
            } else {
                s.store_partial_ptr(d, acc[NV - 1], a.last);
            }
        }
    }
}

/// One row of pixels of an [`outer_tile`].
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

/// Arguments of [`outer_tile`]: `out[i·out_k + v·L..] += Σ_rows Σ_{p<npix}
/// row.x[p·x_pix + i] · row.dy[p·dy_pix + v·L..]` for `i < MI`, `v < NV`.
pub(super) struct OuterTile<'a> {
    /// The rows of pixels summed over.
    pub rows: &'a [OuterRow],
    /// Added to every row's `x` pointer (the tile's first input channel).
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
}

/// A weight-gradient register tile: `MI` input channels × `NV` vectors of output
/// channels, summed over rows of pixels as outer products (one broadcast input value
/// times one output-gradient vector per multiply-add) and added to the result.
///
/// # Safety
/// Every address described on [`OuterTile`] must be in bounds (reads of `x` and `dy`
/// for all rows and pixels, full vectors of `dy`; reads and writes of `out`, `last`
/// lanes for the last vector) and the result elements exclusive to this call.
#[inline(always)]
pub(super) unsafe fn outer_tile<S: Simd, const MI: usize, const NV: usize>(
    s: S,
    a: &OuterTile<'_>,
) {
    let l = S::LANES;
    let mut acc = [[s.zero(); NV]; MI];
    for (i, acc) in acc.iter_mut().enumerate() {
        // SAFETY: the caller guarantees the result tile is in bounds and exclusive.
        unsafe {
            let d = a.out.add(i * a.out_k);
            for (v, acc) in acc.iter_mut().enumerate().take(NV - 1) {
                *acc = s.load_ptr(d.add(v * l));
            }
            let d = d.add((NV - 1) * l);
            acc[NV - 1] = if a.last >= l {
                s.load_ptr(d)
            } else {
                s.load_partial_ptr(d, a.last)
            };
        }
    }
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
                    let b = s.splat(*xq.add(i));
                    for v in 0..NV {
                        acc[v] = s.mul_add(b, dv[v], acc[v]);
                    }
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: the caller guarantees the result tile is in bounds and exclusive.
        unsafe {
            let d = a.out.add(i * a.out_k);
            for (v, acc) in acc.iter().enumerate().take(NV - 1) {
                s.store_ptr(d.add(v * l), *acc);
            }
            let d = d.add((NV - 1) * l);
            if a.last >= l {
                s.store_ptr(d, acc[NV - 1]);
            } else {
                s.store_partial_ptr(d, acc[NV - 1], a.last);
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
    /// Copies source rows `src_rows` (each `width·src_c` floats, consecutive) into
    /// destination rows starting at `dst_row0`, prefetching a few pixels ahead.
    #[inline(always)]
    pub(super) fn copy_rows<S: Simd>(
        &self,
        s: S,
        src_rows: &[f32],
        dst_row0: usize,
        dst: &mut [f32],
    ) {
        const AHEAD: usize = 8;
        let row_len = self.width * self.src_c;
        let cols = self.width.min(self.dst_w.saturating_sub(self.pad));
        let span = self.ng * self.cg;
        let cbase = self.g0 * self.cg;
        for (r, src) in src_rows.chunks_exact(row_len).enumerate() {
            if self.ng == 1 && self.cg == self.src_c && self.dst_c == self.cg {
                // One dense group: the row is one contiguous run.
                let base = ((dst_row0 + r) * self.dst_w + self.pad) * self.dst_c;
                copy(s, &src[..cols * self.cg], &mut dst[base..]);
                continue;
            }
            let row = src.as_ptr().wrapping_add(cbase);
            prefetch_pixels(row, 0..AHEAD.min(cols), self.src_c, span);
            for c in 0..cols {
                if c + AHEAD < cols {
                    prefetch_pixels(row, c + AHEAD..c + AHEAD + 1, self.src_c, span);
                }
                let px = &src[c * self.src_c + cbase..][..span];
                for (gl, from) in px.chunks_exact(self.cg).enumerate() {
                    let at = gl * self.g_stride
                        + ((dst_row0 + r) * self.dst_w + self.pad + c) * self.dst_c;
                    copy(s, from, &mut dst[at..][..self.cg]);
                }
            }
        }
    }
}
