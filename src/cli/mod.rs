//! Command-line parsing and dispatch.

mod bench_args;
mod bench_model;
mod bench_norm;
mod bench_ops;
mod interop;
mod ipu;
mod study;
mod train;

use clap::{Parser, Subcommand};
use effnet::Result;

/// EfficientNet kernels on the CPU: benchmarks, information, training.
#[derive(Parser, Debug)]
#[command(name = "effnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Prints the SIMD level in use and the thread count, and with `--arch` the
    /// network's parameter and multiply-accumulate counts.
    Info(InfoArgs),
    /// Trains a network (default: G16 LN+PN on the built-in synthetic shapes, reduced
    /// resolution, then head fine-tuning at the test resolution).
    Train(train::TrainArgs),
    /// Logits of a network (timm or effnet weights) for NCHW float32 images in a .npy.
    Predict(interop::PredictArgs),
    /// Gradient of the mean cross-entropy with respect to every parameter (BatchNorm
    /// in training mode, no dropout), saved under the weights' names and layouts;
    /// prints {"loss": …}.
    Grad(interop::GradArgs),
    /// The IPU execution model (estimated cycles; codelets run on the host).
    #[command(subcommand)]
    Ipu(ipu::IpuCommand),
}

/// Arguments of `effnet info`.
#[derive(clap::Args, Debug)]
struct InfoArgs {
    /// Architecture (e.g. efficientnet_b0, tf_efficientnet_b3, b0_g16_lnpn).
    #[arg(long)]
    arch: Option<String>,
    /// Input resolution (default: the architecture's native one).
    #[arg(long)]
    res: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Times the convolution passes of every layer of a suite.
    Ops(bench_ops::OpsArgs),
    /// Whole-network inference and training-step throughput and peak memory.
    Model(bench_model::ModelArgs),
    /// Times the normalization + activation ops (LN+Proxy Norm, GroupNorm, BatchNorm).
    Norm(bench_norm::NormArgs),
    /// The paper's practical-efficiency study: parameters, GMACs, measured CPU and
    /// estimated IPU throughput of B0–B2 (or any of B0–B7) in four variants at the
    /// native and half resolutions; a table, JSON lines and a picture.
    Study(study::StudyArgs),
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    // A misspelt EFFNET_SIMD is an error, not a silently ignored setting: the command
    // would otherwise run (and report figures) at another level than the one asked for.
    if let Some(e) = effnet::simd::env_error() {
        return Err(effnet::Error::InvalidArgument(format!(
            "{e}; unset it or fix it"
        )));
    }
    match cli.command {
        Command::Bench(BenchCommand::Ops(a)) => bench_ops::run(&a),
        Command::Bench(BenchCommand::Model(a)) => bench_model::run(&a),
        Command::Bench(BenchCommand::Norm(a)) => bench_norm::run(&a),
        Command::Bench(BenchCommand::Study(a)) => study::run(&a),
        Command::Info(a) => info(&a),
        Command::Train(a) => train::run(&a),
        Command::Predict(a) => interop::predict(&a),
        Command::Grad(a) => interop::grad(&a),
        Command::Ipu(c) => ipu::run(&c),
    }
}

/// Runs `f` in a pool of `threads` threads (0 = rayon's default).
pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> Result<R> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| effnet::Error::InvalidArgument(format!("thread pool: {e}")))?;
    Ok(pool.install(f))
}

fn info(a: &InfoArgs) -> Result<()> {
    println!(
        "simd level: {} (detected {})",
        effnet::simd::active(),
        effnet::simd::detected()
    );
    println!("threads: {}", rayon::current_num_threads());
    if let Some(name) = &a.arch {
        let arch = effnet::arch::ArchConfig::from_name(name)?;
        bench_args::check_batch_res(None, &[("--res", a.res)])?;
        let res = a.res.unwrap_or(arch.native_res);
        if res < 32 {
            return Err(effnet::Error::InvalidArgument(format!(
                "--res {res} is below 32"
            )));
        }
        let c = arch.counts(res);
        println!(
            "{}: {:.2} M parameters, {:.3} G multiply-accumulates per image at {res}×{res}",
            arch.name,
            c.params as f64 / 1e6,
            c.macs as f64 / 1e9
        );
    }
    Ok(())
}
