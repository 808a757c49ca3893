//! Tests of `report::progress` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::report::progress::*;
use std::time::Duration;

#[test]
fn counts_and_running_loss() {
    let mut p = Progress::hidden(10, "t");
    assert!(!p.is_visible());
    assert_eq!(p.running_loss(), None);
    assert_eq!(p.images_per_second(), 0.0);
    p.step(8, 2.0);
    // Bias-corrected: the first value is the loss itself.
    assert!((p.running_loss().unwrap() - 2.0).abs() < 1e-6);
    p.step(8, 1.0);
    // (0.9·0.1·2 + 0.1·1) / (1 − 0.81) = 0.28 / 0.19
    assert!((p.running_loss().unwrap() - 0.28 / 0.19).abs() < 1e-6);
    for _ in 0..200 {
        p.step(8, 0.5);
    }
    assert!((p.running_loss().unwrap() - 0.5).abs() < 1e-6);
    std::thread::sleep(Duration::from_millis(2));
    let s = p.finish();
    assert_eq!((s.steps, s.images), (202, 1616));
    assert!(s.images_per_second > 0.0 && s.images_per_second.is_finite());
    assert!(s.seconds > 0.0);
}

#[test]
fn quiet_is_hidden_and_constant_loss_stays_constant() {
    let mut p = Progress::new(5, "quiet", true);
    assert!(!p.is_visible());
    for _ in 0..5 {
        p.step(1, 0.75);
    }
    assert!((p.running_loss().unwrap() - 0.75).abs() < 1e-6);
    assert_eq!(p.suspend(|| 3), 3);
}
