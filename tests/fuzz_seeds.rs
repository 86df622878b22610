//! Replays the committed fuzz seeds (`fuzz/seeds/<target>/`) through the
//! same checks the cargo-fuzz targets run, under plain `cargo test`.

#[path = "common/decode.rs"]
mod decode;
#[path = "common/model.rs"]
mod model;

use std::path::Path;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

/// On the memory backend, as the fuzz target runs them, on sled, and on
/// sled with a `Process` journal (where a crash step must lose nothing).
#[test]
fn ops_seeds_match_the_model() {
    for (name, data) in seeds("ops") {
        let ops = model::Op::decode_all(&data, 48);
        for backend in [
            model::Backend::Memory,
            model::Backend::Sled,
            model::Backend::Journaled(millpond::Journal::Process),
        ] {
            if let Err(failure) = model::run_on(backend, &ops, None) {
                panic!("seed {name} on {backend:?}: {failure:?}\nops: {ops:?}");
            }
        }
    }
}

#[test]
fn decode_seeds_never_panic() {
    for (name, data) in seeds("decode") {
        let meta = decode::check_record(&data);
        // The named seeds are valid records of their kind (so the fuzzer
        // starts from inputs that get past the checksum).
        if name.starts_with("meta-") {
            assert!(meta, "seed {name} is a metadata record");
        }
        if name.starts_with("state-")
            || name.starts_with("journal-")
            || name == "durable"
            || name == "undo-log"
        {
            assert_eq!(
                millpond::testing::decode_system_records(&data),
                1,
                "seed {name} is one system record"
            );
        }
    }
}

#[test]
fn damage_seeds_are_refused_reported_or_intact_never_invented() {
    for (name, data) in seeds("damage") {
        if let Err(wrong) = decode::check_damaged_store(&data) {
            panic!("seed {name}: {wrong}");
        }
    }
}
