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

/// Items per task for splitting `n` items over a pool of `threads`, for work whose
/// result does not depend on the split: tasks of at least `min_len` items and at most
/// four per thread, their count a multiple of `threads` where it can be (5 tasks on
/// 2 threads leave one thread a task behind; 4 or 6 do not); when `n` holds fewer than
/// `threads` tasks of `min_len`, one task per thread (up to one per item), shorter
/// than `min_len`, so that no thread idles on a small problem.
pub fn thread_task_len(n: usize, min_len: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let mut tasks = (n / min_len.max(1)).clamp(1, 4 * threads);
    if tasks >= threads {
        tasks -= tasks % threads;
    } else {
        tasks = threads.min(n);
    }
    n.div_ceil(tasks.max(1)).max(1)
}

/// Splits `0..n` into the fewest near-equal parts of at most `max` items (`max` 0 is
/// taken as 1): `(start, len)` pairs, longer parts first.
pub fn balanced_parts(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let parts = n.div_ceil(max.max(1));
    let base = n.checked_div(parts).unwrap_or(0);
    let extra = n.checked_rem(parts).unwrap_or(0);
    (0..parts).map(move |i| {
        let start = i * base + i.min(extra);
        (start, base + usize::from(i < extra))
    })
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

/// Runs `f` on the current rayon pool with the pool's other workers kept awake until
/// it returns: each of them runs a job that takes the pool's pending tasks as they
/// appear and spins (without sleeping) between them.
///
/// A pool's idle worker spins briefly and then sleeps until new work wakes it, and on
/// a virtual machine that wake costs tens of microseconds. A run of many short
/// parallel steps with short serial gaps between them (one image's layers through
/// the network) pays it at nearly every step; kept awake, the worker picks each
/// step's tasks up at once. The cost is that the workers use their cores for the
/// whole of `f`, serial parts included. Results do not change: which thread runs a
/// task never changes what it computes.
///
/// Workers that do not take their helper job within [`AWAKE_WAIT`] (busy with other
/// work of the pool) are left as they are: the helpers only start before `f` does, so
/// none can ever sit on top of `f`'s own tasks. Outside a pool, or on a pool of one
/// thread, this is just `f()`.
pub fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let (Some(owner), threads) = (rayon::current_thread_index(), rayon::current_num_threads())
    else {
        return f();
    };
    let helpers = threads - 1;
    if helpers == 0 {
        return f();
    }
    // Helpers started, and the bit that closes the start once `f` is about to run.
    const CLOSED: usize = 1 << (usize::BITS - 1);
    let (started, done) = (AtomicUsize::new(0), AtomicBool::new(false));
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| {
                if rayon::current_thread_index() == Some(owner) {
                    return;
                }
                let mut v = started.load(Ordering::Acquire);
                loop {
                    if v & CLOSED != 0 {
                        return;
                    }
                    match started.compare_exchange_weak(
                        v,
                        v + 1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break,
                        Err(now) => v = now,
                    }
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Wait, without taking any task of the pool, until the other workers hold the
        // helper jobs (or the wait runs out), then close the start: a helper taken by
        // this thread later, inside `f`, would spin on top of `f`'s frames.
        let t0 = std::time::Instant::now();
        while started.load(Ordering::Acquire) < helpers && t0.elapsed() < AWAKE_WAIT {
            std::hint::spin_loop();
        }
        started.fetch_or(CLOSED, Ordering::AcqRel);
        // Released on return and on unwinding alike (a panic in `f` must not leave
        // the helpers spinning, which would keep the scope from ever ending).
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _release = Release(&done);
        f()
    })
}

/// How long [`with_workers_awake`] waits for the other workers to take their helper
/// jobs: long enough for an idle worker to wake (tens of microseconds on a virtual
/// machine), short next to the work it is worth keeping them awake for.
pub const AWAKE_WAIT: std::time::Duration = std::time::Duration::from_micros(500);
