//! Prepared benchmark cases: the buffers and plan of one operator on one layer shape,
//! ready to run a pass repeatedly. The CLI's `bench` commands and the criterion benches
//! time the same cases.

use super::LayerSpec;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::kernels::conv::{Conv2d, GradMode};
use crate::kernels::norm::{Affine, AffineGrads, Norm, NormDesc, NormStats};
use crate::kernels::proxy_norm::{
    NormProxy, NormProxySaved, ProxyGrads, ProxyNormDesc, ProxyParams, Upstream,
};

/// Deterministic filler in [−0.5, 0.5) (a multiplicative hash of the index).
pub fn fill(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) >> 20) as f32 / 4096.0 - 0.5
        })
        .collect()
}

const F32: f64 = std::mem::size_of::<f32>() as f64;

/// A convolution pass.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ConvPass {
    /// Forward.
    Fwd,
    /// Backward with respect to the input.
    BwdData,
    /// Backward with respect to the weight.
    BwdWeight,
}

impl ConvPass {
    /// All passes, in report order.
    pub const ALL: [ConvPass; 3] = [ConvPass::Fwd, ConvPass::BwdData, ConvPass::BwdWeight];
    /// The name used in reports (`fwd`, `bwd_data`, `bwd_weight`).
    pub fn name(self) -> &'static str {
        match self {
            ConvPass::Fwd => "fwd",
            ConvPass::BwdData => "bwd_data",
            ConvPass::BwdWeight => "bwd_weight",
        }
    }
}

/// One suite layer's convolution with its buffers.
pub struct ConvCase {
    conv: Conv2d,
    x: Vec<f32>,
    w: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

impl ConvCase {
    /// Plans `layer` at `batch` and fills its buffers.
    pub fn new(layer: &LayerSpec, batch: usize) -> Result<ConvCase> {
        let conv = Conv2d::new(&layer.conv_desc(batch))?;
        let s = *conv.shape();
        Ok(ConvCase {
            conv,
            x: fill(s.x_len, 1),
            w: fill(s.w_len, 2),
            y: fill(s.y_len, 3),
            dx: vec![0.0; s.x_len],
            dw: vec![0.0; s.w_len],
        })
    }

    /// Runs one pass (backward passes use the output buffer as `dy`).
    pub fn run(&mut self, pass: ConvPass) -> Result<()> {
        let c = &self.conv;
        match pass {
            ConvPass::Fwd => c.forward(&self.x, &self.w, None, &mut self.y),
            ConvPass::BwdData => c.backward_data(&self.y, &self.w, &mut self.dx),
            ConvPass::BwdWeight => {
                c.backward_weight(&self.x, &self.y, &mut self.dw, None, GradMode::Overwrite)
            }
        }
    }

    /// Useful floating-point operations of a pass (the same for all three).
    pub fn flops(&self) -> f64 {
        self.conv.shape().flops()
    }

    /// Bytes of the three tensors a pass touches, each counted once.
    pub fn bytes(&self) -> f64 {
        let s = self.conv.shape();
        (s.x_len + s.w_len + s.y_len) as f64 * F32
    }
}

/// A normalization + activation op of `effnet bench norm`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NormOp {
    /// Fused LayerNorm + Proxy Norm swish, full scale, K = 200.
    LnPnSwish,
    /// GroupNorm (contiguous groups, affine) + swish.
    GnSwish,
    /// BatchNorm in training mode (batch statistics, affine) + swish.
    BnSwish,
}

impl NormOp {
    /// All ops, in report order.
    pub const ALL: [NormOp; 3] = [NormOp::LnPnSwish, NormOp::GnSwish, NormOp::BnSwish];
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            NormOp::LnPnSwish => "ln_pn_swish",
            NormOp::GnSwish => "gn_swish",
            NormOp::BnSwish => "bn_swish",
        }
    }
}

enum NormKernel {
    Proxy(NormProxy, NormProxySaved),
    Plain(Norm, NormStats),
}

/// A norm op on the activations after one suite layer (N = batch, H×W = that layer's
/// output, C = its output channels), with its buffers and parameters.
///
/// Bytes moved (T = one tensor): forward 3T (a statistics read, then a read and a
/// write), backward 5T (x and dy read by the statistics-gradient pass and again by the
/// apply pass, dx written). Nominal operations per element (an `exp` counts as one):
/// forward 14 (Proxy Norm) or 12, backward 30 or 28.
pub struct NormCase {
    op: NormOp,
    kernel: NormKernel,
    x: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    params: [Vec<f32>; 4],
    grads: [Vec<f32>; 4],
}

impl NormCase {
    /// Prepares `op` after `layer` at `batch`; `groups` is GroupNorm's group count.
    pub fn new(layer: &LayerSpec, batch: usize, op: NormOp, groups: usize) -> Result<NormCase> {
        let s = layer.conv_desc(batch).validate()?;
        let (h, w, c) = (s.out_h, s.out_w, layer.c_out);
        let n = batch * h * w * c;
        let kernel = match op {
            NormOp::LnPnSwish => {
                let p = NormProxy::new(
                    &NormDesc::layer_norm(batch, (h, w), c),
                    &ProxyNormDesc::new(c),
                )?;
                let saved = p.new_saved();
                NormKernel::Proxy(p, saved)
            }
            NormOp::GnSwish | NormOp::BnSwish => {
                let desc = if op == NormOp::GnSwish {
                    NormDesc::group_norm(batch, (h, w), c, groups)
                } else {
                    NormDesc::batch_norm(batch, (h, w), c)
                };
                let norm = Norm::new(&desc.with_activation(Activation::Swish))?;
                let stats = norm.new_stats();
                NormKernel::Plain(norm, stats)
            }
        };
        let mut case = NormCase {
            op,
            kernel,
            x: fill(n, 1),
            dy: fill(n, 2),
            y: vec![0.0; n],
            dx: vec![0.0; n],
            params: [
                fill(c, 3).iter().map(|v| 1.0 + v).collect(),
                fill(c, 4),
                fill(c, 5).iter().map(|v| 0.2 * v).collect(),
                fill(c, 6).iter().map(|v| 0.2 * v).collect(),
            ],
            grads: std::array::from_fn(|_| vec![0.0; c]),
        };
        // The backward pass needs the forward's saved statistics.
        case.forward()?;
        Ok(case)
    }

    /// The op.
    pub fn op(&self) -> NormOp {
        self.op
    }

    fn forward(&mut self) -> Result<()> {
        let [g, b, bp, gp] = &self.params;
        match &mut self.kernel {
            NormKernel::Proxy(p, saved) => {
                let params = ProxyParams {
                    gamma: g,
                    beta: b,
                    beta_prime: bp,
                    gamma_prime: gp,
                };
                p.forward(&self.x, params, &mut self.y, saved)
            }
            NormKernel::Plain(norm, stats) => {
                norm.forward(&self.x, Affine::new(g, b), &mut self.y, stats)
            }
        }
    }

    /// Runs the forward (`backward == false`) or backward pass.
    pub fn run(&mut self, backward: bool) -> Result<()> {
        if !backward {
            return self.forward();
        }
        let [g, b, bp, gp] = &self.params;
        let [dg, db, dbp, dgp] = &mut self.grads;
        match &self.kernel {
            NormKernel::Proxy(p, saved) => {
                let params = ProxyParams {
                    gamma: g,
                    beta: b,
                    beta_prime: bp,
                    gamma_prime: gp,
                };
                let grads = ProxyGrads {
                    dgamma: dg,
                    dbeta: db,
                    dbeta_prime: dbp,
                    dgamma_prime: dgp,
                    mode: GradMode::Overwrite,
                };
                let up = Upstream {
                    dz: &self.dy,
                    ds: None,
                };
                p.backward(&self.x, up, params, saved, &mut self.dx, grads)
            }
            NormKernel::Plain(norm, stats) => {
                let grads = AffineGrads {
                    dgamma: Some(dg),
                    dbeta: Some(db),
                    mode: GradMode::Overwrite,
                };
                norm.backward(
                    &self.x,
                    &self.dy,
                    Affine::new(g, b),
                    stats,
                    &mut self.dx,
                    grads,
                )
            }
        }
    }

    /// Elements of the activation tensor.
    pub fn elements(&self) -> usize {
        self.x.len()
    }

    /// Bytes a pass moves (see the type's docs).
    pub fn bytes(&self, backward: bool) -> f64 {
        self.elements() as f64 * F32 * if backward { 5.0 } else { 3.0 }
    }

    /// Nominal floating-point operations of a pass (see the type's docs).
    pub fn flops(&self, backward: bool) -> f64 {
        let per = match (self.op, backward) {
            (NormOp::LnPnSwish, false) => 14.0,
            (NormOp::LnPnSwish, true) => 30.0,
            (_, false) => 12.0,
            (_, true) => 28.0,
        };
        per * self.elements() as f64
    }
}

/// Whether `layer` is a spatial depthwise/grouped layer, whose output the norm
/// benchmarks use.
pub fn is_spatial(layer: &LayerSpec) -> bool {
    layer.k > 1 && layer.group_size != 0 && layer.group_size < layer.c_in
}

impl std::fmt::Debug for NormCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NormCase({}, {} elements)",
            self.op.name(),
            self.elements()
        )
    }
}

/// Parses an op name.
impl std::str::FromStr for NormOp {
    type Err = Error;
    fn from_str(s: &str) -> Result<NormOp> {
        NormOp::ALL
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown op {s:?} (ln_pn_swish, gn_swish, bn_swish)"
                ))
            })
    }
}

/// Parses a pass name.
impl std::str::FromStr for ConvPass {
    type Err = Error;
    fn from_str(s: &str) -> Result<ConvPass> {
        ConvPass::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("unknown pass {s:?} (fwd, bwd_data, bwd_weight)"))
            })
    }
}
