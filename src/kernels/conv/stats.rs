//! Per-image channel statistics gathered by a convolution's forward pass (a post-op):
//! the sums over each image's output pixels — the squeeze of a squeeze-excite, or a
//! norm's mean — and the sums of squares (its variance), taken from the output while
//! it is still in the task's cache instead of in a later pass over the tensor.
//!
//! Each task of the forward pass, once it has written its output rows, sums every
//! row's pixels in order per channel into a row partial (`f32`, in the workspace:
//! `[N·OH][C_out]` per statistic); the call then adds each image's row partials in row
//! order in `f64`. A row's partial is computed the same way whichever task wrote the
//! row, so the statistics are the same bits for any thread count.

use crate::error::{Error, Result, check_len};

/// Which statistics of the finished output (after the activation and the residual)
/// a forward pass gathers per image and output channel ([`super::PostOps::stats`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChannelStats {
    /// None.
    #[default]
    None,
    /// `sums[n][c] = Σ_{oh, ow} y[n][oh][ow][c]`.
    Sums,
    /// The sums and `squares[n][c] = Σ_{oh, ow} y[n][oh][ow][c]²`.
    SumsAndSquares,
}

impl ChannelStats {
    /// Checks the output buffers of a call against the statistics asked for
    /// (`len = N·C_out` each).
    pub(crate) fn check(
        self,
        sums: Option<&[f64]>,
        squares: Option<&[f64]>,
        len: usize,
    ) -> Result<()> {
        let want = (
            self != ChannelStats::None,
            self == ChannelStats::SumsAndSquares,
        );
        for (name, buf, wanted) in [("sums", sums, want.0), ("squares", squares, want.1)] {
            match (buf, wanted) {
                (Some(b), true) => check_len(name, b.len(), len)?,
                (None, false) => {}
                (Some(_), false) => {
                    return Err(Error::InvalidArgument(format!(
                        "`{name}` was given but the plan's post-ops gather {self:?}"
                    )));
                }
                (None, true) => {
                    return Err(Error::InvalidArgument(format!(
                        "the plan's post-ops gather {self:?}: pass `{name}` ([N][C_out])"
                    )));
                }
            }
        }
        Ok(())
    }
}
