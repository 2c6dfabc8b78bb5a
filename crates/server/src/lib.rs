//! The imgcast imaging server (being built).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;

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

/// Runs the server until it is stopped.
pub fn run(opts: &ServerOptions) -> Result<(), String> {
    Err(format!(
        "the imaging server is not built yet ({})",
        opts.images.display()
    ))
}
