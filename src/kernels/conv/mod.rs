//! Convolutions over NHWC tensors: depthwise, grouped (and dense k×k), pointwise.
//!
//! Describe a convolution once with [`ConvDesc`], validate it into a [`ConvShape`],
//! and run the passes through a [`Conv2d`] plan, which picks the kernel family
//! ([`ConvFamily`]) and the SIMD level ([`crate::simd::active`]). The family modules
//! ([`depthwise`], [`grouped`], [`pointwise`]) can also be called directly.
//!
//! ```
//! use effnet::kernels::conv::{Conv2d, ConvDesc, GradMode};
//! let conv = Conv2d::new(&ConvDesc::depthwise(2, (9, 9), 24, 3, 2)).unwrap();
//! let s = *conv.shape();
//! let x = vec![0.5f32; s.x_len];
//! let w = vec![0.1f32; s.w_len];
//! let mut y = vec![0.0f32; s.y_len];
//! conv.forward(&x, &w, None, &mut y).unwrap();
//! let mut dx = vec![0.0f32; s.x_len];
//! conv.backward_data(&y, &w, &mut dx).unwrap();
//! let mut dw = vec![0.0f32; s.w_len];
//! let mut db = vec![0.0f32; 24];
//! conv.backward_weight(&x, &y, &mut dw, Some(&mut db), GradMode::Overwrite).unwrap();
//! ```

pub mod depthwise;
mod desc;
pub mod grouped;
pub mod pointwise;
pub mod reference;

pub use desc::{ConvDesc, ConvFamily, ConvShape, DType, Padding};

use crate::error::Result;
use crate::kernels::reduce::column_sums;
use crate::simd::{self, SimdLevel};

/// Whether a gradient pass overwrites its output or adds to it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum GradMode {
    /// `dw = …` (the old contents are ignored).
    #[default]
    Overwrite,
    /// `dw += …` (for gradients summed over several calls).
    Accumulate,
}

impl GradMode {
    /// `true` for [`GradMode::Accumulate`].
    pub fn accumulate(self) -> bool {
        self == GradMode::Accumulate
    }
}

/// A validated convolution with its kernel family chosen: the entry point for the three
/// passes. Layouts are documented on [`ConvDesc`].
#[derive(Copy, Clone, Debug)]
pub struct Conv2d {
    shape: ConvShape,
    family: ConvFamily,
}

impl Conv2d {
    /// Validates `desc` and picks the kernel family.
    pub fn new(desc: &ConvDesc) -> Result<Conv2d> {
        let shape = desc.validate()?;
        Ok(Conv2d {
            family: shape.family(),
            shape,
        })
    }

    /// The validated shape (output size, buffer lengths).
    pub fn shape(&self) -> &ConvShape {
        &self.shape
    }

    /// The kernel family the passes run on.
    pub fn family(&self) -> ConvFamily {
        self.family
    }

    /// `y = conv(x, w) (+ bias)`; `y` is overwritten.
    pub fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
        let level = simd::active();
        match self.family {
            ConvFamily::Depthwise => depthwise::forward(level, &self.shape, x, w, bias, y),
            ConvFamily::Pointwise => pointwise::forward(level, &self.shape, x, w, bias, y),
            ConvFamily::Grouped => grouped::forward(level, &self.shape, x, w, bias, y),
        }
    }

    /// `dx = convᵀ(dy, w)`, the gradient with respect to the input; `dx` is
    /// overwritten.
    pub fn backward_data(&self, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
        let level = simd::active();
        match self.family {
            ConvFamily::Depthwise => depthwise::backward_data(level, &self.shape, dy, w, dx),
            ConvFamily::Pointwise => pointwise::backward_data(level, &self.shape, dy, w, dx),
            ConvFamily::Grouped => grouped::backward_data(level, &self.shape, dy, w, dx),
        }
    }

    /// The gradients with respect to the weight and (if `dbias` is given) the bias,
    /// overwritten or accumulated according to `mode`.
    pub fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        let level = simd::active();
        match self.family {
            ConvFamily::Depthwise => {
                depthwise::backward_weight(level, &self.shape, x, dy, dw, dbias, mode)
            }
            ConvFamily::Pointwise => {
                pointwise::backward_weight(level, &self.shape, x, dy, dw, dbias, mode)
            }
            ConvFamily::Grouped => {
                grouped::backward_weight(level, &self.shape, x, dy, dw, dbias, mode)
            }
        }
    }
}

/// `dbias (+)= Σ dy` over every pixel of every image, per output channel;
/// deterministic. Shared by the three families' backward-weight passes.
pub fn bias_grad(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    dbias: &mut [f32],
    mode: GradMode,
) {
    debug_assert_eq!(dy.len(), shape.y_len);
    column_sums(level, dy, dbias, mode.accumulate());
}
