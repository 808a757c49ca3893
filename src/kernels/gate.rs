//! The squeeze-and-excite channel gate: every channel of every image multiplied by its
//! own factor.
//!
//! Layouts: `x`, `y`, `dy`, `dx` are NHWC, `[batch][height][width][channels]`
//! (channels fastest); `gate` and `dgate` are `[batch][channels]`.
//!
//! Forward: `y[n, h, w, c] = x[n, h, w, c] · gate[n, c]`.
//! Backward: `dx[n, h, w, c] = dy[n, h, w, c] · gate[n, c]` and
//! `dgate[n, c] = Σ_{h, w} dy[n, h, w, c] · x[n, h, w, c]`, in one pass over `dy` and
//! `x`. The gate gradient is summed over fixed chunks of pixels reduced in order, so it
//! is bitwise identical for any thread count.
//!
//! The backward pass also exists as [`backward_with_workspace`], taking its per-chunk
//! partial sums (`N·chunks·C` floats, [`backward_workspace_len`]) from the caller;
//! [`backward`] calls it on a buffer of that size the calling thread keeps between
//! calls. Allocates on the workspace path:
//! nothing.
//!
//! ```
//! use effnet::kernels::{gate, pool::Nhwc};
//! let shape = Nhwc::new(1, 2, 2, 3).unwrap();
//! let x = vec![2.0f32; shape.len()];
//! let g = vec![0.5f32, 1.0, 2.0];
//! let mut y = vec![0.0f32; shape.len()];
//! gate::forward(&shape, &x, &g, &mut y).unwrap();
//! assert_eq!(&y[..3], &[1.0, 2.0, 4.0]);
//! let (mut dx, mut dg) = (vec![0.0f32; shape.len()], vec![0.0f32; 3]);
//! gate::backward(&shape, &y, &x, &g, &mut dx, &mut dg).unwrap();
//! assert_eq!(dg, vec![8.0, 16.0, 32.0]); // Σ over 4 pixels of y·x
//! assert_eq!(&dx[..3], &[0.5, 2.0, 8.0]);
//! ```

use super::pool::Nhwc;
use crate::error::{Result, check_len};
use crate::kernels::reduce::sum_rows;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::{self, Simd, SimdKernel, dispatch};
use rayon::prelude::*;

/// `out[r][c] = inp[r][c] · g[c]` for every row; in place (`out *= g`) when `inp` is
/// `None`.
struct ScaleRows<'a> {
    inp: Option<&'a [f32]>,
    out: &'a mut [f32],
    g: &'a [f32],
}

impl SimdKernel for ScaleRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let cols = self.g.len();
        match self.inp {
            Some(inp) => {
                for (o, i) in self.out.chunks_exact_mut(cols).zip(inp.chunks_exact(cols)) {
                    for ((o, i), g) in o
                        .chunks_mut(S::LANES)
                        .zip(i.chunks(S::LANES))
                        .zip(self.g.chunks(S::LANES))
                    {
                        s.store_upto(o, s.mul(s.load_upto(i), s.load_upto(g)));
                    }
                }
            }
            None => {
                for o in self.out.chunks_exact_mut(cols) {
                    for (o, g) in o.chunks_mut(S::LANES).zip(self.g.chunks(S::LANES)) {
                        let v = s.mul(s.load_upto(o), s.load_upto(g));
                        s.store_upto(o, v);
                    }
                }
            }
        }
    }
}

/// Gate backward on a block of rows: `dx = dy·g`, `acc += Σ_rows dy·x`.
struct GateBackRows<'a> {
    dy: &'a [f32],
    x: &'a [f32],
    g: &'a [f32],
    dx: &'a mut [f32],
    acc: &'a mut [f32],
}

impl SimdKernel for GateBackRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let cols = self.g.len();
        let mut c0 = 0;
        while c0 < cols {
            let width = (cols - c0).min(4 * S::LANES);
            let g = &self.g[c0..c0 + width];
            let mut gv = [s.zero(); 4];
            for (v, gc) in gv.iter_mut().zip(g.chunks(S::LANES)) {
                *v = s.load_upto(gc);
            }
            let mut a = [s.zero(); 4];
            for ((dyr, xr), dxr) in self
                .dy
                .chunks_exact(cols)
                .zip(self.x.chunks_exact(cols))
                .zip(self.dx.chunks_exact_mut(cols))
            {
                let dyr = &dyr[c0..c0 + width];
                let xr = &xr[c0..c0 + width];
                let dxr = &mut dxr[c0..c0 + width];
                for (k, ((d, x), o)) in dyr
                    .chunks(S::LANES)
                    .zip(xr.chunks(S::LANES))
                    .zip(dxr.chunks_mut(S::LANES))
                    .enumerate()
                {
                    let d = s.load_upto(d);
                    a[k] = s.mul_add(d, s.load_upto(x), a[k]);
                    s.store_upto(o, s.mul(d, gv[k]));
                }
            }
            let out = &mut self.acc[c0..c0 + width];
            for (o, a) in out.chunks_mut(S::LANES).zip(a) {
                let prev = s.load_upto(o);
                s.store_upto(o, s.add(prev, a));
            }
            c0 += width;
        }
    }
}

fn check_gate(shape: &Nhwc, gate: &[f32]) -> Result<()> {
    check_len("gate", gate.len(), shape.pooled_len())
}

/// `y[n, h, w, c] = x[n, h, w, c] · gate[n, c]`; `y` is overwritten.
///
/// `x`, `y`: `[N][H][W][C]`; `gate`: `[N][C]`.
///
/// # Errors
/// [`crate::Error::BufferSize`] if a buffer has the wrong length.
pub fn forward(shape: &Nhwc, x: &[f32], gate: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("x", x.len(), shape.len())?;
    check_gate(shape, gate)?;
    check_len("y", y.len(), shape.len())?;
    run_scale(shape, Some(x), gate, y);
    Ok(())
}

/// In-place [`forward`]: `x[n, h, w, c] *= gate[n, c]`.
///
/// # Errors
/// [`crate::Error::BufferSize`] if a buffer has the wrong length.
pub fn forward_inplace(shape: &Nhwc, x: &mut [f32], gate: &[f32]) -> Result<()> {
    check_len("x", x.len(), shape.len())?;
    check_gate(shape, gate)?;
    run_scale(shape, None, gate, x);
    Ok(())
}

fn run_scale(shape: &Nhwc, x: Option<&[f32]>, gate: &[f32], y: &mut [f32]) {
    let level = simd::active();
    let c = shape.channels();
    let slen = shape.sample_len();
    let chunk = shape.rows_per_chunk() * c;
    y.par_chunks_mut(slen).enumerate().for_each(|(n, ys)| {
        let g = &gate[n * c..(n + 1) * c];
        ys.par_chunks_mut(chunk).enumerate().for_each(|(j, out)| {
            let start = n * slen + j * chunk;
            let inp = x.map(|x| &x[start..start + out.len()]);
            dispatch(level, ScaleRows { inp, out, g });
        });
    });
}

/// The regions [`backward_with_workspace`] takes: the per-chunk partial gate
/// gradients (`N·chunks·C`).
fn backward_layout(shape: &Nhwc) -> WorkspaceLayout {
    let mut l = WorkspaceLayout::new(1);
    l.region(shape.partials_len());
    l
}

/// Floats (`f32` elements) of workspace [`backward_with_workspace`] needs for `shape`
/// (the same for any thread count and SIMD level). The forward passes need none.
pub fn backward_workspace_len(shape: &Nhwc) -> usize {
    backward_layout(shape).len()
}

/// Backward of [`forward`] for both inputs:
/// `dx = dy · gate[n, c]` (overwritten) and `dgate[n, c] = Σ_{h, w} dy · x`
/// (overwritten).
///
/// `dy`, `x`, `dx`: `[N][H][W][C]`; `gate`, `dgate`: `[N][C]`. Allocates its
/// workspace; see [`backward_with_workspace`].
///
/// # Errors
/// [`crate::Error::BufferSize`] if a buffer has the wrong length.
pub fn backward(
    shape: &Nhwc,
    dy: &[f32],
    x: &[f32],
    gate: &[f32],
    dx: &mut [f32],
    dgate: &mut [f32],
) -> Result<()> {
    backward_layout(shape)
        .try_with_reused(|ws| backward_with_workspace(shape, dy, x, gate, dx, dgate, ws))
}

/// [`backward`] with its scratch in `ws`: at least [`backward_workspace_len`]`(shape)`
/// floats, any contents (left unspecified).
///
/// # Errors
/// [`crate::Error::BufferSize`] if a buffer has the wrong length, then if `ws` is
/// short (naming `"workspace"`).
pub fn backward_with_workspace(
    shape: &Nhwc,
    dy: &[f32],
    x: &[f32],
    gate: &[f32],
    dx: &mut [f32],
    dgate: &mut [f32],
    ws: &mut [f32],
) -> Result<()> {
    check_len("dy", dy.len(), shape.len())?;
    check_len("x", x.len(), shape.len())?;
    check_gate(shape, gate)?;
    check_len("dx", dx.len(), shape.len())?;
    check_len("dgate", dgate.len(), shape.pooled_len())?;
    let mut ws = Workspace::new(ws, &backward_layout(shape))?;
    let partials = ws.take(shape.partials_len())?;
    let level = simd::active();
    let c = shape.channels();
    let slen = shape.sample_len();
    let rpc = shape.rows_per_chunk();
    let chunks = shape.chunks_per_sample();
    // Task t = n·chunks + j owns rows j·rpc.. of image n: its slice of dx and its
    // partial gate gradient.
    dx.par_chunks_mut(slen)
        .zip(partials.par_chunks_mut(chunks * c))
        .enumerate()
        .for_each(|(n, (dxs, ps))| {
            let g = &gate[n * c..(n + 1) * c];
            dxs.par_chunks_mut(rpc * c)
                .zip(ps.par_chunks_mut(c))
                .enumerate()
                .for_each(|(j, (dxr, acc))| {
                    let start = n * slen + j * rpc * c;
                    let end = start + dxr.len();
                    acc.fill(0.0);
                    dispatch(
                        level,
                        GateBackRows {
                            dy: &dy[start..end],
                            x: &x[start..end],
                            g,
                            dx: dxr,
                            acc,
                        },
                    );
                });
        });
    for (o, p) in dgate
        .chunks_exact_mut(c)
        .zip(partials.chunks_exact(chunks * c))
    {
        sum_rows(p, o);
    }
    Ok(())
}
