//! Writing image files: [`ImageWriter`] lays out records front to back and
//! finishes with the index and trailer; [`make`] drives a whole capture.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use imgcast_disk::Extents;

use crate::blocks::encode_maps;
use crate::chunk::{EncodedChunk, RootHasher};
use crate::codec::{checksum8, Codec};
use crate::encoder::{spawn_encoder, ChunkStream, DiskSource, EncodeOptions, Progress};
use crate::format::{
    Geometry, Header, Index, IndexEntry, IndexHasher, RecordHeader, Trailer, DEFAULT_CHUNK_SIZE,
    FORMAT_MAJOR, INDEX_MAGIC, MAX_LAYOUT_LEN,
};
use crate::{ImageError, Level};

/// What a finished image holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    /// Disk size, chunk and block size, chunk count, smallest target, level.
    pub geometry: Geometry,
    /// The root hash.
    pub root_hash: [u8; 32],
    /// Number of chunks without data blocks (nothing stored).
    pub hole_chunks: u64,
    /// Bytes of used blocks (what a restore reproduces).
    pub used_bytes: u64,
    /// Bytes of data blocks: used and not all zero (what a restore writes).
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
    used_bytes: u64,
    data_bytes: u64,
    stored_bytes: u64,
    scratch: Vec<u8>,
}

impl<W: Write> ImageWriter<W> {
    /// Writes the header of an image without a layout.
    pub fn new(out: W, header: Header) -> Result<Self, ImageError> {
        Self::with_layout(out, header, &[])
    }

    /// Writes the header and the layout blob (opaque to this crate: the
    /// disk layout as JSON, at most [`MAX_LAYOUT_LEN`] bytes), filling in
    /// the header's layout length and hash. Only the current format is
    /// written.
    pub fn with_layout(mut out: W, mut header: Header, layout: &[u8]) -> Result<Self, ImageError> {
        if header.major != FORMAT_MAJOR || header.geometry.major != FORMAT_MAJOR {
            return Err(ImageError::InvalidGeometry {
                reason: format!(
                    "this img writes format {FORMAT_MAJOR} only, not {}",
                    header.major
                ),
            });
        }
        header.layout_len = checked_layout_len(layout)?;
        header.layout_hash = *blake3::hash(layout).as_bytes();
        let mut bytes = header.to_bytes();
        bytes.extend_from_slice(layout);
        out.write_all(&bytes)
            .map_err(|e| ImageError::image_write(0, e))?;
        Ok(Self {
            out,
            header,
            offset: header.records_offset(),
            next: 0,
            // Index entries are 64 bytes per chunk: 64 MiB for a 1 TiB disk
            // in 1 MiB chunks. Reserve lazily: the count comes from the header.
            entries: Vec::new(),
            root: RootHasher::new(&header.geometry),
            hole_chunks: 0,
            used_bytes: 0,
            data_bytes: 0,
            stored_bytes: 0,
            scratch: Vec::with_capacity(1024),
        })
    }

    /// The header written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Appends one chunk record: header, bitmaps, payload. Checks that it is
    /// the next chunk and fits the geometry.
    pub fn write_chunk(&mut self, chunk: &EncodedChunk) -> Result<(), ImageError> {
        let g = self.header.geometry;
        if chunk.index != self.next {
            return Err(ImageError::BadChunk {
                chunk: chunk.index,
                reason: format!("out of order: expected chunk {}", self.next),
            });
        }
        chunk.check_geometry(&g)?;
        let mut maps = Vec::new();
        encode_maps(&chunk.used, &chunk.data, &mut maps);
        let rec = RecordHeader {
            index: chunk.index,
            kind: chunk.kind,
            used: chunk.used.used_encoding(),
            data: chunk.data.data_encoding(&chunk.used),
            raw_len: chunk.raw_len,
            stored_len: chunk.stored_len(),
            data_len: chunk.data_len(),
            // At most two maps of MAX_MAP_LEN bytes.
            maps_len: maps.len() as u32,
            hash: chunk.hash,
            maps_sum: checksum8(&maps),
        };
        self.scratch.clear();
        rec.encode(&mut self.scratch);
        self.scratch.extend_from_slice(&maps);
        let at = self.offset;
        self.out
            .write_all(&self.scratch)
            .and_then(|()| self.out.write_all(&chunk.payload))
            .map_err(|e| ImageError::image_write(at, e))?;
        let used_len = chunk.used_len();
        self.entries.push(IndexEntry::of_record(&rec, at, used_len));
        self.root.push(&chunk.hash);
        self.offset += rec.record_len();
        self.next += 1;
        if chunk.data.is_empty() {
            self.hole_chunks += 1;
        }
        self.used_bytes += u64::from(used_len);
        self.data_bytes += u64::from(rec.data_len);
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
        let index_len = Index::<IndexEntry>::encoded_len(g.chunk_count);
        let trailer_offset = index_offset + index_len;
        let root_hash = self.root.finish();
        Trailer {
            index_offset,
            index_len,
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
            used_bytes: self.used_bytes,
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
    /// Block size of the maps; `None` picks one from the map
    /// ([`crate::choose_block_size`]).
    pub block_size: Option<u32>,
    /// Compress workers; 0 means one per core.
    pub threads: usize,
    /// Replace an existing image file (otherwise refuse).
    pub overwrite: bool,
    /// The used bytes of the source (filesystem maps); `None` is raw mode,
    /// a byte-exact whole-disk image.
    pub used: Option<Arc<Extents>>,
    /// The disk layout (JSON, written by the caller, at most 1 MiB), stored
    /// as it is and returned by the readers.
    pub layout: Option<Vec<u8>>,
    /// Smallest target the image may be restored onto (see
    /// [`EncodeOptions::min_target_size`]); `None` is the disk size.
    pub min_target_size: Option<u64>,
}

impl MakeOptions {
    /// Defaults: raw mode, level 1, 1 MiB chunks, one worker per core, no
    /// layout, no overwrite.
    pub fn new(source: impl Into<PathBuf>, image: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            image: image.into(),
            level: Level::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            block_size: None,
            threads: 0,
            overwrite: false,
            used: None,
            layout: None,
            min_target_size: None,
        }
    }

    /// Sets the map of used bytes.
    pub fn used(mut self, used: Option<Arc<Extents>>) -> Self {
        self.used = used;
        self
    }

    /// Sets the layout blob.
    pub fn layout(mut self, layout: Option<Vec<u8>>) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the smallest target size.
    pub fn min_target_size(mut self, min_target_size: Option<u64>) -> Self {
        self.min_target_size = min_target_size;
        self
    }

    /// Sets the block size.
    pub fn block_size(mut self, block_size: Option<u32>) -> Self {
        self.block_size = block_size;
        self
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
    let layout = opts.layout.as_deref().unwrap_or_default();
    checked_layout_len(layout)?;
    let source = DiskSource::open(&opts.source)?;
    let encode = EncodeOptions::new(opts.level)
        .chunk_size(opts.chunk_size)
        .block_size(opts.block_size)
        .threads(opts.threads)
        .used(opts.used.clone())
        .min_target_size(opts.min_target_size);
    let stream = spawn_encoder(source, &encode)?;

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
    let summary = write_stream(&file, stream, layout, progress)?;
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
    mut stream: ChunkStream,
    layout: &[u8],
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ImageSummary, ImageError> {
    let header = stream.header(now_unix());
    let mut writer =
        ImageWriter::with_layout(BufWriter::with_capacity(1 << 20, file), header, layout)?;
    progress(stream.progress());
    while let Some(chunk) = stream.next() {
        let chunk = chunk?;
        writer.write_chunk(&chunk)?;
        stream.recycle(chunk);
        progress(stream.progress());
    }
    writer.finish()
}

/// The length of a layout blob, refused above [`MAX_LAYOUT_LEN`].
fn checked_layout_len(layout: &[u8]) -> Result<u32, ImageError> {
    u32::try_from(layout.len())
        .ok()
        .filter(|&n| n <= MAX_LAYOUT_LEN)
        .ok_or(ImageError::LayoutTooLarge {
            len: layout.len() as u64,
            max: MAX_LAYOUT_LEN,
        })
}
