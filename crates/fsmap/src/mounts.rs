//! Which byte ranges of a disk are mounted, and whether read-write.
//!
//! A block device: the device itself and each of its partitions (sysfs
//! `start`/`size`), looked up by `major:minor` in `/proc/self/mountinfo`.
//! An image file (or a block device under a loop device): every loop
//! device whose `loop/backing_file` is it covers `[loop/offset, offset +
//! loop/sizelimit)`, and so do that loop device's own partitions. A range
//! is mounted read-write when its superblock options say `rw` (a read-only
//! bind mount of a read-write filesystem still changes under us).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imgcast_disk::{DevNum, DiskKind};

use crate::io::Disk;

/// A mounted byte range of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountUse {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The device that is mounted (`/dev/loop3`, `/dev/sda2`).
    pub(crate) device: String,
    pub(crate) mountpoint: String,
    pub(crate) rw: bool,
}

/// One mountinfo line: device number, mount point, superblock rw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    dev: DevNum,
    mountpoint: String,
    rw: bool,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let dev = DevNum::parse(f.get(2)?)?;
            let mountpoint = unescape(f.get(4)?);
            let sep = f.iter().position(|&x| x == "-")?;
            let sb_opts = f.get(sep + 3)?;
            let rw = sb_opts.split(',').any(|o| o == "rw");
            Some(Mount {
                dev,
                mountpoint,
                rw,
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trimmed(p)?.parse().ok()
}

/// A block device (or partition of one) and the disk range it shows.
struct Covering {
    dev: DevNum,
    name: String,
    start: u64,
    end: u64,
}

/// The sysfs directory of a device and those of its partitions, as
/// coverings shifted by `base` and clipped to `end`.
fn with_partitions(sys: &Path, dev: DevNum, base: u64, end: u64, out: &mut Vec<Covering>) {
    let name = device_name(sys);
    out.push(Covering {
        dev,
        name,
        start: base,
        end,
    });
    let Ok(rd) = fs::read_dir(sys) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if !p.join("partition").exists() {
            continue;
        }
        let (Some(d), Some(start), Some(size)) = (
            read_trimmed(&p.join("dev")).and_then(|s| DevNum::parse(&s)),
            read_u64(&p.join("start")),
            read_u64(&p.join("size")),
        ) else {
            continue;
        };
        let s = base.saturating_add(start.saturating_mul(512));
        out.push(Covering {
            dev: d,
            name: format!("/dev/{}", e.file_name().to_string_lossy()),
            start: s.min(end),
            end: s.saturating_add(size.saturating_mul(512)).min(end),
        });
    }
}

fn device_name(sys: &Path) -> String {
    fs::canonicalize(sys)
        .ok()
        .and_then(|p| {
            p.file_name()
                .map(|n| format!("/dev/{}", n.to_string_lossy()))
        })
        .unwrap_or_else(|| sys.display().to_string())
}

/// Loop devices backed by `target`: (sysfs dir, devnum, offset, end).
fn loops_over(target: &Path, size: u64) -> Vec<(PathBuf, DevNum, u64, u64)> {
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.filter_map(Result::ok) {
        let dir = e.path();
        let Some(backing) = read_trimmed(&dir.join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(&backing);
        if fs::canonicalize(backing).ok().as_deref() != Some(target) {
            continue;
        }
        let Some(dev) = read_trimmed(&dir.join("dev")).and_then(|s| DevNum::parse(&s)) else {
            continue;
        };
        let offset = read_u64(&dir.join("loop/offset")).unwrap_or(0);
        let limit = read_u64(&dir.join("loop/sizelimit")).unwrap_or(0);
        let end = if limit == 0 {
            size
        } else {
            offset.saturating_add(limit).min(size)
        };
        out.push((dir, dev, offset.min(size), end));
    }
    out
}

/// The sysfs name (`loop3`) of a block-device disk.
fn device_dir_name(disk: &Disk) -> Option<std::ffi::OsString> {
    let meta = fs::metadata(&disk.path).ok()?;
    let sys =
        fs::canonicalize(format!("/sys/dev/block/{}", DevNum::from_rdev(meta.rdev()))).ok()?;
    sys.file_name().map(ToOwned::to_owned)
}

/// The backing file and offset of a loop device given as the disk.
fn loop_backing(disk: &Disk) -> Option<(PathBuf, u64)> {
    if disk.kind != DiskKind::BlockDevice {
        return None;
    }
    let meta = fs::metadata(&disk.path).ok()?;
    let sys = PathBuf::from(format!("/sys/dev/block/{}", DevNum::from_rdev(meta.rdev())));
    let backing = read_trimmed(&sys.join("loop/backing_file"))?;
    let backing = backing.strip_suffix(" (deleted)").unwrap_or(&backing);
    let offset = read_u64(&sys.join("loop/offset")).unwrap_or(0);
    Some((fs::canonicalize(backing).ok()?, offset))
}

/// Every mounted range of `disk`.
pub(crate) fn mounted_ranges(disk: &Disk) -> Vec<MountUse> {
    let mut cover = Vec::new();
    if disk.kind == DiskKind::BlockDevice {
        if let Ok(meta) = fs::metadata(&disk.path) {
            let dev = DevNum::from_rdev(meta.rdev());
            let sys = PathBuf::from(format!("/sys/dev/block/{dev}"));
            with_partitions(&sys, dev, 0, disk.size, &mut cover);
        }
    }
    if let Ok(target) = fs::canonicalize(&disk.path) {
        for (dir, dev, start, end) in loops_over(&target, disk.size) {
            with_partitions(&dir, dev, start, end, &mut cover);
        }
    }
    // A loop device given as the disk: other loop devices over the same
    // backing file see the same bytes, shifted by the offsets.
    if let Some((backing, base)) = loop_backing(disk) {
        let far = base.saturating_add(disk.size);
        let me = device_dir_name(disk);
        for (dir, dev, start, end) in loops_over(&backing, far) {
            if end <= base || dir.file_name() == me.as_deref() {
                continue;
            }
            let mut shifted = Vec::new();
            with_partitions(&dir, dev, start, end, &mut shifted);
            for mut c in shifted {
                c.start = c.start.max(base) - base;
                c.end = c.end.max(base) - base;
                if c.end > c.start {
                    cover.push(c);
                }
            }
        }
    }
    let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let mut out = Vec::new();
    for c in &cover {
        for m in mounts.iter().filter(|m| m.dev == c.dev) {
            out.push(MountUse {
                start: c.start,
                end: c.end,
                device: c.name.clone(),
                mountpoint: m.mountpoint.clone(),
                rw: m.rw,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_rw_comes_from_superblock_options() {
        let mi = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                  23 22 7:3 / /mnt/a\\040b ro,relatime - ext4 /dev/loop3 rw,errors=remount-ro\n\
                  24 22 7:4 / /mnt/ro ro - vfat /dev/loop4 ro,fmask=0022\n\
                  garbage line\n";
        let m = parse_mountinfo(mi);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].dev, DevNum { major: 8, minor: 2 });
        assert!(m[0].rw);
        // A read-only bind of a read-write superblock is still read-write.
        assert_eq!(m[1].mountpoint, "/mnt/a b");
        assert!(m[1].rw);
        assert!(!m[2].rw);
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn an_unattached_file_has_no_mounts() -> Result<(), Box<dyn std::error::Error>> {
        let f = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut f.as_file(), &[0u8; 4096])?;
        let disk = Disk::open(f.path())?;
        assert!(mounted_ranges(&disk).is_empty());
        Ok(())
    }
}
