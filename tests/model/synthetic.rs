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
    ds.render_batch(&idx, res, None, &mut imgs, &mut labels)
        .unwrap();
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

/// The whole-image view is the plain render; a window is the same drawing seen closer:
/// the top-left half-side window at `res` shows what the whole image shows in its
/// top-left quarter at `2·res` (same pattern values, up to the per-pixel noise).
#[test]
fn views_are_windows_of_the_same_continuous_image() {
    let ds = SyntheticShapes::new(8, 5).unwrap();
    for index in [0u64, 3, 6, 7] {
        let mut plain = vec![0.0; 16 * 16 * 3];
        let mut full = vec![0.0; 16 * 16 * 3];
        ds.render(index, 16, &mut plain).unwrap();
        ds.render_view(index, 16, View::FULL, &mut full).unwrap();
        assert_eq!(plain, full);
        let half = View {
            left: 0.0,
            top: 0.0,
            side: 0.5,
        };
        let mut win = vec![0.0; 16 * 16 * 3];
        let mut big = vec![0.0; 32 * 32 * 3];
        ds.render_view(index, 16, half, &mut win).unwrap();
        ds.render(index, 32, &mut big).unwrap();
        // Pixel (x, y) of the window samples the point of pixel (x, y) of the big image;
        // the noise (±0.15 before the /0.3 scaling, so ±0.5) is drawn per pixel index.
        let mut worst = 0.0f32;
        for y in 0..16 {
            for x in 0..16 {
                for c in 0..3 {
                    let a = win[(y * 16 + x) * 3 + c];
                    let b = big[(y * 32 + x) * 3 + c];
                    worst = worst.max((a - b).abs());
                }
            }
        }
        assert!(worst <= 1.0 + 1e-4, "index {index}: {worst}");
        // And the window differs from the whole image at the same resolution.
        assert_ne!(win, plain, "index {index}");
    }
    let bad = View {
        left: 0.0,
        top: 0.0,
        side: 0.0,
    };
    assert!(
        ds.render_view(0, 8, bad, &mut vec![0.0; 8 * 8 * 3])
            .is_err()
    );
}

/// Random windows stay inside the image, cover at least the asked area, vary with the
/// seed, and are a pure function of it.
#[test]
fn random_views_cover_the_asked_area_inside_the_image() {
    let mut sides = Vec::new();
    for seed in 0..500u64 {
        let v = View::random(seed, 0.25);
        assert_eq!(v, View::random(seed, 0.25));
        assert!(v.side * v.side >= 0.25 - 1e-6 && v.side <= 1.0, "{v:?}");
        assert!(v.left >= 0.0 && v.top >= 0.0, "{v:?}");
        assert!(
            v.left + v.side <= 1.0 + 1e-6 && v.top + v.side <= 1.0 + 1e-6,
            "{v:?}"
        );
        sides.push(v.side);
    }
    let (lo, hi) = sides
        .iter()
        .fold((1.0f32, 0.0f32), |(l, h), &s| (l.min(s), h.max(s)));
    assert!(lo < 0.55 && hi > 0.95, "sides {lo}..{hi}");
    assert_eq!(View::random(3, 1.0).side, 1.0);
}

/// Training batches of a split with crops differ from evaluation batches (which always
/// draw whole images) and depend on the step's seed; labels do not change.
#[test]
fn training_batches_crop_and_evaluation_batches_do_not() {
    use effnet::data::{Dataset, SyntheticSplit};
    let split = SyntheticSplit {
        shapes: SyntheticShapes::new(8, 2).unwrap(),
        offset: 0,
        len: 8,
        crop_min_area: 0.25,
    };
    let idx: Vec<usize> = (0..8).collect();
    let res = 16;
    let run = |train: bool, seed: u64| {
        let mut x = vec![0.0; 8 * res * res * 3];
        let mut l = vec![0; 8];
        split.batch(&idx, res, train, seed, &mut x, &mut l).unwrap();
        (x, l)
    };
    let (e1, le) = run(false, 1);
    let (e2, _) = run(false, 2);
    assert_eq!(e1, e2, "evaluation batches ignore the seed");
    let (t1, lt) = run(true, 1);
    let (t1b, _) = run(true, 1);
    let (t2, _) = run(true, 2);
    assert_eq!(t1, t1b);
    assert_ne!(t1, e1);
    assert_ne!(t1, t2);
    assert_eq!(lt, le);
    let whole = SyntheticSplit {
        crop_min_area: 1.0,
        ..split
    };
    let mut x = vec![0.0; 8 * res * res * 3];
    let mut l = vec![0; 8];
    whole.batch(&idx, res, true, 1, &mut x, &mut l).unwrap();
    assert_eq!(x, e1, "no crops at crop_min_area 1");
}
