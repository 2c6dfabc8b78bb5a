//! cargo-fuzz entry point; the body is in `../src/image_records.rs`, shared with the
//! corpus replay test that runs under `cargo test`.
#![no_main]

#[path = "../src/image_records.rs"]
mod image_records;

libfuzzer_sys::fuzz_target!(|data: &[u8]| image_records::run(data));
