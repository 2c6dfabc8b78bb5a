//! The imaging server as a real process (`img server`), driven over HTTP.
//!
//! Tests that start multicast sessions run inside a private user+network
//! namespace that the test makes itself (the test binary re-runs itself under
//! `unshare -Urn`, with multicast on `lo`), so no packet leaves the machine.
//! The `img` binary is the one `cargo test --workspace` builds beside this test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use imgcast_server::client::{self, Reply};
use imgcast_testlab::{in_private_netns, same, sample_disk, Lab};
use serde_json::{json, Value};

/// The `img` binary: target/<profile>/img, beside target/<profile>/deps/<this test>.
fn img() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("img");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p img, or cargo test --workspace)",
        p.display()
    );
    p
}

/// Makes image `name` in `dir` from a fresh sample disk; returns the disk's path.
fn make_image(work: &Path, dir: &Path, name: &str, mib: usize, seed: u64) -> PathBuf {
    let disk = work.join(format!("{name}.raw"));
    sample_disk(&disk, mib, seed);
    imgcast_image::make(
        &imgcast_image::MakeOptions::new(&disk, dir.join(name)),
        &|_| {},
    )
    .expect("make image");
    disk
}

/// A running `img server`.
struct Server {
    child: Child,
    addr: String,
    token: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(images: &Path, state: &Path) -> Self {
        let mut cmd = Command::new(img());
        cmd.args(["server", "--listen", "127.0.0.1:0", "--images"])
            .arg(images)
            .arg("--state")
            .arg(state);
        Self::spawn(cmd, &images.join(".imgcast-token"))
    }

    /// Runs `cmd` (an `img server` however wrapped), whose token file is `token`.
    fn spawn(mut cmd: Command, token: &Path) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start img server");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim_end_matches('/').to_string());
                }
                let mut l = l.lock().expect("log");
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("server did not start: {}", log.lock().expect("log")));
        let token = std::fs::read_to_string(token)
            .expect("token file")
            .trim()
            .to_string();
        Self {
            child,
            addr,
            token,
            log,
        }
    }

    fn req(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let bytes = body.map(|b| b.to_string().into_bytes());
        client::request(
            &self.addr,
            method,
            path,
            Some(&self.token),
            bytes.as_deref(),
        )
        .expect("request")
    }

    fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Polls session `id` until `done(view)` or the deadline.
    fn wait_session(&self, id: u64, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.req("GET", &format!("/api/sessions/{id}"), None).json();
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "session {id} did not get there: {v:#}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (at most 20 s) until the scan thread has verified and listed `name`: the API answers
/// before the scan ends.
fn wait_listed(srv: &Server, name: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    while !names(&srv.req("GET", "/api/images", None).json()).contains(&name.to_string()) {
        assert!(Instant::now() < end, "{name} not listed: {}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn token_images_uploads_and_traversal() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    make_image(work.path(), &dir, "base.img", 3, 1);
    std::fs::write(dir.join("junk.img"), b"not an image").expect("junk");
    let state = work.path().join("state.sqlite");
    let srv = Server::start(&dir, &state);
    assert!(srv.log().contains("new API token"), "{}", srv.log());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join(".imgcast-token"))
            .expect("token")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // No token, a wrong token: 401 everywhere, and nothing changes.
    for (method, path) in [
        ("GET", "/api/images"),
        ("GET", "/api/sessions"),
        ("GET", "/metrics"),
        ("GET", "/api/events"),
        ("DELETE", "/api/images/base.img"),
        ("POST", "/api/sessions"),
    ] {
        for token in [None, Some("wrong-token-wrong-token")] {
            let r = client::request(&srv.addr, method, path, token, None).expect("request");
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
        }
    }
    let page = client::request(&srv.addr, "GET", "/", None, None).expect("page");
    assert_eq!(page.status, 401);
    assert!(page.text().contains("name=\"token\""), "login form");
    let bad_login =
        client::request(&srv.addr, "POST", "/login", None, Some(b"token=nope")).expect("login");
    assert_eq!(bad_login.status, 401);
    let login = client::request(
        &srv.addr,
        "POST",
        "/login",
        None,
        Some(format!("token={}", srv.token).as_bytes()),
    )
    .expect("login");
    assert_eq!(login.status, 303);
    assert!(login
        .header("set-cookie")
        .is_some_and(|c| c.contains("HttpOnly")));

    // The scan lists the good image once verified, never the junk.
    wait_listed(&srv, "base.img");
    assert_eq!(
        names(&srv.req("GET", "/api/images", None).json()),
        ["base.img"]
    );
    let one = srv.req("GET", "/api/images/base.img", None);
    assert_eq!(one.status, 200);
    let rec = one.json();
    assert_eq!(rec["size"], json!((3u64 << 20) + 4));
    assert!(rec["stored_bytes"].as_u64().expect("stored") > 0);
    assert_eq!(rec["root_hash"].as_str().expect("hash").len(), 64);
    assert!(rec["created"].as_u64().expect("created") > 0);
    assert_eq!(rec["level"], json!(1));
    assert_eq!(srv.req("GET", "/api/images/nope.img", None).status, 404);
    let verify = srv.req("POST", "/api/images/base.img/verify", None);
    assert_eq!(verify.json()["ok"], json!(true), "{}", verify.text());

    // Names that would leave the directory are refused.
    for path in [
        "/api/images/%2e%2e%2fstate.sqlite",
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/.imgcast-token",
        "/api/images/%2Fetc%2Fpasswd",
    ] {
        assert_eq!(srv.req("GET", path, None).status, 400, "GET {path}");
        assert_eq!(srv.req("DELETE", path, None).status, 400, "DELETE {path}");
        let r = client::put_image(&srv.addr, path, Some(&srv.token), &mut &b"x"[..]).expect("put");
        assert_eq!(r.status, 400, "PUT {path}");
    }
    assert_eq!(
        srv.req("GET", "/api/images/../state.sqlite", None).status,
        404
    );

    // A whole upload is verified and listed; a second one of the name is refused.
    let other = work.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    make_image(work.path(), &other, "up.img", 2, 7);
    let bytes = std::fs::read(other.join("up.img")).expect("read");
    let r = client::put_image(
        &srv.addr,
        "/api/images/up.img",
        Some(&srv.token),
        &mut bytes.as_slice(),
    )
    .expect("put");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(std::fs::read(dir.join("up.img")).expect("stored"), bytes);
    let again = client::put_image(
        &srv.addr,
        "/api/images/up.img",
        Some(&srv.token),
        &mut bytes.as_slice(),
    )
    .expect("put");
    assert_eq!(again.status, 409);
    // Without a token: refused, nothing stored.
    let r = client::put_image(&srv.addr, "/api/images/x.img", None, &mut bytes.as_slice())
        .expect("put");
    assert_eq!(r.status, 401);

    // An upload cut short (a complete request with half an image), and one whose
    // connection drops half-way: neither is listed, no temporary file stays.
    let half = &bytes[..bytes.len() / 2];
    let r = client::put_image(
        &srv.addr,
        "/api/images/half.img",
        Some(&srv.token),
        &mut &half[..],
    )
    .expect("put");
    assert_eq!(r.status, 422, "{}", r.text());
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&srv.addr).expect("connect");
        write!(
            s,
            "PUT /api/images/cut.img HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            srv.token,
            bytes.len()
        )
        .expect("head");
        s.write_all(half).expect("half");
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let listed = names(&srv.req("GET", "/api/images", None).json());
    assert_eq!(listed, ["base.img", "up.img"]);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp") || n.starts_with("half") || n.starts_with("cut"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Delete.
    assert_eq!(srv.req("DELETE", "/api/images/up.img", None).status, 200);
    assert!(!dir.join("up.img").exists());
    assert_eq!(srv.req("DELETE", "/api/images/up.img", None).status, 404);

    // Sessions: bad JSON, unknown fields, unknown image, bad names.
    let raw = client::request(
        &srv.addr,
        "POST",
        "/api/sessions",
        Some(&srv.token),
        Some(b"{not json"),
    )
    .expect("post");
    assert_eq!(raw.status, 400);
    assert!(raw.json()["error"]
        .as_str()
        .expect("error")
        .contains("bad JSON"));
    for (body, status) in [
        (json!({"name": "s1"}), 400),
        (json!({"name": "s1", "image": "base.img", "colour": 1}), 400),
        (json!({"name": "s1", "image": "nope.img"}), 404),
        (json!({"name": "s1", "image": "../x"}), 400),
        (json!({"name": "", "image": "base.img"}), 400),
        (
            json!({"name": "s1", "image": "base.img", "clients": 0}),
            400,
        ),
    ] {
        let r = srv.req("POST", "/api/sessions", Some(&body));
        assert_eq!(r.status, status, "{body}: {}", r.text());
    }
    assert_eq!(srv.req("GET", "/api/sessions", None).json(), json!([]));
    assert_eq!(srv.req("GET", "/api/sessions/99", None).status, 404);
    assert_eq!(srv.req("POST", "/api/sessions/99/start", None).status, 404);
    assert_eq!(srv.req("DELETE", "/api/sessions/99", None).status, 404);
    assert_eq!(srv.req("GET", "/api/nothing", None).status, 404);
    assert_eq!(srv.req("PUT", "/api/sessions", None).status, 405);

    let metrics = srv.req("GET", "/metrics", None).text();
    assert!(metrics.contains("imgcast_images 1"), "{metrics}");
    assert!(metrics.contains("imgcast_unauthorized_total"), "{metrics}");
    assert!(metrics.contains("imgcast_uploads_total 1"), "{metrics}");
    let page = srv.req("GET", "/", None);
    assert_eq!(page.status, 200);
    assert!(!page.text().contains("http://") || page.text().contains("img make http://SERVER"));
    srv.stop();
}

#[test]
fn sessions_progress_duplicates_abort_and_restart() {
    if !in_private_netns("sessions_progress_duplicates_abort_and_restart") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    let disk = make_image(work.path(), &dir, "base.img", 6, 2);
    let state = work.path().join("state.sqlite");
    let srv = Server::start(&dir, &state);
    let end = Instant::now() + Duration::from_secs(20);
    while srv.req("GET", "/api/images/base.img", None).status != 200 {
        assert!(Instant::now() < end, "not listed: {}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ev_status, mut events) =
        client::get_stream(&srv.addr, "/api/events", Some(&srv.token)).expect("events");
    assert_eq!(ev_status, 200);

    // One session served to two clients; progress and results appear in the API.
    let s = srv.req(
        "POST",
        "/api/sessions",
        Some(&json!({"name": "lab1", "image": "base.img", "clients": 2, "timeout": 20})),
    );
    assert_eq!(s.status, 201, "{}", s.text());
    let id = s.json()["id"].as_u64().expect("id");
    assert_eq!(s.json()["state"], json!("gathering"));
    // The image a session is sending can be neither replaced nor deleted.
    assert_eq!(srv.req("DELETE", "/api/images/base.img", None).status, 409);
    let r = client::put_image(
        &srv.addr,
        "/api/images/base.img?replace=true",
        Some(&srv.token),
        &mut &b"x"[..],
    )
    .expect("put");
    assert_eq!(r.status, 409);
    // A second session of a running name is refused clearly.
    let dup = srv.req(
        "POST",
        "/api/sessions",
        Some(&json!({"name": "lab1", "image": "base.img"})),
    );
    assert_eq!(dup.status, 409);
    assert!(dup.text().contains("already running"), "{}", dup.text());

    let mut clients = Vec::new();
    for i in 0..2 {
        let target = work.path().join(format!("t{i}.raw"));
        clients.push((
            Command::new(img())
                .args(["-session", "lab1", "-client"])
                .arg(format!("-disk={}", target.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("client"),
            target,
        ));
    }
    let v = srv.wait_session(id, 90, |v| {
        v["state"] == json!("done") || v["state"] == json!("failed")
    });
    assert_eq!(v["state"], json!("done"), "{v:#}\n{}", srv.log());
    let cl = v["clients"].as_array().expect("clients");
    assert_eq!(cl.len(), 2, "{v:#}");
    for c in cl {
        assert_eq!(c["result"], json!("done"), "{v:#}");
        assert_eq!(c["done"], c["total"]);
        assert!(c["addr"].as_str().expect("addr").starts_with("127.0.0.1:"));
    }
    assert!(v["bytes_sent"].as_u64().expect("sent") > 0);
    for (mut c, target) in clients {
        assert!(c.wait().expect("client").success());
        assert_eq!(
            std::fs::read(&target).expect("target"),
            std::fs::read(&disk).expect("disk")
        );
    }
    // The event stream carried the session.
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("\"state\":\"done\"") {
        line.clear();
        if events.read_line(&mut line).expect("event line") == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.contains("event: session"), "{seen}");

    // Start with nobody: the run ends at once. Abort while gathering: failed.
    let a = srv.req(
        "POST",
        "/api/sessions",
        Some(&json!({"name": "lab2", "image": "base.img"})),
    );
    assert_eq!(a.status, 201, "{}", a.text());
    let aid = a.json()["id"].as_u64().expect("id");
    assert_eq!(
        srv.req("DELETE", &format!("/api/sessions/{aid}"), None)
            .status,
        202
    );
    let v = srv.wait_session(aid, 30, |v| v["state"] == json!("failed"));
    assert_eq!(v["error"], json!("aborted"));
    assert_eq!(
        srv.req("DELETE", &format!("/api/sessions/{aid}"), None)
            .status,
        409
    );
    // The name is free again; this one is left gathering when the server stops.
    let g = srv.req(
        "POST",
        "/api/sessions",
        Some(&json!({"name": "lab2", "image": "base.img", "clients": 3})),
    );
    assert_eq!(g.status, 201, "{}", g.text());
    let gid = g.json()["id"].as_u64().expect("id");
    let metrics = srv.req("GET", "/metrics", None).text();
    assert!(
        metrics.contains("imgcast_sessions{state=\"gathering\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imgcast_clients_done_total 2"),
        "{metrics}"
    );
    srv.stop();

    // A restart keeps the history and the catalogue.
    let srv = Server::start(&dir, &state);
    assert!(!srv.log().contains("new API token"));
    let list = srv.req("GET", "/api/sessions", None).json();
    let ids: Vec<u64> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect();
    assert_eq!(ids, [gid, aid, id]);
    let done = srv.req("GET", &format!("/api/sessions/{id}"), None).json();
    assert_eq!(done["state"], json!("done"));
    assert_eq!(done["clients"].as_array().expect("clients").len(), 2);
    let left = srv.req("GET", &format!("/api/sessions/{gid}"), None).json();
    assert_eq!(left["state"], json!("failed"));
    assert!(left["error"]
        .as_str()
        .expect("error")
        .contains("server stopped"));
    assert_eq!(
        srv.req("GET", "/api/images/base.img", None).status,
        200,
        "{}",
        srv.log()
    );
    srv.stop();
}

/// Image files copied into the directory are verified and listed by the
/// server's own watch (every 10 s) and at once on `POST /api/images/rescan`;
/// a file that goes is forgotten.
#[test]
fn images_that_appear_or_go_are_seen() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    let srv = Server::start(&dir, &work.path().join("state.sqlite"));
    assert_eq!(srv.req("GET", "/api/images", None).json(), json!([]));
    let other = work.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    make_image(work.path(), &other, "a.img", 2, 11);
    make_image(work.path(), &other, "b.img", 2, 12);
    // Copied in under a hidden name, then renamed, as an admin's script would.
    let copy_in = |name: &str| {
        let tmp = dir.join(format!(".{name}.copying"));
        std::fs::copy(other.join(name), &tmp).expect("copy");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    };
    copy_in("a.img");
    let r = srv.req("POST", "/api/images/rescan", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&r.json()["images"]), ["a.img"]);
    // Without asking: the watch finds it within its period.
    let started = Instant::now();
    copy_in("b.img");
    while !names(&srv.req("GET", "/api/images", None).json()).contains(&"b.img".into()) {
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "b.img not listed: {}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_file(dir.join("a.img")).expect("rm");
    let r = srv.req("POST", "/api/images/rescan", None);
    assert_eq!(names(&r.json()["images"]), ["b.img"]);
    assert_eq!(srv.req("GET", "/api/images/a.img", None).status, 404);
    srv.stop();
}

/// An upload may be no larger than the free space of the image directory,
/// whatever it declares: the server, its directory on a 4 MiB tmpfs of its
/// own (a mount namespace the test makes), refuses a chunked upload of a
/// larger image and keeps nothing of it: an image that fits goes in after it.
#[test]
fn uploads_stop_at_the_free_space() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    let token = work.path().join("token");
    let mut cmd = Command::new("unshare");
    cmd.args(["-Urm", "--", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=4m imgcast-test "$0" && exec "$@""#)
        .arg(&dir)
        .arg(img())
        .args(["server", "--listen", "127.0.0.1:0", "--images"])
        .arg(&dir)
        .arg("--state")
        .arg(work.path().join("state.sqlite"))
        .arg("--token-file")
        .arg(&token);
    let srv = Server::spawn(cmd, &token);
    let other = work.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    // Random data does not compress: the big image stores about 6 MiB.
    make_image(work.path(), &other, "big.img", 12, 13);
    make_image(work.path(), &other, "small.img", 2, 14);
    let big = std::fs::read(other.join("big.img")).expect("big");
    assert!(big.len() > 5 << 20, "{} bytes", big.len());
    let started = Instant::now();
    let refused = client::put_image(
        &srv.addr,
        "/api/images/big.img",
        Some(&srv.token),
        &mut big.as_slice(),
    );
    match &refused {
        Ok(r) => {
            assert_eq!(r.status, 413, "{}", r.text());
            assert!(r.text().contains("free space"), "{}", r.text());
        }
        // The server stops reading at the limit and closes; the client may
        // see that before it reads the 413.
        Err(e) => eprintln!("the refused upload, as the client saw it: {e}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(srv.req("GET", "/api/images/big.img", None).status, 404);
    let small = std::fs::read(other.join("small.img")).expect("small");
    let r = client::put_image(
        &srv.addr,
        "/api/images/small.img",
        Some(&srv.token),
        &mut small.as_slice(),
    )
    .expect("put");
    assert_eq!(r.status, 201, "{}\n{}", r.text(), srv.log());
    assert_eq!(
        names(&srv.req("GET", "/api/images", None).json()),
        ["small.img"]
    );
    // Outside the server's namespace the directory was never written.
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
    srv.stop();
}

/// Two sessions of different names, from two images, run at the same time on
/// one server, each with its own client: the API shows both running at once,
/// both end done, and each client's disk equals its image's source.
#[test]
fn two_sessions_at_once() {
    if !in_private_netns("two_sessions_at_once") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    let disks = [
        make_image(work.path(), &dir, "a.img", 4, 11),
        make_image(work.path(), &dir, "b.img", 4, 12),
    ];
    let srv = Server::start(&dir, &work.path().join("state.sqlite"));
    let end = Instant::now() + Duration::from_secs(20);
    for image in ["a.img", "b.img"] {
        while srv.req("GET", &format!("/api/images/{image}"), None).status != 200 {
            assert!(Instant::now() < end, "{image} not listed: {}", srv.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Each session waits for its one client; the throttle keeps each running
    // for a few seconds so that they overlap.
    let mut ids = Vec::new();
    for (name, image) in [("par-a", "a.img"), ("par-b", "b.img")] {
        let s = srv.req(
            "POST",
            "/api/sessions",
            Some(
                &json!({"name": name, "image": image, "clients": 1, "timeout": 20, "throttle": 3}),
            ),
        );
        assert_eq!(s.status, 201, "{}", s.text());
        ids.push(s.json()["id"].as_u64().expect("id"));
    }
    let mut clients = Vec::new();
    for (i, name) in ["par-a", "par-b"].into_iter().enumerate() {
        let target = work.path().join(format!("t{i}.raw"));
        let c = Command::new(img())
            .args(["-session", name, "-client"])
            .arg(format!("-disk={}", target.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("client");
        clients.push((c, target));
    }
    // Poll a, b, a: if all three say running, b ran while a did (a's running
    // stretch is one interval holding both of a's polls, and b's poll between).
    let get = |id: u64| srv.req("GET", &format!("/api/sessions/{id}"), None).json();
    let running = |v: &Value| v["state"] == json!("running");
    let ended = |v: &Value| v["state"] == json!("done") || v["state"] == json!("failed");
    let end = Instant::now() + Duration::from_secs(90);
    let mut overlap = false;
    let (a, b) = loop {
        let (a1, b1, a2) = (get(ids[0]), get(ids[1]), get(ids[0]));
        overlap |= running(&a1) && running(&b1) && running(&a2);
        if ended(&a2) && ended(&b1) {
            break (a2, b1);
        }
        assert!(
            Instant::now() < end,
            "sessions did not end: {a2:#}\n{b1:#}\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(overlap, "the two sessions never ran at once\n{}", srv.log());
    for (v, name, image) in [(&a, "par-a", "a.img"), (&b, "par-b", "b.img")] {
        assert_eq!(v["state"], json!("done"), "{v:#}\n{}", srv.log());
        assert_eq!(v["name"], json!(name));
        assert_eq!(v["image"], json!(image));
        assert_eq!(v["run"], json!(1));
        let cl = v["clients"].as_array().expect("clients");
        assert_eq!(cl.len(), 1, "{v:#}");
        assert_eq!(cl[0]["result"], json!("done"), "{v:#}");
        assert_eq!(cl[0]["done"], cl[0]["total"], "{v:#}");
        assert!(v["bytes_sent"].as_u64().expect("sent") > 0);
    }
    for ((mut c, target), disk) in clients.into_iter().zip(&disks) {
        assert!(c.wait().expect("client").success());
        assert!(
            std::fs::read(&target).expect("target") == std::fs::read(disk).expect("disk"),
            "{} differs from {}",
            target.display(),
            disk.display()
        );
    }
    let list = srv.req("GET", "/api/sessions", None).json();
    let mut listed: Vec<(u64, String)> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().expect("id"),
                s["state"].as_str().expect("state").to_string(),
            )
        })
        .collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [(ids[0], "done".to_string()), (ids[1], "done".to_string())]
    );
    srv.stop();
}

/// The API's views of a session that a lab script saved as poll-1.json, poll-2.json, ..
fn saved_polls(lab: &Lab) -> Vec<Value> {
    let mut polls = Vec::new();
    for n in 1.. {
        let Ok(text) = std::fs::read_to_string(lab.path(&format!("poll-{n}.json"))) else {
            break;
        };
        polls.push(serde_json::from_str::<Value>(&text).expect("poll json"));
    }
    polls
}

/// End to end on a LAN of namespaces: the server in h0, a capture uploaded from
/// h1 with `img make http://..`, a session started over the API, three clients
/// in h1..h3 restore it, and the API shows their progress and results.
#[test]
fn lab_server_session_three_clients() {
    let lab = Lab::new(img());
    lab.sample("disk.raw", 12, 5);
    let script = r#"
lab_up 4
mkdir -p "$DIR/images"
lab_spawn h0 "$DIR/server.log" "$IMG" server --images "$DIR/images" --listen 10.77.0.10:8470 >/dev/null
srv=$LAB_LAST_PID
for i in $(seq 1 100); do grep -q listening "$DIR/server.log" 2>/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$DIR/images/.imgcast-token")
lab_exec h1 "$IMG" make http://10.77.0.10:8470/golden.img -disk="$DIR/disk.raw" --token=wrong-token-0123456789 2>"$DIR/make-bad.log"
echo "make with a wrong token: exit $?"
lab_exec h1 "$IMG" make http://10.77.0.10:8470/golden.img -disk="$DIR/disk.raw" --token-file="$DIR/images/.imgcast-token" --json >"$DIR/make.json" 2>"$DIR/make.log"
echo "make exit $?"
api() { lab_exec h0 curl -sS -H "Authorization: Bearer $TOKEN" "$@"; }
api -X POST -H 'Content-Type: application/json' \
  -d '{"name":"e2e","image":"golden.img","clients":3,"timeout":30,"throttle":0.5}' \
  http://10.77.0.10:8470/api/sessions >"$DIR/created.json"
id=$(grep -o '"id":[0-9]*' "$DIR/created.json" | head -1 | cut -d: -f2)
pids=""
for i in 1 2 3; do
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session e2e -client -disk="$DIR/c$i.raw" >/dev/null
  pids="$pids $LAB_LAST_PID"
done
for n in $(seq 1 600); do
  api "http://10.77.0.10:8470/api/sessions/$id" >"$DIR/poll-$n.json"
  grep -q '"state":"\(done\|failed\)"' "$DIR/poll-$n.json" && break
  sleep 0.1
done
lab_wait 30 $pids >/dev/null 2>&1
api http://10.77.0.10:8470/metrics >"$DIR/metrics.txt"
lab_kill $srv
"#;
    let out = lab.run(script);
    let show = lab.show(&out, &["server.log", "make.log", "c1.log"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("make with a wrong token: exit 1"), "{show}");
    assert!(lab.log("make-bad.log").contains("401"), "{show}");
    assert!(stdout.contains("make exit 0"), "{show}");
    let made: Value = serde_json::from_str(&lab.log("make.json")).expect("make json");
    assert_eq!(made["name"], json!("golden.img"), "{show}");

    let polls = saved_polls(&lab);
    let last = polls.last().expect("polls");
    assert_eq!(last["state"], json!("done"), "{last:#}\n{show}");
    let clients = last["clients"].as_array().expect("clients");
    let mut addrs: Vec<&str> = clients
        .iter()
        .map(|c| {
            c["addr"]
                .as_str()
                .expect("addr")
                .split(':')
                .next()
                .expect("ip")
        })
        .collect();
    addrs.sort_unstable();
    assert_eq!(addrs, ["10.77.0.11", "10.77.0.12", "10.77.0.13"]);
    for c in clients {
        assert_eq!(c["result"], json!("done"), "{last:#}");
    }
    // Progress was visible while it ran: a client part-way, with a rate.
    let midway = polls.iter().any(|p| {
        p["state"] == json!("running")
            && p["clients"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| {
                    let (done, total) = (c["done"].as_u64(), c["total"].as_u64());
                    matches!((done, total), (Some(d), Some(t)) if d > 0 && d < t)
                        && c["rate"].as_f64().is_some_and(|r| r > 0.0)
                })
            })
    });
    assert!(
        midway,
        "no poll showed progress: {} polls\n{show}",
        polls.len()
    );
    for i in 1..=3 {
        assert!(
            same(&lab.path("disk.raw"), &lab.path(&format!("c{i}.raw"))),
            "client {i} differs\n{show}"
        );
    }
    let metrics = lab.log("metrics.txt");
    assert!(
        metrics.contains("imgcast_clients_done_total 3"),
        "{metrics}"
    );
}

/// A client that registers too late is queued, and the server's own follow-up
/// run serves it: in the lab, a session for one client (throttled so it runs a
/// few seconds) starts with h1; h2 joins while it runs and is told "queued";
/// when the run ends the server starts run 2 by itself, which restores h2.
#[test]
fn lab_late_client_served_by_follow_up_run() {
    let lab = Lab::new(img());
    let images = lab.path("images");
    std::fs::create_dir(&images).expect("mkdir");
    let disk = make_image(lab.dir(), &images, "base.img", 6, 9);
    let script = r#"
lab_up 3
lab_spawn h0 "$DIR/server.log" "$IMG" server --images "$DIR/images" --listen 10.77.0.10:8470 >/dev/null
srv=$LAB_LAST_PID
for i in $(seq 1 100); do grep -q listening "$DIR/server.log" 2>/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$DIR/images/.imgcast-token")
api() { lab_exec h0 curl -sS -H "Authorization: Bearer $TOKEN" "$@"; }
for i in $(seq 1 200); do
  [ "$(api -o /dev/null -w '%{http_code}' http://10.77.0.10:8470/api/images/base.img)" = 200 ] && break
  sleep 0.1
done
api -X POST -H 'Content-Type: application/json' \
  -d '{"name":"late","image":"base.img","clients":1,"timeout":20,"throttle":2}' \
  http://10.77.0.10:8470/api/sessions >"$DIR/created.json"
id=$(grep -o '"id":[0-9]*' "$DIR/created.json" | head -1 | cut -d: -f2)
lab_spawn h1 "$DIR/c1.log" "$IMG" -session late -client -disk="$DIR/c1.raw" >/dev/null
c1=$LAB_LAST_PID
n=0
poll() {
  n=$((n + 1))
  api "http://10.77.0.10:8470/api/sessions/$id" >"$DIR/poll-$n.json"
}
# Run 1 starts with h1 alone; then h2 comes too late.
for i in $(seq 1 300); do
  poll
  grep -q '"state":"\(running\|done\|failed\)"' "$DIR/poll-$n.json" && break
  sleep 0.1
done
echo "h2 joins at poll $n"
lab_spawn h2 "$DIR/c2.log" "$IMG" -session late -client -disk="$DIR/c2.raw" >/dev/null
c2=$LAB_LAST_PID
for i in $(seq 1 600); do
  poll
  grep -q '"state":"\(done\|failed\)"' "$DIR/poll-$n.json" && break
  sleep 0.1
done
wait $c1; echo "c1 exit $?"
lab_wait 30 $c2 >/dev/null 2>&1; echo "c2 exit $?"
api http://10.77.0.10:8470/api/sessions >"$DIR/list.json"
lab_kill $srv
"#;
    let out = lab.run(script);
    let show = lab.show(&out, &["server.log", "c1.log", "c2.log"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("c1 exit 0"), "{show}");
    assert!(stdout.contains("c2 exit 0"), "{show}");
    assert!(
        lab.log("c2.log").contains("queued for the next session"),
        "{show}"
    );

    let polls = saved_polls(&lab);
    // While run 1 ran, the API listed h2 as queued; later, run 2 was on.
    let queued_in_run1 = polls.iter().position(|p| {
        p["run"] == json!(1)
            && p["state"] == json!("running")
            && p["queued"].as_array().is_some_and(|q| {
                q.iter()
                    .any(|a| a.as_str().is_some_and(|a| a.starts_with("10.77.0.12:")))
            })
    });
    let Some(at) = queued_in_run1 else {
        panic!("no poll showed h2 queued during run 1\n{show}");
    };
    assert!(
        polls[at..].iter().any(|p| p["run"] == json!(2)
            && (p["state"] == json!("gathering") || p["state"] == json!("running"))),
        "no poll showed the follow-up run live\n{show}"
    );

    // The history shows one session, done after its follow-up run: h1 served
    // by run 1, h2 by run 2, nobody left queued.
    let list: Value = serde_json::from_str(&lab.log("list.json")).expect("list json");
    let list = list.as_array().expect("list");
    assert_eq!(list.len(), 1, "{list:#?}\n{show}");
    let s = &list[0];
    assert_eq!(s["state"], json!("done"), "{s:#}\n{show}");
    assert_eq!(s["run"], json!(2), "{s:#}");
    assert_eq!(s["queued"], json!([]), "{s:#}");
    assert!(
        s["notes"].as_array().expect("notes").iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains("follow-up run 2 for 1 queued client"))),
        "{s:#}"
    );
    let mut served: Vec<(String, u64, String)> = s["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| {
            assert_eq!(c["done"], c["total"], "{s:#}");
            (
                c["addr"]
                    .as_str()
                    .and_then(|a| a.split(':').next())
                    .expect("addr")
                    .to_string(),
                c["run"].as_u64().expect("run"),
                c["result"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect();
    served.sort();
    assert_eq!(
        served,
        [
            ("10.77.0.11".to_string(), 1, "done".to_string()),
            ("10.77.0.12".to_string(), 2, "done".to_string()),
        ],
        "{s:#}"
    );
    for i in 1..=2 {
        assert!(
            same(&disk, &lab.path(&format!("c{i}.raw"))),
            "client {i} differs\n{show}"
        );
    }
}

/// Chromium under chromedriver, driven with the `fantoccini` WebDriver
/// client on a small tokio runtime (the tests themselves are synchronous).
struct Browser {
    driver: Child,
    client: Option<fantoccini::Client>,
    rt: tokio::runtime::Runtime,
}

impl Browser {
    fn start(profile: &Path) -> Self {
        let port = 9515;
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (Debian's chromium-driver; scripts/setup.sh installs it)");
        let addr = format!("127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(20);
        while client::request(&addr, "GET", "/status", None, None).is_err() {
            assert!(Instant::now() < end, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--no-first-run",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.display())]
            }
        });
        let caps = caps.as_object().expect("capabilities").clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = rt
            .block_on(
                fantoccini::ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://{addr}")),
            )
            .expect("a WebDriver session");
        Self {
            driver,
            client: Some(client),
            rt,
        }
    }

    fn c(&self) -> &fantoccini::Client {
        self.client.as_ref().expect("browser open")
    }

    fn goto(&self, url: &str) {
        self.rt.block_on(self.c().goto(url)).expect("goto");
    }

    fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.rt
            .block_on(self.c().find(fantoccini::Locator::Css(css)))
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.rt
            .block_on(e.send_keys(text))
            .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
    }

    /// Clicks `css`; a live table the page redrew between the find and the click leaves a stale
    /// element, so the button is found again (at most 20 times).
    fn click(&self, css: &str) {
        for attempt in 1..=20 {
            let e = self.find(css);
            match self.rt.block_on(e.click()) {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() && attempt < 20 => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    fn js(&self, script: &str) -> Value {
        self.rt
            .block_on(self.c().execute(script, Vec::new()))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Evaluates `script` until it returns something other than null/false.
    fn wait_js(&self, script: &str, secs: u64) -> Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.js(script);
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if Instant::now() >= end {
                let page = self.js("return document.body ? document.body.innerText : ''");
                panic!("timed out waiting for: {script}\nthe page says: {page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        let png = self.rt.block_on(self.c().screenshot()).expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The dashboard in real headless Chromium: log in with the token, start a
/// session from the form, watch the client's row and progress bar move, abort.
/// Leaves a screenshot in the target directory (`dashboard.png`).
#[test]
fn dashboard_in_headless_chromium() {
    if !in_private_netns("dashboard_in_headless_chromium") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    make_image(work.path(), &dir, "base.img", 12, 3);
    let srv = Server::start(&dir, &work.path().join("state.sqlite"));
    let end = Instant::now() + Duration::from_secs(20);
    while srv.req("GET", "/api/images/base.img", None).status != 200 {
        assert!(Instant::now() < end, "not listed: {}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = Browser::start(&work.path().join("profile"));
    let base = format!("http://{}/", srv.addr);
    b.goto(&base);
    assert_eq!(
        b.js("return document.title"),
        json!("imgcast server: log in")
    );
    b.type_into("#token", "not-the-token");
    b.click("#login");
    b.wait_js("return document.body.innerText.includes('wrong token')", 10);
    b.type_into("#token", &srv.token);
    b.click("#login");
    b.wait_js(
        "return document.querySelector('#f-image option[value=\"base.img\"]') !== null",
        10,
    );
    b.wait_js(
        "return document.getElementById('conn').textContent === 'live'",
        10,
    );

    // Upload an image from the page: the progress bar fills, the image is listed.
    let other = work.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    make_image(work.path(), &other, "up.img", 3, 8);
    let size = std::fs::metadata(other.join("up.img"))
        .expect("up.img")
        .len();
    b.type_into("#u-file", &other.join("up.img").display().to_string());
    b.click("#u-submit");
    b.wait_js(
        "return document.getElementById('upload-msg').dataset.status === '201'",
        30,
    );
    let bar = b.js("const p = document.getElementById('upload-progress'); return [p.value, p.max]");
    assert_eq!(bar, json!([size, size]), "the progress bar did not fill");
    b.wait_js(
        "return document.querySelector('#images-body tr[data-image=\"up.img\"]') !== null",
        10,
    );
    assert_eq!(
        std::fs::read(dir.join("up.img")).expect("uploaded"),
        std::fs::read(other.join("up.img")).expect("source")
    );
    // Describe an image from the page (the field saves on Enter), and delete
    // one (after the page's confirm dialog).
    b.type_into(
        "#images-body tr[data-image=\"base.img\"] .describe",
        "golden <Debian> 13\u{E007}",
    );
    let end = Instant::now() + Duration::from_secs(10);
    while srv.req("GET", "/api/images/base.img", None).json()["description"]
        != json!("golden <Debian> 13")
    {
        assert!(Instant::now() < end, "the description was not saved");
        std::thread::sleep(Duration::from_millis(100));
    }
    b.click("#images-body tr[data-image=\"up.img\"] button.delete");
    b.rt.block_on(b.c().accept_alert())
        .expect("the delete confirmation");
    b.wait_js(
        "return document.querySelector('#images-body tr[data-image=\"up.img\"]') === null",
        10,
    );
    assert!(!dir.join("up.img").exists(), "up.img is still there");
    assert_eq!(srv.req("GET", "/api/images/up.img", None).status, 404);
    assert_eq!(
        b.js("return document.querySelector('#images-body tr[data-image=\"base.img\"] .describe').value"),
        json!("golden <Debian> 13")
    );

    // A client waits; the form starts a slow session for it.
    let target = work.path().join("t.raw");
    let mut client = Command::new(img())
        .args(["-session", "web1", "-client"])
        .arg(format!("-disk={}", target.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("client");
    b.type_into("#f-name", "web1");
    b.type_into("#f-clients", "1");
    b.type_into("#f-throttle", "20");
    b.click("#f-submit");
    b.wait_js(
        "return document.querySelector('#live .session[data-state]') !== null",
        10,
    );
    // The client's row appears and its progress moves.
    let first = b.wait_js(
        "const p = document.querySelector('#live .client-row .pct'); \
         const n = p ? parseInt(p.textContent) : 0; return n > 0 && n < 100 ? n : null",
        60,
    );
    let first = first.as_u64().expect("percent");
    b.wait_js(
        &format!(
            "const p = document.querySelector('#live .client-row .pct'); \
             return p && parseInt(p.textContent) > {first}"
        ),
        30,
    );
    // The bar is drawn part-way too.
    let drawn = b.js(
        "const bar = document.querySelector('#live .client-row .bar'); \
         return bar.firstChild.getBoundingClientRect().width",
    );
    assert!(drawn.as_f64().is_some_and(|w| w > 0.0), "bar drawn {drawn}");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    b.screenshot(&shots.join("dashboard.png"));
    // Abort from the page: the session ends failed, "aborted".
    b.click("#live button.abort");
    b.wait_js(
        "const s = document.querySelector('#past .session'); \
         return s && s.dataset.state === 'failed' && s.innerText.includes('aborted')",
        30,
    );
    b.screenshot(&shots.join("dashboard-aborted.png"));
    // The hosts page: the client is a host now, with its history.
    b.wait_js(
        "return document.querySelector('#hosts-body .host-row') !== null",
        10,
    );
    b.click("#hosts-body .host-link");
    b.wait_js(
        "const r = document.querySelector('#host-history .history-row'); \
         return r && r.innerText.includes('web1') && r.innerText.includes('base.img')",
        10,
    );
    b.screenshot(&shots.join("dashboard-host.png"));
    let list = srv.req("GET", "/api/sessions", None).json();
    assert_eq!(list[0]["state"], json!("failed"));
    assert_eq!(list[0]["error"], json!("aborted"));
    let _ = client.kill();
    let _ = client.wait();
    eprintln!("screenshots in {}", shots.display());
}

/// A TCP proxy between the browser and the server that the test can cut, as
/// a dead link or a restarting reverse proxy would look to the browser:
/// [`CutProxy::hold`] closes every connection through it and turns new ones
/// away (accepted, then closed at once); [`CutProxy::release`] lets them
/// through again. Loopback only; it stops with the test, or after 10 minutes.
struct CutProxy {
    addr: String,
    state: Arc<ProxyState>,
    accept: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ProxyState {
    stop: std::sync::atomic::AtomicBool,
    /// Connections turned away while held down.
    refused: std::sync::atomic::AtomicUsize,
    /// Whether it is held down, and both sides of every open connection
    /// (one lock: a connection accepted as the hold begins is cut too).
    links: Mutex<(bool, Vec<std::net::TcpStream>)>,
    /// Where it forwards to (a restarted server listens elsewhere).
    upstream: Mutex<String>,
}

impl CutProxy {
    const MAX_CONNECTIONS: usize = 2000;
    const LIFETIME: Duration = Duration::from_secs(600);

    fn start(upstream: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let state = Arc::new(ProxyState::default());
        *state.upstream.lock().expect("upstream") = upstream.to_string();
        let st = Arc::clone(&state);
        let accept = std::thread::spawn(move || {
            let end = Instant::now() + Self::LIFETIME;
            let mut served = 0;
            while !st.stop.load(Ordering::Relaxed)
                && Instant::now() < end
                && served < Self::MAX_CONNECTIONS
            {
                let Ok((browser, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                served += 1;
                let _ = browser.set_nonblocking(false);
                let mut links = st.links.lock().expect("links");
                if links.0 {
                    st.refused.fetch_add(1, Ordering::Relaxed);
                    drop(browser);
                    continue;
                }
                let up = st.upstream.lock().expect("upstream").clone();
                let Ok(server) = std::net::TcpStream::connect(&up) else {
                    continue;
                };
                let (Ok(b2), Ok(s2)) = (browser.try_clone(), server.try_clone()) else {
                    continue;
                };
                for (mut from, mut to) in [(browser, s2), (server, b2)] {
                    if let (Ok(a), Ok(b)) = (from.try_clone(), to.try_clone()) {
                        links.1.push(a);
                        links.1.push(b);
                    }
                    // Ends when either side closes or the hold shuts both.
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self {
            addr,
            state,
            accept: Some(accept),
        }
    }

    fn hold(&self) {
        let mut links = self.state.links.lock().expect("links");
        links.0 = true;
        for s in links.1.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn release(&self) {
        self.state.links.lock().expect("links").0 = false;
    }

    fn forward_to(&self, upstream: &str) {
        *self.state.upstream.lock().expect("upstream") = upstream.to_string();
    }

    fn refused(&self) -> usize {
        self.state
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.hold();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Logs the browser in to the dashboard at `base` with `token`.
fn log_in(b: &Browser, base: &str, token: &str) {
    b.goto(base);
    assert_eq!(
        b.js("return document.title"),
        json!("imgcast server: log in")
    );
    b.type_into("#token", token);
    b.click("#login");
    b.wait_js(
        "return document.querySelector('#f-image option[value=\"base.img\"]') !== null",
        10,
    );
    b.wait_js(
        "return document.getElementById('conn').textContent === 'live'",
        10,
    );
}

/// Waits up to `secs` for `child` to exit; kills it if it does not.
fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            panic!("the process did not exit within {secs} s (killed: {st})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Start and watch a session from the page until it succeeds, with the
/// page's link to the server cut while the session runs: the session ends
/// while the browser cannot hear it; once the link is back, the page shows
/// it finished (moved from live to past, the client done) without a reload,
/// and the client's copy equals the image's source disk.
#[test]
fn dashboard_reconnect_shows_the_finished_session() {
    if !in_private_netns("dashboard_reconnect_shows_the_finished_session") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    let disk = make_image(work.path(), &dir, "base.img", 12, 5);
    let srv = Server::start(&dir, &work.path().join("state.sqlite"));
    let end = Instant::now() + Duration::from_secs(20);
    while srv.req("GET", "/api/images/base.img", None).status != 200 {
        assert!(Instant::now() < end, "not listed: {}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let proxy = CutProxy::start(&srv.addr);
    let b = Browser::start(&work.path().join("profile"));
    log_in(&b, &format!("http://{}/", proxy.addr), &srv.token);
    // A page that reloads loses this; the finished state must come without.
    b.js("window.imgcastTestMark = 'same page'; return null");

    // A client waits; the form starts a throttled session for it.
    let target = work.path().join("t.raw");
    let client_log = work.path().join("client.log");
    let mut client = Command::new(img())
        .args(["-session", "web2", "-client"])
        .arg(format!("-disk={}", target.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&client_log).expect("client log"))
        .spawn()
        .expect("client");
    let started = Instant::now();
    b.type_into("#f-name", "web2");
    b.type_into("#f-clients", "1");
    // Throttled to run about 10 s: long enough to cut the link mid-run under load.
    b.type_into("#f-throttle", "8");
    b.click("#f-submit");
    let id = b
        .wait_js(
            "const s = document.querySelector('#live .session[data-session-id]'); \
             return s ? Number(s.dataset.sessionId) : null",
            10,
        )
        .as_u64()
        .expect("session id");
    // Watch it run: the client's row moves.
    b.wait_js(
        "const p = document.querySelector('#live .client-row .pct'); \
         const n = p ? parseInt(p.textContent) : 0; return n > 0 && n < 100 ? n : null",
        60,
    );
    let cut_at = started.elapsed();

    // Cut the link and hold it down: the page notices and tries to reconnect.
    proxy.hold();
    b.wait_js(
        "return document.getElementById('conn').textContent === 'reconnecting…'",
        10,
    );
    let v = srv.wait_session(id, 120, |v| {
        v["state"] == json!("done") || v["state"] == json!("failed")
    });
    assert_eq!(v["state"], json!("done"), "{v:#}\n{}", srv.log());
    let finished_at = started.elapsed();
    // At least one reconnection was turned away while held down.
    let end = Instant::now() + Duration::from_secs(20);
    while proxy.refused() == 0 {
        assert!(Instant::now() < end, "the page never tried to reconnect");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Cut off, the page still shows the session live: what follows is the reconnect's doing.
    assert_eq!(
        b.js(&format!(
            "const s = document.querySelector('#live .session[data-session-id=\"{id}\"]'); \
             return s ? s.dataset.state : null"
        )),
        json!("running"),
        "the page learnt of the end while cut off?"
    );

    // The link comes back: the page shows the session finished, with its result.
    proxy.release();
    b.wait_js(
        &format!(
            "const s = document.querySelector('#past .session[data-session-id=\"{id}\"]'); \
             const r = s && s.querySelector('.client-row'); \
             return s && s.dataset.state === 'done' && r && r.innerText.includes('done') && \
               !document.querySelector('#live .session[data-session-id=\"{id}\"]') && \
               document.getElementById('conn').textContent === 'live'"
        ),
        30,
    );
    let back_at = started.elapsed();
    assert_eq!(
        b.js("return window.imgcastTestMark || null"),
        json!("same page"),
        "the page was reloaded"
    );
    assert_eq!(
        b.js("return document.querySelector('#past .session .client-row .pct').textContent"),
        json!("100%")
    );
    // The bar is full as drawn, not only in its text (the CSP drops style="").
    let filled = b.js(
        "const bar = document.querySelector('#past .session .client-row .bar'); \
         return bar.firstChild.getBoundingClientRect().width / bar.getBoundingClientRect().width",
    );
    assert!(
        filled.as_f64().is_some_and(|f| f > 0.99),
        "bar filled {filled}"
    );
    b.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-reconnected.png"));

    // The client finished, and its copy is the disk the image was made from.
    let st = wait_exit(&mut client, 60);
    let err = std::fs::read_to_string(&client_log).unwrap_or_default();
    assert!(st.success(), "client: {st}\n{err}");
    assert!(same(&disk, &target), "the client's copy differs");

    // The server restarts while the page is cut off, with a session
    // gathering. A restart forgets dashboard logins: the page, whose stream
    // is now refused (401), goes to the login form by itself (it used to sit
    // at "reconnecting…" for good); logged in again, it shows the gathering
    // session as the restart left it, failed.
    b.type_into("#f-name", "3"); // "web23": the form kept "web2"
    b.click("#f-submit");
    let gid = b
        .wait_js(
            "const s = document.querySelector('#live .session[data-state=\"gathering\"]'); \
             return s ? Number(s.dataset.sessionId) : null",
            10,
        )
        .as_u64()
        .expect("gathering session id");
    proxy.hold();
    b.wait_js(
        "return document.getElementById('conn').textContent === 'reconnecting…'",
        10,
    );
    let state = work.path().join("state.sqlite");
    srv.stop();
    let srv = Server::start(&dir, &state);
    proxy.forward_to(&srv.addr);
    proxy.release();
    b.wait_js("return document.title === 'imgcast server: log in'", 30);
    log_in(&b, &format!("http://{}/", proxy.addr), &srv.token);
    b.wait_js(
        &format!(
            "const s = document.querySelector('#past .session[data-session-id=\"{gid}\"]'); \
             return s && s.dataset.state === 'failed' && s.innerText.includes('server stopped') && \
               !document.querySelector('#live .session[data-session-id=\"{gid}\"]')"
        ),
        10,
    );
    // The finished session is still shown, done.
    assert_eq!(
        b.js(&format!(
            "const s = document.querySelector('#past .session[data-session-id=\"{id}\"]'); \
             return s ? s.dataset.state : null"
        )),
        json!("done")
    );
    eprintln!(
        "dashboard reconnect: cut at {:.1} s, session done at {:.1} s, page showed it at {:.1} s; {} reconnection(s) turned away",
        cut_at.as_secs_f64(),
        finished_at.as_secs_f64(),
        back_at.as_secs_f64(),
        proxy.refused()
    );
}

/// Sends `head` (and nothing more) on a new connection and reads the answer's
/// status line and headers, within `secs`; the body up to 64 KiB.
fn raw(addr: &str, head: &str, secs: u64) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(secs)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end && got.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some((h, body)) = text.split_once("\r\n\r\n") {
            let len = h.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if len.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no answer to {head:?}: {text:?}"));
    (status, text)
}

/// The server as an attacker meets it: lying Content-Lengths (with and without
/// the token) are answered at once, 500 idle connections do not lock out an
/// authenticated request, an over-long header is refused, and the server goes
/// on serving throughout.
#[test]
fn limits_hold_against_hostile_requests() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    let srv = Server::start(&dir, &work.path().join("state.sqlite"));
    // A client that starts a request head and never finishes it: the header
    // timeout (10 s) closes it; the checks below run meanwhile.
    let slow_started = Instant::now();
    let mut slow = std::net::TcpStream::connect(&srv.addr).expect("connect");
    std::io::Write::write_all(
        &mut slow,
        b"GET /api/images HTTP/1.1\r\nHost: h\r\nX-Slow: ",
    )
    .expect("half a head");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let bomb = 1_000_000_000_000u64;
    let t = &srv.token;
    for (what, head, want) in [
        (
            "unauthenticated upload",
            format!("PUT /api/images/x.img HTTP/1.1\r\nHost: h\r\nContent-Length: {bomb}\r\n\r\n"),
            401,
        ),
        (
            "unauthenticated session",
            format!("POST /api/sessions HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: {bomb}\r\n\r\n"),
            401,
        ),
        (
            "unauthenticated login",
            format!("POST /login HTTP/1.1\r\nHost: h\r\nContent-Length: {bomb}\r\n\r\n"),
            413,
        ),
        (
            "authenticated upload",
            format!("PUT /api/images/x.img HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {t}\r\nContent-Length: {bomb}\r\n\r\n"),
            413,
        ),
        (
            "authenticated session",
            format!("POST /api/sessions HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: {bomb}\r\n\r\n"),
            413,
        ),
    ] {
        let started = Instant::now();
        let (status, text) = raw(&srv.addr, &head, 5);
        assert_eq!(status, want, "{what}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            srv.req("GET", "/api/images", None).status,
            200,
            "after {what}: {}",
            srv.log()
        );
    }
    assert!(!dir.join("x.img").exists());

    // 500 idle connections: an authenticated request still gets through, at once.
    let idle: Vec<std::net::TcpStream> = (0..500)
        .map(|_| std::net::TcpStream::connect(&srv.addr).expect("idle connect"))
        .collect();
    let started = Instant::now();
    let r = srv.req("GET", "/api/images", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);

    // A header longer than the limit: 431, and the server goes on.
    let long = "a".repeat(64 * 1024);
    let (status, text) = raw(
        &srv.addr,
        &format!("GET /api/images HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {t}\r\nX-Long: {long}\r\n\r\n"),
        5,
    );
    assert_eq!(status, 431, "{text}");
    assert_eq!(srv.req("GET", "/api/images", None).status, 200);
    // The half-sent head: closed by the server at its header timeout.
    let mut buf = [0u8; 1024];
    let closed = loop {
        match std::io::Read::read(&mut slow, &mut buf) {
            Ok(0) | Err(_) => break slow_started.elapsed(),
            // An answer (408) before the close is fine too.
            Ok(_) => {}
        }
        assert!(
            slow_started.elapsed() < Duration::from_secs(20),
            "never closed"
        );
    };
    assert!(
        closed >= Duration::from_secs(9) && closed < Duration::from_secs(15),
        "the half-sent head was closed after {closed:?}"
    );
    srv.stop();
}

/// The dashboard's cookie cannot be used by another site: a text/plain form
/// post with the cookie and a foreign Origin is refused, and so is one from
/// our origin that is not JSON; the same origin with JSON passes; the cookie
/// is not the token; logging out ends it. Pages carry a CSP.
#[test]
fn cookie_writes_must_be_same_origin_json() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    make_image(work.path(), &dir, "base.img", 2, 4);
    let srv = Server::start(&dir, &work.path().join("state.sqlite"));
    let end = Instant::now() + Duration::from_secs(20);
    while srv.req("GET", "/api/images/base.img", None).status != 200 {
        assert!(Instant::now() < end, "not listed: {}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let login = client::request(
        &srv.addr,
        "POST",
        "/login",
        None,
        Some(format!("token={}", srv.token).as_bytes()),
    )
    .expect("login");
    assert_eq!(login.status, 303, "{}", login.text());
    let set = login.header("set-cookie").expect("cookie").to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    // Behind a TLS proxy (which says so in X-Forwarded-Proto) the cookie is Secure.
    let (status, text) = raw(
        &srv.addr,
        &format!(
            "POST /login HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\ntoken={}",
            srv.token.len() + 6,
            srv.token
        ),
        5,
    );
    assert_eq!(status, 303, "{text}");
    let tls_cookie = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(tls_cookie.ends_with("; Secure"), "{text}");
    let cookie = set.split(';').next().expect("cookie").to_string();
    assert!(
        !cookie.contains(&srv.token),
        "the cookie holds the token: {cookie}"
    );
    let own = format!("http://{}", srv.addr);
    let host = &srv.addr;
    let body = r#"{"name":"csrf","image":"base.img","clients":5}"#;
    let post = |origin: &str, ctype: &str, extra: &str| {
        raw(
            &srv.addr,
            &format!(
                "POST /api/sessions HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: {origin}\r\n\
                 Content-Type: {ctype}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
            5,
        )
    };
    // What a page on another port of this host would send.
    let (status, text) = post(
        "http://127.0.0.1:1",
        "text/plain",
        "Sec-Fetch-Site: same-site\r\n",
    );
    assert_eq!(status, 403, "{text}");
    let (status, text) = post("http://127.0.0.1:1", "application/json", "");
    assert_eq!(status, 403, "{text}");
    let (status, text) = post(&own, "text/plain", "");
    assert_eq!(status, 403, "{text}");
    let (status, text) = post(&own, "application/x-www-form-urlencoded", "");
    assert_eq!(status, 403, "{text}");
    assert_eq!(srv.req("GET", "/api/sessions", None).json(), json!([]));
    // The cookie reads; a same-origin JSON write passes.
    let (status, text) = raw(
        &srv.addr,
        &format!("GET /api/images HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
        5,
    );
    assert_eq!(status, 200, "{text}");
    let desc = r#"{"description":"golden Debian 13, with \"quotes\""}"#;
    let (status, text) = raw(
        &srv.addr,
        &format!(
            "PUT /api/images/base.img/description HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: {own}\r\n\
             Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{desc}",
            desc.len()
        ),
        5,
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        srv.req("GET", "/api/images/base.img", None).json()["description"],
        json!("golden Debian 13, with \"quotes\"")
    );
    let metrics = srv.req("GET", "/metrics", None).text();
    assert!(
        metrics.contains("imgcast_cross_site_refused_total 4"),
        "{metrics}"
    );
    // The page: a CSP that forbids inline script and framing.
    let (status, text) = raw(
        &srv.addr,
        &format!("GET / HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
        5,
    );
    assert_eq!(status, 200, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{text}"
    );
    assert!(lower.contains("frame-ancestors 'none'"), "{text}");
    assert!(lower.contains("x-frame-options: deny"), "{text}");
    // Log out: the cookie is dead.
    let (status, text) = raw(
        &srv.addr,
        &format!("POST /logout HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nOrigin: {own}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        5,
    );
    assert_eq!(status, 303, "{text}");
    assert!(text.to_ascii_lowercase().contains("max-age=0"), "{text}");
    let (status, text) = raw(
        &srv.addr,
        &format!("GET /api/images HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"),
        5,
    );
    assert_eq!(status, 401, "{text}");
    srv.stop();
}

/// A label value as written in the text format, unescaped (the parser
/// checks the escapes but hands the value back as written).
fn unescape_label(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// A session name with `"` and `\` does not break the scrape: /metrics parses
/// with a Prometheus text-format parser and gives the name back; a name with
/// a newline is refused before it gets anywhere.
#[test]
fn metrics_parse_with_a_hostile_session_name() {
    if !in_private_netns("metrics_parse_with_a_hostile_session_name") {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    make_image(work.path(), &dir, "base.img", 2, 5);
    let srv = Server::start(&dir, &work.path().join("state.sqlite"));
    let end = Instant::now() + Duration::from_secs(20);
    while srv.req("GET", "/api/images/base.img", None).status != 200 {
        assert!(Instant::now() < end, "not listed: {}", srv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let hostile = r#"a"b\c}d"#;
    let r = srv.req(
        "POST",
        "/api/sessions",
        Some(&json!({"name": hostile, "image": "base.img", "clients": 3})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_u64().expect("id");
    let nl = srv.req(
        "POST",
        "/api/sessions",
        Some(&json!({"name": "x\"}\nimgcast_images 99\n", "image": "base.img"})),
    );
    assert_eq!(nl.status, 400, "{}", nl.text());
    let text = srv.req("GET", "/metrics", None).text();
    let scrape = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("the scrape does not parse: {e:?}\n{text}"));
    let family = scrape
        .families
        .get("imgcast_session_bytes_sent")
        .unwrap_or_else(|| panic!("no per-session bytes: {text}"));
    let names: Vec<String> = family
        .iter_samples()
        .filter_map(|s| {
            s.get_labelset()
                .ok()?
                .get_label_value("session")
                .map(unescape_label)
        })
        .collect();
    assert_eq!(names, [hostile], "{text}");
    let images = scrape.families.get("imgcast_images").expect("images");
    assert_eq!(images.iter_samples().count(), 1, "{text}");
    assert_eq!(
        scrape.families.len(),
        text.matches("# TYPE").count(),
        "{text}"
    );
    assert_eq!(
        srv.req("DELETE", &format!("/api/sessions/{id}"), None)
            .status,
        202
    );
    srv.wait_session(id, 30, |v| v["state"] == json!("failed"));
    srv.stop();
}

/// A database written by the schema before versions (and hosts) existed opens,
/// is upgraded in place, keeps its history and shows it, its clients now rows
/// of a host inventory; the upgraded file says version 2.
#[test]
fn a_database_of_the_old_schema_upgrades_in_place() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("images");
    std::fs::create_dir(&dir).expect("mkdir");
    let state = work.path().join("old.sqlite");
    let old_view = json!({
        "id": 1, "name": "lab1", "image": "win11.img", "state": "done", "run": 1,
        "min_clients": 2,
        "clients": [
            {"id": 7, "addr": "10.0.0.11:9000", "run": 1, "done": 100, "total": 100, "rate": 0.0, "result": "done", "note": ""},
            {"id": 8, "addr": "10.0.0.12:9000", "run": 1, "done": 50, "total": 100, "rate": 0.0, "result": "failed: disk full"}
        ],
        "queued": [], "disk_size": 100, "bytes_sent": 4242, "repair_ratio": 0.05,
        "created": 1700000000u64, "started": 1700000010u64, "ended": 1700000100u64, "error": null, "notes": []
    });
    {
        let db = rusqlite::Connection::open(&state).expect("open");
        // The schema as the server wrote it before migrations (user_version 0).
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS images (
                name TEXT PRIMARY KEY, size INTEGER NOT NULL, stored_bytes INTEGER NOT NULL,
                file_bytes INTEGER NOT NULL, chunk_size INTEGER NOT NULL, chunks INTEGER NOT NULL,
                level INTEGER NOT NULL, root_hash TEXT NOT NULL, created INTEGER NOT NULL,
                verified INTEGER NOT NULL, mtime INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS sessions (
                id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, image TEXT NOT NULL,
                state TEXT NOT NULL, created INTEGER NOT NULL, view TEXT NOT NULL);",
        )
        .expect("old schema");
        db.execute(
            "INSERT INTO sessions (name, image, state, created, view) VALUES ('lab1', 'win11.img', 'done', 1700000000, ?1)",
            [old_view.to_string()],
        )
        .expect("old row");
    }
    let srv = Server::start(&dir, &state);
    let list = srv.req("GET", "/api/sessions", None).json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list:#}");
    assert_eq!(list[0]["name"], json!("lab1"));
    assert_eq!(list[0]["clients"].as_array().map(Vec::len), Some(2));
    let hosts = srv.req("GET", "/api/hosts", None).json();
    let mut addrs: Vec<&str> = hosts
        .as_array()
        .expect("hosts")
        .iter()
        .filter_map(|h| h["addr"].as_str())
        .collect();
    addrs.sort_unstable();
    assert_eq!(addrs, ["10.0.0.11", "10.0.0.12"], "{hosts:#}");
    let failed = hosts
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["addr"] == json!("10.0.0.12"))
        .expect("host");
    let one = srv
        .req("GET", &format!("/api/hosts/{}", failed["id"]), None)
        .json();
    assert_eq!(
        one["history"][0]["result"],
        json!("failed: disk full"),
        "{one:#}"
    );
    assert_eq!(one["history"][0]["session_name"], json!("lab1"));
    assert_eq!(one["history"][0]["image"], json!("win11.img"));
    assert_eq!(srv.req("GET", "/api/hosts/999", None).status, 404);
    // Per-session metrics come from the stored history.
    let metrics = srv.req("GET", "/metrics", None).text();
    assert!(
        metrics.contains("imgcast_session_bytes_sent{id=\"1\",session=\"lab1\"} 4242"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imgcast_clients_done_total 1"),
        "{metrics}"
    );
    srv.stop();
    let db = rusqlite::Connection::open(&state).expect("reopen");
    let v: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(v, 3);
    let reports: i64 = db
        .query_row("SELECT COUNT(*) FROM boot_reports", [], |r| r.get(0))
        .expect("the boot_reports table of version 3");
    assert_eq!(reports, 0);
}

/// Scheduled-cast in the namespace LAN: a session asked to start 3 s after
/// its creation, for more clients than come, starts at its time with the one
/// that came (h1, named pc-h1); h2 joins too late, is queued, and goes away;
/// the follow-up run finds nobody and ends at its deadline, so the session
/// ends done and frees its name. The host inventory then knows pc-h1: its
/// address, MAC and the image it received.
#[test]
fn lab_scheduled_session_hosts_and_empty_follow_up() {
    let lab = Lab::new(img());
    let images = lab.path("images");
    std::fs::create_dir(&images).expect("mkdir");
    make_image(lab.dir(), &images, "base.img", 4, 21);
    let script = r#"
lab_up 3
lab_spawn h0 "$DIR/server.log" "$IMG" server --images "$DIR/images" --listen 10.77.0.10:8470 >/dev/null
srv=$LAB_LAST_PID
for i in $(seq 1 100); do grep -q listening "$DIR/server.log" 2>/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$DIR/images/.imgcast-token")
api() { lab_exec h0 curl -sS -H "Authorization: Bearer $TOKEN" "$@"; }
for i in $(seq 1 200); do
  [ "$(api -o /dev/null -w '%{http_code}' http://10.77.0.10:8470/api/images/base.img)" = 200 ] && break
  sleep 0.1
done
lab_exec h1 cat /sys/class/net/eth0/address >"$DIR/h1.mac"
# A client with a host name of its own (a UTS namespace of its own).
named() { h=$1; log=$2; shift 2; lab_spawn "$h" "$log" unshare -u sh -c 'echo "$0" >/proc/sys/kernel/hostname && shift && exec "$@"' "pc-$h" _ "$@"; }
api -X POST -H 'Content-Type: application/json' \
  -d '{"name":"sched","image":"base.img","clients":5,"timeout":600,"start_in":3,"throttle":2,"follow_up_deadline":2}' \
  http://10.77.0.10:8470/api/sessions >"$DIR/created.json"
id=$(grep -o '"id":[0-9]*' "$DIR/created.json" | head -1 | cut -d: -f2)
named h1 "$DIR/c1.log" "$IMG" -session sched -client -disk="$DIR/c1.raw" >/dev/null
c1=$LAB_LAST_PID
n=0
poll() { n=$((n + 1)); api "http://10.77.0.10:8470/api/sessions/$id" >"$DIR/poll-$n.json"; }
for i in $(seq 1 200); do
  poll
  grep -q '"state":"\(running\|done\|failed\)"' "$DIR/poll-$n.json" && break
  sleep 0.1
done
named h2 "$DIR/c2.log" "$IMG" -session sched -client -disk="$DIR/c2.raw" >/dev/null
c2=$LAB_LAST_PID
for i in $(seq 1 100); do
  poll
  grep -q '"queued":\["10.77.0.12' "$DIR/poll-$n.json" && break
  sleep 0.1
done
lab_kill $c2
echo "h2 gone at poll $n"
for i in $(seq 1 400); do
  poll
  grep -q '"state":"\(done\|failed\)"' "$DIR/poll-$n.json" && break
  sleep 0.1
done
lab_wait 30 $c1 >/dev/null 2>&1; echo "c1 exit $?"
api http://10.77.0.10:8470/api/hosts >"$DIR/hosts.json"
hid=$(grep -o '"id":[0-9]*' "$DIR/hosts.json" | head -1 | cut -d: -f2)
api "http://10.77.0.10:8470/api/hosts/$hid" >"$DIR/host.json"
api -o /dev/null -w 'second session %{http_code}\n' -X POST -H 'Content-Type: application/json' \
  -d '{"name":"sched","image":"base.img","clients":1}' http://10.77.0.10:8470/api/sessions
lab_kill $srv
"#;
    let out = lab.run(script);
    let show = lab.show(&out, &["server.log", "c1.log", "c2.log"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("c1 exit 0"), "{show}");
    assert!(stdout.contains("h2 gone"), "{show}");
    assert!(
        lab.log("c2.log").contains("queued for the next session"),
        "{show}"
    );
    // The name was free again once the session ended.
    assert!(stdout.contains("second session 201"), "{show}");
    let polls = saved_polls(&lab);
    let last = polls.last().expect("polls");
    assert_eq!(last["state"], json!("done"), "{last:#}\n{show}");
    assert_eq!(last["run"], json!(2), "{last:#}");
    let (created, started) = (
        last["created"].as_u64().expect("created"),
        polls
            .iter()
            .find_map(|p| p["started"].as_u64())
            .expect("started"),
    );
    assert!(
        started >= created + 3,
        "started at {started}, created at {created}: not at its time\n{show}"
    );
    assert_eq!(last["start_at"], json!(created + 3), "{last:#}");
    let notes = last["notes"].as_array().expect("notes");
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .is_some_and(|n| n.contains("follow-up run 2: the deadline (2 s) passed"))),
        "{last:#}"
    );
    let clients = last["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 1, "{last:#}");
    assert_eq!(clients[0]["host"], json!("pc-h1"), "{last:#}");
    assert_eq!(clients[0]["result"], json!("done"), "{last:#}");

    let hosts: Value = serde_json::from_str(&lab.log("hosts.json")).expect("hosts json");
    let hosts = hosts.as_array().expect("hosts");
    assert_eq!(hosts.len(), 1, "{hosts:#?}\n{show}");
    let h = &hosts[0];
    assert_eq!(h["name"], json!("pc-h1"), "{h:#}");
    assert_eq!(h["addr"], json!("10.77.0.11"), "{h:#}");
    assert_eq!(h["last_result"], json!("done"), "{h:#}");
    // h1's own MAC, as its client sent it in Register.
    assert_eq!(h["mac"], json!(lab.log("h1.mac").trim()), "{h:#}");
    let host: Value = serde_json::from_str(&lab.log("host.json")).expect("host json");
    let hist = &host["history"][0];
    assert_eq!(hist["session_name"], json!("sched"), "{host:#}");
    assert_eq!(hist["image"], json!("base.img"), "{host:#}");
    assert_eq!(hist["result"], json!("done"), "{host:#}");
    assert_eq!(
        hist["root_hash"].as_str().map(str::len),
        Some(64),
        "{host:#}"
    );
}

/// A boot directory as `img boot build` leaves it, with stand-in files.
fn boot_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("boot");
    std::fs::create_dir_all(dir.join("pxe")).expect("boot dir");
    let kernel: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let initrd: Vec<u8> = (0..1_100_000u32).map(|i| (i * 13 % 253) as u8).collect();
    std::fs::write(dir.join("vmlinuz"), kernel).expect("vmlinuz");
    std::fs::write(dir.join("initrd.img"), initrd).expect("initrd");
    std::fs::write(dir.join("pxe/boot.ipxe"), "#!ipxe\n").expect("script");
    dir
}

/// `POST /api/boot/report` of `mac` for session `name`, with no token.
fn report(srv: &Server, name: &str, mac: &str, ok: bool) -> Reply {
    let body = json!({
        "session": name, "role": "client", "disk": "/dev/vda", "ok": ok,
        "exit_code": if ok { 0 } else { 1 }, "seconds": 12.5,
        "macs": ["02:00:00:00:00:99", mac],
    });
    client::request(
        &srv.addr,
        "POST",
        "/api/boot/report",
        None,
        Some(body.to_string().as_bytes()),
    )
    .expect("report")
}

/// The boot server: `--boot-dir` serves the boot files (whole, in ranges,
/// never outside the directory) and refuses to start without them; a
/// session's boot plan is checked, gives its hosts their orders by MAC (over
/// iPXE and as JSON, no token, never a key) and unknown hosts the menu; a
/// report from a host is filed with the session, and a host that reported
/// success gets no orders again; a report that comes after the session ended
/// updates the stored session, which a restarted server still shows.
#[test]
fn boot_files_plans_orders_and_late_reports() {
    let work = tempfile::tempdir().expect("tempdir");
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).expect("images");
    let state = work.path().join("state.sqlite");
    make_image(work.path(), &images, "pxe.img", 4, 7);
    // Without the boot files the server says what is missing and does not start.
    let empty = work.path().join("empty");
    std::fs::create_dir_all(&empty).expect("empty");
    let out = Command::new(img())
        .args(["server", "--listen", "127.0.0.1:0", "--images"])
        .arg(&images)
        .arg("--state")
        .arg(&state)
        .arg("--boot-dir")
        .arg(&empty)
        .output()
        .expect("run img server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no vmlinuz") && err.contains("img boot build"),
        "{err}"
    );

    let boot = boot_dir(work.path());
    let start = || {
        let mut cmd = Command::new(img());
        cmd.args(["server", "--listen", "127.0.0.1:0", "--images"])
            .arg(&images)
            .arg("--state")
            .arg(&state)
            .arg("--boot-dir")
            .arg(&boot);
        Server::spawn(cmd, &images.join(".imgcast-token"))
    };
    let srv = start();
    assert!(
        srv.log().contains("serving the boot files"),
        "{}",
        srv.log()
    );
    // The scan thread verifies the image while the API already answers: plan only once listed.
    wait_listed(&srv, "pxe.img");
    let get = |path: &str| client::request(&srv.addr, "GET", path, None, None).expect("get");

    // The files, whole and in a range, with no token; nothing outside the directory.
    let k = get("/boot/vmlinuz");
    assert_eq!(k.status, 200);
    assert_eq!(k.body, std::fs::read(boot.join("vmlinuz")).expect("read"));
    let i = get("/boot/initrd.img");
    assert_eq!(
        i.body,
        std::fs::read(boot.join("initrd.img")).expect("read")
    );
    assert_eq!(get("/boot/pxe/boot.ipxe").text(), "#!ipxe\n");
    let (st, text) = raw(
        &srv.addr,
        "GET /boot/vmlinuz HTTP/1.1\r\nHost: x\r\nRange: bytes=100-199\r\nConnection: close\r\n\r\n",
        5,
    );
    assert_eq!(st, 206, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("content-length: 100"),
        "{text}"
    );
    std::os::unix::fs::symlink(&state, boot.join("db")).expect("symlink");
    for bad in [
        "/boot/../state.sqlite",
        "/boot/%2e%2e/state.sqlite",
        "/boot/..%2fstate.sqlite",
        "/boot/db",
        "/boot/pxe",
        "/boot/.hidden",
        "/boot/nothing",
    ] {
        let (st, text) = raw(
            &srv.addr,
            &format!("GET {bad} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            5,
        );
        assert!(st == 404 || st == 400, "{bad}: {text}");
        assert!(!text.contains("SQLite format"), "{bad}: {text}");
    }

    // Plans are checked.
    let plan = |hosts: Value, disk: &str| {
        json!({"name": "pxe1", "image": "pxe.img", "clients": 2,
               "boot": {"hosts": hosts, "disk": disk, "after": "reboot"}})
    };
    for (body, want) in [
        (plan(json!(["52:54:00:aa:00"]), "/dev/vda"), "not a MAC"),
        (
            plan(
                json!(["52:54:00:aa:00:01", "52-54-00-AA-00-01"]),
                "/dev/vda",
            ),
            "twice",
        ),
        (plan(json!([]), "/dev/vda"), "1 to 4096"),
        (plan(json!(["52:54:00:aa:00:01"]), "vda"), "not a disk"),
        (
            plan(json!(["52:54:00:aa:00:01"]), "/dev/vda img.role=master"),
            "not a disk",
        ),
        (
            plan(json!(["52:54:00:aa:00:01"]), "/dev/${x}"),
            "not a disk",
        ),
        (
            json!({"name": "pxe1", "image": "pxe.img", "key": "secret",
                   "boot": {"hosts": ["52:54:00:aa:00:01"], "disk": "/dev/vda"}}),
            "keyfile",
        ),
        (
            json!({"name": "pxe1", "image": "pxe.img",
                   "boot": {"hosts": ["52:54:00:aa:00:01"], "disk": "/dev/vda", "after": "dance"}}),
            "bad JSON",
        ),
        (
            json!({"name": "pxe1", "image": "pxe.img",
                   "boot": {"hosts": ["52:54:00:aa:00:01"], "disk": "/dev/vda", "role": "master"}}),
            "bad JSON",
        ),
    ] {
        let r = srv.req("POST", "/api/sessions", Some(&body));
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(want), "{body}: {}", r.text());
    }
    let r = srv.req(
        "POST",
        "/api/sessions",
        Some(&plan(
            json!(["52:54:00:AA:00:01", "52-54-00-aa-00-02"]),
            "/dev/vda",
        )),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_u64().expect("id");
    assert_eq!(
        r.json()["boot"]["hosts"],
        json!(["52:54:00:aa:00:01", "52:54:00:aa:00:02"])
    );
    // A host has one order at a time.
    let other = json!({"name": "pxe2", "image": "pxe.img",
                       "boot": {"hosts": ["52:54:00:aa:00:02"], "disk": "/dev/sda"}});
    let r = srv.req("POST", "/api/sessions", Some(&other));
    assert_eq!(r.status, 409, "{}", r.text());

    // iPXE: first the chain with the NIC's MAC, then the host's orders.
    let base = format!("http://{}", srv.addr);
    let chain = get("/boot/ipxe").text();
    assert!(chain.starts_with("#!ipxe\n"), "{chain}");
    assert!(
        chain.contains(&format!("chain {base}/boot/ipxe?mac=${{netX/mac}}")),
        "{chain}"
    );
    let script = get("/boot/ipxe?mac=52:54:00:aa:00:01").text();
    assert!(
        script.contains(&format!("kernel {base}/boot/vmlinuz initrd=initrd.img")),
        "{script}"
    );
    assert!(
        script.contains(&format!("initrd {base}/boot/initrd.img")),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "img.session=pxe1 img.role=client img.disk=/dev/vda img.after=reboot \
             img.report={base}/api/boot/report"
        )),
        "{script}"
    );
    let menu = get("/boot/ipxe?mac=52:54:00:bb:00:01").text();
    assert!(menu.contains("kernel ") && !menu.contains("img."), "{menu}");
    assert_eq!(get("/boot/ipxe?mac=52:54:00:bb").status, 400);
    // The same orders as JSON, for img.server=URL.
    let o = get("/api/boot/orders?mac=52-54-00-AA-00-02");
    assert_eq!(o.status, 200, "{}", o.text());
    assert_eq!(o.json()["session_id"].as_u64(), Some(id));
    let line = o.json()["cmdline"].as_str().expect("cmdline").to_string();
    let orders = imgcast_server::boot::BootOrders::from_cmdline(&line)
        .expect("orders parse")
        .expect("orders");
    assert_eq!(orders.disk, "/dev/vda");
    assert_eq!(get("/api/boot/orders?mac=52:54:00:bb:00:01").status, 404);
    assert_eq!(get("/api/boot/orders").status, 400);

    // Reports: filed with the session, by a host of the plan only.
    let r = report(&srv, "pxe1", "52:54:00:aa:00:01", true);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session_id"].as_u64(), Some(id));
    let v = srv.req("GET", &format!("/api/sessions/{id}"), None).json();
    let rep = &v["boot"]["reported"];
    assert_eq!(rep[0]["mac"], "52:54:00:aa:00:01", "{v:#}");
    assert_eq!(rep[0]["ok"], true);
    assert_eq!(rep[0]["addr"], "127.0.0.1");
    // Imaged: the host boots to the menu now, the other still gets its orders.
    let again = get("/boot/ipxe?mac=52:54:00:aa:00:01").text();
    assert!(!again.contains("img.session"), "{again}");
    assert_eq!(get("/api/boot/orders?mac=52:54:00:aa:00:02").status, 200);
    assert_eq!(report(&srv, "pxe1", "52:54:00:bb:00:09", true).status, 404);
    assert_eq!(
        report(&srv, "nosuch", "52:54:00:aa:00:02", true).status,
        404
    );
    let r = client::request(
        &srv.addr,
        "POST",
        "/api/boot/report",
        None,
        Some(b"{\"session\":"),
    )
    .expect("bad");
    assert_eq!(r.status, 400, "{}", r.text());
    let big = vec![b' '; 70 * 1024];
    let r = client::request(&srv.addr, "POST", "/api/boot/report", None, Some(&big)).expect("big");
    assert_eq!(r.status, 413, "{}", r.text());

    // The session ends; host 2's report comes late and still lands in it.
    let r = srv.req("DELETE", &format!("/api/sessions/{id}"), None);
    assert_eq!(r.status, 202, "{}", r.text());
    srv.wait_session(id, 30, |v| v["ended"].is_u64());
    assert_eq!(get("/api/boot/orders?mac=52:54:00:aa:00:02").status, 404);
    let r = report(&srv, "pxe1", "52:54:00:aa:00:02", false);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = srv.req("GET", &format!("/api/sessions/{id}"), None).json();
    assert_eq!(v["state"], "failed", "{v:#}");
    let macs: Vec<&str> = v["boot"]["reported"]
        .as_array()
        .expect("reported")
        .iter()
        .filter_map(|r| r["mac"].as_str())
        .collect();
    assert_eq!(macs, ["52:54:00:aa:00:01", "52:54:00:aa:00:02"], "{v:#}");
    assert_eq!(v["boot"]["reported"][1]["ok"], false);
    srv.stop();
    let srv = start();
    let v = srv.req("GET", &format!("/api/sessions/{id}"), None).json();
    assert_eq!(
        v["boot"]["reported"][1]["mac"], "52:54:00:aa:00:02",
        "{v:#}"
    );
    let db = rusqlite::Connection::open(&state).expect("db");
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM boot_reports WHERE session_id = ?1",
            [id as i64],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 2);
    srv.stop();
}
