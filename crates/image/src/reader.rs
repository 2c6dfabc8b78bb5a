//! Reading image files: [`ImageReader`] for random access (validates header,
//! trailer and index up front), [`StreamReader`] for pipes (front to back,
//! cross-checks the index and trailer at the end).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::chunk::{Decompressor, EncodedChunk, RootHasher};
use crate::codec::{Codec, DecodeError, Reader};
use crate::encoder::Progress;
use crate::error::hex;
use crate::format::{
    ChunkKind, Geometry, Header, Index, IndexEntry, IndexHasher, RecordHeader, Trailer, HEADER_LEN,
    RECORD_HEADER_LEN, TRAILER_LEN,
};
use crate::ImageError;

/// Checks a record header against what the index (or stream position)
/// says chunk `index` must be.
fn check_record(
    bytes: &[u8],
    index: u64,
    offset: u64,
    expect_len: u32,
    entry: Option<&IndexEntry>,
) -> Result<RecordHeader, ImageError> {
    let corrupt = |reason: String| ImageError::RecordCorrupt {
        chunk: index,
        offset,
        reason,
    };
    let rec = RecordHeader::from_bytes(bytes).map_err(|e| {
        corrupt(match e {
            DecodeError::Checksum => "checksum mismatch".into(),
            other => other.to_string(),
        })
    })?;
    if rec.index != index {
        return Err(corrupt(format!("holds chunk {} instead", rec.index)));
    }
    if rec.raw_len != expect_len {
        return Err(corrupt(format!(
            "raw length {} but the geometry says {expect_len}",
            rec.raw_len
        )));
    }
    if let Some(e) = entry {
        if rec.kind != e.kind || rec.stored_len != e.stored_len || rec.hash != e.hash {
            return Err(corrupt("disagrees with the index".into()));
        }
    }
    Ok(rec)
}

/// Random access to an image file. `open` validates the header, trailer and
/// index (including the root hash over the index's chunk hashes) before
/// anything else happens, so most damage is reported before a restore
/// touches its target.
#[derive(Debug)]
pub struct ImageReader {
    file: File,
    path: PathBuf,
    header: Header,
    trailer: Trailer,
    index: Index,
    len: u64,
}

impl ImageReader {
    /// Opens and validates an image file.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(|e| ImageError::io("open image", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ImageError::io("stat image", path, e))?
            .len();
        Self::from_file(file, path, len)
    }

    fn from_file(file: File, path: &Path, len: u64) -> Result<Self, ImageError> {
        let read = |buf: &mut [u8], at: u64| {
            file.read_exact_at(buf, at)
                .map_err(|e| ImageError::io("read image", path, e))
        };
        let mut hb = vec![0u8; HEADER_LEN.min(len as usize)];
        read(&mut hb, 0)?;
        let header = Header::parse(&hb)?;
        let g = header.geometry;

        let min_len = (HEADER_LEN + TRAILER_LEN) as u64;
        if len < min_len {
            return Err(ImageError::TrailerMissing { len });
        }
        let trailer_off = len - TRAILER_LEN as u64;
        let mut tb = [0u8; TRAILER_LEN];
        read(&mut tb, trailer_off)?;
        let trailer = match Trailer::from_bytes(&tb) {
            Ok(t) => t,
            Err(DecodeError::BadMagic) => return Err(ImageError::TrailerMissing { len }),
            Err(e) => {
                return Err(ImageError::TrailerCorrupt {
                    offset: trailer_off,
                    reason: e.to_string(),
                })
            }
        };
        let tcorrupt = |reason: String| ImageError::TrailerCorrupt {
            offset: trailer_off,
            reason,
        };
        if trailer.chunk_count != g.chunk_count || trailer.disk_size != g.disk_size {
            return Err(tcorrupt(format!(
                "{} chunks of a {}-byte disk, but the header says {} of {}",
                trailer.chunk_count, trailer.disk_size, g.chunk_count, g.disk_size
            )));
        }
        if trailer.index_len != Index::encoded_len(g.chunk_count)
            || trailer.index_offset.checked_add(trailer.index_len) != Some(trailer_off)
        {
            return Err(tcorrupt(format!(
                "index at {} of {} bytes does not end where the trailer starts",
                trailer.index_offset, trailer.index_len
            )));
        }
        let icorrupt = |reason: String| ImageError::IndexCorrupt {
            offset: trailer.index_offset,
            reason,
        };
        let mut ib = vec![0u8; trailer.index_len as usize];
        read(&mut ib, trailer.index_offset)?;
        let index = Index::from_bytes(&ib).map_err(|e| {
            icorrupt(match e {
                DecodeError::Checksum => "checksum mismatch".into(),
                other => other.to_string(),
            })
        })?;
        drop(ib);
        if index.entries.len() as u64 != g.chunk_count {
            return Err(icorrupt(format!(
                "{} entries for {} chunks",
                index.entries.len(),
                g.chunk_count
            )));
        }
        let mut root = RootHasher::new(g.disk_size, g.chunk_size);
        let mut expect_off = HEADER_LEN as u64;
        for (i, e) in index.entries.iter().enumerate() {
            let i = i as u64;
            if e.offset != expect_off {
                return Err(icorrupt(format!(
                    "chunk {i} at offset {} but records are contiguous from {expect_off}",
                    e.offset
                )));
            }
            if e.raw_len != g.chunk_len(i) {
                return Err(icorrupt(format!(
                    "chunk {i} raw length {} but the geometry says {}",
                    e.raw_len,
                    g.chunk_len(i)
                )));
            }
            expect_off = e.end();
            root.push(&e.hash);
        }
        if expect_off != trailer.index_offset {
            return Err(icorrupt(format!(
                "records end at {expect_off} but the index starts at {}",
                trailer.index_offset
            )));
        }
        let actual = root.finish();
        if actual != trailer.root_hash {
            return Err(ImageError::RootHashMismatch {
                expected: hex(&trailer.root_hash),
                actual: hex(&actual),
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            header,
            trailer,
            index,
            len,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Disk size, chunk size, chunk count, level.
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// The root hash (already checked against the index at open).
    pub fn root_hash(&self) -> [u8; 32] {
        self.trailer.root_hash
    }

    /// The index entries, one per chunk.
    pub fn index(&self) -> &[IndexEntry] {
        &self.index.entries
    }

    /// Length of the image file.
    pub fn image_len(&self) -> u64 {
        self.len
    }

    /// Raw bytes of non-hole chunks (what a restore writes).
    pub fn data_bytes(&self) -> u64 {
        self.index
            .entries
            .iter()
            .filter(|e| e.kind != ChunkKind::Hole)
            .map(|e| u64::from(e.raw_len))
            .sum()
    }

    /// Number of hole chunks.
    pub fn hole_chunks(&self) -> u64 {
        self.index
            .entries
            .iter()
            .filter(|e| e.kind == ChunkKind::Hole)
            .count() as u64
    }

    /// Reads chunk `i`'s record, checking its header against the index.
    /// The payload is not decompressed or hashed here (see
    /// [`EncodedChunk::decode_into`]).
    pub fn read_chunk(&self, i: u64) -> Result<EncodedChunk, ImageError> {
        let g = self.geometry();
        let Some(e) = usize::try_from(i)
            .ok()
            .and_then(|i| self.index.entries.get(i))
        else {
            return Err(ImageError::BadChunk {
                chunk: i,
                reason: format!("no such chunk (the image has {})", g.chunk_count),
            });
        };
        // Header and payload are read apart so the payload lands where it
        // stays: no 1 MiB memmove per chunk.
        let mut head = [0u8; RECORD_HEADER_LEN];
        self.file
            .read_exact_at(&mut head, e.offset)
            .map_err(|err| ImageError::io("read image", &self.path, err))?;
        let rec = check_record(&head, i, e.offset, g.chunk_len(i), Some(e))?;
        let mut payload = vec![0u8; e.stored_len as usize];
        self.file
            .read_exact_at(&mut payload, e.offset + RECORD_HEADER_LEN as u64)
            .map_err(|err| ImageError::io("read image", &self.path, err))?;
        Ok(EncodedChunk {
            index: i,
            kind: rec.kind,
            raw_len: rec.raw_len,
            hash: rec.hash,
            payload,
        })
    }

    /// Decompresses and hashes every chunk on all cores. Together with the
    /// root-hash check done at open this proves the whole image intact.
    /// Returns the first error found (lowest chunk index among those seen).
    pub fn verify(&self, progress: &(dyn Fn(Progress) + Sync)) -> Result<(), ImageError> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        self.verify_with_threads(threads, progress)
    }

    /// [`ImageReader::verify`] with an explicit worker count.
    pub fn verify_with_threads(
        &self,
        threads: usize,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<(), ImageError> {
        let g = self.geometry();
        let next = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let first_err: Mutex<Option<ImageError>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads.max(1) {
                s.spawn(|| {
                    let mut d = Decompressor::new();
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= g.chunk_count {
                            break;
                        }
                        let res = self.read_chunk(i).and_then(|c| {
                            c.decode_into(&mut out, &mut d)
                                .map_err(|e| e.at_offset(self.index.entries[i as usize].offset))
                        });
                        match res {
                            Ok(()) => {
                                let n = done
                                    .fetch_add(u64::from(g.chunk_len(i)), Ordering::Relaxed)
                                    + u64::from(g.chunk_len(i));
                                progress(Progress {
                                    done_bytes: n,
                                    total_bytes: g.disk_size,
                                });
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                if let Ok(mut slot) = first_err.lock() {
                                    let replace = match slot.as_ref() {
                                        Some(ImageError::ChunkCorrupt { chunk, .. })
                                        | Some(ImageError::RecordCorrupt { chunk, .. }) => {
                                            err_chunk(&e).is_some_and(|c| c < *chunk)
                                        }
                                        Some(_) => false,
                                        None => true,
                                    };
                                    if replace {
                                        *slot = Some(e);
                                    }
                                }
                                break;
                            }
                        }
                    }
                });
            }
        });
        match first_err.into_inner() {
            Ok(Some(e)) => Err(e),
            Ok(None) => Ok(()),
            Err(_) => Err(ImageError::WorkerPanicked("verify")),
        }
    }
}

fn err_chunk(e: &ImageError) -> Option<u64> {
    match e {
        ImageError::ChunkCorrupt { chunk, .. } | ImageError::RecordCorrupt { chunk, .. } => {
            Some(*chunk)
        }
        _ => None,
    }
}

/// Reads an image front to back from any byte source, without seeking (a
/// pipe, a socket, stdin). Each chunk's record header is checked as it
/// arrives; after the last chunk, the index and trailer are read and
/// cross-checked against what was seen, including the root hash, and the
/// source must then end.
///
/// [`StreamReader::next_chunk`] yields chunks with their image offset; it
/// returns `Ok(None)` only once the whole image has been validated.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    inner: R,
    header: Header,
    offset: u64,
    next: u64,
    root: RootHasher,
    index_hash: IndexHasher,
    finished: Option<[u8; 32]>,
    failed: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads and validates the header.
    pub fn new(mut inner: R) -> Result<Self, ImageError> {
        let mut hb = [0u8; HEADER_LEN];
        let n = read_full(&mut inner, &mut hb).map_err(|e| ImageError::io("read image", "-", e))?;
        let header = Header::parse(&hb[..n])?;
        let g = header.geometry;
        Ok(Self {
            inner,
            header,
            offset: HEADER_LEN as u64,
            next: 0,
            root: RootHasher::new(g.disk_size, g.chunk_size),
            index_hash: IndexHasher::new(g.chunk_count),
            finished: None,
            failed: false,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Disk size, chunk size, chunk count, level.
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// The root hash, known once the stream has been read to its end.
    pub fn root_hash(&self) -> Option<[u8; 32]> {
        self.finished
    }

    fn read_exact_or(
        &mut self,
        buf: &mut [u8],
        what: impl FnOnce() -> String,
        at: u64,
    ) -> Result<(), ImageError> {
        let n =
            read_full(&mut self.inner, buf).map_err(|e| ImageError::io("read image", "-", e))?;
        if n < buf.len() {
            return Err(ImageError::Truncated {
                what: what(),
                offset: at,
            });
        }
        Ok(())
    }

    /// The next chunk and the image offset of its record, or `None` after
    /// the index and trailer have been validated.
    pub fn next_chunk(&mut self) -> Result<Option<(EncodedChunk, u64)>, ImageError> {
        if self.failed || self.finished.is_some() {
            return Ok(None);
        }
        let res = self.next_inner();
        if res.is_err() {
            self.failed = true;
        }
        res
    }

    fn next_inner(&mut self) -> Result<Option<(EncodedChunk, u64)>, ImageError> {
        let g = self.header.geometry;
        if self.next == g.chunk_count {
            self.read_end()?;
            return Ok(None);
        }
        let i = self.next;
        let at = self.offset;
        let mut rb = [0u8; RECORD_HEADER_LEN];
        self.read_exact_or(&mut rb, || format!("chunk {i} record"), at)?;
        let rec = check_record(&rb, i, at, g.chunk_len(i), None)?;
        let mut payload = vec![0u8; rec.stored_len as usize];
        self.read_exact_or(&mut payload, || format!("chunk {i} record"), at)?;
        self.root.push(&rec.hash);
        self.index_hash.push(&IndexEntry {
            offset: at,
            kind: rec.kind,
            stored_len: rec.stored_len,
            raw_len: rec.raw_len,
            hash: rec.hash,
        });
        self.offset += RECORD_HEADER_LEN as u64 + u64::from(rec.stored_len);
        self.next += 1;
        Ok(Some((
            EncodedChunk {
                index: i,
                kind: rec.kind,
                raw_len: rec.raw_len,
                hash: rec.hash,
                payload,
            },
            at,
        )))
    }

    fn read_end(&mut self) -> Result<(), ImageError> {
        let g = self.header.geometry;
        let index_offset = self.offset;
        let index_len = Index::encoded_len(g.chunk_count);
        let icorrupt = |reason: String| ImageError::IndexCorrupt {
            offset: index_offset,
            reason,
        };
        // Hash the index as it streams past instead of buffering it.
        let mut head = [0u8; 16];
        self.read_exact_or(&mut head, || "index".into(), index_offset)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        let mut left = index_len - 16 - 32;
        let mut buf = vec![0u8; 1 << 16];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.read_exact_or(&mut buf[..n], || "index".into(), index_offset)?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let mut stored = [0u8; 32];
        self.read_exact_or(&mut stored, || "index".into(), index_offset)?;
        if *hasher.finalize().as_bytes() != stored {
            return Err(icorrupt("checksum mismatch".into()));
        }
        if stored != self.index_hash.finish() {
            return Err(icorrupt("disagrees with the chunk records".into()));
        }
        let trailer_off = index_offset + index_len;
        let mut tb = [0u8; TRAILER_LEN];
        let n = read_full(&mut self.inner, &mut tb)
            .map_err(|e| ImageError::io("read image", "-", e))?;
        if n < TRAILER_LEN {
            return Err(ImageError::TrailerMissing {
                len: trailer_off + n as u64,
            });
        }
        let trailer =
            Trailer::read(&mut Reader::new(&tb)).map_err(|e| ImageError::TrailerCorrupt {
                offset: trailer_off,
                reason: e.to_string(),
            })?;
        let expect = Trailer {
            index_offset,
            index_len,
            chunk_count: g.chunk_count,
            disk_size: g.disk_size,
            root_hash: trailer.root_hash,
        };
        if trailer != expect {
            return Err(ImageError::TrailerCorrupt {
                offset: trailer_off,
                reason: "disagrees with the header or index".into(),
            });
        }
        let actual = self.root.finish();
        if actual != trailer.root_hash {
            return Err(ImageError::RootHashMismatch {
                expected: hex(&trailer.root_hash),
                actual: hex(&actual),
            });
        }
        let mut extra = [0u8; 1];
        let n = read_full(&mut self.inner, &mut extra)
            .map_err(|e| ImageError::io("read image", "-", e))?;
        if n != 0 {
            return Err(ImageError::TrailingData {
                offset: trailer_off + TRAILER_LEN as u64,
            });
        }
        self.finished = Some(actual);
        Ok(())
    }
}

impl<R: Read> Iterator for StreamReader<R> {
    type Item = Result<(EncodedChunk, u64), ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_chunk().transpose()
    }
}

/// Reads until `buf` is full or the source ends; returns bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
