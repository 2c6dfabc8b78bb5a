//! The menu `img` opens on a terminal: Multicast Session → Master or Client,
//! a form (session name, number of clients, timeout, throttle, compression,
//! disk), then a screen that enables the session. Values are checked by the
//! same functions as the command line, and a wrong one is named beside its
//! field. The menu's product is a [`SessionArgs`], as if typed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};
use ratatui::Frame;

use super::disk_info::{describe, DiskSummary};
use super::{human, Screen};
use crate::args::{parse_level, parse_throttle, parse_timeout, SessionArgs};

/// A block device as the disk list shows it.
#[derive(Clone, Debug)]
pub(crate) struct DeviceChoice {
    path: PathBuf,
    size: u64,
    model: Option<String>,
    mounted: Option<String>,
    read_only: bool,
}

impl DeviceChoice {
    /// All whole block devices of this machine.
    pub(crate) fn list() -> Vec<Self> {
        imgcast_disk::list_block_devices()
            .unwrap_or_default()
            .into_iter()
            .map(|d| Self {
                path: d.path,
                size: d.size,
                model: d.model,
                mounted: d.mounted,
                read_only: d.read_only,
            })
            .collect()
    }

    /// Why it cannot be a client's target, if it cannot.
    fn refused_as_target(&self) -> Option<String> {
        if let Some(m) = &self.mounted {
            return Some(format!("in use ({m}): cannot be a client's target"));
        }
        self.read_only
            .then(|| "read-only: cannot be a client's target".to_string())
    }
}

/// Which screen is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Home,
    Role,
    Form,
    Picker,
    Enable,
}

/// Master or client, as chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Master,
    Client,
}

const NAME: usize = 0;
const CLIENTS: usize = 1;
const TIMEOUT: usize = 2;
const THROTTLE: usize = 3;
const COMP: usize = 4;
const DISK: usize = 5;
/// The focus index of the form's "Next" button.
const NEXT: usize = 6;

const LABELS: [&str; 6] = [
    "Session Name",
    "Number of Clients",
    "Timeout",
    "Throttle (ms)",
    "Compression",
    "Disk",
];
const HINTS: [&str; 6] = [
    "same name on master and clients",
    "empty: only s starts the session",
    "minutes (20, 0.5) or 30s, 2m, 1h",
    "empty: adaptive rate",
    "0 none, 1 fastest .. 9 smallest",
    "Enter on empty: list of disks; or a file path",
];

/// What the caller should do after a key.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Stay in the menu.
    Stay,
    /// Leave without doing anything.
    Quit,
    /// Run this session.
    Run(Box<SessionArgs>),
}

/// The menu's whole state.
#[derive(Debug)]
pub(crate) struct Menu {
    step: Step,
    home_sel: usize,
    role_sel: usize,
    role: Role,
    values: [String; 6],
    errors: [Option<String>; 6],
    focus: usize,
    devices: Vec<DeviceChoice>,
    picker_sel: usize,
    picker_msg: Option<String>,
    summary: Option<DiskSummary>,
    consent: String,
    consent_msg: Option<String>,
}

impl Menu {
    /// A menu over these block devices.
    pub(crate) fn new(devices: Vec<DeviceChoice>) -> Self {
        Self {
            step: Step::Home,
            home_sel: 0,
            role_sel: 0,
            role: Role::Master,
            values: [
                String::new(),
                String::new(),
                "5".into(),
                String::new(),
                "1".into(),
                String::new(),
            ],
            errors: Default::default(),
            focus: NAME,
            devices,
            picker_sel: 0,
            picker_msg: None,
            summary: None,
            consent: String::new(),
            consent_msg: None,
        }
    }

    /// The fields the chosen role has (a client only needs a name and a disk).
    fn fields(&self) -> &'static [usize] {
        match self.role {
            Role::Master => &[NAME, CLIENTS, TIMEOUT, THROTTLE, COMP, DISK, NEXT],
            Role::Client => &[NAME, DISK, NEXT],
        }
    }

    fn move_focus(&mut self, forward: bool) {
        let f = self.fields();
        let i = f.iter().position(|&x| x == self.focus).unwrap_or(0);
        let n = f.len();
        self.focus = f[if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        }];
    }

    /// Handles one key.
    pub(crate) fn key(&mut self, key: KeyEvent) -> Outcome {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Outcome::Quit;
        }
        match self.step {
            Step::Home => match key.code {
                KeyCode::Up | KeyCode::Down => self.home_sel ^= 1,
                KeyCode::Enter if self.home_sel == 0 => self.step = Step::Role,
                KeyCode::Enter | KeyCode::Esc | KeyCode::Char('q') => return Outcome::Quit,
                _ => {}
            },
            Step::Role => match key.code {
                KeyCode::Up | KeyCode::Down => self.role_sel ^= 1,
                KeyCode::Char('m' | 'M') => self.choose_role(Role::Master),
                KeyCode::Char('c' | 'C') => self.choose_role(Role::Client),
                KeyCode::Enter => self.choose_role(if self.role_sel == 0 {
                    Role::Master
                } else {
                    Role::Client
                }),
                KeyCode::Esc => self.step = Step::Home,
                _ => {}
            },
            Step::Form => self.form_key(key),
            Step::Picker => self.picker_key(key),
            Step::Enable => return self.enable_key(key),
        }
        Outcome::Stay
    }

    fn choose_role(&mut self, role: Role) {
        self.role = role;
        self.role_sel = usize::from(role == Role::Client);
        self.step = Step::Form;
        self.focus = NAME;
        self.errors = Default::default();
    }

    fn form_key(&mut self, key: KeyEvent) {
        match key.code {
            KeyCode::Esc => self.step = Step::Role,
            KeyCode::Tab | KeyCode::Down => self.move_focus(true),
            KeyCode::BackTab | KeyCode::Up => self.move_focus(false),
            KeyCode::F(2) => self.open_picker(),
            KeyCode::Enter if self.focus == DISK && self.values[DISK].is_empty() => {
                self.open_picker();
            }
            KeyCode::Enter if self.focus == NEXT => self.submit(),
            KeyCode::Enter => self.move_focus(true),
            KeyCode::Backspace if self.focus < NEXT => {
                self.values[self.focus].pop();
                self.errors[self.focus] = None;
            }
            KeyCode::Char(c) if self.focus < NEXT && !c.is_control() => {
                self.values[self.focus].push(c);
                self.errors[self.focus] = None;
            }
            _ => {}
        }
    }

    fn open_picker(&mut self) {
        self.step = Step::Picker;
        self.picker_msg = None;
        self.focus = DISK;
    }

    fn picker_key(&mut self, key: KeyEvent) {
        // The last entry types a file path instead.
        let n = self.devices.len() + 1;
        match key.code {
            KeyCode::Esc => self.step = Step::Form,
            KeyCode::Up => self.picker_sel = (self.picker_sel + n - 1) % n,
            KeyCode::Down => self.picker_sel = (self.picker_sel + 1) % n,
            KeyCode::Enter => match self.devices.get(self.picker_sel) {
                None => {
                    self.values[DISK].clear();
                    self.step = Step::Form;
                }
                Some(d) => {
                    if self.role == Role::Client {
                        if let Some(why) = d.refused_as_target() {
                            self.picker_msg = Some(format!("{}: {why}", d.path.display()));
                            return;
                        }
                    }
                    self.values[DISK] = d.path.display().to_string();
                    self.errors[DISK] = None;
                    self.step = Step::Form;
                    self.focus = NEXT;
                }
            },
            _ => {}
        }
    }

    /// Checks every field; on success moves to the enable screen.
    fn submit(&mut self) {
        match self.validate() {
            Ok(()) => {
                self.summary = describe(std::path::Path::new(&self.values[DISK])).ok();
                self.consent.clear();
                self.consent_msg = None;
                self.step = Step::Enable;
            }
            Err(first) => self.focus = first,
        }
    }

    /// Fills `errors` as the command line would; returns the first bad field.
    fn validate(&mut self) -> Result<(), usize> {
        let v = &self.values;
        let mut e: [Option<String>; 6] = Default::default();
        e[NAME] = imgcast_proto::SessionName::new(v[NAME].trim())
            .err()
            .map(|x| x.to_string());
        if self.role == Role::Master {
            let clients = v[CLIENTS].trim();
            if !clients.is_empty() && clients.parse::<u32>().is_err() {
                e[CLIENTS] = Some(format!(
                    "'{clients}' is not a number of clients: a whole number, or empty"
                ));
            }
            e[TIMEOUT] = parse_timeout(&v[TIMEOUT]).err();
            if !v[THROTTLE].trim().is_empty() {
                e[THROTTLE] = parse_throttle(&v[THROTTLE]).err();
            }
            e[COMP] = parse_level(&v[COMP]).err();
        }
        e[DISK] = self.check_disk();
        self.errors = e;
        match self
            .fields()
            .iter()
            .find(|&&f| f < NEXT && self.errors[f].is_some())
        {
            Some(&f) => Err(f),
            None => Ok(()),
        }
    }

    fn check_disk(&self) -> Option<String> {
        let raw = self.values[DISK].trim();
        if raw.is_empty() {
            return Some("choose a disk: Enter on the empty field lists them".into());
        }
        let path = std::path::Path::new(raw);
        match (self.role, std::fs::metadata(path)) {
            (Role::Master, Err(e)) => Some(format!("cannot read {raw}: {e}")),
            (Role::Client, Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                Some(format!("cannot use {raw}: {e}"))
            }
            (Role::Client, Ok(_)) => match imgcast_disk::mounted_status(path) {
                Ok(Some(m)) => Some(format!("in use ({m}): cannot be a client's target")),
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            _ => None,
        }
    }

    fn enable_key(&mut self, key: KeyEvent) -> Outcome {
        let needs_consent = self.role == Role::Client
            && self
                .summary
                .as_ref()
                .is_some_and(DiskSummary::needs_consent);
        match key.code {
            KeyCode::Esc => self.step = Step::Form,
            KeyCode::Backspace if needs_consent => {
                self.consent.pop();
            }
            KeyCode::Char(c) if needs_consent => self.consent.push(c),
            KeyCode::Enter => {
                if needs_consent && !consents(&self.consent, &self.values[DISK]) {
                    self.consent_msg = Some(
                        "type yes (or the disk's name) to overwrite it, Esc to go back".into(),
                    );
                    return Outcome::Stay;
                }
                return Outcome::Run(Box::new(self.session_args()));
            }
            _ => {}
        }
        Outcome::Stay
    }

    /// The session as the command line would have it.
    fn session_args(&self) -> SessionArgs {
        let v = &self.values;
        let master = self.role == Role::Master;
        let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        SessionArgs {
            name: v[NAME].trim().to_string(),
            master,
            client: !master,
            clients: opt(&v[CLIENTS])
                .and_then(|c| c.parse().ok())
                .filter(|_| master),
            timeout: parse_timeout(&v[TIMEOUT]).unwrap_or(Duration::from_secs(300)),
            throttle: opt(&v[THROTTLE])
                .and_then(|t| parse_throttle(&t).ok())
                .filter(|_| master),
            slow: crate::args::Slow::Move,
            ttl: imgcast_engine::DEFAULT_TTL,
            querier: false,
            comp: parse_level(&v[COMP]).unwrap_or(1),
            disk: Some(PathBuf::from(v[DISK].trim())),
            wait: None,
            image: None,
            interface: None,
            port: imgcast_engine::DEFAULT_PORT,
            key: None,
            keyfile: None,
            // Asked on the enable screen.
            yes: true,
            map: Default::default(),
            place: Default::default(),
            json: false,
        }
    }

    /// The same session, typed: shown so it can be scripted next time.
    fn command_line(&self) -> String {
        let v = &self.values;
        let mut s = format!("img -session {}", v[NAME].trim());
        if self.role == Role::Master {
            s += " -master";
            if !v[CLIENTS].trim().is_empty() {
                s += &format!(" -clients={}", v[CLIENTS].trim());
            }
            s += &format!(" -timeout={}", v[TIMEOUT].trim());
            if !v[THROTTLE].trim().is_empty() {
                s += &format!(" -throttle={}", v[THROTTLE].trim());
            }
            s += &format!(" -comp={}", v[COMP].trim());
        } else {
            s += " -client";
        }
        s + &format!(" -disk={}", v[DISK].trim())
    }
}

/// Whether `answer` is a deliberate yes for overwriting `disk`: the word
/// `yes`, or the disk's path or name.
pub(crate) fn consents(answer: &str, disk: &str) -> bool {
    let a = answer.trim();
    let name = std::path::Path::new(disk.trim())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    !a.is_empty()
        && (a.eq_ignore_ascii_case("yes") || a == disk.trim() || Some(a) == name.as_deref())
}

fn title(text: &str) -> Block<'_> {
    Block::default()
        .borders(Borders::ALL)
        .title(format!(" imgcast · {text} "))
}

fn selectable<'a>(items: &[&'a str], sel: usize) -> Vec<Line<'a>> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == sel {
                Line::from(Span::styled(
                    format!("▶ {t}"),
                    Style::default().add_modifier(Modifier::REVERSED),
                ))
            } else {
                Line::from(format!("  {t}"))
            }
        })
        .collect()
}

fn keys_line(f: &mut Frame<'_>, area: Rect, text: &str) {
    f.render_widget(
        Paragraph::new(Span::styled(
            text.to_string(),
            Style::default().add_modifier(Modifier::REVERSED),
        )),
        area,
    );
}

/// Draws the menu.
pub(crate) fn render(m: &Menu, f: &mut Frame<'_>) {
    let area = f.area();
    let (name, keys) = match m.step {
        Step::Home => ("menu", "↑↓ choose   Enter open   q quit"),
        Step::Role => ("Multicast Session", "↑↓ choose   Enter open   Esc back"),
        Step::Form => (
            if m.role == Role::Master {
                "Multicast Session · Master"
            } else {
                "Multicast Session · Client"
            },
            "↑↓/Tab move   type to edit   F2 list of disks   Enter on Next   Esc back",
        ),
        Step::Picker => ("choose the disk", "↑↓ choose   Enter take   Esc back"),
        Step::Enable => ("enable the session", "Enter enable   Esc back"),
    };
    let block = title(name);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [body, keys_area] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
    keys_line(f, keys_area, keys);
    match m.step {
        Step::Home => {
            let mut lines = vec![
                Line::from("imgcast lays one disk down on many machines at once over multicast."),
                Line::from(""),
            ];
            lines.extend(selectable(&["Multicast Session", "Quit"], m.home_sel));
            f.render_widget(Paragraph::new(lines), body);
        }
        Step::Role => {
            let mut lines = vec![
                Line::from("What is this device in the session?"),
                Line::from(""),
            ];
            lines.extend(selectable(
                &[
                    "Master: send this device's disk to the clients",
                    "Client: receive the master's disk and overwrite a disk here",
                ],
                m.role_sel,
            ));
            f.render_widget(Paragraph::new(lines), body);
        }
        Step::Form => render_form(m, f, body),
        Step::Picker => render_picker(m, f, body),
        Step::Enable => render_enable(m, f, body),
    }
}

fn render_form(m: &Menu, f: &mut Frame<'_>, area: Rect) {
    let mut lines = vec![Line::from("")];
    for &i in m.fields() {
        let focused = m.focus == i;
        if i == NEXT {
            lines.push(Line::from(""));
            let style = if focused {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                Style::default()
            };
            lines.push(Line::from(Span::styled("[ Next ]", style)));
            continue;
        }
        let value = format!("{}{}", m.values[i], if focused { "_" } else { "" });
        let label_style = if focused {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        // A message too long for the side of the field goes under it.
        let (side, under) = match &m.errors[i] {
            Some(e) if e.len() + 46 <= usize::from(area.width) => (
                Span::styled(format!("✗ {e}"), Style::default().fg(Color::Red)),
                None,
            ),
            Some(e) => (
                Span::styled("✗", Style::default().fg(Color::Red)),
                Some(Line::from(Span::styled(
                    format!("{:>20}{e}", ""),
                    Style::default().fg(Color::Red),
                ))),
            ),
            None => (
                Span::styled(HINTS[i], Style::default().fg(Color::DarkGray)),
                None,
            ),
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{:>18}: ", LABELS[i]), label_style),
            Span::raw(format!("{value:<24} ")),
            side,
        ]));
        lines.extend(under);
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn render_picker(m: &Menu, f: &mut Frame<'_>, area: Rect) {
    let mut lines = vec![
        Line::from(if m.role == Role::Client {
            "The disk to overwrite with the master's (a disk in use cannot be chosen):"
        } else {
            "The disk to send:"
        }),
        Line::from(""),
    ];
    let mut items: Vec<String> = m
        .devices
        .iter()
        .map(|d| {
            let state = match (&d.mounted, d.read_only) {
                (Some(u), _) => format!("in use: {u}"),
                (None, true) => "read-only".into(),
                (None, false) => "not mounted".into(),
            };
            format!(
                "{:<16} {:>10}  {:<22} {state}",
                d.path.display(),
                human(d.size),
                d.model.as_deref().unwrap_or("-")
            )
        })
        .collect();
    items.push("A file: type its path".into());
    for (i, text) in items.iter().enumerate() {
        let dimmed = m.role == Role::Client
            && m.devices
                .get(i)
                .is_some_and(|d| d.refused_as_target().is_some());
        let mut style = Style::default();
        if dimmed {
            style = style.fg(Color::DarkGray);
        }
        if i == m.picker_sel {
            style = style.add_modifier(Modifier::REVERSED);
        }
        let mark = if i == m.picker_sel { "▶ " } else { "  " };
        lines.push(Line::from(Span::styled(format!("{mark}{text}"), style)));
    }
    if let Some(msg) = &m.picker_msg {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled(
            format!("✗ {msg}"),
            Style::default().fg(Color::Red),
        )));
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn render_enable(m: &Menu, f: &mut Frame<'_>, area: Rect) {
    let mut lines = vec![Line::from("")];
    let v = &m.values;
    if m.role == Role::Master {
        lines.push(Line::from(format!(
            "This device becomes the master of session '{}' and sends {}.",
            v[NAME].trim(),
            v[DISK].trim()
        )));
        let t = v[TIMEOUT].trim();
        let timeout = if t.ends_with(['s', 'm', 'h']) {
            t.to_string()
        } else {
            format!("{t} min")
        };
        let rule = if v[CLIENTS].trim().is_empty() {
            "It starts when you press s.".to_string()
        } else {
            format!(
                "It starts when {} clients have registered, {timeout} after the last registration, or when you press s.",
                v[CLIENTS].trim(),
            )
        };
        lines.push(Line::from(rule));
    } else {
        lines.push(Line::from(format!(
            "This device joins session '{}' as a client. Its disk is OVERWRITTEN:",
            v[NAME].trim()
        )));
        match &m.summary {
            Some(s) => lines.extend(s.lines().into_iter().map(|l| Line::from(format!("  {l}")))),
            None => lines.push(Line::from(format!("  {}", v[DISK].trim()))),
        }
    }
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled(
        format!("The same from a script: {}", m.command_line()),
        Style::default().fg(Color::DarkGray),
    )));
    lines.push(Line::from(""));
    let needs_consent =
        m.role == Role::Client && m.summary.as_ref().is_some_and(DiskSummary::needs_consent);
    if needs_consent {
        lines.push(Line::from(vec![
            Span::styled(
                "Type yes (or the disk's name) and Enter to overwrite it: ",
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!("{}_", m.consent)),
        ]));
    } else {
        lines.push(Line::from(Span::styled(
            "Press Enter to enable the session.",
            Style::default().add_modifier(Modifier::BOLD),
        )));
    }
    if let Some(msg) = &m.consent_msg {
        lines.push(Line::from(Span::styled(
            format!("✗ {msg}"),
            Style::default().fg(Color::Red),
        )));
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

/// Runs the menu on the terminal; `None` when the user quits.
pub(crate) fn run() -> Result<Option<SessionArgs>> {
    let mut menu = Menu::new(DeviceChoice::list());
    let mut screen = Screen::enter()?;
    loop {
        screen.terminal.draw(|f| render(&menu, f))?;
        if let Event::Key(k) = crossterm::event::read()? {
            if k.kind != KeyEventKind::Press {
                continue;
            }
            match menu.key(k) {
                Outcome::Stay => {}
                Outcome::Quit => return Ok(None),
                Outcome::Run(args) => return Ok(Some(*args)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::test_util::draw;

    fn devices() -> Vec<DeviceChoice> {
        vec![
            DeviceChoice {
                path: "/dev/nvme0n1".into(),
                size: 512 << 30,
                model: Some("Samsung SSD 980".into()),
                mounted: Some("/dev/nvme0n1p2 mounted at /".into()),
                read_only: false,
            },
            DeviceChoice {
                path: "/dev/sdb".into(),
                size: 15 << 30,
                model: Some("SanDisk Ultra".into()),
                mounted: None,
                read_only: false,
            },
        ]
    }

    fn press(m: &mut Menu, keys: &[KeyCode]) -> Outcome {
        let mut last = Outcome::Stay;
        for &k in keys {
            last = m.key(KeyEvent::from(k));
        }
        last
    }

    fn typed(m: &mut Menu, s: &str) {
        for c in s.chars() {
            m.key(KeyEvent::from(KeyCode::Char(c)));
        }
    }

    fn snap(m: &Menu) -> String {
        draw(100, 22, |f| render(m, f))
    }

    #[test]
    fn home_role_and_master_form() {
        let mut m = Menu::new(devices());
        insta::assert_snapshot!("menu_home", snap(&m));
        press(&mut m, &[KeyCode::Enter]);
        insta::assert_snapshot!("menu_role", snap(&m));
        press(&mut m, &[KeyCode::Enter]);
        insta::assert_snapshot!("menu_master_form", snap(&m));
    }

    #[test]
    fn wrong_values_are_named_beside_their_fields() {
        let mut m = Menu::new(devices());
        press(&mut m, &[KeyCode::Enter, KeyCode::Enter]);
        typed(&mut m, "lab 3");
        press(&mut m, &[KeyCode::Tab]);
        typed(&mut m, "-1");
        press(&mut m, &[KeyCode::Tab, KeyCode::Backspace]);
        typed(&mut m, "abc");
        press(&mut m, &[KeyCode::Tab]);
        typed(&mut m, "x");
        press(&mut m, &[KeyCode::Tab, KeyCode::Backspace]);
        typed(&mut m, "12");
        press(&mut m, &[KeyCode::Tab]);
        typed(&mut m, "/nonexistent/disk");
        press(&mut m, &[KeyCode::Tab, KeyCode::Enter]);
        assert_eq!(m.step, Step::Form);
        assert_eq!(m.focus, NAME);
        for i in [NAME, CLIENTS, TIMEOUT, THROTTLE, COMP, DISK] {
            assert!(m.errors[i].is_some(), "field {i} passed");
        }
        insta::assert_snapshot!("menu_form_errors", snap(&m));
    }

    #[test]
    fn client_picker_refuses_a_mounted_disk() {
        let mut m = Menu::new(devices());
        press(&mut m, &[KeyCode::Enter, KeyCode::Down, KeyCode::Enter]);
        insta::assert_snapshot!("menu_client_form", snap(&m));
        typed(&mut m, "lab3");
        press(&mut m, &[KeyCode::Tab, KeyCode::Enter]);
        assert_eq!(m.step, Step::Picker);
        press(&mut m, &[KeyCode::Enter]);
        assert_eq!(m.step, Step::Picker, "a mounted disk was taken");
        insta::assert_snapshot!("menu_picker_refused", snap(&m));
        press(&mut m, &[KeyCode::Down, KeyCode::Enter]);
        assert_eq!(m.values[DISK], "/dev/sdb");
        assert_eq!(m.focus, NEXT);
    }

    #[test]
    fn master_enable_gives_the_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.raw");
        std::fs::write(&disk, [1u8; 4096]).expect("write");
        let mut m = Menu::new(devices());
        press(&mut m, &[KeyCode::Enter, KeyCode::Enter]);
        typed(&mut m, "lab3");
        press(&mut m, &[KeyCode::Tab]);
        typed(&mut m, "2");
        press(&mut m, &[KeyCode::Tab, KeyCode::Backspace]);
        typed(&mut m, "30s");
        press(&mut m, &[KeyCode::Tab, KeyCode::Tab, KeyCode::Tab]);
        typed(&mut m, "/tmp/x");
        // Replace with the real file, keeping the snapshot free of tempdir names.
        m.values[DISK] = disk.display().to_string();
        press(&mut m, &[KeyCode::Tab, KeyCode::Enter]);
        assert_eq!(m.step, Step::Enable, "{:?}", m.errors);
        m.values[DISK] = "/tmp/x".into();
        insta::assert_snapshot!("menu_master_enable", snap(&m));
        let Outcome::Run(args) = press(&mut m, &[KeyCode::Enter]) else {
            panic!("not run");
        };
        assert!(args.master && !args.client);
        assert_eq!(args.name, "lab3");
        assert_eq!(args.clients, Some(2));
        assert_eq!(args.timeout, Duration::from_secs(30));
        assert_eq!(args.comp, 1);
    }

    #[test]
    fn client_enable_needs_a_deliberate_yes() {
        let mut m = Menu::new(devices());
        press(&mut m, &[KeyCode::Enter, KeyCode::Down, KeyCode::Enter]);
        typed(&mut m, "lab3");
        m.values[DISK] = "/dev/sdb".into();
        m.role = Role::Client;
        m.summary = Some(DiskSummary {
            path: "/dev/sdb".into(),
            block: true,
            size: 15 << 30,
            model: Some("SanDisk Ultra".into()),
            contents: vec!["partition /dev/sdb1 15.0 GiB: vfat \"STICK\"".into()],
            in_use: None,
        });
        m.step = Step::Enable;
        insta::assert_snapshot!("menu_client_enable", snap(&m));
        assert!(matches!(press(&mut m, &[KeyCode::Enter]), Outcome::Stay));
        typed(&mut m, "y");
        assert!(matches!(press(&mut m, &[KeyCode::Enter]), Outcome::Stay));
        insta::assert_snapshot!("menu_client_enable_refused", snap(&m));
        typed(&mut m, "es");
        let Outcome::Run(args) = press(&mut m, &[KeyCode::Enter]) else {
            panic!("not run");
        };
        assert!(args.client && args.yes);
        assert!(consents("sdb", "/dev/sdb"));
        assert!(consents("/dev/sdb", "/dev/sdb"));
        assert!(!consents("y", "/dev/sdb"));
    }
}
