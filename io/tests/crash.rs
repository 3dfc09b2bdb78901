//! Crash test: a child process writes, syncs and reports what it synced, then is killed with
//! SIGKILL while it writes more. After reopening the target, every synced byte is there.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Rng, TempDir};
use nacre_io::{AlignedBuf, ObjectStore, StoreConfig, Target};

const CHILD_ENV: &str = "NACRE_IO_CRASH_CHILD_DIR";
const ROUND_BYTES: usize = 256 * 1024;
/// Rounds the parent waits to see synced before it kills the child.
const SYNCED_ROUNDS_BEFORE_KILL: u64 = 12;
/// The child stops by itself after this many rounds, should the parent be gone.
const CHILD_MAX_ROUNDS: u64 = 100_000;
const OBJECTS: u64 = 3;

/// The bytes of round `round` (deterministic, so the parent can check them).
fn round_bytes(round: u64) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(ROUND_BYTES).expect("buffer");
    Rng(round.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).fill(&mut buf);
    buf
}

/// Where round `round` goes: objects in turn, with an unaligned offset every third round.
fn round_place(round: u64) -> (u64, u64) {
    let object = round % OBJECTS;
    let slot = round / OBJECTS;
    let skew = if round % 3 == 2 { 1234 } else { 0 };
    (object, slot * (ROUND_BYTES as u64 + 8192) + skew)
}

fn child(dir: &Path) {
    let target = Target::open(dir).expect("child open");
    let mut store = ObjectStore::new(&target, StoreConfig::default()).expect("child store");
    for round in 0..CHILD_MAX_ROUNDS {
        let (object, offset) = round_place(round);
        store
            .write(object, offset, &round_bytes(round))
            .expect("child write");
        // Sync every other round: the unsynced rounds are the ones in flight at the kill.
        if round % 2 == 1 {
            for o in 0..OBJECTS {
                store.sync(o).expect("child sync");
            }
            println!("synced {round}");
        }
    }
}

#[test]
fn synced_bytes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let tmp = TempDir::new("crash");
    let dir = tmp.path().join("t");
    Target::format(&dir, 1).expect("format");
    let target = Target::open(&dir).expect("open");
    for o in 0..OBJECTS {
        target.create(o).expect("create");
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "synced_bytes_survive_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut last_synced = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        if let Some(n) = line.strip_prefix("synced ") {
            let n: u64 = n.trim().parse().expect("round number");
            last_synced = Some(n);
            if n >= SYNCED_ROUNDS_BEFORE_KILL * 2 {
                break;
            }
        }
    }
    // SIGKILL while the child is writing its next rounds.
    child.kill().expect("kill child");
    let status = child.wait().expect("reap child");
    assert!(!status.success(), "the child was killed, not finished");
    let last_synced = last_synced.expect("the child reported synced rounds");

    let target = Target::open(&dir).expect("reopen after kill");
    let mut store = ObjectStore::new(&target, StoreConfig::default()).expect("store");
    let mut back = AlignedBuf::zeroed(ROUND_BYTES).expect("buffer");
    for round in 0..=last_synced {
        let (object, offset) = round_place(round);
        let n = store.read(object, offset, &mut back).expect("read back");
        assert_eq!(n, ROUND_BYTES, "round {round} is short");
        assert!(
            back[..] == round_bytes(round)[..],
            "round {round} lost bytes"
        );
    }
}

const SIZE_CHILD_ENV: &str = "NACRE_IO_CRASH_SIZE_CHILD";
/// Rounds of the size test: each a fresh object, a child killed at a random operation.
const SIZE_ROUNDS: u64 = 25;
/// Operations a child of the size test does at most (the parent kills it before).
const SIZE_CHILD_OPS: usize = 400;

/// An operation of the size test's children, drawn from a seeded stream so that the parent
/// can replay what the child did.
#[derive(Debug, Clone, Copy)]
enum SizeOp {
    Write { offset: u64, len: usize, seed: u64 },
    Truncate { size: u64 },
    Sync,
}

/// The `i`th operation on an object of `size` bytes: mostly small unaligned appends and
/// writes that extend the object past a hole, some overwrites, truncates that shrink and
/// grow, syncs.
fn size_op(rng: &mut Rng, i: usize, size: u64) -> SizeOp {
    let seed = (i as u64) << 32 | rng.below(1 << 32);
    match rng.below(100) {
        0..45 => SizeOp::Write {
            offset: size,
            len: 1 + rng.below(3000) as usize,
            seed,
        },
        45..65 => SizeOp::Write {
            offset: size + rng.below(20_000),
            len: 1 + rng.below(20_000) as usize,
            seed,
        },
        65..80 => SizeOp::Write {
            offset: rng.below(size + 1),
            len: 1 + rng.below(10_000) as usize,
            seed,
        },
        80..95 => SizeOp::Truncate {
            size: rng.below(size + 8192),
        },
        _ => SizeOp::Sync,
    }
}

fn write_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    Rng(seed | 1).fill(&mut bytes);
    bytes
}

/// Applies `op` to the model of the object's bytes.
fn apply(model: &mut Vec<u8>, op: SizeOp) {
    match op {
        SizeOp::Write { offset, len, seed } => {
            let end = offset as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[offset as usize..end].copy_from_slice(&write_bytes(seed, len));
        }
        SizeOp::Truncate { size } => model.resize(size as usize, 0),
        SizeOp::Sync => {}
    }
}

/// The operations of round `round`'s child, with the model after each.
fn size_ops(round: u64) -> Vec<(SizeOp, Vec<u8>)> {
    let mut rng = Rng(round.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let mut model = Vec::new();
    (0..SIZE_CHILD_OPS)
        .map(|i| {
            let op = size_op(&mut rng, i, model.len() as u64);
            apply(&mut model, op);
            (op, model.clone())
        })
        .collect()
}

fn size_child(dir: &Path, round: u64) {
    let target = Target::open(dir).expect("child open");
    let mut store = ObjectStore::new(&target, StoreConfig::default()).expect("child store");
    for (i, (op, _)) in size_ops(round).into_iter().enumerate() {
        match op {
            SizeOp::Write { offset, len, seed } => store
                .write(round, offset, &write_bytes(seed, len))
                .expect("child write"),
            SizeOp::Truncate { size } => store.truncate(round, size).expect("child truncate"),
            SizeOp::Sync => store.sync(round).expect("child sync"),
        }
        println!("done {i}");
    }
}

/// A store killed (SIGKILL) at a random moment of small unaligned appends, writes that
/// extend the object past holes, overwrites and truncates leaves the object as the last
/// acknowledged operation left it, or with the one in flight applied (in part, for a
/// write): its size never passes the end of anything written. Before, an extending
/// unaligned write wrote its whole last block and trimmed the object back after; a kill in
/// between left it longer than any write (35,000,320 bytes after writes ending at
/// 35,000,105).
#[test]
fn a_kill_never_leaves_an_object_longer_than_its_writes() {
    if let Ok(spec) = std::env::var(SIZE_CHILD_ENV) {
        let (dir, round) = spec.split_once('|').expect("dir|round");
        size_child(Path::new(dir), round.parse().expect("round"));
        return;
    }
    let tmp = TempDir::new("crash-size");
    let dir = tmp.path().join("t");
    Target::format(&dir, 1).expect("format");
    let target = Target::open(&dir).expect("open");
    let exe = std::env::current_exe().expect("test binary");
    let mut kills = Rng(0x5EED_C0FF_EE00_0001);
    for round in 0..SIZE_ROUNDS {
        target.create(round).expect("create");
        let kill_after = kills.below(SIZE_CHILD_OPS as u64 - 50) as usize;
        let mut child = Command::new(&exe)
            .args([
                "a_kill_never_leaves_an_object_longer_than_its_writes",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SIZE_CHILD_ENV, format!("{}|{round}", dir.display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().expect("child stdout")).lines();
        let mut last_done: Option<usize> = None;
        for line in lines.by_ref() {
            let line = line.expect("read child output");
            if let Some(n) = line.strip_prefix("done ") {
                last_done = Some(n.trim().parse().expect("op number"));
                if last_done == Some(kill_after) {
                    break;
                }
            }
        }
        child.kill().expect("kill child");
        // What the child printed before it died tells the last operation it finished.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("done ") {
                last_done = Some(n.trim().parse().expect("op number"));
            }
        }
        child.wait().expect("reap child");
        let ops = size_ops(round);
        let before: &[u8] = last_done.map_or(&[], |k| &ops[k].1);
        let next = last_done.map_or(0, |k| k + 1);
        let after: &[u8] = ops.get(next).map_or(before, |(_, m)| m);
        let on_disk = std::fs::read(target.object_path(round)).expect("read the object");
        let (low, high) = (before.len().min(after.len()), before.len().max(after.len()));
        let in_flight = ops.get(next).map(|(op, _)| *op);
        assert!(
            (low..=high).contains(&on_disk.len()),
            "round {round}: the object is {} bytes; the last acknowledged operation ({last_done:?}) left {}, the one in flight ({in_flight:?}) {}",
            on_disk.len(),
            before.len(),
            after.len()
        );
        for (at, &byte) in on_disk.iter().enumerate() {
            let old = before.get(at).copied().unwrap_or(0);
            let new = after.get(at).copied().unwrap_or(0);
            assert!(
                byte == old || byte == new,
                "round {round}: byte {at} is {byte}, neither {old} (after operation {last_done:?}) nor {new} (after {in_flight:?})"
            );
        }
    }
}
