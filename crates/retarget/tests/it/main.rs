//! Integration tests of imgcast-retarget: one binary, a module per area.
//! Disks are built with the real tools (sgdisk, sfdisk, mkfs.ext4, mkntfs,
//! debugfs, ntfscp), "restored" by copying their bytes onto a larger or
//! smaller file or loop device, then fitted, and checked with the real
//! tools again (sgdisk -v, sfdisk --verify, e2fsck -fn, ntfsfix -n).

mod blockdev;
mod fuzz_corpus;
mod gpt;
mod hostile;
mod mbr;
mod ntfs;
mod record;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;
pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub(crate) const MIB: u64 = 1 << 20;

/// True when running as root (loop devices, mknod).
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Prints the skip line and returns true when not root.
pub(crate) fn skip(name: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {name}: needs root");
    true
}

/// Runs a tool that must succeed; returns its stdout.
pub(crate) fn tool(cmd: &str, args: &[&str]) -> Res<String> {
    let out = Command::new(cmd)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a tool with `input` on stdin; it must succeed.
pub(crate) fn tool_stdin(cmd: &str, args: &[&str], input: &str) -> Res<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// An attached loop device, detached on drop.
pub(crate) struct Loop {
    pub(crate) dev: PathBuf,
}

impl Loop {
    /// A loop device over `len` bytes at `offset` of `file` (a partition).
    pub(crate) fn part(file: &Path, offset: u64, len: u64) -> Res<Self> {
        let dev = tool(
            "losetup",
            &[
                "-o",
                &offset.to_string(),
                "--sizelimit",
                &len.to_string(),
                "--show",
                "-f",
                p(file),
            ],
        )?;
        Ok(Self {
            dev: dev.trim().into(),
        })
    }

    /// A loop device over all of `file`, with `extra` losetup flags.
    pub(crate) fn whole(file: &Path, extra: &[&str]) -> Res<Self> {
        let mut args = extra.to_vec();
        args.extend(["--show", "-f", p(file)]);
        let dev = tool("losetup", &args)?;
        Ok(Self {
            dev: dev.trim().into(),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for _ in 0..20 {
            match Command::new("losetup").arg("-d").arg(&self.dev).status() {
                Ok(s) if s.success() => return,
                _ => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift).
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A partition as sfdisk reports it: number, start and size in sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SfPart {
    pub(crate) number: u32,
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) ty: String,
}

/// The partitions of `disk`, read by sfdisk (not by the crate under test).
pub(crate) fn sfdisk_parts(disk: &Path) -> Res<Vec<SfPart>> {
    let j: serde_json::Value = serde_json::from_str(&tool("sfdisk", &["-J", p(disk)])?)?;
    let parts = j["partitiontable"]["partitions"]
        .as_array()
        .ok_or("no partitions")?;
    let mut out = Vec::new();
    for part in parts {
        let node = part["node"].as_str().ok_or("node")?;
        let digits: String = node
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        out.push(SfPart {
            number: digits.parse()?,
            start: part["start"].as_u64().ok_or("start")?,
            size: part["size"].as_u64().ok_or("size")?,
            ty: part["type"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(out)
}

pub(crate) fn sfpart(disk: &Path, number: u32) -> Res<SfPart> {
    sfdisk_parts(disk)?
        .into_iter()
        .find(|x| x.number == number)
        .ok_or_else(|| format!("no partition {number} on {}", disk.display()).into())
}

/// `sgdisk -v` must find no problems.
pub(crate) fn assert_sgdisk_clean(disk: &Path) -> TestResult {
    let out = tool("sgdisk", &["-v", p(disk)])?;
    assert!(
        out.contains("No problems found"),
        "sgdisk -v {}:\n{out}",
        disk.display()
    );
    Ok(())
}

/// The backup GPT header is the target's last sector.
pub(crate) fn assert_backup_at_end(disk: &Path, size: u64) -> TestResult {
    let f = fs::File::open(disk)?;
    let mut sig = [0u8; 8];
    f.read_exact_at(&mut sig, size - 512)?;
    assert_eq!(&sig, b"EFI PART", "no GPT header in the last sector");
    let mut lba = [0u8; 8];
    f.read_exact_at(&mut lba, size - 512 + 24)?;
    assert_eq!(u64::from_le_bytes(lba), size / 512 - 1, "backup's own LBA");
    Ok(())
}

/// Makes a file of `size` bytes holding `src`'s first bytes, as a restore
/// of `src` onto a target of that size leaves it (a smaller target gets
/// what fits).
pub(crate) fn restore_copy(src: &Path, dst: &Path, size: u64) -> TestResult {
    let data = fs::read(src)?;
    let n = (data.len() as u64).min(size) as usize;
    let f = fs::File::create(dst)?;
    f.set_len(size)?;
    f.write_all_at(&data[..n], 0)?;
    f.sync_all()?;
    Ok(())
}

/// Writes `files` (name, bytes) into the ext filesystem on `dev` with
/// debugfs, in a directory `d` too.
pub(crate) fn ext_write_files(dir: &Path, dev: &Path, files: &[(&str, Vec<u8>)]) -> TestResult {
    let mut script = String::from("mkdir d\n");
    for (name, bytes) in files {
        let host = dir.join(format!("host-{}", name.replace('/', "_")));
        fs::write(&host, bytes)?;
        script.push_str(&format!("write {} {name}\n", p(&host)));
    }
    let cmds = dir.join("debugfs.cmds");
    fs::write(&cmds, script)?;
    tool("debugfs", &["-w", "-f", p(&cmds), p(dev)])?;
    Ok(())
}

/// Reads a file from the ext filesystem on `dev` with debugfs.
pub(crate) fn ext_read_file(dev: &Path, name: &str) -> Res<Vec<u8>> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {name}"), p(dev)])
        .stderr(Stdio::null())
        .output()?;
    Ok(out.stdout)
}

/// `(block count, block size)` from dumpe2fs.
pub(crate) fn ext_blocks(dev: &Path) -> Res<(u64, u64)> {
    let out = tool("dumpe2fs", &["-h", p(dev)])?;
    let field = |name: &str| -> Res<u64> {
        Ok(out
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .ok_or(format!("no {name}"))?
            .trim_start_matches(':')
            .trim()
            .parse()?)
    };
    Ok((field("Block count")?, field("Block size")?))
}

/// `e2fsck -fn` must pass.
pub(crate) fn assert_e2fsck_clean(dev: &Path) -> TestResult {
    tool("e2fsck", &["-fn", p(dev)])?;
    Ok(())
}

/// A BLAKE3 hash of `len` bytes at `offset` of `path`.
pub(crate) fn hash_range(path: &Path, offset: u64, len: u64) -> Res<[u8; 32]> {
    let f = fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        f.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// A hash of a whole file.
pub(crate) fn hash_file(path: &Path) -> Res<[u8; 32]> {
    Ok(*blake3::hash(&fs::read(path)?).as_bytes())
}

/// A GPT disk file of `size` bytes made by sgdisk with the given `-n`/`-t`
/// arguments.
pub(crate) fn sgdisk_disk(path: &Path, size: u64, args: &[&str]) -> TestResult {
    let f = fs::File::create(path)?;
    f.set_len(size)?;
    drop(f);
    let mut all = args.to_vec();
    all.push(p(path));
    tool("sgdisk", &all)?;
    Ok(())
}

/// A loop device over partition `number` of `disk` (from sfdisk's view).
pub(crate) fn part_loop(disk: &Path, number: u32) -> Res<Loop> {
    let sp = sfpart(disk, number)?;
    Loop::part(disk, sp.start * 512, sp.size * 512)
}
