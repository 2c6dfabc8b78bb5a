//! FAT12/16/32: the boot sector's BPB and the allocation table.
//!
//! The FAT type is decided by the count of data clusters, as the Microsoft
//! specification ("FAT: General Overview of On-Disk Format", 1.03) says,
//! never by the `FilSysType` label. Used: the reserved sectors (boot sector,
//! FSInfo, backup boot sector), every FAT copy, the FAT12/16 root directory,
//! and every cluster whose entry is non-zero in any FAT copy (a copy that
//! disagrees costs space, not data).
//!
//! Bad-cluster marks (`0xFF7`, `0xFFF7`, `0x0FFFFFF7`) are *not* used: no
//! file holds them, and reading them on the source is what fails.

use imgcast_disk::Extents;

use super::Mapped;
use crate::io::{bytes, ensure, le16, le32, text, Fault, Region};
use crate::layout::{FsKind, MapMethod};

/// Bytes of FAT read at a time: a multiple of 12, so that FAT12 entry pairs
/// and FAT16/32 entries never straddle two reads.
const CHUNK: u64 = 12 * 87_381;

/// The checked BPB of a FAT filesystem.
#[derive(Debug, Clone)]
pub(crate) struct Bpb {
    pub(crate) kind: FsKind,
    bits: u64,
    bps: u64,
    spc: u64,
    rsvd: u64,
    nfats: u64,
    fatsz: u64,
    root_sectors: u64,
    pub(crate) totsec: u64,
    /// Data clusters (numbered 2..count+2).
    pub(crate) count: u64,
    root_clus: u64,
    /// FAT32 with mirroring off: the one active FAT.
    active_fat: Option<u64>,
    /// Byte of the boot sector where Linux keeps its dirty flag.
    state_byte: usize,
}

impl Bpb {
    fn cluster_size(&self) -> u64 {
        self.bps * self.spc
    }

    fn data_start(&self) -> u64 {
        (self.rsvd + self.nfats * self.fatsz + self.root_sectors) * self.bps
    }

    fn fat_start(&self, copy: u64) -> u64 {
        (self.rsvd + copy * self.fatsz) * self.bps
    }

    fn bad_mark(&self) -> u32 {
        match self.bits {
            12 => 0xFF7,
            16 => 0xFFF7,
            _ => 0x0FFF_FFF7,
        }
    }
}

/// Bytes holding `entries` FAT entries of `bits` bits.
fn fat_bytes(bits: u64, entries: u64) -> u64 {
    match bits {
        12 => (entries * 3).div_ceil(2),
        16 => entries * 2,
        _ => entries * 4,
    }
}

/// Entry `n` of a FAT buffer that starts at entry 0 (for FAT12, at an even
/// entry).
fn entry(bits: u64, buf: &[u8], n: u64) -> u32 {
    match bits {
        12 => {
            let v = le16(buf, (n * 3 / 2) as usize);
            u32::from(if n % 2 == 0 { v & 0xFFF } else { v >> 4 })
        }
        16 => u32::from(le16(buf, (n * 2) as usize)),
        _ => le32(buf, (n * 4) as usize) & 0x0FFF_FFFF,
    }
}

/// Whether sector 0 looks like a FAT boot sector: jump, sane BPB, 0x55AA.
pub(crate) fn looks_like_bpb(s: &[u8]) -> bool {
    if s.len() < 512 || s[510..512] != [0x55, 0xAA] || !matches!(s[0], 0xEB | 0xE9) {
        return false;
    }
    let bps = le16(s, 0x0B);
    let spc = s[0x0D];
    let media = s[0x15];
    matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && le16(s, 0x0E) >= 1
        && (1..=4).contains(&s[0x10])
        && (media == 0xF0 || media >= 0xF8)
        && (le16(s, 0x13) != 0 || le32(s, 0x20) != 0)
        && (le16(s, 0x16) != 0 || le32(s, 0x24) != 0)
}

/// Parses and checks the BPB of sector `s` for a region of `part_len` bytes.
pub(crate) fn parse_bpb(s: &[u8], part_len: u64) -> Result<Bpb, Fault> {
    ensure(looks_like_bpb(s), || "no FAT boot sector".into())?;
    let bps = u64::from(le16(s, 0x0B));
    let spc = u64::from(s[0x0D]);
    let rsvd = u64::from(le16(s, 0x0E));
    let nfats = u64::from(s[0x10]);
    let root_ents = u64::from(le16(s, 0x11));
    let tot16 = u64::from(le16(s, 0x13));
    let fatsz16 = u64::from(le16(s, 0x16));
    let totsec = if tot16 != 0 {
        tot16
    } else {
        u64::from(le32(s, 0x20))
    };
    let fatsz = if fatsz16 != 0 {
        fatsz16
    } else {
        u64::from(le32(s, 0x24))
    };
    let root_sectors = (root_ents * 32).div_ceil(bps);
    let meta = rsvd + nfats * fatsz + root_sectors;
    ensure(meta < totsec, || {
        format!("{meta} metadata sectors in a filesystem of {totsec}")
    })?;
    ensure(totsec * bps <= part_len, || {
        format!("{totsec} sectors of {bps} bytes do not fit the partition ({part_len} bytes)")
    })?;
    let count = (totsec - meta) / spc;
    ensure(count >= 1, || "no data clusters".into())?;
    let (kind, bits) = if count < 4085 {
        (FsKind::Fat12, 12)
    } else if count < 65525 {
        (FsKind::Fat16, 16)
    } else {
        (FsKind::Fat32, 32)
    };
    let mut root_clus = 0;
    let mut active_fat = None;
    if bits == 32 {
        ensure(root_ents == 0 && fatsz16 == 0, || {
            format!("FAT32 by cluster count ({count}) but a FAT16 root directory or FAT size")
        })?;
        ensure(count <= 0x0FFF_FFF5, || format!("{count} clusters"))?;
        root_clus = u64::from(le32(s, 0x2C));
        ensure((2..count + 2).contains(&root_clus), || {
            format!("root directory at cluster {root_clus} of {count}")
        })?;
        let flags = le16(s, 0x28);
        if flags & 0x80 != 0 {
            let a = u64::from(flags & 0xF);
            ensure(a < nfats, || format!("active FAT {a} of {nfats}"))?;
            active_fat = Some(a);
        }
    } else {
        ensure(root_ents > 0, || {
            format!("FAT{bits} by cluster count ({count}) but no root directory")
        })?;
    }
    let need = fat_bytes(bits, count + 2);
    ensure(fatsz * bps >= need, || {
        format!(
            "a FAT of {} bytes cannot hold {} clusters",
            fatsz * bps,
            count
        )
    })?;
    Ok(Bpb {
        kind,
        bits,
        bps,
        spc,
        rsvd,
        nfats,
        fatsz,
        root_sectors,
        totsec,
        count,
        root_clus,
        active_fat,
        state_byte: if bits == 32 { 0x41 } else { 0x25 },
    })
}

/// The label: the root directory's volume-label entry, else the BPB's.
fn label(region: &Region, s: &[u8], b: &Bpb) -> Result<Option<String>, Fault> {
    let (off, len) = if b.bits == 32 {
        (
            b.data_start() + (b.root_clus - 2) * b.cluster_size(),
            b.cluster_size(),
        )
    } else {
        ((b.rsvd + b.nfats * b.fatsz) * b.bps, b.root_sectors * b.bps)
    };
    let dir = region.read_vec(off, len.min(64 << 10))?;
    for e in dir.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xE5 => continue,
            _ => {}
        }
        let attr = e[11];
        if attr != 0x0F && attr & 0x08 != 0 && attr & 0x10 == 0 {
            return Ok(text(&e[..11]).filter(|l| l != "NO NAME"));
        }
    }
    let (sig, at) = if b.bits == 32 {
        (0x42, 0x47)
    } else {
        (0x26, 0x2B)
    };
    Ok(if matches!(s[sig], 0x28 | 0x29) {
        text(bytes(s, at, 11)).filter(|l| l != "NO NAME")
    } else {
        None
    })
}

fn volume_id(s: &[u8], b: &Bpb) -> Option<String> {
    let (sig, at) = if b.bits == 32 {
        (0x42, 0x43)
    } else {
        (0x26, 0x27)
    };
    matches!(s[sig], 0x28 | 0x29).then(|| {
        let id = le32(s, at);
        format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)
    })
}

/// Why the filesystem is dirty, from FAT[1] (Windows) or the boot sector
/// flag (Linux sets it while mounted read-write).
fn dirty_reason(s: &[u8], b: &Bpb, fat1: u32) -> Option<String> {
    let (clean, hard) = match b.bits {
        16 => (0x8000, 0x4000),
        32 => (0x0800_0000, 0x0400_0000),
        _ => (0, 0),
    };
    if clean != 0 && fat1 & clean == 0 {
        Some("marked dirty: not cleanly unmounted (clean-shutdown bit of FAT[1] clear)".into())
    } else if hard != 0 && fat1 & hard == 0 {
        Some("marked as having disk errors (hard-error bit of FAT[1] clear)".into())
    } else if s[b.state_byte] & 1 != 0 {
        Some("marked dirty: not cleanly unmounted (dirty flag in the boot sector)".into())
    } else {
        None
    }
}

/// Maps the FAT filesystem of `region` whose boot sector is `s`.
pub(crate) fn map(region: &Region, s: &[u8]) -> Result<Mapped, Fault> {
    let b = parse_bpb(s, region.len)?;
    let copies: Vec<u64> = match b.active_fat {
        Some(a) => vec![a],
        None => (0..b.nfats).collect(),
    };
    let entries = b.count + 2;
    let total = fat_bytes(b.bits, entries);
    let per_chunk = CHUNK * 8 / b.bits; // entries per chunk
    let cs = b.cluster_size();
    let data = b.data_start();
    let bad = b.bad_mark();

    let mut used = Extents::new();
    used.insert(0, data);
    let (mut bad_clusters, mut differing, mut fat1) = (0u64, 0u64, 0u32);
    let mut run: Option<u64> = None;
    let flush = |used: &mut Extents, run: &mut Option<u64>, end: u64| {
        if let Some(first) = run.take() {
            used.insert(data + (first - 2) * cs, (end - first) * cs);
        }
    };
    let mut off = 0;
    while off < total {
        let len = CHUNK.min(total - off);
        let bufs = copies
            .iter()
            .map(|&c| region.read_vec(b.fat_start(c) + off, len))
            .collect::<Result<Vec<_>, _>>()?;
        let first = off / CHUNK * per_chunk;
        let last = (first + per_chunk).min(entries);
        for n in first..last {
            let mut any_used = false;
            let mut values = bufs.iter().map(|buf| entry(b.bits, buf, n - first));
            let v0 = values.next().unwrap_or(0);
            if n == 1 {
                fat1 = v0;
            }
            let mut same = true;
            for v in std::iter::once(v0).chain(values) {
                any_used |= v != 0 && v != bad;
                same &= v == v0;
            }
            differing += u64::from(!same);
            if n < 2 {
                continue;
            }
            if any_used {
                run.get_or_insert(n);
            } else {
                if v0 == bad {
                    bad_clusters += 1;
                }
                flush(&mut used, &mut run, n);
            }
        }
        off += len;
    }
    flush(&mut used, &mut run, entries);

    let mut notes = Vec::new();
    if differing > 0 {
        notes.push(format!(
            "the FAT copies differ in {differing} of their entries: clusters used in any copy are kept"
        ));
    }
    if bad_clusters > 0 {
        notes.push(format!(
            "{bad_clusters} cluster(s) marked bad are not imaged"
        ));
    }
    Ok(Mapped {
        kind: b.kind.clone(),
        label: label(region, s, &b)?,
        uuid: volume_id(s, &b),
        block_size: cs as u32,
        total_bytes: b.totsec * b.bps,
        used,
        method: MapMethod::Bitmap,
        dirty: dirty_reason(s, &b, fat1),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FAT16 boot sector: 512-byte sectors, 4 per cluster, 1 reserved,
    /// 2 FATs of 32 sectors, 512 root entries, 32768 sectors (16 MiB).
    fn fat16() -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[0] = 0xEB;
        s[1] = 0x3C;
        s[2] = 0x90;
        s[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        s[0x0D] = 4;
        s[0x0E] = 1;
        s[0x10] = 2;
        s[0x11..0x13].copy_from_slice(&512u16.to_le_bytes());
        s[0x13..0x15].copy_from_slice(&32768u16.to_le_bytes());
        s[0x15] = 0xF8;
        s[0x16..0x18].copy_from_slice(&32u16.to_le_bytes());
        s[0x26] = 0x29;
        s[0x27..0x2B].copy_from_slice(&0x1234_ABCDu32.to_le_bytes());
        s[0x2B..0x36].copy_from_slice(b"MYDISK     ");
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn type_by_cluster_count_not_label() -> Result<(), String> {
        let mut s = fat16();
        s[0x36..0x3E].copy_from_slice(b"FAT12   "); // the label lies
        let b = parse_bpb(&s, 16 << 20).map_err(|e| format!("{e:?}"))?;
        // (32768 - 1 - 64 - 32) / 4 = 8167 clusters: FAT16.
        assert_eq!((b.kind.clone(), b.count), (FsKind::Fat16, 8167));
        assert_eq!(b.data_start(), 97 * 512);
        assert_eq!(volume_id(&s, &b).as_deref(), Some("1234-ABCD"));
        // Fewer clusters make it FAT12 whatever the label says.
        s[0x13..0x15].copy_from_slice(&8192u16.to_le_bytes());
        s[0x16..0x18].copy_from_slice(&12u16.to_le_bytes());
        let b = parse_bpb(&s, 16 << 20).map_err(|e| format!("{e:?}"))?;
        assert_eq!(b.kind, FsKind::Fat12);
        Ok(())
    }

    #[test]
    fn refuses_lying_counts() {
        let why = |s: &[u8], len| match parse_bpb(s, len) {
            Err(Fault::Bad(m)) => m,
            other => format!("not refused: {other:?}"),
        };
        // A FAT claiming 2^32 - 1 sectors: does not fit the partition.
        let mut s = fat16();
        s[0x13..0x15].copy_from_slice(&0u16.to_le_bytes());
        s[0x20..0x24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            why(&s, 16 << 20).contains("do not fit"),
            "{}",
            why(&s, 16 << 20)
        );
        // FAT32 by count, with a FAT too small for its clusters.
        s[0x16..0x18].copy_from_slice(&0u16.to_le_bytes());
        s[0x11..0x13].copy_from_slice(&0u16.to_le_bytes());
        s[0x24..0x28].copy_from_slice(&1u32.to_le_bytes());
        s[0x2C..0x30].copy_from_slice(&2u32.to_le_bytes());
        s[0x0D] = 64;
        s[0x28..0x2A].copy_from_slice(&[0, 0]); // FAT32 ext flags: mirrored
        assert!(
            why(&s, u64::MAX / 2).contains("cannot hold"),
            "{}",
            why(&s, u64::MAX / 2)
        );
        // A partition smaller than the filesystem.
        assert!(why(&fat16(), 1 << 20).contains("do not fit"));
        // Metadata larger than the filesystem.
        let mut s = fat16();
        s[0x16..0x18].copy_from_slice(&60000u16.to_le_bytes());
        assert!(why(&s, 16 << 20).contains("metadata sectors"));
        // Not a boot sector at all.
        let mut s = fat16();
        s[0x0B] = 3;
        assert!(why(&s, 16 << 20).contains("no FAT boot sector"));
    }

    #[test]
    fn entries_of_each_width() {
        // FAT12 entries 0..4 = 0xFF8, 0xFFF, 0x003, 0xABC packed in 6 bytes.
        let b12 = [0xF8, 0xFF, 0xFF, 0x03, 0xC0, 0xAB];
        let v: Vec<u32> = (0..4).map(|n| entry(12, &b12, n)).collect();
        assert_eq!(v, [0xFF8, 0xFFF, 0x003, 0xABC]);
        assert_eq!(fat_bytes(12, 4), 6);
        assert_eq!(fat_bytes(12, 5), 8);
        let b16 = [0xF8, 0xFF, 0x34, 0x12];
        assert_eq!(entry(16, &b16, 1), 0x1234);
        // FAT32 ignores the top four bits.
        let b32 = [0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(entry(32, &b32, 0), 0x0FFF_FFFF);
        assert_eq!(CHUNK % 12, 0);
    }

    #[test]
    fn dirty_bits() -> Result<(), String> {
        let s = fat16();
        let b = parse_bpb(&s, 16 << 20).map_err(|e| format!("{e:?}"))?;
        assert_eq!(dirty_reason(&s, &b, 0xFFFF), None);
        assert!(dirty_reason(&s, &b, 0x7FFF).is_some_and(|r| r.contains("clean-shutdown")));
        assert!(dirty_reason(&s, &b, 0xBFFF).is_some_and(|r| r.contains("hard-error")));
        let mut s2 = s.clone();
        s2[0x25] = 1;
        assert!(dirty_reason(&s2, &b, 0xFFFF).is_some_and(|r| r.contains("boot sector")));
        Ok(())
    }
}
