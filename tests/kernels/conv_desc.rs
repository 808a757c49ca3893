//! Tests of `kernels::conv` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::Error;
use effnet::kernels::conv::*;

#[test]
fn tf_same_puts_the_odd_pixel_bottom_right() {
    // 224 input, 3×3 stride 2: out 112, total pad = 111·2 + 3 − 224 = 1.
    let p = Padding::tf_same((224, 224), (3, 3), (2, 2), 1);
    assert_eq!(
        p,
        Padding {
            top: 0,
            bottom: 1,
            left: 0,
            right: 1
        }
    );
    // 5×5 stride 1 on 14: total 4.
    let p = Padding::tf_same((14, 14), (5, 5), (1, 1), 1);
    assert_eq!(p, Padding::symmetric(2));
    // 5×5 stride 2 on 15: out 8, total = 7·2 + 5 − 15 = 4.
    let p = Padding::tf_same((15, 15), (5, 5), (2, 2), 1);
    assert_eq!(p, Padding::symmetric(2));
}

#[test]
fn output_sizes_follow_the_formula() {
    let s = ConvDesc::depthwise(1, (7, 9), 3, 5, 2).validate().unwrap();
    assert_eq!((s.out_h, s.out_w), (4, 5));
    let s = ConvDesc::new(2, (224, 224), 3, 32, (3, 3))
        .with_stride(2)
        .with_tf_same_padding()
        .validate()
        .unwrap();
    assert_eq!((s.out_h, s.out_w), (112, 112));
    assert_eq!(s.family(), ConvFamily::Grouped);
    let s = ConvDesc::pointwise(1, (5, 5), 8, 4)
        .with_stride(2)
        .validate()
        .unwrap();
    assert_eq!(
        (s.out_h, s.out_w, s.family()),
        (3, 3, ConvFamily::Pointwise)
    );
}

#[test]
fn bad_descriptors_are_errors() {
    let ok = ConvDesc::new(1, (8, 8), 32, 32, (3, 3)).with_group_size(16);
    assert!(ok.validate().is_ok());
    let cases = [
        ConvDesc { batch: 0, ..ok },
        ConvDesc { in_h: 0, ..ok },
        ConvDesc { stride_w: 0, ..ok },
        ConvDesc {
            dilation_h: 0,
            ..ok
        },
        ConvDesc {
            group_size: 0,
            ..ok
        },
        ConvDesc {
            group_size: 5,
            ..ok
        },
        ConvDesc {
            out_channels: 33,
            ..ok
        },
        ConvDesc { kernel_h: 9, ..ok },
        ConvDesc {
            padding: Padding::symmetric(3),
            ..ok
        },
        ConvDesc {
            in_channels: 0,
            ..ok
        },
    ];
    for c in cases {
        assert!(
            matches!(c.validate(), Err(Error::InvalidDescriptor(_))),
            "{c:?}"
        );
    }
    let huge = ConvDesc {
        batch: usize::MAX / 2,
        ..ok
    };
    assert!(matches!(huge.validate(), Err(Error::Overflow(_))));
    let f16 = ok.with_dtype(DType::F16);
    assert!(matches!(f16.validate(), Err(Error::Unsupported(_))));
}

/// A grouped convolution whose plan would list millions of tasks (a batch of 2^23
/// images) is refused when the plan is made, with a typed error naming the remedy —
/// not a task list of gigabytes (found by the descriptors fuzz target). Half that
/// batch is planned.
#[test]
fn huge_grouped_batches_are_refused() {
    let desc = |n| {
        ConvDesc::new(n, (1, 1), 32, 32, (3, 3))
            .with_group_size(16)
            .with_padding(Padding::symmetric(1))
    };
    match Conv2d::new(&desc(1 << 23)) {
        Err(Error::OutOfMemory(m)) => assert!(m.contains("split the batch"), "{m}"),
        other => panic!("{other:?}"),
    }
    let ok = Conv2d::new(&desc(1 << 20)).unwrap();
    assert_eq!(ok.family(), ConvFamily::Grouped);
    assert!(ok.workspace_len(ConvPass::Forward, 2) > 0);
}

/// A kernel side or stride over `MAX_KERNEL` is refused at validation (its per-tap tables would be
/// planned for every column; found by the descriptors fuzz target), the largest one is
/// taken.
#[test]
fn kernels_over_the_largest_side_are_refused() {
    let big = ConvDesc::new(1, (1, MAX_KERNEL + 1), 1, 1, (1, MAX_KERNEL + 1)).with_group_size(1);
    match big.validate() {
        Err(Error::InvalidDescriptor(m)) => assert!(m.contains("kernel_w"), "{m}"),
        other => panic!("{other:?}"),
    }
    let tall = ConvDesc::new(1, (MAX_KERNEL + 1, 1), 1, 1, (MAX_KERNEL + 1, 1));
    assert!(matches!(tall.validate(), Err(Error::InvalidDescriptor(_))));
    let strided = ConvDesc::new(1, (1, 4 * MAX_KERNEL), 1, 1, (1, 1)).with_stride(MAX_KERNEL + 1);
    match strided.validate() {
        Err(Error::InvalidDescriptor(m)) => assert!(m.contains("stride"), "{m}"),
        other => panic!("{other:?}"),
    }
    let ok = ConvDesc::new(1, (1, MAX_KERNEL), 1, 1, (1, MAX_KERNEL));
    assert_eq!(Conv2d::new(&ok).unwrap().shape().out_w, 1);
}
