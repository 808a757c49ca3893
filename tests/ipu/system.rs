//! The training system: the per-layer planner report, the grouped pipeline schedule,
//! recomputation, the pipelined replicated step against the SIMD step, the system
//! report and the published IPU-POD16 configuration.

use effnet::Error;
use effnet::ipu::{Precision, Target};

/// The per-layer planner report (`effnet ipu report --layers`) plans B0 at the
/// paper's batch and resolutions for the three variants of the figures table: one
/// forward and one backward line per layer, every line within a tile's budget, totals
/// consistent with the lines; and the same too-large batch is the named memory error.
#[test]
fn planned_report_covers_b0_at_batch_8() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::network::{layers, report_planned};
    let budget = Target::mk2().budget_bytes();
    for name in ["b0_g1_gn", "b0_g16_gn", "b0_g16_lnpn"] {
        let arch = ArchConfig::from_name(name).unwrap();
        for res in [160, 224] {
            let r = report_planned(&arch, res, 8, &Target::mk2(), Precision::F16).unwrap();
            let n = layers(&arch, res, 8).unwrap().len();
            assert_eq!(r.lines.len(), 2 * n, "{name} {res}");
            for l in &r.lines {
                assert!(
                    l.cost.tiles >= 1 && l.cost.tiles <= 1472,
                    "{name} {}",
                    l.layer
                );
                assert!(l.cost.max_tile_bytes <= budget, "{name} {}", l.layer);
            }
            let train: u64 = r.lines.iter().map(|l| l.cost.total()).sum();
            let want = 8.0 * 1.33e9 / train as f64;
            assert!((r.training_img_per_s / want - 1.0).abs() < 1e-9);
            assert!(r.inference_img_per_s > r.training_img_per_s);
            assert!(r.spatial_cycles_per_flop > 0.0);
        }
    }
    let g1 = ArchConfig::from_name("b0_g1_gn").unwrap();
    match report_planned(&g1, 224, 64, &Target::mk2(), Precision::F32) {
        Err(Error::TileMemory { tensors, .. }) => {
            assert!(tensors[0].0.contains("saved activations"))
        }
        other => panic!("expected TileMemory, got {other:?}"),
    }
}

/// The grouped pipeline schedule against a hand-worked example: 2 stages (forward /
/// backward compute 10/20 and 5/15 cycles), 3 micro-batches: steps f0 | f1, f0+b0 |
/// f2+b0, f1+b1 | b1, f2+b2 | b2 = 10 + 20 + 30 + 20 + 20 cycles; one stage runs its
/// micro-batches back to back (A · (F + B)); the ring all-reduce moves 2(R−1)
/// chunks of bytes/R.
#[test]
fn the_grouped_schedule_matches_a_hand_worked_example() {
    use effnet::ipu::system::schedule::{
        CycleSplit, StageTiming, in_flight, ring_allreduce_cycles, step_cycles,
    };
    let mut t = Target::mk2();
    t.external_sync_cycles = 0;
    let st = |f: u64, b: u64| StageTiming {
        fwd: CycleSplit {
            compute: f,
            ..Default::default()
        },
        bwd: CycleSplit {
            compute: b,
            ..Default::default()
        },
        ..Default::default()
    };
    let s = step_cycles(&[st(10, 20), st(5, 15)], 3, 1, &t);
    assert_eq!(s.pipeline_steps, 5);
    assert_eq!(s.compute, 100);
    assert_eq!(s.total(), 100);
    let one = step_cycles(&[st(10, 20)], 3, 1, &t);
    assert_eq!(one.compute, 90);
    assert_eq!(
        (in_flight(0, 2), in_flight(1, 2), in_flight(0, 4)),
        (3, 1, 7)
    );
    // 8 replicas, 8 MB: 14 steps of 1 MB over one 32 GB/s link at 1.33 GHz.
    let c = ring_allreduce_cycles(8 << 20, 8, &t);
    let per = ((1u64 << 20) as f64 / (32e9 / 1.33e9)).ceil() as u64;
    assert_eq!(c, 14 * per);
    assert_eq!(ring_allreduce_cycles(8 << 20, 1, &t), 0);
    // Transfers between the stages count as inter-IPU cycles on the steps that send.
    let mut a = st(10, 20);
    a.out_bytes = 32_000;
    let mut b = st(5, 15);
    b.grad_bytes = 64_000;
    let s = step_cycles(&[a, b], 3, 1, &t);
    let x = |bytes: f64| (bytes / (32e9 / 1.33e9)).ceil() as u64;
    // Steps 0–2 send activations forward, steps 1–3 gradients back.
    assert_eq!(
        s.inter_ipu,
        x(32_000.0) + 2 * x(64_000.0).max(x(32_000.0)) + x(64_000.0)
    );
}

/// Recomputation: keeping only each block's input from the forward to the backward
/// pass lowers the peak tile memory of a training step and costs the forward of
/// every recomputed block again (the `recompute` layers), the gradients unchanged.
#[test]
fn recomputation_trades_memory_for_a_second_forward() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::chain::{ChainOpts, build_stage, network_steps};
    let a = ArchConfig::from_name("tiny_g16_gn").unwrap();
    let ns = network_steps(&a, 64, 4).unwrap();
    let mut t = Target::mk2();
    t.set("tiles=64").unwrap();
    let mut peak = Vec::new();
    let mut cycles = Vec::new();
    for recompute in [true, false] {
        let opts = ChainOpts {
            training: true,
            recompute,
        };
        let ch = build_stage(
            &ns,
            0..ns.segments.len(),
            a.norm_eps,
            &t,
            Precision::F16,
            opts,
        )
        .unwrap();
        let p = ch.graph.profile_unchecked(&ch.fwd, &ch.bwd, 0).unwrap().0;
        let sum = |pass: &str| -> u64 {
            ch.graph
                .layers
                .iter()
                .zip(&p.layers)
                .filter(|(l, _)| l.pass == pass)
                .map(|(_, lp)| lp.compute_cycles)
                .sum()
        };
        peak.push(p.tile_peak_bytes.iter().sum::<usize>());
        cycles.push((sum("fwd"), sum("recompute"), sum("bwd")));
    }
    assert!(peak[0] < peak[1], "peak memory {peak:?}");
    let (with, without) = (cycles[0], cycles[1]);
    assert_eq!(without.1, 0);
    // Every block but the head is recomputed: most of the forward again.
    assert!(with.1 > with.0 / 2 && with.1 <= with.0, "{with:?}");
    // The forward itself barely changes (a split may differ where weights that are
    // broadcast at every pass cost one pass more).
    assert!(
        (with.0 as f64 / without.0 as f64 - 1.0).abs() < 0.05,
        "{with:?} {without:?}"
    );
}

/// `effnet ipu run --stages 2 --replicas 2 --accumulate 2`: one optimizer step of the
/// pipelined, replicated, accumulating system executed through the codelets equals
/// the SIMD model's RMSProp step on the same global batch (the update of every
/// parameter within 1e-4), with and without recomputation; the replicas agree.
#[test]
fn the_pipelined_replicated_step_matches_the_simd_step() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::system::SystemConfig;
    let a = ArchConfig::from_name("tiny_g16_lnpn").unwrap();
    for recompute in [true, false] {
        let cfg = SystemConfig {
            stages: 2,
            replicas: 2,
            micro_batch: 2,
            accumulation: 2,
            recompute,
            splits: Vec::new(),
            provenance: "test".into(),
        };
        let r = effnet::ipu_check::check_system(&a, 32, &cfg, &Target::mk2(), 5).unwrap();
        assert!(r.ipu.replicas_agree);
        assert_eq!(r.ipu.stages.len(), 2);
        assert_eq!(r.ipu.stages[0][0], "stem");
        assert_eq!(r.ipu.stages[1].last().unwrap(), "head");
        for l in &r.lines {
            assert!(
                l.update_rel_err < 1e-4,
                "recompute {recompute} {}: {:.3e}",
                l.tensor,
                l.update_rel_err
            );
        }
        assert!(
            (r.ipu.loss / r.loss - 1.0).abs() < 1e-4,
            "{} {}",
            r.ipu.loss,
            r.loss
        );
        assert!(r.lines.len() > 40);
    }
}

/// The system report: per stage its layers and timing, micro-batches in flight by
/// the grouped schedule, the step's cycle split summing to its total, and images per
/// second = global batch × clock / cycles; a one-IPU inference graph fits and is
/// faster per image than training.
#[test]
fn the_system_report_is_consistent() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::system::{SystemConfig, inference_report, system_report};
    let a = ArchConfig::from_name("tiny_g16_gn").unwrap();
    let mut cfg = SystemConfig::pod16(&a, 64).unwrap();
    cfg.micro_batch = 4;
    let t = Target::mk2();
    let r = system_report(&a, 64, &cfg, &t, Precision::F16).unwrap();
    assert_eq!(r.stages.len(), 2);
    assert_eq!((r.stages[0].in_flight, r.stages[1].in_flight), (3, 1));
    assert!(r.fits && r.stages.iter().all(|s| s.fits));
    assert_eq!(r.splits.len(), 1);
    let s = r.step;
    assert_eq!(s.pipeline_steps, cfg.accumulation + 2);
    assert!(s.compute > 0 && s.exchange > 0 && s.inter_ipu > 0 && s.allreduce > 0 && s.sync > 0);
    let want = cfg.global_batch() as f64 * t.clock_hz / s.total() as f64;
    assert!((r.training_img_per_s / want - 1.0).abs() < 1e-12);
    for st in &r.stages {
        assert!(st.lines.iter().any(|l| l.pass == "recompute"));
        assert!(st.lines.iter().any(|l| l.pass == "update"));
        assert!(st.max_tile_bytes <= t.budget_bytes());
        assert_eq!(st.picture.bytes.len(), t.tiles);
    }
    let inf = inference_report(&a, 64, 8, &t, Precision::F16).unwrap();
    assert!(inf.fits);
    assert!(inf.lines.iter().all(|l| l.pass == "fwd"));
    assert!(inf.img_per_s > r.training_img_per_s / cfg.ipus() as f64);
}

/// The paper's IPU-POD16 system for B0-G16-GN at 224 — 2 stages × 8 replicas,
/// micro-batch 12, accumulation 8, recomputation, the split at block 3b — fits every
/// tile of both stage IPUs with its micro-batches in flight (3 on the first stage,
/// 1 on the second).
#[test]
fn the_published_b0_pod16_configuration_fits() {
    use effnet::arch::ArchConfig;
    use effnet::ipu::system::{SystemConfig, system_report};
    let a = ArchConfig::from_name("b0_g16_gn").unwrap();
    let cfg = SystemConfig::pod16(&a, 224).unwrap();
    assert_eq!(
        (
            cfg.ipus(),
            cfg.stages,
            cfg.micro_batch,
            cfg.accumulation,
            cfg.global_batch()
        ),
        (16, 2, 12, 8, 768)
    );
    // Half resolution (160 for B0): micro-batch 24, accumulation 4, same global batch.
    let half = SystemConfig::pod16(&ArchConfig::from_name("b0_g16_lnpn").unwrap(), 160).unwrap();
    assert_eq!(
        (
            half.stages,
            half.replicas,
            half.micro_batch,
            half.accumulation
        ),
        (2, 8, 24, 4)
    );
    assert_eq!(half.global_batch(), 768);
    // B2–B5: 4 stages x 4 replicas (B5: micro-batch 2, accumulation 96).
    for (name, res) in [("b2_g16_gn", 260), ("b5_g16_gn", 456)] {
        let c = SystemConfig::pod16(&ArchConfig::from_name(name).unwrap(), res).unwrap();
        assert_eq!((c.stages, c.replicas, c.ipus()), (4, 4, 16), "{name}");
    }
    let b5 = SystemConfig::pod16(&ArchConfig::from_name("b5_g16_gn").unwrap(), 456).unwrap();
    assert_eq!((b5.micro_batch, b5.accumulation), (2, 96));
    let r = system_report(&a, 224, &cfg, &Target::mk2(), Precision::F16).unwrap();
    assert_eq!(r.splits, vec!["blocks.2.1".to_string()]);
    assert_eq!(r.stages[0].segments.last().unwrap(), "blocks.2.0");
    for st in &r.stages {
        assert!(st.fits, "{:?}", st.memory_error);
    }
    assert!(r.max_tile_bytes <= Target::mk2().budget_bytes());
    assert!(r.training_img_per_s > 0.0);
}
