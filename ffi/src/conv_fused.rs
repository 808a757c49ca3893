//! Convolutions with a fused forward epilogue (post-ops): the activation and a residual
//! add applied while each output tile is still in registers, and per-image channel
//! statistics of the output gathered in the same pass.

use std::ffi::c_void;

use effnet_core::kernels::conv::{ChannelStats, ConvPass, ConvWeights, PostArgs, PostOps, PreArgs};

use crate::buffers::{self, Buf};
use crate::context::effnet_context;
use crate::conv::{create_plan, ctx_and_plan, effnet_conv_desc, effnet_conv_plan};
use crate::conv_packed::packed_buf;
use crate::handle;
use crate::ops::activation_of;
use crate::sized::{self, SizedStruct};
use crate::status::{Failure, Outcome, effnet_status, guard};

/// The forward epilogue of a convolution plan, in the spirit of oneDNN's post-ops:
/// what `effnet_conv_forward_fused` (and `effnet_conv_forward*` for a plan without a
/// residual) applies to each output element after the sum and the bias, in this order:
///
/// `y = activation(s[c] · (conv(x, w) + bias)) (+ residual)`
///
/// (`s` a per-output-channel scale, with `scale`), and, with `stats`, gathers
/// per-image channel statistics of the finished `y` in the same pass (returned by
/// `effnet_conv_forward_post`).
///
/// Set `struct_size = sizeof(effnet_conv_post_ops)` and zero what you do not use (a
/// zeroed struct is no epilogue). A caller built before `stats` existed (a
/// `struct_size` of 16) still works: the field reads as 0; one built before `scale`
/// existed has the same `sizeof` (the field took the padding) and must have zeroed
/// the struct, as asked. A BatchNorm in inference folds into the weights and bias the
/// caller passes (`w·scale`, `bias·scale + shift` per output channel), or, with the
/// weights left as they are, into `bias` (`bias + shift / scale`) and the epilogue's
/// `scale`, so conv + BatchNorm + activation + residual add is one pass over `y`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_conv_post_ops {
    /// `sizeof(effnet_conv_post_ops)` as the caller was compiled (a larger size is
    /// accepted if the extra bytes are zero).
    pub struct_size: usize,
    /// An `effnet_activation` value applied to `conv + bias` (0: identity).
    pub activation: u32,
    /// 1: add a residual tensor laid out as `y` after the activation (the skip
    /// connection of an inverted-residual block); 0: none.
    pub residual: u32,
    /// Statistics of `y` (after the activation and the residual) per image and output
    /// channel, gathered by each task from the rows it has just written: 0 none; 1
    /// the sums `Σ_{oh,ow} y[n][oh][ow][c]` (a squeeze-excite's squeeze, a norm's
    /// mean); 2 the sums and the sums of squares `Σ y²` (a norm's variance). The same
    /// bits for any thread count. Such a plan runs forward through
    /// `effnet_conv_forward_post` only.
    pub stats: u32,
    /// 1: multiply each output channel `c` by `s[c]` (`effnet_conv_post_args.scale`,
    /// `out_channels` floats given with each call) after the bias and before the
    /// activation; 0: none. Such a plan runs forward through `effnet_conv_forward_post`
    /// only.
    pub scale: u32,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_conv_post_ops {
    const C_NAME: &'static str = "effnet_conv_post_ops";
    const MIN_SIZE: usize = std::mem::offset_of!(effnet_conv_post_ops, stats);
}

/// The operands of a plan's epilogue for `effnet_conv_forward_post`: each pointer NULL
/// with length 0 unless the plan's `effnet_conv_post_ops` asks for it. Set
/// `struct_size = sizeof(effnet_conv_post_args)` and zero what you do not use.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct effnet_conv_post_args {
    /// `sizeof(effnet_conv_post_args)` as the caller was compiled.
    pub struct_size: usize,
    /// The residual, `[batch][out_h][out_w][out_channels]` (`y_len` floats), when the
    /// plan adds one; it may not overlap `y`.
    pub residual: *const f32,
    /// Floats at `residual`.
    pub residual_len: usize,
    /// `[batch][out_channels]` doubles, overwritten with the sums, when `stats` is 1
    /// or 2.
    pub sums: *mut f64,
    /// Doubles at `sums`.
    pub sums_len: usize,
    /// `[batch][out_channels]` doubles, overwritten with the sums of squares, when
    /// `stats` is 2.
    pub squares: *mut f64,
    /// Doubles at `squares`.
    pub squares_len: usize,
    /// `[out_channels]` floats, the per-channel scale, when the plan's post-ops have
    /// `scale` = 1 (a caller built before this field existed passes a smaller
    /// `struct_size`: it reads as NULL).
    pub scale: *const f32,
    /// Floats at `scale`.
    pub scale_len: usize,
    /// `[batch][in_channels]` floats, the prologue's scale `a`, when the plan has a
    /// prologue (`effnet_conv_pre_ops.enabled` = 1; a caller built before the
    /// prologue fields existed passes a smaller `struct_size`: they read as NULL).
    pub pre_scale: *const f32,
    /// Floats at `pre_scale`.
    pub pre_scale_len: usize,
    /// `[batch][in_channels]` floats, the prologue's shift `b`, when its `shift` = 1.
    pub pre_shift: *const f32,
    /// Floats at `pre_shift`.
    pub pre_shift_len: usize,
    /// `[batch][in_channels]` floats, the prologue's output scale `p`, when its
    /// `out_scale` = 1.
    pub pre_out_scale: *const f32,
    /// Floats at `pre_out_scale`.
    pub pre_out_scale_len: usize,
    /// `[batch][in_channels]` floats, the prologue's output shift `q`, when its
    /// `out_shift` = 1.
    pub pre_out_shift: *const f32,
    /// Floats at `pre_out_shift`.
    pub pre_out_shift_len: usize,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers and raw pointers only
// (valid for any bit pattern).
unsafe impl SizedStruct for effnet_conv_post_args {
    const C_NAME: &'static str = "effnet_conv_post_args";
    const MIN_SIZE: usize = std::mem::offset_of!(effnet_conv_post_args, scale);
}

/// A 0/1 field `name` of the argument `arg` (`"post_ops"`, `"pre_ops"`; `what`: what
/// 1 asks for).
pub(crate) fn flag(arg: &str, name: &str, v: u32, what: &str) -> Outcome<bool> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(Failure::invalid(format!(
            "`{arg}`.{name} = {v}: use 0 (none) or 1 ({what})"
        ))),
    }
}

/// The Rust epilogue a C descriptor names.
pub(crate) fn to_post_ops(p: &effnet_conv_post_ops) -> Outcome<PostOps> {
    let residual = flag("post_ops", "residual", p.residual, "add a residual")?;
    let stats = match p.stats {
        0 => ChannelStats::None,
        1 => ChannelStats::Sums,
        2 => ChannelStats::SumsAndSquares,
        v => {
            return Err(Failure::invalid(format!(
                "`post_ops`.stats = {v}: use 0 (none), 1 (sums) or 2 (sums and squares)"
            )));
        }
    };
    let scale = flag("post_ops", "scale", p.scale, "scale each output channel")?;
    Ok(PostOps {
        scale,
        activation: activation_of("effnet_conv_post_ops.activation", p.activation)?,
        residual,
        stats,
    })
}

/// `effnet_conv_plan_create` with a forward epilogue: validates `*desc` and
/// `*post_ops` and stores a new plan in `*out_plan`. The plan's forward passes apply
/// the epilogue; `effnet_conv_plan_post_ops` reads it back. A plan whose epilogue adds a
/// residual runs forward through `effnet_conv_forward_fused` only (the other forward
/// entry points have no residual argument and report `EFFNET_INVALID_ARGUMENT`). The
/// backward passes of such a plan are those of the convolution alone: the epilogue is
/// for inference (differentiate the activation with `effnet_activation_backward`).
///
/// Ownership: as `effnet_conv_plan_create` (release with `effnet_conv_plan_destroy`).
///
/// Errors: those of `effnet_conv_plan_create`; `EFFNET_INVALID_ARGUMENT` also for a
/// NULL or misaligned `post_ops`, a bad `struct_size`, an activation that is not an
/// `effnet_activation`, a `residual` or `scale` other than 0 or 1, or a `stats` other
/// than 0, 1 or 2.
///
/// # Safety
/// As `effnet_conv_plan_create`; `post_ops` is NULL or points to
/// `post_ops->struct_size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_plan_create_fused(
    ctx: *const effnet_context,
    desc: *const effnet_conv_desc,
    post_ops: *const effnet_conv_post_ops,
    out_plan: *mut *mut effnet_conv_plan,
) -> effnet_status {
    guard("effnet_conv_plan_create_fused", || {
        // SAFETY: the caller's contract; pointer and size checked inside.
        let post = unsafe { sized::read(post_ops, "`post_ops`") }?;
        let post = to_post_ops(&post)?;
        // SAFETY: forwarded from this function's contract.
        unsafe { create_plan(ctx, desc, out_plan, |c| Ok(c.with_post_ops(post))) }
    })
}

/// Writes the plan's forward epilogue to `*out_post_ops` (set
/// `out_post_ops->struct_size = sizeof(effnet_conv_post_ops)` first). A plan made by
/// `effnet_conv_plan_create` has none (all zero).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a NULL, dead or wrong-type `plan`, or a NULL,
/// misaligned or too small `out_post_ops`.
///
/// # Safety
/// `plan` is NULL or a plan handle; `out_post_ops` is NULL or points to
/// `out_post_ops->struct_size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_plan_post_ops(
    plan: *const effnet_conv_plan,
    out_post_ops: *mut effnet_conv_post_ops,
) -> effnet_status {
    guard("effnet_conv_plan_post_ops", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let plan = unsafe { handle::get(plan, "`plan`") }?;
        let p = plan.conv.post_ops();
        let value = effnet_conv_post_ops {
            struct_size: size_of::<effnet_conv_post_ops>(),
            activation: crate::ops::activation_value(p.activation),
            residual: u32::from(p.residual),
            stats: match p.stats {
                ChannelStats::None => 0,
                ChannelStats::Sums => 1,
                ChannelStats::SumsAndSquares => 2,
            },
            scale: u32::from(p.scale),
        };
        // SAFETY: the caller's contract; pointer and size checked inside.
        unsafe { sized::write(out_post_ops, "`out_post_ops`", value) }
    })
}

/// The forward pass of a plan with its epilogue and every operand:
/// `y = activation(conv(x, w) + bias) (+ residual)`, `y` overwritten, in one pass.
///
/// Weights: exactly one of `w` (plain, `[kernel_h][kernel_w][group_size][out_channels]`,
/// `w_len` floats; `packed` NULL with `packed_bytes = 0`) or `packed` (from
/// `effnet_conv_pack_weights` for this plan; `w` NULL with `w_len = 0`).
/// `bias`: NULL or `[out_channels]`. `residual`: `[batch][out_h][out_w][out_channels]`
/// (`y_len` floats) when the plan's epilogue adds one, else NULL with `residual_len =
/// 0`; it may not overlap `y`. `workspace`: NULL with `workspace_bytes = 0` for the
/// library's per-thread buffer, or a caller's workspace as in `effnet_conv_forward_ws`.
/// The result equals, bit for bit, the unfused sequence `effnet_conv_forward`, then
/// `effnet_activation_forward`, then the element-wise add.
///
/// Errors: those of `effnet_conv_forward_ws` / `effnet_conv_forward_packed`;
/// `EFFNET_INVALID_ARGUMENT` also when both or neither weight form is given, when a
/// residual is given to a plan without one (or missing for a plan with one), or for a
/// wrong `residual_len`.
///
/// # Safety
/// As `effnet_conv_forward_ws`; `w`, `packed`, `residual` each NULL or pointing to as
/// many readable elements (bytes for `packed`) as their lengths say.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_forward_fused(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    w: *const f32,
    w_len: usize,
    packed: *const c_void,
    packed_bytes: usize,
    bias: *const f32,
    bias_len: usize,
    residual: *const f32,
    residual_len: usize,
    y: *mut f32,
    y_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    // SAFETY: forwarded from this function's contract.
    guard("effnet_conv_forward_fused", || unsafe {
        forward_fused(
            ctx,
            plan,
            (x, x_len),
            (w, w_len),
            (packed, packed_bytes),
            (bias, bias_len),
            (residual, residual_len),
            (y, y_len),
            (workspace, workspace_bytes),
        )
    })
}

/// The forward pass of a plan with every operand of its epilogue in `*args`
/// (`effnet_conv_post_args`: the per-channel scale, the residual, the statistics'
/// outputs): `y = activation(s ⊙ (conv(x, w) + bias)) (+ residual)` (`s` the scale,
/// when the plan has one), `y` overwritten, and, when the
/// plan's `effnet_conv_post_ops.stats` asks, the per-image channel sums (and sums of
/// squares) of that `y`, `[batch][out_channels]` doubles, overwritten — gathered in
/// the same pass, each task summing the output rows it has just written; the same
/// bits for any thread count. Weights, `bias` and `workspace` as in
/// `effnet_conv_forward_fused` (the workspace size of `effnet_conv_workspace_size`
/// includes the statistics' row partials).
///
/// Errors: those of `effnet_conv_forward_fused`; `EFFNET_INVALID_ARGUMENT` also for a
/// NULL or misaligned `args` or a bad `args->struct_size`, for `sums` / `squares`
/// given when the plan does not gather them or missing when it does, for a wrong
/// `sums_len` / `squares_len` (`batch·out_channels`), for `scale` given when the plan
/// has none or missing when it has one, for a wrong `scale_len` (`out_channels`), for
/// a prologue operand (`pre_scale`, `pre_shift`, `pre_out_scale`, `pre_out_shift`)
/// given when the plan's `effnet_conv_pre_ops` do not use it or missing when they do,
/// or of a length other than `batch·in_channels`, or for outputs that overlap each
/// other or another buffer of the call.
///
/// # Safety
/// As `effnet_conv_forward_fused`; `args` is NULL or points to `args->struct_size`
/// readable bytes whose pointers are NULL or point to as many elements as their
/// lengths say (`sums`, `squares` writable).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_conv_forward_post(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    x: *const f32,
    x_len: usize,
    w: *const f32,
    w_len: usize,
    packed: *const c_void,
    packed_bytes: usize,
    bias: *const f32,
    bias_len: usize,
    args: *const effnet_conv_post_args,
    y: *mut f32,
    y_len: usize,
    workspace: *mut c_void,
    workspace_bytes: usize,
) -> effnet_status {
    guard("effnet_conv_forward_post", || {
        // SAFETY: the caller's contract; pointer and size checked inside.
        let args = unsafe { sized::read(args, "`args`") }?;
        // SAFETY: forwarded from this function's contract.
        unsafe {
            forward_post(
                ctx,
                plan,
                (x, x_len),
                (w, w_len),
                (packed, packed_bytes),
                (bias, bias_len),
                &args,
                (y, y_len),
                (workspace, workspace_bytes),
            )
        }
    })
}

/// The body of `effnet_conv_forward_fused` (and of `effnet_conv_forward_packed`, which
/// is it without plain weights or a residual): every pointer with its length.
///
/// # Safety
/// As `effnet_conv_forward_fused`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn forward_fused(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    (x, x_len): (*const f32, usize),
    (w, w_len): (*const f32, usize),
    (packed, packed_bytes): (*const c_void, usize),
    (bias, bias_len): (*const f32, usize),
    (residual, residual_len): (*const f32, usize),
    (y, y_len): (*mut f32, usize),
    (workspace, workspace_bytes): (*mut c_void, usize),
) -> Outcome {
    let args = effnet_conv_post_args {
        struct_size: size_of::<effnet_conv_post_args>(),
        residual,
        residual_len,
        sums: std::ptr::null_mut(),
        sums_len: 0,
        squares: std::ptr::null_mut(),
        squares_len: 0,
        scale: std::ptr::null(),
        scale_len: 0,
        pre_scale: std::ptr::null(),
        pre_scale_len: 0,
        pre_shift: std::ptr::null(),
        pre_shift_len: 0,
        pre_out_scale: std::ptr::null(),
        pre_out_scale_len: 0,
        pre_out_shift: std::ptr::null(),
        pre_out_shift_len: 0,
    };
    // SAFETY: forwarded from this function's contract.
    unsafe {
        forward_post(
            ctx,
            plan,
            (x, x_len),
            (w, w_len),
            (packed, packed_bytes),
            (bias, bias_len),
            &args,
            (y, y_len),
            (workspace, workspace_bytes),
        )
    }
}

/// The body of `effnet_conv_forward_post`: every pointer with its length.
///
/// # Safety
/// As `effnet_conv_forward_post`, with `args` read.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_post(
    ctx: *const effnet_context,
    plan: *const effnet_conv_plan,
    (x, x_len): (*const f32, usize),
    (w, w_len): (*const f32, usize),
    (packed, packed_bytes): (*const c_void, usize),
    (bias, bias_len): (*const f32, usize),
    args: &effnet_conv_post_args,
    (y, y_len): (*mut f32, usize),
    (workspace, workspace_bytes): (*mut c_void, usize),
) -> Outcome {
    let (residual, residual_len) = (args.residual, args.residual_len);
    // SAFETY: the caller's contract; handles are checked before use.
    let (ctx, conv) = unsafe { ctx_and_plan(ctx, plan) }?;
    let s = conv.shape();
    let plain = !w.is_null() || w_len > 0;
    let is_packed = !packed.is_null() || packed_bytes > 0;
    if plain == is_packed {
        return Err(Failure::invalid(
            "pass exactly one of `w` (plain weights) and `packed` (packed weights); \
             the other NULL with length 0",
        ));
    }
    let wants_residual = conv.post_ops().residual;
    let has_residual = !residual.is_null() || residual_len > 0;
    if wants_residual != has_residual {
        return Err(Failure::invalid(if wants_residual {
            "the plan's post-ops add a residual: pass `residual` (y_len floats)"
        } else {
            "`residual` was given but the plan's post-ops add none \
             (NULL with residual_len = 0)"
        }));
    }
    let bx = Buf::input("x", x, x_len, s.x_len);
    let bwt = if plain {
        Buf::input("w", w, w_len, s.w_len)
    } else {
        packed_buf("packed", conv, packed, packed_bytes)?
    };
    let wants_scale = conv.post_ops().scale;
    if wants_scale != (!args.scale.is_null() || args.scale_len > 0) {
        return Err(Failure::invalid(if wants_scale {
            "the plan's post-ops scale each output channel: pass `scale` (out_channels floats) \
             to effnet_conv_forward_post"
        } else {
            "`scale` was given but the plan's post-ops scale nothing (NULL with scale_len = 0)"
        }));
    }
    let stats = conv.post_ops().stats;
    let nc = s.desc.batch * s.desc.out_channels;
    for (name, ptr, len, wanted) in [
        (
            "sums",
            args.sums,
            args.sums_len,
            stats != ChannelStats::None,
        ),
        (
            "squares",
            args.squares,
            args.squares_len,
            stats == ChannelStats::SumsAndSquares,
        ),
    ] {
        if wanted != (!ptr.is_null() || len > 0) {
            return Err(Failure::invalid(if wanted {
                format!(
                    "the plan's post-ops gather statistics: pass `{name}` (batch·out_channels doubles)"
                )
            } else {
                format!(
                    "`{name}` was given but the plan's post-ops do not gather it (NULL with {name}_len = 0)"
                )
            }));
        }
    }
    let pre_ops = conv.pre_ops();
    let nci = s.desc.batch * s.desc.in_channels;
    for (name, ptr, len, wanted) in [
        (
            "pre_scale",
            args.pre_scale,
            args.pre_scale_len,
            pre_ops.is_some(),
        ),
        (
            "pre_shift",
            args.pre_shift,
            args.pre_shift_len,
            pre_ops.is_some_and(|p| p.shift),
        ),
        (
            "pre_out_scale",
            args.pre_out_scale,
            args.pre_out_scale_len,
            pre_ops.is_some_and(|p| p.out_scale),
        ),
        (
            "pre_out_shift",
            args.pre_out_shift,
            args.pre_out_shift_len,
            pre_ops.is_some_and(|p| p.out_shift),
        ),
    ] {
        if wanted != (!ptr.is_null() || len > 0) {
            return Err(Failure::invalid(if wanted {
                format!("the plan's pre-ops use `{name}`: pass it (batch·in_channels floats)")
            } else {
                format!(
                    "`{name}` was given but the plan's pre-ops do not use it (NULL with {name}_len = 0)"
                )
            }));
        }
    }
    let pre_bufs = [
        Buf::input("pre_scale", args.pre_scale, args.pre_scale_len, nci).optional(),
        Buf::input("pre_shift", args.pre_shift, args.pre_shift_len, nci).optional(),
        Buf::input(
            "pre_out_scale",
            args.pre_out_scale,
            args.pre_out_scale_len,
            nci,
        )
        .optional(),
        Buf::input(
            "pre_out_shift",
            args.pre_out_shift,
            args.pre_out_shift_len,
            nci,
        )
        .optional(),
    ];
    let bb = Buf::input("bias", bias, bias_len, s.desc.out_channels).optional();
    let br = Buf::input("residual", residual, residual_len, s.y_len).optional();
    let bsc = Buf::input("scale", args.scale, args.scale_len, s.desc.out_channels).optional();
    let bs = Buf::output_f64("sums", args.sums, args.sums_len, nc).optional();
    let bq = Buf::output_f64("squares", args.squares, args.squares_len, nc).optional();
    let by = Buf::output("y", y, y_len, s.y_len);
    // NULL with 0 bytes: the library's buffer; anything else is the caller's.
    let ws = (!workspace.is_null() || workspace_bytes > 0).then_some((workspace, workspace_bytes));
    let bws = buffers::workspace_arg(ws);
    let [bpa, bpb, bpp, bpq] = pre_bufs;
    buffers::check(&[bx, bwt, bb, br, bsc, bs, bq, by, bws, bpa, bpb, bpp, bpq])?;
    // SAFETY: checked above; readable/writable and exclusive by the contract.
    let (x, wt, bias, res, scale, sums, squares, y, wsb) = unsafe {
        (
            buffers::input(&bx),
            buffers::input(&bwt),
            buffers::opt_input(&bb),
            buffers::opt_input(&br),
            buffers::opt_input(&bsc),
            buffers::opt_output_f64(&bs),
            buffers::opt_output_f64(&bq),
            buffers::output(&by),
            buffers::opt_output(&bws),
        )
    };
    // SAFETY: checked above; readable by the contract.
    let pre = unsafe {
        buffers::opt_input(&bpa).map(|scale| PreArgs {
            scale,
            shift: buffers::opt_input(&bpb),
            out_scale: buffers::opt_input(&bpp),
            out_shift: buffers::opt_input(&bpq),
        })
    };
    let weights = if plain {
        ConvWeights::Plain(wt)
    } else {
        ConvWeights::Packed(wt)
    };
    let floats = || ctx.install(|| conv.workspace_len(ConvPass::Forward, 0));
    let need = || buffers::workspace_bytes(floats());
    let query = "effnet_conv_workspace_size";
    let post = PostArgs {
        scale,
        residual: res,
        sums,
        squares,
        pre,
    };
    buffers::run_pass(ctx, need, query, wsb, ws, |ws| {
        conv.forward_post(x, weights, bias, post, y, ws)
    })?;
    Ok(())
}
