//! Microkernels and their per-level tables.
//!
//! A *microkernel* is the innermost loop nest of an operator — one register tile, or one
//! run of tiles along a row — written once, generic over [`Simd`], and compiled as a
//! small function of its own for every level ([`Simd::call`]): with the level's target
//! features, never inlined into its caller. An operator's *table* (one `static` per
//! [`SimdLevel`], built by a `const fn` and held in a [`PerLevel`]) lists the entries of
//! that level — tile shapes, and the level's tile parameters — and a plan picks its
//! entries once, when it is made. The drivers around them (tiling, threads, halos,
//! packing) are ordinary code, compiled once, not once per level.
//!
//! ```
//! use effnet::simd::{Microkernel, PerLevel, Simd, SimdLevel, Ukernel};
//!
//! /// `dst[i] += src[i]` for `n` floats.
//! struct AddArgs { src: *const f32, dst: *mut f32, n: usize }
//! struct AddRun;
//! impl Microkernel for AddRun {
//!     type Args<'a> = AddArgs;
//!     #[inline(always)]
//!     unsafe fn run<S: Simd>(s: S, a: &AddArgs) {
//!         let mut i = 0;
//!         // SAFETY: the caller guarantees `n` floats at both pointers.
//!         unsafe {
//!             while i + S::LANES <= a.n {
//!                 let v = s.add(s.load_ptr(a.src.add(i)), s.load_ptr(a.dst.add(i)));
//!                 s.store_ptr(a.dst.add(i), v);
//!                 i += S::LANES;
//!             }
//!             let r = a.n - i;
//!             let v = s.add(s.load_partial_ptr(a.src.add(i), r), s.load_partial_ptr(a.dst.add(i), r));
//!             s.store_partial_ptr(a.dst.add(i), v, r);
//!         }
//!     }
//! }
//! struct Table { add: Ukernel<AddArgs> }
//! const fn table<S: Simd>() -> Table { Table { add: S::call::<AddRun> } }
//! static TABLES: PerLevel<Table> = effnet::per_level!(table, table, table);
//!
//! let (src, mut dst) = (vec![1.0f32; 37], vec![2.0f32; 37]);
//! let t = TABLES.get(SimdLevel::Avx512); // clamped to what this CPU runs
//! let a = AddArgs { src: src.as_ptr(), dst: dst.as_mut_ptr(), n: 37 };
//! // SAFETY: `get` only hands out entries this CPU supports; 37 floats at both pointers.
//! unsafe { (t.add)(&a) };
//! assert!(dst.iter().all(|&v| v == 3.0));
//! ```

use super::{Simd, SimdLevel, detected};

/// A microkernel body: see the module docs.
pub trait Microkernel {
    /// The arguments: a plain struct of pointers, strides and counts.
    type Args<'a>;
    /// The body at level `S`. Implementations (and every generic helper they call)
    /// must be `#[inline(always)]`, so that the whole body is compiled inside the
    /// level's function ([`Simd::call`]).
    ///
    /// # Safety
    /// Whatever the microkernel documents for its arguments (typically: every address
    /// they describe is in bounds, and written elements are exclusive to the call).
    unsafe fn run<S: Simd>(s: S, a: &Self::Args<'_>);
}

/// A table entry: a microkernel compiled for one level (see [`Simd::call`]).
///
/// # Safety (of a call)
/// The entry must come from a table of a level the CPU supports (what
/// [`PerLevel::get`] hands out), and the arguments must satisfy the microkernel's
/// contract.
pub type Ukernel<A> = unsafe fn(&A);

/// One value per SIMD level — the microkernel tables of an operator. Build it with
/// [`per_level!`](crate::per_level) from `const fn` builders, so that a level without
/// the instructions (AVX on other architectures) gets the portable table.
pub struct PerLevel<T> {
    /// For [`SimdLevel::Scalar`].
    pub scalar: T,
    /// For [`SimdLevel::Portable`] (and the x86 levels on other architectures).
    pub portable: T,
    /// For [`SimdLevel::Avx2`].
    pub avx2: T,
    /// For [`SimdLevel::Avx512`].
    pub avx512: T,
}

impl<T> PerLevel<T> {
    /// The value for `level` clamped to what this CPU supports ([`detected`]), so an
    /// entry it hands out is always safe to run on this machine.
    pub fn get(&'static self, level: SimdLevel) -> &'static T {
        match level.min(detected()) {
            SimdLevel::Scalar => &self.scalar,
            SimdLevel::Portable => &self.portable,
            SimdLevel::Avx2 => &self.avx2,
            SimdLevel::Avx512 => &self.avx512,
        }
    }
}

/// Builds a [`PerLevel`] table: `$small::<Scalar>()`, `$small::<Portable>()`,
/// `$avx2::<Avx2>()`, `$avx512::<Avx512>()` (the portable table for the x86 levels on
/// other architectures). Each builder is a `const fn` generic over
/// [`Simd`](crate::simd::Simd) (one builder may serve several levels; tile shapes are
/// literals in the builder, since a const generic argument cannot be computed from
/// `S`).
#[macro_export]
macro_rules! per_level {
    ($small:ident, $avx2:ident, $avx512:ident) => {
        $crate::simd::PerLevel {
            scalar: $small::<$crate::simd::Scalar>(),
            portable: $small::<$crate::simd::Portable>(),
            #[cfg(target_arch = "x86_64")]
            avx2: $avx2::<$crate::simd::Avx2>(),
            #[cfg(target_arch = "x86_64")]
            avx512: $avx512::<$crate::simd::Avx512>(),
            #[cfg(not(target_arch = "x86_64"))]
            avx2: $small::<$crate::simd::Portable>(),
            #[cfg(not(target_arch = "x86_64"))]
            avx512: $small::<$crate::simd::Portable>(),
        }
    };
}
