//! Messages waiting to be written on a nonblocking TCP connection, in order, gathered as the
//! iovecs of the one `sendmsg` that writes as many of them as are ready (the encoding half of
//! the framer: it does no I/O itself, `crate::socket` makes the call): both sides of a pipelined connection
//! ([`crate::pipe::PipeConn`]'s requests and [`crate::stream::StreamConn`]'s replies) queue
//! here, so that several small messages leave in one system call.
//!
//! A server answers a connection's requests in the order they came, but finishes them in
//! any order: a place is held for each reply when its request is read ([`Outbox::hold`]),
//! filled when the reply is ready ([`Outbox::fill`]), and nothing behind a place still held
//! is written.

use std::collections::VecDeque;

use crate::limits::HEADER_BYTES;
use crate::socket::{IoVecs, cap_send};
use crate::stream::SLICES_PER_CALL;

/// A piece of the caller's memory a message sends from or a reply lands in.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    /// Its first byte.
    pub ptr: *mut u8,
    /// Its length.
    pub len: usize,
}

// SAFETY: a Span is an address and a length; whoever builds one promises (the contract of
// PipeConn::push and StreamConn::reply_with_payload) that the memory stays valid until the
// message is done with, whichever thread ends it.
unsafe impl Send for Span {}
// SAFETY: a shared Span gives only its address and length; reaching the memory is up to
// the one who uses it, on the terms it was lent on (a client's read or write, for
// example, has each batch's spans used by one thread, and batches never overlap).
unsafe impl Sync for Span {}

impl Span {
    /// The `len` bytes at `offset` of this span (clamped to it): the same memory, on the
    /// same terms. Only the address is computed; nothing is reached.
    pub fn piece(self, offset: usize, len: usize) -> Span {
        let offset = offset.min(self.len);
        Span {
            ptr: self.ptr.wrapping_add(offset),
            len: len.min(self.len - offset),
        }
    }
}

/// One message: header, body, then a payload from the caller's memory.
#[derive(Debug)]
struct Message {
    head: [u8; HEADER_BYTES],
    body: Vec<u8>,
    payload: Vec<Span>,
    /// Bytes of it written so far.
    sent: usize,
    /// Given back once the message is all written.
    token: Option<u64>,
    /// `Some(request id)`: the place of a reply to that request, not yet filled.
    awaited: Option<u64>,
}

impl Message {
    fn ready(
        head: [u8; HEADER_BYTES],
        body: Vec<u8>,
        payload: Vec<Span>,
        token: Option<u64>,
    ) -> Message {
        Message {
            head,
            body,
            payload,
            sent: 0,
            token,
            awaited: None,
        }
    }

    fn total(&self) -> usize {
        HEADER_BYTES + self.body.len() + self.payload.iter().map(|s| s.len).sum::<usize>()
    }

    /// Its pieces past `self.sent`, appended to `iov[*used..]` while there is room; false
    /// when it did not all fit.
    fn pieces(&self, iov: &mut IoVecs, used: &mut usize) -> bool {
        let whole = [
            Span {
                ptr: self.head.as_ptr().cast_mut(),
                len: HEADER_BYTES,
            },
            Span {
                ptr: self.body.as_ptr().cast_mut(),
                len: self.body.len(),
            },
        ];
        let mut skip = self.sent;
        for s in whole.iter().chain(&self.payload) {
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            if *used == SLICES_PER_CALL {
                return false;
            }
            iov[*used] = libc::iovec {
                // SAFETY: skip < s.len: inside the span.
                iov_base: unsafe { s.ptr.add(skip) }.cast(),
                iov_len: s.len - skip,
            };
            *used += 1;
            skip = 0;
        }
        true
    }
}

/// The messages of one connection still to be written, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Message>,
}

impl Outbox {
    /// Messages queued or places held.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the oldest message is ready to be written (not a place still held).
    pub(crate) fn has_ready(&self) -> bool {
        self.queue.front().is_some_and(|m| m.awaited.is_none())
    }

    /// Queues a message ready to be written; `token` comes back once it all is.
    ///
    /// # Safety
    /// Every span of `payload` must stay valid, and unwritten by anyone, until `token` is
    /// given back by [`Outbox::write`] or the outbox is cleared or dropped.
    pub(crate) unsafe fn push(
        &mut self,
        head: [u8; HEADER_BYTES],
        body: Vec<u8>,
        payload: Vec<Span>,
        token: Option<u64>,
    ) {
        self.queue
            .push_back(Message::ready(head, body, payload, token));
    }

    /// Holds the place of the reply to request `request_id`, to be filled later.
    pub(crate) fn hold(&mut self, request_id: u64) {
        self.queue.push_back(Message {
            head: [0; HEADER_BYTES],
            body: Vec::new(),
            payload: Vec::new(),
            sent: 0,
            token: None,
            awaited: Some(request_id),
        });
    }

    /// Fills the oldest place held for `request_id` with its reply; false when no place is
    /// held for it.
    ///
    /// # Safety
    /// As for [`Outbox::push`].
    pub(crate) unsafe fn fill(
        &mut self,
        request_id: u64,
        head: [u8; HEADER_BYTES],
        body: Vec<u8>,
        payload: Vec<Span>,
        token: Option<u64>,
    ) -> bool {
        let Some(m) = self
            .queue
            .iter_mut()
            .find(|m| m.awaited == Some(request_id))
        else {
            return false;
        };
        *m = Message::ready(head, body, payload, token);
        true
    }

    /// Drops every message and place held.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// The pieces of the ready messages, from the oldest on, as iovecs in `iov` (how many):
    /// what one write should take, at most [`crate::limits::MAX_SEND_CALL_BYTES`] of it. None
    /// when no message is ready. The iovecs point into the queued messages' headers and
    /// bodies (owned here, valid until [`Outbox::advance`] or [`Outbox::clear`]) and into the
    /// callers' payloads (valid by the contract of `push` and `fill`).
    pub(crate) fn gather(&self, iov: &mut IoVecs) -> usize {
        let mut used = 0;
        for m in &self.queue {
            if m.awaited.is_some() || !m.pieces(iov, &mut used) {
                break;
            }
        }
        cap_send(iov, used)
    }

    /// `n` bytes of what [`Outbox::gather`] gave were written: the messages they complete
    /// leave the outbox, and the token of each is pushed to `done`.
    pub(crate) fn advance(&mut self, mut n: usize, done: &mut Vec<u64>) {
        while n > 0 {
            let Some(m) = self.queue.front_mut() else {
                debug_assert!(false, "{n} bytes written beyond the outbox");
                break;
            };
            let left = m.total() - m.sent;
            if n < left {
                m.sent += n;
                break;
            }
            n -= left;
            if let Some(token) = m.token {
                done.push(token);
            }
            self.queue.pop_front();
        }
    }
}
