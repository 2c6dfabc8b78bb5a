//! The client: the protocol `Receiver` on the receive side, a pool that
//! decompresses and verifies chunks, and positional writes to the target.
//! Receiving never waits on the disk: chunks queue between the stages.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use imgcast_image::{self as image, DiskTarget, EncodedChunk, Geometry, RootHasher, TargetOptions};
use imgcast_proto::{self as proto, SessionKey, SessionName};

use crate::io::Net;
use crate::net::choose_interface;
use crate::session::{ClientConfig, ClientReport, Control, SessionEvent};
use crate::{info, EngineError};

/// How a device without a role ended.
pub enum UndecidedOutcome {
    /// It took part as a client.
    Client(ClientReport),
    /// The user pressed `m`: it is to be the master.
    BecomeMaster,
}

/// Runs a client until its disk is written and verified.
pub fn run_client(
    cfg: &ClientConfig,
    control: &Control,
    on_event: &mut dyn FnMut(SessionEvent),
) -> Result<ClientReport, EngineError> {
    match run(cfg, control, on_event, false)? {
        UndecidedOutcome::Client(r) => Ok(r),
        UndecidedOutcome::BecomeMaster => {
            Err(EngineError::Session("unexpected role change".into()))
        }
    }
}

/// Runs a device with no role: a client that becomes the master when the
/// user presses `m` before any master was found.
pub fn run_undecided(
    cfg: &ClientConfig,
    control: &Control,
    on_event: &mut dyn FnMut(SessionEvent),
) -> Result<UndecidedOutcome, EngineError> {
    run(cfg, control, on_event, true)
}

/// Chunks waiting for the decode pool: bounded so memory is too (each up to a
/// chunk's stored size).
const DECODE_QUEUE: usize = 64;

struct Written {
    index: u64,
    result: Result<[u8; 32], EngineError>,
    raw_len: u64,
}

/// The target and its decode pool for one run of the session.
struct Restore {
    geometry: Geometry,
    target: Option<Arc<DiskTarget>>,
    work: Option<Sender<(u64, Vec<u8>)>>,
    done: Receiver<Written>,
    workers: Vec<JoinHandle<()>>,
    hashes: Vec<Option<[u8; 32]>>,
    written: u64,
    bytes: u64,
    trailer: Option<[u8; 32]>,
    reported: bool,
}

impl Restore {
    fn open(path: &Path, geometry: Geometry) -> Result<Self, EngineError> {
        let target = Arc::new(DiskTarget::open(
            path,
            &geometry,
            &TargetOptions::default(),
        )?);
        let (work_tx, work_rx) = bounded::<(u64, Vec<u8>)>(DECODE_QUEUE);
        let (done_tx, done_rx) = bounded::<Written>(DECODE_QUEUE * 2);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut workers = Vec::new();
        for i in 0..threads {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let target = target.clone();
            let h = std::thread::Builder::new()
                .name(format!("imgcast-decode-{i}"))
                .spawn(move || {
                    let mut raw = Vec::new();
                    let mut dec = image::Decompressor::new();
                    for (index, wire) in rx {
                        let result = write_one(&target, index, &wire, &mut raw, &mut dec);
                        let raw_len = u64::from(geometry.chunk_len(index));
                        if tx
                            .send(Written {
                                index,
                                result,
                                raw_len,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                })
                .map_err(|e| EngineError::io("starting a decode thread", e))?;
            workers.push(h);
        }
        let count = usize::try_from(geometry.chunk_count).map_err(|_| {
            EngineError::Session("image has too many chunks for this machine".into())
        })?;
        Ok(Self {
            geometry,
            target: Some(target),
            work: Some(work_tx),
            done: done_rx,
            workers,
            hashes: vec![None; count],
            written: 0,
            bytes: 0,
            trailer: None,
            reported: false,
        })
    }

    fn complete(&self) -> bool {
        self.written == self.geometry.chunk_count && self.trailer.is_some()
    }

    /// Checks the root hash and writes the held-back first chunk; after this
    /// the target is a finished copy.
    fn finish(&mut self) -> Result<[u8; 32], EngineError> {
        let mut root = RootHasher::new(&self.geometry);
        for h in &self.hashes {
            root.push(
                h.as_ref()
                    .ok_or_else(|| EngineError::Session("a chunk is missing".into()))?,
            );
        }
        let root = root.finish();
        let expected = self.trailer.unwrap_or([0; 32]);
        if root != expected {
            return Err(EngineError::Session(format!(
                "root hash mismatch: the chunks make {}, the master announced {}",
                image::hex(&root),
                image::hex(&expected)
            )));
        }
        self.work = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let target = self
            .target
            .take()
            .and_then(|t| Arc::try_unwrap(t).ok())
            .ok_or_else(|| EngineError::Session("the target is still in use".into()))?;
        target.finish()?;
        Ok(root)
    }
}

fn write_one(
    target: &DiskTarget,
    index: u64,
    wire: &[u8],
    raw: &mut Vec<u8>,
    dec: &mut image::Decompressor,
) -> Result<[u8; 32], EngineError> {
    let chunk = EncodedChunk::from_wire(wire)?;
    let expected_len = target.geometry().chunk_len(index);
    if chunk.raw_len != expected_len {
        return Err(EngineError::Session(format!(
            "chunk {index} claims {} bytes; the image's geometry says {expected_len}",
            chunk.raw_len
        )));
    }
    if chunk.index != index {
        return Err(EngineError::Session(format!(
            "object {index} carries chunk {}: the master sent a wrong chunk",
            chunk.index
        )));
    }
    // verified checks the chunk's hash: nothing unverified reaches the disk.
    target.write(&chunk.verified(raw, dec)?)?;
    Ok(chunk.hash)
}

fn run(
    cfg: &ClientConfig,
    control: &Control,
    on_event: &mut dyn FnMut(SessionEvent),
    undecided: bool,
) -> Result<UndecidedOutcome, EngineError> {
    let name = SessionName::new(&cfg.net.name).map_err(|e| EngineError::Session(e.to_string()))?;
    let group = name.group_addr();
    let key = match &cfg.net.key {
        Some(pass) => {
            Some(SessionKey::derive(pass, &name).map_err(|e| EngineError::Session(e.to_string()))?)
        }
        None => None,
    };
    let iface = choose_interface(cfg.net.interface.as_deref(), group)?;
    let mut net = Net::open(iface.clone(), group, cfg.net.port)?;
    on_event(SessionEvent::Listening {
        name: name.as_str().to_string(),
        group,
        port: cfg.net.port,
        interface: iface.name.clone(),
        addr: iface.addr,
        role: if undecided {
            "waiting for a master"
        } else {
            "client"
        },
    });
    let mut rc = proto::ReceiverConfig::new(name.clone(), rand::random::<u64>(), &hostname());
    rc.key = key;
    rc.master_timeout = cfg.net.peer_timeout;
    let mut receiver = proto::Receiver::new(rc);

    let mut restore: Option<Restore> = None;
    let mut master: Option<SocketAddr> = None;
    let mut started_at: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let mut auth_warned = false;
    loop {
        let now = Instant::now();
        while let Some(batch) = net.try_batch() {
            for d in batch {
                receiver.handle(d.at, d.from, &d.data);
            }
        }
        if control.aborted() {
            let _ = receiver.report_failed(now, "aborted by the user on the client".into());
            flush(&mut receiver, &mut net, now)?;
            return Err(EngineError::Session("aborted".into()));
        }
        if undecided && master.is_none() && control.take_become_master() {
            return Ok(UndecidedOutcome::BecomeMaster);
        }
        while let Some(ev) = receiver.poll_event() {
            match ev {
                proto::ReceiverEvent::Announced {
                    master: m,
                    session_info,
                    ..
                } => {
                    let Some(geometry) = info::decode(&session_info) else {
                        on_event(SessionEvent::Note(format!(
                            "master {m} announces an image this img does not understand; ignoring it"
                        )));
                        continue;
                    };
                    // Check the target (mounted, too small) before registering.
                    drop(restore.take());
                    let opened = Restore::open(&cfg.target, geometry);
                    match opened {
                        Ok(r) => restore = Some(r),
                        Err(e) => {
                            receiver.decline(&e.to_string());
                            flush(&mut receiver, &mut net, now)?;
                            return Err(e);
                        }
                    }
                    master = Some(m);
                    on_event(SessionEvent::Found {
                        master: m,
                        disk_size: geometry.disk_size,
                    });
                    receiver
                        .register(now)
                        .map_err(|e| EngineError::Session(e.to_string()))?;
                }
                proto::ReceiverEvent::Registered => on_event(SessionEvent::Registered),
                proto::ReceiverEvent::Queued => on_event(SessionEvent::Queued),
                proto::ReceiverEvent::Dropped => {
                    on_event(SessionEvent::Note(
                        "the master dropped this client (too slow or silent); waiting for the next session of this name".into(),
                    ));
                    drop(restore.take());
                }
                proto::ReceiverEvent::Started => {
                    started_at = Some(now);
                    on_event(SessionEvent::Started { clients: 0 });
                }
                proto::ReceiverEvent::Object { index, bytes } => {
                    let Some(r) = restore.as_mut() else { continue };
                    if let Some(work) = &r.work {
                        // Blocks only when the disk is far behind; the socket
                        // buffers and the receive queue keep taking packets.
                        let _ = work.send((u64::from(index), bytes));
                    }
                }
                proto::ReceiverEvent::Trailer(bytes) => {
                    if let (Some(r), Ok(root)) =
                        (restore.as_mut(), <[u8; 32]>::try_from(bytes.as_slice()))
                    {
                        r.trailer = Some(root);
                    }
                }
                proto::ReceiverEvent::Aborted { reason } => {
                    return Err(EngineError::Session(format!(
                        "the master aborted the session: {reason}"
                    )));
                }
                proto::ReceiverEvent::MasterLost => {
                    return Err(EngineError::Session(format!(
                        "the master fell silent for {} s; the target is left marked incomplete",
                        cfg.net.peer_timeout.as_secs()
                    )));
                }
                proto::ReceiverEvent::AuthFailures { count } if !auth_warned => {
                    auth_warned = true;
                    on_event(SessionEvent::Note(format!(
                        "{count} packets of this session failed authentication: wrong -key?"
                    )));
                }
                proto::ReceiverEvent::Completed => {
                    let Some(r) = restore.take() else {
                        return Err(EngineError::Session("completed without a target".into()));
                    };
                    let m = master.ok_or_else(|| EngineError::Session("no master".into()))?;
                    flush(&mut receiver, &mut net, now)?;
                    return Ok(UndecidedOutcome::Client(ClientReport {
                        root_hash: r.trailer.unwrap_or([0; 32]),
                        disk_size: r.geometry.disk_size,
                        seconds: started_at.map_or(0.0, |s| s.elapsed().as_secs_f64()),
                        master: m,
                    }));
                }
                _ => {}
            }
        }
        // Results of the decode pool.
        if let Some(r) = restore.as_mut() {
            while let Ok(w) = r.done.try_recv() {
                match w.result {
                    Ok(hash) => {
                        if let Some(slot) = r.hashes.get_mut(w.index as usize) {
                            if slot.is_none() {
                                *slot = Some(hash);
                                r.written += 1;
                                r.bytes += w.raw_len;
                                // Only now may the master forget this chunk.
                                if let Ok(i) = u32::try_from(w.index) {
                                    receiver.object_done(i);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let why = format!("chunk {}: {e}", w.index);
                        let _ = receiver.report_failed(now, why.clone());
                        flush(&mut receiver, &mut net, now)?;
                        return Err(EngineError::Session(why));
                    }
                }
            }
            if last_progress.elapsed() > Duration::from_millis(200) {
                last_progress = now;
                on_event(SessionEvent::Progress {
                    id: 0,
                    done: r.bytes,
                    total: r.geometry.disk_size,
                });
            }
            if r.complete() && !r.reported {
                r.reported = true;
                on_event(SessionEvent::Progress {
                    id: 0,
                    done: r.bytes,
                    total: r.geometry.disk_size,
                });
                match r.finish() {
                    Ok(_) => receiver
                        .report_done(now)
                        .map_err(|e| EngineError::Session(e.to_string()))?,
                    Err(e) => {
                        let _ = receiver.report_failed(now, e.to_string());
                        flush(&mut receiver, &mut net, now)?;
                        return Err(e);
                    }
                }
            }
        }
        while let Some(t) = receiver.poll_transmit(now) {
            net.transmit(&t)?;
        }
        net.flush()?;
        let tick = now + Duration::from_millis(20);
        let deadline = receiver.poll_timeout().map_or(tick, |t| t.min(tick));
        if deadline > Instant::now() {
            for d in net.wait_batch(deadline)?.unwrap_or_default() {
                receiver.handle(d.at, d.from, &d.data);
            }
        }
        receiver.handle_timeout(Instant::now());
    }
}

fn flush(receiver: &mut proto::Receiver, net: &mut Net, now: Instant) -> Result<(), EngineError> {
    for _ in 0..16 {
        let Some(t) = receiver.poll_transmit(now) else {
            break;
        };
        net.transmit(&t)?;
    }
    net.flush()
}

/// This machine's name, shown in the master's table.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
