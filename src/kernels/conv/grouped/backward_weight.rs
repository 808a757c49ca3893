//! Backward-weight pass: per fixed chunk of output rows and block of groups, outer
//! products of input channels × output-gradient vectors accumulated in registers over
//! the chunk's pixels; per-chunk `f32` partials added in chunk order.

use super::micro::{
    GroupMajor, OuterRow, OuterTile, max_nv, max_tile, outer_tile, prefetch_pixels, tile_dispatch,
};
use super::{Geo, lanes, split, with_scratch};
use crate::simd::{self, Simd, SimdKernel, SimdLevel};
use rayon::prelude::*;

/// Most chunks of output rows (each adds one weight-sized partial).
const MAX_CHUNKS: usize = 64;
/// Output pixels per chunk, at least (fewer chunks for small layers: each chunk costs
/// one pass over a weight-sized partial).
const MIN_CHUNK_PIXELS: usize = 2048;
/// Output pixels per chunk when more chunks are needed for enough tasks, at least.
const MIN_SPLIT_PIXELS: usize = 256;
/// Output pixels per step of a task, at least.
const SUB_PIXELS: usize = 256;
/// Tasks (chunks × group blocks) to aim for.
const MIN_TASKS: usize = 24;
/// Floats of per-task copies (input and output gradient) to aim below.
const BUDGET: usize = 256 * 1024;

/// A stretch of one image inside a chunk and the input rows it reads.
#[derive(Copy, Clone, Debug)]
struct Segment {
    n: usize,
    /// Output rows `oh0..oh1` of image `n`.
    oh0: usize,
    oh1: usize,
    /// First input row they read.
    ih_lo: usize,
    /// Row of `ih_lo` in the task's input buffer.
    base: usize,
}

pub(super) fn run(
    level: SimdLevel,
    g: &Geo,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    accumulate: bool,
) {
    let l = lanes(level);
    let w_len = dw.len();
    let rows = g.n * g.oh;
    // The chunking depends on the shape only, never on the thread count.
    // Chunks of at least MIN_CHUNK_PIXELS output pixels, or more (down to
    // MIN_SPLIT_PIXELS) if that gives the pool enough tasks without splitting groups.
    let pixels = rows * g.ow;
    let want = (pixels / MIN_CHUNK_PIXELS)
        .max(MIN_TASKS.min(pixels / MIN_SPLIT_PIXELS))
        .clamp(1, MAX_CHUNKS);
    let chunk_rows = rows.div_ceil(want);
    let chunks = rows.div_ceil(chunk_rows);
    let wp = g.padded_w();
    let cvn = g.cog.div_ceil(l);
    // Groups per task: all of them (whole runs of channels are read from memory) unless
    // that leaves too few tasks or too large a copy.
    let per_group =
        ((chunk_rows + 1) * g.sh + (g.kh - 1) * g.dh) * wp * g.cig + chunk_rows * g.ow * cvn * l;
    let mut gbs = g.groups;
    while gbs > 1 && (chunks * g.groups.div_ceil(gbs) < MIN_TASKS || gbs * per_group > BUDGET) {
        gbs = gbs.div_ceil(2);
    }
    // Output gradients are read in place when a task covers every channel in whole
    // vectors; otherwise copied per task as [gl][row][ow][cvn·L] with zero lanes.
    let dy_copy = !(g.cog.is_multiple_of(l) && gbs == g.groups);
    // Output rows per step: the input rows a step adds are copied (and the next step's
    // prefetched) while the previous steps' sums wait in the partial.
    let sub_rows = SUB_PIXELS.div_ceil(g.ow);
    let blocks: Vec<(usize, usize)> = split(g.groups, gbs).collect();
    let block_len = |ng: usize| g.taps() * g.cig * ng * g.cog;

    let mut partials = vec![0.0f32; chunks * w_len];
    let mut jobs = Vec::with_capacity(chunks * blocks.len());
    let mut rest = &mut partials[..];
    for c in 0..chunks {
        for &(g0, ng) in &blocks {
            let (part, tail) = rest.split_at_mut(block_len(ng));
            rest = tail;
            jobs.push((c, g0, ng, part));
        }
    }
    jobs.into_par_iter().for_each(|(c, g0, ng, part)| {
        let r0 = c * chunk_rows;
        let r1 = (r0 + chunk_rows).min(rows);
        let mut segments = Vec::new();
        let mut base = 0;
        let mut r = r0;
        while r < r1 {
            let n = r / g.oh;
            let end = ((n + 1) * g.oh).min(r1);
            let (ih_lo, ih_hi) = g.in_rows(r - n * g.oh, end - n * g.oh);
            segments.push(Segment {
                n,
                oh0: r - n * g.oh,
                oh1: end - n * g.oh,
                ih_lo,
                base,
            });
            base += ih_hi - ih_lo;
            r = end;
        }
        let x_len = ng * base * wp * g.cig;
        let dy_len = if dy_copy {
            ng * sub_rows * g.ow * cvn * l
        } else {
            0
        };
        with_scratch(x_len + dy_len, |buf| {
            let (xb, db) = buf.split_at_mut(x_len);
            simd::dispatch(
                level,
                BwdWeightTask {
                    g,
                    x,
                    dy,
                    r0,
                    g0,
                    ng,
                    segments: &segments,
                    x_rows: base,
                    sub_rows,
                    xb,
                    db: dy_copy.then_some(db),
                    part,
                },
            )
        })
    });

    // dw[tap][ci][co] (+)= Σ_chunks partial, in chunk order.
    let offsets: Vec<usize> = blocks
        .iter()
        .scan(0, |off, &(_, ng)| {
            let o = *off;
            *off += block_len(ng);
            Some(o)
        })
        .collect();
    dw.par_chunks_mut(g.cout).enumerate().for_each(|(row, o)| {
        for (&(g0, ng), &off) in blocks.iter().zip(&offsets) {
            let bw = ng * g.cog;
            let o = &mut o[g0 * g.cog..][..bw];
            if !accumulate {
                o.fill(0.0);
            }
            for c in 0..chunks {
                let p = &partials[c * w_len + off + row * bw..][..bw];
                for (o, p) in o.iter_mut().zip(p) {
                    *o += *p;
                }
            }
        }
    });
}

struct BwdWeightTask<'a> {
    g: &'a Geo,
    x: &'a [f32],
    dy: &'a [f32],
    /// First flattened output row (`n·oh + oh`); the segments follow.
    r0: usize,
    /// Groups `g0..g0 + ng`.
    g0: usize,
    ng: usize,
    segments: &'a [Segment],
    /// Rows of `xb` per group.
    x_rows: usize,
    /// Output rows per step.
    sub_rows: usize,
    /// `[gl][x_rows][padded_w][cig]`, zeroed.
    xb: &'a mut [f32],
    /// `[gl][sub_rows][ow][cvn·L]`, zeroed, when `dy` is not read in place.
    db: Option<&'a mut [f32]>,
    /// `[tap][ci][gl·cog + co]`, zeroed; the sums are added.
    part: &'a mut [f32],
}

impl SimdKernel for BwdWeightTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let BwdWeightTask {
            g,
            x,
            dy,
            r0,
            g0,
            ng,
            segments,
            x_rows,
            sub_rows,
            xb,
            mut db,
            part,
        } = self;
        let l = S::LANES;
        let cig = g.cig;
        let cvn = g.cog.div_ceil(l);
        let wp = g.padded_w();
        let xg = x_rows * wp * cig;
        let img = g.h * g.w * g.cin;
        let row_len = g.w * g.cin;
        let gm = GroupMajor {
            width: g.w,
            src_c: g.cin,
            cg: cig,
            g0,
            ng,
            pad: g.pl,
            dst_w: wp,
            dst_c: cig,
            g_stride: xg,
        };
        // Copied output gradients: [gl][sub row][ow][cvn·L].
        let dg = sub_rows * g.ow * cvn * l;
        let gd = GroupMajor {
            width: g.ow,
            src_c: g.cout,
            cg: g.cog,
            g0,
            ng,
            pad: 0,
            dst_w: g.ow,
            dst_c: cvn * l,
            g_stride: dg,
        };
        let dy_row_len = g.ow * g.cout;

        // Without horizontal dilation the kw taps and the group's channels are one
        // contiguous run per pixel (as in the weight layout).
        let merged = g.dw == 1;
        let k_len = if merged { g.kw * cig } else { cig };
        let kws = if merged { 1 } else { g.kw };
        let bw = ng * g.cog;
        let part_len = part.len();
        let out = part.as_mut_ptr();
        let blocks: Vec<(usize, usize)> = split(cvn, max_nv::<S>()).collect();
        let mut rows: Vec<OuterRow> = Vec::with_capacity(sub_rows);
        let mut flat0 = r0;
        for seg in segments {
            let xi = &x[seg.n * img..][..img];
            let mut copied = seg.ih_lo;
            let steps: Vec<(usize, usize)> = split(seg.oh1 - seg.oh0, sub_rows).collect();
            for (si, &(a, len)) in steps.iter().enumerate() {
                let (oh_a, oh_b) = (seg.oh0 + a, seg.oh0 + a + len);
                let need = g.in_rows(oh_a, oh_b).1.max(copied);
                if need > copied {
                    let src = &xi[copied * row_len..need * row_len];
                    gm.copy_rows(s, src, seg.base + copied - seg.ih_lo, xb);
                    copied = need;
                }
                // Next step of this segment: its new input rows and its output
                // gradients, prefetched a slice per (group, kernel row).
                let (ahead, dy_ahead) = match steps.get(si + 1) {
                    Some(&(a2, len2)) => (
                        copied..g.in_rows(seg.oh0 + a2, seg.oh0 + a2 + len2).1.max(copied),
                        flat0 + a2..flat0 + a2 + len2,
                    ),
                    None => (0..0, 0..0),
                };
                let n_slices = ng * g.kh;
                let flat_a = flat0 + a;
                // Output gradient of (step row rr, column ow, group gl): `dyp + at`.
                let (dyp, dy_len, dy_pix, dy_row, dy_group) = match db.as_deref_mut() {
                    Some(db) => {
                        let src = &dy[flat_a * dy_row_len..(flat_a + len) * dy_row_len];
                        gd.copy_rows(s, src, 0, db);
                        let pix = cvn * l;
                        (db.as_ptr(), db.len(), pix, g.ow * pix, dg)
                    }
                    None => {
                        let off = flat_a * dy_row_len + g0 * g.cog;
                        let p = dy[off..].as_ptr();
                        (p, dy.len() - off, g.cout, dy_row_len, g.cog)
                    }
                };
                for gl in 0..ng {
                    for kh in 0..g.kh {
                        let slice = gl * g.kh + kh;
                        for ih in ahead.clone() {
                            let base = xi.as_ptr().wrapping_add(ih * row_len + g0 * cig);
                            let cols = slice * g.w / n_slices..(slice + 1) * g.w / n_slices;
                            prefetch_pixels(base, cols, g.cin, ng * cig);
                        }
                        for fr in dy_ahead.clone() {
                            let base = dy.as_ptr().wrapping_add(fr * dy_row_len + g0 * g.cog);
                            let cols = slice * g.ow / n_slices..(slice + 1) * g.ow / n_slices;
                            prefetch_pixels(base, cols, g.cout, ng * g.cog);
                        }
                        rows.clear();
                        for (rr, oh) in (oh_a..oh_b).enumerate() {
                            let Some(ih) = g.in_row(oh, kh) else { continue };
                            let xo = gl * xg + (seg.base + ih - seg.ih_lo) * wp * cig;
                            let yo = gl * dy_group + rr * dy_row;
                            if cfg!(debug_assertions) {
                                assert!(xo + (g.ow - 1) * g.sw * cig + k_len <= xb.len(), "x");
                                let ye = yo + (g.ow - 1) * dy_pix + cvn * l;
                                assert!(ye <= dy_len, "dy");
                            }
                            rows.push(OuterRow {
                                x: xb.as_ptr().wrapping_add(xo),
                                x_pix: g.sw * cig,
                                dy: dyp.wrapping_add(yo),
                                npix: g.ow,
                            });
                        }
                        if rows.is_empty() {
                            continue;
                        }
                        for kw in 0..kws {
                            let x_tap = kw * g.dw * cig;
                            let out_row = (kh * g.kw + kw) * cig;
                            for &(v0, nv) in &blocks {
                                let last = (g.cog - (v0 + nv - 1) * l).min(l);
                                for (k0, mi) in split(k_len, max_tile::<S>(nv)) {
                                    let out_off = (out_row + k0) * bw + gl * g.cog + v0 * l;
                                    debug_assert!(
                                        out_off + (mi - 1) * bw + (nv - 1) * l + last <= part_len
                                    );
                                    let a = OuterTile {
                                        rows: &rows,
                                        x_off: x_tap + k0,
                                        dy_off: v0 * l,
                                        dy_pix,
                                        out: out.wrapping_add(out_off),
                                        out_k: bw,
                                        last,
                                    };
                                    macro_rules! call {
                                        ($m:literal, $nv:literal) => {
                                            // SAFETY: the row pointers and offsets were
                                            // derived from the shape so that every read
                                            // lies in `xb` (rows copied above) or the
                                            // output gradient, and every access to the
                                            // result in `part`, which this task owns;
                                            // checked in debug builds above.
                                            unsafe { outer_tile::<S, $m, $nv>(s, &a) }
                                        };
                                    }
                                    tile_dispatch!(nv, mi, call);
                                }
                            }
                        }
                    }
                }
            }
            flat0 += seg.oh1 - seg.oh0;
        }
    }
}
