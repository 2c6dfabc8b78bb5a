//! Writing image files: [`ImageWriter`] lays out records front to back and
//! finishes with the index and trailer; [`make`] drives a whole capture.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::chunk::{EncodedChunk, RootHasher};
use crate::codec::Codec;
use crate::encoder::{spawn_encoder, DiskSource, Progress};
use crate::format::{
    ChunkKind, Geometry, Header, Index, IndexEntry, IndexHasher, RecordHeader, Trailer,
    DEFAULT_CHUNK_SIZE, HEADER_LEN, INDEX_MAGIC, RECORD_HEADER_LEN,
};
use crate::{ImageError, Level};

/// What a finished image holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// Disk size, chunk size, chunk count and level.
    pub geometry: Geometry,
    /// The root hash.
    pub root_hash: [u8; 32],
    /// Number of hole (all-zero) chunks.
    pub hole_chunks: u64,
    /// Raw bytes of non-hole chunks (what a restore writes).
    pub data_bytes: u64,
    /// Payload bytes stored (compressed or raw).
    pub stored_bytes: u64,
    /// Total image length in bytes, header to trailer.
    pub image_bytes: u64,
}

/// Writes an image to any byte sink, front to back, without seeking, so it
/// also works on a pipe. Chunks must arrive in index order.
#[derive(Debug)]
pub struct ImageWriter<W: Write> {
    out: W,
    header: Header,
    offset: u64,
    next: u64,
    entries: Vec<IndexEntry>,
    root: RootHasher,
    hole_chunks: u64,
    data_bytes: u64,
    stored_bytes: u64,
    scratch: Vec<u8>,
}

impl<W: Write> ImageWriter<W> {
    /// Writes the header.
    pub fn new(mut out: W, header: Header) -> Result<Self, ImageError> {
        let bytes = header.to_bytes();
        out.write_all(&bytes)
            .map_err(|e| ImageError::image_write(0, e))?;
        let g = header.geometry;
        Ok(Self {
            out,
            header,
            offset: HEADER_LEN as u64,
            next: 0,
            // Index entries are 56 bytes per chunk: 56 MiB for a 1 TiB disk
            // in 1 MiB chunks. Reserve lazily: the count comes from the header.
            entries: Vec::new(),
            root: RootHasher::new(g.disk_size, g.chunk_size),
            hole_chunks: 0,
            data_bytes: 0,
            stored_bytes: 0,
            scratch: Vec::with_capacity(RECORD_HEADER_LEN),
        })
    }

    /// The header written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Appends one chunk record. Checks that it is the next chunk and has
    /// the length the geometry says.
    pub fn write_chunk(&mut self, chunk: &EncodedChunk) -> Result<(), ImageError> {
        let g = self.header.geometry;
        if chunk.index != self.next {
            return Err(ImageError::BadChunk {
                chunk: chunk.index,
                reason: format!("out of order: expected chunk {}", self.next),
            });
        }
        if chunk.raw_len != g.chunk_len(chunk.index) {
            return Err(ImageError::BadChunk {
                chunk: chunk.index,
                reason: format!(
                    "raw length {} but the geometry says {}",
                    chunk.raw_len,
                    g.chunk_len(chunk.index)
                ),
            });
        }
        chunk
            .kind
            .check_lens(chunk.raw_len, chunk.stored_len())
            .map_err(|e| ImageError::BadChunk {
                chunk: chunk.index,
                reason: e.to_string(),
            })?;
        let rec = RecordHeader {
            index: chunk.index,
            kind: chunk.kind,
            raw_len: chunk.raw_len,
            stored_len: chunk.stored_len(),
            hash: chunk.hash,
        };
        self.scratch.clear();
        rec.encode(&mut self.scratch);
        let at = self.offset;
        self.out
            .write_all(&self.scratch)
            .and_then(|()| self.out.write_all(&chunk.payload))
            .map_err(|e| ImageError::image_write(at, e))?;
        self.entries.push(IndexEntry {
            offset: at,
            kind: chunk.kind,
            stored_len: rec.stored_len,
            raw_len: rec.raw_len,
            hash: chunk.hash,
        });
        self.root.push(&chunk.hash);
        self.offset += RECORD_HEADER_LEN as u64 + u64::from(rec.stored_len);
        self.next += 1;
        if chunk.kind == ChunkKind::Hole {
            self.hole_chunks += 1;
        } else {
            self.data_bytes += u64::from(chunk.raw_len);
        }
        self.stored_bytes += u64::from(rec.stored_len);
        Ok(())
    }

    /// Writes the index and trailer and flushes. Fails if chunks are missing.
    pub fn finish(mut self) -> Result<ImageSummary, ImageError> {
        let g = self.header.geometry;
        if self.next != g.chunk_count {
            return Err(ImageError::BadChunk {
                chunk: self.next,
                reason: format!(
                    "image finished after {} of {} chunks",
                    self.next, g.chunk_count
                ),
            });
        }
        let index_offset = self.offset;
        // Stream the index in pieces so it is never held twice in memory.
        let mut hasher = IndexHasher::new(g.chunk_count);
        let mut buf = Vec::with_capacity(1 << 16);
        buf.extend_from_slice(&INDEX_MAGIC);
        buf.extend_from_slice(&g.chunk_count.to_le_bytes());
        let mut written = 0u64;
        let entries = std::mem::take(&mut self.entries);
        for e in &entries {
            hasher.push(e);
            e.encode(&mut buf);
            if buf.len() >= 1 << 16 {
                self.write_raw(&buf, index_offset + written)?;
                written += buf.len() as u64;
                buf.clear();
            }
        }
        buf.extend_from_slice(&hasher.finish());
        let trailer_offset = index_offset + Index::encoded_len(g.chunk_count);
        let root_hash = self.root.finish();
        Trailer {
            index_offset,
            index_len: Index::encoded_len(g.chunk_count),
            chunk_count: g.chunk_count,
            disk_size: g.disk_size,
            root_hash,
        }
        .encode(&mut buf);
        self.write_raw(&buf, index_offset + written)?;
        self.out
            .flush()
            .map_err(|e| ImageError::image_write(trailer_offset, e))?;
        let image_bytes = index_offset + written + buf.len() as u64;
        Ok(ImageSummary {
            geometry: g,
            root_hash,
            hole_chunks: self.hole_chunks,
            data_bytes: self.data_bytes,
            stored_bytes: self.stored_bytes,
            image_bytes,
        })
    }

    fn write_raw(&mut self, bytes: &[u8], at: u64) -> Result<(), ImageError> {
        self.out
            .write_all(bytes)
            .map_err(|e| ImageError::image_write(at, e))
    }
}

/// What to capture, where, and how.
#[derive(Clone, Debug)]
pub struct MakeOptions {
    /// The disk to read (regular file or block device).
    pub source: PathBuf,
    /// The image file to create.
    pub image: PathBuf,
    /// Compression level.
    pub level: Level,
    /// Raw chunk size.
    pub chunk_size: u32,
    /// Compress workers; 0 means one per core.
    pub threads: usize,
    /// Replace an existing image file (otherwise refuse).
    pub overwrite: bool,
}

impl MakeOptions {
    /// Defaults: level 1, 1 MiB chunks, one worker per core, no overwrite.
    pub fn new(source: impl Into<PathBuf>, image: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            image: image.into(),
            level: Level::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: 0,
            overwrite: false,
        }
    }

    /// Sets the level.
    pub fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// Sets the chunk size.
    pub fn chunk_size(mut self, chunk_size: u32) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Sets the worker count.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Allows replacing an existing image.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }
}

/// Removes the temporary file unless disarmed.
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// The temporary name an image is written under until complete:
/// `.NAME.imgcast-tmp` in the same directory, so the final rename is atomic.
pub fn temp_path_for(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    image.with_file_name(format!(".{name}.imgcast-tmp"))
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Captures a disk into an image file.
///
/// The image is written under [`temp_path_for`], fsync'd, and renamed into
/// place only when complete; on any error the temporary file is removed and
/// the final name is never created.
pub fn make(
    opts: &MakeOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ImageSummary, ImageError> {
    if !opts.overwrite && fs::symlink_metadata(&opts.image).is_ok() {
        return Err(ImageError::ImageExists {
            path: opts.image.clone(),
        });
    }
    let source = DiskSource::open(&opts.source)?;
    let stream = spawn_encoder(source, opts.chunk_size, opts.level, opts.threads)?;
    let geometry = stream.geometry();

    let tmp = temp_path_for(&opts.image);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ImageError::io("create", &tmp, e))?;
    let mut guard = TempGuard {
        path: Some(tmp.clone()),
    };
    let summary = write_stream(&file, geometry, stream, progress)?;
    file.sync_all()
        .map_err(|e| ImageError::io("fsync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, &opts.image)
        .map_err(|e| ImageError::io("rename into place", &opts.image, e))?;
    guard.path = None;
    // Make the rename itself durable.
    if let Some(dir) = opts.image.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(summary)
}

fn write_stream(
    file: &File,
    geometry: Geometry,
    mut stream: crate::encoder::ChunkStream,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ImageSummary, ImageError> {
    let header = Header::new(geometry, now_unix());
    let mut writer = ImageWriter::new(BufWriter::with_capacity(1 << 20, file), header)?;
    progress(stream.progress());
    while let Some(chunk) = stream.next() {
        writer.write_chunk(&chunk?)?;
        progress(stream.progress());
    }
    writer.finish()
}
