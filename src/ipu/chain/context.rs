//! The graph context of the chain builder: the graph under construction, the
//! forward and backward programs, the tape of backward closures, tile allocation,
//! parameters and the shared reduction helper.

use super::boxes::{Dist, Part, gather, ranges};
use crate::error::Result;
use crate::ipu::codelets::Codelet;
use crate::ipu::graph::{
    FieldRef, Graph, LayerId, LayerInfo, Program, Strided, TensorId, Transfer,
};
use crate::ipu::planner::{ConvSplit, Pass, Planner};
use crate::ipu::target::{Precision, Target};
use crate::kernels::conv::ConvShape;
use std::collections::HashMap;

/// A parameter of the chain: timm name, elements, value and gradient tensors.
#[derive(Clone, Debug)]
pub struct ChainParam {
    /// timm name (`conv_stem.weight`, `blocks.1.0.bn2.proxy_beta`, `classifier.bias`).
    pub name: String,
    /// Elements.
    pub len: usize,
    /// The value (persistent).
    pub value: TensorId,
    /// The gradient.
    pub grad: TensorId,
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
    /// Row ranges per image of its output.
    pub row_parts: usize,
    /// Channel ranges of its output.
    pub chan_parts: usize,
    /// Boxes (tiles) of its output.
    pub boxes: usize,
}

pub(super) type Bwd = Box<dyn FnOnce(&mut Net, Dist) -> Result<Dist>>;
pub(super) type Vx = (u32, Codelet, Vec<FieldRef>);

pub(super) struct Net {
    pub(super) g: Graph,
    pub(super) pl: Planner,
    pub(super) fwd: Vec<Program>,
    pub(super) bwd: Vec<Program>,
    pub(super) in_bwd: bool,
    pub(super) layer: LayerId,
    pub(super) next: usize,
    pub(super) params: Vec<ChainParam>,
    pub(super) eps: f32,
    pub(super) tape: Vec<Bwd>,
    pub(super) splits: Vec<LayerSplit>,
    pub(super) cap: usize,
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
    pub(super) fn new(target: &Target, precision: Precision, eps: f32) -> Result<Net> {
        let mut g = Graph::new(target.clone(), precision)?;
        let layer = g.add_layer(LayerInfo {
            name: "input".into(),
            kind: "stem",
            pass: "fwd",
            flops: 0.0,
        });
        Ok(Net {
            g,
            pl: Planner::new(target.clone(), precision),
            fwd: Vec::new(),
            bwd: Vec::new(),
            in_bwd: false,
            layer,
            next: 0,
            params: Vec::new(),
            eps,
            tape: Vec::new(),
            splits: Vec::new(),
            cap: (target.tiles / 4).max(1),
        })
    }
    pub(super) fn tile(&mut self) -> u32 {
        let t = self.next % self.g.target.tiles;
        self.next += 1;
        t as u32
    }
    pub(super) fn t(&mut self, name: String, len: usize, tile: u32) -> Result<TensorId> {
        self.g.add_tensor(name, len, tile)
    }
    pub(super) fn konst(&mut self, name: String, v: Vec<f32>, tile: u32) -> Result<TensorId> {
        let t = self.g.add_tensor(name, v.len(), tile)?;
        self.g.set_init(t, v)?;
        Ok(t)
    }
    pub(super) fn eb(&self) -> usize {
        self.g.precision.bytes()
    }
    pub(super) fn budget_elems(&self) -> usize {
        self.g.target.budget_bytes() / self.eb()
    }
    pub(super) fn layer(&mut self, name: &str, kind: &'static str, flops: f64) {
        self.layer = self.g.add_layer(LayerInfo {
            name: name.into(),
            kind,
            pass: if self.in_bwd { "bwd" } else { "fwd" },
            flops,
        });
    }
    pub(super) fn prog(&mut self, p: Program) {
        if self.in_bwd {
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
    pub(super) fn ex(&mut self, name: &str, trs: Vec<Transfer>) -> Result<()> {
        if trs.is_empty() {
            return Ok(());
        }
        let e = self.g.add_exchange(name, self.layer, trs)?;
        self.prog(Program::Exchange(e));
        Ok(())
    }

    /// A new Dist of fresh tiles: every image × `ph` row ranges × `pc` channel ranges
    /// (multiples of `align`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dist(
        &mut self,
        name: &str,
        n: usize,
        h: usize,
        w: usize,
        c: usize,
        ph: usize,
        pc: usize,
        align: usize,
    ) -> Result<Dist> {
        let rr = ranges(h, ph);
        let cr: Vec<(usize, usize)> = ranges(c / align, pc)
            .into_iter()
            .map(|(a, b)| (a * align, b * align))
            .collect();
        let mut parts = Vec::new();
        for i in 0..n {
            for (ri, &(r0, r1)) in rr.iter().enumerate() {
                for &(c0, c1) in &cr {
                    let tile = self.tile();
                    let t = self.t(
                        format!("{name}[{i},{r0},{c0}]"),
                        (r1 - r0) * w * (c1 - c0),
                        tile,
                    )?;
                    parts.push(Part {
                        n0: i,
                        nb: 1,
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
            rparts: rr.len(),
            parts,
        })
    }
    /// New tensors on the boxes and tiles of `d`.
    pub(super) fn like(&mut self, name: &str, d: &Dist) -> Result<Dist> {
        let mut o = d.clone();
        for p in &mut o.parts {
            p.t = self.g.add_tensor(
                format!("{name}[{},{},{}]", p.n0, p.r0, p.c0),
                p.nb * p.rn * d.w * p.cn,
                p.tile,
            )?;
        }
        Ok(o)
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

    /// Registers a parameter of `rows` rows of `row` elements, spread by rows over
    /// fresh tiles (a quarter of a tile's budget each), or on `tile`.
    pub(super) fn param(
        &mut self,
        name: &str,
        rows: usize,
        row: usize,
        tile: Option<u32>,
    ) -> Result<usize> {
        let len = rows * row;
        let per = (self.budget_elems() / 4 / row.max(1)).max(1);
        let mut maps = Vec::new();
        for _ in 0..2 {
            let mut m = Vec::new();
            if let Some(t) = tile {
                m.push((0..len, t));
            } else {
                for (a, b) in ranges(rows.max(1), rows.max(1).div_ceil(per)) {
                    let t = self.tile();
                    m.push((a * row..(b * row).min(len), t));
                }
                if len == 0 {
                    m = vec![(0..0, m[0].1)];
                }
            }
            maps.push(m);
        }
        let value = self
            .g
            .add_tensor_mapped(name.to_string(), len, maps[0].clone())?;
        self.g.set_persistent(value);
        let grad = self
            .g
            .add_tensor_mapped(format!("{name}.grad"), len, maps[1].clone())?;
        self.params.push(ChainParam {
            name: name.into(),
            len,
            value,
            grad,
        });
        Ok(self.params.len() - 1)
    }

    /// Sums over rows: each job is (contributions, rows, width, out tensor `[width]`,
    /// its tile); a job's rows are assembled from its contributions (which cover
    /// them), gathered and reduced in column pieces that fit a tile (on the out
    /// tile when one piece does, else each on a fresh tile, then collected). Adds one
    /// gather exchange, one reduce compute set and one collect exchange for all jobs.
    pub(super) fn sum_rows(
        &mut self,
        name: &str,
        jobs: Vec<(Vec<Contrib>, usize, usize, TensorId, u32)>,
    ) -> Result<()> {
        let (mut ga, mut vs, mut co) = (Vec::new(), Vec::new(), Vec::new());
        for (ji, (cs, rows, width, out, out_tile)) in jobs.into_iter().enumerate() {
            let piece = (self.budget_elems() / (2 * (rows + 1))).max(1);
            let pieces = ranges(width, width.div_ceil(piece));
            let single = pieces.len() == 1;
            for (a, b) in pieces {
                let len = b - a;
                let tile = if single { out_tile } else { self.tile() };
                let buf = self.t(format!("{name}.gather{ji}.{a}"), rows * len, tile)?;
                let sum = if single {
                    out
                } else {
                    self.t(format!("{name}.sum{ji}.{a}"), len, tile)?
                };
                for c in &cs {
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

    /// The planner's split of a convolution (one image per box): the lowest estimated
    /// forward cycles among the splits that fit, at most `cap` boxes.
    pub(super) fn conv_split(&self, s: &ConvShape) -> Result<ConvSplit> {
        let n = s.desc.batch;
        let mut best: Option<(ConvSplit, u64)> = None;
        for sp in self.pl.conv_splits(s) {
            if sp.pci != 1 || sp.pn != 1 || n * sp.tiles() > self.cap.max(n) {
                continue;
            }
            if let Some(c) = self.pl.conv_cost(s, &sp, Pass::Fwd)?
                && best.is_none_or(|b| c.total() < b.1)
            {
                best = Some((sp, c.total()));
            }
        }
        match best {
            Some((sp, _)) => Ok(sp),
            None => self.pl.plan_conv(s, Pass::Fwd).map(|r| r.0),
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
