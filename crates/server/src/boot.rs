//! Boot media support, free of any HTTP framework: the orders a booted
//! machine reads from its kernel command line (`img.session=… img.role=…`),
//! a safe mapping of `/boot/…` request paths into the boot directory that
//! `img boot build` made, and the per-host iPXE script that carries a host's
//! orders; a session's boot plan (which hosts boot into it, onto which disk)
//! and the report a booted machine sends back. The router (`api`) serves them.
//!
//! ```text
//!  img boot build ─▶ DIR/{vmlinuz,initrd.img,pxe/…}      img server --boot-dir DIR
//!  iPXE ── GET /boot/ipxe ─▶ chain_ipxe ─▶ GET /boot/ipxe?mac=M ─▶ render_ipxe(base, plan's orders)
//!       ── GET /boot/… ─▶ resolve_boot_path(DIR, …) ─▶ file
//!  booted init ─▶ img boot run ─▶ BootOrders::from_cmdline(/proc/cmdline) ─▶ session ─▶ BootReport
//!                  └ only img.server=URL ─▶ GET URL/api/boot/orders?mac=M ─▶ the same orders
//! ```
//!
//! The orders are defined here, once: the booted `img` parses them with
//! [`BootOrders::from_cmdline`] and the server writes them with
//! [`BootOrders::to_cmdline`], so the two can never disagree.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a booted machine does in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootRole {
    /// Receives the image onto `img.disk`.
    Client,
    /// Sends `img.disk` to the clients.
    Master,
}

/// What the machine does once the session succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterSession {
    /// Power off (the default: an imaged lab of machines ends switched off,
    /// and a machine that boots from the network again would image itself again).
    #[default]
    Poweroff,
    /// Reboot (into the freshly written disk, when the firmware boots it first).
    Reboot,
    /// Stay at a shell on the console.
    Shell,
}

/// The orders of one boot, from `img.*` words of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOrders {
    /// `img.session=NAME`: the session to join or lead.
    pub session: String,
    /// `img.role=client|master`.
    pub role: BootRole,
    /// `img.disk=/dev/…`: the disk to overwrite (client) or send (master). Never guessed.
    pub disk: String,
    /// `img.clients=N` (master): start when N clients registered.
    pub clients: Option<u32>,
    /// `img.timeout=MIN` (master): as `-timeout`, in its syntax (`20`, `30s`, `2m`).
    pub timeout: Option<String>,
    /// `img.comp=N` (master): compression 0..9, as `-comp`.
    pub comp: Option<u8>,
    /// `img.keyfile=URL|PATH`: the session passphrase, fetched over HTTP or read from a file.
    pub keyfile: Option<String>,
    /// `img.after=poweroff|reboot|shell`.
    pub after: AfterSession,
    /// `img.report=URL`: where the result is POSTed as JSON.
    pub report: Option<String>,
}

/// Why the orders on a command line cannot be carried out. The booted
/// machine shows this with the usage and waits; it never guesses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrdersError {
    /// A word `img.NAME=…` whose NAME is not one of the orders.
    #[error("unknown order 'img.{name}' (known: {known})", known = ORDER_NAMES.join(", "))]
    Unknown {
        /// The NAME of `img.NAME`.
        name: String,
    },
    /// An order with a value it cannot take.
    #[error("img.{name}={value}: {why}")]
    BadValue {
        /// The order's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An order that the others require is absent.
    #[error("img.{name} is missing: {why}")]
    Missing {
        /// The order's name.
        name: &'static str,
        /// Why it is needed.
        why: &'static str,
    },
}

/// The names of the orders, `img.NAME=VALUE` on the kernel command line.
pub const ORDER_NAMES: &[&str] = &[
    "session", "role", "disk", "clients", "timeout", "comp", "keyfile", "after", "report", "server",
];

/// The orders and their meaning, for the console when orders are wrong.
pub const ORDERS_USAGE: &str = "\
Boot orders (kernel command line):
  img.session=NAME          the session to join or lead (required)
  img.role=client|master    receive onto img.disk, or send img.disk (required)
  img.disk=/dev/DISK        the disk to overwrite or send; never guessed (required)
  img.clients=N             master: start when N clients registered
  img.timeout=MIN           master: start MIN after the last registration (30s, 2m)
  img.comp=0..9             master: compression (default 1)
  img.keyfile=URL|PATH      the session passphrase, from http://... or a file
  img.after=poweroff|reboot|shell   after success (default poweroff)
  img.report=URL            POST the result as JSON to this URL
  img.server=http://HOST:PORT   alone: ask this imaging server for the orders
                            of this machine's MAC (and report to it)
With no img.* words the img menu opens on the console.";

impl BootOrders {
    /// The orders on a kernel command line: `Ok(None)` when it has no `img.*`
    /// word at all (the menu opens), an error when an order is unknown,
    /// malformed or missing. Words are split on whitespace; `"…"` quoting,
    /// which the kernel allows, is not needed by any order.
    pub fn from_cmdline(cmdline: &str) -> Result<Option<Self>, OrdersError> {
        let mut session = None;
        let mut role = None;
        let mut disk = None;
        let mut o = Self {
            session: String::new(),
            role: BootRole::Client,
            disk: String::new(),
            clients: None,
            timeout: None,
            comp: None,
            keyfile: None,
            after: AfterSession::default(),
            report: None,
        };
        let mut any = false;
        for word in cmdline.split_whitespace() {
            let Some(order) = word.strip_prefix("img.") else {
                continue;
            };
            let (name, value) = order.split_once('=').unwrap_or((order, ""));
            if name == "server" {
                // Read by server_from_cmdline: alone, it means "ask the server".
                continue;
            }
            any = true;
            let bad = |name: &'static str, why: &'static str| OrdersError::BadValue {
                name,
                value: value.to_string(),
                why,
            };
            match name {
                "session" => {
                    if value.is_empty() {
                        return Err(bad("session", "give a session name"));
                    }
                    session = Some(value.to_string());
                }
                "role" => {
                    role = Some(match value {
                        "client" => BootRole::Client,
                        "master" => BootRole::Master,
                        _ => return Err(bad("role", "the role is client or master")),
                    });
                }
                "disk" => {
                    if !value.starts_with('/') {
                        return Err(bad("disk", "give the disk's path, e.g. /dev/sda"));
                    }
                    disk = Some(value.to_string());
                }
                "clients" => {
                    o.clients = Some(
                        value
                            .parse()
                            .map_err(|_| bad("clients", "a number of clients"))?,
                    );
                }
                "timeout" => {
                    if value.is_empty() {
                        return Err(bad("timeout", "minutes, or 30s, 2m"));
                    }
                    o.timeout = Some(value.to_string());
                }
                "comp" => {
                    o.comp = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|n| *n <= 9)
                            .ok_or_else(|| bad("comp", "a level 0..9"))?,
                    );
                }
                "keyfile" => {
                    if value.is_empty() {
                        return Err(bad("keyfile", "a URL or a path"));
                    }
                    o.keyfile = Some(value.to_string());
                }
                "after" => {
                    o.after = match value {
                        "poweroff" => AfterSession::Poweroff,
                        "reboot" => AfterSession::Reboot,
                        "shell" => AfterSession::Shell,
                        _ => return Err(bad("after", "poweroff, reboot or shell")),
                    };
                }
                "report" => {
                    if !value.starts_with("http://") {
                        return Err(bad("report", "an http:// URL"));
                    }
                    o.report = Some(value.to_string());
                }
                _ => {
                    return Err(OrdersError::Unknown {
                        name: name.to_string(),
                    })
                }
            }
        }
        if !any {
            return Ok(None);
        }
        o.session = session.ok_or(OrdersError::Missing {
            name: "session",
            why: "the session to join or lead",
        })?;
        o.role = role.ok_or(OrdersError::Missing {
            name: "role",
            why: "client or master",
        })?;
        o.disk = disk.ok_or(OrdersError::Missing {
            name: "disk",
            why: "the disk is never guessed",
        })?;
        if o.role == BootRole::Master && o.clients.is_none() {
            return Err(OrdersError::Missing {
                name: "clients",
                why: "an unattended master starts when that many clients registered",
            });
        }
        Ok(Some(o))
    }

    /// The `img.server=URL` of a command line (an `http://` URL, without a
    /// trailing `/`), if it has one.
    pub fn server_from_cmdline(cmdline: &str) -> Result<Option<String>, OrdersError> {
        let mut server = None;
        for word in cmdline.split_whitespace() {
            if let Some(value) = word.strip_prefix("img.server=") {
                if !value.starts_with("http://") || value.len() <= "http://".len() {
                    return Err(OrdersError::BadValue {
                        name: "server",
                        value: value.to_string(),
                        why: "the imaging server's http:// URL, e.g. http://10.0.0.1:8470",
                    });
                }
                server = Some(value.trim_end_matches('/').to_string());
            } else if word == "img.server" {
                return Err(OrdersError::BadValue {
                    name: "server",
                    value: String::new(),
                    why: "the imaging server's http:// URL, e.g. http://10.0.0.1:8470",
                });
            }
        }
        Ok(server)
    }

    /// The orders as kernel command-line words, the inverse of
    /// [`from_cmdline`](Self::from_cmdline). Values are written as given;
    /// a value with whitespace cannot be carried and is the caller's error.
    pub fn to_cmdline(&self) -> String {
        let mut w = vec![
            format!("img.session={}", self.session),
            format!(
                "img.role={}",
                match self.role {
                    BootRole::Client => "client",
                    BootRole::Master => "master",
                }
            ),
            format!("img.disk={}", self.disk),
        ];
        if let Some(n) = self.clients {
            w.push(format!("img.clients={n}"));
        }
        if let Some(t) = &self.timeout {
            w.push(format!("img.timeout={t}"));
        }
        if let Some(c) = self.comp {
            w.push(format!("img.comp={c}"));
        }
        if let Some(k) = &self.keyfile {
            w.push(format!("img.keyfile={k}"));
        }
        w.push(format!(
            "img.after={}",
            match self.after {
                AfterSession::Poweroff => "poweroff",
                AfterSession::Reboot => "reboot",
                AfterSession::Shell => "shell",
            }
        ));
        if let Some(r) = &self.report {
            w.push(format!("img.report={r}"));
        }
        w.join(" ")
    }
}

/// Why a `/boot/…` request path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootPathError {
    /// `..`, an absolute part, a backslash, a NUL or an empty name: the
    /// path would leave the boot directory, or names nothing.
    #[error("'{0}' is not a file of the boot directory")]
    Outside(String),
    /// The path is well formed but nothing regular is there (or it is
    /// a symbolic link out of the boot directory).
    #[error("no boot file '{0}'")]
    NotFound(String),
}

/// The file inside `root` (the directory `img boot build --out` wrote) that
/// the request path `rel` names (what follows `/boot/`). Refuses every path
/// that could leave `root`: `..`, absolute parts, backslashes, NULs, hidden
/// names, and symbolic links whose target lies outside.
pub fn resolve_boot_path(root: &Path, rel: &str) -> Result<PathBuf, BootPathError> {
    let outside = || BootPathError::Outside(rel.to_string());
    if rel.is_empty() || rel.contains(['\\', '\0']) || rel.starts_with('/') {
        return Err(outside());
    }
    let mut joined = root.to_path_buf();
    for part in Path::new(rel).components() {
        match part {
            Component::Normal(p) if !p.to_string_lossy().starts_with('.') => joined.push(p),
            _ => return Err(outside()),
        }
    }
    let not_found = || BootPathError::NotFound(rel.to_string());
    let real_root = root.canonicalize().map_err(|_| not_found())?;
    let real = joined.canonicalize().map_err(|_| not_found())?;
    if !real.starts_with(&real_root) {
        return Err(outside());
    }
    if !real.is_file() {
        return Err(not_found());
    }
    Ok(real)
}

/// What a boot directory must hold for `img server --boot-dir` (iPXE loads these).
pub const BOOT_FILES: &[&str] = &["vmlinuz", "initrd.img"];

/// The kernel command line every boot of the media starts with: both
/// consoles (the last one named is where the menu and shell run), quiet.
pub const BASE_KERNEL_ARGS: &str = "console=ttyS0,115200n8 console=tty0 quiet";

/// An iPXE script that chain-loads `vmlinuz` and `initrd.img` from `base`
/// (an `http://` URL of the boot directory, e.g. `http://server:8470/boot`)
/// with `orders` on the kernel command line (none: the machine opens the menu).
pub fn render_ipxe(base: &str, orders: Option<&BootOrders>) -> String {
    let base = base.trim_end_matches('/');
    let orders = orders
        .map(|o| format!(" {}", o.to_cmdline()))
        .unwrap_or_default();
    format!(
        "#!ipxe\n\
         # imgcast boot media: kernel and initrd over HTTP, orders on the command line.\n\
         kernel {base}/vmlinuz initrd=initrd.img {BASE_KERNEL_ARGS}{orders} || goto failed\n\
         initrd {base}/initrd.img || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo imgcast: could not load the boot files from {base}; a shell follows\n\
         shell\n"
    )
}

/// The iPXE script a machine gets before it has said who it is: it asks
/// again with its MAC, which iPXE fills in (`${netX/mac}`: the NIC it booted from).
pub fn chain_ipxe(server: &str) -> String {
    let server = server.trim_end_matches('/');
    format!(
        "#!ipxe\n\
         # imgcast: ask the imaging server for this machine's orders.\n\
         chain {server}/boot/ipxe?mac=${{netX/mac}} || goto failed\n\
         :failed\n\
         echo imgcast: could not reach {server}; a shell follows\n\
         shell\n"
    )
}

/// Most hosts one boot plan may name.
pub const MAX_BOOT_HOSTS: usize = 4096;

/// A MAC as `aa:bb:cc:dd:ee:ff` (lower case), from that or `AA-BB-…`; `None`
/// for anything else (exactly six two-digit hex bytes).
pub fn normalize_mac(s: &str) -> Option<String> {
    imgcast_engine::net::parse_mac(s.trim()).map(|m| imgcast_engine::net::format_mac(&m))
}

/// Whether `s` can be carried in a kernel command line and an iPXE script
/// as it is: printable ASCII, no spaces, quotes, backslashes, `$` (iPXE
/// expands `${…}`) or `;`, and not too long.
fn cmdline_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'\\$;`".contains(&b))
}

/// A session's boot plan (`"boot"` of `POST /api/sessions`): the hosts, by
/// MAC, that boot into the session as clients, and their orders. A host
/// that boots from the network (or with `img.server=URL`) while the session
/// is live gets `img.session=NAME img.role=client img.disk=DISK …`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootPlan {
    /// The hosts' MACs.
    pub hosts: Vec<String>,
    /// The disk each host overwrites, e.g. `/dev/sda`; the same on every host, never guessed.
    pub disk: String,
    /// What a host does once imaged.
    #[serde(default)]
    pub after: AfterSession,
    /// `img.keyfile`: where a keyed session's hosts fetch the passphrase
    /// (an `http://` URL or a path on the boot media). Never the key itself.
    #[serde(default)]
    pub keyfile: Option<String>,
}

impl BootPlan {
    /// The plan with its MACs normalised, or why it cannot be carried out
    /// for session `session` (keyed or not).
    pub fn checked(mut self, session: &str, keyed: bool) -> Result<Self, String> {
        if !cmdline_safe(session) {
            return Err(format!(
                "session name '{session}' cannot be carried on a kernel command line \
                 (no quotes, backslashes, $ or ; for a session with a boot plan)"
            ));
        }
        if self.hosts.is_empty() || self.hosts.len() > MAX_BOOT_HOSTS {
            return Err(format!(
                "boot.hosts lists 1 to {MAX_BOOT_HOSTS} MAC addresses"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for h in &mut self.hosts {
            let mac = normalize_mac(h).ok_or_else(|| {
                format!("boot.hosts: '{h}' is not a MAC address (aa:bb:cc:dd:ee:ff)")
            })?;
            if !seen.insert(mac.clone()) {
                return Err(format!("boot.hosts: {mac} is listed twice"));
            }
            *h = mac;
        }
        if !self.disk.starts_with("/dev/") || !cmdline_safe(&self.disk) {
            return Err(format!(
                "boot.disk '{}' is not a disk's path (/dev/sda, /dev/nvme0n1)",
                self.disk
            ));
        }
        match &self.keyfile {
            Some(k) if !cmdline_safe(k) || !(k.starts_with("http://") || k.starts_with('/')) => {
                return Err(format!(
                    "boot.keyfile '{k}' is not an http:// URL or an absolute path"
                ));
            }
            None if keyed => {
                return Err(
                    "the session has a key: its boot plan needs boot.keyfile, where the hosts \
                     fetch it (the key itself is never put on a command line)"
                        .into(),
                );
            }
            _ => {}
        }
        Ok(self)
    }

    /// Whether `mac` (normalised) is one of the plan's hosts.
    pub fn has(&self, mac: &str) -> bool {
        self.hosts.iter().any(|h| h == mac)
    }

    /// The orders of a host of this plan in session `session`, reporting to `report`.
    pub fn orders(&self, session: &str, report: Option<String>) -> BootOrders {
        BootOrders {
            session: session.to_string(),
            role: BootRole::Client,
            disk: self.disk.clone(),
            clients: None,
            timeout: None,
            comp: None,
            keyfile: self.keyfile.clone(),
            after: self.after,
            report,
        }
    }
}

/// What a booted machine reports (`POST /api/boot/report`, `img.report=URL`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootReport {
    /// The session's name.
    pub session: String,
    /// `client` or `master`.
    pub role: String,
    /// The disk it wrote or sent.
    pub disk: String,
    /// Whether the session succeeded.
    pub ok: bool,
    /// `img`'s exit code (none: killed by a signal).
    pub exit_code: Option<i32>,
    /// How long the session took.
    pub seconds: f64,
    /// The machine's MAC addresses (which name it in the plan).
    pub macs: Vec<String>,
}

impl fmt::Display for BootOrders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_cmdline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_orders_means_the_menu() {
        assert_eq!(
            BootOrders::from_cmdline("BOOT_IMAGE=/vmlinuz console=ttyS0 quiet"),
            Ok(None)
        );
    }

    #[test]
    fn full_orders_round_trip() {
        let line = "console=ttyS0 img.session=lab3 img.role=master img.disk=/dev/vda \
                    img.clients=2 img.timeout=30s img.comp=6 img.keyfile=http://s/k \
                    img.after=shell img.report=http://s:8470/api/report quiet";
        let o = BootOrders::from_cmdline(line).unwrap().unwrap();
        assert_eq!(o.session, "lab3");
        assert_eq!(o.role, BootRole::Master);
        assert_eq!(o.disk, "/dev/vda");
        assert_eq!(o.clients, Some(2));
        assert_eq!(o.timeout.as_deref(), Some("30s"));
        assert_eq!(o.comp, Some(6));
        assert_eq!(o.after, AfterSession::Shell);
        let again = BootOrders::from_cmdline(&o.to_cmdline()).unwrap().unwrap();
        assert_eq!(again, o);
    }

    #[test]
    fn bad_orders_are_named() {
        let cases = [
            ("img.session=a img.role=boss img.disk=/dev/vda", "role"),
            ("img.session=a img.role=client", "img.disk is missing"),
            ("img.session=a img.disk=/dev/vda", "img.role is missing"),
            (
                "img.role=client img.disk=/dev/vda",
                "img.session is missing",
            ),
            ("img.session=a img.role=client img.disk=vda", "path"),
            (
                "img.session=a img.role=client img.disk=/dev/vda img.colour=red",
                "unknown",
            ),
            (
                "img.session=a img.role=master img.disk=/dev/vda img.comp=12",
                "0..9",
            ),
            (
                "img.session=a img.role=client img.disk=/dev/vda img.after=dance",
                "poweroff",
            ),
            (
                "img.session=a img.role=master img.disk=/dev/vda",
                "img.clients is missing",
            ),
        ];
        for (line, want) in cases {
            let e = BootOrders::from_cmdline(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn boot_paths_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pxe")).unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        std::fs::write(dir.path().join("pxe/boot.ipxe"), b"s").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
        assert!(resolve_boot_path(dir.path(), "vmlinuz").is_ok());
        assert!(resolve_boot_path(dir.path(), "pxe/boot.ipxe").is_ok());
        for bad in [
            "../x",
            "/etc/passwd",
            "pxe/../../x",
            "a\\b",
            ".hidden",
            "",
            "x\0",
        ] {
            assert!(
                matches!(
                    resolve_boot_path(dir.path(), bad),
                    Err(BootPathError::Outside(_))
                ),
                "{bad:?}"
            );
        }
        assert!(resolve_boot_path(dir.path(), "leak").is_err());
        assert!(matches!(
            resolve_boot_path(dir.path(), "pxe"),
            Err(BootPathError::NotFound(_))
        ));
        assert!(matches!(
            resolve_boot_path(dir.path(), "nothing"),
            Err(BootPathError::NotFound(_))
        ));
    }

    #[test]
    fn ipxe_carries_the_orders() {
        let o = BootOrders::from_cmdline("img.session=s img.role=client img.disk=/dev/sda")
            .unwrap()
            .unwrap();
        let s = render_ipxe("http://10.0.0.1:8470/boot/", Some(&o));
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.0.0.1:8470/boot/vmlinuz initrd=initrd.img"));
        assert!(s.contains("img.session=s img.role=client img.disk=/dev/sda img.after=poweroff"));
        assert!(s.contains("initrd http://10.0.0.1:8470/boot/initrd.img"));
        assert!(!render_ipxe("http://h/boot", None).contains("img.session"));
    }
}
