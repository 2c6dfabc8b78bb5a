//! The imgcast disk image format and the pipelines around it.
//!
//! A disk is cut into fixed-size chunks (1 MiB by default), each cut into
//! blocks (4 KiB by default, or the filesystem's granularity). Each chunk
//! records which of its blocks are *used* (the image promises to restore
//! them: every block in raw mode, the filesystems' used blocks with a map)
//! and which of those are *data* (not all zero); only data blocks are
//! stored, compressed together with zstd, independently of other chunks, so
//! chunks can be sent, received, decompressed and written in any order.
//! Each chunk is hashed (BLAKE3) over exactly what it promises. The format
//! (version 2; version 1 images stay readable) is documented byte by byte
//! in `docs/FORMAT.md`.
//!
//! ```text
//!  used map (Extents, from imgcast-fsmap; None = raw)
//!            │   make                                   restore
//!  DiskSource ─▶ spawn_encoder ─▶ ImageWriter ─▶ file ─▶ ImageReader / StreamReader ─▶ workers ─▶ writer ─▶ DiskTarget
//!                     │  (ChunkStream of EncodedChunk, in order)          verify hash ▲   merged pwritev,
//!                     └──────────▶ engine (multicast master)   engine (client) ┘       zero-out, discard
//! ```
//!
//! This crate knows nothing of networks: the multicast engine reuses
//! [`spawn_encoder`], [`EncodedChunk::to_wire`] / [`EncodedChunk::from_wire`],
//! [`EncodedChunk::verified`], [`RootHasher`] and [`DiskTarget::write`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod blocks;
mod chunk;
pub mod codec;
mod encoder;
mod error;
pub mod format;
mod pool;
mod reader;
mod restore;
mod source_map;
mod target;
mod writer;

pub use blocks::{BlockMap, Runs};
pub use chunk::{
    is_zero, max_wire_len, zero_hash, ChunkData, Compressor, Decompressor, EncodedChunk,
    RootHasher, Run, RunKind, VerifiedChunk, WIRE_HEADER_LEN,
};
pub use encoder::{
    choose_block_size, spawn_encoder, ChunkStream, DiskSource, EncodeOptions, Progress,
    WINDOW_PER_THREAD,
};
pub use error::{hex, ImageError};
pub use format::{
    Geometry, Header, ImageInfo, IndexEntry, Level, MapEncoding, PayloadKind, COMPAT_MAPPED,
    DEFAULT_BLOCK_SIZE, DEFAULT_CHUNK_SIZE, FORMAT_MAJOR, FORMAT_MINOR, KNOWN_COMPAT_FEATURES,
    KNOWN_REQUIRED_FEATURES, MAX_BLOCK_SIZE, MAX_CHUNK_SIZE, MAX_LAYOUT_LEN, MIN_BLOCK_SIZE,
    MIN_CHUNK_SIZE,
};
pub use imgcast_disk::{Extent, Extents, StorageId};
pub use reader::{ImageReader, StreamReader};
pub use restore::{restore, restore_stream, restore_stream_with, RestoreOptions, RestoreSummary};
pub use source_map::{map_source, MapMode, SourceMap};
pub use target::{
    check_target, incomplete_marker, DiskTarget, IncompleteMarker, TargetOptions, TargetStats,
    FIRST_SECTOR, INCOMPLETE_MAGIC, INCOMPLETE_MARKER_LEN, WRITEBACK_EVERY,
};
pub use writer::{make, temp_path_for, ImageSummary, ImageWriter, MakeOptions};
