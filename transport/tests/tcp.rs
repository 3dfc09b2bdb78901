//! The TCP transport over real loopback sockets: bulk both ways through scatter lists,
//! hostile peers, peers that die or go silent, and a pool of connections used in parallel.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nacre_transport::client::{Bulk, ConnectOptions, Connection, Kind, Peer};
use nacre_transport::server::{Listener, ServerConnection};
use nacre_transport::wire::{Header, Opcode};
use nacre_transport::{Endpoint, Scheme, TransportError};

const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// What the test server does with a request.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Ping echoes its payload; Write answers the payload's CRC32C in the body; Read answers
    /// `len` pattern bytes where the body holds `len` as u64.
    Normal,
    /// As Normal, with replies sent by SEND_ZC.
    NormalZc,
    /// Reads the request header, then drops the connection.
    DieAfterHeader,
    /// Reads the request and never answers (until the client goes away).
    Silent,
}

struct TestServer {
    endpoint: Endpoint,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(behaviour: Behaviour) -> TestServer {
        let listener =
            Listener::bind(&Endpoint::parse("tcp://127.0.0.1:0").expect("endpoint")).expect("bind");
        let endpoint = listener.endpoint().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(Some(conn)) = listener.accept(ACCEPT_POLL) {
                    accepted2.fetch_add(1, Ordering::Relaxed);
                    workers.push(std::thread::spawn(move || serve(conn, behaviour)));
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        TestServer {
            endpoint,
            stop,
            accepted,
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pattern(i: usize) -> u8 {
    (i * 7 % 253) as u8
}

fn serve(mut conn: ServerConnection, behaviour: Behaviour) {
    if matches!(behaviour, Behaviour::NormalZc) && conn.enable_send_zc().is_err() {
        return;
    }
    let mut body = Vec::new();
    let mut buf = Vec::new();
    loop {
        let req = match conn.next_request(&mut body) {
            Ok(Some(req)) => req,
            Ok(None) | Err(_) => return,
        };
        match behaviour {
            Behaviour::DieAfterHeader => return,
            Behaviour::Silent => {
                let _ = conn.next_request(&mut body);
                return;
            }
            Behaviour::Normal | Behaviour::NormalZc => {}
        }
        buf.resize(req.header.payload_len as usize, 0);
        if conn.recv_payload(&mut [IoSliceMut::new(&mut buf)]).is_err() {
            return;
        }
        let result = match req.header.opcode {
            Opcode::Ping => conn.reply(&req, 0, &[], &[IoSlice::new(&buf)]),
            Opcode::Write => conn.reply(&req, 0, &crc32c::crc32c(&buf).to_le_bytes(), &[]),
            Opcode::Read => {
                let len = u64::from_le_bytes(body[..8].try_into().expect("8 bytes")) as usize;
                let out: Vec<u8> = (0..len).map(pattern).collect();
                conn.reply(&req, 0, &[], &[IoSlice::new(&out)])
            }
            _ => conn.reply(&req, libc::ENOSYS, &[], &[]),
        };
        if result.is_err() {
            return;
        }
    }
}

fn options(timeout_ms: u64) -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_millis(5_000),
        request_timeout: Duration::from_millis(timeout_ms),
    }
}

#[test]
fn bulk_goes_out_from_many_slices_and_lands_in_a_scatter_list() {
    let server = TestServer::start(Behaviour::Normal);
    let mut conn = Connection::connect(&server.endpoint, options(30_000)).expect("connect");
    assert_eq!(conn.kind(), Kind::Tcp);
    // 8 MiB out, from 100 slices of uneven sizes (more than one writev's worth).
    let chunks: Vec<Vec<u8>> = (0..100)
        .map(|i| (0..(i * 1000 + 80_000)).map(|j| (i + j) as u8).collect())
        .collect();
    let slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut all = Vec::new();
    chunks.iter().for_each(|c| all.extend_from_slice(c));
    let mut reply_body = Vec::new();
    let reply = conn
        .call(Opcode::Write, &[], Bulk::Send(&slices), &mut reply_body)
        .expect("write call");
    assert_eq!(reply.status, 0);
    assert_eq!(
        reply_body,
        crc32c::crc32c(&all).to_le_bytes(),
        "the server received other bytes"
    );

    // 5 MiB back into three buffers, the last one only partly filled.
    let len = 5 * 1024 * 1024 + 123;
    let (mut a, mut b, mut c) = (
        vec![0u8; 1 << 20],
        vec![0u8; 3 << 20],
        vec![0xEEu8; 2 << 20],
    );
    let mut dests = [
        IoSliceMut::new(&mut a),
        IoSliceMut::new(&mut b),
        IoSliceMut::new(&mut c),
    ];
    let body = (len as u64).to_le_bytes();
    let reply = conn
        .call(Opcode::Read, &body, Bulk::Recv(&mut dests), &mut reply_body)
        .expect("read call");
    assert_eq!(reply.payload_len, len as u64);
    let got: Vec<u8> = a
        .iter()
        .chain(b.iter())
        .chain(c.iter())
        .copied()
        .take(len)
        .collect();
    assert!(
        got.iter().enumerate().all(|(i, &v)| v == pattern(i)),
        "payload bytes differ"
    );
    assert!(
        c[len - (4 << 20)..].iter().all(|&v| v == 0xEE),
        "bytes past the payload were written"
    );
}

#[test]
fn pipelined_requests_on_one_connection_come_back_in_order() {
    let server = TestServer::start(Behaviour::Normal);
    let mut conn = Connection::connect(&server.endpoint, options(30_000)).expect("connect");
    let payloads: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 1000 + i as usize]).collect();
    let ids: Vec<u64> = payloads
        .iter()
        .map(|p| {
            conn.send_request(Opcode::Ping, &[], &[IoSlice::new(p)])
                .expect("send")
        })
        .collect();
    let mut body = Vec::new();
    for (id, p) in ids.iter().zip(&payloads) {
        let mut back = vec![0u8; 4096];
        let reply = conn
            .recv_reply(*id, &mut body, &mut [IoSliceMut::new(&mut back)])
            .expect("reply");
        assert_eq!(&back[..reply.payload_len as usize], &p[..]);
    }
}

#[test]
fn unknown_opcode_gets_an_error_reply_and_the_connection_goes_on() {
    let server = TestServer::start(Behaviour::Normal);
    let addr = server.endpoint.socket_addr().expect("addr");
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // A well-formed header with opcode 999 and a 5-byte payload, then a valid ping.
    let mut bytes = Header::request(Opcode::Ping, 41, &[], 5).encode();
    bytes[6..8].copy_from_slice(&999u16.to_le_bytes());
    bytes[44..48].copy_from_slice(&[0; 4]);
    let crc = crc32c::crc32c(&bytes);
    bytes[44..48].copy_from_slice(&crc.to_le_bytes());
    raw.write_all(&bytes).expect("send");
    raw.write_all(b"hello").expect("send payload");
    let mut reply = [0u8; 48];
    raw.read_exact(&mut reply).expect("error reply");
    let h = Header::decode(&reply).expect("valid reply");
    assert_eq!(
        (h.opcode, h.status, h.request_id),
        (Opcode::Error, libc::EOPNOTSUPP, 41)
    );
    raw.write_all(&Header::request(Opcode::Ping, 42, &[], 0).encode())
        .expect("ping");
    raw.read_exact(&mut reply).expect("ping reply");
    let h = Header::decode(&reply).expect("valid reply");
    assert_eq!((h.opcode, h.status, h.request_id), (Opcode::Ping, 0, 42));
}

#[test]
fn a_corrupted_header_closes_the_connection() {
    let server = TestServer::start(Behaviour::Normal);
    let addr = server.endpoint.socket_addr().expect("addr");
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut bytes = Header::request(Opcode::Ping, 1, &[], 0).encode();
    bytes[20] ^= 0x10; // the checksum no longer matches
    raw.write_all(&bytes).expect("send");
    let mut buf = [0u8; 1];
    assert_eq!(
        raw.read(&mut buf).expect("read"),
        0,
        "the server closes instead of answering"
    );
    // The server itself is fine.
    let mut conn = Connection::connect(&server.endpoint, options(30_000)).expect("connect");
    conn.call(Opcode::Ping, &[], Bulk::None, &mut Vec::new())
        .expect("ping");
}

#[test]
fn a_peer_that_dies_mid_call_fails_it_with_its_name() {
    let server = TestServer::start(Behaviour::DieAfterHeader);
    let mut conn = Connection::connect(&server.endpoint, options(30_000)).expect("connect");
    let big = vec![1u8; 32 << 20];
    let err = conn
        .call(
            Opcode::Write,
            &[],
            Bulk::Send(&[IoSlice::new(&big)]),
            &mut Vec::new(),
        )
        .expect_err("the peer died");
    let peer = server.endpoint.socket_addr().expect("addr").to_string();
    assert!(err.to_string().contains(&peer), "{err}");
    assert!(
        matches!(
            err,
            TransportError::PeerClosed { .. } | TransportError::Io { .. }
        ),
        "{err}"
    );
    assert!(conn.is_broken());
    let again = conn
        .call(Opcode::Ping, &[], Bulk::None, &mut Vec::new())
        .expect_err("broken");
    assert!(matches!(again, TransportError::Broken { .. }), "{again}");
}

#[test]
fn a_silent_peer_times_out_instead_of_hanging() {
    let server = TestServer::start(Behaviour::Silent);
    let mut conn = Connection::connect(&server.endpoint, options(300)).expect("connect");
    let err = conn
        .call(Opcode::Ping, &[], Bulk::None, &mut Vec::new())
        .expect_err("silent");
    assert!(
        matches!(
            err,
            TransportError::TimedOut {
                timeout_ms: 300,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.errno(), libc::ETIMEDOUT);
}

#[test]
fn a_pool_carries_parallel_calls_on_several_connections() {
    let server = TestServer::start(Behaviour::Normal);
    let peer = Arc::new(Peer::new(server.endpoint.clone(), options(30_000), 4).expect("peer"));
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let peer = peer.clone();
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    let payload = vec![t ^ i; 4096];
                    let mut back = vec![0u8; 4096];
                    let reply = peer
                        .with_connection(|c| {
                            c.call(
                                Opcode::Write,
                                &[],
                                Bulk::Send(&[IoSlice::new(&payload)]),
                                &mut Vec::new(),
                            )?;
                            c.call(
                                Opcode::Read,
                                &4096u64.to_le_bytes(),
                                Bulk::Recv(&mut [IoSliceMut::new(&mut back)]),
                                &mut Vec::new(),
                            )
                        })
                        .expect("call");
                    assert_eq!(reply.payload_len, 4096);
                    assert!(back.iter().enumerate().all(|(i, &v)| v == pattern(i)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let accepted = server.accepted.load(Ordering::Relaxed);
    assert!(
        (1..=4).contains(&accepted),
        "{accepted} connections for a pool of 4"
    );
}

#[test]
fn auto_picks_tcp_where_no_rdma_device_reaches_and_rdma_says_why_not() {
    let server = TestServer::start(Behaviour::Normal);
    let auto = server.endpoint.with_scheme(Scheme::Auto);
    let conn = Connection::connect(&auto, options(30_000)).expect("connect");
    if cfg!(feature = "rdma") && conn.kind() == Kind::Rdma {
        eprintln!("SKIPPED the tcp half of auto selection: this machine has an RDMA device");
        return;
    }
    assert_eq!(conn.kind(), Kind::Tcp);
    let (kind, why) = nacre_transport::client::choose_kind(&auto).expect("choose");
    assert_eq!(kind, Kind::Tcp);
    assert!(!why.is_empty());
    if !cfg!(feature = "rdma") {
        let err = Connection::connect(&server.endpoint.with_scheme(Scheme::Rdma), options(1_000))
            .expect_err("no rdma");
        assert!(err.to_string().contains("no RDMA support"), "{err}");
    }
}

#[test]
fn a_closed_port_is_a_clear_connect_error() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let endpoint = Endpoint::parse(&format!("tcp://127.0.0.1:{port}")).expect("endpoint");
    let err = Connection::connect(&endpoint, options(1_000)).expect_err("refused");
    assert!(
        err.to_string().starts_with("connect with 127.0.0.1:"),
        "{err}"
    );
    assert_eq!(err.errno(), libc::ECONNREFUSED);
}

#[test]
fn send_zc_moves_the_same_bytes_both_ways() {
    let server = TestServer::start(Behaviour::NormalZc);
    let mut conn = Connection::connect(&server.endpoint, options(30_000)).expect("connect");
    conn.enable_send_zc().expect("send_zc");
    let chunks: Vec<Vec<u8>> = (0..20)
        .map(|i| (0..(i * 999 + 200_000)).map(|j| (i ^ j) as u8).collect())
        .collect();
    let slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let all: Vec<u8> = chunks.concat();
    let mut reply_body = Vec::new();
    for _ in 0..3 {
        conn.call(Opcode::Write, &[], Bulk::Send(&slices), &mut reply_body)
            .expect("write");
        assert_eq!(reply_body, crc32c::crc32c(&all).to_le_bytes());
    }
    let len = 3 << 20;
    let mut back = vec![0u8; len];
    let reply = conn
        .call(
            Opcode::Read,
            &(len as u64).to_le_bytes(),
            Bulk::Recv(&mut [IoSliceMut::new(&mut back)]),
            &mut reply_body,
        )
        .expect("read");
    assert_eq!(reply.payload_len, len as u64);
    assert!(
        back.iter().enumerate().all(|(i, &v)| v == pattern(i)),
        "payload sent by SEND_ZC differs"
    );
}
