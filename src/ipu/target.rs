//! IPU targets: the Mk2 (GC200) and Bow presets, every constant with its provenance.
//!
//! All figures derived from a [`Target`] are **estimates** of a host-side model, never
//! measurements of hardware.

use crate::error::{Error, Result};

/// Numeric precision of a modelled graph: decides the bytes per element and the AMP /
/// vector-unit rates used by the cycle estimators. The codelets themselves always run
/// `f32` on the host; `F16` only changes the estimates (the storage type the paper's
/// IPU runs used).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 4-byte elements, AMP at [`Target::amp_f32_macs_per_cycle`].
    #[default]
    F32,
    /// 2-byte elements, AMP at [`Target::amp_f16_macs_per_cycle`].
    F16,
}

impl Precision {
    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

/// A modelled IPU. Construct with [`Target::mk2`] or [`Target::bow`] and override any
/// field (they are all public) or use [`Target::set`] with a `name=value` string.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Preset name (`"mk2"`, `"bow"`).
    pub name: &'static str,
    /// Tiles per IPU. Provenance: Graphcore GC200 (Mk2) product brief, 1472 tiles;
    /// Bow uses the same die (DESIGN.md, "The IPU execution model").
    pub tiles: usize,
    /// SRAM per tile in bytes. Provenance: GC200 product brief, 900 MB In-Processor
    /// Memory over 1472 tiles = 624 KiB per tile (DESIGN.md).
    pub tile_bytes: usize,
    /// Fraction of a tile's SRAM that the planner and the graph may use (the rest is
    /// left to code, vertex state, exchange buffers and the stack). Provenance: the
    /// issue's default, 60 %.
    pub memory_budget_fraction: f64,
    /// Hardware worker contexts per tile (barrel-threaded: each issues once every
    /// `workers` cycles). Provenance: Graphcore IPU programmer's guide, 6 workers
    /// (DESIGN.md).
    pub workers: usize,
    /// Tile clock in Hz. Provenance: GC200 1.33 GHz; Bow 1.85 GHz (DESIGN.md).
    pub clock_hz: f64,
    /// AMP (accumulating matrix product unit) multiply-adds per tile per cycle in
    /// fp16. Provenance: derived in DESIGN.md from the 250 TFLOP/s fp16 peak of GC200
    /// (250e12 / 2 / 1472 / 1.33e9 ≈ 64).
    pub amp_f16_macs_per_cycle: usize,
    /// AMP multiply-adds per tile per cycle in fp32. Provenance: DESIGN.md (16, a
    /// quarter of the fp16 rate).
    pub amp_f32_macs_per_cycle: usize,
    /// Input channels one AMP pass consumes (fp32 / fp16). Provenance: PopLibs'
    /// convolution planner groups input channels for the AMP in blocks of 8 (float)
    /// and 16 (half) (`inChansPerGroup` of its AMP vertices); used for the
    /// channel-granularity waste.
    pub amp_in_chans: [usize; 2],
    /// Output channels one AMP pass produces (fp32 / fp16), PopLibs'
    /// `numConvUnitsPerTile`-style granularity (8 / 16); assumption.
    pub amp_out_chans: [usize; 2],
    /// Vector width of the 64-bit data path in elements (fp32: 2, fp16: 4), used for
    /// element-wise and vertical-MAC work on the worker's vector unit. Provenance: the
    /// 64-bit datapath of PopLibs' estimators (`dataPathWidth = 64`).
    pub vector_width: [usize; 2],
    /// Exchange bandwidth in bytes per tile per cycle (in and out each). Provenance:
    /// DESIGN.md, "about 4 bytes per tile per cycle (unverified)".
    pub exchange_bytes_per_cycle: f64,
    /// Fixed cycles per exchange phase (setup of the exchange program); assumption.
    pub exchange_overhead_cycles: u64,
    /// Cycles of one internal (single-IPU) barrier sync. A parameter, not a measured
    /// figure; default an assumption of 150 cycles.
    pub sync_cycles: u64,
    /// On-tile copy rate in bytes per cycle (a 64-bit load/store pair per cycle);
    /// assumption.
    pub on_tile_copy_bytes_per_cycle: f64,
    /// Bandwidth of one IPU-Link in bytes per second, each direction. Provenance:
    /// Graphcore's GC200 / IPU-M2000 product brief, 10 IPU-Links per IPU with 320 GB/s
    /// chip-to-chip bandwidth in all, i.e. 32 GB/s per link (a hardware fact, recorded
    /// in BENCHMARKS.md, "IPU-POD16 system model").
    pub ipu_link_bytes_per_s: f64,
    /// IPU-Links that carry one pipeline transfer between the IPUs of two adjacent
    /// stages (the stage IPUs of a replica are neighbours in one IPU-M2000). Assumption:
    /// 1 (the conservative case; the M2000 links its four IPUs with more).
    pub pipeline_links: usize,
    /// IPU-Links each IPU drives in the gradient all-reduce ring (one to each ring
    /// neighbour, one direction each). Assumption: 1 (a single ring over the
    /// IPU-POD16's links).
    pub allreduce_links: usize,
    /// Cycles of one synchronisation across IPUs (the pipeline step boundary and each
    /// step of the all-reduce ring), on top of the data transfer. A parameter, not a
    /// measured figure; default an assumption of 1 µs at the tile clock (1330 cycles
    /// on Mk2), several times the on-chip [`Target::sync_cycles`].
    pub external_sync_cycles: u64,
}

impl Target {
    /// The Mk2 GC200 preset.
    pub fn mk2() -> Target {
        Target {
            name: "mk2",
            tiles: 1472,
            tile_bytes: 624 * 1024,
            memory_budget_fraction: 0.6,
            workers: 6,
            clock_hz: 1.33e9,
            amp_f16_macs_per_cycle: 64,
            amp_f32_macs_per_cycle: 16,
            amp_in_chans: [8, 16],
            amp_out_chans: [8, 16],
            vector_width: [2, 4],
            exchange_bytes_per_cycle: 4.0,
            exchange_overhead_cycles: 30,
            sync_cycles: 150,
            on_tile_copy_bytes_per_cycle: 8.0,
            ipu_link_bytes_per_s: 32e9,
            pipeline_links: 1,
            allreduce_links: 1,
            external_sync_cycles: 1330,
        }
    }

    /// The Bow preset: the GC200 die at 1.85 GHz (wafer-on-wafer power delivery);
    /// every per-cycle figure as [`Target::mk2`].
    pub fn bow() -> Target {
        Target {
            name: "bow",
            clock_hz: 1.85e9,
            ..Target::mk2()
        }
    }

    /// A preset by name (`mk2`, `gc200`, `bow`).
    pub fn by_name(name: &str) -> Result<Target> {
        match name.to_ascii_lowercase().as_str() {
            "mk2" | "gc200" => Ok(Target::mk2()),
            "bow" => Ok(Target::bow()),
            _ => Err(Error::InvalidArgument(format!(
                "unknown IPU target {name:?} (mk2, bow)"
            ))),
        }
    }

    /// Overrides one constant from a `name=value` string (field names as in this
    /// struct, e.g. `sync_cycles=300`, `tiles=16`).
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        let (k, v) = assignment.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!("override {assignment:?} is not name=value"))
        })?;
        let bad = || Error::InvalidArgument(format!("bad value in override {assignment:?}"));
        let u = || v.trim().parse::<usize>().map_err(|_| bad());
        let f = || {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(bad)
        };
        match k.trim() {
            "tiles" => self.tiles = u()?,
            "tile_bytes" => self.tile_bytes = u()?,
            "memory_budget_fraction" => self.memory_budget_fraction = f()?,
            "workers" => self.workers = u()?,
            "clock_hz" => self.clock_hz = f()?,
            "amp_f16_macs_per_cycle" => self.amp_f16_macs_per_cycle = u()?,
            "amp_f32_macs_per_cycle" => self.amp_f32_macs_per_cycle = u()?,
            "exchange_bytes_per_cycle" => self.exchange_bytes_per_cycle = f()?,
            "exchange_overhead_cycles" => self.exchange_overhead_cycles = u()? as u64,
            "sync_cycles" => self.sync_cycles = u()? as u64,
            "on_tile_copy_bytes_per_cycle" => self.on_tile_copy_bytes_per_cycle = f()?,
            "ipu_link_bytes_per_s" => self.ipu_link_bytes_per_s = f()?,
            "pipeline_links" => self.pipeline_links = u()?,
            "allreduce_links" => self.allreduce_links = u()?,
            "external_sync_cycles" => self.external_sync_cycles = u()? as u64,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown target constant {k:?}"
                )));
            }
        }
        self.validate()
    }

    /// Checks that every constant is usable (non-zero counts and rates, a budget
    /// fraction in (0, 1]).
    pub fn validate(&self) -> Result<()> {
        let ok = self.tiles > 0
            && self.tiles <= u16::MAX as usize + 1
            && self.tile_bytes > 0
            && self.workers > 0
            && self.amp_f16_macs_per_cycle > 0
            && self.amp_f32_macs_per_cycle > 0
            && self.memory_budget_fraction > 0.0
            && self.memory_budget_fraction <= 1.0
            && self.clock_hz > 0.0
            && self.exchange_bytes_per_cycle > 0.0
            && self.on_tile_copy_bytes_per_cycle > 0.0
            && self.ipu_link_bytes_per_s > 0.0
            && self.pipeline_links > 0
            && self.allreduce_links > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "target {} has a zero or out-of-range constant",
                self.name
            )))
        }
    }

    /// The byte budget of one tile (`tile_bytes · memory_budget_fraction`).
    pub fn budget_bytes(&self) -> usize {
        (self.tile_bytes as f64 * self.memory_budget_fraction) as usize
    }

    /// AMP multiply-adds per tile-cycle at `p`.
    pub fn amp_macs(&self, p: Precision) -> usize {
        match p {
            Precision::F32 => self.amp_f32_macs_per_cycle,
            Precision::F16 => self.amp_f16_macs_per_cycle,
        }
    }

    fn idx(p: Precision) -> usize {
        match p {
            Precision::F32 => 0,
            Precision::F16 => 1,
        }
    }

    /// AMP input-channel granularity at `p`.
    pub fn amp_in(&self, p: Precision) -> usize {
        self.amp_in_chans[Self::idx(p)]
    }

    /// AMP output-channel granularity at `p`.
    pub fn amp_out(&self, p: Precision) -> usize {
        self.amp_out_chans[Self::idx(p)]
    }

    /// Bytes one IPU moves per tile cycle over `links` IPU-Links (one direction).
    pub fn link_bytes_per_cycle(&self, links: usize) -> f64 {
        self.ipu_link_bytes_per_s * links as f64 / self.clock_hz
    }

    /// Vector-unit width in elements at `p`.
    pub fn vec(&self, p: Precision) -> usize {
        self.vector_width[Self::idx(p)]
    }
}
