//! A whole network prepared for timing: the network, its prepared inference plan, and a
//! deterministic batch of images and labels. `effnet bench model` and `effnet bench
//! study` time the same steps.

use crate::arch::ArchConfig;
use crate::error::{Result, checked_product, try_with_capacity};
use crate::kernels::loss::Targets;
use crate::model::{InferencePlan, Network, Pass};
use std::time::{Duration, Instant};

/// How inference is run.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InferMode {
    /// The prepared network ([`Network::plan_inference`]: norms folded, epilogues
    /// fused, weights packed once), depth-first bands chosen for this machine.
    Prepared,
    /// The prepared network with depth-first bands of this many bytes (`usize::MAX`:
    /// none).
    PreparedBands(usize),
    /// The layer-by-layer forward pass ([`Network::predict`]).
    Unfused,
}

/// One network at one batch and resolution, ready to run inference and training steps.
///
/// ```no_run
/// use effnet::arch::ArchConfig;
/// use effnet::bench::network::{InferMode, NetworkCase};
/// let cfg = ArchConfig::from_name("b0_g16_gn").unwrap();
/// let mut case = NetworkCase::new(&cfg, 8, 160, Some(InferMode::Prepared)).unwrap();
/// let t = case.time_train(2, false).unwrap();
/// println!("{:.1} img/s", t.best_img_per_s());
/// ```
pub struct NetworkCase {
    /// The network (weights from seed 0).
    pub net: Network,
    cfg: ArchConfig,
    prepared: Option<InferencePlan>,
    x: Vec<f32>,
    labels: Vec<usize>,
    batch: usize,
    res: usize,
}

/// Wall times of the timed steps of one mode (after one untimed warm-up step).
#[derive(Clone, Debug, PartialEq)]
pub struct StepTimes {
    /// Images per step.
    pub batch: usize,
    /// Each timed step's wall time, in order.
    pub steps: Vec<Duration>,
}

impl StepTimes {
    /// Total wall time of the timed steps.
    pub fn total(&self) -> Duration {
        self.steps.iter().sum()
    }

    /// Images per second over all timed steps.
    pub fn mean_img_per_s(&self) -> f64 {
        let s = self.total().as_secs_f64();
        if s > 0.0 {
            (self.steps.len() * self.batch) as f64 / s
        } else {
            0.0
        }
    }

    /// Images per second of the fastest step (the least disturbed by other work on a
    /// shared machine).
    pub fn best_img_per_s(&self) -> f64 {
        match self.steps.iter().min() {
            Some(d) if d.as_secs_f64() > 0.0 => self.batch as f64 / d.as_secs_f64(),
            _ => 0.0,
        }
    }
}

impl NetworkCase {
    /// Builds `cfg` (weights from seed 0) for batches of `batch` images of
    /// `res`×`res`, and its inference plan when `infer` asks for a prepared one.
    ///
    /// # Errors
    /// As [`Network::new`] and [`Network::plan_inference`]; [`crate::Error::OutOfMemory`]
    /// when the images do not fit.
    pub fn new(
        cfg: &ArchConfig,
        batch: usize,
        res: usize,
        infer: Option<InferMode>,
    ) -> Result<NetworkCase> {
        let net = Network::new(cfg, 0)?;
        let len = checked_product("the images", &[batch, res, res, 3])?;
        let mut x = try_with_capacity("the images", len)?;
        x.extend((0..len).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0));
        let labels = (0..batch).map(|i| i % cfg.num_classes).collect();
        let prepared = match infer {
            None | Some(InferMode::Unfused) => None,
            Some(InferMode::Prepared) => Some(net.plan_inference(batch, res)?),
            Some(InferMode::PreparedBands(b)) => Some(net.plan_inference_with(batch, res, b)?),
        };
        Ok(NetworkCase {
            net,
            cfg: cfg.clone(),
            prepared,
            x,
            labels,
            batch,
            res,
        })
    }

    /// The prepared inference plan, when one was made.
    pub fn prepared(&self) -> Option<&InferencePlan> {
        self.prepared.as_ref()
    }

    /// One inference step: the prepared plan when there is one, else the layer-by-layer
    /// forward pass.
    ///
    /// # Errors
    /// As the pass run.
    pub fn infer(&mut self) -> Result<()> {
        match self.prepared.as_mut() {
            Some(p) => p.run(&self.x).map(|_| ()),
            None => self.net.predict(&self.x, self.batch, self.res).map(|_| ()),
        }
    }

    /// One training step's forward and backward pass (loss and every gradient, label
    /// smoothing 0.1, the architecture's dropout; no optimizer update), backward
    /// through the head only with `head_only`. The tape's buffers are recycled.
    ///
    /// # Errors
    /// As [`Network::loss_and_grad`].
    pub fn train(&mut self, head_only: bool) -> Result<()> {
        let pass = Pass {
            head_only,
            ..Pass::train(&self.cfg, 1)
        };
        let (_, tape) = self.net.loss_and_grad(
            &self.x,
            self.batch,
            self.res,
            Targets::Labels(&self.labels),
            0.1,
            &pass,
        )?;
        self.net.recycle(tape);
        Ok(())
    }

    /// One untimed warm-up step of `step`, then `iters` timed ones.
    fn time(
        &mut self,
        iters: usize,
        mut step: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<StepTimes> {
        step(self)?;
        let mut steps = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            step(self)?;
            steps.push(t.elapsed());
        }
        Ok(StepTimes {
            batch: self.batch,
            steps,
        })
    }

    /// Times [`NetworkCase::infer`]: one warm-up step, then `iters` timed steps.
    ///
    /// # Errors
    /// As [`NetworkCase::infer`].
    pub fn time_infer(&mut self, iters: usize) -> Result<StepTimes> {
        self.time(iters, Self::infer)
    }

    /// Times [`NetworkCase::train`]: one warm-up step, then `iters` timed steps.
    ///
    /// # Errors
    /// As [`NetworkCase::train`].
    pub fn time_train(&mut self, iters: usize, head_only: bool) -> Result<StepTimes> {
        self.time(iters, |c| c.train(head_only))
    }
}
