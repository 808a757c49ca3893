//! Packed pointwise weights scaled per input channel
//! (`Conv2d::scale_packed_input_channels`, a squeeze-excite gate applied to the
//! weights): at every level the scaled copy is bit for bit the packing of the scaled
//! weights, its forward pass equals the forward pass of the gated input within f32
//! rounding (and the f64 reference), and misuse is a typed error.

use crate::common::{Rng, levels, rel_err};
use effnet::Error;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvPass};
use effnet::simd::with_level;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn shapes() -> Vec<ConvDesc> {
    vec![
        ConvDesc::pointwise(1, (9, 7), 40, 70),
        ConvDesc::pointwise(1, (5, 5), 17, 3),
        ConvDesc::pointwise(2, (11, 11), 96, 24).with_stride(2),
        ConvDesc::pointwise(1, (1, 1), 1152, 48),
    ]
}

#[test]
fn scaled_packed_weights_are_the_packing_of_the_scaled_weights() {
    for (i, d) in shapes().iter().enumerate() {
        let mut r = Rng::new(8100 + i as u64);
        let (ci, co) = (d.in_channels, d.out_channels);
        for level in levels() {
            with_level(level, || {
                let conv = Conv2d::new(d).unwrap();
                let s = conv.shape();
                let (x, w, b) = (r.vec(s.x_len), r.vec(s.w_len), r.vec(co));
                // A sigmoid-like gate in (0, 1), one value per input channel.
                let gate: Vec<f32> = r.vec(ci).iter().map(|u| 0.5 + 0.45 * u).collect();
                let len = conv.packed_weights_len();
                let mut packed = vec![0.0; len];
                conv.pack_weights(&w, &mut packed).unwrap();
                let mut scaled = vec![f32::NAN; len];
                conv.scale_packed_input_channels(&packed, &gate, &mut scaled)
                    .unwrap();
                let gated_w: Vec<f32> = w
                    .iter()
                    .enumerate()
                    .map(|(k, v)| v * gate[k / co])
                    .collect();
                let mut want = vec![0.0; len];
                conv.pack_weights(&gated_w, &mut want).unwrap();
                assert_eq!(bits(&scaled), bits(&want), "{level} {d:?}");
                // The forward pass on the scaled weights is that of the gated input.
                let mut y = vec![f32::NAN; s.y_len];
                let mut ws = vec![0.0; conv.workspace_len(ConvPass::Forward, 0)];
                conv.forward_packed(&x, &scaled, Some(&b), &mut y, &mut ws)
                    .unwrap();
                let gx: Vec<f32> = x
                    .iter()
                    .enumerate()
                    .map(|(k, v)| v * gate[k % ci])
                    .collect();
                let mut yg = vec![0.0; s.y_len];
                conv.forward(&gx, &w, Some(&b), &mut yg).unwrap();
                let yg64: Vec<f64> = yg.iter().map(|&v| f64::from(v)).collect();
                let e = rel_err(&y, &yg64);
                assert!(e < 1e-5, "{level} {d:?}: {e:e}");
            })
        }
    }
}

#[test]
fn scaling_packed_weights_checks_its_inputs() {
    let d = ConvDesc::pointwise(1, (3, 3), 8, 5);
    let conv = Conv2d::new(&d).unwrap();
    let len = conv.packed_weights_len();
    let mut packed = vec![0.0; len];
    conv.pack_weights(&vec![0.5; conv.shape().w_len], &mut packed)
        .unwrap();
    let gate = vec![1.0; 8];
    let mut out = vec![0.0; len];
    assert!(
        conv.scale_packed_input_channels(&packed, &gate, &mut out)
            .is_ok()
    );
    assert!(matches!(
        conv.scale_packed_input_channels(&packed, &gate[..7], &mut out),
        Err(Error::BufferSize { name: "scale", .. })
    ));
    assert!(matches!(
        conv.scale_packed_input_channels(&packed, &gate, &mut out[..len - 1]),
        Err(Error::BufferSize {
            name: "packed weights",
            ..
        })
    ));
    assert!(matches!(
        conv.scale_packed_input_channels(&packed[..len - 1], &gate, &mut out),
        Err(Error::BufferSize {
            name: "packed weights",
            ..
        })
    ));
    // Not packed by this plan.
    let raw = vec![0.5; len];
    assert!(matches!(
        conv.scale_packed_input_channels(&raw, &gate, &mut out),
        Err(Error::InvalidArgument(_))
    ));
    // Another family.
    let dw = Conv2d::new(&ConvDesc::depthwise(1, (5, 5), 8, 3, 1)).unwrap();
    let mut dp = vec![0.0; dw.packed_weights_len()];
    dw.pack_weights(&vec![0.5; dw.shape().w_len], &mut dp)
        .unwrap();
    let mut dout = vec![0.0; dp.len()];
    assert!(matches!(
        dw.scale_packed_input_channels(&dp, &gate, &mut dout),
        Err(Error::InvalidArgument(_))
    ));
}
