//! Tests of `model::schedule` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::model::schedule::*;

#[test]
fn warmup_and_decays() {
    let s = Schedule::paper(0.1, 5.0);
    assert_eq!(s.lr(0.0), 0.0);
    assert!((s.lr(2.5) - 0.05).abs() < 1e-7);
    assert!((s.lr(5.0) as f64 - 0.1 * 0.97f64.powi(2)).abs() < 1e-7);
    let c = Schedule {
        base: 1.0,
        warmup: 1.0,
        decay: Decay::Cosine { total: 11.0 },
    };
    assert!((c.lr(1.0) - 1.0).abs() < 1e-7);
    assert!((c.lr(6.0) - 0.5).abs() < 1e-6);
    assert!(c.lr(11.0).abs() < 1e-7);
    assert!(Schedule { base: -1.0, ..c }.validate().is_err());
}
