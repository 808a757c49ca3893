//! What a training stage keeps between optimizer steps, added to its graph: the
//! fp32 master weights (the chain's parameter masters, stored at 4 bytes), a
//! gradient accumulator and the two RMSProp slots per parameter, all mapped like
//! the master; the program that adds a micro-batch's gradients into the
//! accumulators; and the optimizer step (TensorFlow RMSProp on every master slice,
//! consuming the accumulator, then the refresh of the resident fp16 copies).

use crate::error::Result;
use crate::ipu::chain::Chain;
use crate::ipu::codelets::Codelet;
use crate::ipu::graph::{FieldRef, LayerInfo, Program, TensorId};
use crate::kernels::optim::RmsPropTf;

/// The RMSProp hyper-parameters of a step (DESIGN.md's recipe: decay 0.953125,
/// momentum 0.9, ε 1e-3, weight decay 1e-5 on convolution and dense weights).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct RmsHyper {
    /// Learning rate.
    pub lr: f32,
    /// Decay ρ of the mean square.
    pub decay: f32,
    /// Momentum μ.
    pub momentum: f32,
    /// ε inside the square root.
    pub eps: f32,
    /// L2 weight decay on the parameters that decay.
    pub weight_decay: f32,
}

impl RmsHyper {
    /// The paper's recipe at learning rate `lr`.
    pub fn paper(lr: f32) -> RmsHyper {
        RmsHyper {
            lr,
            decay: 0.953125,
            momentum: 0.9,
            eps: 1e-3,
            weight_decay: 1e-5,
        }
    }
}

/// The training state of one stage's graph.
#[derive(Clone, Debug)]
pub struct TrainState {
    /// Per parameter (in the chain's order): accumulator, mean square, momentum.
    pub slots: Vec<[TensorId; 3]>,
    /// `acc += grad` for every parameter (after each micro-batch's backward).
    pub accumulate: Program,
    /// The optimizer step and the refresh of the resident copies.
    pub update: Program,
}

/// Adds the training state to `ch`'s graph: `grad_scale` scales the accumulated
/// gradient in the update (1 / (micro-batches · replicas) for the mean over the
/// global batch), `decays(name)` says which parameters take weight decay.
///
/// # Errors
/// An error of the graph (none for a chain it built).
pub fn add_train_state(
    ch: &mut Chain,
    h: &RmsHyper,
    grad_scale: f32,
    decays: &dyn Fn(&str) -> bool,
) -> Result<TrainState> {
    let g = &mut ch.graph;
    let acc_layer = g.add_layer(LayerInfo {
        name: "gradient_accumulation".into(),
        kind: "update",
        pass: "bwd",
        flops: ch.params.iter().map(|p| p.len as f64).sum(),
    });
    let upd_layer = g.add_layer(LayerInfo {
        name: "optimizer".into(),
        kind: "update",
        pass: "update",
        flops: ch.params.iter().map(|p| 10.0 * p.len as f64).sum(),
    });
    let acc_cs = g.add_compute_set("gradient_accumulation", acc_layer);
    let upd_cs = g.add_compute_set("optimizer.rmsprop", upd_layer);
    let mut slots = Vec::new();
    for p in &ch.params {
        let mapping = g.tensor(p.value).mapping.clone();
        g.set_elem_bytes(p.value, 4);
        let mk = |g: &mut crate::ipu::graph::Graph, what: &str| {
            let t = g.add_tensor_mapped(format!("{}.{what}", p.name), p.len, mapping.clone())?;
            g.set_persistent(t);
            g.set_elem_bytes(t, 4);
            Ok::<_, crate::error::Error>(t)
        };
        let acc = mk(g, "accumulator")?;
        let ms = mk(g, "mean_square")?;
        let mom = mk(g, "momentum")?;
        g.set_init(ms, vec![RmsPropTf::initial_mean_square(); p.len])?;
        let wd = if decays(&p.name) { h.weight_decay } else { 0.0 };
        for (r, tile) in &mapping {
            if r.is_empty() {
                continue;
            }
            let f = |t: TensorId| FieldRef {
                tensor: t,
                offset: r.start,
                len: r.len(),
            };
            g.add_vertex(
                acc_cs,
                *tile,
                Codelet::scaled_add(r.len(), 1.0),
                vec![f(acc), f(p.grad)],
            )?;
            g.add_vertex(
                upd_cs,
                *tile,
                Codelet::rmsprop(r.len(), h.lr, h.decay, h.momentum, h.eps, wd, grad_scale),
                vec![f(p.value), f(acc), f(ms), f(mom)],
            )?;
        }
        slots.push([acc, ms, mom]);
    }
    Ok(TrainState {
        slots,
        accumulate: Program::Execute(acc_cs),
        update: Program::Sequence(vec![Program::Execute(upd_cs), ch.refresh.clone()]),
    })
}
