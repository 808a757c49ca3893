//! `effnet bench study` end to end through the binary: the table, the JSON lines (one
//! object per configuration, then the claims), the picture, and clear errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("effnet-study-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn effnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_effnet"))
        .args(args)
        .output()
        .unwrap()
}

/// The value of `"key": ` in one JSON line (numbers, booleans, null, strings).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let k = format!("\"{key}\": ");
    let start = line.find(&k).unwrap_or_else(|| panic!("{key} in {line}")) + k.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"')
}

#[test]
fn cpu_study_writes_table_json_claims_and_picture() {
    let dir = temp_dir("cpu");
    let (json, png) = (dir.join("s.jsonl"), dir.join("s.png"));
    let out = effnet(&[
        "bench",
        "study",
        "--nets",
        "b0",
        "--variants",
        "g16_gn,g16_lnpn",
        "--batch",
        "1",
        "--rounds",
        "1",
        "--no-ipu",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
        "--picture",
        png.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let configs: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("\"kind\": \"config\""))
        .collect();
    let claims: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("\"kind\": \"claim\""))
        .collect();
    assert_eq!(configs.len(), 4, "{text}");
    // The resolutions: native 224 and the paper's half size 160, both variants.
    let mut seen: Vec<(String, String)> = configs
        .iter()
        .map(|l| (field(l, "variant").to_string(), field(l, "res").to_string()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("G16-GN", "160"),
            ("G16-GN", "224"),
            ("G16-LN+PN", "160"),
            ("G16-LN+PN", "224")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    for l in &configs {
        let train: f64 = field(l, "cpu_train_img_per_s").parse().unwrap();
        let infer: f64 = field(l, "cpu_infer_img_per_s").parse().unwrap();
        assert!(train > 0.0 && infer > 0.0, "{l}");
        assert_eq!(field(l, "ipu_train_img_per_s"), "null");
        // The counts are the architecture's: LN+PN and GN differ only in norm params.
        let macs: f64 = field(l, "macs").parse().unwrap();
        let res: f64 = field(l, "res").parse().unwrap();
        assert!(macs > 1e8 * (res / 224.0).powi(2), "{l}");
    }
    // Two claims apply (LN+PN vs GN, half vs native); G16 vs depthwise needs G1-GN.
    let names: Vec<&str> = claims.iter().map(|l| field(l, "claim")).collect();
    assert_eq!(names, ["lnpn_vs_gn", "half_vs_native"], "{text}");
    let half = claims[1];
    let macs_ratio: f64 = field(half, "macs_ratio").parse().unwrap();
    assert!(
        (macs_ratio - (160.0f64 / 224.0).powi(2)).abs() < 0.02,
        "{half}"
    );
    assert_eq!(field(half, "paper_ipu_train_ratio"), "1.75");
    assert!(
        stdout.contains("G16-LN+PN, half / native resolution"),
        "{stdout}"
    );
    let png_bytes = std::fs::read(&png).unwrap();
    assert_eq!(&png_bytes[1..4], b"PNG");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ipu_study_estimates_the_pod16_and_one_ipu() {
    let dir = temp_dir("ipu");
    let json = dir.join("s.jsonl");
    let out = effnet(&[
        "bench",
        "study",
        "--nets",
        "b0",
        "--variants",
        "g16_lnpn",
        "--res",
        "half",
        "--no-cpu",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
        "--picture",
        dir.join("s.png").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap();
    let line = text.lines().next().unwrap();
    assert_eq!(field(line, "res"), "160");
    assert_eq!(field(line, "cpu_train_img_per_s"), "null");
    let train: f64 = field(line, "ipu_train_img_per_s").parse().unwrap();
    let infer: f64 = field(line, "ipu_infer_img_per_s").parse().unwrap();
    // The system model's estimate for the published configuration (BENCHMARKS.md,
    // issue 13: 35,279 img/s) and a one-IPU inference figure.
    assert!((20_000.0..60_000.0).contains(&train), "{line}");
    assert!(infer > 1_000.0, "{line}");
    assert_eq!(field(line, "ipu_train_fits"), "true");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_study_arguments_are_clear_errors() {
    for (args, want) in [
        (vec!["--nets", "b9"], "unknown network"),
        (vec!["--variants", "g8_bn"], "unknown variant"),
        (vec!["--res", "quarter"], "unknown resolution"),
        (vec!["--rounds", "0"], "at least 1"),
    ] {
        let mut all = vec!["bench", "study", "--quiet", "--no-ipu"];
        all.extend(args.iter());
        let out = effnet(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
