//! Server-started sessions: each runs the engine's master on its own thread
//! with an image file as its source, keeps a live view of its clients for the
//! API, and starts a follow-up run by itself for clients that came too late.
//!
//! ```text
//!  POST /api/sessions ─▶ Live ─thread─▶ run_master(image) ─events─▶ SessionView ─▶ SSE / GET
//!                         ▲ Control (start, abort)                      └─▶ SQLite at each milestone
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use imgcast_engine::{
    run_master, ClientResult, Control, MasterConfig, MasterOutcome, MasterSource, NetConfig,
    SessionEvent,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::boot::{AfterSession, BootOrders, BootPlan, BootReport};
use crate::store::{ip_of, BootReportRow, ClientRow};
use crate::{catalog, now_unix, ServerError, Shared};

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SessionState {
    /// Waiting for clients to register.
    Gathering,
    /// Sending.
    Running,
    /// Every run ended without an error or abort (see each client's result).
    Done,
    /// Aborted, or the engine failed.
    Failed,
}

impl SessionState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Gathering => "gathering",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }

    pub(crate) fn is_live(self) -> bool {
        matches!(self, Self::Gathering | Self::Running)
    }
}

/// One client of a session, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ClientView {
    /// The engine's client id.
    pub(crate) id: u64,
    /// Its address.
    pub(crate) addr: String,
    /// Which run of the session served it (1, then 2.. for follow-up runs).
    pub(crate) run: u32,
    /// Raw disk bytes it confirmed.
    pub(crate) done: u64,
    /// Raw disk bytes in all.
    pub(crate) total: u64,
    /// Recent rate, bytes per second.
    pub(crate) rate: f64,
    /// `null` while it runs; then `done`, `failed: WHY` or `dropped: WHY`.
    pub(crate) result: Option<String>,
    /// Its host name, as it registered.
    #[serde(default)]
    pub(crate) host: String,
    /// Its MAC address, from the server's neighbour table ("" if unknown).
    #[serde(default)]
    pub(crate) mac: String,
    /// What the client reported besides its result (where it kept its image-safe record), and
    /// the chunks it had to fetch again; empty when there is nothing to say.
    #[serde(default)]
    pub(crate) note: String,
    #[serde(skip)]
    sample: Option<(Instant, u64)>,
}

/// A session, as the API shows it (also stored as JSON in the history).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SessionView {
    /// Server-wide id.
    pub(crate) id: i64,
    /// Session name (what clients give with `-session`).
    pub(crate) name: String,
    /// Image file name.
    pub(crate) image: String,
    /// Where it is.
    pub(crate) state: SessionState,
    /// Current run, from 1.
    pub(crate) run: u32,
    /// Start when this many registered.
    pub(crate) min_clients: Option<u32>,
    /// Start at this time (seconds since the epoch), if no other rule started it first.
    #[serde(default)]
    pub(crate) start_at: Option<u64>,
    /// Start this many seconds after the last registration.
    #[serde(default)]
    pub(crate) timeout: Option<f64>,
    /// Interface the session sends on (none: the route to the group).
    #[serde(default)]
    pub(crate) interface: Option<String>,
    /// UDP port of the session.
    #[serde(default)]
    pub(crate) port: u16,
    /// Seconds a follow-up run gathers before it starts with whoever came back.
    #[serde(default)]
    pub(crate) follow_up_deadline: Option<f64>,
    /// Clients of every run.
    pub(crate) clients: Vec<ClientView>,
    /// Addresses told to wait for the next run.
    pub(crate) queued: Vec<String>,
    /// Raw disk size of the image.
    pub(crate) disk_size: u64,
    /// Bytes put on the wire, all runs.
    pub(crate) bytes_sent: u64,
    /// Repair symbols over source symbols, last run.
    pub(crate) repair_ratio: f64,
    /// Seconds since the epoch.
    pub(crate) created: u64,
    /// When the transfer of the current run started.
    pub(crate) started: Option<u64>,
    /// When the session ended.
    pub(crate) ended: Option<u64>,
    /// Why it failed, or was aborted.
    pub(crate) error: Option<String>,
    /// Lines the engine reported.
    pub(crate) notes: Vec<String>,
    /// The hosts that boot into the session, and what they reported.
    #[serde(default)]
    pub(crate) boot: Option<BootView>,
}

/// A session's boot plan as the API shows it, with the hosts' reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BootView {
    /// The hosts' MACs.
    pub(crate) hosts: Vec<String>,
    /// The disk each overwrites.
    pub(crate) disk: String,
    /// What each does once imaged.
    pub(crate) after: AfterSession,
    /// Where they fetch the key.
    pub(crate) keyfile: Option<String>,
    /// The newest report of each host that reported, oldest first.
    pub(crate) reported: Vec<HostReport>,
}

impl BootView {
    fn plan(&self) -> BootPlan {
        BootPlan {
            hosts: self.hosts.clone(),
            disk: self.disk.clone(),
            after: self.after,
            keyfile: self.keyfile.clone(),
        }
    }

    /// The first of `macs` that the plan names.
    fn host_of<'a>(&self, macs: &'a [String]) -> Option<&'a String> {
        macs.iter().find(|m| self.hosts.contains(m))
    }
}

/// What one booted host reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HostReport {
    /// Its MAC in the plan.
    pub(crate) mac: String,
    /// The address the report came from.
    pub(crate) addr: String,
    /// Whether its session succeeded.
    pub(crate) ok: bool,
    /// `img`'s exit code.
    pub(crate) exit_code: Option<i32>,
    /// How long its session took.
    pub(crate) seconds: f64,
    /// When the report came (seconds since the epoch).
    pub(crate) at: u64,
}

/// What `POST /api/sessions` asks for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionRequest {
    /// Session name.
    pub(crate) name: String,
    /// Image name.
    pub(crate) image: String,
    /// Start when this many clients registered.
    pub(crate) clients: Option<u32>,
    /// Seconds after the last registration to start anyway (with `clients`).
    pub(crate) timeout: Option<f64>,
    /// Milliseconds between data packets (fixed rate); absent: adaptive.
    pub(crate) throttle: Option<f64>,
    /// Passphrase for the keyed MAC.
    pub(crate) key: Option<String>,
    /// Start at this time (seconds since the epoch), whatever else has happened.
    pub(crate) start_at: Option<u64>,
    /// Or start this many seconds from now (a convenience for `start_at`).
    pub(crate) start_in: Option<f64>,
    /// Network interface for this session (default: the server's `--interface`).
    pub(crate) interface: Option<String>,
    /// UDP port for this session (default: the engine's port).
    pub(crate) port: Option<u16>,
    /// Seconds a follow-up run waits for its queued clients before it starts
    /// with whoever came back, or ends if nobody did (default 60).
    pub(crate) follow_up_deadline: Option<f64>,
    /// Hosts that boot into this session from the network (or with
    /// `img.server=URL`), by MAC, and their orders.
    pub(crate) boot: Option<BootPlan>,
}

/// A running session: its controls and live view.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) control: Control,
    view: Mutex<SessionView>,
    last_publish: Mutex<Option<Instant>>,
}

impl Live {
    pub(crate) fn view(&self) -> MutexGuard<'_, SessionView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long a follow-up run gathers for its queued clients before it ends
/// with whoever came back (with nobody: the session ends done at once).
pub(crate) const FOLLOW_UP_DEADLINE: Duration = Duration::from_secs(60);
/// Longest a scheduled start may lie ahead.
const MAX_START_AHEAD: u64 = 30 * 86400;

/// Most notes kept per session.
const MAX_NOTES: usize = 50;
/// Most queued addresses remembered.
const MAX_QUEUED: usize = 1024;
/// Least gap between two progress events of one session on the event stream.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Starts a session's thread. The caller has checked the name, the image and
/// that no live session has the name.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    id: i64,
    req: &SessionRequest,
    image_path: PathBuf,
    disk_size: u64,
    start_at: Option<u64>,
) -> Result<Arc<Live>, std::io::Error> {
    let view = SessionView {
        id,
        name: req.name.clone(),
        image: req.image.clone(),
        state: SessionState::Gathering,
        run: 1,
        min_clients: req.clients,
        start_at,
        timeout: req.timeout,
        interface: req.interface.clone().or_else(|| shared.interface.clone()),
        port: req.port.unwrap_or(shared.session_port),
        follow_up_deadline: req.follow_up_deadline,
        clients: Vec::new(),
        queued: Vec::new(),
        disk_size,
        bytes_sent: 0,
        repair_ratio: 0.0,
        created: now_unix(),
        started: None,
        ended: None,
        error: None,
        notes: Vec::new(),
        boot: req.boot.as_ref().map(|p| BootView {
            hosts: p.hosts.clone(),
            disk: p.disk.clone(),
            after: p.after,
            keyfile: p.keyfile.clone(),
            reported: Vec::new(),
        }),
    };
    let live = Arc::new(Live {
        control: Control::default(),
        view: Mutex::new(view),
        last_publish: Mutex::new(None),
    });
    let mut net = NetConfig::new(req.name.clone());
    net.interface = live.view().interface.clone();
    net.port = live.view().port;
    net.key = req.key.clone();
    let cfg = MasterConfig {
        net,
        source: MasterSource::Image { path: image_path },
        clients: req.clients,
        timeout: Duration::from_secs_f64(req.timeout.unwrap_or(300.0)),
        throttle: req.throttle.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        may_yield: false,
        slow: imgcast_engine::SlowPolicy::Move,
        // The server serves follow-up runs itself (run_session), for queued and moved clients.
        follow_up: false,
    };
    if let Some(at) = start_at {
        let wait = Duration::from_secs(at.saturating_sub(now_unix()));
        start_when_still_gathering(&live, 1, wait, None)?;
    }
    let (s, l) = (Arc::clone(shared), Arc::clone(&live));
    std::thread::Builder::new()
        .name(format!("session-{id}"))
        .spawn(move || run_session(&s, &l, cfg))?;
    Ok(live)
}

/// Presses start after `wait` if run `run` is still gathering (a scheduled
/// start, or a follow-up run's deadline), with `note` in the session's notes.
/// The thread sleeps in short steps and gives up as soon as the run has moved on.
fn start_when_still_gathering(
    live: &Arc<Live>,
    run: u32,
    wait: Duration,
    note: Option<String>,
) -> Result<(), std::io::Error> {
    let live = Arc::clone(live);
    let due = Instant::now() + wait;
    std::thread::Builder::new()
        .name("session-timer".into())
        .spawn(move || loop {
            {
                let mut v = live.view();
                if v.run != run || v.state != SessionState::Gathering {
                    return;
                }
                if Instant::now() >= due {
                    if let Some(n) = note {
                        push_note(&mut v, n);
                    }
                    live.control.press_start();
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200).min(due - Instant::now()));
        })?;
    Ok(())
}

/// Checks a request and starts its session: the view, as created.
pub(crate) fn create(shared: &Arc<Shared>, sr: &SessionRequest) -> Result<Value, ServerError> {
    imgcast_proto::SessionName::new(&sr.name)
        .map_err(|e| ServerError::BadRequest(format!("session name '{}': {e}", sr.name)))?;
    let mut sr = sr.clone();
    if let Some(plan) = sr.boot.take() {
        sr.boot = Some(
            plan.checked(&sr.name, sr.key.is_some())
                .map_err(ServerError::BadRequest)?,
        );
    }
    let sr = &sr;
    catalog::check_name(&sr.image)?;
    if let Some(t) = sr.timeout {
        if !(0.0..=7.0 * 86400.0).contains(&t) {
            return Err(ServerError::BadRequest(
                "timeout must be 0 to 604800 seconds".into(),
            ));
        }
    }
    if let Some(t) = sr.throttle {
        if !(0.0..=10_000.0).contains(&t) {
            return Err(ServerError::BadRequest(
                "throttle must be 0 to 10000 milliseconds".into(),
            ));
        }
    }
    if sr.clients == Some(0) {
        return Err(ServerError::BadRequest("clients must be at least 1".into()));
    }
    if let Some(d) = sr.follow_up_deadline {
        if !(1.0..=86400.0).contains(&d) {
            return Err(ServerError::BadRequest(
                "follow_up_deadline must be 1 to 86400 seconds".into(),
            ));
        }
    }
    if sr.port == Some(0) {
        return Err(ServerError::BadRequest("port must be 1 to 65535".into()));
    }
    if let Some(i) = &sr.interface {
        if i.is_empty() || i.len() > 15 || !i.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
            return Err(ServerError::BadRequest(format!(
                "interface '{i}' is not an interface name"
            )));
        }
    }
    let now = now_unix();
    let start_at = match (sr.start_at, sr.start_in) {
        (Some(_), Some(_)) => {
            return Err(ServerError::BadRequest(
                "give start_at or start_in, not both".into(),
            ))
        }
        (Some(at), None) => Some(at),
        (None, Some(secs)) if (0.0..=MAX_START_AHEAD as f64).contains(&secs) => {
            Some(now + secs.ceil() as u64)
        }
        (None, Some(_)) => {
            return Err(ServerError::BadRequest(format!(
                "start_in must be 0 to {MAX_START_AHEAD} seconds"
            )))
        }
        (None, None) => None,
    };
    if start_at.is_some_and(|at| at > now + MAX_START_AHEAD) {
        return Err(ServerError::BadRequest(format!(
            "start_at lies more than {MAX_START_AHEAD} seconds ahead"
        )));
    }
    let image = shared
        .store()
        .image(&sr.image)?
        .ok_or_else(|| ServerError::NotFound(format!("no image named '{}'", sr.image)))?;
    // Hold the map while checking and inserting, so two requests cannot both win a name.
    let mut live = shared.live();
    if let Some((id, _)) = live.iter().find(|(_, l)| {
        let v = l.view();
        v.name == sr.name && v.state.is_live()
    }) {
        return Err(ServerError::Conflict(format!(
            "a session named '{}' is already running (id {id}); abort it or choose another name",
            sr.name
        )));
    }
    if let Some(plan) = &sr.boot {
        for (id, l) in live.iter() {
            let v = l.view();
            let Some(b) = v.boot.as_ref().filter(|_| v.state.is_live()) else {
                continue;
            };
            if let Some(mac) = b.host_of(&plan.hosts) {
                return Err(ServerError::Conflict(format!(
                    "host {mac} boots into session {id} ('{}') already; a host has one order at a time",
                    v.name
                )));
            }
        }
    }
    let id = shared.store().new_session(&sr.name, &sr.image, now)?;
    let l = spawn(
        shared,
        id,
        sr,
        shared.dir.join(&sr.image),
        image.size,
        start_at,
    )
    .map_err(|e| ServerError::io("starting the session thread", &shared.dir, e))?;
    let view = serde_json::json!(*l.view());
    live.insert(id, Arc::clone(&l));
    drop(live);
    persist(shared, &l);
    shared
        .metrics
        .sessions_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.events.publish("session", &view.to_string());
    shared.log(&format!(
        "session {id} '{}' started from image {}",
        sr.name, sr.image
    ));
    Ok(view)
}

/// Runs the master, then follow-up runs while clients wait, then records the end.
fn run_session(shared: &Arc<Shared>, live: &Arc<Live>, mut cfg: MasterConfig) {
    loop {
        let res = run_master(&cfg, &live.control, &mut |ev| on_event(shared, live, ev));
        let mut follow_up = 0;
        {
            let mut v = live.view();
            match res {
                Ok(MasterOutcome::Report(r)) => {
                    v.bytes_sent += r.bytes_sent;
                    v.repair_ratio = r.repair_ratio;
                    shared.metrics.add_bytes_sent(r.bytes_sent);
                    let run = v.run;
                    for row in &r.clients {
                        if let Some(c) = v
                            .clients
                            .iter_mut()
                            .find(|c| c.id == row.id && c.run == run)
                        {
                            c.done = c.done.max(row.bytes);
                            c.rate = 0.0;
                            let mut note = Vec::new();
                            if row.rejected > 0 {
                                note.push(format!("{} bad chunk(s) fetched again", row.rejected));
                            }
                            if !row.note.is_empty() {
                                note.push(row.note.clone());
                            }
                            c.note = note.join("; ");
                            if c.result.is_none() {
                                c.result = Some(if r.aborted {
                                    "aborted".to_string()
                                } else {
                                    result_text(&row.result)
                                });
                            }
                        }
                    }
                    if r.aborted {
                        v.state = SessionState::Failed;
                        v.error = Some("aborted".into());
                    } else {
                        follow_up = v.queued.len();
                    }
                }
                Ok(MasterOutcome::Yielded) => {
                    v.state = SessionState::Failed;
                    v.error = Some("another master of this session name took over".into());
                }
                Err(e) => {
                    v.state = SessionState::Failed;
                    v.error = Some(e.to_string());
                    shared.metrics.add_error();
                }
            }
            if v.state.is_live() && follow_up > 0 {
                v.run += 1;
                v.state = SessionState::Gathering;
                v.started = None;
                let n = v.queued.len();
                v.queued.clear();
                let note = format!("follow-up run {} for {n} queued client(s)", v.run);
                push_note(&mut v, note);
            } else {
                follow_up = 0;
                if v.state.is_live() {
                    v.state = SessionState::Done;
                }
                v.ended = Some(now_unix());
                // Clients never heard of again end as dropped.
                for c in &mut v.clients {
                    c.rate = 0.0;
                    if c.result.is_none() {
                        c.result = Some("dropped: the session ended".into());
                    }
                }
            }
        }
        persist(shared, live);
        publish(shared, live, true);
        if follow_up == 0 {
            break;
        }
        // The queued clients register again with the new run: start when all did,
        // a short while after the last one, or at the deadline with whoever came.
        cfg.clients = Some(u32::try_from(follow_up).unwrap_or(u32::MAX));
        cfg.timeout = cfg.timeout.min(Duration::from_secs(30));
        let (run, deadline) = {
            let v = live.view();
            let d = v
                .follow_up_deadline
                .map_or(FOLLOW_UP_DEADLINE, Duration::from_secs_f64);
            (v.run, d)
        };
        let note = format!(
            "follow-up run {run}: the deadline ({} s) passed; starting with whoever came back",
            deadline.as_secs_f64()
        );
        if let Err(e) = start_when_still_gathering(live, run, deadline, Some(note)) {
            shared.log(&format!(
                "session {}: no deadline timer: {e}",
                live.view().id
            ));
        }
    }
    shared.finish_session(live);
}

fn result_text(r: &ClientResult) -> String {
    match r {
        ClientResult::Done => "done".into(),
        ClientResult::Failed(why) => format!("failed: {why}"),
        ClientResult::Dropped(why) => format!("dropped: {why}"),
        ClientResult::Moved(why) => format!("moved: {why}"),
    }
}

fn push_note(v: &mut SessionView, note: String) {
    if v.notes.len() >= MAX_NOTES {
        v.notes.remove(0);
    }
    v.notes.push(note);
}

/// Folds an engine event into the view; saves milestones; publishes.
fn on_event(shared: &Arc<Shared>, live: &Arc<Live>, ev: SessionEvent) {
    let mut milestone = true;
    {
        let mut v = live.view();
        let run = v.run;
        match ev {
            SessionEvent::ClientRegistered { id, addr, .. } => {
                let total = v.disk_size;
                v.clients.push(ClientView {
                    id,
                    addr: addr.to_string(),
                    run,
                    done: 0,
                    total,
                    rate: 0.0,
                    result: None,
                    host: String::new(),
                    mac: neighbour_mac(addr.ip()).unwrap_or_default(),
                    note: String::new(),
                    sample: None,
                });
                shared.metrics.add_client();
            }
            SessionEvent::ClientHost { id, host, mac } => {
                if let Some(c) = v.clients.iter_mut().find(|c| c.id == id && c.run == run) {
                    c.host = host;
                    // The client's own word beats our neighbour table, which knows only the
                    // hosts on our segment.
                    if let Some(mac) = mac {
                        c.mac = mac;
                    }
                }
            }
            SessionEvent::ClientQueued { addr } | SessionEvent::ClientMoved { addr, .. } => {
                let a = addr.to_string();
                if !v.queued.contains(&a) && v.queued.len() < MAX_QUEUED {
                    v.queued.push(a);
                }
            }
            SessionEvent::Started { .. } => {
                v.state = SessionState::Running;
                v.started = Some(now_unix());
                let now = Instant::now();
                for c in v.clients.iter_mut().filter(|c| c.run == run) {
                    c.sample = Some((now, 0));
                }
            }
            SessionEvent::Progress { id, done, total } => {
                milestone = false;
                if let Some(c) = v.clients.iter_mut().find(|c| c.id == id && c.run == run) {
                    c.total = total;
                    let now = Instant::now();
                    match c.sample {
                        Some((at, bytes))
                            if now.duration_since(at) >= Duration::from_millis(500) =>
                        {
                            let secs = now.duration_since(at).as_secs_f64();
                            c.rate = done.saturating_sub(bytes) as f64 / secs;
                            c.sample = Some((now, done));
                        }
                        None => c.sample = Some((now, done)),
                        Some(_) => {}
                    }
                    c.done = done;
                }
            }
            SessionEvent::ClientEnded { id, result } => {
                if let Some(c) = v.clients.iter_mut().find(|c| c.id == id && c.run == run) {
                    if result == ClientResult::Done {
                        c.done = c.total;
                    }
                    c.rate = 0.0;
                    c.result = Some(result_text(&result));
                }
                match result {
                    ClientResult::Done => shared.metrics.add_client_done(),
                    _ => shared.metrics.add_client_failed(),
                }
            }
            SessionEvent::Note(n) => push_note(&mut v, n),
            SessionEvent::Listening {
                group,
                port,
                interface,
                addr,
                ..
            } => push_note(
                &mut v,
                format!("run {run}: sending to {group}:{port} from {interface} {addr}"),
            ),
            _ => milestone = false,
        }
    }
    if milestone {
        persist(shared, live);
    }
    publish(shared, live, milestone);
}

/// Saves the view in the history, and a row per client (the host inventory).
pub(crate) fn persist(shared: &Shared, live: &Live) {
    let (id, state, json, rows) = {
        let v = live.view();
        let root_hash = shared
            .store()
            .image(&v.image)
            .ok()
            .flatten()
            .map(|i| i.root_hash)
            .unwrap_or_default();
        let seen = v.started.unwrap_or(v.created);
        let rows: Vec<ClientRow> = v
            .clients
            .iter()
            .map(|c| ClientRow {
                session_id: v.id,
                run: c.run,
                client_id: c.id,
                ip: ip_of(&c.addr),
                addr: c.addr.clone(),
                host_name: c.host.clone(),
                mac: c.mac.clone(),
                image: v.image.clone(),
                root_hash: root_hash.clone(),
                done: c.done,
                total: c.total,
                result: c.result.clone(),
                note: c.note.clone(),
                seen,
            })
            .collect();
        (
            v.id,
            v.state.as_str(),
            serde_json::to_string(&*v).unwrap_or_default(),
            rows,
        )
    };
    let mut store = shared.store();
    if let Err(e) = store.save_session(id, state, &json) {
        shared.log(&format!("session {id}: {e}"));
    }
    if let Err(e) = store.save_clients(&rows) {
        shared.log(&format!("session {id}: {e}"));
    }
}

/// The MAC address of `ip` in this machine's neighbour (ARP) table: a client
/// registers by unicast to us, so its entry is there while it takes part.
fn neighbour_mac(ip: std::net::IpAddr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    let ip = ip.to_string();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device; flags 0x0: incomplete.
        (f.len() >= 4 && f[0] == ip && f[2] != "0x0" && f[3] != "00:00:00:00:00:00")
            .then(|| f[3].to_string())
    })
}

/// Sends the view to the event stream; progress at most every 250 ms.
fn publish(shared: &Shared, live: &Live, always: bool) {
    {
        let mut last = live.last_publish.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if !always && last.is_some_and(|t| now.duration_since(t) < PUBLISH_EVERY) {
            return;
        }
        *last = Some(now);
    }
    let json = serde_json::to_string(&*live.view()).unwrap_or_default();
    shared.events.publish("session", &json);
}

/// Parses a stored view.
pub(crate) fn parse_view(json: &str) -> Option<SessionView> {
    serde_json::from_str(json).ok()
}

/// The live sessions by id.
pub(crate) type LiveMap = BTreeMap<i64, Arc<Live>>;

/// The orders of the host with MAC `mac` (normalised): from the live session
/// whose boot plan names it and that it has not yet reported success to.
/// Its result goes to `report` (the server's report URL, as the host reaches it).
pub(crate) fn orders_for(shared: &Shared, mac: &str, report: &str) -> Option<(i64, BootOrders)> {
    let live = shared.live();
    live.iter().find_map(|(id, l)| {
        let v = l.view();
        let b = v.boot.as_ref().filter(|_| v.state.is_live())?;
        let done = b.reported.iter().any(|r| r.mac == mac && r.ok);
        (b.hosts.iter().any(|h| h == mac) && !done)
            .then(|| (*id, b.plan().orders(&v.name, Some(report.to_string()))))
    })
}

/// Most ended sessions of one name searched for a late report's plan.
const REPORT_LOOKBACK: u32 = 20;

/// Files a booted host's report (`body` as it came, from `addr`) with the
/// session of its name whose boot plan names one of its MACs: the live one,
/// or, for a report that comes after the session ended, the newest stored
/// one. Returns the session's id and the host's MAC.
pub(crate) fn file_report(
    shared: &Shared,
    report: &BootReport,
    addr: &str,
    body: &str,
) -> Result<(i64, String), ServerError> {
    let macs: Vec<String> = report
        .macs
        .iter()
        .filter_map(|m| crate::boot::normalize_mac(m))
        .collect();
    if macs.is_empty() {
        return Err(ServerError::BadRequest(
            "the report names no MAC address (macs: [\"aa:bb:cc:dd:ee:ff\"])".into(),
        ));
    }
    let entry = |mac: &str| HostReport {
        mac: mac.to_string(),
        addr: addr.to_string(),
        ok: report.ok,
        exit_code: report.exit_code,
        seconds: report.seconds,
        at: now_unix(),
    };
    let keep = |id: i64, mac: &str| {
        shared.store().add_boot_report(&BootReportRow {
            session_id: id,
            mac: mac.to_string(),
            addr: addr.to_string(),
            ok: report.ok,
            exit_code: report.exit_code,
            seconds: report.seconds,
            received: now_unix(),
            body: body.to_string(),
        })
    };
    // A live session first: its view is the one that will be saved.
    let found = {
        let live = shared.live();
        live.values().find_map(|l| {
            let mut v = l.view();
            if v.name != report.session {
                return None;
            }
            let b = v.boot.as_mut()?;
            let mac = b.host_of(&macs)?.clone();
            add_report(b, entry(&mac));
            Some((v.id, mac, Arc::clone(l)))
        })
    };
    if let Some((id, mac, l)) = found {
        keep(id, &mac)?;
        persist(shared, &l);
        publish(shared, &l, true);
        return Ok((id, mac));
    }
    // Then the ended ones: a host that took long, or reported after the last run.
    let rows = shared
        .store()
        .sessions_named(&report.session, REPORT_LOOKBACK)?;
    for (id, json) in rows {
        let Some(mut v) = parse_view(&json) else {
            continue;
        };
        let Some(b) = v.boot.as_mut() else { continue };
        let Some(mac) = b.host_of(&macs).cloned() else {
            continue;
        };
        add_report(b, entry(&mac));
        let json = serde_json::to_string(&v).unwrap_or_default();
        keep(id, &mac)?;
        shared.store().save_session(id, v.state.as_str(), &json)?;
        shared.events.publish("session", &json);
        return Ok((id, mac));
    }
    Err(ServerError::NotFound(format!(
        "no session '{}' has a boot plan for {}",
        report.session,
        macs.join(", ")
    )))
}

/// Puts `r` in the plan's reports, in place of an older one of the same host.
fn add_report(b: &mut BootView, r: HostReport) {
    b.reported.retain(|o| o.mac != r.mac);
    b.reported.push(r);
}
