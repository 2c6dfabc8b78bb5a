//! Packet protection: every packet ends with a 16-byte tag that a receiver checks before it trusts
//! any field but the header it needs to find the key.
//!
//! * **Keyless**: the tag is keyed BLAKE3 (first 16 bytes) over header and body, under a *check key*
//!   derived from the session name hash and the run's random session id. It stops corrupted
//!   datagrams (a bit flipped past the UDP checksum, a truncated or padded copy), other tools'
//!   traffic and packets of other runs. It is no secret: whoever sees one packet of the run can
//!   derive the check key and forge — that is what `-key` is for.
//! * **Keyed** (`-key`): XChaCha20-Poly1305 under a *run key* derived from the passphrase key, the
//!   name hash and the session id. The header is the associated data; the body is encrypted. The
//!   24-byte nonce is the header's sender id, sequence number and flags, unique per packet because
//!   every sender numbers its packets and never reuses a number within a run.
//!
//! Replays of a run's own packets are stopped after this check, by a per-sender replay window
//! ([`crate::replay`]).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::key::SessionKey;

/// Bytes of the tag at the end of every packet (keyed BLAKE3 or Poly1305).
pub const TAG_LEN: usize = 16;

/// BLAKE3 key-derivation context of the keyless check key.
const CHECK_CONTEXT: &str = "imgcast 2 packet check key";
/// BLAKE3 key-derivation context of the keyed run key.
const RUN_CONTEXT: &str = "imgcast 2 run key";

/// The protection of one run's packets (one session id of one session name).
#[derive(Clone)]
pub struct PacketKey(Inner);

#[derive(Clone)]
enum Inner {
    Check([u8; 32]),
    Aead(Box<XChaCha20Poly1305>),
}

impl std::fmt::Debug for PacketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.keyed() {
            "PacketKey(keyed)"
        } else {
            "PacketKey(check)"
        })
    }
}

impl PacketKey {
    /// The key of run `session_id` of the session whose name hash is `name_hash`: keyed when a
    /// passphrase key is given, the keyless check otherwise.
    pub fn new(key: Option<&SessionKey>, name_hash: &[u8; 8], session_id: u64) -> Self {
        let mut run = [0u8; 48];
        run[..8].copy_from_slice(name_hash);
        run[8..16].copy_from_slice(&session_id.to_be_bytes());
        match key {
            None => Self(Inner::Check(blake3::derive_key(CHECK_CONTEXT, &run[..16]))),
            Some(k) => {
                run[16..].copy_from_slice(k.bytes());
                let derived = blake3::derive_key(RUN_CONTEXT, &run);
                Self(Inner::Aead(Box::new(XChaCha20Poly1305::new(
                    (&derived).into(),
                ))))
            }
        }
    }

    /// Whether packets are encrypted and authenticated with the session key.
    pub fn keyed(&self) -> bool {
        matches!(self.0, Inner::Aead(_))
    }

    /// Protects `packet` (the first `header_len` bytes are the header, the rest the body): encrypts
    /// the body when keyed and appends the tag.
    pub(crate) fn seal(&self, packet: &mut Vec<u8>, header_len: usize, nonce: &[u8; 24]) {
        match &self.0 {
            Inner::Check(k) => {
                let tag = blake3::keyed_hash(k, packet);
                packet.extend_from_slice(&tag.as_bytes()[..TAG_LEN]);
            }
            Inner::Aead(aead) => {
                let (header, body) = packet.split_at_mut(header_len);
                // Encryption fails only for bodies beyond 256 GiB: never for a datagram.
                let tag = aead
                    .encrypt_in_place_detached(XNonce::from_slice(nonce), header, body)
                    .unwrap_or_default();
                packet.extend_from_slice(&tag);
            }
        }
    }

    /// Checks the tag at the end of `packet` and, when keyed, decrypts the body in place. Returns
    /// the length without the tag; `None` when the packet is not authentic.
    pub(crate) fn open(
        &self,
        packet: &mut [u8],
        header_len: usize,
        nonce: &[u8; 24],
    ) -> Option<usize> {
        let end = packet
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&e| e >= header_len)?;
        let (content, tag) = packet.split_at_mut(end);
        match &self.0 {
            Inner::Check(k) => {
                let want = blake3::keyed_hash(k, content);
                // Constant time, as blake3's own Hash equality is.
                let same = want.as_bytes()[..TAG_LEN]
                    .iter()
                    .zip(tag.iter())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
                same.then_some(end)
            }
            Inner::Aead(aead) => {
                let (header, body) = content.split_at_mut(header_len);
                aead.decrypt_in_place_detached(
                    XNonce::from_slice(nonce),
                    header,
                    body,
                    Tag::from_slice(tag),
                )
                .ok()
                .map(|()| end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: [u8; 24] = [7; 24];

    fn packet() -> Vec<u8> {
        let mut p = b"HEADER--".to_vec();
        p.extend_from_slice(b"the body of a packet");
        p
    }

    #[test]
    fn keyless_and_keyed_round_trip_and_refuse_any_change() {
        let pass = SessionKey::from_bytes([9; 32]);
        for key in [
            PacketKey::new(None, &[1; 8], 42),
            PacketKey::new(Some(&pass), &[1; 8], 42),
        ] {
            let mut sealed = packet();
            key.seal(&mut sealed, 8, &NONCE);
            assert_eq!(sealed.len(), packet().len() + TAG_LEN);
            assert_eq!(&sealed[..8], b"HEADER--", "the header stays readable");
            assert_eq!(
                key.keyed(),
                sealed[8..28] != packet()[8..],
                "keyed: body encrypted"
            );
            let mut opened = sealed.clone();
            let n = key.open(&mut opened, 8, &NONCE).expect("authentic");
            assert_eq!(&opened[..n], &packet()[..]);
            for i in 0..sealed.len() {
                for bit in [0x01u8, 0x80] {
                    let mut bad = sealed.clone();
                    bad[i] ^= bit;
                    assert_eq!(key.open(&mut bad, 8, &NONCE), None, "{key:?} byte {i}");
                }
            }
            for cut in 0..sealed.len() {
                let mut bad = sealed[..cut].to_vec();
                assert_eq!(key.open(&mut bad, 8, &NONCE), None);
            }
            let mut padded = sealed.clone();
            padded.push(0);
            assert_eq!(key.open(&mut padded, 8, &NONCE), None);
            let mut other_nonce = sealed.clone();
            let refused = key.open(&mut other_nonce, 8, &[8; 24]).is_none();
            assert_eq!(refused, key.keyed(), "the nonce binds keyed packets");
        }
    }

    #[test]
    fn keys_differ_by_run_name_and_passphrase() {
        let pass = SessionKey::from_bytes([9; 32]);
        let other = SessionKey::from_bytes([8; 32]);
        let mut sealed = packet();
        PacketKey::new(Some(&pass), &[1; 8], 42).seal(&mut sealed, 8, &NONCE);
        for k in [
            PacketKey::new(Some(&pass), &[1; 8], 43),
            PacketKey::new(Some(&pass), &[2; 8], 42),
            PacketKey::new(Some(&other), &[1; 8], 42),
            PacketKey::new(None, &[1; 8], 42),
        ] {
            assert_eq!(k.open(&mut sealed.clone(), 8, &NONCE), None, "{k:?}");
        }
        let mut sealed = packet();
        PacketKey::new(None, &[1; 8], 42).seal(&mut sealed, 8, &NONCE);
        assert_eq!(
            PacketKey::new(None, &[1; 8], 43).open(&mut sealed.clone(), 8, &NONCE),
            None
        );
    }
}
