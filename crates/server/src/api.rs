//! The HTTP side: the token check, the routes of the JSON API (documented in
//! `docs/API.md`), the event stream, `/metrics` and the dashboard pages.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response};

use crate::catalog;
use crate::dashboard;
use crate::sessions::{self, SessionRequest, SessionState};
use crate::{ServerError, Shared};

/// Largest JSON body accepted.
const MAX_JSON: u64 = 64 * 1024;
/// Sessions listed by `GET /api/sessions` unless `?limit=` says otherwise.
const DEFAULT_LIMIT: u32 = 100;
/// Name of the dashboard's login cookie.
const COOKIE: &str = "imgcast_token";

/// A response ready to send.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    extra: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            extra: Vec::new(),
        }
    }

    fn error(status: u16, msg: &str) -> Self {
        Self::json(status, &json!({ "error": msg }))
    }

    fn html(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
            extra: Vec::new(),
        }
    }

    fn from_error(e: &ServerError) -> Self {
        let status = match e {
            ServerError::BadRequest(_) => 400,
            ServerError::NotFound(_) => 404,
            ServerError::Conflict(_) => 409,
            ServerError::BadImage { .. } => 422,
            _ => 500,
        };
        Self::error(status, &e.to_string())
    }
}

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn send(req: Request, reply: Reply) {
    let mut resp = Response::from_data(reply.body).with_status_code(reply.status);
    let mut headers = vec![
        ("Content-Type", reply.content_type.to_string()),
        ("Cache-Control", "no-store".to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
    ];
    headers.extend(reply.extra);
    for (n, v) in headers {
        if let Some(h) = header(n, &v) {
            resp.add_header(h);
        }
    }
    // The client may have gone; nothing to do then.
    let _ = req.respond(resp);
}

/// Decodes `%XX` escapes and `+` (in forms); `None` if not UTF-8 or malformed.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `key` in a query string or form body.
fn form_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v, true)).flatten()
    })
}

/// Compares without stopping at the first difference.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token a request carries: `Authorization: Bearer T` or the dashboard's cookie.
fn request_token(req: &Request) -> Option<String> {
    for h in req.headers() {
        if h.field.equiv("Authorization") {
            if let Some(t) = h.value.as_str().strip_prefix("Bearer ") {
                return Some(t.trim().to_string());
            }
        }
        if h.field.equiv("Cookie") {
            for part in h.value.as_str().split(';') {
                if let Some(t) = part.trim().strip_prefix("imgcast_token=") {
                    return Some(t.trim().to_string());
                }
            }
        }
    }
    None
}

/// Answers one request.
pub(crate) fn handle(shared: &Arc<Shared>, mut req: Request) {
    let method = req.method().clone();
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();

    if segments == ["login"] && method == Method::Post {
        let reply = login(shared, &mut req);
        return send(req, reply);
    }
    let authorized = request_token(&req).is_some_and(|t| same_token(&t, &shared.token));
    if !authorized {
        shared.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        let reply = if segments.first() == Some(&"api") || path == "/metrics" {
            let mut r = Reply::error(
                401,
                "missing or wrong token: send Authorization: Bearer TOKEN",
            );
            r.extra.push(("WWW-Authenticate", "Bearer".into()));
            r
        } else {
            Reply::html(401, dashboard::login_page(None))
        };
        return send(req, reply);
    }
    if segments == ["api", "events"] && method == Method::Get {
        return stream_events(shared, req);
    }
    let reply = match route(shared, &method, &segments, query, &mut req) {
        Ok(r) => r,
        Err(e) => Reply::from_error(&e),
    };
    send(req, reply);
}

fn login(shared: &Shared, req: &mut Request) -> Reply {
    let mut body = String::new();
    if req
        .as_reader()
        .take(4096)
        .read_to_string(&mut body)
        .is_err()
    {
        return Reply::error(400, "unreadable form");
    }
    match form_value(&body, "token") {
        Some(t) if same_token(t.trim(), &shared.token) => {
            let mut r = Reply::html(303, String::new());
            r.extra.push(("Location", "/".into()));
            r.extra.push((
                "Set-Cookie",
                format!(
                    "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    shared.token
                ),
            ));
            r
        }
        _ => {
            shared.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            Reply::html(401, dashboard::login_page(Some("wrong token")))
        }
    }
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    segments: &[&str],
    query: &str,
    req: &mut Request,
) -> Result<Reply, ServerError> {
    use Method::{Delete, Get, Post, Put};
    let name_at = |i: usize| -> Result<String, ServerError> {
        let raw = segments.get(i).copied().unwrap_or_default();
        let name = percent_decode(raw, false)
            .ok_or_else(|| ServerError::BadRequest(format!("'{raw}' is not a valid escape")))?;
        catalog::check_name(&name)?;
        Ok(name)
    };
    let id_at = |i: usize| -> Result<i64, ServerError> {
        let raw = segments.get(i).copied().unwrap_or_default();
        raw.parse()
            .map_err(|_| ServerError::NotFound(format!("no session with id '{raw}'")))
    };
    match (method, segments) {
        (Get, [""]) => Ok(Reply::html(200, dashboard::page())),
        (Get, ["metrics"]) => Ok(Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: metrics(shared)?.into_bytes(),
            extra: Vec::new(),
        }),
        (Get, ["api", "images"]) => {
            let list = shared.store().images()?;
            Ok(Reply::json(200, &json!(list)))
        }
        (Get, ["api", "images", _]) => {
            let name = name_at(2)?;
            let rec = shared
                .store()
                .image(&name)?
                .ok_or_else(|| ServerError::NotFound(format!("no image named '{name}'")))?;
            Ok(Reply::json(200, &json!(rec)))
        }
        (Put, ["api", "images", _]) => {
            let name = name_at(2)?;
            let replace = matches!(form_value(query, "replace").as_deref(), Some("true" | "1"));
            upload(shared, &name, replace, req)
        }
        (Delete, ["api", "images", _]) => {
            let name = name_at(2)?;
            delete_image(shared, &name)
        }
        (Post, ["api", "images", _, "verify"]) => {
            let name = name_at(2)?;
            if shared.store().image(&name)?.is_none() {
                return Err(ServerError::NotFound(format!("no image named '{name}'")));
            }
            let path = shared.dir.join(&name);
            match catalog::verify_file(&name, &path) {
                Ok(rec) => {
                    shared.store().put_image(&rec)?;
                    shared.events.publish("images", "{}");
                    Ok(Reply::json(200, &json!({"ok": true, "image": rec})))
                }
                Err(e) => Ok(Reply::json(
                    200,
                    &json!({"ok": false, "error": e.to_string()}),
                )),
            }
        }
        (Get, ["api", "sessions"]) => {
            let limit = match form_value(query, "limit") {
                Some(l) => l
                    .parse()
                    .map_err(|_| ServerError::BadRequest(format!("limit '{l}' is not a number")))?,
                None => DEFAULT_LIMIT,
            };
            Ok(Reply::json(
                200,
                &Value::Array(list_sessions(shared, limit)?),
            ))
        }
        (Post, ["api", "sessions"]) => create_session(shared, req),
        (Get, ["api", "sessions", _]) => {
            let id = id_at(2)?;
            Ok(Reply::json(200, &session_json(shared, id)?))
        }
        (Post, ["api", "sessions", _, "start"]) => {
            let id = id_at(2)?;
            let live = live_session(shared, id)?;
            live.control.press_start();
            Ok(Reply::json(202, &json!({"ok": true, "id": id})))
        }
        (Delete, ["api", "sessions", _]) => {
            let id = id_at(2)?;
            let live = live_session(shared, id)?;
            live.control.press_abort();
            Ok(Reply::json(202, &json!({"ok": true, "id": id})))
        }
        (_, ["" | "metrics"])
        | (_, ["api", "images" | "sessions" | "events"])
        | (_, ["api", "images" | "sessions", _])
        | (_, ["api", "images", _, "verify"])
        | (_, ["api", "sessions", _, "start"]) => Ok(Reply::error(405, "method not allowed here")),
        _ => Err(ServerError::NotFound("no such page or API endpoint".into())),
    }
}

fn upload(
    shared: &Shared,
    name: &str,
    replace: bool,
    req: &mut Request,
) -> Result<Reply, ServerError> {
    if let Some((id, sname)) = shared.session_using(name) {
        return Err(ServerError::Conflict(format!(
            "image '{name}' is being sent by session {id} ('{sname}'); it cannot be replaced now"
        )));
    }
    let exists = shared.store().image(name)?.is_some() || shared.dir.join(name).exists();
    if exists && !replace {
        return Err(ServerError::Conflict(format!(
            "image '{name}' exists; PUT with ?replace=true to replace it"
        )));
    }
    {
        let mut up = shared.uploading.lock().unwrap_or_else(|p| p.into_inner());
        if up.iter().any(|n| n == name) {
            return Err(ServerError::Conflict(format!(
                "image '{name}' is being uploaded already"
            )));
        }
        up.push(name.to_string());
    }
    let res = catalog::receive_upload(name, &shared.dir, req.as_reader());
    shared
        .uploading
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|n| n != name);
    let rec = res?;
    shared.store().put_image(&rec)?;
    shared.metrics.uploads.fetch_add(1, Ordering::Relaxed);
    shared.log(&format!("image {name} uploaded and verified"));
    shared.events.publish("images", "{}");
    Ok(Reply::json(201, &json!(rec)))
}

fn delete_image(shared: &Shared, name: &str) -> Result<Reply, ServerError> {
    if let Some((id, sname)) = shared.session_using(name) {
        return Err(ServerError::Conflict(format!(
            "image '{name}' is being sent by session {id} ('{sname}'); abort it first"
        )));
    }
    if shared.store().image(name)?.is_none() {
        return Err(ServerError::NotFound(format!("no image named '{name}'")));
    }
    let path = shared.dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::io("deleting", &path, e)),
    }
    shared.store().delete_image(name)?;
    shared.events.publish("images", "{}");
    Ok(Reply::json(200, &json!({"ok": true, "deleted": name})))
}

fn live_session(shared: &Shared, id: i64) -> Result<Arc<sessions::Live>, ServerError> {
    if let Some(l) = shared.live().get(&id) {
        return Ok(Arc::clone(l));
    }
    if shared.store().session(id)?.is_some() {
        return Err(ServerError::Conflict(format!("session {id} has ended")));
    }
    Err(ServerError::NotFound(format!("no session with id {id}")))
}

fn session_json(shared: &Shared, id: i64) -> Result<Value, ServerError> {
    if let Some(l) = shared.live().get(&id) {
        return Ok(json!(*l.view()));
    }
    let json = shared
        .store()
        .session(id)?
        .ok_or_else(|| ServerError::NotFound(format!("no session with id {id}")))?;
    serde_json::from_str(&json)
        .map_err(|e| ServerError::BadRequest(format!("session {id} has an unreadable record: {e}")))
}

fn list_sessions(shared: &Shared, limit: u32) -> Result<Vec<Value>, ServerError> {
    let rows = shared.store().sessions(limit)?;
    let live = shared.live();
    Ok(rows
        .into_iter()
        .filter_map(|(id, json)| match live.get(&id) {
            Some(l) => Some(json!(*l.view())),
            None => serde_json::from_str(&json).ok(),
        })
        .collect())
}

fn create_session(shared: &Arc<Shared>, req: &mut Request) -> Result<Reply, ServerError> {
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_JSON + 1)
        .read_to_end(&mut body)
        .map_err(|e| ServerError::BadRequest(format!("reading the request body: {e}")))?;
    if body.len() as u64 > MAX_JSON {
        return Err(ServerError::BadRequest(
            "the request body is too large".into(),
        ));
    }
    let sr: SessionRequest = serde_json::from_slice(&body)
        .map_err(|e| ServerError::BadRequest(format!("bad JSON: {e}")))?;
    imgcast_proto::SessionName::new(&sr.name)
        .map_err(|e| ServerError::BadRequest(format!("session name '{}': {e}", sr.name)))?;
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
    let id = shared
        .store()
        .new_session(&sr.name, &sr.image, crate::now_unix())?;
    let l = sessions::spawn(shared, id, &sr, shared.dir.join(&sr.image), image.size)
        .map_err(|e| ServerError::io("starting the session thread", &shared.dir, e))?;
    let view = json!(*l.view());
    live.insert(id, Arc::clone(&l));
    drop(live);
    sessions::persist(shared, &l);
    shared
        .metrics
        .sessions_started
        .fetch_add(1, Ordering::Relaxed);
    shared.events.publish("session", &view.to_string());
    shared.log(&format!(
        "session {id} '{}' started from image {}",
        sr.name, sr.image
    ));
    Ok(Reply::json(201, &view))
}

/// Writes the event stream by hand: headers, then one flushed frame per event.
fn stream_events(shared: &Shared, req: Request) {
    let rx = shared.events.subscribe();
    let current: Vec<String> = shared
        .live()
        .values()
        .map(|l| serde_json::to_string(&*l.view()).unwrap_or_default())
        .collect();
    let mut w = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nretry: 2000\n\n";
    if w.write_all(head.as_bytes())
        .and_then(|()| w.flush())
        .is_err()
    {
        return;
    }
    for v in current {
        if w.write_all(format!("event: session\ndata: {v}\n\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
    loop {
        let frame = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(f) => f,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => ": keep-alive\n\n".to_string(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if w.write_all(frame.as_bytes())
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
    }
}

fn metrics(shared: &Shared) -> Result<String, ServerError> {
    let m = &shared.metrics;
    let images = shared.store().images()?.len();
    let (mut gathering, mut running, mut live_clients) = (0, 0, 0);
    let mut ratios = String::new();
    for l in shared.live().values() {
        let v = l.view();
        match v.state {
            SessionState::Gathering => gathering += 1,
            SessionState::Running => running += 1,
            _ => {}
        }
        live_clients += v
            .clients
            .iter()
            .filter(|c| c.run == v.run && c.result.is_none())
            .count();
        ratios += &format!(
            "imgcast_session_repair_ratio{{session=\"{}\"}} {}\n",
            v.name, v.repair_ratio
        );
    }
    let counter = |name: &str, help: &str, v: &std::sync::atomic::AtomicU64| {
        format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            v.load(Ordering::Relaxed)
        )
    };
    let mut s = String::new();
    s += "# HELP imgcast_sessions Sessions by state.\n# TYPE imgcast_sessions gauge\n";
    s += &format!("imgcast_sessions{{state=\"gathering\"}} {gathering}\n");
    s += &format!("imgcast_sessions{{state=\"running\"}} {running}\n");
    s += "# HELP imgcast_clients_active Clients being served now.\n# TYPE imgcast_clients_active gauge\n";
    s += &format!("imgcast_clients_active {live_clients}\n");
    s += "# HELP imgcast_images Images in the catalogue.\n# TYPE imgcast_images gauge\n";
    s += &format!("imgcast_images {images}\n");
    s += "# HELP imgcast_session_repair_ratio Repair symbols over source symbols of a live session's last run.\n# TYPE imgcast_session_repair_ratio gauge\n";
    s += &ratios;
    s += &counter(
        "imgcast_sessions_started_total",
        "Sessions started.",
        &m.sessions_started,
    );
    s += &counter(
        "imgcast_clients_registered_total",
        "Clients that registered.",
        &m.clients_registered,
    );
    s += &counter(
        "imgcast_clients_done_total",
        "Clients that restored and verified the image.",
        &m.clients_done,
    );
    s += &counter(
        "imgcast_clients_failed_total",
        "Clients that failed or were dropped.",
        &m.clients_failed,
    );
    s += &counter(
        "imgcast_bytes_sent_total",
        "Bytes of data and repair put on the wire by ended runs.",
        &m.bytes_sent,
    );
    s += &counter(
        "imgcast_session_errors_total",
        "Sessions the engine failed.",
        &m.errors,
    );
    s += &counter(
        "imgcast_uploads_total",
        "Images uploaded and verified.",
        &m.uploads,
    );
    s += &counter(
        "imgcast_unauthorized_total",
        "Requests refused for a missing or wrong token.",
        &m.unauthorized,
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_forms_decode() {
        assert_eq!(
            percent_decode("%2e%2e%2Fetc", false).as_deref(),
            Some("../etc")
        );
        assert_eq!(percent_decode("a+b", true).as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%2", false), None);
        assert_eq!(
            form_value("a=1&token=x%20y", "token").as_deref(),
            Some("x y")
        );
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }
}
