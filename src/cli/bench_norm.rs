//! `effnet bench norm`: times the normalization + activation ops on the activations
//! after each depthwise/grouped spatial layer of a suite.
//!
//! Ops (names `<layer>:<op>`, passes `fwd`/`bwd`):
//! - `ln_pn_swish`: fused LayerNorm + Proxy Norm swish, full scale, K = 200 (the
//!   proxy statistics are computed in every pass);
//! - `gn_swish`: GroupNorm (4 contiguous groups, affine) + swish;
//! - `bn_swish`: BatchNorm in training mode (batch statistics, affine) + swish.
//!
//! Bytes moved and nominal FLOP are documented on [`effnet::bench::cases::NormCase`].

use clap::Args;
use effnet::bench::cases::{NormCase, is_spatial};
use effnet::bench::{self, LayerSpec};
use effnet::simd;
use effnet::{Error, Result};
use std::time::Duration;

/// Arguments of `effnet bench norm`.
#[derive(Args, Debug)]
pub struct NormArgs {
    /// Layer suite (TSV: name c_in c_out h w k stride group_size); default: the
    /// built-in EfficientNet-B0 suite. Only spatial (k > 1) depthwise/grouped layers
    /// are used: their output is what the norm ops see.
    #[arg(long)]
    suite: Option<std::path::PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// One JSON object per line (the format of `bench ops`, plus "gbps").
    #[arg(long)]
    json: bool,
    /// Only layers whose name contains this string.
    #[arg(long)]
    only: Option<String>,
    /// Ops to time, comma-separated (ln_pn_swish, gn_swish, bn_swish).
    #[arg(
        long,
        default_value = "ln_pn_swish,gn_swish,bn_swish",
        value_delimiter = ','
    )]
    ops: Vec<String>,
    /// Passes to time, comma-separated (fwd, bwd).
    #[arg(long, default_value = "fwd,bwd", value_delimiter = ',')]
    passes: Vec<String>,
    /// GroupNorm groups for gn_swish.
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// Minimum measuring time per pass, in seconds.
    #[arg(long, default_value_t = 0.2)]
    min_time: f64,
}

const OPS: [&str; 3] = ["ln_pn_swish", "gn_swish", "bn_swish"];
const PASSES: [&str; 2] = ["fwd", "bwd"];

pub fn run(a: &NormArgs) -> Result<()> {
    for (given, known, what) in [(&a.ops, &OPS[..], "op"), (&a.passes, &PASSES[..], "pass")] {
        for g in given {
            if !known.contains(&g.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "unknown {what} {g:?} (expected one of {known:?})"
                )));
            }
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
        println!(
            "effnet bench norm: batch {}, {threads} threads, SIMD {level}; bandwidth {:.0} GB/s",
            a.batch,
            bench::PEAK_GBPS
        );
        println!(
            "{:<30} {:<5} {:>9} {:>9} {:>8} {:>9}",
            "layer:op", "pass", "ms", "GFLOP/s", "GB/s", "of 45GB/s"
        );
    }
    let layers = suite
        .iter()
        .filter(|l| is_spatial(l) && a.only.as_ref().is_none_or(|o| l.name.contains(o.as_str())));
    for layer in layers {
        for op in OPS.iter().filter(|o| a.ops.iter().any(|q| q == *o)) {
            for pass in PASSES.iter().filter(|p| a.passes.iter().any(|q| q == *p)) {
                let (ms, flops, bytes) = super::in_pool(a.threads, || {
                    time_op(layer, a.batch, op, pass, a.groups, a.min_time)
                })??;
                let name = format!("{}:{op}", layer.name);
                let gflops = flops / ms / 1e6;
                let gbps = bytes / ms / 1e6;
                if a.json {
                    println!(
                        "{{\"name\": \"{name}\", \"pass\": \"{pass}\", \"ms\": {ms:.6}, \"gflops\": {gflops:.4}, \"gbps\": {gbps:.4}, \"threads\": {threads}, \"batch\": {}, \"impl\": \"effnet\"}}",
                        a.batch
                    );
                } else {
                    println!(
                        "{name:<30} {pass:<5} {ms:>9.3} {gflops:>9.1} {gbps:>8.1} {:>8.0}%",
                        100.0 * gbps / bench::PEAK_GBPS
                    );
                }
            }
        }
    }
    Ok(())
}

/// Times one op and pass on the output of `layer`; returns (median ms, nominal FLOP,
/// bytes moved).
fn time_op(
    layer: &LayerSpec,
    batch: usize,
    op: &str,
    pass: &str,
    groups: usize,
    min_time: f64,
) -> Result<(f64, f64, f64)> {
    let mut case = NormCase::new(layer, batch, op.parse()?, groups)?;
    let backward = pass == "bwd";
    let mut result = Ok(());
    let ms = bench::median_ms(Duration::from_secs_f64(min_time), || {
        result = result.clone().and(case.run(backward))
    });
    result.map_err(|e| Error::InvalidArgument(format!("{}: {op} {pass}: {e}", layer.name)))?;
    Ok((ms, case.flops(backward), case.bytes(backward)))
}
