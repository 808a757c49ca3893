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
//! - [`BwdStatsChunk`]: recomputes `u`, `du = dy·p·φ'(u)` and accumulates
//!   `Σ du`, `Σ du·x̂` (and `Σ dy`, `Σ dy·(φ(u) − μ)` for Proxy Norm) — the
//!   statistics-gradient pass;
//! - [`BwdApplyChunk`]: recomputes `du`, then `dx = du·p1 + x̂·q + o` — the backward
//!   apply pass.
//!
//! Per-channel sums are accumulated in `f32` registers over at most [`FLUSH_ROWS`]
//! rows and then added into `f64` partials, so that long reductions keep their
//! accuracy; the callers combine chunk partials in a fixed order.

use crate::kernels::activation::Act;
use crate::simd::{Simd, SimdKernel, load_n as ld};
use std::marker::PhantomData;

/// Rows accumulated in `f32` registers before they are added into the `f64` partials.
pub(crate) const FLUSH_ROWS: usize = 128;

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

/// Statistics-gradient pass. With `x̂ = (x − xm)·xa`, `u = x̂·g + bt`,
/// `du = dy·p·φ'(u)` (`p` = 1 when `scale` is `None`):
/// `sdu += Σ du`, `sdux += Σ du·x̂`; with `proxy = Some((μ, sdz, sdza))` also
/// `sdz += Σ dy`, `sdza += Σ dy·(φ(u) − μ)`. Sums are per channel over the rows.
/// `du` is not stored: the apply pass recomputes it (less memory traffic, and only
/// `x` and `dy` need to stay in cache between the passes).
pub(crate) struct BwdStatsChunk<'a, A> {
    pub x: &'a [f32],
    pub dy: &'a [f32],
    pub c: usize,
    pub xm: &'a [f32],
    pub xa: &'a [f32],
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
        for v in [self.xm, self.xa, self.g, self.bt] {
            assert_eq!(v.len(), c);
        }
        assert!(self.sdu.len() == c && self.sdux.len() == c);
        if let Some(p) = self.scale {
            assert_eq!(p.len(), c);
        }
        if let Some(ps) = &self.proxy {
            assert!(ps.mu.len() == c && ps.sdz.len() == c && ps.sdza.len() == c);
        }
        match (self.scale.is_some(), self.proxy.is_some()) {
            (true, true) => col_blocks(s, c, &mut Bwd::<'_, '_, A, true, true>(&mut self)),
            (false, true) => col_blocks(s, c, &mut Bwd::<'_, '_, A, false, true>(&mut self)),
            (true, false) => col_blocks(s, c, &mut Bwd::<'_, '_, A, true, false>(&mut self)),
            (false, false) => col_blocks(s, c, &mut Bwd::<'_, '_, A, false, false>(&mut self)),
        }
    }
}

/// Loads `NV` channel vectors of a coefficient at block `c0`.
#[inline(always)]
fn load_block<S: Simd, const NV: usize>(s: S, v: &[f32], c0: usize, last: usize) -> [S::V; NV] {
    let mut out = [s.zero(); NV];
    for (j, o) in out.iter_mut().enumerate() {
        let n = lanes::<S, NV>(j, last);
        assert!(c0 + j * S::LANES + n <= v.len());
        // SAFETY: checked just above.
        *o = unsafe { ld(s, v.as_ptr().add(c0 + j * S::LANES), n) };
    }
    out
}

/// [`BwdStatsChunk`] with its options as const parameters.
struct Bwd<'k, 'a, A, const SCALE: bool, const PROXY: bool>(&'k mut BwdStatsChunk<'a, A>);

impl<A: Act, const SCALE: bool, const PROXY: bool> ColBlock for Bwd<'_, '_, A, SCALE, PROXY> {
    #[inline(always)]
    fn block<S: Simd, const NV: usize>(&mut self, s: S, c0: usize, last: usize) {
        let k = &mut *self.0;
        let (l, c) = (S::LANES, k.c);
        let rows = k.x.len() / c;
        let width = (NV - 1) * l + last;
        let (xp, dyp) = (k.x.as_ptr(), k.dy.as_ptr());
        // Per-channel coefficients of this block, loaded once.
        let xm = load_block::<S, NV>(s, k.xm, c0, last);
        let xa = load_block::<S, NV>(s, k.xa, c0, last);
        let g = load_block::<S, NV>(s, k.g, c0, last);
        let bt = load_block::<S, NV>(s, k.bt, c0, last);
        let p = match k.scale {
            Some(sc) => load_block::<S, NV>(s, sc, c0, last),
            None => [s.zero(); NV],
        };
        let mu = match &k.proxy {
            Some(ps) => load_block::<S, NV>(s, ps.mu, c0, last),
            None => [s.zero(); NV],
        };
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
                    let xh = s.mul(s.sub(xv, xm[j]), xa[j]);
                    let u = s.mul_add(xh, g[j], bt[j]);
                    let (f, df) = if PROXY {
                        A::f_df(s, u)
                    } else {
                        (u, A::df(s, u))
                    };
                    let dys = if SCALE { s.mul(dyv, p[j]) } else { dyv };
                    let du = s.mul(dys, df);
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

/// Backward apply pass: recomputes `x̂ = (x − xm)·xa`, `u = x̂·g + bt` and
/// `du = dy·p·φ'(u)` (`p` = 1 when `scale` is `None`), then
/// `dx = du·p1 + x̂·q + o`.
pub(crate) struct BwdApplyChunk<'a, A> {
    pub x: &'a [f32],
    pub dy: &'a [f32],
    pub dx: &'a mut [f32],
    pub c: usize,
    pub xm: &'a [f32],
    pub xa: &'a [f32],
    pub g: &'a [f32],
    pub bt: &'a [f32],
    pub scale: Option<&'a [f32]>,
    pub p1: &'a [f32],
    pub q: &'a [f32],
    pub o: &'a [f32],
    pub act: PhantomData<A>,
}

impl<A: Act> SimdKernel for BwdApplyChunk<'_, A> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let c = self.c;
        let len = self.x.len();
        assert!(c > 0 && len.is_multiple_of(c) && self.dy.len() == len && self.dx.len() == len);
        for v in [self.xm, self.xa, self.g, self.bt, self.p1, self.q, self.o] {
            assert_eq!(v.len(), c);
        }
        let cp = [
            self.xm.as_ptr(),
            self.xa.as_ptr(),
            self.g.as_ptr(),
            self.bt.as_ptr(),
            self.p1.as_ptr(),
            self.q.as_ptr(),
            self.o.as_ptr(),
            self.scale.unwrap_or(self.g).as_ptr(),
        ];
        if let Some(p) = self.scale {
            assert_eq!(p.len(), c);
            bwd_apply_rows::<S, A, true>(s, self.x, self.dy, self.dx, c, &cp);
        } else {
            bwd_apply_rows::<S, A, false>(s, self.x, self.dy, self.dx, c, &cp);
        }
    }
}

#[inline(always)]
fn bwd_apply_rows<S: Simd, A: Act, const SCALE: bool>(
    s: S,
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    c: usize,
    cp: &[*const f32; 8],
) {
    #[inline(always)]
    unsafe fn one<S: Simd, A: Act, const SCALE: bool>(
        s: S,
        (off, c0, n): (usize, usize, usize),
        (xp, dyp, dxp): (*const f32, *const f32, *mut f32),
        cp: &[*const f32; 8],
    ) {
        // SAFETY: the caller guarantees `n` floats at offset `off` of x, dy, dx and
        // at `c0` of the coefficients.
        unsafe {
            let co = |i: usize| cp[i].add(c0);
            let xh = s.sub(ld(s, xp.add(off), n), ld(s, co(0), n));
            let xh = s.mul(xh, ld(s, co(1), n));
            let u = s.mul_add(xh, ld(s, co(2), n), ld(s, co(3), n));
            let mut dys = ld(s, dyp.add(off), n);
            if SCALE {
                dys = s.mul(dys, ld(s, co(7), n));
            }
            let du = s.mul(dys, A::df(s, u));
            let v = s.mul_add(xh, ld(s, co(5), n), ld(s, co(6), n));
            st(s, dxp.add(off), s.mul_add(du, ld(s, co(4), n), v), n);
        }
    }
    let l = S::LANES;
    let rows = x.len() / c;
    let ptrs = (x.as_ptr(), dy.as_ptr(), dx.as_mut_ptr());
    for r in 0..rows {
        let mut c0 = 0;
        while c0 + l <= c {
            // SAFETY: row r < rows, c0 + l ≤ c.
            unsafe { one::<S, A, SCALE>(s, (r * c + c0, c0, l), ptrs, cp) };
            c0 += l;
        }
        if c0 < c {
            // SAFETY: the remaining c − c0 < l channels of the row.
            unsafe { one::<S, A, SCALE>(s, (r * c + c0, c0, c - c0), ptrs, cp) };
        }
    }
}
