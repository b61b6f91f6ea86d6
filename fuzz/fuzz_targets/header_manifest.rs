#![no_main]
//! See `bundelta_fuzz::header_manifest` for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bundelta_fuzz::header_manifest::run(data));
