//! Nonblocking framed TCP for event loops: one thread drives many connections (with epoll),
//! and each [`StreamConn`] is a small state machine that reads a request's header, body and
//! payload, and writes a reply, as far as the socket allows at the moment, then carries on
//! where it stopped at the next readiness event (decision 0008).
//!
//! The framing and the checks are those of the blocking [`crate::tcp`] connection: every
//! header and body is checked before it is believed, a request's payload lands straight in
//! the caller's destination memory and a reply's payload leaves straight from the caller's
//! memory, with no copy in user space.
//!
//! How bytes move (the input buffer, the "drained" hint, the outbox) is shared with the
//! client's [`crate::pipe::PipeConn`] (`crate::socket`).
//!
//! Requests are pipelined: the next request is read while earlier ones are served, up to
//! [`MAX_PIPELINED_REQUESTS`] unanswered. Replies go out in the order their requests came,
//! whatever order they are ready in: the place of each reply is held when its request is
//! read, and the replies ready at the front leave together in one `sendmsg` (with
//! MSG_NOSIGNAL), each payload straight from the caller's memory (the outbox,
//! `transport/src/framer/outbox.rs`).
//!
//! Every call returns [`Incoming::Pending`] or [`Progress::Pending`] only once the socket is
//! known to be empty (it said it would block, or a read came back short), or, for
//! [`StreamConn::recv_request`], once [`MAX_PIPELINED_REQUESTS`] requests are unanswered; so
//! an edge-triggered event loop that calls [`StreamConn::readable`] on each readiness event,
//! calls on until it sees `Pending`, and reads again after its replies went out, never misses
//! one.

use std::io::IoSliceMut;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::BorrowedFd;
use std::time::Instant;

use crate::error::TransportError;
use crate::framer::Expect;
use crate::framer::outbox::Span;
use crate::limits::MAX_PIPELINED_REQUESTS;
use crate::socket::{Reading, Socket, iovecs_past, no_iovecs};
use crate::wire::Header;

/// Most slices handed to one writev/readv call (well under the system's IOV_MAX of 1024).
pub(crate) const SLICES_PER_CALL: usize = 64;
/// The status of the error reply to a request whose opcode the server does not know.
pub(crate) const UNKNOWN_OPCODE_STATUS: i32 = libc::EOPNOTSUPP;

/// Says that `peer` sent a request with an opcode this side does not know.
pub(crate) fn log_unknown_opcode(peer: SocketAddr, opcode: u16) {
    crate::log_line!("nacre-transport: {peer} sent unknown opcode {opcode}; answered EOPNOTSUPP");
}

/// What reading a connection gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// No whole request yet: the socket has nothing more to read now, or
    /// [`MAX_PIPELINED_REQUESTS`] requests are unanswered. Reading resumes once
    /// [`StreamConn::readable`] says a readiness event came, or once replies went out.
    Pending,
    /// A request's header and body arrived ([`StreamConn::body`]). Its payload, if it has
    /// one, comes next ([`StreamConn::recv_payload`]). The next call to
    /// [`StreamConn::recv_request`] ends it (a payload not taken is dropped); its reply is
    /// given with [`StreamConn::reply`] or [`StreamConn::reply_with_payload`], at any time.
    Request(Header),
    /// The peer closed the connection between messages.
    Closed,
}

/// Whether a payload or a reply is all through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Not yet: the socket is empty (or full, for a reply); carry on after the next
    /// readiness event.
    Pending,
    /// All of it.
    Done,
}

/// The server's side of one nonblocking TCP connection.
#[derive(Debug)]
pub struct StreamConn {
    /// Its outbox holds the replies to write, and the places of those to come, in request
    /// order; its decoder expects requests.
    socket: Socket,
    /// The request last returned, until the next call to `recv_request` ends it: the caller's
    /// (its payload, if the decoder has some left, is taken with `recv_payload`).
    current: Option<Header>,
    /// Tokens of the caller's replies written out while reading (see `recv_request`), not
    /// yet handed back by `flush`.
    sent: Vec<u64>,
    /// When the message being received began (its first bytes came), if one is.
    receiving_since: Option<Instant>,
}

impl StreamConn {
    /// Takes over a connected stream (made nonblocking here).
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Result<StreamConn, TransportError> {
        Ok(StreamConn::with(Socket::new(
            stream,
            peer,
            Expect::Requests,
        )?))
    }

    /// Wraps a stream already made nonblocking.
    pub(crate) fn from_nonblocking(stream: TcpStream, peer: SocketAddr) -> StreamConn {
        StreamConn::with(Socket::from_nonblocking(stream, peer, Expect::Requests))
    }

    fn with(socket: Socket) -> StreamConn {
        StreamConn {
            socket,
            current: None,
            sent: Vec::new(),
            receiving_since: None,
        }
    }

    /// The descriptor to watch for readiness.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.socket.peer
    }

    /// The body of the current request.
    pub fn body(&self) -> &[u8] {
        self.socket.decoder.body()
    }

    /// When bytes last moved either way.
    pub fn last_progress(&self) -> Instant {
        self.socket.last_progress()
    }

    /// Whether the connection is partway through a message the peer sends or it writes (a
    /// request's header, body or payload, or replies ready to go): a peer that stops there
    /// for long is stuck or gone. Between messages, and while the caller serves requests
    /// whose payloads are in, it is not.
    pub fn mid_message(&self) -> bool {
        self.socket.outbox.has_ready()
            || match self.current {
                Some(_) => self.socket.decoder.payload_left() > 0,
                None => self.receiving(),
            }
    }

    /// Whether [`StreamConn::flush`] has something to do: replies ready to be written, or
    /// tokens of replies written while reading (an unknown opcode's answer takes the
    /// replies ready before it along) to hand back.
    pub fn wants_write(&self) -> bool {
        self.socket.outbox.has_ready() || !self.sent.is_empty()
    }

    /// Requests read whose replies are not all written yet.
    pub fn unanswered(&self) -> usize {
        self.socket.outbox.len()
    }

    /// The event loop saw the socket become readable: the next read asks the kernel again.
    pub fn readable(&mut self) {
        self.socket.readable();
    }

    /// Since when the request being received has been coming in, if one is: set when its
    /// first bytes arrive, cleared when it is whole, however slowly its bytes come between.
    /// A server closes a connection whose request has been coming in for too long (a
    /// slow-loris), which [`StreamConn::last_progress`] alone cannot tell from a busy one.
    pub fn receiving_since(&self) -> Option<Instant> {
        self.receiving_since
    }

    /// Whether bytes of a request not yet whole are in (or being dropped).
    fn receiving(&self) -> bool {
        self.current.is_none()
            && (self.socket.buffer.len() > 0 || !self.socket.decoder.at_boundary())
    }

    /// Reads on until a whole request is in, the socket would block, the peer closed, or
    /// [`MAX_PIPELINED_REQUESTS`] requests are unanswered (then `Pending`, until replies
    /// went out). The request it last returned ends here: a payload not taken is dropped.
    /// A request with an unknown opcode is answered here (EOPNOTSUPP, in its turn) and
    /// skipped, as the blocking connection does; a malformed message is an error and breaks
    /// the connection.
    pub fn recv_request(&mut self) -> Result<Incoming, TransportError> {
        let incoming = self.read_request()?;
        // A request being received began with the bytes last read (no clock read per
        // request: the socket noted the time of its last progress).
        let began = || self.socket.last_progress();
        self.receiving_since = match incoming {
            // Bytes of the next one may be in already.
            Incoming::Request(_) => self.receiving().then(began),
            Incoming::Pending if self.receiving() => self.receiving_since.or_else(|| Some(began())),
            Incoming::Pending | Incoming::Closed => None,
        };
        Ok(incoming)
    }

    fn read_request(&mut self) -> Result<Incoming, TransportError> {
        self.socket.check()?;
        if self.current.take().is_some() {
            // A payload not taken is dropped by the reads that follow.
            self.socket.decoder.skip_payload();
        }
        loop {
            if self.socket.outbox.len() >= MAX_PIPELINED_REQUESTS {
                return Ok(Incoming::Pending);
            }
            match self.socket.next_event()? {
                Reading::Pending => return Ok(Incoming::Pending),
                Reading::Closed => return Ok(Incoming::Closed),
                Reading::Message(header) => {
                    self.current = Some(header);
                    self.socket.outbox.hold(header.request_id);
                    return Ok(Incoming::Request(header));
                }
                Reading::Unknown { request_id, opcode } => {
                    // Answered in its turn; the decoder skips its body and payload.
                    log_unknown_opcode(self.socket.peer, opcode);
                    let head = Header::error_reply(request_id, UNKNOWN_OPCODE_STATUS).encode();
                    // SAFETY: no payload.
                    unsafe { self.socket.outbox.push(head, Vec::new(), Vec::new(), None) };
                    self.socket.write_out(&mut self.sent)?;
                }
            }
        }
    }

    /// Receives the current request's payload straight into `dests`, whose lengths must add
    /// up to the payload's length. Call it again with the same destinations after
    /// [`Progress::Pending`]: it carries on where it stopped.
    pub fn recv_payload(
        &mut self,
        dests: &mut [IoSliceMut<'_>],
    ) -> Result<Progress, TransportError> {
        self.socket.check()?;
        let Some(header) = self.current else {
            return Err(TransportError::Unexpected {
                peer: self.socket.peer,
                reason: "no request's payload is being received".into(),
            });
        };
        let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
        if room != header.payload_len {
            return Err(TransportError::Unexpected {
                peer: self.socket.peer,
                reason: format!(
                    "the request's payload is {} bytes; destinations of {room} bytes were given",
                    header.payload_len
                ),
            });
        }
        // The caller's slices stay as given (the next call passes them again): each round
        // reads into views of them past what arrived, built on the stack.
        let mut iov = no_iovecs();
        let mut got = header.payload_len - self.socket.decoder.payload_left();
        while got < header.payload_len {
            let pieces = dests.iter_mut().map(|d| (d.as_mut_ptr(), d.len()));
            let (used, asked) = iovecs_past(pieces, got, header.payload_len - got, &mut iov);
            // SAFETY: every view lies inside a destination, borrowed mutably for this call.
            let n = unsafe { self.socket.read_payload(&mut iov, used, asked) }?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        if got < header.payload_len {
            return Ok(Progress::Pending);
        }
        Ok(Progress::Done)
    }

    /// Gives the reply to `request` (one read on this connection and not answered yet): a
    /// status and a body, with no payload. It is written in its turn, after the replies to
    /// the requests read before it ([`StreamConn::flush`]); `token` then comes back.
    pub fn reply(
        &mut self,
        request: &Header,
        status: i32,
        body: impl Into<Vec<u8>>,
        token: u64,
    ) -> Result<(), TransportError> {
        // SAFETY: no payload.
        unsafe { self.reply_with_payload(request, status, body, Vec::new(), token) }
    }

    /// As [`StreamConn::reply`], with a payload written straight from `payload`. An owned
    /// body is taken without a copy.
    ///
    /// # Safety
    /// Every span of `payload` must stay valid, and written by no one, until
    /// [`StreamConn::flush`] hands `token` back or the connection is dropped.
    pub unsafe fn reply_with_payload(
        &mut self,
        request: &Header,
        status: i32,
        body: impl Into<Vec<u8>>,
        payload: Vec<Span>,
        token: u64,
    ) -> Result<(), TransportError> {
        self.socket.check()?;
        let mut body = body.into();
        let (mut status, mut payload) = (status, payload);
        if let Some((too_long, message)) =
            crate::wire::oversized_reply(&self.socket.peer, status, body.len())
        {
            (status, body, payload) = (too_long, message, Vec::new());
        }
        let payload_len = payload.iter().map(|s| s.len as u64).sum();
        let header = Header::response(request, status, &body, payload_len);
        // SAFETY: the spans' contract is this function's.
        let filled = unsafe {
            self.socket.outbox.fill(
                request.request_id,
                header.encode(),
                body,
                payload,
                Some(token),
            )
        };
        if !filled {
            return Err(TransportError::Unexpected {
                peer: self.socket.peer,
                reason: format!(
                    "a reply was given to request {}, which awaits none",
                    request.request_id
                ),
            });
        }
        Ok(())
    }

    /// Writes the replies that are ready, in request order, until none is
    /// ([`Progress::Done`]: the next one awaits [`StreamConn::reply`], or all are written)
    /// or the socket is full ([`Progress::Pending`]: call again when it is writable). The
    /// token of every reply all written is pushed to `sent`: its payload memory is the
    /// caller's again.
    pub fn flush(&mut self, sent: &mut Vec<u64>) -> Result<Progress, TransportError> {
        self.socket.check()?;
        sent.append(&mut self.sent);
        self.socket.write_out(sent)
    }

    /// Closes both directions; the peer's next receive sees the end of the stream.
    pub fn shutdown(&mut self) {
        self.socket.shutdown();
    }
}
