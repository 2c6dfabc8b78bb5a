//! Filesystems inside a grown partition: what they are (blkid), whether they
//! are safe to resize (e2fsck, ntfsresize --check), and enlarging them
//! (resize2fs, ntfsresize), on a loop device over the partition's bytes
//! that we attach and detach ourselves, or on the kernel's partition node.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::Duration;

use imgcast_disk::DevNum;

use crate::RetargetError;

/// How much of a tool's output an error or report keeps.
const OUTPUT_TAIL: usize = 1500;

/// The filesystems we know how to enlarge, and the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FsKind {
    /// ext2, ext3 or ext4 (the blkid name).
    Ext(String),
    /// NTFS.
    Ntfs,
    /// Something else blkid named.
    Other(String),
    /// blkid found nothing (or is missing).
    Unknown,
}

impl FsKind {
    pub(crate) fn name(&self) -> Option<String> {
        match self {
            Self::Ext(n) | Self::Other(n) => Some(n.clone()),
            Self::Ntfs => Some("ntfs".into()),
            Self::Unknown => None,
        }
    }
}

/// Runs `tool` with `args` (stdin closed, C locale) and returns its output
/// whatever the exit status; only a failure to start is an error.
pub(crate) fn run<S: AsRef<OsStr>>(
    tool: &'static str,
    args: &[S],
) -> Result<Output, RetargetError> {
    Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RetargetError::ToolMissing { tool, source })
}

/// The end of what a tool printed, for messages.
pub(crate) fn tail(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    let s = s.trim();
    let cut = s.len().saturating_sub(OUTPUT_TAIL);
    let start = (cut..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].split_whitespace().collect::<Vec<_>>().join(" ")
}

fn failed(tool: &'static str, on: &Path, out: &Output) -> RetargetError {
    RetargetError::ToolFailed {
        tool,
        on: on.to_path_buf(),
        status: out.status.to_string(),
        output: tail(out),
    }
}

/// What blkid finds in `len` bytes at `offset` of `path` (low-level probe,
/// no cache).
pub(crate) fn detect(path: &Path, offset: u64, len: u64) -> FsKind {
    let args = [
        OsStr::new("-p"),
        OsStr::new("-o"),
        OsStr::new("export"),
        OsStr::new("-O"),
        OsStr::new(&offset.to_string()),
        OsStr::new("-S"),
        OsStr::new(&len.to_string()),
        path.as_os_str(),
    ]
    .map(|s| s.to_os_string());
    let Ok(out) = run("blkid", &args) else {
        return FsKind::Unknown;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let ty = text
        .lines()
        .find_map(|l| l.strip_prefix("TYPE="))
        .map(str::trim);
    match ty {
        Some(t @ ("ext2" | "ext3" | "ext4")) => FsKind::Ext(t.to_string()),
        Some("ntfs") => FsKind::Ntfs,
        Some(t) if !t.is_empty() => FsKind::Other(t.to_string()),
        _ => FsKind::Unknown,
    }
}

/// A loop device over a byte range of a file or device, detached on drop.
#[derive(Debug)]
pub(crate) struct LoopDev {
    pub(crate) dev: PathBuf,
}

impl LoopDev {
    /// `losetup -o OFFSET --sizelimit LEN --show -f BACKING`.
    pub(crate) fn attach(backing: &Path, offset: u64, len: u64) -> Result<Self, RetargetError> {
        let args = [
            OsStr::new("-o"),
            OsStr::new(&offset.to_string()),
            OsStr::new("--sizelimit"),
            OsStr::new(&len.to_string()),
            OsStr::new("--show"),
            OsStr::new("-f"),
            backing.as_os_str(),
        ]
        .map(|s| s.to_os_string());
        let out = run("losetup", &args)?;
        if !out.status.success() {
            return Err(failed("losetup", backing, &out));
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !dev.starts_with("/dev/") {
            return Err(failed("losetup", backing, &out));
        }
        Ok(Self { dev: dev.into() })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        // A tool that just exited may still hold the device for a moment.
        for _ in 0..20 {
            match Command::new("losetup")
                .arg("-d")
                .arg(&self.dev)
                .stderr(Stdio::null())
                .status()
            {
                Ok(s) if s.success() => return,
                Ok(_) => sleep(Duration::from_millis(100)),
                Err(_) => return,
            }
        }
    }
}

/// The kernel's node for partition `number` of block device `disk`, when it
/// exists with the given start and size (in bytes).
pub(crate) fn partition_node(disk: DevNum, number: u32, start: u64, len: u64) -> Option<PathBuf> {
    let dir = PathBuf::from(format!("/sys/dev/block/{disk}"));
    for entry in fs::read_dir(&dir).ok()?.flatten() {
        let p = entry.path();
        let read = |f: &str| {
            fs::read_to_string(p.join(f))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        if read("partition") != Some(u64::from(number)) {
            continue;
        }
        // sysfs counts 512-byte units whatever the sector size.
        if read("start")? * 512 != start || read("size")? * 512 != len {
            return None;
        }
        let num = DevNum::parse(fs::read_to_string(p.join("dev")).ok()?.trim())?;
        let node = Path::new("/dev").join(entry.file_name());
        let meta = fs::metadata(&node).ok()?;
        let ok = meta.file_type().is_block_device() && DevNum::from_rdev(meta.rdev()) == num;
        return ok.then_some(node);
    }
    None
}

/// The start (in bytes) of the kernel's partition `number` of `disk`, when
/// the kernel has one.
pub(crate) fn kernel_partition_start(disk: DevNum, number: u32) -> Option<u64> {
    let dir = PathBuf::from(format!("/sys/dev/block/{disk}"));
    fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let read = |f: &str| {
            fs::read_to_string(e.path().join(f))
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        (read("partition")? == u64::from(number)).then(|| read("start").map(|s| s * 512))?
    })
}

/// Drops a block device's cached pages (`blockdev --flushbufs`): a disk and
/// its partition nodes have separate caches, so what one wrote the other
/// may not see until then. Best effort.
pub(crate) fn flush_buffers(dev: &Path) {
    let _ = run("blockdev", &[OsStr::new("--flushbufs"), dev.as_os_str()]);
}

/// The outcome of a check before resizing.
pub(crate) struct Checked {
    pub(crate) command: String,
    pub(crate) result: String,
}

/// Checks the filesystem on `dev` before it is resized. `Ok(Err(reason))`
/// means it must not be resized.
///
/// ext: `e2fsck -f -n`, a full check that changes nothing. Only a clean
/// result goes on: then `tune2fs -T now` records the check, which resize2fs
/// demands. Problems are reported, not repaired: `-p` (preen) would
/// already delete directory entries of damaged inodes, `-y` anything; the
/// user decides that, not a restore. resize2fs `-f` (skip the demand) is
/// never used, as it also skips its other safety checks.
///
/// NTFS: `ntfsresize --check` (consistency) and `--info` (refuses a volume
/// marked dirty or scheduled for chkdsk: Windows must run chkdsk first).
pub(crate) fn check(fs: &FsKind, dev: &Path) -> Result<Result<Checked, String>, RetargetError> {
    match fs {
        FsKind::Ext(_) => {
            let out = run(
                "e2fsck",
                &[OsStr::new("-f"), OsStr::new("-n"), dev.as_os_str()],
            )?;
            let command = format!("e2fsck -f -n {}", dev.display());
            if out.status.code() != Some(0) {
                return Ok(Err(format!(
                    "{command} found problems ({}): {}; run e2fsck on the partition yourself, \
                     then grow again",
                    out.status,
                    tail(&out)
                )));
            }
            let out = run(
                "tune2fs",
                &[OsStr::new("-T"), OsStr::new("now"), dev.as_os_str()],
            )?;
            if !out.status.success() {
                return Err(failed("tune2fs", dev, &out));
            }
            Ok(Ok(Checked {
                command: format!("{command}; tune2fs -T now {}", dev.display()),
                result: "clean".into(),
            }))
        }
        FsKind::Ntfs => {
            // --check tests consistency but not the "scheduled for check"
            // flag an earlier resize leaves until Windows runs chkdsk;
            // --info (without --force) refuses such a volume.
            let command = format!(
                "ntfsresize --check {0}; ntfsresize --info {0}",
                dev.display()
            );
            for flag in ["--check", "--info"] {
                let out = run(
                    "ntfsresize",
                    &[
                        OsStr::new(flag),
                        OsStr::new("--no-progress-bar"),
                        dev.as_os_str(),
                    ],
                )?;
                if !out.status.success() {
                    return Ok(Err(format!(
                        "ntfsresize {flag} {} refused ({}): {}; let Windows run chkdsk, \
                         then grow again",
                        dev.display(),
                        out.status,
                        tail(&out)
                    )));
                }
            }
            Ok(Ok(Checked {
                command,
                result: "ready for resizing".into(),
            }))
        }
        FsKind::Other(_) | FsKind::Unknown => Ok(Ok(Checked {
            command: String::new(),
            result: String::new(),
        })),
    }
}

/// A filesystem's size before or after resizing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FsSize {
    pub(crate) bytes: u64,
    pub(crate) detail: String,
}

/// Reads the size of the filesystem on `dev` from its own tools.
pub(crate) fn size(fs: &FsKind, dev: &Path) -> Result<FsSize, RetargetError> {
    match fs {
        FsKind::Ext(_) => {
            let out = run("dumpe2fs", &[OsStr::new("-h"), dev.as_os_str()])?;
            if !out.status.success() {
                return Err(failed("dumpe2fs", dev, &out));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| -> Option<u64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
            };
            match (field("Block count"), field("Block size")) {
                (Some(n), Some(bs)) => Ok(FsSize {
                    bytes: n.saturating_mul(bs),
                    detail: format!("{n} blocks of {bs} bytes"),
                }),
                _ => Err(failed("dumpe2fs", dev, &out)),
            }
        }
        FsKind::Ntfs => {
            // Read-only; --force only lets it read a volume that awaits
            // chkdsk, as every volume does right after a resize.
            let out = run(
                "ntfsresize",
                &[OsStr::new("--info"), OsStr::new("--force"), dev.as_os_str()],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            let bytes = text.lines().find_map(|l| {
                l.strip_prefix("Current volume size:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            match bytes {
                Some(b) => Ok(FsSize {
                    bytes: b,
                    detail: format!(
                        "{b}-byte volume; ntfsresize marks it for chkdsk at Windows' next boot"
                    ),
                }),
                None => Err(failed("ntfsresize", dev, &out)),
            }
        }
        FsKind::Other(_) | FsKind::Unknown => Ok(FsSize {
            bytes: 0,
            detail: String::new(),
        }),
    }
}

/// Enlarges the filesystem on `dev` to fill it.
pub(crate) fn enlarge(fs: &FsKind, dev: &Path) -> Result<(), RetargetError> {
    let (tool, out) = match fs {
        FsKind::Ext(_) => ("resize2fs", run("resize2fs", &[dev.as_os_str()])?),
        // Without a size ntfsresize fills the device. Never --force: it
        // would resize a volume that still awaits chkdsk.
        FsKind::Ntfs => (
            "ntfsresize",
            run(
                "ntfsresize",
                &[OsStr::new("--no-progress-bar"), dev.as_os_str()],
            )?,
        ),
        FsKind::Other(_) | FsKind::Unknown => return Ok(()),
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(tool, dev, &out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        let out = Output {
            status: std::process::ExitStatus::default(),
            stdout: "é".repeat(2000).into_bytes(),
            stderr: b"  last words\n".to_vec(),
        };
        let t = tail(&out);
        assert!(t.ends_with("last words"));
        assert!(t.len() <= OUTPUT_TAIL + 1);
    }

    #[test]
    fn detect_says_unknown_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("zeros");
        fs::write(&f, vec![0u8; 1 << 16]).unwrap();
        assert_eq!(detect(&f, 0, 1 << 16), FsKind::Unknown);
    }
}
