//! The committed PyTorch fixtures (tests/fixtures/) load with effnet's readers and are
//! consistent with each other and with effnet's tiny architectures.

use effnet::io::{npy, tensors};
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn fixtures_load_and_agree() {
    for (name, arch) in [
        ("tiny_efficientnet", "efficientnet_tiny"),
        ("tiny_tf_efficientnet", "tf_efficientnet_tiny"),
    ] {
        let d = dir(name);
        let w = tensors::load(&d.join("weights.safetensors")).unwrap();
        let g = tensors::load(&d.join("grads.safetensors")).unwrap();
        // Every gradient names a weight of the same shape; the weights add running
        // statistics (num_batches_tracked is an integer tensor, skipped on load).
        for (k, t) in &g {
            assert_eq!(w[k].shape, t.shape, "{name} {k}");
            assert!(t.data.iter().all(|v| v.is_finite()));
        }
        let params: usize = g.values().map(|t| t.data.len()).sum();
        assert_eq!(params, 126_822, "{name}");
        let running = w.keys().filter(|k| k.ends_with("running_var")).count();
        assert_eq!(w.len(), g.len() + 2 * running, "{name}");
        // effnet's count for the same network with 1000 classes, minus 990 classifier rows.
        let cfg = effnet::arch::ArchConfig::from_name(arch).unwrap();
        assert_eq!(cfg.counts(64).params, params + 990 * 321);

        let (xs, x) = npy::read_f32(&d.join("input.npy")).unwrap();
        assert_eq!(xs, [2, 3, 64, 64]);
        assert!(x.iter().all(|v| v.is_finite()));
        let (ls, labels) = npy::read_i64(&d.join("labels.npy")).unwrap();
        assert_eq!(ls, [2]);
        assert!(labels.iter().all(|&l| (0..10).contains(&l)));
        let (os, logits) = npy::read_f32(&d.join("logits.npy")).unwrap();
        assert_eq!(os, [2, 10]);
        // The two samples' logits differ: eval mode does not wash the input out.
        let spread = (0..10)
            .map(|j| (logits[j] - logits[10 + j]).abs())
            .fold(0.0f32, f32::max);
        assert!(spread > 0.1, "{name}: {spread}");
        // loss.json is one line, {"loss": <number>}, as `effnet grad` prints it.
        let json = std::fs::read_to_string(d.join("loss.json")).unwrap();
        let v = json.trim().strip_prefix("{\"loss\": ").unwrap();
        let loss: f64 = v.strip_suffix('}').unwrap().parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{name}");
    }
}
