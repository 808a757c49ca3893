//! Convolution: descriptor, plan, shape query, workspace sizes and the forward pass (the
//! backward passes are in `conv_backward`, post-ops in `conv_fused`, packed weights in
//! `conv_packed`).

use std::ffi::c_void;

use effnet_core::kernels::conv::{
    Conv2d, ConvDesc, ConvFamily, ConvPass, DType, GradMode, Padding,
};

use crate::buffers::{self, Buf, NO_WORKSPACE, workspace_buf};
use crate::context::effnet_context;
use crate::handle::{self, Kind};
use crate::sized::{self, SizedStruct};
use crate::status::{Failure, Outcome, effnet_status, guard};

/// Storage types of tensors (the `dtype` field of descriptors).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_dtype {
    /// IEEE single precision `float` (the only type the convolutions take today).
    EFFNET_DTYPE_F32 = 0,
    /// IEEE half precision, storage only (not supported by the convolutions yet).
    EFFNET_DTYPE_F16 = 1,
    /// bfloat16, storage only (not supported by the convolutions yet).
    EFFNET_DTYPE_BF16 = 2,
}

/// A 2-D convolution over NHWC tensors, grouped in the general case.
///
/// Set `struct_size = sizeof(effnet_conv_desc)` and zero every field you do not use
/// (e.g. `effnet_conv_desc d = { .struct_size = sizeof d, ... };`).
///
/// Layouts (row-major, last index fastest, `float` elements):
/// - input  `x`: `[batch][in_h][in_w][in_channels]` (NHWC)
/// - output `y`: `[batch][out_h][out_w][out_channels]` (NHWC; `out_h`, `out_w` from
///   `effnet_conv_plan_shape`)
/// - weight `w`: `[kernel_h][kernel_w][group_size][out_channels]`: output channel `co`
///   belongs to group `g = co / (out_channels / groups)` and reads input channels
///   `g*group_size .. (g+1)*group_size - 1`. Depthwise: `[kh][kw][C]`; pointwise:
///   `[C_in][C_out]`. PyTorch's OIHW `W[co][ci][kh][kw]` is `w[kh][kw][ci][co]`.
/// - bias: `[out_channels]`
///
/// Semantics: `y[n,oh,ow,co] = sum over kh, kw, ci of
/// x[n, oh*stride_h + kh*dilation_h - pad_top, ow*stride_w + kw*dilation_w - pad_left,
/// g*group_size + ci] * w[kh][kw][ci][co] (+ bias[co])`; taps outside the input read
/// zero. Output size: `out_h = (in_h + pad_top + pad_bottom - dilation_h*(kernel_h-1)
/// - 1) / stride_h + 1`, likewise `out_w`.
///
/// Rules (else `EFFNET_INVALID_ARGUMENT`): every size, stride and dilation at least 1,
/// kernel sides, strides and dilations at most 1024, paddings at least 0; `group_size` divides `in_channels` and the number of groups
/// `in_channels / group_size` divides `out_channels`; each padding is smaller than the
/// dilated kernel span; the dilated kernel fits in the padded input; every buffer's
/// element count fits in memory addressing.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_conv_desc {
    /// `sizeof(effnet_conv_desc)` as the caller was compiled (forward compatibility: a
    /// larger size is accepted if the extra bytes are zero).
    pub struct_size: usize,
    /// Images in the batch (N).
    pub batch: i64,
    /// Input height (H).
    pub in_h: i64,
    /// Input width (W).
    pub in_w: i64,
    /// Input channels (C_in).
    pub in_channels: i64,
    /// Output channels (C_out).
    pub out_channels: i64,
    /// Input channels per group: `in_channels` for a dense convolution, 1 for
    /// depthwise, 16 for G16.
    pub group_size: i64,
    /// Kernel height.
    pub kernel_h: i64,
    /// Kernel width.
    pub kernel_w: i64,
    /// Vertical stride.
    pub stride_h: i64,
    /// Horizontal stride.
    pub stride_w: i64,
    /// Vertical dilation (1 = none).
    pub dilation_h: i64,
    /// Horizontal dilation (1 = none).
    pub dilation_w: i64,
    /// Rows of zeros above the input.
    pub pad_top: i64,
    /// Rows of zeros below the input.
    pub pad_bottom: i64,
    /// Columns of zeros left of the input.
    pub pad_left: i64,
    /// Columns of zeros right of the input.
    pub pad_right: i64,
    /// Storage type of `x`, `w`, `y` and `bias`: an `effnet_dtype` value.
    pub dtype: u32,
    /// Must be zero.
    pub reserved: u32,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_conv_desc {
    const C_NAME: &'static str = "effnet_conv_desc";
}

/// The kernel family a convolution plan runs on (`effnet_conv_shape.family`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_conv_family {
    /// One input channel per group and as many outputs as inputs.
    EFFNET_CONV_DEPTHWISE = 0,
    /// 1×1, one group, no padding: a matrix product.
    EFFNET_CONV_POINTWISE = 1,
    /// Everything else: grouped (G16, …) and dense k×k.
    EFFNET_CONV_GROUPED = 2,
}

/// A pass of a convolution (the `pass` argument of `effnet_conv_workspace_size`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_conv_pass {
    /// `effnet_conv_forward` / `effnet_conv_forward_ws`.
    EFFNET_CONV_PASS_FORWARD = 0,
    /// `effnet_conv_backward_data` / `effnet_conv_backward_data_ws`.
    EFFNET_CONV_PASS_BACKWARD_DATA = 1,
    /// `effnet_conv_backward_weight` / `effnet_conv_backward_weight_ws`.
    EFFNET_CONV_PASS_BACKWARD_WEIGHT = 2,
}

fn pass_of(v: u32) -> Outcome<ConvPass> {
    match v {
        0 => Ok(ConvPass::Forward),
        1 => Ok(ConvPass::BackwardData),
        2 => Ok(ConvPass::BackwardWeight),
        _ => Err(Failure::invalid(format!(
            "pass = {v} is not an effnet_conv_pass"
        ))),
    }
}

/// What `effnet_conv_plan_shape` reports about a plan. Set `struct_size =
/// sizeof(effnet_conv_shape)` before the call.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_conv_shape {
    /// `sizeof(effnet_conv_shape)` as the caller was compiled; kept by the call.
    pub struct_size: usize,
    /// Output height.
    pub out_h: i64,
    /// Output width.
    pub out_w: i64,
    /// Number of groups (`in_channels / group_size`).
    pub groups: i64,
    /// Elements of `x` and `dx`: `batch*in_h*in_w*in_channels`.
    pub x_len: usize,
    /// Elements of `y` and `dy`: `batch*out_h*out_w*out_channels`.
    pub y_len: usize,
    /// Elements of `w` and `dw`: `kernel_h*kernel_w*group_size*out_channels`.
    pub w_len: usize,
    /// Elements of `bias` and `dbias`: `out_channels`.
    pub bias_len: usize,
    /// The kernel family: an `effnet_conv_family` value.
    pub family: u32,
    /// Zero.
    pub reserved: u32,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_conv_shape {
    const C_NAME: &'static str = "effnet_conv_shape";
}

/// A validated convolution, ready to run: made by `effnet_conv_plan_create` from an
/// `effnet_conv_desc`, released by `effnet_conv_plan_destroy`. A plan is immutable and
/// not tied to a context: it may be used by several threads at once, with any
/// context, but must not be destroyed while a call uses it.
pub struct effnet_conv_plan {
    magic: u64,
    pub(crate) conv: Conv2d,
}

handle::impl_handle!(effnet_conv_plan, Kind::ConvPlan);

fn field(name: &str, v: i64, min: i64) -> Outcome<usize> {
    sized::int_field("effnet_conv_desc", name, v, min)
}

/// The `accumulate` argument of the backward passes: 0 overwrites, 1 accumulates.
pub fn grad_mode(accumulate: i32) -> Outcome<GradMode> {
    match accumulate {
        0 => Ok(GradMode::Overwrite),
        1 => Ok(GradMode::Accumulate),
        v => Err(Failure::invalid(format!(
            "accumulate = {v}; pass 0 (overwrite) or 1 (accumulate)"
        ))),
    }
}

fn dtype_of(v: u32) -> Outcome<DType> {
    match v {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        2 => Ok(DType::BF16),
        _ => Err(Failure::invalid(format!(
            "effnet_conv_desc.dtype = {v} is not an effnet_dtype"
        ))),
    }
}

/// Converts the C descriptor to the Rust one, rejecting values that do not fit; the
/// rules of the convolution itself are checked by `ConvDesc::validate`.
pub fn to_conv_desc(d: &effnet_conv_desc) -> Outcome<ConvDesc> {
    if d.reserved != 0 {
        return Err(Failure::invalid(format!(
            "effnet_conv_desc.reserved = {} must be zero",
            d.reserved
        )));
    }
    Ok(ConvDesc {
        batch: field("batch", d.batch, 1)?,
        in_h: field("in_h", d.in_h, 1)?,
        in_w: field("in_w", d.in_w, 1)?,
        in_channels: field("in_channels", d.in_channels, 1)?,
        out_channels: field("out_channels", d.out_channels, 1)?,
        group_size: field("group_size", d.group_size, 1)?,
        kernel_h: field("kernel_h", d.kernel_h, 1)?,
        kernel_w: field("kernel_w", d.kernel_w, 1)?,
        stride_h: field("stride_h", d.stride_h, 1)?,
        stride_w: field("stride_w", d.stride_w, 1)?,
        dilation_h: field("dilation_h", d.dilation_h, 1)?,
        dilation_w: field("dilation_w", d.dilation_w, 1)?,
        padding: Padding {
            top: field("pad_top", d.pad_top, 0)?,
            bottom: field("pad_bottom", d.pad_bottom, 0)?,
            left: field("pad_left", d.pad_left, 0)?,
            right: field("pad_right", d.pad_right, 0)?,
        },
        dtype: dtype_of(d.dtype)?,
    })
}

/// Validates `*desc` and stores a new plan in `*out_plan`.
///
/// `ctx` is the context the plan is prepared in (it must be live; plans are not tied
/// to it afterwards). The descriptor is copied: the caller may reuse or free it.
///
/// Ownership: the caller owns the new plan and must release it with
/// `effnet_conv_plan_destroy`. `*out_plan` is written only on success.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type `ctx`, a NULL or
/// misaligned `desc` or `out_plan`, a `struct_size` that is too small (or larger with
/// non-zero extra bytes), a negative or oversized field, or a convolution that breaks
/// the rules of `effnet_conv_desc`; `EFFNET_OUT_OF_MEMORY` for a grouped convolution
/// whose plan would list more than 2^22 tasks (a batch of millions of images: split
/// it); `EFFNET_UNSUPPORTED` for a `dtype` other than
/// `EFFNET_DTYPE_F32`.
///
/// # Safety
/// `ctx` is NULL or a context handle; `desc` is NULL or points to `desc->struct_size`
/// readable bytes; `out_plan` is NULL or points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_plan_create(
    ctx: *const effnet_context,
    desc: *const effnet_conv_desc,
    out_plan: *mut *mut effnet_conv_plan,
) -> effnet_status {
    guard("effnet_conv_plan_create", || {
        // SAFETY: forwarded from this function's contract.
        unsafe { create_plan(ctx, desc, out_plan, Ok) }
    })
}

/// The body of the plan constructors: checks `ctx`, reads and validates `*desc`,
/// plans it, lets `finish` add to the plan (post-ops), and publishes the handle.
///
/// # Safety
/// As `effnet_conv_plan_create`.
pub(crate) unsafe fn create_plan(
    ctx: *const effnet_context,
    desc: *const effnet_conv_desc,
    out_plan: *mut *mut effnet_conv_plan,
    finish: impl FnOnce(Conv2d) -> Outcome<Conv2d>,
) -> Outcome {
    // SAFETY: the caller's contract; the handle is checked before use.
    let _ctx = unsafe { handle::get(ctx, "`ctx`") }?;
    // SAFETY: the caller's contract; pointer and size checked inside.
    let desc = unsafe { sized::read(desc, "`desc`") }?;
    handle::check_out(out_plan, "`out_plan`")?;
    let conv = finish(Conv2d::new(&to_conv_desc(&desc)?)?)?;
    let plan = effnet_conv_plan {
        magic: Kind::ConvPlan.magic(),
        conv,
    };
    // SAFETY: checked; writable (caller's promise).
    unsafe { handle::publish(out_plan, plan) }
}

/// Destroys a plan. NULL is a no-op (returns `EFFNET_OK`).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` if `plan` is not a live plan (already destroyed,
/// or not made by `effnet_conv_plan_create`); such misuse is reported when detected,
/// but using a destroyed handle is undefined behaviour.
///
/// # Safety
/// `plan` is NULL or a handle from `effnet_conv_plan_create`; no call may be using it
/// (on any thread), and it must not be used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_plan_destroy(plan: *mut effnet_conv_plan) -> effnet_status {
    // SAFETY: forwarded from this function's contract.
    guard("effnet_conv_plan_destroy", || unsafe {
        handle::destroy(plan, "`plan`")
    })
}

/// Fills `*out_shape` with the plan's output size, number of groups, the element
/// counts of every buffer the passes take, and its kernel family. Set
/// `out_shape->struct_size = sizeof(effnet_conv_shape)` first.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type `plan`, a NULL or
/// misaligned `out_shape`, or a `struct_size` smaller than this library's
/// `sizeof(effnet_conv_shape)` (or implausibly large).
///
/// # Safety
/// `plan` is NULL or a plan handle; `out_shape` is NULL or points to a writable
/// `effnet_conv_shape` whose `struct_size` is set and gives its writable size.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_plan_shape(
    plan: *const effnet_conv_plan,
    out_shape: *mut effnet_conv_shape,
) -> effnet_status {
    guard("effnet_conv_plan_shape", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let plan = unsafe { handle::get(plan, "`plan`") }?;
        let s = plan.conv.shape();
        let family = match plan.conv.family() {
            ConvFamily::Depthwise => effnet_conv_family::EFFNET_CONV_DEPTHWISE,
            ConvFamily::Pointwise => effnet_conv_family::EFFNET_CONV_POINTWISE,
            ConvFamily::Grouped => effnet_conv_family::EFFNET_CONV_GROUPED,
        };
        let value = effnet_conv_shape {
            struct_size: 0,
            // Sizes come from a validated descriptor whose fields were `i64`s and whose
            // buffers fit in `isize::MAX` bytes: they fit in `i64`.
            out_h: s.out_h as i64,
            out_w: s.out_w as i64,
            groups: s.groups as i64,
            x_len: s.x_len,
            y_len: s.y_len,
            w_len: s.w_len,
            bias_len: s.desc.out_channels,
            family: family as u32,
            reserved: 0,
        };
        // SAFETY: the caller's contract; pointer and size checked inside.
        unsafe { sized::write(out_shape, "`out_shape`", value) }
    })
}

/// The context and plan of a pass, checked.
///
/// # Safety
/// As the entry points' contracts.
pub(crate) unsafe fn ctx_and_plan<'a>(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
) -> Outcome<(&'a effnet_context, &'a Conv2d)> {
    // SAFETY: forwarded; handles are checked before use.
    let (ctx, plan) = unsafe { handle::ctx_and(ctx, plan, "`plan`") }?;
    Ok((ctx, &plan.conv))
}

/// Writes to `*out_bytes` the size in bytes of the workspace that pass `pass` (an
/// `effnet_conv_pass` value) of `plan` needs when it runs on `ctx`'s threads: pass a
/// buffer of at least that many bytes to the `_ws` form of the pass. The size depends
/// on the plan, the pass, the context's thread count and the SIMD level this process
/// runs (fixed at startup, or by `EFFNET_SIMD`); query once and reuse the buffer for
/// every call of that pass with that context. A size of 0 means the pass needs no
/// workspace (NULL with 0 bytes is then accepted). The workspace holds all of the
/// pass's tensor-sized scratch (packed weights, padded row copies, per-chunk
/// weight-gradient partials; part of it is one slot per context thread), so the `_ws`
/// passes allocate only small bookkeeping (a few KiB at most).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type handle, an unknown
/// `pass`, or a NULL or misaligned `out_bytes`.
///
/// # Safety
/// `ctx` and `plan` are NULL or handles of their types; `out_bytes` is NULL or points
/// to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_workspace_size(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    pass: u32,
    out_bytes: *mut usize,
) -> effnet_status {
    guard("effnet_conv_workspace_size", || {
        // SAFETY: the caller's contract.
        let (ctx, conv) = unsafe { ctx_and_plan(ctx, plan) }?;
        let pass = pass_of(pass)?;
        let floats = ctx.install(|| conv.workspace_len(pass, 0));
        // SAFETY: the caller's contract.
        unsafe { buffers::write_workspace_size(out_bytes, floats) }
    })
}

/// The workspace bytes `pass` needs on `ctx`'s threads.
fn workspace_bytes(ctx: &effnet_context, conv: &Conv2d, pass: ConvPass) -> Outcome<usize> {
    buffers::workspace_bytes(ctx.install(|| conv.workspace_len(pass, 0)))
}

/// Runs one pass on `ctx`'s threads, on the caller's workspace or allocating (see
/// `buffers::run_pass`).
pub(crate) fn run_pass<'a>(
    ctx: &effnet_context,
    conv: &Conv2d,
    pass: ConvPass,
    wsb: Option<Option<&'a mut [f32]>>,
    ws: Option<(*mut c_void, usize)>,
    run: impl FnOnce(Option<&'a mut [f32]>) -> effnet_core::Result<()> + Send,
) -> Outcome {
    let need = || workspace_bytes(ctx, conv, pass);
    let query = "effnet_conv_workspace_size";
    buffers::run_pass(ctx, need, query, wsb.flatten(), ws, run)
}

/// Forward pass: `y = conv(x, w) (+ bias)`, run on `ctx`'s threads. `y` is
/// overwritten.
///
/// Buffers (`float`, element counts from `effnet_conv_plan_shape`):
/// - `x`: input, NHWC `[batch][in_h][in_w][in_channels]`, `x_len = x_len`
/// - `w`: weight `[kernel_h][kernel_w][group_size][out_channels]`, `w_len = w_len`
/// - `bias`: `[out_channels]`, or NULL with `bias_len = 0` for no bias
/// - `y`: output, NHWC `[batch][out_h][out_w][out_channels]`, `y_len = y_len`
///
/// Ownership: the caller owns every buffer; effnet reads `x`, `w`, `bias` and writes
/// `y` during the call only, and keeps no pointer. Every pointer must be aligned to
/// `float`; `y` must not overlap any other buffer (inputs may overlap each other).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL/dead/wrong-type handle, a NULL,
/// misaligned or overlapping buffer, or a count that differs from the plan's (checked
/// before any buffer is touched); `EFFNET_UNSUPPORTED` if this build has no kernel
/// for the plan's family.
///
/// # Safety
/// Every non-NULL pointer points to at least its count of `float`s, readable (inputs)
/// or writable (`y`) for the whole call and not accessed by another thread meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_forward(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    w: *const f32,
    w_len: usize,
    bias: *const f32,
    bias_len: usize,
    y: *mut f32,
    y_len: usize,
) -> effnet_status {
    guard("effnet_conv_forward", || {
        // SAFETY: forwarded from this function's contract.
        unsafe {
            forward(
                ctx, plan, x, x_len, w, w_len, bias, bias_len, y, y_len, None,
            )
        }
    })
}

/// `effnet_conv_forward` with its scratch memory in the caller's `workspace` of
/// `workspace_bytes` bytes (at least what `effnet_conv_workspace_size` reports for
/// `EFFNET_CONV_PASS_FORWARD` on this context; any contents, left unspecified). The
/// same results, bit for bit; the call then allocates no tensor-sized memory.
///
/// `workspace` must be aligned to `float` (64 bytes is best), must not overlap any
/// other buffer, and may be NULL only with `workspace_bytes = 0` when the pass needs
/// none. It must not be used by another call at the same time.
///
/// Errors: as `effnet_conv_forward`, and `EFFNET_INVALID_ARGUMENT` for a workspace
/// that is too small, misaligned, overlapping, or NULL with a non-zero size.
///
/// # Safety
/// As `effnet_conv_forward`; `workspace` is NULL or points to `workspace_bytes`
/// writable bytes not accessed by anyone else during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_forward_ws(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    w: *const f32,
    w_len: usize,
    bias: *const f32,
    bias_len: usize,
    y: *mut f32,
    y_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_conv_forward_ws", || {
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { forward(ctx, plan, x, x_len, w, w_len, bias, bias_len, y, y_len, ws) }
    })
}

/// The forward entry points; `ws` is the workspace argument of the `_ws` form.
///
/// # Safety
/// As `effnet_conv_forward_ws`.
#[allow(clippy::too_many_arguments)]
unsafe fn forward(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    w: *const f32,
    w_len: usize,
    bias: *const f32,
    bias_len: usize,
    y: *mut f32,
    y_len: usize,
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, conv) = unsafe { ctx_and_plan(ctx, plan) }?;
    let s = conv.shape();
    let bx = Buf::input("x", x, x_len, s.x_len);
    let bw = Buf::input("w", w, w_len, s.w_len);
    let bb = Buf::input("bias", bias, bias_len, s.desc.out_channels).optional();
    let by = Buf::output("y", y, y_len, s.y_len);
    let bws = ws.map(|(p, n)| workspace_buf(p, n));
    buffers::check(&[bx, bw, bb, by, bws.unwrap_or(NO_WORKSPACE)])?;
    // SAFETY: checked above; readable/writable and exclusive by the caller's
    // contract.
    let (x, w, bias, y, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::input(&bw),
            buffers::opt_input(&bb),
            buffers::output(&by),
            bws.as_ref().map(|b| buffers::opt_output(b)),
        )
    };
    run_pass(ctx, conv, ConvPass::Forward, wsb, ws, |ws| match ws {
        Some(ws) => conv.forward_with_workspace(x, w, bias, y, ws),
        None => conv.forward(x, w, bias, y),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> effnet_conv_desc {
        effnet_conv_desc {
            struct_size: size_of::<effnet_conv_desc>(),
            batch: 2,
            in_h: 5,
            in_w: 7,
            in_channels: 32,
            out_channels: 32,
            group_size: 16,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 2,
            stride_w: 1,
            dilation_h: 1,
            dilation_w: 1,
            pad_top: 1,
            pad_bottom: 1,
            pad_left: 0,
            pad_right: 1,
            dtype: 0,
            reserved: 0,
        }
    }

    #[test]
    fn descriptors_convert_field_by_field() {
        let d = to_conv_desc(&desc()).unwrap();
        let s = d.validate().unwrap();
        assert_eq!((s.out_h, s.out_w, s.groups), (3, 6, 2));
        assert_eq!(
            d.padding,
            Padding {
                top: 1,
                bottom: 1,
                left: 0,
                right: 1
            }
        );
        let e = to_conv_desc(&effnet_conv_desc { in_w: -3, ..desc() }).unwrap_err();
        assert!(e.message.contains("in_w = -3"), "{}", e.message);
        let e = to_conv_desc(&effnet_conv_desc {
            pad_left: -1,
            ..desc()
        })
        .unwrap_err();
        assert!(e.message.contains("pad_left"), "{}", e.message);
        let e = to_conv_desc(&effnet_conv_desc { dtype: 9, ..desc() }).unwrap_err();
        assert!(e.message.contains("dtype = 9"), "{}", e.message);
        let e = to_conv_desc(&effnet_conv_desc {
            reserved: 1,
            ..desc()
        })
        .unwrap_err();
        assert!(e.message.contains("reserved"), "{}", e.message);
    }

    #[test]
    fn sized_structs_accept_zero_tails_only() {
        #[repr(C)]
        #[derive(Copy, Clone)]
        struct Bigger {
            d: effnet_conv_desc,
            extra: [u64; 3],
        }
        let mut b = Bigger {
            d: desc(),
            extra: [0; 3],
        };
        b.d.struct_size = size_of::<Bigger>();
        let p = (&b as *const Bigger).cast::<effnet_conv_desc>();
        // SAFETY: `p` points to `size_of::<Bigger>()` readable bytes.
        assert_eq!(unsafe { sized::read(p, "d") }.unwrap().batch, 2);
        b.extra[1] = 5;
        let p = (&b as *const Bigger).cast::<effnet_conv_desc>();
        // SAFETY: as above.
        let e = unsafe { sized::read(p, "d") }.unwrap_err();
        assert!(e.message.contains("not zero"), "{}", e.message);
        let small = effnet_conv_desc {
            struct_size: 8,
            ..desc()
        };
        // SAFETY: a whole struct is readable.
        let e = unsafe { sized::read(&small, "d") }.unwrap_err();
        assert!(e.message.contains("smaller"), "{}", e.message);
        let huge = effnet_conv_desc {
            struct_size: usize::MAX,
            ..desc()
        };
        // SAFETY: rejected before reading past the struct.
        let e = unsafe { sized::read(&huge, "d") }.unwrap_err();
        assert!(e.message.contains("larger"), "{}", e.message);
    }

    #[test]
    fn shape_query_writes_known_fields_and_zeroes_the_rest() {
        let mut ctx = std::ptr::null_mut();
        let mut plan = std::ptr::null_mut();
        // SAFETY: valid pointers throughout.
        unsafe {
            assert_eq!(
                crate::effnet_context_create(1, &mut ctx),
                effnet_status::EFFNET_OK
            );
            assert_eq!(
                effnet_conv_plan_create(ctx, &desc(), &mut plan),
                effnet_status::EFFNET_OK
            );
            #[repr(C)]
            struct Bigger {
                s: effnet_conv_shape,
                extra: [u64; 2],
            }
            let mut b = Bigger {
                s: effnet_conv_shape::default(),
                extra: [7; 2],
            };
            b.s.struct_size = size_of::<Bigger>();
            let st = effnet_conv_plan_shape(plan, &mut b.s);
            assert_eq!(st, effnet_status::EFFNET_OK);
            assert_eq!(b.s.struct_size, size_of::<Bigger>());
            assert_eq!((b.s.out_h, b.s.out_w, b.s.groups), (3, 6, 2));
            assert_eq!(
                (b.s.x_len, b.s.y_len, b.s.w_len, b.s.bias_len),
                (2 * 5 * 7 * 32, 2 * 3 * 6 * 32, 9 * 16 * 32, 32)
            );
            assert_eq!(b.s.family, effnet_conv_family::EFFNET_CONV_GROUPED as u32);
            assert_eq!(b.extra, [0; 2]);
            assert_eq!(effnet_conv_plan_destroy(plan), effnet_status::EFFNET_OK);
            assert_eq!(crate::effnet_context_destroy(ctx), effnet_status::EFFNET_OK);
        }
    }
}
