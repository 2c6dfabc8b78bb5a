//! One lab at a time, across threads and across test binaries.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use rustix::fs::{flock, FlockOperation};
use rustix::io::Errno;

/// The other tests of this binary.
static SERIAL: Mutex<()> = Mutex::new(());

/// Set by [`crate::in_private_netns`] for the inner run, whose outer run
/// already holds the file lock (taking it again would wait forever).
pub(crate) const INSIDE: &str = "IMGCAST_TEST_NETNS";

/// Held while a lab runs; dropping it lets the next one start.
#[must_use = "the lab lock is released when this is dropped"]
pub struct OneAtATime {
    // Closing the file releases the flock; declared first so it goes first.
    _flock: Option<File>,
    _serial: MutexGuard<'static, ()>,
}

/// Waits until no other lab runs, in this process or in any other test
/// binary using this crate, and returns the guard that keeps it so.
///
/// Also for tests that build their own namespaces without a [`crate::Lab`]
/// (`img demo`).
pub fn one_at_a_time() -> OneAtATime {
    // A test that panicked while holding the lock poisons it; the next lab is
    // still fine to run.
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let flock = std::env::var_os(INSIDE).is_none().then(lock_file);
    OneAtATime {
        _flock: flock,
        _serial: serial,
    }
}

/// The fixed lock file: the same for every checkout, so labs of parallel
/// worktrees on one machine take turns too.
fn lock_path() -> PathBuf {
    std::env::temp_dir().join("imgcast-testlab.lock")
}

fn lock_file() -> File {
    let path = lock_path();
    // flock works on a read-only descriptor too: a file another user created
    // still serves.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .or_else(|_| File::open(&path))
        .unwrap_or_else(|e| panic!("testlab: open {}: {e}", path.display()));
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => return file,
        Err(Errno::WOULDBLOCK) => eprintln!(
            "testlab: another test binary runs a lab; waiting for {}",
            path.display()
        ),
        Err(e) => panic!("testlab: flock {}: {e}", path.display()),
    }
    loop {
        match flock(&file, FlockOperation::LockExclusive) {
            Ok(()) => return file,
            Err(Errno::INTR) => continue,
            Err(e) => panic!("testlab: flock {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_excludes_another_process() {
        let _one = one_at_a_time();
        // flock(1) from util-linux stands in for another test binary.
        let out = std::process::Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "42"])
            .arg(lock_path())
            .arg("true")
            .output()
            .expect("run flock");
        assert_eq!(out.status.code(), Some(42), "{out:?}");
    }
}
