//! Inference with weights packed once: `Conv2d::pack_weights` + `forward_packed` on a
//! caller-owned workspace, timed side by side with the plain forward pass (which packs
//! the weights on every call) on the EfficientNet-B0 convolution shapes.
//!
//! `cargo run --release --example packed_weights -- [batch] [threads] [min_seconds] [filter]`
//! (defaults: batch 1, 2 threads, 0.2 s per measurement, every layer).

use effnet::bench::{self, median_ms};
use effnet::kernels::conv::{Conv2d, ConvPass};
use std::time::Duration;

fn main() -> effnet::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1);
    let threads: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(2);
    let min_s: f64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(0.2);
    let filter = args.get(4).cloned().unwrap_or_default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    let min_time = Duration::from_secs_f64(min_s);
    println!("layer                 family      forward ms  packed ms  speed-up");
    let mut ratios = Vec::new();
    pool.install(|| -> effnet::Result<()> {
        for spec in bench::load_suite(None)? {
            if !spec.name.contains(&filter) {
                continue;
            }
            let conv = Conv2d::new(&spec.conv_desc(batch))?;
            let s = *conv.shape();
            let x = bench::cases::fill(s.x_len, 1);
            let w = bench::cases::fill(s.w_len, 2);
            let mut y = vec![0.0f32; s.y_len];
            // Caller-owned memory: the packed weights and the forward workspace.
            let mut packed = vec![0.0f32; conv.packed_weights_len()];
            conv.pack_weights(&w, &mut packed)?;
            let mut ws = vec![0.0f32; conv.workspace_len(ConvPass::Forward, threads)];
            // Interleave the two so that drifts of the machine hit both alike.
            let (mut plain, mut pre) = (f64::MAX, f64::MAX);
            for _ in 0..3 {
                plain = plain.min(median_ms(min_time, || {
                    conv.forward_with_workspace(&x, &w, None, &mut y, &mut ws)
                        .expect("forward");
                }));
                pre = pre.min(median_ms(min_time, || {
                    conv.forward_packed(&x, &packed, None, &mut y, &mut ws)
                        .expect("forward_packed");
                }));
            }
            ratios.push(plain / pre);
            println!(
                "{:<21} {:<11} {:>10.4} {:>10.4} {:>8.2}×",
                spec.name,
                format!("{:?}", conv.family()),
                plain,
                pre,
                plain / pre
            );
        }
        Ok(())
    })?;
    if !ratios.is_empty() {
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        println!("geometric mean speed-up: {geo:.3}×");
    }
    Ok(())
}
