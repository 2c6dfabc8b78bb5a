//! Fuzz target `proto_endpoints`: a [`Sender`] and a [`Receiver`] of one
//! session, talking to each other on a virtual clock, with arbitrary
//! datagrams injected into both. Shared by `fuzz_targets/proto_endpoints.rs`
//! and the corpus replay test of imgcast-proto
//! (`crates/proto/tests/fuzz_corpus.rs`).
//!
//! Input: a mode byte (bit 0: keyed session), then operations, each an op
//! byte and a little-endian u16 `len`:
//! - op & 3 == 0: the next `len` bytes are a datagram to the sender;
//! - op & 3 == 1: the next `len` bytes are a datagram to the receiver;
//! - op & 3 == 2: the clock advances `len` milliseconds;
//! - op & 3 == 3: both sides exchange datagrams (with op bit 2, the master
//!   starts first); `len` is ignored.
//!
//! Before a datagram is delivered, op bit 4 writes the session's name hash
//! into it, bit 5 the master's session id, and bit 6 seals it with the run's
//! key (keyless or keyed, as the session is), so the fuzzer reaches past the
//! filters and the packet check at the door.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use imgcast_proto::wire::{self, HEADER_LEN};
use imgcast_proto::{
    Receiver, ReceiverConfig, ReceiverEvent, Sender, SenderConfig, SessionKey, SessionName,
};

use crate::proto_packet::{keys, KEY};

/// Session id of the fuzzed master.
const SESSION_ID: u64 = 0x5EED_0001;
/// Client id of the fuzzed receiver.
const CLIENT_ID: u64 = 7;
/// Delivery rounds per exchange: bounds the work of one operation.
const ROUNDS: usize = 64;

/// Drives both endpoints as `data` says; must never panic.
pub(crate) fn run(data: &[u8]) {
    let Some((&mode, mut ops)) = data.split_first() else {
        return;
    };
    let key = (mode & 1 != 0).then(|| SessionKey::from_bytes(KEY));
    let name = SessionName::new("fuzz").expect("valid session name");
    let master: SocketAddr = ([10, 0, 0, 1], 7000).into();
    let client: SocketAddr = ([10, 0, 0, 2], 7000).into();
    let mut now = Instant::now();

    let mut cfg = SenderConfig::new(name.clone(), SESSION_ID, 3);
    cfg.key.clone_from(&key);
    // Small packets, so objects span several symbols and the fuzzer can write whole ones.
    cfg.max_payload = 256;
    cfg.session_info = b"fuzz".to_vec();
    let mut sender = Sender::new(cfg, now).expect("valid sender config");
    for (i, len) in [0usize, 300, 1000].into_iter().enumerate() {
        let _ = sender.push_object(i as u32, vec![i as u8 + 1; len]);
    }
    let _ = sender.finish_objects(b"trailer".to_vec());
    let mut rcfg = ReceiverConfig::new(name.clone(), CLIENT_ID, "fuzz");
    rcfg.key = key;
    let mut receiver = Receiver::new(rcfg);

    while let Some((&op, rest)) = ops.split_first() {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len));
        ops = rest;
        match op & 3 {
            2 => {
                now += Duration::from_millis(len as u64);
                sender.handle_timeout(now);
                receiver.handle_timeout(now);
                continue;
            }
            3 => {
                if op & 0x04 != 0 {
                    sender.start_now(now);
                }
                exchange(&mut sender, &mut receiver, now, master, client);
                continue;
            }
            _ => {}
        }
        let (datagram, rest) = ops.split_at(len.min(ops.len()));
        ops = rest;
        let mut d = datagram.to_vec();
        if d.len() >= HEADER_LEN {
            // A short header (flag bit 2) has the session id where a long one has the name.
            let short = d[6] & 4 != 0;
            if op & 0x10 != 0 && !short {
                d[7..15].copy_from_slice(&name.hash());
            }
            if op & 0x20 != 0 {
                let at = if short { 7 } else { 15 };
                d[at..at + 8].copy_from_slice(&SESSION_ID.to_be_bytes());
            }
            if op & 0x40 != 0 {
                let [check, keyed] = keys(&name.hash(), SESSION_ID);
                let k = if mode & 1 != 0 { keyed } else { check };
                if let Ok(sealed) = wire::seal_encoded(&d, &k) {
                    d = sealed;
                }
            }
        }
        if op & 3 == 0 {
            sender.handle(now, client, &d);
        } else {
            receiver.handle(now, master, &d);
        }
    }
    exchange(&mut sender, &mut receiver, now, master, client);
}

/// Delivers what each side sends to the other and plays the engines' part.
fn exchange(
    sender: &mut Sender,
    receiver: &mut Receiver,
    now: Instant,
    master: SocketAddr,
    client: SocketAddr,
) {
    for _ in 0..ROUNDS {
        let mut quiet = true;
        if let Some(t) = sender.poll_transmit(now) {
            receiver.handle(now, master, &t.payload);
            quiet = false;
        }
        if let Some(t) = receiver.poll_transmit(now) {
            sender.handle(now, client, &t.payload);
            quiet = false;
        }
        while sender.poll_event().is_some() {}
        while let Some(e) = receiver.poll_event() {
            match e {
                ReceiverEvent::Announced { .. } => {
                    let _ = receiver.register(now, 1 << 20);
                }
                ReceiverEvent::Object { index, .. } => receiver.object_done(index),
                ReceiverEvent::Trailer(_) => {
                    let _ = receiver.report_done(now, String::new());
                }
                _ => {}
            }
        }
        if quiet {
            break;
        }
    }
}
