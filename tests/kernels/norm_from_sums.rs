//! Per-sample norms on statistics gathered elsewhere (`Norm::forward_from_sums_with_workspace`,
//! `NormProxy::forward_prepared_from_sums_with_workspace`): given each sample's channel
//! sums and sums of squares, `y` and the norm statistics agree with the norm's own
//! forward pass (which takes its statistics from `x`) to f32 rounding, for LayerNorm
//! and GroupNorm (both groupings), with and without affine, every Proxy Norm variant,
//! batch 1 and > 1, at every level and thread count; and the statistics a convolution
//! gathers for its output feed them: a conv's output with a large mean keeps its
//! variance (its sums of squares are shifted), and misuse is a typed error.

use crate::common::{Rng, in_pool, levels, rel_err, to64};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::{ChannelStats, Conv2d, ConvDesc, ConvWeights, PostArgs, PostOps};
use effnet::kernels::norm::{Affine, Grouping, Norm, NormDesc, NormPass, NormStats};
use effnet::kernels::proxy_norm::{NormProxy, ProxyNormDesc, ProxyParams, ProxyPass, ProxyVariant};
use effnet::simd::with_level;

/// Each sample's channel sums and sums of squares of `x` (`[N][H·W][C]`), in f64.
fn channel_sums(x: &[f32], n: usize, c: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut s, mut q) = (vec![0.0; n * c], vec![0.0; n * c]);
    let sl = x.len() / n;
    for (i, xs) in x.chunks(sl).enumerate() {
        for px in xs.chunks(c) {
            for (ch, &v) in px.iter().enumerate() {
                s[i * c + ch] += f64::from(v);
                q[i * c + ch] += f64::from(v) * f64::from(v);
            }
        }
    }
    (s, q)
}

fn norms() -> Vec<NormDesc> {
    vec![
        NormDesc::layer_norm(1, (5, 3), 24),
        NormDesc::layer_norm(3, (4, 4), 17),
        NormDesc::group_norm(2, (3, 5), 48, 4),
        NormDesc::group_norm(2, (7, 1), 33, 3).with_grouping(Grouping::Strided),
        NormDesc::group_norm(5, (9, 9), 16, 16),
    ]
}

/// The same within `tol` relative to `want`'s norm.
fn close(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let e = rel_err(got, &to64(want));
    assert!(e < tol, "{what}: relative error {e:e}");
}

fn close_stats(got: &NormStats, want: &NormStats, what: &str) {
    close(&got.mean, &want.mean, 1e-5, &format!("{what} mean"));
    close(&got.var, &want.var, 1e-5, &format!("{what} var"));
    close(&got.rstd, &want.rstd, 1e-5, &format!("{what} rstd"));
}

/// BatchNorm (training mode: statistics over the batch), down to one pixel per image.
fn batch_norms() -> Vec<NormDesc> {
    vec![
        NormDesc::batch_norm(3, (4, 4), 17),
        NormDesc::batch_norm(2, (1, 1), 24),
        NormDesc::batch_norm(5, (3, 5), 16),
    ]
}

#[test]
fn norm_from_sums_matches_the_forward_pass() {
    for (i, nd) in norms().iter().chain(&batch_norms()).enumerate() {
        let mut r = Rng::new(7100 + i as u64);
        let c = nd.channels;
        // An offset so that the mean matters.
        let x: Vec<f32> = r
            .vec(nd.batch * nd.h * nd.w * c)
            .iter()
            .map(|v| 0.7 + v)
            .collect();
        let (g, b) = (r.vec(c), r.vec(c));
        let sums = channel_sums(&x, nd.batch, c);
        for (affine, act) in [
            (Affine::NONE, Activation::Identity),
            (Affine::new(&g, &b), Activation::Swish),
        ] {
            let nd = &nd.with_activation(act);
            for level in levels() {
                for threads in [1, 3] {
                    in_pool(threads, || {
                        with_level(level, || {
                            let op = Norm::new(nd).unwrap();
                            let mut want = vec![0.0; x.len()];
                            let mut want_st = op.new_stats();
                            op.forward(&x, affine, &mut want, &mut want_st).unwrap();
                            let mut ws = vec![f32::NAN; op.workspace_len(NormPass::Forward)];
                            let mut y = vec![f32::NAN; x.len()];
                            let mut st = op.new_stats();
                            let s = (&sums.0[..], &sums.1[..]);
                            op.forward_from_sums_with_workspace(
                                &x, affine, s, &mut y, &mut st, &mut ws,
                            )
                            .unwrap();
                            let what = format!("{level} {threads} threads {nd:?}");
                            close(&y, &want, 2e-6, &what);
                            close_stats(&st, &want_st, &what);
                            // The allocating form gives the same bits.
                            let mut ya = vec![f32::NAN; x.len()];
                            let mut sta = op.new_stats();
                            op.forward_from_sums(&x, affine, s, &mut ya, &mut sta)
                                .unwrap();
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&ya), bits(&y), "{what}: allocating form");
                            assert_eq!(sta, st, "{what}: allocating form");
                        })
                    });
                }
            }
        }
    }
}

#[test]
fn prepared_proxy_from_sums_matches_the_prepared_forward() {
    let variants = [
        ProxyVariant::FullScale,
        ProxyVariant::DelayedScale,
        ProxyVariant::NoScale,
    ];
    for (i, nd) in norms().iter().enumerate() {
        for variant in variants {
            let mut r = Rng::new(7200 + i as u64);
            let c = nd.channels;
            let pd = ProxyNormDesc::new(c)
                .with_variant(variant)
                .with_activation(Activation::Swish);
            let x: Vec<f32> = r
                .vec(nd.batch * nd.h * nd.w * c)
                .iter()
                .map(|v| v - 0.4)
                .collect();
            let v = |r: &mut Rng, a: f32| -> Vec<f32> {
                r.vec(c).iter().map(|u| a + 0.3 * u).collect()
            };
            let (g, b, bp, gp) = (
                v(&mut r, 1.0),
                v(&mut r, 0.0),
                v(&mut r, 0.0),
                v(&mut r, 0.0),
            );
            let params = ProxyParams {
                gamma: &g,
                beta: &b,
                beta_prime: &bp,
                gamma_prime: &gp,
            };
            let sums = channel_sums(&x, nd.batch, c);
            for level in levels() {
                in_pool(2, || {
                    with_level(level, || {
                        let op = NormProxy::new(nd, &pd).unwrap();
                        let prepared = op.prepare(params).unwrap();
                        let mut ws = vec![f32::NAN; op.workspace_len(ProxyPass::Forward)];
                        let (mut want, mut z) = (vec![0.0; x.len()], vec![f32::NAN; x.len()]);
                        let (mut want_st, mut st) = (op.norm().new_stats(), op.norm().new_stats());
                        op.forward_prepared_with_workspace(
                            &x,
                            &prepared,
                            &mut want,
                            &mut want_st,
                            &mut ws,
                        )
                        .unwrap();
                        let s = (&sums.0[..], &sums.1[..]);
                        op.forward_prepared_from_sums_with_workspace(
                            &x, &prepared, s, &mut z, &mut st, &mut ws,
                        )
                        .unwrap();
                        let what = format!("{level} {variant:?} {nd:?}");
                        close(&z, &want, 2e-6, &what);
                        close_stats(&st, &want_st, &what);
                        // The training forward pass (proxy statistics computed) on
                        // the same sums.
                        let mut want_saved = op.new_saved();
                        op.forward_with_workspace(&x, params, &mut want, &mut want_saved, &mut ws)
                            .unwrap();
                        let mut saved = op.new_saved();
                        op.forward_from_sums_with_workspace(
                            &x, params, s, &mut z, &mut saved, &mut ws,
                        )
                        .unwrap();
                        close(&z, &want, 2e-6, &format!("{what} training"));
                        close_stats(&saved.norm, &want_saved.norm, &format!("{what} training"));
                        assert_eq!(saved.proxy, want_saved.proxy, "{what}: proxy statistics");
                        let mut za = vec![f32::NAN; x.len()];
                        let mut sa = op.new_saved();
                        op.forward_from_sums(&x, params, s, &mut za, &mut sa)
                            .unwrap();
                        assert!(za == z && sa == saved, "{what}: allocating form");
                    })
                });
            }
        }
    }
}

/// A convolution whose output sits far from zero (a bias of 1000, small weights): the
/// variance from its statistics post-op is the output's to f32 rounding of the output
/// itself, where unshifted f32 sums of squares would lose it entirely.
#[test]
fn conv_statistics_keep_the_variance_of_outputs_far_from_zero() {
    let d = ConvDesc::new(2, (9, 7), 24, 48, (3, 3))
        .with_group_size(8)
        .with_symmetric_padding();
    let mut r = Rng::new(7300);
    let x = r.vec(2 * 9 * 7 * 24);
    let b = vec![1000.0; 48];
    for level in levels() {
        let post = PostOps {
            scale: false,
            activation: Activation::Identity,
            residual: false,
            stats: ChannelStats::SumsAndSquares,
        };
        let conv = Conv2d::with_level(&d, level).unwrap().with_post_ops(post);
        let s = conv.shape();
        let w: Vec<f32> = Rng::new(7301)
            .vec(s.w_len)
            .iter()
            .map(|v| 1e-3 * v)
            .collect();
        let mut y = vec![0.0; s.y_len];
        let (mut sums, mut squares) = (vec![0.0; 96], vec![0.0; 96]);
        let args = PostArgs {
            scale: None,
            residual: None,
            sums: Some(&mut sums),
            squares: Some(&mut squares),
            pre: None,
        };
        conv.forward_post(&x, ConvWeights::Plain(&w), Some(&b), args, &mut y, None)
            .unwrap();
        let (ws, wq) = channel_sums(&y, 2, 48);
        let m = (s.out_h * s.out_w) as f64;
        for k in 0..96 {
            let got = squares[k] / m - (sums[k] / m).powi(2);
            let mean = ws[k] / m;
            // The f64 variance of the f32 output, about its mean.
            let want: f64 = y
                .chunks(48)
                .skip((k / 48) * s.out_h * s.out_w)
                .take(s.out_h * s.out_w)
                .map(|px| (f64::from(px[k % 48]) - mean).powi(2))
                .sum::<f64>()
                / m;
            assert!(want > 1e-7, "the case must have a variance");
            assert!(
                (got - want).abs() < 1e-2 * want,
                "{level} channel {k}: {got:e} vs {want:e}"
            );
            assert!((sums[k] - ws[k]).abs() < 1e-6 * ws[k].abs(), "{level} sums");
            assert!((squares[k] - wq[k]).abs() < 1e-6 * wq[k], "{level} squares");
        }
    }
}

#[test]
fn norm_from_sums_checks_its_inputs() {
    let nd = NormDesc::group_norm(2, (2, 2), 8, 2);
    let op = Norm::new(&nd).unwrap();
    let x = vec![0.5; op.x_len()];
    let mut y = vec![0.0; op.x_len()];
    let mut st = op.new_stats();
    let mut ws = vec![0.0; op.workspace_len(NormPass::Forward)];
    let (s, q) = (vec![1.0; 16], vec![1.0; 16]);
    let mut run = |x: &[f32], s: &[f64], q: &[f64], ws: &mut [f32]| {
        op.forward_from_sums_with_workspace(x, Affine::NONE, (s, q), &mut y, &mut st, ws)
    };
    assert!(run(&x, &s, &q, &mut ws).is_ok());
    assert!(matches!(
        run(&x[..3], &s, &q, &mut ws),
        Err(Error::BufferSize { name: "x", .. })
    ));
    assert!(matches!(
        run(&x, &s[..15], &q, &mut ws),
        Err(Error::BufferSize { name: "sums", .. })
    ));
    assert!(matches!(
        run(&x, &s, &q[..15], &mut ws),
        Err(Error::BufferSize {
            name: "squares",
            ..
        })
    ));
    assert!(matches!(
        run(&x, &s, &q, &mut ws[..1]),
        Err(Error::BufferSize {
            name: "workspace",
            ..
        })
    ));
    // BatchNorm takes the same `[N][C]` sums (added over the batch).
    let bn = Norm::new(&NormDesc::batch_norm(2, (2, 2), 8)).unwrap();
    let mut bst = bn.new_stats();
    let mut bws = vec![0.0; bn.workspace_len(NormPass::Forward)];
    let mut run_bn = |s: &[f64], q: &[f64]| {
        bn.forward_from_sums_with_workspace(&x, Affine::NONE, (s, q), &mut y, &mut bst, &mut bws)
    };
    assert!(run_bn(&s, &q).is_ok());
    let r = run_bn(&s[..8], &q);
    assert!(
        matches!(r, Err(Error::BufferSize { name: "sums", .. })),
        "{r:?}"
    );
    // Proxy Norm's training pass checks the sums before it writes anything.
    let pn = NormProxy::new(&nd, &ProxyNormDesc::new(8)).unwrap();
    let ones = vec![1.0; 8];
    let zeros = vec![0.0; 8];
    let params = ProxyParams {
        gamma: &ones,
        beta: &zeros,
        beta_prime: &zeros,
        gamma_prime: &zeros,
    };
    let mut saved = pn.new_saved();
    let before = saved.clone();
    let mut z = vec![0.0; pn.x_len()];
    let r = pn.forward_from_sums(&x, params, (&s, &q[..15]), &mut z, &mut saved);
    assert!(
        matches!(
            r,
            Err(Error::BufferSize {
                name: "squares",
                ..
            })
        ),
        "{r:?}"
    );
    assert!(saved == before, "nothing written on an error");
}
