//! Fuzz target `proto_packet`: one datagram through the packet codec
//! ([`Packet::decode`], [`wire::open`] keyless and keyed). Shared by
//! `fuzz_targets/proto_packet.rs` and the corpus replay test of imgcast-proto
//! (`crates/proto/tests/fuzz_corpus.rs`).
//!
//! Arbitrary bytes almost never carry a valid tag, so the input is also
//! treated as an unprotected encoding and sealed with the keys of the run its
//! header names: that way the body parsers are reached through `open`, as they
//! are by a packet from a peer that holds the key.

use imgcast_proto::wire::{self, Codec, Header, Packet};
use imgcast_proto::{PacketKey, SessionKey};

/// The passphrase key of keyed sessions in the fuzz targets.
pub(crate) const KEY: [u8; 32] = [7; 32];

/// The keyless and the keyed packet key of run `session_id` of the session with `name_hash`.
pub(crate) fn keys(name_hash: &[u8; 8], session_id: u64) -> [PacketKey; 2] {
    let key = SessionKey::from_bytes(KEY);
    [
        PacketKey::new(None, name_hash, session_id),
        PacketKey::new(Some(&key), name_hash, session_id),
    ]
}

/// Decodes `data` every way a peer may; must never panic.
pub(crate) fn run(data: &[u8]) {
    let Ok(h) = Header::peek(data) else {
        let [check, keyed] = keys(&[0; 8], 0);
        assert!(wire::open(data, &check).is_err());
        assert!(wire::open(data, &keyed).is_err());
        return;
    };
    for k in keys(&h.name_hash.unwrap_or_default(), h.session_id) {
        let _ = wire::open(data, &k);
        // With a valid tag, the body parser is reached through open.
        if let Ok(sealed) = wire::seal_encoded(data, &k) {
            if let Ok(p) = wire::open(&sealed, &k) {
                assert_eq!(wire::seal(&p, &k), sealed, "open/seal round trip");
            }
        }
    }
    if let Ok(p) = Packet::decode(data) {
        // Every field is checked on the way in, so the encoding is canonical.
        let mut again = Vec::new();
        p.encode(&mut again);
        assert_eq!(again, data);
        for k in keys(&h.name_hash.unwrap_or_default(), h.session_id) {
            assert_eq!(wire::open(&wire::seal(&p, &k), &k), Ok(p.clone()));
        }
    }
}
