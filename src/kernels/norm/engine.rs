//! The SIMD chunk kernels shared by the normalizations and the fused Proxy Norm op.
//!
//! Everything works on a chunk of rows of an NHWC tensor (`rows × c`, channels
//! fastest) with per-channel coefficient vectors, so that BatchNorm, GroupNorm,
//! LayerNorm and Proxy Norm differ only in how the coefficients are computed between
//! the passes:
//!
//! - [`StatsChunk`]: per-channel shifted sums `Σ(x−k)`, `Σ(x−k)²` (statistics pass);
//! - [`ApplyChunk`]: `x̂ = (x − xm)·xa + xb`, `u = x̂·g + bt`, `y = φ(u)` (then `y·p + q` for
//!   the proxy correction) — the apply pass;
//! - [`BwdStatsChunk`]: recomputes `u`, `du = dy·p·φ'(u)`, stores `du` and accumulates
//!   `Σ du`, `Σ du·x̂` (and `Σ dy`, `Σ dy·(φ(u) − μ)` for Proxy Norm) — the
//!   statistics-gradient pass;
//! - [`BwdApplyChunk`]: `dx = du·p1 + x̂·q + o` — the backward apply pass.
//!
//! Per-channel sums are accumulated in `f32` registers over at most [`FLUSH_ROWS`]
//! rows and then added into `f64` partials, so that long reductions keep their
//! accuracy; the callers combine chunk partials in a fixed order.

use crate::kernels::activation::Act;
use crate::simd::{Simd, SimdKernel};
use std::marker::PhantomData;

/// Rows accumulated in `f32` registers before they are added into the `f64` partials.
pub(crate) const FLUSH_ROWS: usize = 128;

/// Loads `n` floats (all `LANES` when `n ≥ LANES`; missing lanes are zero).
///
/// # Safety
/// `min(n, LANES)` floats must be readable at `p`.
#[inline(always)]
unsafe fn ld<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
    // SAFETY: forwarded from the caller.
    unsafe {
        if n >= S::LANES {
            s.load_ptr(p)
        } else {
            s.load_partial_ptr(p, n)
        }
    }
}

/// Stores the first `min(n, LANES)` lanes.
///
/// # Safety
/// `min(n, LANES)` floats must be writable at `p`.
#[inline(always)]
unsafe fn st<S: Simd>(s: S, p: *mut f32, v: S::V, n: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if n >= S::LANES {
            s.store_ptr(p, v)
        } else {
            s.store_partial_ptr(p, v, n)
        }
    }
}

/// Lanes used by vector `j` of a block of `NV` vectors whose last one has `last` lanes.
#[inline(always)]
fn lanes<S: Simd, const NV: usize>(j: usize, last: usize) -> usize {
    if j + 1 == NV { last } else { S::LANES }
}

/// Adds `NV` accumulator vectors into `out` (`f64`, at most `NV·LANES` entries).
#[inline(always)]
fn flush<S: Simd, const NV: usize>(s: S, acc: &[S::V; NV], out: &mut [f64]) {
    let mut tmp = [0.0f32; 32];
    assert!(NV * S::LANES <= tmp.len() && out.len() <= NV * S::LANES);
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: `tmp` holds `NV·LANES` floats (asserted above).
        unsafe { s.store_ptr(tmp.as_mut_ptr().add(j * S::LANES), *a) }
    }
    for (o, t) in out.iter_mut().zip(&tmp) {
        *o += *t as f64;
    }
}

/// A kernel that processes a block of `NV ≤ 2` channel vectors starting at channel
/// `c0` over all rows of its chunk (accumulators stay in registers).
pub(crate) trait ColBlock {
    fn block<S: Simd, const NV: usize>(&mut self, s: S, c0: usize, last: usize);
}

/// Runs `k` over the channel blocks of a row of `c` channels: blocks of two full
/// vectors, then one block with the rest (the last vector possibly partial).
#[inline(always)]
pub(crate) fn col_blocks<S: Simd, K: ColBlock>(s: S, c: usize, k: &mut K) {
    let l = S::LANES;
    let mut c0 = 0;
    while c - c0 >= 2 * l {
        k.block::<S, 2>(s, c0, l);
        c0 += 2 * l;
    }
    let rem = c - c0;
    if rem > l {
        k.block::<S, 2>(s, c0, rem - l);
    } else if rem > 0 {
        k.block::<S, 1>(s, c0, rem);
    }
}

/// Statistics pass: `s1[c] += Σ_rows (x − shift[c])`, `s2[c] += Σ_rows (x − shift[c])²`.
pub(crate) struct StatsChunk<'a> {
    /// `rows × c` inputs.
    pub x: &'a [f32],
    pub c: usize,
    /// Per-channel shift (a value close to the mean: the chunk's set's first row).
    pub shift: &'a [f32],
    pub s1: &'a mut [f64],
    pub s2: &'a mut [f64],
}

impl SimdKernel for StatsChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(mut self, s: S) {
        let c = self.c;
        assert!(c > 0 && self.x.len().is_multiple_of(c));
        assert!(self.shift.len() == c && self.s1.len() == c && self.s2.len() == c);
        col_blocks(s, c, &mut self);
    }
}

impl ColBlock for StatsChunk<'_> {
    #[inline(always)]
    fn block<S: Simd, const NV: usize>(&mut self, s: S, c0: usize, last: usize) {
        let (l, c) = (S::LANES, self.c);
        let rows = self.x.len() / c;
        let width = (NV - 1) * l + last;
        let xp = self.x.as_ptr();
        let mut k = [s.zero(); NV];
        for (j, kj) in k.iter_mut().enumerate() {
            // SAFETY: channels c0..c0+width lie inside `shift` (len c).
            *kj = unsafe {
                ld(
                    s,
                    self.shift.as_ptr().add(c0 + j * l),
                    lanes::<S, NV>(j, last),
                )
            };
        }
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + FLUSH_ROWS).min(rows);
            let mut a1 = [s.zero(); NV];
            let mut a2 = [s.zero(); NV];
            for r in r0..r1 {
                for j in 0..NV {
                    // SAFETY: row r < rows, channels c0+j·l+lanes ≤ c0+width ≤ c.
                    let v = unsafe { ld(s, xp.add(r * c + c0 + j * l), lanes::<S, NV>(j, last)) };
                    let v = s.sub(v, k[j]);
                    a1[j] = s.add(a1[j], v);
                    a2[j] = s.mul_add(v, v, a2[j]);
                }
            }
            flush(s, &a1, &mut self.s1[c0..c0 + width]);
            flush(s, &a2, &mut self.s2[c0..c0 + width]);
            r0 = r1;
        }
    }
}

/// Apply pass: `y = φ(((x − xm)·xa + xb)·g + bt)`, then `y·p + q` when `post` is given.
pub(crate) struct ApplyChunk<'a, A> {
    pub x: &'a [f32],
    pub y: &'a mut [f32],
    pub c: usize,
    pub xm: &'a [f32],
    pub xa: &'a [f32],
    pub xb: &'a [f32],
    pub g: &'a [f32],
    pub bt: &'a [f32],
    pub post: Option<(&'a [f32], &'a [f32])>,
    pub act: PhantomData<A>,
}

impl<A: Act> SimdKernel for ApplyChunk<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let c = self.c;
        assert!(c > 0 && self.x.len().is_multiple_of(c) && self.y.len() == self.x.len());
        for v in [self.xm, self.xa, self.xb, self.g, self.bt] {
            assert_eq!(v.len(), c);
        }
        let coef = [self.xm, self.xa, self.xb, self.g, self.bt];
        match self.post {
            Some((p, q)) => {
                assert!(p.len() == c && q.len() == c);
                apply_rows::<S, A, true>(s, self.x, self.y, c, coef, [p, q]);
            }
            None => apply_rows::<S, A, false>(s, self.x, self.y, c, coef, [self.g, self.g]),
        }
    }
}

#[inline(always)]
fn apply_rows<S: Simd, A: Act, const POST: bool>(
    s: S,
    x: &[f32],
    y: &mut [f32],
    c: usize,
    [xm, xa, xb, g, bt]: [&[f32]; 5],
    [p, q]: [&[f32]; 2],
) {
    let l = S::LANES;
    let rows = x.len() / c;
    let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
    let cp = [
        xm.as_ptr(),
        xa.as_ptr(),
        xb.as_ptr(),
        g.as_ptr(),
        bt.as_ptr(),
        p.as_ptr(),
        q.as_ptr(),
    ];
    #[inline(always)]
    unsafe fn one<S: Simd, A: Act, const POST: bool>(
        s: S,
        xp: *const f32,
        yp: *mut f32,
        cp: &[*const f32; 7],
        c0: usize,
        n: usize,
    ) {
        // SAFETY: the caller guarantees `n` floats at every pointer (coefficients
        // at offset c0).
        unsafe {
            let v = s.sub(ld(s, xp, n), ld(s, cp[0].add(c0), n));
            let xh = s.mul_add(v, ld(s, cp[1].add(c0), n), ld(s, cp[2].add(c0), n));
            let u = s.mul_add(xh, ld(s, cp[3].add(c0), n), ld(s, cp[4].add(c0), n));
            let mut z = A::f(s, u);
            if POST {
                z = s.mul_add(z, ld(s, cp[5].add(c0), n), ld(s, cp[6].add(c0), n));
            }
            st(s, yp, z, n);
        }
    }
    for r in 0..rows {
        let mut c0 = 0;
        while c0 + l <= c {
            // SAFETY: row r < rows and c0 + l ≤ c: inside x, y and the coefficients.
            unsafe { one::<S, A, POST>(s, xp.add(r * c + c0), yp.add(r * c + c0), &cp, c0, l) };
            c0 += l;
        }
        if c0 < c {
            // SAFETY: as above with the c − c0 < l remaining channels.
            unsafe {
                one::<S, A, POST>(s, xp.add(r * c + c0), yp.add(r * c + c0), &cp, c0, c - c0)
            };
        }
    }
}

/// Statistics-gradient pass. With `x̂ = (x − xm)·xa + xb`, `u = x̂·g + bt`:
/// `du = dy·p·φ'(u)` (`p` = 1 when `scale` is `None`), stored into `du` when given;
/// `sdu += Σ du`, `sdux += Σ du·x̂`; with `proxy = Some((μ, sdz, sdza))` also
/// `sdz += Σ dy`, `sdza += Σ dy·(φ(u) − μ)`. Sums are per channel over the rows.
pub(crate) struct BwdStatsChunk<'a, A> {
    pub x: &'a [f32],
    pub dy: &'a [f32],
    pub du: Option<&'a mut [f32]>,
    pub c: usize,
    pub xm: &'a [f32],
    pub xa: &'a [f32],
    pub xb: &'a [f32],
    pub g: &'a [f32],
    pub bt: &'a [f32],
    pub scale: Option<&'a [f32]>,
    pub sdu: &'a mut [f64],
    pub sdux: &'a mut [f64],
    pub proxy: Option<ProxySums<'a>>,
    pub act: PhantomData<A>,
}

/// The extra sums of the Proxy Norm backward: `Σ dy` and `Σ dy·(φ(u) − μ)`.
pub(crate) struct ProxySums<'a> {
    pub mu: &'a [f32],
    pub sdz: &'a mut [f64],
    pub sdza: &'a mut [f64],
}

impl<A: Act> SimdKernel for BwdStatsChunk<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(mut self, s: S) {
        let c = self.c;
        assert!(c > 0 && self.x.len().is_multiple_of(c) && self.dy.len() == self.x.len());
        for v in [self.xm, self.xa, self.xb, self.g, self.bt] {
            assert_eq!(v.len(), c);
        }
        assert!(self.sdu.len() == c && self.sdux.len() == c);
        if let Some(du) = &self.du {
            assert_eq!(du.len(), self.x.len());
        }
        if let Some(p) = self.scale {
            assert_eq!(p.len(), c);
        }
        if let Some(ps) = &self.proxy {
            assert!(ps.mu.len() == c && ps.sdz.len() == c && ps.sdza.len() == c);
        }
        match (
            self.du.is_some(),
            self.scale.is_some(),
            self.proxy.is_some(),
        ) {
            (true, true, true) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, true, true, true>(&mut self))
            }
            (true, false, true) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, true, false, true>(&mut self))
            }
            (true, true, false) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, true, true, false>(&mut self))
            }
            (true, false, false) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, true, false, false>(&mut self))
            }
            (false, false, false) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, false, false, false>(&mut self))
            }
            (false, true, false) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, false, true, false>(&mut self))
            }
            (false, true, true) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, false, true, true>(&mut self))
            }
            (false, false, true) => {
                col_blocks(s, c, &mut Bwd::<'_, '_, A, false, false, true>(&mut self))
            }
        }
    }
}

/// [`BwdStatsChunk`] with its options as const parameters.
struct Bwd<'k, 'a, A, const STORE: bool, const SCALE: bool, const PROXY: bool>(
    &'k mut BwdStatsChunk<'a, A>,
);

impl<A: Act, const STORE: bool, const SCALE: bool, const PROXY: bool> ColBlock
    for Bwd<'_, '_, A, STORE, SCALE, PROXY>
{
    #[inline(always)]
    fn block<S: Simd, const NV: usize>(&mut self, s: S, c0: usize, last: usize) {
        let k = &mut *self.0;
        let (l, c) = (S::LANES, k.c);
        let rows = k.x.len() / c;
        let width = (NV - 1) * l + last;
        let (xp, dyp) = (k.x.as_ptr(), k.dy.as_ptr());
        let dup = match &mut k.du {
            Some(d) => d.as_mut_ptr(),
            None => std::ptr::null_mut(),
        };
        // Per-channel coefficients of this block, loaded once.
        #[inline(always)]
        fn load<S: Simd, const NV: usize>(
            s: S,
            v: &[f32],
            c0: usize,
            j: usize,
            last: usize,
        ) -> S::V {
            let n = lanes::<S, NV>(j, last);
            assert!(c0 + j * S::LANES + n <= v.len());
            // SAFETY: checked just above.
            unsafe { ld(s, v.as_ptr().add(c0 + j * S::LANES), n) }
        }
        let mut xm = [s.zero(); NV];
        let mut xa = [s.zero(); NV];
        let mut xb = [s.zero(); NV];
        let mut g = [s.zero(); NV];
        let mut bt = [s.zero(); NV];
        let mut p = [s.zero(); NV];
        let mut mu = [s.zero(); NV];
        for j in 0..NV {
            xm[j] = load::<S, NV>(s, k.xm, c0, j, last);
            xa[j] = load::<S, NV>(s, k.xa, c0, j, last);
            xb[j] = load::<S, NV>(s, k.xb, c0, j, last);
            g[j] = load::<S, NV>(s, k.g, c0, j, last);
            bt[j] = load::<S, NV>(s, k.bt, c0, j, last);
            if let Some(sc) = k.scale {
                p[j] = load::<S, NV>(s, sc, c0, j, last);
            }
            if let Some(ps) = &k.proxy {
                mu[j] = load::<S, NV>(s, ps.mu, c0, j, last);
            }
        }
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + FLUSH_ROWS).min(rows);
            let mut adu = [s.zero(); NV];
            let mut adux = [s.zero(); NV];
            let mut adz = [s.zero(); NV];
            let mut adza = [s.zero(); NV];
            for r in r0..r1 {
                for j in 0..NV {
                    let n = lanes::<S, NV>(j, last);
                    let off = r * c + c0 + j * l;
                    // SAFETY: row r < rows, channels inside the row: in x and dy.
                    let (xv, dyv) = unsafe { (ld(s, xp.add(off), n), ld(s, dyp.add(off), n)) };
                    let xh = s.mul_add(s.sub(xv, xm[j]), xa[j], xb[j]);
                    let u = s.mul_add(xh, g[j], bt[j]);
                    let (f, df) = if PROXY {
                        A::f_df(s, u)
                    } else {
                        (u, A::df(s, u))
                    };
                    let dys = if SCALE { s.mul(dyv, p[j]) } else { dyv };
                    let du = s.mul(dys, df);
                    if STORE {
                        // SAFETY: `du` has the length of x (asserted in `run`).
                        unsafe { st(s, dup.add(off), du, n) };
                    }
                    adu[j] = s.add(adu[j], du);
                    adux[j] = s.mul_add(du, xh, adux[j]);
                    if PROXY {
                        adz[j] = s.add(adz[j], dyv);
                        adza[j] = s.mul_add(dyv, s.sub(f, mu[j]), adza[j]);
                    }
                }
            }
            flush(s, &adu, &mut k.sdu[c0..c0 + width]);
            flush(s, &adux, &mut k.sdux[c0..c0 + width]);
            if PROXY && let Some(ps) = &mut k.proxy {
                flush(s, &adz, &mut ps.sdz[c0..c0 + width]);
                flush(s, &adza, &mut ps.sdza[c0..c0 + width]);
            }
            r0 = r1;
        }
    }
}

/// Where the backward apply pass reads `du`.
pub(crate) enum DuSrc<'a> {
    /// From `dx` itself (written there by the statistics-gradient pass).
    InPlace,
    /// From another buffer (e.g. `dy` when `du = dy`).
    From(&'a [f32]),
}

/// Backward apply pass: `dx = du·p1 + x̂·q + o` with `x̂ = (x − xm)·xa + xb`.
pub(crate) struct BwdApplyChunk<'a> {
    pub x: &'a [f32],
    pub du: DuSrc<'a>,
    pub dx: &'a mut [f32],
    pub c: usize,
    pub p1: &'a [f32],
    pub xm: &'a [f32],
    pub xa: &'a [f32],
    pub xb: &'a [f32],
    pub q: &'a [f32],
    pub o: &'a [f32],
}

impl SimdKernel for BwdApplyChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let c = self.c;
        assert!(c > 0 && self.x.len().is_multiple_of(c) && self.dx.len() == self.x.len());
        for v in [self.p1, self.xm, self.xa, self.xb, self.q, self.o] {
            assert_eq!(v.len(), c);
        }
        let dxp = self.dx.as_mut_ptr();
        let dup: *const f32 = match self.du {
            DuSrc::InPlace => dxp,
            DuSrc::From(d) => {
                assert_eq!(d.len(), self.x.len());
                d.as_ptr()
            }
        };
        let xp = self.x.as_ptr();
        let cp = [
            self.p1.as_ptr(),
            self.xm.as_ptr(),
            self.xa.as_ptr(),
            self.xb.as_ptr(),
            self.q.as_ptr(),
            self.o.as_ptr(),
        ];
        #[inline(always)]
        unsafe fn one<S: Simd>(
            s: S,
            (off, c0, n): (usize, usize, usize),
            (xp, dup, dxp): (*const f32, *const f32, *mut f32),
            cp: &[*const f32; 6],
        ) {
            // SAFETY: the caller guarantees `n` floats at offset `off` of x, du, dx
            // and at `c0` of the coefficients; du is read before dx is written.
            unsafe {
                let xm = ld(s, cp[1].add(c0), n);
                let xa = ld(s, cp[2].add(c0), n);
                let xb = ld(s, cp[3].add(c0), n);
                let xh = s.mul_add(s.sub(ld(s, xp.add(off), n), xm), xa, xb);
                let v = s.mul_add(xh, ld(s, cp[4].add(c0), n), ld(s, cp[5].add(c0), n));
                let v = s.mul_add(ld(s, dup.add(off), n), ld(s, cp[0].add(c0), n), v);
                st(s, dxp.add(off), v, n);
            }
        }
        let l = S::LANES;
        let rows = self.x.len() / c;
        for r in 0..rows {
            let mut c0 = 0;
            while c0 + l <= c {
                // SAFETY: row r < rows, c0 + l ≤ c.
                unsafe { one(s, (r * c + c0, c0, l), (xp, dup, dxp), &cp) };
                c0 += l;
            }
            if c0 < c {
                // SAFETY: the remaining c − c0 < l channels of the row.
                unsafe { one(s, (r * c + c0, c0, c - c0), (xp, dup, dxp), &cp) };
            }
        }
    }
}
