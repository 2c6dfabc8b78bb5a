//! The read → compress pipeline that turns a disk into an ordered stream of
//! [`EncodedChunk`]s, shared by `img make` and the multicast master.
//!
//! ```text
//!  reader thread ──(raw, ≤ window)──▶ N compress workers ──▶ reorder ──▶ ChunkStream::next()
//!        ▲                                                                     │
//!        └──────────────────── one window token per delivered chunk ◀──────────┘
//! ```
//!
//! Memory bound: the reader takes a window token before reading a chunk and
//! the consumer returns it when the chunk is delivered, so at most
//! `WINDOW_PER_THREAD × threads` chunks exist between disk and consumer —
//! each at most one raw buffer plus one payload, i.e. about
//! `2 × 4 × threads × chunk_size` bytes (64 MiB for 8 threads and 1 MiB
//! chunks), whatever the disk size.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use imgcast_disk::DiskKind;

use crate::chunk::{Compressor, EncodedChunk};
use crate::format::Geometry;
use crate::{ImageError, Level};

/// Chunks in flight per worker thread (see the module docs).
pub const WINDOW_PER_THREAD: usize = 4;

/// Progress in raw disk bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Progress {
    /// Raw bytes processed so far.
    pub done_bytes: u64,
    /// Raw bytes in total (the disk size).
    pub total_bytes: u64,
}

/// A disk opened read-only for imaging: a regular file or a block device.
#[derive(Debug)]
pub struct DiskSource {
    file: File,
    path: PathBuf,
    size: u64,
    kind: DiskKind,
}

impl DiskSource {
    /// Opens `path` read-only and finds its size (ioctl for block devices).
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let kind = imgcast_disk::disk_kind(path)?;
        let file = File::open(path).map_err(|e| ImageError::io("open source", path, e))?;
        let size =
            imgcast_disk::disk_size(&file).map_err(|e| ImageError::io("read size of", path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            kind,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Regular file or block device.
    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| ImageError::SourceRead {
                path: self.path.clone(),
                offset,
                source,
            })
    }
}

type Job = (u64, Vec<u8>);
type Done = (u64, Result<EncodedChunk, ImageError>);

/// The ordered output of [`spawn_encoder`]: an iterator of encoded chunks,
/// index 0 first. After an error it ends. Dropping it stops and joins the
/// threads.
#[derive(Debug)]
pub struct ChunkStream {
    geometry: Geometry,
    results: Option<Receiver<Done>>,
    tokens: Option<Sender<()>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pending: BTreeMap<u64, Result<EncodedChunk, ImageError>>,
    next: u64,
    done_bytes: u64,
    failed: bool,
}

/// Starts reading and compressing `source` with `threads` workers (0 means
/// one per core).
pub fn spawn_encoder(
    source: DiskSource,
    chunk_size: u32,
    level: Level,
    threads: usize,
) -> Result<ChunkStream, ImageError> {
    let geometry = Geometry::new(source.size(), chunk_size, level)?;
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        threads
    };
    let window = WINDOW_PER_THREAD * threads;
    let (token_tx, token_rx) = bounded::<()>(window);
    for _ in 0..window {
        // The channel has exactly `window` slots; this cannot block or fail.
        let _ = token_tx.send(());
    }
    let (job_tx, job_rx) = bounded::<Job>(window);
    let (done_tx, done_rx) = bounded::<Done>(window);
    let (spare_tx, spare_rx) = unbounded::<Vec<u8>>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(threads + 1);

    for _ in 0..threads {
        let job_rx = job_rx.clone();
        let done_tx = done_tx.clone();
        let spare_tx = spare_tx.clone();
        handles.push(std::thread::spawn(move || {
            let mut compressor = Compressor::new();
            for (index, raw) in job_rx {
                let chunk = EncodedChunk::encode(index, &raw, level, &mut compressor);
                let _ = spare_tx.send(raw);
                if done_tx.send((index, Ok(chunk))).is_err() {
                    return;
                }
            }
        }));
    }
    drop(job_rx);
    drop(spare_tx);

    let reader_stop = Arc::clone(&stop);
    handles.push(std::thread::spawn(move || {
        for index in 0..geometry.chunk_count {
            // Wait for room in the window; a disconnect means the consumer left.
            if token_rx.recv().is_err() || reader_stop.load(Ordering::Relaxed) {
                return;
            }
            let len = geometry.chunk_len(index) as usize;
            let mut buf = spare_rx.try_recv().unwrap_or_default();
            buf.resize(len, 0);
            if let Err(e) = source.read_at(&mut buf, geometry.chunk_offset(index)) {
                let _ = done_tx.send((index, Err(e)));
                return;
            }
            if job_tx.send((index, buf)).is_err() {
                return;
            }
        }
    }));

    Ok(ChunkStream {
        geometry,
        results: Some(done_rx),
        tokens: Some(token_tx),
        stop,
        threads: handles,
        pending: BTreeMap::new(),
        next: 0,
        done_bytes: 0,
        failed: false,
    })
}

impl ChunkStream {
    /// The geometry of the disk being encoded.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Raw bytes delivered so far out of the disk size.
    pub fn progress(&self) -> Progress {
        Progress {
            done_bytes: self.done_bytes,
            total_bytes: self.geometry.disk_size,
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Disconnecting both channels unblocks every thread: the reader
        // waits on tokens or jobs, workers on jobs or results.
        self.results = None;
        self.tokens = None;
        self.pending.clear();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Iterator for ChunkStream {
    type Item = Result<EncodedChunk, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.geometry.chunk_count {
            return None;
        }
        loop {
            if let Some(item) = self.pending.remove(&self.next) {
                self.next += 1;
                if let Some(t) = &self.tokens {
                    let _ = t.send(());
                }
                match &item {
                    Ok(c) => self.done_bytes += u64::from(c.raw_len),
                    Err(_) => {
                        self.failed = true;
                        self.shutdown();
                    }
                }
                return Some(item);
            }
            let received = self.results.as_ref().map(Receiver::recv);
            match received {
                Some(Ok((index, item))) => {
                    self.pending.insert(index, item);
                }
                _ => {
                    // All senders gone before chunk `next` arrived: a thread
                    // died (panicked). Report it rather than end short.
                    self.failed = true;
                    self.shutdown();
                    return Some(Err(ImageError::WorkerPanicked("encoder")));
                }
            }
        }
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        self.shutdown();
    }
}
