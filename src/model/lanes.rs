//! Image lanes: a batch run as independent one-image jobs, one lane per thread.
//!
//! Inference has no batch statistics, so each image can go through the whole network
//! on one thread while the other threads take other images. Compared with running
//! every layer on the whole batch with all threads, a lane keeps one image's
//! activations (a few MB) in its core's caches from layer to layer instead of
//! streaming the batch's tensors through memory, and its threads never wait for each
//! other between layers. Each lane owns a single-thread `rayon` pool, so the kernels a
//! lane calls run on that thread alone, and its own state (buffers and workspace).
//!
//! Every image goes through the same one-image plan whichever lane takes it, and the
//! kernels give the same bits on any pool size, so the results do not depend on the
//! number of lanes or on which lane ran which image.

use crate::error::{Error, Result};
use crate::simd::with_level;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Per-lane state `T` and the lanes' single-thread pools; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Lanes<T> {
    /// One single-thread pool per lane; empty when one lane runs in the caller's pool.
    pools: Vec<rayon::ThreadPool>,
    states: Vec<T>,
}

impl<T: Send> Lanes<T> {
    /// `count` lanes (at least one), each with the state `make(threads)` for the
    /// number of threads its kernels will see: one per lane, or the caller's pool
    /// size when a single lane runs in the caller's pool.
    pub(crate) fn new(count: usize, mut make: impl FnMut(usize) -> Result<T>) -> Result<Lanes<T>> {
        if count <= 1 {
            return Ok(Lanes {
                pools: Vec::new(),
                states: vec![make(rayon::current_num_threads())?],
            });
        }
        let mut pools = Vec::with_capacity(count);
        let mut states = Vec::with_capacity(count);
        for i in 0..count {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(move |_| format!("effnet-lane-{i}"))
                .build()
                .map_err(|e| Error::InvalidArgument(format!("cannot start an image lane: {e}")))?;
            states.push(make(1)?);
            pools.push(pool);
        }
        Ok(Lanes { pools, states })
    }

    /// How many lanes run at once.
    pub(crate) fn count(&self) -> usize {
        self.states.len()
    }

    /// The lanes' states.
    pub(crate) fn states(&self) -> &[T] {
        &self.states
    }

    /// Runs `job(state, i, out_i)` for every item `i` of `0..n`, where `out_i` is the
    /// `i`-th chunk of `out_len` floats of `out`; lanes take the next item as they
    /// finish one. The first error is returned (the other lanes stop after their
    /// current item).
    pub(crate) fn run<F>(&mut self, n: usize, out: &mut [f32], out_len: usize, job: F) -> Result<()>
    where
        F: Fn(&mut T, usize, &mut [f32]) -> Result<()> + Sync,
    {
        debug_assert_eq!(out.len(), n * out_len);
        if self.pools.is_empty() {
            let state = &mut self.states[0];
            for (i, o) in out.chunks_mut(out_len.max(1)).enumerate().take(n) {
                job(state, i, o)?;
            }
            return Ok(());
        }
        let slots: Vec<Mutex<&mut [f32]>> = out
            .chunks_mut(out_len.max(1))
            .take(n)
            .map(Mutex::new)
            .collect();
        // Kernels planned inside a lane read the caller's SIMD level, not the default.
        let level = crate::simd::active();
        let next = AtomicUsize::new(0);
        let failed = Mutex::new(None::<Error>);
        let lane = |state: &mut T| {
            with_level(level, || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let mut slot = slots[i].lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = job(state, i, &mut slot) {
                        // Stop every lane at its next item and keep the first error.
                        next.store(n, Ordering::Relaxed);
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        return;
                    }
                }
            })
        };
        run_lanes(&self.pools, &mut self.states, &lane);
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Runs `lane(state)` for every lane, each on its own pool's thread, and waits for
/// all: each pool but the last gets its lane as a job of a scope around the rest, the
/// last runs its lane while the calling thread waits — no thread is started per call.
fn run_lanes<T: Send, L: Fn(&mut T) + Sync>(
    pools: &[rayon::ThreadPool],
    states: &mut [T],
    lane: &L,
) {
    let (Some((pool, pools)), Some((state, states))) =
        (pools.split_first(), states.split_first_mut())
    else {
        return;
    };
    if pools.is_empty() {
        pool.install(|| lane(state));
        return;
    }
    pool.in_place_scope(|s| {
        s.spawn(|_| lane(state));
        run_lanes(pools, states, lane);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
        pool.expect("a test pool").install(f)
    }

    #[test]
    fn every_item_lands_in_its_own_chunk_on_any_lane_count() {
        for lanes in [1, 2, 3, 8] {
            let mut l = in_pool(lanes, || Lanes::new(lanes, |t| Ok(vec![t])).unwrap());
            assert_eq!(l.count(), lanes);
            let threads = if lanes > 1 { 1 } else { lanes };
            assert!(l.states().iter().all(|s| s == &[threads]));
            let mut out = vec![0.0; 11 * 2];
            l.run(11, &mut out, 2, |_, i, o| {
                o.copy_from_slice(&[i as f32, rayon::current_num_threads() as f32]);
                Ok(())
            })
            .unwrap();
            // A lane's kernels see a pool of one thread; a single lane runs in the
            // caller's pool.
            let seen = if lanes > 1 {
                1
            } else {
                rayon::current_num_threads()
            };
            for (i, o) in out.chunks(2).enumerate() {
                assert_eq!(o, [i as f32, seen as f32]);
            }
        }
    }

    #[test]
    fn the_first_error_stops_the_lanes() {
        let mut l = Lanes::new(2, |_| Ok(())).unwrap();
        let mut out = vec![0.0; 100];
        let e = l.run(100, &mut out, 1, |_, i, o| {
            if i == 10 {
                return Err(Error::InvalidArgument("item 10".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
            o[0] = 1.0;
            Ok(())
        });
        assert!(matches!(e, Err(Error::InvalidArgument(m)) if m == "item 10"));
        // The lanes stopped at their next item: not everything after item 10 ran.
        // (Items take 2 ms: the other lane gets through a few at most.)
        assert!(out.iter().filter(|&&v| v == 1.0).count() < 50);
    }
}
