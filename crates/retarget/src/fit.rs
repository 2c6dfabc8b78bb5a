//! [`fit_table`]: read the table a restore left, refuse what does not fit,
//! check the filesystem that will grow, write the table in crash-safe
//! stages, verify it, then enlarge the filesystem.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use imgcast_disk::DiskKind;

use crate::fs::{self, FsKind, LoopDev};
use crate::mbr::MbrGrow;
use crate::report::{FitAction, FitReport};
use crate::table::{aligned_end, Part, Plan, Table};
use crate::target::Target;
use crate::RetargetError;

/// What [`fit_table`] may do beyond fitting the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FitOptions {
    /// Grow the last partition into the new space and enlarge its ext2/3/4
    /// or NTFS filesystem.
    pub grow: bool,
}

impl FitOptions {
    /// Fit the table only (the safe default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Also grow the last partition and its filesystem.
    pub fn grow(mut self, yes: bool) -> Self {
        self.grow = yes;
        self
    }
}

/// A partition that will grow.
#[derive(Clone, Copy, Debug)]
struct Grow {
    part: Part,
    new_end: u64,
    mbr: Option<MbrGrow>,
}

/// Fits the partition table on `target` (a file or block device that holds
/// restored bytes) to the target's size, and with [`FitOptions::grow`]
/// grows the last partition and its filesystem.
///
/// GPT: the backup header and entry array move to the target's last
/// sectors, the last usable LBA and both CRCs follow, and the protective
/// MBR's 0xEE entry covers the disk. On a smaller target this happens only
/// when every partition ends at or before the new last usable LBA;
/// otherwise [`RetargetError::PartitionDoesNotFit`] names the partition
/// and nothing is written. MBR: nothing to move; a partition past the end
/// is refused the same way.
///
/// The target must not be in use; block devices are held `O_EXCL` while
/// the table is written. Everything written is fsynced.
pub fn fit_table(target: &Path, opts: &FitOptions) -> Result<FitReport, RetargetError> {
    let t = Target::open_write(target)?;
    let table = Table::read(&t)?;
    let mut report = FitReport {
        target: target.to_path_buf(),
        disk_bytes: t.size,
        table: table.kind(),
        sector_size: table.sector_size(),
        actions: Vec::new(),
    };
    if let Table::None(found) = &table {
        report.actions.push(FitAction::Nothing {
            reason: format!("no partition table ({found})"),
        });
        return Ok(report);
    }
    // Refusals (a partition past the end) come before anything runs on
    // the disk, e2fsck included.
    let base = plan(&table, &t, None)?;
    let ss = table.sector_size();

    let mut grow = None;
    if opts.grow {
        match grow_candidate(&table, &t) {
            Err(line) => report.actions.push(line),
            Ok(g) => {
                let (off, len) = extent(&g.part, ss);
                let kind = fs::detect(&t.path, off, len);
                if matches!(kind, FsKind::Ext(_) | FsKind::Ntfs) {
                    let lo = LoopDev::attach(&t.path, off, len)?;
                    match fs::check(&kind, &lo.dev)? {
                        Ok(c) => {
                            report.actions.push(FitAction::CheckedFilesystem {
                                number: g.part.number,
                                fs: kind.name().unwrap_or_default(),
                                command: c.command,
                                result: c.result,
                            });
                            grow = Some((g, kind));
                        }
                        Err(reason) => report.actions.push(FitAction::GrowSkipped {
                            reason: format!("partition {} not grown: {reason}", g.part.number),
                        }),
                    }
                } else {
                    grow = Some((g, kind));
                }
            }
        }
    }

    let chosen = match &grow {
        Some((g, _)) => plan(&table, &t, Some(*g))?,
        None => base,
    };
    apply(&t, &chosen)?;
    verify(&t, &table, &chosen, grow.as_ref().map(|(g, _)| *g))?;
    report.actions.extend(chosen.actions);

    if let Some((g, kind)) = grow {
        let devnum = t.devnum;
        let kind_of_target = t.kind;
        // Release O_EXCL: the kernel refuses to open a partition node of a
        // disk someone holds exclusively.
        drop(t);
        // The table is written and valid: a failing resize is reported as a
        // line, not an error, so the caller still learns what was done.
        if let Err(e) = resize(target, kind_of_target, devnum, &g, &kind, ss, &mut report) {
            report.actions.push(FitAction::ResizeFailed {
                number: g.part.number,
                fs: kind.name().unwrap_or_default(),
                error: e.to_string(),
            });
        }
        sync_path(target)?;
    }
    Ok(report)
}

fn extent(p: &Part, ss: u64) -> (u64, u64) {
    (p.start * ss, (p.end - p.start + 1) * ss)
}

fn plan(table: &Table, t: &Target, grow: Option<Grow>) -> Result<Plan, RetargetError> {
    match table {
        Table::Gpt(g) => g.plan(t, grow.map(|g| (g.part.number, g.new_end))),
        Table::Mbr(m) => m.plan(t, grow.and_then(|g| g.mbr)),
        Table::None(found) => Ok(Plan::nothing(format!("no partition table ({found})"))),
    }
}

/// The partition that would grow, and to where; otherwise the line that
/// says why none does.
fn grow_candidate(table: &Table, t: &Target) -> Result<Grow, FitAction> {
    let ss = table.sector_size();
    let disk_sectors = t.size / ss;
    let not_needed = |reason: String| FitAction::GrowNotNeeded { reason };
    match table {
        Table::Gpt(g) => {
            let last = g
                .partitions()
                .into_iter()
                .max_by_key(|p| p.end)
                .ok_or_else(|| not_needed("the GPT has no partitions".into()))?;
            let (_, last_usable) =
                g.layout_for(disk_sectors)
                    .ok_or_else(|| FitAction::GrowSkipped {
                        reason: "the target cannot hold the GPT".into(),
                    })?;
            match aligned_end(last.start, last_usable + 1, ss) {
                Some(e) if e > last.end => Ok(Grow {
                    part: last,
                    new_end: e,
                    mbr: None,
                }),
                _ => Err(not_needed(format!(
                    "partition {} (LBA {}..{}) already reaches the last usable LBA {last_usable} \
                     (as far as its alignment allows)",
                    last.number, last.start, last.end
                ))),
            }
        }
        Table::Mbr(m) => {
            let mg = m.grow_target(disk_sectors)?;
            let (number, end) = match mg {
                MbrGrow::Primary { slot, end } => (slot as u32, end),
                MbrGrow::Logical { ebr, end } => (m.ebrs[ebr].number.unwrap_or(0), end),
            };
            let part = m
                .partitions()
                .into_iter()
                .find(|p| p.number == number)
                .ok_or_else(|| FitAction::GrowSkipped {
                    reason: format!("partition {number} not found"),
                })?;
            Ok(Grow {
                part,
                new_end: end,
                mbr: Some(mg),
            })
        }
        Table::None(_) => Err(not_needed("no partition table".into())),
    }
}

/// Writes the plan's stages in order, each followed by an fsync.
fn apply(t: &Target, plan: &Plan) -> Result<(), RetargetError> {
    for stage in &plan.stages {
        for (off, bytes) in stage {
            t.write_at(*off, bytes)?;
        }
        t.sync()?;
    }
    Ok(())
}

/// Reads the table back and checks it says what we meant.
fn verify(
    t: &Target,
    before: &Table,
    plan: &Plan,
    grow: Option<Grow>,
) -> Result<(), RetargetError> {
    if plan.stages.is_empty() {
        return Ok(());
    }
    let after = Table::read(t)?;
    let ss = after.sector_size();
    let mut want = before.partitions();
    for p in &mut want {
        if let Some(g) = grow {
            if p.number == g.part.number {
                p.end = g.new_end;
            }
        }
    }
    if let (Table::Mbr(m), Some(slot)) = (&after, extended_slot(before)) {
        // The extended container may have shrunk or grown: take it as read.
        if let Some(p) = m.partitions().into_iter().find(|p| p.number == slot) {
            want.iter_mut()
                .filter(|w| w.number == slot)
                .for_each(|w| w.end = p.end);
        }
    }
    let mut got = after.partitions();
    want.sort_by_key(|p| p.number);
    got.sort_by_key(|p| p.number);
    if got != want {
        return Err(RetargetError::Verify {
            path: t.path.clone(),
            reason: format!("partitions read back as {got:?}, expected {want:?}"),
        });
    }
    if let Table::Gpt(g) = &after {
        let last = t.size / ss - 1;
        if g.gpt.header.backup_lba != last {
            return Err(RetargetError::Verify {
                path: t.path.clone(),
                reason: format!(
                    "backup header LBA reads back as {}, expected {last}",
                    g.gpt.header.backup_lba
                ),
            });
        }
        if let Some(problem) = g.backup_problem(t, last)? {
            return Err(RetargetError::Verify {
                path: t.path.clone(),
                reason: problem,
            });
        }
    }
    Ok(())
}

fn extended_slot(table: &Table) -> Option<u32> {
    match table {
        Table::Mbr(m) => m.extended.map(|s| s as u32),
        _ => None,
    }
}

/// Enlarges the grown partition's filesystem, on the kernel's partition
/// node when one matches the new extent, else on our own loop device.
fn resize(
    target: &Path,
    kind: DiskKind,
    devnum: Option<imgcast_disk::DevNum>,
    g: &Grow,
    fs_kind: &FsKind,
    ss: u64,
    report: &mut FitReport,
) -> Result<(), RetargetError> {
    let number = g.part.number;
    let (off, len) = (g.part.start * ss, (g.new_end - g.part.start + 1) * ss);
    let mut node: Option<PathBuf> = None;
    if let (DiskKind::BlockDevice, Some(dn)) = (kind, devnum) {
        // The kernel still has the old size. BLKPG_RESIZE_PARTITION (via
        // resizepart) keeps the partition's device number, so its node
        // stays valid; only when the kernel's partition starts where ours
        // does (otherwise its view predates the restore: not ours to fix).
        if fs::kernel_partition_start(dn, number) == Some(off) {
            let args = [
                target.as_os_str().to_os_string(),
                number.to_string().into(),
                (len / 512).to_string().into(),
            ];
            let out = fs::run("resizepart", &args)?;
            if out.status.success() {
                report.actions.push(FitAction::KernelUpdated {
                    command: format!("resizepart {} {number} {}", target.display(), len / 512),
                });
            }
            node = fs::partition_node(dn, number, off, len);
        }
    }
    match fs_kind {
        FsKind::Ext(_) | FsKind::Ntfs => {}
        FsKind::Other(name) => {
            report.actions.push(FitAction::FilesystemLeft {
                number,
                fs: Some(name.clone()),
                reason: "imgcast enlarges only ext2/3/4 and NTFS".into(),
            });
            return Ok(());
        }
        FsKind::Unknown => {
            report.actions.push(FitAction::FilesystemLeft {
                number,
                fs: None,
                reason: "blkid recognised no filesystem on it (or is not installed)".into(),
            });
            return Ok(());
        }
    }
    let mut loop_dev = None;
    let dev = match node {
        Some(n) => {
            // Its cache may predate the restore.
            fs::flush_buffers(&n);
            n
        }
        None => loop_dev
            .insert(LoopDev::attach(target, off, len)?)
            .dev
            .clone(),
    };
    let before = fs::size(fs_kind, &dev)?;
    fs::enlarge(fs_kind, &dev)?;
    let after = fs::size(fs_kind, &dev)?;
    if kind == DiskKind::BlockDevice {
        fs::flush_buffers(&dev);
        fs::flush_buffers(target);
    }
    report.actions.push(FitAction::ResizedFilesystem {
        number,
        fs: fs_kind.name().unwrap_or_default(),
        device: dev,
        from_bytes: before.bytes,
        to_bytes: after.bytes,
        detail: after.detail,
    });
    drop(loop_dev);
    Ok(())
}

fn sync_path(path: &Path) -> Result<(), RetargetError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| RetargetError::io("open", path, e))?;
    f.sync_all()
        .map_err(|e| RetargetError::io("fsync", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::tests::gpt_file;

    #[test]
    fn grow_aligns_the_end_like_the_start_and_plans_the_writes() {
        let dir = tempfile::tempdir().unwrap();
        // A 4 KiB-aligned start (LBA 40) on a disk grown from 8 to 16 MiB.
        let path = gpt_file(dir.path(), 8 << 20, &[(40, 10_000)]);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let t = Target::open_read(&path).unwrap();
        let table = Table::read(&t).unwrap();
        let g = grow_candidate(&table, &t).unwrap();
        let last_usable = (16 << 20) / 512 - 34;
        assert_eq!(g.new_end, (last_usable + 1) / 8 * 8 - 1);
        let p = plan(&table, &t, Some(g)).unwrap();
        // Backup area first (synced alone), then the primary and sector 0,
        // then the stale header.
        assert_eq!(p.stages.len(), 3);
        assert_eq!(p.stages[0][0].0, (last_usable + 1) * 512);
        assert_eq!(p.stages[1][0].0, 512);
        assert_eq!(p.stages[1][1].0, 0);
        assert_eq!(p.stages[2], vec![((8 << 20) - 512, vec![0u8; 512])]);
        assert!(p.actions.iter().any(
            |a| matches!(a, FitAction::GrewPartition { to_end_lba, .. } if *to_end_lba == g.new_end)
        ));
    }
}
