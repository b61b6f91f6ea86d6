#![no_main]
//! See `bundelta_fuzz::archive` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bundelta_fuzz::archive::run(data));
