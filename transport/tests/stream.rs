//! The nonblocking server connection ([`StreamConn`]) over real loopback sockets, driven the
//! way an event loop drives it: wait for readiness (`poll`), say so (`readable`), call until
//! `Pending`, carry on.
//!
//! Requests that trickle in a byte at a time, replies far larger than the socket buffers,
//! requests with unknown opcodes, garbage, peers that close early, payloads left untaken,
//! several requests in one read, misuse by the caller, and a real [`Connection`] client
//! served end to end.
//!
//! Nothing sleeps to order events: clients and server step each other through channels, and
//! every wait is bounded (a test that would hang fails after [`WAIT`] instead).

mod common;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use common::{WAIT, poll_fd};
use nacre_transport::buffer::INPUT_BUFFER_BYTES;
use nacre_transport::limits::{HEADER_BYTES, MAX_PAYLOAD_BYTES};
use nacre_transport::wire::{Extent, Header, Opcode, WireError, decode_extents, encode_extents};
use nacre_transport::{
    Bulk, ConnectOptions, Connection, Endpoint, Incoming, Kind, Listener, Progress, StreamConn,
    TransportError, TransportOp,
};

// ---------------------------------------------------------------------------------------
// Helpers: sockets, readiness, drivers, messages.
// ---------------------------------------------------------------------------------------

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
    poll_fd(conn.fd(), libc::POLLIN);
    conn.readable();
}

/// Waits until `conn`'s socket has room to write.
fn wait_writable(conn: &StreamConn) {
    poll_fd(conn.fd(), libc::POLLOUT);
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

/// Writes the current reply out, waiting for room between calls; returns how many times it
/// was `Pending`.
fn until_flushed(conn: &mut StreamConn, payload: &[IoSlice<'_>]) -> Result<usize, TransportError> {
    let mut pendings = 0;
    let mut after_event = None;
    loop {
        match conn.flush(payload)? {
            Progress::Pending => {
                if let Some(event) = after_event {
                    assert_moved(conn, event, "flush");
                }
                pendings += 1;
                wait_writable(conn);
                after_event = Some(Instant::now());
            }
            Progress::Done => return Ok(pendings),
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

/// A whole request on the wire: header, body, payload.
fn request_bytes(opcode: Opcode, request_id: u64, body: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Header::request(opcode, request_id, body, payload.len() as u64)
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

    conn.start_reply(&header, 0, b"written", 0)
        .expect("start_reply");
    assert!(conn.mid_message() && conn.replying());
    until_flushed(&mut conn, &[]).expect("flush");
    assert!(!conn.mid_message() && !conn.replying());

    let (reply, reply_body, _client) = sender.join().expect("client thread");
    assert_eq!(reply.opcode, Opcode::Write);
    assert_eq!(reply.request_id, 0x1234_5678_9abc);
    assert_eq!((reply.status, reply.payload_len), (0, 0));
    assert_eq!(reply_body, b"written");
}

/// Serves one request whose reply carries a payload cut into slices of `sizes` bytes, to a
/// client that starts reading only once `flush` has said `Pending`; checks every byte the
/// client gets. Returns how many times `flush` was `Pending`.
fn reply_to_a_slow_reader(sizes: &[usize], seed: u64) -> usize {
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

    let payload = pattern_bytes(seed, total);
    let mut slices = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for &size in sizes {
        slices.push(IoSlice::new(&payload[at..at + size]));
        at += size;
    }

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

    conn.start_reply(&header, 0, b"extent-map", total as u64)
        .expect("start_reply");
    let mut pendings = 0;
    while conn.flush(&slices).expect("flush") == Progress::Pending {
        pendings += 1;
        assert!(conn.replying() && conn.mid_message());
        if pendings == 1 {
            started.send(()).expect("start the reader");
        }
        wait_writable(&conn);
    }
    // If flush never waited, the reader has not been started yet.
    let _ = started.send(());
    assert!(!conn.replying() && !conn.mid_message());

    let (reply, body, got) = reader.join().expect("reader thread");
    assert_eq!(reply.opcode, Opcode::Read);
    assert_eq!(reply.request_id, 42);
    assert_eq!(reply.status, 0);
    assert_eq!(body, b"extent-map");
    assert_eq!(reply.payload_len, total as u64);
    assert_eq!(got, total as u64);
    pendings
}

/// A 32 MiB reply in uneven slices waits for the slow reader and arrives byte for byte.
#[test]
fn a_reply_far_larger_than_the_socket_buffers_is_flushed_across_pendings() {
    let mib = 1 << 20;
    let sizes = [mib + 3, 7 * mib - 3, 13, 16 * mib - 13, 8 * mib];
    assert_eq!(sizes.iter().sum::<usize>(), 32 * mib);
    let pendings = reply_to_a_slow_reader(&sizes, 2);
    assert!(pendings >= 1, "flush never said Pending");
}

/// A reply in far more slices than one writev takes (some empty) arrives byte for byte.
#[test]
fn a_reply_in_hundreds_of_slices_some_empty_arrives_in_order() {
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
    let mut head =
        Header::request(Opcode::Write, 500, &junk_body, junk_payload.len() as u64).encode();
    head[6..8].copy_from_slice(&999u16.to_le_bytes());
    reseal(&mut head);
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
    let got = [a, b].concat();
    assert_eq!(got, next_payload);
    conn.start_reply(&header, 0, &[], got.len() as u64)
        .expect("start_reply");
    until_flushed(&mut conn, &[IoSlice::new(&got)]).expect("flush");

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
    assert!(is_broken(conn.flush(&[])));
    let ping = Header::request(Opcode::Ping, 1, &[], 0);
    assert!(is_broken(conn.start_reply(&ping, 0, &[], 0)));
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
    conn.start_reply(&header, 0, &[], 0).expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");
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
    let mut head = Header::request(Opcode::Write, 12, &[], 1000).encode();
    head[6..8].copy_from_slice(&77u16.to_le_bytes());
    reseal(&mut head);
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

/// A reply started with the request's payload untaken drops it; the next request is intact.
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
    conn.start_reply(&first, libc::ENOSPC, b"refused", 0)
        .expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");
    assert!(
        conn.mid_message(),
        "the untaken payload is still to be dropped"
    );
    assert!(
        is_unexpected(conn.recv_payload(&mut [])),
        "the answered request's payload is no longer the caller's"
    );

    let second = until_request(&mut conn);
    assert_eq!(second.opcode, Opcode::Write);
    assert_eq!(second.request_id, 2);
    assert_eq!(conn.body(), b"second");
    assert_eq!(second.payload_len, 5000);
    let mut got = vec![0u8; 5000];
    until_payload(&mut conn, &mut [&mut got]).expect("payload");
    assert_eq!(got, second_payload);
    conn.start_reply(&second, 0, b"ok", 0).expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");

    let ((r1, b1), (r2, b2)) = client.join().expect("client thread");
    assert_eq!((r1.request_id, r1.status), (1, libc::ENOSPC));
    assert_eq!(b1, b"refused");
    assert_eq!((r2.request_id, r2.status), (2, 0));
    assert_eq!(b2, b"ok");
}

/// A payload taken in part before the reply starts: the rest is dropped, exactly.
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
    conn.start_reply(&header, libc::EIO, &[], 0)
        .expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");
    go.send(()).expect("go");

    let second = until_request(&mut conn);
    assert_eq!((second.opcode, second.request_id), (Opcode::Ping, 2));
    assert_eq!(conn.body(), b"next");
    let mut got = [0u8; 3];
    until_payload(&mut conn, &mut [&mut got]).expect("payload");
    assert_eq!(got[..], next_payload[..]);
    conn.start_reply(&second, 0, &[], 0).expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");

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
    let mut unknown = Header::request(Opcode::Write, 2, &[7; 10], 20).encode();
    unknown[6..8].copy_from_slice(&300u16.to_le_bytes());
    reseal(&mut unknown);
    message.extend_from_slice(&unknown);
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
    conn.start_reply(&a, 0, b"a", 0).expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");

    let c = until_request(&mut conn);
    assert_eq!(
        (c.opcode, c.request_id, c.payload_len),
        (Opcode::Ping, 3, 5)
    );
    assert_eq!(conn.body(), b"c");
    conn.start_reply(&c, 0, b"c", 0).expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");

    let d = until_request(&mut conn);
    assert_eq!((d.opcode, d.request_id), (Opcode::Stat, 4));
    assert_eq!(conn.body(), b"d");
    conn.start_reply(&d, 0, b"d", 0).expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");

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

/// Wrong-sized destinations or slices and out-of-order calls are `Unexpected`, not panics.
#[test]
fn misuse_is_an_unexpected_error_not_a_panic() {
    let (mut conn, mut client) = pair();

    // No request yet: no payload to receive, no reply to flush.
    assert!(is_unexpected(conn.recv_payload(&mut [])));
    assert_eq!(conn.flush(&[]).expect("nothing to flush"), Progress::Done);

    let payload = pattern_bytes(11, 100);
    client
        .write_all(&request_bytes(Opcode::Write, 5, b"w", &payload))
        .expect("send");
    let header = until_request(&mut conn);
    assert_eq!(header.payload_len, 100);

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
    assert!(
        is_unexpected(conn.recv_request()),
        "a request read before the last was answered"
    );

    // The right destinations still get the whole payload.
    let (mut a, mut b) = (vec![0u8; 60], vec![0u8; 40]);
    until_payload(&mut conn, &mut [&mut a, &mut b]).expect("payload");
    assert_eq!([a, b].concat(), payload);

    let reply_payload = pattern_bytes(12, 10);
    conn.start_reply(&header, 0, b"r", 10).expect("start_reply");
    assert!(
        is_unexpected(conn.start_reply(&header, 0, b"r", 10)),
        "a second reply while one is being sent"
    );
    assert!(is_unexpected(
        conn.flush(&[IoSlice::new(&reply_payload[..9])])
    ));
    assert!(is_unexpected(conn.flush(&[])));
    assert!(
        is_unexpected(conn.recv_request()),
        "a request read before the reply was sent"
    );
    until_flushed(
        &mut conn,
        &[
            IoSlice::new(&reply_payload[..3]),
            IoSlice::new(&reply_payload[3..]),
        ],
    )
    .expect("flush");
    assert!(
        is_unexpected(conn.start_reply(&header, 0, b"again", 0)),
        "a second reply to a request already answered"
    );

    let (reply, body) = read_reply(&mut client);
    assert_eq!(
        (reply.request_id, reply.status, reply.payload_len),
        (5, 0, 10)
    );
    assert_eq!(body, b"r");
    assert_eq!(read_payload(&mut client, 10), reply_payload);

    // And the connection goes on.
    client
        .write_all(&request_bytes(Opcode::Stat, 6, b"s", &[]))
        .expect("send");
    let header = until_request(&mut conn);
    assert_eq!((header.opcode, header.request_id), (Opcode::Stat, 6));
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
// End to end with the crate's own listener and client.
// ---------------------------------------------------------------------------------------

/// `Listener` + `into_stream` serve a real `Connection` client end to end, payloads both ways.
#[test]
fn into_stream_serves_a_real_client_end_to_end() {
    let listener =
        Listener::bind(&Endpoint::parse("tcp://127.0.0.1:0").expect("endpoint")).expect("bind");
    let endpoint = listener.endpoint().clone();
    let written = pattern_bytes(14, 200_000);
    let read_back = pattern_bytes(15, 250_000);

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
    conn.start_reply(&write, 0, &crc32c::crc32c(&got).to_le_bytes(), 0)
        .expect("start_reply");
    until_flushed(&mut conn, &[]).expect("flush");

    let read = until_request(&mut conn);
    assert_eq!(read.opcode, Opcode::Read);
    assert_ne!(read.request_id, write.request_id);
    assert_eq!(conn.body(), b"read-extents");
    assert_eq!(read.payload_len, 0);
    conn.start_reply(&read, 0, b"read-ok", read_back.len() as u64)
        .expect("start_reply");
    until_flushed(
        &mut conn,
        &[
            IoSlice::new(&read_back[..7]),
            IoSlice::new(&read_back[7..150_000]),
            IoSlice::new(&read_back[150_000..]),
        ],
    )
    .expect("flush");

    let (write_reply, write_body, read_reply, read_body, landed) =
        client.join().expect("client thread");
    assert_eq!(write_reply.status, 0);
    assert_eq!(write_reply.payload_len, 0);
    assert_eq!(write_body, crc32c::crc32c(&written).to_le_bytes());
    assert_eq!(read_reply.status, 0);
    assert_eq!(read_reply.payload_len, 250_000);
    assert_eq!(read_body, b"read-ok");
    assert_eq!(&landed[..250_000], &read_back[..]);
    assert!(
        landed[250_000..].iter().all(|&b| b == 0),
        "bytes past the payload"
    );

    // The client dropped its connection.
    assert_eq!(until_incoming(&mut conn).expect("closed"), Incoming::Closed);
}
