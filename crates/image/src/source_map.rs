//! Which bytes of a source disk an image holds: its partition table and every used block of every
//! filesystem it understands ([`imgcast_fsmap`]), or — raw — all of them. The one place that turns
//! a disk's layout into what the encoder needs, for `img make`, the multicast master and captures
//! to the imaging server alike.

use std::path::Path;
use std::sync::Arc;

use imgcast_disk::Extents;
use imgcast_fsmap::{AnalyzeOptions, DiskLayout, TableKind};

use crate::{ImageError, MAX_LAYOUT_LEN};

/// How a source is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapMode {
    /// Every byte, as the disk is (`-raw`): byte-exact, free space included.
    Raw,
    /// The partition table and the used blocks of the filesystems it understands; partitions it
    /// does not understand whole.
    Filesystems {
        /// Read filesystems that are dirty or mounted read-write anyway (`-force`).
        force: bool,
    },
}

/// What the encoder takes from a source's layout.
#[derive(Clone, Debug)]
pub struct SourceMap {
    /// Bytes the image holds; `None` for raw (all of them).
    pub used: Option<Arc<Extents>>,
    /// The layout as JSON, stored in the image for `img info` (`None` for raw).
    pub layout: Option<Vec<u8>>,
    /// The smallest disk the image may be restored onto: every partition and every used byte fit,
    /// with room for the GPT's backup at the new end. `None` for raw (the disk's own size).
    pub min_target_size: Option<u64>,
    /// The layout itself (`None` for raw).
    pub disk: Option<DiskLayout>,
}

impl SourceMap {
    /// Lines for the user: the partitions, what is kept of each, and the notes.
    pub fn lines(&self) -> Vec<String> {
        match &self.disk {
            None => vec!["raw: every byte of the disk, free space included".into()],
            Some(d) => d.table_lines(),
        }
    }
}

/// Reads `path`'s layout as `mode` says.
pub fn map_source(path: &Path, mode: MapMode) -> Result<SourceMap, ImageError> {
    let MapMode::Filesystems { force } = mode else {
        return Ok(SourceMap {
            used: None,
            layout: None,
            min_target_size: None,
            disk: None,
        });
    };
    let disk = imgcast_fsmap::analyze(path, &AnalyzeOptions::default().force(force))?;
    let mut layout = serde_json::to_vec(&disk).map_err(|e| ImageError::InvalidGeometry {
        reason: format!("the layout of {} does not serialise: {e}", path.display()),
    })?;
    if layout.len() > MAX_LAYOUT_LEN as usize {
        // A layout this large (thousands of extents listed) is kept without its used map:
        // `img info` needs the partitions, and the image's chunks carry the map anyway.
        let mut slim = disk.clone();
        slim.used = Extents::new();
        layout = serde_json::to_vec(&slim).unwrap_or_default();
    }
    let min_target_size = smallest_target(&disk);
    Ok(SourceMap {
        used: Some(Arc::new(disk.used.clone())),
        layout: Some(layout),
        min_target_size: Some(min_target_size),
        disk: Some(disk),
    })
}

/// The smallest target a layout fits on: past the last used byte that is not the GPT's backup
/// (which a restore rewrites at the new end), past the end of every partition (shrinking a
/// filesystem is not safe, so a partition must fit whole), plus room for the backup GPT; a bare
/// filesystem needs all of its size.
fn smallest_target(d: &DiskLayout) -> u64 {
    let (used_end, backup) = match d.gpt_backup {
        Some(b) => (
            d.used.within(0, b.start).last().map_or(0, |r| r.end),
            b.end - b.start,
        ),
        None => (d.used.end(), 0),
    };
    let parts = d
        .partitions
        .iter()
        .map(|p| p.start.saturating_add(p.size))
        .max()
        .unwrap_or(0);
    let whole = d.whole.as_ref().map_or(0, |f| f.total_bytes);
    let sector = match &d.table {
        TableKind::Gpt { sector_size, .. } | TableKind::Mbr { sector_size, .. } => {
            u64::from(*sector_size)
        }
        TableKind::None => 512,
    };
    let need = used_end.max(parts.saturating_add(backup)).max(whole);
    need.div_ceil(sector).saturating_mul(sector).min(d.size)
}
