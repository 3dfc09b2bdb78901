//! The transport's errors. Each names the peer and the operation.

use std::net::SocketAddr;

use crate::wire::WireError;

/// What the transport was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportOp {
    /// Connecting to a peer.
    Connect,
    /// Accepting or listening.
    Listen,
    /// Sending a message.
    Send,
    /// Receiving a message.
    Recv,
}

impl std::fmt::Display for TransportOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportOp::Connect => "connect",
            TransportOp::Listen => "listen",
            TransportOp::Send => "send",
            TransportOp::Recv => "receive",
        })
    }
}

/// An error of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An endpoint string that does not parse or resolve.
    #[error("endpoint '{endpoint}': {reason}")]
    BadEndpoint {
        /// The text given.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// The system failed an operation with a peer.
    #[error("{op} with {peer} failed: {source}")]
    Io {
        /// What was being done.
        op: TransportOp,
        /// The peer.
        peer: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
    /// The peer did not answer in time.
    #[error("{op} with {peer} timed out after {timeout_ms} ms")]
    TimedOut {
        /// What was being done.
        op: TransportOp,
        /// The peer.
        peer: SocketAddr,
        /// The bound that expired.
        timeout_ms: u64,
    },
    /// The peer closed the connection.
    #[error("{op} with {peer}: the peer closed the connection")]
    PeerClosed {
        /// What was being done.
        op: TransportOp,
        /// The peer.
        peer: SocketAddr,
    },
    /// The peer sent bytes that are not a valid message; the connection is closed.
    #[error("{peer} sent an invalid message: {source}")]
    Protocol {
        /// The peer.
        peer: SocketAddr,
        /// What was wrong.
        source: WireError,
    },
    /// The message does not match what the call expected (a response to another request,
    /// a payload of another size than the destination).
    #[error("{peer}: {reason}")]
    Unexpected {
        /// The peer.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// An earlier error left the connection's stream at an unknown position.
    #[error("the connection to {peer} is broken by an earlier error; reconnect")]
    Broken {
        /// The peer.
        peer: SocketAddr,
    },
    /// RDMA was asked for but cannot be used.
    #[error("rdma to {peer}: {reason}")]
    RdmaUnavailable {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// An error of the RDMA layer.
    #[error(transparent)]
    Rdma(#[from] crate::rdma::RdmaError),
}

impl TransportError {
    /// The same error again, for each of several requests one failure ends (a broken
    /// connection fails every request in flight on it).
    pub fn duplicate(&self) -> TransportError {
        match self {
            TransportError::BadEndpoint { endpoint, reason } => TransportError::BadEndpoint {
                endpoint: endpoint.clone(),
                reason: reason.clone(),
            },
            TransportError::Io { op, peer, source } => TransportError::Io {
                op: *op,
                peer: *peer,
                source: match source.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            },
            TransportError::TimedOut {
                op,
                peer,
                timeout_ms,
            } => TransportError::TimedOut {
                op: *op,
                peer: *peer,
                timeout_ms: *timeout_ms,
            },
            TransportError::PeerClosed { op, peer } => TransportError::PeerClosed {
                op: *op,
                peer: *peer,
            },
            TransportError::Protocol { peer, source } => TransportError::Protocol {
                peer: *peer,
                source: source.clone(),
            },
            TransportError::Unexpected { peer, reason } => TransportError::Unexpected {
                peer: *peer,
                reason: reason.clone(),
            },
            TransportError::Broken { peer } => TransportError::Broken { peer: *peer },
            TransportError::RdmaUnavailable { peer, reason } => TransportError::RdmaUnavailable {
                peer: peer.clone(),
                reason: reason.clone(),
            },
            TransportError::Rdma(e) => TransportError::RdmaUnavailable {
                peer: String::new(),
                reason: e.to_string(),
            },
        }
    }

    /// What a connection to `peer` makes of a message its decoder refused: one of the wrong
    /// direction is well formed but has no place here ([`TransportError::Unexpected`]),
    /// anything else is malformed ([`TransportError::Protocol`]).
    pub(crate) fn from_wire(peer: SocketAddr, source: crate::wire::WireError) -> Self {
        match source {
            crate::wire::WireError::WrongDirection { .. } => TransportError::Unexpected {
                peer,
                reason: source.to_string(),
            },
            source => TransportError::Protocol { peer, source },
        }
    }

    /// A failed socket call of `op` on the connection to `peer`: the peer going away
    /// (end of stream, reset, broken pipe) is [`TransportError::PeerClosed`]; anything
    /// else is [`TransportError::Io`].
    pub(crate) fn from_socket(op: TransportOp, peer: SocketAddr, source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted => TransportError::PeerClosed { op, peer },
            _ => TransportError::Io { op, peer, source },
        }
    }

    /// The errno value that best describes the error, for the C ABI and replies.
    pub fn errno(&self) -> i32 {
        match self {
            TransportError::BadEndpoint { .. } => libc::EINVAL,
            TransportError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            TransportError::TimedOut { .. } => libc::ETIMEDOUT,
            TransportError::PeerClosed { .. } => libc::ECONNRESET,
            TransportError::Protocol { .. } | TransportError::Unexpected { .. } => libc::EPROTO,
            TransportError::Broken { .. } => libc::ENOTCONN,
            TransportError::RdmaUnavailable { .. } => libc::EHOSTUNREACH,
            TransportError::Rdma(_) => libc::EIO,
        }
    }
}
