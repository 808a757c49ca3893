//! Forward pass: a direct convolution over a padded, group-major copy of the input.

use super::micro::{ConvTile, GroupMajor, GroupedTable, SlideFn, offset_res};
use super::slide::{self, SlideRow};
use super::{Geo, SharedOut, Task, TaskGrid, plan_tasks, split, table, with_zeroed};
use crate::error::Result;
use crate::kernels::activation::Activation;
use crate::kernels::conv::pre::{Pre, PreImage};
use crate::kernels::gemm::Post;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::SimdLevel;
use rayon::prelude::*;

/// Where the weights of group `g`, tap `t`, input channel `ci`, output vector `v` are:
/// `data[g·group + (t·cig + ci)·k + v·L]`.
#[derive(Copy, Clone)]
struct Weights<'a> {
    data: &'a [f32],
    group: usize,
    k: usize,
}

/// How a forward call splits its work and what scratch it needs; a function of the
/// shape and the level only.
#[derive(Debug)]
pub(super) struct Plan {
    /// The level's microkernels.
    tab: &'static GroupedTable,
    /// The table's sliding-window rows, where [`crate::kernels::conv::sliding_tiles`] chose them
    /// when the plan was made.
    slide: Option<SlideFn>,
    l: usize,
    cvn: usize,
    /// Whether the weights are packed (`[group][tap][ci][cvn·L]`, zero lanes); else
    /// they are read in place.
    packed: bool,
    tasks: Vec<Task>,
    /// Floats of the largest task's padded input copy.
    buf_len: usize,
}

/// The forward pass's task split (a function of the shape and level).
pub(super) fn task_grid(level: SimdLevel, g: &Geo) -> TaskGrid {
    let l = table(level).lanes;
    let cvn = g.cog.div_ceil(l);
    super::task_grid(
        g.n,
        g.oh,
        g.groups,
        g.taps() * g.cig * cvn * l,
        g.padded_w() * g.cig,
        |band| (band - 1) * g.sh + (g.kh - 1) * g.dh + 1,
    )
}

impl Plan {
    pub(super) fn new(level: SimdLevel, g: &Geo) -> Plan {
        let tab = table(level);
        let l = tab.lanes;
        let cvn = g.cog.div_ceil(l);
        let wp = g.padded_w();
        let tasks = plan_tasks(task_grid(level, g));
        let buf_len = tasks
            .iter()
            .map(|t| t.ng * in_rows(g, t) * wp * g.cig)
            .max()
            .unwrap_or(0);
        Plan {
            tab,
            slide: tab.slide.filter(|_| crate::kernels::conv::sliding_tiles()),
            l,
            cvn,
            // Read the weights in place when each group's output channels are whole
            // vectors.
            packed: !g.cog.is_multiple_of(l),
            tasks,
            buf_len,
        }
    }

    /// Floats of the weights as the kernels read them: packed
    /// (`[group][tap][ci][cvn·L]`) when a group's output channels are not whole
    /// vectors, else the weight itself.
    pub(super) fn packed_len(&self, g: &Geo) -> usize {
        if self.packed {
            g.groups * g.taps() * g.cig * self.cvn * self.l
        } else {
            g.taps() * g.cig * g.cout
        }
    }

    /// Writes the weights as the kernels read them into `out` (at least
    /// [`Plan::packed_len`] floats).
    pub(super) fn pack_weights(&self, g: &Geo, w: &[f32], out: &mut [f32]) {
        if self.packed {
            pack(g, w, self.l, self.cvn, out);
        } else {
            out[..w.len()].copy_from_slice(w);
        }
    }

    /// The weights in `data` (packed by [`Plan::pack_weights`], or the weight itself
    /// when the plan reads it in place).
    fn weights<'a>(&self, g: &Geo, data: &'a [f32]) -> Weights<'a> {
        if self.packed {
            Weights {
                data,
                group: g.taps() * g.cig * self.cvn * self.l,
                k: self.cvn * self.l,
            }
        } else {
            Weights {
                data,
                group: g.cog,
                k: g.cout,
            }
        }
    }

    /// Floats of the packed-weights region of the workspace (none when the weights
    /// are read in place).
    fn weight_region(&self, g: &Geo) -> usize {
        if self.packed { self.packed_len(g) } else { 0 }
    }

    /// The regions [`run`] takes, in order: packed weights, packed bias (per call),
    /// the padded input copies (per worker).
    pub(super) fn layout(&self, g: &Geo, layout: &mut WorkspaceLayout) {
        layout
            .region(self.weight_region(g))
            .region(g.groups * self.cvn * self.l)
            .per_worker(self.buf_len);
    }
}

/// Input rows task `t` reads.
/// The forward pass's input: the tensor and the prologue applied to it as its rows are
/// copied into the tasks' padded buffers.
#[derive(Copy, Clone)]
pub(super) struct Input<'a> {
    pub x: &'a [f32],
    pub pre: Option<Pre<'a>>,
}

fn in_rows(g: &Geo, t: &Task) -> usize {
    let (lo, hi) = g.in_rows(t.r0, t.r0 + t.rows);
    hi - lo
}

/// The forward pass: packs the weights into the workspace if the plan needs them
/// packed, then runs [`run_prepacked`]'s kernels.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    g: &Geo,
    plan: &Plan,
    x: Input<'_>,
    w: &[f32],
    bias: Option<&[f32]>,
    post: Post<'_>,
    y: &mut [f32],
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let region = ws.take(plan.weight_region(g))?;
    let data: &[f32] = if plan.packed {
        plan.pack_weights(g, w, region);
        region
    } else {
        w
    };
    run_kernels(g, plan, x, plan.weights(g, data), bias, post, y, ws)
}

/// The forward pass on weights written by [`Plan::pack_weights`] (the workspace's
/// packed-weights region is skipped).
#[allow(clippy::too_many_arguments)]
pub(super) fn run_prepacked(
    g: &Geo,
    plan: &Plan,
    x: Input<'_>,
    packed: &[f32],
    bias: Option<&[f32]>,
    post: Post<'_>,
    y: &mut [f32],
    ws: &mut Workspace<'_>,
) -> Result<()> {
    ws.take(plan.weight_region(g))?;
    run_kernels(g, plan, x, plan.weights(g, packed), bias, post, y, ws)
}

#[allow(clippy::too_many_arguments)]
fn run_kernels(
    g: &Geo,
    plan: &Plan,
    Input { x, pre }: Input<'_>,
    weights: Weights<'_>,
    bias: Option<&[f32]>,
    post: Post<'_>,
    y: &mut [f32],
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let (l, cvn) = (plan.l, plan.cvn);
    let packed_b = ws.take(g.groups * cvn * l)?;
    let slots = ws.per_worker(plan.buf_len)?;
    // Bias as [group][cvn·L] with zero lanes.
    let bias = bias.map(|b| {
        for (dst, src) in packed_b
            .chunks_exact_mut(cvn * l)
            .zip(b.chunks_exact(g.cog))
        {
            dst[..g.cog].copy_from_slice(src);
            dst[g.cog..].fill(0.0);
        }
        &*packed_b
    });
    let wp = g.padded_w();
    let out = SharedOut::new(y);
    plan.tasks.par_iter().for_each(|t| {
        let (ih_lo, _) = g.in_rows(t.r0, t.r0 + t.rows);
        let in_rows = in_rows(g, t);
        with_zeroed(&slots, t.ng * in_rows * wp * g.cig, |buf| {
            FwdTask {
                tab: plan.tab,
                slide: plan.slide,
                g,
                x,
                pre: pre.map(|p| p.image(t.n)),
                weights,
                bias,
                scale: post.scale,
                act: post.act,
                res: post.residual.map_or(std::ptr::null(), |r| r.as_ptr()),
                out,
                t: *t,
                ih_lo,
                in_rows,
                buf,
            }
            .run()
        });
        if let Some(stats) = post.stats {
            let row = t.n * g.oh + t.r0;
            // SAFETY: rows `r0..r0 + rows` of image `n`, channels of groups
            // `g0..g0 + ng`: this task's output (the tasks partition rows × groups),
            // just written; `y` outlives the region.
            unsafe {
                let at = out.ptr.add(row * g.ow * g.cout);
                let chans = t.g0 * g.cog..(t.g0 + t.ng) * g.cog;
                stats.record(at, row..row + t.rows, chans);
            }
        }
    });
    Ok(())
}

/// `[group][tap][ci][cvn·L]`, zero beyond the group's output channels.
fn pack(g: &Geo, w: &[f32], l: usize, cvn: usize, p: &mut [f32]) {
    let per_group = g.taps() * g.cig * cvn * l;
    p.par_chunks_mut(per_group)
        .enumerate()
        .for_each(|(gi, dst)| {
            for (row, dst) in dst.chunks_exact_mut(cvn * l).enumerate() {
                let src = &w[row * g.cout + gi * g.cog..][..g.cog];
                dst[..g.cog].copy_from_slice(src);
                dst[g.cog..].fill(0.0);
            }
        });
}

struct FwdTask<'a> {
    tab: &'static GroupedTable,
    slide: Option<SlideFn>,
    g: &'a Geo,
    x: &'a [f32],
    /// The prologue's coefficients of the task's image.
    pre: Option<PreImage>,
    weights: Weights<'a>,
    bias: Option<&'a [f32]>,
    /// The epilogue; the scale has `C_out` values, the residual (null: none) `y`'s
    /// layout (checked lengths).
    scale: Option<&'a [f32]>,
    act: Activation,
    res: *const f32,
    out: SharedOut,
    /// Output rows `r0..r0 + rows` of image `n`, groups `g0..g0 + ng`.
    t: Task,
    /// First input row in `buf`.
    ih_lo: usize,
    in_rows: usize,
    /// `[gl][in_rows][padded_w][cig]`, zeroed.
    buf: &'a mut [f32],
}

impl FwdTask<'_> {
    /// Runs the task: copies the input rows as they are needed and runs the table's
    /// row microkernels.
    fn run(self) {
        let FwdTask {
            tab,
            slide,
            g,
            x,
            pre,
            weights,
            bias,
            scale,
            act,
            res,
            out,
            t,
            ih_lo,
            in_rows,
            buf,
        } = self;
        let l = tab.lanes;
        let cig = g.cig;
        let wp = g.padded_w();
        let g_stride = in_rows * wp * cig;
        let img = g.h * g.w * g.cin;
        let xi = &x[t.n * img..][..img];
        // The input rows are copied into `buf` (zero-padded, group-major) just before
        // the first output row that reads them; the rows the next output row adds are
        // prefetched while this one computes.
        let gm = GroupMajor {
            width: g.w,
            src_c: g.cin,
            cg: cig,
            g0: t.g0,
            ng: t.ng,
            pad: g.pl,
            dst_w: wp,
            dst_c: cig,
            g_stride,
        };
        let row_len = g.w * g.cin;
        let rows_end = |oh: usize| g.in_rows(oh, oh + 1).1.max(ih_lo);
        let mut copied = ih_lo;

        // Without horizontal dilation the kw taps of a kernel row and the group's
        // channels are one contiguous run of kw·cig values, in the buffer and in the
        // weights alike.
        let merged = g.dw == 1;
        let k_len = if merged { g.kw * cig } else { cig };
        let cvn = g.cog.div_ceil(l);
        let blocks: Vec<(usize, usize)> = split(cvn, tab.max_nv).collect();
        let mr = tab.max_tile[blocks[0].1 - 1];
        let n_tiles = g.ow.div_ceil(mr);
        let per_row = t.ng * blocks.len() * n_tiles;
        let src_pix = g.sw * cig;
        let mut taps = Vec::with_capacity(g.taps());
        let slide_row = slide.filter(|_| g.dw == 1);
        let sliding = |nv: usize| slide::supported(g.kw, g.sw, cig, nv);
        for oh in t.r0..t.r0 + t.rows {
            let need = rows_end(oh);
            if need > copied {
                let src = &xi[copied * row_len..need * row_len];
                gm.copy_rows(tab.copy_rows, src, pre, copied - ih_lo, buf);
                copied = need;
            }
            let ahead = if oh + 1 < t.r0 + t.rows {
                copied..rows_end(oh + 1)
            } else {
                0..0
            };
            taps.clear();
            for kh in 0..g.kh {
                let Some(ih) = g.in_row(oh, kh) else { continue };
                let row = (ih - ih_lo) * wp * cig;
                if merged {
                    taps.push((row, kh * g.kw * cig * weights.k));
                } else {
                    for kw in 0..g.kw {
                        taps.push((row + kw * g.dw * cig, (kh * g.kw + kw) * cig * weights.k));
                    }
                }
            }
            let mut step = 0;
            for gl in 0..t.ng {
                let gi = t.g0 + gl;
                let src = buf[gl * g_stride..].as_ptr();
                for &(v0, nv) in &blocks {
                    let last = (g.cog - (v0 + nv - 1) * l).min(l);
                    let w_off = gi * weights.group + v0 * l;
                    let init = bias.map_or(std::ptr::null(), |b| b[(gi * cvn + v0) * l..].as_ptr());
                    let scale =
                        scale.map_or(std::ptr::null(), |sc| sc[gi * g.cog + v0 * l..].as_ptr());
                    let y_row = (t.n * g.oh + oh) * g.ow * g.cout + gi * g.cog + v0 * l;
                    // Debug-build bounds of output pixels `ow0..ow0 + m`.
                    let check = |ow0: usize, m: usize| {
                        debug_check(
                            &taps,
                            gl * g_stride + ow0 * src_pix,
                            buf.len(),
                            src_pix,
                            k_len,
                            m,
                            w_off,
                            weights.data.len(),
                            weights.k,
                            nv * l,
                            y_row + ow0 * g.cout,
                            out.len,
                            g.cout,
                            (nv - 1) * l + last,
                        )
                    };
                    let cols = step * g.w / per_row..(step + n_tiles) * g.w / per_row;
                    step += n_tiles;
                    gm.prefetch_rows(xi, ahead.clone(), cols);
                    check(0, g.ow);
                    if let (Some(slide_row), true) = (slide_row, sliding(nv)) {
                        // Without dilation the taps are one per kernel row: the
                        // tile's rows.
                        let a = SlideRow {
                            src,
                            rows: &taps,
                            k_len: cig,
                            w: weights.data.as_ptr().wrapping_add(w_off),
                            w_kw: (cig * weights.k) as isize,
                            w_k: weights.k,
                            init,
                            dst: out.ptr.wrapping_add(y_row),
                            dst_pix: g.cout,
                            last,
                            width: g.ow,
                            kw: g.kw,
                            sw: g.sw,
                            pix: cig,
                            nv,
                            scale,
                            act,
                            res: offset_res(res, y_row),
                        };
                        // SAFETY: the entry is in this level's table (AVX-512, which
                        // the CPU runs); `sliding` checked the configuration; reads lie
                        // in `buf` (the rows are copied and padded to every column the
                        // row reads) and the weights, writes in this task's part of `y`
                        // (see below); `debug_check` verifies the bounds in debug
                        // builds.
                        unsafe { slide_row(&a) };
                        continue;
                    }
                    let a = ConvTile {
                        src,
                        src_pix,
                        w: weights.data.as_ptr().wrapping_add(w_off),
                        w_k: weights.k,
                        taps: &taps,
                        k_len,
                        init,
                        dst: out.ptr.wrapping_add(y_row),
                        dst_pix: g.cout,
                        last,
                        width: g.ow,
                        scale,
                        act,
                        res: offset_res(res, y_row),
                    };
                    // SAFETY: the offsets were derived from the shape so that every
                    // read lies in `buf` (rows copied above) or the weights, and every
                    // write in this task's rows and groups of `y`, which no other task
                    // writes (tasks partition images × rows × groups); `debug_check`
                    // verifies the bounds in debug builds; the entry is from this
                    // level's table.
                    unsafe { (tab.conv(nv, src_pix))(&a) };
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
