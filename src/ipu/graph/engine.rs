//! Host execution of a [`Graph`]: one `f32` buffer per tensor, compute sets run
//! through the codelets' C trampolines, exchanges copied.

use super::*;

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
