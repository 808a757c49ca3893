//! Backward-weight pass: per fixed chunk of output rows and block of groups, outer
//! products of input channels × output-gradient vectors accumulated in registers over
//! the chunk's pixels; per-chunk `f32` partials added in chunk order.

use super::micro::{GroupMajor, GroupedTable, OuterRow, OuterTile};
use super::slide::{self, SlideWeight, WeightRow};
use super::{Geo, split, table, with_zeroed};
use crate::error::Result;
use crate::kernels::scratch::{Workspace, WorkspaceLayout};
use crate::simd::SimdLevel;
use rayon::prelude::*;

/// Most chunks of output rows (each adds one weight-sized partial).
const MAX_CHUNKS: usize = 64;
/// Output pixels per chunk, at least (fewer chunks for small layers: each chunk costs
/// one pass over a weight-sized partial).
const MIN_CHUNK_PIXELS: usize = 2048;
/// Floats of all chunks' partials together, at most (unless one chunk needs more).
const MAX_PARTIAL_FLOATS: usize = 1 << 24;
/// Bytes of input rows per chunk, at most (unless a chunk is a single row).
const CHUNK_BYTES: usize = 1 << 20;
/// Input channels up to which the sliding weight tiles read the input in place.
const IN_PLACE_MAX_CHANNELS: usize = 256;
/// Output pixels per step of a task, at least.
const SUB_PIXELS: usize = 256;
/// Tasks (chunks × group blocks) to aim for.
const MIN_TASKS: usize = 24;
/// Floats of per-task copies (input and output gradient) to aim below.
const BUDGET: usize = 256 * 1024;

/// A stretch of one image inside a chunk and the input rows it reads.
#[derive(Copy, Clone, Debug)]
struct Segment {
    n: usize,
    /// Output rows `oh0..oh1` of image `n`.
    oh0: usize,
    oh1: usize,
    /// First input row they read.
    ih_lo: usize,
    /// Row of `ih_lo` in the task's input buffer.
    base: usize,
}

/// How a backward-weight call splits its work and what scratch it needs; a function of
/// the shape and the level only (never the thread count: the partial sums must not
/// depend on it).
#[derive(Debug)]
pub(super) struct Plan {
    /// The level's microkernels.
    tab: &'static GroupedTable,
    /// Flattened output rows (`n·oh + oh`) per chunk, and the chunk count.
    chunk_rows: usize,
    chunks: usize,
    /// Group blocks `(g0, ng)`, longest first.
    blocks: Vec<(usize, usize)>,
    /// Output gradients copied per task (else read in place).
    dy_copy: bool,
    /// Sliding tiles with the input channels as the vector axis (partials laid out
    /// `[tap][gl][co][ci]`).
    transposed: bool,
    /// The sliding tiles read the input in place.
    in_place: bool,
    /// Output rows per step.
    sub_rows: usize,
    interior: (usize, usize),
    cvn_l: usize,
    /// Floats of the largest task's copies.
    buf_len: usize,
}

impl Plan {
    pub(super) fn new(level: SimdLevel, g: &Geo) -> Plan {
        let tab = table(level);
        let l = tab.lanes;
        let w_len = g.taps() * g.cig * g.cout;
        let rows = g.n * g.oh;
        // The chunking depends on the shape only, never on the thread count: chunks of
        // at least MIN_CHUNK_PIXELS output pixels (each chunk costs a weight-sized
        // partial), small enough that a chunk's input rows stay in the L2 cache while
        // the tasks of its group blocks run one after the other.
        let pixels = rows * g.ow;
        let row_bytes = (g.sh * g.w * g.cin * std::mem::size_of::<f32>()).max(1);
        let max_rows = (CHUNK_BYTES / row_bytes).max(1);
        let want = (pixels / MIN_CHUNK_PIXELS)
            .max(rows.div_ceil(max_rows))
            .min(MAX_PARTIAL_FLOATS / w_len.max(1))
            .clamp(1, MAX_CHUNKS);
        let chunk_rows = rows.div_ceil(want);
        let chunks = rows.div_ceil(chunk_rows);
        let wp = g.padded_w();
        let cvn = g.cog.div_ceil(l);
        // Groups per task: all of them (whole runs of channels are read from memory)
        // unless that leaves too few tasks or too large a copy.
        let per_group = ((chunk_rows + 1) * g.sh + (g.kh - 1) * g.dh) * wp * g.cig
            + chunk_rows * g.ow * cvn * l;
        let mut gbs = g.groups;
        while gbs > 1 && (chunks * g.groups.div_ceil(gbs) < MIN_TASKS || gbs * per_group > BUDGET) {
            gbs = gbs.div_ceil(2);
        }
        let blocks: Vec<(usize, usize)> = split(g.groups, gbs).collect();
        // G16 3×3 / 5×5 with AVX-512: sliding tiles with the input channels as the
        // vector axis; the partials are then laid out [tap][gl][co][ci].
        let transposed =
            tab.slide_weight.is_some() && g.dw == 1 && slide::weight_supported(g.kw, g.cig, g.cog);
        let mut plan = Plan {
            tab,
            chunk_rows,
            chunks,
            // Output gradients are read in place when a task covers every channel in
            // whole vectors; otherwise copied per task as [gl][row][ow][cvn·L] with
            // zero lanes.
            dy_copy: !(g.cog.is_multiple_of(l) && gbs == g.groups),
            transposed,
            // Sliding tiles read the input in place when pixels are short (a few cache
            // lines: strided reads stay cheap), else from the group-major copy like the
            // other tiles.
            in_place: transposed && g.cin <= IN_PLACE_MAX_CHANNELS,
            // Output rows per step: the input rows a step adds are copied (and the next
            // step's prefetched) while the previous steps' sums wait in the partial.
            sub_rows: SUB_PIXELS.div_ceil(g.ow),
            interior: g.interior_cols(),
            cvn_l: cvn * l,
            buf_len: 0,
            blocks,
        };
        let ng = plan.blocks[0].1;
        plan.buf_len = (0..chunks)
            .map(|c| {
                let (_, x_rows) = plan.segments(g, c);
                let (x, d, w) = plan.copy_lens(g, ng, x_rows);
                x + d + w
            })
            .max()
            .unwrap_or(0);
        plan
    }

    fn block_len(g: &Geo, ng: usize) -> usize {
        g.taps() * g.cig * ng * g.cog
    }

    /// The stretches of images in chunk `c` and the input rows they read in all.
    fn segments(&self, g: &Geo, c: usize) -> (Vec<Segment>, usize) {
        let r0 = c * self.chunk_rows;
        let r1 = (r0 + self.chunk_rows).min(g.n * g.oh);
        let mut segments = Vec::new();
        let mut base = 0;
        let mut r = r0;
        while r < r1 {
            let n = r / g.oh;
            let end = ((n + 1) * g.oh).min(r1);
            let (ih_lo, ih_hi) = g.in_rows(r - n * g.oh, end - n * g.oh);
            segments.push(Segment {
                n,
                oh0: r - n * g.oh,
                oh1: end - n * g.oh,
                ih_lo,
                base,
            });
            base += ih_hi - ih_lo;
            r = end;
        }
        (segments, base)
    }

    /// Floats of a task's copies for `ng` groups and `x_rows` input rows: the padded
    /// input, the output gradients, the border windows.
    fn copy_lens(&self, g: &Geo, ng: usize, x_rows: usize) -> (usize, usize, usize) {
        // The sliding tiles read the input in place (zero-padded windows at the
        // borders); the other tiles read a group-major padded copy.
        let x_len = if self.in_place {
            0
        } else {
            ng * x_rows * g.padded_w() * g.cig
        };
        let dy_len = if self.dy_copy {
            ng * self.sub_rows * g.ow * self.cvn_l
        } else {
            0
        };
        let win_len = if self.in_place {
            let n_border = self.interior.0 + (g.ow - self.interior.1);
            self.sub_rows * n_border * g.kw * g.cig
        } else {
            0
        };
        (x_len, dy_len, win_len)
    }

    /// The regions [`run`] takes, in order: the per-chunk partials (per call), the
    /// task copies (per worker).
    pub(super) fn layout(&self, g: &Geo, layout: &mut WorkspaceLayout) {
        let w_len = g.taps() * g.cig * g.cout;
        layout.region(self.chunks * w_len).per_worker(self.buf_len);
    }
}

pub(super) fn run(
    g: &Geo,
    plan: &Plan,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    accumulate: bool,
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let w_len = dw.len();
    let chunks = plan.chunks;
    let blocks = &plan.blocks;
    let transposed = plan.transposed;
    let block_len = |ng: usize| Plan::block_len(g, ng);
    let partials = ws.take(chunks * w_len)?;
    let slots = ws.per_worker(plan.buf_len)?;
    let mut jobs = Vec::with_capacity(chunks * blocks.len());
    let mut rest = &mut partials[..];
    for c in 0..chunks {
        for &(g0, ng) in blocks {
            let (part, tail) = rest.split_at_mut(block_len(ng));
            rest = tail;
            jobs.push((c, g0, ng, part));
        }
    }
    jobs.into_par_iter().for_each(|(c, g0, ng, part)| {
        part.fill(0.0);
        let r0 = c * plan.chunk_rows;
        let (segments, base) = plan.segments(g, c);
        let (x_len, dy_len, win_len) = plan.copy_lens(g, ng, base);
        with_zeroed(&slots, x_len + dy_len + win_len, |buf| {
            let (xb, rest) = buf.split_at_mut(x_len);
            let (db, win) = rest.split_at_mut(dy_len);
            BwdWeightTask {
                tab: plan.tab,
                g,
                x,
                dy,
                r0,
                g0,
                ng,
                segments: &segments,
                x_rows: base,
                sub_rows: plan.sub_rows,
                transposed,
                in_place: plan.in_place,
                interior: plan.interior,
                xb,
                db: plan.dy_copy.then_some(db),
                win,
                part,
            }
            .run()
        })
    });

    // Σ_chunks partial, in chunk order, into the first chunk's partial; then
    // dw[tap][ci][co] (+)= that sum.
    let (sum, rest) = partials.split_at_mut(w_len);
    const BLOCK: usize = 4096;
    sum.par_chunks_mut(BLOCK).enumerate().for_each(|(b, o)| {
        for c in 1..chunks {
            let p = &rest[(c - 1) * w_len + b * BLOCK..][..o.len()];
            for (o, p) in o.iter_mut().zip(p) {
                *o += *p;
            }
        }
    });
    let sum = &*sum;
    let offsets: Vec<usize> = blocks
        .iter()
        .scan(0, |off, &(_, ng)| {
            let o = *off;
            *off += block_len(ng);
            Some(o)
        })
        .collect();
    dw.par_chunks_mut(g.cout).enumerate().for_each(|(row, o)| {
        for (&(g0, ng), &off) in blocks.iter().zip(&offsets) {
            let bw = ng * g.cog;
            let o = &mut o[g0 * g.cog..][..bw];
            let part = &sum[off..][..block_len(ng)];
            let put = |o: &mut f32, v: f32| *o = if accumulate { *o + v } else { v };
            if transposed {
                // row = tap·cig + ci; the partial is [tap][gl][co][ci].
                let (t, ci) = (row / g.cig, row % g.cig);
                let p = &part[t * bw * g.cig..][..bw * g.cig];
                for (o, p) in o.iter_mut().zip(p.chunks_exact(g.cig)) {
                    put(o, p[ci]);
                }
            } else {
                for (o, p) in o.iter_mut().zip(&part[row * bw..][..bw]) {
                    put(o, *p);
                }
            }
        }
    });
    Ok(())
}

struct BwdWeightTask<'a> {
    tab: &'static GroupedTable,
    g: &'a Geo,
    x: &'a [f32],
    dy: &'a [f32],
    /// First flattened output row (`n·oh + oh`); the segments follow.
    r0: usize,
    /// Groups `g0..g0 + ng`.
    g0: usize,
    ng: usize,
    segments: &'a [Segment],
    /// Rows of `xb` per group.
    x_rows: usize,
    /// Output rows per step.
    sub_rows: usize,
    /// Sliding tiles, partial laid out `[tap][gl][co][ci]` (else `[tap][ci][gl·cog + co]`).
    transposed: bool,
    /// Sliding tiles read `x` in place (else from `xb`).
    in_place: bool,
    /// Output columns whose every kw tap is inside the image.
    interior: (usize, usize),
    /// `[gl][x_rows][padded_w][cig]`, zeroed.
    xb: &'a mut [f32],
    /// `[gl][sub_rows][ow][cvn·L]`, zeroed, when `dy` is not read in place.
    db: Option<&'a mut [f32]>,
    /// Sliding tiles: zero-padded input windows `[kw][cig]` of the border pixels.
    win: &'a mut [f32],
    /// `[tap][ci][gl·cog + co]`, zeroed; the sums are added.
    part: &'a mut [f32],
}

impl BwdWeightTask<'_> {
    /// Runs the task: copies the input rows and output gradients step by step and
    /// runs the table's weight-gradient microkernels.
    fn run(self) {
        let BwdWeightTask {
            tab,
            g,
            x,
            dy,
            r0,
            g0,
            ng,
            segments,
            x_rows,
            sub_rows,
            transposed,
            in_place,
            interior: (in_lo, in_hi),
            xb,
            mut db,
            win,
            part,
        } = self;
        let l = tab.lanes;
        let cig = g.cig;
        let cvn = g.cog.div_ceil(l);
        let wp = g.padded_w();
        let xg = x_rows * wp * cig;
        let img = g.h * g.w * g.cin;
        let row_len = g.w * g.cin;
        let gm = GroupMajor {
            width: g.w,
            src_c: g.cin,
            cg: cig,
            g0,
            ng,
            pad: g.pl,
            dst_w: wp,
            dst_c: cig,
            g_stride: xg,
        };
        // Copied output gradients: [gl][sub row][ow][cvn·L].
        let dg = sub_rows * g.ow * cvn * l;
        let gd = GroupMajor {
            width: g.ow,
            src_c: g.cout,
            cg: g.cog,
            g0,
            ng,
            pad: 0,
            dst_w: g.ow,
            dst_c: cvn * l,
            g_stride: dg,
        };
        let dy_row_len = g.ow * g.cout;

        // Without horizontal dilation the kw taps and the group's channels are one
        // contiguous run per pixel (as in the weight layout).
        let merged = g.dw == 1;
        let k_len = if merged { g.kw * cig } else { cig };
        let kws = if merged { 1 } else { g.kw };
        let bw = ng * g.cog;
        let part_len = part.len();
        let out = part.as_mut_ptr();
        let blocks: Vec<(usize, usize)> = split(cvn, tab.max_nv).collect();
        let mut rows: Vec<OuterRow> = Vec::with_capacity(sub_rows);
        let mut wrows: Vec<WeightRow> = Vec::with_capacity(3 * sub_rows);
        let mut flat0 = r0;
        for seg in segments {
            let xi = &x[seg.n * img..][..img];
            let mut copied = seg.ih_lo;
            let steps: Vec<(usize, usize)> = split(seg.oh1 - seg.oh0, sub_rows).collect();
            for (si, &(a, len)) in steps.iter().enumerate() {
                let (oh_a, oh_b) = (seg.oh0 + a, seg.oh0 + a + len);
                let need = g.in_rows(oh_a, oh_b).1.max(copied);
                if need > copied && !in_place {
                    let src = &xi[copied * row_len..need * row_len];
                    gm.copy_rows(tab.copy_rows, src, None, seg.base + copied - seg.ih_lo, xb);
                }
                copied = need;
                // Next step of this segment: its new input rows and its output
                // gradients, prefetched a slice per (group, kernel row).
                let (ahead, dy_ahead) = match steps.get(si + 1) {
                    Some(&(a2, len2)) => (
                        copied..g.in_rows(seg.oh0 + a2, seg.oh0 + a2 + len2).1.max(copied),
                        flat0 + a2..flat0 + a2 + len2,
                    ),
                    None => (0..0, 0..0),
                };
                let n_slices = ng * g.kh;
                let flat_a = flat0 + a;
                // Output gradient of (step row rr, column ow, group gl): `dyp + at`.
                let (dyp, dy_len, dy_pix, dy_row, dy_group) = match db.as_deref_mut() {
                    Some(db) => {
                        let src = &dy[flat_a * dy_row_len..(flat_a + len) * dy_row_len];
                        gd.copy_rows(tab.copy_rows, src, None, 0, db);
                        let pix = cvn * l;
                        (db.as_ptr(), db.len(), pix, g.ow * pix, dg)
                    }
                    None => {
                        let off = flat_a * dy_row_len + g0 * g.cog;
                        let p = dy[off..].as_ptr();
                        (p, dy.len() - off, g.cout, dy_row_len, g.cog)
                    }
                };
                for gl in 0..ng {
                    for kh in 0..g.kh {
                        let slice = gl * g.kh + kh;
                        let cols = slice * g.w / n_slices..(slice + 1) * g.w / n_slices;
                        gm.prefetch_rows(xi, ahead.clone(), cols);
                        let cols = slice * g.ow / n_slices..(slice + 1) * g.ow / n_slices;
                        gd.prefetch_rows(dy, dy_ahead.clone(), cols);
                        if let (Some(slide_weight), true) = (tab.slide_weight, transposed) {
                            wrows.clear();
                            if !in_place {
                                for (rr, oh) in (oh_a..oh_b).enumerate() {
                                    let Some(ih) = g.in_row(oh, kh) else { continue };
                                    let xo = gl * xg + (seg.base + ih - seg.ih_lo) * wp * cig;
                                    let yo = gl * dy_group + rr * dy_row;
                                    debug_assert!(xo + (g.ow - 1) * g.sw * cig + k_len <= xb.len());
                                    debug_assert!(yo + (g.ow - 1) * dy_pix + g.cog <= dy_len);
                                    wrows.push(WeightRow {
                                        x: xb.as_ptr().wrapping_add(xo),
                                        x_pix: g.sw * cig,
                                        x_kw: cig,
                                        dy: dyp.wrapping_add(yo),
                                        npix: g.ow,
                                    });
                                }
                            } else {
                                let gi = g0 + gl;
                                let k = g.kw * cig;
                                // Zero-padded windows of the border pixels first, then the
                                // rows (interior read in place, borders from the windows).
                                let mut slot = 0;
                                for oh in oh_a..oh_b {
                                    let Some(ih) = g.in_row(oh, kh) else { continue };
                                    let x_row = ih * row_len + gi * cig;
                                    for ow in (0..in_lo).chain(in_hi..g.ow) {
                                        let wdst = &mut win[slot * k..][..k];
                                        wdst.fill(0.0);
                                        for kw in 0..g.kw {
                                            let iw = (ow * g.sw + kw) as isize - g.pl as isize;
                                            if iw >= 0 && (iw as usize) < g.w {
                                                let from =
                                                    &xi[x_row + iw as usize * g.cin..][..cig];
                                                wdst[kw * cig..][..cig].copy_from_slice(from);
                                            }
                                        }
                                        slot += 1;
                                    }
                                }
                                let mut slot = 0;
                                for (rr, oh) in (oh_a..oh_b).enumerate() {
                                    let Some(ih) = g.in_row(oh, kh) else { continue };
                                    let yo = gl * dy_group + rr * dy_row;
                                    for (o0, o1) in [(0, in_lo), (in_hi, g.ow)] {
                                        if o1 > o0 {
                                            wrows.push(WeightRow {
                                                x: win[slot * k..].as_ptr(),
                                                x_pix: k,
                                                x_kw: cig,
                                                dy: dyp.wrapping_add(yo + o0 * dy_pix),
                                                npix: o1 - o0,
                                            });
                                            slot += o1 - o0;
                                        }
                                    }
                                    if in_hi > in_lo {
                                        let xo =
                                            ih * row_len + gi * cig + (in_lo * g.sw - g.pl) * g.cin;
                                        debug_assert!(
                                            xo + (in_hi - in_lo - 1) * g.sw * g.cin
                                                + (g.kw - 1) * g.cin
                                                + cig
                                                <= img
                                        );
                                        wrows.push(WeightRow {
                                            x: xi.as_ptr().wrapping_add(xo),
                                            x_pix: g.sw * g.cin,
                                            x_kw: g.cin,
                                            dy: dyp.wrapping_add(yo + in_lo * dy_pix),
                                            npix: in_hi - in_lo,
                                        });
                                    }
                                    debug_assert!(yo + (g.ow - 1) * dy_pix + g.cog <= dy_len);
                                }
                            }
                            let out_off = (kh * g.kw * ng + gl) * g.cog * cig;
                            let out_kw = ng * g.cog * cig;
                            debug_assert!(out_off + (g.kw - 1) * out_kw + g.cog * cig <= part_len);
                            let a = SlideWeight {
                                rows: &wrows,
                                dy_pix,
                                cog: g.cog,
                                out: out.wrapping_add(out_off),
                                out_kw,
                                kw: g.kw,
                            };
                            // SAFETY: the entry is in this level's table (AVX-512, which
                            // the CPU runs); the configuration was checked by
                            // `weight_supported`; the rows read `x` inside the image
                            // (interior columns), the border windows and the output
                            // gradient, and the sums are in `part`, which this task
                            // owns; checked in debug builds.
                            unsafe { slide_weight(&a) };
                            continue;
                        }
                        rows.clear();
                        for (rr, oh) in (oh_a..oh_b).enumerate() {
                            let Some(ih) = g.in_row(oh, kh) else { continue };
                            let xo = gl * xg + (seg.base + ih - seg.ih_lo) * wp * cig;
                            let yo = gl * dy_group + rr * dy_row;
                            if cfg!(debug_assertions) {
                                assert!(xo + (g.ow - 1) * g.sw * cig + k_len <= xb.len(), "x");
                                let ye = yo + (g.ow - 1) * dy_pix + cvn * l;
                                assert!(ye <= dy_len, "dy");
                            }
                            rows.push(OuterRow {
                                x: xb.as_ptr().wrapping_add(xo),
                                x_pix: g.sw * cig,
                                dy: dyp.wrapping_add(yo),
                                npix: g.ow,
                            });
                        }
                        if rows.is_empty() {
                            continue;
                        }
                        for kw in 0..kws {
                            let x_tap = kw * g.dw * cig;
                            let out_row = (kh * g.kw + kw) * cig;
                            for &(v0, nv) in &blocks {
                                let last = (g.cog - (v0 + nv - 1) * l).min(l);
                                let out_off = out_row * bw + gl * g.cog + v0 * l;
                                debug_assert!(
                                    out_off + (k_len - 1) * bw + (nv - 1) * l + last <= part_len
                                );
                                let a = OuterTile {
                                    rows: &rows,
                                    x_off: x_tap,
                                    dy_off: v0 * l,
                                    dy_pix,
                                    out: out.wrapping_add(out_off),
                                    out_k: bw,
                                    last,
                                    k_len,
                                };
                                // SAFETY: the row pointers and offsets were derived from
                                // the shape so that every read lies in `xb` (rows copied
                                // above) or the output gradient, and every access to the
                                // result in `part`, which this task owns; checked in
                                // debug builds above; the entry is from this level's
                                // table.
                                unsafe { (tab.outer[nv - 1])(&a) };
                            }
                        }
                    }
                }
            }
            flat0 += seg.oh1 - seg.oh0;
        }
    }
}
