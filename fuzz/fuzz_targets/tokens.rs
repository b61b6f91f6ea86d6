#![no_main]
//! See `bundelta_fuzz::tokens` for what this target checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| bundelta_fuzz::tokens::run(data));
