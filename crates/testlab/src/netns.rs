//! A test run again inside its own network namespace, for tests that need
//! multicast but no LAN of hosts.

use std::process::Command;

use crate::lock::{one_at_a_time, INSIDE};

/// Runs test `name` again, alone, in a private user+network namespace with
/// multicast on `lo`; returns true when the caller is that inner run (go on
/// with the test) and false in the outer one (return: the inner run passed,
/// or this panicked with its output). The outer run holds the lab lock
/// ([`one_at_a_time`]) meanwhile.
///
/// ```no_run
/// fn two_sessions_at_once() {
///     if !imgcast_testlab::in_private_netns("two_sessions_at_once") {
///         return;
///     }
///     // ... multicast on lo, nowhere else ...
/// }
/// ```
pub fn in_private_netns(name: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["link", "set", "lo", "up", "multicast", "on"]);
        ip(&["route", "add", "224.0.0.0/4", "dev", "lo"]);
        return true;
    }
    let _one = one_at_a_time();
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new("unshare")
        .args(["-Urn", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .env("PATH", crate::path_with_sbin())
        .output()
        .expect("run unshare");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "inner run of {name} failed:\n{text}"
    );
    false
}
