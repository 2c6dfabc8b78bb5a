//! ext2/3/4 on a GPT partition, made by mke2fs on a loop device and filled
//! through a kernel mount; checked against dumpe2fs, debugfs blocks,
//! partclone.ext4 -D and df.

use imgcast_fsmap::{AnalyzeOptions, FsKind, MapMethod};

use crate::{
    check_files, covered, df, partclone_used, sh, skip, superset_of, Disk, Files, Mount, TestResult,
};

/// `Block count`, `Free blocks` and `Block size` from `dumpe2fs -h`.
fn dumpe2fs_counts(dev: &str) -> crate::R<(u64, u64, u64)> {
    let h = sh("dumpe2fs", &["-h", dev])?;
    let field = |name: &str| -> crate::R<u64> {
        let line = h
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("dumpe2fs: no {name}"))?;
        Ok(line[name.len()..].trim().parse()?)
    };
    Ok((
        field("Block count:")?,
        field("Free blocks:")?,
        field("Block size:")?,
    ))
}

fn ext_case(name: &str, mkfs: &[&str], mib: u64, kind: FsKind, want_uninit: bool) -> TestResult {
    if skip(name) {
        return Ok(());
    }
    let disk = Disk::gpt(mib + 3, &[(&format!("{mib}M"), "8300", name)])?;
    let part = disk.part(1)?.clone();
    let files = Files::usual();
    let (df_used, df_size) = {
        let lo = disk.attach(1, false)?;
        let mut args = mkfs.to_vec();
        args.extend(["-q", "-F", "-L", "lbl", &lo.dev]);
        sh("mke2fs", &args)?;
        let m = Mount::new(&lo.dev, "ext4", "")?;
        files.write_and_delete_in(m.path())?;
        let d = df(m.path())?;
        m.unmount()?;
        d
    };

    let layout = disk.analyze(&AnalyzeOptions::default())?;
    let p = layout.partition(1).ok_or("no partition 1")?;
    assert_eq!(p.fs.kind, kind, "{name}");
    assert_eq!(p.fs.method, MapMethod::Bitmap, "{name}: {:?}", p.fs.note);
    assert_eq!(p.fs.note, None, "{name}");
    assert_eq!(p.fs.label.as_deref(), Some("lbl"));
    assert_eq!(p.name.as_deref(), Some(name));
    check_files(&layout.used, &disk.path, &part, &files)?;

    let lo = disk.attach(1, true)?;
    // Exactly the blocks the filesystem counts as not free.
    let (blocks, free, bs) = dumpe2fs_counts(&lo.dev)?;
    assert_eq!(p.fs.total_bytes, blocks * bs, "{name}");
    assert_eq!(
        p.fs.used_bytes,
        (blocks - free) * bs,
        "{name}: used bytes vs dumpe2fs (blocks - free) x block size"
    );
    if want_uninit {
        let groups = sh("dumpe2fs", &[&lo.dev])?;
        assert!(
            groups.contains("BLOCK_UNINIT"),
            "{name}: the case should exercise BLOCK_UNINIT groups"
        );
    }
    // Every block of every kept file, as debugfs lists them.
    for (id, _) in &files.kept {
        let out = sh(
            "debugfs",
            &["-R", &format!("blocks /{}", Files::name(*id)), &lo.dev],
        )?;
        let list: Vec<u64> = out
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        assert!(
            !list.is_empty(),
            "{name}: debugfs lists no block of file {id}"
        );
        for b in list {
            assert_eq!(
                covered(&layout.used, part.start + b * bs, bs),
                bs,
                "{name}: block {b} of file {id} not in used"
            );
        }
    }
    // partclone.ext4 reads the same bitmaps through libext2fs.
    let pc = partclone_used("ext4", &lo.dev, part.start)?;
    superset_of(name, &layout.used, &pc, &part, 64 << 10)?;
    // df leaves out the metadata overhead (inode tables, journal, ...):
    // ours = df's used + (filesystem size - df's size).
    let expect = df_used + (blocks * bs - df_size);
    let diff = p.fs.used_bytes.abs_diff(expect);
    assert!(
        diff <= expect / 100 + (64 << 10),
        "{name}: ours {} vs df used {df_used} + overhead {}",
        p.fs.used_bytes,
        blocks * bs - df_size
    );
    eprintln!(
        "{name}: ours {} bytes, dumpe2fs {} bytes, df {df_used} + overhead {}",
        p.fs.used_bytes,
        (blocks - free) * bs,
        blocks * bs - df_size
    );
    Ok(())
}

#[test]
fn ext4_4k_default_features() -> TestResult {
    ext_case(
        "ext4-4k",
        &["-t", "ext4", "-b", "4096"],
        128,
        FsKind::Ext4,
        false,
    )
}

#[test]
fn ext4_1k_without_64bit_and_flex_bg() -> TestResult {
    ext_case(
        "ext4-1k-plain",
        &["-t", "ext4", "-b", "1024", "-O", "^64bit,^flex_bg"],
        96,
        FsKind::Ext4,
        true,
    )
}

#[test]
fn ext4_1k_64bit_flex_bg_uninit_groups() -> TestResult {
    ext_case(
        "ext4-1k-flex",
        &["-t", "ext4", "-b", "1024", "-O", "64bit,flex_bg"],
        300,
        FsKind::Ext4,
        true,
    )
}

#[test]
fn ext4_meta_bg() -> TestResult {
    ext_case(
        "ext4-meta_bg",
        &["-t", "ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"],
        160,
        FsKind::Ext4,
        true,
    )
}

#[test]
fn ext4_sparse_super2() -> TestResult {
    ext_case(
        "ext4-sparse_super2",
        &["-t", "ext4", "-b", "1024", "-O", "sparse_super2"],
        128,
        FsKind::Ext4,
        true,
    )
}

#[test]
fn ext4_gdt_csum_without_metadata_csum() -> TestResult {
    ext_case(
        "ext4-gdt_csum",
        &["-t", "ext4", "-b", "1024", "-O", "^metadata_csum,uninit_bg"],
        128,
        FsKind::Ext4,
        true,
    )
}

#[test]
fn ext3() -> TestResult {
    ext_case("ext3", &["-t", "ext3"], 64, FsKind::Ext3, false)
}

#[test]
fn ext2_1k() -> TestResult {
    ext_case(
        "ext2",
        &["-t", "ext2", "-b", "1024"],
        64,
        FsKind::Ext2,
        false,
    )
}
