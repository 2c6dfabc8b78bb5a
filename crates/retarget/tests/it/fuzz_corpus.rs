//! The committed corpus of the `retarget_record` fuzz target, replayed through the very code the
//! fuzzer runs (`fuzz/src/retarget_record.rs`); `-- --ignored write_record_seeds` rewrites the seeds.

#[path = "../../../../fuzz/src/retarget_record.rs"]
mod retarget_record;

use std::fs;
use std::path::Path;

const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fuzz/corpus/retarget_record"
);

#[test]
fn retarget_record_corpus() {
    let mut n = 0;
    for entry in fs::read_dir(CORPUS).unwrap_or_else(|e| panic!("corpus {CORPUS}: {e}")) {
        let path = entry.expect("corpus entry").path();
        if path.is_file() {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            retarget_record::run(&bytes);
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} inputs in {CORPUS}");
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus/retarget_record"]
fn write_record_seeds() {
    fs::create_dir_all(CORPUS).expect("corpus dir");
    let rec = retarget_record::sample().encode().expect("encode");
    let write = |name: &str, b: &[u8]| {
        fs::write(Path::new(CORPUS).join(format!("seed-{name}")), b).expect("write seed")
    };
    write("record", &rec);
    // Edits: the body length (offset 12), a field tag, a field length.
    write("edit-length", &[12, 0, 0xFF, 13, 0, 0x0F]);
    write("edit-tag", &[56, 0, 9]);
    write("edit-field-length", &[57, 0, 0xFF, 58, 0, 0xFF]);
}
