//! MBR: reading it (with its chain of extended boot records) and fitting it
//! to a target of another size.
//!
//! mbrman decodes and encodes every sector (`MBRHeader` has the same layout
//! as an EBR). Its whole-table reader and writer are not used: they add and
//! multiply LBAs in `u32` (`absolute_ebr_lba * sector_size` overflows past
//! 4 GiB, which would put an EBR in the wrong place), and their chain walk
//! has no bound. The walk here uses `u64`, refuses loops and odd layouts,
//! and stops at [`MAX_LOGICAL`] records.

use std::io::Cursor;

use mbrman::{MBRHeader, MBRPartitionEntry, CHS};

use crate::report::FitAction;
use crate::table::{aligned_end, Part, Plan, Stage, Table};
use crate::target::Target;
use crate::RetargetError;

/// Most extended boot records we follow (Linux numbers partitions up to 255).
const MAX_LOGICAL: usize = 250;
/// The MBR's own size, whatever the sector size.
const MBR_LEN: usize = 512;
/// MBR entries address 32-bit LBAs.
const MBR_LIMIT: u64 = 1 << 32;
const PROTECTIVE_TYPE: u8 = 0xEE;

/// One extended boot record with a logical partition (or an empty one in
/// the chain).
#[derive(Clone, Debug)]
pub(crate) struct Ebr {
    /// Absolute LBA of this EBR.
    pub(crate) lba: u64,
    /// The decoded sector.
    pub(crate) header: MBRHeader,
    /// The sector's bytes as read.
    pub(crate) bytes: Vec<u8>,
    /// Its logical partition's number (5, 6, ...) when slot 1 is used.
    pub(crate) number: Option<u32>,
}

impl Ebr {
    /// Absolute inclusive LBA range of the logical partition, if any.
    fn range(&self) -> Option<(u64, u64)> {
        let e = &self.header.partition_1;
        e.is_used().then(|| {
            let s = self.lba + u64::from(e.starting_lba);
            (s, s + u64::from(e.sectors) - 1)
        })
    }
}

/// An MBR read from a target and checked.
#[derive(Clone, Debug)]
pub(crate) struct MbrDisk {
    pub(crate) ss: u64,
    pub(crate) header: MBRHeader,
    pub(crate) bytes: Vec<u8>,
    /// The extended partition's slot (1-4), if any.
    pub(crate) extended: Option<usize>,
    /// The EBR chain, in order.
    pub(crate) ebrs: Vec<Ebr>,
}

/// Inclusive LBA range of a used primary entry.
fn range(e: &MBRPartitionEntry) -> (u64, u64) {
    let s = u64::from(e.starting_lba);
    (s, s + u64::from(e.sectors) - 1)
}

/// Says what a sector 0 with a boot signature but no table holds: a
/// filesystem's boot sector (a "superfloppy" without partitions).
fn boot_sector_kind(s: &[u8]) -> Option<&'static str> {
    if &s[3..11] == b"NTFS    " {
        return Some("an NTFS boot sector");
    }
    if &s[3..11] == b"EXFAT   " {
        return Some("an exFAT boot sector");
    }
    let jump = s[0] == 0xEB || s[0] == 0xE9;
    if jump && (&s[54..59] == b"FAT12" || &s[54..59] == b"FAT16" || &s[82..87] == b"FAT32") {
        return Some("a FAT boot sector");
    }
    None
}

fn decode(bytes: &[u8]) -> Result<MBRHeader, String> {
    MBRHeader::read_from(&mut Cursor::new(bytes)).map_err(|e| e.to_string())
}

fn encode(h: &MBRHeader, orig: &[u8]) -> Result<Vec<u8>, String> {
    let mut cur = Cursor::new(orig.to_vec());
    h.write_into(&mut cur).map_err(|e| e.to_string())?;
    Ok(cur.into_inner())
}

/// The CHS address of `lba` on the 255-head, 63-sector geometry fdisk and
/// sfdisk use, or the "beyond CHS" maximum.
fn chs_of(lba: u64) -> CHS {
    let (heads, sectors) = (255u64, 63u64);
    let c = lba / (heads * sectors);
    if c > 1023 {
        return CHS::new(1023, 254, 63);
    }
    CHS::new(
        c as u16,
        ((lba / sectors) % heads) as u8,
        (lba % sectors + 1) as u8,
    )
}

/// What growing an MBR partition means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MbrGrow {
    /// A primary partition in `slot` grows to end at LBA `end`.
    Primary { slot: usize, end: u64 },
    /// The logical partition of EBR `ebr` grows to `end`, and the extended
    /// partition with it.
    Logical { ebr: usize, end: u64 },
}

impl MbrDisk {
    /// Reads sector 0 and, when it is an MBR with partitions, the EBR chain.
    pub(crate) fn probe(t: &Target) -> Result<Table, RetargetError> {
        let path = &t.path;
        if t.size < MBR_LEN as u64 {
            return Ok(Table::None(format!(
                "a {}-byte target, smaller than one sector",
                t.size
            )));
        }
        let ss = t.device_sector_size().unwrap_or(512);
        let bytes = t.read_at(0, MBR_LEN)?;
        if bytes[510..] != [0x55, 0xAA] {
            let what = if bytes.iter().all(|&b| b == 0) {
                "zeros"
            } else {
                "no boot signature (55 AA)"
            };
            return Ok(Table::None(format!("sector 0 holds {what}")));
        }
        if let Some(kind) = boot_sector_kind(&bytes) {
            return Ok(Table::None(format!(
                "sector 0 is {kind} (a filesystem without a partition table)"
            )));
        }
        let header =
            decode(&bytes).map_err(|e| RetargetError::mbr(path, format!("sector 0: {e}")))?;
        let used: Vec<(usize, &MBRPartitionEntry)> =
            header.iter().filter(|(_, e)| e.is_used()).collect();
        if used.is_empty() {
            return Ok(Table::None("an MBR with no partitions".into()));
        }
        if used.iter().any(|(_, e)| e.sys == PROTECTIVE_TYPE) {
            return Err(RetargetError::mbr(
                path,
                "a protective MBR (type 0xEE) but no GPT header at LBA 1",
            ));
        }
        for (i, e) in &used {
            if e.starting_lba == 0 || e.sectors == 0 {
                return Err(RetargetError::mbr(
                    path,
                    format!(
                        "partition {i} starts at LBA {} with {} sectors",
                        e.starting_lba, e.sectors
                    ),
                ));
            }
        }
        let mut sorted: Vec<(usize, (u64, u64))> =
            used.iter().map(|(i, e)| (*i, range(e))).collect();
        sorted.sort_by_key(|&(_, r)| r.0);
        for w in sorted.windows(2) {
            if w[1].1 .0 <= w[0].1 .1 {
                return Err(RetargetError::mbr(
                    path,
                    format!("partitions {} and {} overlap", w[0].0, w[1].0),
                ));
            }
        }
        let ext: Vec<usize> = used
            .iter()
            .filter(|(_, e)| e.is_extended())
            .map(|(i, _)| *i)
            .collect();
        if ext.len() > 1 {
            return Err(RetargetError::mbr(
                path,
                format!(
                    "{} extended partitions (slots {ext:?}): at most one is allowed",
                    ext.len()
                ),
            ));
        }
        let extended = ext.first().copied();
        let mut disk = Self {
            ss,
            header: header.clone(),
            bytes,
            extended,
            ebrs: Vec::new(),
        };
        if let Some(slot) = extended {
            disk.ebrs = disk.walk_chain(t, slot)?;
        }
        Ok(Table::Mbr(Box::new(disk)))
    }

    fn slot(&self, slot: usize) -> Option<&MBRPartitionEntry> {
        self.header.get(slot)
    }

    /// Follows the EBR chain of the extended partition in `slot`.
    fn walk_chain(&self, t: &Target, slot: usize) -> Result<Vec<Ebr>, RetargetError> {
        let path = &t.path;
        let Some(ext) = self.slot(slot) else {
            return Ok(Vec::new());
        };
        let (ext_start, ext_end) = range(ext);
        let mut ebrs = Vec::new();
        let mut rel = 0u64;
        let mut number = 5u32;
        loop {
            if ebrs.len() >= MAX_LOGICAL {
                return Err(RetargetError::mbr(
                    path,
                    format!("more than {MAX_LOGICAL} extended boot records"),
                ));
            }
            let lba = ext_start + rel;
            if lba > ext_end {
                return Err(RetargetError::mbr(
                    path,
                    format!("EBR at LBA {lba} lies outside extended partition {slot} (LBA {ext_start}..{ext_end})"),
                ));
            }
            let bytes = match t.read_at(lba * self.ss, MBR_LEN) {
                Ok(b) => b,
                Err(RetargetError::Truncated { .. }) if rel == 0 => break,
                Err(e) => return Err(e),
            };
            let header = match decode(&bytes) {
                Ok(h) => h,
                // An empty extended partition needs no EBR.
                Err(_) if rel == 0 => break,
                Err(e) => return Err(RetargetError::mbr(path, format!("EBR at LBA {lba}: {e}"))),
            };
            let (data, link) = (&header.partition_1, &header.partition_2);
            if header.partition_3.is_used()
                || header.partition_4.is_used()
                || data.is_extended()
                || (link.is_used() && !link.is_extended())
            {
                return Err(RetargetError::mbr(
                    path,
                    format!("EBR at LBA {lba} has an unusual layout (slots 3-4 used, or data and link swapped): not supported"),
                ));
            }
            let mut ebr = Ebr {
                lba,
                header: header.clone(),
                bytes,
                number: None,
            };
            if let Some((s, e)) = ebr.range() {
                if data.starting_lba == 0 || data.sectors == 0 || e > ext_end || s >= MBR_LIMIT {
                    return Err(RetargetError::mbr(
                        path,
                        format!(
                            "logical partition {number} (EBR at LBA {lba}) spans LBA {s}..{e}, \
                             outside extended partition {slot} (LBA {ext_start}..{ext_end})"
                        ),
                    ));
                }
                if let Some((_, prev_end)) = ebrs.iter().rev().find_map(Ebr::range) {
                    if lba <= prev_end {
                        return Err(RetargetError::mbr(
                            path,
                            format!("EBR at LBA {lba} lies inside the previous logical partition"),
                        ));
                    }
                }
                ebr.number = Some(number);
                number += 1;
            }
            ebrs.push(ebr);
            let next = u64::from(link.starting_lba);
            if !link.is_used() || next == 0 {
                break;
            }
            if next <= rel {
                return Err(RetargetError::mbr(
                    path,
                    format!("EBR chain loops back (EBR at LBA {lba} links to offset {next})"),
                ));
            }
            rel = next;
        }
        Ok(ebrs)
    }

    /// Used partitions: primaries (the extended container included) and
    /// logical partitions.
    pub(crate) fn partitions(&self) -> Vec<Part> {
        let mut v: Vec<Part> = self
            .header
            .iter()
            .filter(|(_, e)| e.is_used())
            .map(|(i, e)| {
                let (start, end) = range(e);
                Part {
                    number: i as u32,
                    start,
                    end,
                }
            })
            .collect();
        for ebr in &self.ebrs {
            if let (Some(number), Some((start, end))) = (ebr.number, ebr.range()) {
                v.push(Part { number, start, end });
            }
        }
        v
    }

    /// What growing would do on a disk of `disk_sectors`, or the line that
    /// says why nothing grows.
    pub(crate) fn grow_target(&self, disk_sectors: u64) -> Result<MbrGrow, FitAction> {
        let not_needed = |reason: String| FitAction::GrowNotNeeded { reason };
        let limit = disk_sectors.min(MBR_LIMIT);
        let (slot, last) = self
            .header
            .iter()
            .filter(|(_, e)| e.is_used())
            .max_by_key(|(_, e)| range(e).1)
            .ok_or_else(|| not_needed("the MBR has no partitions".into()))?;
        let (start, end, number, grow) = if last.is_extended() {
            let (i, ebr, (s, e)) = self
                .ebrs
                .iter()
                .enumerate()
                .filter_map(|(i, ebr)| Some((i, ebr, ebr.range()?)))
                .max_by_key(|(_, _, r)| r.1)
                .ok_or_else(|| FitAction::GrowSkipped {
                    reason: format!(
                        "extended partition {slot} is last on the disk but holds no logical partition"
                    ),
                })?;
            let new = aligned_end(s, limit, self.ss).unwrap_or(0);
            (
                s,
                e,
                ebr.number.unwrap_or(0),
                MbrGrow::Logical { ebr: i, end: new },
            )
        } else {
            let (s, e) = range(last);
            let new = aligned_end(s, limit, self.ss).unwrap_or(0);
            (s, e, slot as u32, MbrGrow::Primary { slot, end: new })
        };
        let new_end = match grow {
            MbrGrow::Primary { end, .. } | MbrGrow::Logical { end, .. } => end,
        };
        if new_end <= end {
            return Err(not_needed(format!(
                "partition {number} (LBA {start}..{end}) already reaches the end of the \
                 target's {limit} addressable sectors"
            )));
        }
        Ok(grow)
    }

    /// Plans the writes that fit this table to `t`, growing as `grow` says.
    pub(crate) fn plan(&self, t: &Target, grow: Option<MbrGrow>) -> Result<Plan, RetargetError> {
        let path = &t.path;
        let ss = self.ss;
        let disk_sectors = t.size / ss;
        let too_big = |p: &Part| RetargetError::PartitionDoesNotFit {
            path: path.clone(),
            number: p.number,
            end_lba: p.end,
            end_byte: (p.end + 1) * ss,
            last_usable_lba: disk_sectors.saturating_sub(1),
            disk_bytes: t.size,
            needed_bytes: (p.end + 1) * ss,
        };
        let ext_slot = self.extended.map(|s| s as u32);
        for p in self.partitions() {
            if p.end >= disk_sectors && Some(p.number) != ext_slot {
                return Err(too_big(&p));
            }
        }
        let mut mbr = self.header.clone();
        let mut actions = Vec::new();
        let mut ebr_stage: Stage = Vec::new();
        if let Some(slot) = self.extended {
            let e = mbr
                .get_mut(slot)
                .ok_or_else(|| RetargetError::mbr(path, "no extended slot"))?;
            let (s, end) = range(e);
            if s >= disk_sectors {
                return Err(too_big(&Part {
                    number: slot as u32,
                    start: s,
                    end,
                }));
            }
            if end >= disk_sectors {
                // Every logical partition fits (checked above): the
                // container may end at the target's end.
                let new = disk_sectors - s;
                let new32 = u32::try_from(new)
                    .map_err(|_| RetargetError::mbr(path, "extended too large"))?;
                actions.push(FitAction::ShrankExtended {
                    number: slot as u32,
                    from_bytes: u64::from(e.sectors) * ss,
                    to_bytes: new * ss,
                });
                e.sectors = new32;
                e.last_chs = chs_of(disk_sectors - 1);
            }
        }
        match grow {
            None => {}
            Some(MbrGrow::Primary { slot, end }) => {
                let e = mbr
                    .get_mut(slot)
                    .ok_or_else(|| RetargetError::mbr(path, "bad slot"))?;
                let (s, old_end) = range(e);
                grow_entry(e, s, end).map_err(|r| RetargetError::mbr(path, r))?;
                actions.push(grew(slot as u32, s, old_end, end, ss));
            }
            Some(MbrGrow::Logical { ebr: i, end }) => {
                let slot = self
                    .extended
                    .ok_or_else(|| RetargetError::mbr(path, "no extended"))?;
                let ext = mbr
                    .get_mut(slot)
                    .ok_or_else(|| RetargetError::mbr(path, "bad slot"))?;
                let (es, eold) = range(ext);
                grow_entry(ext, es, end).map_err(|r| RetargetError::mbr(path, r))?;
                actions.push(FitAction::GrewExtended {
                    number: slot as u32,
                    from_bytes: (eold - es + 1) * ss,
                    to_bytes: (end - es + 1) * ss,
                });
                let ebr = &self.ebrs[i];
                let (s, old_end) = ebr
                    .range()
                    .ok_or_else(|| RetargetError::mbr(path, "no logical"))?;
                let mut h = ebr.header.clone();
                grow_entry(&mut h.partition_1, s, end).map_err(|r| RetargetError::mbr(path, r))?;
                ebr_stage.push((
                    ebr.lba * ss,
                    encode(&h, &ebr.bytes).map_err(|r| RetargetError::mbr(path, r))?,
                ));
                // The previous EBR's link describes this EBR up to the end of
                // its partition (fdisk's convention): keep it so when it was.
                if let Some(prev) = i.checked_sub(1).map(|j| &self.ebrs[j]) {
                    let link = &prev.header.partition_2;
                    if u64::from(link.sectors) == old_end - ebr.lba + 1 {
                        let mut ph = prev.header.clone();
                        ph.partition_2.sectors = u32::try_from(end - ebr.lba + 1)
                            .map_err(|_| RetargetError::mbr(path, "link too large"))?;
                        ph.partition_2.last_chs = chs_of(end);
                        ebr_stage.push((
                            prev.lba * ss,
                            encode(&ph, &prev.bytes).map_err(|r| RetargetError::mbr(path, r))?,
                        ));
                    }
                }
                actions.push(grew(ebr.number.unwrap_or(0), s, old_end, end, ss));
            }
        }
        if actions.is_empty() {
            return Ok(Plan::nothing(format!(
                "every partition lies within the {}-byte target and an MBR has no backup to move",
                t.size
            )));
        }
        let mut stages = Vec::new();
        if mbr != self.header {
            // The container first: a crash before the EBRs leaves a larger
            // extended partition around unchanged logical partitions.
            let bytes = encode(&mbr, &self.bytes).map_err(|r| RetargetError::mbr(path, r))?;
            stages.push(vec![(0, bytes)]);
        }
        if !ebr_stage.is_empty() {
            stages.push(ebr_stage);
        }
        Ok(Plan { actions, stages })
    }
}

fn grew(number: u32, start: u64, old_end: u64, end: u64, ss: u64) -> FitAction {
    FitAction::GrewPartition {
        number,
        start_lba: start,
        from_end_lba: old_end,
        to_end_lba: end,
        from_bytes: (old_end - start + 1) * ss,
        to_bytes: (end - start + 1) * ss,
    }
}

/// Sets an entry whose partition starts at absolute LBA `start` to end at
/// absolute LBA `end`, with the matching end CHS.
fn grow_entry(e: &mut MBRPartitionEntry, start: u64, end: u64) -> Result<(), String> {
    if end < start || end >= MBR_LIMIT {
        return Err(format!("cannot end a partition at LBA {end}"));
    }
    e.sectors = u32::try_from(end - start + 1).map_err(|_| "partition too large".to_string())?;
    e.last_chs = chs_of(end);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_follows_fdisk_geometry() {
        assert_eq!(chs_of(0), CHS::new(0, 0, 1));
        assert_eq!(chs_of(2047), CHS::new(0, 32, 32));
        assert_eq!(chs_of(16_450_559), CHS::new(1023, 254, 63));
        assert_eq!(chs_of(1 << 31), CHS::new(1023, 254, 63));
    }

    #[test]
    fn boot_sectors_are_not_tables() {
        let mut s = vec![0u8; 512];
        s[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(boot_sector_kind(&s), Some("an NTFS boot sector"));
        let mut s = vec![0u8; 512];
        s[0] = 0xEB;
        s[82..87].copy_from_slice(b"FAT32");
        assert_eq!(boot_sector_kind(&s), Some("a FAT boot sector"));
        assert_eq!(boot_sector_kind(&[0u8; 512]), None);
    }

    #[test]
    fn grow_entry_refuses_the_impossible() {
        let mut e = MBRPartitionEntry::empty();
        assert!(grow_entry(&mut e, 2048, 2047).is_err());
        assert!(grow_entry(&mut e, 2048, 1 << 32).is_err());
        grow_entry(&mut e, 2048, 4095).unwrap();
        assert_eq!(e.sectors, 2048);
    }
}
