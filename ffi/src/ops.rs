//! The operations without a plan: element-wise activations, global average pooling,
//! the squeeze-excite gate and the softmax cross-entropy loss.

use std::ffi::c_void;

use effnet_core::kernels::activation::{self, Activation};
use effnet_core::kernels::gate;
use effnet_core::kernels::loss::{CrossEntropy, Targets};
use effnet_core::kernels::pool::{self, Nhwc, PoolPass};

use crate::buffers::{self, Buf};
use crate::context::effnet_context;
use crate::conv::grad_mode;
use crate::handle;
use crate::sized::{self, SizedStruct, int_field};
use crate::status::{Failure, Outcome, effnet_status, guard};

/// An element-wise activation (the `activation` fields of descriptors and the
/// argument of `effnet_activation_forward` / `_backward`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_activation {
    /// `act(u) = u`.
    EFFNET_ACT_IDENTITY = 0,
    /// `act(u) = max(u, 0)` (derivative 0 at 0).
    EFFNET_ACT_RELU = 1,
    /// `act(u) = 1/(1 + exp(-u))`.
    EFFNET_ACT_SIGMOID = 2,
    /// Swish / SiLU: `act(u) = u/(1 + exp(-u))`.
    EFFNET_ACT_SWISH = 3,
}

/// The C value of an activation (the inverse of [`activation_of`]).
pub fn activation_value(a: Activation) -> u32 {
    match a {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Sigmoid => 2,
        Activation::Swish => 3,
    }
}

/// The activation a C value names; `field` names the descriptor field or argument
/// (`"effnet_norm_desc.activation"`, `` "`activation`" ``) in messages, which list
/// the valid values.
pub fn activation_of(field: &str, v: u32) -> Outcome<Activation> {
    match v {
        0 => Ok(Activation::Identity),
        1 => Ok(Activation::Relu),
        2 => Ok(Activation::Sigmoid),
        3 => Ok(Activation::Swish),
        _ => Err(Failure::invalid(format!(
            "{field} = {v} is not an effnet_activation; pass 0 (EFFNET_ACT_IDENTITY), \
             1 (EFFNET_ACT_RELU), 2 (EFFNET_ACT_SIGMOID) or 3 (EFFNET_ACT_SWISH)"
        ))),
    }
}

/// Element-wise `y = act(x)`, run on `ctx`'s threads; `y` is overwritten. `x` and `y`
/// have `len` elements each (any layout; `len` at least 1) and must not overlap.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle, an unknown `activation`, a zero
/// `len`, or a NULL, misaligned or overlapping buffer.
///
/// # Safety
/// `x` and `y` point to `len` readable / writable `float`s, not accessed by another
/// thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_activation_forward(
    ctx: *const effnet_context,
    activation: u32,
    x: *const f32,
    y: *mut f32,
    len: usize,
) -> effnet_status {
    guard("effnet_activation_forward", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let ctx = unsafe { handle::get(ctx, "`ctx`") }?;
        let act = activation_of("`activation`", activation)?;
        positive("len", len)?;
        let bx = Buf::input("x", x, len, len);
        let by = Buf::output("y", y, len, len);
        buffers::check(&[bx, by])?;
        // SAFETY: checked above; valid and exclusive by the caller's contract.
        let (x, y) = unsafe { (buffers::input(&bx), buffers::output(&by)) };
        ctx.install(|| activation::forward(act, x, y))?;
        Ok(())
    })
}

/// Element-wise `dx = dy * act'(x)` (`x` is the activation's input), run on `ctx`'s
/// threads; `dx` is overwritten. All three buffers have `len` elements.
///
/// Errors and safety: as `effnet_activation_forward` (`dx` is the output).
///
/// # Safety
/// As `effnet_activation_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_activation_backward(
    ctx: *const effnet_context,
    activation: u32,
    x: *const f32,
    dy: *const f32,
    dx: *mut f32,
    len: usize,
) -> effnet_status {
    guard("effnet_activation_backward", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let ctx = unsafe { handle::get(ctx, "`ctx`") }?;
        let act = activation_of("`activation`", activation)?;
        positive("len", len)?;
        let bx = Buf::input("x", x, len, len);
        let bdy = Buf::input("dy", dy, len, len);
        let bdx = Buf::output("dx", dx, len, len);
        buffers::check(&[bx, bdy, bdx])?;
        // SAFETY: checked above; valid and exclusive by the caller's contract.
        let (x, dy, dx) = unsafe {
            (
                buffers::input(&bx),
                buffers::input(&bdy),
                buffers::output(&bdx),
            )
        };
        ctx.install(|| activation::backward(act, x, dy, dx))?;
        Ok(())
    })
}

fn positive(name: &str, v: usize) -> Outcome {
    if v == 0 {
        return Err(Failure::invalid(format!("`{name}` is 0")));
    }
    Ok(())
}

/// The shape of an NHWC activation `[batch][height][width][channels]`, for the pooling
/// and gate functions. Set `struct_size = sizeof(effnet_nhwc)`. Every size at least 1
/// and the element count addressable (else `EFFNET_INVALID_ARGUMENT`).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_nhwc {
    /// `sizeof(effnet_nhwc)` as the caller was compiled.
    pub struct_size: usize,
    /// Images (N).
    pub batch: i64,
    /// Height (H).
    pub height: i64,
    /// Width (W).
    pub width: i64,
    /// Channels (C).
    pub channels: i64,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_nhwc {
    const C_NAME: &'static str = "effnet_nhwc";
}

/// Reads and validates a shape argument.
///
/// # Safety
/// As `sized::read`.
unsafe fn nhwc(shape: *const effnet_nhwc) -> Outcome<Nhwc> {
    // SAFETY: forwarded.
    let s = unsafe { sized::read(shape, "`shape`") }?;
    let f = |name, v| int_field("effnet_nhwc", name, v, 1);
    Ok(Nhwc::new(
        f("batch", s.batch)?,
        f("height", s.height)?,
        f("width", s.width)?,
        f("channels", s.channels)?,
    )?)
}

/// The context and shape of a pooling or gate call, checked.
///
/// # Safety
/// As the entry points' contracts.
unsafe fn ctx_and_shape<'a>(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
) -> Outcome<(&'a effnet_context, Nhwc)> {
    // SAFETY: forwarded; checked before use.
    let ctx = unsafe { handle::get(ctx, "`ctx`") }?;
    // SAFETY: forwarded.
    Ok((ctx, unsafe { nhwc(shape) }?))
}

/// A pass of the global average pooling (the `pass` argument of
/// `effnet_global_avg_pool_workspace_size`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_pool_pass {
    /// `effnet_global_avg_pool_forward` / `_forward_ws`.
    EFFNET_POOL_PASS_FORWARD = 0,
    /// `effnet_global_avg_pool_backward` / `_backward_ws`.
    EFFNET_POOL_PASS_BACKWARD = 1,
}

fn pool_pass_of(v: u32) -> Outcome<PoolPass> {
    match v {
        0 => Ok(PoolPass::Forward),
        1 => Ok(PoolPass::Backward),
        _ => Err(Failure::invalid(format!(
            "pass = {v} is not an effnet_pool_pass"
        ))),
    }
}

/// The workspace of a `_ws` call (`None`: the allocating form).
type Ws = Option<(*mut c_void, usize)>;

/// Writes to `*out_bytes` the size in bytes of the workspace that pass `pass` (an
/// `effnet_pool_pass` value) of the global average pooling of `shape` needs (the
/// forward's per-chunk partial sums, the backward's scaled gradient): pass a buffer of
/// at least that many bytes to the `_ws` form. It does not depend on the context's
/// thread count or the SIMD level.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle or shape, an unknown `pass`, or
/// a NULL or misaligned `out_bytes`.
///
/// # Safety
/// `shape` is NULL or points to its `struct_size` readable bytes; `out_bytes` is NULL
/// or points to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_global_avg_pool_workspace_size(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    pass: u32,
    out_bytes: *mut usize,
) -> effnet_status {
    guard("effnet_global_avg_pool_workspace_size", || {
        // SAFETY: the caller's contract.
        let (_ctx, s) = unsafe { ctx_and_shape(ctx, shape) }?;
        let floats = pool::workspace_len(&s, pool_pass_of(pass)?);
        // SAFETY: the caller's contract.
        unsafe { buffers::write_workspace_size(out_bytes, floats) }
    })
}

/// Runs a plan-less op on `ctx`'s threads, on the caller's workspace (first checked
/// to hold `floats` floats; `query` names the size query) or allocating.
fn run_op<'a, R: Send>(
    ctx: &effnet_context,
    floats: usize,
    query: &str,
    (wsb, ws): (Option<&'a mut [f32]>, Ws),
    run: impl FnOnce(Option<&'a mut [f32]>) -> effnet_core::Result<R> + Send,
) -> Outcome<R> {
    buffers::run_pass(
        ctx,
        || buffers::workspace_bytes(floats),
        query,
        wsb,
        ws,
        run,
    )
}

const POOL_QUERY: &str = "effnet_global_avg_pool_workspace_size";

/// Global average pooling `y[n][c] = mean over h, w of x[n][h][w][c]`, run on `ctx`'s
/// threads (deterministic for any thread count); `y` is overwritten.
///
/// Buffers: `x` NHWC `[batch][height][width][channels]` (`x_len = batch*height*width*
/// channels`); `y` `[batch][channels]` (`y_len = batch*channels`). The caller owns
/// both; `y` must not overlap `x`.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle or shape, or a NULL, misaligned,
/// overlapping or wrongly sized buffer.
///
/// # Safety
/// `shape` is NULL or points to its `struct_size` readable bytes; each buffer points to
/// its count of `float`s, readable (inputs) or writable (outputs) during the call and
/// not accessed by another thread meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_global_avg_pool_forward(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    x: *const f32,
    x_len: usize,
    y: *mut f32,
    y_len: usize,
) -> effnet_status {
    guard("effnet_global_avg_pool_forward", || {
        // SAFETY: forwarded from this function's contract.
        unsafe { pool_forward(ctx, shape, (x, x_len), (y, y_len), None) }
    })
}

/// `effnet_global_avg_pool_forward` with its scratch memory in the caller's
/// `workspace` of `workspace_bytes` bytes (at least what
/// `effnet_global_avg_pool_workspace_size` reports for `EFFNET_POOL_PASS_FORWARD`;
/// any contents, left unspecified): the same bits, and no allocation. `workspace`
/// must be aligned to `float` (64 bytes is best), must not overlap any other buffer,
/// may be NULL only with `workspace_bytes = 0` when the pass needs none, and must not
/// be used by another call at the same time.
///
/// Errors: as `effnet_global_avg_pool_forward`, and `EFFNET_INVALID_ARGUMENT` for a
/// workspace that is too small, misaligned, overlapping, or NULL with a non-zero size.
///
/// # Safety
/// As `effnet_global_avg_pool_forward`; `workspace` is NULL or points to
/// `workspace_bytes` writable bytes not accessed by anyone else during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_global_avg_pool_forward_ws(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    x: *const f32,
    x_len: usize,
    y: *mut f32,
    y_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_global_avg_pool_forward_ws", || {
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { pool_forward(ctx, shape, (x, x_len), (y, y_len), ws) }
    })
}

/// The pooling forward entry points.
///
/// # Safety
/// As `effnet_global_avg_pool_forward_ws`.
unsafe fn pool_forward(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    (x, x_len): (*const f32, usize),
    (y, y_len): (*mut f32, usize),
    ws: Ws,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, s) = unsafe { ctx_and_shape(ctx, shape) }?;
    let bx = Buf::input("x", x, x_len, s.len());
    let by = Buf::output("y", y, y_len, s.pooled_len());
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bx, by, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (x, y, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::output(&by),
            buffers::opt_output(&bws),
        )
    };
    let floats = pool::workspace_len(&s, PoolPass::Forward);
    run_op(ctx, floats, POOL_QUERY, (wsb, ws), |w| match w {
        Some(w) => pool::global_avg_pool_with_workspace(&s, x, y, w),
        None => pool::global_avg_pool(&s, x, y),
    })
}

/// Backward of the global average pooling: `dx[n][h][w][c] = dy[n][c]/(height*width)`,
/// overwritten (`accumulate = 0`) or added (`accumulate = 1`, e.g. when `x` also feeds
/// another branch).
///
/// Buffers: `dy` `[batch][channels]`, `dx` NHWC. Errors and safety as
/// `effnet_global_avg_pool_forward`, plus an `accumulate` other than 0 or 1.
///
/// # Safety
/// As `effnet_global_avg_pool_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_global_avg_pool_backward(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    dy: *const f32,
    dy_len: usize,
    dx: *mut f32,
    dx_len: usize,
    accumulate: i32,
) -> effnet_status {
    guard("effnet_global_avg_pool_backward", || {
        // SAFETY: forwarded from this function's contract.
        unsafe { pool_backward(ctx, shape, (dy, dy_len), (dx, dx_len), accumulate, None) }
    })
}

/// `effnet_global_avg_pool_backward` with its scratch memory in the caller's
/// `workspace` (at least what `effnet_global_avg_pool_workspace_size` reports for
/// `EFFNET_POOL_PASS_BACKWARD`). Workspace rules and errors: as
/// `effnet_global_avg_pool_forward_ws`.
///
/// # Safety
/// As `effnet_global_avg_pool_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_global_avg_pool_backward_ws(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    dy: *const f32,
    dy_len: usize,
    dx: *mut f32,
    dx_len: usize,
    accumulate: i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_global_avg_pool_backward_ws", || {
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { pool_backward(ctx, shape, (dy, dy_len), (dx, dx_len), accumulate, ws) }
    })
}

/// The pooling backward entry points.
///
/// # Safety
/// As `effnet_global_avg_pool_backward_ws`.
unsafe fn pool_backward(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    (dy, dy_len): (*const f32, usize),
    (dx, dx_len): (*mut f32, usize),
    accumulate: i32,
    ws: Ws,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, s) = unsafe { ctx_and_shape(ctx, shape) }?;
    let mode = grad_mode(accumulate)?;
    let bdy = Buf::input("dy", dy, dy_len, s.pooled_len());
    let bdx = Buf::output("dx", dx, dx_len, s.len());
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bdy, bdx, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (dy, dx, wsb) = unsafe {
        (
            buffers::input(&bdy),
            buffers::output(&bdx),
            buffers::opt_output(&bws),
        )
    };
    let floats = pool::workspace_len(&s, PoolPass::Backward);
    run_op(ctx, floats, POOL_QUERY, (wsb, ws), |w| match w {
        Some(w) => pool::global_avg_pool_backward_with_workspace(&s, dy, dx, mode, w),
        None => pool::global_avg_pool_backward(&s, dy, dx, mode),
    })
}

/// Squeeze-excite gate `y[n][h][w][c] = x[n][h][w][c] * gate[n][c]`, run on `ctx`'s
/// threads; `y` is overwritten.
///
/// Buffers: `x`, `y` NHWC (`batch*height*width*channels`); `gate` `[batch][channels]`.
/// Errors and safety as `effnet_global_avg_pool_forward`.
///
/// # Safety
/// As `effnet_global_avg_pool_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_gate_forward(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    x: *const f32,
    x_len: usize,
    gate: *const f32,
    gate_len: usize,
    y: *mut f32,
    y_len: usize,
) -> effnet_status {
    guard("effnet_gate_forward", || {
        // SAFETY: the caller's contract.
        let (ctx, s) = unsafe { ctx_and_shape(ctx, shape) }?;
        let bx = Buf::input("x", x, x_len, s.len());
        let bg = Buf::input("gate", gate, gate_len, s.pooled_len());
        let by = Buf::output("y", y, y_len, s.len());
        buffers::check(&[bx, bg, by])?;
        // SAFETY: checked above; valid and exclusive by the caller's contract.
        let (x, g, y) = unsafe {
            (
                buffers::input(&bx),
                buffers::input(&bg),
                buffers::output(&by),
            )
        };
        ctx.install(|| gate::forward(&s, x, g, y))?;
        Ok(())
    })
}

/// Writes to `*out_bytes` the size in bytes of the workspace `effnet_gate_backward_ws`
/// needs for `shape` (the per-chunk partial gate gradients; the forward needs none).
/// It does not depend on the context's thread count or the SIMD level.
///
/// Errors and safety: as `effnet_global_avg_pool_workspace_size`.
///
/// # Safety
/// As `effnet_global_avg_pool_workspace_size`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_gate_backward_workspace_size(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    out_bytes: *mut usize,
) -> effnet_status {
    guard("effnet_gate_backward_workspace_size", || {
        // SAFETY: the caller's contract.
        let (_ctx, s) = unsafe { ctx_and_shape(ctx, shape) }?;
        // SAFETY: the caller's contract.
        unsafe { buffers::write_workspace_size(out_bytes, gate::backward_workspace_len(&s)) }
    })
}

/// Backward of the gate: `dx = dy * gate[n][c]` and `dgate[n][c] = sum over h, w of
/// dy*x`, both overwritten (the gate gradient is deterministic for any thread count).
///
/// Buffers: `dy`, `x`, `dx` NHWC; `gate`, `dgate` `[batch][channels]`. Errors and
/// safety as `effnet_global_avg_pool_forward` (`dx`, `dgate` are the outputs).
///
/// # Safety
/// As `effnet_global_avg_pool_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_gate_backward(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    dy: *const f32,
    dy_len: usize,
    x: *const f32,
    x_len: usize,
    gate: *const f32,
    gate_len: usize,
    dx: *mut f32,
    dx_len: usize,
    dgate: *mut f32,
    dgate_len: usize,
) -> effnet_status {
    guard("effnet_gate_backward", || {
        let lens = [dy_len, x_len, gate_len, dx_len, dgate_len];
        // SAFETY: forwarded from this function's contract.
        unsafe { gate_backward(ctx, shape, [dy, x, gate], [dx, dgate], lens, None) }
    })
}

/// `effnet_gate_backward` with its scratch memory in the caller's `workspace` (at
/// least what `effnet_gate_backward_workspace_size` reports). Workspace rules and
/// errors: as `effnet_global_avg_pool_forward_ws`.
///
/// # Safety
/// As `effnet_global_avg_pool_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_gate_backward_ws(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    dy: *const f32,
    dy_len: usize,
    x: *const f32,
    x_len: usize,
    gate: *const f32,
    gate_len: usize,
    dx: *mut f32,
    dx_len: usize,
    dgate: *mut f32,
    dgate_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_gate_backward_ws", || {
        let lens = [dy_len, x_len, gate_len, dx_len, dgate_len];
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { gate_backward(ctx, shape, [dy, x, gate], [dx, dgate], lens, ws) }
    })
}

/// The gate backward entry points.
///
/// # Safety
/// As `effnet_gate_backward_ws`.
unsafe fn gate_backward(
    ctx: *const effnet_context,
    shape: *const effnet_nhwc,
    [dy, x, gate]: [*const f32; 3],
    [dx, dgate]: [*mut f32; 2],
    [dy_len, x_len, gate_len, dx_len, dgate_len]: [usize; 5],
    ws: Ws,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, s) = unsafe { ctx_and_shape(ctx, shape) }?;
    let bdy = Buf::input("dy", dy, dy_len, s.len());
    let bx = Buf::input("x", x, x_len, s.len());
    let bg = Buf::input("gate", gate, gate_len, s.pooled_len());
    let bdx = Buf::output("dx", dx, dx_len, s.len());
    let bdg = Buf::output("dgate", dgate, dgate_len, s.pooled_len());
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bdy, bx, bg, bdx, bdg, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (dy, x, g, dx, dg, wsb) = unsafe {
        (
            buffers::input(&bdy),
            buffers::input(&bx),
            buffers::input(&bg),
            buffers::output(&bdx),
            buffers::output(&bdg),
            buffers::opt_output(&bws),
        )
    };
    let query = "effnet_gate_backward_workspace_size";
    run_op(
        ctx,
        gate::backward_workspace_len(&s),
        query,
        (wsb, ws),
        |w| match w {
            Some(w) => gate::backward_with_workspace(&s, dy, x, g, dx, dg, w),
            None => gate::backward(&s, dy, x, g, dx, dg),
        },
    )
}

/// Labels as class indices, checked against `classes`.
pub fn labels_of(labels: &[i64], classes: usize) -> Outcome<Vec<usize>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            usize::try_from(l)
                .ok()
                .filter(|&l| l < classes)
                .ok_or_else(|| {
                    Failure::invalid(format!(
                        "label {l} of sample {i} is out of range for {classes} classes"
                    ))
                })
        })
        .collect()
}

/// Writes to `*out_bytes` the size in bytes of the workspace `effnet_cross_entropy_ws`
/// needs for `batch` samples of `classes` classes (the per-sample losses). It does not
/// depend on the context's thread count or the SIMD level.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle, `batch` or `classes` of 0, or a
/// NULL or misaligned `out_bytes`.
///
/// # Safety
/// `ctx` is NULL or a context handle; `out_bytes` is NULL or points to a writable
/// `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_cross_entropy_workspace_size(
    ctx: *const effnet_context,
    batch: usize,
    classes: usize,
    out_bytes: *mut usize,
) -> effnet_status {
    guard("effnet_cross_entropy_workspace_size", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        unsafe { handle::get(ctx, "`ctx`") }?;
        let ce = CrossEntropy::new(batch, classes, 0.0)?;
        // SAFETY: the caller's contract.
        unsafe { buffers::write_workspace_size(out_bytes, ce.workspace_len()) }
    })
}

/// Softmax cross-entropy with label smoothing, averaged over the batch, and (if
/// `dlogits` is not NULL) its gradient with respect to the logits, run on `ctx`'s
/// threads. The mean loss is written to `*out_loss`; `dlogits` is overwritten.
///
/// Targets: exactly one of `labels` (`int64_t [batch]`, class indices in
/// `[0, classes)`) and `targets` (`float [batch][classes]`, one distribution per
/// sample, entries finite and >= 0) is non-NULL; the other is NULL with count 0. With
/// smoothing `eps` the target is `(1 - eps)*t + eps/classes`.
///
/// Buffers: `logits`, `dlogits` `[batch][classes]`; `out_loss` one `float`. The caller
/// owns every buffer; outputs must not overlap any other buffer.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle, `batch` or `classes` of 0, a
/// smoothing outside [0, 1), both or neither target given, an out-of-range label or
/// negative target, or a NULL, misaligned, overlapping or wrongly sized buffer.
///
/// # Safety
/// Every non-NULL pointer points to at least its count of elements, readable (inputs)
/// or writable (outputs) during the call and not accessed by another thread meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_cross_entropy(
    ctx: *const effnet_context,
    batch: usize,
    classes: usize,
    smoothing: f32,
    logits: *const f32,
    logits_len: usize,
    labels: *const i64,
    labels_len: usize,
    targets: *const f32,
    targets_len: usize,
    dlogits: *mut f32,
    dlogits_len: usize,
    out_loss: *mut f32,
) -> effnet_status {
    guard("effnet_cross_entropy", || {
        let (ins, lens) = (
            (logits, labels, targets),
            [logits_len, labels_len, targets_len],
        );
        let outs = (dlogits, dlogits_len, out_loss);
        // SAFETY: forwarded from this function's contract.
        unsafe { cross_entropy(ctx, (batch, classes, smoothing), ins, lens, outs, None) }
    })
}

/// `effnet_cross_entropy` with its scratch memory (the per-sample losses) in the
/// caller's `workspace` (at least what `effnet_cross_entropy_workspace_size` reports).
/// Workspace rules and errors: as `effnet_global_avg_pool_forward_ws` (with `labels`
/// the wrapper converts them to indices in a vector of `batch` entries).
///
/// # Safety
/// As `effnet_cross_entropy`; `workspace` is NULL or points to `workspace_bytes`
/// writable bytes not accessed by anyone else during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_cross_entropy_ws(
    ctx: *const effnet_context,
    batch: usize,
    classes: usize,
    smoothing: f32,
    logits: *const f32,
    logits_len: usize,
    labels: *const i64,
    labels_len: usize,
    targets: *const f32,
    targets_len: usize,
    dlogits: *mut f32,
    dlogits_len: usize,
    out_loss: *mut f32,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_cross_entropy_ws", || {
        let (ins, lens) = (
            (logits, labels, targets),
            [logits_len, labels_len, targets_len],
        );
        let outs = (dlogits, dlogits_len, out_loss);
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { cross_entropy(ctx, (batch, classes, smoothing), ins, lens, outs, ws) }
    })
}

/// The cross-entropy entry points.
///
/// # Safety
/// As `effnet_cross_entropy_ws`.
unsafe fn cross_entropy(
    ctx: *const effnet_context,
    (batch, classes, smoothing): (usize, usize, f32),
    (logits, labels, targets): (*const f32, *const i64, *const f32),
    [logits_len, labels_len, targets_len]: [usize; 3],
    (dlogits, dlogits_len, out_loss): (*mut f32, usize, *mut f32),
    ws: Ws,
) -> Outcome {
    // SAFETY: the caller's contract; the handle is checked before use.
    let ctx = unsafe { handle::get(ctx, "`ctx`") }?;
    let ce = CrossEntropy::new(batch, classes, smoothing)?;
    let nk = batch * classes; // checked by CrossEntropy::new
    if labels.is_null() == targets.is_null() {
        return Err(Failure::invalid(
            "pass exactly one of `labels` and `targets` (the other NULL with count 0)",
        ));
    }
    let bz = Buf::input("logits", logits, logits_len, nk);
    let bl = Buf::input_i64("labels", labels, labels_len, batch).optional();
    let bt = Buf::input("targets", targets, targets_len, nk).optional();
    let bd = Buf::output("dlogits", dlogits, dlogits_len, nk).optional();
    let bo = Buf::output("out_loss", out_loss, 1, 1);
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bz, bl, bt, bd, bo, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (z, t, d, out, wsb) = unsafe {
        (
            buffers::input(&bz),
            buffers::opt_input(&bt),
            buffers::opt_output(&bd),
            buffers::output(&bo),
            buffers::opt_output(&bws),
        )
    };
    let labels = if labels.is_null() {
        None
    } else {
        // SAFETY: as above.
        Some(labels_of(unsafe { buffers::input_i64(&bl) }, classes)?)
    };
    let targets = match (&labels, t) {
        (Some(l), _) => Targets::Labels(l),
        (None, Some(t)) => Targets::Soft(t),
        (None, None) => unreachable!("one target is present (checked)"),
    };
    let query = "effnet_cross_entropy_workspace_size";
    out[0] = run_op(ctx, ce.workspace_len(), query, (wsb, ws), |w| match w {
        Some(w) => ce.forward_backward_with_workspace(z, targets, d, w),
        None => ce.forward_backward(z, targets, d),
    })?;
    Ok(())
}
