//! The per-output-channel scale of the forward epilogue (`PostOps::scale`,
//! `PostArgs::scale`): `y = φ(s ⊙ (conv + bias)) (+ r)` matches the f64 reference for
//! every family at every SIMD level, the statistics post-op sees the scaled output,
//! misuse is a typed error. (Its bits against the unfused sequence are checked with
//! the other post-ops, in `conv_post_ops`.)

use super::conv_post_ops::{scale_of, shapes};
use crate::common::conv::ConvCase;
use crate::common::{levels, rel_err};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::{ChannelStats, Conv2d, ConvDesc, ConvWeights, PostArgs, PostOps};
use effnet::simd::with_level;

#[test]
fn scaled_epilogue_matches_the_reference() {
    for (i, d) in shapes().iter().enumerate() {
        let c = ConvCase::new(d, 5300 + i as u64);
        let refs = c.references();
        let sc = scale_of(d.out_channels);
        let post = PostOps {
            scale: true,
            activation: Activation::Swish,
            residual: true,
            ..PostOps::NONE
        };
        let want: Vec<f64> = refs
            .y
            .iter()
            .zip(&c.dy)
            .enumerate()
            .map(|(j, (y, r))| {
                Activation::Swish.value(*y * f64::from(sc[j % d.out_channels])) + f64::from(*r)
            })
            .collect();
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap().with_post_ops(post);
            let mut y = vec![0.0; c.shape.y_len];
            let args = PostArgs {
                scale: Some(&sc),
                residual: Some(&c.dy),
                ..PostArgs::default()
            };
            with_level(level, || {
                conv.forward_post(
                    &c.x,
                    ConvWeights::Plain(&c.w),
                    Some(&c.b),
                    args,
                    &mut y,
                    None,
                )
            })
            .unwrap();
            let e = rel_err(&y, &want);
            assert!(e < 2e-5, "{level} {d:?}: rel err {e}");
        }
    }
}

#[test]
fn statistics_of_a_scaled_output_are_those_of_the_output() {
    for (i, d) in shapes().iter().enumerate() {
        let c = ConvCase::new(d, 5500 + i as u64);
        let sc = scale_of(d.out_channels);
        let post = PostOps {
            scale: true,
            stats: ChannelStats::Sums,
            ..PostOps::NONE
        };
        let conv = Conv2d::new(d).unwrap().with_post_ops(post);
        let (n, co) = (d.batch, d.out_channels);
        let mut sums = vec![0.0f64; n * co];
        let mut y = vec![0.0; c.shape.y_len];
        let args = PostArgs {
            scale: Some(&sc),
            sums: Some(&mut sums),
            ..PostArgs::default()
        };
        conv.forward_post(
            &c.x,
            ConvWeights::Plain(&c.w),
            Some(&c.b),
            args,
            &mut y,
            None,
        )
        .unwrap();
        let per_image = c.shape.y_len / n;
        for b in 0..n {
            for ch in 0..co {
                let want: f64 = y[b * per_image..(b + 1) * per_image]
                    .iter()
                    .skip(ch)
                    .step_by(co)
                    .map(|&v| f64::from(v))
                    .sum();
                let got = sums[b * co + ch];
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{d:?} image {b} channel {ch}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn scale_misuse_is_a_typed_error() {
    let d = ConvDesc::pointwise(1, (6, 6), 8, 24);
    let c = ConvCase::new(&d, 7);
    let sc = scale_of(24);
    let with = Conv2d::new(&d).unwrap().with_post_ops(PostOps {
        scale: true,
        ..PostOps::NONE
    });
    let without = Conv2d::new(&d).unwrap();
    let mut y = vec![0.0; c.shape.y_len];
    let w = ConvWeights::Plain(&c.w);
    let args = |scale| PostArgs {
        scale,
        ..PostArgs::default()
    };
    // The plain entry points carry no scale.
    assert!(matches!(
        with.forward(&c.x, &c.w, None, &mut y),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        with.forward_post(&c.x, w, None, args(None), &mut y, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        without.forward_post(&c.x, w, None, args(Some(&sc)), &mut y, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        with.forward_post(&c.x, w, None, args(Some(&sc[1..])), &mut y, None),
        Err(Error::BufferSize { name: "scale", .. })
    ));
    assert!(
        with.forward_post(&c.x, w, None, args(Some(&sc)), &mut y, None)
            .is_ok()
    );
}
