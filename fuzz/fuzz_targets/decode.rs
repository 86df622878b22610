//! `decode`: arbitrary bytes as a stored metadata record and as every
//! system record (tests/common/decode.rs): decoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/decode.rs"]
mod decode;

fuzz_target!(|data: &[u8]| {
    decode::check_record(data);
});
