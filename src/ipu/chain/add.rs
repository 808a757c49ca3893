//! The skip addition.

use super::boxes::Dist;
use super::context::{Net, fr};
use crate::error::Result;
use crate::ipu::codelets::Codelet;

/// Element-wise `a + b` on the boxes of `a` (`b` aligned to them), in place in `a`
/// (neither input is needed by a backward pass).
pub(super) fn add(net: &mut Net, name: &str, a: &Dist, b: &Dist) -> Result<Dist> {
    let b = net.align(&format!("{name}.b"), b, a)?;
    let o = a.clone();
    let vs = a
        .parts
        .iter()
        .zip(&b.parts)
        .zip(&o.parts)
        .map(|((p, q), r)| {
            let len = p.len(a.w);
            (
                p.tile,
                Codelet::add(len),
                vec![fr(p.t, len), fr(q.t, len), fr(r.t, len)],
            )
        })
        .collect();
    net.cs(&format!("{name}.add"), vs)?;
    Ok(o)
}
