//! What is on a disk, in words, for the confirmation before it is overwritten:
//! its size, model, partitions and the filesystems found on them (labels from
//! `blkid` when it is installed, else from the superblock magic we know).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::human;

/// A disk about to be overwritten, described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DiskSummary {
    /// The path as given.
    pub(crate) path: PathBuf,
    /// Whether it is a block device (else a regular file).
    pub(crate) block: bool,
    /// Size in bytes (0 for a file that does not exist yet).
    pub(crate) size: u64,
    /// Vendor model, for a block device that reports one.
    pub(crate) model: Option<String>,
    /// One line per thing found: partitions and filesystems.
    pub(crate) contents: Vec<String>,
    /// What uses it now (mounted, swap, held by LVM), if anything.
    pub(crate) in_use: Option<String>,
}

impl DiskSummary {
    /// Whether overwriting needs a confirmation at all: a block device
    /// always does, a file only when it holds something.
    pub(crate) fn needs_consent(&self) -> bool {
        self.block || self.size > 0
    }

    /// The lines of the confirmation, first the disk then what is on it.
    pub(crate) fn lines(&self) -> Vec<String> {
        let kind = if self.block { "block device" } else { "file" };
        let mut head = format!("{} ({kind}, {}", self.path.display(), human(self.size));
        if let Some(m) = &self.model {
            head += &format!(", {m}");
        }
        head.push(')');
        let mut out = vec![head];
        if let Some(u) = &self.in_use {
            out.push(format!("in use: {u}"));
        }
        if self.contents.is_empty() {
            out.push("no partition table or filesystem recognised".into());
        } else {
            out.extend(self.contents.iter().map(|c| format!("  {c}")));
        }
        out
    }
}

/// Describes `path` (a block device or a regular file that may not exist yet).
pub(crate) fn describe(path: &Path) -> Result<DiskSummary> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DiskSummary {
                path: path.to_path_buf(),
                block: false,
                size: 0,
                model: None,
                contents: vec![],
                in_use: None,
            });
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let block = meta.file_type().is_block_device();
    if !block && !meta.is_file() {
        bail!("{} is neither a block device nor a file", path.display());
    }
    let in_use = imgcast_disk::mounted_status(path).ok().flatten();
    let mut summary = DiskSummary {
        path: path.to_path_buf(),
        block,
        size: meta.len(),
        model: None,
        contents: vec![],
        in_use,
    };
    if block {
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let dev = imgcast_disk::list_block_devices()
            .ok()
            .and_then(|all| all.into_iter().find(|d| d.path == canon));
        if let Some(d) = dev {
            summary.size = d.size;
            summary.model = d.model.clone();
            for p in &d.partitions {
                let mut line = format!("partition {} {}", p.path.display(), human(p.size));
                if let Some(fs) = filesystem(&p.path) {
                    line += &format!(": {fs}");
                }
                if let Some(m) = &p.mounted {
                    line += &format!(" ({m})");
                }
                summary.contents.push(line);
            }
        } else if let Ok(f) = File::open(path) {
            summary.size = imgcast_disk::disk_size(&f).unwrap_or(0);
        }
    }
    if summary.contents.is_empty() && summary.size > 0 {
        if let Some(fs) = filesystem(path) {
            summary.contents.push(fs);
        }
    }
    Ok(summary)
}

/// The filesystem (or partition table) on `path`, with its label.
fn filesystem(path: &Path) -> Option<String> {
    blkid(path).or_else(|| {
        let mut head = vec![0u8; 68 * 1024];
        let mut f = File::open(path).ok()?;
        f.seek(SeekFrom::Start(0)).ok()?;
        let n = read_up_to(&mut f, &mut head);
        head.truncate(n);
        sniff(&head)
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// `blkid -o export PATH`, if blkid is installed and knows the content.
fn blkid(path: &Path) -> Option<String> {
    let out = Command::new("blkid")
        .args(["-o", "export"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    let kind = field("TYPE").or_else(|| field("PTTYPE").map(|t| format!("{t} partition table")))?;
    Some(match field("LABEL") {
        Some(label) => format!("{kind} \"{label}\""),
        None => kind,
    })
}

/// Recognises a few superblocks by their magic: enough to tell the user
/// that a disk holds something worth a second look.
pub(crate) fn sniff(head: &[u8]) -> Option<String> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let label = |off: usize, len: usize| {
        let raw = head.get(off..off + len)?;
        let s = String::from_utf8_lossy(raw)
            .trim_end_matches(['\0', ' '])
            .to_string();
        (!s.is_empty()).then_some(s)
    };
    let named = |kind: &str, l: Option<String>| match l {
        Some(l) => format!("{kind} \"{l}\""),
        None => kind.to_string(),
    };
    if at(1080, &[0x53, 0xEF]) {
        return Some(named("ext4", label(1144, 16)));
    }
    if at(0, b"XFSB") {
        return Some(named("xfs", label(108, 12)));
    }
    if at(3, b"NTFS    ") {
        return Some("ntfs".into());
    }
    if at(82, b"FAT32   ") {
        return Some(named("vfat", label(71, 11)));
    }
    if at(54, b"FAT1") {
        return Some(named("vfat", label(43, 11)));
    }
    if at(0x10040, b"_BHRfS_M") {
        return Some(named("btrfs", label(0x1012b, 256)));
    }
    if at(4086, b"SWAPSPACE2") {
        return Some("swap".into());
    }
    if at(512, b"EFI PART") {
        return Some("gpt partition table".into());
    }
    if at(510, &[0x55, 0xAA]) {
        return Some("dos partition table (or boot sector)".into());
    }
    if head.len() > 4096 && head.iter().all(|&b| b == 0) {
        return Some("the first 68 KiB are zeros".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_ext4_with_label() {
        let mut head = vec![0u8; 68 * 1024];
        head[1080] = 0x53;
        head[1081] = 0xEF;
        head[1144..1149].copy_from_slice(b"rootA");
        assert_eq!(sniff(&head).as_deref(), Some("ext4 \"rootA\""));
        let mut fat = vec![1u8; 1024];
        fat[82..90].copy_from_slice(b"FAT32   ");
        fat[71..82].copy_from_slice(b"BOOT       ");
        assert_eq!(sniff(&fat).as_deref(), Some("vfat \"BOOT\""));
        assert_eq!(sniff(&[7u8; 100]), None);
    }

    #[test]
    fn describes_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = describe(&dir.path().join("new.raw")).expect("describe");
        assert!(!missing.needs_consent());
        let p = dir.path().join("full.raw");
        std::fs::write(&p, vec![9u8; 4096]).expect("write");
        let d = describe(&p).expect("describe");
        assert!(d.needs_consent());
        assert_eq!(d.size, 4096);
        assert!(d.lines()[0].contains("file, 4.0 KiB"), "{:?}", d.lines());
    }
}
