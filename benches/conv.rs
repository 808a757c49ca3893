//! Criterion benchmarks: every layer of the B0 suite, every convolution pass.
//!
//! Throughput is set to the pass's useful floating-point operations, so criterion's
//! "elem/s" reads as FLOP/s. Batch and filter come from the environment:
//! `EFFNET_BENCH_BATCH` (default 8) and `cargo bench --bench conv -- <filter>`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use effnet::bench::cases::{ConvCase, ConvPass};
use effnet::bench::{B0_SUITE, parse_suite};
use std::time::Duration;

fn conv_passes(c: &mut Criterion) {
    let batch = std::env::var("EFFNET_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for layer in parse_suite(B0_SUITE).expect("built-in suite") {
        let mut case = ConvCase::new(&layer, batch).expect("suite layers are valid");
        let mut g = c.benchmark_group(format!("conv/{}", layer.name));
        g.throughput(Throughput::Elements(case.flops() as u64));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for pass in ConvPass::ALL {
            g.bench_function(BenchmarkId::from_parameter(pass.name()), |b| {
                b.iter(|| case.run(pass).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, conv_passes);
criterion_main!(benches);
