//! Prints the layout of a disk or image: `cargo run -p imgcast-fsmap
//! --example layout -- DISK [--force] [--no-partclone] [--json]`.

use std::path::PathBuf;
use std::process::ExitCode;

use imgcast_fsmap::{analyze, AnalyzeOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: layout DISK [--force] [--no-partclone] [--json]");
        return ExitCode::from(2);
    };
    let opts = AnalyzeOptions::new()
        .force(args.iter().any(|a| a == "--force"))
        .use_partclone(!args.iter().any(|a| a == "--no-partclone"));
    match analyze(&PathBuf::from(path), &opts) {
        Ok(l) => {
            if args.iter().any(|a| a == "--json") {
                match serde_json::to_string_pretty(&l) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                for line in l.table_lines() {
                    println!("{line}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            ExitCode::FAILURE
        }
    }
}
