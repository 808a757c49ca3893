//! The forward prologue (`PreOps`: `x' = p·φ(a·x + b) + q` per image and input
//! channel) of every convolution family at every SIMD level: the fused pass matches
//! the f64 reference convolution of the transformed input (padding reads zero, not the
//! transform of zero), combined with every epilogue term; an identity prologue gives
//! the plain pass's bits; the result is the same bits for 1, 2 and 8 threads; misuse
//! is a typed error.

use super::conv_post_ops::shapes;
use crate::common::conv::ConvCase;
use crate::common::{Rng, at_level_every_tile, in_pool, levels, rel_err};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::reference;
use effnet::kernels::conv::{
    ChannelStats, Conv2d, ConvDesc, ConvPass, ConvWeights, PostArgs, PostOps, PreArgs, PreOps,
};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The prologue's operands for `nc` coefficients: scales of both signs and around
/// 1, shifts that push the activations into their curved parts.
struct Coefs {
    a: Vec<f32>,
    b: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
}

impl Coefs {
    fn new(nc: usize, seed: u64) -> Coefs {
        let mut r = Rng::new(seed);
        Coefs {
            a: r.vec(nc).iter().map(|v| 1.5 * v + 0.2).collect(),
            b: r.vec(nc),
            p: r.vec(nc).iter().map(|v| v + 0.5).collect(),
            q: r.vec(nc),
        }
    }

    fn args(&self, ops: PreOps) -> PreArgs<'_> {
        PreArgs {
            scale: &self.a,
            shift: ops.shift.then_some(&self.b[..]),
            out_scale: ops.out_scale.then_some(&self.p[..]),
            out_shift: ops.out_shift.then_some(&self.q[..]),
        }
    }

    /// `x'` in f64, rounded to f32 (the reference convolution reads f32).
    fn transform(&self, ops: PreOps, d: &ConvDesc, x: &[f32]) -> Vec<f32> {
        let c = d.in_channels;
        let per_image = x.len() / d.batch;
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                let k = i / per_image * c + i % c;
                let mut u = self.a[k] as f64 * v as f64;
                if ops.shift {
                    u += self.b[k] as f64;
                }
                let mut y = ops.activation.value(u);
                if ops.out_scale {
                    y *= self.p[k] as f64;
                }
                if ops.out_shift {
                    y += self.q[k] as f64;
                }
                y as f32
            })
            .collect()
    }
}

/// Prologues that use every term, alone and together.
fn prologues() -> Vec<PreOps> {
    vec![
        PreOps {
            shift: true,
            activation: Activation::Swish,
            out_scale: true,
            out_shift: true,
        },
        PreOps {
            shift: false,
            activation: Activation::Identity,
            out_scale: false,
            out_shift: false,
        },
        PreOps::norm_act(Activation::Sigmoid),
        PreOps {
            shift: true,
            activation: Activation::Relu,
            out_scale: true,
            out_shift: false,
        },
        PreOps {
            shift: false,
            activation: Activation::Identity,
            out_scale: false,
            out_shift: true,
        },
    ]
}

/// Every family's shapes, plus pointwise row blocks that cross image boundaries.
fn pre_shapes() -> Vec<ConvDesc> {
    let mut v = shapes();
    v.push(ConvDesc::pointwise(3, (11, 13), 40, 24));
    v.push(ConvDesc::depthwise(2, (33, 35), 20, 5, 1));
    v
}

#[test]
fn prologue_matches_the_reference_at_every_level() {
    for (i, d) in pre_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 5100 + i as u64);
        let s = c.shape;
        let k = Coefs::new(d.batch * d.in_channels, 5200 + i as u64);
        for (j, ops) in prologues().into_iter().enumerate() {
            let xt = k.transform(ops, d, &c.x);
            let want = reference::forward(&s, &xt, &c.w, Some(&c.b));
            for level in levels() {
                at_level_every_tile(level, |tiles| {
                    let conv = Conv2d::with_level(d, level).unwrap().with_pre_ops(ops);
                    assert_eq!(conv.pre_ops(), Some(ops));
                    let mut y = vec![f32::NAN; s.y_len];
                    let args = PostArgs {
                        pre: Some(k.args(ops)),
                        ..PostArgs::default()
                    };
                    let w = ConvWeights::Plain(&c.w);
                    conv.forward_post(&c.x, w, Some(&c.b), args, &mut y, None)
                        .unwrap();
                    let e = rel_err(&y, &want);
                    assert!(e < 3e-5, "{level} {tiles} {d:?} prologue {j}: rel err {e}");
                });
            }
        }
    }
}

#[test]
fn prologue_with_every_epilogue_term_and_packed_weights() {
    let ops = prologues()[0];
    for (i, d) in pre_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 5300 + i as u64);
        let s = c.shape;
        let k = Coefs::new(d.batch * d.in_channels, 5400 + i as u64);
        let xt = k.transform(ops, d, &c.x);
        let y0 = reference::forward(&s, &xt, &c.w, Some(&c.b));
        let sc = super::conv_post_ops::scale_of(d.out_channels);
        let co = d.out_channels;
        let want: Vec<f64> = y0
            .iter()
            .enumerate()
            .map(|(e, v)| Activation::Swish.value(v * sc[e % co] as f64) + c.dy[e] as f64)
            .collect();
        let post = PostOps {
            scale: true,
            activation: Activation::Swish,
            residual: true,
            stats: ChannelStats::Sums,
        };
        for level in levels() {
            at_level_every_tile(level, |tiles| {
                let conv = Conv2d::with_level(d, level)
                    .unwrap()
                    .with_post_ops(post)
                    .with_pre_ops(ops);
                let mut packed = vec![0.0; conv.packed_weights_len()];
                conv.pack_weights(&c.w, &mut packed).unwrap();
                let mut ws = vec![f32::NAN; conv.workspace_len(ConvPass::Forward, 0)];
                let mut y = vec![f32::NAN; s.y_len];
                let mut sums = vec![f64::NAN; d.batch * co];
                let args = PostArgs {
                    scale: Some(&sc),
                    residual: Some(&c.dy),
                    sums: Some(&mut sums),
                    squares: None,
                    pre: Some(k.args(ops)),
                };
                let w = ConvWeights::Packed(&packed);
                conv.forward_post(&c.x, w, Some(&c.b), args, &mut y, Some(&mut ws))
                    .unwrap();
                let e = rel_err(&y, &want);
                assert!(e < 3e-5, "{level} {tiles} {d:?}: rel err {e}");
                // The statistics are those of the finished `y`.
                let per_image = s.y_len / d.batch;
                for n in 0..d.batch {
                    for ch in 0..co {
                        let t: f64 = y[n * per_image..(n + 1) * per_image]
                            .iter()
                            .skip(ch)
                            .step_by(co)
                            .map(|&v| v as f64)
                            .sum();
                        let got = sums[n * co + ch];
                        assert!(
                            (got - t).abs() <= 1e-4 * (1.0 + t.abs()),
                            "{level} {d:?} sums[{n}][{ch}] {got} vs {t}"
                        );
                    }
                }
            });
        }
    }
}

#[test]
fn identity_prologue_gives_the_plain_bits() {
    // a = 1, no other term: x' = x exactly, so the staged pass (every input element
    // through the prologue's copy) must give the plain pass's sums bit for bit.
    let ops = PreOps {
        shift: false,
        activation: Activation::Identity,
        out_scale: false,
        out_shift: false,
    };
    for (i, d) in pre_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 5500 + i as u64);
        let ones = vec![1.0f32; d.batch * d.in_channels];
        for level in levels() {
            at_level_every_tile(level, |tiles| {
                let plain = Conv2d::with_level(d, level).unwrap();
                let conv = Conv2d::with_level(d, level).unwrap().with_pre_ops(ops);
                let mut want = vec![0.0; c.shape.y_len];
                plain.forward(&c.x, &c.w, Some(&c.b), &mut want).unwrap();
                let mut y = vec![f32::NAN; c.shape.y_len];
                let pre = PreArgs {
                    scale: &ones,
                    shift: None,
                    out_scale: None,
                    out_shift: None,
                };
                let args = PostArgs {
                    pre: Some(pre),
                    ..PostArgs::default()
                };
                let w = ConvWeights::Plain(&c.w);
                conv.forward_post(&c.x, w, Some(&c.b), args, &mut y, None)
                    .unwrap();
                assert!(bits(&y) == bits(&want), "{level} {tiles} {d:?}");
            });
        }
    }
}

#[test]
fn prologue_is_the_same_bits_for_any_thread_count() {
    let ops = prologues()[0];
    for (i, d) in pre_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 5600 + i as u64);
        let k = Coefs::new(d.batch * d.in_channels, 5700 + i as u64);
        for level in levels() {
            let run = |threads: usize| {
                in_pool(threads, || {
                    let conv = Conv2d::with_level(d, level).unwrap().with_pre_ops(ops);
                    let mut y = vec![f32::NAN; c.shape.y_len];
                    let args = PostArgs {
                        pre: Some(k.args(ops)),
                        ..PostArgs::default()
                    };
                    let w = ConvWeights::Plain(&c.w);
                    conv.forward_post(&c.x, w, None, args, &mut y, None)
                        .unwrap();
                    bits(&y)
                })
            };
            let one = run(1);
            for t in [2, 8] {
                assert!(run(t) == one, "{level} {d:?}: {t} threads differ from 1");
            }
        }
    }
}

#[test]
fn prologue_misuse_is_a_typed_error() {
    let d = ConvDesc::depthwise(2, (8, 8), 16, 3, 1);
    let c = ConvCase::new(&d, 1);
    let nc = 2 * 16;
    let k = Coefs::new(nc, 2);
    let ops = PreOps::norm_act(Activation::Swish);
    let with = Conv2d::new(&d).unwrap().with_pre_ops(ops);
    let without = Conv2d::new(&d).unwrap();
    let mut y = vec![0.0; c.shape.y_len];
    let w = ConvWeights::Plain(&c.w);
    let run = |conv: &Conv2d, pre: Option<PreArgs<'_>>, y: &mut [f32]| {
        let args = PostArgs {
            pre,
            ..PostArgs::default()
        };
        conv.forward_post(&c.x, w, None, args, y, None)
    };
    // A plan with a prologue runs through forward_post with its operands only.
    assert!(matches!(
        with.forward(&c.x, &c.w, None, &mut y),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        run(&with, None, &mut y),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        run(&without, Some(k.args(ops)), &mut y),
        Err(Error::InvalidArgument(_))
    ));
    // The shift the plan uses, missing; an output scale it does not use, given.
    let mut a = k.args(ops);
    a.shift = None;
    assert!(matches!(
        run(&with, Some(a), &mut y),
        Err(Error::InvalidArgument(_))
    ));
    let mut a = k.args(ops);
    a.out_scale = Some(&k.p);
    assert!(matches!(
        run(&with, Some(a), &mut y),
        Err(Error::InvalidArgument(_))
    ));
    // Wrong lengths: N·C_in each.
    let mut a = k.args(ops);
    a.scale = &k.a[1..];
    assert!(matches!(
        run(&with, Some(a), &mut y),
        Err(Error::BufferSize {
            name: "pre-op scale",
            ..
        })
    ));
    let mut a = k.args(ops);
    a.shift = Some(&k.b[..16]);
    assert!(matches!(
        run(&with, Some(a), &mut y),
        Err(Error::BufferSize {
            name: "pre-op shift",
            ..
        })
    ));
    assert!(run(&with, Some(k.args(ops)), &mut y).is_ok());
}
