//! `effnet predict` and `effnet grad`: run timm or effnet weights on NumPy inputs.

use effnet::arch::ArchConfig;
use effnet::io::{npy, tensors};
use effnet::kernels::loss::Targets;
use effnet::model::{Network, Pass, Weights};
use effnet::{Error, Result};
use std::path::PathBuf;

/// Arguments shared by `predict` and `grad`.
#[derive(clap::Args, Debug)]
pub struct ModelIo {
    /// Architecture (e.g. efficientnet_b0, tf_efficientnet_b0, b0_g16_lnpn); optional
    /// for effnet checkpoints, which record it.
    #[arg(long)]
    arch: Option<String>,
    /// Weights: a timm state dict or an effnet checkpoint (safetensors).
    #[arg(long)]
    weights: PathBuf,
    /// Input images, float32 `[N, 3, H, W]` (NCHW, normalized), H = W.
    #[arg(long)]
    input: PathBuf,
    /// Output file.
    #[arg(long)]
    output: PathBuf,
    /// Threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Arguments of `effnet predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    io: ModelIo,
}

/// Arguments of `effnet grad`.
#[derive(clap::Args, Debug)]
pub struct GradArgs {
    #[command(flatten)]
    io: ModelIo,
    /// Labels, integer `[N]`.
    #[arg(long)]
    labels: PathBuf,
}

/// The network with the weights loaded; `true` when they are timm's.
fn load(io: &ModelIo) -> Result<(Network, bool)> {
    let w = Weights::read(&io.weights)?;
    let arch_name = io
        .arch
        .clone()
        .or_else(|| w.arch.clone())
        .ok_or_else(|| Error::InvalidArgument("--arch is required for timm weights".into()))?;
    let cfg = ArchConfig::from_name(&arch_name)?.with_classes(w.classes()?);
    let mut net = Network::new(&cfg, 0)?;
    net.load_weights(&w)?;
    Ok((net, w.timm))
}

/// `[N, 3, H, W]` → NHWC `[N][H][W][3]`, with `(N, H)`.
fn read_images(path: &std::path::Path) -> Result<(Vec<f32>, usize, usize)> {
    let (shape, data) = npy::read_f32(path)?;
    if shape.len() != 4 || shape[1] != 3 || shape[2] != shape[3] || shape[0] == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: expected float32 [N, 3, H, H] images, got shape {shape:?}",
            path.display()
        )));
    }
    let (n, h) = (shape[0], shape[2]);
    super::bench_args::check_batch_res(Some(n), &[("the image height", Some(h))])?;
    let mut out = effnet::error::try_filled("the NHWC images", data.len(), 0.0f32)?;
    for b in 0..n {
        for c in 0..3 {
            for p in 0..h * h {
                out[(b * h * h + p) * 3 + c] = data[(b * 3 + c) * h * h + p];
            }
        }
    }
    Ok((out, n, h))
}

/// Runs `effnet predict`.
pub fn predict(a: &PredictArgs) -> Result<()> {
    let (net, _) = load(&a.io)?;
    let (x, n, res) = read_images(&a.io.input)?;
    // The prepared network: BatchNorm folded, epilogues fused (per-sample norms run
    // unfused).
    let logits = super::in_pool(a.io.threads, || net.plan_inference(n, res)?.run(&x))??;
    npy::write_f32(&a.io.output, &[n, net.classes()], &logits)
}

/// Runs `effnet grad`.
pub fn grad(a: &GradArgs) -> Result<()> {
    let (mut net, timm) = load(&a.io)?;
    let (x, n, res) = read_images(&a.io.input)?;
    let (shape, labels) = npy::read_i64(&a.labels)?;
    if shape != [n] {
        return Err(Error::InvalidArgument(format!(
            "{}: expected {n} labels, got shape {shape:?}",
            a.labels.display()
        )));
    }
    let labels: Vec<usize> = labels
        .iter()
        .map(|&l| {
            usize::try_from(l)
                .ok()
                .filter(|&l| l < net.classes())
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "label {l} is out of range for {} classes",
                        net.classes()
                    ))
                })
        })
        .collect::<Result<_>>()?;
    let pass = Pass::deterministic_train();
    let (loss, _) = super::in_pool(a.io.threads, || {
        net.loss_and_grad(&x, n, res, Targets::Labels(&labels), 0.0, &pass)
    })??;
    let p = net.params();
    let out = if timm {
        p.to_timm(true)
    } else {
        p.infos()
            .iter()
            .zip(&p.grads)
            .filter(|(i, _)| i.kind.trainable())
            .map(|(i, g)| {
                (
                    i.name.clone(),
                    tensors::NamedTensor {
                        shape: i.shape.clone(),
                        data: g.clone(),
                    },
                )
            })
            .collect()
    };
    tensors::save(&a.io.output, &out, None)?;
    println!("{{\"loss\": {loss}}}");
    Ok(())
}
