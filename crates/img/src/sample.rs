//! The embedded default disk: a sample with the mix real disks have — a half of
//! incompressible data, a quarter of zeros (holes), a quarter of text — laid out
//! in 1 MiB blocks, so the demo exercises every path of the image engine.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Block size of the layout.
const BLOCK: usize = 1 << 20;

/// Writes a sample disk of `size` bytes to `path`; the same seed gives the same bytes.
pub(crate) fn write_sample_disk(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(BLOCK, File::create(path)?);
    let mut rng = SplitMix(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut block = vec![0u8; BLOCK];
    let mut written = 0u64;
    let mut n = 0u64;
    while written < size {
        let len = (size - written).min(BLOCK as u64) as usize;
        let buf = &mut block[..len];
        // Pattern per 8 blocks: 4 random, 2 zero, 2 text, shuffled by block number.
        match (n.wrapping_mul(5) + 3) % 8 {
            0..=3 => fill_random(buf, &mut rng),
            4 | 5 => buf.fill(0),
            _ => fill_text(buf, n),
        }
        out.write_all(buf)?;
        written += len as u64;
        n += 1;
    }
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn fill_random(buf: &mut [u8], rng: &mut SplitMix) {
    for word in buf.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        word.copy_from_slice(&v[..word.len()]);
    }
}

fn fill_text(buf: &mut [u8], block: u64) {
    const WORDS: [&str; 12] = [
        "imaging",
        "session",
        "master",
        "client",
        "multicast",
        "chunk",
        "restore",
        "kernel",
        "sector",
        "partition",
        "checksum",
        "network",
    ];
    let mut pos = 0;
    let mut i = block as usize;
    while pos < buf.len() {
        let line = format!(
            "{:08} {} {} {}\n",
            i,
            WORDS[i % WORDS.len()],
            WORDS[(i / 7) % WORDS.len()],
            WORDS[(i / 3) % WORDS.len()]
        );
        let take = line.len().min(buf.len() - pos);
        buf[pos..pos + take].copy_from_slice(&line.as_bytes()[..take]);
        pos += take;
        i += 1;
    }
}

/// SplitMix64: tiny, fast, good enough for sample data.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_deterministic_and_mixed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        write_sample_disk(&a, 8 * BLOCK as u64 + 123, 7).expect("write a");
        write_sample_disk(&b, 8 * BLOCK as u64 + 123, 7).expect("write b");
        let da = std::fs::read(&a).expect("read a");
        assert_eq!(da, std::fs::read(&b).expect("read b"));
        assert_eq!(da.len(), 8 * BLOCK + 123);
        let zero_blocks = da
            .chunks(BLOCK)
            .filter(|c| c.iter().all(|&x| x == 0))
            .count();
        assert_eq!(zero_blocks, 2);
    }
}
