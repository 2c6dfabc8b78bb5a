//! MBR through `mbrman`, which follows the EBR chain of the logicals.
//!
//! `mbrman` adds EBR offsets as `u32` without checking (an overflow panics
//! in debug builds) and has no bound on the chain length, so the chain is
//! walked here first with the same rules, checked arithmetic and a bound.
//! A chain that fails the walk leaves the extended partition imaged whole.

use std::io::Cursor;

use imgcast_disk::Extents;
use mbrman::{MBRHeader, MBRPartitionEntry, MBR};

use super::types::mbr_type_name;
use super::{Detected, RawPartition, Table};
use crate::io::{le32, Disk, Fault};
use crate::layout::{Extended, TableKind};
use crate::FsmapError;

/// Linux allows 256 partitions per disk.
const MAX_LOGICALS: usize = 252;

pub(super) fn read(disk: &Disk, ss: u32, s0: &[u8]) -> Result<Detected, FsmapError> {
    let ss64 = u64::from(ss);
    let Ok(header) = MBRHeader::read_from(&mut Cursor::new(s0)) else {
        // A boot flag other than 0x00/0x80: not a partition table.
        return Ok(Detected::None);
    };
    let primaries: Vec<(u32, &MBRPartitionEntry)> = header
        .iter()
        .map(|(i, p)| (i as u32, p))
        .filter(|(_, p)| p.is_used() && p.sectors > 0)
        .collect();
    if primaries.is_empty() {
        return Ok(Detected::None);
    }
    if let Some((n, _)) = primaries.iter().find(|(_, p)| p.starting_lba == 0) {
        return Ok(Detected::Damaged(format!(
            "MBR partition {n} starts at sector 0, on the partition table itself"
        )));
    }
    let mut notes = Vec::new();
    let mut used = Extents::new();
    let mut partitions = Vec::new();
    let size = disk.size;
    let span = |p: &MBRPartitionEntry| {
        let start = u64::from(p.starting_lba) * ss64;
        let end = start + u64::from(p.sectors) * ss64;
        (start.min(size), end.min(size))
    };
    for &(n, p) in &primaries {
        if !p.is_extended() {
            partitions.push(raw(n, p, ss64, size, &mut notes));
        }
    }

    // The logicals: the first extended entry, even an empty one, is the one
    // mbrman follows.
    let ext = header
        .iter()
        .find(|(_, p)| p.is_extended())
        .map(|(i, p)| (i as u32, p));
    let mut extended = None;
    let mut ebr_offsets = Vec::new();
    if let Some((n, x)) = ext {
        let (start, end) = span(x);
        extended = Some(Extended {
            number: n,
            start,
            size: end - start,
            type_id: format!("0x{:02x}", x.sys),
        });
        match walk_chain(disk, ss64, x) {
            Err(Fault::Io(e)) => return Err(e),
            Err(Fault::Bad(why)) => {
                notes.push(format!(
                    "extended partition {n}: {why}: the extended partition is imaged whole"
                ));
                used.insert(start, end - start);
            }
            Ok(_) => {
                let mut reader = disk.region().reader();
                match MBR::read_from(&mut reader, ss) {
                    Ok(mbr) => {
                        let mut number = 5;
                        for l in &mbr.logical_partitions {
                            ebr_offsets.push(u64::from(l.absolute_ebr_lba) * ss64);
                            let p = &l.partition;
                            if p.is_used() && p.sectors > 0 && !p.is_extended() {
                                partitions.push(raw(number, p, ss64, size, &mut notes));
                                number += 1;
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(io) = reader.take_io_error() {
                            return Err(io);
                        }
                        notes.push(format!(
                            "extended partition {n}: {e}: the extended partition is imaged whole"
                        ));
                        used.insert(start, end - start);
                    }
                }
            }
        }
    }

    // Sector 0, the gap before the first partition (GRUB's core.img lives
    // there) and every EBR sector.
    let first = primaries
        .iter()
        .map(|(_, p)| span(p).0)
        .min()
        .unwrap_or(ss64);
    used.insert(0, first.max(ss64).min(size));
    for &o in &ebr_offsets {
        used.insert(o, ss64.min(size.saturating_sub(o)));
    }
    partitions.sort_by_key(|p| p.number);
    Ok(Detected::Table(Table {
        kind: TableKind::Mbr {
            disk_signature: format!("0x{:08x}", u32::from_le_bytes(header.disk_signature)),
            sector_size: ss,
            extended,
            ebr_offsets,
        },
        partitions,
        used,
        gpt_backup: None,
        notes,
    }))
}

/// The partition of entry `p`, clipped to the disk (with a note).
fn raw(
    number: u32,
    p: &MBRPartitionEntry,
    ss: u64,
    size: u64,
    notes: &mut Vec<String>,
) -> RawPartition {
    let start = u64::from(p.starting_lba) * ss;
    let end = start + u64::from(p.sectors) * ss;
    if end > size {
        notes.push(format!(
            "partition {number} ends at byte {end}, past the end of the disk ({size} bytes): clipped"
        ));
    }
    let start = start.min(size);
    RawPartition {
        number,
        start,
        size: end.min(size) - start,
        type_id: format!("0x{:02x}", p.sys),
        type_name: mbr_type_name(p.sys),
        name: None,
    }
}

/// Walks the EBR chain as `mbrman` will, with checked arithmetic; returns
/// the absolute sector of each EBR.
fn walk_chain(disk: &Disk, ss: u64, ext: &MBRPartitionEntry) -> Result<Vec<u64>, Fault> {
    let base = u64::from(ext.starting_lba);
    if base == 0 {
        return Err(Fault::bad("the extended partition starts at sector 0"));
    }
    let region = disk.region();
    let mut rel = 0u64;
    let mut ebrs = Vec::new();
    while ebrs.len() <= MAX_LOGICALS {
        let abs = base + rel;
        if abs > u64::from(u32::MAX) {
            return Err(Fault::bad(format!(
                "EBR at sector {abs} is past 2^32 sectors"
            )));
        }
        let sector = match region.read_vec(abs * ss, 512) {
            Ok(s) => s,
            Err(Fault::Bad(_)) if rel == 0 => return Ok(ebrs),
            Err(Fault::Bad(_)) => {
                return Err(Fault::bad(format!(
                    "EBR at sector {abs} lies past the end of the disk"
                )))
            }
            Err(e) => return Err(e),
        };
        let flags_ok = [446, 462].iter().all(|&o| matches!(sector[o], 0x00 | 0x80));
        if sector[510..512] != [0x55, 0xAA] || !flags_ok {
            if rel == 0 {
                // An empty extended partition need not hold an EBR.
                return Ok(ebrs);
            }
            return Err(Fault::bad(format!(
                "sector {abs} of the EBR chain is not an EBR"
            )));
        }
        let this_start = u64::from(le32(&sector, 446 + 8));
        if this_start + abs > u64::from(u32::MAX) {
            return Err(Fault::bad(format!(
                "logical partition of the EBR at sector {abs} starts past 2^32 sectors"
            )));
        }
        ebrs.push(abs);
        let next = u64::from(le32(&sector, 462 + 8));
        if next == 0 {
            return Ok(ebrs);
        }
        if rel >= next {
            return Err(Fault::bad(format!(
                "the EBR chain loops back (EBR at sector {abs} points to sector {})",
                base + next
            )));
        }
        rel = next;
    }
    Err(Fault::bad(format!(
        "more than {MAX_LOGICALS} logical partitions"
    )))
}
