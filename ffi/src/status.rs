//! Status codes, the thread-local last-error message and the unwind guard every entry
//! point runs its body in.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

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
    /// Memory or another system resource (threads) could not be obtained: a size
    /// that passed every check but that the system refused to allocate (the message
    /// says what and how much). Nothing was created or changed; the library stays
    /// usable.
    EFFNET_OUT_OF_MEMORY = 3,
    /// A bug in effnet (an internal panic was caught at the boundary). The library
    /// stays usable; please report the message.
    EFFNET_INTERNAL = 4,
    /// A file could not be read (`effnet_model_load_weights`): missing, unreadable.
    EFFNET_IO_ERROR = 5,
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
        Error::Io(_) => effnet_status::EFFNET_IO_ERROR,
        Error::OutOfMemory(_) => effnet_status::EFFNET_OUT_OF_MEMORY,
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

/// Clears this thread's last-error message (every entry point does, first).
pub(crate) fn clear_last_error() {
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

thread_local! {
    /// Non-zero while this thread runs an entry point's body (nested calls count), or
    /// forever on a context's worker threads: the panic hook stays silent then.
    static QUIET: Cell<u32> = const { Cell::new(0) };
    /// Where the last silenced panic on this thread happened, for the message.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once per process) a panic hook that prints nothing for panics inside
/// effnet calls and on effnet's worker threads (the caller gets the status and the
/// message instead), and defers to the hook it replaced for every other panic of the
/// host process. A host that installs its own hook afterwards replaces this one.
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) > 0 {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                previous(info);
            }
        }));
    });
}

/// Marks the calling thread as one of effnet's workers for good: a panic on it is
/// never printed (it is re-raised on the calling thread of the effnet call, which
/// reports it). Called by the context's worker threads when they start.
pub(crate) fn quiet_worker_thread() {
    install_quiet_hook();
    QUIET.with(|q| q.set(q.get() + 1));
}

/// Decrements [`QUIET`] when an entry point's body ends, unwinding or not.
struct Quiet;

impl Quiet {
    fn enter() -> Quiet {
        install_quiet_hook();
        QUIET.with(|q| q.set(q.get() + 1));
        Quiet
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        QUIET.with(|q| q.set(q.get().saturating_sub(1)));
    }
}

/// Runs the body of the entry point `func`: clears the last error, catches any panic
/// (reported as `EFFNET_INTERNAL`, with nothing printed to stderr), and turns a
/// [`Failure`] into its status and the thread's last-error message
/// `"{func}: {message}"`.
pub fn guard(func: &str, body: impl FnOnce() -> Outcome) -> effnet_status {
    clear_last_error();
    let quiet = Quiet::enter();
    let result = catch_unwind(AssertUnwindSafe(body));
    drop(quiet);
    match result {
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
            let at = PANIC_AT
                .with(|p| p.borrow_mut().take())
                .map(|at| format!(" at {at}"))
                .unwrap_or_default();
            set_last_error(format!(
                "{func}: internal error (a panic was caught{at}): {message}"
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

    /// The child half of [`caught_panics_print_nothing`]: panics inside `guard`, on
    /// this thread and on a context's worker thread, then panics outside (which the
    /// default hook must still print).
    #[test]
    fn quiet_panic_child() {
        if std::env::var_os("EFFNET_QUIET_PANIC_CHILD").is_none() {
            return;
        }
        let s = guard("effnet_test", || panic!("loud-inside-{}", 1));
        assert_eq!(s, effnet_status::EFFNET_INTERNAL);
        assert!(last().contains("loud-inside-1"), "{}", last());
        assert!(last().contains("status.rs:"), "no location: {}", last());
        let mut ctx = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        assert_eq!(
            unsafe { crate::effnet_context_create(2, &mut ctx) },
            effnet_status::EFFNET_OK
        );
        let s = guard("effnet_test", || {
            // SAFETY: ctx is live and used by this thread only.
            let c = unsafe { crate::handle::get(ctx.cast_const(), "ctx") }?;
            c.install(|| rayon::join(|| (), || panic!("loud-in-worker")));
            Ok(())
        });
        assert_eq!(s, effnet_status::EFFNET_INTERNAL);
        assert!(last().contains("loud-in-worker"), "{}", last());
        // SAFETY: live, unused.
        unsafe { crate::effnet_context_destroy(ctx) };
        // Outside an effnet call the host's hook (the default one) still speaks.
        let r = std::panic::catch_unwind(|| panic!("outside-call"));
        assert!(r.is_err());
    }

    /// No panic message of an effnet call reaches stderr (the status and the last
    /// error carry it), while the host's other panics still print: runs
    /// [`quiet_panic_child`] in a child process and reads its stderr.
    #[test]
    fn caught_panics_print_nothing() {
        let exe = std::env::current_exe().expect("current_exe");
        let out = std::process::Command::new(exe)
            .args(["--exact", "status::tests::quiet_panic_child", "--nocapture"])
            .args(["--test-threads", "1"])
            .env("EFFNET_QUIET_PANIC_CHILD", "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("1 passed"),
            "the child did not run:\n{stdout}"
        );
        assert!(
            !stderr.contains("loud-"),
            "a caught panic was printed:\n{stderr}"
        );
        assert!(
            stderr.contains("outside-call"),
            "the host's hook was lost:\n{stderr}"
        );
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
        assert_eq!(status_of(&Error::Io("x".into())), EFFNET_IO_ERROR);
        assert_eq!(
            status_of(&Error::OutOfMemory("x".into())),
            EFFNET_OUT_OF_MEMORY
        );
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
