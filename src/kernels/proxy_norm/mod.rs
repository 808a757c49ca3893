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

use crate::error::{Error, Result, check_len};
use crate::kernels::activation::{Act, Activation, with_act};
use crate::kernels::conv::GradMode;
use crate::kernels::norm::engine::{ApplyChunk, BwdApplyChunk, BwdStatsChunk, ProxySums};
use crate::kernels::norm::{
    BwdExtra, CHUNK_ELEMS, Channelwise, Norm, NormDesc, NormKind, NormStats, sum_partials,
    write_grad,
};
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
    /// Number of normal quantiles K (≥ 1; 200 in the paper).
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

/// Channels per task of the proxy-statistics kernels.
const STAT_CHANNELS: usize = 64;

impl ProxyNorm {
    /// Validates `desc` (`channels ≥ 1`, `k ≥ 1`, finite `ε_pn > 0`) and computes the
    /// K normal quantiles.
    pub fn new(desc: &ProxyNormDesc) -> Result<ProxyNorm> {
        let bad = |m: String| Err(Error::InvalidDescriptor(m));
        if desc.channels == 0 {
            return bad("channels must be at least 1".into());
        }
        if desc.k == 0 {
            return bad("k (the number of proxy quantiles) must be at least 1".into());
        }
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

    fn check_params(&self, p: &ProxyParams) -> Result<()> {
        let c = self.desc.channels;
        check_len("gamma", p.gamma.len(), c)?;
        check_len("beta", p.beta.len(), c)?;
        check_len("beta_prime", p.beta_prime.len(), c)?;
        check_len("gamma_prime", p.gamma_prime.len(), c)
    }

    fn check_grads(&self, g: &ProxyGrads) -> Result<()> {
        let c = self.desc.channels;
        check_len("dgamma", g.dgamma.len(), c)?;
        check_len("dbeta", g.dbeta.len(), c)?;
        check_len("dbeta_prime", g.dbeta_prime.len(), c)?;
        check_len("dgamma_prime", g.dgamma_prime.len(), c)
    }

    fn check_stats(&self, s: &ProxyStats) -> Result<()> {
        let c = self.desc.channels;
        check_len("proxy.mean", s.mean.len(), c)?;
        check_len("proxy.var", s.var.len(), c)?;
        check_len("proxy.scale", s.scale.len(), c)
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

    /// The proxy statistics μ, v, s of every channel (forward).
    pub fn stats(&self, params: ProxyParams, out: &mut ProxyStats) -> Result<()> {
        self.check_params(&params)?;
        self.check_stats(out)?;
        self.stats_impl(simd::active(), &params, out);
        Ok(())
    }

    fn stats_impl(&self, level: SimdLevel, p: &ProxyParams, out: &mut ProxyStats) {
        let c = self.desc.channels;
        let (k, eps) = (self.desc.k as f64, self.desc.eps_pn as f64);
        let mut sums = vec![0.0f32; 3 * c]; // [Σ(r−sh) | Σ(r−sh)² | sh]
        let (s1, rest) = sums.split_at_mut(c);
        let (s2, sh) = rest.split_at_mut(c);
        let q = &self.q;
        s1.par_chunks_mut(STAT_CHANNELS)
            .zip(s2.par_chunks_mut(STAT_CHANNELS))
            .zip(sh.par_chunks_mut(STAT_CHANNELS))
            .enumerate()
            .for_each(|(i, ((s1, s2), sh))| {
                let r = i * STAT_CHANNELS..i * STAT_CHANNELS + s1.len();
                let pp = [
                    &p.gamma[r.clone()],
                    &p.beta[r.clone()],
                    &p.beta_prime[r.clone()],
                    &p.gamma_prime[r],
                ];
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
    }

    /// Backward of [`ProxyNorm::stats`]: given `∂L/∂μ` and `∂L/∂s` per channel, writes
    /// (or accumulates, per `grads.mode`) the gradients into γ, β, β′, γ′ through the
    /// proxy path:
    /// `g_k = (dμ − ds·s³·(r_k − μ))/K`, `h_k = g_k·φ'(p_k)`, `t_k = β' + (1+γ')·q_k`,
    /// `dγ = Σ h_k·t_k`, `dβ = Σ h_k`, `dβ' = γ·Σ h_k`, `dγ' = γ·Σ h_k·q_k`.
    pub fn stats_backward(
        &self,
        params: ProxyParams,
        stats: &ProxyStats,
        dmu: &[f32],
        ds: &[f32],
        grads: ProxyGrads,
    ) -> Result<()> {
        self.check_params(&params)?;
        self.check_stats(stats)?;
        let c = self.desc.channels;
        check_len("dmu", dmu.len(), c)?;
        check_len("ds", ds.len(), c)?;
        self.check_grads(&grads)?;
        let dmu: Vec<f64> = dmu.iter().map(|&v| v as f64).collect();
        let ds: Vec<f64> = ds.iter().map(|&v| v as f64).collect();
        let g = self.stats_backward_impl(simd::active(), &params, stats, &dmu, &ds);
        let zero = vec![0.0f64; c];
        self.write(grads, [&zero, &zero], &g);
        Ok(())
    }

    /// The proxy-path gradients `[dγ | dβ | dβ' | dγ']` (`f64`, `4·channels`).
    fn stats_backward_impl(
        &self,
        level: SimdLevel,
        p: &ProxyParams,
        st: &ProxyStats,
        dmu: &[f64],
        ds: &[f64],
    ) -> Vec<f64> {
        let c = self.desc.channels;
        let k = self.desc.k as f64;
        // g_k = c1 − c2·(r_k − μ) with c1 = dμ/K, c2 = ds·s³/K.
        let c1: Vec<f32> = dmu.iter().map(|d| (d / k) as f32).collect();
        let c2: Vec<f32> = (0..c)
            .map(|ch| (ds[ch] * (st.scale[ch] as f64).powi(3) / k) as f32)
            .collect();
        let mut sums = vec![0.0f32; 3 * c]; // [Σ h | Σ h·t | Σ h·q]
        let (sh, rest) = sums.split_at_mut(c);
        let (sht, shq) = rest.split_at_mut(c);
        let q = &self.q;
        sh.par_chunks_mut(STAT_CHANNELS)
            .zip(sht.par_chunks_mut(STAT_CHANNELS))
            .zip(shq.par_chunks_mut(STAT_CHANNELS))
            .enumerate()
            .for_each(|(i, ((sh, sht), shq))| {
                let r = i * STAT_CHANNELS..i * STAT_CHANNELS + sh.len();
                let pp = [
                    &p.gamma[r.clone()],
                    &p.beta[r.clone()],
                    &p.beta_prime[r.clone()],
                    &p.gamma_prime[r.clone()],
                ];
                with_act!(self.desc.activation, A => dispatch(level, StatsBwd::<A> {
                    p: pp, mu: &st.mean[r.clone()], c1: &c1[r.clone()], c2: &c2[r.clone()],
                    q, sh, sht, shq, act: PhantomData,
                }))
            });
        let mut out = vec![0.0f64; 4 * c];
        for ch in 0..c {
            let g = p.gamma[ch] as f64;
            out[ch] = sht[ch] as f64;
            out[c + ch] = sh[ch] as f64;
            out[2 * c + ch] = g * sh[ch] as f64;
            out[3 * c + ch] = g * shq[ch] as f64;
        }
        out
    }

    /// Writes `[dγ, dβ]` direct-path totals plus the proxy-path gradients `prox`.
    fn write(&self, grads: ProxyGrads, [dg, db]: [&[f64]; 2], prox: &[f64]) {
        let c = self.desc.channels;
        let sum = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<f64>>();
        write_grad(grads.dgamma, &sum(dg, &prox[..c]), grads.mode);
        write_grad(grads.dbeta, &sum(db, &prox[c..2 * c]), grads.mode);
        write_grad(grads.dbeta_prime, &prox[2 * c..3 * c], grads.mode);
        write_grad(grads.dgamma_prime, &prox[3 * c..], grads.mode);
    }

    /// `(p, q)` of the post-activation correction `z = φ(u)·p + q`: `p = s`,
    /// `q = −μ·s` for full scale; `p = 1`, `q = −μ` otherwise.
    fn post(&self, st: &ProxyStats) -> (Vec<f32>, Vec<f32>) {
        let c = self.desc.channels;
        if self.desc.variant == ProxyVariant::FullScale {
            let q = (0..c)
                .map(|ch| (-(st.mean[ch] as f64) * st.scale[ch] as f64) as f32)
                .collect();
            (st.scale.clone(), q)
        } else {
            (vec![1.0; c], st.mean.iter().map(|m| -m).collect())
        }
    }

    /// `dμ` and `ds` from the batch totals `Σ dz`, `Σ dz·(a − μ)`.
    fn dmu_ds(
        &self,
        st: &ProxyStats,
        sdz: &[f64],
        sdza: &[f64],
        ds_in: Option<&[f32]>,
    ) -> (Vec<f64>, Vec<f64>) {
        let c = self.desc.channels;
        match self.desc.variant {
            ProxyVariant::FullScale => (
                (0..c).map(|ch| -(st.scale[ch] as f64) * sdz[ch]).collect(),
                sdza.to_vec(),
            ),
            ProxyVariant::DelayedScale => (
                sdz.iter().map(|v| -v).collect(),
                (0..c)
                    .map(|ch| ds_in.map_or(0.0, |d| d[ch] as f64))
                    .collect(),
            ),
            ProxyVariant::NoScale => (sdz.iter().map(|v| -v).collect(), vec![0.0; c]),
        }
    }

    /// The standalone (unfused) activation on a normalized input `x̂` (`[rows][channels]`,
    /// any number of rows): computes the proxy statistics into `stats` and writes
    /// `z` per the variant.
    pub fn forward(
        &self,
        xhat: &[f32],
        params: ProxyParams,
        z: &mut [f32],
        stats: &mut ProxyStats,
    ) -> Result<()> {
        let c = self.desc.channels;
        self.check_rows(xhat)?;
        check_len("z", z.len(), xhat.len())?;
        self.check_params(&params)?;
        self.check_stats(stats)?;
        let level = simd::active();
        self.stats_impl(level, &params, stats);
        let (pp, qq) = self.post(stats);
        let (zeros, ones) = (vec![0.0f32; c], vec![1.0f32; c]);
        let cl = CHUNK_ELEMS.div_ceil(c) * c;
        xhat.par_chunks(cl)
            .zip(z.par_chunks_mut(cl))
            .for_each(|(x, y)| {
                with_act!(self.desc.activation, A => dispatch(level, ApplyChunk {
                    x, y, c, xm: &zeros, xa: &ones, xb: &zeros, g: params.gamma,
                    bt: params.beta, post: Some((&pp, &qq)), act: PhantomData::<A>,
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
    /// computed.
    pub fn backward(
        &self,
        xhat: &[f32],
        up: Upstream,
        params: ProxyParams,
        stats: &ProxyStats,
        dxhat: &mut [f32],
        grads: ProxyGrads,
    ) -> Result<()> {
        let c = self.desc.channels;
        self.check_rows(xhat)?;
        self.check_upstream(&up, xhat.len())?;
        check_len("dxhat", dxhat.len(), xhat.len())?;
        self.check_params(&params)?;
        self.check_stats(stats)?;
        self.check_grads(&grads)?;
        let level = simd::active();
        let (pp, _) = self.post(stats);
        let scale = (self.desc.variant == ProxyVariant::FullScale).then_some(&pp[..]);
        let (zeros, ones) = (vec![0.0f32; c], vec![1.0f32; c]);
        let cl = CHUNK_ELEMS.div_ceil(c) * c;
        let stride = 4 * c;
        let chunks = xhat.len().div_ceil(cl);
        let mut part = vec![0.0f64; chunks * stride];
        xhat.par_chunks(cl)
            .zip(up.dz.par_chunks(cl))
            .zip(part.par_chunks_mut(stride))
            .for_each(|((x, dy), pc)| {
                let (sdu, rest) = pc.split_at_mut(c);
                let (sdux, rest) = rest.split_at_mut(c);
                let (sdz, sdza) = rest.split_at_mut(c);
                let proxy = Some(ProxySums {
                    mu: &stats.mean,
                    sdz,
                    sdza,
                });
                with_act!(self.desc.activation, A => dispatch(level, BwdStatsChunk {
                    x, dy, c, xm: &zeros, xa: &ones, g: params.gamma,
                    bt: params.beta, scale, sdu, sdux, proxy, act: PhantomData::<A>,
                }));
            });
        // dx̂ = du·γ
        xhat.par_chunks(cl)
            .zip(up.dz.par_chunks(cl))
            .zip(dxhat.par_chunks_mut(cl))
            .for_each(|((x, dy), dx)| {
                with_act!(self.desc.activation, A => dispatch(level, BwdApplyChunk {
                    x, dy, dx, c, xm: &zeros, xa: &ones, g: params.gamma,
                    bt: params.beta, scale, p1: params.gamma, q: &zeros, o: &zeros,
                    act: PhantomData::<A>,
                }));
            });
        let tot = sum_partials(&part, stride);
        let (dmu, ds) = self.dmu_ds(stats, &tot[2 * c..3 * c], &tot[3 * c..], up.ds);
        let prox = self.stats_backward_impl(level, &params, stats, &dmu, &ds);
        self.write(grads, [&tot[c..2 * c], &tot[..c]], &prox);
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

    fn check_saved(&self, s: &NormProxySaved) -> Result<()> {
        let n = self.norm.sets();
        check_len("stats.mean", s.norm.mean.len(), n)?;
        check_len("stats.var", s.norm.var.len(), n)?;
        check_len("stats.rstd", s.norm.rstd.len(), n)?;
        self.proxy.check_stats(&s.proxy)
    }

    /// `z` (overwritten) from `x`: the proxy statistics, one statistics pass over `x`
    /// and one apply pass. `saved` receives both sets of statistics.
    pub fn forward(
        &self,
        x: &[f32],
        params: ProxyParams,
        z: &mut [f32],
        saved: &mut NormProxySaved,
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("z", z.len(), self.x_len())?;
        self.proxy.check_params(&params)?;
        self.check_saved(saved)?;
        let level = simd::active();
        self.proxy.stats_impl(level, &params, &mut saved.proxy);
        let (pp, qq) = self.proxy.post(&saved.proxy);
        let cw = Channelwise {
            g: params.gamma,
            bt: params.beta,
            post: Some((&pp, &qq)),
            act: self.proxy.desc.activation,
        };
        self.norm.forward_impl(level, x, cw, z, &mut saved.norm);
        Ok(())
    }

    /// The gradients of [`NormProxy::forward`]: `dx` (overwritten) and those of γ, β,
    /// β′, γ′ (direct and through the proxy statistics). `x` is the forward input and
    /// `saved` what the forward pass saved.
    pub fn backward(
        &self,
        x: &[f32],
        up: Upstream,
        params: ProxyParams,
        saved: &NormProxySaved,
        dx: &mut [f32],
        grads: ProxyGrads,
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        self.proxy.check_upstream(&up, self.x_len())?;
        check_len("dx", dx.len(), self.x_len())?;
        self.proxy.check_params(&params)?;
        self.check_saved(saved)?;
        self.proxy.check_grads(&grads)?;
        let c = self.proxy.desc.channels;
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
        let tot = self
            .norm
            .backward_impl(level, (x, up.dz), cw, extra, &saved.norm, dx);
        let (dmu, ds) = self
            .proxy
            .dmu_ds(&saved.proxy, &tot[2 * c..3 * c], &tot[3 * c..], up.ds);
        let prox = self
            .proxy
            .stats_backward_impl(level, &params, &saved.proxy, &dmu, &ds);
        self.proxy.write(grads, [&tot[c..2 * c], &tot[..c]], &prox);
        Ok(())
    }
}
