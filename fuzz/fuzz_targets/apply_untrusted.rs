#![no_main]
//! See `bundelta_fuzz::apply_untrusted` for what this target checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bundelta_fuzz::apply_untrusted::run(data));
