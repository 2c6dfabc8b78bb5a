//! The records of image format v1, byte for byte (see `docs/FORMAT.md`).

use std::fmt;
use std::str::FromStr;

use crate::codec::{push_checksum8, Codec, DecodeError, Reader};
use crate::ImageError;

/// Major format version written by this build. A reader refuses a larger one.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version written by this build; readers accept any minor of a
/// known major (minors only add things older readers may ignore).
pub const FORMAT_MINOR: u16 = 0;
/// Default raw chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest allowed chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest allowed chunk size; bounds every allocation a reader makes.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// Magic at offset 0 of every image.
pub const HEADER_MAGIC: [u8; 8] = *b"IMGCAST\0";
/// Magic of each chunk record header.
pub const RECORD_MAGIC: [u8; 4] = *b"CHNK";
/// Magic of the index.
pub const INDEX_MAGIC: [u8; 8] = *b"IMGINDEX";
/// Magic of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"IMGCEND\0";

/// Encoded size of [`Header`].
pub const HEADER_LEN: usize = 64;
/// Encoded size of [`RecordHeader`].
pub const RECORD_HEADER_LEN: usize = 64;
/// Encoded size of one [`IndexEntry`].
pub const INDEX_ENTRY_LEN: usize = 56;
/// Encoded size of [`Trailer`].
pub const TRAILER_LEN: usize = 80;

/// Compression level 0..=9 as the user gives it (`-comp=N`).
///
/// 0 stores chunks uncompressed; 1 (the default) is the fastest zstd level;
/// 9 the smallest. See [`Level::zstd_level`] for the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u8);

impl Level {
    /// No compression.
    pub const STORED: Self = Self(0);
    /// Fastest compression (default).
    pub const FASTEST: Self = Self(1);
    /// Balanced.
    pub const BALANCED: Self = Self(6);
    /// Smallest output.
    pub const SMALLEST: Self = Self(9);

    /// Makes a level from a number, `None` above 9.
    pub const fn new(n: u8) -> Option<Self> {
        if n <= 9 {
            Some(Self(n))
        } else {
            None
        }
    }

    /// Parses `"0"`..`"9"`; anything else is an [`ImageError::InvalidLevel`].
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        s.trim()
            .parse::<u8>()
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| ImageError::InvalidLevel {
                input: s.to_string(),
            })
    }

    /// The number 0..=9.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The zstd level used, `None` for level 0 (stored).
    ///
    /// 1→1, 2→2, 3→3, 4→5, 5→7, 6→9, 7→12, 8→15, 9→19: the low end keeps
    /// zstd's fast levels, where a disk imager spends its time; the high end
    /// stops at 19 because levels 20+ ("ultra") need far more memory per
    /// worker for little gain on 1 MiB chunks.
    pub const fn zstd_level(self) -> Option<i32> {
        match self.0 {
            0 => None,
            1 => Some(1),
            2 => Some(2),
            3 => Some(3),
            4 => Some(5),
            5 => Some(7),
            6 => Some(9),
            7 => Some(12),
            8 => Some(15),
            _ => Some(19),
        }
    }
}

impl Default for Level {
    fn default() -> Self {
        Self::FASTEST
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Level {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// How a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChunkKind {
    /// All zeros: no payload.
    Hole = 0,
    /// Raw bytes (level 0, or compression did not help).
    Stored = 1,
    /// One zstd frame.
    Zstd = 2,
}

impl ChunkKind {
    pub(crate) fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::Hole),
            1 => Ok(Self::Stored),
            2 => Ok(Self::Zstd),
            _ => Err(DecodeError::Invalid {
                field: "chunk kind",
                value: u64::from(v),
            }),
        }
    }

    /// Checks that a stored length fits the kind: holes store nothing,
    /// stored chunks store exactly their raw bytes, zstd chunks store fewer.
    pub(crate) fn check_lens(self, raw_len: u32, stored_len: u32) -> Result<(), DecodeError> {
        let ok = match self {
            Self::Hole => stored_len == 0,
            Self::Stored => stored_len == raw_len,
            Self::Zstd => stored_len > 0 && stored_len < raw_len,
        };
        if ok && raw_len <= MAX_CHUNK_SIZE {
            Ok(())
        } else if raw_len > MAX_CHUNK_SIZE {
            Err(DecodeError::Invalid {
                field: "raw length",
                value: u64::from(raw_len),
            })
        } else {
            Err(DecodeError::Invalid {
                field: "stored length",
                value: u64::from(stored_len),
            })
        }
    }
}

impl fmt::Display for ChunkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hole => "hole",
            Self::Stored => "stored",
            Self::Zstd => "zstd",
        })
    }
}

/// The shape of a disk image: how big the disk is and how it is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Raw bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// Number of chunks, `ceil(disk_size / chunk_size)`.
    pub chunk_count: u64,
    /// Compression level the image was made with.
    pub level: Level,
}

/// The image description most callers want; an alias kept for readability.
pub type ImageInfo = Geometry;

impl Geometry {
    /// Validates a chunk size (4 KiB..=64 MiB, a multiple of 512 so that
    /// chunk boundaries are sector-aligned) and computes the chunk count.
    pub fn new(disk_size: u64, chunk_size: u32, level: Level) -> Result<Self, ImageError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) || chunk_size % 512 != 0 {
            return Err(ImageError::InvalidGeometry {
                reason: format!(
                    "chunk size {chunk_size} must be a multiple of 512 between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
                ),
            });
        }
        Ok(Self {
            disk_size,
            chunk_size,
            chunk_count: disk_size.div_ceil(u64::from(chunk_size)),
            level,
        })
    }

    /// Disk offset of chunk `index`.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        index * u64::from(self.chunk_size)
    }

    /// Raw length of chunk `index` (0 past the end).
    pub fn chunk_len(&self, index: u64) -> u32 {
        let off = self.chunk_offset(index);
        if index >= self.chunk_count {
            0
        } else {
            // Bounded by chunk_size, so the cast is lossless.
            (self.disk_size - off).min(u64::from(self.chunk_size)) as u32
        }
    }
}

/// The fixed 64-byte header at offset 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Major format version.
    pub major: u16,
    /// Minor format version.
    pub minor: u16,
    /// Feature flags for compatible additions; v1.0 writes 0, readers ignore
    /// bits they do not know.
    pub flags: u32,
    /// Disk size, chunk size, chunk count and level.
    pub geometry: Geometry,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
}

impl Header {
    /// A current-version header.
    pub fn new(geometry: Geometry, created: u64) -> Self {
        Self {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            flags: 0,
            geometry,
            created,
        }
    }

    /// Parses and validates a header, mapping failures to image errors.
    /// The magic and major version are checked before the checksum, so an
    /// image from a future major version gets a version error, not a
    /// corruption error.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() >= 8 && bytes[..8] != HEADER_MAGIC {
            return Err(ImageError::NotAnImage);
        }
        if bytes.len() < HEADER_LEN {
            return Err(ImageError::Truncated {
                what: "header".into(),
                offset: 0,
            });
        }
        let major = u16::from_le_bytes([bytes[8], bytes[9]]);
        if major > FORMAT_MAJOR {
            return Err(ImageError::UnsupportedVersion {
                major,
                supported: FORMAT_MAJOR,
            });
        }
        Self::from_bytes(&bytes[..HEADER_LEN]).map_err(|e| ImageError::HeaderCorrupt {
            reason: match e {
                DecodeError::Checksum => "header checksum mismatch".into(),
                other => other.to_string(),
            },
        })
    }
}

impl Codec for Header {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&HEADER_MAGIC);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.geometry.chunk_size.to_le_bytes());
        out.push(self.geometry.level.get());
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.geometry.disk_size.to_le_bytes());
        out.extend_from_slice(&self.geometry.chunk_count.to_le_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        push_checksum8(out, start);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.position();
        r.expect_magic(&HEADER_MAGIC)?;
        let major = r.u16()?;
        let minor = r.u16()?;
        let flags = r.u32()?;
        let chunk_size = r.u32()?;
        let level = r.u8()?;
        r.take(3)?;
        let disk_size = r.u64()?;
        let chunk_count = r.u64()?;
        let created = r.u64()?;
        r.take(8)?;
        r.expect_checksum8(start)?;
        if major != FORMAT_MAJOR {
            return Err(DecodeError::Invalid {
                field: "major version",
                value: u64::from(major),
            });
        }
        let level = Level::new(level).ok_or(DecodeError::Invalid {
            field: "level",
            value: u64::from(level),
        })?;
        let geometry =
            Geometry::new(disk_size, chunk_size, level).map_err(|_| DecodeError::Invalid {
                field: "chunk size",
                value: u64::from(chunk_size),
            })?;
        if geometry.chunk_count != chunk_count {
            return Err(DecodeError::Invalid {
                field: "chunk count",
                value: chunk_count,
            });
        }
        Ok(Self {
            major,
            minor,
            flags,
            geometry,
            created,
        })
    }
}

/// The fixed 64-byte header in front of each chunk's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Chunk index.
    pub index: u64,
    /// Storage kind.
    pub kind: ChunkKind,
    /// Raw (uncompressed) length.
    pub raw_len: u32,
    /// Payload length that follows (0 for holes).
    pub stored_len: u32,
    /// BLAKE3 of the raw bytes.
    pub hash: [u8; 32],
}

impl Codec for RecordHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&RECORD_MAGIC);
        out.push(self.kind as u8);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.hash);
        push_checksum8(out, start);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.position();
        r.expect_magic(&RECORD_MAGIC)?;
        let kind = r.u8()?;
        r.take(3)?;
        let index = r.u64()?;
        let raw_len = r.u32()?;
        let stored_len = r.u32()?;
        let hash = r.array()?;
        r.expect_checksum8(start)?;
        let kind = ChunkKind::from_u8(kind)?;
        kind.check_lens(raw_len, stored_len)?;
        Ok(Self {
            index,
            kind,
            raw_len,
            stored_len,
            hash,
        })
    }
}

/// One entry of the index: where chunk i's record is and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Image offset of the chunk's record header.
    pub offset: u64,
    /// Storage kind.
    pub kind: ChunkKind,
    /// Payload length.
    pub stored_len: u32,
    /// Raw length.
    pub raw_len: u32,
    /// BLAKE3 of the raw bytes.
    pub hash: [u8; 32],
}

impl IndexEntry {
    /// Image offset one past the end of this chunk's record.
    pub fn end(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64 + u64::from(self.stored_len)
    }
}

impl Codec for IndexEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&[0; 7]);
        out.extend_from_slice(&self.hash);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let offset = r.u64()?;
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        let kind = ChunkKind::from_u8(r.u8()?)?;
        r.take(7)?;
        let hash = r.array()?;
        kind.check_lens(raw_len, stored_len)?;
        Ok(Self {
            offset,
            kind,
            stored_len,
            raw_len,
            hash,
        })
    }
}

/// The index: one entry per chunk, then a BLAKE3 hash of the index bytes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Index {
    /// Entries in chunk order.
    pub entries: Vec<IndexEntry>,
}

impl Index {
    /// Encoded length of an index of `count` entries.
    pub fn encoded_len(count: u64) -> u64 {
        16 + count * INDEX_ENTRY_LEN as u64 + 32
    }
}

/// Incrementally encodes an index, so a writer can stream it without
/// materialising the whole encoding, and a stream reader can compute the
/// hash of the index it expects.
#[derive(Debug)]
pub(crate) struct IndexHasher {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

impl IndexHasher {
    pub(crate) fn new(count: u64) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&INDEX_MAGIC);
        hasher.update(&count.to_le_bytes());
        Self {
            hasher,
            buf: Vec::with_capacity(INDEX_ENTRY_LEN),
        }
    }

    pub(crate) fn push(&mut self, e: &IndexEntry) {
        self.buf.clear();
        e.encode(&mut self.buf);
        self.hasher.update(&self.buf);
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

impl Codec for Index {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            e.encode(out);
        }
        let h = blake3::hash(&out[start..]);
        out.extend_from_slice(h.as_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.position();
        r.expect_magic(&INDEX_MAGIC)?;
        let count = r.u64()?;
        // Never allocate more than the input can hold.
        let need = count
            .saturating_mul(INDEX_ENTRY_LEN as u64)
            .saturating_add(32);
        if need > r.remaining() as u64 {
            return Err(DecodeError::Invalid {
                field: "index entry count",
                value: count,
            });
        }
        let body_start = r.position();
        r.take(count as usize * INDEX_ENTRY_LEN)?;
        let covered = &r.consumed()[start..];
        let want: [u8; 32] = r.array()?;
        if *blake3::hash(covered).as_bytes() != want {
            return Err(DecodeError::Checksum);
        }
        let mut body = Reader::new(&covered[body_start - start..]);
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            entries.push(IndexEntry::read(&mut body)?);
        }
        Ok(Self { entries })
    }
}

/// The fixed 80-byte trailer at the very end of an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Image offset of the index.
    pub index_offset: u64,
    /// Length of the index in bytes.
    pub index_len: u64,
    /// Number of chunks (must match the header).
    pub chunk_count: u64,
    /// Disk size (must match the header).
    pub disk_size: u64,
    /// The root hash (see [`crate::RootHasher`]).
    pub root_hash: [u8; 32],
}

impl Codec for Trailer {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&TRAILER_MAGIC);
        out.extend_from_slice(&self.index_offset.to_le_bytes());
        out.extend_from_slice(&self.index_len.to_le_bytes());
        out.extend_from_slice(&self.chunk_count.to_le_bytes());
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&self.root_hash);
        push_checksum8(out, start);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.position();
        r.expect_magic(&TRAILER_MAGIC)?;
        let index_offset = r.u64()?;
        let index_len = r.u64()?;
        let chunk_count = r.u64()?;
        let disk_size = r.u64()?;
        let root_hash = r.array()?;
        r.expect_checksum8(start)?;
        Ok(Self {
            index_offset,
            index_len,
            chunk_count,
            disk_size,
            root_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry::new(10_000, 4096, Level::BALANCED).expect("valid geometry")
    }

    #[test]
    fn level_parse() {
        assert_eq!(Level::parse("0").ok(), Some(Level::STORED));
        assert_eq!(Level::parse("9").ok(), Some(Level::SMALLEST));
        for bad in ["10", "x", "-1", "", "1.5"] {
            let e = Level::parse(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("invalid compression level"), "{bad}: {e}");
        }
        assert_eq!(Level::default().zstd_level(), Some(1));
        assert_eq!(Level::STORED.zstd_level(), None);
        assert_eq!(Level::SMALLEST.zstd_level(), Some(19));
    }

    #[test]
    fn geometry() {
        let g = geo();
        assert_eq!(g.chunk_count, 3);
        assert_eq!(g.chunk_len(0), 4096);
        assert_eq!(g.chunk_len(2), 10_000 - 8192);
        assert_eq!(g.chunk_len(3), 0);
        assert!(Geometry::new(1, 1000, Level::STORED).is_err());
        assert!(Geometry::new(1, MAX_CHUNK_SIZE * 2, Level::STORED).is_err());
        assert_eq!(
            Geometry::new(0, 4096, Level::STORED)
                .map(|g| g.chunk_count)
                .ok(),
            Some(0)
        );
    }

    #[test]
    fn header_round_trip_and_every_flip_detected() {
        let h = Header::new(geo(), 1_700_000_000);
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(Header::parse(&bytes).ok(), Some(h));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(Header::parse(&b).is_err(), "flip at {i} undetected");
        }
        let mut future = bytes.clone();
        future[8] = 2;
        let e = Header::parse(&future)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "image format version 2 is newer than this img supports (1)"
        );
    }

    #[test]
    fn record_and_trailer_round_trip() {
        let rec = RecordHeader {
            index: 7,
            kind: ChunkKind::Zstd,
            raw_len: 4096,
            stored_len: 100,
            hash: [3; 32],
        };
        let b = rec.to_bytes();
        assert_eq!(b.len(), RECORD_HEADER_LEN);
        assert_eq!(RecordHeader::from_bytes(&b), Ok(rec));
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert!(RecordHeader::from_bytes(&c).is_err(), "flip at {i}");
        }
        let t = Trailer {
            index_offset: 1,
            index_len: 2,
            chunk_count: 3,
            disk_size: 4,
            root_hash: [5; 32],
        };
        let b = t.to_bytes();
        assert_eq!(b.len(), TRAILER_LEN);
        assert_eq!(Trailer::from_bytes(&b), Ok(t));
    }

    #[test]
    fn index_rejects_huge_counts_without_allocating() {
        let mut b = INDEX_MAGIC.to_vec();
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Index::from_bytes(&b),
            Err(DecodeError::Invalid { .. })
        ));
        let idx = Index {
            entries: vec![IndexEntry {
                offset: 64,
                kind: ChunkKind::Hole,
                stored_len: 0,
                raw_len: 4096,
                hash: [1; 32],
            }],
        };
        let b = idx.to_bytes();
        assert_eq!(b.len() as u64, Index::encoded_len(1));
        assert_eq!(Index::from_bytes(&b), Ok(idx.clone()));
        let mut h = IndexHasher::new(1);
        h.push(&idx.entries[0]);
        assert_eq!(&h.finish()[..], &b[b.len() - 32..]);
    }
}
