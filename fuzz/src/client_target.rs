//! Fuzz target `client_target`: datagrams through a client's [`Receiver`] and [`ClientCore`] into
//! a real target file — the whole client minus its sockets: open, write, finish. A real
//! [`Sender`] serves a small real image, and the fuzzer injects datagrams, captured packets of
//! the session with bytes changed (optionally sealed again with the run's key, so they pass the
//! packet check the way a forger's would), and clock steps. Shared by
//! `fuzz_targets/client_target.rs` and the corpus replay test of imgcast-engine
//! (`crates/engine/tests/fuzz_corpus.rs`).
//!
//! The oracle, whatever the input: a target that was never opened still holds its old bytes; one
//! that was opened and not finished carries the incomplete marker; one that finished is exactly
//! the source disk.
//!
//! Input: a mode byte (bit 0: keyed session; bit 1: the root hash committed in the Announce; bit 2:
//! the master starts only when an exchange op says so, not at its first client), then operations,
//! each an op byte and a
//! little-endian u16 `len`:
//! - op & 3 == 0: the next `len` bytes are a datagram to the client;
//! - op & 3 == 1: packet number `len` (modulo those captured) of the last 64 the master sent, with
//!   the byte at the u16 position in the next 2 bytes XORed with the third, is delivered;
//! - op & 3 == 2: the clock advances `len` milliseconds;
//! - op & 3 == 3: master and client exchange datagrams (op bit 2: the master starts first).
//!
//! For the datagrams of ops 0 and 1, op bit 4 writes the session's name hash into the header,
//! bit 5 the master's session id, and bit 6 seals it with the run's key. After the operations the
//! two sides exchange until the session ends, so an input that breaks nothing completes it.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use imgcast_engine::{ClientCore, SessionInfo};
use imgcast_image::{Compressor, EncodedChunk, Geometry, Level, RootHasher};
use imgcast_proto::wire::{self, HEADER_LEN};
use imgcast_proto::{
    PacketKey, Receiver, ReceiverConfig, Sender, SenderConfig, SessionKey, SessionName,
};

/// Session id of the fuzzed master.
const SESSION_ID: u64 = 0x5EED_0002;
/// Passphrase key of keyed sessions.
const KEY: [u8; 32] = [9; 32];
/// Delivery rounds per exchange.
const ROUNDS: usize = 64;
/// Exchanges at the end, to let an unbroken session finish.
const FINAL_EXCHANGES: usize = 400;
/// What the target holds before the session: someone's data.
const OLD: u8 = 0xAB;

/// The source disk: 3 chunks of 4 KiB and a short fourth, random, zero and text parts.
fn source() -> Vec<u8> {
    let mut d = Vec::with_capacity(3 * 4096 + 100);
    let mut x = 0x1234_5678_9abc_def1u64;
    for _ in 0..4096 / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.extend_from_slice(&x.to_le_bytes());
    }
    d.resize(2 * 4096, 0);
    while d.len() < 3 * 4096 + 100 {
        d.extend_from_slice(b"imgcast fuzz line\n");
    }
    d.truncate(3 * 4096 + 100);
    d
}

/// The source disk, its geometry, its chunk objects and its root hash.
struct Prepared {
    disk: Vec<u8>,
    geometry: Geometry,
    objects: Vec<Vec<u8>>,
    root: [u8; 32],
}

/// The [`Prepared`] source, made once per process.
fn prepared() -> &'static Prepared {
    static PREPARED: OnceLock<Prepared> = OnceLock::new();
    PREPARED.get_or_init(|| {
        let disk = source();
        let geometry = Geometry::new(disk.len() as u64, 4096, Level::FASTEST).expect("geometry");
        let mut comp = Compressor::new();
        let mut root = RootHasher::new(&geometry);
        let mut objects = Vec::new();
        for (i, raw) in disk.chunks(4096).enumerate() {
            let c = EncodedChunk::encode(
                i as u64,
                raw,
                None,
                geometry.block_size,
                Level::FASTEST,
                &mut comp,
            );
            root.push(&c.hash);
            objects.push(c.to_wire());
        }
        Prepared {
            disk,
            geometry,
            objects,
            root: root.finish(),
        }
    })
}

/// Where the fuzzed client writes: a file on tmpfs when there is one (fsync is free there).
fn target_path() -> PathBuf {
    let dir = std::env::var_os("IMGCAST_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        });
    dir.join(format!("imgcast-fuzz-target-{}", std::process::id()))
}

struct Master {
    tx: Sender,
    objects: Vec<Vec<u8>>,
    pushed: usize,
    root: [u8; 32],
    finished: bool,
    sent: VecDeque<Vec<u8>>,
}

impl Master {
    fn feed(&mut self) {
        while self.tx.want_objects() > 0 && self.pushed < self.objects.len() {
            let o = self.objects[self.pushed].clone();
            let _ = self.tx.push_object(self.pushed as u32, o);
            self.pushed += 1;
        }
        if self.pushed == self.objects.len() && !self.finished {
            self.finished = self.tx.finish_objects(self.root.to_vec()).is_ok();
        }
    }
}

/// Where the target ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Never opened: it holds its old bytes.
    Untouched,
    /// Opened, not finished: it carries the incomplete marker.
    Unfinished,
    /// Finished: it is the source disk.
    Finished,
}

/// Drives master, client and target as `data` says; panics only when the oracle fails.
pub(crate) fn run(data: &[u8]) -> End {
    let Some((&mode, mut ops)) = data.split_first() else {
        return End::Untouched;
    };
    let p = prepared();
    let (disk, objects) = (p.disk.clone(), p.objects.clone());
    let key = (mode & 1 != 0).then(|| SessionKey::from_bytes(KEY));
    let name = SessionName::new("fuzz").expect("valid session name");
    let run_key = PacketKey::new(key.as_ref(), &name.hash(), SESSION_ID);
    let master_addr: SocketAddr = ([10, 0, 0, 1], 7000).into();
    let client_addr: SocketAddr = ([10, 0, 0, 2], 7000).into();
    let mut now = Instant::now();

    let (geometry, root) = (p.geometry, p.root);
    let mut cfg = SenderConfig::new(name.clone(), SESSION_ID, objects.len() as u32);
    cfg.key.clone_from(&key);
    cfg.max_payload = 512;
    cfg.min_clients = (mode & 4 == 0).then_some(1);
    cfg.session_info = SessionInfo {
        geometry,
        root: (mode & 2 != 0).then_some(root),
        image: "fuzz.img".into(),
    }
    .encode();
    let Ok(tx) = Sender::new(cfg, now) else {
        return End::Untouched;
    };
    let mut m = Master {
        tx,
        objects,
        pushed: 0,
        root,
        finished: false,
        sent: VecDeque::new(),
    };
    let mut rcfg = ReceiverConfig::new(name.clone(), 7, "fuzz");
    rcfg.key = key;
    let mut rx = Receiver::new(rcfg);

    let path = target_path();
    let old = vec![OLD; 8192];
    {
        let mut f = std::fs::File::create(&path).expect("create the fuzz target");
        f.write_all(&old).expect("write the fuzz target");
    }
    let mut core = ClientCore::new(path.clone(), 0);
    let mut outcome: Option<Result<(), String>> = None;

    while let Some((&op, rest)) = ops.split_first() {
        if outcome.is_some() {
            break;
        }
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes(*len));
        ops = rest;
        let datagram = match op & 3 {
            0 => {
                let (d, rest) = ops.split_at(len.min(ops.len()));
                ops = rest;
                d.to_vec()
            }
            1 => {
                let Some((edit, rest)) = ops.split_first_chunk::<3>() else {
                    break;
                };
                ops = rest;
                if m.sent.is_empty() {
                    continue;
                }
                let mut d = m.sent[len % m.sent.len()].clone();
                let pos = usize::from(u16::from_le_bytes([edit[0], edit[1]]));
                if !d.is_empty() {
                    let i = pos % d.len();
                    d[i] ^= edit[2];
                }
                d
            }
            2 => {
                now += Duration::from_millis(len as u64);
                m.tx.handle_timeout(now);
                rx.handle_timeout(now);
                continue;
            }
            _ => {
                if op & 0x04 != 0 {
                    m.tx.start_now(now);
                }
                outcome = exchange(&mut m, &mut rx, &mut core, now, master_addr, client_addr);
                continue;
            }
        };
        let mut d = datagram;
        if d.len() >= HEADER_LEN {
            // A short header (flag bit 2) has the session id where a long one has the name.
            let short = d[6] & 4 != 0;
            if op & 0x10 != 0 && !short {
                d[7..15].copy_from_slice(&name.hash());
            }
            if op & 0x20 != 0 {
                let at = if short { 7 } else { 15 };
                d[at..at + 8].copy_from_slice(&SESSION_ID.to_be_bytes());
            }
            if op & 0x40 != 0 {
                // Drop the tag a captured packet carries, then seal again.
                if op & 3 == 1 && d.len() >= HEADER_LEN + imgcast_proto::TAG_LEN {
                    d.truncate(d.len() - imgcast_proto::TAG_LEN);
                }
                if let Ok(sealed) = wire::seal_encoded(&d, &run_key) {
                    d = sealed;
                }
            }
        }
        rx.handle(now, master_addr, &d);
        outcome = drain(&mut rx, &mut core, now);
    }
    for _ in 0..FINAL_EXCHANGES {
        if outcome.is_some() {
            break;
        }
        now += Duration::from_millis(50);
        m.tx.handle_timeout(now);
        outcome = exchange(&mut m, &mut rx, &mut core, now, master_addr, client_addr);
    }

    let after = std::fs::read(&path).expect("read the fuzz target");
    let _ = std::fs::remove_file(&path);
    if core.target_finished() {
        assert_eq!(after, disk, "a finished target must be the source disk");
        End::Finished
    } else if core.target_opened() {
        assert!(
            after.starts_with(imgcast_image::INCOMPLETE_MAGIC.as_slice()),
            "an unfinished target must carry the incomplete marker ({outcome:?})"
        );
        End::Unfinished
    } else {
        assert_eq!(after, old, "a target never opened must hold its old bytes");
        End::Untouched
    }
}

/// Hands the client's events to its core; `Some` once the core ended (done or failed).
fn drain(rx: &mut Receiver, core: &mut ClientCore, now: Instant) -> Option<Result<(), String>> {
    let mut ignore = |_| {};
    while let Some(ev) = rx.poll_event() {
        match core.on_event(now, rx, ev, &mut ignore) {
            Ok(Some(_)) => return Some(Ok(())),
            Ok(None) => {}
            Err(e) => return Some(Err(e.to_string())),
        }
    }
    match core.poll(now, rx, &mut ignore) {
        Ok(()) => None,
        Err(e) => Some(Err(e.to_string())),
    }
}

/// Delivers what each side sends to the other for a few rounds.
fn exchange(
    m: &mut Master,
    rx: &mut Receiver,
    core: &mut ClientCore,
    now: Instant,
    master_addr: SocketAddr,
    client_addr: SocketAddr,
) -> Option<Result<(), String>> {
    for _ in 0..ROUNDS {
        m.feed();
        let mut quiet = true;
        if let Some(t) = m.tx.poll_transmit(now) {
            if m.sent.len() >= 64 {
                m.sent.pop_front();
            }
            m.sent.push_back(t.payload.clone());
            rx.handle(now, master_addr, &t.payload);
            quiet = false;
        }
        if let Some(t) = rx.poll_transmit(now) {
            m.tx.handle(now, client_addr, &t.payload);
            quiet = false;
        }
        while m.tx.poll_event().is_some() {}
        if let Some(done) = drain(rx, core, now) {
            return Some(done);
        }
        if quiet {
            break;
        }
    }
    None
}
