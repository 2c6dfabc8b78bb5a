//! make → restore round trips over random disks, random access and streamed.

use std::fs;

use imgcast_image::{incomplete_marker, restore, ImageReader, Level, RestoreOptions, StreamReader};
use proptest::prelude::*;

use crate::{make_image, mixed_disk, noise, TestResult};

/// A disk described as segments: (0 = zeros, 1 = noise, 2 = text, length).
fn disk_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0u8..3, 0usize..20_000, any::<u64>()), 0..6).prop_map(|segs| {
        let mut d = Vec::new();
        for (kind, len, seed) in segs {
            match kind {
                0 => d.extend(std::iter::repeat_n(0u8, len)),
                1 => d.extend(noise(len, seed)),
                _ => d.extend(b"imgcast ".iter().cycle().take(len)),
            }
        }
        d
    })
}

fn check_round_trip(disk: &[u8], level: Level, chunk: u32) -> TestResult {
    let dir = tempfile::tempdir()?;
    let (img, summary) = make_image(dir.path(), disk, level, chunk)?;
    assert_eq!(summary.geometry.disk_size, disk.len() as u64);
    let reader = ImageReader::open(&img)?;
    assert_eq!(reader.root_hash(), summary.root_hash);
    reader.verify(&|_| {})?;

    // Random access, into a target that does not exist yet.
    let target = dir.path().join("restored.raw");
    let rs = restore(&RestoreOptions::new(&img, &target).threads(2), &|_| {})?;
    assert_eq!(rs.root_hash, summary.root_hash);
    assert!(fs::read(&target)? == disk, "random-access restore differs");
    assert_eq!(incomplete_marker(&target)?, None);

    // Streamed, over an existing larger file full of garbage.
    fs::write(&target, vec![0xEEu8; disk.len() + 5000])?;
    let rs = restore(
        &RestoreOptions::new(&img, &target)
            .threads(2)
            .sequential(true),
        &|_| {},
    )?;
    assert_eq!(rs.root_hash, summary.root_hash);
    assert!(fs::read(&target)? == disk, "streamed restore differs");

    // StreamReader alone agrees with the index.
    let mut s = StreamReader::new(fs::File::open(&img)?)?;
    let mut n = 0;
    while let Some((c, off)) = s.next_chunk()? {
        assert_eq!(reader.index()[n].offset, off);
        assert_eq!(reader.index()[n].hash, c.hash);
        n += 1;
    }
    assert_eq!(n as u64, summary.geometry.chunk_count);
    assert_eq!(s.root_hash(), Some(summary.root_hash));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn random_disks_round_trip(
        disk in disk_strategy(),
        level in prop::sample::select(vec![0u8, 1, 6, 9]),
        chunk in prop::sample::select(vec![4096u32, 8192, 16384]),
    ) {
        let level = Level::new(level).ok_or_else(|| TestCaseError::fail("level"))?;
        check_round_trip(&disk, level, chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
}

#[test]
fn empty_disk() -> TestResult {
    check_round_trip(&[], Level::FASTEST, 4096)
}

#[test]
fn all_levels_on_a_mixed_disk() -> TestResult {
    let disk = mixed_disk(8192);
    let mut sizes = Vec::new();
    for l in 0..=9 {
        let level = Level::new(l).ok_or("level")?;
        check_round_trip(&disk, level, 8192)?;
        let dir = tempfile::tempdir()?;
        let (_, s) = make_image(dir.path(), &disk, level, 8192)?;
        sizes.push(s.stored_bytes);
    }
    assert!(sizes[1] < sizes[0], "level 1 compresses: {sizes:?}");
    Ok(())
}

#[test]
fn holes_are_recorded_and_stay_sparse() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    let chunk = 65536usize;
    let mut disk = vec![0u8; 64 * chunk];
    disk[5 * chunk..5 * chunk + 10].copy_from_slice(b"0123456789");
    let dir = tempfile::tempdir()?;
    let (img, s) = make_image(dir.path(), &disk, Level::FASTEST, chunk as u32)?;
    assert_eq!(s.hole_chunks, 63);
    // Only the 4 KiB block holding the ten bytes is data.
    assert_eq!(s.data_bytes, 4096);
    assert_eq!(s.used_bytes, disk.len() as u64);
    let target = dir.path().join("t.raw");
    restore(&RestoreOptions::new(&img, &target), &|_| {})?;
    assert!(fs::read(&target)? == disk);
    let allocated = fs::metadata(&target)?.blocks() * 512;
    assert!(
        allocated <= 4 * chunk as u64,
        "target not sparse: {allocated} bytes allocated"
    );
    Ok(())
}

#[test]
fn make_refuses_existing_image_and_missing_source() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (img, _) = make_image(dir.path(), b"data", Level::FASTEST, 4096)?;
    let opts = imgcast_image::MakeOptions::new(dir.path().join("source.raw"), &img);
    let e = imgcast_image::make(&opts, &|_| {})
        .err()
        .map(|e| e.to_string());
    assert!(
        e.as_deref().is_some_and(|e| e.contains("already exists")),
        "{e:?}"
    );
    let missing = dir.path().join("nope.raw");
    let opts = imgcast_image::MakeOptions::new(&missing, dir.path().join("new.img"));
    let e = imgcast_image::make(&opts, &|_| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("nope.raw"), "{e}");
    assert!(!dir.path().join("new.img").exists());
    assert!(!imgcast_image::temp_path_for(&dir.path().join("new.img")).exists());
    Ok(())
}
