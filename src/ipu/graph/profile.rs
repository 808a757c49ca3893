//! Profiling a [`Graph`]: per-layer estimated cycles, per-tile liveness and the
//! memory-budget check, per-compute-set and per-exchange cycle estimates.

use super::*;

impl Graph {
    /// Estimated profile of running `program` once: per layer cycles, per tile
    /// memory, and the memory-budget check (an [`Error::TileMemory`] names the first
    /// tile over budget, the tensors live on it at its peak, and the bytes over).
    pub fn profile(&self, program: &Program) -> Result<Profile> {
        self.profile_stashed(program, &Program::Sequence(Vec::new()), 0)
    }

    /// The profile of `first` then `second` (one pipeline stage: its forward, then
    /// its backward), with every tensor that is live across the boundary (written in
    /// `first`, read in `second`: the activations stashed for the backward pass) held
    /// `extra` more times for the micro-batches in flight in a pipeline: those copies
    /// are resident for the whole program.
    pub fn profile_stashed(
        &self,
        first: &Program,
        second: &Program,
        extra: usize,
    ) -> Result<Profile> {
        let (p, over) = self.profile_unchecked(first, second, extra)?;
        match over {
            Some(e) => Err(e),
            None => Ok(p),
        }
    }

    /// [`Graph::profile_stashed`] that reports a tile over its budget next to the
    /// profile instead of failing: `(profile, Some(Error::TileMemory))` then.
    pub fn profile_unchecked(
        &self,
        first: &Program,
        second: &Program,
        extra: usize,
    ) -> Result<(Profile, Option<Error>)> {
        let program = Program::Sequence(vec![first.clone(), second.clone()]);
        let mut boundary_steps = Vec::new();
        flatten(first, 1, &mut boundary_steps);
        let boundary = boundary_steps.len();
        let program = &program;
        let tiles = self.target.tiles;
        let nl = self.layers.len();
        let mut layers: Vec<LayerProfile> = (0..nl)
            .map(|_| LayerProfile {
                compute_cycles: 0,
                exchange_cycles: 0,
                sync_cycles: 0,
                tiles_used: 0,
                max_tile_bytes: 0,
                tile_cycles: vec![0; tiles],
                tile_bytes: vec![0; tiles],
            })
            .collect();
        let mut steps: Vec<(Step, u64)> = Vec::new();
        flatten(program, 1, &mut steps);
        // Liveness: first and last step of every non-persistent tensor.
        let nt = self.tensors.len();
        let mut first = vec![usize::MAX; nt];
        let mut last = vec![0usize; nt];
        let mut touch = |t: TensorId, s: usize| {
            let i = t.0 as usize;
            first[i] = first[i].min(s);
            last[i] = last[i].max(s);
        };
        for (si, (st, _)) in steps.iter().enumerate() {
            match st {
                Step::Cs(c) => {
                    for &v in &self.compute_sets[c.0 as usize].vertices {
                        for f in &self.vertices[v as usize].fields {
                            touch(f.tensor, si);
                        }
                    }
                }
                Step::Ex(e) => {
                    for tr in &self.exchanges[e.0 as usize].transfers {
                        touch(tr.src, si);
                        for d in &tr.dsts {
                            touch(*d, si);
                        }
                    }
                }
            }
        }
        let eb = self.elem_bytes();
        let mut base = vec![0usize; tiles];
        // Vertex state: about 8 bytes per field plus 8 per vertex, always resident.
        for v in &self.vertices {
            base[v.tile as usize] += 8 + 8 * v.fields.len();
        }
        let mut allocs: Vec<Vec<(usize, usize)>> = vec![Vec::new(); steps.len() + 1];
        let mut frees: Vec<Vec<(usize, usize)>> = vec![Vec::new(); steps.len() + 1];
        for (i, t) in self.tensors.iter().enumerate() {
            let live = t.persistent || first[i] != usize::MAX;
            if !live {
                continue;
            }
            let eb = t.elem_bytes.unwrap_or(eb);
            for (r, tile) in &t.mapping {
                let b = r.len() * eb;
                if t.persistent {
                    base[*tile as usize] += b;
                } else {
                    if first[i] < boundary && last[i] >= boundary {
                        base[*tile as usize] += extra * b;
                    }
                    allocs[first[i]].push((*tile as usize, b));
                    frees[last[i] + 1].push((*tile as usize, b));
                }
            }
        }
        let budget = self.target.budget_bytes();
        let mut cur = base.clone();
        let mut peak = vec![0usize; tiles];
        let mut peak_step = vec![0usize; tiles];
        let mut total = Totals::default();
        for (si, (st, reps)) in steps.iter().enumerate() {
            for &(t, b) in &frees[si] {
                cur[t] -= b;
            }
            for &(t, b) in &allocs[si] {
                cur[t] += b;
            }
            let layer = match st {
                Step::Cs(c) => self.compute_sets[c.0 as usize].layer,
                Step::Ex(e) => self.exchanges[e.0 as usize].layer,
            };
            let lp = &mut layers[layer.0 as usize];
            for t in 0..tiles {
                if cur[t] > peak[t] {
                    peak[t] = cur[t];
                    peak_step[t] = si;
                }
                lp.tile_bytes[t] = lp.tile_bytes[t].max(cur[t]);
            }
            let sync = self.target.sync_cycles * reps;
            lp.sync_cycles += sync;
            total.sync += sync;
            match st {
                Step::Cs(c) => {
                    let per_tile = self.compute_set_tile_cycles(*c)?;
                    let m = per_tile.iter().copied().max().unwrap_or(0) * reps;
                    lp.compute_cycles += m;
                    total.compute += m;
                    for (acc, c) in lp.tile_cycles.iter_mut().zip(&per_tile) {
                        *acc += c * reps;
                    }
                }
                Step::Ex(e) => {
                    let (m, per_tile) = self.exchange_cycles(*e);
                    lp.exchange_cycles += m * reps;
                    total.exchange += m * reps;
                    for (acc, c) in lp.tile_cycles.iter_mut().zip(&per_tile) {
                        *acc += c * reps;
                    }
                }
            }
        }
        for lp in &mut layers {
            lp.max_tile_bytes = lp.tile_bytes.iter().copied().max().unwrap_or(0);
            lp.tiles_used = lp.tile_cycles.iter().filter(|&&c| c > 0).count();
        }
        // Budget check: the first tile over budget, at its peak.
        let mut over = None;
        if let Some(t) = (0..tiles).find(|&t| peak[t] > budget) {
            let si = peak_step[t];
            let mut tensors: Vec<(String, usize)> = Vec::new();
            for (i, tensor) in self.tensors.iter().enumerate() {
                let live = tensor.persistent
                    || (first[i] <= si && si <= last[i] && first[i] != usize::MAX);
                if !live {
                    continue;
                }
                let teb = tensor.elem_bytes.unwrap_or(eb);
                let b: usize = tensor
                    .mapping
                    .iter()
                    .filter(|(_, tl)| *tl as usize == t)
                    .map(|(r, _)| r.len() * teb)
                    .sum();
                if b > 0 {
                    tensors.push((tensor.name.clone(), b));
                }
            }
            tensors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            tensors.truncate(12);
            over = Some(Error::TileMemory {
                tile: t,
                bytes: peak[t],
                budget,
                tensors,
            });
        }
        Ok((
            Profile {
                layers,
                compute_cycles: total.compute,
                exchange_cycles: total.exchange,
                sync_cycles: total.sync,
                tile_peak_bytes: peak,
            },
            over,
        ))
    }

    /// Estimated cycles of each tile for one compute set: multi-vertices run one after
    /// another on all workers; single-worker vertices share the worker contexts
    /// (at least the longest one, at least their sum spread over the workers).
    pub fn compute_set_tile_cycles(&self, cs: ComputeSetId) -> Result<Vec<u64>> {
        let tiles = self.target.tiles;
        let mut multi = vec![0u64; tiles];
        let mut single_sum = vec![0u64; tiles];
        let mut single_max = vec![0u64; tiles];
        for &v in &self.compute_sets[cs.0 as usize].vertices {
            let v = &self.vertices[v as usize];
            let est = v.codelet.estimate(&self.target, self.precision)?;
            let t = v.tile as usize;
            if est.multi {
                multi[t] += est.cycles;
            } else {
                single_sum[t] += est.cycles;
                single_max[t] = single_max[t].max(est.cycles);
            }
        }
        let w = self.target.workers as u64;
        Ok((0..tiles)
            .map(|t| multi[t] + single_max[t].max(single_sum[t].div_ceil(w)))
            .collect())
    }

    /// Estimated cycles of an exchange phase (the slowest tile) and per tile: bytes
    /// sent and received per tile at the exchange rate (a broadcast is sent once),
    /// on-tile copies at the on-tile copy rate, plus a fixed overhead.
    pub fn exchange_cycles(&self, e: ExchangeId) -> (u64, Vec<u64>) {
        let tiles = self.target.tiles;
        let eb = self.elem_bytes();
        let mut out = vec![0usize; tiles];
        let mut inb = vec![0usize; tiles];
        let mut local = vec![0usize; tiles];
        for tr in &self.exchanges[e.0 as usize].transfers {
            let src = &self.tensors[tr.src.0 as usize];
            // Bytes on the wire: the narrower of the two sides (an fp32 master is
            // sent as the fp16 copy it feeds).
            let eb = tr
                .dsts
                .iter()
                .map(|d| self.tensors[d.0 as usize].elem_bytes.unwrap_or(eb))
                .chain([src.elem_bytes.unwrap_or(eb)])
                .min()
                .unwrap_or(eb);
            let row = tr.copy.counts[3] * eb;
            let single_src = src.mapping.len() == 1;
            for d in &tr.dsts {
                let dst = &self.tensors[d.0 as usize];
                if single_src && dst.mapping.len() == 1 {
                    let (st, dt) = (src.mapping[0].1 as usize, dst.mapping[0].1 as usize);
                    let b = tr.copy.elems() * eb;
                    if st == dt {
                        local[st] += b;
                    } else {
                        inb[dt] += b;
                    }
                    continue;
                }
                tr.copy.rows(|s, t| {
                    let st = src.tile_of(s) as usize;
                    let dt = dst.tile_of(t) as usize;
                    if st == dt {
                        local[st] += row;
                    } else {
                        inb[dt] += row;
                    }
                });
            }
            // The source sends each remote row once (broadcast).
            let any_remote = tr.dsts.iter().any(|d| {
                let dst = &self.tensors[d.0 as usize];
                !(single_src && dst.mapping.len() == 1 && dst.mapping[0].1 == src.mapping[0].1)
            });
            if any_remote {
                if single_src {
                    out[src.mapping[0].1 as usize] += tr.copy.elems() * eb;
                } else {
                    tr.copy.rows(|s, _| out[src.tile_of(s) as usize] += row);
                }
            }
        }
        let rate = self.target.exchange_bytes_per_cycle;
        let lrate = self.target.on_tile_copy_bytes_per_cycle;
        let per: Vec<u64> = (0..tiles)
            .map(|t| {
                let x = (inb[t].max(out[t]) as f64 / rate).ceil() as u64;
                x + (local[t] as f64 / lrate).ceil() as u64
            })
            .collect();
        let m = per.iter().copied().max().unwrap_or(0);
        let any = self.exchanges[e.0 as usize]
            .transfers
            .iter()
            .any(|t| t.copy.elems() > 0);
        let m = if any {
            m + self.target.exchange_overhead_cycles
        } else {
            0
        };
        (m, per)
    }
}

#[derive(Copy, Clone, Debug)]
pub(super) enum Step {
    Cs(ComputeSetId),
    Ex(ExchangeId),
}

pub(super) fn flatten(p: &Program, reps: u64, out: &mut Vec<(Step, u64)>) {
    match p {
        Program::Sequence(v) => v.iter().for_each(|q| flatten(q, reps, out)),
        Program::Execute(c) => out.push((Step::Cs(*c), reps)),
        Program::Exchange(e) => out.push((Step::Ex(*e), reps)),
        Program::Repeat(n, body) => {
            if *n > 0 {
                flatten(body, reps * *n as u64, out)
            }
        }
    }
}

#[derive(Default)]
struct Totals {
    compute: u64,
    exchange: u64,
    sync: u64,
}

/// Estimated figures of one layer label (all cycles are **estimates**).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerProfile {
    /// Sum over the layer's compute sets of the slowest tile.
    pub compute_cycles: u64,
    /// Sum over the layer's exchanges of the slowest tile.
    pub exchange_cycles: u64,
    /// Syncs (one before each compute set and exchange).
    pub sync_cycles: u64,
    /// Tiles with any compute or exchange work in the layer.
    pub tiles_used: usize,
    /// Largest live bytes on any tile during the layer.
    pub max_tile_bytes: usize,
    /// Per tile: compute plus exchange cycles in the layer.
    pub tile_cycles: Vec<u64>,
    /// Per tile: peak live bytes during the layer.
    pub tile_bytes: Vec<usize>,
}

/// Estimated profile of a program.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Per layer label, indexed like [`Graph::layers`].
    pub layers: Vec<LayerProfile>,
    /// Total compute cycles (estimated).
    pub compute_cycles: u64,
    /// Total exchange cycles (estimated).
    pub exchange_cycles: u64,
    /// Total sync cycles (estimated).
    pub sync_cycles: u64,
    /// Peak live bytes per tile over the program.
    pub tile_peak_bytes: Vec<usize>,
}

impl Profile {
    /// Total estimated cycles.
    pub fn total_cycles(&self) -> u64 {
        self.compute_cycles + self.exchange_cycles + self.sync_cycles
    }
}
