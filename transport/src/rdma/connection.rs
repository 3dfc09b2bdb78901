//! Listeners, connections, registered memory and the operations on them.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_sys as ffi;

use super::device::{expect_event, resolve_on};
use super::error::{Op, RdmaError, last_errno};
use super::shared::{Region, SharedMemory};
use super::sys::{
    CmId, CompChannel, Cq, EventChannel, Mr, OwnedBuffer, Pd, Qp, device_name, poll_fds,
    std_to_sockaddr,
};
use super::{
    ACCEPT_HANDSHAKE_TIMEOUT_MS, CM_EVENTS_PER_POLL, COMPLETIONS_PER_POLL, CQ_DEPTH,
    DRAIN_TIMEOUT_MS, LISTEN_BACKLOG, MAX_MESSAGE_BYTES, MAX_RDMA_CHUNK_BYTES,
    MAX_RDMA_READS_IN_FLIGHT, MAX_REGION_BYTES, RECV_QUEUE_DEPTH, RNR_RETRY_COUNT,
    SEND_QUEUE_DEPTH, TRANSPORT_RETRY_COUNT,
};

/// Marks the work-request id of a receive; the low bits are the receive slot.
const RECV_WR_TAG: u64 = 1 << 63;

/// Where and how a peer may reach a registered buffer: plain data, sent to the peer in a
/// message (16 bytes, no padding; use [`RemoteBuf::to_le_bytes`] for a fixed byte order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct RemoteBuf {
    /// Virtual address of the first byte in the owner's address space.
    pub addr: u64,
    /// The registration's remote key.
    pub rkey: u32,
    /// Length in bytes.
    pub len: u32,
}

impl RemoteBuf {
    /// Size of the encoded form.
    pub const ENCODED_BYTES: usize = 16;

    /// The `len` bytes from `offset_bytes`, or `None` when they are not all inside.
    pub fn slice(&self, offset_bytes: u32, len: u32) -> Option<RemoteBuf> {
        let end = offset_bytes.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(RemoteBuf {
            addr: self.addr + u64::from(offset_bytes),
            rkey: self.rkey,
            len,
        })
    }

    /// Little-endian encoding: addr, rkey, len.
    pub fn to_le_bytes(&self) -> [u8; Self::ENCODED_BYTES] {
        let mut out = [0u8; Self::ENCODED_BYTES];
        out[0..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..12].copy_from_slice(&self.rkey.to_le_bytes());
        out[12..16].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Decodes [`RemoteBuf::to_le_bytes`].
    pub fn from_le_bytes(bytes: [u8; Self::ENCODED_BYTES]) -> RemoteBuf {
        let mut addr = [0u8; 8];
        let mut rkey = [0u8; 4];
        let mut len = [0u8; 4];
        addr.copy_from_slice(&bytes[0..8]);
        rkey.copy_from_slice(&bytes[8..12]);
        len.copy_from_slice(&bytes[12..16]);
        RemoteBuf {
            addr: u64::from_le_bytes(addr),
            rkey: u32::from_le_bytes(rkey),
            len: u32::from_le_bytes(len),
        }
    }
}

/// A caller's buffer registered with a connection's protection domain, for local use in
/// RDMA READ/WRITE and for remote access by the peer through [`MemoryRegion::remote`].
///
/// It borrows the buffer mutably for its whole life and holds the protection domain, so
/// it can outlive neither. Dropping it deregisters the memory; after that the device does
/// not touch it. Reads and writes go through `Deref`/`DerefMut`.
pub struct MemoryRegion<'buf> {
    // Declared first: deregistered before the borrow of the memory ends.
    mr: Mr,
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    /// The region stands for a mutable borrow of the memory for `'buf`.
    borrow: std::marker::PhantomData<&'buf mut [u8]>,
}

// SAFETY: a MemoryRegion is, to Rust, a `&'buf mut [u8]` plus a registration handle; both
// may move between threads and be shared read-only, as `&mut [u8]` may.
unsafe impl Send for MemoryRegion<'_> {}
// SAFETY: as above; shared access only hands out `&[u8]`.
unsafe impl Sync for MemoryRegion<'_> {}

impl MemoryRegion<'_> {
    /// What the peer needs to WRITE into or READ from the whole region.
    pub fn remote(&self) -> RemoteBuf {
        RemoteBuf {
            addr: self.ptr.as_ptr() as u64,
            rkey: self.mr.rkey(),
            // Registration refuses buffers over MAX_REGION_BYTES, which fits a u32.
            len: u32::try_from(self.len).unwrap_or(u32::MAX),
        }
    }

    fn addr(&self, offset_bytes: usize) -> u64 {
        self.ptr.as_ptr() as u64 + offset_bytes as u64
    }

    /// Whether `[addr, addr + len)` lies inside the region.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        let start = self.ptr.as_ptr() as usize;
        addr >= start
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= start + self.len)
    }
}

impl Deref for MemoryRegion<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr and len come from the buffer the region borrows (or, for
        // `register_raw`, memory its caller keeps valid and unaliased while it lives).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for MemoryRegion<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for Deref, and `&mut self` makes this the only access through it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for MemoryRegion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("remote", &self.remote())
            .finish()
    }
}

/// A protection domain on one RDMA device, shared by the connections made in it
/// ([`RdmaConnection::connect_in`], [`RdmaListener::accept_in`]), so that memory
/// registered once ([`RdmaDomain::register`]) serves every one of them. A connection made
/// without a domain has a protection domain of its own.
///
/// The domain holds an rdmacm id bound to the device, which keeps the device context open;
/// connections and regions hold the domain's PD, so it lives as long as any of them. A
/// clone is the same domain.
#[derive(Clone)]
pub struct RdmaDomain {
    pd: Arc<Pd>,
    device: String,
}

impl std::fmt::Debug for RdmaDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaDomain")
            .field("device", &self.device)
            .finish()
    }
}

/// The verbs context of the device `id` is bound to; ENODEV when it is bound to none.
pub(super) fn device_context(
    id: &CmId,
    op: Op,
    peer: SocketAddr,
) -> Result<NonNull<ffi::ibv_context>, RdmaError> {
    id.verbs().ok_or(RdmaError::Call {
        op,
        peer,
        call: "rdma_cm_id.verbs",
        errno: libc::ENODEV,
    })
}

impl RdmaDomain {
    /// The domain of the device that reaches `peer` (address and route resolved within
    /// `timeout`).
    pub fn for_peer(peer: SocketAddr, timeout: Duration) -> Result<Self, RdmaError> {
        let op = Op::Resolve;
        let deadline = Instant::now() + timeout;
        let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        };
        let channel = Arc::new(EventChannel::new().map_err(call_err)?);
        let id = Arc::new(CmId::new(channel).map_err(call_err)?);
        resolve_on(&id, op, peer, deadline).map_err(|e| retime(e, timeout))?;
        RdmaDomain::on(id, op, peer)
    }

    /// The domain of the device that owns the local address `local` (for a server, the
    /// address its listener binds to).
    pub fn for_local(local: IpAddr) -> Result<Self, RdmaError> {
        let addr = SocketAddr::new(local, 0);
        let id = bound_id(addr)?;
        RdmaDomain::on(Arc::new(id), Op::Bind, addr)
    }

    fn on(id: Arc<CmId>, op: Op, peer: SocketAddr) -> Result<Self, RdmaError> {
        let context = device_context(&id, op, peer)?;
        let device = device_name(context);
        let pd = Pd::new(id).map_err(|(call, errno)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        })?;
        Ok(RdmaDomain {
            pd: Arc::new(pd),
            device,
        })
    }

    /// The name of the domain's device.
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// Registers `buffer` for use with every connection of this domain (as
    /// [`RdmaConnection::register`] does for one connection).
    pub fn register<'buf>(&self, buffer: &'buf mut [u8]) -> Result<MemoryRegion<'buf>, RdmaError> {
        let local = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0);
        register_on(&self.pd, local, buffer)
    }

    /// Registers memory the caller manages itself with every connection of this domain
    /// (as [`RdmaConnection::register_raw`] does for one connection).
    ///
    /// # Safety
    /// As [`RdmaConnection::register_raw`].
    pub unsafe fn register_raw(
        &self,
        ptr: *mut u8,
        len: usize,
    ) -> Result<MemoryRegion<'static>, RdmaError> {
        let local = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0);
        // SAFETY: the caller upholds register_raw's contract.
        unsafe { register_raw_on(&self.pd, local, ptr, len) }
    }

    /// The device context the domain's PD belongs to.
    pub(crate) fn context(&self) -> *mut ffi::ibv_context {
        self.pd.context()
    }
}

/// Registers caller-managed memory in `pd`.
///
/// # Safety
/// As [`RdmaConnection::register_raw`].
unsafe fn register_raw_on(
    pd: &Arc<Pd>,
    peer: SocketAddr,
    ptr: *mut u8,
    len: usize,
) -> Result<MemoryRegion<'static>, RdmaError> {
    let Some(ptr) = std::ptr::NonNull::new(ptr) else {
        return Err(RdmaError::Call {
            op: Op::Register,
            peer,
            call: "register_raw",
            errno: libc::EINVAL,
        });
    };
    // SAFETY: the caller keeps the memory valid and unaliased for the region's life,
    // which is what the `'static` borrow stands for.
    let buffer: &'static mut [u8] = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) };
    register_on(pd, peer, buffer)
}

fn register_on<'buf>(
    pd: &Arc<Pd>,
    peer: SocketAddr,
    buffer: &'buf mut [u8],
) -> Result<MemoryRegion<'buf>, RdmaError> {
    let op = Op::Register;
    if buffer.len() > MAX_REGION_BYTES {
        return Err(RdmaError::RegionTooLarge {
            op,
            peer,
            len: buffer.len(),
            max: MAX_REGION_BYTES,
        });
    }
    // SAFETY: `buffer` is borrowed by the returned region, which deregisters it (dropping
    // `mr` first) before the borrow ends.
    let mr = unsafe { Mr::new(Arc::clone(pd), buffer.as_mut_ptr(), buffer.len()) }.map_err(
        |(call, errno)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        },
    )?;
    Ok(MemoryRegion {
        mr,
        ptr: std::ptr::NonNull::from(&mut *buffer).cast(),
        len: buffer.len(),
        borrow: std::marker::PhantomData,
    })
}

/// A new rdmacm id on its own event channel, bound to `addr`.
fn bound_id(addr: SocketAddr) -> Result<CmId, RdmaError> {
    let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
        op: Op::Bind,
        peer: addr,
        call,
        errno,
    };
    let channel = Arc::new(EventChannel::new().map_err(call_err)?);
    let id = CmId::new(channel).map_err(call_err)?;
    let mut storage = std_to_sockaddr(addr);
    // SAFETY: live id; `storage` holds a valid sockaddr for the call's duration.
    let rc = unsafe {
        ffi::rdma_bind_addr(
            id.as_ptr(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
        )
    };
    if rc != 0 {
        return Err(call_err(("rdma_bind_addr", last_errno())));
    }
    Ok(id)
}

/// Accepts RDMA connections on a local address.
pub struct RdmaListener {
    id: CmId,
    local: SocketAddr,
}

impl RdmaListener {
    /// Binds to `addr` (which must belong to an RDMA-capable interface, or be the
    /// unspecified address) and listens. Port 0 picks a free port; see
    /// [`RdmaListener::local_addr`].
    pub fn bind(addr: SocketAddr) -> Result<Self, RdmaError> {
        let id = bound_id(addr)?;
        // SAFETY: live, bound id.
        let rc = unsafe { ffi::rdma_listen(id.as_ptr(), LISTEN_BACKLOG) };
        if rc != 0 {
            return Err(RdmaError::Call {
                op: Op::Bind,
                peer: addr,
                call: "rdma_listen",
                errno: last_errno(),
            });
        }
        let local = id.local_addr().unwrap_or(addr);
        Ok(RdmaListener { id, local })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits up to `timeout` for a connect request and establishes the connection, with a
    /// protection domain of its own.
    pub fn accept(&self, timeout: Duration) -> Result<RdmaConnection, RdmaError> {
        self.accept_with(Domain::Own, timeout).map(|(conn, _)| conn)
    }

    /// As [`RdmaListener::accept`], in `domain`; a request that arrived through another
    /// device is refused with [`RdmaError::OtherDevice`].
    pub fn accept_in(
        &self,
        domain: &RdmaDomain,
        timeout: Duration,
    ) -> Result<RdmaConnection, RdmaError> {
        self.accept_with(Domain::In(domain), timeout)
            .map(|(conn, _)| conn)
    }

    /// As [`RdmaListener::accept`], in the domain `memory` keeps for the device the request
    /// came through (made, with `memory`'s areas registered in it, by the first connection
    /// through that device). Returns the connection and the registrations it may use.
    /// When no domain can be made for the device, the connection gets one of its own and
    /// no shared registration (its bulk is staged), and the reason is logged.
    pub(crate) fn accept_shared(
        &self,
        memory: &SharedMemory,
        timeout: Duration,
    ) -> Result<(RdmaConnection, Vec<Arc<Region>>), RdmaError> {
        self.accept_with(Domain::Shared(memory), timeout)
    }

    fn accept_with(
        &self,
        domain: Domain<'_>,
        timeout: Duration,
    ) -> Result<(RdmaConnection, Vec<Arc<Region>>), RdmaError> {
        let deadline = Instant::now() + timeout;
        let local = self.local;
        // Each iteration handles one event; the deadline ends the loop.
        loop {
            let event = self
                .id
                .channel()
                .next_event(deadline)
                .map_err(|(call, errno)| RdmaError::Call {
                    op: Op::Accept,
                    peer: local,
                    call,
                    errno,
                })?;
            let Some(event) = event else {
                return Err(RdmaError::Timeout {
                    op: Op::Accept,
                    peer: local,
                    timeout_ms: millis(timeout),
                });
            };
            if event.kind != ffi::rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST {
                continue;
            }
            let Some(raw) = NonNull::new(event.id) else {
                continue;
            };
            // SAFETY: `raw` is the new id of a connect request read from this channel;
            // nothing else owns it.
            let id = unsafe { CmId::adopt(raw, Arc::clone(self.id.channel())) };
            let peer = id.peer_addr().unwrap_or(local);
            let wanted = ReadDepths {
                responder: event.initiator_depth,
                initiator: event.responder_resources,
            };
            // `timeout` bounds the wait for a client; once one has asked, the handshake
            // has its own bound, so a short poll of the listener never drops a client
            // half-accepted.
            let handshake = Duration::from_millis(ACCEPT_HANDSHAKE_TIMEOUT_MS);
            let handshake_deadline = Instant::now() + handshake;
            let (domain, regions) = match domain {
                Domain::Own => (None, Vec::new()),
                Domain::In(d) => (Some(d.clone()), Vec::new()),
                Domain::Shared(memory) => match memory.for_device(&id, peer) {
                    Ok((d, regions)) => (Some(d), regions),
                    Err(e) => {
                        crate::log_line!(
                            "nacre-transport: {peer}: no shared protection domain ({e}); \
                             the connection's bulk is staged"
                        );
                        (None, Vec::new())
                    }
                },
            };
            let conn = accept_request(
                id,
                peer,
                wanted,
                domain.as_ref(),
                handshake_deadline,
                handshake,
            )?;
            return Ok((conn, regions));
        }
    }
}

/// Which protection domain an accepted connection gets.
#[derive(Clone, Copy)]
enum Domain<'a> {
    /// One of its own.
    Own,
    /// The caller's.
    In(&'a RdmaDomain),
    /// The one a [`SharedMemory`] keeps for the request's device.
    Shared(&'a SharedMemory),
}

/// What the connecting side asked for: how many READs it will have outstanding (which
/// bounds our responder resources) and how many it serves (which bounds our initiator depth).
struct ReadDepths {
    responder: u8,
    initiator: u8,
}

fn accept_request(
    mut id: CmId,
    peer: SocketAddr,
    wanted: ReadDepths,
    domain: Option<&RdmaDomain>,
    deadline: Instant,
    timeout: Duration,
) -> Result<RdmaConnection, RdmaError> {
    let op = Op::Accept;
    let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
        op,
        peer,
        call,
        errno,
    };
    let channel = Arc::new(EventChannel::new().map_err(call_err)?);
    id.migrate(channel).map_err(call_err)?;
    let id = Arc::new(id);
    let mut conn = RdmaConnection::build(Arc::clone(&id), peer, op, domain)?;
    let ours = device_read_depths(&id, op, peer)?;
    let mut param = conn_param(
        ours.responder.min(wanted.responder),
        ours.initiator.min(wanted.initiator),
    );
    // SAFETY: live id with a QP; `param` is initialised and outlives the call.
    let rc = unsafe { ffi::rdma_accept(id.as_ptr(), &mut param) };
    if rc != 0 {
        return Err(call_err(("rdma_accept", last_errno())));
    }
    expect_event(
        &id,
        op,
        peer,
        deadline,
        ffi::rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED,
    )
    .map_err(|e| retime(e, timeout))?;
    conn.established = true;
    Ok(conn)
}

/// An established RC connection with one peer. Operations take `&mut self` and finish
/// (or fail) before returning; see the module documentation for what happens on failure.
pub struct RdmaConnection {
    peer: SocketAddr,
    // The verbs objects; each holds what it depends on, so this order is not load-bearing.
    qp: Qp,
    recv_pool: OwnedBuffer,
    send_buffer: OwnedBuffer,
    cq: Arc<Cq>,
    pd: Arc<Pd>,
    id: Arc<CmId>,
    /// Where polled completions land (allocated once).
    completions: Box<[ffi::ibv_wc]>,
    /// Received messages not yet taken: (receive slot, length).
    ready: VecDeque<(usize, usize)>,
    /// Send-side work requests posted and not yet completed.
    outstanding_sends: usize,
    /// The first failed send-side completion of the current operation: (status, vendor error).
    send_failure: Option<(u32, u32)>,
    /// Why the connection can no longer be used, once it cannot.
    broken: Option<String>,
    /// The peer disconnected (rdmacm said so).
    disconnected: bool,
    /// rdma_connect/rdma_accept completed, so drop must disconnect.
    established: bool,
}

impl std::fmt::Debug for RdmaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaConnection")
            .field("peer", &self.peer)
            .field("broken", &self.broken)
            .field("disconnected", &self.disconnected)
            .finish()
    }
}

impl RdmaConnection {
    /// Connects to a listener at `peer`, resolving address and route through an RDMA
    /// device, within `timeout` for the whole set-up. The connection has a protection
    /// domain of its own.
    pub fn connect(peer: SocketAddr, timeout: Duration) -> Result<Self, RdmaError> {
        RdmaConnection::connect_with(None, peer, timeout)
    }

    /// As [`RdmaConnection::connect`], in `domain`, whose device must be the one that
    /// reaches `peer` (else [`RdmaError::OtherDevice`]).
    pub fn connect_in(
        domain: &RdmaDomain,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, RdmaError> {
        RdmaConnection::connect_with(Some(domain), peer, timeout)
    }

    fn connect_with(
        domain: Option<&RdmaDomain>,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, RdmaError> {
        let op = Op::Connect;
        let deadline = Instant::now() + timeout;
        let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        };
        let channel = Arc::new(EventChannel::new().map_err(call_err)?);
        let id = Arc::new(CmId::new(channel).map_err(call_err)?);
        resolve_on(&id, op, peer, deadline).map_err(|e| retime(e, timeout))?;
        let mut conn = RdmaConnection::build(Arc::clone(&id), peer, op, domain)?;
        let ours = device_read_depths(&id, op, peer)?;
        let mut param = conn_param(ours.responder, ours.initiator);
        // SAFETY: live id with a resolved route and a QP; `param` outlives the call.
        let rc = unsafe { ffi::rdma_connect(id.as_ptr(), &mut param) };
        if rc != 0 {
            return Err(call_err(("rdma_connect", last_errno())));
        }
        expect_event(
            &id,
            op,
            peer,
            deadline,
            ffi::rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED,
        )
        .map_err(|e| retime(e, timeout))?;
        conn.established = true;
        Ok(conn)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Registers `buffer` with this connection's protection domain for local use and
    /// remote read and write by the peer.
    pub fn register<'buf>(&self, buffer: &'buf mut [u8]) -> Result<MemoryRegion<'buf>, RdmaError> {
        register_on(&self.pd, self.peer, buffer)
    }

    /// Registers memory that the caller manages itself (a memory pool, or an application's
    /// buffers handed to the transport once), for calls that move bulk straight from or
    /// into it.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be valid, writable memory that stays allocated until the
    /// returned region is dropped. The peer may read or write it through RDMA meanwhile,
    /// and the region's `Deref` must not be used while other references to it exist.
    pub unsafe fn register_raw(
        &self,
        ptr: *mut u8,
        len: usize,
    ) -> Result<MemoryRegion<'static>, RdmaError> {
        // SAFETY: the caller upholds this function's contract.
        unsafe { register_raw_on(&self.pd, self.peer, ptr, len) }
    }

    /// Sends one message of at most [`MAX_MESSAGE_BYTES`] and waits until the peer's
    /// device has taken it.
    pub fn send(&mut self, message: &[u8], timeout: Duration) -> Result<(), RdmaError> {
        let op = Op::Send;
        let deadline = Instant::now() + timeout;
        // Every blocking operation waits for its work requests, so none is outstanding and
        // the message is posted; if one were, it would be awaited first.
        while !self.post_message(message)? {
            self.wait_sends(op, deadline, timeout)?;
        }
        self.wait_sends(op, deadline, timeout)
    }

    /// Receives one message into `buffer` and returns its length. A message longer than
    /// `buffer` stays queued and gives [`RdmaError::BufferTooSmall`]. Messages that arrived
    /// before the peer disconnected are still delivered.
    pub fn recv(&mut self, buffer: &mut [u8], timeout: Duration) -> Result<usize, RdmaError> {
        let op = Op::Recv;
        let deadline = Instant::now() + timeout;
        // Each iteration takes a message or waits once; the deadline ends the loop.
        loop {
            if let Some(&(slot, len)) = self.ready.front() {
                if len > buffer.len() {
                    return Err(RdmaError::BufferTooSmall {
                        op,
                        peer: self.peer,
                        len,
                        capacity: buffer.len(),
                    });
                }
                let start = slot * MAX_MESSAGE_BYTES;
                buffer[..len].copy_from_slice(&self.recv_pool.bytes()[start..start + len]);
                self.ready.pop_front();
                if self.broken.is_none() && !self.disconnected {
                    self.post_recv(slot)
                        .map_err(|(call, errno)| RdmaError::Call {
                            op,
                            peer: self.peer,
                            call,
                            errno,
                        })?;
                }
                return Ok(len);
            }
            self.check_usable(op)?;
            if !self.progress(op, deadline)? {
                return Err(RdmaError::Timeout {
                    op,
                    peer: self.peer,
                    timeout_ms: millis(timeout),
                });
            }
        }
    }

    /// RDMA WRITE: copies `remote.len` bytes from `local` starting at `local_offset_bytes`
    /// into the peer's memory at `remote`, and waits for the device to confirm it.
    pub fn write(
        &mut self,
        local: &MemoryRegion<'_>,
        local_offset_bytes: usize,
        remote: RemoteBuf,
        timeout: Duration,
    ) -> Result<(), RdmaError> {
        self.one_sided(Op::Write, local, local_offset_bytes, remote, timeout)
    }

    /// RDMA READ: copies `remote.len` bytes of the peer's memory at `remote` into `local`
    /// starting at `local_offset_bytes`, and waits until they have landed.
    pub fn read(
        &mut self,
        local: &mut MemoryRegion<'_>,
        local_offset_bytes: usize,
        remote: RemoteBuf,
        timeout: Duration,
    ) -> Result<(), RdmaError> {
        // `&mut` keeps every other Rust access to `local` out while the device writes it.
        self.one_sided(Op::Read, local, local_offset_bytes, remote, timeout)
    }

    /// As [`RdmaConnection::read`], into a region that is shared (memory registered with
    /// `register_raw`, which Rust code reaches only through raw pointers).
    ///
    /// # Safety
    /// No reference to the bytes being read into may be in use during the call.
    pub(crate) unsafe fn read_shared(
        &mut self,
        local: &MemoryRegion<'_>,
        local_offset_bytes: usize,
        remote: RemoteBuf,
        timeout: Duration,
    ) -> Result<(), RdmaError> {
        self.one_sided(Op::Read, local, local_offset_bytes, remote, timeout)
    }

    fn one_sided(
        &mut self,
        op: Op,
        local: &MemoryRegion<'_>,
        local_offset_bytes: usize,
        remote: RemoteBuf,
        timeout: Duration,
    ) -> Result<(), RdmaError> {
        let deadline = Instant::now() + timeout;
        let peer = self.peer;
        if !Arc::ptr_eq(local.mr.pd(), &self.pd) {
            return Err(RdmaError::ForeignRegion { op, peer });
        }
        let total = remote.len as usize;
        let fits = local_offset_bytes
            .checked_add(total)
            .is_some_and(|end| end <= local.len());
        if !fits {
            return Err(RdmaError::OutOfBounds {
                op,
                peer,
                what: "local",
                offset_bytes: local_offset_bytes as u64,
                len: total as u64,
                region_len: local.len() as u64,
            });
        }
        if remote.addr.checked_add(u64::from(remote.len)).is_none() {
            return Err(RdmaError::OutOfBounds {
                op,
                peer,
                what: "remote",
                offset_bytes: remote.addr,
                len: u64::from(remote.len),
                region_len: u64::MAX,
            });
        }
        self.check_usable(op)?;
        let chunk = MAX_RDMA_CHUNK_BYTES as usize;
        let mut posted_bytes = 0usize;
        // Each iteration posts what the send queue has room for, then waits once.
        while posted_bytes < total || self.outstanding_sends > 0 {
            self.check_send_failure(op)?;
            while posted_bytes < total {
                let len = chunk.min(total - posted_bytes);
                let part = RemoteBuf {
                    addr: remote.addr + posted_bytes as u64,
                    rkey: remote.rkey,
                    len: len as u32,
                };
                let offset = local_offset_bytes + posted_bytes;
                // SAFETY: `local` stays borrowed until this call has waited for every work
                // request it posted (below, or in `abort` when it gives up).
                if !unsafe { self.post_one_sided(op == Op::Read, local, offset, part) }? {
                    break;
                }
                posted_bytes += len;
            }
            if self.outstanding_sends > 0 && !self.progress(op, deadline)? {
                return Err(self.abort(
                    op,
                    RdmaError::Timeout {
                        op,
                        peer,
                        timeout_ms: millis(timeout),
                    },
                ));
            }
        }
        self.check_send_failure(op)
    }

    // ---- nonblocking use, for an event loop (`RdmaStream`) ----

    /// The file descriptors an event loop watches for this connection: the completion
    /// channel and the rdmacm event channel. Both are nonblocking; after either is ready,
    /// [`RdmaConnection::poll_nonblocking`] takes what happened.
    pub(crate) fn event_fds(&self) -> [std::os::fd::BorrowedFd<'_>; 2] {
        // SAFETY: both descriptors belong to objects this connection owns (its completion
        // channel and its rdmacm event channel), open while it lives, which the borrow's
        // lifetime ties them to.
        unsafe {
            [
                std::os::fd::BorrowedFd::borrow_raw(self.cq.channel_fd()),
                std::os::fd::BorrowedFd::borrow_raw(self.id.channel().fd()),
            ]
        }
    }

    /// Takes every completion and connection event without sleeping, and arms the CQ so
    /// that the next completion makes the completion channel readable; returns whether
    /// anything happened.
    pub(crate) fn poll_nonblocking(&mut self) -> Result<bool, RdmaError> {
        let op = Op::Recv;
        let peer = self.peer;
        let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        };
        self.cq.consume_wakeups().map_err(call_err)?;
        let mut any = false;
        while self.reap().map_err(call_err)? > 0 {
            any = true;
        }
        any |= self.handle_cm_events().map_err(call_err)?;
        self.cq.arm().map_err(call_err)?;
        // A completion that came before arming raises no wake-up: take it now.
        while self.reap().map_err(call_err)? > 0 {
            any = true;
        }
        Ok(any)
    }

    /// Waits (at most `timeout`) until no send-side work request is outstanding.
    pub(crate) fn wait_idle(&mut self, timeout: Duration) -> Result<(), RdmaError> {
        self.wait_sends(Op::Send, Instant::now() + timeout, timeout)
    }

    /// Received messages not yet taken.
    pub(crate) fn messages_ready(&self) -> usize {
        self.ready.len()
    }

    /// Send-side work requests posted and not yet completed.
    pub(crate) fn outstanding_sends(&self) -> usize {
        self.outstanding_sends
    }

    /// Whether the peer disconnected.
    pub(crate) fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// Posts one RDMA READ (`pull`) or WRITE of `remote.len` bytes (at most
    /// [`MAX_RDMA_CHUNK_BYTES`]) between `local` at `offset` and `remote`, without waiting;
    /// false (nothing posted) when the send queue is full.
    ///
    /// # Safety
    /// `local` must stay registered, and no reference to the bytes it names be in use, until
    /// [`RdmaConnection::outstanding_sends`] has come back to zero.
    pub(crate) unsafe fn post_one_sided(
        &mut self,
        pull: bool,
        local: &MemoryRegion<'_>,
        offset: usize,
        remote: RemoteBuf,
    ) -> Result<bool, RdmaError> {
        let op = if pull { Op::Read } else { Op::Write };
        let peer = self.peer;
        let len = remote.len as usize;
        if !Arc::ptr_eq(local.mr.pd(), &self.pd) {
            return Err(RdmaError::ForeignRegion { op, peer });
        }
        if remote.len > MAX_RDMA_CHUNK_BYTES
            || offset.checked_add(len).is_none_or(|end| end > local.len())
        {
            return Err(RdmaError::OutOfBounds {
                op,
                peer,
                what: "local",
                offset_bytes: offset as u64,
                len: len as u64,
                region_len: local.len() as u64,
            });
        }
        self.check_usable(op)?;
        if self.outstanding_sends == SEND_QUEUE_DEPTH {
            return Ok(false);
        }
        let mut sge = ffi::ibv_sge {
            addr: local.addr(offset),
            length: remote.len,
            lkey: local.mr.lkey(),
        };
        // SAFETY: plain C struct; all-zero is valid.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.sg_list = &mut sge;
        wr.num_sge = 1;
        wr.opcode = if pull {
            ffi::ibv_wr_opcode::IBV_WR_RDMA_READ
        } else {
            ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE
        };
        wr.send_flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.wr.rdma = ffi::rdma_t {
            remote_addr: remote.addr,
            rkey: remote.rkey,
        };
        self.post_send(op, &mut wr)?;
        Ok(true)
    }

    /// Posts one message (at most [`MAX_MESSAGE_BYTES`]) without waiting; false (nothing
    /// posted) while any send-side request is outstanding, since the message is copied
    /// into the connection's one send buffer.
    pub(crate) fn post_message(&mut self, message: &[u8]) -> Result<bool, RdmaError> {
        let op = Op::Send;
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(RdmaError::MessageTooLarge {
                op,
                peer: self.peer,
                len: message.len(),
                max: MAX_MESSAGE_BYTES,
            });
        }
        self.check_usable(op)?;
        if self.outstanding_sends > 0 {
            return Ok(false);
        }
        self.send_buffer.bytes_mut()[..message.len()].copy_from_slice(message);
        let mut sge = ffi::ibv_sge {
            addr: self.send_buffer.addr(0),
            length: u32::try_from(message.len()).unwrap_or(u32::MAX),
            lkey: self.send_buffer.lkey(),
        };
        // SAFETY: plain C struct; all-zero is valid.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.sg_list = &mut sge;
        wr.num_sge = i32::from(!message.is_empty());
        wr.opcode = ffi::ibv_wr_opcode::IBV_WR_SEND;
        wr.send_flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        self.post_send(op, &mut wr)?;
        Ok(true)
    }

    /// Builds (or takes the domain's) PD, then CQ, QP and message buffers on `id`, and
    /// pre-posts every receive.
    fn build(
        id: Arc<CmId>,
        peer: SocketAddr,
        op: Op,
        domain: Option<&RdmaDomain>,
    ) -> Result<Self, RdmaError> {
        let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        };
        let pd = match domain {
            None => Arc::new(Pd::new(Arc::clone(&id)).map_err(call_err)?),
            Some(domain) => {
                let context = id
                    .verbs()
                    .ok_or(call_err(("rdma_cm_id.verbs", libc::ENODEV)))?;
                if context.as_ptr() != domain.pd.context() {
                    return Err(RdmaError::OtherDevice {
                        op,
                        peer,
                        device: device_name(context),
                        domain_device: domain.device.clone(),
                    });
                }
                Arc::clone(&domain.pd)
            }
        };
        let comp_channel = Arc::new(CompChannel::new(Arc::clone(&id)).map_err(call_err)?);
        let cq_entries = i32::try_from(CQ_DEPTH).unwrap_or(i32::MAX);
        let cq = Arc::new(Cq::new(comp_channel, cq_entries).map_err(call_err)?);
        let cap = ffi::ibv_qp_cap {
            max_send_wr: SEND_QUEUE_DEPTH as u32,
            max_recv_wr: RECV_QUEUE_DEPTH as u32,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        let qp =
            Qp::new(Arc::clone(&id), Arc::clone(&pd), Arc::clone(&cq), cap).map_err(call_err)?;
        let recv_pool = OwnedBuffer::new(Arc::clone(&pd), RECV_QUEUE_DEPTH * MAX_MESSAGE_BYTES)
            .map_err(call_err)?;
        let send_buffer = OwnedBuffer::new(Arc::clone(&pd), MAX_MESSAGE_BYTES).map_err(call_err)?;
        let completions = (0..COMPLETIONS_PER_POLL)
            // SAFETY: ibv_wc is plain C data; all-zero is valid.
            .map(|_| unsafe { std::mem::zeroed::<ffi::ibv_wc>() })
            .collect();
        let mut conn = RdmaConnection {
            peer,
            qp,
            recv_pool,
            send_buffer,
            cq,
            pd,
            id,
            completions,
            ready: VecDeque::with_capacity(RECV_QUEUE_DEPTH),
            outstanding_sends: 0,
            send_failure: None,
            broken: None,
            disconnected: false,
            established: false,
        };
        for slot in 0..RECV_QUEUE_DEPTH {
            conn.post_recv(slot).map_err(call_err)?;
        }
        Ok(conn)
    }

    fn post_recv(&mut self, slot: usize) -> Result<(), (&'static str, i32)> {
        assert!(slot < RECV_QUEUE_DEPTH, "receive slot inside the pool");
        let mut sge = ffi::ibv_sge {
            addr: self.recv_pool.addr(slot * MAX_MESSAGE_BYTES),
            length: MAX_MESSAGE_BYTES as u32,
            lkey: self.recv_pool.lkey(),
        };
        let mut wr = ffi::ibv_recv_wr {
            wr_id: RECV_WR_TAG | slot as u64,
            next: std::ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut ffi::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: live QP; `wr` and `sge` are valid for the call (the device copies them);
        // the slot's memory belongs to `recv_pool`, registered for the QP's life.
        let rc = unsafe { ffi::ibv_post_recv(self.qp.as_ptr(), &mut wr, &mut bad) };
        if rc != 0 {
            return Err(("ibv_post_recv", rc));
        }
        Ok(())
    }

    fn post_send(&mut self, op: Op, wr: &mut ffi::ibv_send_wr) -> Result<(), RdmaError> {
        assert!(
            self.outstanding_sends < SEND_QUEUE_DEPTH,
            "send queue has room"
        );
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: live QP; `wr` and its SGE are valid for the call; the memory they name
        // is registered and stays so until the completion is reaped (operations wait).
        let rc = unsafe { ffi::ibv_post_send(self.qp.as_ptr(), wr, &mut bad) };
        if rc != 0 {
            let err = RdmaError::Call {
                op,
                peer: self.peer,
                call: "ibv_post_send",
                errno: rc,
            };
            return Err(self.abort(op, err));
        }
        self.outstanding_sends += 1;
        Ok(())
    }

    /// Waits until every send-side request has completed.
    fn wait_sends(
        &mut self,
        op: Op,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), RdmaError> {
        while self.outstanding_sends > 0 {
            self.check_send_failure(op)?;
            if !self.progress(op, deadline)? {
                let err = RdmaError::Timeout {
                    op,
                    peer: self.peer,
                    timeout_ms: millis(timeout),
                };
                return Err(self.abort(op, err));
            }
        }
        self.check_send_failure(op)
    }

    /// The error of a send-side request that failed (or of the peer's disconnect), if one
    /// did since the last call; the connection is then unusable.
    pub(crate) fn check_send_failure(&mut self, op: Op) -> Result<(), RdmaError> {
        if self.disconnected {
            return Err(self.abort(
                op,
                RdmaError::Disconnected {
                    op,
                    peer: self.peer,
                },
            ));
        }
        if let Some((status, vendor_err)) = self.send_failure.take() {
            let err = RdmaError::Completion {
                op,
                peer: self.peer,
                status,
                status_text: status_text(status),
                vendor_err,
            };
            return Err(self.abort(op, err));
        }
        Ok(())
    }

    fn check_usable(&self, op: Op) -> Result<(), RdmaError> {
        if self.disconnected {
            return Err(RdmaError::Disconnected {
                op,
                peer: self.peer,
            });
        }
        if let Some(reason) = &self.broken {
            return Err(RdmaError::Broken {
                op,
                peer: self.peer,
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    /// Gives up on the connection: flushes every outstanding request, waits (bounded) for
    /// the flushes so the device is done with all memory, and returns `err`.
    fn abort(&mut self, op: Op, err: RdmaError) -> RdmaError {
        if self.broken.is_none() {
            self.broken = Some(err.to_string());
        }
        // An error here means the QP is already in error state, the outcome wanted.
        let _ = self.qp.fail();
        let drain_deadline = Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS);
        while self.outstanding_sends > 0 {
            match self.progress(op, drain_deadline) {
                Ok(true) => {}
                Ok(false) | Err(_) => break,
            }
        }
        self.send_failure = None;
        err
    }

    /// Takes completions and connection events, sleeping until one arrives or `deadline`.
    /// Returns false when the deadline passed with nothing to handle.
    fn progress(&mut self, op: Op, deadline: Instant) -> Result<bool, RdmaError> {
        let peer = self.peer;
        let call_err = |(call, errno): (&'static str, i32)| RdmaError::Call {
            op,
            peer,
            call,
            errno,
        };
        if self.reap().map_err(call_err)? > 0 || self.handle_cm_events().map_err(call_err)? {
            return Ok(true);
        }
        self.cq.arm().map_err(call_err)?;
        // A completion that arrived before arming raises no wake-up: look once more.
        if self.reap().map_err(call_err)? > 0 {
            return Ok(true);
        }
        let fds = [self.cq.channel_fd(), self.id.channel().fd()];
        match poll_fds(&fds, deadline).map_err(|errno| call_err(("poll", errno)))? {
            None => Ok(false),
            Some(_) => {
                self.cq.consume_wakeups().map_err(call_err)?;
                self.reap().map_err(call_err)?;
                self.handle_cm_events().map_err(call_err)?;
                Ok(true)
            }
        }
    }

    /// Moves completions from the CQ into the connection's state; returns how many.
    fn reap(&mut self) -> Result<usize, (&'static str, i32)> {
        let n = self.cq.poll(&mut self.completions)?;
        for index in 0..n {
            let wc = &self.completions[index];
            let (wr_id, status, byte_len, vendor_err) =
                (wc.wr_id, wc.status, wc.byte_len, wc.vendor_err);
            let ok = status == ffi::ibv_wc_status::IBV_WC_SUCCESS;
            let flushed = status == ffi::ibv_wc_status::IBV_WC_WR_FLUSH_ERR;
            if wr_id & RECV_WR_TAG != 0 {
                let slot = (wr_id & !RECV_WR_TAG) as usize;
                assert!(
                    slot < RECV_QUEUE_DEPTH,
                    "receive completion names a slot of the pool"
                );
                if ok {
                    assert!(
                        self.ready.len() < RECV_QUEUE_DEPTH,
                        "no more messages than receive slots"
                    );
                    self.ready.push_back((slot, byte_len as usize));
                } else if !flushed && self.broken.is_none() {
                    self.broken = Some(format!("receive failed: {}", status_text(status)));
                }
            } else {
                assert!(
                    self.outstanding_sends > 0,
                    "a send completion matches a posted request"
                );
                self.outstanding_sends -= 1;
                if !ok && self.send_failure.is_none() {
                    self.send_failure = Some((status, vendor_err));
                }
            }
        }
        Ok(n)
    }

    /// Handles pending rdmacm events without waiting; returns whether there were any.
    fn handle_cm_events(&mut self) -> Result<bool, (&'static str, i32)> {
        let mut any = false;
        for _ in 0..CM_EVENTS_PER_POLL {
            let Some(event) = self.id.channel().next_event(Instant::now())? else {
                break;
            };
            any = true;
            let gone = matches!(
                event.kind,
                ffi::rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED
                    | ffi::rdma_cm_event_type::RDMA_CM_EVENT_DEVICE_REMOVAL
                    | ffi::rdma_cm_event_type::RDMA_CM_EVENT_TIMEWAIT_EXIT
            );
            if gone && !self.disconnected {
                self.disconnected = true;
                // Flush everything outstanding now rather than after transport retries.
                let _ = self.qp.fail();
            }
        }
        Ok(any)
    }
}

impl Drop for RdmaConnection {
    fn drop(&mut self) {
        if self.established && !self.disconnected {
            // SAFETY: live, connected id. Tells the peer at once; failure changes nothing
            // about what follows (the fields tear down in dependency order).
            unsafe { ffi::rdma_disconnect(self.id.as_ptr()) };
        }
    }
}

/// READ depths this side's device supports, capped by [`MAX_RDMA_READS_IN_FLIGHT`].
fn device_read_depths(id: &CmId, op: Op, peer: SocketAddr) -> Result<ReadDepths, RdmaError> {
    let verbs = device_context(id, op, peer)?;
    // SAFETY: plain C struct; all-zero is valid.
    let mut attr: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: live device context, valid out-pointer.
    let rc = unsafe { ffi::ibv_query_device(verbs.as_ptr(), &mut attr) };
    if rc != 0 {
        return Err(RdmaError::Call {
            op,
            peer,
            call: "ibv_query_device",
            errno: rc,
        });
    }
    let cap = |v: i32| {
        u8::try_from(v.max(0))
            .unwrap_or(u8::MAX)
            .min(MAX_RDMA_READS_IN_FLIGHT)
    };
    Ok(ReadDepths {
        responder: cap(attr.max_qp_rd_atom),
        initiator: cap(attr.max_qp_init_rd_atom),
    })
}

fn conn_param(responder_resources: u8, initiator_depth: u8) -> ffi::rdma_conn_param {
    // SAFETY: plain C struct; all-zero is valid (no private data).
    let mut param: ffi::rdma_conn_param = unsafe { std::mem::zeroed() };
    param.responder_resources = responder_resources;
    param.initiator_depth = initiator_depth;
    param.flow_control = 1;
    param.retry_count = TRANSPORT_RETRY_COUNT;
    param.rnr_retry_count = RNR_RETRY_COUNT;
    param
}

fn status_text(status: u32) -> String {
    // SAFETY: returns a static string for any value.
    let text = unsafe { ffi::ibv_wc_status_str(status) };
    if text.is_null() {
        return format!("status {status}");
    }
    // SAFETY: non-null static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

fn millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

/// Reports a set-up timeout as the caller's whole timeout rather than the part left.
fn retime(err: RdmaError, timeout: Duration) -> RdmaError {
    match err {
        RdmaError::Timeout { op, peer, .. } => RdmaError::Timeout {
            op,
            peer,
            timeout_ms: millis(timeout),
        },
        other => other,
    }
}

// Connections, listeners, domains and regions may move to (and be shared with) other
// threads: every verbs object they hold is thread safe, and mutation needs `&mut`.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<RdmaConnection>();
    send_and_sync::<RdmaListener>();
    send_and_sync::<RdmaDomain>();
    send_and_sync::<MemoryRegion<'static>>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_buf_round_trips_through_its_encoding() {
        let remote = RemoteBuf {
            addr: 0x0123_4567_89ab_cdef,
            rkey: 0xdead_beef,
            len: 4096,
        };
        assert_eq!(RemoteBuf::from_le_bytes(remote.to_le_bytes()), remote);
        assert_eq!(bytemuck::bytes_of(&remote).len(), RemoteBuf::ENCODED_BYTES);
    }

    #[test]
    fn remote_buf_slices_stay_inside() {
        let remote = RemoteBuf {
            addr: 1000,
            rkey: 7,
            len: 100,
        };
        assert_eq!(
            remote.slice(10, 90),
            Some(RemoteBuf {
                addr: 1010,
                rkey: 7,
                len: 90
            })
        );
        assert_eq!(
            remote.slice(100, 0),
            Some(RemoteBuf {
                addr: 1100,
                rkey: 7,
                len: 0
            })
        );
        assert_eq!(remote.slice(10, 91), None);
        assert_eq!(remote.slice(u32::MAX, 2), None);
    }
}
