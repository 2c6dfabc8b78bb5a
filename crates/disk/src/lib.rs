//! Disk access for imgcast: what kind of thing a path is, how big it is,
//! whether something else is using it, and the few syscalls that the
//! portable standard library does not offer.
//!
//! ```text
//!   img / engine ──▶ image (DiskSource, DiskTarget) ──▶ disk (this crate) ──▶ kernel
//!                                                        sizes, mount checks,
//!                                                        O_EXCL opens, BLKZEROOUT
//! ```
//!
//! Everything here is Linux-specific: it reads `/proc/self/mountinfo`,
//! `/proc/swaps` and `/sys/block`, and uses block-device ioctls. `unsafe` is
//! confined to the syscalls (`ioctl`, `statvfs`, `pwritev`,
//! `sync_file_range`, `setpriority`), each with a `// SAFETY:` comment.

#![deny(missing_docs)]

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

mod extents;
mod storage;
mod write;
pub use extents::{Extent, Extents};
pub use storage::{image_on_target, StorageId};
pub use write::{discard_range, discard_unsupported, start_writeback, write_all_vectored_at};

/// Nice value of the bulk threads (compression, hashing, RaptorQ builds and decodes, writes).
const BULK_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority to [`BULK_NICE`]: bulk work then yields the CPU to the
/// threads that keep time (the master's pacing, the receive threads) whenever they wake, rather
/// than holding it for a whole time slice. On 2 cores a master's compressors filling the window
/// stalled its sends for 10-19 ms at a time. A thread alone on an idle CPU runs as fast as before.
/// Failure (a seccomp filter, say) only leaves the priority as it was.
pub fn lower_thread_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; PRIO_PROCESS with a thread
    // id changes that one thread's nice value, and only upward, which needs no privilege.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BULK_NICE);
    }
}

/// Errors from disk inspection and opening. Each names the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiskError {
    /// An I/O error on `path` while doing `action`.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("open", "stat", "read size of", ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("{path} is neither a regular file nor a block device")]
    NotADisk {
        /// The path concerned.
        path: PathBuf,
    },
    /// The device or file is mounted, swapped on, held by another device, or
    /// opened exclusively by someone else.
    #[error("{path} is in use: {by}")]
    InUse {
        /// The path concerned.
        path: PathBuf,
        /// Who uses it: a mountpoint, "swap", a holder device, a loop device.
        by: String,
    },
}

impl DiskError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The two kinds of thing imgcast reads from or writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// A regular file (sparse-capable image of a disk).
    RegularFile,
    /// A block device (`/dev/sda`, `/dev/loop3`, a partition, ...).
    BlockDevice,
}

impl DiskKind {
    /// Classifies file metadata; `None` for directories, character devices,
    /// pipes and sockets, which imgcast never treats as disks.
    pub fn of(meta: &fs::Metadata) -> Option<Self> {
        let ft = meta.file_type();
        if ft.is_file() {
            Some(Self::RegularFile)
        } else if ft.is_block_device() {
            Some(Self::BlockDevice)
        } else {
            None
        }
    }
}

/// Classifies the thing at `path` (following symlinks such as
/// `/dev/disk/by-id/...`).
pub fn disk_kind(path: &Path) -> Result<DiskKind, DiskError> {
    let meta = fs::metadata(path).map_err(|e| DiskError::io("stat", path, e))?;
    DiskKind::of(&meta).ok_or_else(|| DiskError::NotADisk {
        path: path.to_path_buf(),
    })
}

// Linux ioctl request numbers from <linux/fs.h>. libc does not export these;
// the encoding below is the asm-generic one (x86, arm, riscv, ...).
const IOC_READ: u64 = 2;
pub(crate) const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
/// `_IOR(0x12, 114, size_t)`: device size in bytes.
const BLKGETSIZE64: u64 = ioc(IOC_READ, 0x12, 114, size_of::<usize>() as u64);
/// `_IO(0x12, 127)`: zero a byte range `[start, len]` of the device.
const BLKZEROOUT: u64 = ioc(0, 0x12, 127, 0);

/// Size in bytes of a regular file or block device.
///
/// For block devices the metadata length is 0, so the size comes from the
/// `BLKGETSIZE64` ioctl.
pub fn disk_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to
    // a live, properly aligned u64 owned by this frame; the fd is open.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            BLKGETSIZE64 as libc::Ioctl,
            &mut size as *mut u64,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Writes zeros over `len` bytes at `offset`.
///
/// On a block device this first tries `BLKZEROOUT`, which lets the device
/// zero (or unmap) the range without the data crossing the bus; if the
/// device or range does not support it, zero buffers are written instead.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let is_block = file.metadata()?.file_type().is_block_device();
    // BLKZEROOUT requires 512-byte alignment of both start and length.
    if is_block && offset % 512 == 0 && len % 512 == 0 {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64s (start, length) from the pointer,
        // which points to a live array of two u64s; the fd is open.
        let rc =
            unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as libc::Ioctl, range.as_ptr()) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINVAL | libc::ENOTTY | libc::EOPNOTSUPP | libc::EBADF) => {}
            _ => return Err(err),
        }
    }
    write_zeros(file, offset, len)
}

fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    const BUF: u64 = 1 << 20;
    let zeros = vec![0u8; BUF.min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(BUF) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Bytes available to an unprivileged writer on the filesystem holding
/// `path` (a file or directory), from `statvfs`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated string that outlives the call and `st`
    // is a live statvfs the kernel fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Total bytes of the filesystem holding `path` (a file or directory), from `statvfs`: no file on
/// it, however sparse, can hold a disk larger than this.
pub fn fs_size(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated string that outlives the call and `st`
    // is a live statvfs the kernel fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_blocks as u64).saturating_mul(st.f_frsize as u64))
}

/// Opens a block device read-only and exclusively (`O_EXCL`: refused while it is mounted or held),
/// to look at it without writing: its size, its first sectors.
pub fn open_exclusive_readonly(path: &Path) -> Result<File, DiskError> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
    {
        Ok(f) => Ok(f),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(DiskError::InUse {
            path: path.to_path_buf(),
            by: mounted_status(path)
                .ok()
                .flatten()
                .unwrap_or_else(|| "opened exclusively by another program".to_string()),
        }),
        Err(e) => Err(DiskError::io("open", path, e)),
    }
}

/// Opens a disk for writing, exclusively where the kernel allows it.
///
/// Block devices are opened `O_RDWR | O_EXCL`: the kernel then refuses the
/// open with `EBUSY` while the device (or one of its partitions) is mounted,
/// used as swap, held by device-mapper/md, or opened exclusively elsewhere,
/// which closes the race between our mount check and our first write.
/// Regular files are opened read-write and created if missing (never
/// truncated here: the caller decides, after its own checks).
pub fn open_target_exclusive(path: &Path) -> Result<(File, DiskKind), DiskError> {
    let kind = match fs::metadata(path) {
        Ok(meta) => DiskKind::of(&meta).ok_or_else(|| DiskError::NotADisk {
            path: path.to_path_buf(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => DiskKind::RegularFile,
        Err(e) => return Err(DiskError::io("stat", path, e)),
    };
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    match kind {
        DiskKind::BlockDevice => {
            opts.custom_flags(libc::O_EXCL);
        }
        DiskKind::RegularFile => {
            opts.create(true);
        }
    }
    match opts.open(path) {
        Ok(f) => Ok((f, kind)),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let by = mounted_status(path)
                .ok()
                .flatten()
                .unwrap_or_else(|| "opened exclusively by another program".to_string());
            Err(DiskError::InUse {
                path: path.to_path_buf(),
                by,
            })
        }
        Err(e) => Err(DiskError::io("open", path, e)),
    }
}

/// A block device's `major:minor` number pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevNum {
    /// Major number (driver).
    pub major: u32,
    /// Minor number (unit/partition).
    pub minor: u32,
}

impl DevNum {
    /// Splits a raw `st_rdev`.
    pub fn from_rdev(rdev: u64) -> Self {
        Self {
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        }
    }

    /// Parses the `MAJ:MIN` form used by sysfs and mountinfo.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.trim().split_once(':')?;
        Some(Self {
            major: a.parse().ok()?,
            minor: b.parse().ok()?,
        })
    }
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Says whether writing to `path` would destroy something in use.
///
/// Returns `Some(description)` — a mountpoint such as `"mounted on /boot"`,
/// `"used as swap"`, `"held by dm-0"`, or `"in use by /dev/loop2"` — or
/// `None` when nothing uses it.
///
/// * Block device: its own `major:minor` and those of all its partitions
///   are looked up in `/proc/self/mountinfo`, `/proc/swaps` and the sysfs
///   `holders/` directories (LVM, dm-crypt, md).
/// * Regular file: whether an attached loop device is backed by it (writing
///   under a loop device corrupts whatever uses it, mounted or not).
pub fn mounted_status(path: &Path) -> Result<Option<String>, DiskError> {
    let meta = fs::metadata(path).map_err(|e| DiskError::io("stat", path, e))?;
    match DiskKind::of(&meta) {
        Some(DiskKind::BlockDevice) => Ok(devnum_status(DevNum::from_rdev(meta.rdev()))),
        Some(DiskKind::RegularFile) => Ok(loop_backing_status(path)),
        None => Err(DiskError::NotADisk {
            path: path.to_path_buf(),
        }),
    }
}

/// The in-use status of a block device given by number (and its partitions).
pub fn devnum_status(dev: DevNum) -> Option<String> {
    let sys = PathBuf::from(format!("/sys/dev/block/{dev}"));
    let mut nums = vec![(dev, sys.clone())];
    for (_name, part_dir) in partitions_of(&sys) {
        if let Some(n) = read_trimmed(&part_dir.join("dev")).and_then(|s| DevNum::parse(&s)) {
            nums.push((n, part_dir));
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let swaps = swap_devnums();
    for (n, dir) in &nums {
        let label = dev_label(dir);
        if let Some(mp) = mountpoint_of(&mountinfo, *n) {
            return Some(if *n == dev {
                format!("mounted on {mp}")
            } else {
                format!("partition {label} is mounted on {mp}")
            });
        }
        if swaps.contains(n) {
            return Some(if *n == dev {
                "used as swap".to_string()
            } else {
                format!("partition {label} is used as swap")
            });
        }
        if let Some(holder) = first_holder(dir) {
            return Some(if *n == dev {
                format!("held by /dev/{holder}")
            } else {
                format!("partition {label} is held by /dev/{holder}")
            });
        }
    }
    None
}

fn dev_label(sys_dir: &Path) -> String {
    fs::canonicalize(sys_dir)
        .ok()
        .and_then(|p| {
            p.file_name()
                .map(|n| format!("/dev/{}", n.to_string_lossy()))
        })
        .unwrap_or_else(|| sys_dir.display().to_string())
}

/// Partition directories (those with a `partition` file) under a sysfs
/// block-device directory, sorted by name.
fn partitions_of(sys_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir(sys_dir) else {
        return Vec::new();
    };
    let mut parts: Vec<(String, PathBuf)> = rd
        .filter_map(Result::ok)
        .filter(|e| e.path().join("partition").exists())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    parts.sort();
    parts
}

/// The mount point of the first mountinfo line whose field 3 is `dev`.
fn mountpoint_of(mountinfo: &str, dev: DevNum) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let _id = fields.next()?;
        let _parent = fields.next()?;
        let num = DevNum::parse(fields.next()?)?;
        let _root = fields.next()?;
        let mp = fields.next()?;
        (num == dev).then(|| unescape_mount(mp))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn swap_devnums() -> Vec<DevNum> {
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| fs::metadata(p).ok())
        .filter(|m| m.file_type().is_block_device())
        .map(|m| DevNum::from_rdev(m.rdev()))
        .collect()
}

fn first_holder(sys_dir: &Path) -> Option<String> {
    let rd = fs::read_dir(sys_dir.join("holders")).ok()?;
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Loop devices backed by the file at `path`, with their own status.
fn loop_backing_status(path: &Path) -> Option<String> {
    let target = fs::canonicalize(path).ok()?;
    let rd = fs::read_dir("/sys/block").ok()?;
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loop"))
        .collect();
    names.sort();
    for name in names {
        let Some(backing) = read_trimmed(
            &Path::new("/sys/block")
                .join(&name)
                .join("loop/backing_file"),
        ) else {
            continue;
        };
        // The kernel appends " (deleted)" when the backing file was unlinked.
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(&backing);
        if Path::new(backing) == target {
            let dev = read_trimmed(&Path::new("/sys/block").join(&name).join("dev"))
                .and_then(|s| DevNum::parse(&s));
            let extra = dev
                .and_then(devnum_status)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            return Some(format!("in use by /dev/{name}{extra}"));
        }
    }
    None
}

/// One partition of a [`BlockDevice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Device node, e.g. `/dev/sda1`.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// What uses it, if anything (see [`mounted_status`]).
    pub mounted: Option<String>,
}

/// A whole block device as listed by [`list_block_devices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    /// Device node, e.g. `/dev/sda`.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Vendor model string, when the driver reports one.
    pub model: Option<String>,
    /// What uses the device or one of its partitions, if anything.
    pub mounted: Option<String>,
    /// Its partitions, sorted by name.
    pub partitions: Vec<Partition>,
    /// Whether the kernel marks it removable (USB sticks, card readers).
    pub removable: bool,
    /// Whether the device is read-only.
    pub read_only: bool,
}

/// Lists whole block devices from `/sys/block`, sorted by name.
///
/// Zero-size devices (empty card readers, unused `ram`/`loop` nodes) and loop
/// devices without a backing file are skipped: none can be imaged.
pub fn list_block_devices() -> Result<Vec<BlockDevice>, DiskError> {
    let root = Path::new("/sys/block");
    let rd = fs::read_dir(root).map_err(|e| DiskError::io("list", root, e))?;
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let dir = root.join(&name);
        if name.starts_with("loop") && !dir.join("loop/backing_file").exists() {
            continue;
        }
        let size = sectors_to_bytes(&dir.join("size"));
        if size == 0 {
            continue;
        }
        let dev = read_trimmed(&dir.join("dev")).and_then(|s| DevNum::parse(&s));
        let partitions = partitions_of(&dir)
            .into_iter()
            .map(|(pname, pdir)| Partition {
                path: PathBuf::from(format!("/dev/{pname}")),
                size: sectors_to_bytes(&pdir.join("size")),
                mounted: read_trimmed(&pdir.join("dev"))
                    .and_then(|s| DevNum::parse(&s))
                    .and_then(devnum_status),
            })
            .collect();
        out.push(BlockDevice {
            path: PathBuf::from(format!("/dev/{name}")),
            size,
            model: read_trimmed(&dir.join("device/model")).filter(|m| !m.is_empty()),
            mounted: dev.and_then(devnum_status),
            partitions,
            removable: read_trimmed(&dir.join("removable")).as_deref() == Some("1"),
            read_only: read_trimmed(&dir.join("ro")).as_deref() == Some("1"),
        });
    }
    Ok(out)
}

/// sysfs `size` files count 512-byte sectors whatever the logical block size.
fn sectors_to_bytes(path: &Path) -> u64 {
    read_trimmed(path)
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(0, |s| s.saturating_mul(512))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn regular_file_size_and_kind() -> io::Result<()> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(&[7u8; 12345])?;
        assert_eq!(disk_size(f.as_file())?, 12345);
        assert_eq!(disk_kind(f.path()).ok(), Some(DiskKind::RegularFile));
        Ok(())
    }

    #[test]
    fn directory_is_not_a_disk() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        assert!(matches!(
            disk_kind(d.path()),
            Err(DiskError::NotADisk { .. })
        ));
        assert!(matches!(
            mounted_status(d.path()),
            Err(DiskError::NotADisk { .. })
        ));
        let err = open_target_exclusive(d.path()).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("neither a regular file")));
        Ok(())
    }

    #[test]
    fn missing_path_names_it() {
        let p = Path::new("/nonexistent/imgcast-test");
        let e = disk_kind(p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/imgcast-test"), "{e}");
    }

    #[test]
    fn unattached_file_is_not_in_use() -> io::Result<()> {
        let f = tempfile::NamedTempFile::new()?;
        assert_eq!(mounted_status(f.path()).ok(), Some(None));
        Ok(())
    }

    #[test]
    fn open_creates_regular_file_without_truncating() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let p = d.path().join("t.img");
        let (f, kind) = open_target_exclusive(&p).map_err(io::Error::other)?;
        assert_eq!(kind, DiskKind::RegularFile);
        f.write_all_at(b"hello", 0)?;
        drop(f);
        let (f, _) = open_target_exclusive(&p).map_err(io::Error::other)?;
        assert_eq!(disk_size(&f)?, 5);
        Ok(())
    }

    #[test]
    fn zero_range_on_file() -> io::Result<()> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(&[0xAAu8; 3 << 20])?;
        zero_range(f.as_file(), 1000, (2 << 20) + 5)?;
        let data = fs::read(f.path())?;
        assert!(data[..1000].iter().all(|&b| b == 0xAA));
        assert!(data[1000..1000 + (2 << 20) + 5].iter().all(|&b| b == 0));
        assert!(data[1000 + (2 << 20) + 5..].iter().all(|&b| b == 0xAA));
        zero_range(f.as_file(), 0, 0)?;
        Ok(())
    }

    #[test]
    fn free_space_of_tempdir() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        assert!(free_space(d.path())? > 0);
        assert!(free_space(Path::new("/nonexistent/x")).is_err());
        Ok(())
    }

    #[test]
    fn parses_mountinfo() {
        let mi = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                  23 22 8:1 / /boot\\040efi rw - vfat /dev/sda1 rw\n";
        let d = |a, b| DevNum { major: a, minor: b };
        assert_eq!(mountpoint_of(mi, d(8, 2)).as_deref(), Some("/"));
        assert_eq!(mountpoint_of(mi, d(8, 1)).as_deref(), Some("/boot efi"));
        assert_eq!(mountpoint_of(mi, d(8, 3)), None);
        assert_eq!(DevNum::parse("259:0\n"), Some(d(259, 0)));
        assert_eq!(DevNum::parse("x"), None);
    }

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(BLKGETSIZE64, 0x8008_1272);
        }
        assert_eq!(BLKZEROOUT, 0x127f);
    }

    #[test]
    fn listing_devices_does_not_fail() {
        // /sys/block exists on any Linux host; the content varies.
        if Path::new("/sys/block").exists() {
            let devs = list_block_devices();
            assert!(devs.is_ok());
            for d in devs.unwrap_or_default() {
                assert!(d.size > 0);
            }
        }
    }
}
