//! `effnet ipu report` and `effnet ipu run`: the IPU execution model from the command
//! line. Every cycle and throughput figure is an estimate of the model.

use clap::{Args, Subcommand};
use effnet::arch::ArchConfig;
use effnet::ipu::network;
use effnet::ipu::picture::TilePicture;
use effnet::ipu::system::{SystemConfig, inference_micro_batch, inference_report, system_report};
use effnet::ipu::{Precision, Target};
use effnet::{Error, Result};

/// `effnet ipu …`.
#[derive(Subcommand, Debug)]
pub enum IpuCommand {
    /// The training system built as graphs (one per pipeline stage) and profiled:
    /// per-layer estimated cycles, tiles and memory, the step's cycle split and the
    /// estimated images per second (`--system pod16`: the paper's IPU-POD16
    /// configuration), and inference on one IPU; `--layers`: the per-layer planner.
    Report(ReportArgs),
    /// Runs one training step of the whole network (stem, blocks, head, pool,
    /// classifier, loss, complete backward) chained through the codelets on the model
    /// and compares it with the SIMD kernels of the model layer; with `--stages`,
    /// `--replicas` or `--accumulate`, one optimizer step of the pipelined,
    /// replicated, accumulating system against the model's step.
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
    /// Images per batch on one IPU (`--system one`, and `--layers`).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// The system: `one` (one IPU, micro-batch --batch) or `pod16` (the paper's
    /// IPU-POD16 configuration of the network at this resolution).
    #[arg(long, default_value = "one")]
    system: String,
    /// Pipeline stages (overrides the system's).
    #[arg(long)]
    stages: Option<usize>,
    /// Data-parallel replicas (overrides the system's).
    #[arg(long)]
    replicas: Option<usize>,
    /// Images per micro-batch (overrides the system's).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Micro-batches accumulated per optimizer step (overrides the system's).
    #[arg(long)]
    accumulate: Option<usize>,
    /// Pipeline split points (segment names such as blocks.2.1, comma-separated;
    /// overrides the system's; empty with --stages: balanced by the planner).
    #[arg(long)]
    split: Option<String>,
    /// Keep every activation for the backward pass instead of recomputing each block.
    #[arg(long)]
    no_recompute: bool,
    /// Micro-batch of the inference estimate on one IPU (default: the published one,
    /// 49 for G1 and 106 for G16 networks); 0 skips it.
    #[arg(long)]
    inference_batch: Option<usize>,
    /// mk2 or bow.
    #[arg(long, default_value = "mk2")]
    target: String,
    /// Storage/arithmetic precision of the estimates: f16 (the paper's IPU runs) or f32.
    #[arg(long, default_value = "f16")]
    precision: String,
    /// Overrides a target constant, e.g. --set sync_cycles=300 (repeatable).
    #[arg(long)]
    set: Vec<String>,
    /// The per-layer planner's estimates (each layer planned alone on a fresh IPU)
    /// instead of the built system.
    #[arg(long)]
    layers: bool,
    /// Writes a PNG of the per-tile memory and cycles, one row per stage IPU.
    #[arg(long)]
    picture: Option<std::path::PathBuf>,
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
    /// Pipeline stages of the system step (with --replicas/--accumulate: runs one
    /// optimizer step of the system, with and without recomputation, against the
    /// model's step on the same global batch of batch × replicas × accumulate
    /// images).
    #[arg(long)]
    stages: Option<usize>,
    /// Data-parallel replicas of the system step.
    #[arg(long)]
    replicas: Option<usize>,
    /// Micro-batches accumulated per optimizer step of the system step.
    #[arg(long)]
    accumulate: Option<usize>,
    /// Runs the system step only without recomputation (default: both).
    #[arg(long)]
    no_recompute: bool,
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
    if a.layers {
        report_layers(a)
    } else {
        report_system(a)
    }
}

/// The system configuration the report arguments ask for.
fn system_config(a: &ReportArgs, arch: &ArchConfig) -> Result<SystemConfig> {
    let mut cfg = match a.system.as_str() {
        "one" => SystemConfig::one_ipu(a.batch),
        "pod16" => SystemConfig::pod16(arch, a.res)?,
        s => {
            return Err(Error::InvalidArgument(format!(
                "--system {s:?} (one, pod16)"
            )));
        }
    };
    if let Some(v) = a.stages {
        if v != cfg.stages {
            cfg.splits.clear();
        }
        cfg.stages = v;
    }
    if let Some(v) = a.replicas {
        cfg.replicas = v;
    }
    if let Some(v) = a.micro_batch {
        cfg.micro_batch = v;
    }
    if let Some(v) = a.accumulate {
        cfg.accumulation = v;
    }
    if let Some(s) = &a.split {
        cfg.splits = s
            .split(',')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect();
    }
    if a.no_recompute {
        cfg.recompute = false;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn report_system(a: &ReportArgs) -> Result<()> {
    let arch = ArchConfig::from_name(&a.arch)?;
    let t = target(&a.target, &a.set)?;
    let p = precision(&a.precision)?;
    let cfg = system_config(a, &arch)?;
    let r = system_report(&arch, a.res, &cfg, &t, p)?;
    let ib = a
        .inference_batch
        .unwrap_or_else(|| inference_micro_batch(&arch));
    let inf = if ib > 0 {
        Some(inference_report(&arch, a.res, ib, &t, p)?)
    } else {
        None
    };
    if !a.json {
        println!(
            "# {} at {}x{} on {} IPU(s): {} stage(s) x {} replica(s), micro-batch {}, accumulation {}, recompute {}, split at {:?}; target {} ({:.2} GHz), {:?}: ESTIMATED cycles (host model, not hardware)",
            a.arch,
            a.res,
            a.res,
            cfg.ipus(),
            cfg.stages,
            cfg.replicas,
            cfg.micro_batch,
            cfg.accumulation,
            cfg.recompute,
            r.splits,
            t.name,
            t.clock_hz / 1e9,
            p
        );
        println!(
            "{:<5} {:<30} {:<10} {:<9} {:>6} {:>10} {:>12} {:>10} {:>8} {:>12}",
            "stage",
            "layer",
            "kind",
            "pass",
            "tiles",
            "max_bytes",
            "compute",
            "exchange",
            "sync",
            "flops"
        );
    }
    for st in &r.stages {
        for l in &st.lines {
            let c = &l.cycles;
            if a.json {
                println!(
                    "{{\"stage\": {}, \"layer\": \"{}\", \"kind\": \"{}\", \"pass\": \"{}\", \"tiles\": {}, \"max_tile_bytes\": {}, \"compute_cycles\": {}, \"exchange_cycles\": {}, \"sync_cycles\": {}, \"flops\": {:.0}}}",
                    l.stage,
                    l.layer,
                    l.kind,
                    l.pass,
                    l.tiles,
                    l.max_tile_bytes,
                    c.compute,
                    c.exchange,
                    c.sync,
                    l.flops
                );
            } else {
                println!(
                    "{:<5} {:<30} {:<10} {:<9} {:>6} {:>10} {:>12} {:>10} {:>8} {:>12.3e}",
                    l.stage,
                    l.layer,
                    l.kind,
                    l.pass,
                    l.tiles,
                    l.max_tile_bytes,
                    c.compute,
                    c.exchange,
                    c.sync,
                    l.flops
                );
            }
        }
    }
    let s = &r.step;
    let stage_json: Vec<String> = r
        .stages
        .iter()
        .map(|st| {
            format!(
                "{{\"segments\": [{}], \"in_flight\": {}, \"fits\": {}, \"max_tile_bytes\": {}, \"fwd_cycles\": {}, \"bwd_cycles\": {}, \"update_cycles\": {}, \"memory_error\": {}}}",
                st.segments.iter().map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(", "),
                st.in_flight,
                st.fits,
                st.max_tile_bytes,
                st.timing.fwd.total(),
                st.timing.bwd.total(),
                st.timing.update.total(),
                st.memory_error
                    .as_ref()
                    .map(|e| format!("\"{}\"", e.replace('"', "'")))
                    .unwrap_or_else(|| "null".into())
            )
        })
        .collect();
    let (ib, ifits, iips, ibytes) = match &inf {
        Some(i) => (i.micro_batch, i.fits, i.img_per_s, i.max_tile_bytes),
        None => (0, false, 0.0, 0),
    };
    if a.json {
        println!(
            "{{\"layer\": \"total\", \"estimated\": true, \"arch\": \"{}\", \"res\": {}, \"system\": \"{}\", \"ipus\": {}, \"replicas\": {}, \"stages\": {}, \"micro_batch\": {}, \"accumulation\": {}, \"global_batch\": {}, \"recompute\": {}, \"splits\": [{}], \"fits\": {}, \"max_tile_bytes\": {}, \"budget_bytes\": {}, \"training_img_per_s\": {:.1}, \"step_cycles\": {}, \"compute_cycles\": {}, \"exchange_cycles\": {}, \"inter_ipu_cycles\": {}, \"allreduce_cycles\": {}, \"sync_cycles\": {}, \"pipeline_steps\": {}, \"stage_detail\": [{}], \"inference_micro_batch\": {}, \"inference_fits\": {}, \"inference_max_tile_bytes\": {}, \"inference_img_per_s\": {:.1}, \"provenance\": \"{}\"}}",
            a.arch,
            a.res,
            a.system,
            cfg.ipus(),
            cfg.replicas,
            cfg.stages,
            cfg.micro_batch,
            cfg.accumulation,
            cfg.global_batch(),
            cfg.recompute,
            r.splits
                .iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(", "),
            r.fits,
            r.max_tile_bytes,
            t.budget_bytes(),
            r.training_img_per_s,
            s.total(),
            s.compute,
            s.exchange,
            s.inter_ipu,
            s.allreduce,
            s.sync,
            s.pipeline_steps,
            stage_json.join(", "),
            ib,
            ifits,
            ibytes,
            iips,
            cfg.provenance
        );
    } else {
        for (i, st) in r.stages.iter().enumerate() {
            println!(
                "stage {i}: {} .. {}, {} micro-batch(es) in flight, fits {}, max {} bytes/tile; fwd {} bwd {} update {} cycles{}",
                st.segments.first().map(String::as_str).unwrap_or(""),
                st.segments.last().map(String::as_str).unwrap_or(""),
                st.in_flight,
                st.fits,
                st.max_tile_bytes,
                st.timing.fwd.total(),
                st.timing.bwd.total(),
                st.timing.update.total(),
                st.memory_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        println!(
            "step (estimated): {} cycles = compute {} + exchange {} + inter-IPU {} + all-reduce {} + sync {} over {} pipeline steps; training {:.1} img/s on {} IPUs; fits {}",
            s.total(),
            s.compute,
            s.exchange,
            s.inter_ipu,
            s.allreduce,
            s.sync,
            s.pipeline_steps,
            r.training_img_per_s,
            cfg.ipus(),
            r.fits
        );
        if let Some(i) = &inf {
            println!(
                "inference on one IPU (estimated): micro-batch {}, {:.1} img/s, fits {}, max {} bytes/tile{}",
                i.micro_batch,
                i.img_per_s,
                i.fits,
                i.max_tile_bytes,
                i.memory_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(path) = &a.picture {
        let pics: Vec<TilePicture> = r.stages.iter().map(|s| s.picture.clone()).collect();
        effnet::ipu::picture::write_png_rows(path, &pics)?;
        eprintln!("wrote {} ({} stage IPU(s))", path.display(), pics.len());
    }
    Ok(())
}

fn report_layers(a: &ReportArgs) -> Result<()> {
    let arch = ArchConfig::from_name(&a.arch)?;
    let t = target(&a.target, &a.set)?;
    let p = precision(&a.precision)?;
    let r = network::report_planned(&arch, a.res, a.batch, &t, p)?;
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
    let system = a.stages.is_some() || a.replicas.is_some() || a.accumulate.is_some();
    let max_rel_err = match a.oracle.as_str() {
        "simd" if system => run_system_step(a, &arch, &t)?,
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

/// One optimizer step of the pipelined, replicated, accumulating system against the
/// model's step (with and without recomputation unless --no-recompute).
fn run_system_step(a: &RunArgs, arch: &ArchConfig, t: &Target) -> Result<f64> {
    let mut worst = 0.0f64;
    let modes: &[bool] = if a.no_recompute {
        &[false]
    } else {
        &[true, false]
    };
    for &recompute in modes {
        let cfg = SystemConfig {
            stages: a.stages.unwrap_or(1),
            replicas: a.replicas.unwrap_or(1),
            micro_batch: a.batch,
            accumulation: a.accumulate.unwrap_or(1),
            recompute,
            splits: Vec::new(),
            provenance: "effnet ipu run".into(),
        };
        let r = effnet::ipu_check::check_system(arch, a.res, &cfg, t, a.seed)?;
        for l in &r.lines {
            println!(
                "{{\"recompute\": {recompute}, \"tensor\": \"{}\", \"update_rel_err\": {:.3e}, \"weight_rel_err\": {:.3e}}}",
                l.tensor, l.update_rel_err, l.weight_rel_err
            );
        }
        println!(
            "{{\"recompute\": {recompute}, \"stages\": [{}], \"replicas\": {}, \"accumulation\": {}, \"micro_batch\": {}, \"global_batch\": {}, \"replicas_agree\": {}, \"ipu_loss\": {:.6}, \"simd_loss\": {:.6}, \"max_tile_bytes\": {}, \"max_update_rel_err\": {:.3e}, \"max_weight_rel_err\": {:.3e}}}",
            r.ipu
                .stages
                .iter()
                .map(|s| format!(
                    "\"{}..{}\"",
                    s.first().map(String::as_str).unwrap_or(""),
                    s.last().map(String::as_str).unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.replicas,
            cfg.accumulation,
            cfg.micro_batch,
            cfg.global_batch(),
            r.ipu.replicas_agree,
            r.ipu.loss,
            r.loss,
            r.ipu.max_tile_bytes,
            r.max_update_rel_err,
            r.max_weight_rel_err
        );
        if !r.ipu.replicas_agree {
            return Err(Error::InvalidArgument(
                "the replicas disagree after the step".into(),
            ));
        }
        worst = worst.max(r.max_update_rel_err).max(r.max_weight_rel_err);
    }
    Ok(worst)
}

/// The whole network chained on the model against the SIMD model layer.
fn run_chain(a: &RunArgs, arch: &ArchConfig, t: &Target) -> Result<f64> {
    let r = effnet::ipu_check::check(arch, a.res, a.batch, t, a.seed)?;
    let layers = &r.ipu.layers;
    for s in &r.ipu.splits {
        println!(
            "{{\"layer\": \"{}\", \"image_parts\": {}, \"row_parts\": {}, \"chan_parts\": {}, \"tiles\": {}}}",
            s.name, s.image_parts, s.row_parts, s.chan_parts, s.boxes
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
