//! The one interface over both transports: connect to an [`Endpoint`], make request/response
//! calls whose bulk payload goes out from the caller's memory or lands in the caller's
//! scatter list, and on the server side take requests, receive their payload and reply.
//!
//! A [`Peer`] keeps several connections to one endpoint so that requests from several
//! threads travel in parallel.

use std::io::{IoSlice, IoSliceMut};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::endpoint::{Endpoint, Scheme};
use crate::error::TransportError;
use crate::limits::{CONNECT_TIMEOUT_MS, MAX_CONNECTIONS_PER_PEER, REQUEST_TIMEOUT_MS};
use crate::tcp::{TcpAcceptor, TcpConnection};
use crate::wire::{Header, Opcode, WireError};

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
}

/// A client's connection to a peer.
#[derive(Debug)]
pub struct Connection {
    link: Link,
    endpoint: Endpoint,
    next_request_id: u64,
}

/// Decides which transport reaches `endpoint`, and says why.
pub fn choose_kind(endpoint: &Endpoint) -> Result<(Kind, String), TransportError> {
    match endpoint.scheme {
        Scheme::Tcp => Ok((Kind::Tcp, "tcp was asked for".into())),
        Scheme::Rdma => match rdma_reachability(endpoint) {
            Ok(()) => Ok((Kind::Rdma, "rdma was asked for".into())),
            Err(reason) => Err(TransportError::RdmaUnavailable {
                peer: endpoint.to_string(),
                reason,
            }),
        },
        Scheme::Auto => match rdma_reachability(endpoint) {
            Ok(()) => Ok((Kind::Rdma, "an RDMA device reaches the peer".into())),
            Err(reason) => Ok((Kind::Tcp, reason)),
        },
    }
}

#[cfg(feature = "rdma")]
fn rdma_reachability(endpoint: &Endpoint) -> Result<(), String> {
    let addr = endpoint.socket_addr().map_err(|e| e.to_string())?;
    if crate::rdma::can_reach(addr, Duration::from_millis(CONNECT_TIMEOUT_MS)) {
        Ok(())
    } else {
        Err(format!("no RDMA device reaches {}", endpoint.host))
    }
}

#[cfg(not(feature = "rdma"))]
fn rdma_reachability(_endpoint: &Endpoint) -> Result<(), String> {
    Err("this build has no RDMA support (feature 'rdma')".into())
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
            eprintln!("nacre-transport: {endpoint} uses {kind} ({why})");
        }
        let addr = endpoint.socket_addr()?;
        let link = match kind {
            Kind::Tcp => Link::Tcp(TcpConnection::connect(addr, options.connect_timeout)?),
            Kind::Rdma => {
                return Err(TransportError::RdmaUnavailable {
                    peer: endpoint.to_string(),
                    reason: "the RDMA link is not wired into Connection yet".into(),
                });
            }
        };
        let mut conn = Connection {
            link,
            endpoint: endpoint.clone(),
            next_request_id: 1,
        };
        conn.set_timeout(options.request_timeout)?;
        Ok(conn)
    }

    /// The transport this connection uses.
    pub fn kind(&self) -> Kind {
        match self.link {
            Link::Tcp(_) => Kind::Tcp,
        }
    }

    /// The endpoint it was made for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Whether an earlier error broke it (a [`Peer`] drops broken connections).
    pub fn is_broken(&self) -> bool {
        match &self.link {
            Link::Tcp(t) => t.is_broken(),
        }
    }

    /// Sets how long a send or receive may go without progress.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), TransportError> {
        match &mut self.link {
            Link::Tcp(t) => t.set_timeout(timeout),
        }
    }

    /// Sends a request and returns its id; with [`Connection::recv_reply`] this lets a
    /// caller keep several requests in flight on one connection (replies come in order).
    pub fn send_request(
        &mut self,
        opcode: Opcode,
        body: &[u8],
        payload: &[IoSlice<'_>],
    ) -> Result<u64, TransportError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let payload_len = payload.iter().map(|s| s.len() as u64).sum();
        let header = Header::request(opcode, request_id, body, payload_len);
        match &mut self.link {
            Link::Tcp(t) => t.send(&header, body, payload)?,
        }
        Ok(request_id)
    }

    /// Receives the reply to `request_id`: its body into `body` and its payload into `dests`
    /// (the payload may be shorter than the destinations; longer is an error).
    pub fn recv_reply(
        &mut self,
        request_id: u64,
        body: &mut Vec<u8>,
        dests: &mut [IoSliceMut<'_>],
    ) -> Result<Reply, TransportError> {
        let Link::Tcp(t) = &mut self.link;
        let peer = t.peer();
        let Some(header) = t.recv_header(body)? else {
            return Err(TransportError::PeerClosed {
                op: crate::error::TransportOp::Recv,
                peer,
            });
        };
        if !header.is_response() || header.request_id != request_id {
            t.shutdown();
            return Err(TransportError::Unexpected {
                peer,
                reason: format!(
                    "expected the reply to request {request_id}, got {} {} {}",
                    if header.is_response() {
                        "a reply to"
                    } else {
                        "a request"
                    },
                    header.request_id,
                    format_args!("({:?})", header.opcode)
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
        match bulk {
            Bulk::None => {
                let id = self.send_request(opcode, body, &[])?;
                self.recv_reply(id, reply_body, &mut [])
            }
            Bulk::Send(payload) => {
                let id = self.send_request(opcode, body, payload)?;
                self.recv_reply(id, reply_body, &mut [])
            }
            Bulk::Recv(dests) => {
                let id = self.send_request(opcode, body, &[])?;
                self.recv_reply(id, reply_body, dests)
            }
        }
    }
}

/// A server's listening endpoint.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpAcceptor,
    endpoint: Endpoint,
    request_timeout: Duration,
}

impl Listener {
    /// Listens on `endpoint` (`tcp` or `auto`; port 0 picks a free port).
    pub fn bind(endpoint: &Endpoint) -> Result<Listener, TransportError> {
        if endpoint.scheme == Scheme::Rdma {
            return Err(TransportError::RdmaUnavailable {
                peer: endpoint.to_string(),
                reason: "RDMA listening is not wired into Listener yet".into(),
            });
        }
        let tcp = TcpAcceptor::bind(endpoint.socket_addr()?)?;
        let local = tcp.local_addr();
        Ok(Listener {
            tcp,
            endpoint: Endpoint {
                scheme: endpoint.scheme,
                host: local.ip().to_string(),
                port: local.port(),
            },
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
        })
    }

    /// The endpoint clients reach it at (with the port picked when 0 was asked for).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Waits up to `timeout` for a client; `Ok(None)` when none came.
    pub fn accept(&self, timeout: Duration) -> Result<Option<ServerConnection>, TransportError> {
        Ok(self
            .tcp
            .accept(timeout, self.request_timeout)?
            .map(|t| ServerConnection {
                link: Link::Tcp(t),
                pending_payload: 0,
            }))
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

/// What to do with a request whose opcode the server does not know.
const UNKNOWN_OPCODE_STATUS: i32 = libc::EOPNOTSUPP;

impl ServerConnection {
    /// The transport.
    pub fn kind(&self) -> Kind {
        Kind::Tcp
    }

    /// The client's address.
    pub fn peer(&self) -> std::net::SocketAddr {
        let Link::Tcp(t) = &self.link;
        t.peer()
    }

    /// Waits for the next request and its body. `Ok(None)` when the client closed the
    /// connection. A request with an unknown opcode is answered here with an error reply
    /// (EOPNOTSUPP) and skipped; a malformed message is an error and breaks the connection.
    /// The previous request's payload, if the handler did not take it, is discarded first.
    pub fn next_request(&mut self, body: &mut Vec<u8>) -> Result<Option<Request>, TransportError> {
        let Link::Tcp(t) = &mut self.link;
        if self.pending_payload > 0 {
            t.discard(self.pending_payload)?;
            self.pending_payload = 0;
        }
        loop {
            match t.recv_header(body) {
                Ok(Some(header)) => {
                    if header.is_response() {
                        t.shutdown();
                        return Err(TransportError::Unexpected {
                            peer: t.peer(),
                            reason: format!(
                                "a reply to request {} arrived where requests are expected",
                                header.request_id
                            ),
                        });
                    }
                    self.pending_payload = header.payload_len;
                    return Ok(Some(Request { header }));
                }
                Ok(None) => return Ok(None),
                Err(TransportError::Protocol {
                    source:
                        WireError::UnknownOpcode {
                            opcode,
                            request_id,
                            body_len,
                            payload_len,
                        },
                    ..
                }) => {
                    t.discard(u64::from(body_len) + payload_len)?;
                    eprintln!(
                        "nacre-transport: {} sent unknown opcode {opcode}; answered EOPNOTSUPP",
                        t.peer()
                    );
                    let reply = Header {
                        opcode: Opcode::Error,
                        flags: crate::wire::FLAG_RESPONSE,
                        status: UNKNOWN_OPCODE_STATUS,
                        request_id,
                        body_len: 0,
                        body_crc32c: crc32c::crc32c(&[]),
                        payload_len: 0,
                    };
                    t.send(&reply, &[], &[])?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives the current request's payload straight into `dests` (their lengths must add
    /// up to the payload length).
    pub fn recv_payload(&mut self, dests: &mut [IoSliceMut<'_>]) -> Result<(), TransportError> {
        let Link::Tcp(t) = &mut self.link;
        let len = self.pending_payload;
        let room: u64 = dests.iter().map(|d| d.len() as u64).sum();
        if room != len {
            return Err(TransportError::Unexpected {
                peer: t.peer(),
                reason: format!(
                    "the request's payload is {len} bytes; destinations of {room} bytes were given"
                ),
            });
        }
        t.recv_payload(dests, len)?;
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
        let Link::Tcp(t) = &mut self.link;
        if self.pending_payload > 0 {
            t.discard(self.pending_payload)?;
            self.pending_payload = 0;
        }
        let payload_len = payload.iter().map(|s| s.len() as u64).sum();
        let header = Header::response(&request.header, status, body, payload_len);
        t.send(&header, body, payload)
    }
}

/// Several connections to one endpoint, lent to one caller at a time.
#[derive(Debug)]
pub struct Peer {
    endpoint: Endpoint,
    options: ConnectOptions,
    max_connections: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

#[derive(Debug)]
struct PoolState {
    idle: Vec<Connection>,
    open: usize,
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
            max_connections,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        })
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

    fn take(&self) -> Result<Connection, TransportError> {
        let deadline = Instant::now() + self.options.request_timeout;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(conn);
            }
            if state.open < self.max_connections {
                state.open += 1;
                drop(state);
                let made = Connection::connect(&self.endpoint, self.options);
                if made.is_err() {
                    let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.open -= 1;
                    self.returned.notify_one();
                }
                return made;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TransportError::TimedOut {
                    op: crate::error::TransportOp::Connect,
                    peer: self.endpoint.socket_addr()?,
                    timeout_ms: self.options.request_timeout.as_millis() as u64,
                });
            }
            state = self
                .returned
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_broken() {
            state.open -= 1;
        } else {
            state.idle.push(conn);
        }
        self.returned.notify_one();
    }
}
