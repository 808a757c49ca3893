//! The standalone (unfused) Proxy Norm activation of [`ProxyNorm`] on an already
//! normalized input, forward and backward.

use super::*;

impl ProxyNorm {
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
        let level = self.level;
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

    pub(super) fn check_rows(&self, xhat: &[f32]) -> Result<()> {
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
        let level = self.level;
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
    pub(super) fn grads_tail(
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
