//! The forward passes of [`Norm`]: training (statistics of `x`), inference (running
//! statistics, or folded into an affine), the running-statistics update.

use super::engine::{ApplyChunk, StatsChunk};
use super::*;

impl Norm {
    /// `y = φ(γ·(x − μ)·r + β)` with the statistics of `x` (batch statistics for
    /// BatchNorm: training mode), which are written to `stats` for the backward pass.
    /// `y` is overwritten. Allocates its workspace; see
    /// [`Norm::forward_with_workspace`].
    pub fn forward(
        &self,
        x: &[f32],
        affine: Affine,
        y: &mut [f32],
        stats: &mut NormStats,
    ) -> Result<()> {
        self.allocating(NormPass::Forward, |ws| {
            self.forward_with_workspace(x, affine, y, stats, ws)
        })
    }

    /// [`Norm::forward`] with its scratch in `ws`: at least
    /// [`Norm::workspace_len`]`(NormPass::Forward)` floats, any contents (left
    /// unspecified). Errors: the buffer checks of [`Norm::forward`] first, then
    /// [`Error::BufferSize`] naming `"workspace"` if `ws` is short.
    pub fn forward_with_workspace(
        &self,
        x: &[f32],
        affine: Affine,
        y: &mut [f32],
        stats: &mut NormStats,
        ws: &mut [f32],
    ) -> Result<()> {
        let mut ws = self.forward_checks((x, &*y), &affine, stats, ws)?;
        let out = [&mut stats.mean[..], &mut stats.var, &mut stats.rstd];
        self.forward_unchecked(x, affine, y, out, &mut ws)
    }

    /// The checks of a training forward pass (`x`, `y`, the affine parameters, the
    /// statistics, in that order) and its workspace.
    fn forward_checks<'w>(
        &self,
        (x, y): (&[f32], &[f32]),
        affine: &Affine,
        stats: &NormStats,
        ws: &'w mut [f32],
    ) -> Result<Workspace<'w>> {
        check_len("x", x.len(), self.x_len)?;
        check_len("y", y.len(), self.x_len)?;
        self.check_affine(affine)?;
        self.check_stats(stats)?;
        Workspace::new(ws, &self.layout(NormPass::Forward))
    }

    /// The per-channel inputs of the apply pass for `affine` (a missing γ or β as
    /// unit vectors from `ws`), no post-activation.
    fn channelwise<'a, 'w: 'a>(
        &self,
        affine: Affine<'a>,
        ws: &mut Workspace<'w>,
    ) -> Result<Channelwise<'a>> {
        let (ones, zeros) = unit(ws.take(2 * self.desc.channels)?);
        Ok(Channelwise {
            g: affine.gamma.unwrap_or(ones),
            bt: affine.beta.unwrap_or(zeros),
            post: None,
            act: self.desc.activation,
        })
    }

    /// The training forward pass after the checks: the unit vectors, then
    /// [`Norm::forward_impl`].
    pub(super) fn forward_unchecked(
        &self,
        x: &[f32],
        affine: Affine,
        y: &mut [f32],
        stats: [&mut [f32]; 3],
        ws: &mut Workspace,
    ) -> Result<()> {
        let cw = self.channelwise(affine, ws)?;
        self.forward_impl(self.level, x, cw, y, stats, ws)
    }

    /// The apply half of [`Norm::forward`] on statistics an earlier call saved for the
    /// same `x`: `y = φ(γ·(x − μ)·r + β)` from `stats.mean` and `stats.rstd` — bit for
    /// bit the `y` of that call, in one pass over `x` with no statistics pass. For
    /// recomputing a normalized activation in the backward pass instead of keeping it.
    /// `y` is overwritten; the workspace is the forward pass's (kept by the thread).
    ///
    /// # Errors
    /// [`Error::BufferSize`] for a wrong length of `x`, `y`, the affine parameters or
    /// the statistics.
    pub fn forward_from_stats(
        &self,
        x: &[f32],
        affine: Affine,
        stats: &NormStats,
        y: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("y", y.len(), self.x_len)?;
        self.check_affine(&affine)?;
        self.check_stats(stats)?;
        self.allocating(NormPass::Forward, |ws| {
            let mut ws = Workspace::new(ws, &self.layout(NormPass::Forward))?;
            let g = self.geo;
            let c = g.c;
            let cw = self.channelwise(affine, &mut ws)?;
            let sets = self.coef_sets();
            let per = stats.mean.len() / sets;
            let coefs = ws.take(sets * 3 * c)?;
            for (n, kb) in coefs.chunks_mut(3 * c).enumerate() {
                let r = n * per..(n + 1) * per;
                self.xhat_coefs(&stats.mean[r.clone()], &stats.rstd[r], kb);
            }
            self.apply_all(self.level, x, cw, coefs, y);
            Ok(())
        })
    }

    /// [`Norm::forward_from_sums_with_workspace`] with its workspace allocated (kept by
    /// the calling thread between calls).
    ///
    /// # Errors
    /// Those of [`Norm::forward_from_sums_with_workspace`].
    pub fn forward_from_sums(
        &self,
        x: &[f32],
        affine: Affine,
        sums: (&[f64], &[f64]),
        y: &mut [f32],
        stats: &mut NormStats,
    ) -> Result<()> {
        self.allocating(NormPass::Forward, |ws| {
            self.forward_from_sums_with_workspace(x, affine, sums, y, stats, ws)
        })
    }

    /// [`Norm::forward_with_workspace`] on statistics gathered elsewhere: `sums` and
    /// `squares` are each sample's channel sums `Σ_{h,w} x[n][h][w][c]` and sums of
    /// squares (`[N][C]`, `f64`) — what a convolution's statistics post-op returns for
    /// its output ([`crate::kernels::conv::ChannelStats::SumsAndSquares`]) — so the
    /// norm makes one pass over `x` (the apply pass) instead of two. GroupNorm and
    /// LayerNorm take each sample's statistics from its own sums; BatchNorm (training
    /// mode: batch statistics) adds the samples' sums in order, `n = 0, 1, …`. `y` is
    /// overwritten and the statistics are written to `stats`; they agree with
    /// [`Norm::forward`]'s to rounding (those come from shifted sums of `x` itself).
    ///
    /// # Errors
    /// The buffer checks of [`Norm::forward_with_workspace`], and
    /// [`Error::BufferSize`] naming `"sums"` / `"squares"` (`N·C`).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_from_sums_with_workspace(
        &self,
        x: &[f32],
        affine: Affine,
        (sums, squares): (&[f64], &[f64]),
        y: &mut [f32],
        stats: &mut NormStats,
        ws: &mut [f32],
    ) -> Result<()> {
        let mut ws = self.forward_checks((x, &*y), &affine, stats, ws)?;
        let cw = self.channelwise(affine, &mut ws)?;
        let out = [&mut stats.mean[..], &mut stats.var, &mut stats.rstd];
        self.forward_from_sums_impl(self.level, x, cw, (sums, squares), y, out, &mut ws)
    }

    /// Inference: BatchNorm uses the running statistics (required), folded into one
    /// per-channel scale and shift ([`Norm::fold_inference`]); GroupNorm and LayerNorm
    /// have no running statistics (pass `None`) and compute those of `x` as in
    /// [`Norm::forward`]. `y` is overwritten. Allocates its workspace; see
    /// [`Norm::forward_infer_with_workspace`].
    pub fn forward_infer(
        &self,
        x: &[f32],
        affine: Affine,
        running: Option<&RunningStats>,
        y: &mut [f32],
    ) -> Result<()> {
        self.allocating(NormPass::ForwardInfer, |ws| {
            self.forward_infer_with_workspace(x, affine, running, y, ws)
        })
    }

    /// [`Norm::forward_infer`] with its scratch in `ws` (at least
    /// [`Norm::workspace_len`]`(NormPass::ForwardInfer)` floats; errors as
    /// [`Norm::forward_with_workspace`]).
    pub fn forward_infer_with_workspace(
        &self,
        x: &[f32],
        affine: Affine,
        running: Option<&RunningStats>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("y", y.len(), self.x_len)?;
        self.check_affine(&affine)?;
        if !self.is_batch_norm() {
            if running.is_some() {
                return Err(Error::InvalidArgument(
                    "GroupNorm and LayerNorm take no running statistics".into(),
                ));
            }
            let mut ws = Workspace::new(ws, &self.layout(NormPass::ForwardInfer))?;
            let sets = self.sets();
            let (mean, rest) = ws.take(3 * sets)?.split_at_mut(sets);
            let (var, rstd) = rest.split_at_mut(sets);
            return self.forward_unchecked(x, affine, y, [mean, var, rstd], &mut ws);
        }
        let running = running.ok_or_else(|| {
            Error::InvalidArgument("BatchNorm inference needs the running statistics".into())
        })?;
        self.check_running(running)?;
        let mut ws = Workspace::new(ws, &self.layout(NormPass::ForwardInfer))?;
        let c = self.desc.channels;
        let (scale, shift) = ws.take(2 * c)?.split_at_mut(c);
        self.fold_into(running, affine, scale, shift);
        let (ones, zeros) = unit(ws.take(2 * c)?);
        let (scale, shift) = (&*scale, &*shift);
        let level = self.level;
        let g = self.geo;
        with_act!(self.desc.activation, A => {
            x.par_chunks(g.chunk_len()).zip(y.par_chunks_mut(g.chunk_len())).for_each(|(x, y)| {
                dispatch(level, ApplyChunk {
                    x, y, c: g.c, xm: zeros, xa: scale, xb: shift, g: ones, bt: zeros, post: None, act: PhantomData::<A>,
                })
            })
        });
        Ok(())
    }

    pub(super) fn check_running(&self, running: &RunningStats) -> Result<()> {
        let c = self.desc.channels;
        check_len("running.mean", running.mean.len(), c)?;
        check_len("running.var", running.var.len(), c)
    }

    /// BatchNorm inference folded into `y = φ(x·scale + shift)`:
    /// `scale = γ/√(running_var + ε)`, `shift = β − running_mean·scale`
    /// (`[channels]` each).
    pub fn fold_inference(
        &self,
        running: &RunningStats,
        affine: Affine,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        if !self.is_batch_norm() {
            return Err(Error::InvalidArgument(
                "only BatchNorm folds running statistics".into(),
            ));
        }
        self.check_affine(&affine)?;
        self.check_running(running)?;
        let c = self.desc.channels;
        let mut scale = vec![0.0f32; c];
        let mut shift = vec![0.0f32; c];
        self.fold_into(running, affine, &mut scale, &mut shift);
        Ok((scale, shift))
    }

    /// [`Norm::fold_inference`] into `scale`, `shift` (checked by the caller).
    pub(super) fn fold_into(
        &self,
        running: &RunningStats,
        affine: Affine,
        scale: &mut [f32],
        shift: &mut [f32],
    ) {
        let eps = self.desc.eps as f64;
        for ch in 0..self.desc.channels {
            let g = affine.gamma.map_or(1.0, |g| g[ch] as f64);
            let b = affine.beta.map_or(0.0, |b| b[ch] as f64);
            let sc = g / (running.var[ch] as f64 + eps).sqrt();
            scale[ch] = sc as f32;
            shift[ch] = (b - running.mean[ch] as f64 * sc) as f32;
        }
    }

    /// BatchNorm's running-statistics update after a training forward pass, with
    /// PyTorch's convention: `running = (1 − momentum)·running + momentum·batch`,
    /// where the batch variance is the unbiased one (`·M/(M − 1)`, `M = batch·h·w`).
    /// Needs `M ≥ 2` and `momentum ∈ [0, 1]`.
    pub fn update_running(
        &self,
        stats: &NormStats,
        running: &mut RunningStats,
        momentum: f32,
    ) -> Result<()> {
        if !self.is_batch_norm() {
            return Err(Error::InvalidArgument(
                "only BatchNorm keeps running statistics".into(),
            ));
        }
        self.check_stats(stats)?;
        let c = self.desc.channels;
        check_len("running.mean", running.mean.len(), c)?;
        check_len("running.var", running.var.len(), c)?;
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::InvalidArgument(format!(
                "momentum must be in [0, 1], got {momentum}"
            )));
        }
        let m = self.geo.n * self.geo.hw;
        if m < 2 {
            return Err(Error::InvalidArgument(
                "the unbiased variance needs at least 2 values per channel".into(),
            ));
        }
        let unbias = m as f64 / (m - 1) as f64;
        let mo = momentum as f64;
        for ch in 0..c {
            let rm = &mut running.mean[ch];
            *rm = ((1.0 - mo) * *rm as f64 + mo * stats.mean[ch] as f64) as f32;
            let rv = &mut running.var[ch];
            *rv = ((1.0 - mo) * *rv as f64 + mo * stats.var[ch] as f64 * unbias) as f32;
        }
        Ok(())
    }

    /// Group means and variances of one sample from its chunk partials
    /// (`chunks × [Σ(x−k) | Σ(x−k)²]`) and shift row `k`; written as `f32` stats.
    /// `scratch` holds [`Norm::finalize_len`] values (any contents).
    pub(super) fn finalize_sample(
        &self,
        shift: Option<&[f32]>,
        part: &[f64],
        out: (&mut [f32], &mut [f32], &mut [f32]),
        scratch: &mut [f64],
    ) {
        let (c, gn) = (self.geo.c, self.groups);
        let (tot, rest) = scratch.split_at_mut(2 * c);
        let (mean_c, rest) = rest.split_at_mut(c);
        let (m2_c, rest) = rest.split_at_mut(c);
        let (gmean, gm2) = rest.split_at_mut(gn);
        sum_rows(part, tot);
        let m = self.geo.hw as f64;
        let gs = (c / gn) as f64;
        gmean.fill(0.0);
        for ch in 0..c {
            let (s1, s2) = (tot[ch], tot[c + ch]);
            mean_c[ch] = shift.map_or(0.0, |s| s[ch] as f64) + s1 / m;
            m2_c[ch] = (s2 - s1 * s1 / m).max(0.0);
            gmean[self.group_of(ch)] += mean_c[ch];
        }
        for v in gmean.iter_mut() {
            *v /= gs;
        }
        gm2.fill(0.0);
        for ch in 0..c {
            let g = self.group_of(ch);
            let d = mean_c[ch] - gmean[g];
            gm2[g] += m2_c[ch] + m * d * d;
        }
        let eps = self.desc.eps as f64;
        let (mean, var, rstd) = out;
        for g in 0..gn {
            let v = gm2[g] / (m * gs);
            mean[g] = gmean[g] as f32;
            var[g] = v as f32;
            rstd[g] = (1.0 / (v + eps).sqrt()) as f32;
        }
    }

    /// The statistic set of channel `ch` in a coefficient set.
    pub(super) fn set_of(&self, ch: usize) -> usize {
        if self.groups == 0 {
            ch
        } else {
            self.group_of(ch)
        }
    }

    /// Per-channel `x̂ = (x − xm)·xa + xb` coefficients `[xm | xa | xb]` (into `out`,
    /// `3·channels`) of one sample from its saved stats (`[groups]` each), or of the
    /// batch for BatchNorm (`[channels]`).
    pub(super) fn xhat_coefs<'o>(
        &self,
        mean: &[f32],
        rstd: &[f32],
        out: &'o mut [f32],
    ) -> Coefs<'o> {
        let c = self.geo.c;
        let (xm, rest) = out.split_at_mut(c);
        let (xa, xb) = rest.split_at_mut(c);
        for ch in 0..c {
            xm[ch] = mean[self.set_of(ch)];
            xa[ch] = rstd[self.set_of(ch)];
        }
        xb.fill(0.0);
        Coefs::of(out, c)
    }

    /// Statistics pass of chunk `(n, j)` into its partial (overwritten).
    pub(super) fn stats_chunk(
        &self,
        level: SimdLevel,
        x: &[f32],
        n: usize,
        j: usize,
        part: &mut [f64],
    ) {
        let g = self.geo;
        let c = g.c;
        let shift = if self.groups == 0 {
            &x[..c]
        } else {
            &x[n * g.sample_len()..n * g.sample_len() + c]
        };
        part.fill(0.0);
        let (s1, s2) = part.split_at_mut(c);
        dispatch(
            level,
            StatsChunk {
                x: g.chunk(x, n, j),
                c,
                shift,
                s1,
                s2,
            },
        );
    }

    /// The forward pass with resolved per-channel inputs (shared with Proxy Norm):
    /// takes the regions of [`Norm::forward_regions`] from `ws` and writes the
    /// statistics into `[mean, var, rstd]` (`sets` each).
    pub(crate) fn forward_impl(
        &self,
        level: SimdLevel,
        x: &[f32],
        cw: Channelwise,
        y: &mut [f32],
        [mean, var, rstd]: [&mut [f32]; 3],
        ws: &mut Workspace,
    ) -> Result<()> {
        let g = self.geo;
        let (c, sl, cl) = (g.c, g.sample_len(), g.chunk_len());
        let stride = 2 * c;
        let part = take_f64(ws, g.total_chunks() * stride)?;
        let coefs = ws.take(self.coef_sets() * 3 * c)?;
        let fl = self.finalize_len();
        let fin = take_f64(ws, if self.groups == 0 { 2 * c } else { g.n * fl })?;
        let apply = |xc: &[f32], yc: &mut [f32], k: Coefs| {
            with_act!(cw.act, A => dispatch(level, ApplyChunk {
                x: xc, y: yc, c, xm: k.0, xa: k.1, xb: k.2, g: cw.g, bt: cw.bt, post: cw.post, act: PhantomData::<A>,
            }))
        };
        // Per-sample norms with a sample for every thread: each sample's statistics
        // and apply pass on one thread while it is in cache. Fewer samples than
        // threads (one image at inference) take the chunked path below, which splits
        // a sample over the threads; both compute every chunk, sample and
        // coefficient the same way, so the bits do not depend on the choice.
        if self.groups > 0 && g.per_sample() && g.n >= rayon::current_num_threads() {
            let gn = self.groups;
            x.par_chunks(sl)
                .zip(y.par_chunks_mut(sl))
                .zip(part.par_chunks_mut(g.chunks * stride))
                .zip(mean.par_chunks_mut(gn))
                .zip(var.par_chunks_mut(gn))
                .zip(rstd.par_chunks_mut(gn))
                .zip(coefs.par_chunks_mut(3 * c))
                .zip(fin.par_chunks_mut(fl))
                .enumerate()
                .for_each(|(n, (((((((xs, ys), ps), mean), var), rstd), kb), fs))| {
                    for (j, pc) in ps.chunks_mut(stride).enumerate() {
                        self.stats_chunk(level, x, n, j, pc);
                    }
                    self.finalize_sample(Some(&xs[..c]), ps, (mean, var, rstd), fs);
                    let k = self.xhat_coefs(mean, rstd, kb);
                    for (xc, yc) in xs.chunks(cl).zip(ys.chunks_mut(cl)) {
                        apply(xc, yc, k);
                    }
                });
            return Ok(());
        }
        part.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(i, pc)| self.stats_chunk(level, x, i / g.chunks, i % g.chunks, pc));
        if self.groups == 0 {
            // BatchNorm: one set per channel over every chunk of every sample.
            let tot = &mut fin[..stride];
            sum_rows(part, tot);
            self.finalize_batch(Some(&x[..c]), tot, [mean, var, rstd], coefs);
        } else {
            let per = g.chunks * stride;
            self.finalize_samples(Some(x), part, per, [mean, var, rstd], coefs, fin);
        }
        self.apply_all(level, x, cw, coefs, y);
        Ok(())
    }

    /// BatchNorm's statistics (`[mean, var, rstd]`, one per channel) and apply
    /// coefficients (the first `3·C` of `coefs`) from the batch totals `tot = [Σx |
    /// Σx²]` (`2·C`, `f64`) of every pixel of every sample, shifted by `shift` (the
    /// first pixel of `x`) when given.
    fn finalize_batch(
        &self,
        shift: Option<&[f32]>,
        tot: &[f64],
        [mean, var, rstd]: [&mut [f32]; 3],
        coefs: &mut [f32],
    ) {
        let c = self.geo.c;
        let m = (self.geo.n * self.geo.hw) as f64;
        let eps = self.desc.eps as f64;
        for ch in 0..c {
            let (s1, s2) = (tot[ch], tot[c + ch]);
            let v = (s2 - s1 * s1 / m).max(0.0) / m;
            let origin = shift.map_or(0.0, |x| f64::from(x[ch]));
            mean[ch] = (origin + s1 / m) as f32;
            var[ch] = v as f32;
            rstd[ch] = (1.0 / (v + eps).sqrt()) as f32;
        }
        self.xhat_coefs(mean, rstd, &mut coefs[..3 * c]);
    }

    /// Each sample's statistics (`[mean, var, rstd]`, `groups` per sample) and apply
    /// coefficients (`3·C` per sample in `coefs`) of a per-sample norm from its
    /// partials (`per` values of `part` per sample; shifted by the sample's first
    /// pixel of `x` when given). `fin` holds [`Norm::finalize_len`] values per sample.
    fn finalize_samples(
        &self,
        x: Option<&[f32]>,
        part: &[f64],
        per: usize,
        [mean, var, rstd]: [&mut [f32]; 3],
        coefs: &mut [f32],
        fin: &mut [f64],
    ) {
        let (c, sl, gn, fl) = (
            self.geo.c,
            self.geo.sample_len(),
            self.groups,
            self.finalize_len(),
        );
        for n in 0..self.geo.n {
            let r = n * gn..(n + 1) * gn;
            let out = (
                &mut mean[r.clone()],
                &mut var[r.clone()],
                &mut rstd[r.clone()],
            );
            let shift = x.map(|x| &x[n * sl..n * sl + c]);
            let ps = &part[n * per..(n + 1) * per];
            self.finalize_sample(shift, ps, out, &mut fin[n * fl..(n + 1) * fl]);
            self.xhat_coefs(
                &mean[r.clone()],
                &rstd[r],
                &mut coefs[n * 3 * c..(n + 1) * 3 * c],
            );
        }
    }

    /// The apply pass over every chunk in parallel: `y = φ(γ·x̂ + β)` (then the
    /// post-activation when given), sample `n` with coefficient set `min(n, sets − 1)`
    /// of `coefs` (`3·C` per set).
    fn apply_all(
        &self,
        level: SimdLevel,
        x: &[f32],
        cw: Channelwise,
        coefs: &[f32],
        y: &mut [f32],
    ) {
        let g = self.geo;
        let (c, sl, cl, sets) = (g.c, g.sample_len(), g.chunk_len(), self.coef_sets());
        y.par_chunks_mut(sl).enumerate().for_each(|(n, ys)| {
            let k = Coefs::of(&coefs[n.min(sets - 1) * 3 * c..], c);
            ys.par_chunks_mut(cl).enumerate().for_each(|(j, yc)| {
                with_act!(cw.act, A => dispatch(level, ApplyChunk {
                    x: g.chunk(x, n, j), y: yc, c, xm: k.0, xa: k.1, xb: k.2, g: cw.g, bt: cw.bt, post: cw.post, act: PhantomData::<A>,
                }))
            });
        });
    }

    /// [`Norm::forward_impl`] with the
    /// statistics pass replaced by each sample's channel sums and sums of squares
    /// `sums = (Σx, Σx²)` (`[N][C]` each, `f64`; as a convolution's statistics post-op
    /// gathers them): the statistics follow from them as from the pass's partials,
    /// then the apply pass runs. Takes the regions of [`Norm::forward_regions`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_from_sums_impl(
        &self,
        level: SimdLevel,
        x: &[f32],
        cw: Channelwise,
        (s1, s2): (&[f64], &[f64]),
        y: &mut [f32],
        [mean, var, rstd]: [&mut [f32]; 3],
        ws: &mut Workspace,
    ) -> Result<()> {
        let coefs = self.finalize_from_sums((s1, s2), [mean, var, rstd], ws)?;
        self.apply_all(level, x, cw, coefs, y);
        Ok(())
    }

    /// The norm's statistics from each sample's channel sums and sums of squares
    /// (`[N][C]` each; BatchNorm adds the samples in order) into `[mean, var, rstd]`,
    /// and the `x̂` coefficients of every set (returned, `3·C` per set, in `ws`),
    /// as the statistics pass's partials give them. Takes the regions of
    /// [`Norm::forward_regions`].
    fn finalize_from_sums<'w>(
        &self,
        (s1, s2): (&[f64], &[f64]),
        stats: [&mut [f32]; 3],
        ws: &mut Workspace<'w>,
    ) -> Result<&'w mut [f32]> {
        let g = self.geo;
        let c = g.c;
        check_len("sums", s1.len(), g.n * c)?;
        check_len("squares", s2.len(), g.n * c)?;
        let part = take_f64(ws, g.total_chunks() * 2 * c)?;
        let coefs = ws.take(self.coef_sets() * 3 * c)?;
        if self.groups == 0 {
            // BatchNorm: the batch totals, the samples added in order.
            let tot = take_f64(ws, 2 * c)?;
            let (t1, t2) = tot.split_at_mut(c);
            sum_rows(s1, t1);
            sum_rows(s2, t2);
            self.finalize_batch(None, tot, stats, coefs);
            return Ok(coefs);
        }
        let fin = take_f64(ws, g.n * self.finalize_len())?;
        let part = &mut part[..g.n * 2 * c];
        for (n, ps) in part.chunks_exact_mut(2 * c).enumerate() {
            ps[..c].copy_from_slice(&s1[n * c..(n + 1) * c]);
            ps[c..].copy_from_slice(&s2[n * c..(n + 1) * c]);
        }
        self.finalize_samples(None, part, 2 * c, stats, coefs, fin);
        Ok(coefs)
    }

    /// [`Norm::prologue_from_sums`] of the norm's own apply pass with the affine
    /// `(γ, β)` (`[C]` each) and the norm's activation.
    pub(crate) fn affine_prologue_from_sums(
        &self,
        (g, bt): (&[f32], &[f32]),
        sums: (&[f64], &[f64]),
        out: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        check_len("gamma", g.len(), self.geo.c)?;
        check_len("beta", bt.len(), self.geo.c)?;
        let cw = Channelwise {
            g,
            bt,
            post: None,
            act: self.desc.activation,
        };
        self.prologue_from_sums(cw, sums, out, ws)
    }

    /// The apply pass of a per-sample norm (GroupNorm, LayerNorm) with the channelwise
    /// terms `cw`, as the coefficients of a convolution prologue
    /// ([`PreOps`](crate::kernels::conv::PreOps)): for each image `n` and channel `c`,
    /// `[a | b | p | q]` (`out`, `4·N·C` floats, each `[N][C]`) such that
    /// `p·φ(a·x + b) + q` is the apply pass's output — `a = γ·rstd`, `b = β − a·mean`
    /// (in `f64`, then rounded), `p`, `q` Proxy Norm's correction (or 1 and 0). The
    /// statistics come from each sample's channel sums and sums of squares of `x`
    /// (`[N][C]` each, as a convolution's statistics post-op gathers them). `ws`: the
    /// regions of [`Norm::forward_regions`].
    pub(crate) fn prologue_from_sums(
        &self,
        cw: Channelwise,
        sums: (&[f64], &[f64]),
        out: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let (c, n_img) = (self.geo.c, self.geo.n);
        let nc = n_img * c;
        check_len("prologue coefficients", out.len(), 4 * nc)?;
        let mut layout = WorkspaceLayout::new(1);
        self.forward_regions(&mut layout);
        let mut ws = Workspace::new(ws, &layout)?;
        let mut st = self.new_stats();
        let stats = [&mut st.mean[..], &mut st.var, &mut st.rstd];
        let coefs = self.finalize_from_sums(sums, stats, &mut ws)?;
        let (a, rest) = out.split_at_mut(nc);
        let (b, rest) = rest.split_at_mut(nc);
        let (p, q) = rest.split_at_mut(nc);
        for n in 0..n_img {
            let k = Coefs::of(&coefs[n.min(self.coef_sets() - 1) * 3 * c..], c);
            for ch in 0..c {
                let i = n * c + ch;
                // x̂ = (x − xm)·xa + xb, u = γ·x̂ + β.
                let ga = f64::from(cw.g[ch]) * f64::from(k.1[ch]);
                let off = f64::from(k.2[ch]) - f64::from(k.0[ch]) * f64::from(k.1[ch]);
                a[i] = ga as f32;
                b[i] = (f64::from(cw.g[ch]) * off + f64::from(cw.bt[ch])) as f32;
                (p[i], q[i]) = cw.post.map_or((1.0, 0.0), |(pp, qq)| (pp[ch], qq[ch]));
            }
        }
        Ok(())
    }
}
