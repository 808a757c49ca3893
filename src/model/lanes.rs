//! Image lanes: a batch run as independent jobs of a few images each, one lane per
//! thread.
//!
//! Inference has no batch statistics, so a small group of images can go through the
//! whole network on one thread while the other threads take other groups. Compared
//! with running every layer on the whole batch with all threads, a lane keeps its
//! group's activations (a few MB) in its core's caches from layer to layer instead of
//! streaming the batch's tensors through memory, and its threads never wait for each
//! other between layers. Each lane owns a single-thread `rayon` pool, so the kernels a
//! lane calls run on that thread alone, and its own state (buffers and workspace).
//!
//! Every group goes through the same plan whichever lane takes it, and the kernels
//! give the same bits on any pool size and for each image of any batch, so the results
//! do not depend on the number of lanes, on the group size or on which lane ran which
//! group.
//!
//! Internal to the prepared inference network; public (and hidden from the docs) only
//! so that the integration tests can drive it.

use crate::error::{Error, Result};
use crate::kernels::parallel::with_workers_awake;
use crate::simd::with_level;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Per-lane state `T` and the lanes' single-thread pools; see the [module docs](self).
#[derive(Debug)]
pub struct Lanes<T> {
    /// One single-thread pool per lane; empty when one lane runs in the caller's pool.
    pools: Vec<rayon::ThreadPool>,
    states: Vec<T>,
}

impl<T: Send> Lanes<T> {
    /// `count` lanes (at least one), each with the state `make(threads)` for the
    /// number of threads its kernels will see: one per lane, or the caller's pool
    /// size when a single lane runs in the caller's pool.
    pub fn new(count: usize, mut make: impl FnMut(usize) -> Result<T>) -> Result<Lanes<T>> {
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
    pub fn count(&self) -> usize {
        self.states.len()
    }

    /// The lanes' states.
    pub fn states(&self) -> &[T] {
        &self.states
    }

    /// Runs `job(state, i, out_i)` for every item `i` of `0..n`, where `out_i` is the
    /// `i`-th chunk of `out_len` floats of `out`; lanes take the next item as they
    /// finish one. The first error is returned (the other lanes stop after their
    /// current item).
    pub fn run<F>(&mut self, n: usize, out: &mut [f32], out_len: usize, job: F) -> Result<()>
    where
        F: Fn(&mut T, usize, &mut [f32]) -> Result<()> + Sync,
    {
        debug_assert_eq!(out.len(), n * out_len);
        if self.pools.is_empty() {
            // One lane on the caller's pool: the kernels split each image across its
            // threads, and the other workers are kept awake between the layers (its
            // layers are short parallel steps; a worker that slept between them would
            // be woken at each one). The lanes' own pools have one thread each.
            let state = &mut self.states[0];
            return with_workers_awake(|| {
                for (i, o) in out.chunks_mut(out_len.max(1)).enumerate().take(n) {
                    job(state, i, o)?;
                }
                Ok(())
            });
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
