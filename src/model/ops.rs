//! Small compositions of existing kernels used by the model layer.

use crate::error::Result;
use crate::kernels::regularize::DropConnect;

/// The drop-connect of a block (`p = 0`: keep every sample, factor 1).
pub(crate) fn drop_connect(p: f32, seed: u64) -> Result<DropConnect> {
    DropConnect::new(p, seed)
}

/// `acc += other`, element-wise: the residual kernel with drop probability 0
/// (`out = skip + branch·1`, exact).
pub(crate) fn add_into(acc: &mut Vec<f32>, other: &[f32]) -> Result<()> {
    let mut out = vec![0.0f32; acc.len()];
    DropConnect::new(0.0, 0)?.forward_residual(1, acc, other, &mut out)?;
    *acc = out;
    Ok(())
}
