//! Which partition table a disk has, and what it says.
//!
//! The tables are read with `gptman` and `mbrman`. Both trust their input
//! in a few places (capacity from a count field, unchecked `u32`/`u64`
//! additions, an `unwrap` on an empty range), so the fields they would trust
//! are checked here first; what fails a check is reported as a damaged
//! table and the disk is imaged whole.

mod gpt;
mod mbr;
mod types;

use imgcast_disk::{Extent, Extents};

use crate::io::{le32, Disk};
use crate::layout::TableKind;
use crate::FsmapError;

/// A partition as the table describes it, before its filesystem is looked at.
#[derive(Clone, Debug)]
pub(crate) struct RawPartition {
    pub(crate) number: u32,
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) type_id: String,
    pub(crate) type_name: String,
    pub(crate) name: Option<String>,
}

/// A readable partition table.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) kind: TableKind,
    pub(crate) partitions: Vec<RawPartition>,
    /// Table structures and the gap before the first partition.
    pub(crate) used: Extents,
    pub(crate) gpt_backup: Option<Extent>,
    pub(crate) notes: Vec<String>,
}

/// What sits at the start of a disk.
#[derive(Debug)]
pub(crate) enum Detected {
    /// A partition table.
    Table(Table),
    /// A table whose structures do not hold together: the disk is imaged
    /// whole, for this reason.
    Damaged(String),
    /// No partition table (a bare filesystem, or nothing known).
    None,
}

/// Reads the partition table of `disk`, if any.
///
/// Order matters: a GPT header at LBA 1 wins; then a sector 0 that is a FAT
/// or NTFS boot sector means a bare filesystem (its boot code would parse as
/// a bogus MBR); then an MBR with at least one partition.
pub(crate) fn detect(disk: &Disk, logical_sector: u32) -> Result<Detected, FsmapError> {
    let mut sizes = vec![logical_sector, 512, 4096];
    sizes.dedup();
    let region = disk.region();
    for &ss in &sizes {
        if ss >= 512 && region.peek(u64::from(ss), 8)?.as_deref() == Some(b"EFI PART") {
            return gpt::read(disk, ss);
        }
    }
    let Some(s0) = region.peek(0, 512)? else {
        return Ok(Detected::None);
    };
    if s0[510..512] != [0x55, 0xAA] || looks_like_fs_boot_sector(&s0) {
        return Ok(Detected::None);
    }
    if protective_entry(&s0) {
        // A protective MBR without a primary GPT header: the backup may
        // still be there.
        return gpt::read(disk, logical_sector.max(512));
    }
    mbr::read(disk, logical_sector.max(512), &s0)
}

/// Whether sector 0 is the boot sector of a FAT, NTFS or exFAT filesystem.
fn looks_like_fs_boot_sector(s0: &[u8]) -> bool {
    if &s0[3..11] == b"NTFS    " || &s0[3..11] == b"EXFAT   " {
        return true;
    }
    crate::fs::fat::looks_like_bpb(s0)
}

/// Whether any MBR entry has the GPT protective type 0xEE.
fn protective_entry(s0: &[u8]) -> bool {
    (0..4).any(|i| s0[446 + 16 * i + 4] == 0xEE && le32(s0, 446 + 16 * i + 12) > 0)
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    fn disk_of(
        bytes: &[u8],
    ) -> Result<(tempfile::NamedTempFile, Disk), Box<dyn std::error::Error>> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(bytes)?;
        let d = Disk::open(f.path())?;
        Ok((f, d))
    }

    /// An MBR with the given (type, start LBA, sectors) entries.
    fn mbr(entries: &[(u8, u32, u32)]) -> Vec<u8> {
        let mut d = vec![0u8; 4 << 20];
        for (i, &(sys, start, n)) in entries.iter().enumerate() {
            let e = 446 + 16 * i;
            d[e + 4] = sys;
            d[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
            d[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        }
        d[440..444].copy_from_slice(&0xCAFE_F00Du32.to_le_bytes());
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    #[test]
    fn mbr_primaries_and_their_gap() -> Result<(), Box<dyn std::error::Error>> {
        let (_f, d) = disk_of(&mbr(&[(0x83, 2048, 4096), (0x82, 6144, 2048)]))?;
        let Detected::Table(t) = detect(&d, 512)? else {
            return Err("no table".into());
        };
        let parts: Vec<_> = t
            .partitions
            .iter()
            .map(|p| (p.number, p.start, p.size))
            .collect();
        assert_eq!(parts, [(1, 1 << 20, 2 << 20), (2, 3 << 20, 1 << 20)]);
        assert_eq!(t.partitions[1].type_name, "Linux swap / Solaris");
        let spans: Vec<_> = t.used.ranges().iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(spans, [(0, 1 << 20)]);
        assert!(
            matches!(t.kind, TableKind::Mbr { ref disk_signature, .. } if disk_signature == "0xcafef00d")
        );
        Ok(())
    }

    #[test]
    fn not_an_mbr() -> Result<(), Box<dyn std::error::Error>> {
        // No entries, no signature, or a FAT boot sector: no table.
        let (_f, d) = disk_of(&mbr(&[]))?;
        assert!(matches!(detect(&d, 512)?, Detected::None));
        let (_f, d) = disk_of(&[0u8; 4096])?;
        assert!(matches!(detect(&d, 512)?, Detected::None));
        let mut fat = mbr(&[(0x83, 2048, 4096)]);
        fat[0] = 0xEB;
        fat[2] = 0x90;
        fat[11..13].copy_from_slice(&512u16.to_le_bytes());
        fat[13] = 4;
        fat[14] = 1;
        fat[16] = 2;
        fat[19..21].copy_from_slice(&8192u16.to_le_bytes());
        fat[21] = 0xF8;
        fat[22] = 8;
        let (_f, d) = disk_of(&fat)?;
        assert!(matches!(detect(&d, 512)?, Detected::None));
        // A boot flag that is neither 0 nor 0x80: not a table either.
        let mut b = mbr(&[(0x83, 2048, 4096)]);
        b[446] = 0x12;
        let (_f, d) = disk_of(&b)?;
        assert!(matches!(detect(&d, 512)?, Detected::None));
        Ok(())
    }

    #[test]
    fn damaged_mbr_and_chains() -> Result<(), Box<dyn std::error::Error>> {
        let (_f, d) = disk_of(&mbr(&[(0x83, 0, 4096)]))?;
        assert!(matches!(detect(&d, 512)?, Detected::Damaged(m) if m.contains("sector 0")));
        // An extended partition whose first EBR links to itself.
        let mut b = mbr(&[(0x83, 2048, 2048), (0x05, 4096, 4096)]);
        let ebr = 4096 * 512;
        b[ebr + 446 + 4] = 0x83;
        b[ebr + 446 + 8..ebr + 446 + 12].copy_from_slice(&64u32.to_le_bytes());
        b[ebr + 446 + 12..ebr + 446 + 16].copy_from_slice(&64u32.to_le_bytes());
        b[ebr + 462 + 4] = 0x05;
        b[ebr + 462 + 8] = 0; // next: 0 ends the chain...
        b[ebr + 510] = 0x55;
        b[ebr + 511] = 0xAA;
        let (_f, d) = disk_of(&b)?;
        let Detected::Table(t) = detect(&d, 512)? else {
            return Err("no table".into());
        };
        let parts: Vec<_> = t.partitions.iter().map(|p| (p.number, p.start)).collect();
        assert_eq!(parts, [(1, 2048 * 512), (5, (4096 + 64) * 512)]);
        // ...and a link back to sector 0 of the chain loops.
        b[ebr + 462 + 8] = 0;
        let mut second = vec![0u8; 512];
        second[510] = 0x55;
        second[511] = 0xAA;
        second[462 + 8] = 1; // back to relative sector 1 from relative 128
        b[ebr + 462 + 8] = 128;
        b[ebr + 128 * 512..ebr + 129 * 512].copy_from_slice(&second);
        let (_f, d) = disk_of(&b)?;
        let Detected::Table(t) = detect(&d, 512)? else {
            return Err("no table".into());
        };
        assert!(
            t.notes.iter().any(|n| n.contains("loops back")),
            "{:?}",
            t.notes
        );
        assert_eq!(t.partitions.len(), 1);
        assert!(t.used.contains(4096 * 512) && t.used.contains(8191 * 512));
        Ok(())
    }

    #[test]
    fn gpt_written_by_gptman_reads_back() -> Result<(), Box<dyn std::error::Error>> {
        let mut cur = Cursor::new(vec![0u8; 8 << 20]);
        let mut g = gptman::GPT::new_from(&mut cur, 512, [7; 16])?;
        g[1] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: 4095,
            attribute_bits: 0,
            partition_name: "boot".into(),
        };
        g.write_into(&mut cur)?;
        let (_f, d) = disk_of(cur.get_ref())?;
        let Detected::Table(t) = detect(&d, 512)? else {
            return Err("no table".into());
        };
        let p = &t.partitions[0];
        assert_eq!((p.number, p.start, p.size), (1, 1 << 20, 1 << 20));
        assert_eq!(p.name.as_deref(), Some("boot"));
        assert_eq!(p.type_id, "01010101-0101-0101-0101-010101010101");
        let b = t.gpt_backup.ok_or("no backup")?;
        assert_eq!((b.start, b.end), ((8 << 20) - 33 * 512, 8 << 20));
        assert!(matches!(
            t.kind,
            TableKind::Gpt {
                from_backup: false,
                entries: 128,
                ..
            }
        ));
        Ok(())
    }
}
