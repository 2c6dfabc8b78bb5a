//! The error type of this crate: every variant says what went wrong and where.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::codec::DecodeError;

/// Displays ` at image offset N` when the offset is known, nothing otherwise.
pub(crate) struct At(pub(crate) Option<u64>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(off) => write!(f, " at image offset {off}"),
            None => Ok(()),
        }
    }
}

/// Displays what a too-small target lacks: the whole disk, or (when the
/// image's tail is relocatable) the smallest size it accepts.
pub(crate) struct Needs {
    pub(crate) needed: u64,
    pub(crate) disk_size: u64,
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.needed >= self.disk_size {
            write!(f, "{}", self.needed)
        } else {
            write!(
                f,
                "at least {} (its disk is {} bytes; what lies beyond {} is relocatable)",
                self.needed, self.disk_size, self.needed
            )
        }
    }
}

/// Everything that can go wrong making, reading, verifying or restoring an
/// image. Fields name the chunk, byte offset and path involved, so the CLI
/// can print them and tests can match on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An I/O error on a named file outside the image data path (open,
    /// stat, rename, fsync ...).
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A disk-level problem (in use, not a disk, ...).
    #[error(transparent)]
    Disk(#[from] imgcast_disk::DiskError),
    /// Reading the source's partition table or filesystems failed, or one of them was refused
    /// (dirty, mounted read-write).
    #[error(transparent)]
    Layout(#[from] imgcast_fsmap::FsmapError),
    /// Reading the source disk failed.
    #[error("reading source {path} at offset {offset}: {source}")]
    SourceRead {
        /// The source disk.
        path: PathBuf,
        /// Byte offset in the source disk.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A compression level outside 0..=9 or not a number.
    #[error(
        "invalid compression level {input:?}: expected a number from 0 (stored) to 9 (smallest)"
    )]
    InvalidLevel {
        /// The text given.
        input: String,
    },
    /// A chunk size or disk size that this format cannot describe.
    #[error("invalid geometry: {reason}")]
    InvalidGeometry {
        /// Why.
        reason: String,
    },
    /// The file does not start with the image magic.
    #[error("not an imgcast image (bad magic in header)")]
    NotAnImage,
    /// The image has a major version this reader does not know.
    #[error("image format version {major} is newer than this img supports ({supported})")]
    UnsupportedVersion {
        /// Major version found in the header.
        major: u16,
        /// The major version this build reads.
        supported: u16,
    },
    /// The image needs must-understand features this build does not know.
    #[error("image needs features this img does not support (required feature bits {bits:#x}); a newer img may read it")]
    UnsupportedFeatures {
        /// The unknown bits of `required_features`.
        bits: u32,
    },
    /// A layout blob larger than the format allows was given to the maker.
    #[error("layout of {len} bytes is larger than the {max} bytes an image may carry")]
    LayoutTooLarge {
        /// Its length.
        len: u64,
        /// The largest allowed.
        max: u32,
    },
    /// The layout blob after the header is damaged or cut short.
    #[error("layout corrupt{}: {reason}", At(Some(*offset)))]
    LayoutCorrupt {
        /// Image offset of the layout.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// The fixed header is damaged.
    #[error("image header corrupt: {reason}")]
    HeaderCorrupt {
        /// Why (e.g. "header checksum mismatch").
        reason: String,
    },
    /// A chunk record header is damaged or disagrees with the index.
    #[error("chunk {chunk} record header{}: {reason}", At(Some(*offset)))]
    RecordCorrupt {
        /// Chunk index.
        chunk: u64,
        /// Image offset of the record header.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// A chunk's payload is damaged: it does not decompress, or its bytes do
    /// not hash to the recorded hash.
    #[error("chunk {chunk}{}: {reason}", At(*offset))]
    ChunkCorrupt {
        /// Chunk index.
        chunk: u64,
        /// Image offset of the chunk record, when known.
        offset: Option<u64>,
        /// Why ("hash mismatch", "zstd: ...").
        reason: String,
    },
    /// The index at the end of the image is damaged or inconsistent.
    #[error("index corrupt{}: {reason}", At(Some(*offset)))]
    IndexCorrupt {
        /// Image offset of the index.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// The trailer is absent: the image is truncated or was never finished.
    #[error("trailer missing: image truncated or not finished ({len} bytes)")]
    TrailerMissing {
        /// Length of the image file.
        len: u64,
    },
    /// The trailer is present but damaged or inconsistent.
    #[error("trailer corrupt{}: {reason}", At(Some(*offset)))]
    TrailerCorrupt {
        /// Image offset of the trailer.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// The image ends in the middle of something.
    #[error("image truncated: {what} at offset {offset} incomplete")]
    Truncated {
        /// What was being read, e.g. "chunk 5 record".
        what: String,
        /// Image offset where it started.
        offset: u64,
    },
    /// Bytes follow the trailer of a streamed image.
    #[error("unexpected data after the image trailer at offset {offset}")]
    TrailingData {
        /// Image offset of the first extra byte.
        offset: u64,
    },
    /// The root hash over all chunk hashes does not match.
    #[error("root hash mismatch: image says {expected}, chunks give {actual}")]
    RootHashMismatch {
        /// Hex of the recorded root hash.
        expected: String,
        /// Hex of the computed root hash.
        actual: String,
    },
    /// Chunks were given to a writer out of order, or with wrong sizes.
    #[error("chunk {chunk}: {reason}")]
    BadChunk {
        /// Chunk index.
        chunk: u64,
        /// Why.
        reason: String,
    },
    /// A wire-encoded chunk (as sent by the multicast engine) is malformed.
    #[error("malformed chunk object: {0}")]
    Wire(DecodeError),
    /// Writing the image failed.
    #[error("writing image at offset {offset}: {source}")]
    ImageWrite {
        /// Image offset of the failed write.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The filesystem holding the image is full.
    #[error("no space left writing image at offset {offset}")]
    ImageNoSpace {
        /// Image offset of the failed write.
        offset: u64,
    },
    /// The image file exists and overwriting was not asked for.
    #[error("image {path} already exists")]
    ImageExists {
        /// The image path.
        path: PathBuf,
    },
    /// A target is smaller than the image allows (its smallest target size,
    /// normally its disk size).
    #[error("target {path} is {size} bytes; the image needs {}", Needs { needed: *needed, disk_size: *disk_size })]
    TargetTooSmall {
        /// The target.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The smallest size the image accepts.
        needed: u64,
        /// The image's disk size.
        disk_size: u64,
    },
    /// Writing the target would overwrite the image being restored.
    #[error("refusing to restore onto {path}: {why}")]
    TargetHoldsImage {
        /// The target.
        path: PathBuf,
        /// How the two overlap.
        why: String,
    },
    /// A regular-file target's filesystem cannot hold the image's data.
    #[error("target {path}: filesystem has {available} bytes free; the image needs {needed}")]
    TargetNoRoom {
        /// The target.
        path: PathBuf,
        /// Free bytes (including what the old file occupied).
        available: u64,
        /// Non-hole bytes the restore will write.
        needed: u64,
    },
    /// The target filled up while writing.
    #[error("no space left on target {path} writing chunk {chunk} at offset {offset}")]
    TargetNoSpace {
        /// The target.
        path: PathBuf,
        /// Chunk index.
        chunk: u64,
        /// Disk offset of the failed write.
        offset: u64,
    },
    /// Writing the target failed.
    #[error("writing target {path} (chunk {chunk} at offset {offset}): {source}")]
    TargetWrite {
        /// The target.
        path: PathBuf,
        /// Chunk index.
        chunk: u64,
        /// Disk offset of the failed write.
        offset: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The restore finished without every chunk having been written.
    #[error("target {path}: chunk {chunk} was never written")]
    TargetIncomplete {
        /// The target.
        path: PathBuf,
        /// The first missing chunk.
        chunk: u64,
    },
    /// A worker thread panicked (a bug); the operation was abandoned.
    #[error("internal error: a {0} thread panicked")]
    WorkerPanicked(&'static str),
}

impl ImageError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Fills in the image offset of a [`ImageError::ChunkCorrupt`] found by
    /// code that did not know where the chunk came from.
    pub fn at_offset(self, image_offset: u64) -> Self {
        match self {
            Self::ChunkCorrupt {
                chunk,
                offset: None,
                reason,
            } => Self::ChunkCorrupt {
                chunk,
                offset: Some(image_offset),
                reason,
            },
            other => other,
        }
    }

    /// Maps a write error on the image file, naming ENOSPC plainly.
    pub(crate) fn image_write(offset: u64, source: io::Error) -> Self {
        if is_enospc(&source) {
            Self::ImageNoSpace { offset }
        } else {
            Self::ImageWrite { offset, source }
        }
    }
}

pub(crate) fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull
}

/// Lowercase hex of a hash, for messages.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
