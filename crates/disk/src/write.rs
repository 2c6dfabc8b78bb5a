//! The write-side syscalls a restore needs beyond `pwrite`: vectored
//! positional writes (one syscall for a run of blocks spread over several
//! buffers), discard of unused ranges, and early writeback.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;

use crate::ioc;

/// `_IO(0x12, 119)`: discard (unmap, TRIM) a byte range `[start, len]` of the device.
pub(crate) const BLKDISCARD: u64 = ioc(0, 0x12, 119, 0);

/// Most buffers one `pwritev` accepts (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

/// Writes every byte of `bufs`, in order, at `offset`: `pwritev` in batches
/// of at most `IOV_MAX` buffers, continuing after short writes.
pub fn write_all_vectored_at(file: &File, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
    let mut owned: Vec<IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).copied().collect();
    let mut rest: &mut [IoSlice<'_>] = &mut owned;
    let mut at = offset;
    while !rest.is_empty() {
        let n = rest.len().min(IOV_MAX);
        let off = libc::off_t::try_from(at)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix (std
        // guarantees it); the pointer and count describe `n` live slices that
        // outlive the call, and the kernel only reads from them. The fd is open.
        let rc = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast::<libc::iovec>(),
                n as libc::c_int,
                off,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        let written = rc as usize;
        at += written as u64;
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// Whether a discard failed because the device cannot discard at all (as
/// opposed to an I/O error worth reporting).
pub fn discard_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
    )
}

/// Discards `len` bytes at `offset` of a block device (`BLKDISCARD`): the
/// device may unmap them; what they read back as afterwards is up to the
/// device. Offset and length must be multiples of 512. Fails with
/// `EOPNOTSUPP` (see [`discard_unsupported`]) where the device cannot
/// discard, and with `ENOTTY` on anything that is not a block device.
pub fn discard_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if !file.metadata()?.file_type().is_block_device() {
        return Err(io::Error::from_raw_os_error(libc::ENOTTY));
    }
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads two u64s (start, length) from the pointer,
    // which points to a live array of two u64s; the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKDISCARD as libc::Ioctl, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Starts writeback of the dirty pages of `len` bytes at `offset` (`len` 0:
/// to the end) without waiting for it (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`), so that a final `fsync` has little left to do.
/// Durability still comes only from `fsync`.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: sync_file_range takes plain integers and an open fd; it
    // touches no memory of ours.
    let rc =
        unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    #[test]
    fn vectored_write_joins_buffers_in_order() -> io::Result<()> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(&[0xAA; 10_000])?;
        let parts: Vec<Vec<u8>> = (0..2000u32).map(|i| vec![(i % 251) as u8; 3]).collect();
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        // More slices than IOV_MAX, and an empty one, at an unaligned offset.
        let mut with_empty = slices.clone();
        with_empty.insert(7, IoSlice::new(&[]));
        write_all_vectored_at(f.as_file(), &with_empty, 1001)?;
        let back = fs::read(f.path())?;
        assert!(back[..1001].iter().all(|&b| b == 0xAA));
        let want: Vec<u8> = parts.concat();
        assert_eq!(&back[1001..1001 + want.len()], &want[..]);
        assert!(back[1001 + want.len()..].iter().all(|&b| b == 0xAA));
        write_all_vectored_at(f.as_file(), &[], 0)?;
        Ok(())
    }

    #[test]
    fn discard_refuses_regular_files_and_writeback_works_on_them() -> io::Result<()> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(&[1; 8192])?;
        let e = discard_range(f.as_file(), 0, 4096).err();
        assert!(e.as_ref().is_some_and(discard_unsupported), "{e:?}");
        discard_range(f.as_file(), 0, 0)?;
        start_writeback(f.as_file(), 0, 0)?;
        start_writeback(f.as_file(), 4096, 4096)?;
        Ok(())
    }

    #[test]
    fn discard_ioctl_number_matches_linux_headers() {
        assert_eq!(BLKDISCARD, 0x1277);
    }
}
