//! An NTFS last partition grown with ntfsresize.

use std::process::Command;

use imgcast_retarget::{fit_table, FitAction, FitOptions};

use crate::{
    assert_backup_at_end, assert_sgdisk_clean, noise, p, part_loop, restore_copy, sfpart,
    sgdisk_disk, skip, tool, TestResult, MIB,
};

fn ntfs_volume_size(dev: &std::path::Path) -> Result<u64, Box<dyn std::error::Error>> {
    let out = tool("ntfsresize", &["--info", "--force", p(dev)])?;
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix("Current volume size:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("no volume size")?
        .parse()?)
}

#[test]
fn ntfs_last_partition_grows() -> TestResult {
    if skip("ntfs_last_partition_grows") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    sgdisk_disk(&src, 40 * MIB, &["-n", "1:2048:0", "-t", "1:0700"])?;
    let lo = part_loop(&src, 1)?;
    tool("mkntfs", &["-Q", "-F", "-L", "win", p(&lo.dev)])?;
    let payload = noise(200_000, 5);
    let host = dir.path().join("payload");
    std::fs::write(&host, &payload)?;
    tool("ntfscp", &[p(&lo.dev), p(&host), "payload.bin"])?;
    let before = ntfs_volume_size(&lo.dev)?;
    drop(lo);

    let tgt = dir.path().join("tgt.raw");
    let size = 72 * MIB;
    restore_copy(&src, &tgt, size)?;
    let r = fit_table(&tgt, &FitOptions::new().grow(true))?;
    for line in r.lines() {
        eprintln!("  {line}");
    }
    assert!(!r.has_refusals(), "{:?}", r.actions);
    assert!(r.actions.iter().any(|a| matches!(a,
        FitAction::CheckedFilesystem { number: 1, fs, .. } if fs == "ntfs")));
    let (from, to) = r
        .actions
        .iter()
        .find_map(|a| match a {
            FitAction::ResizedFilesystem {
                number: 1,
                fs,
                from_bytes,
                to_bytes,
                ..
            } if fs == "ntfs" => Some((*from_bytes, *to_bytes)),
            _ => None,
        })
        .ok_or("ntfs not resized")?;
    assert_eq!(from, before);
    assert_sgdisk_clean(&tgt)?;
    assert_backup_at_end(&tgt, size)?;

    let sp = sfpart(&tgt, 1)?;
    let lo = part_loop(&tgt, 1)?;
    let after = ntfs_volume_size(&lo.dev)?;
    assert_eq!(after, to);
    assert!(after > before + 25 * MIB, "{before} -> {after}");
    // NTFS keeps its backup boot sector in the partition's last sector.
    assert!(
        after <= sp.size * 512 && after + 4096 >= sp.size * 512 - 512,
        "{after} vs {}",
        sp.size * 512
    );
    tool("ntfsfix", &["-n", p(&lo.dev)])?;
    // ntfsresize marks the volume for chkdsk at Windows' next boot: -f reads it anyway.
    let cat = Command::new("ntfscat")
        .arg("-f")
        .arg(&lo.dev)
        .arg("payload.bin")
        .output()?;
    assert!(cat.stdout == payload, "file differs after ntfsresize");
    drop(lo);

    // Restored once more onto a larger disk before Windows ran chkdsk: the
    // volume is still marked for checking, so it is not resized again.
    let bigger = dir.path().join("bigger.raw");
    restore_copy(&tgt, &bigger, 96 * MIB)?;
    let r = fit_table(&bigger, &FitOptions::new().grow(true))?;
    for line in r.lines() {
        eprintln!("  {line}");
    }
    assert!(
        matches!(&r.actions[0], FitAction::GrowSkipped { reason }
            if reason.contains("ntfsresize --info") && reason.contains("scheduled for check")),
        "{:?}",
        r.actions
    );
    assert!(r.has_refusals());
    assert_sgdisk_clean(&bigger)?;
    assert_eq!(sfpart(&bigger, 1)?, sp);
    Ok(())
}
