//! The prepared inference network (`Network::plan_inference`): BatchNorm folded into
//! the convolutions, activations and residual adds in their epilogues. Its logits equal
//! the unfused forward pass's within 1e-5 of their norm for BatchNorm networks (both
//! paddings, odd resolutions, batch 1 and > 1, G1 and G16) at every SIMD level, with
//! non-trivial norm parameters and running statistics; repeated runs give the same
//! bits; networks with per-sample norms (GroupNorm, LayerNorm + Proxy Norm) run them
//! prepared after their convolutions, within 1e-5 as well; image lanes give the same
//! bits for any thread count; bad input is an error; the traffic estimate counts what
//! fusion removes.

use crate::common::{Rng, in_pool, levels};
use effnet::arch::ArchConfig;
use effnet::model::{Network, ParamKind};
use effnet::simd::with_level;

/// A network of `arch` whose norm parameters and running statistics are random
/// (around 1 for the scales and variances), so that folding changes the weights.
fn network(arch: &str, classes: usize, seed: u64) -> Network {
    let cfg = ArchConfig::from_name(arch).unwrap().with_classes(classes);
    let mut net = Network::new(&cfg, seed).unwrap();
    let mut r = Rng::new(seed + 7);
    let kinds: Vec<ParamKind> = net.params().infos().iter().map(|i| i.kind).collect();
    for (v, kind) in net.params_mut().values.iter_mut().zip(kinds) {
        for x in v.iter_mut() {
            let u = r.uniform();
            match kind {
                ParamKind::NormGamma => *x = 1.0 + 0.3 * u,
                ParamKind::NormBeta | ParamKind::RunningMean => *x = 0.2 * u,
                ParamKind::RunningVar => *x = 1.0 + 0.5 * u,
                _ => {}
            }
        }
    }
    net
}

fn rel_to_norm(got: &[f32], want: &[f32]) -> f64 {
    let d: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let n: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

#[test]
fn fused_logits_match_the_unfused_forward() {
    let cases = [
        ("efficientnet_b0", 1, 32),
        ("efficientnet_b0", 3, 45),
        ("tf_efficientnet_b0", 2, 33),
        ("b0_g16_bn", 2, 40),
    ];
    let mut gated = 0;
    for (i, &(arch, batch, res)) in cases.iter().enumerate() {
        let net = network(arch, 10, 40 + i as u64);
        let x = Rng::new(90 + i as u64).vec(batch * res * res * 3);
        for level in levels() {
            with_level(level, || {
                let want = net.predict(&x, batch, res).unwrap();
                let mut plan = net.plan_inference(batch, res).unwrap();
                assert!(plan.folds_every_norm(), "{arch}: BatchNorm networks fold");
                gated += plan.gated_projections();
                assert_eq!(
                    plan.prologue_norms(),
                    0,
                    "{arch}: folded norms need no prologue"
                );
                let got = plan.run(&x).unwrap();
                let e = rel_to_norm(&got, &want);
                assert!(
                    e < 1e-5,
                    "{level} {arch} batch {batch} res {res}: rel err {e}"
                );
                let again = plan.run(&x).unwrap();
                assert!(
                    got.iter()
                        .zip(&again)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level} {arch}: a second run differs"
                );
            });
        }
    }
    assert!(
        gated > 0,
        "some early blocks gate their projection's weights"
    );
}

/// Per-sample norms (GroupNorm, LayerNorm + Proxy Norm with its full, delayed and no
/// scale placements) run after their convolutions, prepared once (the proxy
/// correction computed at planning, the delayed scale folded into the projection's
/// weights): the logits equal the unfused forward's within 1e-5 of their norm, both
/// paddings, odd sizes, batch 1 and > 1, every level.
#[test]
fn per_sample_norm_networks_match_the_unfused_forward() {
    let cases = [
        ("tiny_g16_lnpn", 2, 32),
        ("tiny_g16_lnpn", 1, 37),
        ("b0_g16_lnpn", 1, 33),
        ("b0_g16_gn", 3, 35),
        ("tiny_g16_gn", 2, 40),
    ];
    let mut gated = 0;
    for (i, &(arch, batch, res)) in cases.iter().enumerate() {
        let mut net = network(arch, 9, 20 + i as u64);
        // Random proxy parameters, so the correction is not the identity.
        let kinds: Vec<ParamKind> = net.params().infos().iter().map(|i| i.kind).collect();
        let mut r = Rng::new(30 + i as u64);
        for (v, kind) in net.params_mut().values.iter_mut().zip(kinds) {
            if matches!(kind, ParamKind::ProxyBeta | ParamKind::ProxyGamma) {
                v.iter_mut().for_each(|x| *x = 0.3 * r.uniform());
            }
        }
        let x = Rng::new(40 + i as u64).vec(batch * res * res * 3);
        for level in levels() {
            with_level(level, || {
                let mut plan = net.plan_inference(batch, res).unwrap();
                assert!(!plan.folds_every_norm(), "{arch}");
                gated += plan.gated_projections();
                let expanding = net.config().blocks().iter().filter(|b| b.expand).count();
                assert_eq!(
                    plan.prologue_norms(),
                    expanding,
                    "{arch}: every expansion's norm is the k×k convolution's prologue"
                );
                let want = net.predict(&x, batch, res).unwrap();
                let got = plan.run(&x).unwrap();
                let e = rel_to_norm(&got, &want);
                assert!(
                    e < 1e-5,
                    "{level} {arch} batch {batch} res {res}: rel err {e}"
                );
            });
        }
    }
    assert!(
        gated > 0,
        "some early blocks gate their projection's weights"
    );
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A batch runs on one image lane per thread (up to the batch size): the logits are
/// the same bits for pools of 1, 2, 3 and 8 threads (so for groups of 1 to 4 images),
/// equal each image's logits from a one-image plan, and stay the same over repeated runs — for a folded BatchNorm
/// network (depthwise and G16, with and without depth-first bands) and for a
/// per-sample-norm network, at every level.
#[test]
fn image_lanes_give_the_same_bits_for_any_thread_count() {
    let cases = [
        ("efficientnet_b0", 8, 37, None),
        ("efficientnet_b0", 5, 33, None),
        ("b0_g16_bn", 3, 32, Some(2048)),
        ("tiny_g16_lnpn", 4, 32, None),
    ];
    // Group sizes the cases ran with: the bits must not depend on them either.
    let mut groups = std::collections::BTreeSet::new();
    for (i, &(arch, batch, res, band)) in cases.iter().enumerate() {
        let net = network(arch, 7, 80 + i as u64);
        let image = res * res * 3;
        let x = Rng::new(81 + i as u64).vec(batch * image);
        let plan = |n: usize| match band {
            Some(b) => net.plan_inference_with(n, res, b).unwrap(),
            None => net.plan_inference(n, res).unwrap(),
        };
        for level in levels() {
            with_level(level, || {
                let mut one_by_one = Vec::new();
                let mut single = plan(1);
                for img in x.chunks(image) {
                    one_by_one.extend(single.run(img).unwrap());
                }
                for threads in [1, 2, 3, 8] {
                    let ((lanes, group), got, again) = in_pool(threads, || {
                        with_level(level, || {
                            let mut p = plan(batch);
                            (
                                (p.lanes(), p.group()),
                                p.run(&x).unwrap(),
                                p.run(&x).unwrap(),
                            )
                        })
                    });
                    let what = format!("{arch} batch {batch}, {threads} threads");
                    assert!((1..=4).contains(&group) && batch % group == 0, "{what}");
                    assert!(lanes <= threads && lanes * group <= batch, "{what}");
                    groups.insert(group);
                    assert_eq!(
                        bits(&got),
                        bits(&one_by_one),
                        "{level} {arch} {threads} threads"
                    );
                    assert_eq!(
                        bits(&got),
                        bits(&again),
                        "{level} {arch}: a second run differs"
                    );
                }
            });
        }
    }
    assert!(groups.len() >= 3, "the cases ran groups of {groups:?} only");
    // Groups of 4 at 37×37 run B0's first blocks image by image and the rest grouped:
    // the case above crossed from one part to the other.
    let net = network("efficientnet_b0", 7, 80);
    let split = in_pool(2, || net.plan_inference(8, 37).unwrap().per_image_blocks());
    assert!(
        (1..16).contains(&split),
        "{split} of 16 blocks image by image"
    );
}

/// The images a lane runs at once divide the batch and keep the lanes evenly loaded
/// (the busiest lane runs the fewest images; ties go to the larger group, at most 4),
/// with one lane per thread up to one per group.
#[test]
fn image_groups_divide_the_batch_and_balance_the_lanes() {
    let net = network("tiny_g16_lnpn", 3, 2);
    // ((batch, threads), (lanes, images per group))
    let cases = [
        ((16, 2), (2, 4)),
        ((32, 2), (2, 4)),
        ((12, 2), (2, 3)),
        ((10, 2), (2, 1)),
        ((7, 2), (2, 1)),
        ((4, 2), (2, 2)),
        ((2, 2), (2, 1)),
        ((1, 2), (1, 1)),
        ((16, 1), (1, 4)),
        ((8, 3), (3, 1)),
        ((16, 8), (8, 2)),
    ];
    for ((batch, threads), want) in cases {
        let got = in_pool(threads, || {
            let p = net.plan_inference(batch, 16).unwrap();
            (p.lanes(), p.group())
        });
        assert_eq!(got, want, "batch {batch}, {threads} threads");
    }
}

#[test]
fn bad_inference_inputs_are_errors() {
    let net = network("efficientnet_b0", 4, 1);
    assert!(net.plan_inference(0, 32).is_err());
    assert!(net.plan_inference(1, 4).is_err());
    let mut plan = net.plan_inference(1, 32).unwrap();
    assert!(plan.run(&vec![0.0; 32 * 32 * 3 - 1]).is_err());
}

#[test]
fn traffic_estimate_counts_the_passes_fusion_removes() {
    let net = network("efficientnet_b0", 10, 5);
    let traffic = |batch: usize, threads: usize| {
        in_pool(threads, || {
            let p = net.plan_inference(batch, 64).unwrap();
            (p.traffic_per_image(), p.group())
        })
    };
    let (one, _) = traffic(1, 2);
    // Batch 2 on two threads: one image per group; batch 4 on one: a group of 4.
    let ((two, 1), (four, 4)) = (traffic(2, 2), traffic(4, 1)) else {
        panic!("unexpected group sizes");
    };
    // Fusion removes a read and a write of every convolution output at least.
    assert!(one.fused_bytes < one.unfused_bytes, "{one:?}");
    // The removed passes are activations: the same bytes per image at any batch.
    let saved = |t: effnet::model::Traffic| t.unfused_bytes - t.fused_bytes;
    assert!(
        (saved(one) - saved(two)).abs() <= 1e-6 * saved(one),
        "{one:?} {two:?}"
    );
    // Each image runs the one-image plan on its lane: the same bytes at any batch.
    assert_eq!(one, two);
    // A group of 4 reads the weights once for the 4: fewer bytes per image, by
    // three quarters of the weights (at least the 1280×10 classifier and the head).
    assert!(
        (saved(four) - saved(one)).abs() <= 1e-6 * saved(one),
        "{one:?} {four:?}"
    );
    let weights_saved = one.fused_bytes - four.fused_bytes;
    assert!(
        weights_saved > 0.75 * 4.0 * (1280.0 * 10.0 + 320.0 * 1280.0),
        "{weights_saved}"
    );
    // Twice the resolution: about four times the activations.
    let big = net.plan_inference(1, 128).unwrap().traffic_per_image();
    let ratio = saved(big) / saved(one);
    assert!(
        (3.5..4.5).contains(&ratio),
        "saved bytes grow {ratio}× for 4× the pixels"
    );
    // Per-sample norms pass over their tensors either way: no bytes saved there.
    let gn = effnet::model::Network::new(&ArchConfig::from_name("b0_g16_gn").unwrap(), 1).unwrap();
    let bn = network("b0_g16_bn", 10, 5);
    let (g, b) = (
        gn.plan_inference(1, 64).unwrap().traffic_per_image(),
        bn.plan_inference(1, 64).unwrap().traffic_per_image(),
    );
    assert!(saved(g) < saved(b), "{g:?} {b:?}");
}

/// Depth-first blocks (expansion and k×k convolution band by band, the squeeze summed
/// per band) give the whole-tensor plan's logits: bands of one output row, of a few
/// rows and of most of the image, stride 1 and 2, 3×3 and 5×5, both paddings, odd
/// sizes, batch 1 and 3, depthwise and G16, at every level.
#[test]
fn depth_first_blocks_match_the_whole_tensor_plan() {
    let cases = [
        ("efficientnet_b0", 1, 45),
        ("tf_efficientnet_b0", 3, 37),
        ("b0_g16_bn", 2, 40),
    ];
    for (i, &(arch, batch, res)) in cases.iter().enumerate() {
        let net = network(arch, 10, 60 + i as u64);
        let x = Rng::new(70 + i as u64).vec(batch * res * res * 3);
        for level in levels() {
            with_level(level, || {
                let want = net.predict(&x, batch, res).unwrap();
                let mut whole = net.plan_inference_with(batch, res, usize::MAX).unwrap();
                assert_eq!(whole.banded_blocks(), 0);
                let whole = whole.run(&x).unwrap();
                for band_bytes in [1, 6 << 10, 40 << 10] {
                    let mut plan = net.plan_inference_with(batch, res, band_bytes).unwrap();
                    assert!(
                        plan.banded_blocks() > 0,
                        "{arch} res {res}: {band_bytes} B bands band no block"
                    );
                    let got = plan.run(&x).unwrap();
                    let e = rel_to_norm(&got, &whole);
                    let what = format!("{level} {arch} batch {batch} res {res} bands {band_bytes}");
                    // Only the squeeze sums in another order.
                    assert!(e < 1e-6, "{what}: vs the whole-tensor plan, rel err {e}");
                    let e = rel_to_norm(&got, &want);
                    assert!(e < 1e-5, "{what}: vs the unfused forward, rel err {e}");
                }
            });
        }
    }
}
