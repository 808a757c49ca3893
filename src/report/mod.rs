//! Reporting a training run to a person: a progress bar with throughput and running
//! loss ([`Progress`]) and the loss/accuracy curve saved as a picture ([`Curve`]).

mod canvas;
pub mod curve;
pub mod progress;

pub use curve::Curve;
pub use progress::{Progress, Summary};
