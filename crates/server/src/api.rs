//! The HTTP side: the routes of the JSON API (documented in `docs/API.md` and
//! `docs/openapi.yaml`), each with its body limit and timeout, the
//! authentication in front of them ([`crate::auth`]), the event stream,
//! `/metrics` and the dashboard pages.
//!
//! ```text
//!  security headers ─▶ auth (Bearer | cookie + same-origin JSON) ─┬─ small: 64 KiB bodies, 30 s
//!                                                                 ├─ upload: free space, 60 s idle body
//!                                                                 └─ events, verify: no total timeout
//! ```
//! Handlers touch SQLite and files, so their work runs on tokio's blocking
//! threads, never on the threads that drive connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tower::ServiceExt as _;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::auth::{self, Caller};
use crate::boot::{self, BootReport};
use crate::catalog;
use crate::dashboard;
use crate::events::Catchup;
use crate::sessions::{self, SessionRequest};
use crate::{ServerError, Shared};

/// Largest JSON body accepted.
pub(crate) const MAX_JSON: usize = 64 * 1024;
/// Largest login form.
const MAX_LOGIN: usize = 4096;
/// Longest a request other than an upload, a verify or the event stream may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an upload may send nothing.
pub(crate) const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// Sessions listed by `GET /api/sessions` unless `?limit=` says otherwise.
const DEFAULT_LIMIT: u32 = 100;
/// The pages' Content-Security-Policy: our own script and style only, no
/// framing by anyone, forms post only to us.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

type Shared_ = State<Arc<Shared>>;

fn json_reply(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error_reply(status: StatusCode, msg: &str) -> Response {
    json_reply(status, &json!({ "error": msg }))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadImage { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error_reply(status, &self.to_string())
    }
}

/// Runs `f` on a blocking thread (SQLite, files, verification).
async fn blocking<F>(f: F) -> Response
where
    F: FnOnce() -> Result<Response, ServerError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(e) => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the request's worker failed: {e}"),
        ),
    }
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

/// The value of `key` in a form body.
fn form_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v, true)).flatten()
    })
}

/// The whole application: routes, their limits, authentication, headers.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let small = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/api/images", get(list_images))
        .route("/api/images/rescan", post(rescan))
        .route("/api/images/{name}", get(get_image).delete(delete_image))
        .route("/api/images/{name}/description", put(describe_image))
        .route("/api/sessions", get(list_sessions).post(create_session))
        .route("/api/sessions/{id}", get(get_session).delete(abort_session))
        .route("/api/sessions/{id}/start", post(start_session))
        .route("/api/hosts", get(list_hosts))
        .route("/api/hosts/{id}", get(get_host))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_JSON));
    let long = Router::new()
        .route("/api/images/{name}/verify", post(verify_image))
        .route("/api/events", get(events))
        .layer(RequestBodyLimitLayer::new(MAX_JSON));
    // The upload's limit is the free space, checked in the handler.
    let upload = Router::new()
        .route("/api/images/{name}", put(upload))
        .layer(RequestBodyTimeoutLayer::new(UPLOAD_IDLE));
    let protected = small
        .merge(long)
        .merge(upload)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            authenticate,
        ));
    // What a booting machine asks for has no token to send: its orders carry no secret, and a
    // report counts only for a host that a session's boot plan names.
    let boot_small = Router::new()
        .route("/boot/ipxe", get(boot_ipxe))
        .route("/api/boot/orders", get(boot_orders))
        .route("/api/boot/report", post(boot_report))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_JSON));
    // A kernel and an initrd over a slow link may take longer than any total timeout.
    let boot_files = Router::new()
        .route("/boot/{*path}", get(boot_file))
        .layer(RequestBodyLimitLayer::new(MAX_JSON));
    let public = Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_LOGIN));
    public
        .merge(boot_small)
        .merge(boot_files)
        .merge(protected)
        .layer(middleware::from_fn(security_headers))
        .with_state(shared)
}

/// Headers every answer carries: never cached, never sniffed, never framed.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // Not `no-referrer`: under it, browsers send `Origin: null` on form posts,
    // and the same-origin check would refuse our own login form.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

/// Lets a request through with the API token, or with a dashboard cookie
/// on a read or on a same-origin JSON write; refuses it otherwise.
async fn authenticate(State(shared): Shared_, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let caller = if auth::bearer(headers).is_some_and(|t| auth::same_secret(t, &shared.token)) {
        Some(Caller::Bearer)
    } else if auth::session_cookie(headers).is_some_and(|id| shared.web.valid(id)) {
        Some(Caller::Cookie)
    } else {
        None
    };
    let path = req.uri().path().to_string();
    match caller {
        None => {
            shared.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            if path.starts_with("/api/") || path == "/metrics" {
                let mut r = error_reply(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong token: send Authorization: Bearer TOKEN",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                r
            } else {
                html(StatusCode::UNAUTHORIZED, dashboard::login_page(None))
            }
        }
        Some(Caller::Cookie) => {
            if let Some(why) = auth::cross_site_refusal(req.method(), &path, headers) {
                shared
                    .metrics
                    .refused_cross_site
                    .fetch_add(1, Ordering::Relaxed);
                shared.log(&format!("refused {} {path}: {why}", req.method()));
                return error_reply(StatusCode::FORBIDDEN, &why);
            }
            req.extensions_mut().insert(Caller::Cookie);
            next.run(req).await
        }
        Some(Caller::Bearer) => {
            req.extensions_mut().insert(Caller::Bearer);
            next.run(req).await
        }
    }
}

async fn not_found(method: Method) -> Response {
    let _ = method;
    ServerError::NotFound("no such page or API endpoint".into()).into_response()
}

async fn page() -> Response {
    html(StatusCode::OK, dashboard::page())
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        dashboard::SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        dashboard::STYLE,
    )
        .into_response()
}

/// `POST /login` (a form with the token): a new dashboard session.
async fn login(State(shared): Shared_, headers: HeaderMap, body: Bytes) -> Response {
    // A page elsewhere must not log a browser in (login CSRF).
    if headers.contains_key(header::ORIGIN) {
        if let Some(why) = auth::foreign_origin(&headers) {
            shared.log(&format!("refused a login: {why}"));
            return html(StatusCode::FORBIDDEN, dashboard::login_page(Some(&why)));
        }
    }
    let form = String::from_utf8_lossy(&body);
    match form_value(&form, "token") {
        Some(t) if auth::same_secret(t.trim(), &shared.token) => {
            let id = shared.web.create();
            let tls = headers
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
            let cookie = auth::login_cookie(&id, tls);
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_string()),
                    (header::SET_COOKIE, cookie),
                ],
            )
                .into_response()
        }
        _ => {
            shared.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            html(
                StatusCode::UNAUTHORIZED,
                dashboard::login_page(Some("wrong token")),
            )
        }
    }
}

/// `POST /logout`: ends the dashboard session of the cookie.
async fn logout(State(shared): Shared_, headers: HeaderMap) -> Response {
    if let Some(why) = auth::foreign_origin(&headers) {
        return error_reply(StatusCode::FORBIDDEN, &why);
    }
    if let Some(id) = auth::session_cookie(&headers) {
        shared.web.remove(id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (header::SET_COOKIE, auth::logout_cookie()),
        ],
    )
        .into_response()
}

async fn metrics(State(shared): Shared_) -> Response {
    blocking(move || {
        let text = crate::metrics::render(&shared)?;
        Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
    })
    .await
}

async fn list_images(State(shared): Shared_) -> Response {
    blocking(move || Ok(json_reply(StatusCode::OK, &json!(shared.store().images()?)))).await
}

/// `POST /api/images/rescan`: look at the directory again now.
async fn rescan(State(shared): Shared_) -> Response {
    blocking(move || {
        crate::scan_images(&shared)?;
        Ok(json_reply(
            StatusCode::OK,
            &json!({"ok": true, "images": shared.store().images()?}),
        ))
    })
    .await
}

fn checked_name(raw: &str) -> Result<String, ServerError> {
    catalog::check_name(raw)?;
    Ok(raw.to_string())
}

async fn get_image(State(shared): Shared_, Path(name): Path<String>) -> Response {
    blocking(move || {
        let name = checked_name(&name)?;
        let rec = shared
            .store()
            .image(&name)?
            .ok_or_else(|| ServerError::NotFound(format!("no image named '{name}'")))?;
        Ok(json_reply(StatusCode::OK, &json!(rec)))
    })
    .await
}

/// Longest image description.
const MAX_DESCRIPTION: usize = 4096;

/// `PUT /api/images/{name}/description` with `{"description": TEXT}`.
async fn describe_image(State(shared): Shared_, Path(name): Path<String>, body: Bytes) -> Response {
    blocking(move || {
        let name = checked_name(&name)?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Describe {
            description: String,
        }
        let d: Describe = serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("bad JSON: {e}")))?;
        if d.description.len() > MAX_DESCRIPTION {
            return Err(ServerError::BadRequest(format!(
                "a description may be at most {MAX_DESCRIPTION} bytes"
            )));
        }
        if !shared.store().describe_image(&name, &d.description)? {
            return Err(ServerError::NotFound(format!("no image named '{name}'")));
        }
        shared.events.publish("images", "{}");
        let rec = shared.store().image(&name)?;
        Ok(json_reply(StatusCode::OK, &json!(rec)))
    })
    .await
}

async fn verify_image(State(shared): Shared_, Path(name): Path<String>) -> Response {
    blocking(move || {
        let name = checked_name(&name)?;
        if shared.store().image(&name)?.is_none() {
            return Err(ServerError::NotFound(format!("no image named '{name}'")));
        }
        let path = shared.dir.join(&name);
        Ok(match catalog::verify_file(&name, &path) {
            Ok(rec) => {
                shared.store().put_image(&rec)?;
                shared.events.publish("images", "{}");
                json_reply(StatusCode::OK, &json!({"ok": true, "image": rec}))
            }
            Err(e) => json_reply(
                StatusCode::OK,
                &json!({"ok": false, "error": e.to_string()}),
            ),
        })
    })
    .await
}

/// Reads the body, failing once it passes `limit` bytes (the free space).
struct Capped<R> {
    inner: R,
    left: u64,
    over: Arc<AtomicBool>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                self.over.store(true, Ordering::Relaxed);
                Err(io::Error::other("the upload is larger than the free space"))
            }
        }
    }
}

/// `PUT /api/images/{name}`: the body is streamed to a temporary file,
/// checked and verified (see [`catalog::receive_upload`]); it may not be
/// larger than the image directory's free space.
async fn upload(
    State(shared): Shared_,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let name = match checked_name(&name) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let replace = matches!(q.get("replace").map(String::as_str), Some("true" | "1"));
    let free = match catalog::free_space(&shared.dir) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > free) {
        return ServerError::TooLarge(format!(
            "the upload ({} bytes) is larger than the free space of the image directory ({free} bytes)",
            declared.unwrap_or(0)
        ))
        .into_response();
    }
    let reader =
        tokio_util::io::StreamReader::new(body.into_data_stream().map_err(io::Error::other));
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    blocking(move || {
        let over = Arc::new(AtomicBool::new(false));
        let mut body = Capped {
            inner: bridge,
            left: free,
            over: Arc::clone(&over),
        };
        match receive(&shared, &name, replace, &mut body) {
            Err(_) if over.load(Ordering::Relaxed) => Err(ServerError::TooLarge(format!(
                "the upload is larger than the free space of the image directory ({free} bytes)"
            ))),
            other => other,
        }
    })
    .await
}

fn receive(
    shared: &Shared,
    name: &str,
    replace: bool,
    body: &mut dyn Read,
) -> Result<Response, ServerError> {
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
    let res = catalog::receive_upload(name, &shared.dir, body);
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
    Ok(json_reply(StatusCode::CREATED, &json!(rec)))
}

async fn delete_image(State(shared): Shared_, Path(name): Path<String>) -> Response {
    blocking(move || {
        let name = checked_name(&name)?;
        if let Some((id, sname)) = shared.session_using(&name) {
            return Err(ServerError::Conflict(format!(
                "image '{name}' is being sent by session {id} ('{sname}'); abort it first"
            )));
        }
        if shared.store().image(&name)?.is_none() {
            return Err(ServerError::NotFound(format!("no image named '{name}'")));
        }
        let path = shared.dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ServerError::io("deleting", &path, e)),
        }
        shared.store().delete_image(&name)?;
        shared.events.publish("images", "{}");
        Ok(json_reply(
            StatusCode::OK,
            &json!({"ok": true, "deleted": name}),
        ))
    })
    .await
}

fn parse_id(raw: &str) -> Result<i64, ServerError> {
    raw.parse()
        .map_err(|_| ServerError::NotFound(format!("no session with id '{raw}'")))
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

async fn get_session(State(shared): Shared_, Path(id): Path<String>) -> Response {
    blocking(move || {
        let id = parse_id(&id)?;
        if let Some(l) = shared.live().get(&id) {
            return Ok(json_reply(StatusCode::OK, &json!(*l.view())));
        }
        let json = shared
            .store()
            .session(id)?
            .ok_or_else(|| ServerError::NotFound(format!("no session with id {id}")))?;
        let v: Value = serde_json::from_str(&json).map_err(|e| {
            ServerError::BadRequest(format!("session {id} has an unreadable record: {e}"))
        })?;
        Ok(json_reply(StatusCode::OK, &v))
    })
    .await
}

async fn start_session(State(shared): Shared_, Path(id): Path<String>) -> Response {
    blocking(move || {
        let id = parse_id(&id)?;
        live_session(&shared, id)?.control.press_start();
        Ok(json_reply(
            StatusCode::ACCEPTED,
            &json!({"ok": true, "id": id}),
        ))
    })
    .await
}

async fn abort_session(State(shared): Shared_, Path(id): Path<String>) -> Response {
    blocking(move || {
        let id = parse_id(&id)?;
        live_session(&shared, id)?.control.press_abort();
        Ok(json_reply(
            StatusCode::ACCEPTED,
            &json!({"ok": true, "id": id}),
        ))
    })
    .await
}

async fn list_sessions(
    State(shared): Shared_,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    blocking(move || {
        let limit = match q.get("limit") {
            Some(l) => l
                .parse()
                .map_err(|_| ServerError::BadRequest(format!("limit '{l}' is not a number")))?,
            None => DEFAULT_LIMIT,
        };
        let rows = shared.store().sessions(limit)?;
        let live = shared.live();
        let list: Vec<Value> = rows
            .into_iter()
            .filter_map(|(id, json)| match live.get(&id) {
                Some(l) => Some(json!(*l.view())),
                None => serde_json::from_str(&json).ok(),
            })
            .collect();
        Ok(json_reply(StatusCode::OK, &Value::Array(list)))
    })
    .await
}

async fn create_session(State(shared): Shared_, body: Bytes) -> Response {
    blocking(move || {
        let sr: SessionRequest = serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("bad JSON: {e}")))?;
        let view = sessions::create(&shared, &sr)?;
        Ok(json_reply(StatusCode::CREATED, &view))
    })
    .await
}

async fn list_hosts(State(shared): Shared_) -> Response {
    blocking(move || Ok(json_reply(StatusCode::OK, &json!(shared.store().hosts()?)))).await
}

async fn get_host(State(shared): Shared_, Path(id): Path<String>) -> Response {
    blocking(move || {
        let id: i64 = id
            .parse()
            .map_err(|_| ServerError::NotFound(format!("no host with id '{id}'")))?;
        let host = shared
            .store()
            .host(id)?
            .ok_or_else(|| ServerError::NotFound(format!("no host with id {id}")))?;
        Ok(json_reply(StatusCode::OK, &host))
    })
    .await
}

fn text_reply(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `http://HOST:PORT` of this server as the caller reached it (its Host
/// header), for the URLs a booting machine follows.
fn server_url(headers: &HeaderMap) -> Result<String, ServerError> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!("http://{h}"))
        .ok_or_else(|| {
            ServerError::BadRequest(
                "a Host header (the server's name or address, and port) is needed".into(),
            )
        })
}

/// The normalised `mac` of a query, if it has one.
fn query_mac(q: &HashMap<String, String>) -> Result<Option<String>, ServerError> {
    match q.get("mac") {
        None => Ok(None),
        Some(m) => boot::normalize_mac(m).map(Some).ok_or_else(|| {
            ServerError::BadRequest(format!(
                "mac '{m}' is not a MAC address (aa:bb:cc:dd:ee:ff)"
            ))
        }),
    }
}

fn no_boot_dir() -> ServerError {
    ServerError::NotFound(
        "this server serves no boot files: start it with --boot-dir DIR (made by img boot build --out DIR)"
            .into(),
    )
}

/// `GET /boot/ipxe[?mac=M]`: without a MAC, a script that asks again with
/// the booting NIC's; with one, the kernel and initrd with that host's
/// orders, or with none (the machine opens the menu: a disk is never guessed).
async fn boot_ipxe(
    State(shared): Shared_,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    blocking(move || {
        if shared.boot_dir.is_none() {
            return Err(no_boot_dir());
        }
        let server = server_url(&headers)?;
        let Some(mac) = query_mac(&q)? else {
            return Ok(text_reply(StatusCode::OK, boot::chain_ipxe(&server)));
        };
        let base = format!("{server}/boot");
        let script = match sessions::orders_for(&shared, &mac, &format!("{server}/api/boot/report"))
        {
            Some((id, orders)) => {
                shared.log(&format!(
                    "boot: {mac} boots into session {id} ('{}')",
                    orders.session
                ));
                boot::render_ipxe(&base, Some(&orders))
            }
            None => {
                shared.log(&format!("boot: no orders for {mac}: it gets the menu"));
                boot::render_ipxe(&base, None)
            }
        };
        Ok(text_reply(StatusCode::OK, script))
    })
    .await
}

/// `GET /boot/{path}`: a file of the boot directory.
async fn boot_file(State(shared): Shared_, Path(rel): Path<String>, req: Request) -> Response {
    let Some(dir) = shared.boot_dir.clone() else {
        return no_boot_dir().into_response();
    };
    let found = tokio::task::spawn_blocking(move || boot::resolve_boot_path(&dir, &rel)).await;
    match found {
        Ok(Ok(path)) => {
            match tower_http::services::ServeFile::new(path)
                .oneshot(req)
                .await
            {
                Ok(r) => r.map(Body::new),
                Err(e) => match e {},
            }
        }
        Ok(Err(e)) => ServerError::NotFound(e.to_string()).into_response(),
        Err(e) => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the request's worker failed: {e}"),
        ),
    }
}

/// `GET /api/boot/orders?mac=M`: the orders of host M as kernel command-line
/// words (for `img boot run` with `img.server=URL`), or 404.
async fn boot_orders(
    State(shared): Shared_,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    blocking(move || {
        let mac = query_mac(&q)?
            .ok_or_else(|| ServerError::BadRequest("give the host's ?mac=".into()))?;
        let server = server_url(&headers)?;
        let (id, orders) =
            sessions::orders_for(&shared, &mac, &format!("{server}/api/boot/report")).ok_or_else(
                || ServerError::NotFound(format!("no live session has a boot order for {mac}")),
            )?;
        shared.log(&format!(
            "boot: {mac} asked for its orders: session {id} ('{}')",
            orders.session
        ));
        Ok(json_reply(
            StatusCode::OK,
            &json!({
                "session_id": id,
                "session": orders.session,
                "mac": mac,
                "cmdline": orders.to_cmdline(),
            }),
        ))
    })
    .await
}

/// `POST /api/boot/report`: a booted host's result, filed with the session
/// whose boot plan names it (also after that session ended).
async fn boot_report(State(shared): Shared_, req: Request) -> Response {
    let addr = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_JSON).await else {
        return ServerError::TooLarge(format!("a report may be at most {MAX_JSON} bytes"))
            .into_response();
    };
    blocking(move || {
        let report: BootReport = serde_json::from_slice(&body)
            .map_err(|e| ServerError::BadRequest(format!("bad report: {e}")))?;
        let text = String::from_utf8_lossy(&body);
        let (id, mac) = sessions::file_report(&shared, &report, &addr, &text)?;
        shared.log(&format!(
            "boot: {mac} ({addr}) reported {} after {:.0} s to session {id} ('{}')",
            if report.ok { "success" } else { "FAILURE" },
            report.seconds,
            report.session
        ));
        Ok(json_reply(
            StatusCode::OK,
            &json!({"ok": true, "session_id": id, "mac": mac}),
        ))
    })
    .await
}

/// `GET /api/events`: server-sent events. A reconnecting browser sends
/// `Last-Event-ID` and gets what it missed, or `event: reload`.
async fn events(State(shared): Shared_, headers: HeaderMap) -> Response {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (rx, catchup) = shared.events.subscribe(last);
    let first: Vec<Event> = match catchup {
        Catchup::Fresh(id) => {
            let mut evs = vec![Event::default()
                .event("hello")
                .id(id.to_string())
                .data("{}")
                .retry(Duration::from_secs(2))];
            evs.extend(shared.live().values().map(|l| {
                Event::default()
                    .event("session")
                    .data(serde_json::to_string(&*l.view()).unwrap_or_default())
            }));
            evs
        }
        Catchup::Replay(frames) => frames
            .into_iter()
            .map(|f| {
                Event::default()
                    .event(f.name)
                    .id(f.id.to_string())
                    .data(f.data)
            })
            .collect(),
        Catchup::Reload => vec![Event::default().event("reload").data("{}")],
    };
    let live = stream::unfold(rx, |mut rx| async move {
        let f = rx.recv().await?;
        let ev = Event::default()
            .event(f.name)
            .id(f.id.to_string())
            .data(f.data);
        Some((ev, rx))
    });
    let all = stream::iter(first).chain(live).map(Ok::<Event, Infallible>);
    Sse::new(all)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tower::ServiceExt;

    /// (METHOD, /path/{param}) of every operation in docs/openapi.yaml.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = include_str!("../../../docs/openapi.yaml");
        let mut out = BTreeSet::new();
        let mut in_paths = false;
        let mut path = String::new();
        for line in doc.lines() {
            if line == "paths:" {
                in_paths = true;
                continue;
            }
            if in_paths && !line.starts_with(' ') && !line.is_empty() {
                break;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = format!("/{}", p.trim_end_matches(':'));
            } else if let Some(m) = line.strip_prefix("    ") {
                let m = m.trim_end_matches(':');
                if ["get", "put", "post", "delete", "patch"].contains(&m) {
                    out.insert((m.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// (METHOD, /path/{param}) of every route in `router` above, read from
    /// this file's source, pages and their assets left out.
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("api.rs");
        let start = src.find("pub(crate) fn router(").expect("router");
        let end = start + src[start..].find("\n}\n").expect("end of router");
        let mut out = BTreeSet::new();
        for line in src[start..end].lines() {
            let Some(rest) = line.trim().strip_prefix(".route(\"") else {
                continue;
            };
            let (path, handlers) = rest.split_once('"').expect("path");
            // Pages, their assets and the boot files are not API.
            if ["/", "/dashboard.js", "/dashboard.css", "/boot/{*path}"].contains(&path) {
                continue;
            }
            for m in ["get", "put", "post", "delete", "patch"] {
                if handlers.contains(&format!(" {m}(")) || handlers.contains(&format!(".{m}(")) {
                    out.insert((m.to_ascii_uppercase(), path.to_string()));
                }
            }
        }
        out
    }

    /// The OpenAPI document and the routes agree both ways, and every
    /// documented operation is answered by its handler (not the 404 fallback,
    /// not 405).
    #[test]
    fn openapi_matches_the_routes() {
        let doc = documented();
        let real = routed();
        assert!(doc.len() > 10, "{doc:?}");
        assert_eq!(doc, real, "docs/openapi.yaml and the router differ");
        let dir = tempfile::tempdir().expect("tempdir");
        let token = "t".repeat(32);
        let app = router(crate::test_shared(dir.path(), &token));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        for (method, path) in &doc {
            let uri = path.replace("{name}", "nope.img").replace("{id}", "999");
            let req = Request::builder()
                .method(method.as_str())
                .uri(&uri)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .expect("request");
            let resp = rt.block_on(app.clone().oneshot(req)).expect("answer");
            let status = resp.status();
            if uri == "/api/events" {
                // An endless stream: its headers are the answer.
                assert_eq!(status, StatusCode::OK);
                continue;
            }
            let body = rt
                .block_on(axum::body::to_bytes(resp.into_body(), 1 << 16))
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(
                !text.contains("no such page or API endpoint"),
                "{method} {uri}: {status} {text}"
            );
        }
    }

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
    }
}
