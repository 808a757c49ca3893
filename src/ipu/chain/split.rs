//! The split of a convolution's output over the tiles, chosen against the layout its
//! input already has: every candidate (image parts × row parts × channel parts, at
//! most one box per tile) is costed by the codelet estimators of its busiest box
//! (forward, and the backward passes when training), the element-wise work that
//! runs on its boxes after it (norm statistics, the fused apply), and the exchange
//! its input windows need from the input's tiles; the cheapest that fits the tile
//! budget wins. A layer therefore keeps its input's split (only halo rows cross
//! tiles) unless the estimate says another split pays for the exchange.

use super::boxes::{Dist, Grid, Part, remote_elems};
use super::context::Net;
use crate::error::Result;
use crate::ipu::codelets::{Codelet, ConvGeom, NormGeom};
use crate::kernels::conv::ConvShape;

/// The box of output rows `r0..r0+rn`, channels `c0..c0+cn`, images `n0..n0+nb` of
/// convolution `s`: its tile geometry, and the input channel range it reads
/// (`i0`, `icn`).
pub(super) fn out_geom(s: &ConvShape, p: &Part) -> (ConvGeom, usize, usize) {
    let d = &s.desc;
    let (h, w, ci) = (d.in_h, d.in_w, d.in_channels);
    let (kh, st, pt) = (d.kernel_h, d.stride_h, d.padding.top);
    let (cig, cog) = (d.group_size, s.cout_per_group);
    let (a, b) = (p.r0, p.r0 + p.rn);
    let lo = (a * st).saturating_sub(pt).min(h - 1);
    let hi = ((b - 1) * st + kh).saturating_sub(pt).min(h).max(lo + 1);
    let (groups, cin_g, cout_g, i0, icn) = if s.groups > 1 {
        let g0 = p.c0 / cog;
        let ng = p.cn / cog;
        (ng, cig, cog, g0 * cig, ng * cig)
    } else {
        (1, ci, p.cn, 0, ci)
    };
    (
        ConvGeom {
            nb: p.nb,
            in_h0: lo,
            in_hn: hi - lo,
            in_w0: 0,
            in_wn: w,
            out_h0: a,
            out_hn: b - a,
            out_w0: 0,
            out_wn: s.out_w,
            kh,
            kw: d.kernel_w,
            stride: st,
            pad_t: pt,
            pad_l: d.padding.left,
            groups,
            cin_g,
            cout_g,
        },
        i0,
        icn,
    )
}

/// Whether `s` runs on the depthwise (vertical MAC) vertices.
pub(super) fn is_depthwise(s: &ConvShape) -> bool {
    let d = &s.desc;
    d.group_size == 1 && d.in_channels == d.out_channels && s.groups > 1
}

/// Channel alignment of the output split of `s` (whole groups for grouped
/// convolutions).
pub(super) fn out_align(s: &ConvShape) -> usize {
    if s.groups > 1 { s.cout_per_group } else { 1 }
}

/// Part counts worth trying for `max` items: 1–8, then powers of two and 1.5× them,
/// and `max`.
fn candidates(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=max.min(8)).collect();
    let mut p = 16;
    while p < max {
        v.push(p);
        v.push(p * 3 / 2);
        p *= 2;
    }
    v.push(max);
    v.retain(|&x| x >= 1 && x <= max);
    v.sort_unstable();
    v.dedup();
    v
}

/// The first part of `grid` (the largest box: ranges put the short one last).
fn first_part(grid: &Grid) -> Part {
    Part {
        n0: grid.imgs[0].0,
        nb: grid.imgs[0].1 - grid.imgs[0].0,
        r0: grid.rows[0].0,
        rn: grid.rows[0].1 - grid.rows[0].0,
        c0: grid.chans[0].0,
        cn: grid.chans[0].1 - grid.chans[0].0,
        ri: 0,
        tile: 0,
        t: crate::ipu::graph::TensorId(0),
    }
}

/// Share of a tile's budget the resident weight copies of a stage may take, split
/// between its convolutions in proportion to their weights; a layer whose copies would
/// take more broadcasts its weight slices from the masters at every pass instead.
/// An assumption (the rest of the budget is left to activations, masters, gradients
/// and optimizer state).
pub(super) const RESIDENT_SHARE: f64 = 0.35;

/// Whether the weight copies of a box of `w_len` elements (one for inference, a
/// forward and a backward copy when training) fit layer `s`'s share of the resident
/// budget.
fn fits_resident(net: &Net, s: &ConvShape, w_len: usize) -> bool {
    let copies = if net.opts.training { 2 } else { 1 };
    let share = s.w_len as f64 / net.stage_weights.max(s.w_len) as f64;
    let cap = RESIDENT_SHARE * net.g.target.budget_bytes() as f64 * share;
    (copies * w_len * net.eb()) as f64 <= cap
}

/// A box in the middle of `grid`'s rows (a full halo on both sides).
fn middle_part(grid: &Grid) -> Part {
    let mut p = first_part(grid);
    let ri = grid.rows.len() / 2;
    p.r0 = grid.rows[ri].0;
    p.rn = grid.rows[ri].1 - grid.rows[ri].0;
    p.ri = ri;
    p
}

/// The estimated cycles of the split `grid` of `s` fed from `x` (`None`: an input
/// laid out to match) and whether its weights stay resident, or `None` when its
/// busiest box does not fit a quarter of the tile budget (the rest is left to the
/// activations kept alive around it).
fn cost(net: &Net, s: &ConvShape, grid: &Grid, x: Option<&Dist>) -> Result<Option<(u64, bool)>> {
    let t = &net.g.target;
    let p = net.g.precision;
    let est = |c: Codelet| c.estimate(t, p).map(|e| e.cycles);
    let part = first_part(grid);
    let (g, _, _) = out_geom(s, &part);
    let dw = is_depthwise(s);
    let training = net.opts.training;
    // The busiest box's footprint: the larger of the first and a middle box (the
    // first has no halo above it). Training keeps a third of it in flight for the
    // backward pass; inference holds the window next to the box it was gathered from.
    let mid = middle_part(grid);
    let (gm, _, _) = out_geom(s, &mid);
    let foot = |g: &ConvGeom| {
        if training {
            3 * (g.in_len() + g.out_len() + g.w_len())
        } else {
            2 * g.in_len() + g.out_len() + g.w_len()
        }
    };
    if foot(&g).max(foot(&gm)) > net.budget_elems() / 4 {
        return Ok(None);
    }
    let mut cycles = if dw {
        est(Codelet::dw_vmac(g))?
    } else {
        est(Codelet::conv_amp(g))?
    };
    if training {
        cycles += if dw {
            est(Codelet::dw_vmac_bwd_data(g))? + est(Codelet::dw_vmac_wgrad(g))?
        } else {
            est(Codelet::conv_amp_bwd_data(g))? + est(Codelet::conv_wgrad_amp(g))?
        };
    }
    // The norm after it on the same boxes: statistics and the fused apply (and their
    // backward when training).
    let ng = NormGeom {
        nb: g.nb,
        pix: g.out_hn * g.out_wn,
        c: part.cn,
        c0: 0,
        groups: 1,
        cg: part.cn,
        per_sample: true,
        act: 1,
    };
    let ew = est(Codelet::norm_stats(ng.nb, ng.pix, ng.c))? + est(Codelet::norm_act(ng))?;
    cycles += ew * if training { 3 } else { 1 };
    // Weights: resident copies, or a broadcast of the box's slice at every pass
    // (forward, recomputation, backward).
    let resident = fits_resident(net, s, g.w_len());
    if !resident {
        let passes = if !training {
            1
        } else if net.opts.recompute {
            3
        } else {
            2
        };
        let bytes = (passes * g.w_len() * net.eb()) as f64;
        cycles += (bytes / t.exchange_bytes_per_cycle).ceil() as u64;
    }
    // The input windows: what the busiest of a sample of boxes receives.
    if let Some(x) = x {
        let boxes = grid.boxes();
        let samples = boxes.min(8);
        let mut worst = 0usize;
        for k in 0..samples {
            let b = k * boxes / samples;
            let ii = b / (grid.rows.len() * grid.chans.len());
            let ri = (b / grid.chans.len()) % grid.rows.len();
            let ci = b % grid.chans.len();
            let q = Part {
                n0: grid.imgs[ii].0,
                nb: grid.imgs[ii].1 - grid.imgs[ii].0,
                r0: grid.rows[ri].0,
                rn: grid.rows[ri].1 - grid.rows[ri].0,
                c0: grid.chans[ci].0,
                cn: grid.chans[ci].1 - grid.chans[ci].0,
                ri,
                tile: net.box_tile(b, grid),
                t: crate::ipu::graph::TensorId(0),
            };
            let (qg, i0, icn) = out_geom(s, &q);
            let r = remote_elems(x, q.n0, q.nb, qg.in_h0, qg.in_hn, i0, icn, q.tile);
            worst = worst.max(r);
        }
        let bytes = (worst * net.eb()) as f64 * if training { 2.0 } else { 1.0 };
        cycles += (bytes / t.exchange_bytes_per_cycle).ceil() as u64;
    }
    Ok(Some((cycles, resident)))
}

/// The output split of convolution `s` fed from `x` (see the module documentation)
/// and whether its weights stay resident; when no candidate fits, the one with the
/// smallest boxes, weights broadcast (the graph's memory check then names what does
/// not fit).
pub(super) fn choose(net: &Net, s: &ConvShape, x: Option<&Dist>) -> Result<(Grid, bool)> {
    let d = &s.desc;
    let (n, oh, co) = (d.batch, s.out_h, d.out_channels);
    let align = out_align(s);
    let pcs = candidates(co / align);
    let tiles = net.tiles();
    let mut best: Option<(u64, usize, Grid, bool)> = None;
    let mut smallest: Option<(usize, Grid)> = None;
    for pn in candidates(n) {
        for ph in candidates(oh) {
            for &pc in &pcs {
                if pn * ph * pc > tiles {
                    continue;
                }
                let grid = Grid::new(n, oh, co, pn, ph, pc, align);
                let boxes = grid.boxes();
                if boxes > tiles {
                    continue;
                }
                let (g, _, _) = out_geom(s, &first_part(&grid));
                let elems = g.in_len() + g.out_len() + g.w_len();
                if smallest.as_ref().is_none_or(|b| elems < b.0) {
                    smallest = Some((elems, grid.clone()));
                }
                if let Some((c, resident)) = cost(net, s, &grid, x)?
                    && best
                        .as_ref()
                        .is_none_or(|b| c < b.0 || (c == b.0 && boxes < b.1))
                {
                    best = Some((c, boxes, grid, resident));
                }
            }
        }
    }
    Ok(best
        .map(|b| (b.2, b.3))
        .or(smallest.map(|s| (s.1, false)))
        .unwrap_or_else(|| (Grid::new(n, oh, co, 1, 1, 1, align), false)))
}
