//! The server's memory across restarts: the image catalogue and the session
//! history, in one SQLite file (WAL mode, so a crash loses at most the last
//! unfinished write).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

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
    /// File modification time when verified, to notice a file changed behind our back.
    #[serde(skip)]
    pub(crate) mtime: u64,
}

/// The SQLite database.
#[derive(Debug)]
pub(crate) struct Store {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS images (
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
);
";

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
        conn.execute_batch(SCHEMA)
            .map_err(db_err("creating the tables"))?;
        Ok(Self { conn })
    }

    /// Every catalogued image, by name.
    pub(crate) fn images(&self) -> Result<Vec<ImageRecord>, ServerError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT name, size, stored_bytes, file_bytes, chunk_size, chunks, level, root_hash,
                        created, verified, mtime FROM images ORDER BY name",
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

    /// Adds or replaces an image.
    pub(crate) fn put_image(&self, i: &ImageRecord) -> Result<(), ServerError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO images
                 (name, size, stored_bytes, file_bytes, chunk_size, chunks, level, root_hash,
                  created, verified, mtime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
}
