//! The driver: builds the network (or one pipeline stage of it, or a segment of
//! steps) forward and backward — recomputing each block from its input in the
//! backward pass when asked — and runs it on host data.

use super::add::add;
use super::boxes::{Dist, Grid, write_dist};
use super::context::{ChainOpts, ChainParam, ChainParams, LayerSplit, Net, Phase};
use super::conv::conv;
use super::head::head_loss;
use super::norm::{Delayed, norm};
use super::se::se;
use super::split::choose;
use super::steps::{NetSteps, network_steps};
use crate::arch::{ArchConfig, NormKind};
use crate::error::{Error, Result};
use crate::ipu::graph::{Engine, Graph, LayerInfo, Profile, Program, TensorId, Transfer};
use crate::ipu::target::{Precision, Target};
use crate::ipu::vocab::Step;
use std::cell::RefCell;
use std::ops::Range;
use std::rc::Rc;

/// The loss end of the last stage: targets, logits and loss tensors.
#[derive(Copy, Clone, Debug)]
pub struct Head {
    /// The one-hot targets `[N][classes]`.
    pub targets: TensorId,
    /// Logits `[N][classes]`.
    pub logits: TensorId,
    /// Mean loss `[1]`.
    pub loss: TensorId,
}

/// A built chain — the whole network, or one pipeline stage of it (the segments
/// `segments` of [`NetSteps`]) on one IPU: the graph, its programs and the tensors
/// the host (or the neighbouring stages) read and write.
pub struct Chain {
    /// The graph.
    pub graph: Graph,
    /// Forward program.
    pub fwd: Program,
    /// Backward program (the recomputed forward of each block, then its backward);
    /// empty for inference.
    pub bwd: Program,
    /// Copies every parameter's master value into its resident copies (after the
    /// host writes the masters, and after each optimizer step).
    pub refresh: Program,
    /// The input `[N][h][w][c]` as boxes (the images for the first stage).
    pub input: Dist,
    /// The stage's output (every stage but the last).
    pub out: Option<Dist>,
    /// The output's gradient, written by the next stage (every stage but the last,
    /// when training).
    pub dout: Option<Dist>,
    /// The input's gradient (every stage but the first, when training).
    pub dx: Option<Dist>,
    /// The loss end (the last stage).
    pub head: Option<Head>,
    /// Parameters in network order.
    pub params: Vec<ChainParam>,
    /// Per convolution (and the classifier), its split.
    pub splits: Vec<LayerSplit>,
    /// Names of the segments (stem, blocks, head) it holds.
    pub segments: Vec<String>,
    /// What it was built for.
    pub opts: ChainOpts,
}

/// Builds the whole network's forward and backward program for `arch` at `res`,
/// batch `batch`, on `target` at `precision`, without tensor data, recomputing each
/// block in the backward pass (see [`build_stage`]).
///
/// # Errors
/// As [`build_stage`].
pub fn build(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    precision: Precision,
) -> Result<Chain> {
    let ns = network_steps(arch, res, batch)?;
    let all = 0..ns.segments.len();
    build_stage(
        &ns,
        all,
        arch.norm_eps,
        target,
        precision,
        ChainOpts::default(),
    )
}

/// Builds the segments `segs` of `ns` (the whole network when they are all of them)
/// as one IPU's graph: the first stage takes the images, every other stage the
/// previous stage's output; the last ends in the classifier and the loss, every other
/// stage in its output and (training) a gradient written by the next stage. With
/// `opts.recompute`, only each segment's input is kept from the forward to the
/// backward pass and the segment's forward is built again at the start of its
/// backward (the last segment of the last stage, the head and the loss, is not
/// recomputed: its backward follows at once).
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty or out-of-range segment range;
/// [`Error::TileMemory`] when a layer's smallest split does not fit a tile.
pub fn build_stage(
    ns: &NetSteps,
    segs: Range<usize>,
    eps: f32,
    target: &Target,
    precision: Precision,
    opts: ChainOpts,
) -> Result<Chain> {
    if segs.is_empty() || segs.end > ns.segments.len() {
        return Err(Error::InvalidArgument(format!(
            "stage segments {segs:?} outside 0..{}",
            ns.segments.len()
        )));
    }
    let first = segs.start == 0;
    let last = segs.end == ns.segments.len();
    let mut net = Net::new(target, precision, eps, opts)?;
    let steps = ns.segments[segs.start].steps.start..ns.segments[segs.end - 1].steps.end;
    net.stage_weights = ns.steps[steps]
        .iter()
        .map(|s| match s {
            Step::Conv { shape, .. } => shape.w_len,
            _ => 0,
        })
        .sum();
    let start = ns.segments[segs.start].steps.start;
    let Some(Step::Conv { shape, .. }) = ns.steps[start..]
        .iter()
        .find(|s| matches!(s, Step::Conv { .. }))
    else {
        return Err(Error::InvalidArgument(
            "a stage without a convolution".into(),
        ));
    };
    // The input, laid out like the first convolution's output rows (its images and
    // row ranges; all channels per box), so that its windows are mostly local.
    let d = shape.desc;
    let (g, _) = choose(&net, shape, None)?;
    let grid = Grid {
        imgs: g.imgs.clone(),
        rows: super::boxes::ranges(d.in_h, g.rows.len()),
        chans: vec![(0, d.in_channels)],
    };
    let input = net.dist("input", (d.batch, d.in_h, d.in_w, d.in_channels), grid)?;
    // Forward, segment by segment.
    let mut cur = input.clone();
    let mut marks = Vec::new();
    for si in segs.clone() {
        let seg = &ns.segments[si];
        marks.push((si, cur.clone(), net.tape.len()));
        cur = run_steps(&mut net, &ns.steps[seg.steps.clone()], cur)?;
    }
    let head = if last {
        let (logits, targets, loss) = head_loss(&mut net, &cur, ns.classes)?;
        Some(Head {
            targets,
            logits,
            loss,
        })
    } else {
        None
    };
    let out = (!last).then(|| cur.clone());
    let mut dout = None;
    let mut dx = None;
    if opts.training {
        net.phase = Phase::Bwd;
        let mut d = if last {
            // The loss's closure ignores its argument.
            let f = net.tape.pop().ok_or_else(|| {
                Error::InvalidArgument("the loss left no backward on the tape".into())
            })?;
            f(&mut net, cur.clone())?
        } else {
            let g = net.like("dout", &cur)?;
            dout = Some(g.clone());
            g
        };
        let nseg = marks.len();
        for (k, (si, seg_in, at)) in marks.into_iter().enumerate().rev() {
            let mut entries = net.tape.split_off(at);
            let is_head = last && k == nseg - 1;
            if opts.recompute && !is_head {
                drop(entries);
                net.phase = Phase::Recompute;
                let t0 = net.tape.len();
                run_steps(&mut net, &ns.steps[ns.segments[si].steps.clone()], seg_in)?;
                entries = net.tape.split_off(t0);
                net.phase = Phase::Bwd;
            }
            while let Some(f) = entries.pop() {
                d = f(&mut net, d)?;
            }
        }
        if !first {
            dx = Some(d);
        }
    }
    let refresh = refresh_program(&mut net)?;
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
        refresh,
        input,
        out,
        dout,
        dx,
        head,
        params,
        splits,
        segments: segs.map(|i| ns.segments[i].name.clone()).collect(),
        opts,
    })
}

/// The exchange that copies every master into its resident copies (one layer label,
/// `update`).
fn refresh_program(net: &mut Net) -> Result<Program> {
    let layer = net.g.add_layer(LayerInfo {
        name: "weights.refresh".into(),
        kind: "update",
        pass: "update",
        flops: 0.0,
    });
    let trs: Vec<Transfer> = net
        .params
        .iter()
        .flat_map(|p| {
            p.copies.iter().map(|&(t, copy)| Transfer {
                src: p.value,
                dsts: vec![t],
                copy,
            })
        })
        .collect();
    if trs.is_empty() {
        return Ok(Program::Sequence(Vec::new()));
    }
    let e = net.g.add_exchange("weights.refresh", layer, trs)?;
    Ok(Program::Exchange(e))
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
                net.on_backward(Box::new(move |net: &mut Net, dx: Dist| {
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
                net.on_backward(Box::new(move |_: &mut Net, dout: Dist| {
                    *cell.borrow_mut() = Some(dout.clone());
                    Ok(dout)
                }));
            }
        }
    }
    Ok(cur)
}

impl Chain {
    /// The forward and backward programs in sequence.
    pub fn program(&self) -> Program {
        Program::Sequence(vec![self.fwd.clone(), self.bwd.clone()])
    }

    /// The estimated profile of one training step (forward + backward) with the
    /// memory check (liveness across the whole program), `extra` more copies of
    /// everything kept from the forward to the backward pass (the micro-batches in
    /// flight in a pipeline).
    pub fn profile_in_flight(&self, extra: usize) -> Result<Profile> {
        self.graph.profile_stashed(&self.fwd, &self.bwd, extra)
    }

    /// The estimated profile of one training step (forward + backward).
    pub fn profile(&self) -> Result<Profile> {
        self.profile_in_flight(0)
    }

    /// Names and element counts of the parameters the chain takes.
    pub fn param_shapes(&self) -> Vec<(String, usize)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.len))
            .collect()
    }

    /// Writes parameter masters from `params` (by name) into `e` and refreshes the
    /// resident copies.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a missing or mis-sized parameter.
    pub fn load_params(&self, e: &mut Engine, params: &ChainParams) -> Result<()> {
        for p in &self.params {
            let v = params
                .get(&p.name)
                .ok_or_else(|| Error::InvalidArgument(format!("parameter {} missing", p.name)))?;
            crate::error::check_len("parameter", v.len(), p.len)?;
            e.write(p.value, v)?;
        }
        e.run(&self.refresh)
    }
}

/// One-hot targets `[N][k]` of `labels`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a label out of range.
pub fn one_hot(labels: &[usize], k: usize) -> Result<Vec<f32>> {
    let mut onehot = vec![0.0f32; labels.len() * k];
    for (i, &l) in labels.iter().enumerate() {
        if l >= k {
            return Err(Error::InvalidArgument(format!("label {l} >= {k} classes")));
        }
        onehot[i * k + l] = 1.0;
    }
    Ok(onehot)
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
/// whole network on `x` (`[N][res][res][3]`) with `labels` (`[N]`) and `params`, on
/// one IPU, with or without recomputation (`opts`).
///
/// # Errors
/// As [`build_stage`]; [`Error::TileMemory`] from the profile;
/// [`Error::InvalidArgument`] for a missing or mis-sized parameter or a label out of
/// range.
#[allow(clippy::too_many_arguments)]
pub fn run(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    opts: ChainOpts,
    params: &ChainParams,
    x: &[f32],
    labels: &[usize],
) -> Result<ChainResult> {
    let ns = network_steps(arch, res, batch)?;
    let ch = build_stage(
        &ns,
        0..ns.segments.len(),
        arch.norm_eps,
        target,
        Precision::F32,
        opts,
    )?;
    crate::error::check_len("images", x.len(), batch * res * res * 3)?;
    crate::error::check_len("labels", labels.len(), batch)?;
    let head = ch
        .head
        .ok_or_else(|| Error::InvalidArgument("the whole network has no loss".into()))?;
    let profile = ch.profile()?;
    let mut e = Engine::new(&ch.graph);
    ch.load_params(&mut e, params)?;
    e.write(head.targets, &one_hot(labels, arch.num_classes)?)?;
    write_dist(&mut e, &ch.input, x)?;
    e.run(&ch.program())?;
    let grads = ch
        .params
        .iter()
        .map(|p| (p.name.clone(), e.read(p.grad).to_vec()))
        .collect();
    Ok(ChainResult {
        logits: e.read(head.logits).to_vec(),
        loss: e.read(head.loss)[0],
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
    /// Copies the parameter masters into their resident copies.
    pub refresh: Program,
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
/// backward (no recomputation), with norm ε `eps`.
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
    let opts = ChainOpts {
        training: true,
        recompute: false,
    };
    let mut net = Net::new(target, precision, eps, opts)?;
    net.stage_weights = steps
        .iter()
        .map(|s| match s {
            Step::Conv { shape, .. } => shape.w_len,
            _ => 0,
        })
        .sum();
    let input = net.dist("input", (n, h, w, c), Grid::new(n, h, c, n, 1, 1, 1))?;
    let out = run_steps(&mut net, steps, input.clone())?;
    net.phase = Phase::Bwd;
    let dout = net.like("dout", &out)?;
    let mut d = dout.clone();
    while let Some(f) = net.tape.pop() {
        d = f(&mut net, d)?;
    }
    let refresh = refresh_program(&mut net)?;
    Ok(Segment {
        graph: net.g,
        fwd: Program::Sequence(net.fwd),
        bwd: Program::Sequence(net.bwd),
        refresh,
        input,
        out,
        dout,
        dx: d,
        params: net.params,
    })
}

/// Whether `arch` uses BatchNorm (statistics over the batch).
pub fn batch_norm(arch: &ArchConfig) -> bool {
    arch.norm == NormKind::BatchNorm
}
