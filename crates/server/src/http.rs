//! The listening socket: hyper's HTTP/1.1 connections, each under the limits
//! that keep one stranger from taking the server down (axum's own `serve`
//! exposes none of these).
//!
//! ```text
//!  accept ─▶ connection cap (a permit per connection; none left: closed at once)
//!         ─▶ hyper http1: header size cap (431), header-read and idle timeout
//!         ─▶ axum router (body limits and request timeouts per route, in api.rs)
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The connection-level limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections served at once; more are closed as they come.
    pub(crate) max_connections: usize,
    /// Largest request head (request line and headers), bytes.
    pub(crate) max_header_bytes: usize,
    /// Most header lines.
    pub(crate) max_headers: usize,
    /// Time to send a whole request head, and the most a kept-alive
    /// connection may sit idle between requests.
    pub(crate) header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until the process stops.
pub(crate) async fn serve(listener: TcpListener, app: Router, limits: Limits, log: impl Fn(&str)) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned = false;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: wait a little instead of spinning.
                log(&format!("accepting a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if !warned {
                log(&format!(
                    "{} connections open: refusing more until some close",
                    limits.max_connections
                ));
                warned = true;
            }
            drop(stream);
            continue;
        };
        warned = false;
        let _ = stream.set_nodelay(true);
        // Handlers that name the caller (a booted host's report) find its address here.
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_header_size(limits.max_header_bytes)
                .max_headers(limits.max_headers)
                .keep_alive(true);
            // Errors here are the peer's (a timeout, a reset, a malformed
            // request): the connection ends, the server goes on.
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
            drop(permit);
        });
    }
}
