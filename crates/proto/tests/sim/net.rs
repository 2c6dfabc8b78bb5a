//! A deterministic network simulator: virtual clock, masters and clients on one multicast group,
//! seeded loss, duplication, reordering and latency on every link, in both directions.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use imgcast_proto::wire::{self, Body, Header};
use imgcast_proto::{
    Dest, PacketKey, Receiver, ReceiverConfig, ReceiverEvent, Rejection, Sender, SenderConfig,
    SenderEvent, SessionName,
};

/// SplitMix64: repeatable randomness for the network.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One direction of a path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub(crate) loss: f64,
    pub(crate) dup: f64,
    pub(crate) reorder: f64,
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    /// Share of datagrams with one bit flipped in flight: the packet check must catch them.
    pub(crate) corrupt: f64,
    /// Share of keyless data packets whose symbol is changed and then re-sealed with a valid tag
    /// and the original header, as an on-path forger (or a faulty master) would: only the
    /// engine's hash check can catch them.
    pub(crate) forge: f64,
}

impl Link {
    pub(crate) fn clean() -> Self {
        Self {
            loss: 0.0,
            dup: 0.0,
            reorder: 0.0,
            latency: Duration::from_micros(200),
            jitter: Duration::ZERO,
            corrupt: 0.0,
            forge: 0.0,
        }
    }
    pub(crate) fn lossy(loss: f64) -> Self {
        Self {
            loss,
            dup: 0.01,
            reorder: 0.02,
            latency: Duration::from_micros(300),
            jitter: Duration::from_micros(200),
            corrupt: 0.0,
            forge: 0.0,
        }
    }
}

/// What a simulated client's engine does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Register when announced.
    pub(crate) register: bool,
    /// Confirm objects as soon as they arrive (a fast disk); false: never (a stuck disk).
    pub(crate) confirm: bool,
    /// Report done on the trailer.
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

pub(crate) struct TxNode {
    pub(crate) tx: Sender,
    pub(crate) addr: SocketAddr,
    pub(crate) objects: Vec<Vec<u8>>,
    pub(crate) trailer: Vec<u8>,
    pub(crate) pushed: usize,
    pub(crate) finished_objects: bool,
    pub(crate) events: Vec<(Instant, SenderEvent)>,
    pub(crate) link: Link,
}

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
    pub(crate) join_at: Instant,
    pub(crate) die_at: Option<Instant>,
    pub(crate) policy: Policy,
    pub(crate) objects: BTreeMap<u32, Vec<u8>>,
    pub(crate) duplicate_objects: u32,
    pub(crate) trailer: Option<Vec<u8>>,
    pub(crate) events: Vec<(Instant, ReceiverEvent)>,
}

impl RxNode {
    pub(crate) fn saw(&self, f: impl Fn(&ReceiverEvent) -> bool) -> bool {
        self.events.iter().any(|(_, e)| f(e))
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum To {
    Sender(usize),
    Receiver(usize),
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    at: Instant,
    order: u64,
    to: To,
    from: SocketAddr,
    bytes: Vec<u8>,
}

pub(crate) struct Sim {
    pub(crate) t0: Instant,
    pub(crate) now: Instant,
    pub(crate) senders: Vec<TxNode>,
    pub(crate) receivers: Vec<RxNode>,
    flights: BinaryHeap<Reverse<Flight>>,
    order: u64,
    rng: Rng,
    pub(crate) steps: u64,
    /// Group datagrams seen on the wire, as a capturing host would record them (up to `tap_limit`).
    pub(crate) tap: Vec<Vec<u8>>,
    pub(crate) tap_limit: usize,
}

pub(crate) fn addr(host: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + host)), 7000)
}

/// Object bytes for tests: sizes cycle through holes, odd sizes and multi-symbol objects.
pub(crate) fn objects(seed: u64, sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    sizes
        .iter()
        .map(|&n| (0..n).map(|_| rng.next_u64() as u8).collect())
        .collect()
}

pub(crate) fn name(s: &str) -> SessionName {
    SessionName::new(s).expect("valid test name")
}

impl Sim {
    pub(crate) fn new(seed: u64) -> Self {
        let t0 = Instant::now();
        Self {
            t0,
            now: t0,
            senders: Vec::new(),
            receivers: Vec::new(),
            flights: BinaryHeap::new(),
            order: 0,
            rng: Rng::new(seed),
            steps: 0,
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
            objects,
            trailer,
            pushed: 0,
            finished_objects: false,
            events: Vec::new(),
            link: Link::clean(),
        });
        self.senders.len() - 1
    }

    pub(crate) fn add_receiver(
        &mut self,
        cfg: ReceiverConfig,
        down: Link,
        up: Link,
        join_ms: u64,
    ) -> usize {
        let host = 1000 + self.receivers.len() as u32;
        let join_at = self.at(join_ms);
        self.receivers.push(RxNode {
            rx: Receiver::new(cfg),
            rejected: 0,
            gave_up: None,
            lose_unicast: 0,
            addr: addr(host),
            down,
            up,
            join_at,
            die_at: None,
            policy: Policy::default(),
            objects: BTreeMap::new(),
            duplicate_objects: 0,
            trailer: None,
            events: Vec::new(),
        });
        self.receivers.len() - 1
    }

    fn active(&self, i: usize) -> bool {
        let r = &self.receivers[i];
        self.now >= r.join_at && r.die_at.is_none_or(|d| self.now < d)
    }

    fn schedule(&mut self, link: Link, to: To, from: SocketAddr, mut bytes: Vec<u8>) {
        if self.rng.unit() < link.loss {
            return;
        }
        if link.corrupt > 0.0 && self.rng.unit() < link.corrupt && !bytes.is_empty() {
            let i = (self.rng.next_u64() % bytes.len() as u64) as usize;
            bytes[i] ^= 1 << (self.rng.next_u64() % 8);
        }
        if link.forge > 0.0 && self.rng.unit() < link.forge {
            bytes = self.forged(bytes);
        }
        let copies = if self.rng.unit() < link.dup { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = link.latency + link.jitter.mul_f64(self.rng.unit());
            if self.rng.unit() < link.reorder {
                delay += link.latency * 3;
            }
            self.order += 1;
            self.flights.push(Reverse(Flight {
                at: self.now + delay,
                order: self.order,
                to: match &to {
                    To::Sender(i) => To::Sender(*i),
                    To::Receiver(i) => To::Receiver(*i),
                },
                from,
                bytes: bytes.clone(),
            }));
        }
    }

    /// A keyless data packet with its symbol changed, re-sealed under the run's check key with its
    /// original header: it passes the packet check and the replay window.
    fn forged(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        let Ok(h) = Header::peek(&bytes) else {
            return bytes;
        };
        let key = PacketKey::new(None, &h.name_hash, h.session_id);
        let Ok(mut p) = wire::open(&bytes, &key) else {
            return bytes;
        };
        let Body::Data(d) = &mut p.body else {
            return bytes;
        };
        let i = (self.rng.next_u64() % d.symbol.len() as u64) as usize;
        d.symbol[i] ^= 0x5a;
        wire::seal(&p, &key)
    }

    /// Injects a datagram to a receiver (or, with `None`, to sender 0) arriving now.
    pub(crate) fn inject(&mut self, receiver: Option<usize>, from: SocketAddr, bytes: Vec<u8>) {
        self.order += 1;
        self.flights.push(Reverse(Flight {
            at: self.now,
            order: self.order,
            to: receiver.map_or(To::Sender(0), To::Receiver),
            from,
            bytes,
        }));
    }

    fn route_from_sender(&mut self, s: usize, dest: Dest, payload: Vec<u8>) {
        let from = self.senders[s].addr;
        match dest {
            Dest::Group => {
                if self.tap.len() < self.tap_limit {
                    self.tap.push(payload.clone());
                }
                for r in 0..self.receivers.len() {
                    let link = self.receivers[r].down;
                    self.schedule(link, To::Receiver(r), from, payload.clone());
                }
                for o in 0..self.senders.len() {
                    if o != s {
                        let link = self.senders[o].link;
                        self.schedule(link, To::Sender(o), from, payload.clone());
                    }
                }
            }
            Dest::Peer(a) => {
                if let Some(r) = self.receivers.iter().position(|n| n.addr == a) {
                    if self.receivers[r].lose_unicast > 0 {
                        self.receivers[r].lose_unicast -= 1;
                        return;
                    }
                    let link = self.receivers[r].down;
                    self.schedule(link, To::Receiver(r), from, payload);
                }
            }
        }
    }

    /// One step: deliver what is due, let every node send and react, advance the clock.
    /// Returns false when nothing will ever happen again.
    pub(crate) fn step(&mut self) -> bool {
        self.steps += 1;
        let now = self.now;
        while self.flights.peek().is_some_and(|Reverse(f)| f.at <= now) {
            let Some(Reverse(f)) = self.flights.pop() else {
                break;
            };
            match f.to {
                To::Sender(i) => self.senders[i].tx.handle(now, f.from, &f.bytes),
                To::Receiver(i) => {
                    if self.active(i) {
                        self.receivers[i].rx.handle(now, f.from, &f.bytes);
                    }
                }
            }
        }
        for s in 0..self.senders.len() {
            let n = &mut self.senders[s];
            while n.tx.want_objects() > 0 && n.pushed < n.objects.len() {
                let data = n.objects[n.pushed].clone();
                n.tx.push_object(n.pushed as u32, data)
                    .expect("push in window");
                n.pushed += 1;
            }
            if n.pushed == n.objects.len() && !n.finished_objects {
                n.finished_objects = n.tx.finish_objects(n.trailer.clone()).is_ok();
            }
            while let Some(t) = self.senders[s].tx.poll_transmit(now) {
                self.route_from_sender(s, t.dest, t.payload);
            }
            while let Some(e) = self.senders[s].tx.poll_event() {
                self.senders[s].events.push((now, e));
            }
        }
        for r in 0..self.receivers.len() {
            if !self.active(r) {
                continue;
            }
            loop {
                while let Some(t) = self.receivers[r].rx.poll_transmit(now) {
                    let Dest::Peer(a) = t.dest else {
                        panic!("receivers only unicast");
                    };
                    if let Some(s) = self.senders.iter().position(|n| n.addr == a) {
                        let (link, from) = (self.receivers[r].up, self.receivers[r].addr);
                        self.schedule(link, To::Sender(s), from, t.payload);
                    }
                }
                let mut any = false;
                while let Some(e) = self.receivers[r].rx.poll_event() {
                    any = true;
                    let n = &mut self.receivers[r];
                    match &e {
                        ReceiverEvent::Announced { .. } if n.policy.register => {
                            n.rx.register(now, 64 << 20)
                                .expect("register after announce");
                        }
                        ReceiverEvent::Object { index, bytes } => {
                            // The engine's hash check: the truth is the followed master's object.
                            let truth =
                                n.rx.session_id()
                                    .and_then(|id| {
                                        self.senders.iter().find(|s| s.tx.session_id() == id)
                                    })
                                    .and_then(|s| s.objects.get(*index as usize));
                            if truth == Some(bytes) {
                                if n.objects.insert(*index, bytes.clone()).is_some() {
                                    n.duplicate_objects += 1;
                                }
                                if n.policy.confirm {
                                    n.rx.object_done(*index);
                                }
                            } else {
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
                        ReceiverEvent::Trailer(t) => {
                            let expected =
                                n.rx.session_id()
                                    .and_then(|id| {
                                        self.senders.iter().find(|s| s.tx.session_id() == id)
                                    })
                                    .map(|s| s.trailer.clone());
                            // The engine's root check: only the run's own trailer is obeyed.
                            if expected.as_ref() == Some(t) {
                                n.trailer = Some(t.clone());
                                // A client moved in the same instant has nothing to report.
                                if n.policy.report {
                                    let _ = n.rx.report_done(now, String::new());
                                }
                            }
                        }
                        ReceiverEvent::Queued | ReceiverEvent::Dropped | ReceiverEvent::Moved => {
                            n.objects.clear()
                        }
                        _ => {}
                    }
                    n.events.push((now, e));
                }
                if !any {
                    break;
                }
            }
        }
        // Next instant anything happens.
        let mut next: Option<Instant> = self.flights.peek().map(|Reverse(f)| f.at);
        let mut at = |i: Option<Instant>| {
            if let Some(i) = i {
                next = Some(next.map_or(i, |n| n.min(i)));
            }
        };
        for s in &self.senders {
            at(s.tx.poll_timeout());
        }
        for (i, r) in self.receivers.iter().enumerate() {
            if self.active(i) {
                at(r.rx.poll_timeout());
            }
            if r.join_at > self.now {
                at(Some(r.join_at));
            }
            if let Some(d) = r.die_at.filter(|d| *d > self.now) {
                at(Some(d));
            }
        }
        match next {
            None => false,
            Some(n) => {
                self.now = n.max(self.now + Duration::from_nanos(1));
                true
            }
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
    SenderConfig::new(name(n), id, objects.len() as u32)
}

pub(crate) fn receiver_cfg(n: &str, id: u64) -> ReceiverConfig {
    ReceiverConfig::new(name(n), id, &format!("pc-{id}"))
}
