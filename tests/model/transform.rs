//! Tests of `data::transform` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::data::transform::*;

/// An image whose red channel is `f(x, y)`, green `g`, blue constant 7.
fn image(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> Rgb8 {
    let mut p = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            p.extend_from_slice(&[f(x, y), f(w - 1 - x, y), 7]);
        }
    }
    Rgb8::new(w, h, p).unwrap()
}

/// The raw (un-normalized, 0..255) value of channel `ch` of `out` at `(r, c)`.
fn raw(out: &[f32], res: usize, r: usize, c: usize, ch: usize) -> f32 {
    (out[(r * res + c) * 3 + ch] * STD[ch] + MEAN[ch]) * 255.0
}

#[test]
fn constant_image_stays_constant() {
    let img = Rgb8::new(37, 23, (0..37 * 23).flat_map(|_| [200u8, 10, 99]).collect()).unwrap();
    for aug in [
        Augment::Eval,
        Augment::Train { seed: 3, epoch: 1 },
        Augment::Train { seed: 4, epoch: 0 },
    ] {
        for res in [1, 5, 16, 64] {
            let mut out = vec![0.0; res * res * 3];
            transform(&img, res, aug, 11, &mut out).unwrap();
            for px in out.chunks_exact(3) {
                for (ch, v) in [200.0, 10.0, 99.0].iter().enumerate() {
                    let expect = (v / 255.0 - MEAN[ch]) / STD[ch];
                    assert!((px[ch] - expect).abs() < 1e-5, "{aug:?} {res}");
                }
            }
        }
    }
}

#[test]
fn eval_identity_resize_is_a_centre_crop_of_a_gradient() {
    // 64 / 0.875 = 73.1 → shorter side 73: make the image exactly 73 wide so the
    // resize is the identity; the crop starts at round(9 / 2) = 4 (half to even,
    // as Python) and, vertically, at (146 − 64) / 2 = 41.
    let img = image(73, 146, |x, y| (x + y) as u8);
    let w = eval_window(73, 146, 64).unwrap();
    assert_eq!((w.x, w.y, w.width, w.height), (4.0, 41.0, 64.0, 64.0));
    let mut out = vec![0.0; 64 * 64 * 3];
    transform(&img, 64, Augment::Eval, 0, &mut out).unwrap();
    for r in 0..64 {
        for c in 0..64 {
            let expect = (c + 4 + r + 41) as f32;
            assert!((raw(&out, 64, r, c, 0) - expect).abs() < 1e-3, "{r} {c}");
            let mirror = (73 - 1 - (c + 4) + r + 41) as f32;
            assert!((raw(&out, 64, r, c, 1) - mirror).abs() < 1e-3);
            assert!((raw(&out, 64, r, c, 2) - 7.0).abs() < 1e-3);
        }
    }
}

#[test]
fn eval_downscale_keeps_a_linear_gradient_linear() {
    // 128×128 → shorter side 64 at res 56 (scale 2), crop offset 4: output column
    // c is centred on source x = (c + 4 + ½)·2, where the gradient x ↦ x reads
    // (c + 4.5)·2 − ½. The symmetric triangle filter preserves linear functions
    // away from the borders.
    let img = image(128, 128, |x, _| x as u8);
    let mut out = vec![0.0; 56 * 56 * 3];
    transform(&img, 56, Augment::Eval, 0, &mut out).unwrap();
    for r in [0, 20, 55] {
        for c in 0..56 {
            let expect = (c as f32 + 4.5) * 2.0 - 0.5;
            assert!((raw(&out, 56, r, c, 0) - expect).abs() < 1e-3, "{c}");
        }
    }
}

#[test]
fn upscaling_is_bilinear_interpolation() {
    // A 2-pixel-wide crop upscaled to 8: centres at (c + ½)/4 in source pixels.
    let img = image(4, 4, |x, _| [0u8, 100, 200, 250][x]);
    let crop = Crop {
        x: 1,
        y: 0,
        width: 2,
        height: 4,
    };
    let mut out = vec![0.0; 8 * 8 * 3];
    resample(&img, &Window::from_crop(crop, false), 8, &mut out).unwrap();
    for c in 0..8 {
        // Position inside the crop, clamped to its pixel centres.
        let p = ((c as f32 + 0.5) / 4.0 - 0.5).clamp(0.0, 1.0);
        let expect = 100.0 + 100.0 * p;
        assert!((raw(&out, 8, 3, c, 0) - expect).abs() < 1e-3, "{c}");
    }
}

#[test]
fn flip_mirrors() {
    let img = image(31, 17, |x, y| (x * 7 + y * 3) as u8);
    let crop = Crop {
        x: 3,
        y: 2,
        width: 20,
        height: 13,
    };
    let res = 9;
    let mut a = vec![0.0; res * res * 3];
    let mut b = vec![0.0; res * res * 3];
    resample(&img, &Window::from_crop(crop, false), res, &mut a).unwrap();
    resample(&img, &Window::from_crop(crop, true), res, &mut b).unwrap();
    for r in 0..res {
        for c in 0..res {
            for ch in 0..3 {
                assert_eq!(
                    a[(r * res + c) * 3 + ch],
                    b[(r * res + res - 1 - c) * 3 + ch]
                );
            }
        }
    }
}

#[test]
fn crop_reads_only_inside_its_bounds() {
    // Outside the crop the image is 255; inside 0: a crop must come out all 0.
    let img = image(20, 20, |x, y| {
        if (5..12).contains(&x) && (4..15).contains(&y) {
            0
        } else {
            255
        }
    });
    let crop = Crop {
        x: 5,
        y: 4,
        width: 7,
        height: 11,
    };
    for res in [3, 7, 30] {
        let mut out = vec![0.0; res * res * 3];
        resample(&img, &Window::from_crop(crop, false), res, &mut out).unwrap();
        for r in 0..res {
            for c in 0..res {
                assert!(raw(&out, res, r, c, 0).abs() < 1e-3);
            }
        }
    }
}

#[test]
fn random_resized_crop_statistics_and_bounds() {
    let (w, h) = (120usize, 90usize);
    let mut area = 0.0;
    let mut flips = 0;
    let n = 2000;
    for i in 0..n {
        let c = random_resized_crop(w, h, 5, 2, i).unwrap();
        assert!(c.width >= 1 && c.height >= 1);
        assert!(c.x + c.width <= w && c.y + c.height <= h, "{c:?}");
        let frac = (c.width * c.height) as f64 / (w * h) as f64;
        assert!(frac > 0.07 && frac <= 1.0, "{c:?}");
        let ratio = c.width as f64 / c.height as f64;
        assert!(ratio > 0.7 && ratio < 1.4, "{c:?}");
        area += frac;
        flips += random_flip(5, 2, i) as usize;
    }
    // The accepted fractions average a little under (0.08 + 1) / 2.
    let mean = area / n as f64;
    assert!((0.4..0.56).contains(&mean), "{mean}");
    assert!((900..1100).contains(&flips), "{flips}");
}

#[test]
fn random_resized_crop_is_reproducible_and_varies() {
    let a = random_resized_crop(64, 48, 1, 0, 9).unwrap();
    assert_eq!(a, random_resized_crop(64, 48, 1, 0, 9).unwrap());
    let others = [(2, 0, 9), (1, 1, 9), (1, 0, 10)]
        .map(|(s, e, i)| random_resized_crop(64, 48, s, e, i).unwrap());
    assert!(
        others.iter().filter(|o| **o != a).count() >= 2,
        "{a:?} {others:?}"
    );
    let distinct: std::collections::HashSet<_> = (0..50)
        .map(|e| random_resized_crop(64, 48, 1, e, 9).unwrap())
        .collect();
    assert!(distinct.len() > 40);
}

#[test]
fn random_resized_crop_falls_back_to_a_ratio_clipped_centre_crop() {
    // A 1-pixel-high strip: no random crop of ratio ≤ 4/3 and area ≥ 8 % fits
    // (w = round(sqrt(0.08·400·r)) ≥ 5 would need h ≥ 4 > 1), so the fallback
    // keeps the full height and a centred width of round(1·4/3) = 1.
    let c = random_resized_crop(400, 1, 0, 0, 0).unwrap();
    assert_eq!(
        c,
        Crop {
            x: 199,
            y: 0,
            width: 1,
            height: 1
        }
    );
    // A tall strip: full width, height round(3 / (3/4)) = 4, centred.
    let c = random_resized_crop(3, 500, 0, 0, 0).unwrap();
    assert_eq!(
        c,
        Crop {
            x: 0,
            y: 248,
            width: 3,
            height: 4
        }
    );
}

#[test]
fn eval_window_geometry() {
    // Landscape 300×200 at res 224: shorter side 256, longer ⌊256·1.5⌋ = 384;
    // offsets (384−224)/2 = 80 and (256−224)/2 = 16.
    let w = eval_window(300, 200, 224).unwrap();
    let s = 200.0 / 256.0;
    assert!((w.x - 80.0 * 300.0 / 384.0).abs() < 1e-9);
    assert!((w.y - 16.0 * s).abs() < 1e-9);
    assert!((w.height - 224.0 * s).abs() < 1e-9);
    assert_eq!(round_half_even(2.5), 2.0);
    assert_eq!(round_half_even(3.5), 4.0);
    assert_eq!(round_half_even(3.2), 3.0);
}

#[test]
fn errors_not_panics() {
    assert!(Rgb8::new(0, 4, vec![]).is_err());
    assert!(Rgb8::new(2, 2, vec![0; 11]).is_err());
    let img = Rgb8::new(2, 2, vec![0; 12]).unwrap();
    assert!(transform(&img, 0, Augment::Eval, 0, &mut []).is_err());
    assert!(transform(&img, 4, Augment::Eval, 0, &mut [0.0; 47]).is_err());
    let bad = Window {
        bounds: Crop {
            x: 1,
            y: 0,
            width: 2,
            height: 2,
        },
        ..Window::from_crop(
            Crop {
                x: 0,
                y: 0,
                width: 2,
                height: 2,
            },
            false,
        )
    };
    assert!(resample(&img, &bad, 2, &mut [0.0; 12]).is_err());
    let empty = Window {
        width: 0.0,
        ..Window::from_crop(
            Crop {
                x: 0,
                y: 0,
                width: 2,
                height: 2,
            },
            false,
        )
    };
    assert!(resample(&img, &empty, 2, &mut [0.0; 12]).is_err());
}
