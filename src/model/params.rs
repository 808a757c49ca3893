//! The parameter store: every learnable parameter and buffer of a network, in a fixed
//! order, with timm's names, effnet's layouts, gradients and the weight-decay flag.
//!
//! Layouts (effnet's): convolution weights `[kh][kw][C_in/groups][C_out]` (the
//! squeeze-excite 1×1 convolutions included, as `[1][1][C_in][C_out]`), the classifier
//! `[in][out]`, everything else `[channels]`. timm stores convolutions as OIHW
//! `[C_out][C_in/groups][kh][kw]` and the classifier as `[out][in]`;
//! [`ParamStore::to_timm`] and [`ParamStore::load_timm`] convert (one function each
//! way).
//!
//! Names follow timm (`conv_stem.weight`, `bn1.weight`, `blocks.1.0.conv_pw.weight`,
//! `blocks.1.0.se.conv_reduce.bias`, `classifier.weight`, …). Under Proxy Norm the
//! norm's γ and β are `{norm}.weight` and `{norm}.bias` and the proxy parameters β′
//! and γ′ are `{norm}.proxy_beta` and `{norm}.proxy_gamma`; the γ-only LayerNorm after a
//! projection has `{norm}.weight` only. BatchNorm's running statistics are buffers
//! (`{norm}.running_mean`, `{norm}.running_var`): stored and loaded, never trained.

use crate::error::{Error, Result, checked_product, try_filled};
use crate::io::tensors::{NamedTensor, TensorMap};
use crate::kernels::regularize::CounterRng;
use std::collections::HashMap;

/// What a parameter is: decides its initialisation, whether it is trained and whether
/// weight decay applies.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A convolution weight `[kh][kw][C_in/groups][C_out]` initialised with variance
    /// scaling on the fan-out (1×1 and stem convolutions).
    ConvFanOut,
    /// A spatial (k×k depthwise or grouped) convolution weight, variance scaling on the
    /// fan-in.
    ConvFanIn,
    /// The classifier weight `[in][out]` (Glorot uniform).
    Dense,
    /// A bias (zero).
    Bias,
    /// A norm's γ (one).
    NormGamma,
    /// A norm's β (zero).
    NormBeta,
    /// Proxy Norm's β′ (zero).
    ProxyBeta,
    /// Proxy Norm's γ′ (zero).
    ProxyGamma,
    /// BatchNorm running mean (buffer, zero).
    RunningMean,
    /// BatchNorm running variance (buffer, one).
    RunningVar,
}

impl ParamKind {
    /// Whether the optimizer updates it (false for BatchNorm's running statistics).
    pub fn trainable(self) -> bool {
        !matches!(self, ParamKind::RunningMean | ParamKind::RunningVar)
    }

    /// Whether weight decay applies: convolution and dense weights only (not biases,
    /// norm or proxy parameters).
    pub fn decays(self) -> bool {
        matches!(
            self,
            ParamKind::ConvFanOut | ParamKind::ConvFanIn | ParamKind::Dense
        )
    }

    fn is_conv(self) -> bool {
        matches!(self, ParamKind::ConvFanOut | ParamKind::ConvFanIn)
    }
}

/// One parameter's description (its value and gradient live in the [`ParamStore`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// timm name.
    pub name: String,
    /// Shape in effnet's layout (see the [module docs](self)).
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: ParamKind,
}

impl ParamInfo {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no elements (never, for a built network).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every parameter of a network, in a fixed order, with values and gradients
/// (`values[i]` and `grads[i]` belong to `infos[i]`; gradients of buffers stay zero).
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    infos: Vec<ParamInfo>,
    /// Values, effnet layouts.
    pub values: Vec<Vec<f32>>,
    /// Gradients, same layouts.
    pub grads: Vec<Vec<f32>>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Adds a parameter (zero value and gradient) and returns its index.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a duplicate name, [`Error::Overflow`] when the
    /// shape's element count does not fit in memory addressing,
    /// [`Error::OutOfMemory`] when its value and gradient cannot be allocated (e.g.
    /// an absurd class count); the store is unchanged then.
    pub fn add(&mut self, name: String, shape: Vec<usize>, kind: ParamKind) -> Result<usize> {
        if self.index.contains_key(&name) {
            return Err(Error::InvalidArgument(format!(
                "duplicate parameter {name}"
            )));
        }
        let len = checked_product(&format!("parameter {name}"), &shape)?;
        let what = format!("parameter {name} {shape:?}");
        let value = try_filled(&what, len, 0.0)?;
        let grad = try_filled(&what, len, 0.0)?;
        let i = self.infos.len();
        self.index.insert(name.clone(), i);
        self.infos.push(ParamInfo { name, shape, kind });
        self.values.push(value);
        self.grads.push(grad);
        Ok(i)
    }

    /// The descriptions, in order.
    pub fn infos(&self) -> &[ParamInfo] {
        &self.infos
    }

    /// Number of entries (parameters and buffers).
    pub fn len(&self) -> usize {
        self.infos.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// The index of a name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Number of trainable scalars (buffers excluded).
    pub fn trainable_count(&self) -> usize {
        self.infos
            .iter()
            .filter(|p| p.kind.trainable())
            .map(|p| p.len())
            .sum()
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self) {
        for g in &mut self.grads {
            g.fill(0.0);
        }
    }

    /// Initialises every value as the reference implementation does, from `seed`:
    /// normal with std `√(2/fan)` for convolutions (fan-out `kh·kw·C_out` for 1×1 and
    /// stem convolutions, fan-in `kh·kw·C_in/groups` for spatial ones), Glorot uniform
    /// `±√(6/(in+out))` for the classifier, zero biases, γ = 1, β = β′ = γ′ = 0, running
    /// mean 0 and variance 1. Parameter `i` draws from its own stream, so the values do
    /// not depend on the order of initialisation.
    pub fn init(&mut self, seed: u64) {
        for (i, (info, v)) in self.infos.iter().zip(self.values.iter_mut()).enumerate() {
            let rng = CounterRng::new(seed, 0x1000 + i as u64);
            match info.kind {
                ParamKind::ConvFanOut | ParamKind::ConvFanIn => {
                    let s = &info.shape;
                    let fan = if info.kind == ParamKind::ConvFanOut {
                        s[0] * s[1] * s[3]
                    } else {
                        s[0] * s[1] * s[2]
                    };
                    let std = (2.0 / fan as f64).sqrt();
                    for (j, x) in v.iter_mut().enumerate() {
                        *x = (std * normal(&rng, j as u64)) as f32;
                    }
                }
                ParamKind::Dense => {
                    let s = &info.shape;
                    let limit = (6.0 / (s[0] + s[1]) as f64).sqrt();
                    for (j, x) in v.iter_mut().enumerate() {
                        *x = (limit * (2.0 * rng.uniform_f64(j as u64) - 1.0)) as f32;
                    }
                }
                ParamKind::NormGamma | ParamKind::RunningVar => v.fill(1.0),
                ParamKind::Bias
                | ParamKind::NormBeta
                | ParamKind::ProxyBeta
                | ParamKind::ProxyGamma
                | ParamKind::RunningMean => v.fill(0.0),
            }
        }
    }

    /// The values under timm's names and layouts (OIHW convolutions, `[out][in]`
    /// classifier), e.g. to save a timm-compatible state dict or gradients
    /// (`grads = true`).
    pub fn to_timm(&self, grads: bool) -> TensorMap {
        let src = if grads { &self.grads } else { &self.values };
        self.infos
            .iter()
            .zip(src)
            .filter(|(p, _)| !grads || p.kind.trainable())
            .map(|(p, v)| (p.name.clone(), effnet_to_timm(p, v)))
            .collect()
    }

    /// The values under effnet's own layouts (for checkpoints).
    pub fn to_effnet(&self, prefix: &str) -> TensorMap {
        self.infos
            .iter()
            .zip(&self.values)
            .map(|(p, v)| {
                (
                    format!("{prefix}{}", p.name),
                    NamedTensor {
                        shape: p.shape.clone(),
                        data: v.clone(),
                    },
                )
            })
            .collect()
    }

    /// Loads every value from `tensors`: timm layouts when `timm` is true, effnet's
    /// otherwise, names prefixed by `prefix`. Every parameter and buffer must be
    /// present with the right shape (timm's `num_batches_tracked` and other extra
    /// entries are ignored).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first missing or misshapen tensor.
    pub fn load(&mut self, tensors: &TensorMap, timm: bool, prefix: &str) -> Result<()> {
        let mut new = Vec::with_capacity(self.infos.len());
        for p in &self.infos {
            let key = format!("{prefix}{}", p.name);
            let t = tensors.get(&key).ok_or_else(|| {
                Error::InvalidArgument(format!("the weights have no tensor {key}"))
            })?;
            let v = if timm {
                timm_to_effnet(p, t)?
            } else {
                if t.shape != p.shape {
                    return Err(Error::InvalidArgument(format!(
                        "tensor {key} has shape {:?}, the network needs {:?}",
                        t.shape, p.shape
                    )));
                }
                t.data.clone()
            };
            new.push(v);
        }
        self.values = new;
        Ok(())
    }

    /// [`ParamStore::load`] with timm layouts and no prefix.
    ///
    /// # Errors
    /// As [`ParamStore::load`].
    pub fn load_timm(&mut self, tensors: &TensorMap) -> Result<()> {
        self.load(tensors, true, "")
    }
}

/// A standard normal draw at position `j` of `rng`'s stream (Box–Muller on two
/// counters).
fn normal(rng: &CounterRng, j: u64) -> f64 {
    let u1 = 1.0 - rng.uniform_f64(2 * j); // (0, 1]
    let u2 = rng.uniform_f64(2 * j + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The timm shape of a parameter.
fn timm_shape(p: &ParamInfo) -> Vec<usize> {
    let s = &p.shape;
    if p.kind.is_conv() {
        vec![s[3], s[2], s[0], s[1]]
    } else if p.kind == ParamKind::Dense {
        vec![s[1], s[0]]
    } else {
        s.clone()
    }
}

/// effnet layout → timm layout (`[kh][kw][ci][co]` → `[co][ci][kh][kw]`, `[in][out]` →
/// `[out][in]`).
fn effnet_to_timm(p: &ParamInfo, v: &[f32]) -> NamedTensor {
    let s = &p.shape;
    let data = if p.kind.is_conv() {
        let (kh, kw, ci, co) = (s[0], s[1], s[2], s[3]);
        let mut out = vec![0.0f32; v.len()];
        for o in 0..co {
            for i in 0..ci {
                for y in 0..kh {
                    for x in 0..kw {
                        out[((o * ci + i) * kh + y) * kw + x] = v[((y * kw + x) * ci + i) * co + o];
                    }
                }
            }
        }
        out
    } else if p.kind == ParamKind::Dense {
        transpose(v, s[0], s[1])
    } else {
        v.to_vec()
    };
    NamedTensor {
        shape: timm_shape(p),
        data,
    }
}

/// timm layout → effnet layout, checking the shape. A timm linear layer stored as a
/// `[out][in][1][1]` convolution is accepted for the classifier too.
fn timm_to_effnet(p: &ParamInfo, t: &NamedTensor) -> Result<Vec<f32>> {
    let want = timm_shape(p);
    let squeezed: Vec<usize> = t.shape.iter().copied().filter(|&d| d != 1).collect();
    let want_squeezed: Vec<usize> = want.iter().copied().filter(|&d| d != 1).collect();
    if t.shape != want && !(squeezed == want_squeezed && t.data.len() == p.len()) {
        return Err(Error::InvalidArgument(format!(
            "tensor {} has shape {:?}, the network needs {:?}",
            p.name, t.shape, want
        )));
    }
    let s = &p.shape;
    Ok(if p.kind.is_conv() {
        let (kh, kw, ci, co) = (s[0], s[1], s[2], s[3]);
        let mut out = vec![0.0f32; t.data.len()];
        for o in 0..co {
            for i in 0..ci {
                for y in 0..kh {
                    for x in 0..kw {
                        out[((y * kw + x) * ci + i) * co + o] =
                            t.data[((o * ci + i) * kh + y) * kw + x];
                    }
                }
            }
        }
        out
    } else if p.kind == ParamKind::Dense {
        transpose(&t.data, s[1], s[0])
    } else {
        t.data.clone()
    })
}

/// `[r][c]` → `[c][r]`.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}
