//! Stochastic regularization with a seeded, counter-based generator: dropout,
//! per-sample drop-connect (stochastic depth), mixup and cutmix.
//!
//! # Randomness
//! Every random number is a pure function of `(seed, stream, index)` ([`CounterRng`]):
//! dropout's element `i` uses counter `i`, drop-connect's sample `n` uses counter `n`,
//! and the draws of mixup/cutmix (λ, the pairing permutation, the box centre) use
//! consecutive counters of their own streams. So a mask depends on the seed only —
//! never on the thread count, the SIMD level or how the work is split — and the
//! backward pass recomputes the forward mask from the same seed instead of storing it.
//! Use a new seed per step (e.g. `step · layers + layer`).
//!
//! # Layouts
//! Dropout works on any flat tensor. Drop-connect takes `[batch][…]` (each sample a
//! contiguous block, e.g. NHWC). Mixup and cutmix take NHWC images
//! `[batch][height][width][channels]`, class labels `[batch]`, and write mixed images
//! (same layout) and soft targets `[batch][classes]`.
//!
//! ```
//! use effnet::kernels::regularize::{Dropout, DropConnect};
//! let drop = Dropout::new(0.25, 42).unwrap();
//! let x = vec![1.0f32; 1000];
//! let mut y = vec![0.0f32; 1000];
//! drop.forward(&x, &mut y).unwrap();
//! assert!(y.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
//! let dc = DropConnect::new(0.2, 7).unwrap();
//! let scales = dc.sample_scales(4);
//! assert!(scales.iter().all(|&s| s == 0.0 || s == 1.0 / 0.8));
//! ```

use super::pool::Nhwc;
use crate::error::{Error, Result, check_len};
pub use crate::rng::CounterRng;
use crate::simd::{self, Simd, SimdKernel, dispatch};
use rayon::prelude::*;

// ---------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------

/// Streams of the operations, so that one seed gives independent numbers per use.
mod stream {
    pub const DROPOUT: u64 = 1;
    pub const DROP_CONNECT: u64 = 2;
    pub const MIXUP: u64 = 3;
    pub const CUTMIX: u64 = 4;
}

/// A Bernoulli test on 32 random bits: keep when `bits <= max`, i.e. with probability
/// `(max + 1)/2³²`, the closest such value to `keep ∈ (0, 1]`.
fn keep_max(keep: f64) -> u32 {
    ((keep * 4_294_967_296.0).round() - 1.0).clamp(0.0, u32::MAX as f64) as u32
}

fn check_prob(what: &str, p: f32) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} probability {p} is outside [0, 1)"
        )))
    }
}

// ---------------------------------------------------------------------------------
// Dropout
// ---------------------------------------------------------------------------------

/// Inverted dropout: each element is kept with probability `1 − p` and scaled by
/// `1/(1 − p)`, or zeroed; the mask is a function of the seed and the element index
/// (see the [module docs](self)).
///
/// `y[i] = x[i] · mask[i]`, `mask[i] ∈ {0, 1/(1 − p)}`; the backward pass is the same
/// product with `dy` (the mask is recomputed, not stored).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Dropout(Bernoulli);

/// What dropout and drop-connect share: the drop probability `p`, the counter RNG of
/// the op's stream, the largest kept 32-bit draw and the scale `1/(1 − p)`.
#[derive(Copy, Clone, Debug, PartialEq)]
struct Bernoulli {
    p: f32,
    rng: CounterRng,
    keep_max: u32,
    scale: f32,
}

impl Bernoulli {
    fn new(what: &str, p: f32, seed: u64, stream: u64) -> Result<Bernoulli> {
        check_prob(what, p)?;
        let keep = 1.0 - p as f64;
        Ok(Bernoulli {
            p,
            rng: CounterRng::new(seed, stream),
            keep_max: keep_max(keep),
            scale: (1.0 / keep) as f32,
        })
    }

    /// Whether draw `index` is kept.
    fn keeps(&self, index: u64) -> bool {
        self.rng.bits(index) <= self.keep_max
    }
}

/// Elements per dropout task.
const DROPOUT_CHUNK: usize = 1 << 14;
/// Elements per mask block generated on the stack.
const MASK_BLOCK: usize = 256;

impl Dropout {
    /// Dropout with drop probability `p ∈ [0, 1)` and `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `p` is outside `[0, 1)` (or NaN).
    pub fn new(p: f32, seed: u64) -> Result<Dropout> {
        Bernoulli::new("dropout", p, seed, stream::DROPOUT).map(Dropout)
    }

    /// The drop probability `p`.
    pub fn p(&self) -> f32 {
        self.0.p
    }

    /// The scale `1/(1 − p)` of kept elements.
    pub fn scale(&self) -> f32 {
        self.0.scale
    }

    /// Whether element `index` is kept.
    #[inline(always)]
    pub fn keeps(&self, index: u64) -> bool {
        self.0.keeps(index)
    }

    /// Writes the mask `mask[i] ∈ {0, 1/(1 − p)}` for elements `0..mask.len()`.
    pub fn mask(&self, mask: &mut [f32]) {
        let level = simd::active();
        mask.par_chunks_mut(DROPOUT_CHUNK)
            .enumerate()
            .for_each(|(j, m)| {
                dispatch(
                    level,
                    MaskFill {
                        d: self,
                        start: (j * DROPOUT_CHUNK) as u64,
                        m,
                    },
                )
            });
    }

    #[inline(always)]
    fn fill_mask(&self, start: u64, m: &mut [f32]) {
        for (i, v) in m.iter_mut().enumerate() {
            *v = if self.keeps(start + i as u64) {
                self.0.scale
            } else {
                0.0
            };
        }
    }

    /// `y = x · mask` (any layout, element `i` uses mask element `i`); `y` is
    /// overwritten.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if `y.len() != x.len()`.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        check_len("y", y.len(), x.len())?;
        self.apply(Some(x), y);
        Ok(())
    }

    /// In-place [`Dropout::forward`].
    pub fn forward_inplace(&self, x: &mut [f32]) {
        self.apply(None, x);
    }

    /// `dx = dy · mask` with the forward pass's mask; `dx` is overwritten.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if `dx.len() != dy.len()`.
    pub fn backward(&self, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        check_len("dx", dx.len(), dy.len())?;
        self.apply(Some(dy), dx);
        Ok(())
    }

    fn apply(&self, x: Option<&[f32]>, y: &mut [f32]) {
        let level = simd::active();
        y.par_chunks_mut(DROPOUT_CHUNK)
            .enumerate()
            .for_each(|(j, out)| {
                let start = j * DROPOUT_CHUNK;
                let inp = x.map(|x| &x[start..start + out.len()]);
                dispatch(
                    level,
                    DropoutApply {
                        d: self,
                        start,
                        inp,
                        out,
                    },
                );
            });
    }
}

/// [`Dropout::fill_mask`] compiled with the level's target features (so that the hash
/// loop vectorizes).
struct MaskFill<'a> {
    d: &'a Dropout,
    start: u64,
    m: &'a mut [f32],
}

impl SimdKernel for MaskFill<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, _s: S) {
        self.d.fill_mask(self.start, self.m);
    }
}

/// Dropout on one chunk: the mask is generated in stack blocks (a loop the compiler
/// vectorizes under the level's target features), then multiplied in.
struct DropoutApply<'a> {
    d: &'a Dropout,
    start: usize,
    inp: Option<&'a [f32]>,
    out: &'a mut [f32],
}

impl SimdKernel for DropoutApply<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let mut mask = [0.0f32; MASK_BLOCK];
        for (b, out) in self.out.chunks_mut(MASK_BLOCK).enumerate() {
            let off = b * MASK_BLOCK;
            let m = &mut mask[..out.len()];
            self.d.fill_mask((self.start + off) as u64, m);
            match self.inp {
                Some(inp) => {
                    let inp = &inp[off..off + out.len()];
                    for ((o, i), m) in out
                        .chunks_mut(S::LANES)
                        .zip(inp.chunks(S::LANES))
                        .zip(m.chunks(S::LANES))
                    {
                        s.store_upto(o, s.mul(s.load_upto(i), s.load_upto(m)));
                    }
                }
                None => {
                    for (o, m) in out.chunks_mut(S::LANES).zip(m.chunks(S::LANES)) {
                        let v = s.mul(s.load_upto(o), s.load_upto(m));
                        s.store_upto(o, v);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Drop-connect
// ---------------------------------------------------------------------------------

/// Per-sample drop-connect (stochastic depth, timm's `drop_path`): each sample of the
/// batch is kept with probability `1 − p` and scaled by `1/(1 − p)`, or zeroed whole.
///
/// Tensors are `[batch][…]`: sample `n` is the contiguous block
/// `x[n·len/batch .. (n+1)·len/batch]`. Sample `n`'s decision is a function of the seed
/// and `n` (see the [module docs](self)).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct DropConnect(Bernoulli);

impl DropConnect {
    /// Drop-connect with drop probability `p ∈ [0, 1)` (EfficientNet: `0.2·i/blocks`
    /// for block `i`) and `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `p` is outside `[0, 1)` (or NaN).
    pub fn new(p: f32, seed: u64) -> Result<DropConnect> {
        Bernoulli::new("drop-connect", p, seed, stream::DROP_CONNECT).map(DropConnect)
    }

    /// The drop probability `p`.
    pub fn p(&self) -> f32 {
        self.0.p
    }

    /// Whether sample `n` is kept.
    pub fn keeps(&self, n: usize) -> bool {
        self.0.keeps(n as u64)
    }

    /// The per-sample factors `[batch]`: `1/(1 − p)` for kept samples, 0 for dropped.
    pub fn sample_scales(&self, batch: usize) -> Vec<f32> {
        (0..batch)
            .map(|n| if self.keeps(n) { self.0.scale } else { 0.0 })
            .collect()
    }

    fn sample_len(batch: usize, len: usize) -> Result<usize> {
        if batch == 0 || len == 0 || !len.is_multiple_of(batch) {
            return Err(Error::InvalidArgument(format!(
                "drop-connect: {len} elements do not split into {batch} samples"
            )));
        }
        Ok(len / batch)
    }

    /// `y[n, …] = x[n, …] · scale[n]`; `y` is overwritten.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `x` does not split into `batch` non-empty
    /// samples, [`Error::BufferSize`] if `y.len() != x.len()`.
    pub fn forward(&self, batch: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
        Self::sample_len(batch, x.len())?;
        check_len("y", y.len(), x.len())?;
        self.apply(batch, x, None, y);
        Ok(())
    }

    /// `dx = dy · scale[n]`, the backward of [`DropConnect::forward`] (and the branch
    /// gradient of [`DropConnect::forward_residual`]).
    ///
    /// # Errors
    /// As [`DropConnect::forward`].
    pub fn backward(&self, batch: usize, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        Self::sample_len(batch, dy.len())?;
        check_len("dx", dx.len(), dy.len())?;
        self.apply(batch, dy, None, dx);
        Ok(())
    }

    /// The MBConv residual: `y[n, …] = skip[n, …] + branch[n, …] · scale[n]`; `y` is
    /// overwritten. The gradient of `skip` is `dy`; that of `branch` is
    /// [`DropConnect::backward`] of `dy`.
    ///
    /// # Errors
    /// As [`DropConnect::forward`], and [`Error::BufferSize`] if `skip` differs in
    /// length.
    pub fn forward_residual(
        &self,
        batch: usize,
        branch: &[f32],
        skip: &[f32],
        y: &mut [f32],
    ) -> Result<()> {
        Self::sample_len(batch, branch.len())?;
        check_len("skip", skip.len(), branch.len())?;
        check_len("y", y.len(), branch.len())?;
        self.apply(batch, branch, Some(skip), y);
        Ok(())
    }

    fn apply(&self, batch: usize, x: &[f32], skip: Option<&[f32]>, y: &mut [f32]) {
        let level = simd::active();
        let slen = x.len() / batch;
        let scales = self.sample_scales(batch);
        let chunk = DROPOUT_CHUNK;
        y.par_chunks_mut(slen).enumerate().for_each(|(n, ys)| {
            let f = scales[n];
            ys.par_chunks_mut(chunk).enumerate().for_each(|(j, out)| {
                let start = n * slen + j * chunk;
                let end = start + out.len();
                dispatch(
                    level,
                    ScaleAdd {
                        x: &x[start..end],
                        f,
                        skip: skip.map(|s| &s[start..end]),
                        out,
                    },
                );
            });
        });
    }
}

/// `out = x·f (+ skip)`.
struct ScaleAdd<'a> {
    x: &'a [f32],
    f: f32,
    skip: Option<&'a [f32]>,
    out: &'a mut [f32],
}

impl SimdKernel for ScaleAdd<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let f = s.splat(self.f);
        match self.skip {
            Some(skip) => {
                for ((o, x), k) in self
                    .out
                    .chunks_mut(S::LANES)
                    .zip(self.x.chunks(S::LANES))
                    .zip(skip.chunks(S::LANES))
                {
                    s.store_upto(o, s.mul_add(s.load_upto(x), f, s.load_upto(k)));
                }
            }
            None => {
                for (o, x) in self.out.chunks_mut(S::LANES).zip(self.x.chunks(S::LANES)) {
                    s.store_upto(o, s.mul(s.load_upto(x), f));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Mixup and cutmix
// ---------------------------------------------------------------------------------

/// How the samples of a batch are paired for mixing.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Pairing {
    /// Sample `n` mixes with sample `N − 1 − n` (timm's `x.flip(0)`).
    #[default]
    Reverse,
    /// Sample `n` mixes with sample `π(n)` for a seeded random permutation `π`
    /// (Fisher–Yates; a sample may be paired with itself).
    Permutation,
}

/// The rows `top..bottom` and columns `left..right` (end-exclusive) that cutmix pastes
/// from the partner image.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CutBox {
    /// First row.
    pub top: usize,
    /// One past the last row.
    pub bottom: usize,
    /// First column.
    pub left: usize,
    /// One past the last column.
    pub right: usize,
}

impl CutBox {
    /// Pixels inside the box (0 for an empty box).
    pub fn area(&self) -> usize {
        self.bottom.saturating_sub(self.top) * self.right.saturating_sub(self.left)
    }
}

/// One draw of mixup or cutmix for a batch: the weight `λ` of each sample's own image
/// and target, its partner, and for cutmix the pasted box.
///
/// Mixup: `y[n] = λ·x[n] + (1 − λ)·x[partner[n]]`. Cutmix: `y[n] = x[n]` outside the
/// box and `x[partner[n]]` inside, with `λ = 1 − area/(H·W)` (the box's actual area).
/// Targets in both cases: `t[n] = λ·onehot(label[n]) + (1 − λ)·onehot(label[partner[n]])`.
#[derive(Clone, Debug, PartialEq)]
pub struct MixDraw {
    /// The weight of each sample's own image and label, in `[0, 1]`.
    pub lambda: f32,
    /// `partner[n]`: the sample mixed into sample `n`, `[batch]`.
    pub partner: Vec<usize>,
    /// The cutmix box (`None` for mixup).
    pub cut: Option<CutBox>,
}

/// A sequential reader of a counter stream (for the few scalar draws of a batch).
struct Draws {
    rng: CounterRng,
    next: u64,
}

impl Draws {
    fn new(seed: u64, stream: u64) -> Draws {
        Draws {
            rng: CounterRng::new(seed, stream),
            next: 0,
        }
    }
    /// Uniform in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        let u = self.rng.uniform_f64(self.next);
        self.next += 1;
        u
    }
    /// Uniform in `(0, 1]`.
    fn uniform_pos(&mut self) -> f64 {
        1.0 - self.uniform()
    }
    /// Uniform integer in `0..n` (`n >= 1`), by rejection (no modulo bias).
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.rng.u64_at(self.next);
            self.next += 1;
            if v < zone {
                return (v % n) as usize;
            }
        }
    }
    /// Standard normal (Box–Muller, one of the pair).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform_pos();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    /// Gamma(`a`, 1), Marsaglia–Tsang (with the `U^{1/a}` boost for `a < 1`).
    fn gamma(&mut self, a: f64) -> f64 {
        if a < 1.0 {
            let g = self.gamma(a + 1.0);
            return g * self.uniform_pos().powf(1.0 / a);
        }
        let d = a - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let z = self.normal();
            let v = 1.0 + c * z;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform_pos();
            if u.ln() < 0.5 * z * z + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
    /// Beta(`a`, `a`).
    fn beta_sym(&mut self, a: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(a);
        if x + y > 0.0 {
            x / (x + y)
        } else if self.uniform() < 0.5 {
            0.0
        } else {
            1.0
        }
    }
    fn partners(&mut self, batch: usize, pairing: Pairing) -> Vec<usize> {
        match pairing {
            Pairing::Reverse => (0..batch).rev().collect(),
            Pairing::Permutation => {
                let mut p: Vec<usize> = (0..batch).collect();
                for i in (1..batch).rev() {
                    let j = self.below(i + 1);
                    p.swap(i, j);
                }
                p
            }
        }
    }
}

fn check_alpha(alpha: f32) -> Result<()> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "mixing alpha {alpha} must be finite and > 0"
        )))
    }
}

/// Draws a mixup for a batch: `λ ~ Beta(α, α)` and the pairing, from `seed`.
///
/// # Errors
/// [`Error::InvalidArgument`] if `alpha` is not finite and positive or `batch` is 0.
pub fn draw_mixup(alpha: f32, seed: u64, batch: usize, pairing: Pairing) -> Result<MixDraw> {
    check_alpha(alpha)?;
    if batch == 0 {
        return Err(Error::InvalidArgument("mixup: empty batch".into()));
    }
    let mut d = Draws::new(seed, stream::MIXUP);
    let lambda = d.beta_sym(alpha as f64) as f32;
    Ok(MixDraw {
        lambda,
        partner: d.partners(batch, pairing),
        cut: None,
    })
}

/// Draws a cutmix for a batch of `shape`'s images, as timm does: `λ ~ Beta(α, α)`, a
/// box of `⌊H·√(1−λ)⌋ × ⌊W·√(1−λ)⌋` centred on a uniform pixel and clipped to the
/// image, then `λ = 1 − area/(H·W)` corrected to the clipped box.
///
/// # Errors
/// [`Error::InvalidArgument`] if `alpha` is not finite and positive.
pub fn draw_cutmix(alpha: f32, seed: u64, shape: &Nhwc, pairing: Pairing) -> Result<MixDraw> {
    check_alpha(alpha)?;
    let mut d = Draws::new(seed, stream::CUTMIX);
    let lam = d.beta_sym(alpha as f64);
    let (h, w) = (shape.height(), shape.width());
    let rat = (1.0 - lam).max(0.0).sqrt();
    let (ch, cw) = ((h as f64 * rat) as usize, (w as f64 * rat) as usize);
    let cy = d.below(h);
    let cx = d.below(w);
    let cut = CutBox {
        top: cy.saturating_sub(ch / 2),
        bottom: (cy + ch / 2).min(h),
        left: cx.saturating_sub(cw / 2),
        right: (cx + cw / 2).min(w),
    };
    let lambda = (1.0 - cut.area() as f64 / (h * w) as f64) as f32;
    Ok(MixDraw {
        lambda,
        partner: d.partners(shape.batch(), pairing),
        cut: Some(cut),
    })
}

fn check_draw(draw: &MixDraw, shape: &Nhwc) -> Result<()> {
    let n = shape.batch();
    check_len("partner", draw.partner.len(), n)?;
    if let Some(bad) = draw.partner.iter().find(|&&p| p >= n) {
        return Err(Error::InvalidArgument(format!(
            "partner {bad} is out of range for a batch of {n}"
        )));
    }
    if !(0.0..=1.0).contains(&draw.lambda) {
        return Err(Error::InvalidArgument(format!(
            "lambda {} is outside [0, 1]",
            draw.lambda
        )));
    }
    if let Some(c) = draw.cut
        && (c.top > c.bottom
            || c.left > c.right
            || c.bottom > shape.height()
            || c.right > shape.width())
    {
        return Err(Error::InvalidArgument(format!(
            "cut box {c:?} does not fit a {}×{} image",
            shape.height(),
            shape.width()
        )));
    }
    Ok(())
}

/// Mixes the images of a batch as `draw` says (mixup when `draw.cut` is `None`,
/// cutmix otherwise). `x` and `y` are `[N][H][W][C]`; `y` is overwritten (it cannot
/// alias `x`, since partners read other samples).
///
/// # Errors
/// [`Error::BufferSize`] for wrong lengths, [`Error::InvalidArgument`] for a draw that
/// does not fit the shape.
pub fn apply_mix(shape: &Nhwc, draw: &MixDraw, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("x", x.len(), shape.len())?;
    check_len("y", y.len(), shape.len())?;
    check_draw(draw, shape)?;
    let level = simd::active();
    let slen = shape.sample_len();
    let row = shape.width() * shape.channels();
    y.par_chunks_mut(slen).enumerate().for_each(|(n, ys)| {
        let own = &x[n * slen..(n + 1) * slen];
        let other = &x[draw.partner[n] * slen..(draw.partner[n] + 1) * slen];
        match draw.cut {
            None => dispatch(
                level,
                Lerp {
                    a: own,
                    b: other,
                    t: draw.lambda,
                    out: ys,
                },
            ),
            Some(cut) => {
                ys.copy_from_slice(own);
                let c = shape.channels();
                for r in cut.top..cut.bottom {
                    let s0 = r * row + cut.left * c;
                    let s1 = r * row + cut.right * c;
                    ys[s0..s1].copy_from_slice(&other[s0..s1]);
                }
            }
        }
    });
    Ok(())
}

/// `out = t·a + (1 − t)·b`.
struct Lerp<'a> {
    a: &'a [f32],
    b: &'a [f32],
    t: f32,
    out: &'a mut [f32],
}

impl SimdKernel for Lerp<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let t = s.splat(self.t);
        let u = s.splat(1.0 - self.t);
        for ((o, a), b) in self
            .out
            .chunks_mut(S::LANES)
            .zip(self.a.chunks(S::LANES))
            .zip(self.b.chunks(S::LANES))
        {
            let v = s.mul_add(s.load_upto(a), t, s.mul(s.load_upto(b), u));
            s.store_upto(o, v);
        }
    }
}

/// The mixed soft targets of `draw`:
/// `t[n] = λ·onehot(labels[n]) + (1 − λ)·onehot(labels[partner[n]])`, `[batch][classes]`,
/// overwritten. Each row sums to 1. Feed them to
/// [`crate::kernels::loss::Targets::Soft`] (label smoothing is applied by the loss).
///
/// # Errors
/// [`Error::BufferSize`] for wrong lengths, [`Error::InvalidArgument`] for a label
/// `>= classes`, zero classes, or a bad draw.
pub fn mix_targets(
    draw: &MixDraw,
    labels: &[usize],
    classes: usize,
    targets: &mut [f32],
) -> Result<()> {
    let n = labels.len();
    if n == 0 || classes == 0 {
        return Err(Error::InvalidArgument(
            "mix_targets: empty batch or zero classes".into(),
        ));
    }
    check_len("partner", draw.partner.len(), n)?;
    let len = n
        .checked_mul(classes)
        .ok_or_else(|| Error::Overflow("targets".into()))?;
    check_len("targets", targets.len(), len)?;
    if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::InvalidArgument(format!(
            "label {bad} is out of range for {classes} classes"
        )));
    }
    if let Some(bad) = draw.partner.iter().find(|&&p| p >= n) {
        return Err(Error::InvalidArgument(format!(
            "partner {bad} is out of range for a batch of {n}"
        )));
    }
    if !(0.0..=1.0).contains(&draw.lambda) {
        return Err(Error::InvalidArgument(format!(
            "lambda {} is outside [0, 1]",
            draw.lambda
        )));
    }
    for (i, t) in targets.chunks_exact_mut(classes).enumerate() {
        t.fill(0.0);
        t[labels[i]] += draw.lambda;
        t[labels[draw.partner[i]]] += 1.0 - draw.lambda;
    }
    Ok(())
}

/// Mixup in one call: draws with [`draw_mixup`], mixes the images into `y` and writes
/// the soft targets (`[batch][classes]`). Returns the draw.
///
/// # Errors
/// As [`draw_mixup`], [`apply_mix`] and [`mix_targets`].
#[allow(clippy::too_many_arguments)]
pub fn mixup(
    shape: &Nhwc,
    alpha: f32,
    seed: u64,
    pairing: Pairing,
    x: &[f32],
    labels: &[usize],
    classes: usize,
    y: &mut [f32],
    targets: &mut [f32],
) -> Result<MixDraw> {
    check_len("labels", labels.len(), shape.batch())?;
    let draw = draw_mixup(alpha, seed, shape.batch(), pairing)?;
    mix_targets(&draw, labels, classes, targets)?;
    apply_mix(shape, &draw, x, y)?;
    Ok(draw)
}

/// Cutmix in one call: draws with [`draw_cutmix`], pastes the boxes into `y` and
/// writes the soft targets (`[batch][classes]`) with the corrected `λ`. Returns the
/// draw.
///
/// # Errors
/// As [`draw_cutmix`], [`apply_mix`] and [`mix_targets`].
#[allow(clippy::too_many_arguments)]
pub fn cutmix(
    shape: &Nhwc,
    alpha: f32,
    seed: u64,
    pairing: Pairing,
    x: &[f32],
    labels: &[usize],
    classes: usize,
    y: &mut [f32],
    targets: &mut [f32],
) -> Result<MixDraw> {
    check_len("labels", labels.len(), shape.batch())?;
    let draw = draw_cutmix(alpha, seed, shape, pairing)?;
    mix_targets(&draw, labels, classes, targets)?;
    apply_mix(shape, &draw, x, y)?;
    Ok(draw)
}
