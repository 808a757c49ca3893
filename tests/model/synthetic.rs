//! Tests of `data::synthetic` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::data::synthetic::*;

#[test]
fn deterministic_balanced_and_resolution_independent_labels() {
    let ds = SyntheticShapes::new(8, 3).unwrap();
    let mut a = vec![0.0; 24 * 24 * 3];
    let mut b = vec![0.0; 24 * 24 * 3];
    ds.render(11, 24, &mut a).unwrap();
    ds.render(11, 24, &mut b).unwrap();
    assert_eq!(a, b);
    let mut counts = [0; 8];
    for i in 0..800 {
        counts[ds.label(i)] += 1;
    }
    assert!(counts.iter().all(|&c| c == 100), "{counts:?}");
    let mut big = vec![0.0; 48 * 48 * 3];
    assert_eq!(
        ds.render(5, 48, &mut big).unwrap(),
        ds.render(5, 24, &mut a).unwrap()
    );
}

#[test]
fn images_are_roughly_normalized() {
    let ds = SyntheticShapes::new(8, 9).unwrap();
    let n = 64;
    let res = 32;
    let mut imgs = vec![0.0; n * res * res * 3];
    let mut labels = vec![0; n];
    let idx: Vec<u64> = (0..n as u64).collect();
    ds.render_batch(&idx, res, &mut imgs, &mut labels).unwrap();
    let mean = imgs.iter().map(|&v| v as f64).sum::<f64>() / imgs.len() as f64;
    let var = imgs.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / imgs.len() as f64;
    assert!(
        mean.abs() < 0.3 && (0.3..3.0).contains(&var),
        "mean {mean} var {var}"
    );
}

#[test]
fn bad_arguments_are_errors() {
    assert!(SyntheticShapes::new(1, 0).is_err());
    assert!(SyntheticShapes::new(9, 0).is_err());
    let ds = SyntheticShapes::new(4, 0).unwrap();
    assert!(ds.render(0, 8, &mut [0.0; 10]).is_err());
    assert!(ds.render(0, 0, &mut []).is_err());
}
