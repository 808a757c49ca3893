//! Tests of `kernels::activation` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::kernels::activation::*;
use effnet::simd::SimdLevel;

#[test]
fn every_level_matches_f64() {
    let x: Vec<f32> = (0..1037)
        .map(|i| (i as f32 - 518.0) * 0.05)
        .chain([0.0, -0.0, 1e-42, -1e-42, 90.0, -90.0, 200.0, -200.0])
        .collect();
    let dy: Vec<f32> = (0..x.len()).map(|i| ((i % 7) as f32 - 3.0) * 0.3).collect();
    for level in SimdLevel::available() {
        for act in [
            Activation::Identity,
            Activation::Relu,
            Activation::Sigmoid,
            Activation::Swish,
        ] {
            let mut y = vec![0.0; x.len()];
            forward_with(level, act, &x, &mut y).unwrap();
            let mut dx = vec![0.0; x.len()];
            backward_with(level, act, &x, &dy, &mut dx).unwrap();
            for i in 0..x.len() {
                let u = x[i] as f64;
                let want = act.value(u);
                assert!(
                    (y[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{level} {act:?} φ({u}) = {} want {want}",
                    y[i]
                );
                let want = dy[i] as f64 * act.derivative(u);
                assert!(
                    (dx[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{level} {act:?} φ'({u}) = {} want {want}",
                    dx[i]
                );
            }
        }
    }
}

#[test]
fn lengths_are_checked() {
    let mut y = [0.0; 2];
    assert!(forward(Activation::Swish, &[1.0; 3], &mut y).is_err());
    assert!(backward(Activation::Swish, &[1.0; 2], &[1.0; 3], &mut y).is_err());
}
