//! The squeeze-excitation builder.

use super::boxes::{Dist, gather};
use super::context::{Net, SumJob, fr, rows_copy, tr, whole_rows};
use super::norm::Delayed;
use super::pool::{chunk_dist, chunk_sums, fc_chunks, pool_chunks, unpool};
use crate::error::Result;
use crate::ipu::codelets::{Codelet, ConvGeom};
use crate::ipu::graph::Strided;

/// Squeeze-excitation on `a` (with the delayed proxy scale folded into its gate).
pub(super) fn se(
    net: &mut Net,
    name: &str,
    a: &Dist,
    reduced: usize,
    delayed: Delayed,
) -> Result<Dist> {
    let (n, c, r) = (a.n, a.c, reduced);
    let (delayed, ds_cell) = match delayed {
        Some((s, cell)) => (Some(s), Some(cell)),
        None => (None, None),
    };
    let chunks = fc_chunks(net, 2 * r, c);
    let k = chunks.len();
    let w1 = net.param(&format!("{name}.conv_reduce.weight"), c, r)?;
    let b1 = net.param(&format!("{name}.conv_reduce.bias"), 1, r)?;
    let w2 = net.param(&format!("{name}.conv_expand.weight"), r, c)?;
    let b2 = net.param(&format!("{name}.conv_expand.bias"), 1, c)?;
    net.layer(name, "se", (4 * n * c * r + 2 * a.n * a.h * a.w * c) as f64);
    let tiles = net.tiles_for(name, k);
    let hw = (a.h * a.w) as f32;
    let pooled = pool_chunks(net, name, a, &chunks, &tiles, 1.0 / hw)?;
    // Per chunk: resident slices of the weights and biases (and the delayed scale,
    // gathered from the norm's chunks).
    let mut trs = Vec::new();
    let mut loc = Vec::new();
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let (t, cc) = (tiles[j], j1 - j0);
        let w1l = net.weight_copy(w1, t, cc * r, Strided::contiguous(j0 * r, 0, cc * r))?;
        let w2l = net.weight_copy(w2, t, r * cc, rows_copy(j0, c, 0, cc, r, cc))?;
        let b1l = net.weight_copy(b1, t, r, Strided::contiguous(0, 0, r))?;
        let b2l = net.weight_copy(b2, t, cc, Strided::contiguous(j0, 0, cc))?;
        let sl = match &delayed {
            Some(s) => {
                let sl = net.t(format!("{name}.s@{j}"), cc, t)?;
                gather(s, 0, 1, 0, 1, j0, cc, sl, &mut trs);
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
        jobs.push(SumJob::on(whole_rows(&hp, n * r), k, n * r, h, t));
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
    let out = net.out_like(&format!("{name}.out"), a)?;
    let vs = a
        .parts
        .iter()
        .zip(&gl)
        .zip(&out.parts)
        .map(|((p, g), o)| {
            let len = p.len(a.w);
            (
                p.tile,
                Codelet::se_gate(p.nb, p.rn * a.w, p.cn),
                vec![fr(p.t, len), fr(*g, p.nb * p.cn), fr(o.t, len)],
            )
        })
        .collect();
    net.cs(&format!("{name}.gate"), vs)?;
    let (a, out2, name) = (a.clone(), out.clone(), name.to_string());
    net.on_backward(Box::new(move |net: &mut Net, dy: Dist| {
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
            let len = p.len(a.w);
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
            jobs.push(SumJob::on(whole_rows(&dhp, n * r), k, n * r, s, t));
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
                let len = p.len(a.w);
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
