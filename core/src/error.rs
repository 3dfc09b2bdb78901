//! The engine's error: what failed, on which file, target or service, and the errno value
//! the C ABI returns for it.

use nacre_io::IoError;
use nacre_layout::LayoutError;
use nacre_transport::TransportError;

use crate::codec::CodecError;
use crate::mem::MemError;
use crate::meta::types::MetaError;

/// The largest errno value (Linux's MAX_ERRNO); errors are 1 to this.
pub const MAX_ERRNO: i32 = 4095;

/// Anything the engine's calls can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A target could not be reached, or its connection failed.
    #[error("target {target_id} at {endpoint}: {source}")]
    Target {
        /// The target.
        target_id: u32,
        /// Where it was asked.
        endpoint: String,
        /// What the transport saw.
        source: TransportError,
    },
    /// A target answered a request with an error.
    #[error("target {target_id} at {endpoint}: {op} failed: {message} (errno {errno})")]
    TargetReply {
        /// The target.
        target_id: u32,
        /// Where it was asked.
        endpoint: String,
        /// The request.
        op: &'static str,
        /// The errno value it answered with.
        errno: i32,
        /// Its explanation, or the errno's text.
        message: String,
    },
    /// The metadata service could not be reached.
    #[error("metadata service at {endpoint}: {source}")]
    MetaUnreachable {
        /// Where it was asked.
        endpoint: String,
        /// What the transport saw.
        source: TransportError,
    },
    /// The metadata service answered with an error.
    #[error("{op} {path}: {message}")]
    Meta {
        /// The operation.
        op: &'static str,
        /// The path it was about.
        path: String,
        /// The errno value.
        errno: i32,
        /// The service's explanation.
        message: String,
    },
    /// A local metadata store failed (the server side).
    #[error(transparent)]
    MetaStore(#[from] MetaError),
    /// A layout is invalid or does not fit the request.
    #[error("layout: {0}")]
    Layout(#[from] LayoutError),
    /// Local storage failed (the server side).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The memory pool failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// A transport failure outside a target or metadata call (binding a listener).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A message could not be decoded.
    #[error("malformed message from {from}: {source}")]
    Codec {
        /// Who sent it.
        from: String,
        /// What was wrong.
        source: CodecError,
    },
    /// An argument is outside what it allows.
    #[error("invalid {field} {value}: allowed {allowed}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it allows.
        allowed: String,
    },
    /// A handle was used after it was closed, or for the wrong kind of access.
    #[error("{what}: bad file handle ({reason})")]
    BadHandle {
        /// The file.
        what: String,
        /// Why.
        reason: &'static str,
    },
    /// An asynchronous queue has as many operations in flight as its depth.
    #[error("the queue is full ({depth} operations in flight); wait for completions first")]
    QueueFull {
        /// Its depth.
        depth: usize,
    },
    /// A server could not start or stopped with an error.
    #[error("{what}: {reason}")]
    Server {
        /// The server.
        what: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A failure of an event loop's kernel object (`what` names the system call), with the
    /// words the event loops used before they shared the transport's.
    pub(crate) fn event_loop(what: &str, source: std::io::Error) -> Error {
        Error::Server {
            what: "event loop".into(),
            reason: format!("{what}: {source}"),
        }
    }

    /// The errno value of the error (positive), as the C ABI returns it negated. A value a
    /// peer sent that is no errno (0, negative, above [`MAX_ERRNO`]) is EIO, so that no
    /// reply can turn a failure into a success.
    pub fn errno(&self) -> i32 {
        let errno = self.raw_errno();
        if (1..=MAX_ERRNO).contains(&errno) {
            errno
        } else {
            libc::EIO
        }
    }

    fn raw_errno(&self) -> i32 {
        match self {
            Error::Target { source, .. } | Error::MetaUnreachable { source, .. } => source.errno(),
            Error::TargetReply { errno, .. } | Error::Meta { errno, .. } => *errno,
            Error::MetaStore(e) => e.errno(),
            Error::Layout(_) | Error::Invalid { .. } => libc::EINVAL,
            Error::Io(e) => e.errno(),
            Error::Mem(_) => libc::ENOMEM,
            Error::Transport(e) => e.errno(),
            Error::Codec { .. } => libc::EPROTO,
            Error::BadHandle { .. } => libc::EBADF,
            Error::QueueFull { .. } => libc::EAGAIN,
            Error::Server { .. } => libc::EIO,
        }
    }
}

/// The text of an errno value, as strerror gives it.
pub fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_that_is_no_errno_is_eio() {
        let reply = |errno| Error::TargetReply {
            target_id: 0,
            endpoint: "tcp://127.0.0.1:1".into(),
            op: "read",
            errno,
            message: String::new(),
        };
        assert_eq!(reply(libc::ENOENT).errno(), libc::ENOENT);
        for hostile in [0, -5, i32::MIN, MAX_ERRNO + 1, i32::MAX] {
            assert_eq!(reply(hostile).errno(), libc::EIO, "status {hostile}");
        }
    }
}
