//! GPT through `gptman`: its header and entry-array readers check the
//! signature, revision, header size and both CRCs; we check the counts and
//! positions they would trust before letting them read.

use std::io::Cursor;

use gptman::{GPTHeader, GPTPartitionEntry};
use imgcast_disk::{Extent, Extents};

use super::types::{gpt_type_name, guid_string};
use super::{Detected, RawPartition, Table};
use crate::io::{Disk, Fault};
use crate::layout::TableKind;
use crate::FsmapError;

/// More entries than any tool writes (the usual array has 128).
const MAX_ENTRIES: u32 = 16384;

pub(super) fn read(disk: &Disk, ss: u32) -> Result<Detected, FsmapError> {
    let ss64 = u64::from(ss);
    let sectors = disk.size / ss64;
    if sectors < 3 {
        return Ok(Detected::Damaged(format!(
            "GPT signature on a disk of {} bytes",
            disk.size
        )));
    }
    let mut notes = Vec::new();
    let primary = read_header(disk, ss, 1);
    let (header, entries, from_backup) = match primary {
        Ok((h, e)) => (h, e, false),
        Err(Fault::Io(e)) => return Err(e),
        Err(Fault::Bad(e1)) => match read_header(disk, ss, sectors - 1) {
            Ok((h, e)) => {
                notes.push(format!(
                    "primary GPT damaged ({e1}): read the backup header at LBA {}",
                    sectors - 1
                ));
                (h, e, true)
            }
            Err(Fault::Io(e)) => return Err(e),
            Err(Fault::Bad(e2)) => {
                return Ok(Detected::Damaged(format!(
                    "GPT unreadable: primary header: {e1}; backup header: {e2}"
                )))
            }
        },
    };

    let mut partitions = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.is_unused() {
            continue;
        }
        let number = i as u32 + 1;
        if e.ending_lba < e.starting_lba {
            return Ok(Detected::Damaged(format!(
                "GPT entry {number} ends (LBA {}) before it starts (LBA {})",
                e.ending_lba, e.starting_lba
            )));
        }
        let (Some(start), Some(end)) = (
            e.starting_lba.checked_mul(ss64),
            e.ending_lba
                .checked_add(1)
                .and_then(|x| x.checked_mul(ss64)),
        ) else {
            return Ok(Detected::Damaged(format!(
                "GPT entry {number} lies past 2^64 bytes"
            )));
        };
        let (start, end) = clip(start, end, disk.size, number, &mut notes);
        let type_id = guid_string(&e.partition_type_guid);
        let name = e.partition_name.as_str().trim_end_matches('\0').to_string();
        partitions.push(RawPartition {
            number,
            start,
            size: end - start,
            type_name: gpt_type_name(&type_id),
            type_id,
            name: (!name.is_empty()).then_some(name),
        });
    }

    let mut used = Extents::new();
    // The protective MBR, the primary header and array, and the gap up to the
    // first partition (boot loaders live there).
    let first_start = partitions.iter().map(|p| p.start).min().unwrap_or(u64::MAX);
    let first_usable = header.first_usable_lba.saturating_mul(ss64);
    let front = first_usable
        .max(first_start.min(disk.size))
        .max(3 * ss64)
        .min(disk.size);
    used.insert(0, front);
    let array_bytes =
        u64::from(header.number_of_partition_entries) * u64::from(header.size_of_partition_entry);
    let array_sectors = array_bytes.div_ceil(ss64);

    // The backup header and array at the end: from the header we read when it
    // is the backup, else from the backup header its alternate LBA names.
    let (bk_header, bk_entries) = if from_backup {
        (sectors - 1, header.partition_entry_lba)
    } else {
        let alt = header.backup_lba;
        let entries_lba = match read_header(disk, ss, alt) {
            Ok((b, _)) => b.partition_entry_lba,
            Err(Fault::Io(e)) => return Err(e),
            Err(Fault::Bad(why)) => {
                if alt < sectors {
                    notes.push(format!("backup GPT at LBA {alt} damaged ({why}): a restore rewrites it from the primary"));
                }
                alt.saturating_sub(array_sectors)
            }
        };
        (alt, entries_lba)
    };
    let gpt_backup = if bk_header >= sectors {
        notes.push(format!(
            "backup GPT header at LBA {bk_header} lies past the end of the disk ({sectors} sectors)"
        ));
        None
    } else if !from_backup && bk_header <= header.last_usable_lba {
        notes.push(format!(
            "the GPT names LBA {bk_header} as its backup header, inside the usable area: ignored"
        ));
        None
    } else {
        // The usual backup is the array right before the header at the end.
        // When the header names an array elsewhere, the array is kept too,
        // but only the header counts as the relocatable part.
        let slack = (1 << 20) / ss64;
        let adjacent = bk_entries <= bk_header && bk_header - bk_entries <= array_sectors + slack;
        if !adjacent && bk_entries.saturating_add(array_sectors) <= sectors {
            used.insert(bk_entries * ss64, array_sectors * ss64);
        }
        let lo = if adjacent { bk_entries } else { bk_header };
        Extent::new(lo * ss64, (bk_header + 1 - lo) * ss64)
    };
    if let Some(b) = gpt_backup {
        used.insert(b.start, b.len());
    }
    if !from_backup && bk_header + 1 < sectors {
        notes.push(format!(
            "the GPT ends at LBA {bk_header}, before the end of the disk (LBA {}): the disk was grown",
            sectors - 1
        ));
    }

    Ok(Detected::Table(Table {
        kind: TableKind::Gpt {
            disk_guid: guid_string(&header.disk_guid),
            sector_size: ss,
            header_lba: if from_backup { sectors - 1 } else { 1 },
            alternate_lba: header.backup_lba,
            first_usable_lba: header.first_usable_lba,
            last_usable_lba: header.last_usable_lba,
            entries_lba: header.partition_entry_lba,
            entries: header.number_of_partition_entries,
            entry_size: header.size_of_partition_entry,
            from_backup,
        },
        partitions,
        used,
        gpt_backup,
        notes,
    }))
}

/// Clips `[start, end)` to the disk, with a note when it had to.
fn clip(start: u64, end: u64, size: u64, number: u32, notes: &mut Vec<String>) -> (u64, u64) {
    if end <= size {
        return (start, end);
    }
    notes.push(format!(
        "partition {number} ends at byte {end}, past the end of the disk ({size} bytes): clipped"
    ));
    let start = start.min(size);
    (start, end.min(size).max(start))
}

/// Reads and checks the header at `lba` and its entry array.
fn read_header(
    disk: &Disk,
    ss: u32,
    lba: u64,
) -> Result<(GPTHeader, Vec<GPTPartitionEntry>), Fault> {
    let ss64 = u64::from(ss);
    let region = disk.region();
    let at = lba
        .checked_mul(ss64)
        .ok_or_else(|| Fault::bad(format!("LBA {lba} is past 2^64 bytes")))?;
    let sector = region.read_vec(at, ss64)?;
    let h = GPTHeader::read_from(&mut Cursor::new(&sector[..]))
        .map_err(|e| Fault::bad(format!("header at LBA {lba}: {e}")))?;
    let n = h.number_of_partition_entries;
    let size = h.size_of_partition_entry;
    if n > MAX_ENTRIES || !(128..=4096).contains(&size) || !size.is_power_of_two() {
        return Err(Fault::bad(format!(
            "header at LBA {lba}: {n} entries of {size} bytes"
        )));
    }
    let array_end = h
        .partition_entry_lba
        .checked_mul(ss64)
        .and_then(|s| s.checked_add(u64::from(n) * u64::from(size)));
    if h.partition_entry_lba < 2 || array_end.is_none_or(|e| e > disk.size) {
        return Err(Fault::bad(format!(
            "header at LBA {lba}: entry array at LBA {} does not fit the disk",
            h.partition_entry_lba
        )));
    }
    if h.first_usable_lba > h.last_usable_lba || h.first_usable_lba < 2 {
        return Err(Fault::bad(format!(
            "header at LBA {lba}: usable LBAs {}..={}",
            h.first_usable_lba, h.last_usable_lba
        )));
    }
    let mut reader = region.reader();
    let entries =
        h.read_partitions(&mut reader, ss64)
            .map_err(|e| match reader.take_io_error() {
                Some(io) => Fault::Io(io),
                None => Fault::bad(format!("entry array at LBA {}: {e}", h.partition_entry_lba)),
            })?;
    Ok((h, entries))
}
