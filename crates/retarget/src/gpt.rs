//! GPT: reading it safely and fitting it to a target of another size.
//!
//! gptman parses and encodes every structure. It trusts some header fields
//! blindly (it allocates `number_of_partition_entries` entries, asserts that
//! entries are 128 bytes, and panics on some entry layouts), so the header
//! gptman decoded is checked here before gptman reads the entry array, and
//! gptman only ever reads a bounded in-memory copy of the table's sectors.

use std::io::Cursor;

use gptman::{GPTHeader, GPT};

use crate::report::FitAction;
use crate::table::{Part, Plan, Stage};
use crate::target::{Target, WriteLog};
use crate::RetargetError;

/// Most entries we accept (gdisk's default is 128; 4096 entries is a
/// 512 KiB array, far above anything real).
const MAX_ENTRIES: u32 = 4096;
/// No real disk has 2^40 sectors (512 TiB of 512-byte sectors); bounding
/// LBAs here keeps every byte offset computed from them far from overflow.
const MAX_LBA: u64 = 1 << 40;
/// gptman reads and writes entries of exactly this size.
const ENTRY_SIZE: u32 = 128;
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The protective MBR's partition type.
const PROTECTIVE_TYPE: u8 = 0xEE;

/// A GPT read from a target and checked.
#[derive(Clone, Debug)]
pub(crate) struct GptDisk {
    pub(crate) gpt: GPT,
    pub(crate) ss: u64,
    /// Sectors of one entry array.
    pub(crate) array_sectors: u64,
}

/// Whether sector 1 (of 512 or 4096 bytes, or the device's own sector size)
/// starts with the GPT signature; returns that sector size.
pub(crate) fn probe(t: &Target) -> Result<Option<u64>, RetargetError> {
    let sizes = match t.device_sector_size() {
        Some(s) => vec![s],
        None => vec![512, 4096],
    };
    for ss in sizes {
        if t.size < 2 * ss {
            continue;
        }
        if t.read_at(ss, SIGNATURE.len())? == SIGNATURE {
            return Ok(Some(ss));
        }
    }
    Ok(None)
}

impl GptDisk {
    /// Reads and checks the primary GPT (header at LBA 1) of `t`. A damaged
    /// primary is refused rather than recovered from the backup: after a
    /// restore onto another disk the backup is not where its size says.
    pub(crate) fn read(t: &Target, ss: u64) -> Result<Self, RetargetError> {
        let path = &t.path;
        let sector = t.read_at(ss, ss as usize)?;
        let hdr = GPTHeader::read_from(&mut Cursor::new(&sector))
            .map_err(|e| RetargetError::gpt(path, format!("primary header at LBA 1: {e}")))?;
        let array_sectors = check_header(&hdr, ss, 1).map_err(|r| RetargetError::gpt(path, r))?;
        let table_len = (2 + array_sectors) * ss;
        let mut bytes = t.read_at(0, table_len as usize)?;
        // gptman reads each entry into a buffer of its in-memory size (more
        // than 128 bytes): the last entry needs bytes after the array.
        bytes.resize(bytes.len() + ss as usize, 0);
        let mut cur = Cursor::new(bytes);
        let entries = hdr
            .read_partitions(&mut cur, ss)
            .map_err(|e| RetargetError::gpt(path, format!("primary entry array at LBA 2: {e}")))?;
        check_entries(&hdr, &entries).map_err(|r| RetargetError::gpt(path, r))?;
        // Safe now: gptman re-reads the same checked primary from memory.
        let gpt = GPT::read_from(&mut cur, ss)
            .map_err(|e| RetargetError::gpt(path, format!("reading the table: {e}")))?;
        if gpt.header != hdr || !gpt.is_primary() {
            return Err(RetargetError::gpt(
                path,
                "gptman read a different header than the checked primary",
            ));
        }
        Ok(Self {
            gpt,
            ss,
            array_sectors,
        })
    }

    /// The used partitions, by number.
    pub(crate) fn partitions(&self) -> Vec<Part> {
        self.gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| Part {
                number: n,
                start: p.starting_lba,
                end: p.ending_lba,
            })
            .collect()
    }

    /// First byte after the primary entry array.
    pub(crate) fn table_end(&self) -> u64 {
        (2 + self.array_sectors) * self.ss
    }

    /// Where the backup header and last usable LBA go on a disk of
    /// `disk_sectors`: `(backup_lba, last_usable_lba)`, or `None` when the
    /// disk cannot even hold the two tables. The backup goes in the last
    /// sector with its array just before it; a table already there keeps
    /// its own (smaller) last usable LBA, so a same-size disk is left alone.
    pub(crate) fn layout_for(&self, disk_sectors: u64) -> Option<(u64, u64)> {
        let backup = disk_sectors.checked_sub(1)?;
        let last = backup.checked_sub(self.array_sectors + 1)?;
        let h = &self.gpt.header;
        let last = if h.backup_lba == backup && h.last_usable_lba <= last {
            h.last_usable_lba
        } else {
            last
        };
        (last >= h.first_usable_lba).then_some((backup, last))
    }

    /// Plans the writes that fit this table to `t` (and grow partition
    /// `grow.0` to end at LBA `grow.1`). Pure: reads `t`, writes nothing.
    /// Refuses, naming the partition, when one does not fit.
    pub(crate) fn plan(&self, t: &Target, grow: Option<(u32, u64)>) -> Result<Plan, RetargetError> {
        let ss = self.ss;
        let path = &t.path;
        let disk_sectors = t.size / ss;
        let old = self.gpt.header.clone();
        let parts = self.partitions();
        let Some((backup_lba, last_usable)) = self.layout_for(disk_sectors) else {
            let needed = (old.first_usable_lba + self.array_sectors + 2) * ss;
            return Err(match parts.iter().max_by_key(|p| p.end) {
                Some(p) => self.does_not_fit(t, p, 0),
                None => RetargetError::gpt(
                    path,
                    format!(
                        "the {}-byte target cannot hold this GPT's two tables (needs {needed} bytes)",
                        t.size
                    ),
                ),
            });
        };
        if let Some(p) = parts.iter().find(|p| p.end > last_usable) {
            return Err(self.does_not_fit(t, p, last_usable));
        }

        let mut gpt = self.gpt.clone();
        gpt.header.backup_lba = backup_lba;
        gpt.header.last_usable_lba = last_usable;
        let mut actions = Vec::new();
        let moved = old.backup_lba != backup_lba || old.last_usable_lba != last_usable;
        if moved {
            actions.push(FitAction::MovedBackupGpt {
                from_lba: old.backup_lba,
                to_lba: backup_lba,
                last_usable_from: old.last_usable_lba,
                last_usable_to: last_usable,
            });
        }
        if let Some((number, new_end)) = grow {
            let p = &mut gpt[number];
            if new_end <= p.ending_lba || new_end > last_usable {
                return Err(RetargetError::gpt(
                    path,
                    format!("internal: bad grow of partition {number} to LBA {new_end}"),
                ));
            }
            actions.push(FitAction::GrewPartition {
                number,
                start_lba: p.starting_lba,
                from_end_lba: p.ending_lba,
                to_end_lba: new_end,
                from_bytes: (p.ending_lba - p.starting_lba + 1) * ss,
                to_bytes: (new_end - p.starting_lba + 1) * ss,
            });
            p.ending_lba = new_end;
        }
        let backup_problem = if moved {
            None
        } else {
            self.backup_problem(t, backup_lba)?
        };
        let pmbr = self.protective_mbr(t, disk_sectors)?;
        if !moved && grow.is_none() && backup_problem.is_none() {
            // Both tables are in place: at most the protective MBR is off.
            return Ok(match pmbr {
                PmbrFix::Change { sector, from, to } => Plan {
                    actions: vec![FitAction::FixedProtectiveMbr {
                        from_sectors: from,
                        to_sectors: to,
                    }],
                    stages: vec![vec![(0, sector)]],
                },
                PmbrFix::Fine | PmbrFix::Leave(_) => Plan::nothing(format!(
                    "the GPT already fits the {}-byte target (backup header at its last LBA {backup_lba})",
                    t.size
                )),
            });
        }
        if let Some(reason) = backup_problem {
            actions.push(FitAction::RewroteBackupGpt {
                lba: backup_lba,
                reason,
            });
        }

        // gptman encodes both tables into a log; the log must only touch
        // the primary table sectors and the new backup area.
        let mut log = WriteLog::new(disk_sectors * ss);
        gpt.write_into(&mut log)
            .map_err(|e| RetargetError::gpt(path, format!("encoding the new table: {e}")))?;
        let primary_start = ss;
        let primary_end = self.table_end();
        let backup_start = (last_usable + 1) * ss;
        let backup_end = disk_sectors * ss;
        // The primary sectors keep their unused bytes; the backup area is
        // new, so its unused bytes (header sector tail) are zero.
        let mut primary = t.read_at(primary_start, (primary_end - primary_start) as usize)?;
        let mut backup = vec![0u8; (backup_end - backup_start) as usize];
        for (off, bytes) in &log.segments {
            let end = off + bytes.len() as u64;
            let (buf, base) = if *off >= primary_start && end <= primary_end {
                (&mut primary, primary_start)
            } else if *off >= backup_start && end <= backup_end {
                (&mut backup, backup_start)
            } else {
                return Err(RetargetError::gpt(
                    path,
                    format!("refusing: encoding wanted to write bytes {off}..{end}, outside both tables"),
                ));
            };
            let at = (off - base) as usize;
            buf[at..at + bytes.len()].copy_from_slice(bytes);
        }

        let mut primary_stage: Stage = vec![(primary_start, primary)];
        match pmbr {
            PmbrFix::Change { sector, from, to } => {
                primary_stage.push((0, sector));
                actions.push(FitAction::FixedProtectiveMbr {
                    from_sectors: from,
                    to_sectors: to,
                });
            }
            PmbrFix::Fine => {}
            PmbrFix::Leave(reason) => actions.push(FitAction::ProtectiveMbrLeft { reason }),
        }
        let mut stages = vec![vec![(backup_start, backup)], primary_stage];
        if moved && self.stale_backup_at(t, old.backup_lba, backup_start, &parts)? {
            stages.push(vec![(old.backup_lba * ss, vec![0u8; ss as usize])]);
            actions.push(FitAction::ClearedStaleBackupGpt {
                lba: old.backup_lba,
            });
        }
        Ok(Plan { actions, stages })
    }

    fn does_not_fit(&self, t: &Target, p: &Part, last_usable: u64) -> RetargetError {
        RetargetError::PartitionDoesNotFit {
            path: t.path.clone(),
            number: p.number,
            end_lba: p.end,
            end_byte: (p.end + 1) * self.ss,
            last_usable_lba: last_usable,
            disk_bytes: t.size,
            needed_bytes: (p.end + 1 + self.array_sectors + 1) * self.ss,
        }
    }

    /// What is wrong with the backup table at `lba`, if anything: it must
    /// be a valid header whose fields mirror the primary's, over an entry
    /// array with the primary's checksum.
    pub(crate) fn backup_problem(
        &self,
        t: &Target,
        lba: u64,
    ) -> Result<Option<String>, RetargetError> {
        let ss = self.ss;
        let start = (lba - self.array_sectors) * ss;
        let bytes = t.read_at(start, ((self.array_sectors + 1) * ss) as usize)?;
        let hdr_bytes = &bytes[(self.array_sectors * ss) as usize..];
        let hdr = match GPTHeader::read_from(&mut Cursor::new(hdr_bytes)) {
            Ok(h) => h,
            Err(e) => return Ok(Some(format!("backup header: {e}"))),
        };
        let p = &self.gpt.header;
        if hdr.primary_lba != lba
            || hdr.backup_lba != 1
            || hdr.partition_entry_lba != lba - self.array_sectors
            || hdr.first_usable_lba != p.first_usable_lba
            || hdr.last_usable_lba != p.last_usable_lba
            || hdr.disk_guid != p.disk_guid
            || hdr.number_of_partition_entries != p.number_of_partition_entries
            || hdr.size_of_partition_entry != p.size_of_partition_entry
            || hdr.partition_entry_array_crc32 != p.partition_entry_array_crc32
        {
            return Ok(Some("backup header does not mirror the primary".into()));
        }
        // The array CRC in the header must match the array's bytes: let
        // gptman read them through a copy of the header whose array sits at
        // LBA 0 of the bytes we hold.
        let mut rebased = hdr.clone();
        rebased.partition_entry_lba = 0;
        // The header sector after the array gives gptman's over-long entry
        // reads their slack.
        let mut array = Cursor::new(&bytes[..]);
        if let Err(e) = rebased.read_partitions(&mut array, ss) {
            return Ok(Some(format!("backup entry array: {e}")));
        }
        Ok(None)
    }

    fn protective_mbr(&self, t: &Target, disk_sectors: u64) -> Result<PmbrFix, RetargetError> {
        let sector = t.read_at(0, 512)?;
        let mut hdr = match mbrman::MBRHeader::read_from(&mut Cursor::new(&sector)) {
            Ok(h) => h,
            Err(e) => return Ok(PmbrFix::Leave(format!("sector 0 is not a valid MBR ({e})"))),
        };
        let used: Vec<usize> = hdr
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(i, _)| i)
            .collect();
        let want = u32::try_from(disk_sectors.saturating_sub(1)).unwrap_or(u32::MAX);
        let [i] = used[..] else {
            return Ok(PmbrFix::Leave(format!(
                "{} MBR entries in use (a hybrid MBR or none): only a lone 0xEE entry is resized",
                used.len()
            )));
        };
        let Some(entry) = hdr.get_mut(i) else {
            return Ok(PmbrFix::Leave("no MBR entry".into()));
        };
        if entry.sys != PROTECTIVE_TYPE || entry.starting_lba != 1 {
            return Ok(PmbrFix::Leave(format!(
                "its only entry is type {:#04x} at LBA {}, not a protective 0xEE entry at LBA 1",
                entry.sys, entry.starting_lba
            )));
        }
        if entry.sectors == want {
            return Ok(PmbrFix::Fine);
        }
        let from = entry.sectors;
        entry.sectors = want;
        let mut out = Cursor::new(sector.clone());
        hdr.write_into(&mut out).map_err(|e| {
            RetargetError::gpt(&t.path, format!("encoding the protective MBR: {e}"))
        })?;
        Ok(PmbrFix::Change {
            sector: out.into_inner(),
            from,
            to: want,
        })
    }

    /// Whether `lba` holds this disk's old backup header that nothing else
    /// owns: inside the target, before the new backup area, outside every
    /// partition, and really a backup header of this disk.
    fn stale_backup_at(
        &self,
        t: &Target,
        lba: u64,
        backup_start: u64,
        parts: &[Part],
    ) -> Result<bool, RetargetError> {
        let ss = self.ss;
        if lba < 2 + self.array_sectors || (lba + 1) * ss > backup_start {
            return Ok(false);
        }
        if parts.iter().any(|p| (p.start..=p.end).contains(&lba)) {
            return Ok(false);
        }
        let sector = t.read_at(lba * ss, ss as usize)?;
        Ok(GPTHeader::read_from(&mut Cursor::new(&sector))
            .map(|h| h.primary_lba == lba && h.disk_guid == self.gpt.header.disk_guid)
            .unwrap_or(false))
    }
}

enum PmbrFix {
    Fine,
    Change { sector: Vec<u8>, from: u32, to: u32 },
    Leave(String),
}

/// Checks the header fields gptman trusts; returns the entry array's size
/// in sectors. `at` is the LBA the header was read from.
fn check_header(h: &GPTHeader, ss: u64, at: u64) -> Result<u64, String> {
    if h.primary_lba != at {
        return Err(format!(
            "header at LBA {at} says it is at LBA {}",
            h.primary_lba
        ));
    }
    if h.backup_lba >= MAX_LBA {
        return Err(format!(
            "backup header LBA {} is beyond any real disk",
            h.backup_lba
        ));
    }
    if h.partition_entry_lba != 2 {
        return Err(format!(
            "primary entry array at LBA {}, not 2: not supported",
            h.partition_entry_lba
        ));
    }
    if h.size_of_partition_entry != ENTRY_SIZE {
        return Err(format!(
            "entries of {} bytes: only {ENTRY_SIZE}-byte entries are supported",
            h.size_of_partition_entry
        ));
    }
    if h.number_of_partition_entries == 0 || h.number_of_partition_entries > MAX_ENTRIES {
        return Err(format!(
            "{} partition entries: expected 1 to {MAX_ENTRIES}",
            h.number_of_partition_entries
        ));
    }
    let array_sectors =
        (u64::from(h.number_of_partition_entries) * u64::from(ENTRY_SIZE)).div_ceil(ss);
    if h.first_usable_lba < 2 + array_sectors {
        return Err(format!(
            "first usable LBA {} overlaps the entry array (LBA 2..{})",
            h.first_usable_lba,
            2 + array_sectors
        ));
    }
    if h.last_usable_lba < h.first_usable_lba {
        return Err(format!(
            "last usable LBA {} is before the first usable LBA {}",
            h.last_usable_lba, h.first_usable_lba
        ));
    }
    if h.backup_lba <= h.last_usable_lba.saturating_add(array_sectors) {
        return Err(format!(
            "backup header LBA {} lies inside the usable area or its own array (last usable LBA {})",
            h.backup_lba, h.last_usable_lba
        ));
    }
    Ok(array_sectors)
}

/// Checks the used entries: inside the usable area, non-empty, and not
/// overlapping (gptman panics on some impossible layouts).
fn check_entries(h: &GPTHeader, entries: &[gptman::GPTPartitionEntry]) -> Result<(), String> {
    let mut used: Vec<(u32, u64, u64)> = entries
        .iter()
        .zip(1u32..)
        .filter(|(e, _)| e.is_used())
        .map(|(e, n)| (n, e.starting_lba, e.ending_lba))
        .collect();
    for &(n, s, e) in &used {
        if s < h.first_usable_lba || e < s || e > h.last_usable_lba {
            return Err(format!(
                "partition {n} spans LBA {s}..{e}, outside the usable LBA {}..{}",
                h.first_usable_lba, h.last_usable_lba
            ));
        }
    }
    used.sort_by_key(|&(_, s, _)| s);
    for w in used.windows(2) {
        if w[1].1 <= w[0].2 {
            return Err(format!(
                "partitions {} and {} overlap (LBA {}..{} and {}..{})",
                w[0].0, w[1].0, w[0].1, w[0].2, w[1].1, w[1].2
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> GPTHeader {
        let mut cur = Cursor::new(vec![0u8; 512 * 4096]);
        GPTHeader::new_from(&mut cur, 512, [7; 16]).unwrap()
    }

    #[test]
    fn a_fresh_header_passes_and_lying_fields_are_refused() {
        let h = header();
        assert_eq!(check_header(&h, 512, 1), Ok(32));
        assert_eq!(check_header(&h, 4096, 1), Ok(4));

        let mut bad = h.clone();
        bad.number_of_partition_entries = u32::MAX;
        assert!(check_header(&bad, 512, 1).unwrap_err().contains("entries"));
        let mut bad = h.clone();
        bad.size_of_partition_entry = 256;
        assert!(check_header(&bad, 512, 1).unwrap_err().contains("256"));
        let mut bad = h.clone();
        bad.partition_entry_lba = 1 << 60;
        assert!(check_header(&bad, 512, 1).is_err());
        let mut bad = h.clone();
        bad.first_usable_lba = 3;
        assert!(check_header(&bad, 512, 1).is_err());
        let mut bad = h.clone();
        bad.backup_lba = 40;
        assert!(check_header(&bad, 512, 1).is_err());
        let mut bad = h.clone();
        bad.backup_lba = u64::MAX;
        bad.last_usable_lba = u64::MAX - 40;
        assert!(check_header(&bad, 512, 1).unwrap_err().contains("beyond"));
        let mut bad = h;
        bad.primary_lba = 9;
        assert!(check_header(&bad, 512, 1).is_err());
    }

    #[test]
    fn entries_outside_the_usable_area_or_overlapping_are_refused() {
        let h = header();
        let mut e = vec![gptman::GPTPartitionEntry::empty(); 128];
        e[0] = gptman::GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: 3000,
            attribute_bits: 0,
            partition_name: "a".into(),
        };
        assert_eq!(check_entries(&h, &e), Ok(()));
        let mut e2 = e.clone();
        e2[3] = gptman::GPTPartitionEntry {
            starting_lba: 3000,
            ending_lba: 4000,
            unique_partition_guid: [3; 16],
            ..e[0].clone()
        };
        assert!(check_entries(&h, &e2).unwrap_err().contains("overlap"));
        let mut e3 = e.clone();
        e3[0].starting_lba = 0;
        assert!(check_entries(&h, &e3).unwrap_err().contains("outside"));
        let mut e4 = e;
        e4[0].ending_lba = 10;
        assert!(check_entries(&h, &e4).is_err());
    }
}
