//! The backward pass of [`Norm`]: the statistics of the output gradient, then `dx`
//! and the affine gradients.

use super::engine::{BwdApplyChunk, BwdStatsChunk, ProxySums};
use super::*;

impl Norm {
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
        let totals = self.backward_impl(self.level, (x, dy), cw, extra, saved, dx, &mut ws)?;
        if let Some(d) = grads.dgamma {
            write_grad(d, &totals[c..2 * c], grads.mode);
        }
        if let Some(d) = grads.dbeta {
            write_grad(d, &totals[..c], grads.mode);
        }
        Ok(())
    }

    /// Backward apply coefficients `[p1 | q | o]` (into `out`, `3·channels`) from the
    /// totals `Σ du`, `Σ du·x̂` of one sample (or of the batch for BatchNorm) and its
    /// saved `rstd`; `ab` holds `2·sets` values (any contents).
    pub(super) fn dx_coefs<'o>(
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
