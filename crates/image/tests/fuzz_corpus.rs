//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the very code
//! the fuzz targets run (shared from `fuzz/src/`), so every input the fuzzer
//! kept, crashes it found included, stays a regression test under
//! `cargo test`.
//!
//! `cargo test -p imgcast-image --test fuzz_corpus -- --ignored` rewrites
//! the valid seeds (`seed-*`) from the current format (the v1 images,
//! `image_stream/seed-v1-*`, were made by the v1 writer and are kept).

#[path = "../../../fuzz/src/chunk_wire.rs"]
mod chunk_wire;
#[path = "../../../fuzz/src/image_records.rs"]
mod image_records;
#[path = "../../../fuzz/src/image_stream.rs"]
mod image_stream;

use std::fs;
use std::panic::{catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

use imgcast_image::codec::Codec;
use imgcast_image::format::{
    Index, IndexEntryV1, MapEncoding, RecordHeader, RecordHeaderV1, Trailer,
};
use imgcast_image::{
    BlockMap, Compressor, Decompressor, EncodedChunk, Extent, Extents, Geometry, Header,
    ImageWriter, IncompleteMarker, IndexEntry, Level, PayloadKind, StreamReader,
};

/// Runs `run` on every file of the corpus `dir`; fails if fewer than `min`
/// were found (the corpus must not vanish unnoticed).
fn replay(dir: &Path, min: usize, run: fn(&[u8])) {
    let mut replayed = 0;
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !path.is_file() {
            continue;
        }
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = catch_unwind(|| run(&bytes)) {
            eprintln!("fuzz input {} panics", path.display());
            resume_unwind(panic);
        }
        replayed += 1;
    }
    assert!(
        replayed >= min,
        "only {replayed} inputs in {}, expected at least {min}",
        dir.display()
    );
}

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn image_records_corpus() {
    replay(&corpus("image_records"), MIN_INPUTS, image_records::run);
}

#[test]
fn image_stream_corpus() {
    replay(&corpus("image_stream"), MIN_INPUTS, image_stream::run);
}

#[test]
fn chunk_wire_corpus() {
    replay(&corpus("chunk_wire"), MIN_INPUTS, chunk_wire::run);
}

/// The seeds are valid: each whole image of the stream corpus (v2, and the
/// v1 ones the v1 writer made) reads to its validated end, and each chunk
/// object verifies, so the fuzzer starts from inputs that pass every check.
#[test]
fn seeds_are_valid() {
    for name in [
        "seed-v1-mixed",
        "seed-v1-hole",
        "seed-mixed",
        "seed-mapped",
        "seed-stored",
    ] {
        let bytes = fs::read(corpus("image_stream").join(name)).expect("seed");
        let mut s = StreamReader::new(&bytes[..]).expect(name);
        let mut d = Decompressor::new();
        let mut raw = Vec::new();
        while let Some((c, _)) = s.next_chunk().expect(name) {
            c.verified(&mut raw, &mut d).expect(name);
        }
        assert!(s.root_hash().is_some(), "{name}");
    }
    for name in [
        "seed-zero",
        "seed-zstd",
        "seed-stored",
        "seed-mapped",
        "seed-v1-zstd",
    ] {
        let bytes = fs::read(corpus("chunk_wire").join(name)).expect("seed");
        let c = EncodedChunk::from_wire(&bytes).expect(name);
        c.verified(&mut Vec::new(), &mut Decompressor::new())
            .expect(name);
    }
}

/// Each corpus holds its valid seeds and what the fuzzer found (30 files at most).
const MIN_INPUTS: usize = 20;

/// Deterministic incompressible bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The used blocks of `[start, start + len)` in 512-byte blocks.
fn used_blocks(map: &Extents, start: u64, len: usize) -> BlockMap {
    let mut b = BlockMap::empty(len.div_ceil(512) as u32);
    for e in map.within(start, start + len as u64) {
        b.set_range(((e.start - start) / 512) as u32..(e.end - start).div_ceil(512) as u32);
    }
    b
}

/// A whole v2 image of `disk` in 4 KiB chunks of 512-byte blocks, made in
/// memory, with the used bytes `used` (None: raw) and a layout.
fn image(disk: &[u8], level: Level, used: Option<&Extents>, layout: &[u8]) -> Vec<u8> {
    let g = Geometry::new(disk.len() as u64, 4096, level)
        .and_then(|g| g.with_block_size(512))
        .expect("valid geometry");
    let mut out = Vec::new();
    let mut w =
        ImageWriter::with_layout(&mut out, Header::new(g, 1_700_000_000), layout).expect("header");
    let mut c = Compressor::new();
    for (i, raw) in disk.chunks(4096).enumerate() {
        let used = used.map(|m| used_blocks(m, i as u64 * 4096, raw.len()));
        let chunk = EncodedChunk::encode(i as u64, raw, used.as_ref(), 512, level, &mut c);
        w.write_chunk(&chunk).expect("chunk");
    }
    w.finish().expect("finish");
    out
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    assert!(
        bytes.len() <= 8192,
        "seed {target}/{name} is {} bytes",
        bytes.len()
    );
    let dir = corpus(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus"]
fn write_seeds() {
    let text = b"compressible text ".repeat(240);
    let mixed: Vec<u8> = [&text[..4096], &[0; 4096][..], &noise(300, 1)[..]].concat();
    let map: Extents = [(0u64, 1000u64), (2048, 1500), (8192, 300)]
        .iter()
        .filter_map(|&(s, l)| Extent::new(s, l))
        .collect();

    // image_stream: whole v2 images (the v1 ones, seed-v1-*, were made by
    // the v1 writer and are kept as they are).
    let raw = image(&mixed, Level::FASTEST, None, b"");
    write_seed("image_stream", "mixed", &raw);
    let mapped = image(&mixed, Level::FASTEST, Some(&map), br#"{"disk":"gpt"}"#);
    write_seed("image_stream", "mapped", &mapped);
    let stored = image(&noise(5000, 2), Level::STORED, None, b"");
    write_seed("image_stream", "stored", &stored);

    // chunk_wire: one chunk of each kind, and a v1-hashed one.
    let mut c = Compressor::new();
    let half = used_blocks(&map, 0, 4096);
    let v1_text = &text[..4096];
    let mut v1 = EncodedChunk::encode(4, v1_text, None, 4096, Level::FASTEST, &mut c);
    v1.major = 1;
    v1.hash = *blake3::hash(v1_text).as_bytes();
    let lvl = Level::FASTEST;
    let chunks = [
        (
            "zero",
            EncodedChunk::encode(0, &[0; 4096], None, 512, lvl, &mut c),
        ),
        (
            "zstd",
            EncodedChunk::encode(1, &text[..4096], None, 512, lvl, &mut c),
        ),
        (
            "stored",
            EncodedChunk::encode(2, &noise(700, 3), None, 512, lvl, &mut c),
        ),
        (
            "mapped",
            EncodedChunk::encode(3, &mixed[..4096], Some(&half), 512, lvl, &mut c),
        ),
        ("v1-zstd", v1),
    ];
    for (name, chunk) in &chunks {
        write_seed("chunk_wire", name, &chunk.to_wire());
    }

    // image_records: selector byte (bits 0-3: the parser; bit 4: fix the
    // checksum first), then the record.
    let g = Geometry::new(10_000, 4096, Level::BALANCED).expect("valid geometry");
    let g1 = Geometry {
        major: 1,
        block_size: 4096,
        ..g
    };
    let record = RecordHeader {
        index: 1,
        kind: PayloadKind::Zstd,
        used: MapEncoding::Bitmap,
        data: MapEncoding::Full,
        raw_len: 4096,
        stored_len: 100,
        data_len: 2048,
        maps_len: 1,
        hash: [0xAB; 32],
        maps_sum: [0x11; 8],
    };
    let entry = IndexEntry::of_record(&record, 129, 2048);
    let record_v1 = RecordHeaderV1 {
        index: 1,
        kind: PayloadKind::Zstd,
        raw_len: 4096,
        stored_len: 100,
        hash: [0xAB; 32],
    };
    let entry_v1 = IndexEntryV1 {
        offset: 64,
        kind: PayloadKind::Stored,
        stored_len: 4096,
        raw_len: 4096,
        hash: [0xCD; 32],
    };
    let hole_v1 = IndexEntryV1 {
        offset: 4224,
        kind: PayloadKind::Empty,
        stored_len: 0,
        raw_len: 1808,
        hash: [0xEF; 32],
    };
    let trailer = Trailer {
        index_offset: 4288,
        index_len: Index::<IndexEntry>::encoded_len(2),
        chunk_count: 2,
        disk_size: 10_000,
        root_hash: [0x12; 32],
    };
    let marker = IncompleteMarker {
        root_hash: [0x34; 32],
        started: 1_700_000_000,
        disk_size: 10_000,
    };
    let mut bitmap = 12u16.to_le_bytes().to_vec();
    bitmap.extend_from_slice(&[0b1011_0001, 0b0000_0110]);
    let two = Index {
        entries: vec![entry, entry],
    };
    let two_v1 = Index {
        entries: vec![entry_v1, hole_v1],
    };
    let fix = 0x10;
    let min_target = g.with_min_target_size(9000).expect("min");
    let records: [(&str, u8, Vec<u8>); 13] = [
        ("header-fix", fix, Header::new(g, 1_700_000_000).to_bytes()),
        (
            "header-v1-fix",
            fix,
            Header::new(g1, 1_700_000_000).to_bytes(),
        ),
        ("record-fix", 1 | fix, record.to_bytes()),
        ("entry", 2, entry.to_bytes()),
        ("index-fix", 3 | fix, two.to_bytes()),
        ("trailer-fix", 4 | fix, trailer.to_bytes()),
        ("marker-fix", 5 | fix, marker.to_bytes()),
        ("record-v1-fix", 6 | fix, record_v1.to_bytes()),
        ("entry-v1", 7, entry_v1.to_bytes()),
        ("index-v1-fix", 8 | fix, two_v1.to_bytes()),
        ("geometry", 9, min_target.to_bytes()),
        ("bitmap", 10, bitmap),
        (
            "image",
            11,
            image(&mixed, Level::FASTEST, Some(&map), b"{}"),
        ),
    ];
    for (name, selector, bytes) in records {
        write_seed("image_records", name, &[&[selector][..], &bytes].concat());
    }
}
