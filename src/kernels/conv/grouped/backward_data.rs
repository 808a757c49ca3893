//! Backward-data pass: the transposed convolution as a direct convolution over a
//! padded, group-major copy of `dy`, one residue class of input columns at a time.

use super::forward::debug_check;
use super::micro::{ConvTile, conv_tile, copy, max_nv, max_tile, tile_dispatch};
use super::{Geo, SharedOut, Task, lanes, plan_tasks, split, with_scratch};
use crate::simd::{self, Simd, SimdKernel, SimdLevel};
use rayon::prelude::*;

pub(super) fn run(level: SimdLevel, g: &Geo, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let l = lanes(level);
    let civn = g.cig.div_ceil(l);
    let wt = pack_transposed(g, w, l, civn);
    let tasks = plan_tasks(g.n, g.h, g.groups, 0, |_| 0);
    let out = SharedOut::new(dx);
    // Scratch for the zero-padded copy of a border tile's output gradient.
    let border_len = g.kh * (17 + (g.kw - 1) * g.dw / g.sw) * g.cog;
    tasks.par_iter().for_each(|t| {
        with_scratch(border_len, |buf| {
            simd::dispatch(
                level,
                BwdDataTask {
                    g,
                    dy,
                    wt: &wt,
                    out,
                    t: *t,
                    buf,
                },
            )
        })
    });
}

/// `[group][tap][co][civn·L]`: the weight transposed per group, zero beyond the
/// group's input channels.
fn pack_transposed(g: &Geo, w: &[f32], l: usize, civn: usize) -> Vec<f32> {
    let row = civn * l;
    let per_group = g.taps() * g.cog * row;
    let mut p = vec![0.0f32; g.groups * per_group];
    p.par_chunks_mut(per_group)
        .enumerate()
        .for_each(|(gi, dst)| {
            for t in 0..g.taps() {
                let dst = &mut dst[t * g.cog * row..][..g.cog * row];
                for ci in 0..g.cig {
                    let src = &w[(t * g.cig + ci) * g.cout + gi * g.cog..][..g.cog];
                    for (co, v) in src.iter().enumerate() {
                        dst[co * row + ci] = *v;
                    }
                }
            }
        });
    p
}

struct BwdDataTask<'a> {
    g: &'a Geo,
    dy: &'a [f32],
    wt: &'a [f32],
    out: SharedOut,
    /// Input rows `r0..r0 + rows` of image `n`, groups `g0..g0 + ng`.
    t: Task,
    /// Scratch for border tiles: `[kernel row][column][cog]`.
    buf: &'a mut [f32],
}

impl SimdKernel for BwdDataTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let BwdDataTask {
            g,
            dy,
            wt,
            out,
            t,
            buf,
        } = self;
        let l = S::LANES;
        let cog = g.cog;
        let img = g.oh * g.ow * g.cout;
        let dyi = &dy[t.n * img..][..img];
        let civn = g.cig.div_ceil(l);
        let w_k = civn * l;
        let w_group = g.taps() * cog * w_k;
        let blocks: Vec<(usize, usize)> = split(civn, max_nv::<S>()).collect();
        let mr = max_tile::<S>(blocks[0].1).min(16);
        let (sh, sw) = (g.sh as isize, g.sw as isize);
        let mut rows = Vec::with_capacity(g.kh);
        let mut kws = Vec::with_capacity(g.kw);
        let mut direct = Vec::with_capacity(g.taps());
        let mut border = Vec::with_capacity(g.taps());
        for gl in 0..t.ng {
            let gi = t.g0 + gl;
            for ih in t.r0..t.r0 + t.rows {
                // Output rows (kh, oh) this input row receives gradient from.
                rows.clear();
                for kh in 0..g.kh {
                    let u = (ih + g.pt) as isize - (kh * g.dh) as isize;
                    if u >= 0 && u % sh == 0 && ((u / sh) as usize) < g.oh {
                        rows.push((kh, (u / sh) as usize));
                    }
                }
                for rw in 0..g.sw.min(g.w) {
                    // Input columns rw + j·sw (j < n_cols) read the same kw taps, from
                    // the consecutive output columns j + ob (ob = (rw + pl − kw·dw)/sw).
                    kws.clear();
                    for kw in 0..g.kw {
                        let v = (rw + g.pl) as isize - (kw * g.dw) as isize;
                        if v.rem_euclid(sw) == 0 {
                            kws.push((kw, v.div_euclid(sw)));
                        }
                    }
                    let n_cols = (g.w - rw).div_ceil(g.sw);
                    let ob_min = kws.iter().map(|k| k.1).min().unwrap_or(0);
                    let ob_max = kws.iter().map(|k| k.1).max().unwrap_or(0);
                    // Columns j whose every tap reads inside dy: [j_lo, j_hi).
                    let j_lo = (-ob_min).max(0) as usize;
                    let j_hi = (g.ow as isize - ob_max).clamp(0, n_cols as isize) as usize;
                    direct.clear();
                    for &(kh, oh) in &rows {
                        for &(kw, ob) in &kws {
                            direct.push((
                                (oh * g.ow + (ob - ob_min) as usize) * g.cout,
                                (kh * g.kw + kw) * cog * w_k,
                            ));
                        }
                    }
                    let x_row = ((t.n * g.h + ih) * g.w + rw) * g.cin + gi * g.cig;
                    for (j0, m) in split(n_cols, mr) {
                        let inside = j0 >= j_lo && j0 + m <= j_hi;
                        let (src, src_off, src_len, src_pix, taps) = if direct.is_empty() {
                            // No tap reaches these columns: the tile stores zeros.
                            (dyi.as_ptr(), 0, img, cog, &direct)
                        } else if inside {
                            let off = (j0 as isize + ob_min) as usize * g.cout + gi * cog;
                            (dyi.as_ptr(), off, img, g.cout, &direct)
                        } else {
                            let cols = m + (ob_max - ob_min) as usize;
                            let len = rows.len() * cols * cog;
                            let sb = &mut buf[..len];
                            sb.fill(0.0);
                            // Output column of buffer column 0.
                            let c0 = j0 as isize + ob_min;
                            let col_lo = (-c0).max(0) as usize;
                            let col_hi = (g.ow as isize - c0).clamp(0, cols as isize) as usize;
                            border.clear();
                            for (r, &(kh, oh)) in rows.iter().enumerate() {
                                for col in col_lo..col_hi {
                                    let ow = (c0 + col as isize) as usize;
                                    let from = &dyi[(oh * g.ow + ow) * g.cout + gi * cog..][..cog];
                                    copy(s, from, &mut sb[(r * cols + col) * cog..]);
                                }
                                for &(kw, ob) in &kws {
                                    border.push((
                                        (r * cols + (ob - ob_min) as usize) * cog,
                                        (kh * g.kw + kw) * cog * w_k,
                                    ));
                                }
                            }
                            (sb.as_ptr(), 0, len, cog, &border)
                        };
                        for &(v0, nv) in &blocks {
                            let last = (g.cig - (v0 + nv - 1) * l).min(l);
                            let w_off = gi * w_group + v0 * l;
                            let dst_off = x_row + j0 * g.sw * g.cin + v0 * l;
                            debug_check(
                                taps,
                                src_off,
                                src_len,
                                src_pix,
                                cog,
                                m,
                                w_off,
                                wt.len(),
                                w_k,
                                nv * l,
                                dst_off,
                                out.len,
                                g.sw * g.cin,
                                (nv - 1) * l + last,
                            );
                            let a = ConvTile {
                                src: src.wrapping_add(src_off),
                                src_pix,
                                w: wt.as_ptr().wrapping_add(w_off),
                                w_k,
                                taps,
                                k_len: cog,
                                init: std::ptr::null(),
                                dst: out.ptr.wrapping_add(dst_off),
                                dst_pix: g.sw * g.cin,
                                last,
                            };
                            macro_rules! call {
                                ($m:literal, $nv:literal) => {
                                    // SAFETY: the offsets were derived from the shape so
                                    // that every read lies in `dy`, the border copy or
                                    // `wt`, and every write in this task's rows and
                                    // groups of `dx`, which no other task writes (tasks
                                    // partition images × rows × groups); `debug_check`
                                    // verifies the bounds in debug builds.
                                    unsafe { conv_tile::<S, $m, $nv>(s, &a) }
                                };
                            }
                            tile_dispatch!(nv, m, call);
                        }
                    }
                }
            }
        }
    }
}
