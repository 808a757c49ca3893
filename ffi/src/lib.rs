//! The C ABI of `effnet`: `libeffnet.so` / `libeffnet.a`, declared by the generated
//! header `include/effnet.h`.
//!
//! Every exported function returns an [`effnet_status`]; on failure a thread-local
//! message explains it ([`effnet_last_error`]). No panic crosses the boundary: each
//! entry point runs its body under `catch_unwind` ([`status::guard`]), and a panic
//! hook keeps such panics off the host's stderr. Handles are tokens that are never
//! reused, looked up in a registry of live handles ([`handle`]), so NULL, destroyed
//! (even after their memory is reused), wrong-type and garbage handles are reported
//! without reading freed memory.
//! Buffers come with their element counts and are checked (NULL, count, alignment,
//! address overflow, overlap of outputs with other buffers) before any is touched
//! ([`buffers`]). Descriptors carry their own size ([`sized`]).
//!
//! The doc comments on the exported items become the header's comments: they are
//! written for C programmers.

#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod buffers;
pub mod context;
pub mod conv;
pub mod conv_backward;
pub mod conv_fused;
pub mod conv_packed;
pub mod conv_pre;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod handle;
pub mod model;
pub mod norm;
pub mod norm_from_sums;
pub mod ops;
pub mod proxy_norm;
pub mod sized;
pub mod status;

pub use context::{effnet_context, effnet_context_create, effnet_context_destroy};
pub use conv::{
    effnet_conv_desc, effnet_conv_family, effnet_conv_forward, effnet_conv_forward_ws,
    effnet_conv_pass, effnet_conv_plan, effnet_conv_plan_create, effnet_conv_plan_destroy,
    effnet_conv_plan_shape, effnet_conv_shape, effnet_conv_workspace_size, effnet_dtype,
};
pub use conv_backward::{
    effnet_conv_backward_data, effnet_conv_backward_data_ws, effnet_conv_backward_weight,
    effnet_conv_backward_weight_ws,
};
pub use conv_fused::{
    effnet_conv_forward_fused, effnet_conv_plan_create_fused, effnet_conv_plan_post_ops,
    effnet_conv_post_ops,
};
pub use conv_packed::{
    effnet_conv_forward_packed, effnet_conv_pack_weights, effnet_conv_packed_weights_size,
};
pub use conv_pre::{effnet_conv_plan_create_ops, effnet_conv_plan_pre_ops, effnet_conv_pre_ops};
pub use model::{
    effnet_model, effnet_model_create, effnet_model_desc, effnet_model_destroy,
    effnet_model_forward, effnet_model_info, effnet_model_info_t, effnet_model_load_weights,
    effnet_model_train_step, effnet_optimizer,
};
pub use norm::{
    effnet_norm_backward, effnet_norm_desc, effnet_norm_forward, effnet_norm_forward_infer,
    effnet_norm_grouping, effnet_norm_kind, effnet_norm_plan, effnet_norm_plan_create,
    effnet_norm_plan_destroy, effnet_norm_plan_shape, effnet_norm_shape,
    effnet_norm_update_running,
};
pub use ops::{
    effnet_activation, effnet_activation_backward, effnet_activation_forward, effnet_cross_entropy,
    effnet_gate_backward, effnet_gate_forward, effnet_global_avg_pool_backward,
    effnet_global_avg_pool_forward, effnet_nhwc,
};
pub use proxy_norm::{
    effnet_proxy_norm_backward, effnet_proxy_norm_desc, effnet_proxy_norm_forward,
    effnet_proxy_norm_plan, effnet_proxy_norm_plan_create, effnet_proxy_norm_plan_destroy,
    effnet_proxy_norm_plan_shape, effnet_proxy_norm_shape, effnet_proxy_variant,
};
pub use status::{effnet_last_error, effnet_status};

/// The version of this C ABI. It changes whenever a function, struct or constant of
/// this header changes incompatibly; additions (new functions, new status codes, new
/// trailing fields in a sized struct) keep it. Compare `effnet_abi_version()` with
/// this constant at startup to detect a header / library mismatch.
pub const EFFNET_ABI_VERSION: u32 = 1;

/// Returns the ABI version the library was built with (`EFFNET_ABI_VERSION` of its
/// header). Never fails; callable at any time from any thread. Like every other
/// function it clears the thread's last error (`effnet_last_error()` then returns "").
#[unsafe(no_mangle)]
pub extern "C" fn effnet_abi_version() -> u32 {
    status::clear_last_error();
    EFFNET_ABI_VERSION
}
