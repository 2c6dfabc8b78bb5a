//! The imgcast disk image format and the pipelines around it.
//!
//! A disk is cut into fixed-size chunks (1 MiB by default). Each chunk is
//! hashed (BLAKE3), all-zero chunks become holes, and the rest are
//! compressed independently with zstd, so they can be sent, received,
//! decompressed and written in any order. The format is documented byte by
//! byte in `docs/FORMAT.md`.
//!
//! ```text
//!            make                                   restore
//!  DiskSource ─▶ spawn_encoder ─▶ ImageWriter ─▶ file ─▶ ImageReader / StreamReader ─▶ workers ─▶ DiskTarget
//!                     │  (ChunkStream of EncodedChunk, in order)              ▲ verify hash, pwrite
//!                     └──────────▶ engine (multicast master)   engine (client) ┘
//! ```
//!
//! This crate knows nothing of networks: the multicast engine reuses
//! [`spawn_encoder`], [`EncodedChunk::to_wire`] / [`EncodedChunk::from_wire`],
//! [`RootHasher`] and [`DiskTarget`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod chunk;
pub mod codec;
mod encoder;
mod error;
pub mod format;
mod reader;
mod restore;
mod target;
mod writer;

pub use chunk::{
    is_zero, zero_hash, Compressor, Decompressor, EncodedChunk, RootHasher, WIRE_HEADER_LEN,
};
pub use encoder::{spawn_encoder, ChunkStream, DiskSource, Progress, WINDOW_PER_THREAD};
pub use error::{hex, ImageError};
pub use format::{
    ChunkKind, Geometry, Header, ImageInfo, IndexEntry, Level, DEFAULT_CHUNK_SIZE, FORMAT_MAJOR,
    FORMAT_MINOR, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
pub use reader::{ImageReader, StreamReader};
pub use restore::{restore, restore_stream, RestoreOptions, RestoreSummary};
pub use target::{
    check_target, incomplete_marker, DiskTarget, IncompleteMarker, TargetOptions, INCOMPLETE_MAGIC,
    INCOMPLETE_MARKER_LEN,
};
pub use writer::{make, temp_path_for, ImageSummary, ImageWriter, MakeOptions};
