//! Depthwise convolution (one input channel per group, as many outputs as inputs),
//! vectorized over channels.
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc): `x` is `[N][H][W][C]`, `y` is
//! `[N][OH][OW][C]`, the weight is `[kh][kw][C]` and the bias `[C]`.
//!
//! # How the kernels work
//! Channels are contiguous in NHWC, so every kernel works on blocks of 1–4 SIMD
//! vectors of channels (a channel count that is not a multiple of the lane count ends
//! with a block of one partial vector: masked loads and stores at the edges, full
//! vectors with zero lanes inside).
//!
//! For one channel block, the source rows a task needs are copied once into a small
//! ring of *packed rows*: the block's channels only (contiguous pixels), with zero
//! pixels on both sides wide enough for every tap. Every output pixel of a row then
//! reads its taps at fixed offsets, with no bounds checks and no border special cases;
//! kernel rows that fall outside the image are simply left out of the row's tap list.
//!
//! - **Forward** (parallel over blocks of output rows): a tile of up to 8 output pixels
//!   × the channel block is accumulated in registers over the row's taps.
//! - **Backward-data** is the same gather with the roles swapped (parallel over blocks
//!   of input rows): for each input row, the kernel rows that reach an output row; for
//!   each residue class of input columns modulo the stride, the kernel columns that
//!   reach an output column (one tap set for the whole class). Each `dx` element is
//!   written once: no scatter, no atomics.
//! - **Backward-weight** splits the output rows into fixed chunks (independent of the
//!   thread count). Per chunk and channel block, each (kernel row, group of up to 5
//!   kernel columns) accumulates in registers along an output row; the per-chunk
//!   partial gradients are summed in chunk order ([`reduce_chunks`]), so the result is
//!   bitwise identical for any number of threads. The bias gradient is fused in.
//!
//! Forward and backward-data compute every output element in the same order whatever
//! the split into tasks, so they too are bitwise reproducible across thread counts.

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
    fn in_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.sh + kh * self.dh)
            .checked_sub(self.top)
            .filter(|&ih| ih < self.h)
    }

    /// The output row that reads input row `ih` through kernel row `kh`, if any.
    fn out_row(&self, ih: usize, kh: usize) -> Option<usize> {
        let num = (ih + self.top).checked_sub(kh * self.dh)?;
        (num % self.sh == 0 && num / self.sh < self.oh).then_some(num / self.sh)
    }

    /// Rows of the forward source ring: every row one output row reads.
    fn span_h(&self) -> usize {
        (self.kh - 1) * self.dh + 1
    }
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

/// Widest channel block (in vectors) for a level: 4 on AVX-512 (32 registers), 2 on
/// the 16-register 8-lane levels, 4 for scalar code.
fn nv_max(lanes: usize) -> usize {
    if lanes == 8 { 2 } else { 4 }
}

/// A zeroed `f32` scratch buffer whose usable part starts on a 64-byte boundary.
struct Aligned {
    buf: Vec<f32>,
    off: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let buf = vec![0.0f32; len + 16];
        let off = buf.as_ptr().align_offset(64).min(16);
        Aligned { buf, off }
    }
    fn ptr(&mut self) -> *mut f32 {
        self.buf[self.off..].as_mut_ptr()
    }
}

/// Loads a vector, partially (`n` lanes, the others zero) when `TAIL`.
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

/// Copies `px` pixels of `NV` vectors (stride `c` floats in the source) into a packed
/// row (stride `NV·LANES`); a `TAIL` block's missing lanes become zeros.
///
/// # Safety
/// The source pixels (`tail` lanes when `TAIL`) must be readable, the packed ones
/// writable.
#[inline(always)]
unsafe fn pack_row<S: Simd, const NV: usize, const TAIL: bool>(
    s: S,
    src: *const f32,
    c: usize,
    px: usize,
    dst: *mut f32,
    tail: usize,
) {
    let l = S::LANES;
    let vb = NV * l;
    // SAFETY: forwarded from the caller.
    unsafe {
        for i in 0..px {
            let sp = src.add(i * c);
            let dp = dst.add(i * vb);
            for v in 0..NV {
                s.store_ptr(dp.add(v * l), ld::<S, TAIL>(s, sp.add(v * l), tail));
            }
        }
    }
}

/// How a source row sits in the ring: `pl` zero pixels, the row's `src_w` pixels, zero
/// pixels up to `pw`.
#[derive(Copy, Clone, Debug)]
struct RowPack {
    pl: usize,
    src_w: usize,
    pw: usize,
}

/// A ring of packed source rows for one channel block (`vb` floats per pixel).
struct Ring {
    mem: Aligned,
    /// Which global source row each slot holds (`usize::MAX`: none).
    tags: Vec<usize>,
    /// Floats between slots (sized for the widest block).
    stride: usize,
    rp: RowPack,
}

impl Ring {
    fn new(slots: usize, rp: RowPack, vb_max: usize) -> Ring {
        let stride = rp.pw * vb_max;
        Ring {
            mem: Aligned::zeroed(slots * stride),
            tags: vec![usize::MAX; slots],
            stride,
            rp,
        }
    }

    /// Forgets every row and zeroes the padding pixels for blocks of `vb` floats.
    fn reset(&mut self, vb: usize) {
        let (stride, rp) = (self.stride, self.rp);
        let off = self.mem.off;
        for (i, t) in self.tags.iter_mut().enumerate() {
            *t = usize::MAX;
            let slot = &mut self.mem.buf[off + i * stride..off + (i + 1) * stride];
            slot[..rp.pl * vb].fill(0.0);
            slot[(rp.pl + rp.src_w) * vb..rp.pw * vb].fill(0.0);
        }
    }

    /// The float offset of the slot holding global source row `row`, packing it from
    /// `src` (channel `c0` of the row's first pixel) first if needed.
    ///
    /// # Safety
    /// As [`pack_row`] for `src_w` pixels from `src`.
    #[inline(always)]
    unsafe fn ensure<S: Simd, const NV: usize, const TAIL: bool>(
        &mut self,
        s: S,
        row: usize,
        src: *const f32,
        c: usize,
        tail: usize,
    ) -> usize {
        let slot = row % self.tags.len();
        let base = slot * self.stride;
        if self.tags[slot] != row {
            self.tags[slot] = row;
            let vb = NV * S::LANES;
            // SAFETY: the slot holds `pw ≥ pl + src_w` pixels of `vb` floats.
            unsafe {
                let dst = self.mem.ptr().add(base + self.rp.pl * vb);
                pack_row::<S, NV, TAIL>(s, src, c, self.rp.src_w, dst, tail);
            }
        }
        base
    }
}

/// One tap of a gather: float offsets of the source pixel in the ring (at the first
/// pixel of a run) and of the weight vector in the packed weights.
#[derive(Copy, Clone, Debug)]
struct Tap {
    src: usize,
    w: usize,
}

/// Destination pixels `dst0 + j·dst_step` (`j < count`) of a row read, through kernel
/// column `kw`, packed source pixel `off + j·src_step` for each `(kw, off)` in `kws`.
#[derive(Clone, Debug)]
struct Class {
    dst0: usize,
    count: usize,
    kws: Vec<(usize, usize)>,
}

/// The column structure of a gather: packed row shape, classes, pixel steps.
struct Columns {
    rp: RowPack,
    classes: Vec<Class>,
    src_step: usize,
    dst_step: usize,
}

/// Forward: output column `ow` reads packed pixel `ow·sw + kw·dw` (the row starts
/// after `left` zero pixels).
fn forward_columns(g: &Geo) -> Columns {
    let pw = (g.left + g.w).max((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1);
    Columns {
        rp: RowPack {
            pl: g.left,
            src_w: g.w,
            pw,
        },
        classes: vec![Class {
            dst0: 0,
            count: g.ow,
            kws: (0..g.kw).map(|kw| (kw, kw * g.dw)).collect(),
        }],
        src_step: g.sw,
        dst_step: 1,
    }
}

/// Backward-data: input column `iw = r + j·sw` (residue class `r`) receives, through
/// kernel column `kw`, output column `o0 + j` where `r + left − kw·dw = o0·sw`.
fn backward_data_columns(g: &Geo) -> Columns {
    let mut raw = Vec::new();
    let mut pl = 0isize;
    let mut end = g.ow as isize;
    for r in 0..g.sw.min(g.w) {
        let count = (g.w - r).div_ceil(g.sw);
        let mut kws = Vec::new();
        for kw in 0..g.kw {
            let num = (r + g.left) as isize - (kw * g.dw) as isize;
            if num.rem_euclid(g.sw as isize) == 0 {
                let o0 = num.div_euclid(g.sw as isize);
                pl = pl.max(-o0);
                end = end.max(o0 + count as isize);
                kws.push((kw, o0));
            }
        }
        raw.push((r, count, kws));
    }
    let classes = raw
        .into_iter()
        .map(|(r, count, kws)| Class {
            dst0: r,
            count,
            kws: kws
                .into_iter()
                .map(|(kw, o0)| (kw, (o0 + pl) as usize))
                .collect(),
        })
        .collect();
    Columns {
        rp: RowPack {
            pl: pl as usize,
            src_w: g.ow,
            pw: (pl + end) as usize,
        },
        classes,
        src_step: 1,
        dst_step: g.sw,
    }
}

/// Raw pointers and strides of one gather for one channel block.
#[derive(Copy, Clone)]
struct Gather {
    /// The ring.
    src: *const f32,
    /// Channel `c0` of the first destination row of the task.
    dst: *mut f32,
    /// Packed weights `[kh·kw][vb]`.
    w: *const f32,
    /// Packed bias `[vb]` (forward only) or null.
    bias: *const f32,
    /// Floats between consecutive pixels of a run, in the ring and the destination.
    src_step: usize,
    dst_step: usize,
    /// Lanes of the partial vector (TAIL blocks only).
    tail: usize,
}

/// `P` destination pixels × `NV` vectors: `dst[p] = bias + Σ_taps src[tap + p·step] ·
/// w[tap]`.
///
/// # Safety
/// Every tap offset plus `src_off + (P−1)·src_step` and `NV` vectors must be inside the
/// ring, `dst_off + (P−1)·dst_step` plus `NV` vectors (`tail` lanes when `TAIL`) inside
/// the destination.
#[inline(always)]
unsafe fn gather_tile<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    src_off: usize,
    dst_off: usize,
    taps: &[Tap],
) {
    let l = S::LANES;
    let mut acc = [[s.zero(); NV]; P];
    // SAFETY (whole body): the caller guarantees every offset below is in bounds.
    unsafe {
        if !g.bias.is_null() {
            for v in 0..NV {
                let b = s.load_ptr(g.bias.add(v * l));
                for a in acc.iter_mut() {
                    a[v] = b;
                }
            }
        }
        let src = g.src.add(src_off);
        for t in taps {
            let sp = src.add(t.src);
            let wp = g.w.add(t.w);
            let mut wv = [s.zero(); NV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = s.load_ptr(wp.add(v * l));
            }
            for (p, a) in acc.iter_mut().enumerate() {
                let xp = sp.add(p * g.src_step);
                for v in 0..NV {
                    a[v] = s.mul_add(s.load_ptr(xp.add(v * l)), wv[v], a[v]);
                }
            }
        }
        let dst = g.dst.add(dst_off);
        for (p, a) in acc.iter().enumerate() {
            let dp = dst.add(p * g.dst_step);
            for (v, a) in a.iter().enumerate() {
                st::<S, TAIL>(s, dp.add(v * l), *a, g.tail);
            }
        }
    }
}

/// `count` destination pixels from `dst_off`, `P` at a time, then 4, 2, 1.
///
/// # Safety
/// As [`gather_tile`] for pixels `0..count`.
#[inline(always)]
unsafe fn gather_run<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    taps: &[Tap],
    count: usize,
    dst_off: usize,
) {
    let mut j = 0;
    // SAFETY: every tile covers pixels inside `0..count`.
    unsafe {
        while j + P <= count {
            gather_tile::<S, NV, P, TAIL>(s, g, j * g.src_step, dst_off + j * g.dst_step, taps);
            j += P;
        }
        if P > 4 && j + 4 <= count {
            gather_tile::<S, NV, 4, TAIL>(s, g, j * g.src_step, dst_off + j * g.dst_step, taps);
            j += 4;
        }
        if P > 2 && j + 2 <= count {
            gather_tile::<S, NV, 2, TAIL>(s, g, j * g.src_step, dst_off + j * g.dst_step, taps);
            j += 2;
        }
        if j < count {
            gather_tile::<S, NV, 1, TAIL>(s, g, j * g.src_step, dst_off + j * g.dst_step, taps);
        }
    }
}

/// Which gather a [`GatherRows`] task runs.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Pass {
    Forward,
    BackwardData,
}

/// Destination rows `row0..` (global `n·rows_per_image + r` indices, as many as `dst`
/// holds) of a forward or backward-data gather.
struct GatherRows<'a> {
    g: &'a Geo,
    pass: Pass,
    cols: &'a Columns,
    src: &'a [f32],
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    dst: &'a mut [f32],
    row0: usize,
}

/// Per-task scratch of a gather.
struct GatherScratch {
    ring: Ring,
    w: Aligned,
    bias: Aligned,
    taps: Vec<Tap>,
    rows: Vec<(usize, usize)>,
}

impl GatherRows<'_> {
    /// Geometry: (source rows per image, source row length, destination rows per
    /// image, destination row length), lengths in floats.
    fn dims(&self) -> (usize, usize, usize, usize) {
        let g = self.g;
        match self.pass {
            Pass::Forward => (g.h, g.w * g.c, g.oh, g.ow * g.c),
            Pass::BackwardData => (g.oh, g.ow * g.c, g.h, g.w * g.c),
        }
    }

    /// Every destination row of the task for one channel block.
    ///
    /// # Safety
    /// `b` must be a block of `channel_blocks(C, LANES, …)` with `b.nv == NV` and
    /// `TAIL == (b.tail > 0)`; the scratch must be sized for the task.
    #[inline(always)]
    unsafe fn block<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
        &mut self,
        s: S,
        b: Block,
        sc: &mut GatherScratch,
    ) {
        let g = self.g;
        let (l, c, c0, tail) = (S::LANES, g.c, b.c0, b.tail);
        let vb = NV * l;
        let (src_rows, src_len, dst_rows, dst_len) = self.dims();
        let nrows = self.dst.len() / dst_len;
        let taps_n = g.kh * g.kw;
        assert!(self.w.len() == taps_n * c && c0 + if TAIL { tail } else { vb } <= c);
        assert!(self.src.len() == g.n * src_rows * src_len);
        // SAFETY (whole body): the asserts above and the shapes of `Columns` (every
        // packed offset of every class is inside the ring row, every destination pixel
        // inside the row) keep all accesses in bounds.
        unsafe {
            let wp = sc.w.ptr();
            for t in 0..taps_n {
                let src = self.w.as_ptr().add(t * c + c0);
                for v in 0..NV {
                    s.store_ptr(
                        wp.add(t * vb + v * l),
                        ld::<S, TAIL>(s, src.add(v * l), tail),
                    );
                }
            }
            let bp = match self.bias {
                Some(bias) => {
                    let bp = sc.bias.ptr();
                    for v in 0..NV {
                        let src = bias.as_ptr().add(c0 + v * l);
                        s.store_ptr(bp.add(v * l), ld::<S, TAIL>(s, src, tail));
                    }
                    bp as *const f32
                }
                None => std::ptr::null(),
            };
            sc.ring.reset(vb);
            let dst = self.dst.as_mut_ptr().add(c0);
            let src = self.src.as_ptr().add(c0);
            for r in 0..nrows {
                let global = self.row0 + r;
                let (n, row) = (global / dst_rows, global % dst_rows);
                sc.rows.clear();
                for kh in 0..g.kh {
                    let srow = match self.pass {
                        Pass::Forward => g.in_row(row, kh),
                        Pass::BackwardData => g.out_row(row, kh),
                    };
                    if let Some(sr) = srow {
                        let gr = n * src_rows + sr;
                        let sp = src.add(gr * src_len);
                        let base = sc.ring.ensure::<S, NV, TAIL>(s, gr, sp, c, tail);
                        sc.rows.push((kh, base));
                    }
                }
                let gt = Gather {
                    src: sc.ring.mem.ptr(),
                    dst: dst.add(r * dst_len),
                    w: wp,
                    bias: bp,
                    src_step: self.cols.src_step * vb,
                    dst_step: self.cols.dst_step * c,
                    tail,
                };
                for cl in &self.cols.classes {
                    sc.taps.clear();
                    for &(kh, base) in &sc.rows {
                        for &(kw, off) in &cl.kws {
                            sc.taps.push(Tap {
                                src: base + off * vb,
                                w: (kh * g.kw + kw) * vb,
                            });
                        }
                    }
                    gather_run::<S, NV, P, TAIL>(s, &gt, &sc.taps, cl.count, cl.dst0 * c);
                }
            }
        }
    }
}

impl SimdKernel for GatherRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(mut self, s: S) {
        let g = self.g;
        let nvm = nv_max(S::LANES);
        let vb_max = nvm * S::LANES;
        let mut sc = GatherScratch {
            ring: Ring::new(g.span_h(), self.cols.rp, vb_max),
            w: Aligned::zeroed(g.kh * g.kw * vb_max),
            bias: Aligned::zeroed(vb_max),
            taps: Vec::with_capacity(g.kh * g.kw),
            rows: Vec::with_capacity(g.kh),
        };
        let wide = S::LANES >= 16;
        for b in channel_blocks(g.c, S::LANES, nvm) {
            // SAFETY: the block comes from `channel_blocks` and matches the variant.
            unsafe {
                match (b.nv, b.tail > 0, wide) {
                    (_, true, _) => self.block::<S, 1, 8, true>(s, b, &mut sc),
                    (4, false, true) => self.block::<S, 4, 4, false>(s, b, &mut sc),
                    (4, false, false) => self.block::<S, 4, 2, false>(s, b, &mut sc),
                    (2, false, true) => self.block::<S, 2, 8, false>(s, b, &mut sc),
                    (2, false, false) => self.block::<S, 2, 4, false>(s, b, &mut sc),
                    _ => self.block::<S, 1, 8, false>(s, b, &mut sc),
                }
            }
        }
    }
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
    let (cols, rows, row_len) = match pass {
        Pass::Forward => (forward_columns(g), g.n * g.oh, g.ow * g.c),
        Pass::BackwardData => (backward_data_columns(g), g.n * g.h, g.w * g.c),
    };
    // About 64 tasks of at least ~16K elements and 4 rows (the source rows above and
    // below a task are packed by both neighbours).
    let per_task = chunk_len(rows, 16384usize.div_ceil(row_len).max(4), 64);
    dst.par_chunks_mut(per_task * row_len)
        .enumerate()
        .for_each(|(i, dst)| {
            dispatch(
                level,
                GatherRows {
                    g,
                    pass,
                    cols: &cols,
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

/// `out[k] += Σ_{ow < count} dy[ow] · x[ow·src_step + k·tap_step]` for `G` consecutive
/// kernel columns (`x` already at the group's first column), `NV` vectors each.
///
/// # Safety
/// Every named offset (plus `NV` vectors) must be inside the packed buffers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_run<S: Simd, const NV: usize, const G: usize>(
    s: S,
    dy: *const f32,
    x: *const f32,
    out: *mut f32,
    count: usize,
    src_step: usize,
    tap_step: usize,
    out_step: usize,
) {
    let l = S::LANES;
    let vb = NV * l;
    let mut acc = [[s.zero(); NV]; G];
    // SAFETY (whole body): the caller guarantees the offsets are in bounds.
    unsafe {
        for ow in 0..count {
            let dp = dy.add(ow * vb);
            let mut dv = [s.zero(); NV];
            for (v, d) in dv.iter_mut().enumerate() {
                *d = s.load_ptr(dp.add(v * l));
            }
            let xp = x.add(ow * src_step);
            for (k, acc) in acc.iter_mut().enumerate() {
                let xk = xp.add(k * tap_step);
                for v in 0..NV {
                    acc[v] = s.mul_add(dv[v], s.load_ptr(xk.add(v * l)), acc[v]);
                }
            }
        }
        for (k, acc) in acc.iter().enumerate() {
            let op = out.add(k * out_step);
            for (v, a) in acc.iter().enumerate() {
                let p = op.add(v * l);
                s.store_ptr(p, s.add(s.load_ptr(p), *a));
            }
        }
    }
}

/// The backward-weight partial of the output rows `rows` (global `n·OH + oh`).
struct WgradRows<'a> {
    g: &'a Geo,
    rp: RowPack,
    x: &'a [f32],
    dy: &'a [f32],
    /// `[kh][kw][C]`, followed by `[C]` when `with_bias`.
    part: &'a mut [f32],
    with_bias: bool,
    rows: std::ops::Range<usize>,
}

/// Per-task scratch of the weight gradient.
struct WgradScratch {
    ring: Ring,
    dy: Aligned,
    /// `[kh·kw + 1][vb]`: the block's weight (and bias) gradient.
    acc: Aligned,
}

impl WgradRows<'_> {
    /// The chunk's partial for one channel block.
    ///
    /// # Safety
    /// As [`GatherRows::block`].
    #[inline(always)]
    unsafe fn block<S: Simd, const NV: usize, const TAIL: bool>(
        &mut self,
        s: S,
        b: Block,
        sc: &mut WgradScratch,
    ) {
        let g = self.g;
        let (l, c, c0, tail) = (S::LANES, g.c, b.c0, b.tail);
        let vb = NV * l;
        let taps_n = g.kh * g.kw;
        assert!(c0 + if TAIL { tail } else { vb } <= c);
        assert!(self.part.len() >= taps_n * c + if self.with_bias { c } else { 0 });
        assert!(self.x.len() == g.n * g.h * g.w * c && self.dy.len() == g.n * g.oh * g.ow * c);
        assert!(self.rows.end <= g.n * g.oh);
        // SAFETY (whole body): the asserts above, `RowPack` (every packed tap of every
        // output column is inside a ring row) and the scratch sizes keep all accesses
        // in bounds.
        unsafe {
            let acc = sc.acc.ptr();
            std::ptr::write_bytes(acc, 0, (taps_n + 1) * vb);
            let dyp = sc.dy.ptr();
            sc.ring.reset(vb);
            let x = self.x.as_ptr().add(c0);
            for row in self.rows.clone() {
                let (n, oh) = (row / g.oh, row % g.oh);
                let dy_row = self.dy.as_ptr().add(row * g.ow * c + c0);
                pack_row::<S, NV, TAIL>(s, dy_row, c, g.ow, dyp, tail);
                for kh in 0..g.kh {
                    let Some(ih) = g.in_row(oh, kh) else { continue };
                    let gr = n * g.h + ih;
                    let xs = x.add(gr * g.w * c);
                    let base = sc.ring.ensure::<S, NV, TAIL>(s, gr, xs, c, tail);
                    let xr = sc.ring.mem.ptr().add(base);
                    let mut kw0 = 0;
                    while kw0 < g.kw {
                        let gn = (g.kw - kw0).min(5);
                        let xk = xr.add(kw0 * g.dw * vb);
                        let out = acc.add((kh * g.kw + kw0) * vb);
                        let (cnt, ss, ts) = (g.ow, g.sw * vb, g.dw * vb);
                        match gn {
                            5 => wgrad_run::<S, NV, 5>(s, dyp, xk, out, cnt, ss, ts, vb),
                            4 => wgrad_run::<S, NV, 4>(s, dyp, xk, out, cnt, ss, ts, vb),
                            3 => wgrad_run::<S, NV, 3>(s, dyp, xk, out, cnt, ss, ts, vb),
                            2 => wgrad_run::<S, NV, 2>(s, dyp, xk, out, cnt, ss, ts, vb),
                            _ => wgrad_run::<S, NV, 1>(s, dyp, xk, out, cnt, ss, ts, vb),
                        }
                        kw0 += gn;
                    }
                }
                if self.with_bias {
                    let mut bsum = [s.zero(); NV];
                    for ow in 0..g.ow {
                        for (v, a) in bsum.iter_mut().enumerate() {
                            *a = s.add(*a, s.load_ptr(dyp.add(ow * vb + v * l)));
                        }
                    }
                    let bp = acc.add(taps_n * vb);
                    for (v, a) in bsum.iter().enumerate() {
                        let p = bp.add(v * l);
                        s.store_ptr(p, s.add(s.load_ptr(p), *a));
                    }
                }
            }
            let part = self.part.as_mut_ptr().add(c0);
            let outs = taps_n + usize::from(self.with_bias);
            for t in 0..outs {
                for v in 0..NV {
                    let val = s.load_ptr(acc.add(t * vb + v * l));
                    st::<S, TAIL>(s, part.add(t * c + v * l), val, tail);
                }
            }
        }
    }
}

impl SimdKernel for WgradRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(mut self, s: S) {
        let g = self.g;
        let nvm = nv_max(S::LANES);
        let vb_max = nvm * S::LANES;
        let mut sc = WgradScratch {
            ring: Ring::new(g.span_h(), self.rp, vb_max),
            dy: Aligned::zeroed(g.ow * vb_max),
            acc: Aligned::zeroed((g.kh * g.kw + 1) * vb_max),
        };
        for b in channel_blocks(g.c, S::LANES, nvm) {
            // SAFETY: the block comes from `channel_blocks` and matches the variant.
            unsafe {
                match (b.nv, b.tail > 0) {
                    (_, true) => self.block::<S, 1, true>(s, b, &mut sc),
                    (4, false) => self.block::<S, 4, false>(s, b, &mut sc),
                    (2, false) => self.block::<S, 2, false>(s, b, &mut sc),
                    _ => self.block::<S, 1, false>(s, b, &mut sc),
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
    let rp = forward_columns(&g).rp;
    let rows = g.n * g.oh;
    // Enough pixels per chunk that the partial buffer (k²·C) is small next to the
    // chunk's data (pixels·C), and at least 4 rows; at most 64 chunks.
    let min_rows = (4 * g.kh * g.kw).div_ceil(g.ow).max(4);
    let chunk = chunk_len(rows, min_rows, 64);
    let w_len = dw.len();
    let run = |part: &mut [f32], with_bias: bool, accumulate: bool| {
        reduce_chunks(rows, chunk, part, accumulate, |r, p| {
            dispatch(
                level,
                WgradRows {
                    g: &g,
                    rp,
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
