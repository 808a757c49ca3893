//! Depthwise convolution (one input channel per group, as many outputs as inputs),
//! vectorized over channels.
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc): `x` is `[N][H][W][C]`, `y` is
//! `[N][OH][OW][C]`, the weight is `[kh][kw][C]` and the bias `[C]`.
//!
//! # How the kernels work
//! Channels are contiguous in NHWC, so every kernel works on blocks of 1–4 SIMD
//! vectors of channels (a channel count that is not a multiple of the lane count ends
//! with a block of one partial vector: masked loads and stores at the edges of memory,
//! full vectors with zero lanes inside the scratch buffers).
//!
//! Borders without bounds checks: for one channel block, the source rows a task needs
//! are copied into a small ring of *packed rows* (the block's channels only, contiguous
//! pixels) with zero pixels on both sides wide enough for every tap. Each destination
//! row splits into an *interior* run, whose taps are all real pixels and which reads
//! the tensor in place, and border runs, which read the ring (only the edge pixels are
//! copied). On narrow images (width ≤ 32) and 5×5 stride-1 kernels whole rows are
//! packed instead and every pixel reads the ring: contiguous loads pay off there (see
//! `prefer_packed`). Kernel rows that fall outside the image are left out of a row's
//! tap list. The gathers walk their rows one at a time, all channel blocks per row
//! (one ring per block, weights packed once per task), so a source row is read from
//! memory once for all blocks.
//!
//! - **Forward** (parallel over blocks of output rows): a tile of up to 8 output pixels
//!   × the channel block is accumulated in registers over the row's taps. On packed
//!   stride-1 rows with 3 or 5 kernel columns, *sliding-window* tiles keep one kernel
//!   row's weights in registers and load each input vector once for all the taps that
//!   read it.
//! - **Backward-data** is the same gather with the roles swapped (parallel over blocks
//!   of input rows): for each input row, the kernel rows that reach an output row; for
//!   each residue class of input columns modulo the stride, the kernel columns that
//!   reach an output column (one tap set for the whole class, so a class is again an
//!   interior run plus border runs). Each `dx` element is written once: no scatter, no
//!   atomics.
//! - **Backward-weight** splits the output rows into fixed chunks (independent of the
//!   thread count). Per chunk and channel block, each (kernel row, group of up to 5
//!   kernel columns) accumulates in registers along 32-pixel slices of an output row,
//!   all kernel rows per slice; the per-chunk partial gradients are summed in chunk
//!   order ([`reduce_chunks_in`]), so the result is bitwise identical for any number
//!   of threads. The bias gradient is fused in (compensated summation across rows).
//!
//! Forward and backward-data compute every output element in the same order whatever
//! the split into tasks (the split only decides which thread computes it), so they too
//! are bitwise reproducible across thread counts.
//!
//! Memory: the rings, the packed weights and bias and the weight-gradient
//! accumulators of a task live in its worker's slot of the caller's workspace
//! ([`workspace_len`], `*_with_workspace`), the per-chunk weight-gradient partials
//! and the bias sum in per-call regions of it; the plain passes allocate exactly that
//! workspace. Row plans (tap lists, `O(kh·kw)`) and ring tags are small allocations.

use super::{ConvPass, ConvShape, GradMode};
use crate::error::Result;
use crate::kernels::parallel::{chunk_len, partials_len, reduce_chunks_in};
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::{Simd, SimdKernel, SimdLevel, dispatch, dispatch_lanes};
use rayon::prelude::*;
use std::ops::Range;

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

/// Floats of one gather task's scratch at `l` lanes: one ring of packed source rows
/// per channel block (`C_pad` floats per pixel in all), the packed weights
/// `[kh·kw][C_pad]` and the packed bias `[C_pad]`.
fn gather_scratch(g: &Geo, cols: &Columns, l: usize) -> usize {
    let c_pad = g.c.div_ceil(l) * l;
    let slots = if cols.has_border() { g.span_h() } else { 0 };
    slots * cols.rp.pw * c_pad + g.kh * g.kw * c_pad + c_pad
}

/// Floats of one weight-gradient task's scratch at `l` lanes: a ring for the widest
/// channel block, the accumulators `[kh·kw + 2][C_pad]` and a packed `dy` row.
fn wgrad_scratch(g: &Geo, cols: &Columns, l: usize) -> usize {
    let vbm = vb_max(g.c, l);
    let slots = if cols.has_border() { g.span_h() } else { 0 };
    Ring::len(slots, cols.rp, vbm) + (g.kh * g.kw + 2) * g.c.div_ceil(l) * l + g.ow * vbm
}

/// Rows (of `per_row` floats of traffic each) that fit a task's working set in about
/// half of a core's L2 cache (2 MiB on the reference machines): each channel block
/// passes over the same rows, so the later passes hit the cache instead of memory. (A
/// tile also re-packs the kernel's halo rows: 256 KiB measured slower than 1 MiB.)
fn cache_rows(per_row: usize) -> usize {
    const BUDGET: usize = 1024 * 1024 / std::mem::size_of::<f32>();
    (BUDGET / per_row.max(1)).max(1)
}

/// Floats per packed pixel of the widest block of `c` channels.
fn vb_max(c: usize, lanes: usize) -> usize {
    (nv_max(lanes) * lanes).min(c.div_ceil(lanes) * lanes)
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
/// pixels up to `pw`. Only the edge pixels `[0, el)` and `[er, src_w)` are copied (the
/// border runs read nothing else); the interior runs read the tensor in place.
#[derive(Copy, Clone, Debug)]
struct RowPack {
    pl: usize,
    src_w: usize,
    pw: usize,
    el: usize,
    er: usize,
}

/// A ring of packed source rows for one channel block (`vb` floats per pixel).
struct Ring<'a> {
    mem: &'a mut [f32],
    /// Which global source row each slot holds (`usize::MAX`: none).
    tags: Vec<usize>,
    /// Floats between slots.
    stride: usize,
    rp: RowPack,
}

impl<'a> Ring<'a> {
    /// Floats a ring of `slots` rows of `vb`-float pixels takes.
    fn len(slots: usize, rp: RowPack, vb: usize) -> usize {
        slots * rp.pw * vb
    }

    /// A ring in `mem` (at least [`Ring::len`] floats; any contents) for pixels of up
    /// to `vb` floats.
    fn new(mem: &'a mut [f32], slots: usize, rp: RowPack, vb: usize) -> Ring<'a> {
        Ring {
            mem,
            tags: vec![usize::MAX; slots],
            stride: rp.pw * vb,
            rp,
        }
    }

    /// Forgets every row and zeroes the padding pixels for blocks of `vb` floats.
    fn reset(&mut self, vb: usize) {
        let (stride, rp) = (self.stride, self.rp);
        for (i, t) in self.tags.iter_mut().enumerate() {
            *t = usize::MAX;
            let slot = &mut self.mem[i * stride..(i + 1) * stride];
            slot[..rp.pl * vb].fill(0.0);
            slot[(rp.pl + rp.src_w) * vb..rp.pw * vb].fill(0.0);
        }
    }

    /// The float offset of the slot holding global source row `row`, packing its edge
    /// pixels from `src` (channel `c0` of the row's first pixel) first if needed.
    ///
    /// # Safety
    /// As [`pack_row`] for the row's `src_w` pixels from `src`.
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
            let rp = self.rp;
            // SAFETY: the slot holds `pw ≥ pl + src_w` pixels of `vb` floats, and the
            // copied pixels lie inside the source row.
            unsafe {
                let dst = self.mem.as_mut_ptr().add(base + rp.pl * vb);
                if rp.el >= rp.er {
                    pack_row::<S, NV, TAIL>(s, src, c, rp.src_w, dst, tail);
                } else {
                    pack_row::<S, NV, TAIL>(s, src, c, rp.el, dst, tail);
                    let (sr, dr) = (src.add(rp.er * c), dst.add(rp.er * vb));
                    pack_row::<S, NV, TAIL>(s, sr, c, rp.src_w - rp.er, dr, tail);
                }
            }
        }
        base
    }
}

/// One tap of a gather: the source pixel at the first pixel of a run (channel 0; in
/// floats for the tensor, in packed pixels for a ring: see [`Gather::src_unit`]) and
/// the tap's index `kh·kw_count + kw` in the packed weights.
#[derive(Copy, Clone, Debug)]
struct Tap {
    src: usize,
    w: usize,
}

/// Destination pixels `dst0 + j·dst_step` (`j < count`) of a row read, through kernel
/// column `kw`, packed source pixel `off + j·src_step` for each `(kw, off)` in `kws`.
/// For `j` in `ja..jb` every tap is a real pixel (the *interior*, read in place).
#[derive(Clone, Debug)]
struct Class {
    dst0: usize,
    count: usize,
    kws: Vec<(usize, usize)>,
    ja: usize,
    jb: usize,
    /// When the taps sit at consecutive packed pixels (stride 1, dilation 1):
    /// `(first offset, kernel column of the first offset, +1 or −1 kernel columns per
    /// pixel)`, for the sliding-window tiles.
    slide: Option<(usize, usize, isize)>,
}

/// The column structure of a gather: packed row shape, classes, pixel steps.
struct Columns {
    rp: RowPack,
    /// Whole rows are packed (see [`prefer_packed`]).
    packed: bool,
    classes: Vec<Class>,
    src_step: usize,
    dst_step: usize,
}

impl Columns {
    /// Fills in the interior of every class and the edges the border runs read.
    fn new(
        g: &Geo,
        (pl, src_w, pw): (usize, usize, usize),
        mut classes: Vec<Class>,
        src_step: usize,
        dst_step: usize,
    ) -> Columns {
        let packed = prefer_packed(g);
        let (mut el, mut er) = (0, src_w);
        for cl in &mut classes {
            let (mut ja, mut jb) = (0, cl.count);
            for &(_, off) in &cl.kws {
                // Real pixel off + j·step − pl in [0, src_w).
                let lo = pl.saturating_sub(off).div_ceil(src_step);
                let hi = if pl + src_w > off {
                    (pl + src_w - 1 - off) / src_step + 1
                } else {
                    0
                };
                ja = ja.max(lo);
                jb = jb.min(hi);
            }
            if ja >= jb || packed {
                (ja, jb) = (cl.count, cl.count);
            }
            (cl.ja, cl.jb) = (ja, jb);
            cl.slide = slide_taps(&cl.kws);
            if let (true, Some(max_off)) = (ja > 0, cl.kws.iter().map(|k| k.1).max()) {
                el = el.max(
                    (max_off + (ja - 1) * src_step + 1)
                        .saturating_sub(pl)
                        .min(src_w),
                );
            }
            if let (true, Some(min_off)) = (jb < cl.count, cl.kws.iter().map(|k| k.1).min()) {
                er = er.min((min_off + jb * src_step).saturating_sub(pl).min(src_w));
            }
        }
        Columns {
            rp: RowPack {
                pl,
                src_w,
                pw,
                el,
                er,
            },
            packed,
            classes,
            src_step,
            dst_step,
        }
    }

    /// Whether any border run reads the ring.
    fn has_border(&self) -> bool {
        self.classes.iter().any(|c| c.ja > 0 || c.jb < c.count)
    }
}

/// Whether to pack whole source rows (every pixel read from the ring) rather than only
/// their edges. Packed rows make the tiles' loads contiguous, which pays on small
/// images (cache-resident, compute-bound, many border pixels) and wide kernels; on
/// large images, which stream from memory, the copy costs more than it saves.
fn prefer_packed(g: &Geo) -> bool {
    g.w <= 32 || (g.kh * g.kw >= 25 && g.sw == 1)
}

/// `(first offset, its kernel column, kernel columns per pixel)` when the taps' packed
/// offsets are consecutive pixels and their kernel columns an arithmetic sequence
/// along them (stride-1 forward, any backward-data residue class, dilation 1).
fn slide_taps(kws: &[(usize, usize)]) -> Option<(usize, usize, isize)> {
    let &(kw0, off0) = kws.iter().min_by_key(|k| k.1)?;
    let step = match kws.iter().find(|k| k.1 == off0 + 1) {
        Some(&(kw1, _)) => kw1 as isize - kw0 as isize,
        None => 0,
    };
    let mut seen = vec![false; kws.len()];
    for &(kw, off) in kws {
        let k = off - off0;
        if k >= kws.len() || seen[k] || kw as isize != kw0 as isize + k as isize * step {
            return None;
        }
        seen[k] = true;
    }
    Some((off0, kw0, step))
}

/// Forward: output column `ow` reads packed pixel `ow·sw + kw·dw` (the row starts
/// after `left` zero pixels).
fn forward_columns(g: &Geo) -> Columns {
    let pw = (g.left + g.w).max((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1);
    let class = Class {
        dst0: 0,
        count: g.ow,
        kws: (0..g.kw).map(|kw| (kw, kw * g.dw)).collect(),
        ja: 0,
        jb: 0,
        slide: None,
    };
    Columns::new(g, (g.left, g.w, pw), vec![class], g.sw, 1)
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
            ja: 0,
            jb: 0,
            slide: None,
        })
        .collect();
    Columns::new(
        g,
        (pl as usize, g.ow, (pl + end) as usize),
        classes,
        1,
        g.sw,
    )
}

/// Raw pointers and strides of one gather run for one channel block.
#[derive(Copy, Clone)]
struct Gather {
    /// The source: the block's ring, or the tensor itself at channel `c0`.
    src: *const f32,
    /// Floats per unit of [`Tap::src`]: 1 for the tensor, `vb` for a ring.
    src_unit: usize,
    /// Channel `c0` of the destination row.
    dst: *mut f32,
    /// The block's packed weights `[kh·kw][vb]`.
    w: *const f32,
    /// The block's packed bias `[vb]` (forward only) or null.
    bias: *const f32,
    /// Floats between consecutive pixels of a run, in the source and destination.
    src_step: usize,
    dst_step: usize,
    /// Lanes of the partial vector (TAIL blocks only).
    tail: usize,
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
        acc_store::<S, NV, P, TAIL>(s, g, dst_off, &acc);
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
/// lanes when `TAIL`).
///
/// # Safety
/// Those vectors must be writable.
#[inline(always)]
unsafe fn acc_store<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    dst_off: usize,
    acc: &[[S::V; NV]; P],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let dst = g.dst.add(dst_off);
        for (p, a) in acc.iter().enumerate() {
            let dp = dst.add(p * g.dst_step);
            for (v, a) in a.iter().enumerate() {
                st::<S, TAIL>(s, dp.add(v * S::LANES), *a, g.tail);
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
unsafe fn gather_run<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
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
struct SlideRow {
    src: usize,
    w: usize,
    w_step: isize,
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
        acc_store::<S, NVT, P, TAIL>(s, g, dst_off + v0 * l, &acc);
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
unsafe fn slide_run<
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
    /// The task's scratch ([`gather_scratch`] floats, any contents).
    mem: &'a mut [f32],
}

/// The taps of one destination row, the same for every channel block.
struct RowPlan {
    /// `(kh, global source row, first packed pixel of its ring slot)`.
    rows: Vec<(usize, usize, usize)>,
    taps: Vec<Tap>,
    slide: Vec<SlideRow>,
    /// Per class: its in-place taps, ring taps, in-place and ring sliding-window rows
    /// (ranges into `taps`, `taps`, `slide`, `slide`).
    ranges: Vec<[Range<usize>; 4]>,
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

    /// Fills `plan` for destination row `row` of image `n` (`slots` ring slots).
    fn plan_row(&self, n: usize, row: usize, slots: usize, plan: &mut RowPlan) {
        let (g, cols) = (self.g, self.cols);
        let (src_rows, src_len, _, _) = self.dims();
        let pl = cols.rp.pl;
        plan.rows.clear();
        plan.taps.clear();
        plan.slide.clear();
        plan.ranges.clear();
        for kh in 0..g.kh {
            let srow = match self.pass {
                Pass::Forward => g.in_row(row, kh),
                Pass::BackwardData => g.out_row(row, kh),
            };
            if let Some(sr) = srow {
                let gr = n * src_rows + sr;
                let slot_px = if slots > 0 {
                    gr % slots * cols.rp.pw
                } else {
                    0
                };
                plan.rows.push((kh, gr, slot_px));
            }
        }
        for cl in &cols.classes {
            let t0 = plan.taps.len();
            if cl.ja < cl.jb {
                for &(kh, gr, _) in &plan.rows {
                    for &(kw, off) in &cl.kws {
                        let px = off + cl.ja * cols.src_step - pl;
                        plan.taps.push(Tap {
                            src: gr * src_len + px * g.c,
                            w: kh * g.kw + kw,
                        });
                    }
                }
            }
            let t1 = plan.taps.len();
            if cl.ja > 0 || cl.jb < cl.count {
                for &(kh, _, slot_px) in &plan.rows {
                    for &(kw, off) in &cl.kws {
                        plan.taps.push(Tap {
                            src: slot_px + off,
                            w: kh * g.kw + kw,
                        });
                    }
                }
            }
            let t2 = plan.taps.len();
            let s0 = plan.slide.len();
            // Sliding-window rows at stride 1 with 3 or 5 taps per kernel row (stride 2
            // and other tap counts measured no faster than the tap lists).
            let slide = cl
                .slide
                .filter(|_| cols.src_step == 1 && matches!(cl.kws.len(), 3 | 5));
            if let (Some((off0, kw0, step)), true) = (slide, cl.ja < cl.jb) {
                for &(kh, gr, _) in &plan.rows {
                    let px = off0 + cl.ja * cols.src_step - pl;
                    plan.slide.push(SlideRow {
                        src: gr * src_len + px * g.c,
                        w: kh * g.kw + kw0,
                        w_step: step,
                    });
                }
            }
            let s1 = plan.slide.len();
            if let (Some((off0, kw0, step)), true) = (slide, cols.packed) {
                for &(kh, _, slot_px) in &plan.rows {
                    plan.slide.push(SlideRow {
                        src: slot_px + off0,
                        w: kh * g.kw + kw0,
                        w_step: step,
                    });
                }
            }
            plan.ranges
                .push([t0..t1, t1..t2, s0..s1, s1..plan.slide.len()]);
        }
    }

    /// Copies one channel block of the weights (and bias) into the packed buffers
    /// (`[kh·kw][vb]` from `kh·kw·c0`, `[vb]` from `c0`), zero lanes past `C`.
    ///
    /// # Safety
    /// `b` must be a block of `channel_blocks(C, LANES, …)` with `b.nv == NV` and
    /// `TAIL == (b.tail > 0)`; `w` must hold `kh·kw·C_pad` floats, `bias` `C_pad`.
    #[inline(always)]
    unsafe fn pack_weights<S: Simd, const NV: usize, const TAIL: bool>(
        &self,
        s: S,
        b: Block,
        w: &mut [f32],
        bias: &mut [f32],
    ) {
        let g = self.g;
        let (l, c, c0, tail) = (S::LANES, g.c, b.c0, b.tail);
        let (vb, taps_n) = (NV * l, g.kh * g.kw);
        assert!(c0 + if TAIL { tail } else { vb } <= c && self.w.len() == taps_n * c);
        assert!(w.len() >= taps_n * (c0 + vb) && bias.len() >= c0 + vb);
        // SAFETY: the asserts above bound every access.
        unsafe {
            let wp = w.as_mut_ptr().add(taps_n * c0);
            for t in 0..taps_n {
                let src = self.w.as_ptr().add(t * c + c0);
                for v in 0..NV {
                    let val = ld::<S, TAIL>(s, src.add(v * l), tail);
                    s.store_ptr(wp.add(t * vb + v * l), val);
                }
            }
            if let Some(bs) = self.bias {
                assert!(bs.len() == c);
                for v in 0..NV {
                    let val = ld::<S, TAIL>(s, bs.as_ptr().add(c0 + v * l), tail);
                    s.store_ptr(bias.as_mut_ptr().add(c0 + v * l), val);
                }
            }
        }
    }

    /// One destination row `dst` (`dst_len` floats) for one channel block.
    ///
    /// # Safety
    /// As [`GatherRows::pack_weights`], with the weights packed; `ring` is the block's
    /// ring and `plan` the row's plan.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_block<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
        &self,
        s: S,
        b: Block,
        ring: &mut Ring<'_>,
        w: &[f32],
        bias: &[f32],
        plan: &RowPlan,
        dst: &mut [f32],
    ) {
        let (g, cols) = (self.g, self.cols);
        let (l, c, c0, tail) = (S::LANES, g.c, b.c0, b.tail);
        let vb = NV * l;
        let (src_rows, src_len, _, dst_len) = self.dims();
        let taps_n = g.kh * g.kw;
        assert!(c0 + if TAIL { tail } else { vb } <= c);
        assert!(self.src.len() == g.n * src_rows * src_len && dst.len() == dst_len);
        assert!(w.len() >= taps_n * (c0 + vb) && bias.len() >= c0 + vb);
        // SAFETY (whole body): the asserts above and the shapes of `Columns` (every
        // packed offset of every class is inside a ring row, every interior tap a real
        // source pixel, every destination pixel inside its row) keep all accesses in
        // bounds.
        unsafe {
            let src = self.src.as_ptr().add(c0);
            if cols.has_border() {
                for &(_, gr, _) in &plan.rows {
                    ring.ensure::<S, NV, TAIL>(s, gr, src.add(gr * src_len), c, tail);
                }
            }
            let direct = Gather {
                src,
                src_unit: 1,
                dst: dst.as_mut_ptr().add(c0),
                w: w.as_ptr().add(taps_n * c0),
                bias: if self.bias.is_some() {
                    bias.as_ptr().add(c0)
                } else {
                    std::ptr::null()
                },
                src_step: cols.src_step * c,
                dst_step: cols.dst_step * c,
                tail,
            };
            let packed = Gather {
                src: ring.mem.as_ptr(),
                src_unit: vb,
                src_step: cols.src_step * vb,
                ..direct
            };
            for (cl, [td, tr, sd, sr]) in cols.classes.iter().zip(&plan.ranges) {
                let k = cl.kws.len();
                if cl.ja < cl.jb {
                    let d0 = (cl.dst0 + cl.ja * cols.dst_step) * c;
                    let (taps, rows) = (&plan.taps[td.clone()], &plan.slide[sd.clone()]);
                    class_run::<S, NV, P, TAIL>(s, &direct, rows, taps, k, cl.jb - cl.ja, d0);
                }
                if cl.ja == 0 && cl.jb == cl.count {
                    continue;
                }
                let (taps, rows) = (&plan.taps[tr.clone()], &plan.slide[sr.clone()]);
                let d0 = cl.dst0 * c;
                if cl.ja == cl.count {
                    // Whole packed rows: one run.
                    class_run::<S, NV, P, TAIL>(s, &packed, rows, taps, k, cl.count, d0);
                    continue;
                }
                gather_run::<S, NV, P, TAIL>(s, &packed, taps, cl.ja, 0, d0);
                let (s0, d1) = (cl.jb * packed.src_step, d0 + cl.jb * packed.dst_step);
                gather_run::<S, NV, P, TAIL>(s, &packed, taps, cl.count - cl.jb, s0, d1);
            }
        }
    }
}

/// `count` destination pixels of one class from `dst_off`: sliding-window tiles when
/// the class has sliding-window `rows` (`k` = 3 or 5 taps per kernel row), the tap
/// list otherwise.
///
/// # Safety
/// As [`gather_run`] and [`slide_run`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn class_run<S: Simd, const NV: usize, const P: usize, const TAIL: bool>(
    s: S,
    g: &Gather,
    rows: &[SlideRow],
    taps: &[Tap],
    k: usize,
    count: usize,
    dst_off: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        match (rows.is_empty(), k) {
            (false, 3) => slide_run::<S, NV, P, 3, 1, TAIL>(s, g, rows, taps, count, 0, dst_off),
            (false, 5) => slide_run::<S, NV, P, 5, 1, TAIL>(s, g, rows, taps, count, 0, dst_off),
            _ => gather_run::<S, NV, P, TAIL>(s, g, taps, count, 0, dst_off),
        }
    }
}

impl SimdKernel for GatherRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(mut self, s: S) {
        let (g, cols) = (self.g, self.cols);
        let l = S::LANES;
        let c_pad = g.c.div_ceil(l) * l;
        let slots = if cols.has_border() { g.span_h() } else { 0 };
        let taps_n = g.kh * g.kw;
        let blocks = channel_blocks(g.c, l, nv_max(l));
        let ring_len = slots * cols.rp.pw * c_pad;
        let (_, _, dst_rows, dst_len) = self.dims();
        let dst = std::mem::take(&mut self.dst);
        let need = gather_scratch(g, cols, l);
        debug_assert_eq!(need, ring_len + taps_n * c_pad + c_pad);
        let mem = &mut std::mem::take(&mut self.mem)[..need];
        let (mut ring_mem, rest) = mem.split_at_mut(ring_len);
        let (w, bias) = rest.split_at_mut(taps_n * c_pad);
        // One ring per channel block (`vb` floats per pixel), kept for the whole task.
        let mut rings = Vec::with_capacity(blocks.len());
        for b in &blocks {
            let vb = b.nv * l;
            let (mine, others) =
                std::mem::take(&mut ring_mem).split_at_mut(slots * cols.rp.pw * vb);
            ring_mem = others;
            let mut ring = Ring::new(mine, slots, cols.rp, vb);
            ring.reset(vb);
            rings.push(ring);
        }
        for &b in &blocks {
            // SAFETY: the block comes from `channel_blocks` and matches the variant;
            // the buffers hold `kh·kw·C_pad` and `C_pad` floats.
            unsafe {
                match (b.nv, b.tail > 0) {
                    (_, true) => self.pack_weights::<S, 1, true>(s, b, w, bias),
                    (4, false) => self.pack_weights::<S, 4, false>(s, b, w, bias),
                    (2, false) => self.pack_weights::<S, 2, false>(s, b, w, bias),
                    _ => self.pack_weights::<S, 1, false>(s, b, w, bias),
                }
            }
        }
        let mut plan = RowPlan {
            rows: Vec::with_capacity(g.kh),
            taps: Vec::with_capacity(2 * taps_n * cols.classes.len()),
            slide: Vec::with_capacity(2 * g.kh * cols.classes.len()),
            ranges: Vec::with_capacity(cols.classes.len()),
        };
        let wide = l >= 16;
        let (w, bias) = (&*w, &*bias);
        for (r, dst_row) in dst.chunks_exact_mut(dst_len).enumerate() {
            let global = self.row0 + r;
            self.plan_row(global / dst_rows, global % dst_rows, slots, &mut plan);
            for (&b, ring) in blocks.iter().zip(&mut rings) {
                let (pl, o) = (&plan, &mut *dst_row);
                // SAFETY: as above; the weights are packed and `plan` is the row's.
                unsafe {
                    match (b.nv, b.tail > 0, wide) {
                        (_, true, _) => self.row_block::<S, 1, 8, true>(s, b, ring, w, bias, pl, o),
                        (4, false, true) => {
                            self.row_block::<S, 4, 4, false>(s, b, ring, w, bias, pl, o)
                        }
                        (4, false, false) => {
                            self.row_block::<S, 4, 2, false>(s, b, ring, w, bias, pl, o)
                        }
                        (2, false, true) => {
                            self.row_block::<S, 2, 8, false>(s, b, ring, w, bias, pl, o)
                        }
                        (2, false, false) => {
                            self.row_block::<S, 2, 4, false>(s, b, ring, w, bias, pl, o)
                        }
                        _ => self.row_block::<S, 1, 8, false>(s, b, ring, w, bias, pl, o),
                    }
                }
            }
        }
    }
}

/// The column structure of `pass`.
fn gather_columns(g: &Geo, pass: Pass) -> Columns {
    match pass {
        Pass::Forward => forward_columns(g),
        Pass::BackwardData => backward_data_columns(g),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_gather(
    level: SimdLevel,
    g: &Geo,
    pass: Pass,
    src: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    dst: &mut [f32],
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let cols = gather_columns(g, pass);
    let slots = ws.per_worker(gather_scratch(g, &cols, dispatch_lanes(level)))?;
    let (rows, row_len) = match pass {
        Pass::Forward => (g.n * g.oh, g.ow * g.c),
        Pass::BackwardData => (g.n * g.h, g.w * g.c),
    };
    // Every output element is computed the same way whatever the split, so the split
    // may follow the pool size: about 4 tasks per thread (load balance), as long as
    // possible otherwise, since a task packs the source rows around its block again.
    let per_task = chunk_len(
        rows,
        16384usize.div_ceil(row_len),
        4 * rayon::current_num_threads(),
    );
    dst.par_chunks_mut(per_task * row_len)
        .enumerate()
        .for_each(|(i, dst)| {
            slots.with(|mem| {
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
                        mem,
                    },
                )
            })
        });
    Ok(())
}

/// Floats of workspace `pass` needs at `level` when the call runs in a pool of
/// `threads` threads: the gathers' rings and packed weights per worker; for the weight
/// gradient, the per-chunk partials and the bias sum per call and the rings and
/// accumulators per worker. A function of the shape, the pass, the level and the
/// thread count only.
pub fn workspace_len(level: SimdLevel, shape: &ConvShape, pass: ConvPass, threads: usize) -> usize {
    layout(level, &Geo::new(shape), pass, threads).len()
}

/// The regions `pass` takes from its workspace, in order.
fn layout(level: SimdLevel, g: &Geo, pass: ConvPass, threads: usize) -> WorkspaceLayout {
    let l = dispatch_lanes(level);
    let mut layout = WorkspaceLayout::new(threads);
    match pass {
        ConvPass::Forward => layout.per_worker(gather_scratch(g, &forward_columns(g), l)),
        ConvPass::BackwardData => {
            layout.per_worker(gather_scratch(g, &backward_data_columns(g), l))
        }
        ConvPass::BackwardWeight => {
            let sum = g.kh * g.kw * g.c + g.c;
            let (rows, chunk) = wgrad_chunks(g);
            layout
                .region(sum)
                .region(partials_len(rows, chunk, sum))
                .per_worker(wgrad_scratch(g, &forward_columns(g), l))
        }
    };
    layout
}

/// The caller's workspace checked against the layout of `pass` in the current pool.
fn workspace<'a>(
    level: SimdLevel,
    g: &Geo,
    pass: ConvPass,
    ws: &'a mut [f32],
) -> Result<Workspace<'a>> {
    Workspace::new(ws, &layout(level, g, pass, rayon::current_num_threads()))
}

/// Runs `f` on a workspace of exactly the size `pass` needs in the current pool, kept
/// by the calling thread between calls.
fn allocating<R>(
    level: SimdLevel,
    shape: &ConvShape,
    pass: ConvPass,
    f: impl FnOnce(&mut [f32]) -> Result<R>,
) -> Result<R> {
    let g = Geo::new(shape);
    layout(level, &g, pass, rayon::current_num_threads()).with_reused(f)
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
    allocating(level, shape, ConvPass::Forward, |ws| {
        forward_with_workspace(level, shape, x, w, bias, y, ws)
    })
}

/// [`forward`] with its scratch in `ws`: at least
/// [`workspace_len`]`(level, shape, ConvPass::Forward, threads)` floats for the pool
/// the call runs in, any contents (left unspecified); a shorter one is
/// [`crate::Error::BufferSize`] naming `"workspace"`.
pub fn forward_with_workspace(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    shape.check_forward(x, w, bias, y)?;
    let g = Geo::new(shape);
    let mut ws = workspace(level, &g, ConvPass::Forward, ws)?;
    run_gather(level, &g, Pass::Forward, x, w, bias, y, &mut ws)
}

/// Floats of the forward weights "packed" for [`forward_prepacked`]: the weight
/// itself. Each gather task packs the channel blocks it needs into its worker's slot,
/// next to its row rings, from the original layout: reading weights packed once per
/// call from a shared region instead measured 13–25 % slower on the small layers (a
/// cache-placement effect, and the other core's copy traffic), so the depthwise
/// family keeps the weights as they are.
pub(super) fn forward_packed_len(_level: SimdLevel, shape: &ConvShape) -> usize {
    shape.w_len
}

/// Copies `w: [kh][kw][C]` into `out` (at least [`forward_packed_len`] floats).
pub(super) fn pack_forward_weights(
    _level: SimdLevel,
    shape: &ConvShape,
    w: &[f32],
    out: &mut [f32],
) {
    out[..shape.w_len].copy_from_slice(w);
}

/// The forward pass on weights written by [`pack_forward_weights`] (buffers already
/// checked; `ws` as for [`forward_with_workspace`]).
pub(super) fn forward_prepacked(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    packed: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    let g = Geo::new(shape);
    let mut ws = workspace(level, &g, ConvPass::Forward, ws)?;
    run_gather(
        level,
        &g,
        Pass::Forward,
        x,
        &packed[..shape.w_len],
        bias,
        y,
        &mut ws,
    )
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
    allocating(level, shape, ConvPass::BackwardData, |ws| {
        backward_data_with_workspace(level, shape, dy, w, dx, ws)
    })
}

/// [`backward_data`] with its scratch in `ws` (at least
/// [`workspace_len`]`(level, shape, ConvPass::BackwardData, threads)` floats; as
/// [`forward_with_workspace`]).
pub fn backward_data_with_workspace(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    shape.check_backward_data(dy, w, dx)?;
    let g = Geo::new(shape);
    let mut ws = workspace(level, &g, ConvPass::BackwardData, ws)?;
    run_gather(level, &g, Pass::BackwardData, dy, w, None, dx, &mut ws)
}

/// Output pixels per slice of a weight-gradient row (see [`WgradRows::wgrad_rows`]).
const WGRAD_SLICE: usize = 32;

/// Kernel rows handled together by [`WgradRows::wgrad_rows`].
const MAX_KH: usize = 16;

/// Strides of one weight-gradient run, in floats.
#[derive(Copy, Clone)]
struct WSteps {
    /// Between consecutive output pixels in `dy`.
    dy: usize,
    /// Between the source pixels of consecutive output pixels.
    x: usize,
    /// Between the source pixels of consecutive kernel columns.
    tap: usize,
    /// Between the gradients of consecutive kernel columns.
    out: usize,
    /// Lanes of the partial vector (TAIL blocks only).
    tail: usize,
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
unsafe fn wgrad_slide<S: Simd, const NV: usize, const K: usize>(
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
unsafe fn wgrad_group<S: Simd, const NV: usize, const TAIL: bool>(
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

/// The backward-weight partial of the output rows `rows` (global `n·OH + oh`).
struct WgradRows<'a> {
    g: &'a Geo,
    cols: &'a Columns,
    x: &'a [f32],
    dy: &'a [f32],
    /// `[kh][kw][C]`, followed by `[C]` when `with_bias`.
    part: &'a mut [f32],
    with_bias: bool,
    rows: Range<usize>,
    /// The task's scratch ([`wgrad_scratch`] floats, any contents).
    mem: &'a mut [f32],
}

/// Per-task scratch of the weight gradient.
struct WgradScratch<'a> {
    ring: Ring<'a>,
    /// Per channel block, `[kh·kw + 2][vb]` from `(kh·kw + 2)·c0`: the task's weight
    /// gradient, bias gradient and the bias sum's compensation term.
    acc: &'a mut [f32],
    /// `[OW][vb]`: the packed output-gradient row (packed mode).
    dy: &'a mut [f32],
}

impl WgradRows<'_> {
    /// Adds output rows `rows` (global `n·OH + oh`) of one channel block to the block's
    /// gradient accumulators (`sc.acc` from `(kh·kw + 2)·c0`).
    ///
    /// # Safety
    /// As [`GatherRows::block`].
    #[inline(always)]
    unsafe fn block<S: Simd, const NV: usize, const TAIL: bool>(
        &mut self,
        s: S,
        b: Block,
        sc: &mut WgradScratch<'_>,
        rows: Range<usize>,
    ) {
        let g = self.g;
        let (l, c, c0, tail) = (S::LANES, g.c, b.c0, b.tail);
        let vb = NV * l;
        let taps_n = g.kh * g.kw;
        let border = self.cols.has_border();
        let packed = self.cols.packed;
        assert!(c0 + if TAIL { tail } else { vb } <= c);
        assert!(self.part.len() >= taps_n * c + if self.with_bias { c } else { 0 });
        assert!(self.x.len() == g.n * g.h * g.w * c && self.dy.len() == g.n * g.oh * g.ow * c);
        assert!(rows.end <= g.n * g.oh);
        // Interior output columns of each group of up to 5 kernel columns.
        let groups: Vec<(usize, usize, usize, usize)> = (0..g.kw)
            .step_by(5)
            .map(|kw0| {
                let gn = (g.kw - kw0).min(5);
                let (a, _) = ow_range(g, kw0);
                let (_, b) = ow_range(g, kw0 + gn - 1);
                let (a, b) = if a < b && !packed {
                    (a, b)
                } else {
                    (g.ow, g.ow)
                };
                (kw0, gn, a, b)
            })
            .collect();
        // SAFETY (whole body): the asserts above, `ow_range` (interior taps are real
        // pixels), the ring layout (every border tap is inside a ring row) and the
        // scratch sizes keep all accesses in bounds.
        unsafe {
            assert!(sc.acc.len() >= (taps_n + 2) * (c0 + vb));
            let acc = sc.acc.as_mut_ptr().add((taps_n + 2) * c0);
            sc.ring.reset(vb);
            let x = self.x.as_ptr().add(c0);
            let ring = sc.ring.mem.as_ptr();
            assert!(sc.dy.len() >= g.ow * vb);
            let dyp = sc.dy.as_mut_ptr();
            let row_len = g.w * c;
            for row in rows {
                let (n, oh) = (row / g.oh, row % g.oh);
                let mut dy_row = self.dy.as_ptr().add(row * g.ow * c + c0);
                let mut dy_step = c;
                if packed {
                    // Contiguous copy of the row: it is read once per kernel row.
                    pack_row::<S, NV, TAIL>(s, dy_row, c, g.ow, dyp, tail);
                    dy_row = dyp;
                    dy_step = vb;
                }
                // The kernel rows inside the image, their input rows and ring slots.
                let mut khs = [(0usize, std::ptr::null::<f32>(), 0usize); MAX_KH];
                let mut nkh = 0;
                for kh in 0..g.kh {
                    let Some(ih) = g.in_row(oh, kh) else { continue };
                    let gr = n * g.h + ih;
                    let x_row = x.add(gr * row_len);
                    let base = if border {
                        sc.ring.ensure::<S, NV, TAIL>(s, gr, x_row, c, tail)
                    } else {
                        0
                    };
                    if nkh == MAX_KH {
                        // Very tall kernels: flush what we have one row at a time.
                        self.wgrad_rows::<S, NV, TAIL>(
                            s,
                            &groups,
                            &khs[..nkh],
                            dy_row,
                            dy_step,
                            acc,
                            ring,
                            tail,
                        );
                        nkh = 0;
                    }
                    khs[nkh] = (kh, x_row, base);
                    nkh += 1;
                }
                self.wgrad_rows::<S, NV, TAIL>(
                    s,
                    &groups,
                    &khs[..nkh],
                    dy_row,
                    dy_step,
                    acc,
                    ring,
                    tail,
                );
                if self.with_bias {
                    // The row's sum (two partial sums), then a compensated (Kahan) add
                    // into the running total: bias gradients are sums of many terms that
                    // often nearly cancel.
                    let mut bsum = [[s.zero(); NV]; 2];
                    for ow in 0..g.ow {
                        let a = &mut bsum[ow & 1];
                        for (v, a) in a.iter_mut().enumerate() {
                            let d = ld::<S, TAIL>(s, dy_row.add(ow * dy_step + v * l), tail);
                            *a = s.add(*a, d);
                        }
                    }
                    let (sp, cp) = (acc.add(taps_n * vb), acc.add((taps_n + 1) * vb));
                    let [even, odd] = bsum;
                    for (v, (e, o)) in even.into_iter().zip(odd).enumerate() {
                        let (sp, cp) = (sp.add(v * l), cp.add(v * l));
                        let (sum, comp) = (s.load_ptr(sp), s.load_ptr(cp));
                        let y = s.sub(s.add(e, o), comp);
                        let t = s.add(sum, y);
                        s.store_ptr(cp, s.sub(s.sub(t, sum), y));
                        s.store_ptr(sp, t);
                    }
                }
            }
        }
    }

    /// One output row of one channel block: every kernel row in `khs` (kernel row,
    /// input row, ring slot), kernel columns in `groups`. The interior runs go in
    /// slices of [`WGRAD_SLICE`] pixels, all kernel rows per slice, so that the input
    /// rows stream side by side (memory-level parallelism) rather than one after the
    /// other.
    ///
    /// # Safety
    /// As [`WgradRows::block`], whose pointers these are.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn wgrad_rows<S: Simd, const NV: usize, const TAIL: bool>(
        &self,
        s: S,
        groups: &[(usize, usize, usize, usize)],
        khs: &[(usize, *const f32, usize)],
        dy_row: *const f32,
        dy_step: usize,
        acc: *mut f32,
        ring: *const f32,
        tail: usize,
    ) {
        let g = self.g;
        let (c, vb) = (g.c, NV * S::LANES);
        let border = self.cols.has_border();
        let direct = WSteps {
            dy: dy_step,
            x: g.sw * c,
            tap: g.dw * c,
            out: vb,
            tail,
        };
        let packed = WSteps {
            x: g.sw * vb,
            tap: g.dw * vb,
            ..direct
        };
        // SAFETY: forwarded from `block`: interior pixels are real input pixels,
        // border pixels lie in the ring rows.
        unsafe {
            for &(kw0, gn, a, b) in groups {
                let mut a0 = a;
                while a0 < b {
                    let a1 = (a0 + WGRAD_SLICE).min(b);
                    for &(kh, x_row, _) in khs {
                        let out = acc.add((kh * g.kw + kw0) * vb);
                        let xd = x_row.add((a0 * g.sw + kw0 * g.dw - g.left) * c);
                        let dd = dy_row.add(a0 * dy_step);
                        wgrad_group::<S, NV, TAIL>(s, gn, dd, xd, out, a1 - a0, direct);
                    }
                    a0 = a1;
                }
                if border {
                    for &(kh, _, base) in khs {
                        let out = acc.add((kh * g.kw + kw0) * vb);
                        let xr = ring.add(base + kw0 * g.dw * vb);
                        if self.cols.packed && g.sw == 1 && g.dw == 1 && dy_step == vb {
                            // Whole packed rows, consecutive taps: sliding window.
                            match gn {
                                3 => wgrad_slide::<S, NV, 3>(s, dy_row, xr, out, a, vb),
                                5 => wgrad_slide::<S, NV, 5>(s, dy_row, xr, out, a, vb),
                                _ => wgrad_group::<S, NV, TAIL>(s, gn, dy_row, xr, out, a, packed),
                            }
                            continue;
                        }
                        wgrad_group::<S, NV, TAIL>(s, gn, dy_row, xr, out, a, packed);
                        let (dr, xr) = (dy_row.add(b * dy_step), xr.add(b * g.sw * vb));
                        wgrad_group::<S, NV, TAIL>(s, gn, dr, xr, out, g.ow - b, packed);
                    }
                }
            }
        }
    }

    /// Writes one channel block's accumulators into the chunk's partial.
    ///
    /// # Safety
    /// As [`WgradRows::block`].
    #[inline(always)]
    unsafe fn flush<S: Simd, const NV: usize, const TAIL: bool>(
        &mut self,
        s: S,
        b: Block,
        sc: &WgradScratch<'_>,
    ) {
        let g = self.g;
        let (l, c, c0, tail) = (S::LANES, g.c, b.c0, b.tail);
        let vb = NV * l;
        let taps_n = g.kh * g.kw;
        let outs = taps_n + usize::from(self.with_bias);
        assert!(c0 + if TAIL { tail } else { vb } <= c && self.part.len() >= outs * c);
        assert!(sc.acc.len() >= (taps_n + 2) * (c0 + vb));
        // SAFETY: the asserts above bound every access.
        unsafe {
            let acc = sc.acc.as_ptr().add((taps_n + 2) * c0);
            let part = self.part.as_mut_ptr().add(c0);
            for t in 0..outs {
                for v in 0..NV {
                    let val = s.load_ptr(acc.add(t * vb + v * l));
                    st::<S, TAIL>(s, part.add(t * c + v * l), val, tail);
                }
            }
        }
    }
}

/// The output columns `[lo, hi)` whose tap through kernel column `kw` is a real input
/// pixel (`lo >= hi` when there are none).
fn ow_range(g: &Geo, kw: usize) -> (usize, usize) {
    let off = kw * g.dw;
    // iw = ow·sw + off − left must lie in [0, W).
    let lo = g.left.saturating_sub(off).div_ceil(g.sw);
    let hi = if g.w + g.left > off {
        ((g.w + g.left - off - 1) / g.sw + 1).min(g.ow)
    } else {
        0
    };
    (lo.min(g.ow), hi)
}

impl SimdKernel for WgradRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(mut self, s: S) {
        let g = self.g;
        let nvm = nv_max(S::LANES);
        let vbm = vb_max(g.c, S::LANES);
        let slots = if self.cols.has_border() {
            g.span_h()
        } else {
            0
        };
        let ring_len = Ring::len(slots, self.cols.rp, vbm);
        let mem = std::mem::take(&mut self.mem);
        {
            let acc_len = (g.kh * g.kw + 2) * g.c.div_ceil(S::LANES) * S::LANES;
            let need = wgrad_scratch(g, self.cols, S::LANES);
            debug_assert_eq!(need, ring_len + acc_len + g.ow * vbm);
            let mem = &mut mem[..need];
            let (ring, rest) = mem.split_at_mut(ring_len);
            let (acc, dy) = rest.split_at_mut(acc_len);
            acc.fill(0.0);
            let mut sc = WgradScratch {
                ring: Ring::new(ring, slots, self.cols.rp, vbm),
                acc,
                dy,
            };
            let blocks = channel_blocks(g.c, S::LANES, nvm);
            let sub = cache_rows(g.sh * g.w * g.c + g.ow * g.c);
            let rows = self.rows.clone();
            for r0 in rows.clone().step_by(sub) {
                let rr = r0..(r0 + sub).min(rows.end);
                for &b in &blocks {
                    let rr = rr.clone();
                    // SAFETY: the block comes from `channel_blocks` and matches the
                    // variant.
                    unsafe {
                        match (b.nv, b.tail > 0) {
                            (_, true) => self.block::<S, 1, true>(s, b, &mut sc, rr),
                            (4, false) => self.block::<S, 4, false>(s, b, &mut sc, rr),
                            (2, false) => self.block::<S, 2, false>(s, b, &mut sc, rr),
                            _ => self.block::<S, 1, false>(s, b, &mut sc, rr),
                        }
                    }
                }
            }
            for &b in &blocks {
                // SAFETY: as above.
                unsafe {
                    match (b.nv, b.tail > 0) {
                        (_, true) => self.flush::<S, 1, true>(s, b, &sc),
                        (4, false) => self.flush::<S, 4, false>(s, b, &sc),
                        (2, false) => self.flush::<S, 2, false>(s, b, &sc),
                        _ => self.flush::<S, 1, false>(s, b, &sc),
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
    allocating(level, shape, ConvPass::BackwardWeight, |ws| {
        backward_weight_with_workspace(level, shape, x, dy, dw, dbias, mode, ws)
    })
}

/// The flattened output rows of the weight gradient and the rows per chunk.
fn wgrad_chunks(g: &Geo) -> (usize, usize) {
    let rows = g.n * g.oh;
    // Fixed chunks (never the pool size: the partial sums must not depend on it): at
    // most 32, with enough pixels that the partial buffer (k²·C) is small next to the
    // chunk's data (pixels·C) and at least ~16K elements.
    let min_rows = (4 * g.kh * g.kw)
        .div_ceil(g.ow)
        .max(16384usize.div_ceil(g.ow * g.c));
    (rows, chunk_len(rows, min_rows, 32))
}

/// [`backward_weight`] with its scratch in `ws` (at least
/// [`workspace_len`]`(level, shape, ConvPass::BackwardWeight, threads)` floats; as
/// [`forward_with_workspace`]).
#[allow(clippy::too_many_arguments)]
pub fn backward_weight_with_workspace(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
    ws: &mut [f32],
) -> Result<()> {
    shape.check_backward_weight(x, dy, dw, dbias.as_deref())?;
    let g = Geo::new(shape);
    let mut ws = workspace(level, &g, ConvPass::BackwardWeight, ws)?;
    let cols = forward_columns(&g);
    let (rows, chunk) = wgrad_chunks(&g);
    let w_len = dw.len();
    let sum = ws.take(w_len + g.c)?;
    let partials = ws.take(partials_len(rows, chunk, w_len + g.c))?;
    let slots = ws.per_worker(wgrad_scratch(&g, &cols, dispatch_lanes(level)))?;
    let mut run = |part: &mut [f32], with_bias: bool, accumulate: bool| {
        reduce_chunks_in(rows, chunk, part, accumulate, partials, |r, p| {
            slots.with(|mem| {
                dispatch(
                    level,
                    WgradRows {
                        g: &g,
                        cols: &cols,
                        x,
                        dy,
                        part: p,
                        with_bias,
                        rows: r,
                        mem,
                    },
                )
            })
        })
    };
    match dbias {
        None => run(dw, false, mode.accumulate()),
        Some(db) => {
            run(sum, true, false);
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
