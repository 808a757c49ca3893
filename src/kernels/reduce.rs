//! Column sums of row-major matrices: bias gradients and per-channel statistics.

use super::parallel::{chunk_len, partials_len, reduce_chunks_in};
use crate::simd::{Simd, SimdKernel, SimdLevel, dispatch};

/// Adds the `rows × cols` row-major matrix `m`'s rows into `acc` (`acc[c] += Σ_r m[r][c]`).
struct AddRows<'a> {
    m: &'a [f32],
    cols: usize,
    acc: &'a mut [f32],
}

impl SimdKernel for AddRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let cols = self.cols;
        let mut c0 = 0;
        while c0 < cols {
            let width = (cols - c0).min(4 * S::LANES);
            let mut a = [s.zero(); 4];
            for row in self.m.chunks_exact(cols) {
                let row = &row[c0..c0 + width];
                for (v, a) in row.chunks(S::LANES).zip(a.iter_mut()) {
                    *a = s.add(*a, s.load_upto(v));
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

/// `acc[c] += Σ_r m[r·cols + c]` with `cols = acc.len()`, on one thread (the building
/// block of [`column_sums`] and of per-sample sums).
pub(crate) fn add_rows(level: SimdLevel, m: &[f32], acc: &mut [f32]) {
    let cols = acc.len();
    if cols > 0 {
        dispatch(level, AddRows { m, cols, acc });
    }
}

/// `out[c] (+)= Σ_r m[r·cols + c]` for a row-major `rows × cols` matrix, deterministic
/// for any thread count. `m.len()` must be a multiple of `cols` (= `out.len()`).
pub fn column_sums(level: SimdLevel, m: &[f32], out: &mut [f32], accumulate: bool) {
    let mut partials = vec![0.0f32; column_sums_scratch(m.len(), out.len())];
    column_sums_in(level, m, out, accumulate, &mut partials);
}

/// Rows per chunk of [`column_sums`] (a function of the shape only).
fn column_chunk(rows: usize, cols: usize) -> usize {
    chunk_len(rows, (16384 / cols.max(1)).max(1), 64)
}

/// Floats of partial sums [`column_sums_in`] needs for an `m_len`-element matrix of
/// `cols` columns (at most 64 chunks of `cols`).
pub fn column_sums_scratch(m_len: usize, cols: usize) -> usize {
    if cols == 0 {
        return 0;
    }
    let rows = m_len / cols;
    partials_len(rows, column_chunk(rows, cols), cols)
}

/// [`column_sums`] with its partial sums in `partials` (at least
/// [`column_sums_scratch`] floats, any contents).
pub fn column_sums_in(
    level: SimdLevel,
    m: &[f32],
    out: &mut [f32],
    accumulate: bool,
    partials: &mut [f32],
) {
    let cols = out.len();
    if cols == 0 {
        return;
    }
    debug_assert!(m.len().is_multiple_of(cols));
    let rows = m.len() / cols;
    let chunk = column_chunk(rows, cols);
    reduce_chunks_in(rows, chunk, out, accumulate, partials, |r, part| {
        add_rows(level, &m[r.start * cols..r.end * cols], part)
    });
}

/// `out = Σ_i rows[i]` over the consecutive `out.len()`-element rows of `rows`, added
/// in row order starting from zero (the fixed-order reduction of per-chunk partial
/// sums; `f32` or `f64`). `rows.len()` must be a multiple of `out.len()`.
pub fn sum_rows<T: Copy + Default + std::ops::AddAssign>(rows: &[T], out: &mut [T]) {
    out.fill(T::default());
    if out.is_empty() {
        return;
    }
    debug_assert!(rows.len().is_multiple_of(out.len()));
    for row in rows.chunks_exact(out.len()) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += *v;
        }
    }
}
