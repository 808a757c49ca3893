//! Depthwise-specific oracle tests: the three passes against the f64 reference on
//! shapes `tests/conv.rs` does not draw (wide images, which take the kernels' in-place
//! path, non-square kernels, per-axis strides and dilations up to 3, wide kernels),
//! at every SIMD level; gradient accumulation; thread-count determinism; typed errors.

use crate::common::conv::{ConvCase, Passes};
use crate::common::{in_pool, levels, proptest_cases};
use effnet::Error;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvFamily, GradMode, Padding};
use effnet::simd::{SimdLevel, with_level};
use proptest::prelude::*;

/// `max |got − want|` over `max(1, max |want|)`: a relative error that stays meaningful
/// for sums that cancel (bias gradients of one channel).
fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, w| m.max(w.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}

const TOL: f64 = 1e-5;

/// Every pass at every level against the reference, through the plain passes and
/// with a caller's (stale) workspace.
fn check(d: &ConvDesc, seed: u64) -> Result<(), TestCaseError> {
    let c = ConvCase::new(d, seed);
    let refs = c.references();
    for level in levels() {
        let conv = Conv2d::with_level(d, level).unwrap();
        prop_assert_eq!(conv.family(), ConvFamily::Depthwise);
        for passes in [Passes::Plan(&conv), Passes::Workspace(&conv)] {
            let o = with_level(level, || c.run(&passes));
            for (name, e) in o.errors(&refs, max_err) {
                prop_assert!(e < TOL, "{level} {name} {d:?}: err {e}");
            }
        }
    }
    Ok(())
}

/// Depthwise descriptors with independent per-axis kernel sizes, strides and
/// dilations, four-sided padding, input widths in `w_range`.
fn desc(w_range: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = ConvDesc> {
    let k = prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(5), Just(7)];
    let k2 = prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(5), Just(7)];
    (
        (k, k2, 1usize..=3, 1usize..=3),
        (1usize..=3, 1usize..=3, 1usize..=2, 1usize..=7),
        (w_range, any::<u64>()),
    )
        .prop_flat_map(|((kh, kw, dh, dw), (sh, sw, batch, h), (w, seed))| {
            let sp_h = dh * (kh - 1) + 1;
            let sp_w = dw * (kw - 1) + 1;
            (
                Just((kh, kw, dh, dw, sh, sw, batch, h, w, seed)),
                (0..sp_h, 0..sp_h, 0..sp_w, 0..sp_w),
            )
        })
        .prop_map(
            |((kh, kw, dh, dw, sh, sw, batch, h, w, seed), (top, bottom, left, right))| {
                let cs = [1usize, 3, 8, 15, 16, 17, 24, 31, 33, 48, 64, 65, 80, 96];
                let c = cs[(seed % cs.len() as u64) as usize];
                let mut d = ConvDesc::new(batch, (h, w), c, c, (kh, kw))
                    .with_group_size(1)
                    .with_padding(Padding {
                        top,
                        bottom,
                        left,
                        right,
                    });
                (d.stride_h, d.stride_w, d.dilation_h, d.dilation_w) = (sh, sw, dh, dw);
                d
            },
        )
        .prop_filter("valid descriptor", |d| d.validate().is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(40), max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// Wide rows: the interior runs read the tensors in place.
    #[test]
    fn wide_images_match_reference(d in desc(33..=70), seed in any::<u64>()) {
        check(&d, seed)?;
    }

    /// Narrow rows: whole rows are packed.
    #[test]
    fn narrow_images_match_reference(d in desc(1..=20), seed in any::<u64>()) {
        check(&d, seed)?;
    }
}

/// EfficientNet-style shapes (at reduced size) and corner cases, named.
fn fixed_shapes() -> Vec<ConvDesc> {
    let mut v = vec![
        ConvDesc::depthwise(2, (9, 40), 32, 3, 1),
        ConvDesc::depthwise(1, (11, 48), 96, 3, 2),
        ConvDesc::depthwise(2, (8, 56), 48, 5, 2),
        ConvDesc::depthwise(1, (7, 37), 40, 5, 1),
        ConvDesc::depthwise(2, (14, 14), 672, 5, 1),
        ConvDesc::depthwise(3, (7, 7), 1152, 3, 1),
        ConvDesc::depthwise(2, (15, 15), 80, 5, 2).with_tf_same_padding(),
        ConvDesc::depthwise(1, (35, 35), 24, 3, 2).with_tf_same_padding(),
        // A 1-pixel-wide image, a 1×1 kernel, a kernel as wide as the padded input.
        ConvDesc::depthwise(2, (6, 1), 19, 3, 1),
        ConvDesc::depthwise(1, (5, 5), 7, 1, 1),
        ConvDesc::new(1, (3, 3), 16, 16, (5, 5))
            .with_group_size(1)
            .with_padding(Padding::symmetric(1)),
        // Wide kernels: kernel columns in groups of 5 (5 + 4, 5 + 5 + 1).
        ConvDesc::new(1, (4, 50), 17, 17, (1, 9))
            .with_group_size(1)
            .with_padding(Padding {
                top: 0,
                bottom: 0,
                left: 4,
                right: 3,
            }),
        ConvDesc::new(2, (5, 40), 33, 33, (3, 11))
            .with_group_size(1)
            .with_stride(2)
            .with_padding(Padding {
                top: 1,
                bottom: 0,
                left: 2,
                right: 9,
            }),
    ];
    // Kernels taller than the weight gradient's batch of kernel rows (16).
    for w in [10, 35] {
        v.push(
            ConvDesc::new(1, (20, w), 9, 9, (18, 2))
                .with_group_size(1)
                .with_padding(Padding {
                    top: 8,
                    bottom: 9,
                    left: 1,
                    right: 0,
                }),
        );
    }
    // A large image with many channel blocks: long in-place sliding-window runs.
    v.push(ConvDesc::depthwise(2, (64, 64), 256, 3, 1));
    // Dilation with asymmetric padding, stride 3.
    let mut d = ConvDesc::new(1, (10, 45), 20, 20, (3, 3))
        .with_group_size(1)
        .with_dilation(3)
        .with_padding(Padding {
            top: 6,
            bottom: 0,
            left: 1,
            right: 5,
        });
    d.stride_w = 3;
    v.push(d);
    v
}

#[test]
fn fixed_shapes_match_reference() {
    for (i, d) in fixed_shapes().iter().enumerate() {
        check(d, 3000 + i as u64).unwrap();
    }
}

/// Bitwise identical results for 1, 2, 3 and 8 threads, at every level, on shapes
/// split into several tasks and gradient chunks (narrow and wide rows).
#[test]
fn results_do_not_depend_on_thread_count() {
    let shapes = [
        ConvDesc::depthwise(4, (30, 40), 24, 3, 1),
        ConvDesc::depthwise(3, (20, 36), 40, 5, 2),
        ConvDesc::depthwise(8, (14, 14), 96, 5, 1),
        ConvDesc::depthwise(8, (7, 7), 67, 3, 1),
    ];
    for (i, d) in shapes.iter().enumerate() {
        let c = ConvCase::new(d, 900 + i as u64);
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap();
            let run = |threads: usize| {
                in_pool(threads, || {
                    with_level(level, || c.run(&Passes::Plan(&conv)).bits())
                })
            };
            let one = run(1);
            for t in [2, 3, 8] {
                assert!(run(t) == one, "{level} {d:?}: {t} threads differ from 1");
            }
        }
    }
}

/// The backward passes are the adjoints of the forward pass, for the fast kernels
/// alone (no reference): ⟨dy, conv(x)⟩ = ⟨convᵀ(dy), x⟩ = ⟨dw(x, dy), w⟩.
#[test]
fn adjoint_identities_hold() {
    for (i, d) in fixed_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 77 + i as u64);
        let s = c.shape;
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap();
            with_level(level, || {
                let mut y = vec![0.0; s.y_len];
                conv.forward(&c.x, &c.w, None, &mut y).unwrap();
                let mut dx = vec![0.0; s.x_len];
                conv.backward_data(&c.dy, &c.w, &mut dx).unwrap();
                let mut dw = vec![0.0; s.w_len];
                conv.backward_weight(&c.x, &c.dy, &mut dw, None, GradMode::Overwrite)
                    .unwrap();
                let lhs = crate::common::dot(&c.dy, &y);
                let scale = c.dy.len() as f64;
                assert!(
                    (lhs - crate::common::dot(&dx, &c.x)).abs() < 1e-5 * scale,
                    "{level} {d:?} data adjoint"
                );
                assert!(
                    (lhs - crate::common::dot(&dw, &c.w)).abs() < 1e-5 * scale,
                    "{level} {d:?} weight adjoint"
                );
            });
        }
    }
}

#[test]
fn wrong_buffers_are_typed_errors() {
    let d = ConvDesc::depthwise(2, (9, 9), 24, 3, 2);
    let conv = Conv2d::with_level(&d, SimdLevel::Scalar).unwrap();
    let s = *conv.shape();
    let x = vec![0.0; s.x_len];
    let w = vec![0.0; s.w_len];
    let mut y = vec![0.0; s.y_len];
    let mut dx = vec![0.0; s.x_len];
    let mut dw = vec![0.0; s.w_len];
    let bad = |r: Result<(), Error>, name: &str| {
        assert!(
            matches!(r, Err(Error::BufferSize { name: n, .. }) if n == name),
            "{name}: {r:?}"
        );
    };
    bad(conv.forward(&x[1..], &w, None, &mut y), "x");
    bad(conv.forward(&x, &w[1..], None, &mut y), "weight");
    bad(conv.forward(&x, &w, Some(&[0.0; 23]), &mut y), "bias");
    bad(conv.forward(&x, &w, None, &mut y[1..]), "y");
    bad(conv.backward_data(&y[1..], &w, &mut dx), "dy");
    bad(conv.backward_data(&y, &w, &mut dx[1..]), "dx");
    let overwrite = GradMode::Overwrite;
    bad(
        conv.backward_weight(&x, &y, &mut dw[1..], None, overwrite),
        "dweight",
    );
    let mut db = vec![0.0; 25];
    bad(
        conv.backward_weight(&x, &y, &mut dw, Some(&mut db), overwrite),
        "dbias",
    );
}
