//! A normalization with its activation, placed as the network needs it: BatchNorm or
//! GroupNorm followed by swish, or LayerNorm + Proxy Norm (full scale, delayed scale,
//! γ-only projection, no scale in the head). Composes [`crate::kernels::norm`] and
//! [`crate::kernels::proxy_norm`] only.

use super::params::{ParamKind, ParamStore};
use crate::arch::NormKind;
use crate::error::{Error, Result};
use crate::kernels::activation::Activation;
use crate::kernels::conv::GradMode;
use crate::kernels::norm::{Affine, AffineGrads, Norm, NormDesc, NormStats, RunningStats};
use crate::kernels::proxy_norm::{
    NormProxy, NormProxySaved, ProxyGrads, ProxyNormDesc, ProxyParams, ProxyVariant, Upstream,
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
        if let Some(np) = self.norm_proxy(batch, hw)? {
            let mut saved = np.new_saved();
            np.forward(x, self.proxy_params(v), y, &mut saved)?;
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
        norm.forward(x, self.affine(v), y, &mut stats)?;
        Ok(NormSaved::Stats(stats))
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
