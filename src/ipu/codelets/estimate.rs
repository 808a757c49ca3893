//! The codelets' cycle estimators (see the parent module's documentation for the
//! model and its PopLibs provenance). Every figure is an **estimated** tile cycle count.

use super::*;

impl Codelet {
    /// The codelet's estimated tile cycles on `t` at precision `p` (see the module
    /// documentation for the model). Monotone in every work size.
    pub fn estimate(&self, t: &Target, p: Precision) -> Result<Estimate> {
        self.fields()?;
        let w = t.workers as u64;
        let vec = t.vec(p);
        let multi = |cycles: u64| {
            Ok(Estimate {
                cycles,
                multi: true,
            })
        };
        let single = |worker_cycles: u64| {
            Ok(Estimate {
                cycles: worker_cycles * w,
                multi: false,
            })
        };
        // popops-style element-wise loop over `rows` rows of `c` channels, rows split
        // over the workers, `cpv` cycles per vector.
        let elementwise = |rows: usize, c: usize, cpv: u64| -> u64 {
            40 + w * (8 + ceil(rows, t.workers) * (4 + ceil(c, vec) * cpv))
        };
        // Channels split over the workers, each looping over `rows` rows.
        let by_channel = |rows: usize, c: usize, cpv: u64| -> u64 {
            40 + w * (8 + ceil(c, t.workers * vec) * (4 + rows as u64 * cpv))
        };
        const SWISH: u64 = 8; // cycles per vector for σ and the product (assumption)
        let act_cost = |a: u32| if a == 0 { 0 } else { SWISH };
        match self.kind {
            Kind::ConvPartialAmp | Kind::ConvPartialAmpBwdData => {
                let g = ConvGeom::from_params(&self.params);
                let (ci, co, elems) = if self.kind == Kind::ConvPartialAmp {
                    (g.cin_g, g.cout_g, g.nb * g.out_hn * g.out_wn)
                } else {
                    // Backward data: input and output channels swap; with stride s
                    // only 1/s² of the window's elements meet a given kernel tap.
                    (
                        g.cout_g,
                        g.cin_g,
                        (g.nb * g.in_hn * g.in_wn).div_ceil(g.stride * g.stride),
                    )
                };
                multi(amp_cycles(t, p, g.groups, ci, co, g.kh * g.kw, elems))
            }
            Kind::ConvWeightGradAmp => {
                // Weight update as a convolution whose input channels are the field
                // (batch × pixels) and whose field is kernel × input channels.
                let g = ConvGeom::from_params(&self.params);
                let field = g.nb * g.out_hn * g.out_wn;
                multi(amp_cycles(
                    t,
                    p,
                    g.groups,
                    field,
                    g.cout_g,
                    1,
                    g.kh * g.kw * g.cin_g,
                ))
            }
            Kind::DepthwiseVMac | Kind::DepthwiseVMacBwdData | Kind::DepthwiseVMacWeightGrad => {
                let g = ConvGeom::from_params(&self.params);
                let (rows, cols, taps) = match self.kind {
                    Kind::DepthwiseVMacBwdData => (
                        g.nb * g.in_hn,
                        g.in_wn,
                        (g.kh * g.kw).div_ceil(g.stride * g.stride),
                    ),
                    _ => (g.nb * g.out_hn, g.out_wn, g.kh * g.kw),
                };
                let per_pixel = taps as u64 * (2 + ceil(g.groups, vec));
                let mut c = 50 + w * ceil(rows, t.workers) * (10 + cols as u64 * per_pixel);
                if self.kind == Kind::DepthwiseVMacWeightGrad {
                    c += w * (g.kh * g.kw) as u64 * ceil(g.groups, vec); // zero partials
                }
                multi(c)
            }
            Kind::ReducePartials => {
                let (np, len) = (self.p(0), self.p(2));
                multi(40 + w * (8 + ceil(ceil(len, t.workers) as usize, vec) * (np as u64 + 1)))
            }
            Kind::NormStats => multi(by_channel(self.p(0) * self.p(1), self.p(2), 2)),
            Kind::ChannelSum => multi(by_channel(self.p(0) * self.p(1), self.p(2), 1)),
            // The channel sums of each group on the 64-bit path (two fp32 sums per
            // cycle, a sum and a sum of squares each), then the group's mean and rstd.
            Kind::NormFinalize | Kind::NormGradFinalize => {
                let (rows, c, cg) = (self.p(0), self.p(1), self.p(2));
                let f32v = t.vec(Precision::F32);
                single(30 + (rows * (c / cg)) as u64 * (20 + 2 * ceil(cg, f32v)))
            }
            Kind::NormAct => {
                let g = NormGeom::from_params(&self.params);
                multi(elementwise(g.nb * g.pix, g.c, 4 + act_cost(g.act)))
            }
            Kind::NormActGradPartials => {
                let g = NormGeom::from_params(&self.params);
                multi(by_channel(g.nb * g.pix, g.c, 12 + 2 * act_cost(g.act)))
            }
            Kind::NormActGradApply => {
                let g = NormGeom::from_params(&self.params);
                multi(elementwise(g.nb * g.pix, g.c, 8 + 2 * act_cost(g.act)))
            }
            // Quantiles split over the workers; channels in vectors.
            Kind::ProxyNormStats => {
                let (act, c, k) = (self.params[0], self.p(1), self.p(2));
                multi(40 + w * (8 + ceil(k, t.workers) * ceil(c, vec) * (3 + act_cost(act))))
            }
            Kind::ProxyNormParamGrad => {
                let (act, c, k) = (self.params[0], self.p(2), self.p(3));
                multi(40 + w * (8 + ceil(k, t.workers) * ceil(c, vec) * (8 + 2 * act_cost(act))))
            }
            Kind::ProxyNormFinalize => single(30 + ceil(self.p(2), vec) * 12),
            Kind::ProxyNormGradFinalize => single(30 + ceil(self.p(1), vec) * 6),
            Kind::BiasAct => multi(elementwise(
                self.p(0),
                self.p(1),
                1 + act_cost(self.params[2]),
            )),
            Kind::BiasActGrad => multi(elementwise(
                self.p(0),
                self.p(1),
                2 + 2 * act_cost(self.params[2]),
            )),
            Kind::PoolGrad | Kind::SeGate => {
                multi(elementwise(self.p(0) * self.p(1), self.p(2), 1))
            }
            Kind::SeGateGrad => multi(by_channel(self.p(0) * self.p(1), self.p(2), 3)),
            Kind::Add => multi(elementwise(1, self.p(0), 1)),
            Kind::ScaledAdd => multi(elementwise(1, self.p(1), 1)),
            // fp32 slots: two-wide vectors whatever the graph's precision; the
            // square root and the divide as a few cycles per vector (assumption).
            Kind::RmsPropTf => multi(
                40 + w
                    * (8 + ceil(ceil(self.p(6), t.workers) as usize, t.vec(Precision::F32)) * 12),
            ),
            Kind::SoftmaxXent => single(30 + self.p(0) as u64 * (20 + ceil(self.p(1), vec) * 20)),
        }
    }
}

/// AMP partial-convolution cycles, after the structure of PopLibs'
/// `getConvPartialnx1SupervisorCycleEstimate` (facts, not code): a supervisor
/// overhead; per conv group, per input-channel group (of `amp_in` channels) and per
/// output-channel group (of `amp_out`) an overhead; per kernel position a coefficient
/// load (`amp_in·amp_out` elements at 8 bytes/cycle) and one AMP pass in which every
/// worker streams its share of the `elems` output elements. One element of one pass is
/// `amp_in·amp_out` MACs; the tile does `amp_macs` MACs per cycle, so a worker spends
/// `amp_in·amp_out / amp_macs` of its cycles (×workers tile cycles) per element.
/// Channels that do not fill a group are padded (the granularity waste that makes
/// depthwise a poor fit for the AMP).
pub fn amp_cycles(
    t: &Target,
    p: Precision,
    groups: usize,
    in_chans: usize,
    out_chans: usize,
    kernel_positions: usize,
    elems: usize,
) -> u64 {
    let w = t.workers as u64;
    let (ai, ao) = (t.amp_in(p), t.amp_out(p));
    let in_groups = ceil(in_chans, ai);
    let out_groups = ceil(out_chans, ao);
    let per_elem = ceil(ai * ao, t.amp_macs(p)).max(1);
    let coeff_load = ceil(ai * ao * p.bytes(), 8);
    let pass = 15 + coeff_load + w * (20 + ceil(elems, t.workers) * per_elem);
    50 + groups as u64
        * (11 + in_groups * (13 + out_groups * (18 + kernel_positions as u64 * pass)))
}
