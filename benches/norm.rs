//! Criterion benchmarks: the normalization + activation ops (fused LN + Proxy Norm
//! swish, GroupNorm + swish, BatchNorm + swish) on the activations after every spatial
//! layer of the B0 suite, forward and backward — the cases of `effnet bench norm`.
//!
//! Throughput is set to the bytes a pass moves, so criterion reports GB/s.
//! `EFFNET_BENCH_BATCH` sets the batch (default 8).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use effnet::bench::cases::{NormCase, NormOp, is_spatial};
use effnet::bench::{B0_SUITE, parse_suite};
use std::time::Duration;

fn norm_ops(c: &mut Criterion) {
    let batch = std::env::var("EFFNET_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for layer in parse_suite(B0_SUITE)
        .expect("built-in suite")
        .iter()
        .filter(|l| is_spatial(l))
    {
        for op in NormOp::ALL {
            let mut case = NormCase::new(layer, batch, op, 4).expect("suite layers are valid");
            let mut g = c.benchmark_group(format!("norm/{}:{}", layer.name, op.name()));
            g.sample_size(10)
                .warm_up_time(Duration::from_millis(200))
                .measurement_time(Duration::from_millis(700));
            for (backward, name) in [(false, "fwd"), (true, "bwd")] {
                g.throughput(Throughput::Bytes(case.bytes(backward) as u64));
                g.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.iter(|| case.run(backward).unwrap())
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, norm_ops);
criterion_main!(benches);
