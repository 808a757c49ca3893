//! SIMD abstraction and runtime dispatch.
//!
//! Every hot kernel is written once, generic over the [`Simd`] trait, and run through
//! [`dispatch`], which picks an instantiation compiled with the right target features:
//!
//! | [`SimdLevel`] | lanes | instructions |
//! |---|---|---|
//! | `Avx512` | 16 | AVX-512F/VL/DQ/BW + FMA, chosen at run time |
//! | `Avx2` | 8 | AVX2 + FMA, chosen at run time |
//! | `Portable` | 8 | the `wide` crate (whatever the build's target features allow) |
//! | `Scalar` | 1 | plain `f32` arithmetic |
//!
//! A plain `cargo build --release` runs AVX-512 code on an AVX-512 CPU: the level is
//! detected once with `is_x86_feature_detected!`. The environment variable
//! `EFFNET_SIMD=avx512|avx2|portable|scalar` caps the level for the whole process, and
//! [`with_level`] caps it for one thread for the duration of a closure (what the tests
//! use to run every path on one machine). Kernels read [`active`] once on the calling
//! thread and carry the level into their worker tasks, so a capped level also holds
//! inside `rayon` pools.
//!
//! # Writing a kernel
//! Implement [`SimdKernel`] for a small struct holding the kernel's arguments and mark
//! `run` — and every generic helper it calls — `#[inline(always)]`, so that the whole
//! call tree is compiled inside the target-feature trampoline of each level:
//!
//! ```
//! use effnet::simd::{self, Simd, SimdKernel};
//!
//! struct Sum<'a>(&'a [f32]);
//! impl SimdKernel for Sum<'_> {
//!     type Output = f32;
//!     #[inline(always)]
//!     fn run<S: Simd>(self, s: S) -> f32 {
//!         let mut acc = s.zero();
//!         let mut chunks = self.0.chunks_exact(S::LANES);
//!         for c in &mut chunks {
//!             acc = s.add(acc, s.load(c));
//!         }
//!         let rest = chunks.remainder();
//!         s.reduce_sum(acc) + rest.iter().sum::<f32>()
//!     }
//! }
//! let x: Vec<f32> = (0..37).map(|i| i as f32).collect();
//! assert_eq!(simd::dispatch(simd::active(), Sum(&x)), 666.0);
//! ```

mod portable;
mod scalar;
mod ukernel;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use portable::Portable;
pub use scalar::Scalar;
pub use ukernel::{Microkernel, PerLevel, Ukernel};
#[cfg(target_arch = "x86_64")]
pub use x86::{Avx2, Avx512};

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction-set level, ordered from the most portable to the widest.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// One `f32` at a time, no vector instructions: the slowest, simplest path.
    Scalar,
    /// The `wide` crate's 8-lane vectors, with the instructions the build targets.
    Portable,
    /// 256-bit AVX2 with FMA, selected at run time.
    Avx2,
    /// 512-bit AVX-512 (F, VL, DQ, BW) with FMA, selected at run time.
    Avx512,
}

impl SimdLevel {
    /// All levels, lowest first.
    pub const ALL: [SimdLevel; 4] = [
        SimdLevel::Scalar,
        SimdLevel::Portable,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
    ];

    /// The lowercase name used by `EFFNET_SIMD` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// Number of `f32` lanes in one vector at this level.
    pub fn lanes(self) -> usize {
        match self {
            SimdLevel::Scalar => 1,
            SimdLevel::Portable | SimdLevel::Avx2 => 8,
            SimdLevel::Avx512 => 16,
        }
    }

    /// The levels this CPU can run, lowest first.
    pub fn available() -> Vec<SimdLevel> {
        Self::ALL.into_iter().filter(|l| *l <= detected()).collect()
    }
}

impl fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SimdLevel {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(SimdLevel::Scalar),
            "portable" | "wide" => Ok(SimdLevel::Portable),
            "avx2" => Ok(SimdLevel::Avx2),
            "avx512" | "avx-512" => Ok(SimdLevel::Avx512),
            other => Err(crate::Error::InvalidArgument(format!(
                "unknown SIMD level {other:?} (expected avx512, avx2, portable or scalar)"
            ))),
        }
    }
}

/// The widest level this CPU supports (detected once).
pub fn detected() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    *DETECTED.get_or_init(detect_cpu)
}

/// Whether this CPU's AVX-512 units run a 512-bit operation at full width (Intel's
/// AVX-512 cores, AMD's Zen 5) rather than as two 256-bit halves (AMD's Zen 4, whose
/// AVX-512 has AVX2's multiply-add throughput): read once from CPUID; `true` off
/// x86-64 and on CPUs without AVX-512, where nothing asks.
pub fn avx512_full_width() -> bool {
    static FULL: OnceLock<bool> = OnceLock::new();
    *FULL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            x86::avx512_full_width()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            true
        }
    })
}

fn detect_cpu() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if x86::Avx512::try_new().is_some() {
            return SimdLevel::Avx512;
        }
        if x86::Avx2::try_new().is_some() {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Portable
}

/// `EFFNET_SIMD` as read once: unset (`Ok(None)`), a level, or what is wrong with a
/// value that names none.
fn env_setting() -> &'static Result<Option<SimdLevel>, String> {
    static ENV: OnceLock<Result<Option<SimdLevel>, String>> = OnceLock::new();
    ENV.get_or_init(|| match std::env::var("EFFNET_SIMD") {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!(
            "EFFNET_SIMD = {v:?} is not UTF-8 (expected avx512, avx2, portable or scalar)"
        )),
        Ok(v) => v.parse().map(Some).map_err(|_| {
            format!(
                "EFFNET_SIMD = {v:?} is not a SIMD level (expected avx512, avx2, portable \
                 or scalar)"
            )
        }),
    })
}

/// What is wrong with `EFFNET_SIMD` when it is set to a value that names no level
/// (read once), e.g. `EFFNET_SIMD = "avx3" is not a SIMD level (expected …)`. The C
/// library refuses to make a context then and the `effnet` CLI exits with it;
/// [`env_override`] ignores such a value (after one warning on stderr).
pub fn env_error() -> Option<&'static str> {
    env_setting().as_ref().err().map(String::as_str)
}

/// The level forced by `EFFNET_SIMD`, if set (read once). An unknown value is ignored,
/// with one warning on stderr the first time a kernel asks (see [`env_error`] to
/// reject it instead).
pub fn env_override() -> Option<SimdLevel> {
    match env_setting() {
        Ok(level) => *level,
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("effnet: ignoring {e}"));
            None
        }
    }
}

thread_local! {
    static THREAD_CAP: Cell<Option<SimdLevel>> = const { Cell::new(None) };
}

/// The level kernels called from this thread use now: the detected level, capped by
/// `EFFNET_SIMD` and by any enclosing [`with_level`].
pub fn active() -> SimdLevel {
    let mut level = detected();
    if let Some(cap) = env_override() {
        level = level.min(cap);
    }
    if let Some(cap) = THREAD_CAP.with(Cell::get) {
        level = level.min(cap);
    }
    level
}

/// Runs `f` with the SIMD level of this thread capped at `level` (a level above what
/// the CPU supports falls back to the detected one). Kernels called inside `f` carry
/// the capped level into their worker threads.
pub fn with_level<R>(level: SimdLevel, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<SimdLevel>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_CAP.with(|c| c.replace(Some(level))));
    f()
}

/// A vector instruction set: a zero-sized token whose existence proves the CPU
/// supports it. All arithmetic is lane-wise on `f32`.
///
/// Pointer-based loads and stores are `unsafe`: the caller guarantees that
/// `LANES` (or `n` for the partial forms) elements are readable or writable.
/// Slice-based forms check the length.
pub trait Simd: Copy + Send + Sync + 'static {
    /// Number of `f32` lanes in [`Simd::V`].
    const LANES: usize;
    /// Which level this is.
    const LEVEL: SimdLevel;
    /// One vector of `LANES` floats.
    type V: Copy + Send + Sync;

    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// All lanes `x`.
    fn splat(self, x: f32) -> Self::V;
    /// Loads `LANES` floats from `p` (no alignment needed).
    ///
    /// # Safety
    /// `p..p+LANES` must be readable.
    unsafe fn load_ptr(self, p: *const f32) -> Self::V;
    /// Stores `LANES` floats to `p` (no alignment needed).
    ///
    /// # Safety
    /// `p..p+LANES` must be writable.
    unsafe fn store_ptr(self, p: *mut f32, v: Self::V);
    /// Loads the first `n < LANES` floats from `p`; the other lanes are zero.
    ///
    /// # Safety
    /// `p..p+n` must be readable.
    unsafe fn load_partial_ptr(self, p: *const f32, n: usize) -> Self::V;
    /// Stores the first `n <= LANES` lanes of `v` to `p`.
    ///
    /// # Safety
    /// `p..p+n` must be writable.
    unsafe fn store_partial_ptr(self, p: *mut f32, v: Self::V, n: usize);

    /// `a + b`
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a - b`
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b`
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a / b`
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (fused where the level has FMA)
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise maximum.
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise minimum.
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise square root (IEEE-exact on every level).
    fn sqrt(self, a: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for lanes holding integral values `n` in `-126..=127`.
    fn pow2i(self, n: Self::V) -> Self::V;
    /// `p · 2^n` for lanes of `n` holding integral values in `-126..=127`: the
    /// product with [`Simd::pow2i`] (one instruction on AVX-512), the same bits.
    #[inline(always)]
    fn mul_pow2i(self, p: Self::V, n: Self::V) -> Self::V {
        self.mul(p, self.pow2i(n))
    }
    /// Sum of all lanes.
    fn reduce_sum(self, a: Self::V) -> f32;

    /// Runs microkernel `K` at this level in a function of its own, compiled with the
    /// level's target features and never inlined: what the microkernel tables hold
    /// (`S::call::<K>` is a [`Ukernel`]; see [`Microkernel`]).
    ///
    /// # Safety
    /// The CPU must support this level, and `a` must satisfy `K`'s contract.
    unsafe fn call<K: Microkernel>(a: &K::Args<'_>);

    /// Loads `LANES` floats from the start of `s`.
    ///
    /// # Panics
    /// If `s` is shorter than `LANES`.
    #[inline(always)]
    fn load(self, s: &[f32]) -> Self::V {
        assert!(s.len() >= Self::LANES);
        // SAFETY: the length was just checked.
        unsafe { self.load_ptr(s.as_ptr()) }
    }
    /// Stores `LANES` floats to the start of `s`.
    ///
    /// # Panics
    /// If `s` is shorter than `LANES`.
    #[inline(always)]
    fn store(self, s: &mut [f32], v: Self::V) {
        assert!(s.len() >= Self::LANES);
        // SAFETY: the length was just checked.
        unsafe { self.store_ptr(s.as_mut_ptr(), v) }
    }
    /// Loads `min(s.len(), LANES)` floats; missing lanes are zero.
    #[inline(always)]
    fn load_upto(self, s: &[f32]) -> Self::V {
        // SAFETY: exactly the elements inside the slice are read.
        unsafe {
            if s.len() >= Self::LANES {
                self.load_ptr(s.as_ptr())
            } else {
                self.load_partial_ptr(s.as_ptr(), s.len())
            }
        }
    }
    /// Stores the first `min(s.len(), LANES)` lanes of `v`.
    #[inline(always)]
    fn store_upto(self, s: &mut [f32], v: Self::V) {
        // SAFETY: exactly the elements inside the slice are written.
        unsafe {
            if s.len() >= Self::LANES {
                self.store_ptr(s.as_mut_ptr(), v)
            } else {
                self.store_partial_ptr(s.as_mut_ptr(), v, s.len())
            }
        }
    }

    /// `e^x`, relative error below 2 ulp over the `f32` range (overflow saturates to
    /// `f32::MAX`-ish values near 88.7, underflow flushes to 0 below −87.3).
    #[inline(always)]
    fn exp(self, x: Self::V) -> Self::V {
        let x = self.min(self.max(x, self.splat(-87.336_54)), self.splat(88.376_26));
        let n = self.round(self.mul(x, self.splat(std::f32::consts::LOG2_E)));
        // x - n·ln2 in two steps (Cody–Waite) to keep the reduced argument exact.
        let r = self.mul_add(n, self.splat(-0.693_145_75), x);
        let r = self.mul_add(n, self.splat(-1.428_606_8e-6), r);
        // Taylor/minimax polynomial of e^r on |r| <= ln2/2.
        let mut p = self.splat(1.987_569_1e-4);
        p = self.mul_add(p, r, self.splat(1.398_199_9e-3));
        p = self.mul_add(p, r, self.splat(8.333_452e-3));
        p = self.mul_add(p, r, self.splat(4.166_579_6e-2));
        p = self.mul_add(p, r, self.splat(0.166_666_57));
        p = self.mul_add(p, r, self.splat(0.5));
        p = self.mul_add(p, self.mul(r, r), r);
        p = self.add(p, self.splat(1.0));
        self.mul(p, self.pow2i(n))
    }

    /// The logistic function `1 / (1 + e^−x)`, within 2 ulp of the exact value.
    ///
    /// `e^−x` is computed directly (no negation): `n = round(−x·log₂e)`, `q = x + n·ln 2`
    /// in two steps (Cody–Waite), so `e^−x = 2^n · e^−q` with `|q| ≤ ln2/2`, where a
    /// degree-6 polynomial fitted to `e^−q`'s relative error (below 3.1e-9) is
    /// enough for `f32`. Every activation's swish and sigmoid, forward and backward,
    /// use it: the epilogues of the k×k convolutions spend more instructions here
    /// than in the convolution itself, hence the short form.
    #[inline(always)]
    fn sigmoid(self, x: Self::V) -> Self::V {
        let one = self.splat(1.0);
        // e^−x stays finite and normal for x in [−88.37, 87.33]; beyond, σ is 0 or 1
        // to f32 precision either way.
        let t = self.min(self.max(x, self.splat(-88.376_26)), self.splat(87.336_54));
        let n = self.round(self.mul(t, self.splat(-std::f32::consts::LOG2_E)));
        let q = self.mul_add(n, self.splat(0.693_145_75), t);
        let q = self.mul_add(n, self.splat(1.428_606_8e-6), q);
        let mut p = self.splat(1.381_458e-3);
        p = self.mul_add(p, q, self.splat(-8.368_705e-3));
        p = self.mul_add(p, q, self.splat(4.166_839e-2));
        p = self.mul_add(p, q, self.splat(-0.166_665_21));
        p = self.mul_add(p, q, self.splat(0.499_999_94));
        p = self.mul_add(p, q, self.splat(-1.0));
        p = self.mul_add(p, q, one);
        let e = self.mul_pow2i(p, n);
        self.div(one, self.add(one, e))
    }
}

/// A kernel body generic over the instruction set; see the module docs.
pub trait SimdKernel {
    /// What the kernel returns.
    type Output;
    /// Runs the kernel with instruction set `S`. Implementations must be
    /// `#[inline(always)]` so that they compile with the caller's target features.
    fn run<S: Simd>(self, s: S) -> Self::Output;
}

/// Loads `n` floats at `p` (all `LANES` when `n ≥ LANES`; missing lanes are zero): a
/// free function, so that microkernels inline it under their target features where a
/// closure would not be.
///
/// # Safety
/// `min(n, LANES)` floats must be readable at `p`.
#[inline(always)]
pub(crate) unsafe fn load_n<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
    // SAFETY: forwarded from the caller.
    unsafe {
        if n >= S::LANES {
            s.load_ptr(p)
        } else {
            s.load_partial_ptr(p, n)
        }
    }
}

/// The vector width (`f32` lanes) [`dispatch`] runs a kernel with at `level`: the
/// level clamped to what the CPU supports (and, off x86-64, to the portable level).
/// Kernels that size buffers outside the dispatched body use this, so the size agrees
/// with `S::LANES` inside it.
pub fn dispatch_lanes(level: SimdLevel) -> usize {
    let level = level.min(detected());
    #[cfg(not(target_arch = "x86_64"))]
    let level = level.min(SimdLevel::Portable);
    level.lanes()
}

/// Runs `kernel` at `level` (clamped to what the CPU supports).
#[inline]
pub fn dispatch<K: SimdKernel>(level: SimdLevel, kernel: K) -> K::Output {
    let level = level.min(detected());
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            let s = Avx512::try_new().expect("AVX-512 was detected");
            x86::run_avx512(s, kernel)
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => {
            let s = Avx2::try_new().expect("AVX2 was detected");
            x86::run_avx2(s, kernel)
        }
        SimdLevel::Scalar => kernel.run(Scalar),
        _ => kernel.run(Portable),
    }
}
