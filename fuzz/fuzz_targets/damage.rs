//! `damage`: arbitrary damage to a whole store directory
//! (tests/common/decode.rs): a damaged store is refused, reported by
//! `verify`, or reads back exactly as it was left; it never panics, never
//! returns a value that was not written, never rolls back silently.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/decode.rs"]
mod decode;

fuzz_target!(|data: &[u8]| {
    if let Err(wrong) = decode::check_damaged_store(data) {
        panic!("{wrong}");
    }
});
