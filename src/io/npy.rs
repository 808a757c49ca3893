//! NumPy `.npy` files: reading little-endian `f32`/`f64`/`i32`/`i64` arrays in C
//! order, writing `f32` and `i64` arrays.

use super::write_atomic;
use crate::error::{Error, Result};
use std::path::Path;

/// The element data of an array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `<f4` (and `<f8`, converted).
    F32(Vec<f32>),
    /// `<i8` (and `<i4`, widened).
    I64(Vec<i64>),
}

/// An array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// The shape, C order.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: NpyData,
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn bad(path: &str, m: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{path}: not a supported .npy file: {m}"))
}

/// Finds `'key': value` in the header dictionary and returns the value's text.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// Parses a `.npy` file's bytes (`name` is used in error messages).
pub fn parse(bytes: &[u8], name: &str) -> Result<NpyArray> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(name, "missing magic"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(name, format!("version {v}"))),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad(name, "truncated header"))?;
    let descr = header_field(header, "descr").ok_or_else(|| bad(name, "no descr"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if header_field(header, "fortran_order") != Some("False") {
        return Err(bad(name, "Fortran order is not supported"));
    }
    let shape_text = header_field(header, "shape").ok_or_else(|| bad(name, "no shape"))?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(name, format!("shape {shape_text}")))
        })
        .collect::<Result<_>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(name, "shape overflows"))?;
    let body = &bytes[hstart + hlen..];
    let elem = match descr {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        other => {
            return Err(bad(
                name,
                format!("dtype {other} (expected <f4, <f8, <i4 or <i8)"),
            ));
        }
    };
    if count.checked_mul(elem) != Some(body.len()) {
        return Err(bad(
            name,
            format!("{} data bytes for shape {shape:?} of {descr}", body.len()),
        ));
    }
    let data = match descr {
        "<f4" => NpyData::F32(
            body.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        ),
        "<f8" => NpyData::F32(
            body.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
        ),
        "<i4" => NpyData::I64(
            body.chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
        ),
        _ => NpyData::I64(
            body.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        ),
    };
    Ok(NpyArray { shape, data })
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    parse(&bytes, &path.display().to_string())
}

/// Reads a floating-point `.npy` file as `f32`.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    match read(path)? {
        NpyArray {
            shape,
            data: NpyData::F32(v),
        } => Ok((shape, v)),
        _ => Err(bad(&path.display().to_string(), "expected a float array")),
    }
}

/// Reads an integer `.npy` file (e.g. class labels).
pub fn read_i64(path: &Path) -> Result<(Vec<usize>, Vec<i64>)> {
    match read(path)? {
        NpyArray {
            shape,
            data: NpyData::I64(v),
        } => Ok((shape, v)),
        _ => Err(bad(
            &path.display().to_string(),
            "expected an integer array",
        )),
    }
}

/// An `.npy` file (version 1.0) of the raw little-endian `body` with dtype `descr`
/// (e.g. `"<f4"`) and `shape`: the magic, the header padded to 64 bytes, the body.
pub fn encode(descr: &str, shape: &[usize], body: Vec<u8>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary; the header ends with '\n'.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(body);
    out
}

fn check_shape(shape: &[usize], len: usize) -> Result<()> {
    if shape.iter().product::<usize>() != len {
        return Err(Error::InvalidArgument(format!(
            "shape {shape:?} does not hold {len} elements"
        )));
    }
    Ok(())
}

/// Writes an `f32` array (atomically: a temporary file renamed into place).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    check_shape(shape, data.len())?;
    let body = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &encode("<f4", shape, body))
}

/// Writes an `i64` array (atomically).
pub fn write_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    check_shape(shape, data.len())?;
    let body = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &encode("<i8", shape, body))
}
