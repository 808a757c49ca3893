//! A dataset read from a folder of images, one subfolder per class.
//!
//! ```text
//! DIR/
//!   cat/  a.jpg  b.png  more/c.jpeg
//!   dog/  d.JPG  …
//! ```
//!
//! Classes are the subfolders of `DIR`, in sorted (byte) order: label `k` is the `k`-th
//! name. Samples are the PNG and JPEG files (by extension `.png`, `.jpg`, `.jpeg`, any
//! case) found in each class folder and its subfolders, sorted by path within a class;
//! other files and hidden entries (names starting with `.`) are ignored. Sample
//! indices run class by class.
//!
//! Only the file list is held in memory: images are decoded when a batch asks for
//! them, in parallel over the batch (on the calling rayon pool), and each output
//! depends only on the file, the sample index and the [`Augment`] mode, so batches are
//! bitwise identical for any thread count.

use super::transform::{Augment, Rgb8, transform};
use crate::error::{Error, Result, check_len, checked_product};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// How deep subfolders of a class folder are searched (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// The file extensions read as images (compared without regard to case).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// An image-classification dataset on disk: one subfolder per class.
///
/// ```no_run
/// use effnet::data::ImageFolder;
/// use effnet::data::transform::Augment;
/// let ds = ImageFolder::open("images/train").unwrap();
/// let res = 128;
/// let mut images = vec![0.0f32; 4 * res * res * 3];
/// let mut labels = vec![0usize; 4];
/// ds.batch(&[0, 1, 2, 3], res, Augment::Train { seed: 0, epoch: 0 }, &mut images, &mut labels)
///     .unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    paths: Vec<PathBuf>,
    labels: Vec<usize>,
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: {e}", path.display()))
}

/// The visible entries of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if !is_hidden(&entry.file_name()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Appends the image files under `dir` (recursively, sorted) to `out`.
fn collect_images(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        // `metadata` follows symbolic links.
        let meta = std::fs::metadata(&path).map_err(|e| io_err(&path, e))?;
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                collect_images(&path, depth + 1, out)?;
            }
        } else if meta.is_file() && is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The largest image [`decode_image`] decodes, in pixels (2^25: 8192×4096, about
/// 100 MB as RGB8). A few hundred bytes of PNG or JPEG header can claim a
/// 65535×65535 image; the bound keeps such a file from making the loader allocate
/// and convert gigabytes (found by fuzzing: a 656-byte JPEG claiming 64265×2053 took
/// over 10 s). Photographs in image datasets are far smaller.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 25;

/// The longest side [`decode_image`] accepts, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 1 << 14;

/// Decodes a PNG or JPEG file's bytes into 8-bit RGB (grey is replicated, alpha and
/// extra precision dropped); `name` is used in the error message.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `name` when the bytes are not a PNG or JPEG image,
/// do not decode, or describe an image larger than [`MAX_IMAGE_SIDE`] on a side or
/// [`MAX_IMAGE_PIXELS`] in all (checked from the header, before any pixel is decoded).
pub fn decode_image(bytes: &[u8], name: &str) -> Result<Rgb8> {
    let bad = |m: String| Error::InvalidArgument(format!("{name}: {m}"));
    let open = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(format!("cannot read the image: {e}")))
    };
    let reader = open()?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        _ => return Err(bad("not a PNG or JPEG image".into())),
    }
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("corrupt or unreadable image: {e}")))?;
    if w.max(h) > MAX_IMAGE_SIDE || u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        return Err(bad(format!(
            "the image is {w}x{h} pixels, more than the maximum of {MAX_IMAGE_SIDE} on a \
             side and {MAX_IMAGE_PIXELS} in all"
        )));
    }
    let mut reader = open()?;
    // The same bounds for the decoder itself (its buffers: at most 4 bytes a pixel
    // at 16 bits per channel, RGBA).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(8 * MAX_IMAGE_PIXELS);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| bad(format!("corrupt or unreadable image: {e}")))?
        .into_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Rgb8::new(w, h, img.into_raw()).map_err(|e| bad(e.to_string()))
}

impl ImageFolder {
    /// Lists the dataset in `dir` (reads directories only; no image is decoded).
    ///
    /// # Errors
    /// [`Error::Io`] if `dir` does not exist, is not a folder or cannot be read;
    /// [`Error::InvalidArgument`] if it has no class subfolders or a class folder holds
    /// no PNG or JPEG file (the message names the class).
    pub fn open(dir: impl AsRef<Path>) -> Result<ImageFolder> {
        let root = dir.as_ref().to_path_buf();
        let meta = std::fs::metadata(&root).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Io(format!("data folder {} does not exist", root.display()))
            } else {
                io_err(&root, e)
            }
        })?;
        if !meta.is_dir() {
            return Err(Error::Io(format!(
                "data folder {} is not a folder",
                root.display()
            )));
        }
        let class_dirs: Vec<PathBuf> = sorted_entries(&root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        if class_dirs.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "data folder {} has no class folders (expected one subfolder of images per class)",
                root.display()
            )));
        }
        let mut classes = Vec::with_capacity(class_dirs.len());
        let mut paths = Vec::new();
        let mut labels = Vec::new();
        for (label, dir) in class_dirs.iter().enumerate() {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let before = paths.len();
            collect_images(dir, 0, &mut paths)?;
            if paths.len() == before {
                return Err(Error::InvalidArgument(format!(
                    "class folder {} has no PNG or JPEG images",
                    dir.display()
                )));
            }
            labels.resize(paths.len(), label);
            classes.push(name);
        }
        Ok(ImageFolder {
            root,
            classes,
            paths,
            labels,
        })
    }

    /// The folder the dataset was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are no samples (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Class names in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The label of every sample, in sample order.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Number of samples of each class, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }

    fn check_index(&self, index: u64) -> Result<usize> {
        usize::try_from(index)
            .ok()
            .filter(|&i| i < self.paths.len())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "sample {index} is out of range for {} samples in {}",
                    self.paths.len(),
                    self.root.display()
                ))
            })
    }

    /// The label of sample `index`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an index `>= len()`.
    pub fn label(&self, index: u64) -> Result<usize> {
        Ok(self.labels[self.check_index(index)?])
    }

    /// The file of sample `index`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an index `>= len()`.
    pub fn path(&self, index: u64) -> Result<&Path> {
        Ok(&self.paths[self.check_index(index)?])
    }

    /// Reads and decodes sample `index`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an index `>= len()` or a file that is not a valid
    /// PNG or JPEG image, [`Error::Io`] when it cannot be read; the message names the
    /// file.
    pub fn load(&self, index: u64) -> Result<Rgb8> {
        let path = self.path(index)?;
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        decode_image(&bytes, &path.display().to_string())
    }

    /// Checks every file's image header (format and size), in parallel, without
    /// decoding the pixels; reports the first bad file in sample order. A file whose
    /// header is sound but whose data is truncated is only found when it is decoded.
    ///
    /// # Errors
    /// As [`ImageFolder::load`].
    pub fn verify(&self) -> Result<()> {
        let bad: Vec<Option<Error>> = self
            .paths
            .par_iter()
            .map(|path| {
                let check = || -> Result<()> {
                    let name = path.display().to_string();
                    let reader = image::ImageReader::open(path)
                        .map_err(|e| io_err(path, e))?
                        .with_guessed_format()
                        .map_err(|e| io_err(path, e))?;
                    match reader.format() {
                        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "{name}: not a PNG or JPEG image"
                            )));
                        }
                    }
                    let (w, h) = reader.into_dimensions().map_err(|e| {
                        Error::InvalidArgument(format!("{name}: corrupt or unreadable image: {e}"))
                    })?;
                    if w == 0 || h == 0 {
                        return Err(Error::InvalidArgument(format!("{name}: empty image")));
                    }
                    Ok(())
                };
                check().err()
            })
            .collect();
        match bad.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Prepares the samples `indices` at `res`×`res` into `images` (NHWC
    /// `[indices.len()][res][res][3]`, normalized with the ImageNet mean and standard
    /// deviation) and their labels into `labels`, decoding the files in parallel.
    /// Training augmentation ([`Augment::Train`]) is drawn from the run's seed, the
    /// epoch and each sample's index, so a sample comes out the same at any position of
    /// any batch and on any number of threads.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `res == 0` or an index `>= len()`,
    /// [`Error::BufferSize`] for wrong buffer lengths, and the error of the first
    /// sample (in batch order) whose file cannot be read or decoded.
    pub fn batch(
        &self,
        indices: &[u64],
        res: usize,
        augment: Augment,
        images: &mut [f32],
        labels: &mut [usize],
    ) -> Result<()> {
        if res == 0 {
            return Err(Error::InvalidArgument("resolution 0".into()));
        }
        let per = checked_product("image", &[res, res, 3])?;
        check_len(
            "images",
            images.len(),
            checked_product("images", &[indices.len(), per])?,
        )?;
        check_len("labels", labels.len(), indices.len())?;
        for (&i, l) in indices.iter().zip(labels.iter_mut()) {
            *l = self.label(i)?;
        }
        if indices.is_empty() {
            return Ok(());
        }
        let errors: Vec<Option<Error>> = images
            .par_chunks_mut(per)
            .zip(indices.par_iter())
            .map(|(out, &i)| {
                self.load(i)
                    .and_then(|img| transform(&img, res, augment, i, out))
                    .err()
            })
            .collect();
        match errors.into_iter().flatten().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl super::Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.paths.len()
    }

    fn classes(&self) -> usize {
        self.classes.len()
    }

    /// [`ImageFolder::batch`] with [`Augment::Train`] `{ seed, epoch: 0 }` when `train`
    /// (the trainer folds the epoch into `seed`) and [`Augment::Eval`] otherwise.
    fn batch(
        &self,
        indices: &[usize],
        res: usize,
        train: bool,
        seed: u64,
        images: &mut [f32],
        labels: &mut [usize],
    ) -> Result<()> {
        let augment = if train {
            Augment::Train { seed, epoch: 0 }
        } else {
            Augment::Eval
        };
        let idx: Vec<u64> = indices.iter().map(|&i| i as u64).collect();
        ImageFolder::batch(self, &idx, res, augment, images, labels)
    }
}
