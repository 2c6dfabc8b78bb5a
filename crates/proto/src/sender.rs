//! The master side: gathering, start rules, paced transfer with RaptorQ repair, results.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raptorq::SourceBlockEncoder;

use crate::fec::{self, MAX_K};
use crate::key::{SessionKey, MAC_LEN};
use crate::name::SessionName;
use crate::rate::{Pacer, PeerRate};
use crate::wire::{
    self, Ack, AckKind, Announce, Body, Data, Header, OpenError, Packet, Phase, Status,
    DATA_OVERHEAD, MAX_ESI, MAX_SESSION_INFO, MAX_TRAILER, NEED_ALL,
};
use crate::{Dest, Stats, Transmit};

/// How often Start and Abort are repeated, and how many times.
const REPEAT_EVERY: Duration = Duration::from_millis(100);
const REPEATS: u8 = 5;
/// How often End is repeated while receivers finish.
const END_EVERY: Duration = Duration::from_millis(500);
/// Housekeeping period (drops, window, finish check).
const TICK: Duration = Duration::from_millis(100);
/// Progress events per client at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Repair encoders kept at once; each costs about twice its object in memory.
const MAX_ENCODERS: usize = 8;
/// An encoder unused this long is freed.
const ENCODER_IDLE: Duration = Duration::from_secs(2);
/// Repair symbols generated per encoder call.
const REPAIR_BATCH: u32 = 32;
/// Control packets waiting to be sent (acks...); beyond it the oldest are dropped.
const MAX_CONTROL_QUEUE: usize = 4096;
/// Events waiting for the engine; beyond it progress events are dropped first.
const MAX_EVENTS: usize = 65_536;
/// Sequence numbers remembered per object to tell in-flight symbols from lost ones.
const MAX_SEQS_PER_OBJECT: usize = 4096;
/// Data packet send times remembered for round-trip measurement.
const MAX_SENT_LOG: usize = 16_384;
/// Late joiners remembered, to report each once.
const MAX_QUEUED_MEMORY: usize = 4096;

/// Master settings. Build with [`SenderConfig::new`], then adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SenderConfig {
    /// Session name.
    pub name: SessionName,
    /// Random per-run id (the engine draws it from the OS): packets of other runs are refused.
    pub session_id: u64,
    /// Optional key: every packet is then authenticated.
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
    /// Adaptive rate: start value in bit/s (default 400 Mbit/s).
    pub initial_rate: u64,
    /// Adaptive rate: floor in bit/s (default 1 Mbit/s).
    pub min_rate: u64,
    /// Adaptive rate: ceiling in bit/s (default 10 Gbit/s).
    pub max_rate: u64,
    /// Most registered clients (default 4096); more are ignored.
    pub max_clients: usize,
    /// Largest object accepted by `push_object` (default 16 MiB).
    pub max_object_len: usize,
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
            initial_rate: 400_000_000,
            min_rate: 1_000_000,
            max_rate: 10_000_000_000,
            max_clients: 4096,
            max_object_len: 16 << 20,
        }
    }
}

/// A refused [`SenderConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_payload` outside 256..=65507.
    #[error("max payload {0} is outside 256..=65507 bytes")]
    MaxPayload(usize),
    /// `session_info` too long.
    #[error("session info is {0} bytes; at most {MAX_SESSION_INFO} fit in an Announce")]
    SessionInfo(usize),
    /// `window` is zero or above 1024.
    #[error("window {0} is outside 1..=1024 objects")]
    Window(u16),
    /// `min_clients` is zero.
    #[error("min clients must be at least 1")]
    MinClients,
}

/// A refused object or trailer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// Objects must be pushed in index order.
    #[error("object {got} pushed out of order; expected object {expected}")]
    OutOfOrder {
        /// Next index expected.
        expected: u32,
        /// Index given.
        got: u32,
    },
    /// More objects than `object_count`.
    #[error("object {index} is beyond the session's {count} objects")]
    TooMany {
        /// Index given.
        index: u32,
        /// The session's object count.
        count: u32,
    },
    /// `want_objects()` was 0.
    #[error("the window is full; wait until want_objects() > 0")]
    WindowFull,
    /// The object is larger than allowed.
    #[error("object {index} is {len} bytes; at most {max} allowed")]
    TooLarge {
        /// Object index.
        index: u32,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// `finish_objects` before every object was pushed.
    #[error("finish_objects after {pushed} of {count} objects")]
    Unfinished {
        /// Objects pushed.
        pushed: u32,
        /// Objects expected.
        count: u32,
    },
    /// The trailer is too long.
    #[error("trailer is {0} bytes; at most {MAX_TRAILER} allowed")]
    Trailer(usize),
    /// The session ended, was aborted, or already finished its objects.
    #[error("the session no longer accepts objects")]
    Closed,
}

/// Why a client was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Nothing heard from it for `drop_after`.
    Silent,
    /// It made no progress for `drop_after` while holding the window back: too slow for the group.
    NoProgress,
}

/// What the master reports to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// A client registered for this run.
    ClientRegistered {
        /// Its id.
        client_id: u64,
        /// Its address.
        addr: SocketAddr,
        /// Its label (host name).
        label: String,
    },
    /// A client asked to join after the start; it was told to wait for the next run.
    ClientQueued {
        /// Its id.
        client_id: u64,
        /// Its address.
        addr: SocketAddr,
    },
    /// The transfer started.
    Started {
        /// Registered clients.
        clients: u32,
    },
    /// Progress of one client (at most every 500 ms per client).
    ClientProgress {
        /// Its id.
        client_id: u64,
        /// Objects done.
        objects_done: u32,
        /// Object bytes done.
        bytes: u64,
    },
    /// A client verified everything.
    ClientDone {
        /// Its id.
        client_id: u64,
    },
    /// A client reported a failure.
    ClientFailed {
        /// Its id.
        client_id: u64,
        /// Its reason.
        reason: String,
    },
    /// A client was dropped; the others go on without it.
    ClientDropped {
        /// Its id.
        client_id: u64,
        /// Why.
        reason: DropReason,
    },
    /// Every client is done, failed or dropped (and every object was pushed).
    Finished,
    /// Another master of this name wins the tie-break: the engine should become a client.
    ConflictingMaster {
        /// The winner's address.
        winner: SocketAddr,
        /// The winner's session id.
        winner_session: u64,
    },
}

/// Whether session `a` wins over session `b` when two masters of one name meet: the lower id wins.
pub fn tie_break(a: u64, b: u64) -> bool {
    a < b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Live,
    Done,
    Failed,
    Dropped,
}

#[derive(Debug)]
struct Client {
    addr: SocketAddr,
    state: ClientState,
    low: u32,
    objects_done: u32,
    bytes: u64,
    highest_seq: u64,
    last_heard: Instant,
    last_progress: Instant,
    next_progress_event: Instant,
    rate: PeerRate,
    /// Smoothed round-trip time: packets older than twice this are not in flight any more.
    srtt: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Gathering,
    Running,
    Finished,
    Aborted,
    Yielded,
}

struct Obj {
    data: Vec<u8>,
    k: u32,
    /// Repair symbols still to send (includes `pending`).
    owed: u32,
    next_repair: u32,
    pending: VecDeque<(u32, Vec<u8>)>,
    enc: Option<(SourceBlockEncoder, Instant)>,
    /// Sequence numbers and send times of the data packets sent for this object, ascending.
    seqs: VecDeque<(u64, Instant)>,
}

/// The master's state machine. See the crate docs for how to drive it.
pub struct Sender {
    cfg: SenderConfig,
    name_hash: [u8; 8],
    symbol_size: u16,
    packet_len: usize,
    phase: State,
    clients: BTreeMap<u64, Client>,
    queued_seen: BTreeSet<u64>,
    last_registration: Option<Instant>,
    objects: VecDeque<Obj>,
    base: u32,
    pushed: u32,
    trailer: Option<Vec<u8>>,
    next_obj: u32,
    next_esi: u32,
    seq: u64,
    control: VecDeque<Transmit>,
    events: VecDeque<SenderEvent>,
    next_announce: Instant,
    start_repeats: u8,
    next_start: Instant,
    next_end: Option<Instant>,
    abort: Option<(String, u8, Instant)>,
    next_send: Instant,
    next_tick: Instant,
    /// Send times of the latest data packets, to time round trips.
    sent_log: VecDeque<(u64, Instant)>,
    pacer: Pacer,
    stats: Stats,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("session_id", &self.cfg.session_id)
            .field("phase", &self.phase)
            .field("clients", &self.clients.len())
            .field("base", &self.base)
            .field("pushed", &self.pushed)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A master in the gathering phase; it announces itself from the first `poll_transmit`.
    pub fn new(cfg: SenderConfig, now: Instant) -> Result<Self, ConfigError> {
        if !(256..=65_507).contains(&cfg.max_payload) {
            return Err(ConfigError::MaxPayload(cfg.max_payload));
        }
        if cfg.session_info.len() > MAX_SESSION_INFO {
            return Err(ConfigError::SessionInfo(cfg.session_info.len()));
        }
        if cfg.window == 0 || cfg.window > 1024 {
            return Err(ConfigError::Window(cfg.window));
        }
        if cfg.min_clients == Some(0) {
            return Err(ConfigError::MinClients);
        }
        let mac = if cfg.key.is_some() { MAC_LEN } else { 0 };
        let symbol_size = (cfg.max_payload - DATA_OVERHEAD - mac) as u16;
        let pacer = Pacer::new(cfg.throttle, cfg.initial_rate, cfg.min_rate, cfg.max_rate);
        Ok(Self {
            name_hash: cfg.name.hash(),
            symbol_size,
            packet_len: cfg.max_payload,
            phase: State::Gathering,
            clients: BTreeMap::new(),
            queued_seen: BTreeSet::new(),
            last_registration: None,
            objects: VecDeque::new(),
            base: 0,
            pushed: 0,
            trailer: None,
            next_obj: 0,
            next_esi: 0,
            seq: 0,
            control: VecDeque::new(),
            events: VecDeque::new(),
            next_announce: now,
            start_repeats: 0,
            next_start: now,
            next_end: None,
            abort: None,
            next_send: now,
            next_tick: now,
            sent_log: VecDeque::new(),
            pacer,
            stats: Stats::default(),
            cfg,
        })
    }

    /// Bytes of symbol per data packet.
    pub fn symbol_size(&self) -> u16 {
        self.symbol_size
    }

    /// This run's session id.
    pub fn session_id(&self) -> u64 {
        self.cfg.session_id
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current data rate in bit/s (the throttle's equivalent when one is set).
    pub fn current_rate(&self) -> u64 {
        self.pacer.rate(self.packet_len)
    }

    /// Registered clients (all states).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// How many more objects `push_object` accepts now.
    ///
    /// The master holds at most `window` objects: an object is released once every live client
    /// reports all objects up to it done. Memory is therefore bounded by `window × max object size`
    /// plus at most 8 repair encoders (each about twice its object).
    pub fn want_objects(&self) -> usize {
        if self.trailer.is_some() || !matches!(self.phase, State::Gathering | State::Running) {
            return 0;
        }
        let held = (self.pushed - self.base) as usize;
        let left = (self.cfg.object_count - self.pushed) as usize;
        (usize::from(self.cfg.window).saturating_sub(held)).min(left)
    }

    /// Hands over object `index` (in order, while `want_objects() > 0`).
    pub fn push_object(&mut self, index: u32, data: Vec<u8>) -> Result<(), PushError> {
        if self.trailer.is_some() || !matches!(self.phase, State::Gathering | State::Running) {
            return Err(PushError::Closed);
        }
        if index >= self.cfg.object_count {
            return Err(PushError::TooMany {
                index,
                count: self.cfg.object_count,
            });
        }
        if index != self.pushed {
            return Err(PushError::OutOfOrder {
                expected: self.pushed,
                got: index,
            });
        }
        let max = self
            .cfg
            .max_object_len
            .min(MAX_K as usize * usize::from(self.symbol_size))
            .min(u32::MAX as usize);
        if data.len() > max {
            return Err(PushError::TooLarge {
                index,
                len: data.len(),
                max,
            });
        }
        if self.want_objects() == 0 {
            return Err(PushError::WindowFull);
        }
        let k = fec::source_count(data.len() as u32, self.symbol_size);
        self.objects.push_back(Obj {
            data,
            k,
            owed: 0,
            next_repair: 0,
            pending: VecDeque::new(),
            enc: None,
            seqs: VecDeque::new(),
        });
        self.pushed += 1;
        self.advance_window();
        Ok(())
    }

    /// Declares the end of the objects; `trailer` (≤ 1024 bytes) reaches every client before it may
    /// complete.
    pub fn finish_objects(&mut self, trailer: Vec<u8>) -> Result<(), PushError> {
        if self.trailer.is_some() || !matches!(self.phase, State::Gathering | State::Running) {
            return Err(PushError::Closed);
        }
        if self.pushed != self.cfg.object_count {
            return Err(PushError::Unfinished {
                pushed: self.pushed,
                count: self.cfg.object_count,
            });
        }
        if trailer.len() > MAX_TRAILER {
            return Err(PushError::Trailer(trailer.len()));
        }
        self.trailer = Some(trailer);
        Ok(())
    }

    /// Starts the transfer now (the `s` key). Does nothing unless gathering.
    pub fn start_now(&mut self, now: Instant) {
        if self.phase == State::Gathering {
            self.start(now);
        }
    }

    /// Gives up: tells the clients (Abort, repeated 5 times), then falls silent.
    pub fn abort(&mut self, now: Instant, reason: &str) {
        if matches!(self.phase, State::Gathering | State::Running) {
            self.phase = State::Aborted;
            self.abort = Some((wire::clamp_text(reason, wire::MAX_REASON), REPEATS, now));
            self.objects.clear();
        }
    }

    /// Whether the session is over (finished, aborted or yielded) and nothing is left to send.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.phase,
            State::Finished | State::Aborted | State::Yielded
        ) && self.abort.is_none()
            && self.control.is_empty()
    }

    /// The next event for the engine.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    fn event(&mut self, e: SenderEvent) {
        if self.events.len() >= MAX_EVENTS {
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, SenderEvent::ClientProgress { .. }))
            {
                self.events.remove(pos);
            }
        }
        self.events.push_back(e);
    }

    fn packet(&self, body: Body) -> Vec<u8> {
        wire::seal(
            &Packet {
                name_hash: self.name_hash,
                session_id: self.cfg.session_id,
                body,
            },
            self.cfg.key.as_ref(),
        )
    }

    fn queue(&mut self, dest: Dest, body: Body) {
        if self.control.len() >= MAX_CONTROL_QUEUE {
            self.control.pop_front();
        }
        let payload = self.packet(body);
        self.control.push_back(Transmit { dest, payload });
    }

    fn start(&mut self, now: Instant) {
        self.phase = State::Running;
        let clients = self.clients.len() as u32;
        for c in self.clients.values_mut() {
            c.last_heard = now;
            c.last_progress = now;
        }
        self.start_repeats = REPEATS;
        self.next_start = now;
        self.next_send = now;
        self.next_tick = now;
        self.event(SenderEvent::Started { clients });
        self.advance_window();
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
                return;
            }
            Err(OpenError::Decode(_)) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if packet.session_id != self.cfg.session_id {
            if let Body::Announce(a) = &packet.body {
                self.on_foreign_announce(from, packet.session_id, a);
            }
            self.stats.dropped_stray += 1;
            return;
        }
        if matches!(self.phase, State::Aborted | State::Yielded) {
            self.stats.ignored += 1;
            return;
        }
        match packet.body {
            Body::Register(r) => self.on_register(now, from, r.client_id, r.label),
            Body::Status(s) => self.on_status(now, from, &s),
            Body::Report(r) => self.on_report(now, from, r.client_id, r.ok, r.reason),
            _ => self.stats.ignored += 1,
        }
    }

    fn on_foreign_announce(&mut self, from: SocketAddr, other: u64, a: &Announce) {
        if self.phase != State::Gathering || !self.cfg.yield_to_earlier {
            return;
        }
        // A master started with -master never yields; between two `m` masters the lower id wins.
        if !a.yields || tie_break(other, self.cfg.session_id) {
            self.phase = State::Yielded;
            self.objects.clear();
            self.event(SenderEvent::ConflictingMaster {
                winner: from,
                winner_session: other,
            });
        }
    }

    fn on_register(&mut self, now: Instant, from: SocketAddr, client_id: u64, label: String) {
        let known = self.clients.get_mut(&client_id);
        let kind = match (self.phase, known) {
            (_, Some(c)) if c.state == ClientState::Live || self.phase == State::Gathering => {
                c.addr = from;
                AckKind::Registered
            }
            (_, Some(_)) => AckKind::Dropped,
            (State::Gathering, None) => {
                if self.clients.len() >= self.cfg.max_clients {
                    self.stats.dropped_stray += 1;
                    return;
                }
                self.clients.insert(
                    client_id,
                    Client {
                        addr: from,
                        state: ClientState::Live,
                        low: 0,
                        objects_done: 0,
                        bytes: 0,
                        highest_seq: 0,
                        last_heard: now,
                        last_progress: now,
                        next_progress_event: now,
                        rate: PeerRate::default(),
                        srtt: None,
                    },
                );
                self.last_registration = Some(now);
                self.event(SenderEvent::ClientRegistered {
                    client_id,
                    addr: from,
                    label,
                });
                if self
                    .cfg
                    .min_clients
                    .is_some_and(|n| self.clients.len() >= n as usize)
                {
                    self.start(now);
                }
                AckKind::Registered
            }
            (_, None) => {
                if self.queued_seen.len() < MAX_QUEUED_MEMORY && self.queued_seen.insert(client_id)
                {
                    self.event(SenderEvent::ClientQueued {
                        client_id,
                        addr: from,
                    });
                }
                AckKind::Queued
            }
        };
        self.queue(Dest::Peer(from), Body::Ack(Ack { client_id, kind }));
    }

    fn on_status(&mut self, now: Instant, from: SocketAddr, s: &Status) {
        let seq_now = self.seq;
        let sent_at = self
            .sent_log
            .binary_search_by_key(&s.highest_seq, |(q, _)| *q)
            .ok()
            .and_then(|i| self.sent_log.get(i))
            .map(|(_, t)| *t);
        let Some(c) = self.clients.get_mut(&s.client_id) else {
            self.stats.dropped_stray += 1;
            return;
        };
        match c.state {
            ClientState::Live => {}
            ClientState::Dropped => {
                let client_id = s.client_id;
                self.queue(
                    Dest::Peer(from),
                    Body::Ack(Ack {
                        client_id,
                        kind: AckKind::Dropped,
                    }),
                );
                return;
            }
            ClientState::Done | ClientState::Failed => {
                self.stats.ignored += 1;
                return;
            }
        }
        if self.phase == State::Gathering {
            c.last_heard = now;
            self.stats.ignored += 1;
            return;
        }
        c.addr = from;
        c.last_heard = now;
        let low = s.low.min(self.pushed);
        if low > c.low || s.objects_done > c.objects_done {
            c.last_progress = now;
        }
        c.low = c.low.max(low);
        c.objects_done = c.objects_done.max(s.objects_done);
        c.bytes = c.bytes.max(s.bytes);
        let highest = s.highest_seq.min(seq_now);
        c.highest_seq = c.highest_seq.max(highest);
        if let Some(t) = sent_at {
            // Round trip = time since we sent its newest packet, minus how long it held it.
            let rtt = now
                .saturating_duration_since(t)
                .saturating_sub(Duration::from_micros(u64::from(s.held_us)));
            c.srtt = Some(c.srtt.map_or(rtt, |v| (v * 7 + rtt) / 8));
            self.pacer
                .on_report(&mut c.rate, s.lost, s.expected, rtt, now);
        }
        let in_flight_for =
            c.srtt.unwrap_or(Duration::from_millis(20)) * 2 + Duration::from_millis(2);
        if now >= c.next_progress_event {
            c.next_progress_event = now + PROGRESS_EVERY;
            let e = SenderEvent::ClientProgress {
                client_id: s.client_id,
                objects_done: c.objects_done,
                bytes: c.bytes,
            };
            self.event(e);
        }
        let recent = now.checked_sub(in_flight_for);
        for need in &s.needs {
            self.on_need(need.object, need.count, highest, recent);
        }
        self.advance_window();
    }

    /// One receiver lacks `count` symbols of `object`, having seen data up to `highest`: schedule
    /// the max need over receivers, minus what is still in flight to it.
    /// Packets sent after `recent` and newer than `highest` may still be on their way.
    fn on_need(&mut self, object: u32, count: u16, highest: u64, recent: Option<Instant>) {
        if object < self.base || object >= self.pushed || object > self.next_obj {
            return;
        }
        let next_esi = self.next_esi;
        let in_first_pass = object == self.next_obj;
        let Some(o) = self.objects.get_mut((object - self.base) as usize) else {
            return;
        };
        // Source symbols not sent yet will still come: they are not repair.
        let unsent_sources = if in_first_pass { o.k - next_esi } else { 0 };
        let count = if count == NEED_ALL {
            o.k
        } else {
            u32::from(count).min(o.k + 64)
        };
        let in_flight = o
            .seqs
            .iter()
            .rev()
            .take_while(|(q, t)| *q > highest && recent.is_none_or(|r| *t > r))
            .count() as u32;
        let room = (MAX_ESI - o.k).saturating_sub(o.next_repair + o.owed);
        let extra = count
            .saturating_sub(in_flight + unsent_sources)
            .min(o.owed + room);
        o.owed = o.owed.max(extra);
    }

    fn on_report(
        &mut self,
        now: Instant,
        from: SocketAddr,
        client_id: u64,
        ok: bool,
        reason: String,
    ) {
        let Some(c) = self.clients.get_mut(&client_id) else {
            self.stats.dropped_stray += 1;
            return;
        };
        c.last_heard = now;
        let kind = match c.state {
            ClientState::Dropped => AckKind::Dropped,
            ClientState::Done | ClientState::Failed => AckKind::Report,
            ClientState::Live if self.phase == State::Gathering => {
                self.stats.ignored += 1;
                return;
            }
            ClientState::Live => {
                if ok {
                    c.state = ClientState::Done;
                    c.low = self.cfg.object_count;
                    self.event(SenderEvent::ClientDone { client_id });
                } else {
                    c.state = ClientState::Failed;
                    self.event(SenderEvent::ClientFailed { client_id, reason });
                }
                self.advance_window();
                AckKind::Report
            }
        };
        self.queue(Dest::Peer(from), Body::Ack(Ack { client_id, kind }));
    }

    /// Releases the objects every live client has done.
    fn advance_window(&mut self) {
        if self.phase == State::Gathering {
            return;
        }
        let new_base = self
            .clients
            .values()
            .filter(|c| c.state == ClientState::Live)
            .map(|c| c.low)
            .min()
            .unwrap_or(self.pushed)
            .min(self.pushed);
        while self.base < new_base {
            self.objects.pop_front();
            self.base += 1;
        }
        if self.next_obj < self.base {
            self.next_obj = self.base;
            self.next_esi = 0;
        }
    }

    fn live_clients(&self) -> usize {
        self.clients
            .values()
            .filter(|c| c.state == ClientState::Live)
            .count()
    }

    /// Runs timers; called by `poll_transmit` and `handle_timeout`.
    fn on_time(&mut self, now: Instant) {
        match self.phase {
            State::Gathering => {
                if let (Some(_), Some(last)) = (self.cfg.min_clients, self.last_registration) {
                    if now >= last + self.cfg.timeout {
                        self.start(now);
                    }
                }
            }
            State::Running => {}
            State::Finished | State::Yielded => return,
            State::Aborted => {
                if let Some((reason, left, at)) = self.abort.take() {
                    if now >= at {
                        self.queue(
                            Dest::Group,
                            Body::Abort {
                                reason: reason.clone(),
                            },
                        );
                        if left > 1 {
                            self.abort = Some((reason, left - 1, now + REPEAT_EVERY));
                        }
                    } else {
                        self.abort = Some((reason, left, at));
                    }
                }
                return;
            }
        }
        if now >= self.next_announce {
            self.next_announce = now + self.cfg.announce_interval;
            let body = Body::Announce(Announce {
                phase: if self.phase == State::Gathering {
                    Phase::Gathering
                } else {
                    Phase::Running
                },
                yields: self.cfg.yield_to_earlier,
                object_count: self.cfg.object_count,
                symbol_size: self.symbol_size,
                window: self.cfg.window,
                session_info: self.cfg.session_info.clone(),
            });
            self.queue(Dest::Group, body);
        }
        if self.phase != State::Running {
            return;
        }
        if self.start_repeats > 0 && now >= self.next_start {
            self.start_repeats -= 1;
            self.next_start = now + REPEAT_EVERY;
            let clients = self.clients.len() as u32;
            self.queue(Dest::Group, Body::Start { clients });
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.housekeeping(now);
        }
        if let (Some(trailer), true) = (&self.trailer, self.next_obj >= self.cfg.object_count) {
            if self.next_end.is_none_or(|t| now >= t) {
                self.next_end = Some(now + END_EVERY);
                let body = Body::End {
                    trailer: trailer.clone(),
                };
                self.queue(Dest::Group, body);
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let drop_after = self.cfg.drop_after;
        let (pushed, base) = (self.pushed, self.base);
        let mut dropped = Vec::new();
        for (id, c) in &mut self.clients {
            if c.state != ClientState::Live {
                continue;
            }
            // Only a client holding the window back can be too slow; one that is caught up, or
            // waits for a slower one, is not.
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
        for (client_id, addr, reason) in dropped {
            self.event(SenderEvent::ClientDropped { client_id, reason });
            let body = Body::Ack(Ack {
                client_id,
                kind: AckKind::Dropped,
            });
            self.queue(Dest::Peer(addr), body);
        }
        self.advance_window();
        // Free encoders nobody asked for lately.
        for o in &mut self.objects {
            if o.owed == 0
                && o.enc
                    .as_ref()
                    .is_some_and(|(_, used)| now.saturating_duration_since(*used) >= ENCODER_IDLE)
            {
                o.enc = None;
            }
        }
        if self.trailer.is_some() && self.live_clients() == 0 {
            self.phase = State::Finished;
            self.objects.clear();
            self.event(SenderEvent::Finished);
        }
    }

    /// Whether a data packet is ready to go (ignoring pacing).
    fn has_data(&self) -> bool {
        self.phase == State::Running
            && self.live_clients() > 0
            && (self.objects.iter().any(|o| o.owed > 0) || self.next_obj < self.pushed)
    }

    fn next_data(&mut self, now: Instant) -> Option<Data> {
        let symbol_size = self.symbol_size;
        // Repairs first: they hold the window back.
        if let Some(pos) = self.objects.iter().position(|o| o.owed > 0) {
            let live_encoders = self.objects.iter().filter(|o| o.enc.is_some()).count();
            let o = &mut self.objects[pos];
            if o.pending.is_empty() {
                if o.enc.is_none() && live_encoders >= MAX_ENCODERS {
                    // Evict the least recently used encoder.
                    if let Some(victim) = self
                        .objects
                        .iter_mut()
                        .filter(|o| o.enc.is_some())
                        .min_by_key(|o| o.enc.as_ref().map(|(_, t)| *t))
                    {
                        victim.enc = None;
                    }
                }
                let o = &mut self.objects[pos];
                let enc = match o.enc.take() {
                    Some((e, _)) => e,
                    None => {
                        self.stats.encoders_built += 1;
                        fec::encoder(&o.data, symbol_size)
                    }
                };
                let n = o.owed.min(REPAIR_BATCH);
                o.pending.extend(fec::repair(&enc, o.next_repair, n));
                o.next_repair += n;
                o.enc = Some((enc, now));
            }
            let o = &mut self.objects[pos];
            o.owed = o.owed.saturating_sub(1);
            if let Some((esi, symbol)) = o.pending.pop_front() {
                self.stats.repair_sent += 1;
                let object = self.base + pos as u32;
                return Some(self.data(now, object, esi, symbol));
            }
        }
        while self.next_obj < self.pushed {
            let pos = (self.next_obj - self.base) as usize;
            let o = self.objects.get(pos)?;
            if self.next_esi >= o.k {
                self.next_obj += 1;
                self.next_esi = 0;
                continue;
            }
            let symbol = fec::source_symbol(&o.data, self.next_esi, symbol_size);
            let (object, esi) = (self.next_obj, self.next_esi);
            self.next_esi += 1;
            if self.next_esi >= o.k {
                self.next_obj += 1;
                self.next_esi = 0;
            }
            self.stats.source_sent += 1;
            return Some(self.data(now, object, esi, symbol));
        }
        None
    }

    fn data(&mut self, now: Instant, object: u32, esi: u32, symbol: Vec<u8>) -> Data {
        self.seq += 1;
        let seq = self.seq;
        if self.sent_log.len() >= MAX_SENT_LOG {
            self.sent_log.pop_front();
        }
        self.sent_log.push_back((seq, now));
        let pos = (object - self.base) as usize;
        let o = &mut self.objects[pos];
        if o.seqs.len() >= MAX_SEQS_PER_OBJECT {
            o.seqs.pop_front();
        }
        o.seqs.push_back((seq, now));
        Data {
            seq,
            object,
            object_len: o.data.len() as u32,
            esi,
            sent_through: self.next_obj,
            symbol,
        }
    }

    /// The next datagram to send, if any is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.on_time(now);
        if let Some(t) = self.control.pop_front() {
            return Some(self.count(t));
        }
        if !self.has_data() {
            return None;
        }
        self.pacer.on_busy(now);
        if now < self.next_send {
            return None;
        }
        let data = self.next_data(now)?;
        let gap = self.pacer.gap(self.packet_len);
        // A little credit absorbs a coarse engine timer, without bursting after idle time.
        let credit = Duration::from_millis(1);
        self.next_send = self.next_send.max(now.checked_sub(credit).unwrap_or(now)) + gap;
        let payload = self.packet(Body::Data(data));
        Some(self.count(Transmit {
            dest: Dest::Group,
            payload,
        }))
    }

    fn count(&mut self, t: Transmit) -> Transmit {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += t.payload.len() as u64;
        t
    }

    /// When `poll_transmit`/`handle_timeout` must next be called, including the pacing time of the
    /// next data packet; `None` when the session is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |i: Instant| t = Some(t.map_or(i, |t| t.min(i)));
        match self.phase {
            State::Gathering => {
                at(self.next_announce);
                if let (Some(_), Some(last)) = (self.cfg.min_clients, self.last_registration) {
                    at(last + self.cfg.timeout);
                }
            }
            State::Running => {
                at(self.next_announce);
                at(self.next_tick);
                if self.start_repeats > 0 {
                    at(self.next_start);
                }
                if let Some(e) = self.next_end {
                    at(e);
                } else if self.trailer.is_some() && self.next_obj >= self.cfg.object_count {
                    at(self.next_send);
                }
                if self.has_data() {
                    at(self.next_send);
                }
            }
            State::Aborted => {
                if let Some((_, _, a)) = &self.abort {
                    at(*a);
                }
            }
            State::Finished | State::Yielded => {}
        }
        t
    }

    /// Runs timers (same as `poll_transmit` without taking a datagram).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.on_time(now);
    }
}
