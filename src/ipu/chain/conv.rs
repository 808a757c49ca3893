//! The convolution builder: forward now, weight gradient and backward data on the
//! tape.

use super::boxes::{Dist, Part, gather};
use super::context::{LayerSplit, Net, fr, rows_copy, tr, whole_rows};
use crate::error::Result;
use crate::ipu::codelets::{Codelet, ConvGeom, SHIM_WORKERS};
use crate::ipu::graph::TensorId;
use crate::kernels::conv::ConvShape;

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
