//! What happens to a disk after an image's bytes are on it: the partition
//! table is fitted to the target's size (the GPT backup moves to the new
//! end, the protective MBR follows), the last partition and its ext2/3/4 or
//! NTFS filesystem may grow into the new space, and the image-safe record
//! says which image the disk received.
//!
//! ```text
//!   img restore / multicast client ──▶ image::restore (bytes on the target)
//!                                              │
//!                                              ▼
//!   retarget (this crate): fit_table ── gptman / mbrman ──▶ table at the new size
//!                             │ grow ──▶ losetup -o, e2fsck -fn + resize2fs, ntfsresize
//!                          write_record ──▶ gap before the first partition
//!                                              ▲
//!   img info zisd ─────────── read_record ─────┘
//! ```
//!
//! Nothing here writes outside the table's own sectors, the grown
//! partition (through the filesystem's own tool) and the record's place;
//! every refusal comes before the first write. Partition tables are parsed
//! by gptman and mbrman, after the fields they trust blindly have been
//! checked, so hostile tables get errors, not panics or huge allocations.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod after;
mod error;
mod fit;
mod fs;
mod gpt;
mod mbr;
mod place;
pub mod record;
mod report;
mod table;
mod target;

pub use after::{after_restore, AfterReport, AfterRestore};
pub use error::RetargetError;
pub use fit::{fit_table, FitOptions};
pub use place::{read_record, write_record, RecordPlace};
pub use record::{ImageSafeRecord, RecordError, RECORD_LEN, RECORD_MAGIC};
pub use report::{FitAction, FitReport, TableKind};
