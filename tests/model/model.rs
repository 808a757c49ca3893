//! Model-layer checks on the `tiny` scale at small resolution: whole-network gradients
//! against finite differences (every norm × both spatial convs), parameter counts,
//! train/eval semantics, batch independence under LN+PN, determinism.

use crate::common::{Rng, rel_err, to64};
use effnet::arch::ArchConfig;
use effnet::kernels::loss::{CrossEntropy, Targets};
use effnet::model::{Network, Pass};

const RES: usize = 32;
const BATCH: usize = 2;

fn tiny(name: &str) -> ArchConfig {
    ArchConfig::from_name(name).unwrap().with_classes(8)
}

fn loss_at(
    net: &Network,
    x: &[f32],
    (n, res): (usize, usize),
    labels: &[usize],
    pass: &Pass,
) -> f64 {
    let tape = net.forward(x, n, res, pass).unwrap();
    let ce = CrossEntropy::new(n, net.classes(), 0.0).unwrap();
    ce.forward_backward(&tape.logits, Targets::Labels(labels), None)
        .unwrap() as f64
}

/// Directional finite differences along the analytic gradient of a sample of
/// parameter tensors (a zero gradient is checked along a random direction).
/// BatchNorm needs more values per channel than the other norms for its loss to be
/// smooth at the finite-difference step: it runs at a larger batch and resolution.
fn grad_check(name: &str) {
    let (n, res) = if name.ends_with("_bn") {
        (4, 64)
    } else {
        (BATCH, RES)
    };
    let cfg = tiny(name);
    let mut net = Network::new(&cfg, 11).unwrap();
    let mut rng = Rng::new(5);
    let x = rng.vec(n * res * res * 3);
    let labels = [3usize, 6, 1, 0][..n].to_vec();
    let pass = Pass::deterministic_train();
    // Perturb the norm and proxy parameters away from their initial values so that
    // every path carries a gradient.
    {
        let p = net.params_mut();
        for i in 0..p.len() {
            if !p.infos()[i].kind.decays() && p.infos()[i].kind.trainable() {
                let r = rng.vec(p.values[i].len());
                for (v, r) in p.values[i].iter_mut().zip(r) {
                    *v += 0.2 * r;
                }
            }
        }
    }
    let (loss, _) = net
        .loss_and_grad(&x, n, res, Targets::Labels(&labels), 0.0, &pass)
        .unwrap();
    assert!(loss.is_finite());
    let grads = net.params().grads.clone();
    let infos = net.params().infos().to_vec();
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    let mut failures = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        if !info.kind.trainable() {
            continue;
        }
        // A sample: every 5th tensor plus the interesting ones.
        let interesting = i == 0
            || info.name.contains("proxy")
            || info.name.starts_with("blocks.1.0")
            || info.name.contains("classifier");
        if !interesting && i % 5 != 0 {
            continue;
        }
        let mut g = grads[i].clone();
        let mut norm: f64 = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let zero = norm < 1e-6;
        if zero {
            // e.g. a bias followed by a BatchNorm: check along a random direction.
            g = rng.vec(g.len());
            norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        }
        let h = 1e-2;
        let orig = net.params().values[i].clone();
        let mut eval = |sign: f64| {
            let p = net.params_mut();
            for ((v, o), gv) in p.values[i].iter_mut().zip(&orig).zip(&g) {
                *v = (*o as f64 + sign * h * *gv as f64 / norm) as f32;
            }
            loss_at(&net, &x, (n, res), &labels, &pass)
        };
        let fd = (eval(1.0) - eval(-1.0)) / (2.0 * h);
        net.params_mut().values[i] = orig;
        let err = if zero {
            fd.abs() / 1e-2
        } else {
            (fd - norm).abs() / norm.max(1e-3)
        };
        worst = worst.max(err);
        checked += 1;
        if err > 0.05 {
            failures.push(format!(
                "{}: analytic ‖g‖ {norm:.6e}, finite difference {fd:.6e} (rel err {err:.3})",
                info.name
            ));
        }
    }
    assert!(checked >= 8, "{name}: only {checked} tensors checked");
    assert!(
        failures.is_empty(),
        "{name}: {} of {checked} tensors off (worst {worst:.3}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gradient_check_g1_bn() {
    grad_check("tiny_g1_bn");
}
#[test]
fn gradient_check_g16_bn() {
    grad_check("tiny_g16_bn");
}
#[test]
fn gradient_check_g1_gn() {
    grad_check("tiny_g1_gn");
}
#[test]
fn gradient_check_g16_gn() {
    grad_check("tiny_g16_gn");
}
#[test]
fn gradient_check_g1_lnpn() {
    grad_check("tiny_g1_lnpn");
}
#[test]
fn gradient_check_g16_lnpn() {
    grad_check("tiny_g16_lnpn");
}

#[test]
fn parameter_counts_match_the_architecture() {
    for name in [
        "efficientnet_b0",
        "b0_g16_bn",
        "b0_g16_lnpn",
        "b1_g1_gn",
        "tiny_g16_lnpn",
        "efficientnet_tiny",
    ] {
        let cfg = ArchConfig::from_name(name).unwrap();
        let net = Network::new(&cfg, 0).unwrap();
        assert_eq!(
            net.params().trainable_count(),
            cfg.counts(cfg.native_res).params,
            "{name}"
        );
    }
}

#[test]
fn lnpn_outputs_are_batch_independent() {
    let cfg = tiny("tiny_g16_lnpn");
    let net = Network::new(&cfg, 3).unwrap();
    let mut rng = Rng::new(9);
    let n = 3;
    let x = rng.vec(n * RES * RES * 3);
    let all = net.predict(&x, n, RES).unwrap();
    let per = RES * RES * 3;
    for i in 0..n {
        let one = net.predict(&x[i * per..(i + 1) * per], 1, RES).unwrap();
        for (a, b) in one.iter().zip(&all[i * 8..(i + 1) * 8]) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "sample {i}: {a} vs {b}"
            );
        }
    }
    // Training mode (no dropout) gives the same outputs: no batch statistics.
    let t = net
        .forward(&x, n, RES, &Pass::deterministic_train())
        .unwrap();
    for (a, b) in t.logits.iter().zip(&all) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
    }
}

#[test]
fn batchnorm_train_and_eval_differ_as_they_should() {
    let cfg = tiny("tiny_g1_bn");
    let mut net = Network::new(&cfg, 3).unwrap();
    let mut rng = Rng::new(2);
    let n = 4;
    let x: Vec<f32> = rng
        .vec(n * RES * RES * 3)
        .iter()
        .map(|v| 3.0 * v + 1.0)
        .collect();
    let eval0 = net.predict(&x, n, RES).unwrap();
    let train = net
        .forward(&x, n, RES, &Pass::deterministic_train())
        .unwrap();
    let d: f32 = eval0
        .iter()
        .zip(&train.logits)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(
        d > 1e-3,
        "batch statistics should differ from the initial running ones"
    );
    // Training statistics depend on the batch: sample 0 alone differs.
    let one = net
        .forward(&x[..RES * RES * 3], 1, RES, &Pass::deterministic_train())
        .unwrap();
    let d1: f32 = one
        .logits
        .iter()
        .zip(&train.logits[..8])
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(d1 > 1e-4);
    // Updating the running statistics changes them and inference with them.
    let t = net
        .forward(&x, n, RES, &Pass::deterministic_train())
        .unwrap();
    net.update_running(&t, 0.5).unwrap();
    let i = net.params().find("bn1.running_mean").unwrap();
    assert!(net.params().values[i].iter().any(|v| v.abs() > 1e-3));
    let i = net.params().find("bn1.running_var").unwrap();
    assert!(
        net.params().values[i]
            .iter()
            .any(|v| (v - 1.0).abs() > 1e-3)
    );
    let eval1 = net.predict(&x, n, RES).unwrap();
    assert!(eval1 != eval0);
    // Training mode never touches the running statistics by itself.
    let before = net.params().values.clone();
    net.forward(&x, n, RES, &Pass::deterministic_train())
        .unwrap();
    assert!(before == net.params().values);
    // Inference is per sample.
    let one = net.predict(&x[..RES * RES * 3], 1, RES).unwrap();
    for (a, b) in one.iter().zip(&eval1[..8]) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
    }
}

#[test]
fn forward_and_backward_are_deterministic_across_threads() {
    for name in ["tiny_g16_lnpn", "tiny_g1_bn"] {
        deterministic_across_threads(name);
    }
}

fn deterministic_across_threads(name: &str) {
    let cfg = tiny(name);
    let mut rng = Rng::new(4);
    let x = rng.vec(BATCH * RES * RES * 3);
    let run = |threads: usize| {
        crate::common::in_pool(threads, || {
            let mut net = Network::new(&cfg, 1).unwrap();
            let (loss, _) = net
                .loss_and_grad(
                    &x,
                    BATCH,
                    RES,
                    Targets::Labels(&[1, 2]),
                    0.1,
                    &Pass::train(&cfg, 7),
                )
                .unwrap();
            (loss, net.params().grads.clone())
        })
    };
    let a = run(1);
    for t in [2, 8] {
        let b = run(t);
        assert_eq!(
            a.0.to_bits(),
            b.0.to_bits(),
            "{name}: loss with {t} threads"
        );
        assert!(a.1 == b.1, "{name}: gradients differ with {t} threads");
    }
}

/// The norms' statistics from the convolutions' statistics post-op (the default)
/// against each norm's own statistics pass (`set_conv_statistics(false)`): the same
/// training step to f32 rounding — loss, every gradient and every parameter after
/// the step (BatchNorm's running statistics included) relative to each tensor's norm,
/// and the logits of a prediction — for every norm kind, with both spatial convs, at
/// an odd resolution and (the per-sample norms) batch 1. The two are not bitwise equal (the statistics
/// are summed in another order), which shows the fused path ran.
#[test]
fn norm_statistics_from_the_convolutions_match_the_norms_own() {
    for name in [
        "tiny_g1_bn",
        "tiny_g16_bn",
        "tiny_g16_gn",
        "tiny_g1_lnpn",
        "tiny_g16_lnpn",
    ] {
        let cfg = tiny(name);
        let mut fused = Network::new(&cfg, 5).unwrap();
        let mut own = fused.clone();
        own.set_conv_statistics(false);
        let (mut ra, mut rb) = (Rng::new(21), Rng::new(21));
        let mut bitwise = true;
        // BatchNorm at batch 1, or over a few pixels per channel, is so ill-conditioned
        // that rounding alone moves its gradients by more than 1e-4 (a relative
        // change of 1e-7 in the input moves tiny_g16_bn's stem gradient by 2e-5 at
        // batch 1, 64×64): it runs at batch 2 and 3 with 2×2 pixels or more per image
        // at the end, the per-sample norms at batch 1 too.
        let shapes: &[(usize, usize)] = if name.ends_with("_bn") {
            &[(3, 49), (2, 64)]
        } else {
            &[(3, 49), (1, 64), (2, 64)]
        };
        for (i, &shape) in shapes.iter().enumerate() {
            let a = step_and_predict(&mut fused, &cfg, &mut ra, shape, i as u64);
            let b = step_and_predict(&mut own, &cfg, &mut rb, shape, i as u64);
            let what = format!("{name} step {i} {shape:?}");
            let (la, lb) = (f32::from_bits(a.0), f32::from_bits(b.0));
            assert!(
                (la - lb).abs() <= 1e-5 * lb.abs(),
                "{what}: loss {la} vs {lb}"
            );
            // Relative to each tensor's norm, with a floor for the gradients that
            // vanish but for rounding (a norm's shift feeding only a linear map into
            // a BatchNorm, which removes it): a millionth of the largest gradient.
            let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            let largest = b.1.iter().map(|g| norm(g)).fold(0.0, f64::max);
            for (k, (ga, gb)) in a.1.iter().zip(&b.1).enumerate() {
                let diff: Vec<f32> = ga.iter().zip(gb).map(|(x, y)| x - y).collect();
                let (d, allowed) = (norm(&diff), 1e-4 * norm(gb) + 1e-6 * largest);
                let p = &fused.params().infos()[k].name;
                assert!(
                    d <= allowed,
                    "{what}: gradient of {p}: error {d:e} > {allowed:e}"
                );
            }
            // Parameters are of order one, but a running mean of an input that a
            // BatchNorm just centred is rounding noise: a floor of 1e-6 in RMS.
            for (k, (va, vb)) in a.2.iter().zip(&b.2).enumerate() {
                let diff: Vec<f32> = va.iter().zip(vb).map(|(x, y)| x - y).collect();
                let floor = 1e-6 * (vb.len() as f64).sqrt();
                let (d, allowed) = (norm(&diff), 1e-5 * norm(vb) + floor);
                let p = &fused.params().infos()[k].name;
                assert!(d <= allowed, "{what}: {p}: error {d:e} > {allowed:e}");
            }
            let e = rel_err(&a.3, &to64(&b.3));
            assert!(e < 1e-5, "{what}: logits relative error {e:e}");
            bitwise &= a.1 == b.1;
        }
        assert!(
            !bitwise,
            "{name}: the fused statistics changed no bit: not used?"
        );
    }
}

/// Loss bits, gradients, parameter values (with running statistics) and logits.
type StepResult = (u32, Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<f32>);

/// A training step and a prediction of `net` at `(n, res)`, recycling the tape.
fn step_and_predict(
    net: &mut Network,
    cfg: &ArchConfig,
    rng: &mut Rng,
    (n, res): (usize, usize),
    seed: u64,
) -> StepResult {
    let x = rng.vec(n * res * res * 3);
    let labels: Vec<usize> = (0..n).map(|i| (i * 3 + seed as usize) % 8).collect();
    let (loss, tape) = net
        .loss_and_grad(
            &x,
            n,
            res,
            Targets::Labels(&labels),
            0.1,
            &Pass::train(cfg, seed),
        )
        .unwrap();
    net.recycle(tape);
    let logits = net.predict(&x, n, res).unwrap();
    (
        loss.to_bits(),
        net.params().grads.clone(),
        net.params().values.clone(),
        logits,
    )
}

#[test]
fn reused_buffers_give_the_same_results_as_fresh_ones() {
    // Changing batch sizes and resolutions, so buffers of one shape are reused for
    // another; BatchNorm also checks the running statistics.
    let shapes = [
        (2, 32),
        (3, 64),
        (2, 32),
        (1, 48),
        (3, 64),
        (2, 32),
        (2, 32),
    ];
    for name in ["tiny_g16_lnpn", "tiny_g1_bn", "tiny_g16_gn"] {
        let cfg = tiny(name);
        let mut reused = Network::new(&cfg, 3).unwrap();
        let mut fresh = reused.clone();
        fresh.set_buffer_reuse(false);
        let (mut ra, mut rb) = (Rng::new(9), Rng::new(9));
        let mut held = Vec::new();
        for (i, &shape) in shapes.iter().enumerate() {
            let a = step_and_predict(&mut reused, &cfg, &mut ra, shape, i as u64);
            let b = step_and_predict(&mut fresh, &cfg, &mut rb, shape, i as u64);
            assert_eq!(a.0, b.0, "{name} step {i}: loss");
            assert!(a.1 == b.1, "{name} step {i}: gradients");
            assert!(a.2 == b.2, "{name} step {i}: parameters");
            assert_eq!(a.3, b.3, "{name} step {i}: logits");
            held.push(reused.cached_bytes());
        }
        assert_eq!(fresh.cached_bytes(), 0);
        // A step of a shape seen before allocates nothing new.
        assert!(held[6] == held[5] && held[5] > 0, "{name}: {held:?}");
    }
}

#[test]
fn head_only_backward_writes_exactly_the_head_gradients() {
    let cfg = tiny("tiny_g16_lnpn");
    let mut rng = Rng::new(5);
    let x = rng.vec(BATCH * RES * RES * 3);
    let labels = [3, 6];
    let mut full = Network::new(&cfg, 2).unwrap();
    let mut head = full.clone();
    let pass = Pass::train(&cfg, 4);
    let (l1, _) = full
        .loss_and_grad(&x, BATCH, RES, Targets::Labels(&labels), 0.1, &pass)
        .unwrap();
    let sentinel = 7.25f32;
    for g in head.params_mut().grads.iter_mut() {
        g.fill(sentinel);
    }
    let (l2, _) = head
        .loss_and_grad(
            &x,
            BATCH,
            RES,
            Targets::Labels(&labels),
            0.1,
            &Pass {
                head_only: true,
                ..pass
            },
        )
        .unwrap();
    assert_eq!(l1.to_bits(), l2.to_bits());
    let infos = full.params().infos().to_vec();
    let mut heads = 0;
    for (i, p) in infos.iter().enumerate() {
        let is_head = ["conv_head.", "bn2.", "classifier."]
            .iter()
            .any(|h| p.name.starts_with(h));
        let (a, b) = (&full.params().grads[i], &head.params().grads[i]);
        if is_head {
            heads += 1;
            if p.kind.trainable() {
                assert!(a == b, "{}: head gradient differs", p.name);
            }
        } else {
            assert!(b.iter().all(|&v| v == sentinel), "{} was written", p.name);
        }
    }
    assert!(heads >= 4);
}

#[test]
fn bad_input_is_an_error() {
    let cfg = tiny("tiny_g1_gn");
    let mut net = Network::new(&cfg, 0).unwrap();
    assert!(net.predict(&[0.0; 10], 1, RES).is_err());
    assert!(net.predict(&[], 0, RES).is_err());
    assert!(net.predict(&[0.0; 4 * 4 * 3], 1, 4).is_err());
    let x = vec![0.0f32; RES * RES * 3];
    let t = net.predict(&x, 1, RES);
    assert!(t.is_ok());
    // Labels out of range.
    assert!(
        net.loss_and_grad(
            &x,
            1,
            RES,
            Targets::Labels(&[9]),
            0.0,
            &Pass::deterministic_train()
        )
        .is_err()
    );
    // Backward needs a training tape of the right size.
    let tape = net
        .forward(&x, 1, RES, &Pass::deterministic_train())
        .unwrap();
    assert!(net.backward(&tape, &[0.0; 3]).is_err());
}

/// Class counts, batches and resolutions that cannot be had are typed errors, never
/// an abort or a panic: a classifier beyond memory addressing is `Overflow`, one the
/// system refuses is `OutOfMemory`; an image batch whose size wraps is `Overflow`.
#[test]
fn huge_classes_batches_and_resolutions_are_typed_errors() {
    use effnet::Error;
    let base = ArchConfig::from_name("tiny_g16_lnpn").unwrap();
    match Network::new(&base.clone().with_classes(1 << 40), 0) {
        Err(Error::OutOfMemory(m)) => assert!(m.contains("classifier"), "{m}"),
        other => panic!("2^40 classes: {:?}", other.map(|n| n.classes())),
    }
    for classes in [1usize << 62, usize::MAX] {
        assert!(
            matches!(
                Network::new(&base.clone().with_classes(classes), 0),
                Err(Error::Overflow(_))
            ),
            "{classes} classes"
        );
    }
    let net = Network::new(&base.with_classes(3), 0).unwrap();
    let x = vec![0.0f32; 12];
    for (batch, res) in [
        (1usize << 62, 1usize << 40),
        (1, usize::MAX),
        (usize::MAX, 64),
    ] {
        assert!(
            matches!(net.predict(&x, batch, res), Err(Error::Overflow(_))),
            "batch {batch}, res {res}"
        );
    }
    assert!(matches!(
        net.predict(&x, 1, 32),
        Err(Error::BufferSize { name: "images", .. })
    ));
}
