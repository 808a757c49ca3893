//! A training progress bar: steps done, running loss, throughput and time left, drawn
//! on standard error (with `indicatif`) only when standard error is a terminal and the
//! caller is not quiet. The statistics are kept either way.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Weight of the past in the running loss (an exponential moving average with bias
/// correction, so the first steps are not pulled towards zero).
pub const LOSS_SMOOTHING: f64 = 0.9;

/// Statistics of a finished (or ongoing) stage.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Summary {
    /// Steps taken.
    pub steps: u64,
    /// Images processed.
    pub images: u64,
    /// Wall-clock seconds since the stage started.
    pub seconds: f64,
    /// Images per second over the whole stage.
    pub images_per_second: f64,
    /// The running (smoothed) loss, `None` before the first step.
    pub running_loss: Option<f32>,
}

/// The progress of one training stage of `total` steps.
///
/// ```
/// use effnet::report::Progress;
/// let mut p = Progress::new(3, "train", true); // quiet: nothing is drawn
/// for loss in [2.0, 1.5, 1.0] {
///     p.step(16, loss);
/// }
/// let s = p.finish();
/// assert_eq!((s.steps, s.images), (3, 48));
/// assert!(s.running_loss.unwrap() < 1.5);
/// ```
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    steps: u64,
    images: u64,
    /// Biased moving average and the weight of its bias (`1 − β^steps`).
    ema: f64,
    ema_weight: f64,
}

impl Progress {
    /// A progress bar labelled `stage` for `total` steps, drawn on standard error
    /// unless `quiet` is set or standard error is not a terminal (a file, a pipe, CI).
    pub fn new(total: u64, stage: &str, quiet: bool) -> Progress {
        let visible = !quiet && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self::with_target(total, stage, target)
    }

    /// A progress bar that is never drawn (statistics only).
    pub fn hidden(total: u64, stage: &str) -> Progress {
        Self::with_target(total, stage, ProgressDrawTarget::hidden())
    }

    fn with_target(total: u64, stage: &str, target: ProgressDrawTarget) -> Progress {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise} < {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total), target)
            .with_style(style)
            .with_prefix(stage.to_string());
        Progress {
            bar,
            started: Instant::now(),
            steps: 0,
            images: 0,
            ema: 0.0,
            ema_weight: 0.0,
        }
    }

    /// Whether the bar is drawn.
    pub fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Records one step over `images` images with training loss `loss`, and redraws
    /// (indicatif limits the redraw rate).
    pub fn step(&mut self, images: usize, loss: f32) {
        self.steps += 1;
        self.images += images as u64;
        self.ema = LOSS_SMOOTHING * self.ema + (1.0 - LOSS_SMOOTHING) * loss as f64;
        self.ema_weight = LOSS_SMOOTHING * self.ema_weight + (1.0 - LOSS_SMOOTHING);
        if self.is_visible() {
            let loss = self.running_loss().unwrap_or(f32::NAN);
            self.bar.set_message(format!(
                "loss {loss:.4}  {:.1} img/s",
                self.images_per_second()
            ));
            self.bar.inc(1);
        } else {
            self.bar.set_position(self.steps);
        }
    }

    /// Shows `msg` beside the bar (e.g. what the next step works on).
    pub fn set_message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    /// Records one step that has no loss (e.g. one case of a benchmark sweep) over
    /// `images` images.
    pub fn advance(&mut self, images: usize) {
        self.steps += 1;
        self.images += images as u64;
        self.bar.set_position(self.steps);
    }

    /// Steps recorded.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Images recorded.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// Time since the stage started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Images per second since the stage started (0 before the first step).
    pub fn images_per_second(&self) -> f64 {
        let s = self.elapsed().as_secs_f64();
        if self.images == 0 || s <= 0.0 {
            0.0
        } else {
            self.images as f64 / s
        }
    }

    /// The smoothed loss: an exponential moving average (past weight
    /// [`LOSS_SMOOTHING`]) divided by its total weight; `None` before the first step.
    pub fn running_loss(&self) -> Option<f32> {
        (self.steps > 0).then(|| (self.ema / self.ema_weight) as f32)
    }

    /// Runs `f` (e.g. a `println!`) with the bar cleared, then redraws it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// The statistics so far.
    pub fn summary(&self) -> Summary {
        Summary {
            steps: self.steps,
            images: self.images,
            seconds: self.elapsed().as_secs_f64(),
            images_per_second: self.images_per_second(),
            running_loss: self.running_loss(),
        }
    }

    /// Clears the bar and returns the stage's statistics.
    pub fn finish(self) -> Summary {
        let s = self.summary();
        self.bar.finish_and_clear();
        s
    }
}
