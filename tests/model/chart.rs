//! Tests of `report::chart`: log ticks, the grid layout's size rules, and that every
//! series is drawn in its colour (solid and dashed), deterministically.

use effnet::report::chart::*;

#[test]
fn log_ticks_are_round_and_inside_the_range() {
    assert_eq!(log_ticks(0.15, 1.2), vec![0.2, 0.5, 1.0]);
    assert_eq!(log_ticks(3.0, 70.0), vec![5.0, 10.0, 20.0, 50.0]);
    // A narrow range falls back to every integer multiple.
    let t = log_ticks(6500.0, 9500.0);
    assert_eq!(t, vec![7000.0, 8000.0, 9000.0]);
    // A range with no round value still gets its two ends.
    assert_eq!(log_ticks(1.1, 1.15), vec![1.1, 1.15]);
    for (lo, hi) in [(0.01, 900.0), (2.0, 3.0), (0.3, 0.31)] {
        let t = log_ticks(lo, hi);
        assert!(t.len() >= 2, "{lo}..{hi}: {t:?}");
        assert!(
            t.iter().all(|&v| v >= lo * 0.999 && v <= hi * 1.001),
            "{t:?}"
        );
        assert!(t.windows(2).all(|w| w[0] < w[1]), "{t:?}");
    }
}

fn sample() -> Vec<Chart> {
    let s = |label: &str, colour, dashed, k: f64| Series {
        label: label.into(),
        colour,
        points: vec![(0.2 * k, 30.0 / k), (0.4 * k, 18.0 / k), (0.8 * k, 9.0 / k)],
        dashed,
    };
    vec![
        Chart {
            title: "CPU training (measured)".into(),
            x_label: "GMACs per image".into(),
            y_label: "img/s".into(),
            series: vec![s("A", PALETTE[0], false, 1.0), s("", PALETTE[0], true, 0.5)],
        },
        Chart {
            title: "IPU".into(),
            x_label: "GMACs".into(),
            y_label: "img/s".into(),
            series: vec![s("B", PALETTE[1], false, 2.0)],
        },
    ]
}

#[test]
fn every_series_is_drawn_in_its_colour_deterministically() {
    let legend = vec![("A".to_string(), PALETTE[0]), ("B".to_string(), PALETTE[1])];
    let (w, h) = (900, 400);
    let a = render_charts(&sample(), 2, &legend, "a note", w, h).unwrap();
    assert_eq!(a.len(), w * h * 3);
    assert_eq!(
        a,
        render_charts(&sample(), 2, &legend, "a note", w, h).unwrap()
    );
    let count = |img: &[u8], c: [u8; 3], x0: usize, x1: usize| {
        (0..h)
            .flat_map(|y| (x0..x1).map(move |x| (y, x)))
            .filter(|&(y, x)| img[(y * w + x) * 3..(y * w + x) * 3 + 3] == c)
            .count()
    };
    // Chart 0 (left half) has series A, chart 1 (right half) series B; the legend row
    // (bottom) holds a stroke of each.
    assert!(count(&a, PALETTE[0], 0, w / 2) > 200);
    assert!(count(&a, PALETTE[1], w / 2, w) > 200);
    // The same series dashed (hollow markers) draws fewer pixels than solid, but some.
    let one = |dashed: bool| {
        let mut c = sample();
        c[0].series.truncate(1);
        c[0].series[0].dashed = dashed;
        count(
            &render_charts(&c, 2, &[], "", w, h).unwrap(),
            PALETTE[0],
            0,
            w / 2,
        )
    };
    let (solid, dashed) = (one(false), one(true));
    assert!(
        dashed > 50 && dashed < solid,
        "dashed {dashed}, solid {solid}"
    );
    // Points that a log axis cannot show are skipped, not a panic.
    let mut odd = sample();
    odd[1].series[0].points.push((0.0, -1.0));
    odd[1].series[0].points.push((f64::NAN, 3.0));
    render_charts(&odd, 2, &legend, "", w, h).unwrap();
}

#[test]
fn sizes_outside_the_rules_are_errors() {
    assert!(render_charts(&[], 1, &[], "", 600, 400).is_err());
    assert!(render_charts(&sample(), 0, &[], "", 600, 400).is_err());
    // Two charts side by side need 2 × MIN_CELL.0 pixels of width.
    assert!(render_charts(&sample(), 2, &[], "", 2 * MIN_CELL.0 - 1, 400).is_err());
    assert!(render_charts(&sample(), 1, &[], "", 400, 2 * MIN_CELL.1 - 1).is_err());
    assert!(render_charts(&sample(), 2, &[], "", MAX_SIDE + 1, 400).is_err());
    let dir = std::env::temp_dir().join(format!("effnet-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.png");
    save_charts_png(&path, &sample(), 2, &[], "n", 600, 300).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let _ = std::fs::remove_dir_all(&dir);
}
