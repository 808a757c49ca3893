//! Proxy Norm activations (Labatie et al., 2021), standalone and fused with the
//! LayerNorm/GroupNorm that precedes them.
//!
//! Per channel `c`, with `x̂` the normalized input (LayerNorm or GroupNorm with no
//! affine) and `φ` the activation (swish by default):
//!
//! ```text
//! u = γ_c·x̂ + β_c ;   a = φ(u) ;   z = (a − μ_c)·s_c            (full scale)
//! p_k = γ_c·(β'_c + (1+γ'_c)·q_k) + β_c ,  r_k = φ(p_k) ,   k = 0..K−1
//! μ_c = mean_k r_k ;  v_c = mean_k (r_k − μ_c)² ;  s_c = 1/√(v_c + ε_pn)
//! q_k = √2·erfinv(2(k+0.5)/K − 1)                 (K = 200, ε_pn = 0.03 by default)
//! ```
//!
//! The proxy statistics `μ`, `v`, `s` ([`ProxyStats`]) depend on the parameters only
//! (γ, β, β', γ', [`ProxyParams`]); they have their own forward ([`ProxyNorm::stats`])
//! and backward ([`ProxyNorm::stats_backward`]). Three variants ([`ProxyVariant`]):
//! full scale (`z = (a − μ)·s`), delayed scale (`z = a − μ`, with `s` returned for the
//! squeeze-excite gate to fold in; the backward then takes `∂L/∂s`), and no scale
//! (`z = a − μ`, EfficientNet's head).
//!
//! [`NormProxy`] fuses LayerNorm/GroupNorm and the proxy-normalized activation: one
//! statistics pass and one apply pass (normalize, affine, activation and proxy
//! correction) forward; a statistics-gradient pass and an apply pass backward, with the
//! gradients through the proxy mean and scale into γ, β, β', γ'.
//!
//! # Caller-owned memory
//! Every pass also exists as `*_with_workspace`, taking its scratch from a buffer the
//! caller owns ([`ProxyNorm::workspace_len`], [`NormProxy::workspace_len`], one size
//! per [`ProxyPass`]; see [`crate::kernels::scratch`]); the plain passes call them on
//! a buffer of that size the calling thread keeps between calls (one implementation,
//! the same bits). The workspace
//! holds the normalization's regions (see [`crate::kernels::norm`]), the per-channel
//! proxy sums and coefficients, the post-activation correction, the `f64` totals and
//! gradients, and for the standalone backward the per-chunk partial sums (which grow
//! with the rows: its size takes `x_len`). Allocates on the workspace path: nothing
//! (the parallel iterators' own bookkeeping aside).
//!
//! Layouts: `x`, `z`, `dz`, `dx` NHWC `[batch][h][w][channels]`; every parameter,
//! gradient and proxy statistic `[channels]`; the norm statistics `[batch][groups]`.
//!
//! ```
//! use effnet::kernels::norm::NormDesc;
//! use effnet::kernels::proxy_norm::*;
//! let c = 24;
//! let op = NormProxy::new(&NormDesc::layer_norm(2, (5, 5), c), &ProxyNormDesc::new(c)).unwrap();
//! let (g, b, bp, gp) = (vec![1.0f32; c], vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
//! let params = ProxyParams { gamma: &g, beta: &b, beta_prime: &bp, gamma_prime: &gp };
//! let x: Vec<f32> = (0..op.x_len()).map(|i| (i % 7) as f32).collect();
//! let mut z = vec![0.0f32; op.x_len()];
//! let mut saved = op.new_saved();
//! op.forward(&x, params, &mut z, &mut saved).unwrap();
//! assert!((saved.proxy.mean[0] - 0.206048).abs() < 1e-5);
//! let mut dx = vec![0.0f32; op.x_len()];
//! let mut grads = [vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]];
//! let [dg, db, dbp, dgp] = &mut grads;
//! let g = ProxyGrads { dgamma: dg, dbeta: db, dbeta_prime: dbp, dgamma_prime: dgp, mode: Default::default() };
//! op.backward(&x, Upstream { dz: &z, ds: None }, params, &saved, &mut dx, g).unwrap();
//! ```

mod fused;
pub mod reference;
pub mod special;
mod standalone;
mod statistics;

pub use fused::{NormProxy, NormProxySaved, PreparedProxy};

use crate::error::{Error, Result, check_len, check_lens, checked_product};
use crate::kernels::activation::{Act, Activation, with_act};
use crate::kernels::conv::GradMode;
use crate::kernels::norm::engine::{ApplyChunk, BwdApplyChunk, BwdStatsChunk, ProxySums};
use crate::kernels::norm::{
    BwdExtra, CHUNK_ELEMS, Channelwise, Norm, NormDesc, NormKind, NormStats, region_f64, take_f64,
    unit, write_grad,
};
use crate::kernels::reduce::sum_rows;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::{self, Simd, SimdKernel, SimdLevel, dispatch};
use rayon::prelude::*;
use std::marker::PhantomData;

/// Which Proxy Norm output EfficientNet needs at a given place.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyVariant {
    /// `z = (φ(u) − μ)·s`.
    #[default]
    FullScale,
    /// `z = φ(u) − μ`, and `s` is returned ([`ProxyStats::scale`]) to be folded into
    /// the squeeze-excite gate; the backward pass takes `∂L/∂s` ([`Upstream::ds`]).
    DelayedScale,
    /// `z = φ(u) − μ` (the head).
    NoScale,
}

/// A Proxy Norm activation; validated by [`ProxyNorm::new`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ProxyNormDesc {
    /// Channels (C ≥ 1): the length of every parameter.
    pub channels: usize,
    /// Which output.
    pub variant: ProxyVariant,
    /// Number of normal quantiles K (1 ≤ K ≤ [`MAX_K`]; 200 in the paper).
    pub k: usize,
    /// ε_pn added to the proxy variance (finite, > 0; 0.03 in the paper).
    pub eps_pn: f32,
    /// The activation φ (swish in EfficientNet).
    pub activation: Activation,
}

impl ProxyNormDesc {
    /// The paper's settings: full scale, K = 200, ε_pn = 0.03, swish.
    pub fn new(channels: usize) -> ProxyNormDesc {
        ProxyNormDesc {
            channels,
            variant: ProxyVariant::FullScale,
            k: 200,
            eps_pn: 0.03,
            activation: Activation::Swish,
        }
    }
    /// Sets the variant.
    pub fn with_variant(mut self, variant: ProxyVariant) -> Self {
        self.variant = variant;
        self
    }
    /// Sets K.
    pub fn with_k(mut self, k: usize) -> Self {
        self.k = k;
        self
    }
    /// Sets ε_pn.
    pub fn with_eps(mut self, eps_pn: f32) -> Self {
        self.eps_pn = eps_pn;
        self
    }
    /// Sets φ.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
}

/// The learnable per-channel parameters, `[channels]` each (initially 1, 0, 0, 0).
#[derive(Copy, Clone, Debug)]
pub struct ProxyParams<'a> {
    /// γ: scale of the affine before φ.
    pub gamma: &'a [f32],
    /// β: shift of the affine before φ.
    pub beta: &'a [f32],
    /// β′: shift of the proxy distribution.
    pub beta_prime: &'a [f32],
    /// γ′: scale of the proxy distribution (as `1 + γ′`).
    pub gamma_prime: &'a [f32],
}

impl ProxyParams<'_> {
    /// `[γ, β, β′, γ′]` restricted to the channels `r`.
    fn range(&self, r: std::ops::Range<usize>) -> [&[f32]; 4] {
        [
            &self.gamma[r.clone()],
            &self.beta[r.clone()],
            &self.beta_prime[r.clone()],
            &self.gamma_prime[r],
        ]
    }
}

/// Where a backward pass writes the parameter gradients, `[channels]` each.
#[derive(Debug)]
pub struct ProxyGrads<'a> {
    /// `∂L/∂γ`.
    pub dgamma: &'a mut [f32],
    /// `∂L/∂β`.
    pub dbeta: &'a mut [f32],
    /// `∂L/∂β′`.
    pub dbeta_prime: &'a mut [f32],
    /// `∂L/∂γ′`.
    pub dgamma_prime: &'a mut [f32],
    /// Overwrite or accumulate.
    pub mode: GradMode,
}

/// The proxy statistics per channel, `[channels]` each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyStats {
    /// μ: mean of `φ` over the proxy distribution.
    pub mean: Vec<f32>,
    /// v: its variance.
    pub var: Vec<f32>,
    /// s = 1/√(v + ε_pn).
    pub scale: Vec<f32>,
}

/// The upstream gradients of a backward pass.
#[derive(Copy, Clone, Debug)]
pub struct Upstream<'a> {
    /// `∂L/∂z`, shaped like `z`.
    pub dz: &'a [f32],
    /// `∂L/∂s`, `[channels]`: only for [`ProxyVariant::DelayedScale`] (where `s` is an
    /// output); `None` there means zero.
    pub ds: Option<&'a [f32]>,
}

/// A validated Proxy Norm activation with its quantiles: computes the proxy
/// statistics (forward and backward) and runs the standalone activation on an already
/// normalized input. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ProxyNorm {
    desc: ProxyNormDesc,
    q: Vec<f32>,
    /// The SIMD level the passes run at, read when the plan is made.
    level: SimdLevel,
}

/// One pass of a Proxy Norm operation (for [`ProxyNorm::workspace_len`] and
/// [`NormProxy::workspace_len`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProxyPass {
    /// [`ProxyNorm::forward`] / [`NormProxy::forward`].
    Forward,
    /// [`ProxyNorm::backward`] / [`NormProxy::backward`].
    Backward,
    /// [`ProxyNorm::stats`].
    Stats,
    /// [`ProxyNorm::stats_backward`].
    StatsBackward,
}

/// The largest number of proxy quantiles K a [`ProxyNormDesc`] may ask for. The paper
/// uses 200; the statistics cost `O(K·channels)` per pass and the quantile table is `K`
/// floats, so K beyond a few thousand buys nothing (the quantiles of 65536 points
/// already sample the normal distribution far below `f32` rounding).
pub const MAX_K: usize = 1 << 16;

/// Channels per task of the proxy-statistics kernels.
const STAT_CHANNELS: usize = 64;

/// Three per-channel f32 accumulators `[a | b | c]` in `sums` (`3·channels`, zeroed
/// here), filled in parallel blocks of [`STAT_CHANNELS`] channels:
/// `fill(range, [a, b, c])` gets the block's channel range and its three sub-slices.
fn channel_block_sums(
    sums: &mut [f32],
    fill: impl Fn(std::ops::Range<usize>, [&mut [f32]; 3]) + Sync + Send,
) -> [&[f32]; 3] {
    let channels = sums.len() / 3;
    sums.fill(0.0);
    let (a, rest) = sums.split_at_mut(channels);
    let (b, c) = rest.split_at_mut(channels);
    a.par_chunks_mut(STAT_CHANNELS)
        .zip(b.par_chunks_mut(STAT_CHANNELS))
        .zip(c.par_chunks_mut(STAT_CHANNELS))
        .enumerate()
        .for_each(|(i, ((a, b), c))| {
            let start = i * STAT_CHANNELS;
            fill(start..start + a.len(), [a, b, c]);
        });
    [a, b, c]
}

impl ProxyNorm {
    /// Validates `desc` (`channels ≥ 1`, `1 ≤ k ≤` [`MAX_K`], finite `ε_pn > 0`) and
    /// computes the K normal quantiles. The passes run at the calling thread's SIMD
    /// level ([`crate::simd::active`]), read now; see [`ProxyNorm::with_level`].
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] for a rule broken; [`Error::Overflow`] when the
    /// per-channel state (parameters, statistics, gradients and their `f64` partial
    /// sums, 16 floats per channel in all) or the workspace of any pass on one row
    /// would not fit in memory addressing.
    pub fn new(desc: &ProxyNormDesc) -> Result<ProxyNorm> {
        let bad = |m: String| Err(Error::InvalidDescriptor(m));
        if desc.channels == 0 {
            return bad("channels must be at least 1".into());
        }
        if desc.k == 0 {
            return bad("k (the number of proxy quantiles) must be at least 1".into());
        }
        if desc.k > MAX_K {
            return bad(format!(
                "k = {} proxy quantiles is more than the maximum of {MAX_K}",
                desc.k
            ));
        }
        checked_product("the per-channel Proxy Norm state", &[desc.channels, 16])?;
        if !(desc.eps_pn.is_finite() && desc.eps_pn > 0.0) {
            return bad(format!(
                "eps_pn must be finite and positive, got {}",
                desc.eps_pn
            ));
        }
        let plan = ProxyNorm {
            desc: *desc,
            q: reference::quantiles(desc.k)
                .into_iter()
                .map(|q| q as f32)
                .collect(),
            level: simd::active(),
        };
        // Every pass on one row must have an addressable workspace (its layout
        // saturates rather than wraps): a plan accepted here can always be run.
        for pass in [
            ProxyPass::Forward,
            ProxyPass::Backward,
            ProxyPass::Stats,
            ProxyPass::StatsBackward,
        ] {
            let floats = plan.layout(pass, desc.channels).len();
            checked_product("the Proxy Norm workspace for one row", &[floats])?;
        }
        Ok(plan)
    }

    /// The same plan at `level` (clamped to what the CPU supports).
    pub fn with_level(mut self, level: SimdLevel) -> ProxyNorm {
        self.level = level.min(simd::detected());
        self
    }

    /// The SIMD level the passes run at.
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// The descriptor.
    pub fn desc(&self) -> &ProxyNormDesc {
        &self.desc
    }

    /// The K normal quantiles `q_k = √2·erfinv(2(k+0.5)/K − 1)` (rounded to `f32`).
    pub fn quantiles(&self) -> &[f32] {
        &self.q
    }

    /// Zeroed statistics of the right size.
    pub fn new_stats(&self) -> ProxyStats {
        let c = self.desc.channels;
        ProxyStats {
            mean: vec![0.0; c],
            var: vec![0.0; c],
            scale: vec![0.0; c],
        }
    }

    /// Floats (`f32` elements) of workspace `pass` needs; `x_len` is the length of
    /// `xhat` for [`ProxyPass::Forward`] and [`ProxyPass::Backward`] (the backward
    /// partial sums grow with the rows) and is ignored by the statistics passes.
    /// The same for any thread count and SIMD level. See the
    /// [module docs](self#caller-owned-memory).
    pub fn workspace_len(&self, pass: ProxyPass, x_len: usize) -> usize {
        self.layout(pass, x_len).len()
    }

    /// The regions `pass` takes from its workspace, in order.
    fn layout(&self, pass: ProxyPass, x_len: usize) -> WorkspaceLayout {
        let c = self.desc.channels;
        let mut l = WorkspaceLayout::new(1);
        match pass {
            ProxyPass::Stats => self.stats_regions(&mut l),
            ProxyPass::StatsBackward => {
                region_f64(&mut l, 2 * c);
                self.stats_backward_regions(&mut l);
            }
            ProxyPass::Forward => {
                self.stats_regions(&mut l);
                l.region(2 * c).region(2 * c);
            }
            ProxyPass::Backward => {
                l.region(2 * c).region(2 * c);
                // Saturating: a size query for an absurd `x_len` must not wrap.
                region_f64(
                    &mut l,
                    x_len.div_ceil(self.chunk_len()).saturating_mul(4 * c),
                );
                region_f64(&mut l, 4 * c);
                self.grad_regions(&mut l);
            }
        }
        l
    }

    /// The regions of [`ProxyNorm::stats_impl`]: the three per-channel sums.
    fn stats_regions(&self, l: &mut WorkspaceLayout) {
        l.region(3 * self.desc.channels);
    }

    /// The regions of [`ProxyNorm::stats_backward_impl`]: the two per-channel
    /// coefficients, the three sums, the four gradients (`f64`).
    fn stats_backward_regions(&self, l: &mut WorkspaceLayout) {
        let c = self.desc.channels;
        l.region(2 * c).region(3 * c);
        region_f64(l, 4 * c);
    }

    /// The regions of the gradient tail of a backward pass: `dμ`, `ds` (`f64`), then
    /// [`ProxyNorm::stats_backward_regions`].
    fn grad_regions(&self, l: &mut WorkspaceLayout) {
        region_f64(l, 2 * self.desc.channels);
        self.stats_backward_regions(l);
    }

    /// Elements of `xhat` per chunk of the standalone passes.
    fn chunk_len(&self) -> usize {
        let c = self.desc.channels;
        CHUNK_ELEMS.div_ceil(c) * c
    }

    /// Runs `f` on a workspace of exactly the size `pass` needs, kept by the calling
    /// thread between calls ([`crate::kernels::scratch::with_reused`]).
    fn allocating<R>(
        &self,
        pass: ProxyPass,
        x_len: usize,
        f: impl FnOnce(&mut [f32]) -> Result<R>,
    ) -> Result<R> {
        self.layout(pass, x_len).try_with_reused(f)
    }

    fn check_params(&self, p: &ProxyParams) -> Result<()> {
        check_lens(
            self.desc.channels,
            &[
                ("gamma", p.gamma.len()),
                ("beta", p.beta.len()),
                ("beta_prime", p.beta_prime.len()),
                ("gamma_prime", p.gamma_prime.len()),
            ],
        )
    }

    fn check_grads(&self, g: &ProxyGrads) -> Result<()> {
        check_lens(
            self.desc.channels,
            &[
                ("dgamma", g.dgamma.len()),
                ("dbeta", g.dbeta.len()),
                ("dbeta_prime", g.dbeta_prime.len()),
                ("dgamma_prime", g.dgamma_prime.len()),
            ],
        )
    }

    fn check_stats(&self, s: &ProxyStats) -> Result<()> {
        check_lens(
            self.desc.channels,
            &[
                ("proxy.mean", s.mean.len()),
                ("proxy.var", s.var.len()),
                ("proxy.scale", s.scale.len()),
            ],
        )
    }

    fn check_upstream(&self, up: &Upstream, len: usize) -> Result<()> {
        check_len("dz", up.dz.len(), len)?;
        if let Some(ds) = up.ds {
            if self.desc.variant != ProxyVariant::DelayedScale {
                return Err(Error::InvalidArgument(
                    "ds (the gradient of the scale) is an input of the delayed-scale variant only"
                        .into(),
                ));
            }
            check_len("ds", ds.len(), self.desc.channels)?;
        }
        Ok(())
    }
}
