//! Column sums of row-major matrices: bias gradients and per-channel statistics.

use std::ops::Range;

use super::parallel::{chunk_len, partials_len, reduce_chunks_in};
use crate::simd::{Simd, SimdKernel, SimdLevel, dispatch, load_n};

/// Adds `rows` rows at `m` (`stride` floats apart, each read for its first `cols =
/// sums.len()` floats) into `sums` (`sums[c] += Σ_r m[r·stride + c]`), the rows in
/// order; with `overwrite`, writes the sums instead (`sums[c] = Σ_r …`). With `squares
/// = Some((q, shift))`, the sums are shifted by the first row — `shift[c] = m[c]`,
/// `sums[c] (+)= Σ_r (m[r·stride + c] − shift[c])`, `q[c] (+)= Σ_r (m[r·stride + c] −
/// shift[c])²` — so that a variance taken from them does not cancel. Reads through
/// the pointer only the elements it names, so other threads may write the rest
/// meanwhile.
struct AddRows<'a> {
    m: *const f32,
    rows: usize,
    stride: usize,
    overwrite: bool,
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
        let mut c0 = 0;
        while c0 < cols {
            let width = (cols - c0).min(4 * l);
            let at = self.m.wrapping_add(c0);
            // SAFETY: every element read is `m + r·stride + c` with `r < rows`, `c0 ≤ c
            // < c0 + width ≤ cols`: the caller of `add_rows_raw` vouches for them.
            let (a, q, shift) = unsafe {
                match (width == 4 * l, squares.is_some()) {
                    (true, false) => block::<S, true, false>(s, at, self.rows, stride, width),
                    (true, true) => block::<S, true, true>(s, at, self.rows, stride, width),
                    (false, false) => block::<S, false, false>(s, at, self.rows, stride, width),
                    (false, true) => block::<S, false, true>(s, at, self.rows, stride, width),
                }
            };
            put_vectors(s, &mut self.sums[c0..c0 + width], &a, self.overwrite);
            if let Some((sq, sh)) = squares.as_mut() {
                put_vectors(s, &mut sq[c0..c0 + width], &q, self.overwrite);
                put_vectors(s, &mut sh[c0..c0 + width], &shift, true);
            }
            c0 += width;
        }
    }
}

/// Up to four vectors of column sums, squares and shifts.
type Block<S> = (
    [<S as Simd>::V; 4],
    [<S as Simd>::V; 4],
    [<S as Simd>::V; 4],
);

/// The column sums of `width ≤ 4·L` columns at `m` over `rows` rows `stride` floats
/// apart, in registers: the sums, and with `SHIFT` the sums and squares shifted by the
/// first row and that row. `FULL` (`width = 4·L`): whole vectors, no tail checks.
///
/// # Safety
/// Every `m + r·stride + c` for `r < rows`, `c < width` must be readable.
#[inline(always)]
unsafe fn block<S: Simd, const FULL: bool, const SHIFT: bool>(
    s: S,
    m: *const f32,
    rows: usize,
    stride: usize,
    width: usize,
) -> Block<S> {
    let l = S::LANES;
    let nv = if FULL { 4 } else { width.div_ceil(l) };
    let n = |v: usize| if FULL { l } else { width - v * l };
    let (mut a, mut q, mut shift) = ([s.zero(); 4], [s.zero(); 4], [s.zero(); 4]);
    // SAFETY (every load): `r < rows`, `v·L + min(n(v), L) ≤ width`: elements the
    // caller vouches for.
    if SHIFT {
        for (v, sh) in shift.iter_mut().enumerate().take(nv) {
            *sh = unsafe { load_n(s, m.add(v * l), n(v)) };
        }
    }
    // Even and odd rows in separate accumulators (two dependency chains per vector),
    // added at the end: a fixed order, whoever calls.
    let (mut a1, mut q1) = ([s.zero(); 4], [s.zero(); 4]);
    let mut r = 0;
    while r < rows {
        let two = r + 1 < rows;
        let row = m.wrapping_add(r * stride);
        for v in 0..nv {
            let x = unsafe { load_n(s, row.add(v * l), n(v)) };
            if SHIFT {
                let d = s.sub(x, shift[v]);
                a[v] = s.add(a[v], d);
                q[v] = s.mul_add(d, d, q[v]);
            } else {
                a[v] = s.add(a[v], x);
            }
        }
        if two {
            let row = row.wrapping_add(stride);
            for v in 0..nv {
                let x = unsafe { load_n(s, row.add(v * l), n(v)) };
                if SHIFT {
                    let d = s.sub(x, shift[v]);
                    a1[v] = s.add(a1[v], d);
                    q1[v] = s.mul_add(d, d, q1[v]);
                } else {
                    a1[v] = s.add(a1[v], x);
                }
            }
        }
        r += 2;
    }
    for v in 0..nv {
        a[v] = s.add(a[v], a1[v]);
        q[v] = s.add(q[v], q1[v]);
    }
    (a, q, shift)
}

/// `out[i] (+)= acc[i / L][i % L]` over `out` (at most `4·L` floats): added, or
/// written with `overwrite`.
#[inline(always)]
fn put_vectors<S: Simd>(s: S, out: &mut [f32], acc: &[S::V; 4], overwrite: bool) {
    for (o, &a) in out.chunks_mut(S::LANES).zip(acc) {
        let v = if overwrite {
            a
        } else {
            s.add(s.load_upto(o), a)
        };
        s.store_upto(o, v);
    }
}

/// `acc[c] += Σ_r m[r·cols + c]` with `cols = acc.len()`, on one thread (the building
/// block of [`column_sums`] and of per-sample sums).
pub(crate) fn add_rows(level: SimdLevel, m: &[f32], acc: &mut [f32]) {
    let cols = acc.len();
    if cols > 0 {
        debug_assert!(m.len().is_multiple_of(cols));
        // SAFETY: `m.len() / cols` whole rows of `cols` floats, all in `m`.
        unsafe { add_rows_raw(level, m.as_ptr(), (m.len() / cols, cols), false, acc, None) };
    }
}

/// `sums[c] += Σ_r m[r·stride + c]` (`=` with `overwrite`) for `c < sums.len()` and `r
/// < rows`, in row order, on one thread; with `squares = Some((q, shift))`, shifted by
/// the first row:
/// `shift[c] = m[c]` and the sums and `q` (squares) accumulate `m[r·stride + c] −
/// shift[c]` and its square.
///
/// # Safety
/// Every `m + r·stride + c` for `r < rows`, `c < sums.len()` must be readable, and no
/// other thread may write those elements meanwhile (others may write the rest).
pub(crate) unsafe fn add_rows_raw(
    level: SimdLevel,
    m: *const f32,
    (rows, stride): (usize, usize),
    overwrite: bool,
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
                overwrite,
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

    /// Pixels per output row.
    pub(crate) fn row_pixels(&self) -> usize {
        self.ow
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
            // SAFETY: row `r`'s pixels of `chans` are finished and this task's (caller
            // contract); `y` points at row `rows.start`.
            unsafe {
                let p = y.add(i * row_len + chans.start);
                add_rows_raw(self.level, p, (self.ow, c), true, sums, squares);
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
                        let each = so
                            .iter_mut()
                            .zip(qo.iter_mut())
                            .zip(sr.iter().zip(qr).zip(ar));
                        for ((so, qo), ((&sv, &qv), &a)) in each {
                            let (sv, qv, a) = (f64::from(sv), f64::from(qv), f64::from(a));
                            *so += sv + p * a;
                            *qo += qv + 2.0 * a * sv + p * a * a;
                        }
                    }
                }
            }
        }
    }
}
