//! Fuzz target `proto_packet`: one datagram through the packet codec
//! ([`Packet::decode`], [`wire::open`] with and without a key).
//! Shared by `fuzz_targets/proto_packet.rs` and the corpus replay test of
//! imgcast-proto (`crates/proto/tests/fuzz_corpus.rs`).

use imgcast_proto::wire::{self, Codec, Header, Packet};
use imgcast_proto::{SessionKey, MAC_LEN};

/// The key of keyed sessions in the fuzz targets.
pub(crate) const KEY: [u8; 32] = [7; 32];

/// Appends the MAC a session keyed with [`KEY`] puts on `datagram`.
pub(crate) fn append_mac(datagram: &mut Vec<u8>) {
    let mac = blake3::keyed_hash(&KEY, datagram);
    datagram.extend_from_slice(&mac.as_bytes()[..MAC_LEN]);
}

/// Decodes `data` every way a peer may; must never panic.
pub(crate) fn run(data: &[u8]) {
    let key = SessionKey::from_bytes(KEY);
    let _ = Header::peek(data);
    let _ = wire::open(data, Some(&key));
    let plain = wire::open(data, None);
    if let Ok(p) = Packet::decode(data) {
        // Every field is checked on the way in, so the encoding is canonical.
        let mut again = Vec::new();
        p.encode(&mut again);
        assert_eq!(again, data);
        assert_eq!(plain, Ok(p.clone()));
        assert_eq!(wire::open(&wire::seal(&p, Some(&key)), Some(&key)), Ok(p));
    }
    // With a valid MAC, the keyed path gets past authentication to the body parser.
    let mut sealed = data.to_vec();
    append_mac(&mut sealed);
    if let Ok(p) = wire::open(&sealed, Some(&key)) {
        assert_eq!(wire::seal(&p, Some(&key)), sealed);
    }
}
