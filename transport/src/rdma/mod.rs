//! RDMA: reliable-connected queue pairs set up through rdmacm, small messages by
//! SEND/RECV and bulk bytes by one-sided RDMA WRITE and READ, over libibverbs
//! (through `rdma-sys`).
//!
//! It owns the verbs objects of each connection and the registrations of the memory
//! callers hand it; it never allocates bulk memory of its own and knows nothing of the
//! wire format above it.
//!
//! # Objects and teardown order
//!
//! Each [`RdmaConnection`] has its own rdmacm event channel and id, protection domain
//! (PD), completion channel, one completion queue (CQ) for sends and receives, an RC
//! queue pair (QP), and [`RECV_QUEUE_DEPTH`] receive buffers of [`MAX_MESSAGE_BYTES`]
//! each, pre-posted before the connection is established. By default the PD is the
//! connection's own, so connections are independent and memory registered with one
//! ([`RdmaConnection::register`]) serves that one only. Connections made in an
//! [`RdmaDomain`] ([`RdmaConnection::connect_in`], [`RdmaListener::accept_in`]) share the
//! domain's PD instead, so memory registered once with the domain (a server's or a
//! client's memory pool) serves all of them; a domain belongs to one device, and a peer
//! reached through another device is refused with [`RdmaError::OtherDevice`]. The
//! [`Listener`](crate::server::Listener) makes such a domain for each device it accepts through,
//! the first time a client comes through it, and registers there once the memory it was
//! given ([`Listener::register_memory`](crate::server::Listener::register_memory)).
//!
//! Teardown order is enforced by types, not by care:
//! - every verbs object holds an `Arc` of each object it depends on (QP → PD, CQ and
//!   rdmacm id; CQ → completion channel; PD → id; id → event channel), so nothing is
//!   destroyed while something built on it lives;
//! - a [`MemoryRegion`] mutably borrows the caller's buffer for its whole life (so it
//!   cannot outlive the buffer, and nobody else touches the buffer meanwhile) and holds
//!   the PD (so it cannot outlive that either; a region used with a connection of another
//!   PD is refused with [`RdmaError::ForeignRegion`]);
//! - operations are synchronous: [`RdmaConnection::write`] and [`RdmaConnection::read`]
//!   return only once the device has finished with the memory. When a wait times out or
//!   the peer goes away, the QP is moved to the error state, which makes the device flush
//!   every outstanding request, and the flushes are awaited (for at most
//!   [`DRAIN_TIMEOUT_MS`]) before the error is returned.
//!
//! Misuse does not compile. A region cannot outlive the buffer it covers:
//!
//! ```compile_fail,E0515
//! use nacre_transport::rdma::{MemoryRegion, RdmaConnection, RdmaError};
//! fn outlive(conn: &RdmaConnection) -> Result<MemoryRegion<'static>, RdmaError> {
//!     let mut buffer = vec![0u8; 4096];
//!     conn.register(&mut buffer) // `buffer` is freed here, the region would live on
//! }
//! ```
//!
//! nor can the buffer be touched behind the region's back while it is registered:
//!
//! ```compile_fail,E0499
//! use nacre_transport::rdma::{RdmaConnection, RdmaError};
//! fn alias(conn: &RdmaConnection) -> Result<(), RdmaError> {
//!     let mut buffer = vec![0u8; 4096];
//!     let region = conn.register(&mut buffer)?;
//!     buffer[0] = 1; // the region borrows `buffer` mutably
//!     drop(region);
//!     Ok(())
//! }
//! ```
//!
//! The right way round compiles (and is what the tests in `tests/rdma.rs` do):
//!
//! ```no_run
//! use std::time::Duration;
//! use nacre_transport::rdma::{RdmaConnection, RdmaError, RemoteBuf};
//! fn pull(conn: &mut RdmaConnection, remote: RemoteBuf) -> Result<Vec<u8>, RdmaError> {
//!     let mut buffer = vec![0u8; remote.len as usize];
//!     let mut region = conn.register(&mut buffer)?;
//!     buffer_len_is(&region, remote.len as usize);
//!     conn.read(&mut region, 0, remote, Duration::from_secs(5))?;
//!     drop(region); // deregistered; the buffer is the caller's again
//!     buffer[0] ^= 0; // and may be used
//!     Ok(buffer)
//! }
//! fn buffer_len_is(region: &[u8], len: usize) { assert_eq!(region.len(), len) }
//! ```
//!
//! # Waiting
//!
//! Every wait has a deadline. A waiter sleeps in `poll(2)` on two fds: the CQ's completion
//! channel and the connection's rdmacm event channel, so a peer's disconnect (an rdmacm
//! DISCONNECTED event) ends the wait at once with [`RdmaError::Disconnected`] instead of
//! waiting for the transport's retries to run out.
//!
//! Memory registered for remote access may be written by the peer at any time while it
//! is registered; the protocol above must say when it may (as it says who reads when).

mod connection;
mod device;
mod error;
mod shared;
mod sys;

pub use connection::{MemoryRegion, RdmaConnection, RdmaDomain, RdmaListener, RemoteBuf};
pub use device::{DeviceInfo, PortInfo, can_reach, devices};
pub use error::{Op, RdmaError};
pub(crate) use shared::{Region, SharedMemory};

/// Largest message [`RdmaConnection::send`] carries (and the size of each receive buffer):
/// a wire header, the largest body, and the descriptors of remote bulk memory.
pub const MAX_MESSAGE_BYTES: usize = crate::limits::HEADER_BYTES
    + crate::limits::MAX_BODY_BYTES as usize
    + crate::limits::REMOTE_BULK_DESCRIPTOR_BYTES;
/// Receive buffers pre-posted on each connection: the messages a peer may have in
/// flight before the receiver takes them (more wait in the sender's RNR retries).
pub const RECV_QUEUE_DEPTH: usize = 16;
/// Send-side work requests (SEND, WRITE, READ) in flight on one connection.
pub const SEND_QUEUE_DEPTH: usize = 32;
/// Entries of a connection's completion queue: room for every work request in flight.
pub const CQ_DEPTH: usize = SEND_QUEUE_DEPTH + RECV_QUEUE_DEPTH;
/// Largest single RDMA WRITE or READ work request; longer transfers are split.
pub const MAX_RDMA_CHUNK_BYTES: u32 = 1024 * 1024;
/// Largest buffer one [`MemoryRegion`] covers: the transport's bound
/// ([`crate::limits::MAX_RDMA_REGION_BYTES`]), kept here under its old name.
pub const MAX_REGION_BYTES: usize = crate::limits::MAX_RDMA_REGION_BYTES;
/// RDMA READs a connection keeps outstanding as initiator and accepts as responder
/// (lowered to what the device and the peer support).
pub const MAX_RDMA_READS_IN_FLIGHT: u8 = 16;
/// Transport retries before a work request fails (3 bits in the protocol; 7 is the most).
pub const TRANSPORT_RETRY_COUNT: u8 = 7;
/// Receiver-not-ready retries; 7 means "retry for ever", bounded instead by each
/// operation's own timeout.
pub const RNR_RETRY_COUNT: u8 = 7;
/// Connect requests a listener queues before accepting them.
pub const LISTEN_BACKLOG: i32 = 64;
/// How long to wait for flushed work requests after a failure before giving up on them.
pub const DRAIN_TIMEOUT_MS: u64 = 2_000;
/// How long an accepted connect request may take to become established.
pub const ACCEPT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// A sensible bound for [`can_reach`] when choosing a transport.
pub const REACH_TIMEOUT_MS: u64 = 1_000;
/// Completions taken from the CQ per poll.
pub const COMPLETIONS_PER_POLL: usize = 16;
/// rdmacm events handled per wake-up (the rest wait for the next one).
pub const CM_EVENTS_PER_POLL: usize = 8;
