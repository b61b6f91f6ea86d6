//! Integration tests: one binary (one link), modules by theme. They need the `diff` feature
//! (and the CLI tests the `cli` feature); `cargo test --no-default-features` runs the apply
//! core's unit tests only.

#![cfg(feature = "diff")]

mod util;

mod adversarial;
mod badinput;
#[cfg(feature = "cli")]
#[cfg(feature = "cli")]
mod cli;
mod copy_new;
mod exe;
mod fs_handles;
mod fuzz_replay;
mod golden;
mod inflate;
#[cfg(feature = "cli")]
mod inplace;
mod multi_source;
#[cfg(feature = "http")]
mod release;
mod roundtrip;
mod streamed;
mod unknown;
