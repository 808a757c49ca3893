//! Grouped and dense k×k convolutions (any group size; fast paths for 8, 16 and 32 channels per group; the 3-channel stem).
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc).

use super::{ConvShape, GradMode};
use crate::error::{Error, Result};
use crate::simd::SimdLevel;

fn not_yet() -> Error {
    Error::Unsupported("the grouped kernels are not implemented yet".into())
}

/// `y = conv(x, w) (+ bias)`; `y` is overwritten.
pub fn forward(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    shape.check_forward(x, w, bias, y)?;
    let _ = level;
    Err(not_yet())
}

/// `dx = convᵀ(dy, w)`; `dx` is overwritten.
pub fn backward_data(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    shape.check_backward_data(dy, w, dx)?;
    let _ = level;
    Err(not_yet())
}

/// Weight (and bias) gradient, overwritten or accumulated per `mode`.
pub fn backward_weight(
    level: SimdLevel,
    shape: &ConvShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
) -> Result<()> {
    shape.check_backward_weight(x, dy, dw, dbias.as_deref())?;
    let _ = (level, mode);
    Err(not_yet())
}
