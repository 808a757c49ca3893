//! Small compositions of existing kernels used by the model layer, and the pool of
//! activation buffers the network reuses from step to step.

use super::profile::timed;
use crate::error::{Result, try_filled};
use crate::kernels::regularize::DropConnect;
use std::sync::Mutex;

/// The drop-connect of a block (`p = 0`: keep every sample, factor 1).
pub(crate) fn drop_connect(p: f32, seed: u64) -> Result<DropConnect> {
    DropConnect::new(p, seed)
}

/// `a + b`, element-wise, into a buffer from `pool`: the residual kernel with drop
/// probability 0 (`out = b + a·1`, exact). `a` goes back to the pool.
pub(crate) fn add(pool: &Pool, a: Vec<f32>, b: &[f32]) -> Result<Vec<f32>> {
    let mut out = pool.take(a.len())?;
    timed(super::profile::RESIDUAL, || {
        DropConnect::new(0.0, 0)?.forward_residual(1, &a, b, &mut out)
    })?;
    pool.give(a);
    Ok(out)
}

/// Free `f32` buffers, reused by the passes of a network so that a training step
/// after the first allocates (and page-faults) no activation memory.
///
/// A buffer taken from the pool has unspecified contents: every user overwrites it
/// completely (all kernels the model layer calls write every output element).
#[derive(Debug)]
pub(crate) struct Pool {
    free: Mutex<Vec<Vec<f32>>>,
    /// Off: every buffer is a fresh allocation and nothing is kept (for measuring).
    reuse: bool,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
            reuse: true,
        }
    }
}

impl Clone for Pool {
    /// A clone starts with an empty pool (buffers are not shared).
    fn clone(&self) -> Pool {
        Pool {
            free: Mutex::new(Vec::new()),
            reuse: self.reuse,
        }
    }
}

impl Pool {
    /// Turns reuse on or off (off drops the free buffers).
    pub(crate) fn set_reuse(&mut self, on: bool) {
        self.reuse = on;
        if !on {
            self.clear();
        }
    }

    /// A buffer of `len` elements: the smallest free one that holds `len` without
    /// wasting more than half of it, else a new one.
    ///
    /// A new buffer is allocated fallibly: a size the system refuses is
    /// [`crate::Error::OutOfMemory`] (batch and resolution come from the caller).
    pub(crate) fn take(&self, len: usize) -> Result<Vec<f32>> {
        let fresh = |len| try_filled("an activation buffer", len, 0.0f32);
        if len == 0 {
            return Ok(Vec::new());
        }
        if !self.reuse {
            return fresh(len);
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len && v.capacity() / 2 <= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let mut v = free.swap_remove(i);
                drop(free);
                if v.len() >= len {
                    v.truncate(len);
                } else {
                    // Within the capacity: no allocation.
                    v.resize(len, 0.0);
                }
                Ok(v)
            }
            None => {
                drop(free);
                fresh(len)
            }
        }
    }

    /// Returns a buffer to the pool.
    pub(crate) fn give(&self, v: Vec<f32>) {
        if self.reuse && v.capacity() > 0 {
            self.free.lock().unwrap_or_else(|p| p.into_inner()).push(v);
        }
    }

    /// Bytes held by free buffers.
    pub(crate) fn bytes(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.iter().map(|v| 4 * v.capacity()).sum()
    }

    /// Drops every free buffer.
    pub(crate) fn clear(&self) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
