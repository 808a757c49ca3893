//! `effnet ipu report` and `effnet ipu run`: the IPU execution model from the command
//! line. Every cycle and throughput figure is an estimate of the model.

use clap::{Args, Subcommand};
use effnet::arch::ArchConfig;
use effnet::ipu::network;
use effnet::ipu::{Precision, Target};
use effnet::{Error, Result};

/// `effnet ipu …`.
#[derive(Subcommand, Debug)]
pub enum IpuCommand {
    /// Per-layer estimated cycles, tiles and memory of a planned network, and the
    /// estimated images per second on one IPU.
    Report(ReportArgs),
    /// Runs one training step of the whole network (stem, blocks, head, pool,
    /// classifier, loss, complete backward) chained through the codelets on the model
    /// and compares it with the SIMD kernels of the model layer.
    Run(RunArgs),
}

/// Arguments of `effnet ipu report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Any name of `effnet::arch::ArchConfig::from_name`: efficientnet_b<k>,
    /// tf_efficientnet_b<k>, b<k>_<g1|g16>_<bn|gn|lnpn>, tiny in place of b<k>.
    #[arg(long)]
    arch: String,
    /// Input resolution.
    #[arg(long, default_value_t = 224)]
    res: usize,
    /// Images per batch on the IPU.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// mk2 or bow.
    #[arg(long, default_value = "mk2")]
    target: String,
    /// Storage/arithmetic precision of the estimates: f16 (the paper's IPU runs) or f32.
    #[arg(long, default_value = "f16")]
    precision: String,
    /// Overrides a target constant, e.g. --set sync_cycles=300 (repeatable).
    #[arg(long)]
    set: Vec<String>,
    /// Profile the whole training step built as one graph (`ipu::chain`: real tile
    /// mappings, liveness, exchanges) instead of the per-layer planner estimates; large
    /// networks may not fit yet (tiles are handed out in order)
    #[arg(long)]
    graph: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Arguments of `effnet ipu run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Any name of `effnet::arch::ArchConfig::from_name`: efficientnet_b<k>,
    /// tf_efficientnet_b<k>, b<k>_<g1|g16>_<bn|gn|lnpn>, tiny in place of b<k>.
    #[arg(long)]
    arch: String,
    /// Input resolution.
    #[arg(long, default_value_t = 32)]
    res: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// mk2 or bow.
    #[arg(long, default_value = "mk2")]
    target: String,
    /// What the results are compared with: simd (the whole network chained on the
    /// model against the model layer's SIMD forward and backward) or f64 (each
    /// convolution and block on random data against the f64 references).
    #[arg(long, default_value = "simd")]
    oracle: String,
    /// Seed of the parameters, images and labels.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Overrides a target constant, e.g. --set tile_bytes=65536 (repeatable).
    #[arg(long)]
    set: Vec<String>,
    /// Writes a per-tile picture (memory and cycles across the tiles) of this layer's
    /// forward pass to --picture.
    #[arg(long, default_value = "blocks.1.0.conv_dw")]
    picture_layer: String,
    /// PNG file for the per-tile picture.
    #[arg(long)]
    picture: Option<std::path::PathBuf>,
}

fn target(name: &str, sets: &[String]) -> Result<Target> {
    let mut t = Target::by_name(name)?;
    for s in sets {
        t.set(s)?;
    }
    Ok(t)
}

fn precision(s: &str) -> Result<Precision> {
    match s {
        "f16" => Ok(Precision::F16),
        "f32" => Ok(Precision::F32),
        _ => Err(Error::InvalidArgument(format!(
            "--precision {s:?} (f16, f32)"
        ))),
    }
}

/// Runs an `ipu` subcommand.
pub fn run(c: &IpuCommand) -> Result<()> {
    match c {
        IpuCommand::Report(a) => report(a),
        IpuCommand::Run(a) => run_model(a),
    }
}

fn report(a: &ReportArgs) -> Result<()> {
    let arch = ArchConfig::from_name(&a.arch)?;
    let t = target(&a.target, &a.set)?;
    let p = precision(&a.precision)?;
    let r = if a.graph {
        network::report(&arch, a.res, a.batch, &t, p)?
    } else {
        network::report_planned(&arch, a.res, a.batch, &t, p)?
    };
    if !a.json {
        println!(
            "# {} at {}x{}, batch {}, target {} ({:.2} GHz), {:?}: ESTIMATED cycles (host model, not hardware)",
            a.arch,
            a.res,
            a.res,
            a.batch,
            t.name,
            t.clock_hz / 1e9,
            p
        );
        println!(
            "{:<28} {:<10} {:<4} {:>6} {:>10} {:>12} {:>10} {:>8} {:>12}",
            "layer", "kind", "pass", "tiles", "max_bytes", "compute", "exchange", "sync", "flops"
        );
    }
    for l in &r.lines {
        let c = &l.cost;
        if a.json {
            println!(
                "{{\"layer\": \"{}\", \"kind\": \"{}\", \"pass\": \"{}\", \"tiles\": {}, \"max_tile_bytes\": {}, \"compute_cycles\": {}, \"exchange_cycles\": {}, \"sync_cycles\": {}, \"flops\": {:.0}}}",
                l.layer,
                l.kind,
                l.pass,
                c.tiles,
                c.max_tile_bytes,
                c.compute_cycles,
                c.exchange_cycles,
                c.sync_cycles,
                c.flops
            );
        } else {
            println!(
                "{:<28} {:<10} {:<4} {:>6} {:>10} {:>12} {:>10} {:>8} {:>12.3e}",
                l.layer,
                l.kind,
                l.pass,
                c.tiles,
                c.max_tile_bytes,
                c.compute_cycles,
                c.exchange_cycles,
                c.sync_cycles,
                c.flops
            );
        }
    }
    let sum = |f: fn(&network::ReportLine) -> u64| r.lines.iter().map(f).sum::<u64>();
    let (cc, ec, sc) = (
        sum(|l| l.cost.compute_cycles),
        sum(|l| l.cost.exchange_cycles),
        sum(|l| l.cost.sync_cycles),
    );
    let tiles = r.lines.iter().map(|l| l.cost.tiles).max().unwrap_or(0);
    let bytes = r
        .lines
        .iter()
        .map(|l| l.cost.max_tile_bytes)
        .max()
        .unwrap_or(0);
    let flops: f64 = r.lines.iter().map(|l| l.cost.flops).sum();
    if a.json {
        println!(
            "{{\"layer\": \"total\", \"kind\": \"total\", \"pass\": \"train\", \"tiles\": {tiles}, \"max_tile_bytes\": {bytes}, \"compute_cycles\": {cc}, \"exchange_cycles\": {ec}, \"sync_cycles\": {sc}, \"flops\": {flops:.0}, \"estimated\": true, \"inference_img_per_s\": {:.1}, \"training_img_per_s\": {:.1}, \"spatial_conv_tile_cycles_per_flop\": {:.5}}}",
            r.inference_img_per_s, r.training_img_per_s, r.spatial_cycles_per_flop
        );
    } else {
        println!(
            "total (estimated): compute {cc}, exchange {ec}, sync {sc} cycles per training step; \
             inference {:.1} img/s, training {:.1} img/s per IPU; spatial convs {:.4} tile-cycles/FLOP",
            r.inference_img_per_s, r.training_img_per_s, r.spatial_cycles_per_flop
        );
    }
    Ok(())
}

fn run_model(a: &RunArgs) -> Result<()> {
    let arch = ArchConfig::from_name(&a.arch)?;
    let t = target(&a.target, &a.set)?;
    let max_rel_err = match a.oracle.as_str() {
        "simd" => run_chain(a, &arch, &t)?,
        "f64" => run_f64(a, &arch, &t)?,
        o => {
            return Err(Error::InvalidArgument(format!(
                "--oracle {o:?} (simd, f64)"
            )));
        }
    };
    println!("{{\"max_rel_err\": {max_rel_err:.3e}}}");
    if max_rel_err > 1e-4 || !max_rel_err.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "max_rel_err {max_rel_err:.3e} above 1e-4"
        )));
    }
    Ok(())
}

/// The whole network chained on the model against the SIMD model layer.
fn run_chain(a: &RunArgs, arch: &ArchConfig, t: &Target) -> Result<f64> {
    let r = effnet::ipu_check::check(arch, a.res, a.batch, t, a.seed)?;
    let layers = &r.ipu.layers;
    for s in &r.ipu.splits {
        println!(
            "{{\"layer\": \"{}\", \"row_parts\": {}, \"chan_parts\": {}, \"tiles\": {}}}",
            s.name, s.row_parts, s.chan_parts, s.boxes
        );
    }
    for l in &r.lines {
        println!(
            "{{\"tensor\": \"{}\", \"rel_err\": {:.3e}}}",
            l.tensor, l.rel_err
        );
    }
    let p = &r.ipu.profile;
    println!(
        "{{\"layer\": \"total\", \"estimated_cycles\": {}, \"max_tile_bytes\": {}}}",
        p.total_cycles(),
        p.tile_peak_bytes.iter().copied().max().unwrap_or(0)
    );
    if let Some(path) = &a.picture {
        let i = layers
            .iter()
            .position(|l| l.name == a.picture_layer && l.pass == "fwd")
            .ok_or_else(|| Error::InvalidArgument(format!("no layer {:?}", a.picture_layer)))?;
        let lp = &p.layers[i];
        effnet::ipu::picture::write_png(
            path,
            &effnet::ipu::picture::TilePicture {
                bytes: lp.tile_bytes.clone(),
                cycles: lp.tile_cycles.clone(),
                budget: t.budget_bytes(),
            },
        )?;
        eprintln!("wrote {} (layer {})", path.display(), a.picture_layer);
    }
    Ok(r.max_rel_err)
}

/// Every convolution split by the planner and every block, each on random data,
/// against the f64 oracles.
fn run_f64(a: &RunArgs, arch: &ArchConfig, t: &Target) -> Result<f64> {
    let r = effnet::ipu::run::run_network(
        arch,
        a.res,
        a.batch,
        t,
        effnet::ipu::reference::ConvOracle::F64,
        Some(&a.picture_layer),
    )?;
    for l in &r.layers {
        println!(
            "{{\"layer\": \"{}\", \"pass\": \"{}\", \"rel_err\": {:.3e}, \"tiles\": {}, \"estimated_cycles\": {}}}",
            l.name, l.pass, l.rel_err, l.tiles, l.cycles
        );
    }
    for (name, why) in &r.skipped {
        println!(
            "{{\"layer\": \"{name}\", \"pass\": \"block\", \"skipped\": \"{}\"}}",
            why.replace('"', "'")
        );
    }
    if let (Some(path), Some(pic)) = (&a.picture, &r.picture) {
        effnet::ipu::picture::write_png(path, pic)?;
        eprintln!("wrote {} (layer {})", path.display(), a.picture_layer);
    }
    Ok(r.max_rel_err)
}
