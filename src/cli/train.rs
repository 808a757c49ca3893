//! `effnet train`: the paper's recipe on the built-in synthetic shapes (or, when the
//! folder reader is linked in, an image folder).

use effnet::data::{Dataset, SyntheticShapes, SyntheticSplit};
use effnet::model::optim::OptimizerKind;
use effnet::model::schedule::Decay;
use effnet::model::train::{EpochRecord, Observer, StepInfo, TrainConfig, Trainer};
use effnet::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `effnet train` (every one optional).
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Architecture (default: tiny_g16_lnpn, a quarter-width G16 LN+PN network).
    #[arg(long)]
    arch: Option<String>,
    /// Image folder with one subfolder per class (default: the built-in shapes).
    #[arg(long)]
    data: Option<PathBuf>,
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
    /// Training samples of the built-in dataset.
    #[arg(long, default_value_t = 4096)]
    train_size: usize,
    /// Evaluation samples of the built-in dataset.
    #[arg(long, default_value_t = 1024)]
    eval_size: usize,
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
}

struct Log {
    last: std::time::Instant,
}

impl Observer for Log {
    fn step(&mut self, i: &StepInfo) {
        if self.last.elapsed().as_millis() >= 500 || i.step == i.steps {
            self.last = std::time::Instant::now();
            let width = 30;
            let fill = i.step * width / i.steps.max(1);
            eprint!(
                "\r{} {}/{} [{}{}] {}/{} loss {:.4} {:.1} img/s   ",
                i.stage.name(),
                i.epoch,
                i.epochs,
                "#".repeat(fill),
                ".".repeat(width - fill),
                i.step,
                i.steps,
                i.loss,
                i.img_per_s
            );
            let _ = std::io::stderr().flush();
        }
    }
    fn epoch(&mut self, r: &EpochRecord) {
        eprintln!();
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

/// Runs `effnet train`.
pub fn run(a: &TrainArgs) -> Result<()> {
    if let Some(dir) = &a.data {
        return Err(Error::Unsupported(format!(
            "--data {}: the image-folder reader (data::folder) is not part of this build yet",
            dir.display()
        )));
    }
    let mut tr = if a.resume {
        Trainer::resume(&a.checkpoint)?
    } else {
        let c = config(a)?;
        Trainer::new(c, SyntheticShapes::MAX_CLASSES)?
    };
    let shapes = SyntheticShapes::new(SyntheticShapes::MAX_CLASSES, tr.config().seed ^ 0x5A)?;
    if a.train_size == 0 || a.eval_size == 0 {
        return Err(Error::InvalidArgument(
            "--train-size and --eval-size must be at least 1".into(),
        ));
    }
    let train = SyntheticSplit {
        shapes,
        offset: 0,
        len: a.train_size,
    };
    let eval = SyntheticSplit {
        shapes,
        offset: 1 << 40,
        len: a.eval_size,
    };
    let c = tr.config().clone();
    println!(
        "training {} on {} synthetic shapes ({} classes, chance {:.1} %): {} epochs at {}×{}, then {} head fine-tuning epoch(s) at {}×{}, batch {}{}",
        c.arch,
        train.len(),
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
        last: std::time::Instant::now(),
    };
    let s = super::in_pool(a.threads, || {
        tr.run(&train, &eval, Some(&a.checkpoint), a.stop_after, &mut log)
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
    Ok(())
}
