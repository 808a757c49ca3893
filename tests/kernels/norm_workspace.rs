//! Caller-owned workspaces for the normalizations, the fused and standalone Proxy Norm,
//! the pooling, the squeeze-excite gate and the loss: with a workspace of exactly
//! `workspace_len` floats and stale (NaN) contents, every pass gives the allocating
//! pass's bits, at every SIMD level and for 1 and 8 threads (which take the per-sample
//! and the per-chunk schedules of the normalizations); so does a second call on what
//! the first left, and a larger, unaligned workspace; one float short is
//! `Error::BufferSize` naming the workspace.

use crate::common::{Rng, in_pool, levels};
use effnet::Error;
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::GradMode;
use effnet::kernels::gate;
use effnet::kernels::loss::{CrossEntropy, Targets};
use effnet::kernels::norm::{
    Affine, AffineGrads, Grouping, Norm, NormDesc, NormPass, NormStats, RunningStats,
};
use effnet::kernels::pool::{self, Nhwc, PoolPass};
use effnet::kernels::proxy_norm::{
    NormProxy, ProxyGrads, ProxyNorm, ProxyNormDesc, ProxyParams, ProxyPass, ProxyVariant, Upstream,
};
use effnet::simd::{SimdLevel, with_level};

/// Every output of one call, in a fixed order.
type Outputs = Vec<Vec<f32>>;
type Run<'a> = Box<dyn Fn(Option<&mut [f32]>) -> Result<Outputs, Error> + Sync + 'a>;

/// One pass: its name, the workspace floats it needs, and the call (`None`: the
/// allocating form).
struct Case<'a> {
    name: String,
    len: usize,
    run: Run<'a>,
}

fn bits(o: &Outputs) -> Vec<Vec<u32>> {
    o.iter()
        .map(|v| v.iter().map(|f| f.to_bits()).collect())
        .collect()
}

fn check(case: &Case, what: &str) {
    let name = format!("{what} {}", case.name);
    let want = bits(&(case.run)(None).unwrap());
    let mut ws = vec![f32::NAN; case.len];
    let got = (case.run)(Some(&mut ws)).unwrap();
    assert!(bits(&got) == want, "{name}: stale workspace differs");
    // Again on whatever the first call left.
    let got = (case.run)(Some(&mut ws)).unwrap();
    assert!(bits(&got) == want, "{name}: reused workspace differs");
    // Larger and starting one float off any 64-byte boundary.
    let mut big = vec![f32::NAN; case.len + 17];
    let got = (case.run)(Some(&mut big[1..])).unwrap();
    assert!(
        bits(&got) == want,
        "{name}: larger, unaligned workspace differs"
    );
    if case.len > 0 {
        let mut short = vec![0.0f32; case.len - 1];
        let e = (case.run)(Some(&mut short)).unwrap_err();
        assert_eq!(
            e,
            Error::BufferSize {
                name: "workspace",
                expected: case.len,
                actual: case.len - 1
            },
            "{name}"
        );
    }
}

/// Runs every case at every level in pools of 1 and 8 threads (for the passes that
/// read the level per call).
fn check_all(cases: &[Case]) {
    for level in levels() {
        check_at(level, cases);
    }
}

/// Runs every case at `level` in pools of 1 and 8 threads (for cases whose plans were
/// made at `level`).
fn check_at(level: SimdLevel, cases: &[Case]) {
    for threads in [1, 8] {
        in_pool(threads, || {
            with_level(level, || {
                for c in cases {
                    check(c, &format!("{level} {threads} threads"));
                }
            })
        });
    }
}

fn norm_descs() -> Vec<NormDesc> {
    // 8 channels, 50×50 pixels: two chunks per sample; 3 samples.
    let hw = (50, 50);
    vec![
        NormDesc::batch_norm(3, hw, 8),
        NormDesc::batch_norm(2, (3, 5), 20).with_activation(Activation::Swish),
        NormDesc::group_norm(3, hw, 8, 4),
        NormDesc::group_norm(3, (7, 6), 12, 3)
            .with_grouping(Grouping::Strided)
            .with_activation(Activation::Relu),
        NormDesc::layer_norm(3, hw, 8).with_activation(Activation::Swish),
    ]
}

fn stats_vecs(s: NormStats) -> [Vec<f32>; 3] {
    [s.mean, s.var, s.rstd]
}

fn norm_cases<'a>(norm: &'a Norm, data: &'a [Vec<f32>; 5], affine: bool) -> Vec<Case<'a>> {
    let [x, dy, gamma, beta, run_stats] = data;
    let c = norm.desc().channels;
    let aff = move || {
        if affine {
            Affine::new(gamma, beta)
        } else {
            Affine::NONE
        }
    };
    let bn = norm.desc().groups() == 0;
    let running = RunningStats {
        mean: run_stats[..c].to_vec(),
        var: run_stats[c..].iter().map(|v| v.abs() + 0.5).collect(),
    };
    let fwd: Run = Box::new(move |ws| {
        let mut y = vec![0.0f32; norm.x_len()];
        let mut st = norm.new_stats();
        match ws {
            Some(ws) => norm.forward_with_workspace(x, aff(), &mut y, &mut st, ws),
            None => norm.forward(x, aff(), &mut y, &mut st),
        }?;
        let mut out = vec![y];
        out.extend(stats_vecs(st));
        Ok(out)
    });
    let infer: Run = Box::new(move |ws| {
        let mut y = vec![0.0f32; norm.x_len()];
        let r = bn.then_some(&running);
        match ws {
            Some(ws) => norm.forward_infer_with_workspace(x, aff(), r, &mut y, ws),
            None => norm.forward_infer(x, aff(), r, &mut y),
        }?;
        Ok(vec![y])
    });
    let bwd: Run = Box::new(move |ws| {
        let mut st = norm.new_stats();
        norm.forward(x, aff(), &mut vec![0.0; norm.x_len()], &mut st)?;
        let mut dx = vec![0.0f32; norm.x_len()];
        // Accumulate onto non-zero gradients.
        let (mut dg, mut db) = (gamma.clone(), beta.clone());
        let grads = AffineGrads {
            dgamma: Some(&mut dg),
            dbeta: Some(&mut db),
            mode: GradMode::Accumulate,
        };
        match ws {
            Some(ws) => norm.backward_with_workspace(x, dy, aff(), &st, &mut dx, grads, ws),
            None => norm.backward(x, dy, aff(), &st, &mut dx, grads),
        }?;
        Ok(vec![dx, dg, db])
    });
    let d = norm.desc();
    let name = |p: &str| format!("{:?} affine {affine} {p}", d.kind);
    vec![
        Case {
            name: name("forward"),
            len: norm.workspace_len(NormPass::Forward),
            run: fwd,
        },
        Case {
            name: name("forward_infer"),
            len: norm.workspace_len(NormPass::ForwardInfer),
            run: infer,
        },
        Case {
            name: name("backward"),
            len: norm.workspace_len(NormPass::Backward),
            run: bwd,
        },
    ]
}

#[test]
fn norm_workspace_passes_give_the_allocating_bits() {
    for (i, d) in norm_descs().iter().enumerate() {
        let mut r = Rng::new(100 + i as u64);
        let c = d.channels;
        let len = Norm::new(d).unwrap().x_len();
        // An offset mean: the shifted sums matter.
        let x: Vec<f32> = r.vec(len).iter().map(|v| 3.0 + v).collect();
        let data = [x, r.vec(len), r.vec(c), r.vec(c), r.vec(2 * c)];
        for level in levels() {
            let norm = Norm::new(d).unwrap().with_level(level);
            for affine in [true, false] {
                let cases = norm_cases(&norm, &data, affine);
                assert!(cases.iter().all(|c| c.len > 0), "{d:?}");
                check_at(level, &cases);
            }
        }
    }
}

/// Random parameters around the initial ones `(1, 0, 0, 0)`, `[4][channels]`.
fn proxy_params(r: &mut Rng, c: usize) -> Vec<f32> {
    (0..4 * c)
        .map(|i| if i < c { 1.0 } else { 0.0 } + 0.3 * r.uniform())
        .collect()
}

fn params_of(p: &[f32], c: usize) -> ProxyParams<'_> {
    ProxyParams {
        gamma: &p[..c],
        beta: &p[c..2 * c],
        beta_prime: &p[2 * c..3 * c],
        gamma_prime: &p[3 * c..],
    }
}

/// Runs `f` with `ProxyGrads` over `g` (`[4][channels]`, accumulated into).
fn with_grads<R>(g: &mut [f32], c: usize, f: impl FnOnce(ProxyGrads) -> R) -> R {
    let (dg, rest) = g.split_at_mut(c);
    let (db, rest) = rest.split_at_mut(c);
    let (dbp, dgp) = rest.split_at_mut(c);
    f(ProxyGrads {
        dgamma: dg,
        dbeta: db,
        dbeta_prime: dbp,
        dgamma_prime: dgp,
        mode: GradMode::Accumulate,
    })
}

#[test]
fn proxy_norm_workspace_passes_give_the_allocating_bits() {
    let variants = [
        ProxyVariant::FullScale,
        ProxyVariant::DelayedScale,
        ProxyVariant::NoScale,
    ];
    let norms = [
        NormDesc::layer_norm(3, (50, 50), 8),
        NormDesc::group_norm(3, (9, 7), 24, 6),
    ];
    for (i, nd) in norms.iter().enumerate() {
        for (j, v) in variants.iter().enumerate() {
            let c = nd.channels;
            let pd = ProxyNormDesc::new(c).with_variant(*v).with_k(37);
            for level in levels() {
                let op = NormProxy::new(nd, &pd).unwrap().with_level(level);
                let pn = ProxyNorm::new(&pd).unwrap().with_level(level);
                let mut r = Rng::new(300 + 10 * i as u64 + j as u64);
                let n = op.x_len();
                let (x, dz, p) = (r.vec(n), r.vec(n), proxy_params(&mut r, c));
                let (g0, ds, dmu) = (r.vec(4 * c), r.vec(c), r.vec(c));
                let ds = (*v == ProxyVariant::DelayedScale).then_some(&ds[..]);
                let (x, dz, p, g0, dmu) = (&x, &dz, &p, &g0, &dmu);
                let fused_fwd: Run = Box::new(|ws| {
                    let mut z = vec![0.0f32; n];
                    let mut sv = op.new_saved();
                    let params = params_of(p, c);
                    match ws {
                        Some(ws) => op.forward_with_workspace(x, params, &mut z, &mut sv, ws),
                        None => op.forward(x, params, &mut z, &mut sv),
                    }?;
                    let [a, b, cc] = stats_vecs(sv.norm);
                    Ok(vec![
                        z,
                        a,
                        b,
                        cc,
                        sv.proxy.mean,
                        sv.proxy.var,
                        sv.proxy.scale,
                    ])
                });
                let fused_bwd: Run = Box::new(|ws| {
                    let params = params_of(p, c);
                    let mut sv = op.new_saved();
                    op.forward(x, params, &mut vec![0.0; n], &mut sv)?;
                    let mut dx = vec![0.0f32; n];
                    let mut g = g0.clone();
                    let up = Upstream { dz, ds };
                    with_grads(&mut g, c, |gr| match ws {
                        Some(ws) => op.backward_with_workspace(x, up, params, &sv, &mut dx, gr, ws),
                        None => op.backward(x, up, params, &sv, &mut dx, gr),
                    })?;
                    Ok(vec![dx, g])
                });
                // Standalone: x is taken as already normalized.
                let alone_fwd: Run = Box::new(|ws| {
                    let mut z = vec![0.0f32; n];
                    let mut st = pn.new_stats();
                    let params = params_of(p, c);
                    match ws {
                        Some(ws) => pn.forward_with_workspace(x, params, &mut z, &mut st, ws),
                        None => pn.forward(x, params, &mut z, &mut st),
                    }?;
                    Ok(vec![z, st.mean, st.var, st.scale])
                });
                let alone_bwd: Run = Box::new(|ws| {
                    let params = params_of(p, c);
                    let mut st = pn.new_stats();
                    pn.forward(x, params, &mut vec![0.0; n], &mut st)?;
                    let mut dx = vec![0.0f32; n];
                    let mut g = g0.clone();
                    let up = Upstream { dz, ds };
                    with_grads(&mut g, c, |gr| match ws {
                        Some(ws) => pn.backward_with_workspace(x, up, params, &st, &mut dx, gr, ws),
                        None => pn.backward(x, up, params, &st, &mut dx, gr),
                    })?;
                    Ok(vec![dx, g])
                });
                let stats: Run = Box::new(|ws| {
                    let mut st = pn.new_stats();
                    let params = params_of(p, c);
                    match ws {
                        Some(ws) => pn.stats_with_workspace(params, &mut st, ws),
                        None => pn.stats(params, &mut st),
                    }?;
                    Ok(vec![st.mean, st.var, st.scale])
                });
                let stats_bwd: Run = Box::new(|ws| {
                    let params = params_of(p, c);
                    let mut st = pn.new_stats();
                    pn.stats(params, &mut st)?;
                    let mut g = g0.clone();
                    let dsv = &g0[..c];
                    with_grads(&mut g, c, |gr| match ws {
                        Some(ws) => pn.stats_backward_with_workspace(params, &st, dmu, dsv, gr, ws),
                        None => pn.stats_backward(params, &st, dmu, dsv, gr),
                    })?;
                    Ok(vec![g])
                });
                let name = |s: &str| format!("{:?} {v:?} {s}", nd.kind);
                let cases = vec![
                    Case {
                        name: name("fused forward"),
                        len: op.workspace_len(ProxyPass::Forward),
                        run: fused_fwd,
                    },
                    Case {
                        name: name("fused backward"),
                        len: op.workspace_len(ProxyPass::Backward),
                        run: fused_bwd,
                    },
                    Case {
                        name: name("standalone forward"),
                        len: pn.workspace_len(ProxyPass::Forward, n),
                        run: alone_fwd,
                    },
                    Case {
                        name: name("standalone backward"),
                        len: pn.workspace_len(ProxyPass::Backward, n),
                        run: alone_bwd,
                    },
                    Case {
                        name: name("stats"),
                        len: pn.workspace_len(ProxyPass::Stats, 0),
                        run: stats,
                    },
                    Case {
                        name: name("stats backward"),
                        len: pn.workspace_len(ProxyPass::StatsBackward, 0),
                        run: stats_bwd,
                    },
                ];
                assert_eq!(
                    op.workspace_len(ProxyPass::Stats),
                    pn.workspace_len(ProxyPass::Stats, 0)
                );
                check_at(level, &cases);
            }
        }
    }
}

#[test]
fn pool_gate_and_loss_workspace_passes_give_the_allocating_bits() {
    // 5 channels, 70×70 pixels: several chunks per image.
    for (i, s) in [
        Nhwc::new(3, 70, 70, 5).unwrap(),
        Nhwc::new(2, 3, 4, 40).unwrap(),
    ]
    .iter()
    .enumerate()
    {
        let mut r = Rng::new(500 + i as u64);
        let (x, dy, g) = (r.vec(s.len()), r.vec(s.len()), r.vec(s.pooled_len()));
        let (x, dy, g) = (&x, &dy, &g);
        let pool_fwd: Run = Box::new(|ws| {
            let mut y = vec![0.0f32; s.pooled_len()];
            match ws {
                Some(ws) => pool::global_avg_pool_with_workspace(s, x, &mut y, ws),
                None => pool::global_avg_pool(s, x, &mut y),
            }?;
            Ok(vec![y])
        });
        let pool_bwd: Run = Box::new(|ws| {
            let mut dx = x.clone();
            let m = GradMode::Accumulate;
            match ws {
                Some(ws) => pool::global_avg_pool_backward_with_workspace(s, g, &mut dx, m, ws),
                None => pool::global_avg_pool_backward(s, g, &mut dx, m),
            }?;
            Ok(vec![dx])
        });
        let gate_bwd: Run = Box::new(|ws| {
            let (mut dx, mut dg) = (vec![0.0f32; s.len()], vec![0.0f32; s.pooled_len()]);
            match ws {
                Some(ws) => gate::backward_with_workspace(s, dy, x, g, &mut dx, &mut dg, ws),
                None => gate::backward(s, dy, x, g, &mut dx, &mut dg),
            }?;
            Ok(vec![dx, dg])
        });
        let cases = vec![
            Case {
                name: format!("{s:?} pool forward"),
                len: pool::workspace_len(s, PoolPass::Forward),
                run: pool_fwd,
            },
            Case {
                name: format!("{s:?} pool backward"),
                len: pool::workspace_len(s, PoolPass::Backward),
                run: pool_bwd,
            },
            Case {
                name: format!("{s:?} gate backward"),
                len: gate::backward_workspace_len(s),
                run: gate_bwd,
            },
        ];
        check_all(&cases);
    }
    let (n, k) = (9, 13);
    let ce = CrossEntropy::new(n, k, 0.1).unwrap();
    let mut r = Rng::new(600);
    let z: Vec<f32> = r.vec(n * k).iter().map(|v| 4.0 * v).collect();
    let labels: Vec<usize> = (0..n).map(|i| (i * 5) % k).collect();
    let soft: Vec<f32> = r.vec(n * k).iter().map(|v| v.abs()).collect();
    let (z, labels, soft) = (&z, &labels, &soft);
    let mut cases = Vec::new();
    for (t, grad) in [(0, true), (1, true), (0, false)] {
        let run: Run = Box::new(move |ws| {
            let targets = if t == 0 {
                Targets::Labels(labels)
            } else {
                Targets::Soft(soft)
            };
            let mut dv = vec![0.0f32; n * k];
            let d = grad.then_some(&mut dv[..]);
            let loss = match ws {
                Some(ws) => ce.forward_backward_with_workspace(z, targets, d, ws),
                None => ce.forward_backward(z, targets, d),
            }?;
            Ok(vec![vec![loss], dv])
        });
        cases.push(Case {
            name: format!("cross entropy targets {t} grad {grad}"),
            len: ce.workspace_len(),
            run,
        });
    }
    check_all(&cases);
}
