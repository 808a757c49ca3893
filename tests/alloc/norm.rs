//! The workspace passes of the normalizations, the fused and standalone Proxy Norm,
//! the pooling, the gate and the loss allocate nothing larger than 1 KiB (so neither
//! tensor-sized nor per-channel scratch: the shapes have 320 channels, 1280 bytes per
//! channel vector): a counting global allocator (`tests/common/alloc.rs`) records every
//! allocation made (on any thread) while a pass runs. The counter also sees each
//! allocating pass's workspace, so the test can fail.

use crate::common::Rng;
use crate::common::alloc::count;
use effnet::kernels::conv::GradMode;
use effnet::kernels::gate;
use effnet::kernels::loss::{CrossEntropy, Targets};
use effnet::kernels::norm::{Affine, AffineGrads, Norm, NormDesc, NormPass, RunningStats};
use effnet::kernels::pool::{self, Nhwc, PoolPass};
use effnet::kernels::proxy_norm::{
    NormProxy, ProxyGrads, ProxyNorm, ProxyNormDesc, ProxyParams, ProxyPass, ProxyVariant, Upstream,
};

/// A pass: its name, workspace floats, and the call (`None`: the allocating form).
type Pass<'a> = (String, usize, Box<dyn FnMut(Option<&mut [f32]>) + 'a>);

/// Checks one pass: the workspace form allocates at most 1 KiB at a time; the
/// allocating form's largest allocation is at least its workspace.
fn check((name, len, mut run): Pass) {
    let mut ws = vec![0.0f32; len];
    // Warm up (rayon's first use of a pool, lazily made statics).
    run(Some(&mut ws));
    let (total, largest) = count(|| run(Some(&mut ws)));
    assert!(
        largest <= 1024,
        "{name}: an allocation of {largest} bytes ({total} in all) on the workspace path"
    );
    // The allocating pass borrows a buffer the thread keeps: the first call on the
    // thread allocates it (the counter sees it), later calls reuse it.
    effnet::kernels::scratch::release_reused();
    let (alloc_total, alloc_largest) = count(|| run(None));
    let (_, warm) = count(|| run(None));
    assert!(
        warm <= 1024,
        "{name}: the warm allocating pass allocated {warm} bytes"
    );
    assert!(
        len > 0 && alloc_largest >= 4 * len && alloc_total >= 4 * len,
        "{name}: the allocating pass allocated {alloc_total} bytes (largest \
         {alloc_largest}), its workspace is {} bytes",
        4 * len
    );
}

fn params_of(p: &[f32], c: usize) -> ProxyParams<'_> {
    ProxyParams {
        gamma: &p[..c],
        beta: &p[c..2 * c],
        beta_prime: &p[2 * c..3 * c],
        gamma_prime: &p[3 * c..],
    }
}

fn grads_of(g: &mut [f32], c: usize) -> ProxyGrads<'_> {
    let (dg, rest) = g.split_at_mut(c);
    let (db, rest) = rest.split_at_mut(c);
    let (dbp, dgp) = rest.split_at_mut(c);
    ProxyGrads {
        dgamma: dg,
        dbeta: db,
        dbeta_prime: dbp,
        dgamma_prime: dgp,
        mode: GradMode::Overwrite,
    }
}

pub fn workspace_passes_allocate_nothing_larger_than_1_kib() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    pool.install(|| {
        let c = 320;
        let mut r = Rng::new(9);
        // Two shapes per op: few pixels (per-channel scratch dominates) and several
        // chunks per sample.
        for (n, hw) in [(2, (3, 4)), (4, (30, 30))] {
            let len = n * hw.0 * hw.1 * c;
            let (x, dy) = (r.vec(len), r.vec(len));
            let (gamma, beta) = (r.vec(c), r.vec(c));
            let running = RunningStats::new(c);
            for d in [
                NormDesc::batch_norm(n, hw, c),
                NormDesc::group_norm(n, hw, c, 32),
                NormDesc::layer_norm(n, hw, c),
            ] {
                let norm = Norm::new(&d).unwrap();
                let mut st = norm.new_stats();
                let mut y = vec![0.0f32; len];
                let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
                norm.forward(&x, Affine::NONE, &mut y, &mut st).unwrap();
                let aff = Affine::new(&gamma, &beta);
                let bn = norm.desc().groups() == 0;
                let mut st_out = st.clone();
                let name = |p: &str| format!("{:?} {n}x{hw:?} {p}", d.kind);
                check((
                    name("forward"),
                    norm.workspace_len(NormPass::Forward),
                    Box::new(|ws| {
                        let st = &mut st_out;
                        match ws {
                            Some(ws) => norm.forward_with_workspace(&x, aff, &mut y, st, ws),
                            None => norm.forward(&x, aff, &mut y, st),
                        }
                        .unwrap()
                    }),
                ));
                check((
                    name("forward_infer"),
                    norm.workspace_len(NormPass::ForwardInfer),
                    Box::new(|ws| {
                        let rs = bn.then_some(&running);
                        match ws {
                            Some(ws) => norm.forward_infer_with_workspace(&x, aff, rs, &mut y, ws),
                            None => norm.forward_infer(&x, aff, rs, &mut y),
                        }
                        .unwrap()
                    }),
                ));
                check((
                    name("backward"),
                    norm.workspace_len(NormPass::Backward),
                    Box::new(|ws| {
                        let g = AffineGrads {
                            dgamma: Some(&mut dg),
                            dbeta: Some(&mut db),
                            mode: GradMode::Overwrite,
                        };
                        match ws {
                            Some(ws) => {
                                norm.backward_with_workspace(&x, &dy, aff, &st, &mut y, g, ws)
                            }
                            None => norm.backward(&x, &dy, aff, &st, &mut y, g),
                        }
                        .unwrap()
                    }),
                ));
            }
            let p: Vec<f32> = (0..4 * c).map(|i| (i < c) as u8 as f32).collect();
            let params = params_of(&p, c);
            let mut g = vec![0.0f32; 4 * c];
            for v in [ProxyVariant::FullScale, ProxyVariant::DelayedScale] {
                let pd = ProxyNormDesc::new(c).with_variant(v).with_k(50);
                let ds = (v == ProxyVariant::DelayedScale).then_some(&gamma[..]);
                let up = Upstream { dz: &dy, ds };
                let op = NormProxy::new(&NormDesc::group_norm(n, hw, c, 32), &pd).unwrap();
                let pn = ProxyNorm::new(&pd).unwrap();
                let mut sv = op.new_saved();
                let mut z = vec![0.0f32; len];
                op.forward(&x, params, &mut z, &mut sv).unwrap();
                let name = |p: &str| format!("Proxy {v:?} {n}x{hw:?} {p}");
                let (mut sv_out, mut st_out) = (sv.clone(), sv.proxy.clone());
                check((
                    name("fused forward"),
                    op.workspace_len(ProxyPass::Forward),
                    Box::new(|ws| {
                        let sv = &mut sv_out;
                        match ws {
                            Some(ws) => op.forward_with_workspace(&x, params, &mut z, sv, ws),
                            None => op.forward(&x, params, &mut z, sv),
                        }
                        .unwrap()
                    }),
                ));
                check((
                    name("fused backward"),
                    op.workspace_len(ProxyPass::Backward),
                    Box::new(|ws| {
                        let gr = grads_of(&mut g, c);
                        match ws {
                            Some(ws) => {
                                op.backward_with_workspace(&x, up, params, &sv, &mut z, gr, ws)
                            }
                            None => op.backward(&x, up, params, &sv, &mut z, gr),
                        }
                        .unwrap()
                    }),
                ));
                let st = sv.proxy.clone();
                check((
                    name("standalone forward"),
                    pn.workspace_len(ProxyPass::Forward, len),
                    Box::new(|ws| {
                        let st = &mut st_out;
                        match ws {
                            Some(ws) => pn.forward_with_workspace(&x, params, &mut z, st, ws),
                            None => pn.forward(&x, params, &mut z, st),
                        }
                        .unwrap()
                    }),
                ));
                check((
                    name("standalone backward"),
                    pn.workspace_len(ProxyPass::Backward, len),
                    Box::new(|ws| {
                        let gr = grads_of(&mut g, c);
                        match ws {
                            Some(ws) => {
                                pn.backward_with_workspace(&x, up, params, &st, &mut z, gr, ws)
                            }
                            None => pn.backward(&x, up, params, &st, &mut z, gr),
                        }
                        .unwrap()
                    }),
                ));
                check((
                    name("stats backward"),
                    pn.workspace_len(ProxyPass::StatsBackward, 0),
                    Box::new(|ws| {
                        let gr = grads_of(&mut g, c);
                        let (dmu, ds) = (&beta[..], &gamma[..]);
                        match ws {
                            Some(ws) => {
                                pn.stats_backward_with_workspace(params, &st, dmu, ds, gr, ws)
                            }
                            None => pn.stats_backward(params, &st, dmu, ds, gr),
                        }
                        .unwrap()
                    }),
                ));
            }
            let s = Nhwc::new(n, hw.0, hw.1, c).unwrap();
            let mut pooled = vec![0.0f32; s.pooled_len()];
            let mut dx = vec![0.0f32; len];
            check((
                format!("{s:?} pool forward"),
                pool::workspace_len(&s, PoolPass::Forward),
                Box::new(|ws| {
                    match ws {
                        Some(ws) => pool::global_avg_pool_with_workspace(&s, &x, &mut pooled, ws),
                        None => pool::global_avg_pool(&s, &x, &mut pooled),
                    }
                    .unwrap()
                }),
            ));
            let gate_v = r.vec(s.pooled_len());
            let m = GradMode::Accumulate;
            check((
                format!("{s:?} pool backward"),
                pool::workspace_len(&s, PoolPass::Backward),
                Box::new(|ws| {
                    match ws {
                        Some(ws) => pool::global_avg_pool_backward_with_workspace(
                            &s, &gate_v, &mut dx, m, ws,
                        ),
                        None => pool::global_avg_pool_backward(&s, &gate_v, &mut dx, m),
                    }
                    .unwrap()
                }),
            ));
            let mut dgate = vec![0.0f32; s.pooled_len()];
            check((
                format!("{s:?} gate backward"),
                gate::backward_workspace_len(&s),
                Box::new(|ws| {
                    match ws {
                        Some(ws) => gate::backward_with_workspace(
                            &s, &dy, &x, &gate_v, &mut dx, &mut dgate, ws,
                        ),
                        None => gate::backward(&s, &dy, &x, &gate_v, &mut dx, &mut dgate),
                    }
                    .unwrap()
                }),
            ));
        }
        // 400 samples: the per-row losses are 1600 bytes.
        let (n, k) = (400, 10);
        let ce = CrossEntropy::new(n, k, 0.1).unwrap();
        let z = r.vec(n * k);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let mut d = vec![0.0f32; n * k];
        check((
            "cross entropy".into(),
            ce.workspace_len(),
            Box::new(|ws| {
                let t = Targets::Labels(&labels);
                match ws {
                    Some(ws) => ce.forward_backward_with_workspace(&z, t, Some(&mut d), ws),
                    None => ce.forward_backward(&z, t, Some(&mut d)),
                }
                .unwrap();
            }),
        ));
    });
}
