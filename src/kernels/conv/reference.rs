//! Plain `f64` reference convolutions: slow, short and obviously right. The tests
//! compare every fast kernel with these; they are public so that other crates (and the
//! IPU model) can check against the same oracle.
//!
//! Layouts are those of [`ConvDesc`](super::ConvDesc). Inputs are `f32`, every sum is
//! accumulated in `f64` and the results are returned as `f64`.

use super::ConvShape;

/// Calls `f(n, oh, ow, g, co_in_group, tap)` with `tap = Some((ih, iw))` for every
/// in-range input pixel of every output element, in a fixed order.
fn for_each_tap(s: &ConvShape, mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize)) {
    let d = &s.desc;
    for n in 0..d.batch {
        for oh in 0..s.out_h {
            for ow in 0..s.out_w {
                for kh in 0..d.kernel_h {
                    let ih =
                        (oh * d.stride_h + kh * d.dilation_h) as isize - d.padding.top as isize;
                    if ih < 0 || ih >= d.in_h as isize {
                        continue;
                    }
                    for kw in 0..d.kernel_w {
                        let iw = (ow * d.stride_w + kw * d.dilation_w) as isize
                            - d.padding.left as isize;
                        if iw < 0 || iw >= d.in_w as isize {
                            continue;
                        }
                        f(n, oh, ow, kh, kw, ih as usize, iw as usize);
                    }
                }
            }
        }
    }
}

/// Index helpers shared by the three passes.
struct Idx<'a>(&'a ConvShape);
impl Idx<'_> {
    fn x(&self, n: usize, h: usize, w: usize, c: usize) -> usize {
        let d = &self.0.desc;
        ((n * d.in_h + h) * d.in_w + w) * d.in_channels + c
    }
    fn y(&self, n: usize, h: usize, w: usize, c: usize) -> usize {
        let s = self.0;
        ((n * s.out_h + h) * s.out_w + w) * s.desc.out_channels + c
    }
    fn w(&self, kh: usize, kw: usize, ci: usize, co: usize) -> usize {
        let d = &self.0.desc;
        ((kh * d.kernel_w + kw) * d.group_size + ci) * d.out_channels + co
    }
}

/// `y = conv(x, w) + bias`.
pub fn forward(s: &ConvShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
    let d = &s.desc;
    let ix = Idx(s);
    let mut y = vec![0.0f64; s.y_len];
    for_each_tap(s, |n, oh, ow, kh, kw, ih, iw| {
        for co in 0..d.out_channels {
            let g = co / s.cout_per_group;
            for ci in 0..d.group_size {
                y[ix.y(n, oh, ow, co)] += x[ix.x(n, ih, iw, g * d.group_size + ci)] as f64
                    * w[ix.w(kh, kw, ci, co)] as f64;
            }
        }
    });
    if let Some(b) = bias {
        for (i, v) in y.iter_mut().enumerate() {
            *v += b[i % d.out_channels] as f64;
        }
    }
    y
}

/// `dx = convᵀ(dy, w)`: the adjoint of [`forward`] in `x`.
pub fn backward_data(s: &ConvShape, dy: &[f32], w: &[f32]) -> Vec<f64> {
    let d = &s.desc;
    let ix = Idx(s);
    let mut dx = vec![0.0f64; s.x_len];
    for_each_tap(s, |n, oh, ow, kh, kw, ih, iw| {
        for co in 0..d.out_channels {
            let g = co / s.cout_per_group;
            for ci in 0..d.group_size {
                dx[ix.x(n, ih, iw, g * d.group_size + ci)] +=
                    dy[ix.y(n, oh, ow, co)] as f64 * w[ix.w(kh, kw, ci, co)] as f64;
            }
        }
    });
    dx
}

/// `(dw, dbias)`: the adjoint of [`forward`] in `w`, and `Σ dy` per output channel.
pub fn backward_weight(s: &ConvShape, x: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let d = &s.desc;
    let ix = Idx(s);
    let mut dw = vec![0.0f64; s.w_len];
    for_each_tap(s, |n, oh, ow, kh, kw, ih, iw| {
        for co in 0..d.out_channels {
            let g = co / s.cout_per_group;
            for ci in 0..d.group_size {
                dw[ix.w(kh, kw, ci, co)] += dy[ix.y(n, oh, ow, co)] as f64
                    * x[ix.x(n, ih, iw, g * d.group_size + ci)] as f64;
            }
        }
    });
    let mut db = vec![0.0f64; d.out_channels];
    for (i, v) in dy.iter().enumerate() {
        db[i % d.out_channels] += *v as f64;
    }
    (dw, db)
}
