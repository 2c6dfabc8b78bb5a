//! The client side of the server's API, on the `ureq` HTTP client: enough for
//! `img make http://HOST:PORT/NAME` (a capture streamed straight into a
//! `PUT /api/images/NAME`, chunked, never touching the local disk), for the
//! boot environment (fetching a key file, posting a report) and for scripts
//! and tests.
//!
//! ```text
//!  DiskSource ─▶ spawn_encoder ─▶ ImageWriter ─▶ Pipe ─thread─▶ ureq (chunked, Expect: 100-continue) ─▶ server: PUT /api/images/NAME
//! ```
//!
//! Every status is an answer, not an error: [`Reply::ok`] turns a refusal
//! into [`ClientError::Status`] with the server's own `error` text. Uploads
//! ask `Expect: 100-continue`, so a server that refuses them (a wrong token,
//! a name taken) says so before the image is sent. Answers are read up to
//! [`MAX_REPLY`]; each phase has its time limit (see the constants).

use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::OnceLock;
use std::time::Duration;

use imgcast_image::{self as image, ImageWriter, Level};
use ureq::http::{self, Uri};
use ureq::{Agent, SendBody};

/// Longest answer body read into memory.
pub const MAX_REPLY: u64 = 16 << 20;
/// Time to open the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request's head.
const SEND_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the server to answer once the request is sent (a verify, or the
/// check at the end of an upload, reads the whole image first), and again to
/// read the answer's body (at most [`MAX_REPLY`] bytes).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a streamed body may sit still: a write of an upload, a read of the
/// event stream (which gets a keep-alive every 15 s, and no total limit).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an upload waits for `100 Continue` before sending anyway (for a
/// server or proxy that never sends it).
const AWAIT_100: Duration = Duration::from_secs(3);

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://HOST[:PORT]/PATH`.
    #[error("'{url}' is not a server URL: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The request failed: no connection, a timeout, a broken answer, an
    /// answer over [`MAX_REPLY`].
    #[error("{what} {url}: {source}")]
    Http {
        /// What was being done.
        what: &'static str,
        /// The URL.
        url: String,
        /// The cause, from the HTTP client.
        source: ureq::Error,
    },
    /// The server refused the request.
    #[error("the server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its `error` field, or the body.
        message: String,
    },
    /// The capture could not hand its bytes to the upload.
    #[error("{what}: {source}")]
    Capture {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
    /// Reading or compressing the source failed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// Checks that `url` is `http://HOST[:PORT]/PATH` (the server speaks plain
/// HTTP; put a TLS proxy in front of it for browsers).
pub fn server_url(url: &str) -> Result<Uri, ClientError> {
    let bad = |why: &str| ClientError::Url {
        url: url.to_string(),
        why: why.to_string(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported")),
        None => return Err(bad("give it as http://HOST:PORT/PATH")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// A complete answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers, names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's (first) value.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Err(Status)` unless the status is 2xx.
    pub fn ok(self) -> Result<Self, ClientError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let j = self.json();
        let message = j
            .get("error")
            .and_then(|e| e.as_str())
            .map_or_else(|| self.text(), str::to_string);
        Err(ClientError::Status {
            status: self.status,
            message,
        })
    }
}

/// The HTTP client: statuses are answers, redirects are not followed (the
/// login's 303 is an answer too), one connection per request (as the server
/// may close one after a refusal), per-phase time limits.
fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_send_request(Some(SEND_HEAD_TIMEOUT))
            .timeout_await_100(Some(AWAIT_100))
            .timeout_recv_response(Some(ANSWER_TIMEOUT))
            .timeout_recv_body(Some(ANSWER_TIMEOUT))
            .timeout_per_write(Some(IDLE_TIMEOUT))
            .user_agent(concat!("imgcast/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    })
}

fn http_err<'a>(what: &'static str, url: &'a str) -> impl FnOnce(ureq::Error) -> ClientError + 'a {
    move |source| ClientError::Http {
        what,
        url: url.to_string(),
        source,
    }
}

/// Reads a whole answer, up to [`MAX_REPLY`] bytes of body.
fn into_reply(url: &str, resp: http::Response<ureq::Body>) -> Result<Reply, ClientError> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .into_with_config()
        .limit(MAX_REPLY)
        .read_to_vec()
        .map_err(http_err("reading the answer of", url))?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Sends `METHOD url` with an optional token and body, reads the whole answer.
pub fn send(
    url: &str,
    method: &str,
    token: Option<&str>,
    content_type: &str,
    body: Option<&[u8]>,
) -> Result<Reply, ClientError> {
    let uri = server_url(url)?;
    let mut req = http::Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    // POST and PUT always carry a length, 0 if nothing else.
    let body = body.or_else(|| matches!(method, "POST" | "PUT").then_some(&[][..]));
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, content_type);
    }
    let resp = match body {
        Some(b) => req.body(b).map(|r| agent().run(r)),
        None => req.body(()).map(|r| agent().run(r)),
    }
    .map_err(|e| ClientError::Url {
        url: url.to_string(),
        why: e.to_string(),
    })?
    .map_err(http_err("requesting", url))?;
    into_reply(url, resp)
}

/// Sends one request to the server at `addr` (`HOST:PORT`) with an optional
/// JSON body and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Reply, ClientError> {
    send(
        &format!("http://{addr}{path}"),
        method,
        token,
        "application/json",
        body,
    )
}

/// `GET url` with no token: a key file, say.
pub fn get(url: &str) -> Result<Reply, ClientError> {
    send(url, "GET", None, "application/json", None)
}

/// `POST url` with a JSON body and no token: a boot report, say.
pub fn post_json(url: &str, body: &serde_json::Value) -> Result<Reply, ClientError> {
    send(
        url,
        "POST",
        None,
        "application/json",
        Some(body.to_string().as_bytes()),
    )
}

/// An open event stream: its body, read as it comes.
pub type EventStream = BufReader<ureq::BodyReader<'static>>;

/// Opens a streaming `GET` (the event stream): the status is read; the
/// returned reader yields the body as it comes, each read waiting at most
/// [`IDLE_TIMEOUT`].
pub fn get_stream(
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, EventStream), ClientError> {
    let url = format!("http://{addr}{path}");
    let uri = server_url(&url)?;
    let mut req = http::Request::builder()
        .method("GET")
        .uri(uri)
        .header(http::header::ACCEPT, "text/event-stream");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(()).map_err(|e| ClientError::Url {
        url: url.clone(),
        why: e.to_string(),
    })?;
    let resp = agent()
        .configure_request(req)
        .timeout_recv_body(None)
        .timeout_per_read(Some(IDLE_TIMEOUT))
        .build();
    let resp = agent().run(resp).map_err(http_err("requesting", &url))?;
    let status = resp.status().as_u16();
    Ok((status, BufReader::new(resp.into_body().into_reader())))
}

/// Uploads image bytes from `body` as `PUT path` to the server at `addr`,
/// chunked (a body that ends early is sent as a complete, shorter upload,
/// which the server refuses).
pub fn put_image(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &mut dyn Read,
) -> Result<Reply, ClientError> {
    let url = format!("http://{addr}{path}");
    upload(&url, token, SendBody::from_reader(body))
}

/// `PUT url` with a streamed body; the answer even when the server refused
/// before the body was sent.
fn upload(url: &str, token: Option<&str>, body: SendBody<'_>) -> Result<Reply, ClientError> {
    let uri = server_url(url)?;
    let mut req = http::Request::builder()
        .method("PUT")
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .header(http::header::EXPECT, "100-continue");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(body).map_err(|e| ClientError::Url {
        url: url.to_string(),
        why: e.to_string(),
    })?;
    let resp = agent()
        .run(req)
        .map_err(http_err("sending the image to", url))?;
    into_reply(url, resp)
}

/// Bytes from the capture thread to the HTTP body, in pieces of up to 256 KiB
/// through a queue of a few: memory stays bounded, and a slow server slows
/// the capture.
enum Piece {
    Data(Vec<u8>),
    /// The image is whole: the body may end.
    End,
}

const PIECE: usize = 256 * 1024;
const PIECES_QUEUED: usize = 4;

struct PipeWriter {
    tx: SyncSender<Piece>,
    buf: Vec<u8>,
    /// The HTTP side stopped reading (the server answered, or the request failed).
    gone: bool,
}

impl PipeWriter {
    fn push(&mut self, piece: Piece) -> io::Result<()> {
        self.tx.send(piece).map_err(|_| {
            self.gone = true;
            io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped")
        })
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
            self.push(Piece::Data(full))?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.emit()?;
        self.push(Piece::End)
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()
    }
}

struct PipeReader {
    rx: Receiver<Piece>,
    cur: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(v)) => {
                    self.cur = v;
                    self.at = 0;
                }
                Ok(Piece::End) => self.ended = true,
                // The capture failed: the body must not end as if whole.
                Err(_) => return Err(io::Error::other("the capture stopped")),
            }
        }
        let n = out.len().min(self.cur.len() - self.at);
        out[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(PIECES_QUEUED);
    (
        PipeWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
            gone: false,
        },
        PipeReader {
            rx,
            cur: Vec::new(),
            at: 0,
            ended: false,
        },
    )
}

/// Captures `source` and streams the image to `url` (`http://HOST:PORT/NAME`),
/// where the server checks it before listing it as image NAME.
pub fn capture_to_server(
    url: &str,
    token: &str,
    source: &Path,
    level: Level,
    chunk_size: u32,
    map: image::MapMode,
    progress: &(dyn Fn(image::Progress) + Sync),
) -> Result<Reply, ClientError> {
    let uri = server_url(url)?;
    let name = uri.path().trim_start_matches('/');
    if name.is_empty() || name.contains('/') || uri.query().is_some() {
        return Err(ClientError::Url {
            url: url.to_string(),
            why: "give the image name as the path: http://HOST:PORT/NAME".into(),
        });
    }
    let authority = uri.authority().map_or("", |a| a.as_str());
    let put_url = format!("http://{authority}/api/images/{name}");
    // The same maps as `img make`: the table and the used blocks only, unless raw.
    let map = image::map_source(source, map)?;
    let disk = image::DiskSource::open(source)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let opts = image::EncodeOptions::new(level)
        .chunk_size(chunk_size)
        .threads(threads)
        .used(map.used.clone())
        .min_target_size(map.min_target_size);
    let mut stream = image::spawn_encoder(disk, &opts)?;
    let header = stream.header(now_unix());
    let layout = map.layout.unwrap_or_default();
    let (mut w, r) = pipe();
    let (sent, captured) = std::thread::scope(|s| {
        let capture = s.spawn(move || {
            let res = (|| -> Result<(), ClientError> {
                let mut writer = ImageWriter::with_layout(&mut w, header, &layout)?;
                progress(stream.progress());
                while let Some(chunk) = stream.next() {
                    writer.write_chunk(&chunk?)?;
                    progress(stream.progress());
                }
                writer.finish()?;
                w.finish().map_err(|source| ClientError::Capture {
                    what: "handing the image's end to the upload",
                    source,
                })?;
                Ok(())
            })();
            (res, w.gone)
        });
        let sent = upload(&put_url, Some(token), SendBody::from_owned_reader(r));
        let captured = capture.join().unwrap_or_else(|_| {
            let source = io::Error::other("it panicked");
            let what = "the capture thread";
            (Err(ClientError::Capture { what, source }), false)
        });
        (sent, captured)
    });
    match (sent, captured) {
        // The server's answer says most, a refusal above all.
        (Ok(reply), _) => reply.ok(),
        // The capture failed (a disk read, say): the upload was cut for it.
        (Err(_), (Err(e), false)) => Err(e),
        (Err(e), _) => Err(e),
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let u = server_url("http://imaging.example:8470/win11.img").expect("url");
        assert_eq!(
            u.authority().map(|a| a.as_str()),
            Some("imaging.example:8470")
        );
        assert_eq!(u.path(), "/win11.img");
        assert!(server_url("http://srv/x").is_ok());
        assert!(server_url("http://[::1]:8470/x").is_ok());
        for bad in [
            "https://srv/x",
            "http:///x",
            "srv:8470/x",
            "ftp://srv/x",
            "http://sr v/x",
        ] {
            assert!(server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_pipe_ends_only_when_finished() {
        let (mut w, mut r) = pipe();
        let t = std::thread::spawn(move || {
            w.write_all(&vec![7u8; PIECE * 3 + 5]).expect("write");
            w.finish().expect("finish");
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read");
        t.join().expect("writer");
        assert_eq!(got, vec![7u8; PIECE * 3 + 5]);

        // A writer that stops without finishing: the reader fails, never a clean end.
        let (mut w, mut r) = pipe();
        w.write_all(b"half an image").expect("write");
        w.flush().expect("flush");
        drop(w);
        let mut got = Vec::new();
        assert!(r.read_to_end(&mut got).is_err());
        assert_eq!(got, b"half an image");

        // A reader that goes away: the writer learns it.
        let (mut w, r) = pipe();
        drop(r);
        assert!(w.write_all(&vec![0u8; PIECE]).is_err());
        assert!(w.gone);
    }
}
