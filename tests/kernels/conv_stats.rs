//! The statistics post-op (`PostOps::stats`: per-image channel sums and sums of
//! squares of the finished output) of every convolution family at every SIMD level:
//! the output keeps the bits of the plan without statistics, the statistics match the
//! f64 sums of that output, they are the same bits for 1, 2, 3 and 8 threads (where
//! the k×k families split rows and groups of channels differently), and misuse is a
//! typed error.

use super::conv_post_ops::shapes;
use crate::common::conv::ConvCase;
use crate::common::{in_pool, levels};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::{
    ChannelStats, Conv2d, ConvDesc, ConvPass, ConvWeights, PostArgs, PostOps,
};
use effnet::simd::{SimdLevel, with_level};

fn bits<T: Copy + Into<f64>>(v: &[T]) -> Vec<u64> {
    v.iter().map(|&x| x.into().to_bits()).collect()
}

/// The shapes of the post-op tests, plus a G16 layer wide in channels at batch 1 (its
/// tasks split the groups when the pool is large), a batch of odd images and two
/// pointwise products of many tasks.
fn stat_shapes() -> Vec<ConvDesc> {
    let mut v = shapes();
    v.push(
        ConvDesc::new(1, (7, 7), 256, 256, (3, 3))
            .with_group_size(16)
            .with_symmetric_padding(),
    );
    v.push(ConvDesc::depthwise(3, (13, 11), 40, 5, 2));
    // Pointwise products of many tasks (row blocks of whole image rows × panel
    // groups; odd widths), one of them strided.
    v.push(ConvDesc::pointwise(2, (31, 29), 48, 136));
    v.push(ConvDesc::pointwise(3, (23, 17), 24, 100).with_stride(2));
    v
}

/// `y`, sums and squares of one forward call with statistics.
struct Run {
    y: Vec<f32>,
    sums: Vec<f64>,
    squares: Vec<f64>,
}

fn run(conv: &Conv2d, c: &ConvCase, residual: bool, packed: bool) -> Run {
    let s = conv.shape();
    let nc = s.desc.batch * s.desc.out_channels;
    let (mut sums, mut squares) = (vec![f64::NAN; nc], vec![f64::NAN; nc]);
    let mut y = vec![f32::NAN; s.y_len];
    let mut pw = vec![0.0; conv.packed_weights_len()];
    conv.pack_weights(&c.w, &mut pw).unwrap();
    let w = if packed {
        ConvWeights::Packed(&pw)
    } else {
        ConvWeights::Plain(&c.w)
    };
    let both = conv.post_ops().stats == ChannelStats::SumsAndSquares;
    let args = PostArgs {
        scale: None,
        residual: residual.then_some(&c.dy[..]),
        sums: Some(&mut sums),
        squares: both.then_some(&mut squares[..]),
        pre: None,
    };
    let mut ws = vec![f32::NAN; conv.workspace_len(ConvPass::Forward, 0)];
    conv.forward_post(&c.x, w, Some(&c.b), args, &mut y, Some(&mut ws))
        .unwrap();
    Run { y, sums, squares }
}

fn plan(d: &ConvDesc, level: SimdLevel, residual: bool, stats: ChannelStats) -> Conv2d {
    let post = PostOps {
        scale: false,
        activation: Activation::Swish,
        residual,
        stats,
    };
    Conv2d::with_level(d, level).unwrap().with_post_ops(post)
}

#[test]
fn statistics_are_the_sums_of_the_output_at_every_level() {
    for (i, d) in stat_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 4100 + i as u64);
        let s = c.shape;
        let (n, co) = (d.batch, d.out_channels);
        let pixels = s.y_len / (n * co);
        for level in levels() {
            with_level(level, || {
                for residual in [false, true] {
                    let what = format!("{level} {d:?} residual {residual}");
                    // The output without statistics.
                    let bare = plan(d, level, residual, ChannelStats::None);
                    let mut want_y = vec![0.0; s.y_len];
                    let r = residual.then_some(&c.dy[..]);
                    let w = ConvWeights::Plain(&c.w);
                    bare.forward_fused(&c.x, w, Some(&c.b), r, &mut want_y, None)
                        .unwrap();
                    let conv = plan(d, level, residual, ChannelStats::SumsAndSquares);
                    for packed in [false, true] {
                        let got = run(&conv, &c, residual, packed);
                        assert!(bits(&got.y) == bits(&want_y), "{what}: y changed");
                        for img in 0..n {
                            for ch in 0..co {
                                let vals =
                                    (0..pixels).map(|p| want_y[(img * pixels + p) * co + ch]);
                                let (mut s1, mut s2, mut abs) = (0.0f64, 0.0f64, 0.0f64);
                                for v in vals {
                                    let v = f64::from(v);
                                    (s1, s2, abs) = (s1 + v, s2 + v * v, abs + v.abs());
                                }
                                let k = img * co + ch;
                                let e1 = (got.sums[k] - s1).abs() / abs.max(1e-30);
                                let e2 = (got.squares[k] - s2).abs() / s2.max(1e-30);
                                assert!(
                                    e1 < 1e-5,
                                    "{what}: sum [{img}][{ch}] {} vs {s1}",
                                    got.sums[k]
                                );
                                assert!(
                                    e2 < 1e-5,
                                    "{what}: square [{img}][{ch}] {} vs {s2}",
                                    got.squares[k]
                                );
                            }
                        }
                    }
                    // Sums alone (unshifted) agree with those taken beside the squares
                    // (shifted by each row's first pixel) to f32 rounding.
                    let alone = plan(d, level, residual, ChannelStats::Sums);
                    let nc = n * co;
                    let mut sums = vec![f64::NAN; nc];
                    let mut y = vec![0.0; s.y_len];
                    let args = PostArgs {
                        scale: None,
                        residual: r,
                        sums: Some(&mut sums),
                        squares: None,
                        pre: None,
                    };
                    alone
                        .forward_post(&c.x, w, Some(&c.b), args, &mut y, None)
                        .unwrap();
                    let both = run(&conv, &c, residual, false);
                    for (k, (a, b)) in sums.iter().zip(&both.sums).enumerate() {
                        let scale = 1.0 + b.abs();
                        assert!(
                            (a - b).abs() < 1e-5 * scale,
                            "{what}: sum {k} alone {a} vs {b}"
                        );
                    }
                }
            });
        }
    }
}

#[test]
fn statistics_are_the_same_bits_for_any_thread_count() {
    for (i, d) in stat_shapes().iter().enumerate() {
        let c = ConvCase::new(d, 4300 + i as u64);
        for level in levels() {
            let results: Vec<Run> = [1, 2, 3, 8]
                .into_iter()
                .map(|t| {
                    in_pool(t, || {
                        with_level(level, || {
                            let conv = plan(d, level, true, ChannelStats::SumsAndSquares);
                            run(&conv, &c, true, false)
                        })
                    })
                })
                .collect();
            for r in &results[1..] {
                let what = format!("{level} {d:?}");
                assert!(bits(&r.y) == bits(&results[0].y), "{what}: y");
                assert!(bits(&r.sums) == bits(&results[0].sums), "{what}: sums");
                assert!(
                    bits(&r.squares) == bits(&results[0].squares),
                    "{what}: squares"
                );
            }
        }
    }
}

#[test]
fn statistics_misuse_is_a_typed_error() {
    let d = ConvDesc::depthwise(2, (8, 8), 16, 3, 1);
    let c = ConvCase::new(&d, 2);
    let nc = 2 * 16;
    let level = effnet::simd::active();
    let both = plan(&d, level, false, ChannelStats::SumsAndSquares);
    let sums_only = plan(&d, level, false, ChannelStats::Sums);
    let none = plan(&d, level, false, ChannelStats::None);
    let w = ConvWeights::Plain(&c.w);
    let mut y = vec![0.0; c.shape.y_len];
    let (mut s, mut q) = (vec![0.0f64; nc], vec![0.0f64; nc]);
    let mut call = |conv: &Conv2d, sums: Option<&mut [f64]>, squares: Option<&mut [f64]>| {
        let args = PostArgs {
            scale: None,
            residual: None,
            sums,
            squares,
            pre: None,
        };
        conv.forward_post(&c.x, w, None, args, &mut y, None)
    };
    let invalid = |r: effnet::Result<()>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(invalid(call(&both, Some(&mut s), None)), "squares missing");
    assert!(invalid(call(&both, None, Some(&mut q))), "sums missing");
    assert!(
        invalid(call(&sums_only, Some(&mut s), Some(&mut q))),
        "squares not asked"
    );
    assert!(invalid(call(&none, Some(&mut s), None)), "sums not asked");
    assert!(matches!(
        call(&sums_only, Some(&mut s[1..]), None),
        Err(Error::BufferSize { name: "sums", .. })
    ));
    assert!(matches!(
        call(&both, Some(&mut s), Some(&mut q[..nc - 1])),
        Err(Error::BufferSize {
            name: "squares",
            ..
        })
    ));
    assert!(call(&both, Some(&mut s), Some(&mut q)).is_ok());
    // The plain forward entry points cannot return statistics.
    assert!(invalid(sums_only.forward(&c.x, &c.w, None, &mut y)));
    // The statistics' partials are part of the forward workspace.
    let need = sums_only.workspace_len(ConvPass::Forward, 0);
    assert!(need > none.workspace_len(ConvPass::Forward, 0));
    let mut ws = vec![0.0; need - 1];
    let args = PostArgs {
        scale: None,
        residual: None,
        sums: Some(&mut s),
        squares: None,
        pre: None,
    };
    assert!(matches!(
        sums_only.forward_post(&c.x, w, None, args, &mut y, Some(&mut ws)),
        Err(Error::BufferSize {
            name: "workspace",
            ..
        })
    ));
}
