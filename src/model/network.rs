//! The whole network: stem → MBConv blocks → head → pooling → dropout → classifier,
//! forward (training and inference) and backward, at any resolution and batch size.

use super::block::{Block, BlockTape, Ctx, conv_forward, norm_forward};
use super::infer::{FusedConv, FusedNet, InferencePlan};
use super::infer_band::BandPolicy;
use super::norm_act::{NormAct, NormSaved, Place};
use super::ops::Pool;
use super::params::{ParamKind, ParamStore};
use super::profile::{
    CONV_1X1_BWD_D, CONV_1X1_BWD_W, CONV_1X1_FWD, CONV_STEM, HEAD, NORM_BWD, timed,
};
use crate::arch::ArchConfig;
use crate::error::{Error, Result, checked_product, try_filled};
use crate::kernels::activation::Activation;
use crate::kernels::conv::{Conv2d, ConvDesc, GradMode};
use crate::kernels::fully_connected::FullyConnected;
use crate::kernels::loss::{CrossEntropy, Targets};
use crate::kernels::pool::{self, Nhwc};
use crate::kernels::regularize::Dropout;
use crate::rng::CounterRng;

/// How a forward pass runs.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Pass {
    /// BatchNorm uses the batch statistics (training) instead of the running ones.
    pub batch_stats: bool,
    /// Dropout probability before the classifier (0 = off).
    pub dropout: f32,
    /// Multiplier of the blocks' drop-connect rates (1 = the architecture's, 0 = off).
    pub drop_connect: f32,
    /// Seed of this pass's dropout and drop-connect masks (use a new one per step).
    pub seed: u64,
    /// The backward pass stops after the head (classifier, head 1×1 conv and its
    /// norm): the other parameters' gradients are left as they were (head
    /// fine-tuning, where the rest of the network is frozen).
    pub head_only: bool,
}

impl Pass {
    /// Training: batch statistics, the architecture's dropout and drop-connect.
    pub fn train(cfg: &ArchConfig, seed: u64) -> Pass {
        Pass {
            batch_stats: true,
            dropout: cfg.dropout as f32,
            drop_connect: 1.0,
            seed,
            head_only: false,
        }
    }

    /// Inference: running statistics, no dropout or drop-connect.
    pub fn eval() -> Pass {
        Pass {
            batch_stats: false,
            dropout: 0.0,
            drop_connect: 0.0,
            seed: 0,
            head_only: false,
        }
    }

    /// Training-mode statistics without any random regularization (deterministic in
    /// the inputs: gradient checks, `effnet grad`).
    pub fn deterministic_train() -> Pass {
        Pass {
            batch_stats: true,
            dropout: 0.0,
            drop_connect: 0.0,
            seed: 0,
            head_only: false,
        }
    }
}

/// Everything a forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct Tape {
    batch: usize,
    res: usize,
    pass: Pass,
    input: Vec<f32>,
    stem_hw: usize,
    stem_pre: Vec<f32>,
    stem_saved: NormSaved,
    stem_out: Vec<f32>,
    blocks: Vec<BlockTape>,
    head_pre: Vec<f32>,
    head_saved: NormSaved,
    pooled: Vec<f32>,
    dropped: Vec<f32>,
    /// The logits `[batch][classes]`.
    pub logits: Vec<f32>,
}

impl Tape {
    /// Bytes of activations held for the backward pass.
    pub fn bytes(&self) -> usize {
        4 * (self.input.len()
            + self.stem_pre.len()
            + self.stem_out.len()
            + self.head_pre.len()
            + self.pooled.len()
            + self.dropped.len()
            + self.logits.len())
            + self.stem_saved.bytes()
            + self.head_saved.bytes()
            + self.blocks.iter().map(|b| b.bytes()).sum::<usize>()
    }
}

/// Planned activation memory of one training step.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Bytes the forward pass keeps for the backward pass.
    pub tape_bytes: usize,
    /// Largest temporary working set of the backward pass on top of the tape.
    pub workspace_bytes: usize,
}

impl MemoryPlan {
    /// Peak activation bytes (tape + workspace).
    pub fn peak_bytes(&self) -> usize {
        self.tape_bytes + self.workspace_bytes
    }
}

/// An EfficientNet: configuration, parameters and layer plan.
///
/// Input images are NHWC `[batch][res][res][3]` `f32` (normalized); logits are
/// `[batch][classes]`.
#[derive(Clone, Debug)]
pub struct Network {
    cfg: ArchConfig,
    params: ParamStore,
    stem: usize,
    stem_norm: NormAct,
    blocks: Vec<Block>,
    head: usize,
    head_norm: NormAct,
    fc: (usize, usize),
    /// Activation buffers reused from step to step (a clone starts empty).
    pool: Pool,
    /// The norms' statistics gathered by the convolutions before them
    /// ([`Network::set_conv_statistics`]).
    conv_stats: bool,
}

/// BatchNorm running-statistics momentum (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;

impl Network {
    /// Builds the network of `cfg` with parameters initialised from `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a configuration with no classes,
    /// [`Error::Overflow`] or [`Error::OutOfMemory`] when the parameters (the
    /// classifier grows with `cfg.num_classes`) do not fit in memory addressing or
    /// cannot be allocated.
    pub fn new(cfg: &ArchConfig, seed: u64) -> Result<Network> {
        if cfg.num_classes == 0 {
            return Err(Error::InvalidArgument(
                "the network needs at least one class".into(),
            ));
        }
        let mut st = ParamStore::new();
        let (norm, eps) = (cfg.norm, cfg.norm_eps);
        let sc = cfg.stem_channels();
        let stem = st.add(
            "conv_stem.weight".into(),
            vec![3, 3, 3, sc],
            ParamKind::ConvFanOut,
        )?;
        let stem_norm = NormAct::register(&mut st, "bn1", norm, eps, Place::Full, sc)?;
        let specs = cfg.blocks();
        let nb = specs.len();
        let mut blocks = Vec::with_capacity(nb);
        for (i, spec) in specs.into_iter().enumerate() {
            let rate = (cfg.drop_connect * i as f64 / nb as f64) as f32;
            blocks.push(Block::register(&mut st, cfg, spec, rate)?);
        }
        let last = blocks.last().map(|b| b.spec.out_ch).unwrap_or(sc);
        let hc = cfg.head_channels();
        let head = st.add(
            "conv_head.weight".into(),
            vec![1, 1, last, hc],
            ParamKind::ConvFanOut,
        )?;
        let head_norm = NormAct::register(&mut st, "bn2", norm, eps, Place::Head, hc)?;
        let fc = (
            st.add(
                "classifier.weight".into(),
                vec![hc, cfg.num_classes],
                ParamKind::Dense,
            )?,
            st.add(
                "classifier.bias".into(),
                vec![cfg.num_classes],
                ParamKind::Bias,
            )?,
        );
        st.init(seed);
        Ok(Network {
            cfg: cfg.clone(),
            params: st,
            stem,
            stem_norm,
            blocks,
            head,
            head_norm,
            fc,
            pool: Pool::default(),
            conv_stats: true,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ArchConfig {
        &self.cfg
    }

    /// The parameters (values and gradients).
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    /// The parameters, mutable (optimizers, loading weights).
    pub fn params_mut(&mut self) -> &mut ParamStore {
        &mut self.params
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// The input length for `batch` images of `res`×`res`, after checking both.
    fn input_len(batch: usize, res: usize) -> Result<usize> {
        if batch == 0 {
            return Err(Error::InvalidArgument("batch must be at least 1".into()));
        }
        if res < 8 {
            return Err(Error::InvalidArgument(format!(
                "resolution {res} is below the minimum of 8"
            )));
        }
        checked_product("the images [batch, res, res, 3]", &[batch, res, res, 3])
    }

    fn check_input(&self, x: &[f32], batch: usize, res: usize) -> Result<()> {
        let want = Self::input_len(batch, res)?;
        if x.len() != want {
            return Err(Error::BufferSize {
                name: "images",
                expected: want,
                actual: x.len(),
            });
        }
        Ok(())
    }

    fn stem_conv(&self, batch: usize, res: usize) -> Result<Conv2d> {
        Conv2d::new(
            &self
                .cfg
                .conv_desc(batch, res, (3, self.cfg.stem_channels()), 3, 2, 3),
        )
    }

    fn head_conv(&self, batch: usize, hw: usize) -> Result<Conv2d> {
        let last = self
            .blocks
            .last()
            .map(|b| b.spec.out_ch)
            .unwrap_or(self.cfg.stem_channels());
        Conv2d::new(&ConvDesc::pointwise(
            batch,
            (hw, hw),
            last,
            self.cfg.head_channels(),
        ))
    }

    fn dropout(&self, pass: &Pass) -> Result<Option<Dropout>> {
        if pass.dropout > 0.0 {
            Ok(Some(Dropout::new(
                pass.dropout,
                CounterRng::new(pass.seed, 0xD0).u64_at(0),
            )?))
        } else {
            Ok(None)
        }
    }

    /// Forward pass of `x` (`[batch][res][res][3]`), keeping what the backward pass
    /// needs. The logits are in [`Tape::logits`].
    ///
    /// # Errors
    /// [`Error::BufferSize`] for a wrong input length, [`Error::InvalidArgument`] for a
    /// batch of 0 or a resolution below 8, [`Error::Overflow`] when a layer's tensor
    /// for this batch and resolution does not fit in memory addressing,
    /// [`Error::OutOfMemory`] when its activations cannot be allocated, and any kernel
    /// error.
    pub fn forward(&self, x: &[f32], batch: usize, res: usize, pass: &Pass) -> Result<Tape> {
        self.run_forward(x, batch, res, pass, true)
    }

    /// Inference: the logits `[batch][classes]` (running statistics, no dropout), with
    /// no tape kept.
    ///
    /// # Errors
    /// As [`Network::forward`].
    pub fn predict(&self, x: &[f32], batch: usize, res: usize) -> Result<Vec<f32>> {
        Ok(self
            .run_forward(x, batch, res, &Pass::eval(), false)?
            .logits)
    }

    /// The network prepared for inference on `batch` images of `res`×`res` (see
    /// [`InferencePlan`]): BatchNorm folded into the convolutions, activations and
    /// residual adds in their epilogues, weights packed once, buffers kept. The plan
    /// copies the weights: make it again after they change. Networks with per-sample
    /// norms (GroupNorm, LayerNorm + Proxy Norm) get a plan that runs their unfused
    /// forward pass.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a batch of 0 or a resolution below 8; any
    /// planning error of the layers.
    pub fn plan_inference(&self, batch: usize, res: usize) -> Result<InferencePlan> {
        self.plan_with_bands(batch, res, BandPolicy::for_machine)
    }

    /// [`Network::plan_inference`] with the budget of the depth-first blocks' band
    /// buffers given: every block whose expanded image is larger than `band_bytes`
    /// runs its expansion and k×k convolution band by band, one image at a time
    /// (`usize::MAX`: none). By default a block runs depth-first only when its
    /// expanded tensor would not stay in the last-level cache, in bands of half of the
    /// threads' L2 caches.
    ///
    /// # Errors
    /// As [`Network::plan_inference`].
    pub fn plan_inference_with(
        &self,
        batch: usize,
        res: usize,
        band_bytes: usize,
    ) -> Result<InferencePlan> {
        self.plan_with_bands(batch, res, |_| BandPolicy::bands_of(band_bytes))
    }

    /// The plan, with the band policy for the number of threads a lane's kernels see.
    fn plan_with_bands(
        &self,
        batch: usize,
        res: usize,
        bands: impl Fn(usize) -> BandPolicy,
    ) -> Result<InferencePlan> {
        Self::input_len(batch, res)?;
        let policy = bands(super::infer::lane_threads(batch));
        let (_, group) = super::infer::layout(batch);
        InferencePlan::new(batch, res, self.fused_net(group, res, policy)?)
    }

    /// The prepared layers for groups of `group` images: BatchNorms folded,
    /// per-sample norms after their convolutions. The stem and the blocks before the
    /// first one whose weights outweigh one image's activations are planned for one
    /// image (each image of a group runs them on its own, its activations staying in
    /// cache); that block, the rest and the head for the whole group (its weights
    /// read once for the group).
    fn fused_net(&self, group: usize, res: usize, bands: BandPolicy) -> Result<FusedNet> {
        let v = &self.params.values;
        let cfg = &self.cfg;
        let sd = cfg.conv_desc(1, res, (3, cfg.stem_channels()), 3, 2, 3);
        let mut hw = sd.validate()?.out_h;
        let stem_norm = self.stem_norm.for_inference(v, 1, hw)?;
        let stem = FusedConv::normed(&sd, &v[self.stem], stem_norm, false)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        let mut grouped_from = None;
        // Whether the block and every one before it would run image by image in a
        // plan of any group size.
        let mut early = true;
        for (i, b) in self.blocks.iter().enumerate() {
            let (weights, acts) = b.inference_floats(cfg, hw)?;
            early &= !super::infer::groups_block(weights, acts);
            if grouped_from.is_none() && group > 1 && !early {
                grouped_from = Some(i);
            }
            let n = if grouped_from.is_some() { group } else { 1 };
            blocks.push(b.fused(v, cfg, n, hw, bands, early)?);
            hw = b.out_hw(cfg, hw)?;
        }
        let last = self
            .blocks
            .last()
            .map_or(cfg.stem_channels(), |b| b.spec.out_ch);
        let hc = cfg.head_channels();
        let n = group;
        let hd = ConvDesc::pointwise(n, (hw, hw), last, hc);
        let head_norm = self.head_norm.for_inference(v, n, hw)?;
        let head = FusedConv::normed(&hd, &v[self.head], head_norm, false)?;
        Ok(FusedNet {
            group,
            grouped_from: grouped_from.unwrap_or(self.blocks.len()),
            stem,
            blocks,
            head,
            pool: Nhwc::new(n, hw, hw, hc)?,
            fc: FusedConv::dense(
                n,
                (hc, cfg.num_classes),
                &v[self.fc.0],
                &v[self.fc.1],
                Activation::Identity,
            )?,
        })
    }

    fn ctx(&self, batch: usize, pass: &Pass) -> Ctx<'_> {
        Ctx {
            cfg: &self.cfg,
            batch,
            batch_stats: pass.batch_stats,
            drop_connect: pass.drop_connect,
            seed: pass.seed,
            conv_stats: self.conv_stats,
        }
    }

    fn block_seed(pass: &Pass, i: usize) -> u64 {
        CounterRng::new(pass.seed, 0xDC).u64_at(i as u64)
    }

    fn run_forward(
        &self,
        x: &[f32],
        batch: usize,
        res: usize,
        pass: &Pass,
        keep: bool,
    ) -> Result<Tape> {
        self.check_input(x, batch, res)?;
        if !(0.0..1.0).contains(&pass.dropout) || !(0.0..=1.0).contains(&pass.drop_connect) {
            return Err(Error::InvalidArgument(format!(
                "dropout {} must be in [0, 1) and the drop-connect factor {} in [0, 1]",
                pass.dropout, pass.drop_connect
            )));
        }
        let v = &self.params.values;
        let n = batch;
        let pool = &self.pool;
        // Stem.
        let ctx = self.ctx(n, pass);
        let sc = self.stem_conv(n, res)?;
        let hw = sc.shape().out_h;
        let stem_in = (x, &v[self.stem][..]);
        let (mut stem_pre, sums) =
            conv_forward(&ctx, sc, CONV_STEM, stem_in, &self.stem_norm, pool)?;
        let (stem_out, stem_saved) =
            norm_forward(&ctx, &self.stem_norm, v, hw, &stem_pre, sums, pool)?;
        if !keep {
            pool.give(std::mem::take(&mut stem_pre));
        }
        // Blocks. Without a tape, each block's buffers go back to the pool at once and
        // only the running output is kept.
        let mut tapes: Vec<BlockTape> = Vec::with_capacity(self.blocks.len());
        let mut cur_hw = hw;
        let mut cur: Option<Vec<f32>> = None;
        for (i, b) in self.blocks.iter().enumerate() {
            let ctx = Ctx {
                seed: Self::block_seed(pass, i),
                ..self.ctx(n, pass)
            };
            let input: &[f32] = match (keep, &cur, tapes.last()) {
                (true, _, Some(t)) => &t.out,
                (false, Some(p), _) => p,
                _ => &stem_out,
            };
            let mut t = b.forward(v, &ctx, cur_hw, input, pool)?;
            cur_hw = t.hw_out;
            if keep {
                tapes.push(t);
            } else {
                t.release(pool, true);
                if let Some(p) = cur.replace(std::mem::take(&mut t.out)) {
                    pool.give(p);
                }
            }
        }
        let head_in: &[f32] = match (keep, &cur, tapes.last()) {
            (true, _, Some(t)) => &t.out,
            (false, Some(p), _) => p,
            _ => &stem_out,
        };
        // Head.
        let hc = self.head_conv(n, cur_hw)?;
        let head_w = (head_in, &v[self.head][..]);
        let (head_pre, sums) = conv_forward(&ctx, hc, CONV_1X1_FWD, head_w, &self.head_norm, pool)?;
        if let Some(p) = cur {
            pool.give(p);
        }
        let (head_out, head_saved) =
            norm_forward(&ctx, &self.head_norm, v, cur_hw, &head_pre, sums, pool)?;
        let shape = Nhwc::new(n, cur_hw, cur_hw, self.cfg.head_channels())?;
        let mut pooled = try_filled("the pooled features", shape.pooled_len(), 0.0f32)?;
        let mut dropped = Vec::new();
        let mut logits = Vec::new();
        timed(HEAD, || -> Result<()> {
            pool::global_avg_pool(&shape, &head_out, &mut pooled)?;
            if let Some(d) = self.dropout(pass)? {
                dropped = try_filled("the dropout output", pooled.len(), 0.0f32)?;
                d.forward(&pooled, &mut dropped)?;
            }
            let fc = FullyConnected::new(n, self.cfg.head_channels(), self.cfg.num_classes)?;
            logits = try_filled("the logits", fc.y_len(), 0.0f32)?;
            fc.forward(
                if dropped.is_empty() {
                    &pooled
                } else {
                    &dropped
                },
                &v[self.fc.0],
                Some(&v[self.fc.1]),
                &mut logits,
            )
        })?;
        pool.give(head_out);
        if !keep {
            pool.give(stem_out);
            pool.give(head_pre);
            return Ok(Tape {
                batch,
                res,
                pass: *pass,
                input: Vec::new(),
                stem_hw: hw,
                stem_pre: Vec::new(),
                stem_saved: NormSaved::None,
                stem_out: Vec::new(),
                blocks: Vec::new(),
                head_pre: Vec::new(),
                head_saved: NormSaved::None,
                pooled: Vec::new(),
                dropped: Vec::new(),
                logits,
            });
        }
        let mut input = pool.take(x.len())?;
        input.copy_from_slice(x);
        Ok(Tape {
            batch,
            res,
            pass: *pass,
            input,
            stem_hw: hw,
            stem_pre,
            stem_saved,
            stem_out,
            blocks: tapes,
            head_pre,
            head_saved,
            pooled,
            dropped,
            logits,
        })
    }

    /// Hands the activation buffers of a finished step's tape back to the network,
    /// which reuses them in later passes instead of allocating new ones (results are
    /// the same either way).
    pub fn recycle(&self, tape: Tape) {
        let Tape {
            input,
            stem_pre,
            stem_out,
            blocks,
            head_pre,
            ..
        } = tape;
        for v in [input, stem_pre, stem_out, head_pre] {
            self.pool.give(v);
        }
        for mut b in blocks {
            b.release(&self.pool, false);
        }
    }

    /// Bytes of activation buffers the network holds for reuse (see
    /// [`Network::recycle`]).
    pub fn cached_bytes(&self) -> usize {
        self.pool.bytes()
    }

    /// Whether activation buffers are reused from pass to pass (on by default; off
    /// makes every buffer a fresh allocation, as a baseline for measurements).
    pub fn set_buffer_reuse(&mut self, on: bool) {
        self.pool.set_reuse(on);
    }

    /// Whether a forward pass's norms take their input statistics from the
    /// convolution before them (on by default): its statistics post-op sums each
    /// image's channels, and their squares, while the output is in cache, and the
    /// norm then reads that output once (the apply pass) instead of twice. Off, each
    /// norm computes its statistics in a pass of its own — the unfused baseline, for
    /// tests and measurements. The two agree to rounding (the statistics come from
    /// differently ordered sums); each is the same bits for any thread count.
    pub fn set_conv_statistics(&mut self, on: bool) {
        self.conv_stats = on;
    }

    /// Frees the activation buffers held for reuse.
    pub fn clear_cache(&self) {
        self.pool.clear();
    }

    /// Backward pass: the gradient of every parameter (overwritten in
    /// [`ParamStore::grads`]) from `dlogits` (`[batch][classes]`) and the tape of the
    /// forward pass. With [`Pass::head_only`] only the head's gradients are written.
    ///
    /// # Errors
    /// [`Error::BufferSize`] for a wrong `dlogits` length, [`Error::InvalidArgument`]
    /// for a tape of an inference pass, and any kernel error.
    pub fn backward(&mut self, tape: &Tape, dlogits: &[f32]) -> Result<()> {
        if tape.input.is_empty() {
            return Err(Error::InvalidArgument(
                "backward needs the tape of Network::forward (predict keeps none)".into(),
            ));
        }
        let n = tape.batch;
        let k = self.cfg.num_classes;
        if dlogits.len() != n * k {
            return Err(Error::BufferSize {
                name: "dlogits",
                expected: n * k,
                actual: dlogits.len(),
            });
        }
        let mut grads = std::mem::take(&mut self.params.grads);
        let r = self.backward_into(tape, dlogits, &mut grads);
        self.params.grads = grads;
        r
    }

    fn backward_into(&self, tape: &Tape, dlogits: &[f32], gr: &mut [Vec<f32>]) -> Result<()> {
        let n = tape.batch;
        let k = self.cfg.num_classes;
        let pass = tape.pass;
        let v = &self.params.values;
        let pool = &self.pool;
        let hcn = self.cfg.head_channels();
        // Classifier and dropout.
        let fc = FullyConnected::new(n, hcn, k)?;
        let fc_in = if tape.dropped.is_empty() {
            &tape.pooled
        } else {
            &tape.dropped
        };
        let mut dpooled = vec![0.0f32; tape.pooled.len()];
        timed(HEAD, || -> Result<()> {
            let mut db = std::mem::take(&mut gr[self.fc.1]);
            let r = fc.backward_weight(
                fc_in,
                dlogits,
                &mut gr[self.fc.0],
                Some(&mut db),
                GradMode::Overwrite,
            );
            gr[self.fc.1] = db;
            r?;
            fc.backward_data(dlogits, &v[self.fc.0], &mut dpooled)?;
            if let Some(d) = self.dropout(&pass)? {
                let mut t = vec![0.0f32; dpooled.len()];
                d.backward(&dpooled, &mut t)?;
                dpooled = t;
            }
            Ok(())
        })?;
        // Head.
        let hw = tape.blocks.last().map(|b| b.hw_out).unwrap_or(tape.stem_hw);
        let shape = Nhwc::new(n, hw, hw, hcn)?;
        let mut dhead = pool.take(shape.len())?;
        timed(HEAD, || {
            pool::global_avg_pool_backward(&shape, &dpooled, &mut dhead, GradMode::Overwrite)
        })?;
        let mut dpre = pool.take(tape.head_pre.len())?;
        timed(NORM_BWD, || {
            self.head_norm.backward(
                v,
                gr,
                n,
                hw,
                &tape.head_pre,
                &dhead,
                None,
                &tape.head_saved,
                &mut dpre,
            )
        })?;
        pool.give(dhead);
        let head_in = tape
            .blocks
            .last()
            .map(|b| &b.out[..])
            .unwrap_or(&tape.stem_out);
        let hc = self.head_conv(n, hw)?;
        timed(CONV_1X1_BWD_W, || {
            hc.backward_weight(
                head_in,
                &dpre,
                &mut gr[self.head],
                None,
                GradMode::Overwrite,
            )
        })?;
        if pass.head_only {
            pool.give(dpre);
            return Ok(());
        }
        let mut dy = pool.take(head_in.len())?;
        timed(CONV_1X1_BWD_D, || {
            hc.backward_data(&dpre, &v[self.head], &mut dy)
        })?;
        pool.give(dpre);
        // Blocks, last to first.
        for (i, b) in self.blocks.iter().enumerate().rev() {
            let ctx = Ctx {
                cfg: &self.cfg,
                batch: n,
                batch_stats: pass.batch_stats,
                seed: Self::block_seed(&pass, i),
                ..self.ctx(n, &pass)
            };
            let x = if i == 0 {
                &tape.stem_out[..]
            } else {
                &tape.blocks[i - 1].out[..]
            };
            let dx = b.backward(v, gr, &ctx, x, &tape.blocks[i], &dy, pool)?;
            pool.give(std::mem::replace(&mut dy, dx));
        }
        // Stem.
        let mut dstem = pool.take(tape.stem_pre.len())?;
        timed(NORM_BWD, || {
            self.stem_norm.backward(
                v,
                gr,
                n,
                tape.stem_hw,
                &tape.stem_pre,
                &dy,
                None,
                &tape.stem_saved,
                &mut dstem,
            )
        })?;
        pool.give(dy);
        let sc = self.stem_conv(n, tape.res)?;
        timed(CONV_STEM, || {
            sc.backward_weight(
                &tape.input,
                &dstem,
                &mut gr[self.stem],
                None,
                GradMode::Overwrite,
            )
        })?;
        pool.give(dstem);
        Ok(())
    }

    /// Updates BatchNorm's running statistics from a training tape (no-op for the
    /// other norms).
    ///
    /// # Errors
    /// Kernel errors.
    pub fn update_running(&mut self, tape: &Tape, momentum: f32) -> Result<()> {
        if !tape.pass.batch_stats || tape.input.is_empty() {
            return Ok(());
        }
        let n = tape.batch;
        let v = &mut self.params.values;
        self.stem_norm
            .update_running(v, n, tape.stem_hw, &tape.stem_saved, momentum)?;
        for (b, t) in self.blocks.iter().zip(&tape.blocks) {
            b.update_running(v, n, t, momentum)?;
        }
        let hw = tape.blocks.last().map(|b| b.hw_out).unwrap_or(tape.stem_hw);
        self.head_norm
            .update_running(v, n, hw, &tape.head_saved, momentum)
    }

    /// One forward and backward pass with the mean softmax cross-entropy (label
    /// smoothing `smoothing`) against `targets`; returns the loss and the tape (whose
    /// logits are those of the forward pass). Gradients are overwritten; BatchNorm's
    /// running statistics are updated when `pass.batch_stats` is set.
    ///
    /// # Errors
    /// As [`Network::forward`], plus invalid targets.
    pub fn loss_and_grad(
        &mut self,
        x: &[f32],
        batch: usize,
        res: usize,
        targets: Targets<'_>,
        smoothing: f32,
        pass: &Pass,
    ) -> Result<(f32, Tape)> {
        let tape = self.forward(x, batch, res, pass)?;
        let ce = CrossEntropy::new(batch, self.cfg.num_classes, smoothing)?;
        let mut dl = vec![0.0f32; tape.logits.len()];
        let loss = timed(HEAD, || {
            ce.forward_backward(&tape.logits, targets, Some(&mut dl))
        })?;
        self.backward(&tape, &dl)?;
        self.update_running(&tape, BN_MOMENTUM)?;
        Ok((loss, tape))
    }

    /// The activation memory a training step at `batch`×`res` plans: what the forward
    /// pass keeps, and the largest backward working set on top of it.
    pub fn memory_plan(&self, batch: usize, res: usize) -> MemoryPlan {
        let layers = self.cfg.conv_layers(batch, res);
        let mut tape = 4 * batch * res * res * 3;
        let mut work = 0usize;
        // Stem: pre-norm output and the activation (the first block's input).
        let mut hw = layers
            .first()
            .and_then(|l| l.desc.validate().ok())
            .map(|s| s.out_h)
            .unwrap_or(1);
        tape += 2 * 4 * batch * hw * hw * self.cfg.stem_channels();
        for b in &self.blocks {
            let s = &b.spec;
            let ho = hw.div_ceil(s.stride);
            let (mi, mo) = (batch * hw * hw * s.mid_ch, batch * ho * ho * s.mid_ch);
            let out = batch * ho * ho * s.out_ch;
            tape += 4 * (if s.expand { mi } else { 0 } + mo + 2 * out + 6 * batch * s.mid_ch);
            work = work.max(b.workspace_bytes(batch, hw, ho));
            hw = ho;
        }
        let hc = batch * hw * hw * self.cfg.head_channels();
        tape += 4 * hc;
        work = work.max(4 * 3 * hc);
        MemoryPlan {
            tape_bytes: tape,
            workspace_bytes: work,
        }
    }
}
