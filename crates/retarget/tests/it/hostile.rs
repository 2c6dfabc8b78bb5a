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
