//! The counter-based random generator behind every random draw of the library (dropout
//! and drop-connect masks, mixup and cutmix, data augmentation, shuffling): a number is
//! a pure function of `(seed, stream, index)`, so any element can be drawn
//! independently, in any order, on any thread, and results never depend on the thread
//! count or the SIMD level.

/// SplitMix64's output function: a bijective 64-bit mixer.
#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A bijective 32-bit mixer (xor-shift-multiply, constants of the "lowbias32" hash),
/// cheap enough to vectorize.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x21F0_AAAD);
    x ^= x >> 15;
    x = x.wrapping_mul(0x735A_2D97);
    x ^ (x >> 15)
}

/// A counter-based random generator: the number at `index` is a fixed hash of
/// `(seed, stream, index)`, so any element can be drawn independently, in any order, on
/// any thread.
///
/// [`CounterRng::bits`] (32 bits) keys two rounds of a 32-bit mixer with the 64-bit
/// key; [`CounterRng::u64_at`] (64 bits) is SplitMix64 at position `index` of the
/// key's stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct CounterRng {
    key: u64,
}

impl CounterRng {
    /// The generator for `seed` and `stream` (a small number naming the use).
    pub fn new(seed: u64, stream: u64) -> CounterRng {
        CounterRng {
            key: mix64(seed ^ mix64(stream.wrapping_add(0x632B_E59B_D9B4_E019))),
        }
    }

    /// 32 random bits at `index`.
    #[inline(always)]
    pub fn bits(&self, index: u64) -> u32 {
        let k0 = self.key as u32;
        let k1 = (self.key >> 32) as u32;
        let lo = index as u32;
        let hi = (index >> 32) as u32;
        mix32(mix32(lo ^ k0).wrapping_add(hi ^ k1))
    }

    /// 64 random bits at `index`.
    pub fn u64_at(&self, index: u64) -> u64 {
        mix64(
            self.key
                .wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    }

    /// Uniform in `[0, 1)` with 24 bits of resolution, at `index`.
    pub fn uniform(&self, index: u64) -> f32 {
        (self.bits(index) >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 bits of resolution, at `index`.
    pub fn uniform_f64(&self, index: u64) -> f64 {
        (self.u64_at(index) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}
