//! The imgcast session protocol as pure state machines: no sockets, no threads, no clock.
//!
//! ```text
//!   engine (sockets, disk, clock)
//!     │ push_object / finish_objects          ▲ SenderEvent (registrations, progress, results)
//!     ▼                                        │
//!   ┌──────────┐  Announce/Start/Data/End ──► group ──►  ┌────────────┐  ReceiverEvent::Object
//!   │  Sender  │                                          │  Receiver  │ ──► engine writes, then
//!   └──────────┘  ◄── unicast: Register/Status/Report ──  └────────────┘     object_done / report_done
//! ```
//!
//! Both sides are driven the same way (the model is `quinn-proto`): feed datagrams with `handle(now,
//! from, bytes)`, send what `poll_transmit(now)` returns until it returns `None`, sleep until
//! `poll_timeout()` (or a datagram arrives), then call `handle_timeout(now)`, and drain
//! `poll_event()`. Wire formats, start rules, repair, feedback and pacing are described in
//! `docs/PROTOCOL.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod fec;
mod feedback;
mod key;
mod name;
mod protect;
mod receiver;
mod replay;
mod sender;
pub mod wire;

use std::net::SocketAddr;

/// Most objects a master keeps in flight (its `window`): receivers bound their buffers with it.
pub const MAX_WINDOW: u16 = 1024;

pub use fec::{DecodeJob, Decoded, EncodeJob, Encoded, MAX_K};
pub use key::{KeyError, SessionKey};
pub use name::{group_addr, NameError, SessionName, MAX_NAME_LEN};
pub use protect::{PacketKey, TAG_LEN};
pub use receiver::{Receiver, ReceiverConfig, ReceiverError, ReceiverEvent, Rejection};
pub use sender::{
    tie_break, ConfigError, DropReason, PushError, Sender, SenderConfig, SenderEvent, SlowPolicy,
};

/// Where a [`Transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// The session's multicast group and port.
    Group,
    /// One peer (unicast).
    Peer(SocketAddr),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dest: Dest,
    /// UDP payload, never larger than the configured `max_payload`.
    pub payload: Vec<u8>,
}

/// Counters of one endpoint, for diagnostics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Source symbols sent (sender).
    pub source_sent: u64,
    /// Repair symbols sent (sender).
    pub repair_sent: u64,
    /// Repair encoders built (sender): the expensive step, done lazily.
    pub encoders_built: u64,
    /// Patches sent (sender); source symbols recovered from Patches (receiver).
    pub patches: u64,
    /// Decodes run or handed out (receiver): what Patches spare a receiver.
    pub decodes: u64,
    /// Datagrams received.
    pub packets_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Dropped: another session name, another or earlier session id, or an unknown client.
    pub dropped_stray: u64,
    /// Dropped: not a valid packet.
    pub dropped_malformed: u64,
    /// Dropped: keyless packets whose check failed (corrupted, cut, padded, forged).
    pub check_failures: u64,
    /// Dropped: keyed differently from us, or failing authentication with our key.
    pub auth_failures: u64,
    /// Dropped: a packet number seen before (a replay or a duplicate), or older than the window.
    pub replays: u64,
    /// Valid packets of our session that need no action (e.g. our own multicast looped back).
    pub ignored: u64,
    /// Data symbols already held (receiver).
    pub duplicates: u64,
    /// Data symbols refused as inconsistent with the session (receiver).
    pub dropped_invalid_data: u64,
}

impl Stats {
    /// Counts a datagram [`wire::open`] refused; `keyed` when we hold a session key.
    pub(crate) fn count_open_error(&mut self, e: &wire::OpenError, keyed: bool) {
        match e {
            wire::OpenError::Decode(_) => self.dropped_malformed += 1,
            wire::OpenError::KeyMismatch => self.auth_failures += 1,
            wire::OpenError::BadTag if keyed => self.auth_failures += 1,
            wire::OpenError::BadTag => self.check_failures += 1,
        }
    }
}

/// A small deterministic PRNG (SplitMix64): jitter needs no cryptographic quality and must be
/// repeatable in the simulator.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
