//! The errors of the io crate. Each names the operation and the object or path it failed on.

use std::path::PathBuf;

/// An operation of the io crate, named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Writing a target's format stamp.
    Format,
    /// Opening a target directory.
    Open,
    /// Creating an object.
    Create,
    /// Reading an object.
    Read,
    /// Writing an object.
    Write,
    /// fdatasync of an object.
    Sync,
    /// Setting an object's size.
    Truncate,
    /// Deallocating a range of an object.
    Punch,
    /// Reading an object's size and allocation.
    Stat,
    /// Removing an object.
    Remove,
    /// Listing a target's objects.
    List,
    /// Asking the file system for capacity and free space.
    Capacity,
    /// Setting up or driving io_uring.
    Ring,
    /// Registering memory with io_uring.
    Register,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Operation::Format => "format",
            Operation::Open => "open",
            Operation::Create => "create",
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Sync => "sync",
            Operation::Truncate => "truncate",
            Operation::Punch => "punch",
            Operation::Stat => "stat",
            Operation::Remove => "remove",
            Operation::List => "list",
            Operation::Capacity => "capacity",
            Operation::Ring => "io_uring",
            Operation::Register => "register",
        };
        f.write_str(name)
    }
}

/// An error of the io crate.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The operating system failed an operation on an object.
    #[error("{op} of object {object_id:#x} failed: {source}")]
    Object {
        /// What was being done.
        op: Operation,
        /// The object it was done to.
        object_id: u64,
        /// The system's error (its raw errno is kept).
        source: std::io::Error,
    },
    /// The object does not exist on this target.
    #[error("{op} of object {object_id:#x}: no such object")]
    NoSuchObject {
        /// What was being done.
        op: Operation,
        /// The missing object.
        object_id: u64,
    },
    /// Create of an object that exists already.
    #[error("create of object {object_id:#x}: the object exists already")]
    ObjectExists {
        /// The object.
        object_id: u64,
    },
    /// The operating system failed an operation on a path of the target.
    #[error("{op} of {path}: {source}")]
    Path {
        /// What was being done.
        op: Operation,
        /// The path it was done to.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The directory has no valid format stamp.
    #[error("{path} is not a formatted nacre target: {reason}")]
    NotATarget {
        /// The directory.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The target was formatted by a newer version of nacre.
    #[error(
        "{path} has target format version {found}; this build reads versions up to {supported}"
    )]
    NewerFormat {
        /// The directory.
        path: PathBuf,
        /// The version on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The directory's file system refuses O_DIRECT, which every object transfer uses.
    #[error(
        "{path}: its file system refuses O_DIRECT, which targets need (ext4 and xfs have it; \
         tmpfs from Linux 6.6)"
    )]
    NoDirectIo {
        /// The directory.
        path: PathBuf,
    },
    /// The target directory is served by another process (it holds the directory's lock).
    #[error(
        "{path} is served by another process already{}: a target directory is served by one process at a time",
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    TargetBusy {
        /// The directory.
        path: PathBuf,
        /// The pid the lock file names, when it names one.
        holder: Option<u32>,
    },
    /// The target belongs to another file system than the one asked.
    #[error(
        "{path} belongs to file system {bound}, not {asked}: a target serves the file system it was first registered with (format a new target directory for another)"
    )]
    OtherFilesystem {
        /// The directory.
        path: PathBuf,
        /// The file system it belongs to.
        bound: String,
        /// The one asked.
        asked: String,
    },
    /// Format of a directory that already holds something.
    #[error("format of {path}: {reason}")]
    FormatRefused {
        /// The directory.
        path: PathBuf,
        /// Why the format was refused.
        reason: String,
    },
    /// An argument is outside what the operation allows.
    #[error("{op}: {field} = {value} is invalid; allowed: {allowed}")]
    InvalidArgument {
        /// What was being done.
        op: Operation,
        /// The argument's name.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The store already holds its bound of operations; wait for completions first.
    #[error("the store holds {limit} operations already; reap completions before submitting more")]
    QueueFull {
        /// The bound.
        limit: u32,
    },
    /// Operations did not complete within the allowed time.
    #[error("{op}: {pending} operations did not complete within {timeout_ms} ms")]
    TimedOut {
        /// What was being waited for.
        op: Operation,
        /// How many were still outstanding.
        pending: usize,
        /// The bound that expired.
        timeout_ms: u64,
    },
    /// A store's accounts of its operations do not balance (see
    /// [`crate::ObjectStore::check_accounts`]): an operation was lost, which is a bug.
    #[error("target {target_id}: the store's accounts do not balance ({reason}): {accounts}")]
    Accounts {
        /// The store's target.
        target_id: u32,
        /// What the store counted.
        accounts: crate::store::Accounts,
        /// Which relation failed.
        reason: String,
    },
    /// io_uring itself failed (set-up, registration or submission).
    #[error("{op}: {source}")]
    Ring {
        /// What was being done.
        op: Operation,
        /// The system's error.
        source: std::io::Error,
    },
}

impl IoError {
    /// The errno value that best describes this error, for the C ABI and the wire.
    pub fn errno(&self) -> i32 {
        match self {
            IoError::Object { source, .. }
            | IoError::Path { source, .. }
            | IoError::Ring { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            IoError::NoSuchObject { .. } => libc::ENOENT,
            IoError::ObjectExists { .. } => libc::EEXIST,
            IoError::NotATarget { .. } | IoError::NoDirectIo { .. } => libc::EINVAL,
            IoError::NewerFormat { .. } => libc::EPROTO,
            IoError::FormatRefused { .. } => libc::EEXIST,
            IoError::TargetBusy { .. } => libc::EBUSY,
            IoError::OtherFilesystem { .. } => libc::EEXIST,
            IoError::InvalidArgument { .. } => libc::EINVAL,
            IoError::QueueFull { .. } => libc::EAGAIN,
            IoError::TimedOut { .. } => libc::ETIMEDOUT,
            IoError::Accounts { .. } => libc::EIO,
        }
    }

    pub(crate) fn object(op: Operation, object_id: u64, errno: i32) -> IoError {
        if errno == libc::ENOENT {
            return IoError::NoSuchObject { op, object_id };
        }
        IoError::Object {
            op,
            object_id,
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
}
