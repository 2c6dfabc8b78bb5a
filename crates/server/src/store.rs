//! The server's memory across restarts: the image catalogue and the session
//! history, in one SQLite file (WAL mode, so a crash loses at most the last
//! unfinished write).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};

use crate::sessions::SessionView;
use crate::ServerError;

/// One image of the catalogue, as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub(crate) struct ImageRecord {
    /// File name in the image directory.
    pub(crate) name: String,
    /// Raw disk size the image restores.
    pub(crate) size: u64,
    /// Bytes of chunk payload stored (after compression).
    pub(crate) stored_bytes: u64,
    /// Length of the image file.
    pub(crate) file_bytes: u64,
    /// Chunk size in bytes.
    pub(crate) chunk_size: u32,
    /// Number of chunks.
    pub(crate) chunks: u64,
    /// Compression level.
    pub(crate) level: u8,
    /// BLAKE3 root hash, hex.
    pub(crate) root_hash: String,
    /// When the image was made (its header), seconds since the epoch.
    pub(crate) created: u64,
    /// When the server last verified every chunk, seconds since the epoch.
    pub(crate) verified: u64,
    /// Free text the admin wrote about the image.
    #[serde(default)]
    pub(crate) description: String,
    /// File modification time when verified, to notice a file changed behind our back.
    #[serde(skip)]
    pub(crate) mtime: u64,
}

/// The SQLite database.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
}

/// The schema, one migration per version; `PRAGMA user_version` says how
/// many have been applied. A database from before versions existed (user
/// version 0, tables made with `CREATE TABLE IF NOT EXISTS`) runs migration 1
/// harmlessly and goes on from there. Only append: a released migration is
/// never changed.
const MIGRATIONS: &[&str] = &[
    // 1: the catalogue and the session history (a JSON view per session).
    "CREATE TABLE IF NOT EXISTS images (
        name TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL,
        file_bytes INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        level INTEGER NOT NULL,
        root_hash TEXT NOT NULL,
        created INTEGER NOT NULL,
        verified INTEGER NOT NULL,
        mtime INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        image TEXT NOT NULL,
        state TEXT NOT NULL,
        created INTEGER NOT NULL,
        view TEXT NOT NULL
    );",
    // 2: descriptions of images; hosts; one row per client of every run.
    "ALTER TABLE images ADD COLUMN description TEXT NOT NULL DEFAULT '';
    CREATE TABLE hosts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL DEFAULT '',
        addr TEXT NOT NULL,
        mac TEXT NOT NULL DEFAULT '',
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE client_results (
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        run INTEGER NOT NULL,
        client_id INTEGER NOT NULL,
        host_id INTEGER NOT NULL REFERENCES hosts(id),
        addr TEXT NOT NULL,
        image TEXT NOT NULL,
        root_hash TEXT NOT NULL DEFAULT '',
        done INTEGER NOT NULL,
        total INTEGER NOT NULL,
        result TEXT,
        note TEXT NOT NULL DEFAULT '',
        seen INTEGER NOT NULL,
        PRIMARY KEY (session_id, run, client_id)
    );
    CREATE INDEX client_results_host ON client_results(host_id);",
    // 3: what booted machines reported (POST /api/boot/report), every one kept.
    "CREATE TABLE boot_reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER NOT NULL REFERENCES sessions(id),
        mac TEXT NOT NULL,
        addr TEXT NOT NULL,
        ok INTEGER NOT NULL,
        exit_code INTEGER,
        seconds REAL NOT NULL,
        received INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX boot_reports_session ON boot_reports(session_id);",
];

/// One report of a booted machine, as stored.
#[derive(Clone, Debug, Default)]
pub(crate) struct BootReportRow {
    pub(crate) session_id: i64,
    /// The MAC of the plan it matched.
    pub(crate) mac: String,
    /// Where it came from.
    pub(crate) addr: String,
    pub(crate) ok: bool,
    pub(crate) exit_code: Option<i32>,
    pub(crate) seconds: f64,
    pub(crate) received: u64,
    /// The report as sent.
    pub(crate) body: String,
}

/// One client of one run, as stored.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientRow {
    pub(crate) session_id: i64,
    pub(crate) run: u32,
    pub(crate) client_id: u64,
    /// Address without the port.
    pub(crate) ip: String,
    /// With the port, as the session view shows it.
    pub(crate) addr: String,
    pub(crate) host_name: String,
    pub(crate) mac: String,
    pub(crate) image: String,
    pub(crate) root_hash: String,
    pub(crate) done: u64,
    pub(crate) total: u64,
    pub(crate) result: Option<String>,
    pub(crate) note: String,
    pub(crate) seen: u64,
}

/// A host's key: its MAC if known, else its name, else its address.
fn host_key(mac: &str, name: &str, ip: &str) -> String {
    if !mac.is_empty() {
        format!("mac:{}", mac.to_ascii_lowercase())
    } else if !name.is_empty() {
        format!("name:{name}")
    } else {
        format!("ip:{ip}")
    }
}

fn db_err(what: &str) -> impl FnOnce(rusqlite::Error) -> ServerError + '_ {
    move |source| ServerError::Db {
        what: what.to_string(),
        source,
    }
}

/// SQLite stores signed 64-bit integers; our sizes fit.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, ServerError> {
        let conn = Connection::open(path).map_err(db_err("opening the state database"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err("setting WAL mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db_err("setting synchronous mode"))?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version of the database.
    pub(crate) fn version(&self) -> Result<usize, ServerError> {
        let v: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err("reading the schema version"))?;
        Ok(usize::try_from(v).unwrap_or(0))
    }

    /// Applies the migrations the database lacks, each in its own transaction.
    fn migrate(&mut self) -> Result<(), ServerError> {
        let have = self.version()?;
        if have > MIGRATIONS.len() {
            return Err(ServerError::BadRequest(format!(
                "the state database has schema version {have}, newer than this server knows ({}); \
                 use a newer img",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
            let version = i + 1;
            let what = format!("upgrading the state database to version {version}");
            let tx = self.conn.transaction().map_err(db_err(&what))?;
            tx.execute_batch(sql).map_err(db_err(&what))?;
            if version == 2 {
                backfill_clients(&tx).map_err(db_err(&what))?;
            }
            tx.pragma_update(None, "user_version", version as i64)
                .map_err(db_err(&what))?;
            tx.commit().map_err(db_err(&what))?;
        }
        Ok(())
    }

    /// Every catalogued image, by name.
    pub(crate) fn images(&self) -> Result<Vec<ImageRecord>, ServerError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT name, size, stored_bytes, file_bytes, chunk_size, chunks, level, root_hash,
                        created, verified, mtime, description FROM images ORDER BY name",
            )
            .map_err(db_err("listing images"))?;
        let rows = st
            .query_map([], |r| {
                Ok(ImageRecord {
                    name: r.get(0)?,
                    size: from_i64(r.get(1)?),
                    stored_bytes: from_i64(r.get(2)?),
                    file_bytes: from_i64(r.get(3)?),
                    chunk_size: r.get(4)?,
                    chunks: from_i64(r.get(5)?),
                    level: r.get(6)?,
                    root_hash: r.get(7)?,
                    created: from_i64(r.get(8)?),
                    verified: from_i64(r.get(9)?),
                    mtime: from_i64(r.get(10)?),
                    description: r.get(11)?,
                })
            })
            .map_err(db_err("listing images"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_err("reading an image row"))
    }

    /// One image.
    pub(crate) fn image(&self, name: &str) -> Result<Option<ImageRecord>, ServerError> {
        Ok(self.images()?.into_iter().find(|i| i.name == name))
    }

    /// Adds or replaces an image; a replaced image keeps its description.
    pub(crate) fn put_image(&self, i: &ImageRecord) -> Result<(), ServerError> {
        self.conn
            .execute(
                "INSERT INTO images
                 (name, size, stored_bytes, file_bytes, chunk_size, chunks, level, root_hash,
                  created, verified, mtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(name) DO UPDATE SET size = ?2, stored_bytes = ?3, file_bytes = ?4,
                   chunk_size = ?5, chunks = ?6, level = ?7, root_hash = ?8, created = ?9,
                   verified = ?10, mtime = ?11",
                params![
                    i.name,
                    to_i64(i.size),
                    to_i64(i.stored_bytes),
                    to_i64(i.file_bytes),
                    i.chunk_size,
                    to_i64(i.chunks),
                    i.level,
                    i.root_hash,
                    to_i64(i.created),
                    to_i64(i.verified),
                    to_i64(i.mtime),
                ],
            )
            .map_err(db_err("storing an image"))?;
        Ok(())
    }

    /// Sets an image's description; false if there is no such image.
    pub(crate) fn describe_image(&self, name: &str, text: &str) -> Result<bool, ServerError> {
        let n = self
            .conn
            .execute(
                "UPDATE images SET description = ?2 WHERE name = ?1",
                params![name, text],
            )
            .map_err(db_err("describing an image"))?;
        Ok(n > 0)
    }

    /// Forgets an image.
    pub(crate) fn delete_image(&self, name: &str) -> Result<(), ServerError> {
        self.conn
            .execute("DELETE FROM images WHERE name = ?1", params![name])
            .map_err(db_err("deleting an image"))?;
        Ok(())
    }

    /// Records a new session and returns its id.
    pub(crate) fn new_session(
        &self,
        name: &str,
        image: &str,
        created: u64,
    ) -> Result<i64, ServerError> {
        self.conn
            .execute(
                "INSERT INTO sessions (name, image, state, created, view) VALUES (?1, ?2, 'gathering', ?3, '{}')",
                params![name, image, to_i64(created)],
            )
            .map_err(db_err("recording a session"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Saves a session's state and its full JSON view.
    pub(crate) fn save_session(&self, id: i64, state: &str, view: &str) -> Result<(), ServerError> {
        self.conn
            .execute(
                "UPDATE sessions SET state = ?2, view = ?3 WHERE id = ?1",
                params![id, state, view],
            )
            .map_err(db_err("saving a session"))?;
        Ok(())
    }

    /// The JSON views of the last `limit` sessions, newest first.
    pub(crate) fn sessions(&self, limit: u32) -> Result<Vec<(i64, String)>, ServerError> {
        let mut st = self
            .conn
            .prepare("SELECT id, view FROM sessions ORDER BY id DESC LIMIT ?1")
            .map_err(db_err("listing sessions"))?;
        let rows = st
            .query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err("listing sessions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_err("reading a session row"))
    }

    /// The ids and JSON views of the last `limit` sessions named `name`, newest first.
    pub(crate) fn sessions_named(
        &self,
        name: &str,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, ServerError> {
        let mut st = self
            .conn
            .prepare("SELECT id, view FROM sessions WHERE name = ?1 ORDER BY id DESC LIMIT ?2")
            .map_err(db_err("listing sessions by name"))?;
        let rows = st
            .query_map(params![name, limit], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err("listing sessions by name"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_err("reading a session row"))
    }

    /// Keeps a booted machine's report.
    pub(crate) fn add_boot_report(&self, r: &BootReportRow) -> Result<(), ServerError> {
        self.conn
            .execute(
                "INSERT INTO boot_reports (session_id, mac, addr, ok, exit_code, seconds, received, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    r.session_id,
                    r.mac,
                    r.addr,
                    r.ok,
                    r.exit_code,
                    r.seconds,
                    to_i64(r.received),
                    r.body
                ],
            )
            .map_err(db_err("keeping a boot report"))?;
        Ok(())
    }

    /// How many reports session `id` has kept.
    #[cfg(test)]
    pub(crate) fn boot_report_count(&self, id: i64) -> Result<u64, ServerError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM boot_reports WHERE session_id = ?1",
                params![id],
                |r| r.get::<_, i64>(0),
            )
            .map(from_i64)
            .map_err(db_err("counting boot reports"))
    }

    /// One session's JSON view.
    pub(crate) fn session(&self, id: i64) -> Result<Option<String>, ServerError> {
        self.conn
            .query_row(
                "SELECT view FROM sessions WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err("reading a session"))
    }

    /// Sessions left gathering or running by a server that stopped: their
    /// ids and views, so they can be marked failed.
    pub(crate) fn unfinished_sessions(&self) -> Result<Vec<(i64, String)>, ServerError> {
        let mut st = self
            .conn
            .prepare("SELECT id, view FROM sessions WHERE state IN ('gathering', 'running')")
            .map_err(db_err("listing unfinished sessions"))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err("listing unfinished sessions"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_err("reading a session row"))
    }
}

impl Store {
    /// Parsed views of the last `limit` sessions (rows that do not parse are skipped).
    pub(crate) fn session_views(&self, limit: u32) -> Result<Vec<SessionView>, ServerError> {
        Ok(self
            .sessions(limit)?
            .into_iter()
            .filter_map(|(_, json)| crate::sessions::parse_view(&json))
            .collect())
    }

    /// Stores the rows of a session's clients, and the hosts they are.
    pub(crate) fn save_clients(&mut self, rows: &[ClientRow]) -> Result<(), ServerError> {
        let tx = self
            .conn
            .transaction()
            .map_err(db_err("saving client results"))?;
        for r in rows {
            save_client(&tx, r).map_err(db_err("saving a client result"))?;
        }
        tx.commit().map_err(db_err("saving client results"))
    }

    /// Every host, most recently seen first, with its last result.
    pub(crate) fn hosts(&self) -> Result<Vec<Value>, ServerError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT h.id, h.name, h.addr, h.mac, h.first_seen, h.last_seen,
                        (SELECT COUNT(*) FROM client_results c WHERE c.host_id = h.id),
                        (SELECT c.image FROM client_results c WHERE c.host_id = h.id
                           ORDER BY c.seen DESC, c.session_id DESC LIMIT 1),
                        (SELECT c.result FROM client_results c WHERE c.host_id = h.id
                           ORDER BY c.seen DESC, c.session_id DESC LIMIT 1)
                 FROM hosts h ORDER BY h.last_seen DESC, h.id DESC",
            )
            .map_err(db_err("listing hosts"))?;
        let rows = st
            .query_map([], |r| {
                Ok(json!({
                    "id": r.get::<_, i64>(0)?,
                    "name": r.get::<_, String>(1)?,
                    "addr": r.get::<_, String>(2)?,
                    "mac": r.get::<_, String>(3)?,
                    "first_seen": from_i64(r.get(4)?),
                    "last_seen": from_i64(r.get(5)?),
                    "sessions": r.get::<_, i64>(6)?,
                    "last_image": r.get::<_, Option<String>>(7)?,
                    "last_result": r.get::<_, Option<String>>(8)?,
                }))
            })
            .map_err(db_err("listing hosts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db_err("reading a host row"))
    }

    /// One host and its history: every image it was sent, when, and how it ended.
    pub(crate) fn host(&self, id: i64) -> Result<Option<Value>, ServerError> {
        let Some(mut host) = self
            .hosts()?
            .into_iter()
            .find(|h| h["id"].as_i64() == Some(id))
        else {
            return Ok(None);
        };
        let mut st = self
            .conn
            .prepare(
                "SELECT c.session_id, s.name, c.run, c.image, c.root_hash, c.addr, c.done, c.total,
                        c.result, c.note, c.seen
                 FROM client_results c JOIN sessions s ON s.id = c.session_id
                 WHERE c.host_id = ?1 ORDER BY c.seen DESC, c.session_id DESC, c.run DESC",
            )
            .map_err(db_err("reading a host's history"))?;
        let rows = st
            .query_map(params![id], |r| {
                Ok(json!({
                    "session": r.get::<_, i64>(0)?,
                    "session_name": r.get::<_, String>(1)?,
                    "run": r.get::<_, u32>(2)?,
                    "image": r.get::<_, String>(3)?,
                    "root_hash": r.get::<_, String>(4)?,
                    "addr": r.get::<_, String>(5)?,
                    "done": from_i64(r.get(6)?),
                    "total": from_i64(r.get(7)?),
                    "result": r.get::<_, Option<String>>(8)?,
                    "note": r.get::<_, String>(9)?,
                    "when": from_i64(r.get(10)?),
                }))
            })
            .map_err(db_err("reading a host's history"))?;
        let history: Vec<Value> = rows
            .collect::<Result<_, _>>()
            .map_err(db_err("reading a host's history"))?;
        host["history"] = Value::Array(history);
        Ok(Some(host))
    }
}

/// Upserts the host of `r`, then its result row.
fn save_client(conn: &Connection, r: &ClientRow) -> rusqlite::Result<()> {
    let key = host_key(&r.mac, &r.host_name, &r.ip);
    conn.execute(
        "INSERT INTO hosts (key, name, addr, mac, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT(key) DO UPDATE SET
           name = CASE WHEN ?2 = '' THEN name ELSE ?2 END, addr = ?3,
           mac = CASE WHEN ?4 = '' THEN mac ELSE ?4 END, last_seen = MAX(last_seen, ?5)",
        params![key, r.host_name, r.ip, r.mac, to_i64(r.seen)],
    )?;
    let host_id: i64 =
        conn.query_row("SELECT id FROM hosts WHERE key = ?1", params![key], |x| {
            x.get(0)
        })?;
    conn.execute(
        "INSERT INTO client_results
           (session_id, run, client_id, host_id, addr, image, root_hash, done, total, result, note, seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT(session_id, run, client_id) DO UPDATE SET host_id = ?4, addr = ?5,
           root_hash = ?7, done = ?8, total = ?9, result = ?10, note = ?11",
        params![
            r.session_id,
            r.run,
            to_i64(r.client_id),
            host_id,
            r.addr,
            r.image,
            r.root_hash,
            to_i64(r.done),
            to_i64(r.total),
            r.result,
            r.note,
            to_i64(r.seen),
        ],
    )?;
    Ok(())
}

/// Migration 2's data step: the clients of sessions stored before client rows
/// existed become rows (their hosts known by address only: the names were not kept).
fn backfill_clients(conn: &Connection) -> rusqlite::Result<()> {
    let views: Vec<(i64, String)> = {
        let mut st = conn.prepare("SELECT id, view FROM sessions")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, json) in views {
        let Ok(v) = serde_json::from_str::<Value>(&json) else {
            continue;
        };
        let image = v["image"].as_str().unwrap_or_default().to_string();
        let seen = v["started"]
            .as_u64()
            .or_else(|| v["created"].as_u64())
            .unwrap_or(0);
        for c in v["clients"].as_array().into_iter().flatten() {
            let addr = c["addr"].as_str().unwrap_or_default().to_string();
            let row = ClientRow {
                session_id: id,
                run: c["run"]
                    .as_u64()
                    .and_then(|r| u32::try_from(r).ok())
                    .unwrap_or(1),
                client_id: c["id"].as_u64().unwrap_or(0),
                ip: ip_of(&addr),
                addr,
                image: image.clone(),
                done: c["done"].as_u64().unwrap_or(0),
                total: c["total"].as_u64().unwrap_or(0),
                result: c["result"].as_str().map(str::to_string),
                note: c["note"].as_str().unwrap_or_default().to_string(),
                seen,
                ..ClientRow::default()
            };
            save_client(conn, &row)?;
        }
    }
    Ok(())
}

/// `10.0.0.5:9000` → `10.0.0.5`.
pub(crate) fn ip_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map_or_else(|_| addr.to_string(), |a| a.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_sessions_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.sqlite");
        let rec = ImageRecord {
            name: "win11.img".into(),
            size: 1 << 30,
            stored_bytes: 1 << 20,
            file_bytes: 2 << 20,
            chunk_size: 1 << 20,
            chunks: 1024,
            level: 1,
            root_hash: "ab".repeat(32),
            created: 1,
            verified: 2,
            mtime: 3,
            description: String::new(),
        };
        {
            let s = Store::open(&path).expect("open");
            s.put_image(&rec).expect("put");
            let id = s.new_session("lab1", "win11.img", 5).expect("session");
            s.save_session(id, "running", "{\"id\":1}").expect("save");
        }
        let s = Store::open(&path).expect("reopen");
        assert_eq!(s.image("win11.img").expect("image"), Some(rec));
        assert_eq!(s.unfinished_sessions().expect("unfinished").len(), 1);
        assert_eq!(s.sessions(10).expect("sessions")[0].1, "{\"id\":1}");
        s.delete_image("win11.img").expect("delete");
        assert!(s.images().expect("images").is_empty());
    }

    #[test]
    fn boot_reports_are_kept_per_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("state.sqlite")).expect("open");
        assert_eq!(s.version().expect("version"), MIGRATIONS.len());
        let a = s.new_session("lab", "x.img", 1).expect("a");
        let b = s.new_session("lab", "x.img", 2).expect("b");
        s.new_session("other", "x.img", 3).expect("other");
        let row = BootReportRow {
            session_id: a,
            mac: "52:54:00:00:00:01".into(),
            ok: true,
            exit_code: Some(0),
            body: "{}".into(),
            ..Default::default()
        };
        s.add_boot_report(&row).expect("keep");
        s.add_boot_report(&row).expect("keep again");
        assert_eq!(s.boot_report_count(a).expect("count"), 2);
        assert_eq!(s.boot_report_count(b).expect("count"), 0);
        let named: Vec<i64> = s
            .sessions_named("lab", 10)
            .expect("named")
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(named, vec![b, a]);
    }
}
