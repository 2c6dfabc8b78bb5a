//! Integration tests of imgcast-image: one binary, a module per area.

mod corruption;
mod enospc;
mod loopdev;
mod pipeline;
mod roundtrip;
mod sparse;
mod v1compat;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imgcast_image::{make, Extent, Extents, ImageSummary, Level, MakeOptions};

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A disk with random, zero and compressible regions and a short tail.
pub(crate) fn mixed_disk(chunk: usize) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend(noise(chunk, 1));
    d.extend(vec![0u8; 2 * chunk]);
    d.extend(b"compressible text ".repeat(chunk / 9));
    d.extend(noise(chunk / 2, 2));
    d.extend(vec![0u8; chunk + 100]);
    d.extend(b"abc".repeat(chunk / 3));
    d.extend(noise(777, 3));
    d
}

pub(crate) fn make_image(
    dir: &Path,
    disk: &[u8],
    level: Level,
    chunk: u32,
) -> Result<(PathBuf, ImageSummary), Box<dyn std::error::Error>> {
    make_mapped(dir, disk, level, chunk, None, None)
}

/// Makes `dir/disk.img` from `disk` with a map of used bytes and a layout.
pub(crate) fn make_mapped(
    dir: &Path,
    disk: &[u8],
    level: Level,
    chunk: u32,
    used: Option<&Extents>,
    layout: Option<&[u8]>,
) -> Result<(PathBuf, ImageSummary), Box<dyn std::error::Error>> {
    let src = dir.join("source.raw");
    fs::write(&src, disk)?;
    let img = dir.join("disk.img");
    let opts = MakeOptions::new(&src, &img)
        .level(level)
        .chunk_size(chunk)
        .threads(2)
        .overwrite(true)
        .used(used.cloned().map(Arc::new))
        .layout(layout.map(<[u8]>::to_vec));
    let summary = make(&opts, &|_| {})?;
    Ok((img, summary))
}

/// Extents from `(start, len)` pairs.
pub(crate) fn extents(spans: &[(u64, u64)]) -> Extents {
    spans
        .iter()
        .filter_map(|&(s, l)| Extent::new(s, l))
        .collect()
}

/// Whether byte `i` of a disk is kept by a map rounded out to `block`s.
pub(crate) fn kept(map: &Extents, block: u64, size: u64, i: u64) -> bool {
    map.clipped(size).rounded_out(block, size).contains(i)
}

/// True when running as root (loop devices and tmpfs mounts possible).
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}
