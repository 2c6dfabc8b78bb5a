//! Every flipped byte, every truncation and every lying length is detected,
//! named, and never reaches a target: in v2 images with maps and a layout,
//! and in the v1 fixture.

use std::fs;
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};

use imgcast_image::codec::checksum8;
use imgcast_image::{
    incomplete_marker, restore, Decompressor, ImageError, ImageReader, Level, RestoreOptions,
    StreamReader,
};

use crate::{extents, make_image, make_mapped, mixed_disk, TestResult};

const CHUNK: u32 = 8192;

#[derive(Clone, Debug, PartialEq)]
enum Region {
    Header,
    Layout,
    Record(u64),
    Maps(u64),
    Payload(u64),
    Index,
    Trailer,
}

struct Layout {
    regions: Vec<(Range<usize>, Region)>,
    offsets: Vec<u64>,
    header_len: usize,
    record_header_len: usize,
    index_offset: usize,
}

fn layout(img: &Path) -> Result<Layout, ImageError> {
    let r = ImageReader::open(img)?;
    let len = r.image_len() as usize;
    let v1 = r.header().major == 1;
    let (hl, rl) = if v1 { (64, 64) } else { (128, 80) };
    let mut regions = vec![(0..hl, Region::Header)];
    if !r.layout().is_empty() {
        regions.push((hl..hl + r.layout().len(), Region::Layout));
    }
    let mut offsets = Vec::new();
    let mut end = hl + r.layout().len();
    for (i, e) in r.index().iter().enumerate() {
        let i = i as u64;
        let o = e.offset as usize;
        let maps = e.maps_len as usize;
        regions.push((o..o + rl, Region::Record(i)));
        if maps > 0 {
            regions.push((o + rl..o + rl + maps, Region::Maps(i)));
        }
        if e.stored_len > 0 {
            let p = o + rl + maps;
            regions.push((p..p + e.stored_len as usize, Region::Payload(i)));
        }
        offsets.push(e.offset);
        end = o + rl + maps + e.stored_len as usize;
    }
    regions.push((end..len - 80, Region::Index));
    regions.push((len - 80..len, Region::Trailer));
    Ok(Layout {
        regions,
        offsets,
        header_len: hl,
        record_header_len: rl,
        index_offset: end,
    })
}

/// Opens, verifies and (separately) streams an image; returns both errors.
fn read_both(bytes: &[u8], path: &Path) -> (Option<ImageError>, Option<ImageError>) {
    let random = fs::write(path, bytes)
        .map_err(|e| ImageError::Io {
            action: "write",
            path: path.into(),
            source: e,
        })
        .and_then(|()| ImageReader::open(path))
        .and_then(|r| r.verify_with_threads(1, &|_| {}))
        .err();
    let stream = (|| {
        let mut s = StreamReader::new(Cursor::new(bytes))?;
        let mut d = Decompressor::new();
        let mut out = Vec::new();
        while let Some((c, off)) = s.next_chunk()? {
            c.verified(&mut out, &mut d).map_err(|e| e.at_offset(off))?;
        }
        Ok::<(), ImageError>(())
    })()
    .err();
    (random, stream)
}

fn names_region(e: &ImageError, region: &Region, offsets: &[u64]) -> bool {
    match (region, e) {
        (
            Region::Header,
            ImageError::HeaderCorrupt { .. }
            | ImageError::UnsupportedVersion { .. }
            | ImageError::NotAnImage,
        ) => true,
        (Region::Layout, ImageError::LayoutCorrupt { .. }) => true,
        (Region::Record(i) | Region::Maps(i), ImageError::RecordCorrupt { chunk, offset, .. }) => {
            chunk == i && *offset == offsets[*i as usize]
        }
        (Region::Payload(i), ImageError::ChunkCorrupt { chunk, offset, .. }) => {
            chunk == i && *offset == Some(offsets[*i as usize])
        }
        (Region::Index, ImageError::IndexCorrupt { .. }) => true,
        (
            Region::Trailer,
            ImageError::TrailerCorrupt { .. } | ImageError::TrailerMissing { .. },
        ) => true,
        _ => false,
    }
}

/// The disk and map of the v2 test images: free ranges inside chunks (so
/// maps are bitmaps, with sector-unaligned ends rounded out), a whole free
/// chunk (4), a used chunk of zeros (5), data and zero blocks.
fn test_disk() -> (Vec<u8>, imgcast_image::Extents) {
    let mut disk = mixed_disk(4096);
    let mixed_len = disk.len() as u64;
    disk.extend(vec![0u8; 3 * CHUNK as usize]);
    disk.extend(crate::noise(CHUNK as usize, 8));
    disk.extend(b"a bit of text at the end ".repeat(20));
    let c = u64::from(CHUNK);
    let map = extents(&[
        (0, 5000),
        (9000, 11_000),
        (3 * c + 100, 700),
        (25_000, mixed_len - 25_000),
        (5 * c, c),
        (52_000, disk.len() as u64 - 52_000),
    ]);
    (disk, map)
}

/// A v2 image of [`test_disk`] with a layout; the v1 fixture. Both in a
/// fresh directory.
/// A test image: its directory (kept alive), path, and the disk it holds.
type TestImage = (tempfile::TempDir, PathBuf, Vec<u8>);

fn images() -> Result<Vec<TestImage>, Box<dyn std::error::Error>> {
    let (disk, map) = test_disk();
    let dir = tempfile::tempdir()?;
    let (img, _) = make_mapped(
        dir.path(),
        &disk,
        Level::FASTEST,
        CHUNK,
        Some(&map),
        Some(br#"{"partitions":[]}"#),
    )?;
    let v1dir = tempfile::tempdir()?;
    let v1 = v1dir.path().join("v1.img");
    fs::copy(crate::v1compat::fixture(), &v1)?;
    Ok(vec![(dir, img, disk), (v1dir, v1, Vec::new())])
}

#[test]
fn the_v2_test_image_has_every_region() -> TestResult {
    let (_d, img, _) = images()?.swap_remove(0);
    let lay = layout(&img)?;
    for want in [Region::Layout, Region::Maps(1)] {
        assert!(lay.regions.iter().any(|(_, r)| *r == want), "{want:?}");
    }
    let r = ImageReader::open(&img)?;
    assert!(r.index().iter().any(|e| e.used_len == 0), "a free chunk");
    assert!(
        r.index().iter().any(|e| e.data_len == 0 && e.used_len > 0),
        "a used-zero chunk"
    );
    assert_eq!(r.layout(), br#"{"partitions":[]}"#);
    Ok(())
}

#[test]
fn every_region_flip_is_detected_and_named() -> TestResult {
    for (dir, img, _) in images()? {
        let good = fs::read(&img)?;
        let lay = layout(&img)?;
        let bad_path = dir.path().join("bad.img");
        let mut checked = 0;
        for (range, region) in &lay.regions {
            // Every byte of fixed-size records and maps; a stride through payloads and index.
            let step = match region {
                Region::Payload(_) | Region::Index => 31,
                _ => 1,
            };
            let mut positions: Vec<usize> = range.clone().step_by(step).collect();
            positions.push(range.end - 1);
            for p in positions {
                let mut bytes = good.clone();
                bytes[p] ^= 0x5A;
                let (random, stream) = read_both(&bytes, &bad_path);
                for (mode, err) in [("random", random), ("stream", stream)] {
                    let err = err.ok_or_else(|| {
                        format!(
                            "{}: {mode}: flip at {p} ({region:?}) undetected",
                            img.display()
                        )
                    })?;
                    assert!(
                        names_region(&err, region, &lay.offsets),
                        "{mode}: flip at {p} in {region:?} gave: {err}"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 500, "only {checked} positions checked");
    }
    Ok(())
}

#[test]
fn error_messages_name_the_place() -> TestResult {
    let (dir, img, _) = images()?.swap_remove(0);
    let good = fs::read(&img)?;
    let lay = layout(&img)?;
    let bad_path = dir.path().join("bad.img");
    let find = |want: &dyn Fn(&Region) -> bool| {
        lay.regions
            .iter()
            .find(|(_, r)| want(r))
            .cloned()
            .ok_or("region not found")
    };
    let (payload, Region::Payload(chunk)) = find(&|r| matches!(r, Region::Payload(c) if *c > 0))?
    else {
        return Err("no payload".into());
    };
    let mut b = good.clone();
    b[payload.start + 5] ^= 1;
    let (random, _) = read_both(&b, &bad_path);
    let msg = random.map(|e| e.to_string()).unwrap_or_default();
    let off = lay.offsets[chunk as usize];
    assert!(
        msg.starts_with(&format!("chunk {chunk} at image offset {off}: ")),
        "{msg}"
    );

    let (maps, Region::Maps(chunk)) = find(&|r| matches!(r, Region::Maps(_)))? else {
        return Err("no maps".into());
    };
    let mut b = good.clone();
    b[maps.start] ^= 1;
    let msg = read_both(&b, &bad_path)
        .1
        .map(|e| e.to_string())
        .unwrap_or_default();
    let off = lay.offsets[chunk as usize];
    assert_eq!(
        msg,
        format!("chunk {chunk} record header at image offset {off}: bitmap checksum mismatch")
    );

    let mut b = good.clone();
    b[20] ^= 1;
    let msg = read_both(&b, &bad_path)
        .0
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(msg, "image header corrupt: header checksum mismatch");

    let mut b = good.clone();
    b[lay.header_len + 3] ^= 1;
    let msg = read_both(&b, &bad_path)
        .0
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(msg, "layout corrupt at image offset 128: checksum mismatch");

    let mut b = good.clone();
    let n = b.len();
    b[n - 90] ^= 1;
    let msg = read_both(&b, &bad_path)
        .0
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.starts_with("index corrupt at image offset"), "{msg}");
    assert!(msg.ends_with("checksum mismatch"), "{msg}");

    let msg = read_both(
        b"hello, not an image at all, just some bytes here!!!!!!!!!!!!!!!!!!!!!",
        &bad_path,
    )
    .0
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert_eq!(msg, "not an imgcast image (bad magic in header)");
    Ok(())
}

/// Rewrites the checksum8 that ends the `len`-byte record at `at`.
fn reseal8(b: &mut [u8], at: usize, len: usize) {
    let sum = checksum8(&b[at..at + len - 8]);
    b[at + len - 8..at + len].copy_from_slice(&sum);
}

/// Rewrites the BLAKE3 that ends the index at `at`.
fn reseal_index(b: &mut [u8], at: usize) {
    let end = b.len() - 80 - 32;
    let h = *blake3::hash(&b[at..end]).as_bytes();
    b[end..end + 32].copy_from_slice(&h);
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn add32(b: &mut [u8], at: usize, d: i64) {
    let v = i64::from(get_u32(b, at)) + d;
    put_u32(b, at, v as u32);
}

fn add64(b: &mut [u8], at: usize, d: u64) {
    let v = get_u64(b, at) + d;
    put_u64(b, at, v);
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A length or count that lies, with every checksum around it re-sealed so
/// only the field checks can catch it.
#[test]
fn lying_lengths_and_counts_are_refused() -> TestResult {
    let (dir, img, disk) = images()?.swap_remove(0);
    let good = fs::read(&img)?;
    let lay = layout(&img)?;
    let bad_path = dir.path().join("lie.img");
    let target = dir.path().join("target.raw");
    let original = vec![0xC3u8; disk.len()];
    let ri = 1usize; // chunk 1 has bitmaps and data
    let ro = lay.offsets[ri] as usize;
    let rl = lay.record_header_len;
    let io = lay.index_offset;
    let entry = io + 16 + ri * 64;
    let trailer = good.len() - 80;
    type Edit = Box<dyn Fn(&mut Vec<u8>)>;
    let header = |f: Edit| -> Edit {
        Box::new(move |b: &mut Vec<u8>| {
            f(b);
            reseal8(b, 0, 128);
        })
    };
    let record = |f: Edit| -> Edit {
        Box::new(move |b: &mut Vec<u8>| {
            f(b);
            reseal8(b, ro, rl);
        })
    };
    let index = |f: Edit| -> Edit {
        Box::new(move |b: &mut Vec<u8>| {
            f(b);
            reseal_index(b, io);
        })
    };
    let cases: Vec<(&str, Edit, bool)> = vec![
        (
            "header layout_len + 1",
            header(Box::new(|b| add32(b, 64, 1))),
            true,
        ),
        (
            "header layout_len 2 MiB",
            header(Box::new(|b| put_u32(b, 64, 2 << 20))),
            true,
        ),
        (
            "header chunk_count + 1",
            header(Box::new(|b| add64(b, 40, 1))),
            true,
        ),
        (
            "header chunk_count 2^40",
            header(Box::new(|b| put_u64(b, 40, 1 << 40))),
            true,
        ),
        (
            "header disk_size + 1 chunk, count too",
            header(Box::new(|b| {
                add64(b, 32, u64::from(CHUNK));
                add64(b, 40, 1);
            })),
            true,
        ),
        (
            "header min_target > disk",
            header(Box::new(|b| {
                let d = get_u64(b, 32);
                put_u64(b, 48, d + 1);
            })),
            true,
        ),
        (
            "header block_size 1024",
            header(Box::new(|b| put_u32(b, 24, 1024))),
            true,
        ),
        (
            "header chunk_size 4096",
            header(Box::new(|b| put_u32(b, 20, 4096))),
            true,
        ),
        (
            "record maps_len + 1",
            record(Box::new(move |b| add32(b, ro + 28, 1))),
            false,
        ),
        (
            "record stored_len - 1",
            record(Box::new(move |b| add32(b, ro + 20, -1))),
            false,
        ),
        (
            "record stored_len + 100",
            record(Box::new(move |b| add32(b, ro + 20, 100))),
            false,
        ),
        (
            "record data_len - 512",
            record(Box::new(move |b| add32(b, ro + 24, -512))),
            false,
        ),
        (
            "record raw_len - 512",
            record(Box::new(move |b| add32(b, ro + 16, -512))),
            false,
        ),
        (
            "record index + 1",
            record(Box::new(move |b| add64(b, ro + 8, 1))),
            false,
        ),
        (
            "index count + 1",
            index(Box::new(move |b| add64(b, io + 8, 1))),
            true,
        ),
        (
            "index count 2^60",
            index(Box::new(move |b| put_u64(b, io + 8, 1 << 60))),
            true,
        ),
        (
            "index entry offset + 1",
            index(Box::new(move |b| add64(b, entry, 1))),
            true,
        ),
        (
            "index entry used_len - 512",
            index(Box::new(move |b| add32(b, entry + 24, -512))),
            false,
        ),
        (
            "index entry maps_len + 1",
            index(Box::new(move |b| add32(b, entry + 20, 1))),
            true,
        ),
        (
            "trailer index_len + 64",
            Box::new(move |b: &mut Vec<u8>| {
                add64(b, trailer + 16, 64);
                reseal8(b, trailer, 80);
            }),
            true,
        ),
        (
            "trailer chunk_count + 1",
            Box::new(move |b: &mut Vec<u8>| {
                add64(b, trailer + 24, 1);
                reseal8(b, trailer, 80);
            }),
            true,
        ),
    ];
    for (name, edit, at_open) in cases {
        let mut bytes = good.clone();
        edit(&mut bytes);
        assert_ne!(bytes, good, "{name}: no change");
        let (random, stream) = read_both(&bytes, &bad_path);
        let random = random.ok_or_else(|| format!("{name}: random access accepted it"))?;
        let stream = stream.ok_or_else(|| format!("{name}: stream accepted it"))?;
        eprintln!("{name}: {random} / {stream}");
        for e in [&random, &stream] {
            assert!(
                !matches!(e, ImageError::Io { .. } | ImageError::WorkerPanicked(_)),
                "{name}: {e}"
            );
        }
        // Random-access restore: metadata lies are refused before the target is touched.
        fs::write(&target, &original)?;
        let err = restore(&RestoreOptions::new(&bad_path, &target).threads(2), &|_| {})
            .err()
            .ok_or_else(|| format!("{name}: restored"))?;
        if at_open {
            assert!(
                fs::read(&target)? == original,
                "{name}: target modified ({err})"
            );
        } else {
            assert!(
                fs::read(&target)? == original || incomplete_marker(&target)?.is_some(),
                "{name}: target changed and unmarked ({err})"
            );
        }
    }
    Ok(())
}

#[test]
fn future_major_version_and_unknown_features_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (img, _) = make_image(dir.path(), b"some data", Level::FASTEST, CHUNK)?;
    let good = fs::read(&img)?;
    let target = dir.path().join("t.raw");
    let mut b = good.clone();
    b[8..10].copy_from_slice(&7u16.to_le_bytes());
    // Re-seal the checksum: a well-formed header from the future.
    reseal8(&mut b, 0, 128);
    fs::write(&img, &b)?;
    let msg = ImageReader::open(&img)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        msg,
        "image format version 7 is newer than this img supports (2)"
    );
    assert!(restore(&RestoreOptions::new(&img, &target), &|_| {}).is_err());
    assert!(!target.exists(), "a refused restore created its target");

    // A must-understand feature this build lacks: refused before the target
    // is opened, in both modes, also when the target exists.
    let mut b = good.clone();
    put_u32(&mut b, 12, 1 << 7);
    reseal8(&mut b, 0, 128);
    fs::write(&img, &b)?;
    let want = "image needs features this img does not support (required feature bits 0x80); a newer img may read it";
    for sequential in [false, true] {
        let e = restore(
            &RestoreOptions::new(&img, &target).sequential(sequential),
            &|_| {},
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some(want));
        assert!(!target.exists(), "a refused restore created its target");
    }
    fs::write(&target, b"precious")?;
    assert!(restore(&RestoreOptions::new(&img, &target), &|_| {}).is_err());
    assert_eq!(fs::read(&target)?, b"precious");
    // An unknown compatible feature is ignored.
    let mut b = good.clone();
    put_u32(&mut b, 16, 1 << 30);
    reseal8(&mut b, 0, 128);
    fs::write(&img, &b)?;
    restore(&RestoreOptions::new(&img, &target), &|_| {})?;
    assert!(fs::read(&target)?.starts_with(b"some data"));
    Ok(())
}

#[test]
fn every_truncation_is_detected() -> TestResult {
    for (dir, img, _) in images()? {
        let good = fs::read(&img)?;
        let lay = layout(&img)?;
        let bad_path = dir.path().join("cut.img");
        // Every region boundary, one byte either side, the middle of each
        // region, a stride, and the whole tail and head.
        let mut cuts: Vec<usize> = (0..good.len()).step_by(13).collect();
        for (r, _) in &lay.regions {
            cuts.extend([r.start, r.start + 1, r.start + r.len() / 2, r.end - 1]);
            cuts.push(r.start.saturating_sub(1));
        }
        cuts.extend((good.len() - 200)..good.len());
        cuts.extend(0..140);
        cuts.retain(|&c| c < good.len());
        for cut in cuts {
            let (random, stream) = read_both(&good[..cut], &bad_path);
            let random = random.ok_or_else(|| format!("random: cut at {cut} undetected"))?;
            assert!(
                matches!(
                    random,
                    ImageError::TrailerMissing { .. } | ImageError::Truncated { .. }
                ),
                "random: cut at {cut}: {random}"
            );
            let stream = stream.ok_or_else(|| format!("stream: cut at {cut} undetected"))?;
            let msg = stream.to_string();
            assert!(
                msg.starts_with("image truncated: ") || msg.starts_with("trailer missing"),
                "stream: cut at {cut}: {msg}"
            );
        }
        // A cut inside a record (header, maps or payload) names the chunk.
        for i in [1usize, 3] {
            let at = lay.offsets[i] as usize;
            let ends: Vec<usize> = lay
                .regions
                .iter()
                .filter(|(_, r)| {
                    matches!(r, Region::Record(c) | Region::Maps(c) | Region::Payload(c) if *c == i as u64)
                })
                .map(|(r, _)| r.start + r.len() / 2)
                .collect();
            for cut in ends {
                let (_, stream) = read_both(&good[..cut], &bad_path);
                let msg = stream.map(|e| e.to_string()).unwrap_or_default();
                assert_eq!(
                    msg,
                    format!("image truncated: chunk {i} record at offset {at} incomplete")
                );
            }
        }
    }
    Ok(())
}

/// Errors found at open leave an existing target byte-for-byte untouched
/// (mtime too); errors found mid-restore leave the incomplete marker and
/// never write the corrupt chunk.
#[test]
fn corrupt_images_never_reach_the_target() -> TestResult {
    for (dir, img, _) in images()? {
        let good = fs::read(&img)?;
        let disk_len = ImageReader::open(&img)?.geometry().disk_size as usize;
        let chunk = ImageReader::open(&img)?.geometry().chunk_size as usize;
        let lay = layout(&img)?;
        let bad = dir.path().join("bad.img");
        let target = dir.path().join("target.raw");
        let original = vec![0xC3u8; disk_len];
        for (range, region) in &lay.regions {
            let p = range.start + range.len() / 2;
            let mut bytes = good.clone();
            bytes[p] ^= 0x81;
            fs::write(&bad, &bytes)?;
            for sequential in [false, true] {
                fs::write(&target, &original)?;
                let mtime = fs::metadata(&target)?.modified()?;
                let opts = RestoreOptions::new(&bad, &target)
                    .threads(2)
                    .sequential(sequential);
                let err = restore(&opts, &|_| {})
                    .err()
                    .ok_or("corrupt image restored")?;
                let at_open = match region {
                    Region::Header | Region::Layout => true,
                    Region::Index | Region::Trailer => !sequential,
                    Region::Record(_) | Region::Maps(_) | Region::Payload(_) => false,
                };
                if at_open {
                    assert!(
                        fs::read(&target)? == original,
                        "{region:?}: target modified ({err})"
                    );
                    assert_eq!(
                        fs::metadata(&target)?.modified()?,
                        mtime,
                        "{region:?}: mtime changed"
                    );
                } else {
                    let marker = incomplete_marker(&target)?;
                    assert!(
                        marker.is_some(),
                        "{region:?} seq={sequential}: no incomplete marker ({err})"
                    );
                    if let Region::Payload(i) | Region::Record(i) | Region::Maps(i) = region {
                        let at = *i as usize * chunk;
                        let got = fs::read(&target)?;
                        let end = (at + chunk).min(got.len());
                        if *i > 0 {
                            assert!(
                                got[at..end].iter().all(|&b| b == 0),
                                "{region:?}: corrupt chunk was written"
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
