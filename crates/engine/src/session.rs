//! What a session is asked to do, what it reports while it runs, and how it ended.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use imgcast_image::{Level, MapMode};
pub use imgcast_proto::SlowPolicy;

/// Default UDP port of sessions.
pub const DEFAULT_PORT: u16 = 8471;
/// A follow-up run (for clients moved out of a run, or queued during it) ends when none of them
/// has registered within this long.
pub const FOLLOW_UP_DEADLINE: Duration = Duration::from_secs(60);
/// Default multicast TTL: the group stays on the local segment.
pub const DEFAULT_TTL: u32 = 1;

/// Where the master's image comes from.
#[derive(Clone, Debug)]
pub enum MasterSource {
    /// A disk (block device or file), compressed while it is read.
    Disk {
        /// The device or file.
        path: PathBuf,
        /// Compression level.
        level: Level,
        /// Used blocks only (its filesystems' maps), or every byte.
        map: MapMode,
    },
    /// A stored image file, sent as stored.
    Image {
        /// The image file.
        path: PathBuf,
    },
}

/// Settings shared by both roles.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Session name (validated by `imgcast_proto::SessionName`).
    pub name: String,
    /// Interface name; `None`: the interface of the route to the group.
    pub interface: Option<String>,
    /// UDP port.
    pub port: u16,
    /// Passphrase for the keyed MAC.
    pub key: Option<String>,
    /// Silence after which a peer counts as dead.
    pub peer_timeout: Duration,
    /// Multicast TTL of what this device sends to the group (`-ttl`, 1..=255);
    /// only a master sends to the group.
    pub ttl: u32,
    /// A master acts as IGMP querier on its interface (`-querier`).
    pub querier: bool,
}

impl NetConfig {
    /// Defaults for a session name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            interface: None,
            port: DEFAULT_PORT,
            key: None,
            peer_timeout: Duration::from_secs(15),
            ttl: DEFAULT_TTL,
            querier: false,
        }
    }
}

/// A master's settings.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// Network settings.
    pub net: NetConfig,
    /// What to send.
    pub source: MasterSource,
    /// Start when this many clients registered (`-clients`).
    pub clients: Option<u32>,
    /// Start this long after the last registration (`-timeout`), when `clients` is set.
    pub timeout: Duration,
    /// Fixed gap between data packets (`-throttle`); `None`: adaptive rate.
    pub throttle: Option<Duration>,
    /// Set when this master was chosen with the `m` key: on a tie with another
    /// such master it may yield and become a client.
    pub may_yield: bool,
    /// What to do with a client that holds the group back (`-slow`).
    pub slow: SlowPolicy,
    /// Serve the follow-up runs for moved and queued clients in `run_master` itself (the imaging
    /// server runs its own).
    pub follow_up: bool,
}

/// A client's settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Network settings.
    pub net: NetConfig,
    /// The disk to overwrite.
    pub target: PathBuf,
    /// Give up when no session has started this long (`-wait`); `None` waits as long as it takes,
    /// as the original does. The target is never touched before a start.
    pub wait: Option<Duration>,
    /// After the restore, grow the last partition and its filesystem into a larger target.
    pub grow: bool,
    /// Discard (TRIM) the blocks the image leaves free, where the device supports it.
    pub discard: bool,
}

/// "5 minutes", "30 s": a duration as the messages say it.
pub(crate) fn minutes_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        let m = s / 60.0;
        if (m - m.round()).abs() < 1e-9 {
            format!(
                "{} minute{}",
                m.round(),
                if m.round() == 1.0 { "" } else { "s" }
            )
        } else {
            format!("{m:.1} minutes")
        }
    } else {
        format!("{} s", s.round())
    }
}

/// Keys and signals from the user, shared between the UI and the engine.
#[derive(Debug, Default)]
pub struct Control {
    start: AtomicBool,
    abort: AtomicBool,
    become_master: AtomicBool,
}

impl Control {
    /// The `s` key: start gathering's end now.
    pub fn press_start(&self) {
        self.start.store(true, Ordering::SeqCst);
    }
    /// The `q` key or Ctrl-C: abort the session.
    pub fn press_abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }
    /// The `m` key: make this device the master.
    pub fn press_master(&self) {
        self.become_master.store(true, Ordering::SeqCst);
    }
    pub(crate) fn take_start(&self) -> bool {
        self.start.swap(false, Ordering::SeqCst)
    }
    pub(crate) fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }
    pub(crate) fn take_become_master(&self) -> bool {
        self.become_master.swap(false, Ordering::SeqCst)
    }
}

/// Something the user should see, as it happens.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// Sockets are open.
    Listening {
        /// Session name.
        name: String,
        /// Its group.
        group: Ipv4Addr,
        /// Port.
        port: u16,
        /// Interface name and address.
        interface: String,
        /// Our address.
        addr: Ipv4Addr,
        /// Role taken.
        role: &'static str,
    },
    /// A client registered with this master.
    ClientRegistered {
        /// Client id.
        id: u64,
        /// Its address.
        addr: SocketAddr,
        /// How many are registered now.
        count: usize,
    },
    /// The host name a client registered with (follows its `ClientRegistered`).
    ClientHost {
        /// Client id.
        id: u64,
        /// Its host name, as it sent it (may be empty).
        host: String,
        /// Its MAC as `aa:bb:cc:dd:ee:ff`, when the client sent one.
        mac: Option<String>,
    },
    /// A latecomer was told to wait for the next run.
    ClientQueued {
        /// Its address.
        addr: SocketAddr,
    },
    /// A client was moved to the follow-up run; the others go on without it.
    ClientMoved {
        /// Client id.
        id: u64,
        /// Its address.
        addr: SocketAddr,
        /// Why, as the table says it.
        why: String,
    },
    /// The transfer began.
    Started {
        /// Registered clients.
        clients: usize,
    },
    /// Per-client progress (master) or own progress (client).
    Progress {
        /// Client id (0 on a client's own progress).
        id: u64,
        /// Raw disk bytes done.
        done: u64,
        /// Raw disk bytes in all.
        total: u64,
    },
    /// A client ended.
    ClientEnded {
        /// Client id.
        id: u64,
        /// Result.
        result: ClientResult,
    },
    /// A client found a master and its session.
    Found {
        /// The master's address.
        master: SocketAddr,
        /// Disk size of the image.
        disk_size: u64,
    },
    /// This client registered.
    Registered,
    /// This client came too late and waits for the next run of the session.
    Queued,
    /// The master's own transfer figures, every half second while sending.
    Sending {
        /// Bytes put on the wire so far (data and repair).
        bytes_sent: u64,
        /// Repair symbols over source symbols so far.
        repair_ratio: f64,
        /// Current sending rate, bits per second.
        rate_bps: u64,
    },
    /// Informational line.
    Note(String),
}

/// How one client ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientResult {
    /// Every chunk and the root hash verified, the disk written.
    Done,
    /// The client reported a failure.
    Failed(String),
    /// The client stopped answering, or could not keep up.
    Dropped(String),
    /// The client was moved to a follow-up run that it never completed.
    Moved(String),
}

/// One row of the master's result table.
#[derive(Clone, Debug)]
pub struct ClientRow {
    /// Client id.
    pub id: u64,
    /// Address.
    pub addr: SocketAddr,
    /// Result.
    pub result: ClientResult,
    /// Raw disk bytes it confirmed.
    pub bytes: u64,
    /// Seconds from start to its end.
    pub seconds: f64,
    /// Chunks it threw away because they failed their check, and fetched again.
    pub rejected: u32,
    /// What it reported besides its result (e.g. its image-safe record), possibly empty.
    pub note: String,
    /// The run of the session this row is from (1, then the follow-ups).
    pub run: u32,
    /// Why it was moved out of an earlier run, if it was.
    pub moved: Option<String>,
}

/// How a master's session ended.
#[derive(Clone, Debug)]
pub struct MasterReport {
    /// One row per registered client.
    pub clients: Vec<ClientRow>,
    /// The image's root hash.
    pub root_hash: [u8; 32],
    /// Raw disk size.
    pub disk_size: u64,
    /// Seconds from start to the end.
    pub seconds: f64,
    /// Bytes of data and repair put on the wire.
    pub bytes_sent: u64,
    /// Repair symbols over source symbols.
    pub repair_ratio: f64,
    /// Whether the session was aborted.
    pub aborted: bool,
    /// Runs served (1, or more with follow-ups).
    pub runs: u32,
}

impl MasterReport {
    /// True when every registered client finished.
    pub fn all_done(&self) -> bool {
        !self.aborted
            && !self.clients.is_empty()
            && self.clients.iter().all(|c| c.result == ClientResult::Done)
    }
}

/// How a client's session ended.
#[derive(Clone, Debug)]
pub struct ClientReport {
    /// The verified root hash.
    pub root_hash: [u8; 32],
    /// Raw disk size written.
    pub disk_size: u64,
    /// Seconds from start to the end.
    pub seconds: f64,
    /// The master's address.
    pub master: SocketAddr,
}
