//! Convolution test operands, every pass run through one entry point, and the f64
//! reference results to compare them with.

use super::Rng;
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvPass, ConvShape, GradMode, reference};
use effnet::simd;

/// Random operands of one convolution: input, weights, bias and output gradient.
pub struct ConvCase {
    pub shape: ConvShape,
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub dy: Vec<f32>,
}

/// Where the passes come from: the `Conv2d` plan's plain passes, or its workspace
/// passes (each call with a workspace of exactly `workspace_len` floats for the current
/// pool, filled with NaN so that reading stale contents shows). The plan must have been
/// made at the calling thread's active SIMD level (checked: a plan keeps the level it
/// was made at, so a test that caps the level after making the plan would test
/// another level than it says).
pub enum Passes<'a> {
    Plan(&'a Conv2d),
    Workspace(&'a Conv2d),
}

/// A workspace of exactly the length `pass` of `c` needs in the current pool, full of
/// NaN.
pub fn stale_workspace(c: &Conv2d, pass: ConvPass) -> Vec<f32> {
    vec![f32::NAN; c.workspace_len(pass, rayon::current_num_threads())]
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
    /// The gradients of the absolute operands (`Σ|x|·|dy|`, `Σ|dy|`; plus `|w|`,
    /// `|b|` for the accumulated ones): the scale of the rounding error of the
    /// gradient sums, which may cancel to almost nothing for few channels.
    pub dw_abs: Vec<f64>,
    pub db_abs: Vec<f64>,
    pub dw_acc_abs: Vec<f64>,
    pub db_acc_abs: Vec<f64>,
}

impl Passes<'_> {
    fn conv(&self) -> &Conv2d {
        let (Passes::Plan(c) | Passes::Workspace(c)) = self;
        assert_eq!(
            c.level(),
            simd::active(),
            "the plan was made at another SIMD level than the active one"
        );
        c
    }
    fn forward(&self, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
        self.conv();
        match self {
            Passes::Plan(c) => c.forward(x, w, b, y),
            Passes::Workspace(c) => {
                c.forward_with_workspace(x, w, b, y, &mut stale_workspace(c, ConvPass::Forward))
            }
        }
        .unwrap()
    }
    fn backward_data(&self, dy: &[f32], w: &[f32], dx: &mut [f32]) {
        self.conv();
        match self {
            Passes::Plan(c) => c.backward_data(dy, w, dx),
            Passes::Workspace(c) => {
                let mut ws = stale_workspace(c, ConvPass::BackwardData);
                c.backward_data_with_workspace(dy, w, dx, &mut ws)
            }
        }
        .unwrap()
    }
    fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: Option<&mut [f32]>,
        mode: GradMode,
    ) {
        self.conv();
        match self {
            Passes::Plan(c) => c.backward_weight(x, dy, dw, db, mode),
            Passes::Workspace(c) => {
                let mut ws = stale_workspace(c, ConvPass::BackwardWeight);
                c.backward_weight_with_workspace(x, dy, dw, db, mode, &mut ws)
            }
        }
        .unwrap()
    }
}

/// Named shapes that must work whatever proptest draws: the special cases of the
/// issue (stride 2 with odd inputs, TF-SAME, every fast group size, wide channels).
pub fn fixed_shapes() -> Vec<ConvDesc> {
    let mut v = vec![
        ConvDesc::depthwise(2, (9, 11), 40, 3, 2),
        ConvDesc::depthwise(1, (7, 7), 35, 5, 1),
        ConvDesc::depthwise(1, (13, 6), 19, 7, 2),
        ConvDesc::depthwise(3, (15, 15), 96, 5, 2).with_tf_same_padding(),
        ConvDesc::pointwise(2, (5, 7), 37, 29),
        ConvDesc::pointwise(1, (9, 9), 16, 48).with_stride(2),
        ConvDesc::new(2, (17, 15), 3, 32, (3, 3))
            .with_stride(2)
            .with_tf_same_padding(),
        ConvDesc::new(1, (6, 5), 8, 8, (3, 3))
            .with_dilation(2)
            .with_symmetric_padding(),
    ];
    for gs in [8, 16, 32] {
        v.push(
            ConvDesc::new(2, (9, 7), gs * 3, gs * 3, (3, 3))
                .with_group_size(gs)
                .with_stride(2)
                .with_symmetric_padding(),
        );
        v.push(
            ConvDesc::new(1, (6, 6), gs * 2, gs * 4, (5, 5))
                .with_group_size(gs)
                .with_tf_same_padding(),
        );
    }
    v
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
        p.forward(&self.x, &self.w, Some(&self.b), &mut y);
        let mut y_no_bias = nan(s.y_len);
        p.forward(&self.x, &self.w, None, &mut y_no_bias);
        let mut dx = nan(s.x_len);
        p.backward_data(&self.dy, &self.w, &mut dx);
        let mut dw = nan(s.w_len);
        let mut db = nan(self.b.len());
        p.backward_weight(
            &self.x,
            &self.dy,
            &mut dw,
            Some(&mut db),
            GradMode::Overwrite,
        );
        let mut dw_acc = self.w.clone();
        let mut db_acc = self.b.clone();
        let acc = GradMode::Accumulate;
        p.backward_weight(&self.x, &self.dy, &mut dw_acc, Some(&mut db_acc), acc);
        let mut dw_acc_no_bias = self.w.clone();
        p.backward_weight(&self.x, &self.dy, &mut dw_acc_no_bias, None, acc);
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
        let abs = |v: &[f32]| -> Vec<f32> { v.iter().map(|a| a.abs()).collect() };
        let (dw_abs, db_abs) = reference::backward_weight(s, &abs(&self.x), &abs(&self.dy));
        ConvRefs {
            dw_acc_abs: plus(&dw_abs, &abs(&self.w)),
            db_acc_abs: plus(&db_abs, &abs(&self.b)),
            dw_abs,
            db_abs,
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
    /// `(name, err(got, want))` for every output, with the error measure given for
    /// the forward and backward-data results; the weight and bias gradients (sums
    /// over every pixel that may cancel to almost nothing) are measured as
    /// `‖got − want‖₂ / ‖Σ|terms|‖₂`, the scale of their rounding error.
    pub fn errors(&self, r: &ConvRefs, err: fn(&[f32], &[f64]) -> f64) -> Vec<(&'static str, f64)> {
        let sum_err = |got: &[f32], want: &[f64], scale: &[f64]| {
            super::abs_err(got, want) / super::norm2(scale).max(f64::MIN_POSITIVE)
        };
        vec![
            ("forward", err(&self.y, &r.y)),
            ("forward without bias", err(&self.y_no_bias, &r.y_no_bias)),
            ("backward_data", err(&self.dx, &r.dx)),
            ("backward_weight", sum_err(&self.dw, &r.dw, &r.dw_abs)),
            ("bias gradient", sum_err(&self.db, &r.db, &r.db_abs)),
            (
                "accumulated weight gradient",
                sum_err(&self.dw_acc, &r.dw_acc, &r.dw_acc_abs),
            ),
            (
                "accumulated bias gradient",
                sum_err(&self.db_acc, &r.db_acc, &r.db_acc_abs),
            ),
            (
                "accumulated without bias",
                sum_err(&self.dw_acc_no_bias, &r.dw_acc, &r.dw_acc_abs),
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
