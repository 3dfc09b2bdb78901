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
    let mut buf = AlignedBuf::zeroed(ROUND_BYTES);
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
    let mut back = AlignedBuf::zeroed(ROUND_BYTES);
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
