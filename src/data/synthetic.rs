//! A procedurally generated image-classification dataset that needs spatial features:
//! stripes of four orientations, checkerboards, rings, discs and squares, each drawn
//! with random colours, frequency, phase, position and noise. Colour statistics alone
//! do not separate the classes; orientation, periodicity and shape do.
//!
//! Every image is a pure function of `(seed, index)` and is drawn in continuous
//! coordinates, so the same sample can be rendered at the training resolution and at
//! the (higher) fine-tuning resolution.

use crate::error::{Error, Result, check_len};
use rayon::prelude::*;
use std::f32::consts::TAU;

/// The class names, in label order.
pub const CLASS_NAMES: [&str; 8] = [
    "horizontal-stripes",
    "vertical-stripes",
    "rising-diagonal",
    "falling-diagonal",
    "checkerboard",
    "rings",
    "disc",
    "square",
];

/// The dataset: `classes` (2–8) of the patterns in [`CLASS_NAMES`], drawn from `seed`.
///
/// ```
/// use effnet::data::SyntheticShapes;
/// let ds = SyntheticShapes::new(8, 42).unwrap();
/// let mut img = vec![0.0f32; 32 * 32 * 3];
/// let label = ds.render(7, 32, &mut img).unwrap();
/// assert_eq!(label, ds.label(7));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SyntheticShapes {
    classes: usize,
    seed: u64,
}

/// SplitMix64 step: a stateless hash of a 64-bit counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A tiny deterministic stream of uniforms in [0, 1).
struct Stream(u64);
impl Stream {
    fn next(&mut self) -> f32 {
        self.0 = mix(self.0);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next()
    }
}

impl SyntheticShapes {
    /// The number of patterns available.
    pub const MAX_CLASSES: usize = CLASS_NAMES.len();

    /// A dataset of `classes` classes (2 to [`Self::MAX_CLASSES`]).
    pub fn new(classes: usize, seed: u64) -> Result<SyntheticShapes> {
        if !(2..=Self::MAX_CLASSES).contains(&classes) {
            return Err(Error::InvalidArgument(format!(
                "the synthetic dataset has 2 to {} classes, not {classes}",
                Self::MAX_CLASSES
            )));
        }
        Ok(SyntheticShapes { classes, seed })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The label of sample `index` (balanced: consecutive indices cycle through the
    /// classes in a seed-dependent order).
    pub fn label(&self, index: u64) -> usize {
        let round = index / self.classes as u64;
        let offset = (mix(self.seed ^ round.wrapping_mul(0xA24B_AED4_963E_E407))
            % self.classes as u64) as usize;
        ((index % self.classes as u64) as usize + offset) % self.classes
    }

    /// Draws sample `index` at `res`×`res` into `out` (NHWC `[res][res][3]`, roughly
    /// zero mean and unit variance per channel) and returns its label.
    pub fn render(&self, index: u64, res: usize, out: &mut [f32]) -> Result<usize> {
        self.render_view(index, res, View::FULL, out)
    }

    /// [`SyntheticShapes::render`] of the square window `view` of the sample, scaled
    /// to `res`×`res` (drawn in continuous coordinates: a window of half the side has
    /// the detail of the whole image at twice the resolution).
    pub fn render_view(
        &self,
        index: u64,
        res: usize,
        view: View,
        out: &mut [f32],
    ) -> Result<usize> {
        if res == 0 {
            return Err(Error::InvalidArgument("resolution 0".into()));
        }
        if !(view.side > 0.0 && view.side <= 1.0 && view.left.is_finite() && view.top.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "view {view:?}: the side must be in (0, 1]"
            )));
        }
        check_len("image", out.len(), res * res * 3)?;
        let label = self.label(index);
        let mut r = Stream(mix(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ index));
        let fg: [f32; 3] = [r.next(), r.next(), r.next()];
        // Keep the two colours apart so the pattern is always visible.
        let bg: [f32; 3] = std::array::from_fn(|c| (fg[c] + r.range(0.35, 0.65)) % 1.0);
        let freq = r.range(2.0, 5.0);
        let phase = r.range(0.0, TAU);
        let (cx, cy) = (r.range(0.3, 0.7), r.range(0.3, 0.7));
        let size = r.range(0.15, 0.3);
        let noise_seed = mix(r.0);
        let inv = view.side / res as f32;
        // Pixels per unit of the image: the edge of a disc or square is one pixel wide.
        let px_per_unit = res as f32 / view.side;
        for y in 0..res {
            for x in 0..res {
                let (u, v) = (
                    view.left + (x as f32 + 0.5) * inv,
                    view.top + (y as f32 + 0.5) * inv,
                );
                let wave = |t: f32| 0.5 + 0.5 * (TAU * freq * t + phase).sin();
                let p = match label {
                    0 => wave(v),
                    1 => wave(u),
                    2 => wave((u + v) * std::f32::consts::FRAC_1_SQRT_2),
                    3 => wave((u - v) * std::f32::consts::FRAC_1_SQRT_2),
                    4 => {
                        let s = (TAU * freq * 0.5 * u).sin() * (TAU * freq * 0.5 * v).sin();
                        if s > 0.0 { 1.0 } else { 0.0 }
                    }
                    5 => wave(((u - cx).powi(2) + (v - cy).powi(2)).sqrt()),
                    6 => {
                        let d = ((u - cx).powi(2) + (v - cy).powi(2)).sqrt();
                        (((size - d) * px_per_unit) + 0.5).clamp(0.0, 1.0)
                    }
                    _ => {
                        let d = (u - cx).abs().max((v - cy).abs());
                        (((size * 0.85 - d) * px_per_unit) + 0.5).clamp(0.0, 1.0)
                    }
                };
                let px = &mut out[(y * res + x) * 3..(y * res + x) * 3 + 3];
                for c in 0..3 {
                    let h = mix(noise_seed ^ ((y * res + x) * 3 + c) as u64);
                    let noise = ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.3;
                    let value = bg[c] + (fg[c] - bg[c]) * p + noise;
                    px[c] = (value - 0.5) / 0.3;
                }
            }
        }
        Ok(label)
    }

    /// Draws the samples `indices` into `images` (NHWC `[indices.len()][res][res][3]`)
    /// and their labels into `labels`, in parallel; with `crop = Some((seed,
    /// min_area))`, each sample through its own random window ([`View::random`]).
    pub fn render_batch(
        &self,
        indices: &[u64],
        res: usize,
        crop: Option<(u64, f32)>,
        images: &mut [f32],
        labels: &mut [usize],
    ) -> Result<()> {
        let per = res
            .checked_mul(res)
            .and_then(|v| v.checked_mul(3))
            .ok_or_else(|| Error::Overflow("image size".into()))?;
        check_len("images", images.len(), indices.len() * per)?;
        check_len("labels", labels.len(), indices.len())?;
        if res == 0 {
            return Err(Error::InvalidArgument("resolution 0".into()));
        }
        images
            .par_chunks_mut(per)
            .zip(labels.par_iter_mut())
            .zip(indices.par_iter())
            .try_for_each(|((img, l), &i)| {
                let view = match crop {
                    Some((seed, min_area)) => View::random(mix(seed) ^ i, min_area),
                    None => View::FULL,
                };
                *l = self.render_view(i, res, view, img)?;
                Ok(())
            })
    }
}

/// A square window of a synthetic image, in fractions of the image's side.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct View {
    /// Left edge (0 = the image's left edge).
    pub left: f32,
    /// Top edge.
    pub top: f32,
    /// Side (1 = the whole image).
    pub side: f32,
}

impl View {
    /// The whole image.
    pub const FULL: View = View {
        left: 0.0,
        top: 0.0,
        side: 1.0,
    };

    /// A random square window inside the image covering a uniform fraction in
    /// `[min_area, 1]` of its area (clamped to `[0.01, 1]`), anywhere inside it: the
    /// random-resized-crop augmentation of ImageNet training, square so that stripe
    /// orientations keep their angle. A pure function of `seed`.
    ///
    /// ```
    /// use effnet::data::synthetic::View;
    /// let v = View::random(7, 0.25);
    /// assert!(v.side >= 0.5 && v.side <= 1.0);
    /// assert!(v.left >= 0.0 && v.left + v.side <= 1.0 + 1e-6);
    /// assert_eq!(v, View::random(7, 0.25));
    /// ```
    pub fn random(seed: u64, min_area: f32) -> View {
        let min_area = if min_area.is_finite() {
            min_area.clamp(0.01, 1.0)
        } else {
            1.0
        };
        let mut r = Stream(mix(seed ^ 0x7C15_9E37_79B9_4A7C));
        let side = r.range(min_area, 1.0).sqrt().min(1.0);
        let room = 1.0 - side;
        View {
            left: r.next() * room,
            top: r.next() * room,
            side,
        }
    }
}
