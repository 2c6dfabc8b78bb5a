//! The client: the protocol `Receiver` on the receive side, [`ClientCore`] for everything between
//! its events and the target (checks, a pool that decompresses and verifies chunks, positional
//! writes, the root hash), and the socket loop that drives both. Receiving never waits on the
//! disk: chunks queue between the stages.
//!
//! Until the session starts the target is the user's: it is checked without being opened for
//! writing, and only the start opens it and writes the incomplete marker.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use imgcast_image::{self as image, DiskTarget, EncodedChunk, Geometry, RootHasher, TargetOptions};
use imgcast_proto::{self as proto, Rejection, SessionKey, SessionName};

use crate::info::SessionInfo;
use crate::io::{Net, Role};
use crate::net::choose_interface;
use crate::session::{ClientConfig, ClientReport, Control, SessionEvent};
use crate::EngineError;

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
/// After every chunk arrived, how long to wait for an End whose root hash the chunks match (the
/// master repeats End every 500 ms; one that disagrees may be forged).
const TRAILER_PATIENCE: Duration = Duration::from_secs(10);

struct Written {
    index: u64,
    result: Result<[u8; 32], EngineError>,
    raw_len: u64,
}

/// The root hash, fed with chunk hashes as they are verified, in any order: at most a window of
/// them waits for its predecessors, so memory does not grow with the disk.
struct RootTracker {
    hasher: RootHasher,
    next: u64,
    waiting: BTreeMap<u64, [u8; 32]>,
}

impl RootTracker {
    fn new(g: &Geometry) -> Self {
        Self {
            hasher: RootHasher::new(g),
            next: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// Records chunk `index`'s hash; false when it was recorded before.
    fn push(&mut self, index: u64, hash: [u8; 32]) -> bool {
        if index < self.next || self.waiting.insert(index, hash).is_some() {
            return false;
        }
        while let Some(h) = self.waiting.remove(&self.next) {
            self.hasher.push(&h);
            self.next += 1;
        }
        true
    }

    fn done(&self) -> u64 {
        self.next + self.waiting.len() as u64
    }
}

/// Where decoded chunks go: a pool of threads, or (with no threads) the caller's own thread.
enum Pool {
    Threads {
        work: Option<Sender<(u64, Vec<u8>)>>,
        done: Receiver<Written>,
        workers: Vec<JoinHandle<()>>,
    },
    Inline {
        done: VecDeque<Written>,
        scratch: Vec<u8>,
        dec: image::Decompressor,
    },
}

/// The target and its decode pool for one run of the session.
struct Restore {
    geometry: Geometry,
    target: Option<Arc<DiskTarget>>,
    pool: Pool,
    root: RootTracker,
    bytes: u64,
}

impl Restore {
    fn open(
        path: &Path,
        geometry: Geometry,
        threads: usize,
        discard: bool,
    ) -> Result<Self, EngineError> {
        let opts = TargetOptions {
            discard,
            ..TargetOptions::default()
        };
        let target = Arc::new(DiskTarget::open(path, &geometry, &opts)?);
        let pool = if threads == 0 {
            Pool::Inline {
                done: VecDeque::new(),
                scratch: Vec::new(),
                dec: image::Decompressor::new(),
            }
        } else {
            let (work_tx, work_rx) = bounded::<(u64, Vec<u8>)>(DECODE_QUEUE);
            let (done_tx, done_rx) = bounded::<Written>(DECODE_QUEUE * 2);
            let mut workers = Vec::new();
            for i in 0..threads {
                let rx = work_rx.clone();
                let tx = done_tx.clone();
                let target = target.clone();
                let h = std::thread::Builder::new()
                    .name(format!("imgcast-decode-{i}"))
                    .spawn(move || {
                        // Bulk work: the receive and protocol threads go first when they wake.
                        imgcast_disk::lower_thread_priority();
                        let mut raw = Vec::new();
                        let mut dec = image::Decompressor::new();
                        for (index, wire) in rx {
                            let w = write_one(&target, index, &wire, &mut raw, &mut dec);
                            if tx.send(w).is_err() {
                                return;
                            }
                        }
                    })
                    .map_err(|e| EngineError::io("starting a decode thread", e))?;
                workers.push(h);
            }
            Pool::Threads {
                work: Some(work_tx),
                done: done_rx,
                workers,
            }
        };
        Ok(Self {
            root: RootTracker::new(&geometry),
            geometry,
            target: Some(target),
            pool,
            bytes: 0,
        })
    }

    fn submit(&mut self, index: u64, wire: Vec<u8>) {
        match &mut self.pool {
            // Blocks only when the disk is far behind; the socket buffers and the receive queue
            // keep taking packets.
            Pool::Threads { work: Some(w), .. } => {
                let _ = w.send((index, wire));
            }
            Pool::Threads { work: None, .. } => {}
            Pool::Inline { done, scratch, dec } => {
                if let Some(t) = &self.target {
                    done.push_back(write_one(t, index, &wire, scratch, dec));
                }
            }
        }
    }

    fn next_written(&mut self) -> Option<Written> {
        match &mut self.pool {
            Pool::Threads { done, .. } => done.try_recv().ok(),
            Pool::Inline { done, .. } => done.pop_front(),
        }
    }

    fn all_written(&self) -> bool {
        self.root.done() == self.geometry.chunk_count
    }

    /// Writes the held-back first chunk; after this the target is a finished copy.
    fn finish(&mut self) -> Result<(), EngineError> {
        if let Pool::Threads { work, workers, .. } = &mut self.pool {
            *work = None;
            for w in workers.drain(..) {
                let _ = w.join();
            }
        }
        let target = self
            .target
            .take()
            .and_then(|t| Arc::try_unwrap(t).ok())
            .ok_or_else(|| EngineError::Session("the target is still in use".into()))?;
        target.finish()?;
        Ok(())
    }
}

/// Decodes, verifies and writes one chunk object; nothing unverified reaches the disk.
fn write_one(
    target: &DiskTarget,
    index: u64,
    wire: &[u8],
    raw: &mut Vec<u8>,
    dec: &mut image::Decompressor,
) -> Written {
    let raw_len = u64::from(target.geometry().chunk_len(index));
    let result = (|| {
        let chunk = EncodedChunk::from_wire(wire)?;
        if chunk.index != index {
            return Err(EngineError::Session(format!(
                "object {index} carries chunk {}",
                chunk.index
            )));
        }
        chunk.check_geometry(target.geometry())?;
        // verified checks the chunk's hash: nothing unverified reaches the disk.
        target.write(&chunk.verified(raw, dec)?)?;
        Ok(chunk.hash)
    })();
    Written {
        index,
        result,
        raw_len,
    }
}

/// The steps after a restore, on their own thread (or done at once, for the fuzz target).
enum AfterRun {
    /// The thread sends its report here; the client's loop wakes on it (see [`ClientCore::after_rx`]).
    Thread(Receiver<imgcast_retarget::AfterReport>),
    Done(Option<imgcast_retarget::AfterReport>),
}

impl AfterRun {
    fn start(
        target: PathBuf,
        opts: imgcast_retarget::AfterRestore,
        inline: bool,
    ) -> Result<Self, EngineError> {
        if inline {
            return Ok(Self::Done(Some(imgcast_retarget::after_restore(
                &target, &opts,
            ))));
        }
        let (tx, rx) = bounded(1);
        std::thread::Builder::new()
            .name("imgcast-after-restore".into())
            .spawn(move || {
                let _ = tx.send(imgcast_retarget::after_restore(&target, &opts));
            })
            .map_err(|e| EngineError::io("starting the after-restore thread", e))?;
        Ok(Self::Thread(rx))
    }

    /// The report, once the steps are done (once).
    fn take(&mut self) -> Option<imgcast_retarget::AfterReport> {
        match self {
            Self::Done(r) => r.take(),
            Self::Thread(rx) => rx.try_recv().ok(),
        }
    }
}

/// Longest chunk object of a geometry, as the protocol bounds it.
fn max_object_len(g: &Geometry) -> u32 {
    u32::try_from(image::max_wire_len(g)).unwrap_or(u32::MAX)
}

/// Everything a client does between the protocol's events and its target, without sockets: the
/// socket loop drives it, and so does the fuzz target that feeds datagrams into a real file.
pub struct ClientCore {
    target: PathBuf,
    threads: usize,
    session: Option<String>,
    grow: bool,
    discard: bool,
    /// The steps after the restore (table fit, growth, record), running on their own thread so
    /// the client keeps answering the master meanwhile.
    after: Option<AfterRun>,
    after_report: Option<imgcast_retarget::AfterReport>,
    accepted: Option<SessionInfo>,
    master: Option<SocketAddr>,
    restore: Option<Restore>,
    trailers: Vec<[u8; 32]>,
    complete_since: Option<Instant>,
    reported: bool,
    opened: bool,
    finished: bool,
    started_at: Option<Instant>,
    last_progress: Option<Instant>,
    auth_warned: bool,
    /// RaptorQ decodes, off the protocol thread (started at the first job).
    fec: Option<FecPool>,
}

/// Threads that run the receiver's RaptorQ decodes (started at the first job).
type FecPool = crate::workers::Workers<proto::DecodeJob, proto::Decoded>;

impl ClientCore {
    /// A client that will restore onto `target`, decoding on `threads` threads (0: on the caller's
    /// thread, in [`ClientCore::poll`]'s stead at once).
    pub fn new(target: PathBuf, threads: usize) -> Self {
        Self {
            target,
            threads,
            session: None,
            grow: false,
            discard: false,
            after: None,
            after_report: None,
            accepted: None,
            master: None,
            restore: None,
            trailers: Vec::new(),
            complete_since: None,
            reported: false,
            opened: false,
            finished: false,
            started_at: None,
            last_progress: None,
            auth_warned: false,
            fec: None,
        }
    }

    /// The session's name, kept in the image-safe record.
    pub fn session(mut self, name: &str) -> Self {
        self.session = Some(name.to_string());
        self
    }

    /// Grow the last partition and its filesystem after the restore (`-grow`).
    pub fn grow(mut self, yes: bool) -> Self {
        self.grow = yes;
        self
    }

    /// Discard the blocks the image leaves free (`-discard`).
    pub fn discard(mut self, yes: bool) -> Self {
        self.discard = yes;
        self
    }

    /// Whether a target was opened (and marked incomplete) for a started session.
    pub fn target_opened(&self) -> bool {
        self.opened
    }

    /// Whether the target was finished: every chunk verified and written, the root hash matched,
    /// the first chunk written over the marker.
    pub fn target_finished(&self) -> bool {
        self.finished
    }

    fn forget_run(&mut self) {
        self.accepted = None;
        self.restore = None;
        self.trailers.clear();
        self.complete_since = None;
        self.reported = false;
    }

    /// Acts on one event of the receiver. `Ok(Some(report))` when the session is over and the
    /// target verified; an error ends the client.
    pub fn on_event(
        &mut self,
        now: Instant,
        rx: &mut proto::Receiver,
        ev: proto::ReceiverEvent,
        on_event: &mut dyn FnMut(SessionEvent),
    ) -> Result<Option<ClientReport>, EngineError> {
        use proto::ReceiverEvent as E;
        match ev {
            E::Decode(job) => {
                if self.threads == 0 {
                    rx.decode_done(now, job.run());
                } else {
                    if self.fec.is_none() {
                        self.fec = Some(FecPool::start(
                            "imgcast-fec",
                            self.threads.min(4),
                            proto::DecodeJob::run,
                        )?);
                    }
                    if let Some(pool) = &self.fec {
                        // The workers live as long as the pool: a send cannot fail before.
                        let _ = pool.work.send(job);
                    }
                }
            }
            E::Announced {
                master,
                session_info,
                ..
            } => {
                self.forget_run();
                let info = match SessionInfo::decode(&session_info) {
                    Ok(i) => i,
                    Err(e) => {
                        on_event(SessionEvent::Note(format!(
                            "ignoring master {master}: {e}; the target is untouched, still waiting"
                        )));
                        rx.decline(&e.to_string());
                        return Ok(None);
                    }
                };
                if let Err(e) = image::check_target(&self.target, &info.geometry) {
                    on_event(SessionEvent::Note(format!(
                        "ignoring master {master}: it sends a disk of {} bytes and {e}; the target is untouched, still waiting for a master of this name",
                        info.geometry.disk_size
                    )));
                    rx.decline(&e.to_string());
                    return Ok(None);
                }
                self.master = Some(master);
                on_event(SessionEvent::Found {
                    master,
                    disk_size: info.geometry.disk_size,
                });
                rx.register(now, max_object_len(&info.geometry))
                    .map_err(|e| EngineError::Session(e.to_string()))?;
                self.accepted = Some(info);
            }
            E::Refused { master, reason } => on_event(SessionEvent::Note(format!(
                "ignoring master {master}: {reason}; the target is untouched, still waiting"
            ))),
            E::Unanswered { master } => on_event(SessionEvent::Note(format!(
                "master {master} did not answer the registration; the target is untouched, listening again"
            ))),
            E::MasterGone { master, reason } => {
                self.forget_run();
                on_event(SessionEvent::Note(format!(
                    "the master {master} {reason} before the start; the target is untouched, waiting for the next master of this name"
                )));
            }
            E::Registered => on_event(SessionEvent::Registered),
            E::Queued => {
                self.forget_run();
                on_event(SessionEvent::Queued);
            }
            E::Moved => {
                self.forget_run();
                on_event(SessionEvent::Note(
                    "the master moved this client to its follow-up run (it held the group back); the target stays marked incomplete until then".into(),
                ));
            }
            E::Dropped => {
                self.forget_run();
                on_event(SessionEvent::Note(
                    "the master dropped this client (too slow or silent); the target stays marked incomplete, waiting for the next session of this name".into(),
                ));
            }
            E::Started => {
                let Some(info) = &self.accepted else {
                    return Err(EngineError::Session(
                        "the session started without an accepted geometry".into(),
                    ));
                };
                // Only now, registered and started, is the target opened and marked.
                match Restore::open(&self.target, info.geometry, self.threads, self.discard) {
                    Ok(r) => {
                        self.restore = Some(r);
                        self.opened = true;
                    }
                    Err(e) => {
                        let _ = rx.report_failed(now, e.to_string());
                        return Err(e);
                    }
                }
                self.started_at = Some(now);
                on_event(SessionEvent::Started { clients: 0 });
            }
            E::Object { index, bytes } => {
                if let Some(r) = self.restore.as_mut() {
                    r.submit(u64::from(index), bytes);
                }
            }
            E::Trailer(bytes) => {
                let Ok(root) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                    on_event(SessionEvent::Note(
                        "ignoring an End packet whose trailer is not a root hash".into(),
                    ));
                    return Ok(None);
                };
                let committed = self.accepted.as_ref().and_then(|i| i.root);
                if committed.is_some_and(|c| c != root) {
                    on_event(SessionEvent::Note(format!(
                        "ignoring an End packet with root hash {}: the master announced another",
                        image::hex(&root)
                    )));
                } else if !self.trailers.contains(&root) {
                    if self.trailers.len() == 1 {
                        on_event(SessionEvent::Note(
                            "End packets of this session disagree about the root hash (one is forged or corrupt); only the one the chunks match is obeyed".into(),
                        ));
                    }
                    self.trailers.push(root);
                }
            }
            E::Aborted { reason } => {
                return Err(EngineError::Session(format!(
                    "the master aborted the session: {reason}; the target is left marked incomplete"
                )));
            }
            // Written, verified and finished: only the acknowledgement of the report is missing.
            E::MasterLost if self.finished => {
                return Err(EngineError::Session(
                    "the copy is written and verified, but the master fell silent before it \
                     acknowledged this client's report: its table may not list this client as done"
                        .into(),
                ));
            }
            E::MasterLost => {
                return Err(EngineError::Session(
                    "the master fell silent after the start; the target is left marked incomplete"
                        .into(),
                ));
            }
            E::OtherVersion { version, from } => {
                on_event(SessionEvent::Note(crate::net::other_version_note(version, from)));
            }
            E::AuthFailures { count } if !self.auth_warned => {
                self.auth_warned = true;
                on_event(SessionEvent::Note(format!(
                    "{count} packets of this session failed authentication: wrong -key?"
                )));
            }
            E::Completed => {
                let Some(r) = self.restore.take() else {
                    return Err(EngineError::Session("completed without a target".into()));
                };
                if self.after_report.as_ref().is_some_and(|a| !a.fitted()) {
                    return Err(EngineError::Session(format!(
                        "the image is restored and verified, but the partition table of {} could not be fitted",
                        self.target.display()
                    )));
                }
                let master = self
                    .master
                    .ok_or_else(|| EngineError::Session("no master".into()))?;
                return Ok(Some(ClientReport {
                    root_hash: self.trailers.first().copied().unwrap_or([0; 32]),
                    disk_size: r.geometry.disk_size,
                    seconds: self
                        .started_at
                        .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64()),
                    master,
                }));
            }
            _ => {}
        }
        Ok(None)
    }

    /// Where the after-restore thread's report comes: the loop wakes on it rather than at its
    /// next tick (20 ms of every run's end).
    fn after_rx(&self) -> Option<&Receiver<imgcast_retarget::AfterReport>> {
        match &self.after {
            Some(AfterRun::Thread(rx)) => Some(rx),
            _ => None,
        }
    }

    /// Collects the decode pool's results, reports progress, and finishes the target once every
    /// chunk is written and an End's root hash matches them.
    pub fn poll(
        &mut self,
        now: Instant,
        rx: &mut proto::Receiver,
        on_event: &mut dyn FnMut(SessionEvent),
    ) -> Result<(), EngineError> {
        if let Some(pool) = &self.fec {
            while let Ok(d) = pool.done.try_recv() {
                rx.decode_done(now, d);
            }
        }
        let Some(r) = self.restore.as_mut() else {
            return Ok(());
        };
        while let Some(w) = r.next_written() {
            let Ok(index) = u32::try_from(w.index) else {
                continue;
            };
            match w.result {
                Ok(hash) => {
                    if r.root.push(w.index, hash) {
                        r.bytes += w.raw_len;
                        // Only now may the master forget this chunk.
                        rx.object_done(index);
                    }
                }
                Err(e) => match rx.object_failed(index) {
                    Rejection::Retry { attempts } => on_event(SessionEvent::Note(format!(
                        "chunk {index} failed its check ({e}); thrown away and fetched again (failure {attempts})"
                    ))),
                    Rejection::GiveUp { attempts } => {
                        let why = format!(
                            "chunk {index} failed its check {attempts} times ({e}); giving up"
                        );
                        let _ = rx.report_failed(now, why.clone());
                        return Err(EngineError::Session(format!(
                            "{why}; the target is left marked incomplete"
                        )));
                    }
                    Rejection::NotPending => {}
                },
            }
        }
        if self
            .last_progress
            .is_none_or(|t| now.saturating_duration_since(t) > Duration::from_millis(200))
        {
            self.last_progress = Some(now);
            on_event(SessionEvent::Progress {
                id: 0,
                done: r.bytes,
                total: r.geometry.disk_size,
            });
        }
        if let Some(after) = self.after.as_mut() {
            if let Some(report) = after.take() {
                for l in report.lines() {
                    on_event(SessionEvent::Note(l));
                }
                rx.report_done(now, report.note())
                    .map_err(|e| EngineError::Session(e.to_string()))?;
                self.after_report = Some(report);
            }
            return Ok(());
        }
        if self.reported || !r.all_written() || self.trailers.is_empty() {
            return Ok(());
        }
        let since = *self.complete_since.get_or_insert(now);
        let root = r.root.hasher.finish();
        if self.trailers.contains(&root) {
            self.reported = true;
            self.trailers = vec![root];
            on_event(SessionEvent::Progress {
                id: 0,
                done: r.bytes,
                total: r.geometry.disk_size,
            });
            if let Err(e) = r.finish() {
                let _ = rx.report_failed(now, e.to_string());
                return Err(e);
            }
            self.finished = true;
            let record = imgcast_retarget::ImageSafeRecord {
                image: self
                    .accepted
                    .as_ref()
                    .map_or_else(String::new, |i| i.image.clone()),
                root_hash: root,
                session: self.session.clone(),
                master: self.master.map(|m| m.ip().to_string()),
                written_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                version: env!("CARGO_PKG_VERSION").to_string(),
            };
            self.after = Some(AfterRun::start(
                self.target.clone(),
                imgcast_retarget::AfterRestore {
                    grow: self.grow,
                    record,
                },
                self.threads == 0,
            )?);
        } else if now.saturating_duration_since(since) >= TRAILER_PATIENCE {
            let why = format!(
                "root hash mismatch: the chunks make {}, the master announced {}",
                image::hex(&root),
                self.trailers
                    .iter()
                    .map(|t| image::hex(t))
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
            self.reported = true;
            let _ = rx.report_failed(now, why.clone());
            return Err(EngineError::Session(format!(
                "{why}; the target is left marked incomplete"
            )));
        }
        Ok(())
    }
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
    let mut net = Net::open(iface.clone(), group, &cfg.net, Role::Client)?;
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
    let client_id = rand::random::<u64>().max(1);
    let mut rc = proto::ReceiverConfig::new(name.clone(), client_id, &hostname());
    rc.key = key;
    rc.mac = iface.mac();
    rc.master_timeout = cfg.net.peer_timeout;
    rc.offload_decode = true;
    let mut receiver = proto::Receiver::new(rc);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut core = ClientCore::new(cfg.target.clone(), threads)
        .session(name.as_str())
        .grow(cfg.grow)
        .discard(cfg.discard);
    let wait_until = cfg.wait.map(|w| Instant::now() + w);
    let mut found_master = false;
    loop {
        let now = Instant::now();
        while let Some(batch) = net.try_batch() {
            for d in batch {
                receiver.handle(d.at, d.from, &d.data);
            }
        }
        while let Some(n) = net.take_note() {
            on_event(SessionEvent::Note(n));
        }
        if control.aborted() {
            let _ = receiver.report_failed(now, "aborted by the user on the client".into());
            flush(&mut receiver, &mut net, now)?;
            return Err(EngineError::Session("aborted".into()));
        }
        if undecided && !found_master && control.take_become_master() {
            return Ok(UndecidedOutcome::BecomeMaster);
        }
        if !core.target_opened() && wait_until.is_some_and(|w| now >= w) {
            return Err(EngineError::Session(format!(
                "no session {} started within {}; the target was not touched",
                name.as_str(),
                crate::session::minutes_text(cfg.wait.unwrap_or_default())
            )));
        }
        while let Some(ev) = receiver.poll_event() {
            found_master |= matches!(ev, proto::ReceiverEvent::Announced { .. });
            let step = core.on_event(now, &mut receiver, ev, on_event);
            match step {
                Ok(Some(report)) => {
                    flush(&mut receiver, &mut net, now)?;
                    return Ok(UndecidedOutcome::Client(report));
                }
                Ok(None) => {}
                Err(e) => {
                    flush(&mut receiver, &mut net, now)?;
                    return Err(e);
                }
            }
        }
        if let Err(e) = core.poll(now, &mut receiver, on_event) {
            flush(&mut receiver, &mut net, now)?;
            return Err(e);
        }
        while let Some(t) = receiver.poll_transmit(now) {
            net.transmit(&t)?;
        }
        net.flush()?;
        let tick = now + Duration::from_millis(20);
        let deadline = receiver.poll_timeout().map_or(tick, |t| t.min(tick));
        if deadline > Instant::now() {
            let batch = match core.after_rx() {
                Some(after) => net.wait_batch_or(deadline, after)?,
                None => net.wait_batch(deadline)?,
            };
            for d in batch.unwrap_or_default() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn master_lost(finished: bool) -> String {
        let mut core = ClientCore::new(PathBuf::from("/nonexistent/imgcast-target"), 0);
        core.finished = finished;
        let name = SessionName::new("t").unwrap();
        let mut rx = proto::Receiver::new(proto::ReceiverConfig::new(name, 1, "pc"));
        let result = core.on_event(
            Instant::now(),
            &mut rx,
            proto::ReceiverEvent::MasterLost,
            &mut |_| {},
        );
        match result {
            Err(e) => e.to_string(),
            Ok(_) => "no error".into(),
        }
    }

    #[test]
    fn a_master_lost_says_what_state_the_target_is_in() {
        assert!(master_lost(false).contains("left marked incomplete"));
        let after_finish = master_lost(true);
        assert!(
            after_finish.contains("written and verified"),
            "{after_finish}"
        );
        assert!(!after_finish.contains("incomplete"), "{after_finish}");
    }
}
