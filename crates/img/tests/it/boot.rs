//! The boot media in real virtual machines: `img boot build` makes them once
//! per test run, then qemu (TCG: KVM guests hang on these machines) boots
//! them with a virtio disk file and a virtio NIC on a tap device on the
//! lab's bridge, inside the test's own private namespaces. A DHCP server
//! (busybox udhcpd) runs in lab host h0. Every VM is bounded by `timeout`
//! and killed with the lab; nothing leaves the machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use imgcast_testlab::{same, Lab};

/// DIR of `img boot build --out DIR`, built once for all tests of this run.
fn media() -> &'static Path {
    static MEDIA: OnceLock<PathBuf> = OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("boot-media");
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("nice")
            .args([
                "-n",
                "10",
                env!("CARGO_BIN_EXE_img"),
                "boot",
                "build",
                "--out",
            ])
            .arg(&dir)
            .output()
            .expect("run img boot build");
        assert!(
            out.status.success(),
            "img boot build failed (bash scripts/setup.sh installs what it needs):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn lab() -> Lab {
    Lab::new(env!("CARGO_BIN_EXE_img")).time_limit(Duration::from_secs(420))
}

/// Shell functions for the scripts: `dhcp` starts udhcpd in h0 (or in
/// `$DHCP_HOST`); `vm NAME
/// SECS QEMU-ARGS...` starts qemu in the background (TCG, no default devices,
/// bounded by `timeout`, killed by lab_down) and sets VM_PID; `nic NAME`
/// makes tap lab-NAME and sets NIC to the qemu arguments of a virtio NIC on
/// it; `serial_file NAME` / `serial_sock NAME` set SERIAL to a serial console
/// logged to $DIR/NAME.serial, or on socket $DIR/NAME.sock for `drive`;
/// `kernel APPEND` sets KERNEL to direct-boot the media with APPEND.
fn prelude(media: &Path) -> String {
    format!(
        r#"
BOOT={media}
cat >"$DIR/drive.py" <<'PYEOF'
{drive}
PYEOF
dhcp() {{
  cat >"$DIR/udhcpd.conf" <<EOF
start 10.77.0.100
end 10.77.0.150
interface eth0
lease_file $DIR/udhcpd.leases
pidfile $DIR/udhcpd.pid
max_leases 50
option subnet 255.255.255.0
option lease 3600
EOF
  : >"$DIR/udhcpd.leases"
  lab_spawn "${{DHCP_HOST:-h0}}" "$DIR/udhcpd.log" busybox udhcpd -f "$DIR/udhcpd.conf" >/dev/null
}}
vmn=0
nic() {{
  vmn=$((vmn + 1))
  lab_tap "$1"
  NIC="-netdev tap,id=n0,ifname=lab-$1,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:0$vmn"
}}
serial_file() {{ SERIAL="-serial file:$DIR/$1.serial"; }}
serial_sock() {{ SERIAL="-chardev socket,id=s0,path=$DIR/$1.sock,server=on,wait=on -serial chardev:s0"; }}
kernel() {{ KERNEL="-kernel $BOOT/vmlinuz -initrd $BOOT/initrd.img"; APPEND="console=ttyS0 quiet $1"; }}
vm() {{
  local name=$1 secs=$2
  shift 2
  nice -n 10 timeout -k 5 "$secs" qemu-system-x86_64 -nodefaults -display none -no-reboot \
    -m 512 -smp 1 "$@" >"$DIR/$name.qemu" 2>&1 &
  VM_PID=$!
  lab_track $VM_PID
}}
drive() {{ timeout -k 2 "$2" python3 "$DIR/drive.py" "$DIR/$1.sock" "$DIR/$1.serial" "$2" "${{@:3}}"; }}
"#,
        media = media.display(),
        drive = DRIVE_PY,
    )
}

/// Writes a `mib` MiB sample disk (whole sectors: a VM disk) and returns its path.
fn disk(lab: &Lab, name: &str, mib: usize, seed: u64) -> PathBuf {
    let p = lab.sample(name, mib, seed);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open");
    f.set_len((mib as u64) << 20).expect("truncate");
    p
}

#[test]
fn two_vms_image_themselves_unattended_and_power_off() {
    let media = media();
    let lab = lab();
    disk(&lab, "src.raw", 16, 41);
    disk(&lab, "vm1.raw", 16, 42);
    disk(&lab, "vm2.raw", 16, 43);
    let script = format!(
        r#"{prelude}
lab_up 1
dhcp
# The imaging server's report endpoint, as img.report sees it: POST bodies kept in reports.jsonl.
cat >"$DIR/report.py" <<'REPORTPY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[1], "ab") as f:
            f.write(body + b"\n")
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
http.server.HTTPServer(("10.77.0.10", 8470), H).serve_forever()
REPORTPY
lab_spawn h0 "$DIR/report.log" python3 "$DIR/report.py" "$DIR/reports.jsonl" >/dev/null
lab_spawn h0 "$DIR/master.log" "$IMG" -session vmtest -master -clients=2 -timeout=5m -disk="$DIR/src.raw" >/dev/null; m=$LAB_LAST_PID
t0=$SECONDS
orders="img.session=vmtest img.role=client img.disk=/dev/vda img.after=poweroff img.report=http://10.77.0.10:8470/api/boot/report"
kernel "$orders"
for v in vm1 vm2; do
  nic $v; serial_file $v
  vm $v 300 $KERNEL -append "$APPEND" $NIC $SERIAL -drive file="$DIR/$v.raw",format=raw,if=virtio
  pids="${{pids:-}} $VM_PID"
done
set -- $pids; v1=$1 v2=$2
lab_wait 300 $m; echo "master exit $?"
lab_wait 60 $v1; echo "vm1 exit $?"
lab_wait 60 $v2; echo "vm2 exit $?"
echo "took $((SECONDS - t0)) s"
lab_down
"#,
        prelude = prelude(media)
    );
    let out = lab.run(&script);
    let text = lab.show(
        &out,
        &[
            "master.log",
            "vm1.serial",
            "vm2.serial",
            "vm1.qemu",
            "udhcpd.log",
        ],
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("master exit 0"), "{text}");
    assert!(
        text.contains("vm1 exit 0") && text.contains("vm2 exit 0"),
        "{text}"
    );
    for vm in ["vm1", "vm2"] {
        assert!(
            lab.log(&format!("{vm}.serial"))
                .contains("imgcast: poweroff"),
            "{text}"
        );
        assert!(
            same(&lab.path("src.raw"), &lab.path(&format!("{vm}.raw"))),
            "{vm} differs\n{text}"
        );
    }
}

/// A serial console driver: connects to qemu's socket, logs every byte to
/// LOG and works through STEPS in order — `expect:TEXT` waits (at most
/// the step's share of the time limit) until TEXT was printed since the last
/// expect, `send:TEXT` types TEXT (`\r`, `\x1b[B` escapes allowed). Exits 0
/// when all steps passed; `sleep:SECS` pauses, 1 on a timeout, printing where it stood.
const DRIVE_PY: &str = r#"
import socket, sys, time
sock_path, log_path, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
steps = sys.argv[4:]
deadline = time.time() + limit
s = None
while time.time() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(sock_path); break
    except OSError:
        s = None; time.sleep(0.1)
if s is None:
    print("drive: no socket", sock_path); sys.exit(1)
s.settimeout(0.2)
log = open(log_path, "wb")
seen = b""
def pump():
    global seen
    try:
        d = s.recv(65536)
    except socket.timeout:
        return True
    if not d:
        return False
    log.write(d); log.flush(); seen += d
    return True
for st in steps:
    kind, _, text = st.partition(":")
    text = text.encode().decode("unicode_escape").encode("latin-1")
    if kind == "sleep":
        time.sleep(float(text)); continue
    if kind == "send":
        for b in text:
            s.sendall(bytes([b])); time.sleep(0.02)
        continue
    while text not in seen:
        if time.time() > deadline or not pump():
            print("drive: timed out waiting for", repr(text)); sys.exit(1)
    seen = seen[seen.index(text) + len(text):]
    print("drive: saw", repr(text), flush=True)
end = time.time() + 1
while time.time() < end and pump():
    pass
sys.exit(0)
"#;

/// Bad orders: an unknown role at boot, then (typed at the shell the machine
/// waits at) a missing disk and a disk that does not exist. Each is shown with
/// the usage, and the disk file is untouched.
#[test]
fn bad_orders_show_the_usage_and_wait_at_a_shell() {
    let media = media();
    let lab = lab();
    disk(&lab, "vm.raw", 4, 51);
    std::fs::copy(lab.path("vm.raw"), lab.path("before.raw")).expect("copy");
    let script = format!(
        r#"{prelude}
kernel "img.session=bad img.role=boss img.disk=/dev/vda"
serial_sock vm
vm vm 150 $KERNEL -append "$APPEND" $SERIAL -drive file="$DIR/vm.raw",format=raw,if=virtio; v=$VM_PID
drive vm 140 \
  'expect:bad boot orders: img.role=boss' 'expect:img.role=client|master' 'expect:imgcast: a shell' 'expect:# ' \
  'send:echo img.session=bad img.role=client >/tmp/c; img boot run --cmdline /tmp/c; echo "rc=$?"\r' \
  'expect:img.disk is missing' 'expect:img.disk=/dev/DISK' 'expect:rc=2' \
  'send:echo img.session=bad img.role=client img.disk=/dev/sdz >/tmp/c; img boot run --cmdline /tmp/c; echo "rc=$?"\r' \
  'expect:img.disk=/dev/sdz: no such disk' 'expect:disks: /dev/vda' 'expect:rc=2' \
  'send:poweroff -f\r'
echo "drive exit $?"
lab_wait 30 $v; echo "vm exit $?"
"#,
        prelude = prelude(media)
    );
    let out = lab.run(&script);
    let text = lab.show(&out, &["vm.serial", "vm.qemu"]);
    assert!(text.contains("drive exit 0"), "{text}");
    assert!(text.contains("vm exit 0"), "{text}");
    assert!(same(&lab.path("vm.raw"), &lab.path("before.raw")), "{text}");
}

/// One VM as the master: it sends its own disk to two clients in namespaces,
/// with a passphrase it fetches over HTTP (`img.keyfile=URL`) from a lab host.
#[test]
fn a_vm_master_images_two_clients_in_namespaces() {
    let media = media();
    let lab = lab();
    disk(&lab, "vm.raw", 16, 61);
    let script = format!(
        r#"{prelude}
lab_up 3
dhcp
mkdir -p "$DIR/keys" && echo "boot media passphrase" >"$DIR/keys/k"
lab_spawn h0 "$DIR/http.log" python3 -m http.server --bind 10.77.0.10 --directory "$DIR/keys" 8000 >/dev/null
for i in 1 2; do
  lab_spawn h$i "$DIR/c$i.log" "$IMG" -session vmm -client -wait=4m -keyfile="$DIR/keys/k" -disk="$DIR/c$i.raw" >/dev/null
  pids="${{pids:-}} $LAB_LAST_PID"
done
kernel "img.session=vmm img.role=master img.disk=/dev/vda img.clients=2 img.keyfile=http://10.77.0.10:8000/k img.after=poweroff"
nic vm; serial_file vm
vm vm 300 $KERNEL -append "$APPEND" $NIC $SERIAL -drive file="$DIR/vm.raw",format=raw,if=virtio; v=$VM_PID
lab_wait 300 $v; echo "vm exit $?"
set -- $pids
lab_wait 30 $1; echo "c1 exit $?"
lab_wait 30 $2; echo "c2 exit $?"
lab_down
"#,
        prelude = prelude(media)
    );
    let out = lab.run(&script);
    let text = lab.show(
        &out,
        &["vm.serial", "c1.log", "c2.log", "vm.qemu", "http.log"],
    );
    assert!(text.contains("vm exit 0"), "{text}");
    assert!(
        text.contains("c1 exit 0") && text.contains("c2 exit 0"),
        "{text}"
    );
    assert!(lab.log("vm.serial").contains("succeeded"), "{text}");
    for c in ["c1.raw", "c2.raw"] {
        assert!(
            same(&lab.path("vm.raw"), &lab.path(c)),
            "{c} differs\n{text}"
        );
    }
}

/// Boots DIR/imgcast.iso from a CD under `firmware` (qemu arguments), takes
/// GRUB's serial entry (key s) and drives the menu on the serial console: the
/// first screen, Enter, the role screen, `c`, the client's form, then back
/// out with Esc and `q` to the shell, where `poweroff -f` ends the VM. The
/// words expected are ones the screen writes whole (ratatui skips the cells
/// that do not change, so a phrase may arrive in pieces).
fn iso_boots_to_the_menu(firmware: &str, limit: u32) {
    let media = media();
    let lab = lab();
    let script = format!(
        r#"{prelude}
serial_sock vm
vm vm {limit} {firmware} -cdrom "$BOOT/imgcast.iso" $SERIAL; v=$VM_PID
drive vm {drive_limit} 'expect:key s' 'send:s' \
  'expect:multicast.' 'sleep:1' 'send:\r' \
  'expect:receive' 'sleep:1' 'send:c' \
  'expect:F2' 'sleep:1' 'send:\x1b' 'sleep:1' 'send:\x1b' 'sleep:1' 'send:q' \
  'expect:imgcast: a shell' 'expect:# ' 'send:poweroff -f\r'
echo "drive exit $?"
lab_wait 30 $v; echo "vm exit $?"
"#,
        prelude = prelude(media),
        drive_limit = limit - 10,
    );
    let out = lab.run(&script);
    let text = lab.show(&out, &["vm.serial", "vm.qemu"]);
    assert!(text.contains("drive exit 0"), "{text}");
    assert!(text.contains("vm exit 0"), "{text}");
}

#[test]
fn iso_boots_to_the_menu_with_bios() {
    iso_boots_to_the_menu("", 150);
}

/// Debian's OVMF (UEFI), with a copy of its variable store.
#[test]
fn iso_boots_to_the_menu_with_uefi() {
    iso_boots_to_the_menu(
        "-machine q35 -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
         -drive if=pflash,format=raw,unit=1,file=$(cp /usr/share/OVMF/OVMF_VARS_4M.fd \"$DIR/vars.fd\" && echo \"$DIR/vars.fd\")",
        240,
    );
}

/// The dnsmasq proxy-DHCP configuration of docs/BOOT.md, for this lab: the
/// imaging server and dnsmasq in h0 (10.77.0.10), the boot files in `boot`.
fn dnsmasq_conf(boot: &Path) -> String {
    let doc = include_str!("../../../../docs/BOOT.md");
    let start = doc
        .find("    # /etc/dnsmasq.d/imgcast.conf")
        .expect("the dnsmasq configuration in docs/BOOT.md");
    doc[start..]
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| l[4..].to_string() + "\n")
        .collect::<String>()
        .replace("10.0.0.5", "10.77.0.10")
        .replace("10.0.0.0", "10.77.0.0")
        .replace("/srv/imgcast/boot", &boot.display().to_string())
}

/// The imaging server boots bare machines into a session with a boot plan:
/// vm1 boots from the network — the site's DHCP server (udhcpd in h1) gives
/// it an address, dnsmasq in proxy mode with the configuration of
/// docs/BOOT.md points its iPXE (the e1000's ROM) at `/boot/ipxe`, which
/// chains to its orders by MAC — and vm2 from the media with only
/// `img.server=URL` on its command line, asking the server for its orders.
/// Both image their virtio disks from the server's image, report to it, and
/// power off; the session shows both reports and both disks equal the source.
#[test]
fn the_imaging_server_boots_planned_hosts_over_pxe_and_img_server() {
    let media = media();
    let lab = lab();
    disk(&lab, "src.raw", 16, 71);
    disk(&lab, "vm1.raw", 16, 72);
    disk(&lab, "vm2.raw", 16, 73);
    std::fs::write(lab.path("dnsmasq.conf"), dnsmasq_conf(media)).expect("dnsmasq.conf");
    let script = format!(
        r#"{prelude}
lab_up 2
mkdir -p "$DIR/images"
"$IMG" make --disk "$DIR/src.raw" "$DIR/images/src.img" >/dev/null
DHCP_HOST=h1 dhcp
# --no-daemon: in the foreground and without changing user (setgroups is denied in a user namespace).
lab_spawn h0 "$DIR/dnsmasq.log" dnsmasq --no-daemon --log-facility=- --conf-file="$DIR/dnsmasq.conf" >/dev/null
lab_spawn h0 "$DIR/server.log" "$IMG" server --listen 10.77.0.10:8470 --images "$DIR/images" --boot-dir "$BOOT" >/dev/null
for _ in $(seq 100); do grep -q "listening on" "$DIR/server.log" && break; sleep 0.2; done
for _ in $(seq 100); do grep -q "src.img verified" "$DIR/server.log" && break; sleep 0.2; done
# dnsmasq's TFTP (what plain PXE firmware loads iPXE from) serves the boot directory.
lab_exec h1 timeout 20 busybox tftp -g -r vmlinuz -l "$DIR/tftp-vmlinuz" 10.77.0.10; echo "tftp exit $?"
api() {{ lab_exec h0 curl -s -m 10 -H "Authorization: Bearer $(cat "$DIR/images/.imgcast-token")" -H "Content-Type: application/json" "$@"; }}
api -d '{{"name":"pxe","image":"src.img","clients":2,"timeout":300,"boot":{{"hosts":["52:54:00:12:34:01","52:54:00:12:34:02"],"disk":"/dev/vda","after":"poweroff"}}}}' \
  http://10.77.0.10:8470/api/sessions >"$DIR/created.json"
id=$(grep -o '"id":[0-9]*' "$DIR/created.json" | head -1 | cut -d: -f2)
echo "session $id"
t0=$SECONDS
lab_tap vm1
vm vm1 300 -device e1000,netdev=n0,mac=52:54:00:12:34:01,romfile=/usr/lib/ipxe/qemu/pxe-e1000.rom \
  -netdev tap,id=n0,ifname=lab-vm1,script=no,downscript=no -boot order=n -serial file:"$DIR/vm1.serial" \
  -drive file="$DIR/vm1.raw",format=raw,if=virtio
v1=$VM_PID
lab_tap vm2
kernel "img.server=http://10.77.0.10:8470"
vm vm2 300 $KERNEL -append "$APPEND" -netdev tap,id=n0,ifname=lab-vm2,script=no,downscript=no \
  -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:02 -serial file:"$DIR/vm2.serial" \
  -drive file="$DIR/vm2.raw",format=raw,if=virtio
v2=$VM_PID
lab_wait 300 $v1; echo "vm1 exit $?"
lab_wait 60 $v2; echo "vm2 exit $?"
echo "took $((SECONDS - t0)) s"
for _ in $(seq 50); do
  api "http://10.77.0.10:8470/api/sessions/$id" >"$DIR/session.json"
  grep -q '"reported":\[{{.*}},{{' "$DIR/session.json" && break
  sleep 0.2
done
lab_down
"#,
        prelude = prelude(media)
    );
    let out = lab.run(&script);
    let text = lab.show(
        &out,
        &[
            "server.log",
            "dnsmasq.log",
            "vm1.serial",
            "vm2.serial",
            "vm1.qemu",
            "udhcpd.log",
            "session.json",
        ],
    );
    assert!(
        text.contains("vm1 exit 0") && text.contains("vm2 exit 0"),
        "{text}"
    );
    assert!(text.contains("tftp exit 0"), "{text}");
    assert!(
        same(&media.join("vmlinuz"), &lab.path("tftp-vmlinuz")),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&lab.log("session.json")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let reported = v["boot"]["reported"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut macs: Vec<&str> = reported.iter().filter_map(|r| r["mac"].as_str()).collect();
    macs.sort_unstable();
    assert_eq!(macs, ["52:54:00:12:34:01", "52:54:00:12:34:02"], "{text}");
    assert!(reported.iter().all(|r| r["ok"] == true), "{text}");
    let server = lab.log("server.log");
    assert!(
        server.contains("boot: 52:54:00:12:34:01 boots into session"),
        "{text}"
    );
    assert!(
        server.contains("boot: 52:54:00:12:34:02 asked for its orders"),
        "{text}"
    );
    assert!(
        lab.log("vm2.serial").contains("imgcast: poweroff"),
        "{text}"
    );
    for vm in ["vm1", "vm2"] {
        assert!(
            same(&lab.path("src.raw"), &lab.path(&format!("{vm}.raw"))),
            "{vm} differs\n{text}"
        );
    }
}
