//! Criterion benchmarks: a LayerNorm + swish apply pass between two convolutions, run
//! as its own pass over memory (`Norm::forward_from_sums_with_workspace`, then the
//! convolution) against the convolution's prologue (`Conv2d::with_pre_ops`: the same
//! transform applied as the kernels bring their input in), on the input of every
//! spatial layer of the B0 suite (depthwise and G16) and of its pointwise layers.
//!
//! Throughput is the convolution's useful floating-point operations, so criterion's
//! "elem/s" reads as FLOP/s for both forms. `EFFNET_BENCH_BATCH` sets the batch
//! (default 4).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use effnet::bench::{B0_SUITE, parse_suite};
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::Conv2d;
use effnet::kernels::conv::{ConvPass, ConvWeights, PostArgs, PreArgs, PreOps};
use effnet::kernels::norm::{Affine, Norm, NormDesc, NormPass};
use std::time::Duration;

fn prologue(c: &mut Criterion) {
    let batch = std::env::var("EFFNET_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for layer in parse_suite(B0_SUITE).expect("built-in suite") {
        if layer.name.starts_with("stem") {
            continue;
        }
        let d = layer.conv_desc(batch);
        let plain = Conv2d::new(&d).expect("suite layers are valid");
        let fused = Conv2d::new(&d)
            .expect("suite layers are valid")
            .with_pre_ops(PreOps::norm_act(Activation::Swish));
        let s = *plain.shape();
        let ci = d.in_channels;
        let mut nd = NormDesc::layer_norm(batch, (d.in_h, d.in_w), ci);
        nd.activation = Activation::Swish;
        let norm = Norm::new(&nd).expect("a valid norm");
        let x: Vec<f32> = (0..s.x_len)
            .map(|i| ((i % 97) as f32 - 48.0) / 40.0)
            .collect();
        let w: Vec<f32> = (0..s.w_len)
            .map(|i| ((i % 13) as f32 - 6.0) / 30.0)
            .collect();
        let (gamma, beta) = (vec![1.1f32; ci], vec![0.1f32; ci]);
        // Each image's channel sums and squares, as the producing convolution's
        // statistics post-op gives them.
        let per = s.x_len / batch;
        let (mut sums, mut squares) = (vec![0.0f64; batch * ci], vec![0.0f64; batch * ci]);
        for (i, &v) in x.iter().enumerate() {
            let k = i / per * ci + i % ci;
            sums[k] += f64::from(v);
            squares[k] += f64::from(v) * f64::from(v);
        }
        // The prologue's coefficients of the same norm (what the model computes from
        // the statistics): a = γ·rstd, b = β − a·mean, one LayerNorm per image.
        let (mut a, mut b) = (vec![0.0f32; batch * ci], vec![0.0f32; batch * ci]);
        for n in 0..batch {
            let cnt = per as f64;
            let m: f64 = sums[n * ci..(n + 1) * ci].iter().sum::<f64>() / cnt;
            let q: f64 = squares[n * ci..(n + 1) * ci].iter().sum::<f64>() / cnt;
            let rstd = 1.0 / (q - m * m + f64::from(nd.eps)).sqrt();
            for ch in 0..ci {
                a[n * ci + ch] = (f64::from(gamma[ch]) * rstd) as f32;
                b[n * ci + ch] = (f64::from(beta[ch]) - f64::from(a[n * ci + ch]) * m) as f32;
            }
        }
        let mut packed = vec![0.0f32; plain.packed_weights_len()];
        plain.pack_weights(&w, &mut packed).unwrap();
        let mut fpacked = vec![0.0f32; fused.packed_weights_len()];
        fused.pack_weights(&w, &mut fpacked).unwrap();
        let mut xt = vec![0.0f32; s.x_len];
        let mut y = vec![0.0f32; s.y_len];
        let mut ws = vec![0.0f32; plain.workspace_len(ConvPass::Forward, 0)];
        let mut fws = vec![0.0f32; fused.workspace_len(ConvPass::Forward, 0)];
        let mut nws = vec![0.0f32; norm.workspace_len(NormPass::Forward)];
        let mut stats = norm.new_stats();
        let mut g = c.benchmark_group(format!("prologue/{}", layer.name));
        g.throughput(Throughput::Elements(s.flops() as u64));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(700));
        g.bench_function(BenchmarkId::from_parameter("norm_pass+conv"), |bch| {
            bch.iter(|| {
                let affine = Affine::new(&gamma, &beta);
                norm.forward_from_sums_with_workspace(
                    &x,
                    affine,
                    (&sums, &squares),
                    &mut xt,
                    &mut stats,
                    &mut nws,
                )
                .unwrap();
                plain
                    .forward_packed(&xt, &packed, None, &mut y, &mut ws)
                    .unwrap();
            })
        });
        g.bench_function(BenchmarkId::from_parameter("conv_prologue"), |bch| {
            bch.iter(|| {
                let pre = PreArgs {
                    scale: &a,
                    shift: Some(&b),
                    out_scale: None,
                    out_shift: None,
                };
                let args = PostArgs {
                    pre: Some(pre),
                    ..PostArgs::default()
                };
                let wt = ConvWeights::Packed(&fpacked);
                fused
                    .forward_post(&x, wt, None, args, &mut y, Some(&mut fws))
                    .unwrap();
            })
        });
        g.finish();
    }
}

criterion_group!(benches, prologue);
criterion_main!(benches);
