//! Arbitrary bytes decoded as every typed message, whatever a header would say: each one that
//! decodes must re-encode to bytes that decode to the same value. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::every_message(data);
});
