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

const SCRIPT: &str = r#"
set -u
lab_init
lab_up $((N + 1))
for i in $(seq 1 "$N"); do
  [ "$LOSS" -gt 0 ] && lab_loss "h$i" "$LOSS"
done
echo "demo: a LAN of $((N + 1)) hosts: h0 $(lab_ip h0) is the master; clients h1..h$N drop ${LOSS}% of what they receive"
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

/// Runs the demo; fails unless every client's disk equals the source.
pub(crate) fn demo(a: &DemoArgs) -> Result<()> {
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
        .env("PATH", path_with_sbin())
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
