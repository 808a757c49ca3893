//! The per-output-channel scale of the forward epilogue (`PostOps::scale`,
//! `PostArgs::scale`): `y = φ(s ⊙ (conv + bias)) (+ r)` in one pass, for every family
//! at every SIMD level, gives the bits of the unfused sequence (forward, then the
//! channel multiply, the standalone activation and the add) with plain and packed
//! weights; it matches the f64 reference; the statistics post-op sees the scaled
//! output; misuse is a typed error.

use super::conv_post_ops::shapes;
use crate::common::conv::ConvCase;
use crate::common::{levels, rel_err};
use effnet::Error;
use effnet::kernels::activation::{self, Activation};
use effnet::kernels::conv::{
    ChannelStats, Conv2d, ConvDesc, ConvPass, ConvWeights, PostArgs, PostOps,
};
use effnet::simd::with_level;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A scale per output channel with both signs, a zero and magnitudes around 1.
fn scale_of(c_out: usize) -> Vec<f32> {
    (0..c_out)
        .map(|c| match c % 7 {
            3 => 0.0,
            k => (k as f32 - 2.5) * 0.37 + 0.05 * (c as f32).sin(),
        })
        .collect()
}

#[test]
fn scaled_epilogue_gives_the_unfused_bits_at_every_level() {
    for (i, d) in shapes().iter().enumerate() {
        let c = ConvCase::new(d, 5100 + i as u64);
        let s = c.shape;
        let sc = scale_of(d.out_channels);
        for level in levels() {
            with_level(level, || {
                let plain = Conv2d::with_level(d, level).unwrap();
                for act in [Activation::Identity, Activation::Swish] {
                    for residual in [false, true] {
                        let post = PostOps {
                            scale: true,
                            activation: act,
                            residual,
                            ..PostOps::NONE
                        };
                        let conv = Conv2d::with_level(d, level).unwrap().with_post_ops(post);
                        let mut packed = vec![0.0; conv.packed_weights_len()];
                        conv.pack_weights(&c.w, &mut packed).unwrap();
                        for bias in [Some(&c.b[..]), None] {
                            let mut want = vec![0.0; s.y_len];
                            plain.forward(&c.x, &c.w, bias, &mut want).unwrap();
                            for px in want.chunks_exact_mut(d.out_channels) {
                                for (v, k) in px.iter_mut().zip(&sc) {
                                    *v *= *k;
                                }
                            }
                            let mut a = vec![0.0; s.y_len];
                            activation::forward(act, &want, &mut a).unwrap();
                            if residual {
                                for (a, r) in a.iter_mut().zip(&c.dy) {
                                    *a += *r;
                                }
                            }
                            let what = format!(
                                "{level} {d:?} {act:?} residual {residual} bias {}",
                                bias.is_some()
                            );
                            for weights in [ConvWeights::Plain(&c.w), ConvWeights::Packed(&packed)]
                            {
                                let args = PostArgs {
                                    scale: Some(&sc),
                                    residual: residual.then_some(&c.dy[..]),
                                    ..PostArgs::default()
                                };
                                let mut ws =
                                    vec![f32::NAN; conv.workspace_len(ConvPass::Forward, 0)];
                                let mut y = vec![f32::NAN; s.y_len];
                                conv.forward_post(&c.x, weights, bias, args, &mut y, Some(&mut ws))
                                    .unwrap();
                                assert!(bits(&y) == bits(&a), "{what}: {weights:?} differ");
                            }
                        }
                    }
                }
            });
        }
    }
}

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
