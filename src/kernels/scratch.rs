//! Caller-owned scratch memory for the kernels.
//!
//! A kernel that needs temporary memory (packed weights, gathered inputs, per-chunk
//! partial sums, per-worker copies) describes it once as a [`WorkspaceLayout`], a list
//! of regions in a fixed order, and takes the same regions, in the same order, from a
//! [`Workspace`] over the caller's `&mut [f32]`. The layout is the single source of the
//! size: the `workspace_len` queries return [`WorkspaceLayout::len`], and the
//! `*_with_workspace` entry points check the buffer against it before touching anything
//! (a short buffer is [`Error::BufferSize`] naming `"workspace"`).
//!
//! Two kinds of region:
//! - **per call** ([`WorkspaceLayout::region`], [`Workspace::take`]): its size depends
//!   on the problem only (e.g. the partial sums of a fixed number of chunks), so results
//!   stay bitwise identical for any thread count;
//! - **per worker** ([`WorkspaceLayout::per_worker`], [`Workspace::per_worker`]): one
//!   slot for each thread of the `rayon` pool the call runs in, picked by
//!   [`rayon::current_thread_index`]. Its size depends on the pool's thread count, so
//!   the layout takes the thread count and [`Workspace::new`] checks that the calling
//!   pool is not larger.
//!
//! Every region starts on a 64-byte boundary (16 floats): the layout adds up to 15
//! floats of slack so that this holds wherever the caller's buffer starts. Alignment
//! never changes a result; it only keeps vector loads from splitting cache lines.
//!
//! Contents: a region's contents are unspecified when it is handed out (whatever the
//! previous call left); kernels initialize what they read. The allocating entry points
//! are the workspace ones on a buffer of at least [`WorkspaceLayout::len`] floats
//! that the calling thread keeps between calls ([`with_reused`]; it
//! grows to the largest size asked for, [`release_reused`] frees it), so there is one
//! implementation of each kernel and repeated calls allocate nothing.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::marker::PhantomData;

thread_local! {
    /// The buffer [`WorkspaceLayout::with_reused`] lends out on this thread.
    static REUSED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Frees the workspace the allocating entry points keep on the calling thread (see
/// [`with_reused`]); the next such call allocates again.
pub fn release_reused() {
    drop(REUSED.with(Cell::take));
}

/// Floats per alignment unit: regions start on 64-byte boundaries.
pub const ALIGN_FLOATS: usize = 16;

/// `floats` rounded up to whole alignment units, saturating (a saturated region size
/// must stay saturated, not wrap to 0).
fn round_up(floats: usize) -> usize {
    floats.div_ceil(ALIGN_FLOATS).saturating_mul(ALIGN_FLOATS)
}

/// The regions a kernel call will take from its workspace, in order; its
/// [`len`](Self::len) is the workspace size in `f32` elements.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkspaceLayout {
    /// Sum of the rounded region sizes.
    floats: usize,
    /// Threads of the pool the call will run in (for per-worker regions).
    threads: usize,
    /// Whether any region is per worker (then the pool size matters).
    workers: bool,
}

impl WorkspaceLayout {
    /// An empty layout for a call that will run in a pool of `threads` threads
    /// (`0` is taken as 1).
    pub fn new(threads: usize) -> WorkspaceLayout {
        WorkspaceLayout {
            floats: 0,
            threads: threads.max(1),
            workers: false,
        }
    }

    /// Adds a per-call region of `floats` elements (none if `floats == 0`).
    pub fn region(&mut self, floats: usize) -> &mut Self {
        self.floats = self.floats.saturating_add(round_up(floats));
        self
    }

    /// Adds a per-worker region: one slot of `floats` elements for each thread.
    pub fn per_worker(&mut self, floats: usize) -> &mut Self {
        self.workers |= floats > 0;
        self.floats = self
            .floats
            .saturating_add(round_up(floats).saturating_mul(self.threads));
        self
    }

    /// The thread count the layout was made for.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The workspace size in `f32` elements: the regions plus the alignment slack
    /// (0 if no region is needed).
    pub fn len(&self) -> usize {
        if self.floats == 0 {
            0
        } else {
            self.floats.saturating_add(ALIGN_FLOATS - 1)
        }
    }

    /// `true` if the call needs no workspace at all.
    pub fn is_empty(&self) -> bool {
        self.floats == 0
    }

    /// Runs `f` on a workspace of exactly [`len`](Self::len) floats borrowed from the
    /// calling thread's kept buffer ([`with_reused`]): what the allocating entry
    /// points pass to the workspace ones.
    pub fn with_reused<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        with_reused(self.len(), f)
    }

    /// [`with_reused`](Self::with_reused) for a fallible `f`, with the buffer itself
    /// allocated fallibly ([`try_with_reused`]): a size the system refuses is
    /// [`Error::OutOfMemory`] rather than an abort.
    pub fn try_with_reused<R>(&self, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
        try_with_reused(self.len(), f)
    }
}

/// Runs `f` on a workspace of exactly `len` floats (contents unspecified) borrowed
/// from a buffer the calling thread keeps between calls. The buffer is allocated on
/// first use and whenever a larger one is needed; a nested call on the same thread
/// (while the buffer is lent out) gets a buffer of its own, and the larger of the two
/// is kept. [`release_reused`] frees it.
pub fn with_reused<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = REUSED.with(Cell::take);
    if buf.len() < len {
        buf = vec![0.0; len];
    }
    let out = f(&mut buf[..len]);
    REUSED.with(|c| {
        let other = c.take();
        c.set(if other.len() > buf.len() { other } else { buf });
    });
    out
}

/// [`with_reused`] for a fallible `f`, growing the kept buffer with a fallible
/// allocation: when `len` floats cannot be had the result is [`Error::OutOfMemory`]
/// (or [`Error::Overflow`] for a size beyond memory addressing) and `f` is not called.
/// What the allocating entry points whose sizes come from a caller's descriptor use.
pub fn try_with_reused<R>(len: usize, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    let mut buf = REUSED.with(Cell::take);
    if buf.len() < len {
        let mut bigger = Vec::new();
        if let Err(e) = crate::error::try_reserve_for(&mut bigger, "the workspace", len) {
            REUSED.with(|c| c.set(buf));
            return Err(e);
        }
        drop(buf);
        bigger.resize(len, 0.0);
        buf = bigger;
    }
    let out = f(&mut buf[..len]);
    REUSED.with(|c| {
        let other = c.take();
        c.set(if other.len() > buf.len() { other } else { buf });
    });
    out
}

/// The caller's buffer, handing out disjoint, 64-byte-aligned regions in the order of a
/// [`WorkspaceLayout`].
#[derive(Debug)]
pub struct Workspace<'a> {
    rest: &'a mut [f32],
    threads: usize,
}

impl<'a> Workspace<'a> {
    /// Checks `buf` against `layout` (at least [`WorkspaceLayout::len`] floats; larger
    /// is fine) and the calling pool against the layout's thread count (the pool
    /// [`rayon::current_num_threads`] reports must not have more threads).
    ///
    /// Errors: [`Error::BufferSize`] naming `"workspace"` if `buf` is short,
    /// [`Error::InvalidArgument`] if the pool has more threads than the layout was made
    /// for (only when the layout has per-worker regions, i.e. when it matters).
    pub fn new(buf: &'a mut [f32], layout: &WorkspaceLayout) -> Result<Workspace<'a>> {
        let need = layout.len();
        if buf.len() < need {
            return Err(Error::BufferSize {
                name: "workspace",
                expected: need,
                actual: buf.len(),
            });
        }
        let pool = rayon::current_num_threads();
        if pool > layout.threads && layout.workers {
            return Err(Error::InvalidArgument(format!(
                "the workspace was sized for {} threads but the call runs in a pool of {pool}; \
                 query the size with the pool's thread count",
                layout.threads
            )));
        }
        let skip = buf.as_ptr().align_offset(ALIGN_FLOATS * 4).min(buf.len());
        let skip = if skip >= ALIGN_FLOATS { 0 } else { skip };
        Ok(Workspace {
            rest: &mut buf[skip..],
            threads: layout.threads,
        })
    }

    /// The next per-call region of `floats` elements (contents unspecified), or an
    /// empty slice for `floats == 0`.
    ///
    /// Errors: [`Error::BufferSize`] if the workspace is exhausted, which means the
    /// kernel took more than its layout declared (a bug, reported rather than
    /// trusted).
    pub fn take(&mut self, floats: usize) -> Result<&'a mut [f32]> {
        let step = round_up(floats);
        let rest = std::mem::take(&mut self.rest);
        if rest.len() < floats {
            let actual = rest.len();
            self.rest = rest;
            return Err(Error::BufferSize {
                name: "workspace",
                expected: floats,
                actual,
            });
        }
        let (head, tail) = rest.split_at_mut(step.min(rest.len()));
        self.rest = tail;
        Ok(&mut head[..floats])
    }

    /// The next per-worker region: one slot of `floats` elements for each thread of the
    /// layout.
    pub fn per_worker(&mut self, floats: usize) -> Result<PerWorker<'a>> {
        let slot = round_up(floats);
        let all = self.take(slot.saturating_mul(self.threads))?;
        Ok(PerWorker {
            ptr: all.as_mut_ptr(),
            slot,
            floats,
            slots: self.threads,
            _buf: PhantomData,
        })
    }
}

/// Per-worker slots of a [`Workspace`]: the task running on worker `i` of the pool
/// gets slot `i` (see [`PerWorker::with`]).
#[derive(Debug)]
pub struct PerWorker<'a> {
    ptr: *mut f32,
    /// Stride between slots (floats, rounded up to the alignment).
    slot: usize,
    /// Usable floats per slot.
    floats: usize,
    slots: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `PerWorker` hands slot `i` only to code running on worker `i` of the pool
// (`with`), and a slot is used only for the duration of a closure that does not run
// other rayon work (its contract), so no two threads — and no two nested uses on one
// thread — touch the same slot at once. The memory is borrowed for `'a`.
unsafe impl Send for PerWorker<'_> {}
// SAFETY: as above.
unsafe impl Sync for PerWorker<'_> {}

impl PerWorker<'_> {
    /// Runs `f` with this worker's slot (`floats` elements, contents unspecified).
    ///
    /// `f` must not run rayon work (`join`, parallel iterators, `scope`): while it waits,
    /// the worker could start another task that takes the same slot. The kernels call
    /// it around serial inner loops only. Outside a pool (no worker index) or with an
    /// index past the slots (a pool larger than the layout, which
    /// [`Workspace::new`] rejects), `f` gets a freshly allocated buffer instead.
    pub fn with<R>(&self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        match rayon::current_thread_index().filter(|&i| i < self.slots) {
            // SAFETY: slot `i` lies inside the region taken for `slots` slots, belongs
            // to this worker only, and is not in use (see the `Send`/`Sync` note).
            Some(i) => f(unsafe {
                std::slice::from_raw_parts_mut(self.ptr.add(i * self.slot), self.floats)
            }),
            None => f(&mut vec![0.0; self.floats]),
        }
    }
}
