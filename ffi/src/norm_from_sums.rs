//! A norm's training forward pass on statistics a convolution gathered
//! (`effnet_norm_forward_from_sums_ws`): the norm half of a convolution with the
//! statistics post-op, one pass over the convolution's output instead of two.

use std::ffi::c_void;

use crate::buffers::{self, Buf};
use crate::context::effnet_context;
use crate::handle::ctx_and;
use crate::norm::{affine_of, effnet_norm_plan, store_stats};
use crate::status::{effnet_status, guard};
use effnet_core::kernels::norm::NormPass;

/// The training forward pass of a norm plan (as `effnet_norm_forward_ws`) with the
/// statistics pass replaced by each sample's per-channel sums and sums of squares of
/// `x`: what `effnet_conv_forward_post` returns for its output with
/// `effnet_conv_post_ops.stats = 2`. GroupNorm and LayerNorm take each sample's
/// statistics from its own sums; BatchNorm adds the samples' sums in order (batch
/// statistics). The norm then reads `x` once (its apply pass) instead of twice; `y`
/// and `saved` agree with `effnet_norm_forward`'s to float rounding. Run on `ctx`'s
/// threads.
///
/// Buffers (counts from `effnet_norm_plan_shape`): `x`, `affine`, `y`, `saved` as in
/// `effnet_norm_forward`; `sums`, `squares`: `double [batch][channels]` each,
/// `sums_len = batch * channels` (aligned to `double`). `workspace`: as in
/// `effnet_norm_forward_ws` for `EFFNET_NORM_PASS_FORWARD` (NULL and 0 to let the
/// library allocate).
///
/// Errors: as `effnet_norm_forward_ws`; `EFFNET_INVALID_ARGUMENT` also for wrongly
/// sized, misaligned or NULL `sums` / `squares`.
///
/// # Safety
/// As `effnet_norm_forward_ws`; `sums` and `squares` point to `sums_len` readable
/// doubles each.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_forward_from_sums_ws(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    x: *const f32,
    x_len: usize,
    affine: *const f32,
    affine_len: usize,
    sums: *const f64,
    squares: *const f64,
    sums_len: usize,
    y: *mut f32,
    y_len: usize,
    saved: *mut f32,
    saved_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_norm_forward_from_sums_ws", || {
        // SAFETY: the caller's contract.
        let (ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
        let s = plan.shape();
        let d = plan.norm.desc();
        let nc = d.batch * d.channels;
        let bx = Buf::input("x", x, x_len, s.x_len);
        let ba = plan.affine_buf("affine", affine, affine_len)?;
        let bs = Buf::input_f64("sums", sums, sums_len, nc);
        let bq = Buf::input_f64("squares", squares, sums_len, nc);
        let by = Buf::output("y", y, y_len, s.x_len);
        let bsv = Buf::output("saved", saved, saved_len, s.saved_len);
        // NULL and 0: no workspace argument, the library allocates.
        let given = !workspace.is_null() || workspace_bytes != 0;
        let ws = given.then_some((workspace, workspace_bytes));
        let bws = buffers::workspace_arg(ws);
        buffers::check(&[bx, ba, bs, bq, by, bsv, bws])?;
        // SAFETY: checked above; valid and exclusive by the caller's contract.
        let (x, a, sums, squares, y, saved, wsb) = unsafe {
            (
                buffers::input(&bx),
                buffers::opt_input(&ba),
                buffers::input_f64(&bs),
                buffers::input_f64(&bq),
                buffers::output(&by),
                buffers::output(&bsv),
                buffers::opt_output(&bws),
            )
        };
        let norm = &plan.norm;
        let mut stats = norm.new_stats();
        let aff = affine_of(a, d.channels);
        let sq = (sums, squares);
        plan.run(ctx, NormPass::Forward, (wsb, ws), |w| match w {
            Some(w) => norm.forward_from_sums_with_workspace(x, aff, sq, y, &mut stats, w),
            None => norm.forward_from_sums(x, aff, sq, y, &mut stats),
        })?;
        store_stats(&stats, saved);
        Ok(())
    })
}
