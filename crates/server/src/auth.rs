//! Who may do what. Scripts send the API token as `Authorization: Bearer`;
//! browsers log in once with it and get a dashboard session of their own (a
//! random id in an `HttpOnly; SameSite=Strict` cookie, never the token), which
//! `POST /logout` ends. A cookie rides along with any request the browser
//! makes, so every write it authenticates must also come from our own page:
//! `Origin` (or `Sec-Fetch-Site`) says same-origin, and the body type is one
//! that an HTML form cannot send (`application/json`, or
//! `application/octet-stream` for an image upload).
//!
//! ```text
//!  request ─▶ Bearer TOKEN ─────────────────────────────▶ handler
//!         └─▶ Cookie imgcast_session=ID ─▶ GET/HEAD ─────▶ handler
//!                                       └─▶ write ─▶ same origin + JSON? ─▶ handler, else 403
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, Method};

/// Name of the dashboard's session cookie.
pub(crate) const COOKIE: &str = "imgcast_session";
/// How long a dashboard login lasts.
pub(crate) const WEB_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most dashboard sessions kept at once; the oldest goes first.
const MAX_WEB_SESSIONS: usize = 1024;

/// How a request authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caller {
    /// `Authorization: Bearer` with the API token.
    Bearer,
    /// The dashboard's session cookie.
    Cookie,
}

/// The dashboard's logged-in browsers.
#[derive(Debug, Default)]
pub(crate) struct WebSessions {
    by_id: Mutex<HashMap<String, Instant>>,
}

impl WebSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session id (192 random bits, hex).
    pub(crate) fn create(&self) -> String {
        let bytes: [u8; 24] = rand::random();
        let id = imgcast_image::hex(&bytes);
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, exp| *exp > now);
        if map.len() >= MAX_WEB_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), now + WEB_SESSION_TTL);
        id
    }

    /// Whether `id` is a live session.
    pub(crate) fn valid(&self, id: &str) -> bool {
        let now = Instant::now();
        let map = self.lock();
        map.iter().any(|(k, exp)| *exp > now && same_secret(k, id))
    }

    /// Ends a session.
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// Compares without stopping at the first difference.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The bearer token of a request, if it sent one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The dashboard session id of a request's cookie, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|part| {
            let (k, v) = part.trim().split_once('=')?;
            (k == COOKIE).then_some(v.trim())
        })
}

/// Why a cookie-authenticated write was refused, if it was.
pub(crate) fn cross_site_refusal(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(why) = foreign_origin(headers) {
        return Some(why);
    }
    let is_upload = path
        .strip_prefix("/api/images/")
        .is_some_and(|rest| !rest.contains('/'));
    let wanted = if *method == Method::PUT && is_upload {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let got = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = got.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(wanted) {
        return Some(format!(
            "a write from the dashboard must send Content-Type: {wanted} (got '{got}')"
        ));
    }
    None
}

/// Why a request does not come from our own origin, if it does not. A
/// browser's `Sec-Fetch-Site` (which no page can set) must say
/// `same-origin`; without it (an older browser), `Origin` must name the host
/// the request was sent to. A request with neither is refused too. (`Origin`
/// alone is not enough: browsers send `Origin: null` on some same-origin form
/// posts, and `Sec-Fetch-Site` already tells those apart.)
pub(crate) fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        return (site != "same-origin")
            .then(|| format!("cross-site request refused (Sec-Fetch-Site: {site})"));
    }
    let host = text(header::HOST).unwrap_or("");
    match text(header::ORIGIN) {
        Some(origin) => {
            let own = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
            (!own).then(|| format!("cross-origin request refused (Origin: {origin})"))
        }
        None => Some("a write from the dashboard must carry an Origin header".into()),
    }
}

/// The `Set-Cookie` value for a new dashboard session (`Secure` when the
/// page was reached over TLS, as a reverse proxy tells with `X-Forwarded-Proto`).
pub(crate) fn login_cookie(id: &str, tls: bool) -> String {
    let secure = if tls { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        WEB_SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends the dashboard session.
pub(crate) fn logout_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_same_origin_json_writes_pass() {
        let own = headers(&[
            ("host", "127.0.0.1:8470"),
            ("origin", "http://127.0.0.1:8470"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(
            cross_site_refusal(&Method::POST, "/api/sessions", &own),
            None
        );
        assert_eq!(
            cross_site_refusal(&Method::GET, "/api/sessions", &HeaderMap::new()),
            None
        );
        let form = headers(&[
            ("host", "127.0.0.1:8470"),
            ("origin", "http://127.0.0.1:8470"),
            ("content-type", "text/plain"),
        ]);
        assert!(cross_site_refusal(&Method::POST, "/api/sessions", &form).is_some());
        let foreign = headers(&[
            ("host", "127.0.0.1:8470"),
            ("origin", "http://127.0.0.1:9999"),
            ("content-type", "application/json"),
        ]);
        assert!(cross_site_refusal(&Method::POST, "/api/sessions", &foreign).is_some());
        let nul = headers(&[
            ("host", "127.0.0.1:8470"),
            ("origin", "null"),
            ("content-type", "application/json"),
        ]);
        assert!(cross_site_refusal(&Method::POST, "/api/sessions", &nul).is_some());
        let site = headers(&[
            ("host", "127.0.0.1:8470"),
            ("origin", "http://127.0.0.1:8470"),
            ("sec-fetch-site", "same-site"),
            ("content-type", "application/json"),
        ]);
        assert!(cross_site_refusal(&Method::DELETE, "/api/sessions/1", &site).is_some());
        let none = headers(&[("host", "h"), ("content-type", "application/json")]);
        assert!(cross_site_refusal(&Method::POST, "/api/sessions", &none).is_some());
        let upload = headers(&[
            ("host", "h"),
            ("origin", "https://h"),
            ("content-type", "application/octet-stream"),
        ]);
        assert_eq!(
            cross_site_refusal(&Method::PUT, "/api/images/a.img", &upload),
            None
        );
    }

    #[test]
    fn cookies_and_sessions() {
        let h = headers(&[("cookie", "a=b; imgcast_session=abc ; c=d")]);
        assert_eq!(session_cookie(&h), Some("abc"));
        let w = WebSessions::default();
        let id = w.create();
        assert!(w.valid(&id));
        assert!(!w.valid("abc"));
        w.remove(&id);
        assert!(!w.valid(&id));
        assert!(login_cookie("x", true).contains("HttpOnly; SameSite=Strict"));
        assert!(login_cookie("x", true).ends_with("; Secure"));
    }
}
