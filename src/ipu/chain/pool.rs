//! Channel sums over the boxes (pooling), their gradient, and the channel chunks of
//! the small fully connected layers.

use super::boxes::{Dist, Grid, Part, gather, ranges};
use super::context::{Contrib, Net, SumJob, fr, tiles_of};
use crate::error::Result;
use crate::ipu::codelets::Codelet;
use crate::ipu::graph::TensorId;

/// Per-part channel sums of `x` scaled by `scale`, gathered per channel range `j` into
/// `[rows][N][cc]` on `tiles[j]` and reduced: `[N][cc]` per range.
pub(super) fn pool_chunks(
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
            vec![fr(p.t, p.len(x.w)), fr(t, p.nb * p.cn)],
        ));
        ps.push(t);
    }
    net.cs(&format!("{name}.pool"), vs)?;
    chunk_sums(net, name, x, &ps, chunks, tiles)
}

/// Per-part `[nb][cn]` vectors `ps` of the boxes of `x` summed over the row ranges
/// into `[N][cc]` per channel range `chunks[j]` on `tiles[j]`.
pub(super) fn chunk_sums(
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
        let mut cs = Vec::new();
        let mut mine = Vec::new();
        for (p, t) in x.parts.iter().zip(ps) {
            let (e0, e1) = (p.c0.max(j0), (p.c0 + p.cn).min(j1));
            if e0 >= e1 {
                continue;
            }
            mine.push(p);
            for i in p.n0..p.n0 + p.nb {
                cs.push(Contrib {
                    src: *t,
                    src_off: (i - p.n0) * p.cn + e0 - p.c0,
                    row: p.ri,
                    col: i * cc + e0 - j0,
                    len: e1 - e0,
                });
            }
        }
        jobs.push(SumJob {
            contribs: cs,
            rows: x.rparts(),
            width: n * cc,
            out,
            out_tile: tiles[j],
            spread: tiles_of(mine),
        });
        outs.push(out);
    }
    net.sum_rows(name, jobs)?;
    Ok(outs)
}

/// `[N][C]` held in channel ranges `chunks` on `tiles` as a Dist of `h = w = 1`.
pub(super) fn chunk_dist(
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
        grid: Grid {
            imgs: vec![(0, n)],
            rows: vec![(0, 1)],
            chans: chunks.to_vec(),
        },
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
pub(super) fn unpool(net: &mut Net, name: &str, d: &Dist, like: &Dist, scale: f32) -> Result<Dist> {
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
                vec![fr(*l, p.nb * p.cn), fr(q.t, p.len(like.w))],
            )
        })
        .collect();
    net.cs(&format!("{name}.unpool"), vs)?;
    Ok(o)
}

/// Channel ranges for a fully connected layer of `rows`×`c` weights: each range's
/// resident weight slice within an eighth of the tile budget when training (a
/// thirty-second at inference, whose activation boxes at the published micro-batches
/// take most of a tile), and at most 256 channels per range (so that a wide layer's
/// products run on several tiles).
pub(super) fn fc_chunks(net: &Net, rows: usize, c: usize) -> Vec<(usize, usize)> {
    let share = if net.opts.training { 8 } else { 32 };
    let per = (net.budget_elems() / share / rows.max(1)).clamp(1, 256);
    ranges(c, c.div_ceil(per))
}
