//! `ops`: arbitrary operation sequences, including crashes and reopens,
//! checked against the model (tests/common/model.rs), on a temporary store
//! (the memory backend: no files, so thousands of inputs a second).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/model.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    let ops = model::Op::decode_all(data, 48);
    if let Err(failure) = model::run(&ops, None) {
        panic!("{failure:?}\nops: {ops:?}");
    }
});
