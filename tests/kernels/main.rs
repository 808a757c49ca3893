//! Kernel tests: every convolution family, normalization, Proxy Norm, the head and
//! regularizer ops and the microkernel tables against plain f64 references, at every
//! SIMD level, with the workspace forms, thread-count determinism and typed errors.
//! One test binary for all of them, so that the library is linked once.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod conv;
mod conv_depthwise;
mod conv_desc;
mod conv_grouped;
mod conv_pointwise;
mod conv_post_ops;
mod conv_pre_ops;
mod conv_scale;
mod conv_scaled_weights;
mod conv_stats;
mod conv_workspace;
mod heads;
mod microkernels;
mod norm;
mod norm_from_sums;
mod norm_workspace;
mod optim;
mod parallel;
mod proxy_norm;
mod proxy_norm_prepared;
mod proxy_special;
mod reduce;
mod scratch;
mod simd;
