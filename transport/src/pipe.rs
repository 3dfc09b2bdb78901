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
use std::os::fd::BorrowedFd;
use std::time::Instant;

use crate::error::TransportError;
use crate::framer::Expect;
use crate::framer::outbox::Span;
use crate::limits::{MAX_BODY_BYTES, MAX_PAYLOAD_BYTES};
use crate::socket::{Reading, Socket, iovecs_past, no_iovecs};
use crate::stream::Progress;
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

/// The client's side of one nonblocking TCP connection with several requests in flight.
#[derive(Debug)]
pub struct PipeConn {
    socket: Socket,
    next_id: u64,
    waiting: VecDeque<Waiting>,
    /// The oldest request's reply, once its header and body are in, while its payload comes.
    current: Option<Header>,
}

impl PipeConn {
    /// Takes over a connected stream (made nonblocking here).
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Result<PipeConn, TransportError> {
        Ok(PipeConn {
            socket: Socket::new(stream, peer, Expect::Replies)?,
            next_id: 1,
            waiting: VecDeque::new(),
            current: None,
        })
    }

    /// The descriptor to watch for readiness.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.socket.peer
    }

    /// Requests pushed whose replies have not all come.
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Whether request bytes wait for room in the socket ([`PipeConn::flush`] when it is
    /// writable).
    pub fn wants_write(&self) -> bool {
        self.socket.outbox.has_ready()
    }

    /// When bytes last moved either way (or, for an idle connection, the last push): a
    /// connection with requests in flight that has not moved for the request timeout has a
    /// peer that is stuck or gone.
    pub fn last_progress(&self) -> Instant {
        self.socket.last_progress()
    }

    /// Whether an error broke it: no request may be pushed any more.
    pub fn is_broken(&self) -> bool {
        self.socket.is_broken()
    }

    /// The event loop saw the socket become readable: the next read asks the kernel again.
    pub fn readable(&mut self) {
        self.socket.readable();
    }

    /// Queues a request to `target` (a target's id, or [`crate::wire::ANY_TARGET`]): `body`
    /// is taken (an owned one is not copied); the payload is written from `payload`, and
    /// the reply's payload lands in `dests` (it may be shorter than they are, not longer).
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
        target: u32,
        body: impl Into<Vec<u8>>,
        payload: Vec<Span>,
        dests: Vec<Span>,
        token: u64,
    ) -> Result<(), TransportError> {
        self.socket.check()?;
        let body = body.into();
        let payload_len: u64 = payload.iter().map(|s| s.len as u64).sum();
        if body.len() > MAX_BODY_BYTES as usize || payload_len > MAX_PAYLOAD_BYTES {
            return Err(TransportError::Unexpected {
                peer: self.socket.peer,
                reason: format!(
                    "a request of {} body and {payload_len} payload bytes is over the limits \
                     ({MAX_BODY_BYTES} and {MAX_PAYLOAD_BYTES})",
                    body.len()
                ),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let header = Header::request(opcode, id, &body, payload_len).for_target(target);
        if self.waiting.is_empty() {
            // An idle connection's clock starts with its first request.
            self.socket.restart_clock();
        }
        // SAFETY: the payload spans stay valid until the request ends (this function's
        // contract), and the outbox lets go of them before: once written, or at `fail`.
        unsafe {
            self.socket
                .outbox
                .push(header.encode(), body, payload, None)
        };
        self.waiting.push_back(Waiting { id, token, dests });
        Ok(())
    }

    /// Writes queued requests until all are out ([`Progress::Done`]) or the socket is full
    /// ([`Progress::Pending`]: call again when it is writable). Requests queued together
    /// leave together, up to the slices one call takes.
    pub fn flush(&mut self) -> Result<Progress, TransportError> {
        self.socket.check()?;
        self.socket.write_out(&mut Vec::new())
    }

    /// Reads replies until the socket is empty, appending each whole one to `done`. A
    /// malformed reply, one that is not the oldest request's, or a closed connection is an
    /// error that breaks the connection ([`PipeConn::fail`] then hands back the tokens of
    /// the requests still in flight).
    pub fn recv(&mut self, done: &mut Vec<Finished>) -> Result<(), TransportError> {
        self.socket.check()?;
        loop {
            if let Some(header) = self.current {
                if self.recv_payload(header)? > 0 {
                    return Ok(());
                }
                self.current = None;
                // The header was checked against the oldest request when it came.
                if let Some(w) = self.waiting.pop_front() {
                    done.push(Finished {
                        token: w.token,
                        status: header.status,
                        body: self.socket.decoder.take_body(),
                        payload_len: header.payload_len,
                    });
                }
                continue;
            }
            match self.socket.next_event()? {
                Reading::Pending => return Ok(()),
                Reading::Closed => return Err(self.socket.eof()),
                Reading::Message(header) => {
                    self.reply_arrived(&header)?;
                    self.current = Some(header);
                }
                // A client's decoder refuses unknown opcodes itself.
                Reading::Unknown { request_id, opcode } => {
                    return Err(self.socket.unexpected(format!(
                        "request {request_id} with unknown opcode {opcode} among replies"
                    )));
                }
            }
        }
    }

    /// A reply's header and body are in: it must answer the oldest request in flight and fit
    /// its destinations.
    fn reply_arrived(&mut self, header: &Header) -> Result<(), TransportError> {
        let Some(oldest) = self.waiting.front() else {
            return Err(self.socket.unexpected(format!(
                "a message ({:?} {}) arrived with no request in flight",
                header.opcode, header.request_id
            )));
        };
        if header.request_id != oldest.id {
            let id = oldest.id;
            return Err(self.socket.unexpected(format!(
                "expected the reply to request {id}, got a reply to {} ({:?})",
                header.request_id, header.opcode
            )));
        }
        let room: u64 = oldest.dests.iter().map(|d| d.len as u64).sum();
        if header.payload_len > room {
            return Err(self.socket.unexpected(format!(
                "a reply payload of {} bytes exceeds the {room} bytes given for it",
                header.payload_len
            )));
        }
        Ok(())
    }

    /// Reads the oldest request's reply payload on; how much of it is left.
    fn recv_payload(&mut self, header: Header) -> Result<u64, TransportError> {
        let mut iov = no_iovecs();
        let mut left = self.socket.decoder.payload_left();
        while left > 0 {
            let Some(w) = self.waiting.front() else {
                break;
            };
            // Never past the payload: the bytes after it are the next reply's.
            let got = header.payload_len - left;
            let dests = w.dests.iter().map(|d| (d.ptr, d.len));
            let (used, asked) = iovecs_past(dests, got, left, &mut iov);
            // SAFETY: every view lies inside a destination, the caller's memory, valid and
            // untouched by others until this request ends (push's contract).
            let n = unsafe { self.socket.read_payload(&mut iov, used, asked) }?;
            if n == 0 {
                break;
            }
            left -= n as u64;
        }
        Ok(left)
    }

    /// Breaks the connection (shutting the socket) and hands back the tokens of every
    /// request still in flight, oldest first: their memory is the caller's again.
    pub fn fail(&mut self) -> Vec<u64> {
        self.socket.shutdown();
        self.socket.outbox.clear();
        self.current = None;
        self.waiting.drain(..).map(|w| w.token).collect()
    }
}
