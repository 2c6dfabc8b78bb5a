//! cargo-fuzz entry point; the body is in `../src/chunk_wire.rs`, shared with the
//! corpus replay test that runs under `cargo test`.
#![no_main]

#[path = "../src/chunk_wire.rs"]
mod chunk_wire;

libfuzzer_sys::fuzz_target!(|data: &[u8]| chunk_wire::run(data));
