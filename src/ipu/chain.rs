//! The whole network as **one program** on the model: stem → every MBConv block →
//! head conv + norm/act → global pool → classifier → softmax cross-entropy, then the
//! complete backward (the weight gradient of every layer), each layer fed by the
//! previous layer's output where it lies on the model's tiles.
//!
//! Every activation is a [`Dist`]: boxes of (images, rows, channels) on tiles. A
//! convolution gathers its input windows (with their halo rows) from the previous
//! layer's boxes by one exchange and writes its output in its own split, chosen by the
//! [`Planner`] (output rows × output channels or whole groups, one image per box)
//! within the tile budget: a layer whose activations do not fit one tile per image is
//! split over more tiles, never skipped. Norms, activations, squeeze-excitation and
//! skip additions run in place on the boxes of the convolution before them; their
//! statistics (per image for GN/LN, over the batch for BN) are partial sums per box,
//! gathered and reduced on a tile and broadcast back. Parameters (timm names, effnet
//! layouts, see [`ChainParams`]) live spread over their own tiles; each box receives
//! the slice it needs; weight-gradient partials are reduced over the boxes in pieces
//! that fit a tile.
//!
//! [`build`] builds the graph without any tensor data (sizes and mappings only: what
//! `effnet ipu report` profiles); [`run`] builds, profiles and executes it.

use super::codelets::{Codelet, ConvGeom, NormGeom, ProxyScale, SHIM_WORKERS};
use super::graph::{
    Engine, FieldRef, Graph, LayerId, LayerInfo, Profile, Program, Strided, TensorId, Transfer,
};
use super::network::NormSpec;
use super::planner::{ConvSplit, Pass, Planner};
use super::reference::proxy_quantiles;
use super::target::{Precision, Target};
use crate::arch::{ArchConfig, LayerRole, NormKind};
use crate::error::{Error, Result};
use crate::kernels::conv::ConvShape;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// `n` split into at most `parts` contiguous ranges of equal length (the last may be
/// shorter).
pub fn ranges(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let chunk = n.div_ceil(parts.max(1)).max(1);
    (0..n)
        .step_by(chunk)
        .map(|a| (a, (a + chunk).min(n)))
        .collect()
}

/// One box of a [`Dist`]: images `n0..n0+nb`, rows `r0..r0+rn`, every column,
/// channels `c0..c0+cn`, stored `[nb][rn][w][cn]` in tensor `t` on `tile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// First image.
    pub n0: usize,
    /// Images.
    pub nb: usize,
    /// First row.
    pub r0: usize,
    /// Rows.
    pub rn: usize,
    /// First channel.
    pub c0: usize,
    /// Channels.
    pub cn: usize,
    /// Index of the row range among the Dist's row ranges.
    pub ri: usize,
    /// Tile.
    pub tile: u32,
    /// Tensor.
    pub t: TensorId,
}

/// An NHWC activation `[n][h][w][c]` held as boxes on tiles.
#[derive(Clone, Debug)]
pub struct Dist {
    /// Images.
    pub n: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Row ranges per image.
    pub rparts: usize,
    /// The boxes.
    pub parts: Vec<Part>,
}

impl Dist {
    fn same_boxes(&self, o: &Dist) -> bool {
        self.parts.len() == o.parts.len()
            && self.parts.iter().zip(&o.parts).all(|(a, b)| {
                (a.n0, a.nb, a.r0, a.rn, a.c0, a.cn, a.tile)
                    == (b.n0, b.nb, b.r0, b.rn, b.c0, b.cn, b.tile)
            })
    }
}

/// Transfers copying the box (images `n0..n0+nb`, rows `r0..r0+rn`, channels
/// `c0..c0+cn`, every column) of `src` into `dst`, laid out `[nb][rn][w][cn]`.
#[allow(clippy::too_many_arguments)]
pub fn gather(
    src: &Dist,
    n0: usize,
    nb: usize,
    r0: usize,
    rn: usize,
    c0: usize,
    cn: usize,
    dst: TensorId,
    out: &mut Vec<Transfer>,
) {
    let w = src.w;
    for p in &src.parts {
        let (a0, a1) = (n0.max(p.n0), (n0 + nb).min(p.n0 + p.nb));
        let (b0, b1) = (r0.max(p.r0), (r0 + rn).min(p.r0 + p.rn));
        let (e0, e1) = (c0.max(p.c0), (c0 + cn).min(p.c0 + p.cn));
        if a0 >= a1 || b0 >= b1 || e0 >= e1 {
            continue;
        }
        let src_offset = ((a0 - p.n0) * p.rn + (b0 - p.r0)) * w * p.cn + (e0 - p.c0);
        let dst_offset = ((a0 - n0) * rn + (b0 - r0)) * w * cn + (e0 - c0);
        let copy = if e1 - e0 == p.cn && p.cn == cn {
            Strided {
                src_offset,
                dst_offset,
                counts: [1, 1, a1 - a0, (b1 - b0) * w * cn],
                src_strides: [0, 0, p.rn * w * cn],
                dst_strides: [0, 0, rn * w * cn],
            }
        } else {
            Strided {
                src_offset,
                dst_offset,
                counts: [a1 - a0, b1 - b0, w, e1 - e0],
                src_strides: [p.rn * w * p.cn, w * p.cn, p.cn],
                dst_strides: [rn * w * cn, w * cn, cn],
            }
        };
        out.push(Transfer {
            src: p.t,
            dsts: vec![dst],
            copy,
        });
    }
}

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

/// A built chain: the graph, the forward and backward programs and the tensors the
/// host reads and writes.
pub struct Chain {
    /// The graph.
    pub graph: Graph,
    /// Forward program.
    pub fwd: Program,
    /// Backward program.
    pub bwd: Program,
    /// The input image `[N][res][res][3]` as boxes.
    pub input: Dist,
    /// The one-hot targets `[N][classes]`.
    pub targets: TensorId,
    /// Logits `[N][classes]`.
    pub logits: TensorId,
    /// Mean loss `[1]`.
    pub loss: TensorId,
    /// Parameters in network order.
    pub params: Vec<ChainParam>,
    /// Per convolution (and the classifier), its split.
    pub splits: Vec<LayerSplit>,
}

type Bwd = Box<dyn FnOnce(&mut Net, Dist) -> Result<Dist>>;
type Vx = (u32, Codelet, Vec<FieldRef>);

struct Net {
    g: Graph,
    pl: Planner,
    fwd: Vec<Program>,
    bwd: Vec<Program>,
    in_bwd: bool,
    layer: LayerId,
    next: usize,
    params: Vec<ChainParam>,
    eps: f32,
    tape: Vec<Bwd>,
    splits: Vec<LayerSplit>,
    cap: usize,
}

fn fr(t: TensorId, len: usize) -> FieldRef {
    FieldRef::whole(t, len)
}

/// A strided copy of `rows` rows of `len` elements between row strides.
fn rows_copy(
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

fn tr(src: TensorId, dst: TensorId, copy: Strided) -> Transfer {
    Transfer {
        src,
        dsts: vec![dst],
        copy,
    }
}

impl Net {
    fn new(target: &Target, precision: Precision, eps: f32) -> Result<Net> {
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
    fn tile(&mut self) -> u32 {
        let t = self.next % self.g.target.tiles;
        self.next += 1;
        t as u32
    }
    fn t(&mut self, name: String, len: usize, tile: u32) -> Result<TensorId> {
        self.g.add_tensor(name, len, tile)
    }
    fn konst(&mut self, name: String, v: Vec<f32>, tile: u32) -> Result<TensorId> {
        let t = self.g.add_tensor(name, v.len(), tile)?;
        self.g.set_init(t, v)?;
        Ok(t)
    }
    fn eb(&self) -> usize {
        self.g.precision.bytes()
    }
    fn budget_elems(&self) -> usize {
        self.g.target.budget_bytes() / self.eb()
    }
    fn layer(&mut self, name: &str, kind: &'static str, flops: f64) {
        self.layer = self.g.add_layer(LayerInfo {
            name: name.into(),
            kind,
            pass: if self.in_bwd { "bwd" } else { "fwd" },
            flops,
        });
    }
    fn prog(&mut self, p: Program) {
        if self.in_bwd {
            self.bwd.push(p)
        } else {
            self.fwd.push(p)
        }
    }
    fn cs(&mut self, name: &str, vs: Vec<Vx>) -> Result<()> {
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
    fn ex(&mut self, name: &str, trs: Vec<Transfer>) -> Result<()> {
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
    fn dist(
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
    fn like(&mut self, name: &str, d: &Dist) -> Result<Dist> {
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
    fn align(&mut self, name: &str, src: &Dist, to: &Dist) -> Result<Dist> {
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
    fn param(&mut self, name: &str, rows: usize, row: usize, tile: Option<u32>) -> Result<usize> {
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
    fn sum_rows(
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
    fn conv_split(&self, s: &ConvShape) -> Result<ConvSplit> {
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

/// One convolution of the network: forward now, backward pushed on the tape.
fn conv(
    net: &mut Net,
    name: &str,
    kind: &'static str,
    s: ConvShape,
    x: &Dist,
    need_dx: bool,
) -> Result<Dist> {
    let d = s.desc;
    let (h, w, ci, co) = (d.in_h, d.in_w, d.in_channels, d.out_channels);
    let (oh, ow) = (s.out_h, s.out_w);
    let (kh, st, pt) = (d.kernel_h, d.stride_h, d.padding.top);
    let kk = kh * d.kernel_w;
    let (cig, cog) = (d.group_size, s.cout_per_group);
    let grouped = s.groups > 1;
    let depthwise = cig == 1 && ci == co && grouped;
    let wp = net.param(&format!("{name}.weight"), kk * cig, co, None)?;
    let sp = net.conv_split(&s)?;
    net.layer(name, kind, s.flops());
    let y = net.dist(
        &format!("{name}.out"),
        d.batch,
        oh,
        ow,
        co,
        sp.ph,
        sp.pc,
        if grouped { cog } else { 1 },
    )?;
    net.splits.push(LayerSplit {
        name: name.into(),
        row_parts: y.rparts,
        chan_parts: y.parts.len() / (y.n * y.rparts),
        boxes: y.parts.len(),
    });
    // Per output box: its geometry, input channel range and weight slice copy.
    let geom_of = move |p: &Part| -> (ConvGeom, usize, usize) {
        let (a, b) = (p.r0, p.r0 + p.rn);
        let lo = (a * st).saturating_sub(pt).min(h - 1);
        let hi = ((b - 1) * st + kh).saturating_sub(pt).min(h).max(lo + 1);
        let (groups, cin_g, cout_g, i0, icn) = if grouped {
            let g0 = p.c0 / cog;
            let ng = p.cn / cog;
            (ng, cig, cog, g0 * cig, ng * cig)
        } else {
            (1, ci, p.cn, 0, ci)
        };
        (
            ConvGeom {
                nb: p.nb,
                in_h0: lo,
                in_hn: hi - lo,
                in_w0: 0,
                in_wn: w,
                out_h0: a,
                out_hn: b - a,
                out_w0: 0,
                out_wn: ow,
                kh,
                kw: d.kernel_w,
                stride: st,
                pad_t: pt,
                pad_l: d.padding.left,
                groups,
                cin_g,
                cout_g,
            },
            i0,
            icn,
        )
    };
    let wv = net.params[wp].value;
    let mut trs = Vec::new();
    let mut vs = Vec::new();
    let mut wslices = Vec::new();
    for p in &y.parts {
        let (g, i0, icn) = geom_of(p);
        let xw = net.t(format!("{name}.xwin"), g.in_len(), p.tile)?;
        gather(x, p.n0, p.nb, g.in_h0, g.in_hn, i0, icn, xw, &mut trs);
        let wl = net.t(format!("{name}.wslice"), g.w_len(), p.tile)?;
        trs.push(tr(wv, wl, rows_copy(p.c0, co, 0, p.cn, kk * cig, p.cn)));
        wslices.push(wl);
        let cd = if depthwise {
            Codelet::dw_vmac(g)
        } else {
            Codelet::conv_amp(g)
        };
        vs.push((
            p.tile,
            cd,
            vec![fr(xw, g.in_len()), fr(wl, g.w_len()), fr(p.t, g.out_len())],
        ));
    }
    net.ex(&format!("{name}.in"), trs)?;
    net.cs(&format!("{name}.fwd"), vs)?;
    let (x, y2, name) = (x.clone(), y.clone(), name.to_string());
    net.tape.push(Box::new(move |net: &mut Net, dy: Dist| {
        let y = y2;
        net.layer(&name, kind, 2.0 * s.flops());
        let dy = net.align(&format!("{name}.dy"), &dy, &y)?;
        // Weight gradient per box, from a fresh input window.
        let (mut trs, mut vs, mut vs2) = (Vec::new(), Vec::new(), Vec::new());
        let mut partials: Vec<(usize, usize, TensorId)> = Vec::new();
        for p in dy.parts.iter() {
            let (g, i0, icn) = geom_of(p);
            let xw = net.t(format!("{name}.xwin_bwd"), g.in_len(), p.tile)?;
            gather(&x, p.n0, p.nb, g.in_h0, g.in_hn, i0, icn, xw, &mut trs);
            let part = net.t(format!("{name}.dwpart"), g.w_len(), p.tile)?;
            if depthwise {
                let wk = net.t(
                    format!("{name}.dwworkers"),
                    SHIM_WORKERS * g.w_len(),
                    p.tile,
                )?;
                vs.push((
                    p.tile,
                    Codelet::dw_vmac_wgrad(g),
                    vec![
                        fr(xw, g.in_len()),
                        fr(p.t, g.out_len()),
                        fr(wk, SHIM_WORKERS * g.w_len()),
                    ],
                ));
                vs2.push((
                    p.tile,
                    Codelet::reduce(SHIM_WORKERS, g.w_len(), false),
                    vec![fr(wk, SHIM_WORKERS * g.w_len()), fr(part, g.w_len())],
                ));
            } else {
                vs.push((
                    p.tile,
                    Codelet::conv_wgrad_amp(g),
                    vec![
                        fr(xw, g.in_len()),
                        fr(p.t, g.out_len()),
                        fr(part, g.w_len()),
                    ],
                ));
            }
            partials.push((p.c0, p.cn, part));
        }
        net.ex(&format!("{name}.x_bwd"), trs)?;
        net.cs(&format!("{name}.wgrad"), vs)?;
        net.cs(&format!("{name}.wgrad_workers"), vs2)?;
        // Reduce the partials of each output-channel range over images and rows.
        let wgrad = net.params[wp].grad;
        let mut chans: Vec<(usize, usize)> = partials.iter().map(|p| (p.0, p.1)).collect();
        chans.sort_unstable();
        chans.dedup();
        let mut jobs = Vec::new();
        let mut outs = Vec::new();
        for (c0, cn) in chans {
            let ts: Vec<TensorId> = partials
                .iter()
                .filter(|p| (p.0, p.1) == (c0, cn))
                .map(|p| p.2)
                .collect();
            let tile = net.tile();
            let len = kk * cig * cn;
            let sum = net.t(format!("{name}.dw{c0}"), len, tile)?;
            jobs.push((whole_rows(&ts, len), ts.len(), len, sum, tile));
            outs.push(tr(sum, wgrad, rows_copy(0, cn, c0, co, kk * cig, cn)));
        }
        net.sum_rows(&format!("{name}.dw"), jobs)?;
        net.ex(&format!("{name}.dw_out"), outs)?;
        if !need_dx {
            return Ok(dy);
        }
        // Backward data over the input rows and channel ranges of the forward split.
        let pc = y.parts.len() / (y.n * y.rparts);
        let dx = net.dist(
            &format!("{name}.dx"),
            d.batch,
            h,
            w,
            ci,
            y.rparts,
            pc,
            if grouped { cig } else { 1 },
        )?;
        let (mut trs, mut vs) = (Vec::new(), Vec::new());
        for p in &dx.parts {
            let (a, b) = (p.r0, p.r0 + p.rn);
            let oa = (a + pt).saturating_sub(kh - 1).div_ceil(st).min(oh);
            let ob = ((b - 1 + pt) / st + 1).min(oh).max(oa);
            let (groups, cin_g, cout_g, o0, ocn) = if grouped {
                let ng = p.cn / cig;
                (ng, cig, cog, p.c0 / cig * cog, ng * cog)
            } else {
                (1, p.cn, co, 0, co)
            };
            let g = ConvGeom {
                nb: p.nb,
                in_h0: a,
                in_hn: b - a,
                in_w0: 0,
                in_wn: w,
                out_h0: oa,
                out_hn: ob - oa,
                out_w0: 0,
                out_wn: ow,
                kh,
                kw: d.kernel_w,
                stride: st,
                pad_t: pt,
                pad_l: d.padding.left,
                groups,
                cin_g,
                cout_g,
            };
            let dyw = net.t(format!("{name}.dywin"), g.out_len(), p.tile)?;
            gather(&dy, p.n0, p.nb, oa, ob - oa, o0, ocn, dyw, &mut trs);
            let wl = net.t(format!("{name}.wslice_bwd"), g.w_len(), p.tile)?;
            let copy = if grouped {
                rows_copy(o0, co, 0, ocn, kk * cig, ocn)
            } else {
                rows_copy(p.c0 * co, ci * co, 0, p.cn * co, kk, p.cn * co)
            };
            trs.push(tr(wv, wl, copy));
            let cd = if depthwise {
                Codelet::dw_vmac_bwd_data(g)
            } else {
                Codelet::conv_amp_bwd_data(g)
            };
            vs.push((
                p.tile,
                cd,
                vec![fr(dyw, g.out_len()), fr(wl, g.w_len()), fr(p.t, g.in_len())],
            ));
        }
        net.ex(&format!("{name}.dy_in"), trs)?;
        net.cs(&format!("{name}.bwd_data"), vs)?;
        Ok(dx)
    }));
    Ok(y)
}

/// One contribution to a row of a [`Net::sum_rows`] job: `len` elements of `src` from
/// `src_off` into row `row` at column `col`.
#[derive(Copy, Clone, Debug)]
struct Contrib {
    src: TensorId,
    src_off: usize,
    row: usize,
    col: usize,
    len: usize,
}

fn whole_rows(parts: &[TensorId], len: usize) -> Vec<Contrib> {
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

/// Per-part local copies of a norm's per-channel vectors.
#[derive(Clone)]
struct NormLocal {
    stats: TensorId,
    gamma: TensorId,
    beta: TensorId,
    mu: TensorId,
    scale: TensorId,
}

/// The statistics groups of a norm over `d`: per image (GN, LN) or one (BN); each
/// part's row in its group's buffer.
fn stat_groups(d: &Dist, per_sample: bool) -> (usize, usize, Vec<(usize, usize)>) {
    let groups = if per_sample { d.n } else { 1 };
    let rows = if per_sample { d.rparts } else { d.n * d.rparts };
    let at = d
        .parts
        .iter()
        .map(|p| {
            if per_sample {
                (p.n0, p.ri)
            } else {
                (0, p.n0 * d.rparts + p.ri)
            }
        })
        .collect();
    (groups, rows, at)
}

/// Gathers per-part `[cn·k]` vectors into per-group buffers `[rows][C·k]`, reduces
/// them, and returns the reduced `[C·k]` per group (on the group tiles).
fn group_sums(
    net: &mut Net,
    name: &str,
    d: &Dist,
    per_sample: bool,
    vals: &[TensorId],
    k: usize,
) -> Result<(Vec<TensorId>, Vec<u32>)> {
    let (groups, rows, pos) = stat_groups(d, per_sample);
    let c = d.c;
    let mut sums = Vec::new();
    let mut tiles = Vec::new();
    let mut jobs = Vec::new();
    for gi in 0..groups {
        let tile = net.tile();
        let sum = net.t(format!("{name}.sum{gi}"), c * k, tile)?;
        let cs = d
            .parts
            .iter()
            .zip(vals)
            .zip(&pos)
            .filter(|(_, (g, _))| *g == gi)
            .map(|((p, v), (_, row))| Contrib {
                src: *v,
                src_off: 0,
                row: *row,
                col: p.c0 * k,
                len: p.cn * k,
            })
            .collect();
        jobs.push((cs, rows, c * k, sum, tile));
        sums.push(sum);
        tiles.push(tile);
    }
    net.sum_rows(name, jobs)?;
    Ok((sums, tiles))
}

/// Where the squeeze-excitation's backward leaves the delayed scale's gradient
/// (`[cc]` per channel range: tensor, first channel, channels) for the norm before it.
type DsCell = Rc<RefCell<Option<Vec<(TensorId, usize, usize)>>>>;

/// What a norm hands to the squeeze-excitation after it when its proxy scale is
/// delayed into the SE gate: the scale `s` `[C]` on the norm's tile and the cell for
/// its gradient.
type Delayed = Option<(TensorId, DsCell)>;

/// A norm (+ activation, + Proxy Norm) in place on the boxes of `x`.
fn norm(net: &mut Net, name: &str, ns: NormSpec, x: &Dist) -> Result<(Dist, Delayed)> {
    let c = x.c;
    let cg = ns.cg.max(1);
    let groups = c / cg;
    let home = net.tile();
    let gp = net.param(&format!("{name}.weight"), 1, c, Some(home))?;
    let bp = if ns.beta {
        Some(net.param(&format!("{name}.bias"), 1, c, Some(home))?)
    } else {
        None
    };
    let pp = if ns.proxy {
        Some((
            net.param(&format!("{name}.proxy_beta"), 1, c, Some(home))?,
            net.param(&format!("{name}.proxy_gamma"), 1, c, Some(home))?,
        ))
    } else {
        None
    };
    net.layer(name, "norm", (x.n * x.h * x.w * c) as f64 * 10.0);
    let pv = |net: &Net, i: usize| net.params[i].value;
    let (g_t, b_t) = (pv(net, gp), bp.map(|b| pv(net, b)));
    let zeros = net.konst(format!("{name}.zeros"), vec![0.0; c], home)?;
    let ones = net.konst(format!("{name}.ones"), vec![1.0; c], home)?;
    // Proxy statistics (μ, s) on the norm's tile.
    let q: Vec<f32> = proxy_quantiles(200).iter().map(|&v| v as f32).collect();
    let qt = net.konst(format!("{name}.quantiles"), q, home)?;
    let (mu, sc) = if let Some((b2, g2)) = pp {
        let (b2, g2) = (pv(net, b2), pv(net, g2));
        let parts = net.t(format!("{name}.pn_partials"), SHIM_WORKERS * c * 2, home)?;
        let sums = net.t(format!("{name}.pn_sums"), c * 2, home)?;
        let mu = net.t(format!("{name}.mu"), c, home)?;
        let sc = net.t(format!("{name}.s"), c, home)?;
        let bt = b_t.unwrap_or(zeros);
        net.cs(
            &format!("{name}.proxy_stats"),
            vec![(
                home,
                Codelet::proxy_stats(c, 200, ns.act),
                vec![
                    fr(g_t, c),
                    fr(bt, c),
                    fr(b2, c),
                    fr(g2, c),
                    fr(qt, 200),
                    fr(parts, SHIM_WORKERS * c * 2),
                ],
            )],
        )?;
        net.cs(
            &format!("{name}.proxy_reduce"),
            vec![(
                home,
                Codelet::reduce(SHIM_WORKERS, c * 2, false),
                vec![fr(parts, SHIM_WORKERS * c * 2), fr(sums, c * 2)],
            )],
        )?;
        net.cs(
            &format!("{name}.proxy_finalize"),
            vec![(
                home,
                Codelet::proxy_finalize(c, 200, 0.03),
                vec![fr(sums, c * 2), fr(mu, c), fr(sc, c)],
            )],
        )?;
        (mu, sc)
    } else {
        (zeros, ones)
    };
    let norm_scale = if ns.proxy && ns.scale == ProxyScale::Full {
        sc
    } else {
        ones
    };
    let ds_cell: DsCell = Rc::new(RefCell::new(None));
    let delayed = (ns.proxy && ns.scale == ProxyScale::Delayed).then(|| (sc, ds_cell.clone()));
    // Statistics per part, reduced per group, broadcast back with the parameters.
    let mut vs = Vec::new();
    let mut psums = Vec::new();
    for p in &x.parts {
        let s = net.t(format!("{name}.psums"), p.nb * p.cn * 2, p.tile)?;
        vs.push((
            p.tile,
            Codelet::norm_stats(p.nb, p.rn * x.w, p.cn),
            vec![fr(p.t, p.nb * p.rn * x.w * p.cn), fr(s, p.nb * p.cn * 2)],
        ));
        psums.push(s);
    }
    net.cs(&format!("{name}.stats"), vs)?;
    let (sums, gtiles) = group_sums(net, &format!("{name}.stats"), x, ns.per_sample, &psums, 2)?;
    let per_img = if ns.per_sample { 1 } else { x.n };
    let count = per_img * x.h * x.w * cg;
    let mut vs = Vec::new();
    let mut stats = Vec::new();
    for (gi, s) in sums.iter().enumerate() {
        let st = net.t(format!("{name}.stats{gi}"), groups * 2, gtiles[gi])?;
        vs.push((
            gtiles[gi],
            Codelet::norm_finalize(1, c, cg, count, net.eps),
            vec![fr(*s, c * 2), fr(st, groups * 2)],
        ));
        stats.push(st);
    }
    net.cs(&format!("{name}.finalize"), vs)?;
    let (_, _, pos) = stat_groups(x, ns.per_sample);
    let mut trs = Vec::new();
    let mut locals = Vec::new();
    for (p, (gi, _)) in x.parts.iter().zip(&pos) {
        let mut mk = |net: &mut Net, what: &str, src: TensorId, off: usize, len: usize| {
            let t = net.t(format!("{name}.{what}@"), len, p.tile)?;
            trs.push(tr(src, t, Strided::contiguous(off, 0, len)));
            Ok::<_, Error>(t)
        };
        let l = NormLocal {
            stats: mk(net, "stats", stats[*gi], 0, groups * 2)?,
            gamma: mk(net, "gamma", g_t, p.c0, p.cn)?,
            beta: mk(net, "beta", b_t.unwrap_or(zeros), p.c0, p.cn)?,
            mu: mk(net, "mu", mu, p.c0, p.cn)?,
            scale: mk(net, "scale", norm_scale, p.c0, p.cn)?,
        };
        locals.push(l);
    }
    net.ex(&format!("{name}.broadcast"), trs)?;
    let z = net.like(&format!("{name}.out"), x)?;
    let xw = x.w;
    let geom = move |p: &Part| NormGeom {
        nb: p.nb,
        pix: p.rn * xw,
        c: p.cn,
        c0: p.c0,
        groups,
        cg,
        per_sample: ns.per_sample,
        act: ns.act,
    };
    let fields = move |p: &Part, l: &NormLocal| {
        let n = p.nb * p.rn * xw * p.cn;
        vec![
            fr(p.t, n),
            fr(l.stats, groups * 2),
            fr(l.gamma, p.cn),
            fr(l.beta, p.cn),
            fr(l.mu, p.cn),
            fr(l.scale, p.cn),
        ]
    };
    let vs = x
        .parts
        .iter()
        .zip(&z.parts)
        .zip(&locals)
        .map(|((p, zp), l)| {
            let mut f = fields(p, l);
            f.push(fr(zp.t, p.nb * p.rn * x.w * p.cn));
            (p.tile, Codelet::norm_act(geom(p)), f)
        })
        .collect();
    net.cs(&format!("{name}.apply"), vs)?;
    let ds_in = ds_cell;
    let (x, z2, name) = (x.clone(), z.clone(), name.to_string());
    net.tape.push(Box::new(move |net: &mut Net, dz: Dist| {
        net.layer(&name, "norm", (x.n * x.h * x.w * c) as f64 * 20.0);
        let dz = net.align(&format!("{name}.dz"), &dz, &z2)?;
        let (mut vs, mut pimg, mut pch) = (Vec::new(), Vec::new(), Vec::new());
        for ((p, l), d) in x.parts.iter().zip(&locals).zip(&dz.parts) {
            let n = p.nb * p.rn * x.w * p.cn;
            let a = net.t(format!("{name}.grad_image"), p.nb * p.cn * 2, p.tile)?;
            let b = net.t(format!("{name}.grad_channel"), p.cn * 4, p.tile)?;
            let mut f = fields(p, l);
            f.push(fr(d.t, n));
            f.push(fr(a, p.nb * p.cn * 2));
            f.push(fr(b, p.cn * 4));
            vs.push((p.tile, Codelet::norm_act_grad_partials(geom(p)), f));
            pimg.push(a);
            pch.push(b);
        }
        net.cs(&format!("{name}.grad_partials"), vs)?;
        let (gsums, gtiles) =
            group_sums(net, &format!("{name}.grad"), &x, ns.per_sample, &pimg, 2)?;
        let mut vs = Vec::new();
        let mut means = Vec::new();
        for (gi, s) in gsums.iter().enumerate() {
            let m = net.t(format!("{name}.grad_means{gi}"), groups * 2, gtiles[gi])?;
            vs.push((
                gtiles[gi],
                Codelet::norm_grad_finalize(1, c, cg, count),
                vec![fr(*s, c * 2), fr(m, groups * 2)],
            ));
            means.push(m);
        }
        net.cs(&format!("{name}.grad_finalize"), vs)?;
        let mut trs = Vec::new();
        let mut lm = Vec::new();
        for (p, (gi, _)) in x.parts.iter().zip(&pos) {
            let t = net.t(format!("{name}.grad_means@"), groups * 2, p.tile)?;
            trs.push(tr(means[*gi], t, Strided::contiguous(0, 0, groups * 2)));
            lm.push(t);
        }
        net.ex(&format!("{name}.grad_broadcast"), trs)?;
        let dx = net.like(&format!("{name}.dx"), &x)?;
        let vs = x
            .parts
            .iter()
            .zip(&locals)
            .zip(&dz.parts)
            .zip(&lm)
            .zip(&dx.parts)
            .map(|((((p, l), d), m), o)| {
                let n = p.nb * p.rn * x.w * p.cn;
                let mut f = fields(p, l);
                f.push(fr(d.t, n));
                f.push(fr(*m, groups * 2));
                f.push(fr(o.t, n));
                (p.tile, Codelet::norm_act_grad_apply(geom(p)), f)
            })
            .collect();
        net.cs(&format!("{name}.grad_apply"), vs)?;
        // Per-channel sums over every part, on the norm's tile.
        let rows = x.n * x.rparts;
        let csum = net.t(format!("{name}.channel_sums"), c * 4, home)?;
        let cs = x
            .parts
            .iter()
            .zip(&pch)
            .map(|(p, b)| Contrib {
                src: *b,
                src_off: 0,
                row: p.n0 * x.rparts + p.ri,
                col: p.c0 * 4,
                len: p.cn * 4,
            })
            .collect();
        net.sum_rows(
            &format!("{name}.channel"),
            vec![(cs, rows, c * 4, csum, home)],
        )?;
        if let Some(ds) = ds_in.borrow_mut().take() {
            // The delayed scale's gradient (summed over the images) replaces
            // Σ dz·(a−μ) in slot 0 (see `ProxyNormParamGrad`).
            let trs = ds
                .into_iter()
                .map(|(t, c0, cn)| tr(t, csum, rows_copy(0, 1, c0 * 4, 4, cn, 1)))
                .collect();
            net.ex(&format!("{name}.delayed_scale_grad"), trs)?;
        }
        let terms = net.t(format!("{name}.proxy_terms"), c * 3, home)?;
        let out = net.t(format!("{name}.param_grads"), c * 4, home)?;
        if let Some((b2, g2)) = pp {
            let parts = net.t(
                format!("{name}.proxy_grad_partials"),
                SHIM_WORKERS * c * 3,
                home,
            )?;
            let bt = b_t.unwrap_or(zeros);
            let (b2v, g2v) = (net.params[b2].value, net.params[g2].value);
            net.cs(
                &format!("{name}.proxy_param_grad"),
                vec![(
                    home,
                    Codelet::proxy_param_grad(c, 200, 200, ns.act, ns.scale),
                    vec![
                        fr(csum, c * 4),
                        fr(g_t, c),
                        fr(bt, c),
                        fr(b2v, c),
                        fr(g2v, c),
                        fr(qt, 200),
                        fr(mu, c),
                        fr(sc, c),
                        fr(parts, SHIM_WORKERS * c * 3),
                    ],
                )],
            )?;
            net.cs(
                &format!("{name}.proxy_terms"),
                vec![(
                    home,
                    Codelet::reduce(SHIM_WORKERS, c * 3, false),
                    vec![fr(parts, SHIM_WORKERS * c * 3), fr(terms, c * 3)],
                )],
            )?;
        }
        net.cs(
            &format!("{name}.param_grad"),
            vec![(
                home,
                Codelet::proxy_grad_finalize(c, ns.proxy),
                vec![
                    fr(csum, c * 4),
                    fr(g_t, c),
                    fr(terms, c * 3),
                    fr(out, c * 4),
                ],
            )],
        )?;
        let mut trs = vec![tr(out, net.params[gp].grad, rows_copy(0, 4, 0, 1, c, 1))];
        if let Some(b) = bp {
            trs.push(tr(out, net.params[b].grad, rows_copy(1, 4, 0, 1, c, 1)));
        }
        if let Some((b2, g2)) = pp {
            trs.push(tr(out, net.params[b2].grad, rows_copy(2, 4, 0, 1, c, 1)));
            trs.push(tr(out, net.params[g2].grad, rows_copy(3, 4, 0, 1, c, 1)));
        }
        net.ex(&format!("{name}.param_grads_out"), trs)?;
        Ok(dx)
    }));
    Ok((z, delayed))
}

/// Per-part channel sums of `x` scaled by `scale`, gathered per channel range `j` into
/// `[rows][N][cc]` on `tiles[j]` and reduced: `[N][cc]` per range.
fn pool_chunks(
    net: &mut Net,
    name: &str,
    x: &Dist,
    chunks: &[(usize, usize)],
    tiles: &[u32],
    scale: f32,
) -> Result<Vec<TensorId>> {
    let mut vs = Vec::new();
    let mut ps = Vec::new();
    for p in &x.parts {
        let t = net.t(format!("{name}.psum"), p.nb * p.cn, p.tile)?;
        vs.push((
            p.tile,
            Codelet::channel_sum(p.nb, p.rn * x.w, p.cn, scale),
            vec![fr(p.t, p.nb * p.rn * x.w * p.cn), fr(t, p.nb * p.cn)],
        ));
        ps.push(t);
    }
    net.cs(&format!("{name}.pool"), vs)?;
    chunk_sums(net, name, x, &ps, chunks, tiles)
}

/// Per-part `[cn]` vectors `ps` of the boxes of `x` (one image each) summed over the
/// row ranges into `[N][cc]` per channel range `chunks[j]` on `tiles[j]`.
fn chunk_sums(
    net: &mut Net,
    name: &str,
    x: &Dist,
    ps: &[TensorId],
    chunks: &[(usize, usize)],
    tiles: &[u32],
) -> Result<Vec<TensorId>> {
    let n = x.n;
    let mut jobs = Vec::new();
    let mut outs = Vec::new();
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let cc = j1 - j0;
        let out = net.t(format!("{name}.sum{j}"), n * cc, tiles[j])?;
        let cs = x
            .parts
            .iter()
            .zip(ps)
            .filter_map(|(p, t)| {
                let (e0, e1) = (p.c0.max(j0), (p.c0 + p.cn).min(j1));
                (e0 < e1).then_some(Contrib {
                    src: *t,
                    src_off: e0 - p.c0,
                    row: p.ri,
                    col: p.n0 * cc + e0 - j0,
                    len: e1 - e0,
                })
            })
            .collect();
        jobs.push((cs, x.rparts, n * cc, out, tiles[j]));
        outs.push(out);
    }
    net.sum_rows(name, jobs)?;
    Ok(outs)
}

/// `[N][C]` held in channel ranges `chunks` on `tiles` as a Dist of `h = w = 1`.
fn chunk_dist(
    n: usize,
    c: usize,
    chunks: &[(usize, usize)],
    tiles: &[u32],
    ts: &[TensorId],
) -> Dist {
    Dist {
        n,
        h: 1,
        w: 1,
        c,
        rparts: 1,
        parts: chunks
            .iter()
            .zip(tiles)
            .zip(ts)
            .map(|((&(a, b), &tile), &t)| Part {
                n0: 0,
                nb: n,
                r0: 0,
                rn: 1,
                c0: a,
                cn: b - a,
                ri: 0,
                tile,
                t,
            })
            .collect(),
    }
}

/// Pool gradient: `d` `[N][C]` (a chunk Dist) spread back over the boxes of `like`
/// scaled by `scale`.
fn unpool(net: &mut Net, name: &str, d: &Dist, like: &Dist, scale: f32) -> Result<Dist> {
    let mut trs = Vec::new();
    let mut loc = Vec::new();
    for p in &like.parts {
        let t = net.t(format!("{name}.dpooled@"), p.nb * p.cn, p.tile)?;
        gather(d, p.n0, p.nb, 0, 1, p.c0, p.cn, t, &mut trs);
        loc.push(t);
    }
    net.ex(&format!("{name}.unpool_in"), trs)?;
    let o = net.like(&format!("{name}.dpool"), like)?;
    let vs = like
        .parts
        .iter()
        .zip(&loc)
        .zip(&o.parts)
        .map(|((p, l), q)| {
            (
                p.tile,
                Codelet::pool_grad(p.nb, p.rn * like.w, p.cn, scale),
                vec![fr(*l, p.nb * p.cn), fr(q.t, p.nb * p.rn * like.w * p.cn)],
            )
        })
        .collect();
    net.cs(&format!("{name}.unpool"), vs)?;
    Ok(o)
}

/// Channel ranges for a fully connected layer of `rows`×`c` weights: each range's
/// weight slice within an eighth of the budget.
fn fc_chunks(net: &Net, rows: usize, c: usize) -> Vec<(usize, usize)> {
    let per = (net.budget_elems() / 8 / rows.max(1)).max(1);
    ranges(c, c.div_ceil(per))
}

/// Squeeze-excitation on `a` (with the delayed proxy scale folded into its gate).
fn se(net: &mut Net, name: &str, a: &Dist, reduced: usize, delayed: Delayed) -> Result<Dist> {
    let (n, c, r) = (a.n, a.c, reduced);
    let (delayed, ds_cell) = match delayed {
        Some((s, cell)) => (Some(s), Some(cell)),
        None => (None, None),
    };
    let chunks = fc_chunks(net, 2 * r, c);
    let k = chunks.len();
    let w1 = net.param(&format!("{name}.conv_reduce.weight"), c, r, None)?;
    let b1 = net.param(&format!("{name}.conv_reduce.bias"), 1, r, None)?;
    let w2 = net.param(&format!("{name}.conv_expand.weight"), r, c, None)?;
    let b2 = net.param(&format!("{name}.conv_expand.bias"), 1, c, None)?;
    net.layer(name, "se", (4 * n * c * r + 2 * a.n * a.h * a.w * c) as f64);
    let tiles: Vec<u32> = (0..k).map(|_| net.tile()).collect();
    let hw = (a.h * a.w) as f32;
    let pooled = pool_chunks(net, name, a, &chunks, &tiles, 1.0 / hw)?;
    let v = |net: &Net, i: usize| net.params[i].value;
    let (w1v, b1v, w2v, b2v) = (v(net, w1), v(net, b1), v(net, w2), v(net, b2));
    // Per chunk: slices of the weights and biases (and the delayed scale).
    let mut trs = Vec::new();
    let mut loc = Vec::new();
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let (t, cc) = (tiles[j], j1 - j0);
        let w1l = net.t(format!("{name}.w1@{j}"), cc * r, t)?;
        let w2l = net.t(format!("{name}.w2@{j}"), r * cc, t)?;
        let b1l = net.t(format!("{name}.b1@{j}"), r, t)?;
        let b2l = net.t(format!("{name}.b2@{j}"), cc, t)?;
        trs.push(tr(w1v, w1l, Strided::contiguous(j0 * r, 0, cc * r)));
        trs.push(tr(w2v, w2l, rows_copy(j0, c, 0, cc, r, cc)));
        trs.push(tr(b1v, b1l, Strided::contiguous(0, 0, r)));
        trs.push(tr(b2v, b2l, Strided::contiguous(j0, 0, cc)));
        let sl = match delayed {
            Some(s) => {
                let sl = net.t(format!("{name}.s@{j}"), cc, t)?;
                trs.push(tr(s, sl, Strided::contiguous(j0, 0, cc)));
                Some(sl)
            }
            None => None,
        };
        loc.push((w1l, w2l, b1l, b2l, sl));
    }
    net.ex(&format!("{name}.weights"), trs)?;
    // fc1 partials per chunk, summed on every chunk tile.
    let mut vs = Vec::new();
    let mut hp = Vec::new();
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let t = net.t(format!("{name}.h_part{j}"), n * r, tiles[j])?;
        let g = ConvGeom::fc(n, j1 - j0, r);
        vs.push((
            tiles[j],
            Codelet::conv_amp(g),
            vec![
                fr(pooled[j], g.in_len()),
                fr(loc[j].0, g.w_len()),
                fr(t, n * r),
            ],
        ));
        hp.push(t);
    }
    net.cs(&format!("{name}.fc1"), vs)?;
    let mut jobs = Vec::new();
    let mut hs = Vec::new();
    let mut hpre = Vec::new();
    for (j, &t) in tiles.iter().enumerate() {
        let h = net.t(format!("{name}.h{j}"), n * r, t)?;
        jobs.push((whole_rows(&hp, n * r), k, n * r, h, t));
        hpre.push(h);
        hs.push(net.t(format!("{name}.h_act{j}"), n * r, t)?);
    }
    net.sum_rows(&format!("{name}.h"), jobs)?;
    let vs = (0..k)
        .map(|j| {
            (
                tiles[j],
                Codelet::bias_act(n, r, 1),
                vec![fr(hpre[j], n * r), fr(loc[j].2, r), fr(hs[j], n * r)],
            )
        })
        .collect();
    net.cs(&format!("{name}.swish"), vs)?;
    let (mut v2, mut v3, mut v4) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gpre, mut gate, mut gate_s) = (Vec::new(), Vec::new(), Vec::new());
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let (t, cc) = (tiles[j], j1 - j0);
        let g = ConvGeom::fc(n, r, cc);
        let gp = net.t(format!("{name}.g{j}"), n * cc, t)?;
        let ga = net.t(format!("{name}.gate{j}"), n * cc, t)?;
        v2.push((
            t,
            Codelet::conv_amp(g),
            vec![fr(hs[j], n * r), fr(loc[j].1, r * cc), fr(gp, n * cc)],
        ));
        v3.push((
            t,
            Codelet::bias_act(n, cc, 2),
            vec![fr(gp, n * cc), fr(loc[j].3, cc), fr(ga, n * cc)],
        ));
        let gs = match loc[j].4 {
            Some(sl) => {
                let gs = net.t(format!("{name}.gate_scaled{j}"), n * cc, t)?;
                v4.push((
                    t,
                    Codelet::se_gate(1, n, cc),
                    vec![fr(ga, n * cc), fr(sl, cc), fr(gs, n * cc)],
                ));
                gs
            }
            None => ga,
        };
        gpre.push(gp);
        gate.push(ga);
        gate_s.push(gs);
    }
    net.cs(&format!("{name}.fc2"), v2)?;
    net.cs(&format!("{name}.sigmoid"), v3)?;
    net.cs(&format!("{name}.gate_scale"), v4)?;
    let gd = chunk_dist(n, c, &chunks, &tiles, &gate_s);
    let mut trs = Vec::new();
    let mut gl = Vec::new();
    for p in &a.parts {
        let t = net.t(format!("{name}.gate@"), p.nb * p.cn, p.tile)?;
        gather(&gd, p.n0, p.nb, 0, 1, p.c0, p.cn, t, &mut trs);
        gl.push(t);
    }
    net.ex(&format!("{name}.gate_broadcast"), trs)?;
    let out = net.like(&format!("{name}.out"), a)?;
    let vs = a
        .parts
        .iter()
        .zip(&gl)
        .zip(&out.parts)
        .map(|((p, g), o)| {
            let len = p.nb * p.rn * a.w * p.cn;
            (
                p.tile,
                Codelet::se_gate(p.nb, p.rn * a.w, p.cn),
                vec![fr(p.t, len), fr(*g, p.nb * p.cn), fr(o.t, len)],
            )
        })
        .collect();
    net.cs(&format!("{name}.gate"), vs)?;
    let (a, out2, name) = (a.clone(), out.clone(), name.to_string());
    net.tape.push(Box::new(move |net: &mut Net, dy: Dist| {
        net.layer(
            &name,
            "se",
            (8 * n * c * r + 4 * a.n * a.h * a.w * c) as f64,
        );
        let dy = net.align(&format!("{name}.dy"), &dy, &out2)?;
        let dxg = net.like(&format!("{name}.dx_gate"), &a)?;
        let mut vs = Vec::new();
        let mut dgl = Vec::new();
        for (((p, g), d), o) in a.parts.iter().zip(&gl).zip(&dy.parts).zip(&dxg.parts) {
            let len = p.nb * p.rn * a.w * p.cn;
            let t = net.t(format!("{name}.dgate@"), p.nb * p.cn, p.tile)?;
            vs.push((
                p.tile,
                Codelet::se_gate_grad(p.nb, p.rn * a.w, p.cn),
                vec![
                    fr(p.t, len),
                    fr(*g, p.nb * p.cn),
                    fr(d.t, len),
                    fr(o.t, len),
                    fr(t, p.nb * p.cn),
                ],
            ));
            dgl.push(t);
        }
        net.cs(&format!("{name}.gate_grad"), vs)?;
        // dgate partials (per part) → per chunk [N][cc].
        let dgs = chunk_sums(net, &format!("{name}.dgate"), &a, &dgl, &chunks, &tiles)?;
        // Through the delayed scale: dgate = d(gate·s)·s, ds = Σ_n d(gate·s)·gate.
        let mut vs = Vec::new();
        let mut dgate = Vec::new();
        let mut ds = Vec::new();
        for (j, &(j0, j1)) in chunks.iter().enumerate() {
            let cc = j1 - j0;
            match loc[j].4 {
                Some(sl) => {
                    let dg = net.t(format!("{name}.dgate{j}"), n * cc, tiles[j])?;
                    let d = net.t(format!("{name}.ds{j}"), cc, tiles[j])?;
                    vs.push((
                        tiles[j],
                        Codelet::se_gate_grad(1, n, cc),
                        vec![
                            fr(gate[j], n * cc),
                            fr(sl, cc),
                            fr(dgs[j], n * cc),
                            fr(dg, n * cc),
                            fr(d, cc),
                        ],
                    ));
                    dgate.push(dg);
                    ds.push((d, j0, cc));
                }
                None => dgate.push(dgs[j]),
            }
        }
        net.cs(&format!("{name}.gate_scale_grad"), vs)?;
        if let Some(cell) = &ds_cell
            && !ds.is_empty()
        {
            *cell.borrow_mut() = Some(ds);
        }
        let (mut v1, mut v2, mut v3, mut v4) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut dhp = Vec::new();
        let mut dgp = Vec::new();
        let mut trs = Vec::new();
        let (w1g, b1g, w2g, b2g) = (
            net.params[w1].grad,
            net.params[b1].grad,
            net.params[w2].grad,
            net.params[b2].grad,
        );
        for (j, &(j0, j1)) in chunks.iter().enumerate() {
            let (t, cc) = (tiles[j], j1 - j0);
            let g = ConvGeom::fc(n, r, cc);
            let d = net.t(format!("{name}.dg{j}"), n * cc, t)?;
            v1.push((
                t,
                Codelet::bias_act_grad(n, cc, 2),
                vec![
                    fr(gpre[j], n * cc),
                    fr(loc[j].3, cc),
                    fr(dgate[j], n * cc),
                    fr(d, n * cc),
                ],
            ));
            let db = net.t(format!("{name}.db2_{j}"), cc, t)?;
            v2.push((
                t,
                Codelet::channel_sum(1, n, cc, 1.0),
                vec![fr(d, n * cc), fr(db, cc)],
            ));
            let dw = net.t(format!("{name}.dw2_{j}"), r * cc, t)?;
            v3.push((
                t,
                Codelet::conv_wgrad_amp(g),
                vec![fr(hs[j], n * r), fr(d, n * cc), fr(dw, r * cc)],
            ));
            let dh = net.t(format!("{name}.dh_part{j}"), n * r, t)?;
            v4.push((
                t,
                Codelet::conv_amp_bwd_data(g),
                vec![fr(d, n * cc), fr(loc[j].1, r * cc), fr(dh, n * r)],
            ));
            trs.push(tr(db, b2g, Strided::contiguous(0, j0, cc)));
            trs.push(tr(dw, w2g, rows_copy(0, cc, j0, c, r, cc)));
            dhp.push(dh);
            dgp.push(d);
        }
        net.cs(&format!("{name}.sigmoid_grad"), v1)?;
        net.cs(&format!("{name}.db2"), v2)?;
        net.cs(&format!("{name}.fc2_wgrad"), v3)?;
        net.cs(&format!("{name}.fc2_bwd_data"), v4)?;
        // dh summed over the chunks on every chunk tile, then the swish gradient.
        net.ex(&format!("{name}.fc2_out"), trs)?;
        let mut jobs = Vec::new();
        let mut dhs = Vec::new();
        for (j, &t) in tiles.iter().enumerate() {
            let s = net.t(format!("{name}.dh_act{j}"), n * r, t)?;
            jobs.push((whole_rows(&dhp, n * r), k, n * r, s, t));
            dhs.push(s);
        }
        net.sum_rows(&format!("{name}.dh"), jobs)?;
        let (mut v1, mut v2, mut v3, mut v4) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut trs = Vec::new();
        let mut dpool = Vec::new();
        for (j, &(j0, j1)) in chunks.iter().enumerate() {
            let (t, cc) = (tiles[j], j1 - j0);
            let g = ConvGeom::fc(n, cc, r);
            let dh = net.t(format!("{name}.dh{j}"), n * r, t)?;
            v1.push((
                t,
                Codelet::bias_act_grad(n, r, 1),
                vec![
                    fr(hpre[j], n * r),
                    fr(loc[j].2, r),
                    fr(dhs[j], n * r),
                    fr(dh, n * r),
                ],
            ));
            if j == 0 {
                let db = net.t(format!("{name}.db1"), r, t)?;
                v2.push((
                    t,
                    Codelet::channel_sum(1, n, r, 1.0),
                    vec![fr(dh, n * r), fr(db, r)],
                ));
                trs.push(tr(db, b1g, Strided::contiguous(0, 0, r)));
            }
            let dw = net.t(format!("{name}.dw1_{j}"), cc * r, t)?;
            v3.push((
                t,
                Codelet::conv_wgrad_amp(g),
                vec![fr(pooled[j], n * cc), fr(dh, n * r), fr(dw, cc * r)],
            ));
            trs.push(tr(dw, w1g, Strided::contiguous(0, j0 * r, cc * r)));
            let dp = net.t(format!("{name}.dpooled{j}"), n * cc, t)?;
            v4.push((
                t,
                Codelet::conv_amp_bwd_data(g),
                vec![fr(dh, n * r), fr(loc[j].0, cc * r), fr(dp, n * cc)],
            ));
            dpool.push(dp);
        }
        net.cs(&format!("{name}.swish_grad"), v1)?;
        net.cs(&format!("{name}.db1"), v2)?;
        net.cs(&format!("{name}.fc1_wgrad"), v3)?;
        net.cs(&format!("{name}.fc1_bwd_data"), v4)?;
        net.ex(&format!("{name}.grads_out"), trs)?;
        let dpd = chunk_dist(n, c, &chunks, &tiles, &dpool);
        let dp = unpool(net, &name, &dpd, &a, 1.0 / hw)?;
        let da = net.like(&format!("{name}.dx"), &a)?;
        let vs = a
            .parts
            .iter()
            .zip(&dxg.parts)
            .zip(&dp.parts)
            .zip(&da.parts)
            .map(|(((p, x), y), o)| {
                let len = p.nb * p.rn * a.w * p.cn;
                (
                    p.tile,
                    Codelet::add(len),
                    vec![fr(x.t, len), fr(y.t, len), fr(o.t, len)],
                )
            })
            .collect();
        net.cs(&format!("{name}.dx"), vs)?;
        Ok(da)
    }));
    Ok(out)
}

/// Element-wise `a + b` on the boxes of `a` (`b` aligned to them).
fn add(net: &mut Net, name: &str, a: &Dist, b: &Dist) -> Result<Dist> {
    let b = net.align(&format!("{name}.b"), b, a)?;
    let o = net.like(&format!("{name}.out"), a)?;
    let vs = a
        .parts
        .iter()
        .zip(&b.parts)
        .zip(&o.parts)
        .map(|((p, q), r)| {
            let len = p.nb * p.rn * a.w * p.cn;
            (
                p.tile,
                Codelet::add(len),
                vec![fr(p.t, len), fr(q.t, len), fr(r.t, len)],
            )
        })
        .collect();
    net.cs(&format!("{name}.add"), vs)?;
    Ok(o)
}

/// Global pool → classifier → softmax cross-entropy; returns (logits, targets, loss).
fn head_loss(net: &mut Net, x: &Dist, classes: usize) -> Result<(TensorId, TensorId, TensorId)> {
    let (n, c, k) = (x.n, x.c, classes);
    net.layer("global_pool", "pool", (x.n * x.h * x.w * c) as f64);
    let pool_tile = net.tile();
    let pooled = pool_chunks(
        net,
        "global_pool",
        x,
        &[(0, c)],
        &[pool_tile],
        1.0 / (x.h * x.w) as f32,
    )?[0];
    let chunks = fc_chunks(net, c, k);
    let wp = net.param("classifier.weight", c, k, None)?;
    let bp = net.param("classifier.bias", 1, k, None)?;
    net.layer("classifier", "fc", (2 * n * c * k) as f64);
    net.splits.push(LayerSplit {
        name: "classifier".into(),
        row_parts: 1,
        chan_parts: chunks.len(),
        boxes: chunks.len(),
    });
    let tiles: Vec<u32> = chunks.iter().map(|_| net.tile()).collect();
    let (wv, bv) = (net.params[wp].value, net.params[bp].value);
    let loss_tile = net.tile();
    let logits = net.t("logits".into(), n * k, loss_tile)?;
    let mut trs = Vec::new();
    let mut loc = Vec::new();
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let (t, kc) = (tiles[j], j1 - j0);
        let xl = net.t(format!("classifier.x@{j}"), n * c, t)?;
        let wl = net.t(format!("classifier.w@{j}"), c * kc, t)?;
        let bl = net.t(format!("classifier.b@{j}"), kc, t)?;
        trs.push(tr(pooled, xl, Strided::contiguous(0, 0, n * c)));
        trs.push(tr(wv, wl, rows_copy(j0, k, 0, kc, c, kc)));
        trs.push(tr(bv, bl, Strided::contiguous(j0, 0, kc)));
        loc.push((xl, wl, bl));
    }
    net.ex("classifier.in", trs)?;
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    let mut trs = Vec::new();
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let (t, kc) = (tiles[j], j1 - j0);
        let pre = net.t(format!("classifier.pre{j}"), n * kc, t)?;
        let lj = net.t(format!("classifier.logits{j}"), n * kc, t)?;
        let g = ConvGeom::fc(n, c, kc);
        v1.push((
            t,
            Codelet::conv_amp(g),
            vec![fr(loc[j].0, n * c), fr(loc[j].1, c * kc), fr(pre, n * kc)],
        ));
        v2.push((
            t,
            Codelet::bias_act(n, kc, 0),
            vec![fr(pre, n * kc), fr(loc[j].2, kc), fr(lj, n * kc)],
        ));
        trs.push(tr(lj, logits, rows_copy(0, kc, j0, k, n, kc)));
    }
    net.cs("classifier.fwd", v1)?;
    net.cs("classifier.bias", v2)?;
    net.ex("classifier.out", trs)?;
    net.layer("loss", "loss", (5 * n * k) as f64);
    let targets = net.t("targets".into(), n * k, loss_tile)?;
    let loss = net.t("loss".into(), 1, loss_tile)?;
    let dlogits = net.t("dlogits".into(), n * k, loss_tile)?;
    net.cs(
        "loss",
        vec![(
            loss_tile,
            Codelet::softmax_xent(n, k),
            vec![
                fr(logits, n * k),
                fr(targets, n * k),
                fr(loss, 1),
                fr(dlogits, n * k),
            ],
        )],
    )?;
    let x = x.clone();
    net.tape.push(Box::new(move |net: &mut Net, _: Dist| {
        net.layer("classifier", "fc", (4 * n * c * k) as f64);
        let mut trs = Vec::new();
        let mut dl = Vec::new();
        for (j, &(j0, j1)) in chunks.iter().enumerate() {
            let kc = j1 - j0;
            let t = net.t(format!("classifier.dlogits{j}"), n * kc, tiles[j])?;
            trs.push(tr(dlogits, t, rows_copy(j0, k, 0, kc, n, kc)));
            dl.push(t);
        }
        net.ex("classifier.dlogits", trs)?;
        let (mut v1, mut v2, mut v3) = (Vec::new(), Vec::new(), Vec::new());
        let mut trs = Vec::new();
        let mut dxp = Vec::new();
        let (wg, bg) = (net.params[wp].grad, net.params[bp].grad);
        for (j, &(j0, j1)) in chunks.iter().enumerate() {
            let (t, kc) = (tiles[j], j1 - j0);
            let g = ConvGeom::fc(n, c, kc);
            let db = net.t(format!("classifier.db{j}"), kc, t)?;
            let dw = net.t(format!("classifier.dw{j}"), c * kc, t)?;
            let dx = net.t(format!("classifier.dx_part{j}"), n * c, t)?;
            v1.push((
                t,
                Codelet::channel_sum(1, n, kc, 1.0),
                vec![fr(dl[j], n * kc), fr(db, kc)],
            ));
            v2.push((
                t,
                Codelet::conv_wgrad_amp(g),
                vec![fr(loc[j].0, n * c), fr(dl[j], n * kc), fr(dw, c * kc)],
            ));
            v3.push((
                t,
                Codelet::conv_amp_bwd_data(g),
                vec![fr(dl[j], n * kc), fr(loc[j].1, c * kc), fr(dx, n * c)],
            ));
            trs.push(tr(db, bg, Strided::contiguous(0, j0, kc)));
            trs.push(tr(dw, wg, rows_copy(0, kc, j0, k, c, kc)));
            dxp.push(dx);
        }
        net.cs("classifier.db", v1)?;
        net.cs("classifier.wgrad", v2)?;
        net.cs("classifier.bwd_data", v3)?;
        net.ex("classifier.grads_out", trs)?;
        let dp = net.t("classifier.dx".into(), n * c, pool_tile)?;
        net.sum_rows(
            "classifier.dx",
            vec![(whole_rows(&dxp, n * c), chunks.len(), n * c, dp, pool_tile)],
        )?;
        net.layer("global_pool", "pool", (x.n * x.h * x.w * c) as f64);
        let d = chunk_dist(n, c, &[(0, c)], &[pool_tile], &[dp]);
        unpool(net, "global_pool", &d, &x, 1.0 / (x.h * x.w) as f32)
    }));
    Ok((logits, targets, loss))
}

/// Builds the whole network's forward and backward program for `arch` at `res`,
/// batch `batch`, on `target` at `precision`, without tensor data.
///
/// # Errors
/// [`Error::InvalidArgument`] for a resolution below 32 or a batch of 0;
/// [`Error::TileMemory`] when a layer's smallest split does not fit a tile.
pub fn build(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    precision: Precision,
) -> Result<Chain> {
    if res < 32 || batch == 0 {
        return Err(Error::InvalidArgument(
            "--res must be at least 32 and --batch at least 1".into(),
        ));
    }
    let mut net = Net::new(target, precision, arch.norm_eps)?;
    let (steps, classes) = steps_of(arch, res, batch)?;
    let Some(Step::Conv { shape: ss, .. }) = steps.first() else {
        return Err(Error::InvalidArgument(format!("{}: no stem", arch.name)));
    };
    let sp = net.conv_split(ss)?;
    let input = net.dist("input", batch, res, res, 3, sp.ph, 1, 1)?;
    let head = run_steps(&mut net, &steps, input.clone())?;
    let (logits, targets, loss) = head_loss(&mut net, &head, classes)?;
    let (net, _) = finish(net, input.clone())?;
    let Net {
        g,
        fwd,
        bwd,
        params,
        splits,
        ..
    } = net;
    Ok(Chain {
        graph: g,
        fwd: Program::Sequence(fwd),
        bwd: Program::Sequence(bwd),
        input,
        targets,
        logits,
        loss,
        params,
        splits,
    })
}

/// One step of a chain.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a few dozen steps per network, built once
pub enum Step {
    /// A convolution and the norm (+ activation) after it.
    Conv {
        /// timm name.
        name: String,
        /// Report kind (`stem`, `pointwise`, `depthwise`, `grouped`).
        kind: &'static str,
        /// The convolution.
        shape: ConvShape,
        /// The norm after it: timm name and what it does.
        norm: Option<(String, NormSpec)>,
        /// Whether its input gradient is needed (not for the stem).
        need_dx: bool,
    },
    /// Squeeze-excitation (`{name}.conv_reduce`, `{name}.conv_expand`) with `reduced`
    /// inner channels; takes the delayed proxy scale of the norm before it.
    Se {
        /// timm prefix.
        name: String,
        /// Inner channels.
        reduced: usize,
    },
    /// Start (`begin`) or end of an identity skip: the end adds the start's input.
    Skip {
        /// Name of the addition.
        name: String,
        /// Start or end.
        begin: bool,
    },
}

/// The steps of `arch` from the stem to the head's norm (the classifier is left to
/// [`build`]), and the number of classes.
pub fn steps_of(arch: &ArchConfig, res: usize, batch: usize) -> Result<(Vec<Step>, usize)> {
    let blocks = arch.blocks();
    let mut bi = 0usize;
    let mut in_block = false;
    let mut v = Vec::new();
    for l in arch.conv_layers(batch, res) {
        let shape = l.desc.validate()?;
        let kind = match l.role {
            LayerRole::Stem => "stem",
            LayerRole::Spatial if l.desc.group_size == 1 => "depthwise",
            LayerRole::Spatial => "grouped",
            _ => "pointwise",
        };
        let add_name = |b: &crate::arch::BlockSpec| format!("blocks.{}.{}.add", b.stage, b.index);
        match l.role {
            LayerRole::SeReduce => {
                v.push(Step::Se {
                    name: l.name.trim_end_matches(".conv_reduce").to_string(),
                    reduced: l.desc.out_channels,
                });
                continue;
            }
            LayerRole::SeExpand => continue,
            LayerRole::Classifier => return Ok((v, l.desc.out_channels)),
            LayerRole::Expand | LayerRole::Spatial if !in_block => {
                in_block = true;
                if blocks[bi].skip {
                    v.push(Step::Skip {
                        name: add_name(&blocks[bi]),
                        begin: true,
                    });
                }
            }
            _ => {}
        }
        v.push(Step::Conv {
            name: l.name.clone(),
            kind,
            shape,
            norm: l
                .norm
                .as_ref()
                .map(|nn| (nn.clone(), NormSpec::of(arch, l.role, l.desc.out_channels))),
            need_dx: l.role != LayerRole::Stem,
        });
        if l.role == LayerRole::Project {
            if blocks[bi].skip {
                v.push(Step::Skip {
                    name: add_name(&blocks[bi]),
                    begin: false,
                });
            }
            bi += 1;
            in_block = false;
        }
    }
    Err(Error::InvalidArgument(format!(
        "{}: no classifier",
        arch.name
    )))
}

/// Runs `steps` forward from `x` (pushing their backward on the tape); returns the
/// last output.
fn run_steps(net: &mut Net, steps: &[Step], x: Dist) -> Result<Dist> {
    let mut cur = x;
    let mut delayed: Delayed = None;
    let mut skips: Vec<(Dist, Rc<RefCell<Option<Dist>>>)> = Vec::new();
    for st in steps {
        match st {
            Step::Conv {
                name,
                kind,
                shape,
                norm: nm,
                need_dx,
            } => {
                cur = conv(net, name, kind, *shape, &cur, *need_dx)?;
                if let Some((nn, ns)) = nm {
                    let (z, d) = norm(net, nn, *ns, &cur)?;
                    cur = z;
                    delayed = d;
                }
            }
            Step::Se { name, reduced } => {
                cur = se(net, name, &cur, *reduced, delayed.take())?;
            }
            Step::Skip { name, begin: true } => {
                // Backward: the skip's gradient (saved at the end) joins the branch's
                // input gradient.
                let cell: Rc<RefCell<Option<Dist>>> = Rc::new(RefCell::new(None));
                let c2 = cell.clone();
                let name = name.clone();
                net.tape.push(Box::new(move |net: &mut Net, dx: Dist| {
                    let dout = c2
                        .borrow_mut()
                        .take()
                        .ok_or_else(|| Error::InvalidArgument("skip gradient missing".into()))?;
                    net.layer(&name, "activation", (dx.n * dx.h * dx.w * dx.c) as f64);
                    add(net, &name, &dx, &dout)
                }));
                skips.push((cur.clone(), cell));
            }
            Step::Skip { name, begin: false } => {
                let (x_in, cell) = skips
                    .pop()
                    .ok_or_else(|| Error::InvalidArgument(format!("{name}: no skip start")))?;
                net.layer(name, "activation", (cur.n * cur.h * cur.w * cur.c) as f64);
                cur = add(net, name, &cur, &x_in)?;
                net.tape.push(Box::new(move |_: &mut Net, dout: Dist| {
                    *cell.borrow_mut() = Some(dout.clone());
                    Ok(dout)
                }));
            }
        }
    }
    Ok(cur)
}

/// Builds the backward program: the tape in reverse from the gradient `d`; returns
/// the net and the last gradient (the input's).
fn finish(mut net: Net, mut d: Dist) -> Result<(Net, Dist)> {
    net.in_bwd = true;
    while let Some(f) = net.tape.pop() {
        d = f(&mut net, d)?;
    }
    Ok((net, d))
}

impl Chain {
    /// The forward and backward programs in sequence.
    pub fn program(&self) -> Program {
        Program::Sequence(vec![self.fwd.clone(), self.bwd.clone()])
    }

    /// The estimated profile of one training step (forward + backward): the memory
    /// check with liveness across the whole network.
    pub fn profile(&self) -> Result<Profile> {
        self.graph.profile(&self.program())
    }

    /// Names and element counts of the parameters the chain takes.
    pub fn param_shapes(&self) -> Vec<(String, usize)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.len))
            .collect()
    }
}

/// Results of [`run`].
#[derive(Clone, Debug)]
pub struct ChainResult {
    /// Logits `[N][classes]`.
    pub logits: Vec<f32>,
    /// Mean softmax cross-entropy.
    pub loss: f32,
    /// Parameter gradients by name (layouts of [`ChainParams`]).
    pub grads: Vec<(String, Vec<f32>)>,
    /// The estimated profile.
    pub profile: Profile,
    /// The layer labels of the profile.
    pub layers: Vec<LayerInfo>,
    /// How each convolution was split.
    pub splits: Vec<LayerSplit>,
}

/// Builds, profiles (memory check included) and executes one training step of the
/// whole network on `x` (`[N][res][res][3]`) with `labels` (`[N]`) and `params`.
///
/// # Errors
/// As [`build`]; [`Error::TileMemory`] from the profile; [`Error::InvalidArgument`]
/// for a missing or mis-sized parameter or a label out of range.
pub fn run(
    arch: &ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    params: &ChainParams,
    x: &[f32],
    labels: &[usize],
) -> Result<ChainResult> {
    let ch = build(arch, res, batch, target, Precision::F32)?;
    crate::error::check_len("images", x.len(), batch * res * res * 3)?;
    crate::error::check_len("labels", labels.len(), batch)?;
    let k = arch.num_classes;
    let profile = ch.profile()?;
    let mut e = Engine::new(&ch.graph);
    for p in &ch.params {
        let v = params
            .get(&p.name)
            .ok_or_else(|| Error::InvalidArgument(format!("parameter {} missing", p.name)))?;
        crate::error::check_len("parameter", v.len(), p.len)?;
        e.write(p.value, v)?;
    }
    let mut onehot = vec![0.0f32; batch * k];
    for (i, &l) in labels.iter().enumerate() {
        if l >= k {
            return Err(Error::InvalidArgument(format!("label {l} >= {k} classes")));
        }
        onehot[i * k + l] = 1.0;
    }
    e.write(ch.targets, &onehot)?;
    write_dist(&mut e, &ch.input, x)?;
    e.run(&ch.program())?;
    let grads = ch
        .params
        .iter()
        .map(|p| (p.name.clone(), e.read(p.grad).to_vec()))
        .collect();
    Ok(ChainResult {
        logits: e.read(ch.logits).to_vec(),
        loss: e.read(ch.loss)[0],
        grads,
        profile,
        layers: ch.graph.layers.clone(),
        splits: ch.splits.clone(),
    })
}

/// Visits the rows of `cn` channels of box `p` of an NHWC tensor `[n][h][w][c]`: (offset
/// in the host tensor, offset in the box).
fn box_rows(d: &Dist, p: &Part, mut f: impl FnMut(usize, usize)) {
    let mut o = 0;
    for i in p.n0..p.n0 + p.nb {
        for r in p.r0..p.r0 + p.rn {
            for col in 0..d.w {
                f(((i * d.h + r) * d.w + col) * d.c + p.c0, o);
                o += p.cn;
            }
        }
    }
}

/// Writes a host NHWC tensor into the boxes of `d`.
pub fn write_dist(e: &mut Engine, d: &Dist, x: &[f32]) -> Result<()> {
    crate::error::check_len("activation", x.len(), d.n * d.h * d.w * d.c)?;
    for p in &d.parts {
        let mut buf = vec![0.0f32; p.nb * p.rn * d.w * p.cn];
        box_rows(d, p, |s, o| {
            buf[o..o + p.cn].copy_from_slice(&x[s..s + p.cn])
        });
        e.write(p.t, &buf)?;
    }
    Ok(())
}

/// Reads the boxes of `d` into a host NHWC tensor.
pub fn read_dist(e: &Engine, d: &Dist) -> Vec<f32> {
    let mut x = vec![0.0f32; d.n * d.h * d.w * d.c];
    for p in &d.parts {
        let b = e.read(p.t);
        box_rows(d, p, |s, o| x[s..s + p.cn].copy_from_slice(&b[o..o + p.cn]));
    }
    x
}

/// A segment of steps built without a loss: the backward starts from a given output
/// gradient.
pub struct Segment {
    /// The graph.
    pub graph: Graph,
    /// Forward program.
    pub fwd: Program,
    /// Backward program.
    pub bwd: Program,
    /// Input boxes (one image each).
    pub input: Dist,
    /// Output boxes.
    pub out: Dist,
    /// Output-gradient boxes (written by the host).
    pub dout: Dist,
    /// Input-gradient boxes.
    pub dx: Dist,
    /// Parameters.
    pub params: Vec<ChainParam>,
}

/// Builds `steps` on an input `[n][h][w][c]` (one image per box), forward and
/// backward, with norm ε `eps`.
///
/// # Errors
/// As [`build`].
#[allow(clippy::too_many_arguments)]
pub fn build_segment(
    steps: &[Step],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    eps: f32,
    target: &Target,
    precision: Precision,
) -> Result<Segment> {
    let mut net = Net::new(target, precision, eps)?;
    let input = net.dist("input", n, h, w, c, 1, 1, 1)?;
    let out = run_steps(&mut net, steps, input.clone())?;
    let dout = net.like("dout", &out)?;
    let (net, dx) = finish(net, dout.clone())?;
    Ok(Segment {
        graph: net.g,
        fwd: Program::Sequence(net.fwd),
        bwd: Program::Sequence(net.bwd),
        input,
        out,
        dout,
        dx,
        params: net.params,
    })
}

/// Whether `arch` uses BatchNorm (statistics over the batch).
pub fn batch_norm(arch: &ArchConfig) -> bool {
    arch.norm == NormKind::BatchNorm
}
