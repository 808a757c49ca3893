//! `effnet bench ops`: times the convolution passes of a layer suite.

use clap::Args;
use effnet::bench::cases::{ConvCase, ConvPass};
use effnet::bench::{self, LayerSpec};
use effnet::simd::{self, SimdLevel};
use effnet::{Error, Result};
use std::time::Duration;

/// Arguments of `effnet bench ops`.
#[derive(Args, Debug)]
pub struct OpsArgs {
    /// Layer suite (TSV: name c_in c_out h w k stride group_size); default: the
    /// built-in EfficientNet-B0 suite.
    #[arg(long)]
    suite: Option<std::path::PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// One JSON object per line (the format of benches/peers/torch_conv.py).
    #[arg(long)]
    json: bool,
    /// Only layers whose name contains this string.
    #[arg(long)]
    only: Option<String>,
    /// Passes to time, comma-separated (fwd, bwd_data, bwd_weight).
    #[arg(long, default_value = "fwd,bwd_data,bwd_weight", value_delimiter = ',')]
    passes: Vec<String>,
    /// Minimum measuring time per pass, in seconds.
    #[arg(long, default_value_t = 0.2)]
    min_time: f64,
}

const PASSES: [&str; 3] = ["fwd", "bwd_data", "bwd_weight"];

pub fn run(a: &OpsArgs) -> Result<()> {
    for p in &a.passes {
        if !PASSES.contains(&p.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "unknown pass {p:?} (fwd, bwd_data, bwd_weight)"
            )));
        }
    }
    if a.batch == 0 {
        return Err(Error::InvalidArgument("--batch must be at least 1".into()));
    }
    if !(a.min_time.is_finite() && a.min_time >= 0.0) {
        return Err(Error::InvalidArgument(
            "--min-time must be a non-negative number".into(),
        ));
    }
    let text = match &a.suite {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?
        }
        None => bench::B0_SUITE.to_string(),
    };
    let suite = bench::parse_suite(&text)?;
    let level = simd::active();
    let threads = super::in_pool(a.threads, rayon::current_num_threads)?;
    if !a.json {
        let peak = peak_gflops(level);
        println!(
            "effnet bench ops: batch {}, {threads} threads, SIMD {level}; roofline {peak:.0} GFLOP/s, {:.0} GB/s",
            a.batch,
            bench::PEAK_GBPS
        );
        println!(
            "{:<26} {:<10} {:>9} {:>9} {:>8} {:>9}",
            "layer", "pass", "ms", "GFLOP/s", "GB/s", "roofline"
        );
    }
    for layer in suite
        .iter()
        .filter(|l| a.only.as_ref().is_none_or(|o| l.name.contains(o.as_str())))
    {
        for pass in PASSES.iter().filter(|p| a.passes.iter().any(|q| q == *p)) {
            let (ms, flops, bytes) =
                super::in_pool(a.threads, || time_pass(layer, a.batch, pass, a.min_time))??;
            let gflops = flops / ms / 1e6;
            if a.json {
                println!(
                    "{{\"name\": \"{}\", \"pass\": \"{pass}\", \"ms\": {ms:.6}, \"gflops\": {gflops:.4}, \"threads\": {threads}, \"batch\": {}, \"impl\": \"effnet\"}}",
                    layer.name, a.batch
                );
            } else {
                let gbps = bytes / ms / 1e6;
                // Fraction of the roofline: attainable = min(peak, intensity × bandwidth).
                let attainable = peak_gflops(level).min(flops / bytes * bench::PEAK_GBPS);
                println!(
                    "{:<26} {:<10} {ms:>9.3} {gflops:>9.1} {gbps:>8.1} {:>8.0}%",
                    layer.name,
                    pass,
                    100.0 * gflops / attainable
                );
            }
        }
    }
    Ok(())
}

fn peak_gflops(level: SimdLevel) -> f64 {
    match level {
        SimdLevel::Avx512 => bench::PEAK_GFLOPS_AVX512,
        SimdLevel::Avx2 => bench::PEAK_GFLOPS_AVX2,
        // No measured figure for the narrower paths: report against the AVX2 peak.
        _ => bench::PEAK_GFLOPS_AVX2,
    }
}

/// Times one pass; returns (median ms, useful FLOP, bytes moved).
fn time_pass(
    layer: &LayerSpec,
    batch: usize,
    pass: &str,
    min_time: f64,
) -> Result<(f64, f64, f64)> {
    let mut case = ConvCase::new(layer, batch)?;
    let p: ConvPass = pass.parse()?;
    let mut result = Ok(());
    let ms = bench::median_ms(Duration::from_secs_f64(min_time), || {
        result = result.clone().and(case.run(p))
    });
    result.map_err(|e| Error::InvalidArgument(format!("{}: {pass}: {e}", layer.name)))?;
    Ok((ms, case.flops(), case.bytes()))
}
