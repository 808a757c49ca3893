//! Tests of `kernels::optim` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::kernels::optim::*;
use effnet::simd::SimdLevel;

fn data(n: usize, k: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ k) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

#[test]
fn sgd_matches_the_formula_on_every_level() {
    let n = 1037;
    let h = SgdMomentum {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-2,
    };
    for level in SimdLevel::available() {
        let (mut p, g, mut m) = (data(n, 1), data(n, 2), data(n, 3));
        let (p0, m0) = (p.clone(), m.clone());
        sgd_momentum_with(level, h, &mut p, &g, &mut m).unwrap();
        for i in 0..n {
            let gd = g[i] as f64 + 1e-2 * p0[i] as f64;
            let mm = 0.9 * m0[i] as f64 + gd;
            assert!((m[i] as f64 - mm).abs() < 1e-5, "{level}");
            assert!(
                (p[i] as f64 - (p0[i] as f64 - 0.1 * mm)).abs() < 1e-5,
                "{level}"
            );
        }
    }
}

#[test]
fn rmsprop_matches_tensorflow_semantics_on_every_level() {
    let n = 517;
    let h = RmsPropTf {
        lr: 0.016,
        decay: 0.9,
        momentum: 0.9,
        eps: 1e-3,
        weight_decay: 1e-5,
    };
    for level in SimdLevel::available() {
        let (mut p, g) = (data(n, 4), data(n, 5));
        let mut ms: Vec<f32> = data(n, 6).iter().map(|v| v.abs() * 3.0 + 1e-4).collect();
        let mut mom = data(n, 7);
        let (p0, ms0, mom0) = (p.clone(), ms.clone(), mom.clone());
        rmsprop_tf_with(level, h, &mut p, &g, &mut ms, &mut mom).unwrap();
        for i in 0..n {
            let gd = g[i] as f64 + 1e-5 * p0[i] as f64;
            let s2 = 0.9 * ms0[i] as f64 + 0.1 * gd * gd;
            let mo = 0.9 * mom0[i] as f64 + 0.016 * gd / (s2 + 1e-3).sqrt();
            assert!((ms[i] as f64 - s2).abs() < 1e-6 * s2.max(1.0), "{level} ms");
            assert!(
                (mom[i] as f64 - mo).abs() < 1e-6,
                "{level} mom {} vs {mo}",
                mom[i]
            );
            assert!(
                (p[i] as f64 - (p0[i] as f64 - mo)).abs() < 1e-6,
                "{level} p"
            );
        }
    }
}

#[test]
fn ema_and_errors() {
    let mut e = vec![1.0f32; 40];
    let p = vec![3.0f32; 40];
    ema_update_with(SimdLevel::Scalar, 0.75, &mut e, &p).unwrap();
    assert!(e.iter().all(|v| (*v - 1.5).abs() < 1e-6));
    assert!(ema_update_with(SimdLevel::Scalar, 1.5, &mut e, &p).is_err());
    assert!(ema_update_with(SimdLevel::Scalar, 0.5, &mut e, &p[1..]).is_err());
    let h = SgdMomentum {
        lr: f32::NAN,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let mut m = vec![0.0; 40];
    assert!(sgd_momentum_with(SimdLevel::Scalar, h, &mut e, &p, &mut m).is_err());
}
