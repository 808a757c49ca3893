//! Log–log line charts in a grid, drawn as one PNG: each chart has a title, axis names,
//! round ticks, a legend, and series of points joined by solid or dashed lines with
//! filled or hollow markers. Used by `effnet bench study` for throughput against
//! multiply-accumulates (the paper's Fig. 1, one chart per machine and mode).

use super::canvas::{Canvas, Panel, encode_png};
use crate::error::{Error, Result};
use std::path::Path;

const AXIS: [u8; 3] = [60, 60, 60];
const GRID: [u8; 3] = [228, 228, 228];
const TEXT: [u8; 3] = [30, 30, 30];
const NOTE: [u8; 3] = [90, 90, 90];

/// Distinct colours for up to six series families (blue, orange, green, red, purple,
/// brown).
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 90, 180],
    [230, 120, 20],
    [40, 150, 60],
    [200, 40, 40],
    [130, 80, 180],
    [140, 90, 60],
];

/// Smallest picture [`render_charts`] draws per chart cell.
pub const MIN_CELL: (usize, usize) = (240, 200);
/// Largest picture [`render_charts`] draws (per side).
pub const MAX_SIDE: usize = 8192;

/// One line of points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Name of the series (for the caller: the picture's legend is given to
    /// [`render_charts`] separately, shared by all charts).
    pub label: String,
    /// Line and marker colour.
    pub colour: [u8; 3],
    /// `(x, y)` points in drawing order; points with a non-positive or non-finite
    /// coordinate are skipped (the axes are logarithmic) and break the line.
    pub points: Vec<(f64, f64)>,
    /// Dashed line and hollow markers instead of a solid line and filled ones.
    pub dashed: bool,
}

/// One chart: logarithmic x and y axes covering every series' points.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// Name of the x axis.
    pub x_label: String,
    /// Name of the y axis (written above the plot, left).
    pub y_label: String,
    /// The series, drawn in order.
    pub series: Vec<Series>,
}

/// Round values on a logarithmic axis covering `[lo, hi]` (`0 < lo < hi`): 1, 2 and 5
/// times the powers of ten inside, or every integer multiple when that gives fewer
/// than three; always at least the two ends.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let in_range = |mults: &[f64]| -> Vec<f64> {
        let mut v = Vec::new();
        let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        for e in e0..=e1 {
            for m in mults {
                let t = m * 10f64.powi(e);
                if t >= lo * (1.0 - 1e-9) && t <= hi * (1.0 + 1e-9) {
                    v.push(t);
                }
            }
        }
        v
    };
    let mut t = in_range(&[1.0, 2.0, 5.0]);
    if t.len() < 3 {
        t = in_range(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    if t.len() < 2 {
        t = vec![lo, hi];
    }
    t
}

/// A tick label: as many decimals as the value's size needs (two significant digits
/// below 10).
fn tick_label(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        let decimals = (1.0 - v.log10().floor()).clamp(0.0, 6.0) as usize;
        let s = format!("{v:.decimals$}");
        // Trim zeros a round value does not need ("0.50" → "0.5").
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// The positive, finite range of `values`, widened by 8 % on both sides in log space
/// (a single value gets ×/÷ 1.5).
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    if hi / lo < 1.01 {
        return (lo / 1.5, hi * 1.5);
    }
    let pad = (hi / lo).log10() * 0.08;
    (lo / 10f64.powf(pad), hi * 10f64.powf(pad))
}

/// Draws `charts` in a grid of `cols` columns (rows as needed) on a `width`×`height`
/// RGB picture (`[height][width][3]` bytes), with the `legend` (name and colour of each
/// series family, shared by all charts) in one row under the grid and `note` (one line
/// per `\n`) under it.
///
/// # Errors
/// [`Error::InvalidArgument`] for no charts, zero columns, or a size outside
/// [`MIN_CELL`] per chart and [`MAX_SIDE`].
pub fn render_charts(
    charts: &[Chart],
    cols: usize,
    legend: &[(String, [u8; 3])],
    note: &str,
    width: usize,
    height: usize,
) -> Result<Vec<u8>> {
    if charts.is_empty() || cols == 0 {
        return Err(Error::InvalidArgument(
            "a chart picture needs at least one chart and one column".into(),
        ));
    }
    let cols = cols.min(charts.len());
    let rows = charts.len().div_ceil(cols);
    let s = (width.min(height) / 500).max(1); // text scale
    let ch = 8 * s;
    let note_lines = if note.is_empty() {
        0
    } else {
        note.lines().count()
    };
    let legend_h = if legend.is_empty() { 0 } else { ch + 10 * s };
    let note_h = legend_h + note_lines * (ch + 3 * s) + if note_lines > 0 { 6 * s } else { 0 };
    if width > MAX_SIDE
        || height > MAX_SIDE
        || width / cols < MIN_CELL.0
        || height.saturating_sub(note_h) / rows < MIN_CELL.1
    {
        return Err(Error::InvalidArgument(format!(
            "a {width}×{height} picture of {} chart(s) in {cols} column(s): each chart needs \
             {}×{} pixels, and a side is at most {MAX_SIDE}",
            charts.len(),
            MIN_CELL.0,
            MIN_CELL.1
        )));
    }
    let mut c = Canvas::new(width, height);
    let (cell_w, cell_h) = (width / cols, (height - note_h) / rows);
    for (i, chart) in charts.iter().enumerate() {
        let (x0, y0) = ((i % cols) * cell_w, (i / cols) * cell_h);
        draw_chart(&mut c, chart, x0, y0, cell_w, cell_h, s);
    }
    let (mut x, y) = (8 * s, height - note_h + 6 * s);
    for (name, colour) in legend {
        c.hline(x, x + 24 * s, y + ch / 2, *colour, 2 * s);
        c.text(x + 30 * s, y, name, s, TEXT);
        x += 30 * s + (name.chars().count() + 3) * 6 * s;
    }
    for (k, line) in note.lines().enumerate() {
        c.text(
            4 * s,
            height - note_h + legend_h + 6 * s + k * (ch + 3 * s),
            line,
            s,
            NOTE,
        );
    }
    Ok(c.pixels)
}

/// Draws one chart into the cell at `(x0, y0)` of `w`×`h` pixels, text scale `s`.
fn draw_chart(c: &mut Canvas, chart: &Chart, x0: usize, y0: usize, w: usize, h: usize, s: usize) {
    let (cw, ch) = (6 * s, 8 * s);
    let points = || chart.series.iter().flat_map(|se| se.points.iter());
    let (xlo, xhi) = log_range(points().map(|p| p.0));
    let (ylo, yhi) = log_range(points().map(|p| p.1));
    let (xt, yt) = (log_ticks(xlo, xhi), log_ticks(ylo, yhi));
    let ylabels: Vec<String> = yt.iter().map(|&v| tick_label(v)).collect();
    let label_w = ylabels.iter().map(String::len).max().unwrap_or(1);
    let left = x0 + label_w * cw + 10 * s;
    let right = x0 + w - 1 - 6 * cw;
    let top = y0 + 2 * ch + 14 * s;
    let bottom = y0 + h - 1 - (2 * ch + 14 * s);
    let p = Panel::new(
        left,
        top,
        right,
        bottom,
        xlo.log10(),
        xhi.log10(),
        ylo.log10(),
        yhi.log10(),
    );
    c.text(left, y0 + 4 * s, &chart.title, s, TEXT);
    c.text(left, y0 + ch + 9 * s, &chart.y_label, s, NOTE);
    for (&t, label) in yt.iter().zip(&ylabels) {
        let y = p.py(t.log10());
        c.hline(p.left, p.right, y, GRID, 1);
        c.text(
            p.left.saturating_sub(label.len() * cw + 5 * s),
            y.saturating_sub(ch / 2),
            label,
            s,
            TEXT,
        );
    }
    for &t in &xt {
        let x = p.px(t.log10());
        c.vline(x, p.top, p.bottom, GRID, 1);
        let label = tick_label(t);
        c.text(
            x.saturating_sub(label.len() * cw / 2),
            p.bottom + 4 * s,
            &label,
            s,
            TEXT,
        );
    }
    c.rect_outline(p.left, p.top, p.right, p.bottom, AXIS);
    c.text(
        (p.left + p.right) / 2 - chart.x_label.len() * cw / 2,
        p.bottom + 6 * s + ch,
        &chart.x_label,
        s,
        NOTE,
    );
    for se in &chart.series {
        draw_series(c, &p, se, s);
    }
}

/// Draws one series on `p` (log coordinates): the line between consecutive drawable
/// points, then the markers.
fn draw_series(c: &mut Canvas, p: &Panel, se: &Series, s: usize) {
    let drawable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && x > 0.0 && y > 0.0;
    let logged: Vec<(f64, f64)> = se
        .points
        .iter()
        .map(|pt| {
            if drawable(pt) {
                (pt.0.log10(), pt.1.log10())
            } else {
                (f64::NAN, f64::NAN)
            }
        })
        .collect();
    if se.dashed {
        c.dashed_polyline(p, &logged, se.colour, s, 6 * s);
    } else {
        c.polyline(p, &logged, se.colour, 2 * s);
    }
    for &(x, y) in logged.iter().filter(|pt| pt.0.is_finite()) {
        let (px, py) = (p.px(x), p.py(y));
        if se.dashed {
            c.square_outline(px, py, 3 * s, se.colour, s, p);
        } else {
            c.square(px, py, 3 * s, se.colour, p);
        }
    }
}

/// [`render_charts`], written to `path` as an 8-bit RGB PNG, atomically.
///
/// # Errors
/// As [`render_charts`]; [`Error::Io`] when the file cannot be written.
pub fn save_charts_png(
    path: &Path,
    charts: &[Chart],
    cols: usize,
    legend: &[(String, [u8; 3])],
    note: &str,
    width: usize,
    height: usize,
) -> Result<()> {
    let rgb = render_charts(charts, cols, legend, note, width, height)?;
    let bytes = encode_png(&rgb, width, height)?;
    crate::io::write_atomic(path, &bytes)
}
