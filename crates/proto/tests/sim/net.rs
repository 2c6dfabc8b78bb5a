//! A deterministic network simulator: virtual clock, masters and clients on one multicast group,
//! seeded impairments on every link, in both directions (see `links`).
//!
//! It is an event queue: one heap holds datagrams in flight and node wake-ups, ordered by
//! (time, insertion order) so the same seed always gives the same run. A step handles only the
//! nodes with a delivery or a due wake-up; each is re-scheduled at its `poll_timeout()` (or its
//! disk's next write) afterwards, and stale wake-ups are skipped when popped (lazy invalidation).
//! A group datagram is one shared `Rc<[u8]>` for all receivers; only corruption and forging copy.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use imgcast_proto::wire::{self, Body, Header};
use imgcast_proto::{
    Decoded, Dest, PacketKey, Receiver, ReceiverConfig, ReceiverEvent, Rejection, Sender,
    SenderConfig, SenderEvent, SessionName,
};

use crate::disk::Disk;
pub(crate) use crate::links::{Bottleneck, Link, Rng};

/// Most datagrams (or events) one node may produce in one instant: a guard against a state machine
/// that never stops returning work.
const MAX_PER_INSTANT: usize = 1 << 20;

/// Wire type codes (`Body::kind`) the counters tell apart.
const KIND_REGISTER: u8 = 2;
const KIND_DATA: u8 = 5;
const KIND_STATUS: u8 = 6;
const KIND_REPORT: u8 = 8;
const KIND_BYE: u8 = 11;

/// What a simulated client's engine does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Register when announced.
    pub(crate) register: bool,
    /// Confirm objects once written (at once, or at the node's `disk` rate); false: never (a stuck
    /// disk).
    pub(crate) confirm: bool,
    /// Report done on the trailer, once every object is written.
    pub(crate) report: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            register: true,
            confirm: true,
            report: true,
        }
    }
}

/// A simulated master and what its engine fed it.
pub(crate) struct TxNode {
    pub(crate) tx: Sender,
    pub(crate) addr: SocketAddr,
    /// Shared, so a receiver's verified copy costs no memory.
    pub(crate) objects: Vec<Rc<Vec<u8>>>,
    pub(crate) trailer: Vec<u8>,
    pub(crate) pushed: usize,
    pub(crate) finished_objects: bool,
    pub(crate) events: Vec<(Instant, SenderEvent)>,
    /// How the group and other masters reach it.
    pub(crate) link: Link,
    /// The master's own uplink, shared by everything it sends (group and unicast).
    pub(crate) uplink: Option<Bottleneck>,
    wake: Option<Instant>,
    dirty: bool,
}

/// A simulated client, its paths and what its engine kept.
pub(crate) struct RxNode {
    pub(crate) rx: Receiver,
    /// Objects that failed verification and were thrown away (and asked for again).
    pub(crate) rejected: u32,
    /// Set when the engine gave up: an object failed the bound number of times.
    pub(crate) gave_up: Option<String>,
    /// Unicast packets from the master to drop before delivering any (lost acks).
    pub(crate) lose_unicast: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) down: Link,
    pub(crate) up: Link,
    /// A bottleneck before `down` (the client's port or access link).
    pub(crate) downlink: Option<Bottleneck>,
    /// A writer with a bounded rate; `None` writes at once.
    pub(crate) disk: Option<Disk>,
    /// How long each offloaded decode takes, one at a time (a client whose decode threads are
    /// busy); `None` decodes at once.
    pub(crate) decode_time: Option<Duration>,
    /// Offloaded decodes running or queued: the result, and when it is handed back.
    decodes: VecDeque<(Instant, Decoded)>,
    pub(crate) join_at: Instant,
    pub(crate) die_at: Option<Instant>,
    pub(crate) policy: Policy,
    /// Verified objects: the master's own bytes (the engine compared them).
    pub(crate) objects: BTreeMap<u32, Rc<Vec<u8>>>,
    pub(crate) duplicate_objects: u32,
    pub(crate) trailer: Option<Vec<u8>>,
    reported: bool,
    /// When `Completed` happened.
    pub(crate) completed_at: Option<Instant>,
    /// Every event, when it happened; `Object` events without their bytes.
    pub(crate) events: Vec<(Instant, ReceiverEvent)>,
    wake: Option<Instant>,
    dirty: bool,
}

impl RxNode {
    pub(crate) fn saw(&self, f: impl Fn(&ReceiverEvent) -> bool) -> bool {
        self.events.iter().any(|(_, e)| f(e))
    }
}

/// Client → master datagrams, by type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Feedback {
    pub(crate) register: u64,
    pub(crate) status: u64,
    pub(crate) report: u64,
    /// Byes of the run's last clients.
    pub(crate) bye: u64,
    /// Anything else (or unreadable).
    pub(crate) other: u64,
    pub(crate) bytes: u64,
}

impl Feedback {
    pub(crate) fn packets(&self) -> u64 {
        self.register + self.status + self.report + self.bye + self.other
    }
}

/// What went over the wire, counted where it was sent (before any loss).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Every datagram masters sent to the group, and its bytes.
    pub(crate) group_packets: u64,
    pub(crate) group_bytes: u64,
    /// Group Data packets (source and repair symbols), and their bytes.
    pub(crate) data_packets: u64,
    pub(crate) data_bytes: u64,
    /// Masters' unicast datagrams to clients, and their bytes.
    pub(crate) unicast_packets: u64,
    pub(crate) unicast_bytes: u64,
    /// Every client → master datagram.
    pub(crate) feedback: Feedback,
}

impl Counters {
    /// Everything masters sent.
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.group_bytes + self.unicast_bytes
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum To {
    Sender(usize),
    Receiver(usize),
}

enum What {
    Deliver {
        to: To,
        from: SocketAddr,
        bytes: Rc<[u8]>,
    },
    Wake(To),
}

/// The event heap and the network's randomness: what every link draws from.
///
/// The heap holds only (time, insertion order, slot); the events themselves wait in `slots`, so
/// the heap's sifting moves 32 bytes per entry, not a whole datagram record.
struct Wire {
    heap: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    slots: Vec<Option<What>>,
    free: Vec<u32>,
    order: u64,
    rng: Rng,
    /// Name hash of each run seen in a long header, as a forger on the wire learns it (a short
    /// header leaves it out).
    names: Vec<(u64, [u8; 8])>,
}

impl Wire {
    fn new(seed: u64) -> Self {
        Self {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            order: 0,
            rng: Rng::new(seed),
            names: Vec::new(),
        }
    }

    fn push(&mut self, at: Instant, what: What) {
        self.order += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(what);
                i
            }
            None => {
                self.slots.push(Some(what));
                (self.slots.len() - 1) as u32
            }
        };
        self.heap.push(Reverse((at, self.order, slot)));
    }

    /// When the earliest event is due.
    fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The earliest event if it is due by `now`. Ties go in insertion order: the run depends
    /// only on the seed.
    fn pop_due(&mut self, now: Instant) -> Option<(Instant, What)> {
        if self.next_at()? > now {
            return None;
        }
        let Reverse((at, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        let what = self.slots[slot as usize].take()?;
        Some((at, what))
    }

    /// Sends `bytes`, entering `link` at `at` (after any queue), towards `to`.
    fn send(&mut self, at: Instant, link: &mut Link, to: To, from: SocketAddr, bytes: &Rc<[u8]>) {
        if link.lose(&mut self.rng) {
            return;
        }
        let mut bytes = Rc::clone(bytes);
        if link.corrupt > 0.0 && self.rng.unit() < link.corrupt && !bytes.is_empty() {
            let mut v = bytes.to_vec();
            let i = (self.rng.next_u64() % v.len() as u64) as usize;
            v[i] ^= 1 << (self.rng.next_u64() % 8);
            bytes = v.into();
        }
        if link.forge > 0.0 {
            self.learn_name(&bytes);
            if self.rng.unit() < link.forge {
                if let Some(f) = self.forged(&bytes) {
                    bytes = f.into();
                }
            }
        }
        let copies = if self.rng.unit() < link.dup { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = link.latency + link.jitter.mul_f64(self.rng.unit());
            if self.rng.unit() < link.reorder {
                delay += link.latency * 3;
            }
            let what = What::Deliver {
                to,
                from,
                bytes: Rc::clone(&bytes),
            };
            self.push(at + delay, what);
        }
    }

    /// Remembers the name hash of a run from a long header (its Announces carry one).
    fn learn_name(&mut self, bytes: &[u8]) {
        if let Ok(Header {
            name_hash: Some(n),
            session_id,
            ..
        }) = Header::peek(bytes)
        {
            if !self.names.iter().any(|&(id, _)| id == session_id) && self.names.len() < 64 {
                self.names.push((session_id, n));
            }
        }
    }

    /// A keyless data packet with its symbol changed, re-sealed under the run's check key with its
    /// original header: it passes the packet check and the replay window.
    fn forged(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let h = Header::peek(bytes).ok()?;
        let name_hash = match h.name_hash {
            Some(n) => n,
            None => self.names.iter().find(|&&(id, _)| id == h.session_id)?.1,
        };
        let key = PacketKey::new(None, &name_hash, h.session_id);
        let mut p = wire::open(bytes, &key).ok()?;
        let Body::Data(d) = &mut p.body else {
            return None;
        };
        let i = (self.rng.next_u64() % d.symbol.len() as u64) as usize;
        d.symbol[i] ^= 0x5a;
        Some(wire::seal(&p, &key))
    }
}

/// The network and its nodes. A test adds masters and clients, then calls `step`, `run_until` or
/// `drive_bounded`; it reads nodes, `counters` and `tap` between steps. A test that changes a master
/// from outside (`start_now`, `abort`) calls `wake_sender` so it is handled in the next step.
pub(crate) struct Sim {
    pub(crate) t0: Instant,
    pub(crate) now: Instant,
    pub(crate) senders: Vec<TxNode>,
    pub(crate) receivers: Vec<RxNode>,
    wire: Wire,
    /// Receivers to handle in this step, in the order they became due.
    due: Vec<usize>,
    pub(crate) steps: u64,
    pub(crate) counters: Counters,
    /// Group datagrams seen on the wire, as a capturing host would record them (up to `tap_limit`).
    pub(crate) tap: Vec<Vec<u8>>,
    pub(crate) tap_limit: usize,
}

/// The simulated LAN, 10.0.0.0/8: masters are hosts 1, 2, …; clients [`FIRST_CLIENT`] onwards.
const NET: u32 = 0x0A00_0000;
const FIRST_CLIENT: u32 = 1000;

pub(crate) fn addr(host: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(NET + host)), 7000)
}

/// Object bytes for tests: sizes cycle through holes, odd sizes and multi-symbol objects.
pub(crate) fn objects(seed: u64, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    sizes
        .iter()
        .map(|&n| {
            let mut v = Vec::with_capacity(n + 8);
            while v.len() < n {
                v.extend_from_slice(&rng.next_u64().to_le_bytes());
            }
            v.truncate(n);
            v
        })
        .collect()
}

pub(crate) fn name(s: &str) -> SessionName {
    SessionName::new(s).expect("valid test name")
}

/// The first instant strictly after `now` (the clock must move on every step).
fn after(now: Instant) -> Instant {
    now + Duration::from_nanos(1)
}

impl Sim {
    pub(crate) fn new(seed: u64) -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            now: t0,
            senders: Vec::new(),
            receivers: Vec::new(),
            wire: Wire::new(seed),
            due: Vec::new(),
            steps: 0,
            counters: Counters::default(),
            tap: Vec::new(),
            tap_limit: 0,
        }
    }

    pub(crate) fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Adds a master; `cfg.object_count` must equal `objects.len()`.
    pub(crate) fn add_sender(
        &mut self,
        cfg: SenderConfig,
        objects: Vec<Vec<u8>>,
        trailer: Vec<u8>,
    ) -> usize {
        let tx = Sender::new(cfg, self.now).expect("valid sender config");
        let host = 1 + self.senders.len() as u32;
        self.senders.push(TxNode {
            tx,
            addr: addr(host),
            objects: objects.into_iter().map(Rc::new).collect(),
            trailer,
            pushed: 0,
            finished_objects: false,
            events: Vec::new(),
            link: Link::clean(),
            uplink: None,
            wake: None,
            dirty: false,
        });
        let s = self.senders.len() - 1;
        self.wake_sender(s);
        s
    }

    pub(crate) fn add_receiver(
        &mut self,
        cfg: ReceiverConfig,
        down: Link,
        up: Link,
        join_ms: u64,
    ) -> usize {
        let host = FIRST_CLIENT + self.receivers.len() as u32;
        let join_at = self.at(join_ms).max(self.now);
        self.receivers.push(RxNode {
            rx: Receiver::new(cfg),
            rejected: 0,
            gave_up: None,
            lose_unicast: 0,
            addr: addr(host),
            down,
            up,
            downlink: None,
            disk: None,
            decode_time: None,
            decodes: VecDeque::new(),
            join_at,
            die_at: None,
            policy: Policy::default(),
            objects: BTreeMap::new(),
            duplicate_objects: 0,
            trailer: None,
            reported: false,
            completed_at: None,
            events: Vec::new(),
            wake: None,
            dirty: false,
        });
        let r = self.receivers.len() - 1;
        self.schedule(To::Receiver(r), join_at);
        r
    }

    /// Handles sender `s` in the next step: for a test that changed it from outside (`start_now`,
    /// `abort`), which its `poll_timeout()` may not show.
    pub(crate) fn wake_sender(&mut self, s: usize) {
        self.senders[s].wake = None;
        self.schedule(To::Sender(s), self.now);
    }

    /// Makes node `to` due at `at` (no earlier than now), replacing its previous wake-up.
    fn schedule(&mut self, to: To, at: Instant) {
        let at = at.max(self.now);
        let wake = match to {
            To::Sender(s) => &mut self.senders[s].wake,
            To::Receiver(r) => &mut self.receivers[r].wake,
        };
        if *wake == Some(at) {
            return;
        }
        *wake = Some(at);
        self.wire.push(at, What::Wake(to));
    }

    /// The receiver at `a`: clients are numbered from host [`FIRST_CLIENT`], so no search.
    fn receiver_at(&self, a: SocketAddr) -> Option<usize> {
        let IpAddr::V4(ip) = a.ip() else { return None };
        let r = u32::from(ip).checked_sub(NET + FIRST_CLIENT)? as usize;
        self.receivers.get(r).filter(|n| n.addr == a).map(|_| r)
    }

    fn active(&self, i: usize) -> bool {
        let r = &self.receivers[i];
        self.now >= r.join_at && r.die_at.is_none_or(|d| self.now < d)
    }

    /// Injects a datagram to a receiver (or, with `None`, to sender 0) arriving now.
    pub(crate) fn inject(&mut self, receiver: Option<usize>, from: SocketAddr, bytes: Vec<u8>) {
        let to = receiver.map_or(To::Sender(0), To::Receiver);
        let what = What::Deliver {
            to,
            from,
            bytes: bytes.into(),
        };
        self.wire.push(self.now, what);
    }

    fn route_from_sender(&mut self, s: usize, dest: Dest, payload: Vec<u8>) {
        let now = self.now;
        let len = payload.len() as u64;
        let kind = Header::peek(&payload).map_or(0, |h| h.kind);
        let from = self.senders[s].addr;
        let bytes: Rc<[u8]> = payload.into();
        match dest {
            Dest::Group => {
                let c = &mut self.counters;
                c.group_packets += 1;
                c.group_bytes += len;
                if kind == KIND_DATA {
                    c.data_packets += 1;
                    c.data_bytes += len;
                }
                if self.tap.len() < self.tap_limit {
                    self.tap.push(bytes.to_vec());
                }
            }
            Dest::Peer(_) => {
                self.counters.unicast_packets += 1;
                self.counters.unicast_bytes += len;
            }
        }
        let left = match &mut self.senders[s].uplink {
            Some(q) => q.offer(now, bytes.len()),
            None => Some(now),
        };
        let Some(left) = left else { return };
        match dest {
            Dest::Group => {
                for r in 0..self.receivers.len() {
                    let n = &mut self.receivers[r];
                    let Some(at) = n
                        .downlink
                        .as_mut()
                        .map_or(Some(left), |q| q.offer(left, len as usize))
                    else {
                        continue;
                    };
                    self.wire
                        .send(at, &mut n.down, To::Receiver(r), from, &bytes);
                }
                for o in 0..self.senders.len() {
                    if o != s {
                        let link = &mut self.senders[o].link;
                        self.wire.send(left, link, To::Sender(o), from, &bytes);
                    }
                }
            }
            Dest::Peer(a) => {
                let Some(r) = self.receiver_at(a) else {
                    return;
                };
                let n = &mut self.receivers[r];
                if n.lose_unicast > 0 {
                    n.lose_unicast -= 1;
                    return;
                }
                let Some(at) = n
                    .downlink
                    .as_mut()
                    .map_or(Some(left), |q| q.offer(left, len as usize))
                else {
                    return;
                };
                self.wire
                    .send(at, &mut n.down, To::Receiver(r), from, &bytes);
            }
        }
    }

    fn route_from_receiver(&mut self, r: usize, dest: Dest, payload: Vec<u8>) {
        let Dest::Peer(a) = dest else {
            panic!("receivers only unicast");
        };
        let f = &mut self.counters.feedback;
        f.bytes += payload.len() as u64;
        match Header::peek(&payload).map_or(0, |h| h.kind) {
            KIND_REGISTER => f.register += 1,
            KIND_STATUS => f.status += 1,
            KIND_REPORT => f.report += 1,
            KIND_BYE => f.bye += 1,
            _ => f.other += 1,
        }
        if let Some(s) = self.senders.iter().position(|n| n.addr == a) {
            let n = &mut self.receivers[r];
            let bytes: Rc<[u8]> = payload.into();
            self.wire
                .send(self.now, &mut n.up, To::Sender(s), n.addr, &bytes);
        }
    }

    /// One step: deliver what is due, let the nodes that have something to do send and react,
    /// advance the clock to the next event. Returns false when nothing will ever happen again.
    pub(crate) fn step(&mut self) -> bool {
        self.steps += 1;
        let now = self.now;
        while let Some((at, what)) = self.wire.pop_due(now) {
            match what {
                What::Deliver { to, from, bytes } => match to {
                    To::Sender(s) if s < self.senders.len() => {
                        self.senders[s].tx.handle(now, from, &bytes);
                        self.senders[s].dirty = true;
                    }
                    To::Receiver(r) if self.active(r) => {
                        self.receivers[r].rx.handle(now, from, &bytes);
                        self.mark(r);
                    }
                    _ => {}
                },
                What::Wake(To::Sender(s)) => {
                    if let Some(n) = self.senders.get_mut(s).filter(|n| n.wake == Some(at)) {
                        n.wake = None;
                        n.dirty = true;
                    }
                }
                What::Wake(To::Receiver(r)) => {
                    if self.receivers[r].wake == Some(at) {
                        self.receivers[r].wake = None;
                        self.mark(r);
                    }
                }
            }
        }
        for s in 0..self.senders.len() {
            if std::mem::take(&mut self.senders[s].dirty) {
                self.handle_sender(s);
            }
        }
        let due = std::mem::take(&mut self.due);
        for &r in &due {
            self.receivers[r].dirty = false;
            if self.active(r) {
                self.handle_receiver(r);
            }
        }
        self.due = due;
        self.due.clear();
        match self.wire.next_at() {
            None => false,
            Some(at) => {
                self.now = at.max(after(now));
                true
            }
        }
    }

    fn mark(&mut self, r: usize) {
        let n = &mut self.receivers[r];
        if !n.dirty {
            n.dirty = true;
            self.due.push(r);
        }
    }

    fn handle_sender(&mut self, s: usize) {
        let now = self.now;
        for _ in 0..MAX_PER_INSTANT {
            let n = &mut self.senders[s];
            let mut busy = false;
            while n.tx.want_objects() > 0 && n.pushed < n.objects.len() {
                let data = n.objects[n.pushed].as_ref().clone();
                n.tx.push_object(n.pushed as u32, data)
                    .expect("push in window");
                n.pushed += 1;
                busy = true;
            }
            if n.pushed == n.objects.len() && !n.finished_objects {
                n.finished_objects = n.tx.finish_objects(n.trailer.clone()).is_ok();
            }
            while let Some(t) = self.senders[s].tx.poll_transmit(now) {
                busy = true;
                self.route_from_sender(s, t.dest, t.payload);
            }
            let n = &mut self.senders[s];
            while let Some(e) = n.tx.poll_event() {
                busy = true;
                // The engine's encoder threads, here at once.
                if let SenderEvent::Encode(job) = &e {
                    n.tx.encoder_done(now, job.clone().run());
                }
                n.events.push((now, e));
            }
            if !busy {
                let next = n.tx.poll_timeout().map(|t| t.max(after(now)));
                if let Some(t) = next {
                    self.schedule(To::Sender(s), t);
                }
                return;
            }
        }
        panic!("sender {s} kept busy for {MAX_PER_INSTANT} rounds at one instant");
    }

    fn handle_receiver(&mut self, r: usize) {
        let now = self.now;
        let n = &mut self.receivers[r];
        if let Some(d) = &mut n.disk {
            while let Some(index) = d.pop_done(now) {
                n.rx.object_done(index);
            }
        }
        while n.decodes.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, done)) = n.decodes.pop_front() {
                n.rx.decode_done(now, done);
            }
        }
        self.try_report(r);
        for _ in 0..MAX_PER_INSTANT {
            while let Some(t) = self.receivers[r].rx.poll_transmit(now) {
                self.route_from_receiver(r, t.dest, t.payload);
            }
            let Some(e) = self.receivers[r].rx.poll_event() else {
                let n = &self.receivers[r];
                let next = [
                    n.rx.poll_timeout(),
                    n.disk.as_ref().and_then(Disk::next_done),
                    n.decodes.front().map(|(t, _)| *t),
                ]
                .into_iter()
                .flatten()
                .min();
                if let Some(t) = next {
                    self.schedule(To::Receiver(r), t.max(after(now)));
                }
                return;
            };
            let mut e = e;
            self.engine(r, &e);
            // Kept without its bytes (`objects` holds the verified ones): a thousand receivers'
            // copies of the image would not fit in memory.
            if let ReceiverEvent::Object { bytes, .. } = &mut e {
                *bytes = Vec::new();
            }
            self.receivers[r].events.push((now, e));
        }
        panic!("receiver {r} kept busy for {MAX_PER_INSTANT} events at one instant");
    }

    /// What the client's engine does with an event.
    fn engine(&mut self, r: usize, e: &ReceiverEvent) {
        let now = self.now;
        let n = &mut self.receivers[r];
        // The engine's hash and root checks: the truth is the followed master's.
        let truth =
            n.rx.session_id()
                .and_then(|id| self.senders.iter().find(|s| s.tx.session_id() == id));
        match e {
            ReceiverEvent::Announced { .. } if n.policy.register => {
                n.rx.register(now, 64 << 20)
                    .expect("register after announce");
            }
            ReceiverEvent::Object { index, bytes } => {
                match truth.and_then(|s| s.objects.get(*index as usize)) {
                    Some(t) if **t == *bytes => {
                        if n.objects.insert(*index, Rc::clone(t)).is_some() {
                            n.duplicate_objects += 1;
                        }
                        if n.policy.confirm {
                            match &mut n.disk {
                                Some(d) => {
                                    d.queue(now, *index, bytes.len() as u64);
                                }
                                None => n.rx.object_done(*index),
                            }
                        }
                    }
                    _ => {
                        n.rejected += 1;
                        match n.rx.object_failed(*index) {
                            Rejection::GiveUp { attempts } => {
                                let why = format!(
                                    "chunk {index} failed its check {attempts} times; giving up"
                                );
                                n.gave_up = Some(why.clone());
                                let _ = n.rx.report_failed(now, why);
                            }
                            Rejection::Retry { .. } => {}
                            Rejection::NotPending => panic!("object {index} not pending"),
                        }
                    }
                }
            }
            ReceiverEvent::Trailer(t) if truth.is_some_and(|s| s.trailer == *t) => {
                n.trailer = Some(t.clone());
                self.try_report(r);
            }
            ReceiverEvent::Queued
            | ReceiverEvent::Dropped
            | ReceiverEvent::Moved
            | ReceiverEvent::Aborted { .. }
            | ReceiverEvent::MasterLost => {
                n.objects.clear();
                n.trailer = None;
                n.reported = false;
                if let Some(d) = &mut n.disk {
                    d.discard();
                }
            }
            ReceiverEvent::Completed => n.completed_at = Some(now),
            // The engine's decode threads: at once, or one after another at `decode_time` each.
            ReceiverEvent::Decode(job) => match n.decode_time {
                None => n.rx.decode_done(now, job.clone().run()),
                Some(d) => {
                    let start = n.decodes.back().map_or(now, |(t, _)| (*t).max(now));
                    n.decodes.push_back((start + d, job.clone().run()));
                }
            },
            _ => {}
        }
    }

    /// Reports done once the run's trailer arrived and the disk wrote every object; at most once
    /// accepted per run.
    fn try_report(&mut self, r: usize) {
        let now = self.now;
        let n = &mut self.receivers[r];
        let written = n.disk.as_ref().is_none_or(Disk::idle);
        if n.policy.report && !n.reported && n.trailer.is_some() && written {
            // Refused when an object was thrown away in the same instant (the trailer comes again
            // once it is fetched anew) or the client was moved: nothing to report yet.
            n.reported = n.rx.report_done(now, String::new()).is_ok();
        }
    }

    /// Steps until `done` holds; panics after `max_steps`.
    pub(crate) fn drive_bounded(&mut self, max_steps: u64, done: impl Fn(&Self) -> bool) {
        for _ in 0..max_steps {
            if done(self) {
                return;
            }
            if !self.step() {
                assert!(done(self), "simulation went idle before the goal");
                return;
            }
        }
        panic!(
            "goal not reached in {max_steps} steps (virtual time {:?})",
            self.now - self.t0
        );
    }

    /// Steps until virtual time `t`.
    pub(crate) fn run_until(&mut self, t: Instant) {
        while self.now < t {
            if !self.step() {
                self.now = t;
            }
        }
    }

    pub(crate) fn sender_saw(&self, s: usize, f: impl Fn(&SenderEvent) -> bool) -> Option<Instant> {
        self.senders[s]
            .events
            .iter()
            .find(|(_, e)| f(e))
            .map(|(t, _)| *t)
    }

    pub(crate) fn finished(&self, s: usize) -> bool {
        self.sender_saw(s, |e| matches!(e, SenderEvent::Finished))
            .is_some()
    }

    /// Virtual time from the start of the simulation to receiver `r`'s `Completed`.
    pub(crate) fn completion(&self, r: usize) -> Option<Duration> {
        self.receivers[r].completed_at.map(|t| t - self.t0)
    }

    /// Gives receiver `r` a disk that writes `bytes_per_s`.
    pub(crate) fn slow_disk(&mut self, r: usize, bytes_per_s: u64) {
        self.receivers[r].disk = Some(Disk::new(bytes_per_s));
    }

    /// Asserts receiver `r` holds exactly the objects and trailer of sender `s`, once each.
    pub(crate) fn assert_exact(&self, s: usize, r: usize) {
        let n = &self.receivers[r];
        let src = &self.senders[s];
        assert_eq!(n.duplicate_objects, 0, "receiver {r} got an object twice");
        assert_eq!(
            n.objects.len(),
            src.objects.len(),
            "receiver {r} object count; events {:?}",
            n.events
                .iter()
                .filter(|(_, e)| !matches!(e, ReceiverEvent::Object { .. }))
                .collect::<Vec<_>>()
        );
        for (i, o) in &n.objects {
            assert!(
                o == &src.objects[*i as usize],
                "receiver {r} object {i} differs"
            );
        }
        assert_eq!(
            n.trailer.as_ref(),
            Some(&src.trailer),
            "receiver {r} trailer"
        );
        assert!(
            n.saw(|e| matches!(e, ReceiverEvent::Completed)),
            "receiver {r} not completed"
        );
    }

    /// Source symbols of sender `s`'s stored image: what a perfect run sends.
    pub(crate) fn source_symbols(&self, s: usize) -> u64 {
        let t = u64::from(self.senders[s].tx.symbol_size());
        self.senders[s]
            .objects
            .iter()
            .map(|o| (o.len() as u64).div_ceil(t).max(1))
            .sum()
    }
}

pub(crate) fn sender_cfg(n: &str, id: u64, objects: &[Vec<u8>]) -> SenderConfig {
    let mut c = SenderConfig::new(name(n), id, objects.len() as u32);
    // As the engine runs it.
    c.offload_encoders = true;
    c
}

pub(crate) fn receiver_cfg(n: &str, id: u64) -> ReceiverConfig {
    ReceiverConfig::new(name(n), id, &format!("pc-{id}"))
}
