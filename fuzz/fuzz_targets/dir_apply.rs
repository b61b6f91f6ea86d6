#![no_main]
//! See `bundelta_fuzz::dir_apply` for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bundelta_fuzz::dir_apply::run(data));
