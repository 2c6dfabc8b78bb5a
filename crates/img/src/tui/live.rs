//! The live session screens: the master's table of clients (registered while
//! gathering, then progress bars, rate, ETA and results), a client's view of
//! the session it joined, and the waiting screen of a device with no role.
//!
//! [`LiveState`] is the model: the engine's [`SessionEvent`]s and the clock
//! (a [`Duration`] since the screen opened, passed in) go in, [`render`] draws
//! it. [`LiveUi`] runs it on the terminal in a thread of its own, so the
//! engine's callback only sends an event down a channel.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use imgcast_engine::{ClientResult, Control, SessionEvent};

use super::{human, Screen};

/// What this device does in the session, as the screen shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LiveRole {
    /// Sends the disk.
    Master,
    /// Receives onto its disk.
    Client,
    /// Waits for `m` or for a master.
    Undecided,
}

/// One client as the master sees it.
#[derive(Clone, Debug)]
pub(crate) struct ClientView {
    id: u64,
    addr: String,
    joined: Duration,
    done: u64,
    total: u64,
    /// The first progress seen (time, bytes), the base of the rate.
    first: Option<(Duration, u64)>,
    /// When the last progress came.
    last: Duration,
    result: Option<ClientResult>,
}

/// A transfer's progress, for the client's own bar.
#[derive(Clone, Copy, Debug, Default)]
struct Transfer {
    done: u64,
    total: u64,
    first: Option<(Duration, u64)>,
    last: Duration,
}

/// What the user pressed, for the caller to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// `s`: start the session now.
    Start,
    /// `m`: make this device the master.
    BecomeMaster,
    /// `q` then `y`: abort.
    Abort,
}

/// Everything a live screen shows.
#[derive(Clone, Debug)]
pub(crate) struct LiveState {
    role: LiveRole,
    name: String,
    disk: String,
    start_rule: String,
    network: Option<String>,
    now: Duration,
    started: Option<Duration>,
    clients: Vec<ClientView>,
    queued: Vec<String>,
    notes: Vec<String>,
    confirm_abort: bool,
    aborting: bool,
    master: Option<(String, u64)>,
    registered: bool,
    waiting_next: bool,
    own: Transfer,
    /// The master's bytes sent, repair ratio and rate (bit/s).
    sending: Option<(u64, f64, u64)>,
    outcome: Option<String>,
    /// The screen stays up after the outcome until a key is pressed.
    hold: bool,
}

const NOTES_KEPT: usize = 4;

impl LiveState {
    /// A fresh screen for session `name`; `disk` says what is sent or
    /// overwritten; `start_rule` when the master starts.
    pub(crate) fn new(role: LiveRole, name: &str, disk: &str, start_rule: &str) -> Self {
        Self {
            role,
            name: name.to_string(),
            disk: disk.to_string(),
            start_rule: start_rule.to_string(),
            network: None,
            now: Duration::ZERO,
            started: None,
            clients: Vec::new(),
            queued: Vec::new(),
            notes: Vec::new(),
            confirm_abort: false,
            aborting: false,
            master: None,
            registered: false,
            waiting_next: false,
            own: Transfer::default(),
            sending: None,
            outcome: None,
            hold: false,
        }
    }

    /// The clock moved on (rates, ETAs and elapsed times follow it).
    pub(crate) fn tick(&mut self, now: Duration) {
        self.now = now;
    }

    /// Takes in one engine event that happened at `now`.
    pub(crate) fn apply(&mut self, ev: SessionEvent, now: Duration) {
        self.now = now;
        match ev {
            SessionEvent::Listening {
                group,
                port,
                interface,
                addr,
                role,
                ..
            } => {
                self.network = Some(format!("group {group}:{port} on {interface} ({addr})"));
                if role == "master" {
                    self.role = LiveRole::Master;
                    self.started = None;
                }
            }
            SessionEvent::ClientRegistered { id, addr, .. } => {
                if !self.clients.iter().any(|c| c.id == id) {
                    self.clients.push(ClientView {
                        id,
                        addr: addr.to_string(),
                        joined: now,
                        done: 0,
                        total: 0,
                        first: None,
                        last: now,
                        result: None,
                    });
                }
            }
            SessionEvent::ClientQueued { addr } | SessionEvent::ClientMoved { addr, .. } => {
                let a = addr.to_string();
                if !self.queued.contains(&a) {
                    self.queued.push(a);
                }
            }
            SessionEvent::Started { .. } => {
                self.started = Some(now);
                self.waiting_next = false;
            }
            SessionEvent::Progress { id, done, total } => {
                if self.role == LiveRole::Master {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
                        c.first.get_or_insert((now, done));
                        c.done = done;
                        c.total = total;
                        c.last = now;
                    }
                } else {
                    self.own.first.get_or_insert((now, done));
                    self.own.done = done;
                    self.own.total = total;
                    self.own.last = now;
                }
            }
            SessionEvent::ClientEnded { id, result } => {
                if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
                    c.result = Some(result);
                }
            }
            SessionEvent::Found { master, disk_size } => {
                self.master = Some((master.to_string(), disk_size));
                self.role = LiveRole::Client;
            }
            SessionEvent::Registered => {
                self.registered = true;
                self.waiting_next = false;
            }
            SessionEvent::Queued => self.waiting_next = true,
            SessionEvent::Sending {
                bytes_sent,
                repair_ratio,
                rate_bps,
            } => self.sending = Some((bytes_sent, repair_ratio, rate_bps)),
            SessionEvent::Note(n) => self.note(n),
            SessionEvent::ClientHost { .. } => {}
        }
    }

    /// Adds a line to the notes at the bottom (the last few are kept).
    pub(crate) fn note(&mut self, n: String) {
        self.notes.push(n);
        if self.notes.len() > NOTES_KEPT {
            self.notes.remove(0);
        }
    }

    /// The last word: shown until the screen closes.
    pub(crate) fn set_outcome(&mut self, text: String) {
        self.outcome = Some(text);
    }

    /// A key: `s` start, `m` become the master, `q` (or Ctrl-C) asks whether
    /// to abort, `y` confirms, any other key takes the question back.
    pub(crate) fn key(&mut self, key: KeyEvent) -> Option<Action> {
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        if self.confirm_abort {
            self.confirm_abort = false;
            if matches!(key.code, KeyCode::Char('y' | 'Y')) || ctrl_c {
                self.aborting = true;
                return Some(Action::Abort);
            }
            return None;
        }
        if ctrl_c {
            self.confirm_abort = true;
            return None;
        }
        match key.code {
            KeyCode::Char('s' | 'S') if self.role != LiveRole::Client => Some(Action::Start),
            KeyCode::Char('m' | 'M') if self.role == LiveRole::Undecided => {
                Some(Action::BecomeMaster)
            }
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => {
                self.confirm_abort = !self.aborting;
                None
            }
            _ => None,
        }
    }
}

/// Bytes per second between the first progress seen and the last.
fn rate(first: Option<(Duration, u64)>, last: Duration, done: u64) -> Option<f64> {
    let (t0, d0) = first?;
    let secs = last.checked_sub(t0)?.as_secs_f64();
    (secs >= 0.5 && done > d0).then(|| (done - d0) as f64 / secs)
}

fn eta(rate: Option<f64>, done: u64, total: u64) -> String {
    match rate {
        Some(r) if r > 0.0 && total > done => clock(Duration::from_secs_f64(
            ((total - done) as f64 / r).min(359_999.0),
        )),
        _ => String::new(),
    }
}

/// `mm:ss`, or `h:mm:ss` past an hour.
pub(crate) fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

/// A text bar `█████░░░░░  50%`: the same in a snapshot as on a terminal.
fn bar(done: u64, total: u64, width: usize) -> String {
    let frac = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let full = (frac * width as f64).round() as usize;
    format!(
        "{}{} {:>3}%",
        "█".repeat(full),
        "░".repeat(width - full),
        (frac * 100.0).floor() as u32
    )
}

fn result_text(r: &ClientResult) -> (String, Color) {
    match r {
        ClientResult::Done => ("done, verified".into(), Color::Green),
        ClientResult::Failed(why) => (format!("failed: {why}"), Color::Red),
        ClientResult::Dropped(why) => (format!("dropped: {why}"), Color::Red),
        ClientResult::Moved(why) => (format!("moved: {why}"), Color::Yellow),
    }
}

/// Draws the live screen.
pub(crate) fn render(s: &LiveState, f: &mut Frame<'_>) {
    let role = match s.role {
        LiveRole::Master => "master",
        LiveRole::Client => "client",
        LiveRole::Undecided => "waiting for a role",
    };
    let outer = Block::default()
        .borders(Borders::ALL)
        .title(format!(" imgcast · session '{}' · {role} ", s.name));
    let area = f.area();
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let [head, body, notes, keys] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(NOTES_KEPT as u16),
        Constraint::Length(1),
    ])
    .areas(inner);

    let mut head_lines = vec![Line::from(s.disk.clone())];
    head_lines.push(Line::from(
        s.network
            .clone()
            .unwrap_or_else(|| "opening the network…".into()),
    ));
    head_lines.push(Line::from(Span::styled(
        status(s),
        Style::default().add_modifier(Modifier::BOLD),
    )));
    f.render_widget(Paragraph::new(head_lines), head);

    match s.role {
        LiveRole::Master => master_table(s, f, body),
        LiveRole::Client => client_view(s, f, body),
        LiveRole::Undecided => {
            let text = vec![
                Line::from(""),
                Line::from("Press m to make this device the master: it then sends its disk,"),
                Line::from("and s there starts the session once the clients have registered."),
                Line::from(""),
                Line::from("If another device becomes the master first, this one joins it as"),
                Line::from("a client and its disk is overwritten with the master's."),
            ];
            f.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }), body);
        }
    }

    let note_lines: Vec<Line<'_>> = s
        .notes
        .iter()
        .map(|n| {
            Line::from(Span::styled(
                n.clone(),
                Style::default().fg(Color::DarkGray),
            ))
        })
        .collect();
    f.render_widget(Paragraph::new(note_lines), notes);

    let help = match s.role {
        _ if s.hold => "press any key to leave",
        _ if s.outcome.is_some() => "",
        LiveRole::Master if s.started.is_none() => "s start now   q abort",
        LiveRole::Master | LiveRole::Client => "q abort",
        LiveRole::Undecided => "m become the master   s start (on the master)   q abort",
    };
    f.render_widget(
        Paragraph::new(Line::from(Span::styled(
            help,
            Style::default().add_modifier(Modifier::REVERSED),
        ))),
        keys,
    );

    if s.confirm_abort {
        let w = 46.min(area.width);
        let h = 5.min(area.height);
        let pop = Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        );
        f.render_widget(Clear, pop);
        f.render_widget(
            Paragraph::new(vec![
                Line::from("Abort the session?"),
                Line::from("y = abort, any other key = go on"),
            ])
            .block(Block::default().borders(Borders::ALL).title(" abort "))
            .style(Style::default().fg(Color::Yellow)),
            pop,
        );
    }
}

fn status(s: &LiveState) -> String {
    if let Some(o) = &s.outcome {
        return o.clone();
    }
    if s.aborting {
        return "Aborting…".into();
    }
    match s.role {
        LiveRole::Master => match s.started {
            None => format!(
                "Gathering clients: {} registered. {}",
                s.clients.len(),
                s.start_rule
            ),
            Some(t) => {
                let ended = s.clients.iter().filter(|c| c.result.is_some()).count();
                let wire = s.sending.map_or(String::new(), |(sent, repair, rate)| {
                    format!(
                        "; {} sent at {:.0} Mbit/s, repairs {:.1}%",
                        crate::cmd_image::human(sent),
                        rate as f64 / 1e6,
                        repair * 100.0
                    )
                });
                format!(
                    "Sending to {} clients, {} finished; {} elapsed{wire}",
                    s.clients.len(),
                    ended,
                    clock(s.now.saturating_sub(t))
                )
            }
        },
        LiveRole::Client => {
            if s.waiting_next {
                format!(
                    "The session is already running: waiting for the next session '{}'",
                    s.name
                )
            } else if s.started.is_some() {
                "Receiving, checking every chunk".into()
            } else if s.registered {
                "Registered: waiting for the master to start".into()
            } else if s.master.is_some() {
                "Found the master: registering".into()
            } else {
                "Looking for the master…".into()
            }
        }
        LiveRole::Undecided => format!("Waiting for a master of session '{}'", s.name),
    }
}

fn master_table(s: &LiveState, f: &mut Frame<'_>, area: Rect) {
    let gathering = s.started.is_none();
    let header = if gathering {
        Row::new(["CLIENT", "JOINED", "", "", ""])
    } else {
        Row::new(["CLIENT", "PROGRESS", "RATE", "ETA", "RESULT"])
    }
    .style(Style::default().add_modifier(Modifier::BOLD));
    let mut rows: Vec<Row<'_>> = s
        .clients
        .iter()
        .map(|c| {
            if gathering {
                return Row::new([
                    Cell::from(c.addr.clone()),
                    Cell::from(format!("+{}", clock(c.joined))),
                ]);
            }
            let r = rate(c.first, c.last, c.done);
            let (res, color) = match &c.result {
                Some(r) => result_text(r),
                None if c.total == 0 => ("waiting".into(), Color::Reset),
                None => ("receiving".into(), Color::Reset),
            };
            let done = if c.result == Some(ClientResult::Done) {
                c.total.max(c.done)
            } else {
                c.done
            };
            Row::new([
                Cell::from(c.addr.clone()),
                Cell::from(bar(done, c.total, 20)),
                Cell::from(
                    r.map(|r| format!("{}/s", human(r as u64)))
                        .unwrap_or_default(),
                ),
                Cell::from(if c.result.is_some() {
                    String::new()
                } else {
                    eta(r, c.done, c.total)
                }),
                Cell::from(Span::styled(res, Style::default().fg(color))),
            ])
        })
        .collect();
    for q in &s.queued {
        rows.push(Row::new([
            Cell::from(q.clone()),
            Cell::from(""),
            Cell::from(""),
            Cell::from(""),
            Cell::from("queued: next session"),
        ]));
    }
    if rows.is_empty() {
        rows.push(Row::new([Cell::from("(no client has registered yet)")]));
    }
    let widths = [
        Constraint::Length(22),
        Constraint::Length(if gathering { 10 } else { 26 }),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Min(10),
    ];
    f.render_widget(Table::new(rows, widths).header(header), area);
}

fn client_view(s: &LiveState, f: &mut Frame<'_>, area: Rect) {
    let mut lines = Vec::new();
    if let Some((m, size)) = &s.master {
        lines.push(Line::from(format!("master {m}, image of {}", human(*size))));
    }
    if s.started.is_some() && s.own.total > 0 {
        let r = rate(s.own.first, s.own.last, s.own.done);
        lines.push(Line::from(""));
        lines.push(Line::from(bar(s.own.done, s.own.total, 40)));
        lines.push(Line::from(format!(
            "{} of {}   {}   ETA {}",
            human(s.own.done),
            human(s.own.total),
            r.map(|r| format!("{}/s", human(r as u64)))
                .unwrap_or_default(),
            eta(r, s.own.done, s.own.total)
        )));
    }
    if s.waiting_next {
        lines.push(Line::from(""));
        lines.push(Line::from(
            "This device came after the start. It stays registered and is served",
        ));
        lines.push(Line::from(
            "by the next session of the same name: leave it running.",
        ));
    }
    f.render_widget(Paragraph::new(lines), area);
}

enum Msg {
    Event(SessionEvent),
    Note(String),
    Outcome(String, bool),
}

/// The live screen on the real terminal, drawn by a thread of its own that
/// also reads the keys and carries them out on the session's [`Control`].
pub(crate) struct LiveUi {
    tx: Option<Sender<Msg>>,
    thread: Option<JoinHandle<()>>,
}

impl LiveUi {
    /// Takes over the terminal and starts drawing `state`.
    pub(crate) fn start(state: LiveState, control: Arc<Control>) -> Result<Self> {
        let screen = Screen::enter()?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("imgcast-screen".into())
            .spawn(move || ui_loop(screen, state, &rx, &control))
            .context("starting the screen thread")?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// The callback for the engine: each event goes to the screen.
    pub(crate) fn sink(&self) -> impl FnMut(SessionEvent) + 'static {
        let tx = self.tx.clone();
        move |ev| {
            if let Some(tx) = &tx {
                let _ = tx.send(Msg::Event(ev));
            }
        }
    }

    /// A line of our own for the notes.
    pub(crate) fn note(&self, text: String) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Note(text));
        }
    }

    /// Shows the outcome, then gives the terminal back: at once, or when
    /// `hold`, after a key.
    pub(crate) fn finish(&mut self, outcome: String, hold: bool) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Outcome(outcome, hold));
        }
        self.close();
    }

    fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LiveUi {
    fn drop(&mut self) {
        self.close();
    }
}

fn ui_loop(mut screen: Screen, mut state: LiveState, rx: &Receiver<Msg>, control: &Control) {
    let t0 = Instant::now();
    loop {
        let mut closed = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Event(ev)) => state.apply(ev, t0.elapsed()),
                Ok(Msg::Note(n)) => state.note(n),
                Ok(Msg::Outcome(o, hold)) => {
                    state.set_outcome(o);
                    state.hold = hold;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        state.tick(t0.elapsed());
        if screen.terminal.draw(|f| render(&state, f)).is_err() || (closed && !state.hold) {
            return;
        }
        if crossterm::event::poll(Duration::from_millis(100)).unwrap_or(false) {
            if let Ok(Event::Key(k)) = crossterm::event::read() {
                if k.kind == KeyEventKind::Press && closed {
                    return;
                }
                if k.kind == KeyEventKind::Press {
                    match state.key(k) {
                        Some(Action::Start) => control.press_start(),
                        Some(Action::BecomeMaster) => control.press_master(),
                        Some(Action::Abort) => control.press_abort(),
                        None => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::test_util::draw;
    use std::net::{Ipv4Addr, SocketAddr};

    fn listening(role: &'static str) -> SessionEvent {
        SessionEvent::Listening {
            name: "lab3".into(),
            group: Ipv4Addr::new(231, 12, 34, 56),
            port: 8471,
            interface: "eth0".into(),
            addr: Ipv4Addr::new(10, 77, 0, 10),
            role,
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 77, 0, 10 + i), 40000 + u16::from(i)))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn master() -> LiveState {
        let mut s = LiveState::new(
            LiveRole::Master,
            "lab3",
            "sending /dev/sda (64.0 MiB), compression 1",
            "Starts at 3 clients, 5 min after the last registration, or when you press s.",
        );
        s.apply(listening("master"), secs(0));
        s
    }

    fn snap(s: &LiveState) -> String {
        draw(100, 20, |f| render(s, f))
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn master_gathering() {
        let mut s = master();
        insta::assert_snapshot!("master_empty", snap(&s));
        s.apply(
            SessionEvent::ClientRegistered {
                id: 1,
                addr: addr(1),
                count: 1,
            },
            secs(3),
        );
        s.apply(
            SessionEvent::ClientRegistered {
                id: 2,
                addr: addr(2),
                count: 2,
            },
            secs(65),
        );
        insta::assert_snapshot!("master_gathering", snap(&s));
        s.key(KeyEvent::from(KeyCode::Char('q')));
        insta::assert_snapshot!("master_confirm_abort", snap(&s));
        assert_eq!(
            s.key(KeyEvent::from(KeyCode::Char('y'))),
            Some(Action::Abort)
        );
        insta::assert_snapshot!("master_aborting", snap(&s));
    }

    #[test]
    fn master_running_and_finished() {
        let mut s = master();
        for i in 1..=3u8 {
            s.apply(
                SessionEvent::ClientRegistered {
                    id: u64::from(i),
                    addr: addr(i),
                    count: usize::from(i),
                },
                secs(u64::from(i)),
            );
        }
        s.apply(SessionEvent::Started { clients: 3 }, secs(10));
        for i in 1..=3u64 {
            s.apply(
                SessionEvent::Progress {
                    id: i,
                    done: 0,
                    total: 64 * MIB,
                },
                secs(10),
            );
        }
        s.apply(
            SessionEvent::Progress {
                id: 1,
                done: 32 * MIB,
                total: 64 * MIB,
            },
            secs(14),
        );
        s.apply(
            SessionEvent::Progress {
                id: 2,
                done: 16 * MIB,
                total: 64 * MIB,
            },
            secs(14),
        );
        s.apply(
            SessionEvent::Sending {
                bytes_sent: 40 * MIB,
                repair_ratio: 0.034,
                rate_bps: 612_000_000,
            },
            secs(14),
        );
        s.apply(SessionEvent::ClientQueued { addr: addr(4) }, secs(14));
        s.apply(
            SessionEvent::Note("client 10.77.0.13 is slow: 12% repair".into()),
            secs(14),
        );
        insta::assert_snapshot!("master_running", snap(&s));
        assert_eq!(
            s.key(KeyEvent::from(KeyCode::Char('s'))),
            Some(Action::Start)
        );
        s.apply(
            SessionEvent::ClientEnded {
                id: 1,
                result: ClientResult::Done,
            },
            secs(20),
        );
        s.apply(
            SessionEvent::ClientEnded {
                id: 2,
                result: ClientResult::Done,
            },
            secs(21),
        );
        s.apply(
            SessionEvent::ClientEnded {
                id: 3,
                result: ClientResult::Dropped("no answer for 15 s".into()),
            },
            secs(25),
        );
        s.set_outcome("Finished: 2 of 3 clients done, 1 dropped".into());
        insta::assert_snapshot!("master_finished", snap(&s));
    }

    #[test]
    fn client_states() {
        let mut s = LiveState::new(
            LiveRole::Client,
            "lab3",
            "overwriting /dev/sdb (64.0 MiB)",
            "",
        );
        s.apply(listening("client"), secs(0));
        insta::assert_snapshot!("client_looking", snap(&s));
        s.apply(
            SessionEvent::Found {
                master: addr(0),
                disk_size: 64 * MIB,
            },
            secs(1),
        );
        s.apply(SessionEvent::Registered, secs(1));
        insta::assert_snapshot!("client_registered", snap(&s));
        s.apply(SessionEvent::Started { clients: 2 }, secs(5));
        s.apply(
            SessionEvent::Progress {
                id: 0,
                done: 0,
                total: 64 * MIB,
            },
            secs(5),
        );
        s.apply(
            SessionEvent::Progress {
                id: 0,
                done: 48 * MIB,
                total: 64 * MIB,
            },
            secs(9),
        );
        insta::assert_snapshot!("client_receiving", snap(&s));
        s.set_outcome("Done: 64.0 MiB written and verified in 5.3 s".into());
        insta::assert_snapshot!("client_done", snap(&s));
        assert_eq!(s.key(KeyEvent::from(KeyCode::Char('s'))), None);
    }

    #[test]
    fn client_queued() {
        let mut s = LiveState::new(LiveRole::Client, "lab3", "overwriting /tmp/c.raw", "");
        s.apply(listening("client"), secs(0));
        s.apply(
            SessionEvent::Found {
                master: addr(0),
                disk_size: 64 * MIB,
            },
            secs(1),
        );
        s.apply(SessionEvent::Queued, secs(1));
        insta::assert_snapshot!("client_queued", snap(&s));
    }

    #[test]
    fn undecided_explains_m_and_s() {
        let mut s = LiveState::new(
            LiveRole::Undecided,
            "lab3",
            "disk /dev/sda (64.0 MiB): sent if this device becomes the master, overwritten if a client",
            "Only s starts the session (no number of clients given).",
        );
        s.apply(listening("undecided"), secs(0));
        insta::assert_snapshot!("undecided", snap(&s));
        assert_eq!(
            s.key(KeyEvent::from(KeyCode::Char('m'))),
            Some(Action::BecomeMaster)
        );
        s.apply(listening("master"), secs(2));
        assert_eq!(s.role, LiveRole::Master);
    }

    #[test]
    fn clock_and_bar() {
        assert_eq!(clock(secs(65)), "01:05");
        assert_eq!(clock(secs(3725)), "1:02:05");
        assert_eq!(bar(1, 2, 4), "██░░  50%");
        assert_eq!(bar(0, 0, 4), "░░░░   0%");
    }
}
