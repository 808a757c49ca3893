//! Normalization (BatchNorm, GroupNorm, LayerNorm): descriptor, plan, shape query,
//! workspace query and the passes. The Proxy Norm activation (standalone or fused with
//! LayerNorm/GroupNorm) is in [`crate::proxy_norm`], which shares this module's
//! descriptor conversion and `saved` packing.

use std::ffi::c_void;

use crate::buffers::{self, Buf};
use crate::context::effnet_context;
use crate::conv::grad_mode;
use crate::handle::{self, Kind, ctx_and};
use crate::ops::activation_of;
use crate::sized::{self, SizedStruct, int_field};
use crate::status::{Failure, Outcome, effnet_status, guard};
use effnet_core::kernels::norm::{
    Affine, AffineGrads, Grouping, Norm, NormDesc, NormKind, NormPass, NormStats, RunningStats,
};

/// Which normalization (the `kind` field of `effnet_norm_desc`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_norm_kind {
    /// BatchNorm: statistics per channel over batch, height and width.
    EFFNET_NORM_BATCH = 0,
    /// GroupNorm: statistics per sample and group of channels (`groups` groups).
    EFFNET_NORM_GROUP = 1,
    /// LayerNorm: statistics per sample over height, width and channels.
    EFFNET_NORM_LAYER = 2,
}

/// How GroupNorm assigns channels to groups (the `grouping` field of
/// `effnet_norm_desc`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_norm_grouping {
    /// Channel `c` is in group `c / (channels/groups)` (PyTorch's GroupNorm).
    EFFNET_GROUPING_CONTIGUOUS = 0,
    /// Channel `c` is in group `c % groups`.
    EFFNET_GROUPING_STRIDED = 1,
}

/// A normalization of an NHWC tensor, optionally with a per-channel affine and a fused
/// activation. Set `struct_size = sizeof(effnet_norm_desc)` and zero what you do not
/// use.
///
/// Semantics, with `S` the set of elements sharing statistics with `x[n,h,w,c]`,
/// `mu = mean_S x`, `var = mean_S (x - mu)^2` (biased), `rstd = 1/sqrt(var + eps)`:
/// `y = act(gamma[c]*(x - mu)*rstd + beta[c])` (`gamma = 1`, `beta = 0` without
/// affine). Sets: BatchNorm one per channel (`channels` sets); GroupNorm one per sample
/// and group (`batch*groups` sets); LayerNorm one per sample (`batch` sets).
///
/// Rules (else `EFFNET_INVALID_ARGUMENT`): sizes at least 1; `groups` at least 1 and
/// dividing `channels` for GroupNorm, 0 for BatchNorm, 0 or 1 for LayerNorm; `eps`
/// finite and positive (0 means the default 1e-3); `affine` 0 or 1; `reserved` 0.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct effnet_norm_desc {
    /// `sizeof(effnet_norm_desc)` as the caller was compiled.
    pub struct_size: usize,
    /// Images in the batch (N).
    pub batch: i64,
    /// Height (H).
    pub h: i64,
    /// Width (W).
    pub w: i64,
    /// Channels (C).
    pub channels: i64,
    /// Number of groups (GroupNorm); 0 for BatchNorm, 0 or 1 for LayerNorm.
    pub groups: i64,
    /// ε added to the variance; 0 means the default 1e-3.
    pub eps: f32,
    /// An `effnet_norm_kind` value.
    pub kind: u32,
    /// An `effnet_norm_grouping` value (GroupNorm only; 0 otherwise).
    pub grouping: u32,
    /// The fused activation: an `effnet_activation` value (0 = identity).
    pub activation: u32,
    /// 1: the passes take the affine `[2][channels]` (gamma row, then beta row); 0:
    /// no affine (pass NULL).
    pub affine: u32,
    /// Must be zero.
    pub reserved: u32,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers and floats only.
unsafe impl SizedStruct for effnet_norm_desc {
    const C_NAME: &'static str = "effnet_norm_desc";
}

/// What `effnet_norm_plan_shape` reports. Set `struct_size = sizeof(effnet_norm_shape)`
/// before the call.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_norm_shape {
    /// `sizeof(effnet_norm_shape)` as the caller was compiled; kept by the call.
    pub struct_size: usize,
    /// Elements of `x`, `y`, `dy`, `dx`: `batch*h*w*channels`.
    pub x_len: usize,
    /// Elements of `affine` and `daffine`: `2*channels` (0 without affine).
    pub affine_len: usize,
    /// Statistics sets: `channels` (BatchNorm) or `batch*groups`.
    pub sets: usize,
    /// Elements of `saved`: `3*sets` (`[mean | var | rstd]`).
    pub saved_len: usize,
    /// Elements of `running` (BatchNorm): `2*channels` (`[mean | var]`); 0 otherwise.
    pub running_len: usize,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_norm_shape {
    const C_NAME: &'static str = "effnet_norm_shape";
}

/// A validated normalization, made by `effnet_norm_plan_create`, released by
/// `effnet_norm_plan_destroy`. Immutable, not tied to a context; usable by several
/// threads at once, but not while it is being destroyed.
pub struct effnet_norm_plan {
    magic: u64,
    pub(crate) norm: Norm,
    affine: bool,
}

handle::impl_handle!(effnet_norm_plan, Kind::NormPlan);

const NORM: &str = "effnet_norm_desc";

pub(crate) fn flag(strct: &str, name: &str, v: u32) -> Outcome<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(Failure::invalid(format!(
            "{strct}.{name} = {v}; pass 0 or 1"
        ))),
    }
}

pub(crate) fn reserved(strct: &str, v: u32) -> Outcome {
    if v != 0 {
        return Err(Failure::invalid(format!(
            "{strct}.reserved = {v} must be zero"
        )));
    }
    Ok(())
}

/// Converts the C descriptor (with the affine flag); the normalization's own rules are
/// checked by `Norm::new`.
pub fn to_norm_desc(d: &effnet_norm_desc) -> Outcome<(NormDesc, bool)> {
    reserved(NORM, d.reserved)?;
    let groups = int_field(NORM, "groups", d.groups, 0)?;
    let grouping = match d.grouping {
        0 => Grouping::Contiguous,
        1 => Grouping::Strided,
        v => {
            return Err(Failure::invalid(format!(
                "{NORM}.grouping = {v} is not an effnet_norm_grouping"
            )));
        }
    };
    let kind = match (d.kind, groups) {
        (0, 0) => NormKind::BatchNorm,
        (1, g) if g >= 1 => NormKind::GroupNorm {
            groups: g,
            grouping,
        },
        (2, 0 | 1) => NormKind::LayerNorm,
        (0 | 2, g) => {
            return Err(Failure::invalid(format!(
                "{NORM}.groups = {g}: BatchNorm takes 0, LayerNorm 0 or 1"
            )));
        }
        (1, _) => {
            return Err(Failure::invalid(format!(
                "{NORM}.groups = 0: GroupNorm needs at least 1 group"
            )));
        }
        (k, _) => {
            return Err(Failure::invalid(format!(
                "{NORM}.kind = {k} is not an effnet_norm_kind"
            )));
        }
    };
    if d.kind != 1 && d.grouping != 0 {
        return Err(Failure::invalid(format!(
            "{NORM}.grouping = {} is for GroupNorm only; pass 0",
            d.grouping
        )));
    }
    let desc = NormDesc {
        kind,
        batch: int_field(NORM, "batch", d.batch, 1)?,
        h: int_field(NORM, "h", d.h, 1)?,
        w: int_field(NORM, "w", d.w, 1)?,
        channels: int_field(NORM, "channels", d.channels, 1)?,
        eps: if d.eps == 0.0 { 1e-3 } else { d.eps },
        activation: activation_of(&format!("{NORM}.activation"), d.activation)?,
    };
    Ok((desc, flag(NORM, "affine", d.affine)?))
}

/// Validates `*desc` and stores a new normalization plan in `*out_plan`.
///
/// `ctx` must be live (the plan is not tied to it afterwards); the descriptor is
/// copied. Ownership: the caller owns the new plan and releases it with
/// `effnet_norm_plan_destroy`; `*out_plan` is written only on success.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL/dead/wrong-type `ctx`, a NULL or
/// misaligned `desc` or `out_plan`, a bad `struct_size`, or a descriptor that breaks
/// the rules of `effnet_norm_desc`.
///
/// # Safety
/// `ctx` is NULL or a context handle; `desc` is NULL or points to `desc->struct_size`
/// readable bytes; `out_plan` is NULL or points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_plan_create(
    ctx: *const effnet_context,
    desc: *const effnet_norm_desc,
    out_plan: *mut *mut effnet_norm_plan,
) -> effnet_status {
    guard("effnet_norm_plan_create", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        unsafe { handle::get(ctx, "`ctx`") }?;
        // SAFETY: the caller's contract; pointer and size checked inside.
        let desc = unsafe { sized::read(desc, "`desc`") }?;
        handle::check_out(out_plan, "`out_plan`")?;
        let (d, affine) = to_norm_desc(&desc)?;
        let plan = effnet_norm_plan {
            magic: Kind::NormPlan.magic(),
            norm: Norm::new(&d)?,
            affine,
        };
        // SAFETY: checked; writable (caller's promise).
        unsafe { handle::publish(out_plan, plan) }?;
        Ok(())
    })
}

/// Destroys a normalization plan. NULL is a no-op (returns `EFFNET_OK`).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` if `plan` is not a live normalization plan.
///
/// # Safety
/// `plan` is NULL or a handle from `effnet_norm_plan_create`, unused by any other
/// call, and not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_plan_destroy(plan: *mut effnet_norm_plan) -> effnet_status {
    // SAFETY: forwarded from this function's contract.
    guard("effnet_norm_plan_destroy", || unsafe {
        handle::destroy(plan, "`plan`")
    })
}

impl effnet_norm_plan {
    pub(crate) fn shape(&self) -> effnet_norm_shape {
        let c = self.norm.desc().channels;
        let bn = self.norm.desc().kind == NormKind::BatchNorm;
        effnet_norm_shape {
            struct_size: 0,
            x_len: self.norm.x_len(),
            affine_len: if self.affine { 2 * c } else { 0 },
            sets: self.norm.sets(),
            saved_len: 3 * self.norm.sets(),
            running_len: if bn { 2 * c } else { 0 },
        }
    }

    /// The `affine` argument: required with an affine, NULL without.
    pub(crate) fn affine_buf(
        &self,
        name: &'static str,
        ptr: *const f32,
        len: usize,
    ) -> Outcome<Buf> {
        self.affine_like(Buf::input(name, ptr, len, 2 * self.norm.desc().channels))
    }

    fn affine_like(&self, b: Buf) -> Outcome<Buf> {
        if self.affine {
            Ok(b)
        } else if !b.ptr.is_null() || b.len != 0 {
            Err(Failure::invalid(format!(
                "`{}`: the plan has no affine (effnet_norm_desc.affine = 0); pass NULL and 0",
                b.name
            )))
        } else {
            Ok(b.optional())
        }
    }
}

/// Fills `*out_shape` with the element counts of the plan's buffers. Set
/// `out_shape->struct_size = sizeof(effnet_norm_shape)` first.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL/dead/wrong-type `plan`, a NULL or
/// misaligned `out_shape` or a bad `struct_size`.
///
/// # Safety
/// `plan` is NULL or a plan handle; `out_shape` is NULL or points to a writable
/// `effnet_norm_shape` whose `struct_size` is set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_plan_shape(
    plan: *const effnet_norm_plan,
    out_shape: *mut effnet_norm_shape,
) -> effnet_status {
    guard("effnet_norm_plan_shape", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let plan = unsafe { handle::get(plan, "`plan`") }?;
        // SAFETY: the caller's contract; pointer and size checked inside.
        unsafe { sized::write(out_shape, "`out_shape`", plan.shape()) }
    })
}

/// `[mean | var | rstd]` as `NormStats`.
pub(crate) fn stats_of(saved: &[f32], sets: usize) -> NormStats {
    NormStats {
        mean: saved[..sets].to_vec(),
        var: saved[sets..2 * sets].to_vec(),
        rstd: saved[2 * sets..3 * sets].to_vec(),
    }
}

pub(crate) fn store_stats(s: &NormStats, out: &mut [f32]) {
    let n = s.mean.len();
    out[..n].copy_from_slice(&s.mean);
    out[n..2 * n].copy_from_slice(&s.var);
    out[2 * n..3 * n].copy_from_slice(&s.rstd);
}

pub(crate) fn affine_of(a: Option<&[f32]>, c: usize) -> Affine<'_> {
    match a {
        Some(a) => Affine::new(&a[..c], &a[c..]),
        None => Affine::NONE,
    }
}

/// A pass of a normalization plan (the `pass` argument of
/// `effnet_norm_workspace_size`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_norm_pass {
    /// `effnet_norm_forward` / `effnet_norm_forward_ws`.
    EFFNET_NORM_PASS_FORWARD = 0,
    /// `effnet_norm_forward_infer` / `effnet_norm_forward_infer_ws`.
    EFFNET_NORM_PASS_FORWARD_INFER = 1,
    /// `effnet_norm_backward` / `effnet_norm_backward_ws`.
    EFFNET_NORM_PASS_BACKWARD = 2,
}

fn norm_pass_of(v: u32) -> Outcome<NormPass> {
    match v {
        0 => Ok(NormPass::Forward),
        1 => Ok(NormPass::ForwardInfer),
        2 => Ok(NormPass::Backward),
        _ => Err(Failure::invalid(format!(
            "pass = {v} is not an effnet_norm_pass"
        ))),
    }
}

impl effnet_norm_plan {
    /// Runs `pass` on `ctx`'s threads, on the caller's workspace or allocating (see
    /// `buffers::run_pass`).
    pub(crate) fn run<'a, R: Send>(
        &self,
        ctx: &effnet_context,
        pass: NormPass,
        (wsb, ws): WsArgs<'a>,
        run: impl FnOnce(Option<&'a mut [f32]>) -> effnet_core::Result<R> + Send,
    ) -> Outcome<R> {
        let need = || buffers::workspace_bytes(self.norm.workspace_len(pass));
        buffers::run_pass(ctx, need, "effnet_norm_workspace_size", wsb, ws, run)
    }
}

/// The workspace of a `_ws` call once checked (its slice, `None` for NULL) and as
/// passed (`None` for the allocating form).
pub(crate) type WsArgs<'a> = (Option<&'a mut [f32]>, Option<(*mut c_void, usize)>);

/// Writes to `*out_bytes` the size in bytes of the workspace that pass `pass` (an
/// `effnet_norm_pass` value) of `plan` needs: pass a buffer of at least that many
/// bytes to the `_ws` form of the pass. It holds the per-chunk partial sums, the
/// per-sample (GroupNorm/LayerNorm) or per-batch (BatchNorm) coefficients and totals,
/// and for inference the folded scale and shift or the statistics of `x`. The size
/// depends on the plan and the pass only (not on the context's thread count or the
/// SIMD level); query once and reuse the buffer for every call of that pass.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type handle, an unknown
/// `pass`, or a NULL or misaligned `out_bytes`.
///
/// # Safety
/// `ctx` and `plan` are NULL or handles of their types; `out_bytes` is NULL or points
/// to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_workspace_size(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    pass: u32,
    out_bytes: *mut usize,
) -> effnet_status {
    guard("effnet_norm_workspace_size", || {
        // SAFETY: the caller's contract.
        let (_ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
        let floats = plan.norm.workspace_len(norm_pass_of(pass)?);
        // SAFETY: the caller's contract.
        unsafe { buffers::write_workspace_size(out_bytes, floats) }
    })
}

/// Training forward pass: `y = act(gamma*(x - mu)*rstd + beta)` with the statistics of
/// `x` (batch statistics for BatchNorm), which are written to `saved` for the backward
/// pass. Run on `ctx`'s threads; `y` and `saved` are overwritten.
///
/// Buffers (`float`, counts from `effnet_norm_plan_shape`):
/// - `x`: NHWC `[batch][h][w][channels]`, `x_len`
/// - `affine`: `[2][channels]` (gamma row, then beta row), `affine_len`; NULL and 0
///   when the plan has no affine
/// - `y`: NHWC like `x`, `y_len = x_len`
/// - `saved`: `[3][sets]` (mean, biased variance, rstd of every set; sets are channels
///   for BatchNorm, `[batch][groups]` otherwise), `saved_len`
///
/// Ownership: the caller owns every buffer; effnet uses them during the call only.
/// Outputs must not overlap any other buffer. Errors: `EFFNET_INVALID_ARGUMENT` for a
/// bad handle, a NULL, misaligned, overlapping or wrongly sized buffer.
///
/// # Safety
/// Every non-NULL pointer points to at least its count of `float`s, readable (inputs)
/// or writable (outputs) for the whole call and not accessed by another thread
/// meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_forward(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    x: *const f32,
    x_len: usize,
    affine: *const f32,
    affine_len: usize,
    y: *mut f32,
    y_len: usize,
    saved: *mut f32,
    saved_len: usize,
) -> effnet_status {
    guard("effnet_norm_forward", || {
        let bufs = [x_len, affine_len, y_len, saved_len];
        // SAFETY: forwarded from this function's contract.
        unsafe { norm_forward(ctx, plan, (x, affine, y, saved), bufs, None) }
    })
}

/// `effnet_norm_forward` with its scratch memory in the caller's `workspace` of
/// `workspace_bytes` bytes (at least what `effnet_norm_workspace_size` reports for
/// `EFFNET_NORM_PASS_FORWARD`; any contents, left unspecified). The same results, bit
/// for bit; the kernel then allocates nothing (the wrapper still copies the `saved`
/// statistics through a small vector of `saved_len` floats).
///
/// `workspace` must be aligned to `float` (64 bytes is best), must not overlap any
/// other buffer, and may be NULL only with `workspace_bytes = 0` when the pass needs
/// none. It must not be used by another call at the same time.
///
/// Errors: as `effnet_norm_forward`, and `EFFNET_INVALID_ARGUMENT` for a workspace
/// that is too small, misaligned, overlapping, or NULL with a non-zero size.
///
/// # Safety
/// As `effnet_norm_forward`; `workspace` is NULL or points to `workspace_bytes`
/// writable bytes not accessed by anyone else during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_forward_ws(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    x: *const f32,
    x_len: usize,
    affine: *const f32,
    affine_len: usize,
    y: *mut f32,
    y_len: usize,
    saved: *mut f32,
    saved_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_norm_forward_ws", || {
        let bufs = [x_len, affine_len, y_len, saved_len];
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { norm_forward(ctx, plan, (x, affine, y, saved), bufs, ws) }
    })
}

/// The training forward entry points; `ws` is the workspace argument of the `_ws`
/// form.
///
/// # Safety
/// As `effnet_norm_forward_ws`.
unsafe fn norm_forward(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    (x, affine, y, saved): (*const f32, *const f32, *mut f32, *mut f32),
    [x_len, affine_len, y_len, saved_len]: [usize; 4],
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
    let s = plan.shape();
    let bx = Buf::input("x", x, x_len, s.x_len);
    let ba = plan.affine_buf("affine", affine, affine_len)?;
    let by = Buf::output("y", y, y_len, s.x_len);
    let bs = Buf::output("saved", saved, saved_len, s.saved_len);
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bx, ba, by, bs, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (x, a, y, saved, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::opt_input(&ba),
            buffers::output(&by),
            buffers::output(&bs),
            buffers::opt_output(&bws),
        )
    };
    let norm = &plan.norm;
    let mut stats = norm.new_stats();
    let aff = affine_of(a, norm.desc().channels);
    plan.run(ctx, NormPass::Forward, (wsb, ws), |w| match w {
        Some(w) => norm.forward_with_workspace(x, aff, y, &mut stats, w),
        None => norm.forward(x, aff, y, &mut stats),
    })?;
    store_stats(&stats, saved);
    Ok(())
}

/// Inference forward pass: BatchNorm normalizes with the running statistics
/// `running = [2][channels]` (mean row, then unbiased variance row; required);
/// GroupNorm and LayerNorm use the statistics of `x` and take no running statistics
/// (NULL and 0). `y` is overwritten.
///
/// Buffers: `x`, `affine`, `y` as in `effnet_norm_forward`; `running` with
/// `running_len` from `effnet_norm_plan_shape`. Ownership, overlap and errors as
/// `effnet_norm_forward`.
///
/// # Safety
/// As `effnet_norm_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_forward_infer(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    x: *const f32,
    x_len: usize,
    affine: *const f32,
    affine_len: usize,
    running: *const f32,
    running_len: usize,
    y: *mut f32,
    y_len: usize,
) -> effnet_status {
    guard("effnet_norm_forward_infer", || {
        let bufs = [x_len, affine_len, running_len, y_len];
        // SAFETY: forwarded from this function's contract.
        unsafe { norm_forward_infer(ctx, plan, (x, affine, running, y), bufs, None) }
    })
}

/// `effnet_norm_forward_infer` with its scratch memory in the caller's `workspace`
/// (at least what `effnet_norm_workspace_size` reports for
/// `EFFNET_NORM_PASS_FORWARD_INFER`). Workspace rules and errors: as
/// `effnet_norm_forward_ws` (the wrapper copies BatchNorm's `running` through small
/// vectors of `channels` floats).
///
/// # Safety
/// As `effnet_norm_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_forward_infer_ws(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    x: *const f32,
    x_len: usize,
    affine: *const f32,
    affine_len: usize,
    running: *const f32,
    running_len: usize,
    y: *mut f32,
    y_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_norm_forward_infer_ws", || {
        let bufs = [x_len, affine_len, running_len, y_len];
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { norm_forward_infer(ctx, plan, (x, affine, running, y), bufs, ws) }
    })
}

/// The inference entry points; `ws` is the workspace argument of the `_ws` form.
///
/// # Safety
/// As `effnet_norm_forward_infer_ws`.
unsafe fn norm_forward_infer(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    (x, affine, running, y): (*const f32, *const f32, *const f32, *mut f32),
    [x_len, affine_len, running_len, y_len]: [usize; 4],
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
    let s = plan.shape();
    let bx = Buf::input("x", x, x_len, s.x_len);
    let ba = plan.affine_buf("affine", affine, affine_len)?;
    let mut br = Buf::input("running", running, running_len, s.running_len);
    if s.running_len == 0 {
        if !running.is_null() || running_len != 0 {
            return Err(Failure::invalid(
                "`running`: GroupNorm and LayerNorm take no running statistics; pass \
                 NULL and 0",
            ));
        }
        br = br.optional();
    }
    let by = Buf::output("y", y, y_len, s.x_len);
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bx, ba, br, by, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (x, a, r, y, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::opt_input(&ba),
            buffers::opt_input(&br),
            buffers::output(&by),
            buffers::opt_output(&bws),
        )
    };
    let norm = &plan.norm;
    let c = norm.desc().channels;
    let running = r.map(|r| RunningStats {
        mean: r[..c].to_vec(),
        var: r[c..].to_vec(),
    });
    let (aff, running) = (affine_of(a, c), running.as_ref());
    plan.run(ctx, NormPass::ForwardInfer, (wsb, ws), |w| match w {
        Some(w) => norm.forward_infer_with_workspace(x, aff, running, y, w),
        None => norm.forward_infer(x, aff, running, y),
    })
}

/// BatchNorm's running-statistics update after a training forward pass (PyTorch's
/// convention): `running = (1 - momentum)*running + momentum*batch`, with the unbiased
/// batch variance. `saved` is what `effnet_norm_forward` wrote; `running`
/// (`[2][channels]`: mean, variance) is read and updated in place. Initialize it to
/// mean 0, variance 1.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a plan that is not BatchNorm, a momentum
/// outside [0, 1], fewer than 2 values per channel, or a bad handle or buffer.
///
/// # Safety
/// As `effnet_norm_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_update_running(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    saved: *const f32,
    saved_len: usize,
    running: *mut f32,
    running_len: usize,
    momentum: f32,
) -> effnet_status {
    guard("effnet_norm_update_running", || {
        // SAFETY: the caller's contract.
        let (_ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
        let s = plan.shape();
        if s.running_len == 0 {
            return Err(Failure::invalid(
                "only BatchNorm plans keep running statistics",
            ));
        }
        let bs = Buf::input("saved", saved, saved_len, s.saved_len);
        let br = Buf::output("running", running, running_len, s.running_len);
        buffers::check(&[bs, br])?;
        // SAFETY: checked above; valid and exclusive by the caller's contract.
        let (saved, r) = unsafe { (buffers::input(&bs), buffers::output(&br)) };
        let c = plan.norm.desc().channels;
        let mut rs = RunningStats {
            mean: r[..c].to_vec(),
            var: r[c..].to_vec(),
        };
        plan.norm
            .update_running(&stats_of(saved, s.sets), &mut rs, momentum)?;
        r[..c].copy_from_slice(&rs.mean);
        r[c..].copy_from_slice(&rs.var);
        Ok(())
    })
}

/// Backward pass of `effnet_norm_forward`: `dx` (overwritten) and, if `daffine` is not
/// NULL, the affine gradients `[2][channels]` (dgamma row, then dbeta row), overwritten
/// (`accumulate = 0`) or added to (`accumulate = 1`). `x` is the forward input, `saved`
/// what the forward pass wrote, `affine` what it used. Deterministic for any thread
/// count.
///
/// Buffers: `x`, `dy`, `dx` NHWC `[batch][h][w][channels]` (`x_len` each); `affine`
/// and `daffine` `affine_len` (NULL and 0 without affine; `daffine` may be NULL to
/// skip it); `saved` `saved_len`. Ownership, overlap and errors as
/// `effnet_norm_forward`, plus an `accumulate` other than 0 or 1.
///
/// # Safety
/// As `effnet_norm_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_backward(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    x: *const f32,
    x_len: usize,
    dy: *const f32,
    dy_len: usize,
    affine: *const f32,
    affine_len: usize,
    saved: *const f32,
    saved_len: usize,
    dx: *mut f32,
    dx_len: usize,
    daffine: *mut f32,
    daffine_len: usize,
    accumulate: i32,
) -> effnet_status {
    guard("effnet_norm_backward", || {
        let ins = (x, dy, affine, saved);
        let lens = [x_len, dy_len, affine_len, saved_len, dx_len, daffine_len];
        // SAFETY: forwarded from this function's contract.
        unsafe { norm_backward(ctx, plan, ins, (dx, daffine), lens, accumulate, None) }
    })
}

/// `effnet_norm_backward` with its scratch memory in the caller's `workspace` (at
/// least what `effnet_norm_workspace_size` reports for `EFFNET_NORM_PASS_BACKWARD`).
/// Workspace rules and errors: as `effnet_norm_forward_ws` (the wrapper copies `saved`
/// through a small vector of `saved_len` floats).
///
/// # Safety
/// As `effnet_norm_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_norm_backward_ws(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    x: *const f32,
    x_len: usize,
    dy: *const f32,
    dy_len: usize,
    affine: *const f32,
    affine_len: usize,
    saved: *const f32,
    saved_len: usize,
    dx: *mut f32,
    dx_len: usize,
    daffine: *mut f32,
    daffine_len: usize,
    accumulate: i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_norm_backward_ws", || {
        let ins = (x, dy, affine, saved);
        let lens = [x_len, dy_len, affine_len, saved_len, dx_len, daffine_len];
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { norm_backward(ctx, plan, ins, (dx, daffine), lens, accumulate, ws) }
    })
}

/// The backward entry points; `ws` is the workspace argument of the `_ws` form.
///
/// # Safety
/// As `effnet_norm_backward_ws`.
unsafe fn norm_backward(
    ctx: *const effnet_context,
    plan: *const effnet_norm_plan,
    (x, dy, affine, saved): (*const f32, *const f32, *const f32, *const f32),
    (dx, daffine): (*mut f32, *mut f32),
    [x_len, dy_len, affine_len, saved_len, dx_len, daffine_len]: [usize; 6],
    accumulate: i32,
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
    let mode = grad_mode(accumulate)?;
    let s = plan.shape();
    let bx = Buf::input("x", x, x_len, s.x_len);
    let bdy = Buf::input("dy", dy, dy_len, s.x_len);
    let ba = plan.affine_buf("affine", affine, affine_len)?;
    let bs = Buf::input("saved", saved, saved_len, s.saved_len);
    let bdx = Buf::output("dx", dx, dx_len, s.x_len);
    let bda = plan
        .affine_like(Buf::output("daffine", daffine, daffine_len, s.affine_len))?
        .optional();
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bx, bdy, ba, bs, bdx, bda, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (x, dy, a, saved, dx, da, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::input(&bdy),
            buffers::opt_input(&ba),
            buffers::input(&bs),
            buffers::output(&bdx),
            buffers::opt_output(&bda),
            buffers::opt_output(&bws),
        )
    };
    let norm = &plan.norm;
    let c = norm.desc().channels;
    let (dgamma, dbeta) = match da {
        Some(d) => {
            let (g, b) = d.split_at_mut(c);
            (Some(g), Some(b))
        }
        None => (None, None),
    };
    let grads = AffineGrads {
        dgamma,
        dbeta,
        mode,
    };
    let stats = stats_of(saved, s.sets);
    let aff = affine_of(a, c);
    plan.run(ctx, NormPass::Backward, (wsb, ws), |w| match w {
        Some(w) => norm.backward_with_workspace(x, dy, aff, &stats, dx, grads, w),
        None => norm.backward(x, dy, aff, &stats, dx, grads),
    })
}

#[cfg(test)]
#[path = "norm_tests.rs"]
pub(crate) mod tests;
