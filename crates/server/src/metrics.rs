//! `GET /metrics` in the Prometheus text format. Label values are escaped
//! (a session name may hold `"` and `\`), and the per-session series (bytes
//! sent, repair ratio, client results) come from the history in the database,
//! so they, and the totals, survive a restart.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sessions::{SessionState, SessionView};
use crate::{ServerError, Shared};

/// Sessions of the history that get per-session series.
const SESSIONS_SHOWN: u32 = 200;

/// Counters kept in memory; those that the history can tell are set from it
/// at start ([`Metrics::seed`]).
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
    pub(crate) refused_cross_site: AtomicU64,
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

    /// Sets the totals from the history of every earlier session.
    pub(crate) fn seed(&self, history: &[SessionView]) {
        let (mut reg, mut done, mut failed, mut bytes, mut errors) = (0, 0, 0, 0, 0);
        for v in history {
            reg += v.clients.len() as u64;
            done += v
                .clients
                .iter()
                .filter(|c| c.result.as_deref() == Some("done"))
                .count() as u64;
            failed += v
                .clients
                .iter()
                .filter(|c| c.result.as_deref().is_some_and(|r| r != "done"))
                .count() as u64;
            bytes += v.bytes_sent;
            errors +=
                u64::from(v.state == SessionState::Failed && v.error.as_deref() != Some("aborted"));
        }
        self.sessions_started
            .store(history.len() as u64, Ordering::Relaxed);
        self.clients_registered.store(reg, Ordering::Relaxed);
        self.clients_done.store(done, Ordering::Relaxed);
        self.clients_failed.store(failed, Ordering::Relaxed);
        self.bytes_sent.store(bytes, Ordering::Relaxed);
        self.errors.store(errors, Ordering::Relaxed);
    }
}

/// Escapes a label value as the text format wants: `\`, `"` and newline.
pub(crate) fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn head(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole scrape.
pub(crate) fn render(shared: &Shared) -> Result<String, ServerError> {
    let m = &shared.metrics;
    let images = shared.store().images()?.len();
    let history = shared.store().session_views(SESSIONS_SHOWN)?;
    let live: Vec<SessionView> = shared.live().values().map(|l| l.view().clone()).collect();
    // Live views are fresher than their saved rows.
    let mut views: Vec<SessionView> = history
        .into_iter()
        .filter(|h| !live.iter().any(|l| l.id == h.id))
        .collect();
    views.extend(live.iter().cloned());
    views.sort_by_key(|v| v.id);

    let (mut gathering, mut running, mut active) = (0, 0, 0);
    for v in &live {
        match v.state {
            SessionState::Gathering => gathering += 1,
            SessionState::Running => running += 1,
            _ => {}
        }
        active += v
            .clients
            .iter()
            .filter(|c| c.run == v.run && c.result.is_none())
            .count();
    }
    let mut s = String::new();
    head(&mut s, "imgcast_sessions", "gauge", "Sessions by state.");
    let _ = writeln!(s, "imgcast_sessions{{state=\"gathering\"}} {gathering}");
    let _ = writeln!(s, "imgcast_sessions{{state=\"running\"}} {running}");
    head(
        &mut s,
        "imgcast_clients_active",
        "gauge",
        "Clients being served now.",
    );
    let _ = writeln!(s, "imgcast_clients_active {active}");
    head(
        &mut s,
        "imgcast_images",
        "gauge",
        "Images in the catalogue.",
    );
    let _ = writeln!(s, "imgcast_images {images}");

    let label = |v: &SessionView| format!("id=\"{}\",session=\"{}\"", v.id, escape_label(&v.name));
    head(
        &mut s,
        "imgcast_session_bytes_sent",
        "gauge",
        "Bytes of data and repair a session put on the wire, all runs (recent sessions).",
    );
    for v in &views {
        let _ = writeln!(
            s,
            "imgcast_session_bytes_sent{{{}}} {}",
            label(v),
            v.bytes_sent
        );
    }
    head(
        &mut s,
        "imgcast_session_repair_ratio",
        "gauge",
        "Repair symbols over source symbols of a session's last run (recent sessions).",
    );
    for v in &views {
        let _ = writeln!(
            s,
            "imgcast_session_repair_ratio{{{}}} {}",
            label(v),
            v.repair_ratio
        );
    }
    head(
        &mut s,
        "imgcast_session_clients",
        "gauge",
        "Clients of a session by result: done, failed, dropped, aborted, running (recent sessions).",
    );
    for v in &views {
        for result in ["done", "failed", "dropped", "aborted", "running"] {
            let n = v
                .clients
                .iter()
                .filter(|c| {
                    let r = c.result.as_deref().unwrap_or("running");
                    r.split(':').next() == Some(result)
                })
                .count();
            let _ = writeln!(
                s,
                "imgcast_session_clients{{{},result=\"{result}\"}} {n}",
                label(v)
            );
        }
    }
    let counter = |s: &mut String, name: &str, help: &str, v: &AtomicU64| {
        head(s, name, "counter", help);
        let _ = writeln!(s, "{name} {}", v.load(Ordering::Relaxed));
    };
    counter(
        &mut s,
        "imgcast_sessions_started_total",
        "Sessions started.",
        &m.sessions_started,
    );
    counter(
        &mut s,
        "imgcast_clients_registered_total",
        "Clients that registered.",
        &m.clients_registered,
    );
    counter(
        &mut s,
        "imgcast_clients_done_total",
        "Clients that restored and verified the image.",
        &m.clients_done,
    );
    counter(
        &mut s,
        "imgcast_clients_failed_total",
        "Clients that failed or were dropped.",
        &m.clients_failed,
    );
    counter(
        &mut s,
        "imgcast_bytes_sent_total",
        "Bytes of data and repair put on the wire by ended runs.",
        &m.bytes_sent,
    );
    counter(
        &mut s,
        "imgcast_session_errors_total",
        "Sessions the engine failed.",
        &m.errors,
    );
    counter(
        &mut s,
        "imgcast_uploads_total",
        "Images uploaded and verified (since the server started).",
        &m.uploads,
    );
    counter(
        &mut s,
        "imgcast_unauthorized_total",
        "Requests refused for a missing or wrong token (since the server started).",
        &m.unauthorized,
    );
    counter(
        &mut s,
        "imgcast_cross_site_refused_total",
        "Cookie-authenticated writes refused as cross-site (since the server started).",
        &m.refused_cross_site,
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
