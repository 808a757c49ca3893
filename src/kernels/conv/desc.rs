//! Convolution descriptors: described once, validated once.

use crate::error::{Error, Result, check_len, checked_product};

/// Element type of a tensor in memory. Compute is always `f32`; `F16` and `BF16` are
/// storage types converted in blocks at the edges of a kernel.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision (the only type the convolution kernels take today).
    #[default]
    F32,
    /// IEEE half precision, storage only.
    F16,
    /// bfloat16, storage only.
    BF16,
}

/// Explicit four-sided zero padding, in input pixels.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Padding {
    /// Rows of zeros above the input.
    pub top: usize,
    /// Rows of zeros below the input.
    pub bottom: usize,
    /// Columns of zeros left of the input.
    pub left: usize,
    /// Columns of zeros right of the input.
    pub right: usize,
}

impl Padding {
    /// No padding ("VALID").
    pub const ZERO: Padding = Padding {
        top: 0,
        bottom: 0,
        left: 0,
        right: 0,
    };

    /// The same padding `p` on all four sides (PyTorch's `padding=p`).
    pub fn symmetric(p: usize) -> Padding {
        Padding {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    /// PyTorch's "same-looking" symmetric padding for a `kernel`-sized window with
    /// `dilation`: `dilation·(kernel−1)/2` on every side (timm's `efficientnet_*`).
    pub fn symmetric_for(kernel_h: usize, kernel_w: usize, dilation: usize) -> Padding {
        let ph = dilation * kernel_h.saturating_sub(1) / 2;
        let pw = dilation * kernel_w.saturating_sub(1) / 2;
        Padding {
            top: ph,
            bottom: ph,
            left: pw,
            right: pw,
        }
    }

    /// TensorFlow `SAME` padding: the output has `ceil(in / stride)` pixels per axis and
    /// the odd pixel of padding, if any, goes bottom/right (timm's `tf_efficientnet_*`).
    pub fn tf_same(
        (in_h, in_w): (usize, usize),
        (kernel_h, kernel_w): (usize, usize),
        (stride_h, stride_w): (usize, usize),
        dilation: usize,
    ) -> Padding {
        fn axis(input: usize, k: usize, s: usize, d: usize) -> (usize, usize) {
            let s = s.max(1);
            let out = input.div_ceil(s);
            let span = d * k.saturating_sub(1) + 1;
            let total = ((out.saturating_sub(1)) * s + span).saturating_sub(input);
            (total / 2, total - total / 2)
        }
        let (top, bottom) = axis(in_h, kernel_h, stride_h, dilation);
        let (left, right) = axis(in_w, kernel_w, stride_w, dilation);
        Padding {
            top,
            bottom,
            left,
            right,
        }
    }
}

/// The largest kernel side, stride and dilation a convolution takes (the plans keep
/// tables per kernel column and per stride residue class; EfficientNet's kernels are
/// 1–7, its strides 1–2).
pub const MAX_KERNEL: usize = 1024;

/// A 2-D convolution over NHWC activations, grouped in the general case.
///
/// Layouts (row-major, last index fastest):
/// - input `x`: `[batch][in_h][in_w][in_channels]`
/// - output `y`: `[batch][out_h][out_w][out_channels]`
/// - weight `w`: `[kernel_h][kernel_w][group_size][out_channels]` — "HWIO" with the
///   input axis running over the `group_size` input channels of the output channel's
///   group. Output channel `co` belongs to group `co / (out_channels / groups)` and
///   reads input channels `group·group_size .. (group+1)·group_size`. For depthwise
///   (`group_size == 1`) this is `[kh][kw][C]`; for pointwise `[C_in][C_out]`.
///   PyTorch's OIHW weight `W[co][ci][kh][kw]` maps to `w[kh][kw][ci][co]`.
/// - bias: `[out_channels]`
///
/// Semantics (per group `g`, `cig = group_size`, `cog = out_channels / groups`):
/// `y[n,oh,ow,g·cog+co] = Σ_{kh,kw,ci} x[n, oh·sh+kh·dh−top, ow·sw+kw·dw−left, g·cig+ci]
/// · w[kh][kw][ci][g·cog+co] (+ bias)`, taps outside the input read zero.
///
/// ```
/// use effnet::kernels::conv::{ConvDesc, Padding};
/// // The G16 3×3 stride-2 layer of B0-G16 at 112×112, batch 8.
/// let d = ConvDesc::new(8, (112, 112), 64, 64, (3, 3))
///     .with_group_size(16)
///     .with_stride(2)
///     .with_padding(Padding::symmetric(1));
/// let shape = d.validate().unwrap();
/// assert_eq!((shape.out_h, shape.out_w, shape.groups), (56, 56, 4));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvDesc {
    /// Images in the batch (N).
    pub batch: usize,
    /// Input height (H).
    pub in_h: usize,
    /// Input width (W).
    pub in_w: usize,
    /// Input channels (C_in).
    pub in_channels: usize,
    /// Output channels (C_out).
    pub out_channels: usize,
    /// Input channels per group: `in_channels` for a dense convolution, 1 for
    /// depthwise, 16 for G16. Must divide `in_channels`; the number of groups
    /// `in_channels / group_size` must divide `out_channels`.
    pub group_size: usize,
    /// Kernel height (at most [`MAX_KERNEL`]).
    pub kernel_h: usize,
    /// Kernel width (at most [`MAX_KERNEL`]).
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Vertical dilation (1 = none).
    pub dilation_h: usize,
    /// Horizontal dilation (1 = none).
    pub dilation_w: usize,
    /// Four-sided zero padding.
    pub padding: Padding,
    /// Storage type of `x`, `w` and `y`.
    pub dtype: DType,
}

impl ConvDesc {
    /// A dense convolution, stride 1, no dilation, no padding, `f32`.
    pub fn new(
        batch: usize,
        (in_h, in_w): (usize, usize),
        in_channels: usize,
        out_channels: usize,
        (kernel_h, kernel_w): (usize, usize),
    ) -> ConvDesc {
        ConvDesc {
            batch,
            in_h,
            in_w,
            in_channels,
            out_channels,
            group_size: in_channels,
            kernel_h,
            kernel_w,
            stride_h: 1,
            stride_w: 1,
            dilation_h: 1,
            dilation_w: 1,
            padding: Padding::ZERO,
            dtype: DType::F32,
        }
    }

    /// A depthwise convolution (`channels` in and out, one channel per group),
    /// `kernel`×`kernel`, with PyTorch-symmetric padding `kernel/2`.
    pub fn depthwise(
        batch: usize,
        (in_h, in_w): (usize, usize),
        channels: usize,
        kernel: usize,
        stride: usize,
    ) -> ConvDesc {
        ConvDesc::new(batch, (in_h, in_w), channels, channels, (kernel, kernel))
            .with_group_size(1)
            .with_stride(stride)
            .with_padding(Padding::symmetric_for(kernel, kernel, 1))
    }

    /// A 1×1 convolution (a matrix product over `batch·in_h·in_w` rows).
    pub fn pointwise(
        batch: usize,
        (in_h, in_w): (usize, usize),
        in_channels: usize,
        out_channels: usize,
    ) -> ConvDesc {
        ConvDesc::new(batch, (in_h, in_w), in_channels, out_channels, (1, 1))
    }

    /// Sets input channels per group.
    pub fn with_group_size(mut self, group_size: usize) -> Self {
        self.group_size = group_size;
        self
    }
    /// Sets the number of groups (`group_size = in_channels / groups`; a `groups` that
    /// does not divide `in_channels` is reported by [`ConvDesc::validate`]).
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.group_size = if groups == 0 || !self.in_channels.is_multiple_of(groups) {
            0
        } else {
            self.in_channels / groups
        };
        self
    }
    /// Sets the same stride on both axes.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride_h = stride;
        self.stride_w = stride;
        self
    }
    /// Sets the same dilation on both axes.
    pub fn with_dilation(mut self, dilation: usize) -> Self {
        self.dilation_h = dilation;
        self.dilation_w = dilation;
        self
    }
    /// Sets explicit padding.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }
    /// PyTorch-symmetric padding `dilation·(kernel−1)/2` on every side.
    pub fn with_symmetric_padding(mut self) -> Self {
        let p = Padding::symmetric_for(self.kernel_h, 1, self.dilation_h);
        let q = Padding::symmetric_for(1, self.kernel_w, self.dilation_w);
        self.padding = Padding {
            top: p.top,
            bottom: p.bottom,
            left: q.left,
            right: q.right,
        };
        self
    }
    /// TensorFlow `SAME` padding for the current input size, kernel, stride and dilation
    /// (dilation must be equal on both axes).
    pub fn with_tf_same_padding(mut self) -> Self {
        self.padding = Padding::tf_same(
            (self.in_h, self.in_w),
            (self.kernel_h, self.kernel_w),
            (self.stride_h, self.stride_w),
            self.dilation_h,
        );
        self
    }
    /// Sets the storage type.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Checks every rule and computes the output size and buffer lengths.
    ///
    /// Errors: any zero size, stride or dilation; a kernel side, stride or dilation over
    /// [`MAX_KERNEL`];
    /// `group_size` not dividing
    /// `in_channels`; groups not dividing `out_channels`; a (dilated) kernel larger than
    /// the padded input; padding of a full kernel span or more on one side (every tap of
    /// an edge output would read padding); buffer sizes that overflow.
    pub fn validate(&self) -> Result<ConvShape> {
        let d = self;
        let bad = |m: String| Err(Error::InvalidDescriptor(m));
        for (name, v) in [
            ("batch", d.batch),
            ("in_h", d.in_h),
            ("in_w", d.in_w),
            ("in_channels", d.in_channels),
            ("out_channels", d.out_channels),
            ("group_size", d.group_size),
            ("kernel_h", d.kernel_h),
            ("kernel_w", d.kernel_w),
            ("stride_h", d.stride_h),
            ("stride_w", d.stride_w),
            ("dilation_h", d.dilation_h),
            ("dilation_w", d.dilation_w),
        ] {
            if v == 0 {
                return bad(format!("{name} is zero"));
            }
        }
        for (name, v) in [
            ("kernel_h", d.kernel_h),
            ("kernel_w", d.kernel_w),
            ("stride_h", d.stride_h),
            ("stride_w", d.stride_w),
            ("dilation_h", d.dilation_h),
            ("dilation_w", d.dilation_w),
        ] {
            if v > MAX_KERNEL {
                return bad(format!("{name} = {v} is over the largest, {MAX_KERNEL}"));
            }
        }
        if !d.in_channels.is_multiple_of(d.group_size) {
            return bad(format!(
                "group_size {} does not divide in_channels {}",
                d.group_size, d.in_channels
            ));
        }
        let groups = d.in_channels / d.group_size;
        if !d.out_channels.is_multiple_of(groups) {
            return bad(format!(
                "{groups} groups do not divide out_channels {}",
                d.out_channels
            ));
        }
        let span = |k: usize, dil: usize, name: &str| {
            (k - 1)
                .checked_mul(dil)
                .and_then(|v| v.checked_add(1))
                .ok_or_else(|| Error::Overflow(format!("dilated {name} span")))
        };
        let span_h = span(d.kernel_h, d.dilation_h, "kernel_h")?;
        let span_w = span(d.kernel_w, d.dilation_w, "kernel_w")?;
        let p = d.padding;
        for (name, v, sp) in [
            ("top", p.top, span_h),
            ("bottom", p.bottom, span_h),
            ("left", p.left, span_w),
            ("right", p.right, span_w),
        ] {
            if v >= sp {
                return bad(format!(
                    "padding {name} = {v} is not smaller than the kernel span {sp}"
                ));
            }
        }
        let padded_h = d.in_h + p.top + p.bottom;
        let padded_w = d.in_w + p.left + p.right;
        if span_h > padded_h || span_w > padded_w {
            return bad(format!(
                "kernel span {span_h}×{span_w} is larger than the padded input {padded_h}×{padded_w}"
            ));
        }
        let out_h = (padded_h - span_h) / d.stride_h + 1;
        let out_w = (padded_w - span_w) / d.stride_w + 1;
        if d.dtype != DType::F32 {
            return Err(Error::Unsupported(format!(
                "convolution storage type {:?} (only F32 today)",
                d.dtype
            )));
        }
        let x_len = checked_product("input", &[d.batch, d.in_h, d.in_w, d.in_channels])?;
        let y_len = checked_product("output", &[d.batch, out_h, out_w, d.out_channels])?;
        let w_len = checked_product(
            "weight",
            &[d.kernel_h, d.kernel_w, d.group_size, d.out_channels],
        )?;
        Ok(ConvShape {
            desc: *d,
            out_h,
            out_w,
            groups,
            cout_per_group: d.out_channels / groups,
            x_len,
            y_len,
            w_len,
        })
    }
}

/// A validated [`ConvDesc`] with its derived sizes; only [`ConvDesc::validate`] makes
/// one, so every kernel can trust it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConvShape {
    /// The descriptor this was validated from.
    pub desc: ConvDesc,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Number of groups (`in_channels / group_size`).
    pub groups: usize,
    /// Output channels per group.
    pub cout_per_group: usize,
    /// Elements of `x`.
    pub x_len: usize,
    /// Elements of `y`.
    pub y_len: usize,
    /// Elements of the weight.
    pub w_len: usize,
}

/// The kernel family a convolution runs on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConvFamily {
    /// One input channel per group and as many outputs as inputs.
    Depthwise,
    /// 1×1, one group, no padding: a matrix product (any stride).
    Pointwise,
    /// Everything else: grouped (any group size, with fast paths for 8/16/32) and dense
    /// k×k (the 3-channel stem).
    Grouped,
}

impl ConvShape {
    /// Which family of kernels serves this shape: depthwise, else pointwise, else
    /// grouped — the first that [`supports`](Self::supports) it.
    pub fn family(&self) -> ConvFamily {
        [ConvFamily::Depthwise, ConvFamily::Pointwise]
            .into_iter()
            .find(|&f| self.supports(f))
            .unwrap_or(ConvFamily::Grouped)
    }

    /// Whether `family`'s kernels can run this shape: the grouped kernels run every
    /// valid shape; the depthwise ones one channel per group with as many outputs as
    /// inputs; the pointwise ones a 1×1 kernel over all channels (one group) without
    /// padding.
    pub fn supports(&self, family: ConvFamily) -> bool {
        let d = &self.desc;
        match family {
            ConvFamily::Grouped => true,
            ConvFamily::Depthwise => d.group_size == 1 && d.out_channels == d.in_channels,
            ConvFamily::Pointwise => {
                d.kernel_h == 1 && d.kernel_w == 1 && self.groups == 1 && d.padding == Padding::ZERO
            }
        }
    }

    /// Useful floating-point operations of one forward pass (2 per multiply-add).
    pub fn flops(&self) -> f64 {
        let d = &self.desc;
        2.0 * self.y_len as f64 * (d.group_size * d.kernel_h * d.kernel_w) as f64
    }

    /// Checks the buffers of a forward pass.
    pub fn check_forward(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &[f32],
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("weight", w.len(), self.w_len)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), self.desc.out_channels)?;
        }
        check_len("y", y.len(), self.y_len)
    }

    /// Checks the buffers of a backward-data pass.
    pub fn check_backward_data(&self, dy: &[f32], w: &[f32], dx: &[f32]) -> Result<()> {
        check_len("dy", dy.len(), self.y_len)?;
        check_len("weight", w.len(), self.w_len)?;
        check_len("dx", dx.len(), self.x_len)
    }

    /// Checks the buffers of a backward-weight pass.
    pub fn check_backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &[f32],
        dbias: Option<&[f32]>,
    ) -> Result<()> {
        check_len("x", x.len(), self.x_len)?;
        check_len("dy", dy.len(), self.y_len)?;
        check_len("dweight", dw.len(), self.w_len)?;
        if let Some(b) = dbias {
            check_len("dbias", b.len(), self.desc.out_channels)?;
        }
        Ok(())
    }
}
