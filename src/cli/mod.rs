//! Parts of the `bundelta` binary that the library does not need (declared from main.rs only).

pub mod bench;
mod corpus;
mod measure;
mod tarball;
mod tools;
mod verify;
