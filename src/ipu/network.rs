//! Any EfficientNet of [`crate::arch`] (B0–B7, `tiny`; G1/G16; BN/GN/LN+PN; symmetric
//! or TF `SAME` padding) as a list of layers planned on the IPU model: the per-layer
//! **estimated** report and the images per second. The network itself is described
//! once, by [`ArchConfig::conv_layers`] and [`ArchConfig::blocks`]; this module only
//! adds the normalization, squeeze-excitation, skip, pooling and loss steps between
//! its convolutions.

pub use super::codelets::ProxyScale;
use super::planner::{Cost, Pass, Planner};
use super::target::{Precision, Target};
pub use super::vocab::NormSpec;
use super::vocab::{BlockNorm, BlockSpec};
use crate::arch::{ArchConfig, LayerRole, NormKind, PaddingMode};
use crate::error::{Error, Result};
use crate::kernels::conv::ConvShape;
/// One layer of the network.
#[derive(Clone, Debug)]
pub enum Op {
    /// A convolution (`kind`: stem, pointwise, depthwise, grouped, fc).
    Conv(ConvShape),
    /// Normalization (+ activation) of the preceding convolution's output.
    Norm(NormSpec),
    /// Squeeze-excitation on the preceding layer's output, `reduced` inner channels
    /// (its two 1×1 convolutions with bias, `se.conv_reduce` and `se.conv_expand`).
    Se {
        /// Inner channels.
        reduced: usize,
    },
    /// Skip addition.
    Add,
    /// Global average pool.
    Pool,
    /// Softmax cross-entropy over `classes`.
    Loss {
        /// Classes.
        classes: usize,
    },
}

/// A named layer.
#[derive(Clone, Debug)]
pub struct Layer {
    /// timm name (`conv_stem`, `blocks.1.0.bn2`, `blocks.1.0.se`, …).
    pub name: String,
    /// Report kind.
    pub kind: &'static str,
    /// What it does.
    pub op: Op,
    /// Activation shape after it: (batch, h, w, c).
    pub out: (usize, usize, usize, usize),
}

/// The layers of `arch` at `res`×`res`, batch `batch`, in forward order, built from
/// [`ArchConfig::conv_layers`] (every convolution with its timm name, role and the
/// name of the norm that follows).
pub fn layers(arch: &ArchConfig, res: usize, batch: usize) -> Result<Vec<Layer>> {
    if res < 32 || batch == 0 {
        return Err(Error::InvalidArgument(
            "--res must be at least 32 and --batch at least 1".into(),
        ));
    }
    let blocks = arch.blocks();
    let mut block = 0usize;
    let mut v: Vec<Layer> = Vec::new();
    for l in arch.conv_layers(batch, res) {
        let s = l.desc.validate()?;
        let out = (batch, s.out_h, s.out_w, l.desc.out_channels);
        let kind = match l.role {
            LayerRole::Stem => "stem",
            LayerRole::Spatial if l.desc.group_size == 1 => "depthwise",
            LayerRole::Spatial => "grouped",
            LayerRole::Classifier => "fc",
            LayerRole::SeReduce => {
                // The SE's two convolutions are one `Se` step on the spatial output.
                let prefix = l.name.trim_end_matches(".conv_reduce");
                let prev = v.last().map(|p| p.out).unwrap_or(out);
                v.push(Layer {
                    name: prefix.to_string(),
                    kind: "se",
                    op: Op::Se {
                        reduced: l.desc.out_channels,
                    },
                    out: prev,
                });
                continue;
            }
            LayerRole::SeExpand => continue,
            _ => "pointwise",
        };
        v.push(Layer {
            name: l.name.clone(),
            kind,
            op: Op::Conv(s),
            out,
        });
        if let Some(nn) = &l.norm {
            v.push(Layer {
                name: nn.clone(),
                kind: "norm",
                op: Op::Norm(NormSpec::of(arch, l.role, out.3)),
                out,
            });
        }
        match l.role {
            LayerRole::Project => {
                let b = blocks.get(block).copied();
                block += 1;
                if let Some(b) = b.filter(|b| b.skip) {
                    v.push(Layer {
                        name: format!("blocks.{}.{}.add", b.stage, b.index),
                        kind: "activation",
                        op: Op::Add,
                        out,
                    });
                }
            }
            LayerRole::Head => v.push(Layer {
                name: "global_pool".into(),
                kind: "pool",
                op: Op::Pool,
                out: (batch, 1, 1, out.3),
            }),
            LayerRole::Classifier => v.push(Layer {
                name: "loss".into(),
                kind: "loss",
                op: Op::Loss { classes: out.3 },
                out,
            }),
            _ => {}
        }
    }
    Ok(v)
}

/// The MBConv blocks of `arch` at `res`, batch `batch`, as the IPU block's
/// [`BlockSpec`]s named `blocks.{stage}.{index}` (`None` for BatchNorm networks: their
/// statistics span the batch, which the one-image-per-tile block placement does not
/// model). TF-`SAME` padding is not modelled by the block program and is an error.
pub fn blocks(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
) -> Result<Option<Vec<(String, BlockSpec)>>> {
    let norm = match arch.norm {
        NormKind::BatchNorm => return Ok(None),
        NormKind::GroupNorm { groups } => BlockNorm::Gn(groups),
        NormKind::LayerNormProxy => BlockNorm::LnPn,
    };
    if arch.padding == PaddingMode::TfSame {
        return Err(Error::InvalidArgument(format!(
            "{}: the IPU block program models symmetric padding only",
            arch.name
        )));
    }
    let convs = arch.conv_layers(batch, res);
    let mut v = Vec::new();
    for b in arch.blocks() {
        let prefix = format!("blocks.{}.{}", b.stage, b.index);
        let dw = convs
            .iter()
            .find(|l| l.name == format!("{prefix}.conv_dw"))
            .ok_or_else(|| Error::InvalidArgument(format!("{prefix}: no spatial conv")))?;
        v.push((
            prefix,
            BlockSpec {
                batch,
                h: dw.desc.in_h,
                w: dw.desc.in_w,
                cin: b.in_ch,
                cout: b.out_ch,
                expand: b.mid_ch / b.in_ch,
                kernel: b.kernel,
                stride: b.stride,
                group_size: b.group_size,
                se: b.se_ch,
                norm,
            },
        ));
    }
    Ok(Some(v))
}

/// One line of the report (every cycle figure **estimated**).
#[derive(Clone, Debug)]
pub struct ReportLine {
    /// Layer name.
    pub layer: String,
    /// Kind.
    pub kind: &'static str,
    /// `fwd` or `bwd`.
    pub pass: &'static str,
    /// The estimated cost.
    pub cost: Cost,
}

/// The whole report.
#[derive(Clone, Debug)]
pub struct Report {
    /// Per layer and pass.
    pub lines: Vec<ReportLine>,
    /// Estimated inference images per second on one IPU.
    pub inference_img_per_s: f64,
    /// Estimated training images per second on one IPU (forward + backward + update).
    pub training_img_per_s: f64,
    /// Estimated tile-cycles per useful FLOP of the forward spatial (depthwise /
    /// grouped) convolutions: (cycles × tiles of the target) / FLOPs. The AMP peak is
    /// 1 / (2 · AMP MACs per cycle), e.g. 0.0078 at fp16 on Mk2.
    pub spatial_cycles_per_flop: f64,
    /// Estimated cycles of the forward spatial convolutions.
    pub spatial_cycles: u64,
    /// Their FLOPs.
    pub spatial_flops: f64,
    /// FLOPs of one forward pass of the batch.
    pub forward_flops: f64,
}

fn saved_bytes(layers: &[Layer], eb: usize) -> usize {
    layers
        .iter()
        .map(|l| l.out.0 * l.out.1 * l.out.2 * l.out.3 * eb)
        .sum()
}

fn weight_elems(layers: &[Layer]) -> usize {
    layers
        .iter()
        .map(|l| match &l.op {
            Op::Conv(s) => s.w_len,
            Op::Se { reduced } => 2 * reduced * l.out.3,
            Op::Norm(_) => 4 * l.out.3,
            _ => 0,
        })
        .sum()
}

impl Planner {
    /// Estimated cycles to gather `elems` elements onto one tile.
    pub fn exchange_for(&self, elems: usize) -> u64 {
        (elems as f64 * self.precision.bytes() as f64 / self.target.exchange_bytes_per_cycle).ceil()
            as u64
            + self.target.exchange_overhead_cycles
    }
}

fn plan_lines(layers: &[Layer], pl: &Planner, passes: &[Pass]) -> Result<Vec<ReportLine>> {
    let mut lines = Vec::new();
    for &pass in passes {
        // Blocks of the latest convolution's forward split: (images, pixels, channels)
        // on the busiest tile, (row parts, channel parts), tiles.
        let mut blocks = ((1, 1, 1), (1, 1), 1usize);
        for l in layers {
            let (n, h, w, c) = l.out;
            let cost = match &l.op {
                Op::Conv(s) => {
                    let (sp, cost) = pl.plan_conv(s, pass)?;
                    let (fsp, _) = if pass == Pass::Fwd {
                        (sp, cost)
                    } else {
                        pl.plan_conv(s, Pass::Fwd)?
                    };
                    let (pc, nb, rows) = (fsp.pc, n.div_ceil(fsp.pn), s.out_h.div_ceil(fsp.ph));
                    blocks = (
                        (nb, rows * s.out_w, c.div_ceil(pc)),
                        (fsp.ph, pc),
                        fsp.tiles() / fsp.pci,
                    );
                    cost
                }
                Op::Norm(ns) => {
                    let cg = ns.cg.max(1);
                    let groups_ok = c % cg == 0;
                    if !groups_ok {
                        return Err(Error::InvalidArgument(format!(
                            "{}: {cg} does not divide {c}",
                            l.name
                        )));
                    }
                    pl.norm_cost(
                        blocks.0,
                        blocks.1,
                        blocks.2,
                        n,
                        c,
                        cg,
                        ns.per_sample,
                        ns.act,
                        ns.proxy,
                        pass,
                    )?
                }
                Op::Se { reduced } => {
                    pl.se_cost(blocks.0, blocks.1, blocks.2, n, c, *reduced, pass)?
                }
                Op::Add => pl.add_cost(blocks.0.0 * blocks.0.1 * blocks.0.2, blocks.2, pass)?,
                Op::Pool => {
                    let mut c = pl.se_cost(blocks.0, blocks.1, blocks.2, n, c, 1, pass)?;
                    c.flops = (n * h * w * c.tiles.min(1)) as f64;
                    c
                }
                Op::Loss { classes } => {
                    // One image per tile.
                    let cyc = super::codelets::Codelet::softmax_xent(1, *classes)
                        .estimate(&pl.target, pl.precision)?
                        .cycles;
                    Cost {
                        tiles: n,
                        max_tile_bytes: 3 * classes * pl.precision.bytes() + pl.reserved_bytes,
                        compute_cycles: if pass == Pass::Fwd { cyc } else { 0 },
                        exchange_cycles: if pass == Pass::Fwd {
                            pl.exchange_for(*classes)
                        } else {
                            0
                        },
                        sync_cycles: if pass == Pass::Fwd {
                            2 * pl.target.sync_cycles
                        } else {
                            0
                        },
                        flops: (5 * n * classes) as f64,
                    }
                }
            };
            lines.push(ReportLine {
                layer: l.name.clone(),
                kind: l.kind,
                pass: pass.name(),
                cost,
            });
        }
    }
    Ok(lines)
}

/// Training memory reserved on every tile before any layer's own tensors: the
/// activations saved for the backward pass, weights, their gradients and one optimizer
/// state, all spread evenly — or the [`Error::TileMemory`] naming them when even that
/// cannot fit.
fn train_reserved(ls: &[Layer], target: &Target, precision: Precision) -> Result<usize> {
    let eb = precision.bytes();
    let weights = weight_elems(ls) * eb;
    let per_tile = |b: usize| b.div_ceil(target.tiles);
    let reserved = per_tile(saved_bytes(ls, eb)) + per_tile(3 * weights);
    let budget = target.budget_bytes();
    if reserved > budget {
        return Err(Error::TileMemory {
            tile: 0,
            bytes: reserved,
            budget,
            tensors: vec![
                (
                    "saved activations (spread over all tiles)".into(),
                    per_tile(saved_bytes(ls, eb)),
                ),
                (
                    "weights, gradients, optimizer state (spread)".into(),
                    per_tile(3 * weights),
                ),
            ],
        });
    }
    Ok(reserved)
}

/// The estimated report of `arch` from the planner's per-layer plans
/// (`effnet ipu report --layers`): every layer planned on its own for training (forward +
/// backward, with the saved activations, weights, gradients and optimizer state spread
/// evenly and reserved on every tile) and for inference (weights reserved); exchange
/// is each layer's own input gather. Compare [`report`], which builds the whole step
/// as one graph.
pub fn report_planned(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    precision: Precision,
) -> Result<Report> {
    target.validate()?;
    let ls = layers(arch, res, batch)?;
    let mut pl = Planner {
        target: target.clone(),
        precision,
        reserved_bytes: train_reserved(&ls, target, precision)?,
    };
    let lines = plan_lines(&ls, &pl, &[Pass::Fwd, Pass::Bwd])?;
    pl.reserved_bytes = (weight_elems(&ls) * precision.bytes()).div_ceil(target.tiles);
    let infer = plan_lines(&ls, &pl, &[Pass::Fwd])?;
    Ok(summarize(&ls, lines, &infer, batch, target))
}

/// The estimated report of `arch`: the whole training step built as one program by
/// [`super::chain::build`] (every layer split by the planner, sizes and tile mappings
/// only, no tensor data) and profiled — per layer and pass its tiles, the peak live
/// bytes on its busiest tile (everything resident then: saved activations, weights,
/// the layer's own tensors) and its cycles; the inference figures from the forward
/// program alone. One IPU, no pipeline or replicas: the system of
/// `effnet ipu report` is [`crate::ipu::system::system_report`]. A first check names the
/// saved activations when even an even spread of them (plus weights, gradients and
/// optimizer state) cannot fit; [`report_planned`] gives the per-layer planner's
/// figures.
pub fn report(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    precision: Precision,
) -> Result<Report> {
    target.validate()?;
    let ls = layers(arch, res, batch)?;
    train_reserved(&ls, target, precision)?;
    // The whole training step built as one graph (sizes and mappings only, no tensor
    // data) and profiled: per-layer memory from the actual tile mapping with every
    // tensor live from its first to its last use (saved activations stay resident
    // from the forward to the backward pass).
    let ch = super::chain::build(arch, res, batch, target, precision)?;
    let train = ch.profile()?;
    let infer_profile = ch.graph.profile(&ch.fwd)?;
    let lines_of = |p: &super::graph::Profile, fwd_only: bool| -> Vec<ReportLine> {
        ch.graph
            .layers
            .iter()
            .zip(&p.layers)
            .filter(|(i, lp)| {
                lp.tiles_used > 0 && i.name != "input" && (!fwd_only || i.pass == "fwd")
            })
            .map(|(i, lp)| ReportLine {
                layer: i.name.clone(),
                kind: i.kind,
                pass: i.pass,
                cost: Cost {
                    tiles: lp.tiles_used,
                    max_tile_bytes: lp.max_tile_bytes,
                    compute_cycles: lp.compute_cycles,
                    exchange_cycles: lp.exchange_cycles,
                    sync_cycles: lp.sync_cycles,
                    flops: i.flops,
                },
            })
            .collect()
    };
    let lines = lines_of(&train, false);
    let infer = lines_of(&infer_profile, true);
    Ok(summarize(&ls, lines, &infer, batch, target))
}

/// Totals of a report: training and inference images per second from the summed
/// per-layer cycles, and the spatial convolutions' cycles per FLOP.
fn summarize(
    ls: &[Layer],
    lines: Vec<ReportLine>,
    infer: &[ReportLine],
    batch: usize,
    target: &Target,
) -> Report {
    let sum = |ls: &[ReportLine]| ls.iter().map(|l| l.cost.total()).sum::<u64>();
    let train_cycles = sum(&lines);
    let infer_cycles = sum(infer);
    let hz = target.clock_hz;
    let spatial: Vec<&ReportLine> = infer
        .iter()
        .filter(|l| matches!(l.kind, "depthwise" | "grouped"))
        .collect();
    let spatial_cycles: u64 = spatial.iter().map(|l| l.cost.total()).sum();
    let spatial_flops: f64 = spatial.iter().map(|l| l.cost.flops).sum();
    let forward_flops = ls
        .iter()
        .map(|l| {
            if let Op::Conv(s) = &l.op {
                s.flops()
            } else {
                0.0
            }
        })
        .sum();
    Report {
        lines,
        inference_img_per_s: batch as f64 * hz / infer_cycles.max(1) as f64,
        training_img_per_s: batch as f64 * hz / train_cycles.max(1) as f64,
        spatial_cycles_per_flop: spatial_cycles as f64 * target.tiles as f64
            / spatial_flops.max(1.0),
        spatial_cycles,
        spatial_flops,
        forward_flops,
    }
}
