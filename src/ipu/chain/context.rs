//! The graph context of the chain builder: the graph under construction, the
//! programs it appends to (forward, recomputation, backward), the tape of backward
//! closures, tile placement, parameters with their resident copies, and the shared
//! reduction helper.

use super::boxes::{Dist, Grid, Part, gather, ranges};
use crate::error::Result;
use crate::ipu::codelets::Codelet;
use crate::ipu::graph::{
    FieldRef, Graph, LayerId, LayerInfo, Program, Strided, TensorId, Transfer,
};
use crate::ipu::target::{Precision, Target};
use std::collections::HashMap;

/// A parameter of the chain: timm name, elements, its master value and gradient
/// tensors, and the resident copies the layers read.
#[derive(Clone, Debug)]
pub struct ChainParam {
    /// timm name (`conv_stem.weight`, `blocks.1.0.bn2.proxy_beta`, `classifier.bias`).
    pub name: String,
    /// Elements.
    pub len: usize,
    /// The master value (persistent, spread over tiles).
    pub value: TensorId,
    /// The gradient of one micro-batch (same tile mapping as the value).
    pub grad: TensorId,
    /// Resident working copies on the tiles that use them, with the strided copy
    /// that refreshes each from the master after an optimizer step.
    pub copies: Vec<(TensorId, Strided)>,
}

/// Parameter values by timm name, in effnet's layouts (the layouts of
/// [`crate::kernels::conv::ConvDesc`]: convolutions `[kh][kw][C_in/groups][C_out]`,
/// squeeze-excite 1×1s `[C_in][C_out]`, the classifier `[in][out]`, norm and proxy
/// parameters and biases `[C]`; a norm's `weight`, `bias`, `proxy_beta`, `proxy_gamma`
/// are separate tensors). BatchNorm running statistics are not used (training mode).
pub type ChainParams = HashMap<String, Vec<f32>>;

/// How one layer was split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSplit {
    /// Layer name.
    pub name: String,
    /// Image ranges of its output.
    pub image_parts: usize,
    /// Row ranges per image of its output.
    pub row_parts: usize,
    /// Channel ranges of its output.
    pub chan_parts: usize,
    /// Boxes (tiles) of its output.
    pub boxes: usize,
}

/// What a chain is built for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ChainOpts {
    /// Training (forward, backward, gradients) or inference (forward only, in place).
    pub training: bool,
    /// Recompute each block's activations from its input in the backward pass
    /// (saving only block inputs), as the paper's runs did.
    pub recompute: bool,
}

impl Default for ChainOpts {
    fn default() -> ChainOpts {
        ChainOpts {
            training: true,
            recompute: true,
        }
    }
}

/// Which program a builder step appends to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// The forward pass.
    Fwd,
    /// A block's forward, recomputed in the backward pass.
    Recompute,
    /// The backward pass.
    Bwd,
}

pub(super) type Bwd = Box<dyn FnOnce(&mut Net, Dist) -> Result<Dist>>;
pub(super) type Vx = (u32, Codelet, Vec<FieldRef>);

/// The builder's state.
pub(super) struct Net {
    pub(super) g: Graph,
    pub(super) fwd: Vec<Program>,
    pub(super) bwd: Vec<Program>,
    pub(super) phase: Phase,
    pub(super) layer: LayerId,
    next: usize,
    pub(super) params: Vec<ChainParam>,
    param_index: HashMap<String, usize>,
    konsts: HashMap<String, TensorId>,
    copies: HashMap<(usize, u32, Strided), TensorId>,
    named_tiles: HashMap<String, Vec<u32>>,
    pub(super) eps: f32,
    pub(super) tape: Vec<Bwd>,
    pub(super) splits: Vec<LayerSplit>,
    pub(super) opts: ChainOpts,
    /// Weight elements of the convolutions of the stage being built (for the
    /// resident-copy shares).
    pub(super) stage_weights: usize,
}

pub(super) fn fr(t: TensorId, len: usize) -> FieldRef {
    FieldRef::whole(t, len)
}

/// A strided copy of `rows` rows of `len` elements between row strides.
pub(super) fn rows_copy(
    src_offset: usize,
    src_stride: usize,
    dst_offset: usize,
    dst_stride: usize,
    rows: usize,
    len: usize,
) -> Strided {
    Strided {
        src_offset,
        dst_offset,
        counts: [1, 1, rows, len],
        src_strides: [0, 0, src_stride],
        dst_strides: [0, 0, dst_stride],
    }
}

pub(super) fn tr(src: TensorId, dst: TensorId, copy: Strided) -> Transfer {
    Transfer {
        src,
        dsts: vec![dst],
        copy,
    }
}

impl Net {
    pub(super) fn new(
        target: &Target,
        precision: Precision,
        eps: f32,
        opts: ChainOpts,
    ) -> Result<Net> {
        let mut g = Graph::new(target.clone(), precision)?;
        let layer = g.add_layer(LayerInfo {
            name: "input".into(),
            kind: "stem",
            pass: "fwd",
            flops: 0.0,
        });
        Ok(Net {
            g,
            fwd: Vec::new(),
            bwd: Vec::new(),
            phase: Phase::Fwd,
            layer,
            next: 0,
            params: Vec::new(),
            param_index: HashMap::new(),
            konsts: HashMap::new(),
            copies: HashMap::new(),
            named_tiles: HashMap::new(),
            eps,
            tape: Vec::new(),
            splits: Vec::new(),
            opts,
            stage_weights: 0,
        })
    }
    /// Tiles of the IPU.
    pub(super) fn tiles(&self) -> usize {
        self.g.target.tiles
    }
    /// The next tile in a round robin over the IPU (for small tensors: reduction
    /// buffers, the squeeze-excitation and classifier chunks, parameter masters).
    pub(super) fn tile(&mut self) -> u32 {
        let t = self.next % self.g.target.tiles;
        self.next += 1;
        t as u32
    }
    /// `k` tiles for the small tensors of layer `name`, the same ones every time the
    /// layer is built (its recomputation finds its resident weights again).
    pub(super) fn tiles_for(&mut self, name: &str, k: usize) -> Vec<u32> {
        if let Some(v) = self.named_tiles.get(name)
            && v.len() == k
        {
            return v.clone();
        }
        let v: Vec<u32> = (0..k).map(|_| self.tile()).collect();
        self.named_tiles.insert(name.to_string(), v.clone());
        v
    }
    pub(super) fn t(&mut self, name: String, len: usize, tile: u32) -> Result<TensorId> {
        self.g.add_tensor(name, len, tile)
    }
    /// A constant, once per name (a recomputed layer reuses it).
    pub(super) fn konst(&mut self, name: String, v: Vec<f32>, tile: u32) -> Result<TensorId> {
        if let Some(&t) = self.konsts.get(&name) {
            return Ok(t);
        }
        let t = self.g.add_tensor(name.clone(), v.len(), tile)?;
        self.g.set_init(t, v)?;
        self.konsts.insert(name, t);
        Ok(t)
    }
    pub(super) fn eb(&self) -> usize {
        self.g.precision.bytes()
    }
    pub(super) fn budget_elems(&self) -> usize {
        self.g.target.budget_bytes() / self.eb()
    }
    /// Whether element-wise steps may overwrite their input (inference: nothing is
    /// kept for a backward pass).
    pub(super) fn in_place(&self) -> bool {
        !self.opts.training
    }
    pub(super) fn in_bwd(&self) -> bool {
        self.phase != Phase::Fwd
    }
    pub(super) fn layer(&mut self, name: &str, kind: &'static str, flops: f64) {
        self.layer = self.g.add_layer(LayerInfo {
            name: name.into(),
            kind,
            pass: match self.phase {
                Phase::Fwd => "fwd",
                Phase::Recompute => "recompute",
                Phase::Bwd => "bwd",
            },
            flops,
        });
    }
    /// Pushes a closure on the tape (nothing is recorded for inference).
    pub(super) fn on_backward(&mut self, f: Bwd) {
        if self.opts.training {
            self.tape.push(f);
        }
    }
    pub(super) fn prog(&mut self, p: Program) {
        if self.in_bwd() {
            self.bwd.push(p)
        } else {
            self.fwd.push(p)
        }
    }
    pub(super) fn cs(&mut self, name: &str, vs: Vec<Vx>) -> Result<()> {
        if vs.is_empty() {
            return Ok(());
        }
        let c = self.g.add_compute_set(name, self.layer);
        for (t, cd, f) in vs {
            self.g.add_vertex(c, t, cd, f)?;
        }
        self.prog(Program::Execute(c));
        Ok(())
    }
    /// An exchange phase; transfers of the same source region to several tensors at
    /// the same offsets become one broadcast (sent once, received by each).
    pub(super) fn ex(&mut self, name: &str, trs: Vec<Transfer>) -> Result<()> {
        if trs.is_empty() {
            return Ok(());
        }
        let mut merged: Vec<Transfer> = Vec::with_capacity(trs.len());
        let mut at: HashMap<(TensorId, Strided), usize> = HashMap::new();
        for t in trs {
            match at.get(&(t.src, t.copy)) {
                Some(&i) => merged[i].dsts.extend(t.dsts),
                None => {
                    at.insert((t.src, t.copy), merged.len());
                    merged.push(t);
                }
            }
        }
        let e = self.g.add_exchange(name, self.layer, merged)?;
        self.prog(Program::Exchange(e));
        Ok(())
    }

    /// The tile of box `b` of `grid`: the boxes spread evenly over the IPU from an
    /// offset that depends only on the grid's shape, so that consecutive layers with
    /// the same split find their inputs on their own tiles while grids of other
    /// shapes (small ones especially) do not all start on tile 0.
    pub(super) fn box_tile(&self, b: usize, grid: &Grid) -> u32 {
        let t = self.tiles();
        let boxes = grid.boxes().max(1);
        let (a, r, c) = (grid.imgs.len(), grid.rows.len(), grid.chans.len());
        let offset =
            (a.wrapping_mul(73_856_093) ^ r.wrapping_mul(19_349_663) ^ c.wrapping_mul(83_492_791))
                % t;
        ((b * t / boxes + offset) % t) as u32
    }

    /// A new Dist `[n][h][w][c]` split by `grid`, its boxes spread over the IPU by
    /// [`Net::box_tile`].
    pub(super) fn dist(
        &mut self,
        name: &str,
        (n, h, w, c): (usize, usize, usize, usize),
        grid: Grid,
    ) -> Result<Dist> {
        let mut parts = Vec::with_capacity(grid.boxes());
        for &(n0, n1) in &grid.imgs {
            for (ri, &(r0, r1)) in grid.rows.iter().enumerate() {
                for &(c0, c1) in &grid.chans {
                    let tile = self.box_tile(parts.len(), &grid);
                    let t = self.t(
                        format!("{name}[{n0},{r0},{c0}]"),
                        (n1 - n0) * (r1 - r0) * w * (c1 - c0),
                        tile,
                    )?;
                    parts.push(Part {
                        n0,
                        nb: n1 - n0,
                        r0,
                        rn: r1 - r0,
                        c0,
                        cn: c1 - c0,
                        ri,
                        tile,
                        t,
                    });
                }
            }
        }
        Ok(Dist {
            n,
            h,
            w,
            c,
            grid,
            parts,
        })
    }
    /// New tensors on the boxes and tiles of `d`.
    pub(super) fn like(&mut self, name: &str, d: &Dist) -> Result<Dist> {
        let mut o = d.clone();
        for p in &mut o.parts {
            p.t = self.g.add_tensor(
                format!("{name}[{},{},{}]", p.n0, p.r0, p.c0),
                p.len(d.w),
                p.tile,
            )?;
        }
        Ok(o)
    }
    /// The output of an element-wise step on `d`: `d` itself when the step may run
    /// in place, else new tensors on its boxes.
    pub(super) fn out_like(&mut self, name: &str, d: &Dist) -> Result<Dist> {
        if self.in_place() {
            Ok(d.clone())
        } else {
            self.like(name, d)
        }
    }
    /// `src` on the boxes of `to` (itself when they already agree).
    pub(super) fn align(&mut self, name: &str, src: &Dist, to: &Dist) -> Result<Dist> {
        if src.same_boxes(to) {
            return Ok(src.clone());
        }
        let d = self.like(name, to)?;
        let mut trs = Vec::new();
        for p in &d.parts {
            gather(src, p.n0, p.nb, p.r0, p.rn, p.c0, p.cn, p.t, &mut trs);
        }
        self.ex(&format!("{name}.align"), trs)?;
        Ok(d)
    }

    /// Registers a parameter of `rows` rows of `row` elements (once per name: a
    /// recomputed layer finds it again): its master value and gradient spread by rows
    /// over a round robin of tiles, at least 1024 elements and at most a sixteenth of
    /// a tile's budget per tile.
    pub(super) fn param(&mut self, name: &str, rows: usize, row: usize) -> Result<usize> {
        if let Some(&i) = self.param_index.get(name) {
            return Ok(i);
        }
        let len = rows * row;
        let rows = rows.max(1);
        let row = row.max(1);
        let max_rows = (self.budget_elems() / 16 / row).max(1);
        let min_rows = 1024usize.div_ceil(row).max(1);
        let per = rows
            .div_ceil(self.tiles())
            .clamp(min_rows.min(max_rows), max_rows);
        let mut m = Vec::new();
        for (a, b) in ranges(rows, rows.div_ceil(per)) {
            let t = self.tile();
            m.push((a * row..(b * row).min(len), t));
        }
        if len == 0 {
            m = vec![(0..0, m[0].1)];
        }
        m.retain(|(r, _)| !r.is_empty() || len == 0);
        let value = self.g.add_tensor_mapped(name.to_string(), len, m.clone())?;
        self.g.set_persistent(value);
        let grad = self.g.add_tensor_mapped(format!("{name}.grad"), len, m)?;
        self.params.push(ChainParam {
            name: name.into(),
            len,
            value,
            grad,
            copies: Vec::new(),
        });
        self.param_index
            .insert(name.to_string(), self.params.len() - 1);
        Ok(self.params.len() - 1)
    }

    /// The slice `copy` (`len` elements) of parameter `pi`'s master on `tile`: its
    /// resident copy, or (`resident` false) a transient tensor filled from the master
    /// by a transfer added to `trs` (a broadcast when several boxes need it).
    pub(super) fn weight_slice(
        &mut self,
        pi: usize,
        tile: u32,
        len: usize,
        copy: Strided,
        resident: bool,
        trs: &mut Vec<Transfer>,
    ) -> Result<TensorId> {
        if resident {
            return self.weight_copy(pi, tile, len, copy);
        }
        let t = self.t(format!("{}.slice", self.params[pi].name), len, tile)?;
        trs.push(tr(self.params[pi].value, t, copy));
        Ok(t)
    }

    /// The resident copy of the region `copy` of parameter `pi`'s master on `tile`
    /// (`len` elements), made once: forward, recomputation and backward read it with
    /// no exchange; the optimizer step refreshes it.
    pub(super) fn weight_copy(
        &mut self,
        pi: usize,
        tile: u32,
        len: usize,
        copy: Strided,
    ) -> Result<TensorId> {
        if let Some(&t) = self.copies.get(&(pi, tile, copy)) {
            return Ok(t);
        }
        let name = format!("{}@{tile}", self.params[pi].name);
        let t = self.g.add_tensor(name, len, tile)?;
        self.g.set_persistent(t);
        self.copies.insert((pi, tile, copy), t);
        self.params[pi].copies.push((t, copy));
        Ok(t)
    }

    /// Sums over rows: each job's rows are assembled from its contributions (which
    /// cover them), gathered and reduced in column pieces (on the out tile when one
    /// piece does, else each piece on one of the job's `spread` tiles, or a round
    /// robin tile, then collected into `out`). Pieces: as many as a tile's budget
    /// needs, and up to one per spread tile so that no tile receives every row.
    /// Adds one gather exchange, one reduce compute set and one collect exchange for
    /// all jobs.
    pub(super) fn sum_rows(&mut self, name: &str, jobs: Vec<SumJob>) -> Result<()> {
        let (mut ga, mut vs, mut co) = (Vec::new(), Vec::new(), Vec::new());
        for (ji, job) in jobs.into_iter().enumerate() {
            let SumJob {
                contribs,
                rows,
                width,
                out,
                out_tile,
                spread,
            } = job;
            let piece = (self.budget_elems() / (2 * (rows + 1))).max(1);
            let by_memory = width.div_ceil(piece);
            let by_spread = if rows > 1 {
                spread.len().min(rows).min(width.div_ceil(32))
            } else {
                1
            };
            let pieces = ranges(width, by_memory.max(by_spread).max(1));
            let single = pieces.len() == 1;
            for (k, (a, b)) in pieces.into_iter().enumerate() {
                let len = b - a;
                let tile = if single {
                    out_tile
                } else if spread.is_empty() {
                    self.tile()
                } else {
                    spread[k % spread.len()]
                };
                let buf = self.t(format!("{name}.gather{ji}.{a}"), rows * len, tile)?;
                let sum = if single {
                    out
                } else {
                    self.t(format!("{name}.sum{ji}.{a}"), len, tile)?
                };
                for c in &contribs {
                    let (e0, e1) = (c.col.max(a), (c.col + c.len).min(b));
                    if e0 < e1 {
                        ga.push(tr(
                            c.src,
                            buf,
                            Strided::contiguous(
                                c.src_off + e0 - c.col,
                                c.row * len + e0 - a,
                                e1 - e0,
                            ),
                        ));
                    }
                }
                vs.push((
                    tile,
                    Codelet::reduce(rows, len, false),
                    vec![fr(buf, rows * len), fr(sum, len)],
                ));
                if !single {
                    co.push(tr(sum, out, Strided::contiguous(0, a, len)));
                }
            }
        }
        self.ex(&format!("{name}.gather"), ga)?;
        self.cs(&format!("{name}.reduce"), vs)?;
        self.ex(&format!("{name}.collect"), co)
    }
}

/// One reduction of [`Net::sum_rows`]: `rows` rows of `width` elements summed into
/// `out` (`[width]`, on `out_tile`).
pub(super) struct SumJob {
    pub(super) contribs: Vec<Contrib>,
    pub(super) rows: usize,
    pub(super) width: usize,
    pub(super) out: TensorId,
    pub(super) out_tile: u32,
    /// Tiles the pieces may be reduced on (the contributors' tiles); empty: a round
    /// robin.
    pub(super) spread: Vec<u32>,
}

impl SumJob {
    /// A job reduced on `out_tile` (pieces, if the budget needs them, on a round
    /// robin of tiles).
    pub(super) fn on(
        contribs: Vec<Contrib>,
        rows: usize,
        width: usize,
        out: TensorId,
        out_tile: u32,
    ) -> SumJob {
        SumJob {
            contribs,
            rows,
            width,
            out,
            out_tile,
            spread: Vec::new(),
        }
    }
}

/// One contribution to a row of a [`Net::sum_rows`] job: `len` elements of `src` from
/// `src_off` into row `row` at column `col`.
#[derive(Copy, Clone, Debug)]
pub(super) struct Contrib {
    pub(super) src: TensorId,
    pub(super) src_off: usize,
    pub(super) row: usize,
    pub(super) col: usize,
    pub(super) len: usize,
}

pub(super) fn whole_rows(parts: &[TensorId], len: usize) -> Vec<Contrib> {
    parts
        .iter()
        .enumerate()
        .map(|(row, &src)| Contrib {
            src,
            src_off: 0,
            row,
            col: 0,
            len,
        })
        .collect()
}

/// Distinct tiles of `parts`, in order.
pub(super) fn tiles_of<'a>(parts: impl IntoIterator<Item = &'a Part>) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    parts
        .into_iter()
        .map(|p| p.tile)
        .filter(|t| seen.insert(*t))
        .collect()
}
