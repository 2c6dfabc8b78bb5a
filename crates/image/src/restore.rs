//! Restoring an image onto a disk or file.
//!
//! ```text
//!  image reader (this thread) ──(≤ window)──▶ N workers: decompress, verify ──▶ writer: reorder,
//!        ▲                                                                       merged writes
//!        └──────────────────── one window token per chunk written ◀──────────────────┘
//! ```
//!
//! The writer takes chunks in index order, so runs that continue across
//! chunk boundaries become one large `pwritev` (see `target.rs`).
//!
//! Memory bound: the reader takes a window token before reading a chunk and
//! the writer returns it when the chunk is written, so at most
//! `WINDOW_PER_THREAD × threads` chunks are in flight, each one payload plus
//! at most one decompressed buffer, plus the few chunks (at most 8 MiB of
//! them) a merged write holds: about `8 × threads × chunk_size` bytes,
//! whatever the image size. Buffers come from a bounded pool and go back to
//! it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::bounded;
use imgcast_disk::StorageId;

use crate::chunk::{Decompressor, EncodedChunk, VerifiedChunk};
use crate::encoder::{Progress, WINDOW_PER_THREAD};
use crate::format::Geometry;
use crate::pool::BufferPool;
use crate::reader::{ImageReader, StreamReader};
use crate::target::{DiskTarget, SequentialWriter, TargetOptions, TargetStats};
use crate::ImageError;

/// What to restore where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The image file; `-` means standard input (implies `sequential`).
    pub image: PathBuf,
    /// The disk or file to write.
    pub target: PathBuf,
    /// Decompress workers; 0 means one per core.
    pub threads: usize,
    /// Read the image front to back with [`StreamReader`] instead of
    /// validating its index first (for pipes and FIFOs).
    pub sequential: bool,
    /// Discard the free blocks of a block-device target (when it supports
    /// discard); otherwise they are left untouched.
    pub discard: bool,
    /// Size to give a regular-file target (default: the image's disk size).
    pub file_size: Option<u64>,
}

impl RestoreOptions {
    /// Random-access restore with one worker per core, no discard.
    pub fn new(image: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            target: target.into(),
            threads: 0,
            sequential: false,
            discard: false,
            file_size: None,
        }
    }

    /// Sets the worker count.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Reads the image front to back.
    pub fn sequential(mut self, sequential: bool) -> Self {
        self.sequential = sequential;
        self
    }

    /// Discards free blocks on a block device.
    pub fn discard(mut self, discard: bool) -> Self {
        self.discard = discard;
        self
    }

    /// Sets the size of a regular-file target.
    pub fn file_size(mut self, file_size: Option<u64>) -> Self {
        self.file_size = file_size;
        self
    }

    fn target_options(&self, image: Option<StorageId>) -> TargetOptions {
        TargetOptions {
            discard: self.discard,
            file_size: self.file_size,
            image,
            ..TargetOptions::default()
        }
    }
}

/// What a completed restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The restored disk's geometry.
    pub geometry: Geometry,
    /// The verified root hash.
    pub root_hash: [u8; 32],
    /// Bytes of data blocks written.
    pub written_bytes: u64,
    /// Number of chunks without data blocks.
    pub hole_chunks: u64,
    /// What the target saw, byte by byte (data, zero, free, discarded, beyond its end).
    pub stats: TargetStats,
}

/// Restores an image onto a target.
///
/// All checks that can be made before writing (image header, layout,
/// trailer, index and root hash in random-access mode; the target's mount
/// state, size, free space, and that it does not hold the image) are made
/// before the target is touched. Each chunk is verified against its hash
/// before it is written, so a corrupt chunk is never written. On any later
/// error the target keeps its incomplete marker — including a file the
/// restore created itself, which is left in place rather than silently
/// deleted, so the user can see what happened.
pub fn restore(
    opts: &RestoreOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RestoreSummary, ImageError> {
    if opts.image.as_os_str() == "-" {
        let stdin = io::stdin();
        let id = stdin_storage(&stdin);
        return restore_stream_with(stdin.lock(), opts, id, progress);
    }
    if opts.sequential {
        let f =
            File::open(&opts.image).map_err(|e| ImageError::io("open image", &opts.image, e))?;
        let id = f.metadata().ok().map(|m| StorageId::of(&m));
        return restore_stream_with(BufReader::with_capacity(1 << 20, f), opts, id, progress);
    }
    let reader = ImageReader::open(&opts.image)?;
    let geometry = reader.geometry();
    let target = DiskTarget::open(
        &opts.target,
        &geometry,
        &TargetOptions {
            root_hash: Some(reader.root_hash()),
            data_bytes: Some(reader.data_bytes()),
            ..opts.target_options(Some(reader.storage()))
        },
    )?;
    let index = reader.index();
    let mut next = 0u64;
    let chunks = |buf: Vec<u8>| {
        let i = next;
        if i >= geometry.chunk_count {
            return None;
        }
        next += 1;
        Some(
            reader
                .read_chunk_into(i, buf)
                .map(|c| (c, index[i as usize].offset)),
        )
    };
    let hole_chunks = run(&target, chunks, worker_count(opts.threads), progress)?;
    let stats = target.finish()?;
    Ok(RestoreSummary {
        geometry,
        root_hash: reader.root_hash(),
        written_bytes: stats.data_bytes,
        hole_chunks,
        stats,
    })
}

/// The identity of what standard input reads, when it is a file or device.
fn stdin_storage(stdin: &io::Stdin) -> Option<StorageId> {
    let fd = stdin.as_fd().try_clone_to_owned().ok()?;
    let meta = File::from(fd).metadata().ok()?;
    Some(StorageId::of(&meta))
}

/// Restores an image read front to back from `source` (a pipe, stdin, a
/// socket) onto `target`. The root hash is known, and checked, only at the
/// end; the target's free space cannot be checked up front.
pub fn restore_stream<R: Read>(
    source: R,
    target: &Path,
    threads: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RestoreSummary, ImageError> {
    let opts = RestoreOptions::new("-", target).threads(threads);
    restore_stream_with(source, &opts, None, progress)
}

/// [`restore_stream`] with the options of [`RestoreOptions`] (its `image`
/// and `sequential` are ignored) and, when known, where the stream's bytes
/// are stored, so a target holding them is refused.
pub fn restore_stream_with<R: Read>(
    source: R,
    opts: &RestoreOptions,
    image: Option<StorageId>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RestoreSummary, ImageError> {
    let mut stream = StreamReader::new(source)?;
    let geometry = stream.geometry();
    let target = DiskTarget::open(&opts.target, &geometry, &opts.target_options(image))?;
    let chunks = |buf: Vec<u8>| stream.next_chunk_into(buf).transpose();
    let hole_chunks = run(&target, chunks, worker_count(opts.threads), progress)?;
    let Some(root_hash) = stream.root_hash() else {
        // `run` consumed the stream to its validated end or returned its error.
        return Err(ImageError::TrailerMissing { len: 0 });
    };
    let stats = target.finish()?;
    Ok(RestoreSummary {
        geometry,
        root_hash,
        written_bytes: stats.data_bytes,
        hole_chunks,
        stats,
    })
}

fn worker_count(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        threads
    }
}

/// Gives a written chunk's buffers back to the pool.
fn recycle(pool: &BufferPool, chunk: VerifiedChunk) {
    let (payload, decoded) = chunk.into_buffers();
    pool.put(payload);
    if let Some(d) = decoded {
        pool.put(d);
    }
}

/// Reads chunks with `next` (given a reusable payload buffer; `None` once
/// the image is read to its validated end), verifies them on `threads`
/// workers and writes them in index order. Returns the number of chunks
/// without data, or the first error.
fn run(
    target: &DiskTarget,
    mut next: impl FnMut(Vec<u8>) -> Option<Result<(EncodedChunk, u64), ImageError>>,
    threads: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<u64, ImageError> {
    let total = target.geometry().disk_size;
    let window = WINDOW_PER_THREAD * threads;
    let pool = BufferPool::new(2 * window);
    let done = AtomicU64::new(0);
    let holes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<ImageError>> = Mutex::new(None);
    let fail = |e: ImageError| {
        stop.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = first_err.lock() {
            slot.get_or_insert(e);
        }
    };
    progress(Progress {
        done_bytes: 0,
        total_bytes: total,
    });
    std::thread::scope(|s| {
        let (token_tx, token_rx) = bounded::<()>(window);
        for _ in 0..window {
            // Exactly `window` slots: cannot block or fail.
            let _ = token_tx.send(());
        }
        let (work_tx, work_rx) = bounded::<(EncodedChunk, u64)>(window);
        let (done_tx, done_rx) = bounded::<(u64, Result<VerifiedChunk, ImageError>)>(window);
        for _ in 0..threads {
            let (work_rx, done_tx, pool, stop) = (work_rx.clone(), done_tx.clone(), &pool, &stop);
            s.spawn(move || {
                let mut d = Decompressor::new();
                for (chunk, offset) in work_rx {
                    if stop.load(Ordering::Relaxed) {
                        pool.put(chunk.payload);
                        continue; // drain so the reader never blocks
                    }
                    let index = chunk.index;
                    let res = chunk
                        .verify(pool.get(), &mut d)
                        .map_err(|e| e.at_offset(offset));
                    if let Err(e) = done_tx.send((index, res)) {
                        if let Ok(v) = e.into_inner().1 {
                            recycle(pool, v);
                        }
                    }
                }
            });
        }
        drop(work_rx);
        drop(done_tx);
        let (pool, stop, done, holes, fail) = (&pool, &stop, &done, &holes, &fail);
        s.spawn(move || {
            let mut writer = SequentialWriter::new(target);
            let mut put_back = |v: VerifiedChunk| recycle(pool, v);
            let mut pending: BTreeMap<u64, VerifiedChunk> = BTreeMap::new();
            let mut next_index = 0u64;
            'outer: for (index, res) in done_rx {
                match res {
                    Ok(v) => {
                        pending.insert(index, v);
                    }
                    Err(e) => {
                        fail(e);
                        break;
                    }
                }
                while let Some(v) = pending.remove(&next_index) {
                    let data = v.data();
                    let raw_len = u64::from(data.raw_len());
                    if data.data().is_empty() {
                        holes.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Err(e) = writer.push(v, &mut put_back) {
                        fail(e);
                        break 'outer;
                    }
                    next_index += 1;
                    let _ = token_tx.send(());
                    let n = done.fetch_add(raw_len, Ordering::Relaxed) + raw_len;
                    progress(Progress {
                        done_bytes: n,
                        total_bytes: total,
                    });
                }
            }
            if !stop.load(Ordering::Relaxed) {
                if let Err(e) = writer.finish(&mut put_back) {
                    fail(e);
                }
            }
            // Dropping the token sender here unblocks a reader waiting for room.
        });
        loop {
            if token_rx.recv().is_err() || stop.load(Ordering::Relaxed) {
                break;
            }
            match next(pool.get()) {
                Some(Ok(x)) => {
                    if work_tx.send(x).is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    fail(e);
                    break;
                }
                None => break,
            }
        }
        drop(work_tx);
    });
    match first_err.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok(holes.into_inner()),
        Err(_) => Err(ImageError::WorkerPanicked("restore")),
    }
}
