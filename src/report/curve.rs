//! The loss/accuracy curve of a training run, drawn as a PNG: training loss per step
//! (raw, and smoothed when there are enough steps) in the upper panel, evaluation
//! accuracy in the lower one, on a shared step axis, with optional dashed marks at
//! stage boundaries (e.g. the start of fine-tuning).
//!
//! The picture is rasterized here, with a built-in 5×7 pixel font for the axis
//! labels, and encoded with the `png` crate: no plotting library and no font files.

use super::canvas::{Canvas, Panel};
pub use super::canvas::{encode_png, fmt_tick, nice_ticks};
use crate::error::{Error, Result};
use std::path::Path;

/// The history of a run: one loss per training step, accuracies measured after given
/// steps, and marked steps.
///
/// ```
/// use effnet::report::Curve;
/// let mut c = Curve::new();
/// for step in 0..50 {
///     c.push_loss(2.0 / (1.0 + step as f32 / 10.0));
/// }
/// c.push_eval(50, 0.62);
/// let rgb = c.render(400, 300).unwrap();
/// assert_eq!(rgb.len(), 400 * 300 * 3);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curve {
    losses: Vec<f32>,
    evals: Vec<(u64, f32)>,
    marks: Vec<u64>,
}

/// Smallest picture [`Curve::render`] draws.
pub const MIN_SIZE: (usize, usize) = (200, 150);
/// Largest picture [`Curve::render`] draws (per side).
pub const MAX_SIDE: usize = 8192;

const AXIS: [u8; 3] = [60, 60, 60];
const GRID: [u8; 3] = [225, 225, 225];
const TEXT: [u8; 3] = [30, 30, 30];
const MARK: [u8; 3] = [150, 150, 150];
/// Colour of the raw loss (light) and of the smoothed loss (dark).
pub const LOSS_RAW: [u8; 3] = [160, 190, 230];
/// Colour of the smoothed loss.
pub const LOSS_SMOOTH: [u8; 3] = [20, 70, 170];
/// Colour of the accuracy line and markers.
pub const ACCURACY: [u8; 3] = [220, 100, 20];

impl Curve {
    /// An empty history.
    pub fn new() -> Curve {
        Curve::default()
    }

    /// Appends the training loss of the next step.
    pub fn push_loss(&mut self, loss: f32) {
        self.losses.push(loss);
    }

    /// Records an evaluation accuracy (a fraction in `[0, 1]`) measured after `step`
    /// training steps.
    pub fn push_eval(&mut self, step: u64, accuracy: f32) {
        self.evals.push((step, accuracy));
    }

    /// Marks `step` (drawn as a dashed vertical line), e.g. where a stage begins.
    pub fn push_mark(&mut self, step: u64) {
        self.marks.push(step);
    }

    /// The losses, one per step.
    pub fn losses(&self) -> &[f32] {
        &self.losses
    }

    /// The evaluations, `(step, accuracy)`.
    pub fn evals(&self) -> &[(u64, f32)] {
        &self.evals
    }

    /// The marked steps.
    pub fn marks(&self) -> &[u64] {
        &self.marks
    }

    /// The history as text, one record a line (`loss V`, `eval STEP ACC`, `mark
    /// STEP`), exact for every `f32`, e.g. to keep it in a checkpoint's metadata.
    pub fn to_text(&self) -> String {
        let mut s = String::from("effnet-curve 1\n");
        for l in &self.losses {
            s.push_str(&format!("loss {l:?}\n"));
        }
        for (step, a) in &self.evals {
            s.push_str(&format!("eval {step} {a:?}\n"));
        }
        for m in &self.marks {
            s.push_str(&format!("mark {m}\n"));
        }
        s
    }

    /// Parses [`Curve::to_text`]'s output.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first line that does not parse.
    pub fn from_text(text: &str) -> Result<Curve> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("effnet-curve 1") {
            return Err(Error::InvalidArgument(
                "curve history: missing the `effnet-curve 1` header".into(),
            ));
        }
        let mut c = Curve::new();
        for (n, line) in lines.enumerate() {
            let bad = || {
                Error::InvalidArgument(format!(
                    "curve history line {}: cannot parse {line:?}",
                    n + 2
                ))
            };
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [] => {}
                ["loss", v] => c.losses.push(v.parse().map_err(|_| bad())?),
                ["eval", s, a] => c
                    .evals
                    .push((s.parse().map_err(|_| bad())?, a.parse().map_err(|_| bad())?)),
                ["mark", s] => c.marks.push(s.parse().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        Ok(c)
    }

    /// Draws the curve as a `width`×`height` RGB picture (`[height][width][3]` bytes).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a size below [`MIN_SIZE`] or above [`MAX_SIDE`].
    pub fn render(&self, width: usize, height: usize) -> Result<Vec<u8>> {
        if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(Error::InvalidArgument(format!(
                "curve picture of {width}×{height} pixels: sides must be {}–{MAX_SIDE} × {}–{MAX_SIDE}",
                MIN_SIZE.0, MIN_SIZE.1
            )));
        }
        let mut c = Canvas::new(width, height);
        let s = (width.min(height) / 400).max(1); // text scale
        let (cw, ch) = (6 * s, 8 * s); // character cell

        // Step axis: loss k (0-based) is drawn after k + 1 steps.
        let x_max = (self.losses.len() as u64)
            .max(self.evals.iter().map(|e| e.0).max().unwrap_or(0))
            .max(self.marks.iter().copied().max().unwrap_or(0))
            .max(1) as f64;
        let x_ticks = nice_ticks(0.0, x_max, (width / (cw * 8)).clamp(2, 10));

        // Loss range: 0 (or the minimum, if negative) to the 99th percentile, so that
        // one spike does not flatten the curve.
        let mut finite: Vec<f32> = self
            .losses
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        finite.sort_by(f32::total_cmp);
        let lo = finite.first().map_or(0.0, |&v| (v as f64).min(0.0));
        let hi = finite
            .get(((finite.len().max(1) - 1) as f64 * 0.99) as usize)
            .map_or(1.0, |&v| v as f64);
        let hi = if hi > lo {
            lo + (hi - lo) * 1.05
        } else {
            lo + 1.0
        };
        let y_ticks = nice_ticks(lo, hi, 5);
        let y_hi = *y_ticks.last().unwrap_or(&hi);
        let y_hi = if y_hi > lo { y_hi } else { hi };

        let loss_labels: Vec<String> = y_ticks.iter().map(|&v| fmt_tick(v, &y_ticks)).collect();
        let label_w = loss_labels
            .iter()
            .map(String::len)
            .chain([4]) // "100%"
            .max()
            .unwrap_or(4);
        let left = label_w * cw + 10 * s;
        let right = width - 1 - (4 * cw + 4 * s); // room for half the last x label
        let title_h = ch + 8 * s;
        let xlab_h = 2 * ch + 10 * s;
        let avail = height.saturating_sub(2 * title_h + xlab_h + 4 * s);
        let top1 = title_h;
        let h1 = avail * 3 / 5;
        let top2 = top1 + h1 + title_h;
        let h2 = avail - h1;
        // Quarter ticks when the panel has room for them, else halves.
        let acc_ticks: &[f64] = if h2 >= 10 * ch {
            &[0.0, 25.0, 50.0, 75.0, 100.0]
        } else {
            &[0.0, 50.0, 100.0]
        };
        let panels = [
            Panel::new(left, top1, right, top1 + h1, 0.0, x_max, lo, y_hi),
            Panel::new(left, top2, right, top2 + h2, 0.0, x_max, 0.0, 100.0),
        ];

        // Grids, ticks and labels.
        for (k, p) in panels.iter().enumerate() {
            for &t in &x_ticks {
                let x = p.px(t);
                c.vline(x, p.top, p.bottom, GRID, 1);
            }
            let (ticks, labels): (Vec<f64>, Vec<String>) = if k == 0 {
                (y_ticks.clone(), loss_labels.clone())
            } else {
                (
                    acc_ticks.to_vec(),
                    acc_ticks.iter().map(|v| format!("{v:.0}%")).collect(),
                )
            };
            for (t, label) in ticks.iter().zip(&labels) {
                let y = p.py(*t);
                c.hline(p.left, p.right, y, GRID, 1);
                let tw = label.len() * cw;
                c.text(
                    p.left.saturating_sub(tw + 5 * s),
                    y.saturating_sub(ch / 2),
                    label,
                    s,
                    TEXT,
                );
            }
            for &m in &self.marks {
                c.dashed_vline(p.px(m as f64), p.top, p.bottom, MARK, s);
            }
            c.rect_outline(p.left, p.top, p.right, p.bottom, AXIS);
        }
        c.text(left, top1 - ch - 4 * s, "train loss", s, LOSS_SMOOTH);
        c.text(left, top2 - ch - 4 * s, "eval accuracy", s, ACCURACY);
        let bottom = panels[1].bottom;
        for &t in &x_ticks {
            let label = fmt_tick(t, &x_ticks);
            let x = panels[1].px(t);
            c.text(
                x.saturating_sub(label.len() * cw / 2),
                bottom + 4 * s,
                &label,
                s,
                TEXT,
            );
        }
        // The axis name, centred under the tick labels.
        c.text(
            (left + right) / 2 - 2 * cw,
            bottom + 6 * s + ch,
            "step",
            s,
            TEXT,
        );

        // Loss: raw, then smoothed on top when there are enough points.
        let p = &panels[0];
        let raw: Vec<(f64, f64)> = self
            .losses
            .iter()
            .enumerate()
            .map(|(k, &v)| ((k + 1) as f64, v as f64))
            .collect();
        let n = raw.len();
        if n >= 20 {
            c.polyline(p, &raw, LOSS_RAW, s);
            // Centred moving average over about n/25 steps (no lag), of the finite
            // values in the window.
            let half = n / 50;
            let mut sum = vec![0.0f64; n + 1];
            let mut cnt = vec![0usize; n + 1];
            for (k, &(_, v)) in raw.iter().enumerate() {
                let ok = v.is_finite();
                sum[k + 1] = sum[k] + if ok { v } else { 0.0 };
                cnt[k + 1] = cnt[k] + ok as usize;
            }
            let smooth: Vec<(f64, f64)> = (0..n)
                .map(|k| {
                    let (a, b) = (k.saturating_sub(half), (k + half + 1).min(n));
                    let m = cnt[b] - cnt[a];
                    let v = if m > 0 && raw[k].1.is_finite() {
                        (sum[b] - sum[a]) / m as f64
                    } else {
                        f64::NAN
                    };
                    (raw[k].0, v)
                })
                .collect();
            c.polyline(p, &smooth, LOSS_SMOOTH, 2 * s);
        } else {
            c.polyline(p, &raw, LOSS_SMOOTH, 2 * s);
        }

        // Accuracy: line and markers.
        let p = &panels[1];
        let acc: Vec<(f64, f64)> = self
            .evals
            .iter()
            .map(|&(step, a)| (step as f64, (a as f64 * 100.0).clamp(0.0, 100.0)))
            .collect();
        c.polyline(p, &acc, ACCURACY, 2 * s);
        for &(x, y) in &acc {
            if y.is_finite() {
                c.square(p.px(x), p.py(y), 3 * s, ACCURACY, p);
            }
        }
        Ok(c.pixels)
    }

    /// Draws the curve ([`Curve::render`]) and writes it to `path` as an 8-bit RGB PNG,
    /// atomically (temporary file, then rename).
    ///
    /// # Errors
    /// As [`Curve::render`]; [`Error::Io`] when the file cannot be written.
    pub fn save_png(&self, path: &Path, width: usize, height: usize) -> Result<()> {
        let rgb = self.render(width, height)?;
        let bytes = encode_png(&rgb, width, height)?;
        crate::io::write_atomic(path, &bytes)
    }
}
