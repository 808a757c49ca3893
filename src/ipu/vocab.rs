//! The shared vocabulary of the IPU model: what a network *is* to the graph builders
//! (the chain steps, the norm after a convolution, an MBConv block), in a module of
//! its own so that the builders ([`super::chain`], [`super::block`]), the layer list
//! and report ([`super::network`]) and the oracles ([`super::reference`]) all depend
//! on it and not on one another.

pub use super::codelets::ProxyScale;
use crate::arch::{ArchConfig, LayerRole, NormKind};
use crate::error::{Error, Result};
use crate::kernels::conv::ConvShape;

/// The normalization after a convolution.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NormSpec {
    /// Channels per group (`C/groups` for GN, `C` for LN, 1 for BN).
    pub cg: usize,
    /// Per image (GN/LN) or over the batch (BN).
    pub per_sample: bool,
    /// Activation after it (0 none, 1 swish).
    pub act: u32,
    /// Proxy Norm (a proxy-normalized swish after an LN without affine).
    pub proxy: bool,
    /// Where the proxy scale goes (meaningful when `proxy`).
    pub scale: ProxyScale,
    /// Whether the norm has a shift β (false for the γ-only LN of the projection
    /// under Proxy Norm).
    pub beta: bool,
}

impl NormSpec {
    /// The norm of `arch` over `c` channels after a layer of role `role`.
    pub fn of(arch: &ArchConfig, role: LayerRole, c: usize) -> NormSpec {
        let project = role == LayerRole::Project;
        let act = if project { 0 } else { 1 };
        match arch.norm {
            NormKind::BatchNorm => NormSpec {
                cg: 1,
                per_sample: false,
                act,
                proxy: false,
                scale: ProxyScale::Full,
                beta: true,
            },
            NormKind::GroupNorm { groups } => NormSpec {
                cg: c / groups.max(1),
                per_sample: true,
                act,
                proxy: false,
                scale: ProxyScale::Full,
                beta: true,
            },
            NormKind::LayerNormProxy => NormSpec {
                cg: c,
                per_sample: true,
                act,
                proxy: !project,
                scale: match role {
                    LayerRole::Spatial => ProxyScale::Delayed,
                    LayerRole::Head => ProxyScale::None,
                    _ => ProxyScale::Full,
                },
                beta: !project,
            },
        }
    }
}

/// One step of a chain.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a few dozen steps per network, built once
pub enum Step {
    /// A convolution and the norm (+ activation) after it.
    Conv {
        /// timm name.
        name: String,
        /// Report kind (`stem`, `pointwise`, `depthwise`, `grouped`).
        kind: &'static str,
        /// The convolution.
        shape: ConvShape,
        /// The norm after it: timm name and what it does.
        norm: Option<(String, NormSpec)>,
        /// Whether its input gradient is needed (not for the stem).
        need_dx: bool,
    },
    /// Squeeze-excitation (`{name}.conv_reduce`, `{name}.conv_expand`) with `reduced`
    /// inner channels; takes the delayed proxy scale of the norm before it.
    Se {
        /// timm prefix.
        name: String,
        /// Inner channels.
        reduced: usize,
    },
    /// Start (`begin`) or end of an identity skip: the end adds the start's input.
    Skip {
        /// Name of the addition.
        name: String,
        /// Start or end.
        begin: bool,
    },
}

/// The normalization family of a block.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BlockNorm {
    /// GroupNorm with this many groups, swish after the first two norms.
    Gn(usize),
    /// LayerNorm with Proxy Norm swish after the first two norms; the last norm has
    /// no activation and no proxy.
    LnPn,
}

/// An MBConv block.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Images.
    pub batch: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Expansion ratio (1: no expand conv).
    pub expand: usize,
    /// Spatial kernel size.
    pub kernel: usize,
    /// Spatial stride.
    pub stride: usize,
    /// Channels per group of the spatial conv (1 depthwise, 16 G16).
    pub group_size: usize,
    /// SE inner channels.
    pub se: usize,
    /// Normalization.
    pub norm: BlockNorm,
}

impl BlockSpec {
    /// Expanded width.
    pub fn mid(&self) -> usize {
        self.cin * self.expand
    }
    /// Output size of the spatial conv (PyTorch-symmetric padding `kernel/2`).
    pub fn out_hw(&self) -> (usize, usize) {
        let p = self.kernel / 2;
        (
            (self.h + 2 * p - self.kernel) / self.stride + 1,
            (self.w + 2 * p - self.kernel) / self.stride + 1,
        )
    }
    /// Identity skip.
    pub fn skip(&self) -> bool {
        self.stride == 1 && self.cin == self.cout
    }
    /// (cg, act, proxy, where the proxy scale goes) of norm 1 (after the
    /// expansion), 2 (after the spatial conv) and 3 (after the projection), `c`
    /// channels. Under LN+PN (DESIGN.md, "Proxy Norm"): full scale after the
    /// expansion, delayed scale after the spatial conv (folded into the SE gate), and
    /// a γ-only LayerNorm with no activation after the projection.
    pub fn norm_of(&self, which: usize, c: usize) -> (usize, u32, bool, ProxyScale) {
        let act = if which < 3 { 1 } else { 0 };
        let scale = if which == 2 {
            ProxyScale::Delayed
        } else {
            ProxyScale::Full
        };
        match self.norm {
            BlockNorm::Gn(g) => (c / g, act, false, ProxyScale::Full),
            BlockNorm::LnPn => (c, act, act == 1, scale),
        }
    }
    /// Whether norm `which` has γ only (no β, β', γ'): the projection's LayerNorm
    /// under Proxy Norm.
    pub fn gamma_only(&self, which: usize) -> bool {
        which == 3 && self.norm == BlockNorm::LnPn
    }
    /// Parameter tensors: (name, elements), in the order of [`crate::ipu::block::BlockParams`].
    pub fn param_shapes(&self) -> Vec<(&'static str, usize)> {
        let (m, k) = (self.mid(), self.kernel);
        vec![
            ("w_expand", if self.expand == 1 { 0 } else { self.cin * m }),
            ("norm1", 4 * m),
            ("w_spatial", k * k * self.group_size * m),
            ("norm2", 4 * m),
            ("se_w1", m * self.se),
            ("se_b1", self.se),
            ("se_w2", self.se * m),
            ("se_b2", m),
            ("w_project", m * self.cout),
            (
                "norm3",
                if self.gamma_only(3) {
                    self.cout
                } else {
                    4 * self.cout
                },
            ),
        ]
    }
    /// Checks that the block is consistent (odd kernel, group size dividing the
    /// expanded width, GN groups dividing the channels, ...).
    pub fn validate(&self) -> Result<()> {
        let m = self.mid();
        let ok = self.batch > 0
            && self.h > 0
            && self.w > 0
            && self.cin > 0
            && self.cout > 0
            && self.expand > 0
            && self.kernel % 2 == 1
            && self.stride > 0
            && self.group_size > 0
            && m.is_multiple_of(self.group_size)
            && self.se > 0
            && match self.norm {
                BlockNorm::Gn(g) => g > 0 && m.is_multiple_of(g) && self.cout.is_multiple_of(g),
                BlockNorm::LnPn => true,
            };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidDescriptor(format!(
                "inconsistent block {self:?}"
            )))
        }
    }
}
