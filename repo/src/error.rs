//! What can go wrong reaching a data repository.

/// An error of the repository mover or importer, naming what it was about.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// No credentials, or unreadable ones.
    #[error("{reason}")]
    Credentials {
        /// What is missing or wrong (never the credentials themselves).
        reason: String,
    },
    /// S3 refused or could not be reached.
    #[error("{what}: {reason}")]
    S3 {
        /// The bucket, prefix or object.
        what: String,
        /// What S3 (or the connection to it) said.
        reason: String,
    },
    /// The namespace refused.
    #[error(transparent)]
    Nacre(#[from] nacre::Error),
    /// The runtime that drives S3 could not start.
    #[error("cannot start the S3 runtime: {0}")]
    Runtime(std::io::Error),
}
