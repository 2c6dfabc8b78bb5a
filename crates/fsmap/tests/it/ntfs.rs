//! NTFS on a GPT partition: mkntfs on a loop device, files written and
//! deleted through an ntfs-3g mount; checked against ntfsinfo's free
//! cluster count and partclone.ntfs.

use imgcast_fsmap::{AnalyzeOptions, FsKind, MapMethod};

use crate::{check_files, partclone_used, sh, skip, superset_of, Disk, Files, Mount, TestResult};

/// `Cluster Size`, `Volume Size in Clusters`, `Free Clusters` from ntfsinfo.
pub(crate) fn ntfsinfo_counts(dev: &str) -> crate::R<(u64, u64, u64)> {
    let out = sh("ntfsinfo", &["-m", dev])?;
    let field = |name: &str| -> crate::R<u64> {
        let l = out
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(name))
            .ok_or_else(|| format!("ntfsinfo: no {name}"))?;
        Ok(l.split_whitespace().next().ok_or("empty")?.parse()?)
    };
    Ok((
        field("Cluster Size:")?,
        field("Volume Size in Clusters:")?,
        field("Free Clusters:")?,
    ))
}

#[test]
fn ntfs_bitmap_map() -> TestResult {
    if skip("ntfs_bitmap_map") {
        return Ok(());
    }
    let disk = Disk::gpt(100, &[("96M", "0700", "win")])?;
    let part = disk.part(1)?.clone();
    let files = Files::usual();
    {
        let lo = disk.attach(1, false)?;
        sh("mkntfs", &["-Q", "-F", "-q", "-L", "WinData", &lo.dev])?;
        let m = Mount::new(&lo.dev, "ntfs-3g", "")?;
        files.write_and_delete_in(m.path())?;
        m.unmount()?;
    }
    let layout = disk.analyze(&AnalyzeOptions::default())?;
    let p = layout.partition(1).ok_or("no partition 1")?;
    assert_eq!(p.fs.kind, FsKind::Ntfs);
    assert_eq!(p.fs.method, MapMethod::Bitmap, "{:?}", p.fs.note);
    assert_eq!(p.fs.label.as_deref(), Some("WinData"));
    check_files(&layout.used, &disk.path, &part, &files)?;

    let lo = disk.attach(1, true)?;
    let (cs, clusters, free) = ntfsinfo_counts(&lo.dev)?;
    assert_eq!(u64::from(p.fs.block_size), cs);
    // The clusters ntfsinfo counts as used, plus the tail past the last
    // cluster (the backup boot sector).
    let tail = part.size - clusters * cs;
    assert!(tail >= 512, "no room for the backup boot sector");
    assert_eq!(p.fs.used_bytes, (clusters - free) * cs + tail);
    let backup_boot = part.start + part.size - 512;
    assert!(layout.used.contains(backup_boot));
    let pc = partclone_used("ntfs", &lo.dev, part.start)?;
    superset_of("ntfs", &layout.used, &pc, &part, tail + (64 << 10))?;
    Ok(())
}
