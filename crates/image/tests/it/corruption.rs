//! Every flipped byte and every truncation is detected, named, and never
//! reaches a target.

use std::fs;
use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use imgcast_image::{
    incomplete_marker, restore, Decompressor, ImageError, ImageReader, Level, RestoreOptions,
    StreamReader,
};

use crate::{make_image, mixed_disk, TestResult};

const CHUNK: u32 = 4096;

#[derive(Clone, Debug, PartialEq)]
enum Region {
    Header,
    Record(u64),
    Payload(u64),
    Index,
    Trailer,
}

struct Layout {
    regions: Vec<(Range<usize>, Region)>,
    offsets: Vec<u64>,
}

fn layout(img: &Path) -> Result<Layout, ImageError> {
    let r = ImageReader::open(img)?;
    let len = r.image_len() as usize;
    let mut regions = vec![(0..64, Region::Header)];
    let mut offsets = Vec::new();
    let mut end = 64;
    for (i, e) in r.index().iter().enumerate() {
        let o = e.offset as usize;
        regions.push((o..o + 64, Region::Record(i as u64)));
        if e.stored_len > 0 {
            regions.push((
                o + 64..o + 64 + e.stored_len as usize,
                Region::Payload(i as u64),
            ));
        }
        offsets.push(e.offset);
        end = o + 64 + e.stored_len as usize;
    }
    regions.push((end..len - 80, Region::Index));
    regions.push((len - 80..len, Region::Trailer));
    Ok(Layout { regions, offsets })
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
            c.decode_into(&mut out, &mut d)
                .map_err(|e| e.at_offset(off))?;
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
        (Region::Record(i), ImageError::RecordCorrupt { chunk, offset, .. }) => {
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

#[test]
fn every_region_flip_is_detected_and_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (img, _) = make_image(
        dir.path(),
        &mixed_disk(CHUNK as usize),
        Level::FASTEST,
        CHUNK,
    )?;
    let good = fs::read(&img)?;
    let lay = layout(&img)?;
    let bad_path = dir.path().join("bad.img");
    let mut checked = 0;
    for (range, region) in &lay.regions {
        // Every byte of fixed-size records; a stride through payloads and index.
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
                let err =
                    err.ok_or_else(|| format!("{mode}: flip at {p} ({region:?}) undetected"))?;
                assert!(
                    names_region(&err, region, &lay.offsets),
                    "{mode}: flip at {p} in {region:?} gave: {err}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 500, "only {checked} positions checked");
    Ok(())
}

#[test]
fn error_messages_name_the_place() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (img, _) = make_image(
        dir.path(),
        &mixed_disk(CHUNK as usize),
        Level::FASTEST,
        CHUNK,
    )?;
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

    let mut b = good.clone();
    b[20] ^= 1;
    let msg = read_both(&b, &bad_path)
        .0
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(msg, "image header corrupt: header checksum mismatch");

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

#[test]
fn future_major_version_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (img, _) = make_image(dir.path(), b"some data", Level::FASTEST, CHUNK)?;
    let mut b = fs::read(&img)?;
    b[8..10].copy_from_slice(&7u16.to_le_bytes());
    // Re-seal the checksum: a well-formed header from the future.
    let sum = imgcast_image::codec::checksum8(&b[..56]);
    b[56..64].copy_from_slice(&sum);
    fs::write(&img, &b)?;
    let msg = ImageReader::open(&img)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(
        msg,
        "image format version 7 is newer than this img supports (1)"
    );
    let target = dir.path().join("t.raw");
    assert!(restore(&RestoreOptions::new(&img, &target), &|_| {}).is_err());
    assert!(!target.exists(), "a refused restore created its target");
    Ok(())
}

#[test]
fn every_truncation_is_detected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (img, _) = make_image(
        dir.path(),
        &mixed_disk(CHUNK as usize),
        Level::FASTEST,
        CHUNK,
    )?;
    let good = fs::read(&img)?;
    let bad_path = dir.path().join("cut.img");
    let mut cuts: Vec<usize> = (0..good.len()).step_by(13).collect();
    cuts.extend((good.len() - 200)..good.len());
    cuts.extend(0..70);
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
    // A cut inside a record names the chunk.
    let lay = layout(&img)?;
    let cut = lay.offsets[3] as usize + 10;
    let (_, stream) = read_both(&good[..cut], &bad_path);
    let msg = stream.map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(
        msg,
        format!(
            "image truncated: chunk 3 record at offset {} incomplete",
            lay.offsets[3]
        )
    );
    Ok(())
}

/// Errors found at open leave an existing target byte-for-byte untouched
/// (mtime too); errors found mid-restore leave the incomplete marker and
/// never write the corrupt chunk.
#[test]
fn corrupt_images_never_reach_the_target() -> TestResult {
    let dir = tempfile::tempdir()?;
    let disk = mixed_disk(CHUNK as usize);
    let (img, _) = make_image(dir.path(), &disk, Level::FASTEST, CHUNK)?;
    let good = fs::read(&img)?;
    let lay = layout(&img)?;
    let bad = dir.path().join("bad.img");
    let target = dir.path().join("target.raw");
    let original = vec![0xC3u8; disk.len()];
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
                Region::Header => true,
                Region::Index | Region::Trailer => !sequential,
                Region::Record(_) | Region::Payload(_) => false,
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
                if let Region::Payload(i) | Region::Record(i) = region {
                    let c = CHUNK as usize;
                    let at = *i as usize * c;
                    let got = fs::read(&target)?;
                    let end = (at + c).min(got.len());
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
    Ok(())
}
