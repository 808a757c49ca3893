//! Global pool, classifier and softmax cross-entropy.

use super::boxes::Dist;
use super::context::{Contrib, LayerSplit, Net, SumJob, fr, rows_copy, tr, whole_rows};
use super::pool::{chunk_dist, fc_chunks, pool_chunks, unpool};
use crate::error::Result;
use crate::ipu::codelets::{Codelet, ConvGeom};
use crate::ipu::graph::{FieldRef, Strided, TensorId};

/// Global pool → classifier → softmax cross-entropy; returns (logits, targets, loss).
pub(super) fn head_loss(
    net: &mut Net,
    x: &Dist,
    classes: usize,
) -> Result<(TensorId, TensorId, TensorId)> {
    let (n, c, k) = (x.n, x.c, classes);
    net.layer("global_pool", "pool", (x.n * x.h * x.w * c) as f64);
    let pool_tile = net.tiles_for("global_pool", 1)[0];
    let pooled = pool_chunks(
        net,
        "global_pool",
        x,
        &[(0, c)],
        &[pool_tile],
        1.0 / (x.h * x.w) as f32,
    )?[0];
    let chunks = fc_chunks(net, c, k);
    let wp = net.param("classifier.weight", c, k)?;
    let bp = net.param("classifier.bias", 1, k)?;
    net.layer("classifier", "fc", (2 * n * c * k) as f64);
    net.splits.push(LayerSplit {
        name: "classifier".into(),
        image_parts: 1,
        row_parts: 1,
        chan_parts: chunks.len(),
        boxes: chunks.len(),
    });
    let tiles = net.tiles_for("classifier", chunks.len());
    // Logits, targets and their gradient by rows (one image per tile).
    let loss_tiles = net.tiles_for("loss", n);
    let by_rows = |len: usize| -> Vec<(std::ops::Range<usize>, u32)> {
        (0..n)
            .map(|i| (i * len..(i + 1) * len, loss_tiles[i]))
            .collect()
    };
    let logits = net.g.add_tensor_mapped("logits", n * k, by_rows(k))?;
    let mut trs = Vec::new();
    let mut loc = Vec::new();
    for (j, &(j0, j1)) in chunks.iter().enumerate() {
        let (t, kc) = (tiles[j], j1 - j0);
        let xl = net.t(format!("classifier.x@{j}"), n * c, t)?;
        let wl = net.weight_copy(wp, t, c * kc, rows_copy(j0, k, 0, kc, c, kc))?;
        let bl = net.weight_copy(bp, t, kc, Strided::contiguous(j0, 0, kc))?;
        trs.push(tr(pooled, xl, Strided::contiguous(0, 0, n * c)));
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
    let targets = net.g.add_tensor_mapped("targets", n * k, by_rows(k))?;
    let loss = net.t("loss".into(), 1, loss_tiles[0])?;
    let parts = net.g.add_tensor_mapped("loss.parts", n, by_rows(1))?;
    let dlogits = net.g.add_tensor_mapped("dlogits", n * k, by_rows(k))?;
    if net.opts.training {
        let vs = (0..n)
            .map(|i| {
                let f = |t: TensorId, len: usize| FieldRef {
                    tensor: t,
                    offset: i * len,
                    len,
                };
                (
                    loss_tiles[i],
                    Codelet::softmax_xent_part(1, k, n),
                    vec![f(logits, k), f(targets, k), f(parts, 1), f(dlogits, k)],
                )
            })
            .collect();
        net.cs("loss", vs)?;
        let cs = (0..n)
            .map(|i| Contrib {
                src: parts,
                src_off: i,
                row: i,
                col: 0,
                len: 1,
            })
            .collect();
        net.sum_rows("loss", vec![SumJob::on(cs, n, 1, loss, loss_tiles[0])])?;
    }
    let x = x.clone();
    net.on_backward(Box::new(move |net: &mut Net, _: Dist| {
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
            vec![SumJob::on(
                whole_rows(&dxp, n * c),
                chunks.len(),
                n * c,
                dp,
                pool_tile,
            )],
        )?;
        net.layer("global_pool", "pool", (x.n * x.h * x.w * c) as f64);
        let d = chunk_dist(n, c, &[(0, c)], &[pool_tile], &[dp]);
        unpool(net, "global_pool", &d, &x, 1.0 / (x.h * x.w) as f32)
    }));
    Ok((logits, targets, loss))
}
