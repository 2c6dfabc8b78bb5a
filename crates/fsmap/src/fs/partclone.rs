//! Used maps from `partclone.<fs> --domain` for filesystems this crate does
//! not parse (xfs, btrfs, exfat, f2fs, ...).
//!
//! partclone wants a device holding just the filesystem, so a read-only
//! loop device is made over the partition (`losetup -r -o OFFSET
//! --sizelimit SIZE`) and removed afterwards, as are partclone's log and
//! domain files. Every child process runs under a deadline and is killed
//! when it passes it. The domain log (a ddrescue mapfile) is parsed
//! strictly: bounded size and line count, contiguous entries from offset 0,
//! inside the partition; `+` entries are the used ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use imgcast_disk::Extents;

use crate::io::Region;

/// A domain log larger than this is not read (a line per extent, ~35 bytes).
const MAX_LOG_BYTES: u64 = 256 << 20;
/// Nor one with more lines.
const MAX_LOG_LINES: usize = 8_000_000;

/// Directories searched after `$PATH` (root's `$PATH` may lack sbin).
const SBIN: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"];

/// Where `partclone.<tool>` is installed, if it is.
pub(crate) fn find_tool(tool: &str) -> Option<PathBuf> {
    let name = format!("partclone.{tool}");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
}

/// Whether the process runs as root (effective uid 0), from procfs: loop
/// devices need it.
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs `cmd` with stdout to `out` (or discarded) and stderr discarded,
/// killing it at the deadline.
fn run(mut cmd: Command, out: Option<&Path>, limit: Duration) -> Result<ExitStatus, String> {
    let name = format!("{:?}", cmd.get_program());
    match out {
        Some(p) => {
            let f = fs::File::create(p).map_err(|e| format!("create {}: {e}", p.display()))?;
            cmd.stdout(f);
        }
        None => {
            cmd.stdout(Stdio::null());
        }
    }
    cmd.stdin(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| format!("run {name}: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{name} did not finish in {} s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("wait for {name}: {e}")),
        }
    }
}

/// A loop device we attached; detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let mut cmd = Command::new("losetup");
        cmd.arg("-d").arg(&self.0);
        let _ = run(cmd, None, Duration::from_secs(30));
    }
}

/// The used bytes of `region` (relative to it) as `partclone.<tool> -D`
/// reports them; `Err` says why not, for a note.
pub(crate) fn domain_map(tool: &str, region: &Region) -> Result<Extents, String> {
    let bin = find_tool(tool).ok_or_else(|| format!("partclone.{tool} not installed"))?;
    if !is_root() {
        return Err(format!(
            "partclone.{tool} needs a loop device, and only root can make one"
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("imgcast-fsmap-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let dev_file = dir.path().join("dev");
    let mut losetup = Command::new("losetup");
    losetup
        .args(["-r", "-f", "--show", "-o"])
        .arg(region.start.to_string())
        .arg("--sizelimit")
        .arg(region.len.to_string())
        .arg(&region.disk.path);
    let st = run(losetup, Some(&dev_file), Duration::from_secs(30))?;
    let dev = fs::read_to_string(&dev_file)
        .unwrap_or_default()
        .trim()
        .to_string();
    if !st.success() || !dev.starts_with("/dev/") {
        return Err(format!("losetup failed ({st})"));
    }
    let lo = Loop(dev);

    let log = dir.path().join("domain.log");
    let plog = dir.path().join("partclone.log");
    let mut pc = Command::new(&bin);
    pc.arg("-D")
        .arg("-q")
        .arg("-s")
        .arg(&lo.0)
        .arg("-o")
        .arg(&log)
        .arg("-L")
        .arg(&plog);
    // partclone reads metadata only; a minute per TiB is generous.
    let limit = Duration::from_secs(300 + (region.len >> 30).min(100_000) / 16);
    let st = run(pc, None, limit)?;
    drop(lo);
    if !st.success() {
        let last = fs::read_to_string(&plog)
            .unwrap_or_default()
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(format!("partclone.{tool} failed ({st}): {last}"));
    }
    let len = fs::metadata(&log)
        .map_err(|e| format!("partclone.{tool} wrote no domain log: {e}"))?
        .len();
    if len > MAX_LOG_BYTES {
        return Err(format!("the domain log of partclone.{tool} is {len} bytes"));
    }
    let text = fs::read_to_string(&log).map_err(|e| format!("read the domain log: {e}"))?;
    let used =
        parse_domain(&text, region.len).map_err(|e| format!("partclone.{tool} domain log: {e}"))?;
    if used.is_empty() {
        return Err(format!("partclone.{tool} reported no used block"));
    }
    Ok(used)
}

fn hex(s: &str) -> Option<u64> {
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if h.is_empty() || h.len() > 16 {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

/// Parses a ddrescue mapfile as partclone writes it, for a device of `len`
/// bytes: comments, one status line, then `pos size status` lines that
/// tile the device from 0 without gaps or overlaps.
pub(crate) fn parse_domain(text: &str, len: u64) -> Result<Extents, String> {
    let mut used = Extents::new();
    let mut status_line = false;
    let mut next = 0u64;
    for (i, line) in text.lines().enumerate() {
        if i >= MAX_LOG_LINES {
            return Err(format!("more than {MAX_LOG_LINES} lines"));
        }
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        let bad = || format!("line {}: {t:?}", i + 1);
        if !status_line {
            // current_pos current_status [current_pass]
            if !(2..=3).contains(&f.len()) || hex(f[0]).is_none() || f[1].len() != 1 {
                return Err(bad());
            }
            status_line = true;
            continue;
        }
        let [pos, size, st] = f[..] else {
            return Err(bad());
        };
        let (Some(pos), Some(size)) = (hex(pos), hex(size)) else {
            return Err(bad());
        };
        if !matches!(st, "?" | "*" | "/" | "-" | "+") {
            return Err(bad());
        }
        if pos != next {
            return Err(format!(
                "line {}: entry at 0x{pos:x}, expected 0x{next:x}",
                i + 1
            ));
        }
        let end = pos
            .checked_add(size)
            .filter(|&e| e <= len)
            .ok_or_else(|| format!("line {}: entry past the end ({len} bytes)", i + 1))?;
        if st == "+" {
            used.insert(pos, size);
        }
        next = end;
    }
    if !status_line {
        return Err("no status line".into());
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "# Domain logfile created by unset_name v0.3.23\n\
        # Source: /dev/loop0\n# Offset: 0x00000000\n# current_pos  current_status\n\
        0x12D00000     ?\n#      pos        size  status\n\
        0x00000000  0x00006000  +\n0x00006000  0x0000A000  ?\n\
        0x00010000  0x00008000  +\n0x00018000  0x04AE8000  ?\n";

    #[test]
    fn parses_partclone_domain_log() -> Result<(), String> {
        let e = parse_domain(LOG, 0x04B00000)?;
        let spans: Vec<_> = e.ranges().iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(spans, [(0, 0x6000), (0x10000, 0x18000)]);
        Ok(())
    }

    #[test]
    fn refuses_malformed_logs() {
        let bad = |t: &str, len| parse_domain(t, len).err().unwrap_or_default();
        assert!(bad(LOG, 0x1000).contains("past the end"));
        assert!(bad(
            &LOG.replace("0x00006000  0x0000A000", "0x00007000  0x00009000"),
            1 << 30
        )
        .contains("expected"));
        assert!(bad(&LOG.replace("  ?\n0x0001", "  X\n0x0001"), 1 << 30).contains("line"));
        assert!(bad(
            &LOG.replace("0x00010000  0x00008000", "0x00010000  0xFFFFFFFFFFFFFFFF"),
            u64::MAX
        )
        .contains("past the end"));
        assert!(bad(
            &LOG.replace("0x00000000  0x00006000  +", "0x0  0x6000  +  extra"),
            1 << 30
        )
        .contains("line"));
        assert!(bad("# nothing\n", 100).contains("no status line"));
        assert!(bad("0x0 ?\n0x0 0x10 +\nzzz\n", 100).contains("line 3"));
        assert_eq!(hex("0x"), None);
        assert_eq!(hex("0x11112222333344445"), None);
        assert_eq!(hex("12"), None);
    }

    #[test]
    fn bounded_child_is_killed_at_deadline() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let t = Instant::now();
        let r = run(cmd, None, Duration::from_millis(200));
        assert!(r.is_err_and(|e| e.contains("did not finish")));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
