//! One nonblocking TCP socket as both pipelined connection kinds drive it (the server's
//! [`crate::stream::StreamConn`] and the client's [`crate::pipe::PipeConn`]): its input
//! buffer and "drained" hint, its queue of messages to write, whether an error broke it, and
//! when bytes last moved. The two kinds differ only in what they read and write (requests
//! and replies); how bytes move is here, once.
//!
//! Reading saves system calls two ways:
//! - a header is read with whatever follows it, up to [`crate::limits::INPUT_BUFFER_BYTES`],
//!   in one call, and the rest of a payload is read with what follows it (the input buffer is
//!   the last slice of the same `readv`). Bytes past what was asked for are taken from that
//!   buffer first (the only copy, of at most a few KiB); everything else lands straight in
//!   its destination;
//! - a read that comes back short means the socket is empty, so the next read waits for the
//!   event loop to say the socket is readable again ([`Socket::readable`]) instead of asking
//!   the kernel only to hear "would block".

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use crate::buffer::InputBuffer;
use crate::error::{TransportError, TransportOp};
use crate::framer::outbox::Outbox;
use crate::framer::{Decoder, Event, Expect};
use crate::limits::MAX_SEND_CALL_BYTES;
use crate::stream::{Progress, SLICES_PER_CALL};
use crate::wire::{Header, WireError};

/// The slices of one vectored call, on the stack.
pub(crate) type IoVecs = [libc::iovec; SLICES_PER_CALL];

/// Slices for one vectored call, all empty.
pub(crate) fn no_iovecs() -> IoVecs {
    [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; SLICES_PER_CALL]
}

/// Shortens the first `used` views of `iov` to [`MAX_SEND_CALL_BYTES`] in all, the most one
/// `sendmsg` is given: how many views are left.
pub(crate) fn cap_send(iov: &mut IoVecs, used: usize) -> usize {
    let mut left = MAX_SEND_CALL_BYTES;
    for (i, v) in iov[..used].iter_mut().enumerate() {
        if v.iov_len >= left {
            v.iov_len = left;
            return i + 1;
        }
        left -= v.iov_len;
    }
    used
}

/// Views of `pieces` (address and length of each, in order) past their first `skip` bytes
/// and at most `limit` bytes long, as many as one call takes, into `iov`: how many views,
/// and how many bytes they span.
pub(crate) fn iovecs_past(
    pieces: impl Iterator<Item = (*mut u8, usize)>,
    mut skip: u64,
    limit: u64,
    iov: &mut IoVecs,
) -> (usize, usize) {
    let mut used = 0;
    let mut left = limit;
    for (ptr, len) in pieces {
        if used == SLICES_PER_CALL || left == 0 {
            break;
        }
        let len = len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(left);
        iov[used] = libc::iovec {
            // SAFETY: skip < len: inside the piece.
            iov_base: unsafe { ptr.add(skip as usize) }.cast(),
            iov_len: n as usize,
        };
        used += 1;
        left -= n;
        skip = 0;
    }
    (used, (limit - left) as usize)
}

/// What reading a socket on gave ([`Socket::next_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// A message's header and body ([`Event::Message`]).
    Message(Header),
    /// A request to answer with an error reply ([`Event::Unknown`]).
    Unknown {
        /// The request.
        request_id: u64,
        /// Its opcode.
        opcode: u16,
    },
    /// Nothing more to read now.
    Pending,
    /// The peer closed the stream between messages.
    Closed,
}

/// A connected nonblocking TCP socket and what reading and writing it keeps.
#[derive(Debug)]
pub(crate) struct Socket {
    stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// Bytes read past what was asked for, not yet taken.
    pub(crate) buffer: InputBuffer,
    /// Messages to write, in order.
    pub(crate) outbox: Outbox,
    /// What the bytes read make: every byte read goes through it (or, for a payload or a
    /// large body read straight into its memory, is counted by it). Boxed: a connection
    /// travels in channel messages, which stay small.
    pub(crate) decoder: Box<Decoder>,
    /// The socket was empty at the last read; only a readiness event can change that.
    drained: bool,
    broken: bool,
    last_progress: Instant,
}

impl Socket {
    /// Takes over a connected stream (made nonblocking here) that carries `expect`.
    pub(crate) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        expect: Expect,
    ) -> Result<Socket, TransportError> {
        stream
            .set_nonblocking(true)
            .map_err(|source| TransportError::Io {
                op: TransportOp::Connect,
                peer,
                source,
            })?;
        Ok(Socket::from_nonblocking(stream, peer, expect))
    }

    /// Wraps a stream already made nonblocking.
    pub(crate) fn from_nonblocking(stream: TcpStream, peer: SocketAddr, expect: Expect) -> Socket {
        Socket {
            stream,
            peer,
            buffer: InputBuffer::new(),
            outbox: Outbox::default(),
            decoder: Box::new(Decoder::new(expect)),
            drained: false,
            broken: false,
            last_progress: Instant::now(),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The socket, borrowed (to watch it for readiness).
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub(crate) fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Starts the progress clock anew (a connection that was idle has work again).
    pub(crate) fn restart_clock(&mut self) {
        self.last_progress = Instant::now();
    }

    /// The event loop saw the socket become readable: the next read asks the kernel again.
    pub(crate) fn readable(&mut self) {
        self.drained = false;
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks it broken: every further call fails with [`TransportError::Broken`].
    pub(crate) fn set_broken(&mut self) {
        self.broken = true;
    }

    /// `Err(Broken)` once an error broke it.
    pub(crate) fn check(&self) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Broken { peer: self.peer });
        }
        Ok(())
    }

    /// Breaks it with a socket error.
    pub(crate) fn fail(&mut self, op: TransportOp, source: std::io::Error) -> TransportError {
        self.broken = true;
        TransportError::from_socket(op, self.peer, source)
    }

    /// Breaks it: the peer closed the stream partway through a message (or while replies
    /// were owed).
    pub(crate) fn eof(&mut self) -> TransportError {
        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        self.fail(TransportOp::Recv, e)
    }

    /// Breaks it: the peer sent something well formed that has no place here.
    pub(crate) fn unexpected(&mut self, reason: String) -> TransportError {
        self.broken = true;
        TransportError::Unexpected {
            peer: self.peer,
            reason,
        }
    }

    /// Reads on until the decoder gives an event (a whole header and body, or an unknown
    /// request to answer), the socket is empty now, or the peer closed the stream between
    /// messages. Not for a payload: while one is left, its bytes are taken with
    /// [`Socket::read_payload`] or dropped with [`Decoder::skip_payload`] first. A malformed
    /// message breaks it.
    pub(crate) fn next_event(&mut self) -> Result<Reading, TransportError> {
        if self.decoder.payload_left() > 0 {
            return Err(self.unexpected("a message was read before its payload was taken".into()));
        }
        loop {
            if self.buffer.len() > 0 {
                let (used, event) = match self.decoder.feed(self.buffer.data()) {
                    Ok(fed) => fed,
                    Err(e) => return Err(self.refuse(e)),
                };
                self.buffer.consume(used);
                match event {
                    None => continue,
                    Some(event) => return self.reading(event),
                }
            }
            // The buffer is empty: the rest of a body is read straight into its room, the
            // rest (a header and what follows it, bytes to drop) into the buffer.
            let Socket {
                stream,
                decoder,
                drained,
                last_progress,
                ..
            } = self;
            let room = decoder.body_room();
            if !room.is_empty() {
                let got = read_once(stream, drained, last_progress, room);
                let n = match got {
                    Ok(None) => return Ok(Reading::Pending),
                    Ok(Some(0)) => return Err(self.eof()),
                    Ok(Some(n)) => n,
                    Err(e) => return Err(self.fail(TransportOp::Recv, e)),
                };
                match self.decoder.body_added(n) {
                    Ok(Some(event)) => return self.reading(event),
                    Ok(None) => continue,
                    Err(e) => return Err(self.refuse(e)),
                }
            }
            match self.fill_buffer()? {
                None => return Ok(Reading::Pending),
                Some(0) if self.decoder.at_boundary() => {
                    self.set_broken();
                    return Ok(Reading::Closed);
                }
                Some(0) => return Err(self.eof()),
                Some(_) => {}
            }
        }
    }

    /// An event of the decoder as what reading gave. Payload bytes are never fed (none is
    /// left when reading on), so [`Event::Payload`] means a bug, reported, not a panic.
    fn reading(&mut self, event: Event) -> Result<Reading, TransportError> {
        match event {
            Event::Message(header) => Ok(Reading::Message(header)),
            Event::Unknown { request_id, opcode } => Ok(Reading::Unknown { request_id, opcode }),
            Event::Payload => Err(self.unexpected("payload bytes where none was left".into())),
        }
    }

    /// Breaks it for what the decoder refused ([`TransportError::from_wire`]).
    fn refuse(&mut self, e: WireError) -> TransportError {
        self.broken = true;
        TransportError::from_wire(self.peer, e)
    }

    /// Reads into the input buffer, after what it holds; `Ok(None)` when the socket
    /// is empty now, `Ok(Some(0))` at the end of the stream.
    pub(crate) fn fill_buffer(&mut self) -> Result<Option<usize>, TransportError> {
        let Socket {
            stream,
            buffer,
            drained,
            last_progress,
            ..
        } = self;
        let got = buffer.fill(|room| read_once(stream, drained, last_progress, room));
        got.map_err(|e| self.fail(TransportOp::Recv, e))
    }

    /// Reads on into the views `iov[..used]` (spanning `asked` bytes: the rest of a
    /// payload, or as much of it as one call takes): from the input buffer first; then with
    /// one `readv` whose last slice, when there is room for it, is the input buffer, so
    /// that what follows the payload comes in the same call. The bytes that landed in the
    /// views, which the decoder counts as payload taken; 0 only when the socket is empty now.
    /// The end of the stream is an error.
    ///
    /// # Safety
    /// Every view must be memory valid for writes and touched by no one else during the
    /// call; `asked` is at most the decoder's payload left.
    pub(crate) unsafe fn read_payload(
        &mut self,
        iov: &mut IoVecs,
        used: usize,
        asked: usize,
    ) -> Result<usize, TransportError> {
        if used == 0 {
            return Ok(0);
        }
        if self.buffer.len() > 0 {
            // SAFETY: the first view is valid, unshared memory (this function's contract).
            let first = unsafe {
                std::slice::from_raw_parts_mut(iov[0].iov_base.cast::<u8>(), iov[0].iov_len)
            };
            let n = self.buffer.take(first);
            self.decoder.payload_taken(n as u64);
            return Ok(n);
        }
        let mut slices = used;
        let mut spare = 0;
        if used < SLICES_PER_CALL
            && let Some(room) = self.buffer.spare()
        {
            iov[used] = libc::iovec {
                iov_base: room.as_mut_ptr().cast(),
                iov_len: room.len(),
            };
            spare = room.len();
            slices += 1;
        }
        while !self.drained {
            // SAFETY: the views are valid, unshared memory (this function's contract); the
            // last may be the input buffer's room, owned here and untouched until `added`;
            // `iov` outlives the call.
            let n = unsafe { libc::readv(self.fd(), iov.as_ptr(), slices as libc::c_int) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => self.drained = true,
                    _ => return Err(self.fail(TransportOp::Recv, e)),
                }
                break;
            }
            if n == 0 {
                return Err(self.eof());
            }
            self.last_progress = Instant::now();
            let n = n as usize;
            self.drained = n < asked + spare;
            self.buffer.added(n.saturating_sub(asked));
            self.decoder.payload_taken(n.min(asked) as u64);
            return Ok(n.min(asked));
        }
        Ok(0)
    }

    /// Writes the messages ready in the outbox, from the oldest on, as many as one `sendmsg`
    /// takes each time ([`Outbox::gather`]), until none is ready ([`Progress::Done`]) or the
    /// socket is full ([`Progress::Pending`]). The tokens of those all written are pushed to
    /// `done`; bytes written move `last_progress` on. An error breaks it.
    pub(crate) fn write_out(&mut self, done: &mut Vec<u64>) -> Result<Progress, TransportError> {
        let fd = self.fd();
        let mut iov = no_iovecs();
        while self.outbox.has_ready() {
            let used = self.outbox.gather(&mut iov);
            // SAFETY: a zeroed msghdr is a valid empty one; it names `iov`, alive across the
            // call, whose entries the outbox made valid until its `advance` (`gather`'s
            // contract); nothing touches the outbox during the call.
            let sent = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = used;
                libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            };
            if sent < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => return Ok(Progress::Pending),
                    _ => return Err(self.fail(TransportOp::Send, e)),
                }
            }
            if sent == 0 {
                let e = std::io::ErrorKind::WriteZero.into();
                return Err(self.fail(TransportOp::Send, e));
            }
            self.last_progress = Instant::now();
            self.outbox.advance(sent as usize, done);
        }
        Ok(Progress::Done)
    }

    /// Breaks it and closes both directions; the peer's next receive sees the end of the
    /// stream.
    pub(crate) fn shutdown(&mut self) {
        self.broken = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// One read from a nonblocking socket into `buf`, unless `drained` says it is empty:
/// `Ok(None)` then (or when it would block), `Ok(Some(0))` at the end of the stream. A short
/// read or "would block" sets `drained`; bytes read move `last_progress` on.
fn read_once(
    stream: &mut TcpStream,
    drained: &mut bool,
    last_progress: &mut Instant,
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    if *drained {
        return Ok(None);
    }
    loop {
        match stream.read(buf) {
            Ok(n) => {
                if n > 0 {
                    *last_progress = Instant::now();
                }
                *drained = n < buf.len();
                return Ok(Some(n));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                *drained = true;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(lens: &[usize]) -> IoVecs {
        let mut iov = no_iovecs();
        for (v, &len) in iov.iter_mut().zip(lens) {
            v.iov_len = len;
        }
        iov
    }

    #[test]
    fn a_send_call_is_capped_inside_the_view_that_crosses_the_limit() {
        let header = crate::limits::HEADER_BYTES;
        let mut iov = views(&[header, 64, 3 * MAX_SEND_CALL_BYTES, 10]);
        assert_eq!(cap_send(&mut iov, 4), 3);
        let kept: Vec<usize> = iov[..3].iter().map(|v| v.iov_len).collect();
        assert_eq!(kept, [header, 64, MAX_SEND_CALL_BYTES - header - 64]);
    }

    #[test]
    fn views_within_the_limit_are_left_whole() {
        let mut iov = views(&[100, MAX_SEND_CALL_BYTES - 100, 5]);
        assert_eq!(cap_send(&mut iov, 2), 2);
        assert_eq!(iov[1].iov_len, MAX_SEND_CALL_BYTES - 100);
        let mut iov = views(&[7, 9]);
        assert_eq!(cap_send(&mut iov, 2), 2);
        assert_eq!((iov[0].iov_len, iov[1].iov_len), (7, 9));
        assert_eq!(cap_send(&mut iov, 0), 0);
    }
}
