//! An MBR disk from sfdisk with three primaries and an extended partition
//! holding three logicals (built without root).

use std::fs;
use std::os::unix::fs::FileExt;

use imgcast_fsmap::{AnalyzeOptions, FsKind, MapMethod, TableKind};

use crate::layout::{debugfs_files, ntfscp_files};
use crate::{check_files, covered, pattern, Disk, Files, TestResult, R};

const SCRIPT: &str = "label: dos\nlabel-id: 0x12345678\n\
    start=2048, size=32MiB, type=83\nsize=24MiB, type=c\nsize=24MiB, type=7\n\
    type=5\nsize=24MiB, type=83\nsize=8MiB, type=82\nsize=24MiB, type=83\n";

pub(crate) fn mbr_disk() -> R<(Disk, Files)> {
    let disk = Disk::mbr(200, SCRIPT)?;
    let files = Files::usual();
    let scratch = disk.dir.path().to_path_buf();
    disk.format(1, "mkfs.ext4", &["-q", "-F", "-L", "mbrroot"], |f| {
        debugfs_files(f, &files, &scratch)
    })?;
    disk.format(2, "mkfs.vfat", &["-F", "16", "-n", "DATA"], |_| Ok(()))?;
    let nf = Files {
        kept: vec![(31, 128 << 10)],
        deleted: vec![],
    };
    disk.format(3, "mkntfs", &["-Q", "-F", "-q"], |f| {
        ntfscp_files(f, &nf, &scratch)
    })?;
    disk.format(
        5,
        "mkfs.ext2",
        &["-q", "-F", "-b", "1024", "-L", "logical"],
        |_| Ok(()),
    )?;
    disk.format(6, "mkswap", &[], |_| Ok(()))?;
    let p7 = disk.part(7)?;
    fs::OpenOptions::new()
        .write(true)
        .open(&disk.path)?
        .write_all_at(&pattern(77, 1 << 20), p7.start)?;
    Ok((disk, files))
}

#[test]
fn mbr_with_extended_and_logicals() -> TestResult {
    let (disk, files) = mbr_disk()?;
    let l = disk.analyze(&AnalyzeOptions::default())?;
    let TableKind::Mbr {
        disk_signature,
        sector_size,
        extended: Some(ext),
        ebr_offsets,
    } = &l.table
    else {
        return Err(format!("not MBR with an extended partition: {:?}", l.table).into());
    };
    assert_eq!(disk_signature, "0x12345678");
    assert_eq!(*sector_size, 512);
    let x = disk.part(4)?;
    assert_eq!((ext.number, ext.start, ext.size), (4, x.start, x.size));
    assert_eq!(ext.type_id, "0x05");

    // Primaries and logicals as sfdisk numbers them; the container is not
    // a partition of its own.
    let ours: Vec<(u32, u64, u64)> = l
        .partitions
        .iter()
        .map(|p| (p.number, p.start, p.size))
        .collect();
    let theirs: Vec<(u32, u64, u64)> = disk
        .parts
        .iter()
        .filter(|p| p.number != 4)
        .map(|p| (p.number, p.start, p.size))
        .collect();
    assert_eq!(ours, theirs);
    let kinds: Vec<(&str, FsKind, MapMethod)> = l
        .partitions
        .iter()
        .map(|p| (p.type_id.as_str(), p.fs.kind.clone(), p.fs.method))
        .collect();
    assert_eq!(
        kinds,
        [
            ("0x83", FsKind::Ext4, MapMethod::Bitmap),
            ("0x0c", FsKind::Fat16, MapMethod::Bitmap),
            ("0x07", FsKind::Ntfs, MapMethod::Bitmap),
            ("0x83", FsKind::Ext2, MapMethod::Bitmap),
            ("0x82", FsKind::Swap, MapMethod::HeaderOnly),
            ("0x83", FsKind::Unknown, MapMethod::Whole),
        ]
    );
    assert_eq!(l.partitions[1].type_name, "W95 FAT32 (LBA)");

    // One EBR per logical, each naming its logical where sfdisk put it.
    assert_eq!(ebr_offsets.len(), 3);
    let f = fs::File::open(&disk.path)?;
    for (ebr, logical) in ebr_offsets.iter().zip([5, 6, 7]) {
        let mut s = [0u8; 512];
        f.read_exact_at(&mut s, *ebr)?;
        assert_eq!(s[510..], [0x55, 0xAA], "EBR at {ebr}");
        let rel = u64::from(u32::from_le_bytes([s[454], s[455], s[456], s[457]]));
        assert_eq!(ebr + rel * 512, disk.part(logical)?.start, "EBR at {ebr}");
        // The EBR sector is used; the alignment gap after it is not.
        assert_eq!(covered(&l.used, *ebr, 512), 512);
        assert_eq!(covered(&l.used, ebr + 512, rel * 512 - 512), 0);
    }
    // Sector 0 and the whole gap to the first partition (GRUB's core.img).
    let p1 = disk.part(1)?;
    assert_eq!(covered(&l.used, 0, p1.start), p1.start);
    assert_eq!(l.gpt_backup, None);
    check_files(&l.used, &disk.path, p1, &files)?;
    let parts_total: u64 = l.partitions.iter().map(|p| p.fs.used_bytes).sum();
    assert_eq!(l.used.total(), p1.start + 3 * 512 + parts_total);

    let text = l.table_lines().join("\n");
    assert!(text.contains("MBR (disk signature 0x12345678"), "{text}");
    assert!(text.contains("Extended (0x05)"), "{text}");
    Ok(())
}
