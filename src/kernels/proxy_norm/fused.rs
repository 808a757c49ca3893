//! The fused LayerNorm/GroupNorm + Proxy Norm activation ([`NormProxy`]).

use super::*;

/// What [`NormProxy::forward`] saves for the backward pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NormProxySaved {
    /// The LayerNorm/GroupNorm statistics (`[batch][groups]`).
    pub norm: NormStats,
    /// The proxy statistics (`[channels]`); `proxy.scale` is the `s` the
    /// delayed-scale variant hands to the squeeze-excite gate.
    pub proxy: ProxyStats,
}

/// Proxy Norm's correction for fixed parameters ([`NormProxy::prepare`]): the proxy
/// statistics depend on γ, β, β′, γ′ only, so inference computes them once and each
/// forward pass is the statistics pass over `x` and the apply pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedProxy {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// The per-channel output correction `z·p + q`, `[p | q]`.
    post: Vec<f32>,
    stats: ProxyStats,
}

impl PreparedProxy {
    /// The proxy statistics of the parameters; `stats().scale` is the `s` the
    /// delayed-scale variant leaves to the consumer (the squeeze-excite gate).
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }
}

/// The fused LayerNorm/GroupNorm (no affine) + Proxy Norm activation. See the
/// [module docs](super).
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

    /// The same plan at `level` (clamped to what the CPU supports).
    pub fn with_level(self, level: SimdLevel) -> NormProxy {
        NormProxy {
            norm: self.norm.with_level(level),
            proxy: self.proxy.with_level(level),
        }
    }

    /// The SIMD level the passes run at.
    pub fn level(&self) -> SimdLevel {
        self.proxy.level
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
    pub(super) fn layout(&self, pass: ProxyPass) -> WorkspaceLayout {
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

    pub(super) fn check_saved(&self, s: &NormProxySaved) -> Result<()> {
        self.norm.check_stats(&s.norm)?;
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
        self.run_forward(x, params, None, z, saved, ws)
    }

    /// [`NormProxy::forward_from_sums_with_workspace`] with its workspace allocated
    /// (kept by the calling thread between calls).
    ///
    /// # Errors
    /// Those of [`NormProxy::forward_from_sums_with_workspace`].
    pub fn forward_from_sums(
        &self,
        x: &[f32],
        params: ProxyParams,
        sums: (&[f64], &[f64]),
        z: &mut [f32],
        saved: &mut NormProxySaved,
    ) -> Result<()> {
        self.layout(ProxyPass::Forward).try_with_reused(|ws| {
            self.forward_from_sums_with_workspace(x, params, sums, z, saved, ws)
        })
    }

    /// [`NormProxy::forward_with_workspace`] on norm statistics gathered elsewhere:
    /// `sums` and `squares` are each sample's channel sums and sums of squares of `x`
    /// (`[N][C]`, `f64`; what a convolution's statistics post-op returns for its
    /// output), so the pass reads `x` once (the apply pass) instead of twice; see
    /// [`crate::kernels::norm::Norm::forward_from_sums_with_workspace`]. `z` and the
    /// saved statistics agree with the forward pass's to rounding. Errors: those of
    /// [`NormProxy::forward_with_workspace`], [`Error::BufferSize`] naming `"sums"` /
    /// `"squares"` (`N·C`).
    pub fn forward_from_sums_with_workspace(
        &self,
        x: &[f32],
        params: ProxyParams,
        sums: (&[f64], &[f64]),
        z: &mut [f32],
        saved: &mut NormProxySaved,
        ws: &mut [f32],
    ) -> Result<()> {
        self.run_forward(x, params, Some(sums), z, saved, ws)
    }

    /// The training forward pass, its norm statistics from `x` or from `sums`.
    fn run_forward(
        &self,
        x: &[f32],
        params: ProxyParams,
        sums: Option<(&[f64], &[f64])>,
        z: &mut [f32],
        saved: &mut NormProxySaved,
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("z", z.len(), self.x_len())?;
        self.proxy.check_params(&params)?;
        self.check_saved(saved)?;
        if let Some((s1, s2)) = sums {
            let nc = self.norm.desc().batch * self.norm.desc().channels;
            check_len("sums", s1.len(), nc)?;
            check_len("squares", s2.len(), nc)?;
        }
        let mut ws = Workspace::new(ws, &self.layout(ProxyPass::Forward))?;
        let level = self.proxy.level;
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
        match sums {
            None => self.norm.forward_impl(level, x, cw, z, stats, &mut ws),
            Some(sums) => self
                .norm
                .forward_from_sums_impl(level, x, cw, sums, z, stats, &mut ws),
        }
    }

    /// The proxy statistics and output correction of `params`, computed once for
    /// [`NormProxy::forward_prepared_with_workspace`] (inference, where the parameters
    /// do not change between passes). Errors as [`NormProxy::forward`]'s parameter
    /// checks.
    pub fn prepare(&self, params: ProxyParams) -> Result<PreparedProxy> {
        self.proxy.check_params(&params)?;
        let c = self.proxy.desc.channels;
        let mut stats = self.proxy.new_stats();
        let layout = self.layout(ProxyPass::Forward);
        let post = layout.try_with_reused(|ws| -> Result<Vec<f32>> {
            let mut ws = Workspace::new(ws, &layout)?;
            self.proxy
                .stats_impl(self.proxy.level, &params, &mut stats, &mut ws)?;
            let (p, q) = self.proxy.post(&stats, ws.take(2 * c)?);
            Ok([p, q].concat())
        })?;
        Ok(PreparedProxy {
            gamma: params.gamma.to_vec(),
            beta: params.beta.to_vec(),
            post,
            stats,
        })
    }

    /// [`NormProxy::forward_with_workspace`] with the proxy statistics taken from
    /// `prepared` instead of computed: `z` (overwritten, the same bits as the forward
    /// pass with the parameters `prepared` was made from) and the norm statistics of
    /// `x` in `stats`. `ws`: at least [`NormProxy::workspace_len`]`(ProxyPass::Forward)`
    /// floats, any contents. Errors: [`Error::BufferSize`] for a wrong `x`, `z`,
    /// `stats` or short `ws`; [`Error::InvalidArgument`] for a `prepared` of another
    /// channel count.
    pub fn forward_prepared_with_workspace(
        &self,
        x: &[f32],
        prepared: &PreparedProxy,
        z: &mut [f32],
        stats: &mut NormStats,
        ws: &mut [f32],
    ) -> Result<()> {
        self.run_prepared(x, prepared, None, z, stats, ws)
    }

    /// [`NormProxy::forward_prepared_with_workspace`] on norm statistics gathered
    /// elsewhere: `sums` and `squares` are each sample's channel sums and sums of
    /// squares of `x` (`[N][C]`, `f64`; what a convolution's statistics post-op
    /// returns for its output), so the pass reads `x` once (the apply pass) instead of
    /// twice; see [`crate::kernels::norm::Norm::forward_from_sums_with_workspace`].
    /// `z` agrees with the prepared forward's to rounding. Errors: those of
    /// [`NormProxy::forward_prepared_with_workspace`], [`Error::BufferSize`] naming
    /// `"sums"` / `"squares"` (`N·C`).
    pub fn forward_prepared_from_sums_with_workspace(
        &self,
        x: &[f32],
        prepared: &PreparedProxy,
        sums: (&[f64], &[f64]),
        z: &mut [f32],
        stats: &mut NormStats,
        ws: &mut [f32],
    ) -> Result<()> {
        self.run_prepared(x, prepared, Some(sums), z, stats, ws)
    }

    /// The prepared forward pass as a convolution prologue's coefficients `[a | b | p
    /// | q]` (`4·N·C` floats in `out`) from each sample's channel sums and sums of
    /// squares of its input (see [`Norm::prologue_from_sums`]); `ws`: at least
    /// [`NormProxy::workspace_len`]`(ProxyPass::Forward)` floats.
    pub(crate) fn prologue_from_sums(
        &self,
        prepared: &PreparedProxy,
        sums: (&[f64], &[f64]),
        out: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let c = self.proxy.desc.channels;
        let cw = Channelwise {
            g: &prepared.gamma,
            bt: &prepared.beta,
            post: Some(prepared.post.split_at(c)),
            act: self.proxy.desc.activation,
        };
        self.norm.prologue_from_sums(cw, sums, out, ws)
    }

    /// The prepared forward pass, its norm statistics from `x` or from `sums`.
    fn run_prepared(
        &self,
        x: &[f32],
        prepared: &PreparedProxy,
        sums: Option<(&[f64], &[f64])>,
        z: &mut [f32],
        stats: &mut NormStats,
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("z", z.len(), self.x_len())?;
        let c = self.proxy.desc.channels;
        if prepared.gamma.len() != c || prepared.post.len() != 2 * c {
            return Err(Error::InvalidArgument(format!(
                "the prepared proxy correction has {} channels, the plan {c}",
                prepared.gamma.len()
            )));
        }
        self.norm.check_stats(stats)?;
        // Only the norm's regions: the proxy statistics are in `prepared`.
        let mut layout = WorkspaceLayout::new(1);
        self.norm.forward_regions(&mut layout);
        let mut ws = Workspace::new(ws, &layout)?;
        let cw = Channelwise {
            g: &prepared.gamma,
            bt: &prepared.beta,
            post: Some(prepared.post.split_at(c)),
            act: self.proxy.desc.activation,
        };
        let st = [&mut stats.mean[..], &mut stats.var, &mut stats.rstd];
        let level = self.proxy.level;
        match sums {
            None => self.norm.forward_impl(level, x, cw, z, st, &mut ws),
            Some(sums) => self
                .norm
                .forward_from_sums_impl(level, x, cw, sums, z, st, &mut ws),
        }
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
        let level = self.proxy.level;
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
