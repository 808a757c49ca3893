//! Opaque handles: boxed Rust objects handed to C as pointers.
//!
//! Each object starts with a magic number naming its type (zeroed on destroy), and the
//! address of every live handle is kept in a process-wide registry. An entry point
//! first looks the pointer up in the registry, and dereferences it only when it is
//! live and of the right type; then it checks the magic number as a second line of
//! defence. A destroyed handle is thus reported (`EFFNET_INVALID_ARGUMENT`) without
//! reading freed memory, unless its address has since been reused by a new handle of
//! the same type, which is why using a destroyed handle stays undefined behaviour in
//! the documented contract.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::status::{Failure, Outcome};

/// The types of handle, each with its magic number.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `effnet_context`.
    Context,
    /// `effnet_conv_plan`.
    ConvPlan,
    /// `effnet_norm_plan`.
    NormPlan,
    /// `effnet_proxy_norm_plan`.
    ProxyNormPlan,
    /// `effnet_model`.
    Model,
}

impl Kind {
    /// The magic number stored at the start of a live object of this kind.
    pub const fn magic(self) -> u64 {
        match self {
            Kind::Context => u64::from_le_bytes(*b"EFNT-CTX"),
            Kind::ConvPlan => u64::from_le_bytes(*b"EFNT-CNV"),
            Kind::NormPlan => u64::from_le_bytes(*b"EFNT-NRM"),
            Kind::ProxyNormPlan => u64::from_le_bytes(*b"EFNT-PXN"),
            Kind::Model => u64::from_le_bytes(*b"EFNT-MDL"),
        }
    }

    /// The C type name, for messages.
    pub const fn c_name(self) -> &'static str {
        match self {
            Kind::Context => "effnet_context",
            Kind::ConvPlan => "effnet_conv_plan",
            Kind::NormPlan => "effnet_norm_plan",
            Kind::ProxyNormPlan => "effnet_proxy_norm_plan",
            Kind::Model => "effnet_model",
        }
    }
}

/// Implemented by the objects behind handles.
pub trait Handle: Send + Sync + 'static {
    /// Which kind of handle this is.
    const KIND: Kind;
    /// The object's magic field (must be `KIND.magic()` while it is live).
    fn magic(&self) -> u64;
    /// Clears the magic field (on destroy).
    fn clear_magic(&mut self);
}

/// Live handles by address. (A B-tree rather than a hash map: its nodes are pointed to
/// from their start, so leak checkers see the process-lifetime map as reachable.)
static LIVE: Mutex<BTreeMap<usize, Kind>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<usize, Kind>> {
    // The map is consistent after every operation, so a poisoned lock is still usable.
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Checks an out-parameter for a new handle (`T **out`): non-NULL and aligned.
pub fn check_out<T>(out: *mut *mut T, what: &str) -> Outcome {
    check_out_value(out, what)
}

/// Checks an out-parameter of any type (`size_t*`, …): not NULL, aligned for `P`.
pub fn check_out_value<P>(out: *mut P, what: &str) -> Outcome {
    if out.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    if !(out as usize).is_multiple_of(align_of::<P>()) {
        return Err(Failure::invalid(format!(
            "{what} is not aligned to {} bytes",
            align_of::<P>()
        )));
    }
    Ok(())
}

/// Registers `object` and stores its handle in `*out` (checked by [`check_out`]).
///
/// # Safety
/// `out` passed [`check_out`] and points to writable storage for a pointer.
pub unsafe fn publish<T: Handle>(out: *mut *mut T, object: T) {
    let ptr = register(object);
    // SAFETY: non-NULL and aligned (checked); writable (caller's promise).
    unsafe { out.write(ptr) };
}

/// Boxes `object`, registers it and returns the raw handle.
pub fn register<T: Handle>(object: T) -> *mut T {
    let ptr = Box::into_raw(Box::new(object));
    live().insert(ptr as usize, T::KIND);
    ptr
}

fn check_registered<T: Handle>(map: &BTreeMap<usize, Kind>, ptr: *const T, what: &str) -> Outcome {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    match map.get(&(ptr as usize)).copied() {
        Some(kind) if kind == T::KIND => Ok(()),
        Some(other) => Err(Failure::invalid(format!(
            "{what} ({ptr:p}) is an {}, not an {}",
            other.c_name(),
            T::KIND.c_name()
        ))),
        None => Err(Failure::invalid(format!(
            "{what} ({ptr:p}) is not a live {} (destroyed, or never created by effnet)",
            T::KIND.c_name()
        ))),
    }
}

/// Borrows the object behind a live handle of type `T`.
///
/// # Safety
/// If `ptr` is registered as a live `T`, no other thread may destroy it while the
/// returned reference is in use (the documented contract of every handle).
pub unsafe fn get<'a, T: Handle>(ptr: *const T, what: &str) -> Outcome<&'a T> {
    check_registered(&live(), ptr, what)?;
    // SAFETY: `ptr` came from `register::<T>` (it is in the registry with kind T) and
    // has not been destroyed since (destroy removes it first); the caller guarantees
    // no concurrent destroy.
    let object = unsafe { &*ptr };
    if object.magic() != T::KIND.magic() {
        return Err(Failure::invalid(format!(
            "{what} ({ptr:p}) has a corrupt magic number: not a live {}",
            T::KIND.c_name()
        )));
    }
    Ok(object)
}

/// Unregisters and frees the object behind a handle. NULL is a no-op.
///
/// # Safety
/// No other thread may use the handle during or after this call.
pub unsafe fn destroy<T: Handle>(ptr: *mut T, what: &str) -> Outcome {
    if ptr.is_null() {
        return Ok(());
    }
    {
        // Check and remove under one lock: of two racing destroys, one wins.
        let mut map = live();
        check_registered(&map, ptr, what)?;
        map.remove(&(ptr as usize));
    }
    // SAFETY: `ptr` was a live registered `T`, made by `Box::into_raw` in `register`,
    // and is no longer in the registry, so this is the only owner.
    let mut object = unsafe { Box::from_raw(ptr) };
    object.clear_magic();
    drop(object);
    Ok(())
}

/// Implements [`Handle`] for a struct with a `magic: u64` field.
macro_rules! impl_handle {
    ($t:ty, $kind:expr) => {
        impl $crate::handle::Handle for $t {
            const KIND: $crate::handle::Kind = $kind;
            fn magic(&self) -> u64 {
                self.magic
            }
            fn clear_magic(&mut self) {
                self.magic = 0;
            }
        }
    };
}
pub(crate) use impl_handle;
