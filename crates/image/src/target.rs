//! Restore targets: every safety check before the first write, positional
//! writes from many threads, and the incomplete marker that keeps a
//! half-written disk from passing for a whole one.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use imgcast_disk::DiskKind;

use crate::codec::{push_checksum8, Codec, DecodeError, Reader};
use crate::error::is_enospc;
use crate::format::Geometry;
use crate::writer::now_unix;
use crate::ImageError;

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

/// Chunk 0 as held back until [`DiskTarget::finish`].
#[derive(Debug)]
enum Chunk0 {
    Data(Vec<u8>),
    Hole,
}

/// What the target needs to know beyond the geometry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetOptions {
    /// Root hash of the image, recorded in the incomplete marker.
    pub root_hash: Option<[u8; 32]>,
    /// Raw bytes of non-hole chunks. When known, a regular-file target is
    /// refused up front if its filesystem cannot hold them; when `None`
    /// (a stream), a full filesystem is reported when it happens.
    pub data_bytes: Option<u64>,
}

/// A disk or file being restored onto.
///
/// Safe to share between threads: [`DiskTarget::write_chunk`] takes `&self`
/// and writes positionally. Chunk 0 is held in memory and written last by
/// [`DiskTarget::finish`]; until then the target starts with an
/// [`IncompleteMarker`].
#[derive(Debug)]
pub struct DiskTarget {
    file: File,
    path: PathBuf,
    kind: DiskKind,
    geometry: Geometry,
    chunk0: Mutex<Option<Chunk0>>,
    written: Vec<AtomicU64>,
}

impl DiskTarget {
    /// Runs every check, then prepares the target and writes the
    /// incomplete marker.
    ///
    /// Refuses, before writing anything: a mounted / swapped / held block
    /// device or one opened exclusively elsewhere; a block device smaller
    /// than the disk; a regular file backing a loop device; a regular file
    /// whose filesystem lacks room for `data_bytes`; anything that is not a
    /// regular file or block device. Creates a missing regular file (its
    /// directory must exist).
    pub fn open(
        path: &Path,
        geometry: &Geometry,
        options: &TargetOptions,
    ) -> Result<Self, ImageError> {
        let needed = geometry.disk_size;
        let existing = match fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(ImageError::io("stat target", path, e)),
        };
        if let Some(meta) = &existing {
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
        if existing.as_ref().and_then(DiskKind::of) != Some(DiskKind::BlockDevice) {
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
        if kind == DiskKind::BlockDevice {
            let size = imgcast_disk::disk_size(&file)
                .map_err(|e| ImageError::io("read size of", path, e))?;
            if size < needed {
                return Err(ImageError::TargetTooSmall {
                    path: path.to_path_buf(),
                    size,
                    needed,
                });
            }
        }
        let words = geometry.chunk_count.div_ceil(64) as usize;
        let target = Self {
            file,
            path: path.to_path_buf(),
            kind,
            geometry: *geometry,
            chunk0: Mutex::new(None),
            written: (0..words).map(|_| AtomicU64::new(0)).collect(),
        };
        target.prepare(options)?;
        Ok(target)
    }

    /// Sizes the target and writes the incomplete marker over chunk 0.
    fn prepare(&self, options: &TargetOptions) -> Result<(), ImageError> {
        let g = &self.geometry;
        let fail = |source: io::Error| self.write_error(0, 0, source);
        if self.kind == DiskKind::RegularFile {
            // Truncate first so every byte not written reads as zero and
            // holes stay sparse.
            self.file.set_len(0).map_err(fail)?;
            self.file.set_len(g.disk_size).map_err(fail)?;
        }
        let len0 = g.chunk_len(0) as usize;
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

    fn write_error(&self, chunk: u64, offset: u64, source: io::Error) -> ImageError {
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

    fn check_index(&self, index: u64, len: usize) -> Result<(), ImageError> {
        let want = self.geometry.chunk_len(index);
        if index >= self.geometry.chunk_count || len != want as usize {
            return Err(ImageError::BadChunk {
                chunk: index,
                reason: format!(
                    "{len} bytes for a chunk of {want} (of {} chunks)",
                    self.geometry.chunk_count
                ),
            });
        }
        Ok(())
    }

    fn mark(&self, index: u64) {
        self.written[(index / 64) as usize].fetch_or(1 << (index % 64), Ordering::Relaxed);
    }

    /// Writes chunk `index`'s raw bytes at its offset. Any order, any
    /// thread; the caller must have verified the bytes. Chunk 0 is kept in
    /// memory until [`DiskTarget::finish`].
    pub fn write_chunk(&self, index: u64, raw: &[u8]) -> Result<(), ImageError> {
        self.check_index(index, raw.len())?;
        if index == 0 {
            if let Ok(mut slot) = self.chunk0.lock() {
                *slot = Some(Chunk0::Data(raw.to_vec()));
            }
        } else {
            let off = self.geometry.chunk_offset(index);
            self.file
                .write_all_at(raw, off)
                .map_err(|e| self.write_error(index, off, e))?;
        }
        self.mark(index);
        Ok(())
    }

    /// Makes chunk `index` read as zeros: nothing to do on a freshly
    /// truncated file (it stays sparse), `BLKZEROOUT` (or zero writes) on a
    /// device, whose old contents must not show through.
    pub fn write_hole(&self, index: u64) -> Result<(), ImageError> {
        let len = self.geometry.chunk_len(index);
        self.check_index(index, len as usize)?;
        if index == 0 {
            if let Ok(mut slot) = self.chunk0.lock() {
                *slot = Some(Chunk0::Hole);
            }
        } else if self.kind == DiskKind::BlockDevice {
            let off = self.geometry.chunk_offset(index);
            imgcast_disk::zero_range(&self.file, off, u64::from(len))
                .map_err(|e| self.write_error(index, off, e))?;
        }
        self.mark(index);
        Ok(())
    }

    /// Checks every chunk was written, flushes everything, then writes
    /// chunk 0 over the marker and flushes again: only now does the target
    /// look like a disk.
    pub fn finish(self) -> Result<(), ImageError> {
        for i in 0..self.geometry.chunk_count {
            let word = self.written[(i / 64) as usize].load(Ordering::Relaxed);
            if word & (1 << (i % 64)) == 0 {
                return Err(ImageError::TargetIncomplete {
                    path: self.path.clone(),
                    chunk: i,
                });
            }
        }
        if self.geometry.chunk_count == 0 {
            return self.file.sync_all().map_err(|e| self.write_error(0, 0, e));
        }
        self.file
            .sync_all()
            .map_err(|e| self.write_error(0, 0, e))?;
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
        let written = match (chunk0, self.kind) {
            (Chunk0::Data(raw), _) => self.file.write_all_at(&raw, 0),
            // Only the marker bytes are non-zero on a file: keep the rest sparse.
            (Chunk0::Hole, DiskKind::RegularFile) => {
                let n = INCOMPLETE_MARKER_LEN.min(self.geometry.chunk_len(0) as usize);
                self.file.write_all_at(&vec![0; n], 0)
            }
            (Chunk0::Hole, DiskKind::BlockDevice) => {
                imgcast_disk::zero_range(&self.file, 0, u64::from(self.geometry.chunk_len(0)))
            }
        };
        written.map_err(|e| self.write_error(0, 0, e))?;
        self.file.sync_all().map_err(|e| self.write_error(0, 0, e))
    }
}

/// Checks, without writing or creating anything, that a restore of `geometry` onto `path` could
/// start: the refusals of [`DiskTarget::open`] (not a disk, mounted or held, a block device too
/// small), and for a regular file that its filesystem is at least the disk's size (no file there
/// can hold more). The multicast client runs this before it registers: until the session starts,
/// the target is the user's.
pub fn check_target(path: &Path, geometry: &Geometry) -> Result<(), ImageError> {
    let needed = geometry.disk_size;
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
        });
    }
    Ok(())
}
