//! Training checks on the `tiny` scale: the loss decreases on the built-in data,
//! checkpoints round-trip, resume equals uninterrupted training bit for bit, and bad
//! checkpoints are clear errors.

use effnet::data::{SyntheticShapes, SyntheticSplit};
use effnet::model::optim::OptimizerKind;
use effnet::model::train::{CURVE_SIZE, Quiet, TrainConfig, Trainer, curve_path};

fn small() -> TrainConfig {
    TrainConfig {
        train_res: 32,
        finetune_res: 64,
        batch: 8,
        epochs: 2,
        finetune_epochs: 1,
        warmup: 0.5,
        ..TrainConfig::default()
    }
}

fn data(n: usize) -> (SyntheticSplit, SyntheticSplit) {
    let shapes = SyntheticShapes::new(8, 3).unwrap();
    (
        SyntheticSplit {
            shapes,
            offset: 0,
            len: n,
            crop_min_area: 1.0,
        },
        SyntheticSplit {
            shapes,
            offset: 1 << 40,
            len: 16,
            crop_min_area: 1.0,
        },
    )
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("effnet-train-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn loss_decreases_on_the_builtin_data() {
    for opt in [
        OptimizerKind::paper_rmsprop(),
        OptimizerKind::Sgd { momentum: 0.9 },
    ] {
        let cfg = TrainConfig {
            epochs: 8,
            finetune_epochs: 0,
            batch: 16,
            label_smoothing: 0.0,
            optimizer: opt,
            lr: if matches!(opt, OptimizerKind::Sgd { .. }) {
                0.05
            } else {
                0.004
            },
            ..small()
        };
        let mut tr = Trainer::new(cfg, 8).unwrap();
        let (train, eval) = data(128);
        tr.run(&train, &eval, None, Some(8), &mut Quiet).unwrap();
        let h: Vec<f32> = tr.history.iter().map(|r| r.loss).collect();
        assert_eq!(h.len(), 8);
        let last = h[6].min(h[7]);
        assert!(last < 0.9 * h[0], "{opt:?}: losses {h:?}");
    }
}

#[test]
fn resume_equals_uninterrupted_training() {
    let (train, eval) = data(24);
    let cfg = TrainConfig {
        mixup: 0.2,
        cutmix: 1.0,
        ..small()
    };
    let mut full = Trainer::new(cfg.clone(), 8).unwrap();
    let s = full.run(&train, &eval, None, None, &mut Quiet).unwrap();
    assert!(s.finished);
    let path = tmp("resume.safetensors");
    let mut part = Trainer::new(cfg, 8).unwrap();
    for _ in 0..3 {
        let s = part
            .run(&train, &eval, Some(&path), Some(1), &mut Quiet)
            .unwrap();
        part = Trainer::resume(&path).unwrap();
        if s.finished {
            break;
        }
    }
    assert!(part.finished());
    assert_eq!(part.step(), full.step());
    assert!(
        part.network().params().values == full.network().params().values,
        "resumed weights differ"
    );
    assert!(part.ema_network().params().values == full.ema_network().params().values);
    let h: Vec<(f32, f32)> = full.history.iter().map(|r| (r.loss, r.eval_acc)).collect();
    let g: Vec<(f32, f32)> = part.history.iter().map(|r| (r.loss, r.eval_acc)).collect();
    assert_eq!(h, g);
    // The curve (a loss per step, an evaluation per epoch, the fine-tuning mark) is
    // carried through the checkpoints too, and drawn beside them.
    assert_eq!(part.curve(), full.curve());
    assert_eq!(full.curve().losses().len() as u64, full.step());
    assert_eq!(full.curve().evals().len(), full.history.len());
    assert_eq!(full.curve().marks().len(), 1);
    let png = image::open(curve_path(&path)).unwrap();
    assert_eq!((png.width() as usize, png.height() as usize), CURVE_SIZE);
}

#[test]
fn checkpoint_round_trip_gives_identical_outputs() {
    let (train, eval) = data(16);
    let path = tmp("rt.safetensors");
    let mut tr = Trainer::new(small(), 8).unwrap();
    tr.run(&train, &eval, Some(&path), Some(1), &mut Quiet)
        .unwrap();
    let back = Trainer::resume(&path).unwrap();
    let x: Vec<f32> = (0..2 * 32 * 32 * 3)
        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
        .collect();
    let a = tr.network().predict(&x, 2, 32).unwrap();
    let b = back.network().predict(&x, 2, 32).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_checkpoints_and_configs_are_errors() {
    let path = tmp("bad.safetensors");
    std::fs::write(&path, b"not a checkpoint").unwrap();
    assert!(Trainer::resume(&path).is_err());
    assert!(Trainer::resume(&tmp("missing.safetensors")).is_err());
    // A truncated real checkpoint.
    let (train, eval) = data(8);
    let good = tmp("good.safetensors");
    let mut tr = Trainer::new(small(), 8).unwrap();
    tr.run(&train, &eval, Some(&good), Some(1), &mut Quiet)
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(Trainer::resume(&path).is_err());
    // Resolutions that do not line up on the stride-32 grid.
    let c = TrainConfig {
        finetune_res: 48,
        ..small()
    };
    assert!(Trainer::new(c, 8).is_err());
    // Too little data for a batch, wrong class count.
    let mut tr = Trainer::new(small(), 8).unwrap();
    let (tiny, eval) = data(4);
    assert!(tr.run(&tiny, &eval, None, None, &mut Quiet).is_err());
    let mut tr = Trainer::new(small(), 5).unwrap();
    let (train, eval) = data(16);
    assert!(tr.run(&train, &eval, None, None, &mut Quiet).is_err());
}
