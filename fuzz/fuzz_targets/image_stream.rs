//! cargo-fuzz entry point; the body is in `../src/image_stream.rs`, shared with the
//! corpus replay test that runs under `cargo test`.
#![no_main]

#[path = "../src/image_stream.rs"]
mod image_stream;

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_stream::run(data));
