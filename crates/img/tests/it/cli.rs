//! The `img` command as a user runs it: real processes, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imgcast_testlab::{sample_disk, Lab};

fn img() -> Command {
    Command::new(env!("CARGO_BIN_EXE_img"))
}

pub(crate) fn run(args: &[&str]) -> Output {
    img().args(args).output().expect("run img")
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A sample disk of `mib` MiB and the 4-byte tail (the seed is the same for all).
fn sample(dir: &Path, name: &str, mib: usize) -> PathBuf {
    let path = dir.join(name);
    sample_disk(&path, mib, 1);
    path
}

pub(crate) fn p(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

#[test]
fn make_restore_info_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = sample(dir.path(), "disk.raw", 6);
    let image = dir.path().join("disk.img");
    let target = dir.path().join("restored.raw");

    let o = run(&[
        "make",
        p(&image),
        &format!("-disk={}", p(&disk)),
        "-comp=6",
        "--json",
    ]);
    assert!(o.status.success(), "make failed: {}", text(&o));
    let made: serde_json::Value = serde_json::from_slice(&o.stdout).expect("make --json");
    // 6 MiB and the sample's odd tail.
    assert_eq!(made["disk_size"], (6u64 << 20) + 4);
    assert_eq!(made["level"], 6);
    assert!(made["holes"].as_u64().expect("holes") >= 1);
    // Nothing but the image is left behind: no temporary file.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let o = run(&["info", p(&image), "--json", "--verify"]);
    assert!(o.status.success(), "info failed: {}", text(&o));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).expect("info --json");
    assert_eq!(info["root_hash"], made["root_hash"]);
    assert_eq!(info["chunks"], 7);

    let o = run(&[
        "restore",
        p(&image),
        &format!("-disk={}", p(&target)),
        "--json",
    ]);
    assert!(o.status.success(), "restore failed: {}", text(&o));
    let restored: serde_json::Value = serde_json::from_slice(&o.stdout).expect("restore --json");
    assert_eq!(restored["root_hash"], made["root_hash"]);
    assert_eq!(
        std::fs::read(&disk).expect("disk"),
        std::fs::read(&target).expect("target")
    );

    // The human form names the root hash too.
    let o = run(&["info", p(&image)]);
    assert!(text(&o).contains(made["root_hash"].as_str().expect("hash")));
}

#[test]
fn restore_from_standard_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = sample(dir.path(), "disk.raw", 3);
    let image = dir.path().join("disk.img");
    let target = dir.path().join("restored.raw");
    assert!(run(&["make", p(&image), &format!("--disk={}", p(&disk))])
        .status
        .success());
    let o = img()
        .args(["restore", "-", "--disk", p(&target)])
        .stdin(std::fs::File::open(&image).expect("open image"))
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(&disk).expect("disk"),
        std::fs::read(&target).expect("target")
    );
}

#[test]
fn bad_command_lines_exit_2() {
    for args in [
        &["make", "x.img", "-disk=y", "-comp=10"][..],
        &["make", "x.img", "-disk=y", "-comp=x"],
        &["make", "x.img", "-disk=y", "-frobnicate"],
        &["make", "x.img"],
        &["make", "https://srv:8470/x.img", "-disk=y", "--token=t"],
        &["restore", "x.img"],
        &["-session", "a", "-master", "-client"],
        &["-session", "a", "-master", "-clients=-1"],
        &["-session", "a", "-master", "-timeout=abc"],
        &["-session", "a", "-master", "-comp=12"],
        &["-session", "a", "-master", "-throttle=x"],
        &["-session", "", "-master", "-disk=/dev/null"],
        &["-session", &"x".repeat(65), "-master", "-disk=/dev/null"],
        &["-session", "a", "-client"],
        &["-session", "a", "-master"],
        &["-session", "a"],
        &["-session", "a", "-client", "-image=x.img", "-disk=/tmp/x"],
        &[],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!o.stderr.is_empty(), "{args:?} printed no error");
    }
    let o = run(&["make", "x.img", "-disk=y", "-comp=10"]);
    assert!(text(&o).contains("compression level"), "{}", text(&o));
    let o = run(&["make", "https://srv:8470/x.img", "-disk=y", "--token=t"]);
    assert!(text(&o).contains("only http://"), "{}", text(&o));
}

#[test]
fn missing_source_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("out.img");
    let o = run(&["make", p(&image), "-disk=/nonexistent/disk"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("/nonexistent/disk"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(dir.path()).expect("readdir").count(), 0);
}

#[test]
fn corrupt_image_is_refused_and_target_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = sample(dir.path(), "disk.raw", 4);
    let image = dir.path().join("disk.img");
    assert!(run(&["make", p(&image), &format!("-disk={}", p(&disk))])
        .status
        .success());
    let good = std::fs::read(&image).expect("image");

    let target = dir.path().join("target.raw");
    let before = vec![0xa5u8; 5 << 20];
    // A flipped byte in the header, in the middle (a chunk), and in the tail (index/trailer).
    for (what, at) in [
        ("header", 10),
        ("chunk", good.len() / 2),
        ("trailer", good.len() - 5),
    ] {
        std::fs::write(&target, &before).expect("target");
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&image, &bad).expect("corrupt");
        let o = run(&["restore", p(&image), &format!("-disk={}", p(&target))]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        let after = std::fs::read(&target).expect("target");
        assert!(
            after == before || after[..18] == *b"IMGCAST-INCOMPLETE",
            "{what}: target was changed and not marked incomplete"
        );
        let o = run(&["info", "--verify", p(&image)]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{what}: verify passed a corrupt image"
        );
    }
    // Truncated anywhere: refused.
    for cut in [0, 7, 100, good.len() / 3, good.len() - 1] {
        std::fs::write(&image, &good[..cut]).expect("truncate");
        let o = run(&["info", "--verify", p(&image)]);
        assert_eq!(o.status.code(), Some(1), "cut at {cut}: {}", text(&o));
    }
}

#[test]
fn unfinished_restore_is_reported_by_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = sample(dir.path(), "disk.raw", 4);
    let image = dir.path().join("disk.img");
    assert!(run(&["make", p(&image), &format!("-disk={}", p(&disk))])
        .status
        .success());
    let mut bad = std::fs::read(&image).expect("image");
    let at = bad.len() * 2 / 3;
    bad[at] ^= 1;
    std::fs::write(&image, &bad).expect("corrupt");
    let target = dir.path().join("target.raw");
    let o = run(&["restore", p(&image), &format!("-disk={}", p(&target))]);
    assert_eq!(o.status.code(), Some(1));
    if target.exists() && std::fs::metadata(&target).expect("meta").len() > 0 {
        let o = run(&["info", p(&target)]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("UNFINISHED"), "{}", text(&o));
    }
}

// The full-disk tests mount a small tmpfs in a lab's private mount namespace,
// without touching the machine's mounts.

#[test]
fn full_disk_while_making_leaves_nothing() {
    let lab = Lab::new(env!("CARGO_BIN_EXE_img"));
    lab.sample("disk.raw", 8, 1);
    std::fs::create_dir(lab.path("small")).expect("mkdir");
    let o = lab.run(
        r#"
set -e
mount -t tmpfs -o size=2m none "$DIR/small"
if "$IMG" make "$DIR/small/out.img" -disk="$DIR/disk.raw" -comp=0; then echo MADE; fi
echo "LEFT:$(ls -A "$DIR/small" | tr '\n' ' ')END"
"#,
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        !out.contains("MADE"),
        "make succeeded on a full disk: {out}"
    );
    assert!(out.to_lowercase().contains("no space"), "{out}");
    assert!(
        out.contains("LEFT:END"),
        "a file was left on the full disk: {out}"
    );
}

#[test]
fn full_disk_while_restoring_is_refused() {
    let lab = Lab::new(env!("CARGO_BIN_EXE_img"));
    let disk = lab.sample("disk.raw", 8, 1);
    let image = lab.path("disk.img");
    assert!(run(&["make", p(&image), &format!("-disk={}", p(&disk))])
        .status
        .success());
    std::fs::create_dir(lab.path("small")).expect("mkdir");
    let o = lab.run(
        r#"
set -e
mount -t tmpfs -o size=2m none "$DIR/small"
if "$IMG" restore "$DIR/disk.img" -disk="$DIR/small/target.raw"; then echo RESTORED; fi
ls -A "$DIR/small"
"#,
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        !out.contains("RESTORED"),
        "restore succeeded on a full disk: {out}"
    );
    assert!(out.contains("bytes free; the image needs"), "{out}");
}

#[test]
fn info_lists_block_devices() {
    let o = run(&["info", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v.is_array());
}
