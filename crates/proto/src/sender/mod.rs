//! The master side: gathering, start rules, paced transfer with RaptorQ repair, results.
//!
//! This file is the driver: phases, the packets in and out, timers and events. The rules live in
//! the files named after them: [`config`] (settings), [`clients`] (registration and the drop
//! policy), [`repair`] (the window of objects and repair scheduling), [`pacing`] (the rate).

mod clients;
mod config;
pub(crate) mod pacing;
mod repair;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::fec::{EncodeJob, Encoded, MAX_K};
use crate::feedback;
use crate::protect::PacketKey;
use crate::wire::{
    self, Ack, AckKind, Advert, Announce, Body, Data, Header, Packet, Patch, Phase, Register,
    Status, MASTER, MAX_NEEDS, MAX_TRAILER,
};
use crate::{Dest, Stats, Transmit};
pub use clients::DropReason;
use clients::{ClientState, Clients, Fresh, Registration};
pub use config::{ConfigError, SenderConfig, SlowPolicy};
use pacing::Pacer;
use repair::Window;

/// How often Start and Abort are repeated, and how many times.
const REPEAT_EVERY: Duration = Duration::from_millis(100);
const REPEATS: u8 = 5;
/// How often End is repeated while receivers finish.
const END_EVERY: Duration = Duration::from_millis(500);
/// The gaps before End's first repeats: a receiver that holds every object but lost End would
/// otherwise wait [`END_EVERY`] for it. (In the simulator, 8 receivers at 10% loss: one in two
/// sessions ended 0.5 s late, some 1 s.)
const END_FIRST_GAPS: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(40)];
/// Housekeeping period (drops, window, finish check).
const TICK: Duration = Duration::from_millis(100);
/// A round trip's allowance beside the feedback interval, for the objects the end's repair ahead
/// covers.
const TAIL_RTT: Duration = Duration::from_millis(20);
/// The end's repair ahead is sent to groups of at most this many: one lab client at 10% loss
/// finished 80 ms sooner, while the simulator's 200 receivers at 1% finished no sooner and were
/// sent 1.4% more symbols (their lossiest members' needs set the end, and the interval grows
/// with the group).
const TAIL_MAX_GROUP: usize = 16;
/// Progress events per client at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Control packets waiting to be sent (acks...); beyond it the oldest are dropped.
const MAX_CONTROL_QUEUE: usize = 4096;
/// Events waiting for the engine; beyond it progress events are dropped first.
const MAX_EVENTS: usize = 65_536;
/// Group packet send times are remembered this long, to time the round trip of a report however
/// far behind its receiver is (a count of packets would be under a second at 10 Gbit/s).
const SENT_LOG_SPAN: Duration = Duration::from_secs(4);
/// ...and at most this many (16 bytes each).
const MAX_SENT_LOG: usize = 1 << 19;
/// The repair advertisement goes out this often while running...
const ADVERT_EVERY: Duration = Duration::from_millis(100);
/// ...and this soon after a need raised what the master owes, so the other receivers keep quiet.
const ADVERT_SOON: Duration = Duration::from_millis(5);

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
        /// Its MAC, when the client could read it.
        mac: Option<[u8; 6]>,
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
        /// Objects it threw away so far because their chunk failed its check (and fetched again).
        rejected: u32,
    },
    /// A client verified everything.
    ClientDone {
        /// Its id.
        client_id: u64,
        /// Its note (e.g. where it recorded the image-safe data), possibly empty.
        note: String,
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
    /// A repair encoder to build (only with `SenderConfig::offload_encoders`): run
    /// [`EncodeJob::run`] on a worker and give the result to [`Sender::encoder_done`]; that
    /// object's repair waits for it.
    Encode(EncodeJob),
    /// Another master of this name wins the tie-break: the engine should become a client.
    ConflictingMaster {
        /// The winner's address.
        winner: SocketAddr,
        /// The winner's session id.
        winner_session: u64,
    },
    /// imgcast packets of another protocol version reach us: a client (or master) of another
    /// release, which cannot join this session; reported once.
    OtherVersion {
        /// Their version ([`wire::VERSION`] is ours).
        version: u8,
        /// Where the third of them came from.
        from: SocketAddr,
    },
}

/// Whether session `a` wins over session `b` when two masters of one name meet: the lower id wins.
pub fn tie_break(a: u64, b: u64) -> bool {
    a < b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Gathering,
    Running,
    Finished,
    Aborted,
    Yielded,
}

/// The master's state machine. See the crate docs for how to drive it.
pub struct Sender {
    cfg: SenderConfig,
    name_hash: [u8; 8],
    key: PacketKey,
    symbol_size: u16,
    packet_len: usize,
    phase: State,
    clients: Clients,
    last_registration: Option<Instant>,
    window: Window,
    trailer: Option<Vec<u8>>,
    /// Last sequence number used on the group, and to peers.
    group_seq: u64,
    unicast_seq: u64,
    control: VecDeque<Transmit>,
    events: VecDeque<SenderEvent>,
    next_announce: Instant,
    start_repeats: u8,
    next_start: Instant,
    next_end: Option<Instant>,
    /// End packets sent.
    ends_sent: usize,
    abort: Option<(String, u8, Instant)>,
    next_send: Instant,
    next_tick: Instant,
    /// Send times of the latest group packets, to time round trips.
    sent_log: VecDeque<(u64, Instant)>,
    next_advert: Instant,
    last_advert: Option<Instant>,
    /// A need raised what is owed: advertise it soon.
    advert_soon: bool,
    /// The longest feedback interval advertised in this run.
    longest_interval: Duration,
    pacer: Pacer,
    stats: Stats,
    other_versions: wire::OtherVersions,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("session_id", &self.cfg.session_id)
            .field("phase", &self.phase)
            .field("clients", &self.clients.len())
            .field("base", &self.window.base)
            .field("pushed", &self.window.pushed)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A master in the gathering phase; it announces itself from the first `poll_transmit`.
    pub fn new(cfg: SenderConfig, now: Instant) -> Result<Self, ConfigError> {
        let symbol_size = cfg.validate()?;
        let name_hash = cfg.name.hash();
        let key = PacketKey::new(cfg.key.as_ref(), &name_hash, cfg.session_id);
        let pacer = Pacer::new(
            cfg.throttle,
            cfg.initial_rate,
            cfg.min_rate,
            cfg.max_rate,
            cfg.max_payload,
        );
        Ok(Self {
            name_hash,
            key,
            symbol_size,
            packet_len: cfg.max_payload,
            phase: State::Gathering,
            clients: Clients::new(cfg.max_clients),
            last_registration: None,
            window: {
                let mut w = Window::new(symbol_size);
                w.offload = cfg.offload_encoders.then_some(cfg.session_id);
                w
            },
            trailer: None,
            group_seq: 0,
            unicast_seq: 0,
            control: VecDeque::new(),
            events: VecDeque::new(),
            next_announce: now,
            start_repeats: 0,
            next_start: now,
            next_end: None,
            ends_sent: 0,
            abort: None,
            next_send: now,
            next_tick: now,
            sent_log: VecDeque::new(),
            next_advert: now,
            last_advert: None,
            advert_soon: false,
            longest_interval: Duration::ZERO,
            pacer,
            stats: Stats::default(),
            other_versions: wire::OtherVersions::default(),
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

    /// The least time each receiver keeps between two Status packets now: grows with the group so
    /// that the group's feedback stays a small share of the data packets (see `feedback`).
    pub fn feedback_interval(&self) -> Duration {
        let bits = (self.packet_len * 8) as f64;
        let pps = self.pacer.rate(self.packet_len) as f64 / bits;
        feedback::interval(self.clients.live(), pps)
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
        let held = self.window.held() as usize;
        let left = (self.cfg.object_count - self.window.pushed) as usize;
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
        if index != self.window.pushed {
            return Err(PushError::OutOfOrder {
                expected: self.window.pushed,
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
        self.window.push(data);
        self.advance_window();
        Ok(())
    }

    /// Declares the end of the objects; `trailer` (≤ 1024 bytes) reaches every client before it may
    /// complete.
    pub fn finish_objects(&mut self, trailer: Vec<u8>) -> Result<(), PushError> {
        if self.trailer.is_some() || !matches!(self.phase, State::Gathering | State::Running) {
            return Err(PushError::Closed);
        }
        if self.window.pushed != self.cfg.object_count {
            return Err(PushError::Unfinished {
                pushed: self.window.pushed,
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
            self.window.clear();
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

    /// Whether no client can still be repeating its Report for want of an acknowledgement: each
    /// one either said it heard the run's last (`Bye`) or was acknowledged more than `quiet` ago
    /// (a longer time than it waits before it repeats). The engine lingers until then.
    pub fn nothing_to_repeat(&self, now: Instant, quiet: Duration) -> bool {
        self.clients.nothing_to_repeat(now, quiet)
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

    /// Numbers and seals a packet for `dest`.
    fn packet(&mut self, dest: Dest, body: Body) -> Transmit {
        let unicast = matches!(dest, Dest::Peer(_));
        let seq = if unicast {
            self.unicast_seq += 1;
            self.unicast_seq
        } else {
            self.group_seq += 1;
            self.group_seq
        };
        let payload = wire::seal(
            &Packet {
                name_hash: self.name_hash,
                session_id: self.cfg.session_id,
                sender: MASTER,
                seq,
                unicast,
                body,
            },
            &self.key,
        );
        Transmit { dest, payload }
    }

    fn queue(&mut self, now: Instant, dest: Dest, body: Body) {
        if self.control.len() >= MAX_CONTROL_QUEUE {
            self.control.pop_front();
        }
        // Group control packets are numbered like data, so receivers measure loss on both.
        let t = self.packet(dest, body);
        if t.dest == Dest::Group {
            self.log_sent(self.group_seq, now);
        }
        self.control.push_back(t);
    }

    fn ack(&mut self, now: Instant, to: SocketAddr, client_id: u64, kind: AckKind, nonce: u64) {
        self.queue(
            now,
            Dest::Peer(to),
            Body::Ack(Ack {
                client_id,
                kind,
                nonce,
            }),
        );
    }

    fn log_sent(&mut self, seq: u64, at: Instant) {
        while self.sent_log.len() >= MAX_SENT_LOG
            || self
                .sent_log
                .front()
                .is_some_and(|(_, t)| at.saturating_duration_since(*t) > SENT_LOG_SPAN)
        {
            self.sent_log.pop_front();
        }
        self.sent_log.push_back((seq, at));
    }

    fn start(&mut self, now: Instant) {
        self.phase = State::Running;
        let clients = self.clients.len() as u32;
        self.clients.started(now);
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
        let header = match Header::peek(datagram) {
            Ok(h) => h,
            Err(e) => {
                self.stats.dropped_malformed += 1;
                if let Some(version) = self.other_versions.note(&e) {
                    self.event(SenderEvent::OtherVersion { version, from });
                }
                return;
            }
        };
        // A short header is the master's Data: another master's, or our own looped back.
        if header.name_hash.is_some_and(|h| h != self.name_hash) {
            self.stats.dropped_stray += 1;
            return;
        }
        if header.session_id != self.cfg.session_id {
            // Only another master's Announce matters (the no-role tie-break); check it under its
            // own run's key before believing it.
            if header.kind == 1 && header.sender == MASTER {
                let key = PacketKey::new(self.cfg.key.as_ref(), &self.name_hash, header.session_id);
                if let Ok(Packet {
                    body: Body::Announce(a),
                    ..
                }) = wire::open(datagram, &key)
                {
                    self.on_foreign_announce(from, header.session_id, &a);
                }
            }
            self.stats.dropped_stray += 1;
            return;
        }
        let packet = match wire::open(datagram, &self.key) {
            Ok(p) => p,
            Err(e) => {
                self.stats.count_open_error(&e, self.cfg.key.is_some());
                return;
            }
        };
        if packet.sender == MASTER || packet.unicast != header.unicast() {
            // Our own multicast looped back, or another master claiming our run.
            self.stats.ignored += 1;
            return;
        }
        if matches!(self.phase, State::Aborted | State::Yielded) {
            self.stats.ignored += 1;
            return;
        }
        let (id, seq) = (packet.sender, packet.seq);
        if let Body::Register(r) = packet.body {
            self.on_register(now, from, id, seq, r);
            return;
        }
        match self.clients.fresh(id, seq) {
            Fresh::New => {}
            Fresh::Seen => {
                self.stats.replays += 1;
                return;
            }
            Fresh::Unknown => {
                self.stats.dropped_stray += 1;
                return;
            }
        }
        match packet.body {
            Body::Status(s) => self.on_status(now, from, id, &s),
            Body::Report(r) => self.on_report(now, from, id, r.ok, r.reason),
            Body::Bye => match self.clients.get_mut(id) {
                Some(c) if matches!(c.state, ClientState::Done | ClientState::Failed) => {
                    c.left = true;
                }
                _ => self.stats.ignored += 1,
            },
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
            self.window.clear();
            self.event(SenderEvent::ConflictingMaster {
                winner: from,
                winner_session: other,
            });
        }
    }

    fn on_register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        client_id: u64,
        seq: u64,
        r: Register,
    ) {
        let Register { nonce, label, mac } = r;
        let gathering = self.phase == State::Gathering;
        let kind = match self
            .clients
            .register(now, gathering, client_id, from, seq, nonce)
        {
            Registration::New => {
                self.last_registration = Some(now);
                self.event(SenderEvent::ClientRegistered {
                    client_id,
                    addr: from,
                    label,
                    mac,
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
            Registration::Again => AckKind::Registered,
            Registration::WasDropped => self
                .clients
                .get_mut(client_id)
                .map_or(AckKind::Dropped, |c| c.dropped_ack()),
            Registration::Queued { first } => {
                if first {
                    self.event(SenderEvent::ClientQueued {
                        client_id,
                        addr: from,
                    });
                }
                AckKind::Queued
            }
            Registration::Full => {
                self.stats.dropped_stray += 1;
                return;
            }
        };
        self.ack(now, from, client_id, kind, nonce);
    }

    fn on_status(&mut self, now: Instant, from: SocketAddr, client_id: u64, s: &Status) {
        let seq_now = self.group_seq;
        let pushed = self.window.pushed;
        let sent_at = self
            .sent_log
            .binary_search_by_key(&s.highest_seq, |(q, _)| *q)
            .ok()
            .and_then(|i| self.sent_log.get(i))
            .map(|(_, t)| *t);
        // How long the `expected` packets the report covers took to send: from the one before
        // them (the previous report's newest) to its newest.
        let sent_over = sent_at.and_then(|t| {
            let first = s.highest_seq.checked_sub(u64::from(s.expected))?;
            let i = self.sent_log.partition_point(|(q, _)| *q < first);
            let &(q, t0) = self.sent_log.get(i)?;
            (q == first).then(|| t.saturating_duration_since(t0))
        });
        let gathering = self.phase == State::Gathering;
        let steers = self.clients.steers_rate(client_id, s.lost, s.expected);
        let Some(c) = self.clients.get_mut(client_id) else {
            return;
        };
        match c.state {
            ClientState::Live => {}
            ClientState::Dropped => {
                let (nonce, kind) = (c.nonce, c.dropped_ack());
                self.ack(now, from, client_id, kind, nonce);
                return;
            }
            ClientState::Done | ClientState::Failed => {
                self.stats.ignored += 1;
                return;
            }
        }
        c.last_heard = now;
        if gathering {
            self.stats.ignored += 1;
            return;
        }
        c.addr = from;
        let low = s.low.min(pushed);
        if low > c.low || s.objects_done > c.objects_done {
            c.last_progress = now;
        }
        c.low = c.low.max(low);
        c.objects_done = c.objects_done.max(s.objects_done);
        c.bytes = c.bytes.max(s.bytes);
        c.rejected = c.rejected.max(s.rejected);
        c.note_loss(s.lost, s.expected);
        let loss = c.loss.unwrap_or(0.0);
        // A loss outlier's needs do not set the repair for everyone, nor its bottleneck the rate:
        // it gets its own in the follow-up run.
        let moving = self.cfg.slow == SlowPolicy::Move;
        // (`steers`: in line with the group's loss as of the last sweep, this report included.)
        let counts_for_repair = !moving || (!c.outlier && steers);
        let highest = s.highest_seq.min(seq_now);
        c.highest_seq = c.highest_seq.max(highest);
        if let Some(t) = sent_at {
            // Round trip = time since we sent its newest packet, minus how long it held it.
            let rtt = now
                .saturating_duration_since(t)
                .saturating_sub(Duration::from_micros(u64::from(s.held_us)));
            c.srtt = Some(c.srtt.map_or(rtt, |v| (v * 7 + rtt) / 8));
            if !moving || steers {
                let report = pacing::Sample {
                    lost: s.lost,
                    expected: s.expected,
                    sent_over,
                };
                self.pacer.on_report(&mut c.rate, report, rtt, now);
            }
        }
        let in_flight_for =
            c.srtt.unwrap_or(Duration::from_millis(20)) * 2 + Duration::from_millis(2);
        let progress = (now >= c.next_progress_event).then(|| {
            c.next_progress_event = now + PROGRESS_EVERY;
            SenderEvent::ClientProgress {
                client_id,
                objects_done: c.objects_done,
                bytes: c.bytes,
                rejected: c.rejected,
            }
        });
        if let Some(e) = progress {
            self.event(e);
        }
        let recent = now.checked_sub(in_flight_for);
        if counts_for_repair {
            for need in &s.needs {
                let count = repair::with_loss(need.count, loss);
                let holes = s.holes.iter().find(|h| h.object == need.object);
                let Some(h) =
                    holes.filter(|_| self.clients.live() <= feedback::PATCH_GROUP as usize)
                else {
                    // A need without holes asks for RaptorQ repair.
                    self.advert_soon |= self.window.use_raptorq(need.object);
                    self.advert_soon |= self.window.on_need(need.object, count, highest, recent);
                    continue;
                };
                let o = need.object;
                match self
                    .window
                    .on_holes(now, o, client_id, &h.esis, count, highest, recent)
                {
                    repair::Holed::Ignored => {}
                    repair::Holed::Raptor(raised) => self.advert_soon |= raised,
                    // Every live client that may still lack it reported: no need to wait.
                    repair::Holed::Gathering(n) if n >= self.clients.live_below(o, moving) => {
                        self.advert_soon |= self.window.plan(o);
                    }
                    repair::Holed::Gathering(_) => {}
                }
            }
        }
        self.advance_window();
    }

    fn on_report(
        &mut self,
        now: Instant,
        from: SocketAddr,
        client_id: u64,
        ok: bool,
        reason: String,
    ) {
        let running = self.phase != State::Gathering;
        let count = self.cfg.object_count;
        let Some(c) = self.clients.get_mut(client_id) else {
            self.stats.dropped_stray += 1;
            return;
        };
        c.last_heard = now;
        let nonce = c.nonce;
        let kind = match c.state {
            ClientState::Dropped => c.dropped_ack(),
            ClientState::Done | ClientState::Failed => AckKind::Report,
            ClientState::Live if !running => {
                self.stats.ignored += 1;
                return;
            }
            ClientState::Live => {
                let e = if ok {
                    c.state = ClientState::Done;
                    c.low = count;
                    SenderEvent::ClientDone {
                        client_id,
                        note: reason,
                    }
                } else {
                    c.state = ClientState::Failed;
                    SenderEvent::ClientFailed { client_id, reason }
                };
                self.event(e);
                self.clients.recount();
                self.advance_window();
                if self.clients.live() == 0 {
                    // The run is over: end it now, not at the next tick up to 100 ms later.
                    self.next_tick = now;
                }
                AckKind::Report
            }
        };
        let kind = if kind == AckKind::Report && self.clients.live() == 0 {
            AckKind::Last
        } else {
            kind
        };
        self.ack(now, from, client_id, kind, nonce);
        if matches!(kind, AckKind::Report | AckKind::Last) {
            // Twice: after the last client the engine's master lingers only about one report
            // period (`linger`), so a single lost ack must not leave a client unanswered.
            self.ack(now, from, client_id, kind, nonce);
            if let Some(c) = self.clients.get_mut(client_id) {
                c.acked_at = Some(now);
            }
        }
    }

    /// Releases the objects every live client has done.
    fn advance_window(&mut self) {
        if self.phase == State::Gathering {
            return;
        }
        let low = self.clients.min_live_low().unwrap_or(self.window.pushed);
        self.window.release_below(low);
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
                            now,
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
            self.queue(now, Dest::Group, body);
        }
        if self.phase != State::Running {
            return;
        }
        if self.start_repeats > 0 && now >= self.next_start {
            self.start_repeats -= 1;
            self.next_start = now + REPEAT_EVERY;
            let clients = self.clients.len() as u32;
            self.queue(now, Dest::Group, Body::Start { clients });
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.housekeeping(now);
        }
        self.advert_soon |= self.window.plan_due(now);
        let soon = self.advert_soon
            && self
                .last_advert
                .is_none_or(|t| now.saturating_duration_since(t) >= ADVERT_SOON);
        if self.phase == State::Running && (now >= self.next_advert || soon) {
            self.advert(now);
        }
        let first_pass_done = self.window.next_obj >= self.cfg.object_count;
        if let (Some(trailer), true) = (&self.trailer, first_pass_done) {
            if self.next_end.is_none_or(|t| now >= t) {
                let gap = END_FIRST_GAPS.get(self.ends_sent).copied();
                self.next_end = Some(now + gap.unwrap_or(END_EVERY));
                self.ends_sent += 1;
                let body = Body::End {
                    trailer: trailer.clone(),
                };
                self.queue(now, Dest::Group, body);
            }
        }
    }

    /// Tells the group its size, the feedback interval, the window's base and what repair is
    /// still coming, so receivers pace their feedback and keep quiet about needs already covered.
    fn advert(&mut self, now: Instant) {
        self.advert_soon = false;
        self.last_advert = Some(now);
        self.next_advert = now + ADVERT_EVERY;
        let interval = self.feedback_interval();
        self.longest_interval = self.longest_interval.max(interval);
        let interval_ms = u16::try_from(interval.as_millis()).unwrap_or(u16::MAX);
        let body = Body::Advert(Advert {
            clients: u32::try_from(self.clients.live()).unwrap_or(u32::MAX),
            interval_ms,
            base: self.window.base,
            pushed: self.window.pushed,
            owed: self.window.owed_list(MAX_NEEDS),
        });
        self.queue(now, Dest::Group, body);
    }

    fn housekeeping(&mut self, now: Instant) {
        // Receivers may still sleep on the longest interval we advertised: judge silence by it.
        let interval = self.feedback_interval().max(self.longest_interval);
        let window_full = self.window.held() >= u32::from(self.cfg.window)
            && self.window.pushed < self.cfg.object_count;
        let dropped = self.clients.sweep(
            now,
            clients::Sweep {
                pushed: self.window.pushed,
                base: self.window.base,
                window: u32::from(self.cfg.window),
                window_full,
                silent_after: feedback::silent_after(interval, self.cfg.drop_after),
                beat: feedback::beat(interval),
                drop_after: self.cfg.drop_after,
                move_slow: self.cfg.slow == SlowPolicy::Move,
            },
        );
        for (client_id, addr, reason) in dropped {
            self.event(SenderEvent::ClientDropped { client_id, reason });
            let nonce = self.clients.get_mut(client_id).map_or(0, |c| c.nonce);
            self.ack(now, addr, client_id, reason.ack_kind(), nonce);
        }
        self.advance_window();
        self.window.free_idle_encoders(now);
        if self.trailer.is_some() && self.clients.live() == 0 {
            self.phase = State::Finished;
            self.window.clear();
            self.event(SenderEvent::Finished);
        }
    }

    /// Whether a data packet is ready to go (ignoring pacing).
    fn has_data(&self) -> bool {
        self.phase == State::Running && self.clients.live() > 0 && self.window.has_data()
    }

    /// With every object pushed and sent and nothing owed: the repair sent ahead of the last
    /// objects' needs ([`Window::owe_tail`]). Returns whether data is now ready.
    fn owe_tail(&mut self, now: Instant) -> bool {
        if self.phase != State::Running
            || !(1..=TAIL_MAX_GROUP).contains(&self.clients.live())
            || self.window.pushed < self.cfg.object_count
        {
            return false;
        }
        // What most receivers lose: the lossiest get the rest by their needs, as before (the
        // highest loss of 200 receivers at 1% planned 2.5% of the image ahead for nothing).
        let loss = self.clients.group_loss();
        // Sent within two feedback intervals: a need for it may still be on the way.
        let since = now
            .checked_sub(self.feedback_interval() * 2 + TAIL_RTT)
            .unwrap_or(now);
        if !self.window.owe_tail(loss, since) {
            return false;
        }
        if self.window.offload.is_some() {
            self.window.start_builds();
            while let Some(job) = self.window.take_job() {
                self.event(SenderEvent::Encode(job));
            }
        }
        self.has_data()
    }

    /// An encoder build of an [`SenderEvent::Encode`] job finished (from an earlier session: ignored).
    pub fn encoder_done(&mut self, now: Instant, done: Encoded) {
        self.window.encoder_done(now, done, &mut self.stats);
    }

    /// The next datagram to send, if any is due at `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.on_time(now);
        if self.window.offload.is_some() {
            self.window.start_builds();
            while let Some(job) = self.window.take_job() {
                self.event(SenderEvent::Encode(job));
            }
        }
        if let Some(t) = self.control.pop_front() {
            return Some(self.count(t));
        }
        if !self.has_data() && !self.owe_tail(now) {
            self.pacer.on_idle();
            return None;
        }
        self.pacer.on_busy(now);
        if now < self.next_send {
            return None;
        }
        let sym = self.window.next(now, &mut self.stats)?;
        // Soon an advertisement without it, so what of its repair was lost is asked for at once.
        self.advert_soon |= self.window.take_paid();
        let gap = self.pacer.gap(self.packet_len);
        // Some credit absorbs a late wake-up (on a busy host a woken thread runs milliseconds
        // late; with only 1 ms, a 1 Gbit/s master reached 55-75% of its target), without
        // bursting after idle time.
        let credit = Duration::from_millis(4);
        self.next_send = self.next_send.max(now.checked_sub(credit).unwrap_or(now)) + gap;
        let object = sym.object;
        let patch = sym.patch.clone();
        let body = match sym.patch {
            Some(esis) => Body::Patch(Patch {
                object,
                esis,
                symbol: sym.bytes,
            }),
            None => Body::Data(Data {
                object,
                object_len: sym.object_len,
                esi: sym.esi,
                sent_through: self.window.next_obj,
                symbol: sym.bytes,
            }),
        };
        let t = self.packet(Dest::Group, body);
        let seq = self.group_seq;
        self.log_sent(seq, now);
        match patch {
            Some(esis) => self.window.record_patch(object, seq, now, esis),
            None => self.window.record_seq(object, seq, now),
        }
        self.pacer.on_sent(t.payload.len());
        Some(self.count(t))
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
                at(self.next_advert);
                if self.advert_soon {
                    at(self
                        .last_advert
                        .map_or(self.next_advert, |t| t + ADVERT_SOON));
                }
                if self.start_repeats > 0 {
                    at(self.next_start);
                }
                if let Some(e) = self.next_end {
                    at(e);
                } else if self.trailer.is_some() && self.window.next_obj >= self.cfg.object_count {
                    at(self.next_send);
                }
                if self.has_data() {
                    at(self.next_send);
                }
                if let Some(g) = self.window.next_gather() {
                    at(g);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Receiver, ReceiverConfig, ReceiverEvent, SessionName};

    /// A master and one client on a perfect link: the whole exchange, by hand.
    #[test]
    fn one_client_end_to_end_without_loss() {
        let name = SessionName::new("unit").expect("name");
        let t0 = Instant::now();
        let mut cfg = SenderConfig::new(name.clone(), 77, 3);
        cfg.min_clients = Some(1);
        let mut tx = Sender::new(cfg, t0).expect("config");
        let objects = [vec![1u8; 5000], vec![], vec![3u8; 10]];
        let mut rc = ReceiverConfig::new(name, 5, "pc");
        rc.mac = Some([0x52, 0x54, 0, 1, 2, 3]);
        let mut rx = Receiver::new(rc);
        let mut registered = Vec::new();
        let (m, c): (SocketAddr, SocketAddr) =
            (([10, 0, 0, 1], 1).into(), ([10, 0, 0, 2], 2).into());
        let mut got = Vec::new();
        let mut now = t0;
        let mut done_at = None;
        for step in 0..10_000 {
            now += Duration::from_millis(1);
            while tx.want_objects() > 0 {
                let i = tx.window.pushed;
                tx.push_object(i, objects[i as usize].clone())
                    .expect("push");
            }
            let _ = tx.finish_objects(b"end".to_vec());
            while let Some(t) = tx.poll_transmit(now) {
                rx.handle(now, m, &t.payload);
            }
            while let Some(t) = rx.poll_transmit(now) {
                tx.handle(now, c, &t.payload);
            }
            while let Some(e) = rx.poll_event() {
                match e {
                    ReceiverEvent::Announced { .. } => rx.register(now, 1 << 20).expect("reg"),
                    ReceiverEvent::Object { index, bytes } => {
                        got.push((index, bytes));
                        rx.object_done(index);
                    }
                    ReceiverEvent::Trailer(t) => {
                        assert_eq!(t, b"end");
                        rx.report_done(now, String::new()).expect("done");
                    }
                    _ => {}
                }
            }
            let events: Vec<_> = std::iter::from_fn(|| tx.poll_event()).collect();
            registered.extend(events.iter().filter_map(|e| match e {
                SenderEvent::ClientRegistered { label, mac, .. } => Some((label.clone(), *mac)),
                _ => None,
            }));
            if events
                .iter()
                .any(|e| matches!(e, SenderEvent::ClientDone { .. }))
            {
                done_at.get_or_insert(step);
            }
            if events.contains(&SenderEvent::Finished) {
                assert!(step < 5000);
                let done = done_at.expect("the client's report came first");
                assert!(
                    step - done <= 2,
                    "the run ended {} ms after its last client was done, not at once",
                    step - done
                );
                break;
            }
        }
        assert_eq!(
            registered,
            [("pc".to_string(), Some([0x52, 0x54, 0, 1, 2, 3]))],
            "the master learns the client's label and MAC once"
        );
        got.sort();
        let want: Vec<_> = objects
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, o)| (i as u32, o))
            .collect();
        assert_eq!(got, want);
        assert_eq!(tx.stats().repair_sent, 0);
    }
}
