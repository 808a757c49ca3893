//! Benchmark support shared by the CLI's `bench` commands and the criterion benches:
//! the layer-suite format, timing, prepared cases (one operator, or a whole network),
//! and the roofline of the reference machine.

pub mod cases;
pub mod network;

use crate::error::{Error, Result};
use crate::kernels::conv::{ConvDesc, Padding};
use std::time::{Duration, Instant};

/// The EfficientNet-B0 layer suite (G1 and G16 spatial convs, pointwise convs, stem)
/// shipped with the crate; the same file as `shared/bench/b0_layers.tsv`.
pub const B0_SUITE: &str = include_str!("../../benches/suites/b0_layers.tsv");

/// Roofline of the reference development machine (DESIGN.md: 2 cores, AVX-512):
/// fp32 peak with AVX-512, in GFLOP/s.
pub const PEAK_GFLOPS_AVX512: f64 = 525.0;
/// fp32 peak with AVX2+FMA, in GFLOP/s.
pub const PEAK_GFLOPS_AVX2: f64 = 265.0;
/// Memory bandwidth (read + write), in GB/s.
pub const PEAK_GBPS: f64 = 45.0;

/// One row of a layer suite: a convolution at batch 1 with symmetric `k/2` padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// Layer name, reported as the `name` field.
    pub name: String,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Square kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Channels per group: 0 = dense (one group), 1 = depthwise, 16 = G16.
    pub group_size: usize,
}

impl LayerSpec {
    /// The convolution this row describes at `batch`.
    pub fn conv_desc(&self, batch: usize) -> ConvDesc {
        let gs = if self.group_size == 0 {
            self.c_in
        } else {
            self.group_size
        };
        ConvDesc::new(
            batch,
            (self.h, self.w),
            self.c_in,
            self.c_out,
            (self.k, self.k),
        )
        .with_group_size(gs)
        .with_stride(self.stride)
        .with_padding(Padding::symmetric(self.k / 2))
    }
}

/// The suite in the file `path` (see [`parse_suite`]), or the built-in
/// [`B0_SUITE`] when `path` is `None`.
pub fn load_suite(path: Option<&std::path::Path>) -> Result<Vec<LayerSpec>> {
    match path {
        Some(p) => parse_suite(
            &std::fs::read_to_string(p)
                .map_err(|e| crate::Error::Io(format!("{}: {e}", p.display())))?,
        ),
        None => parse_suite(B0_SUITE),
    }
}

/// Parses a suite: `#` comments, then tab- or space-separated rows
/// `name c_in c_out h w k stride group_size`.
pub fn parse_suite(text: &str) -> Result<Vec<LayerSpec>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = |m: &str| Error::InvalidArgument(format!("suite line {}: {m}: {line:?}", i + 1));
        if f.len() != 8 {
            return Err(bad("expected 8 fields"));
        }
        let n = |j: usize| f[j].parse::<usize>().map_err(|_| bad("not a number"));
        out.push(LayerSpec {
            name: f[0].to_string(),
            c_in: n(1)?,
            c_out: n(2)?,
            h: n(3)?,
            w: n(4)?,
            k: n(5)?,
            stride: n(6)?,
            group_size: n(7)?,
        });
    }
    if out.is_empty() {
        return Err(Error::InvalidArgument("the suite has no layers".into()));
    }
    Ok(out)
}

/// Median wall time of `f` in milliseconds: one warm-up call, then batches of calls
/// until `min_time` has passed (at least 5 samples).
pub fn median_ms(min_time: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 5 || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64() * 1e3);
        if samples.len() >= 10_000 {
            break;
        }
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}
