//! Reporting to a person: a progress bar with throughput and running loss
//! ([`Progress`]), the loss/accuracy curve of a training run saved as a picture
//! ([`Curve`]), and log–log line charts ([`chart`], the study's throughput picture).

mod canvas;
pub mod chart;
pub mod curve;
pub mod progress;

pub use curve::Curve;
pub use progress::{Progress, Summary};
