//! Every bound of the transport, in one place. Units are in the names.

/// Magic number opening every message header ("NACR" little-endian).
pub const WIRE_MAGIC: u32 = u32::from_le_bytes(*b"NACR");
/// Version of the wire format this build speaks (2: the header's `target`, decision 0016).
pub const WIRE_VERSION: u16 = 2;
/// Size of a message header on the wire.
pub const HEADER_BYTES: usize = 48;
/// Largest body (the small, structured part of a message: extent lists and the like).
pub const MAX_BODY_BYTES: u32 = 64 * 1024;
/// Largest bulk payload of one message.
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Most extents one request may carry.
pub const MAX_EXTENTS_PER_REQUEST: usize = 1024;
/// Most requests a server connection has read and not answered yet (served, or replies
/// waiting to be written); it reads no further request until replies went out.
pub const MAX_PIPELINED_REQUESTS: usize = 64;
/// Default number of connections a client opens to one peer.
pub const DEFAULT_CONNECTIONS_PER_PEER: usize = 4;
/// Most connections a client opens to one peer.
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// How long connecting to a peer may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long one request may wait for its response (or one send for the peer to take it).
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Socket buffer size asked for on bulk connections.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes one `sendmsg` on a TCP connection is given. A larger message leaves in
/// several calls: a call holds the socket's lock throughout, and what the peer sends back
/// meanwhile (its replies, its ACKs) waits in the socket's backlog, to be processed by the
/// sending thread inside the call. Measured on loopback with 1 MiB payloads on one
/// connection (docs/BENCHMARKS.md, net): uncapped calls spent about a third of the sending
/// CPU flushing that backlog; 512 KiB calls moved about 30% more on the engine's path and
/// 22% more on blocking connections (256 KiB: about 15% on both).
pub const MAX_SEND_CALL_BYTES: usize = 512 * 1024;
/// Most remote-memory descriptors (RDMA bulk) one message carries.
pub const MAX_REMOTE_BUFS_PER_MESSAGE: usize = 64;
/// Room after a message's body for its remote-memory descriptors: a u32 count and up to
/// [`MAX_REMOTE_BUFS_PER_MESSAGE`] 16-byte descriptors.
pub const REMOTE_BULK_DESCRIPTOR_BYTES: usize = 4 + 16 * MAX_REMOTE_BUFS_PER_MESSAGE;
/// Largest buffer one RDMA memory region covers (a remote descriptor's length is a `u32`);
/// a client's registrations of caller memory are bounded by it, with or without the rdma
/// feature.
pub const MAX_RDMA_REGION_BYTES: usize = 1 << 31;
const _: () = assert!(MAX_RDMA_REGION_BYTES as u64 <= u32::MAX as u64 + 1);

/// Most bytes one read of a header takes (the header and what follows it, so that a small
/// message arrives in one system call).
pub const INPUT_BUFFER_BYTES: usize = 8 * 1024;
const _: () = assert!(INPUT_BUFFER_BYTES >= HEADER_BYTES);
