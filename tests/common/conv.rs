//! Convolution test operands, every pass run through one entry point, and the f64
//! reference results to compare them with.

use super::Rng;
use effnet::Result;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvShape, GradMode, reference};
use effnet::simd::{self, SimdLevel};

/// Random operands of one convolution: input, weights, bias and output gradient.
pub struct ConvCase {
    pub shape: ConvShape,
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub dy: Vec<f32>,
}

type ForwardFn =
    fn(SimdLevel, &ConvShape, &[f32], &[f32], Option<&[f32]>, &mut [f32]) -> Result<()>;
type DataFn = fn(SimdLevel, &ConvShape, &[f32], &[f32], &mut [f32]) -> Result<()>;
type WeightFn = fn(
    SimdLevel,
    &ConvShape,
    &[f32],
    &[f32],
    &mut [f32],
    Option<&mut [f32]>,
    GradMode,
) -> Result<()>;

/// The three passes of one family module called directly (`depthwise`, `grouped`,
/// `pointwise`), at the calling thread's active SIMD level.
pub struct Family {
    pub forward: ForwardFn,
    pub backward_data: DataFn,
    pub backward_weight: WeightFn,
}

/// Where the passes come from: the `Conv2d` plan or one family's functions.
pub enum Passes<'a> {
    Plan(&'a Conv2d),
    Family(&'a Family),
}

/// Every pass's result: forward with and without bias, both gradients overwritten,
/// and both gradients accumulated onto the case's own `w` and `b`.
pub struct ConvOutputs {
    pub y: Vec<f32>,
    pub y_no_bias: Vec<f32>,
    pub dx: Vec<f32>,
    pub dw: Vec<f32>,
    pub db: Vec<f32>,
    pub dw_acc: Vec<f32>,
    pub db_acc: Vec<f32>,
    /// Accumulated without a bias gradient.
    pub dw_acc_no_bias: Vec<f32>,
}

/// The f64 reference values of every field of [`ConvOutputs`].
pub struct ConvRefs {
    pub y: Vec<f64>,
    pub y_no_bias: Vec<f64>,
    pub dx: Vec<f64>,
    pub dw: Vec<f64>,
    pub db: Vec<f64>,
    pub dw_acc: Vec<f64>,
    pub db_acc: Vec<f64>,
}

impl Passes<'_> {
    fn forward(&self, s: &ConvShape, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
        match self {
            Passes::Plan(c) => c.forward(x, w, b, y),
            Passes::Family(f) => (f.forward)(simd::active(), s, x, w, b, y),
        }
        .unwrap()
    }
    fn backward_data(&self, s: &ConvShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
        match self {
            Passes::Plan(c) => c.backward_data(dy, w, dx),
            Passes::Family(f) => (f.backward_data)(simd::active(), s, dy, w, dx),
        }
        .unwrap()
    }
    #[allow(clippy::too_many_arguments)]
    fn backward_weight(
        &self,
        s: &ConvShape,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
        mode: GradMode,
    ) {
        match self {
            Passes::Plan(c) => c.backward_weight(x, dy, dw, db, mode),
            Passes::Family(f) => (f.backward_weight)(simd::active(), s, x, dy, dw, db, mode),
        }
        .unwrap()
    }
}

impl ConvCase {
    /// Validates `d` and draws every operand uniformly in [-1, 1) from `seed`.
    pub fn new(d: &ConvDesc, seed: u64) -> ConvCase {
        let shape = d.validate().unwrap();
        let mut r = Rng::new(seed);
        ConvCase {
            x: r.vec(shape.x_len),
            w: r.vec(shape.w_len),
            b: r.vec(d.out_channels),
            dy: r.vec(shape.y_len),
            shape,
        }
    }

    /// Runs every pass (outputs start as NaN, so unwritten elements show).
    pub fn run(&self, p: &Passes<'_>) -> ConvOutputs {
        let s = &self.shape;
        let nan = |n: usize| vec![f32::NAN; n];
        let mut y = nan(s.y_len);
        p.forward(s, &self.x, &self.w, Some(&self.b), &mut y);
        let mut y_no_bias = nan(s.y_len);
        p.forward(s, &self.x, &self.w, None, &mut y_no_bias);
        let mut dx = nan(s.x_len);
        p.backward_data(s, &self.dy, &self.w, &mut dx);
        let mut dw = nan(s.w_len);
        let mut db = nan(self.b.len());
        p.backward_weight(
            s,
            &self.x,
            &self.dy,
            &mut dw,
            Some(&mut db),
            GradMode::Overwrite,
        );
        let mut dw_acc = self.w.clone();
        let mut db_acc = self.b.clone();
        let acc = GradMode::Accumulate;
        p.backward_weight(s, &self.x, &self.dy, &mut dw_acc, Some(&mut db_acc), acc);
        let mut dw_acc_no_bias = self.w.clone();
        p.backward_weight(s, &self.x, &self.dy, &mut dw_acc_no_bias, None, acc);
        ConvOutputs {
            y,
            y_no_bias,
            dx,
            dw,
            db,
            dw_acc,
            db_acc,
            dw_acc_no_bias,
        }
    }

    /// The f64 reference of every output of [`ConvCase::run`].
    pub fn references(&self) -> ConvRefs {
        let s = &self.shape;
        let (dw, db) = reference::backward_weight(s, &self.x, &self.dy);
        let plus = |g: &[f64], old: &[f32]| -> Vec<f64> {
            g.iter().zip(old).map(|(g, o)| g + *o as f64).collect()
        };
        ConvRefs {
            y: reference::forward(s, &self.x, &self.w, Some(&self.b)),
            y_no_bias: reference::forward(s, &self.x, &self.w, None),
            dx: reference::backward_data(s, &self.dy, &self.w),
            dw_acc: plus(&dw, &self.w),
            db_acc: plus(&db, &self.b),
            dw,
            db,
        }
    }
}

impl ConvOutputs {
    /// `(name, err(got, want))` for every output, with the error measure given.
    pub fn errors(&self, r: &ConvRefs, err: fn(&[f32], &[f64]) -> f64) -> Vec<(&'static str, f64)> {
        vec![
            ("forward", err(&self.y, &r.y)),
            ("forward without bias", err(&self.y_no_bias, &r.y_no_bias)),
            ("backward_data", err(&self.dx, &r.dx)),
            ("backward_weight", err(&self.dw, &r.dw)),
            ("bias gradient", err(&self.db, &r.db)),
            ("accumulated weight gradient", err(&self.dw_acc, &r.dw_acc)),
            ("accumulated bias gradient", err(&self.db_acc, &r.db_acc)),
            (
                "accumulated without bias",
                err(&self.dw_acc_no_bias, &r.dw_acc),
            ),
        ]
    }

    /// Every output as bit patterns, for bitwise comparisons across thread counts.
    pub fn bits(&self) -> Vec<Vec<u32>> {
        [
            &self.y,
            &self.y_no_bias,
            &self.dx,
            &self.dw,
            &self.db,
            &self.dw_acc,
            &self.db_acc,
            &self.dw_acc_no_bias,
        ]
        .iter()
        .map(|v| v.iter().map(|f| f.to_bits()).collect())
        .collect()
    }
}
