//! Oracle tests for every convolution family and pass: the fast kernels against the
//! plain f64 reference on random descriptors, at every SIMD level; adjoint identities;
//! finite differences; bitwise determinism across thread counts; typed errors.

use crate::common::conv::{ConvCase, Passes, fixed_shapes};
use crate::common::{dot, in_pool, levels, proptest_cases, rel_err};
use effnet::Error;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvFamily, GradMode, Padding};
use effnet::simd::with_level;
use proptest::prelude::*;

const TOL: f64 = 2e-5;

/// Picks a padding side in `0..span` (the validator rejects a full span).
fn pad_side(span: usize) -> impl Strategy<Value = usize> {
    0..span.max(1)
}

fn padding(kh: usize, kw: usize, dil: usize) -> impl Strategy<Value = Padding> {
    let sh = dil * (kh - 1) + 1;
    let sw = dil * (kw - 1) + 1;
    (pad_side(sh), pad_side(sh), pad_side(sw), pad_side(sw)).prop_map(
        |(top, bottom, left, right)| Padding {
            top,
            bottom,
            left,
            right,
        },
    )
}

/// Random descriptors of one family class; invalid combinations are filtered out.
fn desc(class: &'static str) -> impl Strategy<Value = ConvDesc> {
    let kernel = match class {
        "pointwise" => Just(1usize).boxed(),
        "stem" => Just(3usize).boxed(),
        _ => prop_oneof![Just(1usize), Just(3), Just(5), Just(7), Just(2)].boxed(),
    };
    let dil = prop_oneof![8 => Just(1usize), 1 => Just(2usize)];
    (
        kernel,
        dil,
        1usize..=2,
        1usize..=3,
        1usize..=13,
        1usize..=13,
        any::<u64>(),
    )
        .prop_flat_map(move |(k, dil, stride, batch, h, w, seed)| {
            let dil = if class == "pointwise" { 1 } else { dil };
            let kw = if seed % 5 == 0 && class == "grouped" {
                1.max(k.saturating_sub(2))
            } else {
                k
            };
            let pad = if class == "pointwise" {
                Just(Padding::ZERO).boxed()
            } else {
                padding(k, kw, dil).boxed()
            };
            (Just((k, kw, dil, stride, batch, h, w, seed)), pad)
        })
        .prop_map(move |((k, kw, dil, stride, batch, h, w, seed), pad)| {
            let pick = |opts: &[usize], salt: u64| opts[((seed >> salt) as usize) % opts.len()];
            let (cin, cout, gs) = match class {
                "depthwise" => {
                    let c = pick(&[1, 3, 7, 8, 16, 17, 24, 33, 40], 3);
                    (c, c, 1)
                }
                "pointwise" => (
                    pick(&[1, 3, 8, 16, 19, 32, 40], 7),
                    pick(&[1, 5, 8, 16, 24, 33, 48], 11),
                    0,
                ),
                "stem" => (3, pick(&[8, 16, 32, 5], 13), 3),
                _ => {
                    let gs = pick(&[2, 3, 8, 16, 32, 16, 5, 4], 17);
                    let groups = pick(&[1, 2, 3], 21);
                    let mult = pick(&[1, 1, 2, 3], 25);
                    let cout_per_group = if seed % 7 == 0 {
                        gs / 2 + 1
                    } else {
                        gs * mult / if seed % 3 == 0 { gs.min(2) } else { 1 }
                    };
                    (gs * groups, cout_per_group.max(1) * groups, gs)
                }
            };
            let gs = if gs == 0 { cin } else { gs };
            ConvDesc::new(batch, (h, w), cin, cout, (k, kw))
                .with_group_size(gs)
                .with_stride(stride)
                .with_dilation(dil)
                .with_padding(pad)
        })
        .prop_filter("valid descriptor", |d| d.validate().is_ok())
}

/// Every pass at every level against the reference.
fn check_against_reference(d: &ConvDesc, seed: u64) -> Result<(), TestCaseError> {
    let c = ConvCase::new(d, seed);
    let refs = c.references();
    for level in levels() {
        let conv = Conv2d::with_level(d, level).unwrap();
        let o = with_level(level, || c.run(&Passes::Plan(&conv)));
        for (name, e) in o.errors(&refs, rel_err) {
            prop_assert!(e < TOL, "{level} {name} {d:?}: rel err {e}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(48), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn depthwise_matches_reference(d in desc("depthwise"), seed in any::<u64>()) {
        prop_assert_eq!(d.validate().unwrap().family(), ConvFamily::Depthwise);
        check_against_reference(&d, seed)?;
    }

    #[test]
    fn grouped_matches_reference(d in desc("grouped"), seed in any::<u64>()) {
        check_against_reference(&d, seed)?;
    }

    #[test]
    fn pointwise_matches_reference(d in desc("pointwise"), seed in any::<u64>()) {
        // One channel in and out is also depthwise, and the plan routes it there.
        prop_assume!(d.in_channels > 1 || d.out_channels > 1);
        prop_assert_eq!(d.validate().unwrap().family(), ConvFamily::Pointwise);
        check_against_reference(&d, seed)?;
    }

    #[test]
    fn stem_matches_reference(d in desc("stem"), seed in any::<u64>()) {
        check_against_reference(&d, seed)?;
    }
}

#[test]
fn fixed_shapes_match_reference() {
    for (i, d) in fixed_shapes().iter().enumerate() {
        check_against_reference(d, 1000 + i as u64).unwrap();
    }
}

/// ⟨dy, conv(x)⟩ = ⟨convᵀ(dy), x⟩ = ⟨dw(x, dy), w⟩ with the fast kernels alone.
#[test]
fn adjoint_identities_hold() {
    for (i, d) in fixed_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 77 + i as u64);
        let s = c.shape;
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap();
            assert_eq!(conv.level(), level);
            with_level(level, || {
                let mut y = vec![0.0; s.y_len];
                conv.forward(&c.x, &c.w, None, &mut y).unwrap();
                let mut dx = vec![0.0; s.x_len];
                conv.backward_data(&c.dy, &c.w, &mut dx).unwrap();
                let mut dw = vec![0.0; s.w_len];
                conv.backward_weight(&c.x, &c.dy, &mut dw, None, GradMode::Overwrite)
                    .unwrap();
                let lhs = dot(&c.dy, &y);
                let scale = c.dy.len() as f64;
                assert!(
                    (lhs - dot(&dx, &c.x)).abs() < 1e-4 * scale,
                    "{level} {d:?} data adjoint"
                );
                assert!(
                    (lhs - dot(&dw, &c.w)).abs() < 1e-4 * scale,
                    "{level} {d:?} weight adjoint"
                );
            });
        }
    }
}

/// Central differences of L = ⟨dy, conv(x, w) + b⟩ against the backward passes.
#[test]
#[allow(clippy::needless_range_loop)]
fn finite_differences_agree_with_backward() {
    let tiny = [
        ConvDesc::depthwise(1, (5, 4), 3, 3, 2),
        ConvDesc::new(1, (4, 5), 4, 6, (3, 3))
            .with_group_size(2)
            .with_padding(Padding {
                top: 1,
                bottom: 0,
                left: 2,
                right: 1,
            }),
        ConvDesc::pointwise(2, (3, 3), 5, 3).with_stride(2),
    ];
    for (i, d) in tiny.iter().enumerate() {
        let c = ConvCase::new(d, 500 + i as u64);
        let s = c.shape;
        let conv = Conv2d::new(d).unwrap();
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.y_len];
            conv.forward(x, w, Some(b), &mut y).unwrap();
            dot(&c.dy, &y)
        };
        let mut dx = vec![0.0; s.x_len];
        conv.backward_data(&c.dy, &c.w, &mut dx).unwrap();
        let mut dw = vec![0.0; s.w_len];
        let mut db = vec![0.0; d.out_channels];
        conv.backward_weight(&c.x, &c.dy, &mut dw, Some(&mut db), GradMode::Overwrite)
            .unwrap();
        let h = 1e-2f32;
        let fd = |v: &mut Vec<f32>, j: usize, f: &dyn Fn(&[f32]) -> f64| {
            let old = v[j];
            v[j] = old + h;
            let up = f(v);
            v[j] = old - h;
            let down = f(v);
            v[j] = old;
            (up - down) / (2.0 * h as f64)
        };
        let mut x = c.x.clone();
        for j in 0..s.x_len {
            let g = fd(&mut x, j, &|x| loss(x, &c.w, &c.b));
            assert!(
                (g - dx[j] as f64).abs() < 2e-3,
                "{d:?} dx[{j}]: fd {g} vs {}",
                dx[j]
            );
        }
        let mut w = c.w.clone();
        for j in 0..s.w_len {
            let g = fd(&mut w, j, &|w| loss(&c.x, w, &c.b));
            assert!(
                (g - dw[j] as f64).abs() < 2e-3,
                "{d:?} dw[{j}]: fd {g} vs {}",
                dw[j]
            );
        }
        let mut b = c.b.clone();
        for j in 0..d.out_channels {
            let g = fd(&mut b, j, &|b| loss(&c.x, &c.w, b));
            assert!(
                (g - db[j] as f64).abs() < 2e-3,
                "{d:?} db[{j}]: fd {g} vs {}",
                db[j]
            );
        }
    }
}

/// Bitwise identical results for 1, 2 and 8 threads on shapes large enough to be split.
#[test]
fn results_do_not_depend_on_thread_count() {
    let shapes = [
        ConvDesc::depthwise(3, (33, 31), 48, 3, 1),
        ConvDesc::depthwise(2, (29, 29), 40, 5, 2),
        ConvDesc::new(2, (30, 27), 64, 64, (3, 3))
            .with_group_size(16)
            .with_symmetric_padding(),
        ConvDesc::pointwise(4, (21, 19), 40, 72),
        ConvDesc::new(2, (40, 40), 3, 32, (3, 3))
            .with_stride(2)
            .with_tf_same_padding(),
    ];
    for (i, d) in shapes.iter().enumerate() {
        let c = ConvCase::new(d, 900 + i as u64);
        let conv = Conv2d::new(d).unwrap();
        let run = |threads: usize| in_pool(threads, || c.run(&Passes::Plan(&conv)).bits());
        let one = run(1);
        assert!(run(2) == one, "{d:?}: 2 threads differ from 1");
        assert!(run(8) == one, "{d:?}: 8 threads differ from 1");
    }
}

#[test]
fn wrong_buffer_sizes_are_typed_errors() {
    let d = ConvDesc::new(1, (8, 8), 32, 32, (3, 3))
        .with_group_size(16)
        .with_symmetric_padding();
    let conv = Conv2d::new(&d).unwrap();
    let s = *conv.shape();
    let x = vec![0.0; s.x_len];
    let w = vec![0.0; s.w_len];
    let mut y = vec![0.0; s.y_len];
    let mut short = vec![0.0; s.y_len - 1];
    assert!(matches!(
        conv.forward(&x[1..], &w, None, &mut y),
        Err(Error::BufferSize { name: "x", .. })
    ));
    assert!(matches!(
        conv.forward(&x, &w[1..], None, &mut y),
        Err(Error::BufferSize { name: "weight", .. })
    ));
    assert!(matches!(
        conv.forward(&x, &w, Some(&[0.0; 3]), &mut y),
        Err(Error::BufferSize { name: "bias", .. })
    ));
    assert!(matches!(
        conv.forward(&x, &w, None, &mut short),
        Err(Error::BufferSize { name: "y", .. })
    ));
    let mut dx = vec![0.0; s.x_len];
    assert!(matches!(
        conv.backward_data(&y[1..], &w, &mut dx),
        Err(Error::BufferSize { name: "dy", .. })
    ));
    let mut dw = vec![0.0; s.w_len + 1];
    assert!(matches!(
        conv.backward_weight(&x, &y, &mut dw, None, GradMode::Overwrite),
        Err(Error::BufferSize {
            name: "dweight",
            ..
        })
    ));
}

#[test]
fn bad_descriptors_are_rejected_by_the_plan() {
    let ok = ConvDesc::new(1, (8, 8), 32, 32, (3, 3)).with_group_size(16);
    for bad in [
        ConvDesc { in_h: 0, ..ok },
        ConvDesc {
            group_size: 7,
            ..ok
        },
        ConvDesc {
            out_channels: 25,
            group_size: 32,
            in_channels: 64,
            ..ok
        },
        ConvDesc { kernel_h: 11, ..ok },
    ] {
        assert!(
            matches!(Conv2d::new(&bad), Err(Error::InvalidDescriptor(_))),
            "{bad:?}"
        );
    }
    let huge = ConvDesc {
        batch: 1 << 40,
        in_h: 1 << 20,
        ..ok
    };
    assert!(matches!(Conv2d::new(&huge), Err(Error::Overflow(_))));
}
