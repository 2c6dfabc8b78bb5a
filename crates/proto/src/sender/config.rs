//! The master's settings and their validation.

use std::time::Duration;

use crate::key::SessionKey;
use crate::name::SessionName;
use crate::wire::{DATA_OVERHEAD, MAX_SESSION_INFO};
use crate::MAX_WINDOW;

/// Master settings. Build with [`SenderConfig::new`], then adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SenderConfig {
    /// Session name.
    pub name: SessionName,
    /// Random per-run id (the engine draws it from the OS): packets of other runs are refused.
    pub session_id: u64,
    /// Optional key: every packet is then encrypted and authenticated with a key of this run.
    pub key: Option<SessionKey>,
    /// Number of objects the engine will push.
    pub object_count: u32,
    /// Opaque geometry for clients (≤ 512 bytes).
    pub session_info: Vec<u8>,
    /// Start when this many clients registered (`-clients=N`).
    pub min_clients: Option<u32>,
    /// With `min_clients`, start this long after the last registration (`-timeout`); default 5 min.
    pub timeout: Duration,
    /// Fixed gap between data packets (`-throttle`); `None` adapts the rate.
    pub throttle: Option<Duration>,
    /// Largest UDP payload; default 1448 so a 1500-byte MTU never fragments.
    pub max_payload: usize,
    /// Objects held in memory at once (default 64): bounds memory and receiver buffers.
    pub window: u16,
    /// A client silent, or without progress, this long after start is dropped; default 10 s.
    pub drop_after: Duration,
    /// Made by the `m` key: give way to an earlier master of the same name while gathering.
    pub yield_to_earlier: bool,
    /// Announce period; default 500 ms.
    pub announce_interval: Duration,
    /// Adaptive rate: start value in bit/s (default 200 Mbit/s: low, then probed up).
    pub initial_rate: u64,
    /// Adaptive rate: floor in bit/s (default 1 Mbit/s).
    pub min_rate: u64,
    /// Adaptive rate: ceiling in bit/s (default 10 Gbit/s).
    pub max_rate: u64,
    /// Most registered clients (default 4096); more are ignored.
    pub max_clients: usize,
    /// Largest object accepted by `push_object` (default 16 MiB).
    pub max_object_len: usize,
    /// What happens to a client that holds the group back (`-slow`); default: move it.
    pub slow: SlowPolicy,
    /// Hand repair encoder builds to the engine as [`SenderEvent::Encode`] jobs instead of building
    /// them inside `poll_transmit` (default off: built in place).
    ///
    /// [`SenderEvent::Encode`]: super::SenderEvent::Encode
    pub offload_encoders: bool,
}

/// What the master does with a client that holds the group back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowPolicy {
    /// Move it to the follow-up run: a client that alone holds the full window for
    /// `clients::SLOW_HOLD`, or whose loss is far above the group's (its needs then do not set the
    /// repair for everyone).
    #[default]
    Move,
    /// The group waits for it, up to `drop_after` without progress (`-slow=wait`).
    Wait,
}

impl SenderConfig {
    /// Defaults for a session of `object_count` objects.
    pub fn new(name: SessionName, session_id: u64, object_count: u32) -> Self {
        Self {
            name,
            session_id,
            key: None,
            object_count,
            session_info: Vec::new(),
            min_clients: None,
            timeout: Duration::from_secs(300),
            throttle: None,
            max_payload: 1448,
            window: 64,
            drop_after: Duration::from_secs(10),
            yield_to_earlier: false,
            announce_interval: Duration::from_millis(500),
            initial_rate: INITIAL_RATE,
            min_rate: 1_000_000,
            max_rate: 10_000_000_000,
            max_clients: 4096,
            max_object_len: 16 << 20,
            slow: SlowPolicy::Move,
            offload_encoders: false,
        }
    }

    /// Checks the settings; returns the symbol size the data packets will carry.
    pub(crate) fn validate(&self) -> Result<u16, ConfigError> {
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&self.max_payload) {
            return Err(ConfigError::MaxPayload(self.max_payload));
        }
        if self.session_info.len() > MAX_SESSION_INFO {
            return Err(ConfigError::SessionInfo(self.session_info.len()));
        }
        if self.window == 0 || self.window > MAX_WINDOW {
            return Err(ConfigError::Window(self.window));
        }
        if self.min_clients == Some(0) {
            return Err(ConfigError::MinClients);
        }
        // MAX_PAYLOAD - DATA_OVERHEAD fits in u16.
        Ok((self.max_payload - DATA_OVERHEAD) as u16)
    }
}

/// The adaptive rate's start: below most LANs' line rate, so the first reports measure the path's
/// own loss rather than a queue the master filled; the pacer doubles it every 50 ms while nothing
/// says otherwise (a gigabit link is reached in 100 ms).
pub(crate) const INITIAL_RATE: u64 = 300_000_000;

/// Smallest `max_payload`: leaves a useful symbol after the data packet's overhead.
const MIN_PAYLOAD: usize = 256;
/// Largest `max_payload`: the largest UDP payload over IPv4.
const MAX_PAYLOAD: usize = 65_507;

/// A refused [`SenderConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_payload` outside 256..=65507.
    #[error("max payload {0} is outside {MIN_PAYLOAD}..={MAX_PAYLOAD} bytes")]
    MaxPayload(usize),
    /// `session_info` too long.
    #[error("session info is {0} bytes; at most {MAX_SESSION_INFO} fit in an Announce")]
    SessionInfo(usize),
    /// `window` is zero or above [`MAX_WINDOW`].
    #[error("window {0} is outside 1..={MAX_WINDOW} objects")]
    Window(u16),
    /// `min_clients` is zero.
    #[error("min clients must be at least 1")]
    MinClients,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SenderConfig {
        SenderConfig::new(SessionName::new("lab3").expect("name"), 1, 10)
    }

    #[test]
    fn defaults_are_valid_and_give_the_documented_symbol_size() {
        assert_eq!(cfg().validate(), Ok((1448 - DATA_OVERHEAD) as u16));
        let mut c = cfg();
        c.key = Some(SessionKey::from_bytes([1; 32]));
        assert_eq!(
            c.validate(),
            Ok((1448 - DATA_OVERHEAD) as u16),
            "keyed packets carry the same symbol"
        );
    }

    #[test]
    fn every_bound_is_checked() {
        let mut c = cfg();
        c.max_payload = 255;
        assert_eq!(c.validate(), Err(ConfigError::MaxPayload(255)));
        c.max_payload = 65_508;
        assert_eq!(c.validate(), Err(ConfigError::MaxPayload(65_508)));
        c.max_payload = 65_507;
        assert!(c.validate().is_ok());
        let mut c = cfg();
        c.session_info = vec![0; MAX_SESSION_INFO + 1];
        assert_eq!(
            c.validate(),
            Err(ConfigError::SessionInfo(MAX_SESSION_INFO + 1))
        );
        for w in [0, MAX_WINDOW + 1] {
            let mut c = cfg();
            c.window = w;
            assert_eq!(c.validate(), Err(ConfigError::Window(w)));
        }
        let mut c = cfg();
        c.min_clients = Some(0);
        assert_eq!(c.validate(), Err(ConfigError::MinClients));
    }
}
