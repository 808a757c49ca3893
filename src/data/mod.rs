//! Training data: the built-in procedural dataset (and, later, image folders).

pub mod synthetic;

pub use synthetic::SyntheticShapes;
