//! Learning-rate schedules: linear warmup, then exponential decay (the paper: ×0.97
//! every 2.4 epochs, counted from the start as TensorFlow's staircase decay does) or
//! cosine decay.

use crate::error::{Error, Result};

/// The decay after warmup.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Decay {
    /// `lr = base·rate^⌊epoch / every⌋`.
    Exponential {
        /// Factor per period (0.97).
        rate: f64,
        /// Period in epochs (2.4).
        every: f64,
    },
    /// `lr = base·½(1 + cos(π·(epoch − warmup)/(total − warmup)))`.
    Cosine {
        /// Epochs of the whole run.
        total: f64,
    },
    /// `lr = base`.
    Constant,
}

/// A learning-rate schedule over fractional epochs.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate.
    pub base: f64,
    /// Linear warmup from 0 over this many epochs.
    pub warmup: f64,
    /// Decay.
    pub decay: Decay,
}

impl Schedule {
    /// The paper's: warmup then ×0.97 every 2.4 epochs.
    pub fn paper(base: f64, warmup: f64) -> Schedule {
        Schedule {
            base,
            warmup,
            decay: Decay::Exponential {
                rate: 0.97,
                every: 2.4,
            },
        }
    }

    /// Checks the numbers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a negative or non-finite value.
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        let decay_ok = match self.decay {
            Decay::Exponential { rate, every } => ok(rate) && every > 0.0 && every.is_finite(),
            Decay::Cosine { total } => ok(total),
            Decay::Constant => true,
        };
        if ok(self.base) && ok(self.warmup) && decay_ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "invalid learning-rate schedule {self:?}"
            )))
        }
    }

    /// The learning rate at `epoch` (fractional: `step / steps_per_epoch`).
    pub fn lr(&self, epoch: f64) -> f32 {
        if epoch < self.warmup {
            return (self.base * epoch / self.warmup) as f32;
        }
        let v = match self.decay {
            Decay::Exponential { rate, every } => self.base * rate.powf((epoch / every).floor()),
            Decay::Cosine { total } => {
                let span = (total - self.warmup).max(1e-9);
                let t = ((epoch - self.warmup) / span).clamp(0.0, 1.0);
                0.5 * self.base * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Decay::Constant => self.base,
        };
        v as f32
    }
}
