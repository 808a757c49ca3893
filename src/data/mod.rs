//! Training data: the built-in procedural dataset, image folders, the transforms that
//! turn images into network input, and the [`Dataset`] interface the trainer reads
//! batches through.

pub mod folder;
pub mod synthetic;
pub mod transform;

pub use folder::ImageFolder;
pub use synthetic::SyntheticShapes;

use crate::error::{Error, Result};

/// A labelled image set the trainer draws batches from.
///
/// Images are written NHWC `[indices.len()][res][res][3]` `f32`, normalized (roughly
/// zero mean, unit variance per channel); labels `[indices.len()]`, each
/// `< classes()`. A batch must be a pure function of `(indices, res, train, seed)`
/// (training augmentation draws from `seed`), so that resumed training is bit-exact.
pub trait Dataset: Send + Sync {
    /// Number of samples (indices are `0..len()`).
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes.
    fn classes(&self) -> usize;

    /// Writes the samples `indices` at `res`×`res`: with training augmentation when
    /// `train` (random-resized crop and flip for image folders, drawn from `seed`),
    /// with the evaluation transform otherwise (resize and centre crop).
    ///
    /// # Errors
    /// Unreadable samples, wrong buffer lengths, an index `>= len()`.
    fn batch(
        &self,
        indices: &[usize],
        res: usize,
        train: bool,
        seed: u64,
        images: &mut [f32],
        labels: &mut [usize],
    ) -> Result<()>;
}

/// A contiguous range of [`SyntheticShapes`] samples: `len` samples starting at
/// `offset` (training and evaluation sets use disjoint ranges). The procedural images
/// need no augmentation, so `train` and `seed` are ignored.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct SyntheticSplit {
    /// The generator.
    pub shapes: SyntheticShapes,
    /// First sample index.
    pub offset: u64,
    /// Number of samples.
    pub len: usize,
    /// Random square crops in training batches: each training sample is drawn through
    /// a window covering at least this fraction of the image ([`synthetic::View`]),
    /// so that the network sees the patterns over a range of scales (1 = the whole
    /// image, no augmentation). Evaluation batches always draw the whole image.
    pub crop_min_area: f32,
}

impl SyntheticSplit {
    /// The default `crop_min_area` of `effnet train`'s training split: windows of at
    /// least half the image (sides from 0.71 to 1), so objects appear up to 1.4× larger
    /// than in the whole image (about the zoom from the 48×48 training resolution to the
    /// 80×80 test resolution of the default; a quarter of the image at 32×32 left too
    /// little of a pattern to train on, see BENCHMARKS.md, issue 16).
    pub const TRAIN_CROP_MIN_AREA: f32 = 0.5;
}

impl Dataset for SyntheticSplit {
    fn len(&self) -> usize {
        self.len
    }

    fn classes(&self) -> usize {
        self.shapes.classes()
    }

    fn batch(
        &self,
        indices: &[usize],
        res: usize,
        train: bool,
        seed: u64,
        images: &mut [f32],
        labels: &mut [usize],
    ) -> Result<()> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len) {
            return Err(Error::InvalidArgument(format!(
                "sample {bad} is out of range for {} samples",
                self.len
            )));
        }
        let idx: Vec<u64> = indices.iter().map(|&i| self.offset + i as u64).collect();
        let crop = (train && self.crop_min_area < 1.0).then_some((seed, self.crop_min_area));
        self.shapes.render_batch(&idx, res, crop, images, labels)
    }
}

/// A view of some samples of another [`Dataset`]: sample `i` of the view is sample
/// `indices[i]` of `inner` (e.g. the training or held-out part of one image folder).
#[derive(Clone, Debug)]
pub struct Subset<D> {
    inner: D,
    indices: Vec<usize>,
}

impl<D: Dataset> Subset<D> {
    /// The samples `indices` of `inner`, in that order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an index `>= inner.len()`.
    pub fn new(inner: D, indices: Vec<usize>) -> Result<Subset<D>> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::InvalidArgument(format!(
                "sample {bad} is out of range for {} samples",
                inner.len()
            )));
        }
        Ok(Subset { inner, indices })
    }

    /// The indices into the inner dataset.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn classes(&self) -> usize {
        self.inner.classes()
    }

    fn batch(
        &self,
        indices: &[usize],
        res: usize,
        train: bool,
        seed: u64,
        images: &mut [f32],
        labels: &mut [usize],
    ) -> Result<()> {
        let idx = indices
            .iter()
            .map(|&i| {
                self.indices.get(i).copied().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "sample {i} is out of range for {} samples",
                        self.indices.len()
                    ))
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        self.inner.batch(&idx, res, train, seed, images, labels)
    }
}

/// A deterministic held-out split of samples grouped by class: `labels[i]` is the
/// class of sample `i` (samples of a class need not be contiguous). From each class
/// of `m` samples, `h = round(m·fraction)` samples (at least 1 when `m ≥ 2`, and at
/// most `m − 1`) evenly spaced through the class (the `⌊(j + ½)·m / h⌋`-th, `j < h`)
/// go to the second list; the rest go to the first. Both lists are in increasing
/// order. No randomness: the split depends only on the labels and `fraction`.
///
/// # Errors
/// [`Error::InvalidArgument`] when `fraction` is not in `(0, 1)` or a class has a
/// single sample (it cannot be both trained on and evaluated).
pub fn holdout_split(
    labels: &[usize],
    classes: usize,
    fraction: f64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::InvalidArgument(format!(
            "held-out fraction {fraction} is outside (0, 1)"
        )));
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        members
            .get_mut(l)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("label {l} of sample {i} is >= {classes}"))
            })?
            .push(i);
    }
    let mut held = vec![false; labels.len()];
    for (c, m) in members.iter().enumerate() {
        if m.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "class {c} has {} sample(s); a held-out split needs at least 2 per class",
                m.len()
            )));
        }
        let h = ((m.len() as f64 * fraction).round() as usize).clamp(1, m.len() - 1);
        for j in 0..h {
            held[m[(2 * j + 1) * m.len() / (2 * h)]] = true;
        }
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, &h) in held.iter().enumerate() {
        if h { &mut eval } else { &mut train }.push(i);
    }
    Ok((train, eval))
}
