//! Unit tests of `proxy_norm.rs` (the C entry points against the Rust API).

use super::*;
use crate::norm::tests::{desc, rand};
use crate::norm::{
    effnet_norm_backward, effnet_norm_forward, effnet_norm_plan_create, effnet_norm_plan_destroy,
};
use effnet_core::kernels::norm::{Affine, AffineGrads, Norm};

#[test]
fn proxy_descriptors_convert_and_reject_misfits() {
    let p = effnet_proxy_norm_desc {
        struct_size: size_of::<effnet_proxy_norm_desc>(),
        channels: 8,
        ..Default::default()
    };
    let pd = to_proxy_desc(&p).unwrap();
    assert_eq!((pd.k, pd.eps_pn), (200, 0.03));
    let m = to_proxy_desc(&effnet_proxy_norm_desc { variant: 3, ..p })
        .unwrap_err()
        .message;
    assert!(m.contains("variant = 3"), "{m}");
}

/// The C entry points pack and unpack `saved`, `affine` and `params` exactly as the
/// Rust passes expect: results are bitwise those of the Rust API.
#[test]
fn fused_proxy_norm_and_group_norm_match_the_rust_api_bitwise() {
    use effnet_status::EFFNET_OK;
    let nd = effnet_norm_desc {
        activation: 3,
        ..desc()
    };
    let pd = effnet_proxy_norm_desc {
        struct_size: size_of::<effnet_proxy_norm_desc>(),
        channels: 8,
        k: 16,
        variant: effnet_proxy_variant::EFFNET_PROXY_DELAYED_SCALE as u32,
        activation: 3,
        ..Default::default()
    };
    let (mut ctx, mut np, mut pp) = (
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    );
    let n = 2 * 3 * 4 * 8;
    let (x, dy) = (rand(n, 1), rand(n, 2));
    let params: Vec<f32> = rand(32, 3).iter().map(|v| v * 0.5 + 0.5).collect();
    let ds = rand(8, 4);
    // SAFETY: valid pointers and counts throughout.
    unsafe {
        assert_eq!(crate::effnet_context_create(2, &mut ctx), EFFNET_OK);
        assert_eq!(effnet_norm_plan_create(ctx, &nd, &mut np), EFFNET_OK);
        let pn_norm = effnet_norm_desc {
            activation: 0,
            ..desc()
        };
        assert_eq!(
            effnet_proxy_norm_plan_create(ctx, &pn_norm, &pd, &mut pp),
            EFFNET_OK
        );
        // GroupNorm + swish with affine.
        let (mut y, mut saved) = (vec![0f32; n], vec![0f32; 12]);
        let st = effnet_norm_forward(
            ctx,
            np,
            x.as_ptr(),
            n,
            params.as_ptr(),
            16,
            y.as_mut_ptr(),
            n,
            saved.as_mut_ptr(),
            12,
        );
        assert_eq!(st, EFFNET_OK);
        let (mut dx, mut da) = (vec![0f32; n], vec![0f32; 16]);
        let st = effnet_norm_backward(
            ctx,
            np,
            x.as_ptr(),
            n,
            dy.as_ptr(),
            n,
            params.as_ptr(),
            16,
            saved.as_ptr(),
            12,
            dx.as_mut_ptr(),
            n,
            da.as_mut_ptr(),
            16,
            0,
        );
        assert_eq!(st, EFFNET_OK);
        let (d, _) = to_norm_desc(&nd).unwrap();
        let norm = Norm::new(&d).unwrap();
        let a = Affine::new(&params[..8], &params[8..16]);
        let (mut y2, mut stats) = (vec![0f32; n], norm.new_stats());
        norm.forward(&x, a, &mut y2, &mut stats).unwrap();
        assert_eq!(y, y2);
        assert_eq!(saved, [&stats.mean[..], &stats.var, &stats.rstd].concat());
        let (mut dx2, mut dg, mut db) = (vec![0f32; n], vec![0f32; 8], vec![0f32; 8]);
        let g = AffineGrads {
            dgamma: Some(&mut dg),
            dbeta: Some(&mut db),
            mode: Default::default(),
        };
        norm.backward(&x, &dy, a, &stats, &mut dx2, g).unwrap();
        assert_eq!(dx, dx2);
        assert_eq!(da, [dg, db].concat());

        // Fused GroupNorm + delayed-scale Proxy Norm.
        let mut s = effnet_proxy_norm_shape {
            struct_size: size_of::<effnet_proxy_norm_shape>(),
            ..Default::default()
        };
        assert_eq!(effnet_proxy_norm_plan_shape(pp, &mut s), EFFNET_OK);
        assert_eq!((s.x_len, s.saved_len, s.scale_offset), (n, 36, 28));
        let (mut z, mut saved) = (vec![0f32; n], vec![0f32; 36]);
        let st = effnet_proxy_norm_forward(
            ctx,
            pp,
            x.as_ptr(),
            n,
            params.as_ptr(),
            32,
            z.as_mut_ptr(),
            n,
            saved.as_mut_ptr(),
            36,
        );
        assert_eq!(st, EFFNET_OK);
        let (mut dx, mut dp) = (vec![0f32; n], vec![0f32; 32]);
        let st = effnet_proxy_norm_backward(
            ctx,
            pp,
            x.as_ptr(),
            n,
            dy.as_ptr(),
            n,
            ds.as_ptr(),
            8,
            params.as_ptr(),
            32,
            saved.as_ptr(),
            36,
            dx.as_mut_ptr(),
            n,
            dp.as_mut_ptr(),
            32,
            0,
        );
        assert_eq!(st, EFFNET_OK);
        let (pnd, _) = to_norm_desc(&pn_norm).unwrap();
        let op = NormProxy::new(&pnd, &to_proxy_desc(&pd).unwrap()).unwrap();
        let (mut z2, mut sv) = (vec![0f32; n], op.new_saved());
        let pr = params_of(&params, 8);
        op.forward(&x, pr, &mut z2, &mut sv).unwrap();
        assert_eq!(z, z2);
        assert_eq!(&saved[28..], &sv.proxy.scale[..]);
        let mut g4 = vec![vec![0f32; 8]; 4];
        let [a, b, c, d] = &mut g4[..] else {
            unreachable!()
        };
        let g = ProxyGrads {
            dgamma: a,
            dbeta: b,
            dbeta_prime: c,
            dgamma_prime: d,
            mode: Default::default(),
        };
        let up = Upstream {
            dz: &dy,
            ds: Some(&ds),
        };
        let mut dx2 = vec![0f32; n];
        op.backward(&x, up, pr, &sv, &mut dx2, g).unwrap();
        assert_eq!(dx, dx2);
        assert_eq!(dp, g4.concat());
        // ds is refused by the other variants; a destroyed plan is reported.
        assert_eq!(effnet_proxy_norm_plan_destroy(pp), EFFNET_OK);
        let st = effnet_proxy_norm_forward(
            ctx,
            pp,
            x.as_ptr(),
            n,
            params.as_ptr(),
            32,
            z.as_mut_ptr(),
            n,
            saved.as_mut_ptr(),
            36,
        );
        assert_eq!(st, effnet_status::EFFNET_INVALID_ARGUMENT);
        assert_eq!(effnet_norm_plan_destroy(np), EFFNET_OK);
        assert_eq!(crate::effnet_context_destroy(ctx), EFFNET_OK);
    }
}
