//! Timings of the squeeze-and-excite, head, loss and regularization kernels on
//! EfficientNet-B0 shapes (batch 8, 2 threads by default), with a plain copy of the
//! same bytes measured in the same run as the practical bandwidth reference.
//!
//! `cargo run --release --example bench_heads -- [threads] [min_seconds] [filter]`

use effnet::bench::{self, median_ms};
use effnet::kernels::conv::GradMode;
use effnet::kernels::fully_connected::FullyConnected;
use effnet::kernels::gate;
use effnet::kernels::loss::{CrossEntropy, Targets};
use effnet::kernels::pool::{self, Nhwc};
use effnet::kernels::regularize::{self, DropConnect, Dropout, Pairing};
use std::time::Duration;

struct Row {
    name: String,
    pass: &'static str,
    ms: f64,
    gbps: f64,
    copy_gbps: f64,
    gflops: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(2);
    let min_s: f64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(0.2);
    let filter = args.get(3).cloned().unwrap_or_default();
    let pool_rt = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let t = Duration::from_secs_f64(min_s);
    let batch = 8;
    println!(
        "bench_heads: batch {batch}, {threads} threads, SIMD {}",
        effnet::simd::active()
    );
    println!(
        "{:<28} {:<12} {:>9} {:>8} {:>9} {:>8}",
        "shape", "pass", "ms", "GB/s", "copy GB/s", "GFLOP/s"
    );
    let mut rows: Vec<Row> = Vec::new();
    let suite = bench::parse_suite(bench::B0_SUITE).unwrap();
    pool_rt.install(|| {
        // A copy of `bytes` bytes, split like the kernels (per sample, in parallel).
        let copy_gbps = |bytes: usize| {
            let n = bytes / 8;
            let src = vec![1.0f32; n];
            let mut dst = vec![0.0f32; n];
            let ms = median_ms(t, || {
                use rayon::prelude::*;
                dst.par_chunks_mut(1 << 16)
                    .zip(src.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s));
            });
            bytes as f64 / ms / 1e6
        };
        let mut emit =
            |name: &str, pass: &'static str, ms: f64, bytes: usize, flops: f64, copy: f64| {
                let r = Row {
                    name: name.to_string(),
                    pass,
                    ms,
                    gbps: bytes as f64 / ms / 1e6,
                    copy_gbps: copy,
                    gflops: flops / ms / 1e6,
                };
                println!(
                    "{:<28} {:<12} {:>9.4} {:>8.1} {:>9.1} {:>8.2}",
                    r.name, r.pass, r.ms, r.gbps, r.copy_gbps, r.gflops
                );
                rows.push(r);
            };
        for l in suite
            .iter()
            .filter(|l| l.group_size == 1 || l.group_size == 16)
            .filter(|l| l.name.contains(filter.as_str()))
        {
            // The SE block sees the activations after the spatial conv.
            let (h, w) = (l.h.div_ceil(l.stride), l.w.div_ceil(l.stride));
            let s = Nhwc::new(batch, h, w, l.c_out).unwrap();
            let x = vec![0.5f32; s.len()];
            let dy = vec![0.25f32; s.len()];
            let g = vec![0.75f32; s.pooled_len()];
            let mut y = vec![0.0f32; s.len()];
            let mut p = vec![0.0f32; s.pooled_len()];
            let mut dg = vec![0.0f32; s.pooled_len()];
            let b = s.len() * 4;
            let copy = copy_gbps(2 * b);
            let name = format!("{}:se", l.name);
            let ms = median_ms(t, || pool::global_avg_pool(&s, &x, &mut p).unwrap());
            emit(&name, "pool_fwd", ms, b, s.len() as f64, copy);
            let ms = median_ms(t, || {
                pool::global_avg_pool_backward(&s, &g, &mut y, GradMode::Overwrite).unwrap()
            });
            emit(&name, "pool_bwd", ms, b, 0.0, copy);
            let ms = median_ms(t, || gate::forward(&s, &x, &g, &mut y).unwrap());
            emit(&name, "gate_fwd", ms, 2 * b, s.len() as f64, copy);
            let ms = median_ms(t, || {
                gate::backward(&s, &dy, &x, &g, &mut y, &mut dg).unwrap()
            });
            emit(&name, "gate_bwd", ms, 3 * b, 3.0 * s.len() as f64, copy);
            let d = Dropout::new(0.2, 1).unwrap();
            let ms = median_ms(t, || d.forward(&x, &mut y).unwrap());
            emit(&name, "dropout_fwd", ms, 2 * b, s.len() as f64, copy);
            let dc = DropConnect::new(0.2, 1).unwrap();
            let ms = median_ms(t, || dc.forward_residual(batch, &x, &dy, &mut y).unwrap());
            emit(&name, "dropconn_res", ms, 3 * b, 2.0 * s.len() as f64, copy);
        }
        if "head".contains(filter.as_str()) || filter.is_empty() {
            // Head: pool of the 1280-channel 7×7 map, FC 1280 → 1000, loss.
            let fc = FullyConnected::new(batch, 1280, 1000).unwrap();
            let x = vec![0.01f32; fc.x_len()];
            let wt = vec![0.02f32; fc.w_len()];
            let bias = vec![0.0f32; 1000];
            let mut y = vec![0.0f32; fc.y_len()];
            let mut dx = vec![0.0f32; fc.x_len()];
            let mut dw = vec![0.0f32; fc.w_len()];
            let mut db = vec![0.0f32; 1000];
            let flops = 2.0 * fc.x_len() as f64 * 1000.0;
            let wbytes = fc.w_len() * 4;
            let copy = copy_gbps(2 * wbytes);
            let ms = median_ms(t, || fc.forward(&x, &wt, Some(&bias), &mut y).unwrap());
            emit("head:fc_1280x1000", "fwd", ms, wbytes, flops, copy);
            let ms = median_ms(t, || fc.backward_data(&y, &wt, &mut dx).unwrap());
            emit("head:fc_1280x1000", "bwd_data", ms, wbytes, flops, copy);
            let ms = median_ms(t, || {
                fc.backward_weight(&x, &y, &mut dw, Some(&mut db), GradMode::Overwrite)
                    .unwrap()
            });
            emit(
                "head:fc_1280x1000",
                "bwd_weight",
                ms,
                2 * wbytes,
                flops,
                copy,
            );
            let se = FullyConnected::new(batch, 1152, 48).unwrap();
            let sx = vec![0.01f32; se.x_len()];
            let sw = vec![0.02f32; se.w_len()];
            let mut sy = vec![0.0f32; se.y_len()];
            let ms = median_ms(t, || se.forward(&sx, &sw, None, &mut sy).unwrap());
            emit(
                "se:fc_1152x48",
                "fwd",
                ms,
                se.w_len() * 4,
                2.0 * se.x_len() as f64 * 48.0,
                copy,
            );
            let ce = CrossEntropy::new(batch, 1000, 0.1).unwrap();
            let labels: Vec<usize> = (0..batch).map(|i| i * 97).collect();
            let mut gz = vec![0.0f32; batch * 1000];
            let ms = median_ms(t, || {
                ce.forward_backward(&y, Targets::Labels(&labels), Some(&mut gz))
                    .unwrap();
            });
            emit("head:ce_1000", "fwd_bwd", ms, 2 * batch * 4000, 0.0, copy);
            // Mixup / cutmix of a batch of 224×224 RGB images.
            let s = Nhwc::new(batch, 224, 224, 3).unwrap();
            let img = vec![0.3f32; s.len()];
            let mut out = vec![0.0f32; s.len()];
            let mut tg = vec![0.0f32; batch * 1000];
            let copy = copy_gbps(2 * s.len() * 4);
            let ms = median_ms(t, || {
                regularize::mixup(
                    &s,
                    0.8,
                    3,
                    Pairing::Reverse,
                    &img,
                    &labels,
                    1000,
                    &mut out,
                    &mut tg,
                )
                .unwrap();
            });
            emit(
                "input:mixup_224",
                "fwd",
                ms,
                2 * s.len() * 4,
                3.0 * s.len() as f64,
                copy,
            );
            let ms = median_ms(t, || {
                regularize::cutmix(
                    &s,
                    1.0,
                    3,
                    Pairing::Reverse,
                    &img,
                    &labels,
                    1000,
                    &mut out,
                    &mut tg,
                )
                .unwrap();
            });
            emit("input:cutmix_224", "fwd", ms, 2 * s.len() * 4, 0.0, copy);
        }
    });
    // Summary: geometric mean of kernel / copy bandwidth per pass.
    let mut passes: Vec<&'static str> = rows.iter().map(|r| r.pass).collect();
    passes.dedup();
    passes.sort();
    passes.dedup();
    println!(
        "\n{:<12} {:>6} {:>22}",
        "pass", "shapes", "geomean GB/s / copy"
    );
    for p in passes {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.pass == p && r.gbps > 0.0)
            .map(|r| r.gbps / r.copy_gbps)
            .collect();
        if v.is_empty() {
            continue;
        }
        let gm = (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp();
        println!("{p:<12} {:>6} {gm:>22.2}", v.len());
    }
}
