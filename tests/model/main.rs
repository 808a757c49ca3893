//! Model-layer tests: the EfficientNet network against its reference and PyTorch
//! fixtures, training (resume, curves, the CLI end to end), data loading and the file
//! formats. One test binary for all of them, so that the library is linked once.

#[path = "../common/mod.rs"]
mod common;

mod arch;
mod bench;
mod chart;
mod curve;
mod data_folder;
mod fixtures_files;
mod infer;
mod interop;
mod ipu_picture;
mod lanes;
mod model;
mod npy;
mod params;
mod progress;
mod report;
mod schedule;
mod study_cli;
mod synthetic;
mod tensors;
mod train;
mod train_cli;
mod transform;
