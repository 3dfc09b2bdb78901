//! Moving object bytes through the store: aligned and unaligned, batched and one by one,
//! registered and plain memory, against an in-memory model of each object.

mod common;

use std::time::Duration;

use common::{Rng, store};
use nacre_io::{AlignedBuf, BatchOp, Completion, IoError, Op, StoreConfig, limits::MAX_IO_BYTES};
use proptest::prelude::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn aligned_write_then_read_through_registered_and_plain_memory() {
    let (_dir, target, mut store) = store("aligned", StoreConfig::default());
    target.create(1).expect("create");
    let mut src = AlignedBuf::zeroed(1 << 20).expect("buffer");
    Rng(1).fill(&mut src);
    // SAFETY: src outlives the store's use of it (the store is dropped at the end of the test,
    // after src is no longer used by any op).
    let region = unsafe { store.register_memory(src.as_mut_ptr(), src.len()) }.expect("register");
    store.write(1, 0, &src).expect("write registered");
    let mut back = AlignedBuf::zeroed(1 << 20).expect("buffer");
    assert_eq!(store.read(1, 0, &mut back).expect("read plain"), 1 << 20);
    assert!(back[..] == src[..]);
    // And back the other way: plain write, registered read.
    Rng(2).fill(&mut back);
    store.write(1, 1 << 20, &back).expect("write plain");
    assert_eq!(
        store.read(1, 1 << 20, &mut src).expect("read registered"),
        1 << 20
    );
    assert!(back[..] == src[..]);
    assert_eq!(target.stat(1).expect("stat").size_bytes, 2 << 20);
    store.unregister_memory(region).expect("unregister");
}

#[test]
fn unaligned_reads_and_writes_match_a_model() {
    let (_dir, target, mut store) = store("unaligned", StoreConfig::default());
    target.create(9).expect("create");
    let mut model = vec![0u8; 0];
    let mut rng = Rng(77);
    for _ in 0..300 {
        let off = rng.below(200_000);
        let len = 1 + rng.below(20_000) as usize;
        if rng.below(3) > 0 {
            let mut bytes = vec![0u8; len];
            rng.fill(&mut bytes);
            store.write(9, off, &bytes).expect("write");
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&bytes);
        } else {
            let mut bytes = vec![0xAAu8; len];
            let n = store.read(9, off, &mut bytes).expect("read");
            let want_n = model.len().saturating_sub(off as usize).min(len);
            assert_eq!(
                n,
                want_n,
                "read of {len} at {off}, object size {}",
                model.len()
            );
            assert_eq!(&bytes[..n], &model[off as usize..off as usize + n]);
        }
        assert_eq!(target.stat(9).expect("stat").size_bytes, model.len() as u64);
    }
}

#[test]
fn overlapping_unaligned_writes_in_one_batch_lose_nothing() {
    let (_dir, target, mut store) = store("overlap", StoreConfig::default());
    target.create(4).expect("create");
    // Many small writes into the same two blocks, each overlapping its neighbours: the
    // later write wins in an overlap, and every byte outside an overlap survives.
    let mut model = vec![0u8; 8192];
    let mut bufs: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut rng = Rng(5);
    for i in 0..200u64 {
        let off = rng.below(8000);
        let len = 1 + rng.below(300) as usize;
        let len = len.min(8192 - off as usize);
        let bytes = vec![(i % 251) as u8 + 1; len];
        model[off as usize..off as usize + len].copy_from_slice(&bytes);
        bufs.push((off, bytes));
    }
    let mut ops: Vec<BatchOp<'_>> = bufs
        .iter()
        .map(|(off, bytes)| BatchOp::Write {
            object_id: 4,
            offset_bytes: *off,
            buf: bytes,
        })
        .collect();
    for result in store.batch_slice(&mut ops).expect("batch") {
        result.expect("write");
    }
    let size = bufs
        .iter()
        .map(|(o, b)| *o as usize + b.len())
        .max()
        .unwrap_or(0);
    let mut back = vec![0u8; size];
    assert_eq!(store.read(4, 0, &mut back).expect("read"), size);
    assert!(
        back == model[..size],
        "bytes were lost between overlapping writes"
    );
}

#[test]
fn concurrent_extending_writes_keep_every_byte_and_the_exact_size() {
    let (_dir, target, mut store) = store("extend", StoreConfig::default());
    target.create(2).expect("create");
    // Disjoint writes that each extend the object, some ending mid-block, all in flight at once.
    let pieces: Vec<(u64, Vec<u8>)> = (0..64u64)
        .map(|i| (i * 5000, vec![i as u8 + 1; 4999]))
        .collect();
    let mut ops: Vec<BatchOp<'_>> = pieces
        .iter()
        .rev()
        .map(|(off, b)| BatchOp::Write {
            object_id: 2,
            offset_bytes: *off,
            buf: b,
        })
        .collect();
    for r in store.batch_slice(&mut ops).expect("batch") {
        r.expect("write");
    }
    let size = 63 * 5000 + 4999;
    assert_eq!(target.stat(2).expect("stat").size_bytes, size);
    let mut back = vec![0xEEu8; size as usize + 100];
    assert_eq!(store.read(2, 0, &mut back).expect("read"), size as usize);
    for (off, b) in &pieces {
        assert!(back[*off as usize..*off as usize + b.len()] == b[..]);
        if *off > 0 {
            assert_eq!(
                back[*off as usize - 1],
                0,
                "the gap byte before {off} is a hole"
            );
        }
    }
}

#[test]
fn holes_eof_truncate_and_punch() {
    let (_dir, target, mut store) = store("holes", StoreConfig::default());
    target.create(3).expect("create");
    let block = vec![0x5Au8; 64 * 1024];
    store.write(3, 1 << 20, &block).expect("write past a hole");
    let mut back = vec![1u8; 4096];
    assert_eq!(store.read(3, 4096, &mut back).expect("read hole"), 4096);
    assert!(back.iter().all(|&b| b == 0), "a hole reads as zeros");
    let end = (1 << 20) + block.len() as u64;
    let n = store
        .read(3, end - 100, &mut back)
        .expect("read across eof");
    assert_eq!(n, 100, "a read across the end is short");
    assert_eq!(store.read(3, end + 5, &mut back).expect("read past eof"), 0);

    store.punch(3, (1 << 20) + 1000, 10_000).expect("punch");
    let mut all = vec![0u8; block.len()];
    store.read(3, 1 << 20, &mut all).expect("read");
    assert!(all[..1000].iter().all(|&b| b == 0x5A));
    assert!(all[1000..11_000].iter().all(|&b| b == 0));
    assert!(all[11_000..].iter().all(|&b| b == 0x5A));
    assert_eq!(
        target.stat(3).expect("stat").size_bytes,
        end,
        "punch keeps the size"
    );

    store.truncate(3, (1 << 20) + 10).expect("shrink");
    assert_eq!(target.stat(3).expect("stat").size_bytes, (1 << 20) + 10);
    assert_eq!(store.read(3, 1 << 20, &mut all).expect("read"), 10);
    store.truncate(3, 3 << 20).expect("grow");
    assert_eq!(store.read(3, (1 << 20) + 8, &mut back).expect("read"), 4096);
    assert_eq!(&back[..2], &[0x5A, 0x5A]);
    assert!(
        back[2..].iter().all(|&b| b == 0),
        "grown space reads as zeros"
    );
    // A write after a shrink lands at the right size.
    store.write(3, 10, b"abc").expect("small write");
    assert_eq!(target.stat(3).expect("stat").size_bytes, 3 << 20);
    store.sync(3).expect("sync");
}

#[test]
fn more_objects_than_open_slots() {
    let config = StoreConfig {
        open_objects: 3,
        ..StoreConfig::default()
    };
    let (_dir, target, mut store) = store("evict", config);
    for id in 0..20u64 {
        target.create(id).expect("create");
    }
    let bufs: Vec<Vec<u8>> = (0..20u64)
        .map(|id| vec![id as u8; 8192 + id as usize])
        .collect();
    let mut ops: Vec<BatchOp<'_>> = bufs
        .iter()
        .enumerate()
        .map(|(id, b)| BatchOp::Write {
            object_id: id as u64,
            offset_bytes: 100,
            buf: b,
        })
        .collect();
    for r in store.batch_slice(&mut ops).expect("batch") {
        r.expect("write");
    }
    for (id, b) in bufs.iter().enumerate() {
        let mut back = vec![0u8; b.len()];
        store.read(id as u64, 100, &mut back).expect("read");
        assert!(back == *b, "object {id}");
    }
}

#[test]
fn async_submit_and_wait_return_every_tag() {
    let config = StoreConfig {
        queue_depth: 8,
        ..StoreConfig::default()
    };
    let (_dir, target, mut store) = store("async", config);
    target.create(1).expect("create");
    let mut bufs: Vec<AlignedBuf> = (0..64)
        .map(|_| AlignedBuf::zeroed(16 * 1024).expect("buffer"))
        .collect();
    for (i, b) in bufs.iter_mut().enumerate() {
        b.fill(i as u8);
    }
    for (i, b) in bufs.iter().enumerate() {
        let op = Op::Write {
            object_id: 1,
            offset_bytes: i as u64 * 16 * 1024,
            buf: b.as_ptr(),
            len: b.len(),
        };
        // SAFETY: bufs outlive the completions, which are all reaped below.
        unsafe { store.submit(op, 1000 + i as u64) }.expect("submit");
    }
    let mut out: Vec<Completion> = Vec::new();
    while out.len() < 64 {
        let n = store.wait(64 - out.len(), WAIT, &mut out).expect("wait");
        assert!(n > 0, "wait returned nothing with operations outstanding");
    }
    let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (1000..1064).collect::<Vec<_>>());
    assert!(out.iter().all(|c| matches!(c.result, Ok(16384))));
    assert_eq!(store.outstanding(), 0);
    let mut none = Vec::new();
    assert_eq!(store.poll(&mut none).expect("poll"), 0);
    let mut back = vec![0u8; 64 * 16 * 1024];
    for (i, chunk) in back.chunks_mut(MAX_IO_BYTES as usize).enumerate() {
        store
            .read(1, (i * MAX_IO_BYTES as usize) as u64, chunk)
            .expect("read");
    }
    for (i, chunk) in back.chunks(16 * 1024).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8), "chunk {i}");
    }
}

#[test]
fn errors_name_the_object_and_the_operation() {
    let (_dir, target, mut store) = store("errors", StoreConfig::default());
    let mut buf = vec![0u8; 10];
    let err = store.read(0xdead, 0, &mut buf).expect_err("missing object");
    assert!(
        matches!(
            err,
            IoError::NoSuchObject {
                object_id: 0xdead,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.to_string(), "read of object 0xdead: no such object");
    let err = store.write(0xbeef, 0, b"x").expect_err("missing object");
    assert_eq!(err.errno(), libc::ENOENT);
    assert!(
        err.to_string().starts_with("write of object 0xbeef"),
        "{err}"
    );

    target.create(1).expect("create");
    let err = store.read(1, 0, &mut []).expect_err("empty read");
    assert!(err.to_string().contains("len = 0"), "{err}");
    let big = vec![0u8; MAX_IO_BYTES as usize + 1];
    let err = store.write(1, 0, &big).expect_err("too big");
    assert!(
        matches!(err, IoError::InvalidArgument { field: "len", .. }),
        "{err}"
    );
    let err = store
        .write(1, u64::MAX - 2, b"abc")
        .expect_err("offset overflow");
    assert!(
        matches!(
            err,
            IoError::InvalidArgument {
                field: "offset_bytes",
                ..
            }
        ),
        "{err}"
    );
    // SAFETY: (test) a sync lends no memory; it is refused before anything is queued.
    let err = unsafe { store.submit(Op::Sync { object_id: 1 }, nacre_io::RESERVED_TAG_BIT | 1) }
        .expect_err("reserved tag");
    assert!(err.to_string().contains("tag"), "{err}");
    let bad = StoreConfig {
        queue_depth: 1,
        ..StoreConfig::default()
    };
    let err = nacre_io::ObjectStore::new(&target, bad)
        .err()
        .expect("depth 1 refused");
    assert!(err.to_string().contains("queue_depth = 1"), "{err}");
    // The store still works after all of that.
    store.write(1, 3, b"still fine").expect("write");
}

#[test]
fn enospc_comes_back_with_the_object() {
    // A small tmpfs gives a real ENOSPC; mounting needs privileges, so say so when it can't.
    let dir = common::TempDir::new("enospc");
    let mnt = dir.path().join("mnt");
    let Some(_mounted) = common::mount("tmpfs", Some("size=1m"), &mnt) else {
        eprintln!("SKIPPED enospc_comes_back_with_the_object: cannot mount a tmpfs here");
        return;
    };
    let tdir = mnt.join("t");
    match nacre_io::Target::format(&tdir, 1) {
        Ok(_) => {}
        // tmpfs has O_DIRECT from Linux 6.6 only.
        Err(IoError::NoDirectIo { .. }) => {
            eprintln!("SKIPPED enospc_comes_back_with_the_object: this tmpfs refuses O_DIRECT");
            return;
        }
        Err(e) => panic!("format: {e}"),
    }
    let target = nacre_io::Target::open(&tdir).expect("open");
    let mut store = nacre_io::ObjectStore::new(&target, StoreConfig::default()).expect("store");
    target.create(0x77).expect("create");
    let chunk = AlignedBuf::zeroed(256 * 1024).expect("buffer");
    let mut err = None;
    for i in 0..16u64 {
        if let Err(e) = store.write(0x77, i * chunk.len() as u64, &chunk) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 1 MiB file system fills up");
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    assert!(err.to_string().starts_with("write of object 0x77"), "{err}");
    drop(store);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any batch of reads and writes, aligned or not, leaves the object as a model says.
    #[test]
    fn batches_match_a_model(seed in any::<u64>(), rounds in 1usize..6, offload_issue in any::<bool>()) {
        let config = StoreConfig { queue_depth: 16, bounce_buffers: 2, offload_issue, ..StoreConfig::default() };
        let (_dir, target, mut store) = store("prop", config);
        target.create(1).expect("create");
        let mut rng = Rng(seed | 1);
        let mut model: Vec<u8> = Vec::new();
        for _ in 0..rounds {
            let writes: Vec<(u64, Vec<u8>)> = (0..1 + rng.below(40))
                .map(|_| {
                    let aligned = rng.below(2) == 0;
                    let (off, len) = if aligned {
                        (rng.below(64) * 4096, (1 + rng.below(8)) as usize * 4096)
                    } else {
                        (rng.below(300_000), 1 + rng.below(30_000) as usize)
                    };
                    let mut b = vec![0u8; len];
                    rng.fill(&mut b);
                    (off, b)
                })
                .collect();
            // Non-overlapping writes may complete in any order; overlapping ones in order.
            for (off, b) in &writes {
                let end = *off as usize + b.len();
                if model.len() < end { model.resize(end, 0); }
                model[*off as usize..end].copy_from_slice(b);
            }
            let mut ops: Vec<BatchOp<'_>> = writes.iter().map(|(o, b)| BatchOp::Write { object_id: 1, offset_bytes: *o, buf: b }).collect();
            for r in store.batch_slice(&mut ops).expect("batch") { r.expect("write"); }
            prop_assert_eq!(target.stat(1).expect("stat").size_bytes, model.len() as u64);
            let mut back = vec![0u8; model.len()];
            for (i, chunk) in back.chunks_mut(MAX_IO_BYTES as usize).enumerate() {
                store.read(1, (i * MAX_IO_BYTES as usize) as u64, chunk).expect("read");
            }
            prop_assert!(back == model);
        }
    }
}

/// Every queue depth from the smallest to the largest, with more operations in flight than
/// the ring holds and than any internal batch of the store: writes and reads of distinct
/// blocks (aligned, so each goes straight to the kernel; every 7th unaligned, through a
/// bounce buffer), all submitted before any is waited for. Each completes once, with its
/// own tag and bytes, and the store's accounts balance after.
#[test]
fn every_queue_depth_completes_every_operation_once() {
    for depth in [2u32, 3, 63, 64, 65, 127, 128, 129, 1024, 4096] {
        let ops = (2 * depth as usize + 7).min(4096);
        let config = StoreConfig {
            queue_depth: depth,
            max_ops: ops as u32,
            ..StoreConfig::default()
        };
        let (_dir, target, mut store) = store("depths", config);
        target.create(1).expect("create");
        let block = 4096;
        let mut src = AlignedBuf::zeroed(ops * block).expect("buffer");
        Rng(u64::from(depth)).fill(&mut src);
        let (src_ptr, src_len) = (src.as_ptr(), src.len());
        assert_eq!(src_len, ops * block);
        let len_of = |i: usize| if i % 7 == 3 { block - 1 } else { block };
        for i in 0..ops {
            let op = Op::Write {
                object_id: 1,
                offset_bytes: (i * block) as u64,
                // SAFETY: (test) inside `src`, which outlives every op (all reaped below).
                buf: unsafe { src_ptr.add(i * block) },
                len: len_of(i),
            };
            // SAFETY: as above.
            unsafe { store.submit(op, i as u64) }.expect("submit write");
        }
        let mut out: Vec<Completion> = Vec::new();
        while out.len() < ops {
            let n = store.wait(ops - out.len(), WAIT, &mut out).expect("wait");
            assert!(
                n > 0,
                "depth {depth}: nothing completed with {} left",
                ops - out.len()
            );
        }
        let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (0..ops as u64).collect::<Vec<_>>(), "depth {depth}");
        for c in &out {
            assert_eq!(
                c.result.as_ref().ok(),
                Some(&(len_of(c.tag as usize) as u64))
            );
        }
        let mut back = AlignedBuf::zeroed(ops * block).expect("buffer");
        let back_ptr = back.as_mut_ptr();
        for i in 0..ops {
            let op = Op::Read {
                object_id: 1,
                offset_bytes: (i * block) as u64,
                // SAFETY: (test) inside `back`, which outlives every op (all reaped below).
                buf: unsafe { back_ptr.add(i * block) },
                len: len_of(i),
            };
            // SAFETY: as above.
            unsafe { store.submit(op, (ops + i) as u64) }.expect("submit read");
        }
        out.clear();
        while out.len() < ops {
            let n = store.wait(ops - out.len(), WAIT, &mut out).expect("wait");
            assert!(n > 0, "depth {depth}: no read completed");
        }
        assert!(out.iter().all(|c| c.result.is_ok()), "depth {depth}");
        for i in 0..ops {
            let at = i * block;
            assert!(
                back[at..at + len_of(i)] == src[at..at + len_of(i)],
                "depth {depth}: block {i} differs"
            );
        }
        let accounts = store.check_accounts().expect("accounts balance");
        assert_eq!(accounts.in_flight, 0);
        assert_eq!(accounts.accepted, 2 * ops as u64);
    }
}
