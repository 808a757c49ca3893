//! One MBConv block (expand 1×1 → norm+swish → k×k depthwise/group conv → norm+swish
//! → squeeze-excitation → project 1×1 → norm → skip add), forward and backward, built
//! as one program on the model and executed through the codelets.
//!
//! Built from the steps of the whole-network chain ([`super::chain`]): the block's
//! layers are [`super::chain::Step`]s, split over the tiles by the planner like every
//! layer of the network, and run as one program (forward, then backward from a given
//! output gradient). Parameters come in the block layout of [`BlockParams`] and are
//! converted to and from the chain's named tensors here.

use super::chain::{Step, build_segment, read_dist, write_dist};
use super::codelets::ProxyScale;
use super::graph::{Engine, Program};
use super::network::NormSpec;
use super::target::{Precision, Target};
use crate::error::{Error, Result};
use crate::kernels::conv::{ConvDesc, Padding};

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
    /// Parameter tensors: (name, elements), in the order of [`BlockParams`].
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
    fn validate(&self) -> Result<()> {
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

/// Parameters of a block, each a flat vector in the order of
/// [`BlockSpec::param_shapes`]: convolution weights in the layout of
/// [`crate::kernels::conv::ConvDesc`] (`[kh][kw][C_in/groups][C_out]`; SE weights
/// `[C_in][C_out]`), norm parameters `[4][C]` = γ, β, β', γ' (β', γ' used by Proxy
/// Norm only), or `[C]` = γ for the γ-only projection LayerNorm under Proxy Norm.
pub type BlockParams = Vec<Vec<f32>>;

/// Results of [`run_block`]: the block output `[N][OH][OW][C_out]`, the input gradient
/// `[N][H][W][C_in]` and the parameter gradients (layout of [`BlockParams`]; norm
/// gradients `[C][4]` = dγ, dβ, dβ', dγ' per channel, `[C]` = dγ for a γ-only norm).
/// Cycles are estimates.
#[derive(Clone, Debug)]
pub struct BlockResult {
    /// Output.
    pub out: Vec<f32>,
    /// Input gradient.
    pub dx: Vec<f32>,
    /// Parameter gradients.
    pub grads: Vec<Vec<f32>>,
    /// Estimated cycles of the forward program.
    pub fwd_cycles: u64,
    /// Estimated cycles of the backward program.
    pub bwd_cycles: u64,
}

/// The block as chain steps ([`super::chain::Step`]) named `expand`, `bn1`,
/// `spatial`, `bn2`, `se`, `project`, `bn3`, `add` (PyTorch-symmetric padding).
pub fn steps(spec: &BlockSpec) -> Result<Vec<Step>> {
    spec.validate()?;
    let (n, h, w, ci, co, m, k) = (
        spec.batch,
        spec.h,
        spec.w,
        spec.cin,
        spec.cout,
        spec.mid(),
        spec.kernel,
    );
    let (oh, ow) = spec.out_hw();
    let norm = |which: usize, c: usize, name: &str| {
        let (cg, act, proxy, scale) = spec.norm_of(which, c);
        Some((
            name.to_string(),
            NormSpec {
                cg,
                per_sample: true,
                act,
                proxy,
                scale,
                beta: !spec.gamma_only(which),
            },
        ))
    };
    let mut v = Vec::new();
    if spec.skip() {
        v.push(Step::Skip {
            name: "add".into(),
            begin: true,
        });
    }
    if spec.expand != 1 {
        v.push(Step::Conv {
            name: "expand".into(),
            kind: "pointwise",
            shape: ConvDesc::pointwise(n, (h, w), ci, m).validate()?,
            norm: norm(1, m, "bn1"),
            need_dx: true,
        });
    }
    v.push(Step::Conv {
        name: "spatial".into(),
        kind: if spec.group_size == 1 {
            "depthwise"
        } else {
            "grouped"
        },
        shape: ConvDesc::new(n, (h, w), m, m, (k, k))
            .with_group_size(spec.group_size)
            .with_stride(spec.stride)
            .with_padding(Padding::symmetric_for(k, k, 1))
            .validate()?,
        norm: norm(2, m, "bn2"),
        need_dx: true,
    });
    v.push(Step::Se {
        name: "se".into(),
        reduced: spec.se,
    });
    v.push(Step::Conv {
        name: "project".into(),
        kind: "pointwise",
        shape: ConvDesc::pointwise(n, (oh, ow), m, co).validate()?,
        norm: norm(3, co, "bn3"),
        need_dx: true,
    });
    if spec.skip() {
        v.push(Step::Skip {
            name: "add".into(),
            begin: false,
        });
    }
    Ok(v)
}

/// The chain parameter names of block parameter `i` of [`BlockSpec::param_shapes`]:
/// one name for a weight or bias, the four norm slices γ, β, β′, γ′ (`[4][C]`) for a
/// norm (fewer for a γ-only norm).
fn chain_names(i: usize) -> &'static [&'static str] {
    const N: [&[&str]; 10] = [
        &["expand.weight"],
        &[
            "bn1.weight",
            "bn1.bias",
            "bn1.proxy_beta",
            "bn1.proxy_gamma",
        ],
        &["spatial.weight"],
        &[
            "bn2.weight",
            "bn2.bias",
            "bn2.proxy_beta",
            "bn2.proxy_gamma",
        ],
        &["se.conv_reduce.weight"],
        &["se.conv_reduce.bias"],
        &["se.conv_expand.weight"],
        &["se.conv_expand.bias"],
        &["project.weight"],
        &[
            "bn3.weight",
            "bn3.bias",
            "bn3.proxy_beta",
            "bn3.proxy_gamma",
        ],
    ];
    N[i]
}

/// Builds the block's forward and backward programs on `target` (the steps of
/// [`steps`], split by the planner), runs them on `x` (`[N][H][W][C_in]`), `params`
/// and the output gradient `dout`, and returns the results.
pub fn run_block(
    spec: &BlockSpec,
    target: &Target,
    x: &[f32],
    params: &[Vec<f32>],
    dout: &[f32],
) -> Result<BlockResult> {
    let st = steps(spec)?;
    let shapes = spec.param_shapes();
    if params.len() != shapes.len() {
        return Err(Error::InvalidArgument(format!(
            "block takes {} parameter tensors",
            shapes.len()
        )));
    }
    // Block parameters → chain parameters: norms `[4][C]` split into their slices.
    let mut map = std::collections::HashMap::new();
    for (i, ((name, len), p)) in shapes.iter().zip(params).enumerate() {
        if p.len() != *len {
            return Err(Error::InvalidArgument(format!(
                "block parameter {name}: {} elements, needs {len}",
                p.len()
            )));
        }
        let names = chain_names(i);
        let c = match (names.len(), i) {
            (1, _) => *len,
            (_, 9) => spec.cout,
            _ => spec.mid(),
        };
        for (j, nm) in names.iter().enumerate() {
            if (j + 1) * c <= *len {
                map.insert(nm.to_string(), p[j * c..(j + 1) * c].to_vec());
            }
        }
    }
    let seg = build_segment(
        &st,
        spec.batch,
        spec.h,
        spec.w,
        spec.cin,
        1e-3,
        target,
        Precision::F32,
    )?;
    let whole = Program::Sequence(vec![seg.fwd.clone(), seg.bwd.clone()]);
    let prof = seg.graph.profile(&whole)?;
    let mut e = Engine::new(&seg.graph);
    for p in &seg.params {
        let v = map
            .get(&p.name)
            .ok_or_else(|| Error::InvalidArgument(format!("block parameter {} missing", p.name)))?;
        e.write(p.value, v)?;
    }
    write_dist(&mut e, &seg.input, x)?;
    write_dist(&mut e, &seg.dout, dout)?;
    e.run(&whole)?;
    let grad = |name: &str| {
        seg.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| e.read(p.grad).to_vec())
    };
    // Chain gradients → block layout: norms `[C][4]` (zeros for absent slices),
    // γ-only norms `[C]`.
    let grads = shapes
        .iter()
        .enumerate()
        .map(|(i, (_, len))| {
            let names = chain_names(i);
            if names.len() == 1 {
                return grad(names[0]).unwrap_or_else(|| vec![0.0; *len]);
            }
            // No first norm at expansion 1: its gradient is zero.
            let Some(g0) = grad(names[0]) else {
                return vec![0.0; *len];
            };
            let c = g0.len();
            if *len == c {
                return g0;
            }
            let slices: Vec<Vec<f32>> = names
                .iter()
                .map(|n| grad(n).unwrap_or_else(|| vec![0.0; c]))
                .collect();
            (0..4 * c).map(|j| slices[j % 4][j / 4]).collect()
        })
        .collect();
    let cycles = |pass: &str| {
        seg.graph
            .layers
            .iter()
            .zip(&prof.layers)
            .filter(|(l, _)| l.pass == pass)
            .map(|(_, p)| p.compute_cycles + p.exchange_cycles + p.sync_cycles)
            .sum()
    };
    Ok(BlockResult {
        out: read_dist(&e, &seg.out),
        dx: read_dist(&e, &seg.dx),
        grads,
        fwd_cycles: cycles("fwd"),
        bwd_cycles: cycles("bwd"),
    })
}
