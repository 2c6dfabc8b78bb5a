//! Fuzz target `image_stream`: a whole image (v1 or v2) read front to back
//! from a byte slice by [`StreamReader`], each chunk decompressed and
//! hash-checked, and the runs a restore would write computed.
//! Shared by `fuzz_targets/image_stream.rs` and the corpus replay test of
//! imgcast-image (`crates/image/tests/fuzz_corpus.rs`).

use imgcast_image::{Decompressor, StreamReader};

/// Reads `data` as an image; must never panic.
pub(crate) fn run(data: &[u8]) {
    let Ok(mut stream) = StreamReader::new(data) else {
        return;
    };
    let mut decompressor = Decompressor::new();
    let mut raw = Vec::new();
    loop {
        match stream.next_chunk() {
            Ok(Some((chunk, _offset))) => {
                if let Ok(data) = chunk.verified(&mut raw, &mut decompressor) {
                    let covered: u32 = data.runs().iter().map(|r| r.len).sum();
                    assert_eq!(covered, chunk.raw_len);
                }
            }
            // The end is only reported once the index, trailer and root hash check out.
            Ok(None) => {
                assert!(stream.root_hash().is_some());
                break;
            }
            Err(_) => {
                assert!(matches!(stream.next_chunk(), Ok(None)));
                break;
            }
        }
    }
}
