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

pub mod reference;
pub mod special;

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
    /// computes the K normal quantiles.
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] for a rule broken; [`Error::Overflow`] when the
    /// per-channel state (parameters, statistics, gradients and their `f64` partial
    /// sums, 16 floats per channel in all) would not fit in memory addressing.
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
        Ok(ProxyNorm {
            desc: *desc,
            q: reference::quantiles(desc.k)
                .into_iter()
                .map(|q| q as f32)
                .collect(),
        })
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

    /// The proxy statistics μ, v, s of every channel (forward). Allocates its
    /// workspace; see [`ProxyNorm::stats_with_workspace`].
    pub fn stats(&self, params: ProxyParams, out: &mut ProxyStats) -> Result<()> {
        self.allocating(ProxyPass::Stats, 0, |ws| {
            self.stats_with_workspace(params, out, ws)
        })
    }

    /// [`ProxyNorm::stats`] with its scratch in `ws` (at least
    /// [`ProxyNorm::workspace_len`]`(ProxyPass::Stats, 0)` floats, any contents; a
    /// shorter one is [`Error::BufferSize`] naming `"workspace"`).
    pub fn stats_with_workspace(
        &self,
        params: ProxyParams,
        out: &mut ProxyStats,
        ws: &mut [f32],
    ) -> Result<()> {
        self.check_params(&params)?;
        self.check_stats(out)?;
        let mut ws = Workspace::new(ws, &self.layout(ProxyPass::Stats, 0))?;
        self.stats_impl(simd::active(), &params, out, &mut ws)
    }

    fn stats_impl(
        &self,
        level: SimdLevel,
        p: &ProxyParams,
        out: &mut ProxyStats,
        ws: &mut Workspace,
    ) -> Result<()> {
        let c = self.desc.channels;
        let (k, eps) = (self.desc.k as f64, self.desc.eps_pn as f64);
        let q = &self.q;
        // [Σ(r−sh) | Σ(r−sh)² | sh]
        let [s1, s2, sh] = channel_block_sums(ws.take(3 * c)?, |r, [s1, s2, sh]| {
            let pp = p.range(r);
            with_act!(self.desc.activation, A => dispatch(level, StatsFwd::<A> {
                p: pp, q, s1, s2, sh, act: PhantomData,
            }))
        });
        for ch in 0..c {
            let m1 = s1[ch] as f64 / k;
            let v = (s2[ch] as f64 / k - m1 * m1).max(0.0);
            out.mean[ch] = (sh[ch] as f64 + m1) as f32;
            out.var[ch] = v as f32;
            out.scale[ch] = (1.0 / (v + eps).sqrt()) as f32;
        }
        Ok(())
    }

    /// Backward of [`ProxyNorm::stats`]: given `∂L/∂μ` and `∂L/∂s` per channel, writes
    /// (or accumulates, per `grads.mode`) the gradients into γ, β, β′, γ′ through the
    /// proxy path:
    /// `g_k = (dμ − ds·s³·(r_k − μ))/K`, `h_k = g_k·φ'(p_k)`, `t_k = β' + (1+γ')·q_k`,
    /// `dγ = Σ h_k·t_k`, `dβ = Σ h_k`, `dβ' = γ·Σ h_k`, `dγ' = γ·Σ h_k·q_k`.
    /// Allocates its workspace; see [`ProxyNorm::stats_backward_with_workspace`].
    pub fn stats_backward(
        &self,
        params: ProxyParams,
        stats: &ProxyStats,
        dmu: &[f32],
        ds: &[f32],
        grads: ProxyGrads,
    ) -> Result<()> {
        self.allocating(ProxyPass::StatsBackward, 0, |ws| {
            self.stats_backward_with_workspace(params, stats, dmu, ds, grads, ws)
        })
    }

    /// [`ProxyNorm::stats_backward`] with its scratch in `ws` (at least
    /// [`ProxyNorm::workspace_len`]`(ProxyPass::StatsBackward, 0)` floats; errors as
    /// [`ProxyNorm::stats_with_workspace`]).
    pub fn stats_backward_with_workspace(
        &self,
        params: ProxyParams,
        stats: &ProxyStats,
        dmu: &[f32],
        ds: &[f32],
        grads: ProxyGrads,
        ws: &mut [f32],
    ) -> Result<()> {
        self.check_params(&params)?;
        self.check_stats(stats)?;
        let c = self.desc.channels;
        check_len("dmu", dmu.len(), c)?;
        check_len("ds", ds.len(), c)?;
        self.check_grads(&grads)?;
        let mut ws = Workspace::new(ws, &self.layout(ProxyPass::StatsBackward, 0))?;
        let d = take_f64(&mut ws, 2 * c)?;
        for (o, v) in d.iter_mut().zip(dmu.iter().chain(ds)) {
            *o = *v as f64;
        }
        let (dmu, ds) = d.split_at(c);
        let g = self.stats_backward_impl(simd::active(), &params, stats, (dmu, ds), &mut ws)?;
        self.write(grads, None, g);
        Ok(())
    }

    /// The proxy-path gradients `[dγ | dβ | dβ' | dγ']` (`f64`, `4·channels`, in the
    /// workspace: the regions of [`ProxyNorm::stats_backward_regions`]).
    fn stats_backward_impl<'w>(
        &self,
        level: SimdLevel,
        p: &ProxyParams,
        st: &ProxyStats,
        (dmu, ds): (&[f64], &[f64]),
        ws: &mut Workspace<'w>,
    ) -> Result<&'w mut [f64]> {
        let c = self.desc.channels;
        let k = self.desc.k as f64;
        // g_k = c1 − c2·(r_k − μ) with c1 = dμ/K, c2 = ds·s³/K.
        let (c1, c2) = ws.take(2 * c)?.split_at_mut(c);
        for ch in 0..c {
            c1[ch] = (dmu[ch] / k) as f32;
            c2[ch] = (ds[ch] * (st.scale[ch] as f64).powi(3) / k) as f32;
        }
        let (c1, c2) = (&*c1, &*c2);
        let q = &self.q;
        // [Σ h | Σ h·t | Σ h·q]
        let [sh, sht, shq] = channel_block_sums(ws.take(3 * c)?, |r, [sh, sht, shq]| {
            let pp = p.range(r.clone());
            with_act!(self.desc.activation, A => dispatch(level, StatsBwd::<A> {
                p: pp, mu: &st.mean[r.clone()], c1: &c1[r.clone()], c2: &c2[r],
                q, sh, sht, shq, act: PhantomData,
            }))
        });
        let out = take_f64(ws, 4 * c)?;
        for ch in 0..c {
            let g = p.gamma[ch] as f64;
            out[ch] = sht[ch] as f64;
            out[c + ch] = sh[ch] as f64;
            out[2 * c + ch] = g * sh[ch] as f64;
            out[3 * c + ch] = g * shq[ch] as f64;
        }
        Ok(out)
    }

    /// Writes the proxy-path gradients `prox` plus, if given, the direct-path totals
    /// `(dγ, dβ)` (added into `prox` in place).
    fn write(&self, grads: ProxyGrads, direct: Option<(&[f64], &[f64])>, prox: &mut [f64]) {
        let c = self.desc.channels;
        if let Some((dg, db)) = direct {
            for ch in 0..c {
                prox[ch] += dg[ch];
                prox[c + ch] += db[ch];
            }
        }
        write_grad(grads.dgamma, &prox[..c], grads.mode);
        write_grad(grads.dbeta, &prox[c..2 * c], grads.mode);
        write_grad(grads.dbeta_prime, &prox[2 * c..3 * c], grads.mode);
        write_grad(grads.dgamma_prime, &prox[3 * c..], grads.mode);
    }

    /// `(p, q)` of the post-activation correction `z = φ(u)·p + q` (into `out`,
    /// `2·channels`): `p = s`, `q = −μ·s` for full scale; `p = 1`, `q = −μ` otherwise.
    fn post<'o>(&self, st: &ProxyStats, out: &'o mut [f32]) -> (&'o [f32], &'o [f32]) {
        let c = self.desc.channels;
        let (p, q) = out.split_at_mut(c);
        if self.desc.variant == ProxyVariant::FullScale {
            p.copy_from_slice(&st.scale);
            for ((q, m), s) in q.iter_mut().zip(&st.mean).zip(&st.scale) {
                *q = (-(*m as f64) * *s as f64) as f32;
            }
        } else {
            p.fill(1.0);
            for (q, m) in q.iter_mut().zip(&st.mean) {
                *q = -m;
            }
        }
        (p, q)
    }

    /// `dμ` and `ds` (into `out`, `2·channels`) from the batch totals `Σ dz`,
    /// `Σ dz·(a − μ)`.
    fn dmu_ds<'o>(
        &self,
        st: &ProxyStats,
        (sdz, sdza): (&[f64], &[f64]),
        ds_in: Option<&[f32]>,
        out: &'o mut [f64],
    ) -> (&'o [f64], &'o [f64]) {
        let c = self.desc.channels;
        let (dmu, ds) = out.split_at_mut(c);
        for ch in 0..c {
            (dmu[ch], ds[ch]) = match self.desc.variant {
                ProxyVariant::FullScale => (-(st.scale[ch] as f64) * sdz[ch], sdza[ch]),
                ProxyVariant::DelayedScale => (-sdz[ch], ds_in.map_or(0.0, |d| d[ch] as f64)),
                ProxyVariant::NoScale => (-sdz[ch], 0.0),
            };
        }
        (dmu, ds)
    }

    /// The standalone (unfused) activation on a normalized input `x̂` (`[rows][channels]`,
    /// any number of rows): computes the proxy statistics into `stats` and writes
    /// `z` per the variant. Allocates its workspace; see
    /// [`ProxyNorm::forward_with_workspace`].
    pub fn forward(
        &self,
        xhat: &[f32],
        params: ProxyParams,
        z: &mut [f32],
        stats: &mut ProxyStats,
    ) -> Result<()> {
        self.allocating(ProxyPass::Forward, xhat.len(), |ws| {
            self.forward_with_workspace(xhat, params, z, stats, ws)
        })
    }

    /// [`ProxyNorm::forward`] with its scratch in `ws` (at least
    /// [`ProxyNorm::workspace_len`]`(ProxyPass::Forward, xhat.len())` floats; errors
    /// as [`ProxyNorm::stats_with_workspace`], after the buffer checks).
    pub fn forward_with_workspace(
        &self,
        xhat: &[f32],
        params: ProxyParams,
        z: &mut [f32],
        stats: &mut ProxyStats,
        ws: &mut [f32],
    ) -> Result<()> {
        let c = self.desc.channels;
        self.check_rows(xhat)?;
        check_len("z", z.len(), xhat.len())?;
        self.check_params(&params)?;
        self.check_stats(stats)?;
        let mut ws = Workspace::new(ws, &self.layout(ProxyPass::Forward, xhat.len()))?;
        let level = simd::active();
        self.stats_impl(level, &params, stats, &mut ws)?;
        let (pp, qq) = self.post(stats, ws.take(2 * c)?);
        let (ones, zeros) = unit(ws.take(2 * c)?);
        let cl = self.chunk_len();
        xhat.par_chunks(cl)
            .zip(z.par_chunks_mut(cl))
            .for_each(|(x, y)| {
                with_act!(self.desc.activation, A => dispatch(level, ApplyChunk {
                    x, y, c, xm: zeros, xa: ones, xb: zeros, g: params.gamma,
                    bt: params.beta, post: Some((pp, qq)), act: PhantomData::<A>,
                }))
            });
        Ok(())
    }

    fn check_rows(&self, xhat: &[f32]) -> Result<()> {
        let c = self.desc.channels;
        if xhat.len().is_multiple_of(c) {
            Ok(())
        } else {
            Err(Error::BufferSize {
                name: "xhat",
                expected: xhat.len() / c * c,
                actual: xhat.len(),
            })
        }
    }

    /// Backward of [`ProxyNorm::forward`]: `dx̂` (overwritten) and the parameter
    /// gradients, including the proxy path. `stats` are those the forward pass
    /// computed. Allocates its workspace; see [`ProxyNorm::backward_with_workspace`].
    pub fn backward(
        &self,
        xhat: &[f32],
        up: Upstream,
        params: ProxyParams,
        stats: &ProxyStats,
        dxhat: &mut [f32],
        grads: ProxyGrads,
    ) -> Result<()> {
        self.allocating(ProxyPass::Backward, xhat.len(), |ws| {
            self.backward_with_workspace(xhat, up, params, stats, dxhat, grads, ws)
        })
    }

    /// [`ProxyNorm::backward`] with its scratch in `ws` (at least
    /// [`ProxyNorm::workspace_len`]`(ProxyPass::Backward, xhat.len())` floats; errors
    /// as [`ProxyNorm::forward_with_workspace`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_workspace(
        &self,
        xhat: &[f32],
        up: Upstream,
        params: ProxyParams,
        stats: &ProxyStats,
        dxhat: &mut [f32],
        grads: ProxyGrads,
        ws: &mut [f32],
    ) -> Result<()> {
        let c = self.desc.channels;
        self.check_rows(xhat)?;
        self.check_upstream(&up, xhat.len())?;
        check_len("dxhat", dxhat.len(), xhat.len())?;
        self.check_params(&params)?;
        self.check_stats(stats)?;
        self.check_grads(&grads)?;
        let mut ws = Workspace::new(ws, &self.layout(ProxyPass::Backward, xhat.len()))?;
        let level = simd::active();
        let (pp, _) = self.post(stats, ws.take(2 * c)?);
        let scale = (self.desc.variant == ProxyVariant::FullScale).then_some(pp);
        let (ones, zeros) = unit(ws.take(2 * c)?);
        let cl = self.chunk_len();
        let stride = 4 * c;
        let part = take_f64(&mut ws, xhat.len().div_ceil(cl) * stride)?;
        xhat.par_chunks(cl)
            .zip(up.dz.par_chunks(cl))
            .zip(part.par_chunks_mut(stride))
            .for_each(|((x, dy), pc)| {
                pc.fill(0.0);
                let (sdu, rest) = pc.split_at_mut(c);
                let (sdux, rest) = rest.split_at_mut(c);
                let (sdz, sdza) = rest.split_at_mut(c);
                let proxy = Some(ProxySums {
                    mu: &stats.mean,
                    sdz,
                    sdza,
                });
                with_act!(self.desc.activation, A => dispatch(level, BwdStatsChunk {
                    x, dy, c, xm: zeros, xa: ones, g: params.gamma,
                    bt: params.beta, scale, sdu, sdux, proxy, act: PhantomData::<A>,
                }));
            });
        // dx̂ = du·γ
        xhat.par_chunks(cl)
            .zip(up.dz.par_chunks(cl))
            .zip(dxhat.par_chunks_mut(cl))
            .for_each(|((x, dy), dx)| {
                with_act!(self.desc.activation, A => dispatch(level, BwdApplyChunk {
                    x, dy, dx, c, xm: zeros, xa: ones, g: params.gamma,
                    bt: params.beta, scale, p1: params.gamma, q: zeros, o: zeros,
                    act: PhantomData::<A>,
                }));
            });
        let tot = take_f64(&mut ws, stride)?;
        sum_rows(part, tot);
        self.grads_tail(level, &params, stats, tot, up.ds, grads, &mut ws)
    }

    /// The common end of both backward passes: `dμ`, `ds` from the batch totals
    /// `tot = [Σ du | Σ du·x̂ | Σ dz | Σ dz·(a − μ)]`, the proxy-path gradients, and
    /// the writes (regions of [`ProxyNorm::grad_regions`]).
    #[allow(clippy::too_many_arguments)]
    fn grads_tail(
        &self,
        level: SimdLevel,
        params: &ProxyParams,
        stats: &ProxyStats,
        tot: &[f64],
        ds_in: Option<&[f32]>,
        grads: ProxyGrads,
        ws: &mut Workspace,
    ) -> Result<()> {
        let c = self.desc.channels;
        let d = take_f64(ws, 2 * c)?;
        let sums = (&tot[2 * c..3 * c], &tot[3 * c..]);
        let dmu_ds = self.dmu_ds(stats, sums, ds_in, d);
        let prox = self.stats_backward_impl(level, params, stats, dmu_ds, ws)?;
        self.write(grads, Some((&tot[c..2 * c], &tot[..c])), prox);
        Ok(())
    }
}

/// Forward proxy statistics of a block of channels: shifted sums of `r_k = φ(p_k)`.
struct StatsFwd<'a, A> {
    /// γ, β, β', γ' of the block.
    p: [&'a [f32]; 4],
    q: &'a [f32],
    s1: &'a mut [f32],
    s2: &'a mut [f32],
    sh: &'a mut [f32],
    act: PhantomData<A>,
}

impl<A: Act> SimdKernel for StatsFwd<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let n = self.s1.len();
        assert!(self.p.iter().all(|v| v.len() == n) && self.s2.len() == n && self.sh.len() == n);
        let one = s.splat(1.0);
        let mut c0 = 0;
        while c0 < n {
            let m = (n - c0).min(S::LANES);
            let r = c0..c0 + m;
            let g = s.load_upto(&self.p[0][r.clone()]);
            let b = s.load_upto(&self.p[1][r.clone()]);
            let bp = s.load_upto(&self.p[2][r.clone()]);
            let gp1 = s.add(one, s.load_upto(&self.p[3][r.clone()]));
            let shift = A::f(s, s.mul_add(g, bp, b));
            let (mut a1, mut a2) = (s.zero(), s.zero());
            for &qk in self.q {
                let t = s.mul_add(gp1, s.splat(qk), bp);
                let d = s.sub(A::f(s, s.mul_add(g, t, b)), shift);
                a1 = s.add(a1, d);
                a2 = s.mul_add(d, d, a2);
            }
            s.store_upto(&mut self.s1[r.clone()], a1);
            s.store_upto(&mut self.s2[r.clone()], a2);
            s.store_upto(&mut self.sh[r], shift);
            c0 += m;
        }
    }
}

/// Backward proxy statistics of a block of channels: `Σ h_k`, `Σ h_k·t_k`,
/// `Σ h_k·q_k` with `h_k = (c1 − c2·(r_k − μ))·φ'(p_k)`.
struct StatsBwd<'a, A> {
    p: [&'a [f32]; 4],
    mu: &'a [f32],
    c1: &'a [f32],
    c2: &'a [f32],
    q: &'a [f32],
    sh: &'a mut [f32],
    sht: &'a mut [f32],
    shq: &'a mut [f32],
    act: PhantomData<A>,
}

impl<A: Act> SimdKernel for StatsBwd<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let n = self.sh.len();
        assert!(self.p.iter().all(|v| v.len() == n));
        assert!(self.mu.len() == n && self.c1.len() == n && self.c2.len() == n);
        assert!(self.sht.len() == n && self.shq.len() == n);
        let one = s.splat(1.0);
        let mut c0 = 0;
        while c0 < n {
            let m = (n - c0).min(S::LANES);
            let r = c0..c0 + m;
            let g = s.load_upto(&self.p[0][r.clone()]);
            let b = s.load_upto(&self.p[1][r.clone()]);
            let bp = s.load_upto(&self.p[2][r.clone()]);
            let gp = s.load_upto(&self.p[3][r.clone()]);
            let mu = s.load_upto(&self.mu[r.clone()]);
            let c1 = s.load_upto(&self.c1[r.clone()]);
            let nc2 = s.sub(s.zero(), s.load_upto(&self.c2[r.clone()]));
            let gp1 = s.add(one, gp);
            let (mut ah, mut aht, mut ahq) = (s.zero(), s.zero(), s.zero());
            for &qk in self.q {
                let qv = s.splat(qk);
                let t = s.mul_add(gp1, qv, bp);
                let (f, df) = A::f_df(s, s.mul_add(g, t, b));
                let h = s.mul(s.mul_add(nc2, s.sub(f, mu), c1), df);
                ah = s.add(ah, h);
                aht = s.mul_add(h, t, aht);
                ahq = s.mul_add(h, qv, ahq);
            }
            s.store_upto(&mut self.sh[r.clone()], ah);
            s.store_upto(&mut self.sht[r.clone()], aht);
            s.store_upto(&mut self.shq[r], ahq);
            c0 += m;
        }
    }
}

/// What [`NormProxy::forward`] saves for the backward pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormProxySaved {
    /// The LayerNorm/GroupNorm statistics (`[batch][groups]`).
    pub norm: NormStats,
    /// The proxy statistics (`[channels]`); `proxy.scale` is the `s` the
    /// delayed-scale variant hands to the squeeze-excite gate.
    pub proxy: ProxyStats,
}

/// The fused LayerNorm/GroupNorm (no affine) + Proxy Norm activation. See the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct NormProxy {
    norm: Norm,
    proxy: ProxyNorm,
}

impl NormProxy {
    /// Validates both descriptors: `norm` must be a LayerNorm or GroupNorm with no
    /// activation of its own, over `proxy.channels` channels.
    pub fn new(norm: &NormDesc, proxy: &ProxyNormDesc) -> Result<NormProxy> {
        if norm.kind == NormKind::BatchNorm {
            return Err(Error::InvalidDescriptor(
                "Proxy Norm is fused with LayerNorm or GroupNorm, not BatchNorm".into(),
            ));
        }
        if norm.activation != Activation::Identity {
            return Err(Error::InvalidDescriptor(
                "the normalization before Proxy Norm has no activation of its own".into(),
            ));
        }
        if norm.channels != proxy.channels {
            return Err(Error::InvalidDescriptor(format!(
                "the normalization has {} channels, the proxy activation {}",
                norm.channels, proxy.channels
            )));
        }
        Ok(NormProxy {
            norm: Norm::new(norm)?,
            proxy: ProxyNorm::new(proxy)?,
        })
    }

    /// The normalization plan.
    pub fn norm(&self) -> &Norm {
        &self.norm
    }

    /// The proxy activation plan.
    pub fn proxy(&self) -> &ProxyNorm {
        &self.proxy
    }

    /// Elements of `x`, `z`, `dz`, `dx`.
    pub fn x_len(&self) -> usize {
        self.norm.x_len()
    }

    /// Zeroed saved state of the right sizes.
    pub fn new_saved(&self) -> NormProxySaved {
        NormProxySaved {
            norm: self.norm.new_stats(),
            proxy: self.proxy.new_stats(),
        }
    }

    /// Floats (`f32` elements) of workspace `pass` needs (the statistics passes are
    /// those of [`NormProxy::proxy`]). Depends on the descriptors and the pass only:
    /// the same for any thread count and SIMD level.
    pub fn workspace_len(&self, pass: ProxyPass) -> usize {
        self.layout(pass).len()
    }

    /// The regions `pass` takes from its workspace, in order.
    fn layout(&self, pass: ProxyPass) -> WorkspaceLayout {
        let mut l = WorkspaceLayout::new(1);
        match pass {
            ProxyPass::Forward => {
                self.proxy.stats_regions(&mut l);
                l.region(2 * self.proxy.desc.channels);
                self.norm.forward_regions(&mut l);
            }
            ProxyPass::Backward => {
                self.norm.backward_regions(&mut l, 4);
                self.proxy.grad_regions(&mut l);
            }
            ProxyPass::Stats | ProxyPass::StatsBackward => return self.proxy.layout(pass, 0),
        }
        l
    }

    fn check_saved(&self, s: &NormProxySaved) -> Result<()> {
        let n = self.norm.sets();
        check_len("stats.mean", s.norm.mean.len(), n)?;
        check_len("stats.var", s.norm.var.len(), n)?;
        check_len("stats.rstd", s.norm.rstd.len(), n)?;
        self.proxy.check_stats(&s.proxy)
    }

    /// `z` (overwritten) from `x`: the proxy statistics, one statistics pass over `x`
    /// and one apply pass. `saved` receives both sets of statistics. Allocates its
    /// workspace; see [`NormProxy::forward_with_workspace`].
    pub fn forward(
        &self,
        x: &[f32],
        params: ProxyParams,
        z: &mut [f32],
        saved: &mut NormProxySaved,
    ) -> Result<()> {
        self.layout(ProxyPass::Forward)
            .try_with_reused(|ws| self.forward_with_workspace(x, params, z, saved, ws))
    }

    /// [`NormProxy::forward`] with its scratch in `ws`: at least
    /// [`NormProxy::workspace_len`]`(ProxyPass::Forward)` floats, any contents (left
    /// unspecified). Errors: the buffer checks of [`NormProxy::forward`] first, then
    /// [`Error::BufferSize`] naming `"workspace"` if `ws` is short.
    pub fn forward_with_workspace(
        &self,
        x: &[f32],
        params: ProxyParams,
        z: &mut [f32],
        saved: &mut NormProxySaved,
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("z", z.len(), self.x_len())?;
        self.proxy.check_params(&params)?;
        self.check_saved(saved)?;
        let mut ws = Workspace::new(ws, &self.layout(ProxyPass::Forward))?;
        let level = simd::active();
        self.proxy
            .stats_impl(level, &params, &mut saved.proxy, &mut ws)?;
        let post = self
            .proxy
            .post(&saved.proxy, ws.take(2 * self.proxy.desc.channels)?);
        let cw = Channelwise {
            g: params.gamma,
            bt: params.beta,
            post: Some(post),
            act: self.proxy.desc.activation,
        };
        let n = &mut saved.norm;
        let stats = [&mut n.mean[..], &mut n.var, &mut n.rstd];
        self.norm.forward_impl(level, x, cw, z, stats, &mut ws)
    }

    /// The gradients of [`NormProxy::forward`]: `dx` (overwritten) and those of γ, β,
    /// β′, γ′ (direct and through the proxy statistics). `x` is the forward input and
    /// `saved` what the forward pass saved. Allocates its workspace; see
    /// [`NormProxy::backward_with_workspace`].
    pub fn backward(
        &self,
        x: &[f32],
        up: Upstream,
        params: ProxyParams,
        saved: &NormProxySaved,
        dx: &mut [f32],
        grads: ProxyGrads,
    ) -> Result<()> {
        self.layout(ProxyPass::Backward)
            .try_with_reused(|ws| self.backward_with_workspace(x, up, params, saved, dx, grads, ws))
    }

    /// [`NormProxy::backward`] with its scratch in `ws` (at least
    /// [`NormProxy::workspace_len`]`(ProxyPass::Backward)` floats; errors as
    /// [`NormProxy::forward_with_workspace`]).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_workspace(
        &self,
        x: &[f32],
        up: Upstream,
        params: ProxyParams,
        saved: &NormProxySaved,
        dx: &mut [f32],
        grads: ProxyGrads,
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        self.proxy.check_upstream(&up, self.x_len())?;
        check_len("dx", dx.len(), self.x_len())?;
        self.proxy.check_params(&params)?;
        self.check_saved(saved)?;
        self.proxy.check_grads(&grads)?;
        let mut ws = Workspace::new(ws, &self.layout(ProxyPass::Backward))?;
        let level = simd::active();
        let full = self.proxy.desc.variant == ProxyVariant::FullScale;
        let cw = Channelwise {
            g: params.gamma,
            bt: params.beta,
            post: None,
            act: self.proxy.desc.activation,
        };
        let extra = BwdExtra {
            scale: full.then_some(&saved.proxy.scale[..]),
            proxy_mu: Some(&saved.proxy.mean),
        };
        let norm_saved = (&saved.norm.mean[..], &saved.norm.rstd[..]);
        let tot = self
            .norm
            .backward_impl(level, (x, up.dz), cw, extra, norm_saved, dx, &mut ws)?;
        self.proxy
            .grads_tail(level, &params, &saved.proxy, tot, up.ds, grads, &mut ws)
    }
}
