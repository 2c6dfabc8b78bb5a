//! cargo-fuzz entry point; the body is in `../src/proto_packet.rs`, shared with the
//! corpus replay test that runs under `cargo test`.
#![no_main]

#[path = "../src/proto_packet.rs"]
mod proto_packet;

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_packet::run(data));
