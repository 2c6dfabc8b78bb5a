//! Real disks: GPT disks with ext4, FAT and NTFS partitions built by their own mkfs, filled with
//! their own tools, some files deleted so the free space holds old bytes; then `img make`,
//! `img restore` onto files and loop devices, the filesystems' own checkers, the files compared,
//! onto larger and smaller disks, `-grow`, and the image-safe record. Root only (loop devices,
//! mount); CI runs as root.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{p, run, text};

const MIB: u64 = 1 << 20;

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn skip(name: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {name}: needs root for loop devices and mount (CI runs as root)");
    true
}

/// Runs a tool; panics with its output when it fails.
fn sh(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd} {args:?} failed:\n{out}");
    out
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    /// Over the whole of `file`.
    fn over(file: &Path) -> Self {
        Self(sh("losetup", &["-f", "--show", p(file)]).trim().to_string())
    }
    /// Over `[start, start + size)` of `file` (losetup -P makes no partition nodes here).
    fn part(file: &Path, start: u64, size: u64, read_only: bool) -> Self {
        let (o, s) = (start.to_string(), size.to_string());
        let mut args = vec!["-f", "--show", "-o", &o, "--sizelimit", &s];
        if read_only {
            args.push("-r");
        }
        args.push(p(file));
        Self(sh("losetup", &args).trim().to_string())
    }
    fn dev(&self) -> &str {
        &self.0
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A mount: [`Mount::unmount`] ends it and checks that it ended; a drop (a
/// test that panicked) only tries.
struct Mount(PathBuf, bool);

impl Mount {
    fn new(dev: &str, dir: &Path) -> Self {
        fs::create_dir_all(dir).expect("mount point");
        sh("mount", &[dev, p(dir)]);
        Self(dir.to_path_buf(), true)
    }

    /// Unmounts, retrying for up to 5 s while the mount is busy: a mount left
    /// in place keeps its journal dirty (`needs_recovery`), and `img make`
    /// rightly refuses such a filesystem.
    fn unmount(mut self) {
        let mut last = String::new();
        for _ in 0..50 {
            let o = Command::new("umount")
                .arg(&self.0)
                .output()
                .expect("umount");
            if o.status.success() {
                self.1 = false;
                return;
            }
            last = String::from_utf8_lossy(&o.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("umount {} failed for 5 s: {last}", self.0.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

/// Deterministic bytes for files.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// One partition of a test disk: where it is and what is on it.
struct Part {
    start: u64,
    size: u64,
}

/// sgdisk's view of partition `n`: (first, last) sectors.
fn part_of(disk: &Path, n: u32) -> Part {
    let out = sh("sgdisk", &["-i", &n.to_string(), p(disk)]);
    let field = |name: &str| -> u64 {
        out.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let (first, last) = (field("First sector"), field("Last sector"));
    Part {
        start: first * 512,
        size: (last - first + 1) * 512,
    }
}

/// The files each filesystem gets: (name, content); the deleted ones are written, then removed.
struct Content {
    kept: Vec<(String, Vec<u8>)>,
    deleted_bytes: u64,
}

/// A 192 MiB GPT disk: an EFI FAT32 partition (48 MiB), ext4 (96 MiB), NTFS (the rest), each
/// filled with files by the filesystem's own tools and then some deleted.
fn build_disk(dir: &Path) -> (PathBuf, Content) {
    let disk = dir.join("source.raw");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(192 * MIB))
        .expect("disk file");
    sh(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:2048:+48M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI",
            "-n",
            "2:0:+96M",
            "-t",
            "2:8300",
            "-c",
            "2:root",
            "-n",
            "3:0:0",
            "-t",
            "3:0700",
            "-c",
            "3:data",
            p(&disk),
        ],
    );
    let mut kept = Vec::new();
    let mut deleted_bytes = 0;
    // FAT32, with mtools (this kernel has no vfat driver).
    {
        let pt = part_of(&disk, 1);
        let l = Loop::part(&disk, pt.start, pt.size, false);
        sh("mkfs.vfat", &["-F", "32", "-n", "EFI", l.dev()]);
        drop(l);
        let at = format!("{}@@{}", p(&disk), pt.start);
        for (i, len) in [(0u64, 300_000usize), (1, 2_000_000), (2, 1_234)] {
            let name = format!("f{i}.bin");
            let local = dir.join(&name);
            let data = bytes(100 + i, len);
            fs::write(&local, &data).expect("file");
            sh("mcopy", &["-i", &at, p(&local), &format!("::{name}")]);
            if i == 1 {
                sh("mdel", &["-i", &at, &format!("::{name}")]);
                deleted_bytes += len as u64;
            } else {
                kept.push((format!("fat:{name}"), data));
            }
        }
    }
    // ext4, mounted.
    {
        let pt = part_of(&disk, 2);
        let l = Loop::part(&disk, pt.start, pt.size, false);
        sh("mkfs.ext4", &["-q", "-F", "-L", "root", l.dev()]);
        let m = Mount::new(l.dev(), &dir.join("mnt"));
        fs::create_dir_all(m.0.join("etc/deep")).expect("dirs");
        for (i, len) in [(0u64, 5_000_000usize), (1, 20_000_000), (2, 70_000), (3, 3)] {
            let name = if i == 2 {
                "etc/deep/conf".to_string()
            } else {
                format!("file{i}")
            };
            let data = bytes(200 + i, len);
            fs::write(m.0.join(&name), &data).expect("write");
            if i == 1 {
                sh("sync", &[]);
                fs::remove_file(m.0.join(&name)).expect("delete");
                deleted_bytes += len as u64;
            } else {
                kept.push((format!("ext4:{name}"), data));
            }
        }
        sh("sync", &[]);
        m.unmount();
    }
    // NTFS, with ntfscp.
    {
        let pt = part_of(&disk, 3);
        let l = Loop::part(&disk, pt.start, pt.size, false);
        sh("mkntfs", &["-Q", "-F", "-L", "data", l.dev()]);
        for (i, len) in [(0u64, 3_000_000usize), (1, 40_000)] {
            let name = format!("n{i}.bin");
            let local = dir.join(&name);
            let data = bytes(300 + i, len);
            fs::write(&local, &data).expect("file");
            sh("ntfscp", &["-f", l.dev(), p(&local), &name]);
            kept.push((format!("ntfs:{name}"), data));
        }
    }
    (
        disk,
        Content {
            kept,
            deleted_bytes,
        },
    )
}

/// Checks every filesystem of a restored disk with its own checker and reads every kept file back.
fn check_restored(disk: &Path, content: &Content, work: &Path) {
    let fat = part_of(disk, 1);
    let ext = part_of(disk, 2);
    let ntfs = part_of(disk, 3);
    {
        let l = Loop::part(disk, fat.start, fat.size, true);
        sh("fsck.vfat", &["-n", l.dev()]);
    }
    {
        let l = Loop::part(disk, ext.start, ext.size, true);
        sh("e2fsck", &["-fn", l.dev()]);
    }
    {
        let l = Loop::part(disk, ntfs.start, ntfs.size, true);
        sh("ntfsfix", &["-n", l.dev()]);
    }
    let at = format!("{}@@{}", p(disk), fat.start);
    for (name, data) in &content.kept {
        let out = work.join("readback");
        let _ = fs::remove_file(&out);
        let (fs_kind, file) = name.split_once(':').expect("name");
        match fs_kind {
            "fat" => {
                sh("mcopy", &["-n", "-i", &at, &format!("::{file}"), p(&out)]);
            }
            "ext4" => {
                let l = Loop::part(disk, ext.start, ext.size, true);
                sh(
                    "debugfs",
                    &["-R", &format!("dump /{file} {}", p(&out)), l.dev()],
                );
            }
            _ => {
                let l = Loop::part(disk, ntfs.start, ntfs.size, true);
                let o = Command::new("ntfscat")
                    .args([l.dev(), file])
                    .output()
                    .expect("ntfscat");
                fs::write(&out, o.stdout).expect("write");
            }
        }
        let got = fs::read(&out).unwrap_or_default();
        assert!(
            got == *data,
            "{name}: {} bytes back, {} expected",
            got.len(),
            data.len()
        );
    }
}

/// sgdisk's partition listing, which must be equal on source and copy.
fn table(disk: &str) -> String {
    sh("sgdisk", &["-p", disk])
        .lines()
        .filter(|l| {
            !l.starts_with("Disk ")
                && !l.starts_with("Sector size")
                && !l.contains("sectors (")
                && !l.contains("free space")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_used_gpt_disk_with_ext4_fat_and_ntfs_round_trips_without_its_free_space() {
    if skip("a_used_gpt_disk_with_ext4_fat_and_ntfs_round_trips_without_its_free_space") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, content) = build_disk(dir.path());
    let image = dir.path().join("disk.img");
    let raw = dir.path().join("raw.img");
    for (img, extra) in [(&image, None), (&raw, Some("-raw"))] {
        let mut args = vec!["make", p(img), "-comp=1"];
        let d = format!("-disk={}", p(&disk));
        args.push(&d);
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", text(&o));
    }
    // The image leaves out the free space, deleted files included.
    let (mapped, whole) = (
        fs::metadata(&image).expect("image").len(),
        fs::metadata(&raw).expect("raw").len(),
    );
    assert!(
        whole - mapped >= content.deleted_bytes * 9 / 10,
        "mapped {mapped}, raw {whole}, deleted {}",
        content.deleted_bytes
    );
    // img info lists the partitions.
    let o = run(&["info", p(&image)]);
    let info = text(&o);
    assert!(o.status.success(), "{info}");
    for want in ["ext4", "fat32", "ntfs", "root", "data", "efi"] {
        assert!(
            info.to_lowercase().contains(want),
            "{want} missing from\n{info}"
        );
    }
    // Onto a file.
    let file = dir.path().join("restored.raw");
    let o = run(&["restore", p(&image), &format!("-disk={}", p(&file)), "-yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("image-safe record written"),
        "{}",
        text(&o)
    );
    assert_eq!(table(p(&file)), table(p(&disk)));
    check_restored(&file, &content, dir.path());
    // Onto a loop device full of old bytes.
    let dev_file = dir.path().join("device.raw");
    fs::write(&dev_file, vec![0xC3u8; (192 * MIB) as usize]).expect("device");
    let dev = Loop::over(&dev_file);
    let o = run(&[
        "restore",
        p(&image),
        &format!("-disk={}", dev.dev()),
        "-yes",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(table(dev.dev()), table(p(&disk)));
    drop(dev);
    check_restored(&dev_file, &content, dir.path());
    // The image-safe record: shown, in the gap, in no partition.
    let o = run(&["info", "zisd", p(&dev_file)]);
    let z = text(&o);
    assert!(
        o.status.success() && z.contains("last image put down: disk.img"),
        "{z}"
    );
    let rec = fs::read(&dev_file).expect("device");
    let at = rec
        .windows(8)
        .position(|w| w == b"IMGCSAFE")
        .expect("the record is on the disk") as u64;
    assert!(
        at < 2048 * 512,
        "the record lies before the first partition: {at}"
    );
    for n in 1..=3 {
        let pt = part_of(&dev_file, n);
        let bytes = &rec[pt.start as usize..(pt.start + pt.size) as usize];
        assert!(
            !bytes.windows(8).any(|w| w == b"IMGCSAFE"),
            "partition {n} holds a record"
        );
    }
}

/// A 96 MiB GPT disk with one ext4 partition filling it, some files on it.
fn ext4_disk(dir: &Path) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let disk = dir.join("small.raw");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(96 * MIB))
        .expect("disk");
    sh(
        "sgdisk",
        &["-o", "-n", "1:2048:0", "-t", "1:8300", p(&disk)],
    );
    let pt = part_of(&disk, 1);
    let l = Loop::part(&disk, pt.start, pt.size, false);
    sh("mkfs.ext4", &["-q", "-F", l.dev()]);
    let m = Mount::new(l.dev(), &dir.join("mnt"));
    let mut files = Vec::new();
    for i in 0..3u64 {
        let data = bytes(400 + i, 2_000_000 + i as usize);
        fs::write(m.0.join(format!("f{i}")), &data).expect("write");
        files.push((format!("f{i}"), data));
    }
    m.unmount();
    drop(l);
    (disk, files)
}

fn ext4_block_count(dev: &str) -> u64 {
    sh("dumpe2fs", &["-h", dev])
        .lines()
        .find(|l| l.starts_with("Block count:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .expect("block count")
}

#[test]
fn a_gpt_disk_onto_a_larger_device_moves_its_backup_and_grows_with_grow() {
    if skip("a_gpt_disk_onto_a_larger_device_moves_its_backup_and_grows_with_grow") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (disk, files) = ext4_disk(dir.path());
    let image = dir.path().join("small.img");
    let o = run(&["make", p(&image), &format!("-disk={}", p(&disk))]);
    assert!(o.status.success(), "{}", text(&o));
    let before = part_of(&disk, 1);
    let blocks_before = {
        let l = Loop::part(&disk, before.start, before.size, true);
        ext4_block_count(l.dev())
    };
    for grow in [false, true] {
        let big = dir.path().join(format!("big-{grow}.raw"));
        fs::File::create(&big)
            .and_then(|f| f.set_len(160 * MIB))
            .expect("big");
        let dev = Loop::over(&big);
        let mut args = vec!["restore", p(&image), "-yes"];
        let d = format!("-disk={}", dev.dev());
        args.push(&d);
        if grow {
            args.push("-grow");
        }
        let o = run(&args);
        assert!(o.status.success(), "{}", text(&o));
        let v = sh("sgdisk", &["-v", dev.dev()]);
        assert!(v.contains("No problems found"), "{v}");
        // The backup header is at the new end: sgdisk reads it from there.
        let listing = sh("sgdisk", &["-p", dev.dev()]);
        assert!(
            listing.contains("last usable sector is 327646"),
            "{listing}"
        );
        let after = part_of(Path::new(dev.dev()), 1);
        drop(dev);
        let l = Loop::part(&big, after.start, after.size, true);
        sh("e2fsck", &["-fn", l.dev()]);
        let blocks = ext4_block_count(l.dev());
        if grow {
            assert!(after.size > 150 * MIB, "grown to {} bytes", after.size);
            assert!(
                blocks > blocks_before * 3 / 2,
                "{blocks} blocks, {blocks_before} before"
            );
        } else {
            assert_eq!(after.size, before.size);
            assert_eq!(blocks, blocks_before);
        }
        for (name, data) in &files {
            let out = dir.path().join("back");
            sh(
                "debugfs",
                &["-R", &format!("dump /{name} {}", p(&out)), l.dev()],
            );
            assert!(fs::read(&out).expect("read") == *data, "{name}");
        }
    }
    // A smaller device the partition does not fit on is refused, and left as it was.
    let small = dir.path().join("smaller.raw");
    fs::write(&small, vec![0x77u8; (64 * MIB) as usize]).expect("smaller");
    let dev = Loop::over(&small);
    let o = run(&[
        "restore",
        p(&image),
        &format!("-disk={}", dev.dev()),
        "-yes",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("needs"), "{}", text(&o));
    drop(dev);
    assert!(
        fs::read(&small).expect("read").iter().all(|&b| b == 0x77),
        "target touched"
    );
}

#[test]
fn an_image_that_needs_an_unknown_feature_is_refused_before_the_target_is_opened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("disk.raw");
    imgcast_testlab::sample_disk(&src, 2, 9);
    let image = dir.path().join("disk.img");
    let o = run(&["make", p(&image), &format!("-disk={}", p(&src))]);
    assert!(o.status.success(), "{}", text(&o));
    // Set a must-understand bit this img does not know, and seal the header's checksum again.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("open");
    let mut header = [0u8; 128];
    f.read_exact_at(&mut header, 0).expect("read");
    header[12..16].copy_from_slice(&(1u32 << 31).to_le_bytes());
    let sum = blake3::hash(&header[..120]);
    header[120..128].copy_from_slice(&sum.as_bytes()[..8]);
    f.write_all_at(&header, 0).expect("write");
    let target = dir.path().join("target.raw");
    fs::write(&target, b"precious").expect("target");
    let o = run(&[
        "restore",
        p(&image),
        &format!("-disk={}", p(&target)),
        "-yes",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).to_lowercase().contains("feature"), "{}", text(&o));
    assert_eq!(fs::read(&target).expect("target"), b"precious");
}
