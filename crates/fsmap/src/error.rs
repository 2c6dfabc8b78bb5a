//! The one error type of this crate.
//!
//! Damaged or unknown on-disk structures are *not* errors: the partition (or
//! disk) concerned is imaged whole and a note says why. Errors are what the
//! caller must act on: an unreadable disk, or a filesystem it must not image
//! in its current state.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why [`analyze`](crate::analyze) could not produce a layout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsmapError {
    /// The path is not a disk (stat failed, or neither file nor block device).
    #[error(transparent)]
    Disk(#[from] imgcast_disk::DiskError),
    /// Reading `len` bytes at byte `offset` of `path` failed.
    #[error("read {len} bytes at offset {offset} of {path}: {source}")]
    Read {
        /// The disk or image file.
        path: PathBuf,
        /// Byte offset of the read on the disk.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Opening or sizing the disk failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("open", "size of").
        action: &'static str,
        /// The disk or image file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// One or more filesystems are dirty or mounted read-write.
    #[error("{}", Refusals(.0))]
    Refused(Vec<Refusal>),
}

/// One filesystem that is not imaged in its current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Where: `"partition 2"`, or `"the disk"` for a filesystem without a
    /// partition table.
    pub place: String,
    /// The filesystem: `"ext4"`, `"fat32"`, `"ntfs"`, ...
    pub fs: String,
    /// Why, e.g. `"mounted read-write on /mnt"` or `"marked dirty: needs
    /// journal recovery"`.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.place, self.fs, self.reason)
    }
}

struct Refusals<'a>(&'a [Refusal]);

impl fmt::Display for Refusals<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refusing to map ")?;
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{r}")?;
        }
        write!(
            f,
            " — an image of it would not be consistent; unmount it or repair it \
             (e2fsck, fsck.vfat, ntfsfix / chkdsk), or use force to image it anyway"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_message_names_place_fs_reason_and_force() {
        let e = FsmapError::Refused(vec![
            Refusal {
                place: "partition 2".into(),
                fs: "ext4".into(),
                reason: "mounted read-write on /mnt".into(),
            },
            Refusal {
                place: "partition 3".into(),
                fs: "fat32".into(),
                reason: "marked dirty".into(),
            },
        ]);
        let m = e.to_string();
        assert!(
            m.contains("partition 2 (ext4): mounted read-write on /mnt"),
            "{m}"
        );
        assert!(m.contains("; partition 3 (fat32): marked dirty"), "{m}");
        assert!(m.contains("force"), "{m}");
    }
}
