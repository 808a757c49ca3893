//! Wall-clock time per layer kind of the network's passes, for `effnet bench model
//! --profile`. Off by default: a disabled timer costs one relaxed atomic load.
//!
//! The model layer calls its kernels one after the other (each kernel parallel inside),
//! so the time around each call is that layer's share of the step.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Turns the timers on or off (process-wide).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the timers are on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f`, adding its wall-clock time to `kind` when the timers are on.
pub fn timed<R>(kind: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    let e = t.elapsed();
    let mut m = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    let slot = m.entry(kind).or_default();
    slot.0 += e;
    slot.1 += 1;
    r
}

/// The totals so far, `(kind, time, calls)`, by decreasing time; clears them.
pub fn take() -> Vec<(&'static str, Duration, u64)> {
    let mut m = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    let mut v: Vec<_> = std::mem::take(&mut *m)
        .into_iter()
        .map(|(k, (d, n))| (k, d, n))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

/// Pointwise (1×1) convolution, forward.
pub const CONV_1X1_FWD: &str = "conv 1x1 forward";
/// Pointwise convolution, gradient of the input.
pub const CONV_1X1_BWD_D: &str = "conv 1x1 backward-data";
/// Pointwise convolution, gradient of the weight.
pub const CONV_1X1_BWD_W: &str = "conv 1x1 backward-weight";
/// Spatial (k×k depthwise or grouped) convolution, forward.
pub const CONV_KXK_FWD: &str = "conv kxk forward";
/// Spatial convolution, gradient of the input.
pub const CONV_KXK_BWD_D: &str = "conv kxk backward-data";
/// Spatial convolution, gradient of the weight.
pub const CONV_KXK_BWD_W: &str = "conv kxk backward-weight";
/// Stem convolution (3×3 stride 2 on the image), forward and weight gradient.
pub const CONV_STEM: &str = "conv stem";
/// Norm + activation, forward.
pub const NORM_FWD: &str = "norm forward";
/// Norm + activation recomputed in the backward pass (instead of stored).
pub const NORM_RECOMPUTE: &str = "norm recompute";
/// Norm + activation, backward.
pub const NORM_BWD: &str = "norm backward";
/// Squeeze-excite and gate, forward.
pub const SE_FWD: &str = "squeeze-excite forward";
/// Squeeze-excite and gate, backward (with the gated activation's recomputation).
pub const SE_BWD: &str = "squeeze-excite backward";
/// Residual add and drop-connect.
pub const RESIDUAL: &str = "residual add";
/// Head: pooling, dropout, classifier and loss (both directions).
pub const HEAD: &str = "pool + classifier + loss";
