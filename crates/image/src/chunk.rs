//! Chunks: zero detection, hashing, compression, and the compact object the
//! multicast engine sends.

use crate::codec::{Codec, DecodeError, Reader};
use crate::format::{ChunkKind, MAX_CHUNK_SIZE};
use crate::{ImageError, Level};

/// True when every byte is zero. On the hot path (every chunk of every
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

/// BLAKE3 of `len` zero bytes, remembered for the last length asked:
/// nearly every hole has the full chunk size, so a hole costs no hashing.
#[derive(Debug, Default)]
struct ZeroHash {
    cached: Option<(u32, [u8; 32])>,
}

impl ZeroHash {
    fn get(&mut self, len: u32) -> [u8; 32] {
        match self.cached {
            Some((l, h)) if l == len => h,
            _ => {
                let h = zero_hash(len);
                self.cached = Some((len, h));
                h
            }
        }
    }
}

/// BLAKE3 of `len` zero bytes.
pub fn zero_hash(len: u32) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    let zeros = [0u8; 16384];
    let mut left = len as usize;
    while left > 0 {
        let n = left.min(zeros.len());
        hasher.update(&zeros[..n]);
        left -= n;
    }
    *hasher.finalize().as_bytes()
}

/// A reusable compression context; keep one per worker thread (zstd
/// contexts are costly to create and not thread-safe).
pub struct Compressor {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    level: Option<i32>,
    zero: ZeroHash,
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

impl Compressor {
    /// A new context. If zstd cannot allocate one, chunks are stored raw
    /// (still a valid image), rather than failing.
    pub fn new() -> Self {
        Self {
            zstd: None,
            level: None,
            zero: ZeroHash::default(),
        }
    }

    /// Compresses `raw` into a buffer strictly smaller than `raw`, or
    /// `None` when zstd cannot do better than storing.
    fn compress(&mut self, raw: &[u8], zstd_level: i32) -> Option<Vec<u8>> {
        if self.zstd.is_none() {
            self.zstd = zstd::bulk::Compressor::new(zstd_level).ok();
            self.level = Some(zstd_level);
        }
        let z = self.zstd.as_mut()?;
        if self.level != Some(zstd_level) {
            z.set_compression_level(zstd_level).ok()?;
            self.level = Some(zstd_level);
        }
        // Random data (encrypted volumes, compressed files) is common on
        // disks and zstd gains nothing on it: three small samples decide
        // cheaply whether the whole chunk is worth compressing.
        if raw.len() >= 8 * PROBE {
            let mut probe = Vec::with_capacity(PROBE - PROBE / 32);
            let at = [0, raw.len() / 2 - PROBE / 2, raw.len() - PROBE];
            let gains = at.iter().any(|&a| {
                probe.clear();
                // Output that does not fit in 97% of the sample means no gain.
                z.compress_to_buffer(&raw[a..a + PROBE], &mut probe).is_ok()
            });
            if !gains {
                return None;
            }
        }
        let mut out = Vec::with_capacity(raw.len().saturating_sub(1));
        match z.compress_to_buffer(raw, &mut out) {
            Ok(n) if n > 0 && n < raw.len() => Some(out),
            _ => None,
        }
    }
}

/// Bytes of each sample taken to decide whether a chunk compresses.
const PROBE: usize = 32 * 1024;

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

/// One chunk ready to store or send: its index, how it is stored, its raw
/// length, the BLAKE3 hash of its raw bytes, and its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    /// Chunk index (disk offset = index × chunk size).
    pub index: u64,
    /// Storage kind.
    pub kind: ChunkKind,
    /// Raw length.
    pub raw_len: u32,
    /// BLAKE3 of the raw bytes.
    pub hash: [u8; 32],
    /// Compressed or raw bytes; empty for holes.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for EncodedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedChunk")
            .field("index", &self.index)
            .field("kind", &self.kind)
            .field("raw_len", &self.raw_len)
            .field("hash", &crate::error::hex(&self.hash[..8]))
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Version byte of the wire form of [`EncodedChunk`].
const WIRE_VERSION: u8 = 1;
/// Fixed part of the wire form: version, kind, index, raw_len, payload_len, hash.
pub const WIRE_HEADER_LEN: usize = 1 + 1 + 8 + 4 + 4 + 32;

impl EncodedChunk {
    /// Hashes, hole-detects and compresses one chunk of raw disk bytes.
    ///
    /// All-zero chunks become holes (no payload). At level 0, or when zstd
    /// does not make the chunk smaller, the raw bytes are stored.
    pub fn encode(index: u64, raw: &[u8], level: Level, compressor: &mut Compressor) -> Self {
        // Chunks are at most MAX_CHUNK_SIZE (64 MiB), so the length fits.
        let raw_len = raw.len() as u32;
        if is_zero(raw) {
            return Self {
                index,
                kind: ChunkKind::Hole,
                raw_len,
                hash: compressor.zero.get(raw_len),
                payload: Vec::new(),
            };
        }
        let hash = *blake3::hash(raw).as_bytes();
        let compressed = level
            .zstd_level()
            .and_then(|zl| compressor.compress(raw, zl));
        match compressed {
            Some(payload) => Self {
                index,
                kind: ChunkKind::Zstd,
                raw_len,
                hash,
                payload,
            },
            None => Self {
                index,
                kind: ChunkKind::Stored,
                raw_len,
                hash,
                payload: raw.to_vec(),
            },
        }
    }

    /// Payload length as recorded in the image.
    pub fn stored_len(&self) -> u32 {
        self.payload.len() as u32
    }

    /// Decompresses into `out` (replacing its contents) and checks the
    /// result against the chunk's hash. A failure is an
    /// [`ImageError::ChunkCorrupt`] naming the chunk; nothing in `out` may
    /// be used then.
    pub fn decode_into(
        &self,
        out: &mut Vec<u8>,
        decompressor: &mut Decompressor,
    ) -> Result<(), ImageError> {
        let corrupt = |reason: String| ImageError::ChunkCorrupt {
            chunk: self.index,
            offset: None,
            reason,
        };
        out.clear();
        let raw_len = self.raw_len as usize;
        if self.raw_len > MAX_CHUNK_SIZE {
            return Err(corrupt(format!("raw length {} too large", self.raw_len)));
        }
        match self.kind {
            ChunkKind::Hole => {
                if !self.payload.is_empty() {
                    return Err(corrupt("hole with a payload".into()));
                }
                out.resize(raw_len, 0);
                if decompressor.zero.get(self.raw_len) != self.hash {
                    return Err(corrupt("hash mismatch (hole)".into()));
                }
                return Ok(());
            }
            ChunkKind::Stored => {
                if self.payload.len() != raw_len {
                    return Err(corrupt(format!(
                        "stored payload is {} bytes, expected {raw_len}",
                        self.payload.len()
                    )));
                }
                out.extend_from_slice(&self.payload);
            }
            ChunkKind::Zstd => {
                if decompressor.zstd.is_none() {
                    decompressor.zstd = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| corrupt(format!("zstd context: {e}")))?,
                    );
                }
                let Some(z) = decompressor.zstd.as_mut() else {
                    return Err(corrupt("zstd context unavailable".into()));
                };
                out.reserve_exact(raw_len);
                let n = z
                    .decompress_to_buffer(&self.payload[..], out)
                    .map_err(|e| corrupt(format!("zstd: {e}")))?;
                if n != raw_len {
                    return Err(corrupt(format!(
                        "decompressed to {n} bytes, expected {raw_len}"
                    )));
                }
            }
        }
        if *blake3::hash(out).as_bytes() != self.hash {
            return Err(corrupt("hash mismatch".into()));
        }
        Ok(())
    }

    /// Checks the chunk and returns its raw bytes, copying only what must be
    /// made: a stored chunk's payload as it is, a zstd chunk decompressed into
    /// `scratch`, and an empty slice for a hole (its bytes are all zero). The
    /// hash is checked in every case, so nothing unverified is ever returned.
    pub fn verified<'a>(
        &'a self,
        scratch: &'a mut Vec<u8>,
        decompressor: &mut Decompressor,
    ) -> Result<&'a [u8], ImageError> {
        let corrupt = |reason: String| ImageError::ChunkCorrupt {
            chunk: self.index,
            offset: None,
            reason,
        };
        match self.kind {
            ChunkKind::Stored => {
                if self.payload.len() != self.raw_len as usize {
                    return Err(corrupt(format!(
                        "stored payload is {} bytes, expected {}",
                        self.payload.len(),
                        self.raw_len
                    )));
                }
                if *blake3::hash(&self.payload).as_bytes() != self.hash {
                    return Err(corrupt("hash mismatch".into()));
                }
                Ok(&self.payload)
            }
            ChunkKind::Hole => {
                if self.raw_len > MAX_CHUNK_SIZE {
                    return Err(corrupt(format!("raw length {} too large", self.raw_len)));
                }
                if !self.payload.is_empty() {
                    return Err(corrupt("hole with a payload".into()));
                }
                if decompressor.zero.get(self.raw_len) != self.hash {
                    return Err(corrupt("hash mismatch (hole)".into()));
                }
                Ok(&[])
            }
            ChunkKind::Zstd => {
                self.decode_into(scratch, decompressor)?;
                Ok(scratch)
            }
        }
    }

    /// The compact, self-describing form the multicast engine sends as one
    /// object: version, kind, index, raw length, payload length, hash,
    /// payload (see `docs/FORMAT.md`).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(WIRE_HEADER_LEN + self.payload.len());
        self.encode(&mut v);
        v
    }

    /// Parses [`EncodedChunk::to_wire`] output; the bytes must be exactly
    /// one chunk. The hash is only checked by [`EncodedChunk::decode_into`].
    pub fn from_wire(bytes: &[u8]) -> Result<Self, ImageError> {
        Self::from_bytes(bytes).map_err(ImageError::Wire)
    }
}

impl Codec for EncodedChunk {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(WIRE_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.stored_len().to_le_bytes());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.payload);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(DecodeError::Invalid {
                field: "chunk object version",
                value: u64::from(version),
            });
        }
        let kind = ChunkKind::from_u8(r.u8()?)?;
        let index = r.u64()?;
        let raw_len = r.u32()?;
        let stored_len = r.u32()?;
        let hash = r.array()?;
        kind.check_lens(raw_len, stored_len)?;
        let payload = r.take(stored_len as usize)?.to_vec();
        Ok(Self {
            index,
            kind,
            raw_len,
            hash,
            payload,
        })
    }
}

/// Computes the image root hash incrementally:
/// `BLAKE3(disk_size as u64 LE ‖ chunk_size as u32 LE ‖ hash(chunk 0) ‖ … )`.
///
/// Producers and consumers that see chunks in order (the image writer, the
/// stream reader, the multicast engine) feed it one chunk hash at a time.
#[derive(Debug, Clone)]
pub struct RootHasher {
    hasher: blake3::Hasher,
    chunks: u64,
}

impl RootHasher {
    /// Starts the root hash of a disk of this size and chunking.
    pub fn new(disk_size: u64, chunk_size: u32) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&disk_size.to_le_bytes());
        hasher.update(&chunk_size.to_le_bytes());
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
    fn kinds_and_round_trip() -> Result<(), ImageError> {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let mut out = Vec::new();
        let zeros = vec![0u8; 8192];
        let text = b"hello hello hello hello ".repeat(300);
        let noise = pseudo_random(8192, 7);
        for level in [
            Level::STORED,
            Level::FASTEST,
            Level::BALANCED,
            Level::SMALLEST,
        ] {
            let h = EncodedChunk::encode(0, &zeros, level, &mut c);
            assert_eq!(h.kind, ChunkKind::Hole);
            assert!(h.payload.is_empty());
            let t = EncodedChunk::encode(1, &text, level, &mut c);
            let expect = if level == Level::STORED {
                ChunkKind::Stored
            } else {
                ChunkKind::Zstd
            };
            assert_eq!(t.kind, expect);
            let n = EncodedChunk::encode(2, &noise, level, &mut c);
            assert_eq!(
                n.kind,
                ChunkKind::Stored,
                "incompressible data is stored raw"
            );
            for (ch, raw) in [(&h, &zeros[..]), (&t, &text[..]), (&n, &noise[..])] {
                ch.decode_into(&mut out, &mut d)?;
                assert_eq!(out, raw);
                let back = EncodedChunk::from_wire(&ch.to_wire())?;
                assert_eq!(&back, ch);
            }
        }
        Ok(())
    }

    #[test]
    fn corruption_names_the_chunk() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        let mut out = Vec::new();
        let text = b"abcdefgh".repeat(1000);
        let good = EncodedChunk::encode(17, &text, Level::FASTEST, &mut c);
        for i in 0..good.payload.len() {
            let mut bad = good.clone();
            bad.payload[i] ^= 0x40;
            let e = bad
                .decode_into(&mut out, &mut d)
                .err()
                .map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.starts_with("chunk 17")),
                "{e:?}"
            );
        }
        let mut bad = good.clone();
        bad.hash[0] ^= 1;
        let e = bad
            .decode_into(&mut out, &mut d)
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("chunk 17: hash mismatch"));
    }

    #[test]
    fn wire_rejects_garbage() {
        let mut c = Compressor::new();
        let ch = EncodedChunk::encode(3, b"xyz", Level::FASTEST, &mut c);
        let w = ch.to_wire();
        for cut in 0..w.len() {
            assert!(EncodedChunk::from_wire(&w[..cut]).is_err());
        }
        let mut longer = w.clone();
        longer.push(0);
        assert!(EncodedChunk::from_wire(&longer).is_err());
        let mut bad_kind = w;
        bad_kind[1] = 9;
        assert!(EncodedChunk::from_wire(&bad_kind).is_err());
    }

    #[test]
    fn root_hash_definition() {
        let mut r = RootHasher::new(5000, 4096);
        r.push(&[1; 32]);
        r.push(&[2; 32]);
        let mut manual = Vec::new();
        manual.extend_from_slice(&5000u64.to_le_bytes());
        manual.extend_from_slice(&4096u32.to_le_bytes());
        manual.extend_from_slice(&[1; 32]);
        manual.extend_from_slice(&[2; 32]);
        assert_eq!(r.finish(), *blake3::hash(&manual).as_bytes());
        assert_eq!(r.chunks(), 2);
    }
}
