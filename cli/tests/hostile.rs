//! Hostile load on every server kind, as an outside tester brought it (issue 21): many
//! connections announcing large payloads and sending part of them, replies never read,
//! idle and slow connections, and an open-file limit lowered for the servers' processes.
//! Each server's memory (from /proc) stays under its named bound plus a margin, its
//! threads stay few, its log stays short, a normal client is served throughout, and the
//! server recovers when the hostile connections go.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Cluster, fill, proc_status};
use nacre::layout::StripeSpec;
use nacre::limits::{MAX_META_UNSENT_BYTES, STAGED_BYTES_BEYOND_POOL};
use nacre::meta::proto::MetaRequest;
use nacre::meta::types::{Cred, LayoutSpec};
use nacre::transport::limits::HEADER_BYTES;
use nacre::transport::wire::{Extent, Header, Opcode, encode_extents};

const MIB: u64 = 1 << 20;
/// What a server may hold beyond its named bounds: code, stacks, buffers of connections.
const MARGIN_KIB: u64 = 96 * 1024;
/// The servers' open-file limit in these tests (soft and hard: they cannot raise it).
const FD_LIMIT: u64 = 256;
/// Idle connections per server: more than the limit leaves room for.
const IDLE: usize = 300;
/// The registered pool of the test targets (cli/tests/common's TARGET_POOL_MIB).
const TARGET_POOL_BYTES: u64 = 16 * MIB;

fn address(endpoint: &str) -> String {
    endpoint.trim_start_matches("tcp://").to_string()
}

/// Connections that connect and say nothing (kept open for the test's length; those the
/// server closes to make room just end).
fn idle(endpoint: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| TcpStream::connect(address(endpoint)).ok())
        .collect()
}

/// A normal client's work on the cluster: a striped file written, synced, read back and
/// checked; a directory made and listed.
fn normal_client(cluster: &Cluster, round: u64) {
    let client = cluster.client();
    let layout = LayoutSpec::plain(StripeSpec {
        stripe_count: -1,
        stripe_size_bytes: 64 * 1024,
        ..StripeSpec::default()
    });
    let path = format!("/normal-{round}");
    let file = client.create(&path, 0o644, Some(layout)).unwrap();
    let data = fill(round, 0, 4 << 20);
    file.write_at(&data, 0).unwrap();
    file.sync().unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data, "round {round}: bytes read back differ");
    client.mkdir(&format!("/dir-{round}"), 0o755).unwrap();
    assert!(
        client
            .readdir("/")
            .unwrap()
            .iter()
            .any(|e| e.name == format!("dir-{round}"))
    );
}

/// Sends `request` and as much of `payload_bytes` as the server takes within a few
/// seconds, on a thread; the stream is returned when the server stopped taking it.
fn announce_write(
    endpoint: &str,
    object_base: u64,
    payload_bytes: u64,
    sent_bytes: u64,
) -> std::thread::JoinHandle<Option<TcpStream>> {
    let endpoint = endpoint.to_string();
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address(&endpoint)).ok()?;
        let extents: Vec<Extent> = (0..payload_bytes / MIB)
            .map(|i| Extent {
                object_id: object_base + i,
                offset_bytes: 0,
                len: MIB,
            })
            .collect();
        let mut body = Vec::new();
        encode_extents(&extents, &mut body);
        let header = Header::request(Opcode::Write, 1, &body, payload_bytes).for_target(0);
        stream.write_all(&header.encode()).ok()?;
        stream.write_all(&body).ok()?;
        // A server that stops reading makes this block; the timeout ends the attempt.
        stream
            .set_write_timeout(Some(Duration::from_secs(3)))
            .ok()?;
        let chunk = vec![0x5au8; MIB as usize];
        for _ in 0..sent_bytes / MIB {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
        Some(stream)
    })
}

/// A connection that pipelines `reads` reads of `len` bytes each of `object_id` and never
/// reads a reply.
fn unread_reads(endpoint: &str, object_id: u64, reads: u64, len: u64) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(address(endpoint)).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .ok()?;
    for r in 0..reads {
        let extents: Vec<Extent> = (0..len / MIB)
            .map(|i| Extent {
                object_id,
                offset_bytes: i * MIB,
                len: MIB,
            })
            .collect();
        let mut body = Vec::new();
        encode_extents(&extents, &mut body);
        let header = Header::request(Opcode::Read, r + 1, &body, 0).for_target(0);
        stream.write_all(&header.encode()).ok()?;
        stream.write_all(&body).ok()?;
    }
    Some(stream)
}

/// Slow senders: each has sent half a ping's header.
fn slow(endpoint: &str, n: usize) -> Vec<TcpStream> {
    let ping = Header::request(Opcode::Ping, 1, &[], 0).encode();
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect(address(endpoint)).ok()?;
            s.write_all(&ping[..HEADER_BYTES / 2]).ok()?;
            Some(s)
        })
        .collect()
}

#[test]
fn a_target_stays_bounded_under_hostile_load() {
    let cluster = Cluster::start_with_fd_limit("hostile-target", 1, Some(FD_LIMIT));
    let pid = cluster.target_pid(0);
    normal_client(&cluster, 0);
    let baseline_kib = proc_status(pid, "VmRSS");
    let endpoint = cluster.target_endpoint(0);
    // 24 connections each announcing a 64 MiB write and sending 40 MiB of it; 8 each
    // pipelining 8 reads of 64 MiB, never read.
    let writers: Vec<_> = (0..24)
        .map(|w| {
            announce_write(
                &endpoint,
                nacre::layout::object_id(900_000 + w, 0, 0).unwrap(),
                64 * MIB,
                40 * MIB,
            )
        })
        .collect();
    let object = nacre::layout::object_id(1, 0, 0).unwrap();
    let readers: Vec<_> = (0..8)
        .filter_map(|_| unread_reads(&endpoint, object, 8, 64 * MIB))
        .collect();
    let idlers = idle(&endpoint, IDLE);
    let slowpokes = slow(&endpoint, 20);
    let writers: Vec<TcpStream> = writers
        .into_iter()
        .filter_map(|w| w.join().unwrap())
        .collect();
    // Everything hostile has been sent as far as the server takes it: it is served still.
    normal_client(&cluster, 1);
    let peak_kib = proc_status(pid, "VmHWM");
    let bound_kib = (TARGET_POOL_BYTES + STAGED_BYTES_BEYOND_POOL as u64) / 1024;
    assert!(
        peak_kib <= baseline_kib + bound_kib + MARGIN_KIB,
        "the target's memory peaked at {peak_kib} kB: {baseline_kib} kB before, a bound of {bound_kib} kB and {MARGIN_KIB} kB of margin"
    );
    let threads = proc_status(pid, "Threads");
    assert!(threads <= 16, "{threads} threads");
    // A large write that finds the staging full waits, then is answered EAGAIN (its client
    // hears why, well within its own timeout) rather than waiting for ever.
    let mut late = TcpStream::connect(address(&endpoint)).unwrap();
    let extents: Vec<Extent> = (0..64)
        .map(|i| Extent {
            object_id: nacre::layout::object_id(990_000, 0, 0).unwrap(),
            offset_bytes: i * MIB,
            len: MIB,
        })
        .collect();
    let mut body = Vec::new();
    encode_extents(&extents, &mut body);
    let header = Header::request(Opcode::Write, 77, &body, 64 * MIB).for_target(0);
    late.write_all(&header.encode()).unwrap();
    late.write_all(&body).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut reply = [0u8; HEADER_BYTES];
    late.read_exact(&mut reply).unwrap();
    let reply = Header::decode(&reply).unwrap();
    assert_eq!((reply.request_id, reply.status), (77, libc::EAGAIN));
    drop((writers, readers, idlers, slowpokes, late));
    // When they have gone, it recovers.
    normal_client(&cluster, 2);
    let log = cluster.target_log(0);
    assert!(
        log.lines().count() < 100,
        "the target logged {} lines:\n{log}",
        log.lines().count()
    );
}

#[test]
fn the_metadata_service_stays_bounded_under_hostile_load() {
    let cluster = Cluster::start_with_fd_limit("hostile-meta", 1, Some(FD_LIMIT));
    let pid = cluster.meta_pid();
    let client = cluster.client();
    // A directory whose listing fills 64 KiB pages.
    client.mkdir("/big", 0o755).unwrap();
    for i in 0..300 {
        client
            .mkdir(&format!("/big/{i:05}-{}", "n".repeat(249)), 0o755)
            .unwrap();
    }
    normal_client(&cluster, 0);
    let baseline_kib = proc_status(pid, "VmRSS");
    // 100 connections each pipelining 256 listings of it (16 MiB of replies each), never
    // reading one. The kernel's socket buffers take a few MiB of each; what they do not
    // stays in the service, within its bound of unsent replies (and each connection's 64
    // requests unanswered).
    let mut body = Vec::new();
    MetaRequest::Readdir {
        path: "/big".into(),
        after: None,
        max: 1024,
    }
    .encode(&Cred::root(), &mut body);
    let readdir = Header::request(Opcode::Meta, 1, &body, 0).encode();
    let hoarders: Vec<TcpStream> = (0..100)
        .filter_map(|_| {
            let mut s = TcpStream::connect(address(&cluster.meta_addr)).ok()?;
            s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
            for _ in 0..64 {
                if s.write_all(&readdir)
                    .and_then(|()| s.write_all(&body))
                    .is_err()
                {
                    break;
                }
            }
            Some(s)
        })
        .collect();
    // 20 announcing a request with a 64 MiB payload and sending 8 MiB of it.
    let announcers: Vec<TcpStream> = (0..20)
        .filter_map(|_| {
            let mut s = TcpStream::connect(address(&cluster.meta_addr)).ok()?;
            s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
            let header = Header::request(Opcode::Meta, 9, &body, 64 * MIB).encode();
            s.write_all(&header)
                .and_then(|()| s.write_all(&body))
                .ok()?;
            let chunk = vec![0u8; MIB as usize];
            for _ in 0..8 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            Some(s)
        })
        .collect();
    let idlers = idle(&cluster.meta_addr, IDLE);
    let slowpokes = slow(&cluster.meta_addr, 20);
    normal_client(&cluster, 1);
    let peak_kib = proc_status(pid, "VmHWM");
    let bound_kib = MAX_META_UNSENT_BYTES as u64 / 1024;
    assert!(
        peak_kib <= baseline_kib + bound_kib + MARGIN_KIB,
        "the metadata service's memory peaked at {peak_kib} kB: {baseline_kib} kB before, a bound of {bound_kib} kB and {MARGIN_KIB} kB of margin"
    );
    let threads = proc_status(pid, "Threads");
    assert!(
        threads <= 8,
        "{threads} threads for {} connections",
        IDLE + 60
    );
    drop((hoarders, announcers, idlers, slowpokes));
    normal_client(&cluster, 2);
    let log = cluster.meta_log();
    assert!(
        log.lines().count() < 100,
        "the metadata service logged {} lines:\n{log}",
        log.lines().count()
    );
    // A client that reads its replies gets them all.
    let mut reader = TcpStream::connect(address(&cluster.meta_addr)).unwrap();
    reader.write_all(&readdir).unwrap();
    reader.write_all(&body).unwrap();
    let mut head = [0u8; HEADER_BYTES];
    reader.read_exact(&mut head).unwrap();
    assert_eq!(Header::decode(&head).unwrap().status, 0);
}

/// A server whose open-file limit leaves room for almost no connection refuses to start,
/// naming the limit and what it needs, rather than failing later and less clearly.
#[test]
fn a_server_with_too_few_descriptors_says_so_at_start() {
    let cluster = Cluster::start("few-fds", 1);
    let meta_dir = cluster.dir().join("meta-too-few");
    let mut command = std::process::Command::new(common::NACRE_BIN);
    command.args([
        "serve",
        "--meta",
        meta_dir.to_str().unwrap(),
        "--listen",
        &format!("tcp://127.0.0.1:{}", common::free_port()),
    ]);
    common::limit_open_files(&mut command, 100);
    let out = common::run(command);
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("open-file limit (100)") && stderr.contains("ulimit -n"),
        "{stderr}"
    );
    let target_dir = cluster.dir().join("target-too-few");
    let mkfs = common::nacre(&["mkfs", "--index", "5", target_dir.to_str().unwrap()]);
    assert!(mkfs.status.success());
    let mut command = std::process::Command::new(common::NACRE_BIN);
    command.args([
        "serve",
        "--target",
        target_dir.to_str().unwrap(),
        "--meta",
        &cluster.meta_addr,
        "--listen",
        &format!("tcp://127.0.0.1:{}", common::free_port()),
        "--workers",
        "1",
        "--pool-mib",
        "16",
    ]);
    common::limit_open_files(&mut command, 140);
    let out = common::run(command);
    assert_eq!(out.status.code(), Some(1));
    let stderr = common::text(&out.stderr);
    assert!(
        stderr.contains("open-file limit (140)") && stderr.contains("ulimit -n"),
        "{stderr}"
    );
}
