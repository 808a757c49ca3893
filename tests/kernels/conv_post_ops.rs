//! The forward epilogue (`PostOps`: per-channel scale, activation, residual add) of
//! every convolution family at every SIMD level: the fused pass gives the bits of the
//! unfused sequence (forward, then the channel multiply, the standalone activation,
//! then the add), with plain and packed weights, with and without bias; it matches the
//! f64 reference; misuse is a typed error.

use crate::common::conv::{ConvCase, fixed_shapes};
use crate::common::{at_level_every_tile, levels, rel_err};
use effnet::Error;
use effnet::kernels::activation::{self, Activation};
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvPass, ConvWeights, PostArgs, PostOps};
use effnet::simd::with_level;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Shapes of every family, with rows wider than one tile and channel tails (the
/// fixed shapes plus G16 3×3 / 5×5, which take the AVX-512 sliding rows).
pub(super) fn shapes() -> Vec<ConvDesc> {
    let mut v = fixed_shapes();
    v.push(
        ConvDesc::new(2, (20, 19), 48, 48, (3, 3))
            .with_group_size(16)
            .with_symmetric_padding(),
    );
    v.push(
        ConvDesc::new(1, (15, 15), 32, 32, (5, 5))
            .with_group_size(16)
            .with_stride(2)
            .with_tf_same_padding(),
    );
    v.push(ConvDesc::depthwise(2, (40, 41), 24, 3, 1));
    v.push(ConvDesc::pointwise(2, (9, 9), 40, 70));
    v
}

/// A scale per output channel with both signs, a zero and magnitudes around 1.
pub(super) fn scale_of(c_out: usize) -> Vec<f32> {
    (0..c_out)
        .map(|c| match c % 7 {
            3 => 0.0,
            k => (k as f32 - 2.5) * 0.37 + 0.05 * (c as f32).sin(),
        })
        .collect()
}

#[test]
fn fused_epilogue_gives_the_unfused_bits_at_every_level() {
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::Sigmoid,
        Activation::Swish,
    ];
    for (i, d) in shapes().iter().enumerate() {
        let c = ConvCase::new(d, 3100 + i as u64);
        let s = c.shape;
        let res: Vec<f32> = c.dy.clone();
        let sc = scale_of(d.out_channels);
        for level in levels() {
            at_level_every_tile(level, |tiles| {
                let plain = Conv2d::with_level(d, level).unwrap();
                for act in acts {
                    for (residual, scale) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let post = PostOps {
                            scale,
                            activation: act,
                            residual,
                            ..PostOps::NONE
                        };
                        let conv = Conv2d::with_level(d, level).unwrap().with_post_ops(post);
                        let mut packed = vec![0.0; conv.packed_weights_len()];
                        conv.pack_weights(&c.w, &mut packed).unwrap();
                        for bias in [Some(&c.b[..]), None] {
                            // The unfused sequence.
                            let mut want = vec![0.0; s.y_len];
                            plain.forward(&c.x, &c.w, bias, &mut want).unwrap();
                            if scale {
                                for px in want.chunks_exact_mut(d.out_channels) {
                                    for (v, k) in px.iter_mut().zip(&sc) {
                                        *v *= *k;
                                    }
                                }
                            }
                            let mut a = vec![0.0; s.y_len];
                            activation::forward(act, &want, &mut a).unwrap();
                            if residual {
                                for (a, r) in a.iter_mut().zip(&res) {
                                    *a += *r;
                                }
                            }
                            let r = residual.then_some(&res[..]);
                            let what = format!(
                                "{level} {tiles} {d:?} {act:?} residual {residual} scale {scale} bias {}",
                                bias.is_some()
                            );
                            // A plan with a scale runs through forward_post; the others
                            // through forward_fused.
                            let run =
                                |w: ConvWeights<'_>, y: &mut [f32], ws: Option<&mut [f32]>| {
                                    if scale {
                                        let args = PostArgs {
                                            scale: Some(&sc),
                                            residual: r,
                                            ..PostArgs::default()
                                        };
                                        conv.forward_post(&c.x, w, bias, args, y, ws)
                                    } else {
                                        conv.forward_fused(&c.x, w, bias, r, y, ws)
                                    }
                                };
                            let mut y = vec![f32::NAN; s.y_len];
                            run(ConvWeights::Plain(&c.w), &mut y, None).unwrap();
                            assert!(bits(&y) == bits(&a), "{what}: plain weights differ");
                            let mut ws = vec![f32::NAN; conv.workspace_len(ConvPass::Forward, 0)];
                            let mut y = vec![f32::NAN; s.y_len];
                            run(ConvWeights::Packed(&packed), &mut y, Some(&mut ws)).unwrap();
                            assert!(bits(&y) == bits(&a), "{what}: packed weights differ");
                        }
                    }
                }
            });
        }
    }
}

#[test]
fn fused_epilogue_matches_the_reference() {
    for (i, d) in shapes().iter().enumerate() {
        let c = ConvCase::new(d, 3300 + i as u64);
        let refs = c.references();
        let post = PostOps {
            activation: Activation::Swish,
            residual: true,
            ..PostOps::NONE
        };
        let want: Vec<f64> = refs
            .y
            .iter()
            .zip(&c.dy)
            .map(|(y, r)| Activation::Swish.value(*y) + *r as f64)
            .collect();
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap().with_post_ops(post);
            let mut y = vec![0.0; c.shape.y_len];
            with_level(level, || {
                conv.forward_fused(
                    &c.x,
                    ConvWeights::Plain(&c.w),
                    Some(&c.b),
                    Some(&c.dy),
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
fn residual_misuse_is_a_typed_error() {
    let d = ConvDesc::depthwise(1, (8, 8), 16, 3, 1);
    let c = ConvCase::new(&d, 1);
    let n = c.shape.y_len;
    let with = Conv2d::new(&d).unwrap().with_post_ops(PostOps {
        activation: Activation::Relu,
        residual: true,
        ..PostOps::NONE
    });
    let without = Conv2d::new(&d).unwrap();
    let mut y = vec![0.0; n];
    let w = ConvWeights::Plain(&c.w);
    assert!(matches!(
        with.forward(&c.x, &c.w, None, &mut y),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        without.forward_fused(&c.x, w, None, Some(&c.dy), &mut y, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        with.forward_fused(&c.x, w, None, Some(&c.dy[1..]), &mut y, None),
        Err(Error::BufferSize {
            name: "residual",
            ..
        })
    ));
    assert!(
        with.forward_fused(&c.x, w, None, Some(&c.dy), &mut y, None)
            .is_ok()
    );
}
