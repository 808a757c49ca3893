//! The graph: tensors with tile mappings, vertices on tiles, compute sets, exchanges
//! and programs; memory budgets checked per tile; bulk-synchronous execution and cycle
//! estimates.
//!
//! A [`Graph`] is built once (every rule checked as it is built), then either
//! [profiled](Graph::profile) (estimates only, no data) or executed by an
//! [`Engine`] (host data, codelets run through their C trampolines).

use super::codelets::{Codelet, Dir};
use super::target::{Precision, Target};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::ops::Range;

/// Index of a tensor in its [`Graph`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

/// Index of a compute set in its [`Graph`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ComputeSetId(pub u32);

/// Index of an exchange (a set of transfers run as one exchange phase).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeId(pub u32);

/// Index of a layer label (every compute set and exchange belongs to one, for the
/// per-layer profile).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerId(pub u32);

/// A layer label: what the profile reports per line.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    /// Layer name, e.g. `blocks.3.0.conv_dw`.
    pub name: String,
    /// One of `stem`, `pointwise`, `depthwise`, `grouped`, `norm`, `activation`,
    /// `se`, `pool`, `fc`, `loss` (plus `update` for the optimizer step).
    pub kind: &'static str,
    /// `fwd`, `bwd` (data and weight gradient) or `update`.
    pub pass: &'static str,
    /// Useful floating-point operations of the layer's pass (2 per multiply-add).
    pub flops: f64,
}

/// A tensor: `len` `f32` elements (on the host), stored at the graph's precision on
/// the modelled IPU, mapped to tiles by element intervals.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Name used in errors and reports.
    pub name: String,
    /// Number of elements.
    pub len: usize,
    /// Sorted, disjoint, covering element intervals and their tiles.
    pub mapping: Vec<(Range<usize>, u32)>,
    /// Live for the whole program (weights, optimizer state, constants) instead of
    /// from its first to its last use.
    pub persistent: bool,
    /// Initial contents (`None`: zeros); constants such as the proxy-norm quantiles.
    pub init: Option<Vec<f32>>,
    /// Bytes per element on the modelled IPU when they differ from the graph's
    /// precision (`Some(4)`: the fp32 master weights, gradient accumulators and
    /// optimizer state of "16.32" training).
    pub elem_bytes: Option<usize>,
}

impl Tensor {
    /// The tile holding element `i`.
    pub fn tile_of(&self, i: usize) -> u32 {
        if self.mapping.len() == 1 {
            return self.mapping[0].1;
        }
        let k = self.mapping.partition_point(|(r, _)| r.end <= i);
        self.mapping[k].1
    }

    /// Whether `range` lies entirely on `tile`.
    pub fn is_on(&self, range: &Range<usize>, tile: u32) -> bool {
        if range.is_empty() {
            return true;
        }
        let k = self.mapping.partition_point(|(r, _)| r.end <= range.start);
        let mut i = range.start;
        for (r, t) in &self.mapping[k..] {
            if i >= range.end {
                break;
            }
            if *t != tile {
                return false;
            }
            i = r.end;
        }
        true
    }
}

/// One field of a vertex: a contiguous region of a tensor.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FieldRef {
    /// The tensor.
    pub tensor: TensorId,
    /// First element.
    pub offset: usize,
    /// Elements.
    pub len: usize,
}

impl FieldRef {
    /// The whole of `tensor` (of `len` elements).
    pub fn whole(tensor: TensorId, len: usize) -> FieldRef {
        FieldRef {
            tensor,
            offset: 0,
            len,
        }
    }
    fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// A codelet instance placed on a tile.
#[derive(Clone, Debug)]
pub struct Vertex {
    /// The codelet and its scalar parameters.
    pub codelet: Codelet,
    /// The tile it runs on.
    pub tile: u32,
    /// Its fields, in the codelet's field order.
    pub fields: Vec<FieldRef>,
}

/// A set of vertices run in one compute phase.
#[derive(Clone, Debug)]
pub struct ComputeSet {
    /// Name.
    pub name: String,
    /// Layer it belongs to.
    pub layer: LayerId,
    /// Vertex indices.
    pub vertices: Vec<u32>,
    by_tile: std::collections::HashMap<u32, Vec<u32>>,
}

/// A 4-D strided copy of `counts` elements (innermost dimension contiguous in both
/// source and destination).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Strided {
    /// First source element.
    pub src_offset: usize,
    /// First destination element.
    pub dst_offset: usize,
    /// Extents, outermost first; `counts[3]` elements are contiguous.
    pub counts: [usize; 4],
    /// Source strides of the three outer dimensions.
    pub src_strides: [usize; 3],
    /// Destination strides of the three outer dimensions.
    pub dst_strides: [usize; 3],
}

impl Strided {
    /// A contiguous copy of `len` elements.
    pub fn contiguous(src_offset: usize, dst_offset: usize, len: usize) -> Strided {
        Strided {
            src_offset,
            dst_offset,
            counts: [1, 1, 1, len],
            src_strides: [0; 3],
            dst_strides: [0; 3],
        }
    }
    /// Elements moved.
    pub fn elems(&self) -> usize {
        self.counts.iter().product()
    }
    fn rows(&self, mut f: impl FnMut(usize, usize)) {
        let c = self.counts;
        for a in 0..c[0] {
            for b in 0..c[1] {
                for d in 0..c[2] {
                    let s = self.src_offset
                        + a * self.src_strides[0]
                        + b * self.src_strides[1]
                        + d * self.src_strides[2];
                    let t = self.dst_offset
                        + a * self.dst_strides[0]
                        + b * self.dst_strides[1]
                        + d * self.dst_strides[2];
                    f(s, t);
                }
            }
        }
    }
    fn max_src(&self) -> usize {
        self.extent(self.src_offset, &self.src_strides)
    }
    fn max_dst(&self) -> usize {
        self.extent(self.dst_offset, &self.dst_strides)
    }
    fn extent(&self, off: usize, st: &[usize; 3]) -> usize {
        if self.elems() == 0 {
            return off;
        }
        off + (0..3).map(|i| (self.counts[i] - 1) * st[i]).sum::<usize>() + self.counts[3]
    }
}

/// One transfer of an exchange: the same strided region of `src` broadcast to every
/// destination tensor in `dsts` (destination offsets inside `copy` apply to each).
#[derive(Clone, Debug)]
pub struct Transfer {
    /// Source tensor.
    pub src: TensorId,
    /// Destination tensors.
    pub dsts: Vec<TensorId>,
    /// Geometry.
    pub copy: Strided,
}

/// An exchange phase: transfers that run together between two syncs.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Name.
    pub name: String,
    /// Layer it belongs to.
    pub layer: LayerId,
    /// Transfers.
    pub transfers: Vec<Transfer>,
}

/// A control program.
#[derive(Clone, Debug)]
pub enum Program {
    /// Run the programs in order.
    Sequence(Vec<Program>),
    /// Sync, then run a compute set.
    Execute(ComputeSetId),
    /// Sync, then run an exchange phase.
    Exchange(ExchangeId),
    /// Run `body` `count` times.
    Repeat(usize, Box<Program>),
}

/// A graph under construction (and, once built, the thing profiled or executed).
#[derive(Clone, Debug)]
pub struct Graph {
    /// The target.
    pub target: Target,
    /// Precision of the modelled storage and arithmetic.
    pub precision: Precision,
    /// Tensors.
    pub tensors: Vec<Tensor>,
    /// Vertices.
    pub vertices: Vec<Vertex>,
    /// Compute sets.
    pub compute_sets: Vec<ComputeSet>,
    /// Exchanges.
    pub exchanges: Vec<Exchange>,
    /// Layer labels.
    pub layers: Vec<LayerInfo>,
}

impl Graph {
    /// An empty graph for `target` at `precision`.
    pub fn new(target: Target, precision: Precision) -> Result<Graph> {
        target.validate()?;
        Ok(Graph {
            target,
            precision,
            tensors: Vec::new(),
            vertices: Vec::new(),
            compute_sets: Vec::new(),
            exchanges: Vec::new(),
            layers: Vec::new(),
        })
    }

    /// Adds a layer label.
    pub fn add_layer(&mut self, info: LayerInfo) -> LayerId {
        self.layers.push(info);
        LayerId(self.layers.len() as u32 - 1)
    }

    fn check_tile(&self, tile: u32) -> Result<()> {
        if (tile as usize) < self.target.tiles {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "tile {tile} does not exist (target has {} tiles)",
                self.target.tiles
            )))
        }
    }

    /// Adds a tensor of `len` elements mapped entirely to `tile`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        len: usize,
        tile: u32,
    ) -> Result<TensorId> {
        self.add_tensor_mapped(name, len, vec![(0..len, tile)])
    }

    /// Adds a tensor with an explicit mapping (sorted, disjoint intervals covering
    /// `0..len`).
    pub fn add_tensor_mapped(
        &mut self,
        name: impl Into<String>,
        len: usize,
        mapping: Vec<(Range<usize>, u32)>,
    ) -> Result<TensorId> {
        let name = name.into();
        let mut next = 0;
        for (r, t) in &mapping {
            self.check_tile(*t)?;
            if r.start != next || r.end < r.start {
                return Err(Error::InvalidArgument(format!(
                    "mapping of tensor {name} is not sorted, disjoint and covering"
                )));
            }
            next = r.end;
        }
        if next != len || mapping.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "mapping of tensor {name} covers {next} of {len} elements"
            )));
        }
        self.tensors.push(Tensor {
            name,
            len,
            mapping,
            persistent: false,
            init: None,
            elem_bytes: None,
        });
        Ok(TensorId(self.tensors.len() as u32 - 1))
    }

    /// Marks a tensor live for the whole program.
    pub fn set_persistent(&mut self, t: TensorId) {
        self.tensors[t.0 as usize].persistent = true;
    }

    /// Stores a tensor with `bytes` bytes per element on the modelled IPU (instead of
    /// the graph's precision).
    pub fn set_elem_bytes(&mut self, t: TensorId, bytes: usize) {
        self.tensors[t.0 as usize].elem_bytes = Some(bytes);
    }

    /// Bytes per element of tensor `t` on the modelled IPU.
    pub fn tensor_elem_bytes(&self, t: TensorId) -> usize {
        self.tensors[t.0 as usize]
            .elem_bytes
            .unwrap_or_else(|| self.precision.bytes())
    }

    /// Gives a tensor initial contents (a constant).
    pub fn set_init(&mut self, t: TensorId, data: Vec<f32>) -> Result<()> {
        let tensor = &mut self.tensors[t.0 as usize];
        if data.len() != tensor.len {
            return Err(Error::BufferSize {
                name: "tensor init",
                expected: tensor.len,
                actual: data.len(),
            });
        }
        tensor.init = Some(data);
        tensor.persistent = true;
        Ok(())
    }

    /// The tensor `t`.
    pub fn tensor(&self, t: TensorId) -> &Tensor {
        &self.tensors[t.0 as usize]
    }

    /// Adds an empty compute set.
    pub fn add_compute_set(&mut self, name: impl Into<String>, layer: LayerId) -> ComputeSetId {
        self.compute_sets.push(ComputeSet {
            name: name.into(),
            layer,
            vertices: Vec::new(),
            by_tile: Default::default(),
        });
        ComputeSetId(self.compute_sets.len() as u32 - 1)
    }

    /// Adds a vertex to a compute set. Checks: the field count and each field's
    /// length against the codelet's declaration, every field inside its tensor and
    /// mapped to `tile` (vertices touch only tile-local data), and that no region it
    /// writes overlaps a region another vertex of the compute set reads or writes.
    pub fn add_vertex(
        &mut self,
        cs: ComputeSetId,
        tile: u32,
        codelet: Codelet,
        fields: Vec<FieldRef>,
    ) -> Result<()> {
        self.check_tile(tile)?;
        let spec = codelet.fields()?;
        if spec.len() != fields.len() {
            return Err(Error::InvalidArgument(format!(
                "{} takes {} fields, got {}",
                codelet.name(),
                spec.len(),
                fields.len()
            )));
        }
        for ((fname, _, want), f) in spec.iter().zip(&fields) {
            let t = self.tensors.get(f.tensor.0 as usize).ok_or_else(|| {
                Error::InvalidArgument(format!("{}.{fname}: no such tensor", codelet.name()))
            })?;
            if f.len != *want {
                return Err(Error::InvalidArgument(format!(
                    "{}.{fname}: field has {} elements, the codelet needs {want}",
                    codelet.name(),
                    f.len
                )));
            }
            if f.offset + f.len > t.len {
                return Err(Error::InvalidArgument(format!(
                    "{}.{fname}: region {:?} outside tensor {} of {} elements",
                    codelet.name(),
                    f.range(),
                    t.name,
                    t.len
                )));
            }
            if !t.is_on(&f.range(), tile) {
                return Err(Error::InvalidArgument(format!(
                    "{}.{fname} on tile {tile} touches tensor {} elements {:?} that are not on tile {tile}",
                    codelet.name(),
                    t.name,
                    f.range()
                )));
            }
        }
        // Fields of the vertex itself: a written field overlaps no other field, except
        // an output that exactly aliases the input the codelet may update in place.
        let in_place = codelet.in_place();
        for (i, ((_, d, _), f)) in spec.iter().zip(&fields).enumerate() {
            for (j, ((_, od, _), of)) in spec.iter().zip(&fields).enumerate().skip(i + 1) {
                let writes = *d != Dir::In || *od != Dir::In;
                let overlap = f.tensor == of.tensor
                    && f.offset < of.offset + of.len
                    && of.offset < f.offset + f.len;
                let allowed = f == of
                    && in_place
                        .iter()
                        .any(|&(a, b)| (a, b) == (i, j) || (a, b) == (j, i));
                if writes && overlap && !allowed {
                    return Err(Error::InvalidArgument(format!(
                        "{}: fields {} and {} overlap and one is written",
                        codelet.name(),
                        spec[i].0,
                        spec[j].0
                    )));
                }
            }
        }
        // Write/overlap check against the compute set's other vertices.
        let set = &self.compute_sets[cs.0 as usize];
        for &vi in set.by_tile.get(&tile).map(|v| v.as_slice()).unwrap_or(&[]) {
            let other = &self.vertices[vi as usize];
            let ospec = other.codelet.fields()?;
            for ((_, d, _), f) in spec.iter().zip(&fields) {
                for ((_, od, _), of) in ospec.iter().zip(&other.fields) {
                    let writes = *d != Dir::In || *od != Dir::In;
                    if writes
                        && f.tensor == of.tensor
                        && f.offset < of.offset + of.len
                        && of.offset < f.offset + f.len
                    {
                        return Err(Error::InvalidArgument(format!(
                            "{} and {} in compute set {} both touch tensor {} and one writes it",
                            codelet.name(),
                            other.codelet.name(),
                            set.name,
                            self.tensors[f.tensor.0 as usize].name
                        )));
                    }
                }
            }
        }
        self.vertices.push(Vertex {
            codelet,
            tile,
            fields,
        });
        let vi = self.vertices.len() as u32 - 1;
        let set = &mut self.compute_sets[cs.0 as usize];
        set.vertices.push(vi);
        set.by_tile.entry(tile).or_default().push(vi);
        Ok(())
    }

    /// Adds an exchange phase; every transfer is checked to lie inside its tensors.
    pub fn add_exchange(
        &mut self,
        name: impl Into<String>,
        layer: LayerId,
        transfers: Vec<Transfer>,
    ) -> Result<ExchangeId> {
        let name = name.into();
        for tr in &transfers {
            let s = self.tensors.get(tr.src.0 as usize).ok_or_else(|| {
                Error::InvalidArgument(format!("exchange {name}: no such source tensor"))
            })?;
            if tr.copy.max_src() > s.len {
                return Err(Error::InvalidArgument(format!(
                    "exchange {name}: reads past the end of {}",
                    s.name
                )));
            }
            for d in &tr.dsts {
                let t = self.tensors.get(d.0 as usize).ok_or_else(|| {
                    Error::InvalidArgument(format!("exchange {name}: no such destination"))
                })?;
                if tr.copy.max_dst() > t.len {
                    return Err(Error::InvalidArgument(format!(
                        "exchange {name}: writes past the end of {}",
                        t.name
                    )));
                }
            }
        }
        self.exchanges.push(Exchange {
            name,
            layer,
            transfers,
        });
        Ok(ExchangeId(self.exchanges.len() as u32 - 1))
    }

    /// Which tensors `program` reads or writes (indexed like [`Graph::tensors`]).
    pub fn touched(&self, program: &Program) -> Vec<bool> {
        let mut steps = Vec::new();
        flatten(program, 1, &mut steps);
        let mut v = vec![false; self.tensors.len()];
        for (st, _) in &steps {
            match st {
                Step::Cs(c) => {
                    for &vi in &self.compute_sets[c.0 as usize].vertices {
                        for f in &self.vertices[vi as usize].fields {
                            v[f.tensor.0 as usize] = true;
                        }
                    }
                }
                Step::Ex(e) => {
                    for tr in &self.exchanges[e.0 as usize].transfers {
                        v[tr.src.0 as usize] = true;
                        for d in &tr.dsts {
                            v[d.0 as usize] = true;
                        }
                    }
                }
            }
        }
        v
    }

    /// The non-persistent tensors that `first` touches and `second` touches too: what a
    /// pipeline stage keeps from a micro-batch's forward pass to its backward pass.
    pub fn live_across(&self, first: &Program, second: &Program) -> Vec<TensorId> {
        let (a, b) = (self.touched(first), self.touched(second));
        (0..self.tensors.len())
            .filter(|&i| a[i] && b[i] && !self.tensors[i].persistent)
            .map(|i| TensorId(i as u32))
            .collect()
    }

    /// Bytes of one tensor element on the modelled IPU.
    pub fn elem_bytes(&self) -> usize {
        self.precision.bytes()
    }

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
enum Step {
    Cs(ComputeSetId),
    Ex(ExchangeId),
}

fn flatten(p: &Program, reps: u64, out: &mut Vec<(Step, u64)>) {
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

/// Host execution of a graph: one `f32` buffer per tensor.
pub struct Engine<'g> {
    graph: &'g Graph,
    data: Vec<Vec<f32>>,
}

struct SendPtr(*mut f32);
// SAFETY: the pointers are only dereferenced by codelets of one compute set, whose
// written regions were checked disjoint from every other region of that set when the
// vertices were added (`Graph::add_vertex`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl<'g> Engine<'g> {
    /// Allocates every tensor (zeros, or its initial contents).
    pub fn new(graph: &'g Graph) -> Engine<'g> {
        let data = graph
            .tensors
            .iter()
            .map(|t| t.init.clone().unwrap_or_else(|| vec![0.0; t.len]))
            .collect();
        Engine { graph, data }
    }

    /// Writes host data into a tensor.
    pub fn write(&mut self, t: TensorId, data: &[f32]) -> Result<()> {
        let buf = &mut self.data[t.0 as usize];
        crate::error::check_len("tensor", data.len(), buf.len())?;
        buf.copy_from_slice(data);
        Ok(())
    }

    /// Reads a tensor.
    pub fn read(&self, t: TensorId) -> &[f32] {
        &self.data[t.0 as usize]
    }

    /// Runs a program: compute sets run their vertices (in parallel on the host,
    /// which the write-disjointness check makes deterministic), exchanges copy.
    pub fn run(&mut self, p: &Program) -> Result<()> {
        match p {
            Program::Sequence(v) => v.iter().try_for_each(|q| self.run(q)),
            Program::Repeat(n, body) => (0..*n).try_for_each(|_| self.run(body)),
            Program::Execute(c) => self.execute(*c),
            Program::Exchange(e) => {
                self.exchange(*e);
                Ok(())
            }
        }
    }

    fn execute(&mut self, cs: ComputeSetId) -> Result<()> {
        let g = self.graph;
        let ptrs: Vec<SendPtr> = self
            .data
            .iter_mut()
            .map(|d| SendPtr(d.as_mut_ptr()))
            .collect();
        let set = &g.compute_sets[cs.0 as usize];
        set.vertices.par_iter().try_for_each(|&vi| {
            let v = &g.vertices[vi as usize];
            let fields: Vec<(*mut f32, usize)> = v
                .fields
                .iter()
                // SAFETY: `offset + len <= tensor len` was checked by `add_vertex`.
                .map(|f| (unsafe { ptrs[f.tensor.0 as usize].0.add(f.offset) }, f.len))
                .collect();
            // SAFETY: field lengths match the codelet's declaration (checked by
            // `add_vertex`), the regions lie inside their buffers, and no other vertex
            // of this compute set touches a region this one writes.
            unsafe { v.codelet.run(&fields) }
        })
    }

    fn exchange(&mut self, e: ExchangeId) {
        let g = self.graph;
        for tr in &g.exchanges[e.0 as usize].transfers {
            let row = tr.copy.counts[3];
            for d in &tr.dsts {
                if *d == tr.src {
                    let buf = &mut self.data[d.0 as usize];
                    tr.copy.rows(|s, t| buf.copy_within(s..s + row, t));
                    continue;
                }
                let (src, dst) = two(&mut self.data, tr.src.0 as usize, d.0 as usize);
                tr.copy
                    .rows(|s, t| dst[t..t + row].copy_from_slice(&src[s..s + row]));
            }
        }
    }
}

fn two(v: &mut [Vec<f32>], a: usize, b: usize) -> (&[f32], &mut [f32]) {
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&y[0], &mut x[b])
    }
}
