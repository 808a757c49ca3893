//! `effnet bench study`: the paper's practical-efficiency comparison on this machine
//! and on the IPU model. For every network × variant × resolution: parameters,
//! multiply-accumulates, measured CPU training and inference throughput (the prepared
//! network, short runs, fastest step), and the IPU model's estimated IPU-POD16 training
//! and one-IPU inference throughput. Prints a table and the three claims as ratios,
//! writes JSON lines and a PNG of throughput against GMACs (theoretical against
//! practical efficiency, in the spirit of the paper's Fig. 1).

use clap::Args;
use effnet::arch::ArchConfig;
use effnet::bench::network::{InferMode, NetworkCase};
use effnet::ipu::system::{SystemConfig, inference_micro_batch, inference_report, system_report};
use effnet::ipu::{Precision, Target};
use effnet::report::Progress;
use effnet::report::chart::{Chart, PALETTE, Series, save_charts_png};
use effnet::{Error, Result};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Arguments of `effnet bench study`.
#[derive(Args, Debug)]
pub struct StudyArgs {
    /// Networks, comma-separated (b0 … b7).
    #[arg(long, default_value = "b0,b1,b2", value_delimiter = ',')]
    nets: Vec<String>,
    /// Variants, comma-separated: g1_bn (timm's EfficientNet: depthwise, BatchNorm,
    /// expansion 6), g1_gn, g16_gn, g16_lnpn (the paper's G16 group convolutions,
    /// expansion 4, with GroupNorm or LayerNorm + Proxy Norm).
    #[arg(
        long,
        default_value = "g1_bn,g1_gn,g16_gn,g16_lnpn",
        value_delimiter = ','
    )]
    variants: Vec<String>,
    /// Resolutions, comma-separated: native and/or half (the paper's reduced
    /// training resolutions, see `HALF_RES`).
    #[arg(long, default_value = "native,half", value_delimiter = ',')]
    res: Vec<String>,
    /// Worker threads of the CPU runs (0 = all cores).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Images per CPU step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Timed CPU steps per mode and round, after one warm-up step.
    #[arg(long, default_value_t = 1)]
    iters: usize,
    /// Rounds over all configurations (the CPU figures are the fastest step of all
    /// rounds: interleaving the configurations spreads a shared machine's noise over
    /// all of them instead of one).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Skip the CPU measurements.
    #[arg(long)]
    no_cpu: bool,
    /// Skip the IPU model's estimates.
    #[arg(long)]
    no_ipu: bool,
    /// JSON lines output (one object per configuration, then one per claim).
    #[arg(long, default_value = "effnet-study.jsonl")]
    json: PathBuf,
    /// The picture (PNG).
    #[arg(long, default_value = "effnet-study.png")]
    picture: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The variants: command-line name, display name.
const VARIANTS: [(&str, &str); 4] = [
    ("g1_bn", "G1-BN"),
    ("g1_gn", "G1-GN"),
    ("g16_gn", "G16-GN"),
    ("g16_lnpn", "G16-LN+PN"),
];

/// The reduced training resolution of B0 … B7: the paper's half sizes for B0–B5
/// (160, 176, 196, 204, 252, 328), each with `res % 32` equal to the native
/// resolution's; for B6 and B7 (not published) the size nearest 0.7 × native with
/// the same remainder (368 for 528, 408 for 600).
pub const HALF_RES: [usize; 8] = [160, 176, 196, 204, 252, 328, 368, 408];

/// The paper's IPU-POD16 training throughput for B0 (Fig. 1; DESIGN.md), img/s:
/// G1-GN, G16-GN and G16-LN+PN at 224, G16-LN+PN at 160.
const PAPER_B0: [(&str, usize, f64); 4] = [
    ("g1_gn", 224, 26_500.0),
    ("g16_gn", 224, 29_700.0),
    ("g16_lnpn", 224, 24_900.0),
    ("g16_lnpn", 160, 43_600.0),
];

/// One configuration's figures (`None`: not measured or not estimated).
#[derive(Clone, Debug)]
struct Row {
    scale: usize,
    variant: &'static str,
    arch: String,
    res: usize,
    native: bool,
    params: usize,
    macs: usize,
    cpu_train: Option<f64>,
    cpu_infer: Option<f64>,
    ipu_train: Option<f64>,
    ipu_train_fits: Option<bool>,
    ipu_infer: Option<f64>,
    ipu_infer_fits: Option<bool>,
    /// Why the IPU figures are missing, when they are.
    ipu_note: Option<String>,
}

impl Row {
    fn gmacs(&self) -> f64 {
        self.macs as f64 / 1e9
    }
}

/// The display name of a variant.
fn display(variant: &str) -> &'static str {
    VARIANTS
        .iter()
        .find(|v| v.0 == variant)
        .map_or("?", |v| v.1)
}

/// The architecture name of network `scale` in `variant`.
fn arch_name(scale: usize, variant: &str) -> String {
    if variant == "g1_bn" {
        format!("efficientnet_b{scale}")
    } else {
        format!("b{scale}_{variant}")
    }
}

/// The machine's CPU model (Linux `/proc/cpuinfo`), or "unknown CPU".
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The networks' scales from `b0` … `b7`.
fn scales(nets: &[String]) -> Result<Vec<usize>> {
    nets.iter()
        .map(|n| {
            n.strip_prefix('b')
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|&k| k < 8)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("--nets: unknown network {n:?} (b0 … b7)"))
                })
        })
        .collect()
}

/// The study's configurations in run order, checked before anything runs.
fn configurations(a: &StudyArgs) -> Result<Vec<Row>> {
    let scales = scales(&a.nets)?;
    let known: Vec<&str> = VARIANTS.iter().map(|v| v.0).collect();
    super::bench_args::check_names(&a.variants, &known, "variant")?;
    super::bench_args::check_names(&a.res, &["native", "half"], "resolution")?;
    if a.batch == 0 || a.iters == 0 || a.rounds == 0 {
        return Err(Error::InvalidArgument(
            "--batch, --iters and --rounds must be at least 1".into(),
        ));
    }
    super::bench_args::check_batch_res(Some(a.batch), &[])?;
    let mut rows = Vec::new();
    for &k in &scales {
        for &(v, _) in VARIANTS
            .iter()
            .filter(|v| a.variants.iter().any(|g| g == v.0))
        {
            let arch = arch_name(k, v);
            let cfg = ArchConfig::from_name(&arch)?;
            for native in [true, false] {
                if !a
                    .res
                    .iter()
                    .any(|r| r == if native { "native" } else { "half" })
                {
                    continue;
                }
                let res = if native { cfg.native_res } else { HALF_RES[k] };
                let c = cfg.counts(res);
                rows.push(Row {
                    scale: k,
                    variant: v,
                    arch: arch.clone(),
                    res,
                    native,
                    params: c.params,
                    macs: c.macs,
                    cpu_train: None,
                    cpu_infer: None,
                    ipu_train: None,
                    ipu_train_fits: None,
                    ipu_infer: None,
                    ipu_infer_fits: None,
                    ipu_note: None,
                });
            }
        }
    }
    Ok(rows)
}

/// Measures the CPU figures of `row` once more, keeping the fastest so far.
fn measure_cpu(row: &mut Row, a: &StudyArgs) -> Result<()> {
    let cfg = ArchConfig::from_name(&row.arch)?;
    let mut case = NetworkCase::new(&cfg, a.batch, row.res, Some(InferMode::Prepared))?;
    let best = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o.max(new)));
    row.cpu_infer = best(row.cpu_infer, case.time_infer(a.iters)?.best_img_per_s());
    row.cpu_train = best(
        row.cpu_train,
        case.time_train(a.iters, false)?.best_img_per_s(),
    );
    Ok(())
}

/// Estimates the IPU figures of `row`: training on the paper's IPU-POD16 system,
/// inference on one IPU at the published inference micro-batch.
fn estimate_ipu(row: &mut Row) -> Result<()> {
    let arch = ArchConfig::from_name(&row.arch)?;
    let sys = match SystemConfig::pod16(&arch, row.res) {
        Ok(s) => s,
        Err(e) => {
            row.ipu_note = Some(e.to_string());
            return Ok(());
        }
    };
    let t = Target::by_name("mk2")?;
    let r = system_report(&arch, row.res, &sys, &t, Precision::F16)?;
    row.ipu_train = Some(r.training_img_per_s);
    row.ipu_train_fits = Some(r.fits);
    let i = inference_report(
        &arch,
        row.res,
        inference_micro_batch(&arch),
        &t,
        Precision::F16,
    )?;
    row.ipu_infer = Some(i.img_per_s);
    row.ipu_infer_fits = Some(i.fits);
    Ok(())
}

/// A figure for the table: one decimal, `-` when missing, `*` when it does not fit.
fn cell(v: Option<f64>, fits: Option<bool>) -> String {
    match v {
        None => "-".into(),
        Some(x) => format!(
            "{}{}",
            if x >= 1000.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            },
            if fits == Some(false) { "*" } else { "" }
        ),
    }
}

fn header() -> String {
    format!(
        "{:<4} {:<10} {:>5} {:>8} {:>7} | {:>10} {:>10} | {:>11} {:>10}",
        "net",
        "variant",
        "res",
        "params M",
        "GMACs",
        "CPU train",
        "CPU infer",
        "IPU train",
        "IPU infer"
    )
}

fn table_line(r: &Row) -> String {
    format!(
        "{:<4} {:<10} {:>5} {:>8.2} {:>7.3} | {:>10} {:>10} | {:>11} {:>10}",
        format!("b{}", r.scale),
        display(r.variant),
        r.res,
        r.params as f64 / 1e6,
        r.gmacs(),
        cell(r.cpu_train, None),
        cell(r.cpu_infer, None),
        cell(r.ipu_train, r.ipu_train_fits),
        cell(r.ipu_infer, r.ipu_infer_fits),
    )
}

/// A JSON number, or `null`.
fn num(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.2}"))
}

fn flag(v: Option<bool>) -> String {
    v.map_or("null".into(), |x| x.to_string())
}

fn row_json(r: &Row, a: &StudyArgs, threads: usize) -> String {
    format!(
        "{{\"kind\": \"config\", \"net\": \"b{}\", \"variant\": \"{}\", \"arch\": \"{}\", \"res\": {}, \"native\": {}, \"params\": {}, \"macs\": {}, \"cpu_batch\": {}, \"cpu_threads\": {threads}, \"cpu_train_img_per_s\": {}, \"cpu_infer_img_per_s\": {}, \"ipu_estimated\": true, \"ipu_train_img_per_s\": {}, \"ipu_train_fits\": {}, \"ipu_infer_img_per_s\": {}, \"ipu_infer_fits\": {}, \"ipu_note\": {}}}",
        r.scale,
        display(r.variant),
        r.arch,
        r.res,
        r.native,
        r.params,
        r.macs,
        a.batch,
        num(r.cpu_train),
        num(r.cpu_infer),
        num(r.ipu_train),
        flag(r.ipu_train_fits),
        num(r.ipu_infer),
        flag(r.ipu_infer_fits),
        r.ipu_note
            .as_ref()
            .map_or("null".into(), |n| format!("\"{}\"", n.replace('"', "'")))
    )
}

/// One of the paper's claims as a ratio of two configurations of one network.
struct Claim {
    name: &'static str,
    what: String,
    scale: usize,
    macs: f64,
    cpu_train: Option<f64>,
    cpu_infer: Option<f64>,
    ipu_train: Option<f64>,
    ipu_infer: Option<f64>,
    paper: Option<f64>,
}

/// `a / b` when both are there.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    }
}

/// The three claims for every network with the configurations they compare: G16
/// against depthwise (G16-GN / G1-GN, native), LN+PN against GN (G16-LN+PN / G16-GN,
/// native), half against native resolution (G16-LN+PN).
fn claims(rows: &[Row]) -> Vec<Claim> {
    let find = |k: usize, v: &str, native: bool| {
        rows.iter()
            .find(|r| r.scale == k && r.variant == v && r.native == native)
    };
    let paper = |v: &str, res: usize| {
        PAPER_B0
            .iter()
            .find(|p| p.0 == v && p.1 == res)
            .map(|p| p.2)
    };
    let mut scales: Vec<usize> = rows.iter().map(|r| r.scale).collect();
    scales.dedup();
    let mut out = Vec::new();
    for k in scales {
        let pairs = [
            (
                "g16_vs_depthwise",
                (("g16_gn", true), ("g1_gn", true)),
                "G16-GN / G1-GN, native resolution",
            ),
            (
                "lnpn_vs_gn",
                (("g16_lnpn", true), ("g16_gn", true)),
                "G16-LN+PN / G16-GN, native resolution",
            ),
            (
                "half_vs_native",
                (("g16_lnpn", false), ("g16_lnpn", true)),
                "G16-LN+PN, half / native resolution",
            ),
        ];
        for (name, ((va, na), (vb, nb)), what) in pairs {
            let (Some(x), Some(y)) = (find(k, va, na), find(k, vb, nb)) else {
                continue;
            };
            let published = if k == 0 {
                ratio(paper(va, x.res), paper(vb, y.res))
            } else {
                None
            };
            out.push(Claim {
                name,
                what: what.to_string(),
                scale: k,
                macs: x.macs as f64 / y.macs as f64,
                cpu_train: ratio(x.cpu_train, y.cpu_train),
                cpu_infer: ratio(x.cpu_infer, y.cpu_infer),
                ipu_train: ratio(x.ipu_train, y.ipu_train),
                ipu_infer: ratio(x.ipu_infer, y.ipu_infer),
                paper: published,
            });
        }
    }
    out
}

fn times(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}×"))
}

fn claim_line(c: &Claim) -> String {
    format!(
        "b{} {}: GMACs {} | CPU training {}, inference {} | IPU training {}, inference {} (estimated){}",
        c.scale,
        c.what,
        times(Some(c.macs)),
        times(c.cpu_train),
        times(c.cpu_infer),
        times(c.ipu_train),
        times(c.ipu_infer),
        c.paper
            .map(|p| format!(" | paper, IPU-POD16 training: {p:.2}×"))
            .unwrap_or_default()
    )
}

fn claim_json(c: &Claim) -> String {
    format!(
        "{{\"kind\": \"claim\", \"claim\": \"{}\", \"what\": \"{}\", \"net\": \"b{}\", \"macs_ratio\": {:.3}, \"cpu_train_ratio\": {}, \"cpu_infer_ratio\": {}, \"ipu_train_ratio\": {}, \"ipu_infer_ratio\": {}, \"paper_ipu_train_ratio\": {}}}",
        c.name,
        c.what,
        c.scale,
        c.macs,
        num(c.cpu_train),
        num(c.cpu_infer),
        num(c.ipu_train),
        num(c.ipu_infer),
        num(c.paper)
    )
}

/// The picture: training (top) and inference (bottom) throughput against GMACs per
/// image, measured on the CPU (left) and estimated on the IPU model (right); one colour
/// per variant, solid at the native resolution, dashed at the half resolution, one
/// point per network.
fn charts(rows: &[Row], a: &StudyArgs, threads: usize) -> Vec<Chart> {
    type Get = fn(&Row) -> Option<f64>;
    let panels: [(&str, Get); 4] = [
        ("CPU training (measured)", |r| r.cpu_train),
        ("IPU-POD16 training (estimated)", |r| r.ipu_train),
        ("CPU inference (measured)", |r| r.cpu_infer),
        ("one IPU inference (estimated)", |r| r.ipu_infer),
    ];
    panels
        .iter()
        .map(|(title, get)| {
            let mut series = Vec::new();
            for (i, (v, name)) in VARIANTS.iter().enumerate() {
                for native in [true, false] {
                    let points: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| r.variant == *v && r.native == native)
                        .filter_map(|r| get(r).map(|y| (r.gmacs(), y)))
                        .collect();
                    if points.is_empty() {
                        continue;
                    }
                    series.push(Series {
                        label: if native {
                            name.to_string()
                        } else {
                            String::new()
                        },
                        colour: PALETTE[i],
                        points,
                        dashed: !native,
                    });
                }
            }
            let cpu_panel = title.starts_with("CPU");
            Chart {
                title: title.to_string(),
                x_label: "GMACs per image".into(),
                y_label: if cpu_panel {
                    format!("img/s, {threads} threads, batch {}", a.batch)
                } else {
                    "img/s".into()
                },
                series,
            }
        })
        .filter(|c| !c.series.is_empty())
        .collect()
}

/// Runs `effnet bench study`.
pub fn run(a: &StudyArgs) -> Result<()> {
    let mut rows = configurations(a)?;
    if rows.is_empty() {
        return Err(Error::InvalidArgument(
            "the study has no configurations (--nets, --variants, --res)".into(),
        ));
    }
    let cpu = cpu_model();
    let threads = super::in_pool(a.threads, rayon::current_num_threads)?;
    println!(
        "# practical efficiency: {} configuration(s); CPU {cpu}, {threads} threads, batch {}, SIMD {}, \
         fastest of {} step(s) in {} round(s), each after a warm-up (training: forward + \
         backward, no update); IPU figures ESTIMATED by the host model (IPU-POD16 training, \
         one-IPU inference); * = does not fit in tile memory",
        rows.len(),
        a.batch,
        effnet::simd::active(),
        a.iters * a.rounds,
        a.rounds
    );
    let mut json = String::new();
    let cpu_rounds = if a.no_cpu { 0 } else { a.rounds };
    let total = rows.len() * (cpu_rounds + usize::from(!a.no_ipu));
    let mut bar = Progress::new(total as u64, "study", a.quiet);
    if !a.no_ipu {
        for row in rows.iter_mut() {
            bar.set_message(&format!("IPU model: {} at {}", row.arch, row.res));
            estimate_ipu(row)?;
            bar.advance(1);
        }
    }
    for round in 0..cpu_rounds {
        for row in rows.iter_mut() {
            bar.set_message(&format!(
                "CPU round {}/{cpu_rounds}: {} at {}",
                round + 1,
                row.arch,
                row.res
            ));
            super::in_pool(a.threads, || measure_cpu(row, a))??;
            bar.advance(1);
        }
    }
    let elapsed = bar.finish().seconds;
    println!("{}", header());
    for row in &rows {
        println!("{}", table_line(row));
        let _ = writeln!(json, "{}", row_json(row, a, threads));
    }
    let cl = claims(&rows);
    if !cl.is_empty() {
        println!("# the paper's claims as ratios (throughput ratios: > 1 is faster)");
        for c in &cl {
            println!("{}", claim_line(c));
            let _ = writeln!(json, "{}", claim_json(c));
        }
    }
    effnet::io::write_atomic(&a.json, json.as_bytes())?;
    let ch = charts(&rows, a, threads);
    if !ch.is_empty() {
        let legend: Vec<(String, [u8; 3])> = VARIANTS
            .iter()
            .enumerate()
            .filter(|(_, v)| rows.iter().any(|r| r.variant == v.0))
            .map(|(i, v)| (v.1.to_string(), PALETTE[i]))
            .collect();
        let note = format!(
            "solid line, filled squares: native resolution; dashed, hollow: half resolution; \
             one point per network (B0 leftmost)\n\
             CPU: measured on this machine ({cpu}, SIMD {}, {threads} threads, batch {})\n\
             IPU: estimated by effnet's host model of Graphcore Mk2 IPUs, not hardware",
            effnet::simd::active(),
            a.batch
        );
        save_charts_png(&a.picture, &ch, 2, &legend, &note, 1400, 1100)?;
        println!("picture: {}", a.picture.display());
    }
    println!("json: {}", a.json.display());
    println!("took {elapsed:.0} s");
    Ok(())
}
