//! The engine over RDMA for real: a metadata service, two targets and a client on `rdma://`
//! (and on `auto://`, which must pick RDMA where a device reaches the peer) write and read
//! back a striped file. Needs NACRE_RDMA_ADDR and a device; scripts/rdma-test.sh runs these
//! in its Soft-RoCE VM. Elsewhere each test says `SKIPPED <name>: no RDMA device` and passes.
#![cfg(feature = "rdma")]
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use common::{Cluster, fill, registered_round_trip, stripes};
use nacre::mem::PoolConfig;
use nacre::transport::client::Kind;

fn rdma_addr(test: &str) -> Option<String> {
    let addr = std::env::var("NACRE_RDMA_ADDR").ok();
    let has_device = nacre::transport::rdma::devices()
        .map(|d| !d.is_empty())
        .unwrap_or(false);
    match addr {
        Some(a) if has_device => Some(a),
        _ => {
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: no RDMA device");
            None
        }
    }
}

fn striped_round_trip(scheme: &str, test: &str) {
    let Some(addr) = rdma_addr(test) else { return };
    let cluster = Cluster::start_at(test, 2, &format!("{scheme}://{addr}:0"));
    let client = cluster.client();
    for t in 0..2 {
        assert_eq!(
            client.target_transport(t).unwrap(),
            Kind::Rdma,
            "target {t}"
        );
    }
    let spec = stripes(-1, 64 * 1024);
    let file = client.create("/rdma", 0o644, Some(spec)).unwrap();
    let offset = 4321;
    let data = fill(9, offset, 6 * 1024 * 1024 + 99);
    file.write_at(&data, offset).unwrap();
    file.sync().unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, offset).unwrap(), data.len());
    assert!(back == data, "read back over {scheme} differs");
    assert_eq!(file.size().unwrap(), offset + data.len() as u64);
    // Past the end: short, over RDMA too.
    let mut tail = vec![0u8; 10_000];
    let n = file
        .read_at(&mut tail, offset + data.len() as u64 - 100)
        .unwrap();
    assert_eq!(n, 100);
    let staged = client.staged_bytes();
    assert!(staged > 0, "bulk in unregistered memory is staged");
    // Every connection is driven by a worker's event loop, none by a thread of its own.
    for t in cluster.targets.iter().flatten() {
        let c = t.connections();
        assert!(c.on_loops > 0, "target {}: {c:?}", t.target_id());
        assert_eq!(c.on_threads, 0, "target {}: {c:?}", t.target_id());
    }

    // Registered memory moves with no staging copy: the targets' RDMA READ and WRITE reach
    // it directly.
    registered_round_trip(&client, "/rdma-registered", 10, 5 * 1024 * 1024);
    assert_eq!(
        client.staged_bytes(),
        staged,
        "registered bulk went through a staging buffer"
    );
}

#[test]
fn striped_file_over_rdma() {
    striped_round_trip("rdma", "striped_file_over_rdma");
}

#[test]
fn auto_picks_rdma_and_carries_a_striped_file() {
    striped_round_trip("auto", "auto_picks_rdma_and_carries_a_striped_file");
}

#[test]
fn requests_beyond_the_targets_pool_are_staged_over_rdma() {
    let test = "requests_beyond_the_targets_pool_are_staged_over_rdma";
    let Some(addr) = rdma_addr(test) else { return };
    // Four 64 KiB chunks: a 1 MiB request cannot be staged in the pool, so the target
    // stages it in other memory, which its RDMA connection moves through a staging copy.
    let pool = PoolConfig {
        chunk_bytes: 64 * 1024,
        chunks: 4,
        huge_pages: false,
        lock: false,
    };
    let cluster = Cluster::start_with(test, 1, &format!("rdma://{addr}:0"), Some(pool));
    let client = cluster.client();
    let spec = stripes(1, 1024 * 1024);
    let file = client.create("/beyond", 0o644, Some(spec)).unwrap();
    let data = fill(21, 0, 3 * 1024 * 1024 + 5);
    file.write_at(&data, 0).unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data, "read back through staged requests differs");
    // Small requests still fit the pool and move with no copy, on the same connections.
    let small = fill(22, 0, 100 * 1024);
    file.write_at(&small, 0).unwrap();
    let mut small_back = vec![0u8; small.len()];
    assert_eq!(file.read_at(&mut small_back, 0).unwrap(), small.len());
    assert!(small_back == small, "small read back differs");
    let c = cluster.targets[0].as_ref().unwrap().connections();
    assert_eq!(c.on_threads, 0, "{c:?}");
}

/// Set in a copy of this test binary that plays the client killed mid-transfer: the
/// metadata service it connects to.
const VICTIM_META_ENV: &str = "NACRE_RDMA_VICTIM_META";
/// What the victim prints once each of its writers has a write through; they keep writing.
const VICTIM_WRITING: &str = "nacre-victim-writing";
/// The victim's writer threads, each writing a file of its own in a loop, so that the
/// targets have its requests in hand most of the time.
const VICTIM_WRITERS: usize = 4;
/// Each of the victim's writes (from registered memory, so the targets pull it with RDMA
/// READs straight from the victim's buffer).
const VICTIM_WRITE_BYTES: usize = 16 * 1024 * 1024;
/// Most victims killed before one is caught in the middle of a request (each kill lands at
/// an unknown point of its writers' loops; in trials about half of them did).
const MAX_KILL_ROUNDS: usize = 12;
/// Beyond this a step that should be quick counts as hung (a hang detector, far above
/// anything in play, not a measure of speed).
const HANG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The victim: its writers write their files over and over until it is killed.
fn victim(meta: &str) -> ! {
    let client = nacre::Client::connect(meta).unwrap();
    let spec = stripes(-1, 1024 * 1024);
    let started = std::sync::Arc::new(std::sync::Barrier::new(VICTIM_WRITERS + 1));
    for w in 0..VICTIM_WRITERS {
        let (client, spec, started) = (client.clone(), spec.clone(), started.clone());
        std::thread::spawn(move || {
            let file = client
                .create(&format!("/victim{w}"), 0o644, Some(spec))
                .unwrap();
            let mut data = fill(31 + w as u64, 0, VICTIM_WRITE_BYTES);
            // SAFETY: (test) `data` lives until the process is killed; nothing unregisters it.
            unsafe { client.register_memory(data.as_mut_ptr(), data.len()) }.unwrap();
            file.write_at(&data, 0).unwrap();
            started.wait();
            loop {
                file.write_at(&data, 0).unwrap();
            }
        });
    }
    started.wait();
    println!("{VICTIM_WRITING}");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

/// A client killed (SIGKILL) while it writes in a loop over RDMA leaves its connections in
/// the targets' event loops, some with a request under way; the targets close those (counted
/// as failed) and go on: another client writes and reads back a file on every target, the
/// victims' files hold only what they wrote, and the targets stop promptly.
#[test]
fn a_client_killed_mid_transfer_leaves_the_targets_serving() {
    let test = "a_client_killed_mid_transfer_leaves_the_targets_serving";
    if let Ok(meta) = std::env::var(VICTIM_META_ENV) {
        victim(&meta);
    }
    let Some(addr) = rdma_addr(test) else { return };
    let cluster = Cluster::start_at(test, 2, &format!("rdma://{addr}:0"));
    let failed = |cluster: &Cluster| -> u64 {
        cluster
            .targets
            .iter()
            .flatten()
            .map(|t| t.connections().failed)
            .sum()
    };
    let mut rounds = 0;
    while rounds < MAX_KILL_ROUNDS && (rounds < 2 || failed(&cluster) == 0) {
        let round = rounds;
        rounds += 1;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(VICTIM_META_ENV, &cluster.meta_addr)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains(VICTIM_WRITING) {
                    let _ = tx.send(());
                }
            }
        });
        let writing = rx.recv_timeout(HANG_DEADLINE);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            writing.is_ok(),
            "round {round}: the victim never got a write through"
        );
    }
    eprintln!(
        "{rounds} victims killed, {} connections failed",
        failed(&cluster)
    );
    // The targets saw a victim go in the middle of a request at least once. The count is
    // read while they may still be closing the last victim's connections, so it can only
    // be low, never high.
    assert!(
        failed(&cluster) > 0,
        "none of {rounds} victims was killed with a request under way"
    );
    // Every target still serves, over RDMA, from its event loops.
    let client = cluster.client();
    let spec = stripes(-1, 1024 * 1024);
    let file = client.create("/after", 0o644, Some(spec)).unwrap();
    let data = fill(32, 0, 4 * 1024 * 1024 + 3);
    file.write_at(&data, 0).unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data, "read back after the kills differs");
    // Each victim's last write was cut off by its kill, and writes the bytes its file holds
    // already (every writer wrote its file whole before the kill): a cut-off write may land
    // in part or not at all, but never puts other bytes there. (A pull the kill flushed once
    // let a request's staging reach storage, stale bytes and all.)
    for w in 0..VICTIM_WRITERS {
        let path = format!("/victim{w}");
        let file = client
            .open(&path, &nacre::OpenOptions::new().read(true))
            .unwrap();
        let want = fill(31 + w as u64, 0, VICTIM_WRITE_BYTES);
        let mut got = vec![0u8; want.len()];
        assert_eq!(file.read_at(&mut got, 0).unwrap(), want.len(), "{path}");
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{path}: byte {i} is {:#04x}, written {:#04x}",
                got[i], want[i]
            );
        }
    }
    for t in cluster.targets.iter().flatten() {
        let c = t.connections();
        assert_eq!(c.on_threads, 0, "target {}: {c:?}", t.target_id());
    }
    drop(client);
    // No worker is stuck on a dead connection: the targets stop.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(cluster);
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(HANG_DEADLINE).is_ok(),
        "the targets did not stop within {HANG_DEADLINE:?} after the kills"
    );
}
