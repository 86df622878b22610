//! `decode`: arbitrary bytes as a metadata record, and as damage to a whole
//! store directory (tests/common/decode.rs). The first byte chooses which.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/decode.rs"]
mod decode;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, record)) => {
            decode::check_record(record);
        }
        Some((_, damage)) => {
            if let Err(wrong) = decode::check_damaged_store(damage) {
                panic!("{wrong}");
            }
        }
        None => {}
    }
});
