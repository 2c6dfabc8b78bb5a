//! Where the image-safe record lives: the last [`RECORD_LEN`] bytes before
//! the first partition, inside the gap the table leaves empty (with 1 MiB
//! alignment, bytes 1 044 480..1 048 576 — LBA 2040..2047 on 512-byte
//! sectors). Never inside a partition or the table; written only over zeros
//! or an earlier record, so a boot loader that uses the gap is never
//! overwritten.

use std::path::Path;

use serde::Serialize;

use crate::record::{ImageSafeRecord, RECORD_LEN, RECORD_MAGIC};
use crate::report::TableKind;
use crate::table::Table;
use crate::target::Target;
use crate::RetargetError;

/// Where a record is (or would be) on a disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordPlace {
    /// First byte of the record.
    pub offset: u64,
    /// Its length ([`RECORD_LEN`]).
    pub len: u64,
    /// The table whose gap holds it.
    pub table: TableKind,
    /// First byte after the partition table (where the gap starts).
    pub gap_start: u64,
    /// First byte of the first partition (where the gap ends).
    pub gap_end: u64,
}

impl RecordPlace {
    /// One line for `img info zisd`.
    pub fn describe(&self) -> String {
        format!(
            "place: bytes {}..{} in the {} gap (bytes {}..{}, before the first partition)",
            self.offset,
            self.offset + self.len,
            self.table,
            self.gap_start,
            self.gap_end
        )
    }
}

/// Computes the place from the table on `t`.
fn place_of(t: &Target) -> Result<RecordPlace, RetargetError> {
    let table = Table::read(t)?;
    let Some((gap_start, gap_end)) = table.gap() else {
        let found = match &table {
            Table::None(found) => found.clone(),
            _ => "a partition table with no partitions".into(),
        };
        return Err(RetargetError::NoTable {
            path: t.path.clone(),
            found,
        });
    };
    let len = RECORD_LEN as u64;
    let offset = gap_end.saturating_sub(len);
    if gap_end < len || offset < gap_start {
        return Err(RetargetError::NoGap {
            path: t.path.clone(),
            gap_start,
            gap_end,
            needed: len,
        });
    }
    if gap_end > t.size {
        return Err(RetargetError::Truncated {
            path: t.path.clone(),
            disk_bytes: t.size,
            end: gap_end,
        });
    }
    Ok(RecordPlace {
        offset,
        len,
        table: table.kind(),
        gap_start,
        gap_end,
    })
}

/// Writes `rec` into the gap between the partition table and the first
/// partition of `target`, then fsyncs and reads it back.
///
/// Refused, with nothing written, when the disk has no table
/// ([`RetargetError::NoTable`]), the gap is too small
/// ([`RetargetError::NoGap`]), or the place holds bytes that are neither
/// zeros nor a record ([`RetargetError::PlaceNotFree`]). A damaged earlier
/// record is ours, and is replaced.
pub fn write_record(target: &Path, rec: &ImageSafeRecord) -> Result<RecordPlace, RetargetError> {
    let bytes = rec.encode()?;
    let t = Target::open_write(target)?;
    let place = place_of(&t)?;
    let current = t.read_at(place.offset, RECORD_LEN)?;
    // Our magic, valid or damaged, marks the place as ours.
    if !current.starts_with(&RECORD_MAGIC) {
        if let Some(i) = current.iter().position(|&b| b != 0) {
            return Err(RetargetError::PlaceNotFree {
                path: t.path.clone(),
                offset: place.offset,
                end: place.offset + place.len,
                first_nonzero: place.offset + i as u64,
            });
        }
    }
    t.write_at(place.offset, &bytes)?;
    t.sync()?;
    let back = t.read_at(place.offset, RECORD_LEN)?;
    match ImageSafeRecord::decode(&back) {
        Ok(Some(r)) if &r == rec => Ok(place),
        other => Err(RetargetError::Verify {
            path: t.path.clone(),
            reason: format!("the record read back as {other:?}"),
        }),
    }
}

/// Reads the record from `target`: `Ok(None)` when its place holds no
/// record (zeros, or other bytes), an error when the disk has no table or
/// gap, or the record there is damaged.
pub fn read_record(target: &Path) -> Result<Option<(ImageSafeRecord, RecordPlace)>, RetargetError> {
    let t = Target::open_read(target)?;
    let place = place_of(&t)?;
    let bytes = t.read_at(place.offset, RECORD_LEN)?;
    match ImageSafeRecord::decode(&bytes) {
        Ok(Some(r)) => Ok(Some((r, place))),
        Ok(None) => Ok(None),
        Err(reason) => Err(RetargetError::RecordDamaged {
            path: t.path.clone(),
            offset: place.offset,
            reason,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::path::PathBuf;

    use gptman::{GPTPartitionEntry, GPT};

    /// A GPT disk file written by gptman with partitions at `(start, end)`.
    pub(crate) fn gpt_file(dir: &Path, size: u64, parts: &[(u64, u64)]) -> PathBuf {
        let path = dir.join("gpt.raw");
        File::create(&path).unwrap().set_len(size).unwrap();
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut gpt = GPT::new_from(&mut f, 512, [1; 16]).unwrap();
        for (i, &(s, e)) in parts.iter().enumerate() {
            gpt[i as u32 + 1] = GPTPartitionEntry {
                partition_type_guid: [2; 16],
                unique_partition_guid: [i as u8 + 3; 16],
                starting_lba: s,
                ending_lba: e,
                attribute_bits: 0,
                partition_name: "p".into(),
            };
        }
        GPT::write_protective_mbr_into(&mut f, 512).unwrap();
        gpt.write_into(&mut f).unwrap();
        path
    }

    fn place(path: &Path) -> Result<RecordPlace, RetargetError> {
        place_of(&Target::open_read(path)?)
    }

    #[test]
    fn the_place_ends_where_the_lowest_partition_starts() {
        let dir = tempfile::tempdir().unwrap();
        // Partition 1 lies after partition 2 on the disk.
        let p = gpt_file(dir.path(), 8 << 20, &[(6144, 8191), (2048, 4095)]);
        let pl = place(&p).unwrap();
        assert_eq!(pl.offset, 2048 * 512 - 4096);
        assert_eq!((pl.gap_start, pl.gap_end), (34 * 512, 2048 * 512));
        assert_eq!(pl.table, TableKind::Gpt);
    }

    #[test]
    fn the_gap_must_hold_the_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        // LBA 42: exactly 4096 bytes after the entry array.
        let p = gpt_file(dir.path(), 8 << 20, &[(42, 4095)]);
        assert_eq!(place(&p).unwrap().offset, 34 * 512);
        let p = gpt_file(dir.path(), 8 << 20, &[(41, 4095)]);
        assert!(matches!(
            place(&p),
            Err(RetargetError::NoGap {
                gap_start: 17408,
                gap_end: 20992,
                needed: 4096,
                ..
            })
        ));
        let p = gpt_file(dir.path(), 8 << 20, &[]);
        assert!(matches!(place(&p), Err(RetargetError::NoTable { .. })));
    }
}
