//! The prepared inference network (`Network::plan_inference`): BatchNorm folded into
//! the convolutions, activations and residual adds in their epilogues. Its logits equal
//! the unfused forward pass's within 1e-5 of their norm for BatchNorm networks (both
//! paddings, odd resolutions, batch 1 and > 1, G1 and G16) at every SIMD level, with
//! non-trivial norm parameters and running statistics; repeated runs give the same
//! bits; networks with per-sample norms get an unfused plan with the forward pass's
//! bits; bad input is an error.

use crate::common::{Rng, levels};
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
    for (i, &(arch, batch, res)) in cases.iter().enumerate() {
        let net = network(arch, 10, 40 + i as u64);
        let x = Rng::new(90 + i as u64).vec(batch * res * res * 3);
        for level in levels() {
            with_level(level, || {
                let want = net.predict(&x, batch, res).unwrap();
                let mut plan = net.plan_inference(batch, res).unwrap();
                assert!(plan.is_fused(), "{arch}: BatchNorm networks fold");
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
}

#[test]
fn per_sample_norm_networks_run_unfused() {
    let net = network("tiny_g16_lnpn", 8, 3);
    let x = Rng::new(5).vec(2 * 32 * 32 * 3);
    let mut plan = net.plan_inference(2, 32).unwrap();
    assert!(!plan.is_fused());
    let want = net.predict(&x, 2, 32).unwrap();
    let got = plan.run(&x).unwrap();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[test]
fn bad_inference_inputs_are_errors() {
    let net = network("efficientnet_b0", 4, 1);
    assert!(net.plan_inference(0, 32).is_err());
    assert!(net.plan_inference(1, 4).is_err());
    let mut plan = net.plan_inference(1, 32).unwrap();
    assert!(plan.run(&vec![0.0; 32 * 32 * 3 - 1]).is_err());
}
