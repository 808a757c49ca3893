//! The raster drawing shared by the pictures the crate writes (the training curve, the
//! study's throughput charts): an RGB canvas with lines, markers and a built-in 5×7
//! pixel font, plot rectangles mapping data to pixels, round tick values, and PNG
//! encoding with the `png` crate. No plotting library and no font files.

use crate::error::{Error, Result};

/// Background colour of every picture.
pub(crate) const BACKGROUND: [u8; 3] = [255, 255, 255];

/// Encodes `[height][width][3]` RGB bytes as a PNG.
///
/// # Errors
/// [`Error::BufferSize`] when `rgb` has the wrong length, [`Error::InvalidArgument`]
/// for sizes the format cannot hold.
pub fn encode_png(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let n = crate::error::checked_product("picture", &[width, height, 3])?;
    crate::error::check_len("rgb", rgb.len(), n)?;
    let (w, h) = match (u32::try_from(width), u32::try_from(height)) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (w, h),
        _ => {
            return Err(Error::InvalidArgument(format!(
                "a PNG of {width}×{height} pixels"
            )));
        }
    };
    let mut out = Vec::new();
    let png_err = |e: png::EncodingError| Error::Io(format!("PNG encoding: {e}"));
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(png_err)?;
    writer.write_image_data(rgb).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(out)
}

/// Round tick values (1, 2 or 5 × 10^k apart) covering `[lo, hi]`, at most about
/// `max` of them.
pub fn nice_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / max.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label for `v` with as many decimals as the spacing of `ticks` needs.
pub fn fmt_tick(v: f64, ticks: &[f64]) -> String {
    let step = if ticks.len() > 1 {
        (ticks[1] - ticks[0]).abs()
    } else {
        1.0
    };
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s.trim_start_matches(['-', '0', '.']).is_empty() {
        s[1..].to_string()
    } else {
        s
    }
}

/// A plot rectangle (pixel bounds inclusive) and its data ranges.
pub(crate) struct Panel {
    pub(crate) left: usize,
    pub(crate) top: usize,
    pub(crate) right: usize,
    pub(crate) bottom: usize,
    pub(crate) x0: f64,
    pub(crate) x1: f64,
    pub(crate) y0: f64,
    pub(crate) y1: f64,
}

impl Panel {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        left: usize,
        top: usize,
        right: usize,
        bottom: usize,
        x0: f64,
        x1: f64,
        y0: f64,
        y1: f64,
    ) -> Panel {
        Panel {
            left,
            top,
            right: right.max(left + 1),
            bottom: bottom.max(top + 1),
            x0,
            x1,
            y0,
            y1,
        }
    }

    pub(crate) fn fx(&self, x: f64) -> f64 {
        self.left as f64 + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left) as f64
    }

    pub(crate) fn fy(&self, y: f64) -> f64 {
        self.bottom as f64 - (y - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top) as f64
    }

    pub(crate) fn px(&self, x: f64) -> usize {
        self.fx(x)
            .round()
            .clamp(self.left as f64, self.right as f64) as usize
    }

    pub(crate) fn py(&self, y: f64) -> usize {
        self.fy(y)
            .round()
            .clamp(self.top as f64, self.bottom as f64) as usize
    }

    pub(crate) fn contains(&self, x: f64, y: f64) -> bool {
        x >= self.left as f64
            && x <= self.right as f64
            && y >= self.top as f64
            && y <= self.bottom as f64
    }
}

/// An RGB raster.
pub(crate) struct Canvas {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) pixels: Vec<u8>,
}

impl Canvas {
    pub(crate) fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            pixels: BACKGROUND.repeat(width * height),
        }
    }

    pub(crate) fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    pub(crate) fn hline(&mut self, x0: usize, x1: usize, y: usize, c: [u8; 3], t: usize) {
        for dy in 0..t {
            for x in x0..=x1 {
                self.set(x, y + dy, c);
            }
        }
    }

    pub(crate) fn vline(&mut self, x: usize, y0: usize, y1: usize, c: [u8; 3], t: usize) {
        for dx in 0..t {
            for y in y0..=y1 {
                self.set(x + dx, y, c);
            }
        }
    }

    pub(crate) fn dashed_vline(&mut self, x: usize, y0: usize, y1: usize, c: [u8; 3], s: usize) {
        for y in y0..=y1 {
            if ((y - y0) / (4 * s)).is_multiple_of(2) {
                self.set(x, y, c);
            }
        }
    }

    pub(crate) fn rect_outline(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        self.hline(x0, x1, y0, c, 1);
        self.hline(x0, x1, y1, c, 1);
        self.vline(x0, y0, y1, c, 1);
        self.vline(x1, y0, y1, c, 1);
    }

    /// A filled square of side `2r+1` centred on `(x, y)`, clipped to `p`.
    pub(crate) fn square(&mut self, x: usize, y: usize, r: usize, c: [u8; 3], p: &Panel) {
        for yy in y.saturating_sub(r)..=y + r {
            for xx in x.saturating_sub(r)..=x + r {
                if p.contains(xx as f64, yy as f64) {
                    self.set(xx, yy, c);
                }
            }
        }
    }

    /// A dot of thickness `t` at real coordinates, clipped to `p`.
    pub(crate) fn dot(&mut self, x: f64, y: f64, t: usize, c: [u8; 3], p: &Panel) {
        let half = (t as f64 - 1.0) / 2.0;
        for dy in 0..t {
            for dx in 0..t {
                let (xx, yy) = (
                    (x - half + dx as f64).round(),
                    (y - half + dy as f64).round(),
                );
                if p.contains(xx, yy) {
                    self.set(xx as usize, yy as usize, c);
                }
            }
        }
    }

    /// Joins consecutive finite points of `data` (data coordinates of `p`); a
    /// non-finite value breaks the line.
    pub(crate) fn polyline(&mut self, p: &Panel, data: &[(f64, f64)], c: [u8; 3], t: usize) {
        // One dash longer than any line: solid.
        self.dashed_polyline(p, data, c, t, usize::MAX);
    }

    /// The outline (thickness `t`) of a square of side `2r+1` centred on `(x, y)`,
    /// clipped to `p`.
    pub(crate) fn square_outline(
        &mut self,
        x: usize,
        y: usize,
        r: usize,
        c: [u8; 3],
        t: usize,
        p: &Panel,
    ) {
        for yy in y.saturating_sub(r)..=y + r {
            for xx in x.saturating_sub(r)..=x + r {
                let edge = xx < x.saturating_sub(r) + t
                    || xx + t > x + r
                    || yy < y.saturating_sub(r) + t
                    || yy + t > y + r;
                if edge && p.contains(xx as f64, yy as f64) {
                    self.set(xx, yy, c);
                }
            }
        }
    }

    /// [`Canvas::polyline`] with a dashed line: dashes of `dash` pixels (thickness `t`)
    /// and gaps as long, the pattern running on along the whole line.
    pub(crate) fn dashed_polyline(
        &mut self,
        p: &Panel,
        data: &[(f64, f64)],
        c: [u8; 3],
        t: usize,
        dash: usize,
    ) {
        let dash = dash.max(1) as f64; // usize::MAX: a solid line (see `polyline`)
        let mut run = 0.0f64; // length drawn along the line so far
        let mut prev: Option<(f64, f64)> = None;
        for &(x, y) in data {
            if !(x.is_finite() && y.is_finite()) {
                prev = None;
                continue;
            }
            let to = (p.fx(x), p.fy(y).clamp(-1e6, 1e6));
            let from = prev.unwrap_or(to);
            let len = ((to.0 - from.0).powi(2) + (to.1 - from.1).powi(2)).sqrt();
            let n = (len * 2.0).ceil().max(1.0) as usize;
            for i in 0..=n {
                let f = i as f64 / n as f64;
                if (((run + f * len) / dash) as u64).is_multiple_of(2) {
                    self.dot(
                        from.0 + (to.0 - from.0) * f,
                        from.1 + (to.1 - from.1) * f,
                        t,
                        c,
                        p,
                    );
                }
            }
            run += len;
            prev = Some(to);
        }
    }

    /// Writes `text` with its top-left corner at `(x, y)`, each font pixel `s`×`s`.
    pub(crate) fn text(&mut self, x: usize, y: usize, text: &str, s: usize, c: [u8; 3]) {
        for (k, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            for (r, row) in rows.iter().enumerate() {
                for col in 0..5 {
                    if row & (0b10000 >> col) != 0 {
                        for dy in 0..s {
                            for dx in 0..s {
                                self.set(x + k * 6 * s + col * s + dx, y + r * s + dy, c);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The 5×7 bitmap of `c` (bit 4 is the leftmost column) for printable ASCII and `×`;
/// blank for other characters.
pub(crate) fn glyph(c: char) -> [u8; 7] {
    match c {
        '!' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04],
        '"' => [0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '$' => [0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '&' => [0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D],
        '\'' => [0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '*' => [0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x0E, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ';' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x04, 0x08],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '?' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
        '@' => [0x0E, 0x11, 0x01, 0x0D, 0x15, 0x15, 0x0E],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        '\\' => [0x00, 0x10, 0x08, 0x04, 0x02, 0x01, 0x00],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        '^' => [0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '`' => [0x08, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        'g' => [0x00, 0x00, 0x0F, 0x11, 0x0F, 0x01, 0x0E],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'q' => [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0F, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1E, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        '{' => [0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02],
        '|' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        '}' => [0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08],
        '~' => [0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00],
        '×' => [0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00],
        _ => [0; 7],
    }
}
