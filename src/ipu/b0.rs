//! EfficientNet-B0 and its G16 / GN / LN+PN variants as a list of layers, planned on
//! the IPU model: the per-layer **estimated** report and the images per second.

use super::block::{BlockNorm, BlockSpec};
use super::planner::{Cost, Pass, Planner};
use super::target::{Precision, Target};
use crate::error::{Error, Result};
use crate::kernels::conv::{ConvDesc, ConvShape, Padding};

/// The architectures the model knows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// timm `efficientnet_b0`: depthwise, expansion 6, BatchNorm + swish.
    EfficientNetB0,
    /// Depthwise (G1), expansion 6, GroupNorm (4 groups) + swish.
    B0G1Gn,
    /// Group convolutions of 16 channels, expansion 4, GroupNorm (4 groups) + swish.
    B0G16Gn,
    /// G16, expansion 4, LayerNorm + Proxy Norm swish.
    B0G16LnPn,
}

impl Arch {
    /// By name: `efficientnet_b0`, `b0_g1_gn`, `b0_g16_gn`, `b0_g16_lnpn`.
    pub fn by_name(s: &str) -> Result<Arch> {
        Ok(match s {
            "efficientnet_b0" => Arch::EfficientNetB0,
            "b0_g1_gn" => Arch::B0G1Gn,
            "b0_g16_gn" => Arch::B0G16Gn,
            "b0_g16_lnpn" => Arch::B0G16LnPn,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown architecture {s:?} (efficientnet_b0, b0_g1_gn, b0_g16_gn, b0_g16_lnpn)"
                )));
            }
        })
    }
    fn g16(self) -> bool {
        matches!(self, Arch::B0G16Gn | Arch::B0G16LnPn)
    }
}

/// The normalization after a convolution.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NormSpec {
    /// Channels per group (`C/4` for GN with 4 groups, `C` for LN, 1 for BN).
    pub cg: usize,
    /// Per image (GN/LN) or over the batch (BN).
    pub per_sample: bool,
    /// Activation after it (0 none, 1 swish).
    pub act: u32,
    /// Proxy Norm.
    pub proxy: bool,
}

/// One layer of the network.
#[derive(Clone, Debug)]
pub enum Op {
    /// A convolution (`kind`: stem, pointwise, depthwise, grouped, fc).
    Conv(ConvShape),
    /// Normalization (+ activation) of the preceding convolution's output.
    Norm(NormSpec),
    /// Squeeze-excitation on the preceding layer's output, `reduced` inner channels.
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
    /// timm-style name.
    pub name: String,
    /// Report kind.
    pub kind: &'static str,
    /// What it does.
    pub op: Op,
    /// Activation shape after it: (batch, h, w, c).
    pub out: (usize, usize, usize, usize),
}

/// The layers of `arch` at `res`×`res`, batch `batch` (PyTorch-symmetric padding).
pub fn layers(arch: Arch, res: usize, batch: usize) -> Result<Vec<Layer>> {
    if res < 32 || batch == 0 {
        return Err(Error::InvalidArgument(
            "--res must be at least 32 and --batch at least 1".into(),
        ));
    }
    let norm = |c: usize, act: u32, project: bool| -> NormSpec {
        match arch {
            Arch::EfficientNetB0 => NormSpec {
                cg: 1,
                per_sample: false,
                act,
                proxy: false,
            },
            Arch::B0G1Gn | Arch::B0G16Gn => NormSpec {
                cg: c / 4,
                per_sample: true,
                act,
                proxy: false,
            },
            Arch::B0G16LnPn => NormSpec {
                cg: c,
                per_sample: true,
                act,
                proxy: act == 1 && !project,
            },
        }
    };
    let mut v = Vec::new();
    let conv = |v: &mut Vec<Layer>,
                name: String,
                kind: &'static str,
                d: ConvDesc|
     -> Result<(usize, usize)> {
        let s = d.validate()?;
        v.push(Layer {
            name,
            kind,
            op: Op::Conv(s),
            out: (batch, s.out_h, s.out_w, d.out_channels),
        });
        Ok((s.out_h, s.out_w))
    };
    let push = |v: &mut Vec<Layer>, name: String, kind: &'static str, op: Op| {
        let out = v
            .last()
            .map(|l: &Layer| l.out)
            .unwrap_or((batch, res, res, 3));
        v.push(Layer {
            name,
            kind,
            op,
            out,
        });
    };
    let (mut h, mut w) = conv(
        &mut v,
        "conv_stem".into(),
        "stem",
        ConvDesc::new(batch, (res, res), 3, 32, (3, 3))
            .with_stride(2)
            .with_padding(Padding::symmetric(1)),
    )?;
    push(&mut v, "bn1".into(), "norm", Op::Norm(norm(32, 1, false)));
    let stages = [
        (3, 1, 1, 16, 1),
        (3, 2, 6, 24, 2),
        (5, 2, 6, 40, 2),
        (3, 2, 6, 80, 3),
        (5, 1, 6, 112, 3),
        (5, 2, 6, 192, 4),
        (3, 1, 6, 320, 1),
    ];
    let mut cin = 32;
    for (si, &(k, stride, e, cout, reps)) in stages.iter().enumerate() {
        let e = if arch.g16() && e == 6 { 4 } else { e };
        for r in 0..reps {
            let st = if r == 0 { stride } else { 1 };
            let p = format!("blocks.{si}.{r}");
            let mid = cin * e;
            if e != 1 {
                conv(
                    &mut v,
                    format!("{p}.conv_pw"),
                    "pointwise",
                    ConvDesc::pointwise(batch, (h, w), cin, mid),
                )?;
                push(
                    &mut v,
                    format!("{p}.bn1"),
                    "norm",
                    Op::Norm(norm(mid, 1, false)),
                );
            }
            let gs = if arch.g16() {
                mid / (mid / 16).max(1)
            } else {
                1
            };
            let kind = if gs == 1 { "depthwise" } else { "grouped" };
            let d = ConvDesc::new(batch, (h, w), mid, mid, (k, k))
                .with_group_size(gs)
                .with_stride(st)
                .with_padding(Padding::symmetric(k / 2));
            (h, w) = conv(&mut v, format!("{p}.conv_dw"), kind, d)?;
            push(
                &mut v,
                format!("{p}.bn2"),
                "norm",
                Op::Norm(norm(mid, 1, false)),
            );
            push(
                &mut v,
                format!("{p}.se"),
                "se",
                Op::Se {
                    reduced: (cin / 4).max(1),
                },
            );
            conv(
                &mut v,
                format!("{p}.conv_pwl"),
                "pointwise",
                ConvDesc::pointwise(batch, (h, w), mid, cout),
            )?;
            push(
                &mut v,
                format!("{p}.bn3"),
                "norm",
                Op::Norm(norm(cout, 0, true)),
            );
            if st == 1 && cin == cout {
                push(&mut v, format!("{p}.add"), "activation", Op::Add);
            }
            cin = cout;
        }
    }
    conv(
        &mut v,
        "conv_head".into(),
        "pointwise",
        ConvDesc::pointwise(batch, (h, w), cin, 1280),
    )?;
    push(&mut v, "bn2".into(), "norm", Op::Norm(norm(1280, 1, false)));
    push(&mut v, "global_pool".into(), "pool", Op::Pool);
    v.last_mut().expect("layers").out = (batch, 1, 1, 1280);
    conv(
        &mut v,
        "classifier".into(),
        "fc",
        ConvDesc::pointwise(batch, (1, 1), 1280, 1000),
    )?;
    push(&mut v, "loss".into(), "loss", Op::Loss { classes: 1000 });
    Ok(v)
}

/// The MBConv blocks of `arch` at `res`, batch `batch`, as [`BlockSpec`]s (`None`
/// for the BatchNorm architecture: its statistics span the batch, which the
/// one-image-per-tile block placement does not model).
pub fn blocks(arch: Arch, res: usize, batch: usize) -> Result<Option<Vec<(String, BlockSpec)>>> {
    let norm = match arch {
        Arch::EfficientNetB0 => return Ok(None),
        Arch::B0G1Gn | Arch::B0G16Gn => BlockNorm::Gn(4),
        Arch::B0G16LnPn => BlockNorm::LnPn,
    };
    let ls = layers(arch, res, batch)?;
    let mut v = Vec::new();
    for (i, l) in ls.iter().enumerate() {
        let (Op::Conv(s), true) = (&l.op, l.name.ends_with("conv_dw")) else {
            continue;
        };
        let prefix = l.name.trim_end_matches(".conv_dw");
        let d = s.desc;
        let expand = ls[..i]
            .iter()
            .rev()
            .take(2)
            .find(|p| p.name == format!("{prefix}.conv_pw"));
        let (cin, h, w) = match expand {
            Some(p) => match &p.op {
                Op::Conv(ps) => (ps.desc.in_channels, ps.desc.in_h, ps.desc.in_w),
                _ => unreachable!(),
            },
            None => (d.in_channels, d.in_h, d.in_w),
        };
        let cout = ls[i..]
            .iter()
            .find_map(|p| match (&p.op, p.name == format!("{prefix}.conv_pwl")) {
                (Op::Conv(ps), true) => Some(ps.desc.out_channels),
                _ => None,
            })
            .expect("projection");
        let se = ls[i..]
            .iter()
            .find_map(|p| match &p.op {
                Op::Se { reduced } => Some(*reduced),
                _ => None,
            })
            .expect("se");
        v.push((
            prefix.to_string(),
            BlockSpec {
                batch,
                h,
                w,
                cin,
                cout,
                expand: d.in_channels / cin,
                kernel: d.kernel_h,
                stride: d.stride_h,
                group_size: d.group_size,
                se,
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

impl Planner {
    /// Estimated cycles to gather `elems` elements onto one tile.
    pub fn exchange_for(&self, elems: usize) -> u64 {
        (elems as f64 * self.precision.bytes() as f64 / self.target.exchange_bytes_per_cycle).ceil()
            as u64
            + self.target.exchange_overhead_cycles
    }
}

/// Plans every layer of `arch` for training (forward + backward, saved activations and
/// weights, gradients and optimizer state reserved on every tile) and for inference
/// (weights reserved), and sums the estimates.
pub fn report(
    arch: Arch,
    res: usize,
    batch: usize,
    target: &Target,
    precision: Precision,
) -> Result<Report> {
    target.validate()?;
    let ls = layers(arch, res, batch)?;
    let eb = precision.bytes();
    let weights = weight_elems(&ls) * eb;
    let per_tile = |b: usize| b.div_ceil(target.tiles);
    // Training: activations saved for the backward pass, weights, their gradients and
    // one optimizer state, all spread evenly.
    let train_reserved = per_tile(saved_bytes(&ls, eb)) + per_tile(3 * weights);
    let budget = target.budget_bytes();
    if train_reserved > budget {
        return Err(Error::TileMemory {
            tile: 0,
            bytes: train_reserved,
            budget,
            tensors: vec![
                (
                    "saved activations (spread over all tiles)".into(),
                    per_tile(saved_bytes(&ls, eb)),
                ),
                (
                    "weights, gradients, optimizer state (spread)".into(),
                    per_tile(3 * weights),
                ),
            ],
        });
    }
    let mut pl = Planner {
        target: target.clone(),
        precision,
        reserved_bytes: train_reserved,
    };
    let lines = plan_lines(&ls, &pl, &[Pass::Fwd, Pass::Bwd])?;
    pl.reserved_bytes = per_tile(weights);
    let infer = plan_lines(&ls, &pl, &[Pass::Fwd])?;
    let sum = |ls: &[ReportLine]| ls.iter().map(|l| l.cost.total()).sum::<u64>();
    let train_cycles = sum(&lines);
    let infer_cycles = sum(&infer);
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
    Ok(Report {
        lines,
        inference_img_per_s: batch as f64 * hz / infer_cycles.max(1) as f64,
        training_img_per_s: batch as f64 * hz / train_cycles.max(1) as f64,
        spatial_cycles_per_flop: spatial_cycles as f64 * target.tiles as f64
            / spatial_flops.max(1.0),
        spatial_cycles,
        spatial_flops,
        forward_flops,
    })
}
