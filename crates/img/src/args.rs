//! Command-line definitions, in two steps (as ripgrep does): the raw words are
//! first rewritten from the ZENworks forms admins know (`-session NAME -master
//! -clients=5`, `session NAME master clients=5 t=20`) into one canonical GNU form,
//! then clap parses that form. Every option is defined once, below, so `--help`,
//! completions and the man page all come from the same place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// Rewrites the ZENworks spellings into the canonical form clap parses:
/// `img session NAME [--master|--client] [--clients=N] ...`.
///
/// Which words are options comes from the clap definitions below, so there is
/// no second list to forget an option in: a word in option position (not the
/// value of the option before it) that is `-NAME` or `-NAME=V` for a long
/// option `--NAME` of the command (any case), or `-X`/`-X=V` for its short
/// option, becomes `--NAME`/`--NAME=V`. An option that takes a value and has
/// none attached takes the next word as its value, untouched (`-key -m`
/// keeps `-m` as the passphrase). Values stay attached with `=` so that a
/// negative number (`-clients=-1`) or a value that begins with `-` reaches the
/// value parser instead of being mistaken for a flag. Words after `--` are
/// left alone.
///
/// The session subcommand is also entered as `-session NAME`, `-s NAME` or
/// `--session NAME` anywhere on a line that no subcommand leads (its clap
/// long and short flags), and in the older form `img session NAME master
/// clients=5 t=20`, whose bare words are its options without dashes.
pub(crate) fn canonicalize(raw: Vec<OsString>) -> Vec<OsString> {
    let mut root = Cli::command();
    root.build();
    let mut iter = raw.into_iter();
    let mut out: Vec<OsString> = iter.next().into_iter().collect();
    let words: Vec<OsString> = iter.collect();
    let first = words.first().and_then(|w| w.to_str()).unwrap_or("");
    let session = root.find_subcommand("session");
    let (cmd, lead) = match root.find_subcommand(first) {
        Some(sub) if !first.starts_with('-') => (Some(sub), true),
        // No subcommand leads: the session's options, entered by its flag.
        _ => (session, false),
    };
    let old_form = lead && first == "session";
    let mut rest: Vec<OsString> = Vec::new();
    let mut session_name: Option<OsString> = None;
    let mut entered_session = false;
    let mut i = usize::from(lead);
    if lead {
        rest.push(words[0].clone());
    }
    // The positional NAME of the old form comes right after `session`.
    if old_form && words.len() > 1 {
        rest.push(words[1].clone());
        i = 2;
    }
    while i < words.len() {
        let word = &words[i];
        i += 1;
        let Some(text) = word.to_str() else {
            rest.push(word.clone());
            continue;
        };
        if text == "--" {
            rest.extend(words[i - 1..].iter().cloned());
            break;
        }
        if !lead && !entered_session {
            if let Some(sub) = session {
                if let Some(name) = session_entry(sub, text) {
                    entered_session = true;
                    session_name = match name {
                        Some(n) => Some(n.into()),
                        None if i < words.len() => {
                            i += 1;
                            Some(words[i - 1].clone())
                        }
                        None => None,
                    };
                    continue;
                }
            }
        }
        let Some(cmd) = cmd else {
            rest.push(word.clone());
            continue;
        };
        let parsed = option_word(cmd, text)
            .or_else(|| {
                if !lead {
                    option_word(&root, text)
                } else {
                    None
                }
            })
            .or_else(|| old_form.then(|| old_word(cmd, text)).flatten());
        match parsed {
            Some((long, takes_value, value)) => match (takes_value, value) {
                (_, Some(v)) => rest.push(format!("--{long}={v}").into()),
                (true, None) if i < words.len() => {
                    let mut w = OsString::from(format!("--{long}="));
                    w.push(&words[i]);
                    rest.push(w);
                    i += 1;
                }
                _ => rest.push(format!("--{long}").into()),
            },
            None => {
                rest.push(word.clone());
                // A GNU `--opt VALUE` or `-o VALUE` the user wrote: its value stays as it is.
                if let Some(arg) = gnu_option(cmd, text) {
                    if arg.get_action().takes_values() && !text.contains('=') && i < words.len() {
                        rest.push(words[i].clone());
                        i += 1;
                    }
                }
            }
        }
    }
    if entered_session {
        out.push("session".into());
        out.extend(session_name);
    }
    out.extend(rest);
    out
}

/// `-session`, `-s`, `--session` (with `=NAME` or not): the session's entry
/// flags, as its clap definition names them. `Some(None)`: the name follows.
fn session_entry(session: &clap::Command, text: &str) -> Option<Option<String>> {
    let body = text.strip_prefix("--").or_else(|| text.strip_prefix('-'))?;
    let (key, value) = match body.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (body, None),
    };
    let long = session.get_long_flag().unwrap_or("session");
    let short = session.get_short_flag();
    let is_short = key.len() == 1 && key.chars().next() == short && !text.starts_with("--");
    (key.eq_ignore_ascii_case(long) || is_short).then_some(value)
}

/// A single-dash option word of `cmd`: its long name, whether it takes a
/// value, and the value attached with `=`.
fn option_word(cmd: &clap::Command, text: &str) -> Option<(String, bool, Option<String>)> {
    let body = text.strip_prefix('-')?;
    if body.is_empty() || body.starts_with('-') {
        return None;
    }
    let (key, value) = match body.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (body, None),
    };
    let arg = find_arg(cmd, key)?;
    Some((
        arg.get_long()?.to_string(),
        arg.get_action().takes_values(),
        value,
    ))
}

/// A bare word of the older form (`master`, `clients=5`, `t=20`): an option
/// of `cmd` without its dash. A bare name of an option that takes a value
/// needs its `=VALUE`, or it is a positional word.
fn old_word(cmd: &clap::Command, text: &str) -> Option<(String, bool, Option<String>)> {
    if text.starts_with('-') {
        return None;
    }
    let (key, value) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (text, None),
    };
    let arg = find_arg(cmd, key)?;
    let takes = arg.get_action().takes_values();
    if takes && value.is_none() {
        return None;
    }
    Some((arg.get_long()?.to_string(), takes, value))
}

/// The option of `cmd` whose long name is `key` (any case) or whose short
/// name is the one letter `key`.
fn find_arg<'a>(cmd: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    let mut chars = key.chars();
    let one = match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    };
    cmd.get_arguments().find(|a| {
        !a.is_positional()
            && (a.get_long().is_some_and(|l| l.eq_ignore_ascii_case(key))
                || (one.is_some() && a.get_short() == one))
    })
}

/// The option a GNU-form word (`--name`, `--name=V`, `-x`) names, if any.
fn gnu_option<'a>(cmd: &'a clap::Command, text: &str) -> Option<&'a clap::Arg> {
    if let Some(long) = text.strip_prefix("--") {
        let key = long.split('=').next().unwrap_or(long);
        return cmd.get_arguments().find(|a| a.get_long() == Some(key));
    }
    let body = text.strip_prefix('-')?;
    let mut chars = body.chars();
    let c = chars.next()?;
    // `-xVALUE` carries its value; only a lone `-x` takes the next word.
    if chars.next().is_some() {
        return None;
    }
    cmd.get_arguments().find(|a| a.get_short() == Some(c))
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
    #[command(after_help = AFTER_HELP, short_flag = 's', long_flag = "session")]
    Session(SessionArgs),
    /// Run a real multicast session in a private network namespace on this machine.
    Demo(DemoArgs),
    /// Run the imaging server: image store, sessions, HTTP API and web dashboard.
    Server(ServerArgs),
    /// Boot media that image machines unattended: build them, or (on them) carry out the boot orders.
    Boot(BootArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// Print a man page, in roff, on stdout: img(1), or img-SUBCOMMAND(1) of one subcommand;
    /// or write every page to a directory.
    Man(ManArgs),
}

/// `img man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// The subcommand whose page to print (make, restore, info, session, demo, server, ...).
    #[arg(value_name = "SUBCOMMAND")]
    pub(crate) subcommand: Option<String>,
    /// Write img.1 and one img-SUBCOMMAND.1 per subcommand into this directory instead.
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    pub(crate) dir: Option<PathBuf>,
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
    /// Serve the boot files of DIR (from `img boot build --out DIR`) at /boot/, with per-host
    /// orders at /boot/ipxe?mac=M for sessions with a boot plan (see docs/BOOT.md).
    #[arg(long, value_name = "DIR")]
    pub(crate) boot_dir: Option<PathBuf>,
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
    #[arg(long, short = 't', value_name = "MINUTES", value_parser = parse_timeout, default_value = "5")]
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

    /// Regression (issue 13): values are never rewritten, and every option of
    /// the clap definitions has its single-dash form, with no list to forget one in.
    #[test]
    fn only_words_in_option_position_are_rewritten() {
        assert_eq!(
            canon(&["-s", "lab", "-m", "-key", "-m"]),
            ["session", "lab", "--master", "--key=-m"]
        );
        assert_eq!(
            canon(&["-session", "lab", "-client", "-disk", "-comp", "-yes"]),
            ["session", "lab", "--client", "--disk=-comp", "--yes"]
        );
        assert_eq!(
            canon(&[
                "server",
                "-images",
                "/srv",
                "-listen=0.0.0.0:8470",
                "-token-file",
                "/t"
            ]),
            [
                "server",
                "--images=/srv",
                "--listen=0.0.0.0:8470",
                "--token-file=/t"
            ]
        );
        // A GNU option's value stays as it is, too.
        assert_eq!(
            canon(&["--session", "lab", "--key", "-master", "-c"]),
            ["session", "lab", "--key", "-master", "--client"]
        );
        assert_eq!(
            canon(&["make", "x.img", "-DISK=/d", "-token-file=/t"]),
            ["make", "x.img", "--disk=/d", "--token-file=/t"]
        );
        // Options before the session's flag, and words after `--`.
        assert_eq!(
            canon(&["-master", "-session=lab", "--", "-disk"]),
            ["session", "lab", "--master", "--", "-disk"]
        );
        let raw = ["img", "-s", "lab", "-m", "-key", "-m"]
            .into_iter()
            .map(OsString::from)
            .collect();
        let cli = Cli::try_parse_from(canonicalize(raw)).expect("parses");
        let Some(Command::Session(s)) = cli.command else {
            panic!("not a session");
        };
        assert!(s.master);
        assert_eq!(s.key.as_deref(), Some("-m"));
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
