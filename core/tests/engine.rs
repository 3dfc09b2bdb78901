//! The engine end to end in one process: a metadata service, targets and clients over
//! loopback TCP, with real io_uring on real files.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Cluster, fill, pattern, registered_round_trip, stripes};
use nacre::layout::StripeSpec;
use nacre::meta::types::{ComponentSpec, Cred, LayoutSpec};
use nacre::{ClientOptions, OpenOptions, QueueOp};

#[test]
fn striped_write_then_read_back_over_every_target() {
    let cluster = Cluster::start("e2e", 4);
    let client = cluster.client();
    let file = client
        .create("/data", 0o644, Some(stripes(-1, 64 * 1024)))
        .unwrap();
    assert_eq!(file.layout().components()[0].stripe.stripe_count(), 4);
    // Unaligned offset and length, many stripe rows.
    let offset = 12_345;
    let data = fill(1, offset, 3 * 1024 * 1024 + 777);
    assert_eq!(file.write_at(&data, offset).unwrap(), data.len());
    file.sync().unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, offset).unwrap(), data.len());
    assert!(back == data, "read back differs");
    // The bytes before the first write are a hole.
    let mut head = vec![0xffu8; offset as usize];
    assert_eq!(file.read_at(&mut head, 0).unwrap(), head.len());
    assert!(head.iter().all(|&b| b == 0));
    let st = client.stat("/data").unwrap();
    assert_eq!(st.size_bytes, offset + data.len() as u64);
    // Each target holds one object of the file.
    for i in 0..4 {
        let objects = nacre::io::Target::open(&cluster.target_dir(i))
            .unwrap()
            .list()
            .unwrap();
        assert_eq!(objects.len(), 1, "target {i}");
    }
}

#[test]
fn holes_and_reads_past_the_end() {
    let cluster = Cluster::start("holes", 2);
    let client = cluster.client();
    let file = client
        .create("/h", 0o644, Some(stripes(2, 1 << 20)))
        .unwrap();
    // Only the second stripe unit of the second row is written: stripe 0's object is empty.
    let at = 3 << 20;
    let data = fill(2, at, 1000);
    file.write_at(&data, at).unwrap();
    assert_eq!(file.size().unwrap(), at + 1000);
    let mut buf = vec![0xaau8; (4 << 20) + 5000];
    let n = file.read_at(&mut buf, 0).unwrap();
    assert_eq!(n as u64, at + 1000, "the read stops at the end of the file");
    assert!(
        buf[..at as usize].iter().all(|&b| b == 0),
        "holes read as zeros"
    );
    assert!(buf[at as usize..n] == data[..]);
    assert_eq!(file.read_at(&mut buf, at + 1000).unwrap(), 0, "at EOF");
    assert_eq!(
        file.read_at(&mut buf, at + 10_000_000).unwrap(),
        0,
        "past EOF"
    );
    // Truncate down and up.
    file.truncate(at + 10).unwrap();
    assert_eq!(file.size().unwrap(), at + 10);
    file.truncate(8 << 20).unwrap();
    assert_eq!(file.size().unwrap(), 8 << 20);
    let mut tail = vec![0xffu8; 100];
    assert_eq!(file.read_at(&mut tail, at).unwrap(), 100);
    assert!(tail[..10] == data[..10] && tail[10..].iter().all(|&b| b == 0));
    // Opening with O_TRUNC empties it.
    let again = client
        .open("/h", &OpenOptions::new().write(true).truncate(true))
        .unwrap();
    assert_eq!(again.size().unwrap(), 0);
}

#[test]
fn composite_layout_end_to_end() {
    let cluster = Cluster::start("pfl", 4);
    let client = cluster.client();
    let spec = LayoutSpec {
        components: vec![
            ComponentSpec {
                start_bytes: 0,
                end_bytes: 1 << 20,
                stripe: StripeSpec {
                    stripe_count: 1,
                    ..StripeSpec::default()
                },
            },
            ComponentSpec {
                start_bytes: 1 << 20,
                end_bytes: u64::MAX,
                stripe: StripeSpec {
                    stripe_count: -1,
                    stripe_size_bytes: 64 * 1024,
                    ..StripeSpec::default()
                },
            },
        ],
    };
    let file = client.create("/pfl", 0o644, Some(spec)).unwrap();
    assert_eq!(file.layout().components().len(), 2);
    let data = fill(3, 0, 5 << 20);
    file.write_at(&data, 0).unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data);
    assert_eq!(client.stat("/pfl").unwrap().size_bytes, 5 << 20);
    let text = file.layout().to_string();
    assert!(text.contains("lcm_entry_count:   2"), "{text}");
}

#[test]
fn eight_threads_write_strided_regions_of_one_file() {
    let cluster = Cluster::start("strided", 4);
    let client = cluster.client();
    let file = client
        .create("/shared", 0o644, Some(stripes(-1, 64 * 1024)))
        .unwrap();
    const THREADS: u64 = 8;
    const BLOCK: u64 = 47_008; // IOR-hard's transfer size: never aligned
    const ROUNDS: u64 = 12;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let file = file.clone();
            s.spawn(move || {
                for r in 0..ROUNDS {
                    let at = (r * THREADS + t) * BLOCK;
                    file.write_at(&fill(4, at, BLOCK as usize), at).unwrap();
                }
            });
        }
    });
    let total = THREADS * ROUNDS * BLOCK;
    assert_eq!(file.size().unwrap(), total);
    let mut back = vec![0u8; total as usize];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), total as usize);
    for (i, &b) in back.iter().enumerate() {
        assert_eq!(b, pattern(4, i as u64), "byte {i}");
    }
}

#[test]
fn namespace_round_trips() {
    let cluster = Cluster::start("ns", 2);
    let client = cluster.client();
    client.mkdir("/d", 0o755).unwrap();
    client.mkdir("/d/sub", 0o755).unwrap();
    for name in ["b", "a", "c"] {
        client
            .create(&format!("/d/{name}"), 0o644, None)
            .unwrap()
            .write_at(b"hello", 0)
            .unwrap();
    }
    let names: Vec<String> = client
        .readdir("/d")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["a", "b", "c", "sub"]);
    client.rename("/d/a", "/d/sub/z").unwrap();
    assert_eq!(client.stat("/d/sub/z").unwrap().size_bytes, 5);
    assert_eq!(client.stat("/d/a").unwrap_err().errno(), libc::ENOENT);
    // Unlink removes the objects from the targets.
    let count_objects = || -> usize {
        (0..2)
            .map(|i| {
                nacre::io::Target::open(&cluster.target_dir(i))
                    .unwrap()
                    .list()
                    .unwrap()
                    .len()
            })
            .sum()
    };
    let before = count_objects();
    client.unlink("/d/b").unwrap();
    assert_eq!(count_objects(), before - 1);
    assert_eq!(client.rmdir("/d").unwrap_err().errno(), libc::ENOTEMPTY);

    // setstripe on a directory: new files inherit; getstripe shows it.
    client.setstripe("/d", stripes(2, 2 << 20), 0o644).unwrap();
    let f = client.create("/d/inherits", 0o644, None).unwrap();
    assert_eq!(f.layout().components()[0].stripe.stripe_count(), 2);
    assert_eq!(
        f.layout().components()[0].stripe.stripe_size_bytes(),
        2 << 20
    );
    let st = client.stat("/d").unwrap();
    assert_eq!(
        st.attr.default_layout.unwrap().components[0]
            .stripe
            .stripe_count,
        2
    );
    // setstripe on a new path creates it; on an existing file it is refused.
    client
        .setstripe("/new", stripes(1, 1 << 20), 0o644)
        .unwrap();
    assert_eq!(client.stat("/new").unwrap().size_bytes, 0);
    assert_eq!(
        client
            .setstripe("/new", stripes(1, 1 << 20), 0o644)
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
}

#[test]
fn permissions_are_checked_for_other_users() {
    let cluster = Cluster::start("perm", 1);
    let root = cluster.client();
    root.mkdir("/private", 0o700).unwrap();
    root.create("/private/f", 0o600, None).unwrap();
    root.create("/readonly", 0o644, None).unwrap();
    let user = cluster.client_with(ClientOptions {
        cred: Cred {
            uid: 1000,
            gid: 1000,
            groups: vec![],
        },
        ..ClientOptions::default()
    });
    let denied = |e: nacre::Error| {
        assert_eq!(e.errno(), libc::EACCES, "{e}");
        assert!(!e.to_string().is_empty());
    };
    denied(user.stat("/private/f").unwrap_err());
    denied(user.create("/private/g", 0o644, None).unwrap_err());
    denied(
        user.open("/readonly", &OpenOptions::new().write(true))
            .unwrap_err(),
    );
    assert!(
        user.open("/readonly", &OpenOptions::new().read(true))
            .is_ok()
    );
    assert_eq!(
        user.chmod("/readonly", 0o777).unwrap_err().errno(),
        libc::EPERM
    );
    root.chown("/readonly", Some(1000), None).unwrap();
    user.chmod("/readonly", 0o666).unwrap();
    assert!(
        user.open("/readonly", &OpenOptions::new().write(true))
            .is_ok()
    );
}

#[test]
fn asynchronous_queue_of_depth_64() {
    let cluster = Cluster::start("queue", 2);
    let client = cluster.client();
    let file = client
        .create("/q", 0o644, Some(stripes(2, 64 * 1024)))
        .unwrap();
    const OPS: u64 = 256;
    const LEN: usize = 8192;
    let data: Vec<Vec<u8>> = (0..OPS).map(|i| fill(5, i * LEN as u64, LEN)).collect();
    let queue = client.queue(64).unwrap();
    let mut next = 0u64;
    let mut done = 0u64;
    while done < OPS {
        while next < OPS {
            let op = QueueOp::Write {
                file: file.clone(),
                buf: data[next as usize].as_ptr(),
                len: LEN,
                offset: next * LEN as u64,
            };
            // SAFETY: `data` outlives the queue's completions (all are waited for below).
            match unsafe { queue.submit(op, next) } {
                Ok(()) => next += 1,
                Err(e) => {
                    assert_eq!(e.errno(), libc::EAGAIN);
                    break;
                }
            }
        }
        for c in queue.wait(1, Duration::from_secs(30)) {
            assert_eq!(c.result.unwrap(), LEN as u64, "tag {}", c.tag);
            done += 1;
        }
    }
    assert_eq!(queue.in_flight(), 0);
    let mut back = vec![0u8; OPS as usize * LEN];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), back.len());
    assert!(back == data.concat());
    assert!(queue.poll().is_empty());
}

/// A deep queue on a file of one stripe puts many requests on each of its few connections
/// to the target's server (`MAX_QUEUE_CONNECTIONS_PER_SERVER`): the target reads them while it serves
/// the earlier ones and answers in order. Large reads pass the target's bound on the memory
/// one connection may hold (`MAX_STAGED_BYTES_PER_CONNECTION`), so some wait for replies to
/// go out; writes whose payloads follow each other on the stream land where they belong.
#[test]
fn queue_pipelines_reads_and_writes_on_each_connection() {
    let cluster = Cluster::start("pipelined", 1);
    let client = cluster.client();
    let file = client
        .create("/pipe", 0o644, Some(stripes(1, 1 << 20)))
        .unwrap();
    const BIG: usize = 1 << 20;
    const READS: u64 = 64;
    const SMALL: usize = 4096;
    const WRITES: u64 = 64;
    let written = fill(11, 0, READS as usize * BIG);
    assert_eq!(file.write_at(&written, 0).unwrap(), written.len());
    let queue = client.queue((READS + WRITES) as usize).unwrap();
    // Reads of the first 64 MiB and small writes past it, interleaved.
    let tail = READS * BIG as u64;
    for i in 0..READS {
        queue
            .submit_read(&file, vec![0u8; BIG], i * BIG as u64, i)
            .unwrap();
        let offset = tail + i * SMALL as u64;
        queue
            .submit_write(&file, fill(12, offset, SMALL), offset, WRITES + i)
            .unwrap();
    }
    let mut seen = 0;
    while seen < READS + WRITES {
        let got = queue.wait(1, Duration::from_secs(60));
        assert!(!got.is_empty(), "no completion within 60 s ({seen} seen)");
        for c in got {
            seen += 1;
            let buf = c.buffer.unwrap();
            if c.tag < READS {
                assert_eq!(c.result.unwrap(), BIG as u64, "read tag {}", c.tag);
                let at = c.tag as usize * BIG;
                assert!(buf == written[at..at + BIG], "read tag {} data", c.tag);
            } else {
                assert_eq!(c.result.unwrap(), SMALL as u64, "write tag {}", c.tag);
            }
        }
    }
    let mut back = vec![0u8; WRITES as usize * SMALL];
    assert_eq!(file.read_at(&mut back, tail).unwrap(), back.len());
    assert!(
        back == fill(12, tail, back.len()),
        "the pipelined writes read back"
    );
}

/// Submissions inside `Queue::batch` wait to be sent together. When the batch ends its
/// requests leave even though no thread drives the queue: a second client sees the writes
/// land while the queue is left alone. A thread that waits inside a batch still sees its
/// submissions complete (waiting sends what is held), also on connections already open,
/// which report no readiness by themselves.
#[test]
fn queue_batches_send_when_they_end_and_when_waited_on() {
    let cluster = Cluster::start("batch", 2);
    // Requests held unsent are not rescued by the timeout's look at a stalled connection
    // (which flushes it) while the test waits.
    let client = cluster.client_with(ClientOptions {
        timeout: Duration::from_secs(600),
        ..ClientOptions::default()
    });
    let file = client
        .create("/b", 0o644, Some(stripes(2, 64 * 1024)))
        .unwrap();
    const OPS: u64 = 8;
    const LEN: usize = 48 * 1024;
    let queue = client.queue(OPS as usize).unwrap();
    let data = fill(21, 0, OPS as usize * LEN);
    queue.batch(|q| {
        for i in 0..OPS {
            let at = i as usize * LEN;
            q.submit_write(&file, data[at..at + LEN].to_vec(), at as u64, i)
                .unwrap();
        }
    });
    // Nobody drives the queue now: the writes land only if the batch's end sent them.
    let other = cluster.client();
    let reader = other.open("/b", &OpenOptions::new().read(true)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut back = vec![0u8; data.len()];
    loop {
        // Short (or holding zeros) until every write has landed.
        let n = reader.read_at(&mut back, 0).unwrap();
        if n == back.len() && back == data {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch's writes did not reach the targets within 60 s"
        );
        std::thread::yield_now();
    }
    let done = queue.wait(OPS as usize, Duration::from_secs(60));
    assert_eq!(done.len(), OPS as usize);
    assert!(
        done.iter()
            .all(|c| matches!(c.result, Ok(n) if n == LEN as u64))
    );
    // The connections are open and idle now.
    let reads = queue.batch(|q| {
        for i in 0..OPS {
            q.submit_read(&file, vec![0u8; LEN], i * LEN as u64, i)
                .unwrap();
        }
        q.wait(OPS as usize, Duration::from_secs(60))
    });
    assert_eq!(
        reads.len(),
        OPS as usize,
        "completions waited for inside the batch"
    );
    for c in reads {
        assert_eq!(c.result.unwrap(), LEN as u64, "tag {}", c.tag);
        let at = c.tag as usize * LEN;
        assert!(
            c.buffer.unwrap() == data[at..at + LEN],
            "read tag {}",
            c.tag
        );
    }
}

/// The blocking calls run on queues the client keeps, with their connections, between
/// calls. A target that restarts on its address closes those connections while they are
/// idle: the next calls notice it before they send, open new connections and succeed, and
/// every byte synced before the restart reads back. So does the next submission to an
/// application's queue that was idle over the restart.
#[test]
fn blocking_and_queued_calls_go_on_after_a_target_restarts() {
    let mut cluster = Cluster::start("restart", 2);
    let client = cluster.client();
    let file = client
        .create("/r", 0o644, Some(stripes(2, 64 * 1024)))
        .unwrap();
    const LEN: usize = 512 * 1024;
    let data = fill(31, 0, LEN);
    assert_eq!(file.write_at(&data, 0).unwrap(), LEN);
    file.sync().unwrap();
    let queue = client.queue(2).unwrap();
    let read_by_queue = |tag: u64| {
        queue.submit_read(&file, vec![0u8; LEN], 0, tag).unwrap();
        let mut done = queue.wait(1, Duration::from_secs(60));
        let c = done.pop().expect("a completion within 60 s");
        assert_eq!(c.result.unwrap(), LEN as u64, "queued read {tag}");
        assert!(c.buffer.unwrap() == data, "queued read {tag}");
    };
    read_by_queue(1);
    for i in 0..2 {
        let old = cluster.targets[i].take().unwrap();
        let listen = old.endpoint().to_string();
        old.stop();
        let config = common::target_config(&cluster.meta_addr, &listen);
        let dir = cluster.target_dir(i as u32);
        cluster.targets[i] = Some(nacre::TargetServer::start(&dir, &config).unwrap());
    }
    let mut back = vec![0u8; LEN];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), LEN);
    assert!(back == data, "the synced bytes read back after the restart");
    read_by_queue(2);
    let more = fill(32, LEN as u64, LEN);
    assert_eq!(file.write_at(&more, LEN as u64).unwrap(), LEN);
    assert_eq!(file.read_at(&mut back, LEN as u64).unwrap(), LEN);
    assert!(back == more);
}

#[test]
fn bad_input_gets_clear_errors() {
    let cluster = Cluster::start("bad", 2);
    let client = cluster.client();
    let bad = client
        .create("/x", 0o644, Some(stripes(1, 1000)))
        .unwrap_err();
    assert_eq!(bad.errno(), libc::EINVAL);
    assert!(bad.to_string().contains("stripe_size"), "{bad}");
    let too_many = client
        .create("/y", 0o644, Some(stripes(3, 1 << 20)))
        .unwrap_err();
    assert_eq!(too_many.errno(), libc::EINVAL, "{too_many}");
    let missing = client.stat("/no/such").unwrap_err();
    assert_eq!(missing.errno(), libc::ENOENT);
    assert!(missing.to_string().contains("/no"), "{missing}");
    let missing = client
        .open("/nope", &OpenOptions::new().read(true))
        .unwrap_err();
    assert_eq!(missing.errno(), libc::ENOENT);
    // A metadata service that does not answer.
    let nobody = nacre::Client::connect_with(
        "tcp://127.0.0.1:1",
        ClientOptions {
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .unwrap_err();
    assert!(nobody.to_string().contains("127.0.0.1:1"), "{nobody}");
}

#[test]
fn registered_memory_carries_bulk_and_is_checked() {
    let cluster = Cluster::start("registered", 2);
    let client = cluster.client();
    let (w, r) = registered_round_trip(&client, "/registered", 4, 3 * 1024 * 1024 + 17);
    assert_ne!(w, r);
    // TCP moves bulk straight between the socket and the caller's memory.
    assert_eq!(client.staged_bytes(), 0);
    let again = client.unregister_memory(r).unwrap_err();
    assert_eq!(again.errno(), libc::EINVAL, "{again}");

    // SAFETY: (test) refused before anything is registered.
    let null = unsafe { client.register_memory(std::ptr::null_mut(), 10) }.unwrap_err();
    assert!(null.to_string().contains("memory"), "{null}");
    let mut buf = vec![0u8; 10];
    // SAFETY: (test) refused before anything is registered.
    let empty = unsafe { client.register_memory(buf.as_mut_ptr(), 0) }.unwrap_err();
    assert!(empty.to_string().contains("length 0"), "{empty}");
}

#[test]
fn the_umask_clears_permission_bits_of_what_a_client_creates() {
    let cluster = Cluster::start("umask", 1);
    let options = nacre::ClientOptions {
        umask: 0o077,
        ..nacre::ClientOptions::default()
    };
    let client = cluster.client_with(options);
    client.mkdir("/private", 0o777).unwrap();
    assert_eq!(client.stat("/private").unwrap().attr.mode & 0o7777, 0o700);
    client.create("/private/f", 0o666, None).unwrap();
    assert_eq!(client.stat("/private/f").unwrap().attr.mode & 0o7777, 0o600);
    // chmod sets what it is asked, as chmod(2) does.
    client.chmod("/private/f", 0o644).unwrap();
    assert_eq!(client.stat("/private/f").unwrap().attr.mode & 0o7777, 0o644);
}

/// The descriptors of this process open on files under `dir`: (all, deleted ones).
fn open_files_under(dir: &std::path::Path) -> (usize, usize) {
    let dir = std::fs::canonicalize(dir).unwrap();
    let (mut all, mut deleted) = (0, 0);
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        // A descriptor may close between the listing and the readlink.
        let Ok(target) = std::fs::read_link(entry.unwrap().path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with(dir.to_str().unwrap()) {
            all += 1;
            deleted += usize::from(target.ends_with(" (deleted)"));
        }
    }
    (all, deleted)
}

/// Reads run on the worker that received them, so several stores open one object: once a
/// file is unlinked, none of them may keep its object open (the space would stay used).
#[test]
fn unlinked_files_are_not_held_open_by_any_worker() {
    const FILES: usize = 16;
    let cluster = Cluster::start("forget", 1);
    let one_connection = || ClientOptions {
        connections_per_target: 1,
        ..ClientOptions::default()
    };
    // Two clients, so two connections, which the target hands to its two workers in turn.
    let writer = cluster.client_with(one_connection());
    let reader = cluster.client_with(one_connection());
    for i in 0..FILES {
        let file = writer
            .create(&format!("/f{i}"), 0o644, Some(stripes(1, 1 << 20)))
            .unwrap();
        file.write_at(&fill(i as u64, 0, 64 * 1024), 0).unwrap();
    }
    for client in [&writer, &reader] {
        for i in 0..FILES {
            let file = client
                .open(&format!("/f{i}"), &OpenOptions::new().read(true))
                .unwrap();
            let mut back = vec![0u8; 64 * 1024];
            assert_eq!(file.read_at(&mut back, 0).unwrap(), back.len());
            assert!(back == fill(i as u64, 0, back.len()), "file {i}");
        }
    }
    let dir = cluster.target_dir(0);
    let (open, _) = open_files_under(&dir);
    assert!(
        open > FILES,
        "both workers' stores hold objects open ({open} descriptors for {FILES} objects)"
    );
    for i in 0..FILES {
        writer.unlink(&format!("/f{i}")).unwrap();
    }
    // The other worker closes its files when it takes the owner's message; give it a
    // bounded time to, then look.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut deleted = open_files_under(&dir).1;
    while deleted > 0 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
        deleted = open_files_under(&dir).1;
    }
    assert_eq!(deleted, 0, "descriptors still open on unlinked objects");
    assert!(
        nacre::io::Target::open(&dir)
            .unwrap()
            .list()
            .unwrap()
            .is_empty()
    );
}

/// Requests a client library would not send still get answers, and the connection stays
/// usable: a payload on a request that takes none is dropped, a read larger than one
/// request may carry is refused.
#[test]
fn a_target_answers_odd_requests_and_keeps_the_connection() {
    use nacre::transport::client::{Bulk, ConnectOptions, Connection};
    use nacre::transport::wire::{Extent, Opcode, encode_extents};
    use std::io::IoSlice;

    let cluster = Cluster::start("odd", 1);
    let endpoint = cluster.targets[0].as_ref().unwrap().endpoint().clone();
    let mut conn = Connection::connect(&endpoint, ConnectOptions::default()).unwrap();
    let mut reply = Vec::new();
    let mut body = Vec::new();

    // Stat of an object that does not exist, with a payload it has no use for.
    let one = Extent {
        object_id: 77,
        offset_bytes: 0,
        len: 1,
    };
    encode_extents(&[one], &mut body);
    let junk = vec![0x5au8; 10_000];
    let r = conn
        .call(
            Opcode::Stat,
            &body,
            Bulk::Send(&[IoSlice::new(&junk)]),
            &mut reply,
        )
        .unwrap();
    assert_eq!(r.status, 0);
    assert_eq!(reply, 0u64.to_le_bytes(), "a missing object's size is 0");

    // A read of more than 64 MiB in one request.
    let big = Extent {
        object_id: 77,
        offset_bytes: 0,
        len: (64 << 20) + 4096,
    };
    body.clear();
    encode_extents(&[big], &mut body);
    let r = conn
        .call(Opcode::Read, &body, Bulk::None, &mut reply)
        .unwrap();
    assert_eq!(r.status, libc::EINVAL);
    let message = String::from_utf8_lossy(&reply).into_owned();
    assert!(message.contains("at most"), "{message}");

    // The same connection still serves.
    let r = conn
        .call(Opcode::Ping, &[], Bulk::None, &mut reply)
        .unwrap();
    assert_eq!(r.status, 0);
    let server = cluster.targets[0].as_ref().unwrap();
    assert_eq!(server.connections().failed, 0, "no connection failed yet");

    // Bytes that are no message close their connection, counted as failed.
    let addr = endpoint.to_string();
    let addr = addr.trim_start_matches("tcp://");
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::io::Write::write_all(&mut raw, &[0xEEu8; 64]).unwrap();
    let mut rest = Vec::new();
    // The target closes it: end of file (or a reset), not a timeout.
    if let Err(e) = std::io::Read::read_to_end(&mut raw, &mut rest) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    // The worker counts it when it closes it, which it did before the end of file came.
    assert_eq!(server.connections().failed, 1);
}

#[test]
fn queue_with_owned_buffers_reads_short_at_the_end_and_refuses_clearly() {
    let cluster = Cluster::start("owned", 2);
    let client = cluster.client();
    let file = client
        .create("/owned", 0o644, Some(stripes(2, 64 * 1024)))
        .unwrap();
    const LEN: usize = 100 * 1024;
    let queue = client.queue(4).unwrap();
    for i in 0..3u64 {
        let data = fill(9, i * LEN as u64, LEN);
        queue.submit_write(&file, data, i * LEN as u64, i).unwrap();
    }
    let mut written = 0;
    while written < 3 {
        for c in queue.wait(1, Duration::from_secs(30)) {
            assert_eq!(c.result.unwrap(), LEN as u64, "write tag {}", c.tag);
            // The buffer comes back as it went.
            assert!(c.buffer.unwrap() == fill(9, c.tag * LEN as u64, LEN));
            written += 1;
        }
    }
    // A read across the end of the file is short; one past it reads nothing.
    queue
        .submit_read(&file, vec![0u8; LEN + 50_000], 2 * LEN as u64, 10)
        .unwrap();
    queue
        .submit_read(&file, vec![0u8; 4096], 10 * LEN as u64, 11)
        .unwrap();
    // A file opened for writing only cannot be read: the operation completes with EBADF.
    let write_only = client
        .open("/owned", &OpenOptions::new().write(true))
        .unwrap();
    queue
        .submit_read(&write_only, vec![0u8; 16], 0, 12)
        .unwrap();
    // A fourth operation fills the queue; a fifth is refused and its buffer comes back.
    queue.submit_read(&file, vec![0u8; 16], 0, 13).unwrap();
    let refused = queue.submit_read(&file, vec![7u8; 5], 0, 14).unwrap_err();
    assert_eq!(refused.error.errno(), libc::EAGAIN);
    assert_eq!(refused.buffer, vec![7u8; 5]);
    let empty = queue.submit_write(&file, Vec::new(), 0, 15).unwrap_err();
    assert_eq!(empty.error.errno(), libc::EINVAL, "{}", empty.error);
    let mut seen = 0;
    while seen < 4 {
        for c in queue.wait(1, Duration::from_secs(30)) {
            seen += 1;
            match c.tag {
                10 => {
                    assert_eq!(c.result.unwrap(), LEN as u64);
                    let buf = c.buffer.unwrap();
                    assert!(buf[..LEN] == fill(9, 2 * LEN as u64, LEN)[..]);
                }
                11 => assert_eq!(c.result.unwrap(), 0),
                12 => {
                    let e = c.result.unwrap_err();
                    assert_eq!(e.errno(), libc::EBADF, "{e}");
                    assert_eq!(c.buffer.unwrap().len(), 16);
                }
                13 => assert!(c.buffer.unwrap() == fill(9, 0, 16)),
                other => panic!("unexpected tag {other}"),
            }
        }
    }
    assert_eq!(queue.in_flight(), 0);
}

#[test]
fn queue_syncs_and_fails_requests_naming_a_target_that_stopped() {
    let mut cluster = Cluster::start("qstop", 1);
    let client = cluster.client_with(ClientOptions {
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    });
    let file = client
        .create("/q", 0o644, Some(stripes(1, 1 << 20)))
        .unwrap();
    let queue = client.queue(8).unwrap();
    queue
        .submit_write(&file, fill(3, 0, 1 << 20), 0, 1)
        .unwrap();
    let c = queue.wait(1, Duration::from_secs(30));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].result.as_ref().unwrap(), &(1 << 20));
    // A sync goes through the queue too (on its progress threads).
    let op = QueueOp::Sync { file: file.clone() };
    // SAFETY: a sync names no memory.
    unsafe { queue.submit(op, 2) }.unwrap();
    let c = queue.wait(1, Duration::from_secs(30));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].result.as_ref().unwrap(), &0);
    // The target goes away: every later operation completes with an error that names it,
    // whether its connection breaks or a new one is refused; none hangs.
    cluster.targets[0].take().unwrap().stop();
    for tag in 0..4 {
        queue
            .submit_read(&file, vec![0u8; 4096], tag * 4096, tag)
            .unwrap();
    }
    let mut failed = 0;
    while failed < 4 {
        let done = queue.wait(1, Duration::from_secs(30));
        assert!(!done.is_empty(), "no completion within 30 s");
        for c in done {
            let e = c.result.unwrap_err();
            assert!(e.to_string().contains("target 0"), "{e}");
            failed += 1;
        }
    }
}
