//! Convolution backward passes: backward-data and backward-weight, allocating and with
//! a caller's workspace.

use std::ffi::c_void;

use effnet_core::kernels::conv::ConvPass;

use crate::buffers::{self, Buf, NO_WORKSPACE, workspace_buf};
use crate::context::effnet_context;
use crate::conv::{ctx_and_plan, effnet_conv_plan, grad_mode, run_pass};
use crate::status::{Outcome, effnet_status, guard};

/// Backward-data pass: `dx = conv_transpose(dy, w)`, the gradient of the loss with
/// respect to the input (the adjoint of the forward pass in `x`), run on `ctx`'s
/// threads. `dx` is overwritten.
///
/// Buffers (`float`, element counts from `effnet_conv_plan_shape`):
/// - `dy`: output gradient, NHWC `[batch][out_h][out_w][out_channels]`, `dy_len = y_len`
/// - `w`: weight `[kernel_h][kernel_w][group_size][out_channels]`, `w_len = w_len`
/// - `dx`: input gradient, NHWC `[batch][in_h][in_w][in_channels]`, `dx_len = x_len`
///
/// Ownership, alignment, overlap and errors: as `effnet_conv_forward` (`dx` is the
/// output).
///
/// # Safety
/// As `effnet_conv_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_backward_data(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    dy: *const f32,
    dy_len: usize,
    w: *const f32,
    w_len: usize,
    dx: *mut f32,
    dx_len: usize,
) -> effnet_status {
    guard("effnet_conv_backward_data", || {
        // SAFETY: forwarded from this function's contract.
        unsafe { backward_data(ctx, plan, dy, dy_len, w, w_len, dx, dx_len, None) }
    })
}

/// `effnet_conv_backward_data` with its scratch memory in the caller's `workspace` of
/// `workspace_bytes` bytes (at least what `effnet_conv_workspace_size` reports for
/// `EFFNET_CONV_PASS_BACKWARD_DATA` on this context). Workspace rules and errors: as
/// `effnet_conv_forward_ws`.
///
/// # Safety
/// As `effnet_conv_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_backward_data_ws(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    dy: *const f32,
    dy_len: usize,
    w: *const f32,
    w_len: usize,
    dx: *mut f32,
    dx_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_conv_backward_data_ws", || {
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { backward_data(ctx, plan, dy, dy_len, w, w_len, dx, dx_len, ws) }
    })
}

/// The backward-data entry points; `ws` is the workspace argument of the `_ws` form.
///
/// # Safety
/// As `effnet_conv_backward_data_ws`.
#[allow(clippy::too_many_arguments)]
unsafe fn backward_data(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    dy: *const f32,
    dy_len: usize,
    w: *const f32,
    w_len: usize,
    dx: *mut f32,
    dx_len: usize,
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, conv) = unsafe { ctx_and_plan(ctx, plan) }?;
    let s = conv.shape();
    let bdy = Buf::input("dy", dy, dy_len, s.y_len);
    let bw = Buf::input("w", w, w_len, s.w_len);
    let bdx = Buf::output("dx", dx, dx_len, s.x_len);
    let bws = ws.map(|(p, n)| workspace_buf(p, n));
    buffers::check(&[bdy, bw, bdx, bws.unwrap_or(NO_WORKSPACE)])?;
    // SAFETY: checked above; readable/writable and exclusive by the caller's
    // contract.
    let (dy, w, dx, wsb) = unsafe {
        (
            buffers::input(&bdy),
            buffers::input(&bw),
            buffers::output(&bdx),
            bws.as_ref().map(|b| buffers::opt_output(b)),
        )
    };
    run_pass(ctx, conv, ConvPass::BackwardData, wsb, ws, |ws| match ws {
        Some(ws) => conv.backward_data_with_workspace(dy, w, dx, ws),
        None => conv.backward_data(dy, w, dx),
    })
}

/// Backward-weight pass: the gradients of the loss with respect to the weight and
/// (if `dbias` is not NULL) the bias, run on `ctx`'s threads. With `accumulate = 0`
/// they overwrite `dw` / `dbias`; with `accumulate = 1` they are added to them (for
/// gradients summed over several calls). Deterministic: the same bits for any number
/// of threads.
///
/// Buffers (`float`, element counts from `effnet_conv_plan_shape`):
/// - `x`: input, NHWC `[batch][in_h][in_w][in_channels]`, `x_len = x_len`
/// - `dy`: output gradient, NHWC `[batch][out_h][out_w][out_channels]`, `dy_len = y_len`
/// - `dw`: weight gradient `[kernel_h][kernel_w][group_size][out_channels]`,
///   `dw_len = w_len`
/// - `dbias`: bias gradient `[out_channels]` (the sum of `dy` over batch, height and
///   width), or NULL with `dbias_len = 0` to skip it
///
/// Ownership, alignment and overlap: as `effnet_conv_forward` (`dw` and `dbias` are
/// the outputs; they must not overlap each other or the inputs).
///
/// Errors: as `effnet_conv_forward`, and `EFFNET_INVALID_ARGUMENT` for an
/// `accumulate` other than 0 or 1.
///
/// # Safety
/// As `effnet_conv_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_backward_weight(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    dy: *const f32,
    dy_len: usize,
    dw: *mut f32,
    dw_len: usize,
    dbias: *mut f32,
    dbias_len: usize,
    accumulate: i32,
) -> effnet_status {
    guard("effnet_conv_backward_weight", || {
        let (bufs, ws) = ([x, dy], None);
        // SAFETY: forwarded from this function's contract.
        unsafe {
            backward_weight(
                ctx,
                plan,
                bufs,
                [x_len, dy_len],
                dw,
                dw_len,
                dbias,
                dbias_len,
                accumulate,
                ws,
            )
        }
    })
}

/// `effnet_conv_backward_weight` with its scratch memory in the caller's `workspace`
/// of `workspace_bytes` bytes (at least what `effnet_conv_workspace_size` reports for
/// `EFFNET_CONV_PASS_BACKWARD_WEIGHT` on this context; the same size with or without
/// `dbias`). Workspace rules and errors: as `effnet_conv_forward_ws`.
///
/// # Safety
/// As `effnet_conv_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_backward_weight_ws(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    dy: *const f32,
    dy_len: usize,
    dw: *mut f32,
    dw_len: usize,
    dbias: *mut f32,
    dbias_len: usize,
    accumulate: i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_conv_backward_weight_ws", || {
        let (bufs, ws) = ([x, dy], Some((workspace, workspace_bytes)));
        // SAFETY: forwarded from this function's contract.
        unsafe {
            backward_weight(
                ctx,
                plan,
                bufs,
                [x_len, dy_len],
                dw,
                dw_len,
                dbias,
                dbias_len,
                accumulate,
                ws,
            )
        }
    })
}

/// The backward-weight entry points (`[x, dy]` and their counts); `ws` is the workspace
/// argument of the `_ws` form.
///
/// # Safety
/// As `effnet_conv_backward_weight_ws`.
#[allow(clippy::too_many_arguments)]
unsafe fn backward_weight(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    [x, dy]: [*const f32; 2],
    [x_len, dy_len]: [usize; 2],
    dw: *mut f32,
    dw_len: usize,
    dbias: *mut f32,
    dbias_len: usize,
    accumulate: i32,
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, conv) = unsafe { ctx_and_plan(ctx, plan) }?;
    let mode = grad_mode(accumulate)?;
    let s = conv.shape();
    let bx = Buf::input("x", x, x_len, s.x_len);
    let bdy = Buf::input("dy", dy, dy_len, s.y_len);
    let bdw = Buf::output("dw", dw, dw_len, s.w_len);
    let bdb = Buf::output("dbias", dbias, dbias_len, s.desc.out_channels).optional();
    let bws = ws.map(|(p, n)| workspace_buf(p, n));
    buffers::check(&[bx, bdy, bdw, bdb, bws.unwrap_or(NO_WORKSPACE)])?;
    // SAFETY: checked above; readable/writable and exclusive by the caller's
    // contract.
    let (x, dy, dw, dbias, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::input(&bdy),
            buffers::output(&bdw),
            buffers::opt_output(&bdb),
            bws.as_ref().map(|b| buffers::opt_output(b)),
        )
    };
    run_pass(
        ctx,
        conv,
        ConvPass::BackwardWeight,
        wsb,
        ws,
        |ws| match ws {
            Some(ws) => conv.backward_weight_with_workspace(x, dy, dw, dbias, mode, ws),
            None => conv.backward_weight(x, dy, dw, dbias, mode),
        },
    )
}
