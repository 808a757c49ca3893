//! AVX-512 and AVX2 instantiations, selected at run time.

use super::{Microkernel, Simd, SimdKernel, SimdLevel};
use std::arch::x86_64::*;

/// AVX-512 token (16 lanes); only constructible on a CPU with AVX-512F/VL/DQ/BW and FMA.
#[derive(Copy, Clone, Debug)]
pub struct Avx512(());

/// AVX2 token (8 lanes); only constructible on a CPU with AVX2 and FMA.
#[derive(Copy, Clone, Debug)]
pub struct Avx2(());

impl Avx512 {
    /// The token, if this CPU supports the instructions.
    pub fn try_new() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma"))
        .then_some(Avx512(()))
    }
}

impl Avx2 {
    /// The token, if this CPU supports the instructions.
    pub fn try_new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

/// Whether this CPU runs a 512-bit vector operation at full width, as Intel's AVX-512
/// cores do, rather than as two 256-bit halves, as AMD's Zen 4 (family 19h) does: read
/// from CPUID. Kernels whose AVX-512 variant wins only at full width (the grouped
/// sliding-window tiles) check it when they are planned.
pub(super) fn avx512_full_width() -> bool {
    // Leaves 0 (vendor) and 1 (family) exist on every x86-64 CPU.
    let (vendor, version) = (__cpuid(0), __cpuid(1));
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    // Family: base (bits 8–11), plus the extended family (bits 20–27) when the base is 15.
    let base = (version.eax >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((version.eax >> 20) & 0xff)
    } else {
        base
    };
    !(amd && family == 0x19)
}

/// Runs `k` compiled with AVX-512 enabled.
#[inline]
pub(super) fn run_avx512<K: SimdKernel>(s: Avx512, k: K) -> K::Output {
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    fn inner<K: SimdKernel>(s: Avx512, k: K) -> K::Output {
        k.run(s)
    }
    // SAFETY: the token exists only when the features were detected.
    unsafe { inner(s, k) }
}

/// Runs `k` compiled with AVX2 and FMA enabled.
#[inline]
pub(super) fn run_avx2<K: SimdKernel>(s: Avx2, k: K) -> K::Output {
    #[target_feature(enable = "avx2,fma")]
    fn inner<K: SimdKernel>(s: Avx2, k: K) -> K::Output {
        k.run(s)
    }
    // SAFETY: the token exists only when the features were detected.
    unsafe { inner(s, k) }
}

// SAFETY (for every intrinsic call below): the token proves the CPU has the features,
// and the methods are `#[inline(always)]`, so they are compiled inside the
// target-feature trampolines above.
impl Simd for Avx512 {
    const LANES: usize = 16;
    const LEVEL: SimdLevel = SimdLevel::Avx512;
    type V = __m512;

    #[inline(always)]
    fn zero(self) -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_partial_ptr(self, p: *const f32, n: usize) -> __m512 {
        let mask = ((1u32 << n.min(16)) - 1) as __mmask16;
        // SAFETY: masked-off lanes are not accessed.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }
    #[inline(always)]
    unsafe fn store_partial_ptr(self, p: *mut f32, v: __m512, n: usize) {
        let mask = ((1u32 << n.min(16)) - 1) as __mmask16;
        // SAFETY: masked-off lanes are not accessed.
        unsafe { _mm512_mask_storeu_ps(p, mask, v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m512) -> __m512 {
        unsafe { _mm512_sqrt_ps(a) }
    }
    #[inline(always)]
    fn round(self, a: __m512) -> __m512 {
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn pow2i(self, n: __m512) -> __m512 {
        unsafe {
            let i = _mm512_cvtps_epi32(n);
            let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(i, _mm512_set1_epi32(127)));
            _mm512_castsi512_ps(bits)
        }
    }
    #[inline(always)]
    fn mul_pow2i(self, p: __m512, n: __m512) -> __m512 {
        // `scalef` multiplies by 2^floor(n): for integral n in range, the product
        // with `pow2i`, rounded the same way.
        unsafe { _mm512_scalef_ps(p, n) }
    }
    #[inline(always)]
    fn reduce_sum(self, a: __m512) -> f32 {
        unsafe { _mm512_reduce_add_ps(a) }
    }
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
    #[inline(never)]
    unsafe fn call<K: Microkernel>(a: &K::Args<'_>) {
        // SAFETY: the caller guarantees the CPU has the features and K's contract.
        unsafe { K::run(Avx512(()), a) }
    }
}

/// Lane masks for AVX2 partial loads: row `n` enables the first `n` lanes.
static AVX2_MASKS: [[i32; 8]; 9] = {
    let mut m = [[0i32; 8]; 9];
    let mut n = 0;
    while n <= 8 {
        let mut i = 0;
        while i < n {
            m[n][i] = -1;
            i += 1;
        }
        n += 1;
    }
    m
};

impl Simd for Avx2 {
    const LANES: usize = 8;
    const LEVEL: SimdLevel = SimdLevel::Avx2;
    type V = __m256;

    #[inline(always)]
    fn zero(self) -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_partial_ptr(self, p: *const f32, n: usize) -> __m256 {
        // SAFETY: masked-off lanes are not accessed; the mask row is in bounds.
        unsafe {
            let mask = _mm256_loadu_si256(AVX2_MASKS[n.min(8)].as_ptr().cast());
            _mm256_maskload_ps(p, mask)
        }
    }
    #[inline(always)]
    unsafe fn store_partial_ptr(self, p: *mut f32, v: __m256, n: usize) {
        // SAFETY: masked-off lanes are not accessed; the mask row is in bounds.
        unsafe {
            let mask = _mm256_loadu_si256(AVX2_MASKS[n.min(8)].as_ptr().cast());
            _mm256_maskstore_ps(p, mask, v)
        }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m256) -> __m256 {
        unsafe { _mm256_sqrt_ps(a) }
    }
    #[inline(always)]
    fn round(self, a: __m256) -> __m256 {
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn pow2i(self, n: __m256) -> __m256 {
        unsafe {
            let i = _mm256_cvtps_epi32(n);
            let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(i, _mm256_set1_epi32(127)));
            _mm256_castsi256_ps(bits)
        }
    }
    #[inline(always)]
    fn reduce_sum(self, a: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(a);
            let hi = _mm256_extractf128_ps::<1>(a);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn call<K: Microkernel>(a: &K::Args<'_>) {
        // SAFETY: the caller guarantees the CPU has the features and K's contract.
        unsafe { K::run(Avx2(()), a) }
    }
}
