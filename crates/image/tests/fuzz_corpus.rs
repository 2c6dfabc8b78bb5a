//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the very code
//! the fuzz targets run (shared from `fuzz/src/`), so every input the fuzzer
//! kept, crashes it found included, stays a regression test under
//! `cargo test`.
//!
//! `cargo test -p imgcast-image --test fuzz_corpus -- --ignored` rewrites
//! the valid seeds (`seed-*`) from the current format.

#[path = "../../../fuzz/src/chunk_wire.rs"]
mod chunk_wire;
#[path = "../../../fuzz/src/image_records.rs"]
mod image_records;
#[path = "../../../fuzz/src/image_stream.rs"]
mod image_stream;

use std::fs;
use std::panic::{catch_unwind, resume_unwind};
use std::path::Path;

use imgcast_image::codec::Codec;
use imgcast_image::format::{Index, RecordHeader, Trailer};
use imgcast_image::{
    ChunkKind, Compressor, EncodedChunk, Geometry, Header, ImageWriter, IncompleteMarker,
    IndexEntry, Level,
};

/// Runs `run` on every file of the corpus `dir`; fails if fewer than `min`
/// were found (the corpus must not vanish unnoticed).
fn replay(dir: &str, min: usize, run: fn(&[u8])) {
    let mut replayed = 0;
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("corpus {dir}: {e}"));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("corpus {dir}: {e}")).path();
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
        "only {replayed} inputs in {dir}, expected at least {min}"
    );
}

#[test]
fn image_records_corpus() {
    replay(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/image_records"
        ),
        MIN_INPUTS,
        image_records::run,
    );
}

#[test]
fn image_stream_corpus() {
    replay(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/image_stream"
        ),
        MIN_INPUTS,
        image_stream::run,
    );
}

#[test]
fn chunk_wire_corpus() {
    replay(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/chunk_wire"),
        MIN_INPUTS,
        chunk_wire::run,
    );
}

/// Each corpus holds its valid seeds and what the fuzzer found (30 files now).
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

/// A whole image of `disk` in 4 KiB chunks, made in memory.
fn image(disk: &[u8], level: Level) -> Vec<u8> {
    let g = Geometry::new(disk.len() as u64, 4096, level).expect("valid geometry");
    let mut out = Vec::new();
    let mut w = ImageWriter::new(&mut out, Header::new(g, 1_700_000_000)).expect("header");
    let mut c = Compressor::new();
    for (i, raw) in disk.chunks(4096).enumerate() {
        w.write_chunk(&EncodedChunk::encode(i as u64, raw, level, &mut c))
            .expect("chunk");
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus"]
fn write_seeds() {
    let text = b"compressible text ".repeat(240);
    let mixed: Vec<u8> = [&text[..4096], &[0; 4096][..], &noise(300, 1)[..]].concat();

    // image_stream: whole images.
    write_seed("image_stream", "empty", &image(&[], Level::FASTEST));
    write_seed("image_stream", "hole", &image(&[0; 4096], Level::FASTEST));
    write_seed("image_stream", "mixed", &image(&mixed, Level::FASTEST));
    write_seed(
        "image_stream",
        "mixed-smallest",
        &image(&mixed, Level::SMALLEST),
    );
    write_seed(
        "image_stream",
        "stored",
        &image(&noise(5000, 2)[..], Level::STORED),
    );

    // chunk_wire: one chunk of each kind.
    let mut c = Compressor::new();
    let chunks = [
        (
            "hole",
            EncodedChunk::encode(0, &[0; 4096], Level::FASTEST, &mut c),
        ),
        (
            "zstd",
            EncodedChunk::encode(1, &text[..4096], Level::FASTEST, &mut c),
        ),
        (
            "stored",
            EncodedChunk::encode(2, &noise(700, 3), Level::FASTEST, &mut c),
        ),
        (
            "level0",
            EncodedChunk::encode(3, &text[..1000], Level::STORED, &mut c),
        ),
        (
            "tail",
            EncodedChunk::encode(9, &text[..100], Level::SMALLEST, &mut c),
        ),
    ];
    for (name, chunk) in &chunks {
        write_seed("chunk_wire", name, &chunk.to_wire());
    }

    // image_records: selector byte (bit 3: fix the checksum), then the record.
    let g = Geometry::new(10_000, 4096, Level::BALANCED).expect("valid geometry");
    let record = RecordHeader {
        index: 1,
        kind: ChunkKind::Zstd,
        raw_len: 4096,
        stored_len: 100,
        hash: [0xAB; 32],
    };
    let entry = IndexEntry {
        offset: 64,
        kind: ChunkKind::Stored,
        stored_len: 4096,
        raw_len: 4096,
        hash: [0xCD; 32],
    };
    let hole = IndexEntry {
        offset: 4224,
        kind: ChunkKind::Hole,
        stored_len: 0,
        raw_len: 1808,
        hash: [0xEF; 32],
    };
    let index = Index {
        entries: vec![entry, hole],
    };
    let trailer = Trailer {
        index_offset: 4288,
        index_len: Index::encoded_len(2),
        chunk_count: 2,
        disk_size: 10_000,
        root_hash: [0x12; 32],
    };
    let marker = IncompleteMarker {
        root_hash: [0x34; 32],
        started: 1_700_000_000,
        disk_size: 10_000,
    };
    let records: [(&str, u8, Vec<u8>); 7] = [
        ("header", 0, Header::new(g, 1_700_000_000).to_bytes()),
        ("record", 1, record.to_bytes()),
        ("entry", 2, entry.to_bytes()),
        ("index", 3, index.to_bytes()),
        ("trailer", 4, trailer.to_bytes()),
        ("marker", 5, marker.to_bytes()),
        ("image", 6, image(&mixed, Level::FASTEST)),
    ];
    for (name, selector, bytes) in records {
        for fix in [0, 0x08] {
            let name = if fix == 0 {
                name.to_owned()
            } else {
                format!("{name}-fix")
            };
            write_seed(
                "image_records",
                &name,
                &[&[selector | fix][..], &bytes].concat(),
            );
        }
    }
}
