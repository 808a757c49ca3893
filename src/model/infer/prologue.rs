//! A per-sample norm left to its consumer's prologue: the producing convolution writes
//! its raw output and gathers its statistics; the norm's apply pass (normalize, affine,
//! activation, Proxy Norm's correction) becomes the coefficients of the next
//! convolution's prologue ([`PreOps`]), which applies it as it reads its input — the
//! expanded tensor of an MBConv block is written once and read once, with no norm pass
//! over it in between.

use super::fused_conv::{FusedConv, split_front, stats_len};
use crate::error::{Error, Result};
use crate::kernels::conv::{ChannelStats, ConvWeights, PostArgs, PostOps, PreArgs, PreOps};

impl FusedConv {
    /// The same convolution with its per-sample norm left to the consumer
    /// ([`FusedConv::run_deferred`]); unchanged without one.
    pub(crate) fn deferring(self) -> FusedConv {
        FusedConv {
            defers: self.norm.is_some(),
            ..self
        }
    }

    /// Whether it runs through [`FusedConv::run_deferred`].
    pub(crate) fn defers(&self) -> bool {
        self.defers
    }

    /// The prologue a consumer applies for the deferred norm (`None` without one).
    pub(crate) fn deferred_ops(&self) -> Option<PreOps> {
        self.norm.as_ref().map(|n| n.prologue_ops())
    }

    /// Floats of the coefficients [`FusedConv::run_deferred`] writes: `4·N·C_out`.
    pub(crate) fn deferred_len(&self) -> usize {
        4 * self.nc()
    }

    /// The same convolution applying the prologue `ops` to its input (the deferred
    /// norm of its producer), the coefficients given to [`FusedConv::run_pre`].
    pub(crate) fn with_prologue(self, ops: PreOps) -> FusedConv {
        FusedConv {
            conv: self.conv.with_pre_ops(ops),
            ..self
        }
    }

    /// The convolution of `x` into `y` (raw, before the norm) and the coefficients of
    /// its norm's apply pass as the consumer's prologue into `coefs`
    /// ([`FusedConv::deferred_len`] floats): the statistics gathered as `y` is written.
    pub(crate) fn run_deferred(
        &self,
        x: &[f32],
        y: &mut [f32],
        coefs: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let (Some(norm), true) = (&self.norm, self.defers) else {
            return Err(Error::InvalidArgument(
                "the convolution does not defer a norm to its consumer".into(),
            ));
        };
        debug_assert_eq!(
            self.conv.post_ops(),
            PostOps {
                stats: ChannelStats::SumsAndSquares,
                ..PostOps::NONE
            }
        );
        let nc = self.nc();
        let (st, rest) = split_front(ws, stats_len(nc))?;
        let (_, st, _) = bytemuck::pod_align_to_mut::<f32, f64>(st);
        let (sums, squares) = st[..2 * nc].split_at_mut(nc);
        let bias = (!self.bias.is_empty()).then_some(&self.bias[..]);
        let args = PostArgs {
            sums: Some(&mut *sums),
            squares: Some(&mut *squares),
            ..PostArgs::default()
        };
        let w = ConvWeights::Packed(&self.packed);
        self.conv.forward_post(x, w, bias, args, y, Some(rest))?;
        norm.prologue((sums, squares), coefs, rest)
    }

    /// [`FusedConv::run`] of a convolution with a prologue, its coefficients `coefs`
    /// (`[a | b | p | q]`, as [`FusedConv::run_deferred`] wrote them).
    pub(crate) fn run_pre(
        &self,
        x: &[f32],
        coefs: &[f32],
        residual: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let Some(ops) = self.conv.pre_ops() else {
            return Err(Error::InvalidArgument(
                "the convolution has no prologue".into(),
            ));
        };
        let d = &self.conv.shape().desc;
        let nc = d.batch * d.in_channels;
        if coefs.len() < 4 * nc {
            return Err(Error::BufferSize {
                name: "prologue coefficients",
                expected: 4 * nc,
                actual: coefs.len(),
            });
        }
        let part = |k: usize, on: bool| on.then(|| &coefs[k * nc..(k + 1) * nc]);
        let pre = PreArgs {
            scale: &coefs[..nc],
            shift: part(1, ops.shift),
            out_scale: part(2, ops.out_scale),
            out_shift: part(3, ops.out_shift),
        };
        self.run_with(
            ConvWeights::Packed(&self.packed),
            x,
            Some(pre),
            residual,
            y,
            ws,
        )
    }
}
