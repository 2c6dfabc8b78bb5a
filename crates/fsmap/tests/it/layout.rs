//! A GPT disk with one of everything, built without root (mkfs on scratch
//! files copied into place; debugfs, mtools and ntfscp for the files):
//! the table as sfdisk reads it, what `used` holds between and around the
//! partitions, the JSON form and the `img info` rendering. Also the same
//! disk through a loop device (the block-device path).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use imgcast_fsmap::{AnalyzeOptions, DiskLayout, FsKind, MapMethod, TableKind};

use crate::{check_files, covered, is_root, mtools, pattern, sh, Disk, Files, Loop, TestResult, R};

/// Writes the usual files with debugfs and deletes the deleted ones.
pub(crate) fn debugfs_files(img: &Path, files: &Files, scratch: &Path) -> TestResult {
    let img = img.to_string_lossy();
    for (id, len) in files.all() {
        let host = scratch.join(format!("host{id}"));
        fs::write(&host, pattern(id, len))?;
        let cmd = format!("write {} {}", host.display(), Files::name(id));
        sh("debugfs", &["-w", "-R", &cmd, &img])?;
        fs::remove_file(host)?;
    }
    for (id, _) in &files.deleted {
        sh(
            "debugfs",
            &["-w", "-R", &format!("rm {}", Files::name(*id)), &img],
        )?;
    }
    Ok(())
}

/// Writes the usual files with mcopy and deletes the deleted ones.
pub(crate) fn mtools_files(img: &Path, files: &Files, scratch: &Path) -> TestResult {
    let img = img.to_string_lossy();
    for (id, len) in files.all() {
        let host = scratch.join(format!("host{id}"));
        fs::write(&host, pattern(id, len))?;
        mtools(
            "mcopy",
            &[
                "-i",
                &img,
                &host.to_string_lossy(),
                &format!("::/{}", Files::name(id)),
            ],
        )?;
        fs::remove_file(host)?;
    }
    for (id, _) in &files.deleted {
        mtools("mdel", &["-i", &img, &format!("::/{}", Files::name(*id))])?;
    }
    Ok(())
}

/// The kept files only, with ntfscp (ntfs-3g has no offline delete).
pub(crate) fn ntfscp_files(img: &Path, files: &Files, scratch: &Path) -> TestResult {
    for &(id, len) in &files.kept {
        let host = scratch.join(format!("host{id}"));
        fs::write(&host, pattern(id, len))?;
        sh(
            "ntfscp",
            &[
                &img.to_string_lossy(),
                &host.to_string_lossy(),
                &Files::name(id),
            ],
        )?;
        fs::remove_file(host)?;
    }
    Ok(())
}

/// GPT: BIOS boot (raw bytes), ext4, EFI FAT16, NTFS, swap, raw data.
pub(crate) fn everything_disk() -> R<(Disk, Files)> {
    let disk = Disk::gpt(
        200,
        &[
            ("1M", "EF02", "grub"),
            ("48M", "8300", "root"),
            ("24M", "EF00", "EFI"),
            ("40M", "0700", "win"),
            ("8M", "8200", ""),
            ("16M", "8300", "raw"),
        ],
    )?;
    let files = Files::usual();
    let scratch = disk.dir.path().to_path_buf();
    let raw = |n: u32, seed: u32| -> TestResult {
        let p = disk.part(n)?;
        let f = fs::OpenOptions::new().write(true).open(&disk.path)?;
        f.write_all_at(&pattern(seed, p.size.min(1 << 20) as usize), p.start)?;
        Ok(())
    };
    raw(1, 90)?;
    disk.format(2, "mkfs.ext4", &["-q", "-F", "-L", "root"], |f| {
        debugfs_files(f, &files, &scratch)
    })?;
    let fat_files = Files {
        kept: vec![(11, 64 << 10), (13, 1 << 20)],
        deleted: vec![(12, 512 << 10)],
    };
    disk.format(3, "mkfs.vfat", &["-F", "16", "-n", "EFI"], |f| {
        mtools_files(f, &fat_files, &scratch)
    })?;
    let ntfs_files = Files {
        kept: vec![(21, 256 << 10)],
        deleted: vec![],
    };
    disk.format(4, "mkntfs", &["-Q", "-F", "-q", "-L", "win"], |f| {
        ntfscp_files(f, &ntfs_files, &scratch)
    })?;
    disk.format(5, "mkswap", &["-L", "swp"], |_| Ok(()))?;
    raw(6, 91)?;
    // A boot loader in the gap after the GPT, and stale bytes in the
    // unpartitioned tail: the first is used, the second is not.
    let f = fs::OpenOptions::new().write(true).open(&disk.path)?;
    f.write_all_at(&pattern(92, 32 << 10), 64 << 10)?;
    let p6 = disk.part(6)?;
    f.write_all_at(&pattern(93, 1 << 20), p6.start + p6.size + (1 << 20))?;
    Ok((disk, files))
}

fn check_everything(disk: &Disk, files: &Files, l: &DiskLayout, sfdisk_json: &str) -> TestResult {
    let j: serde_json::Value = serde_json::from_str(sfdisk_json)?;
    let t = &j["partitiontable"];
    let TableKind::Gpt {
        disk_guid,
        sector_size,
        first_usable_lba,
        last_usable_lba,
        from_backup,
        entries,
        ..
    } = &l.table
    else {
        return Err(format!("not GPT: {:?}", l.table).into());
    };
    assert_eq!(Some(disk_guid.as_str()), t["id"].as_str());
    assert_eq!(*sector_size, 512);
    assert_eq!(Some(*first_usable_lba), t["firstlba"].as_u64());
    assert_eq!(Some(*last_usable_lba), t["lastlba"].as_u64());
    assert!(!from_backup);
    assert_eq!(*entries, 128);

    assert_eq!(l.partitions.len(), disk.parts.len());
    for (ours, theirs) in l.partitions.iter().zip(&disk.parts) {
        assert_eq!(ours.number, theirs.number);
        assert_eq!(ours.start, theirs.start);
        assert_eq!(ours.size, theirs.size);
        assert_eq!(ours.type_id, theirs.type_id);
        assert_eq!(ours.name, theirs.name);
    }
    let kinds: Vec<(String, FsKind, MapMethod)> = l
        .partitions
        .iter()
        .map(|p| (p.type_name.clone(), p.fs.kind.clone(), p.fs.method))
        .collect();
    assert_eq!(
        kinds,
        [
            ("BIOS boot".into(), FsKind::Unknown, MapMethod::Whole),
            ("Linux filesystem".into(), FsKind::Ext4, MapMethod::Bitmap),
            ("EFI System".into(), FsKind::Fat16, MapMethod::Bitmap),
            (
                "Microsoft basic data".into(),
                FsKind::Ntfs,
                MapMethod::Bitmap
            ),
            ("Linux swap".into(), FsKind::Swap, MapMethod::HeaderOnly),
            ("Linux filesystem".into(), FsKind::Unknown, MapMethod::Whole),
        ]
    );
    let labels: Vec<Option<&str>> = l.partitions.iter().map(|p| p.fs.label.as_deref()).collect();
    assert_eq!(
        labels,
        [
            None,
            Some("root"),
            Some("EFI"),
            Some("win"),
            Some("swp"),
            None
        ]
    );
    let swap = &l.partitions[4].fs;
    assert_eq!((swap.used_bytes, swap.block_size), (4096, 4096));

    // Up to the first partition, all of it (the gap holds the boot loader).
    let p1 = &disk.parts[0];
    assert_eq!(covered(&l.used, 0, p1.start), p1.start);
    // The backup GPT: 32 sectors of entries and the header, at the very end.
    let b = l.gpt_backup.ok_or("no gpt_backup")?;
    assert_eq!((b.start, b.end), (l.size - 33 * 512, l.size));
    assert_eq!(covered(&l.used, b.start, b.len()), b.len());
    // The unpartitioned tail before it is not used.
    let p6 = &disk.parts[5];
    let tail = p6.start + p6.size;
    assert_eq!(covered(&l.used, tail, b.start - tail), 0);
    // Whole partitions are whole.
    assert_eq!(covered(&l.used, p1.start, p1.size), p1.size);
    assert_eq!(covered(&l.used, p6.start, p6.size), p6.size);
    // `used` is exactly the table areas plus each partition's map.
    let parts_total: u64 = l.partitions.iter().map(|p| p.fs.used_bytes).sum();
    assert_eq!(l.used.total(), p1.start + parts_total + b.len());

    check_files(&l.used, &disk.path, disk.part(2)?, files)?;
    let fat_files = Files {
        kept: vec![(11, 64 << 10), (13, 1 << 20)],
        deleted: vec![(12, 512 << 10)],
    };
    check_files(&l.used, &disk.path, disk.part(3)?, &fat_files)?;
    let ntfs_files = Files {
        kept: vec![(21, 256 << 10)],
        deleted: vec![],
    };
    check_files(&l.used, &disk.path, disk.part(4)?, &ntfs_files)?;
    assert_eq!(
        l.notes,
        [
            "partition 1 (unknown): imaged whole: no filesystem recognised",
            "partition 6 (unknown): imaged whole: no filesystem recognised",
        ]
    );
    Ok(())
}

#[test]
fn gpt_disk_with_one_of_everything() -> TestResult {
    let (disk, files) = everything_disk()?;
    let json = sh("sfdisk", &["-J", &disk.path.to_string_lossy()])?;
    let l = disk.analyze(&AnalyzeOptions::default())?;
    check_everything(&disk, &files, &l, &json)?;

    // The JSON form round-trips.
    let back: DiskLayout = serde_json::from_str(&serde_json::to_string(&l)?)?;
    assert_eq!(back, l);

    // The `img info` rendering has a row per partition with its columns.
    let lines = l.table_lines();
    let text = lines.join("\n");
    eprintln!("{text}");
    assert!(lines[0].starts_with("200.0 MiB, GPT (disk GUID "), "{text}");
    for (p, needle) in l.partitions.iter().zip([
        "BIOS boot \"grub\"",
        "Linux filesystem \"root\"",
        "EFI System \"EFI\"",
        "Microsoft basic data \"win\"",
        "Linux swap",
        "Linux filesystem \"raw\"",
    ]) {
        let row = lines
            .iter()
            .find(|r| r.trim_start().starts_with(&format!("{} ", p.number)))
            .ok_or_else(|| format!("no row for partition {}\n{text}", p.number))?;
        assert!(row.contains(needle), "{row}");
        assert!(row.contains(&p.fs.kind.to_string()), "{row}");
    }
    assert!(text.contains("4.0 KiB (header only)"), "{text}");
    assert!(text.contains("note: partition 1 (unknown)"), "{text}");

    // Without root nothing more; as root, the same disk as a block device.
    if !is_root() {
        eprintln!("SKIPPED gpt_disk_with_one_of_everything (block device part): needs root");
        return Ok(());
    }
    let size = fs::metadata(&disk.path)?.len();
    let lo = Loop::attach(&disk.path, 0, size, true)?;
    let lb = imgcast_fsmap::analyze(Path::new(&lo.dev), &AnalyzeOptions::default())?;
    assert_eq!(lb.used, l.used);
    assert_eq!(lb.partitions, l.partitions);
    assert_eq!(lb.table, l.table);
    Ok(())
}

#[test]
fn superfloppy_filesystem_without_table() -> TestResult {
    // mkfs straight on the "disk": no partition table at all.
    let dir = tempfile::tempdir()?;
    for (mkfs, args, kind) in [
        ("mkfs.vfat", vec!["-F", "32", "-n", "FLOPPY"], FsKind::Fat32),
        ("mkfs.ext4", vec!["-q", "-F", "-L", "FLOPPY"], FsKind::Ext4),
        (
            "mkntfs",
            vec!["-Q", "-F", "-q", "-L", "FLOPPY"],
            FsKind::Ntfs,
        ),
    ] {
        let img = dir.path().join("floppy.img");
        fs::File::create(&img)?.set_len(64 << 20)?;
        let mut a = args.clone();
        let s = img.to_string_lossy().into_owned();
        a.push(&s);
        sh(mkfs, &a)?;
        let l = imgcast_fsmap::analyze(&img, &AnalyzeOptions::default())?;
        assert_eq!(l.table, TableKind::None, "{mkfs}");
        assert!(l.partitions.is_empty());
        let w = l.whole.as_ref().ok_or("no whole")?;
        assert_eq!(
            (w.kind.clone(), w.method),
            (kind, MapMethod::Bitmap),
            "{mkfs}: {:?}",
            w.note
        );
        assert_eq!(w.label.as_deref(), Some("FLOPPY"));
        assert_eq!(l.used.total(), w.used_bytes);
        assert!(w.used_bytes < 32 << 20, "{mkfs}: {} used", w.used_bytes);
        assert!(l.table_lines().iter().any(|r| r.contains("(whole disk)")));
        fs::remove_file(&img)?;
    }
    // Nothing recognisable: the whole disk.
    let img = dir.path().join("noise.img");
    fs::write(&img, pattern(7, 1 << 20))?;
    let l = imgcast_fsmap::analyze(&img, &AnalyzeOptions::default())?;
    assert_eq!(l.used.total(), 1 << 20);
    assert_eq!(l.whole.map(|w| w.kind), Some(FsKind::Unknown));
    Ok(())
}
