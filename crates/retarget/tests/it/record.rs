//! The image-safe record in the gap of GPT and MBR disks: written, read
//! back, absent from every partition, refused where it cannot go, and
//! total against damaged bytes.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use imgcast_retarget::{
    read_record, write_record, ImageSafeRecord, RecordError, RetargetError, TableKind, RECORD_LEN,
};

use crate::{
    assert_sgdisk_clean, hash_file, noise, p, sfdisk_parts, sgdisk_disk, tool, tool_stdin, Res,
    TestResult, MIB,
};

pub(crate) fn sample(image: &str) -> ImageSafeRecord {
    ImageSafeRecord {
        image: image.into(),
        root_hash: *blake3::hash(image.as_bytes()).as_bytes(),
        session: Some("lab3".into()),
        master: Some("master.lab3.example".into()),
        written_at: 1_735_732_800,
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Fills every partition of `disk` with noise, and the start of the gap
/// with a fake boot loader (as GRUB's core.img sits after sector 0 on MBR
/// disks), so that any stray write shows.
fn fill(disk: &Path, gap_start: u64) -> TestResult {
    let f = fs::OpenOptions::new().write(true).open(disk)?;
    for (i, part) in sfdisk_parts(disk)?.iter().enumerate() {
        // An extended partition is a container: its EBRs must stay.
        if ["5", "f", "85"].contains(&part.ty.as_str()) {
            continue;
        }
        f.write_all_at(
            &noise((part.size * 512) as usize, 100 + i as u64),
            part.start * 512,
        )?;
    }
    f.write_all_at(&noise(30_000, 7), gap_start)?;
    Ok(())
}

/// Asserts `after` equals `before` outside `[off, off + len)`.
fn same_outside(before: &[u8], after: &[u8], off: usize, len: usize) {
    assert_eq!(before.len(), after.len());
    assert!(
        before[..off] == after[..off],
        "bytes before the place changed"
    );
    assert!(
        before[off + len..] == after[off + len..],
        "bytes after the place changed"
    );
}

fn check_round_trip(disk: &Path, table: TableKind, gap_start: u64) -> TestResult {
    let before = fs::read(disk)?;
    let parts = sfdisk_parts(disk)?;
    assert_eq!(read_record(disk)?, None, "a fresh disk has no record");

    let rec = sample("lab3.img");
    let place = write_record(disk, &rec)?;
    eprintln!("  {}", place.describe());
    assert_eq!(place.offset, 2048 * 512 - RECORD_LEN as u64);
    assert_eq!(place.len, RECORD_LEN as u64);
    assert_eq!(place.table, table);
    assert_eq!((place.gap_start, place.gap_end), (gap_start, 2048 * 512));
    let (back, at) = read_record(disk)?.ok_or("no record read back")?;
    assert_eq!(back, rec);
    assert_eq!(at, place);
    for line in back.describe() {
        eprintln!("  {line}");
    }

    let after = fs::read(disk)?;
    same_outside(&before, &after, place.offset as usize, RECORD_LEN);
    for part in &parts {
        let (s, e) = (
            (part.start * 512) as usize,
            ((part.start + part.size) * 512) as usize,
        );
        assert!(
            before[s..e] == after[s..e],
            "partition {} changed",
            part.number
        );
        assert!(
            !after[s..e].windows(8).any(|w| w == b"IMGCSAFE"),
            "record found inside partition {}",
            part.number
        );
    }
    assert_eq!(sfdisk_parts(disk)?, parts, "the table changed");

    // A second restore replaces the record.
    let newer = ImageSafeRecord {
        session: None,
        master: None,
        ..sample("other.img")
    };
    write_record(disk, &newer)?;
    assert_eq!(read_record(disk)?.map(|r| r.0), Some(newer));
    same_outside(&before, &fs::read(disk)?, place.offset as usize, RECORD_LEN);
    Ok(())
}

#[test]
fn record_in_the_gap_of_a_gpt_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("gpt.raw");
    sgdisk_disk(&disk, 16 * MIB, &["-n", "1:2048:+4M", "-n", "2:0:0"])?;
    fill(&disk, 34 * 512)?;
    check_round_trip(&disk, TableKind::Gpt, 34 * 512)?;
    assert_sgdisk_clean(&disk)?;
    Ok(())
}

#[test]
fn record_in_the_gap_of_an_mbr_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("mbr.raw");
    fs::File::create(&disk)?.set_len(16 * MIB)?;
    tool_stdin(
        "sfdisk",
        &["-q", p(&disk)],
        "label: dos\nstart=2048, size=4M, type=83\nstart=10240, type=5\nstart=12288, type=83\n",
    )?;
    fill(&disk, 512)?;
    check_round_trip(&disk, TableKind::Mbr, 512)?;
    let out = tool("sfdisk", &["--verify", p(&disk)])?;
    assert!(out.contains("No errors detected"), "{out}");
    Ok(())
}

#[test]
fn record_refused_over_foreign_bytes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("gpt.raw");
    sgdisk_disk(&disk, 8 * MIB, &["-n", "1:2048:0"])?;
    // A boot loader that fills the gap up to the first partition.
    let f = fs::OpenOptions::new().write(true).open(&disk)?;
    let loader_at = 2048 * 512 - 600;
    f.write_all_at(b"\xEB\x63\x90fake-boot-loader", loader_at)?;
    drop(f);
    let h = hash_file(&disk)?;
    let e = write_record(&disk, &sample("x.img"))
        .err()
        .ok_or("not refused")?;
    eprintln!("refused as expected: {e}");
    assert!(
        matches!(e, RetargetError::PlaceNotFree { first_nonzero, .. } if first_nonzero == loader_at),
        "{e}"
    );
    assert!(e.to_string().contains("nothing was written"));
    assert_eq!(hash_file(&disk)?, h);
    // Someone else's bytes are not a record.
    assert_eq!(read_record(&disk)?, None);
    Ok(())
}

#[test]
fn record_refused_without_table_or_gap() -> TestResult {
    let dir = tempfile::tempdir()?;
    type Make = Box<dyn Fn(&Path) -> TestResult>;
    let cases: Vec<(&str, Make)> = vec![
        ("zeros", Box::new(|_| Ok(()))),
        (
            "whole-disk ext4",
            Box::new(|d| tool("mkfs.ext4", &["-q", "-F", p(d)]).map(drop)),
        ),
        (
            "whole-disk vfat",
            Box::new(|d| tool("mkfs.vfat", &[p(d)]).map(drop)),
        ),
        (
            "GPT, partition at LBA 34",
            Box::new(|d| tool("sgdisk", &["-a", "1", "-n", "1:34:0", p(d)]).map(drop)),
        ),
        (
            "MBR, partition at LBA 4",
            Box::new(|d| {
                tool_stdin("sfdisk", &["-q", p(d)], "label: dos\nstart=4, type=83\n").map(drop)
            }),
        ),
        (
            "GPT without partitions",
            Box::new(|d| tool("sgdisk", &["-o", p(d)]).map(drop)),
        ),
    ];
    for (name, make) in cases {
        let disk = dir.path().join("d.raw");
        let _ = fs::remove_file(&disk);
        fs::File::create(&disk)?.set_len(8 * MIB)?;
        make(&disk)?;
        let h = hash_file(&disk)?;
        let e = write_record(&disk, &sample("x.img"))
            .err()
            .ok_or(format!("{name}: not refused"))?;
        eprintln!("{name}: refused as expected: {e}");
        let want_gap = name.contains("LBA");
        assert!(
            matches!(
                (&e, want_gap),
                (RetargetError::NoGap { .. }, true) | (RetargetError::NoTable { .. }, false)
            ),
            "{name}: {e}"
        );
        assert!(
            read_record(&disk).is_err(),
            "{name}: read_record found a place"
        );
        assert_eq!(hash_file(&disk)?, h, "{name}: written");
    }
    Ok(())
}

fn record_offset() -> u64 {
    2048 * 512 - RECORD_LEN as u64
}

/// A GPT disk with a record written in its gap.
fn disk_with_record(dir: &Path) -> Res<std::path::PathBuf> {
    let disk = dir.join("gpt.raw");
    sgdisk_disk(&disk, 8 * MIB, &["-n", "1:2048:0"])?;
    write_record(&disk, &sample("lab3.img"))?;
    Ok(disk)
}

fn reseal(block: &mut [u8]) {
    let sum = blake3::hash(&block[..RECORD_LEN - 32]);
    block[RECORD_LEN - 32..].copy_from_slice(sum.as_bytes());
}

fn edit_record(disk: &Path, f: impl Fn(&mut [u8])) -> TestResult {
    let file = fs::OpenOptions::new().read(true).write(true).open(disk)?;
    let mut block = vec![0u8; RECORD_LEN];
    file.read_exact_at(&mut block, record_offset())?;
    f(&mut block);
    file.write_all_at(&block, record_offset())?;
    Ok(())
}

#[test]
fn damaged_records_give_clear_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let disk = disk_with_record(dir.path())?;

    // A flipped bit in the body: damaged, said so.
    edit_record(&disk, |b| b[100] ^= 0x10)?;
    let e = read_record(&disk).err().ok_or("flipped bit accepted")?;
    eprintln!("{e}");
    assert!(
        matches!(&e, RetargetError::RecordDamaged { offset, reason: RecordError::Checksum, .. } if *offset == record_offset()),
        "{e}"
    );
    // A damaged record is ours: a new restore replaces it.
    write_record(&disk, &sample("again.img"))?;
    assert_eq!(
        read_record(&disk)?.map(|r| r.0.image),
        Some("again.img".into())
    );

    // Lying lengths with a matching checksum.
    edit_record(&disk, |b| {
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(b);
    })?;
    assert!(matches!(
        read_record(&disk),
        Err(RetargetError::RecordDamaged {
            reason: RecordError::BodyLength(u32::MAX),
            ..
        })
    ));
    write_record(&disk, &sample("again.img"))?;
    edit_record(&disk, |b| {
        b[57..59].copy_from_slice(&u16::MAX.to_le_bytes());
        reseal(b);
    })?;
    assert!(matches!(
        read_record(&disk),
        Err(RetargetError::RecordDamaged {
            reason: RecordError::Field { tag: 1, .. },
            ..
        })
    ));

    // A flipped magic: no record of ours any more, and not ours to overwrite.
    edit_record(&disk, |b| b[3] ^= 0x01)?;
    assert_eq!(read_record(&disk)?, None);
    assert!(matches!(
        write_record(&disk, &sample("x.img")),
        Err(RetargetError::PlaceNotFree { .. })
    ));
    Ok(())
}

#[test]
fn truncated_targets_are_errors_not_panics() -> TestResult {
    let dir = tempfile::tempdir()?;
    let disk = disk_with_record(dir.path())?;
    let full = fs::read(&disk)?;
    // Cut inside the record, just after the entry array, inside the array,
    // inside the GPT header, and to nothing.
    for len in [record_offset() + 2000, 34 * 512, 20 * 512, 600, 100, 0] {
        fs::write(&disk, &full[..len as usize])?;
        let r = read_record(&disk);
        eprintln!("cut to {len}: {r:?}");
        assert!(r.is_err(), "cut to {len}: {r:?}");
        assert!(write_record(&disk, &sample("x.img")).is_err());
        assert_eq!(
            fs::read(&disk)?,
            full[..len as usize],
            "cut to {len}: written"
        );
    }
    Ok(())
}
