//! Restore targets: every safety check before the first write, writes of
//! exactly what an image holds, and the incomplete marker that keeps a
//! half-written disk from passing for a whole one.
//!
//! What a chunk asks for, run by run ([`ChunkData::runs`]):
//!
//! | run | regular file (fresh, truncated) | block device |
//! |---|---|---|
//! | data blocks | written | written |
//! | used-zero blocks | left as a hole (reads as zero); a run shorter than 64 KiB between data is written as zeros with that data | zeroed: written as zeros with the data around them when shorter than 64 KiB, `BLKZEROOUT` otherwise |
//! | free blocks | left as a hole | not touched; `BLKDISCARD`ed with [`TargetOptions::discard`] |
//! | at or beyond the target's end | — | — (allowed only past the image's smallest target size) |
//!
//! Runs that follow each other on the disk are merged into one `pwritev`
//! (and one `BLKZEROOUT` / `BLKDISCARD`), across chunks when a caller feeds
//! chunks in order through [`SequentialWriter`].

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, IoSlice};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use imgcast_disk::{DiskKind, StorageId};

use crate::blocks::BlockMap;
use crate::chunk::{ChunkData, RunKind, VerifiedChunk, ZEROS};
use crate::codec::{push_checksum8, Codec, DecodeError, Reader};
use crate::error::is_enospc;
use crate::format::Geometry;
use crate::writer::now_unix;
use crate::ImageError;

/// Used-zero runs shorter than this are written as zeros along with the
/// data around them (one large write) instead of a `BLKZEROOUT` each on a
/// device, or a hole each on a file (which would cut it into an extent per
/// block: restoring a 1 GiB disk with 4 KiB zero blocks scattered through
/// its data took 3.4 s instead of 2.7 s).
const INLINE_ZERO_MAX: u64 = 64 << 10;
/// A merged write is cut at this size (it may be larger when one run is).
/// Small enough that the bytes are still in the CPU cache when the kernel
/// copies them: with 8 MiB the page-cache copy of a 4-client session took
/// four times the CPU and a 4-client session 8% slower; a syscall per MiB costs
/// nothing measurable.
const MAX_WRITE: u64 = 1 << 20;
/// Most buffers gathered into one merged write.
const MAX_PIECES: usize = 1024;
/// Writeback is started after this many bytes were written, so the final
/// fsync has little left to flush.
pub const WRITEBACK_EVERY: u64 = 32 << 20;
/// Bytes at the start of the target written last, alone, after everything
/// else is on disk: one sector, which holds the whole incomplete marker, so
/// a torn write cannot leave the marker gone with the rest unwritten.
pub const FIRST_SECTOR: u64 = 512;

/// Magic of the incomplete marker (24 bytes, NUL-padded).
pub const INCOMPLETE_MAGIC: [u8; 24] = *b"IMGCAST-INCOMPLETE\0\0\0\0\0\0";
/// Encoded size of [`IncompleteMarker`].
pub const INCOMPLETE_MARKER_LEN: usize = 80;

/// Written at offset 0 of a target while a restore is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncompleteMarker {
    /// Root hash of the image being restored (all zeros when not known
    /// yet, as when restoring from a stream).
    pub root_hash: [u8; 32],
    /// When the restore started, seconds since the Unix epoch.
    pub started: u64,
    /// Disk size of the image being restored.
    pub disk_size: u64,
}

impl Codec for IncompleteMarker {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&INCOMPLETE_MAGIC);
        out.extend_from_slice(&self.root_hash);
        out.extend_from_slice(&self.started.to_le_bytes());
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        push_checksum8(out, start);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.position();
        r.expect_magic(&INCOMPLETE_MAGIC)?;
        let root_hash = r.array()?;
        let started = r.u64()?;
        let disk_size = r.u64()?;
        r.expect_checksum8(start)?;
        Ok(Self {
            root_hash,
            started,
            disk_size,
        })
    }
}

/// Reads the incomplete marker of a disk or file, if it carries one
/// (`img info TARGET` uses this to say "restore interrupted").
pub fn incomplete_marker(path: &Path) -> Result<Option<IncompleteMarker>, ImageError> {
    let file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
    let mut buf = [0u8; INCOMPLETE_MARKER_LEN];
    match file.read_exact_at(&mut buf, 0) {
        Ok(()) => Ok(IncompleteMarker::read(&mut Reader::new(&buf)).ok()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(ImageError::io("read", path, e)),
    }
}

/// What the target needs to know beyond the geometry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetOptions {
    /// Root hash of the image, recorded in the incomplete marker.
    pub root_hash: Option<[u8; 32]>,
    /// Bytes of data blocks. When known, a regular-file target is refused
    /// up front if its filesystem cannot hold them; when `None` (a stream),
    /// a full filesystem is reported when it happens.
    pub data_bytes: Option<u64>,
    /// Discard (`BLKDISCARD`) the free blocks of a block device when it
    /// supports it. Free blocks are otherwise not touched.
    pub discard: bool,
    /// Size to give a regular-file target (default: the image's disk
    /// size); at least the image's smallest target size. Block devices keep
    /// their own size.
    pub file_size: Option<u64>,
    /// Where the image being restored is stored: a target that holds it is
    /// refused (see [`imgcast_disk::image_on_target`]).
    pub image: Option<StorageId>,
}

/// What a restore did to its target, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Data blocks written.
    pub data_bytes: u64,
    /// Used-zero blocks (zeroed on a device, left as holes on a file).
    pub zero_bytes: u64,
    /// Free blocks (not touched).
    pub free_bytes: u64,
    /// Free blocks discarded.
    pub discarded_bytes: u64,
    /// Bytes of the image's disk at or beyond the target's end (skipped).
    pub beyond_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    data: AtomicU64,
    zero: AtomicU64,
    free: AtomicU64,
    discarded: AtomicU64,
    beyond: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TargetStats {
        TargetStats {
            data_bytes: self.data.load(Ordering::Relaxed),
            zero_bytes: self.zero.load(Ordering::Relaxed),
            free_bytes: self.free.load(Ordering::Relaxed),
            discarded_bytes: self.discarded.load(Ordering::Relaxed),
            beyond_bytes: self.beyond.load(Ordering::Relaxed),
        }
    }
}

/// A disk or file being restored onto.
///
/// Safe to share between threads: [`DiskTarget::write`] takes `&self` and
/// writes positionally, in any order. Chunk 0 is held in memory and written
/// last by [`DiskTarget::finish`]; until then the target starts with an
/// [`IncompleteMarker`].
#[derive(Debug)]
pub struct DiskTarget {
    file: File,
    path: PathBuf,
    kind: DiskKind,
    geometry: Geometry,
    /// The target's size (a device's, or what a file was sized to).
    size: u64,
    /// Bytes of the image written: `min(size, disk_size)`.
    end: u64,
    discard: bool,
    /// False once the device said it cannot discard.
    discard_works: AtomicBool,
    chunk0: Mutex<Option<VerifiedChunk>>,
    written: Vec<AtomicU64>,
    counters: Counters,
    dirty: AtomicU64,
}

impl DiskTarget {
    /// Runs every check, then prepares the target and writes the
    /// incomplete marker.
    ///
    /// Refuses, before writing anything: a target that holds the image
    /// being restored ([`TargetOptions::image`]); a mounted / swapped / held
    /// block device or one opened exclusively elsewhere; a target smaller
    /// than the image's smallest target size; a regular file backing a loop
    /// device; a regular file whose filesystem lacks room for `data_bytes`;
    /// anything that is not a regular file or block device. Creates a
    /// missing regular file (its directory must exist).
    pub fn open(
        path: &Path,
        geometry: &Geometry,
        options: &TargetOptions,
    ) -> Result<Self, ImageError> {
        let existing = match fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(ImageError::io("stat target", path, e)),
        };
        let too_small = |size: u64| ImageError::TargetTooSmall {
            path: path.to_path_buf(),
            size,
            needed: geometry.min_target_size,
            disk_size: geometry.disk_size,
        };
        if let Some(meta) = &existing {
            if DiskKind::of(meta).is_none() {
                return Err(imgcast_disk::DiskError::NotADisk {
                    path: path.to_path_buf(),
                }
                .into());
            }
            if let Some(why) = options
                .image
                .and_then(|img| imgcast_disk::image_on_target(&img, path, meta))
            {
                return Err(ImageError::TargetHoldsImage {
                    path: path.to_path_buf(),
                    why,
                });
            }
            if let Some(by) = imgcast_disk::mounted_status(path)? {
                return Err(imgcast_disk::DiskError::InUse {
                    path: path.to_path_buf(),
                    by,
                }
                .into());
            }
        }
        let is_device = existing.as_ref().and_then(DiskKind::of) == Some(DiskKind::BlockDevice);
        let file_size = options.file_size.unwrap_or(geometry.disk_size);
        if !is_device {
            if file_size < geometry.min_target_size {
                return Err(too_small(file_size));
            }
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let free =
                imgcast_disk::free_space(dir).map_err(|e| ImageError::io("statvfs", dir, e))?;
            // Truncating the old file gives its blocks back.
            let reclaim = existing.as_ref().map_or(0, |m| m.blocks() * 512);
            let available = free.saturating_add(reclaim);
            if let Some(data) = options.data_bytes {
                if data > available {
                    return Err(ImageError::TargetNoRoom {
                        path: path.to_path_buf(),
                        available,
                        needed: data,
                    });
                }
            }
        }
        let (file, kind) = imgcast_disk::open_target_exclusive(path)?;
        let size = if kind == DiskKind::BlockDevice {
            let size = imgcast_disk::disk_size(&file)
                .map_err(|e| ImageError::io("read size of", path, e))?;
            if size < geometry.min_target_size {
                return Err(too_small(size));
            }
            size
        } else {
            file_size
        };
        let words = geometry.chunk_count.div_ceil(64) as usize;
        let target = Self {
            file,
            path: path.to_path_buf(),
            kind,
            geometry: *geometry,
            size,
            end: size.min(geometry.disk_size),
            discard: options.discard && kind == DiskKind::BlockDevice,
            discard_works: AtomicBool::new(true),
            chunk0: Mutex::new(None),
            written: (0..words).map(|_| AtomicU64::new(0)).collect(),
            counters: Counters::default(),
            dirty: AtomicU64::new(0),
        };
        target.prepare(options)?;
        Ok(target)
    }

    /// Sizes the target and writes the incomplete marker over chunk 0.
    fn prepare(&self, options: &TargetOptions) -> Result<(), ImageError> {
        let g = &self.geometry;
        let fail = |source: io::Error| self.write_error(0, source);
        if self.kind == DiskKind::RegularFile {
            // Truncate first so every byte not written reads as zero and
            // holes stay sparse.
            self.file.set_len(0).map_err(fail)?;
            self.file.set_len(self.size).map_err(fail)?;
        }
        let len0 = u64::from(g.chunk_len(0)).min(self.end) as usize;
        if len0 == 0 {
            return Ok(());
        }
        let mut region = IncompleteMarker {
            root_hash: options.root_hash.unwrap_or([0; 32]),
            started: now_unix(),
            disk_size: g.disk_size,
        }
        .to_bytes();
        // On a device, blank the whole of chunk 0 so no old boot sector,
        // partition table or superblock survives next to the marker.
        let blank = match self.kind {
            DiskKind::BlockDevice => len0,
            DiskKind::RegularFile => region.len().min(len0),
        };
        region.resize(blank, 0);
        region.truncate(len0);
        self.file.write_all_at(&region, 0).map_err(fail)?;
        self.file.sync_all().map_err(fail)?;
        Ok(())
    }

    /// The error for a failed write at disk offset `offset`, naming the
    /// chunk that holds it.
    fn write_error(&self, offset: u64, source: io::Error) -> ImageError {
        let chunk = offset / u64::from(self.geometry.chunk_size);
        if is_enospc(&source) {
            ImageError::TargetNoSpace {
                path: self.path.clone(),
                chunk,
                offset,
            }
        } else {
            ImageError::TargetWrite {
                path: self.path.clone(),
                chunk,
                offset,
                source,
            }
        }
    }

    /// The target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Regular file or block device.
    pub fn kind(&self) -> DiskKind {
        self.kind
    }

    /// The geometry being restored.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The target's size: a device's own, or what a file was sized to.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What was written so far.
    pub fn stats(&self) -> TargetStats {
        self.counters.snapshot()
    }

    fn check_chunk(&self, data: &ChunkData<'_>) -> Result<(), ImageError> {
        let g = &self.geometry;
        let index = data.index();
        if index >= g.chunk_count
            || data.raw_len() != g.chunk_len(index)
            || data.block_size() != g.block_size
        {
            return Err(ImageError::BadChunk {
                chunk: index,
                reason: format!(
                    "{} bytes in {}-byte blocks for a chunk of {} in {}-byte blocks (of {} chunks)",
                    data.raw_len(),
                    data.block_size(),
                    g.chunk_len(index),
                    g.block_size,
                    g.chunk_count
                ),
            });
        }
        Ok(())
    }

    fn mark(&self, index: u64) {
        self.written[(index / 64) as usize].fetch_or(1 << (index % 64), Ordering::Relaxed);
    }

    /// Writes what one verified chunk holds (see the module docs). Any
    /// order, any thread. Chunk 0 is kept in memory until
    /// [`DiskTarget::finish`].
    pub fn write(&self, data: &ChunkData<'_>) -> Result<(), ImageError> {
        self.check_chunk(data)?;
        if data.index() == 0 {
            if let Ok(mut slot) = self.chunk0.lock() {
                *slot = Some(data.to_verified());
            }
        } else {
            let bytes = data.bytes();
            let resolve = |_| Some(bytes);
            let mut w = RunWriter::new(self);
            w.add(data, 0, &resolve)?;
            w.flush(&resolve)?;
        }
        self.mark(data.index());
        Ok(())
    }

    /// Writes chunk `index` given as its whole raw bytes, every block used
    /// and written as it is (no zero detection). The caller must have
    /// verified the bytes.
    pub fn write_chunk(&self, index: u64, raw: &[u8]) -> Result<(), ImageError> {
        let blocks = self.geometry.blocks_in(index);
        let full = BlockMap::full(blocks);
        let len = u32::try_from(raw.len()).unwrap_or(u32::MAX);
        let data =
            ChunkData::new_unchecked(index, len, self.geometry.block_size, &full, &full, raw);
        self.write(&data)
    }

    /// Counts `n` bytes written (data and inline zeros) and starts writeback every
    /// [`WRITEBACK_EVERY`] bytes. Best effort: durability comes from the
    /// fsyncs in [`DiskTarget::finish`], which report any error.
    fn wrote(&self, n: u64) {
        let before = self.dirty.fetch_add(n, Ordering::Relaxed);
        if before + n >= WRITEBACK_EVERY {
            self.dirty.store(0, Ordering::Relaxed);
            let _ = imgcast_disk::start_writeback(&self.file, 0, 0);
        }
    }

    fn sync(&self) -> Result<(), ImageError> {
        self.file.sync_all().map_err(|e| self.write_error(0, e))
    }

    /// Checks every chunk was written, flushes everything, writes chunk 0
    /// except its first sector and flushes, then writes the first sector
    /// (which holds the marker) and flushes again: only now does the target
    /// look like a disk.
    pub fn finish(self) -> Result<TargetStats, ImageError> {
        for i in 0..self.geometry.chunk_count {
            let word = self.written[(i / 64) as usize].load(Ordering::Relaxed);
            if word & (1 << (i % 64)) == 0 {
                return Err(ImageError::TargetIncomplete {
                    path: self.path.clone(),
                    chunk: i,
                });
            }
        }
        self.sync()?;
        if self.geometry.chunk_count == 0 {
            return Ok(self.stats());
        }
        let chunk0 = match self.chunk0.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let Some(chunk0) = chunk0 else {
            return Err(ImageError::TargetIncomplete {
                path: self.path.clone(),
                chunk: 0,
            });
        };
        let data = chunk0.data();
        let bytes = data.bytes();
        let head = FIRST_SECTOR.min(u64::from(data.raw_len())).min(self.end);
        let resolve = |_| Some(bytes);
        let mut w = RunWriter::new(&self);
        w.floor = head;
        w.add(&data, 0, &resolve)?;
        w.flush(&resolve)?;
        self.sync()?;
        // The first sector: data where the chunk has data, zeros elsewhere
        // (also over free blocks, so that no byte of the marker survives).
        let mut first = vec![0u8; head as usize];
        for run in data.runs() {
            let s = u64::from(run.start);
            if s >= head {
                break;
            }
            let n = (head - s).min(u64::from(run.len));
            match run.kind {
                RunKind::Data(r) => {
                    let n = n as usize;
                    first[s as usize..s as usize + n].copy_from_slice(&bytes[r.start..r.start + n]);
                    bump(&self.counters.data, n as u64);
                }
                RunKind::Zero => bump(&self.counters.zero, n),
                RunKind::Free => bump(&self.counters.free, n),
            }
        }
        self.file
            .write_all_at(&first, 0)
            .map_err(|e| self.write_error(0, e))?;
        self.sync()?;
        Ok(self.stats())
    }
}

/// One piece of a merged write.
#[derive(Debug)]
enum Piece {
    /// Zeros (a used-zero run written with its neighbours).
    Zeros(usize),
    /// Bytes of buffer `buf` (a caller's id, resolved when issued).
    Bytes { buf: u64, range: Range<usize> },
}

/// Finds the bytes of a buffer id given to [`RunWriter::add`].
type Resolve<'r, 'b> = &'r dyn Fn(u64) -> Option<&'b [u8]>;

/// Turns runs of chunks into merged writes, zero-outs and discards on one
/// target. Each kind keeps one pending range that grows while runs follow
/// each other on the disk and is issued when the next one does not.
struct RunWriter<'t> {
    target: &'t DiskTarget,
    /// Runs below this disk offset are skipped (chunk 0's first sector).
    floor: u64,
    write_start: u64,
    write_len: u64,
    pieces: Vec<Piece>,
    zero: Option<Range<u64>>,
    discard: Option<Range<u64>>,
}

impl<'t> RunWriter<'t> {
    fn new(target: &'t DiskTarget) -> Self {
        Self {
            target,
            floor: 0,
            write_start: 0,
            write_len: 0,
            pieces: Vec::new(),
            zero: None,
            discard: None,
        }
    }

    /// The smallest buffer id the pending write still needs.
    fn oldest_buf(&self) -> Option<u64> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Bytes { buf, .. } => Some(*buf),
                Piece::Zeros(_) => None,
            })
            .min()
    }

    /// Adds the runs of chunk `data`, whose bytes `resolve` finds as buffer
    /// `buf`; issues whatever pending range the new runs do not continue.
    fn add(
        &mut self,
        data: &ChunkData<'_>,
        buf: u64,
        resolve: Resolve<'_, '_>,
    ) -> Result<(), ImageError> {
        let t = self.target;
        let chunk_start = t.geometry.chunk_offset(data.index());
        let device = t.kind == DiskKind::BlockDevice;
        for run in data.runs() {
            let mut start = chunk_start + u64::from(run.start);
            let mut len = u64::from(run.len);
            let mut skip = 0u64;
            if start < self.floor {
                skip = (self.floor - start).min(len);
                start += skip;
                len -= skip;
            }
            if len == 0 {
                continue;
            }
            if start + len > t.end {
                let beyond = (start + len - t.end).min(len);
                bump(&t.counters.beyond, beyond);
                len -= beyond;
                if len == 0 {
                    continue;
                }
            }
            match run.kind {
                RunKind::Data(r) => {
                    bump(&t.counters.data, len);
                    let s = r.start + skip as usize;
                    let piece = Piece::Bytes {
                        buf,
                        range: s..s + len as usize,
                    };
                    self.push_write(start, len, piece, resolve)?;
                }
                RunKind::Zero => {
                    bump(&t.counters.zero, len);
                    // A fresh file reads as zero: there a short zero run is
                    // written only between data (so the data goes out in one
                    // write and the file is not cut into an extent per
                    // block; trailing zeros are trimmed at flush).
                    let after_data =
                        self.write_len > 0 && self.write_start + self.write_len == start;
                    if len < INLINE_ZERO_MAX && (device || after_data) {
                        self.push_write(start, len, Piece::Zeros(len as usize), resolve)?;
                    } else if device {
                        self.zero = match self.zero.take() {
                            Some(z) if z.end == start => Some(z.start..start + len),
                            other => {
                                if let Some(z) = other {
                                    self.zero_out(z)?;
                                }
                                Some(start..start + len)
                            }
                        };
                    }
                }
                RunKind::Free => {
                    bump(&t.counters.free, len);
                    if !t.discard || !t.discard_works.load(Ordering::Relaxed) {
                        continue;
                    }
                    self.discard = match self.discard.take() {
                        Some(d) if d.end == start => Some(d.start..start + len),
                        other => {
                            if let Some(d) = other {
                                self.discard_range(d)?;
                            }
                            Some(start..start + len)
                        }
                    };
                }
            }
        }
        Ok(())
    }

    /// Queues `len` bytes at `start`, issuing the pending write first when
    /// they do not continue it or it is full.
    fn push_write(
        &mut self,
        start: u64,
        len: u64,
        piece: Piece,
        resolve: Resolve<'_, '_>,
    ) -> Result<(), ImageError> {
        let joins = self.write_start + self.write_len == start
            && self.write_len + len <= MAX_WRITE
            && self.pieces.len() < MAX_PIECES;
        if self.write_len > 0 && !joins {
            self.flush_write(resolve)?;
        }
        if self.write_len == 0 {
            self.write_start = start;
        }
        self.write_len += len;
        self.pieces.push(piece);
        Ok(())
    }

    fn flush_write(&mut self, resolve: Resolve<'_, '_>) -> Result<(), ImageError> {
        let t = self.target;
        if t.kind != DiskKind::BlockDevice {
            // Zeros at the end of a write to a file would only fill a hole.
            while let Some(Piece::Zeros(n)) = self.pieces.last() {
                self.write_len -= *n as u64;
                self.pieces.pop();
            }
        }
        if self.write_len == 0 {
            self.pieces.clear();
            return Ok(());
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.pieces.len());
        for p in &self.pieces {
            match p {
                Piece::Zeros(n) => {
                    let mut left = *n;
                    while left > 0 {
                        let k = left.min(ZEROS.len());
                        slices.push(IoSlice::new(&ZEROS[..k]));
                        left -= k;
                    }
                }
                Piece::Bytes { buf, range } => {
                    let Some(bytes) = resolve(*buf).and_then(|b| b.get(range.clone())) else {
                        return Err(ImageError::BadChunk {
                            chunk: self.write_start / u64::from(t.geometry.chunk_size),
                            reason: "internal error: the bytes of a pending write are gone".into(),
                        });
                    };
                    slices.push(IoSlice::new(bytes));
                }
            }
        }
        imgcast_disk::write_all_vectored_at(&t.file, &slices, self.write_start)
            .map_err(|e| t.write_error(self.write_start, e))?;
        t.wrote(self.write_len);
        self.pieces.clear();
        self.write_len = 0;
        Ok(())
    }

    fn zero_out(&self, r: Range<u64>) -> Result<(), ImageError> {
        let t = self.target;
        imgcast_disk::zero_range(&t.file, r.start, r.end - r.start)
            .map_err(|e| t.write_error(r.start, e))
    }

    fn discard_range(&self, r: Range<u64>) -> Result<(), ImageError> {
        let t = self.target;
        // BLKDISCARD wants whole sectors: shrink the range inwards.
        let start = r.start.next_multiple_of(512);
        let end = r.end - r.end % 512;
        if end <= start || !t.discard_works.load(Ordering::Relaxed) {
            return Ok(());
        }
        match imgcast_disk::discard_range(&t.file, start, end - start) {
            Ok(()) => {
                bump(&t.counters.discarded, end - start);
                Ok(())
            }
            Err(e) if imgcast_disk::discard_unsupported(&e) => {
                t.discard_works.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(t.write_error(start, e)),
        }
    }

    /// Issues everything pending.
    fn flush(&mut self, resolve: Resolve<'_, '_>) -> Result<(), ImageError> {
        self.flush_write(resolve)?;
        if let Some(z) = self.zero.take() {
            self.zero_out(z)?;
        }
        if let Some(d) = self.discard.take() {
            self.discard_range(d)?;
        }
        Ok(())
    }
}

/// Writes verified chunks given in index order, merging runs across chunk
/// boundaries: a chunk stays held while a pending write still needs its
/// bytes, and goes back to the caller (`recycle`) as soon as none does.
pub(crate) struct SequentialWriter<'t> {
    target: &'t DiskTarget,
    run: RunWriter<'t>,
    held: VecDeque<VerifiedChunk>,
}

impl<'t> SequentialWriter<'t> {
    pub(crate) fn new(target: &'t DiskTarget) -> Self {
        Self {
            target,
            run: RunWriter::new(target),
            held: VecDeque::new(),
        }
    }

    /// Writes (or queues) one chunk.
    pub(crate) fn push(
        &mut self,
        chunk: VerifiedChunk,
        recycle: &mut dyn FnMut(VerifiedChunk),
    ) -> Result<(), ImageError> {
        let index = chunk.index();
        self.target.check_chunk(&chunk.data())?;
        if index == 0 {
            self.target.write(&chunk.data())?;
            recycle(chunk);
            return Ok(());
        }
        self.held.push_back(chunk);
        let Self { run, held, .. } = self;
        let resolve = |id: u64| {
            held.iter()
                .find(|c| c.index() == id)
                .map(|c| c.data().bytes())
        };
        if let Some(last) = held.back() {
            run.add(&last.data(), index, &resolve)?;
        }
        self.target.mark(index);
        self.release(recycle);
        Ok(())
    }

    /// Hands back every held chunk the pending write does not need.
    fn release(&mut self, recycle: &mut dyn FnMut(VerifiedChunk)) {
        let keep = self.run.oldest_buf();
        while let Some(front) = self.held.front() {
            if keep.is_some_and(|k| front.index() >= k) {
                break;
            }
            if let Some(c) = self.held.pop_front() {
                recycle(c);
            }
        }
    }

    /// Issues everything pending and hands back every chunk.
    pub(crate) fn finish(
        mut self,
        recycle: &mut dyn FnMut(VerifiedChunk),
    ) -> Result<(), ImageError> {
        let Self { run, held, .. } = &mut self;
        let resolve = |id: u64| {
            held.iter()
                .find(|c| c.index() == id)
                .map(|c| c.data().bytes())
        };
        run.flush(&resolve)?;
        self.release(recycle);
        Ok(())
    }
}

/// Checks, without writing or creating anything, that a restore of `geometry` onto `path` could
/// start: the refusals of [`DiskTarget::open`] (not a disk, mounted or held, a block device
/// smaller than the image's smallest target), and for a regular file that its filesystem is at
/// least that size (no file there can hold more). The multicast client runs this before it registers: until the session starts,
/// the target is the user's.
pub fn check_target(path: &Path, geometry: &Geometry) -> Result<(), ImageError> {
    let needed = geometry.min_target_size;
    let meta = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(ImageError::io("stat target", path, e)),
    };
    if let Some(meta) = &meta {
        if DiskKind::of(meta).is_none() {
            return Err(imgcast_disk::DiskError::NotADisk {
                path: path.to_path_buf(),
            }
            .into());
        }
        if let Some(by) = imgcast_disk::mounted_status(path)? {
            return Err(imgcast_disk::DiskError::InUse {
                path: path.to_path_buf(),
                by,
            }
            .into());
        }
    }
    let size = if meta.as_ref().and_then(DiskKind::of) == Some(DiskKind::BlockDevice) {
        let file = imgcast_disk::open_exclusive_readonly(path)?;
        imgcast_disk::disk_size(&file).map_err(|e| ImageError::io("read size of", path, e))?
    } else {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        imgcast_disk::fs_size(dir).map_err(|e| ImageError::io("statvfs", dir, e))?
    };
    if size < needed {
        return Err(ImageError::TargetTooSmall {
            path: path.to_path_buf(),
            size,
            needed,
            disk_size: geometry.disk_size,
        });
    }
    Ok(())
}
