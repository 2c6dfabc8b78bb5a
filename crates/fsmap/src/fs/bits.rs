//! Allocation bitmaps (LSB-first, as ext and NTFS store them) and the
//! checksums ext4 puts on its metadata.

use crc::{Algorithm, Crc, CRC_16_ARC};

/// Calls `f(first, count)` for each run of set bits among the first
/// `nbits` bits of `bitmap` (bit `i` is bit `i % 8` of byte `i / 8`).
/// Returns the number of set bits.
pub(crate) fn for_each_run(bitmap: &[u8], nbits: u64, mut f: impl FnMut(u64, u64)) -> u64 {
    let nbits = nbits.min(bitmap.len() as u64 * 8);
    let mut ones = 0;
    let mut run_start: Option<u64> = None;
    let mut i = 0u64;
    while i < nbits {
        let byte = bitmap[(i / 8) as usize];
        // Whole bytes of one value at a byte boundary: skip them in one step.
        if i % 8 == 0 && i + 8 <= nbits && (byte == 0 || byte == 0xFF) {
            if byte == 0xFF {
                run_start.get_or_insert(i);
                ones += 8;
            } else if let Some(s) = run_start.take() {
                f(s, i - s);
            }
            i += 8;
            continue;
        }
        if (byte >> (i % 8)) & 1 == 1 {
            run_start.get_or_insert(i);
            ones += 1;
        } else if let Some(s) = run_start.take() {
            f(s, i - s);
        }
        i += 1;
    }
    if let Some(s) = run_start {
        f(s, nbits - s);
    }
    ones
}

/// CRC32c with the register passed in and out unfinalised, as the Linux
/// `crc32c_le(seed, data)` that ext4's `ext4_chksum` wraps.
const CRC32C_RAW: Algorithm<u32> = Algorithm {
    width: 32,
    poly: 0x1edc_6f41,
    init: 0xffff_ffff,
    refin: true,
    refout: true,
    xorout: 0,
    check: 0x1cf9_6d7c,
    residue: 0,
};
static CRC32C: Crc<u32> = Crc::<u32>::new(&CRC32C_RAW);
static CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_ARC);

/// `crc32c_le(seed, data)` over several pieces.
pub(crate) fn crc32c(seed: u32, pieces: &[&[u8]]) -> u32 {
    // The crate reflects the initial value of a reflected algorithm; undo it
    // so that `seed` is the register itself, as in the kernel.
    let mut d = CRC32C.digest_with_initial(seed.reverse_bits());
    for p in pieces {
        d.update(p);
    }
    d.finalize()
}

/// The kernel's `crc16(seed, data)` (CRC-16/ARC register, no final xor)
/// over several pieces: ext4's `gdt_csum` descriptor checksum.
pub(crate) fn crc16(seed: u16, pieces: &[&[u8]]) -> u16 {
    let mut d = CRC16.digest_with_initial(seed.reverse_bits());
    for p in pieces {
        d.update(p);
    }
    d.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(b: &[u8], n: u64) -> (Vec<(u64, u64)>, u64) {
        let mut v = Vec::new();
        let ones = for_each_run(b, n, |s, l| v.push((s, l)));
        (v, ones)
    }

    #[test]
    fn runs_lsb_first_with_whole_bytes_and_tails() {
        assert_eq!(runs(&[0b0000_0110], 8), (vec![(1, 2)], 2));
        assert_eq!(runs(&[0xFF, 0xFF, 0x01], 24), (vec![(0, 17)], 17));
        assert_eq!(
            runs(&[0x80, 0xFF, 0x00, 0xF0], 32),
            (vec![(7, 9), (28, 4)], 13)
        );
        // Bits past nbits are ignored (ext pads the last group with ones).
        assert_eq!(runs(&[0xFF, 0xFF], 12), (vec![(0, 12)], 12));
        assert_eq!(runs(&[0x00, 0xFF], 10), (vec![(8, 2)], 2));
        // nbits past the buffer is clipped.
        assert_eq!(runs(&[0x01], 1000), (vec![(0, 1)], 1));
        assert_eq!(runs(&[], 10), (vec![], 0));
    }

    #[test]
    fn crcs_match_the_kernel_conventions() {
        // Standard CRC-32C of "123456789" is 0xE3069283; the kernel's raw
        // form with seed ~0 is its complement.
        assert_eq!(!crc32c(!0, &[b"123456789"]), 0xE306_9283);
        // Pieces chain like one buffer.
        assert_eq!(crc32c(7, &[b"1234", b"56789"]), crc32c(7, &[b"123456789"]));
        // CRC-16/ARC of "123456789" is 0xBB3D (seed 0, no xor).
        assert_eq!(crc16(0, &[b"123456789"]), 0xBB3D);
        assert_eq!(
            crc16(0xFFFF, &[b"12", b"3456789"]),
            crc16(0xFFFF, &[b"123456789"])
        );
    }
}
