//! The proxy statistics of [`ProxyNorm`]: μ, v, s of every channel from the K proxy
//! points (forward), and their gradient back to γ, β, β', γ' (backward).

use super::*;

impl ProxyNorm {
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
        self.stats_impl(self.level, &params, out, &mut ws)
    }

    pub(super) fn stats_impl(
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
        let g = self.stats_backward_impl(self.level, &params, stats, (dmu, ds), &mut ws)?;
        self.write(grads, None, g);
        Ok(())
    }

    /// The proxy-path gradients `[dγ | dβ | dβ' | dγ']` (`f64`, `4·channels`, in the
    /// workspace: the regions of [`ProxyNorm::stats_backward_regions`]).
    pub(super) fn stats_backward_impl<'w>(
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
    pub(super) fn write(
        &self,
        grads: ProxyGrads,
        direct: Option<(&[f64], &[f64])>,
        prox: &mut [f64],
    ) {
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
    pub(super) fn post<'o>(&self, st: &ProxyStats, out: &'o mut [f32]) -> (&'o [f32], &'o [f32]) {
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
    pub(super) fn dmu_ds<'o>(
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
