//! nacre-transport moves messages and bulk bytes between processes: the versioned,
//! checksummed wire format, TCP driven by io_uring, and RDMA (verbs, rdmacm, one-sided
//! READ/WRITE) with automatic fallback to TCP, behind one interface.
//!
//! It knows nothing of layouts or storage.
//!
//! Its surface: [`client`] and [`server`], the two sides of a connection; the [`framer`]
//! and the message format it frames ([`wire`]); and what both sides share ([`Endpoint`],
//! [`TransportError`], [`Span`], [`limits`], the readiness primitives of [`event`]). The
//! connection machinery under them (the TCP connection, the sockets' state, the input
//! buffer) is private. [`rdma`] stays public for its own tests, which drive the verbs
//! directly in the Soft-RoCE VM.
// Without the `rdma` feature the RDMA types have no values (`rdma/off.rs`), so the code that
// handles them is dead there; the feature's build checks that code for dead parts.
#![cfg_attr(not(feature = "rdma"), allow(unreachable_code, unreachable_patterns))]

/// Writes one line on stderr and ignores a failure to: a closed stderr (EPIPE) must not stop
/// the data path, where `eprintln!` would panic.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod buffer;
mod conn;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod framer;
pub mod limits;
mod pipe;
#[cfg(feature = "rdma")]
pub mod rdma;
/// RDMA without the `rdma` feature: the same names, as types with no values
/// (`rdma/off.rs`), so that nothing else in the crate or the engine needs a `cfg` gate.
#[cfg(not(feature = "rdma"))]
#[path = "rdma/off.rs"]
pub mod rdma;
#[cfg(feature = "rdma")]
mod rdma_link;
#[cfg(not(feature = "rdma"))]
use rdma as rdma_link;
mod socket;
mod stream;
mod tcp;
pub mod wire;

/// The client's side: connecting to a server and carrying requests to it, blocking
/// ([`Connection`](client::Connection), pooled by [`Peer`](client::Peer)) or nonblocking
/// for an engine's event loop ([`PipeConn`](client::PipeConn)). TLS will wrap the byte
/// stream under these, between the socket and the framer (decision 0019).
pub mod client {
    pub use crate::conn::{
        Bulk, ConnectOptions, Connection, Kind, Peer, PooledConnection, Reply, choose_kind,
    };
    pub use crate::pipe::{Finished, PipeConn};
    pub use crate::stream::Progress;
}

/// The server's side: listening, and serving requests, blocking
/// ([`ServerConnection`](server::ServerConnection)) or nonblocking for a worker's event loop
/// ([`StreamConn`](server::StreamConn) over TCP, [`RdmaStream`](server::RdmaStream) over
/// RDMA, which offer the same calls).
pub mod server {
    pub use crate::conn::{Listener, Request, ServerConnection};
    pub use crate::rdma_link::RdmaStream;
    pub use crate::stream::{Incoming, Progress, StreamConn};
}

pub use endpoint::{Endpoint, Scheme};
pub use error::{TransportError, TransportOp};
pub use framer::outbox::Span;
