//! Tests of `kernels::reduce` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::kernels::reduce::*;
use effnet::simd::SimdLevel;

#[test]
fn column_sums_match_f64_on_every_level() {
    for cols in [1, 3, 17, 70] {
        let rows = 531;
        let m: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let mut want = vec![0.0f64; cols];
        for (i, v) in m.iter().enumerate() {
            want[i % cols] += *v as f64;
        }
        for level in SimdLevel::available() {
            let mut out = vec![1.0f32; cols];
            column_sums(level, &m, &mut out, true);
            for (o, w) in out.iter().zip(&want) {
                assert!(
                    (*o as f64 - 1.0 - w).abs() < 1e-3,
                    "{level} cols {cols}: {o} vs {w}"
                );
            }
        }
    }
}

#[test]
fn sum_rows_adds_rows_in_order() {
    let rows = [1.0f64, 2.0, 10.0, 20.0, 100.0, 200.0];
    let mut out = [f64::NAN; 2];
    sum_rows(&rows, &mut out);
    assert_eq!(out, [111.0, 222.0]);
    let mut none: [f32; 0] = [];
    sum_rows(&[], &mut none);
}
