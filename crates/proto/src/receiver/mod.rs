//! The client side: find the session, register, collect objects, report.
//!
//! Before the start the client's disk is the user's, not ours: the receiver only listens and
//! registers, and a master that goes away (silent, aborted, or never answering the registration)
//! sends it back to listening for the next master of the name. Only after the start does a silent
//! master end the session (`MasterLost`). Objects, their candidates and the done sets are in
//! [`objects`].

mod objects;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::fec::{self, DecodeJob, Decoded, MAX_K};
use crate::feedback;
use crate::key::SessionKey;
use crate::name::SessionName;
use crate::protect::{PacketKey, TAG_LEN};
use crate::replay::ReplayWindow;
use crate::sender::tie_break;
use crate::wire::{
    self, AckKind, Announce, Body, DataRef, Header, Holes, Need, OpenError, Packet, Phase,
    Register, Report, Status, MASTER, MAX_SESSION_INFO, NEED_ALL,
};
use crate::{Dest, Rng, Stats, Transmit, MAX_WINDOW};
use objects::{Objects, Offer};

/// Register retransmission period until acknowledged.
const REGISTER_EVERY: Duration = Duration::from_millis(250);
/// Packets a loss share must cover before a rise in it is worth a Status of its own.
const LOSS_RISE_PACKETS: u64 = 256;
/// A loss share above what we last reported by this much (or by itself, if more) is a queue
/// forming: worth a Status of its own.
const LOSS_RISE: f64 = 0.05;
/// Report retransmission period until acknowledged.
const REPORT_EVERY: Duration = Duration::from_millis(300);
/// Auth failures before the one `AuthFailures` event.
const AUTH_EVENT_AFTER: u64 = 3;
/// Events waiting for the engine before new objects are refused (the master repairs them later).
const MAX_EVENTS: usize = 4096;
/// Sessions ignored at once (queued out of, declined, refused, unanswered); the oldest goes first.
const MAX_IGNORED: usize = 64;
/// A master that never answered our registration is ignored this long, then given another chance.
const UNANSWERED_IGNORED_FOR: Duration = Duration::from_secs(60);
/// Distinct trailers (End packets that disagree) remembered per run.
const MAX_TRAILERS: usize = 4;
/// Smallest symbol size accepted from an Announce: smaller ones make objects need absurd counts.
const MIN_SYMBOL_SIZE: u16 = 16;

/// Client settings. Build with [`ReceiverConfig::new`], then adjust the public fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// Session name to join.
    pub name: SessionName,
    /// Optional key; must match the master's.
    pub key: Option<SessionKey>,
    /// Random non-zero id of this client (the engine draws it from the OS; 0 is the master's).
    pub client_id: u64,
    /// Seed of the feedback jitter.
    pub seed: u64,
    /// Shown by the master (host name); at most 64 bytes are sent.
    pub label: String,
    /// The MAC of the interface the client registers through, sent in Register so the master
    /// can name the machine; `None` when it cannot be read.
    pub mac: Option<[u8; 6]>,
    /// Silence from the master after which it is gone: before the start the client listens again
    /// (`MasterGone`), after it the session has failed (`MasterLost`). Default 15 s.
    pub master_timeout: Duration,
    /// A master that does not acknowledge the registration this long is given up (a replayed or
    /// forged Announce, or a master that cannot reach us): listen again (`Unanswered`). Default
    /// 5 s: 20 Registers, 250 ms apart. At 30% loss each way half of them get no Ack back, and
    /// 12 (3 s) all went unanswered about once in 3,000 tries; 20, once in 700,000.
    pub register_patience: Duration,
    /// Times one object may fail the engine's check before the client gives up (default 4).
    pub max_object_failures: u32,
    /// Hand RaptorQ decodes out as [`ReceiverEvent::Decode`] jobs instead of running them in
    /// `handle` (default off): a decode costs milliseconds per MiB, which the thread reading the
    /// socket cannot spare at line rate.
    pub offload_decode: bool,
}

impl ReceiverConfig {
    /// Defaults; `client_id` also seeds the jitter (an id of 0 becomes 1: 0 is the master's).
    pub fn new(name: SessionName, client_id: u64, label: &str) -> Self {
        let client_id = client_id.max(1);
        Self {
            name,
            key: None,
            client_id,
            seed: client_id,
            label: wire::clamp_text(label, wire::MAX_LABEL),
            mac: None,
            master_timeout: Duration::from_secs(15),
            register_patience: Duration::from_secs(5),
            max_object_failures: 4,
            offload_decode: false,
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
    /// `report_done` before every object was confirmed (`object_done`) and the trailer arrived.
    #[error("report_done before every object was confirmed and the trailer arrived")]
    Incomplete,
    /// The session is over (completed, aborted, lost).
    #[error("the session is over")]
    Closed,
}

/// What [`Receiver::object_failed`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The object is wanted again (this was its `attempts`-th failure).
    Retry {
        /// Failures of this object so far.
        attempts: u32,
    },
    /// The object failed `attempts` times, the configured bound: the engine should fail the client.
    GiveUp {
        /// Failures of this object.
        attempts: u32,
    },
    /// The object was not waiting for the engine's verdict (already written, or not decoded).
    NotPending,
}

/// What the receiver reports to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// A master of our name announced itself: check `session_info`, then `register` or `decline`.
    /// Reported again if a winning master replaces it while gathering, and for the next master
    /// after `Queued`, `Dropped`, `Unanswered` or `MasterGone`.
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
    /// An authentic Announce whose geometry the protocol cannot follow (window or symbol size out
    /// of bounds); that session is ignored.
    Refused {
        /// The master's address.
        master: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// The master counted us in.
    Registered,
    /// The master never acknowledged our registration: listening again.
    Unanswered {
        /// The master that did not answer.
        master: SocketAddr,
    },
    /// The master we registered with went away before the start: listening again.
    MasterGone {
        /// The master.
        master: SocketAddr,
        /// "fell silent", or the reason it aborted with.
        reason: String,
    },
    /// The run had already started: we wait for the next run of this name.
    Queued,
    /// The master dropped us (silent or too slow); we wait for the next run of this name.
    Dropped,
    /// Enough symbols of an object to try a RaptorQ decode (only with
    /// `ReceiverConfig::offload_decode`): run [`DecodeJob::run`] on a worker and give the result
    /// to [`Receiver::decode_done`].
    Decode(DecodeJob),
    /// The master moved us to its follow-up run (we held the group back, or lost far more than
    /// the rest): we wait for the next run of this name, which it serves right after this one.
    Moved,
    /// The transfer started.
    Started,
    /// Object `index`, complete. Call `object_done` once written, or `object_failed` if it does not
    /// verify; each decode of an object is reported once.
    Object {
        /// Object index.
        index: u32,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Every object arrived, and this is a trailer the master sent: verify, then
    /// `report_done`/`report_failed`. Each distinct trailer is reported once (a forged End may
    /// carry another): the engine keeps the one its chunks match. After an object rejected late
    /// (`object_failed` once complete) is fetched again, the trailers are handed out again.
    Trailer(Vec<u8>),
    /// The master aborted after the start.
    Aborted {
        /// Its reason.
        reason: String,
    },
    /// Nothing heard from the master for `master_timeout` after the start.
    MasterLost,
    /// The master acknowledged our report: the session is over for us.
    Completed,
    /// Packets of our session name fail authentication (wrong or missing `-key`); reported once.
    AuthFailures {
        /// Failures so far.
        count: u64,
    },
    /// imgcast packets of another protocol version reach us: a master of another release, whose
    /// session we cannot join; reported once.
    OtherVersion {
        /// Their version ([`wire::VERSION`] is ours).
        version: u8,
        /// Where the third of them came from.
        from: SocketAddr,
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
    Aborted,
    Lost,
}

impl State {
    fn before_start(self) -> bool {
        matches!(self, Self::Announced | Self::Registering | Self::Registered)
    }
    fn terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Aborted | Self::Lost)
    }
}

/// What the master last advertised: the feedback interval and the repair it will still send.
#[derive(Debug, Clone)]
struct AdvertSeen {
    interval: Duration,
    clients: u32,
    base: u32,
    pushed: u32,
    owed: Vec<Need>,
}

impl AdvertSeen {
    /// Whether the master will still send at least `count` symbols of `object` anyway.
    fn covers(&self, n: &Need) -> bool {
        n.count != NEED_ALL
            && self
                .owed
                .iter()
                .any(|o| o.object == n.object && o.count >= n.count)
    }
}

#[derive(Debug, Clone)]
struct Session {
    id: u64,
    key: PacketKey,
    master: SocketAddr,
    yields: bool,
    object_count: u32,
    symbol_size: u16,
    window: u32,
    max_object_len: u32,
    group: ReplayWindow,
    unicast: ReplayWindow,
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
    /// Sessions not to follow, until an instant or (None) for good.
    ignored: VecDeque<(u64, Option<Instant>)>,
    auto_register: bool,
    start_seen: bool,
    objects: Objects,
    /// Objects decoded while our registration was still unanswered: handed out after `Started`,
    /// when the engine has opened its target (at most a window of them).
    held: Vec<(u32, Vec<u8>)>,
    sent_through: u32,
    trailers: Vec<Vec<u8>>,
    trailers_emitted: usize,
    highest_seq: u64,
    highest_at: Option<Instant>,
    seq_at_status: u64,
    received_since: u32,
    last_data: Option<Instant>,
    last_master: Option<Instant>,
    next_status: Option<Instant>,
    /// The master's latest repair advertisement of this run.
    advert: Option<AdvertSeen>,
    last_status: Option<Instant>,
    /// The `low` of our latest Status: what the master knows of our progress.
    reported_low: u32,
    /// The loss share our last Status carried (of enough packets to say): a loss well above it
    /// is a queue forming, which the master's rate must hear of before the next beat.
    reported_loss: f64,
    /// Next look for needs the master does not know, and the report of them after its back-off.
    next_need_check: Option<Instant>,
    need_report_at: Option<Instant>,
    next_register: Option<Instant>,
    register_since: Option<Instant>,
    nonce: u64,
    seq: u64,
    report: Option<(bool, String)>,
    next_report: Option<Instant>,
    auth_failures: u64,
    other_versions: wire::OtherVersions,
    control: VecDeque<Transmit>,
    events: VecDeque<ReceiverEvent>,
    rng: Rng,
    stats: Stats,
    /// Where keyed packets are decrypted, reused for every packet.
    scratch: Vec<u8>,
}

/// A checked packet's body: Data borrowed from the datagram, anything else owned.
enum Parsed<'a> {
    Data(DataRef<'a>),
    Other(Body),
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
            ignored: VecDeque::new(),
            auto_register: false,
            start_seen: false,
            objects: Objects::default(),
            held: Vec::new(),
            sent_through: 0,
            trailers: Vec::new(),
            trailers_emitted: 0,
            highest_seq: 0,
            highest_at: None,
            seq_at_status: 0,
            received_since: 0,
            last_data: None,
            last_master: None,
            next_status: None,
            advert: None,
            last_status: None,
            reported_low: 0,
            reported_loss: 0.0,
            next_need_check: None,
            need_report_at: None,
            next_register: None,
            register_since: None,
            nonce: 0,
            seq: 0,
            report: None,
            next_report: None,
            auth_failures: 0,
            other_versions: wire::OtherVersions::default(),
            control: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            scratch: Vec::new(),
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
        self.objects.objects_done
    }

    /// Objects decoded and then thrown away by the engine so far.
    pub fn objects_rejected(&self) -> u32 {
        self.objects.rejected
    }

    /// Whether the transfer has started for us (the target may be written from now on).
    pub fn started(&self) -> bool {
        !self.state.before_start() && self.state != State::Listening
    }

    /// The next event for the engine.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Joins the announced session: sends Register until the master answers. Objects longer than
    /// `max_object_len` (the engine's bound from the geometry it checked) are refused.
    pub fn register(&mut self, now: Instant, max_object_len: u32) -> Result<(), ReceiverError> {
        if let Some(s) = &mut self.session {
            s.max_object_len = max_object_len;
        }
        match self.state {
            State::Announced => {
                self.begin_registering(now);
                Ok(())
            }
            State::Registering | State::Registered | State::Running => Ok(()),
            State::Listening => Err(ReceiverError::NoSession),
            _ => Err(ReceiverError::Closed),
        }
    }

    fn begin_registering(&mut self, now: Instant) {
        self.state = State::Registering;
        self.next_register = Some(now);
        self.register_since = Some(now);
        self.nonce = self.rng.next_u64();
    }

    /// Refuses the announced session (e.g. the target is too small for it): that session is
    /// ignored for good and the receiver listens for another master of the name.
    pub fn decline(&mut self, reason: &str) {
        let _ = reason;
        if self.state.before_start() {
            if let Some(id) = self.session_id() {
                self.ignore(id, None);
            }
            self.listen_again();
        }
    }

    /// The engine wrote object `index`: it now counts as done for the master (releasing its window).
    pub fn object_done(&mut self, index: u32) {
        self.objects.confirm(index);
    }

    /// The engine threw object `index` away: its bytes failed the chunk's check. The object is
    /// asked for again, up to `max_object_failures` times.
    pub fn object_failed(&mut self, index: u32) -> Rejection {
        let Some(attempts) = self.objects.reject(index) else {
            return Rejection::NotPending;
        };
        if self.state == State::Complete {
            // Complete again once it is fetched: the trailers are then handed out again, so an
            // engine that reports on a Trailer event reports only with every object verified.
            self.state = State::Running;
            self.trailers_emitted = 0;
        }
        if attempts >= self.cfg.max_object_failures {
            Rejection::GiveUp { attempts }
        } else {
            Rejection::Retry { attempts }
        }
    }

    /// Everything verified: tell the master, with an optional note for its table (retransmitted
    /// until acknowledged, then `Completed`).
    pub fn report_done(&mut self, now: Instant, note: String) -> Result<(), ReceiverError> {
        let count = self.session.as_ref().map_or(0, |s| s.object_count);
        match self.state {
            // Every object decoded is not every object verified: one handed out in the same
            // instant as the trailer may still fail its check.
            State::Complete if self.objects.objects_done >= count => {
                self.start_report(now, true, note);
                Ok(())
            }
            State::Complete | State::Running | State::Registered => Err(ReceiverError::Incomplete),
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
        self.objects.drop_partial();
    }

    fn send(&mut self, body: Body) {
        let Some(s) = &self.session else { return };
        self.seq += 1;
        let payload = wire::seal(
            &Packet {
                name_hash: self.name_hash,
                session_id: s.id,
                sender: self.cfg.client_id,
                seq: self.seq,
                unicast: true,
                body,
            },
            &s.key,
        );
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        // At most a few control packets are ever due at once; keep it bounded anyway.
        if self.control.len() < 64 {
            self.control.push_back(Transmit {
                dest: Dest::Peer(s.master),
                payload,
            });
        }
    }

    fn ignore(&mut self, id: u64, until: Option<Instant>) {
        self.ignored.retain(|(i, _)| *i != id);
        if self.ignored.len() >= MAX_IGNORED {
            self.ignored.pop_front();
        }
        self.ignored.push_back((id, until));
    }

    fn is_ignored(&self, id: u64, now: Instant) -> bool {
        self.ignored
            .iter()
            .any(|(i, until)| *i == id && until.is_none_or(|u| now < u))
    }

    fn count_open_error(&mut self, e: &OpenError, keyed: bool) {
        let before = self.stats.auth_failures;
        self.stats.count_open_error(e, keyed);
        if self.stats.auth_failures > before {
            self.auth_failures += 1;
            if self.auth_failures == AUTH_EVENT_AFTER {
                self.events.push_back(ReceiverEvent::AuthFailures {
                    count: self.auth_failures,
                });
            }
        }
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
                    self.events
                        .push_back(ReceiverEvent::OtherVersion { version, from });
                }
                return;
            }
        };
        // A short header (the master's Data) names no session: it is ours by its session id or
        // stray. Its name hash is bound by the tag, which is checked under our run's key.
        if header.name_hash.is_some_and(|h| h != self.name_hash) || header.sender != MASTER {
            self.stats.dropped_stray += 1;
            return;
        }
        let keyed = self.cfg.key.is_some();
        let ours = self
            .session
            .as_ref()
            .is_some_and(|s| s.id == header.session_id);
        if !ours {
            // From another run only an Announce can matter; it is checked under that run's key.
            // Until the wrong-key warning is out, other packets of our name are checked too, so a
            // client with a wrong -key says so within a few packets. Short headers are not tried:
            // one may be of another session sharing our group, and Announces show a wrong key.
            let warn_pending = self.auth_failures < AUTH_EVENT_AFTER && !header.short();
            if (header.kind != 1 && !warn_pending)
                || self.state.terminal()
                || self.is_ignored(header.session_id, now)
            {
                self.stats.dropped_stray += 1;
                return;
            }
            let key = PacketKey::new(self.cfg.key.as_ref(), &self.name_hash, header.session_id);
            match wire::open(datagram, &key) {
                Ok(Packet {
                    body: Body::Announce(a),
                    ..
                }) if !header.unicast() => {
                    self.on_foreign_announce(now, from, header.session_id, key, a);
                }
                Ok(_) => self.stats.dropped_stray += 1,
                Err(e) => self.count_open_error(&e, keyed),
            }
            return;
        }
        // The scratch buffer (for decrypting keyed packets) is lent out so the packet, which may
        // borrow it, can be handled by methods of `self`.
        let mut scratch = std::mem::take(&mut self.scratch);
        self.handle_ours(now, datagram, keyed, &mut scratch);
        self.scratch = scratch;
    }

    /// [`Receiver::handle`] for a datagram of our run.
    fn handle_ours(&mut self, now: Instant, datagram: &[u8], keyed: bool, scratch: &mut Vec<u8>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let opened = match wire::open_borrowed(datagram, &s.key, scratch) {
            Ok(o) => o,
            Err(e) => {
                self.count_open_error(&e, keyed);
                return;
            }
        };
        // Data, nearly every packet, is parsed by borrowing; its symbol is copied only into its
        // object.
        let parsed = match opened.data() {
            Some(d) => d.map(Parsed::Data),
            None => opened.packet().map(|p| Parsed::Other(p.body)),
        };
        let body = match parsed {
            Ok(b) => b,
            Err(e) => {
                self.count_open_error(&OpenError::Decode(e), keyed);
                return;
            }
        };
        let (seq, unicast) = (opened.header.seq, opened.header.unicast());
        let window = if unicast {
            &mut s.unicast
        } else {
            &mut s.group
        };
        if !window.accept(seq) {
            self.stats.replays += 1;
            return;
        }
        if self.state.terminal() {
            self.stats.ignored += 1;
            return;
        }
        self.last_master = Some(now);
        if !unicast {
            self.count_group_packet(now, seq);
        }
        let body = match body {
            Parsed::Data(d) => return self.on_data(now, d),
            Parsed::Other(b) => b,
        };
        match body {
            Body::Announce(a) => {
                if a.phase == Phase::Running {
                    self.on_start(now);
                }
            }
            Body::Ack(a) if a.client_id == self.cfg.client_id && unicast => {
                self.on_ack(now, a.kind, a.nonce);
            }
            Body::Start { .. } => self.on_start(now),
            Body::Advert(a) => {
                let interval = Duration::from_millis(u64::from(a.interval_ms))
                    .clamp(feedback::MIN_INTERVAL, feedback::MAX_INTERVAL);
                // A shorter interval (the master's rate grew) applies now, not after a long sleep.
                let sooner = now + feedback::jittered(interval, self.rng.unit());
                if self.next_status.is_some_and(|t| t > sooner) {
                    self.next_status = Some(sooner);
                }
                self.advert = Some(AdvertSeen {
                    interval,
                    clients: a.clients,
                    base: a.base,
                    pushed: a.pushed,
                    owed: a.owed,
                });
            }
            Body::Patch(p) if !unicast => self.on_patch(now, &p),
            Body::End { trailer } => {
                if !self.trailers.contains(&trailer) {
                    if self.trailers.len() < MAX_TRAILERS {
                        self.trailers.push(trailer);
                    } else {
                        self.stats.dropped_invalid_data += 1;
                    }
                }
                self.check_complete(now);
            }
            Body::Abort { reason } => {
                if self.state.before_start() {
                    let master = self.session.as_ref().map(|s| s.master);
                    self.listen_again();
                    if let Some(master) = master {
                        self.events.push_back(ReceiverEvent::MasterGone {
                            master,
                            reason: format!("aborted: {reason}"),
                        });
                    }
                } else {
                    self.state = State::Aborted;
                    self.objects.drop_partial();
                    self.events.push_back(ReceiverEvent::Aborted { reason });
                }
            }
            _ => self.stats.ignored += 1,
        }
    }

    /// Loss accounting on the master's group sequence: gaps since the previous Status.
    fn count_group_packet(&mut self, now: Instant, seq: u64) {
        if self.seq_at_status == 0 {
            // The first packet we hear: losses before it are not ours to report.
            self.seq_at_status = seq - 1;
        }
        if seq > self.seq_at_status {
            self.received_since = self.received_since.saturating_add(1);
        }
        if seq > self.highest_seq {
            self.highest_seq = seq;
            self.highest_at = Some(now);
        }
    }

    /// Why the protocol cannot follow an Announce's geometry, if it cannot.
    fn unfollowable(a: &Announce) -> Option<String> {
        let max_symbol = (65_507 - wire::DATA_OVERHEAD) as u16;
        if a.window > MAX_WINDOW {
            return Some(format!(
                "a window of {} objects (at most {MAX_WINDOW})",
                a.window
            ));
        }
        if !(MIN_SYMBOL_SIZE..=max_symbol).contains(&a.symbol_size) {
            return Some(format!(
                "a symbol size of {} bytes (allowed {MIN_SYMBOL_SIZE}..={max_symbol})",
                a.symbol_size
            ));
        }
        if a.session_info.len() > MAX_SESSION_INFO {
            return Some("an oversized session info".into());
        }
        None
    }

    fn on_foreign_announce(
        &mut self,
        now: Instant,
        from: SocketAddr,
        id: u64,
        key: PacketKey,
        a: Announce,
    ) {
        let take = match (&self.session, self.state) {
            (_, State::Listening) => true,
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
        if let Some(reason) = Self::unfollowable(&a) {
            self.ignore(id, None);
            self.events.push_back(ReceiverEvent::Refused {
                master: from,
                reason: format!("the master announces {reason}"),
            });
            return;
        }
        let rejoin =
            self.auto_register || matches!(self.state, State::Registering | State::Registered);
        self.reset_transfer();
        self.session = Some(Session {
            id,
            key,
            master: from,
            yields: a.yields,
            object_count: a.object_count,
            symbol_size: a.symbol_size,
            window: u32::from(a.window),
            max_object_len: 0,
            group: ReplayWindow::default(),
            unicast: ReplayWindow::default(),
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
            // The engine still checks the geometry and may decline.
            self.begin_registering(now);
        }
        if a.phase == Phase::Running {
            self.start_seen = true;
        }
    }

    fn reset_transfer(&mut self) {
        self.start_seen = false;
        self.objects = Objects::default();
        self.held.clear();
        self.sent_through = 0;
        self.trailers.clear();
        self.trailers_emitted = 0;
        self.highest_seq = 0;
        self.highest_at = None;
        self.seq_at_status = 0;
        self.received_since = 0;
        self.last_data = None;
        self.next_status = None;
        self.advert = None;
        self.last_status = None;
        self.reported_low = 0;
        self.next_need_check = None;
        self.need_report_at = None;
        self.next_register = None;
        self.register_since = None;
    }

    /// Forget the session followed before its start; wait for the next master of the name.
    fn listen_again(&mut self) {
        self.session = None;
        self.state = State::Listening;
        self.reset_transfer();
    }

    /// Stop following this run and wait for the next one of the same name.
    fn requeue(&mut self, event: ReceiverEvent) {
        if let Some(id) = self.session_id() {
            self.ignore(id, None);
        }
        self.auto_register = true;
        self.listen_again();
        self.events.push_back(event);
    }

    fn on_ack(&mut self, now: Instant, kind: AckKind, nonce: u64) {
        let fresh = nonce == self.nonce;
        match (kind, self.state) {
            (AckKind::Registered, State::Registering) if fresh => {
                self.state = State::Registered;
                self.next_register = None;
                self.register_since = None;
                self.events.push_back(ReceiverEvent::Registered);
                if self.start_seen {
                    self.on_start(now);
                }
            }
            (AckKind::Queued, State::Registering | State::Registered) if fresh => {
                self.requeue(ReceiverEvent::Queued);
            }
            (
                AckKind::Dropped | AckKind::Moved,
                State::Registering
                | State::Registered
                | State::Running
                | State::Complete
                | State::Reporting,
            ) if fresh => {
                self.requeue(if kind == AckKind::Moved {
                    ReceiverEvent::Moved
                } else {
                    ReceiverEvent::Dropped
                });
            }
            (AckKind::Report | AckKind::Last, State::Reporting) => {
                self.state = State::Completed;
                self.next_report = None;
                if kind == AckKind::Last {
                    // Twice, as the master acks: the master lingers for our Report's repeat
                    // until it hears this.
                    self.send(Body::Bye);
                    self.send(Body::Bye);
                }
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
            for (index, bytes) in std::mem::take(&mut self.held) {
                self.events
                    .push_back(ReceiverEvent::Object { index, bytes });
            }
            let first = feedback::jittered(feedback::MIN_INTERVAL, self.rng.unit());
            self.next_status = Some(now + first);
            self.check_complete(now);
        }
    }

    fn on_data(&mut self, now: Instant, d: DataRef<'_>) {
        // Data implies start; while our registration is unanswered we keep it in case we are in.
        self.on_start(now);
        if !matches!(self.state, State::Registering | State::Running) {
            self.stats.ignored += 1;
            return;
        }
        let Some(s) = &self.session else { return };
        let len_ok = d.object_len <= s.max_object_len
            && fec::source_count(d.object_len, s.symbol_size) <= MAX_K;
        if d.symbol.len() != usize::from(s.symbol_size)
            || d.object >= s.object_count
            || !len_ok
            // The master never sends beyond its window, whose base is at most our confirmed low.
            || d.object >= self.objects.confirmed.low.saturating_add(s.window)
        {
            self.stats.dropped_invalid_data += 1;
            return;
        }
        let symbol_size = s.symbol_size;
        self.last_data = Some(now);
        self.sent_through = self.sent_through.max(d.sent_through.min(s.object_count));
        if self.events.len() >= MAX_EVENTS {
            // The engine is not draining: refuse rather than grow; repair brings it again.
            self.stats.dropped_invalid_data += 1;
            return;
        }
        let offload = self.offload();
        let offer = self.objects.offer(
            d.object,
            d.object_len,
            d.esi,
            d.symbol,
            symbol_size,
            offload,
        );
        self.on_offer(now, d.object, offer);
    }

    /// A Patch: fills one hole when we lack exactly one of the symbols it combines.
    fn on_patch(&mut self, now: Instant, p: &wire::Patch) {
        if !matches!(self.state, State::Registering | State::Running) {
            self.stats.ignored += 1;
            return;
        }
        let Some(s) = &self.session else { return };
        if p.symbol.len() != usize::from(s.symbol_size)
            || p.object >= s.object_count
            || p.object >= self.objects.confirmed.low.saturating_add(s.window)
            || self.events.len() >= MAX_EVENTS
        {
            self.stats.dropped_invalid_data += 1;
            return;
        }
        self.last_data = Some(now);
        let offload = self.offload();
        let offer = self.objects.patch(p.object, &p.esis, &p.symbol, offload);
        if !matches!(offer, Offer::Duplicate) {
            self.stats.patches += 1;
        }
        self.on_offer(now, p.object, offer);
    }

    /// The session id decode jobs carry, when decodes are offloaded.
    fn offload(&self) -> Option<u64> {
        self.cfg.offload_decode.then(|| self.session_id()).flatten()
    }

    fn on_offer(&mut self, now: Instant, object: u32, offer: Offer) {
        match offer {
            Offer::Duplicate => self.stats.duplicates += 1,
            Offer::Stored => {}
            Offer::Decode(job) => {
                self.stats.decodes += 1;
                self.events.push_back(ReceiverEvent::Decode(job));
            }
            Offer::Complete(bytes) if self.state == State::Registering => {
                // Not ours to hand out yet: the engine opens its target only at the start.
                self.held.push((object, bytes));
            }
            Offer::Complete(bytes) => {
                self.events.push_back(ReceiverEvent::Object {
                    index: object,
                    bytes,
                });
                self.check_complete(now);
            }
        }
    }

    /// The result of a [`ReceiverEvent::Decode`] job. A result of another run, or of an object
    /// decoded meanwhile, is ignored.
    pub fn decode_done(&mut self, now: Instant, done: Decoded) {
        if Some(done.session) != self.session_id()
            || !matches!(self.state, State::Registering | State::Running)
        {
            return;
        }
        let offload = self.offload();
        let object = done.object;
        let offer = self
            .objects
            .decode_done(object, done.len, done.outcome, offload);
        self.on_offer(now, object, offer);
    }

    fn check_complete(&mut self, now: Instant) {
        let Some(s) = &self.session else { return };
        if !matches!(self.state, State::Running | State::Complete)
            || self.objects.decoded.low < s.object_count
        {
            return;
        }
        if self.trailers_emitted < self.trailers.len() {
            for t in &self.trailers[self.trailers_emitted..] {
                self.events.push_back(ReceiverEvent::Trailer(t.clone()));
            }
            self.trailers_emitted = self.trailers.len();
            if self.state == State::Running {
                self.state = State::Complete;
                self.next_status = Some(now);
            }
        }
    }

    /// What we lack of the objects whose source symbols were all sent (below `sent_through`, or
    /// all of them after End).
    fn needs(&self) -> Vec<Need> {
        let Some(s) = &self.session else {
            return Vec::new();
        };
        let bound = if self.trailers.is_empty() {
            self.sent_through
        } else {
            s.object_count
        };
        let bound = bound.min(self.objects.decoded.low.saturating_add(s.window));
        self.objects.needs(bound)
    }

    /// The least time between two of our Status packets: the master's, or the shortest before
    /// its first advertisement.
    fn feedback_interval(&self) -> Duration {
        self.advert
            .as_ref()
            .map_or(feedback::MIN_INTERVAL, |a| a.interval)
    }

    /// Whether a Status now tells the master something: needs its advertisement does not cover,
    /// progress it does not know and waits for, or our liveness beat. (That we have everything,
    /// the Report says.)
    fn worth_a_status(&self, now: Instant, needs: &[Need]) -> bool {
        let interval = self.feedback_interval();
        if self
            .last_status
            .is_none_or(|t| now.saturating_duration_since(t) >= feedback::beat(interval))
        {
            return true;
        }
        if needs
            .iter()
            .any(|n| self.advert.as_ref().is_none_or(|a| !a.covers(n)))
        {
            return true;
        }
        // A receiver whose needs the master's repair covers would stay silent while a queue
        // fills in front of it: a loss well above its last word is news for the rate.
        let expected = self.highest_seq.saturating_sub(self.seq_at_status);
        if expected >= LOSS_RISE_PACKETS {
            let lost = expected.saturating_sub(u64::from(self.received_since));
            let share = lost as f64 / expected as f64;
            if share > self.reported_loss + LOSS_RISE.max(self.reported_loss) {
                return true;
            }
        }
        let low = self.objects.confirmed.low;
        let half = self.session.as_ref().map_or(1, |s| (s.window / 2).max(1));
        // Progress matters when the master's window fills and our last word may be what holds it.
        let pressed = self
            .advert
            .as_ref()
            .is_none_or(|a| a.pushed.saturating_sub(a.base) >= half && self.reported_low <= a.base);
        low > self.reported_low && (pressed || low - self.reported_low >= half)
    }

    /// Needs the latest advertisement does not cover.
    fn uncovered(&self, needs: &[Need]) -> bool {
        needs
            .iter()
            .any(|n| self.advert.as_ref().is_none_or(|a| !a.covers(n)))
    }

    fn send_status(&mut self, now: Instant, needs: Vec<Need>) {
        let st = self.status(now, needs);
        self.reported_low = st.low;
        self.last_status = Some(now);
        self.send(Body::Status(st));
    }

    fn status(&mut self, now: Instant, needs: Vec<Need>) -> Status {
        let expected = self.highest_seq.saturating_sub(self.seq_at_status);
        let expected = u32::try_from(expected).unwrap_or(u32::MAX);
        let lost = expected.saturating_sub(self.received_since);
        if u64::from(expected) >= LOSS_RISE_PACKETS {
            self.reported_loss = f64::from(lost) / f64::from(expected);
        }
        self.seq_at_status = self.highest_seq;
        self.received_since = 0;
        let (needs, holes) = self.with_holes(needs);
        Status {
            low: self.objects.confirmed.low,
            objects_done: self.objects.objects_done,
            bytes: self.objects.bytes_done,
            highest_seq: self.highest_seq,
            held_us: self.highest_at.map_or(0, |t| {
                u32::try_from(now.saturating_duration_since(t).as_micros()).unwrap_or(u32::MAX)
            }),
            lost,
            expected,
            rejected: self.objects.rejected,
            needs,
            holes,
        }
    }

    /// In a small group ([`feedback::PATCH_GROUP`]), the holes of each need that can list them,
    /// as many as fit one packet of the session's size. A need with holes asks for Patches, a
    /// need without for RaptorQ repair; so a need whose holes do not fit is left for the next
    /// Status rather than sent without them.
    fn with_holes(&self, needs: Vec<Need>) -> (Vec<Need>, Vec<Holes>) {
        let small = self
            .advert
            .as_ref()
            .is_some_and(|a| a.clients <= feedback::PATCH_GROUP);
        let Some(s) = self.session.as_ref().filter(|_| small) else {
            return (needs, Vec::new());
        };
        // A Status of the session's packet size: fixed fields, counts, needs and holes, the tag.
        let mut room = (usize::from(s.symbol_size) + wire::DATA_OVERHEAD)
            .saturating_sub(wire::HEADER_LEN + 40 + 2 + TAG_LEN + 6 * needs.len());
        let (mut kept, mut holes) = (Vec::with_capacity(needs.len()), Vec::new());
        for n in needs {
            if n.count == NEED_ALL {
                kept.push(n);
                continue;
            }
            match self.objects.holes(n.object, wire::MAX_HOLES) {
                None => kept.push(n),
                Some(esis) if holes.len() < wire::MAX_HOLED && 5 + 2 * esis.len() <= room => {
                    room -= 5 + 2 * esis.len();
                    holes.push(Holes {
                        object: n.object,
                        esis,
                    });
                    kept.push(n);
                }
                // Left out: its need entry's room is free again.
                Some(_) => room += 6,
            }
        }
        (kept, holes)
    }

    fn on_time(&mut self, now: Instant) {
        if matches!(self.state, State::Listening) || self.state.terminal() {
            return;
        }
        let master = self.session.as_ref().map(|s| s.master);
        let silent = self
            .last_master
            .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.master_timeout);
        if silent {
            if self.state.before_start() {
                self.listen_again();
                if let Some(master) = master {
                    self.events.push_back(ReceiverEvent::MasterGone {
                        master,
                        reason: "fell silent".into(),
                    });
                }
            } else {
                self.state = State::Lost;
                self.objects.drop_partial();
                self.events.push_back(ReceiverEvent::MasterLost);
            }
            return;
        }
        if self.state == State::Registering
            && self
                .register_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.register_patience)
        {
            if let Some(id) = self.session_id() {
                self.ignore(id, Some(now + UNANSWERED_IGNORED_FOR));
            }
            self.listen_again();
            if let Some(master) = master {
                self.events.push_back(ReceiverEvent::Unanswered { master });
            }
            return;
        }
        if self.state == State::Registering && self.next_register.is_some_and(|t| now >= t) {
            self.next_register = Some(now + REGISTER_EVERY);
            let body = Body::Register(Register {
                nonce: self.nonce,
                label: self.cfg.label.clone(),
                mac: self.cfg.mac,
            });
            self.send(body);
        }
        if matches!(self.state, State::Running | State::Complete)
            && self.next_status.is_some_and(|t| now >= t)
        {
            // Wake once per jittered interval; speak only when it tells the master something.
            let next = feedback::jittered(self.feedback_interval(), self.rng.unit());
            self.next_status = Some(now + next);
            let needs = self.needs();
            if self.worth_a_status(now, &needs) {
                self.send_status(now, needs);
            }
        }
        // Needs do not wait for the interval: a back-off, then a report unless an advertisement
        // covered them meanwhile (NORM's suppression).
        if self.state == State::Running {
            if self.need_report_at.is_some_and(|t| now >= t) {
                self.need_report_at = None;
                let needs = self.needs();
                if self.uncovered(&needs) {
                    self.send_status(now, needs);
                }
            }
            if self.next_need_check.is_none_or(|t| now >= t) {
                self.next_need_check = Some(now + feedback::NEED_CHECK);
                let recent = self
                    .last_status
                    .is_some_and(|t| now.saturating_duration_since(t) < feedback::NEED_CHECK);
                if self.need_report_at.is_none() && !recent && self.uncovered(&self.needs()) {
                    let group = self.advert.as_ref().map_or(1, |a| a.clients);
                    let wait = feedback::backoff(feedback::NEED_BACKOFF, group, self.rng.unit());
                    self.need_report_at = Some(now + wait);
                }
            }
        }
        if self.state == State::Reporting && self.next_report.is_some_and(|t| now >= t) {
            self.next_report = Some(now + REPORT_EVERY);
            if let Some((ok, reason)) = self.report.clone() {
                self.send(Body::Report(Report { ok, reason }));
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
            State::Registering => {
                at(self.next_register);
                at(self.register_since.map(|s| s + self.cfg.register_patience));
            }
            State::Running => {
                at(self.next_status);
                at(self.next_need_check);
                at(self.need_report_at);
            }
            State::Complete => at(self.next_status),
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
