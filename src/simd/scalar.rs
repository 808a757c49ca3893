//! The scalar path: one `f32` per "vector", no vector instructions.

use super::{Microkernel, Simd, SimdLevel};

/// Scalar token (1 lane); always available.
#[derive(Copy, Clone, Debug, Default)]
pub struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    const LEVEL: SimdLevel = SimdLevel::Scalar;
    type V = f32;

    #[inline(always)]
    fn zero(self) -> f32 {
        0.0
    }
    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> f32 {
        // SAFETY: the caller guarantees one readable float.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: f32) {
        // SAFETY: the caller guarantees one writable float.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn load_partial_ptr(self, p: *const f32, n: usize) -> f32 {
        // SAFETY: read only when the caller says one float is readable.
        if n >= 1 {
            unsafe { p.read_unaligned() }
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn store_partial_ptr(self, p: *mut f32, v: f32, n: usize) {
        if n >= 1 {
            // SAFETY: written only when the caller says one float is writable.
            unsafe { p.write_unaligned(v) }
        }
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        // Unfused on purpose: `f32::mul_add` is a libm call on targets without FMA.
        a * b + c
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    #[inline(always)]
    fn sqrt(self, a: f32) -> f32 {
        a.sqrt()
    }
    #[inline(always)]
    fn round(self, a: f32) -> f32 {
        a.round_ties_even()
    }
    #[inline(always)]
    fn pow2i(self, n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) << 23) as u32)
    }
    #[inline(always)]
    fn reduce_sum(self, a: f32) -> f32 {
        a
    }
    #[inline(never)]
    unsafe fn call<K: Microkernel>(a: &K::Args<'_>) {
        // SAFETY: forwarded from the caller (K's contract; this level runs anywhere).
        unsafe { K::run(Scalar, a) }
    }
}
