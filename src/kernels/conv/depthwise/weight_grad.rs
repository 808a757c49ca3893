//! The backward-weight pass: fixed chunks of output rows, per chunk and channel block
//! the table's weight-gradient runs along every kernel row and group of kernel
//! columns, per-chunk partials added in chunk order.

use super::GradMode;
use super::columns::{Columns, Ring};
use super::micro::{BiasArgs, DwTable, PackArgs, PackJob, WSteps, WgradArgs, kind};
use super::{Block, Geo, cache_rows, channel_blocks, vb_max, wgrad_scratch};
use crate::error::Result;
use crate::kernels::parallel::{chunk_len, partials_len, reduce_chunks_in};
use crate::kernels::scratch::Workspace;
use std::ops::Range;

/// Output pixels per slice of a weight-gradient row (see [`WgradRows::wgrad_rows`]).
const WGRAD_SLICE: usize = 32;

/// Kernel rows handled together by [`WgradRows::wgrad_rows`].
const MAX_KH: usize = 16;

/// The backward-weight partial of the output rows `rows` (global `n·OH + oh`).
struct WgradRows<'a> {
    /// The level's microkernels.
    tab: &'static DwTable,
    g: &'a Geo,
    cols: &'a Columns,
    x: &'a [f32],
    dy: &'a [f32],
    /// `[kh][kw][C]`, followed by `[C]` when `with_bias`.
    part: &'a mut [f32],
    with_bias: bool,
    rows: Range<usize>,
    /// The task's scratch ([`wgrad_scratch`] floats, any contents).
    mem: &'a mut [f32],
}

/// Per-task scratch of the weight gradient.
struct WgradScratch<'a> {
    ring: Ring<'a>,
    /// Per channel block, `[kh·kw + 2][vb]` from `(kh·kw + 2)·c0`: the task's weight
    /// gradient, bias gradient and the bias sum's compensation term.
    acc: &'a mut [f32],
    /// `[OW][vb]`: the packed output-gradient row (packed mode).
    dy: &'a mut [f32],
}

impl WgradRows<'_> {
    /// Adds output rows `rows` (global `n·OH + oh`) of one channel block to the block's
    /// gradient accumulators (`sc.acc` from `(kh·kw + 2)·c0`).
    fn block(&mut self, b: Block, sc: &mut WgradScratch<'_>, rows: Range<usize>) {
        let (g, tab) = (self.g, self.tab);
        let (l, c, c0, tail) = (tab.lanes, g.c, b.c0, b.tail);
        let vb = b.nv * l;
        let k_i = kind(b);
        let taps_n = g.kh * g.kw;
        let border = self.cols.has_border();
        let packed = self.cols.packed;
        assert!(c0 + if tail > 0 { tail } else { vb } <= c);
        assert!(self.part.len() >= taps_n * c + if self.with_bias { c } else { 0 });
        assert!(self.x.len() == g.n * g.h * g.w * c && self.dy.len() == g.n * g.oh * g.ow * c);
        assert!(rows.end <= g.n * g.oh);
        // Interior output columns of each group of up to 5 kernel columns.
        let groups: Vec<(usize, usize, usize, usize)> = (0..g.kw)
            .step_by(5)
            .map(|kw0| {
                let gn = (g.kw - kw0).min(5);
                let (a, _) = ow_range(g, kw0);
                let (_, b) = ow_range(g, kw0 + gn - 1);
                let (a, b) = if a < b && !packed {
                    (a, b)
                } else {
                    (g.ow, g.ow)
                };
                (kw0, gn, a, b)
            })
            .collect();
        // SAFETY (whole body): the asserts above, `ow_range` (interior taps are real
        // pixels), the ring layout (every border tap is inside a ring row) and the
        // scratch sizes keep all accesses in bounds; the entries come from this
        // level's table.
        unsafe {
            assert!(sc.acc.len() >= (taps_n + 2) * (c0 + vb));
            let acc = sc.acc.as_mut_ptr().add((taps_n + 2) * c0);
            sc.ring.reset(vb);
            let x = self.x.as_ptr().add(c0);
            let ring = sc.ring.mem.as_ptr();
            assert!(sc.dy.len() >= g.ow * vb);
            let dyp = sc.dy.as_mut_ptr();
            let row_len = g.w * c;
            let mut jobs = Vec::with_capacity(2);
            for row in rows {
                let (n, oh) = (row / g.oh, row % g.oh);
                let mut dy_row = self.dy.as_ptr().add(row * g.ow * c + c0);
                let mut dy_step = c;
                if packed {
                    // Contiguous copy of the row: it is read once per kernel row.
                    let job = PackJob {
                        src: dy_row,
                        px: g.ow,
                        dst: dyp,
                        pre: None,
                    };
                    (tab.pack[k_i])(&PackArgs {
                        jobs: &[job],
                        c,
                        tail,
                    });
                    dy_row = dyp;
                    dy_step = vb;
                }
                // The kernel rows inside the image, their input rows and ring slots.
                let mut khs = [(0usize, std::ptr::null::<f32>(), 0usize); MAX_KH];
                let mut nkh = 0;
                for kh in 0..g.kh {
                    let Some(ih) = g.in_row(oh, kh) else { continue };
                    let gr = n * g.h + ih;
                    let x_row = x.add(gr * row_len);
                    let base = if border {
                        jobs.clear();
                        let base = sc.ring.ensure(gr, x_row, None, c, vb, &mut jobs);
                        if !jobs.is_empty() {
                            (tab.pack[k_i])(&PackArgs {
                                jobs: &jobs,
                                c,
                                tail,
                            });
                        }
                        base
                    } else {
                        0
                    };
                    if nkh == MAX_KH {
                        // Very tall kernels: flush what we have one row at a time.
                        self.wgrad_rows(
                            k_i,
                            vb,
                            &groups,
                            &khs[..nkh],
                            dy_row,
                            dy_step,
                            acc,
                            ring,
                            tail,
                        );
                        nkh = 0;
                    }
                    khs[nkh] = (kh, x_row, base);
                    nkh += 1;
                }
                self.wgrad_rows(
                    k_i,
                    vb,
                    &groups,
                    &khs[..nkh],
                    dy_row,
                    dy_step,
                    acc,
                    ring,
                    tail,
                );
                if self.with_bias {
                    (tab.bias_row[k_i])(&BiasArgs {
                        dy: dy_row,
                        step: dy_step,
                        count: g.ow,
                        sum: acc.add(taps_n * vb),
                        comp: acc.add((taps_n + 1) * vb),
                        tail,
                    });
                }
            }
        }
    }

    /// One output row of one channel block: every kernel row in `khs` (kernel row,
    /// input row, ring slot), kernel columns in `groups`. The interior runs go in
    /// slices of [`WGRAD_SLICE`] pixels, all kernel rows per slice, so that the input
    /// rows stream side by side (memory-level parallelism) rather than one after the
    /// other.
    ///
    /// # Safety
    /// As [`WgradRows::block`], whose pointers these are; `k_i` is the block's
    /// [`kind`], `vb` its floats per packed pixel.
    #[allow(clippy::too_many_arguments)]
    unsafe fn wgrad_rows(
        &self,
        k_i: usize,
        vb: usize,
        groups: &[(usize, usize, usize, usize)],
        khs: &[(usize, *const f32, usize)],
        dy_row: *const f32,
        dy_step: usize,
        acc: *mut f32,
        ring: *const f32,
        tail: usize,
    ) {
        let (g, tab) = (self.g, self.tab);
        let c = g.c;
        let border = self.cols.has_border();
        let wgrad = tab.wgrad[k_i];
        let run = |gn: usize, dy: *const f32, x: *const f32, out: *mut f32, count, st| {
            if count > 0 {
                let a = WgradArgs {
                    gn,
                    dy,
                    x,
                    out,
                    count,
                    st,
                    vb,
                };
                // SAFETY: forwarded from this function's contract.
                unsafe { wgrad(&a) }
            }
        };
        let direct = WSteps {
            dy: dy_step,
            x: g.sw * c,
            tap: g.dw * c,
            out: vb,
            tail,
        };
        let packed = WSteps {
            x: g.sw * vb,
            tap: g.dw * vb,
            ..direct
        };
        // SAFETY: forwarded from `block`: interior pixels are real input pixels,
        // border pixels lie in the ring rows.
        unsafe {
            for &(kw0, gn, a, b) in groups {
                let mut a0 = a;
                while a0 < b {
                    let a1 = (a0 + WGRAD_SLICE).min(b);
                    for &(kh, x_row, _) in khs {
                        let out = acc.add((kh * g.kw + kw0) * vb);
                        let xd = x_row.add((a0 * g.sw + kw0 * g.dw - g.left) * c);
                        let dd = dy_row.add(a0 * dy_step);
                        run(gn, dd, xd, out, a1 - a0, direct);
                    }
                    a0 = a1;
                }
                if border {
                    for &(kh, _, base) in khs {
                        let out = acc.add((kh * g.kw + kw0) * vb);
                        let xr = ring.add(base + kw0 * g.dw * vb);
                        if self.cols.packed && g.sw == 1 && g.dw == 1 && dy_step == vb {
                            // Whole packed rows, consecutive taps: sliding window.
                            let slide = match (gn, &tab.wgrad_slide) {
                                (3, Some(w)) => Some(w[0][k_i]),
                                (5, Some(w)) => Some(w[1][k_i]),
                                _ => None,
                            };
                            match slide {
                                Some(f) if a > 0 => f(&WgradArgs {
                                    gn,
                                    dy: dy_row,
                                    x: xr,
                                    out,
                                    count: a,
                                    st: packed,
                                    vb,
                                }),
                                Some(_) => {}
                                None => run(gn, dy_row, xr, out, a, packed),
                            }
                            continue;
                        }
                        run(gn, dy_row, xr, out, a, packed);
                        let (dr, xr) = (dy_row.add(b * dy_step), xr.add(b * g.sw * vb));
                        run(gn, dr, xr, out, g.ow - b, packed);
                    }
                }
            }
        }
    }

    /// Writes one channel block's accumulators into the chunk's partial.
    fn flush(&mut self, b: Block, sc: &WgradScratch<'_>) {
        let g = self.g;
        let (c, c0) = (g.c, b.c0);
        let vb = b.nv * self.tab.lanes;
        let width = if b.tail > 0 { b.tail } else { vb };
        let taps_n = g.kh * g.kw;
        let outs = taps_n + usize::from(self.with_bias);
        let acc = &sc.acc[(taps_n + 2) * c0..][..outs * vb];
        for (t, a) in acc.chunks_exact(vb).enumerate() {
            self.part[t * c + c0..][..width].copy_from_slice(&a[..width]);
        }
    }
}

/// The output columns `[lo, hi)` whose tap through kernel column `kw` is a real input
/// pixel (`lo >= hi` when there are none).
fn ow_range(g: &Geo, kw: usize) -> (usize, usize) {
    let off = kw * g.dw;
    // iw = ow·sw + off − left must lie in [0, W).
    let lo = g.left.saturating_sub(off).div_ceil(g.sw);
    let hi = if g.w + g.left > off {
        ((g.w + g.left - off - 1) / g.sw + 1).min(g.ow)
    } else {
        0
    };
    (lo.min(g.ow), hi)
}

impl WgradRows<'_> {
    /// Runs the task: the chunk's rows in cache-sized steps, every channel block per
    /// step, then the blocks' sums into the chunk's partial.
    fn run(mut self) {
        let (g, tab) = (self.g, self.tab);
        let vbm = vb_max(g.c, tab);
        let slots = if self.cols.has_border() {
            g.span_h()
        } else {
            0
        };
        let ring_len = Ring::len(slots, self.cols.rp, vbm);
        let mem = std::mem::take(&mut self.mem);
        {
            let acc_len = (g.kh * g.kw + 2) * g.c.div_ceil(tab.lanes) * tab.lanes;
            let need = wgrad_scratch(g, self.cols, tab);
            debug_assert_eq!(need, ring_len + acc_len + g.ow * vbm);
            let mem = &mut mem[..need];
            let (ring, rest) = mem.split_at_mut(ring_len);
            let (acc, dy) = rest.split_at_mut(acc_len);
            acc.fill(0.0);
            let mut sc = WgradScratch {
                ring: Ring::new(ring, slots, self.cols.rp, vbm),
                acc,
                dy,
            };
            let blocks = channel_blocks(g.c, tab.lanes, tab.nv_max);
            let sub = cache_rows(g.sh * g.w * g.c + g.ow * g.c);
            let rows = self.rows.clone();
            for r0 in rows.clone().step_by(sub) {
                let rr = r0..(r0 + sub).min(rows.end);
                for &b in &blocks {
                    self.block(b, &mut sc, rr.clone());
                }
            }
            for &b in &blocks {
                self.flush(b, &sc);
            }
        }
    }
}

/// The flattened output rows of the weight gradient and the rows per chunk.
pub(super) fn wgrad_chunks(g: &Geo) -> (usize, usize) {
    let rows = g.n * g.oh;
    // Fixed chunks (never the pool size: the partial sums must not depend on it): at
    // most 32, with enough pixels that the partial buffer (k²·C) is small next to the
    // chunk's data (pixels·C) and at least ~16K elements.
    let min_rows = (4 * g.kh * g.kw)
        .div_ceil(g.ow)
        .max(16384usize.div_ceil(g.ow * g.c));
    (rows, chunk_len(rows, min_rows, 32))
}

/// Weight (and bias) gradient, overwritten or accumulated per `mode` (buffers and
/// workspace checked; `cols` the forward gather columns).
///
/// `x`: `[N][H][W][C]`, `dy`: `[N][OH][OW][C]`, `dw`: `[kh][kw][C]`, `dbias`: `[C]`.
/// The output rows are split into fixed chunks whatever the thread count, and the
/// per-chunk partial sums are added in chunk order: the result is bitwise identical
/// for any number of threads.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    tab: &'static DwTable,
    g: &Geo,
    cols: &Columns,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    mode: GradMode,
    ws: &mut Workspace<'_>,
) -> Result<()> {
    let (rows, chunk) = wgrad_chunks(g);
    let w_len = dw.len();
    let sum = ws.take(w_len + g.c)?;
    let partials = ws.take(partials_len(rows, chunk, w_len + g.c))?;
    let slots = ws.per_worker(wgrad_scratch(g, cols, tab))?;
    let mut run = |part: &mut [f32], with_bias: bool, accumulate: bool| {
        reduce_chunks_in(rows, chunk, part, accumulate, partials, |r, p| {
            slots.with(|mem| {
                WgradRows {
                    tab,
                    g,
                    cols,
                    x,
                    dy,
                    part: p,
                    with_bias,
                    rows: r,
                    mem,
                }
                .run()
            })
        })
    };
    match dbias {
        None => run(dw, false, mode.accumulate()),
        Some(db) => {
            run(sum, true, false);
            let (sw, sb) = sum.split_at(w_len);
            if mode.accumulate() {
                add_into(dw, sw);
                add_into(db, sb);
            } else {
                dw.copy_from_slice(sw);
                db.copy_from_slice(sb);
            }
        }
    }
    Ok(())
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}
