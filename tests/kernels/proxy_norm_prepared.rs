//! Proxy Norm prepared once for inference (`NormProxy::prepare` +
//! `forward_prepared_with_workspace`): the same `z` bits and norm statistics as the
//! forward pass with the same parameters, for LayerNorm and GroupNorm (both groupings),
//! every variant and activation, batch 1 and > 1, at every level and thread count, with
//! a stale workspace; the proxy statistics are the forward pass's; mismatched inputs are
//! typed errors.

use crate::common::{Rng, in_pool, levels};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::norm::{Grouping, NormDesc};
use effnet::kernels::proxy_norm::{NormProxy, ProxyNormDesc, ProxyParams, ProxyPass, ProxyVariant};
use effnet::simd::with_level;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn prepared_forward_gives_the_forward_bits() {
    let norms = [
        NormDesc::layer_norm(1, (5, 3), 24),
        NormDesc::layer_norm(3, (4, 4), 17),
        NormDesc::group_norm(2, (3, 5), 48, 4),
        NormDesc::group_norm(2, (7, 1), 33, 3).with_grouping(Grouping::Strided),
    ];
    let variants = [
        ProxyVariant::FullScale,
        ProxyVariant::DelayedScale,
        ProxyVariant::NoScale,
    ];
    let mut seed = 1;
    for nd in &norms {
        for variant in variants {
            for act in [Activation::Swish, Activation::Identity] {
                seed += 1;
                let mut r = Rng::new(seed);
                let c = nd.channels;
                let pd = ProxyNormDesc::new(c)
                    .with_variant(variant)
                    .with_activation(act);
                let x: Vec<f32> = r.vec(nd.batch * nd.h * nd.w * c);
                let v = |r: &mut Rng, a: f32, s: f32| -> Vec<f32> {
                    r.vec(c).iter().map(|u| a + s * u).collect()
                };
                let (g, b, bp, gp) = (
                    v(&mut r, 1.0, 0.4),
                    v(&mut r, 0.0, 0.3),
                    v(&mut r, 0.0, 0.3),
                    v(&mut r, 0.0, 0.3),
                );
                let params = ProxyParams {
                    gamma: &g,
                    beta: &b,
                    beta_prime: &bp,
                    gamma_prime: &gp,
                };
                for level in levels() {
                    for threads in [1, 3] {
                        in_pool(threads, || {
                            with_level(level, || {
                                let op = NormProxy::new(nd, &pd).unwrap();
                                let mut want = vec![0.0; x.len()];
                                let mut saved = op.new_saved();
                                op.forward(&x, params, &mut want, &mut saved).unwrap();
                                let prepared = op.prepare(params).unwrap();
                                assert_eq!(prepared.stats(), &saved.proxy, "{level} {variant:?}");
                                let mut ws = vec![f32::NAN; op.workspace_len(ProxyPass::Forward)];
                                let mut z = vec![f32::NAN; x.len()];
                                let mut stats = op.norm().new_stats();
                                op.forward_prepared_with_workspace(
                                    &x, &prepared, &mut z, &mut stats, &mut ws,
                                )
                                .unwrap();
                                let what =
                                    format!("{level} {threads} threads {variant:?} {act:?} {nd:?}");
                                assert_eq!(bits(&z), bits(&want), "{what}");
                                assert_eq!(stats, saved.norm, "{what}");
                            })
                        });
                    }
                }
            }
        }
    }
}

#[test]
fn prepared_forward_checks_its_inputs() {
    let nd = NormDesc::layer_norm(1, (2, 2), 8);
    let op = NormProxy::new(&nd, &ProxyNormDesc::new(8)).unwrap();
    let other =
        NormProxy::new(&NormDesc::layer_norm(1, (2, 2), 4), &ProxyNormDesc::new(4)).unwrap();
    let (one, zero) = (vec![1.0; 8], vec![0.0; 8]);
    let p = ProxyParams {
        gamma: &one,
        beta: &zero,
        beta_prime: &zero,
        gamma_prime: &zero,
    };
    let prepared = op.prepare(p).unwrap();
    let short = ProxyParams {
        gamma: &one[..7],
        ..p
    };
    assert!(op.prepare(short).is_err());
    let x = vec![0.5; 32];
    let mut z = vec![0.0; 32];
    let mut ws = vec![0.0; op.workspace_len(ProxyPass::Forward)];
    let mut stats = op.norm().new_stats();
    let run = |x: &[f32], z: &mut [f32], st: &mut _, ws: &mut [f32], pr| {
        op.forward_prepared_with_workspace(x, pr, z, st, ws)
    };
    assert!(matches!(
        run(&x[..31], &mut z, &mut stats, &mut ws, &prepared),
        Err(Error::BufferSize { name: "x", .. })
    ));
    assert!(matches!(
        run(&x, &mut z[..31], &mut stats, &mut ws, &prepared),
        Err(Error::BufferSize { name: "z", .. })
    ));
    assert!(matches!(
        run(&x, &mut z, &mut stats, &mut ws[..1], &prepared),
        Err(Error::BufferSize {
            name: "workspace",
            ..
        })
    ));
    let four = vec![1.0; 4];
    let p4 = ProxyParams {
        gamma: &four,
        beta: &four,
        beta_prime: &four,
        gamma_prime: &four,
    };
    let wrong = other.prepare(p4).unwrap();
    assert!(matches!(
        run(&x, &mut z, &mut stats, &mut ws, &wrong),
        Err(Error::InvalidArgument(_))
    ));
    let mut bad_stats = other.norm().new_stats();
    bad_stats.mean.push(0.0);
    assert!(matches!(
        run(&x, &mut z, &mut bad_stats, &mut ws, &prepared),
        Err(Error::BufferSize {
            name: "stats.mean",
            ..
        })
    ));
    assert!(run(&x, &mut z, &mut stats, &mut ws, &prepared).is_ok());
}
