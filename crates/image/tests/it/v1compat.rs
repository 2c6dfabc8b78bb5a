//! Images written by format v1 stay readable and restore byte-identical.
//!
//! `tests/fixtures/v1-mixed.img` was made by the v1 writer (commit "image:
//! v1 fixture") from `mixed_disk(4096)` with its first 16 bytes replaced by
//! `"imgcast v1 fixt\n"`, in 4 KiB chunks at level 1: 8 chunks (zstd, stored,
//! holes, a short tail). The constants below are what that disk hashes to.

use std::fs;
use std::path::{Path, PathBuf};

use imgcast_image::{hex, incomplete_marker, restore, ImageReader, RestoreOptions, StreamReader};

use crate::TestResult;

/// Length of the disk in the fixture.
const DISK_LEN: u64 = 31_594;
/// BLAKE3 of the disk in the fixture.
const DISK_BLAKE3: &str = "05ffe3a94b95cd2d7b404aa1123c134eebf131fc88a7581926063f80740156a8";
/// The fixture's root hash (v1 definition).
const ROOT: &str = "33f49b91c2feb69b5cfc824f67b4251b95515c724134d874f5cb190d63e56855";

pub(crate) fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-mixed.img")
}

fn check_restored(path: &Path) -> TestResult {
    let back = fs::read(path)?;
    assert_eq!(back.len() as u64, DISK_LEN);
    assert_eq!(blake3::hash(&back).to_hex().as_str(), DISK_BLAKE3);
    assert_eq!(&back[..16], b"imgcast v1 fixt\n");
    assert_eq!(incomplete_marker(path)?, None);
    Ok(())
}

#[test]
fn v1_image_opens_and_verifies() -> TestResult {
    let r = ImageReader::open(&fixture())?;
    assert_eq!(r.geometry().disk_size, DISK_LEN);
    assert_eq!(r.geometry().chunk_count, 8);
    assert_eq!(hex(&r.root_hash()), ROOT);
    assert_eq!(r.hole_chunks(), 2);
    r.verify(&|_| {})?;
    Ok(())
}

#[test]
fn v1_image_restores_byte_identical() -> TestResult {
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("t.raw");
    let rs = restore(&RestoreOptions::new(fixture(), &target).threads(2), &|_| {})?;
    assert_eq!(hex(&rs.root_hash), ROOT);
    check_restored(&target)?;
    // Streamed, over a larger file full of garbage.
    fs::write(&target, vec![0xEE; DISK_LEN as usize + 9000])?;
    let opts = RestoreOptions::new(fixture(), &target)
        .threads(2)
        .sequential(true);
    let rs = restore(&opts, &|_| {})?;
    assert_eq!(hex(&rs.root_hash), ROOT);
    check_restored(&target)?;
    let mut s = StreamReader::new(fs::File::open(fixture())?)?;
    while s.next_chunk()?.is_some() {}
    assert_eq!(s.root_hash().map(|h| hex(&h)).as_deref(), Some(ROOT));
    Ok(())
}
