//! Tests of `ipu::picture`: the PNG it writes decodes, with a standard decoder, to the
//! pixels it was given (so its CRC and Adler checksums are right).

use effnet::ipu::picture::encode_png;

#[test]
fn encoded_png_decodes_to_the_same_pixels() {
    let (w, h) = (7, 5);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    let bytes = encode_png(w, h, &rgb);
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .expect("a valid PNG")
        .to_rgb8();
    assert_eq!((img.width() as usize, img.height() as usize), (w, h));
    assert_eq!(img.into_raw(), rgb);
}
