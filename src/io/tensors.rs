//! Named `f32` tensors stored as safetensors files (timm state dicts, effnet
//! checkpoints, gradients). `F16`, `BF16` and `F64` tensors are converted to `f32` on
//! load; everything is saved as `F32`.

use super::write_atomic;
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor: shape (row-major) and data.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Shape as stored (PyTorch layouts for timm files, e.g. OIHW for conv weights).
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f32>,
}

/// Tensors by name, in name order.
pub type TensorMap = BTreeMap<String, NamedTensor>;

fn err(path: &str, m: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{path}: {m}"))
}

/// Decodes a safetensors buffer (`name` is used in error messages). Integer tensors
/// (e.g. BatchNorm's `num_batches_tracked`) are skipped.
pub fn decode(bytes: &[u8], name: &str) -> Result<TensorMap> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| err(name, format!("not a valid safetensors file: {e}")))?;
    let mut out = TensorMap::new();
    for (key, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::I64 | Dtype::I32 | Dtype::I16 | Dtype::I8 | Dtype::U8 | Dtype::BOOL => continue,
            other => {
                return Err(err(
                    name,
                    format!("tensor {key}: unsupported dtype {other:?}"),
                ));
            }
        };
        out.insert(
            key,
            NamedTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Loads every floating-point tensor of a safetensors file.
pub fn load(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    decode(&bytes, &path.display().to_string())
}

/// Encodes tensors as a safetensors buffer (`F32`), with optional string metadata.
pub fn encode(tensors: &TensorMap, metadata: Option<BTreeMap<String, String>>) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            if t.shape.iter().product::<usize>() != t.data.len() {
                return Err(Error::InvalidArgument(format!(
                    "tensor {k}: shape {:?} does not hold {} elements",
                    t.shape,
                    t.data.len()
                )));
            }
            Ok((
                k.clone(),
                t.shape.clone(),
                bytemuck::cast_slice(&t.data).to_vec(),
            ))
        })
        .collect::<Result<_>>()?;
    // The file format is little-endian; bytemuck's cast is the native order.
    #[cfg(target_endian = "big")]
    compile_error!("safetensors encoding assumes a little-endian target");
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::InvalidArgument(format!("tensor {k}: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta = metadata.map(|m| m.into_iter().collect());
    safetensors::serialize(views, meta)
        .map_err(|e| Error::InvalidArgument(format!("safetensors: {e}")))
}

/// Saves tensors to a safetensors file atomically (temporary file, then rename).
pub fn save(
    path: &Path,
    tensors: &TensorMap,
    metadata: Option<BTreeMap<String, String>>,
) -> Result<()> {
    write_atomic(path, &encode(tensors, metadata)?)
}
