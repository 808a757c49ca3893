//! Tests of `kernels::parallel` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::kernels::parallel::*;
use std::ops::Range;

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

#[test]
fn split_covers_the_range_in_balanced_parts() {
    for n in 0..60 {
        for max in 1..20 {
            let parts: Vec<_> = balanced_parts(n, max).collect();
            let mut next = 0;
            for &(s, l) in &parts {
                assert_eq!(s, next);
                assert!(l >= 1 && l <= max);
                next = s + l;
            }
            assert_eq!(next, n);
            assert_eq!(parts.len(), n.div_ceil(max));
            if let (Some(a), Some(b)) = (parts.first(), parts.last()) {
                assert!(a.1 - b.1 <= 1);
            }
        }
    }
}

#[test]
fn thread_tasks_cover_the_items_evenly_over_the_threads() {
    for threads in 1..=8 {
        for n in 0..200 {
            for min in [1, 3, 4, 16] {
                let len = thread_task_len(n, min, threads);
                assert!(len >= 1);
                let tasks = n.div_ceil(len);
                assert!(
                    tasks <= (4 * threads).max(1),
                    "n {n} min {min} threads {threads}"
                );
                if n >= threads && n / min >= threads {
                    // Whole rounds of tasks for the pool (the last task may be short).
                    let want = (n / min).min(4 * threads) / threads * threads;
                    assert_eq!(
                        n.div_ceil(n.div_ceil(want)),
                        tasks.max(1),
                        "n {n} min {min} t {threads}"
                    );
                    assert!(len >= min || n / min > 4 * threads);
                } else if n >= threads {
                    // Too small for a task of `min` per thread: one task per thread.
                    assert_eq!(tasks, n.div_ceil(n.div_ceil(threads)));
                }
            }
        }
    }
    // The cases it is for: 5 tasks of 4 rows on 2 threads become 4 of 5.
    assert_eq!(thread_task_len(20, 4, 2), 5);
    assert_eq!(thread_task_len(10, 4, 2), 5);
    assert_eq!(thread_task_len(5, 3, 2), 3);
    assert_eq!(thread_task_len(80, 3, 2), 10);
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Many short parallel steps, as one image's layers are (each summed in a fixed
/// order, so the total has the same bits on any pool).
fn steps() -> f64 {
    use rayon::prelude::*;
    (0..200)
        .map(|s| {
            (0..64)
                .into_par_iter()
                .map(|i| ((s * 64 + i) as f64).sqrt())
                .collect::<Vec<_>>()
                .iter()
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn workers_kept_awake_run_the_same_work() {
    let want = pool(1).install(steps);
    for threads in [1, 2, 3, 8] {
        let got = pool(threads).install(|| with_workers_awake(steps));
        assert_eq!(got.to_bits(), want.to_bits(), "{threads} threads");
    }
    // Outside a pool it is just the call.
    assert_eq!(with_workers_awake(|| 7), 7);
}

#[test]
fn workers_kept_awake_by_concurrent_callers_do_not_deadlock() {
    use rayon::prelude::*;
    // Every worker of the pool asks for the others at once (a user running several
    // inferences from a parallel loop): each waits a bounded time, then runs.
    for threads in [2, 4] {
        let got: Vec<f64> = pool(threads).install(|| {
            (0..3 * threads)
                .into_par_iter()
                .map(|_| with_workers_awake(|| with_workers_awake(steps)))
                .collect()
        });
        let want = pool(1).install(steps);
        assert!(got.iter().all(|g| g.to_bits() == want.to_bits()));
    }
}

#[test]
fn a_panic_under_workers_kept_awake_reaches_the_caller() {
    let p = pool(2);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.install(|| with_workers_awake(|| panic!("inside")))
    }));
    assert!(r.is_err());
    // The pool is still usable: no helper was left spinning.
    assert_eq!(p.install(|| with_workers_awake(|| 3)), 3);
}
