//! Activations as boxes on tiles: [`Dist`] and its [`Part`]s, the gathers that copy
//! a box out of another layout, and the host reads and writes of a [`Dist`].

use crate::error::Result;
use crate::ipu::graph::{Engine, Strided, TensorId, Transfer};

/// `n` split into at most `parts` contiguous ranges of equal length (the last may be
/// shorter).
pub fn ranges(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let chunk = n.div_ceil(parts.max(1)).max(1);
    (0..n)
        .step_by(chunk)
        .map(|a| (a, (a + chunk).min(n)))
        .collect()
}

/// The regular split of a [`Dist`]: image ranges × row ranges × channel ranges; box
/// `(ii, ri, ci)` is part `(ii · rows + ri) · chans + ci` of the Dist.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grid {
    /// Image ranges `[a, b)`.
    pub imgs: Vec<(usize, usize)>,
    /// Row ranges.
    pub rows: Vec<(usize, usize)>,
    /// Channel ranges.
    pub chans: Vec<(usize, usize)>,
}

impl Grid {
    /// `n` images in `pn` parts, `h` rows in `ph`, `c` channels in `pc` parts whose
    /// bounds are multiples of `align` (which must divide `c`).
    pub fn new(
        n: usize,
        h: usize,
        c: usize,
        pn: usize,
        ph: usize,
        pc: usize,
        align: usize,
    ) -> Grid {
        let align = align.max(1);
        Grid {
            imgs: ranges(n, pn),
            rows: ranges(h, ph),
            chans: ranges(c / align, pc)
                .into_iter()
                .map(|(a, b)| (a * align, b * align))
                .collect(),
        }
    }
    /// Boxes.
    pub fn boxes(&self) -> usize {
        self.imgs.len() * self.rows.len() * self.chans.len()
    }
    /// The part index of box `(ii, ri, ci)`.
    pub fn index(&self, ii: usize, ri: usize, ci: usize) -> usize {
        (ii * self.rows.len() + ri) * self.chans.len() + ci
    }
}

/// The indices of the ranges of `rs` (sorted, disjoint, covering) that meet `[a, b)`.
fn meeting(rs: &[(usize, usize)], a: usize, b: usize) -> std::ops::Range<usize> {
    if a >= b {
        return 0..0;
    }
    let lo = rs.partition_point(|r| r.1 <= a);
    let hi = rs.partition_point(|r| r.0 < b);
    lo..hi.max(lo)
}

/// One box of a [`Dist`]: images `n0..n0+nb`, rows `r0..r0+rn`, every column,
/// channels `c0..c0+cn`, stored `[nb][rn][w][cn]` in tensor `t` on `tile`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// First image.
    pub n0: usize,
    /// Images.
    pub nb: usize,
    /// First row.
    pub r0: usize,
    /// Rows.
    pub rn: usize,
    /// First channel.
    pub c0: usize,
    /// Channels.
    pub cn: usize,
    /// Index of the row range among the Dist's row ranges.
    pub ri: usize,
    /// Tile.
    pub tile: u32,
    /// Tensor.
    pub t: TensorId,
}

impl Part {
    /// Elements of the box (`w` columns).
    pub fn len(&self, w: usize) -> usize {
        self.nb * self.rn * w * self.cn
    }
}

/// An NHWC activation `[n][h][w][c]` held as boxes on tiles, in the regular split
/// [`Dist::grid`] (parts in the grid's order).
#[derive(Clone, Debug)]
pub struct Dist {
    /// Images.
    pub n: usize,
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// The split.
    pub grid: Grid,
    /// The boxes.
    pub parts: Vec<Part>,
}

impl Dist {
    /// Row ranges per image.
    pub fn rparts(&self) -> usize {
        self.grid.rows.len()
    }
    /// Whether `o` has the same boxes on the same tiles.
    pub(super) fn same_boxes(&self, o: &Dist) -> bool {
        self.grid == o.grid
            && self.parts.len() == o.parts.len()
            && self
                .parts
                .iter()
                .zip(&o.parts)
                .all(|(a, b)| a.tile == b.tile)
    }
    /// The parts that meet images `[n0, n0+nb)`, rows `[r0, r0+rn)` and channels
    /// `[c0, c0+cn)`.
    pub fn meeting(
        &self,
        (n0, nb): (usize, usize),
        (r0, rn): (usize, usize),
        (c0, cn): (usize, usize),
    ) -> impl Iterator<Item = &Part> + '_ {
        let g = &self.grid;
        let (is, rs, cs) = (
            meeting(&g.imgs, n0, n0 + nb),
            meeting(&g.rows, r0, r0 + rn),
            meeting(&g.chans, c0, c0 + cn),
        );
        is.flat_map(move |ii| {
            let cs = cs.clone();
            rs.clone()
                .flat_map(move |ri| cs.clone().map(move |ci| g.index(ii, ri, ci)))
        })
        .map(move |i| &self.parts[i])
    }
}

/// Transfers copying the box (images `n0..n0+nb`, rows `r0..r0+rn`, channels
/// `c0..c0+cn`, every column) of `src` into `dst`, laid out `[nb][rn][w][cn]`.
#[allow(clippy::too_many_arguments)]
pub fn gather(
    src: &Dist,
    n0: usize,
    nb: usize,
    r0: usize,
    rn: usize,
    c0: usize,
    cn: usize,
    dst: TensorId,
    out: &mut Vec<Transfer>,
) {
    let w = src.w;
    for p in src.meeting((n0, nb), (r0, rn), (c0, cn)) {
        let (a0, a1) = (n0.max(p.n0), (n0 + nb).min(p.n0 + p.nb));
        let (b0, b1) = (r0.max(p.r0), (r0 + rn).min(p.r0 + p.rn));
        let (e0, e1) = (c0.max(p.c0), (c0 + cn).min(p.c0 + p.cn));
        if a0 >= a1 || b0 >= b1 || e0 >= e1 {
            continue;
        }
        let src_offset = ((a0 - p.n0) * p.rn + (b0 - p.r0)) * w * p.cn + (e0 - p.c0);
        let dst_offset = ((a0 - n0) * rn + (b0 - r0)) * w * cn + (e0 - c0);
        let copy = if e1 - e0 == p.cn && p.cn == cn {
            Strided {
                src_offset,
                dst_offset,
                counts: [1, 1, a1 - a0, (b1 - b0) * w * cn],
                src_strides: [0, 0, p.rn * w * cn],
                dst_strides: [0, 0, rn * w * cn],
            }
        } else {
            Strided {
                src_offset,
                dst_offset,
                counts: [a1 - a0, b1 - b0, w, e1 - e0],
                src_strides: [p.rn * w * p.cn, w * p.cn, p.cn],
                dst_strides: [rn * w * cn, w * cn, cn],
            }
        };
        out.push(Transfer {
            src: p.t,
            dsts: vec![dst],
            copy,
        });
    }
}

/// Elements of the box (images `n0..n0+nb`, rows `r0..r0+rn`, channels `c0..c0+cn`)
/// of `src` that lie on tiles other than `tile`: what a gather onto `tile` receives.
#[allow(clippy::too_many_arguments)]
pub fn remote_elems(
    src: &Dist,
    n0: usize,
    nb: usize,
    r0: usize,
    rn: usize,
    c0: usize,
    cn: usize,
    tile: u32,
) -> usize {
    src.meeting((n0, nb), (r0, rn), (c0, cn))
        .filter(|p| p.tile != tile)
        .map(|p| {
            let a = (n0 + nb).min(p.n0 + p.nb) - n0.max(p.n0);
            let b = (r0 + rn).min(p.r0 + p.rn) - r0.max(p.r0);
            let e = (c0 + cn).min(p.c0 + p.cn) - c0.max(p.c0);
            a * b * e * src.w
        })
        .sum()
}

/// Visits the rows of `cn` channels of box `p` of an NHWC tensor `[n][h][w][c]`: (offset
/// in the host tensor, offset in the box).
pub(super) fn box_rows(d: &Dist, p: &Part, mut f: impl FnMut(usize, usize)) {
    let mut o = 0;
    for i in p.n0..p.n0 + p.nb {
        for r in p.r0..p.r0 + p.rn {
            for col in 0..d.w {
                f(((i * d.h + r) * d.w + col) * d.c + p.c0, o);
                o += p.cn;
            }
        }
    }
}

/// Writes a host NHWC tensor into the boxes of `d`.
pub fn write_dist(e: &mut Engine, d: &Dist, x: &[f32]) -> Result<()> {
    crate::error::check_len("activation", x.len(), d.n * d.h * d.w * d.c)?;
    for p in &d.parts {
        let mut buf = vec![0.0f32; p.nb * p.rn * d.w * p.cn];
        box_rows(d, p, |s, o| {
            buf[o..o + p.cn].copy_from_slice(&x[s..s + p.cn])
        });
        e.write(p.t, &buf)?;
    }
    Ok(())
}

/// Reads the boxes of `d` into a host NHWC tensor.
pub fn read_dist(e: &Engine, d: &Dist) -> Vec<f32> {
    let mut x = vec![0.0f32; d.n * d.h * d.w * d.c];
    for p in &d.parts {
        let b = e.read(p.t);
        box_rows(d, p, |s, o| x[s..s + p.cn].copy_from_slice(&b[o..o + p.cn]));
    }
    x
}
