//! Bounded, positional reads of a disk and of regions (partitions) of it.
//!
//! Every read names its byte range and is checked against the region it
//! belongs to *before* any buffer is allocated, so a lying length field costs
//! at most one refused read, never an allocation beyond the partition.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imgcast_disk::DiskKind;

use crate::FsmapError;

/// Why a parser gave up: a structure that does not hold together (`Bad`,
/// the region is then imaged whole) or a real I/O error (`Io`, fatal).
#[derive(Debug)]
pub(crate) enum Fault {
    Bad(String),
    Io(FsmapError),
}

impl Fault {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self::Bad(msg.into())
    }
}

/// Shorthand: fail with [`Fault::Bad`] unless `ok`.
pub(crate) fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Result<(), Fault> {
    if ok {
        Ok(())
    } else {
        Err(Fault::Bad(msg()))
    }
}

/// The disk or image file being analysed.
#[derive(Debug)]
pub(crate) struct Disk {
    file: File,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) kind: DiskKind,
}

impl Disk {
    pub(crate) fn open(path: &Path) -> Result<Self, FsmapError> {
        let kind = imgcast_disk::disk_kind(path)?;
        let file = File::open(path).map_err(|source| FsmapError::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        })?;
        let size = imgcast_disk::disk_size(&file).map_err(|source| FsmapError::Io {
            action: "read the size of",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            kind,
        })
    }

    /// Reads exactly `buf.len()` bytes at `offset`; the caller has checked
    /// the range against the disk size.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), FsmapError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| FsmapError::Read {
                path: self.path.clone(),
                offset,
                len: buf.len() as u64,
                source,
            })
    }

    /// The whole disk as a region.
    pub(crate) fn region(&self) -> Region<'_> {
        Region {
            disk: self,
            start: 0,
            len: self.size,
        }
    }

    /// `[start, start + len)` of the disk, clipped to its end.
    pub(crate) fn sub(&self, start: u64, len: u64) -> Region<'_> {
        let start = start.min(self.size);
        Region {
            disk: self,
            start,
            len: len.min(self.size - start),
        }
    }
}

/// A byte range of the disk (a partition, or the whole disk).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region<'d> {
    pub(crate) disk: &'d Disk,
    /// Offset of the region on the disk.
    pub(crate) start: u64,
    /// Bytes in the region.
    pub(crate) len: u64,
}

impl<'d> Region<'d> {
    /// Reads `buf.len()` bytes at `offset` (relative to the region).
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let n = buf.len() as u64;
        let fits = offset.checked_add(n).is_some_and(|end| end <= self.len);
        ensure(fits, || {
            format!(
                "{n} bytes at offset {offset} lie past the end ({} bytes)",
                self.len
            )
        })?;
        self.disk
            .read_exact_at(buf, self.start + offset)
            .map_err(Fault::Io)
    }

    /// Reads `len` bytes at `offset` into a new buffer; the range is checked
    /// against the region before anything is allocated.
    pub(crate) fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, Fault> {
        let fits = offset.checked_add(len).is_some_and(|end| end <= self.len);
        ensure(fits, || {
            format!(
                "{len} bytes at offset {offset} lie past the end ({} bytes)",
                self.len
            )
        })?;
        let mut buf = vec![0u8; len as usize];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }

    /// Like [`read_vec`](Self::read_vec), but `None` when the range does not
    /// fit (probing for signatures of small regions).
    pub(crate) fn peek(&self, offset: u64, len: u64) -> Result<Option<Vec<u8>>, FsmapError> {
        match self.read_vec(offset, len) {
            Ok(v) => Ok(Some(v)),
            Err(Fault::Bad(_)) => Ok(None),
            Err(Fault::Io(e)) => Err(e),
        }
    }

    /// A `Read + Seek` view of the region for the crates that want one.
    pub(crate) fn reader(&self) -> RegionReader<'d> {
        RegionReader {
            region: *self,
            pos: 0,
            io_error: RefCell::new(None),
        }
    }
}

/// `Read + Seek` over a [`Region`]; reads stop at its end. A real I/O error
/// is kept so that the caller can tell it from a parser's complaint.
pub(crate) struct RegionReader<'d> {
    region: Region<'d>,
    pos: u64,
    io_error: RefCell<Option<FsmapError>>,
}

impl RegionReader<'_> {
    /// The first real I/O error seen, if any.
    pub(crate) fn take_io_error(&self) -> Option<FsmapError> {
        self.io_error.borrow_mut().take()
    }
}

impl Read for RegionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.region.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        match self.region.read_at(self.pos, &mut buf[..n]) {
            Ok(()) => {
                self.pos += n as u64;
                Ok(n)
            }
            Err(Fault::Io(e)) => {
                let msg = e.to_string();
                self.io_error.borrow_mut().get_or_insert(e);
                Err(io::Error::other(msg))
            }
            Err(Fault::Bad(m)) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, m)),
        }
    }
}

impl Seek for RegionReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.region.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start or past 2^64",
            )
        })?;
        self.pos = new;
        Ok(new)
    }
}

/// Little-endian fields of an on-disk structure held in a buffer. Offsets
/// are constants of the format; one past the buffer reads as zero (the
/// buffers are sized by the callers, so this only guards against slips).
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(off..off + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

/// See [`le16`].
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// `b[off..off + n]`, or empty when out of range.
pub(crate) fn bytes(b: &[u8], off: usize, n: usize) -> &[u8] {
    b.get(off..off + n).unwrap_or(&[])
}

/// A NUL- or space-padded on-disk string, trimmed; `None` when empty.
pub(crate) fn text(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Lower-case hex of a UUID in the 8-4-4-4-12 form (byte order as stored).
pub(crate) fn uuid(b: &[u8]) -> Option<String> {
    if b.len() != 16 || b.iter().all(|&x| x == 0) {
        return None;
    }
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn region_reads_are_bounded() -> Result<(), Box<dyn std::error::Error>> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(&(0..=255u8).cycle().take(4096).collect::<Vec<_>>())?;
        let disk = Disk::open(f.path())?;
        assert_eq!(disk.size, 4096);
        let r = disk.sub(1000, 100);
        let v = r.read_vec(0, 4).map_err(|e| format!("{e:?}"))?;
        assert_eq!(v, [232, 233, 234, 235]);
        assert!(matches!(r.read_vec(97, 4), Err(Fault::Bad(_))));
        assert!(matches!(r.read_vec(u64::MAX, 2), Err(Fault::Bad(_))));
        // A huge lying length is refused before allocating.
        assert!(matches!(r.read_vec(0, 1 << 60), Err(Fault::Bad(_))));
        assert_eq!(r.peek(99, 2)?, None);
        // Regions are clipped to the disk.
        assert_eq!(disk.sub(4000, 1000).len, 96);
        assert_eq!(disk.sub(9000, 10).len, 0);
        let mut rd = r.reader();
        let mut b = [0u8; 300];
        assert_eq!(rd.seek(SeekFrom::End(-10))?, 90);
        assert_eq!(rd.read(&mut b)?, 10);
        assert_eq!(rd.read(&mut b)?, 0);
        assert!(rd.seek(SeekFrom::Current(-1000)).is_err());
        Ok(())
    }

    #[test]
    fn field_helpers() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(le32(&b, 4), 0x0807_0605);
        assert_eq!(le32(&b, 6), 0, "past the end reads as zero");
        assert_eq!(text(b"ROOT\0junk"), Some("ROOT".into()));
        assert_eq!(text(b"NO NAME    "), Some("NO NAME".into()));
        assert_eq!(text(b"   \0"), None);
        assert_eq!(uuid(&[0; 16]), None);
        assert_eq!(
            uuid(&[0xab; 16]).as_deref(),
            Some("abababab-abab-abab-abab-abababababab")
        );
    }
}
