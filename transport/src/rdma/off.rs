//! RDMA in a build without the `rdma` feature: the same names as the verbs module and the
//! RDMA link, as uninhabited types. The rest of the crate (and the engine) names RDMA
//! connections, links and errors with no `cfg` gates; here no value of them can exist, so
//! every arm that handles one is statically dead, and the compiler checks that code in both
//! builds. Only the entry points that could make one answer, with an error naming the
//! missing feature.

use std::convert::Infallible;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::conn::NO_RDMA_IN_BUILD;
use crate::error::TransportError;
use crate::framer::outbox::Span;
use crate::stream::{Incoming, Progress};
use crate::wire::Header;

/// How long the `auto://` probe waits (the verbs module's bound; unused without it).
pub const REACH_TIMEOUT_MS: u64 = 1_000;

/// No RDMA device reaches anything in this build.
pub fn can_reach(_addr: SocketAddr, _timeout: Duration) -> bool {
    false
}

/// An error of the RDMA layer: none can happen in this build.
#[derive(Debug)]
pub enum RdmaError {
    /// As the verbs module's timeout; it holds an [`Infallible`], so it cannot be made.
    Timeout {
        /// No value.
        never: Infallible,
    },
}

impl std::fmt::Display for RdmaError {
    fn fmt(&self, _f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RdmaError::Timeout { never } => match never {},
        }
    }
}

impl std::error::Error for RdmaError {}

fn unavailable(peer: SocketAddr) -> TransportError {
    TransportError::RdmaUnavailable {
        peer: format!("rdma://{peer}"),
        reason: NO_RDMA_IN_BUILD.into(),
    }
}

/// An RDMA connection: none in this build.
#[derive(Debug)]
pub enum RdmaConnection {}

impl RdmaConnection {
    /// Refuses: this build has no RDMA.
    pub fn connect(peer: SocketAddr, _timeout: Duration) -> Result<Self, TransportError> {
        Err(unavailable(peer))
    }
}

/// An RDMA listener: none in this build.
#[derive(Debug)]
pub enum RdmaListener {}

impl RdmaListener {
    /// Refuses: this build has no RDMA.
    pub fn bind(addr: SocketAddr) -> Result<Self, TransportError> {
        Err(unavailable(addr))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        match *self {}
    }

    pub(crate) fn accept_shared(
        &self,
        _memory: &SharedMemory,
        _timeout: Duration,
    ) -> Result<(RdmaConnection, Vec<Infallible>), RdmaError> {
        match *self {}
    }
}

/// Memory registered with every RDMA device a listener accepts through: nothing to
/// register with in this build.
#[derive(Debug, Default)]
pub(crate) struct SharedMemory;

impl SharedMemory {
    pub(crate) fn new() -> SharedMemory {
        SharedMemory
    }

    /// # Safety
    /// As the verbs module's: nothing is registered here, so nothing is asked.
    pub(crate) unsafe fn add(
        &self,
        _owner: std::sync::Arc<dyn std::any::Any + Send + Sync>,
        _ptr: *mut u8,
        _len: usize,
    ) -> Result<(), RdmaError> {
        Ok(())
    }

    pub(crate) fn registrations(&self) -> usize {
        0
    }
}

/// The RDMA link under a blocking connection: none in this build.
#[derive(Debug)]
pub(crate) enum RdmaLink {}

impl RdmaLink {
    pub(crate) fn new(conn: RdmaConnection, _timeout: Duration) -> RdmaLink {
        match conn {}
    }

    pub(crate) fn with_regions(
        conn: RdmaConnection,
        _timeout: Duration,
        _regions: Vec<Infallible>,
    ) -> RdmaLink {
        match conn {}
    }

    /// # Safety
    /// As the RDMA link's.
    pub(crate) unsafe fn register_memory(
        &mut self,
        _ptr: *mut u8,
        _len: usize,
    ) -> Result<(), TransportError> {
        match *self {}
    }

    pub(crate) fn unregister_memory(&mut self, _ptr: *mut u8, _len: usize) {
        match *self {}
    }

    pub(crate) fn has_regions(&self) -> bool {
        match *self {}
    }

    pub(crate) fn staged_bytes(&self) -> u64 {
        match *self {}
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        match *self {}
    }

    pub(crate) fn is_broken(&self) -> bool {
        match *self {}
    }

    pub(crate) fn set_timeout(&mut self, _timeout: Duration) {
        match *self {}
    }

    pub(crate) fn call(
        &mut self,
        _header: Header,
        _body: &[u8],
        _payload: &[IoSlice<'_>],
        _reply_body: &mut Vec<u8>,
        _dests: &mut [IoSliceMut<'_>],
    ) -> Result<(u64, i32), TransportError> {
        match *self {}
    }

    pub(crate) fn next_request(
        &mut self,
        _body: &mut Vec<u8>,
    ) -> Result<Option<Header>, TransportError> {
        match *self {}
    }

    pub(crate) fn recv_payload(
        &mut self,
        _dests: &mut [IoSliceMut<'_>],
        _len: u64,
    ) -> Result<(), TransportError> {
        match *self {}
    }

    pub(crate) fn reply(
        &mut self,
        _request: &Header,
        _status: i32,
        _body: &[u8],
        _payload: &[IoSlice<'_>],
    ) -> Result<(), TransportError> {
        match *self {}
    }
}

/// A nonblocking RDMA connection for an event loop: none in this build.
#[derive(Debug)]
pub enum RdmaStream {}

#[allow(missing_docs)] // the verbs build's methods carry the documentation
impl RdmaStream {
    pub(crate) fn new(link: RdmaLink) -> RdmaStream {
        match link {}
    }

    pub fn fds(&self) -> [BorrowedFd<'_>; 2] {
        match *self {}
    }

    pub fn peer(&self) -> SocketAddr {
        match *self {}
    }

    pub fn body(&self) -> &[u8] {
        match *self {}
    }

    pub fn last_progress(&self) -> Instant {
        match *self {}
    }

    pub fn mid_message(&self) -> bool {
        match *self {}
    }

    pub fn wants_write(&self) -> bool {
        match *self {}
    }

    pub fn readable(&mut self) {
        match *self {}
    }

    pub fn recv_request(&mut self) -> Result<Incoming, TransportError> {
        match *self {}
    }

    pub fn recv_payload(
        &mut self,
        _dests: &mut [IoSliceMut<'_>],
    ) -> Result<Progress, TransportError> {
        match *self {}
    }

    pub fn reply(
        &mut self,
        _request: &Header,
        _status: i32,
        _body: Vec<u8>,
        _token: u64,
    ) -> Result<(), TransportError> {
        match *self {}
    }

    /// # Safety
    /// As the verbs build's.
    pub unsafe fn reply_with_payload(
        &mut self,
        _request: &Header,
        _status: i32,
        _body: Vec<u8>,
        _payload: Vec<Span>,
        _token: u64,
    ) -> Result<(), TransportError> {
        match *self {}
    }

    pub fn flush(&mut self, _sent: &mut Vec<u64>) -> Result<Progress, TransportError> {
        match *self {}
    }
}
