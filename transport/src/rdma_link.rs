//! RDMA under the one connection interface (feature `rdma`).
//!
//! A request or reply is one SEND: the wire header, the body and, with
//! [`FLAG_REMOTE_BULK`], a u32 count and the descriptors of the sender's registered bulk
//! memory. A request's payload is pulled by the server with RDMA READ; a reply's payload is
//! pushed by the server with RDMA WRITE into the memory the request described, before the
//! reply message is sent, so the client sees the bytes when it sees the reply.
//!
//! Bulk in memory registered with the connection (`register_memory`) moves with no copy:
//! the descriptors name that memory and the server reads or writes it directly. Bulk in
//! other memory goes through a staging buffer registered for the call, one copy per side,
//! counted in `staged_bytes` (docs/decisions/0004-rdma-behind-the-connection-interface.md).

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::TransportError;
use crate::limits::{HEADER_BYTES, MAX_PAYLOAD_BYTES, MAX_REMOTE_BUFS_PER_MESSAGE};
use crate::rdma::{MAX_MESSAGE_BYTES, RdmaConnection, RdmaError, Region, RemoteBuf};
use crate::wire::{FLAG_REMOTE_BULK, Header, WireError};

mod stream;
pub use stream::RdmaStream;

/// One RDMA connection with its message scratch and bulk staging buffers.
pub(crate) struct RdmaLink {
    conn: RdmaConnection,
    peer: SocketAddr,
    timeout: Duration,
    /// The message being sent (capacity [`MAX_MESSAGE_BYTES`], refilled per message).
    send_buf: Vec<u8>,
    /// Receive buffer, [`MAX_MESSAGE_BYTES`] long for the link's life; `recv_len` is used.
    recv_buf: Box<[u8]>,
    recv_len: usize,
    /// Scratch for the registered pieces and descriptors of one call.
    pieces: Vec<LocalPiece>,
    descs: Vec<RemoteBuf>,
    staging: Vec<u8>,
    /// Server side: the current request's remote descriptors.
    remote: Vec<RemoteBuf>,
    /// Registered memory (the caller's, and the listener's shared memory on a server):
    /// bulk in it moves without staging.
    regions: Vec<Arc<Region>>,
    /// Bytes copied through `staging` so far (zero when every call used registered memory).
    staged_bytes: u64,
    broken: bool,
}

/// A piece of registered local memory: region index, offset in it, length.
type LocalPiece = (usize, usize, usize);

impl std::fmt::Debug for RdmaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaLink")
            .field("peer", &self.peer)
            .field("broken", &self.broken)
            .finish()
    }
}

/// A decoded message: its header, where its body lies in the message, its descriptors.
struct Decoded {
    header: Header,
    body_end: usize,
}

impl RdmaLink {
    pub(crate) fn new(conn: RdmaConnection, timeout: Duration) -> RdmaLink {
        RdmaLink::with_regions(conn, timeout, Vec::new())
    }

    /// A link that may move bulk in `regions` (registered in the connection's domain)
    /// without staging.
    pub(crate) fn with_regions(
        conn: RdmaConnection,
        timeout: Duration,
        regions: Vec<Arc<Region>>,
    ) -> RdmaLink {
        let peer = conn.peer_addr();
        RdmaLink {
            conn,
            peer,
            timeout,
            send_buf: Vec::with_capacity(MAX_MESSAGE_BYTES),
            recv_buf: vec![0u8; MAX_MESSAGE_BYTES].into_boxed_slice(),
            recv_len: 0,
            pieces: Vec::with_capacity(MAX_REMOTE_BUFS_PER_MESSAGE),
            descs: Vec::with_capacity(MAX_REMOTE_BUFS_PER_MESSAGE),
            staging: Vec::new(),
            remote: Vec::with_capacity(MAX_REMOTE_BUFS_PER_MESSAGE),
            regions,
            staged_bytes: 0,
            broken: false,
        }
    }

    /// Registers caller memory for bulk without staging.
    ///
    /// # Safety
    /// As [`RdmaConnection::register_raw`]: valid until the link is dropped.
    pub(crate) unsafe fn register_memory(
        &mut self,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), TransportError> {
        // SAFETY: the caller upholds register_raw's contract for the link's life, and the
        // link drops its regions before it is gone.
        let region = unsafe { self.conn.register_raw(ptr, len) }.map_err(TransportError::Rdma)?;
        self.regions.push(Arc::new(Region::own(region)));
        Ok(())
    }

    /// Drops the registration of `[ptr, ptr + len)` made by
    /// [`RdmaLink::register_memory`] (deregistering it from the device); nothing when there
    /// is none.
    pub(crate) fn unregister_memory(&mut self, ptr: *mut u8, len: usize) {
        let start = ptr as u64;
        self.regions.retain(|r| {
            !(r.region().remote().addr == start && r.region().remote().len as usize == len)
        });
    }

    /// Whether any memory is registered with the link.
    pub(crate) fn has_regions(&self) -> bool {
        !self.regions.is_empty()
    }

    pub(crate) fn staged_bytes(&self) -> u64 {
        self.staged_bytes
    }

    /// Fills `pieces` with the registered pieces covering `slices` in order; false (and
    /// `pieces` meaningless) unless every slice lies in one registered region and there
    /// are few enough to describe in one message.
    fn registered_pieces(
        &self,
        slices: impl Iterator<Item = (usize, usize)>,
        pieces: &mut Vec<LocalPiece>,
    ) -> bool {
        pieces.clear();
        for (addr, len) in slices {
            if len == 0 {
                continue;
            }
            let Some(index) = self
                .regions
                .iter()
                .position(|r| r.region().contains(addr, len))
            else {
                return false;
            };
            if pieces.len() == MAX_REMOTE_BUFS_PER_MESSAGE {
                return false;
            }
            let start = self.regions[index].region().remote().addr as usize;
            pieces.push((index, addr - start, len));
        }
        true
    }

    /// Fills `descs` with the peer's view of `pieces`.
    fn describe(&self, pieces: &[LocalPiece], descs: &mut Vec<RemoteBuf>) {
        descs.clear();
        descs.extend(pieces.iter().filter_map(|&(index, offset, len)| {
            self.regions[index]
                .region()
                .remote()
                .slice(offset as u32, len as u32)
        }));
    }

    /// A call whose bulk lies in registered memory: its descriptors go to the peer, no
    /// byte is staged. `None` when some of the bulk is not registered.
    fn call_registered(
        &mut self,
        request: Header,
        body: &[u8],
        bulk: impl Iterator<Item = (usize, usize)>,
        out_len: u64,
        room: u64,
        reply_body: &mut Vec<u8>,
    ) -> Option<Result<(u64, i32), TransportError>> {
        let mut pieces = std::mem::take(&mut self.pieces);
        let mut descs = std::mem::take(&mut self.descs);
        let result = if self.registered_pieces(bulk, &mut pieces) {
            self.describe(&pieces, &mut descs);
            Some(self.call_described(request, body, out_len, room, &descs, reply_body))
        } else {
            None
        };
        self.pieces = pieces;
        self.descs = descs;
        result
    }

    /// Moves the current request's bulk straight between registered `slices` and the
    /// peer's descriptors (READ into them when `pull`, WRITE from them otherwise). `None`
    /// when some slice is not in registered memory.
    fn transfer_registered(
        &mut self,
        slices: impl Iterator<Item = (usize, usize)>,
        pull: bool,
    ) -> Option<Result<(), TransportError>> {
        let mut pieces = std::mem::take(&mut self.pieces);
        let result = if self.registered_pieces(slices, &mut pieces) {
            let remote = std::mem::take(&mut self.remote);
            let moved = self.transfer(&pieces, &remote, pull);
            self.remote = remote;
            Some(moved)
        } else {
            None
        };
        self.pieces = pieces;
        result
    }

    /// Moves bytes between local registered pieces and the peer's descriptors, both walked
    /// in order: RDMA READ into the pieces (`pull`) or RDMA WRITE from them.
    fn transfer(
        &mut self,
        pieces: &[LocalPiece],
        remote: &[RemoteBuf],
        pull: bool,
    ) -> Result<(), TransportError> {
        // One-sided operations split long transfers themselves.
        pair_up(pieces, remote, usize::MAX, |index, offset, dest| {
            let region = self.regions[index].region();
            let done = if pull {
                // SAFETY: registered memory is reached only through raw addresses (the
                // caller's slices, which it lent to this call), never through the region.
                unsafe { self.conn.read_shared(region, offset, dest, self.timeout) }
            } else {
                self.conn.write(region, offset, dest, self.timeout)
            };
            done.map_err(|e| self.fail(e))
        })
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn check(&self) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Broken { peer: self.peer });
        }
        Ok(())
    }

    /// Marks the link broken unless the error leaves it usable (a receive that timed out).
    fn fail(&mut self, e: RdmaError) -> TransportError {
        if !matches!(e, RdmaError::Timeout { .. }) {
            self.broken = true;
        }
        match e {
            RdmaError::Timeout { op, .. } => TransportError::TimedOut {
                op: transport_op(op),
                peer: self.peer,
                timeout_ms: self.timeout.as_millis() as u64,
            },
            RdmaError::Disconnected { op, .. } => TransportError::PeerClosed {
                op: transport_op(op),
                peer: self.peer,
            },
            other => TransportError::Rdma(other),
        }
    }

    fn protocol(&mut self, source: WireError) -> TransportError {
        self.broken = true;
        TransportError::Protocol {
            peer: self.peer,
            source,
        }
    }

    /// Sends header, body and descriptors as one message.
    fn send_message(
        &mut self,
        header: Header,
        body: &[u8],
        remote: &[RemoteBuf],
    ) -> Result<(), TransportError> {
        encode_message(header, body, remote, &mut self.send_buf);
        let sent = self.conn.send(&self.send_buf, self.timeout);
        sent.map_err(|e| self.fail(e))
    }

    /// Receives one message and checks it; fills `self.remote` with its descriptors.
    /// `Ok(None)` when the receive timed out with nothing arriving.
    fn recv_message(&mut self) -> Result<Option<Decoded>, TransportError> {
        let got = self.conn.recv(&mut self.recv_buf, self.timeout);
        let n = match got {
            Ok(n) => n,
            Err(RdmaError::Timeout { .. }) => return Ok(None),
            Err(e) => return Err(self.fail(e)),
        };
        self.recv_len = n;
        let message = &self.recv_buf[..n];
        let header = match Header::decode(message) {
            Ok(h) => h,
            Err(e @ WireError::UnknownOpcode { .. }) => {
                return Err(TransportError::Protocol {
                    peer: self.peer,
                    source: e,
                });
            }
            Err(e) => return Err(self.protocol(e)),
        };
        let body_end = HEADER_BYTES + header.body_len as usize;
        if n < body_end {
            return Err(self.protocol(WireError::Truncated {
                what: "body",
                needed: header.body_len as usize,
                got: n - HEADER_BYTES,
            }));
        }
        if let Err(e) = header.check_body(&message[HEADER_BYTES..body_end]) {
            return Err(self.protocol(e));
        }
        self.remote.clear();
        let rest = &self.recv_buf[body_end..n];
        if header.flags & FLAG_REMOTE_BULK != 0 {
            let count = rest
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(usize::MAX);
            let descriptors = rest.len().saturating_sub(4);
            if count == 0
                || count > MAX_REMOTE_BUFS_PER_MESSAGE
                || descriptors != count * RemoteBuf::ENCODED_BYTES
            {
                return Err(self.protocol(WireError::Truncated {
                    what: "remote bulk descriptors",
                    needed: count.saturating_mul(RemoteBuf::ENCODED_BYTES),
                    got: descriptors,
                }));
            }
            for chunk in rest[4..].chunks_exact(RemoteBuf::ENCODED_BYTES) {
                let mut b = [0u8; RemoteBuf::ENCODED_BYTES];
                b.copy_from_slice(chunk);
                self.remote.push(RemoteBuf::from_le_bytes(b));
            }
        } else if !rest.is_empty() {
            return Err(self.protocol(WireError::Truncated {
                what: "message end",
                needed: 0,
                got: rest.len(),
            }));
        }
        Ok(Some(Decoded { header, body_end }))
    }

    fn grow_staging(&mut self, len: u64) -> Result<(), TransportError> {
        if len > MAX_PAYLOAD_BYTES {
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "a payload of {len} bytes exceeds the limit of {MAX_PAYLOAD_BYTES}"
                ),
            });
        }
        if (self.staging.len() as u64) < len {
            self.staging.resize(len as usize, 0);
        }
        Ok(())
    }

    /// A client's whole call: request (with its payload, staged), then reply (its payload
    /// unstaged into `dests`).
    pub(crate) fn call(
        &mut self,
        request: Header,
        body: &[u8],
        payload: &[IoSlice<'_>],
        reply_body: &mut Vec<u8>,
        dests: &mut [IoSliceMut<'_>],
    ) -> Result<(u64, i32), TransportError> {
        self.check()?;
        let out_len: u64 = payload.iter().map(|s| s.len() as u64).sum();
        let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
        if out_len > 0 && room > 0 {
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: "a call carries bulk one way only".into(),
            });
        }
        if out_len > 0
            && let Some(done) = self.call_registered(
                request,
                body,
                payload.iter().map(|s| (s.as_ptr() as usize, s.len())),
                out_len,
                0,
                reply_body,
            )
        {
            return done;
        }
        if room > 0
            && let Some(done) = self.call_registered(
                request,
                body,
                dests.iter().map(|d| (d.as_ptr() as usize, d.len())),
                0,
                room,
                reply_body,
            )
        {
            return done;
        }
        let bulk_len = out_len.max(room);
        self.grow_staging(bulk_len)?;
        let mut staging = std::mem::take(&mut self.staging);
        let result = self.call_staged(
            request,
            body,
            payload,
            out_len,
            room,
            &mut staging,
            reply_body,
        );
        self.staging = staging;
        let (payload_len, status) = result?;
        self.staged_bytes += out_len + payload_len;
        // Unstage the reply's payload into the caller's buffers.
        let mut at = 0usize;
        for d in dests.iter_mut() {
            if at as u64 >= payload_len {
                break;
            }
            let n = d.len().min(payload_len as usize - at);
            d[..n].copy_from_slice(&self.staging[at..at + n]);
            at += n;
        }
        Ok((payload_len, status))
    }

    #[allow(clippy::too_many_arguments)]
    fn call_staged(
        &mut self,
        request: Header,
        body: &[u8],
        payload: &[IoSlice<'_>],
        out_len: u64,
        room: u64,
        staging: &mut [u8],
        reply_body: &mut Vec<u8>,
    ) -> Result<(u64, i32), TransportError> {
        let bulk_len = out_len.max(room) as usize;
        let mut at = 0;
        for s in payload {
            staging[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
        // The region lives until the reply is in: the server reads or writes it until then.
        let region = if bulk_len > 0 {
            Some(
                self.conn
                    .register(&mut staging[..bulk_len])
                    .map_err(|e| self.fail(e))?,
            )
        } else {
            None
        };
        let remote: &[RemoteBuf] = match &region {
            Some(r) => &[r.remote()],
            None => &[],
        };
        let result = self.call_described(request, body, out_len, room, remote, reply_body);
        drop(region);
        result
    }

    /// Sends the request with descriptors of memory the peer may use until the reply
    /// arrives, and takes the reply.
    fn call_described(
        &mut self,
        mut request: Header,
        body: &[u8],
        out_len: u64,
        room: u64,
        remote: &[RemoteBuf],
        reply_body: &mut Vec<u8>,
    ) -> Result<(u64, i32), TransportError> {
        request.payload_len = out_len;
        let request_id = request.request_id;
        self.send_message(request, body, remote)?;
        let Some(decoded) = self.recv_message()? else {
            // The reply is still owed: this connection cannot carry another call.
            self.broken = true;
            return Err(TransportError::TimedOut {
                op: crate::error::TransportOp::Recv,
                peer: self.peer,
                timeout_ms: self.timeout.as_millis() as u64,
            });
        };
        let h = decoded.header;
        if !h.is_response() || h.request_id != request_id || h.payload_len > room {
            self.broken = true;
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "expected the reply to request {request_id} with at most {room} payload bytes, got {} for request {} with {}",
                    if h.is_response() {
                        "a reply"
                    } else {
                        "a request"
                    },
                    h.request_id,
                    h.payload_len
                ),
            });
        }
        reply_body.clear();
        reply_body.extend_from_slice(&self.recv_buf[HEADER_BYTES..decoded.body_end]);
        Ok((h.payload_len, h.status))
    }

    /// Server: the next request, its body copied to `body`. `Ok(None)` on a receive timeout.
    pub(crate) fn next_request(
        &mut self,
        body: &mut Vec<u8>,
    ) -> Result<Option<Header>, TransportError> {
        self.check()?;
        let decoded = loop {
            match self.recv_message() {
                Ok(Some(decoded)) => break decoded,
                Ok(None) => return Ok(None),
                // Answered here and skipped (the message was all of it), as every TCP
                // connection does.
                Err(TransportError::Protocol {
                    source:
                        WireError::UnknownOpcode {
                            opcode, request_id, ..
                        },
                    ..
                }) => {
                    crate::stream::log_unknown_opcode(self.peer, opcode);
                    let status = crate::stream::UNKNOWN_OPCODE_STATUS;
                    self.reply_error(request_id, status)?;
                }
                Err(e) => return Err(e),
            }
        };
        let h = decoded.header;
        if h.is_response() {
            self.broken = true;
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "a reply to request {} arrived where requests are expected",
                    h.request_id
                ),
            });
        }
        let described: u64 = self.remote.iter().map(|r| u64::from(r.len)).sum();
        if h.payload_len > 0 && described != h.payload_len {
            return Err(self.protocol(WireError::PayloadMismatch {
                payload_len: h.payload_len,
                extents_total: described,
            }));
        }
        body.clear();
        body.extend_from_slice(&self.recv_buf[HEADER_BYTES..decoded.body_end]);
        Ok(Some(h))
    }

    /// Server: pulls the current request's payload (RDMA READ) and copies it into `dests`.
    pub(crate) fn recv_payload(
        &mut self,
        dests: &mut [IoSliceMut<'_>],
        len: u64,
    ) -> Result<(), TransportError> {
        self.check()?;
        if len == 0 {
            // A request without payload may still carry descriptors: room for the reply.
            return Ok(());
        }
        if let Some(pulled) =
            self.transfer_registered(dests.iter().map(|d| (d.as_ptr() as usize, d.len())), true)
        {
            return pulled;
        }
        self.staged_bytes += len;
        self.grow_staging(len)?;
        let mut staging = std::mem::take(&mut self.staging);
        let remote = std::mem::take(&mut self.remote);
        let pulled = self.pull(&mut staging[..len as usize], &remote);
        self.remote = remote;
        self.staging = staging;
        pulled?;
        let mut at = 0usize;
        for d in dests.iter_mut() {
            let n = d.len();
            d.copy_from_slice(&self.staging[at..at + n]);
            at += n;
        }
        Ok(())
    }

    fn pull(&mut self, staging: &mut [u8], remote: &[RemoteBuf]) -> Result<(), TransportError> {
        let mut region = self.conn.register(staging).map_err(|e| self.fail(e))?;
        let mut at = 0usize;
        for r in remote {
            self.conn
                .read(&mut region, at, *r, self.timeout)
                .map_err(|e| self.fail(e))?;
            at += r.len as usize;
        }
        Ok(())
    }

    /// Server: checks that a reply payload of `len` bytes fits the memory `request`
    /// described for it.
    fn check_reply_room(&self, request: &Header, len: u64) -> Result<(), TransportError> {
        let room: u64 = if request.payload_len == 0 {
            self.remote.iter().map(|r| u64::from(r.len)).sum()
        } else {
            0
        };
        if len > room {
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "a reply payload of {len} bytes exceeds the {room} bytes the request gave for it"
                ),
            });
        }
        Ok(())
    }

    /// Server: pushes `payload` into the memory the request described (RDMA WRITE), then
    /// sends the reply message.
    pub(crate) fn reply(
        &mut self,
        request: &Header,
        status: i32,
        body: &[u8],
        payload: &[IoSlice<'_>],
    ) -> Result<(), TransportError> {
        self.check()?;
        let len: u64 = payload.iter().map(|s| s.len() as u64).sum();
        if len > 0 {
            self.check_reply_room(request, len)?;
            let registered = self.transfer_registered(
                payload.iter().map(|s| (s.as_ptr() as usize, s.len())),
                false,
            );
            match registered {
                Some(pushed) => pushed?,
                None => {
                    self.staged_bytes += len;
                    self.grow_staging(len)?;
                    let mut staging = std::mem::take(&mut self.staging);
                    let remote = std::mem::take(&mut self.remote);
                    let pushed = self.push(&mut staging[..len as usize], payload, &remote);
                    self.remote = remote;
                    self.staging = staging;
                    pushed?;
                }
            }
        }
        let header = Header::response(request, status, body, len);
        self.send_message(header, body, &[])
    }

    fn push(
        &mut self,
        staging: &mut [u8],
        payload: &[IoSlice<'_>],
        remote: &[RemoteBuf],
    ) -> Result<(), TransportError> {
        let mut at = 0;
        for s in payload {
            staging[at..at + s.len()].copy_from_slice(s);
            at += s.len();
        }
        let region = self.conn.register(staging).map_err(|e| self.fail(e))?;
        let mut done = 0u64;
        let total = region.len() as u64;
        for r in remote {
            if done >= total {
                break;
            }
            let n = (total - done).min(u64::from(r.len)) as u32;
            let Some(dest) = r.slice(0, n) else {
                unreachable!("n <= r.len");
            };
            self.conn
                .write(&region, done as usize, dest, self.timeout)
                .map_err(|e| self.fail(e))?;
            done += u64::from(n);
        }
        Ok(())
    }

    /// Server: answers a request whose opcode it does not know.
    pub(crate) fn reply_error(
        &mut self,
        request_id: u64,
        status: i32,
    ) -> Result<(), TransportError> {
        self.send_message(Header::error_reply(request_id, status), &[], &[])
    }
}

/// Walks local `pieces` and the peer's `remote` descriptors together, in order, calling
/// `f(region index, offset in the region, remote part)` for each stretch where they overlap,
/// cut to at most `max` bytes; stops at the first error.
fn pair_up<E>(
    pieces: &[LocalPiece],
    remote: &[RemoteBuf],
    max: usize,
    mut f: impl FnMut(usize, usize, RemoteBuf) -> Result<(), E>,
) -> Result<(), E> {
    let (mut li, mut loff, mut ri, mut roff) = (0usize, 0usize, 0usize, 0u32);
    while li < pieces.len() && ri < remote.len() {
        let (index, base, len) = pieces[li];
        let r = remote[ri];
        let n = (len - loff).min((r.len - roff) as usize).min(max);
        let Some(dest) = r.slice(roff, n as u32) else {
            unreachable!("n fits the remote descriptor");
        };
        f(index, base + loff, dest)?;
        loff += n;
        roff += n as u32;
        if loff == len {
            (li, loff) = (li + 1, 0);
        }
        if roff == r.len {
            (ri, roff) = (ri + 1, 0);
        }
    }
    Ok(())
}

/// Encodes header, body and descriptors as one message into `out`.
fn encode_message(mut header: Header, body: &[u8], remote: &[RemoteBuf], out: &mut Vec<u8>) {
    assert!(
        remote.len() <= MAX_REMOTE_BUFS_PER_MESSAGE,
        "{} descriptors",
        remote.len()
    );
    if !remote.is_empty() {
        header.flags |= FLAG_REMOTE_BULK;
    }
    out.clear();
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
    if !remote.is_empty() {
        out.extend_from_slice(&(remote.len() as u32).to_le_bytes());
        for r in remote {
            out.extend_from_slice(&r.to_le_bytes());
        }
    }
}

fn transport_op(op: crate::rdma::Op) -> crate::error::TransportOp {
    use crate::error::TransportOp;
    use crate::rdma::Op;
    match op {
        Op::Recv | Op::Read => TransportOp::Recv,
        Op::Send | Op::Write | Op::Register => TransportOp::Send,
        Op::Bind | Op::Accept => TransportOp::Listen,
        Op::Devices | Op::Resolve | Op::Connect => TransportOp::Connect,
    }
}
