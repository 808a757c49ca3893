//! One MBConv block (expand 1×1 → norm+swish → k×k depthwise/group conv → norm+swish
//! → squeeze-excitation → project 1×1 → norm → skip add), forward and backward, built
//! as one program on the model and executed through the codelets.
//!
//! Built from the steps of the whole-network chain ([`super::chain`]): the block's
//! layers are [`super::chain::Step`]s, split over the tiles by the planner like every
//! layer of the network, and run as one program (forward, then backward from a given
//! output gradient). Parameters come in the block layout of [`BlockParams`] and are
//! converted to and from the chain's named tensors here.

use super::chain::{build_segment, read_dist, write_dist};
use super::graph::{Engine, Program};
use super::target::{Precision, Target};
pub use super::vocab::{BlockNorm, BlockSpec};
use super::vocab::{NormSpec, Step};
use crate::error::{Error, Result};
use crate::kernels::conv::{ConvDesc, Padding};

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
    e.run(&seg.refresh)?;
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
