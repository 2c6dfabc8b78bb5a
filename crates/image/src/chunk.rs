//! Chunks: block maps, zero detection, hashing, compression, verification,
//! and the compact object the multicast engine sends.
//!
//! A chunk's *used* blocks are those the image promises to restore; its
//! *data* blocks are the used ones that are not all zero. Only data blocks
//! are stored (back to back, compressed together); used-zero and free
//! blocks cost nothing but their bits in the maps.

use std::ops::Range;

use crate::blocks::{decode_maps, encode_maps, maps_len, BlockMap};
use crate::codec::{Codec, DecodeError, Reader};
use crate::format::{
    blocks_for, Geometry, PayloadKind, MAX_BLOCK_SIZE, MAX_CHUNK_SIZE, MIN_BLOCK_SIZE,
};
use crate::{ImageError, Level};

/// True when every byte is zero. On the hot path (every block of every
/// disk), so it ORs 64-byte blocks, which the compiler vectorises, and
/// stops at the first non-zero block.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Zeros to hash used-zero blocks from (the largest block).
pub(crate) static ZEROS: [u8; MAX_BLOCK_SIZE as usize] = [0; MAX_BLOCK_SIZE as usize];

fn hash_zeros(h: &mut blake3::Hasher, mut len: usize) {
    while len > 0 {
        let n = len.min(ZEROS.len());
        h.update(&ZEROS[..n]);
        len -= n;
    }
}

/// BLAKE3 of `len` zero bytes (the v1 hash of a hole).
pub fn zero_hash(len: u32) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hash_zeros(&mut hasher, len as usize);
    *hasher.finalize().as_bytes()
}

/// The hash of a chunk whose every block is used and zero, remembered for
/// the last shape asked: nearly every such chunk has the full chunk size,
/// so it costs no hashing.
#[derive(Debug, Default)]
struct ZeroHash {
    cached: Option<((u16, u32, u32), [u8; 32])>,
}

impl ZeroHash {
    fn get(&mut self, major: u16, raw_len: u32, block_size: u32) -> [u8; 32] {
        let key = (major, raw_len, block_size);
        match self.cached {
            Some((k, h)) if k == key => h,
            _ => {
                let h = if major == 1 {
                    zero_hash(raw_len)
                } else {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(BlockMap::full(blocks_for(raw_len, block_size)).as_bytes());
                    hash_zeros(&mut hasher, raw_len as usize);
                    *hasher.finalize().as_bytes()
                };
                self.cached = Some((key, h));
                h
            }
        }
    }
}

/// Byte range of blocks `blocks` in a chunk of `raw_len` bytes.
fn byte_range(blocks: &Range<u32>, block_size: u32, raw_len: u32) -> Range<usize> {
    let start = blocks.start as usize * block_size as usize;
    let end = (blocks.end as usize * block_size as usize).min(raw_len as usize);
    start..end
}

/// The v2 chunk hash from the raw chunk bytes: BLAKE3 over the used bitmap,
/// then the bytes of every used block in order. Bytes of free blocks are
/// not hashed (`raw` may hold anything there).
fn hash_v2_raw(used: &BlockMap, block_size: u32, raw: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(used.as_bytes());
    for run in used.runs() {
        h.update(&raw[byte_range(&run, block_size, raw.len() as u32)]);
    }
    *h.finalize().as_bytes()
}

/// Feeds a BLAKE3 hasher in large pieces: BLAKE3 hashes many 1 KiB chunks
/// at once only within one `update`, so a chunk whose data and zero blocks
/// alternate every 4 KiB is staged into 64 KiB pieces first (hashing it
/// block by block cost a third more CPU for the whole restore).
struct Staged {
    hasher: blake3::Hasher,
    stage: Vec<u8>,
}

/// Pieces at least this long go to the hasher directly.
const STAGE_DIRECT: usize = 16 << 10;
/// Size of the staging buffer.
const STAGE_LEN: usize = 64 << 10;

impl Staged {
    fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            stage: Vec::with_capacity(STAGE_LEN),
        }
    }

    fn flush(&mut self) {
        self.hasher.update(&self.stage);
        self.stage.clear();
    }

    fn bytes(&mut self, mut b: &[u8]) {
        if self.stage.is_empty() && b.len() >= STAGE_DIRECT {
            self.hasher.update(b);
            return;
        }
        while !b.is_empty() {
            let n = b.len().min(STAGE_LEN - self.stage.len());
            self.stage.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.stage.len() == STAGE_LEN {
                self.flush();
            }
        }
    }

    fn zeros(&mut self, mut len: usize) {
        if self.stage.is_empty() && len >= STAGE_DIRECT {
            hash_zeros(&mut self.hasher, len);
            return;
        }
        while len > 0 {
            let n = len.min(STAGE_LEN - self.stage.len());
            self.stage.resize(self.stage.len() + n, 0);
            len -= n;
            if self.stage.len() == STAGE_LEN {
                self.flush();
            }
        }
    }

    fn finish(mut self) -> [u8; 32] {
        self.flush();
        *self.hasher.finalize().as_bytes()
    }
}

/// The same hash from what an image stores: the data blocks back to back
/// (`data_bytes`) and zeros for the other used blocks. `None` if
/// `data_bytes` does not hold exactly the data blocks.
fn hash_v2_data(
    used: &BlockMap,
    data: &BlockMap,
    block_size: u32,
    raw_len: u32,
    data_bytes: &[u8],
) -> Option<[u8; 32]> {
    let mut h = Staged::new();
    h.bytes(used.as_bytes());
    let mut cursor = 0usize;
    for run in used.runs() {
        let mut b = run.start;
        while b < run.end {
            let is_data = data.get(b);
            let mut e = b + 1;
            while e < run.end && data.get(e) == is_data {
                e += 1;
            }
            let r = byte_range(&(b..e), block_size, raw_len);
            if is_data {
                h.bytes(data_bytes.get(cursor..cursor + r.len())?);
                cursor += r.len();
            } else {
                h.zeros(r.len());
            }
            b = e;
        }
    }
    (cursor == data_bytes.len()).then(|| h.finish())
}

/// A reusable compression context; keep one per worker thread (zstd
/// contexts are costly to create and not thread-safe).
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    level: Option<i32>,
    zero: ZeroHash,
    probe: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("level", &self.level)
            .finish()
    }
}

impl Default for Compressor {
    fn default() -> Self {
        Self::new()
    }
}

/// zstd's fastest level sizes its match table for streams (a 16 Ki-entry
/// hash, a 512 KiB window). A chunk is compressed alone, so a window of the
/// whole chunk and twice the table find the matches a stream would have
/// carried over: on a used ext4 disk 1.5% smaller, as fast (the image then
/// is smaller than `partclone | zstd -1`'s). Other levels keep zstd's own
/// parameters (0 = the level's default). False when zstd refuses.
fn tune(z: &mut zstd::bulk::Compressor<'static>, zstd_level: i32) -> bool {
    use zstd::zstd_safe::CParameter;
    let (window_log, hash_log) = if zstd_level == 1 { (20, 15) } else { (0, 0) };
    z.set_parameter(CParameter::WindowLog(window_log)).is_ok()
        && z.set_parameter(CParameter::HashLog(hash_log)).is_ok()
}

/// Bytes of each sample taken to decide whether a chunk compresses.
const PROBE: usize = 32 * 1024;

impl Compressor {
    /// A new context. If zstd cannot allocate one, chunks are stored raw
    /// (still a valid image), rather than failing.
    pub fn new() -> Self {
        Self {
            zstd: None,
            level: None,
            zero: ZeroHash::default(),
            probe: Vec::new(),
        }
    }

    /// Compresses `src` into `out` (replacing its contents); true when the
    /// result is strictly smaller than `src`, false when storing is better.
    fn compress(&mut self, src: &[u8], zstd_level: i32, out: &mut Vec<u8>) -> bool {
        if self.zstd.is_none() {
            self.zstd = zstd::bulk::Compressor::new(zstd_level).ok();
            if let Some(z) = self.zstd.as_mut() {
                if !tune(z, zstd_level) {
                    self.zstd = None;
                }
            }
            self.level = Some(zstd_level);
        }
        let Some(z) = self.zstd.as_mut() else {
            return false;
        };
        if self.level != Some(zstd_level) {
            if z.set_compression_level(zstd_level).is_err() || !tune(z, zstd_level) {
                return false;
            }
            self.level = Some(zstd_level);
        }
        // Random data (encrypted volumes, compressed files) is common on
        // disks and zstd gains nothing on it: three small samples decide
        // cheaply whether the whole chunk is worth compressing.
        if src.len() >= 8 * PROBE {
            let probe = &mut self.probe;
            probe.clear();
            probe.reserve(PROBE - PROBE / 32);
            let at = [0, src.len() / 2 - PROBE / 2, src.len() - PROBE];
            let gains = at.iter().any(|&a| {
                probe.clear();
                // Output that does not fit in 97% of the sample means no gain.
                z.compress_to_buffer(&src[a..a + PROBE], probe).is_ok()
            });
            if !gains {
                return false;
            }
        }
        out.clear();
        out.reserve(src.len().saturating_sub(1));
        matches!(z.compress_to_buffer(src, out), Ok(n) if n > 0 && n < src.len())
    }
}

/// A reusable decompression context; one per worker thread.
pub struct Decompressor {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    zero: ZeroHash,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl Decompressor {
    /// A new context (the zstd part is created on first use).
    pub fn new() -> Self {
        Self {
            zstd: None,
            zero: ZeroHash::default(),
        }
    }
}

/// One chunk ready to store or send: its index, maps, hash and payload.
///
/// The hash is what a restore is checked against:
/// * v2: BLAKE3 over the used bitmap (`ceil(blocks / 8)` bytes, also when
///   the record says "all" or "none"), then the bytes of every used block
///   in order (zeros for used-zero blocks); free blocks add nothing.
/// * v1 (read from old images): BLAKE3 of the chunk's raw bytes; one block
///   per chunk, always used.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    /// Chunk index (disk offset = index × chunk size).
    pub index: u64,
    /// Format major version whose hash definition applies (1 or 2).
    pub major: u16,
    /// Raw length.
    pub raw_len: u32,
    /// Block size of the maps (v1: the chunk size).
    pub block_size: u32,
    /// How the payload is stored.
    pub kind: PayloadKind,
    /// Blocks the image promises to restore.
    pub used: BlockMap,
    /// Used blocks that are not all zero: the ones the payload holds.
    pub data: BlockMap,
    /// The chunk hash.
    pub hash: [u8; 32],
    /// The data blocks, stored or compressed; empty without data blocks.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for EncodedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedChunk")
            .field("index", &self.index)
            .field("major", &self.major)
            .field("kind", &self.kind)
            .field("raw_len", &self.raw_len)
            .field("block_size", &self.block_size)
            .field("used", &self.used)
            .field("data", &self.data)
            .field("hash", &crate::error::hex(&self.hash[..8]))
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Version byte of the wire form of [`EncodedChunk`].
const WIRE_VERSION: u8 = 2;
/// Fixed part of the wire form (see `docs/FORMAT.md`).
pub const WIRE_HEADER_LEN: usize = 64;

/// The longest wire form a chunk of geometry `g` can have: the header, both block maps and a
/// payload never longer than the chunk. A multicast client refuses longer objects.
pub fn max_wire_len(g: &Geometry) -> u64 {
    let blocks = u64::from(g.chunk_size.div_ceil(g.block_size.max(1)));
    WIRE_HEADER_LEN as u64 + 2 * blocks.div_ceil(8) + u64::from(g.chunk_size)
}

impl EncodedChunk {
    /// Encodes one chunk of raw disk bytes as a v2 chunk: `used` says which
    /// blocks the image keeps (`None`: all of them); used blocks that are
    /// all zero become used-zero blocks; the rest are compressed together
    /// (stored when level 0 or when zstd does not make them smaller).
    /// Bytes of free blocks in `raw` are never read.
    pub fn encode(
        index: u64,
        raw: &[u8],
        used: Option<&BlockMap>,
        block_size: u32,
        level: Level,
        compressor: &mut Compressor,
    ) -> Self {
        let blocks = blocks_for(raw.len() as u32, block_size);
        let used = used.cloned().unwrap_or_else(|| BlockMap::full(blocks));
        Self::encode_owned(
            index,
            raw.to_vec(),
            used,
            block_size,
            level,
            compressor,
            Vec::new(),
        )
        .0
    }

    /// [`EncodedChunk::encode`] on owned buffers: the raw buffer becomes the
    /// payload when the whole chunk is stored as it is, and `spare` is used
    /// for the payload otherwise, so a pipeline recycles both. Returns the
    /// chunk and the buffer it did not keep.
    pub(crate) fn encode_owned(
        index: u64,
        raw: Vec<u8>,
        used: BlockMap,
        block_size: u32,
        level: Level,
        compressor: &mut Compressor,
        mut spare: Vec<u8>,
    ) -> (Self, Vec<u8>) {
        // Chunks are at most MAX_CHUNK_SIZE (64 MiB), so the length fits.
        let raw_len = raw.len() as u32;
        let blocks = blocks_for(raw_len, block_size);
        let mut data = BlockMap::empty(blocks);
        for run in used.runs() {
            for b in run {
                if !is_zero(&raw[byte_range(&(b..b + 1), block_size, raw_len)]) {
                    data.set(b);
                }
            }
        }
        let mut chunk = Self {
            index,
            major: 2,
            raw_len,
            block_size,
            kind: PayloadKind::Empty,
            used,
            data,
            hash: [0; 32],
            payload: Vec::new(),
        };
        if chunk.data.is_empty() {
            chunk.hash = if chunk.used.is_full() {
                compressor.zero.get(2, raw_len, block_size)
            } else {
                hash_v2_raw(&chunk.used, block_size, &raw)
            };
            return (chunk, raw);
        }
        chunk.hash = hash_v2_raw(&chunk.used, block_size, &raw);
        let whole = chunk.data.is_full();
        let mut gathered = Vec::new();
        if !whole {
            // Gather the data blocks into `spare`, in order.
            spare.clear();
            for run in chunk.data.runs() {
                spare.extend_from_slice(&raw[byte_range(&run, block_size, raw_len)]);
            }
            gathered = std::mem::take(&mut spare);
        }
        let src: &[u8] = if whole { &raw } else { &gathered };
        let mut out = if whole { spare } else { Vec::new() };
        let compressed = level
            .zstd_level()
            .is_some_and(|zl| compressor.compress(src, zl, &mut out));
        match (compressed, whole) {
            (true, true) => {
                chunk.kind = PayloadKind::Zstd;
                chunk.payload = out;
                (chunk, raw)
            }
            (true, false) => {
                chunk.kind = PayloadKind::Zstd;
                chunk.payload = out;
                (chunk, gathered)
            }
            (false, true) => {
                chunk.kind = PayloadKind::Stored;
                chunk.payload = raw;
                (chunk, out)
            }
            (false, false) => {
                chunk.kind = PayloadKind::Stored;
                chunk.payload = gathered;
                (chunk, raw)
            }
        }
    }

    /// A v2 chunk with no used block: nothing read, nothing stored.
    pub fn free(index: u64, raw_len: u32, block_size: u32) -> Self {
        let blocks = blocks_for(raw_len, block_size);
        let used = BlockMap::empty(blocks);
        Self {
            index,
            major: 2,
            raw_len,
            block_size,
            kind: PayloadKind::Empty,
            hash: *blake3::hash(used.as_bytes()).as_bytes(),
            data: BlockMap::empty(blocks),
            used,
            payload: Vec::new(),
        }
    }

    /// Payload length as recorded in the image.
    pub fn stored_len(&self) -> u32 {
        self.payload.len() as u32
    }

    /// Bytes of the data blocks (what the payload decompresses to).
    pub fn data_len(&self) -> u32 {
        self.data.bytes_in(self.raw_len, self.block_size)
    }

    /// Bytes of the used blocks (what the image promises to restore).
    pub fn used_len(&self) -> u32 {
        self.used.bytes_in(self.raw_len, self.block_size)
    }

    /// Checks everything that must hold between the fields whatever the
    /// image: lengths, block size, map sizes, data among used blocks,
    /// payload length against the kind. Readers call it on every chunk
    /// they build from bytes.
    pub(crate) fn check_shape(&self) -> Result<(), DecodeError> {
        let invalid = |field, value: u64| DecodeError::Invalid { field, value };
        if self.raw_len == 0 || self.raw_len > MAX_CHUNK_SIZE {
            return Err(invalid("raw length", u64::from(self.raw_len)));
        }
        let bs = self.block_size;
        let bs_ok = match self.major {
            1 => bs % 512 == 0 && bs >= self.raw_len && bs <= MAX_CHUNK_SIZE,
            2 => bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs),
            _ => return Err(invalid("major version", u64::from(self.major))),
        };
        if !bs_ok {
            return Err(invalid("block size", u64::from(bs)));
        }
        let blocks = blocks_for(self.raw_len, bs);
        if self.used.blocks() != blocks || self.data.blocks() != blocks {
            return Err(invalid("map size", u64::from(self.used.blocks())));
        }
        if !self.data.is_subset_of(&self.used) {
            return Err(invalid("data map (blocks outside the used map)", 0));
        }
        if self.major == 1
            && !(self.used.is_full() && (self.data.is_empty() || self.data.is_full()))
        {
            return Err(invalid("v1 chunk maps", u64::from(self.data.count())));
        }
        self.kind
            .check_lens(self.raw_len, self.data_len(), self.stored_len())
    }

    /// Checks that this chunk belongs to an image of geometry `g`: index in
    /// range, raw length and block size as the geometry says, same format.
    pub fn check_geometry(&self, g: &Geometry) -> Result<(), ImageError> {
        let bad = |reason: String| ImageError::BadChunk {
            chunk: self.index,
            reason,
        };
        if self.index >= g.chunk_count {
            return Err(bad(format!(
                "no such chunk (the image has {})",
                g.chunk_count
            )));
        }
        if self.raw_len != g.chunk_len(self.index) {
            return Err(bad(format!(
                "raw length {} but the geometry says {}",
                self.raw_len,
                g.chunk_len(self.index)
            )));
        }
        if self.block_size != g.block_size || self.major != g.major {
            return Err(bad(format!(
                "format {} with {}-byte blocks but the image is format {} with {}-byte blocks",
                self.major, self.block_size, g.major, g.block_size
            )));
        }
        self.check_shape().map_err(|e| bad(e.to_string()))
    }

    fn corrupt(&self, reason: String) -> ImageError {
        ImageError::ChunkCorrupt {
            chunk: self.index,
            offset: None,
            reason,
        }
    }

    /// Checks the chunk against its hash and returns what a restore writes,
    /// copying only what must be made: a stored payload is used as it is, a
    /// zstd payload is decompressed into `scratch`. Nothing unverified is
    /// ever returned; a failure is an [`ImageError::ChunkCorrupt`] naming
    /// the chunk.
    pub fn verified<'a>(
        &'a self,
        scratch: &'a mut Vec<u8>,
        decompressor: &mut Decompressor,
    ) -> Result<ChunkData<'a>, ImageError> {
        let in_scratch = self.check_into(scratch, decompressor)?;
        let bytes: &[u8] = match (self.kind, in_scratch) {
            (PayloadKind::Empty, _) => &[],
            (_, true) => scratch,
            (_, false) => &self.payload,
        };
        Ok(self.view(bytes))
    }

    /// [`EncodedChunk::verified`] on owned buffers, for pipelines that pass
    /// verified chunks between threads.
    pub fn verify(
        self,
        mut scratch: Vec<u8>,
        decompressor: &mut Decompressor,
    ) -> Result<VerifiedChunk, ImageError> {
        let in_scratch = self.check_into(&mut scratch, decompressor)?;
        Ok(VerifiedChunk {
            chunk: self,
            decoded: in_scratch.then_some(scratch),
        })
    }

    /// Decompresses and checks the hash; true when the data bytes ended up
    /// in `scratch` (zstd), false when they are the payload or empty.
    fn check_into(
        &self,
        scratch: &mut Vec<u8>,
        decompressor: &mut Decompressor,
    ) -> Result<bool, ImageError> {
        self.check_shape()
            .map_err(|e| self.corrupt(e.to_string()))?;
        let data_len = self.data_len() as usize;
        let in_scratch = self.kind == PayloadKind::Zstd;
        if in_scratch {
            if decompressor.zstd.is_none() {
                decompressor.zstd = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| self.corrupt(format!("zstd context: {e}")))?,
                );
            }
            let Some(z) = decompressor.zstd.as_mut() else {
                return Err(self.corrupt("zstd context unavailable".into()));
            };
            scratch.clear();
            scratch.reserve_exact(data_len);
            let n = z
                .decompress_to_buffer(&self.payload[..], scratch)
                .map_err(|e| self.corrupt(format!("zstd: {e}")))?;
            if n != data_len {
                return Err(self.corrupt(format!("decompressed to {n} bytes, expected {data_len}")));
            }
        }
        let bytes: &[u8] = match self.kind {
            PayloadKind::Empty => &[],
            PayloadKind::Stored => &self.payload,
            PayloadKind::Zstd => scratch,
        };
        let actual = match (self.major, self.data.is_empty() && self.used.is_full()) {
            (1, true) => Some(decompressor.zero.get(1, self.raw_len, self.block_size)),
            (1, false) => Some(*blake3::hash(bytes).as_bytes()),
            (_, true) => Some(decompressor.zero.get(2, self.raw_len, self.block_size)),
            (_, false) => {
                hash_v2_data(&self.used, &self.data, self.block_size, self.raw_len, bytes)
            }
        };
        if actual != Some(self.hash) {
            return Err(self.corrupt(if self.data.is_empty() {
                "hash mismatch (no data blocks)".into()
            } else {
                "hash mismatch".into()
            }));
        }
        Ok(in_scratch)
    }

    fn view<'a>(&'a self, bytes: &'a [u8]) -> ChunkData<'a> {
        ChunkData {
            index: self.index,
            raw_len: self.raw_len,
            block_size: self.block_size,
            used: &self.used,
            data: &self.data,
            bytes,
        }
    }

    /// The compact, self-describing form the multicast engine sends as one
    /// object (see `docs/FORMAT.md`).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            WIRE_HEADER_LEN + 2 * self.used.as_bytes().len() + self.payload.len(),
        );
        self.encode(&mut v);
        v
    }

    /// Parses [`EncodedChunk::to_wire`] output; the bytes must be exactly
    /// one chunk. The hash is only checked by [`EncodedChunk::verified`].
    pub fn from_wire(bytes: &[u8]) -> Result<Self, ImageError> {
        Self::from_bytes(bytes).map_err(ImageError::Wire)
    }
}

impl Codec for EncodedChunk {
    fn encode(&self, out: &mut Vec<u8>) {
        let used_enc = self.used.used_encoding();
        let data_enc = self.data.data_encoding(&self.used);
        out.push(WIRE_VERSION);
        out.push(self.major as u8);
        out.push(self.kind as u8);
        out.push(used_enc as u8);
        out.push(data_enc as u8);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.stored_len().to_le_bytes());
        let maps = maps_len(used_enc, data_enc, self.used.blocks());
        out.extend_from_slice(&maps.to_le_bytes());
        out.extend_from_slice(&self.hash);
        encode_maps(&self.used, &self.data, out);
        out.extend_from_slice(&self.payload);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let invalid = |field, value: u64| DecodeError::Invalid { field, value };
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(invalid("chunk object version", u64::from(version)));
        }
        let major = u16::from(r.u8()?);
        let kind = PayloadKind::from_u8(r.u8()?)?;
        let used_enc = crate::format::MapEncoding::from_u8(r.u8()?, "used map encoding")?;
        let data_enc = crate::format::MapEncoding::from_u8(r.u8()?, "data map encoding")?;
        let reserved = r.array::<3>()?;
        if reserved != [0; 3] {
            return Err(invalid("reserved bytes", u64::from(reserved[0])));
        }
        let index = r.u64()?;
        let raw_len = r.u32()?;
        let block_size = r.u32()?;
        let stored_len = r.u32()?;
        let maps = r.u32()?;
        let hash = r.array()?;
        if raw_len == 0 || raw_len > MAX_CHUNK_SIZE {
            return Err(invalid("raw length", u64::from(raw_len)));
        }
        if !(MIN_BLOCK_SIZE..=MAX_CHUNK_SIZE).contains(&block_size) {
            return Err(invalid("block size", u64::from(block_size)));
        }
        let blocks = blocks_for(raw_len, block_size);
        if maps != maps_len(used_enc, data_enc, blocks) {
            return Err(invalid("maps length", u64::from(maps)));
        }
        let (used, data) = decode_maps(used_enc, data_enc, blocks, r.take(maps as usize)?)?;
        let data_len = data.bytes_in(raw_len, block_size);
        kind.check_lens(raw_len, data_len, stored_len)?;
        let payload = r.take(stored_len as usize)?.to_vec();
        let chunk = Self {
            index,
            major,
            raw_len,
            block_size,
            kind,
            used,
            data,
            hash,
            payload,
        };
        chunk.check_shape()?;
        Ok(chunk)
    }
}

/// What a verified chunk asks a target to do, block by block: write its
/// data blocks, make its used-zero blocks read as zero, and leave its free
/// blocks alone. Only [`EncodedChunk::verified`] and [`VerifiedChunk::data`]
/// make one, so a target is never handed unverified bytes.
#[derive(Clone, Copy, Debug)]
pub struct ChunkData<'a> {
    index: u64,
    raw_len: u32,
    block_size: u32,
    used: &'a BlockMap,
    data: &'a BlockMap,
    bytes: &'a [u8],
}

/// What one run of blocks of a chunk holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunKind {
    /// Data blocks: these bytes of [`ChunkData::bytes`].
    Data(Range<usize>),
    /// Used blocks that are all zero.
    Zero,
    /// Free blocks: their content is undefined after a restore.
    Free,
}

/// A maximal run of blocks of one kind, as chunk-relative bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// First byte, relative to the chunk's start.
    pub start: u32,
    /// Bytes in the run.
    pub len: u32,
    /// What the run holds.
    pub kind: RunKind,
}

impl<'a> ChunkData<'a> {
    /// A view the caller vouches for (the target's raw-chunk entry point).
    pub(crate) fn new_unchecked(
        index: u64,
        raw_len: u32,
        block_size: u32,
        used: &'a BlockMap,
        data: &'a BlockMap,
        bytes: &'a [u8],
    ) -> Self {
        Self {
            index,
            raw_len,
            block_size,
            used,
            data,
            bytes,
        }
    }

    /// Chunk index.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Raw length of the chunk.
    pub fn raw_len(&self) -> u32 {
        self.raw_len
    }

    /// Block size of the maps.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The used blocks.
    pub fn used(&self) -> &'a BlockMap {
        self.used
    }

    /// The data blocks.
    pub fn data(&self) -> &'a BlockMap {
        self.data
    }

    /// The data blocks' bytes, back to back.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The chunk as maximal runs of data, zero and free blocks, in order.
    pub fn runs(&self) -> Vec<Run> {
        let mut out = Vec::new();
        let blocks = self.used.blocks();
        let kind_of = |b: u32| {
            if self.data.get(b) {
                0u8
            } else if self.used.get(b) {
                1
            } else {
                2
            }
        };
        let mut cursor = 0usize;
        let mut b = 0;
        while b < blocks {
            let k = kind_of(b);
            let mut e = b + 1;
            while e < blocks && kind_of(e) == k {
                e += 1;
            }
            let r = byte_range(&(b..e), self.block_size, self.raw_len);
            let len = r.len();
            let kind = match k {
                0 => {
                    cursor += len;
                    RunKind::Data(cursor - len..cursor)
                }
                1 => RunKind::Zero,
                _ => RunKind::Free,
            };
            out.push(Run {
                start: r.start as u32,
                len: len as u32,
                kind,
            });
            b = e;
        }
        out
    }

    /// An owned copy (for a chunk a target must hold back).
    pub(crate) fn to_verified(self) -> VerifiedChunk {
        let kind = if self.bytes.is_empty() {
            PayloadKind::Empty
        } else {
            PayloadKind::Stored
        };
        VerifiedChunk {
            chunk: EncodedChunk {
                index: self.index,
                major: 2,
                raw_len: self.raw_len,
                block_size: self.block_size,
                kind,
                used: self.used.clone(),
                data: self.data.clone(),
                hash: [0; 32],
                payload: self.bytes.to_vec(),
            },
            decoded: None,
        }
    }
}

/// A chunk whose hash has been checked, with its data bytes decompressed
/// when they had to be: the owned form of [`ChunkData`].
#[derive(Debug)]
pub struct VerifiedChunk {
    chunk: EncodedChunk,
    decoded: Option<Vec<u8>>,
}

impl VerifiedChunk {
    /// Chunk index.
    pub fn index(&self) -> u64 {
        self.chunk.index
    }

    /// What to write.
    pub fn data(&self) -> ChunkData<'_> {
        let bytes: &[u8] = match (&self.decoded, self.chunk.kind) {
            (_, PayloadKind::Empty) => &[],
            (Some(d), _) => d,
            (None, _) => &self.chunk.payload,
        };
        self.chunk.view(bytes)
    }

    /// The buffers, for reuse: the payload and the decompressed bytes.
    pub fn into_buffers(self) -> (Vec<u8>, Option<Vec<u8>>) {
        (self.chunk.payload, self.decoded)
    }
}

/// Computes the image root hash incrementally over the chunk hashes in
/// index order:
/// * v2: `BLAKE3(disk_size u64 ‖ chunk_size u32 ‖ block_size u32 ‖
///   min_target_size u64 ‖ hash(chunk 0) ‖ … )`
/// * v1: `BLAKE3(disk_size u64 ‖ chunk_size u32 ‖ hash(chunk 0) ‖ … )`
///
/// Producers and consumers that see chunks in order (the image writer, the
/// stream reader, the multicast engine) feed it one chunk hash at a time.
#[derive(Debug, Clone)]
pub struct RootHasher {
    hasher: blake3::Hasher,
    chunks: u64,
}

impl RootHasher {
    /// Starts the root hash of an image of this geometry.
    pub fn new(g: &Geometry) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&g.disk_size.to_le_bytes());
        hasher.update(&g.chunk_size.to_le_bytes());
        if g.major >= 2 {
            hasher.update(&g.block_size.to_le_bytes());
            hasher.update(&g.min_target_size.to_le_bytes());
        }
        Self { hasher, chunks: 0 }
    }

    /// Adds the next chunk's hash (chunks must come in index order).
    pub fn push(&mut self, chunk_hash: &[u8; 32]) {
        self.hasher.update(chunk_hash);
        self.chunks += 1;
    }

    /// How many chunk hashes have been pushed.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The root hash of what has been pushed.
    pub fn finish(&self) -> [u8; 32] {
        *self.hasher.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    const BS: u32 = 512;

    /// A chunk of 20 blocks and a short tail: text, zeros, noise, zeros, text.
    fn mixed() -> Vec<u8> {
        let mut v = b"hello hello hello ".repeat(200)[..5 * 512].to_vec();
        v.extend(vec![0; 4 * 512]);
        v.extend(pseudo_random(5 * 512, 3));
        v.extend(vec![0; 3 * 512]);
        v.extend(&b"tail text tail text ".repeat(200)[..3 * 512 + 100]);
        v
    }

    fn used_map(blocks: u32, free: Range<u32>) -> BlockMap {
        let mut m = BlockMap::empty(blocks);
        for b in (0..blocks).filter(|b| !free.contains(b)) {
            m.set(b);
        }
        m
    }

    /// The bytes a restore must reproduce: used blocks as in `raw`, free ones
    /// as `fill`.
    fn restore_image(c: &EncodedChunk, raw: &[u8], d: &mut Decompressor, fill: u8) -> Vec<u8> {
        let mut scratch = Vec::new();
        let v = c.verified(&mut scratch, d).expect("verifies");
        let mut out = vec![fill; raw.len()];
        for run in v.runs() {
            let r = run.start as usize..(run.start + run.len) as usize;
            match run.kind {
                RunKind::Data(b) => out[r].copy_from_slice(&v.bytes()[b]),
                RunKind::Zero => out[r].fill(0),
                RunKind::Free => {}
            }
        }
        out
    }

    #[test]
    fn zero_detection() {
        for n in [0usize, 1, 63, 64, 65, 4096, 4097] {
            let mut v = vec![0u8; n];
            assert!(is_zero(&v));
            for i in 0..n {
                v[i] = 1;
                assert!(!is_zero(&v), "n={n} i={i}");
                v[i] = 0;
            }
        }
    }

    #[test]
    fn zero_hash_matches_blake3() {
        for n in [0u32, 1, 4096, 100_000] {
            assert_eq!(zero_hash(n), *blake3::hash(&vec![0; n as usize]).as_bytes());
        }
    }

    #[test]
    fn staged_hashing_is_plain_blake3() {
        let data = pseudo_random(300_000, 9);
        for pieces in [
            vec![1usize, 4096, 0, 70_000, 3, 100_000],
            vec![16384; 10],
            vec![65536, 1],
        ] {
            let mut h = Staged::new();
            let mut want = Vec::new();
            let mut at = 0;
            for (k, n) in pieces.into_iter().enumerate() {
                if k % 2 == 0 {
                    h.bytes(&data[at..at + n]);
                    want.extend_from_slice(&data[at..at + n]);
                    at += n;
                } else {
                    h.zeros(n);
                    want.resize(want.len() + n, 0);
                }
            }
            assert_eq!(h.finish(), *blake3::hash(&want).as_bytes());
        }
    }

    #[test]
    fn hash_definition() {
        let raw = mixed();
        let blocks = blocks_for(raw.len() as u32, BS);
        let used = used_map(blocks, 10..12);
        let mut c = Compressor::new();
        let ch = EncodedChunk::encode(0, &raw, Some(&used), BS, Level::FASTEST, &mut c);
        // BLAKE3(used bitmap ‖ bytes of used blocks), by hand.
        let mut manual = used.as_bytes().to_vec();
        for b in 0..blocks {
            if used.get(b) {
                let r = byte_range(&(b..b + 1), BS, raw.len() as u32);
                manual.extend_from_slice(&raw[r]);
            }
        }
        assert_eq!(ch.hash, *blake3::hash(&manual).as_bytes());
        // Free bytes do not matter, used ones do.
        let mut other = raw.clone();
        other[10 * 512 + 7] ^= 1;
        let ch2 = EncodedChunk::encode(0, &other, Some(&used), BS, Level::FASTEST, &mut c);
        assert_eq!(ch2.hash, ch.hash);
        other[9 * 512] ^= 1;
        let ch3 = EncodedChunk::encode(0, &other, Some(&used), BS, Level::FASTEST, &mut c);
        assert_ne!(ch3.hash, ch.hash);
        // All-zero used chunk: the cached hash agrees with the definition.
        let zeros = vec![0u8; 4096];
        let z = EncodedChunk::encode(0, &zeros, None, BS, Level::FASTEST, &mut c);
        let mut manual = BlockMap::full(8).as_bytes().to_vec();
        manual.extend_from_slice(&zeros);
        assert_eq!(z.hash, *blake3::hash(&manual).as_bytes());
        let f = EncodedChunk::free(0, 4096, BS);
        assert_eq!(f.hash, *blake3::hash(&[0u8]).as_bytes());
    }

    #[test]
    fn maps_kinds_and_round_trip() -> Result<(), ImageError> {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let raw = mixed();
        let blocks = blocks_for(raw.len() as u32, BS);
        let noise = pseudo_random(8192, 7);
        for level in [Level::STORED, Level::FASTEST, Level::SMALLEST] {
            for free in [0..0, 0..3, 10..13, 18..21, 0..21] {
                let used = used_map(blocks, free.clone());
                let ch = EncodedChunk::encode(5, &raw, Some(&used), BS, level, &mut c);
                assert_eq!(ch.used, used);
                // Zero blocks 5..9 and 14..17 are never data.
                assert!((5..9).chain(14..17).all(|b| !ch.data.get(b)));
                assert!(ch.data.is_subset_of(&ch.used));
                let want = if level == Level::STORED || ch.data.is_empty() {
                    ch.kind != PayloadKind::Zstd
                } else {
                    ch.kind == PayloadKind::Zstd
                };
                assert!(want, "{level:?} {free:?}: {:?}", ch.kind);
                assert_eq!(ch.stored_len() == 0, ch.data.is_empty());
                let back = restore_image(&ch, &raw, &mut d, 0xEE);
                for b in 0..blocks {
                    let r = byte_range(&(b..b + 1), BS, raw.len() as u32);
                    if used.get(b) {
                        assert_eq!(back[r.clone()], raw[r], "block {b}");
                    } else {
                        assert!(back[r].iter().all(|&x| x == 0xEE), "free block {b} touched");
                    }
                }
                assert_eq!(EncodedChunk::from_wire(&ch.to_wire())?, ch);
            }
            let n = EncodedChunk::encode(2, &noise, None, 4096, level, &mut c);
            assert_eq!(n.kind, PayloadKind::Stored, "incompressible data is stored");
            assert_eq!(n.payload, noise);
        }
        Ok(())
    }

    #[test]
    fn corruption_names_the_chunk() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let mut out = Vec::new();
        let raw = mixed();
        let blocks = blocks_for(raw.len() as u32, BS);
        let used = used_map(blocks, 10..12);
        let good = EncodedChunk::encode(17, &raw, Some(&used), BS, Level::FASTEST, &mut c);
        for i in 0..good.payload.len() {
            let mut bad = good.clone();
            bad.payload[i] ^= 0x40;
            let e = bad.verified(&mut out, &mut d).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.starts_with("chunk 17")),
                "{e:?}"
            );
        }
        let mut bad = good.clone();
        bad.hash[0] ^= 1;
        let e = bad.verified(&mut out, &mut d).err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("chunk 17: hash mismatch"));
        // A used block turned free, or a free one used: the hash catches it.
        for b in [0, 9, 10, 11, 12, 20] {
            let mut bad = good.clone();
            if bad.used.get(b) && !bad.data.get(b) {
                let mut u = BlockMap::empty(blocks);
                for i in 0..blocks {
                    if bad.used.get(i) && i != b {
                        u.set(i);
                    }
                }
                bad.used = u;
            } else if !bad.used.get(b) {
                bad.used.set(b);
            } else {
                continue;
            }
            let e = bad.verified(&mut out, &mut d).err().map(|e| e.to_string());
            assert!(e.is_some_and(|e| e.starts_with("chunk 17")), "block {b}");
        }
        // A data block recorded as zero: the payload no longer fits.
        let mut bad = good.clone();
        let first = bad.data.runs().next().map_or(0, |r| r.start);
        let mut dm = BlockMap::empty(blocks);
        for i in 0..blocks {
            if bad.data.get(i) && i != first {
                dm.set(i);
            }
        }
        bad.data = dm;
        assert!(bad.verified(&mut out, &mut d).is_err());
    }

    #[test]
    fn v1_chunks_verify_with_the_v1_hash() -> Result<(), ImageError> {
        let raw = mixed();
        let mut d = Decompressor::new();
        let chunk = EncodedChunk {
            index: 1,
            major: 1,
            raw_len: raw.len() as u32,
            block_size: 65536,
            kind: PayloadKind::Stored,
            used: BlockMap::full(1),
            data: BlockMap::full(1),
            hash: *blake3::hash(&raw).as_bytes(),
            payload: raw.clone(),
        };
        let mut s = Vec::new();
        let v = chunk.verified(&mut s, &mut d)?;
        assert_eq!(v.bytes(), &raw[..]);
        let hole = EncodedChunk {
            kind: PayloadKind::Empty,
            data: BlockMap::empty(1),
            hash: zero_hash(raw.len() as u32),
            payload: Vec::new(),
            ..chunk.clone()
        };
        let v = hole.verified(&mut s, &mut d)?;
        assert_eq!(
            v.runs(),
            [Run {
                start: 0,
                len: raw.len() as u32,
                kind: RunKind::Zero
            }]
        );
        assert_eq!(EncodedChunk::from_wire(&hole.to_wire())?, hole);
        // A v1 chunk cannot have free blocks.
        let bad = EncodedChunk {
            used: BlockMap::empty(1),
            hash: *blake3::hash(&[0u8]).as_bytes(),
            ..hole
        };
        assert!(bad.verified(&mut s, &mut d).is_err());
        Ok(())
    }

    #[test]
    fn wire_rejects_garbage_and_lying_lengths() {
        let mut c = Compressor::new();
        let raw = mixed();
        let blocks = blocks_for(raw.len() as u32, BS);
        let ch = EncodedChunk::encode(
            3,
            &raw,
            Some(&used_map(blocks, 10..12)),
            BS,
            Level::FASTEST,
            &mut c,
        );
        let w = ch.to_wire();
        for cut in 0..w.len() {
            assert!(EncodedChunk::from_wire(&w[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = w.clone();
        longer.push(0);
        assert!(EncodedChunk::from_wire(&longer).is_err());
        // Version, major, kind, encodings, reserved, raw_len, block size,
        // stored_len and maps_len each lying.
        for (at, x) in [
            (0, 1),
            (1, 4),
            (2, 7),
            (3, 3),
            (4, 3),
            (5, 1),
            (17, 0x10),
            (20, 1),
            (24, 1),
            (28, 1),
        ] {
            let mut bad = w.clone();
            bad[at] ^= x;
            assert!(EncodedChunk::from_wire(&bad).is_err(), "byte {at}");
        }
    }

    #[test]
    fn root_hash_definition() {
        let g = Geometry::new(5000, 4096, Level::FASTEST)
            .and_then(|g| g.with_min_target_size(4000))
            .expect("geometry");
        let mut r = RootHasher::new(&g);
        r.push(&[1; 32]);
        r.push(&[2; 32]);
        let mut manual = Vec::new();
        manual.extend_from_slice(&5000u64.to_le_bytes());
        manual.extend_from_slice(&4096u32.to_le_bytes());
        manual.extend_from_slice(&4096u32.to_le_bytes());
        manual.extend_from_slice(&4000u64.to_le_bytes());
        manual.extend_from_slice(&[1; 32]);
        manual.extend_from_slice(&[2; 32]);
        assert_eq!(r.finish(), *blake3::hash(&manual).as_bytes());
        assert_eq!(r.chunks(), 2);
    }
}
