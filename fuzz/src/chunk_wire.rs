//! Fuzz target `chunk_wire`: the wire form of one chunk
//! ([`EncodedChunk::from_wire`]), then its decompression and hash check.
//! Shared by `fuzz_targets/chunk_wire.rs` and the corpus replay test of
//! imgcast-image (`crates/image/tests/fuzz_corpus.rs`).

use imgcast_image::{Decompressor, EncodedChunk};

/// Parses and decodes `data` as a chunk object; must never panic.
pub(crate) fn run(data: &[u8]) {
    let Ok(chunk) = EncodedChunk::from_wire(data) else {
        return;
    };
    // Every field and map has one encoding: a chunk re-encodes to its input.
    assert_eq!(chunk.to_wire(), data);
    let _ = chunk.verified(&mut Vec::new(), &mut Decompressor::new());
}
