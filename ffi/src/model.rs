//! The EfficientNet model as one opaque layer: create by architecture name, load
//! weights, forward (logits) and a training step (loss, gradients, optimizer update).

use std::ffi::{CStr, c_char};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use effnet_core::arch::ArchConfig;
use effnet_core::error::checked_product;
use effnet_core::kernels::loss::Targets;
use effnet_core::model::optim::{Optimizer, OptimizerKind};
use effnet_core::model::{InferencePlan, Network, Pass, Weights};

use crate::buffers::{self, Buf};
use crate::context::effnet_context;
use crate::handle::{self, Kind, ctx_and};
use crate::ops::labels_of;
use crate::sized::{self, SizedStruct, int_field};
use crate::status::{Failure, Outcome, effnet_status, guard};

/// The update rule of `effnet_model_train_step` (the `optimizer` field of
/// `effnet_model_desc`).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_optimizer {
    /// RMSProp with TensorFlow semantics (epsilon inside the square root), the paper's
    /// recipe: decay 0.953125, momentum 0.9, eps 1e-3.
    EFFNET_OPTIMIZER_RMSPROP_TF = 0,
    /// SGD with heavy-ball momentum.
    EFFNET_OPTIMIZER_SGD = 1,
}

/// Options of `effnet_model_create`. Set `struct_size = sizeof(effnet_model_desc)` and
/// zero what you do not use (zeros select the defaults noted), or pass NULL for all
/// defaults.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq)]
pub struct effnet_model_desc {
    /// `sizeof(effnet_model_desc)` as the caller was compiled.
    pub struct_size: usize,
    /// Number of classes; 0 means the architecture's (1000 for the paper's networks).
    pub classes: i64,
    /// Seed of the parameter initialization.
    pub seed: u64,
    /// An `effnet_optimizer` value.
    pub optimizer: u32,
    /// Must be zero.
    pub reserved: u32,
    /// Momentum of either optimizer; 0 means 0.9.
    pub momentum: f32,
    /// L2 weight decay on convolution and dense weights (never on norm parameters or
    /// biases); 0 means none.
    pub weight_decay: f32,
    /// RMSProp's decay of the mean square; 0 means 0.953125.
    pub rmsprop_decay: f32,
    /// RMSProp's epsilon (inside the square root); 0 means 1e-3.
    pub rmsprop_eps: f32,
    /// Label smoothing of the training loss, in [0, 1); 0 means none.
    pub label_smoothing: f32,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers and floats only.
unsafe impl SizedStruct for effnet_model_desc {
    const C_NAME: &'static str = "effnet_model_desc";
}

/// What `effnet_model_info` reports. Set `struct_size = sizeof(effnet_model_info_t)`
/// before the call.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct effnet_model_info_t {
    /// `sizeof(effnet_model_info_t)` as the caller was compiled; kept by the call.
    pub struct_size: usize,
    /// Number of classes (the width of the logits).
    pub classes: usize,
    /// Channels of the input images (3).
    pub in_channels: usize,
    /// Elements of all parameters and buffers (BatchNorm running statistics).
    pub param_elems: usize,
    /// Elements of the trainable parameters.
    pub trainable_elems: usize,
    /// Training steps taken by `effnet_model_train_step`.
    pub steps: u64,
}

// SAFETY: repr(C), starts with `usize struct_size`, integers only.
unsafe impl SizedStruct for effnet_model_info_t {
    const C_NAME: &'static str = "effnet_model_info_t";
}

struct State {
    net: Network,
    opt: Optimizer,
    steps: u64,
    /// The prepared inference network of the last forward call, with the thread count
    /// it was planned for; dropped whenever the parameters change.
    infer: Option<(InferencePlan, usize)>,
}

/// An EfficientNet with its parameters and optimizer state, made by
/// `effnet_model_create`, released by `effnet_model_destroy`. Not tied to a context.
/// Calls on one model may come from several threads; they are serialized (a training
/// step and a forward do not interleave).
pub struct effnet_model {
    magic: u64,
    smoothing: f32,
    state: Mutex<State>,
}

handle::impl_handle!(effnet_model, Kind::Model);

impl effnet_model {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic inside a call leaves the model as the kernels left it; the caller
        // got EFFNET_INTERNAL for that call and may destroy or keep using the model.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A NUL-terminated UTF-8 argument.
///
/// # Safety
/// `s` is NULL or points to a NUL-terminated string.
unsafe fn c_str<'a>(s: *const c_char, what: &str) -> Outcome<&'a str> {
    if s.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated (caller's promise).
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

fn or(v: f32, default: f32) -> f32 {
    if v == 0.0 { default } else { v }
}

fn optimizer_of(d: &effnet_model_desc) -> Outcome<OptimizerKind> {
    let momentum = or(d.momentum, 0.9);
    match d.optimizer {
        0 => Ok(OptimizerKind::RmsProp {
            decay: or(d.rmsprop_decay, 0.953125),
            momentum,
            eps: or(d.rmsprop_eps, 1e-3),
        }),
        1 => Ok(OptimizerKind::Sgd { momentum }),
        v => Err(Failure::invalid(format!(
            "effnet_model_desc.optimizer = {v} is not an effnet_optimizer"
        ))),
    }
}

/// Creates an EfficientNet by architecture name (e.g. `"efficientnet_b0"`,
/// `"tf_efficientnet_b0"`, `"b0_g16_lnpn"`, `"tiny_g16_lnpn"`; the names of
/// `effnet info`), with parameters initialized from `desc->seed` and a fresh optimizer,
/// and stores its handle in `*out_model`. `desc` may be NULL (all defaults).
///
/// Ownership: the caller owns the model (release it with `effnet_model_destroy`);
/// `arch` and `desc` are only read during the call. `*out_model` is written only on
/// success.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle or pointer, an unknown
/// architecture name, or a bad descriptor (`struct_size`, negative classes, a class
/// count whose classifier (`head channels * classes` weights) does not fit in memory
/// addressing, unknown optimizer, smoothing outside [0, 1), non-finite values);
/// `EFFNET_OUT_OF_MEMORY` when the parameters or the optimizer state cannot be
/// allocated (e.g. `classes = 2^40`); nothing is created then.
///
/// # Safety
/// `ctx` is NULL or a context handle; `arch` is NULL or a NUL-terminated string;
/// `desc` is NULL or points to its `struct_size` readable bytes; `out_model` is NULL or
/// points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_model_create(
    ctx: *const effnet_context,
    arch: *const c_char,
    desc: *const effnet_model_desc,
    out_model: *mut *mut effnet_model,
) -> effnet_status {
    guard("effnet_model_create", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let ctx = unsafe { handle::get(ctx, "`ctx`") }?;
        // SAFETY: the caller's contract.
        let arch = unsafe { c_str(arch, "`arch`") }?;
        let d = if desc.is_null() {
            effnet_model_desc::default()
        } else {
            // SAFETY: the caller's contract; pointer and size checked inside.
            unsafe { sized::read(desc, "`desc`") }?
        };
        handle::check_out(out_model, "`out_model`")?;
        if d.reserved != 0 {
            return Err(Failure::invalid("effnet_model_desc.reserved must be zero"));
        }
        let floats = [
            ("momentum", d.momentum),
            ("weight_decay", d.weight_decay),
            ("rmsprop_decay", d.rmsprop_decay),
            ("rmsprop_eps", d.rmsprop_eps),
        ];
        if let Some((name, v)) = floats.iter().find(|(_, v)| !(v.is_finite() && *v >= 0.0)) {
            return Err(Failure::invalid(format!(
                "effnet_model_desc.{name} = {v} must be finite and >= 0"
            )));
        }
        if !(0.0..1.0).contains(&d.label_smoothing) {
            return Err(Failure::invalid(format!(
                "effnet_model_desc.label_smoothing = {} is outside [0, 1)",
                d.label_smoothing
            )));
        }
        let kind = optimizer_of(&d)?;
        let mut cfg = ArchConfig::from_name(arch)?;
        let classes = int_field("effnet_model_desc", "classes", d.classes, 0)?;
        if classes > 0 {
            cfg = cfg.with_classes(classes);
        }
        let net = ctx.install(|| Network::new(&cfg, d.seed))?;
        let opt = Optimizer::try_new(kind, d.weight_decay, net.params())?;
        let model = effnet_model {
            magic: Kind::Model.magic(),
            smoothing: d.label_smoothing,
            state: Mutex::new(State {
                net,
                opt,
                steps: 0,
                infer: None,
            }),
        };
        // SAFETY: checked; writable (caller's promise).
        unsafe { handle::publish(out_model, model) }?;
        Ok(())
    })
}

/// Destroys a model. NULL is a no-op (returns `EFFNET_OK`).
///
/// Errors: `EFFNET_INVALID_ARGUMENT` if `model` is not a live model.
///
/// # Safety
/// `model` is NULL or a handle from `effnet_model_create`, unused by any other call,
/// and not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_model_destroy(model: *mut effnet_model) -> effnet_status {
    // SAFETY: forwarded from this function's contract.
    guard("effnet_model_destroy", || unsafe {
        handle::destroy(model, "`model`")
    })
}

/// Fills `*out_info` with the model's class count, input channels, parameter counts
/// and training steps. Set `out_info->struct_size = sizeof(effnet_model_info_t)` first.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle, a NULL or misaligned `out_info`
/// or a bad `struct_size`.
///
/// # Safety
/// `model` is NULL or a model handle; `out_info` is NULL or points to a writable
/// `effnet_model_info_t` whose `struct_size` is set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_model_info(
    model: *const effnet_model,
    out_info: *mut effnet_model_info_t,
) -> effnet_status {
    guard("effnet_model_info", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let model = unsafe { handle::get(model, "`model`") }?;
        let st = model.lock();
        let p = st.net.params();
        let info = effnet_model_info_t {
            struct_size: 0,
            classes: st.net.classes(),
            in_channels: 3,
            param_elems: p.infos().iter().map(|i| i.len()).sum(),
            trainable_elems: p.trainable_count(),
            steps: st.steps,
        };
        // SAFETY: the caller's contract; pointer and size checked inside.
        unsafe { sized::write(out_info, "`out_info`", info) }
    })
}

/// Loads the parameters (and BatchNorm running statistics) from a safetensors file:
/// an effnet checkpoint (`effnet train`) or a timm state dict of the same architecture
/// and class count. The optimizer state is kept.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle, a NULL or non-UTF-8 `path`, a
/// damaged file, or weights of another architecture or class count (the message names
/// the first missing or misshapen tensor; the model is unchanged);
/// `EFFNET_IO_ERROR` if the file cannot be read.
///
/// # Safety
/// `model` is NULL or a model handle; `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_model_load_weights(
    model: *const effnet_model,
    path: *const c_char,
) -> effnet_status {
    guard("effnet_model_load_weights", || {
        // SAFETY: the caller's contract; the handle is checked before use.
        let model = unsafe { handle::get(model, "`model`") }?;
        // SAFETY: the caller's contract.
        let path = unsafe { c_str(path, "`path`") }?;
        let w = Weights::read(Path::new(path))?;
        let mut st = model.lock();
        st.infer = None;
        st.net.load_weights(&w)?;
        Ok(())
    })
}

/// `batch * res * res * 3`, checked.
fn image_len(batch: usize, res: usize) -> Outcome<usize> {
    if batch == 0 || res == 0 {
        return Err(Failure::invalid(format!(
            "batch = {batch} and res = {res} must be at least 1"
        )));
    }
    Ok(checked_product("x", &[batch, res, res, 3])?)
}

/// Inference: the logits of `batch` images (BatchNorm with its running statistics, no
/// dropout), run on `ctx`'s threads; `logits` is overwritten.
///
/// The first call for a `batch`, `res` and thread count prepares the network for it
/// (BatchNorm folded into the convolutions, activations and residual adds in their
/// epilogues, per-sample norms prepared once, weights packed once, buffers kept) and
/// later calls of the same shape reuse it until the weights change
/// (`effnet_model_train_step`, `effnet_model_load_weights`). A batch of more than one
/// image runs in groups of up to 4 images (a divisor of the batch) on one lane per
/// context thread (each lane a thread of its own that the prepared network keeps);
/// the logits are the same bits for any thread count. The folded network rounds differently from the training forward
/// pass: logits agree within about 1e-5 relative.
///
/// Buffers: `x` NHWC `[batch][res][res][3]` (normalized images, channels fastest;
/// PyTorch's NCHW `X[n][c][h][w]` is `x[n][h][w][c]`), `x_len = batch*res*res*3`;
/// `logits` `[batch][classes]`. `res` at least 8 (the network downsamples 32 times;
/// any size works, multiples of 32 avoid padding). The caller owns both; `logits`
/// must not overlap `x`.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` for a bad handle, a zero or too small
/// `batch`/`res`, a `batch`/`res` whose image or activation sizes overflow, or a NULL,
/// misaligned, overlapping or wrongly sized buffer; `EFFNET_OUT_OF_MEMORY` when the
/// activations for this batch and resolution cannot be allocated.
///
/// # Safety
/// Each buffer points to its count of `float`s, readable (`x`) or writable (`logits`)
/// during the call and not accessed by another thread meanwhile.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_model_forward(
    ctx: *const effnet_context,
    model: *const effnet_model,
    batch: usize,
    res: usize,
    x: *const f32,
    x_len: usize,
    logits: *mut f32,
    logits_len: usize,
) -> effnet_status {
    guard("effnet_model_forward", || {
        // SAFETY: the caller's contract.
        let (ctx, model) = unsafe { ctx_and(ctx, model, "`model`") }?;
        let mut st = model.lock();
        let classes = st.net.classes();
        let bx = Buf::input("x", x, x_len, image_len(batch, res)?);
        let bl = Buf::output(
            "logits",
            logits,
            logits_len,
            checked_product("logits", &[batch, classes])?,
        );
        buffers::check(&[bx, bl])?;
        // SAFETY: checked above; valid and exclusive by the caller's contract.
        let (x, out) = unsafe { (buffers::input(&bx), buffers::output(&bl)) };
        // The prepared network (BatchNorm folded, fused epilogues, weights packed once),
        // kept for the next call of the same shape on as many threads.
        let st = &mut *st;
        let l = ctx.install(|| -> effnet_core::Result<Vec<f32>> {
            let threads = rayon::current_num_threads();
            let fresh = match &st.infer {
                Some((p, t)) => p.shape() != (batch, res) || *t != threads,
                None => true,
            };
            if fresh {
                st.infer = Some((st.net.plan_inference(batch, res)?, threads));
            }
            let (plan, _) = st.infer.as_mut().expect("planned above");
            plan.run(x)
        })?;
        out.copy_from_slice(&l);
        Ok(())
    })
}

/// One training step on a batch: forward in training mode (batch statistics, the
/// architecture's dropout and drop-connect with masks drawn from `seed`), softmax
/// cross-entropy against `labels` (with the model's label smoothing), backward,
/// BatchNorm running-statistics update, and one optimizer update with learning rate
/// `lr`. The mean loss (before the update) is written to `*out_loss`. Run on `ctx`'s
/// threads; the same inputs and seed give the same bits for any thread count.
///
/// Buffers: `x` as in `effnet_model_forward`; `labels` `int64_t [batch]`, class indices
/// in `[0, classes)`; `out_loss` one `float`.
///
/// Errors: as `effnet_model_forward`, plus an out-of-range label or a non-finite or
/// negative `lr` (`EFFNET_INVALID_ARGUMENT`). When a check fails nothing is updated.
///
/// # Safety
/// As `effnet_model_forward` (`labels` readable, `out_loss` writable).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_model_train_step(
    ctx: *const effnet_context,
    model: *const effnet_model,
    batch: usize,
    res: usize,
    x: *const f32,
    x_len: usize,
    labels: *const i64,
    labels_len: usize,
    lr: f32,
    seed: u64,
    out_loss: *mut f32,
) -> effnet_status {
    guard("effnet_model_train_step", || {
        // SAFETY: the caller's contract.
        let (ctx, model) = unsafe { ctx_and(ctx, model, "`model`") }?;
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Failure::invalid(format!(
                "lr = {lr} must be finite and >= 0"
            )));
        }
        let mut guard = model.lock();
        let st = &mut *guard;
        let classes = st.net.classes();
        let bx = Buf::input("x", x, x_len, image_len(batch, res)?);
        let bl = Buf::input_i64("labels", labels, labels_len, batch);
        let bo = Buf::output("out_loss", out_loss, 1, 1);
        buffers::check(&[bx, bl, bo])?;
        // SAFETY: checked above; valid and exclusive by the caller's contract.
        let (x, labels, out) = unsafe {
            (
                buffers::input(&bx),
                buffers::input_i64(&bl),
                buffers::output(&bo),
            )
        };
        let labels = labels_of(labels, classes)?;
        let pass = Pass::train(st.net.config(), seed);
        let loss = ctx.install(|| -> effnet_core::Result<f32> {
            let (loss, _tape) = st.net.loss_and_grad(
                x,
                batch,
                res,
                Targets::Labels(&labels),
                model.smoothing,
                &pass,
            )?;
            st.infer = None;
            st.opt.step(st.net.params_mut(), lr, |_| true)?;
            Ok(loss)
        })?;
        st.steps += 1;
        out[0] = loss;
        Ok(())
    })
}
