#![no_main]
//! See `bundelta_fuzz::header_manifest` for what this target checks.

// Counted, so that the target can check the heap decoding takes against the header.
#[global_allocator]
static ALLOCATOR: bundelta_fuzz::heap::Counting = bundelta_fuzz::heap::Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bundelta_fuzz::header_manifest::run(data));
