//! The portable path: the `wide` crate's 8-lane vectors.

use super::{Microkernel, Simd, SimdLevel};
use wide::{f32x8, i32x8};

/// Portable token (8 lanes, `wide::f32x8`); always available.
#[derive(Copy, Clone, Debug, Default)]
pub struct Portable;

impl Simd for Portable {
    const LANES: usize = 8;
    const LEVEL: SimdLevel = SimdLevel::Portable;
    type V = f32x8;

    #[inline(always)]
    fn zero(self) -> f32x8 {
        f32x8::ZERO
    }
    #[inline(always)]
    fn splat(self, x: f32) -> f32x8 {
        f32x8::splat(x)
    }
    #[inline(always)]
    unsafe fn load_ptr(self, p: *const f32) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable floats; unaligned read.
        f32x8::from(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store_ptr(self, p: *mut f32, v: f32x8) {
        // SAFETY: the caller guarantees 8 writable floats; unaligned write.
        unsafe { p.cast::<[f32; 8]>().write_unaligned(v.to_array()) }
    }
    #[inline(always)]
    unsafe fn load_partial_ptr(self, p: *const f32, n: usize) -> f32x8 {
        let mut a = [0.0f32; 8];
        // SAFETY: the caller guarantees n readable floats; n is capped at 8.
        unsafe { std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n.min(8)) };
        f32x8::from(a)
    }
    #[inline(always)]
    unsafe fn store_partial_ptr(self, p: *mut f32, v: f32x8, n: usize) {
        let a = v.to_array();
        // SAFETY: the caller guarantees n writable floats; n is capped at 8.
        unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), p, n.min(8)) };
    }
    #[inline(always)]
    fn add(self, a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32x8, b: f32x8) -> f32x8 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32x8, b: f32x8) -> f32x8 {
        a / b
    }
    #[inline(always)]
    fn mul_add(self, a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn max(self, a: f32x8, b: f32x8) -> f32x8 {
        a.fast_max(b)
    }
    #[inline(always)]
    fn min(self, a: f32x8, b: f32x8) -> f32x8 {
        a.fast_min(b)
    }
    #[inline(always)]
    fn sqrt(self, a: f32x8) -> f32x8 {
        a.sqrt()
    }
    #[inline(always)]
    fn round(self, a: f32x8) -> f32x8 {
        a.round()
    }
    #[inline(always)]
    fn pow2i(self, n: f32x8) -> f32x8 {
        let bits: i32x8 = (n.round_int() + i32x8::splat(127)) << 23;
        bytemuck::cast(bits)
    }
    #[inline(always)]
    fn reduce_sum(self, a: f32x8) -> f32 {
        a.reduce_add()
    }
    #[inline(never)]
    unsafe fn call<K: Microkernel>(a: &K::Args<'_>) {
        // SAFETY: forwarded from the caller (K's contract; this level runs anywhere).
        unsafe { K::run(Portable, a) }
    }
}
