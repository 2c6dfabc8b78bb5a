//! [`after_restore`]: what a restore does to its target once every byte is down and verified, the
//! same for `img restore` and a multicast client — fit the partition table to the target (and grow
//! the last partition when asked), then keep the image-safe record. Neither step can undo the
//! restore, and neither failing makes it fail silently: each result says what happened.

use std::path::Path;

use serde::Serialize;

use crate::{fit_table, write_record, FitOptions, FitReport, ImageSafeRecord, RecordPlace};

/// What to do after a restore.
#[derive(Clone, Debug)]
pub struct AfterRestore {
    /// Grow the last partition and its filesystem into a larger target (`-grow`).
    pub grow: bool,
    /// The record to keep on the target.
    pub record: ImageSafeRecord,
}

/// What [`after_restore`] did.
#[derive(Clone, Debug, Serialize)]
pub struct AfterReport {
    /// The partition table's fit (and growth), or why it could not be done.
    pub fit: Result<FitReport, String>,
    /// Where the image-safe record was written, or why it was not.
    pub record: Result<RecordPlace, String>,
}

impl AfterReport {
    /// Lines for the user: what the fit did, then the record's place or why there is none.
    pub fn lines(&self) -> Vec<String> {
        let mut out = match &self.fit {
            Ok(r) => r
                .lines()
                .into_iter()
                .map(|l| format!("partition table: {l}"))
                .collect(),
            Err(e) => vec![format!("partition table not fitted: {e}")],
        };
        out.push(match &self.record {
            Ok(p) => format!("image-safe record written ({})", p.describe()),
            Err(e) => format!("image-safe record not written: {e}"),
        });
        out
    }

    /// One short line for the master's and the server's tables.
    pub fn note(&self) -> String {
        let record = match &self.record {
            Ok(p) => format!("image-safe record at byte {}", p.offset),
            Err(e) => format!("no image-safe record: {e}"),
        };
        match &self.fit {
            Ok(r) if r.has_refusals() => {
                format!("{record}; partition table: {}", r.lines().join(", "))
            }
            Ok(_) => record,
            Err(e) => format!("{record}; partition table not fitted: {e}"),
        }
    }

    /// Whether everything asked for was done: the table fits (or there is none) and growing,
    /// when asked, happened. A missing record is not a failure (some disks have no room for it).
    pub fn fitted(&self) -> bool {
        matches!(&self.fit, Ok(r) if !r.has_refusals())
    }
}

/// Fits the table on `target` (growing it with [`AfterRestore::grow`]) and writes the record.
pub fn after_restore(target: &Path, opts: &AfterRestore) -> AfterReport {
    let fit = fit_table(target, &FitOptions::new().grow(opts.grow)).map_err(|e| e.to_string());
    let record = write_record(target, &opts.record).map_err(|e| e.to_string());
    AfterReport { fit, record }
}
