//! The used map of one filesystem (or whatever a region holds).
//!
//! Each mapper returns region-relative extents; a [`Fault::Bad`] from one of
//! them means "this does not hold together" and the region is imaged whole
//! with the reason as its note. Only real I/O errors propagate.

mod bits;
pub(crate) mod ext;
pub(crate) mod fat;
mod ntfs;
mod partclone;
mod probe;

use imgcast_disk::Extents;

use crate::io::{Fault, Region};
use crate::layout::{FsKind, MapMethod};
use crate::{AnalyzeOptions, FsmapError};

/// What a mapper found in a region.
#[derive(Debug, Clone)]
pub(crate) struct Mapped {
    pub(crate) kind: FsKind,
    pub(crate) label: Option<String>,
    pub(crate) uuid: Option<String>,
    pub(crate) block_size: u32,
    pub(crate) total_bytes: u64,
    /// Used bytes, relative to the region.
    pub(crate) used: Extents,
    pub(crate) method: MapMethod,
    /// Why it must not be imaged as it is, when it is marked dirty.
    pub(crate) dirty: Option<String>,
    pub(crate) notes: Vec<String>,
}

impl Mapped {
    /// The whole region, for `reason`.
    pub(crate) fn whole(kind: FsKind, region: &Region, reason: &str) -> Self {
        Self {
            kind,
            label: None,
            uuid: None,
            block_size: 512,
            total_bytes: region.len,
            used: Extents::full(region.len),
            method: MapMethod::Whole,
            dirty: None,
            notes: vec![format!("imaged whole: {reason}")],
        }
    }
}

/// Runs a mapper; a structure that does not hold together becomes "whole".
fn or_whole(kind: FsKind, region: &Region, r: Result<Mapped, Fault>) -> Result<Mapped, FsmapError> {
    match r {
        Ok(m) => Ok(m),
        Err(Fault::Io(e)) => Err(e),
        Err(Fault::Bad(why)) => Ok(Mapped::whole(kind, region, &why)),
    }
}

/// Identifies and maps what `region` holds.
pub(crate) fn map(region: &Region, opts: &AnalyzeOptions) -> Result<Mapped, FsmapError> {
    if region.len == 0 {
        return Ok(Mapped::whole(
            FsKind::Unknown,
            region,
            "the partition is empty",
        ));
    }
    if let Some(sb) = ext::read_super(region)? {
        let kind = ext::kind_of(&sb);
        return or_whole(kind, region, ext::map(region, &sb));
    }
    let s0 = region.peek(0, 512)?;
    if let Some(s0) = &s0 {
        if &s0[3..11] == b"NTFS    " {
            return or_whole(FsKind::Ntfs, region, ntfs::map(region));
        }
        if fat::looks_like_bpb(s0) {
            let kind =
                fat::parse_bpb(s0, u64::MAX).map_or(FsKind::Other("vfat".into()), |b| b.kind);
            return or_whole(kind, region, fat::map(region, s0));
        }
    }
    if let Some(h) = probe::swap(region)? {
        if h.hibernation {
            return Ok(Mapped::whole(
                FsKind::Other("swsuspend".into()),
                region,
                "swap holding a hibernation image",
            ));
        }
        let page = u64::from(h.page_size);
        return Ok(Mapped {
            kind: FsKind::Swap,
            label: h.label,
            uuid: h.uuid,
            block_size: h.page_size,
            total_bytes: region.len,
            used: Extents::full(page.min(region.len)),
            method: MapMethod::HeaderOnly,
            dirty: None,
            notes: Vec::new(),
        });
    }
    let Some(found) = probe::other(region)? else {
        return Ok(Mapped::whole(
            FsKind::Unknown,
            region,
            "no filesystem recognised",
        ));
    };
    let kind = FsKind::Other(found.name.clone());
    let reason = match (found.partclone, found.whole_because) {
        (Some(tool), _) if opts.use_partclone => match partclone::domain_map(tool, region) {
            Ok(used) => {
                return Ok(Mapped {
                    kind,
                    label: found.label,
                    uuid: found.uuid,
                    block_size: found.block_size,
                    total_bytes: region.len,
                    used,
                    method: MapMethod::Partclone,
                    dirty: None,
                    notes: Vec::new(),
                })
            }
            Err(why) => why,
        },
        (Some(tool), _) => format!("partclone.{tool} not used (use_partclone is off)"),
        (None, Some(why)) => why.to_string(),
        (None, None) => format!("no map for {}", found.name),
    };
    Ok(Mapped {
        label: found.label,
        uuid: found.uuid,
        block_size: found.block_size,
        ..Mapped::whole(kind, region, &reason)
    })
}
