//! EfficientNet architectures as data: B0–B7 scaling, the paper's G16 and Proxy Norm
//! variants, and the layer list with parameter and multiply-accumulate counts.
//!
//! This module only describes networks (no arithmetic on tensors), so both the model
//! layer and the IPU execution model can build on it.
//!
//! Names understood by [`ArchConfig::from_name`]:
//! - `efficientnet_b0` … `efficientnet_b7`: timm's, BatchNorm (ε 1e-5), symmetric padding;
//! - `tf_efficientnet_b0` … `tf_efficientnet_b7`: BatchNorm ε 1e-3, TensorFlow `SAME`;
//! - `b<k>_<g1|g16>_<bn|gn|lnpn>` (e.g. `b0_g16_lnpn`): the paper's variants, symmetric
//!   padding unless changed with [`ArchConfig::with_padding`];
//! - `efficientnet_tiny`, `tf_efficientnet_tiny`, `tiny_<g1|g16>_<bn|gn|lnpn>`: a
//!   quarter-width, quarter-depth network (native resolution 64) for tests and fixtures.
//!
//! ```
//! use effnet::arch::ArchConfig;
//! let b0 = ArchConfig::from_name("efficientnet_b0").unwrap();
//! let c = b0.counts(224);
//! assert_eq!(c.params, 5_288_548);
//! ```

use crate::error::{Error, Result};
use crate::kernels::conv::{ConvDesc, Padding};

/// How the spatial (k×k) convolution of each block is grouped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SpatialConv {
    /// Depthwise (one channel per group), expansion ratio 6: stock EfficientNet.
    G1,
    /// 16 channels per group, expansion ratio 4 (stage 1 keeps 1): "G16-EfficientNet".
    G16,
}

/// The normalization (and activation placement) of the network.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// BatchNorm with affine, then swish.
    BatchNorm,
    /// GroupNorm with `groups` groups (the paper's baseline uses 4) with affine.
    GroupNorm {
        /// Number of channel groups.
        groups: usize,
    },
    /// LayerNorm without affine followed by a proxy-normalized swish (full scale after
    /// the stem and expansion, delayed scale after the spatial conv, γ-only LN on the
    /// projection, no scale in the head).
    LayerNormProxy,
}

/// Padding convention of the spatial convolutions.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PaddingMode {
    /// PyTorch-symmetric `k/2` (timm `efficientnet_*`).
    Symmetric,
    /// TensorFlow `SAME`, odd pixel bottom/right (timm `tf_efficientnet_*`).
    TfSame,
}

/// Width, depth, resolution and dropout of B0–B7 (DESIGN.md's table).
const SCALING: [(f64, f64, usize, f64); 8] = [
    (1.0, 1.0, 224, 0.2),
    (1.0, 1.1, 240, 0.2),
    (1.1, 1.2, 260, 0.3),
    (1.2, 1.4, 300, 0.3),
    (1.4, 1.8, 380, 0.4),
    (1.6, 2.2, 456, 0.4),
    (1.8, 2.6, 528, 0.5),
    (2.0, 3.1, 600, 0.5),
];

/// Width, depth, resolution and dropout of the `tiny` test scale (not in the paper: a
/// quarter-width, one-block-per-stage network for tests and fixtures; timm builds the
/// same network with `channel_multiplier=0.25, depth_multiplier=0.25`).
const TINY: (f64, f64, usize, f64) = (0.25, 0.25, 64, 0.2);

/// The scale index of the `tiny` test network.
pub const TINY_SCALE: usize = 8;

/// The paper's half-resolution training sizes for B0–B5.
const HALF_RES: [Option<usize>; 8] = [
    Some(160),
    Some(176),
    Some(196),
    Some(204),
    Some(252),
    Some(328),
    None,
    None,
];

/// B0's stages: (kernel, stride, expansion, out channels, repeats).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
];

/// A complete network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchConfig {
    /// The name it was created from.
    pub name: String,
    /// Scale index 0–7 (B0–B7), or [`TINY_SCALE`].
    pub scale: usize,
    /// Width multiplier.
    pub width: f64,
    /// Depth multiplier.
    pub depth: f64,
    /// Native (test) resolution.
    pub native_res: usize,
    /// Dropout before the classifier.
    pub dropout: f64,
    /// Maximum drop-connect rate (block `i` of `n` uses `rate·i/n`).
    pub drop_connect: f64,
    /// Spatial convolution grouping.
    pub spatial: SpatialConv,
    /// Normalization.
    pub norm: NormKind,
    /// Normalization ε.
    pub norm_eps: f32,
    /// Padding convention.
    pub padding: PaddingMode,
    /// Classifier outputs.
    pub num_classes: usize,
}

/// One MBConv (or depthwise-separable, at expansion 1) block.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Stage index (0–6).
    pub stage: usize,
    /// Index within the stage.
    pub index: usize,
    /// Input channels.
    pub in_ch: usize,
    /// Channels after the expansion 1×1 (= `in_ch` when there is no expansion).
    pub mid_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Whether there is an expansion 1×1 conv (expansion ratio > 1).
    pub expand: bool,
    /// Spatial kernel size.
    pub kernel: usize,
    /// Spatial stride.
    pub stride: usize,
    /// Input channels per group of the spatial conv (1 = depthwise).
    pub group_size: usize,
    /// Squeeze-excite bottleneck width: `max(1, int(0.25·in_ch))`.
    pub se_ch: usize,
    /// Identity skip (stride 1 and `in_ch == out_ch`).
    pub skip: bool,
}

/// Parameter and multiply-accumulate counts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    /// Learnable parameters (norm statistics excluded).
    pub params: usize,
    /// Multiply-accumulates of one image's forward pass (convolutions and
    /// fully-connected layers; norms and activations excluded).
    pub macs: usize,
}

/// Rounds a channel count as EfficientNet does: to a multiple of 8, at least 8, and
/// never more than 10 % below `c·w`.
pub fn round_channels(c: usize, width: f64) -> usize {
    let scaled = c as f64 * width;
    let mut r = (((scaled + 4.0) as usize) / 8 * 8).max(8);
    if (r as f64) < 0.9 * scaled {
        r += 8;
    }
    r
}

/// Input channels per group of a G16 spatial conv over `c` channels: the paper's
/// `max(c // 16, 1)` groups, lowered to the nearest count that divides `c` when 16 does
/// not (only the B6/B7 stems, 56 and 64·1.8 channels wide, need that).
pub fn g16_group_size(c: usize) -> usize {
    let mut groups = (c / 16).max(1);
    while !c.is_multiple_of(groups) {
        groups -= 1;
    }
    c / groups
}

impl ArchConfig {
    /// Parses an architecture name (see the module docs).
    pub fn from_name(name: &str) -> Result<ArchConfig> {
        let bad = || {
            Error::InvalidArgument(format!(
                "unknown architecture {name:?}: expected efficientnet_b<0-7>, tf_efficientnet_b<0-7> \
                 or b<0-7>_<g1|g16>_<bn|gn|lnpn> (or tiny in place of b<k>)"
            ))
        };
        let scale_of = |s: &str| -> Result<usize> {
            if s == "tiny" {
                return Ok(TINY_SCALE);
            }
            let k = s.strip_prefix('b').ok_or_else(bad)?;
            let k: usize = k.parse().map_err(|_| bad())?;
            if k < 8 { Ok(k) } else { Err(bad()) }
        };
        let (scale, spatial, norm, eps, padding) =
            if let Some(rest) = name.strip_prefix("tf_efficientnet_") {
                (
                    scale_of(rest)?,
                    SpatialConv::G1,
                    NormKind::BatchNorm,
                    1e-3,
                    PaddingMode::TfSame,
                )
            } else if let Some(rest) = name.strip_prefix("efficientnet_") {
                (
                    scale_of(rest)?,
                    SpatialConv::G1,
                    NormKind::BatchNorm,
                    1e-5,
                    PaddingMode::Symmetric,
                )
            } else {
                let parts: Vec<&str> = name.split('_').collect();
                if parts.len() != 3 {
                    return Err(bad());
                }
                let spatial = match parts[1] {
                    "g1" => SpatialConv::G1,
                    "g16" => SpatialConv::G16,
                    _ => return Err(bad()),
                };
                let norm = match parts[2] {
                    "bn" => NormKind::BatchNorm,
                    "gn" => NormKind::GroupNorm { groups: 4 },
                    "lnpn" => NormKind::LayerNormProxy,
                    _ => return Err(bad()),
                };
                (
                    scale_of(parts[0])?,
                    spatial,
                    norm,
                    1e-3,
                    PaddingMode::Symmetric,
                )
            };
        let (width, depth, native_res, dropout) = SCALING.get(scale).copied().unwrap_or(TINY);
        Ok(ArchConfig {
            name: name.to_string(),
            scale,
            width,
            depth,
            native_res,
            dropout,
            drop_connect: 0.2,
            spatial,
            norm,
            norm_eps: eps,
            padding,
            num_classes: 1000,
        })
    }

    /// The same network with another padding convention.
    pub fn with_padding(mut self, padding: PaddingMode) -> Self {
        self.padding = padding;
        self
    }

    /// The same network with another number of classes.
    pub fn with_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// The paper's reduced training resolution, if it gives one for this scale.
    pub fn half_res(&self) -> Option<usize> {
        HALF_RES.get(self.scale).copied().flatten()
    }

    /// Stem output channels.
    pub fn stem_channels(&self) -> usize {
        round_channels(32, self.width)
    }

    /// Head (final 1×1) output channels.
    pub fn head_channels(&self) -> usize {
        round_channels(1280, self.width)
    }

    /// Every block in order.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        let mut in_ch = self.stem_channels();
        for (stage, &(k, s, e, c, r)) in STAGES.iter().enumerate() {
            let e = match self.spatial {
                SpatialConv::G16 if e > 1 => 4,
                _ => e,
            };
            let out_ch = round_channels(c, self.width);
            let repeats = (self.depth * r as f64).ceil() as usize;
            for index in 0..repeats {
                let stride = if index == 0 { s } else { 1 };
                let mid_ch = in_ch * e;
                let group_size = match self.spatial {
                    SpatialConv::G1 => 1,
                    SpatialConv::G16 => g16_group_size(mid_ch),
                };
                out.push(BlockSpec {
                    stage,
                    index,
                    in_ch,
                    mid_ch,
                    out_ch,
                    expand: e > 1,
                    kernel: k,
                    stride,
                    group_size,
                    se_ch: ((in_ch as f64 * 0.25) as usize).max(1),
                    skip: stride == 1 && in_ch == out_ch,
                });
                in_ch = out_ch;
            }
        }
        out
    }

    /// Learnable parameters of one normalization over `c` channels. `projection` marks
    /// the norm after a block's projection conv (γ-only LayerNorm under Proxy Norm);
    /// `proxy` marks a norm followed by a proxy-normalized activation (γ, β, β′, γ′).
    fn norm_params(&self, c: usize, projection: bool) -> usize {
        match self.norm {
            NormKind::BatchNorm | NormKind::GroupNorm { .. } => 2 * c,
            NormKind::LayerNormProxy if projection => c,
            NormKind::LayerNormProxy => 4 * c,
        }
    }

    /// The convolution of a `k`×`k` layer on a `res`×`res` input under this network's
    /// padding convention.
    pub fn conv_desc(
        &self,
        batch: usize,
        res: usize,
        (c_in, c_out): (usize, usize),
        kernel: usize,
        stride: usize,
        group_size: usize,
    ) -> ConvDesc {
        let d = ConvDesc::new(batch, (res, res), c_in, c_out, (kernel, kernel))
            .with_group_size(group_size)
            .with_stride(stride);
        match self.padding {
            PaddingMode::Symmetric => d.with_padding(Padding::symmetric(kernel / 2)),
            PaddingMode::TfSame => d.with_tf_same_padding(),
        }
    }

    /// Every convolution and fully-connected layer of one forward pass at input
    /// resolution `res`, in order, named as in timm's state dicts. Squeeze-excite and
    /// classifier layers are 1×1 convolutions on a 1×1 input.
    pub fn conv_layers(&self, batch: usize, res: usize) -> Vec<LayerInfo> {
        let mut v = Vec::new();
        let mut push = |name: String, desc: ConvDesc, role: LayerRole, norm: Option<String>| {
            v.push(LayerInfo {
                name,
                desc,
                role,
                norm,
            })
        };
        let stem = self.conv_desc(batch, res, (3, self.stem_channels()), 3, 2, 3);
        let mut hw = stem.validate().map(|s| s.out_h).unwrap_or(1);
        push(
            "conv_stem".into(),
            stem,
            LayerRole::Stem,
            Some("bn1".into()),
        );
        for b in self.blocks() {
            let p = format!("blocks.{}.{}", b.stage, b.index);
            // timm: InvertedResidual = conv_pw/bn1, conv_dw/bn2, se, conv_pwl/bn3;
            // DepthwiseSeparableConv (no expansion) = conv_dw/bn1, se, conv_pw/bn2.
            let (dw_bn, proj, proj_bn) = if b.expand {
                push(
                    format!("{p}.conv_pw"),
                    ConvDesc::pointwise(batch, (hw, hw), b.in_ch, b.mid_ch),
                    LayerRole::Expand,
                    Some(format!("{p}.bn1")),
                );
                ("bn2", "conv_pwl", "bn3")
            } else {
                ("bn1", "conv_pw", "bn2")
            };
            let dw = self.conv_desc(
                batch,
                hw,
                (b.mid_ch, b.mid_ch),
                b.kernel,
                b.stride,
                b.group_size,
            );
            hw = dw.validate().map(|s| s.out_h).unwrap_or(1);
            push(
                format!("{p}.conv_dw"),
                dw,
                LayerRole::Spatial,
                Some(format!("{p}.{dw_bn}")),
            );
            push(
                format!("{p}.se.conv_reduce"),
                ConvDesc::pointwise(batch, (1, 1), b.mid_ch, b.se_ch),
                LayerRole::SeReduce,
                None,
            );
            push(
                format!("{p}.se.conv_expand"),
                ConvDesc::pointwise(batch, (1, 1), b.se_ch, b.mid_ch),
                LayerRole::SeExpand,
                None,
            );
            push(
                format!("{p}.{proj}"),
                ConvDesc::pointwise(batch, (hw, hw), b.mid_ch, b.out_ch),
                LayerRole::Project,
                Some(format!("{p}.{proj_bn}")),
            );
        }
        let last = self.blocks().last().map(|b| b.out_ch).unwrap_or(0);
        push(
            "conv_head".into(),
            ConvDesc::pointwise(batch, (hw, hw), last, self.head_channels()),
            LayerRole::Head,
            Some("bn2".into()),
        );
        push(
            "classifier".into(),
            ConvDesc::pointwise(batch, (1, 1), self.head_channels(), self.num_classes),
            LayerRole::Classifier,
            None,
        );
        v
    }

    /// Parameter and MAC counts at input resolution `res`.
    pub fn counts(&self, res: usize) -> Counts {
        let mut params = 0;
        let mut macs = 0;
        for l in self.conv_layers(1, res) {
            let d = l.desc;
            let Ok(s) = d.validate() else { continue };
            params += s.w_len;
            macs += s.y_len * d.group_size * d.kernel_h * d.kernel_w;
            if l.role.has_bias() {
                params += d.out_channels;
            }
            if l.norm.is_some() {
                params += self.norm_params(d.out_channels, l.role == LayerRole::Project);
            }
        }
        Counts { params, macs }
    }
}

/// What a layer does in the network.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum LayerRole {
    /// The 3×3 stride-2 stem convolution.
    Stem,
    /// A block's expansion 1×1.
    Expand,
    /// A block's depthwise or grouped k×k.
    Spatial,
    /// Squeeze-excite reduction (with bias).
    SeReduce,
    /// Squeeze-excite expansion (with bias).
    SeExpand,
    /// A block's projection 1×1 (norm, no activation).
    Project,
    /// The final 1×1 before pooling.
    Head,
    /// The fully-connected classifier (with bias).
    Classifier,
}

impl LayerRole {
    /// Whether the layer has a bias (SE convs and the classifier).
    pub fn has_bias(self) -> bool {
        matches!(
            self,
            LayerRole::SeReduce | LayerRole::SeExpand | LayerRole::Classifier
        )
    }
}

/// One convolution or fully-connected layer of a network.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    /// timm parameter prefix (`conv_stem`, `blocks.1.0.conv_dw`, `classifier`, …).
    pub name: String,
    /// The convolution (fully-connected layers as 1×1 on a 1×1 input).
    pub desc: ConvDesc,
    /// What the layer does.
    pub role: LayerRole,
    /// timm prefix of the norm that follows it (`bn1`, `blocks.0.0.bn2`, …), if any.
    pub norm: Option<String>,
}
