//! `img`: the imgcast command. A thin face over the engine and image crates:
//!
//! ```text
//!  argv ──canonicalize──▶ clap ──▶ make / restore / info ──▶ imgcast-image ──▶ imgcast-disk
//!                                   session / demo ─────────▶ imgcast-engine ──▶ imgcast-proto
//! ```
#![forbid(unsafe_code)]

mod args;
mod cmd_boot;
mod cmd_image;
mod cmd_session;
mod demo;
mod progress;
mod sample;
mod tui;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let argv = args::canonicalize(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0 and errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Some(Command::Make(a)) => cmd_image::make(&a),
        Some(Command::Restore(a)) => cmd_image::restore(&a),
        Some(Command::Info(a)) => cmd_image::info(&a),
        Some(Command::Session(a)) => cmd_session::session(&a),
        Some(Command::Demo(a)) => demo::demo(&a),
        Some(Command::Boot(a)) => cmd_boot::boot(&a),
        Some(Command::Completions(a)) => completions(a.shell),
        Some(Command::Man(a)) => man_page(&a),
        Some(Command::Server(a)) => imgcast_server::run(&imgcast_server::ServerOptions {
            images: a.images,
            listen: a.listen,
            state: a.state,
            token_file: a.token_file,
            interface: a.interface,
            boot_dir: a.boot_dir,
        })
        .map_err(|e| anyhow::anyhow!(e)),
        // On a terminal, `img` alone opens the menu, as in the original.
        None if tui::available() && std::io::stdout().is_terminal() => match tui::menu::run() {
            Ok(Some(session)) => cmd_session::run_session(&session, true),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        },
        None => {
            let mut cmd = Cli::command();
            if std::io::stdout().is_terminal() {
                let _ = cmd.print_help();
            } else {
                eprintln!("{}", cmd.render_usage());
                eprintln!("Run `img --help` for the commands.");
            }
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("img: error: {}", error_text(&e));
            if e.downcast_ref::<UsageError>().is_some() {
                eprintln!("Run `img --help` for the forms of the command.");
                return ExitCode::from(2);
            }
            ExitCode::from(1)
        }
    }
}

/// `img completions SHELL`: the script for `shell`, from the clap definitions.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "img", &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// `img man [SUBCOMMAND]`: a man page, from the same definitions as
/// `--help`: img(1), or img-SUBCOMMAND(1) with every option of that
/// subcommand; `--dir` writes them all.
fn man_page(a: &args::ManArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        clap_mangen::generate_to(Cli::command(), dir)
            .map_err(|e| anyhow::anyhow!("writing man pages to {}: {e}", dir.display()))?;
        return Ok(());
    }
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let page = match &a.subcommand {
        None => root,
        Some(name) => root.find_subcommand(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = root.get_subcommands().map(|s| s.get_name()).collect();
            UsageError(format!(
                "no subcommand '{name}'; man pages exist for: {}",
                known.join(", ")
            ))
        })?,
    };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page)
        .source(format!("img {}", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

/// A command line that parses but does not make sense (a client without a
/// disk, an empty session name): exit code 2, like a parse error.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The error and its causes, `: `-joined, leaving out a cause that its
/// parent's message already ends with (the library errors name their cause
/// in their own message, and keep it as their `source` too).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.ends_with(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        last = text;
    }
    out
}

/// A closed pipe (`img info | head`) is not an error worth a message.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library error in the common shape: it names its cause and keeps it.
    #[derive(Debug)]
    struct Named {
        source: std::io::Error,
    }

    impl std::fmt::Display for Named {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sending to h: {}", self.source)
        }
    }

    impl std::error::Error for Named {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_named_by_its_parent_is_printed_once() {
        let io = std::io::Error::other("connection refused");
        let e = anyhow::Error::from(Named { source: io }).context("capturing d to h");
        assert_eq!(
            error_text(&e),
            "capturing d to h: sending to h: connection refused"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }
}
