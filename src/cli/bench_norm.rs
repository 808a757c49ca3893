//! `effnet bench norm`: times the normalization + activation ops on the activations
//! after each depthwise/grouped spatial layer of a suite.
//!
//! Ops (names `<layer>:<op>`, passes `fwd`/`bwd`):
//! - `ln_pn_swish`: fused LayerNorm + Proxy Norm swish, full scale, K = 200 (the
//!   proxy statistics are computed in every pass);
//! - `gn_swish`: GroupNorm (4 contiguous groups, affine) + swish;
//! - `bn_swish`: BatchNorm in training mode (batch statistics, affine) + swish.
//!
//! Bytes moved (T = one f32 tensor of the layer's activations): forward 3T (one read
//! for the statistics, one read and one write for the apply pass); backward 5T (the
//! statistics-gradient pass reads x and dy, the apply pass reads them again,
//! recomputes du and writes dx). GFLOP/s counts nominal operations per element (an
//! `exp` as one): forward 14 (Proxy Norm) or 12, backward 30 or 28 (the activation's
//! derivative is evaluated in both backward passes).

use clap::Args;
use effnet::bench::{self, LayerSpec};
use effnet::kernels::activation::Activation;
use effnet::kernels::conv::GradMode;
use effnet::kernels::norm::{Affine, AffineGrads, Norm, NormDesc};
use effnet::kernels::proxy_norm::{NormProxy, ProxyGrads, ProxyNormDesc, ProxyParams, Upstream};
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
    let layers = suite.iter().filter(|l| {
        l.k > 1
            && l.group_size != 0
            && l.group_size < l.c_in
            && a.only.as_ref().is_none_or(|o| l.name.contains(o.as_str()))
    });
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
    let s = layer.conv_desc(batch).validate()?;
    let (h, w, c) = (s.out_h, s.out_w, layer.c_out);
    let n = batch * h * w * c;
    let fill = |n: usize, k: u32| {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(k) >> 20) as f32 / 4096.0 - 0.5
            })
            .collect::<Vec<f32>>()
    };
    let x = fill(n, 1);
    let dy = fill(n, 2);
    let mut y = vec![0.0f32; n];
    let mut dx = vec![0.0f32; n];
    let gamma: Vec<f32> = fill(c, 3).iter().map(|v| 1.0 + v).collect();
    let beta = fill(c, 4);
    let bp: Vec<f32> = fill(c, 5).iter().map(|v| 0.2 * v).collect();
    let gp: Vec<f32> = fill(c, 6).iter().map(|v| 0.2 * v).collect();
    let mut grads = [
        vec![0.0f32; c],
        vec![0.0f32; c],
        vec![0.0f32; c],
        vec![0.0f32; c],
    ];
    let min = Duration::from_secs_f64(min_time);
    let fwd = pass == "fwd";
    let t = (n * std::mem::size_of::<f32>()) as f64;
    let bytes = if fwd { 3.0 * t } else { 5.0 * t };
    let mut result = Ok(());
    let (ms, per_elem) = if op == "ln_pn_swish" {
        let p = NormProxy::new(
            &NormDesc::layer_norm(batch, (h, w), c),
            &ProxyNormDesc::new(c),
        )?;
        let params = ProxyParams {
            gamma: &gamma,
            beta: &beta,
            beta_prime: &bp,
            gamma_prime: &gp,
        };
        let mut saved = p.new_saved();
        p.forward(&x, params, &mut y, &mut saved)?;
        let ms = if fwd {
            bench::median_ms(min, || {
                result = result
                    .clone()
                    .and(p.forward(&x, params, &mut y, &mut saved))
            })
        } else {
            bench::median_ms(min, || {
                let [a, b, c2, d] = &mut grads;
                let g = ProxyGrads {
                    dgamma: a,
                    dbeta: b,
                    dbeta_prime: c2,
                    dgamma_prime: d,
                    mode: GradMode::Overwrite,
                };
                let up = Upstream { dz: &dy, ds: None };
                result = result
                    .clone()
                    .and(p.backward(&x, up, params, &saved, &mut dx, g))
            })
        };
        (ms, if fwd { 14.0 } else { 30.0 })
    } else {
        let desc = if op == "gn_swish" {
            NormDesc::group_norm(batch, (h, w), c, groups)
        } else {
            NormDesc::batch_norm(batch, (h, w), c)
        }
        .with_activation(Activation::Swish);
        let norm = Norm::new(&desc)?;
        let affine = Affine::new(&gamma, &beta);
        let mut stats = norm.new_stats();
        norm.forward(&x, affine, &mut y, &mut stats)?;
        let ms = if fwd {
            bench::median_ms(min, || {
                result = result
                    .clone()
                    .and(norm.forward(&x, affine, &mut y, &mut stats))
            })
        } else {
            bench::median_ms(min, || {
                let [a, b, _, _] = &mut grads;
                let g = AffineGrads {
                    dgamma: Some(a),
                    dbeta: Some(b),
                    mode: GradMode::Overwrite,
                };
                result = result
                    .clone()
                    .and(norm.backward(&x, &dy, affine, &stats, &mut dx, g))
            })
        };
        (ms, if fwd { 12.0 } else { 28.0 })
    };
    result.map_err(|e| Error::InvalidArgument(format!("{}: {op} {pass}: {e}", layer.name)))?;
    Ok((ms, per_elem * n as f64, bytes))
}
