//! Status codes, the thread-local last-error message and the unwind guard every entry
//! point runs its body in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use effnet_core::Error;

/// The result of every effnet function. On anything but `EFFNET_OK`,
/// `effnet_last_error()` returns a message that says what went wrong; output buffers
/// and out-parameters are then unspecified (a failed check leaves them untouched; a
/// failure inside a kernel may have written part of them).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum effnet_status {
    /// Success.
    EFFNET_OK = 0,
    /// An argument was rejected before any work: a NULL, destroyed or wrong-type
    /// handle, a NULL or misaligned pointer, an element count that does not match the
    /// plan, overlapping output buffers, a descriptor with a bad `struct_size` or an
    /// inconsistent or overflowing shape.
    EFFNET_INVALID_ARGUMENT = 1,
    /// The request is well-formed but not implemented (yet), e.g. an `f16` descriptor
    /// or a kernel family that this build does not provide.
    EFFNET_UNSUPPORTED = 2,
    /// Memory or another system resource (threads) could not be obtained.
    EFFNET_OUT_OF_MEMORY = 3,
    /// A bug in effnet (an internal panic was caught at the boundary). The library
    /// stays usable; please report the message.
    EFFNET_INTERNAL = 4,
}

/// A failed call: the status to return and the message to leave in the thread-local
/// last error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The status the entry point returns.
    pub status: effnet_status,
    /// The explanation (without the function name, which [`guard`] prepends).
    pub message: String,
}

impl Failure {
    /// An `EFFNET_INVALID_ARGUMENT` failure.
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            status: effnet_status::EFFNET_INVALID_ARGUMENT,
            message: message.into(),
        }
    }

    /// An `EFFNET_OUT_OF_MEMORY` failure.
    pub fn out_of_memory(message: impl Into<String>) -> Failure {
        Failure {
            status: effnet_status::EFFNET_OUT_OF_MEMORY,
            message: message.into(),
        }
    }
}

/// The one mapping from the Rust crate's errors to C status codes.
pub fn status_of(e: &Error) -> effnet_status {
    match e {
        Error::InvalidDescriptor(_)
        | Error::BufferSize { .. }
        | Error::Overflow(_)
        | Error::InvalidArgument(_) => effnet_status::EFFNET_INVALID_ARGUMENT,
        Error::Unsupported(_) => effnet_status::EFFNET_UNSUPPORTED,
        // No entry point of the C ABI does file I/O yet; when the model layer adds
        // one, a failed read is reported here until a dedicated status exists.
        Error::Io(_) => effnet_status::EFFNET_INTERNAL,
        // `Error` is non-exhaustive: a variant added later is an internal error until
        // it is mapped above.
        _ => effnet_status::EFFNET_INTERNAL,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            status: status_of(&e),
            message: e.to_string(),
        }
    }
}

/// Shorthand for the bodies of entry points.
pub type Outcome<T = ()> = Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn clear_last_error() {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        if !e.as_bytes().is_empty() {
            *e = CString::default();
        }
    });
}

/// The message of the last failed effnet call on this thread, NUL-terminated UTF-8,
/// or an empty string (never NULL) if the last call succeeded or none was made.
/// Every other effnet function clears or replaces it, so the pointer is valid until
/// the next effnet call on the same thread. The library owns the string: do not free
/// it. Messages are for people (their wording may change); branch on the status code.
#[unsafe(no_mangle)]
pub extern "C" fn effnet_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Runs the body of the entry point `func`: clears the last error, catches any panic
/// (reported as `EFFNET_INTERNAL`), and turns a [`Failure`] into its status and the
/// thread's last-error message `"{func}: {message}"`.
pub fn guard(func: &str, body: impl FnOnce() -> Outcome) -> effnet_status {
    clear_last_error();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => effnet_status::EFFNET_OK,
        Ok(Err(f)) => {
            set_last_error(format!("{func}: {}", f.message));
            f.status
        }
        Err(payload) => {
            let message = panic_message(&*payload);
            // Dropping the payload runs foreign code that could panic again.
            if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
                std::mem::forget(again);
            }
            set_last_error(format!(
                "{func}: internal error (a panic was caught): {message}"
            ));
            effnet_status::EFFNET_INTERNAL
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: effnet_last_error always returns a valid NUL-terminated string.
        unsafe { CStr::from_ptr(effnet_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn panics_become_internal_errors_with_a_message() {
        let s = guard("effnet_test", || panic!("boom {}", 42));
        assert_eq!(s, effnet_status::EFFNET_INTERNAL);
        let m = last();
        assert!(m.starts_with("effnet_test: internal error"), "{m}");
        assert!(m.contains("boom 42"), "{m}");
        // A later successful call clears the message.
        assert_eq!(guard("effnet_test", || Ok(())), effnet_status::EFFNET_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn non_string_panic_payloads_are_caught() {
        let s = guard("effnet_test", || std::panic::panic_any(7u32));
        assert_eq!(s, effnet_status::EFFNET_INTERNAL);
        assert!(last().contains("non-string payload"));
    }

    #[test]
    fn errors_map_to_statuses() {
        use effnet_status::*;
        assert_eq!(
            status_of(&Error::InvalidDescriptor("x".into())),
            EFFNET_INVALID_ARGUMENT
        );
        assert_eq!(
            status_of(&Error::BufferSize {
                name: "x",
                expected: 1,
                actual: 2
            }),
            EFFNET_INVALID_ARGUMENT
        );
        assert_eq!(
            status_of(&Error::Overflow("x".into())),
            EFFNET_INVALID_ARGUMENT
        );
        assert_eq!(
            status_of(&Error::InvalidArgument("x".into())),
            EFFNET_INVALID_ARGUMENT
        );
        assert_eq!(
            status_of(&Error::Unsupported("x".into())),
            EFFNET_UNSUPPORTED
        );
        assert_eq!(status_of(&Error::Io("x".into())), EFFNET_INTERNAL);
        let s = guard("f", || Err(Error::Unsupported("f16".into()).into()));
        assert_eq!(s, EFFNET_UNSUPPORTED);
        assert_eq!(last(), "f: unsupported: f16");
    }

    #[test]
    fn messages_with_nul_bytes_are_kept() {
        let s = guard("f", || Err(Failure::invalid("a\0b")));
        assert_eq!(s, effnet_status::EFFNET_INVALID_ARGUMENT);
        assert_eq!(last(), "f: a\\0b");
    }
}
