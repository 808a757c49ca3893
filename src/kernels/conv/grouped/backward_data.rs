//! Backward-data pass: the transposed convolution as a direct convolution over a
//! padded, group-major copy of `dy`, one residue class of input columns at a time.

use super::forward::debug_check;
use super::micro::{
    ConvTile, GroupMajor, conv_dispatch, conv_tile, max_nv, max_tile, prefetch_pixels,
};
use super::{Geo, SharedOut, Task, lanes, plan_tasks, split, with_scratch};
use crate::simd::{self, Simd, SimdKernel, SimdLevel};
use rayon::prelude::*;

/// Columns of the padded `dy` rows: `pad` zero pixels on the left, then enough pixels
/// for every `ow = (iw + pl − kw·dw) / sw` any input column reads.
#[derive(Copy, Clone, Debug)]
struct DyCols {
    pad: usize,
    width: usize,
}

impl DyCols {
    fn new(g: &Geo) -> DyCols {
        let lowest = g.pl as isize - ((g.kw - 1) * g.dw) as isize;
        let pad = (-lowest.div_euclid(g.sw as isize)).max(0) as usize;
        let highest = (g.w - 1 + g.pl) / g.sw;
        DyCols {
            pad,
            width: pad + g.ow.max(highest + 1),
        }
    }
}

pub(super) fn run(level: SimdLevel, g: &Geo, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    let l = lanes(level);
    let civn = g.cig.div_ceil(l);
    let wt = pack_transposed(g, w, l, civn);
    let cols = DyCols::new(g);
    let w_group = g.taps() * g.cog * civn * l;
    let tasks = plan_tasks(g.n, g.h, g.groups, w_group, cols.width * g.cog, |band| {
        band.div_ceil(g.sh) + ((g.kh - 1) * g.dh).div_ceil(g.sh) + 1
    });
    let out = SharedOut::new(dx);
    tasks.par_iter().for_each(|t| {
        let (oh_lo, oh_hi) = dy_rows(g, t.r0, t.r0 + t.rows);
        let rows = oh_hi - oh_lo;
        with_scratch(t.ng * rows * cols.width * g.cog, |buf| {
            simd::dispatch(
                level,
                BwdDataTask {
                    g,
                    dy,
                    wt: &wt,
                    out,
                    t: *t,
                    cols,
                    oh_lo,
                    rows,
                    buf,
                },
            )
        })
    });
}

/// Output rows `[lo, hi)` that the input rows `ih0..ih1` receive gradient from.
fn dy_rows(g: &Geo, ih0: usize, ih1: usize) -> (usize, usize) {
    let lo = (ih0 + g.pt)
        .saturating_sub((g.kh - 1) * g.dh)
        .div_ceil(g.sh);
    let hi = ((ih1 - 1 + g.pt) / g.sh + 1).min(g.oh);
    (lo.min(hi), hi)
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
    cols: DyCols,
    /// First `dy` row in `buf`.
    oh_lo: usize,
    rows: usize,
    /// `[gl][rows][cols.width][cog]`, zeroed.
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
            cols,
            oh_lo,
            rows,
            buf,
        } = self;
        let l = S::LANES;
        let cog = g.cog;
        let g_stride = rows * cols.width * cog;
        let img = g.oh * g.ow * g.cout;
        let dyi = &dy[t.n * img..][..img];
        // The dy rows are copied into `buf` (zero-padded, group-major) just before the
        // first input row that reads them; the rows the next input row adds are
        // prefetched while this one computes.
        let gm = GroupMajor {
            width: g.ow,
            src_c: g.cout,
            cg: cog,
            g0: t.g0,
            ng: t.ng,
            pad: cols.pad,
            dst_w: cols.width,
            dst_c: cog,
            g_stride,
        };
        let row_len = g.ow * g.cout;
        let rows_end = |ih: usize| ((ih + g.pt) / g.sh + 1).clamp(oh_lo, oh_lo + rows);
        let mut copied = oh_lo;

        let civn = g.cig.div_ceil(l);
        let w_k = civn * l;
        let w_group = g.taps() * cog * w_k;
        let blocks: Vec<(usize, usize)> = split(civn, max_nv::<S>()).collect();
        let mr = max_tile::<S>(blocks[0].1);
        let per_row = t.ng * blocks.len() * g.sw.min(g.w) * g.w.div_ceil(g.sw).div_ceil(mr);
        let (sh, sw) = (g.sh as isize, g.sw as isize);
        let mut taps = Vec::with_capacity(g.taps());
        for ih in t.r0..t.r0 + t.rows {
            let need = rows_end(ih);
            if need > copied {
                let src = &dyi[copied * row_len..need * row_len];
                gm.copy_rows(s, src, copied - oh_lo, buf);
                copied = need;
            }
            let ahead = if ih + 1 < t.r0 + t.rows {
                copied..rows_end(ih + 1)
            } else {
                0..0
            };
            let mut step = 0;
            for gl in 0..t.ng {
                let gi = t.g0 + gl;
                let src = buf[gl * g_stride..].as_ptr();
                for &(v0, nv) in &blocks {
                    let last = (g.cig - (v0 + nv - 1) * l).min(l);
                    let w_off = gi * w_group + v0 * l;
                    for rw in 0..g.sw.min(g.w) {
                        // Input columns rw, rw + sw, … read the same kw taps, from
                        // consecutive dy pixels.
                        taps.clear();
                        for kh in 0..g.kh {
                            let u = (ih + g.pt) as isize - (kh * g.dh) as isize;
                            if u < 0 || u % sh != 0 || (u / sh) as usize >= g.oh {
                                continue;
                            }
                            let row = ((u / sh) as usize - oh_lo) * cols.width * cog;
                            for kw in 0..g.kw {
                                let v = (rw + g.pl) as isize - (kw * g.dw) as isize;
                                if v.rem_euclid(sw) != 0 {
                                    continue;
                                }
                                let col = (v.div_euclid(sw) + cols.pad as isize) as usize;
                                taps.push((row + col * cog, (kh * g.kw + kw) * cog * w_k));
                            }
                        }
                        let n_cols = (g.w - rw).div_ceil(g.sw);
                        let x_row = ((t.n * g.h + ih) * g.w + rw) * g.cin + gi * g.cig + v0 * l;
                        for (j0, m) in split(n_cols, mr) {
                            // This tile's share of the prefetches.
                            let pcols = step * g.ow / per_row..(step + 1) * g.ow / per_row;
                            step += 1;
                            for oh in ahead.clone() {
                                let base = dyi.as_ptr().wrapping_add(oh * row_len + t.g0 * cog);
                                prefetch_pixels(base, pcols.clone(), g.cout, t.ng * cog);
                            }
                            let src_off = j0 * cog;
                            let dst_off = x_row + j0 * g.sw * g.cin;
                            debug_check(
                                &taps,
                                src_off + gl * g_stride,
                                buf.len(),
                                cog,
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
                                src_pix: cog,
                                w: wt.as_ptr().wrapping_add(w_off),
                                w_k,
                                taps: &taps,
                                k_len: cog,
                                init: std::ptr::null(),
                                dst: out.ptr.wrapping_add(dst_off),
                                dst_pix: g.sw * g.cin,
                                last,
                            };
                            macro_rules! call {
                                ($m:literal, $nv:literal, $pix:literal) => {
                                    // SAFETY: the offsets were derived from the shape so
                                    // that every read lies in `buf` (rows copied above)
                                    // or `wt`, and every write in this task's rows and
                                    // groups of `dx`, which no other task writes (tasks
                                    // partition images × rows × groups); `debug_check`
                                    // verifies the bounds in debug builds.
                                    unsafe { conv_tile::<S, $m, $nv, $pix>(s, &a) }
                                };
                            }
                            conv_dispatch!(nv, m, cog, call);
                        }
                    }
                }
            }
        }
    }
}
