//! The master: reads (and compresses) its disk or a stored image on a feeder
//! thread, hands chunks to the protocol `Sender` as its window allows, and
//! sends what the `Sender` asks for, paced.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, TryRecvError};

use imgcast_image::{self as image, Geometry, RootHasher};
use imgcast_proto::{self as proto, SessionKey, SessionName};

use crate::info::SessionInfo;
use crate::io::{Net, Role};
use crate::net::choose_interface;
use crate::session::{
    minutes_text, ClientResult, ClientRow, Control, MasterConfig, MasterReport, MasterSource,
    SessionEvent, FOLLOW_UP_DEADLINE,
};
use crate::EngineError;

/// What the feeder thread hands to the protocol loop.
enum Feed {
    Chunk { index: u64, wire: Vec<u8> },
    Done { root_hash: [u8; 32] },
    Failed(EngineError),
}

/// Chunks read ahead of the protocol window (each up to a chunk's size).
const FEED_QUEUE: usize = 8;

/// Data packets sent per turn of the loop at most, and the time a turn may spend sending, so
/// feedback is read between bursts even when a slow link holds each send back.
const SEND_BURST: usize = 512;
const SEND_BURST_TIME: Duration = Duration::from_millis(5);

/// How a master run ended, when it did not end with a report.
pub enum MasterOutcome {
    /// The session ran; here is its table.
    Report(MasterReport),
    /// Another master of the same name won the tie-break: become its client.
    Yielded,
}

/// Runs one session as its master until every client ended, or an abort; then, when
/// `cfg.follow_up` is set, the follow-up runs for the clients moved out of it or queued during it,
/// each ended after [`FOLLOW_UP_DEADLINE`] if none of them comes back. The table has one row per
/// client, from the last run it took part in.
pub fn run_master(
    cfg: &MasterConfig,
    control: &Control,
    on_event: &mut dyn FnMut(SessionEvent),
) -> Result<MasterOutcome, EngineError> {
    let first = match run_once(cfg, control, on_event, 1, None)? {
        (MasterOutcome::Report(r), waiting) => (r, waiting),
        (other, _) => return Ok(other),
    };
    let (mut report, mut waiting) = first;
    let mut run = 1;
    while cfg.follow_up && waiting > 0 && !report.aborted && run < MAX_RUNS {
        run += 1;
        on_event(SessionEvent::Note(format!(
            "follow-up run {run} for {waiting} client(s) moved or queued; it ends if none comes back within {}",
            minutes_text(FOLLOW_UP_DEADLINE)
        )));
        let mut next = cfg.clone();
        next.clients = Some(u32::try_from(waiting).unwrap_or(u32::MAX));
        next.timeout = FOLLOW_UP_TIMEOUT;
        let (outcome, more) = run_once(&next, control, on_event, run, Some(FOLLOW_UP_DEADLINE))?;
        let MasterOutcome::Report(r) = outcome else {
            break;
        };
        for row in r.clients {
            match report.clients.iter_mut().find(|c| c.id == row.id) {
                Some(old) => {
                    let moved = std::mem::take(&mut old.moved);
                    *old = row;
                    if old.moved.is_none() {
                        old.moved = moved;
                    }
                }
                None => report.clients.push(row),
            }
        }
        report.seconds += r.seconds;
        report.bytes_sent += r.bytes_sent;
        report.aborted |= r.aborted;
        report.runs = run;
        waiting = more;
    }
    Ok(MasterOutcome::Report(report))
}

/// Runs one run of the session. Returns its outcome and how many clients wait for a follow-up
/// (moved out of it, or queued during it). With `deadline`, a run that no client joined within it
/// ends with an empty table.
fn run_once(
    cfg: &MasterConfig,
    control: &Control,
    on_event: &mut dyn FnMut(SessionEvent),
    run: u32,
    deadline: Option<Duration>,
) -> Result<(MasterOutcome, usize), EngineError> {
    let name = SessionName::new(&cfg.net.name).map_err(|e| EngineError::Session(e.to_string()))?;
    let group = name.group_addr();
    let key = match &cfg.net.key {
        Some(pass) => {
            Some(SessionKey::derive(pass, &name).map_err(|e| EngineError::Session(e.to_string()))?)
        }
        None => None,
    };
    // Open the source before the network: a missing disk is reported at once.
    let Feeder {
        geometry,
        known_root,
        chunks: feeder_rx,
        thread: feeder,
    } = start_feeder(&cfg.source)?;
    let iface = choose_interface(cfg.net.interface.as_deref(), group)?;
    let mut net = Net::open(iface.clone(), group, &cfg.net, Role::Master)?;
    on_event(SessionEvent::Listening {
        name: name.as_str().to_string(),
        group,
        port: cfg.net.port,
        interface: iface.name.clone(),
        addr: iface.addr,
        role: "master",
    });

    let object_count = u32::try_from(geometry.chunk_count).map_err(|_| {
        EngineError::Session(format!(
            "{} chunks are more than a session carries",
            geometry.chunk_count
        ))
    })?;
    let mut sc = proto::SenderConfig::new(name.clone(), rand::random::<u64>(), object_count);
    sc.session_info = SessionInfo {
        geometry,
        root: known_root,
        image: source_name(&cfg.source),
    }
    .encode();
    sc.key = key;
    sc.min_clients = cfg.clients;
    sc.timeout = cfg.timeout;
    sc.throttle = cfg.throttle;
    sc.max_payload = iface.max_payload();
    sc.drop_after = cfg.net.peer_timeout;
    sc.yield_to_earlier = cfg.may_yield;
    sc.slow = cfg.slow;
    sc.offload_encoders = true;
    let encoders =
        crate::workers::Workers::start("imgcast-enc", ENCODER_THREADS, proto::EncodeJob::run)?;
    let now = Instant::now();
    let give_up_at = deadline.map(|d| now + d);
    let mut waiting: BTreeMap<SocketAddr, ()> = BTreeMap::new();
    let mut sender =
        proto::Sender::new(sc, now).map_err(|e| EngineError::Session(e.to_string()))?;

    let mut clients: BTreeMap<u64, ClientRow> = BTreeMap::new();
    let mut started_at: Option<Instant> = None;
    let mut root_hash = None;
    let mut feed_done = false;
    let mut pushed: u64 = 0;
    let mut finished = false;
    let mut last_stats = Instant::now();
    let mut aborted = false;
    let mut outcome = None;
    let bytes_per_object = u64::from(geometry.chunk_size);
    while outcome.is_none() {
        let now = Instant::now();
        while let Some(batch) = net.try_batch() {
            for d in batch {
                sender.handle(d.at, d.from, &d.data);
            }
        }
        while let Some(n) = net.take_note() {
            on_event(SessionEvent::Note(n));
        }
        while let Ok(e) = encoders.done.try_recv() {
            sender.encoder_done(now, e);
        }
        if control.take_start() {
            sender.start_now(now);
        }
        if control.aborted() && !aborted {
            aborted = true;
            sender.abort(now, "aborted by the user on the master");
        }
        // Feed chunks as the window allows.
        // The Done message follows the last chunk, when the window may be full.
        while !feed_done && (sender.want_objects() > 0 || pushed == geometry.chunk_count) {
            match feeder_rx.try_recv() {
                Ok(Feed::Chunk { index, wire }) => {
                    let index = u32::try_from(index)
                        .map_err(|_| EngineError::Session("chunk index overflow".into()))?;
                    sender
                        .push_object(index, wire)
                        .map_err(|e| EngineError::Session(e.to_string()))?;
                    pushed += 1;
                }
                Ok(Feed::Done { root_hash: h }) => {
                    root_hash = Some(h);
                    feed_done = true;
                    sender
                        .finish_objects(h.to_vec())
                        .map_err(|e| EngineError::Session(e.to_string()))?;
                }
                Ok(Feed::Failed(e)) => {
                    sender.abort(now, &format!("the master failed reading its source: {e}"));
                    flush(&mut sender, &mut net, now)?;
                    return Err(e);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let e = EngineError::Session("the reader thread ended early".into());
                    sender.abort(now, "the master's reader failed");
                    flush(&mut sender, &mut net, now)?;
                    return Err(e);
                }
            }
        }
        // Send what is due; bounded so feedback is read between bursts. The clock is read for
        // each packet: a send blocked by a full link (the small send buffer) is time the pacer
        // must see as spent sending, and packets that fall due meanwhile go in the same burst.
        let mut sent = 0;
        while sent < SEND_BURST && now.elapsed() < SEND_BURST_TIME {
            let Some(t) = sender.poll_transmit(Instant::now()) else {
                break;
            };
            net.transmit(&t)?;
            sent += 1;
        }
        net.flush()?;
        while let Some(ev) = sender.poll_event() {
            match ev {
                proto::SenderEvent::Encode(job) => {
                    let _ = encoders.work.send(job);
                }
                proto::SenderEvent::ClientRegistered {
                    client_id,
                    addr,
                    label,
                    mac,
                } => {
                    clients.insert(
                        client_id,
                        ClientRow {
                            id: client_id,
                            addr,
                            result: ClientResult::Dropped("never started".into()),
                            bytes: 0,
                            seconds: 0.0,
                            rejected: 0,
                            note: String::new(),
                            run,
                            moved: None,
                        },
                    );
                    on_event(SessionEvent::ClientRegistered {
                        id: client_id,
                        addr,
                        count: clients.len(),
                    });
                    on_event(SessionEvent::ClientHost {
                        id: client_id,
                        host: label,
                        mac: mac.as_ref().map(crate::net::format_mac),
                    });
                }
                proto::SenderEvent::ClientQueued { addr, .. } => {
                    waiting.insert(addr, ());
                    on_event(SessionEvent::ClientQueued { addr })
                }
                proto::SenderEvent::Started { .. } => {
                    started_at = Some(now);
                    for c in clients.values_mut() {
                        c.result = ClientResult::Dropped("no answer".into());
                    }
                    on_event(SessionEvent::Started {
                        clients: clients.len(),
                    });
                }
                proto::SenderEvent::ClientProgress {
                    client_id,
                    objects_done,
                    rejected,
                    ..
                } => {
                    let done = (u64::from(objects_done) * bytes_per_object).min(geometry.disk_size);
                    if let Some(c) = clients.get_mut(&client_id) {
                        c.bytes = done;
                        if rejected > c.rejected {
                            on_event(SessionEvent::Note(format!(
                                "client {} threw away {} chunk(s) that failed their check; they were sent again",
                                c.addr.ip(),
                                rejected - c.rejected
                            )));
                            c.rejected = rejected;
                        }
                    }
                    on_event(SessionEvent::Progress {
                        id: client_id,
                        done,
                        total: geometry.disk_size,
                    });
                }
                proto::SenderEvent::ClientDone { client_id, note } => {
                    if let Some(c) = clients.get_mut(&client_id) {
                        c.note = note;
                    }
                    end_client(
                        &mut clients,
                        client_id,
                        ClientResult::Done,
                        started_at,
                        geometry.disk_size,
                        on_event,
                    );
                }
                proto::SenderEvent::ClientFailed { client_id, reason } => {
                    end_client(
                        &mut clients,
                        client_id,
                        ClientResult::Failed(reason),
                        started_at,
                        0,
                        on_event,
                    );
                }
                proto::SenderEvent::ClientDropped { client_id, reason } => {
                    let why = drop_text(reason);
                    let result = if reason.moved() {
                        if let Some(c) = clients.get_mut(&client_id) {
                            c.moved = Some(why.clone());
                            waiting.insert(c.addr, ());
                            on_event(SessionEvent::ClientMoved {
                                id: client_id,
                                addr: c.addr,
                                why: why.clone(),
                            });
                        }
                        ClientResult::Moved(why)
                    } else {
                        ClientResult::Dropped(why)
                    };
                    end_client(&mut clients, client_id, result, started_at, 0, on_event);
                }
                proto::SenderEvent::OtherVersion { version, from } => {
                    on_event(SessionEvent::Note(crate::net::other_version_note(
                        version, from,
                    )));
                }
                proto::SenderEvent::ConflictingMaster { .. } => {
                    outcome = Some(MasterOutcome::Yielded);
                }
                proto::SenderEvent::Finished => finished = true,
                _ => {}
            }
        }
        // A follow-up run nobody came back for ends at its deadline.
        let nobody =
            started_at.is_none() && clients.is_empty() && give_up_at.is_some_and(|t| now >= t);
        if nobody {
            on_event(SessionEvent::Note(format!(
                "run {run}: no client came back within {}; the session ends",
                minutes_text(deadline.unwrap_or_default())
            )));
        }
        // Done when the protocol says so, or when an abort has been told to the clients.
        if finished || nobody || (aborted && sender.is_closed()) {
            let stats = sender.stats();
            outcome = Some(MasterOutcome::Report(MasterReport {
                clients: clients.values().cloned().collect(),
                root_hash: root_hash.unwrap_or([0; 32]),
                disk_size: geometry.disk_size,
                seconds: started_at.map_or(0.0, |s| s.elapsed().as_secs_f64()),
                bytes_sent: stats.bytes_sent,
                repair_ratio: repair_ratio(stats),
                aborted,
                runs: run,
            }));
        }
        if outcome.is_some() {
            break;
        }
        if started_at.is_some() && last_stats.elapsed() >= Duration::from_millis(500) {
            last_stats = now;
            let stats = sender.stats();
            on_event(SessionEvent::Sending {
                bytes_sent: stats.bytes_sent,
                repair_ratio: repair_ratio(stats),
                rate_bps: sender.current_rate(),
            });
        }
        // Wait for a datagram, the protocol's next deadline, or a short tick
        // to look at the feeder and the keys.
        let busy = sent >= SEND_BURST || now.elapsed() >= SEND_BURST_TIME;
        let tick = now + Duration::from_millis(if busy { 0 } else { 20 });
        let deadline = sender.poll_timeout().map_or(tick, |t| t.min(tick));
        if deadline > Instant::now() {
            // Woken by a chunk from the reader as well, while the window has room for it: the
            // first one otherwise waited for the 20 ms tick, with the session already started.
            let feed = (!feed_done && sender.want_objects() > 0).then_some(&feeder_rx);
            for d in net
                .wait_batch_or_either(deadline, &encoders.done, feed)?
                .unwrap_or_default()
            {
                sender.handle(d.at, d.from, &d.data);
            }
        }
        sender.handle_timeout(Instant::now());
    }
    // Keep answering for a moment: a client whose acknowledgement was lost
    // asks again, and must hear it rather than think the master died.
    linger(&mut sender, &mut net, Duration::from_secs(3))?;
    drop(feeder_rx);
    let _ = feeder.join();
    let outcome =
        outcome.ok_or_else(|| EngineError::Session("session ended without an outcome".into()))?;
    Ok((outcome, waiting.len()))
}

/// Threads that build the repair encoders (a build costs 1-2 ms per MiB, which would stall the
/// paced sends of the protocol loop). Repair is needed for a few objects at a time: two threads
/// keep up with a full window.
const ENCODER_THREADS: usize = 2;

/// Runs a session serves at most (the first and its follow-ups).
const MAX_RUNS: u32 = 8;
/// A follow-up run starts this long after the last of its clients registered, if not all came.
const FOLLOW_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the table says of a dropped or moved client.
fn drop_text(reason: proto::DropReason) -> String {
    match reason {
        proto::DropReason::Silent => "stopped answering".into(),
        proto::DropReason::NoProgress => "too slow for the group; it waits for the next run".into(),
        proto::DropReason::Slow => {
            "moved to the follow-up run: it alone held the group back (a slow disk or link)".into()
        }
        proto::DropReason::Lossy {
            loss_permille,
            group_permille,
        } => format!(
            "moved to the follow-up run: it lost {:.1}% of the packets, the others {:.1}%",
            f64::from(loss_permille) / 10.0,
            f64::from(group_permille) / 10.0
        ),
    }
}

fn end_client(
    clients: &mut BTreeMap<u64, ClientRow>,
    id: u64,
    result: ClientResult,
    started_at: Option<Instant>,
    bytes: u64,
    on_event: &mut dyn FnMut(SessionEvent),
) {
    if let Some(c) = clients.get_mut(&id) {
        c.result = result.clone();
        if bytes > 0 {
            c.bytes = bytes;
        }
        c.seconds = started_at.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    }
    on_event(SessionEvent::ClientEnded { id, result });
}

/// Repair per source symbol: RaptorQ repair symbols and Patches alike.
fn repair_ratio(stats: &proto::Stats) -> f64 {
    if stats.source_sent > 0 {
        (stats.repair_sent + stats.patches) as f64 / stats.source_sent as f64
    } else {
        0.0
    }
}

fn linger(
    sender: &mut proto::Sender,
    net: &mut Net,
    how_long: Duration,
) -> Result<(), EngineError> {
    // Clients repeat an unacknowledged report every 300 ms, and the master
    // acknowledges each report twice: once nothing has come for longer than
    // one repeat (and a margin), every client has heard its acknowledgement
    // but for one whose two copies and its repeat were all lost. The same holds
    // per client; and a client acknowledged as the run's last says it heard it
    // (Bye, twice), so a master whose last client did need not wait at all.
    const QUIET: Duration = Duration::from_millis(400);
    let end = Instant::now() + how_long;
    let mut last_heard = Instant::now();
    loop {
        let now = Instant::now();
        flush(sender, net, now)?;
        // No client can be repeating a Report: nothing can come to answer.
        if sender.nothing_to_repeat(now, QUIET)
            || now >= end
            || now.duration_since(last_heard) > QUIET
        {
            return Ok(());
        }
        let deadline = sender
            .poll_timeout()
            .map_or(end, |t| t.min(end))
            .min(last_heard + QUIET)
            .max(now + Duration::from_millis(1));
        for d in net.wait_batch(deadline)?.unwrap_or_default() {
            last_heard = Instant::now();
            sender.handle(d.at, d.from, &d.data);
        }
        sender.handle_timeout(Instant::now());
    }
}

fn flush(sender: &mut proto::Sender, net: &mut Net, now: Instant) -> Result<(), EngineError> {
    for _ in 0..64 {
        let Some(t) = sender.poll_transmit(now) else {
            break;
        };
        net.transmit(&t)?;
    }
    net.flush()
}

/// Opens the source and starts the thread that reads it into wire-ready chunks.
/// An opened source: its geometry, its root hash when known before sending, and the reader
/// thread's chunks.
struct Feeder {
    geometry: Geometry,
    known_root: Option<[u8; 32]>,
    chunks: Receiver<Feed>,
    thread: JoinHandle<()>,
}

fn start_feeder(source: &MasterSource) -> Result<Feeder, EngineError> {
    let (tx, rx) = bounded(FEED_QUEUE);
    match source {
        MasterSource::Disk { path, level, map } => {
            // The same maps as `img make`: only the table and the used blocks go on the wire.
            let map = image::map_source(path, *map)?;
            let disk = image::DiskSource::open(path)?;
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let mut opts = image::EncodeOptions::new(*level).threads(threads);
            opts.used = map.used;
            opts.min_target_size = map.min_target_size;
            let stream = image::spawn_encoder(disk, &opts)?;
            let geometry = stream.geometry();
            let handle = std::thread::Builder::new()
                .name("imgcast-feed".into())
                .spawn(move || {
                    let mut root = RootHasher::new(&geometry);
                    for chunk in stream {
                        let msg = match chunk {
                            Ok(c) => {
                                root.push(&c.hash);
                                Feed::Chunk {
                                    index: c.index,
                                    wire: c.to_wire(),
                                }
                            }
                            Err(e) => Feed::Failed(e.into()),
                        };
                        let failed = matches!(msg, Feed::Failed(_));
                        if tx.send(msg).is_err() || failed {
                            return;
                        }
                    }
                    let _ = tx.send(Feed::Done {
                        root_hash: root.finish(),
                    });
                })
                .map_err(|e| EngineError::io("starting the reader thread", e))?;
            Ok(Feeder {
                geometry,
                known_root: None,
                chunks: rx,
                thread: handle,
            })
        }
        MasterSource::Image { path } => {
            let reader = image::ImageReader::open(path)?;
            let geometry = reader.geometry();
            let root = reader.root_hash();
            let handle = std::thread::Builder::new()
                .name("imgcast-feed".into())
                .spawn(move || {
                    for i in 0..geometry.chunk_count {
                        let msg = match reader.read_chunk(i) {
                            Ok(c) => Feed::Chunk {
                                index: i,
                                wire: c.to_wire(),
                            },
                            Err(e) => Feed::Failed(e.into()),
                        };
                        let failed = matches!(msg, Feed::Failed(_));
                        if tx.send(msg).is_err() || failed {
                            return;
                        }
                    }
                    let _ = tx.send(Feed::Done {
                        root_hash: reader.root_hash(),
                    });
                })
                .map_err(|e| EngineError::io("starting the reader thread", e))?;
            Ok(Feeder {
                geometry,
                known_root: Some(root),
                chunks: rx,
                thread: handle,
            })
        }
    }
}

/// The name clients record for what they received: the image file's name, or the master's disk.
fn source_name(source: &MasterSource) -> String {
    match source {
        MasterSource::Image { path } => path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        MasterSource::Disk { path, .. } => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{} of {}", path.display(), host.trim())
        }
    }
}
