//! `img demo`: a real multicast session on this machine. It builds a private
//! LAN (a bridge and one network namespace per host, inside an unprivileged
//! user+network namespace, so nothing reaches the real network), writes a
//! sample disk, runs one master and N client processes of this very binary
//! over multicast with packet loss at each client, then checks every restored
//! disk against the source.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::args::DemoArgs;
use crate::cmd_image::{hex, human};
use crate::sample::write_sample_disk;

/// The lab library, embedded so `img demo` needs no files beside the binary.
const LAB: &str = include_str!("../../../lab/lab.sh");

/// Every lab step is checked: one that fails ends the demo with its reason.
const SCRIPT: &str = r#"
set -u
step() { echo "demo: could not $1" >&2; lab_down >/dev/null 2>&1; exit 3; }
lab_init || step "prepare the private namespace (mount a tmpfs on /run)"
lab_up $((N + 1)) || step "build the LAN of $((N + 1)) hosts (bridge, veth pairs, namespaces)"
for i in $(seq 1 "$N"); do
  if [ "$LOSS" -gt 0 ]; then
    lab_loss "h$i" "$LOSS" || step "make h$i drop ${LOSS}% of what it receives (nftables rule)"
  fi
done
if [ "$LOSS" -gt 0 ]; then
  echo "demo: a LAN of $((N + 1)) hosts: h0 $(lab_ip h0) is the master; clients h1..h$N drop ${LOSS}% of what they receive"
else
  echo "demo: a LAN of $((N + 1)) hosts: h0 $(lab_ip h0) is the master; clients h1..h$N (no loss)"
fi
pids=""
for i in $(seq 1 "$N"); do
  lab_spawn "h$i" "$DIR/client$i.log" "$IMG" -session demo -client "-disk=$DIR/client$i.raw" >/dev/null
  pids="$pids $LAB_LAST_PID"
done
sleep 0.3
echo "demo: $ $(basename "$IMG") -session demo -master -clients=$N -disk=sample.raw"
lab_exec h0 timeout 600 "$IMG" -session demo -master "-clients=$N" -timeout=1m "-disk=$DIR/sample.raw" </dev/null
master=$?
lab_wait 60 $pids >/dev/null 2>&1
fail=0
for i in $(seq 1 "$N"); do
  if ! grep -q '^done' "$DIR/client$i.log"; then
    fail=1
    echo "demo: client h$i did not finish:"; sed 's/^/    /' "$DIR/client$i.log"
  fi
done
lab_down >/dev/null 2>&1
[ "$master" -eq 0 ] && [ "$fail" -eq 0 ]
"#;

/// The programs the demo runs, each with the Debian package that has it and
/// what it is for; `nft` only when there is loss to inject.
fn tools(loss: bool) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut t = vec![
        (
            "unshare",
            "util-linux",
            "a private user and network namespace",
        ),
        (
            "ip",
            "iproute2",
            "the namespaces, bridge and veth pairs of the LAN",
        ),
        ("bash", "bash", "the lab script"),
        ("timeout", "coreutils", "bounding the master's run"),
    ];
    if loss {
        t.push((
            "nft",
            "nftables",
            "dropping packets at the clients (--loss)",
        ));
    }
    t
}

/// Whether `name` is an executable file in one of the directories of `path`.
fn on_path(name: &str, path: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).any(|d| {
        std::fs::metadata(d.join(name))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// What the demo cannot do on this machine: every missing tool, by name.
fn missing_tools(loss: bool, path: &str) -> Vec<String> {
    tools(loss)
        .into_iter()
        .filter(|(name, _, _)| !on_path(name, path))
        .map(|(name, pkg, why)| format!("{name} (Debian package {pkg}), needed for {why}"))
        .collect()
}

/// Runs the demo; fails unless every client's disk equals the source.
pub(crate) fn demo(a: &DemoArgs) -> Result<()> {
    let path = path_with_sbin();
    let missing = missing_tools(a.loss > 0, &path);
    if !missing.is_empty() {
        let hint = if a.loss > 0 && missing.len() == 1 && missing[0].starts_with("nft ") {
            "; or run `img demo --loss 0` for a demo without packet loss"
        } else {
            ""
        };
        bail!(
            "the demo cannot run: missing {}{hint}",
            missing.join("; missing ")
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("imgcast-demo-")
        .tempdir()
        .context("making a work directory")?;
    let sample = dir.path().join("sample.raw");
    let size = a.size_mib << 20;
    eprintln!(
        "demo: writing a {} sample disk (random, zeros, text) to {}",
        human(size),
        sample.display()
    );
    write_sample_disk(&sample, size, 1).context("writing the sample disk")?;
    let exe = std::env::current_exe().context("finding this program")?;
    let script = format!("{LAB}\n{SCRIPT}");
    let status = Command::new("unshare")
        .args([
            "-Urnm",
            "--propagation",
            "private",
            "bash",
            "-c",
            &script,
            "img-demo",
        ])
        .env("IMG", &exe)
        .env("DIR", dir.path())
        .env("N", a.clients.to_string())
        .env("LOSS", a.loss.to_string())
        .env("LAB_INSIDE", "1")
        .env("PATH", &path)
        .status()
        .context("running unshare (from util-linux) to make a private network namespace")?;
    let source_hash = file_hash(&sample)?;
    eprintln!("demo: source   blake3 {}", hex(&source_hash));
    let mut bad = 0;
    for i in 1..=a.clients {
        let target = dir.path().join(format!("client{i}.raw"));
        let verdict = match file_hash(&target) {
            Ok(h) if h == source_hash => format!("blake3 {}  identical", hex(&h)),
            Ok(h) => {
                bad += 1;
                format!("blake3 {}  DIFFERS", hex(&h))
            }
            Err(e) => {
                bad += 1;
                format!("missing ({e:#})")
            }
        };
        eprintln!("demo: client{i} {verdict}");
    }
    if status.code() == Some(3) {
        bail!("the demo's lab could not be built (the step that failed is named above)");
    }
    if !status.success() || bad > 0 {
        bail!(
            "the demo session failed ({bad} of {} disks differ)",
            a.clients
        );
    }
    eprintln!(
        "demo: all {} clients hold an identical copy of the sample disk",
        a.clients
    );
    Ok(())
}

fn path_with_sbin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/sbin:/sbin")
}

fn file_hash(path: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named() {
        let none = missing_tools(true, "/nonexistent");
        assert_eq!(none.len(), 5, "{none:?}");
        assert!(none
            .iter()
            .any(|m| m.starts_with("nft (Debian package nftables)")));
        assert!(!missing_tools(false, "/nonexistent")
            .iter()
            .any(|m| m.starts_with("nft ")));
    }
}
