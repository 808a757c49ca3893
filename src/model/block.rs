//! One MBConv block: [expand 1×1 → norm → act] → k×k spatial conv → norm → act →
//! squeeze-excite → project 1×1 → norm, with the identity skip and per-sample
//! drop-connect. Forward keeps only the conv outputs (pre-norm) and the small
//! squeeze-excite vectors; backward recomputes the normalized activations.

use super::infer::{FusedBlock, FusedConv, FusedSe};
use super::infer_band::{BandPolicy, Banded};
use super::norm_act::{InferNorm, NormAct, NormSaved, Place};
use super::ops::{Pool, add, drop_connect};
use super::params::{ParamKind, ParamStore};
use super::profile::{
    CONV_1X1_BWD_D, CONV_1X1_BWD_W, CONV_1X1_FWD, CONV_KXK_BWD_D, CONV_KXK_BWD_W, CONV_KXK_FWD,
    NORM_BWD, NORM_FWD, NORM_RECOMPUTE, RESIDUAL, SE_BWD, SE_FWD, timed,
};
use crate::arch::{ArchConfig, BlockSpec};
use crate::error::Result;
use crate::kernels::activation::{self, Activation};
use crate::kernels::conv::{
    ChannelStats, Conv2d, ConvDesc, ConvWeights, GradMode, PostArgs, PostOps,
};
use crate::kernels::fully_connected::FullyConnected;
use crate::kernels::gate;
use crate::kernels::pool::{self, Nhwc};

/// A block's layers and parameter indices.
#[derive(Clone, Debug)]
pub struct Block {
    /// The block's shape.
    pub spec: BlockSpec,
    /// Drop-connect probability at full training strength (`rate·i/blocks`).
    pub drop_rate: f32,
    expand: Option<(usize, NormAct)>,
    dw: usize,
    dw_norm: NormAct,
    se_reduce: (usize, usize),
    se_expand: (usize, usize),
    proj: usize,
    proj_norm: NormAct,
}

/// What a block's forward pass keeps for the backward pass (the block input is the
/// previous block's output, kept there).
#[derive(Clone, Debug, Default)]
pub struct BlockTape {
    /// Input resolution.
    pub hw_in: usize,
    /// Output resolution.
    pub hw_out: usize,
    e: Vec<f32>,
    e_saved: NormSaved,
    d: Vec<f32>,
    d_saved: NormSaved,
    pooled: Vec<f32>,
    r: Vec<f32>,
    s1: Vec<f32>,
    t: Vec<f32>,
    g: Vec<f32>,
    gate: Vec<f32>,
    o: Vec<f32>,
    o_saved: NormSaved,
    drop_p: f32,
    drop_seed: u64,
    /// The block output (the next block's input).
    pub out: Vec<f32>,
}

impl BlockTape {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.e.len()
            + self.d.len()
            + self.pooled.len()
            + self.r.len()
            + self.s1.len()
            + self.t.len()
            + self.g.len()
            + self.gate.len()
            + self.o.len()
            + self.out.len())
            + self.e_saved.bytes()
            + self.d_saved.bytes()
            + self.o_saved.bytes()
    }
}

impl BlockTape {
    /// Returns the large buffers to `pool` (all but `out` when `keep_out`).
    pub(crate) fn release(&mut self, pool: &Pool, keep_out: bool) {
        for b in [&mut self.e, &mut self.d, &mut self.o] {
            pool.give(std::mem::take(b));
        }
        if !keep_out {
            pool.give(std::mem::take(&mut self.out));
        }
    }
}

/// Options of one forward pass, shared by every layer.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Ctx<'a> {
    pub cfg: &'a ArchConfig,
    pub batch: usize,
    pub batch_stats: bool,
    /// Multiplier of each block's drop-connect rate (0 = off).
    pub drop_connect: f32,
    pub seed: u64,
    /// The norms' input statistics gathered by the producing convolutions'
    /// statistics post-op ([`Network::set_conv_statistics`](super::Network::set_conv_statistics)).
    pub conv_stats: bool,
}

fn conv(desc: &ConvDesc) -> Result<Conv2d> {
    Conv2d::new(desc)
}

/// Each image's channel sums and sums of squares of a convolution's output
/// (`[N][C_out]` each), gathered by its statistics post-op for the norm after it.
pub(crate) type ConvSums = (Vec<f64>, Vec<f64>);

/// A convolution of a forward pass into a buffer from `pool`, timed under `kind`;
/// with `ctx.conv_stats` and a `norm` after it that takes statistics of its input,
/// its statistics post-op also gathers that norm's sums while the output is in
/// cache ([`norm_forward`] then makes one pass over the output instead of two).
pub(crate) fn conv_forward(
    ctx: &Ctx,
    conv: Conv2d,
    kind: &'static str,
    (x, w): (&[f32], &[f32]),
    norm: &NormAct,
    pool: &Pool,
) -> Result<(Vec<f32>, Option<ConvSums>)> {
    let s = *conv.shape();
    let mut out = pool.take(s.y_len)?;
    if !(ctx.conv_stats && norm.takes_sums(ctx.batch_stats)) {
        timed(kind, || conv.forward(x, w, None, &mut out))?;
        return Ok((out, None));
    }
    let len = s.desc.batch * s.desc.out_channels;
    let (mut sums, mut squares) = (vec![0.0f64; len], vec![0.0f64; len]);
    let conv = conv.with_post_ops(PostOps {
        stats: ChannelStats::SumsAndSquares,
        ..PostOps::NONE
    });
    let args = PostArgs {
        sums: Some(&mut sums),
        squares: Some(&mut squares),
        ..PostArgs::default()
    };
    timed(kind, || {
        conv.forward_post(x, ConvWeights::Plain(w), None, args, &mut out, None)
    })?;
    Ok((out, Some((sums, squares))))
}

/// The norm after [`conv_forward`] on its output `x` (`[batch][hw][hw][C]`), into a
/// buffer from `pool`, timed under [`NORM_FWD`]: `(output, what the norm saved)`.
pub(crate) fn norm_forward(
    ctx: &Ctx,
    norm: &NormAct,
    v: &[Vec<f32>],
    hw: usize,
    x: &[f32],
    sums: Option<ConvSums>,
    pool: &Pool,
) -> Result<(Vec<f32>, NormSaved)> {
    let mut y = pool.take(x.len())?;
    let sums = sums.as_ref().map(|(s, q)| (&s[..], &q[..]));
    let saved = timed(NORM_FWD, || {
        norm.forward_from_sums(v, ctx.batch, hw, x, sums, &mut y, ctx.batch_stats)
    })?;
    Ok((y, saved))
}

impl Block {
    /// Registers the block's parameters under `blocks.{stage}.{index}`.
    pub fn register(
        store: &mut ParamStore,
        cfg: &ArchConfig,
        spec: BlockSpec,
        drop_rate: f32,
    ) -> Result<Block> {
        let p = format!("blocks.{}.{}", spec.stage, spec.index);
        let (norm, eps) = (cfg.norm, cfg.norm_eps);
        let (dw_bn, proj_name, proj_bn) = if spec.expand {
            ("bn2", "conv_pwl", "bn3")
        } else {
            ("bn1", "conv_pw", "bn2")
        };
        let expand = if spec.expand {
            let w = store.add(
                format!("{p}.conv_pw.weight"),
                vec![1, 1, spec.in_ch, spec.mid_ch],
                ParamKind::ConvFanOut,
            )?;
            let n = NormAct::register(
                store,
                &format!("{p}.bn1"),
                norm,
                eps,
                Place::Full,
                spec.mid_ch,
            )?;
            Some((w, n))
        } else {
            None
        };
        let dw = store.add(
            format!("{p}.conv_dw.weight"),
            vec![spec.kernel, spec.kernel, spec.group_size, spec.mid_ch],
            ParamKind::ConvFanIn,
        )?;
        let dw_norm = NormAct::register(
            store,
            &format!("{p}.{dw_bn}"),
            norm,
            eps,
            Place::Delayed,
            spec.mid_ch,
        )?;
        let mut fc = |name: &str, cin: usize, cout: usize| -> Result<(usize, usize)> {
            Ok((
                store.add(
                    format!("{p}.se.{name}.weight"),
                    vec![1, 1, cin, cout],
                    ParamKind::ConvFanOut,
                )?,
                store.add(format!("{p}.se.{name}.bias"), vec![cout], ParamKind::Bias)?,
            ))
        };
        let se_reduce = fc("conv_reduce", spec.mid_ch, spec.se_ch)?;
        let se_expand = fc("conv_expand", spec.se_ch, spec.mid_ch)?;
        let proj = store.add(
            format!("{p}.{proj_name}.weight"),
            vec![1, 1, spec.mid_ch, spec.out_ch],
            ParamKind::ConvFanOut,
        )?;
        let proj_norm = NormAct::register(
            store,
            &format!("{p}.{proj_bn}"),
            norm,
            eps,
            Place::Project,
            spec.out_ch,
        )?;
        Ok(Block {
            spec,
            drop_rate,
            expand,
            dw,
            dw_norm,
            se_reduce,
            se_expand,
            proj,
            proj_norm,
        })
    }

    fn dw_conv(&self, ctx: &Ctx, hw: usize) -> Result<Conv2d> {
        let s = &self.spec;
        conv(&ctx.cfg.conv_desc(
            ctx.batch,
            hw,
            (s.mid_ch, s.mid_ch),
            s.kernel,
            s.stride,
            s.group_size,
        ))
    }

    /// The output size of the block for an input of `hw`×`hw`.
    /// The floats of the block's weights and of one image's activations at `hw`
    /// (input, expanded, k×k output, output): what one image's pass through the block
    /// reads and writes.
    pub(crate) fn inference_floats(&self, cfg: &ArchConfig, hw: usize) -> Result<(usize, usize)> {
        let s = &self.spec;
        let ho = self.out_hw(cfg, hw)?;
        let expand = usize::from(s.expand) * s.in_ch * s.mid_ch;
        let spatial = s.kernel * s.kernel * s.group_size * s.mid_ch;
        let se = 2 * s.mid_ch * s.se_ch;
        let weights = expand + spatial + se + s.mid_ch * s.out_ch;
        let (pixels, out_pixels) = (hw * hw, ho * ho);
        let expanded = usize::from(s.expand) * pixels * s.mid_ch;
        let acts = pixels * s.in_ch + expanded + out_pixels * (s.mid_ch + s.out_ch);
        Ok((weights, acts))
    }

    pub(crate) fn out_hw(&self, cfg: &ArchConfig, hw: usize) -> Result<usize> {
        let s = &self.spec;
        let d = cfg.conv_desc(
            1,
            hw,
            (s.mid_ch, s.mid_ch),
            s.kernel,
            s.stride,
            s.group_size,
        );
        Ok(d.validate()?.out_h)
    }

    /// The block prepared for inference at batch `n` and input size `hw`: BatchNorms
    /// folded into the convolutions, per-sample norms prepared to follow them; with
    /// folded norms its expansion and k×k convolution run depth-first in bands where
    /// the policy `bands` says so. A block that runs `early` (image by image in a plan
    /// of any group size: `n = 1`) applies its squeeze-excite gate to its projection's
    /// weights where they are smaller than the gated tensor (see
    /// [`FusedBlock`]); deciding by `early` rather than by `n` keeps the logits the
    /// same bits for every group size.
    pub(crate) fn fused(
        &self,
        v: &[Vec<f32>],
        cfg: &ArchConfig,
        n: usize,
        hw: usize,
        bands: BandPolicy,
        early: bool,
    ) -> Result<FusedBlock> {
        let s = &self.spec;
        let ed = ConvDesc::pointwise(n, (hw, hw), s.in_ch, s.mid_ch);
        let expand = match &self.expand {
            Some((w, norm)) => Some((*w, norm.for_inference(v, n, hw)?)),
            None => None,
        };
        let dd = cfg.conv_desc(
            n,
            hw,
            (s.mid_ch, s.mid_ch),
            s.kernel,
            s.stride,
            s.group_size,
        );
        let ho = dd.validate()?.out_h;
        let spatial_norm = self.dw_norm.for_inference(v, n, ho)?;
        // Depth-first bands take folded norms only (a per-sample norm needs the whole
        // image's statistics before its apply pass).
        let banded = match (&expand, &spatial_norm) {
            (Some((w, InferNorm::Folded((sc, sh, act)))), InferNorm::Folded((ssc, ssh, sact))) => {
                Banded::plan(
                    (&ed, (&v[*w], (sc, sh), *act)),
                    (&dd, (&v[self.dw], (ssc, ssh), *sact)),
                    bands,
                )?
            }
            _ => None,
        };
        let expand = match expand {
            Some((w, step)) => Some(FusedConv::normed(&ed, &v[w], step, false)?),
            None => None,
        };
        let spatial = FusedConv::normed(&dd, &v[self.dw], spatial_norm, false)?;
        // Unbanded, a per-sample norm after the expansion is applied by the k×k
        // convolution as it reads the expanded tensor (its prologue).
        let (expand, spatial) = match expand {
            Some(e) if banded.is_none() && e.has_sample_norm() => {
                let ops = e.deferred_ops();
                let spatial = match ops {
                    Some(ops) => spatial.with_prologue(ops),
                    None => spatial,
                };
                (Some(e.deferring()), spatial)
            }
            e => (e, spatial),
        };
        // Unbanded, the k×k convolution gathers the squeeze of the squeeze-excite.
        let spatial = if banded.is_none() {
            spatial.squeezing()
        } else {
            spatial
        };
        // A delayed Proxy Norm scale multiplies the gated tensor per channel: the
        // projection's input channels, folded into its weights.
        let proj_w: std::borrow::Cow<[f32]> = match spatial.delayed_scale() {
            Some(scale) => v[self.proj]
                .iter()
                .enumerate()
                .map(|(i, w)| w * scale[i / s.out_ch])
                .collect(),
            None => (&v[self.proj][..]).into(),
        };
        let pd = ConvDesc::pointwise(n, (ho, ho), s.mid_ch, s.out_ch);
        let proj_norm = self.proj_norm.for_inference(v, n, ho)?;
        let project = FusedConv::normed(&pd, &proj_w, proj_norm, s.skip)?;
        // Scaling the weights moves about 4·C_mid·C_out floats (read, write, the
        // kernel's read of the packed copy), gating the input 2·H·W·C_mid.
        debug_assert!(!early || n == 1, "early blocks are planned for one image");
        let project = if early && 2 * s.out_ch < ho * ho {
            project.gating()
        } else {
            project
        };
        let fc = |(w, b): (usize, usize), cin: usize, cout: usize, act| {
            FusedConv::dense(n, (cin, cout), &v[w], &v[b], act)
        };
        Ok(FusedBlock {
            banded,
            expand,
            spatial,
            se: FusedSe {
                shape: Nhwc::new(n, ho, ho, s.mid_ch)?,
                reduce: fc(self.se_reduce, s.mid_ch, s.se_ch, Activation::Swish)?,
                expand: fc(self.se_expand, s.se_ch, s.mid_ch, Activation::Sigmoid)?,
            },
            project,
            skip: s.skip,
        })
    }

    /// Forward from `x` (`[batch][hw][hw][in_ch]`); the tape's `out` is the block
    /// output `[batch][hw_out][hw_out][out_ch]`. Buffers come from `pool`.
    pub(crate) fn forward(
        &self,
        v: &[Vec<f32>],
        ctx: &Ctx,
        hw: usize,
        x: &[f32],
        pool: &Pool,
    ) -> Result<BlockTape> {
        let s = &self.spec;
        let n = ctx.batch;
        let mut tape = BlockTape {
            hw_in: hw,
            ..Default::default()
        };
        // Expansion.
        let a1_own: Option<Vec<f32>> = if let Some((w, norm)) = &self.expand {
            let c = conv(&ConvDesc::pointwise(n, (hw, hw), s.in_ch, s.mid_ch))?;
            let (e, sums) = conv_forward(ctx, c, CONV_1X1_FWD, (x, &v[*w]), norm, pool)?;
            let (a, saved) = norm_forward(ctx, norm, v, hw, &e, sums, pool)?;
            tape.e_saved = saved;
            tape.e = e;
            Some(a)
        } else {
            None
        };
        let a1 = a1_own.as_deref().unwrap_or(x);
        // Spatial conv.
        let dwc = self.dw_conv(ctx, hw)?;
        let ho = dwc.shape().out_h;
        tape.hw_out = ho;
        let (d, sums) = conv_forward(
            ctx,
            dwc,
            CONV_KXK_FWD,
            (a1, &v[self.dw]),
            &self.dw_norm,
            pool,
        )?;
        if let Some(a) = a1_own {
            pool.give(a);
        }
        let (mut z, saved) = norm_forward(ctx, &self.dw_norm, v, ho, &d, sums, pool)?;
        tape.d_saved = saved;
        tape.d = d;
        // Squeeze-excite.
        let shape = Nhwc::new(n, ho, ho, s.mid_ch)?;
        timed(SE_FWD, || -> Result<()> {
            self.se_forward(v, ctx, &shape, &z, &mut tape)?;
            gate::forward_inplace(&shape, &mut z, &tape.gate)
        })?;
        // Projection.
        let pc = conv(&ConvDesc::pointwise(n, (ho, ho), s.mid_ch, s.out_ch))?;
        let (o, sums) = conv_forward(
            ctx,
            pc,
            CONV_1X1_FWD,
            (&z, &v[self.proj]),
            &self.proj_norm,
            pool,
        )?;
        pool.give(z);
        let (y, saved) = norm_forward(ctx, &self.proj_norm, v, ho, &o, sums, pool)?;
        tape.o_saved = saved;
        tape.o = o;
        // Skip.
        if s.skip {
            tape.drop_p = self.drop_rate * ctx.drop_connect;
            tape.drop_seed = ctx.seed;
            let mut out = pool.take(y.len())?;
            timed(RESIDUAL, || {
                drop_connect(tape.drop_p, tape.drop_seed)?.forward_residual(n, &y, x, &mut out)
            })?;
            pool.give(y);
            tape.out = out;
        } else {
            tape.out = y;
        }
        Ok(tape)
    }

    /// pool → reduce (bias) → swish → expand (bias) → sigmoid (→ × delayed scale).
    fn se_forward(
        &self,
        v: &[Vec<f32>],
        ctx: &Ctx,
        shape: &Nhwc,
        z: &[f32],
        tape: &mut BlockTape,
    ) -> Result<()> {
        let s = &self.spec;
        let n = ctx.batch;
        let mut pooled = vec![0.0f32; shape.pooled_len()];
        pool::global_avg_pool(shape, z, &mut pooled)?;
        let red = FullyConnected::new(n, s.mid_ch, s.se_ch)?;
        let mut r = vec![0.0f32; red.y_len()];
        red.forward(
            &pooled,
            &v[self.se_reduce.0],
            Some(&v[self.se_reduce.1]),
            &mut r,
        )?;
        let mut s1 = vec![0.0f32; r.len()];
        activation::forward(Activation::Swish, &r, &mut s1)?;
        let exp = FullyConnected::new(n, s.se_ch, s.mid_ch)?;
        let mut t = vec![0.0f32; exp.y_len()];
        exp.forward(
            &s1,
            &v[self.se_expand.0],
            Some(&v[self.se_expand.1]),
            &mut t,
        )?;
        let mut g = vec![0.0f32; t.len()];
        activation::forward(Activation::Sigmoid, &t, &mut g)?;
        tape.gate = match self.dw_norm.delayed_scale(&tape.d_saved) {
            Some(scale) => {
                let mut gs = vec![0.0f32; g.len()];
                gate::forward(&Nhwc::new(1, n, 1, s.mid_ch)?, &g, scale, &mut gs)?;
                gs
            }
            None => g.clone(),
        };
        tape.pooled = pooled;
        tape.r = r;
        tape.s1 = s1;
        tape.t = t;
        tape.g = g;
        Ok(())
    }

    /// Backward: the gradient of the block input (a buffer from `pool`, overwritten)
    /// from `dy` (gradient of the block output), the block input `x` and the tape; the
    /// block's parameter gradients are overwritten.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        v: &[Vec<f32>],
        gr: &mut [Vec<f32>],
        ctx: &Ctx,
        x: &[f32],
        tape: &BlockTape,
        dy: &[f32],
        pool: &Pool,
    ) -> Result<Vec<f32>> {
        let s = &self.spec;
        let n = ctx.batch;
        let (hw, ho) = (tape.hw_in, tape.hw_out);
        // Skip: the branch gets dy·scale[n].
        let dbranch_own = if s.skip && tape.drop_p > 0.0 {
            let mut d = pool.take(dy.len())?;
            timed(RESIDUAL, || {
                drop_connect(tape.drop_p, tape.drop_seed)?.backward(n, dy, &mut d)
            })?;
            Some(d)
        } else {
            None
        };
        let dbranch: &[f32] = dbranch_own.as_deref().unwrap_or(dy);
        // Projection norm.
        let mut d_o = pool.take(tape.o.len())?;
        timed(NORM_BWD, || {
            self.proj_norm.backward(
                v,
                gr,
                n,
                ho,
                &tape.o,
                dbranch,
                None,
                &tape.o_saved,
                &mut d_o,
            )
        })?;
        if let Some(d) = dbranch_own {
            pool.give(d);
        }
        // Recompute the activations of the spatial norm and the gated input.
        let mut z = pool.take(tape.d.len())?;
        timed(NORM_RECOMPUTE, || {
            self.dw_norm
                .recompute(v, n, ho, &tape.d, &tape.d_saved, &mut z)
        })?;
        let shape = Nhwc::new(n, ho, ho, s.mid_ch)?;
        let mut h = pool.take(z.len())?;
        timed(SE_BWD, || gate::forward(&shape, &z, &tape.gate, &mut h))?;
        // Projection conv.
        let pc = conv(&ConvDesc::pointwise(n, (ho, ho), s.mid_ch, s.out_ch))?;
        timed(CONV_1X1_BWD_W, || {
            pc.backward_weight(&h, &d_o, &mut gr[self.proj], None, GradMode::Overwrite)
        })?;
        let mut dh = h;
        timed(CONV_1X1_BWD_D, || {
            pc.backward_data(&d_o, &v[self.proj], &mut dh)
        })?;
        pool.give(d_o);
        // Gate and squeeze-excite.
        let mut dz = pool.take(z.len())?;
        let ds = timed(SE_BWD, || {
            self.se_backward(v, gr, ctx, &shape, tape, &dh, &z, &mut dz)
        })?;
        pool.give(dh);
        pool.give(z);
        // Spatial norm.
        let mut dd = pool.take(tape.d.len())?;
        timed(NORM_BWD, || {
            self.dw_norm.backward(
                v,
                gr,
                n,
                ho,
                &tape.d,
                &dz,
                ds.as_deref(),
                &tape.d_saved,
                &mut dd,
            )
        })?;
        pool.give(dz);
        // Spatial conv (recomputing its input under expansion).
        let dwc = self.dw_conv(ctx, hw)?;
        let dx = if let Some((w, norm)) = &self.expand {
            let mut a1 = pool.take(tape.e.len())?;
            timed(NORM_RECOMPUTE, || {
                norm.recompute(v, n, hw, &tape.e, &tape.e_saved, &mut a1)
            })?;
            timed(CONV_KXK_BWD_W, || {
                dwc.backward_weight(&a1, &dd, &mut gr[self.dw], None, GradMode::Overwrite)
            })?;
            let mut da1 = a1;
            timed(CONV_KXK_BWD_D, || {
                dwc.backward_data(&dd, &v[self.dw], &mut da1)
            })?;
            pool.give(dd);
            let mut de = pool.take(tape.e.len())?;
            timed(NORM_BWD, || {
                norm.backward(v, gr, n, hw, &tape.e, &da1, None, &tape.e_saved, &mut de)
            })?;
            pool.give(da1);
            let c = conv(&ConvDesc::pointwise(n, (hw, hw), s.in_ch, s.mid_ch))?;
            timed(CONV_1X1_BWD_W, || {
                c.backward_weight(x, &de, &mut gr[*w], None, GradMode::Overwrite)
            })?;
            let mut dx = pool.take(x.len())?;
            timed(CONV_1X1_BWD_D, || c.backward_data(&de, &v[*w], &mut dx))?;
            pool.give(de);
            dx
        } else {
            timed(CONV_KXK_BWD_W, || {
                dwc.backward_weight(x, &dd, &mut gr[self.dw], None, GradMode::Overwrite)
            })?;
            let mut dx = pool.take(x.len())?;
            timed(CONV_KXK_BWD_D, || {
                dwc.backward_data(&dd, &v[self.dw], &mut dx)
            })?;
            pool.give(dd);
            dx
        };
        if s.skip { add(pool, dx, dy) } else { Ok(dx) }
    }

    /// The gate and squeeze-excite backward: `dz` (overwritten) from `dh` (gradient
    /// of the gated activation `h = z·gate`) and the recomputed `z`; the SE
    /// parameter gradients are overwritten. Returns the gradient of the delayed
    /// Proxy Norm scale, if the spatial norm has one.
    #[allow(clippy::too_many_arguments)]
    fn se_backward(
        &self,
        v: &[Vec<f32>],
        gr: &mut [Vec<f32>],
        ctx: &Ctx,
        shape: &Nhwc,
        tape: &BlockTape,
        dh: &[f32],
        z: &[f32],
        dz: &mut [f32],
    ) -> Result<Option<Vec<f32>>> {
        let s = &self.spec;
        let n = ctx.batch;
        let mut dgate = vec![0.0f32; tape.gate.len()];
        gate::backward(shape, dh, z, &tape.gate, dz, &mut dgate)?;
        let scale = self.dw_norm.delayed_scale(&tape.d_saved);
        let (dg, ds) = match scale {
            Some(sc) => {
                let mut dg = vec![0.0f32; dgate.len()];
                let mut ds = vec![0.0f32; s.mid_ch];
                let sh = Nhwc::new(1, n, 1, s.mid_ch)?;
                gate::backward(&sh, &dgate, &tape.g, sc, &mut dg, &mut ds)?;
                (dg, Some(ds))
            }
            None => (dgate, None),
        };
        // SE expand.
        let mut dt = vec![0.0f32; dg.len()];
        activation::backward(Activation::Sigmoid, &tape.t, &dg, &mut dt)?;
        let exp = FullyConnected::new(n, s.se_ch, s.mid_ch)?;
        {
            let (w, b) = self.se_expand;
            let mut db = std::mem::take(&mut gr[b]);
            exp.backward_weight(
                &tape.s1,
                &dt,
                &mut gr[w],
                Some(&mut db),
                GradMode::Overwrite,
            )?;
            gr[b] = db;
        }
        let mut ds1 = vec![0.0f32; tape.s1.len()];
        exp.backward_data(&dt, &v[self.se_expand.0], &mut ds1)?;
        let mut dr = vec![0.0f32; ds1.len()];
        activation::backward(Activation::Swish, &tape.r, &ds1, &mut dr)?;
        let red = FullyConnected::new(n, s.mid_ch, s.se_ch)?;
        {
            let (w, b) = self.se_reduce;
            let mut db = std::mem::take(&mut gr[b]);
            red.backward_weight(
                &tape.pooled,
                &dr,
                &mut gr[w],
                Some(&mut db),
                GradMode::Overwrite,
            )?;
            gr[b] = db;
        }
        let mut dpooled = vec![0.0f32; tape.pooled.len()];
        red.backward_data(&dr, &v[self.se_reduce.0], &mut dpooled)?;
        pool::global_avg_pool_backward(shape, &dpooled, dz, GradMode::Accumulate)?;
        Ok(ds)
    }

    /// Updates the BatchNorm running statistics from a training tape.
    pub(crate) fn update_running(
        &self,
        v: &mut [Vec<f32>],
        n: usize,
        tape: &BlockTape,
        momentum: f32,
    ) -> Result<()> {
        if let Some((_, norm)) = &self.expand {
            norm.update_running(v, n, tape.hw_in, &tape.e_saved, momentum)?;
        }
        self.dw_norm
            .update_running(v, n, tape.hw_out, &tape.d_saved, momentum)?;
        self.proj_norm
            .update_running(v, n, tape.hw_out, &tape.o_saved, momentum)
    }

    /// Bytes of the temporaries of this block's backward pass (beyond the tape).
    pub(crate) fn workspace_bytes(&self, n: usize, hw: usize, ho: usize) -> usize {
        let s = &self.spec;
        let (mi, mo) = (s.mid_ch * hw * hw * n, s.mid_ch * ho * ho * n);
        4 * (s.out_ch * ho * ho * n * 2 + 3 * mo + 2 * mi + s.in_ch * hw * hw * n)
    }
}
