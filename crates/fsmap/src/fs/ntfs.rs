//! NTFS through the `ntfs` crate: the boot sector gives the cluster size,
//! `$Volume` the dirty flag and label, `$Bitmap` (file record 6) one bit per
//! cluster.
//!
//! Used: every cluster `$Bitmap` marks, plus everything past the last whole
//! cluster to the end of the partition — the boot sector's sector count
//! stops one sector short of the partition, and that last sector holds the
//! backup boot sector.

use imgcast_disk::Extents;
use ntfs::structured_values::NtfsVolumeFlags;
use ntfs::{KnownNtfsFileRecordNumber, Ntfs, NtfsError, NtfsReadSeek};

use super::bits::for_each_run;
use super::Mapped;
use crate::io::{ensure, Fault, Region, RegionReader};
use crate::layout::{FsKind, MapMethod};

/// Bytes of `$Bitmap` read at a time.
const CHUNK: usize = 1 << 20;

/// An `ntfs` error, or the real I/O error behind it.
fn fault(r: &RegionReader, what: &str, e: NtfsError) -> Fault {
    match r.take_io_error() {
        Some(io) => Fault::Io(io),
        None => Fault::bad(format!("{what}: {e}")),
    }
}

/// Maps the NTFS filesystem of `region`.
pub(crate) fn map(region: &Region) -> Result<Mapped, Fault> {
    let mut r = region.reader();
    let ntfs = Ntfs::new(&mut r).map_err(|e| fault(&r, "boot sector", e))?;
    let size = ntfs.size();
    ensure(size <= region.len, || {
        format!(
            "{size} bytes of filesystem do not fit the partition ({} bytes)",
            region.len
        )
    })?;
    let cs = u64::from(ntfs.cluster_size());
    let clusters = size / cs;

    let info = ntfs
        .volume_info(&mut r)
        .map_err(|e| fault(&r, "$Volume", e))?;
    let dirty = info
        .flags()
        .contains(NtfsVolumeFlags::IS_DIRTY)
        .then(|| "marked dirty ($Volume dirty flag): Windows would run chkdsk".to_string());
    let label = match ntfs.volume_name(&mut r) {
        Some(Ok(n)) => Some(n.name().to_string_lossy()).filter(|s| !s.is_empty()),
        Some(Err(e)) => return Err(fault(&r, "volume name", e)),
        None => None,
    };

    let file = ntfs
        .file(&mut r, KnownNtfsFileRecordNumber::Bitmap as u64)
        .map_err(|e| fault(&r, "$Bitmap", e))?;
    let item = file
        .data(&mut r, "")
        .ok_or_else(|| Fault::bad("$Bitmap has no data"))?
        .map_err(|e| fault(&r, "$Bitmap data", e))?;
    let attr = item
        .to_attribute()
        .map_err(|e| fault(&r, "$Bitmap data", e))?;
    let mut value = attr
        .value(&mut r)
        .map_err(|e| fault(&r, "$Bitmap data", e))?;
    let need = clusters.div_ceil(8);
    ensure(value.len() >= need, || {
        format!(
            "$Bitmap holds {} bytes, {clusters} clusters need {need}",
            value.len()
        )
    })?;

    let mut blocks: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64; // bitmap bytes read
    while done < need {
        let n = (need - done).min(CHUNK as u64) as usize;
        value
            .read_exact(&mut r, &mut buf[..n])
            .map_err(|e| fault(&r, "$Bitmap data", e))?;
        let base = done * 8;
        let bits = (clusters - base).min(n as u64 * 8);
        for_each_run(&buf[..n], bits, |i, len| blocks.push((base + i, len)));
        done += n as u64;
    }

    let mut used = Extents::new();
    used.insert(0, 8192.min(region.len)); // $Boot, even if $Bitmap forgot it
    for (c, n) in blocks {
        used.insert(c * cs, n * cs);
    }
    let tail = clusters * cs;
    used.insert(tail, region.len - tail);
    Ok(Mapped {
        kind: FsKind::Ntfs,
        label,
        uuid: Some(format!("{:016X}", ntfs.serial_number())),
        block_size: cs as u32,
        total_bytes: size,
        used,
        method: MapMethod::Bitmap,
        dirty,
        notes: Vec::new(),
    })
}
