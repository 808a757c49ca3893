//! Column sums of row-major matrices: bias gradients and per-channel statistics.

use std::ops::Range;

use super::parallel::{chunk_len, partials_len, reduce_chunks_in};
use crate::simd::{Simd, SimdKernel, SimdLevel, dispatch, load_n};

/// Adds `rows` rows at `m` (`stride` floats apart, each read for its first `cols =
/// sums.len()` floats) into `sums` (`sums[c] += Σ_r m[r·stride + c]`), the rows in
/// order. With `squares = Some((q, shift))`, the sums are shifted by the first row
/// instead — `shift[c] = m[c]`, `sums[c] += Σ_r (m[r·stride + c] − shift[c])`,
/// `q[c] += Σ_r (m[r·stride + c] − shift[c])²` — so that a variance taken from them
/// does not cancel. Reads through the pointer only the elements it names, so other
/// threads may write the rest meanwhile.
struct AddRows<'a> {
    m: *const f32,
    rows: usize,
    stride: usize,
    sums: &'a mut [f32],
    squares: Option<(&'a mut [f32], &'a mut [f32])>,
}

impl SimdKernel for AddRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        // No closures here: they would not inherit the caller's target features,
        // and their intrinsics would be calls.
        let (cols, stride, l) = (self.sums.len(), self.stride, S::LANES);
        let mut squares = self.squares;
        let shifted = squares.is_some();
        let mut c0 = 0;
        while c0 < cols {
            let width = (cols - c0).min(4 * l);
            let nv = width.div_ceil(l);
            let mut shift = [s.zero(); 4];
            let mut a = [s.zero(); 4];
            let mut q = [s.zero(); 4];
            // SAFETY (every load): `r < rows` and `c0 + v·L + n ≤ cols` with `n =
            // min(width − v·L, L)`: elements the caller of `add_rows_raw` vouches for.
            if shifted {
                for (v, sh) in shift.iter_mut().enumerate().take(nv) {
                    *sh = unsafe { load_n(s, self.m.add(c0 + v * l), width - v * l) };
                }
            }
            for r in 0..self.rows {
                let row = self.m.wrapping_add(r * stride + c0);
                for v in 0..nv {
                    let x = unsafe { load_n(s, row.add(v * l), width - v * l) };
                    if shifted {
                        let d = s.sub(x, shift[v]);
                        a[v] = s.add(a[v], d);
                        q[v] = s.mul_add(d, d, q[v]);
                    } else {
                        a[v] = s.add(a[v], x);
                    }
                }
            }
            add_vectors(s, &mut self.sums[c0..c0 + width], &a);
            if let Some((sq, sh)) = squares.as_mut() {
                add_vectors(s, &mut sq[c0..c0 + width], &q);
                for (o, &v) in sh[c0..c0 + width].chunks_mut(l).zip(&shift) {
                    s.store_upto(o, v);
                }
            }
            c0 += width;
        }
    }
}

/// `out[i] += acc[i / L][i % L]` over `out` (at most `4·L` floats).
#[inline(always)]
fn add_vectors<S: Simd>(s: S, out: &mut [f32], acc: &[S::V; 4]) {
    for (o, &a) in out.chunks_mut(S::LANES).zip(acc) {
        let prev = s.load_upto(o);
        s.store_upto(o, s.add(prev, a));
    }
}

/// `acc[c] += Σ_r m[r·cols + c]` with `cols = acc.len()`, on one thread (the building
/// block of [`column_sums`] and of per-sample sums).
pub(crate) fn add_rows(level: SimdLevel, m: &[f32], acc: &mut [f32]) {
    let cols = acc.len();
    if cols > 0 {
        debug_assert!(m.len().is_multiple_of(cols));
        // SAFETY: `m.len() / cols` whole rows of `cols` floats, all in `m`.
        unsafe { add_rows_raw(level, m.as_ptr(), m.len() / cols, cols, acc, None) };
    }
}

/// `sums[c] += Σ_r m[r·stride + c]` for `c < sums.len()` and `r < rows`, in row order,
/// on one thread; with `squares = Some((q, shift))`, shifted by the first row:
/// `shift[c] = m[c]` and the sums and `q` (squares) accumulate `m[r·stride + c] −
/// shift[c]` and its square.
///
/// # Safety
/// Every `m + r·stride + c` for `r < rows`, `c < sums.len()` must be readable, and no
/// other thread may write those elements meanwhile (others may write the rest).
pub(crate) unsafe fn add_rows_raw(
    level: SimdLevel,
    m: *const f32,
    rows: usize,
    stride: usize,
    sums: &mut [f32],
    squares: Option<(&mut [f32], &mut [f32])>,
) {
    let cols = sums.len();
    debug_assert!(stride >= cols);
    debug_assert!(
        squares
            .as_ref()
            .is_none_or(|(q, sh)| q.len() == cols && sh.len() == cols)
    );
    if cols > 0 && rows > 0 {
        dispatch(
            level,
            AddRows {
                m,
                rows,
                stride,
                sums,
                squares,
            },
        );
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

/// Where the tasks of one convolution forward call leave their output rows' partial
/// channel statistics (the post-op of `conv::ChannelStats`), in the call's workspace:
/// `[N·OH][C]` sums; with squares, sums and sums of squares shifted by each row's
/// first pixel and those shifts (three planes), so that the variance of values far
/// from zero does not cancel. Each row's partial sums its pixels in order, whichever
/// task wrote the row; [`RowStats::finish`] adds each image's rows in row order in
/// `f64`, so the statistics do not depend on the task split.
#[derive(Copy, Clone, Debug)]
pub(crate) struct RowStats {
    part: *mut f32,
    rows: usize,
    ow: usize,
    c: usize,
    squares: bool,
    level: SimdLevel,
}

// SAFETY: tasks write the partials of pairwise disjoint (row, channel range) pairs
// (each caller of `record` documents its partition) and the buffer outlives the call.
unsafe impl Send for RowStats {}
// SAFETY: as above.
unsafe impl Sync for RowStats {}

impl RowStats {
    /// Floats of the row partials for `rows = N·OH` rows of `c` channels, with or
    /// without the squares.
    pub(crate) fn len(squares: bool, rows: usize, c: usize) -> usize {
        (1 + 2 * usize::from(squares)) * rows * c
    }

    /// The partials of the sums (and of the squares when `squares`) over `part` (at
    /// least [`RowStats::len`] floats, any contents) for an output of `rows = N·OH`
    /// rows of `ow` pixels of `c` channels.
    pub(crate) fn new(
        level: SimdLevel,
        squares: bool,
        part: &mut [f32],
        (rows, ow, c): (usize, usize, usize),
    ) -> RowStats {
        assert!(part.len() >= RowStats::len(squares, rows, c));
        RowStats {
            part: part.as_mut_ptr(),
            rows,
            ow,
            c,
            squares,
            level,
        }
    }

    /// Records the partials of output rows `rows` (indices `n·OH + oh`), channels
    /// `chans`, from `y`, which points at the first element of row `rows.start`.
    ///
    /// # Safety
    /// Those rows × channels of the output must be written, readable through `y`, not
    /// written by another thread meanwhile, and their partials recorded by no other
    /// task of the call.
    pub(crate) unsafe fn record(&self, y: *const f32, rows: Range<usize>, chans: Range<usize>) {
        debug_assert!(rows.end <= self.rows && chans.end <= self.c);
        let (c, row_len, cols) = (self.c, self.ow * self.c, chans.len());
        let plane = self.rows * c;
        for (i, r) in rows.enumerate() {
            let at = r * c + chans.start;
            // SAFETY: the partials of row `r`, channels `chans`, in each plane are this
            // task's alone (caller contract) and inside the region `new` checked.
            let (sums, squares) = unsafe {
                let part =
                    |k: usize| std::slice::from_raw_parts_mut(self.part.add(k * plane + at), cols);
                (part(0), self.squares.then(|| (part(1), part(2))))
            };
            sums.fill(0.0);
            let squares = squares.map(|(q, sh)| {
                q.fill(0.0);
                (q, sh)
            });
            // SAFETY: row `r`'s pixels of `chans` are finished and this task's (caller
            // contract); `y` points at row `rows.start`.
            unsafe {
                let p = y.add(i * row_len + chans.start);
                add_rows_raw(self.level, p, self.ow, c, sums, squares);
            }
        }
    }

    /// Each image's statistics from the partials (every row recorded): `sums` and
    /// `squares` `[N][C]` (`N = sums.len() / C`), overwritten; each image's rows added
    /// in row order in `f64` (unshifted: `Σy = S + p·a`, `Σy² = Q + 2a·S + p·a²` for a
    /// row of `p` pixels with shift `a`).
    pub(crate) fn finish(&self, sums: &mut [f64], squares: Option<&mut [f64]>) {
        let (c, rows) = (self.c, self.rows);
        let plane = rows * c;
        // SAFETY: every task of the call has finished; the region holds the planes
        // `new` checked.
        let part =
            unsafe { std::slice::from_raw_parts(self.part, RowStats::len(self.squares, rows, c)) };
        sums.fill(0.0);
        let images = sums.len() / c.max(1);
        let per_image = rows.checked_div(images).unwrap_or(0);
        if c == 0 || per_image == 0 {
            if let Some(q) = squares {
                q.fill(0.0);
            }
            return;
        }
        let p = self.ow as f64;
        let s_part = &part[..plane];
        match squares {
            None => {
                for (o, rows) in sums.chunks_exact_mut(c).zip(s_part.chunks(per_image * c)) {
                    for row in rows.chunks_exact(c) {
                        for (o, &v) in o.iter_mut().zip(row) {
                            *o += f64::from(v);
                        }
                    }
                }
            }
            Some(q) => {
                q.fill(0.0);
                let (q_part, sh_part) = part[plane..].split_at(plane);
                let per = per_image * c;
                let images = sums.chunks_exact_mut(c).zip(q.chunks_exact_mut(c));
                for (i, (so, qo)) in images.enumerate() {
                    let r = i * per..(i + 1) * per;
                    let rows = s_part[r.clone()]
                        .chunks_exact(c)
                        .zip(q_part[r.clone()].chunks_exact(c))
                        .zip(sh_part[r].chunks_exact(c));
                    for ((sr, qr), ar) in rows {
                        for ch in 0..c {
                            let (sv, qv, a) =
                                (f64::from(sr[ch]), f64::from(qr[ch]), f64::from(ar[ch]));
                            so[ch] += sv + p * a;
                            qo[ch] += qv + 2.0 * a * sv + p * a * a;
                        }
                    }
                }
            }
        }
    }
}
