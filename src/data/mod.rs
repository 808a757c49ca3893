//! Training data: the built-in procedural dataset, image folders, and the transforms
//! that turn images into network input.

pub mod folder;
pub mod synthetic;
pub mod transform;

pub use folder::ImageFolder;
pub use synthetic::SyntheticShapes;
