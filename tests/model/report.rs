//! The loss/accuracy curve picture: written atomically, decodes as a PNG of the asked
//! size, and shows the curves in their colours.

use effnet::report::Curve;
use effnet::report::curve::{ACCURACY, LOSS_RAW, LOSS_SMOOTH};
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("effnet-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Decodes a PNG file to (width, height, RGB bytes).
fn decode(path: &std::path::Path) -> (usize, usize, Vec<u8>) {
    let img = image::open(path).unwrap();
    assert_eq!(img.color(), image::ColorType::Rgb8);
    let rgb = img.into_rgb8();
    (rgb.width() as usize, rgb.height() as usize, rgb.into_raw())
}

fn count(rgb: &[u8], colour: [u8; 3]) -> usize {
    rgb.chunks_exact(3).filter(|p| *p == colour).count()
}

/// A run of 300 steps with a noisy decaying loss, 3 evaluations and a stage mark.
fn run() -> Curve {
    let mut c = Curve::new();
    for step in 0..300u32 {
        let noise = (step.wrapping_mul(2_654_435_761) >> 16) as f32 / 65536.0 - 0.5;
        c.push_loss(2.3 * (-(step as f32) / 120.0).exp() + 0.2 + 0.2 * noise);
    }
    c.push_eval(100, 0.35);
    c.push_eval(200, 0.61);
    c.push_eval(300, 0.72);
    c.push_mark(250);
    c
}

#[test]
fn curve_png_is_written_decodes_and_has_the_expected_size() {
    let d = temp_dir("png");
    let path = d.join("curve.png");
    let c = run();
    for (w, h) in [(800, 500), (200, 150), (1203, 817)] {
        c.save_png(&path, w, h).unwrap();
        let (dw, dh, rgb) = decode(&path);
        assert_eq!((dw, dh), (w, h));
        assert_eq!(rgb, c.render(w, h).unwrap());
        // Both curves and the raw loss are drawn.
        assert!(count(&rgb, LOSS_SMOOTH) > w / 4, "{w}×{h}");
        assert!(count(&rgb, LOSS_RAW) > w / 8, "{w}×{h}");
        assert!(count(&rgb, ACCURACY) > w / 8, "{w}×{h}");
    }
    // No temporary file is left beside it.
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["curve.png"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn degenerate_histories_still_draw() {
    let d = temp_dir("degenerate");
    let path = d.join("c.png");
    let mut c = Curve::new();
    c.save_png(&path, 300, 200).unwrap(); // empty
    assert_eq!(decode(&path).0, 300);
    c.push_loss(1.0); // one point, constant
    c.save_png(&path, 300, 200).unwrap();
    for v in [f32::NAN, f32::INFINITY, 1e30, 0.5, 0.5] {
        c.push_loss(v);
    }
    c.push_eval(0, 1.5); // out of range: clamped
    c.push_eval(6, f32::NAN);
    c.save_png(&path, 300, 200).unwrap();
    let (w, h, rgb) = decode(&path);
    assert_eq!((w, h), (300, 200));
    assert!(count(&rgb, LOSS_SMOOTH) > 0);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_sizes_and_paths_are_errors() {
    let c = run();
    assert!(c.render(199, 300).is_err());
    assert!(c.render(300, 149).is_err());
    assert!(c.render(100_000, 300).is_err());
    let missing = temp_dir("missing").join("no/such/dir/curve.png");
    assert!(matches!(
        c.save_png(&missing, 300, 200),
        Err(effnet::Error::Io(_))
    ));
}
