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
//! System calls are what a small request costs, so the input side saves them two ways:
//! - a header is read with whatever follows it, up to [`crate::buffer::INPUT_BUFFER_BYTES`], in one call:
//!   a small request's body (and a small write's payload) comes with its header
//!   ([`crate::buffer`]). Bytes read
//!   past the header are taken from that buffer first (the only copy, of at most a few KiB);
//!   everything else lands straight in its destination;
//! - a read that comes back short means the socket is empty, so the next read waits for
//!   the event loop to say the socket is readable again ([`StreamConn::readable`]) instead
//!   of asking the kernel only to hear "would block".
//!
//! Requests are pipelined: the next request is read while earlier ones are served, up to
//! [`MAX_PIPELINED_REQUESTS`] unanswered. Replies go out in the order their requests came,
//! whatever order they are ready in: the place of each reply is held when its request is
//! read, and the replies ready at the front leave together in one `sendmsg` (with
//! MSG_NOSIGNAL), each payload straight from the caller's memory ([`crate::outbox`]).
//!
//! Every call returns [`Incoming::Pending`] or [`Progress::Pending`] only once the socket is
//! known to be empty (it said it would block, or a read came back short), or, for
//! [`StreamConn::recv_request`], once [`MAX_PIPELINED_REQUESTS`] requests are unanswered; so
//! an edge-triggered event loop that calls [`StreamConn::readable`] on each readiness event,
//! calls on until it sees `Pending`, and reads again after its replies went out, never misses
//! one.

use std::io::{IoSliceMut, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use crate::buffer::InputBuffer;
use crate::error::{TransportError, TransportOp};
use crate::limits::{HEADER_BYTES, MAX_PIPELINED_REQUESTS};
use crate::outbox::{Outbox, Span};
use crate::wire::{Header, WireError};

/// Most slices handed to one writev/readv call (well under the system's IOV_MAX of 1024).
pub(crate) const SLICES_PER_CALL: usize = 64;
/// Chunk used to drop the rest of a message that is skipped.
const DISCARD_CHUNK_BYTES: usize = 16 * 1024;
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

#[derive(Debug, Clone, Copy)]
enum Input {
    /// Between messages, or partway through a header (its first bytes in the buffer).
    Header,
    /// Partway through a body.
    Body { header: Header, got: usize },
    /// A request is the caller's: its payload, if any, is taken with `recv_payload`.
    Request { header: Header, payload_got: u64 },
    /// Dropping the rest of a message: the payload of a request ended without taking it,
    /// or the body and payload of a request with an unknown opcode.
    Discard { left: u64 },
}

/// The server's side of one nonblocking TCP connection.
#[derive(Debug)]
pub struct StreamConn {
    stream: TcpStream,
    peer: SocketAddr,
    input: Input,
    /// Bytes read with a header and not yet taken.
    buffer: InputBuffer,
    /// The socket was empty at the last read; only a readiness event can change that.
    drained: bool,
    body: Vec<u8>,
    /// Replies to write, and the places of those to come, in request order.
    outbox: Outbox,
    /// Tokens of the caller's replies written out while reading (see `recv_request`), not
    /// yet handed back by `flush`.
    sent: Vec<u64>,
    broken: bool,
    last_progress: Instant,
}

impl StreamConn {
    /// Takes over a connected stream (made nonblocking here).
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Result<StreamConn, TransportError> {
        stream
            .set_nonblocking(true)
            .map_err(|source| TransportError::Io {
                op: TransportOp::Connect,
                peer,
                source,
            })?;
        Ok(StreamConn::from_nonblocking(stream, peer))
    }

    /// Wraps a stream already made nonblocking.
    pub(crate) fn from_nonblocking(stream: TcpStream, peer: SocketAddr) -> StreamConn {
        StreamConn {
            stream,
            peer,
            input: Input::Header,
            buffer: InputBuffer::new(),
            drained: false,
            body: Vec::new(),
            outbox: Outbox::default(),
            sent: Vec::new(),
            broken: false,
            last_progress: Instant::now(),
        }
    }

    /// The descriptor to watch for readiness.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The body of the current request.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// When bytes last moved either way.
    pub fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Whether the connection is partway through a message the peer sends or it writes (a
    /// request's header, body or payload, or replies ready to go): a peer that stops there
    /// for long is stuck or gone. Between messages, and while the caller serves requests
    /// whose payloads are in, it is not.
    pub fn mid_message(&self) -> bool {
        self.outbox.has_ready()
            || match self.input {
                Input::Header => self.buffer.len() > 0,
                Input::Body { .. } | Input::Discard { .. } => true,
                Input::Request {
                    header,
                    payload_got,
                } => payload_got < header.payload_len,
            }
    }

    /// Whether [`StreamConn::flush`] has something to do: replies ready to be written, or
    /// tokens of replies written while reading (an unknown opcode's answer takes the
    /// replies ready before it along) to hand back.
    pub fn wants_write(&self) -> bool {
        self.outbox.has_ready() || !self.sent.is_empty()
    }

    /// Requests read whose replies are not all written yet.
    pub fn unanswered(&self) -> usize {
        self.outbox.len()
    }

    fn check(&self) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Broken { peer: self.peer });
        }
        Ok(())
    }

    fn fail(&mut self, op: TransportOp, source: std::io::Error) -> TransportError {
        self.broken = true;
        TransportError::from_socket(op, self.peer, source)
    }

    fn protocol(&mut self, source: WireError) -> TransportError {
        self.broken = true;
        TransportError::Protocol {
            peer: self.peer,
            source,
        }
    }

    /// The event loop saw the socket become readable: the next read asks the kernel again.
    pub fn readable(&mut self) {
        self.drained = false;
    }

    /// One read into `buf`, unless the socket is known to be empty: `Ok(None)` when it is
    /// (or would block), `Ok(Some(0))` at the end of the stream. A short read marks the
    /// socket empty.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, TransportError> {
        let got = read_nonblocking(
            &mut self.stream,
            &mut self.drained,
            &mut self.last_progress,
            buf,
        );
        got.map_err(|e| self.fail(TransportOp::Recv, e))
    }

    /// Reads into the input buffer, after what it holds.
    fn fill_buffer(&mut self) -> Result<Option<usize>, TransportError> {
        let StreamConn {
            stream,
            buffer,
            drained,
            last_progress,
            ..
        } = self;
        let got = buffer.fill(|room| read_nonblocking(stream, drained, last_progress, room));
        got.map_err(|e| self.fail(TransportOp::Recv, e))
    }

    fn eof(&mut self) -> TransportError {
        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        self.fail(TransportOp::Recv, e)
    }

    /// Reads on until a whole request is in, the socket would block, the peer closed, or
    /// [`MAX_PIPELINED_REQUESTS`] requests are unanswered (then `Pending`, until replies
    /// went out). The request it last returned ends here: a payload not taken is dropped.
    /// A request with an unknown opcode is answered here (EOPNOTSUPP, in its turn) and
    /// skipped, as the blocking connection does; a malformed message is an error and breaks
    /// the connection.
    pub fn recv_request(&mut self) -> Result<Incoming, TransportError> {
        self.check()?;
        if let Input::Request {
            header,
            payload_got,
        } = self.input
        {
            self.input = if payload_got < header.payload_len {
                Input::Discard {
                    left: header.payload_len - payload_got,
                }
            } else {
                Input::Header
            };
        }
        loop {
            if self.outbox.len() >= MAX_PIPELINED_REQUESTS {
                return Ok(Incoming::Pending);
            }
            match self.input {
                // Ended above; reading on never stops in it.
                Input::Request { .. } => {
                    return Err(TransportError::Unexpected {
                        peer: self.peer,
                        reason: "a request was read before the last one ended".into(),
                    });
                }
                Input::Discard { left } => {
                    let mut left = left - self.buffer.skip(left);
                    if left > 0 {
                        let mut scratch = [0u8; DISCARD_CHUNK_BYTES];
                        let n = left.min(DISCARD_CHUNK_BYTES as u64) as usize;
                        match self.read_some(&mut scratch[..n])? {
                            None => return Ok(Incoming::Pending),
                            Some(0) => return Err(self.eof()),
                            Some(got) => left -= got as u64,
                        }
                    }
                    self.input = if left == 0 {
                        Input::Header
                    } else {
                        Input::Discard { left }
                    };
                }
                Input::Header => {
                    if let Some(head) = self.buffer.take_header() {
                        if let Some(incoming) = self.header_arrived(&head)? {
                            return Ok(incoming);
                        }
                        continue;
                    }
                    match self.fill_buffer()? {
                        None => return Ok(Incoming::Pending),
                        Some(0) if self.buffer.len() == 0 => {
                            self.broken = true;
                            return Ok(Incoming::Closed);
                        }
                        Some(0) => return Err(self.eof()),
                        Some(_) => {}
                    }
                }
                Input::Body { header, mut got } => {
                    let mut body = std::mem::take(&mut self.body);
                    got += self.buffer.take(&mut body[got..]);
                    let read = if got < body.len() {
                        self.read_some(&mut body[got..])
                    } else {
                        Ok(Some(0))
                    };
                    let want = body.len() - got;
                    self.body = body;
                    match read? {
                        _ if want == 0 => return self.body_arrived(header),
                        None => {
                            self.input = Input::Body { header, got };
                            return Ok(Incoming::Pending);
                        }
                        Some(0) => return Err(self.eof()),
                        Some(n) if n < want => {
                            self.input = Input::Body {
                                header,
                                got: got + n,
                            };
                        }
                        Some(_) => return self.body_arrived(header),
                    }
                }
            }
        }
    }

    /// A whole header is in: checks it and moves on to its body. `Some` when the request
    /// is complete already (no body).
    fn header_arrived(
        &mut self,
        head: &[u8; HEADER_BYTES],
    ) -> Result<Option<Incoming>, TransportError> {
        let header = match Header::decode(head) {
            Ok(h) => h,
            Err(WireError::UnknownOpcode {
                opcode,
                request_id,
                body_len,
                payload_len,
            }) => {
                log_unknown_opcode(self.peer, opcode);
                let left = u64::from(body_len) + payload_len;
                self.input = if left == 0 {
                    Input::Header
                } else {
                    Input::Discard { left }
                };
                let head = Header::error_reply(request_id, UNKNOWN_OPCODE_STATUS).encode();
                // SAFETY: no payload.
                unsafe { self.outbox.push(head, Vec::new(), Vec::new(), None) };
                self.write_out()?;
                return Ok(None);
            }
            Err(e) => return Err(self.protocol(e)),
        };
        if header.is_response() {
            self.broken = true;
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "a reply to request {} arrived where requests are expected",
                    header.request_id
                ),
            });
        }
        self.body.clear();
        self.body.resize(header.body_len as usize, 0);
        if header.body_len == 0 {
            return self.body_arrived(header).map(Some);
        }
        self.input = Input::Body { header, got: 0 };
        Ok(None)
    }

    fn body_arrived(&mut self, header: Header) -> Result<Incoming, TransportError> {
        if let Err(e) = header.check_body(&self.body) {
            return Err(self.protocol(e));
        }
        self.input = Input::Request {
            header,
            payload_got: 0,
        };
        self.outbox.hold(header.request_id);
        Ok(Incoming::Request(header))
    }

    /// Receives the current request's payload straight into `dests`, whose lengths must add
    /// up to the payload's length. Call it again with the same destinations after
    /// [`Progress::Pending`]: it carries on where it stopped.
    pub fn recv_payload(
        &mut self,
        dests: &mut [IoSliceMut<'_>],
    ) -> Result<Progress, TransportError> {
        self.check()?;
        let Input::Request {
            header,
            payload_got,
        } = self.input
        else {
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: "no request's payload is being received".into(),
            });
        };
        let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
        if room != header.payload_len {
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "the request's payload is {} bytes; destinations of {room} bytes were given",
                    header.payload_len
                ),
            });
        }
        // The caller's slices stay as given (the next call passes them again): each round
        // reads into views of them past what arrived, built on the stack.
        let mut got = payload_got;
        while got < header.payload_len {
            let mut views: [IoSliceMut<'_>; SLICES_PER_CALL] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            let (used, asked) = views_past(dests, got, &mut views);
            // What came in with the header first.
            if self.buffer.len() > 0 {
                got += self.buffer.take(&mut views[0]) as u64;
                continue;
            }
            if self.drained {
                break;
            }
            // What follows the payload (the next requests) lands in the input buffer in the
            // same call, when there is a slice left for it.
            let mut slices = used;
            let mut spare = 0;
            if used < SLICES_PER_CALL
                && let Some(room) = self.buffer.spare()
            {
                spare = room.len();
                views[used] = IoSliceMut::new(room);
                slices += 1;
            }
            match self.stream.read_vectored(&mut views[..slices]) {
                Ok(0) => return Err(self.eof()),
                Ok(n) => {
                    self.last_progress = Instant::now();
                    self.drained = n < asked + spare;
                    got += n.min(asked) as u64;
                    self.buffer.added(n.saturating_sub(asked));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.drained = true,
                Err(e) => return Err(self.fail(TransportOp::Recv, e)),
            }
        }
        self.input = Input::Request {
            header,
            payload_got: got,
        };
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
        body: &[u8],
        token: u64,
    ) -> Result<(), TransportError> {
        // SAFETY: no payload.
        unsafe { self.reply_with_payload(request, status, body, Vec::new(), token) }
    }

    /// As [`StreamConn::reply`], with a payload written straight from `payload`.
    ///
    /// # Safety
    /// Every span of `payload` must stay valid, and written by no one, until
    /// [`StreamConn::flush`] hands `token` back or the connection is dropped.
    pub unsafe fn reply_with_payload(
        &mut self,
        request: &Header,
        status: i32,
        body: &[u8],
        payload: Vec<Span>,
        token: u64,
    ) -> Result<(), TransportError> {
        self.check()?;
        let payload_len = payload.iter().map(|s| s.len as u64).sum();
        let header = Header::response(request, status, body, payload_len);
        // SAFETY: the spans' contract is this function's.
        let filled = unsafe {
            self.outbox.fill(
                request.request_id,
                header.encode(),
                body.to_vec(),
                payload,
                Some(token),
            )
        };
        if !filled {
            return Err(TransportError::Unexpected {
                peer: self.peer,
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
        self.check()?;
        sent.append(&mut self.sent);
        let fd = self.fd();
        match self.outbox.write(fd, &mut self.last_progress, sent) {
            Ok(progress) => Ok(progress),
            Err(e) => Err(self.fail(TransportOp::Send, e)),
        }
    }

    /// Writes what is ready, keeping the tokens written for the next `flush`.
    fn write_out(&mut self) -> Result<Progress, TransportError> {
        let fd = self.fd();
        match self
            .outbox
            .write(fd, &mut self.last_progress, &mut self.sent)
        {
            Ok(progress) => Ok(progress),
            Err(e) => Err(self.fail(TransportOp::Send, e)),
        }
    }

    /// Closes both directions; the peer's next receive sees the end of the stream.
    pub fn shutdown(&mut self) {
        self.broken = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// One read from a nonblocking socket into `buf`, unless `drained` says it is empty:
/// `Ok(None)` then (or when it would block), `Ok(Some(0))` at the end of the stream. A short
/// read or "would block" sets `drained`; bytes read move `last_progress` on.
pub(crate) fn read_nonblocking(
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

/// Views of `dests` past their first `skip` bytes, as many as fit in `out`: how many, and
/// how many bytes they span.
fn views_past<'a>(
    dests: &'a mut [IoSliceMut<'_>],
    mut skip: u64,
    out: &mut [IoSliceMut<'a>; SLICES_PER_CALL],
) -> (usize, usize) {
    let (mut used, mut bytes) = (0, 0);
    for d in dests.iter_mut() {
        if used == SLICES_PER_CALL {
            break;
        }
        let len = d.len() as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let part: &'a mut [u8] = &mut d[skip as usize..];
        skip = 0;
        bytes += part.len();
        out[used] = IoSliceMut::new(part);
        used += 1;
    }
    (used, bytes)
}
