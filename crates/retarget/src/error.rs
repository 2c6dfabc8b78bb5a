//! The error type of this crate: every variant says what went wrong and where
//! (the target, the partition, the byte offset or LBA, the tool).

use std::io;
use std::path::PathBuf;

/// Everything that can stop [`crate::fit_table`], [`crate::write_record`] or
/// [`crate::read_record`]. Each refusal happens before anything is written
/// unless its text says otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetargetError {
    /// An I/O error on the target (or a file we made) while doing `action`.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("open", "read the GPT header of", ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A disk-level refusal from imgcast-disk (in use, not a disk, ...).
    #[error(transparent)]
    Disk(#[from] imgcast_disk::DiskError),
    /// The target does not exist (we never create one here).
    #[error("target {path} does not exist")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// A regular file backs an attached loop device, or a device is mounted.
    #[error("target {path} is in use: {by}")]
    InUse {
        /// The target.
        path: PathBuf,
        /// Who uses it.
        by: String,
    },
    /// The target still carries imgcast's "restore incomplete" marker.
    #[error(
        "target {path} is marked incomplete by an unfinished restore; finish the restore first"
    )]
    Incomplete {
        /// The target.
        path: PathBuf,
    },
    /// The GPT on the target is damaged or cannot be handled safely.
    #[error("GPT on {path}: {reason}")]
    BadGpt {
        /// The target.
        path: PathBuf,
        /// What is wrong, with the field and value.
        reason: String,
    },
    /// The MBR (or an extended boot record) on the target is damaged or
    /// cannot be handled safely.
    #[error("MBR on {path}: {reason}")]
    BadMbr {
        /// The target.
        path: PathBuf,
        /// What is wrong, with the sector and value.
        reason: String,
    },
    /// A partition ends beyond what the target can hold: the target is too
    /// small for the table. Nothing was written.
    #[error(
        "partition {number} of {path} ends at LBA {end_lba} (byte {end_byte}), \
         beyond the last usable LBA {last_usable_lba} of this {disk_bytes}-byte target; \
         it needs at least {needed_bytes} bytes; nothing was written"
    )]
    PartitionDoesNotFit {
        /// The target.
        path: PathBuf,
        /// The partition's number in its table.
        number: u32,
        /// Its last LBA.
        end_lba: u64,
        /// The byte just past its end.
        end_byte: u64,
        /// The last LBA the target can give a partition.
        last_usable_lba: u64,
        /// The target's size.
        disk_bytes: u64,
        /// The smallest target that holds every partition (and, for GPT,
        /// the backup table).
        needed_bytes: u64,
    },
    /// The table changed between reading it and writing it (someone else
    /// writes to the target). Nothing was written.
    #[error("the partition table of {path} changed while we worked on it; nothing was written")]
    TableChanged {
        /// The target.
        path: PathBuf,
    },
    /// An external tool could not be started.
    #[error("cannot run {tool}: {source} (is it installed?)")]
    ToolMissing {
        /// The program name.
        tool: &'static str,
        /// The spawn error.
        #[source]
        source: io::Error,
    },
    /// An external tool failed.
    #[error("{tool} on {on} failed ({status}): {output}")]
    ToolFailed {
        /// The program name.
        tool: &'static str,
        /// The device or file it ran on.
        on: PathBuf,
        /// Its exit status.
        status: String,
        /// The end of what it printed.
        output: String,
    },
    /// The disk has no partition table, so there is no gap to hold the
    /// image-safe record.
    #[error("{path} has no partition table: no gap to hold the image-safe record")]
    NoTable {
        /// The target.
        path: PathBuf,
        /// What sector 0 holds instead.
        found: String,
    },
    /// The gap between the partition table and the first partition is too
    /// small for the record.
    #[error(
        "no room for the image-safe record on {path}: the gap between the partition table \
         (ends at byte {gap_start}) and the first partition (starts at byte {gap_end}) \
         is smaller than {needed} bytes"
    )]
    NoGap {
        /// The target.
        path: PathBuf,
        /// First byte after the table.
        gap_start: u64,
        /// First byte of the first partition.
        gap_end: u64,
        /// The record's size.
        needed: u64,
    },
    /// The record's place holds bytes that are neither zero nor a record:
    /// perhaps a boot loader. Nothing was written.
    #[error(
        "the image-safe record's place on {path} (bytes {offset}..{end}) holds other data \
         (first non-zero byte at {first_nonzero}): perhaps a boot loader; nothing was written"
    )]
    PlaceNotFree {
        /// The target.
        path: PathBuf,
        /// First byte of the place.
        offset: u64,
        /// Byte just past the place.
        end: u64,
        /// Where the first foreign byte is.
        first_nonzero: u64,
    },
    /// The record's place lies beyond the end of the target (a truncated
    /// file or device).
    #[error(
        "{path} is {disk_bytes} bytes, too short to hold its own table's layout \
         (the record's place ends at byte {end})"
    )]
    Truncated {
        /// The target.
        path: PathBuf,
        /// Its size.
        disk_bytes: u64,
        /// Where the place ends.
        end: u64,
    },
    /// A record field is too long to encode.
    #[error("image-safe record field {field} is {len} bytes; at most {max} fit")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The place holds a record that fails its checks.
    #[error("image-safe record on {path} at byte {offset} is damaged: {reason}")]
    RecordDamaged {
        /// The target.
        path: PathBuf,
        /// Where the record starts.
        offset: u64,
        /// What failed.
        reason: crate::record::RecordError,
    },
    /// What we wrote did not read back.
    #[error("{path}: verification after writing failed: {reason}")]
    Verify {
        /// The target.
        path: PathBuf,
        /// What differed.
        reason: String,
    },
}

impl RetargetError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn gpt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::BadGpt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn mbr(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::BadMbr {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
