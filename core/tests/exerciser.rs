//! A model-based exerciser in the style of fsx: a seeded random sequence of writes at random
//! offsets and lengths (unaligned, tiny, spanning many stripes, extending past holes), reads
//! of random ranges, truncates that shrink and grow, syncs, closes and reopens, and stats,
//! each checked against an in-memory model of the file's bytes and size; then the same
//! through the asynchronous queue with many non-conflicting operations in flight (depths 1
//! to 4096), and with a caller that only ever polls.
//!
//! The seed is printed; `NACRE_TEST_SEED=N` replays a run, `NACRE_FSX_OPS=N` sets the
//! operations per layout (scripts/fsx.sh runs it longer), `NACRE_FSX_QUEUE_LAYOUTS=N` the
//! layouts the queue exercisers run on (scripts/kernel-test.sh runs fewer).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Bytes, Cluster, Model, Rng, component, stripes};
use nacre::meta::types::LayoutSpec;
use nacre::{Client, File, OpenOptions, Queue};

const K: u64 = 1024;
const M: u64 = 1024 * K;
/// Operations per layout of a CI run of the blocking exerciser.
const DEFAULT_OPS: usize = 1500;
/// Offsets of writes and truncates stay below this: with 64 KiB stripes over 4 targets,
/// about 100 rows.
const FILE_SPAN_BYTES: u64 = 24 * M;
/// Most bytes of one ordinary read or write; one in twenty goes up to [`MAX_BIG_OP_BYTES`].
const MAX_OP_BYTES: u64 = M;
const MAX_BIG_OP_BYTES: u64 = 8 * M + 3;
/// How long the test waits for a queue's completions before it calls them lost.
const COMPLETION_DEADLINE: Duration = Duration::from_secs(120);

fn ops_per_layout() -> usize {
    common::env_number("NACRE_FSX_OPS", DEFAULT_OPS as u64) as usize
}

/// The layouts every exerciser runs on: Lustre's smallest stripes over every target and over
/// one (many pieces per target), overstriping, and a composite layout.
fn layouts() -> Vec<(&'static str, LayoutSpec)> {
    let eof = u64::MAX;
    vec![
        ("-1x64K", stripes(-1, 64 * K)),
        ("1x64K", stripes(1, 64 * K)),
        (
            "8x64K overstriped",
            LayoutSpec {
                components: vec![component(0, eof, 8, 64 * K, true)],
            },
        ),
        (
            "composite 1x64K | 3x128K | -1x1M",
            LayoutSpec {
                components: vec![
                    component(0, 2 * M, 1, 64 * K, false),
                    component(2 * M, 10 * M, 3, 128 * K, false),
                    component(10 * M, eof, -1, M, false),
                ],
            },
        ),
    ]
}

fn op_len(rng: &mut Rng) -> u64 {
    if rng.below(20) == 0 {
        rng.len_up_to(MAX_BIG_OP_BYTES)
    } else {
        rng.len_up_to(MAX_OP_BYTES)
    }
}

/// Runs `ops` random operations on a new file of layout `spec`, checking each.
fn fsx(
    client: &Client,
    name: &str,
    path: &str,
    spec: LayoutSpec,
    bytes: &Bytes,
    seed: u64,
    ops: usize,
) {
    let mut rng = Rng(seed | 1);
    let mut model = Model::default();
    let mut file = client.create(path, 0o644, Some(spec)).unwrap();
    let rw = OpenOptions::new().read(true).write(true);
    let mut last = String::new();
    for i in 0..ops {
        let what = format!("{name}, op {i} (after {last})");
        match rng.below(100) {
            // Writes: anywhere, at the end (appends), or past it (a hole before).
            0..36 => {
                let len = op_len(&mut rng);
                let offset = match rng.below(3) {
                    0 => model.size(),
                    1 => model.size() + rng.below(3 * M),
                    _ => rng.below(FILE_SPAN_BYTES),
                }
                .min(FILE_SPAN_BYTES);
                let data = bytes.make(len as usize, i as u64, offset);
                let n = file
                    .write_at(&data, offset)
                    .unwrap_or_else(|e| panic!("{what}: write of {len} at {offset}: {e}"));
                assert_eq!(n, data.len(), "{what}");
                model.write(offset, &data);
                last = format!("write {len} at {offset}");
            }
            36..72 => {
                let len = op_len(&mut rng);
                let offset = rng.below(model.size() + 2 * M);
                let mut buf = vec![0xa5u8; len as usize];
                let n = file
                    .read_at(&mut buf, offset)
                    .unwrap_or_else(|e| panic!("{what}: read of {len} at {offset}: {e}"));
                model.check_read(offset, &buf, n, &format!("{what}: read"));
                last = format!("read {len} at {offset}");
            }
            72..82 => {
                let size = if rng.below(2) == 0 {
                    rng.below(model.size() + 1)
                } else {
                    model.size() + rng.len_up_to(2 * M)
                }
                .min(FILE_SPAN_BYTES);
                file.truncate(size)
                    .unwrap_or_else(|e| panic!("{what}: truncate to {size}: {e}"));
                model.truncate(size);
                last = format!("truncate to {size}");
            }
            82..87 => {
                file.sync().unwrap_or_else(|e| panic!("{what}: sync: {e}"));
                last = "sync".into();
            }
            87..92 => {
                drop(file);
                file = client
                    .open(path, &rw)
                    .unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                last = "close and reopen".into();
            }
            _ => {
                let by_handle = file.stat().unwrap().size_bytes;
                let by_path = client.stat(path).unwrap().size_bytes;
                assert_eq!(by_handle, model.size(), "{what}: stat of the handle");
                assert_eq!(by_path, model.size(), "{what}: stat of the path");
                last = "stat".into();
            }
        }
    }
    assert_eq!(
        file.size().unwrap(),
        model.size(),
        "{name}: size at the end"
    );
    let mut all = vec![0xa5u8; model.size() as usize + 4096];
    let n = file.read_at(&mut all, 0).unwrap();
    model.check_read(0, &all, n, &format!("{name}: the whole file at the end"));
}

#[test]
fn random_operations_match_a_model() {
    let cluster = Cluster::start("fsx", 4);
    let client = cluster.client();
    let seed = common::seed("random_operations_match_a_model");
    let bytes = Bytes::new(seed);
    for (i, (name, spec)) in layouts().into_iter().enumerate() {
        fsx(
            &client,
            name,
            &format!("/fsx-{i}"),
            spec,
            &bytes,
            seed ^ (i as u64) << 40,
            ops_per_layout(),
        );
    }
}

/// Depths the queue exerciser cycles through: one, a few, around the io crate's batch and a
/// store's depth, and the queue's largest.
const DEPTHS: [usize; 10] = [1, 2, 7, 63, 64, 65, 128, 129, 1000, 4096];
/// Bytes of the file the queue exerciser's operations spread over (at depth 4096: 4 KiB
/// slots).
const QUEUE_SPAN_BYTES: u64 = 16 * M;

/// How the exerciser takes completions from the queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reap {
    Wait,
    /// Only `Queue::poll`, never a wait: the queue must move by polls alone.
    PollOnly,
}

/// Takes `n` completions, by waiting or by polling only.
fn reap(queue: &Queue, n: usize, how: Reap, what: &str) -> Vec<nacre::Completion> {
    let deadline = Instant::now() + COMPLETION_DEADLINE;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} completions in {COMPLETION_DEADLINE:?}",
            out.len()
        );
        match how {
            Reap::Wait => out.extend(queue.wait(n - out.len(), Duration::from_secs(1))),
            Reap::PollOnly => out.extend(queue.poll()),
        }
    }
    out
}

/// One round: `depth` operations on disjoint slots of the file, half writes of new bytes and
/// half reads (checked against the model as it was before the round), all in flight at once.
fn queue_round(
    file: &File,
    queue: &Queue,
    model: &mut Model,
    bytes: &Bytes,
    rng: &mut Rng,
    round: usize,
    how: Reap,
) {
    let depth = queue.depth();
    let slot = QUEUE_SPAN_BYTES / depth as u64;
    let what = format!("round {round}, depth {depth}");
    let mut ops = Vec::with_capacity(depth);
    queue.batch(|q| {
        for tag in 0..depth as u64 {
            let within = rng.below(slot);
            let offset = tag * slot + within;
            let len = 1 + rng.below(slot - within).min(rng.len_up_to(slot));
            let write = rng.below(2) == 0;
            let refused = if write {
                q.submit_write(
                    file,
                    bytes.make(len as usize, round as u64, offset),
                    offset,
                    tag,
                )
            } else {
                q.submit_read(file, vec![0xa5u8; len as usize], offset, tag)
            };
            if let Err(r) = refused {
                panic!("{what}: submit of tag {tag}: {}", r.error);
            }
            ops.push((offset, len, write));
        }
    });
    let done = reap(queue, depth, how, &what);
    // Reads touch no slot a write of the round does, but writes may grow the file while
    // reads past its old end run: those see any size between.
    let old_size = model.size();
    for c in &done {
        let (offset, _, write) = ops[c.tag as usize];
        if write {
            model.write(offset, c.buffer.as_ref().expect("buffer"));
        }
    }
    let mut seen = vec![false; depth];
    for c in &done {
        let tag = c.tag as usize;
        assert!(!seen[tag], "{what}: tag {tag} completed twice");
        seen[tag] = true;
        let (offset, len, write) = ops[tag];
        let n = c
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: tag {tag} ({len} at {offset}): {e}"));
        let buf = c.buffer.as_ref().expect("an owned buffer comes back");
        if !write {
            let what = format!("{what}: read of tag {tag}");
            model.check_read_growing(old_size, offset, buf, *n as usize, &what);
        } else {
            assert_eq!(*n, len, "{what}: write of tag {tag}");
        }
    }
    assert_eq!(queue.in_flight(), 0, "{what}");
}

fn queue_exerciser(client: &Client, how: Reap, test: &str) {
    let seed = common::seed(test);
    let bytes = Bytes::new(seed);
    let mut rng = Rng(seed);
    let layouts_to_run = common::env_number("NACRE_FSX_QUEUE_LAYOUTS", 4) as usize;
    for (l, (name, spec)) in layouts().into_iter().enumerate().take(layouts_to_run) {
        let path = format!("/{test}-{l}");
        let file = client.create(&path, 0o644, Some(spec)).unwrap();
        let mut model = Model::default();
        for (round, &depth) in DEPTHS.iter().enumerate() {
            let queue = client.queue(depth).unwrap();
            queue_round(&file, &queue, &mut model, &bytes, &mut rng, round, how);
            // Between rounds: a truncate (shrinking or growing) or a sync through the queue.
            if round % 3 == 2 {
                let size = rng.below(QUEUE_SPAN_BYTES + M);
                file.truncate(size).unwrap();
                model.truncate(size);
            } else {
                // SAFETY: a sync names no memory.
                unsafe { queue.submit(nacre::QueueOp::Sync { file: file.clone() }, 0) }.unwrap();
                let c = reap(&queue, 1, how, &format!("{name}: sync"));
                assert!(c[0].result.is_ok(), "{name}: sync: {:?}", c[0].result);
            }
            assert_eq!(
                file.size().unwrap(),
                model.size(),
                "{name}: size after round {round}"
            );
        }
        let mut all = vec![0xa5u8; model.size() as usize + 100];
        let n = file.read_at(&mut all, 0).unwrap();
        model.check_read(0, &all, n, &format!("{name}: the whole file"));
    }
}

#[test]
fn queued_operations_at_every_depth_match_a_model() {
    let cluster = Cluster::start("fsx-queue", 4);
    queue_exerciser(
        &cluster.client(),
        Reap::Wait,
        "queued_operations_at_every_depth_match_a_model",
    );
}

/// A caller that only polls: each poll takes the replies that have arrived. Before, a poll
/// never looked at the connections, so an operation completed only when its request timed
/// out; with the client's timeout at an hour, the test's own deadline fails first.
#[test]
fn a_caller_that_only_polls_sees_every_completion() {
    let cluster = Cluster::start("fsx-poll", 4);
    let client = cluster.client_with(nacre::ClientOptions {
        timeout: Duration::from_secs(3600),
        ..nacre::ClientOptions::default()
    });
    let file = client
        .create("/poll", 0o644, Some(stripes(-1, 64 * K)))
        .unwrap();
    let data = Bytes::new(5).make(4 * M as usize, 0, 0);
    file.write_at(&data, 0).unwrap();
    let queue = client.queue(256).unwrap();
    for tag in 0..256u64 {
        let offset = tag * 16 * K + tag;
        queue
            .submit_read(&file, vec![0u8; 4096], offset, tag)
            .unwrap();
    }
    let done = reap(&queue, 256, Reap::PollOnly, "poll only");
    for c in done {
        let offset = (c.tag * 16 * K + c.tag) as usize;
        assert_eq!(c.result.as_ref().ok(), Some(&4096));
        assert!(
            c.buffer.unwrap()[..] == data[offset..offset + 4096],
            "tag {}",
            c.tag
        );
    }
    drop(queue);
    // The exerciser, polling only.
    drop(file);
    queue_exerciser(&client, Reap::PollOnly, "a_caller_that_only_polls");
}
