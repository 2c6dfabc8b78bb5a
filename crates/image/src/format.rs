//! The records of the image format, byte for byte (see `docs/FORMAT.md`):
//! version 2, which this build writes, and version 1, which it still reads.
//!
//! Every record has one [`Codec`]; the v1 records that differ from v2
//! ([`RecordHeaderV1`], [`IndexEntryV1`]) are read into their v2 form
//! ([`RecordHeader`], [`IndexEntry`]) so that the rest of the crate knows
//! one shape.

use std::fmt;
use std::str::FromStr;

use crate::codec::{checksum8, push_checksum8, Codec, DecodeError, Reader};
use crate::ImageError;

/// Major format version written by this build. A reader refuses a larger one.
pub const FORMAT_MAJOR: u16 = 2;
/// Minor format version written by this build; readers accept any minor of a
/// known major (minors only add things older readers may ignore).
pub const FORMAT_MINOR: u16 = 0;
/// Oldest major version this build still reads.
pub const OLDEST_MAJOR: u16 = 1;
/// Default raw chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest allowed chunk size.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest allowed chunk size; bounds every allocation a reader makes.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Smallest block size (v2): one sector.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size (v2).
pub const MAX_BLOCK_SIZE: u32 = 64 << 10;
/// Block size used when nothing asks for another: the page size and the
/// block size of most filesystems, so zero detection is fine-grained while
/// the maps stay small (32 bytes per 1 MiB chunk).
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Largest layout blob an image may carry (v2).
pub const MAX_LAYOUT_LEN: u32 = 1 << 20;
/// Largest block bitmap: one bit per block of the largest chunk in the
/// smallest blocks.
pub const MAX_MAP_LEN: u32 = MAX_CHUNK_SIZE / MIN_BLOCK_SIZE / 8;

/// Required-feature bits this build understands. A reader refuses an image
/// whose `required_features` has any other bit set. Version 2.0 defines none:
/// the field exists so a later writer can add must-understand features
/// without a new major version.
pub const KNOWN_REQUIRED_FEATURES: u32 = 0;
/// Compatible feature bit 0: the image was made with a map of used bytes
/// (filesystem-aware); blocks outside it are free and a restore leaves them
/// undefined. Informational: a reader may ignore it.
pub const COMPAT_MAPPED: u32 = 1 << 0;
/// Compatible-feature bits this build knows (unknown ones are ignored).
pub const KNOWN_COMPAT_FEATURES: u32 = COMPAT_MAPPED;

/// Magic at offset 0 of every image.
pub const HEADER_MAGIC: [u8; 8] = *b"IMGCAST\0";
/// Magic of each chunk record header.
pub const RECORD_MAGIC: [u8; 4] = *b"CHNK";
/// Magic of the index.
pub const INDEX_MAGIC: [u8; 8] = *b"IMGINDEX";
/// Magic of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"IMGCEND\0";

/// Encoded size of a v1 [`Header`].
pub const HEADER_LEN_V1: usize = 64;
/// Encoded size of a v2 [`Header`].
pub const HEADER_LEN: usize = 128;
/// Bytes of the header that every version shares: magic, major, minor.
pub const HEADER_PREFIX_LEN: usize = 12;
/// Encoded size of [`RecordHeaderV1`].
pub const RECORD_HEADER_LEN_V1: usize = 64;
/// Encoded size of [`RecordHeader`].
pub const RECORD_HEADER_LEN: usize = 80;
/// Encoded size of one [`IndexEntryV1`].
pub const INDEX_ENTRY_LEN_V1: usize = 56;
/// Encoded size of one [`IndexEntry`].
pub const INDEX_ENTRY_LEN: usize = 64;
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

/// How a chunk's payload is stored. The payload holds the chunk's *data*
/// blocks (used and not all zero), back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadKind {
    /// No data blocks: no payload (a v1 "hole").
    Empty = 0,
    /// The data blocks as they are (level 0, or compression did not help).
    Stored = 1,
    /// One zstd frame that decompresses to the data blocks.
    Zstd = 2,
}

impl PayloadKind {
    pub(crate) fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::Empty),
            1 => Ok(Self::Stored),
            2 => Ok(Self::Zstd),
            _ => Err(DecodeError::Invalid {
                field: "payload kind",
                value: u64::from(v),
            }),
        }
    }

    /// Checks that a stored length fits the kind and the data length:
    /// nothing stored without data, data stored as is, or zstd strictly
    /// smaller. So a payload is never larger than its data, and the data
    /// never larger than the chunk (hence than `MAX_CHUNK_SIZE`).
    pub(crate) fn check_lens(
        self,
        raw_len: u32,
        data_len: u32,
        stored_len: u32,
    ) -> Result<(), DecodeError> {
        let invalid = |field, value: u32| DecodeError::Invalid {
            field,
            value: u64::from(value),
        };
        if raw_len > MAX_CHUNK_SIZE {
            return Err(invalid("raw length", raw_len));
        }
        if data_len > raw_len {
            return Err(invalid("data length", data_len));
        }
        let ok = match self {
            Self::Empty => data_len == 0 && stored_len == 0,
            Self::Stored => data_len > 0 && stored_len == data_len,
            Self::Zstd => stored_len > 0 && stored_len < data_len,
        };
        if ok {
            Ok(())
        } else if self == Self::Empty || data_len == 0 {
            Err(invalid("data length", data_len))
        } else {
            Err(invalid("stored length", stored_len))
        }
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty",
            Self::Stored => "stored",
            Self::Zstd => "zstd",
        })
    }
}

/// How one of a chunk's two block maps is recorded.
///
/// For the *used* map, `Full` means every block of the chunk; for the
/// *data* map it means every used block. `Bitmap` is only used when the map
/// is neither empty nor full, so each map has exactly one encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MapEncoding {
    /// No block.
    Empty = 0,
    /// Every block (used map) or every used block (data map).
    Full = 1,
    /// An explicit bitmap follows the record header.
    Bitmap = 2,
}

impl MapEncoding {
    pub(crate) fn from_u8(v: u8, field: &'static str) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::Empty),
            1 => Ok(Self::Full),
            2 => Ok(Self::Bitmap),
            _ => Err(DecodeError::Invalid {
                field,
                value: u64::from(v),
            }),
        }
    }
}

/// Checks the combinations of map encodings and lengths that hold whatever
/// the geometry: data only among used blocks, lengths that agree with the
/// encodings, map bytes only for bitmaps.
fn check_maps(
    used: MapEncoding,
    data: MapEncoding,
    raw_len: u32,
    used_len: Option<u32>,
    data_len: u32,
    maps_len: u32,
) -> Result<(), DecodeError> {
    let invalid = |field, value: u32| DecodeError::Invalid {
        field,
        value: u64::from(value),
    };
    if used == MapEncoding::Empty && data != MapEncoding::Empty {
        return Err(invalid("data map encoding", data as u32));
    }
    match data {
        MapEncoding::Empty if data_len != 0 => return Err(invalid("data length", data_len)),
        MapEncoding::Full | MapEncoding::Bitmap if data_len == 0 => {
            return Err(invalid("data length", data_len))
        }
        _ => {}
    }
    if used == MapEncoding::Full && data == MapEncoding::Full && data_len != raw_len {
        return Err(invalid("data length", data_len));
    }
    if let Some(u) = used_len {
        let ok = match used {
            MapEncoding::Empty => u == 0,
            MapEncoding::Full => u == raw_len,
            MapEncoding::Bitmap => u > 0 && u < raw_len,
        } && match data {
            MapEncoding::Empty => true,
            MapEncoding::Full => data_len == u,
            MapEncoding::Bitmap => data_len < u,
        };
        if !ok {
            return Err(invalid("used length", u));
        }
    }
    let bitmaps = u32::from(used == MapEncoding::Bitmap) + u32::from(data == MapEncoding::Bitmap);
    if (bitmaps == 0) != (maps_len == 0) || maps_len > bitmaps * MAX_MAP_LEN {
        return Err(invalid("maps length", maps_len));
    }
    Ok(())
}

/// The shape of a disk image: how big the disk is, how it is cut into chunks
/// and blocks, how small a target may be, and the format version whose
/// hashes describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Format major version of the image (1 or 2): it decides how chunk and
    /// root hashes are defined.
    pub major: u16,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Raw bytes per chunk (the last chunk may be shorter).
    pub chunk_size: u32,
    /// Bytes per block, the unit of the used and data maps (v2: a power of
    /// two dividing `chunk_size`; v1 images have one block per chunk, so it
    /// equals `chunk_size`). The last block of the disk may be shorter.
    pub block_size: u32,
    /// Number of chunks, `ceil(disk_size / chunk_size)`.
    pub chunk_count: u64,
    /// Smallest target the image may be restored onto; blocks at or beyond
    /// it hold only data a retargeting step relocates (such as a GPT backup
    /// header). Equals `disk_size` unless the maker lowered it.
    pub min_target_size: u64,
    /// Compression level the image was made with.
    pub level: Level,
}

/// The image description most callers want; an alias kept for readability.
pub type ImageInfo = Geometry;

/// Largest power of two dividing `n` (n > 0).
fn pow2_divisor(n: u32) -> u32 {
    n & n.wrapping_neg()
}

fn check_chunk_size(chunk_size: u32) -> Result<(), ImageError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) || chunk_size % 512 != 0 {
        return Err(ImageError::InvalidGeometry {
            reason: format!(
                "chunk size {chunk_size} must be a multiple of 512 between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            ),
        });
    }
    Ok(())
}

impl Geometry {
    /// A v2 geometry: validates the chunk size (4 KiB..=64 MiB, a multiple
    /// of 512 so that chunk boundaries are sector-aligned), computes the
    /// chunk count, and takes [`DEFAULT_BLOCK_SIZE`] blocks (smaller if the
    /// chunk size needs it) and `min_target_size = disk_size`.
    pub fn new(disk_size: u64, chunk_size: u32, level: Level) -> Result<Self, ImageError> {
        check_chunk_size(chunk_size)?;
        Ok(Self {
            major: FORMAT_MAJOR,
            disk_size,
            chunk_size,
            block_size: DEFAULT_BLOCK_SIZE.min(pow2_divisor(chunk_size)),
            chunk_count: disk_size.div_ceil(u64::from(chunk_size)),
            min_target_size: disk_size,
            level,
        })
    }

    /// The geometry of a v1 image: one block per chunk.
    pub(crate) fn v1(disk_size: u64, chunk_size: u32, level: Level) -> Result<Self, ImageError> {
        check_chunk_size(chunk_size)?;
        Ok(Self {
            major: 1,
            disk_size,
            chunk_size,
            block_size: chunk_size,
            chunk_count: disk_size.div_ceil(u64::from(chunk_size)),
            min_target_size: disk_size,
            level,
        })
    }

    /// The same geometry with another block size: a power of two from
    /// [`MIN_BLOCK_SIZE`] to [`MAX_BLOCK_SIZE`] that divides the chunk size.
    pub fn with_block_size(mut self, block_size: u32) -> Result<Self, ImageError> {
        let ok = self.major >= 2
            && block_size.is_power_of_two()
            && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
            && self.chunk_size % block_size == 0;
        if !ok {
            return Err(ImageError::InvalidGeometry {
                reason: format!(
                    "block size {block_size} must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} dividing the chunk size {}",
                    self.chunk_size
                ),
            });
        }
        self.block_size = block_size;
        Ok(self)
    }

    /// The same geometry with another smallest target size (at most the
    /// disk size).
    pub fn with_min_target_size(mut self, min_target_size: u64) -> Result<Self, ImageError> {
        let reason = if min_target_size > self.disk_size {
            format!(
                "smallest target size {min_target_size} exceeds the disk size {}",
                self.disk_size
            )
        } else if self.major < 2 && min_target_size != self.disk_size {
            "format 1 images have no smallest target size".to_string()
        } else {
            self.min_target_size = min_target_size;
            return Ok(self);
        };
        Err(ImageError::InvalidGeometry { reason })
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

    /// Number of blocks in chunk `index` (the last one may be short).
    pub fn blocks_in(&self, index: u64) -> u32 {
        blocks_for(self.chunk_len(index), self.block_size)
    }

    /// Bytes of one block bitmap of chunk `index`.
    pub fn map_len(&self, index: u64) -> u32 {
        self.blocks_in(index).div_ceil(8)
    }

    /// Whether this is a well-formed geometry of its major version (what a
    /// reader checks on every geometry it did not build itself).
    pub(crate) fn check(&self) -> Result<(), DecodeError> {
        let invalid = |field, value: u64| DecodeError::Invalid { field, value };
        if check_chunk_size(self.chunk_size).is_err() {
            return Err(invalid("chunk size", u64::from(self.chunk_size)));
        }
        if self.chunk_count != self.disk_size.div_ceil(u64::from(self.chunk_size)) {
            return Err(invalid("chunk count", self.chunk_count));
        }
        match self.major {
            1 => {
                if self.block_size != self.chunk_size {
                    return Err(invalid("block size", u64::from(self.block_size)));
                }
                if self.min_target_size != self.disk_size {
                    return Err(invalid("smallest target size", self.min_target_size));
                }
            }
            2 => {
                if Self::new(self.disk_size, self.chunk_size, self.level)
                    .and_then(|g| g.with_block_size(self.block_size))
                    .is_err()
                {
                    return Err(invalid("block size", u64::from(self.block_size)));
                }
                if self.min_target_size > self.disk_size {
                    return Err(invalid("smallest target size", self.min_target_size));
                }
            }
            m => return Err(invalid("major version", u64::from(m))),
        }
        Ok(())
    }
}

/// Blocks of `block_size` needed to cover `len` bytes.
pub(crate) fn blocks_for(len: u32, block_size: u32) -> u32 {
    if block_size == 0 {
        0
    } else {
        len.div_ceil(block_size)
    }
}

/// The geometry as the multicast engine announces it (40 bytes): what a
/// client needs to check its target and the chunks it receives.
impl Codec for Geometry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&[0; 2]);
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.push(self.level.get());
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&self.chunk_count.to_le_bytes());
        out.extend_from_slice(&self.min_target_size.to_le_bytes());
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let major = r.u16()?;
        r.take(2)?;
        let chunk_size = r.u32()?;
        let block_size = r.u32()?;
        let level = r.u8()?;
        r.take(3)?;
        let disk_size = r.u64()?;
        let chunk_count = r.u64()?;
        let min_target_size = r.u64()?;
        let g = Self {
            major,
            disk_size,
            chunk_size,
            block_size,
            chunk_count,
            min_target_size,
            level: Level::new(level).ok_or(DecodeError::Invalid {
                field: "level",
                value: u64::from(level),
            })?,
        };
        g.check()?;
        Ok(g)
    }
}

/// The fixed header at offset 0: 64 bytes in v1, 128 in v2 (then the
/// layout blob follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Major format version (also in `geometry.major`).
    pub major: u16,
    /// Minor format version.
    pub minor: u16,
    /// Must-understand features: a reader refuses an image with a bit it
    /// does not know ([`KNOWN_REQUIRED_FEATURES`]). Always 0 in v1.
    pub required_features: u32,
    /// Compatible features: unknown bits are ignored ([`COMPAT_MAPPED`]).
    /// The v1 `flags` field.
    pub compat_features: u32,
    /// Disk size, chunk and block size, chunk count, smallest target, level.
    pub geometry: Geometry,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// Length of the layout blob after the header (v2; 0 in v1).
    pub layout_len: u32,
    /// BLAKE3 of the layout blob (of no bytes when there is none).
    pub layout_hash: [u8; 32],
}

impl Header {
    /// A header for `geometry` in its major version, with no layout.
    pub fn new(geometry: Geometry, created: u64) -> Self {
        Self {
            major: geometry.major,
            minor: if geometry.major == FORMAT_MAJOR {
                FORMAT_MINOR
            } else {
                0
            },
            required_features: 0,
            compat_features: 0,
            geometry,
            created,
            layout_len: 0,
            layout_hash: *blake3::hash(&[]).as_bytes(),
        }
    }

    /// Encoded length of the header of major version `major`.
    pub fn len_of(major: u16) -> usize {
        if major == 1 {
            HEADER_LEN_V1
        } else {
            HEADER_LEN
        }
    }

    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        Self::len_of(self.major)
    }

    /// Image offset of chunk 0's record: after the header and the layout.
    pub fn records_offset(&self) -> u64 {
        self.encoded_len() as u64 + u64::from(self.layout_len)
    }

    /// Reads the major version from the first bytes of an image (which
    /// every version shares) and says how long its header is. Checks the
    /// magic and the version, so a newer image gets a version error rather
    /// than a corruption error.
    pub fn peek_len(prefix: &[u8]) -> Result<usize, ImageError> {
        if prefix.len() >= 8 && prefix[..8] != HEADER_MAGIC {
            return Err(ImageError::NotAnImage);
        }
        if prefix.len() < HEADER_PREFIX_LEN {
            return Err(ImageError::Truncated {
                what: "header".into(),
                offset: 0,
            });
        }
        let major = u16::from_le_bytes([prefix[8], prefix[9]]);
        if major > FORMAT_MAJOR {
            return Err(ImageError::UnsupportedVersion {
                major,
                supported: FORMAT_MAJOR,
            });
        }
        if major < OLDEST_MAJOR {
            return Err(ImageError::HeaderCorrupt {
                reason: format!("invalid major version ({major})"),
            });
        }
        Ok(Self::len_of(major))
    }

    /// Parses and validates a header, mapping failures to image errors:
    /// magic, then major version (before the checksum, see
    /// [`Header::peek_len`]), then checksum and fields, then the
    /// must-understand features.
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        let len = Self::peek_len(bytes)?;
        if bytes.len() < len {
            return Err(ImageError::Truncated {
                what: "header".into(),
                offset: 0,
            });
        }
        let h = Self::from_bytes(&bytes[..len]).map_err(|e| ImageError::HeaderCorrupt {
            reason: match e {
                DecodeError::Checksum => "header checksum mismatch".into(),
                other => other.to_string(),
            },
        })?;
        let unknown = h.required_features & !KNOWN_REQUIRED_FEATURES;
        if unknown != 0 {
            return Err(ImageError::UnsupportedFeatures { bits: unknown });
        }
        Ok(h)
    }
}

impl Codec for Header {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let g = &self.geometry;
        out.extend_from_slice(&HEADER_MAGIC);
        out.extend_from_slice(&self.major.to_le_bytes());
        out.extend_from_slice(&self.minor.to_le_bytes());
        if self.major == 1 {
            out.extend_from_slice(&self.compat_features.to_le_bytes());
            out.extend_from_slice(&g.chunk_size.to_le_bytes());
            out.push(g.level.get());
            out.extend_from_slice(&[0; 3]);
            out.extend_from_slice(&g.disk_size.to_le_bytes());
            out.extend_from_slice(&g.chunk_count.to_le_bytes());
            out.extend_from_slice(&self.created.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
        } else {
            out.extend_from_slice(&self.required_features.to_le_bytes());
            out.extend_from_slice(&self.compat_features.to_le_bytes());
            out.extend_from_slice(&g.chunk_size.to_le_bytes());
            out.extend_from_slice(&g.block_size.to_le_bytes());
            out.push(g.level.get());
            out.extend_from_slice(&[0; 3]);
            out.extend_from_slice(&g.disk_size.to_le_bytes());
            out.extend_from_slice(&g.chunk_count.to_le_bytes());
            out.extend_from_slice(&g.min_target_size.to_le_bytes());
            out.extend_from_slice(&self.created.to_le_bytes());
            out.extend_from_slice(&self.layout_len.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&self.layout_hash);
            out.extend_from_slice(&[0; 16]);
        }
        push_checksum8(out, start);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.position();
        r.expect_magic(&HEADER_MAGIC)?;
        let major = r.u16()?;
        let minor = r.u16()?;
        let invalid = |field, value: u64| DecodeError::Invalid { field, value };
        let level_of = |l: u8| Level::new(l).ok_or(invalid("level", u64::from(l)));
        let header = match major {
            1 => {
                let flags = r.u32()?;
                let chunk_size = r.u32()?;
                let level = r.u8()?;
                r.take(3)?;
                let disk_size = r.u64()?;
                let chunk_count = r.u64()?;
                let created = r.u64()?;
                r.take(8)?;
                r.expect_checksum8(start)?;
                let geometry = Geometry::v1(disk_size, chunk_size, level_of(level)?)
                    .map_err(|_| invalid("chunk size", u64::from(chunk_size)))?;
                if geometry.chunk_count != chunk_count {
                    return Err(invalid("chunk count", chunk_count));
                }
                Self {
                    major,
                    minor,
                    required_features: 0,
                    compat_features: flags,
                    geometry,
                    created,
                    layout_len: 0,
                    layout_hash: *blake3::hash(&[]).as_bytes(),
                }
            }
            2 => {
                let required_features = r.u32()?;
                let compat_features = r.u32()?;
                let chunk_size = r.u32()?;
                let block_size = r.u32()?;
                let level = r.u8()?;
                r.take(3)?;
                let disk_size = r.u64()?;
                let chunk_count = r.u64()?;
                let min_target_size = r.u64()?;
                let created = r.u64()?;
                let layout_len = r.u32()?;
                r.take(4)?;
                let layout_hash = r.array()?;
                r.take(16)?;
                r.expect_checksum8(start)?;
                let geometry = Geometry {
                    major,
                    disk_size,
                    chunk_size,
                    block_size,
                    chunk_count,
                    min_target_size,
                    level: level_of(level)?,
                };
                geometry.check()?;
                if layout_len > MAX_LAYOUT_LEN {
                    return Err(invalid("layout length", u64::from(layout_len)));
                }
                Self {
                    major,
                    minor,
                    required_features,
                    compat_features,
                    geometry,
                    created,
                    layout_len,
                    layout_hash,
                }
            }
            m => return Err(invalid("major version", u64::from(m))),
        };
        Ok(header)
    }
}

/// The fixed 80-byte header in front of each v2 chunk's maps and payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Chunk index.
    pub index: u64,
    /// How the payload is stored.
    pub kind: PayloadKind,
    /// How the used map is recorded.
    pub used: MapEncoding,
    /// How the data map is recorded.
    pub data: MapEncoding,
    /// Raw length of the chunk.
    pub raw_len: u32,
    /// Payload bytes that follow the maps.
    pub stored_len: u32,
    /// Bytes of the chunk's data blocks (what the payload decompresses to).
    pub data_len: u32,
    /// Bytes of bitmaps between this header and the payload.
    pub maps_len: u32,
    /// The chunk hash (see [`crate::EncodedChunk`]).
    pub hash: [u8; 32],
    /// checksum8 of the bitmaps (of no bytes when there are none).
    pub maps_sum: [u8; 8],
}

impl RecordHeader {
    /// Image bytes of the whole record: header, maps, payload.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.maps_len) + u64::from(self.stored_len)
    }
}

impl Codec for RecordHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&RECORD_MAGIC);
        out.push(self.kind as u8);
        out.push(self.used as u8);
        out.push(self.data as u8);
        out.push(0);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.maps_len.to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.maps_sum);
        push_checksum8(out, start);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.position();
        r.expect_magic(&RECORD_MAGIC)?;
        let kind = r.u8()?;
        let used = r.u8()?;
        let data = r.u8()?;
        r.take(1)?;
        let index = r.u64()?;
        let raw_len = r.u32()?;
        let stored_len = r.u32()?;
        let data_len = r.u32()?;
        let maps_len = r.u32()?;
        let hash = r.array()?;
        let maps_sum = r.array()?;
        r.expect_checksum8(start)?;
        let kind = PayloadKind::from_u8(kind)?;
        let used = MapEncoding::from_u8(used, "used map encoding")?;
        let data = MapEncoding::from_u8(data, "data map encoding")?;
        kind.check_lens(raw_len, data_len, stored_len)?;
        check_maps(used, data, raw_len, None, data_len, maps_len)?;
        Ok(Self {
            index,
            kind,
            used,
            data,
            raw_len,
            stored_len,
            data_len,
            maps_len,
            hash,
            maps_sum,
        })
    }
}

/// The 64-byte v1 chunk record header (read only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeaderV1 {
    /// Chunk index.
    pub index: u64,
    /// Storage kind (v1: 0 hole, 1 stored, 2 zstd).
    pub kind: PayloadKind,
    /// Raw length.
    pub raw_len: u32,
    /// Payload length that follows (0 for holes).
    pub stored_len: u32,
    /// BLAKE3 of the raw bytes.
    pub hash: [u8; 32],
}

impl RecordHeaderV1 {
    /// The v2 form: one block per chunk, used; a data block unless a hole.
    pub fn upgrade(&self) -> RecordHeader {
        let hole = self.kind == PayloadKind::Empty;
        RecordHeader {
            index: self.index,
            kind: self.kind,
            used: MapEncoding::Full,
            data: if hole {
                MapEncoding::Empty
            } else {
                MapEncoding::Full
            },
            raw_len: self.raw_len,
            stored_len: self.stored_len,
            data_len: if hole { 0 } else { self.raw_len },
            maps_len: 0,
            hash: self.hash,
            maps_sum: checksum8(&[]),
        }
    }
}

impl Codec for RecordHeaderV1 {
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
        let kind = PayloadKind::from_u8(kind)?;
        let data_len = if kind == PayloadKind::Empty {
            0
        } else {
            raw_len
        };
        kind.check_lens(raw_len, data_len, stored_len)?;
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
    /// How the payload is stored.
    pub kind: PayloadKind,
    /// How the used map is recorded.
    pub used: MapEncoding,
    /// How the data map is recorded.
    pub data: MapEncoding,
    /// Payload length.
    pub stored_len: u32,
    /// Raw length.
    pub raw_len: u32,
    /// Bytes of bitmaps in the record.
    pub maps_len: u32,
    /// Bytes of used blocks (what the image promises to restore).
    pub used_len: u32,
    /// Bytes of data blocks (what a restore writes).
    pub data_len: u32,
    /// The chunk hash.
    pub hash: [u8; 32],
}

impl IndexEntry {
    /// Whether this entry describes the record `rec` (all shared fields equal).
    pub fn matches(&self, rec: &RecordHeader) -> bool {
        self.kind == rec.kind
            && self.used == rec.used
            && self.data == rec.data
            && self.stored_len == rec.stored_len
            && self.raw_len == rec.raw_len
            && self.maps_len == rec.maps_len
            && self.data_len == rec.data_len
            && self.hash == rec.hash
    }

    /// The entry of record `rec` at `offset` holding `used_len` used bytes.
    pub fn of_record(rec: &RecordHeader, offset: u64, used_len: u32) -> Self {
        Self {
            offset,
            kind: rec.kind,
            used: rec.used,
            data: rec.data,
            stored_len: rec.stored_len,
            raw_len: rec.raw_len,
            maps_len: rec.maps_len,
            used_len,
            data_len: rec.data_len,
            hash: rec.hash,
        }
    }
}

impl Codec for IndexEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.used as u8);
        out.push(self.data as u8);
        out.push(0);
        out.extend_from_slice(&self.maps_len.to_le_bytes());
        out.extend_from_slice(&self.used_len.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.hash);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let offset = r.u64()?;
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        let kind = PayloadKind::from_u8(r.u8()?)?;
        let used = MapEncoding::from_u8(r.u8()?, "used map encoding")?;
        let data = MapEncoding::from_u8(r.u8()?, "data map encoding")?;
        r.take(1)?;
        let maps_len = r.u32()?;
        let used_len = r.u32()?;
        let data_len = r.u32()?;
        let hash = r.array()?;
        kind.check_lens(raw_len, data_len, stored_len)?;
        check_maps(used, data, raw_len, Some(used_len), data_len, maps_len)?;
        Ok(Self {
            offset,
            kind,
            used,
            data,
            stored_len,
            raw_len,
            maps_len,
            used_len,
            data_len,
            hash,
        })
    }
}

/// One 56-byte entry of a v1 index (read only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntryV1 {
    /// Image offset of the chunk's record header.
    pub offset: u64,
    /// Storage kind.
    pub kind: PayloadKind,
    /// Payload length.
    pub stored_len: u32,
    /// Raw length.
    pub raw_len: u32,
    /// BLAKE3 of the raw bytes.
    pub hash: [u8; 32],
}

impl IndexEntryV1 {
    /// The v2 form (see [`RecordHeaderV1::upgrade`]).
    pub fn upgrade(&self) -> IndexEntry {
        let rec = RecordHeaderV1 {
            index: 0,
            kind: self.kind,
            raw_len: self.raw_len,
            stored_len: self.stored_len,
            hash: self.hash,
        }
        .upgrade();
        IndexEntry::of_record(&rec, self.offset, self.raw_len)
    }
}

impl Codec for IndexEntryV1 {
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
        let kind = PayloadKind::from_u8(r.u8()?)?;
        r.take(7)?;
        let hash = r.array()?;
        let data_len = if kind == PayloadKind::Empty {
            0
        } else {
            raw_len
        };
        kind.check_lens(raw_len, data_len, stored_len)?;
        Ok(Self {
            offset,
            kind,
            stored_len,
            raw_len,
            hash,
        })
    }
}

/// An index entry of some format version: its fixed encoded length.
pub trait Entry: Codec {
    /// Encoded length of one entry.
    const LEN: usize;
}

impl Entry for IndexEntry {
    const LEN: usize = INDEX_ENTRY_LEN;
}

impl Entry for IndexEntryV1 {
    const LEN: usize = INDEX_ENTRY_LEN_V1;
}

/// The index: one entry per chunk, then a BLAKE3 hash of the index bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index<E = IndexEntry> {
    /// Entries in chunk order.
    pub entries: Vec<E>,
}

impl<E> Default for Index<E> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<E: Entry> Index<E> {
    /// Encoded length of an index of `count` entries.
    pub fn encoded_len(count: u64) -> u64 {
        16 + count.saturating_mul(E::LEN as u64) + 32
    }
}

/// Incrementally hashes an index, so a writer can stream it without
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

    pub(crate) fn push<E: Codec>(&mut self, e: &E) {
        self.buf.clear();
        e.encode(&mut self.buf);
        self.hasher.update(&self.buf);
    }

    pub(crate) fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

impl<E: Entry> Codec for Index<E> {
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
        let need = count.saturating_mul(E::LEN as u64).saturating_add(32);
        if need > r.remaining() as u64 {
            return Err(DecodeError::Invalid {
                field: "index entry count",
                value: count,
            });
        }
        let body_start = r.position();
        r.take(count as usize * E::LEN)?;
        let covered = &r.consumed()[start..];
        let want: [u8; 32] = r.array()?;
        if *blake3::hash(covered).as_bytes() != want {
            return Err(DecodeError::Checksum);
        }
        let mut body = Reader::new(&covered[body_start - start..]);
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            entries.push(E::read(&mut body)?);
        }
        Ok(Self { entries })
    }
}

/// The fixed 80-byte trailer at the very end of an image file (the same in
/// v1 and v2).
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
        assert_eq!(g.block_size, 4096);
        assert_eq!(g.blocks_in(2), 1);
        assert_eq!(g.min_target_size, 10_000);
        assert!(Geometry::new(1, 1000, Level::STORED).is_err());
        assert!(Geometry::new(1, MAX_CHUNK_SIZE * 2, Level::STORED).is_err());
        assert_eq!(
            Geometry::new(0, 4096, Level::STORED)
                .map(|g| g.chunk_count)
                .ok(),
            Some(0)
        );
        // A chunk size of 3 × 4 KiB takes at most 4 KiB blocks; 12 KiB + 512 takes 512.
        let odd = Geometry::new(1 << 20, 12288, Level::STORED).expect("geometry");
        assert_eq!(odd.block_size, 4096);
        assert!(odd.with_block_size(8192).is_err());
        let odd = Geometry::new(1 << 20, 12800, Level::STORED).expect("geometry");
        assert_eq!(odd.block_size, 512);
        let g = g.with_block_size(512).expect("512");
        assert_eq!(g.blocks_in(2), (10_000u32 - 8192).div_ceil(512));
        assert_eq!(g.map_len(0), 1);
        for bad in [0, 256, 1000, 3 * 1024, 1 << 17] {
            assert!(geo().with_block_size(bad).is_err(), "{bad}");
        }
        assert!(geo().with_min_target_size(10_001).is_err());
        assert_eq!(
            geo()
                .with_min_target_size(9000)
                .map(|g| g.min_target_size)
                .ok(),
            Some(9000)
        );
    }

    #[test]
    fn geometry_codec_round_trips_and_checks() {
        let g = geo()
            .with_block_size(1024)
            .and_then(|g| g.with_min_target_size(5000))
            .expect("geometry");
        let b = g.to_bytes();
        assert_eq!(b.len(), 40);
        assert_eq!(Geometry::from_bytes(&b), Ok(g));
        let v1 = Geometry::v1(10_000, 4096, Level::FASTEST).expect("v1");
        assert_eq!(Geometry::from_bytes(&v1.to_bytes()), Ok(v1));
        // Each field lying: block size, chunk count, min target, major.
        for (at, v) in [(8usize, 3u8), (24, 9), (32 + 7, 1), (0, 7)] {
            let mut bad = b.clone();
            bad[at] ^= v;
            assert!(Geometry::from_bytes(&bad).is_err(), "byte {at}");
        }
    }

    #[test]
    fn header_round_trip_and_every_flip_detected() {
        for h in [
            Header::new(geo(), 1_700_000_000),
            Header::new(
                Geometry::v1(10_000, 4096, Level::BALANCED).expect("v1"),
                1_700_000_000,
            ),
        ] {
            let bytes = h.to_bytes();
            assert_eq!(bytes.len(), h.encoded_len());
            assert_eq!(Header::parse(&bytes).ok(), Some(h));
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x10;
                assert!(Header::parse(&b).is_err(), "flip at {i} undetected");
            }
        }
        let mut future = Header::new(geo(), 0).to_bytes();
        future[8] = 3;
        let e = Header::parse(&future)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "image format version 3 is newer than this img supports (2)"
        );
    }

    #[test]
    fn unknown_required_features_are_refused_unknown_compat_ignored() {
        let mut h = Header::new(geo(), 0);
        h.compat_features = 0xFFFF_0000;
        assert_eq!(Header::parse(&h.to_bytes()).ok(), Some(h));
        h.required_features = 1 << 5;
        let e = Header::parse(&h.to_bytes()).err();
        assert!(
            matches!(e, Some(ImageError::UnsupportedFeatures { bits: 32 })),
            "{e:?}"
        );
    }

    #[test]
    fn header_lengths_and_fields_that_lie() {
        let mut h = Header::new(geo(), 0);
        h.layout_len = MAX_LAYOUT_LEN + 1;
        assert!(Header::parse(&h.to_bytes()).is_err());
        let mut h = Header::new(geo(), 0);
        h.geometry.min_target_size = h.geometry.disk_size + 1;
        assert!(Header::parse(&h.to_bytes()).is_err());
        let mut h = Header::new(geo(), 0);
        h.geometry.chunk_count += 1;
        assert!(Header::parse(&h.to_bytes()).is_err());
        let mut h = Header::new(geo(), 0);
        h.geometry.block_size = 3000;
        assert!(Header::parse(&h.to_bytes()).is_err());
        // Cut short: a v2 header needs all 128 bytes.
        let b = Header::new(geo(), 0).to_bytes();
        for cut in [0, 7, 8, 11, 12, 64, 127] {
            assert!(Header::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    fn record() -> RecordHeader {
        RecordHeader {
            index: 7,
            kind: PayloadKind::Zstd,
            used: MapEncoding::Bitmap,
            data: MapEncoding::Full,
            raw_len: 4096,
            stored_len: 100,
            data_len: 2048,
            maps_len: 1,
            hash: [3; 32],
            maps_sum: [4; 8],
        }
    }

    #[test]
    fn record_and_trailer_round_trip() {
        let rec = record();
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
    fn record_lengths_that_lie_are_refused() {
        let bad = [
            RecordHeader {
                data_len: 5000,
                ..record()
            },
            RecordHeader {
                stored_len: 2048,
                ..record()
            },
            RecordHeader {
                kind: PayloadKind::Empty,
                stored_len: 0,
                ..record()
            },
            RecordHeader {
                maps_len: 0,
                ..record()
            },
            RecordHeader {
                maps_len: MAX_MAP_LEN + 1,
                ..record()
            },
            RecordHeader {
                used: MapEncoding::Empty,
                ..record()
            },
            RecordHeader {
                used: MapEncoding::Full,
                maps_len: 0,
                ..record()
            },
            RecordHeader {
                raw_len: MAX_CHUNK_SIZE + 1,
                ..record()
            },
        ];
        for r in bad {
            assert!(RecordHeader::from_bytes(&r.to_bytes()).is_err(), "{r:?}");
        }
    }

    #[test]
    fn v1_records_upgrade() {
        let v1 = RecordHeaderV1 {
            index: 3,
            kind: PayloadKind::Empty,
            raw_len: 4096,
            stored_len: 0,
            hash: [1; 32],
        };
        let b = v1.to_bytes();
        assert_eq!(b.len(), RECORD_HEADER_LEN_V1);
        assert_eq!(RecordHeaderV1::from_bytes(&b), Ok(v1));
        let up = v1.upgrade();
        assert_eq!(
            (up.used, up.data, up.data_len),
            (MapEncoding::Full, MapEncoding::Empty, 0)
        );
        assert_eq!(RecordHeader::from_bytes(&up.to_bytes()), Ok(up));
        let e = IndexEntryV1 {
            offset: 64,
            kind: PayloadKind::Stored,
            stored_len: 4096,
            raw_len: 4096,
            hash: [2; 32],
        };
        assert_eq!(e.to_bytes().len(), INDEX_ENTRY_LEN_V1);
        let up = e.upgrade();
        assert_eq!((up.used_len, up.data_len), (4096, 4096));
        assert_eq!(IndexEntry::from_bytes(&up.to_bytes()), Ok(up));
    }

    #[test]
    fn index_rejects_huge_counts_without_allocating() {
        let mut b = INDEX_MAGIC.to_vec();
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Index::<IndexEntry>::from_bytes(&b),
            Err(DecodeError::Invalid { .. })
        ));
        let entry = IndexEntry::of_record(&record(), 128, 2048);
        let idx = Index {
            entries: vec![entry],
        };
        let b = idx.to_bytes();
        assert_eq!(b.len() as u64, Index::<IndexEntry>::encoded_len(1));
        assert_eq!(Index::from_bytes(&b), Ok(idx.clone()));
        let mut h = IndexHasher::new(1);
        h.push(&idx.entries[0]);
        assert_eq!(&h.finish()[..], &b[b.len() - 32..]);
        // An entry whose used length lies about its maps.
        for used_len in [0, 1000, 4096] {
            let e = IndexEntry { used_len, ..entry };
            assert!(IndexEntry::from_bytes(&e.to_bytes()).is_err(), "{used_len}");
        }
    }
}
