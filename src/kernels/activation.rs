//! Element-wise activations: swish (SiLU), sigmoid, ReLU (and the identity), standalone
//! and as building blocks fused into the apply passes of the normalizations
//! ([`crate::kernels::norm`], [`crate::kernels::proxy_norm`]).
//!
//! The standalone passes work on any `f32` buffer (NHWC or otherwise, the layout does
//! not matter for an element-wise op), SIMD with runtime dispatch, split into fixed
//! chunks over the `rayon` pool.
//!
//! ```
//! use effnet::kernels::activation::{self, Activation};
//! let x = [-2.0f32, 0.0, 3.0];
//! let mut y = [0.0f32; 3];
//! activation::forward(Activation::Swish, &x, &mut y).unwrap();
//! assert!((y[2] - 3.0 / (1.0 + (-3.0f32).exp())).abs() < 1e-6);
//! let mut dx = [0.0f32; 3];
//! activation::backward(Activation::Relu, &x, &[1.0, 1.0, 1.0], &mut dx).unwrap();
//! assert_eq!(dx, [0.0, 0.0, 1.0]);
//! ```

use crate::error::{Result, check_len};
use crate::simd::{self, Simd, SimdKernel, SimdLevel, dispatch};
use rayon::prelude::*;

/// An element-wise activation `φ`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `φ(u) = u` (no activation).
    Identity,
    /// `φ(u) = max(u, 0)`; the derivative at 0 is taken as 0 (as in PyTorch).
    Relu,
    /// `φ(u) = σ(u) = 1 / (1 + e^−u)`.
    Sigmoid,
    /// Swish / SiLU: `φ(u) = u·σ(u)`, `φ'(u) = σ(u)·(1 + u·(1 − σ(u)))`.
    #[default]
    Swish,
}

impl Activation {
    /// `φ(u)` in `f64` (the reference the fast kernels are tested against).
    pub fn value(self, u: f64) -> f64 {
        match self {
            Activation::Identity => u,
            Activation::Relu => u.max(0.0),
            Activation::Sigmoid => sigmoid64(u),
            Activation::Swish => u * sigmoid64(u),
        }
    }

    /// `φ'(u)` in `f64`.
    pub fn derivative(self, u: f64) -> f64 {
        match self {
            Activation::Identity => 1.0,
            Activation::Relu => {
                if u > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Sigmoid => {
                let s = sigmoid64(u);
                s * (1.0 - s)
            }
            Activation::Swish => {
                let s = sigmoid64(u);
                s * (1.0 + u * (1.0 - s))
            }
        }
    }

    /// The lowercase name (`identity`, `relu`, `sigmoid`, `swish`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Swish => "swish",
        }
    }
}

impl Activation {
    /// `φ(u)` lane-wise, the activation chosen at run time (one predictable branch per
    /// vector): what the convolution epilogues apply to each output vector. The same
    /// arithmetic as the [`Act`] types, so a fused pass gives the standalone pass's bits.
    #[inline(always)]
    pub(crate) fn apply<S: Simd>(self, s: S, u: S::V) -> S::V {
        match self {
            Activation::Identity => u,
            Activation::Relu => ReluAct::f(s, u),
            Activation::Sigmoid => SigmoidAct::f(s, u),
            Activation::Swish => SwishAct::f(s, u),
        }
    }
}

fn sigmoid64(u: f64) -> f64 {
    if u >= 0.0 {
        1.0 / (1.0 + (-u).exp())
    } else {
        let e = u.exp();
        e / (1.0 + e)
    }
}

/// An activation as a type, so that kernels are monomorphized per activation (no
/// branch in the inner loops). All methods are `#[inline(always)]`.
pub(crate) trait Act: Copy + Send + Sync {
    /// `φ(u)`.
    fn f<S: Simd>(s: S, u: S::V) -> S::V;
    /// `φ'(u)`.
    fn df<S: Simd>(s: S, u: S::V) -> S::V;
    /// `(φ(u), φ'(u))`, sharing the work.
    fn f_df<S: Simd>(s: S, u: S::V) -> (S::V, S::V);
}

#[derive(Copy, Clone)]
pub(crate) struct IdentityAct;
#[derive(Copy, Clone)]
pub(crate) struct ReluAct;
#[derive(Copy, Clone)]
pub(crate) struct SigmoidAct;
#[derive(Copy, Clone)]
pub(crate) struct SwishAct;

impl Act for IdentityAct {
    #[inline(always)]
    fn f<S: Simd>(_s: S, u: S::V) -> S::V {
        u
    }
    #[inline(always)]
    fn df<S: Simd>(s: S, _u: S::V) -> S::V {
        s.splat(1.0)
    }
    #[inline(always)]
    fn f_df<S: Simd>(s: S, u: S::V) -> (S::V, S::V) {
        (u, s.splat(1.0))
    }
}

impl Act for ReluAct {
    #[inline(always)]
    fn f<S: Simd>(s: S, u: S::V) -> S::V {
        s.max(u, s.zero())
    }
    #[inline(always)]
    fn df<S: Simd>(s: S, u: S::V) -> S::V {
        // 1 for u > 0, 0 otherwise, with arithmetic only (the trait has no compare):
        // two multiplications by 2^127 push every positive float, denormals included,
        // to at least 1 (or +inf), and clamping to [0, 1] gives the step.
        let big = s.splat(f32::from_bits(0x7f00_0000)); // 2^127
        let v = s.mul(s.mul(u, big), big);
        s.min(s.max(v, s.zero()), s.splat(1.0))
    }
    #[inline(always)]
    fn f_df<S: Simd>(s: S, u: S::V) -> (S::V, S::V) {
        (Self::f(s, u), Self::df(s, u))
    }
}

impl Act for SigmoidAct {
    #[inline(always)]
    fn f<S: Simd>(s: S, u: S::V) -> S::V {
        s.sigmoid(u)
    }
    #[inline(always)]
    fn df<S: Simd>(s: S, u: S::V) -> S::V {
        Self::f_df(s, u).1
    }
    #[inline(always)]
    fn f_df<S: Simd>(s: S, u: S::V) -> (S::V, S::V) {
        let sg = s.sigmoid(u);
        (sg, s.mul(sg, s.sub(s.splat(1.0), sg)))
    }
}

impl Act for SwishAct {
    #[inline(always)]
    fn f<S: Simd>(s: S, u: S::V) -> S::V {
        s.mul(u, s.sigmoid(u))
    }
    #[inline(always)]
    fn df<S: Simd>(s: S, u: S::V) -> S::V {
        Self::f_df(s, u).1
    }
    #[inline(always)]
    fn f_df<S: Simd>(s: S, u: S::V) -> (S::V, S::V) {
        let sg = s.sigmoid(u);
        let f = s.mul(u, sg);
        // φ' = σ + u·σ·(1 − σ) = σ + φ·(1 − σ)
        (f, s.mul_add(f, s.sub(s.splat(1.0), sg), sg))
    }
}

/// Calls a generic function with the [`Act`] type matching an [`Activation`]:
/// `with_act!(act, A => expr)` evaluates `expr` with the type alias `A` in scope.
macro_rules! with_act {
    ($act:expr, $A:ident => $body:expr) => {
        match $act {
            $crate::kernels::activation::Activation::Identity => {
                type $A = $crate::kernels::activation::IdentityAct;
                $body
            }
            $crate::kernels::activation::Activation::Relu => {
                type $A = $crate::kernels::activation::ReluAct;
                $body
            }
            $crate::kernels::activation::Activation::Sigmoid => {
                type $A = $crate::kernels::activation::SigmoidAct;
                $body
            }
            $crate::kernels::activation::Activation::Swish => {
                type $A = $crate::kernels::activation::SwishAct;
                $body
            }
        }
    };
}
pub(crate) use with_act;

/// Elements per parallel task of the standalone passes.
const CHUNK: usize = 16384;

struct Forward<'a, A> {
    x: &'a [f32],
    y: &'a mut [f32],
    _act: A,
}

impl<A: Act> SimdKernel for Forward<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let mut xs = self.x.chunks_exact(S::LANES);
        let mut ys = self.y.chunks_exact_mut(S::LANES);
        for (x, y) in (&mut xs).zip(&mut ys) {
            s.store(y, A::f(s, s.load(x)));
        }
        let (x, y) = (xs.remainder(), ys.into_remainder());
        if !x.is_empty() {
            s.store_upto(y, A::f(s, s.load_upto(x)));
        }
    }
}

struct Backward<'a, A> {
    x: &'a [f32],
    dy: &'a [f32],
    dx: &'a mut [f32],
    _act: A,
}

impl<A: Act> SimdKernel for Backward<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let mut xs = self.x.chunks_exact(S::LANES);
        let mut dys = self.dy.chunks_exact(S::LANES);
        let mut dxs = self.dx.chunks_exact_mut(S::LANES);
        for ((x, dy), dx) in (&mut xs).zip(&mut dys).zip(&mut dxs) {
            s.store(dx, s.mul(s.load(dy), A::df(s, s.load(x))));
        }
        let (x, dy, dx) = (xs.remainder(), dys.remainder(), dxs.into_remainder());
        if !x.is_empty() {
            s.store_upto(dx, s.mul(s.load_upto(dy), A::df(s, s.load_upto(x))));
        }
    }
}

/// `y = φ(x)` element-wise at the thread's SIMD level ([`simd::active`]); `y` is
/// overwritten and must have `x.len()` elements.
pub fn forward(act: Activation, x: &[f32], y: &mut [f32]) -> Result<()> {
    forward_with(simd::active(), act, x, y)
}

/// [`forward`] at an explicit SIMD level.
pub fn forward_with(level: SimdLevel, act: Activation, x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len("y", y.len(), x.len())?;
    x.par_chunks(CHUNK)
        .zip(y.par_chunks_mut(CHUNK))
        .for_each(|(x, y)| with_act!(act, A => dispatch(level, Forward::<A> { x, y, _act: A {} })));
    Ok(())
}

/// `dx = dy · φ'(x)` element-wise (`x` is the activation's input); `dx` is overwritten.
/// All three buffers must have the same length.
pub fn backward(act: Activation, x: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    backward_with(simd::active(), act, x, dy, dx)
}

/// [`backward`] at an explicit SIMD level.
pub fn backward_with(
    level: SimdLevel,
    act: Activation,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    check_len("dy", dy.len(), x.len())?;
    check_len("dx", dx.len(), x.len())?;
    x.par_chunks(CHUNK)
        .zip(dy.par_chunks(CHUNK))
        .zip(dx.par_chunks_mut(CHUNK))
        .for_each(|((x, dy), dx)| {
            with_act!(act, A => dispatch(level, Backward::<A> { x, dy, dx, _act: A {} }))
        });
    Ok(())
}
