//! Convolutions over NHWC tensors: depthwise, grouped (and dense k×k), pointwise.
//!
//! Describe a convolution once with [`ConvDesc`] and plan it once with [`Conv2d`]: the
//! plan validates the descriptor into a [`ConvShape`], picks the kernel family
//! ([`ConvFamily`]; how each works is told in [`depthwise`], [`grouped`] and
//! [`pointwise`]), reads the SIMD level ([`crate::simd::active`], or
//! [`Conv2d::with_level`]) and plans every pass: the task split, the tile parameters
//! and the microkernels of that level. The passes then reuse it.
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
mod pre;
pub mod reference;
mod stats;

pub use desc::{ConvDesc, ConvFamily, ConvShape, DType, MAX_KERNEL, Padding};
pub use pre::{PreArgs, PreOps};
pub use stats::ChannelStats;
use std::cell::Cell;

thread_local! {
    static SLIDING: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether grouped plans made now on this thread use the AVX-512 sliding-window rows
/// (forward: G16 3×3 and 5×5, the 3 → 32 stem; backward-data: G16 at stride 1) where
/// they apply, instead of the general tiles: by default where the CPU runs 512-bit
/// operations at full width ([`avx512_full_width`](crate::simd::avx512_full_width)).
/// On AMD Zen 4, whose AVX-512 is two 256-bit halves, the general tiles are faster
/// (G16 5×5 forward 2.3×, backward-data 2×, the stem 1.6×, measured; see
/// BENCHMARKS.md); on the Intel Xeon the sliding rows were written on, the sliding
/// rows are. Either gives the same sums to rounding (each output's terms are added in
/// another order). The depthwise sliding rows run on every CPU (on Zen 4 their 5×5
/// rows measured no slower inside the network than the tap lists).
pub fn sliding_tiles() -> bool {
    SLIDING
        .with(Cell::get)
        .unwrap_or_else(crate::simd::avx512_full_width)
}

/// Runs `f` with [`sliding_tiles`] forced to `on` for the plans made inside it on
/// this thread (a plan keeps its choice; for tests and tuning).
pub fn with_sliding_tiles<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SLIDING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SLIDING.with(|c| c.replace(Some(on))));
    f()
}

use crate::error::{Error, Result, check_len};
use crate::kernels::activation::Activation;
use crate::kernels::gemm::Post;
use crate::kernels::reduce::{RowStats, column_sums_in, column_sums_scratch};
use crate::kernels::scratch::{self, Workspace, WorkspaceLayout};
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

/// The forward weights as a family plan reads them: the weight as the caller gave it
/// (`[kh][kw][group_size][C_out]`; the plan packs it into the workspace if its
/// kernels need another layout), or already packed by [`Conv2d::pack_weights`] (the
/// body after the header).
#[derive(Copy, Clone)]
pub(crate) enum ForwardWeights<'a> {
    Plain(&'a [f32]),
    Packed(&'a [f32]),
}

/// The forward pass's epilogue, part of a convolution plan ([`Conv2d::with_post_ops`]):
/// each output element is `y = φ(s[c] · (Σ + bias)) (+ r)`, applied while the output
/// tile is in registers — no separate pass over `y`. `s` is an optional per-output-
/// channel scale (`[C_out]`, given to [`Conv2d::forward_post`] with each call: a
/// batch norm's folded scale, a dequantization scale; applied after the bias, as a
/// per-channel multiply post-op is in oneDNN's chain), `r` a residual laid out as `y`
/// (`[N][OH][OW][C_out]`), given to [`Conv2d::forward_fused`] or
/// [`Conv2d::forward_post`].
///
/// The pass can also gather per-image channel statistics of the finished `y`
/// ([`ChannelStats`]: the squeeze of a squeeze-excite, a norm's sums), each task from
/// the rows it has just written, while they are in its cache; they are returned
/// through [`PostArgs`]. Every family records them task by task (the pointwise
/// family's product tasks then cover whole image rows). The statistics are the same
/// bits for any thread count.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PostOps {
    /// Whether each output channel `c` is multiplied by `s[c]` ([`PostArgs::scale`])
    /// after the bias and before the activation.
    pub scale: bool,
    /// `φ`, applied after the bias and the scale ([`PostOps::NONE`]: the identity).
    pub activation: Activation,
    /// Whether a residual is added after the activation.
    pub residual: bool,
    /// The statistics of `y` gathered per image and output channel.
    pub stats: ChannelStats,
}

impl PostOps {
    /// No epilogue: `y = conv(x, w) + bias`.
    pub const NONE: PostOps = PostOps {
        scale: false,
        activation: Activation::Identity,
        residual: false,
        stats: ChannelStats::None,
    };
}

/// Checks one operand of a plan's epilogue: given (`Some((name, len, expected))`)
/// exactly when the plan uses it (`wanted`), and then of its expected length.
fn epilogue_operand(
    given: Option<(&'static str, usize, usize)>,
    wanted: bool,
    unexpected: &str,
    missing: &str,
) -> Result<()> {
    match (given, wanted) {
        (Some((name, len, expected)), true) => check_len(name, len, expected),
        (None, false) => Ok(()),
        (Some(_), false) => Err(Error::InvalidArgument(unexpected.into())),
        (None, true) => Err(Error::InvalidArgument(missing.into())),
    }
}

impl Default for PostOps {
    /// [`PostOps::NONE`].
    fn default() -> Self {
        PostOps::NONE
    }
}

/// The operands of a plan's epilogue for [`Conv2d::forward_post`]: each is `Some`
/// exactly when the plan's [`PostOps`] ask for it.
#[derive(Debug, Default)]
pub struct PostArgs<'a> {
    /// `[C_out]`: the per-output-channel scale (when [`PostOps::scale`]).
    pub scale: Option<&'a [f32]>,
    /// The residual added after the activation, laid out as `y`.
    pub residual: Option<&'a [f32]>,
    /// `[N][C_out]`, overwritten: `Σ_{oh, ow} y[n][oh][ow][c]` (when
    /// [`PostOps::stats`] is not [`ChannelStats::None`]).
    pub sums: Option<&'a mut [f64]>,
    /// `[N][C_out]`, overwritten: `Σ_{oh, ow} y[n][oh][ow][c]²` (for
    /// [`ChannelStats::SumsAndSquares`]).
    pub squares: Option<&'a mut [f64]>,
    /// The operands of the plan's prologue ([`Conv2d::with_pre_ops`]): `Some` exactly
    /// when the plan has one.
    pub pre: Option<PreArgs<'a>>,
}

/// The weight operand of [`Conv2d::forward_fused`].
#[derive(Copy, Clone, Debug)]
pub enum ConvWeights<'a> {
    /// `[kh][kw][group_size][C_out]`, as given.
    Plain(&'a [f32]),
    /// Packed by [`Conv2d::pack_weights`] for this plan.
    Packed(&'a [f32]),
}

/// The three passes of one kernel family, planned for one shape and SIMD level (task
/// split, tile parameters and microkernel table chosen when the plan is made).
/// Buffers arrive checked ([`ConvShape::check_forward`] and friends) and the workspace
/// checked against [`FamilyPlan::layout`] for the calling pool.
pub(crate) trait FamilyPlan: Send + Sync + std::fmt::Debug {
    /// The regions a pass takes from its workspace, in order, in a pool of `threads`
    /// threads.
    fn layout(&self, pass: ConvPass, threads: usize) -> WorkspaceLayout;
    /// Floats of the forward weights in the layout the forward kernels read.
    fn packed_len(&self) -> usize;
    /// Writes `w` in that layout into `out` (at least [`FamilyPlan::packed_len`]).
    fn pack(&self, w: &[f32], out: &mut [f32]);
    /// Writes into `out` the packed weights `packed` (that layout) with every input
    /// channel's weights scaled by `scale[ci]`, bit for bit the packing of the scaled
    /// weights; `false` (nothing written) for a family that does not offer it.
    fn scale_packed_inputs(&self, _packed: &[f32], _scale: &[f32], _out: &mut [f32]) -> bool {
        false
    }
    /// Prepares the forward pass for a prologue ([`PreOps`]): the kernels then bring
    /// every input element into their own buffers, where it is transformed (the
    /// workspace layout may grow).
    fn stage_input(&mut self);
    /// `y = φ(conv(x', w) (+ bias)) (+ residual)` with the epilogue `post` and the
    /// prologue `pre` giving `x'` from `x` (checked; `pre` only on a plan prepared by
    /// [`FamilyPlan::stage_input`]).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &[f32],
        pre: Option<pre::Pre<'_>>,
        w: ForwardWeights<'_>,
        bias: Option<&[f32]>,
        post: Post<'_>,
        y: &mut [f32],
        ws: &mut Workspace<'_>,
    ) -> Result<()>;
    /// `dx = convᵀ(dy, w)`.
    fn backward_data(
        &self,
        dy: &[f32],
        w: &[f32],
        dx: &mut [f32],
        ws: &mut Workspace<'_>,
    ) -> Result<()>;
    /// The weight (and bias) gradient, overwritten or accumulated.
    #[allow(clippy::too_many_arguments)]
    fn backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        mode: GradMode,
        ws: &mut Workspace<'_>,
    ) -> Result<()>;
}

/// A family's plan, by family.
#[derive(Debug)]
enum Plan {
    Depthwise(depthwise::Plan),
    Grouped(Box<grouped::Plan>),
    Pointwise(pointwise::Plan),
}

/// A convolution planned once: the validated shape, its kernel family, the SIMD level
/// (read once, when the plan is made) and the family's plan for every pass — the task
/// split, the tile parameters and the microkernels. Build it once per layer and reuse
/// it; layouts are documented on [`ConvDesc`].
///
/// Every pass exists in three forms: plain ([`Conv2d::forward`]), with a caller-owned
/// workspace ([`Conv2d::forward_with_workspace`]) and, for the forward pass, on
/// weights packed once ([`Conv2d::forward_packed`]).
#[derive(Debug)]
pub struct Conv2d {
    shape: ConvShape,
    family: ConvFamily,
    level: SimdLevel,
    post: PostOps,
    pre: Option<PreOps>,
    plan: Plan,
}

/// The most tasks a grouped convolution's pass may list (see [`Conv2d::new`]).
pub const MAX_GROUPED_TASKS: usize = grouped::MAX_TASKS;

impl Conv2d {
    /// Validates `desc`, picks the kernel family and plans every pass at the calling
    /// thread's SIMD level ([`crate::simd::active`]).
    ///
    /// # Errors
    /// [`crate::Error::InvalidDescriptor`] / [`crate::Error::Overflow`] for a
    /// descriptor that breaks its rules or whose tensors exceed memory addressing;
    /// [`crate::Error::OutOfMemory`] for a grouped convolution whose plan would list
    /// more than [`MAX_GROUPED_TASKS`] tasks (a batch of millions of images: split it).
    pub fn new(desc: &ConvDesc) -> Result<Conv2d> {
        Conv2d::with_level(desc, simd::active())
    }

    /// [`Conv2d::new`] at `level` (clamped to what the CPU supports).
    pub fn with_level(desc: &ConvDesc, level: SimdLevel) -> Result<Conv2d> {
        let shape = desc.validate()?;
        Conv2d::planned(shape, shape.family(), level)
    }

    /// A plan on the kernels of `family` rather than the one [`ConvShape::family`]
    /// picks — to compare families on one shape (the grouped kernels run every shape).
    /// Errors: [`crate::Error::InvalidArgument`] if the family cannot run the shape
    /// ([`ConvShape::supports`]).
    pub fn with_family(desc: &ConvDesc, family: ConvFamily, level: SimdLevel) -> Result<Conv2d> {
        let shape = desc.validate()?;
        if !shape.supports(family) {
            return Err(Error::InvalidArgument(format!(
                "the {family:?} kernels cannot run this convolution (they need {})",
                match family {
                    ConvFamily::Depthwise => "one channel per group and as many outputs as inputs",
                    ConvFamily::Pointwise => "a 1×1 kernel, one group and no padding",
                    ConvFamily::Grouped => "nothing more",
                }
            )));
        }
        Conv2d::planned(shape, family, level)
    }

    fn planned(shape: ConvShape, family: ConvFamily, level: SimdLevel) -> Result<Conv2d> {
        let level = level.min(simd::detected());
        let plan = match family {
            ConvFamily::Depthwise => Plan::Depthwise(depthwise::Plan::new(level, &shape)),
            ConvFamily::Grouped => Plan::Grouped(Box::new(grouped::Plan::new(level, &shape)?)),
            ConvFamily::Pointwise => Plan::Pointwise(pointwise::Plan::new(level, &shape)),
        };
        Ok(Conv2d {
            shape,
            family,
            level,
            post: PostOps::NONE,
            pre: None,
            plan,
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

    /// The SIMD level the passes run at (fixed when the plan was made).
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// The same plan with the forward epilogue `post` (per-channel scale, activation,
    /// residual add, statistics): the forward passes then give `φ(s ⊙ (conv(x, w) +
    /// bias)) (+ r)` in one pass over `y`. A plan with a residual runs through
    /// [`Conv2d::forward_fused`] or [`Conv2d::forward_post`] only, one with a scale or
    /// statistics through [`Conv2d::forward_post`] only.
    pub fn with_post_ops(mut self, post: PostOps) -> Conv2d {
        self.post = post;
        self
    }

    /// The forward epilogue.
    pub fn post_ops(&self) -> PostOps {
        self.post
    }

    /// The same plan with the forward prologue `pre`: the forward pass reads each
    /// input element as `x' = p · φ(a · x + b) + q` (per image and input channel; see
    /// [`PreOps`]), transformed as the kernels bring the input into their buffers
    /// (the depthwise rings, the grouped padded copies, the pointwise row blocks), so
    /// a norm's apply pass or a gate between two convolutions makes no pass of its
    /// own over memory. The convolution's padding is padding of `x'` (zeros). Such a
    /// plan runs forward through [`Conv2d::forward_post`] only, with the operands in
    /// [`PostArgs::pre`]; its workspace may be larger
    /// ([`Conv2d::workspace_len`]). The backward passes do not apply it: they take
    /// `x'` as the input.
    ///
    /// ```
    /// use effnet::kernels::conv::{Conv2d, ConvDesc, ConvWeights, PostArgs, PreArgs, PreOps};
    /// use effnet::kernels::activation::Activation;
    /// let d = ConvDesc::depthwise(1, (6, 6), 8, 3, 1);
    /// let conv = Conv2d::new(&d).unwrap().with_pre_ops(PreOps::norm_act(Activation::Relu));
    /// let s = *conv.shape();
    /// let (x, w) = (vec![-1.0f32; s.x_len], vec![1.0f32; s.w_len]);
    /// // x' = relu(2·x + 3) = 1 everywhere: the centre output sums 9 taps.
    /// let (a, b) = (vec![2.0f32; 8], vec![3.0f32; 8]);
    /// let pre = PreArgs { scale: &a, shift: Some(&b), out_scale: None, out_shift: None };
    /// let args = PostArgs { pre: Some(pre), ..PostArgs::default() };
    /// let mut y = vec![0.0f32; s.y_len];
    /// conv.forward_post(&x, ConvWeights::Plain(&w), None, args, &mut y, None).unwrap();
    /// assert_eq!(y[(2 * 6 + 2) * 8], 9.0);
    /// assert_eq!(y[0], 4.0); // a corner: 4 real taps, the padding reads zero
    /// ```
    pub fn with_pre_ops(mut self, pre: PreOps) -> Conv2d {
        if self.pre.is_none() {
            match &mut self.plan {
                Plan::Depthwise(p) => p.stage_input(),
                Plan::Grouped(p) => p.stage_input(),
                Plan::Pointwise(p) => p.stage_input(),
            }
        }
        self.pre = Some(pre);
        self
    }

    /// The forward prologue, if the plan has one.
    pub fn pre_ops(&self) -> Option<PreOps> {
        self.pre
    }

    /// The forward pass with the weights plain or packed, the residual of the plan's
    /// epilogue (`Some` exactly when [`PostOps::residual`]; laid out as `y`), and a
    /// caller's workspace (`None`: the thread-kept one, as [`Conv2d::forward`]).
    /// `y = φ(conv(x, w) + bias) (+ residual)`, overwritten. For a plan that gathers
    /// statistics use [`Conv2d::forward_post`].
    ///
    /// Errors: those of [`Conv2d::forward_post`].
    pub fn forward_fused(
        &self,
        x: &[f32],
        w: ConvWeights<'_>,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        y: &mut [f32],
        ws: Option<&mut [f32]>,
    ) -> Result<()> {
        let args = PostArgs {
            residual,
            ..PostArgs::default()
        };
        self.forward_post(x, w, bias, args, y, ws)
    }

    /// The forward pass with every operand of the plan's epilogue and prologue
    /// ([`PostArgs`]: the scale, the residual, the statistics' outputs, the prologue's
    /// coefficients), the weights plain or packed and a caller's workspace (`None`:
    /// the thread-kept one). `y = φ(s ⊙ (conv(x', w) + bias)) (+ residual)` (`s` the
    /// plan's per-channel scale, when it has one; `x'` the prologue's transform of
    /// `x`, or `x`), overwritten, and the statistics of `y` the plan gathers.
    ///
    /// ```
    /// use effnet::kernels::conv::{ChannelStats, Conv2d, ConvDesc, ConvWeights, PostArgs, PostOps};
    /// let d = ConvDesc::depthwise(2, (8, 8), 16, 3, 1);
    /// let post = PostOps { stats: ChannelStats::Sums, ..PostOps::NONE };
    /// let conv = Conv2d::new(&d).unwrap().with_post_ops(post);
    /// let s = *conv.shape();
    /// let (x, w) = (vec![1.0f32; s.x_len], vec![0.5f32; s.w_len]);
    /// let (mut y, mut sums) = (vec![0.0f32; s.y_len], vec![0.0f64; 2 * 16]);
    /// let args = PostArgs { sums: Some(&mut sums), ..PostArgs::default() };
    /// conv.forward_post(&x, ConvWeights::Plain(&w), None, args, &mut y, None).unwrap();
    /// let total: f64 = y[..s.y_len / 2].iter().step_by(16).map(|&v| f64::from(v)).sum();
    /// assert!((sums[0] - total).abs() < 1e-3);
    /// ```
    ///
    /// Errors: the buffer checks of [`Conv2d::forward`] and [`Conv2d::forward_packed`];
    /// [`crate::Error::InvalidArgument`] if an operand is given that the plan's epilogue
    /// or prologue does not use, or missing when it does; [`crate::Error::BufferSize`]
    /// naming `"scale"` (`C_out`), `"residual"` (`y`'s length), `"sums"` or `"squares"`
    /// (`N·C_out`), `"pre-op scale"`, `"pre-op shift"`, `"pre-op output scale"` or
    /// `"pre-op output shift"` (`N·C_in`); then the workspace checks.
    pub fn forward_post(
        &self,
        x: &[f32],
        w: ConvWeights<'_>,
        bias: Option<&[f32]>,
        args: PostArgs<'_>,
        y: &mut [f32],
        ws: Option<&mut [f32]>,
    ) -> Result<()> {
        let s = &self.shape;
        let w = match w {
            ConvWeights::Plain(w) => {
                s.check_forward(x, w, bias, y)?;
                ForwardWeights::Plain(w)
            }
            ConvWeights::Packed(p) => ForwardWeights::Packed(self.check_packed(x, p, bias, y)?),
        };
        let PostArgs {
            scale,
            residual,
            sums,
            squares,
            pre,
        } = args;
        let pre = PreArgs::check(
            pre,
            self.pre,
            s.desc.in_channels,
            s.desc.batch * s.desc.in_channels,
        )?;
        epilogue_operand(
            scale.map(|v| ("scale", v.len(), s.desc.out_channels)),
            self.post.scale,
            "a scale was given but the plan's post-ops scale nothing",
            "the plan's post-ops scale each output channel; pass the scale to forward_post",
        )?;
        epilogue_operand(
            residual.map(|r| ("residual", r.len(), s.y_len)),
            self.post.residual,
            "a residual was given but the plan's post-ops add none",
            "the plan's post-ops add a residual; pass it to forward_fused or forward_post",
        )?;
        let stats = self.post.stats;
        let d = &s.desc;
        stats.check(
            sums.as_deref(),
            squares.as_deref(),
            d.batch * d.out_channels,
        )?;
        let geo = (d.batch * s.out_h, s.out_w, d.out_channels);
        let mut run = |ws: &mut [f32]| {
            let mut ws = self.workspace(ConvPass::Forward, ws)?;
            let rows = match stats {
                ChannelStats::None => None,
                _ => {
                    let squares = stats == ChannelStats::SumsAndSquares;
                    let part = ws.take(RowStats::len(squares, geo.0, geo.2))?;
                    Some(RowStats::new(self.level, squares, part, geo))
                }
            };
            let post = Post {
                scale,
                act: self.post.activation,
                residual,
                stats: rows,
            };
            self.kernels().forward(x, pre, w, bias, post, y, &mut ws)?;
            Ok(rows)
        };
        let rows = match ws {
            Some(ws) => run(ws),
            None => self.allocating(ConvPass::Forward, run),
        }?;
        if let (Some(rows), Some(sums)) = (rows, sums) {
            rows.finish(sums, squares);
        }
        Ok(())
    }

    fn kernels(&self) -> &dyn FamilyPlan {
        match &self.plan {
            Plan::Depthwise(p) => p,
            Plan::Grouped(p) => p.as_ref(),
            Plan::Pointwise(p) => p,
        }
    }

    /// Floats (`f32` elements, not bytes) of workspace `pass` needs when the call runs
    /// in a `rayon` pool of `threads` threads (`rayon::current_num_threads()` inside
    /// it; `0` means the current pool). A workspace sized for more threads also serves
    /// a smaller pool; for a larger pool it may be short. Depends on the plan (shape
    /// and level), the pass and the thread count only.
    pub fn workspace_len(&self, pass: ConvPass, threads: usize) -> usize {
        let threads = if threads == 0 {
            rayon::current_num_threads()
        } else {
            threads
        };
        self.layout(pass, threads).len()
    }

    /// The regions of `pass`: the family's, and for a forward pass that gathers
    /// statistics their row partials (taken first).
    fn layout(&self, pass: ConvPass, threads: usize) -> WorkspaceLayout {
        let mut layout = self.kernels().layout(pass, threads);
        if pass == ConvPass::Forward {
            let (s, stats) = (&self.shape, self.post.stats);
            if stats != ChannelStats::None {
                let rows = s.desc.batch * s.out_h;
                let squares = stats == ChannelStats::SumsAndSquares;
                layout.region(RowStats::len(squares, rows, s.desc.out_channels));
            }
        }
        layout
    }

    /// The caller's workspace checked against the layout of `pass` in the current pool.
    fn workspace<'a>(&self, pass: ConvPass, ws: &'a mut [f32]) -> Result<Workspace<'a>> {
        let layout = self.layout(pass, rayon::current_num_threads());
        Workspace::new(ws, &layout)
    }

    /// Runs `f` with a workspace of exactly the length `pass` needs in the current
    /// pool, kept by the calling thread between calls ([`scratch::try_with_reused`]: a
    /// size the system refuses is [`Error::OutOfMemory`], not an abort).
    fn allocating<R>(&self, pass: ConvPass, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
        scratch::try_with_reused(self.workspace_len(pass, 0), f)
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
        self.forward_fused(x, ConvWeights::Plain(w), bias, None, y, Some(ws))
    }

    /// Floats of the buffer [`Conv2d::pack_weights`] fills: a 16-float header (which
    /// plan and SIMD level the weights were packed for) and the forward weights in the
    /// layout the kernels read at the plan's level: pointwise, the GEMM's column
    /// panels; grouped, the per-group vector-padded layout (or the weight as it is for
    /// whole-vector groups such as G16 at AVX-512); depthwise, the weight as it is
    /// (each task packs the channel blocks it reads next to its row rings, which
    /// measured faster than a shared packed copy).
    pub fn packed_weights_len(&self) -> usize {
        PACK_HEADER + self.kernels().packed_len()
    }

    /// Packs the weight `w` (`[kh][kw][group_size][C_out]`) once for
    /// [`Conv2d::forward_packed`] into `packed` (at least
    /// [`Conv2d::packed_weights_len`] floats; any contents): for inference, where the
    /// weights stay fixed across calls, this takes the per-call weight packing out of
    /// the forward pass. The packed form belongs to this plan (its shape and SIMD
    /// level) and to this build of the library: use it in this process only.
    ///
    /// Errors: [`crate::Error::BufferSize`] naming `"weight"` or `"packed weights"`.
    pub fn pack_weights(&self, w: &[f32], packed: &mut [f32]) -> Result<()> {
        check_len("weight", w.len(), self.shape.w_len)?;
        let need = self.packed_room(packed.len())?;
        let (head, body) = packed[..need].split_at_mut(PACK_HEADER);
        head.copy_from_slice(&self.pack_header());
        self.kernels().pack(w, body);
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
    /// shape and SIMD level (or not packed at all); then the workspace checks.
    pub fn forward_packed(
        &self,
        x: &[f32],
        packed: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        self.forward_fused(x, ConvWeights::Packed(packed), bias, None, y, Some(ws))
    }

    /// Writes into `out` the weights `packed` (by [`Conv2d::pack_weights`] for this
    /// plan) with each input channel scaled: the packing of `w'[ci][co] = w[ci][co] ·
    /// scale[ci]`, bit for bit, in one pass over the packed weights instead of a
    /// scaling and a packing. For a per-image input-channel gate (a squeeze-excite's)
    /// applied to a pointwise convolution's weights rather than to its input tensor:
    /// worth it where the weights are smaller than the input. Pointwise plans (1×1,
    /// one group) only.
    ///
    /// Errors: [`crate::Error::InvalidArgument`] for another family or weights not
    /// packed for this plan; [`crate::Error::BufferSize`] naming `"packed weights"`
    /// (`packed` or `out` short) or `"scale"` (not `C_in` values).
    pub fn scale_packed_input_channels(
        &self,
        packed: &[f32],
        scale: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        let body = self.packed_body(packed)?;
        check_len("scale", scale.len(), self.shape.desc.in_channels)?;
        let need = self.packed_room(out.len())?;
        let (head, rest) = out[..need].split_at_mut(PACK_HEADER);
        if !self.kernels().scale_packed_inputs(body, scale, rest) {
            return Err(Error::InvalidArgument(
                "input-channel scaling of packed weights is for pointwise convolutions".into(),
            ));
        }
        head.copy_from_slice(&packed[..PACK_HEADER]);
        Ok(())
    }

    /// Checks the operands of a forward pass on packed weights and returns the packed
    /// body (after the header).
    fn check_packed<'p>(
        &self,
        x: &[f32],
        packed: &'p [f32],
        bias: Option<&[f32]>,
        y: &[f32],
    ) -> Result<&'p [f32]> {
        let s = &self.shape;
        check_len("x", x.len(), s.x_len)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), s.desc.out_channels)?;
        }
        check_len("y", y.len(), s.y_len)?;
        self.packed_body(packed)
    }

    /// The body (after the header) of weights packed for this plan, checked: long
    /// enough and with this plan's header.
    fn packed_body<'p>(&self, packed: &'p [f32]) -> Result<&'p [f32]> {
        let need = self.packed_room(packed.len())?;
        let (head, body) = packed[..need].split_at(PACK_HEADER);
        if head
            .iter()
            .map(|v| v.to_bits())
            .ne(self.pack_header().iter().map(|v| v.to_bits()))
        {
            return Err(Error::InvalidArgument(format!(
                "the packed weights were not packed by pack_weights for this convolution \
                 at the {} SIMD level; pack them again",
                self.level
            )));
        }
        Ok(body)
    }

    /// [`Conv2d::packed_weights_len`], checked against a packed buffer of `len`
    /// floats ([`crate::Error::BufferSize`] naming `"packed weights"` when short).
    fn packed_room(&self, len: usize) -> Result<usize> {
        let need = self.packed_weights_len();
        if len < need {
            return Err(Error::BufferSize {
                name: "packed weights",
                expected: need,
                actual: len,
            });
        }
        Ok(need)
    }

    /// The header of weights packed for this plan: a magic number, the level, the
    /// family and a hash of the shape (as float bit patterns).
    fn pack_header(&self) -> [f32; PACK_HEADER] {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.shape.hash(&mut h);
        self.level.lanes().hash(&mut h);
        let hash = h.finish();
        let mut out = [0u32; PACK_HEADER];
        out[0] = PACK_MAGIC;
        out[1] = self.level as u32;
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
        self.shape.check_backward_data(dy, w, dx)?;
        let mut ws = self.workspace(ConvPass::BackwardData, ws)?;
        self.kernels().backward_data(dy, w, dx, &mut ws)
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
        self.shape
            .check_backward_weight(x, dy, dw, dbias.as_deref())?;
        let mut ws = self.workspace(ConvPass::BackwardWeight, ws)?;
        self.kernels()
            .backward_weight(x, dy, dw, dbias, mode, &mut ws)
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
