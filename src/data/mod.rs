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
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SyntheticSplit {
    /// The generator.
    pub shapes: SyntheticShapes,
    /// First sample index.
    pub offset: u64,
    /// Number of samples.
    pub len: usize,
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
        _train: bool,
        _seed: u64,
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
        self.shapes.render_batch(&idx, res, images, labels)
    }
}
