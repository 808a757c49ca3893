//! The context: a rayon thread pool that every call runs in.

use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::handle::{self, Kind};
use crate::status::{Failure, Outcome, effnet_status, guard};

/// The most threads a context may have: a bound against garbage thread counts.
pub const EFFNET_MAX_THREADS: u32 = 1024;

/// An execution context: owns a pool of worker threads that every effnet call made
/// with it runs on (never the host's other pools or rayon's global pool). Create one
/// with `effnet_context_create`, destroy it with `effnet_context_destroy`.
///
/// Thread safety: a context may be used by several threads at once (the calls share
/// its workers); it must not be destroyed while any call that uses it is running.
pub struct effnet_context {
    magic: u64,
    pool: Option<rayon::ThreadPool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

handle::impl_handle!(effnet_context, Kind::Context);

impl effnet_context {
    /// Runs `f` on this context's pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => unreachable!("a live context always has its pool"),
        }
    }

    fn new(threads: u32) -> Outcome<effnet_context> {
        if let Some(e) = effnet_core::simd::env_error() {
            return Err(Failure::invalid(format!(
                "{e}; unset it or fix it (no context is made while it is wrong, so that \
                 no kernel runs at a level the caller did not ask for)"
            )));
        }
        if threads > EFFNET_MAX_THREADS {
            return Err(Failure::invalid(format!(
                "threads = {threads} is more than EFFNET_MAX_THREADS = {EFFNET_MAX_THREADS}"
            )));
        }
        let mut workers = Vec::new();
        // Spawn the workers ourselves to keep their join handles: destroying the
        // context then waits until every worker thread has exited, so none outlives it.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads as usize)
            .thread_name(|i| format!("effnet-{i}"))
            .spawn_handler(|thread| {
                let mut b = std::thread::Builder::new();
                if let Some(name) = thread.name() {
                    b = b.name(name.to_owned());
                }
                if let Some(size) = thread.stack_size() {
                    b = b.stack_size(size);
                }
                workers.push(b.spawn(|| {
                    // A panic in a kernel task is re-raised on the calling thread, whose
                    // entry point reports it: print nothing here.
                    crate::status::quiet_worker_thread();
                    thread.run()
                })?);
                Ok(())
            })
            .build();
        match pool {
            Ok(pool) => Ok(effnet_context {
                magic: Kind::Context.magic(),
                pool: Some(pool),
                workers: Mutex::new(workers),
            }),
            Err(e) => {
                // The pool terminated the workers it had started; wait for them.
                for w in workers {
                    let _ = w.join();
                }
                Err(Failure::out_of_memory(format!(
                    "could not start {threads} worker threads: {e}"
                )))
            }
        }
    }
}

impl Drop for effnet_context {
    fn drop(&mut self) {
        // Dropping the pool asks its workers to exit once idle; then wait for them.
        drop(self.pool.take());
        let workers = std::mem::take(
            self.workers
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for w in workers {
            let _ = w.join();
        }
    }
}

/// Creates a context with `threads` worker threads (0 = the default: the
/// `RAYON_NUM_THREADS` environment variable if set, else one per logical CPU) and
/// stores its handle in `*out_ctx`.
///
/// Results do not depend on the number of threads: every kernel splits work into
/// fixed chunks and reduces partial sums in a fixed order, bitwise.
///
/// Ownership: the caller owns the new context and must release it with
/// `effnet_context_destroy`. `*out_ctx` is written only on success.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` if `out_ctx` is NULL, `threads` exceeds
/// `EFFNET_MAX_THREADS`, or the environment variable `EFFNET_SIMD` is set to something
/// other than `avx512`, `avx2`, `portable` or `scalar` (the message names the value:
/// effnet rejects it here, at the first call of a program, rather than ignore it);
/// `EFFNET_OUT_OF_MEMORY` if the threads cannot be started.
///
/// # Safety
/// `out_ctx` is NULL or points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_context_create(
    threads: u32,
    out_ctx: *mut *mut effnet_context,
) -> effnet_status {
    guard("effnet_context_create", || {
        handle::check_out(out_ctx, "`out_ctx`")?;
        let ctx = effnet_context::new(threads)?;
        // SAFETY: checked; writable (caller's promise).
        unsafe { handle::publish(out_ctx, ctx) }?;
        Ok(())
    })
}

/// Destroys a context: waits until its worker threads have exited, then frees it.
/// NULL is a no-op (returns `EFFNET_OK`).
///
/// Plans are not tied to a context: they stay valid and can be used with another one.
///
/// Errors: `EFFNET_INVALID_ARGUMENT` if `ctx` is not a live context (already
/// destroyed, or not made by `effnet_context_create`).
///
/// # Safety
/// `ctx` is NULL or a handle from `effnet_context_create`; no call may be using it
/// (on any thread), and it must not be used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn effnet_context_destroy(ctx: *mut effnet_context) -> effnet_status {
    // SAFETY: forwarded from this function's contract.
    guard("effnet_context_destroy", || unsafe {
        handle::destroy(ctx, "`ctx`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_run_on_the_context_pool_and_destroy_joins_the_workers() {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let s = unsafe { effnet_context_create(3, &mut ctx) };
        assert_eq!(s, effnet_status::EFFNET_OK);
        // SAFETY: ctx is live.
        let c = unsafe { handle::get(ctx.cast_const(), "ctx") }.unwrap();
        let (n, name) = c.install(|| {
            (
                rayon::current_num_threads(),
                std::thread::current().name().map(str::to_owned),
            )
        });
        assert_eq!(n, 3);
        assert!(name.unwrap().starts_with("effnet-"));
        // SAFETY: ctx is live and unused.
        assert_eq!(
            unsafe { effnet_context_destroy(ctx) },
            effnet_status::EFFNET_OK
        );
        // A second destroy is reported, not a double free.
        // SAFETY: the registry catches it before any dereference.
        assert_eq!(
            unsafe { effnet_context_destroy(ctx) },
            effnet_status::EFFNET_INVALID_ARGUMENT
        );
    }

    #[test]
    fn bad_arguments_are_rejected() {
        // SAFETY: NULL out-pointer is checked.
        let s = unsafe { effnet_context_create(1, std::ptr::null_mut()) };
        assert_eq!(s, effnet_status::EFFNET_INVALID_ARGUMENT);
        let mut ctx = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        let s = unsafe { effnet_context_create(u32::MAX, &mut ctx) };
        assert_eq!(s, effnet_status::EFFNET_INVALID_ARGUMENT);
        assert!(ctx.is_null());
        // SAFETY: NULL is a no-op.
        assert_eq!(
            unsafe { effnet_context_destroy(std::ptr::null_mut()) },
            effnet_status::EFFNET_OK
        );
    }
}
