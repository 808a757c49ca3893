//! Weights files: an effnet checkpoint (safetensors with `format = effnet-checkpoint`
//! metadata, effnet layouts) or a timm state dict (safetensors, PyTorch layouts).

use super::network::Network;
use super::train::decode_checkpoint;
use crate::error::{Error, Result};
use crate::io::tensors::{self, TensorMap};
use std::path::Path;

/// A decoded weights file.
#[derive(Clone, Debug)]
pub struct Weights {
    /// The tensors by name.
    pub tensors: TensorMap,
    /// `true` for a timm state dict (PyTorch layouts), `false` for an effnet checkpoint.
    pub timm: bool,
    /// The architecture an effnet checkpoint records (`cfg.arch`); `None` for timm.
    pub arch: Option<String>,
}

impl Weights {
    /// Decodes a safetensors buffer: an effnet checkpoint if its metadata says so, else
    /// a timm state dict. `name` is used in messages.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a damaged file.
    pub fn decode(bytes: &[u8], name: &str) -> Result<Weights> {
        Ok(match decode_checkpoint(bytes, name) {
            Ok((tensors, m)) => Weights {
                tensors,
                timm: false,
                arch: m.get("cfg.arch").cloned(),
            },
            Err(_) => Weights {
                tensors: tensors::decode(bytes, name)?,
                timm: true,
                arch: None,
            },
        })
    }

    /// Reads and decodes a weights file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, else as [`Weights::decode`].
    pub fn read(path: &Path) -> Result<Weights> {
        let bytes =
            std::fs::read(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        Weights::decode(&bytes, &path.display().to_string())
    }

    /// The number of classes (the length of `classifier.bias`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is no `classifier.bias` tensor.
    pub fn classes(&self) -> Result<usize> {
        self.tensors
            .get("classifier.bias")
            .map(|b| b.data.len())
            .ok_or_else(|| Error::InvalidArgument("the weights have no classifier.bias".into()))
    }
}

impl Network {
    /// Replaces every parameter and buffer with those of `w` (timm or effnet layouts).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first missing or misshapen tensor (e.g.
    /// weights of another architecture or class count); the network is unchanged then.
    pub fn load_weights(&mut self, w: &Weights) -> Result<()> {
        self.params_mut().load(&w.tensors, w.timm, "")
    }
}
