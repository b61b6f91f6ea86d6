//! The release layer (feature `release`): an update repository of plain files whose signed
//! index lists every release, the patches into it, and the policy around it (FORMAT.md
//! section 9).
//!
//! - [`Index`], [`sign_index`], [`verify_index`], [`check_fresh`]: the index and its rules.
//! - [`Repo`]: a repository in a local directory (a publisher's, or a USB stick's).
//! - [`plan`]: the cheapest route in bytes from one release to another.
//! - [`publish`], [`yank`], [`resign`] (with feature `diff`): adding releases.
//! - [`update`]: the client, from a directory or (feature `http`) over HTTP(S).
//!
//! The client side of this module never imports the diff side: a client that only updates
//! needs the apply core, this module and a JSON parser.

mod client;
mod index;
#[cfg(feature = "diff")]
mod publish;
mod repo;
mod route;
#[cfg(feature = "s3")]
mod s3;

pub use client::{in_rollout, state_dir, update, Source, StepReport, UpdateOptions, UpdateReport};
pub use index::{
    check_fresh, cmp_app_versions, parse_app_version, parse_hash, sign_index, verify_index, Blob,
    Index, PatchRef, Release, Staleness, INDEX_FORMAT, INDEX_FORMAT_VERSION,
    INDEX_SIGNATURE_DOMAIN, MAX_INDEX_BYTES, MAX_NAME, MAX_NOTES, MAX_PATCHES_PER_RELEASE,
    MAX_RELEASES,
};
#[cfg(feature = "diff")]
pub use publish::{
    commit, find_plan, plan as plan_release, plan_path, prune, publish, publish_time, resign,
    run_job, yank, BaseOutcome, Job, JobResult, Plan, PruneReport, PublishOptions, PublishReport,
};
pub use repo::{Repo, BLOBS_DIR, INDEX_FILE, INDEX_SIG_FILE};
pub use route::{plan, plan_within, Route, Step};
