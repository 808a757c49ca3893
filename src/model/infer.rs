//! A prepared inference network: every layer planned once, BatchNorm folded into the
//! preceding convolution's weights and bias, the activation and the residual add in the
//! convolutions' epilogues, the weights packed once, and one set of activation buffers
//! and one workspace reused across calls.
//!
//! Build it with [`Network::plan_inference`](super::Network::plan_inference) for a
//! batch size and resolution; [`InferencePlan::run`] then maps images to logits with no
//! separate normalization, activation or residual pass over memory. The folded network
//! rounds differently from the unfused one (the scale is applied to the weights before
//! the sums rather than to the sums), within about 1e-5 relative on the logits.
//!
//! The squeeze-excite and classifier dense layers are 1×1 convolutions on one-pixel
//! images with their activation in the epilogue. Blocks whose expanded tensor would
//! leave the last-level cache run their expansion and k×k convolution depth-first, band
//! by band (see `infer_band`); [`InferencePlan::traffic_per_image`] estimates the bytes
//! the plan moves against the unfused pass.
//!
//! Norms with per-sample statistics (GroupNorm, LayerNorm + Proxy Norm) cannot fold:
//! their convolution gathers each image's channel sums and sums of squares as it
//! writes its output (the statistics post-op), and the norm then makes one apply pass
//! over it, with its plan made once and Proxy Norm's correction computed once from its
//! parameters; a delayed proxy scale is folded into the projection's weights. After an
//! expansion, the apply pass is the k×k convolution's prologue instead (see
//! `prologue`): the expanded tensor is written raw and transformed as it is read.
//!
//! A batch runs in groups of up to 4 images on image lanes (see `lanes`), one per
//! thread: a group's activations stay in its core's caches from layer to layer, and
//! each layer's weights are read once per group.

mod fused_conv;
mod prologue;

pub(crate) use fused_conv::FusedConv;

use super::infer_band::Banded;
use super::lanes::Lanes;
use super::profile::{CONV_1X1_FWD, CONV_KXK_FWD, CONV_STEM, HEAD, SE_FWD, timed};
use crate::error::{Error, Result, try_filled};
use crate::kernels::gate;
use crate::kernels::pool::{self, Nhwc};

/// The squeeze-excite of a block: pool, reduce (bias) + swish, expand (bias) + sigmoid
/// (both dense layers with their activation as the epilogue), gate.
#[derive(Debug)]
pub(crate) struct FusedSe {
    pub(crate) shape: Nhwc,
    pub(crate) reduce: FusedConv,
    pub(crate) expand: FusedConv,
}

/// One MBConv block, fused.
#[derive(Debug)]
pub(crate) struct FusedBlock {
    /// The expansion and k×k convolution band by band (with the squeeze), when the
    /// expanded tensor is larger than the band budget; else `expand` and `spatial`
    /// run on the whole batch.
    pub(crate) banded: Option<Banded>,
    pub(crate) expand: Option<FusedConv>,
    pub(crate) spatial: FusedConv,
    pub(crate) se: FusedSe,
    pub(crate) project: FusedConv,
    pub(crate) skip: bool,
}

/// The whole fused network: stem, blocks, head and classifier, for a group of
/// images. The stem and `blocks[..grouped_from]` are planned for one image and run
/// image by image; the other blocks and the head for the whole group.
#[derive(Debug)]
pub(crate) struct FusedNet {
    pub(crate) group: usize,
    pub(crate) grouped_from: usize,
    pub(crate) stem: FusedConv,
    pub(crate) blocks: Vec<FusedBlock>,
    pub(crate) head: FusedConv,
    pub(crate) pool: Nhwc,
    pub(crate) fc: FusedConv,
}

/// Estimated main-memory traffic of one image's inference
/// ([`InferencePlan::traffic_per_image`]).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Traffic {
    /// Bytes the prepared (fused) network reads and writes.
    pub fused_bytes: f64,
    /// Bytes the unfused layer-by-layer forward pass reads and writes.
    pub unfused_bytes: f64,
}

/// A network prepared for inference at one batch size and resolution; see the
/// [module docs](self).
///
/// The layers are planned for a group of [`InferencePlan::group`] images (a divisor
/// of the batch, at most 4, so that each layer's weights are read once for the
/// group); a batch runs as one-group jobs on image lanes, one lane per thread of the
/// pool the plan was made in (up to the number of groups), each lane with its own
/// buffers. A single group (or a pool of one thread) runs in the caller's pool with
/// every thread inside each layer. The logits are the same bits however many lanes
/// run and however large the groups are.
#[derive(Debug)]
pub struct InferencePlan {
    batch: usize,
    res: usize,
    group: usize,
    fused: Fused,
}

/// The prepared network (for one group of images) and each lane's buffers.
#[derive(Debug)]
struct Fused {
    net: FusedNet,
    lanes: Lanes<Buffers>,
}

/// One lane's activation buffers and workspace for the fused network (one group).
#[derive(Debug)]
struct Buffers {
    /// Block inputs and outputs: two alternating, and the group's gathered outputs of
    /// the blocks that run image by image (the input of the grouped blocks).
    io: [Vec<f32>; 3],
    work: Work,
}

/// A lane's buffers inside a block and the head: expanded, spatial, a band, the
/// workspace, the squeeze-excite's and the head's.
#[derive(Debug)]
struct Work {
    expanded: Vec<f32>,
    spatial: Vec<f32>,
    /// The expanded rows of one band of a depth-first block.
    band: Vec<f32>,
    ws: Vec<f32>,
    pooled: Vec<f32>,
    se: [Vec<f32>; 3],
    /// The channel sums of a squeezing k×k convolution (`f64`, as the kernels give).
    squeeze: Vec<f64>,
    /// The coefficients of a deferred norm for its consumer's prologue.
    prologue: Vec<f32>,
    logits: Vec<f32>,
}

/// The most images a lane runs through the network at once. A group of `m` images
/// reads each layer's weights once for all `m` (per image: `1/m` of the weights'
/// traffic, which dominates the late layers: B0's last stages hold 10–20× more weights
/// than one image's activations), while `m` images' activations still stay in the
/// caches. Measured on a 2-core Zen 5 at batch 16: 4 images per group run 14–18 %
/// faster than 1 at 160 and 224, 8 no faster than 4 (see BENCHMARKS.md).
const MAX_GROUP: usize = 4;

/// Whether a block whose weights take `weights` floats and one image's activations
/// `activations` runs on the whole group (from there on, so do the later blocks): when
/// one image's pass would read more weights than activations. Earlier blocks run
/// image by image, so that the large early activations of one image stay in cache.
pub(crate) fn groups_block(weights: usize, activations: usize) -> bool {
    weights >= activations
}

/// The lanes and the images per group of a batch of `batch` in the current pool: see
/// [`layout_for`].
pub(crate) fn layout(batch: usize) -> (usize, usize) {
    layout_for(batch, rayon::current_num_threads())
}

/// `(lanes, group)` for a batch of `batch` on `threads` threads: the group size `m`
/// (at most [`MAX_GROUP`]) divides the batch, so every group is planned the same, and
/// among those sizes it gives the busiest lane the fewest images (a lane that runs
/// one group more than the others makes the whole batch wait); ties go to the larger
/// group. Then one lane per thread, up to one per group.
pub(crate) fn layout_for(batch: usize, threads: usize) -> (usize, usize) {
    let batch = batch.max(1);
    let lanes = threads.clamp(1, batch);
    let busiest = |m: usize| (batch / m).div_ceil(lanes) * m;
    let group = (1..=MAX_GROUP.min(batch))
        .filter(|&m| batch.is_multiple_of(m))
        .min_by_key(|&m| (busiest(m), std::cmp::Reverse(m)))
        .unwrap_or(1);
    (lanes.min(batch / group), group)
}

/// How many threads the kernels of one lane see for a batch of `batch` in the current
/// pool: one when the batch runs on several lanes, else the whole pool.
pub(crate) fn lane_threads(batch: usize) -> usize {
    if layout(batch).0 > 1 {
        1
    } else {
        rayon::current_num_threads()
    }
}

impl InferencePlan {
    /// The plan for `batch` images of `net`, a fused network planned for one group of
    /// images (the group size of [`layout`]) and for kernels that see
    /// [`lane_threads`]`(batch)` threads.
    pub(crate) fn new(batch: usize, res: usize, net: FusedNet) -> Result<InferencePlan> {
        let (lanes, group) = layout(batch);
        if net.group != group {
            return Err(Error::InvalidArgument(format!(
                "an inference network planned for {} images per group, not {group}",
                net.group
            )));
        }
        let lanes = Lanes::new(lanes, |threads| Buffers::new(&net, threads))?;
        Ok(InferencePlan {
            batch,
            res,
            group,
            fused: Fused { net, lanes },
        })
    }

    /// How many image lanes run a batch at once (see the [type docs](Self)).
    pub fn lanes(&self) -> usize {
        self.fused.lanes.count()
    }

    /// How many images a lane runs through the network at once, layer by layer (a
    /// divisor of the batch, at most 4; see the [type docs](Self)).
    pub fn group(&self) -> usize {
        self.group
    }
}

impl Buffers {
    /// The buffers of `net` (one group) for kernels in a pool of `threads` threads.
    fn new(net: &FusedNet, threads: usize) -> Result<Buffers> {
        let mut io_len = net.stem.y_len();
        let (mut e_len, mut d_len, mut ws_len, mut se_len) = (0, 0, 0, 0);
        let (mut band_len, mut band_ws, mut pro_len) = (0, 0, 0);
        let mut ws_of = |c: &FusedConv| ws_len = ws_len.max(c.workspace_len(threads));
        ws_of(&net.stem);
        ws_of(&net.head);
        ws_of(&net.fc);
        for b in &net.blocks {
            match (&b.banded, &b.expand) {
                (Some(bd), _) => {
                    band_len = band_len.max(bd.band_len());
                    band_ws = band_ws.max(bd.workspace_len(threads));
                }
                (None, Some(e)) => {
                    e_len = e_len.max(e.y_len());
                    pro_len = pro_len.max(usize::from(e.defers()) * e.deferred_len());
                    ws_of(e);
                }
                (None, None) => {}
            }
            ws_of(&b.spatial);
            ws_of(&b.project);
            ws_of(&b.se.reduce);
            ws_of(&b.se.expand);
            d_len = d_len.max(b.spatial.y_len());
            io_len = io_len.max(b.project.y_len());
            se_len = se_len.max(b.se.shape.pooled_len());
        }
        let head_len = net.head.y_len();
        let gathered = net.group * net.per_image_len();
        // Sizes follow from the caller's batch and resolution: allocated fallibly.
        let buf = |what: &str, len: usize| try_filled(what, len, 0.0f32);
        let se = [
            buf("a gate buffer", se_len)?,
            buf("a gate buffer", se_len)?,
            buf("a gate buffer", se_len)?,
        ];
        Ok(Buffers {
            io: [
                buf("a block buffer", io_len)?,
                buf("a block buffer", io_len)?,
                buf("the gathered block outputs", gathered)?,
            ],
            work: Work {
                expanded: buf("the expanded buffer", e_len.max(head_len))?,
                spatial: buf("the spatial buffer", d_len)?,
                band: buf("the band buffer", band_len)?,
                ws: buf("the workspace", ws_len.max(band_ws))?,
                pooled: buf("the pooled buffer", net.pool.pooled_len())?,
                se,
                squeeze: try_filled("the squeeze buffer", se_len, 0.0f64)?,
                prologue: buf("the prologue coefficients", pro_len)?,
                logits: buf("the logits", net.fc.y_len())?,
            },
        })
    }

    fn floats(&self) -> usize {
        let w = &self.work;
        self.io.iter().map(Vec::len).sum::<usize>()
            + w.expanded.len()
            + w.spatial.len()
            + w.band.len()
            + w.ws.len()
            + w.pooled.len()
            + 3 * w.se[0].len()
            + 2 * w.squeeze.len()
            + w.prologue.len()
            + w.logits.len()
    }
}

impl InferencePlan {
    /// The batch size and resolution the plan was made for.
    pub fn shape(&self) -> (usize, usize) {
        (self.batch, self.res)
    }

    /// Whether every norm is folded into its convolution (BatchNorm networks); else
    /// the per-sample norms (GroupNorm, LayerNorm + Proxy Norm) run after their
    /// convolutions, prepared once.
    pub fn folds_every_norm(&self) -> bool {
        let net = &self.fused.net;
        let blocks = net
            .blocks
            .iter()
            .flat_map(|b| [b.expand.as_ref(), Some(&b.spatial), Some(&b.project)]);
        [Some(&net.stem), Some(&net.head)]
            .into_iter()
            .chain(blocks)
            .flatten()
            .all(|c| !c.has_sample_norm())
    }

    /// The estimated bytes one image's inference reads and writes in main memory
    /// (activations and the weights, read once per group of [`InferencePlan::group`]
    /// images and counted here as their share per image), by this plan and by the
    /// unfused layer-by-layer forward pass on the same group.
    ///
    /// A plain count of every tensor each pass reads and writes, as if none stayed in
    /// cache between passes: the unfused pass adds a norm + activation pass over every
    /// convolution's output and a separate residual add. The squeeze-excite's gate
    /// reads and writes its tensor in both; its pool reads it unfused, and in the plan
    /// only where no convolution gathers the squeeze (per-sample norms).
    pub fn traffic_per_image(&self) -> Traffic {
        let net = &self.fused.net;
        // Floats per image: the parts planned for one image count whole, the grouped
        // ones their share (`1/group`).
        let (mut fused, mut unfused) = (0.0f64, 0.0f64);
        let mut share = 1.0;
        let mut add = |(a, b): (usize, usize), share: f64| {
            fused += a as f64 * share;
            unfused += b as f64 * share;
        };
        add(net.stem.traffic(), share);
        for (i, b) in net.blocks.iter().enumerate() {
            if i == net.grouped_from {
                share = 1.0 / net.group as f64;
            }
            let unbanded = b.expand.as_ref().map_or((0, 0), FusedConv::traffic);
            let spatial = b.spatial.traffic();
            // Pool (in cache when banded), the two dense layers (their outputs then an
            // activation pass unfused), gate (read and write).
            // The squeeze is gathered by a squeezing k×k convolution (no pool pass);
            // a gate applied to the projection's weights reads the packed weights and
            // writes the gated copy instead of reading and writing `d`.
            let d = b.spatial.y_len();
            let (r, e) = (b.se.reduce.traffic(), b.se.expand.traffic());
            let pool = usize::from(!b.spatial.squeezes()) * d;
            let gate = if b.project.gated() {
                2 * b.project.packed_len()
            } else {
                2 * d
            };
            let se = (gate + pool + r.0 + e.0, 3 * d + r.1 + e.1);
            match &b.banded {
                Some(bd) => add(
                    (bd.traffic() + se.0 - d, unbanded.1 + spatial.1 + se.1),
                    share,
                ),
                None => add(
                    (unbanded.0 + spatial.0 + se.0, unbanded.1 + spatial.1 + se.1),
                    share,
                ),
            }
            add(b.project.traffic(), share);
        }
        let share = 1.0 / net.group as f64;
        add(net.head.traffic(), share);
        let pool = net.head.y_len() + net.pool.pooled_len();
        let fc = net.fc.traffic();
        add((pool + fc.0, pool + fc.1), share);
        let per = |floats: f64| floats * size_of::<f32>() as f64;
        Traffic {
            fused_bytes: per(fused),
            unfused_bytes: per(unfused),
        }
    }

    /// How many blocks, from the first, run image by image within a group (after the
    /// stem, which always does); the rest and the head run on the whole group. All
    /// of them for groups of one image.
    pub fn per_image_blocks(&self) -> usize {
        self.fused.net.grouped_from
    }

    /// How many blocks apply their squeeze-excite gate to their projection's weights
    /// (scaled per image) instead of to the projection's input.
    pub fn gated_projections(&self) -> usize {
        let blocks = &self.fused.net.blocks;
        blocks.iter().filter(|b| b.project.gated()).count()
    }

    /// How many blocks leave the per-sample norm after their expansion to the k×k
    /// convolution's prologue (the expanded tensor written once, read once).
    pub fn prologue_norms(&self) -> usize {
        let blocks = &self.fused.net.blocks;
        blocks
            .iter()
            .filter(|b| b.expand.as_ref().is_some_and(FusedConv::defers))
            .count()
    }

    /// How many blocks run their expansion and k×k convolution depth-first, in bands.
    pub fn banded_blocks(&self) -> usize {
        let blocks = &self.fused.net.blocks;
        blocks.iter().filter(|b| b.banded.is_some()).count()
    }

    /// Floats of the activation buffers and workspace the plan keeps (all lanes').
    pub fn buffer_floats(&self) -> usize {
        let lanes = self.fused.lanes.states();
        lanes.iter().map(Buffers::floats).sum()
    }

    /// The logits `[batch][classes]` of `x` (`[batch][res][res][3]`, NHWC).
    ///
    /// # Errors
    /// [`Error::BufferSize`] for a wrong input length; any kernel error.
    pub fn run(&mut self, x: &[f32]) -> Result<Vec<f32>> {
        let (n, res) = (self.batch, self.res);
        let want = n * res * res * 3;
        if x.len() != want {
            return Err(Error::BufferSize {
                name: "images",
                expected: want,
                actual: x.len(),
            });
        }
        let m = self.group;
        let group = m * res * res * 3;
        let Fused { net, lanes } = &mut self.fused;
        let classes = net.fc.y_len();
        let mut logits = try_filled("the logits", n * classes / m, 0.0)?;
        let net = &*net;
        lanes.run(n / m, &mut logits, classes, |bufs, i, out| {
            bufs.run(net, &x[i * group..(i + 1) * group])?;
            out.copy_from_slice(&bufs.work.logits);
            Ok(())
        })?;
        Ok(logits)
    }
}

impl FusedNet {
    /// Floats of one image's output of the part that runs image by image (the stem
    /// and `blocks[..grouped_from]`).
    fn per_image_len(&self) -> usize {
        let early = &self.blocks[..self.grouped_from];
        early
            .last()
            .map_or(self.stem.y_len(), |b| b.project.y_len())
    }
}

impl Buffers {
    /// Runs `net` on one group of images `x`, leaving their logits in
    /// `self.work.logits`: each image through the stem and the blocks planned for one
    /// image, its output gathered into `io[2]`; then the group through the rest.
    fn run(&mut self, net: &FusedNet, x: &[f32]) -> Result<()> {
        let Buffers { io, work } = self;
        let (early, late) = net.blocks.split_at(net.grouped_from);
        let per = net.per_image_len();
        let stem_len = net.stem.y_len();
        for (i, image) in x.chunks(x.len() / net.group).enumerate() {
            let y = &mut io[0][..stem_len];
            timed(CONV_STEM, || net.stem.run(image, None, y, &mut work.ws))?;
            let at = work.blocks(early, io, 0, stem_len)?;
            let (out, gathered) = two(io, at, 2);
            gathered[i * per..(i + 1) * per].copy_from_slice(&out[..per]);
        }
        let len = late.last().map_or(net.group * per, |b| b.project.y_len());
        let at = work.blocks(late, io, 2, net.group * per)?;
        work.head(net, &io[at][..len])
    }
}

/// `io[from]` to read and `io[to]` to write (`from != to`).
fn two(io: &mut [Vec<f32>; 3], from: usize, to: usize) -> (&[f32], &mut [f32]) {
    debug_assert_ne!(from, to);
    let (lo, hi) = io.split_at_mut(from.max(to));
    let (low, high) = (&mut lo[from.min(to)], &mut hi[0]);
    if from < to { (low, high) } else { (high, low) }
}

impl Work {
    /// Runs `blocks` on the first `len` floats of `io[at]`, their outputs alternating
    /// between `io[0]` and `io[1]`; returns the index of the buffer holding the last
    /// output (`at` when there are no blocks).
    fn blocks(
        &mut self,
        blocks: &[FusedBlock],
        io: &mut [Vec<f32>; 3],
        mut at: usize,
        mut len: usize,
    ) -> Result<usize> {
        for blk in blocks {
            let to = usize::from(at == 0);
            let (input, out) = two(io, at, to);
            let out_len = blk.project.y_len();
            self.block(blk, &input[..len], &mut out[..out_len])?;
            (at, len) = (to, out_len);
        }
        Ok(at)
    }

    /// One block from `input` to `out`.
    fn block(&mut self, blk: &FusedBlock, input: &[f32], out: &mut [f32]) -> Result<()> {
        let Work {
            expanded,
            spatial,
            band,
            ws,
            se,
            squeeze,
            prologue,
            ..
        } = self;
        let d = &mut spatial[..blk.spatial.y_len()];
        let [p, rest @ ..] = se;
        let p = &mut p[..blk.se.shape.pooled_len()];
        match &blk.banded {
            Some(bd) => bd.run(input, d, p, band, ws)?,
            None => match &blk.expand {
                Some(ec) if ec.defers() => {
                    // The norm's apply pass is the k×k convolution's prologue.
                    let e = &mut expanded[..ec.y_len()];
                    let k = &mut prologue[..ec.deferred_len()];
                    timed(CONV_1X1_FWD, || ec.run_deferred(input, e, k, ws))?;
                    let (e, k) = (&*e, &*k);
                    timed(CONV_KXK_FWD, || blk.spatial.run_pre(e, k, None, d, ws))?;
                    timed(SE_FWD, || pool::global_avg_pool(&blk.se.shape, d, p))?;
                }
                _ => {
                    let e: &[f32] = match &blk.expand {
                        Some(ec) => {
                            let e = &mut expanded[..ec.y_len()];
                            timed(CONV_1X1_FWD, || ec.run(input, None, e, ws))?;
                            e
                        }
                        None => input,
                    };
                    if blk.spatial.squeezes() {
                        let sq = &mut squeeze[..p.len()];
                        timed(CONV_KXK_FWD, || blk.spatial.run_squeezed(e, d, (sq, p), ws))?;
                    } else {
                        timed(CONV_KXK_FWD, || blk.spatial.run(e, None, d, ws))?;
                        timed(SE_FWD, || pool::global_avg_pool(&blk.se.shape, d, p))?;
                    }
                }
            },
        }
        let res = blk.skip.then_some(input);
        if blk.project.gated() {
            // The gate scales the projection's weights, not the spatial output.
            let g = timed(SE_FWD, || blk.se.excitation(p, rest, ws))?;
            return timed(CONV_1X1_FWD, || blk.project.run_gated(d, g, res, out, ws));
        }
        timed(SE_FWD, || blk.se.excite(d, p, rest, ws))?;
        timed(CONV_1X1_FWD, || blk.project.run(d, res, out, ws))
    }

    /// The head, pool and classifier on the group's last block output `input`.
    fn head(&mut self, net: &FusedNet, input: &[f32]) -> Result<()> {
        let Work {
            expanded,
            ws,
            pooled,
            logits,
            ..
        } = self;
        let h = &mut expanded[..net.head.y_len()];
        timed(CONV_1X1_FWD, || net.head.run(input, None, h, ws))?;
        timed(HEAD, || {
            pool::global_avg_pool(&net.pool, h, pooled)?;
            net.fc.run(pooled, None, logits, ws)
        })
    }
}

impl FusedSe {
    /// The excitation of `d` from its squeeze `pooled` (`[N][C]`): the two dense layers
    /// and the gate, in place (`bufs`: scratch of at least the pooled length each).
    fn excite(
        &self,
        d: &mut [f32],
        pooled: &[f32],
        bufs: &mut [Vec<f32>; 2],
        ws: &mut [f32],
    ) -> Result<()> {
        let g = self.excitation(pooled, bufs, ws)?;
        gate::forward_inplace(&self.shape, d, g)
    }

    /// The gate (`[N][C]`, in `bufs[1]`) from the squeeze `pooled`: the two dense
    /// layers.
    fn excitation<'b>(
        &self,
        pooled: &[f32],
        [r, g]: &'b mut [Vec<f32>; 2],
        ws: &mut [f32],
    ) -> Result<&'b [f32]> {
        let r = &mut r[..self.reduce.y_len()];
        self.reduce.run(pooled, None, r, ws)?;
        let g = &mut g[..self.expand.y_len()];
        self.expand.run(r, None, g, ws)?;
        Ok(g)
    }
}
