//! Convolution weights packed once: the size query, the packing call and the forward
//! pass on packed weights.

use std::ffi::c_void;

use effnet_core::kernels::conv::Conv2d;

use crate::buffers::{self, Buf};
use crate::context::effnet_context;
use crate::conv::{ctx_and_plan, effnet_conv_plan};
use crate::conv_fused::forward_fused;
use crate::handle;
use crate::status::{Failure, Outcome, effnet_status, guard};

/// Writes to `*out_bytes` the size in bytes of the buffer `effnet_conv_pack_weights`
/// fills for `plan`: a 64-byte header (which plan and SIMD level the weights were
/// packed for) and the forward weights in the layout the kernels read. It depends on
/// the plan and the SIMD level this process runs (fixed at startup, or by
/// `EFFNET_SIMD`).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type `plan`, or a NULL
/// or misaligned `out_bytes`.
///
/// # Safety
/// `plan` is NULL or a plan handle; `out_bytes` is NULL or points to a writable
/// `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_packed_weights_size(
    plan: *const effnet_conv_plan,
    out_bytes: *mut usize,
) -> effnet_status {
    guard("effnet_conv_packed_weights_size", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let plan = unsafe { handle::get(plan, "`plan`") }?;
        handle::check_out_value(out_bytes, "`out_bytes`")?;
        let bytes = packed_bytes(plan.conv.packed_weights_len())?;
        // SAFETY: checked non-NULL and aligned; writable by the caller's contract.
        unsafe { out_bytes.write(bytes) };
        Ok(())
    })
}

/// Bytes of `floats` packed floats.
fn packed_bytes(floats: usize) -> Outcome<usize> {
    floats
        .checked_mul(size_of::<f32>())
        .ok_or_else(|| Failure::invalid("the packed weights' size overflows size_t"))
}

/// The `packed` argument as a buffer of whole floats (at least the plan's packed size).
pub(crate) fn packed_buf(
    name: &'static str,
    conv: &Conv2d,
    ptr: *const c_void,
    bytes: usize,
) -> Outcome<Buf> {
    let need = packed_bytes(conv.packed_weights_len())?;
    if !ptr.is_null() && bytes < need {
        return Err(Failure::invalid(format!(
            "`{name}` has {bytes} bytes, the plan's packed weights take {need} \
             (see effnet_conv_packed_weights_size)"
        )));
    }
    let floats = bytes / size_of::<f32>();
    Ok(Buf::input(name, ptr.cast(), floats, floats))
}

/// Packs the weight `w` of `plan` once, into the caller's `packed` buffer of
/// `packed_bytes` bytes (at least what `effnet_conv_packed_weights_size` reports; any
/// contents), on `ctx`'s threads. Pass `packed` to `effnet_conv_forward_packed` as
/// often as you like while the weights stay the same (inference): the forward pass
/// then skips packing them on every call. The packed form is only valid with this
/// plan's shape, in this process, at the SIMD level active when it was packed; the
/// forward pass checks its header and rejects anything else.
///
/// Buffers: `w`: `[kernel_h][kernel_w][group_size][out_channels]`, `w_len = w_len` of
/// `effnet_conv_plan_shape`; `packed`: output, aligned to `float`, not overlapping `w`.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL/dead/wrong-type handle, a NULL,
/// misaligned or overlapping buffer, a wrong `w_len`, or a `packed` buffer that is too
/// small.
///
/// # Safety
/// `w` points to `w_len` readable floats and `packed` to `packed_bytes` writable
/// bytes, neither accessed by another thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_pack_weights(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    w: *const f32,
    w_len: usize,
    packed: *mut c_void,
    packed_bytes: usize,
) -> effnet_status {
    guard("effnet_conv_pack_weights", || {
        // SAFETY: the caller's contract; handles are checked before use.
        let (ctx, conv) = unsafe { ctx_and_plan(ctx, plan) }?;
        let bw = Buf::input("w", w, w_len, conv.shape().w_len);
        let mut bp = packed_buf("packed", conv, packed, packed_bytes)?;
        bp.output = true;
        buffers::check(&[bw, bp])?;
        // SAFETY: checked above; readable/writable and exclusive by the contract.
        let (w, packed) = unsafe { (buffers::input(&bw), buffers::output(&bp)) };
        ctx.install(|| conv.pack_weights(w, packed))?;
        Ok(())
    })
}

/// `effnet_conv_forward` on weights packed by `effnet_conv_pack_weights` for the same
/// plan: the same results, bit for bit, without packing the weights again.
///
/// Buffers: `x`, `bias`, `y` as in `effnet_conv_forward`; `packed`: `packed_bytes`
/// bytes (at least what `effnet_conv_packed_weights_size` reports), aligned to
/// `float`. `workspace`: NULL with `workspace_bytes = 0` to let the library use a
/// buffer it keeps per calling thread, or a caller-owned workspace of at least what
/// `effnet_conv_workspace_size` reports for `EFFNET_CONV_PASS_FORWARD` on this
/// context (rules as in `effnet_conv_forward_ws`).
///
/// Errors: as `effnet_conv_forward_ws`; `EFFNET_INVALID_ARGUMENT` also when `packed`
/// is too small or was not packed for this plan at the active SIMD level.
///
/// # Safety
/// As `effnet_conv_forward_ws`; `packed` points to `packed_bytes` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_forward_packed(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    packed: *const c_void,
    packed_bytes: usize,
    bias: *const f32,
    bias_len: usize,
    y: *mut f32,
    y_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    // SAFETY: forwarded from this function's contract.
    guard("effnet_conv_forward_packed", || unsafe {
        forward_fused(
            ctx,
            plan,
            (x, x_len),
            (std::ptr::null(), 0),
            (packed, packed_bytes),
            (bias, bias_len),
            (std::ptr::null(), 0),
            (y, y_len),
            (workspace, workspace_bytes),
        )
    })
}

/// Writes into `out` the weights `packed` (by `effnet_conv_pack_weights` for `plan`)
/// with each input channel scaled by `scale[ci]`: bit for bit the packing of
/// `w'[ci][co] = w[ci][co] * scale[ci]`, in one pass over the packed weights. For a
/// per-image input-channel gate (a squeeze-excite's) applied to a pointwise
/// convolution's weights rather than to its input tensor: pass `out` to
/// `effnet_conv_forward_packed` for that image. Pointwise plans (1×1, one group) only.
///
/// Buffers: `packed` and `out`: `packed_bytes` / `out_bytes` bytes each (at least what
/// `effnet_conv_packed_weights_size` reports), aligned to `float`, not overlapping;
/// `scale`: `in_channels` floats (`scale_len`).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL/dead/wrong-type handle, a plan of
/// another family, weights not packed for this plan at the active SIMD level, a NULL,
/// misaligned, overlapping or short buffer, or a wrong `scale_len`.
///
/// # Safety
/// `packed` points to `packed_bytes` readable bytes, `scale` to `scale_len` readable
/// floats and `out` to `out_bytes` writable bytes, `out` not accessed by another
/// thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_scale_packed_input_channels(
    plan: *const effnet_conv_plan,
    packed: *const c_void,
    packed_bytes: usize,
    scale: *const f32,
    scale_len: usize,
    out: *mut c_void,
    out_bytes: usize,
) -> effnet_status {
    guard("effnet_conv_scale_packed_input_channels", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let plan = unsafe { handle::get(plan, "`plan`") }?;
        let conv = &plan.conv;
        let bp = packed_buf("packed", conv, packed, packed_bytes)?;
        let bs = Buf::input("scale", scale, scale_len, conv.shape().desc.in_channels);
        let mut bo = packed_buf("out", conv, out.cast_const(), out_bytes)?;
        bo.output = true;
        buffers::check(&[bp, bs, bo])?;
        // SAFETY: checked above; readable/writable and exclusive by the contract.
        let (packed, scale, out) = unsafe {
            (
                buffers::input(&bp),
                buffers::input(&bs),
                buffers::output(&bo),
            )
        };
        conv.scale_packed_input_channels(packed, scale, out)?;
        Ok(())
    })
}
