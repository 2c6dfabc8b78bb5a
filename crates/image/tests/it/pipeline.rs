//! The encoder pipeline, the writer's ordering checks, and the target's
//! incomplete marker.

use std::fs;
use std::time::{Duration, Instant};

use imgcast_image::{
    incomplete_marker, spawn_encoder, Compressor, DiskSource, DiskTarget, EncodeOptions,
    EncodedChunk, Geometry, Header, ImageError, ImageWriter, Level, RootHasher, TargetOptions,
};

use crate::{mixed_disk, noise, TestResult};

#[test]
fn encoder_delivers_in_order_and_matches_single_threaded() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    let disk = mixed_disk(4096).repeat(20);
    fs::write(&src, &disk)?;
    let opts = EncodeOptions::new(Level::BALANCED)
        .chunk_size(4096)
        .threads(3);
    let stream = spawn_encoder(DiskSource::open(&src)?, &opts)?;
    let g = stream.geometry();
    let mut c = Compressor::new();
    let mut root = RootHasher::new(&g);
    let mut n = 0u64;
    for chunk in stream {
        let chunk = chunk?;
        assert_eq!(chunk.index, n);
        let off = n as usize * 4096;
        let raw = &disk[off..(off + 4096).min(disk.len())];
        let want = EncodedChunk::encode(n, raw, None, g.block_size, Level::BALANCED, &mut c);
        assert_eq!(chunk, want);
        root.push(&chunk.hash);
        n += 1;
    }
    assert_eq!(n, g.chunk_count);
    Ok(())
}

#[test]
fn dropping_the_stream_stops_the_threads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    fs::write(&src, noise(4 << 20, 9))?;
    let start = Instant::now();
    for take in [0, 1, 5, 50] {
        let opts = EncodeOptions::new(Level::FASTEST)
            .chunk_size(4096)
            .threads(2);
        let mut stream = spawn_encoder(DiskSource::open(&src)?, &opts)?;
        for _ in 0..take {
            stream.next().ok_or("stream ended early")??;
        }
        drop(stream); // joins every thread; a leak or deadlock would hang here
    }
    assert!(start.elapsed() < Duration::from_secs(30));
    Ok(())
}

#[test]
fn source_errors_name_the_path() {
    let e = DiskSource::open(std::path::Path::new("/nonexistent/disk"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("/nonexistent/disk"), "{e}");
}

#[test]
fn writer_checks_order_and_completeness() -> TestResult {
    let g = Geometry::new(10_000, 4096, Level::FASTEST)?;
    let mut c = Compressor::new();
    let chunks: Vec<EncodedChunk> = (0..3)
        .map(|i| {
            let raw = noise(g.chunk_len(i) as usize, i);
            EncodedChunk::encode(i, &raw, None, g.block_size, g.level, &mut c)
        })
        .collect();
    let mut w = ImageWriter::new(Vec::new(), Header::new(g, 0))?;
    let e = w.write_chunk(&chunks[1]).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("chunk 1: out of order: expected chunk 0")
    );
    w.write_chunk(&chunks[0])?;
    let e = w.write_chunk(&chunks[0]).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("chunk 0: out of order: expected chunk 1")
    );
    let e = w.finish().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("finished after 1 of 3 chunks"), "{e}");

    let mut short = chunks[2].clone();
    short.index = 0;
    let mut w = ImageWriter::new(Vec::new(), Header::new(g, 0))?;
    assert!(matches!(
        w.write_chunk(&short),
        Err(ImageError::BadChunk { chunk: 0, .. })
    ));
    Ok(())
}

#[test]
fn interrupted_restore_leaves_the_marker_and_finish_removes_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let target = dir.path().join("t.raw");
    let disk = mixed_disk(4096);
    let g = Geometry::new(disk.len() as u64, 4096, Level::FASTEST)?;
    let root = [7u8; 32];
    let opts = TargetOptions {
        root_hash: Some(root),
        data_bytes: Some(disk.len() as u64),
        ..TargetOptions::default()
    };
    let t = DiskTarget::open(&target, &g, &opts)?;
    let marker = incomplete_marker(&target)?.ok_or("no marker after open")?;
    assert_eq!(marker.root_hash, root);
    assert_eq!(marker.disk_size, disk.len() as u64);
    // Write everything but do not finish: still marked.
    for i in 0..g.chunk_count {
        let off = i as usize * 4096;
        t.write_chunk(i, &disk[off..(off + 4096).min(disk.len())])?;
    }
    assert!(incomplete_marker(&target)?.is_some());
    drop(t);
    assert!(
        incomplete_marker(&target)?.is_some(),
        "dropping must not unmark"
    );

    // A finish with a missing chunk fails and keeps the marker.
    let t = DiskTarget::open(&target, &g, &opts)?;
    t.write_chunk(0, &disk[..4096])?;
    let e = t.finish().err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.ends_with("chunk 1 was never written")),
        "{e:?}"
    );
    assert!(incomplete_marker(&target)?.is_some());

    // A complete one, any order, unmarks.
    let t = DiskTarget::open(&target, &g, &opts)?;
    for i in (0..g.chunk_count).rev() {
        let off = i as usize * 4096;
        t.write_chunk(i, &disk[off..(off + 4096).min(disk.len())])?;
    }
    t.finish()?;
    assert_eq!(incomplete_marker(&target)?, None);
    assert!(fs::read(&target)? == disk);
    Ok(())
}

#[test]
fn target_refuses_a_directory_and_no_room() -> TestResult {
    let dir = tempfile::tempdir()?;
    let g = Geometry::new(1 << 20, 4096, Level::FASTEST)?;
    let e = DiskTarget::open(dir.path(), &g, &TargetOptions::default())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("neither a regular file nor a block device"),
        "{e}"
    );
    let target = dir.path().join("huge.raw");
    let opts = TargetOptions {
        data_bytes: Some(u64::MAX / 2),
        ..TargetOptions::default()
    };
    let e = DiskTarget::open(&target, &g, &opts)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("free; the image needs"), "{e}");
    assert!(!target.exists(), "refused target was created");
    Ok(())
}
