//! A normalization with its activation, placed as the network needs it: BatchNorm or
//! GroupNorm followed by swish, or LayerNorm + Proxy Norm (full scale, delayed scale,
//! γ-only projection, no scale in the head). Composes [`crate::kernels::norm`] and
//! [`crate::kernels::proxy_norm`] only.

use super::params::{ParamKind, ParamStore};
use crate::arch::NormKind;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::kernels::conv::{GradMode, PreOps};
use crate::kernels::norm::{
    Affine, AffineGrads, Norm, NormDesc, NormPass, NormStats, RunningStats,
};
use crate::kernels::proxy_norm::{
    NormProxy, NormProxySaved, PreparedProxy, ProxyGrads, ProxyNormDesc, ProxyParams, ProxyPass,
    ProxyVariant, Upstream,
};

/// Where a norm sits in the network.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// After the stem or an expansion 1×1: activation (Proxy Norm with full scale).
    Full,
    /// After the spatial conv: activation (Proxy Norm with delayed scale, the scale
    /// folded into the squeeze-excite gate).
    Delayed,
    /// After the projection 1×1: no activation (γ-only LayerNorm under Proxy Norm).
    Project,
    /// After the head 1×1: activation (Proxy Norm without scale).
    Head,
}

/// A BatchNorm folded for inference: `(scale, shift, activation)`.
pub(crate) type Folded = (Vec<f32>, Vec<f32>, Activation);

/// A norm with per-sample statistics (GroupNorm, LayerNorm, with or without Proxy
/// Norm) prepared for inference on one shape: its plan made once, its parameters
/// copied and, for Proxy Norm, the proxy correction computed once. Each pass takes
/// the statistics its producing convolution gathered (or makes a statistics pass over
/// the input) and runs the apply pass (normalize, affine, activation, proxy
/// correction).
#[derive(Debug)]
pub(crate) enum SampleNorm {
    /// GroupNorm or LayerNorm (+ activation) with its affine parameters.
    Plain {
        norm: Norm,
        gamma: Vec<f32>,
        beta: Option<Vec<f32>>,
    },
    /// LayerNorm/GroupNorm + Proxy Norm with the correction of its parameters.
    Proxy {
        op: NormProxy,
        prepared: PreparedProxy,
    },
}

/// A norm in a network prepared for inference.
#[derive(Debug)]
pub(crate) enum InferNorm {
    /// BatchNorm folded into the preceding convolution.
    Folded(Folded),
    /// A per-sample norm applied after it.
    Sample(Box<SampleNorm>),
}

impl SampleNorm {
    /// Floats of workspace [`SampleNorm::run`] needs.
    pub(crate) fn workspace_len(&self) -> usize {
        match self {
            SampleNorm::Plain { norm, .. } => norm.workspace_len(NormPass::Forward),
            SampleNorm::Proxy { op, .. } => op.workspace_len(ProxyPass::Forward),
        }
    }

    /// `z` (overwritten) from `x`, as [`NormAct::forward`] in inference gives it; its
    /// statistics from `sums` (each sample's channel sums and sums of squares of `x`,
    /// `[N][C]` each, as the producing convolution's statistics post-op gathers them)
    /// when given — one pass over `x` — else from `x` itself (two passes).
    pub(crate) fn run(
        &self,
        x: &[f32],
        sums: Option<(&[f64], &[f64])>,
        z: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        match self {
            SampleNorm::Plain { norm, gamma, beta } => {
                let affine = Affine {
                    gamma: Some(gamma),
                    beta: beta.as_deref(),
                };
                let mut stats = norm.new_stats();
                match sums {
                    Some(s) => {
                        norm.forward_from_sums_with_workspace(x, affine, s, z, &mut stats, ws)
                    }
                    None => norm.forward_with_workspace(x, affine, z, &mut stats, ws),
                }
            }
            SampleNorm::Proxy { op, prepared } => {
                let mut stats = op.norm().new_stats();
                match sums {
                    Some(s) => op.forward_prepared_from_sums_with_workspace(
                        x, prepared, s, z, &mut stats, ws,
                    ),
                    None => op.forward_prepared_with_workspace(x, prepared, z, &mut stats, ws),
                }
            }
        }
    }

    /// The prologue ([`PreOps`]) a consumer convolution applies to run this norm's
    /// apply pass on its input: `φ(a·x + b)`, then Proxy Norm's correction `·p + q`.
    pub(crate) fn prologue_ops(&self) -> PreOps {
        match self {
            SampleNorm::Plain { norm, .. } => PreOps::norm_act(norm.desc().activation),
            SampleNorm::Proxy { op, .. } => PreOps {
                out_scale: true,
                out_shift: true,
                ..PreOps::norm_act(op.proxy().desc().activation)
            },
        }
    }

    /// The coefficients `[a | b | p | q]` (`4·N·C` floats, each `[N][C]`, in `out`) of
    /// [`SampleNorm::prologue_ops`] for the input whose per-sample channel sums and
    /// sums of squares are `sums`: what [`SampleNorm::run`] would apply to it.
    /// `ws`: [`SampleNorm::workspace_len`] floats.
    pub(crate) fn prologue(
        &self,
        sums: (&[f64], &[f64]),
        out: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        match self {
            SampleNorm::Plain { norm, gamma, beta } => {
                let c = norm.desc().channels;
                let ones;
                let g: &[f32] = if gamma.is_empty() {
                    ones = vec![1.0; c];
                    &ones
                } else {
                    gamma
                };
                let zeros;
                let bt: &[f32] = match beta {
                    Some(b) => b,
                    None => {
                        zeros = vec![0.0; c];
                        &zeros
                    }
                };
                norm.affine_prologue_from_sums((g, bt), sums, out, ws)
            }
            SampleNorm::Proxy { op, prepared } => op.prologue_from_sums(prepared, sums, out, ws),
        }
    }

    /// The delayed Proxy Norm scale `s` (`[channels]`) its consumer applies, if the
    /// norm has one.
    pub(crate) fn delayed_scale(&self) -> Option<&[f32]> {
        match self {
            SampleNorm::Proxy { op, prepared }
                if op.proxy().desc().variant == ProxyVariant::DelayedScale =>
            {
                Some(&prepared.stats().scale)
            }
            _ => None,
        }
    }
}

/// What a forward pass keeps for the backward pass.
#[derive(Clone, Debug, Default)]
pub enum NormSaved {
    /// Nothing (BatchNorm with running statistics: inference only).
    #[default]
    None,
    /// Norm statistics.
    Stats(NormStats),
    /// Norm and proxy statistics.
    Proxy(NormProxySaved),
}

impl NormSaved {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * match self {
            NormSaved::None => 0,
            NormSaved::Stats(s) => 3 * s.mean.len(),
            NormSaved::Proxy(p) => 3 * p.norm.mean.len() + 3 * p.proxy.mean.len(),
        }
    }
}

/// A normalization (+ activation) over `channels` channels and the indices of its
/// parameters in the [`ParamStore`].
#[derive(Clone, Debug)]
pub struct NormAct {
    kind: NormKind,
    place: Place,
    channels: usize,
    eps: f32,
    gamma: usize,
    beta: Option<usize>,
    proxy: Option<(usize, usize)>,
    running: Option<(usize, usize)>,
}

impl NormAct {
    /// Registers the parameters of the norm `name` (a timm prefix such as `bn1`).
    pub fn register(
        store: &mut ParamStore,
        name: &str,
        kind: NormKind,
        eps: f32,
        place: Place,
        channels: usize,
    ) -> Result<NormAct> {
        let c = vec![channels];
        let gamma = store.add(format!("{name}.weight"), c.clone(), ParamKind::NormGamma)?;
        let lnpn = kind == NormKind::LayerNormProxy;
        let beta = if lnpn && place == Place::Project {
            None
        } else {
            Some(store.add(format!("{name}.bias"), c.clone(), ParamKind::NormBeta)?)
        };
        let proxy = if lnpn && place != Place::Project {
            Some((
                store.add(
                    format!("{name}.proxy_beta"),
                    c.clone(),
                    ParamKind::ProxyBeta,
                )?,
                store.add(
                    format!("{name}.proxy_gamma"),
                    c.clone(),
                    ParamKind::ProxyGamma,
                )?,
            ))
        } else {
            None
        };
        let running = if kind == NormKind::BatchNorm {
            Some((
                store.add(
                    format!("{name}.running_mean"),
                    c.clone(),
                    ParamKind::RunningMean,
                )?,
                store.add(format!("{name}.running_var"), c, ParamKind::RunningVar)?,
            ))
        } else {
            None
        };
        Ok(NormAct {
            kind,
            place,
            channels,
            eps,
            gamma,
            beta,
            proxy,
            running,
        })
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    fn activation(&self) -> Activation {
        if self.place == Place::Project {
            Activation::Identity
        } else {
            Activation::Swish
        }
    }

    fn norm_desc(&self, batch: usize, hw: usize) -> NormDesc {
        let d = match self.kind {
            NormKind::BatchNorm => NormDesc::batch_norm(batch, (hw, hw), self.channels),
            NormKind::GroupNorm { groups } => {
                NormDesc::group_norm(batch, (hw, hw), self.channels, groups)
            }
            NormKind::LayerNormProxy => NormDesc::layer_norm(batch, (hw, hw), self.channels),
        };
        d.with_eps(self.eps)
    }

    /// The fused LayerNorm + Proxy Norm plan, if this norm is one.
    fn norm_proxy(&self, batch: usize, hw: usize) -> Result<Option<NormProxy>> {
        if self.proxy.is_none() {
            return Ok(None);
        }
        let variant = match self.place {
            Place::Full => ProxyVariant::FullScale,
            Place::Delayed => ProxyVariant::DelayedScale,
            _ => ProxyVariant::NoScale,
        };
        let pd = ProxyNormDesc::new(self.channels).with_variant(variant);
        NormProxy::new(&self.norm_desc(batch, hw), &pd).map(Some)
    }

    fn plain(&self, batch: usize, hw: usize) -> Result<Norm> {
        Norm::new(&self.norm_desc(batch, hw).with_activation(self.activation()))
    }

    fn affine<'a>(&self, v: &'a [Vec<f32>]) -> Affine<'a> {
        Affine {
            gamma: Some(&v[self.gamma]),
            beta: self.beta.map(|b| &v[b][..]),
        }
    }

    fn proxy_params<'a>(&self, v: &'a [Vec<f32>]) -> ProxyParams<'a> {
        let (bp, gp) = self.proxy.expect("proxy norm");
        ProxyParams {
            gamma: &v[self.gamma],
            beta: &v[self.beta.expect("proxy beta")],
            beta_prime: &v[bp],
            gamma_prime: &v[gp],
        }
    }

    /// `y` (overwritten) from `x` (`[batch][hw][hw][channels]`). BatchNorm uses the
    /// batch statistics when `batch_stats` is set (training) and the running ones
    /// otherwise; the other norms are per sample either way.
    pub fn forward(
        &self,
        v: &[Vec<f32>],
        batch: usize,
        hw: usize,
        x: &[f32],
        y: &mut [f32],
        batch_stats: bool,
    ) -> Result<NormSaved> {
        self.forward_from_sums(v, batch, hw, x, None, y, batch_stats)
    }

    /// Whether [`NormAct::forward`] computes statistics of its input with these
    /// `batch_stats` (every norm but BatchNorm on its running statistics): then the
    /// producing convolution can gather them instead
    /// ([`NormAct::forward_from_sums`]).
    pub fn takes_sums(&self, batch_stats: bool) -> bool {
        self.running.is_none() || batch_stats
    }

    /// [`NormAct::forward`] with the statistics of `x` taken from `sums` when given:
    /// each image's channel sums and sums of squares of `x` (`[batch][channels]`
    /// each, `f64`), as the producing convolution's statistics post-op gathers them —
    /// one pass over `x` instead of two. Ignored where the norm takes no statistics
    /// ([`NormAct::takes_sums`] false).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_from_sums(
        &self,
        v: &[Vec<f32>],
        batch: usize,
        hw: usize,
        x: &[f32],
        sums: Option<(&[f64], &[f64])>,
        y: &mut [f32],
        batch_stats: bool,
    ) -> Result<NormSaved> {
        if let Some(np) = self.norm_proxy(batch, hw)? {
            let mut saved = np.new_saved();
            match sums {
                None => np.forward(x, self.proxy_params(v), y, &mut saved)?,
                Some(s) => np.forward_from_sums(x, self.proxy_params(v), s, y, &mut saved)?,
            }
            return Ok(NormSaved::Proxy(saved));
        }
        let norm = self.plain(batch, hw)?;
        if let (Some((m, var)), false) = (self.running, batch_stats) {
            let running = RunningStats {
                mean: v[m].clone(),
                var: v[var].clone(),
            };
            norm.forward_infer(x, self.affine(v), Some(&running), y)?;
            return Ok(NormSaved::None);
        }
        let mut stats = norm.new_stats();
        match sums {
            None => norm.forward(x, self.affine(v), y, &mut stats)?,
            Some(s) => norm.forward_from_sums(x, self.affine(v), s, y, &mut stats)?,
        }
        Ok(NormSaved::Stats(stats))
    }

    /// [`NormAct::forward`]'s `y` again from its input `x` and what it saved, for the
    /// backward pass: one apply pass on the saved statistics where the norm has them
    /// (BatchNorm, GroupNorm: bit for bit the forward's `y`), the whole forward pass
    /// otherwise (Proxy Norm, whose proxy statistics are recomputed too).
    pub fn recompute(
        &self,
        v: &[Vec<f32>],
        batch: usize,
        hw: usize,
        x: &[f32],
        saved: &NormSaved,
        y: &mut [f32],
    ) -> Result<()> {
        match saved {
            NormSaved::Stats(s) => {
                self.plain(batch, hw)?
                    .forward_from_stats(x, self.affine(v), s, y)
            }
            // Proxy Norm (per-sample statistics: `batch_stats` does not apply) or
            // BatchNorm on its running statistics (it saved nothing).
            _ => self.forward(v, batch, hw, x, y, false).map(|_| ()),
        }
    }

    /// BatchNorm with its running statistics folded for inference: `(scale, shift,
    /// activation)` with `y = φ(x·scale + shift)`; `None` for the norms with per-sample
    /// statistics (GroupNorm, LayerNorm), which do not fold.
    pub(crate) fn folded(&self, v: &[Vec<f32>]) -> Result<Option<Folded>> {
        let (Some((m, var)), None) = (self.running, self.proxy) else {
            return Ok(None);
        };
        let norm = Norm::new(&self.norm_desc(1, 1))?;
        let running = RunningStats {
            mean: v[m].clone(),
            var: v[var].clone(),
        };
        let (scale, shift) = norm.fold_inference(&running, self.affine(v))?;
        Ok(Some((scale, shift, self.activation())))
    }

    /// This norm for inference on `batch` images of `hw`×`hw`: folded when it is a
    /// BatchNorm, else prepared per sample.
    pub(crate) fn for_inference(
        &self,
        v: &[Vec<f32>],
        batch: usize,
        hw: usize,
    ) -> Result<InferNorm> {
        if let Some(f) = self.folded(v)? {
            return Ok(InferNorm::Folded(f));
        }
        match self.sample_norm(v, batch, hw)? {
            Some(s) => Ok(InferNorm::Sample(Box::new(s))),
            None => Err(Error::InvalidArgument(
                "a BatchNorm without running statistics cannot run inference".into(),
            )),
        }
    }

    /// This norm prepared for inference on `batch` images of `hw`×`hw` when its
    /// statistics are per sample; `None` for BatchNorm (which folds: see
    /// [`NormAct::folded`]).
    pub(crate) fn sample_norm(
        &self,
        v: &[Vec<f32>],
        batch: usize,
        hw: usize,
    ) -> Result<Option<SampleNorm>> {
        if self.running.is_some() {
            return Ok(None);
        }
        if let Some(op) = self.norm_proxy(batch, hw)? {
            let prepared = op.prepare(self.proxy_params(v))?;
            return Ok(Some(SampleNorm::Proxy { op, prepared }));
        }
        let affine = self.affine(v);
        Ok(Some(SampleNorm::Plain {
            norm: self.plain(batch, hw)?,
            gamma: affine.gamma.unwrap_or_default().to_vec(),
            beta: affine.beta.map(<[f32]>::to_vec),
        }))
    }

    /// The delayed Proxy Norm scale `s` (`[channels]`) the squeeze-excite gate folds
    /// in, if this norm has one.
    pub fn delayed_scale<'a>(&self, saved: &'a NormSaved) -> Option<&'a [f32]> {
        match (self.place, saved) {
            (Place::Delayed, NormSaved::Proxy(p)) => Some(&p.proxy.scale),
            _ => None,
        }
    }

    /// BatchNorm's running statistics update from a training forward pass
    /// (PyTorch convention, `running = (1 − momentum)·running + momentum·batch`).
    pub fn update_running(
        &self,
        v: &mut [Vec<f32>],
        batch: usize,
        hw: usize,
        saved: &NormSaved,
        momentum: f32,
    ) -> Result<()> {
        let (Some((m, var)), NormSaved::Stats(stats)) = (self.running, saved) else {
            return Ok(());
        };
        let mut running = RunningStats {
            mean: std::mem::take(&mut v[m]),
            var: std::mem::take(&mut v[var]),
        };
        let r = self
            .plain(batch, hw)?
            .update_running(stats, &mut running, momentum);
        v[m] = running.mean;
        v[var] = running.var;
        r
    }

    /// Backward: `dx` (overwritten) from `dy`, the forward input `x` and what the
    /// forward pass saved; the parameter gradients are overwritten. `ds` is the
    /// gradient of the delayed scale (delayed Proxy Norm only).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        v: &[Vec<f32>],
        g: &mut [Vec<f32>],
        batch: usize,
        hw: usize,
        x: &[f32],
        dy: &[f32],
        ds: Option<&[f32]>,
        saved: &NormSaved,
        dx: &mut [f32],
    ) -> Result<()> {
        match saved {
            NormSaved::None => Err(Error::InvalidArgument(
                "backward through a BatchNorm run with running statistics (inference mode)".into(),
            )),
            NormSaved::Proxy(s) => {
                let np = self.norm_proxy(batch, hw)?.expect("proxy norm");
                let (bp, gp) = self.proxy.expect("proxy norm");
                let b = self.beta.expect("proxy beta");
                let mut dg = std::mem::take(&mut g[self.gamma]);
                let mut db = std::mem::take(&mut g[b]);
                let mut dbp = std::mem::take(&mut g[bp]);
                let mut dgp = std::mem::take(&mut g[gp]);
                let r = np.backward(
                    x,
                    Upstream { dz: dy, ds },
                    self.proxy_params(v),
                    s,
                    dx,
                    ProxyGrads {
                        dgamma: &mut dg,
                        dbeta: &mut db,
                        dbeta_prime: &mut dbp,
                        dgamma_prime: &mut dgp,
                        mode: GradMode::Overwrite,
                    },
                );
                g[self.gamma] = dg;
                g[b] = db;
                g[bp] = dbp;
                g[gp] = dgp;
                r
            }
            NormSaved::Stats(s) => {
                let norm = self.plain(batch, hw)?;
                let mut dg = std::mem::take(&mut g[self.gamma]);
                let mut db = self.beta.map(|b| std::mem::take(&mut g[b]));
                let r = norm.backward(
                    x,
                    dy,
                    self.affine(v),
                    s,
                    dx,
                    AffineGrads {
                        dgamma: Some(&mut dg),
                        dbeta: db.as_deref_mut(),
                        mode: GradMode::Overwrite,
                    },
                );
                g[self.gamma] = dg;
                if let (Some(b), Some(db)) = (self.beta, db) {
                    g[b] = db;
                }
                r
            }
        }
    }
}
