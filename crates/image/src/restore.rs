//! Restoring an image onto a disk or file.
//!
//! ```text
//!  image reader (this thread) ──(≤ 2×threads chunks)──▶ N workers: decompress, verify hash, pwrite
//! ```
//!
//! Memory bound: the queue holds at most `2 × threads` encoded chunks and
//! each worker one encoded plus one raw chunk, so about
//! `4 × threads × chunk_size` bytes, whatever the image size.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::bounded;

use crate::chunk::{Decompressor, EncodedChunk};
use crate::encoder::Progress;
use crate::format::{ChunkKind, Geometry};
use crate::reader::{ImageReader, StreamReader};
use crate::target::{DiskTarget, TargetOptions};
use crate::ImageError;

/// What to restore where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The image file; `-` means standard input (implies `sequential`).
    pub image: PathBuf,
    /// The disk or file to write.
    pub target: PathBuf,
    /// Decompress/write workers; 0 means one per core.
    pub threads: usize,
    /// Read the image front to back with [`StreamReader`] instead of
    /// validating its index first (for pipes and FIFOs).
    pub sequential: bool,
}

impl RestoreOptions {
    /// Random-access restore with one worker per core.
    pub fn new(image: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            target: target.into(),
            threads: 0,
            sequential: false,
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
}

/// What a completed restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreSummary {
    /// The restored disk's geometry.
    pub geometry: Geometry,
    /// The verified root hash.
    pub root_hash: [u8; 32],
    /// Raw bytes written (non-hole chunks).
    pub written_bytes: u64,
    /// Number of hole chunks.
    pub hole_chunks: u64,
}

/// Restores an image onto a target.
///
/// All checks that can be made before writing (image header, trailer,
/// index and root hash in random-access mode; the target's mount state,
/// size and free space) are made before the target is touched. Each chunk
/// is verified against its hash before it is written, so a corrupt chunk is
/// never written. On any later error the target keeps its incomplete
/// marker — including a file the restore created itself, which is left in
/// place rather than silently deleted, so the user can see what happened.
pub fn restore(
    opts: &RestoreOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RestoreSummary, ImageError> {
    let threads = worker_count(opts.threads);
    if opts.image.as_os_str() == "-" {
        return restore_stream(io::stdin().lock(), &opts.target, threads, progress);
    }
    if opts.sequential {
        let f =
            File::open(&opts.image).map_err(|e| ImageError::io("open image", &opts.image, e))?;
        return restore_stream(
            BufReader::with_capacity(1 << 20, f),
            &opts.target,
            threads,
            progress,
        );
    }
    let reader = ImageReader::open(&opts.image)?;
    let geometry = reader.geometry();
    let target = DiskTarget::open(
        &opts.target,
        &geometry,
        &TargetOptions {
            root_hash: Some(reader.root_hash()),
            data_bytes: Some(reader.data_bytes()),
        },
    )?;
    let index = reader.index();
    let chunks = (0..geometry.chunk_count)
        .map(|i| reader.read_chunk(i).map(|c| (c, index[i as usize].offset)));
    let (written_bytes, hole_chunks) = run(&target, chunks, threads, progress)?;
    target.finish()?;
    Ok(RestoreSummary {
        geometry,
        root_hash: reader.root_hash(),
        written_bytes,
        hole_chunks,
    })
}

/// Restores an image read front to back from `source` (a pipe, stdin, a
/// socket). The root hash is known, and checked, only at the end; the
/// target's free space cannot be checked up front.
pub fn restore_stream<R: Read>(
    source: R,
    target: &Path,
    threads: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<RestoreSummary, ImageError> {
    let mut stream = StreamReader::new(source)?;
    let geometry = stream.geometry();
    let target = DiskTarget::open(target, &geometry, &TargetOptions::default())?;
    let (written_bytes, hole_chunks) = run(&target, &mut stream, worker_count(threads), progress)?;
    let Some(root_hash) = stream.root_hash() else {
        // `run` consumed the stream to its validated end or returned its error.
        return Err(ImageError::TrailerMissing { len: 0 });
    };
    target.finish()?;
    Ok(RestoreSummary {
        geometry,
        root_hash,
        written_bytes,
        hole_chunks,
    })
}

fn worker_count(threads: usize) -> usize {
    if threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        threads
    }
}

/// Feeds chunks to `threads` workers that verify and write them. Returns
/// (bytes written, hole chunks) or the first error.
fn run(
    target: &DiskTarget,
    chunks: impl Iterator<Item = Result<(EncodedChunk, u64), ImageError>>,
    threads: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(u64, u64), ImageError> {
    let total = target.geometry().disk_size;
    let done = AtomicU64::new(0);
    let written = AtomicU64::new(0);
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
        let (tx, rx) = bounded::<(EncodedChunk, u64)>(2 * threads);
        for _ in 0..threads {
            let rx = rx.clone();
            let (done, written, holes, stop, fail) = (&done, &written, &holes, &stop, &fail);
            s.spawn(move || {
                let mut d = Decompressor::new();
                let mut raw = Vec::new();
                for (chunk, offset) in rx {
                    if stop.load(Ordering::Relaxed) {
                        continue; // drain so the reader never blocks
                    }
                    let res = chunk
                        .verified(&mut raw, &mut d)
                        .map_err(|e| e.at_offset(offset))
                        .and_then(|bytes| {
                            if chunk.kind == ChunkKind::Hole {
                                holes.fetch_add(1, Ordering::Relaxed);
                                target.write_hole(chunk.index)
                            } else {
                                written.fetch_add(u64::from(chunk.raw_len), Ordering::Relaxed);
                                target.write_chunk(chunk.index, bytes)
                            }
                        });
                    match res {
                        Ok(()) => {
                            let n = done.fetch_add(u64::from(chunk.raw_len), Ordering::Relaxed)
                                + u64::from(chunk.raw_len);
                            progress(Progress {
                                done_bytes: n,
                                total_bytes: total,
                            });
                        }
                        Err(e) => fail(e),
                    }
                }
            });
        }
        drop(rx);
        for item in chunks {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match item {
                Ok(x) => {
                    if tx.send(x).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    fail(e);
                    break;
                }
            }
        }
        drop(tx);
    });
    match first_err.into_inner() {
        Ok(Some(e)) => Err(e),
        Ok(None) => Ok((written.into_inner(), holes.into_inner())),
        Err(_) => Err(ImageError::WorkerPanicked("restore")),
    }
}
