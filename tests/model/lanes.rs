//! The image lanes of the prepared inference network (`effnet::model::lanes`): each
//! item lands in its own chunk on any lane count, a lane's kernels see one thread, and
//! the first error stops the lanes.

use effnet::Error;
use effnet::model::lanes::Lanes;

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
