//! Oracle tests for the squeeze-and-excite pieces, the head, the loss and the
//! stochastic regularizers: every op against a plain f64 reference on random shapes at
//! every SIMD level; backward passes against finite differences of the f64 reference;
//! adjoint identities; bitwise determinism for 1, 2 and 8 threads; statistics of the
//! seeded masks and mixing draws; typed errors.

use crate::common::{Rng, dot, in_pool, levels, proptest_cases, rel_err, to64};
use effnet::Error;
use effnet::kernels::conv::GradMode;
use effnet::kernels::fully_connected::FullyConnected;
use effnet::kernels::gate;
use effnet::kernels::loss::{CrossEntropy, Targets};
use effnet::kernels::pool::{self, Nhwc};
use effnet::kernels::regularize::{
    self, CounterRng, CutBox, DropConnect, Dropout, MixDraw, Pairing,
};
use effnet::simd::with_level;
use proptest::prelude::*;

const TOL: f64 = 2e-5;

/// Channel counts around the SIMD widths (1, 8, 16 lanes; 4-vector blocks of 64).
const CHANNELS: [usize; 10] = [1, 3, 7, 8, 16, 17, 33, 64, 70, 129];

fn nhwc() -> impl Strategy<Value = Nhwc> {
    (1usize..=3, 1usize..=9, 1usize..=9, 0..CHANNELS.len())
        .prop_map(|(n, h, w, ci)| Nhwc::new(n, h, w, CHANNELS[ci]).unwrap())
}

// ---------------------------------------------------------------------------------
// f64 references
// ---------------------------------------------------------------------------------

fn pool_ref(s: &Nhwc, x: &[f64]) -> Vec<f64> {
    let (c, p) = (s.channels(), s.pixels());
    let mut y = vec![0.0f64; s.pooled_len()];
    for (i, v) in x.iter().enumerate() {
        let n = i / (p * c);
        y[n * c + i % c] += *v;
    }
    y.iter().map(|v| v / p as f64).collect()
}

fn pool_bwd_ref(s: &Nhwc, dy: &[f32]) -> Vec<f64> {
    let (c, p) = (s.channels(), s.pixels());
    (0..s.len())
        .map(|i| dy[(i / (p * c)) * c + i % c] as f64 / p as f64)
        .collect()
}

fn gate_ref(s: &Nhwc, x: &[f64], g: &[f64]) -> Vec<f64> {
    let (c, p) = (s.channels(), s.pixels());
    x.iter()
        .enumerate()
        .map(|(i, v)| v * g[(i / (p * c)) * c + i % c])
        .collect()
}

/// The gate's backward in f64: `dx`, `dg`, and the scale of each `dg` sum,
/// `Σ |dy·x|`, which f32 rounding of the sum is relative to (a sum that cancels to
/// near zero has a large relative error but a small one against its terms).
fn gate_bwd_ref(s: &Nhwc, dy: &[f32], x: &[f32], g: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (c, p) = (s.channels(), s.pixels());
    let mut dx = vec![0.0; s.len()];
    let mut dg = vec![0.0; s.pooled_len()];
    let mut scale = vec![0.0; s.pooled_len()];
    for i in 0..s.len() {
        let j = (i / (p * c)) * c + i % c;
        dx[i] = dy[i] as f64 * g[j] as f64;
        dg[j] += dy[i] as f64 * x[i] as f64;
        scale[j] += (dy[i] as f64 * x[i] as f64).abs();
    }
    (dx, dg, scale)
}

/// `‖got − want‖ / ‖scale‖`.
fn err_against(got: &[f32], want: &[f64], scale: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, w)| (g as f64 - w).powi(2))
        .sum();
    let den: f64 = scale.iter().map(|v| v * v).sum();
    (num / den.max(1e-300)).sqrt()
}

/// `y = x·W + b` in f64 (`x` `[r][i]`, `w` `[i][o]`).
fn fc_ref(r: usize, i: usize, o: usize, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let mut y = vec![0.0; r * o];
    for a in 0..r {
        for c in 0..o {
            let mut s = b.map_or(0.0, |b| b[c]);
            for k in 0..i {
                s += x[a * i + k] * w[k * o + c];
            }
            y[a * o + c] = s;
        }
    }
    y
}

/// Mean smoothed cross-entropy in f64 and its gradient; `t` are the unsmoothed
/// targets `[n][k]`.
fn ce_ref(n: usize, k: usize, z: &[f64], t: &[f64], eps: f64) -> (f64, Vec<f64>) {
    let mut loss = 0.0;
    let mut g = vec![0.0; n * k];
    for r in 0..n {
        let row = &z[r * k..(r + 1) * k];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let se: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let lse = m + se.ln();
        let ts: Vec<f64> = (0..k)
            .map(|j| (1.0 - eps) * t[r * k + j] + eps / k as f64)
            .collect();
        let tsum: f64 = ts.iter().sum();
        for j in 0..k {
            loss += ts[j] * (lse - row[j]);
            g[r * k + j] = ((row[j] - lse).exp() * tsum - ts[j]) / n as f64;
        }
    }
    (loss / n as f64, g)
}

fn one_hot(labels: &[usize], k: usize) -> Vec<f64> {
    let mut t = vec![0.0; labels.len() * k];
    for (r, &l) in labels.iter().enumerate() {
        t[r * k + l] = 1.0;
    }
    t
}

/// Central difference of `f` at `v[j]` (f64, step `h`).
fn fd(v: &mut [f64], j: usize, h: f64, f: &dyn Fn(&[f64]) -> f64) -> f64 {
    let old = v[j];
    v[j] = old + h;
    let up = f(v);
    v[j] = old - h;
    let down = f(v);
    v[j] = old;
    (up - down) / (2.0 * h)
}

fn dot64(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum()
}

// ---------------------------------------------------------------------------------
// Global average pool
// ---------------------------------------------------------------------------------

fn check_pool(s: &Nhwc, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let x = rng.vec(s.len());
    let dy = rng.vec(s.pooled_len());
    let base = rng.vec(s.len());
    let want = pool_ref(s, &to64(&x));
    let want_dx = pool_bwd_ref(s, &dy);
    for level in levels() {
        with_level(level, || {
            let mut y = vec![f32::NAN; s.pooled_len()];
            pool::global_avg_pool(s, &x, &mut y).unwrap();
            let e = rel_err(&y, &want);
            prop_assert!(e < TOL, "{level} {s:?}: pool rel err {e}");
            let mut dx = vec![f32::NAN; s.len()];
            pool::global_avg_pool_backward(s, &dy, &mut dx, GradMode::Overwrite).unwrap();
            let e = rel_err(&dx, &want_dx);
            prop_assert!(e < TOL, "{level} {s:?}: pool bwd rel err {e}");
            let mut acc = base.clone();
            pool::global_avg_pool_backward(s, &dy, &mut acc, GradMode::Accumulate).unwrap();
            let want_acc: Vec<f64> = want_dx
                .iter()
                .zip(&base)
                .map(|(a, b)| a + *b as f64)
                .collect();
            let e = rel_err(&acc, &want_acc);
            prop_assert!(e < TOL, "{level} {s:?}: pool bwd accumulate rel err {e}");
            Ok(())
        })?;
    }
    Ok(())
}

fn check_gate(s: &Nhwc, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let x = rng.vec(s.len());
    let g = rng.vec(s.pooled_len());
    let dy = rng.vec(s.len());
    let want = gate_ref(s, &to64(&x), &to64(&g));
    let (want_dx, want_dg, dg_scale) = gate_bwd_ref(s, &dy, &x, &g);
    for level in levels() {
        with_level(level, || {
            let mut y = vec![f32::NAN; s.len()];
            gate::forward(s, &x, &g, &mut y).unwrap();
            let e = rel_err(&y, &want);
            prop_assert!(e < TOL, "{level} {s:?}: gate rel err {e}");
            let mut inplace = x.clone();
            gate::forward_inplace(s, &mut inplace, &g).unwrap();
            prop_assert!(inplace == y, "{level} {s:?}: in-place gate differs");
            let mut dx = vec![f32::NAN; s.len()];
            let mut dg = vec![f32::NAN; s.pooled_len()];
            gate::backward(s, &dy, &x, &g, &mut dx, &mut dg).unwrap();
            let e = rel_err(&dx, &want_dx);
            prop_assert!(e < TOL, "{level} {s:?}: gate dx rel err {e}");
            let e = err_against(&dg, &want_dg, &dg_scale);
            prop_assert!(
                e < TOL,
                "{level} {s:?}: gate dgate error {e} (against Σ|dy·x|)"
            );
            Ok(())
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Fully connected
// ---------------------------------------------------------------------------------

const FEATURES: [usize; 9] = [1, 2, 7, 16, 17, 33, 48, 100, 131];

fn check_fc(r: usize, i: usize, o: usize, bias: bool, seed: u64) -> Result<(), TestCaseError> {
    let fc = FullyConnected::new(r, i, o).unwrap();
    let mut rng = Rng::new(seed);
    let x = rng.vec(fc.x_len());
    let w = rng.vec(fc.w_len());
    let b = rng.vec(o);
    let dy = rng.vec(fc.y_len());
    let base_w = rng.vec(fc.w_len());
    let base_b = rng.vec(o);
    let (x64, w64) = (to64(&x), to64(&w));
    let want = fc_ref(r, i, o, &x64, &w64, bias.then(|| to64(&b)).as_deref());
    // dx = dy·Wᵀ: the product with the transposed weight.
    let wt: Vec<f64> = (0..o * i).map(|q| w64[(q % i) * o + q / i]).collect();
    let want_dx = fc_ref(r, o, i, &to64(&dy), &wt, None);
    let xt: Vec<f64> = (0..i * r).map(|q| x64[(q % r) * i + q / r]).collect();
    let want_dw = fc_ref(i, r, o, &xt, &to64(&dy), None);
    let want_db: Vec<f64> = (0..o)
        .map(|c| (0..r).map(|a| dy[a * o + c] as f64).sum())
        .collect();
    for level in levels() {
        with_level(level, || {
            let mut y = vec![f32::NAN; fc.y_len()];
            fc.forward(&x, &w, bias.then_some(&b[..]), &mut y).unwrap();
            let e = rel_err(&y, &want);
            prop_assert!(e < TOL, "{level} fc {r}x{i}->{o}: fwd rel err {e}");
            let mut dx = vec![f32::NAN; fc.x_len()];
            fc.backward_data(&dy, &w, &mut dx).unwrap();
            let e = rel_err(&dx, &want_dx);
            prop_assert!(e < TOL, "{level} fc {r}x{i}->{o}: bwd data rel err {e}");
            let mut dw = vec![f32::NAN; fc.w_len()];
            let mut db = vec![f32::NAN; o];
            fc.backward_weight(&x, &dy, &mut dw, Some(&mut db), GradMode::Overwrite)
                .unwrap();
            let e = rel_err(&dw, &want_dw);
            prop_assert!(e < TOL, "{level} fc {r}x{i}->{o}: dw rel err {e}");
            let e = rel_err(&db, &want_db);
            prop_assert!(e < TOL, "{level} fc {r}x{i}->{o}: db rel err {e}");
            let (mut dw, mut db) = (base_w.clone(), base_b.clone());
            fc.backward_weight(&x, &dy, &mut dw, Some(&mut db), GradMode::Accumulate)
                .unwrap();
            let acc: Vec<f64> = want_dw
                .iter()
                .zip(&base_w)
                .map(|(a, b)| a + *b as f64)
                .collect();
            let e = rel_err(&dw, &acc);
            prop_assert!(
                e < TOL,
                "{level} fc {r}x{i}->{o}: dw accumulate rel err {e}"
            );
            let acc: Vec<f64> = want_db
                .iter()
                .zip(&base_b)
                .map(|(a, b)| a + *b as f64)
                .collect();
            let e = rel_err(&db, &acc);
            prop_assert!(
                e < TOL,
                "{level} fc {r}x{i}->{o}: db accumulate rel err {e}"
            );
            Ok(())
        })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Cross-entropy
// ---------------------------------------------------------------------------------

fn check_ce(n: usize, k: usize, eps: f32, soft: bool, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let z: Vec<f32> = rng.vec(n * k).iter().map(|v| v * 6.0).collect();
    let labels: Vec<usize> = (0..n)
        .map(|_| (rng.next_u64() % k as u64) as usize)
        .collect();
    let soft_t: Vec<f32> = {
        let raw: Vec<f32> = rng.vec(n * k).iter().map(|v| v.abs()).collect();
        raw.chunks(k)
            .flat_map(|row| {
                let s: f32 = row.iter().sum::<f32>().max(1e-6);
                row.iter().map(move |v| v / s).collect::<Vec<_>>()
            })
            .collect()
    };
    let t64 = if soft {
        to64(&soft_t)
    } else {
        one_hot(&labels, k)
    };
    let (want_loss, want_g) = ce_ref(n, k, &to64(&z), &t64, eps as f64);
    let ce = CrossEntropy::new(n, k, eps).unwrap();
    let targets = if soft {
        Targets::Soft(&soft_t)
    } else {
        Targets::Labels(&labels)
    };
    for level in levels() {
        with_level(level, || {
            let mut g = vec![f32::NAN; n * k];
            let loss = ce.forward_backward(&z, targets, Some(&mut g)).unwrap();
            let e = (loss as f64 - want_loss).abs() / want_loss.abs().max(1.0);
            prop_assert!(
                e < TOL,
                "{level} ce {n}x{k} eps {eps}: loss {loss} vs {want_loss}"
            );
            // Each gradient element is `(p - t) / n`: measured against the size of
            // its terms (`p - t` cancels when the prediction is right), not of the
            // difference alone.
            let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
            let diff: Vec<f64> = g.iter().zip(&want_g).map(|(a, b)| *a as f64 - b).collect();
            let scale = norm(&want_g) + norm(&t64) / n as f64;
            let e = norm(&diff) / scale;
            prop_assert!(e < 1e-6, "{level} ce {n}x{k} eps {eps}: grad rel err {e}");
            let alone = ce.forward_backward(&z, targets, None).unwrap();
            prop_assert!(alone == loss, "{level}: loss without the gradient differs");
            Ok(())
        })?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: proptest_cases(32), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_reference(s in nhwc(), seed in any::<u64>()) {
        check_pool(&s, seed)?;
    }

    #[test]
    fn gate_matches_reference(s in nhwc(), seed in any::<u64>()) {
        check_gate(&s, seed)?;
    }

    #[test]
    fn fully_connected_matches_reference(
        r in 1usize..=11,
        i in 0..FEATURES.len(),
        o in 0..FEATURES.len(),
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_fc(r, FEATURES[i], FEATURES[o], bias, seed)?;
    }

    #[test]
    fn cross_entropy_matches_reference(
        n in 1usize..=9,
        k in prop_oneof![Just(1usize), Just(2), Just(5), Just(10), Just(17), Just(100), Just(1000)],
        eps in prop_oneof![Just(0.0f32), Just(0.1), Just(0.5), Just(0.9)],
        soft in any::<bool>(),
        seed in any::<u64>(),
    ) {
        check_ce(n, k, eps, soft, seed)?;
    }
}

/// Shapes of EfficientNet-B0's SE squeezes and head (with larger pixel counts than the
/// random cases, so the pixel chunking is exercised).
#[test]
fn efficientnet_shapes_match_reference() {
    for (n, h, w, c) in [
        (2, 40, 40, 96),
        (1, 7, 7, 1280),
        (2, 14, 14, 480),
        (1, 130, 3, 5),
    ] {
        let s = Nhwc::new(n, h, w, c).unwrap();
        check_pool(&s, 7 + c as u64).unwrap();
        check_gate(&s, 11 + c as u64).unwrap();
    }
    check_fc(8, 1280, 1000, true, 3).unwrap();
    check_fc(4, 96, 4, true, 5).unwrap();
    check_fc(4, 4, 96, true, 6).unwrap();
    check_fc(70, 33, 140, false, 9).unwrap();
    // Enough rows for the in-place row-block path of every pass.
    check_fc(130, 131, 130, true, 10).unwrap();
    check_ce(8, 1000, 0.1, false, 1).unwrap();
    check_ce(8, 1000, 0.1, true, 2).unwrap();
}

// ---------------------------------------------------------------------------------
// Adjoint identities and finite differences
// ---------------------------------------------------------------------------------

#[test]
fn adjoint_identities_hold() {
    let mut rng = Rng::new(77);
    for (n, h, w, c) in [(2, 5, 3, 17), (1, 1, 1, 1), (3, 4, 4, 40)] {
        let s = Nhwc::new(n, h, w, c).unwrap();
        let x = rng.vec(s.len());
        let dy = rng.vec(s.pooled_len());
        let g = rng.vec(s.pooled_len());
        let dz = rng.vec(s.len());
        for level in levels() {
            with_level(level, || {
                // Pool: ⟨dy, pool(x)⟩ = ⟨pool_bwd(dy), x⟩.
                let mut y = vec![0.0; s.pooled_len()];
                pool::global_avg_pool(&s, &x, &mut y).unwrap();
                let mut dx = vec![0.0; s.len()];
                pool::global_avg_pool_backward(&s, &dy, &mut dx, GradMode::Overwrite).unwrap();
                let (l, r) = (dot(&dy, &y), dot(&dx, &x));
                assert!(
                    (l - r).abs() < 1e-5 * (1.0 + l.abs()),
                    "{level} pool: {l} vs {r}"
                );
                // Gate, linear in x: ⟨dz, x·g⟩ = ⟨dz·g, x⟩; linear in g: = ⟨dgate, g⟩.
                let mut yg = vec![0.0; s.len()];
                gate::forward(&s, &x, &g, &mut yg).unwrap();
                let mut dxg = vec![0.0; s.len()];
                let mut dg = vec![0.0; s.pooled_len()];
                gate::backward(&s, &dz, &x, &g, &mut dxg, &mut dg).unwrap();
                let l = dot(&dz, &yg);
                for r in [dot(&dxg, &x), dot(&dg, &g)] {
                    assert!(
                        (l - r).abs() < 1e-5 * (1.0 + l.abs()),
                        "{level} gate: {l} vs {r}"
                    );
                }
            });
        }
    }
    // Fully connected: ⟨dy, xW⟩ = ⟨dy·Wᵀ, x⟩ = ⟨xᵀ·dy, W⟩.
    let fc = FullyConnected::new(5, 19, 23).unwrap();
    let x = rng.vec(fc.x_len());
    let w = rng.vec(fc.w_len());
    let dy = rng.vec(fc.y_len());
    for level in levels() {
        with_level(level, || {
            let mut y = vec![0.0; fc.y_len()];
            fc.forward(&x, &w, None, &mut y).unwrap();
            let mut dx = vec![0.0; fc.x_len()];
            fc.backward_data(&dy, &w, &mut dx).unwrap();
            let mut dw = vec![0.0; fc.w_len()];
            fc.backward_weight(&x, &dy, &mut dw, None, GradMode::Overwrite)
                .unwrap();
            let l = dot(&dy, &y);
            for r in [dot(&dx, &x), dot(&dw, &w)] {
                assert!(
                    (l - r).abs() < 1e-4 * (1.0 + l.abs()),
                    "{level} fc: {l} vs {r}"
                );
            }
        });
    }
}

/// Central differences (in f64, of the f64 reference forward passes) against the
/// kernels' backward passes, on tiny shapes.
#[test]
#[allow(clippy::needless_range_loop)]
fn finite_differences_agree_with_backward() {
    let h = 1e-4;
    let close = |what: &str, fd: f64, got: f32| {
        assert!(
            (fd - got as f64).abs() < 1e-4 * (1.0 + fd.abs()),
            "{what}: fd {fd} vs backward {got}"
        );
    };
    let mut rng = Rng::new(4242);
    // Pool.
    let s = Nhwc::new(2, 3, 2, 5).unwrap();
    let x = rng.vec(s.len());
    let dy = rng.vec(s.pooled_len());
    let mut dx = vec![0.0; s.len()];
    pool::global_avg_pool_backward(&s, &dy, &mut dx, GradMode::Overwrite).unwrap();
    let loss = |x: &[f64]| dot64(&dy, &pool_ref(&s, x));
    let mut x64 = to64(&x);
    for j in 0..s.len() {
        close(&format!("pool dx[{j}]"), fd(&mut x64, j, h, &loss), dx[j]);
    }
    // Gate, both inputs.
    let s = Nhwc::new(2, 2, 3, 4).unwrap();
    let x = rng.vec(s.len());
    let g = rng.vec(s.pooled_len());
    let dz = rng.vec(s.len());
    let mut dx = vec![0.0; s.len()];
    let mut dg = vec![0.0; s.pooled_len()];
    gate::backward(&s, &dz, &x, &g, &mut dx, &mut dg).unwrap();
    let (mut x64, mut g64) = (to64(&x), to64(&g));
    let gc = g64.clone();
    for j in 0..s.len() {
        let f = |x: &[f64]| dot64(&dz, &gate_ref(&s, x, &gc));
        close(&format!("gate dx[{j}]"), fd(&mut x64, j, h, &f), dx[j]);
    }
    let xc = x64.clone();
    for j in 0..s.pooled_len() {
        let f = |g: &[f64]| dot64(&dz, &gate_ref(&s, &xc, g));
        close(&format!("gate dgate[{j}]"), fd(&mut g64, j, h, &f), dg[j]);
    }
    // Fully connected: x, W, b.
    let (r, i, o) = (3, 4, 5);
    let fc = FullyConnected::new(r, i, o).unwrap();
    let x = rng.vec(fc.x_len());
    let w = rng.vec(fc.w_len());
    let b = rng.vec(o);
    let dy = rng.vec(fc.y_len());
    let mut dx = vec![0.0; fc.x_len()];
    fc.backward_data(&dy, &w, &mut dx).unwrap();
    let mut dw = vec![0.0; fc.w_len()];
    let mut db = vec![0.0; o];
    fc.backward_weight(&x, &dy, &mut dw, Some(&mut db), GradMode::Overwrite)
        .unwrap();
    let (mut x64, mut w64, mut b64) = (to64(&x), to64(&w), to64(&b));
    let (xc, wc, bc) = (x64.clone(), w64.clone(), b64.clone());
    for j in 0..fc.x_len() {
        let f = |x: &[f64]| dot64(&dy, &fc_ref(r, i, o, x, &wc, Some(&bc)));
        close(&format!("fc dx[{j}]"), fd(&mut x64, j, h, &f), dx[j]);
    }
    for j in 0..fc.w_len() {
        let f = |w: &[f64]| dot64(&dy, &fc_ref(r, i, o, &xc, w, Some(&bc)));
        close(&format!("fc dw[{j}]"), fd(&mut w64, j, h, &f), dw[j]);
    }
    for j in 0..o {
        let f = |b: &[f64]| dot64(&dy, &fc_ref(r, i, o, &xc, &wc, Some(b)));
        close(&format!("fc db[{j}]"), fd(&mut b64, j, h, &f), db[j]);
    }
    // Cross-entropy with smoothing, hard and soft targets.
    let (n, k) = (3, 6);
    let z: Vec<f32> = rng.vec(n * k).iter().map(|v| v * 3.0).collect();
    let labels = [4usize, 0, 5];
    let soft: Vec<f32> = (0..n * k).map(|q| ((q * 7) % 5) as f32 / 10.0).collect();
    for (eps, targets, t64) in [
        (0.1f32, Targets::Labels(&labels), one_hot(&labels, k)),
        (0.3, Targets::Soft(&soft), to64(&soft)),
        (0.0, Targets::Labels(&labels), one_hot(&labels, k)),
    ] {
        let ce = CrossEntropy::new(n, k, eps).unwrap();
        let mut gz = vec![0.0; n * k];
        ce.forward_backward(&z, targets, Some(&mut gz)).unwrap();
        let mut z64 = to64(&z);
        for j in 0..n * k {
            let f = |z: &[f64]| ce_ref(n, k, z, &t64, eps as f64).0;
            close(
                &format!("ce eps {eps} dz[{j}]"),
                fd(&mut z64, j, h, &f),
                gz[j],
            );
        }
    }
}

#[test]
fn cross_entropy_is_stable_for_large_logits() {
    let (n, k) = (2, 5);
    let z = [
        1000.0f32,
        -1000.0,
        999.0,
        0.0,
        5.0,
        -3e4,
        -3e4,
        -3e4 + 1.0,
        -3e4,
        -3e4,
    ];
    let labels = [2usize, 1];
    let ce = CrossEntropy::new(n, k, 0.1).unwrap();
    let (want, want_g) = ce_ref(n, k, &to64(&z), &one_hot(&labels, k), 0.1);
    for level in levels() {
        with_level(level, || {
            let mut g = vec![0.0; n * k];
            let loss = ce
                .forward_backward(&z, Targets::Labels(&labels), Some(&mut g))
                .unwrap();
            assert!(
                loss.is_finite() && g.iter().all(|v| v.is_finite()),
                "{level}"
            );
            assert!(
                (loss as f64 - want).abs() < 1e-3 * want.abs(),
                "{level}: {loss} vs {want}"
            );
            assert!(rel_err(&g, &want_g) < 1e-5, "{level}: {g:?} vs {want_g:?}");
        });
    }
}

// ---------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------

/// Bitwise identical results for 1, 2 and 8 threads on shapes large enough to be split
/// into several chunks.
#[test]
fn results_do_not_depend_on_thread_count() {
    let s = Nhwc::new(3, 37, 29, 24).unwrap();
    let mut rng = Rng::new(99);
    let x = rng.vec(s.len());
    let g = rng.vec(s.pooled_len());
    let dz = rng.vec(s.len());
    let fc = FullyConnected::new(70, 150, 300).unwrap();
    let fx = rng.vec(fc.x_len());
    let fw = rng.vec(fc.w_len());
    let fdy = rng.vec(fc.y_len());
    let (n, k) = (37, 1000);
    let z = rng.vec(n * k);
    let labels: Vec<usize> = (0..n).map(|i| (i * 31) % k).collect();
    let run = |threads: usize| {
        in_pool(threads, || {
            let mut out: Vec<Vec<f32>> = Vec::new();
            let mut y = vec![0.0; s.pooled_len()];
            pool::global_avg_pool(&s, &x, &mut y).unwrap();
            out.push(y);
            let mut dx = vec![0.0; s.len()];
            let mut dg = vec![0.0; s.pooled_len()];
            gate::backward(&s, &dz, &x, &g, &mut dx, &mut dg).unwrap();
            out.push(dx);
            out.push(dg);
            let mut y = vec![0.0; fc.y_len()];
            fc.forward(&fx, &fw, None, &mut y).unwrap();
            out.push(y);
            let mut dw = vec![0.0; fc.w_len()];
            let mut db = vec![0.0; 300];
            fc.backward_weight(&fx, &fdy, &mut dw, Some(&mut db), GradMode::Overwrite)
                .unwrap();
            out.push(dw);
            out.push(db);
            let ce = CrossEntropy::new(n, k, 0.1).unwrap();
            let mut gz = vec![0.0; n * k];
            let l = ce
                .forward_backward(&z, Targets::Labels(&labels), Some(&mut gz))
                .unwrap();
            out.push(vec![l]);
            out.push(gz);
            let mut m = vec![0.0; 100_003];
            Dropout::new(0.3, 5).unwrap().mask(&mut m);
            out.push(m);
            let mut y = vec![0.0; s.len()];
            Dropout::new(0.3, 5).unwrap().forward(&x, &mut y).unwrap();
            out.push(y);
            let mut y = vec![0.0; s.len()];
            DropConnect::new(0.5, 8)
                .unwrap()
                .forward_residual(3, &x, &dz, &mut y)
                .unwrap();
            out.push(y);
            out
        })
    };
    let one = run(1);
    assert!(run(2) == one, "2 threads differ from 1");
    assert!(run(8) == one, "8 threads differ from 1");
}

// ---------------------------------------------------------------------------------
// Dropout and drop-connect
// ---------------------------------------------------------------------------------

#[test]
fn dropout_masks_are_seeded_and_preserve_the_mean() {
    let len = 1 << 20;
    for p in [0.0f32, 0.1, 0.2, 0.5, 0.9] {
        let d = Dropout::new(p, 1234).unwrap();
        let mut m = vec![0.0; len];
        d.mask(&mut m);
        let mut again = vec![0.0; len];
        Dropout::new(p, 1234).unwrap().mask(&mut again);
        assert!(m == again, "p {p}: same seed, different mask");
        let scale = 1.0 / (1.0 - p);
        assert!(
            m.iter().all(|&v| v == 0.0 || v == scale),
            "p {p}: mask values"
        );
        // E[mask] = 1; the mean of 2^20 Bernoulli·scale draws has sd
        // sqrt(p/(1−p)/len) < 0.003: allow 5 sd plus a little.
        let mean: f64 = m.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
        let sd = ((p / (1.0 - p)) as f64 / len as f64).sqrt();
        assert!(
            (mean - 1.0).abs() <= 5.0 * sd + 1e-6,
            "p {p}: mean {mean}, sd {sd}"
        );
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / len as f64;
        assert!(
            (kept - (1.0 - p) as f64).abs() < 0.005,
            "p {p}: kept {kept}"
        );
        if p > 0.0 {
            let mut other = vec![0.0; len];
            Dropout::new(p, 1235).unwrap().mask(&mut other);
            assert!(other != m, "p {p}: a new seed must give a new mask");
            // Two seeds' masks are independent: agreement ≈ p² + (1−p)².
            let agree = m.iter().zip(&other).filter(|(a, b)| a == b).count() as f64 / len as f64;
            let want = (p * p + (1.0 - p) * (1.0 - p)) as f64;
            assert!(
                (agree - want).abs() < 0.005,
                "p {p}: agreement {agree} vs {want}"
            );
        }
    }
    // A mask depends on the element index only, not on the tensor's length or how the
    // work is split: a short mask is a prefix of a long one.
    let d = Dropout::new(0.4, 3).unwrap();
    let mut long = vec![0.0; 50_001];
    d.mask(&mut long);
    for short_len in [1, 17, 16_385, 33_000] {
        let mut short = vec![0.0; short_len];
        d.mask(&mut short);
        assert!(
            short[..] == long[..short_len],
            "prefix of length {short_len}"
        );
    }
    // Neighbouring elements are not correlated (a counter-based hash could fail here).
    let d = Dropout::new(0.5, 9).unwrap();
    let mut m = vec![0.0; len];
    d.mask(&mut m);
    let same = m.windows(2).filter(|w| w[0] == w[1]).count() as f64 / (len - 1) as f64;
    assert!((same - 0.5).abs() < 0.005, "neighbour agreement {same}");
}

#[test]
fn dropout_apply_uses_the_mask_at_every_level() {
    let mut rng = Rng::new(31);
    let len = 40_000 + 13;
    let x = rng.vec(len);
    let dy = rng.vec(len);
    let d = Dropout::new(0.3, 77).unwrap();
    let mut m = vec![0.0; len];
    d.mask(&mut m);
    let want: Vec<f32> = x.iter().zip(&m).map(|(a, b)| a * b).collect();
    let want_dx: Vec<f32> = dy.iter().zip(&m).map(|(a, b)| a * b).collect();
    for level in levels() {
        with_level(level, || {
            let mut y = vec![f32::NAN; len];
            d.forward(&x, &mut y).unwrap();
            assert!(y == want, "{level}: dropout forward is not x·mask");
            let mut inplace = x.clone();
            d.forward_inplace(&mut inplace);
            assert!(inplace == want, "{level}: in-place dropout differs");
            let mut dx = vec![f32::NAN; len];
            d.backward(&dy, &mut dx).unwrap();
            assert!(dx == want_dx, "{level}: dropout backward is not dy·mask");
            for (j, &v) in m.iter().enumerate().step_by(997) {
                assert_eq!(v != 0.0, d.keeps(j as u64));
            }
        });
    }
    // p = 0 is the identity.
    let mut y = vec![0.0; len];
    Dropout::new(0.0, 1).unwrap().forward(&x, &mut y).unwrap();
    assert!(y == x);
}

#[test]
#[allow(clippy::needless_range_loop)]
fn drop_connect_drops_whole_samples() {
    let mut rng = Rng::new(5);
    let (batch, per) = (64, 3 * 5 * 17);
    let x = rng.vec(batch * per);
    let skip = rng.vec(batch * per);
    let dc = DropConnect::new(0.25, 2024).unwrap();
    let scales = dc.sample_scales(batch);
    assert_eq!(
        scales,
        DropConnect::new(0.25, 2024).unwrap().sample_scales(batch)
    );
    assert!(scales.contains(&0.0) && scales.iter().any(|&s| s != 0.0));
    for level in levels() {
        with_level(level, || {
            let mut y = vec![f32::NAN; x.len()];
            dc.forward(batch, &x, &mut y).unwrap();
            let mut r = vec![f32::NAN; x.len()];
            dc.forward_residual(batch, &x, &skip, &mut r).unwrap();
            let mut dx = vec![f32::NAN; x.len()];
            dc.backward(batch, &skip, &mut dx).unwrap();
            for n in 0..batch {
                let f = scales[n];
                assert!(f == 0.0 || f == 1.0 / 0.75);
                assert_eq!(f != 0.0, dc.keeps(n));
                for j in n * per..(n + 1) * per {
                    assert_eq!(y[j], x[j] * f, "{level}: forward sample {n}");
                    assert_eq!(dx[j], skip[j] * f, "{level}: backward sample {n}");
                    let want = skip[j] as f64 + x[j] as f64 * f as f64;
                    assert!(
                        (r[j] as f64 - want).abs() < 1e-6,
                        "{level}: residual sample {n}"
                    );
                }
            }
        });
    }
    // The mean survives in expectation: over 200 000 samples, mean(scale) ≈ 1.
    let big = 200_000;
    for p in [0.05f32, 0.2, 0.5] {
        let s = DropConnect::new(p, 3).unwrap().sample_scales(big);
        let mean: f64 = s.iter().map(|&v| v as f64).sum::<f64>() / big as f64;
        let sd = ((p / (1.0 - p)) as f64 / big as f64).sqrt();
        assert!((mean - 1.0).abs() < 5.0 * sd, "p {p}: mean {mean}");
    }
}

#[test]
fn counter_rng_is_a_pure_function_of_seed_stream_and_index() {
    let a = CounterRng::new(1, 2);
    assert_eq!(a.bits(12345), CounterRng::new(1, 2).bits(12345));
    assert_ne!(a.bits(12345), CounterRng::new(1, 3).bits(12345));
    assert_ne!(a.bits(12345), CounterRng::new(2, 2).bits(12345));
    assert_ne!(a.u64_at(7), a.u64_at(8));
    // High index bits matter (tensors past 2^32 elements get fresh numbers).
    assert_ne!(a.bits(5), a.bits(5 + (1 << 32)));
    // Uniforms: mean 1/2, variance 1/12.
    let n = 200_000u64;
    for f in [&(|i| a.uniform(i) as f64) as &dyn Fn(u64) -> f64, &|i| {
        a.uniform_f64(i)
    }] {
        let v: Vec<f64> = (0..n).map(f).collect();
        assert!(v.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.003, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "var {var}");
    }
}

// ---------------------------------------------------------------------------------
// Mixup and cutmix
// ---------------------------------------------------------------------------------

#[test]
fn mixup_mixes_images_and_targets() {
    let s = Nhwc::new(5, 4, 3, 7).unwrap();
    let mut rng = Rng::new(8);
    let x = rng.vec(s.len());
    let labels = [0usize, 3, 3, 9, 1];
    let classes = 10;
    for pairing in [Pairing::Reverse, Pairing::Permutation] {
        for seed in 0..20u64 {
            for level in levels() {
                with_level(level, || {
                    let mut y = vec![f32::NAN; s.len()];
                    let mut t = vec![f32::NAN; 5 * classes];
                    let d = regularize::mixup(
                        &s, 0.8, seed, pairing, &x, &labels, classes, &mut y, &mut t,
                    )
                    .unwrap();
                    assert_eq!(d, regularize::draw_mixup(0.8, seed, 5, pairing).unwrap());
                    assert!((0.0..=1.0).contains(&d.lambda));
                    assert!(d.cut.is_none());
                    let mut sorted = d.partner.clone();
                    sorted.sort();
                    assert_eq!(sorted, vec![0, 1, 2, 3, 4], "partners are a permutation");
                    if pairing == Pairing::Reverse {
                        assert_eq!(d.partner, vec![4, 3, 2, 1, 0]);
                    }
                    let lam = d.lambda as f64;
                    let per = s.sample_len();
                    let want: Vec<f64> = (0..s.len())
                        .map(|i| {
                            let (n, j) = (i / per, i % per);
                            lam * x[i] as f64 + (1.0 - lam) * x[d.partner[n] * per + j] as f64
                        })
                        .collect();
                    assert!(rel_err(&y, &want) < 1e-6, "{level}: mixed pixels");
                    for (n, row) in t.chunks(classes).enumerate() {
                        let sum: f64 = row.iter().map(|&v| v as f64).sum();
                        assert!((sum - 1.0).abs() < 1e-6, "targets sum to {sum}");
                        let mut want = vec![0.0f64; classes];
                        want[labels[n]] += lam;
                        want[labels[d.partner[n]]] += 1.0 - lam;
                        assert!(rel_err(row, &want) < 1e-6);
                    }
                });
            }
        }
    }
}

#[test]
fn mixup_lambda_follows_beta() {
    // Beta(α, α): mean 1/2, variance 1/(4(2α+1)); 4000 draws give the mean to ±0.01
    // (5 sd) and the variance to a few percent.
    for alpha in [0.2f32, 0.8, 1.0, 4.0] {
        let n = 4000;
        let l: Vec<f64> = (0..n)
            .map(|seed| {
                regularize::draw_mixup(alpha, seed, 2, Pairing::Reverse)
                    .unwrap()
                    .lambda as f64
            })
            .collect();
        let mean = l.iter().sum::<f64>() / n as f64;
        let var = l.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        let want_var = 1.0 / (4.0 * (2.0 * alpha as f64 + 1.0));
        assert!(
            (mean - 0.5).abs() < 5.0 * (want_var / n as f64).sqrt(),
            "α {alpha}: mean {mean}"
        );
        assert!(
            (var - want_var).abs() < 0.1 * want_var,
            "α {alpha}: var {var} vs {want_var}"
        );
        assert!(l.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn cutmix_pastes_a_box_and_corrects_lambda() {
    let s = Nhwc::new(4, 9, 13, 3).unwrap();
    let mut rng = Rng::new(12);
    let x = rng.vec(s.len());
    let labels = [1usize, 0, 2, 2];
    let classes = 3;
    let mut areas = 0.0;
    let draws = 200;
    for seed in 0..draws {
        for pairing in [Pairing::Reverse, Pairing::Permutation] {
            let mut y = vec![f32::NAN; s.len()];
            let mut t = vec![f32::NAN; 4 * classes];
            let d =
                regularize::cutmix(&s, 1.0, seed, pairing, &x, &labels, classes, &mut y, &mut t)
                    .unwrap();
            let cut = d.cut.unwrap();
            assert!(
                cut.top <= cut.bottom
                    && cut.bottom <= 9
                    && cut.left <= cut.right
                    && cut.right <= 13
            );
            let want_lam = 1.0 - cut.area() as f64 / (9.0 * 13.0);
            assert!(
                (d.lambda as f64 - want_lam).abs() < 1e-6,
                "λ {} vs box {want_lam}",
                d.lambda
            );
            if pairing == Pairing::Reverse {
                areas += cut.area() as f64 / (9.0 * 13.0);
            }
            for n in 0..4 {
                for r in 0..9 {
                    for c in 0..13 {
                        let inside = (cut.top..cut.bottom).contains(&r)
                            && (cut.left..cut.right).contains(&c);
                        let src = if inside { d.partner[n] } else { n };
                        for ch in 0..3 {
                            let o = ((n * 9 + r) * 13 + c) * 3 + ch;
                            let i = ((src * 9 + r) * 13 + c) * 3 + ch;
                            assert_eq!(y[o], x[i], "seed {seed} n {n} ({r},{c})");
                        }
                    }
                }
            }
            for (n, row) in t.chunks(classes).enumerate() {
                let sum: f64 = row.iter().map(|&v| v as f64).sum();
                assert!((sum - 1.0).abs() < 1e-6);
                let mut want = vec![0.0f64; classes];
                want[labels[n]] += d.lambda as f64;
                want[labels[d.partner[n]]] += 1.0 - d.lambda as f64;
                assert!(rel_err(row, &want) < 1e-6);
            }
        }
    }
    // Clipping and flooring shrink the box: its mean area is below E[1 − λ] = 1/2 but
    // not far below (about 0.3 for a 9×13 image with timm's rule).
    let mean_area = areas / draws as f64;
    assert!(
        (0.15..0.5).contains(&mean_area),
        "mean box area {mean_area}"
    );
    // The corrected λ of an explicit draw is what apply_mix pastes.
    let d = MixDraw {
        lambda: 1.0 - 6.0 / 117.0,
        partner: vec![3, 2, 1, 0],
        cut: Some(CutBox {
            top: 2,
            bottom: 4,
            left: 5,
            right: 8,
        }),
    };
    let mut y = vec![0.0; s.len()];
    regularize::apply_mix(&s, &d, &x, &mut y).unwrap();
    let o = (3 * 13 + 7) * 3; // sample 0, row 3, column 7
    assert_eq!(y[o], x[((3 * 9 + 3) * 13 + 7) * 3]);
    assert_eq!(y[0], x[0]);
}

// ---------------------------------------------------------------------------------
// Typed errors
// ---------------------------------------------------------------------------------

#[test]
fn bad_inputs_are_typed_errors() {
    assert!(matches!(
        Nhwc::new(0, 1, 1, 1),
        Err(Error::InvalidDescriptor(_))
    ));
    assert!(matches!(
        Nhwc::new(1, 1, 0, 1),
        Err(Error::InvalidDescriptor(_))
    ));
    assert!(matches!(
        Nhwc::new(1 << 40, 1 << 20, 1, 8),
        Err(Error::Overflow(_))
    ));
    let s = Nhwc::new(2, 3, 3, 4).unwrap();
    let x = vec![0.0; s.len()];
    let mut y = vec![0.0; s.pooled_len()];
    assert!(matches!(
        pool::global_avg_pool(&s, &x[1..], &mut y),
        Err(Error::BufferSize { name: "x", .. })
    ));
    assert!(matches!(
        pool::global_avg_pool(&s, &x, &mut y[1..]),
        Err(Error::BufferSize { name: "y", .. })
    ));
    let mut dx = vec![0.0; s.len() + 1];
    assert!(matches!(
        pool::global_avg_pool_backward(&s, &y, &mut dx, GradMode::Overwrite),
        Err(Error::BufferSize { name: "dx", .. })
    ));
    let g = vec![0.0; s.pooled_len()];
    let mut out = vec![0.0; s.len()];
    assert!(matches!(
        gate::forward(&s, &x, &g[1..], &mut out),
        Err(Error::BufferSize { name: "gate", .. })
    ));
    let mut dg = vec![0.0; 3];
    assert!(matches!(
        gate::backward(&s, &x, &x, &g, &mut out, &mut dg),
        Err(Error::BufferSize { name: "dgate", .. })
    ));
    // Fully connected.
    assert!(matches!(
        FullyConnected::new(0, 3, 3),
        Err(Error::InvalidDescriptor(_))
    ));
    assert!(matches!(
        FullyConnected::new(2, 3, 0),
        Err(Error::InvalidDescriptor(_))
    ));
    let fc = FullyConnected::new(2, 3, 4).unwrap();
    let mut fy = vec![0.0; 8];
    assert!(matches!(
        fc.forward(&[0.0; 6], &[0.0; 11], None, &mut fy),
        Err(Error::BufferSize { name: "weight", .. })
    ));
    assert!(matches!(
        fc.forward(&[0.0; 6], &[0.0; 12], Some(&[0.0; 3]), &mut fy),
        Err(Error::BufferSize { name: "bias", .. })
    ));
    let mut dw = vec![0.0; 12];
    assert!(matches!(
        fc.backward_weight(
            &[0.0; 6],
            &[0.0; 8],
            &mut dw,
            Some(&mut [0.0; 5]),
            GradMode::Overwrite
        ),
        Err(Error::BufferSize { name: "dbias", .. })
    ));
    // Cross-entropy.
    for eps in [-0.1f32, 1.0, 1.5, f32::NAN] {
        assert!(
            matches!(CrossEntropy::new(2, 3, eps), Err(Error::InvalidArgument(_))),
            "{eps}"
        );
    }
    assert!(matches!(
        CrossEntropy::new(0, 3, 0.1),
        Err(Error::InvalidDescriptor(_))
    ));
    assert!(matches!(
        CrossEntropy::new(2, 0, 0.1),
        Err(Error::InvalidDescriptor(_))
    ));
    let ce = CrossEntropy::new(2, 3, 0.1).unwrap();
    let z = [0.0f32; 6];
    assert!(matches!(
        ce.forward_backward(&z, Targets::Labels(&[0, 3]), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ce.forward_backward(&z, Targets::Labels(&[0]), None),
        Err(Error::BufferSize { name: "labels", .. })
    ));
    assert!(matches!(
        ce.forward_backward(&z[1..], Targets::Labels(&[0, 1]), None),
        Err(Error::BufferSize { name: "logits", .. })
    ));
    assert!(matches!(
        ce.forward_backward(&z, Targets::Soft(&[0.5, 0.5, 0.0, 1.0, -0.1, 0.1]), None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        ce.forward_backward(&z, Targets::Labels(&[0, 1]), Some(&mut [0.0; 5])),
        Err(Error::BufferSize {
            name: "dlogits",
            ..
        })
    ));
    // Dropout and drop-connect probabilities.
    for p in [-0.01f32, 1.0, 2.0, f32::NAN] {
        assert!(
            matches!(Dropout::new(p, 0), Err(Error::InvalidArgument(_))),
            "{p}"
        );
        assert!(
            matches!(DropConnect::new(p, 0), Err(Error::InvalidArgument(_))),
            "{p}"
        );
    }
    let d = Dropout::new(0.1, 0).unwrap();
    assert!(matches!(
        d.forward(&[0.0; 4], &mut [0.0; 3]),
        Err(Error::BufferSize { .. })
    ));
    let dc = DropConnect::new(0.1, 0).unwrap();
    assert!(matches!(
        dc.forward(3, &[0.0; 4], &mut [0.0; 4]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        dc.forward(0, &[0.0; 4], &mut [0.0; 4]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        dc.forward_residual(2, &[0.0; 4], &[0.0; 2], &mut [0.0; 4]),
        Err(Error::BufferSize { name: "skip", .. })
    ));
    // Mixing.
    for a in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            regularize::draw_mixup(a, 0, 2, Pairing::Reverse),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            regularize::draw_cutmix(a, 0, &s, Pairing::Reverse),
            Err(Error::InvalidArgument(_))
        ));
    }
    let mut yy = vec![0.0; s.len()];
    let mut t = vec![0.0; 2 * 5];
    assert!(matches!(
        regularize::mixup(
            &s,
            1.0,
            0,
            Pairing::Reverse,
            &x,
            &[0, 5],
            5,
            &mut yy,
            &mut t
        ),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        regularize::cutmix(&s, 1.0, 0, Pairing::Reverse, &x, &[0], 5, &mut yy, &mut t),
        Err(Error::BufferSize { name: "labels", .. })
    ));
    let bad = MixDraw {
        lambda: 0.5,
        partner: vec![0, 2],
        cut: None,
    };
    assert!(matches!(
        regularize::apply_mix(&s, &bad, &x, &mut yy),
        Err(Error::InvalidArgument(_))
    ));
    let bad = MixDraw {
        lambda: 0.5,
        partner: vec![1, 0],
        cut: Some(CutBox {
            top: 0,
            bottom: 4,
            left: 0,
            right: 1,
        }),
    };
    assert!(matches!(
        regularize::apply_mix(&s, &bad, &x, &mut yy),
        Err(Error::InvalidArgument(_))
    ));
    let bad = MixDraw {
        lambda: 1.5,
        partner: vec![1, 0],
        cut: None,
    };
    assert!(matches!(
        regularize::mix_targets(&bad, &[0, 1], 5, &mut t),
        Err(Error::InvalidArgument(_))
    ));
}
