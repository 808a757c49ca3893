//! Tests of `simd` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::simd::*;

struct ExpAll<'a>(&'a [f32], &'a mut [f32]);
impl SimdKernel for ExpAll<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        for (x, y) in self.0.chunks(S::LANES).zip(self.1.chunks_mut(S::LANES)) {
            let v = s.load_upto(x);
            s.store_upto(y, s.exp(v));
        }
    }
}

/// `(σ(x), x·2^n)` of every lane: the logistic function and `mul_pow2i`.
struct SigmoidAll<'a>(&'a [f32], &'a mut [f32], &'a [f32], &'a mut [f32]);
impl SimdKernel for SigmoidAll<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let chunks = self.0.chunks(S::LANES).zip(self.1.chunks_mut(S::LANES));
        for (x, y) in chunks {
            s.store_upto(y, s.sigmoid(s.load_upto(x)));
        }
        let chunks = self.2.chunks(S::LANES).zip(self.3.chunks_mut(S::LANES));
        for (n, y) in chunks {
            let n = s.load_upto(n);
            s.store_upto(y, s.mul_pow2i(s.splat(1.5), n));
        }
    }
}

struct Ops<'a>(&'a [f32], &'a [f32], &'a mut [f32]);
impl SimdKernel for Ops<'_> {
    type Output = f32;
    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> f32 {
        let mut total = s.zero();
        for ((a, b), o) in self
            .0
            .chunks(S::LANES)
            .zip(self.1.chunks(S::LANES))
            .zip(self.2.chunks_mut(S::LANES))
        {
            let (a, b) = (s.load_upto(a), s.load_upto(b));
            // (a*b + a) / 2 - min(a,b) + max(a,b)
            let v = s.mul_add(a, b, a);
            let v = s.div(v, s.splat(2.0));
            let v = s.add(s.sub(v, s.min(a, b)), s.max(a, b));
            s.store_upto(o, v);
            total = s.add(total, v);
        }
        s.reduce_sum(total)
    }
}

#[test]
fn every_level_agrees_with_scalar_math() {
    let n = 67;
    let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let b: Vec<f32> = (0..n)
        .map(|i| (i as f32 * 0.11).cos() * 2.0 - 0.5)
        .collect();
    let want: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&a, &b)| {
            let (a, b) = (a as f64, b as f64);
            (a * b + a) / 2.0 - a.min(b) + a.max(b)
        })
        .collect();
    for level in SimdLevel::available() {
        let mut out = vec![0.0; n];
        let total = dispatch(level, Ops(&a, &b, &mut out));
        for (o, w) in out.iter().zip(&want) {
            assert!((*o as f64 - w).abs() < 1e-5, "{level}: {o} vs {w}");
        }
        let wt: f64 = want.iter().sum();
        assert!((total as f64 - wt).abs() < 1e-3, "{level}: {total} vs {wt}");
    }
}

#[test]
fn exp_is_accurate_on_every_level() {
    let xs: Vec<f32> = (0..2001).map(|i| -90.0 + i as f32 * 0.09).collect();
    for level in SimdLevel::available() {
        let mut ys = vec![0.0; xs.len()];
        dispatch(level, ExpAll(&xs, &mut ys));
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = (x as f64).exp();
            if x < -87.3 {
                assert!(y.abs() < 1e-37, "{level}: exp({x}) = {y}");
            } else if x <= 88.3 {
                let rel = ((y as f64 - want) / want).abs();
                assert!(
                    rel < 4e-7,
                    "{level}: exp({x}) = {y}, want {want}, rel {rel}"
                );
            }
        }
    }
}

#[test]
fn sigmoid_is_accurate_on_every_level() {
    // Dense near 0 (where n = 0 and σ ≈ 1/2), then out to beyond the clamps.
    let mut xs: Vec<f32> = (0..4001).map(|i| -2.0 + i as f32 * 0.001).collect();
    xs.extend((0..2001).map(|i| -100.0 + i as f32 * 0.1));
    xs.extend([-1e30, -88.5, 87.5, 1e30, f32::MIN_POSITIVE, -0.0]);
    let ns: Vec<f32> = (-126..=126).map(|n| n as f32).collect();
    for level in SimdLevel::available() {
        let (mut ys, mut ps) = (vec![0.0; xs.len()], vec![0.0; ns.len()]);
        dispatch(level, SigmoidAll(&xs, &mut ys, &ns, &mut ps));
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            let rel = ((y as f64 - want) / want).abs();
            // 2 ulp where σ is a normal float; below that, absolute.
            let ok = rel < 2.4e-7 || (want < 1e-37 && y.abs() < 1e-37);
            assert!(ok, "{level}: sigmoid({x}) = {y}, want {want}, rel {rel}");
            assert!((0.0..=1.0).contains(&y), "{level}: sigmoid({x}) = {y}");
        }
        for (&n, &p) in ns.iter().zip(&ps) {
            assert_eq!(p, 1.5 * 2f32.powi(n as i32), "{level}: 1.5·2^{n}");
        }
    }
}

#[test]
fn with_level_caps_and_restores() {
    let outer = active();
    with_level(SimdLevel::Scalar, || {
        assert_eq!(active(), SimdLevel::Scalar);
        with_level(SimdLevel::Avx512, || assert!(active() <= detected()));
        assert_eq!(active(), SimdLevel::Scalar);
    });
    assert_eq!(active(), outer);
}

#[test]
fn level_names_round_trip() {
    for l in SimdLevel::ALL {
        assert_eq!(l.name().parse::<SimdLevel>().unwrap(), l);
    }
    assert!("sse9".parse::<SimdLevel>().is_err());
}
