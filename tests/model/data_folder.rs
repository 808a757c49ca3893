//! The image-folder dataset on small hand-made folders: listing, decoding, transforms
//! against the in-memory path, determinism over thread counts, and typed errors.

use effnet::Error;
use effnet::data::ImageFolder;
use effnet::data::folder::decode_image;
use effnet::data::transform::{Augment, MEAN, Rgb8, STD, transform};
use std::path::{Path, PathBuf};

/// A fresh, empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("effnet-folder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An RGB test image: a gradient that depends on `seed`.
fn pattern(w: u32, h: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 5 + seed * 31) % 256) as u8,
            ((y * 3 + seed * 17) % 256) as u8,
            ((x + y + seed) % 256) as u8,
        ])
    })
}

fn save(path: &Path, img: &image::RgbImage, format: image::ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save_with_format(path, format).unwrap();
}

fn to_rgb8(img: &image::RgbImage) -> Rgb8 {
    Rgb8::new(
        img.width() as usize,
        img.height() as usize,
        img.as_raw().clone(),
    )
    .unwrap()
}

/// Three classes, out of order on disk, with a nested folder, odd sizes, a JPEG, an
/// upper-case extension, and files that must be ignored.
fn make_dataset(name: &str) -> PathBuf {
    let d = temp_dir(name);
    use image::ImageFormat::{Jpeg, Png};
    save(&d.join("zebra/b.png"), &pattern(17, 23, 1), Png);
    save(&d.join("zebra/a.PNG"), &pattern(40, 9, 2), Png);
    save(&d.join("ant/x.png"), &pattern(33, 33, 3), Png);
    save(&d.join("ant/nested/y.jpg"), &pattern(20, 30, 4), Jpeg);
    save(&d.join("moth/only.jpeg"), &pattern(64, 48, 5), Jpeg);
    std::fs::write(d.join("ant/notes.txt"), "not an image").unwrap();
    std::fs::write(d.join("README"), "top-level files are not classes").unwrap();
    save(&d.join(".hidden/h.png"), &pattern(5, 5, 6), Png);
    save(&d.join("moth/.thumb.png"), &pattern(5, 5, 7), Png);
    d
}

#[test]
fn lists_classes_and_samples_in_sorted_order() {
    let d = make_dataset("list");
    let ds = ImageFolder::open(&d).unwrap();
    assert_eq!(ds.classes(), ["ant", "moth", "zebra"]);
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.class_counts(), vec![2, 1, 2]);
    let names: Vec<String> = (0..5)
        .map(|i| {
            ds.path(i)
                .unwrap()
                .strip_prefix(&d)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "ant/nested/y.jpg",
            "ant/x.png",
            "moth/only.jpeg",
            "zebra/a.PNG",
            "zebra/b.png"
        ]
    );
    let labels: Vec<usize> = (0..5).map(|i| ds.label(i).unwrap()).collect();
    assert_eq!(labels, [0, 0, 1, 2, 2]);
    ds.verify().unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn decodes_png_exactly_and_jpeg_closely() {
    let d = make_dataset("decode");
    let ds = ImageFolder::open(&d).unwrap();
    let png = ds.load(4).unwrap();
    assert_eq!(png, to_rgb8(&pattern(17, 23, 1)));
    let jpg = ds.load(0).unwrap();
    let want = to_rgb8(&pattern(20, 30, 4));
    assert_eq!((jpg.width(), jpg.height()), (20, 30));
    let mean_err: f64 = jpg
        .pixels()
        .iter()
        .zip(want.pixels())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / want.pixels().len() as f64;
    assert!(mean_err < 8.0, "{mean_err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn grey_and_alpha_pngs_become_rgb() {
    let grey = image::GrayImage::from_fn(6, 4, |x, _| image::Luma([(x * 40) as u8]));
    let mut bytes = Vec::new();
    grey.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    let img = decode_image(&bytes, "grey.png").unwrap();
    assert_eq!(&img.pixels()[..6], &[0, 0, 0, 40, 40, 40]);
    let rgba = image::RgbaImage::from_pixel(3, 2, image::Rgba([9, 8, 7, 0]));
    let mut bytes = Vec::new();
    rgba.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    let img = decode_image(&bytes, "rgba.png").unwrap();
    assert_eq!(img.pixels(), [9, 8, 7].repeat(6).as_slice());
}

#[test]
fn batch_matches_the_in_memory_transform() {
    let d = make_dataset("batch");
    let ds = ImageFolder::open(&d).unwrap();
    let res = 13;
    let per = res * res * 3;
    let indices = [4u64, 1, 3, 1];
    for aug in [Augment::Eval, Augment::Train { seed: 9, epoch: 2 }] {
        let mut images = vec![0.0f32; indices.len() * per];
        let mut labels = vec![99usize; indices.len()];
        ds.batch(&indices, res, aug, &mut images, &mut labels)
            .unwrap();
        assert_eq!(labels, [2, 0, 2, 0]);
        for (k, &i) in indices.iter().enumerate() {
            let mut want = vec![0.0f32; per];
            transform(&ds.load(i).unwrap(), res, aug, i, &mut want).unwrap();
            assert_eq!(
                &images[k * per..(k + 1) * per],
                want.as_slice(),
                "{aug:?} {k}"
            );
        }
        // The same sample at two positions of a batch comes out the same.
        assert_eq!(images[per..2 * per], images[3 * per..4 * per]);
    }
    // Values are normalized 8-bit pixels.
    let mut images = vec![0.0f32; per];
    ds.batch(&[2], res, Augment::Eval, &mut images, &mut [0])
        .unwrap();
    for px in images.chunks_exact(3) {
        for ch in 0..3 {
            let v = (px[ch] * STD[ch] + MEAN[ch]) * 255.0;
            assert!((-0.01..=255.01).contains(&v));
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn augmentation_changes_with_epoch_and_seed_only() {
    let d = make_dataset("augment");
    let ds = ImageFolder::open(&d).unwrap();
    let res = 16;
    let run = |aug: Augment| {
        let mut images = vec![0.0f32; 5 * res * res * 3];
        let mut labels = vec![0usize; 5];
        ds.batch(&[0, 1, 2, 3, 4], res, aug, &mut images, &mut labels)
            .unwrap();
        images
    };
    let a = run(Augment::Train { seed: 1, epoch: 0 });
    assert_eq!(a, run(Augment::Train { seed: 1, epoch: 0 }));
    assert_ne!(a, run(Augment::Train { seed: 1, epoch: 1 }));
    assert_ne!(a, run(Augment::Train { seed: 2, epoch: 0 }));
    assert_eq!(run(Augment::Eval), run(Augment::Eval));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn batches_are_bitwise_identical_for_1_2_and_8_threads() {
    let d = make_dataset("threads");
    let ds = ImageFolder::open(&d).unwrap();
    let res = 24;
    let indices: Vec<u64> = (0..12).map(|i| (i * 7) % 5).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut images = vec![0.0f32; indices.len() * res * res * 3];
            let mut labels = vec![0usize; indices.len()];
            ds.batch(
                &indices,
                res,
                Augment::Train { seed: 3, epoch: 5 },
                &mut images,
                &mut labels,
            )
            .unwrap();
            (
                images.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                labels,
            )
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(8));
    std::fs::remove_dir_all(&d).unwrap();
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn missing_folder_is_an_error() {
    let d = temp_dir("missing").join("nope");
    let e = message(ImageFolder::open(&d).unwrap_err());
    assert!(e.contains("does not exist") && e.contains("nope"), "{e}");
    let f = temp_dir("file");
    std::fs::write(f.join("x"), "").unwrap();
    let e = message(ImageFolder::open(f.join("x")).unwrap_err());
    assert!(e.contains("is not a folder"), "{e}");
    std::fs::remove_dir_all(&f).unwrap();
}

#[test]
fn no_class_folders_is_an_error() {
    let d = temp_dir("noclass");
    save(
        &d.join("loose.png"),
        &pattern(4, 4, 0),
        image::ImageFormat::Png,
    );
    let e = message(ImageFolder::open(&d).unwrap_err());
    assert!(e.contains("no class folders"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn empty_class_is_an_error_naming_the_class() {
    let d = temp_dir("emptyclass");
    save(
        &d.join("cat/a.png"),
        &pattern(4, 4, 0),
        image::ImageFormat::Png,
    );
    std::fs::create_dir_all(d.join("dog/sub")).unwrap();
    std::fs::write(d.join("dog/readme.txt"), "no images here").unwrap();
    let e = message(ImageFolder::open(&d).unwrap_err());
    assert!(e.contains("dog") && e.contains("no PNG or JPEG"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn corrupt_images_are_errors_naming_the_file() {
    let d = temp_dir("corrupt");
    save(
        &d.join("a/good.png"),
        &pattern(8, 8, 0),
        image::ImageFormat::Png,
    );
    save(
        &d.join("b/good.png"),
        &pattern(8, 8, 1),
        image::ImageFormat::Png,
    );
    // Not an image at all, a truncated PNG, and a GIF named .png.
    std::fs::write(d.join("a/garbage.png"), b"hello, world").unwrap();
    let mut png = Vec::new();
    pattern(30, 30, 2)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(d.join("b/truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(d.join("b/zz.png"), b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let ds = ImageFolder::open(&d).unwrap();
    assert_eq!(ds.len(), 5);
    // verify() finds the first bad header in sample order.
    let e = message(ds.verify().unwrap_err());
    assert!(e.contains("garbage.png"), "{e}");
    let (res, per) = (8, 8 * 8 * 3);
    let mut labels = [0usize; 2];
    let mut images = vec![0.0f32; 2 * per];
    for (i, name) in [(0u64, "garbage.png"), (3, "truncated.png"), (4, "zz.png")] {
        let e = message(
            ds.batch(&[1, i], res, Augment::Eval, &mut images, &mut labels)
                .unwrap_err(),
        );
        assert!(e.contains(name), "{e}");
    }
    // The first failing sample in batch order is reported, whatever the threads do.
    let e = message(
        ds.batch(&[4, 0], res, Augment::Eval, &mut images, &mut labels)
            .unwrap_err(),
    );
    assert!(e.contains("zz.png"), "{e}");
    // Good samples still load.
    ds.batch(&[1, 2], res, Augment::Eval, &mut images, &mut labels)
        .unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_arguments_are_errors() {
    let d = make_dataset("args");
    let ds = ImageFolder::open(&d).unwrap();
    let mut images = vec![0.0f32; 2 * 8 * 8 * 3];
    let mut labels = [0usize; 2];
    assert!(matches!(
        ds.batch(&[0, 5], 8, Augment::Eval, &mut images, &mut labels),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ds.batch(&[0, 1], 0, Augment::Eval, &mut images, &mut labels),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ds.batch(&[0, 1], 7, Augment::Eval, &mut images, &mut labels),
        Err(Error::BufferSize { .. })
    ));
    assert!(matches!(
        ds.batch(&[0], 8, Augment::Eval, &mut images[..192], &mut labels),
        Err(Error::BufferSize { .. })
    ));
    assert!(ds.label(5).is_err() && ds.path(u64::MAX).is_err() && ds.load(5).is_err());
    ds.batch(&[], 8, Augment::Eval, &mut [], &mut []).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn dataset_trait_is_the_inherent_batch() {
    use effnet::data::Dataset;
    let d = make_dataset("trait");
    let ds = ImageFolder::open(&d).unwrap();
    let dyn_ds: &dyn Dataset = &ds;
    assert_eq!((dyn_ds.len(), dyn_ds.classes()), (5, 3));
    let res = 12;
    let per = res * res * 3;
    for (train, aug) in [
        (true, Augment::Train { seed: 77, epoch: 0 }),
        (false, Augment::Eval),
    ] {
        let (mut a, mut b) = (vec![0.0f32; 3 * per], vec![0.0f32; 3 * per]);
        let (mut la, mut lb) = (vec![0usize; 3], vec![0usize; 3]);
        dyn_ds
            .batch(&[2, 0, 4], res, train, 77, &mut a, &mut la)
            .unwrap();
        ds.batch(&[2, 0, 4], res, aug, &mut b, &mut lb).unwrap();
        assert_eq!((a, la), (b, lb));
    }
    let mut img = vec![0.0f32; per];
    assert!(
        dyn_ds
            .batch(&[5], res, false, 0, &mut img, &mut [0])
            .is_err()
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A JPEG whose header claims `w`×`h` pixels: an 8×8 grey JPEG with its SOF0 size
/// patched (JPEG segments carry no checksum, so only the pixel data disagrees).
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let grey = image::GrayImage::from_pixel(8, 8, image::Luma([100]));
    let mut bytes = Vec::new();
    grey.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let sof = bytes
        .windows(2)
        .position(|m| m == [0xff, 0xc0])
        .expect("a baseline JPEG has an SOF0 segment");
    // FF C0, length (2), precision (1), height (2), width (2).
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

/// A small file claiming a huge image is refused from its header, quickly, with a
/// message naming the bounds — not decoded into gigabytes (the fuzzer's image target
/// found a 656-byte JPEG claiming 64265×2053 that took over 10 s).
#[test]
fn images_claiming_huge_sizes_are_refused_from_the_header() {
    use effnet::data::folder::{MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};
    let fuzzed = include_bytes!("../../ffi/fuzz/regressions/image/timeout-jpeg-64265x2053");
    let cases = [
        ("fuzzed.jpg", fuzzed.to_vec(), "64265"),
        ("wide.jpg", jpeg_claiming(20000, 8), "20000x8"),
        ("square.jpg", jpeg_claiming(8000, 8000), "8000x8000"),
    ];
    for (name, bytes, dims) in cases {
        let t = std::time::Instant::now();
        let e = decode_image(&bytes, name).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(dims), "{e}");
        assert!(e.contains(&MAX_IMAGE_PIXELS.to_string()), "{e}");
        assert!(e.contains(&MAX_IMAGE_SIDE.to_string()), "{e}");
        assert!(t.elapsed().as_secs_f64() < 1.0, "{name}: {:?}", t.elapsed());
    }
    // Within the bounds the patched file is read as far as its (short) pixel data:
    // an error about the data, not about the size.
    let e = decode_image(&jpeg_claiming(64, 64), "small.jpg");
    if let Err(e) = e {
        assert!(!e.to_string().contains("maximum"), "{e}");
    }
}
