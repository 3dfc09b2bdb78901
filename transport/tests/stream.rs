//! The nonblocking server connection ([`StreamConn`]) over real loopback sockets, driven the
//! way an event loop drives it: wait for readiness (`poll`), say so (`readable`), call until
//! `Pending`, carry on.
//!
//! Requests that trickle in a byte at a time, replies far larger than the socket buffers,
//! requests with unknown opcodes, garbage, peers that close early, payloads left untaken,
//! several requests in one read, misuse by the caller, and a real [`Connection`] client
//! served end to end. Then pipelining: many requests read before any reply, replies given
//! in any order leaving in request order (the transport's own error replies in their turn),
//! the bound of requests unanswered, and hundreds of large replies past the socket buffers.
//!
//! A reply's payload memory is overwritten as soon as its token comes back: a token handed
//! back before its bytes were all written shows as wrong bytes at the client.
//!
//! Nothing sleeps to order events: clients and server step each other through channels, and
//! every wait is bounded (a test that would hang fails after [`WAIT`] instead).

mod common;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::BorrowedFd;

use rustix::event::PollFlags;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use common::{WAIT, assert_bytes, poll_fd};
use nacre_transport::client::{Bulk, ConnectOptions, Connection, Kind};
use nacre_transport::limits::INPUT_BUFFER_BYTES;
use nacre_transport::limits::{HEADER_BYTES, MAX_PAYLOAD_BYTES, MAX_PIPELINED_REQUESTS};
use nacre_transport::server::{Incoming, Listener, Progress, StreamConn};
use nacre_transport::wire::{Extent, Header, Opcode, WireError, decode_extents, encode_extents};
use nacre_transport::{Endpoint, Span, TransportError, TransportOp};

// ---------------------------------------------------------------------------------------
// Helpers: sockets, readiness, drivers, messages.
// ---------------------------------------------------------------------------------------

/// What a reply's payload memory is overwritten with once its token is back.
const POISON: u8 = 0xEE;

/// A connected pair over loopback: the server's [`StreamConn`] and the client's blocking
/// socket (Nagle off, so each write leaves at once; reads and writes bounded by [`WAIT`]).
fn pair() -> (StreamConn, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("local addr")).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    client.set_read_timeout(Some(WAIT)).expect("read timeout");
    client.set_write_timeout(Some(WAIT)).expect("write timeout");
    let (server, peer) = listener.accept().expect("accept");
    assert_eq!(peer, client.local_addr().expect("client addr"));
    let conn = StreamConn::new(server, peer).expect("StreamConn::new");
    assert_eq!(conn.peer(), peer);
    (conn, client)
}

/// Waits until `conn`'s socket is readable (or closed), then tells `conn`, as an event loop
/// does on a readiness event.
fn wait_readable(conn: &mut StreamConn) {
    poll_fd(conn.fd(), PollFlags::IN);
    conn.readable();
}

/// Waits until `conn`'s socket has room to write.
fn wait_writable(conn: &StreamConn) {
    poll_fd(conn.fd(), PollFlags::OUT);
}

/// Bytes in `fd`'s receive queue that no one has read yet.
fn bytes_unread(fd: BorrowedFd<'_>) -> usize {
    let n = rustix::io::ioctl_fionread(fd).expect("FIONREAD");
    usize::try_from(n).expect("FIONREAD gives a count")
}

/// Panics if a call made after a readiness event at `event` said `Pending` without moving a
/// byte since: `Pending` means the socket is empty (or full), which the event just denied.
/// This also keeps a driver from spinning forever on such a bug.
fn assert_moved(conn: &StreamConn, event: Instant, what: &str) {
    assert!(
        conn.last_progress() >= event,
        "{what} said Pending right after a readiness event without moving a byte"
    );
}

/// Calls `recv_request` until it gives something other than `Pending`, waiting for input in
/// between. (The transport's own error replies are small: they never wait for the socket.)
fn until_incoming(conn: &mut StreamConn) -> Result<Incoming, TransportError> {
    let mut after_event = None;
    loop {
        match conn.recv_request()? {
            Incoming::Pending => {
                if let Some(event) = after_event {
                    assert_moved(conn, event, "recv_request");
                }
                wait_readable(conn);
                after_event = Some(Instant::now());
            }
            other => return Ok(other),
        }
    }
}

/// The next request's header; panics on anything else.
fn until_request(conn: &mut StreamConn) -> Header {
    match until_incoming(conn).expect("recv_request") {
        Incoming::Request(header) => header,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// Receives the current request's payload into `bufs` (fresh destinations at each call),
/// waiting for input between calls; returns how many times it was `Pending`.
fn until_payload(conn: &mut StreamConn, bufs: &mut [&mut [u8]]) -> Result<usize, TransportError> {
    let mut pendings = 0;
    let mut after_event = None;
    loop {
        let mut dests: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        match conn.recv_payload(&mut dests)? {
            Progress::Pending => {
                if let Some(event) = after_event {
                    assert_moved(conn, event, "recv_payload");
                }
                pendings += 1;
                wait_readable(conn);
                after_event = Some(Instant::now());
            }
            Progress::Done => return Ok(pendings),
        }
    }
}

/// Writes out every reply that is ready, waiting for room between calls: the tokens handed
/// back, in order, and how many times `flush` was `Pending`.
fn until_flushed(conn: &mut StreamConn) -> Result<(Vec<u64>, usize), TransportError> {
    let mut sent = Vec::new();
    let mut pendings = 0;
    let mut after_event = None;
    loop {
        match conn.flush(&mut sent)? {
            Progress::Pending => {
                if let Some(event) = after_event {
                    assert_moved(conn, event, "flush");
                }
                pendings += 1;
                wait_writable(conn);
                after_event = Some(Instant::now());
            }
            Progress::Done => return Ok((sent, pendings)),
        }
    }
}

/// The tokens of the replies [`until_flushed`] wrote out.
fn flushed(conn: &mut StreamConn) -> Vec<u64> {
    until_flushed(conn).expect("flush").0
}

/// `src` cut into consecutive spans of `sizes` bytes (adding up to its length), for a
/// reply's payload. `src` must not move or be written while the spans are in use.
fn spans(src: &mut [u8], sizes: &[usize]) -> Vec<Span> {
    assert_eq!(
        sizes.iter().sum::<usize>(),
        src.len(),
        "spans cover the source"
    );
    let base = src.as_mut_ptr();
    let mut at = 0;
    sizes
        .iter()
        .map(|&len| {
            let ptr = base.wrapping_add(at);
            at += len;
            Span { ptr, len }
        })
        .collect()
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

/// A whole request on the wire: header, body, payload.
fn request_bytes(opcode: Opcode, request_id: u64, body: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Header::request(opcode, request_id, body, payload.len() as u64)
        .encode()
        .to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(payload);
    out
}

/// A request header whose opcode field is `opcode`, a value no [`Opcode`] has.
fn unknown_opcode_header(
    opcode: u16,
    request_id: u64,
    body: &[u8],
    payload_len: u64,
) -> [u8; HEADER_BYTES] {
    let mut head = Header::request(Opcode::Write, request_id, body, payload_len).encode();
    head[6..8].copy_from_slice(&opcode.to_le_bytes());
    reseal(&mut head);
    assert!(matches!(
        Header::decode(&head),
        Err(WireError::UnknownOpcode { opcode: o, request_id: r, .. }) if o == opcode && r == request_id
    ));
    head
}

/// Recomputes a hand-edited header's checksum (the last 4 bytes, CRC32C of the header with
/// them zero), so that only the edited field is wrong.
fn reseal(header: &mut [u8; HEADER_BYTES]) {
    header[44..48].fill(0);
    let crc = crc32c::crc32c(header);
    header[44..48].copy_from_slice(&crc.to_le_bytes());
}

/// The client reads one reply's header and body, both checked.
fn read_reply(client: &mut TcpStream) -> (Header, Vec<u8>) {
    let mut head = [0u8; HEADER_BYTES];
    client.read_exact(&mut head).expect("reply header");
    let header = Header::decode(&head).expect("a valid reply header");
    assert!(header.is_response(), "not a response: {header:?}");
    let mut body = vec![0u8; header.body_len as usize];
    client.read_exact(&mut body).expect("reply body");
    header.check_body(&body).expect("reply body checksum");
    (header, body)
}

/// The client reads `len` payload bytes.
fn read_payload(client: &mut TcpStream, len: u64) -> Vec<u8> {
    let mut payload = vec![0u8; len as usize];
    client.read_exact(&mut payload).expect("reply payload");
    payload
}

/// What the client saw of one reply: opcode, request id, status, body, payload.
type Seen = (Opcode, u64, i32, Vec<u8>, Vec<u8>);

/// The client reads one whole reply, payload included.
fn read_whole_reply(client: &mut TcpStream) -> Seen {
    let (header, body) = read_reply(client);
    let payload = read_payload(client, header.payload_len);
    (
        header.opcode,
        header.request_id,
        header.status,
        body,
        payload,
    )
}

/// Whether a call failed as a misuse (`Unexpected`).
fn is_unexpected<T: std::fmt::Debug>(result: Result<T, TransportError>) -> bool {
    matches!(result, Err(TransportError::Unexpected { .. }))
}

/// Whether a call failed because an earlier error broke the connection.
fn is_broken<T: std::fmt::Debug>(result: Result<T, TransportError>) -> bool {
    matches!(result, Err(TransportError::Broken { .. }))
}

// ---------------------------------------------------------------------------------------
// Requests in, replies out.
// ---------------------------------------------------------------------------------------

/// A request sent one byte at a time is assembled intact; `Pending` comes after every byte.
#[test]
fn a_request_trickled_one_byte_at_a_time_is_assembled_intact() {
    let (mut conn, mut client) = pair();
    let extents = [
        Extent {
            object_id: 7,
            offset_bytes: 4096,
            len: 30,
        },
        Extent {
            object_id: 9,
            offset_bytes: 0,
            len: 50,
        },
    ];
    let mut body = Vec::new();
    encode_extents(&extents, &mut body);
    let payload = pattern_bytes(1, 80);
    let message = request_bytes(Opcode::Write, 0x1234_5678_9abc, &body, &payload);
    let message_len = message.len();

    // The client sends one byte per token from the server, so each of the server's reads
    // finds exactly one byte.
    let (go, next) = mpsc::channel::<()>();
    let sender = thread::spawn(move || {
        for byte in &message {
            next.recv_timeout(WAIT).expect("the server's go-ahead");
            client
                .write_all(std::slice::from_ref(byte))
                .expect("one byte");
        }
        let (reply, reply_body) = read_reply(&mut client);
        (reply, reply_body, client)
    });

    // Nothing sent yet: Pending, not mid-message, and no progress recorded.
    let idle_since = conn.last_progress();
    assert_eq!(conn.recv_request().expect("idle read"), Incoming::Pending);
    assert!(!conn.mid_message());
    assert_eq!(conn.last_progress(), idle_since);
    assert_eq!(conn.unanswered(), 0);
    let first_byte_sent = Instant::now();

    let mut tokens = 1;
    go.send(()).expect("go");
    let mut pendings = 0;
    let header = loop {
        wait_readable(&mut conn);
        match conn.recv_request().expect("recv_request") {
            Incoming::Pending => {
                pendings += 1;
                assert!(conn.mid_message(), "not mid-message after {pendings} bytes");
                go.send(()).expect("go");
                tokens += 1;
            }
            Incoming::Request(header) => break header,
            Incoming::Closed => panic!("closed after {pendings} bytes"),
        }
    };
    assert_eq!(
        pendings,
        HEADER_BYTES + body.len() - 1,
        "one Pending per byte of header and body but the last"
    );
    assert!(conn.last_progress() >= first_byte_sent);
    assert_eq!(header.opcode, Opcode::Write);
    assert_eq!(header.request_id, 0x1234_5678_9abc);
    assert_eq!((header.flags, header.status), (0, 0));
    assert!(!header.is_response());
    assert_eq!(header.body_len as usize, body.len());
    assert_eq!(header.body_crc32c, crc32c::crc32c(&body));
    assert_eq!(header.payload_len, 80);
    assert_eq!(conn.body(), &body[..]);
    let mut decoded = Vec::new();
    assert_eq!(decode_extents(conn.body(), &mut decoded), Ok(80));
    assert_eq!(decoded, extents);
    assert!(conn.mid_message(), "the payload is still to come");
    assert_eq!(conn.unanswered(), 1);

    // The payload, a byte at a time, into three destinations of different sizes.
    let (mut a, mut b, mut c) = (vec![0u8; 7], vec![0u8; 50], vec![0u8; 23]);
    let mut pendings = 0;
    loop {
        go.send(()).expect("go");
        tokens += 1;
        wait_readable(&mut conn);
        let mut dests = [
            IoSliceMut::new(&mut a),
            IoSliceMut::new(&mut b),
            IoSliceMut::new(&mut c),
        ];
        match conn.recv_payload(&mut dests).expect("recv_payload") {
            Progress::Pending => {
                pendings += 1;
                assert!(
                    conn.mid_message(),
                    "not mid-message partway through the payload"
                );
            }
            Progress::Done => break,
        }
    }
    assert_eq!(tokens, message_len);
    assert_eq!(pendings, 79, "one Pending per payload byte but the last");
    assert_eq!([a, b, c].concat(), payload);
    assert!(
        !conn.mid_message(),
        "the request is all in and being served: not mid-message"
    );
    assert!(!conn.wants_write(), "no reply given yet");

    conn.reply(&header, 0, b"written", 77).expect("reply");
    assert!(conn.mid_message() && conn.wants_write());
    assert_eq!(conn.unanswered(), 1, "given but not written yet");
    assert_eq!(flushed(&mut conn), [77]);
    assert!(!conn.mid_message() && !conn.wants_write());
    assert_eq!(conn.unanswered(), 0);

    let (reply, reply_body, _client) = sender.join().expect("client thread");
    assert_eq!(reply.opcode, Opcode::Write);
    assert_eq!(reply.request_id, 0x1234_5678_9abc);
    assert_eq!((reply.status, reply.payload_len), (0, 0));
    assert_eq!(reply_body, b"written");
}

/// Serves one request whose reply carries a payload cut into spans of `sizes` bytes, to a
/// client that starts reading only once `flush` has said `Pending`; checks every byte the
/// client gets, though the payload memory is overwritten as soon as its token is back.
/// Returns how many times `flush` was `Pending`.
fn reply_to_a_slow_reader(sizes: &[usize], seed: u64) -> usize {
    const TOKEN: u64 = 0xF00D;
    let (mut conn, mut client) = pair();
    let total: usize = sizes.iter().sum();
    client
        .write_all(&request_bytes(Opcode::Read, 42, b"read-me", &[]))
        .expect("request");
    let header = until_request(&mut conn);
    assert_eq!((header.opcode, header.request_id), (Opcode::Read, 42));
    assert_eq!(conn.body(), b"read-me");
    // An empty payload is all in at once.
    assert_eq!(
        conn.recv_payload(&mut []).expect("empty payload"),
        Progress::Done
    );

    let mut payload = pattern_bytes(seed, total);

    let (started, start) = mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        start.recv_timeout(WAIT).expect("the server's go-ahead");
        let (reply, body) = read_reply(&mut client);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        while got < reply.payload_len {
            let want = (reply.payload_len - got).min(chunk.len() as u64) as usize;
            let n = client.read(&mut chunk[..want]).expect("payload read");
            assert!(n > 0, "the stream ended after {got} payload bytes");
            for (k, &byte) in chunk[..n].iter().enumerate() {
                let offset = got + k as u64;
                assert_eq!(byte, pattern(seed, offset), "payload byte {offset}");
            }
            got += n as u64;
        }
        (reply, body, got)
    });

    // SAFETY: `payload` neither moves nor is written until TOKEN comes back from flush.
    unsafe {
        conn.reply_with_payload(&header, 0, b"extent-map", spans(&mut payload, sizes), TOKEN)
    }
    .expect("reply_with_payload");
    let mut pendings = 0;
    let mut sent = Vec::new();
    while conn.flush(&mut sent).expect("flush") == Progress::Pending {
        assert!(
            sent.is_empty(),
            "the token came back before the reply was all written"
        );
        pendings += 1;
        assert!(conn.wants_write() && conn.mid_message());
        assert_eq!(conn.unanswered(), 1);
        if pendings == 1 {
            started.send(()).expect("start the reader");
        }
        wait_writable(&conn);
    }
    assert_eq!(sent, [TOKEN]);
    // The memory is the caller's again.
    payload.fill(POISON);
    // If flush never waited, the reader has not been started yet.
    let _ = started.send(());
    assert!(!conn.wants_write() && !conn.mid_message());
    assert_eq!(conn.unanswered(), 0);

    let (reply, body, got) = reader.join().expect("reader thread");
    assert_eq!(reply.opcode, Opcode::Read);
    assert_eq!(reply.request_id, 42);
    assert_eq!(reply.status, 0);
    assert_eq!(body, b"extent-map");
    assert_eq!(reply.payload_len, total as u64);
    assert_eq!(got, total as u64);
    pendings
}

/// A 32 MiB reply in uneven spans waits for the slow reader and arrives byte for byte.
#[test]
fn a_reply_far_larger_than_the_socket_buffers_is_flushed_across_pendings() {
    let mib = 1 << 20;
    let sizes = [mib + 3, 7 * mib - 3, 13, 16 * mib - 13, 8 * mib];
    assert_eq!(sizes.iter().sum::<usize>(), 32 * mib);
    let pendings = reply_to_a_slow_reader(&sizes, 2);
    assert!(pendings >= 1, "flush never said Pending");
}

/// A reply in far more spans than one sendmsg takes (some empty) arrives byte for byte.
#[test]
fn a_reply_in_hundreds_of_spans_some_empty_arrives_in_order() {
    let sizes: Vec<usize> = (0..300)
        .map(|k| {
            if k % 17 == 0 {
                0
            } else {
                1 + k * 7919 % 80_000
            }
        })
        .collect();
    assert!(sizes.iter().sum::<usize>() > 8 << 20);
    let pendings = reply_to_a_slow_reader(&sizes, 3);
    assert!(pendings >= 1, "flush never said Pending");
}

// ---------------------------------------------------------------------------------------
// Messages the server does not take.
// ---------------------------------------------------------------------------------------

/// An unknown opcode gets an EOPNOTSUPP reply and is skipped; the next request is read intact.
#[test]
fn an_unknown_opcode_is_answered_eopnotsupp_and_skipped() {
    let (mut conn, mut client) = pair();
    let junk_body = vec![0xAB; 1000];
    let junk_payload = pattern_bytes(4, 100 * 1024);
    let head = unknown_opcode_header(999, 500, &junk_body, junk_payload.len() as u64);
    assert!(matches!(
        Header::decode(&head),
        Err(WireError::UnknownOpcode {
            opcode: 999,
            request_id: 500,
            body_len: 1000,
            payload_len: 102_400,
        })
    ));
    let mut message = head.to_vec();
    message.extend_from_slice(&junk_body);
    message.extend_from_slice(&junk_payload);
    let next_payload = pattern_bytes(5, 10);
    message.extend_from_slice(&request_bytes(Opcode::Ping, 501, b"after", &next_payload));

    let client = thread::spawn(move || {
        client.write_all(&message).expect("send");
        let error_reply = read_reply(&mut client);
        let ping_reply = read_reply(&mut client);
        let echoed = read_payload(&mut client, ping_reply.0.payload_len);
        (error_reply, ping_reply, echoed)
    });

    let header = until_request(&mut conn);
    assert_eq!(header.opcode, Opcode::Ping);
    assert_eq!(header.request_id, 501);
    assert_eq!(conn.body(), b"after");
    assert_eq!(header.payload_len, 10);
    let (mut a, mut b) = (vec![0u8; 4], vec![0u8; 6]);
    until_payload(&mut conn, &mut [&mut a, &mut b]).expect("payload");
    let mut got = [a, b].concat();
    assert_eq!(got, next_payload);
    // SAFETY: `got` neither moves nor is written until the token comes back.
    unsafe { conn.reply_with_payload(&header, 0, [], spans(&mut got, &[10]), 3) }
        .expect("reply_with_payload");
    assert_eq!(
        flushed(&mut conn),
        [3],
        "the transport's own reply has no token"
    );
    got.fill(POISON);

    let ((error, error_body), (ping, ping_body), echoed) = client.join().expect("client thread");
    assert_eq!(error.opcode, Opcode::Error);
    assert_eq!(error.status, libc::EOPNOTSUPP);
    assert_eq!(error.request_id, 500);
    assert_eq!((error.body_len, error.payload_len), (0, 0));
    assert!(error_body.is_empty());
    assert_eq!(
        (ping.opcode, ping.request_id, ping.status),
        (Opcode::Ping, 501, 0)
    );
    assert!(ping_body.is_empty());
    assert_eq!(echoed, next_payload);
}

/// Garbage (a bad magic) is a protocol error naming it, and the connection stays broken.
#[test]
fn garbage_is_a_protocol_error_and_breaks_the_connection() {
    let (mut conn, mut client) = pair();
    let garbage: Vec<u8> = b"GET / HTTP/1.1\r\nHost: nacre\r\n\r\n"
        .iter()
        .cycle()
        .take(HEADER_BYTES)
        .copied()
        .collect();
    client.write_all(&garbage).expect("send");
    let err = until_incoming(&mut conn).expect_err("garbage was accepted");
    match &err {
        TransportError::Protocol {
            peer,
            source: WireError::BadMagic { found },
        } => {
            assert_eq!(*peer, conn.peer());
            assert_eq!(*found, u32::from_le_bytes(*b"GET "));
        }
        other => panic!("expected a bad-magic protocol error, got {other:?}"),
    }
    assert!(err.to_string().contains("bad magic"), "{err}");
    assert_eq!(err.errno(), libc::EPROTO);

    // Every later call fails: the stream is at an unknown position.
    assert!(is_broken(conn.recv_request()));
    assert!(is_broken(conn.recv_payload(&mut [])));
    let mut sent = Vec::new();
    assert!(is_broken(conn.flush(&mut sent)));
    assert!(sent.is_empty());
    let ping = Header::request(Opcode::Ping, 1, &[], 0);
    assert!(is_broken(conn.reply(&ping, 0, [], 0)));
    // Even a valid request sent now is not read.
    client
        .write_all(&request_bytes(Opcode::Ping, 2, &[], &[]))
        .expect("send");
    assert!(is_broken(conn.recv_request()));
}

/// Bad checksums, an oversized payload, or a reply where requests belong also break it.
#[test]
fn other_malformed_messages_break_the_connection() {
    let mut bad_header_crc = Header::request(Opcode::Ping, 1, &[], 0).encode();
    bad_header_crc[20] ^= 0x01;

    let mut bad_body = request_bytes(Opcode::Write, 2, b"abcdef", &[]);
    *bad_body.last_mut().expect("body byte") ^= 0x20;

    let mut too_long = Header::request(Opcode::Write, 3, &[], 0).encode();
    too_long[32..40].copy_from_slice(&(MAX_PAYLOAD_BYTES + 1).to_le_bytes());
    reseal(&mut too_long);

    let request = Header::request(Opcode::Ping, 4, &[], 0);
    let reply = Header::response(&request, 0, &[], 0).encode();

    let cases: [(&str, Vec<u8>); 4] = [
        ("bad header checksum", bad_header_crc.to_vec()),
        ("bad body checksum", bad_body),
        ("payload over the limit", too_long.to_vec()),
        ("a reply where requests are expected", reply.to_vec()),
    ];
    for (what, bytes) in cases {
        let (mut conn, mut client) = pair();
        client.write_all(&bytes).expect("send");
        let err = until_incoming(&mut conn).expect_err(what);
        let right = match what {
            "bad header checksum" => matches!(
                err,
                TransportError::Protocol {
                    source: WireError::HeaderChecksum { .. },
                    ..
                }
            ),
            "bad body checksum" => matches!(
                err,
                TransportError::Protocol {
                    source: WireError::BodyChecksum { .. },
                    ..
                }
            ),
            "payload over the limit" => matches!(
                err,
                TransportError::Protocol {
                    source: WireError::PayloadTooLong { .. },
                    ..
                }
            ),
            _ => matches!(err, TransportError::Unexpected { .. }),
        };
        assert!(right, "{what}: wrong error {err:?}");
        assert!(is_broken(conn.recv_request()), "{what}: not broken");
    }
}

// ---------------------------------------------------------------------------------------
// Peers that close.
// ---------------------------------------------------------------------------------------

/// A peer that closes between messages (before any, or after a whole exchange) is `Closed`.
#[test]
fn a_peer_closing_between_messages_is_closed() {
    let (mut conn, client) = pair();
    drop(client);
    assert_eq!(until_incoming(&mut conn).expect("closed"), Incoming::Closed);

    let (mut conn, mut client) = pair();
    client
        .write_all(&request_bytes(Opcode::Sync, 9, b"sync", &[]))
        .expect("send");
    let header = until_request(&mut conn);
    conn.reply(&header, 0, [], 9).expect("reply");
    assert_eq!(flushed(&mut conn), [9]);
    let (reply, _) = read_reply(&mut client);
    assert_eq!((reply.opcode, reply.request_id), (Opcode::Sync, 9));
    drop(client);
    assert!(!conn.mid_message());
    assert_eq!(until_incoming(&mut conn).expect("closed"), Incoming::Closed);
}

/// A peer closing mid-header, mid-body, mid-payload or mid-skip is a `PeerClosed` error.
#[test]
fn a_peer_closing_mid_message_is_an_error() {
    let message = request_bytes(Opcode::Write, 11, b"some body", &pattern_bytes(6, 1000));

    // Mid-header and mid-body: recv_request fails.
    for cut in [1, HEADER_BYTES / 2, HEADER_BYTES - 1, HEADER_BYTES + 4] {
        let (mut conn, mut client) = pair();
        client.write_all(&message[..cut]).expect("send");
        drop(client);
        let err = until_incoming(&mut conn).expect_err("a cut message was accepted");
        assert!(
            matches!(
                err,
                TransportError::PeerClosed {
                    op: TransportOp::Recv,
                    ..
                }
            ),
            "cut at {cut}: {err:?}"
        );
        assert!(is_broken(conn.recv_request()), "cut at {cut}: not broken");
    }

    // Mid-payload: recv_payload fails.
    let (mut conn, mut client) = pair();
    client
        .write_all(&message[..HEADER_BYTES + 9 + 500])
        .expect("send");
    let header = until_request(&mut conn);
    drop(client);
    let mut buf = vec![0u8; header.payload_len as usize];
    let err = until_payload(&mut conn, &mut [&mut buf]).expect_err("a cut payload was accepted");
    assert!(
        matches!(
            err,
            TransportError::PeerClosed {
                op: TransportOp::Recv,
                ..
            }
        ),
        "mid-payload: {err:?}"
    );

    // Mid-skip (an unknown opcode's payload): recv_request fails.
    let (mut conn, mut client) = pair();
    let head = unknown_opcode_header(77, 12, &[], 1000);
    client.write_all(&head).expect("send");
    client.write_all(&[0u8; 10]).expect("send");
    drop(client);
    let err = until_incoming(&mut conn).expect_err("a cut skipped message was accepted");
    assert!(
        matches!(err, TransportError::PeerClosed { .. }),
        "mid-skip: {err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Payloads left untaken, and misuse.
// ---------------------------------------------------------------------------------------

/// A request answered with its payload untaken: the next `recv_request` drops the payload
/// and reads the next request intact.
#[test]
fn an_untaken_payload_is_discarded_before_the_next_request() {
    let (mut conn, mut client) = pair();
    let first_payload = pattern_bytes(7, 300 * 1024);
    let second_payload = pattern_bytes(8, 5000);
    let mut message = request_bytes(Opcode::Write, 1, b"first", &first_payload);
    message.extend_from_slice(&request_bytes(Opcode::Write, 2, b"second", &second_payload));
    let client = thread::spawn(move || {
        client.write_all(&message).expect("send");
        (read_reply(&mut client), read_reply(&mut client))
    });

    let first = until_request(&mut conn);
    assert_eq!((first.request_id, first.payload_len), (1, 300 * 1024));
    assert!(conn.mid_message(), "the payload is still to come");
    conn.reply(&first, libc::ENOSPC, b"refused", 101)
        .expect("reply");
    assert_eq!(flushed(&mut conn), [101]);
    assert!(
        conn.mid_message(),
        "the untaken payload is still to be dropped"
    );

    let second = until_request(&mut conn);
    assert_eq!(second.opcode, Opcode::Write);
    assert_eq!(second.request_id, 2);
    assert_eq!(conn.body(), b"second");
    assert_eq!(second.payload_len, 5000);
    let mut got = vec![0u8; 5000];
    until_payload(&mut conn, &mut [&mut got]).expect("payload");
    assert_eq!(got, second_payload);
    conn.reply(&second, 0, b"ok", 102).expect("reply");
    assert_eq!(flushed(&mut conn), [102]);

    let ((r1, b1), (r2, b2)) = client.join().expect("client thread");
    assert_eq!((r1.request_id, r1.status), (1, libc::ENOSPC));
    assert_eq!(b1, b"refused");
    assert_eq!((r2.request_id, r2.status), (2, 0));
    assert_eq!(b2, b"ok");
}

/// A payload taken in part before the request ends: the rest is dropped, exactly.
#[test]
fn a_partly_taken_payload_is_discarded_to_its_end() {
    let (mut conn, mut client) = pair();
    let payload = pattern_bytes(9, 50_000);
    let first = request_bytes(Opcode::Write, 1, b"first", &payload);
    // More than the input buffer: part of the payload comes from the buffer, part from the
    // socket.
    let cut = HEADER_BYTES + 5 + 20_000;
    let next_payload = pattern_bytes(10, 3);
    let mut rest = first[cut..].to_vec();
    rest.extend_from_slice(&request_bytes(Opcode::Ping, 2, b"next", &next_payload));
    let head = first[..cut].to_vec();

    let (go, next) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        client.write_all(&head).expect("send");
        next.recv_timeout(WAIT).expect("the server's go-ahead");
        client.write_all(&rest).expect("send");
        (read_reply(&mut client), read_reply(&mut client))
    });

    let header = until_request(&mut conn);
    assert_eq!(header.payload_len, 50_000);
    let mut buf = vec![0u8; 50_000];
    assert_eq!(
        conn.recv_payload(&mut [IoSliceMut::new(&mut buf)])
            .expect("part of the payload"),
        Progress::Pending
    );
    conn.reply(&header, libc::EIO, [], 201).expect("reply");
    assert_eq!(flushed(&mut conn), [201]);
    go.send(()).expect("go");

    let second = until_request(&mut conn);
    assert_eq!((second.opcode, second.request_id), (Opcode::Ping, 2));
    assert_eq!(conn.body(), b"next");
    let mut got = [0u8; 3];
    until_payload(&mut conn, &mut [&mut got]).expect("payload");
    assert_eq!(got[..], next_payload[..]);
    conn.reply(&second, 0, [], 202).expect("reply");
    assert_eq!(flushed(&mut conn), [202]);

    let ((r1, _), (r2, _)) = client.join().expect("client thread");
    assert_eq!((r1.request_id, r1.status), (1, libc::EIO));
    assert_eq!((r2.request_id, r2.status), (2, 0));
}

/// Requests arriving in one read (big body, unknown opcode, untaken payload) are served in order.
#[test]
fn requests_arriving_together_are_served_in_order_from_one_read() {
    let (mut conn, mut client) = pair();
    let extents: Vec<Extent> = (0..1000)
        .map(|i| Extent {
            object_id: i,
            offset_bytes: i * 4096,
            len: 1,
        })
        .collect();
    let mut big_body = Vec::new();
    encode_extents(&extents, &mut big_body);
    assert!(big_body.len() > INPUT_BUFFER_BYTES);
    let a_payload = pattern_bytes(16, 1000);
    let mut message = request_bytes(Opcode::Write, 1, &big_body, &a_payload);
    message.extend_from_slice(&unknown_opcode_header(300, 2, &[7; 10], 20));
    message.extend_from_slice(&[7; 10]);
    message.extend_from_slice(&[8; 20]);
    message.extend_from_slice(&request_bytes(Opcode::Ping, 3, b"c", &[9; 5]));
    message.extend_from_slice(&request_bytes(Opcode::Stat, 4, b"d", &[]));
    let client = thread::spawn(move || {
        client.write_all(&message).expect("send");
        let replies: Vec<(Header, Vec<u8>)> = (0..4).map(|_| read_reply(&mut client)).collect();
        replies
    });

    let a = until_request(&mut conn);
    assert_eq!((a.opcode, a.request_id), (Opcode::Write, 1));
    assert_eq!(conn.body(), &big_body[..]);
    let mut back = Vec::new();
    assert_eq!(decode_extents(conn.body(), &mut back), Ok(1000));
    assert_eq!(back, extents);
    let mut got = vec![0u8; 1000];
    let (first, rest) = got.split_at_mut(1);
    until_payload(&mut conn, &mut [first, rest]).expect("payload");
    assert_eq!(got, a_payload);
    conn.reply(&a, 0, b"a", 1).expect("reply");
    assert_eq!(flushed(&mut conn), [1]);

    let c = until_request(&mut conn);
    assert_eq!(
        (c.opcode, c.request_id, c.payload_len),
        (Opcode::Ping, 3, 5)
    );
    assert_eq!(conn.body(), b"c");
    conn.reply(&c, 0, b"c", 3).expect("reply");
    assert_eq!(flushed(&mut conn), [3]);

    let d = until_request(&mut conn);
    assert_eq!((d.opcode, d.request_id), (Opcode::Stat, 4));
    assert_eq!(conn.body(), b"d");
    conn.reply(&d, 0, b"d", 4).expect("reply");
    assert_eq!(flushed(&mut conn), [4]);

    let replies = client.join().expect("client thread");
    let seen: Vec<(Opcode, u64, i32, &[u8])> = replies
        .iter()
        .map(|(h, body)| (h.opcode, h.request_id, h.status, &body[..]))
        .collect();
    assert_eq!(
        seen,
        [
            (Opcode::Write, 1, 0, &b"a"[..]),
            (Opcode::Error, 2, libc::EOPNOTSUPP, &b""[..]),
            (Opcode::Ping, 3, 0, &b"c"[..]),
            (Opcode::Stat, 4, 0, &b"d"[..]),
        ]
    );
}

/// Wrong-sized destinations and replies to requests that await none are `Unexpected`, not
/// panics, and leave the connection usable.
#[test]
fn misuse_is_an_unexpected_error_not_a_panic() {
    let (mut conn, mut client) = pair();

    // No request yet: no payload to receive, no reply to flush, none to give.
    assert!(is_unexpected(conn.recv_payload(&mut [])));
    let mut sent = Vec::new();
    assert_eq!(
        conn.flush(&mut sent).expect("nothing to flush"),
        Progress::Done
    );
    assert!(sent.is_empty());
    let not_yet = Header::request(Opcode::Write, 5, b"w", 100);
    assert!(
        is_unexpected(conn.reply(&not_yet, 0, b"r", 50)),
        "a reply to a request not read yet"
    );

    let payload = pattern_bytes(11, 100);
    client
        .write_all(&request_bytes(Opcode::Write, 5, b"w", &payload))
        .expect("send");
    let header = until_request(&mut conn);
    assert_eq!(header, not_yet);

    let mut big = vec![0u8; 101];
    assert!(is_unexpected(
        conn.recv_payload(&mut [IoSliceMut::new(&mut big[..99])])
    ));
    assert!(is_unexpected(
        conn.recv_payload(&mut [IoSliceMut::new(&mut big)])
    ));
    assert!(is_unexpected(conn.recv_payload(&mut [
        IoSliceMut::new(&mut big[..60]),
        IoSliceMut::new(&mut [0u8; 41]),
    ])));

    // The right destinations still get the whole payload.
    let (mut a, mut b) = (vec![0u8; 60], vec![0u8; 40]);
    until_payload(&mut conn, &mut [&mut a, &mut b]).expect("payload");
    assert_eq!([a, b].concat(), payload);

    let mut reply_payload = pattern_bytes(12, 10);
    let mut other_payload = pattern_bytes(13, 10);
    // SAFETY: `reply_payload` neither moves nor is written until token 51 comes back.
    unsafe { conn.reply_with_payload(&header, 0, b"r", spans(&mut reply_payload, &[3, 7]), 51) }
        .expect("reply_with_payload");
    // SAFETY: refused; and `other_payload` outlives the connection anyway.
    let again =
        unsafe { conn.reply_with_payload(&header, 0, b"x", spans(&mut other_payload, &[10]), 52) };
    assert!(is_unexpected(again), "a second reply to the same request");
    assert!(
        is_unexpected(conn.reply(&header, 0, b"x", 53)),
        "a second reply to the same request"
    );
    assert_eq!(flushed(&mut conn), [51], "only the first reply was taken");
    reply_payload.fill(POISON);
    assert!(
        is_unexpected(conn.reply(&header, 0, b"again", 54)),
        "a reply to a request already answered"
    );
    assert_eq!(flushed(&mut conn), Vec::<u64>::new());

    let (reply, body) = read_reply(&mut client);
    assert_eq!(
        (reply.request_id, reply.status, reply.payload_len),
        (5, 0, 10)
    );
    assert_eq!(body, b"r");
    assert_eq!(read_payload(&mut client, 10), pattern_bytes(12, 10));

    // And the connection goes on.
    client
        .write_all(&request_bytes(Opcode::Stat, 6, b"s", &[]))
        .expect("send");
    let header = until_request(&mut conn);
    assert_eq!((header.opcode, header.request_id), (Opcode::Stat, 6));
    conn.reply(&header, 0, b"s", 55).expect("reply");
    assert_eq!(flushed(&mut conn), [55]);
    let (reply, body) = read_reply(&mut client);
    assert_eq!((reply.opcode, reply.request_id), (Opcode::Stat, 6));
    assert_eq!(body, b"s");
    drop(other_payload);
}

/// `recv_payload` resumes after `Pending` with the very same destinations, as documented.
#[test]
fn recv_payload_resumes_with_the_same_destinations() {
    let (mut conn, mut client) = pair();
    let payload = pattern_bytes(13, 30);
    let message = request_bytes(Opcode::Write, 1, &[], &payload);
    let (first, rest) = message.split_at(HEADER_BYTES + 10);
    let rest = rest.to_vec();
    client.write_all(first).expect("send");

    let header = until_request(&mut conn);
    assert_eq!(header.payload_len, 30);
    let mut buf = vec![0u8; 30];
    let mut dests = [IoSliceMut::new(&mut buf)];
    assert_eq!(
        conn.recv_payload(&mut dests).expect("first part"),
        Progress::Pending
    );
    client.write_all(&rest).expect("send");
    let mut done = false;
    while !done {
        wait_readable(&mut conn);
        done = conn.recv_payload(&mut dests).expect("the rest") == Progress::Done;
    }
    assert_eq!(buf, payload);
}

// ---------------------------------------------------------------------------------------
// Pipelining: many requests in flight, replies in request order.
// ---------------------------------------------------------------------------------------

/// Six requests written at once are all read before any reply; replies given in reverse
/// order leave in request order, each with its own id, body and payload, and no token comes
/// back before its reply is written.
#[test]
fn pipelined_replies_given_in_reverse_leave_in_request_order() {
    const COUNT: u64 = 6;
    let (mut conn, mut client) = pair();
    let opcodes = [
        Opcode::Read,
        Opcode::Write,
        Opcode::Ping,
        Opcode::Stat,
        Opcode::Read,
        Opcode::Sync,
    ];
    // Request payloads (taken by the server), reply payloads (from distinct buffers).
    let request_sizes = [0usize, 3000, 1, 0, 20_000, 0];
    let reply_sizes = [100_000usize, 0, 1, 4096, 65_537, 7];
    let id = |k: u64| 1000 + 17 * k;
    let token = |k: u64| 0xABC0 + k;

    let mut message = Vec::new();
    for k in 0..COUNT {
        let body = format!("request {k}");
        let payload = pattern_bytes(20 + k, request_sizes[k as usize]);
        message.extend_from_slice(&request_bytes(
            opcodes[k as usize],
            id(k),
            body.as_bytes(),
            &payload,
        ));
    }
    let client = thread::spawn(move || {
        client.write_all(&message).expect("send");
        let seen: Vec<Seen> = (0..COUNT).map(|_| read_whole_reply(&mut client)).collect();
        seen
    });

    let mut requests = Vec::new();
    for k in 0..COUNT {
        let header = until_request(&mut conn);
        assert_eq!(
            (header.opcode, header.request_id),
            (opcodes[k as usize], id(k))
        );
        assert_eq!(conn.body(), format!("request {k}").as_bytes());
        let mut got = vec![0u8; header.payload_len as usize];
        until_payload(&mut conn, &mut [&mut got]).expect("payload");
        assert_eq!(got, pattern_bytes(20 + k, request_sizes[k as usize]));
        assert_eq!(conn.unanswered() as u64, k + 1);
        assert!(!conn.wants_write());
        requests.push(header);
    }

    let mut payloads: Vec<Vec<u8>> = (0..COUNT)
        .map(|k| pattern_bytes(40 + k, reply_sizes[k as usize]))
        .collect();
    for k in (0..COUNT).rev() {
        let i = k as usize;
        let body = format!("reply {k}");
        let cut = reply_sizes[i] / 3;
        let cuts = [cut, reply_sizes[i] - cut];
        // SAFETY: `payloads[i]` neither moves nor is written until its token comes back.
        unsafe {
            conn.reply_with_payload(
                &requests[i],
                k as i32,
                body.as_bytes(),
                spans(&mut payloads[i], &cuts),
                token(k),
            )
        }
        .expect("reply_with_payload");
        if k > 0 {
            // The first reply is not given yet: nothing may leave, no token come back.
            assert!(!conn.wants_write(), "reply {k} is not at the front");
            assert!(!conn.mid_message());
            assert_eq!(flushed(&mut conn), Vec::<u64>::new(), "after reply {k}");
            assert_eq!(conn.unanswered() as u64, COUNT);
        }
    }
    assert!(conn.wants_write() && conn.mid_message());
    let tokens = flushed(&mut conn);
    assert_eq!(tokens, (0..COUNT).map(token).collect::<Vec<_>>());
    for p in &mut payloads {
        p.fill(POISON);
    }
    assert_eq!(conn.unanswered(), 0);
    assert!(!conn.wants_write() && !conn.mid_message());

    let seen = client.join().expect("client thread");
    let want: Vec<Seen> = (0..COUNT)
        .map(|k| {
            (
                opcodes[k as usize],
                id(k),
                k as i32,
                format!("reply {k}").into_bytes(),
                pattern_bytes(40 + k, reply_sizes[k as usize]),
            )
        })
        .collect();
    assert_eq!(seen, want);
}

/// A reply given early waits behind a request still unanswered; the ready front leaves on
/// its own, and the early one leaves as soon as the gap is filled.
#[test]
fn a_reply_ready_early_waits_for_the_earlier_ones() {
    let (mut conn, mut client) = pair();
    let mut message = Vec::new();
    for id in 1..=3u64 {
        message.extend_from_slice(&request_bytes(Opcode::Stat, id, &id.to_le_bytes(), &[]));
    }
    let (got_first, first_in) = mpsc::channel::<Seen>();
    let client = thread::spawn(move || {
        client.write_all(&message).expect("send");
        got_first
            .send(read_whole_reply(&mut client))
            .expect("tell the server");
        let rest: Vec<Seen> = (0..2).map(|_| read_whole_reply(&mut client)).collect();
        rest
    });

    let requests: Vec<Header> = (0..3).map(|_| until_request(&mut conn)).collect();
    assert_eq!(
        requests.iter().map(|h| h.request_id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(conn.unanswered(), 3);

    conn.reply(&requests[2], 0, b"three", 30).expect("reply 3");
    assert_eq!(flushed(&mut conn), Vec::<u64>::new());
    conn.reply(&requests[0], 0, b"one", 10).expect("reply 1");
    assert_eq!(flushed(&mut conn), [10], "only the front goes");
    assert_eq!(conn.unanswered(), 2);
    assert!(
        !conn.wants_write(),
        "the reply to 3 waits for the one to 2, which is not given"
    );

    // The client has the first reply while the second is not even given.
    let first = first_in.recv_timeout(WAIT).expect("the first reply");
    assert_eq!(first, (Opcode::Stat, 1, 0, b"one".to_vec(), Vec::new()));

    conn.reply(&requests[1], 0, b"two", 20).expect("reply 2");
    assert!(conn.wants_write());
    assert_eq!(flushed(&mut conn), [20, 30]);
    assert_eq!(conn.unanswered(), 0);

    let rest = client.join().expect("client thread");
    assert_eq!(
        rest,
        [
            (Opcode::Stat, 2, 0, b"two".to_vec(), Vec::new()),
            (Opcode::Stat, 3, 0, b"three".to_vec(), Vec::new()),
        ]
    );
}

/// With [`MAX_PIPELINED_REQUESTS`] unanswered, `recv_request` is `Pending` and reads
/// nothing, even with a request waiting in the socket and a readiness event; a reply given
/// but not written still counts; once one is written, the waiting request is read.
#[test]
fn reading_stops_at_the_bound_of_unanswered_requests() {
    let bound = MAX_PIPELINED_REQUESTS as u64;
    let (mut conn, mut client) = pair();
    let request = |id: u64| request_bytes(Opcode::Ping, id, &id.to_le_bytes(), &[]);
    let first_batch: Vec<u8> = (0..bound).flat_map(request).collect();
    let last = request(bound);
    let last_len = last.len();

    let (go, next) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        client.write_all(&first_batch).expect("send");
        next.recv_timeout(WAIT).expect("the server's go-ahead");
        client.write_all(&last).expect("send");
        let seen: Vec<Seen> = (0..=bound).map(|_| read_whole_reply(&mut client)).collect();
        seen
    });

    let mut requests = Vec::new();
    for id in 0..bound {
        let header = until_request(&mut conn);
        assert_eq!(header.request_id, id);
        assert_eq!(conn.unanswered() as u64, id + 1);
        requests.push(header);
    }
    // The next request is sent only now: it cannot be in the server's input buffer.
    go.send(()).expect("go");
    wait_readable(&mut conn);
    assert_eq!(
        bytes_unread(conn.fd()),
        last_len,
        "the request is all there"
    );
    let before = conn.last_progress();
    assert_eq!(
        conn.recv_request().expect("at the bound"),
        Incoming::Pending
    );
    conn.readable();
    assert_eq!(
        conn.recv_request().expect("at the bound"),
        Incoming::Pending
    );
    assert_eq!(conn.last_progress(), before, "nothing read at the bound");
    assert_eq!(
        bytes_unread(conn.fd()),
        last_len,
        "the request is not taken"
    );
    assert!(!conn.mid_message() && !conn.wants_write());

    // A reply given behind the unanswered first request is not written: still the bound.
    let last_of_batch = requests[requests.len() - 1];
    conn.reply(&last_of_batch, 0, b"last", 1000 + bound - 1)
        .expect("reply");
    assert_eq!(flushed(&mut conn), Vec::<u64>::new());
    assert_eq!(conn.unanswered() as u64, bound);
    conn.readable();
    assert_eq!(
        conn.recv_request().expect("at the bound"),
        Incoming::Pending
    );
    assert_eq!(
        bytes_unread(conn.fd()),
        last_len,
        "the request is not taken"
    );

    // One reply written: one more request is read.
    conn.reply(&requests[0], 0, b"first", 1000).expect("reply");
    assert_eq!(flushed(&mut conn), [1000]);
    assert_eq!(conn.unanswered() as u64, bound - 1);
    let header = until_request(&mut conn);
    assert_eq!((header.opcode, header.request_id), (Opcode::Ping, bound));
    assert_eq!(conn.body(), bound.to_le_bytes());
    assert_eq!(bytes_unread(conn.fd()), 0);
    assert_eq!(conn.unanswered() as u64, bound);
    assert_eq!(
        conn.recv_request().expect("at the bound"),
        Incoming::Pending
    );
    requests.push(header);

    // The rest, in reverse.
    for id in (1..=bound).rev() {
        if id == bound - 1 {
            continue;
        }
        let body = format!("r{id}");
        conn.reply(&requests[id as usize], 0, body.as_bytes(), 1000 + id)
            .expect("reply");
    }
    assert_eq!(
        flushed(&mut conn),
        (1..=bound).map(|id| 1000 + id).collect::<Vec<_>>()
    );
    assert_eq!(conn.unanswered(), 0);

    let seen = client.join().expect("client thread");
    let want: Vec<Seen> = (0..=bound)
        .map(|id| {
            let body = match id {
                0 => b"first".to_vec(),
                _ if id == bound - 1 => b"last".to_vec(),
                _ => format!("r{id}").into_bytes(),
            };
            (Opcode::Ping, id, 0, body, Vec::new())
        })
        .collect();
    assert_eq!(seen, want);
}

/// An unknown opcode between two good requests: its EOPNOTSUPP reply waits its turn and
/// leaves between theirs; it counts as unanswered until written, and the caller cannot
/// answer it too.
#[test]
fn an_unknown_opcode_between_two_requests_is_answered_in_its_turn() {
    let (mut conn, mut client) = pair();
    let first_payload = pattern_bytes(50, 700);
    let mut message = request_bytes(Opcode::Write, 1, b"one", &first_payload);
    message.extend_from_slice(&unknown_opcode_header(
        4242,
        2,
        &[5; 10],
        INPUT_BUFFER_BYTES as u64 + 5000,
    ));
    message.extend_from_slice(&[5; 10]);
    message.extend_from_slice(&pattern_bytes(51, INPUT_BUFFER_BYTES + 5000));
    message.extend_from_slice(&request_bytes(Opcode::Stat, 3, b"three", &[]));
    let client = thread::spawn(move || {
        client.write_all(&message).expect("send");
        let seen: Vec<Seen> = (0..3).map(|_| read_whole_reply(&mut client)).collect();
        seen
    });

    let first = until_request(&mut conn);
    assert_eq!((first.opcode, first.request_id), (Opcode::Write, 1));
    let mut got = vec![0u8; 700];
    until_payload(&mut conn, &mut [&mut got]).expect("payload");
    assert_eq!(got, first_payload);
    let third = until_request(&mut conn);
    assert_eq!((third.opcode, third.request_id), (Opcode::Stat, 3));
    assert_eq!(conn.body(), b"three");
    assert_eq!(
        conn.unanswered(),
        3,
        "the error reply waits behind request 1"
    );
    assert!(!conn.wants_write());

    let skipped = Header::request(Opcode::Write, 2, &[5; 10], 0);
    assert!(
        is_unexpected(conn.reply(&skipped, 0, b"mine", 2)),
        "the transport answers an unknown opcode itself"
    );
    conn.reply(&third, 0, b"3", 3).expect("reply 3");
    assert_eq!(flushed(&mut conn), Vec::<u64>::new());
    assert_eq!(conn.unanswered(), 3);
    conn.reply(&first, 0, b"1", 1).expect("reply 1");
    assert_eq!(flushed(&mut conn), [1, 3]);
    assert_eq!(conn.unanswered(), 0);

    let seen = client.join().expect("client thread");
    assert_eq!(
        seen,
        [
            (Opcode::Write, 1, 0, b"1".to_vec(), Vec::new()),
            (Opcode::Error, 2, libc::EOPNOTSUPP, Vec::new(), Vec::new()),
            (Opcode::Stat, 3, 0, b"3".to_vec(), Vec::new()),
        ]
    );
}

/// The server's side after a reply (to request 1, with a 1000-byte payload from the
/// returned buffer, token 11) was given and then an unknown opcode (request 2) arrived and
/// was skipped by `recv_request`, which wrote both replies on its way; and the client,
/// which reads both replies.
fn reply_given_then_unknown_opcode_skipped() -> (StreamConn, Vec<u8>, thread::JoinHandle<Vec<Seen>>)
{
    let (mut conn, mut client) = pair();
    let (go, next) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        client
            .write_all(&request_bytes(Opcode::Read, 1, b"one", &[]))
            .expect("send");
        next.recv_timeout(WAIT).expect("the server's go-ahead");
        client
            .write_all(&unknown_opcode_header(999, 2, &[], 0))
            .expect("send");
        let seen: Vec<Seen> = (0..2).map(|_| read_whole_reply(&mut client)).collect();
        seen
    });

    let first = until_request(&mut conn);
    let mut payload = pattern_bytes(60, 1000);
    // SAFETY: the buffer of `payload` (returned, so moved but not reallocated) is not
    // written until token 11 comes back.
    unsafe { conn.reply_with_payload(&first, 0, b"1", spans(&mut payload, &[1000]), 11) }
        .expect("reply_with_payload");
    // The event loop reads before it writes: the unknown opcode (one small segment) is
    // skipped, and there is no request to hand over.
    let before = conn.last_progress();
    go.send(()).expect("go");
    loop {
        wait_readable(&mut conn);
        let event = Instant::now();
        assert_eq!(
            conn.recv_request().expect("recv_request"),
            Incoming::Pending
        );
        assert_moved(&conn, event, "recv_request");
        if conn.last_progress() > before && bytes_unread(conn.fd()) == 0 {
            break;
        }
    }
    (conn, payload, client)
}

/// What the client of [`reply_given_then_unknown_opcode_skipped`] must see.
fn reply_then_error_reply() -> [Seen; 2] {
    [
        (Opcode::Read, 1, 0, b"1".to_vec(), pattern_bytes(60, 1000)),
        (Opcode::Error, 2, libc::EOPNOTSUPP, Vec::new(), Vec::new()),
    ]
}

/// A reply already given when an unknown opcode arrives leaves, in order, with the error
/// reply while `recv_request` skips it; its token comes back from the next `flush`.
#[test]
fn a_reply_written_while_skipping_an_unknown_opcode_hands_its_token_to_flush() {
    let (mut conn, mut payload, client) = reply_given_then_unknown_opcode_skipped();
    assert_eq!(conn.unanswered(), 0);
    let mut sent = Vec::new();
    assert_eq!(conn.flush(&mut sent).expect("flush"), Progress::Done);
    assert_eq!(sent, [11]);
    payload.fill(POISON);
    sent.clear();
    assert_eq!(conn.flush(&mut sent).expect("flush"), Progress::Done);
    assert!(sent.is_empty(), "a token comes back once");
    assert_eq!(
        client.join().expect("client thread"),
        reply_then_error_reply()
    );
}

/// As above, for an event loop that flushes only while `wants_write` says so (as the
/// target's worker does): it must still get the token back.
#[test]
fn a_reply_written_while_skipping_an_unknown_opcode_makes_the_connection_want_to_write() {
    let (mut conn, mut payload, client) = reply_given_then_unknown_opcode_skipped();
    let mut sent = Vec::new();
    let mut rounds = 0;
    while conn.wants_write() {
        rounds += 1;
        assert!(rounds < 1000, "wants_write never cleared");
        if conn.flush(&mut sent).expect("flush") == Progress::Pending {
            wait_writable(&conn);
        }
    }
    assert_eq!(
        sent,
        [11],
        "the token of a reply written out must come back to a loop driven by wants_write"
    );
    payload.fill(POISON);
    assert_eq!(conn.unanswered(), 0);
    assert_eq!(
        client.join().expect("client thread"),
        reply_then_error_reply()
    );
}

/// A payload not taken is dropped by the next `recv_request`, which then has nothing of it
/// left to give (`recv_payload` is `Unexpected`); the request can still be answered, and the
/// next one is read intact.
#[test]
fn recv_request_drops_an_untaken_payload_and_reads_the_next_request() {
    let (mut conn, mut client) = pair();
    let dropped = pattern_bytes(70, 1 << 20);
    let kept = pattern_bytes(71, 3333);
    let first = request_bytes(Opcode::Write, 1, b"dropped", &dropped);
    let second = request_bytes(Opcode::Write, 2, b"kept", &kept);

    let (go, next) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        client.write_all(&first).expect("send");
        next.recv_timeout(WAIT).expect("the server's go-ahead");
        client.write_all(&second).expect("send");
        let seen: Vec<Seen> = (0..2).map(|_| read_whole_reply(&mut client)).collect();
        seen
    });

    let header = until_request(&mut conn);
    assert_eq!((header.request_id, header.payload_len), (1, 1 << 20));
    assert_eq!(conn.body(), b"dropped");
    // Reading on drops the payload (1 MiB, more than the socket holds at once) until the
    // socket is empty at the end of it.
    let before = conn.last_progress();
    let mut after_event = None;
    loop {
        assert_eq!(
            conn.recv_request().expect("dropping"),
            Incoming::Pending,
            "nothing follows the first request yet"
        );
        if !conn.mid_message() {
            break;
        }
        if let Some(event) = after_event {
            assert_moved(&conn, event, "recv_request");
        }
        wait_readable(&mut conn);
        after_event = Some(Instant::now());
    }
    assert!(conn.last_progress() >= before);
    assert_eq!(bytes_unread(conn.fd()), 0, "the whole payload was dropped");
    let mut whole = vec![0u8; 1 << 20];
    assert!(
        is_unexpected(conn.recv_payload(&mut [IoSliceMut::new(&mut whole)])),
        "the ended request's payload is no longer the caller's"
    );
    assert!(is_unexpected(conn.recv_payload(&mut [])));
    assert_eq!(conn.unanswered(), 1);

    // It is still answered, after it ended.
    conn.reply(&header, libc::ENOSPC, b"no room", 1)
        .expect("reply");
    assert_eq!(flushed(&mut conn), [1]);

    go.send(()).expect("go");
    let header = until_request(&mut conn);
    assert_eq!((header.opcode, header.request_id), (Opcode::Write, 2));
    assert_eq!(conn.body(), b"kept");
    let mut got = vec![0u8; 3333];
    until_payload(&mut conn, &mut [&mut got]).expect("payload");
    assert_eq!(got, kept);
    conn.reply(&header, 0, b"ok", 2).expect("reply");
    assert_eq!(flushed(&mut conn), [2]);

    let seen = client.join().expect("client thread");
    assert_eq!(
        seen,
        [
            (
                Opcode::Write,
                1,
                libc::ENOSPC,
                b"no room".to_vec(),
                Vec::new()
            ),
            (Opcode::Write, 2, 0, b"ok".to_vec(), Vec::new()),
        ]
    );
}

/// A reply to a request that awaits none (never read, answered already, or written
/// already) is `Unexpected`, queues nothing, and breaks nothing: the client gets exactly the
/// replies given rightly, and then the end of the stream.
#[test]
fn a_reply_to_a_request_that_awaits_none_is_unexpected() {
    let (mut conn, mut client) = pair();
    let mut message = request_bytes(Opcode::Ping, 1, b"a", &[]);
    message.extend_from_slice(&request_bytes(Opcode::Ping, 2, b"b", &[]));
    let client = thread::spawn(move || {
        client.write_all(&message).expect("send");
        let mut all = Vec::new();
        client.read_to_end(&mut all).expect("read to the end");
        all
    });

    let one = until_request(&mut conn);
    let two = until_request(&mut conn);
    assert_eq!((one.request_id, two.request_id), (1, 2));
    let stranger = Header::request(Opcode::Ping, 99, b"a", 0);
    let mut spare = vec![0u8; 64];
    assert!(is_unexpected(conn.reply(&stranger, 0, b"x", 90)));
    // SAFETY: refused; and `spare` outlives the connection anyway.
    let refused =
        unsafe { conn.reply_with_payload(&stranger, 0, b"x", spans(&mut spare, &[64]), 91) };
    assert!(is_unexpected(refused), "a request never read");

    conn.reply(&one, 0, b"1", 10).expect("reply 1");
    assert!(
        is_unexpected(conn.reply(&one, 0, b"x", 92)),
        "answered already, though request 2 still awaits one"
    );
    assert_eq!(flushed(&mut conn), [10]);
    assert!(
        is_unexpected(conn.reply(&one, 0, b"x", 93)),
        "written already"
    );
    assert_eq!(conn.unanswered(), 1);
    conn.reply(&two, 0, b"2", 20).expect("reply 2");
    assert_eq!(flushed(&mut conn), [20]);
    assert!(is_unexpected(conn.reply(&two, 0, b"x", 94)));
    assert_eq!(flushed(&mut conn), Vec::<u64>::new());
    conn.shutdown();

    let mut want = Header::response(&one, 0, b"1", 0).encode().to_vec();
    want.extend_from_slice(b"1");
    want.extend_from_slice(&Header::response(&two, 0, b"2", 0).encode());
    want.extend_from_slice(b"2");
    assert_eq!(client.join().expect("client thread"), want);
    drop(spare);
}

/// 200 replies of 256 KiB each (50 MiB, far more than the socket buffers hold) to a client
/// that reads nothing until `flush` has said `Pending`, then reads slowly at first: reading
/// stops at the bound and resumes as replies leave, `flush` resumes where it stopped, tokens
/// come back in request order once written, and every byte arrives right although each
/// payload buffer is overwritten as soon as its token is back.
#[test]
fn hundreds_of_large_replies_flow_past_the_socket_buffers() {
    const REPLIES: u64 = 200;
    const PAYLOAD_BYTES: usize = 256 * 1024;
    const SLOW_BYTES: u64 = 1 << 20;
    let id = |i: u64| 5000 + 3 * i;
    let token = |i: u64| 9000 + i;
    let seed = |i: u64| 100 + i;
    let (mut conn, mut client) = pair();

    let requests: Vec<u8> = (0..REPLIES)
        .flat_map(|i| request_bytes(Opcode::Read, id(i), &i.to_le_bytes(), &[]))
        .collect();
    let (started, start) = mpsc::channel::<()>();
    let reader = thread::spawn(move || {
        client.write_all(&requests).expect("send");
        start.recv_timeout(WAIT).expect("the server's go-ahead");
        let mut chunk = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        for i in 0..REPLIES {
            let (reply, body) = read_reply(&mut client);
            assert_eq!(
                (reply.opcode, reply.request_id, reply.status),
                (Opcode::Read, id(i), 0),
                "reply {i}"
            );
            assert_eq!(body, format!("data {i}").as_bytes(), "reply {i}");
            assert_eq!(reply.payload_len, PAYLOAD_BYTES as u64, "reply {i}");
            let mut got = 0u64;
            while got < reply.payload_len {
                // Slowly at first: small reads.
                let size = if total < SLOW_BYTES {
                    1000
                } else {
                    chunk.len()
                };
                let want = (reply.payload_len - got).min(size as u64) as usize;
                let n = client.read(&mut chunk[..want]).expect("payload read");
                assert!(n > 0, "the stream ended in reply {i}");
                for (k, &byte) in chunk[..n].iter().enumerate() {
                    let offset = got + k as u64;
                    assert_eq!(
                        byte,
                        pattern(seed(i), offset),
                        "reply {i} payload byte {offset}"
                    );
                }
                got += n as u64;
                total += n as u64;
            }
        }
        total
    });

    let mut payloads: Vec<Vec<u8>> = (0..REPLIES)
        .map(|i| pattern_bytes(seed(i), PAYLOAD_BYTES))
        .collect();
    let mut read = 0u64;
    let mut returned = Vec::new();
    let mut flush_pendings = 0;
    let mut started = Some(started);
    let mut read_event = None;
    while (returned.len() as u64) < REPLIES {
        // Read what can be read, up to the bound.
        let mut batch = Vec::new();
        loop {
            match conn.recv_request().expect("recv_request") {
                Incoming::Pending => break,
                Incoming::Request(header) => batch.push(header),
                Incoming::Closed => panic!("closed after {read} requests"),
            }
        }
        if let Some(event) = read_event.take() {
            assert_moved(&conn, event, "recv_request");
        }
        assert!(conn.unanswered() <= MAX_PIPELINED_REQUESTS);
        // Answer the batch, last first, each payload from its own buffer in two spans.
        for (j, header) in batch.iter().enumerate().rev() {
            let i = read + j as u64;
            assert_eq!(header.request_id, id(i), "requests are read in order");
            let cut = (i as usize * 7919) % PAYLOAD_BYTES;
            let body = format!("data {i}");
            // SAFETY: `payloads[i]` neither moves nor is written until token(i) comes back.
            unsafe {
                conn.reply_with_payload(
                    header,
                    0,
                    body.as_bytes(),
                    spans(&mut payloads[i as usize], &[cut, PAYLOAD_BYTES - cut]),
                    token(i),
                )
            }
            .expect("reply_with_payload");
        }
        read += batch.len() as u64;
        let mut sent = Vec::new();
        let progress = conn.flush(&mut sent).expect("flush");
        for t in sent {
            let i = returned.len() as u64;
            assert_eq!(t, token(i), "tokens come back in request order");
            payloads[i as usize].fill(POISON);
            returned.push(t);
        }
        match progress {
            Progress::Pending => {
                flush_pendings += 1;
                assert!(conn.wants_write());
                if let Some(started) = started.take() {
                    started.send(()).expect("start the reader");
                }
                wait_writable(&conn);
            }
            Progress::Done => {
                assert_eq!(conn.unanswered(), 0, "every reply read was given");
                assert_eq!(returned.len() as u64, read);
                if batch.is_empty() && read < REPLIES {
                    wait_readable(&mut conn);
                    read_event = Some(Instant::now());
                }
            }
        }
    }
    if let Some(started) = started.take() {
        let _ = started.send(());
    }
    assert!(flush_pendings >= 1, "flush never said Pending");
    assert_eq!(read, REPLIES);
    assert_eq!(conn.unanswered(), 0);
    assert!(!conn.wants_write());
    let total = reader.join().expect("reader thread");
    assert_eq!(total, REPLIES * PAYLOAD_BYTES as u64);
}

// ---------------------------------------------------------------------------------------
// End to end with the crate's own listener and client.
// ---------------------------------------------------------------------------------------

/// `Listener` + `into_stream` serve a real `Connection` client end to end, payloads both ways.
#[test]
fn into_stream_serves_a_real_client_end_to_end() {
    let listener =
        Listener::bind(&Endpoint::parse("tcp://127.0.0.1:0").expect("endpoint")).expect("bind");
    let endpoint = listener.endpoint().clone();
    let written = pattern_bytes(14, 200_000);
    let mut read_back = pattern_bytes(15, 250_000);

    let expected_written = written.clone();
    let client = thread::spawn(move || {
        let mut conn = Connection::connect(&endpoint, ConnectOptions::default()).expect("connect");
        assert_eq!(conn.kind(), Kind::Tcp);
        let mut write_body = Vec::new();
        let write = conn
            .call(
                Opcode::Write,
                b"write-extents",
                Bulk::Send(&[
                    IoSlice::new(&expected_written[..1000]),
                    IoSlice::new(&expected_written[1000..]),
                ]),
                &mut write_body,
            )
            .expect("write call");
        let (mut a, mut b) = (vec![0u8; 100_000], vec![0u8; 300_000]);
        let mut read_body = Vec::new();
        let read = conn
            .call(
                Opcode::Read,
                b"read-extents",
                Bulk::Recv(&mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)]),
                &mut read_body,
            )
            .expect("read call");
        (write, write_body, read, read_body, [a, b].concat())
    });

    let accepted = listener
        .accept(WAIT)
        .expect("accept")
        .expect("a client within the wait");
    assert_eq!(accepted.kind(), Kind::Tcp);
    let peer = accepted.peer();
    let mut conn = accepted
        .into_stream()
        .expect("a fresh TCP connection becomes a StreamConn");
    assert_eq!(conn.peer(), peer);

    let write = until_request(&mut conn);
    assert_eq!(write.opcode, Opcode::Write);
    assert_eq!(conn.body(), b"write-extents");
    assert_eq!(write.payload_len, 200_000);
    let mut got = vec![0u8; 200_000];
    until_payload(&mut conn, &mut [&mut got]).expect("payload");
    assert_eq!(got, written);
    conn.reply(&write, 0, crc32c::crc32c(&got).to_le_bytes(), 1)
        .expect("reply");
    assert_eq!(flushed(&mut conn), [1]);

    let read = until_request(&mut conn);
    assert_eq!(read.opcode, Opcode::Read);
    assert_ne!(read.request_id, write.request_id);
    assert_eq!(conn.body(), b"read-extents");
    assert_eq!(read.payload_len, 0);
    // SAFETY: `read_back` neither moves nor is written until token 2 comes back.
    unsafe {
        conn.reply_with_payload(
            &read,
            0,
            b"read-ok",
            spans(&mut read_back, &[7, 150_000 - 7, 100_000]),
            2,
        )
    }
    .expect("reply_with_payload");
    assert_eq!(flushed(&mut conn), [2]);
    let expected_read_back = read_back.clone();
    read_back.fill(POISON);

    let (write_reply, write_body, read_reply, read_body, landed) =
        client.join().expect("client thread");
    assert_eq!(write_reply.status, 0);
    assert_eq!(write_reply.payload_len, 0);
    assert_eq!(write_body, crc32c::crc32c(&written).to_le_bytes());
    assert_eq!(read_reply.status, 0);
    assert_eq!(read_reply.payload_len, 250_000);
    assert_eq!(read_body, b"read-ok");
    assert_bytes(&landed[..250_000], &expected_read_back, "read payload");
    assert!(
        landed[250_000..].iter().all(|&b| b == 0),
        "bytes past the payload"
    );

    // The client dropped its connection.
    assert_eq!(until_incoming(&mut conn).expect("closed"), Incoming::Closed);
}

/// A reply whose body would not fit one message (the caller's bug, or data that grew) goes
/// out as an error reply naming the size, not as a panic; the connection goes on.
#[test]
fn a_reply_too_long_for_a_message_is_an_error_reply() {
    use nacre_transport::limits::MAX_BODY_BYTES;
    use nacre_transport::wire::REPLY_TOO_LONG_STATUS;
    let (mut conn, mut client) = pair();
    client
        .write_all(&request_bytes(Opcode::Stat, 7, b"", b""))
        .expect("send");
    client
        .write_all(&request_bytes(Opcode::Stat, 8, b"", b""))
        .expect("send");
    let first = until_request(&mut conn);
    let huge = vec![1u8; MAX_BODY_BYTES as usize + 1];
    conn.reply(&first, 0, huge, 70)
        .expect("replaced, not refused");
    let second = until_request(&mut conn);
    conn.reply(&second, 0, b"fine".to_vec(), 80).expect("reply");
    assert_eq!(flushed(&mut conn), vec![70, 80]);
    let (head, body) = read_reply(&mut client);
    assert_eq!((head.request_id, head.status), (7, REPLY_TOO_LONG_STATUS));
    let message = String::from_utf8(body).expect("text");
    assert!(
        message.contains(&format!("{}", MAX_BODY_BYTES + 1)),
        "{message}"
    );
    let (head, body) = read_reply(&mut client);
    assert_eq!(
        (head.request_id, head.status, &body[..]),
        (8, 0, &b"fine"[..])
    );
}
