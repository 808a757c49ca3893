//! timm interoperability: logits and gradients of `tiny` networks against values
//! PyTorch produced (fixtures generated once by the script in `tests/fixtures/`, so
//! the test needs no PyTorch). Skipped, with a note, while the fixtures are absent.

use effnet::arch::ArchConfig;
use effnet::io::{npy, tensors};
use effnet::kernels::loss::Targets;
use effnet::model::{Network, Pass};
use std::path::Path;

fn nchw_to_nhwc(shape: &[usize], data: &[f32]) -> Vec<f32> {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0.0f32; data.len()];
    for b in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                out[(b * h * w + p) * c + ch] = data[(b * c + ch) * h * w + p];
            }
        }
    }
    out
}

fn check(dir: &str, arch: &str) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    if !d.join("weights.safetensors").exists() {
        eprintln!("skipping {dir}: no fixture (run the generator in tests/fixtures/)");
        return;
    }
    let w = tensors::load(&d.join("weights.safetensors")).unwrap();
    let classes = w["classifier.bias"].data.len();
    let cfg = ArchConfig::from_name(arch).unwrap().with_classes(classes);
    let mut net = Network::new(&cfg, 0).unwrap();
    net.params_mut().load_timm(&w).unwrap();
    let (xs, xd) = npy::read_f32(&d.join("input.npy")).unwrap();
    let (n, res) = (xs[0], xs[2]);
    let x = nchw_to_nhwc(&xs, &xd);
    let (_, want) = npy::read_f32(&d.join("logits.npy")).unwrap();
    let got = net.predict(&x, n, res).unwrap();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    for (g, e) in got.iter().zip(&want) {
        assert!((g - e).abs() <= 1e-3 * scale, "{dir} logits: {g} vs {e}");
    }
    let (_, labels) = npy::read_i64(&d.join("labels.npy")).unwrap();
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let (loss, _) = net
        .loss_and_grad(
            &x,
            n,
            res,
            Targets::Labels(&labels),
            0.0,
            &Pass::deterministic_train(),
        )
        .unwrap();
    let lj = std::fs::read_to_string(d.join("loss.json")).unwrap();
    let want_loss: f32 = lj
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(':')
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        (loss - want_loss).abs() <= 1e-4 * want_loss.abs().max(1.0),
        "{dir} loss {loss} vs {want_loss}"
    );
    let want_g = tensors::load(&d.join("grads.safetensors")).unwrap();
    let got_g = net.params().to_timm(true);
    // A gradient that vanishes but for rounding (a norm's shift feeding only a linear
    // map into a BatchNorm) is compared against the scale of the largest one.
    let largest = want_g
        .values()
        .map(|e| {
            e.data
                .iter()
                .map(|&b| f64::from(b).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .fold(0.0, f64::max);
    for (name, e) in &want_g {
        let g = got_g
            .get(name)
            .unwrap_or_else(|| panic!("{dir}: no gradient {name}"));
        assert_eq!(g.data.len(), e.data.len(), "{name}");
        let num: f64 = g
            .data
            .iter()
            .zip(&e.data)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = e.data.iter().map(|b| (*b as f64).powi(2)).sum();
        let rel = (num / den.max(1e-30)).sqrt();
        assert!(
            rel < 1e-3 || num.sqrt() < 1e-7 * largest,
            "{dir} gradient {name}: relative error {rel:e}"
        );
    }
}

#[test]
fn timm_efficientnet_tiny_matches_pytorch() {
    check("tiny_efficientnet", "efficientnet_tiny");
}

#[test]
fn timm_tf_efficientnet_tiny_matches_pytorch() {
    check("tiny_tf_efficientnet", "tf_efficientnet_tiny");
}
