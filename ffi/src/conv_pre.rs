//! Convolutions with a forward prologue (pre-ops): a per-image, per-channel transform
//! of the input, `x' = p·φ(a·x + b) + q`, applied as the kernels bring the input into
//! their buffers — a norm's apply pass, its activation and Proxy Norm's correction, or
//! a squeeze-excite gate, without a pass of their own over memory.

use effnet_core::kernels::conv::PreOps;

use crate::context::effnet_context;
use crate::conv::{create_plan, effnet_conv_desc, effnet_conv_plan};
use crate::conv_fused::{effnet_conv_post_ops, to_post_ops};
use crate::handle;
use crate::ops::{activation_of, activation_value};
use crate::sized::{self, SizedStruct};
use crate::status::{Failure, Outcome, effnet_status, guard};

/// The forward prologue of a convolution plan (pre-ops): the forward pass reads each
/// input element `x[n][h][w][c]` as
///
/// `x' = p[n][c] · activation(a[n][c] · x + b[n][c]) + q[n][c]`
///
/// transformed as the kernels copy the input into their own buffers, so that no pass
/// over memory is spent on it. `a` (the scale) is always given; `b`, `p`, `q` when the
/// fields below ask. The operands arrive with each call in `effnet_conv_post_args`
/// (`pre_scale`, `pre_shift`, `pre_out_scale`, `pre_out_shift`), `[batch][in_channels]`
/// floats each. The convolution's padding is padding of `x'`: zeros.
///
/// What it expresses: a GroupNorm or LayerNorm with its affine and activation, from the
/// statistics the producing convolution gathered (`effnet_conv_post_ops.stats = 2`):
/// `a = γ_c·rstd_{n,g}`, `b = β_c − a·mean_{n,g}`; Proxy Norm's correction after it
/// (`p = s_c`, `q = −s_c·μ_c`); a squeeze-excite gate (`a` the gate, identity).
///
/// Set `struct_size = sizeof(effnet_conv_pre_ops)` and zero what you do not use; a
/// zeroed struct (`enabled = 0`) is no prologue.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_conv_pre_ops {
    /// `sizeof(effnet_conv_pre_ops)` as the caller was compiled (a larger size is
    /// accepted if the extra bytes are zero).
    pub struct_size: usize,
    /// 1: the plan transforms its input as the other fields say; 0: no prologue (the
    /// other fields must be zero).
    pub enabled: u32,
    /// 1: add the shift `b` after the scale; 0: none.
    pub shift: u32,
    /// An `effnet_activation` value applied to `a·x (+ b)` (0: identity).
    pub activation: u32,
    /// 1: multiply the activation's output by `p`; 0: none.
    pub out_scale: u32,
    /// 1: add `q` last; 0: none.
    pub out_shift: u32,
    /// Reserved: zero.
    pub reserved: u32,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_conv_pre_ops {
    const C_NAME: &'static str = "effnet_conv_pre_ops";
    const MIN_SIZE: usize = size_of::<effnet_conv_pre_ops>();
}

/// A 0/1 field of `effnet_conv_pre_ops`.
fn flag(name: &str, v: u32, what: &str) -> Outcome<bool> {
    crate::conv_fused::flag("pre_ops", name, v, what)
}

/// The Rust prologue a C descriptor names (`None`: disabled).
fn to_pre_ops(p: &effnet_conv_pre_ops) -> Outcome<Option<PreOps>> {
    let enabled = flag("enabled", p.enabled, "transform the input")?;
    if p.reserved != 0 {
        return Err(Failure::invalid("`pre_ops`.reserved must be zero"));
    }
    let ops = PreOps {
        shift: flag("shift", p.shift, "add the shift")?,
        activation: activation_of("effnet_conv_pre_ops.activation", p.activation)?,
        out_scale: flag("out_scale", p.out_scale, "scale the activation's output")?,
        out_shift: flag("out_shift", p.out_shift, "add the output shift")?,
    };
    if !enabled && ops != PreOps::default() {
        return Err(Failure::invalid(
            "`pre_ops`.enabled is 0 but other fields are set: set enabled = 1, or zero them",
        ));
    }
    Ok(enabled.then_some(ops))
}

/// `effnet_conv_plan_create` with a forward prologue and epilogue: validates `*desc`,
/// `*pre_ops` and `*post_ops` (each NULL for none) and stores a new plan in
/// `*out_plan`. The plan's forward pass transforms its input by the prologue
/// (`effnet_conv_pre_ops`) and finishes each output by the epilogue
/// (`effnet_conv_post_ops`); `effnet_conv_plan_pre_ops` and `effnet_conv_plan_post_ops`
/// read them back. A plan with a prologue runs forward through
/// `effnet_conv_forward_post` only, its operands in `effnet_conv_post_args`; its
/// workspace may be larger (`effnet_conv_workspace_size`). The backward passes are
/// those of the convolution alone, on the transformed input.
///
/// Ownership: as `effnet_conv_plan_create` (release with `effnet_conv_plan_destroy`).
///
/// Errors: those of `effnet_conv_plan_create_fused`; `EFFNET_INVALID_ARGUMENT` also for
/// a misaligned `pre_ops`, a bad `struct_size`, a flag other than 0 or 1, an activation
/// that is not an `effnet_activation`, or fields set with `enabled = 0`.
///
/// # Safety
/// As `effnet_conv_plan_create`; `pre_ops` and `post_ops` are NULL or point to their
/// `struct_size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_plan_create_ops(
    ctx: *const effnet_context,
    desc: *const effnet_conv_desc,
    pre_ops: *const effnet_conv_pre_ops,
    post_ops: *const effnet_conv_post_ops,
    out_plan: *mut *mut effnet_conv_plan,
) -> effnet_status {
    guard("effnet_conv_plan_create_ops", || {
        let pre = if pre_ops.is_null() {
            None
        } else {
            // SAFETY: the caller's contract; pointer and size checked inside.
            to_pre_ops(&unsafe { sized::read(pre_ops, "`pre_ops`") }?)?
        };
        let post = if post_ops.is_null() {
            None
        } else {
            // SAFETY: the caller's contract; pointer and size checked inside.
            Some(to_post_ops(&unsafe {
                sized::read(post_ops, "`post_ops`")
            }?)?)
        };
        // SAFETY: forwarded from this function's contract.
        unsafe {
            create_plan(ctx, desc, out_plan, |mut c| {
                if let Some(post) = post {
                    c = c.with_post_ops(post);
                }
                if let Some(pre) = pre {
                    c = c.with_pre_ops(pre);
                }
                Ok(c)
            })
        }
    })
}

/// Writes the plan's forward prologue to `*out_pre_ops` (set
/// `out_pre_ops->struct_size = sizeof(effnet_conv_pre_ops)` first): all zero for a
/// plan without one.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type `plan`, or a NULL,
/// misaligned or too small `out_pre_ops`.
///
/// # Safety
/// `plan` is NULL or a plan handle; `out_pre_ops` is NULL or points to
/// `out_pre_ops->struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_plan_pre_ops(
    plan: *const effnet_conv_plan,
    out_pre_ops: *mut effnet_conv_pre_ops,
) -> effnet_status {
    guard("effnet_conv_plan_pre_ops", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let plan = unsafe { handle::get(plan, "`plan`") }?;
        let mut value = effnet_conv_pre_ops {
            struct_size: size_of::<effnet_conv_pre_ops>(),
            ..effnet_conv_pre_ops::default()
        };
        if let Some(p) = plan.conv.pre_ops() {
            value.enabled = 1;
            value.shift = u32::from(p.shift);
            value.activation = activation_value(p.activation);
            value.out_scale = u32::from(p.out_scale);
            value.out_shift = u32::from(p.out_shift);
        }
        // SAFETY: the caller's contract; pointer and size checked inside.
        unsafe { sized::write(out_pre_ops, "`out_pre_ops`", value) }
    })
}
