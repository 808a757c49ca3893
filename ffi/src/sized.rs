//! Structs that carry their own size (`struct_size`, the first field) for forward
//! compatibility.
//!
//! Reading (a descriptor passed in): `struct_size` smaller than this version's struct
//! is rejected, except for a struct that grew trailing fields, down to its first
//! version's size ([`SizedStruct::MIN_SIZE`]: programs built against the older header
//! keep working, the new fields read as zero); larger is accepted when every byte past
//! this version's struct is zero (a newer header's fields left at their defaults), so
//! programs built against a newer header run on an older library as long as they do
//! not use the new fields.
//!
//! Writing (a struct filled in by effnet): `struct_size` must be at least
//! [`SizedStruct::MIN_SIZE`]; the fields effnet knows are written as far as it reaches
//! and any bytes beyond them, up to `struct_size`, are zeroed.

use std::mem::{align_of, size_of};

use crate::status::{Failure, Outcome};

/// The largest `struct_size` effnet accepts: a bound against garbage sizes, far above
/// any struct this ABI will define.
pub const EFFNET_MAX_STRUCT_SIZE: usize = 4096;

/// A `#[repr(C)]` struct whose first field is `size_t struct_size`.
///
/// # Safety
/// Implementors are `#[repr(C)]`, start with a `usize` field, and are valid for any bit
/// pattern (plain integers only).
pub unsafe trait SizedStruct: Copy + 'static {
    /// The C type name, for messages.
    const C_NAME: &'static str;
    /// The size of the struct's first version (this one's, unless it grew trailing
    /// fields since): the smallest `struct_size` accepted.
    const MIN_SIZE: usize = size_of::<Self>();
}

fn check_pointer<T: SizedStruct>(ptr: *const T, what: &str) -> Outcome {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    if !(ptr as usize).is_multiple_of(align_of::<T>()) {
        return Err(Failure::invalid(format!(
            "{what} ({ptr:p}) is not aligned to {} bytes, as {} requires",
            align_of::<T>(),
            T::C_NAME
        )));
    }
    Ok(())
}

fn check_size<T: SizedStruct>(struct_size: usize, what: &str) -> Outcome {
    if struct_size < T::MIN_SIZE {
        return Err(Failure::invalid(format!(
            "{what}->struct_size is {struct_size}, smaller than sizeof({}) = {} in this \
             library; set it to sizeof({})",
            T::C_NAME,
            size_of::<T>(),
            T::C_NAME
        )));
    }
    if struct_size > EFFNET_MAX_STRUCT_SIZE {
        return Err(Failure::invalid(format!(
            "{what}->struct_size is {struct_size}, larger than any {} can be ({EFFNET_MAX_STRUCT_SIZE} \
             bytes); is it set?",
            T::C_NAME
        )));
    }
    Ok(())
}

/// Reads a sized struct passed in by the caller.
///
/// # Safety
/// If `ptr` is non-NULL and aligned, it points to `struct_size` readable bytes (the
/// caller's promise in the C contract).
pub unsafe fn read<T: SizedStruct>(ptr: *const T, what: &str) -> Outcome<T> {
    check_pointer(ptr, what)?;
    // SAFETY: `ptr` is non-NULL and aligned for `T`, whose first field is a `usize`; the
    // caller promises the struct is readable.
    let struct_size = unsafe { ptr.cast::<usize>().read() };
    check_size::<T>(struct_size, what)?;
    if struct_size < size_of::<T>() {
        // An older caller's struct: its fields, the newer ones zero.
        // SAFETY: all-zero bytes are a valid `T` (plain integers); the caller promises
        // `struct_size` readable bytes, fewer than `T` has.
        return Ok(unsafe {
            let mut v: T = std::mem::zeroed();
            std::ptr::copy_nonoverlapping(
                ptr.cast::<u8>(),
                (&mut v as *mut T).cast::<u8>(),
                struct_size,
            );
            v
        });
    }
    // SAFETY: the caller promises `struct_size` readable bytes, and `struct_size` is at
    // least `size_of::<T>()` (checked above) and at most EFFNET_MAX_STRUCT_SIZE.
    let tail = unsafe {
        std::slice::from_raw_parts(
            ptr.cast::<u8>().add(size_of::<T>()),
            struct_size - size_of::<T>(),
        )
    };
    if let Some(i) = tail.iter().position(|&b| b != 0) {
        return Err(Failure::invalid(format!(
            "{what}->struct_size is {struct_size} and byte {} (past the {} bytes this \
             library knows of {}) is not zero: the caller uses fields this library does \
             not have; upgrade libeffnet",
            size_of::<T>() + i,
            size_of::<T>(),
            T::C_NAME
        )));
    }
    // SAFETY: `size_of::<T>()` bytes are readable and aligned; any bit pattern is a
    // valid `T`.
    Ok(unsafe { ptr.read() })
}

/// Writes `value` to a sized struct provided by the caller, keeping the caller's
/// `struct_size` and zeroing the bytes beyond this version's fields.
///
/// # Safety
/// If `ptr` is non-NULL and aligned, it points to a writable struct whose first field
/// (`struct_size`) is initialized and gives its writable size.
pub unsafe fn write<T: SizedStruct>(ptr: *mut T, what: &str, value: T) -> Outcome {
    check_pointer(ptr, what)?;
    // SAFETY: as in `read`.
    let struct_size = unsafe { ptr.cast::<usize>().read() };
    check_size::<T>(struct_size, what)?;
    if struct_size < size_of::<T>() {
        // An older caller's struct: the fields it has.
        // SAFETY: the caller promises `struct_size` writable bytes (at least
        // `MIN_SIZE`, checked above, so `struct_size` itself is among them).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (&value as *const T).cast::<u8>(),
                ptr.cast::<u8>(),
                struct_size,
            );
            ptr.cast::<usize>().write(struct_size);
        }
        return Ok(());
    }
    // SAFETY: the caller promises `struct_size ≥ size_of::<T>()` writable, aligned
    // bytes (checked to be in range above).
    unsafe {
        ptr.write(value);
        ptr.cast::<usize>().write(struct_size);
        ptr.cast::<u8>()
            .add(size_of::<T>())
            .write_bytes(0, struct_size - size_of::<T>());
    }
    Ok(())
}

/// An integer field of a descriptor as a `usize`, at least `min`; the message names
/// `strct.name`.
pub fn int_field(strct: &str, name: &str, v: i64, min: i64) -> Outcome<usize> {
    if v < min {
        return Err(Failure::invalid(format!(
            "{strct}.{name} = {v} is less than {min}"
        )));
    }
    usize::try_from(v)
        .map_err(|_| Failure::invalid(format!("{strct}.{name} = {v} does not fit in size_t")))
}
