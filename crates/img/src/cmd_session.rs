//! `img -session NAME ...`: the session (multicast) mode.
//!
//! Keys (on a terminal, read one at a time without Enter): `s` starts the
//! session on the master, `m` makes a device with no role the master, `q`
//! twice aborts. Without a terminal the same actions are lines on standard
//! input (`s`, `m`, `q`) or signals: SIGUSR1 = `s`, SIGUSR2 = `m`,
//! SIGINT/SIGTERM = abort.
//!
//! On a terminal (keys and screen both), the session runs on the full-screen
//! live view of [`crate::tui::live`] instead of lines, and a client asks before
//! its disk is overwritten unless `-yes` is given. Without a terminal nothing
//! asks: the explicit `-disk` is the consent, so scripts run unchanged.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde_json::json;

use imgcast_engine::{
    run_client, run_master, ClientConfig, ClientResult, Control, MasterConfig, MasterOutcome,
    MasterReport, MasterSource, NetConfig, SessionEvent,
};
use imgcast_image::Level;

use crate::args::SessionArgs;
use crate::cmd_image::{hex, human};
use crate::progress::bytes_bar;
use crate::tui;
use crate::tui::live::{LiveRole, LiveState, LiveUi};
use crate::UsageError;

/// The role a device plays.
enum Role {
    Master,
    Client,
    /// Waits for `m` (become master) or for a master to appear.
    Undecided,
}

/// Runs the session command; the exit code is 0 only when the session succeeded.
pub(crate) fn session(a: &SessionArgs) -> Result<()> {
    run_session(a, false)
}

/// Runs a session; `from_menu` keeps the live screen up at the end until a
/// key is pressed (the menu's user has no command line to scroll back to).
pub(crate) fn run_session(a: &SessionArgs, from_menu: bool) -> Result<()> {
    let usage = |msg: String| anyhow::Error::new(UsageError(msg));
    let role = match (a.master, a.client) {
        (true, true) => return Err(usage("-master and -client exclude each other".into())),
        (true, false) => Role::Master,
        (false, true) => Role::Client,
        (false, false) => Role::Undecided,
    };
    imgcast_proto::SessionName::new(&a.name).map_err(|e| usage(format!("session name: {e}")))?;
    match role {
        Role::Master => {
            master_source(a, Level::FASTEST).map_err(|e| usage(e.to_string()))?;
        }
        Role::Client | Role::Undecided if a.disk.is_none() => {
            return Err(usage(if matches!(role, Role::Client) {
                "a client needs -disk=TARGET: the disk to overwrite".into()
            } else {
                "-disk=PATH is needed: the disk to send if this device becomes the master, or to overwrite if it becomes a client".into()
            }));
        }
        _ => {}
    }
    if a.image.is_some() && !a.master {
        return Err(usage("-image=FILE is for the master".into()));
    }
    let key = match (&a.key, &a.keyfile) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the key file {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        (None, None) => None,
    };
    if key.as_deref() == Some("") {
        bail!("the key is empty");
    }
    let mut net = NetConfig::new(a.name.clone());
    net.interface = a.interface.clone();
    net.port = a.port;
    net.ttl = a.ttl;
    net.querier = a.querier;
    net.key = key;

    let live = tui::available();
    if live && !a.yes && !matches!(role, Role::Master) {
        if let Some(disk) = &a.disk {
            confirm_overwrite(disk, "the session")?;
        }
    }
    let control = Arc::new(Control::default());
    let _keys = KeyReader::start(control.clone(), !live)?;
    let level = Level::new(a.comp).context("bad -comp")?;
    let mut ui = if live {
        Ui::Live(
            LiveUi::start(live_state(a, &role), control.clone())?,
            from_menu,
        )
    } else {
        Ui::Lines
    };

    match role {
        Role::Master => {
            let source = master_source(a, level)?;
            let cfg = MasterConfig {
                net,
                source,
                clients: a.clients,
                timeout: a.timeout,
                throttle: a.throttle,
                may_yield: false,
                slow: a.slow.into(),
                follow_up: true,
            };
            if a.clients.is_none() {
                ui.say("press s to start the session (no -clients given)".into());
            }
            let outcome = run_master(&cfg, &control, &mut ui.master_sink())?;
            match outcome {
                MasterOutcome::Report(r) => {
                    ui.finish(master_summary(&r));
                    finish_master(&r, a.json)
                }
                MasterOutcome::Yielded => bail!("another master took the session"),
            }
        }
        Role::Client => {
            let target = a
                .disk
                .clone()
                .context("a client needs -disk=TARGET: the disk to overwrite")?;
            let report = run_client(
                &ClientConfig {
                    net,
                    target,
                    wait: a.wait,
                    grow: a.place.grow,
                    discard: a.place.discard,
                },
                &control,
                &mut ui.client_sink(),
            )?;
            ui.finish(client_summary(&report));
            print_client(&report, a.json)
        }
        Role::Undecided => {
            let disk = a
                .disk
                .clone()
                .context("-disk=PATH is needed: the disk to send if this device becomes the master, or to overwrite if it becomes a client")?;
            if !live {
                eprintln!(
                    "waiting for a master of session '{}': press m to make this device the master (or send SIGUSR2); then s there starts",
                    a.name
                );
            }
            loop {
                let ccfg = ClientConfig {
                    net: net.clone(),
                    target: disk.clone(),
                    wait: a.wait,
                    grow: a.place.grow,
                    discard: a.place.discard,
                };
                match imgcast_engine::run_undecided(&ccfg, &control, &mut ui.client_sink())? {
                    imgcast_engine::UndecidedOutcome::Client(report) => {
                        ui.finish(client_summary(&report));
                        return print_client(&report, a.json);
                    }
                    imgcast_engine::UndecidedOutcome::BecomeMaster => {
                        ui.say("this device is the master; press s to start".into());
                        let cfg = MasterConfig {
                            net: net.clone(),
                            source: MasterSource::Disk {
                                path: disk.clone(),
                                level,
                                map: a.map.mode(),
                            },
                            clients: a.clients,
                            timeout: a.timeout,
                            throttle: a.throttle,
                            may_yield: true,
                            slow: a.slow.into(),
                            follow_up: true,
                        };
                        match run_master(&cfg, &control, &mut ui.master_sink())? {
                            MasterOutcome::Report(r) => {
                                ui.finish(master_summary(&r));
                                return finish_master(&r, a.json);
                            }
                            MasterOutcome::Yielded => {
                                ui.say("another device became the master first; joining it as a client".into());
                            }
                        }
                    }
                }
            }
        }
    }
}

fn master_source(a: &SessionArgs, level: Level) -> Result<MasterSource> {
    match (&a.image, &a.disk) {
        (Some(_), Some(_)) => {
            bail!("give either -disk=SOURCE or -image=FILE to the master, not both")
        }
        (Some(image), None) => Ok(MasterSource::Image {
            path: image.clone(),
        }),
        (None, Some(disk)) => Ok(MasterSource::Disk {
            path: disk.clone(),
            level,
            map: a.map.mode(),
        }),
        (None, None) => bail!("the master needs -disk=SOURCE (the disk to send) or -image=FILE"),
    }
}

/// Where the session's events go: lines on standard error, or the live screen.
enum Ui {
    Lines,
    /// The screen, and whether it waits for a key at the end.
    Live(LiveUi, bool),
}

impl Ui {
    fn master_sink(&self) -> Box<dyn FnMut(SessionEvent)> {
        match self {
            Self::Lines => Box::new(master_ui()),
            Self::Live(l, _) => Box::new(l.sink()),
        }
    }

    fn client_sink(&self) -> Box<dyn FnMut(SessionEvent)> {
        match self {
            Self::Lines => Box::new(client_ui()),
            Self::Live(l, _) => Box::new(l.sink()),
        }
    }

    /// A message of our own.
    fn say(&self, text: String) {
        match self {
            Self::Lines => eprintln!("{text}"),
            Self::Live(l, _) => l.note(text),
        }
    }

    /// The session is over: the screen shows `outcome` and gives the terminal back.
    fn finish(&mut self, outcome: String) {
        if let Self::Live(l, hold) = self {
            l.finish(outcome, *hold);
        }
    }
}

/// The live screen's first state for these arguments.
fn live_state(a: &SessionArgs, role: &Role) -> LiveState {
    let disk = a
        .disk
        .as_deref()
        .map(|d| {
            let size = std::fs::File::open(d)
                .ok()
                .and_then(|f| imgcast_disk::disk_size(&f).ok())
                .map(|n| format!(" ({})", human(n)))
                .unwrap_or_default();
            format!("{}{size}", d.display())
        })
        .unwrap_or_default();
    let (live_role, what) = match role {
        Role::Master => match &a.image {
            Some(i) => (
                LiveRole::Master,
                format!("sending the image file {}", i.display()),
            ),
            None => (
                LiveRole::Master,
                format!("sending {disk}, compression {}", a.comp),
            ),
        },
        Role::Client => (LiveRole::Client, format!("overwriting {disk}")),
        Role::Undecided => (
            LiveRole::Undecided,
            format!("disk {disk}: sent if this device becomes the master, overwritten if a client"),
        ),
    };
    let rule = match a.clients {
        Some(n) => format!(
            "Starts at {n} clients, {} after the last registration, or when you press s.",
            if a.timeout.as_secs() % 60 == 0 {
                format!("{} min", a.timeout.as_secs() / 60)
            } else {
                format!("{:.0} s", a.timeout.as_secs_f64())
            }
        ),
        None => "Only s starts the session (no number of clients given).".into(),
    };
    LiveState::new(live_role, &a.name, &what, &rule)
}

fn master_summary(r: &MasterReport) -> String {
    let done = r
        .clients
        .iter()
        .filter(|c| c.result == ClientResult::Done)
        .count();
    if r.aborted {
        format!("Aborted after {:.1} s", r.seconds)
    } else {
        format!(
            "Finished: {done} of {} clients done in {:.1} s; repair {:.1}%",
            r.clients.len(),
            r.seconds,
            r.repair_ratio * 100.0
        )
    }
}

fn client_summary(r: &imgcast_engine::ClientReport) -> String {
    format!(
        "Done: {} written and verified in {:.1} s",
        human(r.disk_size),
        r.seconds
    )
}

/// On a terminal, before a disk is overwritten (by a session's client or by
/// `img restore`): names the disk, its size and what is on it, and wants `yes`
/// or the disk's name typed.
pub(crate) fn confirm_overwrite(path: &Path, by: &str) -> Result<()> {
    let summary = tui::disk_info::describe(path)?;
    if !summary.needs_consent() {
        return Ok(());
    }
    eprintln!("img: {by} will overwrite");
    for l in summary.lines() {
        eprintln!("  {l}");
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    eprint!("Type yes (or {name}) to overwrite it; anything else stops (-yes skips this): ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if tui::menu::consents(&answer, &path.display().to_string()) {
        Ok(())
    } else {
        bail!("not confirmed: {} was left as it was", path.display())
    }
}

fn print_client(r: &imgcast_engine::ClientReport, as_json: bool) -> Result<()> {
    if as_json {
        println!(
            "{}",
            json!({
                "result": "done",
                "master": r.master.to_string(),
                "disk_size": r.disk_size,
                "root_hash": hex(&r.root_hash),
                "seconds": r.seconds,
            })
        );
    } else {
        eprintln!(
            "done: {} written and verified (root hash {}) in {:.1} s, {}/s",
            human(r.disk_size),
            hex(&r.root_hash),
            r.seconds,
            human(rate(r.disk_size, r.seconds))
        );
    }
    Ok(())
}

fn finish_master(r: &MasterReport, as_json: bool) -> Result<()> {
    if as_json {
        let rows: Vec<_> = r
            .clients
            .iter()
            .map(|c| {
                let (result, reason) = result_parts(&c.result);
                json!({"id": format!("{:016x}", c.id), "addr": c.addr.to_string(), "result": result,
                       "reason": reason, "bytes": c.bytes, "seconds": c.seconds,
                       "rejected_chunks": c.rejected, "note": c.note, "run": c.run,
                       "moved": c.moved})
            })
            .collect();
        println!(
            "{}",
            json!({
                "root_hash": hex(&r.root_hash),
                "disk_size": r.disk_size,
                "seconds": r.seconds,
                "bytes_sent": r.bytes_sent,
                "repair_ratio": r.repair_ratio,
                "aborted": r.aborted,
                "runs": r.runs,
                "clients": rows,
            })
        );
    } else {
        println!(
            "{:<22} {:<32} {:>10} {:>8} {:>12}  NOTE",
            "CLIENT", "RESULT", "BYTES", "TIME", "RATE"
        );
        for c in &r.clients {
            let (result, reason) = result_parts(&c.result);
            let result = if reason.is_empty() {
                result.to_string()
            } else {
                format!("{result}: {reason}")
            };
            let mut note = Vec::new();
            if c.rejected > 0 {
                note.push(format!("{} bad chunk(s) fetched again", c.rejected));
            }
            if let Some(why) = c.moved.as_ref().filter(|_| c.run > 1) {
                note.push(format!("served by follow-up run {} ({why})", c.run));
            }
            if !c.note.is_empty() {
                note.push(c.note.clone());
            }
            println!(
                "{:<22} {:<32} {:>10} {:>7.1}s {:>10}/s  {}",
                c.addr.to_string(),
                result,
                human(c.bytes),
                c.seconds,
                human(rate(c.bytes, c.seconds)),
                note.join("; ")
            );
        }
        println!(
            "image {} ({}), root hash {}; {:.1} s; {} sent, repair {:.1}%",
            human(r.disk_size),
            r.disk_size,
            hex(&r.root_hash),
            r.seconds,
            human(r.bytes_sent),
            r.repair_ratio * 100.0
        );
    }
    let _ = std::io::stdout().flush();
    if r.aborted {
        bail!("the session was aborted");
    }
    if r.clients.is_empty() {
        bail!("no client took part");
    }
    let failed = r
        .clients
        .iter()
        .filter(|c| c.result != ClientResult::Done)
        .count();
    if failed > 0 {
        bail!("{failed} of {} clients did not finish", r.clients.len());
    }
    Ok(())
}

fn result_parts(r: &ClientResult) -> (&'static str, String) {
    match r {
        ClientResult::Done => ("done", String::new()),
        ClientResult::Failed(why) => ("failed", why.clone()),
        ClientResult::Dropped(why) => ("dropped", why.clone()),
        ClientResult::Moved(why) => ("moved", why.clone()),
    }
}

fn rate(bytes: u64, secs: f64) -> u64 {
    if secs > 0.0 {
        (bytes as f64 / secs) as u64
    } else {
        0
    }
}

/// The master's screen: lines for each event; per-client bars on a terminal.
fn master_ui() -> impl FnMut(SessionEvent) {
    let tty = std::io::stderr().is_terminal();
    let multi = indicatif::MultiProgress::new();
    let mut bars: std::collections::HashMap<u64, ProgressBar> = Default::default();
    let mut last_line = Instant::now();
    let mut last_rate = Instant::now();
    move |ev| match ev {
        SessionEvent::Listening {
            name,
            group,
            port,
            interface,
            addr,
            role,
        } => {
            eprintln!("session '{name}': group {group}:{port} on {interface} ({addr}), {role}");
        }
        SessionEvent::ClientRegistered { id, addr, count } => {
            eprintln!("client {addr} registered ({count} so far, id {id:016x})");
        }
        SessionEvent::ClientQueued { addr } => {
            eprintln!("client {addr} came after the start: queued for the next session");
        }
        SessionEvent::ClientMoved { addr, why, .. } => {
            eprintln!("client {addr} {why}");
        }
        SessionEvent::Started { clients } => eprintln!("session started with {clients} clients"),
        SessionEvent::Progress { id, done, total } => {
            if tty {
                let bar = bars.entry(id).or_insert_with(|| {
                    let b = multi.add(bytes_bar(total, "client"));
                    b.set_prefix(format!("{:08x}", id >> 32));
                    b
                });
                bar.set_position(done);
            } else if last_line.elapsed() > Duration::from_secs(5) {
                last_line = Instant::now();
                eprintln!("client {id:016x}: {} of {}", human(done), human(total));
            }
        }
        SessionEvent::ClientEnded { id, result } => {
            if let Some(b) = bars.remove(&id) {
                b.finish_and_clear();
            }
            let (r, why) = result_parts(&result);
            eprintln!("client {id:016x}: {r} {why}");
        }
        SessionEvent::Sending {
            bytes_sent,
            repair_ratio,
            rate_bps,
        } if !tty && last_rate.elapsed() >= Duration::from_secs(1) => {
            last_rate = Instant::now();
            eprintln!(
                "sending at {:.1} Mbit/s; {} sent, repair {:.1}%",
                rate_bps as f64 / 1e6,
                human(bytes_sent),
                repair_ratio * 100.0
            );
        }
        SessionEvent::Note(n) => eprintln!("{n}"),
        _ => {}
    }
}

/// A client's screen: the session it joined, a progress bar, the outcome.
fn client_ui() -> impl FnMut(SessionEvent) {
    let mut bar: Option<ProgressBar> = None;
    move |ev| match ev {
        SessionEvent::Listening {
            name,
            group,
            port,
            interface,
            addr,
            ..
        } => {
            eprintln!(
                "session '{name}': listening on group {group}:{port} on {interface} ({addr})"
            );
        }
        SessionEvent::Found { master, disk_size } => {
            eprintln!("found the master {master}: image of {}", human(disk_size));
        }
        SessionEvent::Registered => eprintln!("registered; waiting for the master to start"),
        SessionEvent::Queued => {
            eprintln!("the session is already in progress: queued for the next session of this name; waiting")
        }
        SessionEvent::Started { .. } => eprintln!("session started"),
        SessionEvent::Progress { done, total, .. } => {
            let b = bar.get_or_insert_with(|| bytes_bar(total, "receive"));
            b.set_position(done);
        }
        SessionEvent::Note(n) => eprintln!("{n}"),
        _ => {}
    }
}

/// Reads `s`, `m`, `q` from the keyboard (cbreak mode on a terminal, so a key
/// needs no Enter and output is unchanged) or as lines on a pipe, and turns
/// SIGUSR1/SIGUSR2/SIGINT/SIGTERM into the same actions.
struct KeyReader {
    saved: Option<nix::sys::termios::Termios>,
}

impl KeyReader {
    /// `read_keys` is false while the live screen reads the keys itself.
    fn start(control: Arc<Control>, read_keys: bool) -> Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1, SIGUSR2])
            .context("installing signal handlers")?;
        let c = control.clone();
        std::thread::Builder::new()
            .name("imgcast-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    match sig {
                        SIGUSR1 => c.press_start(),
                        SIGUSR2 => c.press_master(),
                        _ => {
                            eprintln!("\nimg: aborting the session");
                            c.press_abort();
                        }
                    }
                }
            })
            .context("starting the signal thread")?;
        if !read_keys {
            return Ok(Self { saved: None });
        }
        let stdin = std::io::stdin();
        let saved = if stdin.is_terminal() {
            cbreak(&stdin)
        } else {
            None
        };
        std::thread::Builder::new()
            .name("imgcast-keys".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                let mut quit_armed: Option<Instant> = None;
                let mut input = std::io::stdin().lock();
                while let Ok(1) = input.read(&mut byte) {
                    match byte[0] {
                        b's' | b'S' => control.press_start(),
                        b'm' | b'M' => control.press_master(),
                        b'q' | b'Q' => {
                            if quit_armed.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                                control.press_abort();
                            } else {
                                quit_armed = Some(Instant::now());
                                eprintln!("\npress q again within 5 seconds to abort the session");
                            }
                        }
                        _ => {}
                    }
                }
            })
            .context("starting the key thread")?;
        Ok(Self { saved })
    }
}

fn cbreak(stdin: &std::io::Stdin) -> Option<nix::sys::termios::Termios> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let saved = tcgetattr(stdin).ok()?;
    let mut t = saved.clone();
    t.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
    tcsetattr(stdin, SetArg::TCSANOW, &t).ok()?;
    Some(saved)
}

impl Drop for KeyReader {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}
