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
//! # Caller-owned memory
//! Every pass also exists as `*_with_workspace`, taking its scratch memory from a
//! buffer the caller owns: query [`Norm::workspace_len`] once per pass ([`NormPass`]),
//! allocate it once and pass it to every call (see [`crate::kernels::scratch`]). The
//! plain passes call the workspace forms on a buffer of that size the calling thread
//! keeps between calls ([`crate::kernels::scratch::with_reused`]): one
//! implementation, the same bits. The workspace holds the per-chunk partial sums
//! (`f64`: each takes two floats of the region, which starts on a 64-byte boundary),
//! the per-sample (GroupNorm/LayerNorm) or per-batch (BatchNorm) coefficients and
//! totals, the unit vectors standing for a missing γ/β, and for
//! [`Norm::forward_infer`] the folded scale and shift (BatchNorm) or the statistics
//! of `x` (GroupNorm/LayerNorm). Sizes depend on the descriptor only (not on the
//! thread count or SIMD level). Allocates on the workspace path: nothing (the
//! parallel iterators' own bookkeeping aside).
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

use crate::error::{Error, Result, check_len, checked_product, try_reserve_for};
use crate::kernels::activation::{Activation, with_act};
use crate::kernels::conv::GradMode;
use crate::kernels::reduce::sum_rows;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
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

/// The product of `dims`, saturating at `usize::MAX`: workspace sizes of absurd
/// descriptors saturate (like [`WorkspaceLayout`]'s sums) instead of wrapping to a small
/// number, so a size query never under-reports and an allocation of it fails cleanly.
pub(crate) fn sat(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// Adds an `f64` region of `n` elements to `l` (`2·n` floats; see [`take_f64`]).
pub(crate) fn region_f64(l: &mut WorkspaceLayout, n: usize) -> &mut WorkspaceLayout {
    l.region(n.saturating_mul(2))
}

/// Takes an `f64` region of `n` elements from `ws`: `2·n` floats reinterpreted. Every
/// region starts on a 64-byte boundary ([`crate::kernels::scratch`]) and has an even
/// length, so the cast is always aligned; its contents are unspecified (any bit
/// pattern is a valid `f64`).
pub(crate) fn take_f64<'a>(ws: &mut Workspace<'a>, n: usize) -> Result<&'a mut [f64]> {
    let floats = ws.take(n.saturating_mul(2))?;
    bytemuck::try_cast_slice_mut(floats)
        .map_err(|e| Error::InvalidArgument(format!("workspace region not aligned for f64: {e:?}")))
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

/// Fills `buf` (`2·c` floats) with `[1; c] | [0; c]` and returns the halves.
pub(crate) fn unit(buf: &mut [f32]) -> (&[f32], &[f32]) {
    let (ones, zeros) = buf.split_at_mut(buf.len() / 2);
    ones.fill(1.0);
    zeros.fill(0.0);
    (ones, zeros)
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

/// Three per-channel coefficient vectors stored back to back (`3·c` floats): the
/// forward `x̂ = (x − xm)·xa + xb` coefficients `[xm | xa | xb]`, or the backward
/// apply coefficients `[p1 | q | o]` of `dx = du·p1 + x̂·q + o`.
#[derive(Copy, Clone)]
pub(crate) struct Coefs<'a>(&'a [f32], &'a [f32], &'a [f32]);

impl<'a> Coefs<'a> {
    fn of(buf: &'a [f32], c: usize) -> Coefs<'a> {
        Coefs(&buf[..c], &buf[c..2 * c], &buf[2 * c..3 * c])
    }
}

/// The options of a backward pass beyond the plain normalization.
#[derive(Copy, Clone, Default)]
pub(crate) struct BwdExtra<'a> {
    /// `du = dy·scale·φ'(u)`.
    pub scale: Option<&'a [f32]>,
    /// Proxy mean μ: also accumulate `Σ dy` and `Σ dy·(φ(u) − μ)`.
    pub proxy_mu: Option<&'a [f32]>,
}

/// One pass of a normalization (for [`Norm::workspace_len`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NormPass {
    /// [`Norm::forward`] (training: batch statistics).
    Forward,
    /// [`Norm::forward_infer`].
    ForwardInfer,
    /// [`Norm::backward`].
    Backward,
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
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] for a rule broken, [`Error::Overflow`] when the
    /// tensor does not fit in memory addressing, [`Error::OutOfMemory`] when the
    /// per-channel table (one `usize` per channel, GroupNorm and LayerNorm) cannot be
    /// allocated.
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
        // The plan's only table: one entry per channel, allocated fallibly (a huge
        // `channels` is Error::OutOfMemory, not an abort).
        let mut group_of = Vec::new();
        if groups != 0 {
            try_reserve_for(&mut group_of, "the channel-to-group table", c)?;
            group_of.extend((0..c).map(|ch| match grouping {
                Grouping::Contiguous => ch / (c / groups),
                Grouping::Strided => ch % groups,
            }));
        }
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

    /// Floats (`f32` elements) of workspace `pass` needs (see [`crate::kernels::scratch`]
    /// and the [module docs](self#caller-owned-memory)). Depends on the descriptor and
    /// the pass only: the same for any thread count and SIMD level.
    pub fn workspace_len(&self, pass: NormPass) -> usize {
        self.layout(pass).len()
    }

    /// The regions `pass` takes from its workspace, in order.
    fn layout(&self, pass: NormPass) -> WorkspaceLayout {
        let c = self.desc.channels;
        let mut l = WorkspaceLayout::new(1);
        match pass {
            NormPass::Forward => {
                l.region(2 * c);
                self.forward_regions(&mut l);
            }
            NormPass::ForwardInfer if self.is_batch_norm() => {
                l.region(2 * c).region(2 * c);
            }
            NormPass::ForwardInfer => {
                l.region(3 * self.sets()).region(2 * c);
                self.forward_regions(&mut l);
            }
            NormPass::Backward => {
                l.region(2 * c);
                self.backward_regions(&mut l, 2);
            }
        }
        l
    }

    /// Runs `f` on a workspace of exactly the size `pass` needs, kept by the calling
    /// thread between calls ([`crate::kernels::scratch::with_reused`]).
    fn allocating<R>(&self, pass: NormPass, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
        self.layout(pass).try_with_reused(f)
    }

    /// Statistic sets whose `x̂` coefficients differ: one per sample for
    /// GroupNorm/LayerNorm, one for the whole batch for BatchNorm.
    fn coef_sets(&self) -> usize {
        if self.groups == 0 { 1 } else { self.geo.n }
    }

    /// `f64` scratch of [`Norm::finalize_sample`] for one sample:
    /// `[totals (2c) | channel means (c) | channel M2 (c) | group means | group M2]`.
    fn finalize_len(&self) -> usize {
        4 * self.geo.c + 2 * self.groups
    }

    /// The regions of [`Norm::forward_impl`] (shared with Proxy Norm): the chunk
    /// partials (`f64`), the `x̂` coefficients of every set, and the finalization
    /// scratch (`f64`; per sample for GroupNorm/LayerNorm, the totals for BatchNorm).
    pub(crate) fn forward_regions(&self, l: &mut WorkspaceLayout) {
        let g = self.geo;
        region_f64(l, sat(&[g.total_chunks(), 2, g.c]));
        l.region(sat(&[self.coef_sets(), 3, g.c]));
        let fin = if self.groups == 0 {
            sat(&[2, g.c])
        } else {
            sat(&[g.n, self.finalize_len()])
        };
        region_f64(l, fin);
    }

    /// The regions of [`Norm::backward_impl`] with `nacc` sums per channel (2, or 4
    /// with Proxy Norm's): the chunk partials, the `x̂` and `dx` coefficients of every
    /// set, the per-set sums of [`Norm::dx_coefs`], the per-sample totals and the batch
    /// totals (all sums `f64`).
    pub(crate) fn backward_regions(&self, l: &mut WorkspaceLayout, nacc: usize) {
        let g = self.geo;
        let stride = sat(&[nacc, g.c]);
        let k = self.coef_sets();
        region_f64(l, sat(&[g.total_chunks(), stride]));
        l.region(sat(&[k, 3, g.c])).region(sat(&[k, 3, g.c]));
        region_f64(l, sat(&[k, 2, self.sets_per_coef()]));
        region_f64(l, sat(&[g.n, stride]));
        region_f64(l, stride);
    }

    /// Sets covered by one coefficient set (channels for BatchNorm, groups otherwise).
    fn sets_per_coef(&self) -> usize {
        if self.groups == 0 {
            self.geo.c
        } else {
            self.groups
        }
    }

    /// `y = φ(γ·(x − μ)·r + β)` with the statistics of `x` (batch statistics for
    /// BatchNorm: training mode), which are written to `stats` for the backward pass.
    /// `y` is overwritten. Allocates its workspace; see
    /// [`Norm::forward_with_workspace`].
    pub fn forward(
        &self,
        x: &[f32],
        affine: Affine,
        y: &mut [f32],
        stats: &mut NormStats,
    ) -> Result<()> {
        self.allocating(NormPass::Forward, |ws| {
            self.forward_with_workspace(x, affine, y, stats, ws)
        })
    }

    /// [`Norm::forward`] with its scratch in `ws`: at least
    /// [`Norm::workspace_len`]`(NormPass::Forward)` floats, any contents (left
    /// unspecified). Errors: the buffer checks of [`Norm::forward`] first, then
    /// [`Error::BufferSize`] naming `"workspace"` if `ws` is short.
    pub fn forward_with_workspace(
        &self,
        x: &[f32],
        affine: Affine,
        y: &mut [f32],
        stats: &mut NormStats,
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("y", y.len(), self.x_len)?;
        self.check_affine(&affine)?;
        self.check_stats(stats)?;
        let mut ws = Workspace::new(ws, &self.layout(NormPass::Forward))?;
        let out = [&mut stats.mean[..], &mut stats.var, &mut stats.rstd];
        self.forward_unchecked(x, affine, y, out, &mut ws)
    }

    /// The training forward pass after the checks: the unit vectors, then
    /// [`Norm::forward_impl`].
    fn forward_unchecked(
        &self,
        x: &[f32],
        affine: Affine,
        y: &mut [f32],
        stats: [&mut [f32]; 3],
        ws: &mut Workspace,
    ) -> Result<()> {
        let (ones, zeros) = unit(ws.take(2 * self.desc.channels)?);
        let cw = Channelwise {
            g: affine.gamma.unwrap_or(ones),
            bt: affine.beta.unwrap_or(zeros),
            post: None,
            act: self.desc.activation,
        };
        self.forward_impl(simd::active(), x, cw, y, stats, ws)
    }

    /// Inference: BatchNorm uses the running statistics (required), folded into one
    /// per-channel scale and shift ([`Norm::fold_inference`]); GroupNorm and LayerNorm
    /// have no running statistics (pass `None`) and compute those of `x` as in
    /// [`Norm::forward`]. `y` is overwritten. Allocates its workspace; see
    /// [`Norm::forward_infer_with_workspace`].
    pub fn forward_infer(
        &self,
        x: &[f32],
        affine: Affine,
        running: Option<&RunningStats>,
        y: &mut [f32],
    ) -> Result<()> {
        self.allocating(NormPass::ForwardInfer, |ws| {
            self.forward_infer_with_workspace(x, affine, running, y, ws)
        })
    }

    /// [`Norm::forward_infer`] with its scratch in `ws` (at least
    /// [`Norm::workspace_len`]`(NormPass::ForwardInfer)` floats; errors as
    /// [`Norm::forward_with_workspace`]).
    pub fn forward_infer_with_workspace(
        &self,
        x: &[f32],
        affine: Affine,
        running: Option<&RunningStats>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("y", y.len(), self.x_len)?;
        self.check_affine(&affine)?;
        if !self.is_batch_norm() {
            if running.is_some() {
                return Err(Error::InvalidArgument(
                    "GroupNorm and LayerNorm take no running statistics".into(),
                ));
            }
            let mut ws = Workspace::new(ws, &self.layout(NormPass::ForwardInfer))?;
            let sets = self.sets();
            let (mean, rest) = ws.take(3 * sets)?.split_at_mut(sets);
            let (var, rstd) = rest.split_at_mut(sets);
            return self.forward_unchecked(x, affine, y, [mean, var, rstd], &mut ws);
        }
        let running = running.ok_or_else(|| {
            Error::InvalidArgument("BatchNorm inference needs the running statistics".into())
        })?;
        self.check_running(running)?;
        let mut ws = Workspace::new(ws, &self.layout(NormPass::ForwardInfer))?;
        let c = self.desc.channels;
        let (scale, shift) = ws.take(2 * c)?.split_at_mut(c);
        self.fold_into(running, affine, scale, shift);
        let (ones, zeros) = unit(ws.take(2 * c)?);
        let (scale, shift) = (&*scale, &*shift);
        let level = simd::active();
        let g = self.geo;
        with_act!(self.desc.activation, A => {
            x.par_chunks(g.chunk_len()).zip(y.par_chunks_mut(g.chunk_len())).for_each(|(x, y)| {
                dispatch(level, ApplyChunk {
                    x, y, c: g.c, xm: zeros, xa: scale, xb: shift, g: ones, bt: zeros, post: None, act: PhantomData::<A>,
                })
            })
        });
        Ok(())
    }

    fn check_running(&self, running: &RunningStats) -> Result<()> {
        let c = self.desc.channels;
        check_len("running.mean", running.mean.len(), c)?;
        check_len("running.var", running.var.len(), c)
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
        self.check_running(running)?;
        let c = self.desc.channels;
        let mut scale = vec![0.0f32; c];
        let mut shift = vec![0.0f32; c];
        self.fold_into(running, affine, &mut scale, &mut shift);
        Ok((scale, shift))
    }

    /// [`Norm::fold_inference`] into `scale`, `shift` (checked by the caller).
    fn fold_into(
        &self,
        running: &RunningStats,
        affine: Affine,
        scale: &mut [f32],
        shift: &mut [f32],
    ) {
        let eps = self.desc.eps as f64;
        for ch in 0..self.desc.channels {
            let g = affine.gamma.map_or(1.0, |g| g[ch] as f64);
            let b = affine.beta.map_or(0.0, |b| b[ch] as f64);
            let sc = g / (running.var[ch] as f64 + eps).sqrt();
            scale[ch] = sc as f32;
            shift[ch] = (b - running.mean[ch] as f64 * sc) as f32;
        }
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
    /// `affine` the parameters it used. Allocates its workspace; see
    /// [`Norm::backward_with_workspace`].
    pub fn backward(
        &self,
        x: &[f32],
        dy: &[f32],
        affine: Affine,
        stats: &NormStats,
        dx: &mut [f32],
        grads: AffineGrads,
    ) -> Result<()> {
        self.allocating(NormPass::Backward, |ws| {
            self.backward_with_workspace(x, dy, affine, stats, dx, grads, ws)
        })
    }

    /// [`Norm::backward`] with its scratch in `ws` (at least
    /// [`Norm::workspace_len`]`(NormPass::Backward)` floats; errors as
    /// [`Norm::forward_with_workspace`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_workspace(
        &self,
        x: &[f32],
        dy: &[f32],
        affine: Affine,
        stats: &NormStats,
        dx: &mut [f32],
        grads: AffineGrads,
        ws: &mut [f32],
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
        let mut ws = Workspace::new(ws, &self.layout(NormPass::Backward))?;
        let (ones, zeros) = unit(ws.take(2 * c)?);
        let cw = Channelwise {
            g: affine.gamma.unwrap_or(ones),
            bt: affine.beta.unwrap_or(zeros),
            post: None,
            act: self.desc.activation,
        };
        let saved = (&stats.mean[..], &stats.rstd[..]);
        let extra = BwdExtra::default();
        let totals = self.backward_impl(simd::active(), (x, dy), cw, extra, saved, dx, &mut ws)?;
        if let Some(d) = grads.dgamma {
            write_grad(d, &totals[c..2 * c], grads.mode);
        }
        if let Some(d) = grads.dbeta {
            write_grad(d, &totals[..c], grads.mode);
        }
        Ok(())
    }

    /// Group means and variances of one sample from its chunk partials
    /// (`chunks × [Σ(x−k) | Σ(x−k)²]`) and shift row `k`; written as `f32` stats.
    /// `scratch` holds [`Norm::finalize_len`] values (any contents).
    fn finalize_sample(
        &self,
        shift: &[f32],
        part: &[f64],
        out: (&mut [f32], &mut [f32], &mut [f32]),
        scratch: &mut [f64],
    ) {
        let (c, gn) = (self.geo.c, self.groups);
        let (tot, rest) = scratch.split_at_mut(2 * c);
        let (mean_c, rest) = rest.split_at_mut(c);
        let (m2_c, rest) = rest.split_at_mut(c);
        let (gmean, gm2) = rest.split_at_mut(gn);
        sum_rows(part, tot);
        let m = self.geo.hw as f64;
        let gs = (c / gn) as f64;
        gmean.fill(0.0);
        for ch in 0..c {
            let (s1, s2) = (tot[ch], tot[c + ch]);
            mean_c[ch] = shift[ch] as f64 + s1 / m;
            m2_c[ch] = (s2 - s1 * s1 / m).max(0.0);
            gmean[self.group_of[ch]] += mean_c[ch];
        }
        for v in gmean.iter_mut() {
            *v /= gs;
        }
        gm2.fill(0.0);
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

    /// The statistic set of channel `ch` in a coefficient set.
    fn set_of(&self, ch: usize) -> usize {
        if self.groups == 0 {
            ch
        } else {
            self.group_of[ch]
        }
    }

    /// Per-channel `x̂ = (x − xm)·xa + xb` coefficients `[xm | xa | xb]` (into `out`,
    /// `3·channels`) of one sample from its saved stats (`[groups]` each), or of the
    /// batch for BatchNorm (`[channels]`).
    fn xhat_coefs<'o>(&self, mean: &[f32], rstd: &[f32], out: &'o mut [f32]) -> Coefs<'o> {
        let c = self.geo.c;
        let (xm, rest) = out.split_at_mut(c);
        let (xa, xb) = rest.split_at_mut(c);
        for ch in 0..c {
            xm[ch] = mean[self.set_of(ch)];
            xa[ch] = rstd[self.set_of(ch)];
        }
        xb.fill(0.0);
        Coefs::of(out, c)
    }

    /// Statistics pass of chunk `(n, j)` into its partial (overwritten).
    fn stats_chunk(&self, level: SimdLevel, x: &[f32], n: usize, j: usize, part: &mut [f64]) {
        let g = self.geo;
        let c = g.c;
        let shift = if self.groups == 0 {
            &x[..c]
        } else {
            &x[n * g.sample_len()..n * g.sample_len() + c]
        };
        part.fill(0.0);
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

    /// The forward pass with resolved per-channel inputs (shared with Proxy Norm):
    /// takes the regions of [`Norm::forward_regions`] from `ws` and writes the
    /// statistics into `[mean, var, rstd]` (`sets` each).
    pub(crate) fn forward_impl(
        &self,
        level: SimdLevel,
        x: &[f32],
        cw: Channelwise,
        y: &mut [f32],
        [mean, var, rstd]: [&mut [f32]; 3],
        ws: &mut Workspace,
    ) -> Result<()> {
        let g = self.geo;
        let (c, sl, cl) = (g.c, g.sample_len(), g.chunk_len());
        let stride = 2 * c;
        let part = take_f64(ws, g.total_chunks() * stride)?;
        let coefs = ws.take(self.coef_sets() * 3 * c)?;
        let fl = self.finalize_len();
        let fin = take_f64(ws, if self.groups == 0 { 2 * c } else { g.n * fl })?;
        let apply = |xc: &[f32], yc: &mut [f32], k: Coefs| {
            with_act!(cw.act, A => dispatch(level, ApplyChunk {
                x: xc, y: yc, c, xm: k.0, xa: k.1, xb: k.2, g: cw.g, bt: cw.bt, post: cw.post, act: PhantomData::<A>,
            }))
        };
        if self.groups > 0 && g.per_sample() {
            let gn = self.groups;
            x.par_chunks(sl)
                .zip(y.par_chunks_mut(sl))
                .zip(part.par_chunks_mut(g.chunks * stride))
                .zip(mean.par_chunks_mut(gn))
                .zip(var.par_chunks_mut(gn))
                .zip(rstd.par_chunks_mut(gn))
                .zip(coefs.par_chunks_mut(3 * c))
                .zip(fin.par_chunks_mut(fl))
                .enumerate()
                .for_each(|(n, (((((((xs, ys), ps), mean), var), rstd), kb), fs))| {
                    for (j, pc) in ps.chunks_mut(stride).enumerate() {
                        self.stats_chunk(level, x, n, j, pc);
                    }
                    self.finalize_sample(&xs[..c], ps, (mean, var, rstd), fs);
                    let k = self.xhat_coefs(mean, rstd, kb);
                    for (xc, yc) in xs.chunks(cl).zip(ys.chunks_mut(cl)) {
                        apply(xc, yc, k);
                    }
                });
            return Ok(());
        }
        part.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(i, pc)| self.stats_chunk(level, x, i / g.chunks, i % g.chunks, pc));
        if self.groups == 0 {
            // BatchNorm: one set per channel over every chunk of every sample.
            let tot = &mut fin[..stride];
            sum_rows(part, tot);
            let m = (g.n * g.hw) as f64;
            let eps = self.desc.eps as f64;
            for ch in 0..c {
                let (s1, s2) = (tot[ch], tot[c + ch]);
                let v = (s2 - s1 * s1 / m).max(0.0) / m;
                mean[ch] = (x[ch] as f64 + s1 / m) as f32;
                var[ch] = v as f32;
                rstd[ch] = (1.0 / (v + eps).sqrt()) as f32;
            }
            self.xhat_coefs(mean, rstd, &mut coefs[..3 * c]);
        } else {
            let gn = self.groups;
            for n in 0..g.n {
                let ps = &part[n * g.chunks * stride..(n + 1) * g.chunks * stride];
                let r = n * gn..(n + 1) * gn;
                self.finalize_sample(
                    &x[n * sl..n * sl + c],
                    ps,
                    (
                        &mut mean[r.clone()],
                        &mut var[r.clone()],
                        &mut rstd[r.clone()],
                    ),
                    &mut fin[n * fl..(n + 1) * fl],
                );
                self.xhat_coefs(
                    &mean[r.clone()],
                    &rstd[r],
                    &mut coefs[n * 3 * c..(n + 1) * 3 * c],
                );
            }
        }
        let (coefs, sets) = (&*coefs, self.coef_sets());
        y.par_chunks_mut(sl).enumerate().for_each(|(n, ys)| {
            let k = Coefs::of(&coefs[n.min(sets - 1) * 3 * c..], c);
            ys.par_chunks_mut(cl)
                .enumerate()
                .for_each(|(j, yc)| apply(g.chunk(x, n, j), yc, k));
        });
        Ok(())
    }

    /// Backward apply coefficients `[p1 | q | o]` (into `out`, `3·channels`) from the
    /// totals `Σ du`, `Σ du·x̂` of one sample (or of the batch for BatchNorm) and its
    /// saved `rstd`; `ab` holds `2·sets` values (any contents).
    fn dx_coefs<'o>(
        &self,
        g_aff: &[f32],
        (sdu, sdux): (&[f64], &[f64]),
        rstd: &[f32],
        ab: &mut [f64],
        out: &'o mut [f32],
    ) -> Coefs<'o> {
        let c = self.geo.c;
        let m = match c.checked_div(self.groups) {
            None => (self.geo.n * self.geo.hw) as f64,
            Some(gs) => (self.geo.hw * gs) as f64,
        };
        ab.fill(0.0);
        let (a, b) = ab.split_at_mut(ab.len() / 2);
        for ch in 0..c {
            a[self.set_of(ch)] += g_aff[ch] as f64 * sdu[ch];
            b[self.set_of(ch)] += g_aff[ch] as f64 * sdux[ch];
        }
        let (p1, rest) = out.split_at_mut(c);
        let (q, o) = rest.split_at_mut(c);
        for ch in 0..c {
            let s = self.set_of(ch);
            let r = rstd[s] as f64;
            p1[ch] = (g_aff[ch] as f64 * r) as f32;
            q[ch] = (-r * b[s] / m) as f32;
            o[ch] = (-r * a[s] / m) as f32;
        }
        Coefs::of(out, c)
    }

    /// The backward pass with resolved per-channel inputs (shared with Proxy Norm):
    /// takes the regions of [`Norm::backward_regions`] from `ws`; `saved` is the
    /// forward pass's `(mean, rstd)`. Returns the per-channel totals over the batch,
    /// `[Σ du | Σ du·x̂]` and, with a proxy mean, `[… | Σ dy | Σ dy·(φ(u) − μ)]`
    /// (`f64`, fixed order), in the workspace.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_impl<'w>(
        &self,
        level: SimdLevel,
        (x, dy): (&[f32], &[f32]),
        cw: Channelwise,
        extra: BwdExtra,
        (mean, rstd): (&[f32], &[f32]),
        dx: &mut [f32],
        ws: &mut Workspace<'w>,
    ) -> Result<&'w mut [f64]> {
        let g = self.geo;
        let (c, sl, cl) = (g.c, g.sample_len(), g.chunk_len());
        let nacc = if extra.proxy_mu.is_some() { 4 } else { 2 };
        let stride = nacc * c;
        let sets = self.coef_sets();
        let part = take_f64(ws, g.total_chunks() * stride)?;
        let xks = ws.take(sets * 3 * c)?;
        let dks = ws.take(sets * 3 * c)?;
        let abl = 2 * self.sets_per_coef();
        let abs = take_f64(ws, sets * abl)?;
        let tots = take_f64(ws, g.n * stride)?;
        let total = take_f64(ws, stride)?;
        let pass1 = |xc: &[f32], dyc: &[f32], k: Coefs, pc: &mut [f64]| {
            pc.fill(0.0);
            let (sdu, rest) = pc.split_at_mut(c);
            let (sdux, rest) = rest.split_at_mut(c);
            let proxy = extra.proxy_mu.map(|mu| {
                let (sdz, sdza) = rest.split_at_mut(c);
                ProxySums { mu, sdz, sdza }
            });
            with_act!(cw.act, A => dispatch(level, BwdStatsChunk {
                x: xc, dy: dyc, c, xm: k.0, xa: k.1, g: cw.g, bt: cw.bt,
                scale: extra.scale, sdu, sdux, proxy, act: PhantomData::<A>,
            }))
        };
        let pass2 = |xc: &[f32], dyc: &[f32], dxc: &mut [f32], k: Coefs, d: Coefs| {
            with_act!(cw.act, A => dispatch(level, BwdApplyChunk {
                x: xc, dy: dyc, dx: dxc, c, xm: k.0, xa: k.1, g: cw.g,
                bt: cw.bt, scale: extra.scale, p1: d.0, q: d.1, o: d.2, act: PhantomData::<A>,
            }))
        };
        if self.groups > 0 && g.per_sample() {
            let gn = self.groups;
            x.par_chunks(sl)
                .zip(dy.par_chunks(sl))
                .zip(dx.par_chunks_mut(sl))
                .zip(part.par_chunks_mut(g.chunks * stride))
                .zip(xks.par_chunks_mut(3 * c))
                .zip(dks.par_chunks_mut(3 * c))
                .zip(abs.par_chunks_mut(abl))
                .zip(tots.par_chunks_mut(stride))
                .enumerate()
                .for_each(|(n, (((((((xs, dys), dxs), ps), xkb), dkb), ab), tot))| {
                    let r = n * gn..(n + 1) * gn;
                    let xk = self.xhat_coefs(&mean[r.clone()], &rstd[r.clone()], xkb);
                    for ((xc, dyc), pc) in
                        xs.chunks(cl).zip(dys.chunks(cl)).zip(ps.chunks_mut(stride))
                    {
                        pass1(xc, dyc, xk, pc);
                    }
                    sum_rows(ps, tot);
                    let k = self.dx_coefs(cw.g, (&tot[..c], &tot[c..2 * c]), &rstd[r], ab, dkb);
                    for ((xc, dyc), dxc) in
                        xs.chunks(cl).zip(dys.chunks(cl)).zip(dxs.chunks_mut(cl))
                    {
                        pass2(xc, dyc, dxc, xk, k);
                    }
                });
            sum_rows(tots, total);
            return Ok(total);
        }
        let gn = self.groups.max(1);
        for n in 0..sets {
            let r = if self.groups == 0 {
                0..c
            } else {
                n * gn..(n + 1) * gn
            };
            self.xhat_coefs(
                &mean[r.clone()],
                &rstd[r],
                &mut xks[n * 3 * c..(n + 1) * 3 * c],
            );
        }
        let xks = &*xks;
        fn pick(ks: &[f32], n: usize, sets: usize, c: usize) -> Coefs<'_> {
            Coefs::of(&ks[n.min(sets - 1) * 3 * c..], c)
        }
        part.par_chunks_mut(stride).enumerate().for_each(|(i, pc)| {
            let (n, j) = (i / g.chunks, i % g.chunks);
            pass1(
                g.chunk(x, n, j),
                g.chunk(dy, n, j),
                pick(xks, n, sets, c),
                pc,
            )
        });
        for (ps, tot) in part
            .chunks(g.chunks * stride)
            .zip(tots.chunks_exact_mut(stride))
        {
            sum_rows(ps, tot);
        }
        sum_rows(tots, total);
        if self.groups == 0 {
            let t = (&total[..c], &total[c..2 * c]);
            self.dx_coefs(cw.g, t, rstd, abs, &mut dks[..3 * c]);
        } else {
            for (n, tot) in tots.chunks_exact(stride).enumerate() {
                let t = (&tot[..c], &tot[c..2 * c]);
                let r = n * gn..(n + 1) * gn;
                let ab = &mut abs[n * abl..(n + 1) * abl];
                self.dx_coefs(cw.g, t, &rstd[r], ab, &mut dks[n * 3 * c..(n + 1) * 3 * c]);
            }
        }
        let dks = &*dks;
        dx.par_chunks_mut(sl).enumerate().for_each(|(n, dxs)| {
            let (xk, k) = (pick(xks, n, sets, c), pick(dks, n, sets, c));
            dxs.par_chunks_mut(cl)
                .enumerate()
                .for_each(|(j, dxc)| pass2(g.chunk(x, n, j), g.chunk(dy, n, j), dxc, xk, k));
        });
        Ok(total)
    }
}
