//! Filesystems that must not be imaged as they are: marked dirty, or
//! mounted read-write. Each is refused with a message naming the
//! partition, the filesystem and why; `force` passes; a read-only mount
//! passes.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use imgcast_fsmap::{analyze, AnalyzeOptions, FsmapError, MapMethod};

use crate::{sh, skip, Disk, Loop, Mount, TestResult, R};

/// Analyzes `path` and returns the refusal message, failing if it passes.
fn refused(path: &Path) -> R<String> {
    match analyze(path, &AnalyzeOptions::default()) {
        Err(e @ FsmapError::Refused(_)) => Ok(e.to_string()),
        Err(e) => Err(format!("wrong error: {e}").into()),
        Ok(l) => Err(format!("not refused: {:?}", l.notes).into()),
    }
}

/// With force: passes, still mapped, with a note naming the reason.
fn forced(path: &Path, reason: &str) -> TestResult {
    let l = analyze(path, &AnalyzeOptions::default().force(true))?;
    let p = l.partition(1).ok_or("no partition 1")?;
    assert_eq!(p.fs.method, MapMethod::Bitmap);
    assert!(
        l.notes
            .iter()
            .any(|n| n.contains(reason) && n.contains("imaged anyway (force)")),
        "{:?}",
        l.notes
    );
    Ok(())
}

fn ext4_disk() -> R<Disk> {
    let disk = Disk::gpt(40, &[("32M", "8300", "")])?;
    disk.format(1, "mkfs.ext4", &["-q", "-F"], |_| Ok(()))?;
    Ok(disk)
}

/// Runs a debugfs write command on partition 1 of `disk` (scratch copy).
fn debugfs_on_part(disk: &Disk, cmd: &str) -> TestResult {
    let p = disk.part(1)?;
    let f = disk.dir.path().join("p.img");
    sh(
        "dd",
        &[
            &format!("if={}", disk.path.display()),
            &format!("of={}", f.display()),
            "bs=1M",
            &format!("skip={}", p.start),
            &format!("count={}", p.size),
            "iflag=skip_bytes,count_bytes",
            "status=none",
        ],
    )?;
    sh("debugfs", &["-w", "-R", cmd, &f.to_string_lossy()])?;
    crate::splice(&f, &disk.path, p.start)?;
    fs::remove_file(f)?;
    Ok(())
}

#[test]
fn dirty_ext4_refused_unless_forced() -> TestResult {
    for (cmd, reason) in [
        ("ssv state 0", "not cleanly unmounted"),
        ("ssv state 3", "having errors"),
        ("feature needs_recovery", "needs recovery"),
    ] {
        let disk = ext4_disk()?;
        assert!(analyze(&disk.path, &AnalyzeOptions::default()).is_ok());
        debugfs_on_part(&disk, cmd)?;
        let m = refused(&disk.path)?;
        assert!(m.contains("partition 1 (ext4): marked"), "{cmd}: {m}");
        assert!(
            m.contains(reason) || m.contains(&reason.replace(' ', "_")),
            "{cmd}: {m}"
        );
        assert!(m.contains("force"), "{m}");
        forced(&disk.path, "marked")?;
    }
    Ok(())
}

#[test]
fn dirty_fat_refused_unless_forced() -> TestResult {
    // FAT16: Windows' clean-shutdown bit of FAT[1] cleared in both FATs.
    let disk = Disk::gpt(40, &[("32M", "0700", "")])?;
    disk.format(1, "mkfs.vfat", &["-F", "16"], |_| Ok(()))?;
    let p = disk.part(1)?.clone();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.path)?;
    let mut bs = [0u8; 512];
    f.read_exact_at(&mut bs, p.start)?;
    let bps = u64::from(u16::from_le_bytes([bs[11], bs[12]]));
    let rsvd = u64::from(u16::from_le_bytes([bs[14], bs[15]]));
    let fatsz = u64::from(u16::from_le_bytes([bs[22], bs[23]]));
    for copy in 0..u64::from(bs[16]) {
        let at = p.start + (rsvd + copy * fatsz) * bps + 2;
        let mut e = [0u8; 2];
        f.read_exact_at(&mut e, at)?;
        assert_eq!(e, [0xFF, 0xFF], "mkfs.vfat leaves FAT[1] clean");
        f.write_all_at(&[0xFF, 0x7F], at)?;
    }
    let m = refused(&disk.path)?;
    assert!(m.contains("partition 1 (fat16): marked dirty"), "{m}");
    assert!(m.contains("FAT[1]"), "{m}");
    forced(&disk.path, "FAT[1]")?;

    // FAT32: the boot-sector flag Linux sets while mounted read-write.
    let disk = Disk::gpt(80, &[("72M", "0700", "")])?;
    disk.format(1, "mkfs.vfat", &["-F", "32"], |part| {
        let f = fs::OpenOptions::new().read(true).write(true).open(part)?;
        f.write_all_at(&[0x01], 0x41)?;
        // dosfstools agrees that this is the dirty flag.
        let out = std::process::Command::new("fsck.vfat")
            .args(["-n"])
            .arg(part)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Dirty bit is set"), "{text}");
        Ok(())
    })?;
    let m = refused(&disk.path)?;
    assert!(m.contains("partition 1 (fat32): marked dirty"), "{m}");
    assert!(m.contains("boot sector"), "{m}");
    forced(&disk.path, "boot sector")?;
    Ok(())
}

/// Sets the dirty flag in the `$VOLUME_INFORMATION` of MFT record 3 of the
/// NTFS at the start of `img` (one byte, outside the record's fixups), in
/// `$MFT` and in its mirror `$MFTMirr`.
fn set_ntfs_dirty(img: &Path) -> TestResult {
    let f = fs::OpenOptions::new().read(true).write(true).open(img)?;
    let mut bs = [0u8; 512];
    f.read_exact_at(&mut bs, 0)?;
    let cs = u64::from(u16::from_le_bytes([bs[11], bs[12]])) * u64::from(bs[13]);
    let mft = u64::from_le_bytes(bs[0x30..0x38].try_into()?) * cs;
    let mirror = u64::from_le_bytes(bs[0x38..0x40].try_into()?) * cs;
    let cpr = bs[0x40] as i8;
    let rs = if cpr > 0 { cpr as u64 * cs } else { 1 << -cpr };
    let at = mft + 3 * rs;
    let mut rec = vec![0u8; rs as usize];
    f.read_exact_at(&mut rec, at)?;
    assert_eq!(&rec[..4], b"FILE");
    let mut a = usize::from(u16::from_le_bytes([rec[0x14], rec[0x15]]));
    while a + 8 <= rec.len() {
        let ty = u32::from_le_bytes(rec[a..a + 4].try_into()?);
        let len = u32::from_le_bytes(rec[a + 4..a + 8].try_into()?) as usize;
        if ty == 0xFFFF_FFFF || len == 0 {
            break;
        }
        if ty == 0x70 {
            assert_eq!(rec[a + 8], 0, "$VOLUME_INFORMATION is resident");
            let vo = usize::from(u16::from_le_bytes([rec[a + 0x14], rec[a + 0x15]]));
            let flags = a + vo + 10;
            assert!(flags % 512 < 510, "flags under a fixup");
            for base in [mft, mirror] {
                f.write_all_at(&[rec[flags] | 1], base + 3 * rs + flags as u64)?;
            }
            return Ok(());
        }
        a += len;
    }
    Err("no $VOLUME_INFORMATION in MFT record 3".into())
}

#[test]
fn dirty_ntfs_refused_unless_forced() -> TestResult {
    let disk = Disk::gpt(40, &[("32M", "0700", "")])?;
    disk.format(1, "mkntfs", &["-Q", "-F", "-q"], |part| {
        set_ntfs_dirty(part)?;
        // ntfs-3g agrees that the volume is now marked dirty.
        let out = sh("ntfsinfo", &["-m", "-f", &part.to_string_lossy()])?;
        assert!(out.contains("Volume Flags: 0x0001"), "{out}");
        Ok(())
    })?;
    let m = refused(&disk.path)?;
    assert!(
        m.contains("partition 1 (ntfs): marked dirty ($Volume dirty flag)"),
        "{m}"
    );
    forced(&disk.path, "$Volume")?;
    Ok(())
}

#[test]
fn mounted_read_write_refused_read_only_fine() -> TestResult {
    if skip("mounted_read_write_refused_read_only_fine") {
        return Ok(());
    }
    let disk = ext4_disk()?;
    let p = disk.part(1)?.clone();
    let opts = |ro: &str| format!("{ro}loop,offset={},sizelimit={}", p.start, p.size);
    {
        let m = Mount::new(&disk.path.to_string_lossy(), "ext4", &opts(""))?;
        let dir = m.path().display().to_string();
        let msg = refused(&disk.path)?;
        assert!(
            msg.contains(&format!(
                "partition 1 (ext4): mounted read-write on {dir} (/dev/loop"
            )),
            "{msg}"
        );
        assert!(msg.contains("force"), "{msg}");
        // The same disk through a loop device of its own sees the mount too.
        let size = fs::metadata(&disk.path)?.len();
        let lo = Loop::attach(&disk.path, 0, size, true)?;
        let msg = refused(Path::new(&lo.dev))?;
        assert!(
            msg.contains(&format!("mounted read-write on {dir}")),
            "{msg}"
        );
        drop(lo);
        forced(&disk.path, "mounted read-write")?;
        m.unmount()?;
    }
    assert!(analyze(&disk.path, &AnalyzeOptions::default()).is_ok());
    let m = Mount::new(&disk.path.to_string_lossy(), "ext4", &opts("ro,"))?;
    let l = analyze(&disk.path, &AnalyzeOptions::default())?;
    let dir = m.path().display().to_string();
    assert!(
        l.notes.iter().any(
            |n| n.starts_with("partition 1 (ext4): mounted read-only on ") && n.contains(&dir)
        ),
        "{:?}",
        l.notes
    );
    m.unmount()?;
    Ok(())
}
