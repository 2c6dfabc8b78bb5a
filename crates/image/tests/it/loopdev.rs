//! Real block devices via loop devices (root only; CI runs as root).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use imgcast_image::{
    incomplete_marker, make, restore, DiskSource, ImageError, Level, MakeOptions, RestoreOptions,
};

use crate::{is_root, mixed_disk, TestResult};

/// An attached loop device, detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(file: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()?;
        if !out.status.success() {
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let dev = String::from_utf8(out.stdout)?.trim().to_string();
        Ok(Self { dev: dev.into() })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A mounted filesystem, unmounted on drop.
struct Mounted {
    dir: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn skip(name: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("SKIPPED {name}: needs root for loop devices (CI runs as root)");
    true
}

fn backing(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let p = dir.join(name);
    fs::write(&p, bytes)?;
    Ok(p)
}

#[test]
fn loop_device_source_and_target() -> TestResult {
    if skip("loop_device_source_and_target") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let chunk = 65536;
    let mut disk = mixed_disk(chunk).repeat(4);
    disk.resize(disk.len().div_ceil(4096) * 4096, 0x11); // loop sizes are sector multiples
    let src_file = backing(dir.path(), "src.raw", &disk)?;
    let src = Loop::attach(&src_file)?;
    assert_eq!(
        DiskSource::open(&src.dev)?.size(),
        disk.len() as u64,
        "size via ioctl"
    );

    let img = dir.path().join("d.img");
    let opts = MakeOptions::new(&src.dev, &img)
        .chunk_size(chunk as u32)
        .level(Level::BALANCED);
    let summary = make(&opts, &|_| {})?;
    assert!(summary.hole_chunks > 0);

    // Target: same size, full of garbage, so holes must really be zeroed.
    let dst_file = backing(dir.path(), "dst.raw", &vec![0xAB; disk.len()])?;
    let dst = Loop::attach(&dst_file)?;
    let rs = restore(&RestoreOptions::new(&img, &dst.dev), &|_| {})?;
    assert_eq!(rs.root_hash, summary.root_hash);
    let mut back = vec![0u8; disk.len()];
    fs::File::open(&dst.dev)?.read_exact_at(&mut back, 0)?;
    assert!(back == disk, "restored device differs from the source");
    assert_eq!(incomplete_marker(&dst.dev)?, None);

    // The backing file of an attached loop device is in use.
    let e = restore(&RestoreOptions::new(&img, &dst_file), &|_| {})
        .err()
        .ok_or("no error")?;
    assert!(
        e.to_string()
            .contains(&format!("in use by {}", dst.dev.display())),
        "{e}"
    );

    // The device shows up in the listing.
    let devs = imgcast_disk::list_block_devices()?;
    assert!(devs
        .iter()
        .any(|d| d.path == dst.dev && d.size == disk.len() as u64));

    // Too small a device: refused, device untouched.
    let small_file = backing(dir.path(), "small.raw", &vec![0x5C; disk.len() / 2])?;
    let small = Loop::attach(&small_file)?;
    let e = restore(&RestoreOptions::new(&img, &small.dev), &|_| {})
        .err()
        .ok_or("no error")?;
    eprintln!("refused as expected: {e}");
    assert!(matches!(e, ImageError::TargetTooSmall { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "target {} is {} bytes; the image needs {}",
            small.dev.display(),
            disk.len() / 2,
            disk.len()
        )
    );
    assert!(
        incomplete_marker(&small.dev)?.is_none(),
        "refused device was marked"
    );
    drop(small);
    assert!(
        fs::read(&small_file)?.iter().all(|&b| b == 0x5C),
        "refused device was written"
    );
    Ok(())
}

#[test]
fn mounted_loop_device_is_refused() -> TestResult {
    if skip("mounted_loop_device_is_refused") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let dev_file = backing(dir.path(), "fs.raw", &vec![0u8; 8 << 20])?;
    let dev = Loop::attach(&dev_file)?;
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&dev.dev)
        .status()?;
    if !st.success() {
        return Err("mkfs.ext4 failed".into());
    }
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt)?;
    if !Command::new("mount")
        .arg(&dev.dev)
        .arg(&mnt)
        .status()?
        .success()
    {
        return Err("mount failed".into());
    }
    let mounted = Mounted { dir: mnt.clone() };
    let before = fs::read(&dev_file)?;

    let img_dir = tempfile::tempdir()?;
    let src = backing(img_dir.path(), "s.raw", &mixed_disk(4096))?;
    let img = img_dir.path().join("s.img");
    make(&MakeOptions::new(&src, &img).chunk_size(4096), &|_| {})?;
    let e = restore(&RestoreOptions::new(&img, &dev.dev), &|_| {})
        .err()
        .ok_or("no error")?;
    let msg = e.to_string();
    eprintln!("refused as expected: {msg}");
    assert!(
        msg.contains("in use") && msg.contains(&mnt.display().to_string()),
        "{msg}"
    );
    drop(mounted);
    let after = fs::read(&dev_file)?;
    // ext4 may update its own superblock at umount; our marker must not be there.
    assert!(
        !after.windows(18).any(|w| w == b"IMGCAST-INCOMPLETE"),
        "mounted device was written"
    );
    assert_eq!(before.len(), after.len());
    Ok(())
}
