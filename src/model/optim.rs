//! Optimizers over a [`ParamStore`]: SGD with momentum and RMSProp with TensorFlow
//! semantics (ε inside the square root), weight decay on convolution and dense weights
//! only (never on norm or proxy parameters or biases), and the exponential moving
//! average of the weights. The updates run on [`crate::kernels::optim`].

use super::params::ParamStore;
use crate::error::{Error, Result, try_filled};
use crate::io::tensors::{NamedTensor, TensorMap};
use crate::kernels::optim::{self as k, RmsPropTf, SgdMomentum};

/// Which update rule.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum OptimizerKind {
    /// SGD with heavy-ball momentum.
    Sgd {
        /// Momentum μ.
        momentum: f32,
    },
    /// RMSProp as TensorFlow defines it (DESIGN.md's recipe: ρ = 0.953125, momentum
    /// 0.9, ε = 1e-3).
    RmsProp {
        /// Decay ρ of the mean square.
        decay: f32,
        /// Momentum μ.
        momentum: f32,
        /// ε inside the square root.
        eps: f32,
    },
}

impl OptimizerKind {
    /// The recipe's RMSProp: ρ = 0.953125, momentum 0.9, ε = 1e-3.
    pub fn paper_rmsprop() -> OptimizerKind {
        OptimizerKind::RmsProp {
            decay: 0.953125,
            momentum: 0.9,
            eps: 1e-3,
        }
    }

    fn slots(&self) -> &'static [&'static str] {
        match self {
            OptimizerKind::Sgd { .. } => &["momentum"],
            OptimizerKind::RmsProp { .. } => &["momentum", "mean_square"],
        }
    }
}

/// An optimizer with its per-parameter state (`slots[s][i]` is slot `s` of parameter
/// `i` of the store; buffers and frozen parameters have empty slots).
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    weight_decay: f32,
    slots: Vec<Vec<Vec<f32>>>,
}

impl Optimizer {
    /// An optimizer for the trainable parameters of `store`, with L2 weight decay
    /// `weight_decay` on the weights that decay ([`super::ParamKind::decays`]).
    pub fn new(kind: OptimizerKind, weight_decay: f32, store: &ParamStore) -> Optimizer {
        let slots = kind
            .slots()
            .iter()
            .map(|&s| {
                store
                    .infos()
                    .iter()
                    .map(|p| {
                        if !p.kind.trainable() {
                            Vec::new()
                        } else {
                            vec![Self::slot_init(s); p.len()]
                        }
                    })
                    .collect()
            })
            .collect();
        Optimizer {
            kind,
            weight_decay,
            slots,
        }
    }

    /// [`Optimizer::new`] with its state allocated fallibly: [`Error::OutOfMemory`]
    /// when the system refuses it (the state is as large as the parameters, one or two
    /// copies), instead of aborting.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] (or [`Error::Overflow`]) naming the parameter.
    pub fn try_new(
        kind: OptimizerKind,
        weight_decay: f32,
        store: &ParamStore,
    ) -> Result<Optimizer> {
        let mut slots = Vec::new();
        for &s in kind.slots() {
            let mut per = Vec::new();
            for p in store.infos() {
                per.push(if !p.kind.trainable() {
                    Vec::new()
                } else {
                    try_filled(&format!("{s} of {}", p.name), p.len(), Self::slot_init(s))?
                });
            }
            slots.push(per);
        }
        Ok(Optimizer {
            kind,
            weight_decay,
            slots,
        })
    }

    /// The initial value of slot `s`.
    fn slot_init(s: &str) -> f32 {
        if s == "mean_square" {
            RmsPropTf::initial_mean_square()
        } else {
            0.0
        }
    }

    /// The update rule.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// One step with learning rate `lr` on the parameters `update(i)` selects (all
    /// trainable ones by default: pass `|_| true`), using the gradients in the store.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a non-finite learning rate.
    pub fn step(
        &mut self,
        store: &mut ParamStore,
        lr: f32,
        update: impl Fn(usize) -> bool,
    ) -> Result<()> {
        let decays: Vec<bool> = store.infos().iter().map(|p| p.kind.decays()).collect();
        let trainable: Vec<bool> = store.infos().iter().map(|p| p.kind.trainable()).collect();
        for i in 0..store.len() {
            if !trainable[i] || !update(i) {
                continue;
            }
            let wd = if decays[i] { self.weight_decay } else { 0.0 };
            let (p, g) = (&mut store.values[i], &store.grads[i]);
            match self.kind {
                OptimizerKind::Sgd { momentum } => {
                    let h = SgdMomentum {
                        lr,
                        momentum,
                        weight_decay: wd,
                    };
                    k::sgd_momentum(h, p, g, &mut self.slots[0][i])?;
                }
                OptimizerKind::RmsProp {
                    decay,
                    momentum,
                    eps,
                } => {
                    let h = RmsPropTf {
                        lr,
                        decay,
                        momentum,
                        eps,
                        weight_decay: wd,
                    };
                    let (a, b) = self.slots.split_at_mut(1);
                    k::rmsprop_tf(h, p, g, &mut b[0][i], &mut a[0][i])?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors `optim.{slot}.{parameter}`.
    pub fn state(&self, store: &ParamStore) -> TensorMap {
        let mut m = TensorMap::new();
        for (s, name) in self.kind.slots().iter().enumerate() {
            for (i, p) in store.infos().iter().enumerate() {
                if p.kind.trainable() {
                    m.insert(
                        format!("optim.{name}.{}", p.name),
                        NamedTensor {
                            shape: p.shape.clone(),
                            data: self.slots[s][i].clone(),
                        },
                    );
                }
            }
        }
        m
    }

    /// Restores the state saved by [`Optimizer::state`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming a missing or misshapen tensor.
    pub fn load_state(&mut self, tensors: &TensorMap, store: &ParamStore) -> Result<()> {
        for (s, name) in self.kind.slots().iter().enumerate() {
            for (i, p) in store.infos().iter().enumerate() {
                if !p.kind.trainable() {
                    continue;
                }
                let key = format!("optim.{name}.{}", p.name);
                let t = tensors
                    .get(&key)
                    .filter(|t| t.data.len() == p.len())
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "the checkpoint has no valid optimizer state {key}"
                        ))
                    })?;
                self.slots[s][i] = t.data.clone();
            }
        }
        Ok(())
    }
}

/// The exponential moving average of every value of a store (weights and BatchNorm
/// statistics): `ema = decay·ema + (1 − decay)·value` after each step.
#[derive(Clone, Debug)]
pub struct Ema {
    /// Decay (e.g. 0.9999 for long runs).
    pub decay: f32,
    /// The averaged values, in the store's order.
    pub values: Vec<Vec<f32>>,
}

impl Ema {
    /// Starts the average at the store's current values.
    pub fn new(store: &ParamStore, decay: f32) -> Ema {
        Ema {
            decay,
            values: store.values.clone(),
        }
    }

    /// Folds the store's current values in.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a decay outside `[0, 1]`.
    pub fn update(&mut self, store: &ParamStore) -> Result<()> {
        for (e, p) in self.values.iter_mut().zip(&store.values) {
            k::ema_update(self.decay, e, p)?;
        }
        Ok(())
    }

    /// The averaged values as named tensors `ema.{parameter}` (effnet layouts).
    pub fn state(&self, store: &ParamStore) -> TensorMap {
        store
            .infos()
            .iter()
            .zip(&self.values)
            .map(|(p, v)| {
                (
                    format!("ema.{}", p.name),
                    NamedTensor {
                        shape: p.shape.clone(),
                        data: v.clone(),
                    },
                )
            })
            .collect()
    }

    /// Restores the average saved by [`Ema::state`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming a missing or misshapen tensor.
    pub fn load_state(&mut self, tensors: &TensorMap, store: &ParamStore) -> Result<()> {
        let mut s = store.clone();
        s.load(tensors, false, "ema.")?;
        self.values = s.values;
        Ok(())
    }
}
