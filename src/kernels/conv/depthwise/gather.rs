//! The forward and backward-data gathers: tasks of destination rows, each row's tap
//! plan, the channel blocks' packed weights and rings, and the table's run
//! microkernels.

use super::columns::{Columns, Ring, Tap};
use super::micro::{DwTable, Gather, PackJob, RowArgs, RowBlock, Run, SlideRow, kind};
use super::{Block, Geo, channel_blocks, gather_scratch};
use crate::error::Result;
use crate::kernels::conv::pre::Pre;
use crate::kernels::gemm::Post;
use crate::kernels::parallel::thread_task_len;
use crate::kernels::scratch::Workspace;
use rayon::prelude::*;
use std::ops::Range;

/// Which gather a [`GatherRows`] task runs.
#[derive(Copy, Clone, PartialEq, Eq)]
pub(super) enum Pass {
    Forward,
    BackwardData,
}

/// Destination rows `row0..` (global `n·rows_per_image + r` indices, as many as `dst`
/// holds) of a forward or backward-data gather.
struct GatherRows<'a> {
    /// The level's microkernels.
    tab: &'static DwTable,
    g: &'a Geo,
    pass: Pass,
    cols: &'a Columns,
    src: &'a [f32],
    /// The forward prologue, applied as source rows are packed into the rings (every
    /// source pixel is, on a plan staged for it).
    pre: Option<Pre<'a>>,
    w: &'a [f32],
    bias: Option<&'a [f32]>,
    dst: &'a mut [f32],
    /// The forward epilogue (none for backward-data); a residual has `dst`'s layout
    /// over the whole tensor.
    post: Post<'a>,
    row0: usize,
    /// The task's scratch ([`gather_scratch`] floats, any contents).
    mem: &'a mut [f32],
}

/// The taps and runs of one destination row, the same for every channel block.
struct RowPlan {
    /// `(kh, global source row, first packed pixel of its ring slot)`.
    rows: Vec<(usize, usize, usize)>,
    taps: Vec<Tap>,
    slide: Vec<SlideRow>,
    /// The row's runs, in order: per class the interior (in place) and the border runs
    /// (from the ring), or one run over whole packed rows.
    runs: Vec<Run>,
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
        plan.runs.clear();
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
            let (s2, k) = (plan.slide.len(), cl.kws.len());
            let run =
                |packed, taps: Range<usize>, slide: Range<usize>, count, src_px, dst_px| Run {
                    packed,
                    taps: taps.start as u32..taps.end as u32,
                    slide: slide.start as u32..slide.end as u32,
                    k: k as u32,
                    count,
                    src_px,
                    dst: dst_px * g.c,
                };
            if cl.ja < cl.jb {
                let d0 = cl.dst0 + cl.ja * cols.dst_step;
                plan.runs
                    .push(run(false, t0..t1, s0..s1, cl.jb - cl.ja, 0, d0));
            }
            if cl.ja == cl.count {
                // Whole packed rows: one run.
                plan.runs
                    .push(run(true, t1..t2, s1..s2, cl.count, 0, cl.dst0));
            } else if cl.ja > 0 || cl.jb < cl.count {
                plan.runs.push(run(true, t1..t2, s2..s2, cl.ja, 0, cl.dst0));
                let d1 = cl.dst0 + cl.jb * cols.dst_step;
                plan.runs
                    .push(run(true, t1..t2, s2..s2, cl.count - cl.jb, cl.jb, d1));
            }
        }
        plan.runs.retain(|r| r.count > 0);
    }

    /// Copies one channel block of the weights (and bias) into the packed buffers
    /// (`[kh·kw][vb]` from `kh·kw·c0`, `[vb]` from `c0`, `vb` floats per block), zero
    /// lanes past the block's channels.
    fn pack_weights(&self, b: Block, vb: usize, w: &mut [f32], bias: &mut [f32]) {
        let g = self.g;
        let (c, c0) = (g.c, b.c0);
        let width = if b.tail > 0 { b.tail } else { vb };
        let taps_n = g.kh * g.kw;
        let dst = &mut w[taps_n * c0..][..taps_n * vb];
        for (t, d) in dst.chunks_exact_mut(vb).enumerate() {
            d[..width].copy_from_slice(&self.w[t * c + c0..][..width]);
            d[width..].fill(0.0);
        }
        if let Some(bs) = self.bias {
            let d = &mut bias[c0..][..vb];
            d[..width].copy_from_slice(&bs[c0..][..width]);
            d[width..].fill(0.0);
        }
    }

    /// One destination row `dst` (`dst_len` floats) for a run of channel blocks of one
    /// kind, with their weights packed ([`GatherRows::pack_weights`]) in `w` and
    /// `bias`; `rings` are the blocks' rings and `plan` the row's plan. One
    /// [`GatherRow`](super::micro::GatherRow) call packs the source rows the blocks'
    /// rings lack and runs the row, block by block.
    #[allow(clippy::too_many_arguments)]
    fn row_blocks(
        &self,
        blocks: &[Block],
        rings: &mut [Ring<'_>],
        w: &[f32],
        bias: &[f32],
        plan: &RowPlan,
        dst: &mut [f32],
        res: *const f32,
        scratch: &mut BlockScratch,
    ) {
        let (g, cols, tab) = (self.g, self.cols, self.tab);
        let (l, c) = (tab.lanes, g.c);
        let (b0, last) = (blocks[0], blocks[blocks.len() - 1]);
        let (vb, k_i, tail) = (b0.nv * l, kind(b0), b0.tail);
        let (src_rows, src_len, _, dst_len) = self.dims();
        let taps_n = g.kh * g.kw;
        assert!(blocks.iter().all(|b| kind(*b) == k_i) && rings.len() == blocks.len());
        assert!(last.c0 + if tail > 0 { tail } else { vb } <= c);
        assert!(self.src.len() == g.n * src_rows * src_len && dst.len() == dst_len);
        assert!(w.len() >= taps_n * (last.c0 + vb) && bias.len() >= last.c0 + vb);
        let BlockScratch { jobs, ptrs } = scratch;
        jobs.clear();
        ptrs.clear();
        let src0 = self.src.as_ptr();
        for (b, ring) in blocks.iter().zip(rings.iter_mut()) {
            let src = src0.wrapping_add(b.c0);
            let j0 = jobs.len() as u32;
            if cols.has_border() {
                for &(_, gr, _) in &plan.rows {
                    let pre = self.pre.map(|p| p.image(gr / src_rows).at(b.c0));
                    ring.ensure(gr, src.wrapping_add(gr * src_len), pre, c, vb, jobs);
                }
            }
            let direct = Gather {
                src,
                src_unit: 1,
                dst: dst.as_mut_ptr().wrapping_add(b.c0),
                w: w.as_ptr().wrapping_add(taps_n * b.c0),
                bias: if self.bias.is_some() {
                    bias.as_ptr().wrapping_add(b.c0)
                } else {
                    std::ptr::null()
                },
                src_step: cols.src_step * c,
                dst_step: cols.dst_step * c,
                tail,
                scale: self
                    .post
                    .scale
                    .map_or(std::ptr::null(), |sc| sc[b.c0..].as_ptr()),
                act: self.post.act,
                res: if res.is_null() {
                    res
                } else {
                    res.wrapping_add(b.c0)
                },
            };
            let packed = Gather {
                src: ring.mem.as_ptr(),
                src_unit: vb,
                src_step: cols.src_step * vb,
                ..direct
            };
            ptrs.push(RowBlock {
                direct,
                packed,
                jobs: (j0, jobs.len() as u32),
            });
        }
        // SAFETY: the asserts above and the shapes of `Columns` (every packed offset of
        // every class is inside a ring row, every interior tap a real source pixel,
        // every destination pixel inside its row, every packed copy inside its source
        // row and ring slot) keep all accesses in bounds; the blocks' channels are
        // disjoint; the entries come from this level's table.
        unsafe {
            (tab.row[k_i])(&RowArgs {
                blocks: ptrs,
                jobs,
                c,
                runs: &plan.runs,
                taps: &plan.taps,
                slide: &plan.slide,
            });
        }
    }
}

/// The per-row lists of [`GatherRows::row_blocks`], kept across rows.
#[derive(Default)]
struct BlockScratch {
    jobs: Vec<PackJob>,
    ptrs: Vec<RowBlock>,
}

impl GatherRows<'_> {
    /// Runs the task: packs the weights of every channel block, then every
    /// destination row, all blocks per row.
    fn run(mut self) {
        let (g, cols, tab) = (self.g, self.cols, self.tab);
        let l = tab.lanes;
        let c_pad = g.c.div_ceil(l) * l;
        let slots = if cols.has_border() { g.span_h() } else { 0 };
        let taps_n = g.kh * g.kw;
        let blocks = channel_blocks(g.c, l, tab.nv_max);
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
            self.pack_weights(b, b.nv * l, w, bias);
        }
        let mut plan = RowPlan {
            rows: Vec::with_capacity(g.kh),
            taps: Vec::with_capacity(2 * taps_n * cols.classes.len()),
            slide: Vec::with_capacity(2 * g.kh * cols.classes.len()),
            runs: Vec::with_capacity(3 * cols.classes.len()),
        };
        let (w, bias) = (&*w, &*bias);
        // Consecutive blocks of one kind: one pack and one row call per row for each.
        let mut kinds: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            match kinds.last_mut() {
                Some(r) if kind(blocks[r.start]) == kind(*b) => r.end = i + 1,
                _ => kinds.push(i..i + 1),
            }
        }
        let mut scratch = BlockScratch::default();
        for (r, dst_row) in dst.chunks_exact_mut(dst_len).enumerate() {
            let global = self.row0 + r;
            self.plan_row(global / dst_rows, global % dst_rows, slots, &mut plan);
            // The residual row at this destination row (checked length: `dst`'s).
            let res = self.post.residual.map_or(std::ptr::null(), |r| {
                r[global * dst_len..][..dst_len].as_ptr()
            });
            for k in &kinds {
                let (bs, rs) = (&blocks[k.clone()], &mut rings[k.clone()]);
                self.row_blocks(bs, rs, w, bias, &plan, dst_row, res, &mut scratch);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn run_gather(
    tab: &'static DwTable,
    g: &Geo,
    cols: &Columns,
    pass: Pass,
    src: &[f32],
    pre: Option<Pre<'_>>,
    w: &[f32],
    bias: Option<&[f32]>,
    post: Post<'_>,
    dst: &mut [f32],
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let slots = ws.per_worker(gather_scratch(g, cols, tab.lanes))?;
    let (rows, row_len) = match pass {
        Pass::Forward => (g.n * g.oh, g.ow * g.c),
        Pass::BackwardData => (g.n * g.h, g.w * g.c),
    };
    // Every output element is computed the same way whatever the split, so the split
    // may follow the pool size: up to 4 tasks per thread, as many for each thread
    // (one image's late layers have a handful of rows), each as long as possible
    // otherwise, since a task packs the source rows around its block again.
    let per_task = thread_task_len(
        rows,
        16384usize.div_ceil(row_len),
        rayon::current_num_threads(),
    );
    dst.par_chunks_mut(per_task * row_len)
        .enumerate()
        .for_each(|(i, dst)| {
            slots.with(|mem| {
                GatherRows {
                    tab,
                    g,
                    pass,
                    cols,
                    src,
                    pre,
                    w,
                    bias,
                    dst,
                    post,
                    row0: i * per_task,
                    mem,
                }
                .run();
            });
            if let (Pass::Forward, Some(stats)) = (pass, post.stats) {
                let r0 = i * per_task;
                // SAFETY: this task's rows (all channels), just written; no other task
                // touches them or records their partials.
                unsafe { stats.record(dst.as_ptr(), r0..r0 + dst.len() / row_len, 0..g.c) };
            }
        });
    Ok(())
}
