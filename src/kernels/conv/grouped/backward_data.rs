//! Backward-data pass: the transposed convolution as a direct convolution over a
//! padded, group-major copy of `dy`, one residue class of input columns at a time.

use super::forward::debug_check;
use super::micro::{ConvTile, GroupMajor, GroupedTable, SlideFn};
use super::slide::{self, SlideRow};
use super::{Geo, SharedOut, Task, TaskGrid, plan_tasks, split, table, with_zeroed};
use crate::error::Result;
use crate::kernels::activation::Activation;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::SimdLevel;
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

/// How a backward-data call splits its work and what scratch it needs; a function of
/// the shape and the level only.
#[derive(Debug)]
pub(super) struct Plan {
    /// The level's microkernels.
    tab: &'static GroupedTable,
    /// The table's sliding-window rows, where [`crate::kernels::conv::sliding_tiles`] chose them
    /// when the plan was made.
    slide: Option<SlideFn>,
    l: usize,
    civn: usize,
    cols: DyCols,
    tasks: Vec<Task>,
    /// Floats of the largest task's padded `dy` copy.
    buf_len: usize,
}

/// The backward-data pass's task split (a function of the shape and level).
pub(super) fn task_grid(level: SimdLevel, g: &Geo) -> TaskGrid {
    let l = table(level).lanes;
    let civn = g.cig.div_ceil(l);
    let cols = DyCols::new(g);
    super::task_grid(
        g.n,
        g.h,
        g.groups,
        g.taps() * g.cog * civn * l,
        cols.width * g.cog,
        |band| band.div_ceil(g.sh) + ((g.kh - 1) * g.dh).div_ceil(g.sh) + 1,
    )
}

impl Plan {
    pub(super) fn new(level: SimdLevel, g: &Geo) -> Plan {
        let tab = table(level);
        let l = tab.lanes;
        let civn = g.cig.div_ceil(l);
        let cols = DyCols::new(g);
        let tasks = plan_tasks(task_grid(level, g));
        let buf_len = tasks
            .iter()
            .map(|t| {
                let (lo, hi) = dy_rows(g, t.r0, t.r0 + t.rows);
                t.ng * (hi - lo) * cols.width * g.cog
            })
            .max()
            .unwrap_or(0);
        Plan {
            tab,
            slide: tab.slide.filter(|_| crate::kernels::conv::sliding_tiles()),
            l,
            civn,
            cols,
            tasks,
            buf_len,
        }
    }

    /// Floats of the transposed weight.
    fn wt_len(&self, g: &Geo) -> usize {
        g.groups * g.taps() * g.cog * self.civn * self.l
    }

    /// The regions [`run`] takes, in order: the transposed weight (per call), the
    /// padded `dy` copies (per worker).
    pub(super) fn layout(&self, g: &Geo, layout: &mut WorkspaceLayout) {
        layout.region(self.wt_len(g)).per_worker(self.buf_len);
    }
}

pub(super) fn run(
    g: &Geo,
    plan: &Plan,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let wt = ws.take(plan.wt_len(g))?;
    let slots = ws.per_worker(plan.buf_len)?;
    pack_transposed(g, w, plan.l, plan.civn, wt);
    let wt = &*wt;
    let cols = plan.cols;
    let out = SharedOut::new(dx);
    plan.tasks.par_iter().for_each(|t| {
        let (oh_lo, oh_hi) = dy_rows(g, t.r0, t.r0 + t.rows);
        let rows = oh_hi - oh_lo;
        with_zeroed(&slots, t.ng * rows * cols.width * g.cog, |buf| {
            BwdDataTask {
                tab: plan.tab,
                slide: plan.slide,
                g,
                dy,
                wt,
                out,
                t: *t,
                cols,
                oh_lo,
                rows,
                buf,
            }
            .run()
        })
    });
    Ok(())
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
fn pack_transposed(g: &Geo, w: &[f32], l: usize, civn: usize, p: &mut [f32]) {
    let row = civn * l;
    let per_group = g.taps() * g.cog * row;
    p.par_chunks_mut(per_group)
        .enumerate()
        .for_each(|(gi, dst)| {
            dst.fill(0.0);
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
}

struct BwdDataTask<'a> {
    tab: &'static GroupedTable,
    slide: Option<SlideFn>,
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

impl BwdDataTask<'_> {
    /// Runs the task: copies the `dy` rows as they are needed and runs the table's
    /// row microkernels.
    fn run(self) {
        let BwdDataTask {
            tab,
            slide,
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
        let l = tab.lanes;
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
        let blocks: Vec<(usize, usize)> = split(civn, tab.max_nv).collect();
        let mr = tab.max_tile[blocks[0].1 - 1];
        let per_row = t.ng * blocks.len() * g.sw.min(g.w) * g.w.div_ceil(g.sw).div_ceil(mr);
        let (sh, sw) = (g.sh as isize, g.sw as isize);
        let mut taps = Vec::with_capacity(g.taps());
        let mut slide_rows = Vec::with_capacity(g.kh);
        let slide_row = slide.filter(|_| g.sw == 1 && g.dw == 1);
        let sliding = |nv: usize| slide::supported(g.kw, 1, cog, nv);
        for ih in t.r0..t.r0 + t.rows {
            let need = rows_end(ih);
            if need > copied {
                let src = &dyi[copied * row_len..need * row_len];
                gm.copy_rows(tab.copy_rows, src, None, copied - oh_lo, buf);
                copied = need;
            }
            let ahead = if ih + 1 < t.r0 + t.rows {
                copied..rows_end(ih + 1)
            } else {
                0..0
            };
            // Offset in `buf` of the dy row that input row `ih` reads through kernel
            // row `kh`, if any.
            let dy_row = |kh: usize| {
                let u = (ih + g.pt) as isize - (kh * g.dh) as isize;
                (u >= 0 && u % sh == 0 && ((u / sh) as usize) < g.oh)
                    .then(|| ((u / sh) as usize - oh_lo) * cols.width * cog)
            };
            let mut step = 0;
            for gl in 0..t.ng {
                let gi = t.g0 + gl;
                let src = buf[gl * g_stride..].as_ptr();
                for &(v0, nv) in &blocks {
                    let last = (g.cig - (v0 + nv - 1) * l).min(l);
                    let w_off = gi * w_group + v0 * l;
                    if let (Some(slide_row), true) = (slide_row, sliding(nv)) {
                        // Stride 1: input column j reads dy column j + pl − kw, i.e.
                        // buffer column (j + pl + pad − (kw − 1)) + (kw − 1 − kw): a
                        // sliding window over the flipped kernel row.
                        let n_tiles = g.w.div_ceil(mr);
                        let pcols = step * g.ow / per_row..(step + n_tiles) * g.ow / per_row;
                        step += n_tiles;
                        gm.prefetch_rows(dyi, ahead.clone(), pcols);
                        slide_rows.clear();
                        for kh in 0..g.kh {
                            let Some(row) = dy_row(kh) else { continue };
                            slide_rows.push((row, (kh * g.kw + g.kw - 1) * cog * w_k));
                        }
                        let col0 = g.pl + cols.pad + 1 - g.kw;
                        let x_row = ((t.n * g.h + ih) * g.w) * g.cin + gi * g.cig + v0 * l;
                        for &(ti, tw) in &slide_rows {
                            debug_check(
                                &[(ti, tw - (g.kw - 1) * cog * w_k)],
                                gl * g_stride + col0 * cog,
                                buf.len(),
                                cog,
                                g.kw * cog,
                                g.w,
                                w_off,
                                wt.len(),
                                w_k,
                                nv * l,
                                x_row,
                                out.len,
                                g.cin,
                                (nv - 1) * l + last,
                            );
                        }
                        let a = SlideRow {
                            src: src.wrapping_add(col0 * cog),
                            rows: &slide_rows,
                            k_len: cog,
                            w: wt.as_ptr().wrapping_add(w_off),
                            w_kw: -((cog * w_k) as isize),
                            w_k,
                            init: std::ptr::null(),
                            dst: out.ptr.wrapping_add(x_row),
                            dst_pix: g.cin,
                            last,
                            width: g.w,
                            kw: g.kw,
                            sw: 1,
                            pix: cog,
                            nv,
                            scale: std::ptr::null(),
                            act: Activation::Identity,
                            res: std::ptr::null(),
                        };
                        // SAFETY: the entry is in this level's table (AVX-512, which
                        // the CPU runs); `sliding` checked the configuration; reads lie
                        // in `buf` (rows copied, columns padded to every column read)
                        // and `wt`, writes in this task's part of `dx` (see the run
                        // below); `debug_check` verifies the bounds in debug builds.
                        unsafe { slide_row(&a) };
                        continue;
                    }
                    for rw in 0..g.sw.min(g.w) {
                        // Input columns rw, rw + sw, … read the same kw taps, from
                        // consecutive dy pixels.
                        taps.clear();
                        for kh in 0..g.kh {
                            let Some(row) = dy_row(kh) else { continue };
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
                        let n_tiles = n_cols.div_ceil(mr);
                        let pcols = step * g.ow / per_row..(step + n_tiles) * g.ow / per_row;
                        step += n_tiles;
                        gm.prefetch_rows(dyi, ahead.clone(), pcols);
                        debug_check(
                            &taps,
                            gl * g_stride,
                            buf.len(),
                            cog,
                            cog,
                            n_cols,
                            w_off,
                            wt.len(),
                            w_k,
                            nv * l,
                            x_row,
                            out.len,
                            g.sw * g.cin,
                            (nv - 1) * l + last,
                        );
                        let a = ConvTile {
                            src,
                            src_pix: cog,
                            w: wt.as_ptr().wrapping_add(w_off),
                            w_k,
                            taps: &taps,
                            k_len: cog,
                            init: std::ptr::null(),
                            dst: out.ptr.wrapping_add(x_row),
                            dst_pix: g.sw * g.cin,
                            last,
                            width: n_cols,
                            scale: std::ptr::null(),
                            act: Activation::Identity,
                            res: std::ptr::null(),
                        };
                        // SAFETY: the offsets were derived from the shape so that every
                        // read lies in `buf` (rows copied above) or `wt`, and every
                        // write in this task's rows and groups of `dx`, which no other
                        // task writes (tasks partition images × rows × groups);
                        // `debug_check` verifies the bounds in debug builds; the entry
                        // is from this level's table.
                        unsafe { (tab.conv(nv, cog))(&a) };
                    }
                }
            }
        }
    }
}
