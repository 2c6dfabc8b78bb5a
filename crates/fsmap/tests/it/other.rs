//! Filesystems mapped by partclone (xfs, btrfs) and, without it, imaged
//! whole; swap header only.

use imgcast_fsmap::{AnalyzeOptions, FsKind, MapMethod};

use crate::{check_files, have, sh, skip, Disk, Files, Mount, TestResult};

fn partclone_case(
    name: &str,
    mkfs: &[&str],
    fstype: &str,
    mount_opts: &str,
    mib: u64,
) -> TestResult {
    if skip(name) {
        return Ok(());
    }
    let disk = Disk::gpt(mib + 3, &[(&format!("{mib}M"), "8300", "")])?;
    let part = disk.part(1)?.clone();
    let files = Files::usual();
    {
        let lo = disk.attach(1, false)?;
        let mut args = mkfs.to_vec();
        args.push(&lo.dev);
        sh(args[0], &args[1..])?;
        let m = Mount::new(&lo.dev, fstype, mount_opts)?;
        files.write_and_delete_in(m.path())?;
        m.unmount()?;
    }
    let disk_arg = disk.path.to_string_lossy().into_owned();

    // Without partclone: the whole partition, and a note saying why.
    let layout = disk.analyze(&AnalyzeOptions::default().use_partclone(false))?;
    let p = layout.partition(1).ok_or("no partition 1")?;
    assert_eq!(p.fs.kind, FsKind::Other(fstype.to_string()));
    assert_eq!(p.fs.label.as_deref(), Some("pclbl"));
    assert_eq!(p.fs.method, MapMethod::Whole);
    assert_eq!(p.fs.used_bytes, part.size);
    let note = format!("partition 1 ({fstype}): imaged whole: partclone.{fstype} not used");
    assert!(
        layout.notes.iter().any(|n| n.starts_with(&note)),
        "{:?}",
        layout.notes
    );

    if !have(&format!("partclone.{fstype}")) {
        eprintln!("SKIPPED {name} (partclone part): partclone.{fstype} not installed");
        return Ok(());
    }
    let layout = disk.analyze(&AnalyzeOptions::default())?;
    let p = layout.partition(1).ok_or("no partition 1")?;
    assert_eq!(p.fs.method, MapMethod::Partclone, "{:?}", p.fs.note);
    assert!(
        p.fs.used_bytes < part.size / 2,
        "{name}: {} used",
        p.fs.used_bytes
    );
    check_files(&layout.used, &disk.path, &part, &files)?;
    // The loop device made for partclone is gone.
    let left = sh("losetup", &["-j", &disk_arg])?;
    assert!(left.trim().is_empty(), "loop device left behind: {left}");
    eprintln!(
        "{name}: partclone map {} of {} bytes",
        p.fs.used_bytes, part.size
    );
    Ok(())
}

#[test]
fn xfs_by_partclone_or_whole() -> TestResult {
    partclone_case(
        "xfs",
        &["mkfs.xfs", "-q", "-f", "-L", "pclbl"],
        "xfs",
        "",
        300,
    )
}

#[test]
fn btrfs_by_partclone_or_whole() -> TestResult {
    // nodiscard: btrfs discards freed extents by default on loop devices,
    // which would erase the deleted files the test looks for.
    partclone_case(
        "btrfs",
        &["mkfs.btrfs", "-q", "-f", "-L", "pclbl"],
        "btrfs",
        "nodiscard",
        160,
    )
}
