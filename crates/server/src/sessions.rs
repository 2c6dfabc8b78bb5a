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

use crate::{now_unix, Shared};

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
) -> Result<Arc<Live>, std::io::Error> {
    let view = SessionView {
        id,
        name: req.name.clone(),
        image: req.image.clone(),
        state: SessionState::Gathering,
        run: 1,
        min_clients: req.clients,
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
    };
    let live = Arc::new(Live {
        control: Control::default(),
        view: Mutex::new(view),
        last_publish: Mutex::new(None),
    });
    let mut net = NetConfig::new(req.name.clone());
    net.interface = shared.interface.clone();
    net.port = shared.session_port;
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
    let (s, l) = (Arc::clone(shared), Arc::clone(&live));
    std::thread::Builder::new()
        .name(format!("session-{id}"))
        .spawn(move || run_session(&s, &l, cfg))?;
    Ok(live)
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
        // or a short while after the last one.
        cfg.clients = Some(u32::try_from(follow_up).unwrap_or(u32::MAX));
        cfg.timeout = cfg.timeout.min(Duration::from_secs(30));
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
                    note: String::new(),
                    sample: None,
                });
                shared.metrics.add_client();
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

/// Saves the view in the history.
pub(crate) fn persist(shared: &Shared, live: &Live) {
    let (id, state, json) = {
        let v = live.view();
        (
            v.id,
            v.state.as_str(),
            serde_json::to_string(&*v).unwrap_or_default(),
        )
    };
    if let Err(e) = shared.store().save_session(id, state, &json) {
        shared.log(&format!("session {id}: {e}"));
    }
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
