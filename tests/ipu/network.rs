//! Blocks and the whole network chained on the model against the SIMD model; B0's
//! layer lists, the per-layer report, the tile picture.

use crate::common::{Rng, rel_err};
use crate::*;
use effnet::Error;
use effnet::ipu::reference::{self as oracle};
use effnet::ipu::{Precision, Target};

fn check_block(spec: effnet::ipu::block::BlockSpec, seed: u64) {
    use effnet::ipu::block::run_block;
    let mut rng = Rng::new(seed);
    let shapes = spec.param_shapes();
    let mut params: Vec<Vec<f32>> = Vec::new();
    for (name, len) in &shapes {
        let v = rng.vec(*len);
        params.push(if name.starts_with("norm") {
            // γ near 1, β, β', γ' small ([4][C], or [C] = γ for a γ-only norm).
            let c = if *name == "norm3" {
                spec.cout
            } else {
                spec.mid()
            };
            v.iter()
                .enumerate()
                .map(|(i, r)| if i < c { 1.0 + 0.3 * r } else { 0.2 * r })
                .collect()
        } else {
            let fan = if *name == "w_spatial" {
                spec.kernel * spec.kernel * spec.group_size
            } else {
                8
            };
            v.iter().map(|r| r / (fan as f32).sqrt()).collect()
        });
    }
    let (oh, ow) = spec.out_hw();
    let x = rng.vec(spec.batch * spec.h * spec.w * spec.cin);
    let dout = rng.vec(spec.batch * oh * ow * spec.cout);
    let r = run_block(&spec, &Target::mk2(), &x, &params, &dout).unwrap();
    let p64: Vec<Vec<f64>> = params.iter().map(|p| to64(p)).collect();
    let x64 = to64(&x);
    let want = oracle::block_forward(&spec, &x64, &p64);
    let e = rel_err(&r.out, &want);
    assert!(e < 1e-4, "block forward {spec:?}: {e}");
    assert!(r.fwd_cycles > 0 && r.bwd_cycles > r.fwd_cycles);
    let d64 = to64(&dout);
    let loss = |x: &[f64], p: &[Vec<f64>]| -> f64 {
        oracle::block_forward(&spec, x, p)
            .iter()
            .zip(&d64)
            .map(|(a, b)| a * b)
            .sum()
    };
    let h = 1e-5;
    let want_dx: Vec<f64> = (0..x.len())
        .map(|i| {
            let mut a = x64.clone();
            a[i] += h;
            let up = loss(&a, &p64);
            a[i] -= 2.0 * h;
            (up - loss(&a, &p64)) / (2.0 * h)
        })
        .collect();
    let e = rel_err(&r.dx, &want_dx);
    assert!(e < 1e-4, "block dx {spec:?}: {e}");
    // Every parameter tensor: a sample of its entries by central differences.
    for (pi, (name, len)) in shapes.iter().enumerate() {
        if *len == 0 {
            continue;
        }
        // Norm gradients are [C][4] against [4][C] parameters ([C] when γ-only).
        let c = if *name == "norm3" {
            spec.cout
        } else {
            spec.mid()
        };
        let norm = name.starts_with("norm") && *len == 4 * c;
        let mut got = Vec::new();
        let mut want = Vec::new();
        for _ in 0..24 {
            let j = (rng.next_u64() as usize) % len;
            // Gradient layout: weights as the parameter; norms [C][4] vs params [4][C].
            let gi = if norm { (j % c) * 4 + j / c } else { j };
            let mut p = p64.clone();
            p[pi][j] += h;
            let up = loss(&x64, &p);
            p[pi][j] -= 2.0 * h;
            want.push((up - loss(&x64, &p)) / (2.0 * h));
            got.push(r.grads[pi][gi]);
        }
        let e = rel_err(&got, &want);
        assert!(e < 1e-3, "block grad {name} {spec:?}: {e}");
    }
}

#[test]
fn a_g16_gn_block_runs_end_to_end_forward_and_backward() {
    use effnet::ipu::block::{BlockNorm, BlockSpec};
    check_block(
        BlockSpec {
            batch: 2,
            h: 5,
            w: 6,
            cin: 16,
            cout: 16,
            expand: 2,
            kernel: 3,
            stride: 1,
            group_size: 16,
            se: 4,
            norm: BlockNorm::Gn(4),
        },
        11,
    );
}

#[test]
fn a_depthwise_strided_block_runs_end_to_end_forward_and_backward() {
    use effnet::ipu::block::{BlockNorm, BlockSpec};
    check_block(
        BlockSpec {
            batch: 3,
            h: 7,
            w: 5,
            cin: 8,
            cout: 12,
            expand: 3,
            kernel: 5,
            stride: 2,
            group_size: 1,
            se: 2,
            norm: BlockNorm::Gn(4),
        },
        12,
    );
}

#[test]
fn a_g16_ln_proxy_norm_block_runs_end_to_end_forward_and_backward() {
    use effnet::ipu::block::{BlockNorm, BlockSpec};
    check_block(
        BlockSpec {
            batch: 2,
            h: 4,
            w: 5,
            cin: 16,
            cout: 16,
            expand: 2,
            kernel: 3,
            stride: 1,
            group_size: 16,
            se: 4,
            norm: BlockNorm::LnPn,
        },
        13,
    );
}

#[test]
fn b0_layer_lists_match_the_published_macs() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::network::{Op, layers};
    // DESIGN.md: B0 0.386 G MACs at 224, B0-G16 0.635 G MACs (convs, SE and FC); the
    // IPU layer list and `arch::ArchConfig::counts` are the same network.
    for (name, want) in [
        ("efficientnet_b0", 0.386e9),
        ("b0_g16_gn", 0.635e9),
        ("b0_g16_lnpn", 0.635e9),
        ("tiny_g1_gn", 0.0),
        ("b3_g16_bn", 0.0),
    ] {
        let arch = ArchConfig::from_name(name).unwrap();
        let res = if want > 0.0 { 224 } else { arch.native_res };
        let ls = layers(&arch, res, 1).unwrap();
        let mut macs = 0.0;
        for l in &ls {
            match &l.op {
                Op::Conv(s) => macs += s.flops() / 2.0,
                Op::Se { reduced } => macs += 2.0 * (*reduced * l.out.3) as f64,
                _ => {}
            }
        }
        let counted = arch.counts(res).macs as f64;
        assert!(
            (macs / counted - 1.0).abs() < 1e-12,
            "{name}: {macs:.4e} MACs in the IPU list, {counted:.4e} in arch"
        );
        if want > 0.0 {
            assert!(
                (macs / want - 1.0).abs() < 0.005,
                "{name}: {macs:.4e} MACs, published {want:.3e}"
            );
        }
    }
}

#[test]
fn the_report_covers_every_layer_with_allowed_kinds_and_consistent_totals() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::network::{layers, report};
    let kinds = [
        "stem",
        "pointwise",
        "depthwise",
        "grouped",
        "norm",
        "activation",
        "se",
        "pool",
        "fc",
        "loss",
    ];
    let a = |n: &str| ArchConfig::from_name(n).unwrap();
    for name in [
        "efficientnet_b0",
        "tf_efficientnet_b0",
        "b0_g16_lnpn",
        "tiny_g16_lnpn",
    ] {
        let arch = a(name);
        let r = report(&arch, 64, 2, &Target::mk2(), Precision::F16).unwrap();
        // A fwd line per layer and a bwd line per layer but the loss (whose gradient
        // comes out of its forward vertex), from the built graph.
        for l in layers(&arch, 64, 2).unwrap() {
            for pass in ["fwd", "bwd"] {
                let want = usize::from(pass == "fwd" || l.kind != "loss");
                let got = r
                    .lines
                    .iter()
                    .filter(|x| x.layer == l.name && x.pass == pass)
                    .count();
                assert_eq!(got, want, "{name}: {} {pass}", l.name);
            }
        }
        for l in &r.lines {
            assert!(kinds.contains(&l.kind), "{}", l.kind);
            assert!(l.cost.tiles >= 1 && l.cost.tiles <= 1472);
            assert!(l.cost.max_tile_bytes <= Target::mk2().budget_bytes());
        }
        let train: u64 = r.lines.iter().map(|l| l.cost.total()).sum();
        let want = 2.0 * 1.33e9 / train as f64;
        assert!((r.training_img_per_s / want - 1.0).abs() < 1e-9);
        assert!(r.inference_img_per_s > r.training_img_per_s);
    }
    // Bow is the same die at a higher clock: same cycles, more images per second.
    let mk2 = report(&a("b0_g16_gn"), 64, 2, &Target::mk2(), Precision::F16).unwrap();
    let bow = report(&a("b0_g16_gn"), 64, 2, &Target::bow(), Precision::F16).unwrap();
    assert!((bow.training_img_per_s / mk2.training_img_per_s - 1.85 / 1.33).abs() < 1e-9);
    // A batch whose saved activations cannot fit is the named memory error.
    match report(&a("b0_g1_gn"), 224, 64, &Target::mk2(), Precision::F32) {
        Err(Error::TileMemory { tensors, .. }) => {
            assert!(tensors[0].0.contains("saved activations"))
        }
        other => panic!("expected TileMemory, got {other:?}"),
    }
}

#[test]
fn the_tile_picture_is_a_png_of_the_tile_grid() {
    use effnet::ipu::picture::{TilePicture, encode_png};
    let pic = TilePicture {
        bytes: (0..1472).map(|t| t * 300).collect(),
        cycles: (0..1472).map(|t| (t % 97) as u64).collect(),
        budget: 383_385,
    };
    let (w, h, px) = pic.render();
    assert_eq!(px.len(), w * h * 3);
    // Tiles over budget are red.
    let last = 1471;
    let cols = (w - 8) / 2 / 8;
    let (x, y) = ((last % cols) * 8 + 1, (last / cols) * 8 + 1);
    assert_eq!(&px[(y * w + x) * 3..(y * w + x) * 3 + 3], &[255, 0, 0]);
    let png = encode_png(w, h, &px);
    assert_eq!(&png[..8], &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!(
        u32::from_be_bytes(png[16..20].try_into().unwrap()) as usize,
        w
    );
    assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
}

#[test]
fn every_conv_of_a_small_network_runs_through_the_model() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::reference::ConvOracle;
    use effnet::ipu::run::run_network;
    // The f64 oracle (the SIMD kernels are compared by `effnet ipu run` once they land).
    let r = run_network(
        &ArchConfig::from_name("b0_g16_lnpn").unwrap(),
        32,
        1,
        &Target::mk2(),
        ConvOracle::F64,
        Some("blocks.1.0.conv_dw"),
    )
    .unwrap();
    // f32 through the planner's splits (partial sums reduced across tiles) against f64.
    assert!(r.max_rel_err < 5e-5, "{}", r.max_rel_err);
    assert!(
        r.layers
            .iter()
            .any(|l| l.pass == "block_bwd" || l.pass == "chain_bwd")
    );
    assert!(r.layers.iter().filter(|l| l.pass == "fwd").count() >= 40);
    let pic = r.picture.unwrap();
    assert_eq!(pic.bytes.len(), 1472);
    assert!(pic.cycles.iter().filter(|&&c| c > 0).count() > 10);
}

#[test]
fn the_blocks_of_a_tiny_network_run_chained_forward_and_backward() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::run::run_blocks_chained;
    for name in ["tiny_g16_lnpn", "tiny_g1_gn"] {
        let a = ArchConfig::from_name(name).unwrap();
        let lines = run_blocks_chained(&a, 32, 2, &Target::mk2(), 7).unwrap();
        let blocks = a.blocks().len();
        for (pass, want) in [
            ("chain_fwd", blocks),
            ("chain_out", 1),
            ("chain_bwd", blocks),
        ] {
            assert_eq!(
                lines.iter().filter(|l| l.pass == pass).count(),
                want,
                "{name} {pass}"
            );
        }
        for l in &lines {
            assert!(
                l.rel_err < 1e-5,
                "{name} {} {}: {}",
                l.name,
                l.pass,
                l.rel_err
            );
        }
    }
    // BatchNorm's batch statistics are not modelled by the block program.
    let bn = ArchConfig::from_name("efficientnet_tiny").unwrap();
    assert!(run_blocks_chained(&bn, 32, 2, &Target::mk2(), 7).is_err());
}

/// `effnet ipu run`'s code path: one training step of the whole network chained on the
/// model (stem → blocks → head → pool → classifier → loss → complete backward)
/// against the model layer's SIMD forward and backward.
fn chain_vs_simd(name: &str, res: usize, target: &Target) -> effnet::ipu_check::CheckResult {
    use effnet::arch::ArchConfig;
    let a = ArchConfig::from_name(name).unwrap().with_classes(10);
    let r = effnet::ipu_check::check(&a, res, 2, target, 3).unwrap();
    // Logits, loss and a gradient for every trainable parameter of the model.
    let net = effnet::model::Network::new(&a, 3).unwrap();
    let trainable = net
        .params()
        .infos()
        .iter()
        .filter(|i| i.kind.trainable())
        .count();
    assert_eq!(r.lines.len(), 2 + trainable, "{name}");
    for l in &r.lines {
        assert!(l.rel_err < 1e-4, "{name} {}: {:.3e}", l.tensor, l.rel_err);
    }
    assert!(r.loss.is_finite() && r.loss > 0.0);
    r
}

#[test]
fn the_whole_tiny_network_chained_on_the_model_matches_the_simd_model() {
    // BatchNorm at 64 px: at 32 px the last blocks are 1×1, and statistics over two
    // values make the backward ill-conditioned in f32 for any implementation.
    for (name, res) in [
        ("tiny_g16_gn", 32),
        ("tiny_g1_bn", 64),
        ("tiny_g16_lnpn", 32),
    ] {
        let r = chain_vs_simd(name, res, &Target::mk2());
        // Training step profiled as one program: every pass of every layer.
        let kinds: std::collections::HashSet<&str> = r.ipu.layers.iter().map(|l| l.kind).collect();
        for k in ["stem", "pointwise", "norm", "se", "pool", "fc", "loss"] {
            assert!(kinds.contains(k), "{name}: no {k} layer");
        }
        assert!(r.ipu.profile.total_cycles() > 0);
    }
}

#[test]
fn a_layer_over_one_tile_per_image_is_split_and_still_matches() {
    use effnet::arch::ArchConfig;
    // A 24 KB budget: one image's stem output (32×32×8 f32 = 32 KB) cannot sit on one
    // tile, nor can the head conv's weights (80×320 f32 = 100 KB).
    let mut t = Target::mk2();
    t.set("tile_bytes=40000").unwrap();
    // (Depthwise: a G16 5×5 group's weights alone, 25 KB, would not fit.)
    let a = ArchConfig::from_name("tiny_g1_gn").unwrap();
    let stem_bytes = 32 * 32 * a.stem_channels() * 4;
    assert!(stem_bytes > t.budget_bytes());
    let r = chain_vs_simd("tiny_g1_gn", 64, &t);
    let stem = r.ipu.splits.iter().find(|s| s.name == "conv_stem").unwrap();
    assert!(stem.boxes > 2, "{stem:?}");
    let head = r.ipu.splits.iter().find(|s| s.name == "conv_head").unwrap();
    assert!(head.chan_parts > 1 || head.row_parts > 1, "{head:?}");
    assert!(
        r.ipu
            .profile
            .tile_peak_bytes
            .iter()
            .all(|&b| b <= t.budget_bytes())
    );
}

#[test]
fn the_chain_parameters_are_the_models_trainable_parameters() {
    use effnet::arch::ArchConfig;
    let a = ArchConfig::from_name("tiny_g1_bn")
        .unwrap()
        .with_classes(10);
    let net = effnet::model::Network::new(&a, 1).unwrap();
    let p = effnet::ipu_check::chain_params(net.params());
    let ch = effnet::ipu::chain::build(&a, 32, 2, &Target::mk2(), Precision::F32).unwrap();
    let shapes = ch.param_shapes();
    assert_eq!(shapes.len(), p.len());
    for (name, len) in shapes {
        assert_eq!(p[&name].len(), len, "{name}");
        let i = net.params().find(&name).unwrap();
        assert_eq!(p[&name], net.params().values[i], "{name}");
    }
    // Running statistics are buffers, not parameters of the training step.
    assert!(p.keys().all(|k| !k.contains("running")));
}
