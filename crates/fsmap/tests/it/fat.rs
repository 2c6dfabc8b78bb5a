//! FAT12/16/32 on GPT partitions, made by mkfs.vfat and filled with mtools
//! (no root needed; this kernel has no vfat driver anyway); checked against
//! fsck.vfat's cluster counts, mshowfat's cluster chains and partclone.fat.

use std::cell::RefCell;
use std::fs;

use imgcast_disk::Extents;
use imgcast_fsmap::{AnalyzeOptions, FsKind, MapMethod};

use crate::{
    check_files, covered, have, mtools, partclone_used, pattern, sh, superset_of, Disk, Files,
    TestResult,
};

/// What fsck.vfat -n -v says: data area start, cluster size, used and
/// total clusters.
fn fsck_counts(file: &str) -> crate::R<(u64, u64, u64, u64)> {
    let out = sh("fsck.vfat", &["-n", "-v", file])?;
    let num_before = |suffix: &str| -> crate::R<u64> {
        let l = out
            .lines()
            .find(|l| l.trim_end().ends_with(suffix))
            .ok_or_else(|| format!("fsck.vfat: no line ending {suffix:?}:\n{out}"))?;
        Ok(l.split_whitespace().next().ok_or("empty")?.parse()?)
    };
    let data = out
        .lines()
        .find_map(|l| l.strip_prefix("Data area starts at byte "))
        .and_then(|r| r.split_whitespace().next())
        .ok_or("no data area line")?
        .parse()?;
    let cs = num_before("bytes per cluster")?;
    let last = out.lines().last().ok_or("no summary")?;
    // "<file>: N files, USED/TOTAL clusters"
    let counts = last
        .rsplit(", ")
        .next()
        .and_then(|c| c.strip_suffix(" clusters"))
        .ok_or_else(|| format!("fsck.vfat summary: {last}"))?;
    let (used, total) = counts.split_once('/').ok_or("no used/total")?;
    Ok((data, cs, used.parse()?, total.parse()?))
}

/// Cluster ranges of a file from `mshowfat`: "::/f <2-26><30-31>".
fn mshowfat(img: &str, file: &str) -> crate::R<Vec<(u64, u64)>> {
    let out = mtools("mshowfat", &["-i", img, &format!("::/{file}")])?;
    let mut v = Vec::new();
    for r in out.split('<').skip(1) {
        let r = r.split('>').next().ok_or("no >")?;
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        v.push((a.trim().parse()?, b.trim().parse()?));
    }
    Ok(v)
}

fn fat_case(name: &str, mkfs: &[&str], mib: u64, kind: FsKind) -> TestResult {
    let disk = Disk::gpt(mib + 3, &[(&format!("{mib}M"), "0700", name)])?;
    let part = disk.part(1)?.clone();
    let files = Files::usual();
    let facts = RefCell::new(None);
    let mut args = mkfs.to_vec();
    args.extend(["-n", "FATLBL"]);
    disk.format(1, "mkfs.vfat", &args, |f| {
        let img = f.to_string_lossy().into_owned();
        for (id, len) in files.all() {
            let host = disk.dir.path().join("host.bin");
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
        }
        for (id, _) in &files.deleted {
            mtools("mdel", &["-i", &img, &format!("::/{}", Files::name(*id))])?;
        }
        let chains = files
            .kept
            .iter()
            .map(|(id, _)| mshowfat(&img, &Files::name(*id)))
            .collect::<crate::R<Vec<_>>>()?;
        // partclone 0.3.23 maps FAT12 wrongly (a 3 MiB file shows as 2.2 MiB
        // used at the wrong offset, where fsck.vfat, mshowfat and the
        // sector scan agree with us), so it is compared on FAT16/32 only.
        let pc = if have("partclone.fat") && kind != FsKind::Fat12 {
            Some(partclone_used("fat", &img, part.start)?)
        } else {
            None
        };
        *facts.borrow_mut() = Some((fsck_counts(&img)?, chains, pc));
        Ok(())
    })?;
    let ((data, cs, used_clusters, total_clusters), chains, pc): (_, _, Option<Extents>) =
        facts.into_inner().ok_or("fill did not run")?;

    let layout = disk.analyze(&AnalyzeOptions::default())?;
    let p = layout.partition(1).ok_or("no partition 1")?;
    assert_eq!(p.fs.kind, kind, "{name}");
    assert_eq!(p.fs.method, MapMethod::Bitmap, "{name}: {:?}", p.fs.note);
    assert_eq!(p.fs.label.as_deref(), Some("FATLBL"));
    assert_eq!(u64::from(p.fs.block_size), cs);
    check_files(&layout.used, &disk.path, &part, &files)?;
    // Exactly the metadata plus the clusters fsck.vfat counts as used.
    assert_eq!(
        p.fs.used_bytes,
        data + used_clusters * cs,
        "{name}: ours vs fsck.vfat: data at {data}, {used_clusters}/{total_clusters} clusters of {cs}"
    );
    for chain in chains {
        for (a, b) in chain {
            let start = part.start + data + (a - 2) * cs;
            let len = (b - a + 1) * cs;
            assert_eq!(
                covered(&layout.used, start, len),
                len,
                "{name}: clusters {a}-{b}"
            );
        }
    }
    if let Some(pc) = pc {
        superset_of(name, &layout.used, &pc, &part, 64 << 10)?;
    }
    eprintln!(
        "{name}: ours {} bytes = {data} + {used_clusters} x {cs} (fsck.vfat)",
        p.fs.used_bytes
    );
    Ok(())
}

#[test]
fn fat12() -> TestResult {
    fat_case("fat12", &["-F", "12"], 12, FsKind::Fat12)
}

#[test]
fn fat16() -> TestResult {
    fat_case("fat16", &["-F", "16"], 64, FsKind::Fat16)
}

#[test]
fn fat32() -> TestResult {
    fat_case("fat32", &["-F", "32"], 160, FsKind::Fat32)
}

#[test]
fn fat16_4k_sectors() -> TestResult {
    fat_case(
        "fat16-4k",
        &["-F", "16", "-S", "4096", "-s", "1"],
        64,
        FsKind::Fat16,
    )
}

#[test]
fn fat_bad_clusters_and_differing_copies() -> TestResult {
    use std::os::unix::fs::FileExt;
    let disk = Disk::gpt(40, &[("32M", "0700", "")])?;
    let files = Files {
        kept: vec![(41, 64 << 10)],
        deleted: vec![],
    };
    let scratch = disk.dir.path().to_path_buf();
    let geometry = RefCell::new((0u64, 0u64));
    disk.format(1, "mkfs.vfat", &["-F", "16"], |img| {
        crate::layout::mtools_files(img, &files, &scratch)?;
        let f = fs::OpenOptions::new().read(true).write(true).open(img)?;
        let mut bs = [0u8; 512];
        f.read_exact_at(&mut bs, 0)?;
        let bps = u64::from(u16::from_le_bytes([bs[11], bs[12]]));
        let cs = bps * u64::from(bs[13]);
        let rsvd = u64::from(u16::from_le_bytes([bs[14], bs[15]]));
        let fatsz = u64::from(u16::from_le_bytes([bs[22], bs[23]]));
        let root = u64::from(u16::from_le_bytes([bs[17], bs[18]])) * 32;
        let data = (rsvd + 2 * fatsz) * bps + root.div_ceil(bps) * bps;
        // Clusters 1000 and 1001 are free after one small file.
        for (copy, cluster, value) in [(0, 1000, 0xFFF7u16), (1, 1000, 0xFFF7), (1, 1001, 0xFFFF)] {
            let at = (rsvd + copy * fatsz) * bps + cluster * 2;
            let mut e = [0u8; 2];
            f.read_exact_at(&mut e, at)?;
            assert_eq!(e, [0, 0], "cluster {cluster} was free");
            f.write_all_at(&value.to_le_bytes(), at)?;
        }
        *geometry.borrow_mut() = (data, cs);
        Ok(())
    })?;
    let (data, cs) = geometry.into_inner();
    let p = disk.part(1)?.clone();
    let l = disk.analyze(&AnalyzeOptions::default())?;
    let fs = &l.partition(1).ok_or("no partition 1")?.fs;
    let at = |c: u64| p.start + data + (c - 2) * cs;
    assert_eq!(
        covered(&l.used, at(1000), cs),
        0,
        "a bad cluster is not imaged"
    );
    assert_eq!(
        covered(&l.used, at(1001), cs),
        cs,
        "used in one FAT copy: kept"
    );
    let note = fs.note.clone().unwrap_or_default();
    assert!(note.contains("differ in 1 of their entries"), "{note}");
    assert!(
        note.contains("1 cluster(s) marked bad are not imaged"),
        "{note}"
    );
    check_files(&l.used, &disk.path, &p, &files)?;
    Ok(())
}
