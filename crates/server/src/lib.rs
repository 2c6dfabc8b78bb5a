//! The imgcast imaging server: an image store, multicast sessions started
//! from image files, an HTTP/JSON API for scripts and a live web dashboard.
//!
//! ```text
//!  browser / curl / img make http://..
//!        │ HTTP (token)                          clients: img -session NAME -client
//!        ▼                                                   ▲ multicast
//!  tiny_http ─▶ api ─┬─▶ catalog ─▶ image dir (+ verify)      │
//!   thread per       ├─▶ sessions ─thread─▶ engine::run_master(image file)
//!   request          ├─▶ store (SQLite: catalogue, session history)
//!                    └─▶ events (SSE) ◀── session events
//! ```
//!
//! The HTTP stack is `tiny_http`: synchronous, a thread per request, a handful
//! of small dependencies and no async runtime, so the workspace still builds
//! quickly on two cores. Server-sent events are written straight to the
//! connection, one flush per event.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
pub mod boot;
mod catalog;
pub mod client;
mod dashboard;
mod events;
mod sessions;
mod store;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::events::Hub;
use crate::sessions::{Live, LiveMap, SessionState};
use crate::store::Store;

/// How the server is started (`img server ...`).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Directory of image files.
    pub images: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// SQLite database path (default: `DIR/.imgcast-server.sqlite`).
    pub state: Option<PathBuf>,
    /// Token file (default: `DIR/.imgcast-token`).
    pub token_file: Option<PathBuf>,
    /// Interface for sessions (default: the route to the group).
    pub interface: Option<String>,
}

/// What stopped the server or failed a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: String,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The state database failed.
    #[error("state database, {what}: {source}")]
    Db {
        /// What was being done.
        what: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {why}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such image or session (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is running or stored (409).
    #[error("{0}")]
    Conflict(String),
    /// An image file or upload failed its checks (422).
    #[error("image '{name}' is not valid: {why}")]
    BadImage {
        /// Image name.
        name: String,
        /// What is wrong.
        why: String,
    },
}

impl ServerError {
    pub(crate) fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) sessions_started: AtomicU64,
    pub(crate) clients_registered: AtomicU64,
    pub(crate) clients_done: AtomicU64,
    pub(crate) clients_failed: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) uploads: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
}

impl Metrics {
    pub(crate) fn add_client(&self) {
        self.clients_registered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_client_done(&self) {
        self.clients_done.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_client_failed(&self) {
        self.clients_failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_bytes_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every request handler and session thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The image directory.
    pub(crate) dir: PathBuf,
    store: Mutex<Store>,
    /// The API token.
    pub(crate) token: String,
    /// Sessions gathering or running.
    live: Mutex<LiveMap>,
    /// Names of images being uploaded, so two uploads of one name do not race.
    pub(crate) uploading: Mutex<Vec<String>>,
    /// The event stream's subscribers.
    pub(crate) events: Hub,
    /// Counters.
    pub(crate) metrics: Metrics,
    /// Interface for sessions.
    pub(crate) interface: Option<String>,
    /// UDP port of sessions.
    pub(crate) session_port: u16,
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn live(&self) -> MutexGuard<'_, LiveMap> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session thread ended: it is history now.
    pub(crate) fn finish_session(&self, live: &Live) {
        let id = live.view().id;
        self.live().remove(&id);
    }

    /// The live session sending `image`, if any.
    pub(crate) fn session_using(&self, image: &str) -> Option<(i64, String)> {
        self.live().values().find_map(|l| {
            let v = l.view();
            (v.image == image && v.state.is_live()).then(|| (v.id, v.name.clone()))
        })
    }

    pub(crate) fn log(&self, line: &str) {
        eprintln!("imgcast-server: {line}");
    }
}

/// Reads the token file, or creates it (mode 0600) with a new random token,
/// printing the token once.
fn load_token(path: &Path) -> Result<String, ServerError> {
    match fs::File::open(path) {
        Ok(mut f) => {
            let mut s = String::new();
            f.read_to_string(&mut s)
                .map_err(|e| ServerError::io("reading the token file", path, e))?;
            let token = s.trim().to_string();
            if token.len() < 16 {
                return Err(ServerError::BadRequest(format!(
                    "the token in {} is shorter than 16 characters",
                    path.display()
                )));
            }
            if let Ok(m) = f.metadata() {
                if m.permissions().mode() & 0o077 != 0 {
                    eprintln!(
                        "imgcast-server: warning: {} can be read by other users; chmod 600 it",
                        path.display()
                    );
                }
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 24] = rand::random();
            let token = imgcast_image::hex(&bytes);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| ServerError::io("creating the token file", path, e))?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| ServerError::io("writing the token file", path, e))?;
            eprintln!(
                "imgcast-server: new API token (stored in {}, shown only now): {token}",
                path.display()
            );
            Ok(token)
        }
        Err(e) => Err(ServerError::io("opening the token file", path, e)),
    }
}

/// Brings the catalogue in line with the directory: forgets images whose
/// file is gone, and verifies files that are new or changed before listing them.
fn scan_images(shared: &Shared) -> Result<(), ServerError> {
    let files = catalog::list_dir(&shared.dir)?;
    let known = shared.store().images()?;
    for rec in &known {
        if !files.iter().any(|(n, _)| n == &rec.name) {
            shared.log(&format!("image {} is gone from the directory", rec.name));
            shared.store().delete_image(&rec.name)?;
        }
    }
    for (name, path) in files {
        let meta_len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let unchanged = known.iter().any(|r| {
            r.name == name && r.mtime == catalog::mtime(&path) && r.file_bytes == meta_len
        });
        if unchanged {
            continue;
        }
        match catalog::verify_file(&name, &path) {
            Ok(rec) => {
                shared.log(&format!("image {name} verified and listed"));
                shared.store().put_image(&rec)?;
                shared.events.publish("images", "{}");
            }
            Err(e) => {
                shared.log(&format!("{name}: not listed: {e}"));
                shared.store().delete_image(&name)?;
            }
        }
    }
    Ok(())
}

/// Marks sessions a previous server left unfinished as failed.
fn close_unfinished(store: &Store) -> Result<(), ServerError> {
    for (id, json) in store.unfinished_sessions()? {
        let view = sessions::parse_view(&json).map(|mut v| {
            v.state = SessionState::Failed;
            v.error = Some("the server stopped during the session".into());
            v.ended.get_or_insert(now_unix());
            serde_json::to_string(&v).unwrap_or_default()
        });
        store.save_session(id, "failed", view.as_deref().unwrap_or(&json))?;
    }
    Ok(())
}

/// Runs the server until the process is stopped.
pub fn run(opts: &ServerOptions) -> Result<(), ServerError> {
    let dir = &opts.images;
    fs::create_dir_all(dir).map_err(|e| ServerError::io("creating", dir, e))?;
    let state = opts
        .state
        .clone()
        .unwrap_or_else(|| dir.join(".imgcast-server.sqlite"));
    let token_file = opts
        .token_file
        .clone()
        .unwrap_or_else(|| dir.join(".imgcast-token"));
    let token = load_token(&token_file)?;
    let store = Store::open(&state)?;
    close_unfinished(&store)?;
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        store: Mutex::new(store),
        token,
        live: Mutex::new(LiveMap::new()),
        uploading: Mutex::new(Vec::new()),
        events: Hub::default(),
        metrics: Metrics::default(),
        interface: opts.interface.clone(),
        session_port: imgcast_engine::DEFAULT_PORT,
    });
    let server = tiny_http::Server::http(opts.listen).map_err(|e| ServerError::Listen {
        addr: opts.listen,
        why: e.to_string(),
    })?;
    let addr = server
        .server_addr()
        .to_ip()
        .map_or_else(|| opts.listen.to_string(), |a| a.to_string());
    shared.log(&format!("listening on http://{addr}/"));
    // Verifying can take long: the API answers meanwhile, new images appear when checked.
    {
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || {
                if let Err(e) = scan_images(&s) {
                    s.log(&format!("scanning the image directory: {e}"));
                }
            })
            .map_err(|e| ServerError::io("starting the scan thread", dir, e))?;
    }
    for request in server.incoming_requests() {
        let s = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || api::handle(&s, request));
        if let Err(e) = spawned {
            shared.log(&format!("cannot start a request thread: {e}"));
        }
    }
    Ok(())
}
