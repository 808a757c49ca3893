//! The Proxy Norm activation (Labatie et al., 2021), standalone on an already
//! normalized input or fused with a LayerNorm/GroupNorm: descriptor, plan, shape
//! query, workspace query and the passes.

use std::ffi::c_void;

use effnet_core::kernels::proxy_norm::{
    MAX_K, NormProxy, NormProxySaved, ProxyGrads, ProxyNorm, ProxyNormDesc, ProxyParams, ProxyPass,
    ProxyStats, ProxyVariant, Upstream,
};

use crate::buffers::{self, Buf};
use crate::context::effnet_context;
use crate::conv::grad_mode;
use crate::handle::{self, Kind, ctx_and};
use crate::norm::{WsArgs, effnet_norm_desc, reserved, stats_of, store_stats, to_norm_desc};
use crate::ops::activation_of;
use crate::sized::{self, SizedStruct, int_field};
use crate::status::{Failure, Outcome, effnet_status, guard};

/// Which Proxy Norm output (the `variant` field of `effnet_proxy_norm_desc`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_proxy_variant {
    /// `z = (act(u) - mu)*s`.
    EFFNET_PROXY_FULL_SCALE = 0,
    /// `z = act(u) - mu`; `s` is in `saved` for a later squeeze-excite gate to fold in,
    /// and the backward pass takes `ds`.
    EFFNET_PROXY_DELAYED_SCALE = 1,
    /// `z = act(u) - mu` (EfficientNet's head).
    EFFNET_PROXY_NO_SCALE = 2,
}

/// The largest number of proxy quantiles `effnet_proxy_norm_desc.k` may ask for
/// (65536; the paper uses 200). The statistics cost `O(k*channels)` per pass, and the
/// quantiles of this many points already sample the normal distribution far below
/// `float` rounding.
pub const EFFNET_PROXY_MAX_K: i64 = 65536;

// The C bound is the kernel's.
const _: () = assert!(EFFNET_PROXY_MAX_K as usize == MAX_K);

/// A Proxy Norm activation (Labatie et al., 2021). Set `struct_size =
/// sizeof(effnet_proxy_norm_desc)` and zero what you do not use.
///
/// Per channel `c`, with `xhat` the normalized input: `u = gamma*xhat + beta`,
/// `z = (act(u) - mu)*s` (full scale) or `act(u) - mu` (delayed or no scale), where
/// `mu` and `v` are the mean and the population variance (divided by K, not K - 1) of
/// the K proxy points `r_k = act(gamma*(beta' + (1+gamma')*q_k) + beta)`, with the
/// fixed normal quantiles `q_k = sqrt(2)*erfinv(2(k+0.5)/K - 1)`, `k = 0..K-1`, and
/// `s = 1/sqrt(v + eps_pn)`: `mu = sum_k r_k / K`, `v = sum_k (r_k - mu)^2 / K`.
///
/// Rules (else `EFFNET_INVALID_ARGUMENT`): `channels` at least 1 and small enough that
/// the per-channel state (16 floats per channel: parameters, statistics, gradients and
/// their partial sums) is addressable; `k` from 0 to `EFFNET_PROXY_MAX_K` (0 means the
/// paper's 200); `eps_pn` finite and positive (0 means the paper's 0.03); valid enum
/// values; `reserved` 0.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct effnet_proxy_norm_desc {
    /// `sizeof(effnet_proxy_norm_desc)` as the caller was compiled.
    pub struct_size: usize,
    /// Channels (C): the length of each parameter row.
    pub channels: i64,
    /// Number of proxy quantiles K, at most `EFFNET_PROXY_MAX_K`; 0 means 200.
    pub k: i64,
    /// ε_pn added to the proxy variance; 0 means 0.03.
    pub eps_pn: f32,
    /// An `effnet_proxy_variant` value.
    pub variant: u32,
    /// The activation: an `effnet_activation` value (EfficientNet: swish).
    pub activation: u32,
    /// Must be zero.
    pub reserved: u32,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers and floats only.
unsafe impl SizedStruct for effnet_proxy_norm_desc {
    const C_NAME: &'static str = "effnet_proxy_norm_desc";
}

/// What `effnet_proxy_norm_plan_shape` reports. Set `struct_size =
/// sizeof(effnet_proxy_norm_shape)` before the call.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_proxy_norm_shape {
    /// `sizeof(effnet_proxy_norm_shape)` as the caller was compiled; kept by the call.
    pub struct_size: usize,
    /// Elements of `x`, `z`, `dz`, `dx` for a fused plan (`batch*h*w*channels`); 0
    /// for a standalone plan, which takes any number of rows (a multiple of
    /// `channels`).
    pub x_len: usize,
    /// Channels.
    pub channels: usize,
    /// Elements of `params` and `dparams`: `4*channels` (rows gamma, beta, beta',
    /// gamma').
    pub params_len: usize,
    /// Elements of `saved`: `3*sets + 3*channels` fused (the normalization's
    /// `[mean | var | rstd]` over its sets, then the proxy's `[mu | v | s]`),
    /// `3*channels` standalone.
    pub saved_len: usize,
    /// Where the proxy statistics `[mu | v | s]` start in `saved` (`3*sets` fused, 0
    /// standalone).
    pub proxy_offset: usize,
    /// Where the scale `s` (`[channels]`, the delayed scale) starts in `saved`.
    pub scale_offset: usize,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_proxy_norm_shape {
    const C_NAME: &'static str = "effnet_proxy_norm_shape";
}

enum ProxyOp {
    Fused(NormProxy),
    Standalone(ProxyNorm),
}

/// A validated Proxy Norm activation, fused with a LayerNorm/GroupNorm or standalone
/// (on an already normalized input); made by `effnet_proxy_norm_plan_create`,
/// released by `effnet_proxy_norm_plan_destroy`. Immutable, not tied to a context.
pub struct effnet_proxy_norm_plan {
    magic: u64,
    op: ProxyOp,
}

handle::impl_handle!(effnet_proxy_norm_plan, Kind::ProxyNormPlan);

const PROXY: &str = "effnet_proxy_norm_desc";

/// Converts the C descriptor; the rules of the activation are checked by
/// `ProxyNorm::new`.
pub fn to_proxy_desc(d: &effnet_proxy_norm_desc) -> Outcome<ProxyNormDesc> {
    reserved(PROXY, d.reserved)?;
    let variant = match d.variant {
        0 => ProxyVariant::FullScale,
        1 => ProxyVariant::DelayedScale,
        2 => ProxyVariant::NoScale,
        v => {
            return Err(Failure::invalid(format!(
                "{PROXY}.variant = {v} is not an effnet_proxy_variant"
            )));
        }
    };
    let k = int_field(PROXY, "k", d.k, 0)?;
    if k > MAX_K {
        return Err(Failure::invalid(format!(
            "{PROXY}.k = {k} is more than EFFNET_PROXY_MAX_K = {MAX_K} proxy quantiles"
        )));
    }
    Ok(ProxyNormDesc {
        channels: int_field(PROXY, "channels", d.channels, 1)?,
        variant,
        k: if k == 0 { 200 } else { k },
        eps_pn: if d.eps_pn == 0.0 { 0.03 } else { d.eps_pn },
        activation: activation_of(&format!("{PROXY}.activation"), d.activation)?,
    })
}

impl effnet_proxy_norm_plan {
    fn proxy(&self) -> &ProxyNorm {
        match &self.op {
            ProxyOp::Fused(f) => f.proxy(),
            ProxyOp::Standalone(p) => p,
        }
    }

    fn sets(&self) -> usize {
        match &self.op {
            ProxyOp::Fused(f) => f.norm().sets(),
            ProxyOp::Standalone(_) => 0,
        }
    }

    fn shape(&self) -> effnet_proxy_norm_shape {
        let c = self.proxy().desc().channels;
        let po = 3 * self.sets();
        effnet_proxy_norm_shape {
            struct_size: 0,
            x_len: match &self.op {
                ProxyOp::Fused(f) => f.x_len(),
                ProxyOp::Standalone(_) => 0,
            },
            channels: c,
            params_len: 4 * c,
            saved_len: po + 3 * c,
            proxy_offset: po,
            scale_offset: po + 2 * c,
        }
    }

    /// The expected count of `x`-shaped buffers given the caller's `x_len`.
    fn x_expected(&self, x_len: usize) -> Outcome<usize> {
        let s = self.shape();
        if s.x_len != 0 {
            return Ok(s.x_len);
        }
        if x_len == 0 || !x_len.is_multiple_of(s.channels) {
            return Err(Failure::invalid(format!(
                "`x_len` = {x_len}: a standalone Proxy Norm takes a positive multiple of \
                 channels ({}) elements",
                s.channels
            )));
        }
        let max = isize::MAX as usize / size_of::<f32>();
        if x_len > max {
            return Err(Failure::invalid(format!(
                "`x_len` = {x_len} floats do not fit in memory addressing (at most {max})"
            )));
        }
        Ok(x_len)
    }
}

/// Validates the descriptors and stores a new Proxy Norm plan in `*out_plan`.
///
/// With `norm_desc` NULL the plan is the standalone activation on an already
/// normalized input `xhat` (`[rows][channels]`, any number of rows). Otherwise it is
/// the fused normalization + activation: `norm_desc` must be a LayerNorm or GroupNorm
/// with `channels` equal to `proxy_desc->channels`, activation identity and `affine =
/// 1` (its gamma and beta are the first two rows of the Proxy Norm `params`).
///
/// Ownership: the caller owns the new plan (release it with
/// `effnet_proxy_norm_plan_destroy`); `*out_plan` is written only on success.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle, pointer, `struct_size`, or
/// descriptors that break their rules or do not fit together.
///
/// # Safety
/// `ctx` is NULL or a context handle; each descriptor pointer is NULL or points to its
/// `struct_size` readable bytes; `out_plan` is NULL or points to writable storage for a
/// pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_plan_create(
    ctx: *const effnet_context,
    norm_desc: *const effnet_norm_desc,
    proxy_desc: *const effnet_proxy_norm_desc,
    out_plan: *mut *mut effnet_proxy_norm_plan,
) -> effnet_status {
    guard("effnet_proxy_norm_plan_create", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        unsafe { handle::get(ctx, "`ctx`") }?;
        // SAFETY: the caller's contract; pointer and size checked inside.
        let pd = to_proxy_desc(&unsafe { sized::read(proxy_desc, "`proxy_desc`") }?)?;
        let op = if norm_desc.is_null() {
            ProxyOp::Standalone(ProxyNorm::new(&pd)?)
        } else {
            // SAFETY: as above.
            let (nd, affine) = to_norm_desc(&unsafe { sized::read(norm_desc, "`norm_desc`") }?)?;
            if !affine {
                return Err(Failure::invalid(
                    "effnet_norm_desc.affine = 0: the fused Proxy Norm always has the \
                     normalization's affine (params rows gamma, beta); set it to 1",
                ));
            }
            ProxyOp::Fused(NormProxy::new(&nd, &pd)?)
        };
        handle::check_out(out_plan, "`out_plan`")?;
        let plan = effnet_proxy_norm_plan {
            magic: Kind::ProxyNormPlan.magic(),
            op,
        };
        // SAFETY: checked; writable (caller's promise).
        unsafe { handle::publish(out_plan, plan) }?;
        Ok(())
    })
}

/// Destroys a Proxy Norm plan. NULL is a no-op (returns `EFFNET_OK`).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` if `plan` is not a live Proxy Norm plan.
///
/// # Safety
/// `plan` is NULL or a handle from `effnet_proxy_norm_plan_create`, unused by any
/// other call, and not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_plan_destroy(
    plan: *mut effnet_proxy_norm_plan,
) -> effnet_status {
    // SAFETY: forwarded from this function's contract.
    guard("effnet_proxy_norm_plan_destroy", || unsafe {
        handle::destroy(plan, "`plan`")
    })
}

/// Fills `*out_shape` with the element counts of the plan's buffers and the offsets
/// into `saved`. Set `out_shape->struct_size = sizeof(effnet_proxy_norm_shape)` first.
///
/// Errors: as `effnet_norm_plan_shape`.
///
/// # Safety
/// As `effnet_norm_plan_shape`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_plan_shape(
    plan: *const effnet_proxy_norm_plan,
    out_shape: *mut effnet_proxy_norm_shape,
) -> effnet_status {
    guard("effnet_proxy_norm_plan_shape", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let plan = unsafe { handle::get(plan, "`plan`") }?;
        // SAFETY: the caller's contract; pointer and size checked inside.
        unsafe { sized::write(out_shape, "`out_shape`", plan.shape()) }
    })
}

fn params_of(p: &[f32], c: usize) -> ProxyParams<'_> {
    ProxyParams {
        gamma: &p[..c],
        beta: &p[c..2 * c],
        beta_prime: &p[2 * c..3 * c],
        gamma_prime: &p[3 * c..],
    }
}

fn proxy_stats_of(p: &[f32], c: usize) -> ProxyStats {
    ProxyStats {
        mean: p[..c].to_vec(),
        var: p[c..2 * c].to_vec(),
        scale: p[2 * c..3 * c].to_vec(),
    }
}

fn store_proxy_stats(s: &ProxyStats, out: &mut [f32]) {
    let c = s.mean.len();
    out[..c].copy_from_slice(&s.mean);
    out[c..2 * c].copy_from_slice(&s.var);
    out[2 * c..].copy_from_slice(&s.scale);
}

/// A pass of a Proxy Norm plan (the `pass` argument of
/// `effnet_proxy_norm_workspace_size`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_proxy_norm_pass {
    /// `effnet_proxy_norm_forward` / `effnet_proxy_norm_forward_ws`.
    EFFNET_PROXY_NORM_PASS_FORWARD = 0,
    /// `effnet_proxy_norm_backward` / `effnet_proxy_norm_backward_ws`.
    EFFNET_PROXY_NORM_PASS_BACKWARD = 1,
}

fn proxy_pass_of(v: u32) -> Outcome<ProxyPass> {
    match v {
        0 => Ok(ProxyPass::Forward),
        1 => Ok(ProxyPass::Backward),
        _ => Err(Failure::invalid(format!(
            "pass = {v} is not an effnet_proxy_norm_pass"
        ))),
    }
}

impl effnet_proxy_norm_plan {
    /// Workspace floats of `pass` for `x_len` elements of `x` (checked by the caller).
    fn workspace_len(&self, pass: ProxyPass, x_len: usize) -> usize {
        match &self.op {
            ProxyOp::Fused(f) => f.workspace_len(pass),
            ProxyOp::Standalone(p) => p.workspace_len(pass, x_len),
        }
    }

    /// Runs `pass` on `ctx`'s threads, on the caller's workspace or allocating (see
    /// `buffers::run_pass`).
    fn run<'a>(
        &self,
        ctx: &effnet_context,
        (pass, x_len): (ProxyPass, usize),
        (wsb, ws): WsArgs<'a>,
        run: impl FnOnce(Option<&'a mut [f32]>) -> effnet_core::Result<()> + Send,
    ) -> Outcome {
        let need = || buffers::workspace_bytes(self.workspace_len(pass, x_len));
        buffers::run_pass(ctx, need, "effnet_proxy_norm_workspace_size", wsb, ws, run)
    }
}

/// Writes to `*out_bytes` the size in bytes of the workspace that pass `pass` (an
/// `effnet_proxy_norm_pass` value) of `plan` needs: pass a buffer of at least that
/// many bytes to the `_ws` form of the pass. `x_len` is the element count of `x` the
/// calls will pass: required (a positive multiple of `channels`) for a standalone
/// plan, whose backward partial sums grow with the rows; ignored for a fused plan.
/// It holds the normalization's partial sums, coefficients and totals, the proxy
/// statistics' sums and the gradient temporaries. The size does not depend on the
/// context's thread count or the SIMD level.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type handle, an unknown
/// `pass`, a bad `x_len` (standalone), or a NULL or misaligned `out_bytes`.
///
/// # Safety
/// As `effnet_norm_workspace_size`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_workspace_size(
    ctx: *const effnet_context,
    plan: *const effnet_proxy_norm_plan,
    pass: u32,
    x_len: usize,
    out_bytes: *mut usize,
) -> effnet_status {
    guard("effnet_proxy_norm_workspace_size", || {
        // SAFETY: the caller's contract.
        let (_ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
        let pass = proxy_pass_of(pass)?;
        let floats = plan.workspace_len(pass, plan.x_expected(x_len)?);
        // SAFETY: the caller's contract.
        unsafe { buffers::write_workspace_size(out_bytes, floats) }
    })
}

/// Forward pass: `z` from `x` (fused: the normalization's statistics, then the
/// activation; standalone: `x` is the normalized `xhat`), run on `ctx`'s threads. `z`
/// and `saved` are overwritten.
///
/// Buffers (`float`, counts from `effnet_proxy_norm_plan_shape`):
/// - `x`: NHWC `[batch][h][w][channels]` (`x_len`), or standalone `[rows][channels]`
///   (any positive multiple of `channels`)
/// - `params`: `[4][channels]`, rows gamma, beta, beta', gamma' (initially 1, 0, 0, 0)
/// - `z`: like `x`, `z_len = x_len`
/// - `saved`: `saved_len` (layout in `effnet_proxy_norm_shape`); the delayed scale `s`
///   is at `scale_offset`
///
/// Ownership, overlap and errors as `effnet_norm_forward`.
///
/// # Safety
/// As `effnet_norm_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_forward(
    ctx: *const effnet_context,
    plan: *const effnet_proxy_norm_plan,
    x: *const f32,
    x_len: usize,
    params: *const f32,
    params_len: usize,
    z: *mut f32,
    z_len: usize,
    saved: *mut f32,
    saved_len: usize,
) -> effnet_status {
    guard("effnet_proxy_norm_forward", || {
        let lens = [x_len, params_len, z_len, saved_len];
        // SAFETY: forwarded from this function's contract.
        unsafe { proxy_forward(ctx, plan, (x, params, z, saved), lens, None) }
    })
}

/// `effnet_proxy_norm_forward` with its scratch memory in the caller's `workspace`
/// (at least what `effnet_proxy_norm_workspace_size` reports for
/// `EFFNET_PROXY_NORM_PASS_FORWARD` and this `x_len`). Workspace rules and errors: as
/// `effnet_norm_forward_ws` (the wrapper copies `saved` through small vectors).
///
/// # Safety
/// As `effnet_norm_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_forward_ws(
    ctx: *const effnet_context,
    plan: *const effnet_proxy_norm_plan,
    x: *const f32,
    x_len: usize,
    params: *const f32,
    params_len: usize,
    z: *mut f32,
    z_len: usize,
    saved: *mut f32,
    saved_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_proxy_norm_forward_ws", || {
        let lens = [x_len, params_len, z_len, saved_len];
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { proxy_forward(ctx, plan, (x, params, z, saved), lens, ws) }
    })
}

/// The forward entry points; `ws` is the workspace argument of the `_ws` form.
///
/// # Safety
/// As `effnet_proxy_norm_forward_ws`.
unsafe fn proxy_forward(
    ctx: *const effnet_context,
    plan: *const effnet_proxy_norm_plan,
    (x, params, z, saved): (*const f32, *const f32, *mut f32, *mut f32),
    [x_len, params_len, z_len, saved_len]: [usize; 4],
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
    let s = plan.shape();
    let xl = plan.x_expected(x_len)?;
    let bx = Buf::input("x", x, x_len, xl);
    let bp = Buf::input("params", params, params_len, s.params_len);
    let bz = Buf::output("z", z, z_len, xl);
    let bs = Buf::output("saved", saved, saved_len, s.saved_len);
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bx, bp, bz, bs, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (x, p, z, saved, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::input(&bp),
            buffers::output(&bz),
            buffers::output(&bs),
            buffers::opt_output(&bws),
        )
    };
    let params = params_of(p, s.channels);
    let (norm_part, proxy_part) = saved.split_at_mut(s.proxy_offset);
    let pass = (ProxyPass::Forward, xl);
    match &plan.op {
        ProxyOp::Fused(f) => {
            let mut sv = f.new_saved();
            plan.run(ctx, pass, (wsb, ws), |w| match w {
                Some(w) => f.forward_with_workspace(x, params, z, &mut sv, w),
                None => f.forward(x, params, z, &mut sv),
            })?;
            store_stats(&sv.norm, norm_part);
            store_proxy_stats(&sv.proxy, proxy_part);
        }
        ProxyOp::Standalone(p) => {
            let mut st = p.new_stats();
            plan.run(ctx, pass, (wsb, ws), |w| match w {
                Some(w) => p.forward_with_workspace(x, params, z, &mut st, w),
                None => p.forward(x, params, z, &mut st),
            })?;
            store_proxy_stats(&st, proxy_part);
        }
    }
    Ok(())
}

/// Backward pass of `effnet_proxy_norm_forward`: `dx` (overwritten) and the parameter
/// gradients `dparams` `[4][channels]` (dgamma, dbeta, dbeta', dgamma', direct and
/// through the proxy statistics), overwritten (`accumulate = 0`) or added to
/// (`accumulate = 1`). `x` is the forward input, `params` what it used and `saved` what
/// it wrote. Deterministic for any thread count.
///
/// Buffers: `x`, `dz`, `dx` like the forward's `x`; `ds`: `[channels]`, the gradient
/// of the delayed scale `s` (delayed-scale plans only; NULL and 0 mean zero, and other
/// variants require NULL); `params`, `dparams`: `params_len`; `saved`: `saved_len`.
/// Unlike `effnet_norm_backward`'s `daffine`, `dparams` is required (never NULL): the
/// kernel computes the parameter gradients in the same reductions as `dx` and has no
/// form that skips them; pass a scratch buffer of `params_len` floats if you do not
/// need them. Ownership, overlap and errors as `effnet_norm_backward` (a NULL
/// `dparams` is `EFFNET_INVALID_ARGUMENT`).
///
/// # Safety
/// As `effnet_norm_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_backward(
    ctx: *const effnet_context,
    plan: *const effnet_proxy_norm_plan,
    x: *const f32,
    x_len: usize,
    dz: *const f32,
    dz_len: usize,
    ds: *const f32,
    ds_len: usize,
    params: *const f32,
    params_len: usize,
    saved: *const f32,
    saved_len: usize,
    dx: *mut f32,
    dx_len: usize,
    dparams: *mut f32,
    dparams_len: usize,
    accumulate: i32,
) -> effnet_status {
    guard("effnet_proxy_norm_backward", || {
        let ins = [x, dz, ds, params, saved];
        let lens = [
            x_len,
            dz_len,
            ds_len,
            params_len,
            saved_len,
            dx_len,
            dparams_len,
        ];
        // SAFETY: forwarded from this function's contract.
        unsafe { proxy_backward(ctx, plan, ins, (dx, dparams), lens, accumulate, None) }
    })
}

/// `effnet_proxy_norm_backward` with its scratch memory in the caller's `workspace`
/// (at least what `effnet_proxy_norm_workspace_size` reports for
/// `EFFNET_PROXY_NORM_PASS_BACKWARD` and this `x_len`). Workspace rules and errors: as
/// `effnet_norm_forward_ws` (the wrapper copies `saved` through small vectors).
///
/// # Safety
/// As `effnet_norm_forward_ws`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_proxy_norm_backward_ws(
    ctx: *const effnet_context,
    plan: *const effnet_proxy_norm_plan,
    x: *const f32,
    x_len: usize,
    dz: *const f32,
    dz_len: usize,
    ds: *const f32,
    ds_len: usize,
    params: *const f32,
    params_len: usize,
    saved: *const f32,
    saved_len: usize,
    dx: *mut f32,
    dx_len: usize,
    dparams: *mut f32,
    dparams_len: usize,
    accumulate: i32,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_proxy_norm_backward_ws", || {
        let ins = [x, dz, ds, params, saved];
        let lens = [
            x_len,
            dz_len,
            ds_len,
            params_len,
            saved_len,
            dx_len,
            dparams_len,
        ];
        let ws = Some((workspace, workspace_bytes));
        // SAFETY: forwarded from this function's contract.
        unsafe { proxy_backward(ctx, plan, ins, (dx, dparams), lens, accumulate, ws) }
    })
}

/// The backward entry points; `ws` is the workspace argument of the `_ws` form.
///
/// # Safety
/// As `effnet_proxy_norm_backward_ws`.
unsafe fn proxy_backward(
    ctx: *const effnet_context,
    plan: *const effnet_proxy_norm_plan,
    [x, dz, ds, params, saved]: [*const f32; 5],
    (dx, dparams): (*mut f32, *mut f32),
    [
        x_len,
        dz_len,
        ds_len,
        params_len,
        saved_len,
        dx_len,
        dparams_len,
    ]: [usize; 7],
    accumulate: i32,
    ws: Option<(*mut c_void, usize)>,
) -> Outcome {
    // SAFETY: the caller's contract.
    let (ctx, plan) = unsafe { ctx_and(ctx, plan, "`plan`") }?;
    let mode = grad_mode(accumulate)?;
    let s = plan.shape();
    let c = s.channels;
    let xl = plan.x_expected(x_len)?;
    let delayed = plan.proxy().desc().variant == ProxyVariant::DelayedScale;
    if !delayed && (!ds.is_null() || ds_len != 0) {
        return Err(Failure::invalid(
            "`ds` is an input of the delayed-scale variant only; pass NULL and 0",
        ));
    }
    let bx = Buf::input("x", x, x_len, xl);
    let bdz = Buf::input("dz", dz, dz_len, xl);
    let bds = Buf::input("ds", ds, ds_len, c).optional();
    let bp = Buf::input("params", params, params_len, s.params_len);
    let bs = Buf::input("saved", saved, saved_len, s.saved_len);
    let bdx = Buf::output("dx", dx, dx_len, xl);
    let bdp = Buf::output("dparams", dparams, dparams_len, s.params_len);
    let bws = buffers::workspace_arg(ws);
    buffers::check(&[bx, bdz, bds, bp, bs, bdx, bdp, bws])?;
    // SAFETY: checked above; valid and exclusive by the caller's contract.
    let (x, dz, ds, p, saved, dx, dp, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::input(&bdz),
            buffers::opt_input(&bds),
            buffers::input(&bp),
            buffers::input(&bs),
            buffers::output(&bdx),
            buffers::output(&bdp),
            buffers::opt_output(&bws),
        )
    };
    let params = params_of(p, c);
    let (dg, rest) = dp.split_at_mut(c);
    let (db, rest) = rest.split_at_mut(c);
    let (dbp, dgp) = rest.split_at_mut(c);
    let grads = ProxyGrads {
        dgamma: dg,
        dbeta: db,
        dbeta_prime: dbp,
        dgamma_prime: dgp,
        mode,
    };
    let up = Upstream { dz, ds };
    let (norm_part, proxy_part) = saved.split_at(s.proxy_offset);
    let proxy = proxy_stats_of(proxy_part, c);
    let pass = (ProxyPass::Backward, xl);
    match &plan.op {
        ProxyOp::Fused(f) => {
            let sv = NormProxySaved {
                norm: stats_of(norm_part, s.proxy_offset / 3),
                proxy,
            };
            plan.run(ctx, pass, (wsb, ws), |w| match w {
                Some(w) => f.backward_with_workspace(x, up, params, &sv, dx, grads, w),
                None => f.backward(x, up, params, &sv, dx, grads),
            })
        }
        ProxyOp::Standalone(p) => plan.run(ctx, pass, (wsb, ws), |w| match w {
            Some(w) => p.backward_with_workspace(x, up, params, &proxy, dx, grads, w),
            None => p.backward(x, up, params, &proxy, dx, grads),
        }),
    }
}

#[cfg(test)]
#[path = "proxy_norm_tests.rs"]
mod tests;
