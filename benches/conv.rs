//! Criterion benchmarks: every layer of the B0 suite, every convolution pass.
//!
//! Throughput is set to the pass's useful floating-point operations, so criterion's
//! "elem/s" reads as FLOP/s. Batch and filter come from the environment:
//! `EFFNET_BENCH_BATCH` (default 8) and `cargo bench --bench conv -- <filter>`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use effnet::bench::{B0_SUITE, parse_suite};
use effnet::kernels::conv::{Conv2d, GradMode};
use std::hint::black_box;
use std::time::Duration;

fn fill(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) >> 20) as f32 / 4096.0 - 0.5
        })
        .collect()
}

fn conv_passes(c: &mut Criterion) {
    let batch = std::env::var("EFFNET_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for layer in parse_suite(B0_SUITE).expect("built-in suite") {
        let conv = Conv2d::new(&layer.conv_desc(batch)).expect("suite layers are valid");
        let s = *conv.shape();
        let x = fill(s.x_len, 1);
        let w = fill(s.w_len, 2);
        let dy = fill(s.y_len, 3);
        let mut y = vec![0.0; s.y_len];
        let mut dx = vec![0.0; s.x_len];
        let mut dw = vec![0.0; s.w_len];
        let mut g = c.benchmark_group(format!("conv/{}", layer.name));
        g.throughput(Throughput::Elements(s.flops() as u64));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        g.bench_function(BenchmarkId::from_parameter("fwd"), |b| {
            b.iter(|| conv.forward(black_box(&x), &w, None, &mut y).unwrap())
        });
        g.bench_function(BenchmarkId::from_parameter("bwd_data"), |b| {
            b.iter(|| conv.backward_data(black_box(&dy), &w, &mut dx).unwrap())
        });
        g.bench_function(BenchmarkId::from_parameter("bwd_weight"), |b| {
            b.iter(|| {
                conv.backward_weight(black_box(&x), &dy, &mut dw, None, GradMode::Overwrite)
                    .unwrap()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, conv_passes);
criterion_main!(benches);
