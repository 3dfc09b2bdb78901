//! Nonblocking framed TCP for a client's event loop: a [`PipeConn`] carries several requests
//! at once on one connection. Requests are queued with the caller's memory (the body is
//! taken, the payload is not copied), written in as few system calls as the socket allows (the
//! requests queued together leave in one `sendmsg`), and their replies are read back in
//! order, each reply's payload straight into the destinations its request named.
//!
//! The server answers a connection's requests in the order they came (decision 0008), so
//! replies are matched to requests by order and checked by id: a reply to anything but the
//! oldest request in flight is a protocol error that breaks the connection.
//!
//! Like [`crate::stream::StreamConn`], reading uses the shared input buffer (a small reply
//! comes whole, header, body and payload, in one call) and the "drained" hint: once a read
//! came back short, the next one waits for the event loop to say the socket is readable
//! ([`PipeConn::readable`]).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use crate::buffer::InputBuffer;
use crate::error::{TransportError, TransportOp};
use crate::limits::{HEADER_BYTES, MAX_BODY_BYTES, MAX_PAYLOAD_BYTES};
use crate::outbox::{IoVecs, Outbox, Span, no_iovecs};
use crate::stream::{Progress, SLICES_PER_CALL, read_nonblocking};
use crate::wire::{Header, Opcode};

/// A request whose reply has come.
#[derive(Debug)]
pub struct Finished {
    /// The caller's token given to [`PipeConn::push`].
    pub token: u64,
    /// The reply's status: 0, or a positive errno value.
    pub status: i32,
    /// The reply's body.
    pub body: Vec<u8>,
    /// Bytes of payload that landed in the request's destinations (from their start).
    pub payload_len: u64,
}

/// A request written (or being written) whose reply has not all come.
#[derive(Debug)]
struct Waiting {
    id: u64,
    token: u64,
    dests: Vec<Span>,
}

#[derive(Debug, Clone, Copy)]
enum ReplyInput {
    /// Between replies, or partway through a header.
    Header,
    /// Partway through the body of the oldest request's reply.
    Body { header: Header, got: usize },
    /// Partway through its payload.
    Payload { header: Header, got: u64 },
}

/// The client's side of one nonblocking TCP connection with several requests in flight.
#[derive(Debug)]
pub struct PipeConn {
    stream: TcpStream,
    peer: SocketAddr,
    buffer: InputBuffer,
    drained: bool,
    next_id: u64,
    out: Outbox,
    waiting: VecDeque<Waiting>,
    input: ReplyInput,
    body: Vec<u8>,
    broken: bool,
    last_progress: Instant,
}

impl PipeConn {
    /// Takes over a connected stream (made nonblocking here).
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Result<PipeConn, TransportError> {
        stream
            .set_nonblocking(true)
            .map_err(|source| TransportError::Io {
                op: TransportOp::Connect,
                peer,
                source,
            })?;
        Ok(PipeConn {
            stream,
            peer,
            buffer: InputBuffer::new(),
            drained: false,
            next_id: 1,
            out: Outbox::default(),
            waiting: VecDeque::new(),
            input: ReplyInput::Header,
            body: Vec::new(),
            broken: false,
            last_progress: Instant::now(),
        })
    }

    /// The descriptor to watch for readiness.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Requests pushed whose replies have not all come.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Whether request bytes wait for room in the socket ([`PipeConn::flush`] when it is
    /// writable).
    pub fn wants_write(&self) -> bool {
        self.out.has_ready()
    }

    /// When bytes last moved either way (or, for an idle connection, the last push): a
    /// connection with requests in flight that has not moved for the request timeout has a
    /// peer that is stuck or gone.
    pub fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Whether an error broke it: no request may be pushed any more.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The event loop saw the socket become readable: the next read asks the kernel again.
    pub fn readable(&mut self) {
        self.drained = false;
    }

    /// Queues a request: `body` is taken (an owned one is not copied); the payload is
    /// written from `payload`, and the reply's payload lands in `dests` (it may be shorter
    /// than they are, not longer).
    /// Nothing is written until [`PipeConn::flush`]. `token` comes back in the request's
    /// [`Finished`], or from [`PipeConn::fail`].
    ///
    /// # Safety
    /// Every span must stay valid (`payload` for reads, `dests` for writes, touched by no
    /// one else) until the request's reply has come or [`PipeConn::fail`] has returned its
    /// token, or the connection is dropped.
    pub unsafe fn push(
        &mut self,
        opcode: Opcode,
        body: impl Into<Vec<u8>>,
        payload: Vec<Span>,
        dests: Vec<Span>,
        token: u64,
    ) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Broken { peer: self.peer });
        }
        let body = body.into();
        let payload_len: u64 = payload.iter().map(|s| s.len as u64).sum();
        if body.len() > MAX_BODY_BYTES as usize || payload_len > MAX_PAYLOAD_BYTES {
            return Err(TransportError::Unexpected {
                peer: self.peer,
                reason: format!(
                    "a request of {} body and {payload_len} payload bytes is over the limits \
                     ({MAX_BODY_BYTES} and {MAX_PAYLOAD_BYTES})",
                    body.len()
                ),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let header = Header::request(opcode, id, &body, payload_len);
        if self.waiting.is_empty() {
            // An idle connection's clock starts with its first request.
            self.last_progress = Instant::now();
        }
        // SAFETY: the payload spans stay valid until the request ends (this function's
        // contract), and the outbox lets go of them before: once written, or at `fail`.
        unsafe { self.out.push(header.encode(), body, payload, None) };
        self.waiting.push_back(Waiting { id, token, dests });
        Ok(())
    }

    /// Writes queued requests until all are out ([`Progress::Done`]) or the socket is full
    /// ([`Progress::Pending`]: call again when it is writable). Requests queued together
    /// leave together, up to the slices one call takes.
    pub fn flush(&mut self) -> Result<Progress, TransportError> {
        if self.broken {
            return Err(TransportError::Broken { peer: self.peer });
        }
        let fd = self.fd();
        let mut none = Vec::new();
        match self.out.write(fd, &mut self.last_progress, &mut none) {
            Ok(progress) => Ok(progress),
            Err(e) => Err(self.fail_with(TransportOp::Send, e)),
        }
    }

    fn fail_with(&mut self, op: TransportOp, source: std::io::Error) -> TransportError {
        self.broken = true;
        TransportError::from_socket(op, self.peer, source)
    }

    /// The peer closed the stream while replies were owed (or an idle one hung up).
    fn eof(&mut self) -> TransportError {
        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        self.fail_with(TransportOp::Recv, e)
    }

    fn unexpected(&mut self, reason: String) -> TransportError {
        self.broken = true;
        TransportError::Unexpected {
            peer: self.peer,
            reason,
        }
    }

    /// One read into `buf` unless the socket is known to be empty (`Ok(None)`), marking it
    /// empty after a short read; the end of the stream is an error, since only a
    /// connection with requests in flight is read.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<Option<usize>, TransportError> {
        let got = read_nonblocking(
            &mut self.stream,
            &mut self.drained,
            &mut self.last_progress,
            buf,
        );
        match got {
            Ok(Some(0)) => Err(self.eof()),
            Ok(got) => Ok(got),
            Err(e) => Err(self.fail_with(TransportOp::Recv, e)),
        }
    }

    /// Reads replies until the socket is empty, appending each whole one to `done`. A
    /// malformed reply, one that is not the oldest request's, or a closed connection is an
    /// error that breaks the connection ([`PipeConn::fail`] then hands back the tokens of
    /// the requests still in flight).
    pub fn recv(&mut self, done: &mut Vec<Finished>) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Broken { peer: self.peer });
        }
        loop {
            match self.input {
                ReplyInput::Header => {
                    if let Some(head) = self.buffer.take_header() {
                        self.header_arrived(&head)?;
                        continue;
                    }
                    let PipeConn {
                        stream,
                        buffer,
                        drained,
                        last_progress,
                        ..
                    } = self;
                    let got =
                        buffer.fill(|room| read_nonblocking(stream, drained, last_progress, room));
                    match got {
                        Err(e) => return Err(self.fail_with(TransportOp::Recv, e)),
                        Ok(None) => return Ok(()),
                        Ok(Some(0)) => return Err(self.eof()),
                        Ok(Some(_)) => {}
                    }
                }
                ReplyInput::Body { header, mut got } => {
                    let mut body = std::mem::take(&mut self.body);
                    got += self.buffer.take(&mut body[got..]);
                    let read = if got < body.len() {
                        self.read_some(&mut body[got..])
                    } else {
                        Ok(Some(0))
                    };
                    let whole = body.len();
                    self.body = body;
                    match read? {
                        None => {
                            self.input = ReplyInput::Body { header, got };
                            return Ok(());
                        }
                        Some(n) if got + n < whole => {
                            self.input = ReplyInput::Body {
                                header,
                                got: got + n,
                            };
                        }
                        Some(_) => {
                            if let Err(source) = header.check_body(&self.body) {
                                self.broken = true;
                                return Err(TransportError::Protocol {
                                    peer: self.peer,
                                    source,
                                });
                            }
                            self.input = ReplyInput::Payload { header, got: 0 };
                        }
                    }
                }
                ReplyInput::Payload { header, got } => {
                    let got = self.recv_payload(header, got)?;
                    if got < header.payload_len {
                        self.input = ReplyInput::Payload { header, got };
                        return Ok(());
                    }
                    self.input = ReplyInput::Header;
                    // The header was checked against the oldest request when it came.
                    if let Some(w) = self.waiting.pop_front() {
                        done.push(Finished {
                            token: w.token,
                            status: header.status,
                            body: std::mem::take(&mut self.body),
                            payload_len: header.payload_len,
                        });
                    }
                }
            }
        }
    }

    /// A reply's header is in: it must answer the oldest request in flight and fit its
    /// destinations.
    fn header_arrived(&mut self, head: &[u8; HEADER_BYTES]) -> Result<(), TransportError> {
        let header = match Header::decode(head) {
            Ok(h) => h,
            Err(source) => {
                self.broken = true;
                return Err(TransportError::Protocol {
                    peer: self.peer,
                    source,
                });
            }
        };
        let Some(oldest) = self.waiting.front() else {
            return Err(self.unexpected(format!(
                "a message ({:?} {}) arrived with no request in flight",
                header.opcode, header.request_id
            )));
        };
        if !header.is_response() || header.request_id != oldest.id {
            let (id, what) = (oldest.id, header.is_response());
            return Err(self.unexpected(format!(
                "expected the reply to request {id}, got {} {} ({:?})",
                if what { "a reply to" } else { "a request" },
                header.request_id,
                header.opcode
            )));
        }
        let room: u64 = oldest.dests.iter().map(|d| d.len as u64).sum();
        if header.payload_len > room {
            return Err(self.unexpected(format!(
                "a reply payload of {} bytes exceeds the {room} bytes given for it",
                header.payload_len
            )));
        }
        self.body.clear();
        self.body.resize(header.body_len as usize, 0);
        self.input = ReplyInput::Body { header, got: 0 };
        Ok(())
    }

    /// Reads the oldest request's reply payload on from `got` bytes; how far it got.
    fn recv_payload(&mut self, header: Header, mut got: u64) -> Result<u64, TransportError> {
        let mut iov = no_iovecs();
        while got < header.payload_len {
            let Some(w) = self.waiting.front() else {
                break;
            };
            // Never past the payload: the bytes after it are the next reply's.
            let (used, asked) = spans_past(&w.dests, got, header.payload_len - got, &mut iov);
            if self.buffer.len() > 0 {
                // SAFETY: the first view lies inside a destination, the caller's memory,
                // valid and untouched by others until this request ends (push's contract).
                let first = unsafe {
                    std::slice::from_raw_parts_mut(iov[0].iov_base.cast::<u8>(), iov[0].iov_len)
                };
                got += self.buffer.take(first) as u64;
                continue;
            }
            if self.drained {
                break;
            }
            // What follows the payload (the next replies) lands in the input buffer in the
            // same call, when there is a slice left for it.
            let mut views = used;
            let mut spare = 0;
            if used < SLICES_PER_CALL
                && let Some(room) = self.buffer.spare()
            {
                iov[used] = libc::iovec {
                    iov_base: room.as_mut_ptr().cast(),
                    iov_len: room.len(),
                };
                spare = room.len();
                views += 1;
            }
            // SAFETY: as above for every view; the last may be the input buffer's room,
            // owned here and untouched until `added`; `iov` outlives the call.
            let n = unsafe { libc::readv(self.fd(), iov.as_ptr(), views as libc::c_int) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock => self.drained = true,
                    _ => return Err(self.fail_with(TransportOp::Recv, e)),
                }
                continue;
            }
            if n == 0 {
                return Err(self.eof());
            }
            self.last_progress = Instant::now();
            let n = n as usize;
            self.drained = n < asked + spare;
            got += n.min(asked) as u64;
            self.buffer.added(n.saturating_sub(asked));
        }
        Ok(got)
    }

    /// Breaks the connection (shutting the socket) and hands back the tokens of every
    /// request still in flight, oldest first: their memory is the caller's again.
    pub fn fail(&mut self) -> Vec<u64> {
        self.broken = true;
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        self.out.clear();
        self.input = ReplyInput::Header;
        self.waiting.drain(..).map(|w| w.token).collect()
    }
}

/// Views of `spans` past their first `skip` bytes and at most `limit` bytes long, as many as
/// one call takes, into `iov`: how many views, and how many bytes they span.
fn spans_past(spans: &[Span], mut skip: u64, limit: u64, iov: &mut IoVecs) -> (usize, usize) {
    let mut used = 0;
    let mut left = limit;
    for s in spans {
        if used == SLICES_PER_CALL || left == 0 {
            break;
        }
        let len = s.len as u64;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(left);
        iov[used] = libc::iovec {
            // SAFETY: skip < len: inside the span.
            iov_base: unsafe { s.ptr.add(skip as usize) }.cast(),
            iov_len: n as usize,
        };
        used += 1;
        left -= n;
        skip = 0;
    }
    (used, (limit - left) as usize)
}
