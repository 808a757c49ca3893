//! `effnet train`: the paper's recipe on the built-in synthetic shapes or on an image
//! folder (`--data DIR`).
//!
//! With `--data DIR`, the evaluation set is `DIR/val` when `DIR` holds both a `train`
//! and a `val` folder (each with one subfolder per class, the same class names);
//! otherwise `DIR` itself holds the class folders and a deterministic held-out part of
//! every class ([`effnet::data::holdout_split`], `--val-fraction`) is evaluated on.

use effnet::data::{Dataset, ImageFolder, Subset, SyntheticShapes, SyntheticSplit, holdout_split};
use effnet::model::optim::OptimizerKind;
use effnet::model::schedule::Decay;
use effnet::model::train::{EpochRecord, Observer, StepInfo, TrainConfig, Trainer, curve_path};
use effnet::report::Progress;
use effnet::{Error, Result};
use std::path::{Path, PathBuf};

/// Arguments of `effnet train` (every one optional).
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Architecture (default: tiny_g16_lnpn, a quarter-width G16 LN+PN network).
    #[arg(long)]
    arch: Option<String>,
    /// Image folder with one subfolder of PNG/JPEG images per class (default: the
    /// built-in shapes). If it holds `train/` and `val/`, those are the training and
    /// evaluation sets; otherwise a held-out part of each class is evaluated on.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --data and no `val/` folder: the fraction of each class held out for
    /// evaluation (evenly spaced in file order, no randomness).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Training resolution.
    #[arg(long)]
    res: Option<usize>,
    /// Head fine-tuning and test resolution (res % 32 must equal it % 32).
    #[arg(long)]
    finetune_res: Option<usize>,
    /// Batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Training epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Head fine-tuning epochs.
    #[arg(long)]
    finetune_epochs: Option<usize>,
    /// Optimizer: rmsprop (TF semantics) or sgd.
    #[arg(long)]
    optimizer: Option<String>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate decay: exponential (×0.97 every 2.4 epochs) or cosine.
    #[arg(long)]
    schedule: Option<String>,
    /// Warmup epochs.
    #[arg(long)]
    warmup: Option<f64>,
    /// Label smoothing.
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Mixup α (0 = off).
    #[arg(long)]
    mixup: Option<f32>,
    /// Cutmix α (0 = off).
    #[arg(long)]
    cutmix: Option<f32>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Training samples of the built-in dataset (ignored with --data).
    #[arg(long, default_value_t = 4096)]
    train_size: usize,
    /// Evaluation samples of the built-in dataset (ignored with --data).
    #[arg(long, default_value_t = 1024)]
    eval_size: usize,
    /// Random square crops of the built-in dataset's training images: each covers at
    /// least this fraction of the image (1 = no crops; ignored with --data).
    #[arg(long, default_value_t = SyntheticSplit::TRAIN_CROP_MIN_AREA)]
    crop_min_area: f32,
    /// Checkpoint path (written atomically after every epoch).
    #[arg(long, default_value = "effnet-train.safetensors")]
    checkpoint: PathBuf,
    /// Continue the run saved in --checkpoint (its configuration is used).
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs in this invocation (the run can be resumed).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress bar (it is also hidden when standard error is not a terminal).
    #[arg(long)]
    quiet: bool,
}

/// Draws a progress bar per epoch and prints a line per finished epoch.
struct Log {
    batch: usize,
    quiet: bool,
    bar: Option<Progress>,
}

impl Observer for Log {
    fn step(&mut self, i: &StepInfo) {
        let (batch, quiet) = (self.batch, self.quiet);
        let bar = self.bar.get_or_insert_with(|| {
            let label = format!("{} {}/{}", i.stage.name(), i.epoch, i.epochs);
            Progress::new(i.steps as u64, &label, quiet)
        });
        bar.step(batch, i.loss);
    }

    fn epoch(&mut self, r: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        println!(
            "{} epoch {}: loss {:.4}, train accuracy {:.1} %, eval accuracy {:.1} %, lr {:.5}, {:.1} img/s",
            r.stage.name(),
            r.epoch,
            r.loss,
            100.0 * r.train_acc,
            100.0 * r.eval_acc,
            r.lr,
            r.img_per_s
        );
    }
}

fn config(a: &TrainArgs) -> Result<TrainConfig> {
    super::bench_args::check_batch_res(
        a.batch,
        &[("--res", a.res), ("--finetune-res", a.finetune_res)],
    )?;
    let mut c = TrainConfig::default();
    if let Some(v) = &a.arch {
        c.arch = v.clone();
    }
    if let Some(v) = a.res {
        c.train_res = v;
    }
    if let Some(v) = a.finetune_res {
        c.finetune_res = v;
    }
    if let Some(v) = a.batch {
        c.batch = v;
    }
    if let Some(v) = a.epochs {
        c.epochs = v;
    }
    if let Some(v) = a.finetune_epochs {
        c.finetune_epochs = v;
    }
    if let Some(v) = &a.optimizer {
        c.optimizer = match v.as_str() {
            "rmsprop" => OptimizerKind::paper_rmsprop(),
            "sgd" => OptimizerKind::Sgd { momentum: 0.9 },
            o => {
                return Err(Error::InvalidArgument(format!(
                    "--optimizer {o:?}: expected rmsprop or sgd"
                )));
            }
        };
    }
    if let Some(v) = a.lr {
        c.lr = v;
        c.finetune_lr = v;
    }
    if let Some(v) = a.warmup {
        c.warmup = v;
    }
    if let Some(v) = &a.schedule {
        c.decay = match v.as_str() {
            "exponential" => Decay::Exponential {
                rate: 0.97,
                every: 2.4,
            },
            "cosine" => Decay::Cosine {
                total: c.epochs as f64,
            },
            o => {
                return Err(Error::InvalidArgument(format!(
                    "--schedule {o:?}: expected exponential or cosine"
                )));
            }
        };
    }
    if let Some(v) = a.label_smoothing {
        c.label_smoothing = v;
    }
    if let Some(v) = a.mixup {
        c.mixup = v;
    }
    if let Some(v) = a.cutmix {
        c.cutmix = v;
    }
    if let Some(v) = a.seed {
        c.seed = v;
    }
    c.validate()?;
    Ok(c)
}

/// The training and evaluation sets and a description of them.
struct Data {
    train: Box<dyn Dataset>,
    eval: Box<dyn Dataset>,
    what: String,
}

/// Whether `dir/name` is a folder.
fn has_dir(dir: &Path, name: &str) -> bool {
    dir.join(name).is_dir()
}

/// Opens an image folder and checks every file's header, so that a bad file is
/// reported before training starts.
fn open_folder(dir: &Path) -> Result<ImageFolder> {
    let f = ImageFolder::open(dir)?;
    f.verify()?;
    Ok(f)
}

/// The image-folder datasets of `--data DIR` (see the module documentation).
fn folder_data(dir: &Path, val_fraction: f64) -> Result<Data> {
    if has_dir(dir, "train") && has_dir(dir, "val") {
        let train = open_folder(&dir.join("train"))?;
        let eval = open_folder(&dir.join("val"))?;
        if train.classes() != eval.classes() {
            return Err(Error::InvalidArgument(format!(
                "{}/train and {}/val have different class folders ({:?} vs {:?})",
                dir.display(),
                dir.display(),
                train.classes(),
                eval.classes()
            )));
        }
        let what = format!(
            "{} images of {}/train, evaluated on the {} of {}/val",
            train.len(),
            dir.display(),
            eval.len(),
            dir.display()
        );
        return Ok(Data {
            train: Box::new(train),
            eval: Box::new(eval),
            what,
        });
    }
    let all = open_folder(dir)?;
    let (t, e) = holdout_split(all.labels(), all.classes().len(), val_fraction)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", dir.display())))?;
    let what = format!(
        "{} images of {}, evaluated on {} held out ({:.0} % of each class; no {}/val folder)",
        t.len(),
        dir.display(),
        e.len(),
        100.0 * val_fraction,
        dir.display()
    );
    Ok(Data {
        train: Box::new(Subset::new(all.clone(), t)?),
        eval: Box::new(Subset::new(all, e)?),
        what,
    })
}

/// The built-in synthetic shapes of the run seeded `seed`.
fn synthetic_data(a: &TrainArgs, seed: u64) -> Result<Data> {
    if a.train_size == 0 || a.eval_size == 0 {
        return Err(Error::InvalidArgument(
            "--train-size and --eval-size must be at least 1".into(),
        ));
    }
    if !(a.crop_min_area > 0.0 && a.crop_min_area <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "--crop-min-area {} must be in (0, 1]",
            a.crop_min_area
        )));
    }
    let shapes = SyntheticShapes::new(SyntheticShapes::MAX_CLASSES, seed ^ 0x5A)?;
    Ok(Data {
        train: Box::new(SyntheticSplit {
            shapes,
            offset: 0,
            len: a.train_size,
            crop_min_area: a.crop_min_area,
        }),
        eval: Box::new(SyntheticSplit {
            shapes,
            offset: 1 << 40,
            len: a.eval_size,
            crop_min_area: 1.0,
        }),
        what: format!("{} synthetic shapes", a.train_size),
    })
}

/// Runs `effnet train`.
pub fn run(a: &TrainArgs) -> Result<()> {
    let folder = a
        .data
        .as_deref()
        .map(|d| super::in_pool(a.threads, || folder_data(d, a.val_fraction)))
        .transpose()?
        .transpose()?;
    let mut tr = if a.resume {
        Trainer::resume(&a.checkpoint)?
    } else {
        let classes = folder
            .as_ref()
            .map_or(SyntheticShapes::MAX_CLASSES, |d| d.train.classes());
        Trainer::new(config(a)?, classes)?
    };
    let data = match folder {
        Some(d) => d,
        None => synthetic_data(a, tr.config().seed)?,
    };
    let (train, eval) = (&*data.train, &*data.eval);
    let c = tr.config().clone();
    println!(
        "training {} on {} ({} classes, chance {:.1} %): {} epochs at {}×{}, then {} head fine-tuning epoch(s) at {}×{}, batch {}{}",
        c.arch,
        data.what,
        train.classes(),
        100.0 / train.classes() as f64,
        c.epochs,
        c.train_res,
        c.train_res,
        c.finetune_epochs,
        c.finetune_res,
        c.finetune_res,
        c.batch,
        if a.resume {
            format!(", resumed at step {}", tr.step())
        } else {
            String::new()
        }
    );
    let mut log = Log {
        batch: c.batch,
        quiet: a.quiet,
        bar: None,
    };
    let s = super::in_pool(a.threads, || {
        tr.run(train, eval, Some(&a.checkpoint), a.stop_after, &mut log)
    })??;
    if let Some(v) = s.train_stage_acc {
        println!(
            "accuracy after training at {0}×{0}: {1:.1} %",
            c.train_res,
            100.0 * v
        );
    }
    if let Some(v) = s.before_finetune_acc {
        println!(
            "accuracy at {0}×{0} before fine-tuning: {1:.1} %",
            c.finetune_res,
            100.0 * v
        );
    }
    if let (Some(v), Some(e)) = (s.final_acc, s.final_ema_acc) {
        println!(
            "accuracy at {0}×{0} after head fine-tuning: {1:.1} % (EMA weights {2:.1} %)",
            c.finetune_res,
            100.0 * v,
            100.0 * e
        );
    }
    if !s.finished {
        println!(
            "stopped; continue with --resume --checkpoint {}",
            a.checkpoint.display()
        );
    }
    println!("checkpoint: {}", a.checkpoint.display());
    println!("curve: {}", curve_path(&a.checkpoint).display());
    Ok(())
}
