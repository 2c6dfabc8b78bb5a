//! A block device whose partition nodes exist: the kernel is told the new
//! size, and the filesystem is resized through the node. Also the record on
//! a block device.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imgcast_retarget::{
    fit_table, read_record, write_record, FitAction, FitOptions, RetargetError,
};

use crate::gpt::ext4_gpt_source;
use crate::record::sample;
use crate::{
    assert_e2fsck_clean, assert_sgdisk_clean, ext_blocks, ext_read_file, noise, p, skip, tool,
    Loop, Res, TestResult, MIB,
};

/// A device node we made (there is no udev here) for a partition we asked
/// the kernel to add: on drop the node is removed and the kernel's
/// partitions deleted, which detaching the loop device alone does not do.
struct Node(PathBuf, PathBuf);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = std::process::Command::new("partx")
            .arg("-d")
            .arg(&self.1)
            .status();
    }
}

/// Asks the kernel for the partitions of `dev` (`partx -a`) and makes the
/// node of partition `number`.
fn partition_node(dev: &Path, number: u32) -> Res<Node> {
    tool("partx", &["-a", p(dev)])?;
    let name = dev.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    let part = format!("{name}p{number}");
    let devnum = fs::read_to_string(format!("/sys/block/{name}/{part}/dev"))?;
    let (maj, min) = devnum.trim().split_once(':').ok_or("dev")?;
    let node = PathBuf::from("/dev").join(&part);
    let _ = fs::remove_file(&node);
    if sys_size(dev, number).is_err() {
        return Err(format!("the kernel did not add {part}").into());
    }
    let guard = Node(node, dev.to_path_buf());
    tool("mknod", &[p(&guard.0), "b", maj, min])?;
    Ok(guard)
}

fn sys_size(dev: &Path, number: u32) -> Res<u64> {
    let name = dev.file_name().and_then(|n| n.to_str()).ok_or("name")?;
    Ok(
        fs::read_to_string(format!("/sys/block/{name}/{name}p{number}/size"))?
            .trim()
            .parse()?,
    )
}

#[test]
fn partition_nodes_are_updated_and_used() -> TestResult {
    if skip("partition_nodes_are_updated_and_used") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (src, files) = ext4_gpt_source(dir.path())?;
    let backing = dir.path().join("dev.raw");
    let size = 80 * MIB;
    fs::write(&backing, noise(size as usize, 4))?;
    fs::OpenOptions::new()
        .write(true)
        .open(&backing)?
        .write_all_at(&fs::read(&src)?, 0)?;
    let dev = Loop::whole(&backing, &[])?;
    let node = partition_node(&dev.dev, 2)?;
    let old_sectors = sys_size(&dev.dev, 2)?;

    let r = fit_table(&dev.dev, &FitOptions::new().grow(true))?;
    for line in r.lines() {
        eprintln!("  {line}");
    }
    assert!(!r.has_refusals());
    assert!(r
        .actions
        .iter()
        .any(|a| matches!(a, FitAction::KernelUpdated { command } if command.contains("resizepart") && command.ends_with(" 2 143360"))));
    let via = r
        .actions
        .iter()
        .find_map(|a| match a {
            FitAction::ResizedFilesystem { device, .. } => Some(device.clone()),
            _ => None,
        })
        .ok_or("not resized")?;
    assert_eq!(via, node.0, "the partition node was not used");
    let new_sectors = sys_size(&dev.dev, 2)?;
    assert!(
        new_sectors > old_sectors + 40_000,
        "{old_sectors} -> {new_sectors}"
    );
    assert_sgdisk_clean(&dev.dev)?;
    assert_e2fsck_clean(&node.0)?;
    let (blocks, bs) = ext_blocks(&node.0)?;
    assert_eq!(blocks * bs, new_sectors * 512 / bs * bs);
    for (name, bytes) in &files {
        assert!(&ext_read_file(&node.0, name)? == bytes, "{name} differs");
    }

    // The record on a block device; its backing file is in use meanwhile.
    write_record(&dev.dev, &sample("dev.img"))?;
    assert_eq!(read_record(&dev.dev)?.map(|r| r.0), Some(sample("dev.img")));
    assert!(matches!(
        write_record(&backing, &sample("x.img")),
        Err(RetargetError::InUse { .. })
    ));
    drop(node);
    drop(dev);
    // What the device showed is what the file holds.
    assert_eq!(read_record(&backing)?.map(|r| r.0), Some(sample("dev.img")));
    Ok(())
}
