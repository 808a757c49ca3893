//! The column structure of the gathers (which packed source pixels every destination
//! pixel reads, which runs are interior and read the tensor in place) and the ring of
//! packed source rows the border runs read.

use super::Geo;
use super::micro::PackJob;
use crate::kernels::conv::pre::PreImage;

/// How a source row sits in the ring: `pl` zero pixels, the row's `src_w` pixels, zero
/// pixels up to `pw`. Only the edge pixels `[0, el)` and `[er, src_w)` are copied (the
/// border runs read nothing else); the interior runs read the tensor in place.
#[derive(Copy, Clone, Debug)]
pub(super) struct RowPack {
    pub pl: usize,
    pub src_w: usize,
    pub pw: usize,
    pub el: usize,
    pub er: usize,
}

/// A ring of packed source rows for one channel block (`vb` floats per pixel).
pub(super) struct Ring<'a> {
    pub mem: &'a mut [f32],
    /// Which global source row each slot holds (`usize::MAX`: none).
    pub tags: Vec<usize>,
    /// Floats between slots.
    pub stride: usize,
    pub rp: RowPack,
}

impl<'a> Ring<'a> {
    /// Floats a ring of `slots` rows of `vb`-float pixels takes.
    pub(super) fn len(slots: usize, rp: RowPack, vb: usize) -> usize {
        slots * rp.pw * vb
    }

    /// A ring in `mem` (at least [`Ring::len`] floats; any contents) for pixels of up
    /// to `vb` floats.
    pub(super) fn new(mem: &'a mut [f32], slots: usize, rp: RowPack, vb: usize) -> Ring<'a> {
        Ring {
            mem,
            tags: vec![usize::MAX; slots],
            stride: rp.pw * vb,
            rp,
        }
    }

    /// Forgets every row and zeroes the padding pixels for blocks of `vb` floats.
    pub(super) fn reset(&mut self, vb: usize) {
        let (stride, rp) = (self.stride, self.rp);
        for (i, t) in self.tags.iter_mut().enumerate() {
            *t = usize::MAX;
            let slot = &mut self.mem[i * stride..(i + 1) * stride];
            slot[..rp.pl * vb].fill(0.0);
            slot[(rp.pl + rp.src_w) * vb..rp.pw * vb].fill(0.0);
        }
    }

    /// The float offset of the slot holding global source row `row`; if the slot holds
    /// another row, the copies of the new row's edge pixels from `src` (channel `c0` of
    /// the row's first pixel, pixels `c` floats apart) are appended to `jobs` (`vb`
    /// floats per packed pixel), for a [`PackRow`](super::micro::PackRow) call to make
    /// before the slot is read, each through the prologue `pre` (the coefficients of
    /// the row's image from the block's first channel) when there is one.
    pub(super) fn ensure(
        &mut self,
        row: usize,
        src: *const f32,
        pre: Option<PreImage>,
        c: usize,
        vb: usize,
        jobs: &mut Vec<PackJob>,
    ) -> usize {
        let slot = row % self.tags.len();
        let base = slot * self.stride;
        if self.tags[slot] != row {
            self.tags[slot] = row;
            let rp = self.rp;
            let dst = self.mem[base + rp.pl * vb..].as_mut_ptr();
            if rp.el >= rp.er {
                jobs.push(PackJob {
                    src,
                    px: rp.src_w,
                    dst,
                    pre,
                });
            } else {
                jobs.push(PackJob {
                    src,
                    px: rp.el,
                    dst,
                    pre,
                });
                jobs.push(PackJob {
                    src: src.wrapping_add(rp.er * c),
                    px: rp.src_w - rp.er,
                    dst: dst.wrapping_add(rp.er * vb),
                    pre,
                });
            }
        }
        base
    }
}

/// One tap of a gather: the source pixel at the first pixel of a run (channel 0; in
/// floats for the tensor, in packed pixels for a ring: see [`Gather::src_unit`]) and
/// the tap's index `kh·kw_count + kw` in the packed weights.
#[derive(Copy, Clone, Debug)]
pub(super) struct Tap {
    pub src: usize,
    pub w: usize,
}

/// Destination pixels `dst0 + j·dst_step` (`j < count`) of a row read, through kernel
/// column `kw`, packed source pixel `off + j·src_step` for each `(kw, off)` in `kws`.
/// For `j` in `ja..jb` every tap is a real pixel (the *interior*, read in place).
#[derive(Clone, Debug)]
pub(super) struct Class {
    pub dst0: usize,
    pub count: usize,
    pub kws: Vec<(usize, usize)>,
    pub ja: usize,
    pub jb: usize,
    /// When the taps sit at consecutive packed pixels (stride 1, dilation 1):
    /// `(first offset, kernel column of the first offset, +1 or −1 kernel columns per
    /// pixel)`, for the sliding-window tiles.
    pub slide: Option<(usize, usize, isize)>,
}

/// The column structure of a gather: packed row shape, classes, pixel steps.
#[derive(Debug)]
pub(super) struct Columns {
    pub rp: RowPack,
    /// Whole rows are packed (see [`prefer_packed`]).
    pub packed: bool,
    pub classes: Vec<Class>,
    pub src_step: usize,
    pub dst_step: usize,
}

impl Columns {
    /// Fills in the interior of every class and the edges the border runs read;
    /// `packed`: whole source rows are packed (every pixel read from the ring).
    fn new(
        (pl, src_w, pw): (usize, usize, usize),
        mut classes: Vec<Class>,
        src_step: usize,
        dst_step: usize,
        packed: bool,
    ) -> Columns {
        let (mut el, mut er) = (0, src_w);
        for cl in &mut classes {
            let (mut ja, mut jb) = (0, cl.count);
            for &(_, off) in &cl.kws {
                // Real pixel off + j·step − pl in [0, src_w).
                let lo = pl.saturating_sub(off).div_ceil(src_step);
                let hi = if pl + src_w > off {
                    (pl + src_w - 1 - off) / src_step + 1
                } else {
                    0
                };
                ja = ja.max(lo);
                jb = jb.min(hi);
            }
            if ja >= jb || packed {
                (ja, jb) = (cl.count, cl.count);
            }
            (cl.ja, cl.jb) = (ja, jb);
            cl.slide = slide_taps(&cl.kws);
            if let (true, Some(max_off)) = (ja > 0, cl.kws.iter().map(|k| k.1).max()) {
                el = el.max(
                    (max_off + (ja - 1) * src_step + 1)
                        .saturating_sub(pl)
                        .min(src_w),
                );
            }
            if let (true, Some(min_off)) = (jb < cl.count, cl.kws.iter().map(|k| k.1).min()) {
                er = er.min((min_off + jb * src_step).saturating_sub(pl).min(src_w));
            }
        }
        Columns {
            rp: RowPack {
                pl,
                src_w,
                pw,
                el,
                er,
            },
            packed,
            classes,
            src_step,
            dst_step,
        }
    }

    /// Whether any border run reads the ring.
    pub(super) fn has_border(&self) -> bool {
        self.classes.iter().any(|c| c.ja > 0 || c.jb < c.count)
    }
}

/// Whether to pack whole source rows (every pixel read from the ring) rather than only
/// their edges. Packed rows make the tiles' loads contiguous, which pays on small
/// images (cache-resident, compute-bound, many border pixels) and wide kernels; on
/// large images, which stream from memory, the copy costs more than it saves.
fn prefer_packed(g: &Geo) -> bool {
    g.w <= 32 || (g.kh * g.kw >= 25 && g.sw == 1)
}

/// `(first offset, its kernel column, kernel columns per pixel)` when the taps' packed
/// offsets are consecutive pixels and their kernel columns an arithmetic sequence
/// along them (stride-1 forward, any backward-data residue class, dilation 1).
fn slide_taps(kws: &[(usize, usize)]) -> Option<(usize, usize, isize)> {
    let &(kw0, off0) = kws.iter().min_by_key(|k| k.1)?;
    let step = match kws.iter().find(|k| k.1 == off0 + 1) {
        Some(&(kw1, _)) => kw1 as isize - kw0 as isize,
        None => 0,
    };
    let mut seen = vec![false; kws.len()];
    for &(kw, off) in kws {
        let k = off - off0;
        if k >= kws.len() || seen[k] || kw as isize != kw0 as isize + k as isize * step {
            return None;
        }
        seen[k] = true;
    }
    Some((off0, kw0, step))
}

/// Forward: output column `ow` reads packed pixel `ow·sw + kw·dw` (the row starts
/// after `left` zero pixels). `staged`: every source pixel passes through the ring
/// (for a prologue that transforms the input as it is packed), whatever
/// [`prefer_packed`] says.
pub(super) fn forward_columns(g: &Geo, staged: bool) -> Columns {
    let pw = (g.left + g.w).max((g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1);
    let class = Class {
        dst0: 0,
        count: g.ow,
        kws: (0..g.kw).map(|kw| (kw, kw * g.dw)).collect(),
        ja: 0,
        jb: 0,
        slide: None,
    };
    let packed = staged || prefer_packed(g);
    Columns::new((g.left, g.w, pw), vec![class], g.sw, 1, packed)
}

/// Backward-data: input column `iw = r + j·sw` (residue class `r`) receives, through
/// kernel column `kw`, output column `o0 + j` where `r + left − kw·dw = o0·sw`.
pub(super) fn backward_data_columns(g: &Geo) -> Columns {
    let mut raw = Vec::new();
    let mut pl = 0isize;
    let mut end = g.ow as isize;
    for r in 0..g.sw.min(g.w) {
        let count = (g.w - r).div_ceil(g.sw);
        let mut kws = Vec::new();
        for kw in 0..g.kw {
            let num = (r + g.left) as isize - (kw * g.dw) as isize;
            if num.rem_euclid(g.sw as isize) == 0 {
                let o0 = num.div_euclid(g.sw as isize);
                pl = pl.max(-o0);
                end = end.max(o0 + count as isize);
                kws.push((kw, o0));
            }
        }
        raw.push((r, count, kws));
    }
    let classes = raw
        .into_iter()
        .map(|(r, count, kws)| Class {
            dst0: r,
            count,
            kws: kws
                .into_iter()
                .map(|(kw, o0)| (kw, (o0 + pl) as usize))
                .collect(),
            ja: 0,
            jb: 0,
            slide: None,
        })
        .collect();
    Columns::new(
        (pl as usize, g.ow, (pl + end) as usize),
        classes,
        1,
        g.sw,
        prefer_packed(g),
    )
}
