//! Fully-connected layers: the two 1×1 convolutions of squeeze-and-excite (on pooled
//! `[N][C]` features) and the classifier of the head.
//!
//! Layouts (row-major): input `x` is `[rows][in]`, weight `w` is `[in][out]` (the
//! layout of a 1×1 convolution's `[1][1][C_in][C_out]` weight), bias `b` is `[out]`,
//! output `y` is `[rows][out]`:
//!
//! `y = x·W + b`, `dx = dy·Wᵀ`, `dW = xᵀ·dy`, `db = Σ_rows dy`.
//!
//! A PyTorch `nn.Linear` weight is `[out][in]`: transpose it at import.
//!
//! All three passes run on the crate's register-tiled GEMM (the one behind the
//! pointwise convolutions). Each output element is accumulated by one task in a fixed
//! order, so results are bitwise identical for any thread count.
//!
//! ```
//! use effnet::kernels::fully_connected::FullyConnected;
//! use effnet::kernels::conv::GradMode;
//! let fc = FullyConnected::new(2, 3, 2).unwrap();
//! let x = [1.0f32, 2.0, 3.0, 0.0, 1.0, 0.0];
//! let w = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]; // [3][2]
//! let b = [0.5f32, -0.5];
//! let mut y = [0.0f32; 4];
//! fc.forward(&x, &w, Some(&b), &mut y).unwrap();
//! assert_eq!(y, [4.5, 4.5, 0.5, 0.5]);
//! let mut dx = [0.0f32; 6];
//! fc.backward_data(&y, &w, &mut dx).unwrap();
//! let (mut dw, mut db) = ([0.0f32; 6], [0.0f32; 2]);
//! fc.backward_weight(&x, &y, &mut dw, Some(&mut db), GradMode::Overwrite).unwrap();
//! assert_eq!(db, [5.0, 5.0]);
//! ```

use super::conv::GradMode;
use super::gemm::{BOperand, Gemm, PackedB, Post, RowMap};
use super::reduce::column_sums;
use crate::error::{Error, Result, check_len, checked_product};
use crate::simd;

/// A validated fully-connected layer: `rows` input vectors of `in_features` to
/// `out_features`. Buffer layouts are in the [module docs](self).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FullyConnected {
    rows: usize,
    inp: usize,
    out: usize,
}

impl FullyConnected {
    /// Validates the sizes: `rows` (the batch, or `N·H·W` for a 1×1 convolution),
    /// `in_features`, `out_features`.
    ///
    /// # Errors
    /// [`Error::InvalidDescriptor`] for a zero size, [`Error::Overflow`] if a buffer
    /// would not fit in memory.
    pub fn new(rows: usize, in_features: usize, out_features: usize) -> Result<Self> {
        for (name, v) in [
            ("rows", rows),
            ("in_features", in_features),
            ("out_features", out_features),
        ] {
            if v == 0 {
                return Err(Error::InvalidDescriptor(format!(
                    "fully connected: {name} must be at least 1"
                )));
            }
        }
        checked_product("fully connected input", &[rows, in_features])?;
        checked_product("fully connected output", &[rows, out_features])?;
        checked_product("fully connected weight", &[in_features, out_features])?;
        Ok(FullyConnected {
            rows,
            inp: in_features,
            out: out_features,
        })
    }

    /// Rows (input vectors).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.inp
    }
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.out
    }
    /// Elements of `x` / `dx`: `rows·in`.
    pub fn x_len(&self) -> usize {
        self.rows * self.inp
    }
    /// Elements of `y` / `dy`: `rows·out`.
    pub fn y_len(&self) -> usize {
        self.rows * self.out
    }
    /// Elements of `w` / `dw`: `in·out`.
    pub fn w_len(&self) -> usize {
        self.inp * self.out
    }

    /// `y = x·W (+ b)`; `y` (`[rows][out]`) is overwritten.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if a buffer has the wrong length.
    pub fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("weight", w.len(), self.w_len())?;
        if let Some(b) = bias {
            check_len("bias", b.len(), self.out)?;
        }
        check_len("y", y.len(), self.y_len())?;
        let level = simd::active();
        Gemm {
            m: self.rows,
            n: self.out,
            k: self.inp,
            a: x,
            a_rows: RowMap::uniform(self.inp),
            a_cs: 1,
            b: BOperand::Rows {
                data: w,
                rs: self.out,
            },
            c_rows: RowMap::uniform(self.out),
            bias,
            accumulate: false,
            post: Post::NONE,
        }
        .run(level, y);
        Ok(())
    }

    /// `dx = dy·Wᵀ`; `dx` (`[rows][in]`) is overwritten.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if a buffer has the wrong length.
    pub fn backward_data(&self, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
        check_len("dy", dy.len(), self.y_len())?;
        check_len("weight", w.len(), self.w_len())?;
        check_len("dx", dx.len(), self.x_len())?;
        let level = simd::active();
        // B = Wᵀ (`out × in`), packed once: element (q, j) is w[j·out + q].
        let wt = PackedB::new(level, self.out, self.inp, w, 1, self.out);
        Gemm {
            m: self.rows,
            n: self.inp,
            k: self.out,
            a: dy,
            a_rows: RowMap::uniform(self.out),
            a_cs: 1,
            b: BOperand::Packed(&wt),
            c_rows: RowMap::uniform(self.inp),
            bias: None,
            accumulate: false,
            post: Post::NONE,
        }
        .run(level, dx);
        Ok(())
    }

    /// `dW (+)= xᵀ·dy` (`[in][out]`) and, if given, `db (+)= Σ_rows dy` (`[out]`),
    /// overwritten or accumulated according to `mode`.
    ///
    /// # Errors
    /// [`Error::BufferSize`] if a buffer has the wrong length.
    pub fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len())?;
        check_len("dy", dy.len(), self.y_len())?;
        check_len("dweight", dw.len(), self.w_len())?;
        if let Some(db) = &dbias {
            check_len("dbias", db.len(), self.out)?;
        }
        let level = simd::active();
        // dW = xᵀ·dy: A(i, p) = x[p·in + i], B = dy read in place.
        Gemm {
            m: self.inp,
            n: self.out,
            k: self.rows,
            a: x,
            a_rows: RowMap::uniform(1),
            a_cs: self.inp,
            b: BOperand::Rows {
                data: dy,
                rs: self.out,
            },
            c_rows: RowMap::uniform(self.out),
            bias: None,
            accumulate: mode.accumulate(),
            post: Post::NONE,
        }
        .run(level, dw);
        if let Some(db) = dbias {
            column_sums(level, dy, db, mode.accumulate());
        }
        Ok(())
    }
}
