//! Reading image files of format v1 and v2: [`ImageReader`] for random
//! access (validates header, layout, trailer and index up front),
//! [`StreamReader`] for pipes (front to back, cross-checks the index and
//! trailer at the end).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use imgcast_disk::StorageId;

use crate::blocks::{decode_maps, maps_len};
use crate::chunk::{Decompressor, EncodedChunk, RootHasher};
use crate::codec::{checksum8, Codec, DecodeError, Reader};
use crate::encoder::Progress;
use crate::error::hex;
use crate::format::{
    Geometry, Header, Index, IndexEntry, IndexEntryV1, IndexHasher, RecordHeader, RecordHeaderV1,
    Trailer, HEADER_LEN, HEADER_LEN_V1, RECORD_HEADER_LEN, RECORD_HEADER_LEN_V1, TRAILER_LEN,
};
use crate::ImageError;

/// Record header length of format `major`.
fn record_header_len(major: u16) -> usize {
    if major == 1 {
        RECORD_HEADER_LEN_V1
    } else {
        RECORD_HEADER_LEN
    }
}

/// Index length of `count` entries in format `major`.
fn index_len(major: u16, count: u64) -> u64 {
    if major == 1 {
        Index::<IndexEntryV1>::encoded_len(count)
    } else {
        Index::<IndexEntry>::encoded_len(count)
    }
}

/// Image bytes of chunk records as an index entry describes them.
fn entry_end(major: u16, e: &IndexEntry) -> u64 {
    e.offset + record_header_len(major) as u64 + u64::from(e.maps_len) + u64::from(e.stored_len)
}

/// Parses a record header of either version and checks it against what the
/// geometry (and the index, when there is one) says chunk `index` must be.
fn check_record(
    bytes: &[u8],
    index: u64,
    offset: u64,
    g: &Geometry,
    entry: Option<&IndexEntry>,
) -> Result<RecordHeader, ImageError> {
    let corrupt = |reason: String| ImageError::RecordCorrupt {
        chunk: index,
        offset,
        reason,
    };
    let parsed = if g.major == 1 {
        RecordHeaderV1::from_bytes(bytes).map(|r| r.upgrade())
    } else {
        RecordHeader::from_bytes(bytes)
    };
    let rec = parsed.map_err(|e| {
        corrupt(match e {
            DecodeError::Checksum => "checksum mismatch".into(),
            other => other.to_string(),
        })
    })?;
    if rec.index != index {
        return Err(corrupt(format!("holds chunk {} instead", rec.index)));
    }
    let expect_len = g.chunk_len(index);
    if rec.raw_len != expect_len {
        return Err(corrupt(format!(
            "raw length {} but the geometry says {expect_len}",
            rec.raw_len
        )));
    }
    let expect_maps = maps_len(rec.used, rec.data, g.blocks_in(index));
    if rec.maps_len != expect_maps {
        return Err(corrupt(format!(
            "maps length {} but its maps take {expect_maps}",
            rec.maps_len
        )));
    }
    if let Some(e) = entry {
        if !e.matches(&rec) {
            return Err(corrupt("disagrees with the index".into()));
        }
    }
    Ok(rec)
}

/// Builds a chunk from its checked record header, bitmaps and payload;
/// returns it with its used length. Bitmap damage is a record error.
fn build_chunk(
    rec: &RecordHeader,
    maps: &[u8],
    payload: Vec<u8>,
    g: &Geometry,
    offset: u64,
) -> Result<(EncodedChunk, u32), ImageError> {
    let corrupt = |reason: String| ImageError::RecordCorrupt {
        chunk: rec.index,
        offset,
        reason,
    };
    if checksum8(maps) != rec.maps_sum {
        return Err(corrupt("bitmap checksum mismatch".into()));
    }
    let (used, data) = decode_maps(rec.used, rec.data, g.blocks_in(rec.index), maps)
        .map_err(|e| corrupt(e.to_string()))?;
    let chunk = EncodedChunk {
        index: rec.index,
        major: g.major,
        raw_len: rec.raw_len,
        block_size: g.block_size,
        kind: rec.kind,
        used,
        data,
        hash: rec.hash,
        payload,
    };
    if chunk.data_len() != rec.data_len {
        return Err(corrupt(format!(
            "data length {} but its data map holds {}",
            rec.data_len,
            chunk.data_len()
        )));
    }
    chunk.check_shape().map_err(|e| corrupt(e.to_string()))?;
    let used_len = chunk.used_len();
    Ok((chunk, used_len))
}

/// Random access to an image file. `open` validates the header, layout,
/// trailer and index (including the root hash over the index's chunk
/// hashes) before anything else happens, so most damage is reported before
/// a restore touches its target.
#[derive(Debug)]
pub struct ImageReader {
    file: File,
    path: PathBuf,
    header: Header,
    layout: Vec<u8>,
    trailer: Trailer,
    entries: Vec<IndexEntry>,
    len: u64,
    storage: StorageId,
}

impl ImageReader {
    /// Opens and validates an image file.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let file = File::open(path).map_err(|e| ImageError::io("open image", path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| ImageError::io("stat image", path, e))?;
        let len = imgcast_disk::disk_size(&file)
            .map_err(|e| ImageError::io("read size of image", path, e))?;
        Self::from_file(file, path, len, StorageId::of(&meta))
    }

    fn from_file(
        file: File,
        path: &Path,
        len: u64,
        storage: StorageId,
    ) -> Result<Self, ImageError> {
        let read = |buf: &mut [u8], at: u64| {
            file.read_exact_at(buf, at)
                .map_err(|e| ImageError::io("read image", path, e))
        };
        let mut hb = vec![0u8; HEADER_LEN.min(len as usize)];
        read(&mut hb, 0)?;
        let header = Header::parse(&hb)?;
        let g = header.geometry;
        let records = header.records_offset();

        if len < records + TRAILER_LEN as u64 {
            return Err(ImageError::TrailerMissing { len });
        }
        let mut layout = vec![0u8; header.layout_len as usize];
        let layout_at = header.encoded_len() as u64;
        read(&mut layout, layout_at)?;
        if *blake3::hash(&layout).as_bytes() != header.layout_hash {
            return Err(ImageError::LayoutCorrupt {
                offset: layout_at,
                reason: "checksum mismatch".into(),
            });
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
        if trailer.index_len != index_len(g.major, g.chunk_count)
            || trailer.index_offset.checked_add(trailer.index_len) != Some(trailer_off)
            || trailer.index_offset < records
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
        // Bounded by the file's length, checked just above.
        let mut ib = vec![0u8; trailer.index_len as usize];
        read(&mut ib, trailer.index_offset)?;
        let parsed = if g.major == 1 {
            Index::<IndexEntryV1>::from_bytes(&ib)
                .map(|i| i.entries.iter().map(IndexEntryV1::upgrade).collect())
        } else {
            Index::<IndexEntry>::from_bytes(&ib).map(|i| i.entries)
        };
        let entries: Vec<IndexEntry> = parsed.map_err(|e| {
            icorrupt(match e {
                DecodeError::Checksum => "checksum mismatch".into(),
                other => other.to_string(),
            })
        })?;
        drop(ib);
        if entries.len() as u64 != g.chunk_count {
            return Err(icorrupt(format!(
                "{} entries for {} chunks",
                entries.len(),
                g.chunk_count
            )));
        }
        let mut root = RootHasher::new(&g);
        let mut expect_off = records;
        for (i, e) in entries.iter().enumerate() {
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
            let maps = maps_len(e.used, e.data, g.blocks_in(i));
            if e.maps_len != maps {
                return Err(icorrupt(format!(
                    "chunk {i} maps length {} but its maps take {maps}",
                    e.maps_len
                )));
            }
            expect_off = entry_end(g.major, e);
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
            layout,
            trailer,
            entries,
            len,
            storage,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Disk size, chunk and block size, chunk count, smallest target, level.
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// The layout blob (empty when the maker gave none, and in v1).
    pub fn layout(&self) -> &[u8] {
        &self.layout
    }

    /// The root hash (already checked against the index at open).
    pub fn root_hash(&self) -> [u8; 32] {
        self.trailer.root_hash
    }

    /// The index entries, one per chunk (v1 entries in their v2 form).
    pub fn index(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Length of the image file.
    pub fn image_len(&self) -> u64 {
        self.len
    }

    /// Where the image is stored (a restore refuses to write over it).
    pub fn storage(&self) -> StorageId {
        self.storage
    }

    /// Bytes of used blocks (what a restore reproduces).
    pub fn used_bytes(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.used_len)).sum()
    }

    /// Bytes of data blocks (what a restore writes).
    pub fn data_bytes(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.data_len)).sum()
    }

    /// Number of chunks without data blocks (nothing stored).
    pub fn hole_chunks(&self) -> u64 {
        self.entries.iter().filter(|e| e.data_len == 0).count() as u64
    }

    /// Reads chunk `i`'s record, checking its header and bitmaps against
    /// the index. The payload is not decompressed or hashed here (see
    /// [`EncodedChunk::verified`]).
    pub fn read_chunk(&self, i: u64) -> Result<EncodedChunk, ImageError> {
        self.read_chunk_into(i, Vec::new())
    }

    /// [`ImageReader::read_chunk`] into a reused payload buffer.
    pub fn read_chunk_into(
        &self,
        i: u64,
        mut payload: Vec<u8>,
    ) -> Result<EncodedChunk, ImageError> {
        let g = self.geometry();
        let Some(e) = usize::try_from(i).ok().and_then(|i| self.entries.get(i)) else {
            return Err(ImageError::BadChunk {
                chunk: i,
                reason: format!("no such chunk (the image has {})", g.chunk_count),
            });
        };
        let read = |buf: &mut [u8], at: u64| {
            self.file
                .read_exact_at(buf, at)
                .map_err(|err| ImageError::io("read image", &self.path, err))
        };
        // Header and bitmaps in one read; the payload apart, so that it lands
        // where it stays: no memmove per chunk.
        let hl = record_header_len(g.major);
        let mut head = vec![0u8; hl + e.maps_len as usize];
        read(&mut head, e.offset)?;
        let rec = check_record(&head[..hl], i, e.offset, &g, Some(e))?;
        // A reused buffer: resize only fills what grows; the read overwrites all.
        payload.resize(e.stored_len as usize, 0);
        read(&mut payload, e.offset + hl as u64 + u64::from(e.maps_len))?;
        let (chunk, used_len) = build_chunk(&rec, &head[hl..], payload, &g, e.offset)?;
        if used_len != e.used_len {
            return Err(ImageError::RecordCorrupt {
                chunk: i,
                offset: e.offset,
                reason: format!(
                    "used map holds {used_len} bytes but the index says {}",
                    e.used_len
                ),
            });
        }
        Ok(chunk)
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
                    let mut payload = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= g.chunk_count {
                            break;
                        }
                        let res = self
                            .read_chunk_into(i, std::mem::take(&mut payload))
                            .and_then(|c| {
                                let r = c
                                    .verified(&mut out, &mut d)
                                    .map(|_| ())
                                    .map_err(|e| e.at_offset(self.entries[i as usize].offset));
                                payload = c.payload;
                                r
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
/// pipe, a socket, stdin). Each chunk's record header and bitmaps are
/// checked as they arrive; after the last chunk, the index and trailer are
/// read and cross-checked against what was seen, including the root hash,
/// and the source must then end.
///
/// [`StreamReader::next_chunk`] yields chunks with their image offset; it
/// returns `Ok(None)` only once the whole image has been validated.
#[derive(Debug)]
pub struct StreamReader<R: Read> {
    inner: R,
    header: Header,
    layout: Vec<u8>,
    offset: u64,
    next: u64,
    root: RootHasher,
    index_hash: IndexHasher,
    finished: Option<[u8; 32]>,
    failed: bool,
}

impl<R: Read> StreamReader<R> {
    /// Reads and validates the header and the layout.
    pub fn new(mut inner: R) -> Result<Self, ImageError> {
        let io_err = |e| ImageError::io("read image", "-", e);
        let mut hb = [0u8; HEADER_LEN];
        // The v1 length first: every version's header is at least that long.
        let n = read_full(&mut inner, &mut hb[..HEADER_LEN_V1]).map_err(io_err)?;
        let want = Header::peek_len(&hb[..n])?;
        let mut have = n;
        if n == HEADER_LEN_V1 && want > HEADER_LEN_V1 {
            have += read_full(&mut inner, &mut hb[HEADER_LEN_V1..want]).map_err(io_err)?;
        }
        let header = Header::parse(&hb[..have])?;
        let g = header.geometry;
        let layout_at = header.encoded_len() as u64;
        let mut layout = vec![0u8; header.layout_len as usize];
        let n = read_full(&mut inner, &mut layout).map_err(io_err)?;
        if n < layout.len() {
            return Err(ImageError::Truncated {
                what: "layout".into(),
                offset: layout_at,
            });
        }
        if *blake3::hash(&layout).as_bytes() != header.layout_hash {
            return Err(ImageError::LayoutCorrupt {
                offset: layout_at,
                reason: "checksum mismatch".into(),
            });
        }
        Ok(Self {
            inner,
            header,
            layout,
            offset: header.records_offset(),
            next: 0,
            root: RootHasher::new(&g),
            index_hash: IndexHasher::new(g.chunk_count),
            finished: None,
            failed: false,
        })
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Disk size, chunk and block size, chunk count, smallest target, level.
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }

    /// The layout blob (empty when there is none).
    pub fn layout(&self) -> &[u8] {
        &self.layout
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
        self.next_chunk_into(Vec::new())
    }

    /// [`StreamReader::next_chunk`] into a reused payload buffer.
    pub fn next_chunk_into(
        &mut self,
        payload: Vec<u8>,
    ) -> Result<Option<(EncodedChunk, u64)>, ImageError> {
        if self.failed || self.finished.is_some() {
            return Ok(None);
        }
        let res = self.next_inner(payload);
        if res.is_err() {
            self.failed = true;
        }
        res
    }

    fn next_inner(
        &mut self,
        mut payload: Vec<u8>,
    ) -> Result<Option<(EncodedChunk, u64)>, ImageError> {
        let g = self.header.geometry;
        if self.next == g.chunk_count {
            self.read_end()?;
            return Ok(None);
        }
        let i = self.next;
        let at = self.offset;
        let hl = record_header_len(g.major);
        let mut rb = [0u8; RECORD_HEADER_LEN];
        self.read_exact_or(&mut rb[..hl], || format!("chunk {i} record"), at)?;
        let rec = check_record(&rb[..hl], i, at, &g, None)?;
        // Bounded by the geometry: check_record checked maps_len exactly.
        let mut maps = vec![0u8; rec.maps_len as usize];
        self.read_exact_or(&mut maps, || format!("chunk {i} record"), at)?;
        payload.resize(rec.stored_len as usize, 0);
        self.read_exact_or(&mut payload, || format!("chunk {i} record"), at)?;
        let (chunk, used_len) = build_chunk(&rec, &maps, payload, &g, at)?;
        self.root.push(&rec.hash);
        if g.major == 1 {
            self.index_hash.push(&IndexEntryV1 {
                offset: at,
                kind: rec.kind,
                stored_len: rec.stored_len,
                raw_len: rec.raw_len,
                hash: rec.hash,
            });
        } else {
            self.index_hash
                .push(&IndexEntry::of_record(&rec, at, used_len));
        }
        self.offset += hl as u64 + u64::from(rec.maps_len) + u64::from(rec.stored_len);
        self.next += 1;
        Ok(Some((chunk, at)))
    }

    fn read_end(&mut self) -> Result<(), ImageError> {
        let g = self.header.geometry;
        let index_offset = self.offset;
        let index_len = index_len(g.major, g.chunk_count);
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
