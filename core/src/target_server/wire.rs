//! The connections a worker's loop drives: TCP ([`StreamConn`]) and, with the `rdma`
//! feature, RDMA ([`RdmaStream`](nacre_transport::server::RdmaStream)), which offer the same
//! nonblocking calls.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::time::Instant;

use nacre_transport::event::Epoll;
use nacre_transport::server::{Incoming, Progress, StreamConn};
use nacre_transport::wire::Header;
use nacre_transport::{Span, TransportError};

/// One client connection of a worker. A connection is moved once, when the acceptor hands
/// it over, then lives in its worker's table: the variants' sizes differ, and it does not
/// matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Wire {
    Tcp(StreamConn),
    Rdma(Box<nacre_transport::server::RdmaStream>),
}

/// Calls the same method on either kind.
macro_rules! either {
    ($self:expr, $c:ident => $e:expr) => {
        match $self {
            Wire::Tcp($c) => $e,
            Wire::Rdma($c) => $e,
        }
    };
}

impl Wire {
    /// Adds the connection's descriptors to `epoll` under `token`.
    pub(super) fn watch(&self, epoll: &Epoll, token: u64) -> std::io::Result<()> {
        match self {
            Wire::Tcp(s) => epoll.add(s.fd(), token, true),
            Wire::Rdma(s) => {
                let [cq, cm] = s.fds();
                epoll.add(cq, token, false)?;
                epoll
                    .add(cm, token, false)
                    .inspect_err(|_| epoll.remove(cq))
            }
        }
    }

    /// Takes the connection's descriptors out of `epoll`.
    pub(super) fn unwatch(&self, epoll: &Epoll) {
        match self {
            Wire::Tcp(s) => epoll.remove(s.fd()),
            Wire::Rdma(s) => s.fds().into_iter().for_each(|fd| epoll.remove(fd)),
        }
    }

    pub(super) fn peer(&self) -> SocketAddr {
        either!(self, s => s.peer())
    }

    pub(super) fn body(&self) -> &[u8] {
        either!(self, s => s.body())
    }

    pub(super) fn last_progress(&self) -> Instant {
        either!(self, s => s.last_progress())
    }

    pub(super) fn mid_message(&self) -> bool {
        either!(self, s => s.mid_message())
    }

    pub(super) fn wants_write(&self) -> bool {
        either!(self, s => s.wants_write())
    }

    /// Whether the replies waiting to go out need a readiness event to move on: always
    /// for TCP (a full socket), and for RDMA while work requests are queued or outstanding
    /// (their completions raise the event).
    pub(super) fn writes_wait_for_an_event(&self) -> bool {
        match self {
            Wire::Tcp(_) => true,
            Wire::Rdma(s) => s.mid_message(),
        }
    }

    pub(super) fn readable(&mut self) {
        either!(self, s => s.readable())
    }

    pub(super) fn recv_request(&mut self) -> Result<Incoming, TransportError> {
        either!(self, s => s.recv_request())
    }

    pub(super) fn recv_payload(
        &mut self,
        dests: &mut [IoSliceMut<'_>],
    ) -> Result<Progress, TransportError> {
        either!(self, s => s.recv_payload(dests))
    }

    pub(super) fn reply(
        &mut self,
        request: &Header,
        status: i32,
        body: Vec<u8>,
        token: u64,
    ) -> Result<(), TransportError> {
        either!(self, s => s.reply(request, status, body, token))
    }

    /// # Safety
    /// As [`StreamConn::reply_with_payload`].
    pub(super) unsafe fn reply_with_payload(
        &mut self,
        request: &Header,
        status: i32,
        body: Vec<u8>,
        payload: Vec<Span>,
        token: u64,
    ) -> Result<(), TransportError> {
        // SAFETY: the caller upholds the contract, which is the same for both kinds.
        either!(self, s => unsafe { s.reply_with_payload(request, status, body, payload, token) })
    }

    pub(super) fn flush(&mut self, sent: &mut Vec<u64>) -> Result<Progress, TransportError> {
        either!(self, s => s.flush(sent))
    }
}
