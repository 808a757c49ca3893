//! `effnet train --data DIR` end to end through the binary: an image folder of PNG and
//! JPEG files trains with label smoothing, mixup and cutmix; the split rule, the
//! number of steps and the curve picture are checked against what the run must
//! produce; the result does not depend on the thread count; bad input ends with one
//! error line and a non-zero exit, and leaves no checkpoint behind.

use effnet::data::{Dataset, ImageFolder, Subset, holdout_split};
use effnet::model::train::{CURVE_SIZE, Trainer, curve_path};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("effnet-train-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `w`×`h` picture of class `class` (a red, green or blue disc on noise), varied by
/// `seed`.
fn picture(class: u32, w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let noise = ((x * 7 + y * 13 + seed * 101).wrapping_mul(2_654_435_761) >> 24) as u8 / 4;
        let (cx, cy) = (w as i64 / 2, h as i64 / 2);
        let (dx, dy) = (x as i64 - cx, y as i64 - cy);
        let r2 = (w.min(h) as i64 / 3).pow(2);
        let mut p = [noise, noise, noise];
        if dx * dx + dy * dy < r2 {
            p[class as usize % 3] = 200 + noise / 2;
        }
        image::Rgb(p)
    })
}

/// `per_class` images in each of `classes` class folders under `dir`, alternating
/// PNG and JPEG, of varied sizes.
fn make_folder(dir: &Path, classes: u32, per_class: u32) {
    for c in 0..classes {
        let cd = dir.join(format!("class{c}"));
        std::fs::create_dir_all(&cd).unwrap();
        for i in 0..per_class {
            let img = picture(c, 24 + 5 * i, 40 - 3 * i, c * 100 + i);
            if i % 2 == 0 {
                img.save_with_format(cd.join(format!("{i:02}.png")), image::ImageFormat::Png)
                    .unwrap();
            } else {
                img.save_with_format(cd.join(format!("{i:02}.jpg")), image::ImageFormat::Jpeg)
                    .unwrap();
            }
        }
    }
}

fn effnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effnet"))
        .args(args)
        .output()
        .unwrap()
}

/// The common arguments of a short run: 2 epochs at 32×32, 1 head epoch at 64×64.
fn short(data: &Path, ckpt: &Path, threads: &str) -> Vec<String> {
    [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--res",
        "32",
        "--finetune-res",
        "64",
        "--batch",
        "4",
        "--epochs",
        "2",
        "--finetune-epochs",
        "1",
        "--label-smoothing",
        "0.1",
        "--mixup",
        "0.2",
        "--cutmix",
        "1.0",
        "--val-fraction",
        "0.2",
        "--threads",
        threads,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_ok(args: &[String]) -> String {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = effnet(&a);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "effnet {a:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn holdout_split_is_even_per_class_and_deterministic() {
    // Class 0: samples 0..10, class 1: 10..15, class 2: interleaved 15, 17, 19.
    let mut labels = vec![0; 10];
    labels.extend([1; 5]);
    labels.extend([2, 0, 2, 0, 2]);
    let (train, eval) = holdout_split(&labels, 3, 0.2).unwrap();
    // Class 0 has 12 samples (0..10, 16, 18): round(2.4) = 2 held out, the 3rd and
    // 9th (⌊(2j+1)·12/4⌋ = 3, 9) → samples 3 and 9. Class 1: 5 samples, 1 held out,
    // the ⌊5/2⌋ = 2nd → 12. Class 2: 3 samples, round(0.6) = 1, the 1st → 17.
    assert_eq!(eval, [3, 9, 12, 17]);
    assert_eq!(train.len() + eval.len(), labels.len());
    let mut all: Vec<usize> = train.iter().chain(&eval).copied().collect();
    all.sort();
    assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
    assert_eq!(holdout_split(&labels, 3, 0.2).unwrap(), (train, eval));
    // Every class keeps one sample for training and gives one to evaluation.
    let (t, e) = holdout_split(&[0, 0, 1, 1], 2, 0.99).unwrap();
    assert_eq!((t, e), (vec![0, 2], vec![1, 3]));
    let (t, e) = holdout_split(&[0, 0, 1, 1], 2, 0.01).unwrap();
    assert_eq!((t, e), (vec![0, 2], vec![1, 3]));
    assert!(holdout_split(&[0, 1, 1], 2, 0.5).is_err()); // class 0 has 1 sample
    assert!(holdout_split(&[0, 0], 1, 0.0).is_err());
    assert!(holdout_split(&[0, 0], 1, 1.0).is_err());
    assert!(holdout_split(&[0, 2], 2, 0.5).is_err()); // label out of range
}

#[test]
fn subset_reads_the_inner_samples() {
    let d = temp_dir("subset");
    make_folder(&d, 2, 3);
    let all = ImageFolder::open(&d).unwrap();
    let sub = Subset::new(all.clone(), vec![4, 1]).unwrap();
    assert_eq!((sub.len(), Dataset::classes(&sub)), (2, 2));
    let px = 16 * 16 * 3;
    let (mut a, mut la) = (vec![0.0f32; 2 * px], vec![0usize; 2]);
    let (mut b, mut lb) = (vec![0.0f32; 2 * px], vec![0usize; 2]);
    Dataset::batch(&sub, &[0, 1], 16, true, 7, &mut a, &mut la).unwrap();
    Dataset::batch(&all, &[4, 1], 16, true, 7, &mut b, &mut lb).unwrap();
    assert_eq!((a, la), (b, lb.clone()));
    assert_eq!(lb, [1, 0]);
    assert!(Dataset::batch(&sub, &[2], 16, false, 0, &mut vec![0.0; px], &mut [0]).is_err());
    assert!(Subset::new(all, vec![6]).is_err());
}

#[test]
fn trains_on_an_image_folder_with_the_regularizers() {
    let d = temp_dir("ok");
    let data = d.join("images");
    make_folder(&data, 3, 10);
    let (c1, c2) = (d.join("t1.safetensors"), d.join("t2.safetensors"));
    let out = run_ok(&short(&data, &c1, "1"));
    // 10 per class, 20 % held out: 8 + 2 per class.
    assert!(out.contains("on 24 images of"), "{out}");
    assert!(out.contains("evaluated on 6 held out"), "{out}");
    assert!(out.contains("after head fine-tuning"), "{out}");
    // 24 / 4 = 6 steps per epoch, 3 epochs; an evaluation per epoch; fine-tuning
    // starts after step 12.
    let tr = Trainer::resume(&c1).unwrap();
    assert!(tr.finished());
    assert_eq!(tr.step(), 18);
    let curve = tr.curve();
    assert_eq!(curve.losses().len(), 18);
    assert!(curve.losses().iter().all(|l| l.is_finite() && *l > 0.0));
    let steps: Vec<u64> = curve.evals().iter().map(|e| e.0).collect();
    assert_eq!(steps, [6, 12, 18]);
    assert_eq!(curve.marks(), [12]);
    let png = image::open(curve_path(&c1)).unwrap();
    assert_eq!(
        (png.width() as usize, png.height() as usize),
        CURVE_SIZE,
        "curve size"
    );
    // The same run on 2 threads gives the same weights, bit for bit.
    run_ok(&short(&data, &c2, "2"));
    let tr2 = Trainer::resume(&c2).unwrap();
    assert!(tr.network().params().values == tr2.network().params().values);
    assert_eq!(tr.curve().losses(), tr2.curve().losses());
    // train/ + val/ layout: every file of val/ is evaluated on.
    let split = d.join("split");
    make_folder(&split.join("train"), 2, 8);
    make_folder(&split.join("val"), 2, 3);
    let c3 = d.join("t3.safetensors");
    let out = run_ok(&short(&split, &c3, "2"));
    assert!(out.contains("on 16 images of"), "{out}");
    assert!(out.contains("evaluated on the 6 of"), "{out}");
    assert_eq!(Trainer::resume(&c3).unwrap().network().classes(), 2);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Runs `args`, expects a failure with one error line containing `what`, no panic,
/// and no checkpoint at `ckpt`.
fn fails(args: &[String], what: &str, ckpt: &Path) {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = effnet(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{a:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{a:?}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{a:?}: {err}");
    assert!(lines[0].starts_with("effnet: error: "), "{err}");
    assert!(lines[0].contains(what), "{a:?}: expected {what:?} in {err}");
    assert!(!err.contains("panicked"));
    assert!(!ckpt.exists(), "{a:?} left a checkpoint");
}

#[test]
fn bad_input_is_one_error_line() {
    let d = temp_dir("bad");
    let ckpt = d.join("ck.safetensors");
    let good = d.join("good");
    make_folder(&good, 2, 4);
    // Missing folder.
    fails(&short(&d.join("nope"), &ckpt, "2"), "does not exist", &ckpt);
    // A folder with no class folders.
    let flat = d.join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    picture(0, 8, 8, 0).save(flat.join("a.png")).unwrap();
    fails(&short(&flat, &ckpt, "2"), "no class folders", &ckpt);
    // An empty class.
    let empty = d.join("empty");
    make_folder(&empty, 2, 4);
    std::fs::create_dir_all(empty.join("zzz")).unwrap();
    std::fs::write(empty.join("zzz/notes.txt"), "no images").unwrap();
    fails(&short(&empty, &ckpt, "2"), "zzz has no PNG or JPEG", &ckpt);
    // A file that is not an image.
    let garbage = d.join("garbage");
    make_folder(&garbage, 2, 4);
    std::fs::write(garbage.join("class1/bad.png"), b"definitely not a PNG").unwrap();
    fails(&short(&garbage, &ckpt, "2"), "bad.png", &ckpt);
    // A PNG whose header is sound but whose data is cut short: found when decoded
    // (it is held out, so the first evaluation reads it), before the first checkpoint.
    let cut = d.join("cut");
    make_folder(&cut, 2, 4);
    let bytes = std::fs::read(cut.join("class0/02.png")).unwrap();
    std::fs::write(cut.join("class0/02.png"), &bytes[..bytes.len() / 2]).unwrap();
    fails(&short(&cut, &ckpt, "2"), "02.png", &ckpt);
    // Unsupported resolutions.
    let mut a = short(&good, &ckpt, "2");
    let r = a.iter().position(|s| s == "--res").unwrap();
    a[r + 1] = "8".into();
    fails(&a, "at least 16", &ckpt);
    a[r + 1] = "48".into();
    fails(&a, "train_res % 32", &ckpt);
    // Sizes too large to allocate are refused before anything is allocated.
    a[r + 1] = "1000000".into();
    fails(&a, "--res 1000000 is more than the maximum", &ckpt);
    a[r + 1] = "32".into();
    let b = a.iter().position(|s| s == "--batch").unwrap();
    a[b + 1] = "18446744073709551615".into();
    fails(
        &a,
        "--batch 18446744073709551615 is more than the maximum",
        &ckpt,
    );
    a[b + 1] = "4".into();
    // train/ and val/ with different classes.
    let split = d.join("split");
    make_folder(&split.join("train"), 3, 4);
    make_folder(&split.join("val"), 2, 2);
    fails(&short(&split, &ckpt, "2"), "different class folders", &ckpt);
    // A single image in a class cannot be split.
    let single = d.join("single");
    make_folder(&single, 2, 4);
    std::fs::create_dir_all(single.join("lonely")).unwrap();
    picture(2, 20, 20, 9)
        .save(single.join("lonely/one.png"))
        .unwrap();
    fails(&short(&single, &ckpt, "2"), "at least 2 per class", &ckpt);
    std::fs::remove_dir_all(&d).unwrap();
}

/// A misspelt `EFFNET_SIMD` is one clear error line, not a silently ignored setting;
/// absurd `--batch` / `--res` of the other commands are refused before they allocate.
#[test]
fn bad_environment_and_sizes_are_one_error_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_effnet"))
        .arg("info")
        .env("EFFNET_SIMD", "avx3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("EFFNET_SIMD = \"avx3\" is not a SIMD level"),
        "{err}"
    );
    let nowhere = Path::new("/nonexistent");
    for (args, what) in [
        (
            &["info", "--arch", "efficientnet_b0", "--res", "99999999"][..],
            "--res 99999999 is more than the maximum",
        ),
        (
            &["bench", "model", "--batch", "4294967296"][..],
            "--batch 4294967296 is more than the maximum",
        ),
        (
            &["bench", "ops", "--batch", "4294967296"][..],
            "--batch 4294967296 is more than the maximum",
        ),
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        fails(&args, what, nowhere);
    }
}
