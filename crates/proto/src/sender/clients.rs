//! The master's client table: registration, progress, replay windows and the drop policy.
//!
//! A client is dropped when it is silent for `drop_after`, or when it holds the window back (its
//! `low` is the window's base while more was pushed) without progress for `drop_after`: too slow
//! for the group. A client that is caught up, or that waits for a slower one, is never too slow.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::pacing::PeerRate;
use crate::replay::ReplayWindow;

/// Late joiners remembered, to report each once.
const MAX_QUEUED_MEMORY: usize = 4096;

/// Why a client was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Nothing heard from it for `drop_after`.
    Silent,
    /// It made no progress for `drop_after` while holding the window back: too slow for the group.
    NoProgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientState {
    Live,
    Done,
    Failed,
    Dropped,
}

#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    pub(crate) state: ClientState,
    /// Every object below it is done at the client.
    pub(crate) low: u32,
    pub(crate) objects_done: u32,
    pub(crate) bytes: u64,
    pub(crate) highest_seq: u64,
    /// Objects it threw away because their chunk failed its check.
    pub(crate) rejected: u32,
    pub(crate) last_heard: Instant,
    pub(crate) last_progress: Instant,
    pub(crate) next_progress_event: Instant,
    pub(crate) rate: PeerRate,
    /// Smoothed round-trip time: packets older than twice this are not in flight any more.
    pub(crate) srtt: Option<Duration>,
    /// The nonce of its latest Register, echoed in every Ack.
    pub(crate) nonce: u64,
    /// Its packet numbers seen: a replayed Status or Report is dropped.
    window: ReplayWindow,
}

/// What a Register leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Registration {
    /// A new client, counted in.
    New,
    /// A client already counted in (its Ack was lost, or it moved address).
    Again,
    /// The client was dropped from this run: it waits for the next one.
    WasDropped,
    /// The run has started: wait for the next one. `first` when this client is new to us.
    Queued { first: bool },
    /// The table is full.
    Full,
}

/// Whether a client's packet is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fresh {
    /// First time this number is seen.
    New,
    /// A replay or a duplicate.
    Seen,
    /// Not a client of this run.
    Unknown,
}

/// Every client of the run, by id.
#[derive(Debug)]
pub(crate) struct Clients {
    map: BTreeMap<u64, Client>,
    queued_seen: BTreeSet<u64>,
    max: usize,
}

impl Clients {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            queued_seen: BTreeSet::new(),
            max,
        }
    }

    /// Handles a Register from `id` at `addr`, packet number `seq`, with `nonce`.
    pub(crate) fn register(
        &mut self,
        now: Instant,
        gathering: bool,
        id: u64,
        addr: SocketAddr,
        seq: u64,
        nonce: u64,
    ) -> Registration {
        if let Some(c) = self.map.get_mut(&id) {
            c.window.accept(seq);
            if c.state == ClientState::Live || gathering {
                c.addr = addr;
                c.nonce = nonce;
                return Registration::Again;
            }
            c.nonce = nonce;
            return Registration::WasDropped;
        }
        if !gathering {
            let first = self.queued_seen.len() < MAX_QUEUED_MEMORY && self.queued_seen.insert(id);
            return Registration::Queued { first };
        }
        if self.map.len() >= self.max {
            return Registration::Full;
        }
        let mut window = ReplayWindow::default();
        window.accept(seq);
        self.map.insert(
            id,
            Client {
                addr,
                state: ClientState::Live,
                low: 0,
                objects_done: 0,
                bytes: 0,
                highest_seq: 0,
                rejected: 0,
                last_heard: now,
                last_progress: now,
                next_progress_event: now,
                rate: PeerRate::default(),
                srtt: None,
                nonce,
                window,
            },
        );
        Registration::New
    }

    /// Whether packet number `seq` of client `id` is new (and records it).
    pub(crate) fn fresh(&mut self, id: u64, seq: u64) -> Fresh {
        match self.map.get_mut(&id) {
            None => Fresh::Unknown,
            Some(c) => {
                if c.window.accept(seq) {
                    Fresh::New
                } else {
                    Fresh::Seen
                }
            }
        }
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Client> {
        self.map.get_mut(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn live(&self) -> usize {
        self.map
            .values()
            .filter(|c| c.state == ClientState::Live)
            .count()
    }

    /// The lowest `low` of the live clients: objects below it can be released.
    pub(crate) fn min_live_low(&self) -> Option<u32> {
        self.map
            .values()
            .filter(|c| c.state == ClientState::Live)
            .map(|c| c.low)
            .min()
    }

    /// The run started: silence and progress are measured from now.
    pub(crate) fn started(&mut self, now: Instant) {
        for c in self.map.values_mut() {
            c.last_heard = now;
            c.last_progress = now;
        }
    }

    /// Drops the live clients that are silent, or too slow while holding the window (`base` of
    /// the `pushed` objects), for `drop_after`; returns them.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        pushed: u32,
        base: u32,
        drop_after: Duration,
    ) -> Vec<(u64, SocketAddr, DropReason)> {
        let mut dropped = Vec::new();
        for (id, c) in &mut self.map {
            if c.state != ClientState::Live {
                continue;
            }
            if c.low >= pushed || c.low > base {
                c.last_progress = now;
            }
            let reason = if now.saturating_duration_since(c.last_heard) >= drop_after {
                DropReason::Silent
            } else if now.saturating_duration_since(c.last_progress) >= drop_after {
                DropReason::NoProgress
            } else {
                continue;
            };
            c.state = ClientState::Dropped;
            dropped.push((*id, c.addr, reason));
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        ([10, 0, 0, n], 7000).into()
    }

    #[test]
    fn registration_is_idempotent_and_late_clients_are_queued_once() {
        let t = Instant::now();
        let mut c = Clients::new(2);
        assert_eq!(c.register(t, true, 1, addr(1), 1, 10), Registration::New);
        assert_eq!(c.register(t, true, 1, addr(9), 2, 11), Registration::Again);
        assert_eq!(c.map[&1].addr, addr(9), "a moved client is followed");
        assert_eq!(c.map[&1].nonce, 11, "acks echo the latest nonce");
        assert_eq!(c.register(t, true, 2, addr(2), 1, 10), Registration::New);
        assert_eq!(c.register(t, true, 3, addr(3), 1, 10), Registration::Full);
        assert_eq!(
            c.register(t, false, 4, addr(4), 1, 10),
            Registration::Queued { first: true }
        );
        assert_eq!(
            c.register(t, false, 4, addr(4), 2, 10),
            Registration::Queued { first: false }
        );
        assert_eq!(c.register(t, false, 1, addr(1), 3, 12), Registration::Again);
        assert_eq!(c.len(), 2);
        assert_eq!(c.live(), 2);
    }

    #[test]
    fn replayed_packets_are_not_fresh() {
        let t = Instant::now();
        let mut c = Clients::new(4);
        c.register(t, true, 1, addr(1), 5, 10);
        assert_eq!(c.fresh(1, 5), Fresh::Seen, "the Register's own number");
        assert_eq!(c.fresh(1, 6), Fresh::New);
        assert_eq!(c.fresh(1, 6), Fresh::Seen);
        assert_eq!(c.fresh(1, 4), Fresh::New, "reordered, never seen");
        assert_eq!(c.fresh(2, 1), Fresh::Unknown);
    }

    #[test]
    fn silent_and_window_holding_slow_clients_are_dropped() {
        let t = Instant::now();
        let after = Duration::from_secs(10);
        let mut c = Clients::new(4);
        for id in 1..=3 {
            c.register(t, true, id, addr(id as u8), 1, 0);
        }
        c.started(t);
        // 1: keeps talking, holds the window without progress. 2: caught up. 3: silent.
        let t1 = t + Duration::from_secs(5);
        for id in [1, 2] {
            if let Some(x) = c.map.get_mut(&id) {
                x.last_heard = t1;
            }
        }
        if let Some(x) = c.map.get_mut(&2) {
            x.low = 8;
        }
        assert!(c.sweep(t1, 8, 0, after).is_empty());
        let t2 = t + Duration::from_secs(10);
        let dropped = c.sweep(t2, 8, 0, after);
        assert_eq!(
            dropped,
            vec![
                (1, addr(1), DropReason::NoProgress),
                (3, addr(3), DropReason::Silent)
            ]
        );
        assert_eq!(c.live(), 1);
        assert_eq!(c.min_live_low(), Some(8));
        assert_eq!(
            c.register(t2, false, 1, addr(1), 9, 5),
            Registration::WasDropped
        );
    }
}
