//! The read → compress pipeline that turns a disk into an ordered stream of
//! [`EncodedChunk`]s, shared by `img make` and the multicast master.
//!
//! ```text
//!  reader thread ──(raw used blocks, ≤ window)──▶ N compress workers ──▶ reorder ──▶ ChunkStream::next()
//!        │ chunks without a used block: not read ─────────────────────────▲             │
//!        ▲                                                                              │
//!        └─────────────────────── one window token per delivered chunk ◀───────────────┘
//! ```
//!
//! With a map of used bytes ([`EncodeOptions::used`]) only the used blocks
//! are read (runs closer than 64 KiB are read in one go) and a chunk with no
//! used block is not read at all; without one (raw mode) every block is used.
//!
//! Memory bound: the reader takes a window token before reading a chunk and
//! the consumer returns it when the chunk is delivered, so at most
//! `WINDOW_PER_THREAD × threads` chunks exist between disk and consumer —
//! each at most one raw buffer plus one payload, i.e. about
//! `2 × 4 × threads × chunk_size` bytes (64 MiB for 8 threads and 1 MiB
//! chunks), whatever the disk size. Buffers come from a bounded pool and go
//! back to it ([`ChunkStream::recycle`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use imgcast_disk::{DiskKind, Extents};

use crate::blocks::BlockMap;
use crate::chunk::{Compressor, EncodedChunk};
use crate::format::{
    Geometry, Header, COMPAT_MAPPED, DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE, MIN_BLOCK_SIZE,
};
use crate::pool::BufferPool;
use crate::{ImageError, Level};

/// Chunks in flight per worker thread (see the module docs).
pub const WINDOW_PER_THREAD: usize = 4;

/// Free gaps shorter than this between used runs of a chunk are read
/// through: one larger read costs less than two seeks.
const READ_GAP: u64 = 64 << 10;

/// What to encode and how.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Raw chunk size.
    pub chunk_size: u32,
    /// Block size of the maps; `None` picks one ([`choose_block_size`]).
    pub block_size: Option<u32>,
    /// Compression level.
    pub level: Level,
    /// Compress workers; 0 means one per core.
    pub threads: usize,
    /// The used bytes of the disk (from filesystem maps); `None` is raw
    /// mode: every byte is used and the image is byte-exact.
    pub used: Option<Arc<Extents>>,
    /// Smallest target the image may be restored onto; `None` is the disk
    /// size. Lower it only when every used byte at or beyond it is data a
    /// retargeting step relocates (a GPT backup header and table).
    pub min_target_size: Option<u64>,
}

impl EncodeOptions {
    /// Raw mode, 1 MiB chunks, one worker per core.
    pub fn new(level: Level) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            block_size: None,
            level,
            threads: 0,
            used: None,
            min_target_size: None,
        }
    }

    /// Sets the chunk size.
    pub fn chunk_size(mut self, chunk_size: u32) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Sets the block size.
    pub fn block_size(mut self, block_size: Option<u32>) -> Self {
        self.block_size = block_size;
        self
    }

    /// Sets the worker count.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Sets the map of used bytes.
    pub fn used(mut self, used: Option<Arc<Extents>>) -> Self {
        self.used = used;
        self
    }

    /// Sets the smallest target size.
    pub fn min_target_size(mut self, min_target_size: Option<u64>) -> Self {
        self.min_target_size = min_target_size;
        self
    }
}

/// Bytes that rounding a map out to a coarser block may add, at most, per
/// used byte: a few sectors of a partition table's padding are worth
/// storing when coarser blocks shrink every chunk's bitmaps eightfold.
const ROUNDING_SLACK: u64 = 1024;

/// The block size for a map and a chunk size: the coarsest power of two, at
/// most [`DEFAULT_BLOCK_SIZE`] (fine-grained zero detection, maps of 32 bytes
/// per MiB) and at most what divides the chunk size, whose outward rounding
/// of the map adds no more than 1/[`ROUNDING_SLACK`] of its bytes (a GPT's
/// 34-sector table then no longer forces 512-byte blocks on a disk of 4 KiB
/// filesystems); at least [`MIN_BLOCK_SIZE`]. Rounding is outwards, so a
/// coarser block stores a few more bytes, never drops a used one.
pub fn choose_block_size(used: Option<&Extents>, chunk_size: u32) -> u32 {
    let cap = DEFAULT_BLOCK_SIZE.min(chunk_size & chunk_size.wrapping_neg());
    let Some(m) = used else {
        return cap.max(MIN_BLOCK_SIZE);
    };
    let exact = m.alignment(u64::from(cap));
    let total = m.total();
    let mut b = u64::from(cap.max(MIN_BLOCK_SIZE));
    while b > exact.max(u64::from(MIN_BLOCK_SIZE)) {
        let added = m.rounded_out(b, u64::MAX).total() - total;
        if added <= total / ROUNDING_SLACK {
            break;
        }
        b /= 2;
    }
    // `b` never exceeds `cap`, so the cast is lossless.
    b as u32
}

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

type Job = (u64, Vec<u8>, BlockMap);
type Done = (u64, Result<EncodedChunk, ImageError>);

/// The ordered output of [`spawn_encoder`]: an iterator of encoded chunks,
/// index 0 first. After an error it ends. Dropping it stops and joins the
/// threads.
#[derive(Debug)]
pub struct ChunkStream {
    geometry: Geometry,
    mapped: bool,
    used_bytes: u64,
    results: Option<Receiver<Done>>,
    tokens: Option<Sender<()>>,
    pool: BufferPool,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pending: BTreeMap<u64, Result<EncodedChunk, ImageError>>,
    next: u64,
    done_bytes: u64,
    failed: bool,
}

/// The used blocks of chunk `index` according to `map` (`None`: all).
fn used_blocks(g: &Geometry, map: Option<&Extents>, index: u64) -> BlockMap {
    let blocks = g.blocks_in(index);
    let Some(map) = map else {
        return BlockMap::full(blocks);
    };
    let start = g.chunk_offset(index);
    let end = start + u64::from(g.chunk_len(index));
    let bs = u64::from(g.block_size);
    let mut used = BlockMap::empty(blocks);
    for e in map.within(start, end) {
        // Block indices within one chunk fit in u32.
        used.set_range(((e.start - start) / bs) as u32..(e.end - start).div_ceil(bs) as u32);
    }
    used
}

/// Byte spans of a chunk to read: the used runs, joined across gaps
/// shorter than [`READ_GAP`].
fn read_spans(used: &BlockMap, block_size: u32, raw_len: u32) -> Vec<(u64, u64)> {
    let bs = u64::from(block_size);
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for run in used.runs() {
        let s = u64::from(run.start) * bs;
        let e = (u64::from(run.end) * bs).min(u64::from(raw_len));
        match spans.last_mut() {
            Some(last) if s - last.1 < READ_GAP => last.1 = e,
            _ => spans.push((s, e)),
        }
    }
    spans
}

/// Starts reading and compressing `source`: only the used blocks when a
/// map is given, every block otherwise.
pub fn spawn_encoder(source: DiskSource, opts: &EncodeOptions) -> Result<ChunkStream, ImageError> {
    let size = source.size();
    let block_size = match opts.block_size {
        Some(b) => b,
        None => choose_block_size(opts.used.as_deref(), opts.chunk_size),
    };
    let geometry = Geometry::new(size, opts.chunk_size, opts.level)?
        .with_block_size(block_size)?
        .with_min_target_size(opts.min_target_size.unwrap_or(size))?;
    // Whole blocks inside the disk, never fewer bytes than the map says.
    let map: Option<Arc<Extents>> = opts
        .used
        .as_deref()
        .map(|m| Arc::new(m.clipped(size).rounded_out(u64::from(block_size), size)));
    let used_bytes = map.as_deref().map_or(size, Extents::total);
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        opts.threads
    };
    let level = opts.level;
    let window = WINDOW_PER_THREAD * threads;
    let (token_tx, token_rx) = bounded::<()>(window);
    for _ in 0..window {
        // The channel has exactly `window` slots; this cannot block or fail.
        let _ = token_tx.send(());
    }
    let (job_tx, job_rx) = bounded::<Job>(window);
    let (done_tx, done_rx) = bounded::<Done>(window);
    let pool = BufferPool::new(2 * window);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(threads + 1);

    for _ in 0..threads {
        let job_rx = job_rx.clone();
        let done_tx = done_tx.clone();
        let pool = pool.clone();
        handles.push(std::thread::spawn(move || {
            imgcast_disk::lower_thread_priority();
            let mut compressor = Compressor::new();
            for (index, raw, used) in job_rx {
                let (chunk, spare) = EncodedChunk::encode_owned(
                    index,
                    raw,
                    used,
                    block_size,
                    level,
                    &mut compressor,
                    pool.get(),
                );
                pool.put(spare);
                if done_tx.send((index, Ok(chunk))).is_err() {
                    return;
                }
            }
        }));
    }
    drop(job_rx);

    let reader_stop = Arc::clone(&stop);
    let reader_pool = pool.clone();
    let reader_map = map.clone();
    handles.push(std::thread::spawn(move || {
        for index in 0..geometry.chunk_count {
            // Wait for room in the window; a disconnect means the consumer left.
            if token_rx.recv().is_err() || reader_stop.load(Ordering::Relaxed) {
                return;
            }
            let len = geometry.chunk_len(index);
            let used = used_blocks(&geometry, reader_map.as_deref(), index);
            if used.is_empty() {
                let free = EncodedChunk::free(index, len, block_size);
                if done_tx.send((index, Ok(free))).is_err() {
                    return;
                }
                continue;
            }
            let mut buf = reader_pool.get();
            buf.resize(len as usize, 0);
            let base = geometry.chunk_offset(index);
            for (s, e) in read_spans(&used, block_size, len) {
                // Spans lie inside the chunk, whose length fits in usize.
                if let Err(err) = source.read_at(&mut buf[s as usize..e as usize], base + s) {
                    let _ = done_tx.send((index, Err(err)));
                    return;
                }
            }
            if job_tx.send((index, buf, used)).is_err() {
                return;
            }
        }
    }));

    Ok(ChunkStream {
        geometry,
        mapped: map.is_some(),
        used_bytes,
        results: Some(done_rx),
        tokens: Some(token_tx),
        pool,
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

    /// The image header for this stream (with [`COMPAT_MAPPED`] when a map
    /// of used bytes was given).
    pub fn header(&self, created: u64) -> Header {
        let mut h = Header::new(self.geometry, created);
        if self.mapped {
            h.compat_features |= COMPAT_MAPPED;
        }
        h
    }

    /// Bytes of the disk the image keeps (the disk size in raw mode).
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Raw bytes delivered so far out of the disk size.
    pub fn progress(&self) -> Progress {
        Progress {
            done_bytes: self.done_bytes,
            total_bytes: self.geometry.disk_size,
        }
    }

    /// Gives a delivered chunk's payload buffer back for reuse.
    pub fn recycle(&self, chunk: EncodedChunk) {
        self.pool.put(chunk.payload);
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

#[cfg(test)]
mod tests {
    use super::*;
    use imgcast_disk::Extent;

    fn extents(spans: &[(u64, u64)]) -> Extents {
        spans
            .iter()
            .filter_map(|&(s, l)| Extent::new(s, l))
            .collect()
    }

    #[test]
    fn block_size_follows_the_map() {
        assert_eq!(choose_block_size(None, 1 << 20), 4096);
        assert_eq!(choose_block_size(None, 12800), 512);
        let fs4k = extents(&[(1 << 20, 40 << 20), (100 << 20, 4096)]);
        assert_eq!(choose_block_size(Some(&fs4k), 1 << 20), 4096);
        // One odd 1 KiB block among 40 MiB: rounded out (3 KiB more), 4 KiB blocks.
        let odd1k = extents(&[(1 << 20, 40 << 20), (100 << 20, 1024)]);
        assert_eq!(choose_block_size(Some(&odd1k), 1 << 20), 4096);
        // A filesystem of scattered 1 KiB blocks: 4 KiB would store four times as much.
        let pairs: Vec<(u64, u64)> = (0..1000u64).map(|i| (i * 8192 + 1024, 1024)).collect();
        let fs1k = extents(&pairs);
        assert_eq!(choose_block_size(Some(&fs1k), 1 << 20), 1024);
        let bytes = extents(&[(100, 3)]);
        assert_eq!(choose_block_size(Some(&bytes), 1 << 20), 512);
        assert_eq!(choose_block_size(Some(&Extents::new()), 1 << 20), 4096);
        // A GPT disk: 34 sectors of table, a 4 KiB-aligned filesystem of 1 GiB, 33 sectors of
        // backup: 4 KiB blocks (a few sectors of padding stored), not 512.
        let mut gpt = Extents::new();
        gpt.insert(0, 34 * 512);
        gpt.insert(1 << 20, 1 << 30);
        gpt.insert((2 << 30) - 33 * 512, 33 * 512);
        assert_eq!(choose_block_size(Some(&gpt), 1 << 20), 4096);
        // A map of little but scattered sectors stays exact.
        let mut sparse = Extents::new();
        for i in 0..100u64 {
            sparse.insert(i * 8192 + 512, 512);
        }
        assert_eq!(choose_block_size(Some(&sparse), 1 << 20), 512);
    }

    fn spans(m: &BlockMap) -> Vec<(u32, u32)> {
        m.runs().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn used_blocks_and_spans() -> Result<(), ImageError> {
        let g = Geometry::new(3 << 20 | 1000, 1 << 20, Level::FASTEST)?;
        let map = extents(&[
            (4096, 8192),
            (1 << 20, 4096),
            ((3 << 20) - 4096, 4096 + 1000),
        ]);
        let m0 = used_blocks(&g, Some(&map), 0);
        assert_eq!(spans(&m0), [(1, 3)]);
        assert_eq!(spans(&used_blocks(&g, Some(&map), 1)), [(0, 1)]);
        assert_eq!(spans(&used_blocks(&g, Some(&map), 2)), [(255, 256)]);
        assert!(used_blocks(&g, Some(&map), 3).is_full());
        assert!(used_blocks(&g, None, 3).is_full());
        let mut u = BlockMap::empty(256);
        u.set_range(0..2);
        u.set_range(10..12); // 32 KiB gap: joined
        u.set_range(100..101); // far: separate
        assert_eq!(
            read_spans(&u, 4096, 1 << 20),
            [(0, 12 * 4096), (100 * 4096, 101 * 4096)]
        );
        Ok(())
    }
}
