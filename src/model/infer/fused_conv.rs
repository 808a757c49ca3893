//! One convolution of the prepared network with what follows it: BatchNorm folded
//! into its weights and bias with the activation and residual in its epilogue, or a
//! per-sample norm after it on the statistics it gathers, or that norm left to the
//! next convolution's prologue (see `prologue`); weights packed once.

use super::super::norm_act::{InferNorm, SampleNorm};
use crate::error::{Error, Result, try_filled};
use crate::kernels::activation::Activation;
use crate::kernels::conv::{
    ChannelStats, Conv2d, ConvDesc, ConvPass, ConvWeights, PostArgs, PostOps, PreArgs,
};

/// A convolution with its BatchNorm folded in, `y = φ(conv(x, w·scale) + shift) (+ r)`,
/// or followed by a per-sample norm, `y = norm(conv(x, w)) (+ r)`.
#[derive(Debug)]
pub(crate) struct FusedConv {
    pub(super) conv: Conv2d,
    pub(super) packed: Vec<f32>,
    pub(super) bias: Vec<f32>,
    /// The per-sample norm (+ activation) applied to the convolution's output, which
    /// then waits in the first floats of the workspace (the statistics the
    /// convolution gathered for it after it); the residual is added after the norm.
    pub(super) norm: Option<SampleNorm>,
    pub(super) residual_after_norm: bool,
    /// Whether its input arrives ungated with a per-image input-channel gate that
    /// scales the packed weights instead ([`FusedConv::run_gated`]).
    pub(super) gated: bool,
    /// Whether the per-sample norm is left to the consumer's prologue
    /// ([`FusedConv::run_deferred`]).
    pub(super) defers: bool,
}

/// Floats of a convolution's output kept at the front of the workspace for its
/// per-sample norm, rounded up to a cache line.
fn pre_len(y_len: usize) -> usize {
    y_len.div_ceil(16) * 16
}

/// The first `len` floats of the workspace `ws` and the rest; a typed error when `ws`
/// is shorter.
pub(super) fn split_front(ws: &mut [f32], len: usize) -> Result<(&mut [f32], &mut [f32])> {
    if ws.len() < len {
        return Err(Error::BufferSize {
            name: "workspace",
            expected: len,
            actual: ws.len(),
        });
    }
    Ok(ws.split_at_mut(len))
}

/// Floats of workspace after the output that hold the norm's statistics as `f64`:
/// sums and squares, `nc = N·C` each, plus one float to align them.
pub(super) fn stats_len(nc: usize) -> usize {
    (4 * nc + 1).div_ceil(16) * 16
}

impl FusedConv {
    /// Plans `desc` with the weight `w` followed by the norm of `step`: folded into
    /// the weights, bias and epilogue, or applied after the convolution per sample;
    /// with `residual`, a residual add after both.
    pub(crate) fn normed(
        desc: &ConvDesc,
        w: &[f32],
        step: InferNorm,
        residual: bool,
    ) -> Result<FusedConv> {
        match step {
            InferNorm::Folded((sc, sh, act)) => FusedConv::new(desc, w, (&sc, &sh), act, residual),
            InferNorm::Sample(norm) => {
                let co = desc.out_channels;
                let c =
                    FusedConv::new(desc, w, (&vec![1.0; co], &[]), Activation::Identity, false)?;
                // The convolution gathers the norm's statistics as it writes its output.
                let post = PostOps {
                    stats: ChannelStats::SumsAndSquares,
                    ..c.conv.post_ops()
                };
                Ok(FusedConv {
                    conv: c.conv.with_post_ops(post),
                    norm: Some(*norm),
                    residual_after_norm: residual,
                    ..c
                })
            }
        }
    }

    /// Whether a per-sample norm follows the convolution (else any norm is folded).
    pub(in crate::model) fn has_sample_norm(&self) -> bool {
        self.norm.is_some()
    }

    /// The delayed Proxy Norm scale of the norm after the convolution, if it has one.
    pub(in crate::model) fn delayed_scale(&self) -> Option<&[f32]> {
        self.norm.as_ref().and_then(SampleNorm::delayed_scale)
    }

    /// Floats of workspace [`FusedConv::run`] (or [`FusedConv::run_gated`] for a
    /// gated one) needs in a pool of `threads` threads.
    pub(in crate::model) fn workspace_len(&self, threads: usize) -> usize {
        let conv = self.conv.workspace_len(ConvPass::Forward, threads);
        let run = match &self.norm {
            None => conv,
            Some(n) => pre_len(self.y_len()) + stats_len(self.nc()) + conv.max(n.workspace_len()),
        };
        run + usize::from(self.gated) * pre_len(self.packed.len())
    }

    /// The same pointwise convolution of one image, its input's squeeze-excite gate
    /// applied to its weights ([`FusedConv::run_gated`]).
    pub(crate) fn gating(self) -> FusedConv {
        FusedConv {
            gated: true,
            ..self
        }
    }

    /// Whether it is run with [`FusedConv::run_gated`].
    pub(in crate::model) fn gated(&self) -> bool {
        self.gated
    }

    /// [`FusedConv::run`] of `x` gated per input channel by `gate` (`[C_in]`, one
    /// image), the gate applied to a copy of the packed weights (in the front of the
    /// workspace) rather than to `x`: the weights are scaled, not the larger input
    /// tensor.
    pub(in crate::model) fn run_gated(
        &self,
        x: &[f32],
        gate: &[f32],
        residual: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let (packed, rest) = split_front(ws, pre_len(self.packed.len()))?;
        self.conv
            .scale_packed_input_channels(&self.packed, gate, packed)?;
        self.run_with(ConvWeights::Packed(packed), x, None, residual, y, rest)
    }
    /// Plans `desc` with the weight `w` (`[kh][kw][group_size][C_out]`) scaled by
    /// `scale` per output channel, the bias `shift`, the activation `act` and, with
    /// `residual`, a residual add.
    pub(crate) fn new(
        desc: &ConvDesc,
        w: &[f32],
        (scale, shift): (&[f32], &[f32]),
        act: Activation,
        residual: bool,
    ) -> Result<FusedConv> {
        let conv = Conv2d::new(desc)?.with_post_ops(PostOps {
            activation: act,
            residual,
            ..PostOps::NONE
        });
        let co = desc.out_channels;
        let shift_ok = shift.len() == co || shift.is_empty();
        if scale.len() != co || !shift_ok || w.len() != conv.shape().w_len {
            return Err(Error::InvalidArgument(
                "folded norm and convolution disagree on their sizes".into(),
            ));
        }
        let folded: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| v * scale[i % co])
            .collect();
        let mut packed = try_filled("the packed weights", conv.packed_weights_len(), 0.0)?;
        conv.pack_weights(&folded, &mut packed)?;
        Ok(FusedConv {
            conv,
            packed,
            bias: shift.to_vec(),
            norm: None,
            residual_after_norm: false,
            gated: false,
            defers: false,
        })
    }

    /// A fully-connected layer `y = act(x·W + b)` on `n` feature vectors of `cin`
    /// (`w`: `[cin][cout]`), run as a 1×1 convolution on `n` one-pixel images so that
    /// its weights are packed once and the activation is its epilogue.
    pub(crate) fn dense(
        n: usize,
        (cin, cout): (usize, usize),
        w: &[f32],
        b: &[f32],
        act: Activation,
    ) -> Result<FusedConv> {
        let d = ConvDesc::pointwise(n, (1, 1), cin, cout);
        FusedConv::new(&d, w, (&vec![1.0; cout], b), act, false)
    }

    pub(in crate::model) fn y_len(&self) -> usize {
        self.conv.shape().y_len
    }

    /// Images × output channels: the length of each per-image channel statistic.
    pub(super) fn nc(&self) -> usize {
        let d = &self.conv.shape().desc;
        d.batch * d.out_channels
    }

    /// The planned convolution.
    pub(in crate::model) fn conv(&self) -> &Conv2d {
        &self.conv
    }

    /// Floats of the packed weights.
    pub(in crate::model) fn packed_len(&self) -> usize {
        self.packed.len()
    }

    /// Floats this convolution moves fused (input, packed weights, output, the
    /// residual it adds) and unfused (the same convolution, then a norm + activation
    /// pass reading and writing its output, then a residual add reading two tensors and
    /// writing one).
    ///
    /// With a per-sample norm the fused pass gathers the norm's statistics in the
    /// convolution, so only the norm's apply pass reads the output and writes the
    /// result; unfused, a statistics pass reads it first. The residual add reads two
    /// tensors and writes one in both.
    pub(super) fn traffic(&self) -> (usize, usize) {
        let s = self.conv.shape();
        let conv = s.x_len + self.packed.len() + s.y_len;
        if self.defers {
            // The apply pass is the consumer's prologue, on its read of `y`.
            return (conv, conv + 3 * s.y_len);
        }
        if self.norm.is_some() {
            let t = conv + 2 * s.y_len + 3 * usize::from(self.residual_after_norm) * s.y_len;
            return (t, t + s.y_len);
        }
        let res = usize::from(self.conv.post_ops().residual);
        (conv + res * s.y_len, conv + 2 * s.y_len + 3 * res * s.y_len)
    }

    /// The same convolution gathering each image's channel sums of its output in the
    /// forward pass (the squeeze of the squeeze-excite that follows;
    /// [`FusedConv::run_squeezed`]), when its norm is folded; unchanged when a
    /// per-sample norm follows it (the squeeze then reads the norm's output).
    pub(crate) fn squeezing(self) -> FusedConv {
        if self.norm.is_some() {
            return self;
        }
        let post = PostOps {
            stats: ChannelStats::Sums,
            ..self.conv.post_ops()
        };
        FusedConv {
            conv: self.conv.with_post_ops(post),
            ..self
        }
    }

    /// Whether [`FusedConv::run_squeezed`] is the way to run it.
    pub(in crate::model) fn squeezes(&self) -> bool {
        self.norm.is_none() && self.conv.post_ops().stats != ChannelStats::None
    }

    /// [`FusedConv::run`] for a [`FusedConv::squeezing`] convolution: also writes each
    /// image's channel means of `y` to `pooled` (`[N][C_out]`; `sums`: as many `f64`
    /// of scratch).
    pub(in crate::model) fn run_squeezed(
        &self,
        x: &[f32],
        y: &mut [f32],
        (sums, pooled): (&mut [f64], &mut [f32]),
        ws: &mut [f32],
    ) -> Result<()> {
        let w = ConvWeights::Packed(&self.packed);
        let bias = (!self.bias.is_empty()).then_some(&self.bias[..]);
        let args = PostArgs {
            sums: Some(&mut *sums),
            ..PostArgs::default()
        };
        self.conv.forward_post(x, w, bias, args, y, Some(ws))?;
        let s = self.conv.shape();
        let pixels = (s.out_h * s.out_w) as f64;
        for (p, &t) in pooled.iter_mut().zip(sums.iter()) {
            *p = (t / pixels) as f32;
        }
        Ok(())
    }

    pub(in crate::model) fn run(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        self.run_with(ConvWeights::Packed(&self.packed), x, None, residual, y, ws)
    }

    /// [`FusedConv::run`] with the weights `w` and the operands of the prologue `pre`
    /// (when the convolution has one).
    pub(super) fn run_with(
        &self,
        w: ConvWeights,
        x: &[f32],
        pre: Option<PreArgs<'_>>,
        residual: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let bias = (!self.bias.is_empty()).then_some(&self.bias[..]);
        let Some(norm) = &self.norm else {
            let args = PostArgs {
                residual,
                pre,
                ..PostArgs::default()
            };
            return self.conv.forward_post(x, w, bias, args, y, Some(ws));
        };
        let nc = self.nc();
        let (front, rest) = split_front(ws, pre_len(y.len()) + stats_len(nc))?;
        let (front_y, st) = front.split_at_mut(pre_len(y.len()));
        let (_, st, _) = bytemuck::pod_align_to_mut::<f32, f64>(st);
        let (sums, squares) = st[..2 * nc].split_at_mut(nc);
        let args = PostArgs {
            sums: Some(&mut *sums),
            squares: Some(&mut *squares),
            pre,
            ..PostArgs::default()
        };
        let raw = &mut front_y[..y.len()];
        self.conv.forward_post(x, w, bias, args, raw, Some(rest))?;
        norm.run(raw, Some((sums, squares)), y, rest)?;
        if let (Some(r), true) = (residual, self.residual_after_norm) {
            for (o, &a) in y.iter_mut().zip(r) {
                *o += a;
            }
        }
        Ok(())
    }
}
