//! A per-tile picture in the spirit of PopVision's tile-memory view: one cell per tile
//! (46 × 32 for 1472 tiles), the left panel coloured by live bytes relative to the
//! tile budget (red above it), the right by **estimated** cycles relative to the
//! slowest tile. Written as a PNG by a minimal encoder (stored deflate blocks, CRC-32,
//! Adler-32): the picture is small, so compression is not worth a dependency.

use crate::error::Result;
use std::path::Path;

/// What the picture shows.
#[derive(Clone, Debug, PartialEq)]
pub struct TilePicture {
    /// Live bytes per tile.
    pub bytes: Vec<usize>,
    /// Estimated cycles per tile.
    pub cycles: Vec<u64>,
    /// The per-tile byte budget.
    pub budget: usize,
}

const CELL: usize = 8;

fn ramp(v: f64) -> [u8; 3] {
    // 0 → dark blue, 0.5 → green-yellow, 1 → yellow-white.
    let v = v.clamp(0.0, 1.0);
    let r = (255.0 * (1.5 * v - 0.2).clamp(0.0, 1.0)) as u8;
    let g = (255.0 * (1.2 * v).clamp(0.0, 1.0)) as u8;
    let b = (255.0 * (0.6 - v).clamp(0.2, 1.0)) as u8;
    [r, g, b]
}

impl TilePicture {
    /// The RGB image: (width, height, pixels row-major).
    pub fn render(&self) -> (usize, usize, Vec<u8>) {
        let tiles = self.bytes.len().max(1);
        let cols = ((tiles as f64).sqrt() * 1.2).ceil() as usize;
        let rows = tiles.div_ceil(cols);
        let panel = cols * CELL;
        let width = 2 * panel + CELL;
        let height = rows * CELL;
        let mut px = vec![40u8; width * height * 3];
        let maxc = self.cycles.iter().copied().max().unwrap_or(0).max(1) as f64;
        for t in 0..tiles {
            let (cx, cy) = ((t % cols) * CELL, (t / cols) * CELL);
            let b = self.bytes.get(t).copied().unwrap_or(0);
            let mem = if b == 0 {
                [70, 70, 70]
            } else if b > self.budget {
                [255, 0, 0]
            } else {
                ramp(b as f64 / self.budget.max(1) as f64)
            };
            let c = self.cycles.get(t).copied().unwrap_or(0);
            let cyc = if c == 0 {
                [70, 70, 70]
            } else {
                ramp(c as f64 / maxc)
            };
            for (x0, col) in [(cx, mem), (panel + CELL + cx, cyc)] {
                for y in cy..cy + CELL - 1 {
                    for x in x0..x0 + CELL - 1 {
                        let i = (y * width + x) * 3;
                        px[i..i + 3].copy_from_slice(&col);
                    }
                }
            }
        }
        (width, height, px)
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// Encodes an 8-bit RGB image as PNG bytes (stored, uncompressed deflate blocks).
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((width * 3 + 1) * height);
    for y in 0..height {
        raw.push(0); // filter: none
        raw.extend_from_slice(&rgb[y * width * 3..(y + 1) * width * 3]);
    }
    let mut z = vec![0x78, 0x01];
    let mut chunks = raw.chunks(65535).peekable();
    if chunks.peek().is_none() {
        z.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(ch) = chunks.next() {
        z.push(if chunks.peek().is_none() { 1 } else { 0 });
        let n = ch.len() as u16;
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(!n).to_le_bytes());
        z.extend_from_slice(ch);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());
    let mut png = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut chunk = |kind: &[u8; 4], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}

/// Renders and writes the picture as a PNG file.
pub fn write_png(path: &Path, pic: &TilePicture) -> Result<()> {
    let (w, h, px) = pic.render();
    std::fs::write(path, encode_png(w, h, &px))?;
    Ok(())
}
