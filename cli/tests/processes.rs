//! The file system as separate processes: the metadata service and the targets each run as
//! `nacre serve`, clients are `nacre` commands, this test process, or copies of it. Covers
//! what only real processes show: the command line end to end, several client processes
//! writing one file, servers killed with SIGKILL and restarted, and hostile input.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Cluster, Process, fill, nacre, pattern, text};
use nacre::layout::StripeSpec;
use nacre::meta::link::{MetaLink, link_options};
use nacre::meta::proto::MetaRequest;
use nacre::meta::types::{Cred, LayoutSpec, TargetInfo};
use nacre::{Client, ClientOptions, OpenOptions};

/// What fault tests give a client for connecting and for each request.
const FAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Beyond this a call that should have failed by its timeout counts as hung (a hang
/// detector, far above any timeout in play, not a measure of speed).
const HANG_DEADLINE: Duration = Duration::from_secs(120);

fn stripes(count: i32, size_bytes: u64) -> LayoutSpec {
    LayoutSpec::plain(StripeSpec {
        stripe_count: count,
        stripe_size_bytes: size_bytes,
        ..StripeSpec::default()
    })
}

/// One stripe, on target `target_id`.
fn on_target(target_id: u32) -> LayoutSpec {
    LayoutSpec::plain(StripeSpec {
        stripe_count: 1,
        stripe_index: i64::from(target_id),
        ..StripeSpec::default()
    })
}

fn options_with_timeout(timeout: Duration) -> ClientOptions {
    ClientOptions {
        timeout,
        ..ClientOptions::default()
    }
}

/// Writes `bytes` to a new local file `name` in the cluster's directory; returns its path.
fn local_file(cluster: &Cluster, name: &str, bytes: &[u8]) -> String {
    let path = cluster.dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// `nacre get PATH -`: the file's bytes.
fn get_bytes(cluster: &Cluster, path: &str) -> Vec<u8> {
    let out = cluster.nacre(&["get", path, "-"]);
    assert!(out.status.success(), "get {path}: {}", text(&out.stderr));
    out.stdout
}

/// The target ids `getstripe` lists under each `obdidx`, in order.
fn obdidx(getstripe: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut in_list = false;
    for line in getstripe.lines() {
        let word = line.trim();
        if word == "obdidx" {
            in_list = true;
        } else if let (true, Ok(id)) = (in_list, word.parse::<u32>()) {
            ids.push(id);
        } else {
            in_list = false;
        }
    }
    ids
}

/// Waits for the first byte or the end of `stream`: true when the peer closed it.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(HANG_DEADLINE)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

#[test]
fn cli_namespace_round_trips() {
    let cluster = Cluster::start("cli-ns", 2);
    cluster.ok(&["mkdir", "-p", "/a/b/c"]);
    // -p again accepts what exists.
    cluster.ok(&["mkdir", "-p", "/a/b/c"]);
    assert!(cluster.fails(&["mkdir", "/a/b"]).contains("/a/b"));

    let bytes = fill(1, 0, 300_000);
    let local = local_file(&cluster, "f.local", &bytes);
    cluster.ok(&["put", &local, "/a/b/f"]);
    let back = cluster.dir().join("f.back");
    cluster.ok(&["get", "/a/b/f", back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == bytes,
        "get to a file differs"
    );
    assert!(
        get_bytes(&cluster, "/a/b/f") == bytes,
        "get to stdout differs"
    );

    assert_eq!(cluster.ok(&["ls", "/a/b"]), "c\nf\n");
    let long = cluster.ok(&["ls", "-l", "/a/b"]);
    let lines: Vec<Vec<&str>> = long
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{long}");
    assert_eq!(lines[0][0], "drwxr-xr-x", "{long}");
    assert_eq!(lines[0][4], "c", "{long}");
    assert_eq!(lines[1], ["-rw-r--r--", "0", "0", "300000", "f"], "{long}");

    let stat = cluster.ok(&["stat", "/a/b/f"]);
    assert!(stat.contains("File: /a/b/f"), "{stat}");
    assert!(stat.contains("Size: 300000 "), "{stat}");
    assert!(stat.contains("regular file"), "{stat}");
    let stat = cluster.ok(&["stat", "/a/b/c"]);
    assert!(stat.contains("directory"), "{stat}");

    cluster.ok(&["chmod", "600", "/a/b/f"]);
    cluster.ok(&["chown", "12:34", "/a/b/f"]);
    let long = cluster.ok(&["ls", "-l", "/a/b"]);
    assert!(
        long.contains("-rw-------    12    34         300000 f"),
        "{long}"
    );

    // Times, links and touch, as their Unix namesakes.
    cluster.ok(&["touch", "--time", "1700000000000000000", "/a/b/f"]);
    let stat = cluster.ok(&["stat", "/a/b/f"]);
    assert!(stat.contains("Modify: 1700000000000000000 ns"), "{stat}");
    cluster.ok(&["touch", "/a/b/new"]);
    assert!(cluster.ok(&["stat", "/a/b/new"]).contains("Size: 0 "));
    cluster.ok(&["rm", "/a/b/new"]);
    cluster.ok(&["ln", "-s", "f", "/a/b/sym"]);
    let stat = cluster.ok(&["stat", "/a/b/sym"]);
    assert!(
        stat.contains("File: /a/b/sym -> f") && stat.contains("symbolic link"),
        "{stat}"
    );
    assert!(
        cluster
            .ok(&["stat", "-L", "/a/b/sym"])
            .contains("Size: 300000 ")
    );
    assert_eq!(cluster.ok(&["readlink", "/a/b/sym"]), "f\n");
    cluster.ok(&["ln", "/a/b/f", "/a/b/hard"]);
    assert!(cluster.ok(&["stat", "/a/b/f"]).contains("Links: 2"));
    cluster.ok(&["rm", "/a/b/hard"]);
    cluster.ok(&["rm", "/a/b/sym"]);

    cluster.ok(&["mv", "/a/b/f", "/a/moved"]);
    assert_eq!(cluster.ok(&["ls", "/a/b"]), "c\n");
    assert_eq!(cluster.ok(&["ls", "/a"]), "b\nmoved\n");
    assert!(
        get_bytes(&cluster, "/a/moved") == bytes,
        "renamed file differs"
    );
    assert!(cluster.fails(&["stat", "/a/b/f"]).contains("/a/b/f"));

    cluster.ok(&["rm", "/a/moved"]);
    assert!(cluster.fails(&["stat", "/a/moved"]).contains("/a/moved"));
    // A directory needs -d, and must be empty.
    assert!(cluster.fails(&["rm", "/a/b/c"]).contains("/a/b/c"));
    assert!(cluster.fails(&["rm", "-d", "/a/b"]).contains("/a/b"));
    cluster.ok(&["rm", "-d", "/a/b/c"]);
    cluster.ok(&["rm", "-d", "/a/b"]);
    assert_eq!(cluster.ok(&["ls", "/a"]), "");
}

#[test]
fn cli_layouts_set_shown_inherited_and_kept() {
    let cluster = Cluster::start("cli-layout", 3);
    let small = fill(2, 0, 700_000);
    let small_local = local_file(&cluster, "small", &small);

    // A plain layout on a new file.
    cluster.ok(&["setstripe", "-c", "2", "-S", "128K", "/s"]);
    let shown = cluster.ok(&["getstripe", "/s"]);
    assert!(shown.starts_with("/s\n"), "{shown}");
    assert!(shown.contains("lmm_stripe_count:  2\n"), "{shown}");
    assert!(shown.contains("lmm_stripe_size:   131072\n"), "{shown}");
    assert!(shown.contains("lmm_pattern:       raid0\n"), "{shown}");
    let targets = obdidx(&shown);
    assert_eq!(targets.len(), 2, "{shown}");
    assert_ne!(targets[0], targets[1], "{shown}");
    // A file's layout is set once: setstripe on it again is refused...
    assert!(
        cluster
            .fails(&["setstripe", "-c", "1", "/s"])
            .contains("exists")
    );
    // ...and put on it truncates and rewrites it with its layout kept.
    cluster.ok(&["put", &small_local, "/s"]);
    assert_eq!(cluster.ok(&["getstripe", "/s"]), shown);
    assert!(get_bytes(&cluster, "/s") == small);
    let shorter = fill(3, 0, 5_000);
    cluster.ok(&["put", &local_file(&cluster, "shorter", &shorter), "/s"]);
    assert!(get_bytes(&cluster, "/s") == shorter, "put did not truncate");

    // A directory's default, inherited by a file put in it.
    cluster.ok(&["mkdir", "/d"]);
    cluster.ok(&["setstripe", "-c", "3", "-S", "64K", "/d"]);
    let shown = cluster.ok(&["getstripe", "/d"]);
    assert!(
        shown.contains("stripe_count:  3 stripe_size:   65536"),
        "{shown}"
    );
    cluster.ok(&["put", &small_local, "/d/inherits"]);
    let shown = cluster.ok(&["getstripe", "/d/inherits"]);
    assert!(shown.contains("lmm_stripe_count:  3\n"), "{shown}");
    assert!(shown.contains("lmm_stripe_size:   65536\n"), "{shown}");
    assert!(get_bytes(&cluster, "/d/inherits") == small);

    // Every target.
    cluster.ok(&["setstripe", "-c", "-1", "-S", "64K", "/wide"]);
    let shown = cluster.ok(&["getstripe", "/wide"]);
    assert!(shown.contains("lmm_stripe_count:  3\n"), "{shown}");
    let mut targets = obdidx(&shown);
    targets.sort_unstable();
    assert_eq!(targets, [0, 1, 2], "{shown}");
    cluster.ok(&["put", &small_local, "/wide"]);
    assert!(get_bytes(&cluster, "/wide") == small);

    // A composite layout: one stripe for the first MiB, then every target.
    cluster.ok(&[
        "setstripe",
        "-E",
        "1M",
        "-c",
        "1",
        "-E",
        "-1",
        "-c",
        "-1",
        "/pfl",
    ]);
    let three_mib = fill(4, 0, 3 << 20);
    cluster.ok(&["put", &local_file(&cluster, "3m", &three_mib), "/pfl"]);
    let shown = cluster.ok(&["getstripe", "/pfl"]);
    assert!(shown.contains("lcm_entry_count:   2\n"), "{shown}");
    assert!(shown.contains("lcme_extent.e_end:   1048576\n"), "{shown}");
    assert!(shown.contains("lcme_extent.e_end:   EOF\n"), "{shown}");
    assert!(shown.contains("lmm_stripe_count:  1\n"), "{shown}");
    assert!(shown.contains("lmm_stripe_count:  3\n"), "{shown}");
    assert_eq!(obdidx(&shown).len(), 4, "{shown}");
    assert!(
        get_bytes(&cluster, "/pfl") == three_mib,
        "composite file differs"
    );
    let long = cluster.ok(&["ls", "-l", "/"]);
    assert!(
        long.lines()
            .any(|l| l.ends_with(" 3145728 pfl") && l.starts_with('-')),
        "{long}"
    );
}

#[test]
fn cli_df_lists_every_target_with_its_index() {
    let cluster = Cluster::start("cli-df", 3);
    let shown = cluster.ok(&["df"]);
    for i in 0..3 {
        let tag = format!("nacre[OST:{i}] {}", cluster.target_endpoint(i));
        let line = shown
            .lines()
            .find(|l| l.ends_with(&tag))
            .unwrap_or_else(|| panic!("no line for target {i}:\n{shown}"));
        assert!(line.starts_with("nacre-"), "{line}");
        assert!(!line.contains("not answering"), "{line}");
    }
    assert!(shown.contains("filesystem_summary:"), "{shown}");
    let human = cluster.ok(&["df", "-H"]);
    assert_eq!(human.matches("nacre[OST:").count(), 3, "{human}");

    // Output into a pipe nobody reads any more (`nacre df | head -1` once head has gone)
    // ends the command as it ends other Unix tools, by SIGPIPE, and not with a panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut command = Command::new(common::NACRE_BIN);
    command.arg("df").env("NACRE_META", &cluster.meta_addr);
    let out = common::run_to(command, writer.into());
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{}: {stderr}",
        out.status
    );
}

/// `nacre serve` with several `--target`s is one server whose targets share its workers
/// (decision 0015): each registers, `nacre df` lists both, a file striped over both comes
/// back whole, and the process runs the workers asked for, not that many per target.
#[test]
fn one_serve_process_serves_several_targets_with_shared_workers() {
    let cluster = Cluster::start("cli-host", 0);
    let dirs: Vec<String> = (0..2)
        .map(|i| {
            let dir = cluster.target_dir(i);
            let index = i.to_string();
            let out = nacre(&["mkfs", "--index", &index, dir.to_str().unwrap()]);
            assert!(out.status.success(), "mkfs {i}: {}", text(&out.stderr));
            dir.to_str().unwrap().to_string()
        })
        .collect();
    let mut command = Command::new(common::NACRE_BIN);
    command.args([
        "serve",
        "--target",
        &dirs[0],
        "--target",
        &dirs[1],
        "--meta",
        &cluster.meta_addr,
        "--listen",
        "tcp://127.0.0.1:0",
        "--workers",
        "2",
        "--pool-mib",
        "16",
    ]);
    let server = Process::start("host", command, None);
    for i in 0..2 {
        server.wait_for_line(&format!("nacre target {i}: serving"), common::START_TIMEOUT);
    }
    let workers = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("nacre-t0-w"))
        .count();
    assert_eq!(workers, 2, "worker threads of a server of two targets");
    let shown = cluster.ok(&["df"]);
    assert_eq!(shown.matches("nacre[OST:").count(), 2, "{shown}");
    cluster.ok(&["setstripe", "-c", "-1", "-S", "64K", "/both"]);
    let data = fill(11, 0, 1024 * 1024 + 5);
    let local = local_file(&cluster, "both.bin", &data);
    cluster.ok(&["put", &local, "/both"]);
    assert!(get_bytes(&cluster, "/both") == data, "read back differs");
    assert_eq!(obdidx(&cluster.ok(&["getstripe", "/both"])), [0, 1]);
}

/// The environment variables that make this test binary a writer of the shared file.
const WRITER_META_ENV: &str = "NACRE_CLI_TEST_WRITER_META";
const WRITER_RANK_ENV: &str = "NACRE_CLI_TEST_WRITER_RANK";
/// Words a writer prints, found anywhere in its lines (the test harness prints too).
const WRITER_READY: &str = "nacre-writer-ready";
const WRITER_DONE: &str = "nacre-writer-done";
const WRITERS: u64 = 4;
/// IOR-hard's transfer size: never aligned to a stripe.
const BLOCK_BYTES: u64 = 47_008;
const SHARED_BLOCKS: u64 = 48;
const SHARED_SEED: u64 = 5;
const SHARED_PATH: &str = "/shared";

/// A writer: opens the shared file, says it is ready, waits for "go" on its standard
/// input, writes every block `k` with `k % WRITERS == rank`, syncs and says so.
fn shared_file_writer(meta: &str, rank: u64) {
    let client = Client::connect(meta).unwrap();
    let file = client
        .open(SHARED_PATH, &OpenOptions::new().write(true))
        .unwrap();
    println!("{WRITER_READY} {rank}");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    assert_eq!(go.trim(), "go", "writer {rank}");
    let mut blocks = 0;
    for block in (rank..SHARED_BLOCKS).step_by(WRITERS as usize) {
        let at = block * BLOCK_BYTES;
        let bytes = fill(SHARED_SEED, at, BLOCK_BYTES as usize);
        assert_eq!(file.write_at(&bytes, at).unwrap(), bytes.len());
        blocks += 1;
    }
    file.sync().unwrap();
    println!("{WRITER_DONE} {rank} {blocks}");
}

#[test]
fn four_processes_write_one_shared_file() {
    if let (Ok(meta), Ok(rank)) = (
        std::env::var(WRITER_META_ENV),
        std::env::var(WRITER_RANK_ENV),
    ) {
        shared_file_writer(&meta, rank.parse().unwrap());
        return;
    }
    let cluster = Cluster::start("shared", 4);
    let client = cluster.client();
    let file = client
        .create(SHARED_PATH, 0o644, Some(stripes(-1, 64 * 1024)))
        .unwrap();
    assert_eq!(file.layout().components()[0].stripe.stripe_count(), 4);
    let exe = std::env::current_exe().unwrap();
    let mut writers: Vec<Process> = (0..WRITERS)
        .map(|rank| {
            let mut command = Command::new(&exe);
            command
                .args([
                    "four_processes_write_one_shared_file",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WRITER_META_ENV, &cluster.meta_addr)
                .env(WRITER_RANK_ENV, rank.to_string());
            Process::start(&format!("writer {rank}"), command, None)
        })
        .collect();
    // Every writer has the file open before any writes.
    for w in &writers {
        w.wait_for_line(WRITER_READY, common::START_TIMEOUT);
    }
    for w in &mut writers {
        w.send_line("go");
    }
    for (rank, w) in writers.iter_mut().enumerate() {
        let done = w.wait_for_line(WRITER_DONE, HANG_DEADLINE);
        assert!(
            done.ends_with(&format!(" {rank} {}", SHARED_BLOCKS / WRITERS)),
            "{done}"
        );
        let status = w.wait_exit(HANG_DEADLINE);
        assert!(status.success(), "writer {rank}: {status}");
    }
    let total = SHARED_BLOCKS * BLOCK_BYTES;
    assert_eq!(file.size().unwrap(), total);
    let mut back = vec![0u8; total as usize];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), back.len());
    for (at, &b) in back.iter().enumerate() {
        assert_eq!(b, pattern(SHARED_SEED, at as u64), "byte {at}");
    }
    // The same bytes through another process.
    assert!(get_bytes(&cluster, SHARED_PATH) == back);
}

#[test]
fn killed_target_fails_writes_by_name_and_recovers_after_restart() {
    const SYNCED_BYTES: usize = 2 << 20;
    const CHUNK_BYTES: usize = 256 * 1024;
    /// The writer cycles over this many chunks after the synced bytes.
    const CHUNK_SLOTS: u64 = 16;
    /// It stops by itself after this many writes, should no error come.
    const MAX_WRITES: u64 = 1_000_000;
    let mut cluster = Cluster::start("kill-target", 2);
    let client = cluster.client_with(options_with_timeout(FAULT_CLIENT_TIMEOUT));
    let file = client
        .create("/victim", 0o644, Some(stripes(-1, 64 * 1024)))
        .unwrap();
    let synced = fill(6, 0, SYNCED_BYTES);
    file.write_at(&synced, 0).unwrap();
    file.sync().unwrap();

    let (first_write_tx, first_write) = mpsc::channel();
    let (outcome_tx, outcome) = mpsc::channel();
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || {
            let chunk = fill(7, 0, CHUNK_BYTES);
            for i in 0..MAX_WRITES {
                let at = SYNCED_BYTES as u64 + (i % CHUNK_SLOTS) * CHUNK_BYTES as u64;
                if let Err(e) = file.write_at(&chunk, at) {
                    let _ = outcome_tx.send(Some(e));
                    return;
                }
                if i == 0 {
                    let _ = first_write_tx.send(());
                }
            }
            let _ = outcome_tx.send(None);
        })
    };
    first_write
        .recv_timeout(HANG_DEADLINE)
        .expect("the writer wrote once");
    cluster.kill_target(1);
    let error = outcome
        .recv_timeout(HANG_DEADLINE)
        .expect("the write to a killed target hung")
        .expect("writes went on after the target was killed");
    writer.join().unwrap();
    let message = error.to_string();
    let endpoint = cluster.target_endpoint(1);
    let address = endpoint.trim_start_matches("tcp://");
    assert!(
        message.contains("target 1") || message.contains(address),
        "the error does not name the target: {message}"
    );

    cluster.restart_target(1);
    // The same client finds its way back to the restarted target.
    let mut back = vec![0u8; SYNCED_BYTES];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), SYNCED_BYTES);
    assert!(back == synced, "synced bytes lost (same client)");
    let after = fill(8, 0, CHUNK_BYTES);
    file.write_at(&after, 0).unwrap();
    file.sync().unwrap();
    let mut head = vec![0u8; CHUNK_BYTES];
    file.read_at(&mut head, 0).unwrap();
    assert!(head == after, "a write after the restart differs");
    // And a new client sees the same.
    let fresh = cluster.client();
    let file = fresh
        .open("/victim", &OpenOptions::new().read(true))
        .unwrap();
    let mut back = vec![0u8; SYNCED_BYTES];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), SYNCED_BYTES);
    assert!(
        back[..CHUNK_BYTES] == after[..],
        "new client: rewritten head"
    );
    assert!(
        back[CHUNK_BYTES..] == synced[CHUNK_BYTES..],
        "new client: synced bytes lost"
    );
    let df = cluster.ok(&["df"]);
    assert!(!df.contains("not answering"), "{df}");
}

#[test]
fn killed_metadata_service_keeps_acknowledged_namespace_changes() {
    let mut cluster = Cluster::start("kill-meta", 2);
    let f_bytes = fill(9, 0, 200_000);
    let f_local = local_file(&cluster, "f", &f_bytes);
    let g_bytes = fill(10, 0, 90_000);
    let g_local = local_file(&cluster, "g", &g_bytes);
    cluster.ok(&["mkdir", "-p", "/keep/sub"]);
    cluster.ok(&["setstripe", "-c", "2", "-S", "64K", "/keep/sub"]);
    cluster.ok(&["put", &f_local, "/keep/f"]);
    cluster.ok(&["put", &g_local, "/keep/g"]);
    cluster.ok(&["mv", "/keep/g", "/keep/sub/h"]);
    cluster.ok(&["put", &g_local, "/keep/sub/striped"]);
    cluster.ok(&["put", &g_local, "/gone"]);
    cluster.ok(&["rm", "/gone"]);
    cluster.ok(&["mkdir", "/emptied"]);
    cluster.ok(&["rm", "-d", "/emptied"]);
    cluster.ok(&["chmod", "700", "/keep/f"]);

    cluster.kill_meta();
    cluster.restart_meta();

    assert_eq!(cluster.ok(&["ls", "/"]), "keep\n");
    assert_eq!(cluster.ok(&["ls", "/keep"]), "f\nsub\n");
    assert_eq!(cluster.ok(&["ls", "/keep/sub"]), "h\nstriped\n");
    cluster.fails(&["stat", "/gone"]);
    cluster.fails(&["stat", "/emptied"]);
    cluster.fails(&["stat", "/keep/g"]);
    assert!(get_bytes(&cluster, "/keep/f") == f_bytes);
    assert!(get_bytes(&cluster, "/keep/sub/h") == g_bytes);
    let long = cluster.ok(&["ls", "-l", "/keep"]);
    assert!(long.contains("-rwx------"), "{long}");
    // A rename keeps the layout the file was created with; a file made in the directory
    // has the directory's default.
    let shown = cluster.ok(&["getstripe", "/keep/sub/h"]);
    assert!(shown.contains("lmm_stripe_count:  1\n"), "{shown}");
    let shown = cluster.ok(&["getstripe", "/keep/sub/striped"]);
    assert!(shown.contains("lmm_stripe_count:  2\n"), "{shown}");
    assert!(get_bytes(&cluster, "/keep/sub/striped") == g_bytes);
    let shown = cluster.ok(&["getstripe", "/keep/sub"]);
    assert!(shown.contains("stripe_count:  2 "), "{shown}");

    // New changes are taken, and the targets are still known.
    cluster.ok(&["mkdir", "/after"]);
    cluster.ok(&["put", &f_local, "/after/f"]);
    assert!(get_bytes(&cluster, "/after/f") == f_bytes);
    let df = cluster.ok(&["df"]);
    assert_eq!(df.matches("nacre[OST:").count(), 2, "{df}");
    let fresh = cluster.client();
    assert_eq!(fresh.stat("/after/f").unwrap().size_bytes, 200_000);
}

#[test]
fn a_client_connected_before_the_metadata_service_restarts_works_again() {
    let mut cluster = Cluster::start("meta-reconnect", 1);
    let old = cluster.client();
    old.mkdir("/before", 0o755).unwrap();
    let file = old.create("/before/f", 0o644, None).unwrap();
    file.write_at(b"kept", 0).unwrap();

    cluster.kill_meta();
    cluster.restart_meta();

    // Its pooled connection to the old service is dead; the next call must not fail.
    assert_eq!(old.stat("/before/f").unwrap().size_bytes, 4);
    old.mkdir("/before/by-old", 0o755).unwrap();
    assert_eq!(cluster.ok(&["ls", "/before"]), "by-old\nf\n");
    // Its open file is unaffected (the data path goes to the targets).
    let mut back = [0u8; 4];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), 4);
    assert_eq!(&back, b"kept");
}

#[test]
fn unknown_paths_and_invalid_layouts_fail_with_clear_messages() {
    let cluster = Cluster::start("bad-input", 2);
    for args in [
        &["stat", "/no/such"][..],
        &["ls", "/no/such"],
        &["getstripe", "/no/such"],
        &["get", "/no/such", "-"],
        &["rm", "/no/such"],
        &["rm", "-d", "/no/such"],
        &["mv", "/no/such", "/elsewhere"],
        &["chmod", "644", "/no/such"],
        &["mkdir", "/no/such"],
    ] {
        let stderr = cluster.fails(args);
        assert!(stderr.contains("/no/such"), "{args:?}: {stderr}");
    }
    let missing_local = cluster.dir().join("not-here");
    let stderr = cluster.fails(&["put", missing_local.to_str().unwrap(), "/f"]);
    assert!(stderr.contains("not-here"), "{stderr}");

    let stderr = cluster.fails(&["setstripe", "-S", "1000", "/x"]);
    assert!(stderr.contains("stripe_size"), "{stderr}");
    let stderr = cluster.fails(&["setstripe", "-c", "3", "/y"]);
    assert!(
        stderr.contains("stripe_count 3") && stderr.contains("/y"),
        "{stderr}"
    );
    let stderr = cluster.fails(&["setstripe", "--bogus", "/z"]);
    assert!(stderr.contains("--bogus"), "{stderr}");
    // Nothing was created by the refused requests.
    assert_eq!(cluster.ok(&["ls", "/"]), "");
    // A bad mode is a usage error.
    let out = cluster.nacre(&["mkdir", "-m", "999", "/m"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // A metadata service that is not there: named.
    let gone = format!("tcp://127.0.0.1:{}", common::free_port());
    let out = nacre(&["ls", "--meta", &gone, "/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(gone.trim_start_matches("tcp://")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn another_user_is_denied_a_private_directory() {
    let cluster = Cluster::start("perm", 1);
    let root = cluster.client_with(ClientOptions {
        cred: Cred::root(),
        ..ClientOptions::default()
    });
    root.mkdir("/private", 0o700).unwrap();
    root.create("/private/f", 0o644, None)
        .unwrap()
        .write_at(b"secret", 0)
        .unwrap();
    let user = cluster.client_with(ClientOptions {
        cred: Cred {
            uid: 4242,
            gid: 4242,
            groups: Vec::new(),
        },
        ..ClientOptions::default()
    });
    let denied = |what: &str, e: nacre::Error| {
        assert_eq!(e.errno(), libc::EACCES, "{what}: {e}");
        assert!(e.to_string().contains("/private"), "{what}: {e}");
    };
    denied("stat", user.stat("/private/f").unwrap_err());
    denied("readdir", user.readdir("/private").unwrap_err());
    denied(
        "create",
        user.create("/private/g", 0o644, None).unwrap_err(),
    );
    denied(
        "open",
        user.open("/private/f", &OpenOptions::new().read(true))
            .unwrap_err(),
    );
    // Elsewhere the user may work.
    assert!(user.readdir("/").is_ok());
}

/// Registers a target that is not there: `endpoint` answers no requests.
fn register_fake_target(cluster: &Cluster, target_id: u32, endpoint: &str) {
    let link = MetaLink::new(&cluster.meta_addr, link_options(FAULT_CLIENT_TIMEOUT), 1).unwrap();
    let info = TargetInfo {
        target_id,
        uuid: format!("fake-target-{target_id}"),
        endpoint: endpoint.to_string(),
        pools: Vec::new(),
        // No free space: a layout left to the service starts on a real target.
        capacity_bytes: 0,
        free_bytes: 0,
    };
    link.call(
        &Cred::root(),
        &MetaRequest::RegisterTarget {
            info,
            filesystem: None,
        },
    )
    .unwrap();
}

#[test]
fn a_target_that_does_not_answer_fails_by_name_and_others_keep_working() {
    const CLOSED_TARGET: u32 = 9;
    const SILENT_TARGET: u32 = 10;
    let cluster = Cluster::start("no-answer", 2);
    let closed = format!("tcp://127.0.0.1:{}", common::free_port());
    register_fake_target(&cluster, CLOSED_TARGET, &closed);
    // Connections to this one are accepted by the kernel, and nothing ever answers.
    let silent_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("tcp://{}", silent_listener.local_addr().unwrap());
    // df still lists every target, and says which does not answer.
    let df = cluster.ok(&["df"]);
    let line = df
        .lines()
        .find(|l| l.contains(&format!("nacre[OST:{CLOSED_TARGET}]")))
        .unwrap_or_else(|| panic!("{df}"));
    assert!(line.contains("not answering"), "{line}");
    register_fake_target(&cluster, SILENT_TARGET, &silent);

    let client = cluster.client_with(options_with_timeout(FAULT_CLIENT_TIMEOUT));
    let bytes = fill(11, 0, 100_000);
    for (target_id, endpoint) in [(CLOSED_TARGET, &closed), (SILENT_TARGET, &silent)] {
        let path = format!("/on-{target_id}");
        let file = client
            .create(&path, 0o644, Some(on_target(target_id)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (file, bytes) = (file.clone(), bytes.clone());
            std::thread::spawn(move || {
                let _ = tx.send(file.write_at(&bytes, 0));
            })
        };
        let error = rx
            .recv_timeout(HANG_DEADLINE)
            .expect("a write to a target that does not answer hung")
            .expect_err("a write to a target that does not answer succeeded");
        writer.join().unwrap();
        let message = error.to_string();
        assert!(
            message.contains(&format!("target {target_id}"))
                && message.contains(endpoint.trim_start_matches("tcp://")),
            "{message}"
        );
    }
    // Files on the real targets, placed by hand or by the service, still work.
    for (path, layout) in [
        ("/on-0", Some(on_target(0))),
        ("/on-1", Some(on_target(1))),
        ("/placed", None),
    ] {
        let file = client.create(path, 0o644, layout).unwrap();
        file.write_at(&bytes, 0).unwrap();
        file.sync().unwrap();
        let mut back = vec![0u8; bytes.len()];
        assert_eq!(file.read_at(&mut back, 0).unwrap(), bytes.len());
        assert!(back == bytes, "{path}");
        assert!(
            get_bytes(&cluster, path) == bytes,
            "{path} from another process"
        );
    }
    drop(silent_listener);
}

#[test]
fn garbage_bytes_close_their_connection_and_servers_keep_serving() {
    /// 64 bytes that are no message: the second kind starts like a header.
    fn garbage(looks_like_a_header: bool) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
        if looks_like_a_header {
            bytes[..4].copy_from_slice(b"NACR");
            bytes[4..6].copy_from_slice(&1u16.to_le_bytes());
        }
        bytes
    }
    let cluster = Cluster::start("garbage", 1);
    let client = cluster.client();
    let file = client.create("/f", 0o644, None).unwrap();
    let bytes = fill(12, 0, 300_000);
    file.write_at(&bytes, 0).unwrap();

    let meta_port = cluster.meta_addr.trim_start_matches("tcp://").to_string();
    let target_port = cluster
        .target_endpoint(0)
        .trim_start_matches("tcp://")
        .to_string();
    for address in [&meta_port, &target_port] {
        for looks_like_a_header in [false, true] {
            let mut stream = TcpStream::connect(address.as_str()).unwrap();
            stream.write_all(&garbage(looks_like_a_header)).unwrap();
            assert!(
                closed_by_peer(&mut stream),
                "{address} kept a connection that sent garbage (header-like: \
                 {looks_like_a_header})"
            );
            // Clients, old and new, are still served.
            let mut back = vec![0u8; bytes.len()];
            assert_eq!(file.read_at(&mut back, 0).unwrap(), bytes.len());
            assert!(back == bytes);
            assert_eq!(client.stat("/f").unwrap().size_bytes, bytes.len() as u64);
            assert!(get_bytes(&cluster, "/f") == bytes);
        }
    }
    cluster.ok(&["mkdir", "/still-serving"]);
}

#[test]
fn help_for_every_subcommand_and_usage_errors() {
    const SUBCOMMANDS: [&str; 15] = [
        "serve",
        "mkfs",
        "ls",
        "stat",
        "mkdir",
        "rm",
        "mv",
        "chmod",
        "chown",
        "put",
        "get",
        "setstripe",
        "getstripe",
        "df",
        "bench",
    ];
    let out = nacre(&["--help"]);
    assert!(out.status.success());
    let top = text(&out.stdout);
    for sub in SUBCOMMANDS {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from --help:\n{top}"
        );
        for args in [&[sub, "--help"][..], &["help", sub]] {
            let out = nacre(args);
            assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
            let help = text(&out.stdout);
            assert!(help.contains(&format!("Usage: nacre {sub}")), "{help}");
        }
    }
    for args in [&["frobnicate"][..], &[], &["ls", "--bogus"], &["mkfs"]] {
        let out = nacre(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("Usage"), "{args:?}");
    }
    assert!(text(&nacre(&["frobnicate"]).stderr).contains("frobnicate"));
}

/// The objects of file `ino` on target `i` of the cluster, read from its directory.
fn objects_of(cluster: &Cluster, i: u32, ino: u64) -> usize {
    nacre::io::Target::open(&cluster.target_dir(i))
        .unwrap()
        .list()
        .unwrap()
        .into_iter()
        .filter(|&object_id| nacre::layout::object_id_parts(object_id).0 == ino)
        .count()
}

#[test]
fn objects_left_on_a_target_down_at_unlink_are_removed_when_it_returns() {
    let mut cluster = Cluster::start("orphans", 2);
    let client = cluster.client();
    let file = client
        .create("/doomed", 0o644, Some(stripes(-1, 64 * 1024)))
        .unwrap();
    file.write_at(&fill(3, 0, 1 << 20), 0).unwrap();
    file.sync().unwrap();
    let ino = file.attr().ino;
    assert!(objects_of(&cluster, 0, ino) > 0 && objects_of(&cluster, 1, ino) > 0);

    cluster.kill_target(1);
    // The namespace change does not wait for the target: the unlink succeeds, the reachable
    // target loses the file's objects before the reply, the other keeps them logged.
    client.unlink("/doomed").unwrap();
    assert_eq!(objects_of(&cluster, 0, ino), 0);
    assert!(objects_of(&cluster, 1, ino) > 0);

    // The target registers as it starts; the service removes the logged objects before it
    // answers, so they are gone when the target says it is serving.
    cluster.restart_target(1);
    assert_eq!(objects_of(&cluster, 1, ino), 0, "orphans left on target 1");
}

/// A second `nacre serve` of a target directory already served fails at once, naming the
/// process that serves it; the first goes on. Before, the second took the registration
/// over, and two clients writing neighbouring bytes of shared blocks lost 1,878 and 1,212
/// of 3,000 acknowledged writes.
#[test]
fn a_second_serve_of_a_target_directory_fails_naming_the_first() {
    let cluster = Cluster::start("second-serve", 1);
    let listen = format!("tcp://127.0.0.1:{}", common::free_port());
    let mut second = Process::start(
        "second serve",
        cluster.serve_target_command(0, &listen),
        Some(&cluster.dir().join("second.stderr")),
    );
    let status = second.wait_exit(HANG_DEADLINE);
    assert_eq!(
        status.code(),
        Some(1),
        "the second serve ended with {status}"
    );
    let stderr = std::fs::read_to_string(cluster.dir().join("second.stderr")).unwrap();
    let first = cluster.target_pid(0);
    assert!(
        stderr.contains("is served by another process already")
            && stderr.contains(&format!("pid {first}")),
        "{stderr}"
    );
    let df = cluster.ok(&["df"]);
    assert!(df.contains(&cluster.target_endpoint(0)), "{df}");
    let path = local_file(&cluster, "after", b"still served by the first");
    cluster.ok(&["put", &path, "/after"]);
    assert_eq!(get_bytes(&cluster, "/after"), b"still served by the first");
}

/// One operation of [`a_target_killed_mid_operation_never_leaves_a_file_past_its_writes`].
#[derive(Debug, Clone, Copy)]
enum CrashOp {
    Write { offset: u64, len: usize, seed: u64 },
    Truncate { size: u64 },
    Sync,
}

impl CrashOp {
    /// The next operation on a file of `size` bytes: mostly small unaligned appends and
    /// writes past the end (a hole before them), some overwrites, truncates and syncs.
    fn next(rng: &mut u64, size: u64) -> CrashOp {
        let mut below = |n: u64| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng % n
        };
        let seed = below(1 << 40);
        match below(100) {
            0..50 => CrashOp::Write {
                offset: size,
                len: if below(2) == 0 {
                    1001
                } else {
                    1 + below(3000) as usize
                },
                seed,
            },
            50..70 => CrashOp::Write {
                offset: size + below(200_000),
                len: 1 + below(100_000) as usize,
                seed,
            },
            70..82 => CrashOp::Write {
                offset: below(size + 1),
                len: 1 + below(10_000) as usize,
                seed,
            },
            82..95 => CrashOp::Truncate {
                size: below(size + 70_000),
            },
            _ => CrashOp::Sync,
        }
    }

    fn apply(self, model: &mut Vec<u8>) {
        match self {
            CrashOp::Write { offset, len, seed } => {
                let end = offset as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&fill(seed, offset, len));
            }
            CrashOp::Truncate { size } => model.resize(size as usize, 0),
            CrashOp::Sync => {}
        }
    }

    fn run(self, file: &nacre::File) -> Result<(), nacre::Error> {
        match self {
            CrashOp::Write { offset, len, seed } => {
                file.write_at(&fill(seed, offset, len), offset).map(drop)
            }
            CrashOp::Truncate { size } => file.truncate(size),
            CrashOp::Sync => file.sync(),
        }
    }
}

/// Crash points: a target process is SIGKILLed at a random moment of a stream of small
/// unaligned appends, writes that extend the file past holes, overwrites, truncates and
/// syncs from a client; after its restart the file is what the acknowledged operations
/// made it, or that with the one in flight applied (in part, for a write): its size is
/// never past the end of anything written, and every acknowledged byte is there.
#[test]
fn a_target_killed_mid_operation_never_leaves_a_file_past_its_writes() {
    const ROUNDS: u64 = 25;
    /// The kill lands up to this long after an acknowledgement: a moment anywhere in the
    /// next operations, not only at their start (the sleep picks a crash point at random;
    /// nothing waits on it to happen).
    const KILL_SPREAD_US: u64 = 1_000;
    let mut cluster = Cluster::start("crash-points", 2);
    let client = cluster.client_with(options_with_timeout(FAULT_CLIENT_TIMEOUT));
    let file = client
        .create("/crash", 0o644, Some(stripes(-1, 64 * 1024)))
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..ROUNDS {
        // The stream runs on a thread until an operation fails (its target was killed);
        // it tells each acknowledged one, and the one that failed.
        let (tx, acked) = mpsc::channel::<(CrashOp, bool)>();
        let stream = {
            let (file, start, mut rng) = (file.clone(), model.clone(), rng);
            std::thread::spawn(move || {
                let mut size = start.len() as u64;
                let mut shadow = start;
                for _ in 0..1_000_000 {
                    let op = CrashOp::next(&mut rng, size);
                    let ok = op.run(&file).is_ok();
                    if tx.send((op, ok)).is_err() || !ok {
                        return;
                    }
                    op.apply(&mut shadow);
                    size = shadow.len() as u64;
                }
            })
        };
        rng = rng.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
        let kill_after = 5 + rng % 60;
        let victim = (round % 2) as u32;
        let mut before = model.clone();
        let mut in_flight = None;
        let mut history: Vec<(CrashOp, usize)> = Vec::new();
        for n in 0.. {
            let (op, ok) = acked
                .recv_timeout(HANG_DEADLINE)
                .expect("the stream of operations stopped");
            if !ok {
                panic!("round {round}: {op:?} failed before any target was killed");
            }
            op.apply(&mut before);
            history.push((op, before.len()));
            if n + 1 == kill_after {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(rng % KILL_SPREAD_US));
        cluster.kill_target(victim);
        for (op, ok) in acked.iter() {
            if ok {
                op.apply(&mut before);
                history.push((op, before.len()));
            } else {
                in_flight = Some(op);
            }
        }
        stream.join().unwrap();
        cluster.restart_target(victim);
        let mut after = before.clone();
        if let Some(op) = in_flight {
            op.apply(&mut after);
        }
        let size = file.size().unwrap();
        let (low, high) = (
            before.len().min(after.len()) as u64,
            before.len().max(after.len()) as u64,
        );
        let objects: Vec<(u32, u64, u64)> = (0..2)
            .flat_map(|t| {
                let target = nacre::io::Target::open(&cluster.target_dir(t)).unwrap();
                target
                    .list()
                    .unwrap()
                    .into_iter()
                    .map(move |o| (t, o, target.stat(o).unwrap().size_bytes))
            })
            .collect();
        assert!(
            (low..=high).contains(&size),
            "round {round}: the file is {size} bytes; the acknowledged operations left {}, with {in_flight:?} {}; objects {objects:?}; last ops {:?}",
            before.len(),
            after.len(),
            &history[history.len().saturating_sub(12)..]
        );
        let mut now = vec![0u8; size as usize];
        assert_eq!(file.read_at(&mut now, 0).unwrap(), size as usize);
        for (at, &byte) in now.iter().enumerate() {
            let old = before.get(at).copied().unwrap_or(0);
            let new = after.get(at).copied().unwrap_or(0);
            assert!(
                byte == old || byte == new,
                "round {round}: byte {at} is {byte:#04x}, neither {old:#04x} (acknowledged) nor {new:#04x} (with {in_flight:?})"
            );
        }
        // What is there now is what the next round starts from.
        model = now;
    }
}

/// Hundreds of idle connections and slow senders on every server while a client works: the
/// client's work is right, each slow sender's request (a ping, a byte at a time) is answered
/// once it is whole, and every server stops on SIGTERM with the idle connections still open.
#[test]
fn idle_and_slow_connections_do_not_stop_the_servers() {
    use nacre::transport::limits::HEADER_BYTES;
    use nacre::transport::wire::{ANY_TARGET, Header, Opcode};
    const IDLE_PER_SERVER: usize = 200;
    const SLOW_PER_SERVER: usize = 20;
    let mut cluster = Cluster::start("idle-slow", 2);
    let servers: Vec<String> = [
        cluster.meta_addr.clone(),
        cluster.target_endpoint(0),
        cluster.target_endpoint(1),
    ]
    .iter()
    .map(|e| e.trim_start_matches("tcp://").to_string())
    .collect();
    let mut idle = Vec::new();
    let mut slow = Vec::new();
    for address in &servers {
        for _ in 0..IDLE_PER_SERVER {
            idle.push(TcpStream::connect(address.as_str()).unwrap());
        }
        for n in 0..SLOW_PER_SERVER {
            let mut ping = Header::request(Opcode::Ping, n as u64 + 1, &[], 0);
            ping.target = ANY_TARGET;
            slow.push((TcpStream::connect(address.as_str()).unwrap(), ping.encode()));
        }
    }
    // Targets answer a ping; the metadata service says it serves none (the first ones).
    let expected_status = |i: usize| {
        if i < SLOW_PER_SERVER {
            libc::EOPNOTSUPP
        } else {
            0
        }
    };
    // The slow senders drip half their header, a byte per connection per pass, while the
    // client works.
    let (done_tx, done) = mpsc::channel::<()>();
    let dripper = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < HEADER_BYTES / 2 {
            for (stream, header) in &mut slow {
                stream.write_all(&header[sent..sent + 1]).unwrap();
            }
            sent += 1;
            // A slow peer: a byte every few milliseconds (the pace, not an ordering).
            if done.recv_timeout(Duration::from_millis(5)).is_ok() {
                break;
            }
        }
        (slow, sent)
    });
    let client = cluster.client();
    let file = client
        .create("/busy", 0o644, Some(stripes(-1, 64 * 1024)))
        .unwrap();
    let data = fill(21, 0, 8 << 20);
    file.write_at(&data, 0).unwrap();
    file.sync().unwrap();
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data, "bytes read back differ");
    assert!(cluster.ok(&["ls", "/"]).contains("busy"));
    assert!(!cluster.ok(&["df"]).contains("not answering"));
    let _ = done_tx.send(());
    let (mut slow, sent) = dripper.join().unwrap();
    // Whole now: each is answered.
    for (i, (stream, header)) in slow.iter_mut().enumerate() {
        stream.write_all(&header[sent..]).unwrap();
        stream.set_read_timeout(Some(HANG_DEADLINE)).unwrap();
        let mut reply = [0u8; HEADER_BYTES];
        stream.read_exact(&mut reply).unwrap();
        let reply = Header::decode(&reply).unwrap();
        let asked = Header::decode(header).unwrap();
        assert_eq!(
            (reply.opcode, reply.request_id, reply.status),
            (Opcode::Ping, asked.request_id, expected_status(i)),
            "slow sender {i}"
        );
    }
    drop((file, client));
    for i in 0..2 {
        let status = cluster.stop_target(i, HANG_DEADLINE);
        assert!(status.success(), "target {i} ended with {status}");
    }
    let status = cluster.stop_meta(HANG_DEADLINE);
    assert!(status.success(), "the metadata service ended with {status}");
    drop((idle, slow));
}

/// A target stops on SIGTERM within its bound whatever it holds: here a 32 MiB read whose
/// client never takes the reply, so the reply cannot be written. The target says what it
/// gave up, and exits.
#[test]
fn a_target_stops_on_sigterm_with_a_reply_nobody_reads() {
    use nacre::transport::wire::{Extent, Header, Opcode, encode_extents};
    let mut cluster = Cluster::start("stop-bound", 1);
    let client = cluster.client();
    let file = client
        .create("/unread", 0o644, Some(stripes(1, 1 << 20)))
        .unwrap();
    file.write_at(&fill(4, 0, 1 << 20), 0).unwrap();
    let object_id = nacre::layout::object_id(file.attr().ino, 0, 0).unwrap();
    drop((file, client));
    let extents: Vec<Extent> = (0..32)
        .map(|i| Extent {
            object_id,
            offset_bytes: i << 20,
            len: 1 << 20,
        })
        .collect();
    let mut body = Vec::new();
    encode_extents(&extents, &mut body);
    let mut read = Header::request(Opcode::Read, 1, &body, 0);
    read.target = 0;
    let address = cluster.target_endpoint(0);
    let mut stream = TcpStream::connect(address.trim_start_matches("tcp://")).unwrap();
    stream.write_all(&read.encode()).unwrap();
    stream.write_all(&body).unwrap();
    // The reply starts: the request was served, and its 32 MiB cannot all be written while
    // nobody reads.
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).unwrap();
    let status = cluster.stop_target(0, HANG_DEADLINE);
    assert!(status.success(), "the target ended with {status}");
    let log = cluster.target_log(0);
    assert!(
        log.contains("stops after") && log.contains("with work left"),
        "{log}"
    );
    drop(stream);
}

/// A request that pauses mid-message longer than a retransmission or two is still answered
/// (the metadata service closed the connection after 250 ms before); one that never
/// finishes is closed at the request timeout. The pause is the slow peer's, not an
/// ordering.
#[test]
fn a_slow_request_is_answered_and_one_that_never_ends_is_closed() {
    use nacre::transport::limits::HEADER_BYTES;
    use nacre::transport::wire::{Header, Opcode};
    let cluster = Cluster::start("slow-request", 1);
    let address = cluster.meta_addr.trim_start_matches("tcp://").to_string();
    let mut body = Vec::new();
    MetaRequest::Lookup { path: "/".into() }.encode(&Cred::root(), &mut body);
    let header = Header::request(Opcode::Meta, 1, &body, 0).encode();
    let mut message = header.to_vec();
    message.extend_from_slice(&body);
    let mut slow = TcpStream::connect(address.as_str()).unwrap();
    slow.set_nodelay(true).unwrap();
    let half = message.len() / 2;
    slow.write_all(&message[..half]).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    slow.write_all(&message[half..]).unwrap();
    slow.set_read_timeout(Some(HANG_DEADLINE)).unwrap();
    let mut reply = [0u8; HEADER_BYTES];
    slow.read_exact(&mut reply).unwrap();
    let reply = Header::decode(&reply).unwrap();
    assert_eq!((reply.request_id, reply.status), (1, 0));
    // Half a header, then nothing: closed by the service, not kept for ever.
    let mut stuck = TcpStream::connect(address.as_str()).unwrap();
    stuck.write_all(&message[..HEADER_BYTES / 2]).unwrap();
    assert!(
        closed_by_peer(&mut stuck),
        "a connection stuck mid-message was kept"
    );
    // And the service serves on.
    cluster.ok(&["mkdir", "/after-the-slow-ones"]);
}

/// `nacre ls -l` with one target down lists every entry: those whose size needs that
/// target show `?` for it and their error on standard error, the others list as usual,
/// and the command fails (exit 1) saying how many could not be listed whole. Before, the
/// whole listing failed.
#[test]
fn ls_long_with_a_target_down_marks_only_the_entries_it_holds() {
    let mut cluster = Cluster::start("ls-target-down", 2);
    let client = cluster.client();
    let on_0 = client.create("/on-0", 0o644, Some(on_target(0))).unwrap();
    on_0.write_at(&fill(1, 0, 1000), 0).unwrap();
    let on_1 = client.create("/on-1", 0o644, Some(on_target(1))).unwrap();
    on_1.write_at(&fill(2, 0, 2000), 0).unwrap();
    client.mkdir("/dir", 0o755).unwrap();
    drop((on_0, on_1, client));
    cluster.kill_target(1);
    let out = cluster.nacre(&["ls", "-l", "/"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"))
            .to_string()
    };
    assert!(line("on-0").contains(" 1000 "), "{stdout}");
    assert!(line("dir").starts_with('d'), "{stdout}");
    let down = line("on-1");
    assert!(down.contains(" ? ") && down.starts_with('-'), "{stdout}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("/on-1") && stderr.contains("size unknown"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 entries of / could not be listed whole"),
        "{stderr}"
    );
    assert!(!stderr.contains("/on-0"), "{stderr}");
}

/// Messages that name the argument that was wrong (issue 21).
#[test]
fn usage_messages_name_the_wrong_argument() {
    let cluster = Cluster::start("messages", 1);
    let stderr = cluster.fails(&["setstripe", "-c", "1"]);
    assert!(
        stderr.contains("needs a PATH") && stderr.contains("-c 1"),
        "{stderr}"
    );
    let stderr = cluster.fails(&["setstripe", "-c"]);
    assert!(stderr.contains("-c needs a value"), "{stderr}");
    // A usage error of bench's: exit status 2, as every usage error.
    let out = cluster.nacre(&["bench", "-o", "relative", "-b", "1m", "-t", "1m"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("-o/--path") && stderr.contains("'relative'"),
        "{stderr}"
    );
    for meta in ["", "   "] {
        let mut command = Command::new(common::NACRE_BIN);
        command.args(["ls", "/"]).env("NACRE_META", meta);
        let out = common::run(command);
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("--meta or NACRE_META is empty"),
            "{meta:?}: {stderr}"
        );
    }
    let mut command = Command::new(common::NACRE_BIN);
    command.args(["ls", "/"]).env("NACRE_META", "tcp://nowhere");
    let out = common::run(command);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--meta or NACRE_META 'tcp://nowhere'"),
        "{stderr}"
    );
}
