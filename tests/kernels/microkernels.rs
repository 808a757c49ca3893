//! The microkernel tables entry by entry: shapes chosen so that every entry of every
//! level's table runs — the GEMM panel tiles (every panel width, masked and in-place
//! `B`, strided `A`), the grouped conv and weight-gradient runs (every vector count,
//! every input pixel-stride class), the depthwise block kinds (1, 2, 4 vectors and a
//! partial one; tap-list, sliding-window, packed-row and bias entries) — with every
//! remainder (run lengths 1 to past the largest tile height, channel tails), each
//! against the plain f64 reference.

use crate::common::conv::{ConvCase, Passes};
use crate::common::{Rng, at_level_every_tile, levels, rel_err};
use effnet::kernels::conv::{Conv2d, ConvDesc, ConvFamily, GradMode};
use effnet::kernels::fully_connected::FullyConnected;
use effnet::simd::with_level;

const TOL: f64 = 2e-5;

/// `y = x·W + b` (`x: [m][k]`, `W: [k][n]`), `dx = dy·Wᵀ`, `dW = xᵀ·dy`, in f64.
fn fc_reference(
    m: usize,
    k: usize,
    n: usize,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    dy: &[f32],
) -> [Vec<f64>; 3] {
    let mut y = vec![0.0; m * n];
    let mut dx = vec![0.0; m * k];
    let mut dw = vec![0.0; k * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = b[j] as f64
                + (0..k)
                    .map(|p| x[i * k + p] as f64 * w[p * n + j] as f64)
                    .sum::<f64>();
        }
        for p in 0..k {
            dx[i * k + p] = (0..n)
                .map(|j| dy[i * n + j] as f64 * w[p * n + j] as f64)
                .sum();
        }
    }
    for p in 0..k {
        for j in 0..n {
            dw[p * n + j] = (0..m)
                .map(|i| x[i * k + p] as f64 * dy[i * n + j] as f64)
                .sum();
        }
    }
    [y, dx, dw]
}

/// The GEMM's panel tiles: rows 1–26 (every remainder of every tile height up to 12,
/// and two tiles past it), columns giving every panel width of 1–4 vectors of 8 and 16
/// lanes with and without a partial last vector. The forward pass reads a packed `B`,
/// the backward-data pass a packed transposed `B`, the weight gradient `B` in place
/// (masked for partial vectors) and a strided `A` (`xᵀ`).
#[test]
fn gemm_panel_tiles_match_the_reference() {
    let cols = [
        1, 5, 8, 9, 16, 17, 24, 31, 32, 33, 47, 48, 49, 63, 64, 65, 80,
    ];
    let mut r = Rng::new(11);
    for level in levels() {
        with_level(level, || {
            for m in 1..=26 {
                for &n in &cols {
                    for k in [1, 7] {
                        let fc = FullyConnected::new(m, k, n).unwrap();
                        let (x, w, b, dy) = (r.vec(m * k), r.vec(k * n), r.vec(n), r.vec(m * n));
                        let [y_ref, dx_ref, dw_ref] = fc_reference(m, k, n, &x, &w, &b, &dy);
                        let mut y = vec![f32::NAN; m * n];
                        fc.forward(&x, &w, Some(&b), &mut y).unwrap();
                        let mut dx = vec![f32::NAN; m * k];
                        fc.backward_data(&dy, &w, &mut dx).unwrap();
                        let mut dw = vec![f32::NAN; k * n];
                        fc.backward_weight(&x, &dy, &mut dw, None, GradMode::Overwrite)
                            .unwrap();
                        for (name, got, want) in [
                            ("forward", &y, &y_ref),
                            ("backward_data", &dx, &dx_ref),
                            ("dw", &dw, &dw_ref),
                        ] {
                            let e = rel_err(got, want);
                            assert!(e < TOL, "{level} m {m} n {n} k {k} {name}: rel err {e}");
                        }
                    }
                }
            }
        });
    }
}

/// Every pass of `d` on `family`'s kernels at every level against the reference.
fn check(d: &ConvDesc, family: ConvFamily, seed: u64) {
    let c = ConvCase::new(d, seed);
    let refs = c.references();
    for level in levels() {
        let run = |tiles: &str| {
            let conv = Conv2d::with_family(d, family, level).unwrap();
            let o = c.run(&Passes::Plan(&conv));
            for (name, e) in o.errors(&refs, rel_err) {
                assert!(e < TOL, "{level} {tiles} {name} {d:?}: rel err {e}");
            }
        };
        // The grouped plans have two tile choices at AVX-512; the others one.
        if family == ConvFamily::Grouped {
            at_level_every_tile(level, run);
        } else {
            with_level(level, || run(""));
        }
    }
}

/// The grouped runs: output widths 1–17 and 33 (every tile height up to 16 alone, then
/// split runs), for every vector count of output channels (16 lanes: 16, 32, 48, 64
/// channels per group, and a partial vector; 8 lanes: twice as many vectors), every
/// input pixel-stride class of the conv run (8, 16, 32 floats and others) and of the
/// weight-gradient run (input channels × taps per kernel row), at stride 1 and 2.
/// Kernels with one column, or dilated, keep the AVX-512 sliding rows out, so the
/// general runs are tested at every level; the 3×3 rows take the sliding ones.
#[test]
fn grouped_runs_match_the_reference() {
    // (channels per group in, out, kernel, stride, dilation)
    type Config = (usize, usize, (usize, usize), usize, usize);
    let configs: [Config; 9] = [
        (8, 8, (3, 1), 1, 1),
        (16, 16, (3, 1), 1, 1),
        (16, 16, (1, 3), 2, 2),
        (32, 48, (2, 1), 1, 1),
        (3, 20, (1, 1), 1, 1),
        (16, 64, (3, 3), 1, 2),
        (5, 33, (2, 2), 2, 1),
        (16, 16, (3, 3), 1, 1),
        (16, 16, (5, 5), 2, 1),
    ];
    let mut seed = 0;
    for &(cig, cog, (kh, kw), stride, dil) in &configs {
        for ow in (1..=17).chain([33]) {
            // Input width giving `ow` outputs with symmetric padding.
            let span = dil * (kw - 1) + 1;
            let w_in = (ow - 1) * stride + span - 2 * ((span - 1) / 2);
            let d = ConvDesc::new(1, (3, w_in.max(1)), 2 * cig, 2 * cog, (kh, kw))
                .with_group_size(cig)
                .with_stride(stride)
                .with_dilation(dil)
                .with_symmetric_padding();
            if d.validate().is_err() {
                continue;
            }
            seed += 1;
            check(&d, ConvFamily::Grouped, seed);
        }
    }
}

/// The depthwise entries: every block kind (channel counts giving 1, 2 and 4 full
/// vectors and a partial one at 8 and 16 lanes), the tap-list runs (3×3 stride 2,
/// 7×7), the sliding-window runs (3×3 and 5×5 stride 1), packed rows (narrow images)
/// and in-place interior runs with border runs (images wider than 32), run lengths
/// 1–20 and past the widest tile, the packed-row, weight-gradient and bias entries.
#[test]
fn depthwise_entries_match_the_reference() {
    let channels = [5, 8, 16, 21, 32, 40, 64, 67];
    let kernels = [(3, 1), (5, 1), (3, 2), (7, 1)];
    let widths: Vec<usize> = (1..=20).chain([33, 41]).collect();
    let mut seed = 1000;
    for &c in &channels {
        for &(k, s) in &kernels {
            for &w in &widths {
                let d = ConvDesc::depthwise(1, (k + 1, w), c, k, s);
                if d.validate().is_err() {
                    continue;
                }
                seed += 1;
                check(&d, ConvFamily::Depthwise, seed);
            }
        }
    }
}
