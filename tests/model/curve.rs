//! Tests of `report::curve` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::report::curve::*;

#[test]
fn ticks_are_round_and_cover_the_range() {
    assert_eq!(
        nice_ticks(0.0, 1.0, 5),
        vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    );
    let t = nice_ticks(0.0, 7.3, 5);
    assert_eq!(t, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
    let t = nice_ticks(0.0, 1234.0, 6);
    assert_eq!(t, vec![0.0, 500.0, 1000.0, 1500.0]);
    assert_eq!(fmt_tick(0.6000000000000001, &[0.0, 0.2]), "0.6");
    assert_eq!(fmt_tick(400.0, &[0.0, 200.0]), "400");
    assert_eq!(fmt_tick(-0.0, &[0.0, 0.5]), "0.0");
}

#[test]
fn text_round_trip_is_exact() {
    let mut c = Curve::new();
    for v in [2.297_531_4f32, 1.0e-7, f32::NAN, f32::INFINITY, 0.1] {
        c.push_loss(v);
    }
    c.push_eval(3, 0.125);
    c.push_eval(5, 0.333_333_34);
    c.push_mark(4);
    let back = Curve::from_text(&c.to_text()).unwrap();
    assert_eq!(back.evals(), c.evals());
    assert_eq!(back.marks(), c.marks());
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(back.losses()), bits(c.losses()));
    assert!(Curve::from_text("nope").is_err());
    assert!(Curve::from_text("effnet-curve 1\nloss x\n").is_err());
    assert!(Curve::from_text("effnet-curve 1\nwhat 1\n").is_err());
}
