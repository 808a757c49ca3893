//! The compute kernels: convolutions, normalizations and activations on NHWC `f32`
//! tensors, SIMD with runtime dispatch, multi-core with `rayon`, deterministic for any
//! thread count.

pub mod activation;
pub mod conv;
pub mod fully_connected;
pub mod gate;
pub(crate) mod gemm;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod parallel;
pub mod pool;
pub mod proxy_norm;
pub mod reduce;
pub mod regularize;
pub mod scratch;
