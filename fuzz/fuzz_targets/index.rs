#![no_main]
//! See `bundelta_fuzz::index` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bundelta_fuzz::index::run(data));
