//! Fuzz target `retarget_record`: the image-safe record's parser
//! ([`ImageSafeRecord::decode`]) on arbitrary bytes, and on a real record with
//! a few bytes patched in and the checksum made valid again, so the fuzzer gets
//! past the checksum to the field parser. Shared by
//! `fuzz_targets/retarget_record.rs` and imgcast-retarget's tests, which replay
//! `corpus/retarget_record/`.

use imgcast_retarget::{ImageSafeRecord, RECORD_LEN};

/// Where the checksum starts: the last 32 bytes of the record.
const SUM_AT: usize = RECORD_LEN - 32;

/// A real record, as a restore writes it.
pub(crate) fn sample() -> ImageSafeRecord {
    ImageSafeRecord {
        image: "lab3.img".into(),
        root_hash: [7; 32],
        session: Some("lab3".into()),
        master: Some("10.77.0.10".into()),
        written_at: 1_764_000_000,
        version: "0.1.0".into(),
    }
}

/// Must never panic; a record it accepts must round-trip.
pub(crate) fn run(data: &[u8]) {
    check(data);
    // The input as edits of a real record: pairs (offset u16, byte), checksum repaired.
    let Ok(mut rec) = sample().encode() else {
        return;
    };
    for edit in data.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % SUM_AT;
        rec[at] = edit[2];
    }
    let sum = blake3::hash(&rec[..SUM_AT]);
    rec[SUM_AT..].copy_from_slice(sum.as_bytes());
    check(&rec);
}

fn check(bytes: &[u8]) {
    if let Ok(Some(r)) = ImageSafeRecord::decode(bytes) {
        let again = r.encode().expect("an accepted record encodes");
        assert_eq!(ImageSafeRecord::decode(&again), Ok(Some(r)));
    }
}
