//! Oracle tests for the grouped / dense k×k kernels called directly (they accept any
//! valid descriptor, so these also cover shapes the plan routes to other families):
//! every pass at every SIMD level against the f64 reference, adjoints, finite
//! differences, accumulate mode, and bitwise determinism for 1, 2 and 8 threads on
//! shapes large enough to split into several chunks and group blocks.

use crate::common::conv::{ConvCase, ConvOutputs, Passes};
use crate::common::{at_level_every_tile, dot, in_pool, levels, proptest_cases, rel_err};
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvFamily, GradMode, Padding};
use effnet::simd::{self, with_level};
use proptest::prelude::*;

const TOL: f64 = 2e-5;

/// A plan on the grouped kernels (they run any valid descriptor) at the active level.
fn grouped(d: &ConvDesc) -> Conv2d {
    Conv2d::with_family(d, ConvFamily::Grouped, simd::active()).unwrap()
}

fn run_all(c: &ConvCase) -> ConvOutputs {
    c.run(&Passes::Plan(&grouped(&c.shape.desc)))
}

fn check(d: &ConvDesc, seed: u64) -> Result<(), TestCaseError> {
    let c = ConvCase::new(d, seed);
    let refs = c.references();
    for level in levels() {
        for (tiles, o) in at_level_every_tile(level, |t| (t.to_string(), run_all(&c))) {
            for (name, e) in o.errors(&refs, rel_err) {
                prop_assert!(e < TOL, "{level} {tiles} {name} {d:?}: rel err {e}");
            }
        }
    }
    Ok(())
}

fn padding(kh: usize, kw: usize, dil: usize) -> impl Strategy<Value = Padding> {
    let sh = dil * (kh - 1) + 1;
    let sw = dil * (kw - 1) + 1;
    (0..sh, 0..sh, 0..sw, 0..sw).prop_map(|(top, bottom, left, right)| Padding {
        top,
        bottom,
        left,
        right,
    })
}

/// Random valid descriptors: any group size and channels-per-group ratio, kernels
/// 1–7 (rectangular too), strides 1–3, dilation 1–2, four-sided padding.
fn desc() -> impl Strategy<Value = ConvDesc> {
    (
        (1usize..=7, 1usize..=7),
        prop_oneof![4 => Just(1usize), 1 => Just(2usize)],
        (1usize..=3, 1usize..=3),
        1usize..=2,
        (1usize..=12, 1usize..=14),
        (
            prop_oneof![
                Just(1usize),
                Just(2),
                Just(3),
                Just(5),
                Just(8),
                Just(16),
                Just(32)
            ],
            1usize..=3,
            prop_oneof![
                Just(1usize),
                Just(2),
                Just(3),
                Just(7),
                Just(8),
                Just(16),
                Just(17),
                Just(24),
                Just(32),
                Just(48)
            ],
        ),
    )
        .prop_flat_map(|((kh, kw), dil, stride, batch, (h, w), chans)| {
            (
                Just((kh, kw, dil, stride, batch, h, w, chans)),
                padding(kh, kw, dil),
            )
        })
        .prop_map(
            |((kh, kw, dil, (sh, sw), batch, h, w, (gs, groups, cog)), pad)| {
                let mut d = ConvDesc::new(batch, (h, w), gs * groups, cog * groups, (kh, kw))
                    .with_group_size(gs)
                    .with_dilation(dil)
                    .with_padding(pad);
                d.stride_h = sh;
                d.stride_w = sw;
                d
            },
        )
        .prop_filter("valid descriptor", |d| d.validate().is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(64), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn grouped_kernels_match_reference(d in desc(), seed in any::<u64>()) {
        check(&d, seed)?;
    }
}

fn g(
    batch: usize,
    hw: (usize, usize),
    cin: usize,
    cout: usize,
    k: (usize, usize),
    gs: usize,
) -> ConvDesc {
    ConvDesc::new(batch, hw, cin, cout, k).with_group_size(gs)
}

/// The shapes the fast paths are for, and their awkward neighbours.
fn fixed_shapes() -> Vec<ConvDesc> {
    let mut v = Vec::new();
    for gs in [8, 16, 32] {
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
            v.push(
                g(2, (11, 9), gs * 3, gs * 3, (k, k), gs)
                    .with_stride(s)
                    .with_symmetric_padding(),
            );
            v.push(
                g(1, (9, 12), gs * 2, gs * 2, (k, k), gs)
                    .with_stride(s)
                    .with_tf_same_padding(),
            );
        }
    }
    v.extend([
        // The stem (3×3 stride 2, 3 → 32), both paddings, odd and even sizes.
        g(2, (17, 15), 3, 32, (3, 3), 3)
            .with_stride(2)
            .with_tf_same_padding(),
        g(1, (16, 20), 3, 32, (3, 3), 3)
            .with_stride(2)
            .with_symmetric_padding(),
        // Dense k×k, wide outputs (several vectors per tile).
        g(1, (7, 8), 24, 64, (3, 3), 24).with_symmetric_padding(),
        g(1, (6, 7), 5, 48, (3, 3), 5).with_stride(2),
        // Output channels per group differing from the group size.
        g(2, (8, 9), 32, 48, (3, 3), 16).with_symmetric_padding(),
        g(1, (9, 9), 32, 8, (5, 5), 16)
            .with_stride(2)
            .with_symmetric_padding(),
        g(1, (7, 6), 15, 35, (3, 3), 3).with_symmetric_padding(),
        // Channel multiplier (group size 1, C_out = 3·C_in).
        g(2, (7, 9), 5, 15, (3, 3), 1).with_symmetric_padding(),
        // Grouped 1×1 and padded 1×1.
        g(2, (5, 6), 32, 32, (1, 1), 16),
        g(1, (5, 6), 7, 9, (1, 1), 7)
            .with_padding(Padding::symmetric(0))
            .with_stride(2),
        g(1, (4, 5), 6, 10, (2, 2), 6).with_padding(Padding {
            top: 1,
            bottom: 0,
            left: 1,
            right: 1,
        }),
        // Dilation, stride 3, rectangular kernels, asymmetric padding.
        g(1, (13, 11), 16, 16, (3, 3), 16)
            .with_dilation(2)
            .with_symmetric_padding(),
        g(2, (11, 13), 6, 9, (3, 5), 2)
            .with_stride(3)
            .with_padding(Padding {
                top: 2,
                bottom: 0,
                left: 0,
                right: 4,
            }),
        g(1, (9, 10), 16, 16, (5, 3), 16)
            .with_stride(2)
            .with_dilation(2),
        // Stride larger than the kernel (some input pixels get no gradient).
        g(1, (9, 9), 4, 4, (2, 2), 2).with_stride(3),
        // A one-pixel image with padding.
        g(3, (1, 1), 16, 16, (3, 3), 16).with_symmetric_padding(),
    ]);
    v
}

#[test]
fn fixed_shapes_match_reference() {
    for (i, d) in fixed_shapes().iter().enumerate() {
        check(d, 4000 + i as u64).unwrap();
    }
}

/// ⟨dy, conv(x)⟩ = ⟨convᵀ(dy), x⟩ = ⟨dw(x, dy), w⟩ with the fast kernels alone.
#[test]
fn adjoint_identities_hold() {
    for (i, d) in fixed_shapes().iter().enumerate() {
        let mut c = ConvCase::new(d, 600 + i as u64);
        c.b.fill(0.0);
        for level in levels() {
            with_level(level, || {
                let o = run_all(&c);
                let lhs = dot(&c.dy, &o.y);
                let tol = 1e-4 * c.dy.len() as f64;
                assert!((lhs - dot(&o.dx, &c.x)).abs() < tol, "{level} {d:?} data");
                assert!((lhs - dot(&o.dw, &c.w)).abs() < tol, "{level} {d:?} weight");
            });
        }
    }
}

/// Central differences of L = ⟨dy, conv(x, w) + b⟩ against the backward passes.
#[test]
fn finite_differences_agree_with_backward() {
    let tiny = [
        g(1, (5, 6), 4, 6, (3, 3), 2)
            .with_stride(2)
            .with_padding(Padding {
                top: 1,
                bottom: 2,
                left: 0,
                right: 1,
            }),
        g(2, (4, 4), 3, 5, (2, 3), 3)
            .with_dilation(2)
            .with_padding(Padding {
                top: 1,
                bottom: 1,
                left: 2,
                right: 0,
            }),
    ];
    for (i, d) in tiny.iter().enumerate() {
        let c = ConvCase::new(d, 700 + i as u64);
        let s = c.shape;
        let conv = grouped(d);
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.y_len];
            conv.forward(x, w, Some(b), &mut y).unwrap();
            dot(&c.dy, &y)
        };
        let o = run_all(&c);
        let h = 1e-2f32;
        let fd = |v: &[f32], j: usize, f: &dyn Fn(&[f32]) -> f64| {
            let mut v = v.to_vec();
            v[j] += h;
            let up = f(&v);
            v[j] -= 2.0 * h;
            let down = f(&v);
            (up - down) / (2.0 * h as f64)
        };
        for (name, base, grad) in [
            ("dx", &c.x, &o.dx),
            ("dw", &c.w, &o.dw),
            ("db", &c.b, &o.db),
        ] {
            for (j, &got) in grad.iter().enumerate() {
                let num = fd(base, j, &|v| match name {
                    "dx" => loss(v, &c.w, &c.b),
                    "dw" => loss(&c.x, v, &c.b),
                    _ => loss(&c.x, &c.w, v),
                });
                assert!(
                    (num - got as f64).abs() < 2e-3,
                    "{d:?} {name}[{j}]: fd {num} vs {got}"
                );
            }
        }
    }
}

/// Bitwise identical results for 1, 2 and 8 threads, at every level, on shapes that
/// split into several tasks, chunks and group blocks.
#[test]
fn results_do_not_depend_on_thread_count() {
    let shapes = [
        g(2, (30, 27), 64, 64, (3, 3), 16).with_symmetric_padding(),
        g(3, (20, 21), 96, 96, (5, 5), 16)
            .with_stride(2)
            .with_symmetric_padding(),
        g(4, (9, 9), 256, 256, (3, 3), 16).with_symmetric_padding(),
        g(2, (60, 50), 3, 32, (3, 3), 3)
            .with_stride(2)
            .with_tf_same_padding(),
        g(2, (23, 25), 24, 36, (3, 3), 8).with_symmetric_padding(),
        // 5×5 stride 1 with rows wider than one sliding tile.
        g(2, (13, 37), 48, 48, (5, 5), 16).with_symmetric_padding(),
    ];
    for (i, d) in shapes.iter().enumerate() {
        let c = ConvCase::new(d, 900 + i as u64);
        for level in levels() {
            at_level_every_tile(level, |tiles| {
                let run = |threads: usize| in_pool(threads, || run_all(&c).bits());
                let one = run(1);
                assert!(
                    run(2) == one,
                    "{level} {tiles} {d:?}: 2 threads differ from 1"
                );
                assert!(
                    run(8) == one,
                    "{level} {tiles} {d:?}: 8 threads differ from 1"
                );
            });
        }
    }
}

/// Larger layers against the reference: many tasks and bands, full tiles, both
/// strides, weight-gradient chunks that straddle images, and more than 256 input
/// channels (the weight gradient then reads a copy rather than the input in place).
#[test]
fn g16_layers_match_reference() {
    for (i, d) in [
        g(2, (28, 28), 64, 64, (3, 3), 16).with_symmetric_padding(),
        g(2, (28, 28), 64, 64, (5, 5), 16)
            .with_stride(2)
            .with_symmetric_padding(),
        g(1, (34, 34), 3, 32, (3, 3), 3)
            .with_stride(2)
            .with_symmetric_padding(),
        g(5, (20, 41), 32, 32, (3, 3), 16).with_symmetric_padding(),
        g(1, (7, 6), 272, 272, (5, 5), 16).with_symmetric_padding(),
        g(1, (9, 8), 272, 272, (3, 3), 16)
            .with_stride(2)
            .with_symmetric_padding(),
        // Rows wider than one sliding tile (uneven splits), 5×5 at both strides and
        // an odd width, TF-SAME padding.
        g(1, (6, 37), 32, 32, (5, 5), 16).with_symmetric_padding(),
        g(1, (7, 45), 32, 32, (5, 5), 16)
            .with_stride(2)
            .with_tf_same_padding(),
    ]
    .iter()
    .enumerate()
    {
        check(d, 50 + i as u64).unwrap();
    }
}

#[test]
fn wrong_buffer_sizes_are_typed_errors() {
    use effnet::Error;
    let conv = grouped(&g(1, (8, 8), 32, 32, (3, 3), 16).with_symmetric_padding());
    let s = *conv.shape();
    let x = vec![0.0; s.x_len];
    let w = vec![0.0; s.w_len];
    let mut y = vec![0.0; s.y_len];
    assert!(matches!(
        conv.forward(&x[1..], &w, None, &mut y),
        Err(Error::BufferSize { name: "x", .. })
    ));
    let mut dx = vec![0.0; s.x_len + 1];
    assert!(matches!(
        conv.backward_data(&y, &w, &mut dx),
        Err(Error::BufferSize { name: "dx", .. })
    ));
    let mut dw = vec![0.0; s.w_len];
    let mut db = vec![0.0; 3];
    assert!(matches!(
        conv.backward_weight(&x, &y, &mut dw, Some(&mut db), GradMode::Overwrite),
        Err(Error::BufferSize { name: "dbias", .. })
    ));
}

/// The sliding-window switch reaches the plan: at AVX-512 a G16 5×5 layer and the stem
/// run different tiles with it on and off (the sums round differently), and both
/// match the reference.
#[test]
fn sliding_tile_switch_changes_the_tiles() {
    use effnet::kernels::conv::with_sliding_tiles;
    if !levels().contains(&simd::SimdLevel::Avx512) {
        return;
    }
    for (i, d) in [
        g(1, (9, 20), 32, 32, (5, 5), 16).with_symmetric_padding(),
        g(1, (17, 30), 3, 32, (3, 3), 3)
            .with_stride(2)
            .with_symmetric_padding(),
    ]
    .iter()
    .enumerate()
    {
        let c = ConvCase::new(d, 70 + i as u64);
        let refs = c.references();
        let [on, off] = [true, false]
            .map(|s| with_sliding_tiles(s, || with_level(simd::SimdLevel::Avx512, || run_all(&c))));
        for o in [&on, &off] {
            for (name, e) in o.errors(&refs, rel_err) {
                assert!(e < TOL, "{name} {d:?}: rel err {e}");
            }
        }
        assert!(on.bits() != off.bits(), "{d:?}: the switch changed nothing");
    }
}
