//! The imgcast imaging server: an image store, multicast sessions started
//! from image files, an HTTP/JSON API for scripts and a live web dashboard.
//!
//! ```text
//!  browser (cookie) / curl, img make http://.. (Bearer)    clients: img -session NAME -client
//!        │ HTTP                                                      ▲ multicast
//!        ▼                                                           │
//!  http (hyper: connection cap, header limits, timeouts)             │
//!   └▶ api (axum: auth, body limits) ─┬─▶ catalog ─▶ image dir (+ verify)
//!                                     ├─▶ sessions ─thread─▶ engine::run_master(image file)
//!                                     ├─▶ store (SQLite: catalogue, history, hosts, client rows)
//!                                     ├─▶ metrics (Prometheus text, from the store)
//!                                     └─▶ events (SSE, ids for reconnects) ◀── session events
//! ```
//!
//! The HTTP stack is hyper (HTTP/1.1) with axum's routing on a small tokio
//! runtime; the limits a server on an untrusted network needs are set in
//! `http` (per connection) and `api` (per route). Sessions run the
//! engine on threads of their own, as before; handlers that touch SQLite or
//! files run on tokio's blocking threads.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
mod auth;
pub mod boot;
mod catalog;
pub mod client;
mod dashboard;
mod events;
mod http;
mod metrics;
mod sessions;
mod store;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
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
    /// Boot files to serve under `/boot/` (what `img boot build --out DIR` wrote).
    pub boot_dir: Option<PathBuf>,
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
    /// The body is larger than allowed (413).
    #[error("{0}")]
    TooLarge(String),
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
    pub(crate) metrics: metrics::Metrics,
    /// The dashboard's logged-in browsers.
    pub(crate) web: auth::WebSessions,
    /// Interface for sessions.
    pub(crate) interface: Option<String>,
    /// UDP port of sessions.
    pub(crate) session_port: u16,
    /// Boot files served under `/boot/`, if any.
    pub(crate) boot_dir: Option<PathBuf>,
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

/// A server state on `dir` for unit tests (no listener, no scan thread).
#[cfg(test)]
pub(crate) fn test_shared(dir: &Path, token: &str) -> Arc<Shared> {
    let store = Store::open(&dir.join("state.sqlite")).expect("store");
    Arc::new(Shared {
        dir: dir.to_path_buf(),
        store: Mutex::new(store),
        token: token.to_string(),
        live: Mutex::new(LiveMap::new()),
        uploading: Mutex::new(Vec::new()),
        events: Hub::new(),
        metrics: metrics::Metrics::default(),
        web: auth::WebSessions::default(),
        interface: None,
        session_port: imgcast_engine::DEFAULT_PORT,
        boot_dir: None,
    })
}

/// The boot directory, checked: it must hold what iPXE loads.
fn check_boot_dir(dir: &Path) -> Result<PathBuf, ServerError> {
    for f in boot::BOOT_FILES {
        let p = dir.join(f);
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(ServerError::BadRequest(format!(
                    "--boot-dir {}: {f} is not a file (make the boot files with img boot build --out {})",
                    dir.display(),
                    dir.display()
                )))
            }
            Err(e) => {
                return Err(ServerError::BadRequest(format!(
                    "--boot-dir {}: no {f} ({e}); make the boot files with img boot build --out {}",
                    dir.display(),
                    dir.display()
                )))
            }
        }
    }
    dir.canonicalize()
        .map_err(|e| ServerError::io("resolving the boot directory", dir, e))
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
pub(crate) fn scan_images(shared: &Shared) -> Result<(), ServerError> {
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
    let boot_dir = opts.boot_dir.as_deref().map(check_boot_dir).transpose()?;
    let token = load_token(&token_file)?;
    let store = Store::open(&state)?;
    close_unfinished(&store)?;
    let metrics = metrics::Metrics::default();
    metrics.seed(&store.session_views(u32::MAX)?);
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        store: Mutex::new(store),
        token,
        live: Mutex::new(LiveMap::new()),
        uploading: Mutex::new(Vec::new()),
        events: Hub::new(),
        metrics,
        web: auth::WebSessions::default(),
        interface: opts.interface.clone(),
        session_port: imgcast_engine::DEFAULT_PORT,
        boot_dir,
    });
    let listener = std::net::TcpListener::bind(opts.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| ServerError::Listen {
            addr: opts.listen,
            why: e.to_string(),
        })?;
    let addr = listener
        .local_addr()
        .map_or_else(|_| opts.listen.to_string(), |a| a.to_string());
    // Verifying can take long: the API answers meanwhile, new images appear when checked.
    {
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("scan".into())
            .spawn(move || watch_images(&s))
            .map_err(|e| ServerError::io("starting the scan thread", dir, e))?;
    }
    // Two workers drive every connection (the work itself runs on blocking threads).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("http")
        .enable_all()
        .build()
        .map_err(|e| ServerError::io("starting the HTTP runtime", dir, e))?;
    let app = api::router(Arc::clone(&shared));
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| ServerError::Listen {
                addr: opts.listen,
                why: e.to_string(),
            })?;
        if let Some(d) = &shared.boot_dir {
            shared.log(&format!(
                "serving the boot files of {} at http://{addr}/boot/ (iPXE: chain http://{addr}/boot/ipxe)",
                d.display()
            ));
        }
        shared.log(&format!("listening on http://{addr}/"));
        let s = Arc::clone(&shared);
        http::serve(listener, app, http::Limits::default(), move |l| s.log(l)).await;
        Ok(())
    })
}

/// How often the image directory is looked at for files that appeared,
/// changed or went (`POST /api/images/rescan` looks at once).
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Scans the image directory at start, then whenever its listing changes.
fn watch_images(shared: &Shared) {
    let mut last: Option<Vec<(String, u64, u64)>> = None;
    loop {
        let now = listing(&shared.dir);
        if last.as_ref() != Some(&now) {
            if let Err(e) = scan_images(shared) {
                shared.log(&format!("scanning the image directory: {e}"));
            }
            last = Some(now);
        }
        std::thread::sleep(RESCAN_EVERY);
    }
}

/// Names, lengths and modification times of the image directory's files.
fn listing(dir: &Path) -> Vec<(String, u64, u64)> {
    catalog::list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(n, p)| {
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (n, len, catalog::mtime(&p))
        })
        .collect()
}
