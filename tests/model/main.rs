//! Model-layer tests: the EfficientNet network against its reference and PyTorch
//! fixtures, training (resume, curves, the CLI end to end), data loading and the file
//! formats. One test binary for all of them, so that the library is linked once.

#[path = "../common/mod.rs"]
mod common;

mod data_folder;
mod fixtures_files;
mod interop;
mod model;
mod report;
mod train;
mod train_cli;
