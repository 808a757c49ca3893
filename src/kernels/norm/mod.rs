//! BatchNorm, GroupNorm and LayerNorm over NHWC tensors, with an optional per-channel
//! affine and an activation fused into the apply pass; forward, backward, and
//! BatchNorm's running statistics and folded inference.
//!
//! Describe the normalization once with a [`NormDesc`] and validate it into a [`Norm`]
//! plan. Layouts (row-major, last index fastest):
//!
//! - `x`, `y`, `dy`, `dx`: `[batch][h][w][channels]` (NHWC, `f32`);
//! - `gamma`, `beta`, `dgamma`, `dbeta`, running statistics: `[channels]`;
//! - [`NormStats`] (`mean`, `var`, `rstd`): `[channels]` for BatchNorm (one set per
//!   channel over `batch·h·w` values), `[batch][groups]` for GroupNorm and LayerNorm
//!   (one set per sample and group over `h·w·channels/groups` values).
//!
//! Semantics, with `S` the set of `x[n,h,w,c]` that shares statistics with an element,
//! `μ = mean_S x`, `σ² = mean_S (x − μ)²` (biased) and `r = 1/√(σ² + ε)`:
//! `y = φ(γ_c·(x − μ)·r + β_c)`, where `φ` is the descriptor's [`Activation`] (the
//! identity by default) and a missing `γ` / `β` means 1 / 0. GroupNorm channel `c`
//! belongs to group `c / (C/G)` ([`Grouping::Contiguous`]) or `c mod G`
//! ([`Grouping::Strided`]); LayerNorm is GroupNorm with one group.
//!
//! The statistics pass accumulates shifted sums (`Σ(x − k)`, `Σ(x − k)²`, with `k` the
//! set's first row) in `f32` registers over short runs and in `f64` across runs and
//! chunks, so data with a large mean keep their variance. Work is split into fixed
//! chunks combined in a fixed order: results are bitwise identical for any number of
//! threads. The backward pass is two passes as well: a statistics-gradient pass
//! (`Σ du`, `Σ du·x̂` per channel, `du = dy·φ'(u)`) and an apply pass
//! `dx = r·(γ·du − mean_S(γ·du) − x̂·mean_S(γ·du·x̂))`.
//!
//! ```
//! use effnet::kernels::norm::{Affine, AffineGrads, Norm, NormDesc};
//! use effnet::kernels::activation::Activation;
//! use effnet::kernels::conv::GradMode;
//! let norm = Norm::new(&NormDesc::group_norm(2, (5, 5), 32, 4).with_activation(Activation::Swish)).unwrap();
//! let x: Vec<f32> = (0..norm.x_len()).map(|i| (i % 13) as f32).collect();
//! let (gamma, beta) = (vec![1.0f32; 32], vec![0.0f32; 32]);
//! let mut y = vec![0.0f32; norm.x_len()];
//! let mut stats = norm.new_stats();
//! norm.forward(&x, Affine::new(&gamma, &beta), &mut y, &mut stats).unwrap();
//! let mut dx = vec![0.0f32; norm.x_len()];
//! let (mut dg, mut db) = (vec![0.0f32; 32], vec![0.0f32; 32]);
//! let grads = AffineGrads { dgamma: Some(&mut dg), dbeta: Some(&mut db), mode: GradMode::Overwrite };
//! norm.backward(&x, &y, Affine::new(&gamma, &beta), &stats, &mut dx, grads).unwrap();
//! ```

pub(crate) mod engine;
pub mod reference;

use crate::error::{Error, Result, check_len, checked_product};
use crate::kernels::activation::{Activation, with_act};
use crate::kernels::conv::GradMode;
use crate::simd::{self, SimdLevel, dispatch};
use engine::{ApplyChunk, BwdApplyChunk, BwdStatsChunk, ProxySums, StatsChunk};
use rayon::prelude::*;
use std::marker::PhantomData;

/// How GroupNorm assigns channels to groups.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Grouping {
    /// Consecutive blocks: channel `c` is in group `c / (C/G)` (PyTorch's `GroupNorm`).
    #[default]
    Contiguous,
    /// Interleaved: channel `c` is in group `c mod G`.
    Strided,
}

/// Which normalization, and so which elements share statistics.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// Per channel over the batch and the spatial positions (`batch·h·w` values).
    BatchNorm,
    /// Per sample and group of channels (`h·w·channels/groups` values).
    GroupNorm {
        /// Number of groups `G` (≥ 1, divides `channels`).
        groups: usize,
        /// Channel-to-group assignment.
        grouping: Grouping,
    },
    /// Per sample over `h·w·channels` values (GroupNorm with one group).
    LayerNorm,
}

/// A normalization of an NHWC tensor; validated by [`Norm::new`]. Layouts and
/// semantics are in the [module docs](self).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct NormDesc {
    /// Which normalization.
    pub kind: NormKind,
    /// Images in the batch (N ≥ 1).
    pub batch: usize,
    /// Height (H ≥ 1).
    pub h: usize,
    /// Width (W ≥ 1).
    pub w: usize,
    /// Channels (C ≥ 1).
    pub channels: usize,
    /// ε added to the variance (finite, > 0). Default 1e-3 (the paper's runs).
    pub eps: f32,
    /// Activation fused into the apply pass (default: identity).
    pub activation: Activation,
}

impl NormDesc {
    fn new(kind: NormKind, batch: usize, (h, w): (usize, usize), channels: usize) -> NormDesc {
        NormDesc {
            kind,
            batch,
            h,
            w,
            channels,
            eps: 1e-3,
            activation: Activation::Identity,
        }
    }

    /// BatchNorm, ε = 1e-3, no activation.
    pub fn batch_norm(batch: usize, hw: (usize, usize), channels: usize) -> NormDesc {
        Self::new(NormKind::BatchNorm, batch, hw, channels)
    }

    /// GroupNorm with `groups` contiguous groups, ε = 1e-3, no activation.
    pub fn group_norm(
        batch: usize,
        hw: (usize, usize),
        channels: usize,
        groups: usize,
    ) -> NormDesc {
        let kind = NormKind::GroupNorm {
            groups,
            grouping: Grouping::Contiguous,
        };
        Self::new(kind, batch, hw, channels)
    }

    /// LayerNorm over (H, W, C), ε = 1e-3, no activation.
    pub fn layer_norm(batch: usize, hw: (usize, usize), channels: usize) -> NormDesc {
        Self::new(NormKind::LayerNorm, batch, hw, channels)
    }

    /// Sets ε.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the fused activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// Sets GroupNorm's grouping (no effect on the other kinds).
    pub fn with_grouping(mut self, grouping: Grouping) -> Self {
        if let NormKind::GroupNorm { groups, .. } = self.kind {
            self.kind = NormKind::GroupNorm { groups, grouping };
        }
        self
    }

    /// Number of groups per sample (1 for LayerNorm; BatchNorm has none: 0).
    pub fn groups(&self) -> usize {
        match self.kind {
            NormKind::BatchNorm => 0,
            NormKind::GroupNorm { groups, .. } => groups,
            NormKind::LayerNorm => 1,
        }
    }
}

/// The optional per-channel affine `γ_c·x̂ + β_c` (each `[channels]`); a missing `γ`
/// is 1, a missing `β` is 0.
#[derive(Copy, Clone, Debug, Default)]
pub struct Affine<'a> {
    /// Scale γ, `[channels]`.
    pub gamma: Option<&'a [f32]>,
    /// Shift β, `[channels]`.
    pub beta: Option<&'a [f32]>,
}

impl<'a> Affine<'a> {
    /// No affine (γ = 1, β = 0).
    pub const NONE: Affine<'static> = Affine {
        gamma: None,
        beta: None,
    };

    /// Both γ and β.
    pub fn new(gamma: &'a [f32], beta: &'a [f32]) -> Affine<'a> {
        Affine {
            gamma: Some(gamma),
            beta: Some(beta),
        }
    }
}

/// Where the backward pass writes the affine gradients (`[channels]` each; `None`
/// skips one).
#[derive(Debug, Default)]
pub struct AffineGrads<'a> {
    /// `∂L/∂γ`.
    pub dgamma: Option<&'a mut [f32]>,
    /// `∂L/∂β`.
    pub dbeta: Option<&'a mut [f32]>,
    /// Overwrite or accumulate.
    pub mode: GradMode,
}

/// Statistics saved by a forward pass for the backward pass: one entry per set
/// (`[channels]` for BatchNorm, `[batch][groups]` otherwise).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormStats {
    /// Mean of each set.
    pub mean: Vec<f32>,
    /// Biased variance of each set.
    pub var: Vec<f32>,
    /// `1/√(var + ε)`.
    pub rstd: Vec<f32>,
}

/// BatchNorm's running statistics, `[channels]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats {
    /// Running mean (initially 0).
    pub mean: Vec<f32>,
    /// Running unbiased variance (initially 1).
    pub var: Vec<f32>,
}

impl RunningStats {
    /// Mean 0 and variance 1 for `channels` channels (PyTorch's initialisation).
    pub fn new(channels: usize) -> RunningStats {
        RunningStats {
            mean: vec![0.0; channels],
            var: vec![1.0; channels],
        }
    }
}

/// Elements per chunk (the unit of parallel work and of the fixed reduction order).
pub(crate) const CHUNK_ELEMS: usize = 16384;

/// How a tensor is cut into fixed chunks: `chunks` chunks of `chunk_rows` rows
/// (`c` channels each) per sample of `hw` rows. Independent of the thread count.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Geo {
    pub n: usize,
    pub hw: usize,
    pub c: usize,
    pub chunk_rows: usize,
    pub chunks: usize,
}

impl Geo {
    pub fn new(n: usize, hw: usize, c: usize) -> Geo {
        let chunk_rows = CHUNK_ELEMS.div_ceil(c.max(1)).clamp(1, hw.max(1));
        Geo {
            n,
            hw,
            c,
            chunk_rows,
            chunks: hw.div_ceil(chunk_rows),
        }
    }
    pub fn sample_len(&self) -> usize {
        self.hw * self.c
    }
    pub fn chunk_len(&self) -> usize {
        self.chunk_rows * self.c
    }
    pub fn total_chunks(&self) -> usize {
        self.n * self.chunks
    }
    /// One task per sample (statistics and apply back to back while the sample is in
    /// cache) when that balances over the pool; one task per chunk otherwise. Both
    /// orders give bitwise identical results.
    pub fn per_sample(&self) -> bool {
        let t = rayon::current_num_threads().max(1);
        self.n >= t && (self.n.is_multiple_of(t) || self.n >= 4 * t)
    }
    /// The `x` rows of chunk `j` of sample `n`.
    pub fn chunk<'a>(&self, x: &'a [f32], n: usize, j: usize) -> &'a [f32] {
        let s = &x[n * self.sample_len()..(n + 1) * self.sample_len()];
        let start = j * self.chunk_len();
        &s[start..(start + self.chunk_len()).min(s.len())]
    }
}

/// Sums chunk partials (`chunks × stride`, `f64`) in chunk order.
pub(crate) fn sum_partials(part: &[f64], stride: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; stride];
    for p in part.chunks(stride) {
        for (o, v) in out.iter_mut().zip(p) {
            *o += *v;
        }
    }
    out
}

/// Writes `value` into `out` (overwrite or accumulate).
pub(crate) fn write_grad(out: &mut [f32], value: &[f64], mode: GradMode) {
    for (o, v) in out.iter_mut().zip(value) {
        *o = if mode.accumulate() {
            (*o as f64 + v) as f32
        } else {
            *v as f32
        };
    }
}

/// The per-channel inputs of the apply passes that do not depend on the sample.
#[derive(Copy, Clone)]
pub(crate) struct Channelwise<'a> {
    /// Affine scale (γ or ones).
    pub g: &'a [f32],
    /// Affine shift (β or zeros).
    pub bt: &'a [f32],
    /// Post-activation `y·p + q` (Proxy Norm's correction).
    pub post: Option<(&'a [f32], &'a [f32])>,
    /// The activation.
    pub act: Activation,
}

/// Per-channel `x̂ = (x − xm)·xa + xb` coefficients.
pub(crate) struct Coefs {
    pub xm: Vec<f32>,
    pub xa: Vec<f32>,
    pub xb: Vec<f32>,
}

/// Backward apply coefficients `(p1, q, o)` per channel: `dx = du·p1 + x̂·q + o`.
type DxCoefs = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The options of a backward pass beyond the plain normalization.
#[derive(Copy, Clone, Default)]
pub(crate) struct BwdExtra<'a> {
    /// `du = dy·scale·φ'(u)`.
    pub scale: Option<&'a [f32]>,
    /// Proxy mean μ: also accumulate `Σ dy` and `Σ dy·(φ(u) − μ)`.
    pub proxy_mu: Option<&'a [f32]>,
}

/// A validated normalization: the entry point of the passes. See the
/// [module docs](self) for layouts and semantics.
#[derive(Clone, Debug)]
pub struct Norm {
    desc: NormDesc,
    geo: Geo,
    groups: usize,
    group_of: Vec<usize>,
    x_len: usize,
}

impl Norm {
    /// Validates `desc`: positive sizes, `1 ≤ groups`, `groups | channels`, finite
    /// `ε > 0`, no overflow.
    pub fn new(desc: &NormDesc) -> Result<Norm> {
        let bad = |m: String| Err(Error::InvalidDescriptor(m));
        for (name, v) in [
            ("batch", desc.batch),
            ("h", desc.h),
            ("w", desc.w),
            ("channels", desc.channels),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !(desc.eps.is_finite() && desc.eps > 0.0) {
            return bad(format!("eps must be finite and positive, got {}", desc.eps));
        }
        let c = desc.channels;
        let (groups, grouping) = match desc.kind {
            NormKind::BatchNorm => (0, Grouping::Contiguous),
            NormKind::LayerNorm => (1, Grouping::Contiguous),
            NormKind::GroupNorm { groups, grouping } => {
                if groups == 0 {
                    return bad("groups must be at least 1".into());
                }
                if !c.is_multiple_of(groups) {
                    return bad(format!(
                        "channels ({c}) must be divisible by groups ({groups})"
                    ));
                }
                (groups, grouping)
            }
        };
        let x_len = checked_product("x", &[desc.batch, desc.h, desc.w, c])?;
        let group_of = if groups == 0 {
            Vec::new()
        } else {
            (0..c)
                .map(|ch| match grouping {
                    Grouping::Contiguous => ch / (c / groups),
                    Grouping::Strided => ch % groups,
                })
                .collect()
        };
        Ok(Norm {
            desc: *desc,
            geo: Geo::new(desc.batch, desc.h * desc.w, c),
            groups,
            group_of,
            x_len,
        })
    }

    /// The descriptor.
    pub fn desc(&self) -> &NormDesc {
        &self.desc
    }

    /// Elements of `x` (and `y`, `dy`, `dx`): `batch·h·w·channels`.
    pub fn x_len(&self) -> usize {
        self.x_len
    }

    /// Entries of each [`NormStats`] vector: `channels` for BatchNorm,
    /// `batch·groups` otherwise.
    pub fn sets(&self) -> usize {
        if self.is_batch_norm() {
            self.desc.channels
        } else {
            self.desc.batch * self.groups
        }
    }

    /// The group of channel `c` (GroupNorm/LayerNorm; 0 for BatchNorm).
    pub fn group_of(&self, c: usize) -> usize {
        self.group_of.get(c).copied().unwrap_or(0)
    }

    /// Zeroed statistics of the right size.
    pub fn new_stats(&self) -> NormStats {
        let n = self.sets();
        NormStats {
            mean: vec![0.0; n],
            var: vec![0.0; n],
            rstd: vec![0.0; n],
        }
    }

    fn is_batch_norm(&self) -> bool {
        self.desc.kind == NormKind::BatchNorm
    }

    #[allow(dead_code)]
    pub(crate) fn geo(&self) -> Geo {
        self.geo
    }

    fn check_affine(&self, a: &Affine) -> Result<()> {
        let c = self.desc.channels;
        if let Some(g) = a.gamma {
            check_len("gamma", g.len(), c)?;
        }
        if let Some(b) = a.beta {
            check_len("beta", b.len(), c)?;
        }
        Ok(())
    }

    fn check_stats(&self, s: &NormStats) -> Result<()> {
        let n = self.sets();
        check_len("stats.mean", s.mean.len(), n)?;
        check_len("stats.var", s.var.len(), n)?;
        check_len("stats.rstd", s.rstd.len(), n)
    }

    /// `y = φ(γ·(x − μ)·r + β)` with the statistics of `x` (batch statistics for
    /// BatchNorm: training mode), which are written to `stats` for the backward pass.
    /// `y` is overwritten.
    pub fn forward(
        &self,
        x: &[f32],
        affine: Affine,
        y: &mut [f32],
        stats: &mut NormStats,
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("y", y.len(), self.x_len)?;
        self.check_affine(&affine)?;
        self.check_stats(stats)?;
        let (ones, zeros) = self.unit();
        let cw = Channelwise {
            g: affine.gamma.unwrap_or(&ones),
            bt: affine.beta.unwrap_or(&zeros),
            post: None,
            act: self.desc.activation,
        };
        self.forward_impl(simd::active(), x, cw, y, stats);
        Ok(())
    }

    /// Inference: BatchNorm uses the running statistics (required), folded into one
    /// per-channel scale and shift ([`Norm::fold_inference`]); GroupNorm and LayerNorm
    /// have no running statistics (pass `None`) and compute those of `x` as in
    /// [`Norm::forward`]. `y` is overwritten.
    pub fn forward_infer(
        &self,
        x: &[f32],
        affine: Affine,
        running: Option<&RunningStats>,
        y: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("y", y.len(), self.x_len)?;
        if !self.is_batch_norm() {
            if running.is_some() {
                return Err(Error::InvalidArgument(
                    "GroupNorm and LayerNorm take no running statistics".into(),
                ));
            }
            let mut stats = self.new_stats();
            return self.forward(x, affine, y, &mut stats);
        }
        let running = running.ok_or_else(|| {
            Error::InvalidArgument("BatchNorm inference needs the running statistics".into())
        })?;
        let (scale, shift) = self.fold_inference(running, affine)?;
        let (ones, zeros) = self.unit();
        let level = simd::active();
        let g = self.geo;
        with_act!(self.desc.activation, A => {
            x.par_chunks(g.chunk_len()).zip(y.par_chunks_mut(g.chunk_len())).for_each(|(x, y)| {
                dispatch(level, ApplyChunk {
                    x, y, c: g.c, xm: &zeros, xa: &scale, xb: &shift, g: &ones, bt: &zeros, post: None, act: PhantomData::<A>,
                })
            })
        });
        Ok(())
    }

    /// BatchNorm inference folded into `y = φ(x·scale + shift)`:
    /// `scale = γ/√(running_var + ε)`, `shift = β − running_mean·scale`
    /// (`[channels]` each).
    pub fn fold_inference(
        &self,
        running: &RunningStats,
        affine: Affine,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        if !self.is_batch_norm() {
            return Err(Error::InvalidArgument(
                "only BatchNorm folds running statistics".into(),
            ));
        }
        self.check_affine(&affine)?;
        let c = self.desc.channels;
        check_len("running.mean", running.mean.len(), c)?;
        check_len("running.var", running.var.len(), c)?;
        let eps = self.desc.eps as f64;
        let mut scale = vec![0.0f32; c];
        let mut shift = vec![0.0f32; c];
        for ch in 0..c {
            let g = affine.gamma.map_or(1.0, |g| g[ch] as f64);
            let b = affine.beta.map_or(0.0, |b| b[ch] as f64);
            let sc = g / (running.var[ch] as f64 + eps).sqrt();
            scale[ch] = sc as f32;
            shift[ch] = (b - running.mean[ch] as f64 * sc) as f32;
        }
        Ok((scale, shift))
    }

    /// BatchNorm's running-statistics update after a training forward pass, with
    /// PyTorch's convention: `running = (1 − momentum)·running + momentum·batch`,
    /// where the batch variance is the unbiased one (`·M/(M − 1)`, `M = batch·h·w`).
    /// Needs `M ≥ 2` and `momentum ∈ [0, 1]`.
    pub fn update_running(
        &self,
        stats: &NormStats,
        running: &mut RunningStats,
        momentum: f32,
    ) -> Result<()> {
        if !self.is_batch_norm() {
            return Err(Error::InvalidArgument(
                "only BatchNorm keeps running statistics".into(),
            ));
        }
        self.check_stats(stats)?;
        let c = self.desc.channels;
        check_len("running.mean", running.mean.len(), c)?;
        check_len("running.var", running.var.len(), c)?;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::InvalidArgument(format!(
                "momentum must be in [0, 1], got {momentum}"
            )));
        }
        let m = self.geo.n * self.geo.hw;
        if m < 2 {
            return Err(Error::InvalidArgument(
                "the unbiased variance needs at least 2 values per channel".into(),
            ));
        }
        let unbias = m as f64 / (m - 1) as f64;
        let mo = momentum as f64;
        for ch in 0..c {
            let rm = &mut running.mean[ch];
            *rm = ((1.0 - mo) * *rm as f64 + mo * stats.mean[ch] as f64) as f32;
            let rv = &mut running.var[ch];
            *rv = ((1.0 - mo) * *rv as f64 + mo * stats.var[ch] as f64 * unbias) as f32;
        }
        Ok(())
    }

    /// The gradients of [`Norm::forward`]: `dx` (overwritten) and, where requested,
    /// `dγ`, `dβ`. `x` is the forward input, `stats` what the forward pass saved, and
    /// `affine` the parameters it used.
    pub fn backward(
        &self,
        x: &[f32],
        dy: &[f32],
        affine: Affine,
        stats: &NormStats,
        dx: &mut [f32],
        grads: AffineGrads,
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("dy", dy.len(), self.x_len)?;
        check_len("dx", dx.len(), self.x_len)?;
        self.check_affine(&affine)?;
        self.check_stats(stats)?;
        let c = self.desc.channels;
        if let Some(d) = &grads.dgamma {
            check_len("dgamma", d.len(), c)?;
        }
        if let Some(d) = &grads.dbeta {
            check_len("dbeta", d.len(), c)?;
        }
        let (ones, zeros) = self.unit();
        let cw = Channelwise {
            g: affine.gamma.unwrap_or(&ones),
            bt: affine.beta.unwrap_or(&zeros),
            post: None,
            act: self.desc.activation,
        };
        let totals =
            self.backward_impl(simd::active(), (x, dy), cw, BwdExtra::default(), stats, dx);
        if let Some(d) = grads.dgamma {
            write_grad(d, &totals[c..2 * c], grads.mode);
        }
        if let Some(d) = grads.dbeta {
            write_grad(d, &totals[..c], grads.mode);
        }
        Ok(())
    }

    fn unit(&self) -> (Vec<f32>, Vec<f32>) {
        (vec![1.0; self.desc.channels], vec![0.0; self.desc.channels])
    }

    /// Group means and variances of one sample from its chunk partials
    /// (`chunks × [Σ(x−k) | Σ(x−k)²]`) and shift row `k`; written as `f32` stats.
    fn finalize_sample(
        &self,
        shift: &[f32],
        part: &[f64],
        out: (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let (c, gn) = (self.geo.c, self.groups);
        let tot = sum_partials(part, 2 * c);
        let m = self.geo.hw as f64;
        let gs = (c / gn) as f64;
        let mut mean_c = vec![0.0f64; c];
        let mut m2_c = vec![0.0f64; c];
        let mut gmean = vec![0.0f64; gn];
        for ch in 0..c {
            let (s1, s2) = (tot[ch], tot[c + ch]);
            mean_c[ch] = shift[ch] as f64 + s1 / m;
            m2_c[ch] = (s2 - s1 * s1 / m).max(0.0);
            gmean[self.group_of[ch]] += mean_c[ch];
        }
        for v in gmean.iter_mut() {
            *v /= gs;
        }
        let mut gm2 = vec![0.0f64; gn];
        for ch in 0..c {
            let g = self.group_of[ch];
            let d = mean_c[ch] - gmean[g];
            gm2[g] += m2_c[ch] + m * d * d;
        }
        let eps = self.desc.eps as f64;
        let (mean, var, rstd) = out;
        for g in 0..gn {
            let v = gm2[g] / (m * gs);
            mean[g] = gmean[g] as f32;
            var[g] = v as f32;
            rstd[g] = (1.0 / (v + eps).sqrt()) as f32;
        }
    }

    /// Per-channel `x̂ = (x − xm)·xa + xb` coefficients of one sample from its saved
    /// stats (`[groups]` each), or of the batch for BatchNorm (`[channels]`).
    fn xhat_coefs(&self, mean: &[f32], rstd: &[f32]) -> Coefs {
        let c = self.geo.c;
        let set = |ch: usize| {
            if self.groups == 0 {
                ch
            } else {
                self.group_of[ch]
            }
        };
        Coefs {
            xm: (0..c).map(|ch| mean[set(ch)]).collect(),
            xa: (0..c).map(|ch| rstd[set(ch)]).collect(),
            xb: vec![0.0; c],
        }
    }

    /// Statistics pass of chunk `(n, j)` into its partial.
    fn stats_chunk(&self, level: SimdLevel, x: &[f32], n: usize, j: usize, part: &mut [f64]) {
        let g = self.geo;
        let c = g.c;
        let shift = if self.groups == 0 {
            &x[..c]
        } else {
            &x[n * g.sample_len()..n * g.sample_len() + c]
        };
        let (s1, s2) = part.split_at_mut(c);
        dispatch(
            level,
            StatsChunk {
                x: g.chunk(x, n, j),
                c,
                shift,
                s1,
                s2,
            },
        );
    }

    /// The forward pass with resolved per-channel inputs (shared with Proxy Norm).
    pub(crate) fn forward_impl(
        &self,
        level: SimdLevel,
        x: &[f32],
        cw: Channelwise,
        y: &mut [f32],
        stats: &mut NormStats,
    ) {
        let g = self.geo;
        let (c, sl, cl) = (g.c, g.sample_len(), g.chunk_len());
        let stride = 2 * c;
        let apply = |xc: &[f32], yc: &mut [f32], k: &Coefs| {
            with_act!(cw.act, A => dispatch(level, ApplyChunk {
                x: xc, y: yc, c, xm: &k.xm, xa: &k.xa, xb: &k.xb, g: cw.g, bt: cw.bt, post: cw.post, act: PhantomData::<A>,
            }))
        };
        if self.groups > 0 && g.per_sample() {
            let gn = self.groups;
            let mut part = vec![0.0f64; g.total_chunks() * stride];
            x.par_chunks(sl)
                .zip(y.par_chunks_mut(sl))
                .zip(part.par_chunks_mut(g.chunks * stride))
                .zip(stats.mean.par_chunks_mut(gn))
                .zip(stats.var.par_chunks_mut(gn))
                .zip(stats.rstd.par_chunks_mut(gn))
                .enumerate()
                .for_each(|(n, (((((xs, ys), ps), mean), var), rstd))| {
                    for (j, pc) in ps.chunks_mut(stride).enumerate() {
                        self.stats_chunk(level, x, n, j, pc);
                    }
                    self.finalize_sample(&xs[..c], ps, (mean, var, rstd));
                    let k = self.xhat_coefs(mean, rstd);
                    for (xc, yc) in xs.chunks(cl).zip(ys.chunks_mut(cl)) {
                        apply(xc, yc, &k);
                    }
                });
            return;
        }
        let mut part = vec![0.0f64; g.total_chunks() * stride];
        part.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(i, pc)| self.stats_chunk(level, x, i / g.chunks, i % g.chunks, pc));
        let coefs: Vec<Coefs> = if self.groups == 0 {
            // BatchNorm: one set per channel over every chunk of every sample.
            let tot = sum_partials(&part, stride);
            let m = (g.n * g.hw) as f64;
            let eps = self.desc.eps as f64;
            for ch in 0..c {
                let (s1, s2) = (tot[ch], tot[c + ch]);
                let v = (s2 - s1 * s1 / m).max(0.0) / m;
                stats.mean[ch] = (x[ch] as f64 + s1 / m) as f32;
                stats.var[ch] = v as f32;
                stats.rstd[ch] = (1.0 / (v + eps).sqrt()) as f32;
            }
            vec![self.xhat_coefs(&stats.mean, &stats.rstd)]
        } else {
            let gn = self.groups;
            (0..g.n)
                .map(|n| {
                    let ps = &part[n * g.chunks * stride..(n + 1) * g.chunks * stride];
                    let r = n * gn..(n + 1) * gn;
                    self.finalize_sample(
                        &x[n * sl..n * sl + c],
                        ps,
                        (
                            &mut stats.mean[r.clone()],
                            &mut stats.var[r.clone()],
                            &mut stats.rstd[r.clone()],
                        ),
                    );
                    self.xhat_coefs(&stats.mean[r.clone()], &stats.rstd[r])
                })
                .collect()
        };
        y.par_chunks_mut(sl).enumerate().for_each(|(n, ys)| {
            let k = &coefs[n.min(coefs.len() - 1)];
            ys.par_chunks_mut(cl)
                .enumerate()
                .for_each(|(j, yc)| apply(g.chunk(x, n, j), yc, k));
        });
    }

    /// Backward apply coefficients `(p1, q, o)` from the totals `Σ du`, `Σ du·x̂` of
    /// one sample (or of the batch for BatchNorm) and its saved `rstd`.
    fn dx_coefs(&self, g_aff: &[f32], sdu: &[f64], sdux: &[f64], rstd: &[f32]) -> DxCoefs {
        let c = self.geo.c;
        let (sets, m): (usize, f64) = if self.groups == 0 {
            (c, (self.geo.n * self.geo.hw) as f64)
        } else {
            (self.groups, (self.geo.hw * (c / self.groups)) as f64)
        };
        let set = |ch: usize| {
            if self.groups == 0 {
                ch
            } else {
                self.group_of[ch]
            }
        };
        let mut a = vec![0.0f64; sets];
        let mut b = vec![0.0f64; sets];
        for ch in 0..c {
            a[set(ch)] += g_aff[ch] as f64 * sdu[ch];
            b[set(ch)] += g_aff[ch] as f64 * sdux[ch];
        }
        let mut p1 = vec![0.0f32; c];
        let mut q = vec![0.0f32; c];
        let mut o = vec![0.0f32; c];
        for ch in 0..c {
            let s = set(ch);
            let r = rstd[s] as f64;
            p1[ch] = (g_aff[ch] as f64 * r) as f32;
            q[ch] = (-r * b[s] / m) as f32;
            o[ch] = (-r * a[s] / m) as f32;
        }
        (p1, q, o)
    }

    /// The backward pass with resolved per-channel inputs (shared with Proxy Norm).
    /// Returns the per-channel totals over the batch, `[Σ du | Σ du·x̂]` and, with a
    /// proxy mean, `[… | Σ dy | Σ dy·(φ(u) − μ)]` (`f64`, fixed order).
    pub(crate) fn backward_impl(
        &self,
        level: SimdLevel,
        (x, dy): (&[f32], &[f32]),
        cw: Channelwise,
        extra: BwdExtra,
        stats: &NormStats,
        dx: &mut [f32],
    ) -> Vec<f64> {
        let g = self.geo;
        let (c, sl, cl) = (g.c, g.sample_len(), g.chunk_len());
        let nacc = if extra.proxy_mu.is_some() { 4 } else { 2 };
        let stride = nacc * c;
        let pass1 = |xc: &[f32], dyc: &[f32], k: &Coefs, pc: &mut [f64]| {
            let (sdu, rest) = pc.split_at_mut(c);
            let (sdux, rest) = rest.split_at_mut(c);
            let proxy = extra.proxy_mu.map(|mu| {
                let (sdz, sdza) = rest.split_at_mut(c);
                ProxySums { mu, sdz, sdza }
            });
            with_act!(cw.act, A => dispatch(level, BwdStatsChunk {
                x: xc, dy: dyc, c, xm: &k.xm, xa: &k.xa, g: cw.g, bt: cw.bt,
                scale: extra.scale, sdu, sdux, proxy, act: PhantomData::<A>,
            }))
        };
        let pass2 = |xc: &[f32], dyc: &[f32], dxc: &mut [f32], k: &Coefs, d: &DxCoefs| {
            with_act!(cw.act, A => dispatch(level, BwdApplyChunk {
                x: xc, dy: dyc, dx: dxc, c, xm: &k.xm, xa: &k.xa, g: cw.g,
                bt: cw.bt, scale: extra.scale, p1: &d.0, q: &d.1, o: &d.2, act: PhantomData::<A>,
            }))
        };
        let mut part = vec![0.0f64; g.total_chunks() * stride];
        if self.groups > 0 && g.per_sample() {
            let gn = self.groups;
            x.par_chunks(sl)
                .zip(dy.par_chunks(sl))
                .zip(dx.par_chunks_mut(sl))
                .zip(part.par_chunks_mut(g.chunks * stride))
                .enumerate()
                .for_each(|(n, (((xs, dys), dxs), ps))| {
                    let r = n * gn..(n + 1) * gn;
                    let xk = self.xhat_coefs(&stats.mean[r.clone()], &stats.rstd[r.clone()]);
                    for ((xc, dyc), pc) in
                        xs.chunks(cl).zip(dys.chunks(cl)).zip(ps.chunks_mut(stride))
                    {
                        pass1(xc, dyc, &xk, pc);
                    }
                    let tot = sum_partials(ps, stride);
                    let k = self.dx_coefs(cw.g, &tot[..c], &tot[c..2 * c], &stats.rstd[r]);
                    for ((xc, dyc), dxc) in
                        xs.chunks(cl).zip(dys.chunks(cl)).zip(dxs.chunks_mut(cl))
                    {
                        pass2(xc, dyc, dxc, &xk, &k);
                    }
                });
        } else {
            let coefs: Vec<Coefs> = if self.groups == 0 {
                vec![self.xhat_coefs(&stats.mean, &stats.rstd)]
            } else {
                let gn = self.groups;
                (0..g.n)
                    .map(|n| {
                        let r = n * gn..(n + 1) * gn;
                        self.xhat_coefs(&stats.mean[r.clone()], &stats.rstd[r])
                    })
                    .collect()
            };
            let pick = |n: usize| &coefs[n.min(coefs.len() - 1)];
            part.par_chunks_mut(stride).enumerate().for_each(|(i, pc)| {
                let (n, j) = (i / g.chunks, i % g.chunks);
                pass1(g.chunk(x, n, j), g.chunk(dy, n, j), pick(n), pc)
            });
            let ks: Vec<DxCoefs> = if self.groups == 0 {
                let tot = self.batch_totals(&part, stride);
                vec![self.dx_coefs(cw.g, &tot[..c], &tot[c..2 * c], &stats.rstd)]
            } else {
                let gn = self.groups;
                (0..g.n)
                    .map(|n| {
                        let ps = &part[n * g.chunks * stride..(n + 1) * g.chunks * stride];
                        let tot = sum_partials(ps, stride);
                        self.dx_coefs(
                            cw.g,
                            &tot[..c],
                            &tot[c..2 * c],
                            &stats.rstd[n * gn..(n + 1) * gn],
                        )
                    })
                    .collect()
            };
            dx.par_chunks_mut(sl).enumerate().for_each(|(n, dxs)| {
                let xk = pick(n);
                let k = &ks[n.min(ks.len() - 1)];
                dxs.par_chunks_mut(cl)
                    .enumerate()
                    .for_each(|(j, dxc)| pass2(g.chunk(x, n, j), g.chunk(dy, n, j), dxc, xk, k));
            });
        }
        self.batch_totals(&part, stride)
    }

    /// Totals over the batch: per-sample sums in chunk order, then over samples in
    /// order.
    fn batch_totals(&self, part: &[f64], stride: usize) -> Vec<f64> {
        let per = self.geo.chunks * stride;
        let mut out = vec![0.0f64; stride];
        for ps in part.chunks(per) {
            for (o, v) in out.iter_mut().zip(sum_partials(ps, stride)) {
                *o += v;
            }
        }
        out
    }
}
