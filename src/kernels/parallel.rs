//! Deterministic parallel helpers.
//!
//! Work is split into chunks whose size depends on the problem only, never on the
//! number of threads, and partial results are combined in chunk order, so every result
//! is bitwise identical for any `rayon` pool size.

use rayon::prelude::*;
use std::ops::Range;

/// Chunk length for splitting `n` items into at most `max_chunks` chunks of at least
/// `min_len` items (both fixed by the caller, independent of the thread count).
pub fn chunk_len(n: usize, min_len: usize, max_chunks: usize) -> usize {
    n.div_ceil(max_chunks.max(1)).max(min_len).max(1)
}

/// Floats of partial sums [`reduce_chunks_in`] needs: `len` per chunk of `chunk`
/// items over `0..n` (none when there is nothing to reduce).
pub fn partials_len(n: usize, chunk: usize, len: usize) -> usize {
    if n == 0 || len == 0 {
        0
    } else {
        n.div_ceil(chunk.max(1)).saturating_mul(len)
    }
}

/// Splits `0..n` into consecutive chunks of `chunk` items, runs `f(range, partial)` on
/// each in parallel with a zeroed buffer of `out.len()` floats, then adds the partials
/// in chunk order into `out` (after zeroing it unless `accumulate`).
///
/// This is the weight-gradient pattern: per-chunk `f32` buffers reduced in a fixed
/// order. The partials are allocated here; [`reduce_chunks_in`] takes them from the
/// caller.
pub fn reduce_chunks<F>(n: usize, chunk: usize, out: &mut [f32], accumulate: bool, f: F)
where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let mut partials = vec![0.0f32; partials_len(n, chunk, out.len())];
    reduce_chunks_in(n, chunk, out, accumulate, &mut partials, f);
}

/// [`reduce_chunks`] with the partial sums in `partials` (at least
/// [`partials_len`]`(n, chunk, out.len())` floats, any contents: each chunk's part is
/// zeroed before `f` runs).
///
/// # Panics
/// If `partials` is too short (the callers size it from [`partials_len`]).
pub fn reduce_chunks_in<F>(
    n: usize,
    chunk: usize,
    out: &mut [f32],
    accumulate: bool,
    partials: &mut [f32],
    f: F,
) where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    let len = out.len();
    if !accumulate {
        out.fill(0.0);
    }
    if n == 0 || len == 0 {
        return;
    }
    let chunk = chunk.max(1);
    let chunks = n.div_ceil(chunk);
    let partials = &mut partials[..chunks * len];
    partials.par_chunks_mut(len).enumerate().for_each(|(i, p)| {
        p.fill(0.0);
        f(i * chunk..((i + 1) * chunk).min(n), p)
    });
    // Sum element blocks in parallel; inside a block the chunk order is fixed.
    const BLOCK: usize = 4096;
    let partials = &*partials;
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, o)| {
        let base = b * BLOCK;
        for c in 0..chunks {
            let p = &partials[c * len + base..c * len + base + o.len()];
            for (o, p) in o.iter_mut().zip(p) {
                *o += *p;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_chunks_is_independent_of_the_pool_size() {
        let data: Vec<f32> = (0..10_007)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 + 1e-7)
            .collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut out = vec![0.0f32; 3];
                reduce_chunks(
                    data.len(),
                    chunk_len(data.len(), 64, 37),
                    &mut out,
                    false,
                    |r, p| {
                        for i in r {
                            p[i % 3] += data[i];
                        }
                    },
                );
                out
            })
        };
        let one = run(1);
        for t in [2, 3, 8] {
            assert_eq!(run(t), one);
        }
        let want: f64 = data.iter().map(|&v| v as f64).sum();
        let got: f64 = one.iter().map(|&v| v as f64).sum();
        assert!((want - got).abs() < 1e-2 * want.abs());
    }

    #[test]
    fn caller_partials_with_stale_contents_give_the_same_bits() {
        let data: Vec<f32> = (0..5000).map(|i| (i % 17) as f32 * 0.37 - 2.0).collect();
        let f = |r: Range<usize>, p: &mut [f32]| {
            for i in r {
                p[i % 5] += data[i];
            }
        };
        let chunk = chunk_len(data.len(), 64, 13);
        let mut want = vec![0.0f32; 5];
        reduce_chunks(data.len(), chunk, &mut want, false, f);
        let mut parts = vec![f32::NAN; partials_len(data.len(), chunk, 5)];
        let mut got = vec![9.0f32; 5];
        reduce_chunks_in(data.len(), chunk, &mut got, false, &mut parts, f);
        assert_eq!(got, want);
        assert_eq!(partials_len(0, 3, 5), 0);
        assert_eq!(partials_len(7, 3, 5), 15);
    }

    #[test]
    fn accumulate_adds_to_the_old_contents() {
        let mut out = vec![1.0f32, 2.0];
        reduce_chunks(4, 1, &mut out, true, |r, p| {
            p[0] += r.start as f32;
            p[1] += 1.0;
        });
        assert_eq!(out, vec![1.0 + 6.0, 2.0 + 4.0]);
    }
}
