//! The initrd's archive: a tree of entries written as a `newc` cpio, the
//! format the kernel unpacks into its initial root. Written here, not by
//! `cpio(1)`, so that device nodes (`/dev/console`) and root ownership need
//! no privileges and the order of entries (parents first) is ours.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One entry of the tree.
#[derive(Debug)]
pub(super) enum Node {
    Dir,
    /// A file copied from this machine.
    Copy {
        from: PathBuf,
        mode: u32,
    },
    /// A file given whole.
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

/// Paths (relative, no leading `/`) to entries; sorted, so a directory
/// always comes before what it holds.
#[derive(Debug, Default)]
pub(super) struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Adds `path` and every missing parent directory. A path already
    /// present is kept (the first definition wins).
    pub(super) fn add(&mut self, path: &str, node: Node) {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        for part in Path::new(path).parent().into_iter().flat_map(Path::iter) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(&part.to_string_lossy());
            self.nodes.entry(parent.clone()).or_insert(Node::Dir);
        }
        self.nodes.entry(path.to_string()).or_insert(node);
    }

    pub(super) fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path.trim_start_matches('/'))
    }

    /// Writes the tree as a newc archive to `out`.
    pub(super) fn write_cpio(&self, out: &mut impl Write) -> Result<()> {
        for (ino, (path, node)) in (1..).zip(&self.nodes) {
            let (mode, data, rdev) = match node {
                Node::Dir => (0o040_755, Vec::new(), (0, 0)),
                Node::Copy { from, mode } => (
                    0o100_000 | mode,
                    std::fs::read(from).with_context(|| format!("reading {}", from.display()))?,
                    (0, 0),
                ),
                Node::Bytes { data, mode } => (0o100_000 | mode, data.clone(), (0, 0)),
                Node::Symlink(target) => (0o120_777, target.as_bytes().to_vec(), (0, 0)),
                Node::CharDev(major, minor) => (0o020_600, Vec::new(), (*major, *minor)),
            };
            entry(out, ino, mode, path, &data, rdev)?;
        }
        entry(out, 0, 0, "TRAILER!!!", &[], (0, 0))?;
        Ok(())
    }
}

fn pad4(out: &mut impl Write, len: usize) -> io::Result<()> {
    out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
}

fn entry(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<()> {
    let size = u32::try_from(data.len()).context("a file over 4 GiB in the initrd")?;
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, header.len() + namesize)?;
    out.write_all(data)?;
    pad4(out, data.len())?;
    Ok(())
}

/// Writes `tree` as a zstd-compressed cpio to `path` (the kernel unpacks
/// zstd initrds: Debian's kernels have CONFIG_RD_ZSTD).
pub(super) fn write_initrd(tree: &Tree, path: &Path) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut z = zstd::Encoder::new(io::BufWriter::new(file), 12)?;
    tree.write_cpio(&mut z)?;
    let mut w = z.finish()?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_first_and_aligned() {
        let mut t = Tree::default();
        t.add(
            "bin/busybox",
            Node::Bytes {
                data: b"abc".to_vec(),
                mode: 0o755,
            },
        );
        t.add("bin/sh", Node::Symlink("busybox".into()));
        t.add("dev/console", Node::CharDev(5, 1));
        let mut out = Vec::new();
        t.write_cpio(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let names: Vec<usize> = [
            "bin\0",
            "bin/busybox\0",
            "bin/sh\0",
            "dev\0",
            "TRAILER!!!\0",
        ]
        .iter()
        .map(|n| text.find(n).unwrap())
        .collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        assert!(out.starts_with(b"070701"));
    }
}
