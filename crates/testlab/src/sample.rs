//! Deterministic sample disks, and comparing files.

use std::path::Path;

/// What follows the whole MiB of every sample disk, so that no disk is a
/// whole number of chunks or sectors.
pub const SAMPLE_TAIL: &[u8] = b"tail";

/// Writes a sample disk of `mib` MiB followed by [`SAMPLE_TAIL`]: per 4 MiB,
/// two MiB of random data, one of zeros (a hole) and one of text. The same
/// seed gives the same bytes; different seeds, different random data.
///
/// The tests' one generator; `img demo` has its own (it streams disks of any
/// size and is part of the binary).
pub fn sample_disk(path: &Path, mib: usize, seed: u64) {
    let mut data = Vec::with_capacity((mib << 20) + SAMPLE_TAIL.len());
    // xorshift64, never seeded with 0.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..mib {
        match i % 4 {
            0 | 1 => {
                for _ in 0..(1 << 17) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    data.extend_from_slice(&x.to_le_bytes());
                }
            }
            2 => data.resize(data.len() + (1 << 20), 0),
            _ => {
                while data.len() < (i + 1) << 20 {
                    data.extend_from_slice(format!("line {i} {x}\n").as_bytes());
                }
                data.truncate((i + 1) << 20);
            }
        }
    }
    data.extend_from_slice(SAMPLE_TAIL);
    std::fs::write(path, data).expect("write sample");
}

/// True if both files can be read and hold the same bytes.
pub fn same(a: &Path, b: &Path) -> bool {
    match (std::fs::read(a), std::fs::read(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deterministic_mixed_and_end_in_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        sample_disk(&a, 5, 3);
        sample_disk(&b, 5, 3);
        sample_disk(&c, 5, 4);
        assert!(same(&a, &b));
        assert!(!same(&a, &c));
        assert!(!same(&a, &dir.path().join("missing")));
        let data = std::fs::read(&a).expect("read");
        assert_eq!(data.len(), (5 << 20) + SAMPLE_TAIL.len());
        assert!(data.ends_with(SAMPLE_TAIL));
        let mib: Vec<&[u8]> = data.chunks(1 << 20).collect();
        assert!(mib[2].iter().all(|&b| b == 0), "MiB 2 is a hole");
        assert!(mib[3].starts_with(b"line 3 "), "MiB 3 is text");
        assert_ne!(mib[0], mib[4], "random MiBs differ");
    }
}
