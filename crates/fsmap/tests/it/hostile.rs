//! Hostile inputs that are structurally valid: real on-disk structures made
//! by mkfs, sgdisk and sfdisk, then a few bits changed, fields that lie
//! (with their checksums recomputed, so that only the lie is left), or the
//! disk cut short. `analyze` must return Ok with the damaged part imaged
//! whole and a note, or a clear error; never panic, hang or allocate
//! without bound. A property test flips random bytes in the first MiB of
//! every filesystem and of the partition table.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imgcast_fsmap::{
    analyze, AnalyzeOptions, DiskLayout, FsKind, FsmapError, MapMethod, TableKind,
};
use proptest::prelude::*;

use crate::layout::debugfs_files;
use crate::{covered, sh, Disk, Files, Part, TestResult, R};

/// The reference disk, built once per run (no root needed), copied by
/// every test that changes it.
struct Master {
    dir: PathBuf,
    parts: Vec<Part>,
}

fn master() -> R<&'static Master> {
    static M: OnceLock<Result<Master, String>> = OnceLock::new();
    M.get_or_init(|| build_master().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| e.clone().into())
}

fn build_master() -> R<Master> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fsmap-hostile");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let disk = Disk::gpt(
        160,
        &[
            ("32M", "8300", "ext4"),
            ("24M", "8300", "ext2"),
            ("24M", "0700", "fat16"),
            ("40M", "0700", "fat32"),
            ("24M", "0700", "ntfs"),
        ],
    )?;
    let scratch = disk.dir.path().to_path_buf();
    let files = Files::usual();
    disk.format(1, "mkfs.ext4", &["-q", "-F", "-b", "4096"], |f| {
        debugfs_files(f, &files, &scratch)
    })?;
    disk.format(2, "mkfs.ext2", &["-q", "-F", "-b", "1024"], |f| {
        debugfs_files(f, &files, &scratch)
    })?;
    disk.format(3, "mkfs.vfat", &["-F", "16"], |f| {
        crate::layout::mtools_files(f, &files, &scratch)
    })?;
    disk.format(4, "mkfs.vfat", &["-F", "32", "-s", "1"], |f| {
        crate::layout::mtools_files(f, &files, &scratch)
    })?;
    disk.format(5, "mkntfs", &["-Q", "-F", "-q"], |f| {
        crate::layout::ntfscp_files(f, &files, &scratch)
    })?;
    fs::rename(&disk.path, dir.join("disk.img"))?;
    Ok(Master {
        dir,
        parts: disk.parts.clone(),
    })
}

/// A private copy of the master disk.
struct Copy {
    _dir: tempfile::TempDir,
    path: PathBuf,
    parts: Vec<Part>,
}

fn copy() -> R<Copy> {
    let m = master()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("disk.img");
    sh(
        "cp",
        &[
            "--sparse=always",
            &m.dir.join("disk.img").to_string_lossy(),
            &path.to_string_lossy(),
        ],
    )?;
    Ok(Copy {
        _dir: dir,
        path,
        parts: m.parts.clone(),
    })
}

impl Copy {
    fn part(&self, n: u32) -> &Part {
        &self.parts[n as usize - 1]
    }
    fn read(&self, at: u64, len: usize) -> R<Vec<u8>> {
        let mut b = vec![0u8; len];
        fs::File::open(&self.path)?.read_exact_at(&mut b, at)?;
        Ok(b)
    }
    fn write(&self, at: u64, b: &[u8]) -> TestResult {
        fs::OpenOptions::new()
            .write(true)
            .open(&self.path)?
            .write_all_at(b, at)?;
        Ok(())
    }
    fn analyze(&self) -> R<DiskLayout> {
        timed(&self.path)
    }
}

/// `analyze` without partclone, which must finish in a few seconds.
fn timed(path: &Path) -> R<DiskLayout> {
    let t = Instant::now();
    let r = analyze(path, &AnalyzeOptions::default().use_partclone(false));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "analyze took {:?}",
        t.elapsed()
    );
    Ok(r?)
}

/// Partition `n` is imaged whole with a note containing `why`.
fn whole(l: &DiskLayout, n: u32, why: &str) -> TestResult {
    let p = l.partition(n).ok_or("no partition")?;
    assert_eq!(p.fs.method, MapMethod::Whole, "partition {n}: {:?}", p.fs);
    assert_eq!(p.fs.used_bytes, p.size);
    assert_eq!(covered(&l.used, p.start, p.size), p.size);
    let note = p.fs.note.clone().unwrap_or_default();
    assert!(
        note.contains(why),
        "partition {n}: note {note:?} lacks {why:?}"
    );
    Ok(())
}

/// Bitwise CRC-32C with the kernel's raw register convention (an
/// implementation independent of the crate's).
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Bitwise CRC-32 (IEEE), as GPT uses it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Changes the ext superblock of partition `n` and fixes its checksum.
fn ext_super(c: &Copy, n: u32, f: impl FnOnce(&mut Vec<u8>)) -> TestResult {
    let at = c.part(n).start + 1024;
    let mut sb = c.read(at, 1024)?;
    f(&mut sb);
    if get32(&sb, 0x64) & 0x400 != 0 {
        let sum = crc32c(!0, &sb[..0x3FC]);
        put32(&mut sb, 0x3FC, sum);
    }
    c.write(at, &sb)
}

#[test]
fn ext_superblock_fields_that_lie() -> TestResult {
    type Patch = fn(&mut Vec<u8>);
    let cases: [(u32, &str, Patch); 9] = [
        (1, "do not fit", |sb| {
            let b = get32(sb, 4);
            put32(sb, 4, b * 2)
        }),
        (2, "do not fit", |sb| put32(sb, 4, u32::MAX)),
        (1, "block size", |sb| put32(sb, 0x18, 30)),
        (2, "block size", |sb| put32(sb, 0x18, 30)),
        (1, "descriptor size 0", |sb| {
            sb[0xFE..0x100].copy_from_slice(&[0, 0])
        }),
        (1, "descriptor size 32768", |sb| {
            sb[0xFE..0x100].copy_from_slice(&[0, 0x80])
        }),
        (2, "inodes per group", |sb| put32(sb, 0x28, u32::MAX)),
        (1, "blocks per group", |sb| put32(sb, 0x20, 0)),
        (2, "reserved descriptor", |sb| {
            sb[0xCE..0xD0].copy_from_slice(&[0xFF, 0xFF])
        }),
    ];
    let c = copy()?;
    for (n, why, patch) in cases {
        let at = c.part(n).start + 1024;
        let orig = c.read(at, 1024)?;
        ext_super(&c, n, patch)?;
        whole(&c.analyze()?, n, why)?;
        c.write(at, &orig)?;
    }
    // A flipped bit without the checksum fixed: caught by the checksum.
    let at = c.part(1).start + 1024 + 0x20;
    let b = c.read(at, 1)?;
    c.write(at, &[b[0] ^ 0x10])?;
    whole(&c.analyze()?, 1, "superblock checksum")?;
    // No magic: no ext at all, and nothing else either.
    let c = copy()?;
    c.write(c.part(2).start + 1024 + 0x38, &[0, 0])?;
    whole(&c.analyze()?, 2, "no filesystem recognised")?;
    Ok(())
}

/// The ext4 metadata_csum descriptor checksum, for lies that keep it valid.
fn fix_desc_csum(c: &Copy, n: u32, desc_at: u64, desc_size: usize, group: u32) -> TestResult {
    let sb = c.read(c.part(n).start + 1024, 1024)?;
    let seed = crc32c(!0, &sb[0x68..0x78]);
    let mut d = c.read(desc_at, desc_size)?;
    let mut crc = crc32c(seed, &group.to_le_bytes());
    crc = crc32c(crc, &d[..0x1E]);
    crc = crc32c(crc, &[0, 0]);
    crc = crc32c(crc, &d[0x20..]);
    d[0x1E..0x20].copy_from_slice(&((crc & 0xFFFF) as u16).to_le_bytes());
    c.write(desc_at, &d)
}

#[test]
fn ext_descriptors_that_lie() -> TestResult {
    // ext2, 1 KiB blocks: group 0's descriptor at block 2, no checksums.
    let c = copy()?;
    let d = c.part(2).start + 2048;
    let orig = c.read(d, 32)?;
    c.write(d, &0xFFFF_FFF0u32.to_le_bytes())?;
    whole(&c.analyze()?, 2, "block bitmap at block 4294967280")?;
    c.write(d, &1u32.to_le_bytes())?;
    whole(&c.analyze()?, 2, "over the superblock")?;
    c.write(d, &orig)?;

    // ext4, 4 KiB blocks, 64-byte descriptors at block 1, metadata_csum.
    let d = c.part(1).start + 4096;
    let orig = c.read(d, 64)?;
    c.write(d + 8, &[orig[8] ^ 0x01])?; // inode table moved by one block
    whole(&c.analyze()?, 1, "descriptor checksum")?;
    // The same lie with the checksum recomputed: caught by the bounds.
    c.write(d, &orig)?;
    c.write(d + 0x28, &0x7FFFu32.to_le_bytes())?; // inode table, high word
    fix_desc_csum(&c, 1, d, 64, 0)?;
    whole(&c.analyze()?, 1, "inode table at block")?;
    Ok(())
}

/// Clears the first set bit of the first whole byte of ones in group 0's
/// block bitmap of ext partition `n` (descriptor at `desc_at`, blocks of
/// `bs`); returns the disk offset of the block that bit stands for.
fn clear_used_bit(c: &Copy, n: u32, desc_at: u64, bs: u64, first_block: u64) -> R<u64> {
    let p = c.part(n);
    let bb = u64::from(get32(&c.read(desc_at, 4)?, 0));
    let bitmap = c.read(p.start + bb * bs, bs as usize)?;
    // A block in the middle of a run of used blocks (file data, not the
    // metadata at the group's start).
    let i = bitmap
        .iter()
        .enumerate()
        .skip(64)
        .find(|(_, &b)| b == 0xFF)
        .map(|(i, _)| i)
        .ok_or("no used run")?;
    c.write(p.start + bb * bs + i as u64, &[0xFE])?;
    Ok(p.start + (first_block + i as u64 * 8) * bs)
}

#[test]
fn ext_bitmap_bit_cleared_keeps_the_group() -> TestResult {
    // ext2: the free count in the descriptor no longer matches.
    let c = copy()?;
    let block = clear_used_bit(&c, 2, c.part(2).start + 2048, 1024, 1)?;
    let l = c.analyze()?;
    let p = l.partition(2).ok_or("no partition 2")?;
    assert_eq!(p.fs.method, MapMethod::Bitmap);
    let note = p.fs.note.clone().unwrap_or_default();
    assert!(
        note.contains("disagrees with the descriptor's free count (groups 0)"),
        "{note}"
    );
    assert_eq!(
        covered(&l.used, block, 1024),
        1024,
        "the cleared block is still kept"
    );
    // ext4: the bitmap checksum fails.
    let c = copy()?;
    let block = clear_used_bit(&c, 1, c.part(1).start + 4096, 4096, 0)?;
    let l = c.analyze()?;
    let p = l.partition(1).ok_or("no partition 1")?;
    let note = p.fs.note.clone().unwrap_or_default();
    assert!(
        note.contains("block bitmap checksum mismatch (groups 0)"),
        "{note}"
    );
    assert_eq!(
        covered(&l.used, block, 4096),
        4096,
        "the cleared block is still kept"
    );
    Ok(())
}

#[test]
fn fat_boot_sectors_that_lie() -> TestResult {
    type Patch = fn(&mut Vec<u8>);
    let cases: [(u32, &str, Patch); 6] = [
        // FAT32 claiming 2^32 - 1 sectors (2^32 clusters of one sector).
        (4, "do not fit", |s| put32(s, 0x20, u32::MAX)),
        (3, "do not fit", |s| {
            s[0x13..0x15].copy_from_slice(&[0xFF, 0xFF])
        }),
        (4, "cannot hold", |s| put32(s, 0x24, 1)),
        (3, "no root directory", |s| {
            s[0x11..0x13].copy_from_slice(&[0, 0])
        }),
        (4, "root directory at cluster", |s| {
            put32(s, 0x2C, 0x0FFF_FFFF)
        }),
        (3, "no filesystem recognised", |s| {
            s[0x0B..0x0D].copy_from_slice(&[3, 0])
        }),
    ];
    let c = copy()?;
    for (n, why, patch) in cases {
        let at = c.part(n).start;
        let orig = c.read(at, 512)?;
        let mut s = orig.clone();
        patch(&mut s);
        c.write(at, &s)?;
        whole(&c.analyze()?, n, why)?;
        c.write(at, &orig)?;
    }
    Ok(())
}

#[test]
fn ntfs_boot_sectors_that_lie() -> TestResult {
    type Patch = fn(&mut Vec<u8>);
    let cases: [(&str, Patch); 4] = [
        ("do not fit", |s| {
            s[0x28..0x30].copy_from_slice(&(1u64 << 40).to_le_bytes())
        }),
        ("boot sector", |s| s[0x0D] = 3),
        ("boot sector", |s| {
            s[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes())
        }),
        ("", |s| {
            s[0x30..0x38].copy_from_slice(&(1u64 << 50).to_le_bytes())
        }),
    ];
    let c = copy()?;
    let at = c.part(5).start;
    let orig = c.read(at, 512)?;
    for (why, patch) in cases {
        let mut s = orig.clone();
        patch(&mut s);
        c.write(at, &s)?;
        whole(&c.analyze()?, 5, why)?;
        c.write(at, &orig)?;
    }
    Ok(())
}

/// Rewrites the GPT header at `lba` after `f`, with its CRC recomputed.
fn gpt_header(c: &Copy, lba: u64, f: impl FnOnce(&mut Vec<u8>)) -> TestResult {
    let mut h = c.read(lba * 512, 92)?;
    f(&mut h);
    put32(&mut h, 16, 0);
    let sum = crc32(&h);
    put32(&mut h, 16, sum);
    c.write(lba * 512, &h)
}

#[test]
fn gpt_headers_and_entries_that_lie() -> TestResult {
    let good = timed(&copy()?.path)?;
    let last = good.size / 512 - 1;
    // A huge entry count with a valid CRC: the primary is refused, the
    // backup is read instead, and the result is the same disk.
    let c = copy()?;
    gpt_header(&c, 1, |h| put32(h, 80, u32::MAX))?;
    let l = c.analyze()?;
    assert!(
        matches!(
            l.table,
            TableKind::Gpt {
                from_backup: true,
                ..
            }
        ),
        "{:?}",
        l.table
    );
    assert!(
        l.notes.iter().any(|n| n.contains("primary GPT damaged")),
        "{:?}",
        l.notes
    );
    assert_eq!(l.partitions, good.partitions);
    assert_eq!(l.used, good.used);
    // The backup broken too: the whole disk, with a note.
    c.write(last * 512 + 20, &[0x55])?;
    let l = c.analyze()?;
    assert_eq!(l.table, TableKind::None);
    assert_eq!(l.used.total(), l.size);
    assert!(
        l.notes.iter().any(|n| n.contains("GPT unreadable")),
        "{:?}",
        l.notes
    );

    // Entry sizes and array positions that lie, CRC intact.
    for patch in [
        (|h: &mut Vec<u8>| put32(h, 84, 0)) as fn(&mut Vec<u8>),
        |h| put32(h, 84, 1 << 20),
        |h| h[72..80].copy_from_slice(&(u64::MAX / 2).to_le_bytes()),
        |h| h[40..48].copy_from_slice(&0u64.to_le_bytes()), // first usable LBA
    ] {
        let c = copy()?;
        gpt_header(&c, 1, patch)?;
        let l = c.analyze()?;
        assert!(
            matches!(
                l.table,
                TableKind::Gpt {
                    from_backup: true,
                    ..
                }
            ),
            "{:?}",
            l.table
        );
        assert_eq!(l.partitions, good.partitions);
    }

    // An entry that ends before it starts, in both arrays, CRCs recomputed.
    let c = copy()?;
    for (hdr, array) in [(1u64, 2u64), (last, last - 32)] {
        let mut entries = c.read(array * 512, 128 * 128)?;
        entries[40..48].copy_from_slice(&10u64.to_le_bytes()); // ending LBA of entry 1
        c.write(array * 512, &entries)?;
        let sum = crc32(&entries);
        gpt_header(&c, hdr, |h| put32(h, 88, sum))?;
    }
    let l = c.analyze()?;
    assert_eq!(l.table, TableKind::None);
    assert!(
        l.notes
            .iter()
            .any(|n| n.contains("ends (LBA 10) before it starts")),
        "{:?}",
        l.notes
    );

    // A flipped bit in an entry, CRC not fixed: the backup is read.
    let c = copy()?;
    let b = c.read(2 * 512 + 128 + 33, 1)?;
    c.write(2 * 512 + 128 + 33, &[b[0] ^ 0x04])?;
    let l = c.analyze()?;
    assert!(matches!(
        l.table,
        TableKind::Gpt {
            from_backup: true,
            ..
        }
    ));
    assert_eq!(l.partitions, good.partitions);
    Ok(())
}

/// An MBR disk with three logicals (no filesystems needed).
fn mbr_copy() -> R<Disk> {
    Disk::mbr(
        64,
        "label: dos\nstart=2048, size=8MiB, type=83\ntype=5\n\
         size=8MiB, type=83\nsize=8MiB, type=83\nsize=8MiB, type=83\n",
    )
}

fn write_at(path: &Path, at: u64, b: &[u8]) -> TestResult {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all_at(b, at)?;
    Ok(())
}

#[test]
fn mbr_ebr_chains_that_lie() -> TestResult {
    let d = mbr_copy()?;
    let ext = d.part(2)?.clone();
    let good = timed(&d.path)?;
    assert_eq!(good.partitions.len(), 4);
    let TableKind::Mbr { ebr_offsets, .. } = &good.table else {
        return Err("not MBR".into());
    };
    let second = ebr_offsets[1];
    let next_at = second + 446 + 16 + 8; // the second EBR's link
                                         // The link pointing back towards the first EBR: a loop.
    write_at(&d.path, next_at, &1u32.to_le_bytes())?;
    let l = timed(&d.path)?;
    assert!(
        l.notes.iter().any(|n| n.contains("loops back")),
        "{:?}",
        l.notes
    );
    assert_eq!(
        covered(&l.used, ext.start, ext.size),
        ext.size,
        "extended kept whole"
    );
    assert_eq!(l.partitions.len(), 1, "the primary is still there");
    // The link pointing past the end of the disk.
    write_at(&d.path, next_at, &(1u32 << 30).to_le_bytes())?;
    let l = timed(&d.path)?;
    assert!(
        l.notes
            .iter()
            .any(|n| n.contains("past the end of the disk")),
        "{:?}",
        l.notes
    );

    // A chain of 300 EBRs, each one sector after the last.
    let d = mbr_copy()?;
    let base = d.part(2)?.start / 512;
    for i in 0..300u32 {
        let mut s = vec![0u8; 512];
        s[446 + 4] = 0x83;
        put32(&mut s, 446 + 8, 1);
        put32(&mut s, 446 + 12, 1);
        s[462 + 4] = 0x05;
        put32(&mut s, 462 + 8, (i + 1) * 2);
        put32(&mut s, 462 + 12, 2);
        s[510] = 0x55;
        s[511] = 0xAA;
        write_at(&d.path, (base + u64::from(i) * 2) * 512, &s)?;
    }
    let l = timed(&d.path)?;
    assert!(
        l.notes.iter().any(|n| n.contains("more than 252 logical")),
        "{:?}",
        l.notes
    );

    // A primary starting on the table itself: damaged, the whole disk.
    let d = mbr_copy()?;
    write_at(&d.path, 446 + 8, &0u32.to_le_bytes())?;
    let l = timed(&d.path)?;
    assert_eq!(l.used.total(), l.size);
    assert!(
        l.notes.iter().any(|n| n.contains("starts at sector 0")),
        "{:?}",
        l.notes
    );
    // A primary larger than the disk: clipped, with a note.
    let d = mbr_copy()?;
    write_at(&d.path, 446 + 12, &u32::MAX.to_le_bytes())?;
    let l = timed(&d.path)?;
    assert!(
        l.notes
            .iter()
            .any(|n| n.contains("past the end of the disk") && n.contains("clipped")),
        "{:?}",
        l.notes
    );
    let p1 = l.partition(1).ok_or("no partition 1")?;
    assert_eq!(p1.start + p1.size, l.size);
    Ok(())
}

#[test]
fn disk_cut_short() -> TestResult {
    let c = copy()?;
    let p4 = c.part(4).clone();
    let cut = p4.start + p4.size / 2;
    fs::OpenOptions::new()
        .write(true)
        .open(&c.path)?
        .set_len(cut)?;
    let l = c.analyze()?;
    assert_eq!(l.size, cut);
    assert_eq!(l.gpt_backup, None);
    assert!(
        l.notes
            .iter()
            .any(|n| n.contains("backup GPT header") && n.contains("past the end")),
        "{:?}",
        l.notes
    );
    whole(&l, 4, "do not fit")?;
    let p5 = l.partition(5).ok_or("no partition 5")?;
    assert_eq!(p5.size, 0);
    assert_eq!(p5.fs.kind, FsKind::Unknown);
    assert!(l.used.end() <= cut);
    // Cut inside the primary entry array: the backup is gone too.
    fs::OpenOptions::new()
        .write(true)
        .open(&c.path)?
        .set_len(4096)?;
    let l = c.analyze()?;
    assert_eq!(l.used.total(), 4096);
    Ok(())
}

/// Where flips land: the first MiB of partition `n` (1..=5); the disk's
/// first 64 KiB (protective MBR, GPT header and entries) for 0; the first
/// eight NTFS MFT records ($MFT .. $Bitmap, $Boot) for 6.
fn flip_region(c: &Copy, n: u32) -> R<(u64, u64)> {
    Ok(match n {
        0 => (0, 64 << 10),
        6 => {
            let p = c.part(5);
            let bs = c.read(p.start, 512)?;
            let cs = u64::from(u16::from_le_bytes([bs[11], bs[12]])) * u64::from(bs[13]);
            let lcn = u64::from_le_bytes(bs[0x30..0x38].try_into()?);
            (p.start + lcn * cs, 8 << 10)
        }
        _ => {
            let p = c.part(n);
            (p.start, p.size.min(1 << 20))
        }
    })
}

fn shared_copy() -> &'static Result<Copy, String> {
    static C: OnceLock<Result<Copy, String>> = OnceLock::new();
    C.get_or_init(|| copy().map_err(|e| e.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig {
        // FSMAP_FLIP_CASES=5000 for a longer hunt.
        cases: std::env::var("FSMAP_FLIP_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(240),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_flips_never_panic(
        n in 0u32..=6,
        // Mostly near the start, where the superblocks, BPBs, descriptors
        // and tables are.
        flips in proptest::collection::vec(
            (prop_oneof![0u64..4096, 0u64..64 << 10, 0u64..1 << 20], 1u8..=255),
            1..24,
        ),
    ) {
        let c = shared_copy().as_ref().map_err(|e| TestCaseError::fail(e.clone()))?;
        let (start, len) = flip_region(c, n).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut saved = Vec::new();
        for (off, x) in &flips {
            let at = start + off % len;
            let b = c.read(at, 1).map_err(|e| TestCaseError::fail(e.to_string()))?;
            saved.push((at, b[0]));
            c.write(at, &[b[0] ^ x]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let t = Instant::now();
        let r = analyze(&c.path, &AnalyzeOptions::default().use_partclone(false));
        let took = t.elapsed();
        for (at, b) in saved.into_iter().rev() {
            c.write(at, &[b]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert!(took < Duration::from_secs(10), "took {:?}", took);
        match r {
            Ok(l) => {
                prop_assert!(l.used.end() <= l.size);
                for p in &l.partitions {
                    prop_assert!(p.fs.used_bytes <= p.size);
                    prop_assert!(p.start + p.size <= l.size);
                }
            }
            // A flip may set a dirty flag: that is a clear refusal.
            Err(FsmapError::Refused(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error: {e}"),
        }
    }
}
