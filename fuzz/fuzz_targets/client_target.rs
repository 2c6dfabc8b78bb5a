//! cargo-fuzz entry point; the body is in `../src/client_target.rs`, shared with the corpus
//! replay test of imgcast-engine that runs under `cargo test`.
#![no_main]

#[path = "../src/client_target.rs"]
mod client_target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    client_target::run(data);
});
