//! Several targets served by one target server, sharing its workers (decision 0015): bytes
//! land on the right target through the right store, every operation reaches every target,
//! a client's queue reaches them all over one connection (decision 0016), a request names
//! its target and one the server does not serve is refused, and bad sets of targets are
//! refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Cluster, TempDir, fill, stripes, target_config};
use nacre::transport::client::{Bulk, ConnectOptions, Connection};
use nacre::transport::wire::{ANY_TARGET, Opcode};
use nacre::{Error, QueueOp, TargetServer, TargetSpec};

/// Ids no other test of this binary uses, so that the worker threads' names are this
/// test's own.
const IDS: [u32; 3] = [70, 71, 72];

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

fn objects_of(cluster: &Cluster, id: u32) -> Vec<u64> {
    nacre::io::Target::open(&cluster.target_dir(id))
        .unwrap()
        .list()
        .unwrap()
}

#[test]
fn targets_of_one_server_share_its_workers_and_keep_their_objects_apart() {
    let cluster = Cluster::start_shared("shared", &IDS);
    let server = cluster.targets[0].as_ref().unwrap();
    let served: Vec<u32> = server.served().iter().map(|s| s.target_id()).collect();
    assert_eq!(served, IDS);
    let mut endpoints: Vec<String> = server
        .served()
        .iter()
        .map(|s| s.endpoint.to_string())
        .collect();
    endpoints.dedup();
    assert_eq!(endpoints.len(), IDS.len(), "a listener per target");
    // Two workers for the three targets, not two each.
    assert_eq!(threads_named("nacre-t70-w"), 2);

    let client = cluster.client();
    let spec = stripes(-1, 64 * 1024);
    let file = client.create("/shared", 0o644, Some(spec)).unwrap();
    assert_eq!(file.layout().components()[0].stripe.stripe_count(), 3);
    let offset = 4_321;
    let data = fill(7, offset, 2 * 1024 * 1024 + 99);
    assert_eq!(file.write_at(&data, offset).unwrap(), data.len());
    file.sync().unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, offset).unwrap(), data.len());
    assert!(back == data, "read back differs");
    // Each target's directory holds the file's object on it, and only that one.
    for id in IDS {
        assert_eq!(objects_of(&cluster, id).len(), 1, "target {id}");
    }
    // A queue's connections go to the server, not to each target: three reads, one in
    // each target's stripe, open one connection.
    let accepted = server.connections().on_loops;
    let queue = client.queue(3).unwrap();
    let mut three: Vec<Vec<u8>> = (0..3).map(|_| vec![0u8; 4096]).collect();
    for (i, buf) in three.iter_mut().enumerate() {
        let op = QueueOp::Read {
            file: file.clone(),
            buf: buf.as_mut_ptr(),
            len: buf.len(),
            // Stripe i of the file is on its ith target.
            offset: i as u64 * 64 * 1024 + 8192,
        };
        // SAFETY: (test) every buffer outlives the queue's use of it (waited on below).
        unsafe { queue.submit(op, i as u64) }.unwrap();
    }
    assert!(queue.wait_idle(std::time::Duration::from_secs(30)));
    for c in queue.poll() {
        assert_eq!(c.result.unwrap(), 4096, "read {}", c.tag);
    }
    for (i, buf) in three.iter().enumerate() {
        let start = (i as u64 * 64 * 1024 + 8192 - offset) as usize;
        assert!(buf[..] == data[start..start + 4096], "read {i}");
    }
    assert_eq!(
        server.connections().on_loops - accepted,
        1,
        "one connection for the three targets"
    );
    drop(queue);
    // Random 4 KiB reads through a queue, spread over the three targets.
    let queue = client.queue(16).unwrap();
    let mut bufs: Vec<Vec<u8>> = (0..48).map(|_| vec![0u8; 4096]).collect();
    let at = |i: usize| offset + ((i as u64 * 7919 * 4096) % (data.len() as u64 - 4096));
    for (i, buf) in bufs.iter_mut().enumerate() {
        let op = QueueOp::Read {
            file: file.clone(),
            buf: buf.as_mut_ptr(),
            len: buf.len(),
            offset: at(i),
        };
        // SAFETY: (test) every buffer outlives the queue's use of it (waited on below).
        unsafe { queue.submit(op, i as u64) }.unwrap();
        if i % 16 == 15 {
            // The whole batch back before the next one is submitted.
            let mut back = 0;
            while back < 16 {
                let done = queue.wait(16 - back, std::time::Duration::from_secs(30));
                assert!(!done.is_empty(), "no queued read completed within 30 s");
                for c in done {
                    assert_eq!(c.result.unwrap(), 4096, "read {}", c.tag);
                    back += 1;
                }
            }
        }
    }
    for (i, buf) in bufs.iter().enumerate() {
        let start = (at(i) - offset) as usize;
        assert!(buf[..] == data[start..start + 4096], "queued read {i}");
    }
    // Truncate reaches every target's object; stat sees the new size.
    file.truncate(100_000).unwrap();
    assert_eq!(client.stat("/shared").unwrap().size_bytes, 100_000);
    // Unlink removes the object from every target.
    client.unlink("/shared").unwrap();
    for id in IDS {
        assert!(objects_of(&cluster, id).is_empty(), "target {id}");
    }
}

/// Stores that take one operation at a time: most pieces wait for room in their target's
/// store while other targets' pieces go on; every write lands in order and every byte reads
/// back.
#[test]
fn pieces_wait_for_their_own_store_only() {
    let store = nacre::io::StoreConfig {
        max_ops: 1,
        ..nacre::io::StoreConfig::default()
    };
    let cluster = Cluster::start_shared_with("shared-full", &[80, 81, 82], store);
    let client = cluster.client();
    let spec = stripes(-1, 64 * 1024);
    let file = client.create("/full", 0o644, Some(spec)).unwrap();
    let queue = client.queue(32).unwrap();
    // Two rounds over the same 32 blocks, each waited for; the second's bytes read back.
    let block = 48 * 1024;
    for round in 0..2u64 {
        let bufs: Vec<Vec<u8>> = (0..32u64)
            .map(|b| fill(round * 100 + b, b * block as u64, block))
            .collect();
        for (b, buf) in bufs.iter().enumerate() {
            let op = QueueOp::Write {
                file: file.clone(),
                buf: buf.as_ptr(),
                len: buf.len(),
                offset: (b * block) as u64,
            };
            // SAFETY: (test) `bufs` outlives the round, whose writes are all waited for.
            unsafe { queue.submit(op, b as u64) }.unwrap();
        }
        let mut back = 0;
        while back < bufs.len() {
            let done = queue.wait(bufs.len() - back, std::time::Duration::from_secs(30));
            assert!(!done.is_empty(), "no write completed within 30 s");
            for c in done {
                assert_eq!(c.result.unwrap(), block as u64, "write {}", c.tag);
                back += 1;
            }
        }
    }
    let mut all = vec![0u8; 32 * block];
    assert_eq!(file.read_at(&mut all, 0).unwrap(), all.len());
    for b in 0..32usize {
        let want = fill(100 + b as u64, (b * block) as u64, block);
        assert!(all[b * block..(b + 1) * block] == want[..], "block {b}");
    }
}

/// Requests say which target they are for, whichever target's listener took their
/// connection; one for a target the server does not serve is refused with ENXIO naming it,
/// and one naming none is for the listener's target.
#[test]
fn requests_name_their_target_and_a_target_not_served_is_refused() {
    let ids = [90, 91];
    let cluster = Cluster::start_shared("shared-named", &ids);
    let server = cluster.targets[0].as_ref().unwrap();
    let mut conn =
        Connection::connect(&server.served()[0].endpoint, ConnectOptions::default()).unwrap();
    let statfs = |conn: &mut Connection, target: u32| {
        conn.set_target(target);
        let mut body = Vec::new();
        let reply = conn
            .call(Opcode::Statfs, &[], Bulk::None, &mut body)
            .unwrap();
        (reply.status, body)
    };
    for (target, answers) in [(91, 91), (90, 90), (ANY_TARGET, 90)] {
        let (status, body) = statfs(&mut conn, target);
        assert_eq!(status, 0, "{}", String::from_utf8_lossy(&body));
        let id = u32::from_le_bytes(body[..4].try_into().unwrap());
        assert_eq!(id, answers, "statfs of target {target:#x}");
    }
    let (status, body) = statfs(&mut conn, 7);
    let message = String::from_utf8_lossy(&body);
    assert_eq!(status, libc::ENXIO, "{message}");
    assert!(
        message.contains("target 7 is not served here") && message.contains("90, 91"),
        "{message}"
    );
    // A write to it is refused too, its payload skipped: the connection still serves, and
    // the server lists what it serves.
    let mut body = Vec::new();
    nacre::transport::wire::encode_extents(
        &[nacre::transport::wire::Extent {
            object_id: 1,
            offset_bytes: 0,
            len: 4096,
        }],
        &mut body,
    );
    let payload = [7u8; 4096];
    let mut reply_body = Vec::new();
    let reply = conn
        .call(
            Opcode::Write,
            &body,
            Bulk::Send(&[std::io::IoSlice::new(&payload)]),
            &mut reply_body,
        )
        .unwrap();
    assert_eq!(reply.status, libc::ENXIO);
    conn.set_target(ANY_TARGET);
    let mut body = Vec::new();
    let reply = conn
        .call(Opcode::Targets, &[], Bulk::None, &mut body)
        .unwrap();
    assert_eq!(reply.status, 0);
    let mut r = nacre::codec::Reader::new(&body, "targets reply");
    let _instance = r.u64("instance").unwrap();
    assert_eq!(r.u32("count").unwrap(), 2);
    for s in server.served() {
        assert_eq!(r.u32("target_id").unwrap(), s.target_id());
        assert_eq!(r.str("endpoint", 256).unwrap(), s.endpoint.to_string());
    }
    r.finish().unwrap();
}

#[test]
fn a_server_refuses_an_empty_or_ambiguous_set_of_targets() {
    let dir = TempDir::new("shared-bad");
    let config = target_config("tcp://127.0.0.1:1", "tcp://127.0.0.1:0");
    let Err(e) = TargetServer::start_shared(&[], &config) else {
        panic!("a server of no target started");
    };
    assert!(
        matches!(
            e,
            Error::Invalid {
                field: "targets",
                ..
            }
        ),
        "{e}"
    );
    let specs: Vec<TargetSpec> = ["a", "b"]
        .iter()
        .map(|name| {
            let tdir = dir.0.join(name);
            std::fs::create_dir_all(&tdir).unwrap();
            nacre::io::Target::format(&tdir, 5).unwrap();
            TargetSpec {
                dir: tdir,
                listen: "tcp://127.0.0.1:0".into(),
                advertise: None,
            }
        })
        .collect();
    let Err(e) = TargetServer::start_shared(&specs, &config) else {
        panic!("two targets with one id started");
    };
    let message = e.to_string();
    assert!(
        message.contains("distinct ids") && message.contains("/a") && message.contains("/b"),
        "{message}"
    );
}
