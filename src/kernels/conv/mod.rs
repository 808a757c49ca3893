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
//!
//! # Caller-owned memory
//! Every pass also exists as `*_with_workspace`, taking its scratch memory (packed
//! weights, gathered inputs, per-chunk partial sums, per-worker copies) from a buffer
//! the caller owns: query [`Conv2d::workspace_len`] once per pass and thread count,
//! allocate it once, pass it to every call (see [`crate::kernels::scratch`] for how it
//! is carved up). The plain passes call the workspace forms on a buffer of that size
//! which the calling thread keeps between calls ([`crate::kernels::scratch::with_reused`]):
//! one implementation, the same bits, no allocation once warm.
//!
//! ```
//! use effnet::kernels::conv::{Conv2d, ConvDesc, ConvPass};
//! let conv = Conv2d::new(&ConvDesc::pointwise(2, (8, 8), 32, 48)).unwrap();
//! let s = *conv.shape();
//! let threads = rayon::current_num_threads();
//! let mut ws = vec![0.0f32; conv.workspace_len(ConvPass::Forward, threads)];
//! let (x, w) = (vec![0.5f32; s.x_len], vec![0.1f32; s.w_len]);
//! let mut y = vec![0.0f32; s.y_len];
//! conv.forward_with_workspace(&x, &w, None, &mut y, &mut ws).unwrap();
//! ```
//!
//! What the workspace path still allocates: small bookkeeping only, never anything
//! that grows with the tensors — task lists (`O(tasks)`), per-row tap lists
//! (`O(kh·kw)`), ring-slot tags and the pointwise product's `O(C / lanes)` column
//! panels. Everything tensor- or weight-sized (packed weights, padded input copies,
//! packed row rings, per-chunk weight-gradient partials) comes from the workspace; the
//! per-worker parts of it mean its size depends on the pool's thread count.

pub mod depthwise;
mod desc;
pub mod grouped;
pub mod pointwise;
pub mod reference;

pub use desc::{ConvDesc, ConvFamily, ConvShape, DType, Padding};

use crate::error::{Error, Result, check_len};
use crate::kernels::reduce::{column_sums_in, column_sums_scratch};
use crate::kernels::scratch;
use crate::simd::{self, SimdLevel};

/// Floats of the header of packed weights ([`Conv2d::pack_weights`]): one 64-byte line.
const PACK_HEADER: usize = 16;
/// First word of a packed-weights header ("EFNW").
const PACK_MAGIC: u32 = 0x4546_4e57;

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

/// One pass of a convolution (for the workspace query).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConvPass {
    /// [`Conv2d::forward`].
    Forward,
    /// [`Conv2d::backward_data`].
    BackwardData,
    /// [`Conv2d::backward_weight`] (with or without the bias gradient).
    BackwardWeight,
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

    /// Floats (`f32` elements, not bytes) of workspace `pass` needs when the call runs
    /// in a `rayon` pool of `threads` threads (`rayon::current_num_threads()` inside
    /// it; `0` means the current pool), at the active SIMD level
    /// ([`crate::simd::active`]; query again after changing it). A workspace sized for
    /// more threads also serves a smaller pool; for a larger pool it may be short.
    /// Depends on the shape, the pass, the level and the thread count only.
    pub fn workspace_len(&self, pass: ConvPass, threads: usize) -> usize {
        let threads = if threads == 0 {
            rayon::current_num_threads()
        } else {
            threads
        };
        let level = simd::active();
        match self.family {
            ConvFamily::Pointwise => pointwise::workspace_len(level, &self.shape, pass),
            ConvFamily::Depthwise => depthwise::workspace_len(level, &self.shape, pass, threads),
            ConvFamily::Grouped => grouped::workspace_len(level, &self.shape, pass, threads),
        }
    }

    /// Runs `f` with a workspace of exactly the length `pass` needs in the current
    /// pool, kept by the calling thread between calls ([`scratch::with_reused`]).
    fn allocating<R>(&self, pass: ConvPass, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
        scratch::with_reused(self.workspace_len(pass, 0), f)
    }

    /// `y = conv(x, w) (+ bias)`; `y` is overwritten. Allocates its workspace; see
    /// [`Conv2d::forward_with_workspace`].
    pub fn forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
        self.allocating(ConvPass::Forward, |ws| {
            self.forward_with_workspace(x, w, bias, y, ws)
        })
    }

    /// [`Conv2d::forward`] with its scratch in `ws`: at least
    /// [`Conv2d::workspace_len`]`(ConvPass::Forward, threads)` floats for the pool the
    /// call runs in, any contents (left unspecified). Errors: the buffer checks of the
    /// plain pass first, then [`crate::Error::BufferSize`] naming `"workspace"` if `ws`
    /// is short.
    pub fn forward_with_workspace(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let level = simd::active();
        match self.family {
            ConvFamily::Depthwise => {
                depthwise::forward_with_workspace(level, &self.shape, x, w, bias, y, ws)
            }
            ConvFamily::Pointwise => {
                pointwise::forward_with_workspace(level, &self.shape, x, w, bias, y, ws)
            }
            ConvFamily::Grouped => {
                grouped::forward_with_workspace(level, &self.shape, x, w, bias, y, ws)
            }
        }
    }

    /// Floats of the buffer [`Conv2d::pack_weights`] fills: a 16-float header (which
    /// plan and SIMD level the weights were packed for) and the forward weights in the
    /// layout the kernels read at the active level ([`crate::simd::active`]):
    /// pointwise, the GEMM's column panels; grouped, the per-group vector-padded
    /// layout (or the weight as it is for whole-vector groups such as G16 at
    /// AVX-512); depthwise, the weight as it is (each task packs the channel blocks it
    /// reads next to its row rings, which measured faster than a shared packed copy).
    pub fn packed_weights_len(&self) -> usize {
        let level = simd::active();
        PACK_HEADER
            + match self.family {
                ConvFamily::Pointwise => pointwise::forward_packed_len(level, &self.shape),
                ConvFamily::Depthwise => depthwise::forward_packed_len(level, &self.shape),
                ConvFamily::Grouped => grouped::forward_packed_len(level, &self.shape),
            }
    }

    /// Packs the weight `w` (`[kh][kw][group_size][C_out]`) once for
    /// [`Conv2d::forward_packed`] into `packed` (at least
    /// [`Conv2d::packed_weights_len`] floats; any contents): for inference, where the
    /// weights stay fixed across calls, this takes the per-call weight packing out of
    /// the forward pass. The packed form belongs to this plan's shape and the SIMD
    /// level active now, and to this build of the library: use it in this process only.
    ///
    /// Errors: [`crate::Error::BufferSize`] naming `"weight"` or `"packed weights"`.
    pub fn pack_weights(&self, w: &[f32], packed: &mut [f32]) -> Result<()> {
        check_len("weight", w.len(), self.shape.w_len)?;
        let need = self.packed_weights_len();
        if packed.len() < need {
            return Err(Error::BufferSize {
                name: "packed weights",
                expected: need,
                actual: packed.len(),
            });
        }
        let level = simd::active();
        let (head, body) = packed[..need].split_at_mut(PACK_HEADER);
        head.copy_from_slice(&self.pack_header(level));
        match self.family {
            ConvFamily::Pointwise => pointwise::pack_forward_weights(level, &self.shape, w, body),
            ConvFamily::Depthwise => depthwise::pack_forward_weights(level, &self.shape, w, body),
            ConvFamily::Grouped => grouped::pack_forward_weights(level, &self.shape, w, body),
        }
        Ok(())
    }

    /// [`Conv2d::forward_with_workspace`] on weights packed by
    /// [`Conv2d::pack_weights`]: the same bits as the forward pass on the original
    /// weights, without packing them again. `ws` is the forward workspace (at least
    /// [`Conv2d::workspace_len`]`(ConvPass::Forward, threads)` floats; the part for
    /// packed weights goes unused).
    ///
    /// Errors: the buffer checks of [`Conv2d::forward`] (`x`, `bias`, `y`);
    /// [`crate::Error::BufferSize`] naming `"packed weights"` if `packed` is short;
    /// [`crate::Error::InvalidArgument`] if `packed` was not packed for this plan's
    /// shape at the active SIMD level (or not packed at all); then the workspace
    /// checks.
    pub fn forward_packed(
        &self,
        x: &[f32],
        packed: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let s = &self.shape;
        check_len("x", x.len(), s.x_len)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), s.desc.out_channels)?;
        }
        check_len("y", y.len(), s.y_len)?;
        let need = self.packed_weights_len();
        if packed.len() < need {
            return Err(Error::BufferSize {
                name: "packed weights",
                expected: need,
                actual: packed.len(),
            });
        }
        let level = simd::active();
        let (head, body) = packed[..need].split_at(PACK_HEADER);
        if head
            .iter()
            .map(|v| v.to_bits())
            .ne(self.pack_header(level).iter().map(|v| v.to_bits()))
        {
            return Err(Error::InvalidArgument(format!(
                "the packed weights were not packed by pack_weights for this convolution                  at the {level} SIMD level; pack them again"
            )));
        }
        match self.family {
            ConvFamily::Pointwise => {
                // Needs no workspace: the product reads the packed weights directly.
                pointwise::forward_prepacked(level, s, x, body, bias, y);
                Ok(())
            }
            ConvFamily::Depthwise => depthwise::forward_prepacked(level, s, x, body, bias, y, ws),
            ConvFamily::Grouped => grouped::forward_prepacked(level, s, x, body, bias, y, ws),
        }
    }

    /// The header of weights packed for this plan at `level`: a magic number, the
    /// level, the family and a hash of the shape (as float bit patterns).
    fn pack_header(&self, level: SimdLevel) -> [f32; PACK_HEADER] {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.shape.hash(&mut h);
        simd::dispatch_lanes(level).hash(&mut h);
        let hash = h.finish();
        let mut out = [0u32; PACK_HEADER];
        out[0] = PACK_MAGIC;
        out[1] = level as u32;
        out[2] = self.family as u32;
        out[3] = hash as u32;
        out[4] = (hash >> 32) as u32;
        out.map(f32::from_bits)
    }

    /// `dx = convᵀ(dy, w)`, the gradient with respect to the input; `dx` is
    /// overwritten. Allocates its workspace; see
    /// [`Conv2d::backward_data_with_workspace`].
    pub fn backward_data(&self, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
        self.allocating(ConvPass::BackwardData, |ws| {
            self.backward_data_with_workspace(dy, w, dx, ws)
        })
    }

    /// [`Conv2d::backward_data`] with its scratch in `ws` (at least
    /// [`Conv2d::workspace_len`]`(ConvPass::BackwardData, threads)` floats; errors as
    /// [`Conv2d::forward_with_workspace`]).
    pub fn backward_data_with_workspace(
        &self,
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let level = simd::active();
        match self.family {
            ConvFamily::Depthwise => {
                depthwise::backward_data_with_workspace(level, &self.shape, dy, w, dx, ws)
            }
            ConvFamily::Pointwise => {
                pointwise::backward_data_with_workspace(level, &self.shape, dy, w, dx, ws)
            }
            ConvFamily::Grouped => {
                grouped::backward_data_with_workspace(level, &self.shape, dy, w, dx, ws)
            }
        }
    }

    /// The gradients with respect to the weight and (if `dbias` is given) the bias,
    /// overwritten or accumulated according to `mode`. Allocates its workspace; see
    /// [`Conv2d::backward_weight_with_workspace`].
    pub fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
    ) -> Result<()> {
        self.allocating(ConvPass::BackwardWeight, |ws| {
            self.backward_weight_with_workspace(x, dy, dw, dbias, mode, ws)
        })
    }

    /// [`Conv2d::backward_weight`] with its scratch in `ws` (at least
    /// [`Conv2d::workspace_len`]`(ConvPass::BackwardWeight, threads)` floats; errors as
    /// [`Conv2d::forward_with_workspace`]).
    pub fn backward_weight_with_workspace(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
        ws: &mut [f32],
    ) -> Result<()> {
        let level = simd::active();
        match self.family {
            ConvFamily::Depthwise => depthwise::backward_weight_with_workspace(
                level,
                &self.shape,
                x,
                dy,
                dw,
                dbias,
                mode,
                ws,
            ),
            ConvFamily::Pointwise => pointwise::backward_weight_with_workspace(
                level,
                &self.shape,
                x,
                dy,
                dw,
                dbias,
                mode,
                ws,
            ),
            ConvFamily::Grouped => grouped::backward_weight_with_workspace(
                level,
                &self.shape,
                x,
                dy,
                dw,
                dbias,
                mode,
                ws,
            ),
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
    let mut partials = vec![0.0f32; bias_grad_scratch(shape)];
    bias_grad_in(level, shape, dy, dbias, mode, &mut partials);
}

/// Floats of partial sums [`bias_grad_in`] needs (at most 64 × `C_out`).
pub fn bias_grad_scratch(shape: &ConvShape) -> usize {
    column_sums_scratch(shape.y_len, shape.desc.out_channels)
}

/// [`bias_grad`] with its partial sums in `partials` (at least
/// [`bias_grad_scratch`] floats, any contents).
pub fn bias_grad_in(
    level: SimdLevel,
    shape: &ConvShape,
    dy: &[f32],
    dbias: &mut [f32],
    mode: GradMode,
    partials: &mut [f32],
) {
    debug_assert_eq!(dy.len(), shape.y_len);
    column_sums_in(level, dy, dbias, mode.accumulate(), partials);
}
