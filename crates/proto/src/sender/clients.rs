//! The master's client table: registration, progress, replay windows and the drop policy.
//!
//! A client is dropped when it is silent (for `drop_after`, or a few of its feedback beats if that
//! is longer), or when it holds the window back (its `low` is the window's base while more was
//! pushed) without progress for `drop_after`. A client that is caught up, or that waits for a
//! slower one, is never too slow.
//!
//! With [`SlowPolicy::Move`](super::SlowPolicy) (the default) a client is *moved* to the
//! follow-up run much sooner: when it alone holds the full window — it is at the window's base
//! while most of the group is half a window or more ahead — for [`SLOW_HOLD`]; and a client whose
//! loss is an outlier (above [`OUTLIER_FACTOR`] × the others' median and [`OUTLIER_MARGIN`] above
//! it) no longer sets the repair for everyone, and is moved as soon as it holds the full window.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::pacing::PeerRate;
use crate::replay::ReplayWindow;
use crate::wire::AckKind;

/// A client that alone holds the full window this long is moved to the follow-up run.
pub(crate) const SLOW_HOLD: Duration = Duration::from_secs(2);
/// A client's loss is an outlier above this many times the others' median...
const OUTLIER_FACTOR: f64 = 3.0;
/// ...and at least this much above it.
const OUTLIER_MARGIN: f64 = 0.05;
/// Weight of a new loss sample in a client's smoothed loss.
const LOSS_GAIN: f64 = 0.2;

/// Late joiners remembered, to report each once.
const MAX_QUEUED_MEMORY: usize = 4096;

/// Why a client was dropped, or moved to the follow-up run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Nothing heard from it for `drop_after`.
    Silent,
    /// It made no progress for `drop_after` while holding the window back: too slow for the group.
    NoProgress,
    /// Moved to the follow-up run: it alone held the full window back for [`SLOW_HOLD`].
    Slow,
    /// Moved to the follow-up run: its loss, in per mille, is far above the group's median.
    Lossy {
        /// Its smoothed loss, ‰.
        loss_permille: u16,
        /// The median of the others, ‰.
        group_permille: u16,
    },
}

impl DropReason {
    /// Whether the client was moved to the follow-up run rather than dropped.
    pub fn moved(self) -> bool {
        matches!(self, Self::Slow | Self::Lossy { .. })
    }

    pub(crate) fn ack_kind(self) -> AckKind {
        if self.moved() {
            AckKind::Moved
        } else {
            AckKind::Dropped
        }
    }
}

/// What [`Clients::sweep`] needs to know of the window and the policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sweep {
    pub(crate) pushed: u32,
    pub(crate) base: u32,
    pub(crate) window: u32,
    /// The window is full and more objects wait: whoever is at its base holds everyone.
    pub(crate) window_full: bool,
    pub(crate) silent_after: Duration,
    /// The receivers' liveness beat: one that holds the window and missed two is gone, not slow
    /// (a beat goes out at the first wake-up after it is due, up to 1½ intervals late).
    pub(crate) beat: Duration,
    pub(crate) drop_after: Duration,
    pub(crate) move_slow: bool,
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
    /// Smoothed share of the group packets it lost.
    pub(crate) loss: Option<f64>,
    /// Its loss is an outlier (updated by every sweep).
    pub(crate) outlier: bool,
    /// Since when it alone holds the full window.
    holding_since: Option<Instant>,
    /// Why it was dropped or moved.
    pub(crate) dropped_for: Option<DropReason>,
    /// Its packet numbers seen: a replayed Status or Report is dropped.
    window: ReplayWindow,
    /// When its Report was last acknowledged.
    pub(crate) acked_at: Option<Instant>,
    /// It heard its Report acknowledged as the run's last and said so (`Bye`).
    pub(crate) left: bool,
}

impl Client {
    /// Folds a Status's loss counts into the smoothed loss.
    pub(crate) fn note_loss(&mut self, lost: u32, expected: u32) {
        self.loss = self.loss_after(lost, expected);
    }

    /// The smoothed loss once a Status with these counts is folded in.
    fn loss_after(&self, lost: u32, expected: u32) -> Option<f64> {
        if expected < 16 {
            return self.loss;
        }
        let sample = f64::from(lost.min(expected)) / f64::from(expected);
        Some(
            self.loss
                .map_or(sample, |l| l * (1.0 - LOSS_GAIN) + sample * LOSS_GAIN),
        )
    }

    /// The Ack kind a dropped (or moved) client hears again.
    pub(crate) fn dropped_ack(&self) -> AckKind {
        self.dropped_for
            .map_or(AckKind::Dropped, DropReason::ack_kind)
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The lower median: of two clients, the better one.
fn lower_median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

/// Whether `loss` is an outlier against a group median `m`.
fn is_outlier(loss: f64, m: f64) -> bool {
    loss > m * OUTLIER_FACTOR && loss > m + OUTLIER_MARGIN
}

fn permille(x: f64) -> u16 {
    (x * 1000.0).round().clamp(0.0, 1000.0) as u16
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
    /// The lower median of the live clients' smoothed loss, as of the last sweep.
    group_loss: Option<f64>,
    /// Live clients, counted whenever a state changes (asked for every packet sent).
    live: usize,
    queued_seen: BTreeSet<u64>,
    max: usize,
}

impl Clients {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: BTreeMap::new(),
            group_loss: None,
            live: 0,
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
                loss: None,
                outlier: false,
                holding_since: None,
                dropped_for: None,
                window,
                acked_at: None,
                left: false,
            },
        );
        self.live += 1;
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
        self.live
    }

    /// The lower median of the live clients' smoothed loss, as of the last sweep (0 before one).
    pub(crate) fn group_loss(&self) -> f64 {
        self.group_loss.unwrap_or(0.0)
    }

    /// Counts the live clients again: after any client's state changed.
    pub(crate) fn recount(&mut self) {
        self.live = self
            .map
            .values()
            .filter(|c| c.state == ClientState::Live)
            .count();
    }

    /// See `Sender::nothing_to_repeat`.
    pub(crate) fn nothing_to_repeat(&self, now: Instant, quiet: Duration) -> bool {
        self.map
            .values()
            .filter(|c| matches!(c.state, ClientState::Done | ClientState::Failed))
            .all(|c| {
                c.left
                    || c.acked_at
                        .is_none_or(|t| now.saturating_duration_since(t) > quiet)
            })
    }

    /// Live clients that may still lack `object` (their `low` is not above it), less loss
    /// outliers when `skip_outliers` (their reports do not count, so nobody waits for them).
    pub(crate) fn live_below(&self, object: u32, skip_outliers: bool) -> usize {
        self.map
            .values()
            .filter(|c| c.state == ClientState::Live && c.low <= object)
            .filter(|c| !(skip_outliers && c.outlier))
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

    /// Whether client `id`'s reports may steer the rate: a loss outlier's bottleneck is its own
    /// (it is moved instead), so only clients in line with the group's loss count; while others
    /// have not reported yet, nobody's report can be judged, so none counts.
    /// `lost` of `expected` are the counts of the Status being handled.
    pub(crate) fn steers_rate(&self, id: u64, lost: u32, expected: u32) -> bool {
        let Some(c) = self.map.get(&id) else {
            return false;
        };
        if self.live() < 2 {
            return true;
        }
        match (c.loss_after(lost, expected), self.group_loss) {
            (Some(mine), Some(m)) => !is_outlier(mine, m),
            (None, _) => true,
            (Some(_), None) => false,
        }
    }

    /// The run started: silence and progress are measured from now.
    pub(crate) fn started(&mut self, now: Instant) {
        for c in self.map.values_mut() {
            c.last_heard = now;
            c.last_progress = now;
        }
    }

    /// Drops the live clients that are silent, or too slow while holding the window, and (when
    /// `move_slow`) moves those that hold the group back; returns them. Also marks loss outliers.
    pub(crate) fn sweep(&mut self, now: Instant, w: Sweep) -> Vec<(u64, SocketAddr, DropReason)> {
        let live: Vec<(u64, u32, Option<f64>)> = self
            .map
            .iter()
            .filter(|(_, c)| c.state == ClientState::Live)
            .map(|(id, c)| (*id, c.low, c.loss))
            .collect();
        let group_low = median(live.iter().map(|(_, l, _)| f64::from(*l)).collect());
        self.group_loss = lower_median(live.iter().filter_map(|(_, _, l)| *l).collect());
        let mut dropped = Vec::new();
        for (id, c) in &mut self.map {
            if c.state != ClientState::Live {
                continue;
            }
            if c.low >= w.pushed || c.low > w.base {
                c.last_progress = now;
            }
            // The others' median loss: an outlier is judged against the rest, not itself.
            let others = median(
                live.iter()
                    .filter(|(o, _, _)| o != id)
                    .filter_map(|(_, _, l)| *l)
                    .collect(),
            );
            let lossy = match (c.loss, others) {
                (Some(mine), Some(m)) => is_outlier(mine, m).then_some((mine, m)),
                _ => None,
            };
            c.outlier = lossy.is_some();
            let half = f64::from((w.window / 2).max(1));
            let holds = w.window_full
                && live.len() >= 2
                && c.low <= w.base
                && group_low.is_some_and(|g| g >= f64::from(w.base) + half);
            if holds {
                c.holding_since.get_or_insert(now);
            } else {
                c.holding_since = None;
            }
            let held_for = c
                .holding_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            let quiet = now.saturating_duration_since(c.last_heard);
            let reason = if quiet >= w.silent_after {
                DropReason::Silent
            } else if w.move_slow && held_for >= SLOW_HOLD && quiet >= SLOW_HOLD.max(w.beat * 2) {
                // Holding everyone and not even beating: it is gone; no follow-up waits for it.
                DropReason::Silent
            } else if w.move_slow && holds && lossy.is_some() {
                let (mine, m) = lossy.unwrap_or_default();
                DropReason::Lossy {
                    loss_permille: permille(mine),
                    group_permille: permille(m),
                }
            } else if w.move_slow && held_for >= SLOW_HOLD {
                DropReason::Slow
            } else if now.saturating_duration_since(c.last_progress) >= w.drop_after {
                DropReason::NoProgress
            } else {
                continue;
            };
            c.state = ClientState::Dropped;
            c.dropped_for = Some(reason);
            dropped.push((*id, c.addr, reason));
        }
        self.recount();
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
        let sweep = Sweep {
            pushed: 8,
            base: 0,
            window: 8,
            window_full: false,
            silent_after: after,
            beat: Duration::from_secs(1),
            drop_after: after,
            move_slow: false,
        };
        assert!(c.sweep(t1, sweep).is_empty());
        let t2 = t + Duration::from_secs(10);
        let dropped = c.sweep(t2, sweep);
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

    #[test]
    fn a_client_alone_holding_the_full_window_is_moved_and_a_loss_outlier_sooner() {
        let t = Instant::now();
        let mut c = Clients::new(8);
        for id in 1..=4 {
            c.register(t, true, id, addr(id as u8), 1, 0);
        }
        c.started(t);
        for (id, low, loss) in [(1, 0, 0.01), (2, 64, 0.01), (3, 64, 0.012), (4, 64, 0.30)] {
            if let Some(x) = c.map.get_mut(&id) {
                x.low = low;
                x.loss = Some(loss);
            }
        }
        let sweep = Sweep {
            pushed: 64,
            base: 0,
            window: 64,
            window_full: true,
            silent_after: Duration::from_secs(60),
            beat: Duration::from_secs(1),
            drop_after: Duration::from_secs(60),
            move_slow: true,
        };
        assert!(c.sweep(t, sweep).is_empty(), "holding starts now");
        assert!(c.map[&4].outlier, "30% against 1%");
        assert!(!c.map[&1].outlier);
        // Nobody gathers holes waiting for the outlier's, which do not count when moving.
        assert_eq!((c.live_below(64, false), c.live_below(64, true)), (4, 3));
        assert_eq!((c.live_below(63, false), c.live_below(0, true)), (1, 1));
        let later = t + SLOW_HOLD;
        let tick = |c: &mut Clients, at: Instant| {
            for id in 1..=4 {
                if let Some(x) = c.map.get_mut(&id) {
                    x.last_heard = at;
                }
            }
        };
        tick(&mut c, later);
        assert_eq!(c.sweep(later, sweep), vec![(1, addr(1), DropReason::Slow)]);
        assert_eq!(c.map[&1].dropped_ack(), AckKind::Moved);
        // The outlier goes the moment it holds the window.
        if let Some(x) = c.map.get_mut(&4) {
            x.low = 0;
        }
        let moved = c.sweep(later, sweep);
        assert!(
            matches!(
                moved[..],
                [(
                    4,
                    _,
                    DropReason::Lossy {
                        loss_permille: 300,
                        ..
                    }
                )]
            ),
            "{moved:?}"
        );
        // With -slow=wait nobody is moved.
        let mut c2 = Clients::new(4);
        for id in 1..=2 {
            c2.register(t, true, id, addr(id as u8), 1, 0);
        }
        c2.started(t);
        if let Some(x) = c2.map.get_mut(&2) {
            x.low = 64;
        }
        let wait = Sweep {
            move_slow: false,
            ..sweep
        };
        tick(&mut c2, t);
        assert!(c2.sweep(t, wait).is_empty());
        tick(&mut c2, later);
        assert!(c2.sweep(later, wait).is_empty());
    }

    #[test]
    fn a_reported_client_is_waited_for_until_it_left_or_a_repeat_would_have_come() {
        let t = Instant::now();
        let quiet = Duration::from_millis(400);
        let mut c = Clients::new(8);
        for id in 1..=2 {
            c.register(t, true, id, addr(id as u8), 1, 0);
        }
        assert!(c.nothing_to_repeat(t, quiet), "nobody reported");
        for id in 1..=2 {
            if let Some(x) = c.map.get_mut(&id) {
                x.state = ClientState::Done;
                x.acked_at = Some(t);
            }
        }
        let soon = t + Duration::from_millis(100);
        assert!(!c.nothing_to_repeat(soon, quiet), "its acks may be lost");
        if let Some(x) = c.map.get_mut(&2) {
            x.left = true;
        }
        assert!(
            !c.nothing_to_repeat(soon, quiet),
            "client 1 did not say Bye"
        );
        if let Some(x) = c.map.get_mut(&1) {
            x.left = true;
        }
        assert!(c.nothing_to_repeat(soon, quiet), "both left");
        if let Some(x) = c.map.get_mut(&1) {
            x.left = false;
        }
        assert!(c.nothing_to_repeat(t + quiet + Duration::from_millis(1), quiet));
    }
}
