//! The norm builder: statistics per box reduced per group (image, or the batch for
//! BatchNorm) over the tiles that hold them, the fused normalize + activation +
//! Proxy Norm on the boxes of the convolution before it (in place for inference),
//! the Proxy Norm statistics per channel chunk spread over the tiles, and the
//! backward.

use super::boxes::{Dist, Grid, Part, gather};
use super::context::{Contrib, Net, SumJob, fr, rows_copy, tiles_of, tr};
use crate::error::Result;
use crate::ipu::codelets::{Codelet, NormGeom, ProxyScale, SHIM_WORKERS};
use crate::ipu::graph::{Strided, TensorId, Transfer};
use crate::ipu::vocab::NormSpec;
use std::cell::RefCell;
use std::rc::Rc;

/// Channels per Proxy Norm chunk: the (μ, s) statistics and the parameter gradient
/// terms of a chunk run on one tile (200 quantiles each).
const PROXY_CHUNK: usize = 8;

/// Where the squeeze-excitation's backward leaves the delayed scale's gradient
/// (`[cc]` per channel range: tensor, first channel, channels) for the norm before it.
pub(super) type DsCell = Rc<RefCell<Option<Vec<(TensorId, usize, usize)>>>>;

/// What a norm hands to the squeeze-excitation after it when its proxy scale is
/// delayed into the SE gate: the scale `s` (`[C]` as channel chunks, a Dist of one
/// image of 1×1) and the cell for its gradient.
pub(super) type Delayed = Option<(Dist, DsCell)>;

/// The per-box constant `value` of `len` elements on `tile` (shared by every norm).
fn konst_on(net: &mut Net, what: &str, value: f32, len: usize, tile: u32) -> Result<TensorId> {
    net.konst(format!("{what}{len}@{tile}"), vec![value; len], tile)
}

/// Per-box `[nb·k]` rows of `vals` (one vector of `k·cn` per image of the box)
/// reduced per statistics group: per image (`per_sample`) or over the batch; returns
/// the reduced `[C·k]` per group and its tile (the group's first box's tile).
fn group_sums(
    net: &mut Net,
    name: &str,
    d: &Dist,
    per_sample: bool,
    vals: &[TensorId],
    k: usize,
) -> Result<(Vec<TensorId>, Vec<u32>)> {
    let c = d.c;
    let rp = d.rparts();
    let groups = if per_sample { d.n } else { 1 };
    let mut jobs = Vec::new();
    let mut sums = Vec::new();
    let mut tiles = Vec::new();
    for gi in 0..groups {
        let (i0, i1) = if per_sample { (gi, gi + 1) } else { (0, d.n) };
        let mine: Vec<(&Part, TensorId)> = d
            .parts
            .iter()
            .zip(vals)
            .filter(|(p, _)| p.n0 < i1 && i0 < p.n0 + p.nb)
            .map(|(p, v)| (p, *v))
            .collect();
        let tile = mine[0].0.tile;
        let mut cs = Vec::new();
        for (p, v) in &mine {
            for i in p.n0.max(i0)..(p.n0 + p.nb).min(i1) {
                cs.push(Contrib {
                    src: *v,
                    src_off: (i - p.n0) * p.cn * k,
                    row: if per_sample { p.ri } else { i * rp + p.ri },
                    col: p.c0 * k,
                    len: p.cn * k,
                });
            }
        }
        let sum = net.t(format!("{name}.sum{gi}"), c * k, tile)?;
        jobs.push(SumJob {
            contribs: cs,
            rows: if per_sample { rp } else { d.n * rp },
            width: c * k,
            out: sum,
            out_tile: tile,
            spread: tiles_of(mine.iter().map(|m| m.0)),
        });
        sums.push(sum);
        tiles.push(tile);
    }
    net.sum_rows(name, jobs)?;
    Ok((sums, tiles))
}

/// Per box, the rows of the group results `per_group` (`[len]` each) its images need:
/// `[nb][len]` per-sample, `[1][len]` over the batch.
fn to_boxes(
    net: &mut Net,
    name: &str,
    d: &Dist,
    per_sample: bool,
    per_group: &[TensorId],
    len: usize,
    trs: &mut Vec<Transfer>,
) -> Result<Vec<TensorId>> {
    let mut out = Vec::new();
    for p in &d.parts {
        let rows = if per_sample { p.nb } else { 1 };
        let t = net.t(format!("{name}@"), rows * len, p.tile)?;
        for r in 0..rows {
            let g = if per_sample { p.n0 + r } else { 0 };
            trs.push(tr(per_group[g], t, Strided::contiguous(0, r * len, len)));
        }
        out.push(t);
    }
    Ok(out)
}

/// The parameter vectors of a norm and its channel chunks.
struct NormParams {
    gamma: usize,
    beta: Option<usize>,
    proxy: Option<(usize, usize)>,
    chunks: Vec<(usize, usize)>,
    chunk_tiles: Vec<u32>,
}

impl NormParams {
    /// The resident copy of channels `c0..c0+cn` of parameter `pi` (or the zeros)
    /// on `tile`.
    fn slice(
        net: &mut Net,
        pi: Option<usize>,
        c0: usize,
        cn: usize,
        tile: u32,
    ) -> Result<TensorId> {
        match pi {
            Some(pi) => net.weight_copy(pi, tile, cn, Strided::contiguous(c0, 0, cn)),
            None => konst_on(net, "zeros", 0.0, cn, tile),
        }
    }
}

/// The Proxy Norm statistics (μ, s) of every chunk, each on its chunk tile.
fn proxy_stats(
    net: &mut Net,
    name: &str,
    ns: NormSpec,
    np: &NormParams,
    (b2, g2): (usize, usize),
) -> Result<(Vec<TensorId>, Vec<TensorId>)> {
    let q: Vec<f32> = crate::kernels::proxy_norm::reference::quantiles(200)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let (mut v1, mut v2, mut v3) = (Vec::new(), Vec::new(), Vec::new());
    let (mut mus, mut scs) = (Vec::new(), Vec::new());
    for (&(j0, j1), &t) in np.chunks.iter().zip(&np.chunk_tiles) {
        let cc = j1 - j0;
        let qt = net.konst(format!("quantiles@{t}"), q.clone(), t)?;
        let g = NormParams::slice(net, Some(np.gamma), j0, cc, t)?;
        let b = NormParams::slice(net, np.beta, j0, cc, t)?;
        let pb = NormParams::slice(net, Some(b2), j0, cc, t)?;
        let pg = NormParams::slice(net, Some(g2), j0, cc, t)?;
        let parts = net.t(format!("{name}.pn_partials{j0}"), SHIM_WORKERS * cc * 2, t)?;
        let sums = net.t(format!("{name}.pn_sums{j0}"), cc * 2, t)?;
        let mu = net.t(format!("{name}.mu{j0}"), cc, t)?;
        let sc = net.t(format!("{name}.s{j0}"), cc, t)?;
        v1.push((
            t,
            Codelet::proxy_stats(cc, 200, ns.act),
            vec![
                fr(g, cc),
                fr(b, cc),
                fr(pb, cc),
                fr(pg, cc),
                fr(qt, 200),
                fr(parts, SHIM_WORKERS * cc * 2),
            ],
        ));
        v2.push((
            t,
            Codelet::reduce(SHIM_WORKERS, cc * 2, false),
            vec![fr(parts, SHIM_WORKERS * cc * 2), fr(sums, cc * 2)],
        ));
        v3.push((
            t,
            Codelet::proxy_finalize(cc, 200, 0.03),
            vec![fr(sums, cc * 2), fr(mu, cc), fr(sc, cc)],
        ));
        mus.push(mu);
        scs.push(sc);
    }
    net.cs(&format!("{name}.proxy_stats"), v1)?;
    net.cs(&format!("{name}.proxy_reduce"), v2)?;
    net.cs(&format!("{name}.proxy_finalize"), v3)?;
    Ok((mus, scs))
}

/// `[C]` held as channel chunks on their tiles, as a Dist of one 1×1 image.
pub(super) fn chunks_dist(
    c: usize,
    chunks: &[(usize, usize)],
    tiles: &[u32],
    ts: &[TensorId],
) -> Dist {
    Dist {
        n: 1,
        h: 1,
        w: 1,
        c,
        grid: Grid {
            imgs: vec![(0, 1)],
            rows: vec![(0, 1)],
            chans: chunks.to_vec(),
        },
        parts: chunks
            .iter()
            .zip(tiles)
            .zip(ts)
            .map(|((&(a, b), &tile), &t)| Part {
                n0: 0,
                nb: 1,
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

/// Per box, its channels of the per-channel chunks `src` (a chunk Dist), or a
/// constant when there is none.
fn chunk_slices(
    net: &mut Net,
    name: &str,
    x: &Dist,
    src: Option<&Dist>,
    konst: (&str, f32),
    trs: &mut Vec<Transfer>,
) -> Result<Vec<TensorId>> {
    let mut v = Vec::new();
    for p in &x.parts {
        v.push(match src {
            Some(s) => {
                let t = net.t(format!("{name}@"), p.cn, p.tile)?;
                gather(s, 0, 1, 0, 1, p.c0, p.cn, t, trs);
                t
            }
            None => konst_on(net, konst.0, konst.1, p.cn, p.tile)?,
        });
    }
    Ok(v)
}

/// A norm (+ activation, + Proxy Norm) on the boxes of `x`.
pub(super) fn norm(net: &mut Net, name: &str, ns: NormSpec, x: &Dist) -> Result<(Dist, Delayed)> {
    let c = x.c;
    let cg = ns.cg.max(1);
    let groups = c / cg;
    let gamma = net.param(&format!("{name}.weight"), 1, c)?;
    let beta = if ns.beta {
        Some(net.param(&format!("{name}.bias"), 1, c)?)
    } else {
        None
    };
    let proxy = if ns.proxy {
        Some((
            net.param(&format!("{name}.proxy_beta"), 1, c)?,
            net.param(&format!("{name}.proxy_gamma"), 1, c)?,
        ))
    } else {
        None
    };
    let chunks = super::boxes::ranges(c, c.div_ceil(PROXY_CHUNK));
    let chunk_tiles = net.tiles_for(name, chunks.len());
    let np = NormParams {
        gamma,
        beta,
        proxy,
        chunks,
        chunk_tiles,
    };
    net.layer(name, "norm", (x.n * x.h * x.w * c) as f64 * 10.0);
    let (mu_d, sc_d) = match proxy {
        Some(pp) => {
            let (mus, scs) = proxy_stats(net, name, ns, &np, pp)?;
            (
                Some(chunks_dist(c, &np.chunks, &np.chunk_tiles, &mus)),
                Some(chunks_dist(c, &np.chunks, &np.chunk_tiles, &scs)),
            )
        }
        None => (None, None),
    };
    let ds_cell: DsCell = Rc::new(RefCell::new(None));
    let delayed = match (&sc_d, ns.proxy && ns.scale == ProxyScale::Delayed) {
        (Some(s), true) => Some((s.clone(), ds_cell.clone())),
        _ => None,
    };
    // Statistics per box, reduced per group, back to the boxes — except BatchNorm
    // at inference, which normalizes by its running statistics (resident per box).
    let frozen = !net.opts.training && !ns.per_sample;
    let per_img = if ns.per_sample { 1 } else { x.n };
    let count = per_img * x.h * x.w * cg;
    let mut trs = Vec::new();
    let lstats = if frozen {
        let mut v = Vec::new();
        for p in &x.parts {
            let running = (0..groups * 2).map(|i| (i % 2) as f32).collect();
            let t = net.konst(format!("{name}.running@{}", p.tile), running, p.tile)?;
            v.push(t);
        }
        v
    } else {
        let mut vs = Vec::new();
        let mut psums = Vec::new();
        for p in &x.parts {
            let s = net.t(format!("{name}.psums"), p.nb * p.cn * 2, p.tile)?;
            vs.push((
                p.tile,
                Codelet::norm_stats(p.nb, p.rn * x.w, p.cn),
                vec![fr(p.t, p.len(x.w)), fr(s, p.nb * p.cn * 2)],
            ));
            psums.push(s);
        }
        net.cs(&format!("{name}.stats"), vs)?;
        let (sums, gtiles) =
            group_sums(net, &format!("{name}.stats"), x, ns.per_sample, &psums, 2)?;
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
        to_boxes(
            net,
            &format!("{name}.stats"),
            x,
            ns.per_sample,
            &stats,
            groups * 2,
            &mut trs,
        )?
    };
    let scale_src = if ns.proxy && ns.scale == ProxyScale::Full {
        sc_d.as_ref()
    } else {
        None
    };
    let lmu = chunk_slices(
        net,
        &format!("{name}.mu"),
        x,
        mu_d.as_ref(),
        ("zeros", 0.0),
        &mut trs,
    )?;
    let lscale = chunk_slices(
        net,
        &format!("{name}.scale"),
        x,
        scale_src,
        ("ones", 1.0),
        &mut trs,
    )?;
    net.ex(&format!("{name}.broadcast"), trs)?;
    let mut locals = Vec::new();
    for (i, p) in x.parts.iter().enumerate() {
        locals.push(NormLocal {
            stats: lstats[i],
            gamma: NormParams::slice(net, Some(gamma), p.c0, p.cn, p.tile)?,
            beta: NormParams::slice(net, beta, p.c0, p.cn, p.tile)?,
            mu: lmu[i],
            scale: lscale[i],
        });
    }
    let z = net.out_like(&format!("{name}.out"), x)?;
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
    let stat_len = move |p: &Part| if ns.per_sample { p.nb } else { 1 } * groups * 2;
    let fields = move |p: &Part, l: &NormLocal| {
        vec![
            fr(p.t, p.len(xw)),
            fr(l.stats, stat_len(p)),
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
            f.push(fr(zp.t, p.len(xw)));
            (p.tile, Codelet::norm_act(geom(p)), f)
        })
        .collect();
    net.cs(&format!("{name}.apply"), vs)?;
    let (x, z2, name) = (x.clone(), z.clone(), name.to_string());
    net.on_backward(Box::new(move |net: &mut Net, dz: Dist| {
        net.layer(&name, "norm", (x.n * x.h * x.w * c) as f64 * 20.0);
        let dz = net.align(&format!("{name}.dz"), &dz, &z2)?;
        let (mut vs, mut pimg, mut pch) = (Vec::new(), Vec::new(), Vec::new());
        for ((p, l), d) in x.parts.iter().zip(&locals).zip(&dz.parts) {
            let a = net.t(format!("{name}.grad_image"), p.nb * p.cn * 2, p.tile)?;
            let b = net.t(format!("{name}.grad_channel"), p.cn * 4, p.tile)?;
            let mut f = fields(p, l);
            f.push(fr(d.t, p.len(x.w)));
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
        let lm = to_boxes(
            net,
            &format!("{name}.grad_means"),
            &x,
            ns.per_sample,
            &means,
            groups * 2,
            &mut trs,
        )?;
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
                let n = p.len(x.w);
                let mut f = fields(p, l);
                f.push(fr(d.t, n));
                f.push(fr(*m, stat_len(p)));
                f.push(fr(o.t, n));
                (p.tile, Codelet::norm_act_grad_apply(geom(p)), f)
            })
            .collect();
        net.cs(&format!("{name}.grad_apply"), vs)?;
        // Per-channel sums over every box, per channel chunk on its tile.
        let rp = x.rparts();
        let rows = x.grid.imgs.len() * rp;
        let mut jobs = Vec::new();
        let mut csums = Vec::new();
        for (&(j0, j1), &t) in np.chunks.iter().zip(&np.chunk_tiles) {
            let cc = j1 - j0;
            let csum = net.t(format!("{name}.channel_sums{j0}"), cc * 4, t)?;
            let mut cs = Vec::new();
            for (bi, (p, b)) in x.parts.iter().zip(&pch).enumerate() {
                let (e0, e1) = (p.c0.max(j0), (p.c0 + p.cn).min(j1));
                if e0 < e1 {
                    let ii = bi / (rp * x.grid.chans.len());
                    cs.push(Contrib {
                        src: *b,
                        src_off: (e0 - p.c0) * 4,
                        row: ii * rp + p.ri,
                        col: (e0 - j0) * 4,
                        len: (e1 - e0) * 4,
                    });
                }
            }
            jobs.push(SumJob {
                contribs: cs,
                rows,
                width: cc * 4,
                out: csum,
                out_tile: t,
                spread: Vec::new(),
            });
            csums.push(csum);
        }
        net.sum_rows(&format!("{name}.channel"), jobs)?;
        if let Some(ds) = ds_cell.borrow_mut().take() {
            // The delayed scale's gradient (summed over the images) replaces
            // Σ dz·(a−μ) in slot 0 (see `ProxyNormParamGrad`).
            let mut trs = Vec::new();
            for (t, d0, dn) in ds {
                for (&(j0, j1), &cs) in np.chunks.iter().zip(&csums) {
                    let (e0, e1) = (d0.max(j0), (d0 + dn).min(j1));
                    if e0 < e1 {
                        trs.push(tr(
                            t,
                            cs,
                            rows_copy(e0 - d0, 1, (e0 - j0) * 4, 4, e1 - e0, 1),
                        ));
                    }
                }
            }
            net.ex(&format!("{name}.delayed_scale_grad"), trs)?;
        }
        let (mut v1, mut v2, mut v3) = (Vec::new(), Vec::new(), Vec::new());
        let mut outs = Vec::new();
        let q: Vec<f32> = crate::kernels::proxy_norm::reference::quantiles(200)
            .iter()
            .map(|&v| v as f32)
            .collect();
        for (j, (&(j0, j1), &t)) in np.chunks.iter().zip(&np.chunk_tiles).enumerate() {
            let cc = j1 - j0;
            let terms = net.t(format!("{name}.proxy_terms{j0}"), cc * 3, t)?;
            let out = net.t(format!("{name}.param_grads{j0}"), cc * 4, t)?;
            let g = NormParams::slice(net, Some(np.gamma), j0, cc, t)?;
            if let (Some((b2, g2)), Some(mu), Some(sc)) = (np.proxy, &mu_d, &sc_d) {
                let parts = net.t(
                    format!("{name}.proxy_grad_partials{j0}"),
                    SHIM_WORKERS * cc * 3,
                    t,
                )?;
                let qt = net.konst(format!("quantiles@{t}"), q.clone(), t)?;
                let b = NormParams::slice(net, np.beta, j0, cc, t)?;
                let pb = NormParams::slice(net, Some(b2), j0, cc, t)?;
                let pg = NormParams::slice(net, Some(g2), j0, cc, t)?;
                v1.push((
                    t,
                    Codelet::proxy_param_grad(cc, 200, 200, ns.act, ns.scale),
                    vec![
                        fr(csums[j], cc * 4),
                        fr(g, cc),
                        fr(b, cc),
                        fr(pb, cc),
                        fr(pg, cc),
                        fr(qt, 200),
                        fr(mu.parts[j].t, cc),
                        fr(sc.parts[j].t, cc),
                        fr(parts, SHIM_WORKERS * cc * 3),
                    ],
                ));
                v2.push((
                    t,
                    Codelet::reduce(SHIM_WORKERS, cc * 3, false),
                    vec![fr(parts, SHIM_WORKERS * cc * 3), fr(terms, cc * 3)],
                ));
            }
            v3.push((
                t,
                Codelet::proxy_grad_finalize(cc, ns.proxy),
                vec![
                    fr(csums[j], cc * 4),
                    fr(g, cc),
                    fr(terms, cc * 3),
                    fr(out, cc * 4),
                ],
            ));
            outs.push((out, j0, cc));
        }
        net.cs(&format!("{name}.proxy_param_grad"), v1)?;
        net.cs(&format!("{name}.proxy_terms"), v2)?;
        net.cs(&format!("{name}.param_grad"), v3)?;
        let mut trs = Vec::new();
        for (out, j0, cc) in outs {
            let mut to = |pi: usize, k: usize| {
                trs.push(tr(out, net.params[pi].grad, rows_copy(k, 4, j0, 1, cc, 1)));
            };
            to(np.gamma, 0);
            if let Some(b) = np.beta {
                to(b, 1);
            }
            if let Some((b2, g2)) = np.proxy {
                to(b2, 2);
                to(g2, 3);
            }
        }
        net.ex(&format!("{name}.param_grads_out"), trs)?;
        Ok(dx)
    }));
    Ok((z, delayed))
}

/// Per-box local copies of a norm's per-channel vectors.
#[derive(Clone)]
struct NormLocal {
    stats: TensorId,
    gamma: TensorId,
    beta: TensorId,
    mu: TensorId,
    scale: TensorId,
}
