//! nacre-repo links Nacre's namespace to S3, as FSx for Lustre's data repository
//! associations do: an import creates every file and directory of a prefix without copying
//! bytes (their POSIX attributes from FSx's user-metadata keys), and the repository mover,
//! run by the metadata service (`nacre serve --meta`), fetches the chunks of such released
//! files from S3 the first time they are read; an export uploads new and changed files with
//! the same metadata keys (decision 0020).
//!
//! It is its own crate so that the client library C programs link carries no HTTP stack:
//! only the metadata service and the `nacre` command use it.
#![forbid(unsafe_code)]

pub mod error;
pub mod export;
pub mod import;
pub mod limits;
pub mod mover;
pub mod posix;
pub mod s3;
pub mod task;

pub use error::RepoError;
pub use export::{Deletion, ExportReport, export};
pub use import::{ImportFailure, ImportReport, import, import_events};
pub use mover::{Mover, S3Access};
pub use task::run_tasks;
