//! TCP: one stream per connection, messages framed by [`crate::wire`], bulk payloads sent
//! from the caller's memory with vectored writes and received with vectored reads straight
//! into the caller's destination buffers: no copy in user space on either side.
//!
//! Sockets are blocking with a per-call timeout (SO_RCVTIMEO/SO_SNDTIMEO): a wait ends when
//! the peer makes no progress for that long. Any error mid-message leaves the stream at an
//! unknown position, so the connection is marked broken and refuses further use
//! (docs/decisions/0003-tcp-blocking-sockets.md says why blocking sockets).

use std::io::{IoSlice, IoSliceMut, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use crate::buffer::InputBuffer;
use crate::error::{TransportError, TransportOp};
use crate::framer::{Decoder, Event, Expect};
use crate::limits::{MAX_SEND_CALL_BYTES, SOCKET_BUFFER_BYTES};
use crate::stream::{SLICES_PER_CALL, UNKNOWN_OPCODE_STATUS, log_unknown_opcode};
use crate::wire::{Header, WireError};

/// With SEND_ZC enabled, messages of at least this many payload bytes go out zero-copy;
/// smaller ones cost more in notifications than the copy they save.
pub(crate) const SEND_ZC_MIN_PAYLOAD_BYTES: u64 = 64 * 1024;
/// Submission entries of a connection's SEND_ZC ring (one send and its notification).
const SEND_ZC_RING_ENTRIES: u32 = 4;

/// One TCP connection carrying framed messages.
#[derive(Debug)]
pub(crate) struct TcpConnection {
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    broken: bool,
    zc: Option<Box<ZeroCopySender>>,
    /// Bytes read with a header and not yet taken (a header is read with whatever follows
    /// it, so a small reply's body and payload come in the same system call).
    buffer: InputBuffer,
    /// What the bytes read make (every byte read goes through it, or is counted by it).
    /// (Boxed: it keeps a header's bytes, and a connection travels in results.)
    decoder: Box<Decoder>,
}

/// Sends through io_uring's SENDMSG_ZC: the kernel sends from the caller's pages and posts
/// a notification when it no longer needs them.
struct ZeroCopySender {
    ring: io_uring::IoUring,
}

impl std::fmt::Debug for ZeroCopySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZeroCopySender")
    }
}

impl ZeroCopySender {
    /// Sends all of `slices` on `fd`; returns once every byte went out and the kernel has
    /// released the pages (so the caller may reuse them). Each wait is bounded by `timeout`.
    fn send_all(
        &mut self,
        fd: i32,
        mut slices: &mut [IoSlice<'_>],
        timeout: Duration,
    ) -> std::io::Result<()> {
        while !slices.is_empty() {
            let mut msg: libc::msghdr = {
                // SAFETY: msghdr is plain data for which all-zero is a valid (empty) value.
                unsafe { std::mem::zeroed() }
            };
            // IoSlice is guaranteed ABI-compatible with iovec on Unix.
            msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = slices.len();
            let entry = io_uring::opcode::SendMsgZc::new(io_uring::types::Fd(fd), &msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(1);
            // SAFETY: `msg` and the slices it names stay alive and unmodified until both the
            // send's completion and its notification have been reaped below (or the socket
            // is shut down, which releases the pages, before this function returns).
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| std::io::Error::other("SEND_ZC ring is full"))?;
            let (sent, mut notified_pending) = self.wait_send(timeout)?;
            while notified_pending {
                notified_pending = self.wait_notification(timeout)?;
            }
            let sent = sent?;
            if sent == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, sent);
        }
        Ok(())
    }

    fn next_cqe(&mut self, timeout: Duration) -> std::io::Result<(i32, u32)> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(cqe) = self.ring.completion().next() {
                return Ok((cqe.result(), cqe.flags()));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            let ts = io_uring::types::Timespec::new()
                .sec(left.as_secs())
                .nsec(left.subsec_nanos());
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The send's result (bytes or error) and whether a notification is still to come.
    fn wait_send(&mut self, timeout: Duration) -> std::io::Result<(std::io::Result<usize>, bool)> {
        let (res, flags) = self.next_cqe(timeout)?;
        let more = io_uring::cqueue::more(flags);
        let sent = if res < 0 {
            Err(std::io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as usize)
        };
        Ok((sent, more))
    }

    /// Waits for the notification; true if the next CQE is still to be a notification.
    fn wait_notification(&mut self, timeout: Duration) -> std::io::Result<bool> {
        let (_, flags) = self.next_cqe(timeout)?;
        Ok(!io_uring::cqueue::notif(flags))
    }
}

impl TcpConnection {
    /// Connects to `peer`, waiting at most `timeout`, with every later wait bounded by it too.
    pub(crate) fn connect(
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpConnection, TransportError> {
        let stream = TcpStream::connect_timeout(&peer, timeout).map_err(|source| {
            if source.kind() == std::io::ErrorKind::TimedOut {
                TransportError::TimedOut {
                    op: TransportOp::Connect,
                    peer,
                    timeout_ms: timeout.as_millis() as u64,
                }
            } else {
                TransportError::Io {
                    op: TransportOp::Connect,
                    peer,
                    source,
                }
            }
        })?;
        TcpConnection::from_stream(stream, peer, timeout, Expect::Replies)
    }

    /// Wraps a connected stream that carries `expect`.
    fn from_stream(
        stream: TcpStream,
        peer: SocketAddr,
        timeout: Duration,
        expect: Expect,
    ) -> Result<TcpConnection, TransportError> {
        let io = |source| TransportError::Io {
            op: TransportOp::Connect,
            peer,
            source,
        };
        stream.set_nodelay(true).map_err(io)?;
        rustix::net::sockopt::set_socket_send_buffer_size(&stream, SOCKET_BUFFER_BYTES)
            .map_err(|e| io(e.into()))?;
        rustix::net::sockopt::set_socket_recv_buffer_size(&stream, SOCKET_BUFFER_BYTES)
            .map_err(|e| io(e.into()))?;
        let mut conn = TcpConnection {
            stream,
            peer,
            timeout,
            broken: false,
            zc: None,
            buffer: InputBuffer::new(),
            decoder: Box::new(Decoder::new(expect)),
        };
        conn.set_timeout(timeout)?;
        Ok(conn)
    }

    /// Sends payloads of at least [`SEND_ZC_MIN_PAYLOAD_BYTES`] with SEND_ZC from now on.
    /// Whether it pays depends on the path: on loopback the kernel copies anyway
    /// (docs/BENCHMARKS.md has the measurement), on a real NIC it saves the send copy.
    pub(crate) fn enable_send_zc(&mut self) -> Result<(), TransportError> {
        if self.zc.is_none() {
            let ring = io_uring::IoUring::new(SEND_ZC_RING_ENTRIES).map_err(|source| {
                TransportError::Io {
                    op: TransportOp::Send,
                    peer: self.peer,
                    source,
                }
            })?;
            self.zc = Some(Box::new(ZeroCopySender { ring }));
        }
        Ok(())
    }

    /// The peer's address.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether an earlier error broke the connection.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether an idle connection is still open: nothing may be waiting on it between
    /// calls, so a readable socket means the peer closed it (or broke the protocol).
    pub(crate) fn idle_is_open(&self) -> bool {
        if self.broken || self.has_buffered() {
            return false;
        }
        let mut byte = [0u8; 1];
        // MSG_PEEK | MSG_DONTWAIT neither consumes nor blocks.
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(
            rustix::net::recv(&self.stream, &mut byte, flags),
            Err(rustix::io::Errno::AGAIN)
        )
    }

    /// Sets how long any one send or receive may go without progress.
    pub(crate) fn set_timeout(&mut self, timeout: Duration) -> Result<(), TransportError> {
        let timeout = timeout.max(Duration::from_millis(1));
        let io = |source| TransportError::Io {
            op: TransportOp::Connect,
            peer: self.peer,
            source,
        };
        self.stream.set_read_timeout(Some(timeout)).map_err(io)?;
        self.stream.set_write_timeout(Some(timeout)).map_err(io)?;
        self.timeout = timeout;
        Ok(())
    }

    fn check(&self) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Broken { peer: self.peer });
        }
        Ok(())
    }

    fn fail(&mut self, op: TransportOp, source: std::io::Error) -> TransportError {
        self.broken = true;
        match source.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                TransportError::TimedOut {
                    op,
                    peer: self.peer,
                    timeout_ms: self.timeout.as_millis() as u64,
                }
            }
            _ => TransportError::from_socket(op, self.peer, source),
        }
    }

    /// Sends a message: the header, its body, then the payload slices, whose lengths must
    /// add up to the header's payload length.
    pub(crate) fn send(
        &mut self,
        header: &Header,
        body: &[u8],
        payload: &[IoSlice<'_>],
    ) -> Result<(), TransportError> {
        self.check()?;
        let payload_total: u64 = payload.iter().map(|s| s.len() as u64).sum();
        assert_eq!(
            payload_total, header.payload_len,
            "payload slices disagree with the header"
        );
        assert_eq!(
            body.len(),
            header.body_len as usize,
            "body disagrees with the header"
        );
        let head = header.encode();
        // The first call carries the header, the body and the first payload slices together.
        let mut slices: [IoSlice<'_>; SLICES_PER_CALL] = [IoSlice::new(&[]); SLICES_PER_CALL];
        slices[0] = IoSlice::new(&head);
        slices[1] = IoSlice::new(body);
        let first = payload.len().min(SLICES_PER_CALL - 2);
        slices[2..2 + first].copy_from_slice(&payload[..first]);
        if header.payload_len >= SEND_ZC_MIN_PAYLOAD_BYTES && payload.len() <= SLICES_PER_CALL - 2 {
            let fd = self.stream.as_raw_fd();
            let timeout = self.timeout;
            if let Some(zc) = self.zc.as_mut() {
                let sent = zc.send_all(fd, &mut slices[..2 + first], timeout);
                if let Err(e) = sent {
                    // Shutting the socket down makes the kernel drop the pages it holds.
                    let _ = self.stream.shutdown(std::net::Shutdown::Both);
                    return Err(self.fail(TransportOp::Send, e));
                }
                return Ok(());
            }
        }
        let result = write_all_vectored(&mut self.stream, &mut slices[..2 + first]);
        if let Err(e) = result {
            return Err(self.fail(TransportOp::Send, e));
        }
        for group in payload[first..].chunks(SLICES_PER_CALL) {
            slices[..group.len()].copy_from_slice(group);
            if let Err(e) = write_all_vectored(&mut self.stream, &mut slices[..group.len()]) {
                return Err(self.fail(TransportOp::Send, e));
            }
        }
        Ok(())
    }

    /// Receives a header and its body (into `body`, resized to the announced length, which
    /// the header bounds by [`MAX_BODY_BYTES`](crate::limits::MAX_BODY_BYTES)). `Ok(None)`
    /// when the peer closed the connection cleanly between messages. The last message's
    /// payload, if it was not taken, is dropped first. On a server's connection a request
    /// with an opcode this build does not know is answered here (EOPNOTSUPP) and skipped,
    /// as the event loops' connections do. A malformed message breaks the connection.
    pub(crate) fn recv_header(
        &mut self,
        body: &mut Vec<u8>,
    ) -> Result<Option<Header>, TransportError> {
        self.check()?;
        self.decoder.skip_payload();
        loop {
            if self.buffer.len() > 0 {
                let fed = self.decoder.feed(self.buffer.data());
                let (used, event) = fed.map_err(|e| self.refuse(e))?;
                self.buffer.consume(used);
                match event {
                    None => continue,
                    Some(Event::Message(header)) => {
                        self.decoder.swap_body(body);
                        return Ok(Some(header));
                    }
                    Some(Event::Unknown { request_id, opcode }) => {
                        log_unknown_opcode(self.peer, opcode);
                        let reply = Header::error_reply(request_id, UNKNOWN_OPCODE_STATUS);
                        self.send(&reply, &[], &[])?;
                        continue;
                    }
                    Some(Event::Payload) => {
                        self.broken = true;
                        return Err(TransportError::Unexpected {
                            peer: self.peer,
                            reason: "payload bytes between messages".into(),
                        });
                    }
                }
            }
            let at_boundary = self.decoder.at_boundary();
            let room = self.decoder.body_room();
            let got = if !room.is_empty() {
                // The rest of a body, straight into its room.
                let n = self.stream.read(room);
                match n {
                    Ok(0) => Ok(Some(0)),
                    Ok(n) => match self.decoder.body_added(n) {
                        Ok(Some(Event::Message(header))) => {
                            self.decoder.swap_body(body);
                            return Ok(Some(header));
                        }
                        Ok(_) => Ok(Some(n)),
                        Err(e) => return Err(self.refuse(e)),
                    },
                    Err(e) => Err(e),
                }
            } else {
                // A header and what follows it, or bytes to drop: fed from the buffer.
                let stream = &mut self.stream;
                self.buffer.fill(|room| stream.read(room).map(Some))
            };
            match got {
                Ok(Some(0)) if at_boundary => {
                    self.broken = true;
                    return Ok(None);
                }
                Ok(Some(0)) => {
                    let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Err(self.fail(TransportOp::Recv, e));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if at_boundary
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                {
                    // Nothing of a message has arrived: the stream is still at a message
                    // boundary, so the connection stays usable (an idle peer is no error).
                    return Err(TransportError::TimedOut {
                        op: TransportOp::Recv,
                        peer: self.peer,
                        timeout_ms: self.timeout.as_millis() as u64,
                    });
                }
                Err(e) => return Err(self.fail(TransportOp::Recv, e)),
            }
        }
    }

    /// Breaks it for what the decoder refused ([`TransportError::from_wire`]).
    fn refuse(&mut self, source: WireError) -> TransportError {
        self.broken = true;
        if matches!(source, WireError::WrongDirection { .. }) {
            // The peer is told at once: its next receive sees the end of the stream.
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        TransportError::from_wire(self.peer, source)
    }

    /// Receives `len` payload bytes straight into the first `len` bytes of `dests` (which
    /// must hold at least that many; the last one used may be filled only in part).
    pub(crate) fn recv_payload(
        &mut self,
        dests: &mut [IoSliceMut<'_>],
        len: u64,
    ) -> Result<(), TransportError> {
        self.check()?;
        let left = self.decoder.payload_left();
        if len != left {
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!("{len} payload bytes asked for; the message has {left} left"),
            });
        }
        let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
        if room < len {
            // Nothing was read: the caller may still discard the payload.
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "a payload of {len} bytes does not fit destinations of {room} bytes"
                ),
            });
        }
        // What came in with the header first.
        let mut left = len;
        let mut dests = dests;
        while left > 0 && !dests.is_empty() && self.buffer.len() > 0 {
            let room = (dests[0].len() as u64).min(left) as usize;
            let n = self.buffer.take(&mut dests[0][..room]);
            left -= n as u64;
            IoSliceMut::advance_slices(&mut dests, n);
        }
        let mut full = 0;
        while full < dests.len() && dests[full].len() as u64 <= left {
            left -= dests[full].len() as u64;
            full += 1;
        }
        let mut start = 0;
        while start < full {
            let end = (start + SLICES_PER_CALL).min(full);
            if let Err(e) = read_exact_vectored(&mut self.stream, &mut dests[start..end]) {
                return Err(self.fail(TransportOp::Recv, e));
            }
            start = end;
        }
        if left > 0 {
            let last: &mut [u8] = &mut dests[full];
            if let Err(e) = self.stream.read_exact(&mut last[..left as usize]) {
                return Err(self.fail(TransportOp::Recv, e));
            }
        }
        self.decoder.payload_taken(len);
        Ok(())
    }

    /// Reads and drops the rest of the current message's payload, if any is left.
    pub(crate) fn skip_payload(&mut self) -> Result<(), TransportError> {
        self.check()?;
        self.decoder.skip_payload();
        // Through the input buffer, fed never past the payload's end (what follows it stays
        // in the buffer for the next message).
        while self.decoder.discard_left() > 0 {
            if self.buffer.len() == 0 {
                let stream = &mut self.stream;
                match self.buffer.fill(|room| stream.read(room).map(Some)) {
                    Ok(Some(0)) => {
                        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                        return Err(self.fail(TransportOp::Recv, e));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.fail(TransportOp::Recv, e)),
                }
                continue;
            }
            let n = self.decoder.discard_left().min(self.buffer.len() as u64) as usize;
            let fed = self.decoder.feed(&self.buffer.data()[..n]);
            self.buffer.consume(n);
            fed.map_err(|e| self.refuse(e))?;
        }
        Ok(())
    }

    /// Closes both directions; the peer's next receive sees the end of the stream.
    pub(crate) fn shutdown(&mut self) {
        self.broken = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Makes the socket nonblocking (before [`TcpConnection::into_parts`]).
    pub(crate) fn set_nonblocking(&self) -> Result<(), TransportError> {
        self.stream
            .set_nonblocking(true)
            .map_err(|source| TransportError::Io {
                op: TransportOp::Connect,
                peer: self.peer,
                source,
            })
    }

    /// Whether bytes of a message have been read and not yet taken.
    pub(crate) fn has_buffered(&self) -> bool {
        self.buffer.len() > 0 || !self.decoder.at_boundary()
    }

    /// The stream and the peer's address, for a caller that drives the socket itself (an
    /// event loop, through [`crate::stream::StreamConn`]).
    pub(crate) fn into_parts(self) -> (TcpStream, SocketAddr) {
        (self.stream, self.peer)
    }
}

/// One `sendmsg` of the start of `slices` (at most
/// [`MAX_SEND_CALL_BYTES`](crate::limits::MAX_SEND_CALL_BYTES)) with
/// MSG_NOSIGNAL: a peer that has gone makes it fail with EPIPE instead of raising SIGPIPE,
/// which would kill a C program linking libnacre that leaves the signal at its default.
fn send_vectored(stream: &TcpStream, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
    // At most SLICES_PER_CALL views and MAX_SEND_CALL_BYTES in all, as `cap_send` caps the
    // event loops' sends.
    let mut capped = [IoSlice::new(&[]); SLICES_PER_CALL];
    let (mut used, mut left) = (0, MAX_SEND_CALL_BYTES);
    for s in slices.iter().take(SLICES_PER_CALL) {
        let n = s.len().min(left);
        capped[used] = IoSlice::new(&s[..n]);
        used += 1;
        left -= n;
        if left == 0 {
            break;
        }
    }
    let mut no_ancillary = rustix::net::SendAncillaryBuffer::default();
    let sent = rustix::net::sendmsg(
        stream,
        &capped[..used],
        &mut no_ancillary,
        rustix::net::SendFlags::NOSIGNAL,
    )?;
    Ok(sent)
}

fn write_all_vectored(
    stream: &mut TcpStream,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match send_vectored(stream, slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_exact_vectored(
    stream: &mut TcpStream,
    mut dests: &mut [IoSliceMut<'_>],
) -> std::io::Result<()> {
    IoSliceMut::advance_slices(&mut dests, 0);
    while !dests.is_empty() {
        match stream.read_vectored(dests) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => IoSliceMut::advance_slices(&mut dests, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A TCP listening socket.
#[derive(Debug)]
pub(crate) struct TcpAcceptor {
    listener: TcpListener,
    local: SocketAddr,
}

impl TcpAcceptor {
    /// Listens on `addr` (port 0 picks a free port; see [`TcpAcceptor::local_addr`]).
    pub(crate) fn bind(addr: SocketAddr) -> Result<TcpAcceptor, TransportError> {
        let io = |source| TransportError::Io {
            op: TransportOp::Listen,
            peer: addr,
            source,
        };
        let listener = TcpListener::bind(addr).map_err(io)?;
        let local = listener.local_addr().map_err(io)?;
        Ok(TcpAcceptor { listener, local })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits up to `timeout` for a connection; `Ok(None)` when none came.
    pub(crate) fn accept(
        &self,
        timeout: Duration,
        conn_timeout: Duration,
    ) -> Result<Option<TcpConnection>, TransportError> {
        let ready = crate::event::wait_readable(self.listener.as_fd(), timeout).map_err(|e| {
            TransportError::Io {
                op: TransportOp::Listen,
                peer: self.local,
                source: e,
            }
        })?;
        if !ready {
            return Ok(None);
        }
        let (stream, peer) = self
            .listener
            .accept()
            .map_err(|source| TransportError::Io {
                op: TransportOp::Listen,
                peer: self.local,
                source,
            })?;
        TcpConnection::from_stream(stream, peer, conn_timeout, Expect::Requests).map(Some)
    }
}
