//! The convolution builder: forward now (input windows gathered from the previous
//! layer's boxes, only what lies on other tiles crossing the exchange; weights read
//! from resident copies), weight gradient and backward data on the tape.

use super::boxes::{Dist, gather};
use super::context::{LayerSplit, Net, SumJob, fr, rows_copy, tr, whole_rows};
use super::split::{choose, is_depthwise, out_geom};
use crate::error::Result;
use crate::ipu::codelets::{Codelet, ConvGeom, SHIM_WORKERS};
use crate::ipu::graph::{TensorId, Transfer};
use crate::kernels::conv::ConvShape;

/// The window (images `n0..n0+nb`, rows `r0..r0+rn`, channels `c0..c0+cn`) of `x` on
/// `tile`: the part of `x` itself when it is exactly that box on that tile (no copy),
/// else a new tensor filled by `trs`.
#[allow(clippy::too_many_arguments)]
pub(super) fn window(
    net: &mut Net,
    name: String,
    x: &Dist,
    (n0, nb): (usize, usize),
    (r0, rn): (usize, usize),
    (c0, cn): (usize, usize),
    tile: u32,
    trs: &mut Vec<Transfer>,
) -> Result<TensorId> {
    let mut it = x.meeting((n0, nb), (r0, rn), (c0, cn));
    if let (Some(p), None) = (it.next(), it.next())
        && (p.n0, p.nb, p.r0, p.rn, p.c0, p.cn, p.tile) == (n0, nb, r0, rn, c0, cn, tile)
    {
        return Ok(p.t);
    }
    let t = net.t(name, nb * rn * x.w * cn, tile)?;
    gather(x, n0, nb, r0, rn, c0, cn, t, trs);
    Ok(t)
}

/// One convolution of the network: forward now, backward pushed on the tape.
pub(super) fn conv(
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
    let depthwise = is_depthwise(&s);
    let wp = net.param(&format!("{name}.weight"), kk * cig, co)?;
    let (grid, resident) = choose(net, &s, Some(x))?;
    net.layer(name, kind, s.flops());
    let y = net.dist(&format!("{name}.out"), (d.batch, oh, ow, co), grid)?;
    if net.phase == super::context::Phase::Fwd {
        net.splits.push(LayerSplit {
            name: name.into(),
            image_parts: y.grid.imgs.len(),
            row_parts: y.rparts(),
            chan_parts: y.grid.chans.len(),
            boxes: y.parts.len(),
        });
    }
    let mut trs = Vec::new();
    let mut vs = Vec::new();
    for p in &y.parts {
        let (g, i0, icn) = out_geom(&s, p);
        let xw = window(
            net,
            format!("{name}.xwin"),
            x,
            (p.n0, p.nb),
            (g.in_h0, g.in_hn),
            (i0, icn),
            p.tile,
            &mut trs,
        )?;
        let wl = net.weight_slice(
            wp,
            p.tile,
            g.w_len(),
            rows_copy(p.c0, co, 0, p.cn, kk * cig, p.cn),
            resident,
            &mut trs,
        )?;
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
    net.on_backward(Box::new(move |net: &mut Net, dy: Dist| {
        let y = y2;
        net.layer(&name, kind, 2.0 * s.flops());
        let dy = net.align(&format!("{name}.dy"), &dy, &y)?;
        // Weight gradient per box, from its input window.
        let (mut trs, mut vs, mut vs2) = (Vec::new(), Vec::new(), Vec::new());
        let mut partials: Vec<(usize, usize, TensorId, u32)> = Vec::new();
        for p in dy.parts.iter() {
            let (g, i0, icn) = out_geom(&s, p);
            let xw = window(
                net,
                format!("{name}.xwin_bwd"),
                &x,
                (p.n0, p.nb),
                (g.in_h0, g.in_hn),
                (i0, icn),
                p.tile,
                &mut trs,
            )?;
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
            partials.push((p.c0, p.cn, part, p.tile));
        }
        net.ex(&format!("{name}.x_bwd"), trs)?;
        net.cs(&format!("{name}.wgrad"), vs)?;
        net.cs(&format!("{name}.wgrad_workers"), vs2)?;
        // Reduce the partials of each output-channel range over the images and rows,
        // spread over the tiles that hold them.
        let wgrad = net.params[wp].grad;
        let mut chans: Vec<(usize, usize)> = partials.iter().map(|p| (p.0, p.1)).collect();
        chans.sort_unstable();
        chans.dedup();
        let mut jobs = Vec::new();
        let mut outs = Vec::new();
        for (c0, cn) in chans {
            let mine: Vec<&(usize, usize, TensorId, u32)> =
                partials.iter().filter(|p| (p.0, p.1) == (c0, cn)).collect();
            let ts: Vec<TensorId> = mine.iter().map(|p| p.2).collect();
            let mut spread: Vec<u32> = mine.iter().map(|p| p.3).collect();
            spread.dedup();
            let tile = spread[0];
            let len = kk * cig * cn;
            let sum = net.t(format!("{name}.dw{c0}"), len, tile)?;
            jobs.push(SumJob {
                contribs: whole_rows(&ts, len),
                rows: ts.len(),
                width: len,
                out: sum,
                out_tile: tile,
                spread,
            });
            outs.push(tr(sum, wgrad, rows_copy(0, cn, c0, co, kk * cig, cn)));
        }
        net.sum_rows(&format!("{name}.dw"), jobs)?;
        net.ex(&format!("{name}.dw_out"), outs)?;
        if !need_dx {
            return Ok(dy);
        }
        // Backward data over the input rows and channel ranges of the forward split.
        let align = if grouped { cig } else { 1 };
        let g0 = &y.grid;
        let grid = super::boxes::Grid::new(
            d.batch,
            h,
            ci,
            g0.imgs.len(),
            g0.rows.len(),
            g0.chans.len(),
            align,
        );
        let dx = net.dist(&format!("{name}.dx"), (d.batch, h, w, ci), grid)?;
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
            let dyw = window(
                net,
                format!("{name}.dywin"),
                &dy,
                (p.n0, p.nb),
                (oa, ob - oa),
                (o0, ocn),
                p.tile,
                &mut trs,
            )?;
            let copy = if grouped {
                rows_copy(o0, co, 0, ocn, kk * cig, ocn)
            } else {
                rows_copy(p.c0 * co, ci * co, 0, p.cn * co, kk, p.cn * co)
            };
            let wl = net.weight_slice(wp, p.tile, g.w_len(), copy, resident, &mut trs)?;
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
