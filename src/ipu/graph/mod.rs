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

mod engine;
mod profile;

pub use engine::Engine;
pub use profile::{LayerProfile, Profile};
use profile::{Step, flatten};

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
}
