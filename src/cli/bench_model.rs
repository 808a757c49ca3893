//! `effnet bench model`: whole-network inference and training-step throughput.

use clap::Args;
use effnet::arch::ArchConfig;
use effnet::bench::network::{InferMode, NetworkCase};
use effnet::model::{Network, profile};
use effnet::{Error, Result};
use std::time::{Duration, Instant};

/// Arguments of `effnet bench model`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Architecture.
    #[arg(long, default_value = "efficientnet_b0")]
    arch: String,
    /// Input resolution (default: the architecture's native one).
    #[arg(long)]
    res: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Modes, comma-separated (infer, train); inference is measured first, so the
    /// training line's peak RSS is the process peak.
    #[arg(long, default_value = "infer,train", value_delimiter = ',')]
    modes: Vec<String>,
    /// Timed iterations per mode (after one warm-up).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Time each layer kind (summed over the timed iterations) and print the
    /// breakdown on standard error.
    #[arg(long)]
    profile: bool,
    /// Allocate every activation buffer afresh instead of reusing the previous
    /// step's (the baseline of the buffer reuse).
    #[arg(long)]
    no_reuse: bool,
    /// Training step of head fine-tuning: backward through the head only.
    #[arg(long)]
    head_only: bool,
    /// The baseline of the fusion: inference through the layer-by-layer forward pass
    /// instead of the prepared network (separate norm, activation and residual
    /// passes), and a training step whose norms gather their own statistics instead
    /// of taking them from the convolution before them
    #[arg(long)]
    unfused: bool,
    /// Run every block whose expanded image is larger than this many KiB depth-first,
    /// in bands of as many KiB of expanded rows (0: no depth-first blocks; default:
    /// the blocks whose expanded tensor would not stay in the last-level cache, in
    /// bands of half of the threads' L2 caches).
    #[arg(long)]
    band_kib: Option<usize>,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 elsewhere).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Prints the per-kind times of the last timed loop (ms per step, share of the step)
/// on standard error; what no timer covers is "other" (buffers, bookkeeping).
fn print_profile(arch: &str, mode: &str, total: Duration, iters: usize) {
    let kinds = profile::take();
    let per = |d: Duration| 1e3 * d.as_secs_f64() / iters as f64;
    let step = per(total);
    eprintln!("profile {arch} {mode}: {step:.1} ms per step");
    let mut covered = 0.0;
    for (kind, d, calls) in &kinds {
        covered += per(*d);
        eprintln!(
            "  {kind:<26} {:>8.1} ms {:>5.1} % ({} calls)",
            per(*d),
            100.0 * per(*d) / step,
            calls / iters as u64
        );
    }
    let other = step - covered;
    eprintln!(
        "  {:<26} {:>8.1} ms {:>5.1} %",
        "other",
        other,
        100.0 * other / step
    );
}

/// Prints the estimated main-memory bytes per image of the prepared inference network
/// next to the unfused forward pass's (a plan is made for the count when the run used
/// the unfused pass).
fn print_traffic(
    prepared: Option<&effnet::model::InferencePlan>,
    net: &Network,
    n: usize,
    res: usize,
) -> Result<()> {
    let own;
    let plan = match prepared {
        Some(p) => p,
        None => {
            own = net.plan_inference(n, res)?;
            &own
        }
    };
    if plan.lanes() > 1 {
        eprintln!(
            "  {} image lanes side by side, groups of {} images (the first {} blocks \
             image by image): the times above are summed over the lanes",
            plan.lanes(),
            plan.group(),
            plan.per_image_blocks()
        );
    }
    let t = plan.traffic_per_image();
    eprintln!(
        "  bytes per image (estimated: activations, and the weights read once per \
         group of {}): fused {:.1} MB, unfused {:.1} MB ({:.2}× less)",
        plan.group(),
        t.fused_bytes / 1e6,
        t.unfused_bytes / 1e6,
        t.unfused_bytes / t.fused_bytes
    );
    Ok(())
}

/// Runs `effnet bench model`.
pub fn run(a: &ModelArgs) -> Result<()> {
    for m in &a.modes {
        if m != "infer" && m != "train" {
            return Err(Error::InvalidArgument(format!(
                "unknown mode {m:?} (infer, train)"
            )));
        }
    }
    if a.batch == 0 || a.iters == 0 {
        return Err(Error::InvalidArgument(
            "--batch and --iters must be at least 1".into(),
        ));
    }
    super::bench_args::check_batch_res(Some(a.batch), &[("--res", a.res)])?;
    let cfg = ArchConfig::from_name(&a.arch)?;
    let res = a.res.unwrap_or(cfg.native_res);
    let n = a.batch;
    super::in_pool(a.threads, || -> Result<()> {
        // Inference runs on the prepared network (BatchNorm folded, epilogues fused,
        // weights packed once); `--unfused` times the layer-by-layer forward pass.
        let infer = if !a.modes.iter().any(|m| m == "infer") {
            None
        } else if a.unfused {
            Some(InferMode::Unfused)
        } else {
            Some(match a.band_kib {
                None => InferMode::Prepared,
                Some(0) => InferMode::PreparedBands(usize::MAX),
                Some(kib) => InferMode::PreparedBands(kib << 10),
            })
        };
        let mut case = NetworkCase::new(&cfg, n, res, infer)?;
        case.net.set_buffer_reuse(!a.no_reuse);
        case.net.set_conv_statistics(!a.unfused);
        let plan = case.net.memory_plan(n, res);
        let threads = rayon::current_num_threads();
        for mode in ["infer", "train"] {
            if !a.modes.iter().any(|m| m == mode) {
                continue;
            }
            let step = |case: &mut NetworkCase| -> Result<()> {
                if mode == "infer" {
                    case.infer()
                } else {
                    case.train(a.head_only)
                }
            };
            step(&mut case)?;
            profile::enable(a.profile);
            profile::take();
            let t = Instant::now();
            for _ in 0..a.iters {
                step(&mut case)?;
            }
            let total = t.elapsed();
            profile::enable(false);
            let ips = (a.iters * n) as f64 / total.as_secs_f64();
            if a.profile {
                // Image lanes run side by side: their layer times add up to the
                // lanes' thread time, so the step is counted in the same units.
                let lanes = match (mode, case.prepared()) {
                    ("infer", Some(p)) => p.lanes(),
                    _ => 1,
                };
                print_profile(&cfg.name, mode, total * lanes as u32, a.iters);
                if mode == "infer" {
                    print_traffic(case.prepared(), &case.net, n, res)?;
                }
            }
            let rss = peak_rss_mb();
            let planned = if mode == "train" {
                plan.peak_bytes() as f64 / (1024.0 * 1024.0)
            } else {
                0.0
            };
            if a.json {
                println!(
                    "{{\"arch\": \"{}\", \"mode\": \"{mode}\", \"res\": {res}, \"batch\": {n}, \"threads\": {threads}, \"img_per_s\": {ips:.2}, \"peak_rss_mb\": {rss:.1}, \"planned_activation_mb\": {planned:.1}}}",
                    cfg.name
                );
            } else {
                println!(
                    "{} {mode} {res}×{res} batch {n}, {threads} threads: {ips:.1} img/s, peak RSS {rss:.0} MiB{}",
                    cfg.name,
                    if mode == "train" {
                        format!(", planned activations {planned:.0} MiB")
                    } else {
                        String::new()
                    }
                );
            }
        }
        Ok(())
    })?
}
