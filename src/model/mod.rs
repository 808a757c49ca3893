//! The EfficientNet model layer: parameters, the network (forward and backward),
//! optimizers, schedules and training. It composes the kernels of
//! [`crate::kernels`] and contains no arithmetic loops of its own.
//!
//! ```no_run
//! use effnet::arch::ArchConfig;
//! use effnet::model::{Network, Pass};
//! use effnet::kernels::loss::Targets;
//! let cfg = ArchConfig::from_name("tiny_g16_lnpn").unwrap().with_classes(8);
//! let mut net = Network::new(&cfg, 0).unwrap();
//! let x = vec![0.1f32; 2 * 32 * 32 * 3]; // NHWC [2][32][32][3]
//! let (loss, _tape) = net
//!     .loss_and_grad(&x, 2, 32, Targets::Labels(&[1, 5]), 0.0, &Pass::train(&cfg, 1))
//!     .unwrap();
//! assert!(loss.is_finite());
//! ```

pub mod block;
pub mod infer;
mod infer_band;
#[doc(hidden)]
pub mod lanes;
pub mod network;
pub mod norm_act;
mod ops;
pub mod optim;
pub mod params;
pub mod profile;
pub mod schedule;
pub mod train;
pub mod weights;

pub use infer::{InferencePlan, Traffic};
pub use network::{MemoryPlan, Network, Pass, Tape};
pub use params::{ParamInfo, ParamKind, ParamStore};
pub use weights::Weights;
