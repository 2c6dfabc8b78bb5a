//! Fuzz target `image_records`: every fixed record of the image format (v2,
//! and the v1 records still read) through its [`Codec`]. Shared by
//! `fuzz_targets/image_records.rs` and the corpus replay test of
//! imgcast-image (`crates/image/tests/fuzz_corpus.rs`).
//!
//! Input: one selector byte, then the record's bytes. Selector bits 0-3 pick
//! the parser; bit 4 first repairs the record's checksum, so that mutations
//! get past it to the field checks behind.

use std::fmt::Debug;

use imgcast_image::codec::{checksum8, Codec, Reader};
use imgcast_image::format::{
    Entry, Header, Index, IndexEntry, IndexEntryV1, RecordHeader, RecordHeaderV1, Trailer,
    HEADER_LEN, RECORD_HEADER_LEN, RECORD_HEADER_LEN_V1, TRAILER_LEN,
};
use imgcast_image::{BlockMap, Geometry, IncompleteMarker, INCOMPLETE_MARKER_LEN};

/// Parses `data` as the record its first byte selects; must never panic.
pub(crate) fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    let fix = selector & 0x10 != 0;
    match selector & 0x0F {
        0 => {
            if fix {
                let len = Header::peek_len(&bytes).unwrap_or(HEADER_LEN);
                fix_checksum8(&mut bytes, len);
            }
            if let Ok(h) = Header::parse(&bytes) {
                assert_eq!(Header::parse(&h.to_bytes()).ok(), Some(h));
            }
            round_trip::<Header>(&bytes);
        }
        1 => {
            if fix {
                fix_checksum8(&mut bytes, RECORD_HEADER_LEN);
            }
            round_trip::<RecordHeader>(&bytes);
        }
        2 => round_trip::<IndexEntry>(&bytes),
        3 => {
            if fix {
                fix_index_hash::<IndexEntry>(&mut bytes);
            }
            round_trip::<Index<IndexEntry>>(&bytes);
        }
        4 => {
            if fix {
                fix_checksum8(&mut bytes, TRAILER_LEN);
            }
            round_trip::<Trailer>(&bytes);
        }
        5 => {
            if fix {
                fix_checksum8(&mut bytes, INCOMPLETE_MARKER_LEN);
            }
            round_trip::<IncompleteMarker>(&bytes);
        }
        6 => {
            if fix {
                fix_checksum8(&mut bytes, RECORD_HEADER_LEN_V1);
            }
            if let Ok(r) = RecordHeaderV1::from_bytes(&bytes) {
                let up = r.upgrade();
                assert_eq!(RecordHeader::from_bytes(&up.to_bytes()), Ok(up));
            }
            round_trip::<RecordHeaderV1>(&bytes);
        }
        7 => {
            if let Ok(e) = IndexEntryV1::from_bytes(&bytes) {
                let up = e.upgrade();
                assert_eq!(IndexEntry::from_bytes(&up.to_bytes()), Ok(up));
            }
            round_trip::<IndexEntryV1>(&bytes);
        }
        8 => {
            if fix {
                fix_index_hash::<IndexEntryV1>(&mut bytes);
            }
            round_trip::<Index<IndexEntryV1>>(&bytes);
        }
        9 => round_trip::<Geometry>(&bytes),
        10 => {
            // A bitmap: the first two bytes give the block count.
            if let [a, b, map @ ..] = &bytes[..] {
                let blocks = u32::from(u16::from_le_bytes([*a, *b]));
                if let Ok(m) = BlockMap::from_bitmap(blocks, map) {
                    assert_eq!(m.as_bytes(), map);
                    let covered: u32 = m.runs().map(|r| r.end - r.start).sum();
                    assert_eq!(covered, m.count());
                }
            }
        }
        _ => {
            // Records back to back through one reader, as an image lays them out.
            let mut r = Reader::new(&bytes);
            if let Ok(h) = Header::read(&mut r) {
                if h.major == 1 {
                    while RecordHeaderV1::read(&mut r).is_ok() {}
                    let _ = Index::<IndexEntryV1>::read(&mut r);
                } else {
                    while RecordHeader::read(&mut r).is_ok() {}
                    let _ = Index::<IndexEntry>::read(&mut r);
                }
                let _ = Trailer::read(&mut r);
            }
        }
    }
}

/// A record that parses must re-encode to one that parses to the same value.
fn round_trip<T: Codec + PartialEq + Debug>(bytes: &[u8]) {
    if let Ok(v) = T::from_bytes(bytes) {
        assert_eq!(T::from_bytes(&v.to_bytes()), Ok(v));
    }
}

/// Rewrites the 8-byte checksum that ends a `len`-byte record.
fn fix_checksum8(bytes: &mut [u8], len: usize) {
    if bytes.len() >= len {
        let sum = checksum8(&bytes[..len - 8]);
        bytes[len - 8..len].copy_from_slice(&sum);
    }
}

/// Rewrites the BLAKE3 hash that ends an index of the count it announces.
fn fix_index_hash<E: Entry>(bytes: &mut [u8]) {
    let Some(count) = bytes.get(8..16) else {
        return;
    };
    let mut le = [0u8; 8];
    le.copy_from_slice(count);
    let body = u64::from_le_bytes(le)
        .checked_mul(E::LEN as u64)
        .and_then(|n| n.checked_add(16));
    if let Some(end) = body.and_then(|n| usize::try_from(n).ok()) {
        if end.checked_add(32).is_some_and(|e| e <= bytes.len()) {
            let hash = *blake3::hash(&bytes[..end]).as_bytes();
            bytes[end..end + 32].copy_from_slice(&hash);
        }
    }
}
