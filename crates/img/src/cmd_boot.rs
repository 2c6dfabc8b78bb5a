//! `img boot build` makes boot media from this machine's Debian packages and
//! the running `img`; `img boot run` is what that media's init runs.
//!
//! ```text
//!  /boot/vmlinuz-V ──────────────────────────────▶ DIR/vmlinuz
//!  busybox, img (+ its libraries), fs tools,
//!  /lib/modules/V (NIC + disk drivers), init ──cpio+zstd──▶ DIR/initrd.img
//!  vmlinuz + initrd.img + grub.cfg ──grub-mkrescue──▶ DIR/imgcast.iso (BIOS + UEFI)
//!  iPXE script, pxelinux and GRUB network configs ──▶ DIR/pxe/
//!
//!  boot: init (mount, modprobe, DHCP) ─▶ img boot run ─▶ orders on /proc/cmdline
//!          ├─ none ─▶ the menu        ├─ wrong ─▶ usage, then a shell
//!          └─ good ─▶ img -session … (line output) ─▶ report ─▶ poweroff/reboot/shell
//! ```

mod cpio;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use imgcast_server::boot::{AfterSession, BootOrders, BootReport, BootRole, ORDERS_USAGE};

use crate::args::{BootArgs, BootBuildArgs, BootCommand, BootRunArgs};
use crate::UsageError;
use cpio::{Node, Tree};

/// The init script (PID 1 of the initrd).
const INIT_SH: &str = include_str!("cmd_boot/init.sh");
/// What busybox udhcpc runs to apply a lease.
const UDHCPC_SCRIPT: &str = include_str!("cmd_boot/udhcpc.script");

/// Drivers put into the initrd (with what they depend on): virtio and the
/// common NICs and disk controllers of PCs and servers. Names as in
/// modules.dep; a name this kernel lacks is skipped.
const MODULES: &[&str] = &[
    // virtual machines
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "vmxnet3",
    "vmw_pvscsi",
    "hv_netvsc",
    "hv_storvsc",
    "xen-netfront",
    "xen-blkfront",
    // NICs
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "r8169",
    "tg3",
    "bnx2",
    "bnx2x",
    "bnxt_en",
    "atlantic",
    "alx",
    "atl1c",
    "8139too",
    "8139cp",
    "pcnet32",
    "ne2k-pci",
    "sky2",
    "forcedeth",
    "be2net",
    "mlx4_en",
    "mlx5_core",
    "r8152",
    "ax88179_178a",
    "cdc_ether",
    // disks
    "ahci",
    "ata_piix",
    "ata_generic",
    "pata_acpi",
    "sd_mod",
    "sr_mod",
    "nvme",
    "mptspi",
    "mptsas",
    "mpt3sas",
    "megaraid_sas",
    "aacraid",
    "hpsa",
    "smartpqi",
    "usb-storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "mmc_block",
    "sdhci_pci",
    // filesystems img may grow or read
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859-1",
    "xfs",
    "btrfs",
];

/// Tools img runs on a disk (filesystem checks and growth, device
/// descriptions, used-block maps); those present on this machine are copied
/// with their libraries. Busybox gives everything else.
const TOOLS: &[&str] = &[
    "blkid",
    "losetup",
    "e2fsck",
    "resize2fs",
    "ntfsresize",
    "partclone.xfs",
    "partclone.btrfs",
    "partclone.fat",
    "partclone.exfat",
    "partclone.ntfs",
];

/// Where the tools are looked for, in order.
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How long `img boot run` waits for `img.disk` to appear (controllers,
/// USB disks probe after the init loaded their drivers).
const DISK_WAIT: Duration = Duration::from_secs(10);

/// `img boot …`.
pub(crate) fn boot(a: &BootArgs) -> Result<()> {
    match &a.command {
        BootCommand::Build(b) => build(b),
        BootCommand::Run(r) => run(r),
    }
}

// ---------------------------------------------------------------- build

fn build(a: &BootBuildArgs) -> Result<()> {
    let kver = match &a.kernel_version {
        Some(v) => v.clone(),
        None => newest_kernel()?,
    };
    let kernel = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
    let moddir = PathBuf::from(format!("/lib/modules/{kver}"));
    if !kernel.is_file() || !moddir.is_dir() {
        bail!(
            "kernel {kver}: {} or {} is missing (install linux-image-amd64; bash scripts/setup.sh does)",
            kernel.display(),
            moddir.display()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let t0 = Instant::now();
    let vmlinuz = a.out.join("vmlinuz");
    std::fs::copy(&kernel, &vmlinuz)
        .with_context(|| format!("copying {} (needs read access)", kernel.display()))?;

    let mut tree = Tree::default();
    for d in [
        "proc", "sys", "dev", "run", "tmp", "mnt", "root", "etc", "sbin",
    ] {
        tree.add(d, Node::Dir);
    }
    tree.add("dev/console", Node::CharDev(5, 1));
    tree.add("dev/null", Node::CharDev(1, 3));
    tree.add(
        "init",
        Node::Bytes {
            data: INIT_SH.as_bytes().to_vec(),
            mode: 0o755,
        },
    );
    tree.add(
        "etc/udhcpc.script",
        Node::Bytes {
            data: UDHCPC_SCRIPT.as_bytes().to_vec(),
            mode: 0o755,
        },
    );
    add_busybox(&mut tree)?;
    let img = std::env::current_exe().context("finding the running img")?;
    let stripped = a.out.join(".img.stripped");
    let img_src = strip_copy(&img, &stripped).unwrap_or(img);
    add_program(&mut tree, &img_src, "bin/img")?;
    let mut tools = Vec::new();
    for tool in TOOLS {
        if let Some(path) = TOOL_DIRS
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
        {
            add_program(&mut tree, &path, &format!("sbin/{tool}"))?;
            tools.push(*tool);
        }
    }
    let modules = add_modules(&mut tree, &moddir, &kver)?;
    let initrd = a.out.join("initrd.img");
    cpio::write_initrd(&tree, &initrd)?;
    let _ = std::fs::remove_file(&stripped);
    println!("{}  kernel {kver}", vmlinuz.display(),);
    println!(
        "{}  {} ({} drivers; tools: {})",
        initrd.display(),
        crate::cmd_image::human(file_len(&initrd)),
        modules,
        if tools.is_empty() {
            "none".to_string()
        } else {
            tools.join(" ")
        }
    );
    write_pxe(&a.out, &a.base_url)?;
    println!(
        "{}  iPXE script, pxelinux and GRUB network configs",
        a.out.join("pxe").display()
    );
    if !a.no_iso {
        let iso = a.out.join("imgcast.iso");
        make_iso(&a.out, &iso)?;
        println!(
            "{}  {} (BIOS and UEFI; CD or USB stick)",
            iso.display(),
            crate::cmd_image::human(file_len(&iso))
        );
    }
    eprintln!("built in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// The newest kernel in /boot that has its modules installed.
fn newest_kernel() -> Result<String> {
    let mut found: Vec<String> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .filter(|v| Path::new("/lib/modules").join(v).is_dir())
        .collect();
    found.sort_by_key(|v| version_key(v));
    found.pop().context(
        "no kernel in /boot with modules in /lib/modules (install linux-image-amd64; bash scripts/setup.sh does)",
    )
}

/// `6.1.0-57-amd64` → [6, 1, 0, 57]: numeric parts compared as numbers.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn add_busybox(tree: &mut Tree) -> Result<()> {
    let bb = Path::new("/bin/busybox");
    let out = Command::new(bb)
        .arg("--list")
        .output()
        .context("running /bin/busybox (install busybox-static; bash scripts/setup.sh does)")?;
    if !out.status.success() {
        bail!("/bin/busybox --list failed");
    }
    if !ldd(bb)?.is_empty() {
        bail!("/bin/busybox is not static: install busybox-static");
    }
    tree.add(
        "bin/busybox",
        Node::Copy {
            from: bb.to_path_buf(),
            mode: 0o755,
        },
    );
    for applet in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            tree.add(&format!("bin/{applet}"), Node::Symlink("busybox".into()));
        }
    }
    Ok(())
}

/// A copy of `img` without its debug information (a debug build is mostly
/// that), when `strip` is installed; `None` keeps the binary as it is.
fn strip_copy(from: &Path, to: &Path) -> Option<PathBuf> {
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| to.to_path_buf())
}

/// Adds the program `from` as `to`, and the shared libraries it loads at
/// their own paths.
fn add_program(tree: &mut Tree, from: &Path, to: &str) -> Result<()> {
    tree.add(
        to,
        Node::Copy {
            from: from.to_path_buf(),
            mode: 0o755,
        },
    );
    for lib in ldd(from)? {
        let name = lib.to_string_lossy().into_owned();
        if !tree.contains(&name) {
            let real = lib
                .canonicalize()
                .with_context(|| format!("library {}", lib.display()))?;
            tree.add(
                &name,
                Node::Copy {
                    from: real,
                    mode: 0o755,
                },
            );
        }
    }
    Ok(())
}

/// The shared libraries (and the loader) `program` needs, as `ldd` resolves
/// them; empty for a static program.
fn ldd(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .env("LC_ALL", "C")
        .output()
        .context("running ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        || text.contains("not a dynamic executable")
        || text.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!(
                "{}: a library is missing: {}",
                program.display(),
                line.trim()
            );
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Adds [`MODULES`] and their dependencies from `moddir`, and the
/// modules.dep / modules.alias lines busybox modprobe needs for them.
/// Returns the number of modules added.
fn add_modules(tree: &mut Tree, moddir: &Path, kver: &str) -> Result<usize> {
    let dep_text = std::fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    let mut deps = std::collections::HashMap::new();
    for line in dep_text.lines() {
        if let Some((m, rest)) = line.split_once(':') {
            deps.insert(
                module_name(m),
                (
                    m.to_string(),
                    line.to_string(),
                    rest.split_whitespace()
                        .map(String::from)
                        .collect::<Vec<_>>(),
                ),
            );
        }
    }
    let by_path: std::collections::HashMap<&str, &str> = deps
        .values()
        .map(|(p, _, _)| p.as_str())
        .zip(deps.keys().map(String::as_str))
        .collect();
    let mut wanted: Vec<String> = MODULES.iter().map(|m| m.replace('-', "_")).collect();
    let mut chosen = std::collections::BTreeSet::new();
    while let Some(m) = wanted.pop() {
        let Some((_, _, needs)) = deps.get(&m) else {
            continue; // built in, or not in this kernel
        };
        if chosen.insert(m.clone()) {
            for n in needs {
                if let Some(name) = by_path.get(n.as_str()) {
                    wanted.push((*name).to_string());
                }
            }
        }
    }
    let base = format!("lib/modules/{kver}");
    let mut dep_out = String::new();
    for m in &chosen {
        let (path, line, _) = &deps[m];
        tree.add(
            &format!("{base}/{path}"),
            Node::Copy {
                from: moddir.join(path),
                mode: 0o644,
            },
        );
        dep_out.push_str(line);
        dep_out.push('\n');
    }
    let alias_text = std::fs::read_to_string(moddir.join("modules.alias")).unwrap_or_default();
    let alias_out: String = alias_text
        .lines()
        .filter(|l| l.rsplit(' ').next().is_some_and(|m| chosen.contains(m)))
        .map(|l| format!("{l}\n"))
        .collect();
    tree.add(
        &format!("{base}/modules.dep"),
        Node::Bytes {
            data: dep_out.into_bytes(),
            mode: 0o644,
        },
    );
    tree.add(
        &format!("{base}/modules.alias"),
        Node::Bytes {
            data: alias_out.into_bytes(),
            mode: 0o644,
        },
    );
    for f in ["modules.builtin", "modules.order"] {
        if moddir.join(f).is_file() {
            tree.add(
                &format!("{base}/{f}"),
                Node::Copy {
                    from: moddir.join(f),
                    mode: 0o644,
                },
            );
        }
    }
    Ok(chosen.len())
}

/// `kernel/drivers/net/virtio_net.ko` → `virtio_net` (dashes as underscores, as the kernel names them).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The GRUB menu of the ISO: the menu on the screen (the default), or on the
/// first serial port; both consoles get the kernel's messages.
const GRUB_CFG: &str = "# imgcast boot media (img boot build)\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=5\n\
         set default=0\n\
         menuentry 'imgcast (menu on the screen)' {\n\
         \x20 linux /imgcast/vmlinuz console=ttyS0,115200n8 console=tty0 quiet\n\
         \x20 initrd /imgcast/initrd.img\n\
         }\n\
         menuentry 'imgcast (menu on the serial port ttyS0; key s)' --hotkey=s {\n\
         \x20 linux /imgcast/vmlinuz console=tty0 console=ttyS0,115200n8 quiet\n\
         \x20 initrd /imgcast/initrd.img\n\
         }\n";

/// DIR/imgcast.iso with grub-mkrescue: a hybrid image (El Torito BIOS and
/// EFI, and an MBR so that `dd` to a USB stick boots too).
fn make_iso(out: &Path, iso: &Path) -> Result<()> {
    let stage = tempfile::tempdir().context("temporary directory for the ISO")?;
    let root = stage.path();
    std::fs::create_dir_all(root.join("boot/grub"))?;
    std::fs::create_dir_all(root.join("imgcast"))?;
    std::fs::write(root.join("boot/grub/grub.cfg"), GRUB_CFG)?;
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(out.join(f), root.join("imgcast").join(f))
            .with_context(|| format!("copying {f} into the ISO"))?;
    }
    for dir in ["/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi"] {
        if !Path::new(dir).is_dir() {
            bail!("{dir} is missing: install grub-pc-bin and grub-efi-amd64-bin (bash scripts/setup.sh does)");
        }
    }
    let res = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(iso)
        .arg(root)
        .args(["--", "-volid", "IMGCAST"])
        .stdin(Stdio::null())
        .output()
        .context("running grub-mkrescue (install grub-common, xorriso, mtools; bash scripts/setup.sh does)")?;
    if !res.status.success() {
        bail!(
            "grub-mkrescue failed: {}",
            String::from_utf8_lossy(&res.stderr).trim()
        );
    }
    Ok(())
}

/// DIR/pxe: an iPXE script that chain-loads from `base` over HTTP, and the
/// pxelinux and GRUB network menus for TFTP (files relative to the TFTP root
/// = DIR). See docs/BOOT.md.
fn write_pxe(out: &Path, base: &str) -> Result<()> {
    let pxe = out.join("pxe");
    std::fs::create_dir_all(pxe.join("pxelinux.cfg"))?;
    let args = imgcast_server::boot::BASE_KERNEL_ARGS;
    std::fs::write(
        pxe.join("boot.ipxe"),
        imgcast_server::boot::render_ipxe(base, None),
    )?;
    std::fs::write(
        pxe.join("pxelinux.cfg/default"),
        format!(
            "# imgcast (img boot build): pxelinux.0 and ldlinux.c32 from Debian's pxelinux/syslinux-common\n\
             # beside this directory; add img.* orders to APPEND for unattended imaging.\n\
             DEFAULT imgcast\n\
             LABEL imgcast\n\
             \x20 KERNEL ../vmlinuz\n\
             \x20 INITRD ../initrd.img\n\
             \x20 APPEND {args}\n"
        ),
    )?;
    std::fs::write(
        pxe.join("grub.cfg"),
        format!(
            "# imgcast (img boot build): GRUB network boot (grub-mknetdir), files from the TFTP root.\n\
             set timeout=3\n\
             menuentry 'imgcast' {{\n\
             \x20 linux ($root)/vmlinuz {args}\n\
             \x20 initrd ($root)/initrd.img\n\
             }}\n"
        ),
    )?;
    Ok(())
}

// ---------------------------------------------------------------- run

fn run(a: &BootRunArgs) -> Result<()> {
    let cmdline = std::fs::read_to_string(&a.cmdline)
        .with_context(|| format!("reading {}", a.cmdline.display()))?;
    let server = match BootOrders::server_from_cmdline(&cmdline) {
        Ok(s) => s,
        Err(e) => return Err(bad_orders(&e.to_string())),
    };
    let mut orders = match BootOrders::from_cmdline(&cmdline) {
        Ok(Some(o)) => o,
        Ok(None) => match &server {
            Some(url) => match ask_server(url)? {
                Some(o) => o,
                None => return menu(),
            },
            None => return menu(),
        },
        Err(e) => return Err(bad_orders(&e.to_string())),
    };
    if let (None, Some(url)) = (&orders.report, &server) {
        orders.report = Some(format!("{url}/api/boot/report"));
    }
    let disk = Path::new(&orders.disk);
    if !wait_for(disk, DISK_WAIT) {
        return Err(bad_orders(&format!(
            "img.disk={}: no such disk after {} s; this machine's disks: {}",
            orders.disk,
            DISK_WAIT.as_secs(),
            disks()
        )));
    }
    let key = match &orders.keyfile {
        Some(k) => Some(fetch_key(k)?),
        None => None,
    };
    let mut args: Vec<String> = vec![
        "-session".into(),
        orders.session.clone(),
        match orders.role {
            BootRole::Client => "-client".into(),
            BootRole::Master => "-master".into(),
        },
        format!("-disk={}", orders.disk),
    ];
    if let Some(n) = orders.clients {
        args.push(format!("-clients={n}"));
    }
    if let Some(t) = &orders.timeout {
        args.push(format!("-timeout={t}"));
    }
    if let Some(c) = orders.comp {
        args.push(format!("-comp={c}"));
    }
    if let Some(k) = &key {
        args.push(format!("-keyfile={}", k.display()));
    }
    println!("imgcast: running img {}", args.join(" "));
    let img = std::env::current_exe().context("finding img")?;
    let t0 = Instant::now();
    // stdin closed: the session prints lines (readable on any console and in
    // logs) and does not ask; the orders are the consent.
    let status = Command::new(&img)
        .args(&args)
        .stdin(Stdio::null())
        .status()
        .context("starting the session")?;
    let ok = status.success();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "imgcast: session '{}' {} after {secs:.0} s",
        orders.session,
        if ok { "succeeded" } else { "FAILED" }
    );
    if let Some(url) = &orders.report {
        if let Err(e) = report(url, &orders, status.code(), secs) {
            println!("imgcast: could not report to {url}: {e:#}");
        }
    }
    if !ok {
        bail!(
            "the session failed (exit {:?}); the machine waits at a shell",
            status.code()
        );
    }
    after(orders.after)
}

/// How long `img.server` is tried while the network comes up or the server starts.
const SERVER_WAIT: Duration = Duration::from_secs(90);

/// The orders the imaging server at `url` holds for one of this machine's
/// MACs; `None` (the menu opens) when it holds none.
fn ask_server(url: &str) -> Result<Option<BootOrders>> {
    let macs = macs();
    if macs.is_empty() {
        println!("imgcast: no network interface with a MAC address: cannot ask {url} for orders");
        return Ok(None);
    }
    let t0 = Instant::now();
    let mut said = false;
    loop {
        let mut unreachable = None;
        for mac in &macs {
            match imgcast_server::client::get(&format!("{url}/api/boot/orders?mac={mac}")) {
                Ok(r) if r.status == 200 => {
                    let line = r.json()["cmdline"].as_str().unwrap_or_default().to_string();
                    println!("imgcast: {url} has orders for {mac}: {line}");
                    return match BootOrders::from_cmdline(&line) {
                        Ok(Some(o)) => Ok(Some(o)),
                        Ok(None) => Err(bad_orders(&format!("{url} sent no orders: '{line}'"))),
                        Err(e) => Err(bad_orders(&format!("{url} sent: {e}"))),
                    };
                }
                Ok(r) if r.status == 404 => {}
                Ok(r) => unreachable = Some(format!("HTTP {}: {}", r.status, r.text().trim())),
                Err(e) => unreachable = Some(e.to_string()),
            }
        }
        let Some(why) = unreachable else {
            println!(
                "imgcast: {url} has no orders for this machine ({}); the menu opens",
                macs.join(", ")
            );
            return Ok(None);
        };
        if t0.elapsed() >= SERVER_WAIT {
            bail!(
                "img.server={url}: no answer after {} s ({why}); the machine waits at a shell",
                SERVER_WAIT.as_secs()
            );
        }
        if !said {
            println!("imgcast: waiting for {url} ({why})");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Shows what is wrong with the orders and the usage; init then opens a shell.
fn bad_orders(why: &str) -> anyhow::Error {
    eprintln!("imgcast: bad boot orders: {why}\n{ORDERS_USAGE}");
    anyhow::Error::new(UsageError(format!("bad boot orders: {why}")))
}

/// With no orders, the menu, as `img` alone on a terminal.
fn menu() -> Result<()> {
    if !crate::tui::available() {
        bail!("no img.* orders and no terminal for the menu\n{ORDERS_USAGE}");
    }
    match crate::tui::menu::run()? {
        Some(session) => crate::cmd_session::run_session(&session, true),
        None => Ok(()),
    }
}

fn wait_for(path: &Path, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if path.exists() {
            return true;
        }
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The block devices the kernel sees, for the message about a missing disk.
fn disks() -> String {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
                .map(|n| format!("/dev/{n}"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        "none (no driver for the disk controller?)".into()
    } else {
        names.join(" ")
    }
}

/// The passphrase file: a path as it is, or an http:// URL fetched into /run.
fn fetch_key(k: &str) -> Result<PathBuf> {
    if !k.starts_with("http://") {
        return Ok(PathBuf::from(k));
    }
    let reply = imgcast_server::client::get(k)
        .and_then(|r| r.ok())
        .with_context(|| format!("fetching img.keyfile={k}"))?;
    let path = PathBuf::from("/run/imgcast.key");
    std::fs::write(&path, reply.text()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// POSTs the result to `url` as JSON.
fn report(url: &str, o: &BootOrders, code: Option<i32>, secs: f64) -> Result<()> {
    let body = serde_json::to_value(BootReport {
        session: o.session.clone(),
        role: match o.role {
            BootRole::Client => "client",
            BootRole::Master => "master",
        }
        .into(),
        disk: o.disk.clone(),
        ok: code == Some(0),
        exit_code: code,
        seconds: secs,
        macs: macs(),
    })?;
    imgcast_server::client::post_json(url, &body)
        .and_then(|r| r.ok())
        .with_context(|| format!("reporting to img.report={url}"))?;
    Ok(())
}

/// This machine's MAC addresses (not loopback's, not all-zero ones), naming it
/// in reports and to the imaging server.
fn macs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name() != OsStr::new("lo"))
                .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
                .filter_map(|s| imgcast_server::boot::normalize_mac(&s))
                .filter(|m| m != "00:00:00:00:00:00")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// Carries out `img.after` once the session succeeded.
fn after(what: AfterSession) -> Result<()> {
    let flag = match what {
        AfterSession::Shell => return Ok(()),
        AfterSession::Poweroff => "poweroff",
        AfterSession::Reboot => "reboot",
    };
    println!("imgcast: {flag}");
    let _ = Command::new("sync").status();
    let st = Command::new(flag)
        .arg("-f")
        .status()
        .with_context(|| format!("running {flag}"))?;
    if !st.success() {
        bail!("{flag} -f failed");
    }
    Ok(())
}
