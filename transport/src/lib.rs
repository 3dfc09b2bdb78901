//! nacre-transport moves messages and bulk bytes between processes: the versioned,
//! checksummed wire format, TCP driven by io_uring, and RDMA (verbs, rdmacm, one-sided
//! READ/WRITE) with automatic fallback to TCP, behind one interface.
//!
//! It knows nothing of layouts or storage.
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

pub mod buffer;
pub mod conn;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod framer;
pub mod limits;
pub mod pipe;
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
pub mod stream;
pub mod tcp;
pub mod wire;

pub use conn::{
    Bulk, ConnectOptions, Connection, Kind, Listener, Peer, PooledConnection, Reply, Request,
    ServerConnection,
};
pub use endpoint::{Endpoint, Scheme};
pub use error::{TransportError, TransportOp};
pub use framer::outbox::Span;
pub use pipe::{Finished, PipeConn};
pub use rdma_link::RdmaStream;
pub use stream::{Incoming, Progress, StreamConn};
