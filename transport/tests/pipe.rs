//! The client's pipelined connection ([`PipeConn`]) over real loopback sockets, driven the
//! way an event loop drives it: wait for readiness (`poll`), say so (`readable`), `flush`
//! while it wants to write, `recv` whatever came.
//!
//! Many requests in flight at once, with payloads from nothing to megabytes in scattered
//! spans both ways; more request bytes than the socket buffers hold; replies trickled a
//! byte at a time; and every way a server can break the connection: replies out of order,
//! replies larger than their destinations, malformed replies, a peer that closes. Requests
//! over the limits are refused before anything is queued.
//!
//! Nothing sleeps to order events: servers step through channels or block on the bytes they
//! need, and every wait is bounded (a test that would hang fails after [`WAIT`] instead).

mod common;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ptr::NonNull;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{WAIT, assert_bytes, poll_fd};
use nacre_transport::client::{ConnectOptions, Connection, Finished, PipeConn, Progress};
use nacre_transport::limits::{HEADER_BYTES, MAX_BODY_BYTES, MAX_PAYLOAD_BYTES};
use nacre_transport::server::{Listener, ServerConnection};
use nacre_transport::wire::{ANY_TARGET, Extent, Header, Opcode, WireError, encode_extents};
use nacre_transport::{Endpoint, Span, TransportError, TransportOp};
use rustix::event::PollFlags;

/// The bound of one [`drive`], a guard against a hang, not a measure: the largest test
/// drives for well under a second.
const DRIVE_BOUND: Duration = Duration::from_secs(60);

/// Bytes of [`UNTOUCHED`] before, between and after the spans of a destination.
const GUARD_BYTES: usize = 8;

/// What destination memory holds before anything lands in it.
const UNTOUCHED: u8 = 0xEE;

// ---------------------------------------------------------------------------------------
// Helpers: sockets, readiness, the driver, memory, messages, servers.
// ---------------------------------------------------------------------------------------

/// A client connection to `addr` made the way the library's clients make theirs
/// ([`Connection::connect`]: Nagle off, large socket buffers), handed over as a [`PipeConn`].
fn connect_pipe(addr: SocketAddr) -> PipeConn {
    let endpoint = Endpoint::parse(&format!("tcp://{addr}")).expect("endpoint");
    let conn = Connection::connect(&endpoint, ConnectOptions::default()).expect("connect");
    let (stream, peer) = match conn.into_tcp_stream() {
        Ok(parts) => parts,
        Err(conn) => panic!("not a TCP connection: {conn:?}"),
    };
    assert_eq!(peer, addr);
    let pipe = PipeConn::new(stream, peer).expect("PipeConn::new");
    assert_eq!(pipe.peer(), addr);
    assert_eq!(pipe.in_flight(), 0);
    assert!(!pipe.wants_write() && !pipe.is_broken());
    pipe
}

/// A client [`PipeConn`] and the server's side of it, accepted by a [`Listener`].
fn server_pair() -> (PipeConn, ServerConnection) {
    let listener =
        Listener::bind(&"tcp://127.0.0.1:0".parse::<Endpoint>().expect("endpoint")).expect("bind");
    let addr = listener.endpoint().socket_addr().expect("listener address");
    // Connecting completes in the listen backlog: accepting after it does not wait.
    let pipe = connect_pipe(addr);
    let server = listener
        .accept(WAIT)
        .expect("accept")
        .expect("the client within WAIT");
    (pipe, server)
}

/// A client [`PipeConn`] and, on a thread, a server answering its requests as [`answer`]
/// says until the client closes; the thread returns the request headers it saw, in order.
fn echo_pair() -> (PipeConn, JoinHandle<Vec<Header>>) {
    let (pipe, mut server) = server_pair();
    let thread = thread::spawn(move || {
        let mut seen = Vec::new();
        let mut body = Vec::new();
        while let Some(request) = server.next_request(&mut body).expect("next_request") {
            let mut payload = vec![0u8; request.header.payload_len as usize];
            server
                .recv_payload(&mut [IoSliceMut::new(&mut payload)])
                .expect("request payload");
            let (status, reply_body, reply_payload) =
                answer(request.header.opcode, &body, &payload);
            server
                .reply(
                    &request,
                    status,
                    &reply_body,
                    &[IoSlice::new(reply_payload)],
                )
                .expect("reply");
            seen.push(request.header);
        }
        seen
    });
    (pipe, thread)
}

/// What the test servers answer a request (status, body, payload): a Ping echoes its body
/// and payload (as net-bench's server does); a Write answers the CRC32C of its payload in
/// the body and echoes the first half of the payload (a reply shorter than the request's
/// destinations); a Sync answers the CRC32C alone; anything else fails with ENOENT.
fn answer<'a>(opcode: Opcode, body: &[u8], payload: &'a [u8]) -> (i32, Vec<u8>, &'a [u8]) {
    let crc = crc32c::crc32c(payload).to_le_bytes().to_vec();
    match opcode {
        Opcode::Ping => (0, body.to_vec(), payload),
        Opcode::Write => (0, crc, &payload[..payload.len() / 2]),
        Opcode::Sync => (0, crc, &[]),
        _ => (libc::ENOENT, Vec::new(), &[]),
    }
}

/// The target the `k`th request of a test names: [`ANY_TARGET`] for every fourth, else `k`.
fn target_of(k: usize) -> u32 {
    if k.is_multiple_of(4) {
        ANY_TARGET
    } else {
        k as u32
    }
}

/// A client [`PipeConn`] and the server's raw blocking socket (Nagle off, so each write
/// leaves at once; reads and writes bounded by [`WAIT`]), to craft replies byte by byte.
fn raw_pair() -> (PipeConn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let pipe = connect_pipe(listener.local_addr().expect("listener address"));
    let (server, _) = listener.accept().expect("accept");
    server.set_nodelay(true).expect("nodelay");
    server.set_read_timeout(Some(WAIT)).expect("read timeout");
    server.set_write_timeout(Some(WAIT)).expect("write timeout");
    (pipe, server)
}

/// What [`drive`] saw on the way.
#[derive(Debug, Default)]
struct Driven {
    /// Replies in `done` when the last request bytes had gone out.
    done_when_flushed: Option<usize>,
}

/// Drives `conn` as an event loop does until `done` holds `want` replies (or an error):
/// `flush` while it wants to write, `recv`, then wait for readiness (readable, and
/// writable while it wants to write) and say `readable` when it is. Panics if a readiness
/// event moved no byte either way, and, so that a connection spinning on readiness cannot
/// hang the test, if it is still going after [`DRIVE_BOUND`].
fn drive(
    conn: &mut PipeConn,
    done: &mut Vec<Finished>,
    want: usize,
) -> Result<Driven, TransportError> {
    let mut driven = Driven::default();
    let mut event: Option<Instant> = None;
    let deadline = Instant::now() + DRIVE_BOUND;
    loop {
        assert!(
            Instant::now() < deadline,
            "still driving after {DRIVE_BOUND:?}: spinning without finishing?"
        );
        if conn.wants_write() {
            let progress = conn.flush()?;
            assert_eq!(
                conn.wants_write(),
                progress == Progress::Pending,
                "wants_write disagrees with flush's {progress:?}"
            );
        }
        if !conn.wants_write() && driven.done_when_flushed.is_none() {
            driven.done_when_flushed = Some(done.len());
        }
        conn.recv(done)?;
        if done.len() >= want {
            return Ok(driven);
        }
        if let Some(at) = event {
            assert!(
                conn.last_progress() >= at,
                "a readiness event moved no byte either way"
            );
        }
        let mut events = PollFlags::IN;
        if conn.wants_write() {
            events |= PollFlags::OUT;
        }
        let revents = poll_fd(conn.fd(), events);
        event = Some(Instant::now());
        if !revents.difference(PollFlags::OUT).is_empty() {
            conn.readable();
        }
    }
}

/// A deterministic, aperiodic byte for offset `i` of stream `seed` (a byte landing at the
/// wrong offset shows).
fn pattern(seed: u64, i: u64) -> u8 {
    ((i ^ (seed << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

/// `len` bytes of stream `seed` of [`pattern`].
fn pattern_bytes(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(seed, i)).collect()
}

/// `src` cut into consecutive spans of `sizes` bytes (adding up to its length), for a
/// request's payload. The pointers are made mutable only because [`Span`] is one type for
/// both directions: a request's payload is only read.
fn source_spans(src: &[u8], sizes: &[usize]) -> Vec<Span> {
    assert_eq!(
        sizes.iter().sum::<usize>(),
        src.len(),
        "spans cover the source"
    );
    let mut at = 0;
    sizes
        .iter()
        .map(|&len| {
            let ptr = src.as_ptr().wrapping_add(at).cast_mut();
            at += len;
            Span { ptr, len }
        })
        .collect()
}

/// Destination memory for a reply's payload: spans of the given sizes, with
/// [`GUARD_BYTES`] before, between and after them, all filled with [`UNTOUCHED`] (a byte
/// written outside a span, or past the payload, shows).
struct Dests {
    buf: Vec<u8>,
    sizes: Vec<usize>,
}

impl Dests {
    fn new(sizes: &[usize]) -> Dests {
        let total = sizes.iter().sum::<usize>() + GUARD_BYTES * (sizes.len() + 1);
        Dests {
            buf: vec![UNTOUCHED; total],
            sizes: sizes.to_vec(),
        }
    }

    /// The spans, for [`PipeConn::push`]. The buffer never grows or moves, so they stay
    /// valid while `self` lives.
    fn spans(&mut self) -> Vec<Span> {
        let base = self.buf.as_mut_ptr();
        let mut at = GUARD_BYTES;
        self.sizes
            .iter()
            .map(|&len| {
                let ptr = base.wrapping_add(at);
                at += len + GUARD_BYTES;
                Span { ptr, len }
            })
            .collect()
    }

    /// The spans' bytes, in order, and the guards' bytes.
    fn split(&self) -> (Vec<u8>, Vec<u8>) {
        let (mut spans, mut guards) = (Vec::new(), Vec::new());
        let mut at = 0;
        for &len in &self.sizes {
            guards.extend_from_slice(&self.buf[at..at + GUARD_BYTES]);
            at += GUARD_BYTES;
            spans.extend_from_slice(&self.buf[at..at + len]);
            at += len;
        }
        guards.extend_from_slice(&self.buf[at..]);
        (spans, guards)
    }

    /// Panics unless the spans start with `payload`, every byte after it and every guard
    /// byte untouched.
    fn assert_holds(&self, payload: &[u8], what: &str) {
        let (spans, guards) = self.split();
        assert!(
            guards.iter().all(|&b| b == UNTOUCHED),
            "{what}: a byte landed outside the destinations"
        );
        assert!(
            spans.len() >= payload.len(),
            "{what}: payload over the room"
        );
        assert_bytes(&spans[..payload.len()], payload, what);
        assert!(
            spans[payload.len()..].iter().all(|&b| b == UNTOUCHED),
            "{what}: a byte landed past the {} payload bytes",
            payload.len()
        );
    }

    /// Panics if a guard byte changed.
    fn assert_guards(&self, what: &str) {
        let (_, guards) = self.split();
        assert!(
            guards.iter().all(|&b| b == UNTOUCHED),
            "{what}: a byte landed outside the destinations"
        );
    }
}

/// A whole reply on the wire, built as [`ServerConnection::reply`] builds it.
fn reply_bytes(request: &Header, status: i32, body: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Header::response(request, status, body, payload.len() as u64)
        .encode()
        .to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(payload);
    out
}

/// Recomputes a hand-edited header's checksum (the last 4 bytes, CRC32C of the header with
/// them zero), so that only the edited field is wrong.
fn reseal(header: &mut [u8; HEADER_BYTES]) {
    header[44..48].fill(0);
    let crc = crc32c::crc32c(header);
    header[44..48].copy_from_slice(&crc.to_le_bytes());
}

/// A request as a raw server read it.
#[derive(Debug)]
struct Received {
    header: Header,
    body: Vec<u8>,
    payload: Vec<u8>,
}

/// The raw server reads one whole request, checked.
fn read_request(server: &mut TcpStream) -> Received {
    let mut head = [0u8; HEADER_BYTES];
    server.read_exact(&mut head).expect("request header");
    let header = Header::decode(&head).expect("a valid request header");
    assert!(!header.is_response(), "a response where a request was due");
    let mut body = vec![0u8; header.body_len as usize];
    server.read_exact(&mut body).expect("request body");
    header.check_body(&body).expect("request body checksum");
    let mut payload = vec![0u8; header.payload_len as usize];
    server.read_exact(&mut payload).expect("request payload");
    Received {
        header,
        body,
        payload,
    }
}

/// The reply a well-behaved server gives `r` (an echo, as [`answer`] gives a Ping).
fn echo(r: &Received) -> Vec<u8> {
    reply_bytes(&r.header, 0, &r.body, &r.payload)
}

// ---------------------------------------------------------------------------------------
// Many requests in flight.
// ---------------------------------------------------------------------------------------

/// Sixteen requests pushed together, payloads of 0 bytes to 3 MiB in spans of all sizes
/// (empty ones, more than one call takes), leave with one flush pass and come back in order:
/// each with its token, status, body and payload length, its payload in its destinations
/// and nothing outside them, nor past a reply shorter than they are.
#[test]
fn sixteen_requests_pipelined_come_back_in_order_into_their_destinations() {
    let mib = 1 << 20;
    // (opcode, payload span sizes, destination span sizes); answer() says what comes back.
    let plan: Vec<(Opcode, Vec<usize>, Vec<usize>)> = vec![
        (Opcode::Ping, vec![], vec![]),
        (Opcode::Ping, vec![1], vec![1]),
        (Opcode::Ping, vec![0, 1, 0], vec![0, 1, 0]),
        (Opcode::Ping, vec![4096], vec![4096]),
        (Opcode::Ping, vec![1000, 0, 3096], vec![1, 4095]),
        // Half comes back: 2 KiB into 4 KiB.
        (Opcode::Write, vec![4096], vec![4096]),
        (Opcode::Ping, vec![mib], vec![mib / 2, mib / 2]),
        (Opcode::Ping, vec![3 * mib - 5, 5], vec![7, 3 * mib - 7]),
        // Fails with ENOENT: nothing lands.
        (Opcode::Stat, vec![], vec![64]),
        (Opcode::Ping, vec![100], vec![1, 0, 30, 69]),
        // 1.5 MiB back into 3 MiB.
        (Opcode::Write, vec![mib; 3], vec![3 * mib]),
        // More spans than one system call takes, both ways, and more room than needed.
        (Opcode::Ping, vec![1000; 100], vec![1500; 70]),
        (Opcode::Ping, vec![10], vec![20]),
        // Half of one byte: an empty reply payload.
        (Opcode::Write, vec![1], vec![1]),
        (Opcode::Ping, vec![mib + 1], vec![mib + 1]),
        (Opcode::Ping, vec![2], vec![2]),
    ];
    assert_eq!(plan.len(), 16);
    let bodies: Vec<Vec<u8>> = (0..plan.len())
        .map(|k| match k % 3 {
            0 => Vec::new(),
            // Longer than the input buffer: the body arrives over several reads.
            1 if k == 10 => pattern_bytes(1000, 10_000),
            1 => {
                let mut body = Vec::new();
                encode_extents(
                    &[Extent {
                        object_id: k as u64,
                        offset_bytes: 4096 * k as u64,
                        len: 1 + k as u64,
                    }],
                    &mut body,
                );
                body
            }
            _ => format!("request {k}").into_bytes(),
        })
        .collect();
    let sources: Vec<Vec<u8>> = plan
        .iter()
        .enumerate()
        .map(|(k, (_, sizes, _))| pattern_bytes(k as u64, sizes.iter().sum()))
        .collect();
    let mut dests: Vec<Dests> = plan.iter().map(|(_, _, d)| Dests::new(d)).collect();

    let (mut conn, server) = echo_pair();
    for (k, (opcode, sizes, _)) in plan.iter().enumerate() {
        let payload = source_spans(&sources[k], sizes);
        let into = dests[k].spans();
        // SAFETY: the payload spans point into `sources[k]` (only read) and the
        // destinations into `dests[k]`'s buffer; both were made before `conn`, so they
        // outlive it, and neither is touched until every reply has come.
        // Requests name their targets (every fourth one none), as a client's to a server of
        // several targets do.
        unsafe {
            conn.push(
                *opcode,
                target_of(k),
                bodies[k].as_slice(),
                payload,
                into,
                100 + k as u64,
            )
        }
        .expect("push");
    }
    assert_eq!(conn.in_flight(), 16);
    assert!(conn.wants_write(), "nothing leaves before flush");

    let mut done = Vec::new();
    let driven = drive(&mut conn, &mut done, plan.len()).expect("every reply");
    assert_eq!(done.len(), 16, "no reply beyond the requests");
    assert_eq!(conn.in_flight(), 0);
    assert!(!conn.wants_write() && !conn.is_broken());
    assert!(driven.done_when_flushed.is_some());

    for (k, f) in done.iter().enumerate() {
        let what = format!("request {k}");
        let (opcode, _, _) = &plan[k];
        let (status, body, payload) = answer(*opcode, &bodies[k], &sources[k]);
        assert_eq!(
            f.token,
            100 + k as u64,
            "{what}: token (replies out of order?)"
        );
        assert_eq!(f.status, status, "{what}: status");
        assert_bytes(&f.body, &body, &format!("{what}: body"));
        assert_eq!(
            f.payload_len,
            payload.len() as u64,
            "{what}: payload length"
        );
        dests[k].assert_holds(payload, &what);
    }

    drop(conn);
    let seen = server.join().expect("server thread");
    assert_eq!(seen.len(), 16, "the server saw every request once");
    for (k, h) in seen.iter().enumerate() {
        let (opcode, sizes, _) = &plan[k];
        assert_eq!(h.opcode, *opcode, "request {k}: opcode");
        assert_eq!(h.target, target_of(k), "request {k}: target");
        assert_eq!(h.body_len as usize, bodies[k].len(), "request {k}: body");
        assert_eq!(
            h.payload_len,
            sizes.iter().sum::<usize>() as u64,
            "request {k}: payload length"
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0].request_id < w[1].request_id),
        "request ids rise: {:?}",
        seen.iter().map(|h| h.request_id).collect::<Vec<_>>()
    );
}

/// A thousand 64 KiB requests (62.5 MiB, far more than the socket buffers hold) pushed to a
/// server that reads nothing yet: flush stops short (`Pending`) and resumes, also through
/// requests pushed while one was partly written; the server reads them all before
/// answering any, and every reply then comes back in order with its request's checksum or
/// echoed payload.
#[test]
fn a_thousand_requests_beyond_the_socket_buffers_resume_after_pending() {
    const COUNT: usize = 1000;
    const EACH: usize = 64 * 1024;
    const FIRST: usize = 900;
    // Every hundredth request is a Ping, echoed; the others are Syncs, answered with their
    // payload's CRC32C.
    let opcode = |k: usize| {
        if k % 100 == 99 {
            Opcode::Ping
        } else {
            Opcode::Sync
        }
    };
    let split = |k: usize| match k % 3 {
        0 => vec![EACH],
        1 => vec![1, EACH - 1],
        _ => vec![EACH / 4; 4],
    };
    let source = pattern_bytes(77, COUNT * EACH);
    let bodies: Vec<Vec<u8>> = (0..COUNT)
        .map(|k| {
            let mut body = Vec::new();
            if k % 2 == 1 {
                let e = Extent {
                    object_id: k as u64,
                    offset_bytes: (k * EACH) as u64,
                    len: EACH as u64,
                };
                encode_extents(&[e], &mut body);
            }
            body
        })
        .collect();
    let mut dests: Vec<Dests> = (0..COUNT)
        .map(|k| match opcode(k) {
            Opcode::Ping => Dests::new(&[EACH - 3, 3]),
            _ => Dests::new(&[]),
        })
        .collect();

    let (mut conn, mut server) = server_pair();
    let (go, gate) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        gate.recv_timeout(WAIT).expect("the client's go-ahead");
        let mut body = Vec::new();
        let mut payload = vec![0u8; EACH];
        let mut answers = Vec::with_capacity(COUNT);
        for k in 0..COUNT {
            let request = server
                .next_request(&mut body)
                .expect("next_request")
                .unwrap_or_else(|| panic!("the client closed before request {k}"));
            assert_eq!(request.header.payload_len, EACH as u64, "request {k}");
            server
                .recv_payload(&mut [IoSliceMut::new(&mut payload)])
                .expect("request payload");
            let (status, reply_body, reply_payload) =
                answer(request.header.opcode, &body, &payload);
            answers.push((request, status, reply_body, reply_payload.to_vec()));
        }
        for (request, status, body, payload) in &answers {
            server
                .reply(request, *status, body, &[IoSlice::new(payload)])
                .expect("reply");
        }
        assert!(
            server.next_request(&mut body).expect("the end").is_none(),
            "nothing after the thousandth request"
        );
        answers.len()
    });

    let push = |conn: &mut PipeConn, dests: &mut [Dests], k: usize| {
        let payload = source_spans(&source[k * EACH..(k + 1) * EACH], &split(k));
        let into = dests[k].spans();
        // SAFETY: the payload spans point into `source` (only read) and the destinations
        // into `dests[k]`'s buffer; both were made before `conn`, so they outlive it, and
        // neither is touched until every reply has come.
        unsafe {
            conn.push(
                opcode(k),
                ANY_TARGET,
                bodies[k].as_slice(),
                payload,
                into,
                k as u64,
            )
        }
        .expect("push");
    };
    for k in 0..FIRST {
        push(&mut conn, &mut dests, k);
    }
    assert_eq!(conn.in_flight(), FIRST);
    // The server reads nothing yet, and 56 MiB is more than both socket buffers hold.
    assert_eq!(conn.flush().expect("flush"), Progress::Pending);
    assert!(conn.wants_write());
    let mut done = Vec::new();
    conn.recv(&mut done).expect("recv with nothing to read");
    assert!(done.is_empty());
    // Queued behind a request that is partly written.
    for k in FIRST..COUNT {
        push(&mut conn, &mut dests, k);
    }
    assert_eq!(conn.in_flight(), COUNT);
    go.send(()).expect("go");

    let driven = drive(&mut conn, &mut done, COUNT).expect("every reply");
    assert_eq!(
        driven.done_when_flushed,
        Some(0),
        "a reply before all the requests were out"
    );
    assert_eq!(done.len(), COUNT);
    assert_eq!(conn.in_flight(), 0);
    assert!(!conn.wants_write() && !conn.is_broken());
    for (k, f) in done.iter().enumerate() {
        let what = format!("request {k}");
        let sent = &source[k * EACH..(k + 1) * EACH];
        let (status, body, payload) = answer(opcode(k), &bodies[k], sent);
        assert_eq!(f.token, k as u64, "{what}: token (replies out of order?)");
        assert_eq!(f.status, status, "{what}: status");
        assert_eq!(f.body, body, "{what}: body (the payload's checksum)");
        assert_eq!(
            f.payload_len,
            payload.len() as u64,
            "{what}: payload length"
        );
        dests[k].assert_holds(payload, &what);
    }

    drop(conn);
    assert_eq!(server.join().expect("server thread"), COUNT);
}

/// Two replies sent a byte at a time are assembled across as many `recv` calls: header,
/// body and payload (into scattered destinations) each resume where they stopped, and each
/// reply finishes with its last byte, not before.
#[test]
fn replies_trickled_a_byte_at_a_time_are_assembled_across_recv_calls() {
    let source = pattern_bytes(5, 20);
    let mut first = Dests::new(&[3, 0, 17]);
    let mut second = Dests::new(&[1]);
    let (mut conn, mut server) = raw_pair();
    let (go, next) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let a = read_request(&mut server);
        let b = read_request(&mut server);
        let reversed: Vec<u8> = a.payload.iter().rev().copied().collect();
        let mut bytes = reply_bytes(&a.header, 0, b"stored", &reversed);
        bytes.extend(reply_bytes(&b.header, libc::EIO, b"", &[0x42]));
        for byte in &bytes {
            next.recv_timeout(WAIT).expect("the client's go-ahead");
            server
                .write_all(std::slice::from_ref(byte))
                .expect("one byte");
        }
        (a, b, server)
    });

    // SAFETY: the payload spans point into `source` (only read), the destinations into
    // `first`'s and `second`'s buffers; all were made before `conn`, so they outlive it,
    // and none is touched until both replies have come.
    unsafe {
        conn.push(
            Opcode::Write,
            ANY_TARGET,
            b"trickle",
            source_spans(&source, &[12, 8]),
            first.spans(),
            1,
        )
        .expect("push");
        conn.push(Opcode::Ping, ANY_TARGET, b"", vec![], second.spans(), 2)
            .expect("push");
    }
    assert_eq!(conn.flush().expect("flush"), Progress::Done);

    let first_len = HEADER_BYTES + 6 + 20;
    let total = first_len + HEADER_BYTES + 1;
    let mut done = Vec::new();
    for i in 1..=total {
        go.send(()).expect("go");
        poll_fd(conn.fd(), PollFlags::IN);
        conn.readable();
        conn.recv(&mut done).expect("recv");
        let finished = usize::from(i >= first_len) + usize::from(i == total);
        assert_eq!(done.len(), finished, "after byte {i} of {total}");
        assert_eq!(conn.in_flight(), 2 - finished, "after byte {i} of {total}");
    }
    let (a, b, _server) = server.join().expect("server thread");
    assert_eq!(a.payload, source);
    assert_eq!(
        (a.body.as_slice(), b.body.as_slice()),
        (&b"trickle"[..], &b""[..])
    );

    assert_eq!(
        (done[0].token, done[0].status, done[0].payload_len),
        (1, 0, 20)
    );
    assert_eq!(done[0].body, b"stored");
    let reversed: Vec<u8> = source.iter().rev().copied().collect();
    first.assert_holds(&reversed, "the first reply");
    assert_eq!(
        (done[1].token, done[1].status, done[1].payload_len),
        (2, libc::EIO, 1)
    );
    assert!(done[1].body.is_empty());
    second.assert_holds(&[0x42], "the second reply");
}

// ---------------------------------------------------------------------------------------
// Servers that break the connection.
// ---------------------------------------------------------------------------------------

/// The tokens of the three requests [`broken_by`] pushes, oldest first.
const TOKENS: [u64; 3] = [10, 11, 12];

/// What a broken connection left.
struct Outcome {
    error: TransportError,
    done: Vec<Finished>,
    /// Each request's payload.
    sources: Vec<Vec<u8>>,
    /// Each request's destinations.
    dests: Vec<Dests>,
}

/// Pushes three requests (tokens [`TOKENS`]: a Ping of 16 bytes into one destination, a
/// Write of 16 bytes in two spans into two destinations, a Sync with neither), has a raw
/// server read them and write what `script` makes of them (then close the connection if
/// `close`), and drives the client until it fails.
///
/// Checks what every such failure must leave: the replies before it finished, in order;
/// the connection broken, refusing `recv`, `flush` and `push` (queueing nothing), and
/// `fail` handing back the tokens of the rest, oldest first; no byte outside any
/// destination.
fn broken_by(close: bool, script: impl FnOnce(&[Received]) -> Vec<u8> + Send + 'static) -> Outcome {
    let plan: [(Opcode, &str, &[usize], &[usize]); 3] = [
        (Opcode::Ping, "first", &[16], &[16]),
        (Opcode::Write, "second", &[9, 7], &[5, 11]),
        (Opcode::Sync, "", &[], &[]),
    ];
    let sources: Vec<Vec<u8>> = (0..3)
        .map(|k| pattern_bytes(TOKENS[k], plan[k].2.iter().sum()))
        .collect();
    let mut dests: Vec<Dests> = plan.iter().map(|p| Dests::new(p.3)).collect();

    let (mut conn, mut server) = raw_pair();
    let server = thread::spawn(move || {
        let received: Vec<Received> = (0..3).map(|_| read_request(&mut server)).collect();
        server
            .write_all(&script(&received))
            .expect("the scripted bytes");
        let server = if close { None } else { Some(server) };
        (received, server)
    });
    for (k, (opcode, body, sizes, _)) in plan.iter().enumerate() {
        let payload = source_spans(&sources[k], sizes);
        let into = dests[k].spans();
        // SAFETY: the payload spans point into `sources[k]` (only read) and the
        // destinations into `dests[k]`'s buffer; both were made before `conn`, so they
        // outlive it, and neither is touched until `fail` has handed every token back.
        unsafe {
            conn.push(
                *opcode,
                ANY_TARGET,
                body.as_bytes(),
                payload,
                into,
                TOKENS[k],
            )
        }
        .expect("push");
    }

    let mut done = Vec::new();
    let error = drive(&mut conn, &mut done, usize::MAX).expect_err("the connection broke");
    assert!(conn.is_broken(), "{error} did not break the connection");
    let finished = done.len();
    assert!(finished <= 3, "{finished} replies to 3 requests");
    let tokens: Vec<u64> = done.iter().map(|f| f.token).collect();
    assert_eq!(tokens, TOKENS[..finished], "the replies before {error}");
    assert_eq!(conn.in_flight(), 3 - finished);

    // Nothing but fail is taken any more.
    assert!(matches!(
        conn.recv(&mut done),
        Err(TransportError::Broken { .. })
    ));
    assert_eq!(done.len(), finished);
    assert!(matches!(conn.flush(), Err(TransportError::Broken { .. })));
    // SAFETY: a request with no spans names no memory.
    let refused = unsafe { conn.push(Opcode::Ping, ANY_TARGET, b"", vec![], vec![], 99) };
    assert!(matches!(refused, Err(TransportError::Broken { .. })));
    assert_eq!(
        conn.in_flight(),
        3 - finished,
        "a refused push queued nothing"
    );

    assert_eq!(
        conn.fail(),
        TOKENS[finished..],
        "the tokens in flight, oldest first"
    );
    assert_eq!(conn.in_flight(), 0);
    assert!(!conn.wants_write());
    assert_eq!(conn.fail(), Vec::<u64>::new(), "every token came back once");
    // SAFETY: a request with no spans names no memory.
    let refused = unsafe { conn.push(Opcode::Ping, ANY_TARGET, b"", vec![], vec![], 99) };
    assert!(matches!(refused, Err(TransportError::Broken { .. })));
    assert!(matches!(
        conn.recv(&mut done),
        Err(TransportError::Broken { .. })
    ));
    assert_eq!(conn.in_flight(), 0);

    for (k, d) in dests.iter().enumerate() {
        d.assert_guards(&format!("request {k} after {error}"));
    }
    let (received, _server) = server.join().expect("server thread");
    for (k, r) in received.iter().enumerate() {
        assert_eq!(r.header.opcode, plan[k].0, "request {k}");
        assert_eq!(r.body, plan[k].1.as_bytes(), "request {k}");
        assert_eq!(r.payload, sources[k], "request {k}");
    }
    Outcome {
        error,
        done,
        sources,
        dests,
    }
}

/// What a raw server writes, made from the requests it read.
type Script = fn(&[Received]) -> Vec<u8>;

/// A case of a broken server: what it does, how many replies finish before the error, and
/// its script.
type Case = (&'static str, usize, Script);

/// Checks that the `k`th reply of `o` finished as the echo of its request.
fn assert_echoed(o: &Outcome, k: usize) {
    let f = &o.done[k];
    assert_eq!((f.token, f.status), (TOKENS[k], 0), "reply {k}");
    assert_eq!(f.payload_len, o.sources[k].len() as u64, "reply {k}");
    o.dests[k].assert_holds(&o.sources[k], &format!("reply {k}"));
}

/// A reply that does not answer the oldest request in flight (a later one's, an id never
/// sent, a request instead of a reply, one more reply than requests) is `Unexpected` and
/// breaks the connection; the replies before it stand.
#[test]
fn a_reply_that_is_not_the_oldest_requests_breaks_the_connection() {
    let cases: Vec<Case> = vec![
        ("the second request's reply first", 0, |r| echo(&r[1])),
        ("an id never sent", 0, |r| {
            let mut h = r[0].header;
            h.request_id = r[2].header.request_id + 100;
            reply_bytes(&h, 0, b"", b"")
        }),
        ("a request with the oldest id", 0, |r| {
            Header::request(Opcode::Ping, r[0].header.request_id, b"", 0)
                .encode()
                .to_vec()
        }),
        ("an error reply, then the third request's reply", 1, |r| {
            let mut bytes = Header::error_reply(r[0].header.request_id, libc::EOPNOTSUPP)
                .encode()
                .to_vec();
            bytes.extend(echo(&r[2]));
            bytes
        }),
        ("every reply, then the last again", 3, |r| {
            [echo(&r[0]), echo(&r[1]), echo(&r[2]), echo(&r[2])].concat()
        }),
    ];
    for (what, finished, script) in cases {
        let o = broken_by(false, script);
        assert!(
            matches!(o.error, TransportError::Unexpected { .. }),
            "{what}: {:?}",
            o.error
        );
        assert_eq!(o.error.errno(), libc::EPROTO, "{what}");
        assert_eq!(o.done.len(), finished, "{what}");
        match finished {
            1 => {
                // The error reply finished the first request with its status, and nothing
                // landed in its destination.
                let f = &o.done[0];
                assert_eq!((f.token, f.status), (TOKENS[0], libc::EOPNOTSUPP), "{what}");
                assert!(f.body.is_empty() && f.payload_len == 0, "{what}");
                o.dests[0].assert_holds(&[], what);
            }
            3 => (0..3).for_each(|k| assert_echoed(&o, k)),
            _ => {}
        }
    }
}

/// A reply announcing more payload than its request's destinations hold is `Unexpected`,
/// breaks the connection, and writes nothing outside them (nor, refused at its header,
/// anything in them).
#[test]
fn a_reply_payload_larger_than_its_destinations_breaks_the_connection() {
    let cases: Vec<Case> = vec![
        ("17 bytes for one destination of 16", 0, |r| {
            reply_bytes(&r[0].header, 0, b"", &[0x55; 17])
        }),
        ("17 bytes for two destinations of 16", 1, |r| {
            [
                echo(&r[0]),
                reply_bytes(&r[1].header, 0, b"ok", &[0x55; 17]),
            ]
            .concat()
        }),
        ("1 byte for no destination", 2, |r| {
            [
                echo(&r[0]),
                echo(&r[1]),
                reply_bytes(&r[2].header, 0, b"", &[0x55]),
            ]
            .concat()
        }),
    ];
    for (what, finished, script) in cases {
        let o = broken_by(false, script);
        assert!(
            matches!(o.error, TransportError::Unexpected { .. }),
            "{what}: {:?}",
            o.error
        );
        assert_eq!(o.done.len(), finished, "{what}");
        for k in 0..finished {
            assert_echoed(&o, k);
        }
        o.dests[finished].assert_holds(&[], what);
    }
}

/// The peer closing with requests in flight — between replies, in a header, a body or a
/// payload — is `PeerClosed` (errno ECONNRESET) and breaks the connection; the replies
/// before it stand.
#[test]
fn the_peer_closing_with_requests_in_flight_is_peer_closed() {
    let cases: Vec<Case> = vec![
        ("no reply", 0, |_| Vec::new()),
        ("one reply", 1, |r| echo(&r[0])),
        ("part of a header", 0, |r| echo(&r[0])[..20].to_vec()),
        ("part of a body", 0, |r| {
            reply_bytes(&r[0].header, 0, b"abcdef", b"")[..HEADER_BYTES + 3].to_vec()
        }),
        ("one reply and part of a payload", 1, |r| {
            let second = echo(&r[1]);
            let cut = second.len() - 8;
            [echo(&r[0]), second[..cut].to_vec()].concat()
        }),
    ];
    for (what, finished, script) in cases {
        let o = broken_by(true, script);
        assert!(
            matches!(
                o.error,
                TransportError::PeerClosed {
                    op: TransportOp::Recv,
                    ..
                }
            ),
            "{what}: {:?}",
            o.error
        );
        assert_eq!(o.error.errno(), libc::ECONNRESET, "{what}");
        assert_eq!(o.done.len(), finished, "{what}");
        for k in 0..finished {
            assert_echoed(&o, k);
        }
    }
}

/// An idle connection (nothing in flight) that becomes readable is read, as the event loop
/// reads it, and ends: the peer closing is `PeerClosed`, a message nothing asked for is
/// `Unexpected`; either breaks it, and `fail` has no token to hand back.
#[test]
fn an_idle_connection_that_becomes_readable_ends() {
    let (mut conn, server) = raw_pair();
    let mut done = Vec::new();
    conn.recv(&mut done).expect("nothing to read yet");
    drop(server);
    poll_fd(conn.fd(), PollFlags::IN);
    conn.readable();
    let closed = conn.recv(&mut done);
    assert!(
        matches!(
            closed,
            Err(TransportError::PeerClosed {
                op: TransportOp::Recv,
                ..
            })
        ),
        "{closed:?}"
    );
    assert!(done.is_empty() && conn.is_broken());
    assert_eq!(conn.fail(), Vec::<u64>::new());

    let (mut conn, mut server) = raw_pair();
    let unasked = Header::request(Opcode::Ping, 1, b"", 0);
    server
        .write_all(&reply_bytes(&unasked, 0, b"", b""))
        .expect("a reply nothing asked for");
    poll_fd(conn.fd(), PollFlags::IN);
    conn.readable();
    let unexpected = conn.recv(&mut done);
    assert!(
        matches!(unexpected, Err(TransportError::Unexpected { .. })),
        "{unexpected:?}"
    );
    assert!(done.is_empty() && conn.is_broken());
    assert_eq!(conn.fail(), Vec::<u64>::new());
}

/// A malformed reply (bad magic, header or body checksum, version, flags) is a `Protocol`
/// error naming what was wrong, and breaks the connection; the replies before it stand.
#[test]
fn a_malformed_reply_is_a_protocol_error() {
    fn edited(r: &Received, edit: fn(&mut [u8; HEADER_BYTES])) -> Vec<u8> {
        let mut head = Header::response(&r.header, 0, b"", 0).encode();
        edit(&mut head);
        head.to_vec()
    }
    type Check = fn(&WireError) -> bool;
    let cases: Vec<(&str, usize, Script, Check)> = vec![
        (
            "bad magic",
            0,
            |r| edited(&r[0], |h| h[0] ^= 0xFF),
            |e| matches!(e, WireError::BadMagic { .. }),
        ),
        (
            "a header checksum that does not match",
            0,
            |r| edited(&r[0], |h| h[12] ^= 1),
            |e| matches!(e, WireError::HeaderChecksum { .. }),
        ),
        (
            "a body checksum that does not match",
            0,
            |r| {
                let mut h = Header::response(&r[0].header, 0, b"body", 0);
                h.body_crc32c ^= 1;
                [&h.encode()[..], b"body"].concat()
            },
            |e| matches!(e, WireError::BodyChecksum { .. }),
        ),
        (
            "another wire version",
            0,
            |r| {
                edited(&r[0], |h| {
                    h[4] ^= 0x80;
                    reseal(h);
                })
            },
            |e| matches!(e, WireError::UnsupportedVersion { .. }),
        ),
        (
            "unknown flags",
            0,
            |r| {
                edited(&r[0], |h| {
                    h[11] |= 0x80;
                    reseal(h);
                })
            },
            |e| matches!(e, WireError::UnknownFlags { .. }),
        ),
        (
            "one reply, then bad magic",
            1,
            |r| [echo(&r[0]), edited(&r[1], |h| h[3] ^= 0x01)].concat(),
            |e| matches!(e, WireError::BadMagic { .. }),
        ),
    ];
    for (what, finished, script, check) in cases {
        let o = broken_by(false, script);
        match &o.error {
            TransportError::Protocol { source, .. } => assert!(check(source), "{what}: {source}"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(o.error.errno(), libc::EPROTO, "{what}");
        assert_eq!(o.done.len(), finished, "{what}");
        for k in 0..finished {
            assert_echoed(&o, k);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Requests the client refuses.
// ---------------------------------------------------------------------------------------

/// A request with a body or payload (one span, or several together) over the limits is
/// refused (`Unexpected`) before anything is queued, and the connection stays usable: a
/// request already queued, and one with a body exactly at the limit, go through after.
#[test]
fn requests_over_the_limits_are_refused_and_nothing_is_queued() {
    let small = pattern_bytes(7, 100);
    let at_limit = pattern_bytes(8, MAX_BODY_BYTES as usize);
    let over_limit = vec![0u8; MAX_BODY_BYTES as usize + 1];
    let mut small_dests = Dests::new(&[100]);
    let mut at_limit_dests = Dests::new(&[10]);
    let (mut conn, server) = echo_pair();

    // SAFETY: the payload span points into `small` (only read), the destination into
    // `small_dests`'s buffer; both were made before `conn`, so they outlive it, and
    // neither is touched until its reply has come.
    unsafe {
        conn.push(
            Opcode::Ping,
            ANY_TARGET,
            b"before",
            source_spans(&small, &[100]),
            small_dests.spans(),
            1,
        )
    }
    .expect("push");

    let dangling = NonNull::<u8>::dangling().as_ptr();
    let half = (MAX_PAYLOAD_BYTES / 2) as usize;
    let refusals: Vec<(&str, &[u8], Vec<Span>)> = vec![
        ("a body one byte over", &over_limit, vec![]),
        (
            "a payload span one byte over",
            b"",
            vec![Span {
                ptr: dangling,
                len: MAX_PAYLOAD_BYTES as usize + 1,
            }],
        ),
        (
            "payload spans one byte over together",
            b"",
            vec![
                Span {
                    ptr: dangling,
                    len: half,
                },
                Span {
                    ptr: dangling,
                    len: half + 1,
                },
            ],
        ),
    ];
    for (what, body, payload) in refusals {
        // SAFETY: push refuses a request over the limits before it looks at the memory of
        // its spans, and keeps nothing of a refused request (in_flight and wants_write show
        // nothing was queued), so these spans, dangling and longer than any allocation,
        // are never read or written.
        let refused = unsafe { conn.push(Opcode::Write, ANY_TARGET, body, payload, vec![], 66) };
        assert!(
            matches!(refused, Err(TransportError::Unexpected { .. })),
            "{what}: {refused:?}"
        );
        assert_eq!(conn.in_flight(), 1, "{what} was queued");
        assert!(conn.wants_write(), "{what}");
        assert!(!conn.is_broken(), "{what} broke the connection");
    }

    // SAFETY: the payload span points into `small` (only read), the destination into
    // `at_limit_dests`'s buffer; both were made before `conn`, so they outlive it, and
    // neither is touched until its reply has come.
    unsafe {
        conn.push(
            Opcode::Ping,
            ANY_TARGET,
            at_limit.as_slice(),
            source_spans(&small[..10], &[10]),
            at_limit_dests.spans(),
            2,
        )
    }
    .expect("a body at the limit");
    assert_eq!(conn.in_flight(), 2);

    let mut done = Vec::new();
    drive(&mut conn, &mut done, 2).expect("both replies");
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].token, done[0].status), (1, 0));
    assert_eq!(done[0].body, b"before");
    assert_eq!(done[0].payload_len, 100);
    small_dests.assert_holds(&small, "the request queued before the refusals");
    assert_eq!((done[1].token, done[1].status), (2, 0));
    assert_bytes(&done[1].body, &at_limit, "the body at the limit, echoed");
    assert_eq!(done[1].payload_len, 10);
    at_limit_dests.assert_holds(&small[..10], "the request with a body at the limit");

    drop(conn);
    let seen = server.join().expect("server thread");
    assert_eq!(
        seen.len(),
        2,
        "the refused requests never reached the server"
    );
}
