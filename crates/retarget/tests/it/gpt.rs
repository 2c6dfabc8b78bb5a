//! GPT disks restored onto larger and smaller files and loop devices.

use std::path::{Path, PathBuf};

use imgcast_retarget::{fit_table, FitAction, FitOptions, RetargetError, TableKind};

use crate::{
    assert_backup_at_end, assert_e2fsck_clean, assert_sgdisk_clean, ext_blocks, ext_read_file,
    ext_write_files, hash_file, hash_range, noise, p, part_loop, restore_copy, sfdisk_parts,
    sfpart, sgdisk_disk, skip, tool, Loop, Res, TestResult, MIB,
};

type Files = Vec<(&'static str, Vec<u8>)>;

/// A 48 MiB GPT disk as sgdisk makes it: partition 1 (EFI, vfat) of
/// 8 MiB, partition 2 (Linux, ext4) to the last usable LBA, with files.
pub(crate) fn ext4_gpt_source(dir: &Path) -> Res<(PathBuf, Files)> {
    let src = dir.join("src.raw");
    sgdisk_disk(
        &src,
        48 * MIB,
        &[
            "-n",
            "1:2048:+8M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:0",
            "-t",
            "2:8300",
        ],
    )?;
    let p1 = part_loop(&src, 1)?;
    tool("mkfs.vfat", &[p(&p1.dev)])?;
    drop(p1);
    let p2 = part_loop(&src, 2)?;
    tool("mkfs.ext4", &["-q", "-F", p(&p2.dev)])?;
    let files: Files = vec![
        ("big", noise(300_000, 1)),
        ("small", b"hello from the source disk\n".to_vec()),
        ("d/inner", noise(5000, 2)),
    ];
    ext_write_files(dir, &p2.dev, &files)?;
    assert_e2fsck_clean(&p2.dev)?;
    Ok((src, files))
}

fn assert_files(dev: &Path, files: &Files) -> TestResult {
    for (name, bytes) in files {
        assert!(
            &ext_read_file(dev, name)? == bytes,
            "file {name} differs after the resize"
        );
    }
    Ok(())
}

#[test]
fn larger_file_moves_the_backup_and_leaves_partitions_alone() -> TestResult {
    if skip("larger_file_moves_the_backup_and_leaves_partitions_alone") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (src, _) = ext4_gpt_source(dir.path())?;
    let tgt = dir.path().join("tgt.raw");
    let size = 96 * MIB;
    restore_copy(&src, &tgt, size)?;
    let parts = sfdisk_parts(&src)?;
    let before: Vec<_> = parts
        .iter()
        .map(|x| hash_range(&tgt, x.start * 512, x.size * 512))
        .collect::<Res<_>>()?;

    let r = fit_table(&tgt, &FitOptions::new())?;
    for line in r.lines() {
        eprintln!("  {line}");
    }
    assert_eq!(r.table, TableKind::Gpt);
    assert_eq!(r.sector_size, 512);
    let old_last = 48 * MIB / 512 - 1;
    let new_last = size / 512 - 1;
    assert_eq!(
        r.actions[0],
        FitAction::MovedBackupGpt {
            from_lba: old_last,
            to_lba: new_last,
            last_usable_from: old_last - 33,
            last_usable_to: new_last - 33,
        }
    );
    assert!(r.actions.contains(&FitAction::FixedProtectiveMbr {
        from_sectors: old_last as u32,
        to_sectors: new_last as u32,
    }));
    assert!(r
        .actions
        .contains(&FitAction::ClearedStaleBackupGpt { lba: old_last }));
    assert!(!r.has_refusals());
    assert_sgdisk_clean(&tgt)?;
    assert_backup_at_end(&tgt, size)?;
    assert_eq!(sfdisk_parts(&tgt)?, parts, "partitions changed");
    let after: Vec<_> = parts
        .iter()
        .map(|x| hash_range(&tgt, x.start * 512, x.size * 512))
        .collect::<Res<_>>()?;
    assert_eq!(before, after, "partition contents changed");

    // The JSON form names the actions.
    let j = serde_json::to_value(&r)?;
    assert_eq!(j["actions"][0]["action"], "moved_backup_gpt");

    // Fitting again: nothing to do, nothing written.
    let h = hash_file(&tgt)?;
    let again = fit_table(&tgt, &FitOptions::new())?;
    assert!(again.did_nothing(), "{:?}", again.actions);
    assert!(again.lines()[0].starts_with("nothing to do: the GPT already fits"));
    assert_eq!(hash_file(&tgt)?, h);
    Ok(())
}

#[test]
fn same_size_target_is_nothing_to_do() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    sgdisk_disk(&src, 8 * MIB, &["-n", "1:2048:0"])?;
    let h = hash_file(&src)?;
    let r = fit_table(&src, &FitOptions::new())?;
    assert!(r.did_nothing(), "{:?}", r.actions);
    assert_eq!(hash_file(&src)?, h);
    // Growing: partition 1 already reaches the end as far as alignment allows.
    let r = fit_table(&src, &FitOptions::new().grow(true))?;
    assert!(
        matches!(&r.actions[0], FitAction::GrowNotNeeded { reason } if reason.contains("already reaches")),
        "{:?}",
        r.actions
    );
    assert!(r.did_nothing() && !r.has_refusals(), "{:?}", r.actions);
    assert_eq!(hash_file(&src)?, h);
    Ok(())
}

#[test]
fn same_size_keeps_a_table_that_ends_its_usable_area_early() -> TestResult {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("d.raw");
    std::fs::File::create(&disk)?.set_len(8 * MIB)?;
    // sfdisk lets the last usable LBA stop short of the standard layout.
    crate::tool_stdin(
        "sfdisk",
        &["-q", p(&disk)],
        "label: gpt\nlast-lba: 14000\nstart=2048, size=4096\n",
    )?;
    let h = hash_file(&disk)?;
    let r = fit_table(&disk, &FitOptions::new())?;
    assert!(r.did_nothing(), "{:?}", r.actions);
    assert_eq!(hash_file(&disk)?, h);
    // Onto a larger disk the standard layout applies.
    let big = dir.path().join("big.raw");
    restore_copy(&disk, &big, 16 * MIB)?;
    let r = fit_table(&big, &FitOptions::new())?;
    assert!(
        matches!(
            r.actions[0],
            FitAction::MovedBackupGpt { last_usable_from: 14000, last_usable_to, .. } if last_usable_to == 16 * MIB / 512 - 34
        ),
        "{:?}",
        r.actions
    );
    assert_sgdisk_clean(&big)?;
    Ok(())
}

#[test]
fn same_size_with_a_damaged_backup_or_protective_mbr_is_repaired() -> TestResult {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("d.raw");
    let size = 8 * MIB;
    sgdisk_disk(&disk, size, &["-n", "1:2048:+2M", "-n", "2:0:0"])?;
    let good = std::fs::read(&disk)?;
    let f = std::fs::OpenOptions::new().write(true).open(&disk)?;
    // A flipped bit in the backup header.
    f.write_all_at(&[good[(size - 512 + 45) as usize] ^ 8], size - 512 + 45)?;
    let r = fit_table(&disk, &FitOptions::new())?;
    assert!(
        matches!(&r.actions[..], [FitAction::RewroteBackupGpt { lba, reason }] if *lba == size / 512 - 1 && reason.contains("CRC")),
        "{:?}",
        r.actions
    );
    assert_sgdisk_clean(&disk)?;
    assert!(
        std::fs::read(&disk)? == good,
        "the rewritten backup differs from sgdisk's"
    );

    // A protective MBR that covers too little.
    f.write_all_at(&1000u32.to_le_bytes(), 446 + 12)?;
    let r = fit_table(&disk, &FitOptions::new())?;
    assert_eq!(
        r.actions,
        vec![FitAction::FixedProtectiveMbr {
            from_sectors: 1000,
            to_sectors: (size / 512 - 1) as u32
        }]
    );
    assert!(std::fs::read(&disk)? == good);
    Ok(())
}

/// Checks a grown ext4 partition 2 on `disk` of `size` bytes.
fn check_grown(
    disk: &Path,
    size: u64,
    r: &imgcast_retarget::FitReport,
    files: &Files,
) -> TestResult {
    for line in r.lines() {
        eprintln!("  {line}");
    }
    // Last usable LBA is size/512 - 34; the end aligns to 1 MiB like the
    // start (LBA 18432).
    let last_usable = size / 512 - 34;
    let want_end = (last_usable + 1) / 2048 * 2048 - 1;
    let grew = r
        .actions
        .iter()
        .find_map(|a| match a {
            FitAction::GrewPartition {
                number: 2,
                start_lba,
                to_end_lba,
                ..
            } => Some((*start_lba, *to_end_lba)),
            _ => None,
        })
        .ok_or("no GrewPartition")?;
    assert_eq!(grew, (18432, want_end));
    assert!(r.actions.iter().any(|a| matches!(a,
        FitAction::CheckedFilesystem { number: 2, fs, command, .. } if fs == "ext4" && command.starts_with("e2fsck -f -n"))));
    let resized = r
        .actions
        .iter()
        .find_map(|a| match a {
            FitAction::ResizedFilesystem {
                number: 2,
                fs,
                from_bytes,
                to_bytes,
                ..
            } if fs == "ext4" => Some((*from_bytes, *to_bytes)),
            _ => None,
        })
        .ok_or("no ResizedFilesystem")?;
    assert!(!r.has_refusals());
    assert_sgdisk_clean(disk)?;
    assert_backup_at_end(disk, size)?;
    let sp = sfpart(disk, 2)?;
    assert_eq!((sp.start, sp.start + sp.size - 1), (18432, want_end));
    let part_bytes = sp.size * 512;
    let lo = part_loop(disk, 2)?;
    assert_e2fsck_clean(&lo.dev)?;
    let (blocks, bs) = ext_blocks(&lo.dev)?;
    assert_eq!(
        blocks * bs,
        part_bytes / bs * bs,
        "ext4 does not fill its partition"
    );
    assert_eq!(resized.1, blocks * bs);
    assert!(
        resized.0 + 20 * MIB < resized.1,
        "ext4 did not grow: {resized:?}"
    );
    assert_files(&lo.dev, files)?;
    Ok(())
}

#[test]
fn larger_file_with_grow_enlarges_ext4() -> TestResult {
    if skip("larger_file_with_grow_enlarges_ext4") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (src, files) = ext4_gpt_source(dir.path())?;
    let tgt = dir.path().join("tgt.raw");
    let size = 100 * MIB;
    restore_copy(&src, &tgt, size)?;
    let p1 = sfpart(&src, 1)?;
    let p1_before = hash_range(&tgt, p1.start * 512, p1.size * 512)?;
    let r = fit_table(&tgt, &FitOptions::new().grow(true))?;
    check_grown(&tgt, size, &r, &files)?;
    assert_eq!(hash_range(&tgt, p1.start * 512, p1.size * 512)?, p1_before);
    Ok(())
}

#[test]
fn larger_loop_device_with_grow_enlarges_ext4() -> TestResult {
    if skip("larger_loop_device_with_grow_enlarges_ext4") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (src, files) = ext4_gpt_source(dir.path())?;
    let backing = dir.path().join("tgt.raw");
    let size = 80 * MIB;
    // A device holding old bytes everywhere, then the restored bytes.
    std::fs::write(&backing, noise(size as usize, 9))?;
    let data = std::fs::read(&src)?;
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&backing)?,
        &data,
        0,
    )?;
    let dev = Loop::whole(&backing, &[])?;
    let r = fit_table(&dev.dev, &FitOptions::new().grow(true))?;
    assert_sgdisk_clean(&dev.dev)?;
    drop(dev);
    check_grown(&backing, size, &r, &files)?;
    Ok(())
}

#[test]
fn smaller_target_where_partitions_fit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    // Two 16 MiB partitions on a 64 MiB disk: they end at 33 MiB.
    sgdisk_disk(&src, 64 * MIB, &["-n", "1:2048:+16M", "-n", "2:0:+16M"])?;
    let p2 = sfpart(&src, 2)?;
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&src)?,
        &noise(16 * MIB as usize, 3),
        p2.start * 512,
    )?;
    let tgt = dir.path().join("tgt.raw");
    let size = 40 * MIB;
    restore_copy(&src, &tgt, size)?;
    let parts = sfdisk_parts(&src)?;
    let r = fit_table(&tgt, &FitOptions::new())?;
    assert_eq!(
        r.actions[0],
        FitAction::MovedBackupGpt {
            from_lba: 64 * MIB / 512 - 1,
            to_lba: size / 512 - 1,
            last_usable_from: 64 * MIB / 512 - 34,
            last_usable_to: size / 512 - 34,
        }
    );
    // The old backup lay past the new end: nothing stale to clear.
    assert!(!r
        .actions
        .iter()
        .any(|a| matches!(a, FitAction::ClearedStaleBackupGpt { .. })));
    assert_sgdisk_clean(&tgt)?;
    assert_backup_at_end(&tgt, size)?;
    assert_eq!(sfdisk_parts(&tgt)?, parts);
    let p2 = &parts[1];
    assert_eq!(
        hash_range(&tgt, p2.start * 512, p2.size * 512)?,
        hash_range(&src, p2.start * 512, p2.size * 512)?
    );
    Ok(())
}

#[test]
fn smaller_target_where_a_partition_does_not_fit_is_refused_untouched() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    sgdisk_disk(&src, 64 * MIB, &["-n", "1:2048:+16M", "-n", "2:0:+16M"])?;
    let tgt = dir.path().join("tgt.raw");
    // 33 MiB: partition 2 ends at LBA 67583, the last usable would be 67550.
    let size = 33 * MIB;
    restore_copy(&src, &tgt, size)?;
    let h = hash_file(&tgt)?;
    for grow in [false, true] {
        let e = fit_table(&tgt, &FitOptions::new().grow(grow))
            .err()
            .ok_or("not refused")?;
        eprintln!("refused as expected: {e}");
        match &e {
            RetargetError::PartitionDoesNotFit {
                number,
                end_lba,
                last_usable_lba,
                needed_bytes,
                ..
            } => {
                assert_eq!(*number, 2);
                assert_eq!(*end_lba, 67583);
                assert_eq!(*last_usable_lba, 67550);
                assert_eq!(*needed_bytes, (67584 + 33) * 512);
            }
            other => return Err(format!("wrong error: {other}").into()),
        }
        assert!(e.to_string().contains("partition 2"), "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert_eq!(hash_file(&tgt)?, h, "refused target was written");
    }
    Ok(())
}

#[test]
fn a_target_in_use_is_refused() -> TestResult {
    if skip("a_target_in_use_is_refused") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    sgdisk_disk(&src, 8 * MIB, &["-n", "1:2048:0"])?;
    let tgt = dir.path().join("tgt.raw");
    restore_copy(&src, &tgt, 16 * MIB)?;
    let h = hash_file(&tgt)?;
    let held = Loop::whole(&tgt, &[])?;
    let e = fit_table(&tgt, &FitOptions::new())
        .err()
        .ok_or("not refused")?;
    assert!(matches!(e, RetargetError::InUse { .. }), "{e}");
    drop(held);
    assert_eq!(hash_file(&tgt)?, h);
    let missing = dir.path().join("nope");
    assert!(matches!(
        fit_table(&missing, &FitOptions::new()),
        Err(RetargetError::Missing { .. })
    ));
    assert!(!missing.exists(), "a missing target was created");
    Ok(())
}

#[test]
fn damaged_ext4_is_not_grown_and_not_repaired() -> TestResult {
    if skip("damaged_ext4_is_not_grown_and_not_repaired") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (src, _) = ext4_gpt_source(dir.path())?;
    // Clear the inode of a file: its directory entry now dangles, which
    // e2fsck -p would "repair" by deleting the entry.
    let lo = part_loop(&src, 2)?;
    tool("debugfs", &["-w", "-R", "clri small", p(&lo.dev)])?;
    drop(lo);
    let tgt = dir.path().join("tgt.raw");
    let size = 96 * MIB;
    restore_copy(&src, &tgt, size)?;
    let p2 = sfpart(&src, 2)?;
    let before = hash_range(&tgt, p2.start * 512, p2.size * 512)?;
    let r = fit_table(&tgt, &FitOptions::new().grow(true))?;
    for line in r.lines() {
        eprintln!("  {line}");
    }
    assert!(r.has_refusals());
    assert!(
        matches!(&r.actions[0], FitAction::GrowSkipped { reason }
            if reason.contains("partition 2 not grown") && reason.contains("e2fsck -f -n")),
        "{:?}",
        r.actions
    );
    // The table still fits the disk; partition and filesystem untouched.
    assert!(matches!(r.actions[1], FitAction::MovedBackupGpt { .. }));
    assert!(!r
        .actions
        .iter()
        .any(|a| matches!(a, FitAction::GrewPartition { .. })));
    assert_sgdisk_clean(&tgt)?;
    assert_eq!(sfpart(&tgt, 2)?, p2);
    assert_eq!(hash_range(&tgt, p2.start * 512, p2.size * 512)?, before);
    Ok(())
}

#[test]
fn a_hybrid_mbr_is_left_as_is() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    sgdisk_disk(&src, 8 * MIB, &["-n", "1:2048:+1M", "-n", "2:0:0"])?;
    // A hybrid MBR: partition 1 also in the MBR, beside the 0xEE entry.
    tool("sgdisk", &["-h", "1", p(&src)])?;
    let tgt = dir.path().join("tgt.raw");
    restore_copy(&src, &tgt, 16 * MIB)?;
    let sector0 = std::fs::read(&src)?[..512].to_vec();
    let r = fit_table(&tgt, &FitOptions::new())?;
    assert!(
        r.actions.iter().any(|a| matches!(a,
            FitAction::ProtectiveMbrLeft { reason } if reason.contains("hybrid"))),
        "{:?}",
        r.actions
    );
    assert!(
        std::fs::read(&tgt)?[..512] == sector0[..],
        "the hybrid MBR changed"
    );
    assert_sgdisk_clean(&tgt)?;
    Ok(())
}
