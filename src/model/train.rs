//! Training: the paper's recipe at reduced resolution, head fine-tuning at the test
//! resolution, evaluation, checkpoints (atomic safetensors with optimizer state, EMA,
//! step and configuration) and bit-exact resume.
//!
//! Every random choice (epoch order, dropout and drop-connect masks, mixup/cutmix) is
//! a pure function of the seed and the step or epoch, so a run resumed from the
//! checkpoint written at the end of an epoch continues exactly as the uninterrupted
//! run.

use super::network::{Network, Pass};
use super::optim::{Ema, Optimizer, OptimizerKind};
use super::schedule::{Decay, Schedule};
use crate::arch::ArchConfig;
use crate::data::Dataset;
use crate::error::{Error, Result, checked_product, try_filled};
use crate::io::tensors::{self, TensorMap};
use crate::kernels::loss::Targets;
use crate::kernels::pool::Nhwc;
use crate::kernels::regularize::{self, Pairing};
use crate::report::Curve;
use crate::rng::CounterRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Architecture name ([`ArchConfig::from_name`]).
    pub arch: String,
    /// Training resolution (reduced).
    pub train_res: usize,
    /// Head fine-tuning and test resolution (`train_res % 32 == finetune_res % 32`).
    pub finetune_res: usize,
    /// Batch size.
    pub batch: usize,
    /// Training epochs at `train_res`.
    pub epochs: usize,
    /// Head fine-tuning epochs at `finetune_res` (0 = none).
    pub finetune_epochs: usize,
    /// Update rule.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate of the head fine-tuning (constant).
    pub finetune_lr: f64,
    /// Warmup epochs.
    pub warmup: f64,
    /// Decay after warmup.
    pub decay: Decay,
    /// L2 weight decay (convolution and dense weights only).
    pub weight_decay: f32,
    /// Label smoothing ε.
    pub label_smoothing: f32,
    /// Mixup α (0 = off).
    pub mixup: f32,
    /// Cutmix α (0 = off). With both on, each step picks one.
    pub cutmix: f32,
    /// EMA decay of the weights.
    pub ema_decay: f32,
    /// Seed of the initialisation and of every random draw.
    pub seed: u64,
}

impl Default for TrainConfig {
    /// The built-in demonstration: a G16 LN+PN network at the `tiny` scale, trained at
    /// 48×48 and its head fine-tuned at the 80×80 test resolution on the synthetic
    /// shapes (48 % 32 = 80 % 32; BENCHMARKS.md, issue 16, compares it with training at
    /// 80×80).
    fn default() -> Self {
        TrainConfig {
            arch: "tiny_g16_lnpn".into(),
            train_res: 48,
            finetune_res: 80,
            batch: 32,
            epochs: 15,
            finetune_epochs: 2,
            optimizer: OptimizerKind::paper_rmsprop(),
            lr: 0.008,
            finetune_lr: 0.008,
            warmup: 1.0,
            decay: Decay::Exponential {
                rate: 0.97,
                every: 2.4,
            },
            weight_decay: 1e-5,
            label_smoothing: 0.1,
            mixup: 0.0,
            cutmix: 0.0,
            ema_decay: 0.99,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] with the first problem found.
    pub fn validate(&self) -> Result<ArchConfig> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let arch = ArchConfig::from_name(&self.arch)?;
        if self.train_res < 16 || self.finetune_res < 16 {
            return bad(format!(
                "resolutions {} and {} must be at least 16",
                self.train_res, self.finetune_res
            ));
        }
        if self.train_res % 32 != self.finetune_res % 32 {
            return bad(format!(
                "train_res % 32 must equal finetune_res % 32 ({} vs {}): the stride-32 grid must line up",
                self.train_res, self.finetune_res
            ));
        }
        if self.batch == 0 {
            return bad("batch must be at least 1".into());
        }
        // The batch of images (and the network's activations, checked per layer as
        // they are planned) must fit in memory addressing: an absurd batch or
        // resolution is an error here, before anything is allocated.
        for res in [self.train_res, self.finetune_res] {
            checked_product(
                &format!("a batch of {} images at {res}×{res}", self.batch),
                &[self.batch, res, res, 3],
            )?;
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label smoothing {} is outside [0, 1)",
                self.label_smoothing
            ));
        }
        if !(self.mixup >= 0.0
            && self.cutmix >= 0.0
            && self.mixup.is_finite()
            && self.cutmix.is_finite())
        {
            return bad("mixup and cutmix alphas must be finite and >= 0".into());
        }
        if !(0.0..=1.0).contains(&self.ema_decay) {
            return bad(format!("EMA decay {} is outside [0, 1]", self.ema_decay));
        }
        if !(self.finetune_lr.is_finite() && self.finetune_lr >= 0.0) {
            return bad(format!("invalid fine-tuning lr {}", self.finetune_lr));
        }
        self.schedule().validate()?;
        Ok(arch)
    }

    /// The learning-rate schedule of the main stage.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            base: self.lr,
            warmup: self.warmup,
            decay: self.decay,
        }
    }

    fn to_metadata(&self, m: &mut BTreeMap<String, String>) {
        let (opt, decay, momentum, eps) = match self.optimizer {
            OptimizerKind::Sgd { momentum } => ("sgd", 0.0, momentum, 0.0),
            OptimizerKind::RmsProp {
                decay,
                momentum,
                eps,
            } => ("rmsprop", decay, momentum, eps),
        };
        let (dk, d1, d2) = match self.decay {
            Decay::Exponential { rate, every } => ("exponential", rate, every),
            Decay::Cosine { total } => ("cosine", total, 0.0),
            Decay::Constant => ("constant", 0.0, 0.0),
        };
        let mut put = |k: &str, v: String| {
            m.insert(format!("cfg.{k}"), v);
        };
        put("arch", self.arch.clone());
        put("train_res", self.train_res.to_string());
        put("finetune_res", self.finetune_res.to_string());
        put("batch", self.batch.to_string());
        put("epochs", self.epochs.to_string());
        put("finetune_epochs", self.finetune_epochs.to_string());
        put("optimizer", opt.into());
        put("rms_decay", f32_bits(decay));
        put("momentum", f32_bits(momentum));
        put("eps", f32_bits(eps));
        put("lr", f64_bits(self.lr));
        put("finetune_lr", f64_bits(self.finetune_lr));
        put("warmup", f64_bits(self.warmup));
        put("decay", dk.into());
        put("decay_a", f64_bits(d1));
        put("decay_b", f64_bits(d2));
        put("weight_decay", f32_bits(self.weight_decay));
        put("label_smoothing", f32_bits(self.label_smoothing));
        put("mixup", f32_bits(self.mixup));
        put("cutmix", f32_bits(self.cutmix));
        put("ema_decay", f32_bits(self.ema_decay));
        put("seed", self.seed.to_string());
    }

    fn from_metadata(m: &BTreeMap<String, String>) -> Result<TrainConfig> {
        let get = |k: &str| -> Result<&str> {
            m.get(&format!("cfg.{k}"))
                .map(|s| s.as_str())
                .ok_or_else(|| corrupt(format!("metadata cfg.{k} is missing")))
        };
        let us = |k: &str| -> Result<usize> {
            get(k)?
                .parse()
                .map_err(|_| corrupt(format!("metadata cfg.{k} is not an integer")))
        };
        let f32v = |k: &str| -> Result<f32> { parse_f32_bits(get(k)?, k) };
        let f64v = |k: &str| -> Result<f64> { parse_f64_bits(get(k)?, k) };
        let optimizer = match get("optimizer")? {
            "sgd" => OptimizerKind::Sgd {
                momentum: f32v("momentum")?,
            },
            "rmsprop" => OptimizerKind::RmsProp {
                decay: f32v("rms_decay")?,
                momentum: f32v("momentum")?,
                eps: f32v("eps")?,
            },
            o => return Err(corrupt(format!("unknown optimizer {o:?}"))),
        };
        let decay = match get("decay")? {
            "exponential" => Decay::Exponential {
                rate: f64v("decay_a")?,
                every: f64v("decay_b")?,
            },
            "cosine" => Decay::Cosine {
                total: f64v("decay_a")?,
            },
            "constant" => Decay::Constant,
            o => return Err(corrupt(format!("unknown decay {o:?}"))),
        };
        Ok(TrainConfig {
            arch: get("arch")?.to_string(),
            train_res: us("train_res")?,
            finetune_res: us("finetune_res")?,
            batch: us("batch")?,
            epochs: us("epochs")?,
            finetune_epochs: us("finetune_epochs")?,
            optimizer,
            lr: f64v("lr")?,
            finetune_lr: f64v("finetune_lr")?,
            warmup: f64v("warmup")?,
            decay,
            weight_decay: f32v("weight_decay")?,
            label_smoothing: f32v("label_smoothing")?,
            mixup: f32v("mixup")?,
            cutmix: f32v("cutmix")?,
            ema_decay: f32v("ema_decay")?,
            seed: get("seed")?
                .parse()
                .map_err(|_| corrupt("metadata cfg.seed is not an integer".into()))?,
        })
    }
}

fn corrupt(m: String) -> Error {
    Error::InvalidArgument(format!("not a valid effnet checkpoint: {m}"))
}

fn f32_bits(v: f32) -> String {
    format!("{:08x}", v.to_bits())
}
fn f64_bits(v: f64) -> String {
    format!("{:016x}", v.to_bits())
}
fn parse_f32_bits(s: &str, k: &str) -> Result<f32> {
    u32::from_str_radix(s, 16)
        .map(f32::from_bits)
        .map_err(|_| corrupt(format!("metadata cfg.{k} is not a float")))
}
fn parse_f64_bits(s: &str, k: &str) -> Result<f64> {
    u64::from_str_radix(s, 16)
        .map(f64::from_bits)
        .map_err(|_| corrupt(format!("metadata cfg.{k} is not a float")))
}

/// The two stages of a run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// All parameters at the reduced resolution.
    Train,
    /// The head (`conv_head`, `bn2`, `classifier`) at the test resolution.
    Finetune,
}

impl Stage {
    /// `train` or `finetune`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Train => "train",
            Stage::Finetune => "finetune",
        }
    }
}

/// One finished epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    /// Stage.
    pub stage: Stage,
    /// Epoch within the stage (from 1).
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f32,
    /// Training accuracy (on the augmented batches).
    pub train_acc: f32,
    /// Evaluation accuracy after the epoch (at the stage's resolution).
    pub eval_acc: f32,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Training throughput (images per second).
    pub img_per_s: f32,
}

/// Progress of one step, for progress bars.
#[derive(Clone, Debug, PartialEq)]
pub struct StepInfo {
    /// Stage.
    pub stage: Stage,
    /// Epoch within the stage (from 1).
    pub epoch: usize,
    /// Epochs of the stage.
    pub epochs: usize,
    /// Step within the epoch (from 1).
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// This step's loss.
    pub loss: f32,
    /// Images per second since the epoch began.
    pub img_per_s: f32,
}

/// Receives training progress (a progress bar, a log, a curve plotter). Every method
/// has an empty default.
pub trait Observer {
    /// After every step.
    fn step(&mut self, _info: &StepInfo) {}
    /// After every epoch (evaluation included).
    fn epoch(&mut self, _record: &EpochRecord) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// A training run: network, optimizer, EMA, position and history.
pub struct Trainer {
    cfg: TrainConfig,
    net: Network,
    opt: Optimizer,
    ema: Ema,
    /// Global step (both stages).
    step: u64,
    stage: Stage,
    /// Epochs completed in the current stage.
    done: usize,
    /// Finished epochs.
    pub history: Vec<EpochRecord>,
    /// Loss of every step, evaluations and the start of fine-tuning (kept in the
    /// checkpoint, drawn next to it by [`Trainer::run`]).
    curve: Curve,
}

/// What [`Trainer::run`] reports at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    /// Whether every epoch of both stages is done.
    pub finished: bool,
    /// Evaluation accuracy at the training resolution after the main stage, if run.
    pub train_stage_acc: Option<f32>,
    /// Evaluation accuracy at the fine-tuning resolution before fine-tuning.
    pub before_finetune_acc: Option<f32>,
    /// Evaluation accuracy at the fine-tuning resolution after fine-tuning.
    pub final_acc: Option<f32>,
    /// The same with the EMA weights.
    pub final_ema_acc: Option<f32>,
}

const STREAM_ORDER: u64 = 0x0DE5;
const STREAM_STEP: u64 = 0x57E9;
const STREAM_MIX: u64 = 0x313C;

impl Trainer {
    /// A fresh run for `classes` classes.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new(cfg: TrainConfig, classes: usize) -> Result<Trainer> {
        let arch = cfg.validate()?.with_classes(classes);
        let net = Network::new(&arch, cfg.seed)?;
        let opt = Optimizer::try_new(cfg.optimizer, cfg.weight_decay, net.params())?;
        let ema = Ema::new(net.params(), cfg.ema_decay);
        Ok(Trainer {
            cfg,
            net,
            opt,
            ema,
            step: 0,
            stage: Stage::Train,
            done: 0,
            history: Vec::new(),
            curve: Curve::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The network (current weights).
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The network with the EMA weights.
    pub fn ema_network(&self) -> Network {
        let mut n = self.net.clone();
        n.params_mut().values = self.ema.values.clone();
        n
    }

    /// Global step.
    pub fn step(&self) -> u64 {
        self.step
    }

    fn stage_epochs(&self, s: Stage) -> usize {
        match s {
            Stage::Train => self.cfg.epochs,
            Stage::Finetune => self.cfg.finetune_epochs,
        }
    }

    /// Whether both stages are done.
    pub fn finished(&self) -> bool {
        self.stage == Stage::Finetune && self.done >= self.cfg.finetune_epochs
    }

    /// Runs epochs until the run is finished or `max_epochs` epochs have been done in
    /// this call, writing a checkpoint to `checkpoint` after every epoch, and the
    /// loss/accuracy curve beside it ([`curve_path`]) after every epoch and at the end
    /// (both atomically).
    ///
    /// # Errors
    /// Data, kernel and file errors; a dataset with fewer samples than a batch or a
    /// different number of classes.
    pub fn run(
        &mut self,
        train: &dyn Dataset,
        eval: &dyn Dataset,
        checkpoint: Option<&Path>,
        max_epochs: Option<usize>,
        obs: &mut dyn Observer,
    ) -> Result<RunSummary> {
        for (what, d) in [("training", train), ("evaluation", eval)] {
            if d.classes() != self.net.classes() {
                return Err(Error::InvalidArgument(format!(
                    "the {what} set has {} classes, the network {}",
                    d.classes(),
                    self.net.classes()
                )));
            }
        }
        if train.len() < self.cfg.batch {
            return Err(Error::InvalidArgument(format!(
                "the training set has {} samples, fewer than one batch of {}",
                train.len(),
                self.cfg.batch
            )));
        }
        if eval.is_empty() {
            return Err(Error::InvalidArgument("the evaluation set is empty".into()));
        }
        let mut summary = RunSummary {
            finished: false,
            train_stage_acc: None,
            before_finetune_acc: None,
            final_acc: None,
            final_ema_acc: None,
        };
        let mut ran = 0;
        loop {
            if self.stage == Stage::Train && self.done >= self.cfg.epochs {
                let acc = evaluate(&self.net, eval, self.cfg.finetune_res, self.cfg.batch)?;
                summary.before_finetune_acc = Some(acc);
                self.stage = Stage::Finetune;
                self.done = 0;
                // Buffers of the training resolution are not needed any more.
                self.net.clear_cache();
                if self.cfg.finetune_epochs > 0 {
                    self.curve.push_mark(self.step);
                }
            }
            if self.finished() || max_epochs.is_some_and(|m| ran >= m) {
                break;
            }
            let rec = self.epoch(train, eval, obs)?;
            if rec.stage == Stage::Train && self.done == self.cfg.epochs {
                summary.train_stage_acc = Some(rec.eval_acc);
            }
            obs.epoch(&rec);
            self.history.push(rec);
            ran += 1;
            if let Some(p) = checkpoint {
                self.save(p)?;
                self.save_curve(&curve_path(p))?;
            }
        }
        if self.finished() {
            summary.finished = true;
            let res = self.cfg.finetune_res;
            summary.final_acc = Some(evaluate(&self.net, eval, res, self.cfg.batch)?);
            summary.final_ema_acc = Some(evaluate(&self.ema_network(), eval, res, self.cfg.batch)?);
            if let Some(p) = checkpoint {
                self.save_curve(&curve_path(p))?;
            }
        }
        Ok(summary)
    }

    /// The loss/accuracy history: the training loss of every step, the evaluation
    /// accuracy after every epoch (at the step it was measured) and a mark where head
    /// fine-tuning begins.
    pub fn curve(&self) -> &Curve {
        &self.curve
    }

    /// Draws [`Trainer::curve`] ([`CURVE_SIZE`]) as a PNG at `path`, atomically.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save_curve(&self, path: &Path) -> Result<()> {
        self.curve.save_png(path, CURVE_SIZE.0, CURVE_SIZE.1)
    }

    fn head_param(name: &str) -> bool {
        name.starts_with("conv_head.")
            || name.starts_with("bn2.")
            || name.starts_with("classifier.")
    }

    /// One epoch of the current stage.
    fn epoch(
        &mut self,
        train: &dyn Dataset,
        eval: &dyn Dataset,
        obs: &mut dyn Observer,
    ) -> Result<EpochRecord> {
        let stage = self.stage;
        let epoch = self.done;
        let (res, finetune) = match stage {
            Stage::Train => (self.cfg.train_res, false),
            Stage::Finetune => (self.cfg.finetune_res, true),
        };
        let n = self.cfg.batch;
        let steps = train.len() / n;
        let order = permutation(
            train.len(),
            CounterRng::new(self.cfg.seed, STREAM_ORDER)
                .u64_at((stage as u64) << 32 | epoch as u64),
        );
        let head: Vec<bool> = self
            .net
            .params()
            .infos()
            .iter()
            .map(|p| Self::head_param(&p.name))
            .collect();
        let classes = self.net.classes();
        let shape = Nhwc::new(n, res, res, 3)?;
        let mut images = try_filled("a batch of images", shape.len(), 0.0f32)?;
        let mut mixed = try_filled("a batch of mixed images", shape.len(), 0.0f32)?;
        let mut labels = vec![0usize; n];
        let mut soft = try_filled(
            "soft targets",
            checked_product("soft targets", &[n, classes])?,
            0.0f32,
        )?;
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let start = Instant::now();
        let mut lr = 0.0;
        for s in 0..steps {
            let step_seed = CounterRng::new(self.cfg.seed, STREAM_STEP).u64_at(self.step);
            // Fine-tuning at the test resolution sees the images as the test does (the
            // evaluation transform: no random crops), as in FixRes and the paper.
            train.batch(
                &order[s * n..(s + 1) * n],
                res,
                !finetune,
                step_seed,
                &mut images,
                &mut labels,
            )?;
            let mix_seed = CounterRng::new(self.cfg.seed, STREAM_MIX).u64_at(self.step);
            let use_mix = if finetune {
                None
            } else {
                match (self.cfg.mixup > 0.0, self.cfg.cutmix > 0.0) {
                    (true, true) if mix_seed & 1 == 0 => Some(false),
                    (true, true) => Some(true),
                    (true, false) => Some(false),
                    (false, true) => Some(true),
                    (false, false) => None,
                }
            };
            let (input, targets) = match use_mix {
                Some(cut) => {
                    let f = if cut {
                        regularize::cutmix
                    } else {
                        regularize::mixup
                    };
                    let alpha = if cut { self.cfg.cutmix } else { self.cfg.mixup };
                    f(
                        &shape,
                        alpha,
                        mix_seed,
                        Pairing::Reverse,
                        &images,
                        &labels,
                        classes,
                        &mut mixed,
                        &mut soft,
                    )?;
                    (&mixed[..], Targets::Soft(&soft))
                }
                None => (&images[..], Targets::Labels(&labels)),
            };
            let mut pass = Pass::train(self.net.config(), step_seed);
            if finetune {
                // The body is frozen: no drop-connect, and the backward pass stops
                // after the head.
                pass.drop_connect = 0.0;
                pass.head_only = true;
            }
            let (loss, tape) =
                self.net
                    .loss_and_grad(input, n, res, targets, self.cfg.label_smoothing, &pass)?;
            if !loss.is_finite() {
                return Err(Error::InvalidArgument(format!(
                    "the loss diverged at step {} (lr too high?)",
                    self.step
                )));
            }
            correct += count_correct(&tape.logits, &labels, classes);
            self.net.recycle(tape);
            loss_sum += loss as f64;
            self.curve.push_loss(loss);
            lr = if finetune {
                self.cfg.finetune_lr as f32
            } else {
                self.cfg
                    .schedule()
                    .lr((epoch * steps + s) as f64 / steps as f64)
            };
            self.opt
                .step(self.net.params_mut(), lr, |i| !finetune || head[i])?;
            self.ema.update(self.net.params())?;
            self.step += 1;
            let el = start.elapsed().as_secs_f64().max(1e-9);
            obs.step(&StepInfo {
                stage,
                epoch: epoch + 1,
                epochs: self.stage_epochs(stage),
                step: s + 1,
                steps,
                loss,
                img_per_s: ((s + 1) * n) as f32 / el as f32,
            });
        }
        let img_per_s = (steps * n) as f64 / start.elapsed().as_secs_f64().max(1e-9);
        self.done += 1;
        let eval_acc = evaluate(&self.net, eval, res, n)?;
        self.curve.push_eval(self.step, eval_acc);
        Ok(EpochRecord {
            stage,
            epoch: epoch + 1,
            loss: (loss_sum / steps.max(1) as f64) as f32,
            train_acc: correct as f32 / (steps * n).max(1) as f32,
            eval_acc,
            lr,
            img_per_s: img_per_s as f32,
        })
    }

    /// Writes a checkpoint atomically: weights (effnet layouts, timm names), EMA
    /// (`ema.*`), optimizer state (`optim.*`), and in the metadata the configuration,
    /// the step, the stage and the history.
    ///
    /// # Errors
    /// File errors (the previous checkpoint is then left intact).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t = self.net.params().to_effnet("");
        t.extend(self.ema.state(self.net.params()));
        t.extend(self.opt.state(self.net.params()));
        let mut m = BTreeMap::new();
        m.insert("format".into(), "effnet-checkpoint".into());
        m.insert("classes".into(), self.net.classes().to_string());
        m.insert("step".into(), self.step.to_string());
        m.insert("stage".into(), self.stage.name().into());
        m.insert("stage_epochs_done".into(), self.done.to_string());
        let hist: Vec<String> = self
            .history
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} {} {} {} {}",
                    r.stage.name(),
                    r.epoch,
                    r.loss,
                    r.train_acc,
                    r.eval_acc,
                    r.lr,
                    r.img_per_s
                )
            })
            .collect();
        m.insert("history".into(), hist.join(";"));
        m.insert("curve".into(), self.curve.to_text());
        self.cfg.to_metadata(&mut m);
        tensors::save(path, &t, Some(m))
    }

    /// Restores a run from a checkpoint written by [`Trainer::save`] (its own
    /// configuration is used).
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file, [`Error::InvalidArgument`] for a file
    /// that is not an effnet checkpoint or is damaged.
    pub fn resume(path: &Path) -> Result<Trainer> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let (t, m) = decode_checkpoint(&bytes, &path.display().to_string())?;
        let cfg = TrainConfig::from_metadata(&m)?;
        let num = |k: &str| -> Result<u64> {
            m.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| corrupt(format!("metadata {k} is missing or not a number")))
        };
        let classes = num("classes")? as usize;
        let mut tr = Trainer::new(cfg, classes)?;
        tr.net.params_mut().load(&t, false, "")?;
        let store = tr.net.params().clone();
        tr.ema.load_state(&t, &store)?;
        tr.opt.load_state(&t, &store)?;
        tr.step = num("step")?;
        tr.done = num("stage_epochs_done")? as usize;
        tr.stage = match m.get("stage").map(|s| s.as_str()) {
            Some("train") => Stage::Train,
            Some("finetune") => Stage::Finetune,
            _ => return Err(corrupt("metadata stage is missing".into())),
        };
        tr.history = parse_history(m.get("history").map(|s| s.as_str()).unwrap_or(""))?;
        tr.curve = match m.get("curve") {
            Some(t) => Curve::from_text(t).map_err(|e| corrupt(e.to_string()))?,
            None => Curve::new(),
        };
        Ok(tr)
    }
}

/// Size (width, height) of the curve picture the trainer writes.
pub const CURVE_SIZE: (usize, usize) = (800, 500);

/// Where [`Trainer::run`] draws the loss/accuracy curve for a checkpoint at
/// `checkpoint`: beside it, its extension replaced by `curve.png`
/// (`run.safetensors` → `run.curve.png`).
pub fn curve_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_extension("curve.png")
}

/// Decodes a safetensors buffer with its metadata.
///
/// # Errors
/// [`Error::InvalidArgument`] for a damaged file.
pub fn decode_checkpoint(
    bytes: &[u8],
    name: &str,
) -> Result<(TensorMap, BTreeMap<String, String>)> {
    let t = tensors::decode(bytes, name)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::InvalidArgument(format!("{name}: {e}")))?;
    let m: BTreeMap<String, String> = meta
        .metadata()
        .clone()
        .map(|h| h.into_iter().collect())
        .unwrap_or_default();
    if m.get("format").map(|s| s.as_str()) != Some("effnet-checkpoint") {
        return Err(corrupt(format!("{name} has no effnet-checkpoint metadata")));
    }
    Ok((t, m))
}

fn parse_history(s: &str) -> Result<Vec<EpochRecord>> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    s.split(';')
        .map(|r| {
            let f: Vec<&str> = r.split(' ').collect();
            let bad = || corrupt(format!("bad history record {r:?}"));
            if f.len() != 7 {
                return Err(bad());
            }
            let p = |i: usize| f[i].parse::<f32>().map_err(|_| bad());
            Ok(EpochRecord {
                stage: if f[0] == "train" {
                    Stage::Train
                } else {
                    Stage::Finetune
                },
                epoch: f[1].parse().map_err(|_| bad())?,
                loss: p(2)?,
                train_acc: p(3)?,
                eval_acc: p(4)?,
                lr: p(5)?,
                img_per_s: p(6)?,
            })
        })
        .collect()
}

/// A seeded Fisher–Yates permutation of `0..n`.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let rng = CounterRng::new(seed, 1);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.u64_at(i as u64) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

fn count_correct(logits: &[f32], labels: &[usize], classes: usize) -> usize {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, l)| argmax(row) == **l)
        .count()
}

/// Top-1 accuracy of `net` (inference mode) on `data` at `res`, in batches of `batch`.
///
/// # Errors
/// Data and kernel errors.
pub fn evaluate(net: &Network, data: &dyn Dataset, res: usize, batch: usize) -> Result<f32> {
    let classes = net.classes();
    let mut correct = 0;
    let total = data.len();
    let mut start = 0;
    while start < total {
        let idx: Vec<usize> = (start..(start + batch).min(total)).collect();
        let b = idx.len();
        let len = checked_product("a batch of images", &[b, res, res, 3])?;
        let mut images = try_filled("a batch of images", len, 0.0f32)?;
        let mut labels = vec![0usize; b];
        data.batch(&idx, res, false, 0, &mut images, &mut labels)?;
        let logits = net.predict(&images, b, res)?;
        correct += count_correct(&logits, &labels, classes);
        start += b;
    }
    Ok(correct as f32 / total.max(1) as f32)
}
