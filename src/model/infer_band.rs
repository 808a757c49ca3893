//! Depth-first inverted-residual blocks: the expansion 1×1 convolution and the
//! depthwise (or grouped) k×k convolution run one band of rows of one image at a time,
//! so the expanded tensor — the largest of the block, 4–6× its input — lives in a band
//! buffer sized for the L2 caches and never travels to main memory. The squeeze of the
//! squeeze-excite is summed from each band of the k×k output while it is in cache.
//!
//! A band of output rows `o0..o1` of the k×k convolution reads input rows
//! `o0·s − pad_top ..= (o1 − 1)·s − pad_top + k − 1` (clipped to the image): the
//! expansion computes exactly those rows (neighbouring bands recompute the `k − s`
//! rows they share), and the k×k convolution runs on them as an image of its own whose
//! top and bottom padding are what remains of the real image's at its edges. Every
//! output element sums the same terms in the same order as the whole-tensor pass, so
//! the banded convolutions give the same bits; only the squeeze sums in another order.
//!
//! Bands pay where the expanded tensor would otherwise leave the last-level cache (a
//! large batch at a high resolution on a machine with little bandwidth); when it stays
//! in cache they only add calls, so the default [`BandPolicy`] bands only such blocks.

use super::infer::FusedConv;
use super::profile::{CONV_1X1_FWD, CONV_KXK_FWD, timed};
use crate::error::Result;
use crate::kernels::activation::Activation;
use crate::kernels::conv::{ConvDesc, ConvPass};

/// One band: rows of the image in the expansion's input and the k×k output, and the
/// index of the plans made for its geometry.
#[derive(Copy, Clone, Debug)]
struct Band {
    in_row0: usize,
    in_rows: usize,
    out_row0: usize,
    out_rows: usize,
    plan: usize,
}

/// The expansion and k×k convolution of one block, planned band by band (see the
/// [module docs](self)).
#[derive(Debug)]
pub(crate) struct Banded {
    bands: Vec<Band>,
    /// Plans per distinct band geometry: the expansion and the k×k convolution.
    plans: Vec<(FusedConv, FusedConv)>,
    batch: usize,
    /// Floats of one input row (`W·C_in`), one expanded row (`W·C_mid`) and one
    /// output row (`OW·C_mid`); output rows per image.
    in_row: usize,
    mid_row: usize,
    out_row: usize,
    out_h: usize,
    channels: usize,
}

/// The folded weights of one convolution: weight, per-channel scale and shift, and the
/// activation of its epilogue.
pub(crate) type FoldedConv<'a> = (&'a [f32], (&'a [f32], &'a [f32]), Activation);

impl Banded {
    /// Plans the block's expansion `expand` (a 1×1 convolution over the batch) and
    /// k×k convolution `spatial` in bands whose expanded rows take at most the
    /// policy's `band_bytes`; `None` when the whole expanded tensor is not larger than
    /// the policy's `min_tensor_bytes`, when one image's expanded tensor already fits a
    /// band, or when the image is too short to band.
    pub(crate) fn plan(
        expand: (&ConvDesc, FoldedConv<'_>),
        spatial: (&ConvDesc, FoldedConv<'_>),
        policy: BandPolicy,
    ) -> Result<Option<Banded>> {
        let band_bytes = policy.band_bytes;
        let (ed, (ew, efold, eact)) = expand;
        let (sd, (sw, sfold, sact)) = spatial;
        let sshape = sd.validate()?;
        let (h, w, cmid) = (sd.in_h, sd.in_w, sd.in_channels);
        let (k, s, pt) = (sd.kernel_h, sd.stride_h, sd.padding.top);
        let mid_row = w * cmid;
        let image_bytes = h * mid_row * size_of::<f32>();
        let out_h = sshape.out_h;
        let tensor_bytes = image_bytes.saturating_mul(sd.batch);
        if image_bytes <= band_bytes || tensor_bytes <= policy.min_tensor_bytes || out_h < 4 {
            return Ok(None);
        }
        // Output rows per band: their input rows (`(rows − 1)·s + k`) within the budget.
        let fit = band_bytes / (mid_row * size_of::<f32>());
        let rows = (fit.saturating_sub(k) / s + 1).clamp(1, out_h);
        let mut bands = Vec::new();
        let mut keys: Vec<(usize, usize, usize)> = Vec::new();
        let mut plans = Vec::new();
        let mut o0 = 0;
        while o0 < out_h {
            let o1 = (o0 + rows).min(out_h);
            // First and one-past-last input rows the band reads, before clipping.
            let first = (o0 * s) as isize - pt as isize;
            let end = ((o1 - 1) * s + k) as isize - pt as isize;
            let in_row0 = first.max(0) as usize;
            let in_end = (end.min(h as isize)) as usize;
            let top = (-first).max(0) as usize;
            let bottom = (end - h as isize).max(0) as usize;
            let key = (in_end - in_row0, top, bottom);
            let plan = match keys.iter().position(|&k| k == key) {
                Some(i) => i,
                None => {
                    let mut e = *ed;
                    e.batch = 1;
                    e.in_h = key.0;
                    let mut d = *sd;
                    d.batch = 1;
                    d.in_h = key.0;
                    d.padding.top = top;
                    d.padding.bottom = bottom;
                    debug_assert_eq!(d.validate()?.out_h, o1 - o0);
                    plans.push((
                        FusedConv::new(&e, ew, efold, eact, false)?,
                        FusedConv::new(&d, sw, sfold, sact, false)?,
                    ));
                    keys.push(key);
                    keys.len() - 1
                }
            };
            bands.push(Band {
                in_row0,
                in_rows: key.0,
                out_row0: o0,
                out_rows: o1 - o0,
                plan,
            });
            o0 = o1;
        }
        Ok(Some(Banded {
            bands,
            plans,
            batch: sd.batch,
            in_row: w * ed.in_channels,
            mid_row,
            out_row: sshape.out_w * cmid,
            out_h,
            channels: cmid,
        }))
    }

    /// Floats of the band buffer.
    pub(crate) fn band_len(&self) -> usize {
        self.bands.iter().map(|b| b.in_rows).max().unwrap_or(0) * self.mid_row
    }

    /// The largest forward workspace of the band plans on `threads` threads.
    pub(crate) fn workspace_len(&self, threads: usize) -> usize {
        self.plans
            .iter()
            .flat_map(|(e, d)| [e, d])
            .map(|c| c.conv().workspace_len(ConvPass::Forward, threads))
            .max()
            .unwrap_or(0)
    }

    /// Floats of input, packed weights and output one call moves through memory (the
    /// expanded rows stay in the band buffer).
    pub(crate) fn traffic(&self) -> usize {
        let weights: usize = self
            .plans
            .first()
            .map_or(0, |(e, d)| e.packed_len() + d.packed_len());
        let h_in = self.bands.iter().map(|b| b.in_row0 + b.in_rows).max();
        self.batch * (h_in.unwrap_or(0) * self.in_row + self.out_h * self.out_row) + weights
    }

    /// Runs the expansion and k×k convolution of the batch `x` into `d`, band by band,
    /// and writes the per-image channel means of `d` to `pooled` (`[N][C_mid]`) — the
    /// squeeze. `band` and `ws` are scratch of at least [`Banded::band_len`] and
    /// [`Banded::workspace_len`] floats. Each call is timed for the profile.
    pub(crate) fn run(
        &self,
        x: &[f32],
        d: &mut [f32],
        pooled: &mut [f32],
        band: &mut [f32],
        ws: &mut [f32],
    ) -> Result<()> {
        let c = self.channels;
        let x_img = x.len() / self.batch;
        let d_img = self.out_h * self.out_row;
        let scale = 1.0 / (d_img / c) as f32;
        for n in 0..self.batch {
            let sums = &mut pooled[n * c..(n + 1) * c];
            sums.fill(0.0);
            for b in &self.bands {
                let (expand, spatial) = &self.plans[b.plan];
                let xs = &x[n * x_img + b.in_row0 * self.in_row..][..b.in_rows * self.in_row];
                let e = &mut band[..b.in_rows * self.mid_row];
                timed(CONV_1X1_FWD, || expand.run(xs, None, e, ws))?;
                let start = n * d_img + b.out_row0 * self.out_row;
                let ds = &mut d[start..start + b.out_rows * self.out_row];
                timed(CONV_KXK_FWD, || spatial.run(e, None, ds, ws))?;
                // The squeeze, while the band's output is in cache.
                for px in ds.chunks_exact(c) {
                    for (s, v) in sums.iter_mut().zip(px) {
                        *s += v;
                    }
                }
            }
            for s in sums.iter_mut() {
                *s *= scale;
            }
        }
        Ok(())
    }
}

/// When a block runs depth-first and how large its bands are.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct BandPolicy {
    /// Bytes of expanded rows a band may hold.
    pub band_bytes: usize,
    /// A block runs depth-first only when its whole expanded tensor (all images) is
    /// larger than this.
    pub min_tensor_bytes: usize,
}

impl BandPolicy {
    /// The policy for the machine it runs on: bands of half of the L2 caches of the
    /// threads that share a band's rows (the other half holds the input rows, the
    /// weights and the output rows), for blocks whose expanded tensor would not stay
    /// in the last-level cache (larger than half of it) — a tensor that stays there
    /// gains nothing from bands but their extra calls. Cache sizes as the operating
    /// system reports them for CPU 0 (1 MiB of L2 and 8 MiB of L3 where it reports
    /// none).
    pub(crate) fn for_machine(threads: usize) -> BandPolicy {
        BandPolicy {
            band_bytes: cache_bytes(2).unwrap_or(1 << 20) * threads.max(1) / 2,
            min_tensor_bytes: cache_bytes(3).unwrap_or(8 << 20) / 2,
        }
    }

    /// Bands of `band_bytes` for every block whose expanded image is larger.
    pub(crate) fn bands_of(band_bytes: usize) -> BandPolicy {
        BandPolicy {
            band_bytes,
            min_tensor_bytes: 0,
        }
    }
}

/// The size of CPU 0's unified or data cache of `level`, from Linux's sysfs.
fn cache_bytes(level: usize) -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    for i in 0..8 {
        let read = |f: &str| std::fs::read_to_string(dir.join(format!("index{i}/{f}")));
        let (Ok(l), Ok(kind), Ok(size)) = (read("level"), read("type"), read("size")) else {
            continue;
        };
        if l.trim() != level.to_string() || kind.trim() == "Instruction" {
            continue;
        }
        let size = size.trim();
        let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
        let v: usize = digits.parse().ok()?;
        return match unit {
            "K" => Some(v << 10),
            "M" => Some(v << 20),
            "" => Some(v),
            _ => None,
        };
    }
    None
}
