//! Command-line definitions, in two steps (as ripgrep does): the raw words are
//! first rewritten from the ZENworks forms admins know (`-session NAME -master
//! -clients=5`, `session NAME master clients=5 t=20`) into one canonical GNU form,
//! then clap parses that form. Every option is defined once, below, so `--help`,
//! completions and the man page all come from the same place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Long option names that also accept the ZENworks single-dash spelling
/// (`-session`, `-clients=5`, `-comp=6`).
const SINGLE_DASH_LONG: &[&str] = &[
    "session",
    "master",
    "client",
    "clients",
    "timeout",
    "throttle",
    "slow",
    "ttl",
    "querier",
    "wait",
    "comp",
    "disk",
    "image",
    "interface",
    "port",
    "key",
    "keyfile",
    "json",
    "verify",
    "raw",
    "force",
    "grow",
    "discard",
    "yes",
    "help",
    "version",
    "token",
];

/// One-letter abbreviations of the original (`-s`, `-m`, `-c`) and `-t` for
/// `-timeout`, as the older `t=20` form suggests.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("s", "session"),
    ("m", "master"),
    ("c", "client"),
    ("t", "timeout"),
];

/// Bare words of the older form `img session NAME [master|client] [clients=N [t=MIN]]`.
const OLD_FORM_WORDS: &[(&str, &str)] = &[
    ("master", "master"),
    ("client", "client"),
    ("clients", "clients"),
    ("t", "timeout"),
    ("timeout", "timeout"),
    ("throttle", "throttle"),
    ("wait", "wait"),
    ("comp", "comp"),
    ("disk", "disk"),
    ("image", "image"),
];

/// Rewrites the ZENworks spellings into the canonical form clap parses:
/// `img session NAME [--master|--client] [--clients=N] ...`.
///
/// Words after `--` are left alone. Values stay attached with `=` so that a
/// negative number (`-clients=-1`) reaches the value parser and gets its
/// error there instead of being mistaken for a flag.
pub(crate) fn canonicalize(raw: Vec<OsString>) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::with_capacity(raw.len() + 1);
    let mut iter = raw.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let words: Vec<OsString> = iter.collect();
    let old_form = words.first().and_then(|w| w.to_str()) == Some("session");
    let mut rest: Vec<OsString> = Vec::new();
    let mut passthrough = false;
    for (i, word) in words.into_iter().enumerate() {
        let Some(text) = word.to_str() else {
            rest.push(word);
            continue;
        };
        if passthrough {
            rest.push(word);
            continue;
        }
        if text == "--" {
            passthrough = true;
            rest.push(word);
            continue;
        }
        if let Some(rewritten) = rewrite_single_dash(text) {
            rest.push(rewritten.into());
            continue;
        }
        // Older form: bare `master`, `clients=5`, `t=20` after `session NAME`.
        if old_form && i >= 2 {
            if let Some(rewritten) = rewrite_old_word(text) {
                rest.push(rewritten.into());
                continue;
            }
        }
        rest.push(word);
    }
    // `--session NAME` / `--session=NAME` anywhere (when no subcommand leads)
    // becomes the `session NAME` subcommand.
    if !old_form {
        if let Some(pos) = rest.iter().position(|w| {
            w == "--session" || w.to_str().is_some_and(|s| s.starts_with("--session="))
        }) {
            let word = rest.remove(pos);
            let text = word.to_string_lossy().into_owned();
            let name = if let Some(v) = text.strip_prefix("--session=") {
                Some(OsString::from(v))
            } else if pos < rest.len() {
                Some(rest.remove(pos))
            } else {
                None
            };
            out.push("session".into());
            if let Some(name) = name {
                // `--` keeps a name that begins with '-' from being read as a flag.
                out.push(name);
            }
            out.extend(rest);
            return out;
        }
    }
    out.extend(rest);
    out
}

fn rewrite_single_dash(text: &str) -> Option<String> {
    let body = text.strip_prefix('-')?;
    if body.starts_with('-') || body.is_empty() {
        return None;
    }
    let (key, value) = match body.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (body, None),
    };
    let key_lower = key.to_ascii_lowercase();
    let long = if SINGLE_DASH_LONG.contains(&key_lower.as_str()) {
        key_lower
    } else if let Some((_, long)) = ABBREVIATIONS.iter().find(|(short, _)| *short == key_lower) {
        (*long).to_string()
    } else {
        return None;
    };
    Some(match value {
        Some(v) => format!("--{long}={v}"),
        None => format!("--{long}"),
    })
}

fn rewrite_old_word(text: &str) -> Option<String> {
    let (key, value) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (text, None),
    };
    let key_lower = key.to_ascii_lowercase();
    let (_, long) = OLD_FORM_WORDS.iter().find(|(w, _)| *w == key_lower)?;
    match (value, *long) {
        (None, "master" | "client") => Some(format!("--{long}")),
        (Some(v), _) => Some(format!("--{long}={v}")),
        (None, _) => None,
    }
}

const AFTER_HELP: &str = "\
Session (multicast) mode, as in the ZENworks imaging engine; these are equivalent:
  img -session lab3 -master -clients=5 -timeout=20 -disk=/dev/sda
  img -s lab3 -m -clients=5 -t=20 -disk=/dev/sda
  img session lab3 master clients=5 t=20 disk=/dev/sda
  img --session lab3 --master --clients 5 --timeout 20 --disk /dev/sda
  img -session lab3 -client -disk=/dev/sda

`img` alone, on a terminal, opens the menu (Multicast Session -> Master / Client).

Exit codes: 0 success; 1 the operation failed (the message says why);
2 the command line is wrong.";

/// imgcast: lay one disk image down on many machines at once over IP multicast.
#[derive(Debug, Parser)]
#[command(name = "img", version, about, after_help = AFTER_HELP, max_term_width = 100)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Capture a disk (block device or file) into an image file.
    Make(MakeArgs),
    /// Restore an image file onto a disk (block device or file).
    Restore(RestoreArgs),
    /// Describe an image, or list this machine's block devices.
    Info(InfoArgs),
    /// Multicast session mode (also written `-session NAME`, `-s NAME`).
    #[command(after_help = AFTER_HELP)]
    Session(SessionArgs),
    /// Run a real multicast session in a private network namespace on this machine.
    Demo(DemoArgs),
    /// Run the imaging server: image store, sessions, HTTP API and web dashboard.
    Server(ServerArgs),
    /// Boot media that image machines unattended: build them, or (on them) carry out the boot orders.
    Boot(BootArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// Print the man page img(1), in roff, on stdout.
    Man,
}

/// `img completions SHELL`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    pub(crate) shell: clap_complete::Shell,
}

/// `img boot`.
#[derive(Debug, Args)]
pub(crate) struct BootArgs {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: BootCommand,
}

/// `img boot build` and `img boot run`.
#[derive(Debug, Subcommand)]
pub(crate) enum BootCommand {
    /// Build DIR/vmlinuz, DIR/initrd.img, DIR/imgcast.iso and DIR/pxe/ from this machine's
    /// Debian kernel, busybox-static and this img (see docs/BOOT.md).
    Build(BootBuildArgs),
    /// On the boot media (its init runs it): carry out the img.* orders of the kernel command
    /// line, or open the menu when there are none.
    Run(BootRunArgs),
}

/// `img boot build`.
#[derive(Debug, Args)]
pub(crate) struct BootBuildArgs {
    /// Directory to write the boot files into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Kernel version from /boot and /lib/modules (default: the newest installed).
    #[arg(long, value_name = "VERSION")]
    pub(crate) kernel_version: Option<String>,
    /// HTTP URL of the boot files, written into DIR/pxe/boot.ipxe.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://imgcast-server:8470/boot"
    )]
    pub(crate) base_url: String,
    /// Do not make DIR/imgcast.iso (no grub-mkrescue needed).
    #[arg(long)]
    pub(crate) no_iso: bool,
}

/// `img boot run`.
#[derive(Debug, Args)]
pub(crate) struct BootRunArgs {
    /// Where the kernel command line is read from.
    #[arg(long, value_name = "PATH", default_value = "/proc/cmdline")]
    pub(crate) cmdline: PathBuf,
}

/// `img server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Directory of image files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) images: PathBuf,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8470")]
    pub(crate) listen: std::net::SocketAddr,
    /// SQLite database of the catalogue and session history (default: DIR/.imgcast-server.sqlite).
    #[arg(long, value_name = "PATH")]
    pub(crate) state: Option<PathBuf>,
    /// File holding the API token (created with mode 0600 at first start; default: DIR/.imgcast-token).
    #[arg(long, value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,
    /// Network interface for sessions (default: the interface of the route to the group).
    #[arg(long, value_name = "NAME")]
    pub(crate) interface: Option<String>,
}

/// How a source disk is read: by its filesystems' maps, or raw. Shared by `img make` and a session
/// master, so the options are defined once.
#[derive(Debug, Args, Clone, Copy, Default)]
pub(crate) struct MapArgs {
    /// Image every byte of the disk, free space included (byte-exact); by default only the
    /// partition table and the used blocks of the filesystems img understands are kept.
    #[arg(long)]
    pub(crate) raw: bool,
    /// Read filesystems that are dirty or mounted read-write anyway (their image may be
    /// inconsistent).
    #[arg(long, conflicts_with = "raw")]
    pub(crate) force: bool,
}

impl MapArgs {
    pub(crate) fn mode(self) -> imgcast_image::MapMode {
        if self.raw {
            imgcast_image::MapMode::Raw
        } else {
            imgcast_image::MapMode::Filesystems { force: self.force }
        }
    }
}

/// What a restore does to its target beyond the image's bytes. Shared by `img restore` and a
/// session client.
#[derive(Debug, Args, Clone, Copy, Default)]
pub(crate) struct PlaceArgs {
    /// On a larger target, grow the last partition to the end of the disk and enlarge its ext2/3/4
    /// or NTFS filesystem.
    #[arg(long)]
    pub(crate) grow: bool,
    /// Discard (TRIM) the blocks the image leaves free, where the device supports it.
    #[arg(long)]
    pub(crate) discard: bool,
}

/// `img make`.
#[derive(Debug, Args)]
pub(crate) struct MakeArgs {
    /// The image file to write (written under a temporary name, renamed when
    /// complete), or http://HOST:PORT/NAME to stream it to an imaging server.
    pub(crate) image: PathBuf,
    /// The disk to capture: a block device or a regular file.
    #[arg(long, value_name = "SOURCE")]
    pub(crate) disk: PathBuf,
    /// Compression: 0 none, 1 fastest (default), 6 balanced, 9 smallest.
    #[arg(long, value_name = "0..9", default_value = "1", value_parser = parse_level)]
    pub(crate) comp: u8,
    /// Raw chunk size in KiB (power of two, 64..=16384).
    #[arg(long, value_name = "KIB", default_value_t = 1024, hide = true)]
    pub(crate) chunk_kib: u32,
    #[command(flatten)]
    pub(crate) map: MapArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// API token of the imaging server, when IMAGE is http://HOST:PORT/NAME
    /// (or set IMGCAST_TOKEN).
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub(crate) token: Option<String>,
    /// File holding the API token, when IMAGE is http://HOST:PORT/NAME.
    #[arg(long, value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,
}

/// `img restore`.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The image file to restore ("-" reads the image from standard input).
    pub(crate) image: PathBuf,
    /// The target: a block device or a regular file (created if it does not exist).
    #[arg(long, value_name = "TARGET")]
    pub(crate) disk: PathBuf,
    /// Do not ask before overwriting the target (on a terminal, a block device
    /// or a non-empty file needs a typed confirmation otherwise).
    #[arg(long)]
    pub(crate) yes: bool,
    #[command(flatten)]
    pub(crate) place: PlaceArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `img info`.
#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// An image file (its disk, partitions and chunks), or a disk (its partitions and
    /// filesystems, or that a restore onto it is unfinished), or `zisd` (the image-safe data: what
    /// image a disk received). Without it, lists block devices.
    pub(crate) image: Option<PathBuf>,
    /// With `zisd`: the disk to read (default: every disk of this machine).
    #[arg(value_name = "DISK")]
    pub(crate) disk: Option<PathBuf>,
    /// Check every chunk hash and the root hash.
    #[arg(long)]
    pub(crate) verify: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `-slow`: what the master does with a client that holds the group back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Slow {
    /// Move it to the follow-up run; the others go on at their speed.
    Move,
    /// The group waits for it (it is dropped only after 15 s without progress).
    Wait,
}

impl From<Slow> for imgcast_engine::SlowPolicy {
    fn from(s: Slow) -> Self {
        match s {
            Slow::Move => Self::Move,
            Slow::Wait => Self::Wait,
        }
    }
}

/// `img -session NAME ...`.
#[derive(Debug, Args)]
pub(crate) struct SessionArgs {
    /// The session name; it is hashed into a multicast group 231.x.y.z.
    #[arg(value_name = "NAME")]
    pub(crate) name: String,
    /// This device is the session master (sends its disk or an image file).
    #[arg(long, short = 'm', conflicts_with = "client")]
    pub(crate) master: bool,
    /// This device is a session client (receives and restores).
    #[arg(long, short = 'c')]
    pub(crate) client: bool,
    /// Clients (besides the master) to wait for before starting; without it, only `s` starts.
    #[arg(long, value_name = "COUNT")]
    pub(crate) clients: Option<u32>,
    /// Wait after the last registration before starting anyway: minutes (`20`, `0.5`) or with a unit (`30s`, `2m`, `1h`).
    #[arg(long, value_name = "MINUTES", value_parser = parse_timeout, default_value = "5")]
    pub(crate) timeout: Duration,
    /// Milliseconds between the master's data packets (default: adaptive rate).
    #[arg(long, value_name = "MS", value_parser = parse_throttle)]
    pub(crate) throttle: Option<Duration>,
    /// A client that holds the group back (it alone holds the full window for 2 s, or loses far
    /// more than the rest): `move` it to a follow-up run served right after, or `wait` for it.
    #[arg(long, value_name = "move|wait", value_enum, default_value = "move")]
    pub(crate) slow: Slow,
    /// Multicast TTL of the master's data, 1..255 (default 1: the group stays on the segment);
    /// raise it for routed multicast. Master only: clients send no multicast.
    #[arg(long, value_name = "N", default_value_t = imgcast_engine::DEFAULT_TTL,
          value_parser = clap::value_parser!(u32).range(1..=255), conflicts_with = "client")]
    pub(crate) ttl: u32,
    /// The master acts as IGMP querier on its interface (General Query every 125 s; it steps back
    /// for a querier with a lower address), for switches that snoop IGMP with no querier. Needs
    /// root or CAP_NET_RAW. Master only.
    #[arg(long, conflicts_with = "client")]
    pub(crate) querier: bool,
    /// A client gives up when no session has started after this long (minutes, or `30s`, `2m`, `1h`);
    /// by default it waits as long as it takes. Its disk is never touched before a start.
    #[arg(long, value_name = "MINUTES", value_parser = parse_timeout, conflicts_with = "master")]
    pub(crate) wait: Option<Duration>,
    /// Compression when the master reads a disk: 0 none, 1 fastest (default), 6 balanced, 9 smallest.
    #[arg(long, value_name = "0..9", default_value = "1", value_parser = parse_level)]
    pub(crate) comp: u8,
    /// The disk: the master's source or the client's target (block device or file).
    #[arg(long, value_name = "PATH")]
    pub(crate) disk: Option<PathBuf>,
    /// The master sends this stored image file as it is (not recompressed).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["client", "comp"])]
    pub(crate) image: Option<PathBuf>,
    /// Network interface to use (default: the interface of the route to the group).
    #[arg(long, value_name = "NAME")]
    pub(crate) interface: Option<String>,
    /// UDP port.
    #[arg(long, value_name = "N", default_value_t = imgcast_engine::DEFAULT_PORT)]
    pub(crate) port: u16,
    /// Passphrase: every packet is authenticated; clients need the same one.
    #[arg(long, value_name = "PASSPHRASE", conflicts_with = "keyfile")]
    pub(crate) key: Option<String>,
    /// Read the passphrase from a file.
    #[arg(long, value_name = "PATH")]
    pub(crate) keyfile: Option<PathBuf>,
    /// Do not ask before overwriting the client's disk.
    #[arg(long)]
    pub(crate) yes: bool,
    #[command(flatten)]
    pub(crate) map: MapArgs,
    #[command(flatten)]
    pub(crate) place: PlaceArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `img demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of client machines.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub(crate) clients: u32,
    /// Size of the sample disk in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub(crate) size_mib: u64,
    /// Random loss at each client, in percent.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=50))]
    pub(crate) loss: u8,
}

/// Parses `-comp`: an integer 0..=9.
pub(crate) fn parse_level(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if n <= 9 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a compression level: use 0 (none), 1 (fastest), 6 (balanced) .. 9 (smallest)"
        )),
    }
}

/// Parses `-timeout`: minutes as a number (fractions allowed) or a number with
/// a unit `s`, `m` or `h`.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 60.0)
    };
    let value: f64 = num.trim().parse().map_err(|_| {
        format!("'{s}' is not a timeout: give minutes (20, 0.5) or a unit (30s, 2m, 1h)")
    })?;
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=7.0 * 24.0 * 3600.0).contains(&secs) {
        return Err(format!("timeout '{s}' is out of range (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `-throttle`: milliseconds between packets (fractions allowed).
pub(crate) fn parse_throttle(s: &str) -> Result<Duration, String> {
    let value: f64 = s
        .trim()
        .strip_suffix("ms")
        .unwrap_or(s.trim())
        .parse()
        .map_err(|_| {
            format!("'{s}' is not a throttle: give milliseconds between packets, e.g. 2")
        })?;
    if !value.is_finite() || !(0.0..=10_000.0).contains(&value) {
        return Err(format!("throttle '{s}' is out of range (0 to 10000 ms)"));
    }
    Ok(Duration::from_secs_f64(value / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(words: &[&str]) -> Vec<String> {
        let raw = std::iter::once("img")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect();
        canonicalize(raw)
            .into_iter()
            .skip(1)
            .map(|w| w.into_string().expect("utf8"))
            .collect()
    }

    #[test]
    fn zenworks_forms_are_rewritten() {
        assert_eq!(
            canon(&["-session", "lab", "-master", "-clients=5", "-timeout=20"]),
            ["session", "lab", "--master", "--clients=5", "--timeout=20"]
        );
        assert_eq!(
            canon(&["-s", "lab", "-m", "-t=20"]),
            ["session", "lab", "--master", "--timeout=20"]
        );
        assert_eq!(
            canon(&["session", "lab", "master", "clients=5", "t=20"]),
            ["session", "lab", "--master", "--clients=5", "--timeout=20"]
        );
        assert_eq!(
            canon(&["--session", "lab", "--master", "--clients", "5"]),
            ["session", "lab", "--master", "--clients", "5"]
        );
        assert_eq!(
            canon(&["--session=lab", "-c"]),
            ["session", "lab", "--client"]
        );
        assert_eq!(
            canon(&["make", "x.img", "-disk=/dev/sda", "-comp=6"]),
            ["make", "x.img", "--disk=/dev/sda", "--comp=6"]
        );
        // Negative values stay attached so the value parser reports them.
        assert_eq!(
            canon(&["-s", "a", "-clients=-1"]),
            ["session", "a", "--clients=-1"]
        );
        // Unknown single-dash words are left for clap to reject.
        assert_eq!(canon(&["-bogus"]), ["-bogus"]);
    }

    #[test]
    fn every_form_parses_alike() {
        let forms: [&[&str]; 4] = [
            &[
                "-session",
                "lab",
                "-master",
                "-clients=5",
                "-timeout=20",
                "-disk=/d",
            ],
            &["-s", "lab", "-m", "-clients=5", "-t=20", "-disk=/d"],
            &["session", "lab", "master", "clients=5", "t=20", "disk=/d"],
            &[
                "--session",
                "lab",
                "--master",
                "--clients",
                "5",
                "--timeout",
                "20",
                "--disk",
                "/d",
            ],
        ];
        for form in forms {
            let raw = std::iter::once("img")
                .chain(form.iter().copied())
                .map(OsString::from)
                .collect();
            let cli = Cli::try_parse_from(canonicalize(raw)).expect("parses");
            let Some(Command::Session(s)) = cli.command else {
                panic!("not a session: {form:?}");
            };
            assert_eq!(s.name, "lab");
            assert!(s.master && !s.client);
            assert_eq!(s.clients, Some(5));
            assert_eq!(s.timeout, Duration::from_secs(1200));
            assert_eq!(s.disk.as_deref(), Some(std::path::Path::new("/d")));
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for form in [
            &["-s", "a", "-m", "-clients=-1"][..],
            &["-s", "a", "-m", "-timeout=abc"],
            &["-s", "a", "-m", "-comp=12"],
            &["-s", "a", "-m", "-throttle=x"],
            &["-s", "a", "-m", "-ttl=0"],
            &["-s", "a", "-m", "-ttl=256"],
            &["-s", "a", "-c", "-querier"],
            &["-s", "a", "-m", "-c"],
            &["make", "x", "-disk=y", "-comp=10"],
            &["make", "x", "-disk=y", "-comp=x"],
            &["make", "x", "-disk=y", "-bogus"],
        ] {
            let raw = std::iter::once("img")
                .chain(form.iter().copied())
                .map(OsString::from)
                .collect();
            assert!(
                Cli::try_parse_from(canonicalize(raw)).is_err(),
                "{form:?} was accepted"
            );
        }
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("0.5"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_timeout("abc").is_err());
        assert!(parse_timeout("-1").is_err());
        assert_eq!(parse_throttle("2"), Ok(Duration::from_millis(2)));
        assert!(parse_throttle("x").is_err());
    }
}
