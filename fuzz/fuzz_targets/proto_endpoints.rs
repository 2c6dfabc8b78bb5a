//! cargo-fuzz entry point; the body is in `../src/proto_endpoints.rs`, shared with the
//! corpus replay test that runs under `cargo test`.
#![no_main]

#[path = "../src/proto_endpoints.rs"]
mod proto_endpoints;
// Only its key helper is used here.
#[allow(dead_code)]
#[path = "../src/proto_packet.rs"]
mod proto_packet;

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_endpoints::run(data));
