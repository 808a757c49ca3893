//! Oracle tests of the pointwise (1×1) family alone: the three passes against the f64
//! reference on shapes that reach every code path of the GEMM kernels (column
//! remainders of every panel width, several `k` blocks, row remainders, strided
//! grids, several weight-gradient chunks), at every SIMD level; adjoints, finite
//! differences, thread-count determinism and typed errors.

use crate::common::{Rng, dot, in_pool, levels, rel_err};
use effnet::Error;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvFamily, ConvShape, GradMode, reference};
use effnet::simd::SimdLevel;
use effnet::simd::with_level;

/// A plan on the pointwise kernels at `level`.
fn plan_pw(s: &ConvShape, level: SimdLevel) -> Conv2d {
    Conv2d::with_family(&s.desc, ConvFamily::Pointwise, level).unwrap()
}

const TOL: f64 = 2e-5;

fn pw(
    batch: usize,
    (h, w): (usize, usize),
    ci: usize,
    co: usize,
    stride: (usize, usize),
) -> ConvDesc {
    let mut d = ConvDesc::pointwise(batch, (h, w), ci, co);
    d.stride_h = stride.0;
    d.stride_w = stride.1;
    d
}

/// Shapes that cover the kernels' cases.
fn shapes() -> Vec<ConvDesc> {
    vec![
        // Column remainders: 1..=3 vectors of 16 or 8, partial last vectors.
        pw(1, (3, 5), 7, 1, (1, 1)),
        pw(2, (5, 3), 5, 17, (1, 1)),
        pw(1, (7, 7), 16, 40, (1, 1)),
        pw(3, (4, 5), 24, 70, (1, 1)),
        pw(1, (6, 6), 33, 130, (1, 1)),
        pw(2, (3, 3), 12, 200, (1, 1)),
        // More than one `k` block (KC = 256) in every pass.
        pw(1, (5, 4), 300, 24, (1, 1)),
        pw(1, (3, 3), 40, 520, (1, 1)),
        // Strided grids, odd sizes, anisotropic strides.
        pw(2, (9, 9), 16, 48, (2, 2)),
        pw(1, (10, 7), 19, 33, (2, 3)),
        pw(3, (5, 8), 8, 5, (3, 1)),
        pw(1, (1, 9), 3, 16, (1, 2)),
        // Narrow outputs: the weight gradient is computed transposed (AVX-512).
        pw(1, (70, 70), 32, 24, (1, 1)),
        pw(1, (60, 50), 16, 8, (1, 2)),
        // Several weight-gradient chunks (more than 2048 rows).
        pw(2, (41, 37), 8, 12, (1, 1)),
        pw(1, (100, 95), 5, 3, (2, 2)),
    ]
}

#[test]
fn every_pass_matches_the_reference_on_every_level() {
    for (i, d) in shapes().iter().enumerate() {
        let s = d.validate().unwrap();
        assert_eq!(s.family(), ConvFamily::Pointwise, "{d:?}");
        let mut r = Rng::new(40 + i as u64);
        let (x, w, b, dy) = (
            r.vec(s.x_len),
            r.vec(s.w_len),
            r.vec(d.out_channels),
            r.vec(s.y_len),
        );
        let y_ref = reference::forward(&s, &x, &w, Some(&b));
        let y0_ref = reference::forward(&s, &x, &w, None);
        let dx_ref = reference::backward_data(&s, &dy, &w);
        let (dw_ref, db_ref) = reference::backward_weight(&s, &x, &dy);
        for level in levels() {
            let mut y = vec![f32::NAN; s.y_len];
            plan_pw(&s, level)
                .forward(&x, &w, Some(&b), &mut y)
                .unwrap();
            let e = rel_err(&y, &y_ref);
            assert!(e < TOL, "{level} forward {d:?}: {e}");
            plan_pw(&s, level).forward(&x, &w, None, &mut y).unwrap();
            let e = rel_err(&y, &y0_ref);
            assert!(e < TOL, "{level} forward, no bias, {d:?}: {e}");

            // NaN-filled: every element, read pixel or not, must be written.
            let mut dx = vec![f32::NAN; s.x_len];
            plan_pw(&s, level).backward_data(&dy, &w, &mut dx).unwrap();
            let e = rel_err(&dx, &dx_ref);
            assert!(e < TOL, "{level} backward_data {d:?}: {e}");

            let mut dw = vec![f32::NAN; s.w_len];
            let mut db = vec![f32::NAN; d.out_channels];
            plan_pw(&s, level)
                .backward_weight(&x, &dy, &mut dw, Some(&mut db), GradMode::Overwrite)
                .unwrap();
            let e = rel_err(&dw, &dw_ref);
            assert!(e < TOL, "{level} backward_weight {d:?}: {e}");
            let e = rel_err(&db, &db_ref);
            assert!(e < TOL, "{level} bias grad {d:?}: {e}");

            // Accumulate adds to the old contents (weight and bias).
            let mut dw2 = w.clone();
            let mut db2 = b.clone();
            plan_pw(&s, level)
                .backward_weight(&x, &dy, &mut dw2, Some(&mut db2), GradMode::Accumulate)
                .unwrap();
            let want: Vec<f64> = dw_ref.iter().zip(&w).map(|(g, w)| g + *w as f64).collect();
            let e = rel_err(&dw2, &want);
            assert!(e < TOL, "{level} accumulate {d:?}: {e}");
            let want: Vec<f64> = db_ref.iter().zip(&b).map(|(g, b)| g + *b as f64).collect();
            let e = rel_err(&db2, &want);
            assert!(e < TOL, "{level} bias accumulate {d:?}: {e}");
        }
    }
}

#[test]
fn strided_backward_data_zeroes_the_pixels_no_output_reads() {
    let d = pw(1, (7, 6), 4, 3, (3, 2));
    let s = d.validate().unwrap();
    assert_eq!((s.out_h, s.out_w), (3, 3));
    let dy = vec![1.0f32; s.y_len];
    let w = vec![1.0f32; s.w_len];
    for level in levels() {
        let mut dx = vec![f32::NAN; s.x_len];
        plan_pw(&s, level).backward_data(&dy, &w, &mut dx).unwrap();
        for ih in 0..7 {
            for iw in 0..6 {
                let read = ih % 3 == 0 && iw % 2 == 0;
                for c in 0..4 {
                    let v = dx[(ih * 6 + iw) * 4 + c];
                    assert_eq!(v, if read { 3.0 } else { 0.0 }, "{level} ({ih},{iw},{c})");
                }
            }
        }
    }
}

/// ⟨dy, conv(x)⟩ = ⟨convᵀ(dy), x⟩ = ⟨dw(x, dy), w⟩ with the fast kernels alone.
#[test]
fn adjoint_identities_hold() {
    for (i, d) in shapes().iter().enumerate() {
        let s = d.validate().unwrap();
        let mut r = Rng::new(700 + i as u64);
        let (x, w, dy) = (r.vec(s.x_len), r.vec(s.w_len), r.vec(s.y_len));
        for level in levels() {
            let mut y = vec![0.0; s.y_len];
            plan_pw(&s, level).forward(&x, &w, None, &mut y).unwrap();
            let mut dx = vec![0.0; s.x_len];
            plan_pw(&s, level).backward_data(&dy, &w, &mut dx).unwrap();
            let mut dw = vec![0.0; s.w_len];
            plan_pw(&s, level)
                .backward_weight(&x, &dy, &mut dw, None, GradMode::Overwrite)
                .unwrap();
            let lhs = dot(&dy, &y);
            let scale = (dy.len() as f64).sqrt() * (d.in_channels as f64).sqrt();
            assert!(
                (lhs - dot(&dx, &x)).abs() < 1e-4 * scale,
                "{level} {d:?} data"
            );
            assert!(
                (lhs - dot(&dw, &w)).abs() < 1e-4 * scale,
                "{level} {d:?} weight"
            );
        }
    }
}

/// Central differences of L = ⟨dy, conv(x, w) + b⟩ against the backward passes.
#[test]
fn finite_differences_agree_with_backward() {
    for (i, d) in [pw(2, (3, 3), 5, 3, (2, 2)), pw(1, (4, 3), 6, 18, (1, 2))]
        .iter()
        .enumerate()
    {
        let s = d.validate().unwrap();
        let conv = Conv2d::new(d).unwrap();
        let mut r = Rng::new(90 + i as u64);
        let (x, w, b, dy) = (
            r.vec(s.x_len),
            r.vec(s.w_len),
            r.vec(d.out_channels),
            r.vec(s.y_len),
        );
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let mut y = vec![0.0; s.y_len];
            conv.forward(x, w, Some(b), &mut y).unwrap();
            dot(&dy, &y)
        };
        let mut dx = vec![0.0; s.x_len];
        conv.backward_data(&dy, &w, &mut dx).unwrap();
        let mut dw = vec![0.0; s.w_len];
        let mut db = vec![0.0; d.out_channels];
        conv.backward_weight(&x, &dy, &mut dw, Some(&mut db), GradMode::Overwrite)
            .unwrap();
        let h = 1e-2f32;
        let fd = |v: &[f32], j: usize, f: &dyn Fn(&[f32]) -> f64| {
            let mut v = v.to_vec();
            v[j] += h;
            let up = f(&v);
            v[j] -= 2.0 * h;
            let down = f(&v);
            (up - down) / (2.0 * h as f64)
        };
        for (j, g) in dx.iter().enumerate() {
            let want = fd(&x, j, &|x| loss(x, &w, &b));
            assert!(
                (want - *g as f64).abs() < 2e-3,
                "{d:?} dx[{j}]: {want} vs {g}"
            );
        }
        for (j, g) in dw.iter().enumerate() {
            let want = fd(&w, j, &|w| loss(&x, w, &b));
            assert!(
                (want - *g as f64).abs() < 2e-3,
                "{d:?} dw[{j}]: {want} vs {g}"
            );
        }
        for (j, g) in db.iter().enumerate() {
            let want = fd(&b, j, &|b| loss(&x, &w, b));
            assert!(
                (want - *g as f64).abs() < 2e-3,
                "{d:?} db[{j}]: {want} vs {g}"
            );
        }
    }
}

/// Bitwise identical results for 1, 2 and 8 threads, on shapes split into many tasks
/// and (for the weight gradient) several chunks, at every level.
#[test]
fn results_do_not_depend_on_thread_count() {
    let shapes = [
        pw(4, (21, 19), 40, 72, (1, 1)),
        pw(2, (50, 47), 24, 36, (1, 1)),
        pw(2, (50, 47), 48, 24, (1, 1)),
        pw(2, (15, 15), 300, 130, (1, 1)),
        pw(3, (33, 31), 16, 20, (2, 2)),
    ];
    for (i, d) in shapes.iter().enumerate() {
        let s = d.validate().unwrap();
        let mut r = Rng::new(900 + i as u64);
        let (x, w, b, dy) = (
            r.vec(s.x_len),
            r.vec(s.w_len),
            r.vec(d.out_channels),
            r.vec(s.y_len),
        );
        for level in levels() {
            let conv = Conv2d::with_level(d, level).unwrap();
            let run = |threads: usize| {
                in_pool(threads, || {
                    with_level(level, || {
                        let mut y = vec![0.0; s.y_len];
                        conv.forward(&x, &w, Some(&b), &mut y).unwrap();
                        let mut dx = vec![0.0; s.x_len];
                        conv.backward_data(&dy, &w, &mut dx).unwrap();
                        let mut dw = w.clone();
                        let mut db = vec![0.0; d.out_channels];
                        conv.backward_weight(&x, &dy, &mut dw, Some(&mut db), GradMode::Accumulate)
                            .unwrap();
                        [y, dx, dw, db].map(|v| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>())
                    })
                })
            };
            let one = run(1);
            assert!(run(2) == one, "{level} {d:?}: 2 threads differ from 1");
            assert!(run(8) == one, "{level} {d:?}: 8 threads differ from 1");
        }
    }
}

#[test]
fn wrong_buffer_sizes_are_typed_errors() {
    let d = pw(2, (5, 5), 8, 12, (2, 2));
    let s = d.validate().unwrap();
    let level = effnet::simd::active();
    let x = vec![0.0; s.x_len];
    let w = vec![0.0; s.w_len];
    let mut y = vec![0.0; s.y_len];
    let mut dx = vec![0.0; s.x_len];
    let mut dw = vec![0.0; s.w_len];
    let is = |r: Result<(), Error>, want: &str| {
        assert!(
            matches!(r, Err(Error::BufferSize { name, .. }) if name == want),
            "expected a {want} size error"
        )
    };
    is(plan_pw(&s, level).forward(&x[1..], &w, None, &mut y), "x");
    is(
        plan_pw(&s, level).forward(&x, &w[1..], None, &mut y),
        "weight",
    );
    is(
        plan_pw(&s, level).forward(&x, &w, Some(&[0.0; 11]), &mut y),
        "bias",
    );
    is(plan_pw(&s, level).forward(&x, &w, None, &mut y[1..]), "y");
    is(plan_pw(&s, level).backward_data(&y[1..], &w, &mut dx), "dy");
    is(plan_pw(&s, level).backward_data(&y, &w, &mut dx[1..]), "dx");
    is(
        plan_pw(&s, level).backward_weight(&x, &y, &mut dw[1..], None, GradMode::Overwrite),
        "dweight",
    );
    is(
        plan_pw(&s, level).backward_weight(
            &x,
            &y,
            &mut dw,
            Some(&mut [0.0; 3]),
            GradMode::Overwrite,
        ),
        "dbias",
    );
}
