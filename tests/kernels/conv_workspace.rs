//! Caller-owned workspaces for the convolution passes: with a workspace of exactly
//! `workspace_len` floats (stale contents), every pass of every family gives the
//! allocating pass's bits, at every SIMD level and thread count; a short workspace is a
//! typed error naming it; the thread count the size was queried for is honoured.

use crate::common::conv::{ConvCase, Passes, fixed_shapes, stale_workspace};
use crate::common::{in_pool, levels};
use effnet::Error;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvPass, GradMode};
use effnet::simd::with_level;

const PASSES: [ConvPass; 3] = [
    ConvPass::Forward,
    ConvPass::BackwardData,
    ConvPass::BackwardWeight,
];

/// The named shapes of `tests/conv.rs`, plus pointwise shapes that take every region
/// of the weight-gradient workspace: several row chunks, the transposed product
/// (16 → 24 channels) and the gathered strided input.
fn shapes() -> Vec<ConvDesc> {
    let mut v = fixed_shapes();
    v.push(ConvDesc::pointwise(2, (40, 40), 16, 24));
    v.push(ConvDesc::pointwise(2, (81, 81), 16, 24).with_stride(2));
    v.push(ConvDesc::pointwise(1, (50, 50), 40, 8));
    v
}

#[test]
fn workspace_passes_give_the_allocating_bits_at_every_level() {
    for (i, d) in shapes().iter().enumerate() {
        let c = ConvCase::new(d, 4000 + i as u64);
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap();
            with_level(level, || {
                let want = c.run(&Passes::Plan(&conv)).bits();
                assert!(
                    c.run(&Passes::Workspace(&conv)).bits() == want,
                    "{level} {d:?}: the workspace passes differ from the allocating ones"
                );
                // Every pass of every family takes scratch from the workspace.
                for pass in PASSES {
                    assert!(conv.workspace_len(pass, 1) > 0, "{level} {d:?} {pass:?}");
                }
            });
        }
    }
}

#[test]
fn workspace_passes_give_the_same_bits_for_any_thread_count() {
    // One shape per family with per-worker regions in use by several tasks at once
    // (rings, padded copies) and several weight-gradient chunks.
    let shapes = [
        ConvDesc::pointwise(2, (81, 81), 16, 24).with_stride(2),
        ConvDesc::depthwise(2, (41, 43), 40, 5, 2),
        ConvDesc::depthwise(2, (36, 36), 24, 3, 1),
        ConvDesc::new(2, (28, 27), 64, 64, (3, 3))
            .with_group_size(16)
            .with_symmetric_padding(),
        ConvDesc::new(2, (15, 15), 40, 40, (5, 5))
            .with_group_size(8)
            .with_stride(2)
            .with_tf_same_padding(),
    ];
    for (i, d) in shapes.iter().enumerate() {
        let c = ConvCase::new(d, 77 + i as u64);
        let conv = Conv2d::new(d).unwrap();
        let one = in_pool(1, || c.run(&Passes::Workspace(&conv)).bits());
        for t in [2, 8] {
            assert!(
                in_pool(t, || c.run(&Passes::Workspace(&conv)).bits()) == one,
                "{d:?}: {t} threads differ from 1"
            );
        }
    }
}

/// Runs `pass` of `c` with the workspace `ws` (operands from `case`).
fn run_pass(
    conv: &Conv2d,
    case: &ConvCase,
    pass: ConvPass,
    ws: &mut [f32],
) -> effnet::Result<Vec<u32>> {
    let s = conv.shape();
    let out = match pass {
        ConvPass::Forward => {
            let mut y = vec![0.0; s.y_len];
            conv.forward_with_workspace(&case.x, &case.w, Some(&case.b), &mut y, ws)?;
            y
        }
        ConvPass::BackwardData => {
            let mut dx = vec![0.0; s.x_len];
            conv.backward_data_with_workspace(&case.dy, &case.w, &mut dx, ws)?;
            dx
        }
        ConvPass::BackwardWeight => {
            let mut dw = vec![0.0; s.w_len];
            let mut db = vec![0.0; s.desc.out_channels];
            let mode = GradMode::Overwrite;
            conv.backward_weight_with_workspace(
                &case.x,
                &case.dy,
                &mut dw,
                Some(&mut db),
                mode,
                ws,
            )?;
            dw.extend(db);
            dw
        }
    };
    Ok(out.iter().map(|v| v.to_bits()).collect())
}

#[test]
fn a_short_workspace_is_a_typed_error_and_a_larger_or_unaligned_one_works() {
    let mut checked = 0;
    for (i, d) in shapes().iter().enumerate() {
        let case = ConvCase::new(d, 5000 + i as u64);
        let conv = Conv2d::new(d).unwrap();
        for pass in PASSES {
            let mut exact = stale_workspace(&conv, pass);
            let len = exact.len();
            let want = run_pass(&conv, &case, pass, &mut exact).unwrap();
            if len > 0 {
                checked += 1;
                let mut short = vec![0.0; len - 1];
                assert_eq!(
                    run_pass(&conv, &case, pass, &mut short),
                    Err(Error::BufferSize {
                        name: "workspace",
                        expected: len,
                        actual: len - 1
                    }),
                    "{d:?} {pass:?}"
                );
            }
            // Larger, and starting off any 64-byte boundary: the same bits.
            let mut big = vec![f32::NAN; len + 37];
            for skip in [1, 3, 17] {
                let got = run_pass(&conv, &case, pass, &mut big[skip..]).unwrap();
                assert!(got == want, "{d:?} {pass:?}: offset {skip} differs");
            }
        }
    }
    assert!(checked >= 9, "only {checked} passes need a workspace");
}

#[test]
fn buffer_errors_come_before_workspace_errors() {
    let d = ConvDesc::pointwise(1, (6, 6), 16, 24);
    let conv = Conv2d::new(&d).unwrap();
    let s = *conv.shape();
    let (x, w) = (vec![0.0; s.x_len - 1], vec![0.0; s.w_len]);
    let mut y = vec![0.0; s.y_len];
    let e = conv
        .forward_with_workspace(&x, &w, None, &mut y, &mut [])
        .unwrap_err();
    assert!(matches!(e, Error::BufferSize { name: "x", .. }), "{e:?}");
}

/// A workspace sized for one thread is short for a larger pool exactly when the pass
/// has per-worker regions; sized for more threads, it serves a smaller pool.
#[test]
fn the_thread_count_of_the_query_is_honoured() {
    for (i, d) in shapes().iter().enumerate() {
        let case = ConvCase::new(d, 6000 + i as u64);
        let conv = Conv2d::new(d).unwrap();
        for pass in PASSES {
            let (l1, l4) = (conv.workspace_len(pass, 1), conv.workspace_len(pass, 4));
            assert!(l4 >= l1);
            let want = in_pool(1, || run_pass(&conv, &case, pass, &mut vec![0.0; l1])).unwrap();
            let got = in_pool(4, || run_pass(&conv, &case, pass, &mut vec![0.0; l1]));
            if l4 > l1 {
                assert!(
                    matches!(
                        got,
                        Err(Error::BufferSize {
                            name: "workspace",
                            ..
                        })
                    ),
                    "{d:?} {pass:?}: {got:?}"
                );
            } else {
                assert!(got.unwrap() == want, "{d:?} {pass:?}");
            }
            let got = in_pool(2, || run_pass(&conv, &case, pass, &mut vec![0.0; l4])).unwrap();
            assert!(
                got == want,
                "{d:?} {pass:?}: 4-thread workspace in a 2-thread pool"
            );
            // 0 means the current pool.
            assert_eq!(in_pool(4, || conv.workspace_len(pass, 0)), l4);
        }
    }
}

/// Weights packed once give the forward pass's bits (with and without bias, stale
/// workspace and stale packed buffer, at every SIMD level), and the same packed
/// buffer serves repeated calls.
#[test]
fn packed_weights_give_the_forward_bits_at_every_level() {
    for (i, d) in shapes().iter().enumerate() {
        let c = ConvCase::new(d, 7000 + i as u64);
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap();
            let s = *conv.shape();
            with_level(level, || {
                let mut packed = vec![f32::NAN; conv.packed_weights_len() + 5];
                conv.pack_weights(&c.w, &mut packed).unwrap();
                for bias in [Some(&c.b[..]), None] {
                    let mut want = vec![0.0; s.y_len];
                    conv.forward(&c.x, &c.w, bias, &mut want).unwrap();
                    for _ in 0..2 {
                        let mut ws = stale_workspace(&conv, ConvPass::Forward);
                        let mut y = vec![f32::NAN; s.y_len];
                        conv.forward_packed(&c.x, &packed, bias, &mut y, &mut ws)
                            .unwrap();
                        assert!(
                            bits(&y) == bits(&want),
                            "{level} {d:?} bias {}: packed forward differs",
                            bias.is_some()
                        );
                    }
                }
            });
        }
    }
}

/// Packed weights are checked before use: short, never packed, packed for another
/// shape or at another SIMD level are typed errors, as are bad operand lengths.
#[test]
fn packed_weights_are_checked() {
    let a = Conv2d::new(&ConvDesc::depthwise(1, (9, 9), 24, 3, 1)).unwrap();
    let b = Conv2d::new(&ConvDesc::depthwise(1, (9, 9), 24, 3, 2)).unwrap();
    let p = Conv2d::new(&ConvDesc::pointwise(1, (5, 5), 24, 24)).unwrap();
    let case = ConvCase::new(&a.shape().desc, 1);
    let s = *a.shape();
    let mut ws = vec![0.0; a.workspace_len(ConvPass::Forward, 0)];
    let mut y = vec![0.0; s.y_len];
    let len = a.packed_weights_len();
    let mut packed = vec![0.0; len];
    // Never packed.
    let e = a.forward_packed(&case.x, &packed, None, &mut y, &mut ws);
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    // Short, for packing and for use.
    assert_eq!(
        a.pack_weights(&case.w, &mut packed[..len - 1]),
        Err(Error::BufferSize {
            name: "packed weights",
            expected: len,
            actual: len - 1
        })
    );
    assert!(matches!(
        a.pack_weights(&case.w[1..], &mut packed),
        Err(Error::BufferSize { name: "weight", .. })
    ));
    a.pack_weights(&case.w, &mut packed).unwrap();
    assert!(matches!(
        a.forward_packed(&case.x, &packed[..len - 1], None, &mut y, &mut ws),
        Err(Error::BufferSize {
            name: "packed weights",
            ..
        })
    ));
    assert!(
        a.forward_packed(&case.x, &packed, None, &mut y, &mut ws)
            .is_ok()
    );
    // Bad operands.
    assert!(matches!(
        a.forward_packed(&case.x[1..], &packed, None, &mut y, &mut ws),
        Err(Error::BufferSize { name: "x", .. })
    ));
    assert!(matches!(
        a.forward_packed(&case.x, &packed, Some(&case.b[1..]), &mut y, &mut ws),
        Err(Error::BufferSize { name: "bias", .. })
    ));
    // Packed for another plan of the same weight length, or another family.
    let mut yb = vec![0.0; b.shape().y_len];
    let e = b.forward_packed(&case.x, &packed, None, &mut yb, &mut ws);
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    let mut pp = vec![0.0; p.packed_weights_len().max(len)];
    let e = p.forward_packed(
        &vec![0.0; p.shape().x_len],
        &pp,
        None,
        &mut vec![0.0; p.shape().y_len],
        &mut [],
    );
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    pp[..len].copy_from_slice(&packed);
    let e = p.forward_packed(
        &vec![0.0; p.shape().x_len],
        &pp,
        None,
        &mut vec![0.0; p.shape().y_len],
        &mut [],
    );
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    // Packed at another SIMD level: a plan of the same shape made at that level
    // rejects them.
    for other in levels().into_iter().filter(|&l| l != a.level()) {
        let a2 = Conv2d::with_level(&a.shape().desc, other).unwrap();
        assert_eq!(a2.level(), other);
        let mut ws = vec![0.0; a2.workspace_len(ConvPass::Forward, 0)];
        let e = a2.forward_packed(&case.x, &packed, None, &mut y, &mut ws);
        assert!(
            matches!(e, Err(Error::InvalidArgument(_))),
            "{other}: {e:?}"
        );
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
