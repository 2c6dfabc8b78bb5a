//! The imgcast engine: drives the pure protocol state machines of
//! `imgcast-proto` with real I/O — UDP multicast sockets, the disk pipelines of
//! `imgcast-image`, threads and the clock.
//!
//! ```text
//!  master: disk ─read─▶ compress pool ─▶ Sender ─paced─▶ unicast socket ══▶ group
//!                                          ▲ feedback ◀── unicast socket
//!  client: group socket ─▶ Receiver ─▶ decode+verify pool ─▶ positional writes ─▶ target
//!                             └── status / registration ──▶ master (unicast)
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod igmp;
pub mod net;

/// What went wrong in a session, with the context an admin needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No usable interface.
    #[error("{what}")]
    Interface {
        /// Why.
        what: String,
    },
    /// The image layer refused or failed.
    #[error(transparent)]
    Image(#[from] imgcast_image::ImageError),
    /// The session failed.
    #[error("{0}")]
    Session(String),
}

impl EngineError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

mod client;
pub mod info;
mod io;
mod master;
mod session;
mod workers;

pub use client::{run_client, run_undecided, ClientCore, UndecidedOutcome};
pub use info::SessionInfo;
pub use master::{run_master, MasterOutcome};
pub use session::{
    ClientConfig, ClientReport, ClientResult, ClientRow, Control, MasterConfig, MasterReport,
    MasterSource, NetConfig, SessionEvent, SlowPolicy, DEFAULT_PORT, DEFAULT_TTL,
    FOLLOW_UP_DEADLINE,
};
