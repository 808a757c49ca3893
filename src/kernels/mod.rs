//! The compute kernels: convolutions, normalizations and activations on NHWC `f32`
//! tensors, SIMD with runtime dispatch, multi-core with `rayon`, deterministic for any
//! thread count.

pub mod activation;
pub mod conv;
pub mod norm;
pub mod parallel;
pub mod proxy_norm;
pub mod reduce;
