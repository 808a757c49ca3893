//! Opaque handles: Rust objects handed to C as tokens that are never reused.
//!
//! A handle is not the address of its object. Every create call boxes the object,
//! records its address in a process-wide registry under a fresh **token**, and gives
//! the token to C as the `effnet_…*` pointer value. The token packs a sequence number
//! (one per handle ever made in the process, never reused: the generation) and the
//! handle's type. An entry point looks the token up in the registry and dereferences
//! the recorded address only when the token is live and of the right type; a token
//! that is not live is decoded to say what it was. So a destroyed handle is reported
//! as destroyed even after its object's memory has been reused by a new handle (whose
//! token differs), a handle of another type is named, and any other value, garbage
//! included, is rejected without being dereferenced. C never dereferences a handle
//! (the types are opaque), so the token needs no memory behind it.
//!
//! Each object also starts with a magic number naming its type, checked after the
//! lookup as a second line of defence and cleared on destroy.
//!
//! What stays undefined behaviour: destroying a handle while another thread is using
//! it (the registry cannot make a borrowed object outlive its destroy call).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::context::effnet_context;
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
    const ALL: [Kind; 5] = [
        Kind::Context,
        Kind::ConvPlan,
        Kind::NormPlan,
        Kind::ProxyNormPlan,
        Kind::Model,
    ];

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

    /// The type's code in a token (1 to 5; 0 is no type).
    const fn code(self) -> usize {
        match self {
            Kind::Context => 1,
            Kind::ConvPlan => 2,
            Kind::NormPlan => 3,
            Kind::ProxyNormPlan => 4,
            Kind::Model => 5,
        }
    }

    fn of_code(code: usize) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.code() == code)
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

/// Bits of a token below the sequence number: the type code in bits 4..8, bits 0..4
/// zero (so a token looks like a 16-byte-aligned pointer).
const SEQ_SHIFT: u32 = 8;
const CODE_SHIFT: u32 = 4;

/// The largest sequence number a token can carry on this target. Past it, creating a
/// handle fails (`EFFNET_OUT_OF_MEMORY`) rather than reuse a token: 2^56 handles on
/// 64-bit targets, 2^24 on 32-bit ones.
const MAX_SEQ: usize = usize::MAX >> SEQ_SHIFT;

fn token_of(seq: usize, kind: Kind) -> usize {
    (seq << SEQ_SHIFT) | (kind.code() << CODE_SHIFT)
}

/// What a token that is not live once was: its sequence number and type, if it is
/// well-formed and was handed out.
fn decode(token: usize, next_seq: usize) -> Option<(usize, Kind)> {
    if token & ((1 << CODE_SHIFT) - 1) != 0 {
        return None;
    }
    let seq = token >> SEQ_SHIFT;
    let kind = Kind::of_code((token >> CODE_SHIFT) & ((1 << (SEQ_SHIFT - CODE_SHIFT)) - 1))?;
    (seq >= 1 && seq < next_seq).then_some((seq, kind))
}

/// The address of a live object, as `Box::into_raw` returned it.
struct Object {
    kind: Kind,
    ptr: *mut (),
}

// SAFETY: the registry only stores the pointer; the objects behind it are `Send + Sync`
// (`Handle` requires it) and are dereferenced by the entry points under the contract
// of their handles, never through the registry's lock.
unsafe impl Send for Object {}

/// Live handles by token, and the next sequence number. (A B-tree rather than a hash
/// map: its nodes are pointed to from their start, so leak checkers see the
/// process-lifetime map as reachable.)
struct Registry {
    live: BTreeMap<usize, Object>,
    next_seq: usize,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    live: BTreeMap::new(),
    next_seq: 1,
});

fn registry() -> MutexGuard<'static, Registry> {
    // The registry is consistent after every operation, so a poisoned lock is still
    // usable.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
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
pub unsafe fn publish<T: Handle>(out: *mut *mut T, object: T) -> Outcome {
    let handle = register(object)?;
    // SAFETY: non-NULL and aligned (checked); writable (caller's promise).
    unsafe { out.write(handle) };
    Ok(())
}

/// Boxes `object`, registers it under a fresh token and returns the token as the
/// handle. Fails only when this process has made more handles than a token can count
/// (see [`MAX_SEQ`]).
pub fn register<T: Handle>(object: T) -> Outcome<*mut T> {
    let mut reg = registry();
    let seq = reg.next_seq;
    if seq > MAX_SEQ {
        return Err(Failure::out_of_memory(format!(
            "this process has made {MAX_SEQ} handles, all a handle can count; handles are \
             never reused, so no new {} can be made",
            T::KIND.c_name()
        )));
    }
    reg.next_seq = seq + 1;
    let token = token_of(seq, T::KIND);
    let ptr = Box::into_raw(Box::new(object)).cast::<()>();
    reg.live.insert(token, Object { kind: T::KIND, ptr });
    Ok(std::ptr::without_provenance_mut(token))
}

/// The object behind `handle` if it is a live `T`; otherwise the message that says
/// what the handle is.
fn lookup<T: Handle>(reg: &Registry, handle: *const T, what: &str) -> Outcome<*mut T> {
    if handle.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    let token = handle.addr();
    let want = T::KIND.c_name();
    match reg.live.get(&token) {
        Some(o) if o.kind == T::KIND => Ok(o.ptr.cast::<T>()),
        Some(o) => Err(Failure::invalid(format!(
            "{what} ({handle:p}) is an {}, not an {want}",
            o.kind.c_name()
        ))),
        None => Err(Failure::invalid(match decode(token, reg.next_seq) {
            Some((_, kind)) if kind == T::KIND => format!(
                "{what} ({handle:p}) is not a live {want}: it was destroyed (handles are \
                 never reused, so a destroyed one stays invalid)"
            ),
            Some((_, kind)) => format!(
                "{what} ({handle:p}) is not a live {want}: it is a destroyed {}",
                kind.c_name()
            ),
            None => format!(
                "{what} ({handle:p}) is not a live {want}: it is not a handle made by \
                 effnet (garbage or uninitialized?)"
            ),
        })),
    }
}

/// Borrows the object behind a live handle of type `T`.
///
/// # Safety
/// If `handle` is a live `T`, no other thread may destroy it while the returned
/// reference is in use (the documented contract of every handle).
pub unsafe fn get<'a, T: Handle>(handle: *const T, what: &str) -> Outcome<&'a T> {
    let ptr = lookup(&registry(), handle, what)?;
    // SAFETY: `ptr` came from `Box::into_raw` in `register::<T>` (the registry holds it
    // under a live token of kind T) and has not been destroyed since (destroy removes
    // the token first); the caller guarantees no concurrent destroy.
    let object = unsafe { &*ptr };
    if object.magic() != T::KIND.magic() {
        return Err(Failure::invalid(format!(
            "{what} ({handle:p}) has a corrupt magic number: not a live {}",
            T::KIND.c_name()
        )));
    }
    Ok(object)
}

/// Unregisters and frees the object behind a handle. NULL is a no-op.
///
/// # Safety
/// No other thread may use the handle during or after this call.
pub unsafe fn destroy<T: Handle>(handle: *mut T, what: &str) -> Outcome {
    if handle.is_null() {
        return Ok(());
    }
    let ptr = {
        // Check and remove under one lock: of two racing destroys, one wins.
        let mut reg = registry();
        let ptr = lookup(&reg, handle, what)?;
        reg.live.remove(&handle.addr());
        ptr
    };
    // SAFETY: `ptr` was a live registered `T`, made by `Box::into_raw` in `register`,
    // and is no longer in the registry, so this is its only owner.
    let mut object = unsafe { Box::from_raw(ptr) };
    object.clear_magic();
    drop(object);
    Ok(())
}

/// The context and another handle of a call (a plan or a model), checked; `what`
/// names the second argument in messages.
///
/// # Safety
/// As the entry points' contracts (see [`get`]).
pub unsafe fn ctx_and<'a, T: Handle>(
    ctx: *const effnet_context,
    other: *const T,
    what: &str,
) -> Outcome<(&'a effnet_context, &'a T)> {
    // SAFETY: forwarded; handles are checked before use.
    let ctx = unsafe { get(ctx, "`ctx`") }?;
    // SAFETY: as above.
    let other = unsafe { get(other, what) }?;
    Ok((ctx, other))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::effnet_status::EFFNET_INVALID_ARGUMENT;

    struct Thing {
        magic: u64,
        value: u32,
    }
    impl_handle!(Thing, Kind::NormPlan);

    struct Other {
        magic: u64,
    }
    impl_handle!(Other, Kind::ConvPlan);

    fn thing(value: u32) -> Thing {
        Thing {
            magic: Kind::NormPlan.magic(),
            value,
        }
    }

    /// The address of the object behind a live handle.
    fn address<T: Handle>(h: *const T) -> usize {
        lookup(&registry(), h, "h").unwrap().addr()
    }

    fn err<T>(r: Outcome<T>) -> String {
        let f = r.err().expect("an error");
        assert_eq!(f.status, EFFNET_INVALID_ARGUMENT);
        f.message
    }

    #[test]
    fn a_stale_handle_stays_destroyed_after_its_address_is_reused() {
        // Destroy a handle, then make new ones until the allocator hands out the
        // freed object's address again (it does at once with the usual allocators).
        let old = register(thing(1)).unwrap();
        let old_addr = address(old);
        // SAFETY: `old` is live and used by this thread only.
        unsafe { destroy(old, "h") }.unwrap();
        let mut keep = Vec::new();
        let reused = loop {
            let h = register(thing(2)).unwrap();
            if address(h) == old_addr {
                break h;
            }
            keep.push(h);
            assert!(keep.len() < 1000, "the allocator never reused the address");
        };
        assert_ne!(reused, old, "a new handle got the old token");
        // SAFETY: the registry rejects `old` before any dereference.
        let m = err(unsafe { get(old.cast_const(), "`plan`") });
        assert!(m.contains("not a live effnet_norm_plan"), "{m}");
        assert!(m.contains("destroyed"), "{m}");
        // SAFETY: as above; a second destroy of the stale handle is reported too.
        let m = err(unsafe { destroy(old, "`plan`") });
        assert!(m.contains("destroyed"), "{m}");
        // The new handle is untouched and still works.
        // SAFETY: `reused` is live.
        assert_eq!(unsafe { get(reused.cast_const(), "h") }.unwrap().value, 2);
        for h in keep.into_iter().chain([reused]) {
            // SAFETY: live, unused elsewhere.
            unsafe { destroy(h, "h") }.unwrap();
        }
    }

    #[test]
    fn wrong_types_and_garbage_are_named() {
        let t = register(thing(3)).unwrap();
        let o = register(Other {
            magic: Kind::ConvPlan.magic(),
        })
        .unwrap();
        // SAFETY: looked up in the registry before any dereference.
        let m = err(unsafe { get(o.cast::<Thing>().cast_const(), "`plan`") });
        assert!(
            m.contains("is an effnet_conv_plan, not an effnet_norm_plan"),
            "{m}"
        );
        // SAFETY: as above.
        unsafe { destroy(o, "o") }.unwrap();
        // SAFETY: as above.
        let m = err(unsafe { get(o.cast::<Thing>().cast_const(), "`plan`") });
        assert!(m.contains("it is a destroyed effnet_conv_plan"), "{m}");
        for garbage in [
            1usize,
            0x1000,
            usize::MAX,
            t.addr() + 1,
            t.addr() + (1 << 40),
        ] {
            let p = std::ptr::without_provenance::<Thing>(garbage);
            // SAFETY: as above.
            let m = err(unsafe { get(p, "`plan`") });
            assert!(
                m.contains("not a handle made by effnet"),
                "{garbage:#x}: {m}"
            );
        }
        // SAFETY: NULL is reported; destroying NULL is a no-op.
        assert!(err(unsafe { get(std::ptr::null::<Thing>(), "`plan`") }).contains("NULL"));
        // SAFETY: as above.
        assert!(unsafe { destroy(std::ptr::null_mut::<Thing>(), "p") }.is_ok());
        // SAFETY: live, unused elsewhere.
        unsafe { destroy(t, "t") }.unwrap();
    }
}
