//! Unit tests of `norm.rs` (the C entry points against the Rust API).

use super::*;

pub(crate) fn desc() -> effnet_norm_desc {
    effnet_norm_desc {
        struct_size: size_of::<effnet_norm_desc>(),
        batch: 2,
        h: 3,
        w: 4,
        channels: 8,
        groups: 2,
        kind: effnet_norm_kind::EFFNET_NORM_GROUP as u32,
        affine: 1,
        ..Default::default()
    }
}

#[test]
fn norm_descriptors_convert_and_reject_misfits() {
    let (d, affine) = to_norm_desc(&desc()).unwrap();
    assert!(affine);
    assert_eq!(d.eps, 1e-3);
    assert_eq!(d.groups(), 2);
    let bad = |d: effnet_norm_desc, needle: &str| {
        let m = to_norm_desc(&d).unwrap_err().message;
        assert!(m.contains(needle), "{m} lacks {needle}");
    };
    bad(
        effnet_norm_desc {
            groups: 0,
            ..desc()
        },
        "at least 1 group",
    );
    bad(effnet_norm_desc { kind: 0, ..desc() }, "BatchNorm takes 0");
    bad(effnet_norm_desc { kind: 7, ..desc() }, "kind = 7");
    bad(
        effnet_norm_desc {
            affine: 2,
            ..desc()
        },
        "affine = 2",
    );
    bad(
        effnet_norm_desc {
            activation: 9,
            ..desc()
        },
        "activation = 9",
    );
    bad(
        effnet_norm_desc {
            batch: -1,
            ..desc()
        },
        "batch = -1",
    );
    bad(
        effnet_norm_desc {
            reserved: 1,
            ..desc()
        },
        "reserved",
    );
}

pub(crate) fn rand(n: usize, seed: u32) -> Vec<f32> {
    let mut r = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            (r as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}
