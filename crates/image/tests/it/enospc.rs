//! Full filesystems: an injected ENOSPC writer everywhere, and real tmpfs
//! mounts when running as root (CI).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use imgcast_image::{
    incomplete_marker, make, restore, temp_path_for, Compressor, EncodedChunk, Geometry, Header,
    ImageError, ImageWriter, Level, MakeOptions, RestoreOptions,
};

use crate::{is_root, make_image, noise, TestResult};

/// Accepts `room` bytes, then fails like a full disk.
struct FullDisk {
    room: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::Error::from_raw_os_error(28));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn image_writer_reports_no_space_with_offset() -> TestResult {
    let g = Geometry::new(8 * 4096, 4096, Level::STORED)?;
    let mut c = Compressor::new();
    let mut w = ImageWriter::new(
        FullDisk {
            room: 128 + 80 + 4096 + 10,
        },
        Header::new(g, 0),
    )?;
    let bs = g.block_size;
    w.write_chunk(&EncodedChunk::encode(
        0,
        &noise(4096, 1),
        None,
        bs,
        g.level,
        &mut c,
    ))?;
    let e = w
        .write_chunk(&EncodedChunk::encode(
            1,
            &noise(4096, 2),
            None,
            bs,
            g.level,
            &mut c,
        ))
        .err()
        .ok_or("no error")?;
    let off = 128 + 80 + 4096;
    assert!(
        matches!(e, ImageError::ImageNoSpace { offset } if offset == off),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!("no space left writing image at offset {off}")
    );
    Ok(())
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "imgcast-test"])
            .arg(dir)
            .status()?;
        if !st.success() {
            return Err(format!("mount tmpfs on {} failed", dir.display()).into());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn real_full_filesystems() -> TestResult {
    if !is_root() {
        eprintln!("SKIPPED real_full_filesystems: needs root to mount tmpfs (CI runs as root)");
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let small = work.path().join("small");
    fs::create_dir(&small)?;
    let _mnt = Tmpfs::mount(&small, "256k")?;

    // make: the image cannot fit; error names the offset; nothing left behind.
    let src = work.path().join("src.raw");
    fs::write(&src, noise(1 << 20, 4))?;
    let img = small.join("out.img");
    let opts = MakeOptions::new(&src, &img)
        .chunk_size(4096)
        .level(Level::FASTEST);
    let e = make(&opts, &|_| {})
        .err()
        .ok_or("make into a full fs succeeded")?;
    assert!(matches!(e, ImageError::ImageNoSpace { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("no space left writing image at offset "),
        "{e}"
    );
    assert!(!img.exists());
    assert!(!temp_path_for(&img).exists(), "temporary image left behind");

    // restore with a known data size: refused before creating the target.
    let (good, summary) = make_image(work.path(), &noise(1 << 20, 5), Level::FASTEST, 4096)?;
    let target = small.join("t.raw");
    let e = restore(&RestoreOptions::new(&good, &target), &|_| {})
        .err()
        .ok_or("no error")?;
    assert!(
        matches!(e, ImageError::TargetNoRoom { needed, .. } if needed == summary.data_bytes),
        "{e}"
    );
    assert!(!target.exists());

    // streamed restore: size unknown up front; ENOSPC names chunk and offset.
    let e = restore(
        &RestoreOptions::new(&good, &target).sequential(true),
        &|_| {},
    )
    .err()
    .ok_or("no error")?;
    eprintln!("failed as expected: {e}");
    assert!(matches!(e, ImageError::TargetNoSpace { .. }), "{e}");
    assert!(e.to_string().starts_with("no space left on target"), "{e}");
    assert!(
        incomplete_marker(&target)?.is_some(),
        "failed restore lost its marker"
    );
    Ok(())
}
