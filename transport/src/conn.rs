//! The one interface over both transports: connect to an [`Endpoint`], make request/response
//! calls whose bulk payload goes out from the caller's memory or lands in the caller's
//! scatter list, and on the server side take requests, receive their payload and reply.
//!
//! A [`Peer`] keeps several connections to one endpoint so that requests from several
//! threads travel in parallel.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::{Endpoint, Scheme};
use crate::error::TransportError;
use crate::limits::{CONNECT_TIMEOUT_MS, MAX_CONNECTIONS_PER_PEER, REQUEST_TIMEOUT_MS};
use crate::stream::StreamConn;
use crate::tcp::{TcpAcceptor, TcpConnection};
use crate::wire::{ANY_TARGET, Header, Opcode};

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// TCP.
    Tcp,
    /// RDMA (verbs).
    Rdma,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Tcp => "tcp",
            Kind::Rdma => "rdma",
        })
    }
}

/// The bulk part of a call.
#[derive(Debug)]
pub enum Bulk<'a, 'b> {
    /// No bulk payload either way.
    None,
    /// The request carries these bytes to the peer.
    Send(&'a [IoSlice<'b>]),
    /// The response's payload lands in these buffers (it may be shorter; see [`Reply`]).
    Recv(&'a mut [IoSliceMut<'b>]),
}

/// A response's status and how much payload it delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// 0, or the errno value the peer answered with.
    pub status: i32,
    /// Payload bytes placed in the caller's buffers.
    pub payload_len: u64,
}

/// Options of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long a send or receive may go without progress.
    pub request_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS),
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
        }
    }
}

#[derive(Debug)]
enum Link {
    Tcp(TcpConnection),
    Rdma(Box<crate::rdma_link::RdmaLink>),
}

impl Link {
    fn kind(&self) -> Kind {
        match self {
            Link::Tcp(_) => Kind::Tcp,
            Link::Rdma(_) => Kind::Rdma,
        }
    }

    /// Whether an idle connection can carry a call: not broken, and (TCP) not closed by the
    /// peer while it sat in a pool.
    fn idle_is_usable(&self) -> bool {
        match self {
            Link::Tcp(t) => t.idle_is_open(),
            Link::Rdma(r) => !r.is_broken(),
        }
    }

    fn is_broken(&self) -> bool {
        match self {
            Link::Tcp(t) => t.is_broken(),
            Link::Rdma(r) => r.is_broken(),
        }
    }

    fn peer(&self) -> SocketAddr {
        match self {
            Link::Tcp(t) => t.peer(),
            Link::Rdma(r) => r.peer(),
        }
    }

    /// The TCP connection, for the calls only TCP has (pipelining).
    // Without the rdma feature the match has one arm; with it, two.
    #[allow(clippy::infallible_destructuring_match)]
    fn tcp_for_pipelining(&mut self) -> Result<&mut TcpConnection, TransportError> {
        let t = match self {
            Link::Tcp(t) => t,
            Link::Rdma(r) => return Err(pipelining_is_tcp_only(r.peer())),
        };
        Ok(t)
    }

    /// # Safety
    /// See [`Connection::register_memory`].
    unsafe fn register_memory(&mut self, ptr: *mut u8, len: usize) -> Result<(), TransportError> {
        match self {
            // TCP moves bytes with the kernel's copy; there is nothing to register.
            Link::Tcp(_) => {
                let _ = (ptr, len);
                Ok(())
            }
            // SAFETY: the caller upholds register_memory's contract.
            Link::Rdma(r) => unsafe { r.register_memory(ptr, len) },
        }
    }

    fn unregister_memory(&mut self, ptr: *mut u8, len: usize) {
        match self {
            Link::Tcp(_) => {
                let _ = (ptr, len);
            }
            Link::Rdma(r) => r.unregister_memory(ptr, len),
        }
    }

    fn staged_bytes(&self) -> u64 {
        match self {
            Link::Tcp(_) => 0,
            Link::Rdma(r) => r.staged_bytes(),
        }
    }

    fn enable_send_zc(&mut self) -> Result<(), TransportError> {
        match self {
            Link::Tcp(t) => t.enable_send_zc(),
            Link::Rdma(_) => Ok(()),
        }
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<(), TransportError> {
        match self {
            Link::Tcp(t) => t.set_timeout(timeout),
            Link::Rdma(r) => {
                r.set_timeout(timeout);
                Ok(())
            }
        }
    }
}

/// A client's connection to a peer.
#[derive(Debug)]
pub struct Connection {
    link: Link,
    endpoint: Endpoint,
    next_request_id: u64,
    /// The target its requests are for (see [`Connection::set_target`]).
    target: u32,
    /// The [`Peer`] registrations this connection carries (see [`Peer::register_memory`]).
    registrations: Vec<Registration>,
}

/// Caller memory registered with a [`Peer`], under the caller's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registration {
    id: u64,
    addr: usize,
    len: usize,
}

/// Decides which transport reaches `endpoint`, and says why.
pub fn choose_kind(endpoint: &Endpoint) -> Result<(Kind, String), TransportError> {
    match endpoint.scheme {
        Scheme::Tcp => Ok((Kind::Tcp, "tcp was asked for".into())),
        // Asked for by name: no probe. The connection's own address and route resolution,
        // bounded by its connect timeout, says what fails if something does; a probe with
        // the short REACH_TIMEOUT_MS refused rdma:// now and then on a busy machine ("no
        // RDMA device reaches", when the resolution was only slow).
        Scheme::Rdma if cfg!(feature = "rdma") => Ok((Kind::Rdma, "rdma was asked for".into())),
        Scheme::Rdma => Err(TransportError::RdmaUnavailable {
            peer: endpoint.to_string(),
            reason: NO_RDMA_IN_BUILD.into(),
        }),
        Scheme::Auto => match rdma_reachability(endpoint) {
            Ok(()) => Ok((Kind::Rdma, "an RDMA device reaches the peer".into())),
            Err(reason) => Ok((Kind::Tcp, reason)),
        },
    }
}

/// Why a build without the `rdma` feature reaches no peer over RDMA.
pub(crate) const NO_RDMA_IN_BUILD: &str = "this build has no RDMA support (feature 'rdma')";

fn rdma_reachability(endpoint: &Endpoint) -> Result<(), String> {
    if !cfg!(feature = "rdma") {
        return Err(NO_RDMA_IN_BUILD.into());
    }
    let addr = endpoint.socket_addr().map_err(|e| e.to_string())?;
    if crate::rdma::can_reach(addr, Duration::from_millis(crate::rdma::REACH_TIMEOUT_MS)) {
        Ok(())
    } else {
        Err(format!("no RDMA device reaches {}", endpoint.host))
    }
}

fn pipelining_is_tcp_only(peer: SocketAddr) -> TransportError {
    TransportError::Unexpected {
        peer,
        reason: "send_request/recv_reply (pipelining) are TCP-only for now; use call over RDMA"
            .into(),
    }
}

impl Connection {
    /// Connects to `endpoint` with the transport its scheme asks for (`auto`: RDMA when a
    /// device reaches the peer, else TCP) and logs the choice on stderr.
    pub fn connect(
        endpoint: &Endpoint,
        options: ConnectOptions,
    ) -> Result<Connection, TransportError> {
        let (kind, why) = choose_kind(endpoint)?;
        if endpoint.scheme == Scheme::Auto {
            crate::log_line!("nacre-transport: {endpoint} uses {kind} ({why})");
        }
        let addr = endpoint.socket_addr()?;
        let link = match kind {
            Kind::Tcp => Link::Tcp(TcpConnection::connect(addr, options.connect_timeout)?),
            Kind::Rdma => {
                let conn = crate::rdma::RdmaConnection::connect(addr, options.connect_timeout)?;
                Link::Rdma(Box::new(crate::rdma_link::RdmaLink::new(
                    conn,
                    options.request_timeout,
                )))
            }
        };
        let mut conn = Connection {
            link,
            endpoint: endpoint.clone(),
            next_request_id: 1,
            target: ANY_TARGET,
            registrations: Vec::new(),
        };
        conn.set_timeout(options.request_timeout)?;
        Ok(conn)
    }

    /// A TCP connection's stream, for a caller that drives it itself (a
    /// [`crate::client::PipeConn`]), between calls (with no reply owed); an RDMA connection comes
    /// back as it is.
    pub fn into_tcp_stream(self) -> Result<(std::net::TcpStream, SocketAddr), Box<Connection>> {
        match self.link {
            Link::Tcp(t) => Ok(t.into_parts()),
            link @ Link::Rdma(_) => Err(Box::new(Connection { link, ..self })),
        }
    }

    /// The transport this connection uses.
    pub fn kind(&self) -> Kind {
        self.link.kind()
    }

    /// The endpoint it was made for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Addresses its requests from now on to `target` (a target's id; [`ANY_TARGET`], the
    /// default, names none).
    pub fn set_target(&mut self, target: u32) {
        self.target = target;
    }

    /// Whether an earlier error broke it (a [`Peer`] drops broken connections).
    pub fn is_broken(&self) -> bool {
        self.link.is_broken()
    }

    /// Sets how long a send or receive may go without progress.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), TransportError> {
        self.link.set_timeout(timeout)
    }

    /// Sends large payloads with SEND_ZC (TCP; RDMA sends are zero-copy by nature).
    pub fn enable_send_zc(&mut self) -> Result<(), TransportError> {
        self.link.enable_send_zc()
    }

    /// Registers `[ptr, ptr + len)` for bulk transfers: over RDMA, a call whose payload or
    /// destinations lie in registered memory moves its bytes straight from or into it (the
    /// peer's READ or WRITE), with no staging copy. Over TCP nothing needs registering.
    ///
    /// # Safety
    /// The memory must stay allocated until the connection is dropped. While a call that
    /// names it is in progress the peer may read or write it.
    pub unsafe fn register_memory(
        &mut self,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), TransportError> {
        // SAFETY: the caller upholds the contract above.
        unsafe { self.link.register_memory(ptr, len) }
    }

    /// Bytes this connection copied through its staging buffer (RDMA bulk in unregistered
    /// memory); 0 over TCP, and 0 when every bulk transfer used registered memory.
    pub fn staged_bytes(&self) -> u64 {
        self.link.staged_bytes()
    }

    /// Sends a request and returns its id; with [`Connection::recv_reply`] this lets a
    /// caller keep several requests in flight on one connection (replies come in order).
    /// TCP only for now.
    pub fn send_request(
        &mut self,
        opcode: Opcode,
        body: &[u8],
        payload: &[IoSlice<'_>],
    ) -> Result<u64, TransportError> {
        let t = self.link.tcp_for_pipelining()?;
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let payload_len = payload.iter().map(|s| s.len() as u64).sum();
        let header = Header::request(opcode, request_id, body, payload_len).for_target(self.target);
        t.send(&header, body, payload)?;
        Ok(request_id)
    }

    /// Receives the reply to `request_id`: its body into `body` and its payload into `dests`
    /// (the payload may be shorter than the destinations; longer is an error). TCP only.
    pub fn recv_reply(
        &mut self,
        request_id: u64,
        body: &mut Vec<u8>,
        dests: &mut [IoSliceMut<'_>],
    ) -> Result<Reply, TransportError> {
        let t = self.link.tcp_for_pipelining()?;
        let peer = t.peer();
        let header = match t.recv_header(body) {
            Ok(Some(header)) => header,
            Ok(None) => {
                return Err(TransportError::PeerClosed {
                    op: crate::error::TransportOp::Recv,
                    peer,
                });
            }
            Err(e) => {
                // A reply is still owed on this stream: it cannot carry another call.
                t.shutdown();
                return Err(e);
            }
        };
        if !header.is_response() || header.request_id != request_id {
            t.shutdown();
            return Err(TransportError::Unexpected {
                peer,
                reason: format!(
                    "expected the reply to request {request_id}, got {} {} ({:?})",
                    if header.is_response() {
                        "a reply to"
                    } else {
                        "a request"
                    },
                    header.request_id,
                    header.opcode
                ),
            });
        }
        let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
        if header.payload_len > room {
            t.shutdown();
            return Err(TransportError::Unexpected {
                peer,
                reason: format!(
                    "a reply payload of {} bytes exceeds the {room} bytes given for it",
                    header.payload_len
                ),
            });
        }
        t.recv_payload(dests, header.payload_len)?;
        Ok(Reply {
            status: header.status,
            payload_len: header.payload_len,
        })
    }

    /// A whole call: sends the request (with its bulk payload for [`Bulk::Send`]) and
    /// receives the reply (into the buffers of [`Bulk::Recv`]).
    pub fn call(
        &mut self,
        opcode: Opcode,
        body: &[u8],
        bulk: Bulk<'_, '_>,
        reply_body: &mut Vec<u8>,
    ) -> Result<Reply, TransportError> {
        let (payload, dests): (&[IoSlice<'_>], &mut [IoSliceMut<'_>]) = match bulk {
            Bulk::None => (&[], &mut []),
            Bulk::Send(payload) => (payload, &mut []),
            Bulk::Recv(dests) => (&[], dests),
        };
        match &mut self.link {
            Link::Tcp(_) => {
                let id = self.send_request(opcode, body, payload)?;
                self.recv_reply(id, reply_body, dests)
            }
            Link::Rdma(r) => {
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                let header = Header::request(opcode, request_id, body, 0).for_target(self.target);
                let (payload_len, status) = r.call(header, body, payload, reply_body, dests)?;
                Ok(Reply {
                    status,
                    payload_len,
                })
            }
        }
    }
}

/// How long each half of a listener that takes both TCP and RDMA clients waits in turn.
const ACCEPT_SLICE_MS: u64 = 10;

/// A server's listening endpoint: TCP, RDMA, or both on the same port (`auto`).
pub struct Listener {
    tcp: Option<TcpAcceptor>,
    rdma: Option<crate::rdma::RdmaListener>,
    /// Memory registered once per RDMA device for every connection accepted through it.
    shared: crate::rdma::SharedMemory,
    endpoint: Endpoint,
    request_timeout: Duration,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("endpoint", &self.endpoint)
            .field("tcp", &self.tcp.is_some())
            .field("rdma", &self.accepts_rdma())
            .finish()
    }
}

impl Listener {
    /// Listens on `endpoint` (port 0 picks a free port). `tcp` listens for TCP, `rdma` for
    /// RDMA, and `auto` for TCP and, where an RDMA device has the address, RDMA on the same
    /// port number.
    pub fn bind(endpoint: &Endpoint) -> Result<Listener, TransportError> {
        let addr = endpoint.socket_addr()?;
        let tcp = match endpoint.scheme {
            Scheme::Rdma => None,
            Scheme::Tcp | Scheme::Auto => Some(TcpAcceptor::bind(addr)?),
        };
        let port = tcp.as_ref().map_or(addr.port(), |t| t.local_addr().port());
        let rdma = {
            let at = SocketAddr::new(addr.ip(), port);
            match endpoint.scheme {
                Scheme::Tcp => None,
                // Without the feature, `auto` is TCP only, with nothing to say about it.
                Scheme::Auto if !cfg!(feature = "rdma") => None,
                Scheme::Rdma => Some(crate::rdma::RdmaListener::bind(at)?),
                Scheme::Auto => match crate::rdma::RdmaListener::bind(at) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        crate::log_line!("nacre-transport: {endpoint} listens on tcp only ({e})");
                        None
                    }
                },
            }
        };
        let port = rdma
            .as_ref()
            .filter(|_| tcp.is_none())
            .map_or(port, |r| r.local_addr().port());
        Ok(Listener {
            tcp,
            rdma,
            shared: crate::rdma::SharedMemory::new(),
            endpoint: Endpoint {
                scheme: endpoint.scheme,
                host: addr.ip().to_string(),
                port,
            },
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
        })
    }

    /// The endpoint clients reach it at (with the port picked when 0 was asked for).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether RDMA clients are accepted too.
    pub fn accepts_rdma(&self) -> bool {
        self.rdma.is_some()
    }

    /// Registers `[ptr, ptr + len)` for bulk on every RDMA connection this listener accepts
    /// after, once per RDMA device rather than once per connection (a server's memory
    /// pool): a request payload received into it, or a reply payload sent from it, moves
    /// with RDMA READ or WRITE and no staging copy. The first client through a device
    /// registers it there. Over TCP nothing needs registering, and this does nothing.
    ///
    /// # Safety
    /// The memory must stay allocated while `owner` lives. The listener and every
    /// connection that may move bulk in the memory hold a clone of `owner`.
    pub unsafe fn register_memory<T: Send + Sync + 'static>(
        &self,
        owner: std::sync::Arc<T>,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), TransportError> {
        if self.rdma.is_some() {
            // SAFETY: the caller keeps the memory allocated while `owner` lives.
            unsafe { self.shared.add(owner, ptr, len) }?;
        }
        Ok(())
    }

    /// Registrations of [`Listener::register_memory`]'s memory made so far: one per area
    /// for each RDMA device a client came through (none over TCP).
    pub fn memory_registrations(&self) -> usize {
        self.shared.registrations()
    }

    /// Waits up to `timeout` for a client; `Ok(None)` when none came.
    pub fn accept(&self, timeout: Duration) -> Result<Option<ServerConnection>, TransportError> {
        let deadline = Instant::now() + timeout;
        let both = self.tcp.is_some() && self.accepts_rdma();
        let slice = if both {
            Duration::from_millis(ACCEPT_SLICE_MS)
        } else {
            timeout
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(tcp) = &self.tcp
                && let Some(t) = tcp.accept(left.min(slice), self.request_timeout)?
            {
                return Ok(Some(ServerConnection {
                    link: Link::Tcp(t),
                    pending_payload: 0,
                }));
            }
            if let Some(rdma) = &self.rdma {
                let left = deadline.saturating_duration_since(Instant::now());
                match rdma.accept_shared(&self.shared, left.min(slice)) {
                    Ok((conn, regions)) => {
                        let link = crate::rdma_link::RdmaLink::with_regions(
                            conn,
                            self.request_timeout,
                            regions,
                        );
                        return Ok(Some(ServerConnection {
                            link: Link::Rdma(Box::new(link)),
                            pending_payload: 0,
                        }));
                    }
                    Err(crate::rdma::RdmaError::Timeout { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

/// A request as the server receives it: its header (opcode, id, lengths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The decoded header.
    pub header: Header,
}

/// The server's side of a connection.
#[derive(Debug)]
pub struct ServerConnection {
    link: Link,
    /// Payload bytes of the current request not yet received.
    pending_payload: u64,
}

impl ServerConnection {
    /// The transport.
    pub fn kind(&self) -> Kind {
        self.link.kind()
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.link.peer()
    }

    /// Sends large reply payloads with SEND_ZC (TCP; see [`Connection::enable_send_zc`]).
    pub fn enable_send_zc(&mut self) -> Result<(), TransportError> {
        self.link.enable_send_zc()
    }

    /// Sets how long a receive or send may go without progress (the request timeout by
    /// default). A server may shorten it while it waits for the next request, to notice a
    /// stop, and restore it for the request's payload and reply.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), TransportError> {
        self.link.set_timeout(timeout)
    }

    /// Registers `[ptr, ptr + len)` for bulk transfers: over RDMA, a request payload received into, or
    /// a reply payload sent from, registered memory moves with one RDMA READ or WRITE, with no staging copy. Over TCP nothing needs registering.
    ///
    /// # Safety
    /// The memory must stay allocated until the connection is dropped. While a call that
    /// names it is in progress the peer may read or write it.
    pub unsafe fn register_memory(
        &mut self,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), TransportError> {
        // SAFETY: the caller upholds the contract above.
        unsafe { self.link.register_memory(ptr, len) }
    }

    /// Bytes this connection copied through its staging buffer (RDMA bulk in unregistered
    /// memory); 0 over TCP, and 0 when every bulk transfer used registered memory.
    pub fn staged_bytes(&self) -> u64 {
        self.link.staged_bytes()
    }

    /// A TCP connection, fresh from [`Listener::accept`], as a nonblocking [`StreamConn`] for
    /// an event loop that drives many connections from one thread; any other connection
    /// (RDMA, or one a request was already read from) comes back unchanged.
    pub fn into_stream(self) -> Result<StreamConn, ServerConnection> {
        if self.pending_payload != 0 {
            return Err(self);
        }
        let nonblocking = match &self.link {
            Link::Tcp(t) if t.has_buffered() => false,
            Link::Tcp(t) => t
                .set_nonblocking()
                .inspect_err(|e| crate::log_line!("nacre-transport: {}: {e}", t.peer()))
                .is_ok(),
            Link::Rdma(_) => false,
        };
        if !nonblocking {
            return Err(self);
        }
        match self.link {
            Link::Tcp(t) => {
                let (stream, peer) = t.into_parts();
                Ok(StreamConn::from_nonblocking(stream, peer))
            }
            Link::Rdma(_) => unreachable!("a TCP link, matched above"),
        }
    }

    /// An RDMA connection, fresh from [`Listener::accept`], as a nonblocking
    /// [`RdmaStream`](crate::rdma_link::RdmaStream) for an event loop; any other connection comes back
    /// unchanged: TCP, one a request was already read from, or one with no registered
    /// memory (every transfer of its would be staged while the loop waits).
    pub fn into_rdma_stream(self) -> Result<crate::rdma_link::RdmaStream, ServerConnection> {
        if self.pending_payload != 0 {
            return Err(self);
        }
        match self.link {
            Link::Rdma(r) if r.has_regions() => Ok(crate::rdma_link::RdmaStream::new(*r)),
            link => Err(ServerConnection { link, ..self }),
        }
    }

    /// Waits for the next request and its body. `Ok(None)` when the client closed the
    /// connection; [`TransportError::TimedOut`] when it sent nothing for the request timeout
    /// (the connection stays usable). A request with an unknown opcode is answered here
    /// with an error reply (EOPNOTSUPP) and skipped; a malformed message is an error and
    /// breaks the connection. The previous request's payload, if the handler did not take
    /// it, is discarded first.
    pub fn next_request(&mut self, body: &mut Vec<u8>) -> Result<Option<Request>, TransportError> {
        self.pending_payload = 0;
        // Each link drops a payload the handler did not take and answers unknown opcodes.
        let got = match &mut self.link {
            Link::Tcp(t) => t.recv_header(body),
            Link::Rdma(r) => match r.next_request(body) {
                Ok(Some(h)) => Ok(Some(h)),
                Ok(None) => Err(TransportError::TimedOut {
                    op: crate::error::TransportOp::Recv,
                    peer: r.peer(),
                    timeout_ms: REQUEST_TIMEOUT_MS,
                }),
                Err(TransportError::PeerClosed { .. }) => Ok(None),
                Err(e) => Err(e),
            },
        };
        // Each link refuses a reply where requests are expected.
        let Some(header) = got? else {
            return Ok(None);
        };
        self.pending_payload = header.payload_len;
        Ok(Some(Request { header }))
    }

    /// Receives the current request's payload straight into `dests` (their lengths must add
    /// up to the payload length).
    pub fn recv_payload(&mut self, dests: &mut [IoSliceMut<'_>]) -> Result<(), TransportError> {
        let len = self.pending_payload;
        let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
        if room != len {
            return Err(TransportError::Unexpected {
                peer: self.link.peer(),
                reason: format!(
                    "the request's payload is {len} bytes; destinations of {room} bytes were given"
                ),
            });
        }
        match &mut self.link {
            Link::Tcp(t) => t.recv_payload(dests, len)?,
            Link::Rdma(r) => r.recv_payload(dests, len)?,
        }
        self.pending_payload = 0;
        Ok(())
    }

    /// Replies to `request` with a status, a body and a payload sent from the caller's memory.
    pub fn reply(
        &mut self,
        request: &Request,
        status: i32,
        body: &[u8],
        payload: &[IoSlice<'_>],
    ) -> Result<(), TransportError> {
        let pending = std::mem::take(&mut self.pending_payload);
        let replaced = crate::wire::oversized_reply(&self.peer(), status, body.len());
        let (status, body, payload) = match &replaced {
            Some((status, message)) => (*status, &message[..], &[][..]),
            None => (status, body, payload),
        };
        match &mut self.link {
            Link::Tcp(t) => {
                if pending > 0 {
                    t.skip_payload()?;
                }
                let payload_len = payload.iter().map(|s| s.len() as u64).sum();
                let header = Header::response(&request.header, status, body, payload_len);
                t.send(&header, body, payload)
            }
            Link::Rdma(r) => r.reply(&request.header, status, body, payload),
        }
    }
}

/// Several connections to one endpoint, lent to one caller at a time.
#[derive(Debug)]
pub struct Peer {
    endpoint: Endpoint,
    options: ConnectOptions,
    /// The target its connections' requests are for ([`Peer::for_target`]).
    target: u32,
    max_connections: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

#[derive(Debug)]
struct PoolState {
    idle: Vec<Connection>,
    open: usize,
    /// Callers waiting for a connection to come back (only then is there anyone to wake).
    waiting: usize,
    /// Caller memory every connection should carry registered.
    registrations: Vec<Registration>,
    /// Bytes staged by connections already closed.
    closed_staged_bytes: u64,
}

impl PoolState {
    /// Brings every idle connection's registrations in line with the pool's; the first
    /// failure to register is returned.
    fn sync_idle(&mut self) -> Result<(), TransportError> {
        let mut result = Ok(());
        for conn in &mut self.idle {
            if let Err(e) = conn.sync_registrations(&self.registrations) {
                result = result.and(Err(e));
            }
        }
        result
    }
}

impl Connection {
    /// Brings this connection's registrations in line with the pool's: drops those the
    /// caller unregistered, registers those it lacks. A registration that fails is left
    /// out (its bulk is staged, which is slower but moves the same bytes) and retried the
    /// next time the connection is lent; the first failure is returned.
    fn sync_registrations(&mut self, wanted: &[Registration]) -> Result<(), TransportError> {
        if self.registrations == wanted {
            // Every lend and give-back asks; almost always nothing changed.
            return Ok(());
        }
        let mut held = std::mem::take(&mut self.registrations);
        held.retain(|r| {
            let keep = wanted.contains(r);
            if !keep {
                self.link.unregister_memory(r.addr as *mut u8, r.len);
            }
            keep
        });
        let mut first_error = None;
        for r in wanted {
            if held.contains(r) {
                continue;
            }
            // SAFETY: `Peer::register_memory`'s caller keeps the memory valid until it
            // unregisters it, and unregistering drops it from every connection that is not
            // lent; a lent one is brought in line when it comes back, before it is lent
            // again, and by that contract carries no call naming the memory meanwhile.
            match unsafe { self.link.register_memory(r.addr as *mut u8, r.len) } {
                Ok(()) => held.push(*r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.registrations = held;
        first_error.map_or(Ok(()), Err)
    }
}

impl Peer {
    /// A pool of at most `max_connections` (1 to [`MAX_CONNECTIONS_PER_PEER`]) connections.
    pub fn new(
        endpoint: Endpoint,
        options: ConnectOptions,
        max_connections: usize,
    ) -> Result<Peer, TransportError> {
        if max_connections == 0 || max_connections > MAX_CONNECTIONS_PER_PEER {
            return Err(TransportError::BadEndpoint {
                endpoint: endpoint.to_string(),
                reason: format!(
                    "{max_connections} connections per peer; allowed 1 to {MAX_CONNECTIONS_PER_PEER}"
                ),
            });
        }
        Ok(Peer {
            endpoint,
            options,
            target: ANY_TARGET,
            max_connections,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
                waiting: 0,
                registrations: Vec::new(),
                closed_staged_bytes: 0,
            }),
            returned: Condvar::new(),
        })
    }

    /// The pool with every request of its connections addressed to `target` (a target's
    /// id), as a server of several targets needs to tell them apart.
    pub fn for_target(self, target: u32) -> Peer {
        Peer { target, ..self }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Runs `f` with a connection of the pool: an idle one, a new one while fewer than the
    /// maximum are open, or the first one returned within the request timeout.
    pub fn with_connection<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, TransportError>,
    ) -> Result<T, TransportError> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        self.give_back(conn);
        result
    }

    /// Registers `[ptr, ptr + len)` under the caller's `id` with every connection of the
    /// pool, now and as they are made: over RDMA, bulk in it then moves with no staging copy
    /// (see [`Connection::register_memory`]); over TCP there is nothing to do. Registering
    /// an id again replaces its memory.
    ///
    /// # Safety
    /// The memory must stay allocated until [`Peer::unregister_memory`] with the same id
    /// has returned (or the peer is dropped), and no call may name it after that.
    pub unsafe fn register_memory(
        &self,
        id: u64,
        ptr: *mut u8,
        len: usize,
    ) -> Result<(), TransportError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.registrations.retain(|r| r.id != id);
        state.registrations.push(Registration {
            id,
            addr: ptr as usize,
            len,
        });
        let result = state.sync_idle();
        if result.is_err() {
            state.registrations.retain(|r| r.id != id);
            // Dropping registrations cannot fail; only adding can.
            let _ = state.sync_idle();
        }
        result
    }

    /// Drops registration `id` from every connection not lent out now (lent ones drop it
    /// when they come back). Nothing when there is no such id.
    pub fn unregister_memory(&self, id: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.registrations.retain(|r| r.id != id);
        // Dropping registrations cannot fail; only adding can.
        let _ = state.sync_idle();
    }

    /// Bytes the pool's connections copied through staging buffers (RDMA bulk outside
    /// registered memory), counting closed connections and idle ones (not those lent now).
    pub fn staged_bytes(&self) -> u64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed_staged_bytes + state.idle.iter().map(|c| c.staged_bytes()).sum::<u64>()
    }

    /// Opens a connection of the caller's own to the peer, outside the pool (the pool's
    /// limit does not count it), with the pool's options and transport choice.
    pub fn connect_unpooled(&self) -> Result<Connection, TransportError> {
        let mut conn = Connection::connect(&self.endpoint, self.options)?;
        conn.set_target(self.target);
        Ok(conn)
    }

    /// Lends a connection of the pool (as [`Peer::with_connection`] does) until the
    /// returned guard is dropped; a caller may hold connections to several peers at once.
    /// An idle connection the peer closed meanwhile (it restarted, say) is dropped, not lent.
    pub fn checkout(&self) -> Result<PooledConnection<'_>, TransportError> {
        Ok(PooledConnection {
            peer: self,
            conn: Some(self.take()?),
        })
    }

    fn take(&self) -> Result<Connection, TransportError> {
        let deadline = Instant::now() + self.options.request_timeout;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some(conn) = state.idle.pop() {
                if conn.link.idle_is_usable() {
                    return Ok(conn);
                }
                // The peer closed it while idle (it restarted, say): drop it, try the next.
                state.open -= 1;
                state.closed_staged_bytes += conn.staged_bytes();
            }
            if state.open < self.max_connections {
                state.open += 1;
                drop(state);
                let made = self.connect_unpooled();
                match made {
                    Ok(mut conn) => {
                        // The registrations as they are now, after the connect (one may have
                        // been dropped meanwhile). A registration that fails only means
                        // staging; it is retried at the next lend.
                        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = conn.sync_registrations(&state.registrations);
                        return Ok(conn);
                    }
                    Err(e) => {
                        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                        state.open -= 1;
                        self.wake_one(&state);
                        return Err(e);
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::TimedOut {
                    op: crate::error::TransportOp::Connect,
                    peer: self.endpoint.socket_addr()?,
                    timeout_ms: self.options.request_timeout.as_millis() as u64,
                });
            }
            state.waiting += 1;
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            state.waiting -= 1;
        }
    }

    /// Wakes one caller waiting for a connection, if any (std's condition variable makes a
    /// system call for every notification, waiter or not).
    fn wake_one(&self, state: &PoolState) {
        if state.waiting > 0 {
            self.returned.notify_one();
        }
    }

    fn give_back(&self, mut conn: Connection) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_broken() {
            state.open -= 1;
            state.closed_staged_bytes += conn.staged_bytes();
        } else {
            // A registration that fails only means staging; it is retried at the next lend.
            let _ = conn.sync_registrations(&state.registrations);
            state.idle.push(conn);
        }
        self.wake_one(&state);
    }
}

/// A connection lent by a [`Peer`]; it goes back to the pool when dropped (a broken one is
/// closed instead).
#[derive(Debug)]
pub struct PooledConnection<'a> {
    peer: &'a Peer,
    conn: Option<Connection>,
}

impl std::ops::Deref for PooledConnection<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Some until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for PooledConnection<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for PooledConnection<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.peer.give_back(conn);
        }
    }
}
