//! Forward pass: a direct convolution over a padded, group-major copy of the input.

use super::micro::{ConvTile, conv_tile, copy, max_nv, max_tile, prefetch_pixels, tile_dispatch};
use super::{Geo, SharedOut, Task, lanes, plan_tasks, split, with_scratch};
use crate::simd::{self, Simd, SimdKernel, SimdLevel};
use rayon::prelude::*;

/// Where the weights of group `g`, tap `t`, input channel `ci`, output vector `v` are:
/// `data[g·group + (t·cig + ci)·k + v·L]`.
#[derive(Copy, Clone)]
struct Weights<'a> {
    data: &'a [f32],
    group: usize,
    k: usize,
}

pub(super) fn run(
    level: SimdLevel,
    g: &Geo,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let l = lanes(level);
    let cvn = g.cog.div_ceil(l);
    // Read the weights in place when each group's output channels are whole vectors;
    // otherwise pack them as [group][tap][ci][cvn·L] with zero lanes.
    let packed = (!g.cog.is_multiple_of(l)).then(|| pack(g, w, l, cvn));
    let weights = match &packed {
        Some(p) => Weights {
            data: p,
            group: g.taps() * g.cig * cvn * l,
            k: cvn * l,
        },
        None => Weights {
            data: w,
            group: g.cog,
            k: g.cout,
        },
    };
    // Bias as [group][cvn·L] with zero lanes.
    let bias = bias.map(|b| {
        let mut p = vec![0.0f32; g.groups * cvn * l];
        for (dst, src) in p.chunks_exact_mut(cvn * l).zip(b.chunks_exact(g.cog)) {
            dst[..g.cog].copy_from_slice(src);
        }
        p
    });
    let tasks = plan_tasks(g.n, g.oh, g.groups, 0, |_| 0);
    let out = SharedOut::new(y);
    let bias = bias.as_deref();
    // Scratch for the zero-padded copy of a border tile's input.
    let border_len = g.kh * (15 * g.sw + (g.kw - 1) * g.dw + 1) * g.cig;
    tasks.par_iter().for_each(|t| {
        with_scratch(border_len, |buf| {
            simd::dispatch(
                level,
                FwdTask {
                    g,
                    x,
                    weights,
                    bias,
                    out,
                    t: *t,
                    buf,
                },
            )
        })
    });
}

/// `[group][tap][ci][cvn·L]`, zero beyond the group's output channels.
fn pack(g: &Geo, w: &[f32], l: usize, cvn: usize) -> Vec<f32> {
    let per_group = g.taps() * g.cig * cvn * l;
    let mut p = vec![0.0f32; g.groups * per_group];
    p.par_chunks_mut(per_group)
        .enumerate()
        .for_each(|(gi, dst)| {
            for (row, dst) in dst.chunks_exact_mut(cvn * l).enumerate() {
                let src = &w[row * g.cout + gi * g.cog..][..g.cog];
                dst[..g.cog].copy_from_slice(src);
            }
        });
    p
}

struct FwdTask<'a> {
    g: &'a Geo,
    x: &'a [f32],
    weights: Weights<'a>,
    bias: Option<&'a [f32]>,
    out: SharedOut,
    /// Output rows `r0..r0 + rows` of image `n`, groups `g0..g0 + ng`.
    t: Task,
    /// Scratch for border tiles: `[kernel row][column][cig]`.
    buf: &'a mut [f32],
}

impl SimdKernel for FwdTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let FwdTask {
            g,
            x,
            weights,
            bias,
            out,
            t,
            buf,
        } = self;
        let l = S::LANES;
        let cig = g.cig;
        let cvn = g.cog.div_ceil(l);
        let img = g.h * g.w * g.cin;
        let xi = &x[t.n * img..][..img];
        // Interior tiles read `x` in place. In a dense convolution without horizontal
        // dilation the kw taps and the channels of a kernel row are one contiguous run
        // of kw·C_in values, in `x` and in the weights alike.
        let dense = g.groups == 1 && g.dw == 1;
        let k_direct = if dense { g.kw * g.cin } else { cig };
        // Border tiles read a zero-padded copy `[kernel row][column][cig]`, where the kw
        // taps and channels are contiguous whenever there is no horizontal dilation.
        let k_border = if g.dw == 1 { g.kw * cig } else { cig };
        let (in_lo, in_hi) = g.interior_cols();
        let span_w = (g.kw - 1) * g.dw + 1;
        let blocks: Vec<(usize, usize)> = split(cvn, max_nv::<S>()).collect();
        let mr = max_tile::<S>(blocks[0].1).min(16);
        let mut rows = Vec::with_capacity(g.kh);
        let mut next = Vec::with_capacity(g.kh);
        let mut direct = Vec::with_capacity(g.taps());
        let mut border = Vec::with_capacity(g.taps());
        for gl in 0..t.ng {
            let gi = t.g0 + gl;
            for oh in t.r0..t.r0 + t.rows {
                rows.clear();
                direct.clear();
                for kh in 0..g.kh {
                    let Some(ih) = g.in_row(oh, kh) else { continue };
                    rows.push((kh, ih));
                    let row = ih * g.w * g.cin;
                    if dense {
                        direct.push((row, kh * g.kw * g.cin * weights.k));
                    } else {
                        for kw in 0..g.kw {
                            direct.push((
                                row + kw * g.dw * g.cin,
                                (kh * g.kw + kw) * cig * weights.k,
                            ));
                        }
                    }
                }
                // Input rows the next output row reads first: prefetched a slice per
                // tile, so that they arrive while this row computes.
                let last_ih = rows.last().map_or(0, |r| r.1);
                next.clear();
                if oh + 1 < t.r0 + t.rows {
                    for kh in 0..g.kh {
                        match g.in_row(oh + 1, kh) {
                            Some(ih) if rows.is_empty() || ih > last_ih => next.push(ih),
                            _ => {}
                        }
                    }
                }
                let n_tiles = g.ow.div_ceil(mr);
                let y_row = (t.n * g.oh + oh) * g.ow * g.cout + gi * g.cog;
                for (i, (ow0, m)) in split(g.ow, mr).enumerate() {
                    for &ih in &next {
                        let base = xi.as_ptr().wrapping_add(ih * g.w * g.cin + gi * cig);
                        let cols = i * g.w / n_tiles..(i + 1) * g.w / n_tiles;
                        prefetch_pixels(base, cols, g.cin, cig);
                    }
                    let (src, src_off, src_len, src_pix, taps, k_len) =
                        if ow0 >= in_lo && ow0 + m <= in_hi {
                            let off = gi * cig + (ow0 * g.sw - g.pl) * g.cin;
                            (xi.as_ptr(), off, img, g.sw * g.cin, &direct, k_direct)
                        } else {
                            let cols = (m - 1) * g.sw + span_w;
                            let len = rows.len() * cols * cig;
                            let sb = &mut buf[..len];
                            sb.fill(0.0);
                            // Input column of buffer column 0.
                            let c0 = (ow0 * g.sw) as isize - g.pl as isize;
                            let col_lo = (-c0).max(0) as usize;
                            let col_hi = (g.w as isize - c0).clamp(0, cols as isize) as usize;
                            border.clear();
                            for (r, &(kh, ih)) in rows.iter().enumerate() {
                                for col in col_lo..col_hi {
                                    let iw = (c0 + col as isize) as usize;
                                    let from = &xi[(ih * g.w + iw) * g.cin + gi * cig..][..cig];
                                    copy(s, from, &mut sb[(r * cols + col) * cig..]);
                                }
                                let row = r * cols * cig;
                                if g.dw == 1 {
                                    border.push((row, kh * g.kw * cig * weights.k));
                                } else {
                                    for kw in 0..g.kw {
                                        border.push((
                                            row + kw * g.dw * cig,
                                            (kh * g.kw + kw) * cig * weights.k,
                                        ));
                                    }
                                }
                            }
                            (sb.as_ptr(), 0, len, g.sw * cig, &border, k_border)
                        };
                    for &(v0, nv) in &blocks {
                        let last = (g.cog - (v0 + nv - 1) * l).min(l);
                        let w_off = gi * weights.group + v0 * l;
                        let dst_off = y_row + ow0 * g.cout + v0 * l;
                        debug_check(
                            taps,
                            src_off,
                            src_len,
                            src_pix,
                            k_len,
                            m,
                            w_off,
                            weights.data.len(),
                            weights.k,
                            nv * l,
                            dst_off,
                            out.len,
                            g.cout,
                            (nv - 1) * l + last,
                        );
                        let a = ConvTile {
                            src: src.wrapping_add(src_off),
                            src_pix,
                            w: weights.data.as_ptr().wrapping_add(w_off),
                            w_k: weights.k,
                            taps,
                            k_len,
                            init: bias
                                .map_or(std::ptr::null(), |b| b[(gi * cvn + v0) * l..].as_ptr()),
                            dst: out.ptr.wrapping_add(dst_off),
                            dst_pix: g.cout,
                            last,
                        };
                        macro_rules! call {
                            ($m:literal, $nv:literal) => {
                                // SAFETY: the offsets were derived from the shape so that
                                // every read lies in `x`, the border copy or the weights,
                                // and every write in this task's rows and groups of `y`,
                                // which no other task writes (tasks partition images ×
                                // rows × groups); `debug_check` verifies the bounds in
                                // debug builds.
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

/// Debug-build bounds check of one [`ConvTile`] call (offsets relative to the slices).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn debug_check(
    taps: &[(usize, usize)],
    src_off: usize,
    src_len: usize,
    src_pix: usize,
    k_len: usize,
    m: usize,
    w_off: usize,
    w_len: usize,
    w_k: usize,
    w_vec: usize,
    dst_off: usize,
    dst_len: usize,
    dst_pix: usize,
    dst_vec: usize,
) {
    if cfg!(debug_assertions) {
        for &(ti, tw) in taps {
            assert!(src_off + ti + (m - 1) * src_pix + k_len <= src_len, "src");
            assert!(w_off + tw + (k_len - 1) * w_k + w_vec <= w_len, "w");
        }
        assert!(dst_off + (m - 1) * dst_pix + dst_vec <= dst_len, "dst");
    }
}
