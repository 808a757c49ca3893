//! Checking the `(pointer, element count)` pairs a call receives before any is touched.
//!
//! A call first describes all its buffers ([`In`], [`Out`], [`OptIn`], [`OptOut`]),
//! then [`check`] validates them together: NULL (where not optional), the element count
//! against what the plan needs, `f32` alignment, the address range not wrapping around,
//! and no output overlapping any other buffer (Rust forbids a `&mut` slice aliasing
//! anything). Only then are slices made.

use std::ffi::c_void;
use std::mem::size_of;

use crate::context::effnet_context;
use crate::status::{Failure, Outcome};

/// A buffer argument of one call, before checking.
#[derive(Copy, Clone, Debug)]
pub struct Buf {
    /// The C parameter name, for messages.
    pub name: &'static str,
    /// The pointer (may be NULL).
    pub ptr: *const f32,
    /// The element count the caller passed.
    pub len: usize,
    /// The element count the plan needs.
    pub expected: usize,
    /// NULL allowed (with count 0): an optional argument such as the bias.
    pub optional: bool,
    /// Written by the call.
    pub output: bool,
    /// Bytes per element, which is also the alignment required: 4 for `float`, 8 for
    /// the `int64_t` labels of the loss.
    pub elem_bytes: usize,
    /// For an argument the caller sizes in bytes (a workspace), the byte count as
    /// passed: messages then speak of bytes, and NULL with any non-zero size is
    /// rejected.
    pub bytes: Option<usize>,
}

impl Buf {
    /// A required input.
    pub fn input(name: &'static str, ptr: *const f32, len: usize, expected: usize) -> Buf {
        Buf {
            name,
            ptr,
            len,
            expected,
            optional: false,
            output: false,
            elem_bytes: size_of::<f32>(),
            bytes: None,
        }
    }
    /// A required `int64_t` input (read with [`input_i64`]).
    pub fn input_i64(name: &'static str, ptr: *const i64, len: usize, expected: usize) -> Buf {
        Buf {
            elem_bytes: size_of::<i64>(),
            ..Buf::input(name, ptr.cast(), len, expected)
        }
    }
    /// A required output.
    pub fn output(name: &'static str, ptr: *mut f32, len: usize, expected: usize) -> Buf {
        Buf {
            output: true,
            ..Buf::input(name, ptr, len, expected)
        }
    }
    /// A required `double` input (read with [`input_f64`]).
    pub fn input_f64(name: &'static str, ptr: *const f64, len: usize, expected: usize) -> Buf {
        Buf {
            elem_bytes: size_of::<f64>(),
            ..Buf::input(name, ptr.cast(), len, expected)
        }
    }
    /// A required `double` output (written with [`opt_output_f64`]).
    pub fn output_f64(name: &'static str, ptr: *mut f64, len: usize, expected: usize) -> Buf {
        Buf {
            output: true,
            elem_bytes: size_of::<f64>(),
            ..Buf::input(name, ptr.cast_const().cast(), len, expected)
        }
    }
    /// Marks the buffer optional (NULL with count 0 means "absent").
    pub fn optional(self) -> Buf {
        Buf {
            optional: true,
            ..self
        }
    }
    fn present(&self) -> bool {
        !self.ptr.is_null()
    }
    fn byte_range(&self) -> (usize, usize) {
        let start = self.ptr as usize;
        (start, start + self.len * self.elem_bytes)
    }
}

fn check_one(b: &Buf) -> Outcome {
    let name = b.name;
    if let (true, Some(bytes @ 1..)) = (b.ptr.is_null(), b.bytes) {
        return Err(Failure::invalid(format!(
            "`{name}` is NULL but `{name}_bytes` is {bytes}; pass a buffer of that many \
             bytes, or NULL with 0 bytes where the pass needs none"
        )));
    }
    if b.ptr.is_null() {
        if b.optional {
            if b.len != 0 {
                return Err(Failure::invalid(format!(
                    "`{name}` is NULL (absent) but its count is {}; pass 0",
                    b.len
                )));
            }
            return Ok(());
        }
        return Err(Failure::invalid(format!("`{name}` is NULL")));
    }
    if b.len != b.expected {
        return Err(Failure::invalid(format!(
            "`{name}` has {} elements, the call needs {}",
            b.len, b.expected
        )));
    }
    if !(b.ptr as usize).is_multiple_of(b.elem_bytes) {
        return Err(Failure::invalid(format!(
            "`{name}` ({:p}) is not aligned to {} bytes ({})",
            b.ptr,
            b.elem_bytes,
            if b.elem_bytes == size_of::<f32>() {
                "float"
            } else {
                "int64_t"
            }
        )));
    }
    let fits = b
        .len
        .checked_mul(b.elem_bytes)
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .and_then(|bytes| (b.ptr as usize).checked_add(bytes))
        .is_some();
    if !fits {
        return Err(Failure::invalid(match b.bytes {
            Some(bytes) => format!(
                "`{name}` ({:p}, {bytes} bytes) runs past the end of the address space",
                b.ptr
            ),
            None => format!(
                "`{name}` ({:p}, {} elements) runs past the end of the address space",
                b.ptr, b.len
            ),
        }));
    }
    Ok(())
}

/// Checks every buffer of a call, then that no output overlaps another buffer.
pub fn check(bufs: &[Buf]) -> Outcome {
    for b in bufs {
        check_one(b)?;
    }
    for (i, a) in bufs.iter().enumerate() {
        for b in &bufs[i + 1..] {
            if !(a.output || b.output) || !a.present() || !b.present() {
                continue;
            }
            let (a0, a1) = a.byte_range();
            let (b0, b1) = b.byte_range();
            if a0 < b1 && b0 < a1 {
                return Err(Failure::invalid(format!(
                    "`{}` and `{}` overlap in memory; an output must not share memory with \
                     any other buffer",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(())
}

/// The slice of a checked input.
///
/// # Safety
/// `b` passed [`check`], and (the caller's promise in the C contract) its memory is
/// readable for the whole call and not written by anyone else meanwhile.
pub unsafe fn input<'a>(b: &Buf) -> &'a [f32] {
    debug_assert!(b.present() && !b.output);
    // SAFETY: non-NULL, aligned, in range (checked); readable (caller's promise).
    unsafe { std::slice::from_raw_parts(b.ptr, b.len) }
}

/// The slice of a checked `int64_t` input ([`Buf::input_i64`]).
///
/// # Safety
/// As [`input`].
pub unsafe fn input_i64<'a>(b: &Buf) -> &'a [i64] {
    debug_assert!(b.present() && !b.output && b.elem_bytes == size_of::<i64>());
    // SAFETY: non-NULL, aligned to 8 bytes, in range (checked); readable (caller's
    // promise).
    unsafe { std::slice::from_raw_parts(b.ptr.cast::<i64>(), b.len) }
}

/// The slice of a checked `double` input ([`Buf::input_f64`]).
///
/// # Safety
/// As [`input`].
pub unsafe fn input_f64<'a>(b: &Buf) -> &'a [f64] {
    debug_assert!(b.present() && !b.output && b.elem_bytes == size_of::<f64>());
    // SAFETY: non-NULL, aligned to 8 bytes, in range (checked); readable (caller's
    // promise).
    unsafe { std::slice::from_raw_parts(b.ptr.cast::<f64>(), b.len) }
}

/// The slice of a checked optional input (`None` when NULL).
///
/// # Safety
/// As [`input`].
pub unsafe fn opt_input<'a>(b: &Buf) -> Option<&'a [f32]> {
    // SAFETY: forwarded.
    b.present().then(|| unsafe { input(b) })
}

/// The slice of a checked output.
///
/// # Safety
/// `b` passed [`check`] (so it overlaps no other buffer of the call), and (the
/// caller's promise) its memory is writable for the whole call and not accessed by
/// anyone else meanwhile.
pub unsafe fn output<'a>(b: &Buf) -> &'a mut [f32] {
    debug_assert!(b.present() && b.output);
    // SAFETY: non-NULL, aligned, in range, unaliased by the call's other buffers
    // (checked); writable and exclusive (caller's promise).
    unsafe { std::slice::from_raw_parts_mut(b.ptr.cast_mut(), b.len) }
}

/// The slice of a checked optional output (`None` when NULL).
///
/// # Safety
/// As [`output`].
pub unsafe fn opt_output<'a>(b: &Buf) -> Option<&'a mut [f32]> {
    // SAFETY: forwarded.
    b.present().then(|| unsafe { output(b) })
}

/// The slice of a checked optional `double` output ([`Buf::output_f64`]; `None` when
/// NULL).
///
/// # Safety
/// As [`output`].
pub unsafe fn opt_output_f64<'a>(b: &Buf) -> Option<&'a mut [f64]> {
    debug_assert!(b.output && b.elem_bytes == size_of::<f64>());
    // SAFETY: non-NULL, aligned to 8 bytes, in range, unaliased (checked); writable and
    // exclusive (caller's promise).
    b.present()
        .then(|| unsafe { std::slice::from_raw_parts_mut(b.ptr.cast::<f64>().cast_mut(), b.len) })
}

/// Stands for "no workspace argument" in a buffer check (NULL, optional, 0 elements):
/// what the allocating form of a pass passes in place of the `_ws` form's workspace.
pub const NO_WORKSPACE: Buf = Buf {
    name: "workspace",
    ptr: std::ptr::null(),
    len: 0,
    expected: 0,
    optional: true,
    output: true,
    elem_bytes: size_of::<f32>(),
    bytes: None,
};

/// The workspace argument of a `_ws` pass as a buffer to check with the others (NULL
/// with 0 bytes is "none"; it is an output: it must not overlap any other buffer).
pub fn workspace_buf(ptr: *mut c_void, bytes: usize) -> Buf {
    let floats = bytes / size_of::<f32>();
    Buf {
        bytes: Some(bytes),
        ..Buf::output("workspace", ptr.cast(), floats, floats).optional()
    }
}

/// The workspace arguments of a call (`None` for the allocating form), the checked
/// buffer, and its slice once checked: [`workspace_buf`] or [`NO_WORKSPACE`].
pub fn workspace_arg(ws: Option<(*mut c_void, usize)>) -> Buf {
    ws.map_or(NO_WORKSPACE, |(p, n)| workspace_buf(p, n))
}

/// Bytes of `floats` workspace floats.
pub fn workspace_bytes(floats: usize) -> Outcome<usize> {
    floats
        .checked_mul(size_of::<f32>())
        .ok_or_else(|| Failure::invalid("the workspace size overflows size_t"))
}

/// Writes the workspace size of `floats` floats, in bytes, to `*out_bytes` (checked:
/// non-NULL and aligned).
///
/// # Safety
/// `out_bytes` is NULL or points to a writable `size_t`.
pub unsafe fn write_workspace_size(out_bytes: *mut usize, floats: usize) -> Outcome {
    crate::handle::check_out_value(out_bytes, "`out_bytes`")?;
    let bytes = workspace_bytes(floats)?;
    // SAFETY: checked non-NULL and aligned; writable by the caller's contract.
    unsafe { out_bytes.write(bytes) };
    Ok(())
}

/// Runs one pass on `ctx`'s threads: on the caller's workspace when the `_ws` form
/// was called (`ws` is its `(pointer, bytes)`, `wsb` the checked slice, `None` for a
/// NULL workspace of 0 bytes), first checked to hold the `need()` bytes the pass
/// needs (`query` names the size query in the message); else allocating (`run` gets
/// `None`).
pub fn run_pass<'a, R: Send>(
    ctx: &effnet_context,
    need: impl FnOnce() -> Outcome<usize>,
    query: &str,
    wsb: Option<&'a mut [f32]>,
    ws: Option<(*mut c_void, usize)>,
    run: impl FnOnce(Option<&'a mut [f32]>) -> effnet_core::Result<R> + Send,
) -> Outcome<R> {
    let ws = match ws {
        Some((_, bytes)) => {
            let need = need()?;
            if bytes < need {
                return Err(Failure::invalid(format!(
                    "`workspace` has {bytes} bytes, the pass needs {need} on this context \
                     (see {query})"
                )));
            }
            Some(wsb.unwrap_or_default())
        }
        None => None,
    };
    Ok(ctx.install(|| run(ws))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::effnet_status::EFFNET_INVALID_ARGUMENT;

    fn msg(r: Outcome) -> String {
        let f = r.unwrap_err();
        assert_eq!(f.status, EFFNET_INVALID_ARGUMENT);
        f.message
    }

    #[test]
    fn rejects_each_kind_of_bad_buffer() {
        let mut x = vec![0f32; 8];
        let mut y = vec![0f32; 8];
        let xp = x.as_mut_ptr();
        let yp = y.as_mut_ptr();
        assert!(check(&[Buf::input("x", xp, 8, 8), Buf::output("y", yp, 8, 8)]).is_ok());
        assert!(msg(check(&[Buf::input("x", std::ptr::null(), 8, 8)])).contains("NULL"));
        assert!(msg(check(&[Buf::input("x", xp, 7, 8)])).contains("7 elements"));
        assert!(msg(check(&[Buf::input("x", xp, 0, 8)])).contains("0 elements"));
        let odd = (xp as usize + 1) as *const f32;
        assert!(msg(check(&[Buf::input("x", odd, 7, 7)])).contains("aligned"));
        let high = (usize::MAX - 15) as *const f32;
        assert!(msg(check(&[Buf::input("x", high, 8, 8)])).contains("address space"));
        let huge = usize::MAX / 2;
        assert!(msg(check(&[Buf::input("x", xp, huge, huge)])).contains("address space"));
        // Outputs must not overlap inputs or other outputs; inputs may overlap.
        assert!(check(&[Buf::input("x", xp, 8, 8), Buf::input("w", xp, 4, 4)]).is_ok());
        let tail = xp.wrapping_add(7);
        assert!(
            msg(check(&[
                Buf::input("x", xp, 8, 8),
                Buf::output("y", tail, 1, 1)
            ]))
            .contains("overlap")
        );
        assert!(
            check(&[
                Buf::input("x", xp, 7, 7),
                Buf::output("y", xp.wrapping_add(7), 1, 1)
            ])
            .is_ok()
        );
        // Optional buffers: NULL with count 0 is absent; NULL with a count is an error.
        let b = Buf::input("bias", std::ptr::null(), 0, 8).optional();
        assert!(check(&[b]).is_ok());
        let b = Buf::input("bias", std::ptr::null(), 8, 8).optional();
        assert!(msg(check(&[b])).contains("pass 0"));
        let b = Buf::input("bias", xp, 3, 8).optional();
        assert!(msg(check(&[b])).contains("3 elements"));
        // A workspace speaks of bytes: NULL with any size is an error naming the bytes.
        for bytes in [1, 3, 4, 4096] {
            let m = msg(check(&[workspace_buf(std::ptr::null_mut(), bytes)]));
            assert!(m.contains(&format!("`workspace_bytes` is {bytes}")), "{m}");
        }
        assert!(check(&[workspace_buf(std::ptr::null_mut(), 0)]).is_ok());
        let m = msg(check(&[workspace_buf(high.cast_mut().cast(), 64)]));
        assert!(m.contains("64 bytes") && m.contains("address space"), "{m}");
    }
}
