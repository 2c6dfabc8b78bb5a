//! The interactive terminal: the menu that `img` alone opens, the live
//! session screens, and the confirmation before a disk is overwritten.
//!
//! ```text
//!  img (no args) ──▶ menu::run ──▶ SessionArgs ──▶ cmd_session::session
//!  img -session … ──────────────────────────────▶ cmd_session::session
//!                                                   │ SessionEvent
//!                                                   ▼
//!                              live::LiveUi (thread) ◀── keys s / q / m
//! ```
//!
//! Every screen is a pure function of a state value (`render(&State, &mut
//! Frame)`), so the tests draw them on ratatui's `TestBackend` and compare
//! snapshots; only [`Screen`] touches the real terminal.

pub(crate) mod disk_info;
pub(crate) mod live;
pub(crate) mod menu;

use std::io::{IsTerminal, Stderr};
use std::sync::Once;

use anyhow::{Context, Result};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

/// The full-screen terminal, drawn on standard error (standard output stays
/// free for `--json` and the result table). Raw mode and the alternate screen
/// are undone when it is dropped, and by a panic hook if the program panics.
pub(crate) struct Screen {
    pub(crate) terminal: Terminal<CrosstermBackend<Stderr>>,
}

impl Screen {
    /// Takes over the terminal.
    pub(crate) fn enter() -> Result<Self> {
        install_panic_hook();
        enable_raw_mode().context("switching the terminal to raw mode")?;
        let mut err = std::io::stderr();
        if let Err(e) = crossterm::execute!(err, EnterAlternateScreen) {
            restore();
            return Err(e).context("opening the alternate screen");
        }
        let terminal = match Terminal::new(CrosstermBackend::new(err)) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e).context("opening the terminal");
            }
        };
        Ok(Self { terminal })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        restore();
    }
}

/// Leaves raw mode and the alternate screen; harmless when neither is on.
fn restore() {
    let _ = disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stderr(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// A panic while the screen is up would leave the shell in raw mode with no
/// cursor: restore the terminal first, then let the usual hook print.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Whether the full-screen interface can be used: keys come from a terminal
/// and the screen is one (and not a `dumb` one).
pub(crate) fn available() -> bool {
    std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// `1.5 GiB`: the same units as the rest of `img`.
pub(crate) fn human(n: u64) -> String {
    crate::cmd_image::human(n)
}

#[cfg(test)]
pub(crate) mod test_util {
    use ratatui::backend::TestBackend;
    use ratatui::{Frame, Terminal};

    /// Draws `f` on a `w`×`h` test terminal and returns the buffer as text.
    pub(crate) fn draw(w: u16, h: u16, f: impl FnOnce(&mut Frame<'_>)) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
        t.draw(f).expect("draw");
        t.backend().to_string()
    }
}
