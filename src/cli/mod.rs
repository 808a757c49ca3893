//! Command-line parsing and dispatch.

mod bench_norm;
mod bench_ops;

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
    /// Prints the SIMD level in use and the thread count.
    Info,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Times the convolution passes of every layer of a suite.
    Ops(bench_ops::OpsArgs),
    /// Times the normalization + activation ops (LN+Proxy Norm, GroupNorm, BatchNorm).
    Norm(bench_norm::NormArgs),
}

/// Parses the command line and runs the command.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Ops(a)) => bench_ops::run(&a),
        Command::Bench(BenchCommand::Norm(a)) => bench_norm::run(&a),
        Command::Info => {
            println!(
                "simd level: {} (detected {})",
                effnet::simd::active(),
                effnet::simd::detected()
            );
            println!("threads: {}", rayon::current_num_threads());
            Ok(())
        }
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
