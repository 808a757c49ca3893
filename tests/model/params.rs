//! Tests of `model::params` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::model::params::*;

#[test]
fn timm_layouts_round_trip() {
    let mut s = ParamStore::new();
    s.add("c.weight".into(), vec![3, 3, 2, 5], ParamKind::ConvFanIn)
        .unwrap();
    s.add("fc.weight".into(), vec![4, 6], ParamKind::Dense)
        .unwrap();
    s.add("bn.running_var".into(), vec![5], ParamKind::RunningVar)
        .unwrap();
    s.init(3);
    let t = s.to_timm(false);
    assert_eq!(t["c.weight"].shape, vec![5, 2, 3, 3]);
    assert_eq!(t["fc.weight"].shape, vec![6, 4]);
    // element (kh=1, kw=2, ci=1, co=4)
    assert_eq!(
        t["c.weight"].data[((4 * 2 + 1) * 3 + 1) * 3 + 2],
        s.values[0][((3 + 2) * 2 + 1) * 5 + 4]
    );
    let mut s2 = s.clone();
    s2.values.iter_mut().for_each(|v| v.fill(0.0));
    s2.load_timm(&t).unwrap();
    assert_eq!(s2.values, s.values);
    assert!(s.values[2].iter().all(|&v| v == 1.0));
    let mut bad = t.clone();
    bad.remove("fc.weight");
    assert!(s2.load_timm(&bad).is_err());
}

#[test]
fn init_statistics() {
    let mut s = ParamStore::new();
    s.add("w".into(), vec![1, 1, 64, 256], ParamKind::ConvFanOut)
        .unwrap();
    s.init(1);
    let v = &s.values[0];
    let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
    assert!((var - 2.0 / 256.0).abs() < 0.1 * 2.0 / 256.0, "{var}");
}
