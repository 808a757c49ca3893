//! Softmax cross-entropy with label smoothing, averaged over the batch, and its
//! gradient with respect to the logits.
//!
//! Layouts: `logits` and `dlogits` are `[batch][classes]` (row-major); targets are
//! either class indices `[batch]` ([`Targets::Labels`]) or a distribution per sample
//! `[batch][classes]` ([`Targets::Soft`], e.g. the mixed targets of mixup/cutmix).
//!
//! With smoothing `ε` and `K` classes the target of sample `n` is
//! `t[n, k] = (1 − ε)·t̂[n, k] + ε/K`, where `t̂` is the one-hot label or the given soft
//! target. The loss is
//!
//! `L = (1/N) Σ_n Σ_k t[n, k]·(lse_n − z[n, k])`, `lse_n = log Σ_k exp z[n, k]`,
//!
//! computed stably (`lse_n = m + log Σ exp(z − m)` with `m` the row maximum), and the
//! gradient is `dL/dz[n, k] = (softmax(z_n)_k · Σ_j t[n, j] − t[n, k]) / N`
//! (`Σ_j t[n, j] = 1` for labels and normalized soft targets).
//!
//! [`CrossEntropy::forward_backward_with_workspace`] takes the per-row losses (`N`
//! floats, [`CrossEntropy::workspace_len`]) from the caller; the plain form calls it on
//! a buffer of that size the calling thread keeps between calls. Allocates on the workspace path: nothing.
//!
//! Rows are processed in parallel; the per-row losses are added in row order, so the
//! result is bitwise identical for any thread count.
//!
//! ```
//! use effnet::kernels::loss::{CrossEntropy, Targets};
//! let ce = CrossEntropy::new(2, 3, 0.1).unwrap();
//! let logits = [2.0f32, 0.5, -1.0, 0.0, 0.0, 0.0];
//! let mut grad = [0.0f32; 6];
//! let loss = ce.forward_backward(&logits, Targets::Labels(&[0, 2]), Some(&mut grad)).unwrap();
//! assert!(loss > 0.0);
//! // Each row of the gradient sums to zero.
//! assert!((grad[..3].iter().sum::<f32>()).abs() < 1e-6);
//! ```

use crate::error::{Error, Result, check_len, checked_product};
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::{self, Simd, SimdKernel, dispatch};
use rayon::prelude::*;

/// The targets of a cross-entropy loss.
#[derive(Copy, Clone, Debug)]
pub enum Targets<'a> {
    /// One class index per sample, `[batch]`, each `< classes`.
    Labels(&'a [usize]),
    /// One distribution per sample, `[batch][classes]`, entries finite and `>= 0`
    /// (normally summing to 1 per sample; smoothing is applied on top).
    Soft(&'a [f32]),
}

/// A validated softmax cross-entropy: batch size, number of classes and label
/// smoothing `ε ∈ [0, 1)`. Formulas and layouts are in the [module docs](self).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct CrossEntropy {
    batch: usize,
    classes: usize,
    smoothing: f32,
}

/// Rows per parallel task.
const TASK_ROWS: usize = 4;

impl CrossEntropy {
    /// Validates the loss: `batch >= 1`, `classes >= 1`, `smoothing` finite in `[0, 1)`.
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] for zero sizes, [`Error::InvalidArgument`] for a
    /// smoothing outside `[0, 1)`, [`Error::Overflow`] if `batch·classes` does not fit.
    pub fn new(batch: usize, classes: usize, smoothing: f32) -> Result<Self> {
        if batch == 0 || classes == 0 {
            return Err(Error::InvalidDescriptor(format!(
                "cross entropy: batch ({batch}) and classes ({classes}) must be at least 1"
            )));
        }
        if !(0.0..1.0).contains(&smoothing) {
            return Err(Error::InvalidArgument(format!(
                "label smoothing {smoothing} is outside [0, 1)"
            )));
        }
        checked_product("logits", &[batch, classes])?;
        Ok(CrossEntropy {
            batch,
            classes,
            smoothing,
        })
    }

    /// Batch size `N`.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Number of classes `K`.
    pub fn classes(&self) -> usize {
        self.classes
    }
    /// Label smoothing `ε`.
    pub fn smoothing(&self) -> f32 {
        self.smoothing
    }

    /// The regions [`CrossEntropy::forward_backward_with_workspace`] takes: the
    /// per-row losses (`N`).
    fn layout(&self) -> WorkspaceLayout {
        let mut l = WorkspaceLayout::new(1);
        l.region(self.batch);
        l
    }

    /// Floats (`f32` elements) of workspace
    /// [`CrossEntropy::forward_backward_with_workspace`] needs (`batch` plus alignment
    /// slack; the same for any thread count and SIMD level).
    pub fn workspace_len(&self) -> usize {
        self.layout().len()
    }

    /// The mean loss over the batch; if `dlogits` is given (`[batch][classes]`), it is
    /// overwritten with the gradient of the mean loss with respect to the logits.
    /// Allocates its workspace; see [`CrossEntropy::forward_backward_with_workspace`].
    ///
    /// Non-finite logits propagate to the result (no error).
    ///
    /// # Errors
    /// [`Error::BufferSize`] for wrong lengths, [`Error::InvalidArgument`] for a label
    /// `>= classes` or a soft target that is negative or not finite.
    pub fn forward_backward(
        &self,
        logits: &[f32],
        targets: Targets<'_>,
        dlogits: Option<&mut [f32]>,
    ) -> Result<f32> {
        self.layout().try_with_reused(|ws| {
            self.forward_backward_with_workspace(logits, targets, dlogits, ws)
        })
    }

    /// [`CrossEntropy::forward_backward`] with its per-row losses in `ws` (at least
    /// [`CrossEntropy::workspace_len`] floats, any contents, left unspecified).
    ///
    /// # Errors
    /// As [`CrossEntropy::forward_backward`], then [`Error::BufferSize`] naming
    /// `"workspace"` if `ws` is short.
    pub fn forward_backward_with_workspace(
        &self,
        logits: &[f32],
        targets: Targets<'_>,
        dlogits: Option<&mut [f32]>,
        ws: &mut [f32],
    ) -> Result<f32> {
        let (n, k) = (self.batch, self.classes);
        check_len("logits", logits.len(), n * k)?;
        match targets {
            Targets::Labels(l) => {
                check_len("labels", l.len(), n)?;
                if let Some((i, &bad)) = l.iter().enumerate().find(|(_, v)| **v >= k) {
                    return Err(Error::InvalidArgument(format!(
                        "label {bad} of sample {i} is out of range for {k} classes"
                    )));
                }
            }
            Targets::Soft(t) => {
                check_len("targets", t.len(), n * k)?;
                if let Some(i) = t.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                    return Err(Error::InvalidArgument(format!(
                        "soft target {} at index {i} is negative or not finite",
                        t[i]
                    )));
                }
            }
        }
        if let Some(d) = &dlogits {
            check_len("dlogits", d.len(), n * k)?;
        }
        let mut ws = Workspace::new(ws, &self.layout())?;
        let losses = ws.take(n)?;
        let level = simd::active();
        let inv_n = 1.0 / n as f32;
        let row_task = |r0: usize, ls: &mut [f32], grad: Option<&mut [f32]>| {
            let rows = ls.len();
            let z = &logits[r0 * k..(r0 + rows) * k];
            let t = match targets {
                Targets::Labels(l) => RowTargets::Labels(&l[r0..r0 + rows]),
                Targets::Soft(t) => RowTargets::Soft(&t[r0 * k..(r0 + rows) * k]),
            };
            dispatch(
                level,
                CeRows {
                    z,
                    k,
                    t,
                    eps: self.smoothing,
                    grad_scale: inv_n,
                    losses: ls,
                    grad,
                },
            );
        };
        match dlogits {
            Some(d) => losses
                .par_chunks_mut(TASK_ROWS)
                .zip(d.par_chunks_mut(TASK_ROWS * k))
                .enumerate()
                .for_each(|(i, (ls, g))| row_task(i * TASK_ROWS, ls, Some(g))),
            None => losses
                .par_chunks_mut(TASK_ROWS)
                .enumerate()
                .for_each(|(i, ls)| row_task(i * TASK_ROWS, ls, None)),
        }
        let total: f64 = losses.iter().map(|&v| v as f64).sum();
        Ok((total / n as f64) as f32)
    }
}

#[derive(Copy, Clone)]
enum RowTargets<'a> {
    Labels(&'a [usize]),
    Soft(&'a [f32]),
}

/// Loss (and gradient) of a block of rows.
struct CeRows<'a> {
    z: &'a [f32],
    k: usize,
    t: RowTargets<'a>,
    eps: f32,
    grad_scale: f32,
    losses: &'a mut [f32],
    grad: Option<&'a mut [f32]>,
}

impl SimdKernel for CeRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(mut self, s: S) {
        let k = self.k;
        let eps = self.eps;
        let uni = eps / k as f32;
        for (r, loss) in self.losses.iter_mut().enumerate() {
            let z = &self.z[r * k..(r + 1) * k];
            // Row maximum.
            let mut mv = s.splat(f32::NEG_INFINITY);
            let mut chunks = z.chunks_exact(S::LANES);
            for c in &mut chunks {
                mv = s.max(mv, s.load(c));
            }
            let mut lanes = [f32::NEG_INFINITY; 16];
            s.store_upto(&mut lanes[..S::LANES], mv);
            let mut m = lanes[..S::LANES]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            for &v in chunks.remainder() {
                m = m.max(v);
            }
            // Σ exp(z − m), Σ z, and for soft targets Σ t̂ and Σ t̂·z.
            let soft = match self.t {
                RowTargets::Soft(t) => Some(&t[r * k..(r + 1) * k]),
                RowTargets::Labels(_) => None,
            };
            let mv = s.splat(m);
            let (mut se, mut sz, mut st, mut stz) = (s.zero(), s.zero(), s.zero(), s.zero());
            let mut grad_row = self.grad.as_deref_mut().map(|g| &mut g[r * k..(r + 1) * k]);
            let mut c0 = 0;
            while c0 < k {
                let w = (k - c0).min(S::LANES);
                let zv = s.load_upto(&z[c0..c0 + w]);
                let mut e = s.exp(s.sub(zv, mv));
                if w < S::LANES {
                    // Zero the padding lanes (exp(0 − m) is not 0).
                    let mut buf = [0.0f32; 16];
                    s.store_upto(&mut buf[..w], e);
                    e = s.load_upto(&buf[..w]);
                }
                se = s.add(se, e);
                sz = s.add(sz, zv);
                if let Some(t) = soft {
                    let tv = s.load_upto(&t[c0..c0 + w]);
                    st = s.add(st, tv);
                    stz = s.mul_add(tv, zv, stz);
                }
                if let Some(g) = grad_row.as_deref_mut() {
                    // Keep exp(z − m) for the gradient pass.
                    s.store_upto(&mut g[c0..c0 + w], e);
                }
                c0 += w;
            }
            let sum_e = s.reduce_sum(se);
            let lse = m + sum_e.ln();
            let sum_z = s.reduce_sum(sz);
            // Σ t = (1 − ε)·Σ t̂ + ε and Σ t·z = (1 − ε)·Σ t̂·z + ε/K·Σ z.
            let (t_sum, tz) = match self.t {
                RowTargets::Labels(l) => (1.0, (1.0 - eps) * z[l[r]] + uni * sum_z),
                RowTargets::Soft(_) => {
                    let st = s.reduce_sum(st);
                    let stz = s.reduce_sum(stz);
                    ((1.0 - eps) * st + eps, (1.0 - eps) * stz + uni * sum_z)
                }
            };
            *loss = t_sum * lse - tz;
            if let Some(g) = grad_row {
                // dz = (p·Σt − t) / N with p = e / Σe.
                let pscale = s.splat(t_sum * self.grad_scale / sum_e);
                let uni_g = s.splat(uni * self.grad_scale);
                let hard = s.splat((1.0 - eps) * self.grad_scale);
                let mut c0 = 0;
                while c0 < k {
                    let w = (k - c0).min(S::LANES);
                    let e = s.load_upto(&g[c0..c0 + w]);
                    let mut v = s.sub(s.mul(e, pscale), uni_g);
                    if let Some(t) = soft {
                        let tv = s.load_upto(&t[c0..c0 + w]);
                        v = s.sub(v, s.mul(tv, hard));
                    }
                    s.store_upto(&mut g[c0..c0 + w], v);
                    c0 += w;
                }
                if let RowTargets::Labels(l) = self.t {
                    g[l[r]] -= (1.0 - eps) * self.grad_scale;
                }
            }
        }
    }
}
