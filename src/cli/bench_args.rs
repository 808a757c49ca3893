//! Argument checks shared by the kernel benchmarks (`bench ops`, `bench norm`).

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

/// A batch of at least one image and a finite, non-negative minimum time per case.
pub fn check_batch_and_time(batch: usize, min_time: f64) -> Result<()> {
    if batch == 0 {
        return Err(Error::InvalidArgument("--batch must be at least 1".into()));
    }
    if !(min_time.is_finite() && min_time >= 0.0) {
        return Err(Error::InvalidArgument(
            "--min-time must be a non-negative number".into(),
        ));
    }
    Ok(())
}
