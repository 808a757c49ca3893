//! Gather tiles of the forward and backward-data passes: register tiles of
//! destination pixels × a channel block, accumulated over a row's taps, and the
//! sliding-window tiles that load each source vector once for every tap that reads
//! it. Generic over [`Simd`] and `#[inline(always)]`: they compile inside the
//! microkernel entries of [`super::micro`].

use super::columns::Tap;
use super::micro::{ld, st};
use crate::kernels::activation::Activation;
use crate::simd::Simd;

/// Raw pointers and strides of one gather run for one channel block.
#[derive(Copy, Clone)]
pub(super) struct Gather {
    /// The source: the block's ring, or the tensor itself at channel `c0`.
    pub src: *const f32,
    /// Floats per unit of [`Tap::src`]: 1 for the tensor, `vb` for a ring.
    pub src_unit: usize,
    /// Channel `c0` of the destination row.
    pub dst: *mut f32,
    /// The block's packed weights `[kh·kw][vb]`.
    pub w: *const f32,
    /// The block's packed bias `[vb]` (forward only) or null.
    pub bias: *const f32,
    /// Floats between consecutive pixels of a run, in the source and destination.
    pub src_step: usize,
    pub dst_step: usize,
    /// Lanes of the partial vector (TAIL blocks only).
    pub tail: usize,
    /// The epilogue: each output vector multiplied by the block's channel scale (at
    /// `scale`, the block's first channel; null for none), the activation applied,
    /// then the residual added (at `res` plus the destination offset; null for none).
    pub scale: *const f32,
    pub act: Activation,
    pub res: *const f32,
}

/// `P` destination pixels × `NV` vectors: `dst[p] = bias + Σ_taps src[tap + p·step] ·
/// w[tap]`.
///
/// # Safety
/// Every tap offset plus `src_off + (P−1)·src_step` and `NV` vectors (`tail` lanes when
/// `TAIL`) must be readable, `dst_off + (P−1)·dst_step` plus `NV` vectors (`tail` lanes
/// when `TAIL`) writable.
#[inline(always)]
unsafe fn gather_tile<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    src_off: usize,
    dst_off: usize,
    taps: &[Tap],
) {
    let l = S::LANES;
    // SAFETY (whole body): the caller guarantees every offset below is in bounds.
    unsafe {
        let mut acc = acc_init::<S, NV, P>(s, g, 0);
        let src = g.src.add(src_off);
        for t in taps {
            let sp = src.add(t.src * g.src_unit);
            let wp = g.w.add(t.w * NV * l);
            let mut wv = [s.zero(); NV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = s.load_ptr(wp.add(v * l));
            }
            for (p, a) in acc.iter_mut().enumerate() {
                let xp = sp.add(p * g.src_step);
                for v in 0..NV {
                    let xv = ld::<S, TAIL>(s, xp.add(v * l), g.tail);
                    a[v] = s.mul_add(xv, wv[v], a[v]);
                }
            }
        }
        acc_store::<S, NV, P, TAIL>(s, g, dst_off, 0, &acc);
    }
}

/// `P × NV` accumulators set to the packed bias (vectors `v0..v0 + NV` of the block),
/// or zero without one.
///
/// # Safety
/// With a bias, vectors `v0..v0 + NV` of it must be readable.
#[inline(always)]
unsafe fn acc_init<S: Simd, const NV: usize, const P: usize>(
    s: S,
    g: &Gather,
    v0: usize,
) -> [[S::V; NV]; P] {
    let mut acc = [[s.zero(); NV]; P];
    if !g.bias.is_null() {
        for v in 0..NV {
            // SAFETY: forwarded from the caller.
            let b = unsafe { s.load_ptr(g.bias.add((v0 + v) * S::LANES)) };
            for a in acc.iter_mut() {
                a[v] = b;
            }
        }
    }
    acc
}

/// Stores `P × NV` accumulators to destination pixels `dst_off + p·dst_step` (`tail`
/// lanes when `TAIL`), vectors `v0..v0 + NV` of the block.
///
/// # Safety
/// Those vectors must be writable (and the scale's vectors `v0..v0 + NV` readable).
#[inline(always)]
unsafe fn acc_store<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    dst_off: usize,
    v0: usize,
    acc: &[[S::V; NV]; P],
) {
    // SAFETY: forwarded from the caller; the residual has the destination's layout.
    unsafe {
        let dst = g.dst.add(dst_off);
        let mut scale = [s.zero(); NV];
        if !g.scale.is_null() {
            for (v, sv) in scale.iter_mut().enumerate() {
                *sv = ld::<S, TAIL>(s, g.scale.add((v0 + v) * S::LANES), g.tail);
            }
        }
        for (p, a) in acc.iter().enumerate() {
            let o = p * g.dst_step;
            for (v, a) in a.iter().enumerate() {
                let mut a = *a;
                if !g.scale.is_null() {
                    a = s.mul(a, scale[v]);
                }
                let mut a = g.act.apply(s, a);
                if !g.res.is_null() {
                    a = s.add(
                        a,
                        ld::<S, TAIL>(s, g.res.add(dst_off + o + v * S::LANES), g.tail),
                    );
                }
                st::<S, TAIL>(s, dst.add(o + v * S::LANES), a, g.tail);
            }
        }
    }
}

/// `count` destination pixels from `dst_off` (source from `src_off`), `P` at a time,
/// then 4, 2, 1.
///
/// # Safety
/// As [`gather_tile`] for pixels `0..count`.
#[inline(always)]
pub(super) unsafe fn gather_run<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    taps: &[Tap],
    count: usize,
    src_off: usize,
    dst_off: usize,
) {
    let mut j = 0;
    let (ss, ds) = (g.src_step, g.dst_step);
    // SAFETY: every tile covers pixels inside `0..count`.
    unsafe {
        while j + P <= count {
            gather_tile::<S, NV, P, TAIL>(s, g, src_off + j * ss, dst_off + j * ds, taps);
            j += P;
        }
        if P > 4 && j + 4 <= count {
            gather_tile::<S, NV, 4, TAIL>(s, g, src_off + j * ss, dst_off + j * ds, taps);
            j += 4;
        }
        if P > 2 && j + 2 <= count {
            gather_tile::<S, NV, 2, TAIL>(s, g, src_off + j * ss, dst_off + j * ds, taps);
            j += 2;
        }
        if j < count {
            gather_tile::<S, NV, 1, TAIL>(s, g, src_off + j * ss, dst_off + j * ds, taps);
        }
    }
}

/// One kernel row of a sliding-window tile: the source pixel of the first tap at pixel
/// 0 of the run (in units of [`Gather::src_unit`], like [`Tap::src`]), that tap's index
/// in the packed weights, and the tap-index step to the tap one pixel to the right.
#[derive(Copy, Clone, Debug)]
pub(super) struct SlideRow {
    pub src: usize,
    pub w: usize,
    pub w_step: isize,
}

/// `P` destination pixels × `NVT` vectors (from vector `v0` of the block) for `K` taps
/// per kernel row at consecutive source pixels (`src_step / SS` floats apart, in a
/// ring or in place), destination pixels `SS` source pixels apart: each source vector
/// is loaded once and used by every tap that reads it, with the row's `K` weights in
/// registers.
///
/// # Safety
/// As [`gather_tile`]; the source run must hold `SS·(P − 1) + K` pixels from every
/// row's `src`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn slide_tile<
    S: Simd,
    const NVT: usize,
    const P: usize,
    const K: usize,
    const SS: usize,
    const TAIL: bool,
>(
    s: S,
    g: &Gather,
    vb: usize,
    v0: usize,
    src_off: usize,
    dst_off: usize,
    rows: &[SlideRow],
) {
    let l = S::LANES;
    // SAFETY (whole body): the caller guarantees every offset below is in bounds.
    unsafe {
        let mut acc = acc_init::<S, NVT, P>(s, g, v0);
        for r in rows {
            let sp = g.src.add(src_off + r.src * g.src_unit + v0 * l);
            let mut wv = [[s.zero(); NVT]; K];
            for (k, wv) in wv.iter_mut().enumerate() {
                let t = r.w as isize + k as isize * r.w_step;
                let wp = g.w.offset(t * vb as isize).add(v0 * l);
                for (v, wv) in wv.iter_mut().enumerate() {
                    *wv = s.load_ptr(wp.add(v * l));
                }
            }
            // Destination pixel p reads source pixels SS·p + k.
            for q in 0..SS * (P - 1) + K {
                let xp = sp.add(q * (g.src_step / SS));
                let mut xv = [s.zero(); NVT];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = ld::<S, TAIL>(s, xp.add(v * l), g.tail);
                }
                for (k, wv) in wv.iter().enumerate() {
                    if q >= k && (q - k) % SS == 0 && (q - k) / SS < P {
                        let a = &mut acc[(q - k) / SS];
                        for v in 0..NVT {
                            a[v] = s.mul_add(xv[v], wv[v], a[v]);
                        }
                    }
                }
            }
        }
        acc_store::<S, NVT, P, TAIL>(s, g, dst_off + v0 * l, v0, &acc);
    }
}

/// `count` destination pixels of a packed run with sliding-window tiles of 7 pixels
/// when that divides `count` (EfficientNet's 7·2ⁿ sizes), 8 otherwise, the rest with
/// [`gather_run`] (`taps`: the same taps as `rows`, one by one).
///
/// # Safety
/// As [`gather_run`] and [`slide_tile`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn slide_run<
    S: Simd,
    const NV: usize,
    const P: usize,
    const K: usize,
    const SS: usize,
    const TAIL: bool,
>(
    s: S,
    g: &Gather,
    rows: &[SlideRow],
    taps: &[Tap],
    count: usize,
    src_off: usize,
    dst_off: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        if !count.is_multiple_of(8) && count.is_multiple_of(7) {
            slide_run_p::<S, NV, P, 7, K, SS, TAIL>(s, g, rows, taps, count, src_off, dst_off)
        } else {
            slide_run_p::<S, NV, P, 8, K, SS, TAIL>(s, g, rows, taps, count, src_off, dst_off)
        }
    }
}

/// [`slide_run`] with tiles of `PS` pixels.
///
/// # Safety
/// As [`slide_run`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn slide_run_p<
    S: Simd,
    const NV: usize,
    const P: usize,
    const PS: usize,
    const K: usize,
    const SS: usize,
    const TAIL: bool,
>(
    s: S,
    g: &Gather,
    rows: &[SlideRow],
    taps: &[Tap],
    count: usize,
    src_off: usize,
    dst_off: usize,
) {
    let vb = NV * S::LANES;
    let (ss, ds) = (g.src_step, g.dst_step);
    let full = count / PS * PS;
    // SAFETY: every tile covers pixels inside `0..count`.
    unsafe {
        for j in (0..full).step_by(PS) {
            let (so, d) = (src_off + j * ss, dst_off + j * ds);
            if S::LANES >= 16 && NV >= 2 {
                for v0 in (0..NV).step_by(2) {
                    slide_tile::<S, 2, PS, K, SS, TAIL>(s, g, vb, v0, so, d, rows);
                }
            } else {
                for v0 in 0..NV {
                    slide_tile::<S, 1, PS, K, SS, TAIL>(s, g, vb, v0, so, d, rows);
                }
            }
        }
        let (so, d) = (src_off + full * ss, dst_off + full * ds);
        gather_run::<S, NV, P, TAIL>(s, g, taps, count - full, so, d);
    }
}
