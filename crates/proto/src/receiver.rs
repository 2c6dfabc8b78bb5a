//! The client side: find the session, register, collect objects, report.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::fec::{self, Added, Assembly, MAX_K};
use crate::key::SessionKey;
use crate::name::SessionName;
use crate::sender::tie_break;
use crate::wire::{
    self, AckKind, Announce, Body, Data, Header, Need, OpenError, Packet, Phase, Register, Report,
    Status, MAX_NEEDS, NEED_ALL,
};
use crate::{Dest, Rng, Stats, Transmit};

/// Register retransmission period until acknowledged.
const REGISTER_EVERY: Duration = Duration::from_millis(250);
/// Report retransmission period until acknowledged.
const REPORT_EVERY: Duration = Duration::from_millis(300);
/// Auth failures before the one `AuthFailures` event.
const AUTH_EVENT_AFTER: u64 = 3;
/// Events waiting for the engine before new objects are refused (the master repairs them later).
const MAX_EVENTS: usize = 4096;

/// Client settings. Build with [`ReceiverConfig::new`], then adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// Session name to join.
    pub name: SessionName,
    /// Optional key; must match the master's.
    pub key: Option<SessionKey>,
    /// Random id of this client (the engine draws it from the OS).
    pub client_id: u64,
    /// Seed of the feedback jitter.
    pub seed: u64,
    /// Shown by the master (host name); at most 64 bytes are sent.
    pub label: String,
    /// Silence from the master after which `MasterLost` is reported (default 15 s).
    pub master_timeout: Duration,
    /// Largest object accepted (default 64 MiB).
    pub max_object_len: u32,
}

impl ReceiverConfig {
    /// Defaults; `client_id` also seeds the jitter.
    pub fn new(name: SessionName, client_id: u64, label: &str) -> Self {
        Self {
            name,
            key: None,
            client_id,
            seed: client_id,
            label: wire::clamp_text(label, wire::MAX_LABEL),
            master_timeout: Duration::from_secs(15),
            max_object_len: 64 << 20,
        }
    }
}

/// A call that does not fit the receiver's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// `register` without an announced session, or after the session ended.
    #[error("no announced session to register with")]
    NoSession,
    /// `report_done` before every object and the trailer arrived.
    #[error("report_done before every object and the trailer arrived")]
    Incomplete,
    /// The session is over (completed, aborted, lost, declined).
    #[error("the session is over")]
    Closed,
}

/// What the receiver reports to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// A master of our name announced itself: check `session_info`, then `register` or `decline`.
    /// Reported again if a winning master replaces it while gathering, or for the next run after
    /// `Queued`/`Dropped` (then registration is automatic).
    Announced {
        /// The master's session id.
        session_id: u64,
        /// The master's address.
        master: SocketAddr,
        /// Opaque geometry.
        session_info: Vec<u8>,
        /// Number of objects.
        object_count: u32,
    },
    /// The master counted us in.
    Registered,
    /// The run had already started: we wait for the next run of this name.
    Queued,
    /// The master dropped us (silent or too slow); we wait for the next run of this name.
    Dropped,
    /// The transfer started.
    Started,
    /// Object `index`, complete; each object is reported once. Call `object_done` once written.
    Object {
        /// Object index.
        index: u32,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Every object arrived and this is the trailer: verify, then `report_done`/`report_failed`.
    Trailer(Vec<u8>),
    /// The master aborted.
    Aborted {
        /// Its reason.
        reason: String,
    },
    /// Nothing heard from the master for `master_timeout`.
    MasterLost,
    /// The master acknowledged our report: the session is over for us.
    Completed,
    /// Packets of our session name fail authentication (wrong or missing `-key`); reported once.
    AuthFailures {
        /// Failures so far.
        count: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Listening,
    Announced,
    Registering,
    Registered,
    Running,
    /// Everything arrived; waiting for the engine's verdict.
    Complete,
    Reporting,
    Completed,
    Declined,
    Aborted,
    Lost,
}

#[derive(Debug, Clone)]
struct Session {
    id: u64,
    master: SocketAddr,
    yields: bool,
    object_count: u32,
    symbol_size: u16,
    window: u32,
}

/// Objects below `low` are all in; those above it are listed.
#[derive(Debug, Default)]
struct DoneSet {
    low: u32,
    above: BTreeSet<u32>,
}

impl DoneSet {
    fn contains(&self, i: u32) -> bool {
        i < self.low || self.above.contains(&i)
    }
    fn insert(&mut self, i: u32) -> bool {
        if self.contains(i) {
            return false;
        }
        self.above.insert(i);
        while self.above.remove(&self.low) {
            self.low += 1;
        }
        true
    }
}

/// The client's state machine. See the crate docs for how to drive it.
///
/// A receiver never blocks on the disk: complete objects are handed out as events, and an object
/// counts as done for the master only after [`Receiver::object_done`]. A client whose writer falls
/// behind therefore holds the master's window (at most `window` objects in memory here), the master
/// waits for it at most `drop_after`, then drops it (it hears `Dropped`) and the others go on.
#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    name_hash: [u8; 8],
    state: State,
    session: Option<Session>,
    ignore_session: Option<u64>,
    auto_register: bool,
    start_seen: bool,
    partial: BTreeMap<u32, Assembly>,
    decoded: DoneSet,
    confirmed: DoneSet,
    objects_done: u32,
    bytes_done: u64,
    lens: BTreeMap<u32, u32>,
    sent_through: u32,
    trailer: Option<Vec<u8>>,
    trailer_emitted: bool,
    highest_seq: u64,
    highest_at: Option<Instant>,
    seq_at_status: u64,
    received_since: u32,
    last_data: Option<Instant>,
    last_master: Option<Instant>,
    next_status: Option<Instant>,
    next_register: Option<Instant>,
    report: Option<(bool, String)>,
    next_report: Option<Instant>,
    auth_failures: u64,
    control: VecDeque<Transmit>,
    events: VecDeque<ReceiverEvent>,
    rng: Rng,
    stats: Stats,
}

impl Receiver {
    /// A receiver listening for an Announce of its session name.
    pub fn new(cfg: ReceiverConfig) -> Self {
        Self {
            name_hash: cfg.name.hash(),
            rng: Rng::new(cfg.seed),
            cfg,
            state: State::Listening,
            session: None,
            ignore_session: None,
            auto_register: false,
            start_seen: false,
            partial: BTreeMap::new(),
            decoded: DoneSet::default(),
            confirmed: DoneSet::default(),
            objects_done: 0,
            bytes_done: 0,
            lens: BTreeMap::new(),
            sent_through: 0,
            trailer: None,
            trailer_emitted: false,
            highest_seq: 0,
            highest_at: None,
            seq_at_status: 0,
            received_since: 0,
            last_data: None,
            last_master: None,
            next_status: None,
            next_register: None,
            report: None,
            next_report: None,
            auth_failures: 0,
            control: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The session id we follow, if any.
    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Objects the engine confirmed with `object_done`.
    pub fn objects_done(&self) -> u32 {
        self.objects_done
    }

    /// The next event for the engine.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Joins the announced session: sends Register until the master answers.
    pub fn register(&mut self, now: Instant) -> Result<(), ReceiverError> {
        match self.state {
            State::Announced => {
                self.state = State::Registering;
                self.next_register = Some(now);
                Ok(())
            }
            State::Registering | State::Registered | State::Running => Ok(()),
            State::Listening => Err(ReceiverError::NoSession),
            _ => Err(ReceiverError::Closed),
        }
    }

    /// Refuses the announced session (e.g. the target disk is too small); the receiver falls silent.
    pub fn decline(&mut self, reason: &str) {
        let _ = reason;
        self.state = State::Declined;
        self.partial.clear();
    }

    /// The engine wrote object `index`: it now counts as done for the master (releasing its window).
    pub fn object_done(&mut self, index: u32) {
        if self.decoded.contains(index) && self.confirmed.insert(index) {
            self.objects_done += 1;
            self.bytes_done += u64::from(self.lens.remove(&index).unwrap_or(0));
        }
    }

    /// Everything verified: tell the master (retransmitted until acknowledged, then `Completed`).
    pub fn report_done(&mut self, now: Instant) -> Result<(), ReceiverError> {
        match self.state {
            State::Complete => {
                self.start_report(now, true, String::new());
                Ok(())
            }
            State::Running | State::Registered => Err(ReceiverError::Incomplete),
            _ => Err(ReceiverError::Closed),
        }
    }

    /// Something failed (verification, disk): tell the master, which lists the reason.
    pub fn report_failed(&mut self, now: Instant, reason: String) -> Result<(), ReceiverError> {
        match self.state {
            State::Complete | State::Running | State::Registered => {
                self.start_report(now, false, reason);
                Ok(())
            }
            _ => Err(ReceiverError::Closed),
        }
    }

    fn start_report(&mut self, now: Instant, ok: bool, reason: String) {
        self.state = State::Reporting;
        self.report = Some((ok, wire::clamp_text(&reason, wire::MAX_REASON)));
        self.next_report = Some(now);
        self.partial.clear();
    }

    fn packet(&self, body: Body) -> Option<Transmit> {
        let s = self.session.as_ref()?;
        let payload = wire::seal(
            &Packet {
                name_hash: self.name_hash,
                session_id: s.id,
                body,
            },
            self.cfg.key.as_ref(),
        );
        Some(Transmit {
            dest: Dest::Peer(s.master),
            payload,
        })
    }

    fn send(&mut self, body: Body) {
        if let Some(t) = self.packet(body) {
            self.stats.packets_sent += 1;
            self.stats.bytes_sent += t.payload.len() as u64;
            // At most a few control packets are ever due at once; keep it bounded anyway.
            if self.control.len() < 64 {
                self.control.push_back(t);
            }
        }
    }

    /// Feeds one received datagram.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        let Ok(header) = Header::peek(datagram) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if header.name_hash != self.name_hash {
            self.stats.dropped_stray += 1;
            return;
        }
        let packet = match wire::open(datagram, self.cfg.key.as_ref()) {
            Ok(p) => p,
            Err(OpenError::Auth) => {
                self.stats.mac_failures += 1;
                self.auth_failures += 1;
                if self.auth_failures == AUTH_EVENT_AFTER {
                    self.events.push_back(ReceiverEvent::AuthFailures {
                        count: self.auth_failures,
                    });
                }
                return;
            }
            Err(OpenError::Decode(_)) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        let ours = self
            .session
            .as_ref()
            .is_some_and(|s| s.id == packet.session_id)
            && self.ignore_session != Some(packet.session_id);
        if matches!(
            self.state,
            State::Completed | State::Declined | State::Aborted | State::Lost
        ) {
            if ours {
                self.stats.ignored += 1;
            } else {
                self.stats.dropped_stray += 1;
            }
            return;
        }
        if !ours {
            match packet.body {
                Body::Announce(a) => self.on_foreign_announce(now, from, packet.session_id, a),
                _ => self.stats.dropped_stray += 1,
            }
            return;
        }
        self.last_master = Some(now);
        match packet.body {
            Body::Announce(a) => {
                if a.phase == Phase::Running {
                    self.on_start(now);
                }
            }
            Body::Ack(a) if a.client_id == self.cfg.client_id => self.on_ack(now, a.kind),
            Body::Start { .. } => self.on_start(now),
            Body::Data(d) => self.on_data(now, d),
            Body::End { trailer } => {
                if self.trailer.is_none() {
                    self.trailer = Some(trailer);
                    self.check_complete(now);
                }
            }
            Body::Abort { reason } => {
                self.state = State::Aborted;
                self.partial.clear();
                self.events.push_back(ReceiverEvent::Aborted { reason });
            }
            _ => self.stats.ignored += 1,
        }
    }

    fn on_foreign_announce(&mut self, now: Instant, from: SocketAddr, id: u64, a: Announce) {
        if self.ignore_session == Some(id) {
            self.stats.dropped_stray += 1;
            return;
        }
        let take = match (&self.session, self.state) {
            (None, State::Listening) => true,
            // After Queued/Dropped: the next run of this name.
            (Some(_), State::Listening) => true,
            // Two masters gathering under one name: follow the one that will win the tie-break.
            (Some(cur), State::Announced | State::Registering | State::Registered) => {
                a.phase == Phase::Gathering && cur.yields && (!a.yields || tie_break(id, cur.id))
            }
            _ => false,
        };
        if !take {
            self.stats.dropped_stray += 1;
            return;
        }
        let rejoin =
            self.auto_register || matches!(self.state, State::Registering | State::Registered);
        self.reset_transfer();
        self.session = Some(Session {
            id,
            master: from,
            yields: a.yields,
            object_count: a.object_count,
            symbol_size: a.symbol_size,
            window: u32::from(a.window),
        });
        self.last_master = Some(now);
        self.state = State::Announced;
        self.events.push_back(ReceiverEvent::Announced {
            session_id: id,
            master: from,
            session_info: a.session_info,
            object_count: a.object_count,
        });
        if rejoin {
            self.state = State::Registering;
            self.next_register = Some(now);
        }
        if a.phase == Phase::Running {
            self.start_seen = true;
        }
    }

    fn reset_transfer(&mut self) {
        self.start_seen = false;
        self.partial.clear();
        self.decoded = DoneSet::default();
        self.confirmed = DoneSet::default();
        self.objects_done = 0;
        self.bytes_done = 0;
        self.lens.clear();
        self.sent_through = 0;
        self.trailer = None;
        self.trailer_emitted = false;
        self.highest_seq = 0;
        self.highest_at = None;
        self.seq_at_status = 0;
        self.received_since = 0;
        self.last_data = None;
        self.next_status = None;
    }

    /// Stop following this run and wait for the next one of the same name.
    fn requeue(&mut self, event: ReceiverEvent) {
        self.ignore_session = self.session.as_ref().map(|s| s.id);
        self.state = State::Listening;
        self.auto_register = true;
        self.next_register = None;
        self.reset_transfer();
        self.events.push_back(event);
    }

    fn on_ack(&mut self, now: Instant, kind: AckKind) {
        match (kind, self.state) {
            (AckKind::Registered, State::Registering) => {
                self.state = State::Registered;
                self.next_register = None;
                self.events.push_back(ReceiverEvent::Registered);
                if self.start_seen {
                    self.on_start(now);
                }
            }
            (AckKind::Queued, State::Registering | State::Registered) => {
                self.requeue(ReceiverEvent::Queued);
            }
            (
                AckKind::Dropped,
                State::Registering
                | State::Registered
                | State::Running
                | State::Complete
                | State::Reporting,
            ) => {
                self.requeue(ReceiverEvent::Dropped);
            }
            (AckKind::Report, State::Reporting) => {
                self.state = State::Completed;
                self.next_report = None;
                self.events.push_back(ReceiverEvent::Completed);
            }
            _ => self.stats.ignored += 1,
        }
    }

    fn on_start(&mut self, now: Instant) {
        self.start_seen = true;
        if self.state == State::Registered {
            self.state = State::Running;
            self.events.push_back(ReceiverEvent::Started);
            self.next_status = Some(now + self.rng.millis(50, 200));
            self.check_complete(now);
        }
    }

    fn on_data(&mut self, now: Instant, d: Data) {
        // Data implies start; while our registration is unanswered we keep it in case we are in.
        self.on_start(now);
        if !matches!(self.state, State::Registering | State::Running) {
            self.stats.ignored += 1;
            return;
        }
        let Some(s) = &self.session else { return };
        let len_ok = d.object_len <= self.cfg.max_object_len
            && fec::source_count(d.object_len, s.symbol_size) <= MAX_K;
        if d.symbol.len() != usize::from(s.symbol_size)
            || d.object >= s.object_count
            || !len_ok
            // The master never sends beyond its window, whose base is at most our confirmed low.
            || d.object >= self.confirmed.low.saturating_add(s.window)
        {
            self.stats.dropped_invalid_data += 1;
            return;
        }
        let symbol_size = s.symbol_size;
        self.last_data = Some(now);
        if d.seq > self.seq_at_status {
            self.received_since = self.received_since.saturating_add(1);
        }
        if d.seq > self.highest_seq {
            self.highest_seq = d.seq;
            self.highest_at = Some(now);
        }
        self.sent_through = self.sent_through.max(d.sent_through.min(s.object_count));
        if self.decoded.contains(d.object) {
            self.stats.duplicates += 1;
            return;
        }
        if self.events.len() >= MAX_EVENTS {
            // The engine is not draining: refuse rather than grow; repair brings it again.
            self.stats.dropped_invalid_data += 1;
            return;
        }
        let a = self
            .partial
            .entry(d.object)
            .or_insert_with(|| Assembly::new(d.object_len, symbol_size));
        if a.len != d.object_len {
            self.stats.dropped_invalid_data += 1;
            return;
        }
        match a.add(d.esi, &d.symbol) {
            Added::Duplicate => self.stats.duplicates += 1,
            Added::Stored => {}
            Added::Complete(bytes) => {
                self.partial.remove(&d.object);
                self.decoded.insert(d.object);
                self.lens.insert(d.object, d.object_len);
                self.events.push_back(ReceiverEvent::Object {
                    index: d.object,
                    bytes,
                });
                self.check_complete(now);
            }
        }
    }

    fn check_complete(&mut self, now: Instant) {
        let Some(s) = &self.session else { return };
        if self.state == State::Running
            && !self.trailer_emitted
            && self.decoded.low >= s.object_count
        {
            if let Some(t) = &self.trailer {
                self.trailer_emitted = true;
                self.state = State::Complete;
                self.events.push_back(ReceiverEvent::Trailer(t.clone()));
                self.next_status = Some(now);
            }
        }
    }

    fn status(&mut self, now: Instant) -> Status {
        let mut needs = Vec::new();
        if let Some(s) = &self.session {
            // Objects whose source symbols were all sent: below `sent_through`, or all after End.
            let bound = if self.trailer.is_some() {
                s.object_count
            } else {
                self.sent_through
            };
            let bound = bound.min(self.decoded.low.saturating_add(s.window));
            for o in self.decoded.low..bound {
                if needs.len() >= MAX_NEEDS {
                    break;
                }
                if self.decoded.contains(o) {
                    continue;
                }
                let count = match self.partial.get(&o) {
                    Some(a) => a.need().clamp(1, u32::from(NEED_ALL - 1)) as u16,
                    None => NEED_ALL,
                };
                needs.push(Need { object: o, count });
            }
        }
        let expected = self.highest_seq.saturating_sub(self.seq_at_status);
        let expected = u32::try_from(expected).unwrap_or(u32::MAX);
        let lost = expected.saturating_sub(self.received_since);
        self.seq_at_status = self.highest_seq;
        self.received_since = 0;
        Status {
            client_id: self.cfg.client_id,
            low: self.confirmed.low,
            objects_done: self.objects_done,
            bytes: self.bytes_done,
            highest_seq: self.highest_seq,
            held_us: self.highest_at.map_or(0, |t| {
                u32::try_from(now.saturating_duration_since(t).as_micros()).unwrap_or(u32::MAX)
            }),
            lost,
            expected,
            needs,
        }
    }

    fn on_time(&mut self, now: Instant) {
        let live = matches!(
            self.state,
            State::Announced
                | State::Registering
                | State::Registered
                | State::Running
                | State::Complete
                | State::Reporting
        );
        if !live {
            return;
        }
        if self
            .last_master
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.master_timeout)
        {
            self.state = State::Lost;
            self.partial.clear();
            self.events.push_back(ReceiverEvent::MasterLost);
            return;
        }
        if self.state == State::Registering && self.next_register.is_some_and(|t| now >= t) {
            self.next_register = Some(now + REGISTER_EVERY);
            let body = Body::Register(Register {
                client_id: self.cfg.client_id,
                label: self.cfg.label.clone(),
            });
            self.send(body);
        }
        if matches!(self.state, State::Running | State::Complete)
            && self.next_status.is_some_and(|t| now >= t)
        {
            let st = self.status(now);
            // Idle (nothing missing and no data for a while): report less often.
            let quiet = st.needs.is_empty()
                && self
                    .last_data
                    .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            let next = if self.state == State::Complete || quiet {
                self.rng.millis(500, 1000)
            } else {
                self.rng.millis(50, 200)
            };
            self.next_status = Some(now + next);
            self.send(Body::Status(st));
        }
        if self.state == State::Reporting && self.next_report.is_some_and(|t| now >= t) {
            self.next_report = Some(now + REPORT_EVERY);
            if let Some((ok, reason)) = self.report.clone() {
                let body = Body::Report(Report {
                    client_id: self.cfg.client_id,
                    ok,
                    reason,
                });
                self.send(body);
            }
        }
    }

    /// The next datagram to send (always unicast to the master).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.on_time(now);
        self.control.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |i: Option<Instant>| {
            if let Some(i) = i {
                t = Some(t.map_or(i, |t| t.min(i)));
            }
        };
        match self.state {
            State::Announced | State::Registered => {}
            State::Registering => at(self.next_register),
            State::Running | State::Complete => at(self.next_status),
            State::Reporting => at(self.next_report),
            _ => return None,
        }
        at(self.last_master.map(|l| l + self.cfg.master_timeout));
        t
    }

    /// Runs timers (same as `poll_transmit` without taking a datagram).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.on_time(now);
    }
}
