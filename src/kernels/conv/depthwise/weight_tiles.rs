//! Weight-gradient tiles: sums of output gradient × input over runs of output
//! pixels, for a group of kernel columns of one channel block, and the sliding-window
//! form on packed rows. Generic over [`Simd`] and `#[inline(always)]`: they compile
//! inside the microkernel entries of [`super::micro`].

use super::micro::ld;
use crate::simd::Simd;

/// Strides of one weight-gradient run, in floats.
#[derive(Copy, Clone)]
pub(super) struct WSteps {
    /// Between consecutive output pixels in `dy`.
    pub dy: usize,
    /// Between the source pixels of consecutive output pixels.
    pub x: usize,
    /// Between the source pixels of consecutive kernel columns.
    pub tap: usize,
    /// Between the gradients of consecutive kernel columns.
    pub out: usize,
    /// Lanes of the partial vector (TAIL blocks only).
    pub tail: usize,
}

/// `out[k] += Σ_{i < count} dy[i] · x[i·x_step + k·tap_step]` for `G` consecutive
/// kernel columns (`x` already at the group's first column), `NV` vectors each, with
/// `U` independent accumulator sets (pixels `i ≡ u mod U`) to hide the FMA latency.
///
/// # Safety
/// Every named offset plus `NV` vectors (`tail` lanes when `TAIL`) must be readable;
/// `out` plus `G` columns of `NV` full vectors writable.
#[inline(always)]
unsafe fn wgrad_run<S: Simd, const NV: usize, const G: usize, const U: usize, const TAIL: bool>(
    s: S,
    dy: *const f32,
    x: *const f32,
    out: *mut f32,
    count: usize,
    st: WSteps,
) {
    let l = S::LANES;
    let mut acc = [[[s.zero(); NV]; G]; U];
    // SAFETY (whole body): the caller guarantees the offsets are in bounds.
    unsafe {
        let mut i = 0;
        while i + U <= count {
            for (u, acc) in acc.iter_mut().enumerate() {
                wgrad_px::<S, NV, G, TAIL>(s, acc, dy, x, i + u, st);
            }
            i += U;
        }
        for (u, i) in (i..count).enumerate() {
            wgrad_px::<S, NV, G, TAIL>(s, &mut acc[u], dy, x, i, st);
        }
        for k in 0..G {
            let op = out.add(k * st.out);
            for v in 0..NV {
                let mut a = acc[0][k][v];
                for acc in &acc[1..] {
                    a = s.add(a, acc[k][v]);
                }
                let p = op.add(v * l);
                s.store_ptr(p, s.add(s.load_ptr(p), a));
            }
        }
    }
}

/// One output pixel `i` of [`wgrad_run`] into one accumulator set.
///
/// # Safety
/// As [`wgrad_run`].
#[inline(always)]
unsafe fn wgrad_px<S: Simd, const NV: usize, const G: usize, const TAIL: bool>(
    s: S,
    acc: &mut [[S::V; NV]; G],
    dy: *const f32,
    x: *const f32,
    i: usize,
    st: WSteps,
) {
    let l = S::LANES;
    // SAFETY: forwarded from the caller.
    unsafe {
        let dp = dy.add(i * st.dy);
        let mut dv = [s.zero(); NV];
        for (v, d) in dv.iter_mut().enumerate() {
            *d = ld::<S, TAIL>(s, dp.add(v * l), st.tail);
        }
        let xp = x.add(i * st.x);
        for (k, acc) in acc.iter_mut().enumerate() {
            let xk = xp.add(k * st.tap);
            for v in 0..NV {
                let xv = ld::<S, TAIL>(s, xk.add(v * l), st.tail);
                acc[v] = s.mul_add(dv[v], xv, acc[v]);
            }
        }
    }
}

/// [`wgrad_run`] for packed rows (`dy` and `x` both `vb` floats per pixel, stride 1,
/// dilation 1) with a sliding window: tiles of 8 output pixels (7 when that divides
/// `count`) keep their `dy` vectors
/// in registers and load each input vector once for the `K` kernel columns that read
/// it. Full vectors only (the packed rows are zero-padded to whole vectors).
///
/// # Safety
/// `dy` must hold `count` packed pixels and `x` `count + K − 1`; `out` `K` gradient
/// vectors of `vb` floats (`out_step = vb`).
#[inline(always)]
pub(super) unsafe fn wgrad_slide<S: Simd, const NV: usize, const K: usize>(
    s: S,
    dy: *const f32,
    x: *const f32,
    out: *mut f32,
    count: usize,
    vb: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        if !count.is_multiple_of(8) && count.is_multiple_of(7) {
            wgrad_slide_p::<S, NV, 7, K>(s, dy, x, out, count, vb)
        } else {
            wgrad_slide_p::<S, NV, 8, K>(s, dy, x, out, count, vb)
        }
    }
}

/// [`wgrad_slide`] with tiles of `PT` output pixels.
///
/// # Safety
/// As [`wgrad_slide`].
#[inline(always)]
unsafe fn wgrad_slide_p<S: Simd, const NV: usize, const PT: usize, const K: usize>(
    s: S,
    dy: *const f32,
    x: *const f32,
    out: *mut f32,
    count: usize,
    vb: usize,
) {
    let full = count / PT * PT;
    // SAFETY: forwarded; the sub-blocks are inside the packed pixels.
    unsafe {
        if full == 0 {
        } else if S::LANES >= 16 && NV >= 2 {
            for v0 in (0..NV).step_by(2) {
                wgrad_slide_v::<S, 2, PT, K>(s, dy, x, out, full, vb, v0);
            }
        } else {
            for v0 in 0..NV {
                wgrad_slide_v::<S, 1, PT, K>(s, dy, x, out, full, vb, v0);
            }
        }
        if full < count {
            let st = WSteps {
                dy: vb,
                x: vb,
                tap: vb,
                out: vb,
                tail: 0,
            };
            let (dy, x) = (dy.add(full * vb), x.add(full * vb));
            wgrad_group::<S, NV, false>(s, K, dy, x, out, count - full, st);
        }
    }
}

/// [`wgrad_slide`] for vectors `v0..v0 + NVT` of the block, `count` a multiple of `PT`.
///
/// # Safety
/// As [`wgrad_slide`].
#[inline(always)]
unsafe fn wgrad_slide_v<S: Simd, const NVT: usize, const PT: usize, const K: usize>(
    s: S,
    dy: *const f32,
    x: *const f32,
    out: *mut f32,
    count: usize,
    vb: usize,
    v0: usize,
) {
    let l = S::LANES;
    let mut acc = [[s.zero(); NVT]; K];
    // SAFETY (whole body): the caller guarantees the offsets are in bounds.
    unsafe {
        let (dy, x) = (dy.add(v0 * l), x.add(v0 * l));
        for i0 in (0..count).step_by(PT) {
            let mut d = [[s.zero(); NVT]; PT];
            for (i, d) in d.iter_mut().enumerate() {
                for (v, d) in d.iter_mut().enumerate() {
                    *d = s.load_ptr(dy.add((i0 + i) * vb + v * l));
                }
            }
            // Output pixel i reads input pixels i + k.
            for q in 0..PT + K - 1 {
                let mut xv = [s.zero(); NVT];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = s.load_ptr(x.add((i0 + q) * vb + v * l));
                }
                for (k, acc) in acc.iter_mut().enumerate() {
                    if q >= k && q - k < PT {
                        for v in 0..NVT {
                            acc[v] = s.mul_add(d[q - k][v], xv[v], acc[v]);
                        }
                    }
                }
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                let p = out.add(k * vb + (v0 + v) * l);
                s.store_ptr(p, s.add(s.load_ptr(p), *a));
            }
        }
    }
}

/// [`wgrad_run`] for a group of `gn <= 5` kernel columns, two accumulator sets when
/// one would leave fewer than ~10 independent FMA chains.
///
/// # Safety
/// As [`wgrad_run`].
#[inline(always)]
pub(super) unsafe fn wgrad_group<S: Simd, const NV: usize, const TAIL: bool>(
    s: S,
    gn: usize,
    dy: *const f32,
    x: *const f32,
    out: *mut f32,
    count: usize,
    st: WSteps,
) {
    if count == 0 {
        return;
    }
    // SAFETY: forwarded.
    unsafe {
        match (gn, gn * NV < 10) {
            (5, false) => wgrad_run::<S, NV, 5, 1, TAIL>(s, dy, x, out, count, st),
            (4, false) => wgrad_run::<S, NV, 4, 1, TAIL>(s, dy, x, out, count, st),
            (3, false) => wgrad_run::<S, NV, 3, 1, TAIL>(s, dy, x, out, count, st),
            (5, true) => wgrad_run::<S, NV, 5, 2, TAIL>(s, dy, x, out, count, st),
            (4, true) => wgrad_run::<S, NV, 4, 2, TAIL>(s, dy, x, out, count, st),
            (3, true) => wgrad_run::<S, NV, 3, 2, TAIL>(s, dy, x, out, count, st),
            (2, _) => wgrad_run::<S, NV, 2, 2, TAIL>(s, dy, x, out, count, st),
            _ => wgrad_run::<S, NV, 1, 2, TAIL>(s, dy, x, out, count, st),
        }
    }
}
