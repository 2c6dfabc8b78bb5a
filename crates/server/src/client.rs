//! A small HTTP/1.1 client for the server's API: enough for
//! `img make http://HOST:PORT/NAME` (a capture streamed straight into a
//! `PUT /api/images/NAME`, chunked, never touching the local disk) and for
//! scripts and tests. One request per connection (`Connection: close`).
//!
//! ```text
//!  DiskSource ─▶ spawn_encoder ─▶ ImageWriter ─▶ Chunked ─▶ TCP ─▶ server: PUT /api/images/NAME
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use imgcast_image::{self as image, ImageWriter, Level};

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://HOST:PORT/PATH`.
    #[error("'{url}' is not a server URL: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The connection failed.
    #[error("{what} {addr}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The server's address.
        addr: String,
        /// The cause.
        source: io::Error,
    },
    /// The server's answer is not HTTP as expected.
    #[error("bad answer from {addr}: {why}")]
    Protocol {
        /// The server's address.
        addr: String,
        /// What is wrong.
        why: String,
    },
    /// The server refused the request.
    #[error("the server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its `error` field, or the body.
        message: String,
    },
    /// Reading or compressing the source failed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// A parsed `http://HOST:PORT/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUrl {
    /// `HOST:PORT` (port 80 if none was given).
    pub addr: String,
    /// The path, from its leading `/`.
    pub path: String,
}

impl ServerUrl {
    /// Parses a URL; only plain `http` is supported.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let has_port = host.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !p.contains(']')
        });
        let addr = if has_port {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Self {
            addr,
            path: path.to_string(),
        })
    }
}

/// A complete answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
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

    /// A header's value.
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

fn connect(addr: &str) -> Result<TcpStream, ClientError> {
    let s = TcpStream::connect(addr).map_err(|source| ClientError::Io {
        what: "connecting to",
        addr: addr.to_string(),
        source,
    })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

fn head(method: &str, addr: &str, path: &str, token: Option<&str>, extra: &str) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n{extra}\r\n")
}

/// Sends one request with an optional body and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Reply, ClientError> {
    let mut s = connect(addr)?;
    let extra = match body {
        Some(b) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ),
        None if matches!(method, "POST" | "PUT") => "Content-Length: 0\r\n".to_string(),
        None => String::new(),
    };
    let io_err = |what| {
        let addr = addr.to_string();
        move |source| ClientError::Io { what, addr, source }
    };
    s.write_all(head(method, addr, path, token, &extra).as_bytes())
        .map_err(io_err("sending to"))?;
    if let Some(b) = body {
        s.write_all(b).map_err(io_err("sending to"))?;
    }
    read_reply(addr, s)
}

/// Reads status, headers and body: `Content-Length` bytes, the chunks of a
/// chunked body, or else up to the end of the connection. (Some servers keep
/// the connection open despite `Connection: close`.)
fn read_reply(addr: &str, s: TcpStream) -> Result<Reply, ClientError> {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(addr, &mut r)?;
    let io_err = |source| ClientError::Io {
        what: "reading from",
        addr: addr.to_string(),
        source,
    };
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut body = Vec::new();
    if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(&mut r, &mut body).map_err(io_err)?;
    } else if let Some(len) = value("content-length") {
        let len: u64 = len.parse().map_err(|_| ClientError::Protocol {
            addr: addr.to_string(),
            why: format!("Content-Length '{len}'"),
        })?;
        r.take(len).read_to_end(&mut body).map_err(io_err)?;
    } else {
        r.read_to_end(&mut body).map_err(io_err)?;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn read_chunked(r: &mut dyn BufRead, out: &mut Vec<u8>) -> io::Result<()> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("the chunked body ends early"));
        }
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the blank line (or the end).
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let at = out.len();
        out.resize(at + size, 0);
        r.read_exact(&mut out[at..])?;
        line.clear();
        r.read_line(&mut line)?;
    }
}

type Head = (u16, Vec<(String, String)>);

fn read_head(addr: &str, r: &mut dyn BufRead) -> Result<Head, ClientError> {
    let proto = |why: String| ClientError::Protocol {
        addr: addr.to_string(),
        why,
    };
    let mut line = String::new();
    let mut status = None;
    let mut headers = Vec::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).map_err(|source| ClientError::Io {
            what: "reading from",
            addr: addr.to_string(),
            source,
        })?;
        if n == 0 {
            return Err(proto("the connection closed before the answer".into()));
        }
        let l = line.trim_end();
        match status {
            None => {
                let code = l
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok())
                    .ok_or_else(|| proto(format!("status line '{l}'")))?;
                // An interim 100 Continue is followed by the real answer.
                if code != 100 {
                    status = Some(code);
                } else {
                    line.clear();
                    r.read_line(&mut line).map_err(|source| ClientError::Io {
                        what: "reading from",
                        addr: addr.to_string(),
                        source,
                    })?;
                }
            }
            Some(code) => {
                if l.is_empty() {
                    return Ok((code, headers));
                }
                if let Some((n, v)) = l.split_once(':') {
                    headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
        }
    }
}

/// Opens a streaming `GET` (the event stream): the status and headers are
/// read; the returned reader yields the body as it comes.
pub fn get_stream(
    addr: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, BufReader<TcpStream>), ClientError> {
    let mut s = connect(addr)?;
    s.write_all(head("GET", addr, path, token, "Accept: text/event-stream\r\n").as_bytes())
        .map_err(|source| ClientError::Io {
            what: "sending to",
            addr: addr.to_string(),
            source,
        })?;
    let mut r = BufReader::new(s);
    let (status, _) = read_head(addr, &mut r)?;
    Ok((status, r))
}

/// HTTP chunked transfer encoding over a writer, in pieces of up to 256 KiB.
struct Chunked<W: Write> {
    out: W,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl<W: Write> Chunked<W> {
    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            write!(self.out, "{:x}\r\n", self.buf.len())?;
            self.out.write_all(&self.buf)?;
            self.out.write_all(b"\r\n")?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.emit()?;
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.emit()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.out.flush()
    }
}

/// Uploads image bytes from `body` as `PUT path`, chunked (a body that ends
/// early is sent as a complete, shorter upload, which the server refuses).
pub fn put_image(
    addr: &str,
    path: &str,
    token: Option<&str>,
    body: &mut dyn Read,
) -> Result<Reply, ClientError> {
    let s = connect(addr)?;
    let reader_side = s.try_clone().map_err(|source| ClientError::Io {
        what: "cloning the connection to",
        addr: addr.to_string(),
        source,
    })?;
    let mut w = Chunked {
        out: s,
        buf: Vec::with_capacity(CHUNK),
    };
    let sent = w
        .out
        .write_all(
            head(
                "PUT",
                addr,
                path,
                token,
                "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n",
            )
            .as_bytes(),
        )
        .and_then(|()| io::copy(body, &mut w).map(|_| ()))
        .and_then(|()| w.finish().map(|_| ()))
        .map_err(|source| ClientError::Io {
            what: "sending to",
            addr: addr.to_string(),
            source,
        });
    match (sent, read_reply(addr, reader_side)) {
        (_, Ok(reply)) => Ok(reply),
        (Err(e), Err(_)) | (Ok(()), Err(e)) => Err(e),
    }
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
    let u = ServerUrl::parse(url)?;
    let name = u.path.trim_start_matches('/');
    if name.is_empty() || name.contains('/') {
        return Err(ClientError::Url {
            url: url.to_string(),
            why: "give the image name as the path: http://HOST:PORT/NAME".into(),
        });
    }
    let path = format!("/api/images/{name}");
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
    let s = connect(&u.addr)?;
    let reader_side = s.try_clone().map_err(|source| ClientError::Io {
        what: "cloning the connection to",
        addr: u.addr.clone(),
        source,
    })?;
    let mut w = Chunked {
        out: io::BufWriter::with_capacity(CHUNK, s),
        buf: Vec::with_capacity(CHUNK),
    };
    let io_err = |source| ClientError::Io {
        what: "sending to",
        addr: u.addr.clone(),
        source,
    };
    w.out
        .write_all(
            head(
                "PUT",
                &u.addr,
                &path,
                Some(token),
                "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n",
            )
            .as_bytes(),
        )
        .map_err(io_err)?;
    let header = stream.header(now_unix());
    let layout = map.layout.unwrap_or_default();
    let sent = (|| -> Result<(), ClientError> {
        let mut writer = ImageWriter::with_layout(&mut w, header, &layout)?;
        progress(stream.progress());
        while let Some(chunk) = stream.next() {
            writer.write_chunk(&chunk?)?;
            progress(stream.progress());
        }
        writer.finish()?;
        w.finish().map_err(io_err)?;
        Ok(())
    })();
    // The server may have refused early (bad token, name taken): its answer
    // says more than the broken pipe does.
    let _ = reader_side.set_read_timeout(Some(Duration::from_secs(600)));
    match (sent, read_reply(&u.addr, reader_side)) {
        (_, Ok(reply)) => reply.ok(),
        (Err(e), Err(_)) | (Ok(()), Err(e)) => Err(e),
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
    fn urls_parse() {
        let u = ServerUrl::parse("http://imaging.example:8470/win11.img").expect("url");
        assert_eq!(u.addr, "imaging.example:8470");
        assert_eq!(u.path, "/win11.img");
        assert_eq!(
            ServerUrl::parse("http://srv/x").expect("url").addr,
            "srv:80"
        );
        assert!(ServerUrl::parse("https://srv/x").is_err());
        assert!(ServerUrl::parse("http:///x").is_err());
    }

    #[test]
    fn chunked_round_trip() {
        let mut w = Chunked {
            out: Vec::new(),
            buf: Vec::new(),
        };
        w.write_all(b"hello ").expect("write");
        w.flush().expect("flush");
        w.write_all(b"world").expect("write");
        let raw = w.finish().expect("finish");
        let mut out = Vec::new();
        read_chunked(&mut raw.as_slice(), &mut out).expect("dechunk");
        assert_eq!(out, b"hello world");
    }
}
