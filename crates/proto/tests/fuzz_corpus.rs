//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the very code
//! the fuzz targets run (shared from `fuzz/src/`), so every input the fuzzer
//! kept, crashes it found included, stays a regression test under
//! `cargo test`.
//!
//! `cargo test -p imgcast-proto --test fuzz_corpus -- --ignored` rewrites
//! the valid seeds (`seed-*`) from the current wire format.

#[path = "../../../fuzz/src/proto_endpoints.rs"]
mod proto_endpoints;
#[path = "../../../fuzz/src/proto_packet.rs"]
mod proto_packet;

use std::fs;
use std::panic::{catch_unwind, resume_unwind};
use std::path::Path;

use imgcast_proto::wire::{
    self, Ack, AckKind, Announce, Body, Codec, Data, Need, Packet, Phase, Register, Report, Status,
    MASTER,
};
use imgcast_proto::SessionName;

/// Runs `run` on every file of the corpus `dir`; fails if fewer than `min`
/// were found (the corpus must not vanish unnoticed).
fn replay(dir: &str, min: usize, run: fn(&[u8])) {
    let mut replayed = 0;
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("corpus {dir}: {e}"));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("corpus {dir}: {e}")).path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !path.is_file() {
            continue;
        }
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = catch_unwind(|| run(&bytes)) {
            eprintln!("fuzz input {} panics", path.display());
            resume_unwind(panic);
        }
        replayed += 1;
    }
    assert!(
        replayed >= min,
        "only {replayed} inputs in {dir}, expected at least {min}"
    );
}

#[test]
fn proto_packet_corpus() {
    replay(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/proto_packet"
        ),
        MIN_INPUTS,
        proto_packet::run,
    );
}

#[test]
fn proto_endpoints_corpus() {
    replay(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/proto_endpoints"
        ),
        MIN_INPUTS,
        proto_endpoints::run,
    );
}

/// Each corpus holds its valid seeds and what the fuzzer found (30 files now).
const MIN_INPUTS: usize = 9;

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    assert!(
        bytes.len() <= 8192,
        "seed {target}/{name} is {} bytes",
        bytes.len()
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    fs::create_dir_all(&dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

/// One packet of each type, as the fuzzed session ("fuzz", id 0x5EED_0001) would send it.
fn samples() -> Vec<(&'static str, Packet)> {
    let bodies = [
        (
            "announce",
            Body::Announce(Announce {
                phase: Phase::Gathering,
                yields: true,
                object_count: 3,
                symbol_size: 185,
                window: 64,
                session_info: b"fuzz".to_vec(),
            }),
        ),
        (
            "register",
            Body::Register(Register {
                nonce: 1,
                label: "fuzz".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
            }),
        ),
        (
            "ack",
            Body::Ack(Ack {
                client_id: 7,
                kind: AckKind::Registered,
                nonce: 1,
            }),
        ),
        ("start", Body::Start { clients: 1 }),
        (
            "data",
            Body::Data(Data {
                object: 1,
                object_len: 300,
                esi: 0,
                sent_through: 1,
                symbol: vec![2; 185],
            }),
        ),
        (
            "patch",
            Body::Patch(wire::Patch {
                object: 1,
                esis: vec![0, 1],
                symbol: vec![3; 185],
            }),
        ),
        (
            "status",
            Body::Status(Status {
                low: 1,
                objects_done: 1,
                bytes: 300,
                highest_seq: 4,
                held_us: 1000,
                lost: 1,
                expected: 4,
                rejected: 0,
                needs: vec![
                    Need {
                        object: 1,
                        count: 1,
                    },
                    Need {
                        object: 2,
                        count: wire::NEED_ALL,
                    },
                ],
                holes: vec![wire::Holes {
                    object: 1,
                    esis: vec![0],
                }],
            }),
        ),
        (
            "end",
            Body::End {
                trailer: b"trailer".to_vec(),
            },
        ),
        (
            "report",
            Body::Report(Report {
                ok: false,
                reason: "hash mismatch".into(),
            }),
        ),
        (
            "abort",
            Body::Abort {
                reason: "operator".into(),
            },
        ),
    ];
    let name = SessionName::new("fuzz").expect("valid session name");
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, (n, body))| {
            let client = matches!(n, "register" | "status" | "report");
            let p = Packet {
                name_hash: name.hash(),
                session_id: 0x5EED_0001,
                sender: if client { 7 } else { MASTER },
                seq: 100 + i as u64,
                unicast: client || n == "ack",
                body,
            };
            (n, p)
        })
        .collect()
}

/// An endpoints operation: op byte, u16 length, datagram.
fn op(script: &mut Vec<u8>, op: u8, len: u16, datagram: &[u8]) {
    script.push(op);
    script.extend_from_slice(&len.to_le_bytes());
    script.extend_from_slice(datagram);
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus"]
fn write_seeds() {
    for (name, p) in samples() {
        let mut plain = Vec::new();
        p.encode(&mut plain);
        write_seed("proto_packet", name, &plain);
        let [check, keyed] = proto_packet::keys(&p.name_hash, p.session_id);
        if matches!(name, "announce" | "data" | "patch" | "status") {
            write_seed(
                "proto_packet",
                &format!("{name}-sealed"),
                &wire::seal(&p, &check),
            );
            write_seed(
                "proto_packet",
                &format!("{name}-keyed"),
                &wire::seal(&p, &keyed),
            );
        }
    }

    // A whole session: exchange, register, start, then ticks until done.
    for (mode, name) in [(0u8, "session"), (1, "session-keyed")] {
        let mut s = vec![mode];
        op(&mut s, 3, 0, &[]);
        op(&mut s, 2, 300, &[]);
        op(&mut s, 3, 0, &[]);
        op(&mut s, 7, 0, &[]);
        for _ in 0..20 {
            op(&mut s, 2, 100, &[]);
            op(&mut s, 3, 0, &[]);
        }
        write_seed("proto_endpoints", name, &s);
    }
    // Registered and started, then forged packets of the session to either side
    // (op bits 4-6 patch in name hash and session id and seal them).
    for (name, p) in samples() {
        let mut d = Vec::new();
        p.encode(&mut d);
        // Name hash, session id and a valid tag patched in (op bits 4-6).
        let to = if matches!(name, "register" | "status" | "report") {
            0x70
        } else {
            0x71
        };
        let mut s = vec![0];
        op(&mut s, 3, 0, &[]);
        op(&mut s, 2, 300, &[]);
        op(&mut s, 3, 0, &[]);
        op(&mut s, 7, 0, &[]);
        op(&mut s, to, d.len() as u16, &d);
        op(&mut s, 2, 200, &[]);
        op(&mut s, 3, 0, &[]);
        write_seed("proto_endpoints", &format!("forged-{name}"), &s);
    }
}
