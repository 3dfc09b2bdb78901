//! The legal space, swept: every layout geometry of [`common::geometries`] (stripes from 64
//! KiB to 16 MiB, 1 to every target, overstriping, composite layouts) with transfers from 1
//! byte to 64 MiB, chosen so that one request puts from 1 to more than a store's depth of
//! pieces on one target, each written, read back and checked against a model; then the same
//! on a server whose stores hold only a few operations. A store that lost a completion made
//! the 64 KiB-stripe rows time out (issue 20).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Bytes, Cluster, Model, geometries};
use nacre::File;
use nacre::io::StoreConfig;
use nacre::layout::Layout;

const K: u64 = 1024;
const M: u64 = 1024 * K;
/// The largest transfer: one request's payload bound (`NACRE_SWEEP_MAX_BYTES` lowers it:
/// scripts/kernel-test.sh runs the sweep under an emulated CPU).
const MAX_TRANSFER_BYTES: u64 = 64 * M;

fn max_transfer_bytes() -> u64 {
    common::env_number("NACRE_SWEEP_MAX_BYTES", MAX_TRANSFER_BYTES).clamp(M, MAX_TRANSFER_BYTES)
}

/// Pieces one request puts on one target: 1, around the io crate's 64-completion batch and a
/// store's default depth of 128, and past a store's default bound of 1024 operations.
const PIECES_PER_TARGET: [u64; 8] = [1, 2, 63, 64, 65, 128, 129, 1025];

/// The (offset, length) transfers of a geometry whose first component stripes `count` wide
/// in `size`-byte stripes: edges (a byte, across a block, a stripe, a row), a range that
/// starts and ends mid-stripe, and aligned runs of each count of [`PIECES_PER_TARGET`] per
/// target, up to [`MAX_TRANSFER_BYTES`] (or `NACRE_SWEEP_MAX_BYTES`).
fn transfers(size: u64, count: u64) -> Vec<(u64, u64)> {
    let row = size * count;
    let mut out = vec![
        (0, 1),
        (4095, 2),
        (size - 1, 2),
        (row - 7, 14),
        (size / 2 + 3, row + 1000),
        (1, 4096),
    ];
    for pieces in PIECES_PER_TARGET {
        let len = (pieces * row).min(max_transfer_bytes());
        if !out.iter().any(|&(o, l)| o == 0 && l == len) {
            out.push((0, len));
        }
    }
    out
}

/// Writes each transfer of `file`'s geometry at its place, reads it back, reads across the
/// end of the file, and checks the size: all against a model.
fn sweep_file(name: &str, file: &File, bytes: &Bytes) {
    let layout: &Layout = file.layout();
    let first = &layout.components()[0].stripe;
    let (size, count) = (first.stripe_size_bytes(), u64::from(first.stripe_count()));
    let mut model = Model::default();
    for (i, (offset, len)) in transfers(size, count).into_iter().enumerate() {
        let what = format!("{name}: {len} bytes at {offset}");
        let data = bytes.make(len as usize, i as u64, offset);
        assert_eq!(file.write_at(&data, offset).unwrap(), data.len(), "{what}");
        model.write(offset, &data);
        let mut back = vec![0xa5u8; len as usize];
        let n = file
            .read_at(&mut back, offset)
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        model.check_read(offset, &back, n, &what);
        assert_eq!(file.size().unwrap(), model.size(), "{what}: size");
    }
    // Across the end of the file: short, with zeros after.
    let end = model.size();
    let mut back = vec![0xa5u8; (2 * size).min(8 * M) as usize];
    let from = end.saturating_sub(size / 2 + 1);
    let n = file.read_at(&mut back, from).unwrap();
    model.check_read(from, &back, n, &format!("{name}: across the end"));
}

#[test]
fn every_geometry_and_transfer_size_round_trips() {
    let cluster = Cluster::start("sweep", 4);
    let client = cluster.client();
    let bytes = Bytes::new(common::seed("every_geometry_and_transfer_size_round_trips"));
    for (i, (name, spec)) in geometries().into_iter().enumerate() {
        let path = format!("/sweep-{i}");
        let file = client.create(&path, 0o644, Some(spec)).unwrap();
        sweep_file(&name, &file, &bytes);
        drop(file);
        client.unlink(&path).unwrap();
    }
}

/// Stripes wider than one request's payload bound (64 MiB): 128 MiB and the largest legal,
/// 4 GiB. A transfer of more than the bound inside one stripe is cut into several requests
/// to the one object, through blocking calls and through a queue; before, the write was
/// refused as over the wire's limits and the read by the target (issue 22's planner).
#[test]
fn stripes_wider_than_a_request_are_cut_into_requests() {
    if max_transfer_bytes() < MAX_TRANSFER_BYTES {
        // An emulated CPU (scripts/kernel-test.sh) lowers the transfers below the bound this
        // test is about; the layout crate's plan tests cover the cutting there.
        eprintln!("SKIPPED stripes wider than a request: NACRE_SWEEP_MAX_BYTES is lower");
        return;
    }
    let cluster = Cluster::start("sweep-wide", 2);
    let client = cluster.client();
    let bytes = Bytes::new(common::seed(
        "stripes_wider_than_a_request_are_cut_into_requests",
    ));
    for (count, size) in [(1, 128 * M), (2, 4096 * M)] {
        let path = format!("/wide-{count}");
        let file = client
            .create(&path, 0o644, Some(common::stripes(count, size)))
            .unwrap();
        // Each transfer is read back right after it is written, so it reads what it wrote
        // (a model of a file 4 GiB long would be 4 GiB of memory).
        let round_trip = |offset: u64, data: Vec<u8>, what: &str| {
            let queue = client.queue(2).unwrap();
            let len = data.len();
            let mut back = if what.contains("queue") {
                queue.submit_write(&file, data.clone(), offset, 1).unwrap();
                let done = queue.wait(1, std::time::Duration::from_secs(60));
                assert_eq!(done.len(), 1, "{what}: the write completed");
                assert_eq!(*done[0].result.as_ref().unwrap(), len as u64, "{what}");
                queue
                    .submit_read(&file, vec![0xa5u8; len], offset, 2)
                    .unwrap();
                let mut done = queue.wait(1, std::time::Duration::from_secs(60));
                assert_eq!(done.len(), 1, "{what}: the read completed");
                let read = done.pop().unwrap();
                assert_eq!(*read.result.as_ref().unwrap(), len as u64, "{what}");
                read.buffer.unwrap()
            } else {
                assert_eq!(file.write_at(&data, offset).unwrap(), len, "{what}");
                let mut back = vec![0xa5u8; len];
                let n = file
                    .read_at(&mut back, offset)
                    .unwrap_or_else(|e| panic!("{what}: read: {e}"));
                assert_eq!(n, len, "{what}: short read");
                back
            };
            if let Some(at) = back.iter().zip(&data).position(|(b, d)| b != d) {
                back.truncate(at + 16);
                panic!("{what}: byte {at} differs: {:?}", &back[at..]);
            }
        };
        // Inside the first stripe; unaligned and just past the bound; across the first
        // stripe's end (into the next object, or the next row of the one); a queue's.
        let transfers = [
            (0, 80 * M, "blocking"),
            (3, 64 * M + 5, "blocking"),
            (size - 70 * M, 140 * M, "blocking"),
            (5 * M + 1, 80 * M, "queue"),
        ];
        for (i, (offset, len, how)) in transfers.into_iter().enumerate() {
            let what = format!("{count} x {size}: {how} {len} bytes at {offset}");
            round_trip(offset, bytes.make(len as usize, i as u64, offset), &what);
        }
        // The transfer across the first stripe's end ends last.
        assert_eq!(
            file.size().unwrap(),
            size + 70 * M,
            "{count} x {size}: size"
        );
        drop(file);
        client.unlink(&path).unwrap();
    }
}

/// Stores that hold a handful of operations: every request has many more pieces on a
/// target than its store takes at once, so pieces wait for room and go on in order.
#[test]
fn pieces_past_a_small_stores_bound_all_complete() {
    let store = StoreConfig {
        queue_depth: 2,
        max_ops: 3,
        bounce_buffers: 1,
        ..StoreConfig::default()
    };
    let cluster = Cluster::start_shared_with("sweep-small", &[0, 1, 2, 3], store);
    let client = cluster.client();
    let bytes = Bytes::new(common::seed(
        "pieces_past_a_small_stores_bound_all_complete",
    ));
    for (i, (name, spec)) in geometries().into_iter().enumerate().step_by(3) {
        let path = format!("/small-{i}");
        let file = client.create(&path, 0o644, Some(spec)).unwrap();
        sweep_file(&name, &file, &bytes);
    }
}

/// Past the legal space: a range or a size beyond off_t's largest is refused by the client
/// with EINVAL naming it, through blocking calls and a queue; beyond what a target's file
/// system holds (ext4: 16 TiB per object) the target's EFBIG names the object; the file is
/// left as it was. Before, a truncate to `u64::MAX` came back as a target's complaint about
/// an extent list.
#[test]
fn ranges_past_the_largest_file_are_refused_by_name() {
    let cluster = Cluster::start("sweep-edge", 2);
    let client = cluster.client();
    let file = client
        .create("/edge", 0o644, Some(common::stripes(1, M)))
        .unwrap();
    let max = nacre::limits::MAX_FILE_BYTES;
    let refused = |e: nacre::Error, what: &str, field: &str| {
        assert_eq!(e.errno(), libc::EINVAL, "{what}: {e}");
        assert!(e.to_string().contains(field), "{what}: {e}");
        assert!(e.to_string().contains("2^63 - 1"), "{what}: {e}");
    };
    for offset in [max, max - 3, u64::MAX - 10] {
        let what = format!("8 bytes at {offset}");
        refused(
            file.write_at(&[7u8; 8], offset).unwrap_err(),
            &what,
            "range",
        );
        let mut back = [0u8; 8];
        refused(file.read_at(&mut back, offset).unwrap_err(), &what, "range");
        let queue = client.queue(1).unwrap();
        let failed = match queue.submit_write(&file, vec![7u8; 8], offset, 1) {
            Err(refused) => refused.error,
            Ok(()) => {
                let mut done = queue.wait(1, std::time::Duration::from_secs(30));
                assert_eq!(done.len(), 1, "{what}: the queue's write completed");
                done.pop().unwrap().result.unwrap_err()
            }
        };
        refused(failed, &format!("queued {what}"), "range");
    }
    refused(file.truncate(u64::MAX).unwrap_err(), "truncate", "size");
    refused(file.truncate(max + 1).unwrap_err(), "truncate", "size");
    // Legal for Nacre, too large for the target's file system: its error, named.
    let e = file.write_at(b"x", 1 << 50).unwrap_err();
    assert_eq!(e.errno(), libc::EFBIG, "{e}");
    assert!(e.to_string().contains("object"), "{e}");
    let e = file.truncate(1 << 62).unwrap_err();
    assert_eq!(e.errno(), libc::EFBIG, "{e}");
    assert_eq!(file.size().unwrap(), 0, "the file was left as it was");
    // Zero bytes anywhere are nothing to refuse.
    assert_eq!(file.write_at(&[], u64::MAX).unwrap(), 0);
}
