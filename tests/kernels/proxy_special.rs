//! Tests of `kernels::proxy_norm::special` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::kernels::proxy_norm::special::*;

/// Values of Python's `math.erf` / `math.erfc` (which wrap the C library's).
const ERF: [(f64, f64); 8] = [
    (0.0, 0.0),
    (1e-10, 1.1283791670955126e-10),
    (0.1, 0.1124629160182849),
    (0.5, 0.5204998778130465),
    (1.0, 0.8427007929497149),
    (1.5, 0.9661051464753108),
    (1.99, 0.995111413199617),
    (2.5, 0.999593047982555),
];
const ERFC: [(f64, f64); 6] = [
    (0.5, 0.4795001221869535),
    (2.0, 0.004677734981047265),
    (2.5, 0.0004069520174449589),
    (3.0, 2.2090496998585438e-05),
    (5.0, 1.5374597944280351e-12),
    (10.0, 2.088487583762545e-45),
];

#[test]
fn erf_and_erfc_match_known_values() {
    for (x, want) in ERF {
        let got = erf(x);
        assert!(
            (got - want).abs() <= 2e-16 + 2e-15 * want.abs(),
            "erf({x}) = {got}, want {want}"
        );
        assert_eq!(erf(-x), -got);
    }
    for (x, want) in ERFC {
        let got = erfc(x);
        assert!(
            ((got - want) / want).abs() < 1e-14,
            "erfc({x}) = {got}, want {want}"
        );
        assert!((erfc(-x) - (2.0 - want)).abs() < 1e-15);
    }
}

#[test]
fn inverses_round_trip() {
    for i in 1..2000 {
        let y = -1.0 + i as f64 / 1000.0;
        let x = erfinv(y);
        assert!((erf(x) - y).abs() < 2e-15, "erf(erfinv({y})) = {}", erf(x));
    }
    for e in 1..300 {
        let p = 10f64.powf(-(e as f64) / 10.0);
        let x = erfcinv(p);
        assert!(((erfc(x) - p) / p).abs() < 1e-13, "erfc(erfcinv({p}))");
    }
    assert_eq!(erfinv(0.0), 0.0);
    assert!(erfinv(1.0).is_infinite() && erfinv(1.5).is_nan());
}

#[test]
fn normal_quantiles() {
    // Φ⁻¹(0.975) = 1.9599639845400536, Φ⁻¹(0.0025) = −2.8070337683438042 (Python's
    // `statistics.NormalDist`).
    assert!((normal_quantile(0.975) - 1.9599639845400536).abs() < 1e-13);
    assert!((normal_quantile(0.0025) + 2.8070337683438042).abs() < 1e-13);
    assert!((normal_quantile(1e-10) + 6.361340902404056).abs() < 1e-11);
    assert_eq!(normal_quantile(0.5), 0.0);
}
