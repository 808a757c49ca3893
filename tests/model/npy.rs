//! Tests of `io::npy` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::io::npy::*;

#[test]
fn round_trip_and_numpy_header() {
    let dir = std::env::temp_dir().join(format!("effnet-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("a.npy");
    let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    write_f32(&p, &[2, 3, 4], &data).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    assert_eq!(read_f32(&p).unwrap(), (vec![2, 3, 4], data));
    let q = dir.join("l.npy");
    write_i64(&q, &[3], &[0, 7, 2]).unwrap();
    assert_eq!(read_i64(&q).unwrap(), (vec![3], vec![0, 7, 2]));
    assert!(read_f32(&q).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_files_are_errors() {
    assert!(parse(b"hello", "x").is_err());
    let good = encode("<f4", &[2], vec![0; 8]);
    assert!(parse(&good, "x").is_ok());
    assert!(parse(&good[..good.len() - 1], "x").is_err());
    assert!(parse(&encode("<c8", &[1], vec![0; 8]), "x").is_err());
    // Scalar arrays have shape () and one element.
    let s = parse(&encode("<f4", &[], vec![0; 4]), "x").unwrap();
    assert_eq!(s.shape, Vec::<usize>::new());
}
