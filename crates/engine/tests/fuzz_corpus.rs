//! Replays the committed corpus of the `client_target` fuzz target (`fuzz/corpus/client_target`)
//! through the very code the fuzzer runs (`fuzz/src/client_target.rs`): datagrams through a
//! client's receiver and core into a real target file, with the target's state checked after
//! every input. `cargo test -p imgcast-engine --test fuzz_corpus -- --ignored` rewrites the seeds.

#[path = "../../../fuzz/src/client_target.rs"]
mod client_target;

use client_target::End;
use std::fs;
use std::path::Path;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fuzz/corpus/client_target"
);

#[test]
fn client_target_corpus() {
    let mut n = 0;
    for entry in fs::read_dir(CORPUS).unwrap_or_else(|e| panic!("corpus {CORPUS}: {e}")) {
        let path = entry.expect("corpus entry").path();
        if !path.is_file() {
            continue;
        }
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let end = match std::panic::catch_unwind(|| client_target::run(&bytes)) {
            Ok(end) => end,
            Err(p) => {
                eprintln!("fuzz input {} fails", path.display());
                std::panic::resume_unwind(p);
            }
        };
        // The seeds reach the ends they were written for.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some(n) if n.starts_with("seed-clean") || n == "seed-mutated" => {
                assert_eq!(end, End::Finished, "{n}");
            }
            Some("seed-never-started") => assert_eq!(end, End::Untouched),
            Some("seed-started-late") => assert_eq!(end, End::Finished),
            _ => {}
        }
        n += 1;
    }
    assert!(n >= 6, "only {n} inputs in {CORPUS}");
}

fn op(s: &mut Vec<u8>, op: u8, len: u16, data: &[u8]) {
    s.push(op);
    s.extend_from_slice(&len.to_le_bytes());
    s.extend_from_slice(data);
}

fn write_seed(name: &str, bytes: &[u8]) {
    fs::create_dir_all(CORPUS).expect("corpus dir");
    fs::write(Path::new(CORPUS).join(format!("seed-{name}")), bytes).expect("write seed");
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus/client_target"]
fn write_seeds() {
    // Clean sessions, keyless and keyed, with and without a committed root hash: they finish.
    for (mode, name) in [
        (0u8, "clean"),
        (1, "clean-keyed"),
        (2, "clean-root"),
        (3, "clean-keyed-root"),
    ] {
        let mut s = vec![mode];
        for _ in 0..10 {
            op(&mut s, 3, 0, &[]);
            op(&mut s, 2, 100, &[]);
        }
        write_seed(name, &s);
    }
    // Captured packets with a byte changed, delivered as they are (the check drops them) and
    // sealed again (they pass the check: the parsers and the chunk check must hold).
    for (reseal, name) in [(0u8, "mutated"), (0x40, "mutated-resealed")] {
        let mut s = vec![0u8];
        for i in 0..40u16 {
            op(&mut s, 3, 0, &[]);
            op(&mut s, 1 | reseal, i, &[(i * 7 % 200) as u8, 0, 0x5a]);
            op(&mut s, 2, 20, &[]);
        }
        write_seed(name, &s);
    }
    // Registered with a master that never starts: the target must stay as it was.
    let mut s = vec![4u8];
    for _ in 0..10 {
        op(&mut s, 3, 0, &[]);
        op(&mut s, 2, 1000, &[]);
    }
    write_seed("never-started", &s);
    // The same, then started by hand.
    op(&mut s, 7, 0, &[]);
    write_seed("started-late", &s);
}
