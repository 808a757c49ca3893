//! The workspace passes of the convolutions allocate nothing tensor-sized: a counting
//! global allocator (`tests/common/alloc.rs`) records every allocation made (on any
//! thread) while a pass runs.

use crate::common::alloc::count;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvPass, GradMode};

/// Runs `pass` with `ws` (`None`: the allocating pass).
fn run(conv: &Conv2d, pass: ConvPass, ws: Option<&mut [f32]>, bufs: &mut [Vec<f32>; 5]) {
    let [x, w, y, dw, db] = bufs;
    let mode = GradMode::Overwrite;
    match (pass, ws) {
        (ConvPass::Forward, Some(ws)) => conv.forward_with_workspace(x, w, None, y, ws),
        (ConvPass::Forward, None) => conv.forward(x, w, None, y),
        (ConvPass::BackwardData, Some(ws)) => conv.backward_data_with_workspace(y, w, x, ws),
        (ConvPass::BackwardData, None) => conv.backward_data(y, w, x),
        (ConvPass::BackwardWeight, Some(ws)) => {
            conv.backward_weight_with_workspace(x, y, dw, Some(db), mode, ws)
        }
        (ConvPass::BackwardWeight, None) => conv.backward_weight(x, y, dw, Some(db), mode),
    }
    .unwrap();
}

pub fn workspace_passes_allocate_nothing_tensor_sized() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    // Every family, with borders, strides, packed and in-place paths, several
    // weight-gradient chunks, a channel count that is not a multiple of the lanes.
    let shapes = [
        ConvDesc::pointwise(2, (40, 40), 16, 24),
        ConvDesc::pointwise(2, (81, 81), 16, 24).with_stride(2),
        ConvDesc::pointwise(2, (20, 20), 64, 64),
        ConvDesc::depthwise(2, (57, 57), 40, 3, 1),
        ConvDesc::depthwise(2, (29, 29), 72, 5, 2),
        ConvDesc::depthwise(1, (20, 20), 24, 3, 1),
        ConvDesc::new(2, (28, 28), 64, 64, (3, 3))
            .with_group_size(16)
            .with_symmetric_padding(),
        ConvDesc::new(2, (15, 15), 48, 96, (5, 5))
            .with_group_size(8)
            .with_stride(2)
            .with_tf_same_padding(),
        ConvDesc::new(2, (33, 33), 3, 32, (3, 3))
            .with_stride(2)
            .with_tf_same_padding(),
    ];
    pool.install(|| {
        for d in &shapes {
            let conv = Conv2d::new(d).unwrap();
            let s = *conv.shape();
            // The smaller activation tensor (bookkeeping such as tap lists may exceed
            // the weight of a small depthwise layer, never an activation).
            let tensor_bytes = 4 * s.x_len.min(s.y_len);
            let mut bufs = [
                vec![0.25; s.x_len],
                vec![0.5; s.w_len],
                vec![1.0; s.y_len],
                vec![0.0; s.w_len],
                vec![0.0; s.desc.out_channels],
            ];
            // The forward pass on weights packed once.
            let mut packed = vec![0.0f32; conv.packed_weights_len()];
            conv.pack_weights(&bufs[1], &mut packed).unwrap();
            let mut ws = vec![0.0f32; conv.workspace_len(ConvPass::Forward, 4)];
            let [x, _, y, _, db] = &mut bufs;
            conv.forward_packed(x, &packed, Some(db), y, &mut ws)
                .unwrap();
            let (total, largest) = count(|| {
                conv.forward_packed(x, &packed, Some(db), y, &mut ws)
                    .unwrap();
            });
            assert!(
                largest <= 4096 && 4 * largest <= tensor_bytes,
                "{d:?} forward_packed: an allocation of {largest} bytes ({total} in all)"
            );
            for pass in [
                ConvPass::Forward,
                ConvPass::BackwardData,
                ConvPass::BackwardWeight,
            ] {
                let len = conv.workspace_len(pass, 4);
                let mut ws = vec![0.0f32; len];
                // Warm up (rayon's first use of a pool, lazily made statics).
                run(&conv, pass, Some(&mut ws), &mut bufs);
                let (total, largest) = count(|| run(&conv, pass, Some(&mut ws), &mut bufs));
                assert!(
                    largest <= 4096 && 4 * largest <= tensor_bytes,
                    "{d:?} {pass:?}: an allocation of {largest} bytes ({total} in all)"
                );
                // The counter sees the allocating pass's workspace (the test can fail):
                // the first call on a thread allocates it, later ones reuse it.
                effnet::kernels::scratch::release_reused();
                let (alloc_total, alloc_largest) = count(|| run(&conv, pass, None, &mut bufs));
                let (_, reused) = count(|| run(&conv, pass, None, &mut bufs));
                assert!(
                    reused <= 4096,
                    "{d:?} {pass:?}: the allocating pass allocated {reused} bytes when warm"
                );
                assert!(
                    alloc_largest >= 4 * len && alloc_total >= 4 * len,
                    "{d:?} {pass:?}: the allocating pass allocated {alloc_total} bytes, \
                     its workspace is {} bytes",
                    4 * len
                );
            }
        }
    });
}
