//! Which partition table a target holds, read through gptman or mbrman and
//! checked, plus the shapes shared by the GPT and MBR code.

use crate::gpt::{self, GptDisk};
use crate::mbr::MbrDisk;
use crate::report::{FitAction, TableKind};
use crate::target::Target;
use crate::RetargetError;

/// A used partition: number in its table and inclusive LBA range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) number: u32,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// Writes to make together, then fsync: `(byte offset, bytes)`.
pub(crate) type Stage = Vec<(u64, Vec<u8>)>;

/// What fitting a table will do: the report lines and the writes, in
/// stages that are synced one after the other so that a crash between two
/// leaves a table that still describes the disk.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) actions: Vec<FitAction>,
    pub(crate) stages: Vec<Stage>,
}

impl Plan {
    pub(crate) fn nothing(reason: String) -> Self {
        Self {
            actions: vec![FitAction::Nothing { reason }],
            stages: Vec::new(),
        }
    }
}

/// The table on a target.
#[derive(Debug)]
pub(crate) enum Table {
    Gpt(GptDisk),
    Mbr(Box<MbrDisk>),
    /// No table; says what sector 0 holds instead.
    None(String),
}

impl Table {
    /// Reads the table of `t`. A GPT signature at LBA 1 means GPT (the
    /// protective MBR is then only checked); otherwise sector 0 decides.
    pub(crate) fn read(t: &Target) -> Result<Self, RetargetError> {
        if t.size >= 512
            && t.read_at(0, imgcast_image::INCOMPLETE_MAGIC.len())?
                == imgcast_image::INCOMPLETE_MAGIC
        {
            return Err(RetargetError::Incomplete {
                path: t.path.clone(),
            });
        }
        if let Some(ss) = gpt::probe(t)? {
            return Ok(Self::Gpt(GptDisk::read(t, ss)?));
        }
        MbrDisk::probe(t)
    }

    pub(crate) fn kind(&self) -> TableKind {
        match self {
            Self::Gpt(_) => TableKind::Gpt,
            Self::Mbr(_) => TableKind::Mbr,
            Self::None(_) => TableKind::None,
        }
    }

    pub(crate) fn sector_size(&self) -> u64 {
        match self {
            Self::Gpt(g) => g.ss,
            Self::Mbr(m) => m.ss,
            Self::None(_) => 0,
        }
    }

    /// The used partitions (for MBR: primary data partitions, the extended
    /// container, and logical partitions).
    pub(crate) fn partitions(&self) -> Vec<Part> {
        match self {
            Self::Gpt(g) => g.partitions(),
            Self::Mbr(m) => m.partitions(),
            Self::None(_) => Vec::new(),
        }
    }

    /// `(first byte after the table, first byte of the first partition)`:
    /// the gap that standard alignment leaves empty.
    pub(crate) fn gap(&self) -> Option<(u64, u64)> {
        let first = self.partitions().iter().map(|p| p.start).min()?;
        let ss = self.sector_size();
        let table_end = match self {
            Self::Gpt(g) => g.table_end(),
            Self::Mbr(m) => m.ss,
            Self::None(_) => return None,
        };
        Some((table_end, first.saturating_mul(ss)))
    }
}

/// The last LBA (inclusive) a partition starting at `start` may end at when
/// it must end before `limit` (exclusive): the end is aligned to the
/// largest power of two that divides the start, up to 1 MiB, so a
/// 1 MiB-aligned partition ends on a 1 MiB boundary.
pub(crate) fn aligned_end(start: u64, limit: u64, ss: u64) -> Option<u64> {
    let max_align = ((1u64 << 20) / ss).max(1);
    let mut align = 1u64;
    while align < max_align && start % (align * 2) == 0 {
        align *= 2;
    }
    let end_excl = limit / align * align;
    end_excl.checked_sub(1).filter(|&e| e >= start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_align_like_their_starts() {
        // 1 MiB-aligned start on 512-byte sectors: end on a 1 MiB boundary.
        assert_eq!(aligned_end(2048, 2_097_119, 512), Some(2_095_103));
        assert_eq!((2_095_103 + 1) % 2048, 0);
        // Sector 63 (odd): no alignment to keep, fill up to the limit.
        assert_eq!(aligned_end(63, 1000, 512), Some(999));
        // 4 KiB sectors: 1 MiB is 256 sectors.
        assert_eq!(aligned_end(256, 10_000, 4096), Some(9983));
        // 4 KiB-aligned start on 512-byte sectors.
        assert_eq!(aligned_end(8, 1003, 512), Some(999));
        // No room at all.
        assert_eq!(aligned_end(4096, 4096, 512), None);
        assert_eq!(aligned_end(2048, 0, 512), None);
    }
}
