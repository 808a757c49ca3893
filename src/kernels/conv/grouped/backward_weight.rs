//! Backward-weight pass: per fixed chunk of output rows and block of groups, outer
//! products of input channels × output-gradient vectors accumulated in registers over
//! the chunk's pixels; per-chunk `f32` partials added in chunk order.

use super::micro::{
    GroupMajor, OuterRow, OuterTile, copy, max_nv, max_tile, outer_tile, tile_dispatch,
};
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
    let gbs = g.groups.div_ceil(MIN_TASKS.div_ceil(chunks).min(g.groups));
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
    // Output gradients are read in place when each group's channels are whole vectors;
    // otherwise copied per task as [gl][row][ow][cvn·L] with zero lanes.
    let cvn = g.cog.div_ceil(l);
    let dy_copy = !g.cog.is_multiple_of(l);
    // In a dense convolution without horizontal dilation the kw taps and channels of a
    // kernel row are one contiguous run (in `x` and in the weight); border pixels then
    // read zero-padded windows of kw·C_in values.
    let dense = g.groups == 1 && g.dw == 1;
    let (in_lo, in_hi) = g.interior_cols();
    let n_border = if dense { in_lo + (g.ow - in_hi) } else { 0 };
    jobs.into_par_iter().for_each(|(c, g0, ng, part)| {
        let r0 = c * chunk_rows;
        let r1 = (r0 + chunk_rows).min(rows);
        let dy_len = if dy_copy {
            ng * (r1 - r0) * g.ow * cvn * l
        } else {
            0
        };
        let win_len = (r1 - r0) * n_border * g.kw * g.cin;
        with_scratch(dy_len + win_len, |buf| {
            let (db, win) = buf.split_at_mut(dy_len);
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
                    dense,
                    interior: (in_lo, in_hi),
                    db: dy_copy.then_some(db),
                    win,
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
    /// Dense without horizontal dilation: kw taps merged into the channel axis.
    dense: bool,
    /// Output columns whose every kw tap is inside the image.
    interior: (usize, usize),
    /// `[gl][r1 − r0][ow][cvn·L]`, zeroed, when `dy` is not read in place.
    db: Option<&'a mut [f32]>,
    /// Border windows (dense only): `[row][border pixel][kw·C_in]`.
    win: &'a mut [f32],
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
            dense,
            interior: (in_lo, in_hi),
            db,
            win,
            part,
        } = self;
        let l = S::LANES;
        let cig = g.cig;
        let cvn = g.cog.div_ceil(l);
        let nr = r1 - r0;
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
                    g_stride: nr * g.ow * cvn * l,
                };
                gd.copy_rows(s, &dy[r0 * g.ow * g.cout..r1 * g.ow * g.cout], 0, db);
                let pix = cvn * l;
                (db.as_ptr(), db.len(), pix, g.ow * pix, nr * g.ow * pix)
            }
            None => {
                let p = dy[r0 * g.ow * g.cout + g0 * g.cog..].as_ptr();
                (
                    p,
                    nr * g.ow * g.cout - g0 * g.cog,
                    g.cout,
                    g.ow * g.cout,
                    g.cog,
                )
            }
        };
        let dy_at = |gl: usize, rr: usize, ow: usize| gl * dy_group + rr * dy_row + ow * dy_pix;

        let img = g.h * g.w * g.cin;
        let k_len = if dense { g.kw * g.cin } else { cig };
        let kws = if dense { 1 } else { g.kw };
        let bw = ng * g.cog;
        let part_len = part.len();
        let out = part.as_mut_ptr();
        let blocks: Vec<(usize, usize)> = split(cvn, max_nv::<S>()).collect();
        let n_border = in_lo + (g.ow - in_hi);
        let mut rows: Vec<OuterRow> = Vec::with_capacity(3 * nr);
        // (x offset, x length) of each row for the debug bounds check.
        let mut extents: Vec<(usize, usize, usize)> = Vec::with_capacity(3 * nr);
        for gl in 0..ng {
            let gi = g0 + gl;
            for kh in 0..g.kh {
                if dense && n_border > 0 {
                    // Zero-padded windows of the border pixels of every row.
                    for (rr, flat) in (r0..r1).enumerate() {
                        let (n, oh) = (flat / g.oh, flat % g.oh);
                        let Some(ih) = g.in_row(oh, kh) else { continue };
                        let x_row = n * img + ih * g.w * g.cin;
                        let wrow = &mut win[rr * n_border * k_len..][..n_border * k_len];
                        let border = (0..in_lo).chain(in_hi..g.ow);
                        for (wdst, ow) in wrow.chunks_exact_mut(k_len).zip(border) {
                            wdst.fill(0.0);
                            for kw in 0..g.kw {
                                let iw = (ow * g.sw + kw) as isize - g.pl as isize;
                                if iw >= 0 && (iw as usize) < g.w {
                                    let from = &x[x_row + iw as usize * g.cin..][..g.cin];
                                    copy(s, from, &mut wdst[kw * g.cin..]);
                                }
                            }
                        }
                    }
                }
                for kw in 0..kws {
                    rows.clear();
                    extents.clear();
                    for (rr, flat) in (r0..r1).enumerate() {
                        let (n, oh) = (flat / g.oh, flat % g.oh);
                        let Some(ih) = g.in_row(oh, kh) else { continue };
                        let x_row = n * img + ih * g.w * g.cin;
                        if dense {
                            // The border windows, then the interior read in place.
                            let wrow = rr * n_border * k_len;
                            for (b0, o0, np) in [(0, 0, in_lo), (in_lo, in_hi, g.ow - in_hi)] {
                                if np > 0 {
                                    rows.push(OuterRow {
                                        x: win[wrow + b0 * k_len..].as_ptr(),
                                        x_pix: k_len,
                                        dy: dyp.wrapping_add(dy_at(gl, rr, o0)),
                                        npix: np,
                                    });
                                    extents.push((usize::MAX, 0, dy_at(gl, rr, o0)));
                                }
                            }
                            if in_hi > in_lo {
                                let xo = x_row + (in_lo * g.sw - g.pl) * g.cin;
                                rows.push(OuterRow {
                                    x: x.as_ptr().wrapping_add(xo),
                                    x_pix: g.sw * g.cin,
                                    dy: dyp.wrapping_add(dy_at(gl, rr, in_lo)),
                                    npix: in_hi - in_lo,
                                });
                                extents.push((xo, in_hi - in_lo, dy_at(gl, rr, in_lo)));
                            }
                        } else {
                            let (lo, hi) = g.valid_cols(kw);
                            if hi > lo {
                                let xo = x_row + (lo * g.sw + kw * g.dw - g.pl) * g.cin + gi * cig;
                                rows.push(OuterRow {
                                    x: x.as_ptr().wrapping_add(xo),
                                    x_pix: g.sw * g.cin,
                                    dy: dyp.wrapping_add(dy_at(gl, rr, lo)),
                                    npix: hi - lo,
                                });
                                extents.push((xo, hi - lo, dy_at(gl, rr, lo)));
                            }
                        }
                    }
                    let out_row = (kh * g.kw + kw) * cig;
                    for &(v0, nv) in &blocks {
                        let last = (g.cog - (v0 + nv - 1) * l).min(l);
                        for (k0, mi) in split(k_len, max_tile::<S>(nv)) {
                            let out_off = (out_row + k0) * bw + gl * g.cog + v0 * l;
                            if cfg!(debug_assertions) {
                                for (r, &(xo, np, yo)) in rows.iter().zip(&extents) {
                                    if xo != usize::MAX {
                                        assert!(xo + (np - 1) * r.x_pix + k0 + mi <= x.len());
                                    }
                                    let ye = yo + v0 * l + (r.npix - 1) * dy_pix + nv * l;
                                    assert!(ye <= dy_len, "dy");
                                }
                                let oe = out_off + (mi - 1) * bw + (nv - 1) * l + last;
                                assert!(oe <= part_len, "out");
                            }
                            let a = OuterTile {
                                rows: &rows,
                                x_off: k0,
                                dy_off: v0 * l,
                                dy_pix,
                                out: out.wrapping_add(out_off),
                                out_k: bw,
                                last,
                            };
                            macro_rules! call {
                                ($m:literal, $nv:literal) => {
                                    // SAFETY: the row pointers and offsets were derived
                                    // from the shape so that every read lies in `x`, the
                                    // border windows or the output gradient, and every
                                    // write in `part`, which this task owns; checked in
                                    // debug builds above.
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
