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
