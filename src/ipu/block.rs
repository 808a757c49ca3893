//! One MBConv block (expand 1×1 → norm+swish → k×k depthwise/group conv → norm+swish
//! → squeeze-excitation → project 1×1 → norm → skip add), forward and backward, built
//! as one program on the model and executed through the codelets.
//!
//! Placement: image `i` of the batch lives on tile `i` (every per-image operation —
//! convolutions, GroupNorm/LayerNorm statistics, SE — is tile-local), parameter
//! tensor `j` on tile `batch + j`. Parameters are broadcast to the image tiles by one exchange; the
//! weight, bias and norm-parameter gradients are per-image partials gathered to the
//! parameter tile and reduced there (`ReducePartials`); Proxy Norm statistics are
//! computed on the norm's parameter tile and broadcast. A block whose weights do not
//! fit one tile beside one image's activations is reported as an
//! [`Error::TileMemory`].

use super::codelets::{Codelet, ConvGeom, NormGeom, ProxyScale, SHIM_WORKERS};
use super::graph::{
    Engine, FieldRef, Graph, LayerId, LayerInfo, Program, Strided, TensorId, Transfer,
};
use super::reference::proxy_quantiles;
use super::target::{Precision, Target};
use crate::error::{Error, Result};

/// The normalization family of a block.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BlockNorm {
    /// GroupNorm with this many groups, swish after the first two norms.
    Gn(usize),
    /// LayerNorm with Proxy Norm swish after the first two norms; the last norm has
    /// no activation and no proxy.
    LnPn,
}

/// An MBConv block.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Images.
    pub batch: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Expansion ratio (1: no expand conv).
    pub expand: usize,
    /// Spatial kernel size.
    pub kernel: usize,
    /// Spatial stride.
    pub stride: usize,
    /// Channels per group of the spatial conv (1 depthwise, 16 G16).
    pub group_size: usize,
    /// SE inner channels.
    pub se: usize,
    /// Normalization.
    pub norm: BlockNorm,
}

impl BlockSpec {
    /// Expanded width.
    pub fn mid(&self) -> usize {
        self.cin * self.expand
    }
    /// Output size of the spatial conv (PyTorch-symmetric padding `kernel/2`).
    pub fn out_hw(&self) -> (usize, usize) {
        let p = self.kernel / 2;
        (
            (self.h + 2 * p - self.kernel) / self.stride + 1,
            (self.w + 2 * p - self.kernel) / self.stride + 1,
        )
    }
    /// Identity skip.
    pub fn skip(&self) -> bool {
        self.stride == 1 && self.cin == self.cout
    }
    /// (cg, act, proxy, where the proxy scale goes) of norm 1 (after the
    /// expansion), 2 (after the spatial conv) and 3 (after the projection), `c`
    /// channels. Under LN+PN (DESIGN.md, "Proxy Norm"): full scale after the
    /// expansion, delayed scale after the spatial conv (folded into the SE gate), and
    /// a γ-only LayerNorm with no activation after the projection.
    pub fn norm_of(&self, which: usize, c: usize) -> (usize, u32, bool, ProxyScale) {
        let act = if which < 3 { 1 } else { 0 };
        let scale = if which == 2 {
            ProxyScale::Delayed
        } else {
            ProxyScale::Full
        };
        match self.norm {
            BlockNorm::Gn(g) => (c / g, act, false, ProxyScale::Full),
            BlockNorm::LnPn => (c, act, act == 1, scale),
        }
    }
    /// Whether norm `which` has γ only (no β, β', γ'): the projection's LayerNorm
    /// under Proxy Norm.
    pub fn gamma_only(&self, which: usize) -> bool {
        which == 3 && self.norm == BlockNorm::LnPn
    }
    /// Parameter tensors: (name, elements), in the order of [`BlockParams`].
    pub fn param_shapes(&self) -> Vec<(&'static str, usize)> {
        let (m, k) = (self.mid(), self.kernel);
        vec![
            ("w_expand", if self.expand == 1 { 0 } else { self.cin * m }),
            ("norm1", 4 * m),
            ("w_spatial", k * k * self.group_size * m),
            ("norm2", 4 * m),
            ("se_w1", m * self.se),
            ("se_b1", self.se),
            ("se_w2", self.se * m),
            ("se_b2", m),
            ("w_project", m * self.cout),
            (
                "norm3",
                if self.gamma_only(3) {
                    self.cout
                } else {
                    4 * self.cout
                },
            ),
        ]
    }
    fn validate(&self) -> Result<()> {
        let m = self.mid();
        let ok = self.batch > 0
            && self.h > 0
            && self.w > 0
            && self.cin > 0
            && self.cout > 0
            && self.expand > 0
            && self.kernel % 2 == 1
            && self.stride > 0
            && self.group_size > 0
            && m.is_multiple_of(self.group_size)
            && self.se > 0
            && match self.norm {
                BlockNorm::Gn(g) => g > 0 && m.is_multiple_of(g) && self.cout.is_multiple_of(g),
                BlockNorm::LnPn => true,
            };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidDescriptor(format!(
                "inconsistent block {self:?}"
            )))
        }
    }
}

/// Parameters of a block, each a flat vector in the order of
/// [`BlockSpec::param_shapes`]: convolution weights in the layout of
/// [`crate::kernels::conv::ConvDesc`] (`[kh][kw][C_in/groups][C_out]`; SE weights
/// `[C_in][C_out]`), norm parameters `[4][C]` = γ, β, β', γ' (β', γ' used by Proxy
/// Norm only), or `[C]` = γ for the γ-only projection LayerNorm under Proxy Norm.
pub type BlockParams = Vec<Vec<f32>>;

/// Results of [`run_block`]: the block output `[N][OH][OW][C_out]`, the input gradient
/// `[N][H][W][C_in]` and the parameter gradients (layout of [`BlockParams`]; norm
/// gradients `[C][4]` = dγ, dβ, dβ', dγ' per channel, `[C]` = dγ for a γ-only norm).
/// Cycles are estimates.
#[derive(Clone, Debug)]
pub struct BlockResult {
    /// Output.
    pub out: Vec<f32>,
    /// Input gradient.
    pub dx: Vec<f32>,
    /// Parameter gradients.
    pub grads: Vec<Vec<f32>>,
    /// Estimated cycles of the forward program.
    pub fwd_cycles: u64,
    /// Estimated cycles of the backward program.
    pub bwd_cycles: u64,
}

struct B {
    g: Graph,
    fwd: Vec<Program>,
    bwd: Vec<Program>,
    lf: LayerId,
    lb: LayerId,
}

fn f(t: TensorId, len: usize) -> FieldRef {
    FieldRef::whole(t, len)
}

impl B {
    fn t(&mut self, name: String, len: usize, tile: u32) -> Result<TensorId> {
        self.g.add_tensor(name, len, tile)
    }
    /// One compute set per call, a vertex per tile from `make(tile) -> (codelet, fields)`.
    fn cs(
        &mut self,
        name: &str,
        fwd: bool,
        tiles: &[u32],
        mut make: impl FnMut(u32) -> Result<(Codelet, Vec<FieldRef>)>,
    ) -> Result<()> {
        let l = if fwd { self.lf } else { self.lb };
        let c = self.g.add_compute_set(name, l);
        for &t in tiles {
            let (cd, fs) = make(t)?;
            self.g.add_vertex(c, t, cd, fs)?;
        }
        if fwd { &mut self.fwd } else { &mut self.bwd }.push(Program::Execute(c));
        Ok(())
    }
    fn ex(&mut self, name: &str, fwd: bool, tr: Vec<Transfer>) -> Result<()> {
        let l = if fwd { self.lf } else { self.lb };
        let e = self.g.add_exchange(name, l, tr)?;
        if fwd { &mut self.fwd } else { &mut self.bwd }.push(Program::Exchange(e));
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_geom(
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    k: usize,
    s: usize,
    groups: usize,
    cig: usize,
    cog: usize,
) -> ConvGeom {
    ConvGeom {
        nb: 1,
        in_h0: 0,
        in_hn: h,
        in_w0: 0,
        in_wn: w,
        out_h0: 0,
        out_hn: oh,
        out_w0: 0,
        out_wn: ow,
        kh: k,
        kw: k,
        stride: s,
        pad_t: k / 2,
        pad_l: k / 2,
        groups,
        cin_g: cig,
        cout_g: cog,
    }
}

/// Builds the block's forward and backward programs on `target`, runs them on `x`
/// (`[N][H][W][C_in]`), `params` and the output gradient `dout`, and returns the
/// results.
pub fn run_block(
    spec: &BlockSpec,
    target: &Target,
    x: &[f32],
    params: &[Vec<f32>],
    dout: &[f32],
) -> Result<BlockResult> {
    spec.validate()?;
    let n = spec.batch;
    if target.tiles <= n {
        return Err(Error::InvalidArgument(format!(
            "block of {n} images needs {} tiles",
            n + 1
        )));
    }
    let shapes = spec.param_shapes();
    if params.len() != shapes.len() {
        return Err(Error::InvalidArgument(format!(
            "block takes {} parameter tensors",
            shapes.len()
        )));
    }
    for ((name, len), p) in shapes.iter().zip(params) {
        if p.len() != *len {
            return Err(Error::InvalidArgument(format!(
                "block parameter {name}: {} elements, needs {len}",
                p.len()
            )));
        }
    }
    let (h, w, ci, co, m, k, st) = (
        spec.h,
        spec.w,
        spec.cin,
        spec.cout,
        spec.mid(),
        spec.kernel,
        spec.stride,
    );
    let (oh, ow) = spec.out_hw();
    let (px, opx) = (h * w, oh * ow);
    crate::error::check_len("x", x.len(), n * px * ci)?;
    crate::error::check_len("dout", dout.len(), n * opx * co)?;
    let mut g = Graph::new(target.clone(), Precision::F32)?;
    let lf = g.add_layer(LayerInfo {
        name: "block".into(),
        kind: "block",
        pass: "fwd",
        flops: 0.0,
    });
    let lb = g.add_layer(LayerInfo {
        name: "block".into(),
        kind: "block",
        pass: "bwd",
        flops: 0.0,
    });
    let mut b = B {
        g,
        fwd: vec![],
        bwd: vec![],
        lf,
        lb,
    };
    // Parameter `i` (and its gradient reduction) lives on tile `batch + i`.
    let home = |pidx: usize| (n + pidx) as u32;
    let imgs: Vec<u32> = (0..n as u32).collect();
    // Parameters (persistent) on the parameter tile and their per-image copies.
    let mut pg = Vec::new();
    let mut local: Vec<Vec<TensorId>> = vec![Vec::new(); shapes.len()];
    let mut bcast = Vec::new();
    for (pi, (name, len)) in shapes.iter().enumerate() {
        let t = b.t(name.to_string(), *len, home(pi))?;
        b.g.set_persistent(t);
        pg.push(t);
        for &i in &imgs {
            local[pi].push(b.t(format!("{name}@{i}"), *len, i)?);
        }
        if *len > 0 {
            bcast.push(Transfer {
                src: t,
                dsts: local[pi].clone(),
                copy: Strided::contiguous(0, 0, *len),
            });
        }
    }
    b.ex("broadcast parameters", true, bcast)?;
    let q: Vec<f32> = proxy_quantiles(200).iter().map(|&v| v as f32).collect();
    // Proxy statistics (μ, s) per norm on the parameter tile, broadcast; constants 0/1
    // without Proxy Norm.
    // Per norm and image: (μ, the scale the norm vertex applies, the delayed scale
    // the SE gate applies, β or zeros for a γ-only norm).
    let mut musc: Vec<(Vec<TensorId>, Vec<TensorId>, Vec<TensorId>)> = Vec::new();
    let mut musc_p: Vec<(TensorId, TensorId, TensorId)> = Vec::new();
    let mut beta0: Vec<Option<Vec<TensorId>>> = Vec::new();
    for (which, pidx, c) in [(1usize, 1usize, m), (2, 3, m), (3, 9, co)] {
        let (_, act, proxy, mode) = spec.norm_of(which, c);
        let pt = home(pidx);
        let qt = b.t(format!("norm{which}.quantiles"), q.len(), pt)?;
        b.g.set_init(qt, q.clone())?;
        let mu = b.t(format!("norm{which}.mu"), c, pt)?;
        let sc = b.t(format!("norm{which}.scale"), c, pt)?;
        if proxy {
            let parts = b.t(format!("norm{which}.pn_partials"), SHIM_WORKERS * c * 2, pt)?;
            let sums = b.t(format!("norm{which}.pn_sums"), c * 2, pt)?;
            let p = pg[pidx];
            b.cs(&format!("norm{which}.proxy_stats"), true, &[pt], |_| {
                Ok((
                    Codelet::proxy_stats(c, 200, act),
                    vec![
                        FieldRef {
                            tensor: p,
                            offset: 0,
                            len: c,
                        },
                        FieldRef {
                            tensor: p,
                            offset: c,
                            len: c,
                        },
                        FieldRef {
                            tensor: p,
                            offset: 2 * c,
                            len: c,
                        },
                        FieldRef {
                            tensor: p,
                            offset: 3 * c,
                            len: c,
                        },
                        f(qt, 200),
                        f(parts, SHIM_WORKERS * c * 2),
                    ],
                ))
            })?;
            b.cs(&format!("norm{which}.proxy_reduce"), true, &[pt], |_| {
                Ok((
                    Codelet::reduce(SHIM_WORKERS, c * 2, false),
                    vec![f(parts, SHIM_WORKERS * c * 2), f(sums, c * 2)],
                ))
            })?;
            b.cs(&format!("norm{which}.proxy_finalize"), true, &[pt], |_| {
                Ok((
                    Codelet::proxy_finalize(c, 200, 0.03),
                    vec![f(sums, c * 2), f(mu, c), f(sc, c)],
                ))
            })?;
        } else {
            b.g.set_init(mu, vec![0.0; c])?;
            b.g.set_init(sc, vec![1.0; c])?;
        }
        let mut lm = Vec::new();
        let mut ls = Vec::new();
        let mut ld = Vec::new();
        for &i in &imgs {
            lm.push(b.t(format!("norm{which}.mu@{i}"), c, i)?);
            ls.push(b.t(format!("norm{which}.scale@{i}"), c, i)?);
        }
        let mut tr = vec![Transfer {
            src: mu,
            dsts: lm.clone(),
            copy: Strided::contiguous(0, 0, c),
        }];
        if proxy && mode != ProxyScale::Full {
            // The norm vertex applies no scale; the delayed one goes to the SE gate.
            for (j, &i) in imgs.iter().enumerate() {
                b.g.set_init(ls[j], vec![1.0; c])?;
                if mode == ProxyScale::Delayed {
                    ld.push(b.t(format!("norm{which}.delayed_scale@{i}"), c, i)?);
                }
            }
            if mode == ProxyScale::Delayed {
                tr.push(Transfer {
                    src: sc,
                    dsts: ld.clone(),
                    copy: Strided::contiguous(0, 0, c),
                });
            }
        } else {
            tr.push(Transfer {
                src: sc,
                dsts: ls.clone(),
                copy: Strided::contiguous(0, 0, c),
            });
        }
        b.ex(&format!("norm{which}.broadcast_proxy"), true, tr)?;
        beta0.push(if spec.gamma_only(which) {
            let mut v = Vec::new();
            for &i in &imgs {
                let t = b.t(format!("norm{which}.beta0@{i}"), c, i)?;
                b.g.set_init(t, vec![0.0; c])?;
                v.push(t);
            }
            Some(v)
        } else {
            None
        });
        musc.push((lm, ls, ld));
        musc_p.push((mu, sc, qt));
    }
    // Per-image activations.
    let per = |b: &mut B, name: &str, len: usize| -> Result<Vec<TensorId>> {
        imgs.iter()
            .map(|&i| b.t(format!("{name}@{i}"), len, i))
            .collect()
    };
    let xt = per(&mut b, "x", px * ci)?;
    let idx = |i: u32| i as usize;
    // Expand.
    let e_out = if spec.expand != 1 {
        let e = per(&mut b, "expand.out", px * m)?;
        let geo = conv_geom(h, w, h, w, 1, 1, 1, ci, m);
        b.cs("expand.fwd", true, &imgs, |i| {
            Ok((
                Codelet::conv_amp(geo),
                vec![
                    f(xt[idx(i)], px * ci),
                    f(local[0][idx(i)], ci * m),
                    f(e[idx(i)], px * m),
                ],
            ))
        })?;
        e
    } else {
        xt.clone()
    };
    // A norm (+ act, + proxy) on per-image tensors `inp` of `pix`×`c`; returns
    // (output, stats tensors).
    let norm_fwd = |b: &mut B,
                    which: usize,
                    pidx: usize,
                    inp: &[TensorId],
                    pix: usize,
                    c: usize|
     -> Result<(Vec<TensorId>, Vec<TensorId>, NormGeom)> {
        let (cg, act, _, _) = spec.norm_of(which, c);
        let sums = per(b, &format!("norm{which}.sums"), c * 2)?;
        let stats = per(b, &format!("norm{which}.stats"), (c / cg) * 2)?;
        let out = per(b, &format!("norm{which}.out"), pix * c)?;
        b.cs(&format!("norm{which}.stats"), true, &imgs, |i| {
            Ok((
                Codelet::norm_stats(1, pix, c),
                vec![f(inp[idx(i)], pix * c), f(sums[idx(i)], c * 2)],
            ))
        })?;
        b.cs(&format!("norm{which}.finalize"), true, &imgs, |i| {
            Ok((
                Codelet::norm_finalize(1, c, cg, pix * cg, 1e-3),
                vec![f(sums[idx(i)], c * 2), f(stats[idx(i)], (c / cg) * 2)],
            ))
        })?;
        let geom = NormGeom {
            nb: 1,
            pix,
            c,
            c0: 0,
            groups: c / cg,
            cg,
            per_sample: true,
            act,
        };
        let (lm, ls, _) = musc[which - 1].clone();
        let b0 = beta0[which - 1].clone();
        b.cs(&format!("norm{which}.apply"), true, &imgs, |i| {
            let p = local[pidx][idx(i)];
            Ok((
                Codelet::norm_act(geom),
                vec![
                    f(inp[idx(i)], pix * c),
                    f(stats[idx(i)], (c / cg) * 2),
                    FieldRef {
                        tensor: p,
                        offset: 0,
                        len: c,
                    },
                    match &b0 {
                        Some(z) => f(z[idx(i)], c),
                        None => FieldRef {
                            tensor: p,
                            offset: c,
                            len: c,
                        },
                    },
                    f(lm[idx(i)], c),
                    f(ls[idx(i)], c),
                    f(out[idx(i)], pix * c),
                ],
            ))
        })?;
        Ok((out, stats, geom))
    };
    let (a1, st1, g1) = norm_fwd(&mut b, 1, 1, &e_out, px, m)?;
    // Spatial conv.
    let groups = m / spec.group_size;
    let geo_sp = conv_geom(
        h,
        w,
        oh,
        ow,
        k,
        st,
        groups,
        spec.group_size,
        spec.group_size,
    );
    let dw = spec.group_size == 1;
    let sp = per(&mut b, "spatial.out", opx * m)?;
    let wsp_len = k * k * spec.group_size * m;
    b.cs("spatial.fwd", true, &imgs, |i| {
        let cd = if dw {
            Codelet::dw_vmac(geo_sp)
        } else {
            Codelet::conv_amp(geo_sp)
        };
        Ok((
            cd,
            vec![
                f(a1[idx(i)], px * m),
                f(local[2][idx(i)], wsp_len),
                f(sp[idx(i)], opx * m),
            ],
        ))
    })?;
    let (a2, st2, g2) = norm_fwd(&mut b, 2, 3, &sp, opx, m)?;
    // Squeeze-excitation.
    let se = spec.se;
    let pooled = per(&mut b, "se.pooled", m)?;
    let hpre = per(&mut b, "se.h", se)?;
    let hs = per(&mut b, "se.h_act", se)?;
    let gpre = per(&mut b, "se.g", m)?;
    let gate = per(&mut b, "se.gate", m)?;
    let seo = per(&mut b, "se.out", opx * m)?;
    let fc1 = conv_geom(1, 1, 1, 1, 1, 1, 1, m, se);
    let fc2 = conv_geom(1, 1, 1, 1, 1, 1, 1, se, m);
    b.cs("se.pool", true, &imgs, |i| {
        Ok((
            Codelet::channel_sum(1, opx, m, 1.0 / opx as f32),
            vec![f(a2[idx(i)], opx * m), f(pooled[idx(i)], m)],
        ))
    })?;
    b.cs("se.fc1", true, &imgs, |i| {
        Ok((
            Codelet::conv_amp(fc1),
            vec![
                f(pooled[idx(i)], m),
                f(local[4][idx(i)], m * se),
                f(hpre[idx(i)], se),
            ],
        ))
    })?;
    b.cs("se.swish", true, &imgs, |i| {
        Ok((
            Codelet::bias_act(1, se, 1),
            vec![
                f(hpre[idx(i)], se),
                f(local[5][idx(i)], se),
                f(hs[idx(i)], se),
            ],
        ))
    })?;
    b.cs("se.fc2", true, &imgs, |i| {
        Ok((
            Codelet::conv_amp(fc2),
            vec![
                f(hs[idx(i)], se),
                f(local[6][idx(i)], se * m),
                f(gpre[idx(i)], m),
            ],
        ))
    })?;
    b.cs("se.sigmoid", true, &imgs, |i| {
        Ok((
            Codelet::bias_act(1, m, 2),
            vec![
                f(gpre[idx(i)], m),
                f(local[7][idx(i)], m),
                f(gate[idx(i)], m),
            ],
        ))
    })?;
    // The delayed proxy scale of norm 2 folded into the gate: gate·s.
    let ld2 = musc[1].2.clone();
    let delayed = !ld2.is_empty();
    let gate_s = if delayed {
        let gs = per(&mut b, "se.gate_scaled", m)?;
        b.cs("se.gate_scale", true, &imgs, |i| {
            Ok((
                Codelet::se_gate(1, 1, m),
                vec![f(gate[idx(i)], m), f(ld2[idx(i)], m), f(gs[idx(i)], m)],
            ))
        })?;
        gs
    } else {
        gate.clone()
    };
    b.cs("se.gate", true, &imgs, |i| {
        Ok((
            Codelet::se_gate(1, opx, m),
            vec![
                f(a2[idx(i)], opx * m),
                f(gate_s[idx(i)], m),
                f(seo[idx(i)], opx * m),
            ],
        ))
    })?;
    // Project.
    let pr = per(&mut b, "project.out", opx * co)?;
    let geo_pr = conv_geom(oh, ow, oh, ow, 1, 1, 1, m, co);
    b.cs("project.fwd", true, &imgs, |i| {
        Ok((
            Codelet::conv_amp(geo_pr),
            vec![
                f(seo[idx(i)], opx * m),
                f(local[8][idx(i)], m * co),
                f(pr[idx(i)], opx * co),
            ],
        ))
    })?;
    let (z3, st3, g3) = norm_fwd(&mut b, 3, 9, &pr, opx, co)?;
    let out = if spec.skip() {
        let o = per(&mut b, "out", opx * co)?;
        b.cs("skip.add", true, &imgs, |i| {
            Ok((
                Codelet::add(opx * co),
                vec![
                    f(xt[idx(i)], px * ci),
                    f(z3[idx(i)], opx * co),
                    f(o[idx(i)], opx * co),
                ],
            ))
        })?;
        o
    } else {
        z3.clone()
    };

    // ---- Backward ----
    let dout_t = per(&mut b, "dout", opx * co)?;
    // Per-channel norm sums per image, gathered later: (perChannel tensors, which, c, param index).
    let mut chan_partials: Vec<(Vec<TensorId>, usize, usize, usize)> = Vec::new();
    let norm_bwd = |b: &mut B,
                    which: usize,
                    pidx: usize,
                    inp: &[TensorId],
                    stats: &[TensorId],
                    geom: NormGeom,
                    dz: &[TensorId],
                    chan: &mut Vec<(Vec<TensorId>, usize, usize, usize)>|
     -> Result<Vec<TensorId>> {
        let (pix, c, cg) = (geom.pix, geom.c, geom.cg);
        let gl = (c / cg) * 2;
        let pimg = per(b, &format!("norm{which}.grad_image"), c * 2)?;
        let pch = per(b, &format!("norm{which}.grad_channel"), c * 4)?;
        let means = per(b, &format!("norm{which}.grad_means"), gl)?;
        let dx = per(b, &format!("norm{which}.dx"), pix * c)?;
        let (lm, ls, _) = musc[which - 1].clone();
        let b0 = beta0[which - 1].clone();
        let common = |i: u32| {
            let p = local[pidx][idx(i)];
            vec![
                f(inp[idx(i)], pix * c),
                f(stats[idx(i)], gl),
                FieldRef {
                    tensor: p,
                    offset: 0,
                    len: c,
                },
                match &b0 {
                    Some(z) => f(z[idx(i)], c),
                    None => FieldRef {
                        tensor: p,
                        offset: c,
                        len: c,
                    },
                },
                f(lm[idx(i)], c),
                f(ls[idx(i)], c),
                f(dz[idx(i)], pix * c),
            ]
        };
        b.cs(&format!("norm{which}.grad_partials"), false, &imgs, |i| {
            let mut v = common(i);
            v.push(f(pimg[idx(i)], c * 2));
            v.push(f(pch[idx(i)], c * 4));
            Ok((Codelet::norm_act_grad_partials(geom), v))
        })?;
        b.cs(&format!("norm{which}.grad_finalize"), false, &imgs, |i| {
            Ok((
                Codelet::norm_grad_finalize(1, c, cg, pix * cg),
                vec![f(pimg[idx(i)], c * 2), f(means[idx(i)], gl)],
            ))
        })?;
        b.cs(&format!("norm{which}.grad_apply"), false, &imgs, |i| {
            let mut v = common(i);
            v.push(f(means[idx(i)], gl));
            v.push(f(dx[idx(i)], pix * c));
            Ok((Codelet::norm_act_grad_apply(geom), v))
        })?;
        chan.push((pch, which, c, pidx));
        Ok(dx)
    };
    // Weight-gradient partials per image: (tensors, param index, len).
    let mut wparts: Vec<(Vec<TensorId>, usize, usize)> = Vec::new();
    let dp = norm_bwd(&mut b, 3, 9, &pr, &st3, g3, &dout_t, &mut chan_partials)?;
    // Project backward.
    let dseo = per(&mut b, "project.dx", opx * m)?;
    let dwpr = per(&mut b, "project.dw", m * co)?;
    b.cs("project.bwd_data", false, &imgs, |i| {
        Ok((
            Codelet::conv_amp_bwd_data(geo_pr),
            vec![
                f(dp[idx(i)], opx * co),
                f(local[8][idx(i)], m * co),
                f(dseo[idx(i)], opx * m),
            ],
        ))
    })?;
    b.cs("project.wgrad", false, &imgs, |i| {
        Ok((
            Codelet::conv_wgrad_amp(geo_pr),
            vec![
                f(seo[idx(i)], opx * m),
                f(dp[idx(i)], opx * co),
                f(dwpr[idx(i)], m * co),
            ],
        ))
    })?;
    wparts.push((dwpr, 8, m * co));
    // SE backward.
    let dxg = per(&mut b, "se.dx_gate", opx * m)?;
    let dgate = per(&mut b, "se.dgate", m)?;
    let dgpre = per(&mut b, "se.dg", m)?;
    let dhs = per(&mut b, "se.dh_act", se)?;
    let dw2 = per(&mut b, "se.dw2", se * m)?;
    let dh = per(&mut b, "se.dh", se)?;
    let dpool = per(&mut b, "se.dpooled", m)?;
    let dw1 = per(&mut b, "se.dw1", m * se)?;
    let dpx = per(&mut b, "se.dpool_x", opx * m)?;
    let da2 = per(&mut b, "se.dx", opx * m)?;
    // With a delayed scale: d(gate·s) first, then dgate = d(gate·s)·s and the
    // scale's per-image gradient ds = d(gate·s)·gate.
    let dgs = if delayed {
        per(&mut b, "se.dgate_scaled", m)?
    } else {
        dgate.clone()
    };
    let ds_img = per(&mut b, "norm2.dscale", if delayed { m } else { 0 })?;
    b.cs("se.gate_grad", false, &imgs, |i| {
        Ok((
            Codelet::se_gate_grad(1, opx, m),
            vec![
                f(a2[idx(i)], opx * m),
                f(gate_s[idx(i)], m),
                f(dseo[idx(i)], opx * m),
                f(dxg[idx(i)], opx * m),
                f(dgs[idx(i)], m),
            ],
        ))
    })?;
    if delayed {
        b.cs("se.gate_scale_grad", false, &imgs, |i| {
            Ok((
                Codelet::se_gate_grad(1, 1, m),
                vec![
                    f(gate[idx(i)], m),
                    f(ld2[idx(i)], m),
                    f(dgs[idx(i)], m),
                    f(dgate[idx(i)], m),
                    f(ds_img[idx(i)], m),
                ],
            ))
        })?;
    }
    b.cs("se.sigmoid_grad", false, &imgs, |i| {
        Ok((
            Codelet::bias_act_grad(1, m, 2),
            vec![
                f(gpre[idx(i)], m),
                f(local[7][idx(i)], m),
                f(dgate[idx(i)], m),
                f(dgpre[idx(i)], m),
            ],
        ))
    })?;
    b.cs("se.fc2_bwd_data", false, &imgs, |i| {
        Ok((
            Codelet::conv_amp_bwd_data(fc2),
            vec![
                f(dgpre[idx(i)], m),
                f(local[6][idx(i)], se * m),
                f(dhs[idx(i)], se),
            ],
        ))
    })?;
    b.cs("se.fc2_wgrad", false, &imgs, |i| {
        Ok((
            Codelet::conv_wgrad_amp(fc2),
            vec![
                f(hs[idx(i)], se),
                f(dgpre[idx(i)], m),
                f(dw2[idx(i)], se * m),
            ],
        ))
    })?;
    b.cs("se.swish_grad", false, &imgs, |i| {
        Ok((
            Codelet::bias_act_grad(1, se, 1),
            vec![
                f(hpre[idx(i)], se),
                f(local[5][idx(i)], se),
                f(dhs[idx(i)], se),
                f(dh[idx(i)], se),
            ],
        ))
    })?;
    b.cs("se.fc1_bwd_data", false, &imgs, |i| {
        Ok((
            Codelet::conv_amp_bwd_data(fc1),
            vec![
                f(dh[idx(i)], se),
                f(local[4][idx(i)], m * se),
                f(dpool[idx(i)], m),
            ],
        ))
    })?;
    b.cs("se.fc1_wgrad", false, &imgs, |i| {
        Ok((
            Codelet::conv_wgrad_amp(fc1),
            vec![
                f(pooled[idx(i)], m),
                f(dh[idx(i)], se),
                f(dw1[idx(i)], m * se),
            ],
        ))
    })?;
    b.cs("se.pool_grad", false, &imgs, |i| {
        Ok((
            Codelet::pool_grad(1, opx, m, 1.0 / opx as f32),
            vec![f(dpool[idx(i)], m), f(dpx[idx(i)], opx * m)],
        ))
    })?;
    b.cs("se.dx", false, &imgs, |i| {
        Ok((
            Codelet::add(opx * m),
            vec![
                f(dxg[idx(i)], opx * m),
                f(dpx[idx(i)], opx * m),
                f(da2[idx(i)], opx * m),
            ],
        ))
    })?;
    wparts.push((dw1, 4, m * se));
    wparts.push((dh.clone(), 5, se));
    wparts.push((dw2, 6, se * m));
    wparts.push((dgpre.clone(), 7, m));
    let ds = norm_bwd(&mut b, 2, 3, &sp, &st2, g2, &da2, &mut chan_partials)?;
    // Spatial backward.
    let da1 = per(&mut b, "spatial.dx", px * m)?;
    let dwsp = per(&mut b, "spatial.dw", wsp_len)?;
    b.cs("spatial.bwd_data", false, &imgs, |i| {
        let cd = if dw {
            Codelet::dw_vmac_bwd_data(geo_sp)
        } else {
            Codelet::conv_amp_bwd_data(geo_sp)
        };
        Ok((
            cd,
            vec![
                f(ds[idx(i)], opx * m),
                f(local[2][idx(i)], wsp_len),
                f(da1[idx(i)], px * m),
            ],
        ))
    })?;
    if dw {
        let wk = per(&mut b, "spatial.dw_workers", SHIM_WORKERS * wsp_len)?;
        b.cs("spatial.wgrad", false, &imgs, |i| {
            Ok((
                Codelet::dw_vmac_wgrad(geo_sp),
                vec![
                    f(a1[idx(i)], px * m),
                    f(ds[idx(i)], opx * m),
                    f(wk[idx(i)], SHIM_WORKERS * wsp_len),
                ],
            ))
        })?;
        b.cs("spatial.wgrad_workers", false, &imgs, |i| {
            Ok((
                Codelet::reduce(SHIM_WORKERS, wsp_len, false),
                vec![
                    f(wk[idx(i)], SHIM_WORKERS * wsp_len),
                    f(dwsp[idx(i)], wsp_len),
                ],
            ))
        })?;
    } else {
        b.cs("spatial.wgrad", false, &imgs, |i| {
            Ok((
                Codelet::conv_wgrad_amp(geo_sp),
                vec![
                    f(a1[idx(i)], px * m),
                    f(ds[idx(i)], opx * m),
                    f(dwsp[idx(i)], wsp_len),
                ],
            ))
        })?;
    }
    wparts.push((dwsp, 2, wsp_len));
    let de = norm_bwd(&mut b, 1, 1, &e_out, &st1, g1, &da1, &mut chan_partials)?;
    // Expand backward.
    let dxb = if spec.expand != 1 {
        let geo = conv_geom(h, w, h, w, 1, 1, 1, ci, m);
        let dxe = per(&mut b, "expand.dx", px * ci)?;
        let dwe = per(&mut b, "expand.dw", ci * m)?;
        b.cs("expand.bwd_data", false, &imgs, |i| {
            Ok((
                Codelet::conv_amp_bwd_data(geo),
                vec![
                    f(de[idx(i)], px * m),
                    f(local[0][idx(i)], ci * m),
                    f(dxe[idx(i)], px * ci),
                ],
            ))
        })?;
        b.cs("expand.wgrad", false, &imgs, |i| {
            Ok((
                Codelet::conv_wgrad_amp(geo),
                vec![
                    f(xt[idx(i)], px * ci),
                    f(de[idx(i)], px * m),
                    f(dwe[idx(i)], ci * m),
                ],
            ))
        })?;
        wparts.push((dwe, 0, ci * m));
        dxe
    } else {
        de
    };
    let dx = if spec.skip() {
        let d = per(&mut b, "dx", px * ci)?;
        b.cs("skip.add_grad", false, &imgs, |i| {
            Ok((
                Codelet::add(px * ci),
                vec![
                    f(dxb[idx(i)], px * ci),
                    f(dout_t[idx(i)], px * ci),
                    f(d[idx(i)], px * ci),
                ],
            ))
        })?;
        d
    } else {
        dxb
    };
    // Weight gradients: reduce-scatter over spare tiles (after the image and
    // parameter tiles; a spare tile sums one slice of every image's partial, so the
    // gather buffers never sit beside an image's activations), then the reduced
    // slices go to the parameter's tile.
    // Norm-parameter sums are small: gathered to the parameter's tile and reduced
    // there.
    let mut gather = Vec::new();
    let mut collect = Vec::new();
    let mut reds: Vec<(TensorId, TensorId, usize, u32)> = Vec::new();
    let mut grads: Vec<Option<TensorId>> = vec![None; shapes.len()];
    let mut spare = n + shapes.len();
    for (parts, pidx, len) in &wparts {
        let pname = shapes[*pidx].0;
        // The reduced gradient on its own tile (beside the parameter it may not fit).
        let gt = if spare < target.tiles {
            spare as u32
        } else {
            home(*pidx)
        };
        spare += 1;
        let out = b.t(format!("{pname}.grad"), *len, gt)?;
        // Slices of at most half a tile's budget with the gathered partials and sum.
        let cap = target.budget_bytes() / (2 * 4 * (n + 1));
        let chunk = len.div_ceil(n).min(cap).max(1);
        for (j, r0) in (0..*len).step_by(chunk).enumerate() {
            let sl = chunk.min(len - r0);
            // Wraps onto the image tiles only on a target with too few tiles.
            let tj = if spare < target.tiles {
                spare as u32
            } else {
                (j % n) as u32
            };
            spare += 1;
            let buf = b.t(format!("{pname}.grad_gather{j}"), n * sl, tj)?;
            let sum = b.t(format!("{pname}.grad_slice{j}"), sl, tj)?;
            for (i, p) in parts.iter().enumerate() {
                gather.push(Transfer {
                    src: *p,
                    dsts: vec![buf],
                    copy: Strided::contiguous(r0, i * sl, sl),
                });
            }
            reds.push((buf, sum, sl, tj));
            collect.push(Transfer {
                src: sum,
                dsts: vec![out],
                copy: Strided::contiguous(0, r0, sl),
            });
        }
        grads[*pidx] = Some(out);
    }
    let mut chan_sums = Vec::new();
    let mut ds_over = Vec::new();
    for (parts, which, c, pidx) in &chan_partials {
        let pt = home(*pidx);
        let buf = b.t(format!("norm{which}.channel_gather"), n * c * 4, pt)?;
        let out = b.t(format!("norm{which}.channel_sums"), c * 4, pt)?;
        for (i, p) in parts.iter().enumerate() {
            gather.push(Transfer {
                src: *p,
                dsts: vec![buf],
                copy: Strided::contiguous(0, i * c * 4, c * 4),
            });
        }
        if *which == 2 && delayed {
            // The delayed scale's gradient replaces Σ dz·(a−μ) in slot 0 (see
            // `ProxyNormParamGrad`), after the gather.
            for (i, d) in ds_img.iter().enumerate() {
                ds_over.push(Transfer {
                    src: *d,
                    dsts: vec![buf],
                    copy: Strided {
                        src_offset: 0,
                        dst_offset: i * c * 4,
                        counts: [1, 1, *c, 1],
                        src_strides: [0, 0, 1],
                        dst_strides: [0, 0, 4],
                    },
                });
            }
        }
        reds.push((buf, out, c * 4, pt));
        chan_sums.push((out, *which, *c, *pidx));
    }
    b.ex("gather gradient partials", false, gather)?;
    if !ds_over.is_empty() {
        b.ex("gather delayed-scale gradients", false, ds_over)?;
    }
    b.cs("reduce gradient partials", false, &[], |_| unreachable!())?;
    let red_cs = match b.bwd.last() {
        Some(Program::Execute(c)) => *c,
        _ => unreachable!(),
    };
    for (buf, out, len, pt) in reds {
        b.g.add_vertex(
            red_cs,
            pt,
            Codelet::reduce(n, len, false),
            vec![f(buf, n * len), f(out, len)],
        )?;
    }
    b.ex("collect reduced weight gradients", false, collect)?;
    for (sums, which, c, pidx) in chan_sums {
        let pt = home(pidx);
        let (_, act, proxy, mode) = spec.norm_of(which, c);
        let p = pg[pidx];
        let terms = b.t(format!("norm{which}.proxy_terms"), c * 3, pt)?;
        let out = b.t(format!("norm{which}.grad"), c * 4, pt)?;
        let pf = |o: usize| FieldRef {
            tensor: p,
            offset: o * c,
            len: c,
        };
        if proxy {
            let parts = b.t(
                format!("norm{which}.proxy_grad_partials"),
                SHIM_WORKERS * c * 3,
                pt,
            )?;
            let (mu, sc, qt) = musc_p[which - 1];
            b.cs(
                &format!("norm{which}.proxy_param_grad"),
                false,
                &[pt],
                |_| {
                    Ok((
                        Codelet::proxy_param_grad(c, 200, 200, act, mode),
                        vec![
                            f(sums, c * 4),
                            pf(0),
                            pf(1),
                            pf(2),
                            pf(3),
                            f(qt, 200),
                            f(mu, c),
                            f(sc, c),
                            f(parts, SHIM_WORKERS * c * 3),
                        ],
                    ))
                },
            )?;
            b.cs(&format!("norm{which}.proxy_terms"), false, &[pt], |_| {
                Ok((
                    Codelet::reduce(SHIM_WORKERS, c * 3, false),
                    vec![f(parts, SHIM_WORKERS * c * 3), f(terms, c * 3)],
                ))
            })?;
        }
        b.cs(&format!("norm{which}.param_grad"), false, &[pt], |_| {
            Ok((
                Codelet::proxy_grad_finalize(c, proxy),
                vec![f(sums, c * 4), pf(0), f(terms, c * 3), f(out, c * 4)],
            ))
        })?;
        grads[pidx] = Some(out);
    }
    let B { g, fwd, bwd, .. } = b;
    let (pf, pb) = (Program::Sequence(fwd), Program::Sequence(bwd));
    let whole = Program::Sequence(vec![pf.clone(), pb.clone()]);
    let prof = g.profile(&whole)?;
    let mut e = Engine::new(&g);
    for (pi, p) in params.iter().enumerate() {
        e.write(pg[pi], p)?;
    }
    for i in 0..n {
        e.write(xt[i], &x[i * px * ci..(i + 1) * px * ci])?;
        e.write(dout_t[i], &dout[i * opx * co..(i + 1) * opx * co])?;
    }
    e.run(&whole)?;
    let cat = |ts: &[TensorId]| {
        ts.iter()
            .flat_map(|t| e.read(*t).to_vec())
            .collect::<Vec<f32>>()
    };
    let tot = |l: &super::graph::LayerProfile| l.compute_cycles + l.exchange_cycles + l.sync_cycles;
    Ok(BlockResult {
        out: cat(&out),
        dx: cat(&dx),
        grads: grads
            .iter()
            .zip(&shapes)
            .map(|(g, (pname, len))| {
                let v = g.map(|t| e.read(t).to_vec()).unwrap_or_default();
                if *pname == "norm3" && spec.gamma_only(3) {
                    // γ-only: dγ, the first of each channel's four sums.
                    v.iter().step_by(4).copied().take(*len).collect()
                } else {
                    v
                }
            })
            .collect(),
        fwd_cycles: tot(&prof.layers[0]),
        bwd_cycles: tot(&prof.layers[1]),
    })
}
