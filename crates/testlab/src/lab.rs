//! The namespace lab: a temporary directory and bash scripts run with
//! lab/lab.sh inside a fresh private user+network+mount namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::lock::{one_at_a_time, OneAtATime};

/// lab/lab.sh, the shell library every lab script is run with.
pub const LAB_SH: &str = include_str!("../../../lab/lab.sh");

/// One lab: its own temporary directory (`$DIR` in scripts), removed on drop,
/// and the lab lock ([`one_at_a_time`]) for as long as it lives.
pub struct Lab {
    dir: tempfile::TempDir,
    img: PathBuf,
    time_limit: Option<Duration>,
    _one: OneAtATime,
}

impl Lab {
    /// Waits for the lab lock, then makes the directory. `img` is the binary
    /// scripts see as `$IMG` (`env!("CARGO_BIN_EXE_img")` in img's tests).
    pub fn new(img: impl Into<PathBuf>) -> Self {
        let one = one_at_a_time();
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            img: img.into(),
            time_limit: None,
            _one: one,
        }
    }

    /// Ends each [`run`](Self::run) after `limit` (TERM, then KILL 5 s
    /// later), so a hung script fails the test instead of stalling it.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in the lab's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `script` (bash, with lab.sh loaded, `set -u` and `lab_init` done)
    /// in a fresh private user+network+mount namespace. `$IMG` is the binary,
    /// `$DIR` the lab's directory, and PATH has /usr/sbin and /sbin.
    pub fn run(&self, script: &str) -> Output {
        let full = format!("{LAB_SH}\nset -u\nlab_init\n{script}");
        let mut cmd = match self.time_limit {
            Some(limit) => {
                let mut c = Command::new("timeout");
                c.args(["-k", "5", &limit.as_secs_f64().to_string(), "unshare"]);
                c
            }
            None => Command::new("unshare"),
        };
        cmd.args([
            "-Urnm",
            "--propagation",
            "private",
            "bash",
            "-c",
            &full,
            "lab-test",
        ])
        .env("IMG", &self.img)
        .env("DIR", self.dir.path())
        .env("LAB_INSIDE", "1")
        .env("PATH", crate::path_with_sbin())
        .output()
        .expect("run unshare")
    }

    /// The text of file `name` in the lab's directory, or a note saying why
    /// there is none.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| format!("<no {name}: {e}>"))
    }

    /// For assertion messages: `out`'s status, stdout and stderr, then each
    /// of the files `logs`.
    pub fn show(&self, out: &Output, logs: &[&str]) -> String {
        let mut s = format!(
            "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for l in logs {
            s += &format!("\n--- {l}\n{}", self.log(l));
        }
        s
    }

    /// Writes [`sample_disk`](crate::sample_disk) `name` into the lab's
    /// directory; returns its path.
    pub fn sample(&self, name: &str, mib: usize, seed: u64) -> PathBuf {
        let path = self.path(name);
        crate::sample_disk(&path, mib, seed);
        path
    }
}
