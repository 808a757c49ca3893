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

mod backward;
pub(crate) mod engine;
mod forward;
pub mod reference;

use crate::error::{Error, Result, check_len, checked_product};
use crate::kernels::activation::{Activation, with_act};
use crate::kernels::conv::GradMode;
use crate::kernels::reduce::sum_rows;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::{self, SimdLevel, dispatch};
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
    /// How channels map to groups (GroupNorm; contiguous for LayerNorm and BatchNorm).
    grouping: Grouping,
    x_len: usize,
    /// The SIMD level the passes run at, read when the plan is made.
    level: SimdLevel,
}

impl Norm {
    /// Validates `desc`: positive sizes, `1 ≤ groups`, `groups | channels`, finite
    /// `ε > 0`, no overflow. The passes run at the calling thread's SIMD level
    /// ([`crate::simd::active`]), read now; see [`Norm::with_level`].
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] for a rule broken, [`Error::Overflow`] when the
    /// tensor does not fit in memory addressing. The plan allocates nothing (the group
    /// of a channel is computed), so it is made at once for any addressable size.
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
        Ok(Norm {
            desc: *desc,
            geo: Geo::new(desc.batch, desc.h * desc.w, c),
            groups,
            grouping,
            x_len,
            level: simd::active(),
        })
    }

    /// The same plan at `level` (clamped to what the CPU supports).
    pub fn with_level(mut self, level: SimdLevel) -> Norm {
        self.level = level.min(simd::detected());
        self
    }

    /// The SIMD level the passes run at.
    pub fn level(&self) -> SimdLevel {
        self.level
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

    /// The group of channel `c` (GroupNorm/LayerNorm; 0 for BatchNorm and for a
    /// channel out of range). Computed, not looked up: the plan keeps no per-channel
    /// table, so a plan for any addressable channel count allocates nothing.
    pub fn group_of(&self, c: usize) -> usize {
        let ch = self.desc.channels;
        if self.groups == 0 || c >= ch {
            return 0;
        }
        match self.grouping {
            Grouping::Contiguous => c / (ch / self.groups),
            Grouping::Strided => c % self.groups,
        }
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

    pub(crate) fn check_stats(&self, s: &NormStats) -> Result<()> {
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
}
