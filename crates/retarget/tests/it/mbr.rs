//! MBR disks made with sfdisk: a primary or a logical last partition grown,
//! an extended partition fitted to a smaller target.

use std::path::Path;

use imgcast_retarget::{fit_table, FitAction, FitOptions, RetargetError, TableKind};

use crate::{
    assert_e2fsck_clean, ext_blocks, ext_read_file, ext_write_files, hash_file, noise, p,
    part_loop, restore_copy, sfdisk_parts, sfpart, skip, tool, tool_stdin, Res, TestResult, MIB,
};

fn sfdisk_disk(path: &Path, size: u64, script: &str) -> TestResult {
    let f = std::fs::File::create(path)?;
    f.set_len(size)?;
    drop(f);
    tool_stdin("sfdisk", &["-q", p(path)], script)?;
    Ok(())
}

fn assert_sfdisk_clean(disk: &Path) -> TestResult {
    let out = tool("sfdisk", &["--verify", p(disk)])?;
    assert!(out.contains("No errors detected"), "{out}");
    Ok(())
}

/// Makes ext4 on partition `number` of `disk` with a few files; returns them.
fn ext4_on(dir: &Path, disk: &Path, number: u32) -> Res<Vec<(&'static str, Vec<u8>)>> {
    let lo = part_loop(disk, number)?;
    tool("mkfs.ext4", &["-q", "-F", p(&lo.dev)])?;
    let files = vec![("a", noise(100_000, 11)), ("d/b", b"logical\n".to_vec())];
    ext_write_files(dir, &lo.dev, &files)?;
    Ok(files)
}

fn check_ext4_fills(disk: &Path, number: u32, files: &[(&str, Vec<u8>)]) -> TestResult {
    let sp = sfpart(disk, number)?;
    let lo = part_loop(disk, number)?;
    assert_e2fsck_clean(&lo.dev)?;
    let (blocks, bs) = ext_blocks(&lo.dev)?;
    assert_eq!(blocks * bs, sp.size * 512 / bs * bs);
    for (name, bytes) in files {
        assert!(&ext_read_file(&lo.dev, name)? == bytes, "{name} differs");
    }
    Ok(())
}

/// libblkid's reading of the table (`partx`; it follows the EBR chain with
/// its own parser, not sfdisk's libfdisk): partition `number`'s size in
/// sectors. (This kernel does not scan loop devices' partitions itself.)
fn blkid_part_size(disk: &Path, number: u32) -> Res<u64> {
    let out = tool(
        "partx",
        &["--raw", "--noheadings", "-o", "NR,SECTORS", p(disk)],
    )?;
    for line in out.lines() {
        let mut w = line.split_whitespace();
        if w.next() == Some(number.to_string().as_str()) {
            return Ok(w.next().ok_or("no size")?.parse()?);
        }
    }
    Err(format!("partx shows no partition {number}").into())
}

#[test]
fn mbr_primary_last_partition_grows() -> TestResult {
    if skip("mbr_primary_last_partition_grows") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    sfdisk_disk(
        &src,
        32 * MIB,
        "label: dos\nstart=2048, size=8M, type=c\nstart=18432, type=83\n",
    )?;
    let files = ext4_on(dir.path(), &src, 2)?;
    let tgt = dir.path().join("tgt.raw");
    let size = 64 * MIB;
    restore_copy(&src, &tgt, size)?;

    // Without grow an MBR has nothing to move.
    let h = hash_file(&tgt)?;
    let r = fit_table(&tgt, &FitOptions::new())?;
    assert_eq!(r.table, TableKind::Mbr);
    assert!(r.did_nothing(), "{:?}", r.actions);
    assert_eq!(hash_file(&tgt)?, h);

    let r = fit_table(&tgt, &FitOptions::new().grow(true))?;
    for line in r.lines() {
        eprintln!("  {line}");
    }
    assert!(!r.has_refusals());
    let end = size / 512 - 1;
    assert!(r.actions.contains(&FitAction::GrewPartition {
        number: 2,
        start_lba: 18432,
        from_end_lba: 65535,
        to_end_lba: end,
        from_bytes: (65536 - 18432) * 512,
        to_bytes: (end + 1 - 18432) * 512,
    }));
    assert_sfdisk_clean(&tgt)?;
    assert_eq!(sfpart(&tgt, 2)?.size, end + 1 - 18432);
    assert_eq!(sfpart(&tgt, 1)?, sfpart(&src, 1)?);
    assert_eq!(blkid_part_size(&tgt, 2)?, end + 1 - 18432);
    check_ext4_fills(&tgt, 2, &files)?;
    Ok(())
}

#[test]
fn mbr_logical_last_partition_grows_with_its_extended() -> TestResult {
    if skip("mbr_logical_last_partition_grows_with_its_extended") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    sfdisk_disk(
        &src,
        32 * MIB,
        "label: dos\nstart=2048, size=8M, type=83\nstart=18432, type=5\n\
         start=20480, size=4M, type=83\nstart=30720, type=83\n",
    )?;
    let files = ext4_on(dir.path(), &src, 6)?;
    let p5 = sfpart(&src, 5)?;
    let tgt = dir.path().join("tgt.raw");
    let size = 64 * MIB;
    restore_copy(&src, &tgt, size)?;
    let r = fit_table(&tgt, &FitOptions::new().grow(true))?;
    for line in r.lines() {
        eprintln!("  {line}");
    }
    assert!(!r.has_refusals());
    let end = size / 512 - 1;
    assert!(r.actions.contains(&FitAction::GrewExtended {
        number: 2,
        from_bytes: (65536 - 18432) * 512,
        to_bytes: (end + 1 - 18432) * 512,
    }));
    assert!(r.actions.iter().any(|a| matches!(a,
        FitAction::GrewPartition { number: 6, start_lba: 30720, to_end_lba, .. } if *to_end_lba == end)));
    assert_sfdisk_clean(&tgt)?;
    assert_eq!(sfpart(&tgt, 2)?.size, end + 1 - 18432);
    assert_eq!(sfpart(&tgt, 6)?.size, end + 1 - 30720);
    assert_eq!(sfpart(&tgt, 5)?, p5);
    assert_eq!(blkid_part_size(&tgt, 6)?, end + 1 - 30720);
    // The first EBR's link to the second (at LBA 28672) covers it up to the
    // end of partition 6, as sfdisk wrote it before.
    let link = |disk: &Path| -> Res<(u32, u32)> {
        let mut e = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(disk)?,
            &mut e,
            18432 * 512 + 446 + 16,
        )?;
        Ok((
            u32::from_le_bytes(e[8..12].try_into()?),
            u32::from_le_bytes(e[12..16].try_into()?),
        ))
    };
    assert_eq!(link(&src)?, (28672 - 18432, 65536 - 28672));
    assert_eq!(link(&tgt)?, (28672 - 18432, (end + 1 - 28672) as u32));
    check_ext4_fills(&tgt, 6, &files)?;
    Ok(())
}

#[test]
fn mbr_smaller_target() -> TestResult {
    if skip("mbr_smaller_target") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    // The extended partition runs to the end of 64 MiB; its logical
    // partitions end at 26 MiB.
    sfdisk_disk(
        &src,
        64 * MIB,
        "label: dos\nstart=2048, size=8M, type=83\nstart=18432, type=5\n\
         start=20480, size=4M, type=83\nstart=30720, size=12M, type=83\n",
    )?;
    let parts = sfdisk_parts(&src)?;

    // 40 MiB: every logical fits; the extended container now ends at the end.
    let tgt = dir.path().join("tgt.raw");
    restore_copy(&src, &tgt, 40 * MIB)?;
    let r = fit_table(&tgt, &FitOptions::new())?;
    assert_eq!(
        r.actions,
        vec![FitAction::ShrankExtended {
            number: 2,
            from_bytes: (131_072 - 18432) * 512,
            to_bytes: (81920 - 18432) * 512,
        }]
    );
    assert_sfdisk_clean(&tgt)?;
    let after = sfdisk_parts(&tgt)?;
    assert_eq!(after.len(), parts.len());
    for (a, b) in after.iter().zip(&parts) {
        if a.number != 2 {
            assert_eq!(a, b);
        }
    }
    assert_eq!(blkid_part_size(&tgt, 6)?, 12 * MIB / 512);

    // 20 MiB: logical partition 6 (ends at LBA 55295) does not fit.
    let small = dir.path().join("small.raw");
    restore_copy(&src, &small, 20 * MIB)?;
    let h = hash_file(&small)?;
    let e = fit_table(&small, &FitOptions::new().grow(true))
        .err()
        .ok_or("not refused")?;
    eprintln!("refused as expected: {e}");
    assert!(
        matches!(
            e,
            RetargetError::PartitionDoesNotFit {
                number: 6,
                end_lba: 55295,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(hash_file(&small)?, h);
    Ok(())
}
