//! The forward pass's prologue (pre-ops): a per-image, per-channel transform of the
//! input applied by the kernels as they bring the input into their own buffers — the
//! depthwise rings, the grouped padded copies, the pointwise row blocks — so that a
//! normalization's apply pass, an activation or a squeeze-excite gate that sits
//! between two convolutions never makes a pass of its own over memory.
//!
//! Each input element `x[n][h][w][c]` is read by the convolution as
//!
//! `x' = p[n][c] · φ(a[n][c] · x + b[n][c]) + q[n][c]`
//!
//! with `a` the scale, `b` the shift, `φ` the activation and `p`, `q` the optional
//! output scale and shift. The padding of the convolution is padding of `x'`: it reads
//! zero, not the transform of zero. What the transform covers:
//!
//! - a GroupNorm or LayerNorm (statistics per image) with its affine and activation:
//!   `a = γ_c·rstd_{n,g}`, `b = β_c − γ_c·rstd_{n,g}·mean_{n,g}` (the statistics from
//!   the producing convolution's [`ChannelStats`](super::ChannelStats) post-op);
//! - Proxy Norm's correction after it: `p = s_c`, `q = −s_c·μ_c`;
//! - a BatchNorm in inference that could not fold into a convolution (`a`, `b` the
//!   same for every image);
//! - a squeeze-excite gate on the input channels (`a` the gate, `b` zero, identity).

use crate::error::{Error, Result, check_len};
use crate::kernels::activation::Activation;
use crate::simd::{Microkernel, PerLevel, Simd, SimdLevel, Ukernel};

/// The forward pass's prologue, part of a convolution plan
/// ([`Conv2d::with_pre_ops`](super::Conv2d::with_pre_ops)): which terms of
/// `x' = p · φ(a · x + b) + q` the plan applies to its input (see the module docs).
/// The scale `a` is always given; the operands arrive with each call in
/// [`PreArgs`], `[N][C_in]` floats each.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PreOps {
    /// Whether the shift `b` is added after the scale.
    pub shift: bool,
    /// `φ`, applied to `a·x (+ b)` ([`Activation::Identity`]: none).
    pub activation: Activation,
    /// Whether the activation's output is multiplied by `p`.
    pub out_scale: bool,
    /// Whether `q` is added last.
    pub out_shift: bool,
}

impl PreOps {
    /// A per-image channel affine `x' = a·x + b` (a norm without activation).
    pub const AFFINE: PreOps = PreOps {
        shift: true,
        activation: Activation::Identity,
        out_scale: false,
        out_shift: false,
    };

    /// A norm's apply pass with its activation: `x' = φ(a·x + b)`.
    pub fn norm_act(activation: Activation) -> PreOps {
        PreOps {
            activation,
            ..PreOps::AFFINE
        }
    }
}

/// The operands of a plan's prologue ([`PreOps`]), each `[N][C_in]` (image-major): the
/// coefficients of input channel `c` of image `n` at `n·C_in + c`. An operand is given
/// exactly when the plan's [`PreOps`] use it.
#[derive(Copy, Clone, Debug)]
pub struct PreArgs<'a> {
    /// `a`.
    pub scale: &'a [f32],
    /// `b` (when [`PreOps::shift`]).
    pub shift: Option<&'a [f32]>,
    /// `p` (when [`PreOps::out_scale`]).
    pub out_scale: Option<&'a [f32]>,
    /// `q` (when [`PreOps::out_shift`]).
    pub out_shift: Option<&'a [f32]>,
}

impl<'a> PreArgs<'a> {
    /// Checks the operands against the plan's prologue (`None`: the plan has none) for
    /// `nc = N·C_in` coefficients each, and returns the kernels' form.
    pub(crate) fn check(
        args: Option<PreArgs<'a>>,
        ops: Option<PreOps>,
        channels: usize,
        nc: usize,
    ) -> Result<Option<Pre<'a>>> {
        let (args, ops) = match (args, ops) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(Error::InvalidArgument(
                    "pre-op operands were given but the plan has no pre-ops".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Error::InvalidArgument(
                    "the plan's pre-ops transform its input; pass their operands to \
                     forward_post (PostArgs::pre)"
                        .into(),
                ));
            }
            (Some(a), Some(o)) => (a, o),
        };
        check_len("pre-op scale", args.scale.len(), nc)?;
        let operand = |name: &'static str, v: Option<&'a [f32]>, wanted: bool| match (v, wanted) {
            (Some(v), true) => check_len(name, v.len(), nc).map(|()| v.as_ptr()),
            (None, false) => Ok(std::ptr::null()),
            (Some(_), false) => Err(Error::InvalidArgument(format!(
                "a {name} was given but the plan's pre-ops do not use one"
            ))),
            (None, true) => Err(Error::InvalidArgument(format!(
                "the plan's pre-ops use a {name}; pass it in PreArgs"
            ))),
        };
        Ok(Some(Pre {
            act: ops.activation,
            a: args.scale.as_ptr(),
            b: operand("pre-op shift", args.shift, ops.shift)?,
            p: operand("pre-op output scale", args.out_scale, ops.out_scale)?,
            q: operand("pre-op output shift", args.out_shift, ops.out_shift)?,
            channels,
            _args: std::marker::PhantomData,
        }))
    }
}

/// A checked prologue as the kernels read it: the coefficient arrays (`[N][C]`; null
/// where the plan omits the term) and the activation.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Pre<'a> {
    act: Activation,
    a: *const f32,
    b: *const f32,
    p: *const f32,
    q: *const f32,
    channels: usize,
    _args: std::marker::PhantomData<&'a [f32]>,
}

// SAFETY: the pointers are read-only views of slices borrowed for `'a`.
unsafe impl Send for Pre<'_> {}
// SAFETY: as above.
unsafe impl Sync for Pre<'_> {}

impl Pre<'_> {
    /// The coefficients of image `n`, from channel 0 (`n` below the batch checked
    /// against the operands' lengths).
    pub(crate) fn image(&self, n: usize) -> PreImage {
        let base = PreImage {
            act: self.act,
            a: self.a,
            b: self.b,
            p: self.p,
            q: self.q,
        };
        base.at(n * self.channels)
    }
}

/// One image's prologue coefficients, from some channel on (see [`PreImage::at`]);
/// null pointers for the terms left out.
#[derive(Copy, Clone, Debug)]
pub(crate) struct PreImage {
    pub act: Activation,
    pub a: *const f32,
    pub b: *const f32,
    pub p: *const f32,
    pub q: *const f32,
}

impl PreImage {
    /// The coefficients `c` floats on (channel `c` of the same image; from image `n`'s
    /// channel 0 at `n·C` of the whole operands).
    pub(crate) fn at(self, c: usize) -> PreImage {
        let at = |p: *const f32| if p.is_null() { p } else { p.wrapping_add(c) };
        PreImage {
            act: self.act,
            a: at(self.a),
            b: at(self.b),
            p: at(self.p),
            q: at(self.q),
        }
    }
}

/// One vector of channels' prologue coefficients, loaded once for many pixels.
#[derive(Copy, Clone)]
pub(crate) struct PreVec<S: Simd> {
    act: Activation,
    a: S::V,
    b: Option<S::V>,
    p: Option<S::V>,
    q: Option<S::V>,
}

impl<S: Simd> PreVec<S> {
    /// The coefficients at `pre`'s pointers: `n` lanes (`n < LANES`: the other lanes
    /// read zero).
    ///
    /// # Safety
    /// `min(n, LANES)` coefficients readable at each non-null pointer of `pre`.
    #[inline(always)]
    pub(crate) unsafe fn load(s: S, pre: &PreImage, n: usize) -> PreVec<S> {
        let opt = |p: *const f32| {
            // SAFETY: the caller's contract.
            (!p.is_null()).then(|| unsafe { coef(s, p, n) })
        };
        PreVec {
            act: pre.act,
            // SAFETY: the caller's contract.
            a: unsafe { coef(s, pre.a, n) },
            b: opt(pre.b),
            p: opt(pre.p),
            q: opt(pre.q),
        }
    }

    /// `p·φ(a·x + b) + q`.
    #[inline(always)]
    pub(crate) fn apply(&self, s: S, x: S::V) -> S::V {
        let u = match self.b {
            Some(b) => s.mul_add(self.a, x, b),
            None => s.mul(self.a, x),
        };
        let mut v = self.act.apply(s, u);
        if let Some(p) = self.p {
            v = s.mul(v, p);
        }
        if let Some(q) = self.q {
            v = s.add(v, q);
        }
        v
    }
}

/// `dst[i·dst_step + j] = p_j·φ(a_j·src[i·src_step + j] + b_j) + q_j` for `px` pixels
/// `i` of `n` channels `j`, the coefficients of channel `j` at offset `j` of `pre`'s
/// pointers: each vector of coefficients loaded once for all the pixels.
///
/// # Safety
/// `n` floats readable at each `src` pixel and at each non-null pointer of `pre`,
/// writable at each `dst` pixel.
#[inline(always)]
pub(crate) unsafe fn apply_pixels<S: Simd>(
    s: S,
    pre: &PreImage,
    (src, src_step): (*const f32, usize),
    (dst, dst_step): (*mut f32, usize),
    px: usize,
    n: usize,
) {
    let l = S::LANES;
    let mut j = 0;
    // SAFETY: every access is inside the caller's pixels and channels.
    unsafe {
        while j < n {
            let w = (n - j).min(l);
            let k = PreVec::load(s, &pre.at(j), w);
            for i in 0..px {
                let sp = src.add(i * src_step + j);
                let dp = dst.add(i * dst_step + j);
                if w == l {
                    s.store_ptr(dp, k.apply(s, s.load_ptr(sp)));
                } else {
                    let v = k.apply(s, s.load_partial_ptr(sp, w));
                    s.store_partial_ptr(dp, v, w);
                }
            }
            j += w;
        }
    }
}

/// `n` coefficients from `p` (all lanes when `n ≥ LANES`, the rest zero otherwise).
///
/// # Safety
/// `min(n, LANES)` floats readable at `p`.
#[inline(always)]
unsafe fn coef<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
    // SAFETY: the caller's contract.
    unsafe {
        if n >= S::LANES {
            s.load_ptr(p)
        } else {
            s.load_partial_ptr(p, n)
        }
    }
}

/// Arguments of [`PreRun`]: `px` pixels of `n` channels from `src` to `dst` (pixels
/// `src_step` and `dst_step` floats apart) through `pre`.
pub(crate) struct PreRunArgs {
    pub pre: PreImage,
    pub src: *const f32,
    pub src_step: usize,
    pub dst: *mut f32,
    pub dst_step: usize,
    pub px: usize,
    pub n: usize,
}

/// [`apply_pixels`] as a table entry (the pointwise row blocks' staging).
pub(crate) struct PreRun;

impl Microkernel for PreRun {
    type Args<'a> = PreRunArgs;
    /// # Safety
    /// As [`apply_pixels`].
    #[inline(always)]
    unsafe fn run<S: Simd>(s: S, a: &PreRunArgs) {
        // SAFETY: forwarded.
        unsafe {
            let (src, dst) = ((a.src, a.src_step), (a.dst, a.dst_step));
            apply_pixels(s, &a.pre, src, dst, a.px, a.n)
        }
    }
}

/// The prologue's table entries of one level.
pub(crate) struct PreTable {
    /// [`PreRun`].
    pub run: Ukernel<PreRunArgs>,
}

const fn pre_table<S: Simd>() -> PreTable {
    PreTable {
        run: S::call::<PreRun>,
    }
}

/// The table of `level` (clamped to what the CPU runs).
pub(crate) fn table(level: SimdLevel) -> &'static PreTable {
    static TABLES: PerLevel<PreTable> = crate::per_level!(pre_table, pre_table, pre_table);
    TABLES.get(level)
}
