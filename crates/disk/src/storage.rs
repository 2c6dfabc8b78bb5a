//! Which file or device an image is stored on, so that a restore can refuse
//! to overwrite the very image it reads.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{read_trimmed, DevNum, DiskKind};

/// Where an image's bytes live: its inode, the device of the filesystem
/// holding it, and, when the image is read from a block device, that device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageId {
    /// `st_dev`: the device of the filesystem that holds the inode.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// The device itself, when the image is read from a block device.
    pub block: Option<DevNum>,
}

impl StorageId {
    /// The identity of an opened file (a regular file, a block device, or
    /// a pipe, which can never be a target).
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            block: (DiskKind::of(meta) == Some(DiskKind::BlockDevice))
                .then(|| DevNum::from_rdev(meta.rdev())),
        }
    }
}

/// Most devices followed down a stack (dm on md on partitions ...): stacks
/// are short; the bound only guards against a sysfs loop.
const MAX_STACK: usize = 64;

/// Says why writing the target (`target`, with metadata `meta`) would
/// overwrite the image stored at `image`, or `None` when it would not.
///
/// * a regular-file target: it is the image file itself (same device and inode);
/// * a block-device target: the image is read from it, from one of its
///   partitions, or from the whole disk it is a partition of; or the image
///   file lives on a filesystem whose device is the target, one of its
///   partitions, or stacked on either (device-mapper, md: followed through
///   sysfs `slaves/`).
pub fn image_on_target(image: &StorageId, target: &Path, meta: &fs::Metadata) -> Option<String> {
    match DiskKind::of(meta)? {
        DiskKind::RegularFile => (meta.dev() == image.dev && meta.ino() == image.ino)
            .then(|| format!("{} is the image file itself", target.display())),
        DiskKind::BlockDevice => {
            let t = DevNum::from_rdev(meta.rdev());
            if let Some(dev) = image.block {
                return overlaps(dev, t).then(|| {
                    format!(
                        "the image is read from {}, which overlaps {}",
                        dev_name(dev),
                        target.display()
                    )
                });
            }
            let fs_dev = DevNum::from_rdev(image.dev);
            stack_below(fs_dev)
                .into_iter()
                .find(|&d| overlaps(d, t))
                .map(|d| {
                    format!(
                        "the image file is on a filesystem of {} (device {}), which overlaps {}",
                        dev_name(fs_dev),
                        dev_name(d),
                        target.display()
                    )
                })
        }
    }
}

/// Whether two block devices share sectors: the same device, or one a
/// partition of the other.
fn overlaps(a: DevNum, b: DevNum) -> bool {
    a == b || parent_disk(a) == Some(b) || parent_disk(b) == Some(a)
}

fn sys_dir(d: DevNum) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{d}"))
}

/// The whole disk a partition belongs to; `None` for a whole disk.
fn parent_disk(d: DevNum) -> Option<DevNum> {
    let dir = fs::canonicalize(sys_dir(d)).ok()?;
    if !dir.join("partition").exists() {
        return None;
    }
    read_trimmed(&dir.parent()?.join("dev")).and_then(|s| DevNum::parse(&s))
}

/// `d` and every device it is built on (sysfs `slaves/`, recursively).
fn stack_below(d: DevNum) -> Vec<DevNum> {
    let mut out = vec![d];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_STACK {
        let Ok(rd) = fs::read_dir(sys_dir(out[i]).join("slaves")) else {
            i += 1;
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            if let Some(s) = read_trimmed(&e.path().join("dev")).and_then(|s| DevNum::parse(&s)) {
                if !out.contains(&s) && out.len() < MAX_STACK {
                    out.push(s);
                }
            }
        }
        i += 1;
    }
    out
}

fn dev_name(d: DevNum) -> String {
    fs::canonicalize(sys_dir(d))
        .ok()
        .and_then(|p| {
            p.file_name()
                .map(|n| format!("/dev/{}", n.to_string_lossy()))
        })
        .unwrap_or_else(|| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_is_its_own_image_and_not_another() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        fs::File::create(&a)?.write_all(b"x")?;
        fs::File::create(&b)?.write_all(b"x")?;
        let link = dir.path().join("hard.img");
        fs::hard_link(&a, &link)?;
        let id = StorageId::of(&fs::metadata(&a)?);
        assert_eq!(id.block, None);
        let why = image_on_target(&id, &link, &fs::metadata(&link)?);
        assert!(why.is_some_and(|w| w.contains("is the image file itself")));
        assert_eq!(image_on_target(&id, &b, &fs::metadata(&b)?), None);
        Ok(())
    }

    #[test]
    fn overlap_is_reflexive() {
        let d = DevNum { major: 7, minor: 3 };
        assert!(overlaps(d, d));
        assert!(stack_below(d).contains(&d));
    }
}
