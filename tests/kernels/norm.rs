//! Oracle tests for BatchNorm, GroupNorm (contiguous and strided) and LayerNorm with
//! fused activations: the fast kernels against the plain f64 reference on random
//! shapes at every SIMD level; the reference backward against finite differences;
//! large-mean data; BatchNorm's running statistics and inference; bitwise determinism
//! across thread counts; typed errors.

use crate::common::{Rng, abs_err, in_pool, levels, norm2, rel_err, to64};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::GradMode;
use effnet::kernels::norm::{
    Affine, AffineGrads, Grouping, Norm, NormDesc, NormKind, NormPass, NormStats, RunningStats,
    reference,
};
use effnet::simd::with_level;

const ACTS: [Activation; 4] = [
    Activation::Identity,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Swish,
];

struct Case {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dy: Vec<f32>,
}

fn case(d: &NormDesc, seed: u64, offset: f32) -> Case {
    let mut r = Rng::new(seed);
    let n = d.batch * d.h * d.w * d.channels;
    Case {
        x: r.vec(n).iter().map(|v| v * 2.0 + offset).collect(),
        gamma: r.vec(d.channels).iter().map(|v| 1.0 + 0.5 * v).collect(),
        beta: r.vec(d.channels),
        dy: r.vec(n),
    }
}

/// Runs forward and backward at the current level; returns (y, stats, dx, dγ, dβ).
fn run(
    norm: &Norm,
    c: &Case,
    use_g: bool,
    use_b: bool,
) -> (Vec<f32>, NormStats, Vec<f32>, Vec<f32>, Vec<f32>) {
    let affine = Affine {
        gamma: use_g.then_some(&c.gamma[..]),
        beta: use_b.then_some(&c.beta[..]),
    };
    let mut y = vec![0.0; norm.x_len()];
    let mut stats = norm.new_stats();
    norm.forward(&c.x, affine, &mut y, &mut stats).unwrap();
    let mut dx = vec![0.0; norm.x_len()];
    let ch = norm.desc().channels;
    let mut dg = vec![7.0; ch];
    let mut db = vec![7.0; ch];
    let grads = AffineGrads {
        dgamma: Some(&mut dg),
        dbeta: Some(&mut db),
        mode: GradMode::Overwrite,
    };
    norm.backward(&c.x, &c.dy, affine, &stats, &mut dx, grads)
        .unwrap();
    (y, stats, dx, dg, db)
}

fn check(d: &NormDesc, seed: u64, use_g: bool, use_b: bool) {
    let c = case(d, seed, 0.3);
    let norm = Norm::new(d).unwrap();
    let g64 = to64(&c.gamma);
    let b64 = to64(&c.beta);
    let (g, b) = (use_g.then_some(&g64[..]), use_b.then_some(&b64[..]));
    let x64 = to64(&c.x);
    let want = reference::forward(d, &x64, g, b);
    let (dx_ref, dg_ref, db_ref) = reference::backward(d, &x64, &to64(&c.dy), g, b);
    let lead: Vec<f64> = {
        let rstd: Vec<f64> = want
            .var
            .iter()
            .map(|v| 1.0 / (v + d.eps as f64).sqrt())
            .collect();
        let (hw, ch) = (d.h * d.w, d.channels);
        let r_of = |n: usize, c: usize| match d.kind {
            NormKind::BatchNorm => rstd[c],
            NormKind::LayerNorm => rstd[n],
            NormKind::GroupNorm { groups, grouping } => {
                rstd[n * groups
                    + match grouping {
                        Grouping::Contiguous => c / (ch / groups),
                        Grouping::Strided => c % groups,
                    }]
            }
        };
        (0..c.x.len())
            .map(|i| {
                let (n, cc) = (i / (hw * ch), i % ch);
                r_of(n, cc) * g.map_or(1.0, |g| g[cc]) * c.dy[i] as f64
            })
            .collect()
    };
    for level in levels() {
        let norm = norm.clone().with_level(level);
        with_level(level, || {
            let (y, stats, dx, dg, db) = run(&norm, &c, use_g, use_b);
            let ctx = format!("{level} {d:?} γ {use_g} β {use_b}");
            assert!(
                rel_err(&y, &want.y) < 2e-6,
                "{ctx}: y {}",
                rel_err(&y, &want.y)
            );
            assert!(rel_err(&stats.mean, &want.mean) < 1e-6, "{ctx}: mean");
            assert!(rel_err(&stats.var, &want.var) < 1e-5, "{ctx}: var");
            let rstd: Vec<f64> = want
                .var
                .iter()
                .map(|v| 1.0 / (v + d.eps as f64).sqrt())
                .collect();
            assert!(rel_err(&stats.rstd, &rstd) < 1e-5, "{ctx}: rstd");
            // dx = r·(γ·du − means) cancels to 0 for one-element sets: measure the error
            // against the size of the leading term r·γ·dy.
            let err = abs_err(&dx, &dx_ref) / norm2(&dx_ref).max(norm2(&lead));
            assert!(err < 2e-5, "{ctx}: dx {err}");
            assert!(
                rel_err(&dg, &dg_ref) < 1e-5,
                "{ctx}: dγ {}",
                rel_err(&dg, &dg_ref)
            );
            assert!(
                rel_err(&db, &db_ref) < 1e-5,
                "{ctx}: dβ {}",
                rel_err(&db, &db_ref)
            );
        });
    }
}

/// A random valid descriptor: odd and even sizes, channels around the SIMD widths.
fn random_desc(r: &mut Rng) -> NormDesc {
    let pick = |r: &mut Rng, v: &[usize]| v[(r.next_u64() % v.len() as u64) as usize];
    let batch = pick(r, &[1, 1, 2, 3]);
    let h = pick(r, &[1, 2, 3, 5, 7, 9]);
    let w = pick(r, &[1, 3, 4, 6, 11]);
    let c = pick(r, &[1, 3, 8, 15, 16, 17, 24, 32, 33, 40, 48]);
    let act = ACTS[(r.next_u64() % 4) as usize];
    let kind = match r.next_u64() % 4 {
        0 => NormKind::BatchNorm,
        1 => NormKind::LayerNorm,
        k => {
            let divisors: Vec<usize> = (1..=c).filter(|g| c % g == 0).collect();
            NormKind::GroupNorm {
                groups: pick(r, &divisors),
                grouping: if k == 2 {
                    Grouping::Contiguous
                } else {
                    Grouping::Strided
                },
            }
        }
    };
    NormDesc {
        kind,
        batch,
        h,
        w,
        channels: c,
        eps: [1e-3, 1e-5][(r.next_u64() % 2) as usize],
        activation: act,
    }
}

#[test]
fn random_shapes_match_reference() {
    let mut r = Rng::new(11);
    for i in 0..60 {
        let d = random_desc(&mut r);
        check(&d, 100 + i, i % 3 != 1, i % 3 != 2);
    }
}

#[test]
fn fixed_shapes_match_reference() {
    let shapes = [
        NormDesc::batch_norm(2, (7, 5), 33).with_activation(Activation::Swish),
        NormDesc::group_norm(3, (5, 3), 48, 4).with_activation(Activation::Swish),
        NormDesc::group_norm(2, (3, 7), 48, 3)
            .with_grouping(Grouping::Strided)
            .with_activation(Activation::Relu),
        NormDesc::layer_norm(2, (9, 9), 17).with_activation(Activation::Sigmoid),
        NormDesc::layer_norm(1, (1, 1), 1),
        NormDesc::batch_norm(1, (1, 1), 5),
        // Several chunks per sample (16384-element chunks) and a short last chunk.
        NormDesc::group_norm(2, (23, 31), 24, 8).with_activation(Activation::Swish),
        NormDesc::batch_norm(2, (29, 19), 40).with_activation(Activation::Swish),
    ];
    for (i, d) in shapes.iter().enumerate() {
        check(d, 7 + i as u64, true, true);
    }
}

/// Data with a mean 1000× its spread: shifted sums keep the variance accurate.
#[test]
fn large_mean_keeps_the_variance() {
    for d in [
        NormDesc::batch_norm(2, (16, 13), 19),
        NormDesc::layer_norm(2, (31, 17), 24),
        NormDesc::group_norm(2, (9, 9), 32, 4).with_grouping(Grouping::Strided),
    ] {
        let mut r = Rng::new(3);
        let n = d.batch * d.h * d.w * d.channels;
        let x: Vec<f32> = r.vec(n).iter().map(|v| 1000.0 + v).collect();
        let want = reference::forward(&d, &to64(&x), None, None);
        let norm = Norm::new(&d).unwrap();
        for level in levels() {
            let norm = norm.clone().with_level(level);
            with_level(level, || {
                let mut y = vec![0.0; n];
                let mut stats = norm.new_stats();
                norm.forward(&x, Affine::NONE, &mut y, &mut stats).unwrap();
                assert!(rel_err(&stats.var, &want.var) < 1e-5, "{level} {d:?} var");
                // ulp(1000) / σ bounds how well an f32 mean can center the data.
                assert!(
                    rel_err(&y, &want.y) < 1e-4,
                    "{level} {d:?} y {}",
                    rel_err(&y, &want.y)
                );
            });
        }
    }
}

/// Central differences (f64) of L = ⟨dy, y⟩ against the reference backward, on tiny
/// shapes; the fast backward is compared with the reference elsewhere.
#[test]
#[allow(clippy::needless_range_loop)]
fn reference_backward_matches_finite_differences() {
    let tiny = [
        NormDesc::batch_norm(2, (2, 3), 3).with_activation(Activation::Swish),
        NormDesc::group_norm(2, (3, 2), 4, 2).with_activation(Activation::Sigmoid),
        NormDesc::group_norm(1, (2, 2), 6, 3)
            .with_grouping(Grouping::Strided)
            .with_activation(Activation::Swish),
        NormDesc::layer_norm(2, (2, 3), 3).with_activation(Activation::Relu),
        NormDesc::layer_norm(1, (3, 1), 2),
    ];
    for (i, d) in tiny.iter().enumerate() {
        let c = case(d, 40 + i as u64, 0.0);
        let (x, dy, g, b) = (to64(&c.x), to64(&c.dy), to64(&c.gamma), to64(&c.beta));
        let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
            let y = reference::forward(d, x, Some(g), Some(b)).y;
            y.iter().zip(&dy).map(|(a, b)| a * b).sum()
        };
        let (dx, dg, db) = reference::backward(d, &x, &dy, Some(&g), Some(&b));
        let h = 1e-6;
        let fd = |v: &[f64], j: usize, f: &dyn Fn(&[f64]) -> f64| {
            let mut p = v.to_vec();
            p[j] += h;
            let up = f(&p);
            p[j] -= 2.0 * h;
            (up - f(&p)) / (2.0 * h)
        };
        for j in 0..x.len() {
            let want = fd(&x, j, &|x| loss(x, &g, &b));
            assert!(
                (want - dx[j]).abs() < 1e-6,
                "{d:?} dx[{j}] {want} vs {}",
                dx[j]
            );
        }
        for j in 0..g.len() {
            let want = fd(&g, j, &|g| loss(&x, g, &b));
            assert!((want - dg[j]).abs() < 1e-6, "{d:?} dγ[{j}]");
            let want = fd(&b, j, &|b| loss(&x, &g, b));
            assert!((want - db[j]).abs() < 1e-6, "{d:?} dβ[{j}]");
        }
    }
}

/// Also covers both forward paths of the per-sample norms: one sample per thread (1
/// and 2 threads at batch 3 and 4) and samples split over the threads (8 threads, or
/// batch 1).
#[test]
fn results_do_not_depend_on_thread_count() {
    for d in [
        NormDesc::batch_norm(3, (33, 31), 24).with_activation(Activation::Swish),
        NormDesc::group_norm(3, (33, 31), 24, 4).with_activation(Activation::Swish),
        NormDesc::layer_norm(4, (20, 21), 40).with_activation(Activation::Relu),
        NormDesc::layer_norm(1, (40, 40), 16),
    ] {
        let c = case(&d, 5, 0.5);
        let norm = Norm::new(&d).unwrap();
        for level in levels() {
            let norm = norm.clone().with_level(level);
            let results: Vec<_> = [1, 2, 8]
                .into_iter()
                .map(|t| in_pool(t, || with_level(level, || run(&norm, &c, true, true))))
                .collect();
            for r in &results[1..] {
                assert!(
                    r == &results[0],
                    "{level} {d:?}: results differ across thread counts"
                );
            }
        }
    }
}

#[test]
fn accumulate_adds_to_the_gradients() {
    let d = NormDesc::group_norm(2, (3, 5), 8, 2).with_activation(Activation::Swish);
    let c = case(&d, 9, 0.0);
    let norm = Norm::new(&d).unwrap();
    let (_, stats, _, dg, db) = run(&norm, &c, true, true);
    let mut dg2 = vec![1.0; 8];
    let mut db2 = vec![2.0; 8];
    let mut dx = vec![0.0; norm.x_len()];
    let grads = AffineGrads {
        dgamma: Some(&mut dg2),
        dbeta: Some(&mut db2),
        mode: GradMode::Accumulate,
    };
    let affine = Affine::new(&c.gamma, &c.beta);
    norm.backward(&c.x, &c.dy, affine, &stats, &mut dx, grads)
        .unwrap();
    for i in 0..8 {
        assert!((dg2[i] - 1.0 - dg[i]).abs() < 1e-5 && (db2[i] - 2.0 - db[i]).abs() < 1e-5);
    }
}

#[test]
fn batch_norm_running_statistics_and_inference() {
    let d = NormDesc::batch_norm(3, (5, 7), 21).with_activation(Activation::Swish);
    let c = case(&d, 21, 1.5);
    let norm = Norm::new(&d).unwrap();
    let mut y = vec![0.0; norm.x_len()];
    let mut stats = norm.new_stats();
    let affine = Affine::new(&c.gamma, &c.beta);
    norm.forward(&c.x, affine, &mut y, &mut stats).unwrap();
    let mut running = RunningStats::new(21);
    norm.update_running(&stats, &mut running, 0.1).unwrap();
    let (mean, var) = reference::statistics(&d, &to64(&c.x));
    let m = (3 * 5 * 7) as f64;
    for ch in 0..21 {
        let rm = 0.1 * mean[ch];
        let rv = 0.9 + 0.1 * var[ch] * m / (m - 1.0);
        assert!((running.mean[ch] as f64 - rm).abs() < 1e-6);
        assert!((running.var[ch] as f64 - rv).abs() < 1e-6);
    }
    let want = reference::apply(
        &d,
        &to64(&c.x),
        &to64(&running.mean),
        &to64(&running.var),
        Some(&to64(&c.gamma)),
        Some(&to64(&c.beta)),
    );
    for level in levels() {
        let norm = norm.clone().with_level(level);
        with_level(level, || {
            let mut yi = vec![0.0; norm.x_len()];
            norm.forward_infer(&c.x, affine, Some(&running), &mut yi)
                .unwrap();
            assert!(rel_err(&yi, &want) < 2e-6, "{level}: inference");
        });
    }
    // GroupNorm inference is its training forward.
    let gd = NormDesc::group_norm(2, (3, 3), 8, 2);
    let gn = Norm::new(&gd).unwrap();
    let x: Vec<f32> = Rng::new(4).vec(gn.x_len());
    let mut y1 = vec![0.0; gn.x_len()];
    let mut y2 = vec![0.0; gn.x_len()];
    let mut s = gn.new_stats();
    gn.forward(&x, Affine::NONE, &mut y1, &mut s).unwrap();
    gn.forward_infer(&x, Affine::NONE, None, &mut y2).unwrap();
    assert_eq!(y1, y2);
}

/// LayerNorm's output for one sample ignores the other samples; BatchNorm's does not.
#[test]
fn batch_dependence() {
    for (d, depends) in [
        (NormDesc::layer_norm(3, (4, 5), 12), false),
        (NormDesc::group_norm(3, (4, 5), 12, 3), false),
        (NormDesc::batch_norm(3, (4, 5), 12), true),
    ] {
        let norm = Norm::new(&d).unwrap();
        let per = norm.x_len() / 3;
        let mut x = Rng::new(8).vec(norm.x_len());
        let out = |x: &[f32]| {
            let mut y = vec![0.0; norm.x_len()];
            let mut s = norm.new_stats();
            norm.forward(x, Affine::NONE, &mut y, &mut s).unwrap();
            y
        };
        let y1 = out(&x);
        for v in &mut x[per..] {
            *v = *v * 3.0 + 2.0;
        }
        let y2 = out(&x);
        assert_eq!(y1[..per] != y2[..per], depends, "{d:?}");
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let invalid = |d: NormDesc| matches!(Norm::new(&d), Err(Error::InvalidDescriptor(_)));
    assert!(invalid(NormDesc::group_norm(1, (2, 2), 8, 0)));
    assert!(invalid(NormDesc::group_norm(1, (2, 2), 8, 3)));
    assert!(invalid(NormDesc::layer_norm(0, (2, 2), 8)));
    assert!(invalid(NormDesc::batch_norm(1, (0, 2), 8)));
    assert!(invalid(NormDesc::batch_norm(1, (2, 2), 0)));
    assert!(invalid(NormDesc::layer_norm(1, (2, 2), 8).with_eps(0.0)));
    assert!(invalid(
        NormDesc::layer_norm(1, (2, 2), 8).with_eps(f32::NAN)
    ));
    assert!(matches!(
        Norm::new(&NormDesc::layer_norm(usize::MAX / 2, (4, 4), 8)),
        Err(Error::Overflow(_))
    ));

    let norm = Norm::new(&NormDesc::group_norm(2, (3, 3), 8, 2)).unwrap();
    let n = norm.x_len();
    let x = vec![0.0f32; n];
    let mut y = vec![0.0f32; n];
    let mut s = norm.new_stats();
    let size = |r: effnet::Result<()>, which: &str| {
        assert!(
            matches!(r, Err(Error::BufferSize { name, .. }) if name == which),
            "{which}: {r:?}"
        )
    };
    size(norm.forward(&x[1..], Affine::NONE, &mut y, &mut s), "x");
    size(norm.forward(&x, Affine::NONE, &mut y[1..], &mut s), "y");
    let short = [1.0f32; 7];
    let ok = [1.0f32; 8];
    size(
        norm.forward(&x, Affine::new(&short, &ok), &mut y, &mut s),
        "gamma",
    );
    size(
        norm.forward(&x, Affine::new(&ok, &short), &mut y, &mut s),
        "beta",
    );
    let mut bad_stats = norm.new_stats();
    bad_stats.rstd.pop();
    size(
        norm.forward(&x, Affine::NONE, &mut y, &mut bad_stats),
        "stats.rstd",
    );
    norm.forward(&x, Affine::NONE, &mut y, &mut s).unwrap();
    let mut dx = vec![0.0f32; n];
    let mut dg = vec![0.0f32; 7];
    let g = AffineGrads {
        dgamma: Some(&mut dg),
        dbeta: None,
        mode: GradMode::Overwrite,
    };
    size(
        norm.backward(&x, &y, Affine::NONE, &s, &mut dx, g),
        "dgamma",
    );
    size(
        norm.backward(
            &x,
            &y[1..],
            Affine::NONE,
            &s,
            &mut dx,
            AffineGrads::default(),
        ),
        "dy",
    );
    // Running statistics are BatchNorm's only; BatchNorm inference needs them.
    let mut running = RunningStats::new(8);
    assert!(matches!(
        norm.update_running(&s, &mut running, 0.1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        norm.forward_infer(&x, Affine::NONE, Some(&running), &mut y),
        Err(Error::InvalidArgument(_))
    ));
    let bn = Norm::new(&NormDesc::batch_norm(2, (3, 3), 8)).unwrap();
    assert!(matches!(
        bn.forward_infer(&x, Affine::NONE, None, &mut y),
        Err(Error::InvalidArgument(_))
    ));
    let mut bs = bn.new_stats();
    bn.forward(&x, Affine::NONE, &mut y, &mut bs).unwrap();
    assert!(matches!(
        bn.update_running(&bs, &mut running, 1.5),
        Err(Error::InvalidArgument(_))
    ));
    let one = Norm::new(&NormDesc::batch_norm(1, (1, 1), 8)).unwrap();
    let mut os = one.new_stats();
    one.forward(&x[..8], Affine::NONE, &mut y[..8], &mut os)
        .unwrap();
    assert!(one.update_running(&os, &mut running, 0.1).is_err());
}

/// The apply pass on saved statistics (the backward pass's recompute) gives the
/// forward pass's `y` bit for bit: every kind and grouping, with and without the
/// affine parameters, every activation, at every level; a pass on other statistics
/// gives another `y`, and short statistics are an error.
#[test]
fn forward_from_stats_recomputes_the_forward_bits() {
    let mut r = Rng::new(23);
    for i in 0..40 {
        let d = random_desc(&mut r);
        let c = case(&d, 300 + i, 0.7);
        for level in levels() {
            with_level(level, || {
                let norm = Norm::new(&d).unwrap();
                let affine = Affine {
                    gamma: (i % 3 != 1).then_some(&c.gamma[..]),
                    beta: (i % 3 != 2).then_some(&c.beta[..]),
                };
                let mut y = vec![0.0; norm.x_len()];
                let mut stats = norm.new_stats();
                norm.forward(&c.x, affine, &mut y, &mut stats).unwrap();
                let mut again = vec![f32::NAN; norm.x_len()];
                norm.forward_from_stats(&c.x, affine, &stats, &mut again)
                    .unwrap();
                assert!(
                    y.iter()
                        .zip(&again)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{level} {d:?}: recompute differs from the forward pass"
                );
                let mut shifted = stats.clone();
                shifted.mean.iter_mut().for_each(|m| *m += 0.5);
                norm.forward_from_stats(&c.x, affine, &shifted, &mut again)
                    .unwrap();
                assert!(y != again, "{level} {d:?}: the statistics are not used");
                let short = NormStats {
                    mean: vec![0.0; stats.mean.len() - 1],
                    ..stats.clone()
                };
                assert!(matches!(
                    norm.forward_from_stats(&c.x, affine, &short, &mut again),
                    Err(Error::BufferSize { .. })
                ));
            });
        }
    }
}

/// Sizes a caller may ask for that cannot be had are typed errors, never an abort or a
/// panic: a tensor beyond memory addressing is `Overflow`; a plan keeps no per-channel
/// table, so any addressable channel count is a plan with exact sizes, made at once;
/// workspace sizes saturate rather than wrap.
#[test]
fn huge_sizes_are_typed_errors() {
    let huge = 1usize << 45;
    for d in [
        NormDesc::layer_norm(1, (1, 1), huge),
        NormDesc::group_norm(1, (1, 1), huge, huge),
        NormDesc::group_norm(1, (1, 1), huge, 1 << 20).with_grouping(Grouping::Strided),
        NormDesc::batch_norm(1, (1, 1), huge),
    ] {
        let n = Norm::new(&d).unwrap_or_else(|e| panic!("{d:?}: {e:?}"));
        assert_eq!(n.x_len(), huge, "{d:?}");
    }
    // The computed channel-to-group map: contiguous and strided, first and last channel.
    let g = Norm::new(&NormDesc::group_norm(1, (1, 1), huge, 1 << 20)).unwrap();
    assert_eq!((g.group_of(0), g.group_of(huge - 1)), (0, (1 << 20) - 1));
    let s =
        Norm::new(&NormDesc::group_norm(1, (1, 1), huge, 1 << 20).with_grouping(Grouping::Strided))
            .unwrap();
    assert_eq!(
        (s.group_of(1 << 20), s.group_of(huge - 1)),
        (0, (1 << 20) - 1)
    );
    let bn = Norm::new(&NormDesc::batch_norm(1, (1, 1), huge)).unwrap();
    assert_eq!((bn.x_len(), bn.sets()), (huge, huge));
    // batch·h·w·channels beyond addressing (or wrapping usize) is Overflow.
    for d in [
        NormDesc::layer_norm(1 << 30, (1, 1), 1 << 40),
        NormDesc::layer_norm(usize::MAX, (usize::MAX, 1), 3),
        NormDesc::batch_norm(1, (1, 1), isize::MAX as usize / 2),
    ] {
        assert!(
            matches!(Norm::new(&d), Err(Error::Overflow(_))),
            "{d:?}: {:?}",
            Norm::new(&d)
        );
    }
    // The largest addressable BatchNorm: every workspace size is at least the
    // per-channel state (no wrap to a small number), saturating where it must.
    let c = isize::MAX as usize / 4;
    let bn = Norm::new(&NormDesc::batch_norm(1, (1, 1), c)).unwrap();
    for pass in [
        NormPass::Forward,
        NormPass::ForwardInfer,
        NormPass::Backward,
    ] {
        assert!(bn.workspace_len(pass) >= 2 * c, "{pass:?}");
    }
}
