//! The driver: builds the chain (or a segment of steps) forward and backward, and
//! runs it on host data.

use super::add::add;
use super::boxes::{Dist, write_dist};
use super::context::{ChainParam, ChainParams, LayerSplit, Net};
use super::conv::conv;
use super::head::head_loss;
use super::norm::{Delayed, norm};
use super::se::se;
use super::steps::steps_of;
use crate::arch::{ArchConfig, NormKind};
use crate::error::{Error, Result};
use crate::ipu::graph::{Engine, Graph, LayerInfo, Profile, Program, TensorId};
use crate::ipu::target::{Precision, Target};
use crate::ipu::vocab::Step;
use std::cell::RefCell;
use std::rc::Rc;

/// A built chain: the graph, the forward and backward programs and the tensors the
/// host reads and writes.
pub struct Chain {
    /// The graph.
    pub graph: Graph,
    /// Forward program.
    pub fwd: Program,
    /// Backward program.
    pub bwd: Program,
    /// The input image `[N][res][res][3]` as boxes.
    pub input: Dist,
    /// The one-hot targets `[N][classes]`.
    pub targets: TensorId,
    /// Logits `[N][classes]`.
    pub logits: TensorId,
    /// Mean loss `[1]`.
    pub loss: TensorId,
    /// Parameters in network order.
    pub params: Vec<ChainParam>,
    /// Per convolution (and the classifier), its split.
    pub splits: Vec<LayerSplit>,
}

/// Builds the whole network's forward and backward program for `arch` at `res`,
/// batch `batch`, on `target` at `precision`, without tensor data.
///
/// # Errors
/// [`Error::InvalidArgument`] for a resolution below 32 or a batch of 0;
/// [`Error::TileMemory`] when a layer's smallest split does not fit a tile.
pub fn build(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    precision: Precision,
) -> Result<Chain> {
    if res < 32 || batch == 0 {
        return Err(Error::InvalidArgument(
            "--res must be at least 32 and --batch at least 1".into(),
        ));
    }
    let mut net = Net::new(target, precision, arch.norm_eps)?;
    let (steps, classes) = steps_of(arch, res, batch)?;
    let Some(Step::Conv { shape: ss, .. }) = steps.first() else {
        return Err(Error::InvalidArgument(format!("{}: no stem", arch.name)));
    };
    let sp = net.conv_split(ss)?;
    let input = net.dist("input", batch, res, res, 3, sp.ph, 1, 1)?;
    let head = run_steps(&mut net, &steps, input.clone())?;
    let (logits, targets, loss) = head_loss(&mut net, &head, classes)?;
    let (net, _) = finish(net, input.clone())?;
    let Net {
        g,
        fwd,
        bwd,
        params,
        splits,
        ..
    } = net;
    Ok(Chain {
        graph: g,
        fwd: Program::Sequence(fwd),
        bwd: Program::Sequence(bwd),
        input,
        targets,
        logits,
        loss,
        params,
        splits,
    })
}

/// Runs `steps` forward from `x` (pushing their backward on the tape); returns the
/// last output.
pub(super) fn run_steps(net: &mut Net, steps: &[Step], x: Dist) -> Result<Dist> {
    let mut cur = x;
    let mut delayed: Delayed = None;
    let mut skips: Vec<(Dist, Rc<RefCell<Option<Dist>>>)> = Vec::new();
    for st in steps {
        match st {
            Step::Conv {
                name,
                kind,
                shape,
                norm: nm,
                need_dx,
            } => {
                cur = conv(net, name, kind, *shape, &cur, *need_dx)?;
                if let Some((nn, ns)) = nm {
                    let (z, d) = norm(net, nn, *ns, &cur)?;
                    cur = z;
                    delayed = d;
                }
            }
            Step::Se { name, reduced } => {
                cur = se(net, name, &cur, *reduced, delayed.take())?;
            }
            Step::Skip { name, begin: true } => {
                // Backward: the skip's gradient (saved at the end) joins the branch's
                // input gradient.
                let cell: Rc<RefCell<Option<Dist>>> = Rc::new(RefCell::new(None));
                let c2 = cell.clone();
                let name = name.clone();
                net.tape.push(Box::new(move |net: &mut Net, dx: Dist| {
                    let dout = c2
                        .borrow_mut()
                        .take()
                        .ok_or_else(|| Error::InvalidArgument("skip gradient missing".into()))?;
                    net.layer(&name, "activation", (dx.n * dx.h * dx.w * dx.c) as f64);
                    add(net, &name, &dx, &dout)
                }));
                skips.push((cur.clone(), cell));
            }
            Step::Skip { name, begin: false } => {
                let (x_in, cell) = skips
                    .pop()
                    .ok_or_else(|| Error::InvalidArgument(format!("{name}: no skip start")))?;
                net.layer(name, "activation", (cur.n * cur.h * cur.w * cur.c) as f64);
                cur = add(net, name, &cur, &x_in)?;
                net.tape.push(Box::new(move |_: &mut Net, dout: Dist| {
                    *cell.borrow_mut() = Some(dout.clone());
                    Ok(dout)
                }));
            }
        }
    }
    Ok(cur)
}

/// Builds the backward program: the tape in reverse from the gradient `d`; returns
/// the net and the last gradient (the input's).
pub(super) fn finish(mut net: Net, mut d: Dist) -> Result<(Net, Dist)> {
    net.in_bwd = true;
    while let Some(f) = net.tape.pop() {
        d = f(&mut net, d)?;
    }
    Ok((net, d))
}

impl Chain {
    /// The forward and backward programs in sequence.
    pub fn program(&self) -> Program {
        Program::Sequence(vec![self.fwd.clone(), self.bwd.clone()])
    }

    /// The estimated profile of one training step (forward + backward): the memory
    /// check with liveness across the whole network.
    pub fn profile(&self) -> Result<Profile> {
        self.graph.profile(&self.program())
    }

    /// Names and element counts of the parameters the chain takes.
    pub fn param_shapes(&self) -> Vec<(String, usize)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.len))
            .collect()
    }
}

/// Results of [`run`].
#[derive(Clone, Debug)]
pub struct ChainResult {
    /// Logits `[N][classes]`.
    pub logits: Vec<f32>,
    /// Mean softmax cross-entropy.
    pub loss: f32,
    /// Parameter gradients by name (layouts of [`ChainParams`]).
    pub grads: Vec<(String, Vec<f32>)>,
    /// The estimated profile.
    pub profile: Profile,
    /// The layer labels of the profile.
    pub layers: Vec<LayerInfo>,
    /// How each convolution was split.
    pub splits: Vec<LayerSplit>,
}

/// Builds, profiles (memory check included) and executes one training step of the
/// whole network on `x` (`[N][res][res][3]`) with `labels` (`[N]`) and `params`.
///
/// # Errors
/// As [`build`]; [`Error::TileMemory`] from the profile; [`Error::InvalidArgument`]
/// for a missing or mis-sized parameter or a label out of range.
pub fn run(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    params: &ChainParams,
    x: &[f32],
    labels: &[usize],
) -> Result<ChainResult> {
    let ch = build(arch, res, batch, target, Precision::F32)?;
    crate::error::check_len("images", x.len(), batch * res * res * 3)?;
    crate::error::check_len("labels", labels.len(), batch)?;
    let k = arch.num_classes;
    let profile = ch.profile()?;
    let mut e = Engine::new(&ch.graph);
    for p in &ch.params {
        let v = params
            .get(&p.name)
            .ok_or_else(|| Error::InvalidArgument(format!("parameter {} missing", p.name)))?;
        crate::error::check_len("parameter", v.len(), p.len)?;
        e.write(p.value, v)?;
    }
    let mut onehot = vec![0.0f32; batch * k];
    for (i, &l) in labels.iter().enumerate() {
        if l >= k {
            return Err(Error::InvalidArgument(format!("label {l} >= {k} classes")));
        }
        onehot[i * k + l] = 1.0;
    }
    e.write(ch.targets, &onehot)?;
    write_dist(&mut e, &ch.input, x)?;
    e.run(&ch.program())?;
    let grads = ch
        .params
        .iter()
        .map(|p| (p.name.clone(), e.read(p.grad).to_vec()))
        .collect();
    Ok(ChainResult {
        logits: e.read(ch.logits).to_vec(),
        loss: e.read(ch.loss)[0],
        grads,
        profile,
        layers: ch.graph.layers.clone(),
        splits: ch.splits.clone(),
    })
}

/// A segment of steps built without a loss: the backward starts from a given output
/// gradient.
pub struct Segment {
    /// The graph.
    pub graph: Graph,
    /// Forward program.
    pub fwd: Program,
    /// Backward program.
    pub bwd: Program,
    /// Input boxes (one image each).
    pub input: Dist,
    /// Output boxes.
    pub out: Dist,
    /// Output-gradient boxes (written by the host).
    pub dout: Dist,
    /// Input-gradient boxes.
    pub dx: Dist,
    /// Parameters.
    pub params: Vec<ChainParam>,
}

/// Builds `steps` on an input `[n][h][w][c]` (one image per box), forward and
/// backward, with norm ε `eps`.
///
/// # Errors
/// As [`build`].
#[allow(clippy::too_many_arguments)]
pub fn build_segment(
    steps: &[Step],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    eps: f32,
    target: &Target,
    precision: Precision,
) -> Result<Segment> {
    let mut net = Net::new(target, precision, eps)?;
    let input = net.dist("input", n, h, w, c, 1, 1, 1)?;
    let out = run_steps(&mut net, steps, input.clone())?;
    let dout = net.like("dout", &out)?;
    let (net, dx) = finish(net, dout.clone())?;
    Ok(Segment {
        graph: net.g,
        fwd: Program::Sequence(net.fwd),
        bwd: Program::Sequence(net.bwd),
        input,
        out,
        dout,
        dx,
        params: net.params,
    })
}

/// Whether `arch` uses BatchNorm (statistics over the batch).
pub fn batch_norm(arch: &ArchConfig) -> bool {
    arch.norm == NormKind::BatchNorm
}
