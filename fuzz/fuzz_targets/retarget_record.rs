//! cargo-fuzz entry point; the body is in `../src/retarget_record.rs`, shared with the corpus
//! replay in imgcast-retarget's tests.
#![no_main]

#[path = "../src/retarget_record.rs"]
mod retarget_record;

libfuzzer_sys::fuzz_target!(|data: &[u8]| retarget_record::run(data));
