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
