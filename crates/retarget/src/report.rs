//! What [`crate::fit_table`] did, step by step: one [`FitAction`] per change
//! (or per deliberate non-change), printable line by line and serialisable
//! for `--json`.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// The kind of partition table found on a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// GUID partition table (with its protective MBR).
    Gpt,
    /// DOS/MBR partition table, possibly with logical partitions.
    Mbr,
    /// No partition table.
    None,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gpt => "GPT",
            Self::Mbr => "MBR",
            Self::None => "no partition table",
        })
    }
}

/// One thing [`crate::fit_table`] did or chose not to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FitAction {
    /// Nothing needed doing.
    Nothing {
        /// Why not.
        reason: String,
    },
    /// The backup GPT header and entry array moved to the target's end.
    MovedBackupGpt {
        /// Old backup header LBA.
        from_lba: u64,
        /// New backup header LBA (the last sector).
        to_lba: u64,
        /// Old last usable LBA.
        last_usable_from: u64,
        /// New last usable LBA.
        last_usable_to: u64,
    },
    /// The backup GPT was already in place but damaged or out of step with
    /// the primary, and was written again from the primary.
    RewroteBackupGpt {
        /// Its LBA.
        lba: u64,
        /// What was wrong with it.
        reason: String,
    },
    /// The stale backup GPT header left where the source disk ended was
    /// zeroed, so no tool mistakes it for the disk's table.
    ClearedStaleBackupGpt {
        /// Its LBA.
        lba: u64,
    },
    /// The protective MBR's 0xEE entry now covers the new size.
    FixedProtectiveMbr {
        /// Old sector count.
        from_sectors: u32,
        /// New sector count.
        to_sectors: u32,
    },
    /// The protective MBR was not changed.
    ProtectiveMbrLeft {
        /// Why.
        reason: String,
    },
    /// An MBR extended partition reached past the end of a smaller target
    /// and now ends at the target's end (every logical partition fits).
    ShrankExtended {
        /// Its number (1-4).
        number: u32,
        /// Old size in bytes.
        from_bytes: u64,
        /// New size in bytes.
        to_bytes: u64,
    },
    /// An MBR extended partition grew with its last logical partition.
    GrewExtended {
        /// Its number (1-4).
        number: u32,
        /// Old size in bytes.
        from_bytes: u64,
        /// New size in bytes.
        to_bytes: u64,
    },
    /// A partition grew to fill the new space.
    GrewPartition {
        /// Its number in the table.
        number: u32,
        /// First LBA (unchanged).
        start_lba: u64,
        /// Old last LBA.
        from_end_lba: u64,
        /// New last LBA.
        to_end_lba: u64,
        /// Old size in bytes.
        from_bytes: u64,
        /// New size in bytes.
        to_bytes: u64,
    },
    /// Growing was asked for, but the last partition already fills the
    /// target (or there is none): nothing to grow into.
    GrowNotNeeded {
        /// Why.
        reason: String,
    },
    /// Growing was asked for but refused.
    GrowSkipped {
        /// Why.
        reason: String,
    },
    /// A filesystem check ran before resizing.
    CheckedFilesystem {
        /// Partition number.
        number: u32,
        /// Filesystem type.
        fs: String,
        /// The command line run.
        command: String,
        /// What it found ("clean", or what it corrected).
        result: String,
    },
    /// A filesystem was enlarged to fill its grown partition.
    ResizedFilesystem {
        /// Partition number.
        number: u32,
        /// Filesystem type.
        fs: String,
        /// The device it ran on (partition node or our loop device).
        device: PathBuf,
        /// Size before, in bytes.
        from_bytes: u64,
        /// Size after, in bytes.
        to_bytes: u64,
        /// Size after in the filesystem's own unit, e.g. "262144 blocks of 4096 bytes".
        detail: String,
    },
    /// The partition grew but its filesystem kept its size.
    FilesystemLeft {
        /// Partition number.
        number: u32,
        /// Filesystem type, when known.
        fs: Option<String>,
        /// Why.
        reason: String,
    },
    /// Enlarging the filesystem failed after its partition grew: the table
    /// is valid and the filesystem keeps its old size.
    ResizeFailed {
        /// Partition number.
        number: u32,
        /// Filesystem type.
        fs: String,
        /// What failed.
        error: String,
    },
    /// The kernel's idea of the partitions was brought up to date.
    KernelUpdated {
        /// The command that did it.
        command: String,
    },
}

impl FitAction {
    /// Whether this line reports something asked for that was refused or
    /// failed (the CLI may exit non-zero on these).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::GrowSkipped { .. } | Self::ResizeFailed { .. })
            || matches!(self, Self::FilesystemLeft { fs: Some(f), .. } if f.starts_with("ext") || f == "ntfs")
    }
}

impl fmt::Display for FitAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nothing { reason } => write!(f, "nothing to do: {reason}"),
            Self::MovedBackupGpt {
                from_lba,
                to_lba,
                last_usable_from,
                last_usable_to,
            } => write!(
                f,
                "moved backup GPT from LBA {from_lba} to LBA {to_lba} \
                 (last usable LBA {last_usable_from} -> {last_usable_to})"
            ),
            Self::RewroteBackupGpt { lba, reason } => {
                write!(f, "rewrote backup GPT at LBA {lba}: {reason}")
            }
            Self::ClearedStaleBackupGpt { lba } => {
                write!(f, "cleared stale backup GPT header at LBA {lba}")
            }
            Self::FixedProtectiveMbr {
                from_sectors,
                to_sectors,
            } => write!(
                f,
                "protective MBR now covers {to_sectors} sectors (was {from_sectors})"
            ),
            Self::ProtectiveMbrLeft { reason } => write!(f, "protective MBR left as is: {reason}"),
            Self::ShrankExtended {
                number,
                from_bytes,
                to_bytes,
            } => write!(
                f,
                "shrank extended partition {number} from {from_bytes} to {to_bytes} bytes \
                 to end at the target's end"
            ),
            Self::GrewExtended {
                number,
                from_bytes,
                to_bytes,
            } => write!(
                f,
                "grew extended partition {number} from {from_bytes} to {to_bytes} bytes"
            ),
            Self::GrewPartition {
                number,
                start_lba,
                from_end_lba,
                to_end_lba,
                from_bytes,
                to_bytes,
            } => write!(
                f,
                "grew partition {number} from {from_bytes} to {to_bytes} bytes \
                 (LBA {start_lba}..{from_end_lba} -> {start_lba}..{to_end_lba})"
            ),
            Self::GrowNotNeeded { reason } => write!(f, "nothing to grow: {reason}"),
            Self::GrowSkipped { reason } => write!(f, "did not grow: {reason}"),
            Self::CheckedFilesystem {
                number,
                fs,
                command,
                result,
            } => write!(
                f,
                "checked {fs} on partition {number} ({command}): {result}"
            ),
            Self::ResizedFilesystem {
                number,
                fs,
                device,
                from_bytes,
                to_bytes,
                detail,
            } => write!(
                f,
                "resized {fs} on partition {number} from {from_bytes} to {to_bytes} bytes \
                 ({detail}) via {}",
                device.display()
            ),
            Self::FilesystemLeft { number, fs, reason } => write!(
                f,
                "filesystem on partition {number} ({}) keeps its size: {reason}",
                fs.as_deref().unwrap_or("unknown type")
            ),
            Self::ResizeFailed { number, fs, error } => write!(
                f,
                "could not enlarge {fs} on partition {number} (it keeps its size; \
                 the partition table is valid): {error}"
            ),
            Self::KernelUpdated { command } => {
                write!(
                    f,
                    "told the kernel about the new partition sizes ({command})"
                )
            }
        }
    }
}

/// Everything [`crate::fit_table`] did to one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FitReport {
    /// The target.
    pub target: PathBuf,
    /// Its size in bytes.
    pub disk_bytes: u64,
    /// The table found.
    pub table: TableKind,
    /// The logical sector size the table uses (0 without a table).
    pub sector_size: u64,
    /// What was done, in order.
    pub actions: Vec<FitAction>,
}

impl FitReport {
    /// One line per action, as the CLI prints them.
    pub fn lines(&self) -> Vec<String> {
        self.actions.iter().map(ToString::to_string).collect()
    }

    /// Whether something that was asked for was refused or failed
    /// (growing, or enlarging an ext or NTFS filesystem).
    pub fn has_refusals(&self) -> bool {
        self.actions.iter().any(FitAction::is_refusal)
    }

    /// Whether the disk was left untouched.
    pub fn did_nothing(&self) -> bool {
        self.actions.iter().all(|a| {
            matches!(
                a,
                FitAction::Nothing { .. } | FitAction::GrowNotNeeded { .. }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_json_say_what_was_done() {
        let r = FitReport {
            target: "/dev/sdb".into(),
            disk_bytes: 1 << 30,
            table: TableKind::Gpt,
            sector_size: 512,
            actions: vec![
                FitAction::MovedBackupGpt {
                    from_lba: 100,
                    to_lba: 2_097_151,
                    last_usable_from: 66,
                    last_usable_to: 2_097_118,
                },
                FitAction::GrowSkipped {
                    reason: "no room".into(),
                },
            ],
        };
        assert_eq!(
            r.lines()[0],
            "moved backup GPT from LBA 100 to LBA 2097151 (last usable LBA 66 -> 2097118)"
        );
        assert!(r.has_refusals());
        assert!(!r.did_nothing());
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["table"], "gpt");
        assert_eq!(j["actions"][0]["action"], "moved_backup_gpt");
        assert_eq!(j["actions"][0]["to_lba"], 2_097_151);
    }
}
