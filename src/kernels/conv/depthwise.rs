//! Depthwise convolution (one input channel per group, as many outputs as inputs),
//! vectorized over channels.
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc): `x` is `[N][H][W][C]`, `y` is
//! `[N][OH][OW][C]`, the weight is `[kh][kw][C]` and the bias `[C]`.
//!
//! # How the kernels work
//! Channels are contiguous in NHWC, so every kernel works on blocks of 1–4 SIMD
//! vectors of channels (the last, partial vector of a channel count that is not a
//! multiple of the lane count uses masked loads and stores).
//!
//! - **Forward** runs over output rows. For each row the valid kernel rows are fixed,
//!   and the row splits into an *interior* run of pixels whose taps are all inside the
//!   input (one shared tap list, no bounds checks) and a few *border* pixels with their
//!   own, shorter tap lists. A tile of up to 8 output pixels × a channel block is
//!   accumulated in registers over the tap list. Parallel over blocks of output rows;
//!   each output is computed the same way for any split.
//! - **Backward-data** is the same gather with the roles swapped: for each input row,
//!   the kernel rows that hit an output row, and for each residue class of input
//!   columns modulo the stride, the kernel columns that hit an output column (the set
//!   is the same for the whole class, so a class is again an interior run plus border
//!   pixels). No scatter, no atomics: each `dx` element is written once.
//! - **Backward-weight** splits the output rows into fixed chunks (independent of the
//!   thread count); per chunk, each (kernel row, group of up to 5 kernel columns,
//!   channel block) accumulates in registers over the interior of an output row, and
//!   the per-chunk partial weight gradients are summed in chunk order
//!   ([`reduce_chunks`]), so the result is bitwise identical for any number of
//!   threads. The bias gradient is fused into the same pass.

use super::{ConvShape, GradMode};
use crate::error::Result;
use crate::kernels::parallel::{chunk_len, reduce_chunks};
use crate::simd::{Simd, SimdKernel, SimdLevel, dispatch};
use rayon::prelude::*;

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
    #[inline(always)]
    fn in_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.sh + kh * self.dh)
            .checked_sub(self.top)
            .filter(|&ih| ih < self.h)
    }

    /// The output columns `[lo, hi)` whose tap through kernel column `kw` is inside
    /// the input (`lo >= hi` when there are none).
    #[inline(always)]
    fn ow_range(&self, kw: usize) -> (usize, usize) {
        let off = kw * self.dw;
        // iw = ow·sw + off − left must lie in [0, W).
        let lo = self.left.saturating_sub(off).div_ceil(self.sw);
        let hi = if self.w + self.left > off {
            ((self.w + self.left - off - 1) / self.sw + 1).min(self.ow)
        } else {
            0
        };
        (lo.min(self.ow), hi)
    }
}

/// One tap of a gather: element offsets of the source pixel (at the first pixel of a
/// run) and of the weight vector, both at channel 0.
#[derive(Copy, Clone, Debug)]
struct Tap {
    src: usize,
    w: usize,
}

/// A run of `count` destination pixels (the first at element offset `dst`, channel 0)
/// that share the taps `taps[t0..t1]`; pixel `i` of the run reads `src + i·src_step`.
#[derive(Copy, Clone, Debug)]
struct Seg {
    dst: usize,
    count: usize,
    t0: usize,
    t1: usize,
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

/// Widest channel block (in vectors) for a level: enough registers for 4 vectors of
/// accumulators per pixel on AVX-512 (32 registers), 2 on the 16-register levels.
fn nv_max(lanes: usize) -> usize {
    if lanes == 8 { 2 } else { 4 }
}

/// Loads a vector, partially (`n` lanes) when `TAIL`.
///
/// # Safety
/// `p..p+LANES` (or `p..p+n` when `TAIL`) must be readable.
#[inline(always)]
unsafe fn ld<S: Simd, const TAIL: bool>(s: S, p: *const f32, n: usize) -> S::V {
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
unsafe fn st<S: Simd, const TAIL: bool>(s: S, p: *mut f32, v: S::V, n: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if TAIL {
            s.store_partial_ptr(p, v, n)
        } else {
            s.store_ptr(p, v)
        }
    }
}

/// Raw pointers and strides of one gather (forward or backward-data), already offset
/// to the first channel of a block.
#[derive(Copy, Clone)]
struct Gather {
    src: *const f32,
    dst: *mut f32,
    w: *const f32,
    /// Bias (forward only) or null.
    bias: *const f32,
    /// Elements between consecutive pixels of a run, in the source and destination.
    src_step: usize,
    dst_step: usize,
    /// Lanes of the partial vector (TAIL blocks only).
    tail: usize,
}

/// `P` destination pixels × `NV` vectors: `dst[p] = bias + Σ_taps src[tap + p·step] ·
/// w[tap]`.
///
/// # Safety
/// Every tap offset (plus `(P−1)·src_step` and `NV` vectors) must be inside the source,
/// `dst + (P−1)·dst_step` plus `NV` vectors inside the destination; `TAIL` implies
/// `NV == 1`.
#[inline(always)]
unsafe fn gather_tile<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    src_px: usize,
    dst_px: usize,
    taps: &[Tap],
) {
    let l = S::LANES;
    let mut acc = [[s.zero(); NV]; P];
    // SAFETY (whole body): the caller guarantees every offset below is in bounds.
    unsafe {
        if !g.bias.is_null() {
            for v in 0..NV {
                let b = ld::<S, TAIL>(s, g.bias.add(v * l), g.tail);
                for a in acc.iter_mut() {
                    a[v] = b;
                }
            }
        }
        let src = g.src.add(src_px);
        for t in taps {
            let sp = src.add(t.src);
            let wp = g.w.add(t.w);
            let mut wv = [s.zero(); NV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = ld::<S, TAIL>(s, wp.add(v * l), g.tail);
            }
            for (p, a) in acc.iter_mut().enumerate() {
                let xp = sp.add(p * g.src_step);
                for v in 0..NV {
                    let xv = ld::<S, TAIL>(s, xp.add(v * l), g.tail);
                    a[v] = s.mul_add(xv, wv[v], a[v]);
                }
            }
        }
        let dst = g.dst.add(dst_px);
        for (p, a) in acc.iter().enumerate() {
            let dp = dst.add(p * g.dst_step);
            for (v, a) in a.iter().enumerate() {
                st::<S, TAIL>(s, dp.add(v * l), *a, g.tail);
            }
        }
    }
}

/// Runs every segment of a row plan for one channel block, `P` pixels at a time.
///
/// # Safety
/// The plan must be in bounds for the buffers behind `g` (see [`gather_tile`]).
#[inline(always)]
unsafe fn gather_segs<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    taps: &[Tap],
    segs: &[Seg],
) {
    for seg in segs {
        let t = &taps[seg.t0..seg.t1];
        let mut i = 0;
        // SAFETY: the plan's pixels `0..count` are in bounds.
        unsafe {
            while i + P <= seg.count {
                gather_tile::<S, NV, P, TAIL>(s, g, i * g.src_step, seg.dst + i * g.dst_step, t);
                i += P;
            }
            while i < seg.count {
                gather_tile::<S, NV, 1, TAIL>(s, g, i * g.src_step, seg.dst + i * g.dst_step, t);
                i += 1;
            }
        }
    }
}

/// Runs a row plan over every channel block, choosing tile shapes for the level.
///
/// # Safety
/// As [`gather_segs`], with `g` at channel 0.
#[inline(always)]
unsafe fn gather_blocks<S: Simd>(
    s: S,
    g: &Gather,
    blocks: &[Block],
    taps: &[Tap],
    segs: &[Seg],
) {
    let wide = S::LANES >= 16;
    for b in blocks {
        let bias = if g.bias.is_null() {
            g.bias
        } else {
            // SAFETY: c0 < C, inside the bias.
            unsafe { g.bias.add(b.c0) }
        };
        // SAFETY: c0 < C: channel offsets stay inside every pixel.
        let gb = unsafe {
            Gather {
                src: g.src.add(b.c0),
                dst: g.dst.add(b.c0),
                w: g.w.add(b.c0),
                bias,
                tail: b.tail,
                ..*g
            }
        };
        // SAFETY: forwarded; the block's vectors lie inside the channel range.
        unsafe {
            match (b.nv, b.tail > 0, wide) {
                (_, true, _) => gather_segs::<S, 1, 4, true>(s, &gb, taps, segs),
                (4, false, true) => gather_segs::<S, 4, 4, false>(s, &gb, taps, segs),
                (4, false, false) => gather_segs::<S, 4, 2, false>(s, &gb, taps, segs),
                (2, false, true) => gather_segs::<S, 2, 8, false>(s, &gb, taps, segs),
                (2, false, false) => gather_segs::<S, 2, 4, false>(s, &gb, taps, segs),
                _ => gather_segs::<S, 1, 8, false>(s, &gb, taps, segs),
            }
        }
    }
}

/// Appends a segment with the taps pushed since `t0`.
fn push_seg(segs: &mut Vec<Seg>, taps: &[Tap], dst: usize, count: usize, t0: usize) {
    if count > 0 {
        segs.push(Seg {
            dst,
            count,
            t0,
            t1: taps.len(),
        });
    }
}

/// The forward plan of output row `oh` of image `n`: source offsets into `x`,
/// destination offsets relative to the start of that output row.
fn forward_row_plan(g: &Geo, n: usize, oh: usize, taps: &mut Vec<Tap>, segs: &mut Vec<Seg>) {
    taps.clear();
    segs.clear();
    let c = g.c;
    // Interior columns: every kernel column inside the input.
    let (a, _) = g.ow_range(0);
    let (_, b) = g.ow_range(g.kw - 1);
    let (a, b) = if a < b { (a, b) } else { (g.ow, g.ow) };
    let add = |taps: &mut Vec<Tap>, segs: &mut Vec<Seg>, ow0: usize, count: usize| {
        let t0 = taps.len();
        for kh in 0..g.kh {
            let Some(ih) = g.in_row(oh, kh) else { continue };
            let row = (n * g.h + ih) * g.w;
            for kw in 0..g.kw {
                let (lo, hi) = g.ow_range(kw);
                if ow0 < lo || ow0 >= hi {
                    continue;
                }
                let iw = ow0 * g.sw + kw * g.dw - g.left;
                taps.push(Tap {
                    src: (row + iw) * c,
                    w: (kh * g.kw + kw) * c,
                });
            }
        }
        push_seg(segs, taps, ow0 * c, count, t0);
    };
    for ow in 0..a {
        add(taps, segs, ow, 1);
    }
    if a < b {
        add(taps, segs, a, b - a);
    }
    for ow in b..g.ow {
        add(taps, segs, ow, 1);
    }
}

/// The backward-data plan of input row `ih` of image `n`: source offsets into `dy`,
/// destination offsets relative to the start of that input row.
fn backward_data_row_plan(
    g: &Geo,
    n: usize,
    ih: usize,
    taps: &mut Vec<Tap>,
    segs: &mut Vec<Seg>,
) {
    taps.clear();
    segs.clear();
    let c = g.c;
    // Kernel rows that reach an output row: ih + top − kh·dh = oh·sh.
    let mut rows: Vec<(usize, usize)> = Vec::with_capacity(g.kh);
    for kh in 0..g.kh {
        let Some(num) = (ih + g.top).checked_sub(kh * g.dh) else {
            continue;
        };
        if num % g.sh == 0 && num / g.sh < g.oh {
            rows.push((kh, num / g.sh));
        }
    }
    // Per residue class r of input columns (iw = r + j·sw), kernel column kw reaches
    // output column ow = o0 + j when r + left − kw·dw = o0·sw.
    let mut cols: Vec<(usize, isize)> = Vec::with_capacity(g.kw);
    for r in 0..g.sw.min(g.w) {
        let nj = (g.w - r).div_ceil(g.sw);
        cols.clear();
        for kw in 0..g.kw {
            let num = (r + g.left) as isize - (kw * g.dw) as isize;
            if num.rem_euclid(g.sw as isize) == 0 {
                cols.push((kw, num.div_euclid(g.sw as isize)));
            }
        }
        // Valid j for one column: 0 <= o0 + j < OW.
        let j_range = |o0: isize| -> (usize, usize) {
            let lo = (-o0).max(0) as usize;
            let hi = (g.ow as isize - o0).clamp(0, nj as isize) as usize;
            (lo.min(nj), hi)
        };
        let (mut a, mut b) = (0usize, nj);
        for &(_, o0) in &cols {
            let (lo, hi) = j_range(o0);
            a = a.max(lo);
            b = b.min(hi);
        }
        let (a, b) = if a < b { (a, b) } else { (nj, nj) };
        let add = |taps: &mut Vec<Tap>, segs: &mut Vec<Seg>, j0: usize, count: usize| {
            let t0 = taps.len();
            for &(kh, oh) in &rows {
                let row = (n * g.oh + oh) * g.ow;
                for &(kw, o0) in &cols {
                    let (lo, hi) = j_range(o0);
                    if j0 < lo || j0 >= hi {
                        continue;
                    }
                    let ow = (o0 + j0 as isize) as usize;
                    taps.push(Tap {
                        src: (row + ow) * c,
                        w: (kh * g.kw + kw) * c,
                    });
                }
            }
            push_seg(segs, taps, (r + j0 * g.sw) * c, count, t0);
        };
        for j in 0..a {
            add(taps, segs, j, 1);
        }
        if a < b {
            add(taps, segs, a, b - a);
        }
        for j in b..nj {
            add(taps, segs, j, 1);
        }
    }
}

/// Which gather a [`GatherRows`] task runs.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Pass {
    Forward,
    BackwardData,
}

/// Destination rows `row0..row0 + rows` (global `n·rows_per_image + r` indices) of a
/// forward or backward-data gather.
struct GatherRows<'a> {
    g: &'a Geo,
    pass: Pass,
    src: &'a [f32],
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    dst: &'a mut [f32],
    row0: usize,
}

impl SimdKernel for GatherRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let g = self.g;
        let (rows_per_image, row_len, src_step, dst_step) = match self.pass {
            Pass::Forward => (g.oh, g.ow * g.c, g.sw * g.c, g.c),
            Pass::BackwardData => (g.h, g.w * g.c, g.c, g.sw * g.c),
        };
        let blocks = channel_blocks(g.c, S::LANES, nv_max(S::LANES));
        let mut taps = Vec::with_capacity(g.kh * g.kw * 4);
        let mut segs = Vec::with_capacity(g.ow.max(g.w));
        let rows = self.dst.len() / row_len;
        for r in 0..rows {
            let global = self.row0 + r;
            let (n, row) = (global / rows_per_image, global % rows_per_image);
            match self.pass {
                Pass::Forward => forward_row_plan(g, n, row, &mut taps, &mut segs),
                Pass::BackwardData => backward_data_row_plan(g, n, row, &mut taps, &mut segs),
            }
            let dst_row = &mut self.dst[r * row_len..(r + 1) * row_len];
            let gt = Gather {
                src: self.src.as_ptr(),
                dst: dst_row.as_mut_ptr(),
                w: self.w.as_ptr(),
                bias: self.bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                src_step,
                dst_step,
                tail: 0,
            };
            // SAFETY: the plans only name in-range pixels: every tap source pixel was
            // checked against the image bounds, every destination pixel lies in this
            // row, and the channel blocks cover exactly `0..C`.
            unsafe { gather_blocks(s, &gt, &blocks, &taps, &segs) };
        }
    }
}

/// Output rows per parallel task: about 64 tasks, each of at least ~16K elements.
fn rows_per_task(rows: usize, row_len: usize) -> usize {
    chunk_len(rows, 16384usize.div_ceil(row_len.max(1)), 64)
}

fn run_gather(
    level: SimdLevel,
    g: &Geo,
    pass: Pass,
    src: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dst: &mut [f32],
) {
    let (rows, row_len) = match pass {
        Pass::Forward => (g.n * g.oh, g.ow * g.c),
        Pass::BackwardData => (g.n * g.h, g.w * g.c),
    };
    let per_task = rows_per_task(rows, row_len);
    dst.par_chunks_mut(per_task * row_len)
        .enumerate()
        .for_each(|(i, dst)| {
            dispatch(
                level,
                GatherRows {
                    g,
                    pass,
                    src,
                    w,
                    bias,
                    dst,
                    row0: i * per_task,
                },
            )
        });
}

/// `y = conv(x, w) (+ bias)`; `y` is overwritten.
///
/// `x`: `[N][H][W][C]`, `w`: `[kh][kw][C]`, `bias`: `[C]`, `y`: `[N][OH][OW][C]`.
/// Errors: buffers whose lengths do not match `shape`.
pub fn forward(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    shape.check_forward(x, w, bias, y)?;
    let g = Geo::new(shape);
    run_gather(level, &g, Pass::Forward, x, w, bias, y);
    Ok(())
}

/// `dx = convᵀ(dy, w)`; `dx` is overwritten.
///
/// `dy`: `[N][OH][OW][C]`, `w`: `[kh][kw][C]`, `dx`: `[N][H][W][C]`.
/// Errors: buffers whose lengths do not match `shape`.
pub fn backward_data(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    shape.check_backward_data(dy, w, dx)?;
    let g = Geo::new(shape);
    run_gather(level, &g, Pass::BackwardData, dy, w, None, dx);
    Ok(())
}

/// `out[g][v] += Σ_{ow in a..b} dy[ow][v] · x[ow·sw + (kw0+g)·dw − left][v]` for `G`
/// consecutive kernel columns from `kw0` (every tap inside the input).
///
/// # Safety
/// `dy` and `x` point at channel `c0` of an output row and an input row; every pixel
/// named is inside its row; `out + g·C` plus `NV` vectors is inside the partial
/// buffer; `TAIL` implies `NV == 1`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_run<S: Simd, const NV: usize, const G: usize, const TAIL: bool>(
    s: S,
    g: &Geo,
    dy: *const f32,
    x: *const f32,
    out: *mut f32,
    (a, b): (usize, usize),
    kw0: usize,
    tail: usize,
) {
    if a >= b {
        return;
    }
    let l = S::LANES;
    let c = g.c;
    let mut acc = [[s.zero(); NV]; G];
    let xstep = g.dw * c;
    // SAFETY (whole body): the caller guarantees the offsets are in bounds.
    unsafe {
        let mut xp = x.add((a * g.sw + kw0 * g.dw - g.left) * c);
        let mut dp = dy.add(a * c);
        for _ in a..b {
            let mut dv = [s.zero(); NV];
            for (v, d) in dv.iter_mut().enumerate() {
                *d = ld::<S, TAIL>(s, dp.add(v * l), tail);
            }
            for (k, acc) in acc.iter_mut().enumerate() {
                let xk = xp.add(k * xstep);
                for v in 0..NV {
                    let xv = ld::<S, TAIL>(s, xk.add(v * l), tail);
                    acc[v] = s.mul_add(dv[v], xv, acc[v]);
                }
            }
            xp = xp.add(g.sw * c);
            dp = dp.add(c);
        }
        for (k, acc) in acc.iter().enumerate() {
            let op = out.add(k * c);
            for (v, a) in acc.iter().enumerate() {
                let p = op.add(v * l);
                st::<S, TAIL>(s, p, s.add(ld::<S, TAIL>(s, p, tail), *a), tail);
            }
        }
    }
}

/// Backward-weight of one channel block over one output row: every valid kernel row,
/// kernel columns in groups of up to 5 (interior pixels in registers, border pixels
/// one tap at a time), and optionally the row's bias-gradient sum.
///
/// # Safety
/// `dy_row` / `x_img` point at channel `c0` of output row `oh` / of the image; `part`
/// at channel `c0` of a `[kh][kw][C]` (+ `[C]` bias) partial buffer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_block<S: Simd, const NV: usize, const TAIL: bool>(
    s: S,
    g: &Geo,
    oh: usize,
    dy_row: *const f32,
    x_img: *const f32,
    part: *mut f32,
    bias_part: *mut f32,
    tail: usize,
) {
    let l = S::LANES;
    let c = g.c;
    // SAFETY (whole body): every pixel below is checked against the image bounds
    // (`in_row`, `ow_range`); channel offsets stay inside the block.
    unsafe {
        for kh in 0..g.kh {
            let Some(ih) = g.in_row(oh, kh) else { continue };
            let x_row = x_img.add(ih * g.w * c);
            let mut kw0 = 0;
            while kw0 < g.kw {
                let gn = (g.kw - kw0).min(5);
                let (a, _) = g.ow_range(kw0);
                let (_, b) = g.ow_range(kw0 + gn - 1);
                let (a, b) = if a < b { (a, b) } else { (g.ow, g.ow) };
                let out = part.add((kh * g.kw + kw0) * c);
                let r = (a, b);
                match gn {
                    5 => wgrad_run::<S, NV, 5, TAIL>(s, g, dy_row, x_row, out, r, kw0, tail),
                    4 => wgrad_run::<S, NV, 4, TAIL>(s, g, dy_row, x_row, out, r, kw0, tail),
                    3 => wgrad_run::<S, NV, 3, TAIL>(s, g, dy_row, x_row, out, r, kw0, tail),
                    2 => wgrad_run::<S, NV, 2, TAIL>(s, g, dy_row, x_row, out, r, kw0, tail),
                    _ => wgrad_run::<S, NV, 1, TAIL>(s, g, dy_row, x_row, out, r, kw0, tail),
                }
                // Border pixels: one tap at a time.
                for ow in (0..a).chain(b..g.ow) {
                    let dp = dy_row.add(ow * c);
                    for kw in kw0..kw0 + gn {
                        let (lo, hi) = g.ow_range(kw);
                        if ow < lo || ow >= hi {
                            continue;
                        }
                        let xp = x_row.add((ow * g.sw + kw * g.dw - g.left) * c);
                        let op = part.add((kh * g.kw + kw) * c);
                        for v in 0..NV {
                            let o = op.add(v * l);
                            let d = ld::<S, TAIL>(s, dp.add(v * l), tail);
                            let xv = ld::<S, TAIL>(s, xp.add(v * l), tail);
                            st::<S, TAIL>(s, o, s.mul_add(d, xv, ld::<S, TAIL>(s, o, tail)), tail);
                        }
                    }
                }
                kw0 += gn;
            }
        }
        if !bias_part.is_null() {
            let mut acc = [s.zero(); NV];
            for ow in 0..g.ow {
                let dp = dy_row.add(ow * c);
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = s.add(*a, ld::<S, TAIL>(s, dp.add(v * l), tail));
                }
            }
            for (v, a) in acc.iter().enumerate() {
                let p = bias_part.add(v * l);
                st::<S, TAIL>(s, p, s.add(ld::<S, TAIL>(s, p, tail), *a), tail);
            }
        }
    }
}

/// The backward-weight partial of the output rows `rows` (global `n·OH + oh`).
struct WgradRows<'a> {
    g: &'a Geo,
    x: &'a [f32],
    dy: &'a [f32],
    /// `[kh][kw][C]`, followed by `[C]` when `with_bias`.
    part: &'a mut [f32],
    with_bias: bool,
    rows: std::ops::Range<usize>,
}

impl SimdKernel for WgradRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let g = self.g;
        let c = g.c;
        let w_len = g.kh * g.kw * c;
        assert!(self.part.len() >= w_len + if self.with_bias { c } else { 0 });
        assert!(self.rows.end <= g.n * g.oh);
        let blocks = channel_blocks(c, S::LANES, nv_max(S::LANES));
        let part = self.part.as_mut_ptr();
        for row in self.rows {
            let n = row / g.oh;
            let oh = row % g.oh;
            let dy_row = self.dy[row * g.ow * c..].as_ptr();
            let x_img = self.x[n * g.h * g.w * c..].as_ptr();
            for b in &blocks {
                // SAFETY: the pointers are at channel c0 < C of in-bounds rows and
                // buffers (lengths checked by the caller and asserted above).
                unsafe {
                    let (dy_row, x_img, p) = (dy_row.add(b.c0), x_img.add(b.c0), part.add(b.c0));
                    let bp = if self.with_bias {
                        part.add(w_len + b.c0)
                    } else {
                        std::ptr::null_mut()
                    };
                    let t = b.tail;
                    match (b.nv, t > 0) {
                        (_, true) => wgrad_block::<S, 1, true>(s, g, oh, dy_row, x_img, p, bp, t),
                        (4, false) => wgrad_block::<S, 4, false>(s, g, oh, dy_row, x_img, p, bp, 0),
                        (2, false) => wgrad_block::<S, 2, false>(s, g, oh, dy_row, x_img, p, bp, 0),
                        _ => wgrad_block::<S, 1, false>(s, g, oh, dy_row, x_img, p, bp, 0),
                    }
                }
            }
        }
    }
}

/// Weight (and bias) gradient, overwritten or accumulated per `mode`.
///
/// `x`: `[N][H][W][C]`, `dy`: `[N][OH][OW][C]`, `dw`: `[kh][kw][C]`, `dbias`: `[C]`.
/// The output rows are split into fixed chunks whatever the thread count, and the
/// per-chunk partial sums are added in chunk order: the result is bitwise identical
/// for any number of threads. Errors: buffers whose lengths do not match `shape`.
pub fn backward_weight(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
) -> Result<()> {
    shape.check_backward_weight(x, dy, dw, dbias.as_deref())?;
    let g = Geo::new(shape);
    let rows = g.n * g.oh;
    // Enough pixels per chunk that the partial buffer (k²·C) is small next to the
    // chunk's data (pixels·C), at most 64 chunks.
    let min_rows = (4 * g.kh * g.kw).div_ceil(g.ow);
    let chunk = chunk_len(rows, min_rows, 64);
    let w_len = dw.len();
    let run = |part: &mut [f32], with_bias: bool, accumulate: bool| {
        reduce_chunks(rows, chunk, part, accumulate, |r, p| {
            dispatch(
                level,
                WgradRows {
                    g: &g,
                    x,
                    dy,
                    part: p,
                    with_bias,
                    rows: r,
                },
            )
        })
    };
    match dbias {
        None => run(dw, false, mode.accumulate()),
        Some(db) => {
            let mut sum = vec![0.0f32; w_len + g.c];
            run(&mut sum, true, false);
            let (sw, sb) = sum.split_at(w_len);
            if mode.accumulate() {
                add_into(dw, sw);
                add_into(db, sb);
            } else {
                dw.copy_from_slice(sw);
                db.copy_from_slice(sb);
            }
        }
    }
    Ok(())
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_blocks_cover_every_channel_once() {
        for lanes in [1, 8, 16] {
            for c in 1..80 {
                let bl = channel_blocks(c, lanes, nv_max(lanes));
                let mut next = 0;
                for b in &bl {
                    assert_eq!(b.c0, next);
                    next += if b.tail > 0 {
                        assert_eq!(b.nv, 1);
                        assert!(b.tail < lanes);
                        b.tail
                    } else {
                        b.nv * lanes
                    };
                }
                assert_eq!(next, c, "lanes {lanes} c {c}");
            }
        }
    }
}
