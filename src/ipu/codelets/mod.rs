//! The codelets: what each vertex reads and writes, how the host model runs it (its C
//! trampoline into `codelets/*.cpp`), and its cycle estimator.
//!
//! Every estimator returns **estimated tile cycles**. They are modelled on the
//! structure of the published PopLibs estimators (Graphcore's `poplibs` repository,
//! `lib/poplin/PerformanceEstimation.hpp`: `getConvPartial1x1SupervisorCycleEstimate`
//! and `getConvPartialnx1SupervisorCycleEstimate` — a supervisor overhead, nested
//! per-conv-group / per-input-channel-group / per-output-channel-group overheads,
//! coefficient loads per AMP pass, and per-worker inner loops over output elements
//! scaled by the number of worker contexts; `lib/popops/popopsCycleEstimators.cpp`:
//! `basicOpLoopCycles` = overhead + ⌈n / vector width⌉ · cycles per vector for
//! element-wise work). Only that structure is taken; the constants are our own
//! assumptions, derived from the [`Target`] rates (AMP MACs per cycle, vector width)
//! rather than copied.

use super::target::{Precision, Target};
use crate::error::{Error, Result};

mod estimate;
mod host;

pub use estimate::amp_cycles;

/// Worker contexts a `MultiVertex` runs on in the host shim
/// (`poplar::MultiVertex::numWorkers()` in `codelets/shim/poplar/Vertex.hpp`); fields
/// with per-worker partials are sized by it.
pub const SHIM_WORKERS: usize = 6;

/// Direction of a vertex field.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Dir {
    /// `poplar::Input`.
    In,
    /// `poplar::Output`.
    Out,
    /// `poplar::InOut`.
    InOut,
}

/// The vertex classes in `codelets/`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// AMP partial convolution, forward (pointwise, grouped, dense stem).
    ConvPartialAmp,
    /// AMP partial convolution, backward data.
    ConvPartialAmpBwdData,
    /// AMP weight gradient.
    ConvWeightGradAmp,
    /// Depthwise forward, vertical MAC on the vector unit.
    DepthwiseVMac,
    /// Depthwise backward data.
    DepthwiseVMacBwdData,
    /// Depthwise weight gradient into per-worker partials.
    DepthwiseVMacWeightGrad,
    /// Sum of `np` partial vectors.
    ReducePartials,
    /// Per (image, channel) sum and sum of squares.
    NormStats,
    /// Sums → (mean, rstd) per group.
    NormFinalize,
    /// Fused normalize, affine, activation, proxy correction.
    NormAct,
    /// Backward partial sums of [`Kind::NormAct`].
    NormActGradPartials,
    /// Backward sums → means per group.
    NormGradFinalize,
    /// Backward of [`Kind::NormAct`] to its input.
    NormActGradApply,
    /// Proxy Norm partial sums (Σ r, Σ r²) over a slice of the quantiles.
    ProxyNormStats,
    /// Proxy Norm (μ, s) from the reduced sums.
    ProxyNormFinalize,
    /// Proxy Norm quantile terms of the parameter gradients over a slice.
    ProxyNormParamGrad,
    /// Norm / Proxy Norm parameter gradients from the reduced sums and terms.
    ProxyNormGradFinalize,
    /// `act(x + bias)`.
    BiasAct,
    /// Gradient of [`Kind::BiasAct`].
    BiasActGrad,
    /// Per (image, channel) scaled sum over pixels.
    ChannelSum,
    /// Gradient of a mean pool.
    PoolGrad,
    /// Squeeze-excitation gate multiply.
    SeGate,
    /// Gradient of [`Kind::SeGate`].
    SeGateGrad,
    /// `a + b`.
    Add,
    /// Softmax cross-entropy and its gradient.
    SoftmaxXent,
    /// `w += scale · dw`.
    ScaledAdd,
    /// One TensorFlow-RMSProp step on an fp32 master slice.
    RmsPropTf,
}

/// Where the Proxy Norm scale `s` is applied (DESIGN.md, "Proxy Norm").
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProxyScale {
    /// `z = (φ(γx+β) − μ)·s` (after the stem and the expansion).
    Full = 0,
    /// `z = φ(γx+β) − μ`, with `s` folded into the SE gate that follows (after the
    /// spatial convolution): the block outputs `z·sigmoid(SE(z))·s`.
    Delayed = 1,
    /// `z = φ(γx+β) − μ` and no scale at all (the head).
    None = 2,
}

/// The tile geometry of a partial convolution (see `codelets/common.hpp`,
/// `ConvGeom`): global coordinates of the input window and the output block on the
/// tile; taps outside the window read zero.
///
/// Layouts: input window `[nb][in_hn][in_wn][groups·cin_g]`, output block
/// `[nb][out_hn][out_wn][groups·cout_g]`, weights `[kh][kw][cin_g][groups·cout_g]`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub struct ConvGeom {
    pub nb: usize,
    pub in_h0: usize,
    pub in_hn: usize,
    pub in_w0: usize,
    pub in_wn: usize,
    pub out_h0: usize,
    pub out_hn: usize,
    pub out_w0: usize,
    pub out_wn: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_t: usize,
    pub pad_l: usize,
    pub groups: usize,
    pub cin_g: usize,
    pub cout_g: usize,
}

impl ConvGeom {
    fn params(&self) -> Vec<u32> {
        [
            self.nb,
            self.in_h0,
            self.in_hn,
            self.in_w0,
            self.in_wn,
            self.out_h0,
            self.out_hn,
            self.out_w0,
            self.out_wn,
            self.kh,
            self.kw,
            self.stride,
            self.pad_t,
            self.pad_l,
            self.groups,
            self.cin_g,
            self.cout_g,
        ]
        .iter()
        .map(|&v| v as u32)
        .collect()
    }
    fn from_params(p: &[u32]) -> ConvGeom {
        let u = |i: usize| p[i] as usize;
        ConvGeom {
            nb: u(0),
            in_h0: u(1),
            in_hn: u(2),
            in_w0: u(3),
            in_wn: u(4),
            out_h0: u(5),
            out_hn: u(6),
            out_w0: u(7),
            out_wn: u(8),
            kh: u(9),
            kw: u(10),
            stride: u(11),
            pad_t: u(12),
            pad_l: u(13),
            groups: u(14),
            cin_g: u(15),
            cout_g: u(16),
        }
    }
    /// A fully connected layer as a 1×1 convolution of `nb` rows:
    /// `[nb][ci] · [ci][co]`.
    pub fn fc(nb: usize, ci: usize, co: usize) -> ConvGeom {
        ConvGeom {
            nb,
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
        }
    }
    /// Elements of the input window.
    pub fn in_len(&self) -> usize {
        self.nb * self.in_hn * self.in_wn * self.groups * self.cin_g
    }
    /// Elements of the output block.
    pub fn out_len(&self) -> usize {
        self.nb * self.out_hn * self.out_wn * self.groups * self.cout_g
    }
    /// Elements of the weight slice.
    pub fn w_len(&self) -> usize {
        self.kh * self.kw * self.cin_g * self.groups * self.cout_g
    }
}

/// Parameters of the fused normalization vertices (`codelets/norm.cpp`): a block of
/// `nb` images × `pix` pixels × `c` channels starting at global channel `c0`; groups of
/// `cg` channels, `groups` in all; statistics per image (`per_sample`) or per batch;
/// activation `act` (0 identity, 1 swish).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub struct NormGeom {
    pub nb: usize,
    pub pix: usize,
    pub c: usize,
    pub c0: usize,
    pub groups: usize,
    pub cg: usize,
    pub per_sample: bool,
    pub act: u32,
}

impl NormGeom {
    fn params(&self) -> Vec<u32> {
        vec![
            self.nb as u32,
            self.pix as u32,
            self.c as u32,
            self.c0 as u32,
            self.groups as u32,
            self.cg as u32,
            self.per_sample as u32,
            self.act,
        ]
    }
    fn from_params(p: &[u32]) -> NormGeom {
        NormGeom {
            nb: p[0] as usize,
            pix: p[1] as usize,
            c: p[2] as usize,
            c0: p[3] as usize,
            groups: p[4] as usize,
            cg: p[5] as usize,
            per_sample: p[6] != 0,
            act: p[7],
        }
    }
    /// Activation elements of the block.
    pub fn len(&self) -> usize {
        self.nb * self.pix * self.c
    }
    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows of the statistics (`nb` per-sample, 1 per-batch).
    pub fn stat_rows(&self) -> usize {
        if self.per_sample { self.nb } else { 1 }
    }
}

/// A codelet with its scalar parameters (the vertex's non-field state).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Codelet {
    /// Which vertex class.
    pub kind: Kind,
    /// Its scalar fields, in the trampoline's order.
    pub params: Vec<u32>,
}

/// An estimate: tile cycles, and whether the vertex uses every worker
/// (`MultiVertex`) or one (`Vertex`, whose figure is worker cycles × workers).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Estimated tile cycles.
    pub cycles: u64,
    /// `true` for a `MultiVertex`.
    pub multi: bool,
}

fn f32_param(x: f32) -> u32 {
    x.to_bits()
}

fn ceil(a: usize, b: usize) -> u64 {
    a.div_ceil(b.max(1)) as u64
}

impl Codelet {
    /// AMP partial convolution, forward: fields `in`, `weights`, `out`.
    pub fn conv_amp(g: ConvGeom) -> Codelet {
        Codelet {
            kind: Kind::ConvPartialAmp,
            params: g.params(),
        }
    }
    /// AMP backward data: fields `dy` (output block), `weights`, `dx` (input window).
    pub fn conv_amp_bwd_data(g: ConvGeom) -> Codelet {
        Codelet {
            kind: Kind::ConvPartialAmpBwdData,
            params: g.params(),
        }
    }
    /// AMP weight gradient: fields `x` (input window), `dy` (output block), `dw`.
    pub fn conv_wgrad_amp(g: ConvGeom) -> Codelet {
        Codelet {
            kind: Kind::ConvWeightGradAmp,
            params: g.params(),
        }
    }
    /// Depthwise forward (`cin_g = cout_g = 1`): fields `in`, `weights`, `out`.
    pub fn dw_vmac(g: ConvGeom) -> Codelet {
        Codelet {
            kind: Kind::DepthwiseVMac,
            params: g.params(),
        }
    }
    /// Depthwise backward data: fields `dy`, `weights`, `dx`.
    pub fn dw_vmac_bwd_data(g: ConvGeom) -> Codelet {
        Codelet {
            kind: Kind::DepthwiseVMacBwdData,
            params: g.params(),
        }
    }
    /// Depthwise weight gradient: fields `x`, `dy`, `partials`
    /// (`[SHIM_WORKERS][kh][kw][C]`).
    pub fn dw_vmac_wgrad(g: ConvGeom) -> Codelet {
        Codelet {
            kind: Kind::DepthwiseVMacWeightGrad,
            params: g.params(),
        }
    }
    /// `out (+)= Σ_p in[p]`: fields `in` (`np·len`), `out` (`len`, InOut).
    pub fn reduce(np: usize, len: usize, accumulate: bool) -> Codelet {
        Codelet {
            kind: Kind::ReducePartials,
            params: vec![np as u32, accumulate as u32, len as u32],
        }
    }
    /// Fields `x` (`[nb][pix][c]`), `out` (`[nb][c][2]`).
    pub fn norm_stats(nb: usize, pix: usize, c: usize) -> Codelet {
        Codelet {
            kind: Kind::NormStats,
            params: vec![nb as u32, pix as u32, c as u32],
        }
    }
    /// Fields `sums` (`[rows][c][2]`), `stats` (`[rows][c/cg][2]`).
    pub fn norm_finalize(rows: usize, c: usize, cg: usize, count: usize, eps: f32) -> Codelet {
        Codelet {
            kind: Kind::NormFinalize,
            params: vec![
                rows as u32,
                c as u32,
                cg as u32,
                count as u32,
                f32_param(eps),
            ],
        }
    }
    /// Fields `x`, `stats`, `gamma`, `beta`, `mu`, `scale`, `z`.
    pub fn norm_act(g: NormGeom) -> Codelet {
        Codelet {
            kind: Kind::NormAct,
            params: g.params(),
        }
    }
    /// Fields as [`Codelet::norm_act`] without `z`, then `dz`, `perImage`
    /// (`[nb][c][2]`), `perChannel` (`[c][4]`).
    pub fn norm_act_grad_partials(g: NormGeom) -> Codelet {
        Codelet {
            kind: Kind::NormActGradPartials,
            params: g.params(),
        }
    }
    /// Fields `sums` (`[rows][c][2]`), `means` (`[rows][c/cg][2]`).
    pub fn norm_grad_finalize(rows: usize, c: usize, cg: usize, count: usize) -> Codelet {
        Codelet {
            kind: Kind::NormGradFinalize,
            params: vec![rows as u32, c as u32, cg as u32, count as u32],
        }
    }
    /// Fields as [`Codelet::norm_act`] without `z`, then `dz`, `gradMeans`, `dx`.
    pub fn norm_act_grad_apply(g: NormGeom) -> Codelet {
        Codelet {
            kind: Kind::NormActGradApply,
            params: g.params(),
        }
    }
    /// Fields `gamma`, `beta`, `beta2`, `gamma2` (`c` each), `q` (a slice of `k`
    /// quantiles), `partials` (`[SHIM_WORKERS][c][2]`: Σ r, Σ r²).
    pub fn proxy_stats(c: usize, k: usize, act: u32) -> Codelet {
        Codelet {
            kind: Kind::ProxyNormStats,
            params: vec![act, c as u32, k as u32],
        }
    }
    /// Fields `sums` (`[c][2]`, reduced over all `k_total` quantiles), `mu`, `scale`.
    pub fn proxy_finalize(c: usize, k_total: usize, eps: f32) -> Codelet {
        Codelet {
            kind: Kind::ProxyNormFinalize,
            params: vec![k_total as u32, f32_param(eps), c as u32],
        }
    }
    /// Fields `sums` (`[c][4]`), `gamma`, `beta`, `beta2`, `gamma2`, `q` (a slice of
    /// `k` of the `k_total` quantiles), `mu`, `scale`, `partials`
    /// (`[SHIM_WORKERS][c][3]`). `mode` says where the scale was applied
    /// ([`ProxyScale`]): with [`ProxyScale::Delayed`] `sums[c][0]` must hold the
    /// gradient of the scale `s_c` (the SE gate's `Σ dout·z·gate`), not `Σ dz·(a−μ)`.
    pub fn proxy_param_grad(
        c: usize,
        k: usize,
        k_total: usize,
        act: u32,
        mode: ProxyScale,
    ) -> Codelet {
        Codelet {
            kind: Kind::ProxyNormParamGrad,
            params: vec![act, k_total as u32, c as u32, k as u32, mode as u32],
        }
    }
    /// Fields `sums` (`[c][4]`), `gamma`, `terms` (`[c][3]`, reduced), `grads`
    /// (`[c][4]`: dγ, dβ, dβ', dγ').
    pub fn proxy_grad_finalize(c: usize, proxy: bool) -> Codelet {
        Codelet {
            kind: Kind::ProxyNormGradFinalize,
            params: vec![proxy as u32, c as u32],
        }
    }
    /// Fields `x` (`[rows][c]`), `bias` (`c`), `y`; `act` 0 none, 1 swish, 2 sigmoid.
    pub fn bias_act(rows: usize, c: usize, act: u32) -> Codelet {
        Codelet {
            kind: Kind::BiasAct,
            params: vec![rows as u32, c as u32, act],
        }
    }
    /// Fields `x`, `bias`, `dy`, `dx`.
    pub fn bias_act_grad(rows: usize, c: usize, act: u32) -> Codelet {
        Codelet {
            kind: Kind::BiasActGrad,
            params: vec![rows as u32, c as u32, act],
        }
    }
    /// Fields `x` (`[nb][pix][c]`), `out` (`[nb][c]`).
    pub fn channel_sum(nb: usize, pix: usize, c: usize, scale: f32) -> Codelet {
        Codelet {
            kind: Kind::ChannelSum,
            params: vec![nb as u32, pix as u32, c as u32, f32_param(scale)],
        }
    }
    /// Fields `g` (`[nb][c]`), `dx` (`[nb][pix][c]`).
    pub fn pool_grad(nb: usize, pix: usize, c: usize, scale: f32) -> Codelet {
        Codelet {
            kind: Kind::PoolGrad,
            params: vec![nb as u32, pix as u32, c as u32, f32_param(scale)],
        }
    }
    /// Fields `x`, `gate` (`[nb][c]`), `y`.
    pub fn se_gate(nb: usize, pix: usize, c: usize) -> Codelet {
        Codelet {
            kind: Kind::SeGate,
            params: vec![nb as u32, pix as u32, c as u32],
        }
    }
    /// Fields `x`, `gate`, `dy`, `dx`, `dgate`.
    pub fn se_gate_grad(nb: usize, pix: usize, c: usize) -> Codelet {
        Codelet {
            kind: Kind::SeGateGrad,
            params: vec![nb as u32, pix as u32, c as u32],
        }
    }
    /// Fields `a`, `b`, `y` (`len` each).
    pub fn add(len: usize) -> Codelet {
        Codelet {
            kind: Kind::Add,
            params: vec![len as u32],
        }
    }
    /// Fields `logits`, `target` (`[n][k]`), `loss` (1), `dlogits`.
    pub fn softmax_xent(n: usize, k: usize) -> Codelet {
        Codelet::softmax_xent_part(n, k, n)
    }
    /// [`Codelet::softmax_xent`] on `n` of a batch's `total` rows: the gradient and
    /// the loss (a partial sum) are divided by `total`.
    pub fn softmax_xent_part(n: usize, k: usize, total: usize) -> Codelet {
        Codelet {
            kind: Kind::SoftmaxXent,
            params: vec![n as u32, k as u32, total as u32],
        }
    }
    /// Fields `w` (InOut), `dw` (`len` each).
    pub fn scaled_add(len: usize, scale: f32) -> Codelet {
        Codelet {
            kind: Kind::ScaledAdd,
            params: vec![f32_param(scale), len as u32],
        }
    }

    /// One TensorFlow-RMSProp step (see [`crate::kernels::optim::RmsPropTf`]) on a
    /// master slice of `len` elements: fields `w`, `g` (the accumulated gradient,
    /// scaled by `grad_scale`, left zero), `ms`, `mom`, all InOut.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsprop(
        len: usize,
        lr: f32,
        decay: f32,
        momentum: f32,
        eps: f32,
        weight_decay: f32,
        grad_scale: f32,
    ) -> Codelet {
        Codelet {
            kind: Kind::RmsPropTf,
            params: vec![
                f32_param(lr),
                f32_param(decay),
                f32_param(momentum),
                f32_param(eps),
                f32_param(weight_decay),
                f32_param(grad_scale),
                len as u32,
            ],
        }
    }

    /// The pairs of fields (by index) that may be the same region of one tensor:
    /// the output of an element-wise codelet that reads each input element once,
    /// before it writes the output element (`z[i] = f(x[i])`), may overwrite its
    /// input in place.
    pub fn in_place(&self) -> &'static [(usize, usize)] {
        match self.kind {
            Kind::NormAct => &[(0, 6)],
            Kind::Add | Kind::SeGate | Kind::BiasAct => &[(0, 2)],
            _ => &[],
        }
    }

    /// The vertex class name (as in `codelets/`).
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::ConvPartialAmp => "ConvPartialAmp",
            Kind::ConvPartialAmpBwdData => "ConvPartialAmpBwdData",
            Kind::ConvWeightGradAmp => "ConvWeightGradAmp",
            Kind::DepthwiseVMac => "DepthwiseVMac",
            Kind::DepthwiseVMacBwdData => "DepthwiseVMacBwdData",
            Kind::DepthwiseVMacWeightGrad => "DepthwiseVMacWeightGrad",
            Kind::ReducePartials => "ReducePartials",
            Kind::NormStats => "NormStats",
            Kind::NormFinalize => "NormFinalize",
            Kind::NormAct => "NormAct",
            Kind::NormActGradPartials => "NormActGradPartials",
            Kind::NormGradFinalize => "NormGradFinalize",
            Kind::NormActGradApply => "NormActGradApply",
            Kind::ProxyNormStats => "ProxyNormStats",
            Kind::ProxyNormFinalize => "ProxyNormFinalize",
            Kind::ProxyNormParamGrad => "ProxyNormParamGrad",
            Kind::ProxyNormGradFinalize => "ProxyNormGradFinalize",
            Kind::BiasAct => "BiasAct",
            Kind::BiasActGrad => "BiasActGrad",
            Kind::ChannelSum => "ChannelSum",
            Kind::PoolGrad => "PoolGrad",
            Kind::SeGate => "SeGate",
            Kind::SeGateGrad => "SeGateGrad",
            Kind::Add => "Add",
            Kind::SoftmaxXent => "SoftmaxXent",
            Kind::ScaledAdd => "ScaledAdd",
            Kind::RmsPropTf => "RmsPropTf",
        }
    }

    fn p(&self, i: usize) -> usize {
        self.params[i] as usize
    }

    /// The fields: name, direction, elements. Errors on inconsistent parameters
    /// (zero sizes where the codelet divides by them, a depthwise geometry with more
    /// than one channel per group, ...).
    pub fn fields(&self) -> Result<Vec<(&'static str, Dir, usize)>> {
        use Dir::*;
        let bad = |m: &str| Err(Error::InvalidArgument(format!("{}: {m}", self.name())));
        let want = match self.kind {
            Kind::ConvPartialAmp
            | Kind::ConvPartialAmpBwdData
            | Kind::ConvWeightGradAmp
            | Kind::DepthwiseVMac
            | Kind::DepthwiseVMacBwdData
            | Kind::DepthwiseVMacWeightGrad => 17,
            Kind::ReducePartials => 3,
            Kind::NormStats | Kind::SeGate | Kind::SeGateGrad => 3,
            Kind::NormFinalize => 5,
            Kind::NormAct | Kind::NormActGradPartials | Kind::NormActGradApply => 8,
            Kind::NormGradFinalize => 4,
            Kind::ProxyNormStats | Kind::ProxyNormFinalize => 3,
            Kind::ProxyNormParamGrad => 5,
            Kind::ProxyNormGradFinalize => 2,
            Kind::BiasAct | Kind::BiasActGrad => 3,
            Kind::ChannelSum | Kind::PoolGrad => 4,
            Kind::Add => 1,
            Kind::ScaledAdd => 2,
            Kind::SoftmaxXent => 3,
            Kind::RmsPropTf => 7,
        };
        if self.params.len() != want {
            return bad("wrong number of scalar parameters");
        }
        Ok(match self.kind {
            Kind::ConvPartialAmp
            | Kind::ConvPartialAmpBwdData
            | Kind::ConvWeightGradAmp
            | Kind::DepthwiseVMac
            | Kind::DepthwiseVMacBwdData
            | Kind::DepthwiseVMacWeightGrad => {
                let g = ConvGeom::from_params(&self.params);
                if g.stride == 0 || g.kh == 0 || g.kw == 0 {
                    return bad("zero stride or kernel");
                }
                let dw = matches!(
                    self.kind,
                    Kind::DepthwiseVMac
                        | Kind::DepthwiseVMacBwdData
                        | Kind::DepthwiseVMacWeightGrad
                );
                if dw && (g.cin_g != 1 || g.cout_g != 1) {
                    return bad("depthwise vertices take one channel per group");
                }
                match self.kind {
                    Kind::ConvPartialAmp | Kind::DepthwiseVMac => {
                        vec![
                            ("in", In, g.in_len()),
                            ("weights", In, g.w_len()),
                            ("out", Out, g.out_len()),
                        ]
                    }
                    Kind::ConvPartialAmpBwdData | Kind::DepthwiseVMacBwdData => {
                        vec![
                            ("dy", In, g.out_len()),
                            ("weights", In, g.w_len()),
                            ("dx", Out, g.in_len()),
                        ]
                    }
                    Kind::ConvWeightGradAmp => {
                        vec![
                            ("x", In, g.in_len()),
                            ("dy", In, g.out_len()),
                            ("dw", Out, g.w_len()),
                        ]
                    }
                    _ => vec![
                        ("x", In, g.in_len()),
                        ("dy", In, g.out_len()),
                        ("partials", Out, SHIM_WORKERS * g.w_len()),
                    ],
                }
            }
            Kind::ReducePartials => {
                let (np, len) = (self.p(0), self.p(2));
                vec![("in", In, np * len), ("out", InOut, len)]
            }
            Kind::NormStats => {
                let (nb, pix, c) = (self.p(0), self.p(1), self.p(2));
                vec![("x", In, nb * pix * c), ("out", Out, nb * c * 2)]
            }
            Kind::NormFinalize | Kind::NormGradFinalize => {
                let (rows, c, cg) = (self.p(0), self.p(1), self.p(2));
                if cg == 0 || c % cg != 0 || self.p(3) == 0 {
                    return bad("group size must divide the channels and count be non-zero");
                }
                let out = if self.kind == Kind::NormFinalize {
                    "stats"
                } else {
                    "means"
                };
                vec![("sums", In, rows * c * 2), (out, Out, rows * (c / cg) * 2)]
            }
            Kind::NormAct | Kind::NormActGradPartials | Kind::NormActGradApply => {
                let g = NormGeom::from_params(&self.params);
                if g.cg == 0 || g.act > 2 || (g.c0 + g.c).div_ceil(g.cg) > g.groups {
                    return bad("channel block outside the groups");
                }
                let n = g.len();
                let c = g.c;
                let mut f = vec![
                    ("x", In, n),
                    ("stats", In, g.stat_rows() * g.groups * 2),
                    ("gamma", In, c),
                    ("beta", In, c),
                    ("mu", In, c),
                    ("scale", In, c),
                ];
                match self.kind {
                    Kind::NormAct => f.push(("z", Out, n)),
                    Kind::NormActGradPartials => {
                        f.push(("dz", In, n));
                        f.push(("perImage", Out, g.nb * c * 2));
                        f.push(("perChannel", Out, c * 4));
                    }
                    _ => {
                        f.push(("dz", In, n));
                        f.push(("gradMeans", In, g.stat_rows() * g.groups * 2));
                        f.push(("dx", Out, n));
                    }
                }
                f
            }
            Kind::ProxyNormStats => {
                let (c, k) = (self.p(1), self.p(2));
                vec![
                    ("gamma", In, c),
                    ("beta", In, c),
                    ("beta2", In, c),
                    ("gamma2", In, c),
                    ("q", In, k),
                    ("partials", Out, SHIM_WORKERS * c * 2),
                ]
            }
            Kind::ProxyNormFinalize => {
                let c = self.p(2);
                if self.p(0) == 0 {
                    return bad("no quantiles");
                }
                vec![("sums", In, c * 2), ("mu", Out, c), ("scale", Out, c)]
            }
            Kind::ProxyNormParamGrad => {
                let (c, k) = (self.p(2), self.p(3));
                if self.p(1) == 0 {
                    return bad("no quantiles");
                }
                vec![
                    ("sums", In, c * 4),
                    ("gamma", In, c),
                    ("beta", In, c),
                    ("beta2", In, c),
                    ("gamma2", In, c),
                    ("q", In, k),
                    ("mu", In, c),
                    ("scale", In, c),
                    ("partials", Out, SHIM_WORKERS * c * 3),
                ]
            }
            Kind::ProxyNormGradFinalize => {
                let c = self.p(1);
                vec![
                    ("sums", In, c * 4),
                    ("gamma", In, c),
                    ("terms", In, c * 3),
                    ("grads", Out, c * 4),
                ]
            }
            Kind::BiasAct => {
                let (r, c) = (self.p(0), self.p(1));
                vec![("x", In, r * c), ("bias", In, c), ("y", Out, r * c)]
            }
            Kind::BiasActGrad => {
                let (r, c) = (self.p(0), self.p(1));
                vec![
                    ("x", In, r * c),
                    ("bias", In, c),
                    ("dy", In, r * c),
                    ("dx", Out, r * c),
                ]
            }
            Kind::ChannelSum => {
                let (nb, pix, c) = (self.p(0), self.p(1), self.p(2));
                vec![("x", In, nb * pix * c), ("out", Out, nb * c)]
            }
            Kind::PoolGrad => {
                let (nb, pix, c) = (self.p(0), self.p(1), self.p(2));
                vec![("g", In, nb * c), ("dx", Out, nb * pix * c)]
            }
            Kind::SeGate => {
                let (nb, pix, c) = (self.p(0), self.p(1), self.p(2));
                vec![
                    ("x", In, nb * pix * c),
                    ("gate", In, nb * c),
                    ("y", Out, nb * pix * c),
                ]
            }
            Kind::SeGateGrad => {
                let (nb, pix, c) = (self.p(0), self.p(1), self.p(2));
                let n = nb * pix * c;
                vec![
                    ("x", In, n),
                    ("gate", In, nb * c),
                    ("dy", In, n),
                    ("dx", Out, n),
                    ("dgate", Out, nb * c),
                ]
            }
            Kind::Add => {
                let n = self.p(0);
                vec![("a", In, n), ("b", In, n), ("y", Out, n)]
            }
            Kind::SoftmaxXent => {
                let (n, k) = (self.p(0), self.p(1));
                if n == 0 || k == 0 || self.p(2) < n {
                    return bad("empty logits, or more rows than the batch");
                }
                vec![
                    ("logits", In, n * k),
                    ("target", In, n * k),
                    ("loss", Out, 1),
                    ("dlogits", Out, n * k),
                ]
            }
            Kind::ScaledAdd => {
                let n = self.p(1);
                vec![("w", InOut, n), ("dw", In, n)]
            }
            Kind::RmsPropTf => {
                let n = self.p(6);
                vec![
                    ("w", InOut, n),
                    ("g", InOut, n),
                    ("ms", InOut, n),
                    ("mom", InOut, n),
                ]
            }
        })
    }
}
