//! Pointwise (1×1) convolution: a matrix product over `batch·out_h·out_w` rows, strided 1×1 included.
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc): `x` is `[N][H][W][C_in]`, `y` is
//! `[N][OH][OW][C_out]`, the weight is `[C_in][C_out]`, the bias `[C_out]`. With
//! `M = N·OH·OW` output pixels and `X̃` the `M × C_in` matrix of the input pixels that
//! the outputs read (pixel `(oh·sh, ow·sw)` for output `(oh, ow)`; all of `x` at
//! stride 1):
//!
//! - forward: `Y = X̃·W (+ bias)`;
//! - backward-data: `dX̃ = dY·Wᵀ`, and zero at the input pixels no output reads;
//! - backward-weight: `dW = X̃ᵀ·dY`, `dbias = Σ_rows dY`, summed over fixed chunks of
//!   rows and reduced in chunk order, so the result is bitwise the same for any number
//!   of threads.
//!
//! All three run on the crate's register-tiled matrix product (`kernels::gemm`, internal).
//!
//! # Workspace
//! Each pass takes all its tensor-sized scratch from the caller's workspace
//! ([`Conv2d::workspace_len`](super::Conv2d::workspace_len) floats, see
//! [`crate::kernels::scratch`]): forward and
//! backward-data the packed weight (`C_in·C_out` rounded up to whole vectors);
//! backward-weight the gathered input pixels (`M·C_in`, strided only), the per-chunk
//! partial sums (at most 64 chunks of `C_in·C_out`, only when there is more than one
//! chunk), the transposed gradient (`C_in·C_out`, when the product runs transposed)
//! and the bias partial sums (at most 64 × `C_out`). The plain forms allocate exactly
//! that and call the workspace forms. What stays allocated inside: the list of column
//! panels of the product (`O(C / lanes)` small descriptors).

use super::pre::{self, Pre, PreRunArgs};
use super::{
    ConvPass, ConvShape, FamilyPlan, ForwardWeights, GradMode, bias_grad_in, bias_grad_scratch,
};
use crate::error::Result;
use crate::kernels::gemm::Post;
use crate::kernels::gemm::{BOperand, Gemm, PackedB, RowMap, padded_cols, scale_packed_rows};
use crate::kernels::parallel::{partials_len, reduce_chunks_in};
use crate::kernels::scratch::{PerWorker, Workspace, WorkspaceLayout};
use crate::simd::SimdLevel;
use rayon::prelude::*;
use std::ops::Range;

/// `M`, and the map from output rows to element offsets of input pixels in `x`.
fn input_rows(shape: &ConvShape) -> (usize, RowMap) {
    let d = &shape.desc;
    let m = d.batch * shape.out_h * shape.out_w;
    let ci = d.in_channels;
    let map = if d.stride_h == 1 && d.stride_w == 1 {
        RowMap::uniform(ci)
    } else {
        RowMap::grid(
            shape.out_w,
            shape.out_h,
            d.stride_w * ci,
            d.stride_h * d.in_w * ci,
            d.in_h * d.in_w * ci,
        )
    };
    (m, map)
}

fn strided(shape: &ConvShape) -> bool {
    shape.desc.stride_h != 1 || shape.desc.stride_w != 1
}

/// The regions a pass takes from its workspace, in order (see the module docs), in a
/// pool of `threads` threads; `staged`: the forward pass stages its input rows
/// ([`Plan::stage_input`]).
fn layout(
    level: SimdLevel,
    shape: &ConvShape,
    pass: ConvPass,
    staged: bool,
    threads: usize,
) -> WorkspaceLayout {
    let (ci, co) = (shape.desc.in_channels, shape.desc.out_channels);
    let mut l = WorkspaceLayout::new(threads);
    match pass {
        ConvPass::Forward => {
            l.region(PackedB::packed_len(level, ci, co));
            if staged {
                l.per_worker(stage_rows(shape) * ci);
            }
            &mut l
        }
        ConvPass::BackwardData => l.region(PackedB::packed_len(level, co, ci)),
        ConvPass::BackwardWeight => {
            let (m, _) = input_rows(shape);
            let chunk = grad_chunk(m, ci, co);
            l.region(if strided(shape) { m * ci } else { 0 })
                .region(if chunk < m {
                    partials_len(m, chunk, ci * co)
                } else {
                    0
                })
                .region(if swap(level, ci, co) { co * ci } else { 0 })
                .region(bias_grad_scratch(shape))
        }
    };
    l
}

/// The pointwise kernels planned for one shape and level: the product's orientations
/// and chunking are functions of the shape and level, derived when needed.
#[derive(Debug)]
pub(crate) struct Plan {
    shape: ConvShape,
    level: SimdLevel,
    /// Whether the forward pass stages its input rows through a prologue.
    staged: bool,
}

impl Plan {
    pub(crate) fn new(level: SimdLevel, shape: &ConvShape) -> Plan {
        Plan {
            shape: *shape,
            level,
            staged: false,
        }
    }
}

/// Most rows (pixels) of a staged block: about 32K floats of input (128 KiB, in L2
/// with the weight panels it meets), at least 24 rows (every tile height divides 24)
/// and one image row (a block gathering statistics covers whole image rows).
fn stage_rows(shape: &ConvShape) -> usize {
    let ci = shape.desc.in_channels.max(1);
    ((32768 / ci).clamp(24, 1536) / 24 * 24).max(shape.out_w)
}

impl FamilyPlan for Plan {
    /// No per-worker regions, unless the forward pass stages its input (see the
    /// module docs).
    fn layout(&self, pass: ConvPass, threads: usize) -> WorkspaceLayout {
        layout(self.level, &self.shape, pass, self.staged, threads)
    }

    fn stage_input(&mut self) {
        self.staged = true;
    }

    fn packed_len(&self) -> usize {
        let d = &self.shape.desc;
        PackedB::packed_len(self.level, d.in_channels, d.out_channels)
    }

    fn pack(&self, w: &[f32], out: &mut [f32]) {
        let (ci, co) = (self.shape.desc.in_channels, self.shape.desc.out_channels);
        PackedB::new_in(self.level, ci, co, w, co, 1, out);
    }

    fn scale_packed_inputs(&self, packed: &[f32], scale: &[f32], out: &mut [f32]) -> bool {
        let (ci, co) = (self.shape.desc.in_channels, self.shape.desc.out_channels);
        scale_packed_rows(self.level, (ci, co), packed, scale, out);
        true
    }

    fn forward(
        &self,
        x: &[f32],
        pre: Option<Pre<'_>>,
        w: ForwardWeights<'_>,
        bias: Option<&[f32]>,
        post: Post<'_>,
        y: &mut [f32],
        ws: &mut Workspace<'_>,
    ) -> Result<()> {
        let (level, shape) = (self.level, &self.shape);
        let (ci, co) = (shape.desc.in_channels, shape.desc.out_channels);
        let buf = ws.take(PackedB::packed_len(level, ci, co))?;
        let packed = match w {
            ForwardWeights::Plain(w) => PackedB::new_in(level, ci, co, w, co, 1, buf),
            // The product reads the packed weights directly; the region goes unused.
            ForwardWeights::Packed(p) => PackedB::from_packed(level, ci, co, p),
        };
        match pre {
            None => forward_with_packed(level, shape, x, &packed, bias, post, y),
            Some(pre) => {
                let slots = ws.per_worker(stage_rows(shape) * ci)?;
                forward_staged(level, shape, x, pre, &packed, bias, post, y, &slots);
            }
        }
        Ok(())
    }

    fn backward_data(
        &self,
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        ws: &mut Workspace<'_>,
    ) -> Result<()> {
        backward_data(self.level, &self.shape, dy, w, dx, ws)
    }

    fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
        ws: &mut Workspace<'_>,
    ) -> Result<()> {
        backward_weight(self.level, &self.shape, x, dy, dw, dbias, mode, ws)
    }
}

/// `y = x·B (+ bias)` with `B` packed.
fn forward_with_packed(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    packed: &PackedB<'_>,
    bias: Option<&[f32]>,
    post: Post<'_>,
    y: &mut [f32],
) {
    let (ci, co) = (shape.desc.in_channels, shape.desc.out_channels);
    let (m, a_rows) = input_rows(shape);
    Gemm {
        m,
        n: co,
        k: ci,
        a: x,
        a_rows,
        a_cs: 1,
        b: BOperand::Packed(packed),
        c_rows: RowMap::uniform(co),
        bias,
        accumulate: false,
        post,
    }
    .run(level, y);
}

/// `y = x'·B (+ bias)` with `x'` the prologue's transform of `x`: tasks of row blocks,
/// each staging its transformed input rows in its worker's slot of `slots` (L2-sized)
/// and running the product on them on its own thread. The same bits as the product
/// on a transformed copy of `x` (every element sums its terms in the same order).
#[allow(clippy::too_many_arguments)]
fn forward_staged(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    pre: Pre<'_>,
    packed: &PackedB<'_>,
    bias: Option<&[f32]>,
    post: Post<'_>,
    y: &mut [f32],
    slots: &PerWorker<'_>,
) {
    let (ci, co) = (shape.desc.in_channels, shape.desc.out_channels);
    let (m, a_rows) = input_rows(shape);
    let per_image = shape.out_h * shape.out_w;
    // Blocks of at most `stage_rows`, and small enough for 4 tasks per thread; whole
    // image rows when the block records statistics.
    let threads = rayon::current_num_threads();
    let mut rows = stage_rows(shape)
        .min(m.div_ceil(4 * threads).next_multiple_of(24))
        .max(24);
    if post.stats.is_some() {
        let ow = shape.out_w.max(1);
        rows = (rows / ow).max(1) * ow;
    }
    let run = pre::table(level).run;
    if m == 0 || co == 0 {
        return;
    }
    y.par_chunks_mut(rows * co).enumerate().for_each(|(i, yc)| {
        let (r0, nr) = (i * rows, yc.len() / co);
        slots.with(|buf| {
            // Runs of rows of one image: consecutive in `x` at stride 1 (one call
            // each), one row at a time when strided.
            let mut r = 0;
            while r < nr {
                let row = r0 + r;
                let px = if strided(shape) {
                    1
                } else {
                    (per_image - row % per_image).min(nr - r)
                };
                let o = a_rows.offset(row);
                let a = PreRunArgs {
                    pre: pre.image(row / per_image),
                    src: x[o..o + px * ci].as_ptr(),
                    src_step: ci,
                    dst: buf[r * ci..(r + px) * ci].as_mut_ptr(),
                    dst_step: ci,
                    px,
                    n: ci,
                };
                // SAFETY: `px` rows of `ci` floats at both (slices of that length: at
                // stride 1 the rows are consecutive in `x`), the rows' image's
                // coefficients checked (`N·C_in` each); the entry is from this
                // level's table.
                unsafe { run(&a) };
                r += px;
            }
            Gemm {
                m: nr,
                n: co,
                k: ci,
                a: &buf[..nr * ci],
                a_rows: RowMap::uniform(ci),
                a_cs: 1,
                b: BOperand::Packed(packed),
                c_rows: RowMap::uniform(co),
                bias,
                accumulate: false,
                post: Post {
                    residual: post.residual.map(|r| &r[r0 * co..(r0 + nr) * co]),
                    stats: None,
                    ..post
                },
            }
            .run_serial(level, yc);
            if let Some(st) = post.stats {
                let ow = shape.out_w;
                // SAFETY: this task just finished the block's rows (whole image rows,
                // `r0` and `nr` multiples of `ow`), which no other task records.
                unsafe { st.record(yc.as_ptr(), r0 / ow..(r0 + nr) / ow, 0..co) };
            }
        });
    });
}

/// `dx = convᵀ(dy, w)`; `dx` is overwritten (buffers and workspace checked).
///
/// `dy`: `[N][OH][OW][C_out]`, `w`: `[C_in][C_out]`, `dx`: `[N][H][W][C_in]`; with a
/// stride above 1 the input pixels that no output reads get zero.
fn backward_data(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let (ci, co) = (shape.desc.in_channels, shape.desc.out_channels);
    let (m, c_rows) = input_rows(shape);
    let buf = ws.take(PackedB::packed_len(level, co, ci))?;
    if strided(shape) {
        zero_unread_pixels(shape, dx);
    }
    // B = Wᵀ: element (p = co, j = ci) at w[ci·C_out + co].
    let packed = PackedB::new_in(level, co, ci, w, 1, co, buf);
    Gemm {
        m,
        n: ci,
        k: co,
        a: dy,
        a_rows: RowMap::uniform(co),
        a_cs: 1,
        b: BOperand::Packed(&packed),
        c_rows,
        bias: None,
        accumulate: false,
        post: Post::NONE,
    }
    .run(level, dx);
    Ok(())
}

/// Zeroes the pixels of `dx` that a strided 1×1 convolution does not read.
fn zero_unread_pixels(shape: &ConvShape, dx: &mut [f32]) {
    let d = &shape.desc;
    let ci = d.in_channels;
    let (sh, sw) = (d.stride_h, d.stride_w);
    dx.par_chunks_mut(d.in_w * ci)
        .enumerate()
        .for_each(|(row, line)| {
            let ih = row % d.in_h;
            let read_row = ih.is_multiple_of(sh) && ih / sh < shape.out_h;
            for (iw, px) in line.chunks_mut(ci).enumerate() {
                if !(read_row && iw.is_multiple_of(sw) && iw / sw < shape.out_w) {
                    px.fill(0.0);
                }
            }
        });
}

/// Rows per chunk of the weight-gradient reduction: depends on the shape only (never
/// on the thread count). At least 2048 rows (each chunk's partial sums cost a zeroing
/// and a reduction pass; the product inside a chunk is itself split into parallel
/// tiles), at most 64 chunks, and at most 4 Mi floats of partial sums in all.
fn grad_chunk(m: usize, ci: usize, co: usize) -> usize {
    const MIN_ROWS: usize = 2048;
    const MAX_CHUNKS: usize = 64;
    const MAX_PARTIAL: usize = 4 << 20;
    let by_mem = (MAX_PARTIAL / (ci * co).max(1)).clamp(1, MAX_CHUNKS);
    let chunks = m.div_ceil(MIN_ROWS).clamp(1, by_mem);
    m.div_ceil(chunks).max(1)
}

/// `dst[j][i] (+)= src[i][j]` for a row-major `rows × cols` `src`, in parallel over
/// blocks of `dst` rows.
fn transpose_into(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], accumulate: bool) {
    const T: usize = 32;
    dst.par_chunks_mut(T * rows)
        .enumerate()
        .for_each(|(jb, block)| {
            for i0 in (0..rows).step_by(T) {
                for (jj, d) in block.chunks_exact_mut(rows).enumerate() {
                    let j = jb * T + jj;
                    for i in i0..(i0 + T).min(rows) {
                        let v = src[i * cols + j];
                        d[i] = if accumulate { d[i] + v } else { v };
                    }
                }
            }
        });
}

/// Whether the weight gradient is computed transposed: the kernels vectorize the
/// columns of the product, `dW = X̃ᵀ·dY` has `C_out` columns, `dWᵀ = dYᵀ·X̃` has
/// `C_in`. Transposed when `C_out` wastes a quarter more lanes (24 output channels
/// against a multiple of 16 input channels); the result is transposed back.
fn swap(level: SimdLevel, ci: usize, co: usize) -> bool {
    4 * padded_cols(level, co) * ci > 5 * padded_cols(level, ci) * co
}

/// Weight (and bias) gradient, overwritten or accumulated per `mode` (buffers and
/// workspace checked).
///
/// `x`: `[N][H][W][C_in]`, `dy`: `[N][OH][OW][C_out]`, `dw`: `[C_in][C_out]`,
/// `dbias`: `[C_out]`. The sums over rows are cut into fixed chunks reduced in order:
/// bitwise identical results for any thread count.
#[allow(clippy::too_many_arguments)]
fn backward_weight(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let (ci, co) = (shape.desc.in_channels, shape.desc.out_channels);
    let (m, x_rows) = input_rows(shape);
    let chunk = grad_chunk(m, ci, co);
    let is_strided = strided(shape);
    let swap = swap(level, ci, co);
    // The regions, in the order of `layout`.
    let gathered = ws.take(if is_strided { m * ci } else { 0 })?;
    let partials = ws.take(if chunk < m {
        partials_len(m, chunk, ci * co)
    } else {
        0
    })?;
    let transposed = ws.take(if swap { co * ci } else { 0 })?;
    let bias_partials = ws.take(bias_grad_scratch(shape))?;
    // X̃: the input pixels the outputs read, contiguous (all of `x` at stride 1).
    let xt: &[f32] = if is_strided {
        gathered
            .par_chunks_mut(ci)
            .enumerate()
            .for_each(|(r, out)| {
                let o = x_rows.offset(r);
                out.copy_from_slice(&x[o..o + ci]);
            });
        gathered
    } else {
        x
    };
    // dW (or dWᵀ) (+)= over rows `rows`, written into `out`.
    let chunk_product = |rows: Range<usize>, out: &mut [f32], accumulate: bool| {
        let len = rows.len();
        let xs = &xt[rows.start * ci..rows.end * ci];
        let dys = &dy[rows.start * co..rows.end * co];
        // A = (one operand)ᵀ: element (i, p) at a[p·width + i]; B = the other's rows.
        let (m, n, a, b) = if swap {
            (co, ci, dys, xs)
        } else {
            (ci, co, xs, dys)
        };
        Gemm {
            m,
            n,
            k: len,
            a,
            a_rows: RowMap::uniform(1),
            a_cs: m,
            b: BOperand::Rows { data: b, rs: n },
            c_rows: RowMap::uniform(n),
            bias: None,
            accumulate,
            post: Post::NONE,
        }
        .run(level, out);
    };
    {
        let (out, accumulate): (&mut [f32], bool) = if swap {
            (&mut *transposed, false)
        } else {
            (&mut *dw, mode.accumulate())
        };
        if chunk >= m {
            // One chunk: no partial buffer.
            chunk_product(0..m, out, accumulate);
        } else {
            reduce_chunks_in(m, chunk, out, accumulate, partials, |rows, part| {
                chunk_product(rows, part, true)
            });
        }
    }
    if swap {
        transpose_into(transposed, co, ci, dw, mode.accumulate());
    }
    if let Some(db) = dbias {
        bias_grad_in(level, shape, dy, db, mode, bias_partials);
    }
    Ok(())
}
