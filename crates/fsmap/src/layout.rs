//! What [`analyze`](crate::analyze) finds: the partition table, each
//! partition's filesystem and the bytes an image must hold.
//!
//! All of it is serde-serialisable: the image stores it as JSON so that
//! `img info IMAGE` can show the partitions of a disk it no longer has.

use std::fmt;

use imgcast_disk::{Extent, Extents};
use serde::{Deserialize, Serialize};

/// A disk's layout and the used-block map of each filesystem on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    /// Size of the disk in bytes.
    pub size: u64,
    /// The partition table.
    pub table: TableKind,
    /// Partitions, ascending by number: GPT entries in use; MBR primaries and
    /// logicals (5, 6, ... in the order of the EBR chain). The MBR extended
    /// container itself is in [`TableKind::Mbr`], not here.
    pub partitions: Vec<PartitionInfo>,
    /// Without a partition table: the filesystem on the whole disk.
    pub whole: Option<FsInfo>,
    /// Every byte an image must hold (see the crate documentation).
    #[serde(with = "extents_serde")]
    pub used: Extents,
    /// The backup GPT entry array and header at the end of the disk. They
    /// are in `used`, and relocatable: a restore onto a disk of another size
    /// rewrites them at its end.
    #[serde(with = "extent_opt_serde")]
    pub gpt_backup: Option<Extent>,
    /// Things the user should know, one sentence each, e.g.
    /// `"partition 3 (xfs): imaged whole: partclone.xfs not installed"`.
    pub notes: Vec<String>,
}

/// The kind of partition table, with what a restore needs to rewrite it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableKind {
    /// A GUID partition table.
    Gpt {
        /// Disk GUID, upper-case 8-4-4-4-12 as sgdisk prints it.
        disk_guid: String,
        /// Logical sector size the table was found with (512 or 4096).
        sector_size: u32,
        /// LBA of the header that was used (1 unless the primary was
        /// damaged and the backup was read instead).
        header_lba: u64,
        /// LBA of the other header, as the used header gives it.
        alternate_lba: u64,
        /// First LBA a partition may use.
        first_usable_lba: u64,
        /// Last LBA a partition may use.
        last_usable_lba: u64,
        /// LBA of the entry array of the used header.
        entries_lba: u64,
        /// Number of entries in the array.
        entries: u32,
        /// Bytes per entry.
        entry_size: u32,
        /// Whether the primary header or array was damaged and the backup
        /// was read instead.
        from_backup: bool,
    },
    /// An MBR (DOS) partition table.
    Mbr {
        /// The 32-bit disk signature at byte 440, as `0x1234abcd`.
        disk_signature: String,
        /// Sector size the table is read with.
        sector_size: u32,
        /// The extended partition holding the logicals, if any.
        extended: Option<Extended>,
        /// Byte offsets of every EBR sector of the logical chain.
        ebr_offsets: Vec<u64>,
    },
    /// No partition table: a bare filesystem ("superfloppy"), or nothing
    /// recognised.
    None,
}

/// An MBR extended partition (the container of the logical partitions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extended {
    /// Its primary slot, 1..=4.
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type byte, e.g. `"0x05"`.
    pub type_id: String,
}

/// One partition and its filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Partition number as Linux counts it (`sda3` is 3).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Size in bytes (clipped to the disk when the table claims more).
    pub size: u64,
    /// Type: a GPT type GUID (upper case) or an MBR type byte (`"0x83"`).
    pub type_id: String,
    /// A name for the type: `"Linux filesystem"`, `"EFI System"`, ...
    pub type_name: String,
    /// GPT partition name, when set.
    pub name: Option<String>,
    /// What is on it.
    pub fs: FsInfo,
}

/// A filesystem (or whatever a partition holds) and how it was mapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// What it is.
    pub kind: FsKind,
    /// Volume label.
    pub label: Option<String>,
    /// UUID or volume serial, as blkid prints it.
    pub uuid: Option<String>,
    /// Allocation unit in bytes (ext block, FAT/NTFS cluster, swap page);
    /// 512 when unknown.
    pub block_size: u32,
    /// Bytes the filesystem spans (at most the partition).
    pub total_bytes: u64,
    /// Bytes of this partition in [`DiskLayout::used`].
    pub used_bytes: u64,
    /// How the used map was made.
    pub method: MapMethod,
    /// Why it was imaged whole, or anything else worth saying.
    pub note: Option<String>,
}

/// Filesystems this crate knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsKind {
    /// ext2 (no journal).
    Ext2,
    /// ext3 (journal, no ext4 features).
    Ext3,
    /// ext4.
    Ext4,
    /// FAT12 (fewer than 4085 clusters).
    Fat12,
    /// FAT16 (fewer than 65525 clusters).
    Fat16,
    /// FAT32.
    Fat32,
    /// NTFS.
    Ntfs,
    /// Linux swap.
    Swap,
    /// Recognised by signature but not mapped by this crate: `"xfs"`,
    /// `"btrfs"`, `"LUKS"`, `"LVM2"`, ...
    Other(String),
    /// Nothing recognised.
    Unknown,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Ext2 => "ext2",
            Self::Ext3 => "ext3",
            Self::Ext4 => "ext4",
            Self::Fat12 => "fat12",
            Self::Fat16 => "fat16",
            Self::Fat32 => "fat32",
            Self::Ntfs => "ntfs",
            Self::Swap => "swap",
            Self::Other(name) => name,
            Self::Unknown => "unknown",
        };
        f.write_str(s)
    }
}

/// How a used map was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapMethod {
    /// From the filesystem's own allocation structures (ext block bitmaps,
    /// the FAT, NTFS `$Bitmap`).
    Bitmap,
    /// From `partclone.<fs> --domain`.
    Partclone,
    /// Only the header is kept (swap: its contents are worthless on another
    /// machine and the kernel rewrites them).
    HeaderOnly,
    /// Everything: no map was possible, see [`FsInfo::note`].
    Whole,
}

impl fmt::Display for MapMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bitmap => "bitmap",
            Self::Partclone => "partclone",
            Self::HeaderOnly => "header only",
            Self::Whole => "whole",
        })
    }
}

impl DiskLayout {
    /// The partition numbered `number`.
    pub fn partition(&self, number: u32) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// A human rendering of the layout for `img info`: one heading line,
    /// then a table of the partitions (number, start, size, type,
    /// filesystem, label, used bytes), then the notes.
    pub fn table_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        let table = match &self.table {
            TableKind::Gpt {
                disk_guid,
                sector_size,
                from_backup,
                ..
            } => format!(
                "GPT (disk GUID {disk_guid}, {sector_size}-byte sectors{})",
                if *from_backup {
                    ", read from the backup header"
                } else {
                    ""
                }
            ),
            TableKind::Mbr {
                disk_signature,
                sector_size,
                ..
            } => format!("MBR (disk signature {disk_signature}, {sector_size}-byte sectors)"),
            TableKind::None => "no partition table".to_string(),
        };
        out.push(format!(
            "{}, {table}; {} to image",
            human_bytes(self.size),
            human_bytes(self.used.total())
        ));
        let mut rows: Vec<[String; 7]> = vec![[
            "#".into(),
            "Start".into(),
            "Size".into(),
            "Type".into(),
            "Filesystem".into(),
            "Label".into(),
            "Used".into(),
        ]];
        let fs_cols = |fs: &FsInfo| {
            let method = match fs.method {
                MapMethod::Bitmap => String::new(),
                m => format!(" ({m})"),
            };
            [
                fs.kind.to_string(),
                fs.label.clone().unwrap_or_default(),
                format!("{}{method}", human_bytes(fs.used_bytes)),
            ]
        };
        let mut items: Vec<(u64, [String; 7])> = Vec::new();
        for p in &self.partitions {
            let [kind, label, used] = fs_cols(&p.fs);
            let ty = match &p.name {
                Some(n) => format!("{} \"{n}\"", p.type_name),
                None => p.type_name.clone(),
            };
            items.push((
                p.start,
                [
                    p.number.to_string(),
                    human_bytes(p.start),
                    human_bytes(p.size),
                    ty,
                    kind,
                    label,
                    used,
                ],
            ));
        }
        if let TableKind::Mbr {
            extended: Some(x), ..
        } = &self.table
        {
            items.push((
                x.start,
                [
                    x.number.to_string(),
                    human_bytes(x.start),
                    human_bytes(x.size),
                    format!("Extended ({})", x.type_id),
                    "-".into(),
                    String::new(),
                    String::new(),
                ],
            ));
        }
        items.sort_by_key(|(start, _)| *start);
        rows.extend(items.into_iter().map(|(_, r)| r));
        if let Some(fs) = &self.whole {
            let [kind, label, used] = fs_cols(fs);
            rows.push([
                "-".into(),
                human_bytes(0),
                human_bytes(self.size),
                "(whole disk)".into(),
                kind,
                label,
                used,
            ]);
        }
        let mut widths = [0usize; 7];
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in &rows {
            let mut line = String::from("  ");
            for (i, (c, w)) in r.iter().zip(widths).enumerate() {
                let right = matches!(i, 0 | 1 | 2 | 6);
                if right {
                    line.push_str(&format!("{c:>w$}  "));
                } else {
                    line.push_str(&format!("{c:<w$}  "));
                }
            }
            out.push(line.trim_end().to_string());
        }
        out.extend(self.notes.iter().map(|n| format!("  note: {n}")));
        out
    }
}

/// Bytes in KiB, MiB or GiB with one decimal (whole bytes below 1 KiB).
pub fn human_bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let x = n as f64;
    if n < 1024 {
        format!("{n} B")
    } else if x < KIB * KIB {
        format!("{:.1} KiB", x / KIB)
    } else if x < KIB * KIB * KIB {
        format!("{:.1} MiB", x / (KIB * KIB))
    } else {
        format!("{:.2} GiB", x / (KIB * KIB * KIB))
    }
}

/// `Extents` as a list of `[start, end)` pairs; read back through
/// `Extents::insert`, so a hand-edited or hostile list still yields a
/// sorted, merged set.
mod extents_serde {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(e: &Extents, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(e.ranges().iter().map(|r| [r.start, r.end]))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Extents, D::Error> {
        let v: Vec<[u64; 2]> = Vec::deserialize(d)?;
        let mut e = Extents::new();
        for [start, end] in v {
            e.insert(start, end.saturating_sub(start));
        }
        Ok(e)
    }
}

/// `Option<Extent>` as `null` or `[start, end]`.
mod extent_opt_serde {
    use super::*;
    use serde::{de::Error, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(e: &Option<Extent>, s: S) -> Result<S::Ok, S::Error> {
        e.map(|r| [r.start, r.end]).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Extent>, D::Error> {
        match Option::<[u64; 2]>::deserialize(d)? {
            None => Ok(None),
            Some([start, end]) => Extent::new(start, end.saturating_sub(start))
                .map(Some)
                .ok_or_else(|| D::Error::custom(format!("empty extent [{start}, {end})"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DiskLayout {
        let mut used = Extents::new();
        used.insert(0, 1 << 20);
        used.insert(5 << 20, 3 << 20);
        used.insert((64 << 20) - 16896, 16896);
        let fs = FsInfo {
            kind: FsKind::Ext4,
            label: Some("root".into()),
            uuid: Some("0b3a".into()),
            block_size: 4096,
            total_bytes: 32 << 20,
            used_bytes: 3 << 20,
            method: MapMethod::Bitmap,
            note: None,
        };
        DiskLayout {
            size: 64 << 20,
            table: TableKind::Gpt {
                disk_guid: "5A1C...".into(),
                sector_size: 512,
                header_lba: 1,
                alternate_lba: 131071,
                first_usable_lba: 34,
                last_usable_lba: 131038,
                entries_lba: 2,
                entries: 128,
                entry_size: 128,
                from_backup: false,
            },
            partitions: vec![
                PartitionInfo {
                    number: 2,
                    start: 40 << 20,
                    size: 8 << 20,
                    type_id: "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F".into(),
                    type_name: "Linux swap".into(),
                    name: None,
                    fs: FsInfo {
                        kind: FsKind::Swap,
                        label: None,
                        uuid: None,
                        block_size: 4096,
                        total_bytes: 8 << 20,
                        used_bytes: 4096,
                        method: MapMethod::HeaderOnly,
                        note: None,
                    },
                },
                PartitionInfo {
                    number: 1,
                    start: 1 << 20,
                    size: 32 << 20,
                    type_id: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into(),
                    type_name: "Linux filesystem".into(),
                    name: Some("root".into()),
                    fs,
                },
            ],
            whole: None,
            used,
            gpt_backup: Extent::new((64 << 20) - 16896, 16896),
            notes: vec!["partition 3 (xfs): imaged whole: partclone.xfs not installed".into()],
        }
    }

    #[test]
    fn json_roundtrip() -> Result<(), serde_json::Error> {
        let l = sample();
        let j = serde_json::to_string(&l)?;
        assert!(
            j.contains(r#""used":[[0,1048576],[5242880,8388608],"#),
            "{j}"
        );
        let back: DiskLayout = serde_json::from_str(&j)?;
        assert_eq!(back, l);
        let other = serde_json::to_string(&FsKind::Other("xfs".into()))?;
        assert_eq!(other, r#"{"Other":"xfs"}"#);
        Ok(())
    }

    #[test]
    fn hostile_json_extents_are_normalised_or_refused() -> Result<(), serde_json::Error> {
        let mut j = serde_json::to_value(sample())?;
        j["used"] = serde_json::json!([[100, 200], [0, 50], [150, 300], [9, 9], [500, 1]]);
        let l: DiskLayout = serde_json::from_value(j.clone())?;
        let spans: Vec<_> = l.used.ranges().iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(spans, [(0, 50), (100, 300)]);
        j["gpt_backup"] = serde_json::json!([10, 10]);
        assert!(serde_json::from_value::<DiskLayout>(j).is_err());
        Ok(())
    }

    #[test]
    fn table_lines_show_every_column() {
        let lines = sample().table_lines();
        let all = lines.join("\n");
        assert!(
            lines[0].starts_with("64.0 MiB, GPT (disk GUID 5A1C..."),
            "{all}"
        );
        assert!(
            lines[1].contains("Start") && lines[1].contains("Used"),
            "{all}"
        );
        // Sorted by start: partition 1 before partition 2.
        assert!(lines[2].trim_start().starts_with('1'), "{all}");
        assert!(lines[2].contains("Linux filesystem \"root\""), "{all}");
        assert!(
            lines[2].contains("ext4") && lines[2].contains("3.0 MiB"),
            "{all}"
        );
        assert!(
            lines[3].contains("swap") && lines[3].contains("(header only)"),
            "{all}"
        );
        assert!(lines[4].contains("note: partition 3 (xfs)"), "{all}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(100 << 20), "100.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
