//! Integration tests of imgcast-fsmap: one binary, a module per area.
//!
//! Every filesystem here is made by its own mkfs and filled by its own
//! tools (kernel mounts on loop devices as root; debugfs, mtools, ntfscp on
//! plain files otherwise). Files carry a tag in every 512-byte sector, so a
//! scan of the disk finds where each file's data lies: kept files must lie
//! inside `used`, deleted ones outside.

mod ext;
mod fat;
mod hostile;
mod layout;
mod mbr;
mod ntfs;
mod other;
mod refuse;

use std::error::Error;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgcast_disk::Extents;
use imgcast_fsmap::{analyze, AnalyzeOptions, DiskLayout};

pub(crate) type R<T> = Result<T, Box<dyn Error>>;
pub(crate) type TestResult = R<()>;

/// True when running as root (loop devices and mounts possible).
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Prints the skip message and returns true when not root.
pub(crate) fn skip(name: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {name}: needs root (loop devices, mounts); CI runs as root");
    true
}

/// Whether `tool` is installed (in $PATH or an sbin).
pub(crate) fn have(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

/// Runs `prog args` under a 120 s deadline (coreutils `timeout`); fails
/// with its stderr unless it succeeds; returns its stdout.
pub(crate) fn sh(prog: &str, args: &[&str]) -> R<String> {
    sh_env(prog, args, &[])
}

/// [`sh`] with extra environment variables.
pub(crate) fn sh_env(prog: &str, args: &[&str], env: &[(&str, &str)]) -> R<String> {
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(prog).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {args:?}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// mtools without its geometry checks (partitions and loop devices).
pub(crate) fn mtools(prog: &str, args: &[&str]) -> R<String> {
    sh_env(prog, args, &[("MTOOLS_SKIP_CHECK", "1")])
}

/// An attached loop device, detached on drop.
pub(crate) struct Loop {
    pub(crate) dev: String,
}

impl Loop {
    /// `losetup [-r] -o start --sizelimit size --show -f file`.
    pub(crate) fn attach(file: &Path, start: u64, size: u64, read_only: bool) -> R<Self> {
        let (s, l) = (start.to_string(), size.to_string());
        let f = file.to_string_lossy();
        let mut args = vec!["-f", "--show", "-o", &s, "--sizelimit", &l];
        if read_only {
            args.insert(0, "-r");
        }
        args.push(&f);
        let dev = sh("losetup", &args)?.trim().to_string();
        if !dev.starts_with("/dev/loop") {
            return Err(format!("losetup printed {dev:?}").into());
        }
        Ok(Self { dev })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mounted filesystem, unmounted on drop.
pub(crate) struct Mount {
    pub(crate) dir: tempfile::TempDir,
    mounted: bool,
}

impl Mount {
    /// `mount [-o opts] dev dir` (or `ntfs-3g dev dir` for ntfs-3g).
    pub(crate) fn new(dev: &str, fstype: &str, opts: &str) -> R<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_string_lossy().into_owned();
        if fstype == "ntfs-3g" {
            let mut args = vec![dev, d.as_str()];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            sh("ntfs-3g", &args)?;
        } else {
            let mut args = vec!["-t", fstype];
            if !opts.is_empty() {
                args.extend(["-o", opts]);
            }
            args.extend([dev, d.as_str()]);
            sh("mount", &args)?;
        }
        Ok(Self { dir, mounted: true })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Unmounts now (the drop does it too, ignoring errors).
    pub(crate) fn unmount(mut self) -> TestResult {
        self.mounted = false;
        sh("umount", &[&self.dir.path().to_string_lossy()])?;
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

/// A partition as sfdisk reports it.
#[derive(Clone, Debug)]
pub(crate) struct Part {
    pub(crate) number: u32,
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) type_id: String,
    pub(crate) name: Option<String>,
}

/// A disk image file in a temporary directory.
pub(crate) struct Disk {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
    pub(crate) parts: Vec<Part>,
}

impl Disk {
    /// A sparse GPT disk of `mib` MiB made by sgdisk: `(size, type code,
    /// name)` per partition, sizes as sgdisk takes them ("64M").
    pub(crate) fn gpt(mib: u64, parts: &[(&str, &str, &str)]) -> R<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.img");
        fs::File::create(&path)?.set_len(mib << 20)?;
        let mut args: Vec<String> = Vec::new();
        for (i, (size, code, name)) in parts.iter().enumerate() {
            let n = i + 1;
            args.push(format!("--new={n}:0:+{size}"));
            args.push(format!("--typecode={n}:{code}"));
            if !name.is_empty() {
                args.push(format!("--change-name={n}:{name}"));
            }
        }
        args.push(path.to_string_lossy().into_owned());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("sgdisk", &a)?;
        let parts = sfdisk_parts(&path)?;
        Ok(Self { dir, path, parts })
    }

    /// A sparse MBR disk of `mib` MiB from an sfdisk script.
    pub(crate) fn mbr(mib: u64, script: &str) -> R<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("disk.img");
        fs::File::create(&path)?.set_len(mib << 20)?;
        let script_file = dir.path().join("layout.sfdisk");
        fs::write(&script_file, script)?;
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "timeout 60 sfdisk -q '{}' < '{}'",
                path.display(),
                script_file.display()
            ))
            .output()?;
        if !out.status.success() {
            return Err(format!("sfdisk: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let parts = sfdisk_parts(&path)?;
        Ok(Self { dir, path, parts })
    }

    pub(crate) fn part(&self, number: u32) -> R<&Part> {
        self.parts
            .iter()
            .find(|p| p.number == number)
            .ok_or_else(|| format!("no partition {number}").into())
    }

    /// Formats partition `n` without root: `prog args FILE` on a scratch
    /// file of the partition's size, `fill(FILE)` to put files on it, then
    /// the file is copied into the disk at the partition's offset.
    pub(crate) fn format(
        &self,
        n: u32,
        prog: &str,
        args: &[&str],
        fill: impl FnOnce(&Path) -> TestResult,
    ) -> TestResult {
        let p = self.part(n)?.clone();
        let f = self.dir.path().join(format!("part{n}.img"));
        fs::File::create(&f)?.set_len(p.size)?;
        let fs_ = f.to_string_lossy().into_owned();
        let mut a = args.to_vec();
        a.push(&fs_);
        sh(prog, &a)?;
        fill(&f)?;
        splice(&f, &self.path, p.start)?;
        fs::remove_file(&f)?;
        Ok(())
    }

    /// A loop device over partition `n`.
    pub(crate) fn attach(&self, n: u32, read_only: bool) -> R<Loop> {
        let p = self.part(n)?;
        Loop::attach(&self.path, p.start, p.size, read_only)
    }

    pub(crate) fn analyze(&self, opts: &AnalyzeOptions) -> R<DiskLayout> {
        Ok(analyze(&self.path, opts)?)
    }
}

/// Copies `src` into `dst` at byte `offset`, keeping holes.
pub(crate) fn splice(src: &Path, dst: &Path, offset: u64) -> TestResult {
    sh(
        "dd",
        &[
            &format!("if={}", src.display()),
            &format!("of={}", dst.display()),
            "bs=1M",
            &format!("seek={offset}"),
            "oflag=seek_bytes",
            "conv=notrunc,sparse",
            "status=none",
        ],
    )?;
    Ok(())
}

/// The partitions of `disk` from `sfdisk -J`.
pub(crate) fn sfdisk_parts(disk: &Path) -> R<Vec<Part>> {
    let j: serde_json::Value =
        serde_json::from_str(&sh("sfdisk", &["-J", &disk.to_string_lossy()])?)?;
    let t = &j["partitiontable"];
    let ss = t["sectorsize"].as_u64().unwrap_or(512);
    let mut out = Vec::new();
    for p in t["partitions"].as_array().ok_or("no partitions")? {
        let node = p["node"].as_str().ok_or("no node")?;
        let digits: String = node
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        let number: u32 = digits.chars().rev().collect::<String>().parse()?;
        out.push(Part {
            number,
            start: p["start"].as_u64().ok_or("start")? * ss,
            size: p["size"].as_u64().ok_or("size")? * ss,
            type_id: p["type"].as_str().unwrap_or("").to_string(),
            name: p["name"].as_str().map(str::to_string),
        });
    }
    Ok(out)
}

/// Tag at the start of every 512-byte sector of a test file.
const TAG: &[u8; 8] = b"IMGCAST\x7f";

/// File `id` of `len` bytes (a multiple of 512): each sector is the tag,
/// the file id, the sector number, then pseudo-random bytes.
pub(crate) fn pattern(id: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for s in 0..len / 512 {
        out.extend_from_slice(TAG);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(s as u32).to_le_bytes());
        for _ in 0..(512 - 16) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Test files: kept ones (id, bytes) and deleted ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct Files {
    pub(crate) kept: Vec<(u32, usize)>,
    pub(crate) deleted: Vec<(u32, usize)>,
}

impl Files {
    /// The usual set: kept and deleted files interleaved, a few MiB in all.
    pub(crate) fn usual() -> Self {
        Self {
            kept: vec![(1, 96 << 10), (3, 1 << 20), (5, 3 << 20)],
            deleted: vec![(2, 2 << 20), (4, 512 << 10)],
        }
    }

    /// Ids and sizes in write order (interleaved).
    pub(crate) fn all(&self) -> Vec<(u32, usize)> {
        let mut v: Vec<_> = self.kept.iter().chain(&self.deleted).copied().collect();
        v.sort();
        v
    }

    pub(crate) fn name(id: u32) -> String {
        format!("file{id}.bin")
    }

    /// Writes every file into directory `dir`, then deletes the deleted ones
    /// (for filesystems mounted through the kernel or FUSE).
    pub(crate) fn write_and_delete_in(&self, dir: &Path) -> TestResult {
        for (id, len) in self.all() {
            fs::write(dir.join(Self::name(id)), pattern(id, len))?;
            sh("sync", &[])?;
        }
        for (id, _) in &self.deleted {
            fs::remove_file(dir.join(Self::name(*id)))?;
        }
        sh("sync", &[])?;
        Ok(())
    }
}

/// Where each tagged sector lies in `[start, start + len)` of `path`:
/// (file id, sector number, disk offset).
pub(crate) fn scan(path: &Path, start: u64, len: u64) -> R<Vec<(u32, u32, u64)>> {
    let f = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::new();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], start + off)?;
        for (i, s) in buf[..n].chunks_exact(512).enumerate() {
            if &s[..8] == TAG {
                let id = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
                let sec = u32::from_le_bytes([s[12], s[13], s[14], s[15]]);
                out.push((id, sec, start + off + i as u64 * 512));
            }
        }
        off += n as u64;
    }
    Ok(out)
}

/// Bytes of `[start, start + len)` inside `used`.
pub(crate) fn covered(used: &Extents, start: u64, len: u64) -> u64 {
    used.within(start, start + len).map(|r| r.len()).sum()
}

/// Every sector of every kept file lies inside `used`, and every sector
/// of a deleted file that is still on the disk lies outside it. A deleted
/// file must still be found, or the check would prove nothing.
pub(crate) fn check_files(used: &Extents, disk: &Path, part: &Part, files: &Files) -> TestResult {
    let found = scan(disk, part.start, part.size)?;
    for &(id, len) in &files.kept {
        let sectors: Vec<_> = found.iter().filter(|f| f.0 == id).collect();
        let distinct: std::collections::BTreeSet<u32> = sectors.iter().map(|f| f.1).collect();
        assert_eq!(
            distinct.len(),
            len / 512,
            "partition {}: kept file {id}: found {} of its {} sectors",
            part.number,
            distinct.len(),
            len / 512
        );
        for &&(_, sec, off) in &sectors {
            assert_eq!(
                covered(used, off, 512),
                512,
                "partition {}: sector {sec} of kept file {id} at byte {off} is not in used",
                part.number
            );
        }
    }
    for &(id, _) in &files.deleted {
        let sectors: Vec<_> = found.iter().filter(|f| f.0 == id).collect();
        assert!(
            !sectors.is_empty(),
            "partition {}: deleted file {id} left nothing on disk: the test proves nothing",
            part.number
        );
        let inside: Vec<_> = sectors
            .iter()
            .filter(|s| covered(used, s.2, 512) > 0)
            .collect();
        assert!(
            inside.is_empty(),
            "partition {}: {} of {} sectors of deleted file {id} are in used (first at byte {})",
            part.number,
            inside.len(),
            sectors.len(),
            inside.first().map_or(0, |s| s.2)
        );
    }
    Ok(())
}

/// The used ranges of a `partclone.<tool> -D` domain log of `dev`, as
/// offsets on the disk (`base` added). Parsed here independently of the
/// crate's own parser.
pub(crate) fn partclone_used(tool: &str, dev: &str, base: u64) -> R<Extents> {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("domain");
    let plog = dir.path().join("log");
    sh(
        &format!("partclone.{tool}"),
        &[
            "-D",
            "-q",
            "-s",
            dev,
            "-o",
            &log.to_string_lossy(),
            "-L",
            &plog.to_string_lossy(),
        ],
    )?;
    let mut used = Extents::new();
    for line in fs::read_to_string(&log)?.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 && f[2] == "+" {
            let pos = u64::from_str_radix(f[0].trim_start_matches("0x"), 16)?;
            let size = u64::from_str_radix(f[1].trim_start_matches("0x"), 16)?;
            used.insert(base + pos, size);
        }
    }
    Ok(used)
}

/// Asserts that `ours` holds every byte of `theirs` within the partition
/// and is at most `slack` bytes bigger there; returns (ours, theirs).
pub(crate) fn superset_of(
    what: &str,
    ours: &Extents,
    theirs: &Extents,
    part: &Part,
    slack: u64,
) -> R<(u64, u64)> {
    let end = part.start + part.size;
    let mut missing = 0;
    for r in theirs.within(part.start, end) {
        missing += r.len() - covered(ours, r.start, r.len());
    }
    let o = covered(ours, part.start, part.size);
    let t = covered(theirs, part.start, part.size);
    assert_eq!(
        missing, 0,
        "{what}: {missing} bytes {what} uses are not in ours"
    );
    assert!(
        o <= t + slack,
        "{what}: ours is {o} bytes, partclone's {t}: more than {slack} bigger"
    );
    eprintln!("{what}: ours {o} bytes, partclone {t} bytes");
    Ok((o, t))
}

/// `df -B1` used and size of a mounted filesystem.
pub(crate) fn df(dir: &Path) -> R<(u64, u64)> {
    let out = sh("df", &["-B1", "--output=used,size", &dir.to_string_lossy()])?;
    let line = out.lines().nth(1).ok_or("df printed nothing")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok((v[0], v[1]))
}
