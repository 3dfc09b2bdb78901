//! A server's RDMA connection for an event loop: the nonblocking counterpart of
//! [`StreamConn`](crate::server::StreamConn), driven from one thread with many others.
//!
//! Nothing here sleeps. The loop watches [`RdmaStream::fds`] (the completion channel and the
//! rdmacm channel) and calls in when either is ready, or when it has a reply to give; each
//! call first takes the completions and events that arrived, then moves on as far as it can:
//! a request's payload is pulled by RDMA READs posted as the send queue has room, and a reply
//! is its payload's RDMA WRITEs followed by the reply message. The reply message goes once
//! every earlier work request has completed (it is copied into the connection's one send
//! buffer), and its token comes back when it has completed too.
//!
//! A client over RDMA has one call at a time on a connection (its request's descriptors are
//! the connection's until the reply), so the stream reads the next request only once the
//! current one is answered.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use super::{LocalPiece, RdmaLink, encode_message, pair_up};
use crate::error::TransportError;
use crate::framer::outbox::Span;
use crate::rdma::{MAX_RDMA_CHUNK_BYTES, Op, RemoteBuf};
use crate::stream::{Incoming, Progress, UNKNOWN_OPCODE_STATUS, log_unknown_opcode};
use crate::wire::{Header, WireError};

/// A work request waiting for room in the send queue.
enum Step {
    /// An RDMA READ into (`pull`) or WRITE from registered region `region`.
    OneSided {
        pull: bool,
        region: usize,
        offset: usize,
        remote: RemoteBuf,
    },
    /// A reply message, encoded when it is posted; `token` (if any) comes back from `flush`
    /// once it has completed.
    Message {
        header: Header,
        body: Vec<u8>,
        token: Option<u64>,
    },
}

/// A server's RDMA connection driven by an event loop (see the module documentation).
pub struct RdmaStream {
    link: RdmaLink,
    body: Vec<u8>,
    /// The request read last and not answered yet.
    current: Option<Header>,
    /// Its payload's READs were queued.
    pulling: bool,
    steps: VecDeque<Step>,
    /// Tokens of reply messages posted, not yet known to be complete.
    posted: Vec<u64>,
    last_progress: Instant,
}

impl std::fmt::Debug for RdmaStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaStream")
            .field("peer", &self.link.peer)
            .field("steps", &self.steps.len())
            .finish()
    }
}

impl RdmaStream {
    pub(crate) fn new(link: RdmaLink) -> RdmaStream {
        RdmaStream {
            link,
            body: Vec::new(),
            current: None,
            pulling: false,
            steps: VecDeque::new(),
            posted: Vec::new(),
            last_progress: Instant::now(),
        }
    }

    /// The descriptors to watch for readability (edge-triggered is fine: every call takes
    /// all that is pending and re-arms).
    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        self.link.conn.event_fds()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.link.peer
    }

    /// The body of the current request.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// When work last completed or a request arrived.
    pub fn last_progress(&self) -> Instant {
        self.last_progress
    }

    /// Whether work requests are queued or outstanding: a peer that leaves them so for long
    /// is stuck or gone.
    pub fn mid_message(&self) -> bool {
        !self.steps.is_empty() || self.link.conn.outstanding_sends() > 0
    }

    /// Whether replies are queued or posted and not yet complete.
    pub fn wants_write(&self) -> bool {
        !self.steps.is_empty() || !self.posted.is_empty()
    }

    /// Takes what completed and posts what has room; an error breaks the connection.
    fn progress(&mut self) -> Result<(), TransportError> {
        self.link.check()?;
        match self.link.conn.poll_nonblocking() {
            Ok(true) => self.last_progress = Instant::now(),
            Ok(false) => {}
            Err(e) => return Err(self.link.fail(e)),
        }
        if self.link.conn.is_disconnected() && !self.mid_message() {
            // The peer left with no work request queued or outstanding: a clean end, which
            // `recv_request` reports. Replies posted are done with their memory, delivered
            // or not, so `flush` hands their tokens back.
            return Ok(());
        }
        if let Err(e) = self.link.conn.check_send_failure(Op::Send) {
            return Err(self.link.fail(e));
        }
        self.pump()
    }

    /// Posts queued steps in order while the send queue has room.
    fn pump(&mut self) -> Result<(), TransportError> {
        while let Some(step) = self.steps.front() {
            let posted = match step {
                Step::OneSided {
                    pull,
                    region,
                    offset,
                    remote,
                } => {
                    let local = self.link.regions[*region].region();
                    // SAFETY: the region is the link's, registered while the link lives;
                    // its bytes are a request's staging, which the caller lent (see
                    // `recv_payload` and `reply_with_payload`) until the pull is done or the
                    // reply's token comes back, both of which wait for every work request.
                    unsafe {
                        self.link
                            .conn
                            .post_one_sided(*pull, local, *offset, *remote)
                    }
                }
                // One message at a time on the wire: a reply waiting behind an outstanding
                // send is encoded only once it can go, not again on every pass.
                Step::Message { .. } if self.link.conn.outstanding_sends() > 0 => Ok(false),
                Step::Message { header, body, .. } => {
                    // The link's message scratch, reused: no allocation per reply.
                    encode_message(*header, body, &[], &mut self.link.send_buf);
                    self.link.conn.post_message(&self.link.send_buf)
                }
            };
            match posted {
                Ok(true) => self.last_progress = Instant::now(),
                Ok(false) => break,
                Err(e) => return Err(self.link.fail(e)),
            }
            if let Some(Step::Message {
                token: Some(token), ..
            }) = self.steps.pop_front()
            {
                self.posted.push(token);
            }
        }
        Ok(())
    }

    /// Nothing to do: every call takes what is pending (kept so that an event loop treats
    /// both kinds of connection alike).
    pub fn readable(&mut self) {}

    /// The next request, once the current one is answered: `Pending` until one arrived,
    /// `Closed` when the peer left. A request with an unknown opcode is answered here with
    /// an error reply and skipped.
    pub fn recv_request(&mut self) -> Result<Incoming, TransportError> {
        loop {
            match self.progress() {
                Ok(()) => {}
                Err(TransportError::PeerClosed { .. }) => return Ok(Incoming::Closed),
                Err(e) => return Err(e),
            }
            if self.current.is_some() {
                return Ok(Incoming::Pending);
            }
            if self.link.conn.messages_ready() == 0 {
                if self.link.conn.is_disconnected() {
                    return Ok(Incoming::Closed);
                }
                return Ok(Incoming::Pending);
            }
            match self.link.next_request(&mut self.body) {
                Ok(Some(header)) => {
                    self.current = Some(header);
                    self.pulling = false;
                    self.last_progress = Instant::now();
                    return Ok(Incoming::Request(header));
                }
                Ok(None) => return Ok(Incoming::Pending),
                Err(TransportError::PeerClosed { .. }) => return Ok(Incoming::Closed),
                Err(TransportError::Protocol {
                    source:
                        WireError::UnknownOpcode {
                            opcode, request_id, ..
                        },
                    ..
                }) => {
                    log_unknown_opcode(self.link.peer, opcode);
                    self.steps.push_back(Step::Message {
                        header: Header::error_reply(request_id, UNKNOWN_OPCODE_STATUS),
                        body: Vec::new(),
                        token: None,
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pulls the current request's payload into `dests`: `Pending` until every byte has
    /// landed; call again with the same `dests` until `Done`. Destinations in memory
    /// registered with the link (a listener's shared memory, say) take RDMA READs posted as
    /// the send queue has room; others are filled through the link's staging buffer while
    /// this call waits (see [`RdmaStream::reply_with_payload`]).
    pub fn recv_payload(
        &mut self,
        dests: &mut [IoSliceMut<'_>],
    ) -> Result<Progress, TransportError> {
        let Some(header) = self.current else {
            return Err(TransportError::Unexpected {
                peer: self.link.peer,
                reason: "a payload was asked for with no request read".into(),
            });
        };
        if header.payload_len == 0 {
            return Ok(Progress::Done);
        }
        if !self.pulling {
            let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
            if room != header.payload_len {
                return Err(TransportError::Unexpected {
                    peer: self.link.peer,
                    reason: format!(
                        "{room} bytes of destinations for a payload of {}",
                        header.payload_len
                    ),
                });
            }
            let slices = dests.iter().map(|d| (d.as_ptr() as usize, d.len()));
            if !self.queue_transfer(slices, true) {
                // Outside registered memory: staged, waiting (as `staged_reply`).
                self.link.recv_payload(dests, header.payload_len)?;
                return Ok(Progress::Done);
            }
            self.pulling = true;
        }
        self.progress()?;
        let pulls_left = self
            .steps
            .iter()
            .any(|s| matches!(s, Step::OneSided { pull: true, .. }));
        if pulls_left || self.link.conn.outstanding_sends() > 0 {
            return Ok(Progress::Pending);
        }
        // Every pull has completed, but not necessarily well: a peer that left mid-pull has
        // its READs flushed, which `progress` takes as the clean end of a connection with
        // nothing outstanding. A payload is whole only if the peer is still there and no
        // pull failed; otherwise the request ends here, before its bytes (partly the
        // peer's, partly whatever the staging held before) can reach storage.
        self.link
            .conn
            .check_send_failure(Op::Read)
            .map_err(|e| self.link.fail(e))?;
        Ok(Progress::Done)
    }

    /// Queues the one-sided steps between the registered `slices` and the current request's
    /// descriptors, both walked in order; false (nothing queued) when some slice is not in
    /// registered memory.
    fn queue_transfer(&mut self, slices: impl Iterator<Item = (usize, usize)>, pull: bool) -> bool {
        let mut pieces: Vec<LocalPiece> = std::mem::take(&mut self.link.pieces);
        if !self.link.registered_pieces(slices, &mut pieces) {
            self.link.pieces = pieces;
            return false;
        }
        let steps = &mut self.steps;
        let max = MAX_RDMA_CHUNK_BYTES as usize;
        let Ok(()) = pair_up(&pieces, &self.link.remote, max, |region, offset, remote| {
            steps.push_back(Step::OneSided {
                pull,
                region,
                offset,
                remote,
            });
            Ok::<(), std::convert::Infallible>(())
        });
        self.link.pieces = pieces;
        true
    }

    /// Gives the reply to the current request: a status and a body, with no payload; `token`
    /// comes back from [`RdmaStream::flush`] once it has gone.
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

    /// As [`RdmaStream::reply`], with a payload written (RDMA WRITE) from `payload` into the
    /// memory the request described. A payload outside registered memory (a server whose
    /// pool ran out stages some requests in other memory) goes through the link's staging
    /// buffer while this call waits, bounded by the link's timeout.
    ///
    /// # Safety
    /// Every span of `payload` must stay valid, and written by no one, until
    /// [`RdmaStream::flush`] hands `token` back or the connection is dropped.
    pub unsafe fn reply_with_payload(
        &mut self,
        request: &Header,
        status: i32,
        body: impl Into<Vec<u8>>,
        payload: Vec<Span>,
        token: u64,
    ) -> Result<(), TransportError> {
        self.link.check()?;
        if self.current.map(|h| h.request_id) != Some(request.request_id) {
            return Err(TransportError::Unexpected {
                peer: self.link.peer,
                reason: format!(
                    "a reply was given to request {}, which awaits none",
                    request.request_id
                ),
            });
        }
        let mut body = body.into();
        let (mut status, mut payload) = (status, payload);
        if let Some((too_long, message)) =
            crate::wire::oversized_reply(&self.link.peer, status, body.len())
        {
            (status, body, payload) = (too_long, message, Vec::new());
        }
        let len: u64 = payload.iter().map(|s| s.len as u64).sum();
        if len > 0 {
            self.link.check_reply_room(request, len)?;
            let slices = payload.iter().map(|s| (s.ptr as usize, s.len));
            if !self.queue_transfer(slices, false) {
                // SAFETY: the caller's contract covers the spans until the token comes back,
                // which is after this call.
                let payload: Vec<IoSlice<'_>> = payload
                    .iter()
                    .map(|s| IoSlice::new(unsafe { std::slice::from_raw_parts(s.ptr, s.len) }))
                    .collect();
                return self.staged_reply(request, status, &body, &payload, token);
            }
        }
        self.steps.push_back(Step::Message {
            header: Header::response(request, status, &body, len),
            body,
            token: Some(token),
        });
        self.current = None;
        self.pump()
    }

    /// The reply with a payload outside registered memory: copied through the link's
    /// staging buffer and sent while waiting, as a thread-per-connection server does. Rare,
    /// and it holds up the caller's loop for the transfer.
    fn staged_reply(
        &mut self,
        request: &Header,
        status: i32,
        body: &[u8],
        payload: &[IoSlice<'_>],
        token: u64,
    ) -> Result<(), TransportError> {
        // The request's payload is in (it was pulled before the reply), so nothing queued is
        // this connection's but earlier replies: they go first.
        while !self.steps.is_empty() || self.link.conn.outstanding_sends() > 0 {
            if let Err(e) = self.link.conn.wait_idle(self.link.timeout) {
                return Err(self.link.fail(e));
            }
            self.pump()?;
        }
        self.link.reply(request, status, body, payload)?;
        self.posted.push(token);
        self.current = None;
        self.last_progress = Instant::now();
        Ok(())
    }

    /// Moves the replies on: `Done` once every reply given has completed (their tokens are
    /// pushed to `sent`, their memory the caller's again), `Pending` until then.
    pub fn flush(&mut self, sent: &mut Vec<u64>) -> Result<Progress, TransportError> {
        self.progress()?;
        if !self.steps.is_empty() || self.link.conn.outstanding_sends() > 0 {
            return Ok(Progress::Pending);
        }
        sent.append(&mut self.posted);
        Ok(Progress::Done)
    }
}
