//! A disk's layout and the used-block map of each filesystem on it: what an
//! image must hold so that a restore reproduces every byte that matters.
//!
//! ```text
//!   disk or image file ──▶ analyze ──▶ DiskLayout ──┬──▶ image encoder: stores only `used`
//!     (block device,        │  table: gptman / mbrman  ├──▶ retarget: moves `gpt_backup`
//!      image, partition)    │  fs:    ext bitmaps,     └──▶ img info: `table_lines()`
//!                           │         FAT, NTFS $Bitmap,
//!                           │         swap header,
//!                           │         partclone --domain
//!                           └─ mounts: /proc/self/mountinfo, /sys/block (loop backing files)
//! ```
//!
//! [`analyze`] reads only metadata: the partition table, each filesystem's
//! superblock and allocation structures. It never writes.
//!
//! # What `used` holds
//!
//! [`DiskLayout::used`] is exactly what a restore reproduces; everything
//! else is left undefined (free space).
//!
//! * **MBR disks**: sector 0, every EBR sector of the logical chain, and the
//!   whole gap from sector 1 to the first partition (boot loaders live
//!   there: GRUB's core.img in the MBR gap).
//! * **GPT disks**: the protective MBR, the primary header and entry array,
//!   the gap up to the first partition, and the backup entry array and
//!   header at the end (also [`DiskLayout::gpt_backup`], which a restore
//!   onto another size relocates).
//! * **Space no partition covers** (between and after partitions) is *not*
//!   used, apart from the gap before the first partition.
//! * **Each partition**: its filesystem's used blocks, at the filesystem's
//!   block granularity, as byte ranges of the disk:
//!   * ext2/3/4: boot block, superblock and every group's backups,
//!     descriptors, bitmaps and inode tables, and every block the block
//!     bitmaps mark (64bit, flex_bg, meta_bg, sparse_super(2),
//!     `BLOCK_UNINIT` and 1 KiB blocks handled; see the `ext` module);
//!   * FAT12/16/32: reserved sectors, the FATs, the FAT12/16 root
//!     directory and every cluster with a non-zero FAT entry (bad-cluster
//!     marks excluded: nothing lives there);
//!   * NTFS: every cluster `$Bitmap` marks, and everything past the last
//!     whole cluster (the backup boot sector);
//!   * swap: the header page only (the kernel rewrites the rest);
//!   * xfs, btrfs, exfat, f2fs, ...: `partclone.<fs> --domain` when
//!     [`AnalyzeOptions::use_partclone`] is set, partclone is installed and
//!     we are root; otherwise the whole partition, with a note;
//!   * anything else, or a filesystem whose structures do not hold together
//!     (bad magic, counts that do not fit the partition, a failed checksum):
//!     the whole partition, with a note. Never an error, never a panic.
//! * **No partition table**: the filesystem on the whole disk, mapped as a
//!   partition would be ([`DiskLayout::whole`]).
//! * **A damaged partition table**: the whole disk, with a note.
//!
//! # Refusals
//!
//! A filesystem marked dirty (ext: `s_state` not clean or `needs_recovery`;
//! FAT: the clean bit of FAT\[1\] or the boot-sector dirty flag; NTFS: the
//! `$Volume` dirty flag) or mounted read-write is refused with
//! [`FsmapError::Refused`], which names the partition, the filesystem and
//! why, unless [`AnalyzeOptions::force`] is set. A read-only mount is fine:
//! nothing changes under us.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod fs;
mod io;
mod layout;
mod mounts;
mod table;

use std::path::Path;

use imgcast_disk::{DiskKind, Extents};

pub use error::{FsmapError, Refusal};
pub use layout::{
    human_bytes, DiskLayout, Extended, FsInfo, FsKind, MapMethod, PartitionInfo, TableKind,
};

use crate::fs::Mapped;
use crate::io::{Disk, Region};
use crate::mounts::MountUse;
use crate::table::Detected;

/// How [`analyze`] may go about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyzeOptions {
    /// Map filesystems that are dirty or mounted read-write anyway (a note
    /// says so). Default `false`.
    pub force: bool,
    /// Run `partclone.<fs> --domain` for filesystems this crate does not
    /// parse (needs root and partclone). Default `true`.
    pub use_partclone: bool,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        Self {
            force: false,
            use_partclone: true,
        }
    }
}

impl AnalyzeOptions {
    /// The defaults: no force, partclone when available.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`force`](Self::force).
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Sets [`use_partclone`](Self::use_partclone).
    pub fn use_partclone(mut self, yes: bool) -> Self {
        self.use_partclone = yes;
        self
    }
}

/// Reads the layout of `path`: a whole disk (block device or disk image
/// file), or a bare filesystem without a partition table (a partition
/// device, a "superfloppy").
pub fn analyze(path: &Path, opts: &AnalyzeOptions) -> Result<DiskLayout, FsmapError> {
    let disk = Disk::open(path)?;
    let mounts = mounts::mounted_ranges(&disk);
    let mut judge = Judge {
        mounts: &mounts,
        force: opts.force,
        refusals: Vec::new(),
        notes: Vec::new(),
    };
    let mut layout = DiskLayout {
        size: disk.size,
        table: TableKind::None,
        partitions: Vec::new(),
        whole: None,
        used: Extents::new(),
        gpt_backup: None,
        notes: Vec::new(),
    };
    match table::detect(&disk, logical_sector_size(&disk))? {
        Detected::Damaged(why) => {
            let region = disk.region();
            let m = Mapped::whole(FsKind::Unknown, &region, &why);
            judge.check("the disk", &m, &region);
            layout.used = m.used.clone();
            layout.whole = Some(info(&m, &region));
        }
        Detected::None => {
            let region = disk.region();
            let m = judge.map(&region, opts)?;
            judge.check("the disk", &m, &region);
            add_shifted(&mut layout.used, &m, &region);
            layout.whole = Some(info(&m, &region));
        }
        Detected::Table(t) => {
            layout.table = t.kind;
            layout.used = t.used;
            layout.gpt_backup = t.gpt_backup;
            judge.notes.extend(t.notes);
            let mut parts = t.partitions;
            parts.sort_by_key(|p| p.start);
            for p in parts {
                let region = disk.sub(p.start, p.size);
                let m = judge.map(&region, opts)?;
                let place = format!("partition {}", p.number);
                judge.check(&place, &m, &region);
                add_shifted(&mut layout.used, &m, &region);
                layout.partitions.push(PartitionInfo {
                    number: p.number,
                    start: p.start,
                    size: p.size,
                    type_id: p.type_id,
                    type_name: p.type_name,
                    name: p.name,
                    fs: info(&m, &region),
                });
            }
            layout.partitions.sort_by_key(|p| p.number);
        }
    }
    if !judge.refusals.is_empty() && !opts.force {
        return Err(FsmapError::Refused(judge.refusals));
    }
    layout.used = layout.used.clipped(disk.size);
    layout.notes = judge.notes;
    Ok(layout)
}

/// The public description of a mapped region.
fn info(m: &Mapped, region: &Region) -> FsInfo {
    FsInfo {
        kind: m.kind.clone(),
        label: m.label.clone(),
        uuid: m.uuid.clone(),
        block_size: m.block_size,
        total_bytes: m.total_bytes.min(region.len),
        used_bytes: m.used.clipped(region.len).total(),
        method: m.method,
        note: (!m.notes.is_empty()).then(|| m.notes.join("; ")),
    }
}

/// Adds the region-relative `m.used` at the region's offset.
fn add_shifted(used: &mut Extents, m: &Mapped, region: &Region) {
    for r in m.used.within(0, region.len) {
        used.insert(region.start + r.start, r.len());
    }
}

/// Collects refusals and notes about dirty and mounted filesystems.
struct Judge<'a> {
    mounts: &'a [MountUse],
    force: bool,
    refusals: Vec<Refusal>,
    notes: Vec<String>,
}

impl Judge<'_> {
    /// Maps `region`; one that is mounted read-write is about to be refused
    /// (unless forced), so it gets only the cheap look that names its
    /// filesystem, without partclone.
    fn map(&self, region: &Region, opts: &AnalyzeOptions) -> Result<Mapped, FsmapError> {
        let (start, end) = (region.start, region.start + region.len);
        let rw = self
            .mounts
            .iter()
            .any(|u| u.rw && u.start < end && start < u.end);
        if rw && !self.force {
            fs::map(region, &opts.clone().use_partclone(false))
        } else {
            fs::map(region, opts)
        }
    }

    fn refuse(&mut self, place: &str, m: &Mapped, reason: String) {
        if self.force {
            self.notes.push(format!(
                "{place} ({}): {reason}: imaged anyway (force)",
                m.kind
            ));
        }
        self.refusals.push(Refusal {
            place: place.to_string(),
            fs: m.kind.to_string(),
            reason,
        });
    }

    /// Mounts over `region`: read-write ones are refused, read-only noted.
    fn mounted(&mut self, place: &str, m: &Mapped, region: &Region) {
        let (start, end) = (region.start, region.start + region.len);
        let over: Vec<MountUse> = self
            .mounts
            .iter()
            .filter(|u| u.start < end && start < u.end)
            .cloned()
            .collect();
        for u in over {
            if u.rw {
                let why = format!("mounted read-write on {} ({})", u.mountpoint, u.device);
                self.refuse(place, m, why);
            } else {
                self.notes.push(format!(
                    "{place} ({}): mounted read-only on {} ({}): mapped as it is",
                    m.kind, u.mountpoint, u.device
                ));
            }
        }
    }

    /// Dirty flags and mounts, and the mapper's own notes.
    fn check(&mut self, place: &str, m: &Mapped, region: &Region) {
        self.mounted(place, m, region);
        if let Some(why) = &m.dirty {
            self.refuse(place, m, why.clone());
        }
        for n in &m.notes {
            self.notes.push(format!("{place} ({}): {n}", m.kind));
        }
    }
}

/// The logical sector size of a block device (its partitions share the
/// disk's); 512 for files.
fn logical_sector_size(disk: &Disk) -> u32 {
    use std::os::unix::fs::MetadataExt;
    if disk.kind != DiskKind::BlockDevice {
        return 512;
    }
    let Ok(meta) = std::fs::metadata(&disk.path) else {
        return 512;
    };
    let sys = format!(
        "/sys/dev/block/{}",
        imgcast_disk::DevNum::from_rdev(meta.rdev())
    );
    [
        format!("{sys}/queue/logical_block_size"),
        format!("{sys}/../queue/logical_block_size"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse().ok())
    .filter(|&n: &u32| n.is_power_of_two() && (512..=65536).contains(&n))
    .unwrap_or(512)
}
