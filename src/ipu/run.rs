//! `effnet ipu run`: every convolution of a network, forward, backward data and weight
//! gradient, executed through the codelets on the model — split over tiles by the
//! planner, inputs and results moved by exchanges, weight-gradient partials reduced
//! across tiles — and compared with the oracle of [`super::reference`].
//!
//! Each convolution gets random inputs of its shape. The MBConv blocks (with their
//! norms, Proxy Norm, SE and skip) run **chained** by [`run_blocks_chained`]: each fed
//! by the previous block's output, the loss after the last, gradients flowing back
//! through every block; if a block does not fit its tiles, each block runs on its own
//! random data instead ([`check_block`]). Not chained yet: the stem, the head, the
//! pool, the classifier and the loss (their convolutions run split by the planner on
//! random data).

use super::block::BlockSpec;
use super::codelets::{Codelet, ConvGeom, SHIM_WORKERS};
use super::graph::{Engine, FieldRef, Graph, LayerInfo, Program, Strided, TensorId, Transfer};
use super::network::{self, Op};
use super::picture::TilePicture;
use super::planner::{ConvSplit, Pass, Planner};
use super::reference::{self, ConvOracle};
use super::target::{Precision, Target};
use crate::error::Result;
use crate::kernels::conv::ConvShape;

/// One compared tensor.
#[derive(Clone, Debug)]
pub struct RunLine {
    /// Layer name.
    pub name: String,
    /// `fwd`, `bwd_data` or `bwd_weight`.
    pub pass: &'static str,
    /// `‖ipu − oracle‖ / ‖oracle‖`.
    pub rel_err: f64,
    /// Tiles used.
    pub tiles: usize,
    /// Estimated cycles of the pass's compute, exchange and syncs.
    pub cycles: u64,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Per layer and pass.
    pub layers: Vec<RunLine>,
    /// The largest relative error.
    pub max_rel_err: f64,
    /// The per-tile picture of the requested layer's forward pass, if it was found.
    pub picture: Option<TilePicture>,
    /// Blocks not run end to end because one image's activations and the block's
    /// weights do not fit one tile (their convolutions still ran split by the
    /// planner): (block, the memory error).
    pub skipped: Vec<(String, String)>,
}

fn ranges(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let chunk = n.div_ceil(parts.max(1)).max(1);
    (0..n)
        .step_by(chunk)
        .map(|a| (a, (a + chunk).min(n)))
        .collect()
}

/// `‖got − want‖₂ / ‖want‖₂`.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (g, w) in got.iter().zip(want) {
        num += (*g as f64 - w).powi(2);
        den += w * w;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

struct Rng(u64);
impl Rng {
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }
}

/// A global tensor spread over the tiles by its `rows` rows of `row_len` elements.
fn spread(g: &mut Graph, name: &str, rows: usize, row_len: usize) -> Result<TensorId> {
    let tiles = g.target.tiles.min(rows).max(1);
    let mut mapping = Vec::new();
    for (t, (a, b)) in ranges(rows, tiles).into_iter().enumerate() {
        mapping.push((a * row_len..b * row_len, t as u32));
    }
    if rows == 0 {
        mapping.push((0..0, 0));
    }
    g.add_tensor_mapped(name, rows * row_len, mapping)
}

#[allow(clippy::too_many_arguments)]
/// Builds, runs and profiles one convolution's three passes; returns the lines and,
/// when asked, the forward pass's per-tile picture.
pub fn run_conv(
    name: &str,
    kind: &'static str,
    s: &ConvShape,
    sp: ConvSplit,
    target: &Target,
    oracle: ConvOracle,
    seed: u64,
    want_picture: bool,
) -> Result<(Vec<RunLine>, Option<TilePicture>)> {
    let d = s.desc;
    let mut g = Graph::new(target.clone(), Precision::F32)?;
    let lf = g.add_layer(LayerInfo {
        name: name.into(),
        kind,
        pass: "fwd",
        flops: s.flops(),
    });
    let lb = g.add_layer(LayerInfo {
        name: name.into(),
        kind,
        pass: "bwd",
        flops: 2.0 * s.flops(),
    });
    let (n, h, w, ci, co) = (d.batch, d.in_h, d.in_w, d.in_channels, d.out_channels);
    let (oh, ow) = (s.out_h, s.out_w);
    let (kk, st, pt) = (d.kernel_h * d.kernel_w, d.stride_h, d.padding.top);
    let grouped = s.groups > 1;
    let depthwise = d.group_size == 1 && ci == co;
    let xg = spread(&mut g, "x", n * h, w * ci)?;
    let wg = spread(&mut g, "w", kk * d.group_size, co)?;
    let yg = spread(&mut g, "y", n * oh, ow * co)?;
    let dyg = spread(&mut g, "dy", n * oh, ow * co)?;
    let dxg = spread(&mut g, "dx", n * h, w * ci)?;
    let dwg = spread(&mut g, "dw", kk * d.group_size, co)?;
    // Channel parts: whole groups for grouped convolutions, output-channel chunks for
    // dense ones. (first in channel, in channels, first out channel, out channels,
    // groups)
    let chans: Vec<(usize, usize, usize, usize, usize)> = if grouped {
        ranges(s.groups, sp.pc)
            .into_iter()
            .map(|(a, b)| {
                (
                    a * d.group_size,
                    (b - a) * d.group_size,
                    a * s.cout_per_group,
                    (b - a) * s.cout_per_group,
                    b - a,
                )
            })
            .collect()
    } else {
        ranges(co, sp.pc)
            .into_iter()
            .map(|(a, b)| (0, ci, a, b - a, 1))
            .collect()
    };
    let (cig, cog) = (d.group_size, s.cout_per_group);
    let nrs = ranges(n, sp.pn);
    let fwd_cs = g.add_compute_set(format!("{name}.fwd"), lf);
    let bd_cs = g.add_compute_set(format!("{name}.bwd_data"), lb);
    let wg_cs = g.add_compute_set(format!("{name}.wgrad"), lb);
    let wr_cs = g.add_compute_set(format!("{name}.wgrad_workers"), lb);
    let red_cs = g.add_compute_set(format!("{name}.wgrad_reduce"), lb);
    let (mut fin, mut fout, mut bin, mut bout, mut win, mut gath, mut dwout) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut tile = 0u32;
    let tiles = target.tiles as u32;
    let box_from = |rows_total: usize,
                    row_w: usize,
                    c_total: usize,
                    n0: usize,
                    nb: usize,
                    r0: usize,
                    rn: usize,
                    c0: usize,
                    cn: usize| Strided {
        src_offset: ((n0 * rows_total + r0) * row_w) * c_total + c0,
        dst_offset: 0,
        counts: [nb, rn, row_w, cn],
        src_strides: [rows_total * row_w * c_total, row_w * c_total, c_total],
        dst_strides: [rn * row_w * cn, row_w * cn, cn],
    };
    for &(ci0, cin_t, co0, cols, groups) in &chans {
        let geom_groups = if grouped { groups } else { 1 };
        let (gcin, gcout) = if grouped { (cig, cog) } else { (cin_t, cols) };
        let wlen = kk * gcin * cols;
        let wcopy = Strided {
            src_offset: co0,
            dst_offset: 0,
            counts: [1, kk, cig, cols],
            src_strides: [0, cig * co, co],
            dst_strides: [0, cig * cols, cols],
        };
        let mut partials = Vec::new();
        for &(n0, n1) in &nrs {
            let nb = n1 - n0;
            // Forward and weight gradient over output rows.
            for (a, b) in ranges(oh, sp.ph) {
                let t = tile % tiles;
                tile += 1;
                let lo = (a * st).saturating_sub(pt).min(h - 1);
                let hi = ((b - 1) * st + d.kernel_h)
                    .saturating_sub(pt)
                    .min(h)
                    .max(lo + 1);
                let geom = ConvGeom {
                    nb,
                    in_h0: lo,
                    in_hn: hi - lo,
                    in_w0: 0,
                    in_wn: w,
                    out_h0: a,
                    out_hn: b - a,
                    out_w0: 0,
                    out_wn: ow,
                    kh: d.kernel_h,
                    kw: d.kernel_w,
                    stride: st,
                    pad_t: pt,
                    pad_l: d.padding.left,
                    groups: geom_groups,
                    cin_g: gcin,
                    cout_g: gcout,
                };
                let xw = g.add_tensor(format!("{name}.xwin{t}"), geom.in_len(), t)?;
                let wl = g.add_tensor(format!("{name}.w{t}"), wlen, t)?;
                let yb = g.add_tensor(format!("{name}.y{t}"), geom.out_len(), t)?;
                let dyb = g.add_tensor(format!("{name}.dy{t}"), geom.out_len(), t)?;
                fin.push(Transfer {
                    src: xg,
                    dsts: vec![xw],
                    copy: box_from(h, w, ci, n0, nb, lo, hi - lo, ci0, cin_t),
                });
                fin.push(Transfer {
                    src: wg,
                    dsts: vec![wl],
                    copy: wcopy,
                });
                let yc = box_from(oh, ow, co, n0, nb, a, b - a, co0, cols);
                fout.push(Transfer {
                    src: yb,
                    dsts: vec![yg],
                    copy: swap(yc),
                });
                win.push(Transfer {
                    src: dyg,
                    dsts: vec![dyb],
                    copy: yc,
                });
                let f = |t: TensorId, l: usize| FieldRef::whole(t, l);
                let fwd = if depthwise {
                    Codelet::dw_vmac(geom)
                } else {
                    Codelet::conv_amp(geom)
                };
                g.add_vertex(
                    fwd_cs,
                    t,
                    fwd,
                    vec![f(xw, geom.in_len()), f(wl, wlen), f(yb, geom.out_len())],
                )?;
                let part = g.add_tensor(format!("{name}.dwpart{t}"), wlen, t)?;
                if depthwise {
                    let wk =
                        g.add_tensor(format!("{name}.dwworkers{t}"), SHIM_WORKERS * wlen, t)?;
                    g.add_vertex(
                        wg_cs,
                        t,
                        Codelet::dw_vmac_wgrad(geom),
                        vec![
                            f(xw, geom.in_len()),
                            f(dyb, geom.out_len()),
                            f(wk, SHIM_WORKERS * wlen),
                        ],
                    )?;
                    g.add_vertex(
                        wr_cs,
                        t,
                        Codelet::reduce(SHIM_WORKERS, wlen, false),
                        vec![f(wk, SHIM_WORKERS * wlen), f(part, wlen)],
                    )?;
                } else {
                    g.add_vertex(
                        wg_cs,
                        t,
                        Codelet::conv_wgrad_amp(geom),
                        vec![f(xw, geom.in_len()), f(dyb, geom.out_len()), f(part, wlen)],
                    )?;
                }
                partials.push(part);
            }
        }
        // Weight-gradient reduction across the batch × row parts: part i's tile
        // reduces rows slice i of the kk·cig weight rows, then sends it out.
        let np = partials.len();
        let wrows = kk * gcin;
        for (i, (r0, r1)) in ranges(wrows, np).into_iter().enumerate() {
            let rt = g.tensor(partials[i]).mapping[0].1;
            let len = (r1 - r0) * cols;
            let buf = g.add_tensor(format!("{name}.dwgather{co0}.{i}"), np * len, rt)?;
            let sum = g.add_tensor(format!("{name}.dwsum{co0}.{i}"), len, rt)?;
            for (j, p) in partials.iter().enumerate() {
                gath.push(Transfer {
                    src: *p,
                    dsts: vec![buf],
                    copy: Strided::contiguous(r0 * cols, j * len, len),
                });
            }
            g.add_vertex(
                red_cs,
                rt,
                Codelet::reduce(np, len, false),
                vec![FieldRef::whole(buf, np * len), FieldRef::whole(sum, len)],
            )?;
            dwout.push(Transfer {
                src: sum,
                dsts: vec![dwg],
                copy: Strided {
                    src_offset: 0,
                    dst_offset: r0 * co + co0,
                    counts: [1, 1, r1 - r0, cols],
                    src_strides: [0, 0, cols],
                    dst_strides: [0, 0, co],
                },
            });
        }
    }
    // Backward data over input rows and input-channel parts (whole groups for grouped
    // convolutions; for dense ones every output channel, a slice of weight rows).
    let bchans: Vec<(usize, usize, usize, usize, usize)> = if grouped {
        chans.clone()
    } else {
        ranges(ci, sp.pc)
            .into_iter()
            .map(|(a, b)| (a, b - a, 0, co, 1))
            .collect()
    };
    for &(ci0, cin_t, co0, cols, groups) in &bchans {
        let (gcin, gcout, geom_groups) = if grouped {
            (cig, cog, groups)
        } else {
            (cin_t, co, 1)
        };
        let bw_len = kk * gcin * cols;
        let wcopy = if grouped {
            Strided {
                src_offset: co0,
                dst_offset: 0,
                counts: [1, kk, cig, cols],
                src_strides: [0, cig * co, co],
                dst_strides: [0, cig * cols, cols],
            }
        } else {
            Strided {
                src_offset: ci0 * co,
                dst_offset: 0,
                counts: [1, kk, cin_t, co],
                src_strides: [0, ci * co, co],
                dst_strides: [0, cin_t * co, co],
            }
        };
        for &(n0, n1) in &nrs {
            let nb = n1 - n0;
            for (a, b) in ranges(h, sp.ph) {
                let t = tile % tiles;
                tile += 1;
                let oa = (a + pt).saturating_sub(d.kernel_h - 1).div_ceil(st).min(oh);
                let ob = ((b - 1 + pt) / st + 1).min(oh).max(oa);
                let geom = ConvGeom {
                    nb,
                    in_h0: a,
                    in_hn: b - a,
                    in_w0: 0,
                    in_wn: w,
                    out_h0: oa,
                    out_hn: ob - oa,
                    out_w0: 0,
                    out_wn: ow,
                    kh: d.kernel_h,
                    kw: d.kernel_w,
                    stride: st,
                    pad_t: pt,
                    pad_l: d.padding.left,
                    groups: geom_groups,
                    cin_g: gcin,
                    cout_g: gcout,
                };
                let dyw = g.add_tensor(format!("{name}.dywin{t}"), geom.out_len(), t)?;
                let wl = g.add_tensor(format!("{name}.wb{t}"), bw_len, t)?;
                let dxb = g.add_tensor(format!("{name}.dx{t}"), geom.in_len(), t)?;
                bin.push(Transfer {
                    src: dyg,
                    dsts: vec![dyw],
                    copy: box_from(oh, ow, co, n0, nb, oa, ob - oa, co0, cols),
                });
                bin.push(Transfer {
                    src: wg,
                    dsts: vec![wl],
                    copy: wcopy,
                });
                bout.push(Transfer {
                    src: dxb,
                    dsts: vec![dxg],
                    copy: swap(box_from(h, w, ci, n0, nb, a, b - a, ci0, cin_t)),
                });
                let f = |t: TensorId, l: usize| FieldRef::whole(t, l);
                let bwd = if depthwise {
                    Codelet::dw_vmac_bwd_data(geom)
                } else {
                    Codelet::conv_amp_bwd_data(geom)
                };
                g.add_vertex(
                    bd_cs,
                    t,
                    bwd,
                    vec![f(dyw, geom.out_len()), f(wl, bw_len), f(dxb, geom.in_len())],
                )?;
            }
        }
    }
    let ex = |g: &mut Graph, nm: &str, l, v: Vec<Transfer>| {
        g.add_exchange(format!("{name}.{nm}"), l, v)
            .map(Program::Exchange)
    };
    let prog = Program::Sequence(vec![
        ex(&mut g, "fwd_in", lf, fin)?,
        Program::Execute(fwd_cs),
        ex(&mut g, "fwd_out", lf, fout)?,
        ex(&mut g, "bwd_in", lb, bin)?,
        Program::Execute(bd_cs),
        ex(&mut g, "bwd_out", lb, bout)?,
        ex(&mut g, "wgrad_in", lb, win)?,
        Program::Execute(wg_cs),
        Program::Execute(wr_cs),
        ex(&mut g, "wgrad_gather", lb, gath)?,
        Program::Execute(red_cs),
        ex(&mut g, "wgrad_out", lb, dwout)?,
    ]);
    let profile = g.profile(&prog)?;
    let mut rng = Rng(seed);
    let (x, wt, dy) = (rng.vec(s.x_len), rng.vec(s.w_len), rng.vec(s.y_len));
    let mut e = Engine::new(&g);
    e.write(xg, &x)?;
    e.write(wg, &wt)?;
    e.write(dyg, &dy)?;
    e.run(&prog)?;
    let lpf = &profile.layers[0];
    let lpb = &profile.layers[1];
    let tot = |l: &super::graph::LayerProfile| l.compute_cycles + l.exchange_cycles + l.sync_cycles;
    let lines = vec![
        RunLine {
            name: name.into(),
            pass: "fwd",
            rel_err: rel_err(e.read(yg), &reference::conv_forward(oracle, s, &x, &wt)?),
            tiles: lpf.tiles_used,
            cycles: tot(lpf),
        },
        RunLine {
            name: name.into(),
            pass: "bwd_data",
            rel_err: rel_err(
                e.read(dxg),
                &reference::conv_backward_data(oracle, s, &dy, &wt)?,
            ),
            tiles: lpb.tiles_used,
            cycles: tot(lpb),
        },
        RunLine {
            name: name.into(),
            pass: "bwd_weight",
            rel_err: rel_err(
                e.read(dwg),
                &reference::conv_backward_weight(oracle, s, &x, &dy)?,
            ),
            tiles: lpb.tiles_used,
            cycles: tot(lpb),
        },
    ];
    let pic = want_picture.then(|| TilePicture {
        bytes: lpf.tile_bytes.clone(),
        cycles: lpf.tile_cycles.clone(),
        budget: target.budget_bytes(),
    });
    Ok((lines, pic))
}

fn swap(c: Strided) -> Strided {
    Strided {
        src_offset: c.dst_offset,
        dst_offset: c.src_offset,
        counts: c.counts,
        src_strides: c.dst_strides,
        dst_strides: c.src_strides,
    }
}

/// Runs every convolution of `arch` at `res`, batch `batch`, through the model with
/// the planner's forward split (without input-channel splits).
pub fn run_network(
    arch: &crate::arch::ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    oracle: ConvOracle,
    picture_layer: Option<&str>,
) -> Result<RunResult> {
    let layers = network::layers(arch, res, batch)?;
    let pl = Planner::new(target.clone(), Precision::F32);
    let mut out = Vec::new();
    let mut picture = None;
    let mut skipped = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let Op::Conv(s) = &l.op else { continue };
        let mut best: Option<(ConvSplit, u64)> = None;
        for sp in pl.conv_splits(s).into_iter().filter(|sp| sp.pci == 1) {
            if let Some(c) = pl.conv_cost(s, &sp, Pass::Fwd)?
                && best.is_none_or(|b| c.total() < b.1)
            {
                best = Some((sp, c.total()));
            }
        }
        let sp = best.map(|b| b.0).unwrap_or(ConvSplit {
            pn: 1,
            ph: 1,
            pc: 1,
            pci: 1,
        });
        let want = picture_layer == Some(l.name.as_str());
        let (lines, pic) = run_conv(&l.name, l.kind, s, sp, target, oracle, i as u64 + 1, want)?;
        out.extend(lines);
        if pic.is_some() {
            picture = pic;
        }
    }
    // The blocks chained (each fed by the previous block's output, the loss at the
    // end, gradients flowing back); if one does not fit, each block on its own.
    let chained = match network::blocks(arch, res, batch)? {
        Some(_) => match run_blocks_chained(arch, res, batch, target, 4242) {
            Ok(lines) => {
                out.extend(lines);
                true
            }
            Err(e @ crate::error::Error::TileMemory { .. }) => {
                skipped.push(("block chain".to_string(), e.to_string()));
                false
            }
            Err(e) => return Err(e),
        },
        None => false,
    };
    if let (false, Some(blocks)) = (chained, network::blocks(arch, res, batch)?) {
        for (i, (name, spec)) in blocks.iter().enumerate() {
            match check_block(name, spec, target, 1000 + i as u64) {
                Ok(lines) => out.extend(lines),
                Err(e @ crate::error::Error::TileMemory { .. }) => {
                    skipped.push((name.clone(), e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
    }
    let max_rel_err = out.iter().map(|l| l.rel_err).fold(0.0, f64::max);
    Ok(RunResult {
        layers: out,
        max_rel_err,
        picture,
        skipped,
    })
}

/// Runs one MBConv block forward and backward through the model
/// ([`super::block::run_block`]) on random data and compares: the output with the
/// `f64` block forward ([`reference::block_forward`]), and the input and every
/// parameter gradient by a directional derivative — for a random direction `v`,
/// `⟨g, v⟩` against the central difference of the `f64` loss `Σ dout·out` along `v`,
/// the difference scaled by `√n / (‖g‖·‖v‖)` (the typical size of `⟨g, v⟩`) so that it
/// reads as a relative error.
pub fn check_block(
    name: &str,
    spec: &BlockSpec,
    target: &Target,
    seed: u64,
) -> Result<Vec<RunLine>> {
    let mut rng = Rng(seed);
    let shapes = spec.param_shapes();
    let params = random_block_params(spec, &mut rng);
    let (oh, ow) = spec.out_hw();
    let x = rng.vec(spec.batch * spec.h * spec.w * spec.cin);
    let dout = rng.vec(spec.batch * oh * ow * spec.cout);
    block_lines(name, spec, target, &mut rng, &shapes, &params, &x, &dout)
}

/// Random block parameters: γ near 1, the other norm parameters small, weights scaled
/// by their fan-in.
fn random_block_params(spec: &BlockSpec, rng: &mut Rng) -> Vec<Vec<f32>> {
    spec.param_shapes()
        .iter()
        .map(|(pname, len)| {
            let v = rng.vec(*len);
            if pname.starts_with("norm") {
                let c = if *pname == "norm3" {
                    spec.cout
                } else {
                    spec.mid()
                };
                v.iter()
                    .enumerate()
                    .map(|(i, r)| if i < c { 1.0 + 0.3 * r } else { 0.2 * r })
                    .collect()
            } else {
                let fan = if *pname == "w_spatial" {
                    spec.kernel * spec.kernel * spec.group_size
                } else {
                    16
                };
                v.iter().map(|r| r / (fan as f32).sqrt()).collect()
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn block_lines(
    name: &str,
    spec: &BlockSpec,
    target: &Target,
    rng: &mut Rng,
    shapes: &[(&'static str, usize)],
    params: &[Vec<f32>],
    x: &[f32],
    dout: &[f32],
) -> Result<Vec<RunLine>> {
    let r = super::block::run_block(spec, target, x, params, dout)?;
    let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (x64, d64) = (to64(x), to64(dout));
    let p64: Vec<Vec<f64>> = params.iter().map(|p| to64(p)).collect();
    let loss = |x: &[f64], p: &[Vec<f64>]| -> f64 {
        reference::block_forward(spec, x, p)
            .iter()
            .zip(&d64)
            .map(|(a, b)| a * b)
            .sum()
    };
    let mut lines = vec![RunLine {
        name: name.into(),
        pass: "block_fwd",
        rel_err: rel_err(&r.out, &reference::block_forward(spec, &x64, &p64)),
        tiles: spec.batch + 1,
        cycles: r.fwd_cycles,
    }];
    let h = 1e-4;
    let mut worst: f64 = 0.0;
    // Direction over x, then over each parameter tensor.
    for which in 0..=shapes.len() {
        let len = if which == 0 {
            x.len()
        } else {
            shapes[which - 1].1
        };
        if len == 0 {
            continue;
        }
        let v = to64(&rng.vec(len));
        let g: Vec<f64> = if which == 0 {
            to64(&r.dx)
        } else if shapes[which - 1].0.starts_with("norm") && len % 4 == 0 && {
            let c = if shapes[which - 1].0 == "norm3" {
                spec.cout
            } else {
                spec.mid()
            };
            len == 4 * c
        } {
            // [C][4] gradients against [4][C] parameters.
            let c = len / 4;
            let gr = &r.grads[which - 1];
            (0..len).map(|j| gr[(j % c) * 4 + j / c] as f64).collect()
        } else {
            to64(&r.grads[which - 1])
        };
        let shift = |s: f64| {
            let (mut xs, mut ps) = (x64.clone(), p64.clone());
            let t = if which == 0 {
                &mut xs
            } else {
                &mut ps[which - 1]
            };
            for (a, b) in t.iter_mut().zip(&v) {
                *a += s * b;
            }
            loss(&xs, &ps)
        };
        let fd = (shift(h) - shift(-h)) / (2.0 * h);
        let dd: f64 = g.iter().zip(&v).map(|(a, b)| a * b).sum();
        let gn = g.iter().map(|a| a * a).sum::<f64>().sqrt();
        let vn = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let scale = gn * vn / (len as f64).sqrt();
        if scale > 0.0 {
            worst = worst.max((dd - fd).abs() / scale);
        }
    }
    lines.push(RunLine {
        name: name.into(),
        pass: "block_bwd",
        rel_err: worst,
        tiles: spec.batch + 1,
        cycles: r.bwd_cycles,
    });
    Ok(lines)
}

/// A block's parameter gradient in its parameter's layout (norm gradients come as
/// `[C][4]` against `[4][C]` parameters; γ-only norms and weights as they are).
fn grad_as_param(spec: &BlockSpec, pname: &str, len: usize, g: &[f32]) -> Vec<f64> {
    let c = if pname == "norm3" {
        spec.cout
    } else {
        spec.mid()
    };
    if pname.starts_with("norm") && len == 4 * c {
        (0..len).map(|j| g[(j % c) * 4 + j / c] as f64).collect()
    } else {
        g.iter().map(|&a| a as f64).collect()
    }
}

/// The MBConv blocks of `arch` at `res`, batch `batch`, **chained** through the model:
/// block `i`'s input is block `i−1`'s output from the model (the first block gets a
/// random stem-shaped input), the loss `Σ dout·out` sits after the last block, and the
/// backward runs the blocks in reverse, each fed the input gradient the model computed
/// for the block after it (each block's program recomputes its forward). Lines:
/// `chain_fwd` per block (the model's output against [`reference::block_forward`] on
/// the same chained input), `chain_out` (the last output against the `f64` chain run
/// from the first input: the error accumulated over the chain), `chain_bwd` per block
/// (its parameter gradients, and for the first block the input gradient, against a
/// directional derivative of the `f64` chained loss, scaled to read as a relative
/// error as in [`check_block`]).
pub fn run_blocks_chained(
    arch: &crate::arch::ArchConfig,
    res: usize,
    batch: usize,
    target: &Target,
    seed: u64,
) -> Result<Vec<RunLine>> {
    use super::block::run_block;
    let Some(blocks) = network::blocks(arch, res, batch)? else {
        return Err(crate::error::Error::InvalidArgument(format!(
            "{}: BatchNorm statistics span the batch; the block program places one image per tile",
            arch.name
        )));
    };
    let mut rng = Rng(seed);
    let to64 = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let params: Vec<Vec<Vec<f32>>> = blocks
        .iter()
        .map(|(_, s)| random_block_params(s, &mut rng))
        .collect();
    let p64: Vec<Vec<Vec<f64>>> = params
        .iter()
        .map(|p| p.iter().map(|t| to64(t)).collect())
        .collect();
    let s0 = &blocks[0].1;
    let mut xs = vec![rng.vec(s0.batch * s0.h * s0.w * s0.cin)];
    let mut lines = Vec::new();
    for (i, (name, spec)) in blocks.iter().enumerate() {
        let (oh, ow) = spec.out_hw();
        let zeros = vec![0.0; spec.batch * oh * ow * spec.cout];
        let r = run_block(spec, target, &xs[i], &params[i], &zeros)?;
        let want = reference::block_forward(spec, &to64(&xs[i]), &p64[i]);
        lines.push(RunLine {
            name: name.clone(),
            pass: "chain_fwd",
            rel_err: rel_err(&r.out, &want),
            tiles: spec.batch + spec.param_shapes().len(),
            cycles: r.fwd_cycles,
        });
        xs.push(r.out);
    }
    let dout = rng.vec(xs[blocks.len()].len());
    let d64 = to64(&dout);
    let chain = |x0: &[f64], ps: &[Vec<Vec<f64>>]| -> Vec<f64> {
        let mut a = x0.to_vec();
        for (i, (_, s)) in blocks.iter().enumerate() {
            a = reference::block_forward(s, &a, &ps[i]);
        }
        a
    };
    let x0 = to64(&xs[0]);
    lines.push(RunLine {
        name: blocks[blocks.len() - 1].0.clone(),
        pass: "chain_out",
        rel_err: rel_err(&xs[blocks.len()], &chain(&x0, &p64)),
        tiles: 0,
        cycles: 0,
    });
    let mut d = dout;
    let mut grads = vec![Vec::new(); blocks.len()];
    let mut bwd_cycles = vec![0; blocks.len()];
    for i in (0..blocks.len()).rev() {
        let r = run_block(&blocks[i].1, target, &xs[i], &params[i], &d)?;
        grads[i] = r.grads;
        bwd_cycles[i] = r.bwd_cycles;
        d = r.dx;
    }
    let loss = |x0: &[f64], ps: &[Vec<Vec<f64>>]| -> f64 {
        chain(x0, ps).iter().zip(&d64).map(|(a, b)| a * b).sum()
    };
    let h = 1e-5;
    // (gradient, direction) → scaled difference from the central difference.
    let check = |g: &[f64], v: &[f64], fd: f64| -> f64 {
        let dd: f64 = g.iter().zip(v).map(|(a, b)| a * b).sum();
        let gn = g.iter().map(|a| a * a).sum::<f64>().sqrt();
        let vn = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let scale = gn * vn / (g.len() as f64).sqrt();
        if scale > 0.0 {
            (dd - fd).abs() / scale
        } else {
            fd.abs()
        }
    };
    for (i, (name, spec)) in blocks.iter().enumerate() {
        let shapes = spec.param_shapes();
        let mut worst: f64 = 0.0;
        if i == 0 {
            let v = to64(&rng.vec(x0.len()));
            let at = |s: f64| {
                let xs: Vec<f64> = x0.iter().zip(&v).map(|(a, b)| a + s * b).collect();
                loss(&xs, &p64)
            };
            worst = worst.max(check(&to64(&d), &v, (at(h) - at(-h)) / (2.0 * h)));
        }
        // One random direction over all of the block's parameters.
        let vs: Vec<Vec<f64>> = shapes.iter().map(|(_, l)| to64(&rng.vec(*l))).collect();
        let at = |s: f64| {
            let mut ps = p64.clone();
            for (t, v) in ps[i].iter_mut().zip(&vs) {
                for (a, b) in t.iter_mut().zip(v) {
                    *a += s * b;
                }
            }
            loss(&x0, &ps)
        };
        let g: Vec<f64> = shapes
            .iter()
            .zip(&grads[i])
            .flat_map(|((pn, l), gr)| grad_as_param(spec, pn, *l, gr))
            .collect();
        let v: Vec<f64> = vs.concat();
        worst = worst.max(check(&g, &v, (at(h) - at(-h)) / (2.0 * h)));
        lines.push(RunLine {
            name: name.clone(),
            pass: "chain_bwd",
            rel_err: worst,
            tiles: spec.batch + shapes.len(),
            cycles: bwd_cycles[i],
        });
    }
    Ok(lines)
}
