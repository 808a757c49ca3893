//! Tests of `kernels::scratch` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::Error;
use effnet::kernels::scratch::*;

#[test]
fn regions_are_aligned_disjoint_and_exactly_sized() {
    for offset in 0..ALIGN_FLOATS {
        let mut l = WorkspaceLayout::new(3);
        l.region(5).region(0).region(33).per_worker(7);
        let mut buf = vec![0.0f32; l.len() + offset];
        let buf = &mut buf[offset..];
        let len = buf.len();
        let base = buf.as_ptr() as usize;
        let mut ws = Workspace::new(buf, &l).unwrap();
        let a = ws.take(5).unwrap();
        let b = ws.take(0).unwrap();
        let c = ws.take(33).unwrap();
        let w = ws.per_worker(7).unwrap();
        assert_eq!((a.len(), b.len(), c.len()), (5, 0, 33));
        for s in [&a[..], &c[..]] {
            assert_eq!(s.as_ptr() as usize % 64, 0);
            assert!(s.as_ptr() as usize + 4 * s.len() <= base + 4 * len);
        }
        assert!(a.as_ptr() as usize + 4 * a.len() <= c.as_ptr() as usize);
        // Worker 0's slot follows the per-call regions, aligned, inside the buffer.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let slot = pool.install(|| w.with(|s| (s.as_ptr() as usize, s.len())));
        assert_eq!(slot.0 % 64, 0);
        assert!(slot.1 >= 7);
        assert!(c.as_ptr() as usize + 4 * c.len() <= slot.0);
        assert!(slot.0 + 4 * slot.1 <= base + 4 * len);
        a.fill(1.0);
        c.fill(2.0);
        assert!(a.iter().all(|&v| v == 1.0));
        // Taking more than the layout declared is an error, not a panic.
        assert!(matches!(ws.take(1 << 20), Err(Error::BufferSize { .. })));
    }
}

#[test]
fn short_buffers_and_larger_pools_are_rejected() {
    let mut l = WorkspaceLayout::new(2);
    l.region(100).per_worker(3);
    let mut buf = vec![0.0f32; l.len() - 1];
    let e = Workspace::new(&mut buf, &l).unwrap_err();
    assert_eq!(
        e,
        Error::BufferSize {
            name: "workspace",
            expected: l.len(),
            actual: l.len() - 1
        }
    );
    let mut buf = vec![0.0f32; l.len()];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let e = pool.install(|| Workspace::new(&mut buf, &l).map(|_| ()));
    assert!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    // Per-call regions only: any pool size will do.
    let mut calls = WorkspaceLayout::new(1);
    calls.region(100);
    let mut buf = vec![0.0f32; calls.len()];
    assert!(pool.install(|| Workspace::new(&mut buf, &calls).is_ok()));
    // An empty layout needs nothing and fits any pool.
    let empty = WorkspaceLayout::new(1);
    assert_eq!(empty.len(), 0);
    assert!(pool.install(|| Workspace::new(&mut [], &empty).is_ok()));
}

#[test]
fn every_worker_gets_its_own_slot() {
    use rayon::prelude::*;
    let threads = 4;
    let mut l = WorkspaceLayout::new(threads);
    l.per_worker(10);
    let mut buf = vec![0.0f32; l.len()];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let sums: Vec<f32> = pool.install(|| {
        let mut ws = Workspace::new(&mut buf, &l).unwrap();
        let slots = ws.per_worker(10).unwrap();
        (0..200)
            .into_par_iter()
            .map(|i| {
                slots.with(|s| {
                    s.fill(i as f32);
                    // Another task on the same slot would show up here.
                    std::thread::yield_now();
                    s.iter().sum::<f32>()
                })
            })
            .collect()
    });
    for (i, s) in sums.iter().enumerate() {
        assert_eq!(*s, 10.0 * i as f32);
    }
}

#[test]
fn huge_layouts_saturate_and_their_allocation_is_an_error() {
    for floats in [usize::MAX, usize::MAX - 3] {
        let mut l = WorkspaceLayout::new(2);
        l.region(floats);
        assert_eq!(l.len(), usize::MAX, "{floats}");
    }
    for floats in [usize::MAX, usize::MAX / 2 + 1] {
        let mut l = WorkspaceLayout::new(3);
        l.region(1).per_worker(floats);
        assert_eq!(l.len(), usize::MAX, "{floats}");
    }
    let r = try_with_reused(usize::MAX, |_| Ok(()));
    assert!(matches!(r, Err(Error::Overflow(_))), "{r:?}");
    // 2^45 floats (128 TiB, the whole 47-bit address space): refused, not aborted.
    let r = try_with_reused(1 << 45, |_| Ok(()));
    assert!(matches!(r, Err(Error::OutOfMemory(_))), "{r:?}");
    // The kept buffer survives a refused request.
    try_with_reused(64, |ws| {
        ws.fill(1.0);
        Ok(())
    })
    .unwrap();
    assert!(try_with_reused(1 << 45, |_| Ok(())).is_err());
    try_with_reused(64, |ws| {
        assert_eq!(ws.len(), 64);
        Ok(())
    })
    .unwrap();
}
