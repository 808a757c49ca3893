//! Fully-connected layers: the two 1×1 convolutions of squeeze-and-excite (on pooled
//! `[N][C]` features) and the classifier of the head.
//!
//! Layouts (row-major): input `x` is `[rows][in]`, weight `w` is `[in][out]` (the
//! layout of a 1×1 convolution's `[1][1][C_in][C_out]` weight), bias `b` is `[out]`,
//! output `y` is `[rows][out]`:
//!
//! `y = x·W + b`, `dx = dy·Wᵀ`, `dW = xᵀ·dy`, `db = Σ_rows dy`.
//!
//! A PyTorch `nn.Linear` weight is `[out][in]`: transpose it at import.
//!
//! All three passes run on one internal matrix product (the private `matmul`), kept in
//! one function so that it can be replaced by the crate's shared GEMM. Each output
//! element is accumulated by one task in a fixed order, so results are bitwise
//! identical for any thread count.
//!
//! ```
//! use effnet::kernels::fully_connected::FullyConnected;
//! use effnet::kernels::conv::GradMode;
//! let fc = FullyConnected::new(2, 3, 2).unwrap();
//! let x = [1.0f32, 2.0, 3.0, 0.0, 1.0, 0.0];
//! let w = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]; // [3][2]
//! let b = [0.5f32, -0.5];
//! let mut y = [0.0f32; 4];
//! fc.forward(&x, &w, Some(&b), &mut y).unwrap();
//! assert_eq!(y, [4.5, 4.5, 0.5, 0.5]);
//! let mut dx = [0.0f32; 6];
//! fc.backward_data(&y, &w, &mut dx).unwrap();
//! let (mut dw, mut db) = ([0.0f32; 6], [0.0f32; 2]);
//! fc.backward_weight(&x, &y, &mut dw, Some(&mut db), GradMode::Overwrite).unwrap();
//! assert_eq!(db, [5.0, 5.0]);
//! ```

use super::conv::GradMode;
use super::reduce::column_sums;
use crate::error::{Error, Result, check_len, checked_product};
use crate::simd::{self, Simd, SimdKernel, SimdLevel, dispatch};
use rayon::prelude::*;

/// A validated fully-connected layer: `rows` input vectors of `in_features` to
/// `out_features`. Buffer layouts are in the [module docs](self).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FullyConnected {
    rows: usize,
    inp: usize,
    out: usize,
}

impl FullyConnected {
    /// Validates the sizes: `rows` (the batch, or `N·H·W` for a 1×1 convolution),
    /// `in_features`, `out_features`.
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] for a zero size, [`Error::Overflow`] if a buffer
    /// would not fit in memory.
    pub fn new(rows: usize, in_features: usize, out_features: usize) -> Result<Self> {
        for (name, v) in [
            ("rows", rows),
            ("in_features", in_features),
            ("out_features", out_features),
        ] {
            if v == 0 {
                return Err(Error::InvalidDescriptor(format!(
                    "fully connected: {name} must be at least 1"
                )));
            }
        }
        checked_product("fully connected input", &[rows, in_features])?;
        checked_product("fully connected output", &[rows, out_features])?;
        checked_product("fully connected weight", &[in_features, out_features])?;
        Ok(FullyConnected {
            rows,
            inp: in_features,
            out: out_features,
        })
    }

    /// Rows (input vectors).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.inp
    }
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out
    }
    /// Elements of `x` / `dx`: `rows·in`.
    pub fn x_len(&self) -> usize {
        self.rows * self.inp
    }
    /// Elements of `y` / `dy`: `rows·out`.
    pub fn y_len(&self) -> usize {
        self.rows * self.out
    }
    /// Elements of `w` / `dw`: `in·out`.
    pub fn w_len(&self) -> usize {
        self.inp * self.out
    }

    /// `y = x·W (+ b)`; `y` (`[rows][out]`) is overwritten.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if a buffer has the wrong length.
    pub fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("weight", w.len(), self.w_len())?;
        if let Some(b) = bias {
            check_len("bias", b.len(), self.out)?;
        }
        check_len("y", y.len(), self.y_len())?;
        let level = simd::active();
        if let Some(b) = bias {
            for row in y.chunks_exact_mut(self.out) {
                row.copy_from_slice(b);
            }
        }
        matmul(
            level,
            self.rows,
            self.inp,
            self.out,
            (x, Op::N),
            (w, Op::N),
            y,
            bias.is_some(),
        );
        Ok(())
    }

    /// `dx = dy·Wᵀ`; `dx` (`[rows][in]`) is overwritten.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if a buffer has the wrong length.
    pub fn backward_data(&self, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
        check_len("dy", dy.len(), self.y_len())?;
        check_len("weight", w.len(), self.w_len())?;
        check_len("dx", dx.len(), self.x_len())?;
        let level = simd::active();
        matmul(
            level,
            self.rows,
            self.out,
            self.inp,
            (dy, Op::N),
            (w, Op::T),
            dx,
            false,
        );
        Ok(())
    }

    /// `dW (+)= xᵀ·dy` (`[in][out]`) and, if given, `db (+)= Σ_rows dy` (`[out]`),
    /// overwritten or accumulated according to `mode`.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if a buffer has the wrong length.
    pub fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("dy", dy.len(), self.y_len())?;
        check_len("dweight", dw.len(), self.w_len())?;
        if let Some(db) = &dbias {
            check_len("dbias", db.len(), self.out)?;
        }
        let level = simd::active();
        matmul(
            level,
            self.inp,
            self.rows,
            self.out,
            (x, Op::T),
            (dy, Op::N),
            dw,
            mode.accumulate(),
        );
        if let Some(db) = dbias {
            column_sums(level, dy, db, mode.accumulate());
        }
        Ok(())
    }
}

/// How a matrix operand of [`matmul`] is stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Op {
    /// As is: an `r × c` operand stored `[r][c]`.
    N,
    /// Transposed: an `r × c` operand stored `[c][r]`.
    T,
}

/// The row-major transpose of an `r × c` matrix (`c × r`).
fn transpose(a: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; r * c];
    const B: usize = 32;
    for i0 in (0..r).step_by(B) {
        for j0 in (0..c).step_by(B) {
            for i in i0..(i0 + B).min(r) {
                for j in j0..(j0 + B).min(c) {
                    t[j * r + i] = a[i * c + j];
                }
            }
        }
    }
    t
}

/// Rows of `C` per micro-tile.
const MR: usize = 4;
/// Rows of `C` per parallel task.
const TASK_ROWS: usize = 32;
/// Columns of `C` per parallel task (when rows alone give too few tasks).
const TASK_COLS: usize = 128;
/// Row blocks from which tasks are whole row blocks written in place.
const MIN_ROW_TASKS: usize = 4;

/// `C = op(A)·op(B)` (or `C += …` when `accumulate`) with `op(A)` `m × k`, `op(B)`
/// `k × n`, `C` `[m][n]` row-major; each operand is stored as is ([`Op::N`]: `A`
/// `[m][k]`, `B` `[k][n]`) or transposed ([`Op::T`]: `A` `[k][m]`, `B` `[n][k]`).
///
/// The only matrix product of this module: swap it for the shared GEMM when it lands.
/// Tasks are fixed tiles of `C`: whole blocks of [`TASK_ROWS`] rows written in place
/// when there are enough of them, otherwise `TASK_ROWS × TASK_COLS` tiles computed
/// into buffers and copied back. Either way each element is accumulated over `k` in a
/// fixed order by one task, so the result does not depend on the thread count.
#[allow(clippy::too_many_arguments)]
fn matmul(
    level: SimdLevel,
    m: usize,
    k: usize,
    n: usize,
    (a, ta): (&[f32], Op),
    (b, tb): (&[f32], Op),
    c: &mut [f32],
    accumulate: bool,
) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    debug_assert_eq!(c.len(), m * n);
    if ta == Op::T && tb == Op::T {
        // Not used by this module; keep the function total.
        let at = transpose(a, k, m);
        return matmul(level, m, k, n, (&at, Op::N), (b, tb), c, accumulate);
    }
    // Element (i, p) of op(A) is a[i·a_rs + p·a_cs].
    let (a_rs, a_cs) = match ta {
        Op::N => (k, 1),
        Op::T => (1, m),
    };
    let run = |i0: usize, j0: usize, w: usize, c: &mut [f32], ldc: usize, cj0: usize| {
        let tile = Tile {
            a,
            a_rs,
            a_cs,
            i0,
            b,
            j0,
            k,
            n,
            c,
            ldc,
            cj0,
            w,
            accumulate,
        };
        match tb {
            Op::N => dispatch(level, TileNN(tile)),
            Op::T => dispatch(level, TileNT(tile)),
        }
    };
    let row_tiles = m.div_ceil(TASK_ROWS);
    if row_tiles >= MIN_ROW_TASKS {
        c.par_chunks_mut(TASK_ROWS * n)
            .enumerate()
            .for_each(|(rt, block)| {
                for j0 in (0..n).step_by(TASK_COLS) {
                    let w = TASK_COLS.min(n - j0);
                    run(rt * TASK_ROWS, j0, w, block, n, j0);
                }
            });
        return;
    }
    let col_tiles = n.div_ceil(TASK_COLS);
    let tile = |t: usize| {
        let (rt, ct) = (t / col_tiles, t % col_tiles);
        let (i0, j0) = (rt * TASK_ROWS, ct * TASK_COLS);
        (i0, (i0 + TASK_ROWS).min(m), j0, (j0 + TASK_COLS).min(n))
    };
    let c_ro: &[f32] = c;
    let tiles: Vec<Vec<f32>> = (0..row_tiles * col_tiles)
        .into_par_iter()
        .map(|t| {
            let (i0, i1, j0, j1) = tile(t);
            let w = j1 - j0;
            let mut out = if accumulate {
                let mut out = Vec::with_capacity((i1 - i0) * w);
                for i in i0..i1 {
                    out.extend_from_slice(&c_ro[i * n + j0..i * n + j1]);
                }
                out
            } else {
                vec![0.0; (i1 - i0) * w]
            };
            run(i0, j0, w, &mut out, w, 0);
            out
        })
        .collect();
    for (t, out) in tiles.iter().enumerate() {
        let (i0, i1, j0, j1) = tile(t);
        for (i, row) in (i0..i1).zip(out.chunks_exact(j1 - j0)) {
            c[i * n + j0..i * n + j1].copy_from_slice(row);
        }
    }
}

/// One tile of [`matmul`]: rows `i0..i0 + c.len()/ldc` and columns `j0..j0+w` of `C`,
/// stored in `c` with row stride `ldc` starting at column `cj0`; `a` and `b` are the
/// whole operands.
struct Tile<'a> {
    a: &'a [f32],
    a_rs: usize,
    a_cs: usize,
    i0: usize,
    b: &'a [f32],
    j0: usize,
    k: usize,
    n: usize,
    c: &'a mut [f32],
    ldc: usize,
    cj0: usize,
    w: usize,
    accumulate: bool,
}

/// A tile with `B` stored `[k][n]`: rank-1 updates, `A`'s elements broadcast.
struct TileNN<'a>(Tile<'a>);

impl SimdKernel for TileNN<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let t = self.0;
        let rows = t.c.len() / t.ldc;
        let mut i = 0;
        while i < rows {
            let mr = (rows - i).min(MR);
            let mut j = 0;
            while j < t.w {
                let nw = (t.w - j).min(2 * S::LANES);
                if mr == MR {
                    let acc = micro_nn::<S, MR>(s, &t, t.i0 + i, t.j0 + j, nw);
                    store_c(s, &mut *t.c, t.ldc, i, t.cj0 + j, nw, t.accumulate, acc);
                } else {
                    for r in i..i + mr {
                        let acc = micro_nn::<S, 1>(s, &t, t.i0 + r, t.j0 + j, nw);
                        store_c(s, &mut *t.c, t.ldc, r, t.cj0 + j, nw, t.accumulate, acc);
                    }
                }
                j += nw;
            }
            i += mr;
        }
    }
}

/// The sums `op(A)[i..i+R][..] · B[..][j..j+nw]` for `nw <= 2·LANES` (global row `i`
/// and column `j`), as `R` pairs of vectors (columns `j..j+LANES`, `j+LANES..j+nw`).
#[inline(always)]
fn micro_nn<S: Simd, const R: usize>(
    s: S,
    t: &Tile<'_>,
    i: usize,
    j: usize,
    nw: usize,
) -> ([S::V; R], [S::V; R]) {
    let (k, n, b) = (t.k, t.n, t.b);
    let w0 = nw.min(S::LANES);
    let w1 = nw - w0;
    assert!(j + nw <= n && b.len() == k * n);
    assert!(k == 0 || (i + R - 1) * t.a_rs + (k - 1) * t.a_cs < t.a.len());
    let mut acc0 = [s.zero(); R];
    let mut acc1 = [s.zero(); R];
    let full = w1 == S::LANES;
    for p in 0..k {
        // SAFETY: `p·n + j + nw <= k·n = b.len()` (asserted above); full vectors only
        // when `nw == 2·LANES`, partial loads read exactly `w0` and `w1` floats.
        let (b0, b1) = unsafe {
            let ptr = b.as_ptr().add(p * n + j);
            if full {
                (s.load_ptr(ptr), s.load_ptr(ptr.add(S::LANES)))
            } else {
                let b0 = if w0 == S::LANES {
                    s.load_ptr(ptr)
                } else {
                    s.load_partial_ptr(ptr, w0)
                };
                (b0, s.load_partial_ptr(ptr.add(S::LANES), w1))
            }
        };
        for r in 0..R {
            let av = s.splat(t.a[(i + r) * t.a_rs + p * t.a_cs]);
            acc0[r] = s.mul_add(av, b0, acc0[r]);
            acc1[r] = s.mul_add(av, b1, acc1[r]);
        }
    }
    (acc0, acc1)
}

/// `c[i+r][j..j+nw] (+)= acc[r]` (`c` has row stride `ldc`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn store_c<S: Simd, const R: usize>(
    s: S,
    c: &mut [f32],
    ldc: usize,
    i: usize,
    j: usize,
    nw: usize,
    accumulate: bool,
    (acc0, acc1): ([S::V; R], [S::V; R]),
) {
    let w0 = nw.min(S::LANES);
    for r in 0..R {
        let row = &mut c[(i + r) * ldc + j..(i + r) * ldc + j + nw];
        let (o0, o1) = row.split_at_mut(w0);
        if accumulate {
            let v0 = s.add(s.load_upto(o0), acc0[r]);
            s.store_upto(o0, v0);
            if !o1.is_empty() {
                let v1 = s.add(s.load_upto(o1), acc1[r]);
                s.store_upto(o1, v1);
            }
        } else {
            s.store_upto(o0, acc0[r]);
            if !o1.is_empty() {
                s.store_upto(o1, acc1[r]);
            }
        }
    }
}

/// Columns of `C` per dot-product micro-tile (rows of `B` stored `[n][k]`).
const NR_DOT: usize = 2;

/// A tile with `B` stored `[n][k]` (and `A` `[m][k]`): dot products of contiguous rows,
/// `MR × NR_DOT` vector accumulators reduced at the end.
struct TileNT<'a>(Tile<'a>);

impl SimdKernel for TileNT<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let t = self.0;
        debug_assert_eq!(t.a_cs, 1);
        let rows = t.c.len() / t.ldc;
        let put = |c: &mut f32, d: f32| {
            if t.accumulate {
                *c += d;
            } else {
                *c = d;
            }
        };
        let mut i = 0;
        while i < rows {
            let mr = (rows - i).min(MR);
            let mut j = 0;
            while j < t.w {
                let nr = (t.w - j).min(NR_DOT);
                if mr == MR && nr == NR_DOT {
                    let d = micro_nt::<S, MR, NR_DOT>(s, &t, t.i0 + i, t.j0 + j);
                    for (r, d) in d.iter().enumerate() {
                        for (q, d) in d.iter().enumerate() {
                            put(&mut t.c[(i + r) * t.ldc + t.cj0 + j + q], *d);
                        }
                    }
                } else {
                    for r in i..i + mr {
                        for q in j..j + nr {
                            let d = micro_nt::<S, 1, 1>(s, &t, t.i0 + r, t.j0 + q);
                            put(&mut t.c[r * t.ldc + t.cj0 + q], d[0][0]);
                        }
                    }
                }
                j += nr;
            }
            i += mr;
        }
    }
}

/// `Σ_p A[i+r][p] · B[j+q][p]` for `r < R`, `q < Q` (global row `i`, column `j`).
#[inline(always)]
fn micro_nt<S: Simd, const R: usize, const Q: usize>(
    s: S,
    t: &Tile<'_>,
    i: usize,
    j: usize,
) -> [[f32; Q]; R] {
    let k = t.k;
    let arows: [&[f32]; R] = std::array::from_fn(|r| &t.a[(i + r) * k..(i + r + 1) * k]);
    let brows: [&[f32]; Q] = std::array::from_fn(|q| &t.b[(j + q) * k..(j + q + 1) * k]);
    let mut acc = [[s.zero(); Q]; R];
    let mut p = 0;
    while p < k {
        let len = (k - p).min(S::LANES);
        let bv: [S::V; Q] = std::array::from_fn(|q| s.load_upto(&brows[q][p..p + len]));
        for r in 0..R {
            let av = s.load_upto(&arows[r][p..p + len]);
            for q in 0..Q {
                acc[r][q] = s.mul_add(av, bv[q], acc[r][q]);
            }
        }
        p += len;
    }
    let mut out = [[0.0f32; Q]; R];
    for r in 0..R {
        for q in 0..Q {
            out[r][q] = s.reduce_sum(acc[r][q]);
        }
    }
    out
}
