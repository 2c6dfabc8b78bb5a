//! The disk we work on: opened once, with its size and logical sector size,
//! and positional reads and writes that name the target in their errors.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use imgcast_disk::{DevNum, DiskKind};

use crate::RetargetError;

/// An open target disk (regular file or block device).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) kind: DiskKind,
    /// Size in bytes.
    pub(crate) size: u64,
    /// `major:minor` of a block device.
    pub(crate) devnum: Option<DevNum>,
}

impl Target {
    /// Opens `path` for writing: never creates it, refuses it while it is in
    /// use (mounted, swap, held, or a file behind a loop device), and opens
    /// block devices `O_EXCL` so the kernel keeps others out while we work.
    pub(crate) fn open_write(path: &Path) -> Result<Self, RetargetError> {
        Self::check_exists(path)?;
        if let Some(by) = imgcast_disk::mounted_status(path)? {
            return Err(RetargetError::InUse {
                path: path.to_path_buf(),
                by,
            });
        }
        let (file, kind) = imgcast_disk::open_target_exclusive(path).map_err(|e| match e {
            imgcast_disk::DiskError::InUse { path, by } => RetargetError::InUse { path, by },
            other => other.into(),
        })?;
        Self::from_file(path, file, kind)
    }

    /// Opens `path` read-only (for `img info zisd`, which may look at a disk
    /// in use).
    pub(crate) fn open_read(path: &Path) -> Result<Self, RetargetError> {
        Self::check_exists(path)?;
        let kind = imgcast_disk::disk_kind(path)?;
        let file = File::open(path).map_err(|e| RetargetError::io("open", path, e))?;
        Self::from_file(path, file, kind)
    }

    fn check_exists(path: &Path) -> Result<(), RetargetError> {
        match fs::metadata(path) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RetargetError::Missing {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(RetargetError::io("stat", path, e)),
        }
    }

    fn from_file(path: &Path, file: File, kind: DiskKind) -> Result<Self, RetargetError> {
        let size =
            imgcast_disk::disk_size(&file).map_err(|e| RetargetError::io("size of", path, e))?;
        let devnum = match kind {
            DiskKind::BlockDevice => {
                let meta = file
                    .metadata()
                    .map_err(|e| RetargetError::io("stat", path, e))?;
                Some(DevNum::from_rdev(meta.rdev()))
            }
            DiskKind::RegularFile => None,
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            kind,
            size,
            devnum,
        })
    }

    /// The kernel's logical block size of a block device; `None` for a file
    /// (whose sector size only its table can tell).
    pub(crate) fn device_sector_size(&self) -> Option<u64> {
        let dev = self.devnum?;
        let base = PathBuf::from(format!("/sys/dev/block/{dev}"));
        // A partition has no queue/ of its own: its disk's applies.
        [
            base.join("queue/logical_block_size"),
            base.join("../queue/logical_block_size"),
        ]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
        .filter(|&s| s.is_power_of_two() && (512..=65536).contains(&s))
    }

    /// Reads exactly `len` bytes at `offset`; a range past the end is
    /// reported as [`RetargetError::Truncated`].
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, RetargetError> {
        let end = offset.saturating_add(len as u64);
        if end > self.size {
            return Err(RetargetError::Truncated {
                path: self.path.clone(),
                disk_bytes: self.size,
                end,
            });
        }
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| RetargetError::io("read", &self.path, e))?;
        Ok(buf)
    }

    /// Writes all of `buf` at `offset`, which must lie inside the target.
    pub(crate) fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), RetargetError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.size {
            return Err(RetargetError::Truncated {
                path: self.path.clone(),
                disk_bytes: self.size,
                end,
            });
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| RetargetError::io("write", &self.path, e))
    }

    /// Flushes what we wrote to stable storage.
    pub(crate) fn sync(&self) -> Result<(), RetargetError> {
        self.file
            .sync_all()
            .map_err(|e| RetargetError::io("fsync", &self.path, e))
    }
}

/// Collects the writes a table library makes (`Write + Seek` over a disk of
/// a given size) without touching the disk, so that every byte can be
/// checked against the ranges we mean to write before any is written.
#[derive(Debug, Default)]
pub(crate) struct WriteLog {
    size: u64,
    pos: u64,
    /// `(offset, bytes)`, in the order written, contiguous writes merged.
    pub(crate) segments: Vec<(u64, Vec<u8>)>,
}

impl WriteLog {
    pub(crate) fn new(size: u64) -> Self {
        Self {
            size,
            ..Self::default()
        }
    }
}

impl Write for WriteLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self
            .pos
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "write past the disk end")
            })?;
        match self.segments.last_mut() {
            Some((off, bytes)) if *off + bytes.len() as u64 == self.pos => {
                bytes.extend_from_slice(buf)
            }
            _ => self.segments.push((self.pos, buf.to_vec())),
        }
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for WriteLog {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_log_merges_contiguous_writes_and_refuses_past_end() {
        let mut log = WriteLog::new(100);
        log.seek(SeekFrom::Start(10)).unwrap();
        log.write_all(b"abc").unwrap();
        log.write_all(b"de").unwrap();
        log.seek(SeekFrom::End(-5)).unwrap();
        log.write_all(b"xyz").unwrap();
        assert_eq!(
            log.segments,
            vec![(10, b"abcde".to_vec()), (95, b"xyz".to_vec())]
        );
        assert!(log.write_all(b"toolong").is_err());
        assert!(log.seek(SeekFrom::Current(-1000)).is_err());
    }
}
