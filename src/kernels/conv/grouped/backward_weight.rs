//! Backward-weight pass: per fixed chunk of output rows and block of groups, outer
//! products of input channels × output-gradient vectors accumulated in registers over
//! the chunk's pixels; per-chunk `f32` partials added in chunk order.

use super::micro::{GroupMajor, OuterRow, OuterTile, max_nv, max_tile, outer_tile, tile_dispatch};
use super::{Geo, lanes, split, with_scratch};
use crate::simd::{self, Simd, SimdKernel, SimdLevel};
use rayon::prelude::*;

/// Most chunks of output rows (each adds one weight-sized partial).
const MAX_CHUNKS: usize = 64;
/// Output pixels per chunk, at least (fewer chunks for small layers: each chunk costs
/// one pass over a weight-sized partial).
const MIN_CHUNK_PIXELS: usize = 2048;
/// Tasks (chunks × group blocks) to aim for.
const MIN_TASKS: usize = 32;
/// Floats of per-task copies (input and output gradient) to aim below.
const BUDGET: usize = 256 * 1024;

/// A stretch of one image inside a chunk and the input rows it reads.
#[derive(Copy, Clone, Debug)]
struct Segment {
    n: usize,
    ih_lo: usize,
    ih_hi: usize,
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
    let want = (rows * g.ow / MIN_CHUNK_PIXELS).clamp(1, MAX_CHUNKS);
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
                ih_lo,
                ih_hi,
                base,
            });
            base += ih_hi - ih_lo;
            r = end;
        }
        let x_len = ng * base * wp * g.cig;
        let dy_len = if dy_copy {
            ng * (r1 - r0) * g.ow * cvn * l
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
                    r1,
                    g0,
                    ng,
                    segments: &segments,
                    x_rows: base,
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
    /// Flattened output rows `r0..r1` (`n·oh + oh`).
    r0: usize,
    r1: usize,
    /// Groups `g0..g0 + ng`.
    g0: usize,
    ng: usize,
    segments: &'a [Segment],
    /// Rows of `xb` per group.
    x_rows: usize,
    /// `[gl][x_rows][padded_w][cig]`, zeroed.
    xb: &'a mut [f32],
    /// `[gl][r1 − r0][ow][cvn·L]`, zeroed, when `dy` is not read in place.
    db: Option<&'a mut [f32]>,
    /// `[tap][ci][gl·cog + co]`, overwritten.
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
            r1,
            g0,
            ng,
            segments,
            x_rows,
            xb,
            db,
            part,
        } = self;
        let l = S::LANES;
        let cig = g.cig;
        let cvn = g.cog.div_ceil(l);
        let wp = g.padded_w();
        let xg = x_rows * wp * cig;
        let dg = (r1 - r0) * g.ow * cvn * l;
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
        let img = g.h * g.w * g.cin;
        for seg in segments {
            let src = &x[seg.n * img + seg.ih_lo * g.w * g.cin..]
                [..(seg.ih_hi - seg.ih_lo) * g.w * g.cin];
            gm.copy_rows(s, src, seg.base, xb);
        }
        // Output gradient of (chunk row rr, column ow, group gl): `dyp + dy_at(..)`.
        let (dyp, dy_len, dy_pix, dy_row, dy_group) = match db {
            Some(db) => {
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
                gd.copy_rows(s, &dy[r0 * g.ow * g.cout..r1 * g.ow * g.cout], 0, db);
                let pix = cvn * l;
                (db.as_ptr(), db.len(), pix, g.ow * pix, dg)
            }
            None => {
                let p = dy[r0 * g.ow * g.cout + g0 * g.cog..].as_ptr();
                let len = (r1 - r0) * g.ow * g.cout - g0 * g.cog;
                (p, len, g.cout, g.ow * g.cout, g.cog)
            }
        };

        // Without horizontal dilation the kw taps and the group's channels are one
        // contiguous run per pixel (as in the weight layout).
        let merged = g.dw == 1;
        let k_len = if merged { g.kw * cig } else { cig };
        let kws = if merged { 1 } else { g.kw };
        let bw = ng * g.cog;
        let part_len = part.len();
        let out = part.as_mut_ptr();
        let mut rows = Vec::with_capacity(r1 - r0);
        for gl in 0..ng {
            for kh in 0..g.kh {
                rows.clear();
                for (rr, flat) in (r0..r1).enumerate() {
                    let (n, oh) = (flat / g.oh, flat % g.oh);
                    let Some(ih) = g.in_row(oh, kh) else { continue };
                    let seg = segments
                        .iter()
                        .find(|s| s.n == n)
                        .expect("every row's image has a segment");
                    let xo = gl * xg + (seg.base + ih - seg.ih_lo) * wp * cig;
                    rows.push((xo, gl * dy_group + rr * dy_row));
                }
                let orows: Vec<OuterRow> = rows
                    .iter()
                    .map(|&(xo, yo)| OuterRow {
                        x: xb.as_ptr().wrapping_add(xo),
                        x_pix: g.sw * cig,
                        dy: dyp.wrapping_add(yo),
                        npix: g.ow,
                    })
                    .collect();
                for kw in 0..kws {
                    let x_tap = kw * g.dw * cig;
                    let out_row = (kh * g.kw + kw) * cig;
                    for (v0, nv) in split(cvn, max_nv::<S>()) {
                        let last = (g.cog - (v0 + nv - 1) * l).min(l);
                        for (k0, mi) in split(k_len, max_tile::<S>(nv)) {
                            let out_off = (out_row + k0) * bw + gl * g.cog + v0 * l;
                            if cfg!(debug_assertions) {
                                for &(xo, yo) in &rows {
                                    let xe = xo + x_tap + k0 + (g.ow - 1) * g.sw * cig + mi;
                                    assert!(xe <= xb.len(), "x");
                                    let ye = yo + v0 * l + (g.ow - 1) * dy_pix + nv * l;
                                    assert!(ye <= dy_len, "dy");
                                }
                                let oe = out_off + (mi - 1) * bw + (nv - 1) * l + last;
                                assert!(oe <= part_len, "out");
                            }
                            let a = OuterTile {
                                rows: &orows,
                                x_off: x_tap + k0,
                                dy_off: v0 * l,
                                dy_pix,
                                out: out.wrapping_add(out_off),
                                out_k: bw,
                                last,
                            };
                            macro_rules! call {
                                ($m:literal, $nv:literal) => {
                                    // SAFETY: the offsets were derived from the shape so
                                    // that every read lies in `xb`/`db` and every write
                                    // in `part`, which this task owns; checked in debug
                                    // builds above.
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
}
