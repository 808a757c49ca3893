//! The norm builder: statistics, the fused normalize + activation + Proxy Norm, and
//! its backward.

use super::boxes::{Dist, Part};
use super::context::{Contrib, Net, fr, rows_copy, tr};
use crate::error::{Error, Result};
use crate::ipu::codelets::{Codelet, NormGeom, ProxyScale, SHIM_WORKERS};
use crate::ipu::graph::{Strided, TensorId};
use crate::ipu::vocab::NormSpec;
use std::cell::RefCell;
use std::rc::Rc;

/// Per-part local copies of a norm's per-channel vectors.
#[derive(Clone)]
pub(super) struct NormLocal {
    stats: TensorId,
    gamma: TensorId,
    beta: TensorId,
    mu: TensorId,
    scale: TensorId,
}

/// The statistics groups of a norm over `d`: per image (GN, LN) or one (BN); each
/// part's row in its group's buffer.
pub(super) fn stat_groups(d: &Dist, per_sample: bool) -> (usize, usize, Vec<(usize, usize)>) {
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
pub(super) fn group_sums(
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
pub(super) type DsCell = Rc<RefCell<Option<Vec<(TensorId, usize, usize)>>>>;

/// What a norm hands to the squeeze-excitation after it when its proxy scale is
/// delayed into the SE gate: the scale `s` `[C]` on the norm's tile and the cell for
/// its gradient.
pub(super) type Delayed = Option<(TensorId, DsCell)>;

/// A norm (+ activation, + Proxy Norm) in place on the boxes of `x`.
pub(super) fn norm(net: &mut Net, name: &str, ns: NormSpec, x: &Dist) -> Result<(Dist, Delayed)> {
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
    let q: Vec<f32> = crate::kernels::proxy_norm::reference::quantiles(200)
        .iter()
        .map(|&v| v as f32)
        .collect();
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
