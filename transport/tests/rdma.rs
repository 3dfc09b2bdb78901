//! RDMA transport against a real device. Needs NACRE_RDMA_ADDR (an address of an RDMA
//! interface; scripts/rdma-test.sh runs these in a Soft-RoCE VM where it is set). Without
//! it, or without a device, each test says `SKIPPED <name>: no RDMA device` and passes.
#![cfg(feature = "rdma")]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use nacre_transport::rdma::{
    MAX_MESSAGE_BYTES, MAX_RDMA_CHUNK_BYTES, RECV_QUEUE_DEPTH, RdmaConnection, RdmaDomain,
    RdmaError, RdmaListener, RemoteBuf, can_reach, devices,
};

/// Connection set-up bound in tests (the VM is slow, not the code).
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one operation in tests.
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Several MiB plus an odd tail, so chunking and the last partial chunk are both used.
const BULK_BYTES: usize = 8 * 1024 * 1024 + 12_345;
/// Large enough that a transfer is still running when the peer goes away.
const DISCONNECT_BULK_BYTES: usize = 32 * 1024 * 1024;
/// Transfers tried before the peer's disconnect must have been noticed.
const MAX_TRANSFERS_AFTER_DROP: usize = 20;

/// The address to test on, or `None` (after saying so) where no RDMA device exists.
fn rdma_addr(test: &str, port: u16) -> Option<SocketAddr> {
    let configured = std::env::var("NACRE_RDMA_ADDR")
        .ok()
        .and_then(|s| s.parse::<IpAddr>().ok());
    let has_device = devices().map(|found| !found.is_empty()).unwrap_or(false);
    match configured {
        Some(ip) if has_device => Some(SocketAddr::new(ip, port)),
        _ => {
            // Straight to the process's stderr, past the test harness's output capture, so
            // the skip shows in a plain `cargo test` run too.
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no RDMA device");
            None
        }
    }
}

/// Starts a listener on `addr` in a thread that hands its first connection to `serve`;
/// returns once the listener is bound.
fn spawn_server<T, F>(addr: SocketAddr, serve: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce(RdmaConnection) -> T + Send + 'static,
{
    let (bound_tx, bound_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let listener = RdmaListener::bind(addr).expect("bind the listener");
        bound_tx
            .send(listener.local_addr())
            .expect("the test waits for the bind");
        let conn = listener.accept(SETUP_TIMEOUT).expect("accept a connection");
        serve(conn)
    });
    let bound = bound_rx
        .recv()
        .expect("the listener thread binds (see its panic)");
    assert_eq!(bound, addr, "listener bound where asked");
    handle
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 13) as u8))
        .collect()
}

fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(at) = actual.iter().zip(expected).position(|(a, e)| a != e) {
        panic!(
            "{what}: first difference at byte {at}: {} != {}",
            actual[at], expected[at]
        );
    }
}

#[test]
fn rdma_devices_lists_an_active_port() {
    if rdma_addr("rdma_devices_lists_an_active_port", 0).is_none() {
        return;
    }
    let found = devices().expect("list devices");
    eprintln!("devices: {found:?}");
    if let Ok(name) = std::env::var("NACRE_RDMA_DEV") {
        let device = found
            .iter()
            .find(|d| d.name == name)
            .expect("NACRE_RDMA_DEV is listed");
        assert!(
            device.ports.iter().any(|p| p.active),
            "{name} has an active port: {device:?}"
        );
    }
}

#[test]
fn rdma_can_reach_the_rdma_address_only() {
    let Some(addr) = rdma_addr("rdma_can_reach_the_rdma_address_only", 7470) else {
        return;
    };
    assert!(
        can_reach(addr, SETUP_TIMEOUT),
        "{addr} is reachable through an RDMA device"
    );
    // TEST-NET-2: no interface has a route there, so no RDMA device reaches it.
    let nowhere: SocketAddr = "198.51.100.7:7470".parse().expect("literal address");
    assert!(
        !can_reach(nowhere, Duration::from_secs(2)),
        "{nowhere} is not reachable"
    );
}

#[test]
fn rdma_messages_both_ways() {
    let Some(addr) = rdma_addr("rdma_messages_both_ways", 7471) else {
        return;
    };
    // More round trips than receive slots, so reposting is exercised.
    let rounds = RECV_QUEUE_DEPTH * 3;
    let server = spawn_server(addr, move |mut conn| {
        let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
        for round in 0..rounds {
            let len = conn.recv(&mut buf, OP_TIMEOUT).expect("server recv");
            assert_same(
                &buf[..len],
                &pattern(round * 997 % MAX_MESSAGE_BYTES, round as u8),
                "request",
            );
            let reply = pattern(len / 2, round as u8 ^ 0x5a);
            conn.send(&reply, OP_TIMEOUT).expect("server send");
        }
        let big = pattern(MAX_MESSAGE_BYTES, 7);
        conn.send(&big, OP_TIMEOUT)
            .expect("server send of a full message");
        conn.send(&[], OP_TIMEOUT)
            .expect("server send of an empty message");
        let len = conn
            .recv(&mut buf, OP_TIMEOUT)
            .expect("server waits for the client's last word");
        assert_eq!(&buf[..len], b"bye");
    });
    let mut conn = RdmaConnection::connect(addr, SETUP_TIMEOUT).expect("connect");
    assert_eq!(conn.peer_addr(), addr);
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    for round in 0..rounds {
        let request = pattern(round * 997 % MAX_MESSAGE_BYTES, round as u8);
        conn.send(&request, OP_TIMEOUT).expect("client send");
        let len = conn.recv(&mut buf, OP_TIMEOUT).expect("client recv");
        assert_same(
            &buf[..len],
            &pattern(request.len() / 2, round as u8 ^ 0x5a),
            "reply",
        );
    }
    // A full message does not fit a small buffer, and stays queued for a large one.
    let mut small = [0u8; 16];
    match conn.recv(&mut small, OP_TIMEOUT) {
        Err(RdmaError::BufferTooSmall { len, .. }) => assert_eq!(len, MAX_MESSAGE_BYTES),
        other => panic!("expected BufferTooSmall, got {other:?}"),
    }
    let len = conn
        .recv(&mut buf, OP_TIMEOUT)
        .expect("client recv of a full message");
    assert_same(&buf[..len], &pattern(MAX_MESSAGE_BYTES, 7), "full message");
    assert_eq!(
        conn.recv(&mut buf, OP_TIMEOUT)
            .expect("client recv of an empty message"),
        0
    );
    let too_big = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        conn.send(&too_big, OP_TIMEOUT),
        Err(RdmaError::MessageTooLarge { .. })
    ));
    // Nothing is coming: the wait ends at its bound, and the connection stays usable.
    assert!(matches!(
        conn.recv(&mut buf, Duration::from_millis(200)),
        Err(RdmaError::Timeout { .. })
    ));
    conn.send(b"bye", OP_TIMEOUT)
        .expect("client send after a receive timeout");
    server.join().expect("server thread");
}

#[test]
fn rdma_write_and_read_several_mib() {
    let Some(addr) = rdma_addr("rdma_write_and_read_several_mib", 7472) else {
        return;
    };
    let server = spawn_server(addr, |mut conn| {
        let original = pattern(BULK_BYTES, 1);
        let mut memory = original.clone();
        let region = conn.register(&mut memory).expect("server register");
        conn.send(&region.remote().to_le_bytes(), OP_TIMEOUT)
            .expect("send the remote buffer");
        let mut buf = [0u8; 64];
        let len = conn
            .recv(&mut buf, OP_TIMEOUT)
            .expect("wait for the client's writes");
        assert_eq!(&buf[..len], b"written");
        // The client wrote its own pattern over all of it, then pattern 3 over one slice.
        let mut expected = pattern(BULK_BYTES, 2);
        let slice_at = MAX_RDMA_CHUNK_BYTES as usize - 100;
        expected[slice_at..slice_at + 5000].copy_from_slice(&pattern(5000, 3));
        assert_same(&region, &expected, "bytes the client wrote");
        conn.send(b"verified", OP_TIMEOUT)
            .expect("send the verdict");
    });
    let mut conn = RdmaConnection::connect(addr, SETUP_TIMEOUT).expect("connect");
    let mut buf = [0u8; RemoteBuf::ENCODED_BYTES];
    let len = conn
        .recv(&mut buf, OP_TIMEOUT)
        .expect("receive the remote buffer");
    assert_eq!(len, RemoteBuf::ENCODED_BYTES);
    let remote = RemoteBuf::from_le_bytes(buf);
    assert_eq!(remote.len as usize, BULK_BYTES);

    let mut pulled = vec![0u8; BULK_BYTES];
    let mut pulled_region = conn
        .register(&mut pulled)
        .expect("register the read target");
    conn.read(&mut pulled_region, 0, remote, OP_TIMEOUT)
        .expect("rdma read");
    assert_same(
        &pulled_region,
        &pattern(BULK_BYTES, 1),
        "bytes read from the server",
    );

    let mut outgoing = pattern(BULK_BYTES, 2);
    outgoing.extend_from_slice(&pattern(5000, 3));
    let outgoing_region = conn
        .register(&mut outgoing)
        .expect("register the write source");
    conn.write(&outgoing_region, 0, remote, OP_TIMEOUT)
        .expect("rdma write");
    // A part of a region into a part of the peer's, across a chunk boundary.
    let slice_at = MAX_RDMA_CHUNK_BYTES - 100;
    let part = remote
        .slice(slice_at, 5000)
        .expect("slice inside the remote buffer");
    conn.write(&outgoing_region, BULK_BYTES, part, OP_TIMEOUT)
        .expect("rdma write of a slice");
    // Past either end is refused before anything is posted.
    assert!(matches!(
        conn.write(&outgoing_region, BULK_BYTES + 1, part, OP_TIMEOUT),
        Err(RdmaError::OutOfBounds { .. })
    ));
    assert!(remote.slice(remote.len - 10, 11).is_none());
    conn.send(b"written", OP_TIMEOUT).expect("tell the server");
    let mut verdict = [0u8; 64];
    let len = conn
        .recv(&mut verdict, OP_TIMEOUT)
        .expect("receive the verdict");
    assert_eq!(&verdict[..len], b"verified");
    server.join().expect("server thread");
}

#[test]
fn rdma_peer_disconnect_mid_transfer_fails_with_the_peer_named() {
    let Some(addr) = rdma_addr(
        "rdma_peer_disconnect_mid_transfer_fails_with_the_peer_named",
        7473,
    ) else {
        return;
    };
    let server = spawn_server(addr, |mut conn| {
        let mut memory = vec![0u8; DISCONNECT_BULK_BYTES];
        let region = conn.register(&mut memory).expect("server register");
        conn.send(&region.remote().to_le_bytes(), OP_TIMEOUT)
            .expect("send the remote buffer");
        let mut buf = [0u8; 16];
        let len = conn
            .recv(&mut buf, OP_TIMEOUT)
            .expect("wait for the client to start");
        assert_eq!(&buf[..len], b"go");
        // Going away while the client's transfer runs: connection first, then region.
        drop(conn);
        drop(region);
    });
    let mut conn = RdmaConnection::connect(addr, SETUP_TIMEOUT).expect("connect");
    let mut buf = [0u8; RemoteBuf::ENCODED_BYTES];
    conn.recv(&mut buf, OP_TIMEOUT)
        .expect("receive the remote buffer");
    let remote = RemoteBuf::from_le_bytes(buf);
    let mut source = pattern(DISCONNECT_BULK_BYTES, 9);
    let region = conn
        .register(&mut source)
        .expect("register the write source");
    conn.send(b"go", OP_TIMEOUT).expect("send go");
    let mut failure = None;
    for _ in 0..MAX_TRANSFERS_AFTER_DROP {
        if let Err(err) = conn.write(&region, 0, remote, OP_TIMEOUT) {
            failure = Some(err);
            break;
        }
    }
    let failure = failure.expect("a write fails once the peer has gone");
    eprintln!("transfer failed as expected: {failure}");
    assert!(
        matches!(
            failure,
            RdmaError::Disconnected { .. } | RdmaError::Completion { .. }
        ),
        "a disconnect, not a timeout: {failure:?}"
    );
    assert!(
        failure.to_string().contains(&addr.to_string()),
        "the error names the peer: {failure}"
    );
    // Later operations fail at once, naming the peer too.
    let later = conn
        .send(b"anyone?", OP_TIMEOUT)
        .expect_err("send after the peer left");
    eprintln!("later send failed as expected: {later}");
    assert!(
        later.to_string().contains(&addr.to_string()),
        "the error names the peer: {later}"
    );
    let mut sink = [0u8; 16];
    assert!(
        conn.recv(&mut sink, OP_TIMEOUT).is_err(),
        "recv after the peer left"
    );
    server.join().expect("server thread");
}

#[test]
fn rdma_pending_recv_fails_when_the_peer_leaves() {
    let Some(addr) = rdma_addr("rdma_pending_recv_fails_when_the_peer_leaves", 7474) else {
        return;
    };
    let (peer_tx, peer_rx) = mpsc::channel();
    let server = spawn_server(addr, move |mut conn| {
        peer_tx
            .send(conn.peer_addr())
            .expect("the test waits for the peer address");
        let mut buf = [0u8; 64];
        // A message sent before the peer left is still delivered...
        let len = conn.recv(&mut buf, OP_TIMEOUT).expect("the last message");
        assert_eq!(&buf[..len], b"last words");
        // ...and the wait after it ends with the disconnect, long before OP_TIMEOUT.
        conn.recv(&mut buf, OP_TIMEOUT)
            .expect_err("recv after the peer left")
    });
    let mut conn = RdmaConnection::connect(addr, SETUP_TIMEOUT).expect("connect");
    conn.send(b"last words", OP_TIMEOUT).expect("send");
    let client_addr = peer_rx.recv().expect("the server reports its peer");
    drop(conn);
    let err = server.join().expect("server thread");
    eprintln!("pending recv failed as expected: {err}");
    assert!(
        matches!(err, RdmaError::Disconnected { .. }),
        "a disconnect: {err:?}"
    );
    assert!(
        err.to_string().contains(&client_addr.to_string()),
        "the error names the peer: {err}"
    );
}

#[test]
fn rdma_accept_and_connect_time_out() {
    let Some(addr) = rdma_addr("rdma_accept_and_connect_time_out", 7475) else {
        return;
    };
    let listener = RdmaListener::bind(addr).expect("bind");
    let err = listener
        .accept(Duration::from_millis(200))
        .expect_err("nobody connects");
    assert!(
        matches!(err, RdmaError::Timeout { .. }),
        "a timeout: {err:?}"
    );
    drop(listener);
    // Nobody listens on this port: the peer's device rejects the request at once.
    let err = RdmaConnection::connect(addr, SETUP_TIMEOUT).expect_err("nobody listens");
    eprintln!("connect without a listener failed as expected: {err}");
    assert!(
        err.to_string().contains(&addr.to_string()),
        "the error names the peer: {err}"
    );
}

#[test]
fn rdma_domain_region_serves_several_connections() {
    let Some(addr) = rdma_addr("rdma_domain_region_serves_several_connections", 7476) else {
        return;
    };
    const REGION_BYTES: usize = 3 * 1024 * 1024 + 7;
    let (bound_tx, bound_rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let domain = RdmaDomain::for_local(addr.ip()).expect("server domain");
        let mut memory = pattern(REGION_BYTES, 4);
        // Registered once, before any connection exists, and offered on each.
        let region = domain
            .register(&mut memory)
            .expect("register in the domain");
        let listener = RdmaListener::bind(addr).expect("bind");
        bound_tx
            .send(domain.device_name().to_string())
            .expect("the test waits for the bind");
        let mut conns = Vec::new();
        for _ in 0..2 {
            let mut conn = listener
                .accept_in(&domain, SETUP_TIMEOUT)
                .expect("accept in the domain");
            conn.send(&region.remote().to_le_bytes(), OP_TIMEOUT)
                .expect("send the remote buffer");
            conns.push(conn);
        }
        let mut buf = [0u8; 16];
        for conn in &mut conns {
            let len = conn
                .recv(&mut buf, OP_TIMEOUT)
                .expect("wait for the client");
            assert_eq!(&buf[..len], b"done");
        }
    });
    let server_device = bound_rx.recv().expect("the server binds (see its panic)");
    let domain = RdmaDomain::for_peer(addr, SETUP_TIMEOUT).expect("client domain");
    assert_eq!(
        domain.device_name(),
        server_device,
        "one device reaches itself"
    );
    if let Ok(name) = std::env::var("NACRE_RDMA_DEV") {
        assert_eq!(domain.device_name(), name);
    }
    let mut local = vec![0u8; 2 * REGION_BYTES];
    let mut region = domain
        .register(&mut local)
        .expect("register in the client domain");
    let mut conns: Vec<RdmaConnection> = (0..2)
        .map(|_| {
            RdmaConnection::connect_in(&domain, addr, SETUP_TIMEOUT).expect("connect in the domain")
        })
        .collect();
    for (index, conn) in conns.iter_mut().enumerate() {
        let mut buf = [0u8; RemoteBuf::ENCODED_BYTES];
        conn.recv(&mut buf, OP_TIMEOUT)
            .expect("receive the remote buffer");
        let remote = RemoteBuf::from_le_bytes(buf);
        conn.read(&mut region, index * REGION_BYTES, remote, OP_TIMEOUT)
            .expect("rdma read through the domain");
    }
    assert_same(
        &region[..REGION_BYTES],
        &pattern(REGION_BYTES, 4),
        "read over the first connection",
    );
    assert_same(
        &region[REGION_BYTES..],
        &pattern(REGION_BYTES, 4),
        "read over the second connection",
    );
    for conn in &mut conns {
        conn.send(b"done", OP_TIMEOUT).expect("tell the server");
    }
    server.join().expect("server thread");
    // A region of the domain is refused by a connection with a protection domain of its own.
    let other = SocketAddr::new(addr.ip(), addr.port() + 1);
    let server = spawn_server(other, |mut conn| {
        let mut buf = [0u8; 16];
        let len = conn
            .recv(&mut buf, OP_TIMEOUT)
            .expect("wait for the client");
        assert_eq!(&buf[..len], b"bye");
    });
    let mut own = RdmaConnection::connect(other, SETUP_TIMEOUT).expect("connect without a domain");
    let somewhere = RemoteBuf {
        addr: 4096,
        rkey: 1,
        len: 16,
    };
    let err = own
        .read(&mut region, 0, somewhere, OP_TIMEOUT)
        .expect_err("a region of another domain");
    assert!(
        matches!(err, RdmaError::ForeignRegion { .. }),
        "refused before posting: {err:?}"
    );
    own.send(b"bye", OP_TIMEOUT)
        .expect("the connection is still usable");
    server.join().expect("server thread");
}

#[test]
fn rdma_send_to_a_peer_that_does_not_receive_times_out() {
    let Some(addr) = rdma_addr("rdma_send_to_a_peer_that_does_not_receive_times_out", 7478) else {
        return;
    };
    let (finished_tx, finished_rx) = mpsc::channel::<()>();
    let server = spawn_server(addr, move |conn| {
        // Takes no message: its receive buffers fill up, then senders meet RNR retries.
        let _ = finished_rx.recv();
        drop(conn);
    });
    let mut conn = RdmaConnection::connect(addr, SETUP_TIMEOUT).expect("connect");
    for _ in 0..RECV_QUEUE_DEPTH {
        conn.send(b"queued", OP_TIMEOUT)
            .expect("a send the peer's buffers take");
    }
    let err = conn
        .send(b"one too many", Duration::from_millis(500))
        .expect_err("no buffer left");
    eprintln!("send failed as expected: {err}");
    assert!(
        matches!(err, RdmaError::Timeout { .. }),
        "a timeout: {err:?}"
    );
    assert!(
        err.to_string().contains(&addr.to_string()),
        "the error names the peer: {err}"
    );
    // The request was flushed and the connection is given up, not left half-sent.
    let later = conn
        .send(b"again", OP_TIMEOUT)
        .expect_err("the connection is broken");
    assert!(
        matches!(later, RdmaError::Broken { .. }),
        "broken: {later:?}"
    );
    finished_tx.send(()).expect("the server waits");
    server.join().expect("server thread");
}

/// Serves one connection of the unified interface: Write answers the payload's CRC32C,
/// Read answers `len` pattern bytes (len in the body), Ping answers nothing.
fn serve_calls(mut conn: nacre_transport::server::ServerConnection) {
    use nacre_transport::wire::Opcode;
    use std::io::{IoSlice, IoSliceMut};
    let mut body = Vec::new();
    let mut buf = Vec::new();
    loop {
        let req = match conn.next_request(&mut body) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                eprintln!("server stops: {e}");
                return;
            }
        };
        buf.resize(req.header.payload_len as usize, 0);
        if let Err(e) = conn.recv_payload(&mut [IoSliceMut::new(&mut buf)]) {
            eprintln!("server stops: {e}");
            return;
        }
        let sent = match req.header.opcode {
            Opcode::Write => conn.reply(&req, 0, &crc32c_of(&buf).to_le_bytes(), &[]),
            Opcode::Read => {
                let len = u64::from_le_bytes(body[..8].try_into().expect("8 bytes")) as usize;
                let out = pattern(len, 9);
                conn.reply(&req, 0, &[], &[IoSlice::new(&out)])
            }
            _ => conn.reply(&req, 0, &[], &[]),
        };
        if let Err(e) = sent {
            eprintln!("server stops: {e}");
            return;
        }
    }
}

/// Serves bulk calls until the client leaves: a write's payload lands in `inbound` and is
/// answered with its CRC32C, anything else is answered with all of `outbound`. Returns the
/// bytes the connection staged (0 when the memory was registered with it). A connection
/// idle past the server's request timeout is waited on again: a client with several
/// connections may serve the others first, as long as the emulated CPU takes.
fn serve_bulk(
    conn: &mut nacre_transport::server::ServerConnection,
    inbound: &mut [u8],
    outbound: &[u8],
) -> u64 {
    use nacre_transport::TransportError;
    use nacre_transport::wire::Opcode;
    use std::io::{IoSlice, IoSliceMut};
    let mut body = Vec::new();
    loop {
        let req = match conn.next_request(&mut body) {
            Ok(Some(req)) => req,
            Err(TransportError::TimedOut { .. }) => continue,
            Ok(None) | Err(_) => break,
        };
        let len = req.header.payload_len as usize;
        conn.recv_payload(&mut [IoSliceMut::new(&mut inbound[..len])])
            .expect("pull");
        let sent = match req.header.opcode {
            Opcode::Write => conn.reply(&req, 0, &crc32c_of(&inbound[..len]).to_le_bytes(), &[]),
            _ => conn.reply(&req, 0, &[], &[IoSlice::new(outbound)]),
        };
        sent.expect("reply");
    }
    conn.staged_bytes()
}

/// CRC32C, bit by bit, so the test does not share the code it checks.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn rdma_auto_endpoint_picks_rdma_and_carries_calls_both_ways() {
    use nacre_transport::Endpoint;
    use nacre_transport::client::{Bulk, ConnectOptions, Connection, Kind};
    use nacre_transport::server::Listener;
    use nacre_transport::wire::Opcode;
    use std::io::{IoSlice, IoSliceMut};
    let Some(addr) = rdma_addr(
        "rdma_auto_endpoint_picks_rdma_and_carries_calls_both_ways",
        7480,
    ) else {
        return;
    };
    let endpoint = Endpoint::parse(&format!("auto://{addr}")).expect("endpoint");
    let listener = Listener::bind(&endpoint).expect("bind tcp and rdma");
    assert!(
        listener.accepts_rdma(),
        "an auto listener on an RDMA address takes RDMA clients"
    );
    let server = thread::spawn(move || {
        let conn = listener
            .accept(SETUP_TIMEOUT)
            .expect("accept")
            .expect("a client came");
        assert_eq!(conn.kind(), Kind::Rdma);
        serve_calls(conn);
    });
    let options = ConnectOptions {
        connect_timeout: SETUP_TIMEOUT,
        request_timeout: OP_TIMEOUT,
    };
    let mut conn = Connection::connect(&endpoint, options).expect("connect");
    assert_eq!(
        conn.kind(),
        Kind::Rdma,
        "auto picks rdma where a device reaches the peer"
    );

    // Out: several slices, several MiB; the server pulls them with RDMA READ.
    let chunks: Vec<Vec<u8>> = (0..5u8)
        .map(|i| pattern(1_000_000 + usize::from(i) * 777, i))
        .collect();
    let slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let all: Vec<u8> = chunks.concat();
    let mut reply_body = Vec::new();
    let reply = conn
        .call(Opcode::Write, &[], Bulk::Send(&slices), &mut reply_body)
        .expect("write call");
    assert_eq!(reply.status, 0);
    assert_eq!(
        reply_body,
        crc32c_of(&all).to_le_bytes(),
        "the server pulled other bytes"
    );

    // In: the server pushes with RDMA WRITE into a scatter list, the last part partly used.
    let len = 3 * 1024 * 1024 + 99;
    let (mut a, mut b) = (vec![0u8; 2 << 20], vec![0xEEu8; 2 << 20]);
    let mut dests = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
    let reply = conn
        .call(
            Opcode::Read,
            &(len as u64).to_le_bytes(),
            Bulk::Recv(&mut dests),
            &mut reply_body,
        )
        .expect("read call");
    assert_eq!(reply.payload_len, len as u64);
    let mut got = a.clone();
    got.extend_from_slice(&b[..len - a.len()]);
    assert_same(&got, &pattern(len, 9), "payload pushed by RDMA WRITE");
    assert!(
        b[len - a.len()..].iter().all(|&v| v == 0xEE),
        "bytes past the payload were written"
    );

    // No bulk at all.
    let reply = conn
        .call(Opcode::Ping, b"hello", Bulk::None, &mut reply_body)
        .expect("ping");
    assert_eq!(reply.payload_len, 0);
    drop(conn);
    server.join().expect("server thread");
}

#[test]
fn rdma_scheme_fails_calls_with_the_peer_named_when_the_server_goes() {
    use nacre_transport::client::{Bulk, ConnectOptions, Connection, Kind};
    use nacre_transport::server::Listener;
    use nacre_transport::wire::Opcode;
    use nacre_transport::{Endpoint, TransportError};
    let Some(addr) = rdma_addr(
        "rdma_scheme_fails_calls_with_the_peer_named_when_the_server_goes",
        7481,
    ) else {
        return;
    };
    let endpoint = Endpoint::parse(&format!("rdma://{addr}")).expect("endpoint");
    let listener = Listener::bind(&endpoint).expect("bind rdma");
    let server = thread::spawn(move || {
        let mut conn = listener
            .accept(SETUP_TIMEOUT)
            .expect("accept")
            .expect("a client came");
        let mut body = Vec::new();
        // Take one request, then leave without answering.
        let _ = conn.next_request(&mut body);
    });
    let options = ConnectOptions {
        connect_timeout: SETUP_TIMEOUT,
        request_timeout: OP_TIMEOUT,
    };
    let mut conn = Connection::connect(&endpoint, options).expect("connect");
    assert_eq!(conn.kind(), Kind::Rdma);
    let err = conn
        .call(Opcode::Ping, &[], Bulk::None, &mut Vec::new())
        .expect_err("the server left");
    server.join().expect("server thread");
    assert!(err.to_string().contains(&addr.ip().to_string()), "{err}");
    assert!(
        matches!(
            err,
            TransportError::PeerClosed { .. } | TransportError::Rdma(_)
        ),
        "{err}"
    );
    eprintln!("call failed as expected: {err}");
}

#[test]
fn rdma_registered_memory_moves_bulk_with_no_staging_copy() {
    use nacre_transport::Endpoint;
    use nacre_transport::client::{Bulk, ConnectOptions, Connection};
    use nacre_transport::server::Listener;
    use nacre_transport::wire::Opcode;
    use std::io::{IoSlice, IoSliceMut};
    let Some(addr) = rdma_addr(
        "rdma_registered_memory_moves_bulk_with_no_staging_copy",
        7482,
    ) else {
        return;
    };
    const LEN: usize = 6 * 1024 * 1024 + 4321;
    let endpoint = Endpoint::parse(&format!("rdma://{addr}")).expect("endpoint");
    let listener = Listener::bind(&endpoint).expect("bind rdma");
    let server = thread::spawn(move || -> u64 {
        // Declared before the connection, so the connection (and its registrations) go first.
        let mut inbound = vec![0u8; LEN];
        let mut outbound = pattern(LEN, 5);
        let mut conn = listener
            .accept(SETUP_TIMEOUT)
            .expect("accept")
            .expect("a client came");
        // SAFETY: both buffers outlive `conn`, which is dropped first (declared later).
        unsafe {
            conn.register_memory(inbound.as_mut_ptr(), inbound.len())
                .expect("register in");
            conn.register_memory(outbound.as_mut_ptr(), outbound.len())
                .expect("register out");
        }
        serve_bulk(&mut conn, &mut inbound, &outbound)
    });
    let mut out = pattern(LEN, 3);
    let mut back = vec![0u8; LEN];
    let options = ConnectOptions {
        connect_timeout: SETUP_TIMEOUT,
        request_timeout: OP_TIMEOUT,
    };
    let mut conn = Connection::connect(&endpoint, options).expect("connect");
    // SAFETY: `out` and `back` outlive `conn`, which is dropped below before they are.
    unsafe {
        conn.register_memory(out.as_mut_ptr(), out.len())
            .expect("register out");
        conn.register_memory(back.as_mut_ptr(), back.len())
            .expect("register back");
    }
    let mut reply_body = Vec::new();
    // Two slices of the registered buffer: two descriptors for the server to walk.
    let (first, second) = out.split_at(LEN / 3);
    conn.call(
        Opcode::Write,
        &[],
        Bulk::Send(&[IoSlice::new(first), IoSlice::new(second)]),
        &mut reply_body,
    )
    .expect("write call");
    assert_eq!(
        reply_body,
        crc32c_of(&pattern(LEN, 3)).to_le_bytes(),
        "the server pulled other bytes"
    );
    let reply = conn
        .call(
            Opcode::Read,
            &[],
            Bulk::Recv(&mut [IoSliceMut::new(&mut back)]),
            &mut reply_body,
        )
        .expect("read call");
    assert_eq!(reply.payload_len, LEN as u64);
    assert_eq!(
        conn.staged_bytes(),
        0,
        "the client copied through its staging buffer"
    );
    drop(conn);
    assert_same(
        &back,
        &pattern(LEN, 5),
        "payload written by RDMA into registered memory",
    );
    let server_staged = server.join().expect("server thread");
    assert_eq!(
        server_staged, 0,
        "the server copied through its staging buffer"
    );
}

/// Memory a test lends a listener: allocated until the last holder of its `Arc` goes.
struct LentArea {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the area is an allocation owned by this struct; the tests reach its bytes only
// through disjoint slices handed to one thread each.
unsafe impl Send for LentArea {}
// SAFETY: as above.
unsafe impl Sync for LentArea {}

impl LentArea {
    fn new(len: usize) -> LentArea {
        let ptr = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        LentArea { ptr, len }
    }
}

impl Drop for LentArea {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` came from the boxed slice made in `new`, freed only here.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

#[test]
fn rdma_listener_registers_its_memory_once_per_device() {
    use nacre_transport::Endpoint;
    use nacre_transport::client::{Bulk, ConnectOptions, Connection};
    use nacre_transport::server::Listener;
    use nacre_transport::wire::Opcode;
    use std::io::{IoSlice, IoSliceMut};
    use std::sync::Arc;
    let Some(addr) = rdma_addr("rdma_listener_registers_its_memory_once_per_device", 7483) else {
        return;
    };
    const CLIENTS: usize = 3;
    const LEN: usize = 3 * 1024 * 1024 + 777;
    let endpoint = Endpoint::parse(&format!("rdma://{addr}")).expect("endpoint");
    let listener = Listener::bind(&endpoint).expect("bind rdma");
    let area = Arc::new(LentArea::new(CLIENTS * 2 * LEN));
    // SAFETY: the area stays allocated while `area` (the owner) lives.
    unsafe { listener.register_memory(Arc::clone(&area), area.ptr, area.len) }
        .expect("register the area");
    assert_eq!(
        listener.memory_registrations(),
        0,
        "nothing is registered before a client comes through a device"
    );
    let server_area = Arc::clone(&area);
    drop(area);
    let server = thread::spawn(move || -> (Vec<u64>, usize) {
        let mut serving = Vec::new();
        for i in 0..CLIENTS {
            let mut conn = listener
                .accept(SETUP_TIMEOUT)
                .expect("accept")
                .expect("a client came");
            let area = Arc::clone(&server_area);
            serving.push(thread::spawn(move || -> u64 {
                // SAFETY: each connection's thread takes its own 2 * LEN bytes of the area,
                // which `area` keeps allocated; nothing else touches them meanwhile.
                let mine =
                    unsafe { std::slice::from_raw_parts_mut(area.ptr.add(i * 2 * LEN), 2 * LEN) };
                let (inbound, outbound) = mine.split_at_mut(LEN);
                outbound.copy_from_slice(&pattern(LEN, 40 + i as u8));
                serve_bulk(&mut conn, inbound, outbound)
            }));
        }
        let registrations = listener.memory_registrations();
        let staged = serving
            .into_iter()
            .map(|t| t.join().expect("serving thread"))
            .collect();
        (staged, registrations)
    });
    let options = ConnectOptions {
        connect_timeout: SETUP_TIMEOUT,
        request_timeout: OP_TIMEOUT,
    };
    // Every client connects before any calls, so the connections are alive together.
    let mut conns: Vec<Connection> = (0..CLIENTS)
        .map(|_| Connection::connect(&endpoint, options).expect("connect"))
        .collect();
    let mut reply_body = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        let out = pattern(LEN, 10 + i as u8);
        conn.call(
            Opcode::Write,
            &[],
            Bulk::Send(&[IoSlice::new(&out)]),
            &mut reply_body,
        )
        .expect("write call");
        assert_eq!(
            reply_body,
            crc32c_of(&out).to_le_bytes(),
            "server {i} pulled other bytes"
        );
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let mut back = vec![0u8; LEN];
        conn.call(
            Opcode::Read,
            &[],
            Bulk::Recv(&mut [IoSliceMut::new(&mut back)]),
            &mut reply_body,
        )
        .expect("read call");
        assert_same(
            &back,
            &pattern(LEN, 40 + i as u8),
            "payload written from the listener's memory",
        );
    }
    drop(conns);
    let (staged, registrations) = server.join().expect("server thread");
    assert_eq!(
        registrations, 1,
        "one area through one device is registered once, not once per connection"
    );
    assert_eq!(
        staged,
        vec![0; CLIENTS],
        "every connection moved bulk in the listener's memory with no staging copy"
    );
}
