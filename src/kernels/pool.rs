//! Global average pooling over the spatial axes: the squeeze of squeeze-and-excite and
//! the pooling of the classifier head.
//!
//! Layouts: the input `x` is NHWC, `[batch][height][width][channels]` (channels
//! fastest); the pooled output `y` is `[batch][channels]`:
//!
//! `y[n, c] = (1 / (H·W)) · Σ_{h, w} x[n, h, w, c]`.
//!
//! The backward pass broadcasts: `dx[n, h, w, c] = dy[n, c] / (H·W)` (overwritten or
//! accumulated, see [`GradMode`]).
//!
//! Both passes also exist as `*_with_workspace`, taking their scratch (the forward's
//! per-chunk partial sums, `N·chunks·C` floats; the backward's scaled gradient, `N·C`)
//! from the caller: size it with [`workspace_len`]. The plain passes call them on a
//! buffer of that size the calling thread keeps between calls. Allocates on the workspace path: nothing.
//!
//! Sums are split into fixed chunks of rows (pixels) that depend on the shape only, and
//! the partial sums are added in chunk order, so results are bitwise identical for any
//! thread count.
//!
//! ```
//! use effnet::kernels::pool::{self, Nhwc};
//! use effnet::kernels::conv::GradMode;
//! let shape = Nhwc::new(2, 3, 5, 7).unwrap();
//! let x = vec![1.5f32; shape.len()];
//! let mut y = vec![0.0f32; shape.pooled_len()];
//! pool::global_avg_pool(&shape, &x, &mut y).unwrap();
//! assert!(y.iter().all(|&v| (v - 1.5).abs() < 1e-6));
//! let mut dx = vec![0.0f32; shape.len()];
//! pool::global_avg_pool_backward(&shape, &y, &mut dx, GradMode::Overwrite).unwrap();
//! assert!((dx[0] - 0.1).abs() < 1e-6);
//! ```

use crate::error::{Error, Result, check_len, checked_product};
use crate::kernels::conv::GradMode;
use crate::kernels::reduce::{add_rows, sum_rows};
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::{self, Simd, SimdKernel, SimdLevel, dispatch};
use rayon::prelude::*;

/// The shape of an NHWC activation tensor `[batch][height][width][channels]`, validated:
/// every dimension is at least 1 and the element count fits in memory addressing.
///
/// Used by the pooling, gate and regularization kernels.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nhwc {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    len: usize,
}

impl Nhwc {
    /// Validates a shape `[batch][height][width][channels]`.
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] if a dimension is zero, [`Error::Overflow`] if the
    /// element count does not fit.
    pub fn new(batch: usize, height: usize, width: usize, channels: usize) -> Result<Nhwc> {
        for (name, v) in [
            ("batch", batch),
            ("height", height),
            ("width", width),
            ("channels", channels),
        ] {
            if v == 0 {
                return Err(Error::InvalidDescriptor(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        let len = checked_product("NHWC tensor", &[batch, height, width, channels])?;
        Ok(Nhwc {
            n: batch,
            h: height,
            w: width,
            c: channels,
            len,
        })
    }

    /// Batch size `N`.
    pub fn batch(&self) -> usize {
        self.n
    }
    /// Height `H`.
    pub fn height(&self) -> usize {
        self.h
    }
    /// Width `W`.
    pub fn width(&self) -> usize {
        self.w
    }
    /// Channels `C`.
    pub fn channels(&self) -> usize {
        self.c
    }
    /// Pixels per image, `H·W`.
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }
    /// Elements per image, `H·W·C`.
    pub fn sample_len(&self) -> usize {
        self.h * self.w * self.c
    }
    /// Elements of the whole tensor, `N·H·W·C`.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always `false`: a validated shape has at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Elements of the per-sample, per-channel tensor `[N][C]` (pooled output, gate).
    pub fn pooled_len(&self) -> usize {
        self.n * self.c
    }

    /// Rows (pixels) per work chunk: about 64 KiB of floats, fixed by the shape.
    pub(crate) fn rows_per_chunk(&self) -> usize {
        (16384 / self.c).clamp(1, self.pixels())
    }

    /// Work chunks per image.
    pub(crate) fn chunks_per_sample(&self) -> usize {
        self.pixels().div_ceil(self.rows_per_chunk())
    }

    /// Floats of per-chunk partial sums of a per-sample reduction (`N·chunks·C`).
    pub(crate) fn partials_len(&self) -> usize {
        self.n * self.chunks_per_sample() * self.c
    }
}

/// `row (+)= g` for every row of `m` (`g.len()` floats per row).
struct BroadcastRows<'a> {
    g: &'a [f32],
    m: &'a mut [f32],
    accumulate: bool,
}

impl SimdKernel for BroadcastRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let cols = self.g.len();
        if !self.accumulate {
            for row in self.m.chunks_exact_mut(cols) {
                row.copy_from_slice(self.g);
            }
            return;
        }
        for row in self.m.chunks_exact_mut(cols) {
            for (o, g) in row.chunks_mut(S::LANES).zip(self.g.chunks(S::LANES)) {
                let v = s.add(s.load_upto(o), s.load_upto(g));
                s.store_upto(o, v);
            }
        }
    }
}

/// Per-sample column sums of `x` (`[N][H·W][C]`) into `out` (`[N][C]`), each multiplied
/// by `scale`; deterministic (fixed chunks, reduced in order). `partials` holds
/// [`Nhwc::partials_len`] floats (any contents).
pub(crate) fn sample_column_sums(
    level: SimdLevel,
    shape: &Nhwc,
    x: &[f32],
    out: &mut [f32],
    scale: f32,
    partials: &mut [f32],
) {
    let c = shape.c;
    let rpc = shape.rows_per_chunk();
    let chunks = shape.chunks_per_sample();
    let slen = shape.sample_len();
    let partials = &mut partials[..shape.partials_len()];
    partials.par_chunks_mut(c).enumerate().for_each(|(t, p)| {
        let (n, j) = (t / chunks, t % chunks);
        let r0 = j * rpc;
        let r1 = (r0 + rpc).min(shape.pixels());
        let m = &x[n * slen + r0 * c..n * slen + r1 * c];
        p.fill(0.0);
        add_rows(level, m, p);
    });
    for (o, p) in out
        .chunks_exact_mut(c)
        .zip(partials.chunks_exact(chunks * c))
    {
        sum_rows(p, o);
        for o in o.iter_mut() {
            *o *= scale;
        }
    }
}

/// One pass of the global average pooling (for [`workspace_len`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PoolPass {
    /// [`global_avg_pool`].
    Forward,
    /// [`global_avg_pool_backward`].
    Backward,
}

/// The regions `pass` takes from its workspace: the per-chunk partial sums
/// (`N·chunks·C`) forward, the scaled gradient `dy/(H·W)` (`N·C`) backward.
fn layout(shape: &Nhwc, pass: PoolPass) -> WorkspaceLayout {
    let mut l = WorkspaceLayout::new(1);
    l.region(match pass {
        PoolPass::Forward => shape.partials_len(),
        PoolPass::Backward => shape.pooled_len(),
    });
    l
}

/// Floats (`f32` elements) of workspace `pass` needs for `shape` (the same for any
/// thread count and SIMD level).
pub fn workspace_len(shape: &Nhwc, pass: PoolPass) -> usize {
    layout(shape, pass).len()
}

/// Global average pool: `y[n, c] = mean_{h, w} x[n, h, w, c]`.
///
/// `x` is `[N][H][W][C]` (`shape.len()` floats), `y` is `[N][C]`
/// (`shape.pooled_len()` floats) and is overwritten. Allocates its workspace; see
/// [`global_avg_pool_with_workspace`].
///
/// # Errors
/// [`Error::BufferSize`] if a buffer has the wrong length.
pub fn global_avg_pool(shape: &Nhwc, x: &[f32], y: &mut [f32]) -> Result<()> {
    layout(shape, PoolPass::Forward)
        .try_with_reused(|ws| global_avg_pool_with_workspace(shape, x, y, ws))
}

/// [`global_avg_pool`] with its scratch in `ws`: at least
/// [`workspace_len`]`(shape, PoolPass::Forward)` floats, any contents (left
/// unspecified).
///
/// # Errors
/// [`Error::BufferSize`] if a buffer has the wrong length, then if `ws` is short
/// (naming `"workspace"`).
pub fn global_avg_pool_with_workspace(
    shape: &Nhwc,
    x: &[f32],
    y: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    check_len("x", x.len(), shape.len())?;
    check_len("y", y.len(), shape.pooled_len())?;
    let mut ws = Workspace::new(ws, &layout(shape, PoolPass::Forward))?;
    let partials = ws.take(shape.partials_len())?;
    let level = simd::active();
    sample_column_sums(level, shape, x, y, 1.0 / shape.pixels() as f32, partials);
    Ok(())
}

/// Backward of [`global_avg_pool`]: `dx[n, h, w, c] (+)= dy[n, c] / (H·W)`.
///
/// `dy` is `[N][C]`, `dx` is `[N][H][W][C]`; `dx` is overwritten or accumulated into
/// according to `mode` (accumulate when `x` also feeds another branch, as in
/// squeeze-and-excite). Allocates its workspace; see
/// [`global_avg_pool_backward_with_workspace`].
///
/// # Errors
/// [`Error::BufferSize`] if a buffer has the wrong length.
pub fn global_avg_pool_backward(
    shape: &Nhwc,
    dy: &[f32],
    dx: &mut [f32],
    mode: GradMode,
) -> Result<()> {
    layout(shape, PoolPass::Backward)
        .try_with_reused(|ws| global_avg_pool_backward_with_workspace(shape, dy, dx, mode, ws))
}

/// [`global_avg_pool_backward`] with its scratch in `ws` (at least
/// [`workspace_len`]`(shape, PoolPass::Backward)` floats; errors as
/// [`global_avg_pool_with_workspace`]).
pub fn global_avg_pool_backward_with_workspace(
    shape: &Nhwc,
    dy: &[f32],
    dx: &mut [f32],
    mode: GradMode,
    ws: &mut [f32],
) -> Result<()> {
    check_len("dy", dy.len(), shape.pooled_len())?;
    check_len("dx", dx.len(), shape.len())?;
    let mut ws = Workspace::new(ws, &layout(shape, PoolPass::Backward))?;
    let scaled = ws.take(shape.pooled_len())?;
    let level = simd::active();
    let c = shape.c;
    let inv = 1.0 / shape.pixels() as f32;
    for (g, v) in scaled.iter_mut().zip(dy) {
        *g = v * inv;
    }
    let chunk = shape.rows_per_chunk() * c;
    dx.par_chunks_mut(shape.sample_len())
        .zip(scaled.par_chunks(c))
        .for_each(|(dxs, g)| {
            dxs.par_chunks_mut(chunk).for_each(|m| {
                dispatch(
                    level,
                    BroadcastRows {
                        g,
                        m,
                        accumulate: mode.accumulate(),
                    },
                )
            });
        });
    Ok(())
}
