//! Argument checks shared by the commands: the kernel benchmarks' names and times, and
//! the bounds on `--batch` and `--res` every command enforces before it allocates.

use effnet::{Error, Result};

/// Every name in `given` must be one of `known` (`what` names the argument).
pub fn check_names(given: &[String], known: &[&str], what: &str) -> Result<()> {
    match given.iter().find(|g| !known.contains(&g.as_str())) {
        Some(g) => Err(Error::InvalidArgument(format!(
            "unknown {what} {g:?} (expected one of {known:?})"
        ))),
        None => Ok(()),
    }
}

/// The largest `--batch` any command takes (a batch of this many images at the
/// networks' resolutions is already far beyond the memory of one machine).
pub const MAX_BATCH: usize = 1 << 16;

/// The largest `--res` / `--finetune-res` any command takes (EfficientNet-B7's native
/// resolution is 600).
pub const MAX_RES: usize = 1 << 13;

/// `--batch` (at least 1, at most [`MAX_BATCH`]) and `--res`-like flags (at most
/// [`MAX_RES`]; their lower bounds are the commands' own). Checked before anything is
/// allocated, so an absurd value is a clear error rather than an out-of-memory abort.
pub fn check_batch_res(batch: Option<usize>, res: &[(&str, Option<usize>)]) -> Result<()> {
    if let Some(b) = batch {
        if b == 0 {
            return Err(Error::InvalidArgument("--batch must be at least 1".into()));
        }
        if b > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "--batch {b} is more than the maximum of {MAX_BATCH}"
            )));
        }
    }
    for &(flag, r) in res {
        if let Some(r) = r.filter(|&r| r > MAX_RES) {
            return Err(Error::InvalidArgument(format!(
                "{flag} {r} is more than the maximum of {MAX_RES}"
            )));
        }
    }
    Ok(())
}

/// A batch of at least one image (at most [`MAX_BATCH`]) and a finite, non-negative
/// minimum time per case.
pub fn check_batch_and_time(batch: usize, min_time: f64) -> Result<()> {
    check_batch_res(Some(batch), &[])?;
    if !(min_time.is_finite() && min_time >= 0.0) {
        return Err(Error::InvalidArgument(
            "--min-time must be a non-negative number".into(),
        ));
    }
    Ok(())
}
