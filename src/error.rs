//! The crate's typed error.

use std::fmt;

/// Everything a public entry point of `effnet` can report instead of panicking.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A descriptor (convolution, normalization, …) is inconsistent or out of range;
    /// the message names the field and the rule it breaks.
    InvalidDescriptor(String),
    /// A buffer passed to an operation has the wrong number of elements.
    BufferSize {
        /// Which argument (`"x"`, `"weight"`, `"dy"`, …).
        name: &'static str,
        /// The number of elements the descriptor requires.
        expected: usize,
        /// The number of elements passed.
        actual: usize,
    },
    /// A size computation overflowed `usize` (or the platform's `isize::MAX` bytes).
    Overflow(String),
    /// The request is well-formed but not implemented (e.g. a storage type a kernel
    /// does not take yet).
    Unsupported(String),
    /// Some other argument is invalid (an unknown name, an out-of-range option, …).
    InvalidArgument(String),
    /// Reading or writing a file failed.
    Io(String),
    /// Memory for a size the caller asked for could not be obtained (the system
    /// refused the allocation); the message says what was being allocated and how
    /// large it was. Nothing was changed.
    OutOfMemory(String),
    /// An IPU-model graph does not fit one tile's memory budget.
    TileMemory {
        /// The tile over budget.
        tile: usize,
        /// Bytes live on the tile at its peak.
        bytes: usize,
        /// The tile's budget in bytes.
        budget: usize,
        /// The tensors live on the tile at that peak (name, bytes), largest first.
        tensors: Vec<(String, usize)>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidDescriptor(m) => write!(f, "invalid descriptor: {m}"),
            Error::BufferSize {
                name,
                expected,
                actual,
            } => write!(
                f,
                "buffer `{name}` has {actual} elements, the descriptor needs {expected}"
            ),
            Error::Overflow(m) => write!(f, "size overflow: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Io(m) => write!(f, "i/o error: {m}"),
            Error::OutOfMemory(m) => write!(f, "out of memory: {m}"),
            Error::TileMemory {
                tile,
                bytes,
                budget,
                tensors,
            } => {
                write!(
                    f,
                    "tile {tile} needs {bytes} bytes, {} over its budget of {budget}; tensors on it:",
                    bytes.saturating_sub(*budget)
                )?;
                for (name, b) in tensors.iter().take(12) {
                    write!(f, " {name} ({b} B)")?;
                }
                if tensors.len() > 12 {
                    write!(f, " … and {} more", tensors.len() - 12)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Checks that buffer `name` has exactly `expected` elements.
pub(crate) fn check_len(name: &'static str, actual: usize, expected: usize) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::BufferSize {
            name,
            expected,
            actual,
        })
    }
}

/// [`check_len`] for several buffers that must all hold `expected` elements, in
/// order (the first mismatch is the error).
pub(crate) fn check_lens(expected: usize, buffers: &[(&'static str, usize)]) -> Result<()> {
    buffers
        .iter()
        .try_for_each(|&(name, actual)| check_len(name, actual, expected))
}

/// The product of `dims`, or an [`Error::Overflow`] naming `what` if it does not fit
/// (the limit is `isize::MAX / 4` elements, so that the `f32` buffer fits in memory
/// addressing).
pub fn checked_product(what: &str, dims: &[usize]) -> Result<usize> {
    let limit = isize::MAX as usize / std::mem::size_of::<f32>();
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= limit)
        .ok_or_else(|| Error::Overflow(format!("{what} {dims:?} has too many elements")))
}

/// A vector of `len` copies of `value`, allocated fallibly: the size of `what` (for
/// messages) is checked to fit in memory addressing ([`Error::Overflow`]) and a refused
/// allocation is [`Error::OutOfMemory`] instead of aborting the process. Use it for
/// every allocation whose size comes from a caller's descriptor or argument.
pub fn try_filled<T: Clone>(what: &str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = try_with_capacity(what, len)?;
    v.resize(len, value);
    Ok(v)
}

/// An empty vector with room for exactly `len` elements, allocated fallibly (see
/// [`try_filled`]).
pub fn try_with_capacity<T>(what: &str, len: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    try_reserve_for(&mut v, what, len)?;
    Ok(v)
}

/// Makes room for `additional` more elements in `v`, fallibly (see [`try_filled`]).
pub fn try_reserve_for<T>(v: &mut Vec<T>, what: &str, additional: usize) -> Result<()> {
    let elem = std::mem::size_of::<T>().max(1);
    let fits = v
        .len()
        .checked_add(additional)
        .and_then(|n| n.checked_mul(elem))
        .is_some_and(|bytes| bytes <= isize::MAX as usize);
    if !fits {
        return Err(Error::Overflow(format!(
            "{what}: {additional} elements of {elem} bytes do not fit in memory addressing"
        )));
    }
    v.try_reserve_exact(additional).map_err(|_| {
        Error::OutOfMemory(format!(
            "{what}: could not allocate {} bytes ({additional} elements)",
            additional.saturating_mul(elem)
        ))
    })
}
