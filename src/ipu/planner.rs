//! The planner: splits a layer over the tiles (batch, output rows, channel groups or
//! output channels, input channels) within the memory budget and picks the split with
//! the lowest **estimated** cycles (compute from the codelet estimators on the busiest
//! tile + exchange + syncs).

use super::codelets::{Codelet, ConvGeom, NormGeom, SHIM_WORKERS};
use super::target::{Precision, Target};
use crate::error::{Error, Result};
use crate::kernels::conv::ConvShape;

/// A split of a convolution over tiles.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvSplit {
    /// Parts of the batch.
    pub pn: usize,
    /// Parts of the output rows.
    pub ph: usize,
    /// Parts of the output channels (whole groups for grouped convolutions).
    pub pc: usize,
    /// Parts of the input channels (dense convolutions only; partial sums reduced).
    pub pci: usize,
}

impl ConvSplit {
    /// Tiles used.
    pub fn tiles(&self) -> usize {
        self.pn * self.ph * self.pc * self.pci
    }
}

/// Which pass of a layer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    /// Forward.
    Fwd,
    /// Backward data and weight gradient (with the weight update).
    Bwd,
}

impl Pass {
    /// `"fwd"` or `"bwd"`.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Fwd => "fwd",
            Pass::Bwd => "bwd",
        }
    }
}

/// The **estimated** cost of one pass of one layer.
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct Cost {
    /// Tiles with work.
    pub tiles: usize,
    /// Bytes of the layer's tensors on the busiest tile (plus the reserved bytes).
    pub max_tile_bytes: usize,
    /// Compute cycles (slowest tile per compute set, summed).
    pub compute_cycles: u64,
    /// Exchange cycles.
    pub exchange_cycles: u64,
    /// Sync cycles.
    pub sync_cycles: u64,
    /// Useful FLOPs.
    pub flops: f64,
}

impl Cost {
    /// Total estimated cycles.
    pub fn total(&self) -> u64 {
        self.compute_cycles + self.exchange_cycles + self.sync_cycles
    }
}

/// Planning context: the target, the precision, and bytes per tile reserved by
/// tensors that outlive the layer (saved activations, weights).
#[derive(Clone, Debug)]
pub struct Planner {
    /// The target.
    pub target: Target,
    /// Storage and arithmetic precision of the estimates.
    pub precision: Precision,
    /// Bytes per tile already taken by long-lived tensors.
    pub reserved_bytes: usize,
}

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

/// The busiest tile's share of a convolution under a split: its geometry (input
/// window of the rows its outputs read) and its input-channel slice.
pub fn tile_geom(s: &ConvShape, sp: &ConvSplit) -> ConvGeom {
    let d = &s.desc;
    let nb = d.batch.div_ceil(sp.pn);
    let ohn = s.out_h.div_ceil(sp.ph);
    let span = (ohn - 1) * d.stride_h + d.kernel_h;
    let inhn = span.min(d.in_h);
    let (groups, cin_g, cout_g) = if s.groups > 1 {
        (s.groups.div_ceil(sp.pc), d.group_size, s.cout_per_group)
    } else {
        (
            1,
            d.in_channels.div_ceil(sp.pci),
            d.out_channels.div_ceil(sp.pc),
        )
    };
    ConvGeom {
        nb,
        in_h0: 0,
        in_hn: inhn,
        in_w0: 0,
        in_wn: d.in_w,
        out_h0: 0,
        out_hn: ohn,
        out_w0: 0,
        out_wn: s.out_w,
        kh: d.kernel_h,
        kw: d.kernel_w,
        stride: d.stride_h,
        pad_t: d.padding.top,
        pad_l: d.padding.left,
        groups,
        cin_g,
        cout_g,
    }
}

impl Planner {
    /// A planner for `target` at `precision` with nothing reserved.
    pub fn new(target: Target, precision: Precision) -> Planner {
        Planner {
            target,
            precision,
            reserved_bytes: 0,
        }
    }

    fn exchange(&self, bytes_in: usize, bytes_out: usize) -> u64 {
        (bytes_in.max(bytes_out) as f64 / self.target.exchange_bytes_per_cycle).ceil() as u64
            + self.target.exchange_overhead_cycles
    }

    /// Every split that fits the tiles, ordered (for reproducibility).
    pub fn conv_splits(&self, s: &ConvShape) -> Vec<ConvSplit> {
        let d = &s.desc;
        let tiles = self.target.tiles;
        let pcs = if s.groups > 1 {
            candidates(s.groups)
        } else {
            candidates(d.out_channels.div_ceil(8))
        };
        let pcis = if s.groups > 1 {
            vec![1]
        } else {
            candidates(d.in_channels.div_ceil(16))
        };
        let mut v = Vec::new();
        for pn in candidates(d.batch) {
            for ph in candidates(s.out_h) {
                for &pc in &pcs {
                    for &pci in &pcis {
                        let sp = ConvSplit { pn, ph, pc, pci };
                        if sp.tiles() <= tiles {
                            v.push(sp);
                        }
                    }
                }
            }
        }
        v
    }

    /// The estimated cost of one pass of a convolution under a split, or `None` if
    /// the busiest tile would exceed the budget.
    pub fn conv_cost(&self, s: &ConvShape, sp: &ConvSplit, pass: Pass) -> Result<Option<Cost>> {
        let g = tile_geom(s, sp);
        let eb = self.precision.bytes();
        let depthwise = s.desc.group_size == 1 && s.desc.in_channels == s.desc.out_channels;
        let t = &self.target;
        let est = |c: Codelet| c.estimate(t, self.precision).map(|e| e.cycles);
        let (inb, wb, outb) = (g.in_len() * eb, g.w_len() * eb, g.out_len() * eb);
        let sync = t.sync_cycles;
        let tiles = sp.tiles();
        let mut cost = Cost {
            tiles,
            flops: s.flops() * if pass == Pass::Fwd { 1.0 } else { 2.0 },
            ..Cost::default()
        };
        let mut mem;
        match pass {
            Pass::Fwd => {
                let c = if depthwise {
                    est(Codelet::dw_vmac(g))?
                } else {
                    est(Codelet::conv_amp(g))?
                };
                cost.compute_cycles = c;
                // In: the input window and the weight slice; out: the share of the
                // producer's output this tile holds (about the same bytes).
                cost.exchange_cycles = self.exchange(inb + wb, inb);
                cost.sync_cycles = 2 * sync;
                mem = inb + wb + outb;
                if sp.pci > 1 {
                    // Partial outputs reduced across the input-channel parts.
                    let red = est(Codelet::reduce(sp.pci, g.out_len().div_ceil(sp.pci), false))?;
                    cost.compute_cycles += red;
                    cost.exchange_cycles += self.exchange(outb, outb);
                    cost.sync_cycles += 2 * sync;
                    mem += outb;
                }
            }
            Pass::Bwd => {
                let (bd, wg) = if depthwise {
                    (
                        est(Codelet::dw_vmac_bwd_data(g))?,
                        est(Codelet::dw_vmac_wgrad(g))?
                            + est(Codelet::reduce(SHIM_WORKERS, g.w_len(), false))?,
                    )
                } else {
                    (
                        est(Codelet::conv_amp_bwd_data(g))?,
                        est(Codelet::conv_wgrad_amp(g))?,
                    )
                };
                // Weight-gradient partials reduced over the batch × row parts: each
                // tile reduces a 1/(pn·ph) slice of them.
                let parts = sp.pn * sp.ph;
                let slice = g.w_len().div_ceil(parts);
                let red = if parts > 1 {
                    est(Codelet::reduce(parts, slice, false))?
                } else {
                    0
                };
                let upd = est(Codelet::scaled_add(slice, -1.0))?;
                cost.compute_cycles = bd + wg + red + upd;
                // dy window in (plus x for the weight gradient when not resident),
                // dx out; then the weight-gradient reduction scatter.
                cost.exchange_cycles = self.exchange(outb + wb, inb)
                    + if parts > 1 { self.exchange(wb, wb) } else { 0 };
                cost.sync_cycles = (4 + 2 * (parts > 1) as u64) * sync;
                mem = inb * 2 + wb * 2 + outb;
                if sp.pci > 1 {
                    cost.compute_cycles +=
                        est(Codelet::reduce(sp.pci, g.in_len().div_ceil(sp.pci), false))?;
                    cost.exchange_cycles += self.exchange(inb, inb);
                    cost.sync_cycles += 2 * sync;
                }
            }
        }
        // Vertex state (a handful of vertices per tile) is negligible next to data.
        cost.max_tile_bytes = mem + self.reserved_bytes;
        if cost.max_tile_bytes > t.budget_bytes() {
            return Ok(None);
        }
        Ok(Some(cost))
    }

    /// The cheapest split of a convolution for `pass` (ties: fewer tiles), or an
    /// [`Error::TileMemory`] for the smallest-footprint split if none fits.
    pub fn plan_conv(&self, s: &ConvShape, pass: Pass) -> Result<(ConvSplit, Cost)> {
        let mut best: Option<(ConvSplit, Cost)> = None;
        for sp in self.conv_splits(s) {
            if let Some(c) = self.conv_cost(s, &sp, pass)? {
                let better = match &best {
                    None => true,
                    Some((bs, bc)) => {
                        c.total() < bc.total()
                            || (c.total() == bc.total() && sp.tiles() < bs.tiles())
                    }
                };
                if better {
                    best = Some((sp, c));
                }
            }
        }
        best.ok_or_else(|| {
            // The most-split candidate, to name what does not fit.
            let sp = self
                .conv_splits(s)
                .into_iter()
                .min_by_key(|sp| {
                    let g = tile_geom(s, sp);
                    g.in_len() + g.w_len() + g.out_len()
                })
                .unwrap_or(ConvSplit {
                    pn: 1,
                    ph: 1,
                    pc: 1,
                    pci: 1,
                });
            let g = tile_geom(s, &sp);
            let eb = self.precision.bytes();
            let tensors = vec![
                (
                    "saved activations and weights (reserved)".to_string(),
                    self.reserved_bytes,
                ),
                ("input window".to_string(), g.in_len() * eb),
                ("weights".to_string(), g.w_len() * eb),
                ("output block".to_string(), g.out_len() * eb),
            ];
            let bytes = tensors.iter().map(|t| t.1).sum();
            Error::TileMemory {
                tile: 0,
                bytes,
                budget: self.target.budget_bytes(),
                tensors,
            }
        })
    }

    /// Cost of reducing `elems` elements held as `np` partials (one per producing
    /// tile) with the reduction spread over `tiles` tiles: the gather exchange, the
    /// `ReducePartials` vertices and the scatter of the results back to `fanout`
    /// consumer tiles each receiving `back` elements.
    fn spread_reduce(
        &self,
        elems: usize,
        np: usize,
        tiles: usize,
        sent: usize,
        back: usize,
    ) -> Result<(u64, u64)> {
        let eb = self.precision.bytes();
        let share = elems.div_ceil(tiles.max(1)).max(1);
        let compute = Codelet::reduce(np, share, false)
            .estimate(&self.target, self.precision)?
            .cycles;
        let exchange =
            self.exchange(np * share * eb, sent * eb) + self.exchange(back * eb, share * eb);
        Ok((compute, exchange))
    }

    /// How the Proxy Norm work (channels × 200 quantiles) spreads over `tiles`:
    /// (channels per tile, quantiles per tile, quantile slices per channel).
    fn proxy_split(&self, channels: usize, tiles: usize) -> (usize, usize, usize) {
        let tiles = tiles.max(1);
        if channels >= tiles {
            (channels.div_ceil(tiles), 200, 1)
        } else {
            let m = (tiles / channels).clamp(1, 200);
            (1, 200usize.div_ceil(m), m)
        }
    }

    /// The estimated cost of a normalization (+ activation, + proxy) layer on the
    /// blocks of its producer's split (`blocks` = images, pixels, channels on the
    /// busiest tile; `parts` = row parts per image, channel parts; `tiles` in all):
    /// forward: statistics per block, their reduction spread over the tiles,
    /// finalization per group (spread), broadcast, the Proxy Norm statistics per
    /// channel (spread, then broadcast), the fused apply; backward: the partial sums,
    /// their reductions, the per-group means, the apply, the parameter gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_cost(
        &self,
        blocks: (usize, usize, usize),
        parts: (usize, usize),
        tiles: usize,
        batch: usize,
        channels: usize,
        cg: usize,
        per_sample: bool,
        act: u32,
        proxy: bool,
        pass: Pass,
    ) -> Result<Cost> {
        let (nb, pix, c) = blocks;
        let t = &self.target;
        let eb = self.precision.bytes();
        let est = |cd: Codelet| cd.estimate(t, self.precision).map(|e| e.cycles);
        let groups = channels / cg;
        let geom = NormGeom {
            nb,
            pix,
            c,
            c0: 0,
            groups,
            cg,
            per_sample,
            act,
        };
        let block = nb * pix * c * eb;
        let sync = t.sync_cycles;
        // Statistics rows: per image (GN, LN) or one (BN, summed over the images too).
        let (rows, np) = if per_sample {
            (batch, parts.0)
        } else {
            (1, parts.0 * batch.div_ceil(nb))
        };
        let stat_elems = rows * channels * 2;
        let group_rows = rows * groups;
        let gshare = group_rows.div_ceil(tiles.max(1)).max(1);
        let cshare = channels.div_ceil(tiles.max(1)).max(1);
        let mut cost = Cost {
            tiles,
            flops: (batch * pix * channels * parts.0) as f64 * if act == 1 { 10.0 } else { 5.0 },
            ..Cost::default()
        };
        let (rc, rx) = self.spread_reduce(
            stat_elems,
            np,
            tiles,
            nb * c * 2,
            nb * c.div_ceil(cg).max(1) * 2,
        )?;
        match pass {
            Pass::Fwd => {
                cost.compute_cycles = est(Codelet::norm_stats(nb, pix, c))?
                    + rc
                    + est(Codelet::norm_finalize(gshare, cg, cg, pix * cg, 1e-3))?
                    + est(Codelet::norm_act(geom))?;
                cost.exchange_cycles = rx;
                cost.sync_cycles = 6 * sync;
                if proxy {
                    let (pc, pk, m) = self.proxy_split(channels, tiles);
                    let (rc, rx) = self.spread_reduce(
                        channels * 2,
                        m * SHIM_WORKERS,
                        tiles,
                        pc * 2 * SHIM_WORKERS,
                        0,
                    )?;
                    cost.compute_cycles += est(Codelet::proxy_stats(pc, pk, act))?
                        + rc
                        + est(Codelet::proxy_finalize(cshare, 200, 0.03))?;
                    cost.exchange_cycles += rx + self.exchange(2 * c * eb, 2 * cshare * eb);
                    cost.sync_cycles += 4 * sync;
                }
                cost.max_tile_bytes = 2 * block + nb * c * 2 * eb + self.reserved_bytes;
            }
            Pass::Bwd => {
                // Per-image sums (dx̂, dx̂·x̂) like the statistics; per-channel sums (4 per
                // channel) reduced over every block of the channel.
                let (cc, cx) = self.spread_reduce(
                    channels * 4,
                    parts.0 * batch.div_ceil(nb),
                    tiles,
                    c * 4,
                    0,
                )?;
                cost.compute_cycles = est(Codelet::norm_act_grad_partials(geom))?
                    + rc
                    + cc
                    + est(Codelet::norm_grad_finalize(gshare, cg, cg, pix * cg))?
                    + est(Codelet::norm_act_grad_apply(geom))?
                    + est(Codelet::proxy_grad_finalize(cshare, proxy))?;
                cost.exchange_cycles = rx + cx;
                cost.sync_cycles = 10 * sync;
                if proxy {
                    let (pc, pk, m) = self.proxy_split(channels, tiles);
                    let (rc, rx) = self.spread_reduce(
                        channels * 3,
                        m * SHIM_WORKERS,
                        tiles,
                        pc * 3 * SHIM_WORKERS,
                        0,
                    )?;
                    cost.compute_cycles += est(Codelet::proxy_param_grad(
                        pc,
                        pk,
                        200,
                        act,
                        super::codelets::ProxyScale::Full,
                    ))? + rc;
                    cost.exchange_cycles += rx + self.exchange(4 * pc * eb, 0);
                    cost.sync_cycles += 4 * sync;
                }
                cost.max_tile_bytes =
                    3 * block + nb * c * 2 * eb + c * 4 * eb + self.reserved_bytes;
                cost.flops *= 2.0;
            }
        }
        Ok(cost)
    }

    /// Squeeze-excitation on the blocks of its input: pooled channel sums, their
    /// reduction, the two small fully connected layers on one tile per channel part,
    /// and the gate multiply (backward: the gate gradient, both FCs' gradients and
    /// the pooled gradient added back).
    #[allow(clippy::too_many_arguments)]
    pub fn se_cost(
        &self,
        blocks: (usize, usize, usize),
        parts: (usize, usize),
        tiles: usize,
        batch: usize,
        channels: usize,
        reduced: usize,
        pass: Pass,
    ) -> Result<Cost> {
        let (nb, pix, c) = blocks;
        let t = &self.target;
        let eb = self.precision.bytes();
        let est = |cd: Codelet| cd.estimate(t, self.precision).map(|e| e.cycles);
        // FC on one tile per channel part: [batch × c_part] · [c_part × reduced] and
        // back to [batch × c_part].
        let cpart = channels.div_ceil(parts.1);
        let fc = |ci: usize, co: usize| ConvGeom {
            nb: batch,
            in_hn: 1,
            in_wn: 1,
            out_hn: 1,
            out_wn: 1,
            kh: 1,
            kw: 1,
            stride: 1,
            groups: 1,
            cin_g: ci,
            cout_g: co,
            ..ConvGeom::default()
        };
        let sync = t.sync_cycles;
        let fc_flops = 4.0 * (batch * channels * reduced) as f64;
        let mut cost = Cost {
            tiles,
            flops: fc_flops + (2 * nb * pix * c * tiles) as f64,
            ..Cost::default()
        };
        let gathered = parts.0 * nb.max(1) * c * eb;
        match pass {
            Pass::Fwd => {
                cost.compute_cycles = est(Codelet::channel_sum(nb, pix, c, 1.0))?
                    + est(Codelet::reduce(parts.0, batch * cpart, false))?
                    + est(Codelet::conv_amp(fc(cpart, reduced)))?
                    + est(Codelet::reduce(parts.1, batch * reduced, false))?
                    + est(Codelet::bias_act(batch, reduced, 1))?
                    + est(Codelet::conv_amp(fc(reduced, cpart)))?
                    + est(Codelet::bias_act(batch, cpart, 2))?
                    + est(Codelet::se_gate(nb, pix, c))?;
                cost.exchange_cycles = self.exchange(gathered, nb * c * eb)
                    + self.exchange(
                        parts.1 * batch * reduced * eb,
                        batch * reduced * eb * parts.1,
                    )
                    + self.exchange(nb * c * eb, batch * cpart * eb * parts.0);
                cost.sync_cycles = 14 * sync;
            }
            Pass::Bwd => {
                cost.compute_cycles = est(Codelet::se_gate_grad(nb, pix, c))?
                    + est(Codelet::reduce(parts.0, batch * cpart, false))?
                    + est(Codelet::bias_act_grad(batch, cpart, 2))?
                    + est(Codelet::conv_amp_bwd_data(fc(reduced, cpart)))?
                    + est(Codelet::conv_wgrad_amp(fc(reduced, cpart)))?
                    + est(Codelet::bias_act_grad(batch, reduced, 1))?
                    + est(Codelet::conv_amp_bwd_data(fc(cpart, reduced)))?
                    + est(Codelet::conv_wgrad_amp(fc(cpart, reduced)))?
                    + est(Codelet::pool_grad(nb, pix, c, 1.0))?
                    + est(Codelet::add(nb * pix * c))?;
                cost.exchange_cycles = 2 * self.exchange(gathered, nb * c * eb)
                    + 2 * self.exchange(
                        parts.1 * batch * reduced * eb,
                        batch * reduced * eb * parts.1,
                    );
                cost.sync_cycles = 20 * sync;
                cost.flops *= 2.0;
            }
        }
        cost.max_tile_bytes =
            3 * nb * pix * c * eb + 2 * cpart * reduced * eb + self.reserved_bytes;
        Ok(cost)
    }

    /// An element-wise layer (the skip addition) on `tiles` blocks of `elems`.
    pub fn add_cost(&self, elems: usize, tiles: usize, pass: Pass) -> Result<Cost> {
        let t = &self.target;
        let c = Codelet::add(elems).estimate(t, self.precision)?.cycles;
        Ok(Cost {
            tiles,
            max_tile_bytes: 3 * elems * self.precision.bytes() + self.reserved_bytes,
            compute_cycles: if pass == Pass::Fwd { c } else { 0 },
            exchange_cycles: 0,
            sync_cycles: if pass == Pass::Fwd { t.sync_cycles } else { 0 },
            flops: (elems * tiles) as f64,
        })
    }
}
