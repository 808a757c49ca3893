//! Helpers shared by the integration tests: deterministic random data and error norms.
#![allow(dead_code)]

use effnet::simd::SimdLevel;

pub mod alloc;
pub mod conv;

/// SplitMix64: a tiny deterministic generator (no dependency, same stream everywhere).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

/// `‖got − want‖₂ / ‖want‖₂` (absolute when `want` is all zeros).
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut num = 0.0;
    let mut den = 0.0;
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// `⟨a, b⟩` in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// Every SIMD level this CPU can run.
pub fn levels() -> Vec<SimdLevel> {
    SimdLevel::available()
}

/// Runs `f` at `level` once per grouped tile choice the level has: with and without
/// the AVX-512 sliding-window rows at AVX-512 (whichever the CPU would pick), once
/// elsewhere; `f` gets the choice, for its messages.
pub fn at_level_every_tile<R>(level: SimdLevel, mut f: impl FnMut(&str) -> R) -> Vec<R> {
    use effnet::kernels::conv::with_sliding_tiles;
    if level == SimdLevel::Avx512 {
        [(true, "sliding rows"), (false, "general tiles")]
            .into_iter()
            .map(|(on, name)| {
                with_sliding_tiles(on, || effnet::simd::with_level(level, || f(name)))
            })
            .collect()
    } else {
        vec![effnet::simd::with_level(level, || f(""))]
    }
}

/// Runs `f` inside a fresh rayon pool of `threads` threads.
pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Proptest case count: `PROPTEST_CASES` from the environment, else `default`
/// (each test file sizes its default so the whole suite stays fast on 2 cores).
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `‖v‖₂`.
pub fn norm2(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `‖got − want‖₂`.
pub fn abs_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Widens to f64.
pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
