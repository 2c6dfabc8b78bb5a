//! Real tables with a few bits changed or lying fields (checksums made to
//! match again, so the lie reaches the parser): every one refused with a
//! clear error, nothing written, no panic, no huge allocation.

use std::fs;
use std::path::Path;

use imgcast_retarget::{fit_table, read_record, write_record, FitOptions, RetargetError};

use crate::record::sample;
use crate::{hash_file, p, sgdisk_disk, tool_stdin, TestResult, MIB};

/// CRC-32 (IEEE), as GPT uses: to make lying headers look valid.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Recomputes the primary GPT's array CRC (over 128 entries of 128 bytes,
/// whatever the header now claims) and header CRC.
fn reseal_gpt(d: &mut [u8]) {
    let array = crc32(&d[1024..1024 + 128 * 128]);
    d[512 + 88..512 + 92].copy_from_slice(&array.to_le_bytes());
    d[512 + 16..512 + 20].fill(0);
    let h = crc32(&d[512..512 + 92]);
    d[512 + 16..512 + 20].copy_from_slice(&h.to_le_bytes());
}

/// Entry `i` (0-based) of the primary array.
fn entry(i: usize) -> usize {
    1024 + 128 * i
}

/// Runs every operation on `disk` and checks each is refused with nothing
/// written. Returns the fit error's text.
fn refused_everywhere(name: &str, disk: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let h = hash_file(disk)?;
    let e = fit_table(disk, &FitOptions::new().grow(true))
        .err()
        .ok_or(format!("{name}: fit_table accepted it"))?;
    eprintln!("{name}: {e}");
    assert!(
        matches!(
            e,
            RetargetError::BadGpt { .. }
                | RetargetError::BadMbr { .. }
                | RetargetError::Truncated { .. }
        ),
        "{name}: {e:?}"
    );
    assert!(
        write_record(disk, &sample("x.img")).is_err(),
        "{name}: record written"
    );
    assert!(read_record(disk).is_err(), "{name}: record place found");
    assert_eq!(hash_file(disk)?, h, "{name}: the disk was written");
    Ok(e.to_string())
}

#[test]
fn lying_gpts_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.raw");
    sgdisk_disk(&good, 16 * MIB, &["-n", "1:2048:+4M", "-n", "2:0:0"])?;
    let base = fs::read(&good)?;
    type Edit = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("flipped header bit", |d| d[512 + 41] ^= 4, "CRC32"),
        (
            "flipped array bit",
            |d| d[entry(1) + 33] ^= 1,
            "entry array",
        ),
        (
            "4 billion entries",
            |d| {
                d[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
                reseal_gpt(d);
            },
            "partition entries",
        ),
        (
            "256-byte entries",
            |d| {
                d[512 + 84..512 + 88].copy_from_slice(&256u32.to_le_bytes());
                reseal_gpt(d);
            },
            "256 bytes",
        ),
        (
            "array far away",
            |d| {
                d[512 + 72..512 + 80].copy_from_slice(&(1u64 << 60).to_le_bytes());
                reseal_gpt(d);
            },
            "not 2",
        ),
        (
            "partition from LBA 0",
            |d| {
                d[entry(0) + 32..entry(0) + 40].fill(0);
                reseal_gpt(d);
            },
            "outside the usable",
        ),
        (
            "partition ending before it starts",
            |d| {
                d[entry(1) + 40..entry(1) + 48].copy_from_slice(&5u64.to_le_bytes());
                reseal_gpt(d);
            },
            "outside the usable",
        ),
        (
            "overlapping partitions",
            |d| {
                // Partition 2 starts inside partition 1.
                d[entry(1) + 32..entry(1) + 40].copy_from_slice(&4000u64.to_le_bytes());
                reseal_gpt(d);
            },
            "overlap",
        ),
        (
            "backup inside the usable area",
            |d| {
                d[512 + 32..512 + 40].copy_from_slice(&100u64.to_le_bytes());
                reseal_gpt(d);
            },
            "backup header",
        ),
        (
            "a disk of 2^50 sectors",
            |d| {
                d[512 + 32..512 + 40].copy_from_slice(&(1u64 << 50).to_le_bytes());
                d[512 + 48..512 + 56].copy_from_slice(&((1u64 << 50) - 40).to_le_bytes());
                d[entry(1) + 40..entry(1) + 48].copy_from_slice(&((1u64 << 50) - 41).to_le_bytes());
                reseal_gpt(d);
            },
            "beyond any real disk",
        ),
        (
            "header claims another LBA",
            |d| {
                d[512 + 24..512 + 32].copy_from_slice(&7u64.to_le_bytes());
                reseal_gpt(d);
            },
            "says it is at LBA 7",
        ),
    ];
    for (name, edit, says) in cases {
        let disk = dir.path().join("bad.raw");
        let mut bytes = base.clone();
        edit(&mut bytes);
        fs::write(&disk, &bytes)?;
        let msg = refused_everywhere(name, &disk)?;
        assert!(msg.contains(says), "{name}: {msg}");
    }
    // The untouched original still works, so the edits caused the refusals.
    assert!(fit_table(&good, &FitOptions::new())?.did_nothing());
    Ok(())
}

#[test]
fn lying_mbrs_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.raw");
    fs::File::create(&good)?.set_len(16 * MIB)?;
    // Extended at 10240; logical 5 at 12288 (its EBR at 10240), logical 6
    // at 18432 (EBR at 16384).
    tool_stdin(
        "sfdisk",
        &["-q", p(&good)],
        "label: dos\nstart=2048, size=4M, type=83\nstart=10240, type=5\n\
         start=12288, size=2M, type=83\nstart=18432, type=83\n",
    )?;
    let base = fs::read(&good)?;
    let ebr1 = 10240 * 512;
    let ebr2 = 16384 * 512;
    type Edit = fn(&mut Vec<u8>, usize, usize);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("bad boot flag", |d, _, _| d[446] = 0x42, "sector 0"),
        (
            "overlapping primaries",
            |d, _, _| d[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&3000u32.to_le_bytes()),
            "overlap",
        ),
        (
            "partition at LBA 0",
            |d, _, _| d[446 + 8..446 + 12].fill(0),
            "starts at LBA 0",
        ),
        (
            "protective entry without GPT",
            |d, _, _| d[446 + 4] = 0xEE,
            "protective",
        ),
        (
            "EBR chain loops back",
            |d, _, e2| {
                d[e2 + 446 + 16 + 8..e2 + 446 + 16 + 12].copy_from_slice(&0u32.to_le_bytes()[..])
            },
            "",
        ),
        (
            "EBR links to itself",
            |d, _, e2| {
                // The second EBR's link points at its own offset (6144).
                d[e2 + 446 + 16] = 0;
                d[e2 + 446 + 16 + 4] = 5;
                d[e2 + 446 + 16 + 8..e2 + 446 + 16 + 12].copy_from_slice(&6144u32.to_le_bytes());
                d[e2 + 446 + 16 + 12..e2 + 446 + 16 + 16].copy_from_slice(&10u32.to_le_bytes());
            },
            "loops back",
        ),
        (
            "logical start overflows 32 bits",
            |d, e1, _| {
                d[e1 + 446 + 8..e1 + 446 + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes())
            },
            "outside extended",
        ),
        (
            "logical past the extended end",
            |d, _, e2| {
                d[e2 + 446 + 12..e2 + 446 + 16].copy_from_slice(&0x0100_0000u32.to_le_bytes())
            },
            "outside extended",
        ),
        (
            "EBR with a broken signature mid-chain",
            |d, _, e2| d[e2 + 510] = 0,
            "EBR at LBA 16384",
        ),
        (
            "data partition in the link slot",
            |d, _, e2| d[e2 + 446 + 16 + 4] = 0x83,
            "unusual layout",
        ),
    ];
    for (name, edit, says) in cases {
        let disk = dir.path().join("bad.raw");
        let mut bytes = base.clone();
        edit(&mut bytes, ebr1, ebr2);
        fs::write(&disk, &bytes)?;
        if says.is_empty() {
            // A link of offset 0 just ends the chain early: still a valid
            // table, one logical partition fewer. It must not panic.
            let r = fit_table(&disk, &FitOptions::new())?;
            assert!(r.did_nothing(), "{name}: {:?}", r.actions);
            continue;
        }
        let msg = refused_everywhere(name, &disk)?;
        assert!(msg.contains(says), "{name}: {msg}");
    }
    assert!(fit_table(&good, &FitOptions::new())?.did_nothing());
    Ok(())
}

/// Random bits flipped in real tables (a GPT resealed half of the time so
/// the flips reach the field checks), restored onto a larger disk and
/// grown: never a panic, and a refusal never writes.
#[test]
fn flipped_bits_never_panic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gpt = dir.path().join("gpt.raw");
    sgdisk_disk(&gpt, 2 * MIB, &["-n", "1:2048:+256K", "-n", "2:0:0"])?;
    let mbr = dir.path().join("mbr.raw");
    fs::File::create(&mbr)?.set_len(2 * MIB)?;
    tool_stdin(
        "sfdisk",
        &["-q", p(&mbr)],
        "label: dos\nstart=64, size=256, type=83\nstart=512, type=5\n\
         start=576, size=256, type=83\nstart=1024, type=83\n",
    )?;
    let gpt_base = fs::read(&gpt)?;
    let mbr_base = fs::read(&mbr)?;
    // Where the tables live: the GPT's first 34 sectors; the MBR and EBRs.
    let mbr_sectors = [0usize, 512, 960];
    let disk = dir.path().join("mut.raw");
    // More rounds (and another seed) with RETARGET_MUTATIONS=N[,SEED].
    let knob = std::env::var("RETARGET_MUTATIONS").unwrap_or_default();
    let mut knob = knob.split(',').map(|v| v.parse::<usize>().ok());
    let rounds = knob.next().flatten().unwrap_or(300);
    let seed = knob.next().flatten().unwrap_or(77) as u64;
    let rnd = crate::noise(rounds * 16, seed);
    for (i, r) in rnd.chunks(16).enumerate() {
        let is_gpt = i % 2 == 0;
        let mut d = if is_gpt {
            gpt_base.clone()
        } else {
            mbr_base.clone()
        };
        for k in 0..(1 + r[0] as usize % 4) {
            let pick = u32::from_le_bytes([r[1 + 3 * k], r[2 + 3 * k], r[3 + 3 * k], 0]) as usize;
            let at = if is_gpt {
                pick % (34 * 512)
            } else {
                mbr_sectors[pick % 3] * 512 + 446 + pick % 66
            };
            d[at] ^= 1 << (r[15] % 8);
        }
        if is_gpt && r[14] % 2 == 0 {
            reseal_gpt(&mut d);
        }
        // Restored onto a larger disk, and grown (the partitions hold no
        // filesystem, so no tool runs on them).
        let mut big = d.clone();
        big.resize(3 * MIB as usize, 0);
        fs::write(&disk, &big)?;
        match fit_table(&disk, &FitOptions::new().grow(true)) {
            Ok(_) => {}
            Err(_) => assert!(fs::read(&disk)? == big, "mutation {i}: refused but written"),
        }
        let _ = read_record(&disk);
    }
    Ok(())
}
