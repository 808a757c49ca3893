//! Image transforms for training and evaluation, from 8-bit RGB pixels to the network's
//! normalized NHWC `f32` input.
//!
//! - **Training**: random-resized-crop (area fraction in `(0.08, 1)`, aspect ratio in
//!   `(3/4, 4/3)` drawn log-uniformly, up to 10 tries, then a centre crop clipped to the
//!   ratio range, as torchvision and timm do) and a horizontal flip with probability ½.
//!   The random numbers are a pure function of `(seed, epoch, index)`, so a run is
//!   reproducible and any sample can be prepared on any thread.
//! - **Evaluation**: resize the shorter side to `⌊res / 0.875⌋` (timm's default
//!   `crop_pct`), then take the centre `res`×`res` crop.
//!
//! Both are one resampling from the source: a [`Window`] (a rectangle of the source in
//! continuous pixel coordinates) mapped onto `res`×`res` outputs with a separable
//! triangle ("bilinear") filter whose support widens with the downscaling factor, as
//! PIL's bilinear resize does, so that shrinking a large photo does not alias. When
//! upscaling the filter is plain bilinear interpolation. The output is
//! `(v / 255 − mean) / std` per channel with the ImageNet [`MEAN`] and [`STD`].

use crate::error::{Error, Result, check_len};
use crate::rng::CounterRng;

/// ImageNet per-channel mean (R, G, B) of pixel values scaled to `[0, 1]`.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (R, G, B) of pixel values scaled to `[0, 1]`.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Fraction of the resized image that the evaluation centre crop keeps (timm's default).
pub const CROP_PCT: f64 = 0.875;
/// Range of the area fraction of a random-resized-crop.
pub const RRC_SCALE: (f64, f64) = (0.08, 1.0);
/// Range of the aspect ratio (width / height) of a random-resized-crop.
pub const RRC_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// Tries of a random-resized-crop before it falls back to a centre crop.
pub const RRC_TRIES: u64 = 10;

/// The random stream of the augmentations (distinct from the regularizers' streams).
const AUGMENT_STREAM: u64 = 16;

/// An 8-bit RGB image, row-major `[height][width][3]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Rgb8 {
    /// An image of `width`×`height` pixels from `pixels` (`[height][width][3]`, R, G, B).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero size, [`Error::BufferSize`] when `pixels`
    /// does not hold `width·height·3` bytes.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Rgb8> {
        if width == 0 || height == 0 {
            return Err(Error::InvalidArgument(format!(
                "image of {width}×{height} pixels is empty"
            )));
        }
        let n = crate::error::checked_product("image", &[width, height, 3])?;
        check_len("pixels", pixels.len(), n)?;
        Ok(Rgb8 {
            width,
            height,
            pixels,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, `[height][width][3]`.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }
}

/// How a sample is prepared.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Augment {
    /// Training: random-resized-crop and horizontal flip, drawn from
    /// `(seed, epoch, sample index)`.
    Train {
        /// The run's seed.
        seed: u64,
        /// The epoch (a new crop and flip for every epoch).
        epoch: u64,
    },
    /// Evaluation: resize the shorter side to `⌊res / 0.875⌋`, then centre crop.
    Eval,
}

/// An integer crop rectangle of the source image, in pixels.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Crop {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Width (≥ 1).
    pub width: usize,
    /// Height (≥ 1).
    pub height: usize,
}

/// The part of the source image that becomes the `res`×`res` output.
///
/// Source coordinates are continuous: pixel `(i, j)` covers `[j, j+1) × [i, i+1)`.
/// Output pixel `(r, c)` (before the flip) is centred on source point
/// `(x + (c + ½)·width/res, y + (r + ½)·height/res)`. The filter only reads source
/// pixels inside `bounds`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Window {
    /// Left edge, in source pixels.
    pub x: f64,
    /// Top edge, in source pixels.
    pub y: f64,
    /// Width, in source pixels (> 0).
    pub width: f64,
    /// Height, in source pixels (> 0).
    pub height: f64,
    /// The source pixels the filter may read: columns `bounds.x .. bounds.x + width`
    /// and rows `bounds.y .. bounds.y + height`.
    pub bounds: Crop,
    /// Mirror the output left to right.
    pub flip: bool,
}

impl Window {
    /// The whole of `crop`, reading only inside it (torchvision's crop-then-resize).
    pub fn from_crop(crop: Crop, flip: bool) -> Window {
        Window {
            x: crop.x as f64,
            y: crop.y as f64,
            width: crop.width as f64,
            height: crop.height as f64,
            bounds: crop,
            flip,
        }
    }
}

/// SplitMix64 finalizer.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of sample `index` in `epoch` of the run `seed`.
fn sample_rng(seed: u64, epoch: u64, index: u64) -> CounterRng {
    CounterRng::new(mix64(seed ^ mix64(epoch ^ mix64(index))), AUGMENT_STREAM)
}

/// Python's `round` (half to even) of `v ≥ 0`, as torchvision's crop geometry uses it.
pub fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc() - 0.5).abs() < 1e-12 && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    }
}

/// The random-resized-crop of a `width`×`height` image for `(seed, epoch, index)`.
///
/// Up to [`RRC_TRIES`] times: draw an area fraction uniformly in [`RRC_SCALE`] and an
/// aspect ratio log-uniformly in [`RRC_RATIO`], round the crop's sides, and accept it
/// if it fits; its position is uniform. If no try fits, the centre crop of the whole
/// image, narrowed to the ratio range.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty image.
pub fn random_resized_crop(
    width: usize,
    height: usize,
    seed: u64,
    epoch: u64,
    index: u64,
) -> Result<Crop> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!(
            "image of {width}×{height} pixels is empty"
        )));
    }
    let rng = sample_rng(seed, epoch, index);
    let (w_img, h_img) = (width as f64, height as f64);
    let area = w_img * h_img;
    let (log_lo, log_hi) = (RRC_RATIO.0.ln(), RRC_RATIO.1.ln());
    for t in 0..RRC_TRIES {
        let u = |k: u64| rng.uniform_f64(4 * t + k);
        let target = area * (RRC_SCALE.0 + (RRC_SCALE.1 - RRC_SCALE.0) * u(0));
        let ratio = (log_lo + (log_hi - log_lo) * u(1)).exp();
        let w = round_half_even((target * ratio).sqrt());
        let h = round_half_even((target / ratio).sqrt());
        if w >= 1.0 && w <= w_img && h >= 1.0 && h <= h_img {
            let (w, h) = (w as usize, h as usize);
            // Uniform integer positions in 0..=height-h and 0..=width-w.
            let y = ((u(2) * (height - h + 1) as f64) as usize).min(height - h);
            let x = ((u(3) * (width - w + 1) as f64) as usize).min(width - w);
            return Ok(Crop {
                x,
                y,
                width: w,
                height: h,
            });
        }
    }
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < RRC_RATIO.0 {
        (
            width,
            (round_half_even(w_img / RRC_RATIO.0) as usize).clamp(1, height),
        )
    } else if in_ratio > RRC_RATIO.1 {
        (
            (round_half_even(h_img * RRC_RATIO.1) as usize).clamp(1, width),
            height,
        )
    } else {
        (width, height)
    };
    Ok(Crop {
        x: (width - w) / 2,
        y: (height - h) / 2,
        width: w,
        height: h,
    })
}

/// Whether sample `index` of `epoch` is flipped (probability ½).
pub fn random_flip(seed: u64, epoch: u64, index: u64) -> bool {
    sample_rng(seed, epoch, index).uniform_f64(4 * RRC_TRIES) < 0.5
}

/// The training window of sample `index`: its random-resized-crop and flip.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty image.
pub fn train_window(
    width: usize,
    height: usize,
    seed: u64,
    epoch: u64,
    index: u64,
) -> Result<Window> {
    let crop = random_resized_crop(width, height, seed, epoch, index)?;
    Ok(Window::from_crop(crop, random_flip(seed, epoch, index)))
}

/// The evaluation window at `res`: the image resized so that its shorter side is
/// `⌊res / 0.875⌋` (the longer side `⌊that · long / short⌋`, as torchvision), then its
/// centre `res`×`res` crop (offsets rounded half to even, as Python's `round`),
/// expressed in source coordinates. The filter may read the whole image.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty image or `res == 0`.
pub fn eval_window(width: usize, height: usize, res: usize) -> Result<Window> {
    if width == 0 || height == 0 || res == 0 {
        return Err(Error::InvalidArgument(format!(
            "evaluation crop of {res}×{res} from a {width}×{height} image"
        )));
    }
    let short_target = (res as f64 / CROP_PCT).floor();
    let (short, long) = (width.min(height) as f64, width.max(height) as f64);
    let long_target = (short_target * long / short).floor();
    let (rw, rh) = if width <= height {
        (short_target, long_target)
    } else {
        (long_target, short_target)
    };
    let left = round_half_even((rw - res as f64) / 2.0);
    let top = round_half_even((rh - res as f64) / 2.0);
    let (sx, sy) = (width as f64 / rw, height as f64 / rh);
    Ok(Window {
        x: left * sx,
        y: top * sy,
        width: res as f64 * sx,
        height: res as f64 * sy,
        bounds: Crop {
            x: 0,
            y: 0,
            width,
            height,
        },
        flip: false,
    })
}

/// The filter taps of one output axis: output `o` reads source pixels
/// `first[o] .. first[o] + taps` with weights `weights[o·taps ..]` (zero-padded).
struct Taps {
    taps: usize,
    first: Vec<usize>,
    weights: Vec<f32>,
}

/// Taps of `out` outputs covering `[start, start + len)` of the source, reading only
/// source pixels in `[lo, hi)`.
fn axis_taps(out: usize, start: f64, len: f64, lo: usize, hi: usize) -> Taps {
    let scale = len / out as f64;
    // The triangle's half-width in source pixels: 1 when upscaling (bilinear), the
    // scale factor when downscaling (antialiasing).
    let support = scale.max(1.0);
    let taps = (2.0 * support).ceil() as usize + 2;
    let mut first = Vec::with_capacity(out);
    let mut weights = vec![0.0f32; out * taps];
    let mut w64 = vec![0.0f64; taps];
    for o in 0..out {
        let centre = start + (o as f64 + 0.5) * scale;
        let k0 = ((centre - support).floor().max(lo as f64) as usize).min(hi - 1);
        let k1 = ((centre + support).ceil().min(hi as f64) as usize).clamp(k0 + 1, k0 + taps);
        let mut sum = 0.0;
        for (i, k) in (k0..k1).enumerate() {
            let t = (k as f64 + 0.5 - centre).abs() / support;
            w64[i] = (1.0 - t).max(0.0);
            sum += w64[i];
        }
        let row = &mut weights[o * taps..(o + 1) * taps];
        if sum > 0.0 {
            for i in 0..k1 - k0 {
                row[i] = (w64[i] / sum) as f32;
            }
        } else {
            // The centre lies outside the readable range: nearest readable pixel.
            let nearest = (centre.floor().max(lo as f64) as usize).min(hi - 1);
            first.push(nearest);
            row[0] = 1.0;
            continue;
        }
        first.push(k0);
    }
    Taps {
        taps,
        first,
        weights,
    }
}

/// Resamples `window` of `image` to `res`×`res`, normalizes with [`MEAN`] and [`STD`],
/// and writes NHWC `[res][res][3]` into `out`.
///
/// # Errors
/// [`Error::InvalidArgument`] for `res == 0`, a window with a non-positive or
/// non-finite size, or bounds outside the image; [`Error::BufferSize`] for `out`.
pub fn resample(image: &Rgb8, window: &Window, res: usize, out: &mut [f32]) -> Result<()> {
    let b = window.bounds;
    if res == 0 {
        return Err(Error::InvalidArgument("resolution 0".into()));
    }
    let finite = [window.x, window.y, window.width, window.height]
        .iter()
        .all(|v| v.is_finite());
    if !finite || window.width <= 0.0 || window.height <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "window {window:?} has no area"
        )));
    }
    if b.width == 0
        || b.height == 0
        || b.x.checked_add(b.width).is_none_or(|e| e > image.width)
        || b.y.checked_add(b.height).is_none_or(|e| e > image.height)
    {
        return Err(Error::InvalidArgument(format!(
            "window bounds {b:?} are outside the {}×{} image",
            image.width, image.height
        )));
    }
    check_len(
        "image",
        out.len(),
        crate::error::checked_product("image", &[res, res, 3])?,
    )?;
    let tx = axis_taps(res, window.x, window.width, b.x, b.x + b.width);
    let ty = axis_taps(res, window.y, window.height, b.y, b.y + b.height);
    // Rows of the source that the vertical taps read.
    let row_lo = ty.first[0];
    let row_hi = (0..res)
        .map(|o| {
            let w = &ty.weights[o * ty.taps..(o + 1) * ty.taps];
            ty.first[o] + w.iter().rposition(|&v| v != 0.0).map_or(1, |p| p + 1)
        })
        .max()
        .unwrap_or(row_lo + 1);
    // Horizontal pass: rows row_lo..row_hi, res columns each.
    let mut tmp = vec![0.0f32; (row_hi - row_lo) * res * 3];
    for (r, trow) in tmp.chunks_exact_mut(res * 3).enumerate() {
        let src = &image.pixels[(row_lo + r) * image.width * 3..(row_lo + r + 1) * image.width * 3];
        for (c, px) in trow.chunks_exact_mut(3).enumerate() {
            let w = &tx.weights[c * tx.taps..(c + 1) * tx.taps];
            let k0 = tx.first[c];
            let mut acc = [0.0f32; 3];
            for (i, &wi) in w.iter().enumerate() {
                if wi != 0.0 {
                    let s = &src[(k0 + i) * 3..(k0 + i) * 3 + 3];
                    for ch in 0..3 {
                        acc[ch] += wi * s[ch] as f32;
                    }
                }
            }
            px.copy_from_slice(&acc);
        }
    }
    // Vertical pass, flip and normalization.
    let inv_std: [f32; 3] = std::array::from_fn(|ch| 1.0 / (255.0 * STD[ch]));
    let shift: [f32; 3] = std::array::from_fn(|ch| MEAN[ch] / STD[ch]);
    for (o, orow) in out.chunks_exact_mut(res * 3).enumerate() {
        let w = &ty.weights[o * ty.taps..(o + 1) * ty.taps];
        let k0 = ty.first[o] - row_lo;
        for c in 0..res {
            let col = if window.flip { res - 1 - c } else { c };
            let mut acc = [0.0f32; 3];
            for (i, &wi) in w.iter().enumerate() {
                if wi != 0.0 {
                    let s = &tmp[((k0 + i) * res + col) * 3..((k0 + i) * res + col) * 3 + 3];
                    for ch in 0..3 {
                        acc[ch] += wi * s[ch];
                    }
                }
            }
            for ch in 0..3 {
                orow[c * 3 + ch] = acc[ch] * inv_std[ch] - shift[ch];
            }
        }
    }
    Ok(())
}

/// Prepares sample `index` of a dataset: the training or evaluation window of `image`
/// (see [`Augment`]) resampled to `res`×`res`, normalized, into `out` (NHWC
/// `[res][res][3]`).
///
/// ```
/// use effnet::data::transform::{Augment, Rgb8, transform, MEAN, STD};
/// let grey = Rgb8::new(40, 30, vec![128; 40 * 30 * 3]).unwrap();
/// let mut out = vec![0.0f32; 16 * 16 * 3];
/// transform(&grey, 16, Augment::Train { seed: 1, epoch: 0 }, 7, &mut out).unwrap();
/// let expect = (128.0 / 255.0 - MEAN[0]) / STD[0];
/// assert!((out[0] - expect).abs() < 1e-5);
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] for `res == 0`, [`Error::BufferSize`] for `out`.
pub fn transform(
    image: &Rgb8,
    res: usize,
    augment: Augment,
    index: u64,
    out: &mut [f32],
) -> Result<()> {
    let window = match augment {
        Augment::Train { seed, epoch } => {
            train_window(image.width, image.height, seed, epoch, index)?
        }
        Augment::Eval => eval_window(image.width, image.height, res)?,
    };
    resample(image, &window, res, out)
}
