//! Tests of `arch` (moved from the library's unit tests, so that
//! `cargo test` does not compile the library a second time).

use effnet::arch::*;

#[test]
fn b0_counts_match_the_design() {
    let c = ArchConfig::from_name("efficientnet_b0")
        .unwrap()
        .counts(224);
    assert_eq!(c.params, 5_288_548, "timm efficientnet_b0 parameter count");
    assert!((c.macs as f64 / 1e9 - 0.386).abs() < 0.0015, "{}", c.macs);
    let g16 = ArchConfig::from_name("b0_g16_bn").unwrap().counts(224);
    assert!(
        (g16.params as f64 / 1e6 - 5.91).abs() < 0.006,
        "{}",
        g16.params
    );
    assert!(
        (g16.macs as f64 / 1e9 - 0.635).abs() < 0.0015,
        "{}",
        g16.macs
    );
}

#[test]
fn layer_names_follow_timm() {
    let a = ArchConfig::from_name("efficientnet_b0").unwrap();
    let names: Vec<String> = a.conv_layers(1, 224).into_iter().map(|l| l.name).collect();
    for n in [
        "conv_stem",
        "blocks.0.0.conv_dw",
        "blocks.0.0.conv_pw",
        "blocks.1.0.conv_pw",
        "blocks.1.0.conv_pwl",
        "blocks.6.0.se.conv_expand",
        "conv_head",
        "classifier",
    ] {
        assert!(names.iter().any(|m| m == n), "{n} missing");
    }
    assert!(!names.iter().any(|m| m == "blocks.0.0.conv_pwl"));
    let norms: Vec<String> = a
        .conv_layers(1, 224)
        .into_iter()
        .filter_map(|l| l.norm)
        .collect();
    assert_eq!(&norms[..3], ["bn1", "blocks.0.0.bn1", "blocks.0.0.bn2"]);
    assert_eq!(norms.len(), 2 + 16 * 3 - 1);
}

#[test]
fn names_parse_and_bad_names_are_errors() {
    let a = ArchConfig::from_name("tf_efficientnet_b3").unwrap();
    assert_eq!(
        (a.scale, a.padding, a.native_res),
        (3, PaddingMode::TfSame, 300)
    );
    let a = ArchConfig::from_name("b3_g16_lnpn").unwrap();
    assert_eq!(
        (a.spatial, a.norm),
        (SpatialConv::G16, NormKind::LayerNormProxy)
    );
    let t = ArchConfig::from_name("efficientnet_tiny").unwrap();
    assert_eq!(
        (t.blocks().len(), t.stem_channels(), t.head_channels()),
        (7, 8, 320)
    );
    // timm: _gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.25)
    assert_eq!(t.counts(64).params, 444_612);
    for bad in [
        "",
        "b8_g1_bn",
        "b0_g2_bn",
        "efficientnet_b9",
        "b0_g16",
        "resnet50",
    ] {
        assert!(ArchConfig::from_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn channel_rounding() {
    assert_eq!(round_channels(32, 1.0), 32);
    assert_eq!(round_channels(32, 1.1), 32);
    assert_eq!(round_channels(40, 1.2), 48);
    assert_eq!(round_channels(1280, 2.0), 2560);
    assert_eq!(round_channels(16, 1.4), 24);
}

#[test]
fn every_layer_of_every_scale_validates() {
    for k in ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "tiny"] {
        for v in ["g1_bn", "g16_lnpn"] {
            let a = ArchConfig::from_name(&format!("{k}_{v}")).unwrap();
            for res in [a.native_res, a.half_res().unwrap_or(128), 97] {
                for l in a.conv_layers(2, res) {
                    l.desc
                        .validate()
                        .unwrap_or_else(|e| panic!("{} {} at {res}: {e}", a.name, l.name));
                }
            }
        }
    }
}
