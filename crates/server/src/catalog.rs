//! The image directory: which names are allowed, how an image file is checked
//! before it is listed, and how an upload becomes an image.
//!
//! ```text
//!  PUT body ─▶ Tee ─▶ StreamReader (structure, record by record)
//!               └──▶ .NAME.upload-tmp ─▶ ImageReader::verify (every chunk) ─▶ rename ─▶ catalogue
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use imgcast_image::{self as image, ImageReader, StreamReader};

use crate::store::ImageRecord;
use crate::{now_unix, ServerError};

/// Longest image name accepted.
pub(crate) const MAX_NAME: usize = 128;

/// Checks an image name: 1..=128 of `A-Z a-z 0-9 . _ -`, not starting with a
/// dot (hidden files are the server's own: state, token, temporary uploads).
/// So a name can never leave the image directory.
pub(crate) fn check_name(name: &str) -> Result<(), ServerError> {
    let bad = |why: &str| ServerError::BadRequest(format!("image name '{name}' {why}"));
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(bad("must be 1 to 128 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("must not start with a dot"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("may hold only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Modification time of a file, seconds since the epoch (0 if unknown).
pub(crate) fn mtime(path: &Path) -> u64 {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Opens an image, verifies every chunk and the root hash, and describes it.
pub(crate) fn verify_file(name: &str, path: &Path) -> Result<ImageRecord, ServerError> {
    let reader = ImageReader::open(path).map_err(|e| ServerError::BadImage {
        name: name.to_string(),
        why: e.to_string(),
    })?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    reader
        .verify_with_threads(threads, &|_| {})
        .map_err(|e| ServerError::BadImage {
            name: name.to_string(),
            why: e.to_string(),
        })?;
    let g = reader.geometry();
    Ok(ImageRecord {
        name: name.to_string(),
        size: g.disk_size,
        stored_bytes: reader.index().iter().map(|e| u64::from(e.stored_len)).sum(),
        file_bytes: reader.image_len(),
        chunk_size: g.chunk_size,
        chunks: g.chunk_count,
        level: g.level.get(),
        root_hash: image::hex(&reader.root_hash()),
        created: reader.header().created,
        verified: now_unix(),
        mtime: mtime(path),
        description: String::new(),
    })
}

/// Bytes free for an unprivileged writer in the filesystem of `dir`.
pub(crate) fn free_space(dir: &Path) -> Result<u64, ServerError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| ServerError::io("reading the free space of", dir, e.into()))?;
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The image files of the directory: regular, non-hidden files with a valid name.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, ServerError> {
    let entries = fs::read_dir(dir).map_err(|e| ServerError::io("listing", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ServerError::io("listing", dir, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if check_name(&name).is_err() {
            continue;
        }
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The temporary name of an upload in progress.
pub(crate) fn upload_temp(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.upload-tmp"))
}

/// Copies what is read into a file as well.
struct Tee<R, W> {
    inner: R,
    copy: W,
    bytes: u64,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Removes the temporary file unless disarmed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Receives an image from `body` into `final_path`: written under a temporary
/// name, its structure checked as it streams (a body cut short fails here),
/// then every chunk verified, and only then renamed into place. On any error
/// nothing is left behind and the final name is untouched.
pub(crate) fn receive_upload(
    name: &str,
    dir: &Path,
    body: &mut dyn Read,
) -> Result<ImageRecord, ServerError> {
    let tmp = upload_temp(dir, name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ServerError::io("creating", &tmp, e))?;
    let guard = TempFile(Some(tmp.clone()));
    let mut tee = Tee {
        inner: body,
        copy: BufWriter::with_capacity(1 << 20, &file),
        bytes: 0,
    };
    let bad = |why: String| ServerError::BadImage {
        name: name.to_string(),
        why,
    };
    {
        let mut stream = StreamReader::new(&mut tee).map_err(|e| bad(e.to_string()))?;
        while stream
            .next_chunk()
            .map_err(|e| bad(e.to_string()))?
            .is_some()
        {}
    }
    // The image must end where its trailer says.
    let mut extra = [0u8; 1];
    if tee
        .inner
        .read(&mut extra)
        .map_err(|e| ServerError::io("reading the upload", &tmp, e))?
        > 0
    {
        return Err(bad("bytes follow the image's trailer".into()));
    }
    tee.copy
        .flush()
        .map_err(|e| ServerError::io("writing", &tmp, e))?;
    drop(tee);
    file.sync_all()
        .map_err(|e| ServerError::io("fsync", &tmp, e))?;
    drop(file);
    let mut rec = verify_file(name, &tmp)?;
    let final_path = dir.join(name);
    fs::rename(&tmp, &final_path).map_err(|e| ServerError::io("renaming", &final_path, e))?;
    let mut guard = guard;
    guard.0 = None;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    rec.mtime = mtime(&final_path);
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_directory() {
        for good in ["win11.img", "a", "lab-3_v2.IMG"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            ".hidden",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
