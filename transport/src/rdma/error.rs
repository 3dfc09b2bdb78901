//! The one error type of the RDMA transport: every variant names the operation and the peer.

use std::fmt;
use std::net::SocketAddr;

/// The RDMA operation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Listing devices and querying their ports.
    Devices,
    /// Resolving an address and a route through an RDMA device.
    Resolve,
    /// Binding a listener to a local address and listening on it.
    Bind,
    /// Accepting a connection on a listener.
    Accept,
    /// Connecting to a listener.
    Connect,
    /// Registering memory with a connection's protection domain.
    Register,
    /// Sending a message.
    Send,
    /// Receiving a message.
    Recv,
    /// One-sided RDMA WRITE into the peer's memory.
    Write,
    /// One-sided RDMA READ from the peer's memory.
    Read,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Devices => "devices",
            Op::Resolve => "resolve",
            Op::Bind => "bind",
            Op::Accept => "accept",
            Op::Connect => "connect",
            Op::Register => "register",
            Op::Send => "send",
            Op::Recv => "recv",
            Op::Write => "write",
            Op::Read => "read",
        })
    }
}

/// What went wrong in the RDMA transport. `peer` is the remote address for connection
/// operations and the local address for `Bind`/`Accept` before a peer is known.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    /// A verbs or rdmacm call failed and reported an errno.
    #[error("rdma {op} with {peer}: {call} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Call {
        /// The operation.
        op: Op,
        /// The peer (or local address).
        peer: SocketAddr,
        /// The C function that failed.
        call: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// Listing devices failed.
    #[error("rdma {op}: {call} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Device {
        /// The operation.
        op: Op,
        /// The C function that failed.
        call: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// The operation did not finish within its time bound.
    #[error("rdma {op} with {peer}: timed out after {timeout_ms} ms")]
    Timeout {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// The bound that passed.
        timeout_ms: u64,
    },
    /// The peer disconnected (or its device went away).
    #[error("rdma {op} with {peer}: peer disconnected")]
    Disconnected {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
    },
    /// The connection manager reported an event other than the one awaited
    /// (rejected, unreachable, address or route error, ...).
    #[error("rdma {op} with {peer}: connection manager reported {event} (status {status})")]
    CmEvent {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// rdmacm's name of the event.
        event: String,
        /// The event's status (a negative errno or a transport reason).
        status: i32,
    },
    /// A work request completed with an error status.
    #[error(
        "rdma {op} with {peer}: work completion failed: {status_text} (status {status}, vendor error {vendor_err:#x})"
    )]
    Completion {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// The `ibv_wc_status` value.
        status: u32,
        /// libibverbs' text for it.
        status_text: String,
        /// The device's own error code.
        vendor_err: u32,
    },
    /// A message longer than [`super::MAX_MESSAGE_BYTES`].
    #[error("rdma {op} with {peer}: message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The received message does not fit the caller's buffer; it stays queued.
    #[error("rdma {op} with {peer}: message of {len} bytes does not fit a {capacity}-byte buffer")]
    BufferTooSmall {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// The message's length.
        len: usize,
        /// The buffer's length.
        capacity: usize,
    },
    /// A range lies outside the memory it refers to.
    #[error(
        "rdma {op} with {peer}: {what} range at offset {offset_bytes} of {len} bytes lies outside {region_len} bytes"
    )]
    OutOfBounds {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// Which side: "local" or "remote".
        what: &'static str,
        /// Start of the range.
        offset_bytes: u64,
        /// Length of the range.
        len: u64,
        /// Length of the memory.
        region_len: u64,
    },
    /// A buffer larger than [`super::MAX_REGION_BYTES`] was offered for registration.
    #[error("rdma {op} with {peer}: {len} bytes exceed the registration limit of {max} bytes")]
    RegionTooLarge {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The memory region belongs to another connection's protection domain.
    #[error("rdma {op} with {peer}: memory region was registered with another connection")]
    ForeignRegion {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
    },
    /// The peer is reached through another device than the domain's.
    #[error(
        "rdma {op} with {peer}: reached through {device}, not the domain's device {domain_device}"
    )]
    OtherDevice {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// The device that reaches the peer.
        device: String,
        /// The device of the domain offered.
        domain_device: String,
    },
    /// An earlier failure left the connection unusable.
    #[error("rdma {op} with {peer}: connection unusable after an earlier failure: {reason}")]
    Broken {
        /// The operation.
        op: Op,
        /// The peer.
        peer: SocketAddr,
        /// The earlier failure.
        reason: String,
    },
}

impl RdmaError {
    /// The errno that best describes the error, for callers that speak errno (the C ABI).
    pub fn errno(&self) -> i32 {
        match self {
            RdmaError::Call { errno, .. } | RdmaError::Device { errno, .. } => *errno,
            RdmaError::Timeout { .. } => libc::ETIMEDOUT,
            RdmaError::Disconnected { .. } | RdmaError::Broken { .. } => libc::ECONNRESET,
            RdmaError::CmEvent { .. } => libc::ECONNREFUSED,
            RdmaError::Completion { .. } => libc::EIO,
            RdmaError::MessageTooLarge { .. } | RdmaError::RegionTooLarge { .. } => libc::EMSGSIZE,
            RdmaError::BufferTooSmall { .. } => libc::ENOBUFS,
            RdmaError::OutOfBounds { .. } | RdmaError::ForeignRegion { .. } => libc::EINVAL,
            RdmaError::OtherDevice { .. } => libc::EXDEV,
        }
    }
}

/// The calling thread's errno after a failed C call.
pub(crate) fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
