//! `img make`, `img restore`, `img info`: the local image commands.

use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use imgcast_image as image;

use crate::args::{InfoArgs, MakeArgs, RestoreArgs};
use crate::progress::bytes_bar;

/// `img make IMAGE -disk=SOURCE [-comp=N]`.
pub(crate) fn make(a: &MakeArgs) -> Result<()> {
    let level = image::Level::new(a.comp).context("bad -comp")?;
    let chunk_size = chunk_size_from_kib(a.chunk_kib)?;
    if let Some(url) = a.image.to_str().filter(|s| s.starts_with("http://")) {
        return make_to_server(a, url, level, chunk_size);
    }
    // Not a file named "https:"; the server and its client speak plain HTTP.
    if let Some(url) = a.image.to_str().filter(|s| s.contains("://")) {
        return Err(crate::UsageError(format!(
            "'{url}': only http://HOST:PORT/NAME is supported (the imaging server speaks plain HTTP)"
        ))
        .into());
    }
    let started = Instant::now();
    let map = image::map_source(&a.disk, a.map.mode())
        .with_context(|| format!("reading the layout of {}", a.disk.display()))?;
    if !a.json {
        for l in map.lines() {
            eprintln!("  {l}");
        }
    }
    let bar = bytes_bar(0, "make");
    let opts = image::MakeOptions::new(&a.disk, &a.image)
        .level(level)
        .chunk_size(chunk_size)
        .used(map.used.clone())
        .layout(map.layout.clone())
        .min_target_size(map.min_target_size);
    let summary = image::make(&opts, &|p: image::Progress| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    })
    .with_context(|| format!("capturing {} into {}", a.disk.display(), a.image.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let s = &summary;
    if a.json {
        println!(
            "{}",
            json!({
                "image": a.image,
                "source": a.disk,
                "disk_size": s.geometry.disk_size,
                "chunk_size": s.geometry.chunk_size,
                "block_size": s.geometry.block_size,
                "chunks": s.geometry.chunk_count,
                "holes": s.hole_chunks,
                "used_bytes": s.used_bytes,
                "data_bytes": s.data_bytes,
                "min_target_size": s.geometry.min_target_size,
                "raw": a.map.raw,
                "layout": map.disk,
                "stored_bytes": s.stored_bytes,
                "image_bytes": s.image_bytes,
                "level": s.geometry.level.get(),
                "root_hash": hex(&s.root_hash),
                "seconds": secs,
                "bytes_per_sec": rate(s.geometry.disk_size, secs),
            })
        );
    } else {
        eprintln!(
            "captured {} ({}) into {}",
            a.disk.display(),
            human(s.geometry.disk_size),
            a.image.display()
        );
        eprintln!(
            "  {} chunks of {}, {} holes; kept {} of the disk ({} of data), {} stored (ratio {:.2}), level {}",
            s.geometry.chunk_count,
            human(u64::from(s.geometry.chunk_size)),
            s.hole_chunks,
            human(s.used_bytes),
            human(s.data_bytes),
            human(s.stored_bytes),
            ratio(s.geometry.disk_size, s.image_bytes),
            s.geometry.level.get()
        );
        if s.geometry.min_target_size < s.geometry.disk_size {
            eprintln!(
                "  restores onto disks of {} or more",
                human(s.geometry.min_target_size)
            );
        }
        eprintln!("  root hash {}", hex(&s.root_hash));
        eprintln!(
            "  {:.1} s, {}/s",
            secs,
            human(rate(s.geometry.disk_size, secs) as u64)
        );
    }
    Ok(())
}

/// `img make http://HOST:PORT/NAME -disk=SOURCE --token=T`: the capture is
/// streamed to the imaging server, which checks it before listing it.
fn make_to_server(a: &MakeArgs, url: &str, level: image::Level, chunk_size: u32) -> Result<()> {
    let token = match (&a.token, &a.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => std::env::var("IMGCAST_TOKEN").map_err(|_| {
            crate::UsageError(
                "capturing to a server needs its token: --token=T, --token-file=PATH or IMGCAST_TOKEN"
                    .into(),
            )
        })?,
    };
    let started = Instant::now();
    let bar = bytes_bar(0, "make");
    let reply = imgcast_server::client::capture_to_server(
        url,
        &token,
        &a.disk,
        level,
        chunk_size,
        a.map.mode(),
        &|p: image::Progress| {
            bar.set_length(p.total_bytes);
            bar.set_position(p.done_bytes);
        },
    )
    .with_context(|| format!("capturing {} to {url}", a.disk.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rec = reply.json();
    if a.json {
        println!("{rec}");
    } else {
        eprintln!(
            "captured {} to {url}: verified and listed by the server",
            a.disk.display()
        );
        eprintln!(
            "  {} stored, root hash {}, {:.1} s",
            human(rec["stored_bytes"].as_u64().unwrap_or(0)),
            rec["root_hash"].as_str().unwrap_or("?"),
            secs
        );
    }
    Ok(())
}

/// `img restore IMAGE -disk=TARGET`.
pub(crate) fn restore(a: &RestoreArgs) -> Result<()> {
    if crate::tui::available() && !a.yes {
        crate::cmd_session::confirm_overwrite(&a.disk, "the restore")?;
    }
    let started = Instant::now();
    let bar = bytes_bar(0, "restore");
    let opts = image::RestoreOptions::new(&a.image, &a.disk).discard(a.place.discard);
    let summary = image::restore(&opts, &|p: image::Progress| {
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    })
    .with_context(|| format!("restoring {} onto {}", a.image.display(), a.disk.display()))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let s = &summary;
    let image_name = a.image.file_name().map_or_else(
        || a.image.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let after = imgcast_retarget::after_restore(
        &a.disk,
        &imgcast_retarget::AfterRestore {
            grow: a.place.grow,
            record: imgcast_retarget::ImageSafeRecord {
                image: image_name,
                root_hash: s.root_hash,
                session: None,
                master: None,
                written_at: now_unix(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
        },
    );
    if a.json {
        println!(
            "{}",
            json!({
                "image": a.image,
                "target": a.disk,
                "written_bytes": s.written_bytes,
                "after": after,
                "disk_size": s.geometry.disk_size,
                "chunks": s.geometry.chunk_count,
                "holes": s.hole_chunks,
                "root_hash": hex(&s.root_hash),
                "verified": true,
                "seconds": secs,
                "bytes_per_sec": rate(s.geometry.disk_size, secs),
            })
        );
    } else {
        eprintln!(
            "restored {} ({}) onto {}",
            a.image.display(),
            human(s.geometry.disk_size),
            a.disk.display()
        );
        eprintln!(
            "  every chunk hash and the root hash verified: {}",
            hex(&s.root_hash)
        );
        eprintln!(
            "  wrote {} of data, zeroed {}, left {} free{}",
            human(s.stats.data_bytes),
            human(s.stats.zero_bytes),
            human(s.stats.free_bytes),
            if s.stats.discarded_bytes > 0 {
                format!(" ({} discarded)", human(s.stats.discarded_bytes))
            } else {
                String::new()
            }
        );
        for l in after.lines() {
            eprintln!("  {l}");
        }
        eprintln!(
            "  {:.1} s, {}/s",
            secs,
            human(rate(s.geometry.disk_size, secs) as u64)
        );
    }
    if !after.fitted() {
        anyhow::bail!(
            "the image is restored and verified, but its partition table could not be fitted to {}",
            a.disk.display()
        );
    }
    Ok(())
}

/// `img info [IMAGE|DISK|zisd [DISK]] [--verify] [--json]`.
pub(crate) fn info(a: &InfoArgs) -> Result<()> {
    let Some(path) = &a.image else {
        return list_devices(a.json);
    };
    if path.as_os_str() == "zisd" && !path.exists() {
        return info_zisd(a.disk.as_deref(), a.json);
    }
    // A disk left by an unfinished restore is not an image: say what it is.
    if let Some(marker) =
        image::incomplete_marker(path).with_context(|| format!("reading {}", path.display()))?
    {
        if a.json {
            println!(
                "{}",
                json!({"path": path, "incomplete_restore": true, "root_hash": hex(&marker.root_hash)})
            );
        } else {
            println!(
                "{}: an UNFINISHED restore (image root hash {}); restore it again",
                path.display(),
                hex(&marker.root_hash)
            );
        }
        anyhow::bail!("{} holds an unfinished restore", path.display());
    }
    let reader = match image::ImageReader::open(path) {
        Ok(r) => r,
        // Not an image: a disk, whose layout is what the user asks about.
        Err(image::ImageError::NotAnImage) => return info_disk(path, a.json),
        Err(e) => return Err(e).with_context(|| format!("opening image {}", path.display())),
    };
    let g = reader.geometry();
    if a.verify {
        let bar = bytes_bar(g.disk_size, "verify");
        reader
            .verify(&|p: image::Progress| bar.set_position(p.done_bytes))
            .with_context(|| format!("verifying {}", path.display()))?;
        bar.finish_and_clear();
    }
    let image_bytes = reader.image_len();
    // Compressed payload bytes, from the index (what a session puts on the wire).
    let stored_bytes: u64 = reader.index().iter().map(|e| u64::from(e.stored_len)).sum();
    let layout: Option<imgcast_fsmap::DiskLayout> = (!reader.layout().is_empty())
        .then(|| serde_json::from_slice(reader.layout()).ok())
        .flatten();
    if a.json {
        println!(
            "{}",
            json!({
                "image": path,
                "format_version": reader.header().major,
                "disk_size": g.disk_size,
                "chunk_size": g.chunk_size,
                "block_size": g.block_size,
                "chunks": g.chunk_count,
                "holes": reader.hole_chunks(),
                "used_bytes": reader.used_bytes(),
                "stored_bytes": stored_bytes,
                "data_bytes": reader.data_bytes(),
                "min_target_size": g.min_target_size,
                "image_bytes": image_bytes,
                "level": g.level.get(),
                "ratio": ratio(g.disk_size, image_bytes),
                "root_hash": hex(&reader.root_hash()),
                "layout": layout,
                "verified": a.verify,
            })
        );
    } else {
        println!("image       {}", path.display());
        println!(
            "format      {} ({})",
            reader.header().major,
            if layout.is_some() {
                "partition table and used blocks"
            } else if reader.header().major >= 2 {
                "every byte of the disk"
            } else {
                "every byte of the disk, version 1"
            }
        );
        println!("disk size   {} ({} bytes)", human(g.disk_size), g.disk_size);
        if g.min_target_size < g.disk_size {
            println!("restores to disks of {} or more", human(g.min_target_size));
        }
        println!(
            "chunk size  {} (blocks of {})",
            human(u64::from(g.chunk_size)),
            human(u64::from(g.block_size))
        );
        println!(
            "chunks      {} ({} holes)",
            g.chunk_count,
            reader.hole_chunks()
        );
        println!(
            "kept        {} of the disk, {} of it data",
            human(reader.used_bytes()),
            human(reader.data_bytes())
        );
        println!(
            "stored      {} compressed (image file {})",
            human(stored_bytes),
            human(image_bytes)
        );
        println!("level       {}", g.level.get());
        println!("ratio       {:.2}", ratio(g.disk_size, image_bytes));
        println!("root hash   {}", hex(&reader.root_hash()));
        if a.verify {
            println!("verified    every chunk hash and the root hash match");
        }
        if let Some(l) = &layout {
            println!();
            for line in l.table_lines() {
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// `img info DISK`: the partitions and filesystems of a disk (read only; a filesystem mounted
/// read-write is described, with a note, rather than refused), and its image-safe record.
fn info_disk(path: &std::path::Path, as_json: bool) -> Result<()> {
    let layout =
        imgcast_fsmap::analyze(path, &imgcast_fsmap::AnalyzeOptions::default().force(true))
            .with_context(|| format!("reading the layout of {}", path.display()))?;
    let record = imgcast_retarget::read_record(path).ok().flatten();
    if as_json {
        println!(
            "{}",
            json!({"disk": path, "layout": layout, "image_safe": record.as_ref().map(|(r, p)| json!({"record": r, "place": p}))})
        );
        return Ok(());
    }
    println!("disk        {} ({})", path.display(), human(layout.size));
    println!(
        "used        {} (partition table and used blocks)",
        human(layout.used.total())
    );
    println!();
    for line in layout.table_lines() {
        println!("{line}");
    }
    if let Some((r, _)) = record {
        println!();
        println!("last image put down: {} ({})", r.image, hex(&r.root_hash));
    }
    Ok(())
}

/// `img info zisd [DISK]`: the image-safe data, as the original's `img info zisd` lists it, with
/// the last image put down; without DISK, for every disk of this machine.
fn info_zisd(disk: Option<&std::path::Path>, as_json: bool) -> Result<()> {
    let disks: Vec<std::path::PathBuf> = match disk {
        Some(d) => vec![d.to_path_buf()],
        None => imgcast_disk::list_block_devices()
            .context("listing block devices")?
            .into_iter()
            .map(|d| d.path)
            .collect(),
    };
    let mut rows = Vec::new();
    let mut found = 0;
    for d in &disks {
        match imgcast_retarget::read_record(d) {
            Ok(Some((rec, place))) => {
                found += 1;
                if as_json {
                    rows.push(json!({"disk": d, "record": rec, "place": place}));
                } else {
                    println!("{}: image-safe data", d.display());
                    println!("  last image put down: {}", rec.image);
                    for l in rec.describe() {
                        println!("  {l}");
                    }
                    println!("  {}", place.describe());
                }
            }
            Ok(None) => {
                if as_json {
                    rows.push(json!({"disk": d, "record": null}));
                } else {
                    println!(
                        "{}: no image-safe data (no imgcast restore recorded)",
                        d.display()
                    );
                }
            }
            Err(e) => {
                if as_json {
                    rows.push(json!({"disk": d, "error": e.to_string()}));
                } else {
                    println!("{}: {e}", d.display());
                }
            }
        }
    }
    if as_json {
        println!("{}", serde_json::Value::Array(rows));
    }
    if disk.is_some() && found == 0 {
        anyhow::bail!("no image-safe data on {}", disks[0].display());
    }
    Ok(())
}

fn list_devices(as_json: bool) -> Result<()> {
    let devices = imgcast_disk::list_block_devices().context("listing block devices")?;
    if as_json {
        let rows: Vec<_> = devices
            .iter()
            .map(|d| {
                json!({
                    "path": d.path,
                    "size": d.size,
                    "model": d.model,
                    "mounted": d.mounted,
                    "read_only": d.read_only,
                    "removable": d.removable,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if devices.is_empty() {
        println!("no block devices found");
        return Ok(());
    }
    println!("{:<16} {:>10}  {:<24} MOUNTED", "DEVICE", "SIZE", "MODEL");
    for d in &devices {
        println!(
            "{:<16} {:>10}  {:<24} {}",
            d.path.display(),
            human(d.size),
            d.model.as_deref().unwrap_or("-"),
            d.mounted.as_deref().unwrap_or("no")
        );
    }
    Ok(())
}

fn chunk_size_from_kib(kib: u32) -> Result<u32> {
    if !(64..=16384).contains(&kib) || !kib.is_power_of_two() {
        anyhow::bail!("chunk size {kib} KiB: use a power of two from 64 to 16384");
    }
    Ok(kib * 1024)
}

/// Lower-case hex, as `b3sum` prints.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Binary units, one decimal.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn ratio(raw: u64, stored: u64) -> f64 {
    if stored == 0 {
        0.0
    } else {
        raw as f64 / stored as f64
    }
}

fn rate(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs
    } else {
        0.0
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
