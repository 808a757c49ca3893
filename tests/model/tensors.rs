//! Tests of `io::tensors` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::io::tensors::*;

#[test]
fn round_trip_and_corrupt_files() {
    let mut m = TensorMap::new();
    m.insert(
        "a.weight".into(),
        NamedTensor {
            shape: vec![2, 3],
            data: (0..6).map(|i| i as f32).collect(),
        },
    );
    m.insert(
        "b".into(),
        NamedTensor {
            shape: vec![],
            data: vec![1.5],
        },
    );
    let bytes = encode(&m, None).unwrap();
    assert_eq!(decode(&bytes, "mem").unwrap(), m);
    assert!(decode(&bytes[..bytes.len() - 3], "mem").is_err());
    assert!(decode(b"garbage!", "mem").is_err());
    let bad = NamedTensor {
        shape: vec![4],
        data: vec![0.0; 3],
    };
    m.insert("c".into(), bad);
    assert!(encode(&m, None).is_err());
}
