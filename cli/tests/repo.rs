//! Data repositories against a real S3 server: moto's (PyPI `moto[server]`, which
//! scripts/test.sh installs), with Debian's `aws` as the independent client that puts what
//! Nacre imports. Each test starts its own moto on a free port and a cluster of `nacre
//! serve` processes whose metadata service runs the repository mover.
//!
//! Without moto or aws on this machine the tests say so and pass, unless
//! `NACRE_REQUIRE_S3` is set (scripts/test.sh sets it): there they must run.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Process, START_TIMEOUT, fill, free_port, run, text};
use nacre::OpenOptions;
use nacre::meta::repo::{HS_ARCHIVED, HS_DIRTY, HS_EXISTS, HS_LOST, HS_RELEASED};
use nacre::meta::task::{TaskKind, TaskState};

/// Debian's S3 client.
const AWS: &str = "/usr/bin/aws";
/// Credentials moto takes (it checks none).
const CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];
/// The chunk the tests' associations fetch by: small, so that files have many.
const CHUNK: u64 = 64 << 10;

/// moto's server, if this machine has it.
fn moto_server() -> Option<PathBuf> {
    let path = std::env::var_os("NACRE_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/nacre/moto-venv/bin/moto_server"))
        })?;
    path.exists().then_some(path)
}

/// Whether the S3 parts are here; when they are not, says so (and fails where they must).
fn s3_available(test: &str) -> Option<PathBuf> {
    let moto = moto_server();
    if let Some(moto) = moto.filter(|_| Path::new(AWS).exists()) {
        return Some(moto);
    }
    assert!(
        std::env::var_os("NACRE_REQUIRE_S3").is_none(),
        "{test}: moto_server or {AWS} is missing (scripts/test.sh installs them)"
    );
    eprintln!("{test}: skipped: no moto_server or {AWS} here (scripts/test.sh installs them)");
    None
}

/// A moto server on a free loopback port, stopped on drop.
struct S3 {
    endpoint: String,
    _process: Process,
}

impl S3 {
    fn start(moto: &Path) -> S3 {
        let port = free_port();
        let mut command = Command::new("sh");
        command.args([
            "-c",
            &format!("exec '{}' -H 127.0.0.1 -p {port} 2>&1", moto.display()),
        ]);
        let process = Process::start("moto", command, None);
        // Serving once it takes connections.
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen on {port}");
            std::thread::park_timeout(Duration::from_millis(20));
        }
        S3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            _process: process,
        }
    }

    /// `aws ARGS` against this server; must succeed; its standard output.
    fn aws(&self, args: &[&str]) -> String {
        let mut command = Command::new(AWS);
        command
            .args(["--endpoint-url", &self.endpoint])
            .args(args)
            .envs(CREDENTIALS);
        let out = run(command);
        assert!(out.status.success(), "aws {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `aws s3api head-object` of `key` in `bucket`: its JSON.
    fn head(&self, bucket: &str, key: &str) -> String {
        self.aws(&["s3api", "head-object", "--bucket", bucket, "--key", key])
    }

    /// Puts `bytes` at `key` of `bucket`, with FSx metadata `meta` (`k=v,k=v`) if given.
    fn put(&self, dir: &Path, bucket: &str, key: &str, bytes: &[u8], meta: Option<&str>) {
        let local = dir.join("upload");
        std::fs::write(&local, bytes).unwrap();
        let body = local.to_str().unwrap();
        let mut args = vec![
            "s3api",
            "put-object",
            "--bucket",
            bucket,
            "--key",
            key,
            "--body",
            body,
        ];
        if let Some(m) = meta {
            args.extend(["--metadata", m]);
        }
        self.aws(&args);
    }
}

/// A cluster of two targets whose metadata service and commands reach S3 with the test
/// credentials (and whose auto-import polls every second).
fn cluster(tag: &str) -> Cluster {
    let mut env = CREDENTIALS.to_vec();
    env.push(("NACRE_AUTO_IMPORT_INTERVAL", "1"));
    Cluster::start_with_env(tag, 2, &env)
}

/// Waits (up to the start timeout) until `done` holds; panics naming `what` otherwise.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {START_TIMEOUT:?}"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Links `/data` of `c` to `s3://BUCKET/train`, fetching by [`CHUNK`], importing at once.
fn link(c: &Cluster, s3: &S3, bucket: &str) -> String {
    c.ok(&["mkdir", "/data"]);
    let chunk = CHUNK.to_string();
    c.ok(&[
        "repo",
        "link",
        "/data",
        &format!("s3://{bucket}/train"),
        "--endpoint",
        &s3.endpoint,
        "--chunk-size",
        &chunk,
        "--import-now",
    ])
}

fn flags(c: &Cluster, path: &str) -> u32 {
    c.client().hsm_state(path).unwrap().0
}

/// Chunks the metadata service's mover says it fetched, in all.
fn chunks_fetched(c: &Cluster) -> u64 {
    c.meta_log()
        .lines()
        .filter_map(|l| l.split("nacre meta: fetched ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn an_import_brings_files_and_directories_with_their_attributes_and_reads_fetch_them() {
    let Some(moto) = s3_available("import") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-import");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data1"]);
    let big = fill(1, 0, (10 * CHUNK + 123) as usize);
    s3.put(
        c.dir(),
        "data1",
        "train/small.txt",
        b"hello\n",
        Some("file-permissions=0100640,file-owner=1001,file-group=2002,file-mtime=1700000000123456789ns"),
    );
    s3.put(c.dir(), "data1", "train/sub/deep/big.bin", &big, None);
    // A directory marker with FSx's metadata.
    s3.put(
        c.dir(),
        "data1",
        "train/empty/",
        b"",
        Some("file-permissions=0040700,file-owner=7,file-group=8"),
    );
    s3.put(
        c.dir(),
        "data1",
        "outside.txt",
        b"not under the prefix",
        None,
    );
    let out = link(&c, &s3, "data1");
    assert!(out.contains("2 files created"), "{out}");
    assert!(out.contains("0 failed"), "{out}");

    let client = c.client();
    let small = client.stat("/data/small.txt").unwrap();
    assert_eq!(small.size_bytes, 6);
    assert_eq!(
        (small.attr.mode, small.attr.uid, small.attr.gid),
        (0o640, 1001, 2002)
    );
    assert_eq!(small.attr.mtime_ns, 1_700_000_000_123_456_789);
    // Without metadata: as FSx, 0755 and root.
    let st = client.stat("/data/sub/deep/big.bin").unwrap();
    assert_eq!(st.size_bytes, big.len() as u64);
    assert_eq!((st.attr.mode, st.attr.uid), (0o755, 0));
    let empty = client.attr("/data/empty").unwrap();
    assert!(empty.is_dir());
    assert_eq!((empty.mode, empty.uid, empty.gid), (0o700, 7, 8));
    assert!(client.attr("/data/sub/deep").unwrap().is_dir());
    assert!(client.attr("/data/outside.txt").is_err());
    assert_eq!(
        flags(&c, "/data/sub/deep/big.bin"),
        HS_EXISTS | HS_ARCHIVED | HS_RELEASED
    );
    let state = c.ok(&["hsm", "state", "/data/sub/deep/big.bin"]);
    assert!(
        state.contains("(0x0000000d) released exists archived"),
        "{state}"
    );

    // A 4 KiB read in the middle fetches its chunk, not the file.
    let file = client
        .open("/data/sub/deep/big.bin", &OpenOptions::new().read(true))
        .unwrap();
    let at = 5 * CHUNK + 1000;
    let mut buf = vec![0u8; 4096];
    assert_eq!(file.read_at(&mut buf, at).unwrap(), 4096);
    assert_eq!(buf, &big[at as usize..at as usize + 4096]);
    assert_eq!(chunks_fetched(&c), 1);
    assert_ne!(flags(&c, "/data/sub/deep/big.bin") & HS_RELEASED, 0);

    // The whole file, through the command: every chunk once.
    let local = c.dir().join("big.out");
    c.ok(&["get", "/data/sub/deep/big.bin", local.to_str().unwrap()]);
    assert_eq!(std::fs::read(&local).unwrap(), big);
    assert_eq!(chunks_fetched(&c), 11);
    assert_eq!(flags(&c, "/data/sub/deep/big.bin"), HS_EXISTS | HS_ARCHIVED);
    // A second import changes nothing.
    let again = c.ok(&["task", "import", "/data"]);
    assert!(
        again.contains("0 files created, 0 updated, 2 unchanged"),
        "{again}"
    );
    // On a terminal (script(1) gives it one), a task draws its progress bar, last as it
    // ended; piped, it does not.
    let mut command = Command::new("script");
    command
        .args([
            "-qec",
            &format!("{} task restore /data/sub/deep/big.bin", common::NACRE_BIN),
            "/dev/null",
        ])
        .env("NACRE_META", &c.meta_addr)
        .envs(CREDENTIALS);
    let out = run(command);
    let tty = text(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("(restore) succeeded [########################] 1 of 1 done, 0 failed"),
        "{tty}"
    );
    let piped = c.nacre(&["task", "restore", "/data/sub/deep/big.bin"]);
    assert!(
        !text(&piped.stderr).contains("[#"),
        "{}",
        text(&piped.stderr)
    );
}

#[test]
fn readers_of_one_released_file_at_once_fetch_each_chunk_once() {
    let Some(moto) = s3_available("readers") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-readers");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data2"]);
    let chunks = 24u64;
    let data = fill(2, 0, (chunks * CHUNK) as usize);
    s3.put(c.dir(), "data2", "train/shared.bin", &data, None);
    link(&c, &s3, "data2");
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let client = c.client();
            let data = data.clone();
            std::thread::spawn(move || {
                let file = client
                    .open("/data/shared.bin", &OpenOptions::new().read(true))
                    .unwrap();
                // Each reader starts elsewhere and wraps around.
                let mut buf = vec![0u8; CHUNK as usize];
                for i in 0..chunks {
                    let c = (i + r * 6) % chunks;
                    let off = c * CHUNK;
                    assert_eq!(file.read_at(&mut buf, off).unwrap(), CHUNK as usize);
                    assert!(
                        buf == data[off as usize..(off + CHUNK) as usize],
                        "chunk {c}"
                    );
                }
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(chunks_fetched(&c), chunks);
}

#[test]
fn an_object_changed_in_s3_is_not_served_stale_and_a_new_import_takes_it() {
    let Some(moto) = s3_available("changed") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-changed");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data3"]);
    let old = fill(3, 0, (3 * CHUNK) as usize);
    let new = fill(4, 0, (2 * CHUNK + 7) as usize);
    s3.put(c.dir(), "data3", "train/f.bin", &old, None);
    s3.put(c.dir(), "data3", "train/gone.bin", &old, None);
    link(&c, &s3, "data3");
    // Deleted between import and read: an error naming it, nothing served.
    s3.aws(&["s3", "rm", "s3://data3/train/gone.bin"]);
    let err = c.fails(&["get", "/data/gone.bin", "-"]);
    assert!(
        err.contains("s3://data3/train/gone.bin changed or went away"),
        "{err}"
    );
    assert_ne!(flags(&c, "/data/gone.bin") & HS_LOST, 0);
    s3.put(c.dir(), "data3", "train/f.bin", &new, None);
    let local = c.dir().join("f.out");
    let err = c.fails(&["get", "/data/f.bin", local.to_str().unwrap()]);
    assert!(err.contains("s3://data3/train/f.bin changed"), "{err}");
    assert_ne!(flags(&c, "/data/f.bin") & HS_LOST, 0);
    let out = c.ok(&["task", "import", "/data"]);
    assert!(out.contains("1 updated"), "{out}");
    c.ok(&["get", "/data/f.bin", local.to_str().unwrap()]);
    assert_eq!(std::fs::read(&local).unwrap(), new);
}

#[test]
fn a_write_into_a_released_file_keeps_the_rest_of_it_and_marks_it_dirty() {
    let Some(moto) = s3_available("write") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-write");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data4"]);
    let mut data = fill(5, 0, (4 * CHUNK) as usize);
    s3.put(c.dir(), "data4", "train/w.bin", &data, None);
    link(&c, &s3, "data4");
    let client = c.client();
    let file = client
        .open("/data/w.bin", &OpenOptions::new().read(true).write(true))
        .unwrap();
    let at = CHUNK + 100;
    file.write_at(b"patched", at).unwrap();
    data[at as usize..at as usize + 7].copy_from_slice(b"patched");
    let mut back = vec![0u8; data.len()];
    assert_eq!(file.read_at(&mut back, 0).unwrap(), data.len());
    assert!(back == data);
    assert_ne!(flags(&c, "/data/w.bin") & HS_DIRTY, 0);
}

#[test]
fn associations_survive_a_restart_may_not_overlap_and_unlink() {
    let Some(moto) = s3_available("associations") else {
        return;
    };
    let s3 = S3::start(&moto);
    let mut c = cluster("repo-assoc");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data5"]);
    s3.put(c.dir(), "data5", "train/a/x.bin", b"x", None);
    link(&c, &s3, "data5");
    c.stop_meta(Duration::from_secs(10));
    c.restart_meta();
    let list = c.ok(&["repo", "list"]);
    assert!(
        list.contains("/data") && list.contains("s3://data5/train/"),
        "{list}"
    );
    assert!(list.contains("available"), "{list}");
    assert!(!list.contains("testing"), "credentials shown: {list}");
    let err = c.fails(&[
        "repo",
        "link",
        "/data/a",
        "s3://data5/other",
        "--endpoint",
        &s3.endpoint,
    ]);
    assert!(err.contains("overlaps association 1"), "{err}");
    let err = c.fails(&["repo", "link", "/data", "http://data5/x"]);
    assert!(err.contains("s3://BUCKET"), "{err}");
    c.ok(&["repo", "unlink", "/data"]);
    assert!(!c.ok(&["repo", "list"]).contains("/data"));
    // Its file stays; having no repository, a read is an error naming why.
    let err = c.fails(&["get", "/data/a/x.bin", "-"]);
    assert!(err.contains("no longer linked"), "{err}");
}

#[test]
fn a_bucket_that_does_not_answer_leaves_the_association_misconfigured_with_the_reason() {
    let Some(moto) = s3_available("misconfigured") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-bad");
    c.ok(&["mkdir", "/missing"]);
    let err = c.fails(&[
        "repo",
        "link",
        "/missing",
        "s3://no-such-bucket/x",
        "--endpoint",
        &s3.endpoint,
    ]);
    assert!(err.contains("no-such-bucket"), "{err}");
    let list = c.ok(&["repo", "list"]);
    assert!(list.contains("misconfigured"), "{list}");
    assert!(
        list.contains("NoSuchBucket") || list.contains("404"),
        "{list}"
    );
    // A metadata service with no credentials at all: its import task fails, saying so
    // plainly, and the command that asked for it fails with that reason.
    let bare = Cluster::start_with_env(
        "repo-nocreds",
        1,
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/nacre-test-credentials",
            ),
        ],
    );
    s3.aws(&["s3api", "create-bucket", "--bucket", "data5b"]);
    bare.ok(&["mkdir", "/data"]);
    let mut command = Command::new(common::NACRE_BIN);
    command
        .args([
            "repo",
            "link",
            "/data",
            "s3://data5b/x",
            "--endpoint",
            &s3.endpoint,
        ])
        .args(["--import-now"])
        .env("NACRE_META", &bare.meta_addr)
        .envs(CREDENTIALS);
    let out = run(command);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no S3 credentials"),
        "{}",
        text(&out.stderr)
    );
    let show = bare.ok(&["task", "show", "1"]);
    assert!(show.contains("task 1 (import) failed"), "{show}");
}

#[test]
fn s3_gone_makes_reads_of_released_files_fail_and_they_stay_released() {
    let Some(moto) = s3_available("unreachable") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-gone");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data6"]);
    s3.put(
        c.dir(),
        "data6",
        "train/r.bin",
        &fill(6, 0, 3 * CHUNK as usize),
        None,
    );
    link(&c, &s3, "data6");
    drop(s3);
    let err = c.fails(&["get", "/data/r.bin", "-"]);
    assert!(err.contains("s3://data6/train/r.bin"), "{err}");
    assert_eq!(flags(&c, "/data/r.bin") & HS_RELEASED, HS_RELEASED);
}

#[test]
fn names_the_namespace_cannot_hold_are_reported_and_the_rest_imported() {
    let Some(moto) = s3_available("names") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-names");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data7"]);
    s3.put(c.dir(), "data7", "train/good.txt", b"ok", None);
    s3.put(c.dir(), "data7", "train/a//b.txt", b"empty name", None);
    // A symlink's object with no target in its body.
    s3.put(
        c.dir(),
        "data7",
        "train/link",
        b"",
        Some("file-permissions=0120777"),
    );
    // An object and a directory of one name (S3 holds both, a namespace one): the
    // directory, marker and all, and the object reported.
    s3.put(c.dir(), "data7", "train/both", b"a file", None);
    s3.put(
        c.dir(),
        "data7",
        "train/both/",
        b"",
        Some("file-permissions=0040711"),
    );
    s3.put(c.dir(), "data7", "train/both/in.txt", b"inside", None);
    c.ok(&["mkdir", "/data"]);
    let out = c.nacre(&[
        "repo",
        "link",
        "/data",
        "s3://data7/train",
        "--endpoint",
        &s3.endpoint,
        "--import-now",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FilePath,FileStatus,ErrorCode"), "{stdout}");
    assert!(stdout.contains("InvalidName"), "{stdout}");
    assert!(
        stdout.contains("/data/link,failed,InvalidSymlink"),
        "{stdout}"
    );
    assert_eq!(c.ok(&["get", "/data/good.txt", "-"]), "ok");
    assert!(stdout.contains("/data/both,failed,"), "{stdout}");
    let both = c.client().attr("/data/both").unwrap();
    assert!(both.is_dir());
    assert_eq!(both.mode, 0o711);
    assert_eq!(c.ok(&["get", "/data/both/in.txt", "-"]), "inside");
}

#[test]
fn a_mover_killed_midway_leaves_every_chunk_whole_or_released() {
    let Some(moto) = s3_available("killed") else {
        return;
    };
    let s3 = S3::start(&moto);
    let mut c = cluster("repo-killed");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data8"]);
    let data = fill(8, 0, (256 * CHUNK + 5) as usize);
    s3.put(c.dir(), "data8", "train/k.bin", &data, None);
    link(&c, &s3, "data8");
    // A restore task runs while the metadata service (its runner and mover) is killed,
    // wherever it has got to.
    let asked = c.ok(&["task", "restore", "--no-wait", "/data/k.bin"]);
    assert!(asked.contains("task 2 (restore)"), "{asked}");
    c.kill_meta();
    c.restart_meta();
    // The task (the second: the link's import was the first) survived the restart and
    // runs to its end.
    let done = c.ok(&["task", "wait", "2"]);
    assert!(done.contains("task 2 (restore) succeeded"), "{done}");
    // Restored by this run, or by the one the kill cut short.
    assert!(
        done.contains("1 files restored") || done.contains("1 present already"),
        "{done}"
    );
    assert_eq!(flags(&c, "/data/k.bin"), HS_EXISTS | HS_ARCHIVED);
    let local = c.dir().join("k.out");
    c.ok(&["get", "/data/k.bin", local.to_str().unwrap()]);
    assert!(std::fs::read(&local).unwrap() == data);
}

#[test]
fn an_export_uploads_new_and_changed_files_with_their_metadata_and_archives_them() {
    let Some(moto) = s3_available("export") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-export");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data9"]);
    s3.put(c.dir(), "data9", "train/in.txt", b"imported", None);
    link(&c, &s3, "data9");
    let client = c.client();
    client.mkdir("/data/out", 0o755).unwrap();
    let small = client.create("/data/out/small.txt", 0o640, None).unwrap();
    small.write_at(b"a result", 0).unwrap();
    client
        .chown("/data/out/small.txt", Some(1234), Some(5678))
        .unwrap();
    // Past the multipart threshold: parts in parallel.
    let big_data = fill(9, 0, (20 << 20) + 17);
    let big = client.create("/data/out/big.bin", 0o600, None).unwrap();
    big.write_at(&big_data, 0).unwrap();
    assert_eq!(flags(&c, "/data/out/small.txt"), 0);
    let out = c.ok(&["task", "export", "/data"]);
    assert!(out.contains("2 files"), "{out}");
    assert!(out.contains("1 directories, 1 unchanged"), "{out}");
    // The directory is a marker object with its metadata, as FSx writes it.
    client.chown("/data/out", Some(42), None).unwrap();
    let out = c.ok(&["task", "export", "/data"]);
    assert!(
        out.contains("0 files (0 bytes), 1 directories, 3 unchanged"),
        "{out}"
    );
    let head = s3.head("data9", "train/out/");
    assert!(head.contains("\"file-permissions\": \"0040755\""), "{head}");
    assert!(head.contains("\"file-owner\": \"42\""), "{head}");
    assert!(head.contains("\"ContentLength\": 0"), "{head}");
    let out = c.ok(&["task", "export", "/data"]);
    assert!(
        out.contains("0 files (0 bytes), 0 directories, 3 unchanged"),
        "{out}"
    );

    let head = s3.head("data9", "train/out/small.txt");
    assert!(head.contains("\"file-permissions\": \"0100640\""), "{head}");
    assert!(head.contains("\"file-owner\": \"1234\""), "{head}");
    assert!(head.contains("\"file-group\": \"5678\""), "{head}");
    assert!(head.contains("\"file-mtime\""), "{head}");
    let local = c.dir().join("down");
    s3.aws(&[
        "s3",
        "cp",
        "s3://data9/train/out/big.bin",
        local.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&local).unwrap() == big_data);
    let head = s3.head("data9", "train/out/big.bin");
    assert!(
        head.contains("-3\\\""),
        "a multipart upload's ETag ends in -3: {head}"
    );
    assert_eq!(flags(&c, "/data/out/big.bin"), HS_EXISTS | HS_ARCHIVED);

    // Written again: dirty, and the next export takes it (and only it).
    let again = client
        .open("/data/out/small.txt", &OpenOptions::new().write(true))
        .unwrap();
    again.write_at(b"A", 0).unwrap();
    assert_ne!(flags(&c, "/data/out/small.txt") & HS_DIRTY, 0);
    let out = c.ok(&["task", "export", "/data/out"]);
    assert!(
        out.contains("1 files") && out.contains("1 unchanged"),
        "{out}"
    );
    s3.aws(&[
        "s3",
        "cp",
        "s3://data9/train/out/small.txt",
        local.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&local).unwrap(), b"A result");
    assert_eq!(flags(&c, "/data/out/small.txt"), HS_EXISTS | HS_ARCHIVED);
}

#[test]
fn auto_import_reflects_new_changed_and_deleted_objects() {
    let Some(moto) = s3_available("auto-import") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-auto");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data10"]);
    s3.put(c.dir(), "data10", "train/first.txt", b"one", None);
    c.ok(&["mkdir", "/data"]);
    c.ok(&[
        "repo",
        "link",
        "/data",
        "s3://data10/train",
        "--endpoint",
        &s3.endpoint,
        "--auto-import",
        "new,changed,deleted",
        "--import-now",
    ]);
    let client = c.client();
    s3.put(c.dir(), "data10", "train/sub/second.txt", b"two", None);
    eventually("the new object's import", || {
        client.attr("/data/sub/second.txt").is_ok()
    });
    assert_eq!(c.ok(&["get", "/data/sub/second.txt", "-"]), "two");
    s3.put(c.dir(), "data10", "train/first.txt", b"one, changed", None);
    eventually("the changed object's import", || {
        client
            .stat("/data/first.txt")
            .is_ok_and(|st| st.size_bytes == 12)
    });
    assert_eq!(c.ok(&["get", "/data/first.txt", "-"]), "one, changed");
    s3.aws(&["s3", "rm", "s3://data10/train/sub/second.txt"]);
    eventually("the deleted object's file going", || {
        client.attr("/data/sub/second.txt").is_err()
    });
    assert!(
        c.meta_log().contains("auto-import /data"),
        "{}",
        c.meta_log()
    );
}

#[test]
fn an_export_reports_a_key_too_long_for_s3_and_exports_the_rest() {
    let Some(moto) = s3_available("long key") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-longkey");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data11"]);
    c.ok(&["mkdir", "/data"]);
    c.ok(&[
        "repo",
        "link",
        "/data",
        "s3://data11/train",
        "--endpoint",
        &s3.endpoint,
    ]);
    let client = c.client();
    // Five names of 250 bytes: a path the namespace takes, a key over S3's 1,024 bytes.
    let mut deep = String::from("/data");
    for i in 0..5 {
        deep.push_str(&format!(
            "/{}",
            char::from(b'a' + i).to_string().repeat(250)
        ));
        client.mkdir(&deep, 0o755).unwrap();
    }
    let long = format!("{deep}/f");
    client
        .create(&long, 0o644, None)
        .unwrap()
        .write_at(b"x", 0)
        .unwrap();
    client
        .create("/data/ok.txt", 0o644, None)
        .unwrap()
        .write_at(b"ok", 0)
        .unwrap();
    let out = c.nacre(&["task", "export", "/data"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("1 files"), "{stdout}");
    assert!(stdout.contains(",failed,PathSizeTooLong,"), "{stdout}");
    let head = s3.head("data11", "train/ok.txt");
    assert!(head.contains("\"ContentLength\": 2"), "{head}");
}

#[test]
fn a_released_file_renamed_over_while_open_is_not_hydrated_for_the_other() {
    let Some(moto) = s3_available("renamed") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-renamed");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data12"]);
    s3.put(
        c.dir(),
        "data12",
        "train/a.bin",
        &fill(12, 0, 2 * CHUNK as usize),
        None,
    );
    s3.put(
        c.dir(),
        "data12",
        "train/b.bin",
        &fill(13, 0, 2 * CHUNK as usize),
        None,
    );
    link(&c, &s3, "data12");
    let client = c.client();
    let a = client
        .open("/data/a.bin", &OpenOptions::new().read(true))
        .unwrap();
    client.rename("/data/b.bin", "/data/a.bin").unwrap();
    let mut buf = vec![0u8; 4096];
    // The open handle is a's: never zeros (a's chunks unfetched) nor b's bytes.
    let err = a.read_at(&mut buf, 0).unwrap_err();
    assert!(err.to_string().contains("renamed or replaced"), "{err}");
    assert_eq!(chunks_fetched(&c), 0);
}

#[test]
fn tasks_wait_pending_for_a_runner_and_are_listed_shown_and_canceled() {
    // No S3 needed: this service runs no tasks, so they stay pending.
    let mut env = CREDENTIALS.to_vec();
    env.push(("NACRE_NO_TASK_RUNNER", "1"));
    let c = Cluster::start_with_env("repo-tasks", 1, &env);
    c.ok(&["mkdir", "/data"]);
    let asked = c.ok(&["task", "import", "--no-wait", "/data"]);
    assert!(asked.contains("task 1 (import): pending"), "{asked}");
    c.ok(&["task", "export", "--no-wait", "/data/out/"]);
    let list = c.ok(&["task", "list"]);
    assert!(list.contains("import") && list.contains("export"), "{list}");
    assert_eq!(list.matches("pending").count(), 2, "{list}");
    let json = c.ok(&["task", "show", "2", "--json"]);
    assert!(json.contains("\"state\":\"pending\""), "{json}");
    assert!(json.contains("\"paths\":[\"/data/out\"]"), "{json}");
    assert!(json.contains("\"report\":[]"), "{json}");

    let canceled = c.ok(&["task", "cancel", "1"]);
    assert!(canceled.contains("task 1 (import): canceled"), "{canceled}");
    let show = c.ok(&["task", "show", "1"]);
    assert!(show.contains("task 1 (import) canceled: /data"), "{show}");
    // A finished task cannot be canceled; an unknown one is named.
    let err = c.fails(&["task", "cancel", "1"]);
    assert!(err.contains("1 (canceled)"), "{err}");
    let err = c.fails(&["task", "show", "77"]);
    assert!(err.contains("task 77"), "{err}");
    // Waiting on a canceled task ends at once, and fails.
    let err = c.fails(&["task", "wait", "1"]);
    assert!(err.contains("task 1 is canceled"), "{err}");
    // A user may not ask for imports (a restore, yes).
    let alice = nacre::Client::connect_with(
        &c.meta_addr,
        nacre::ClientOptions {
            cred: nacre::meta::types::Cred {
                uid: 1000,
                gid: 1000,
                groups: vec![],
            },
            ..nacre::ClientOptions::default()
        },
    )
    .unwrap();
    let err = alice
        .task_create(TaskKind::Import, &["/data".to_owned()])
        .unwrap_err();
    assert!(err.to_string().contains("only root"), "{err}");
    let restore = alice
        .task_create(TaskKind::Restore, &["/data".to_owned()])
        .unwrap();
    assert_eq!(restore.state, TaskState::Pending);
    // A user sees their own tasks only; root sees all.
    let theirs: Vec<u64> = alice.task_list().unwrap().iter().map(|t| t.id).collect();
    assert_eq!(theirs, [restore.id]);
    assert!(alice.task_show(1).is_err());
    assert_eq!(c.client().task_list().unwrap().len(), 3);
}

/// The auto-export tasks of `c` that succeeded.
fn auto_exports_done(c: &Cluster) -> usize {
    c.client()
        .task_list()
        .unwrap()
        .iter()
        .filter(|t| t.kind == TaskKind::AutoExport && t.state == TaskState::Succeeded)
        .count()
}

#[test]
fn files_closed_after_writing_are_auto_exported_with_what_was_written_last() {
    let Some(moto) = s3_available("auto-export") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-auto-export");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data12"]);
    c.ok(&["mkdir", "/data"]);
    let link = [
        "repo",
        "link",
        "/data",
        "s3://data12/train",
        "--endpoint",
        &s3.endpoint,
    ];
    c.ok(&[&link[..], &["--auto-export", "new,changed"]].concat());
    let client = c.client();
    let get = |key: &str| {
        let local = c.dir().join("got");
        s3.aws(&[
            "s3",
            "cp",
            &format!("s3://data12/train/{key}"),
            local.to_str().unwrap(),
        ]);
        std::fs::read(&local).unwrap()
    };

    // A new file, closed: exported by the service, with its metadata.
    let file = client.create("/data/new.txt", 0o640, None).unwrap();
    file.write_at(b"first", 0).unwrap();
    drop(file);
    eventually("the first auto-export", || auto_exports_done(&c) == 1);
    assert_eq!(get("new.txt"), b"first");
    assert_eq!(flags(&c, "/data/new.txt"), HS_EXISTS | HS_ARCHIVED);

    // A handle opened before a manual export writes after it: its close makes the file
    // dirty again, and the auto-export takes what it wrote last.
    let writer = client
        .open("/data/new.txt", &OpenOptions::new().write(true))
        .unwrap();
    writer.write_at(b"F", 0).unwrap();
    c.ok(&["task", "export", "/data"]);
    assert_eq!(get("new.txt"), b"First");
    writer.write_at(b"L", 4).unwrap();
    assert_eq!(flags(&c, "/data/new.txt"), HS_EXISTS | HS_ARCHIVED);
    drop(writer);
    eventually("the second auto-export", || auto_exports_done(&c) == 2);
    assert_eq!(get("new.txt"), b"FirsL");
    assert_eq!(flags(&c, "/data/new.txt"), HS_EXISTS | HS_ARCHIVED);
    // A handle opened only to read asks for no export.
    drop(
        client
            .open("/data/new.txt", &OpenOptions::new().read(true))
            .unwrap(),
    );
    let tasks = client.task_list().unwrap();
    let auto = tasks.iter().filter(|t| t.kind == TaskKind::AutoExport);
    assert_eq!(auto.count(), 2, "{tasks:?}");
}

#[test]
fn released_files_read_right_at_every_stripe_geometry_and_chunk_size() {
    let Some(moto) = s3_available("geometries") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-geometries");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data13"]);
    // Stripe sizes at, below and across the chunk; one and two targets; a chunk that is
    // no multiple of the stripe.
    let cases = [
        ("64K", "2", 64 << 10),
        ("64K", "1", 128 << 10),
        ("192K", "2", 128 << 10),
        ("1M", "-1", 64 << 10),
        ("128K", "2", 1 << 20),
    ];
    let size = (3 << 20) + 4321;
    for (i, (stripe, count, chunk)) in cases.iter().enumerate() {
        let data = fill(100 + i as u64, 0, size);
        s3.put(c.dir(), "data13", &format!("g{i}/f.bin"), &data, None);
        let dir = format!("/g{i}");
        c.ok(&["mkdir", &dir]);
        c.ok(&["setstripe", "-c", count, "-S", stripe, &dir]);
        c.ok(&[
            "repo",
            "link",
            &dir,
            &format!("s3://data13/g{i}"),
            "--endpoint",
            &s3.endpoint,
            "--chunk-size",
            &chunk.to_string(),
            "--import-now",
        ]);
        let path = format!("{dir}/f.bin");
        // The imported file has its directory's layout.
        let bytes = nacre::units::parse_size(stripe).unwrap();
        let shown = c.ok(&["getstripe", &path]);
        assert!(
            shown.contains(&format!("stripe_size:   {bytes}")),
            "{path}: {shown}"
        );
        let file = c
            .client()
            .open(&path, &OpenOptions::new().read(true))
            .unwrap();
        // Reads of every size class at offsets across stripe and chunk edges, in an order
        // that goes back and forth.
        let mut seed = 0x9e37_79b9_u64 + i as u64;
        for _ in 0..24 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let at = (seed >> 17) as usize % size;
            let len = [1, 4096, 65_536, 200_000][(seed >> 7) as usize % 4].min(size - at);
            let mut buf = vec![0u8; len];
            let got = file.read_at(&mut buf, at as u64).unwrap();
            assert_eq!(
                got, len,
                "{path} {stripe}x{count} chunk {chunk}: read at {at}"
            );
            assert!(
                buf == data[at..at + len],
                "{path} {stripe}x{count} chunk {chunk}: bytes at {at}+{len}"
            );
        }
        let local = c.dir().join(format!("g{i}.out"));
        c.ok(&["get", &path, local.to_str().unwrap()]);
        assert!(
            std::fs::read(&local).unwrap() == data,
            "{path} {stripe}x{count} chunk {chunk}: whole file"
        );
        assert_eq!(flags(&c, &path), HS_EXISTS | HS_ARCHIVED, "{path}");
        // Released (every object punched) and read again.
        drop(file);
        c.ok(&["task", "release", &path]);
        assert_eq!(
            flags(&c, &path),
            HS_EXISTS | HS_ARCHIVED | HS_RELEASED,
            "{path}"
        );
        std::fs::remove_file(&local).unwrap();
        c.ok(&["get", &path, local.to_str().unwrap()]);
        assert!(
            std::fs::read(&local).unwrap() == data,
            "{path} {stripe}x{count} chunk {chunk}: whole file after a release"
        );
    }
}

/// Bytes allocated on disk for everything under the targets' directories.
fn allocated(c: &Cluster) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut pending: Vec<PathBuf> = (0..2).map(|i| c.target_dir(i)).collect();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                bytes += meta.blocks() * 512;
            }
        }
    }
    bytes
}

#[test]
fn a_release_drops_archived_data_but_not_of_open_changed_or_recent_files() {
    let Some(moto) = s3_available("release") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-release");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data14"]);
    s3.put(
        c.dir(),
        "data14",
        "train/in.bin",
        &fill(1, 0, 100_000),
        None,
    );
    link(&c, &s3, "data14");
    c.ok(&["setstripe", "-c", "2", "-S", "64K", "/data"]);
    let client = c.client();
    let data = fill(14, 0, (2 << 20) + 999);
    let out = client.create("/data/out.bin", 0o644, None).unwrap();
    out.write_at(&data, 0).unwrap();
    drop(out);
    let kept = client.create("/data/kept.txt", 0o644, None).unwrap();
    kept.write_at(b"only here", 0).unwrap();
    drop(kept);
    c.ok(&["task", "export", "/data/out.bin"]);
    assert_eq!(flags(&c, "/data/out.bin"), HS_EXISTS | HS_ARCHIVED);
    let before = allocated(&c);

    // Held open by a reader (another client than the command's): busy, and left whole.
    let reader = client
        .open("/data/out.bin", &OpenOptions::new().read(true))
        .unwrap();
    let busy = c.nacre(&["task", "release", "/data"]);
    let shown = text(&busy.stdout);
    assert_eq!(busy.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("/data/out.bin,failed,ResourceBusy,"),
        "{shown}"
    );
    assert!(shown.contains("1 released already"), "{shown}");
    assert!(shown.contains("1 not exported"), "{shown}");
    assert_eq!(flags(&c, "/data/out.bin"), HS_EXISTS | HS_ARCHIVED);
    let mut buf = vec![0u8; data.len()];
    assert_eq!(reader.read_at(&mut buf, 0).unwrap(), data.len());
    assert!(buf == data);
    drop(reader);

    // Written a moment ago: not idle for a day.
    let recent = c.ok(&["task", "release", "--idle", "1", "/data/out.bin"]);
    assert!(
        recent.contains("1 accessed within the idle time"),
        "{recent}"
    );
    assert_eq!(flags(&c, "/data/out.bin"), HS_EXISTS | HS_ARCHIVED);

    // Marked never to be released, then cleared (its owner may, as with lfs hsm_set).
    let set = c.ok(&["hsm", "set", "--norelease", "/data/out.bin"]);
    assert!(
        set.contains("(0x00000019) exists archived norelease"),
        "{set}"
    );
    let kept = c.ok(&["task", "release", "/data/out.bin"]);
    assert!(kept.contains("1 marked norelease"), "{kept}");
    // Marked dirty by hand: exported again, and norelease stays.
    c.ok(&["hsm", "set", "--dirty", "/data/out.bin"]);
    let again = c.ok(&["task", "export", "/data/out.bin"]);
    assert!(again.contains("1 files"), "{again}");
    assert_eq!(
        flags(&c, "/data/out.bin"),
        HS_EXISTS | HS_ARCHIVED | 0x10,
        "norelease stays across an export"
    );
    let bad = c.nacre(&["hsm", "set", "/data/out.bin"]);
    assert_eq!(bad.status.code(), Some(2), "a flag is required");
    c.ok(&["hsm", "clear", "--norelease", "/data/out.bin"]);
    assert_eq!(flags(&c, "/data/out.bin"), HS_EXISTS | HS_ARCHIVED);
    let done = c.ok(&["task", "release", "/data/out.bin"]);
    assert!(
        done.contains(&format!("1 files released ({} bytes)", data.len())),
        "{done}"
    );
    assert_eq!(
        flags(&c, "/data/out.bin"),
        HS_EXISTS | HS_ARCHIVED | HS_RELEASED
    );
    let state = c.ok(&["hsm", "state", "/data/out.bin"]);
    assert!(
        state.contains("(0x0000000d) released exists archived"),
        "{state}"
    );
    let after = allocated(&c);
    assert!(
        before.saturating_sub(after) >= data.len() as u64 * 9 / 10,
        "the targets hold {before} bytes before the release and {after} after"
    );
    // The size stays, and a read fetches every chunk again.
    let file = client
        .open("/data/out.bin", &OpenOptions::new().read(true))
        .unwrap();
    assert_eq!(file.size().unwrap(), data.len() as u64);
    drop(file);
    let fetched = chunks_fetched(&c);
    let local = c.dir().join("out.back");
    c.ok(&["get", "/data/out.bin", local.to_str().unwrap()]);
    assert!(std::fs::read(&local).unwrap() == data);
    assert_eq!(
        chunks_fetched(&c) - fetched,
        (data.len() as u64).div_ceil(CHUNK)
    );
    assert_eq!(flags(&c, "/data/out.bin"), HS_EXISTS | HS_ARCHIVED);

    // Written since its export: its only current copy is here.
    let writer = client
        .open("/data/out.bin", &OpenOptions::new().write(true))
        .unwrap();
    writer.write_at(b"new", 5).unwrap();
    drop(writer);
    let dirty = c.ok(&["task", "release", "/data/out.bin"]);
    assert!(dirty.contains("1 changed since exported"), "{dirty}");
    assert_eq!(
        flags(&c, "/data/out.bin"),
        HS_EXISTS | HS_ARCHIVED | HS_DIRTY
    );
    // Exported again and moved out of its association: a handle opened there is counted
    // too (the file still links to its object, so it may be released).
    c.ok(&["task", "export", "/data/out.bin"]);
    client.rename("/data/out.bin", "/moved.bin").unwrap();
    let reader = client
        .open("/moved.bin", &OpenOptions::new().read(true))
        .unwrap();
    let busy = client.release("/moved.bin", 0).unwrap_err();
    assert_eq!(busy.errno(), libc::EBUSY, "{busy}");
    drop(reader);
    assert!(matches!(
        client.release("/moved.bin", 0).unwrap(),
        nacre::meta::repo::ReleaseOutcome::Released(_)
    ));
    let local = c.dir().join("moved.back");
    c.ok(&["get", "/moved.bin", local.to_str().unwrap()]);
    let mut want = data.clone();
    want[5..8].copy_from_slice(b"new");
    assert!(std::fs::read(&local).unwrap() == want);

    // The task asked with --idle keeps it.
    let id = recent
        .split_whitespace()
        .nth(1)
        .filter(|_| recent.starts_with("task "))
        .unwrap_or_else(|| panic!("no task id in {recent}"));
    let json = c.ok(&["task", "show", id, "--json"]);
    assert!(
        json.contains("\"kind\":\"release\"") && json.contains("\"idle_days\":1"),
        "{json}"
    );
}

#[test]
fn readers_racing_releases_read_the_file_bytes_never_holes() {
    let Some(moto) = s3_available("release-race") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-release-race");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data15"]);
    link(&c, &s3, "data15");
    c.ok(&["setstripe", "-c", "2", "-S", "64K", "/data"]);
    let client = c.client();
    let data = fill(15, 0, (1 << 20) + 333);
    let file = client.create("/data/hot.bin", 0o644, None).unwrap();
    file.write_at(&data, 0).unwrap();
    drop(file);
    c.ok(&["task", "export", "/data/hot.bin"]);
    let outcomes = std::sync::Mutex::new(Vec::new());
    let releaser = c.client();
    let readers = [c.client(), c.client()];
    // The readers go on until the releaser has released the file under them a few times
    // (or tried RELEASE_TRIES times), so releases do land between their handles.
    const RELEASE_TRIES: usize = 2000;
    const RELEASES: usize = 3;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut released = 0;
            for _ in 0..RELEASE_TRIES {
                let outcome = match releaser.release("/data/hot.bin", 0) {
                    Ok(nacre::meta::repo::ReleaseOutcome::Released(_)) => {
                        released += 1;
                        "released".to_owned()
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(e) => {
                        assert_eq!(e.errno(), libc::EBUSY, "{e}");
                        "busy".to_owned()
                    }
                };
                outcomes.lock().unwrap().push(outcome);
                if released == RELEASES {
                    break;
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        for (reader, client) in readers.into_iter().enumerate() {
            let (data, done) = (&data, &done);
            scope.spawn(move || {
                let mut buf = vec![0u8; data.len()];
                let mut round = 0;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    round += 1;
                    let file = client
                        .open("/data/hot.bin", &OpenOptions::new().read(true))
                        .unwrap();
                    // Two reads of one handle: a release between them must not be.
                    for half in [0, data.len() / 2] {
                        buf.fill(0);
                        let want = &data[half..];
                        let got = file.read_at(&mut buf[..want.len()], half as u64).unwrap();
                        assert_eq!(got, want.len(), "reader {reader} round {round}");
                        assert!(
                            buf[..want.len()] == *want,
                            "reader {reader} round {round}: wrong bytes at {half}"
                        );
                    }
                }
            });
        }
    });
    let mut tally = BTreeMap::new();
    for o in outcomes.into_inner().unwrap() {
        *tally.entry(o).or_insert(0) += 1;
    }
    eprintln!("releases beside the readers: {tally:?}");
    assert!(
        tally.get("released").copied().unwrap_or(0) >= 1,
        "no release landed beside the readers: {tally:?}"
    );
    // No handle is left counted: the file is released now, and read right once more.
    let last = client.release("/data/hot.bin", 0).unwrap();
    assert!(
        matches!(
            last,
            nacre::meta::repo::ReleaseOutcome::Released(_)
                | nacre::meta::repo::ReleaseOutcome::AlreadyReleased
        ),
        "{last:?}"
    );
    assert_eq!(
        flags(&c, "/data/hot.bin"),
        HS_EXISTS | HS_ARCHIVED | HS_RELEASED
    );
    let local = c.dir().join("hot.back");
    c.ok(&["get", "/data/hot.bin", local.to_str().unwrap()]);
    assert!(std::fs::read(&local).unwrap() == data);
}

/// The keys of `bucket`, in order.
fn keys(s3: &S3, bucket: &str) -> Vec<String> {
    let listed = s3.aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        bucket,
        "--query",
        "Contents[].Key",
        "--output",
        "text",
    ]);
    let mut keys: Vec<String> = listed
        .split_whitespace()
        .filter(|k| *k != "None")
        .map(str::to_owned)
        .collect();
    keys.sort();
    keys
}

#[test]
fn unlinks_and_renames_are_auto_exported_as_deletions_only_when_asked() {
    let Some(moto) = s3_available("auto-export-deleted") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-auto-delete");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data16"]);
    s3.put(c.dir(), "data16", "train/old.txt", b"imported", None);
    s3.put(
        c.dir(),
        "data16",
        "train/dir/in.txt",
        b"in a directory",
        None,
    );
    c.ok(&["mkdir", "/data"]);
    c.ok(&["mkdir", "/keep"]);
    let link = |path: &str, prefix: &str, events: &str| {
        c.ok(&[
            "repo",
            "link",
            path,
            &format!("s3://data16/{prefix}"),
            "--endpoint",
            &s3.endpoint,
            "--auto-export",
            events,
            "--import-now",
        ]);
    };
    link("/data", "train", "new,changed,deleted");
    link("/keep", "keep", "new,changed");
    let client = c.client();
    let write = |path: &str, bytes: &[u8]| {
        let file = client.create(path, 0o644, None).unwrap();
        file.write_at(bytes, 0).unwrap();
    };
    let has = |want: &[&str], gone: &[&str]| {
        let now = keys(&s3, "data16");
        want.iter().all(|k| now.iter().any(|n| n == k))
            && gone.iter().all(|k| !now.contains(&k.to_string()))
    };

    // A new file, closed: exported; unlinked: its object deleted.
    write("/data/a.txt", b"a");
    eventually("a.txt exported", || has(&["train/a.txt"], &[]));
    client.unlink("/data/a.txt").unwrap();
    eventually("a.txt deleted", || has(&[], &["train/a.txt"]));

    // An imported file renamed: the old key goes, the new one has its bytes.
    client.rename("/data/old.txt", "/data/new.txt").unwrap();
    eventually("old.txt moved", || {
        has(&["train/new.txt"], &["train/old.txt"])
    });
    let local = c.dir().join("moved");
    s3.aws(&[
        "s3",
        "cp",
        "s3://data16/train/new.txt",
        local.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&local).unwrap(), b"imported");

    // A directory renamed: exported at its new place, marker and all, and the objects its
    // files were linked to are deleted; one that no file was linked to (put after the
    // import) stays: nothing is deleted by prefix.
    s3.put(
        c.dir(),
        "data16",
        "train/dir/unseen.txt",
        b"never imported",
        None,
    );
    client.rename("/data/dir", "/data/dir2").unwrap();
    eventually("dir moved", || {
        has(
            &["train/dir2/", "train/dir2/in.txt", "train/dir/unseen.txt"],
            &["train/dir/in.txt"],
        )
    });
    s3.aws(&[
        "s3",
        "cp",
        "s3://data16/train/dir2/in.txt",
        local.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&local).unwrap(), b"in a directory");
    // A directory renamed: its markers, nested ones too, move; removed: its marker goes.
    client.mkdir("/data/dir2/old", 0o750).unwrap();
    client.mkdir("/data/dir2/old/deeper", 0o700).unwrap();
    let file = client.create("/data/dir2/old/f", 0o644, None).unwrap();
    file.write_at(b"f", 0).unwrap();
    drop(file);
    eventually("old/f exported", || has(&["train/dir2/old/f"], &[]));
    c.ok(&["task", "export", "/data/dir2/old"]);
    assert!(has(&["train/dir2/old/", "train/dir2/old/deeper/"], &[]));
    client.rename("/data/dir2/old", "/data/dir2/sub").unwrap();
    eventually("old moved to sub", || {
        has(
            &[
                "train/dir2/sub/",
                "train/dir2/sub/deeper/",
                "train/dir2/sub/f",
            ],
            &[
                "train/dir2/old/",
                "train/dir2/old/deeper/",
                "train/dir2/old/f",
            ],
        )
    });
    client.unlink("/data/dir2/sub/f").unwrap();
    client.rmdir("/data/dir2/sub/deeper").unwrap();
    client.rmdir("/data/dir2/sub").unwrap();
    eventually("sub removed", || {
        has(
            &[],
            &[
                "train/dir2/sub/",
                "train/dir2/sub/deeper/",
                "train/dir2/sub/f",
            ],
        )
    });

    // Moved where it cannot be exported (a key longer than S3's 1024 bytes): its old
    // object stays, and the report says why.
    let mut deep = "/data".to_owned();
    for level in 0..5 {
        deep = format!(
            "{deep}/{}",
            char::from(b'a' + level).to_string().repeat(250)
        );
        client.mkdir(&deep, 0o755).unwrap();
    }
    client
        .rename("/data/new.txt", &format!("{deep}/new.txt"))
        .unwrap();
    let tasks_ended = || {
        client
            .task_list()
            .unwrap()
            .iter()
            .all(|t| !matches!(t.state, TaskState::Pending | TaskState::Executing))
    };
    eventually("the long rename's auto-export", || {
        tasks_ended()
            && client
                .task_list()
                .unwrap()
                .iter()
                .any(|t| t.counts.failed == 2)
    });
    let failed = client
        .task_list()
        .unwrap()
        .into_iter()
        .find(|t| t.counts.failed == 2)
        .unwrap();
    let shown = c.ok(&["task", "show", &failed.id.to_string()]);
    assert!(shown.contains(",failed,PathSizeTooLong,"), "{shown}");
    assert!(
        shown.contains("/data/new.txt,failed,InternalError,\"its objects were not deleted"),
        "{shown}"
    );
    assert!(has(&["train/new.txt"], &[]));

    // Without `deleted`: an unlinked file's object stays.
    write("/keep/a.txt", b"kept");
    eventually("keep/a.txt exported", || has(&["keep/a.txt"], &[]));
    client.unlink("/keep/a.txt").unwrap();
    write("/keep/b.txt", b"later");
    eventually("keep/b.txt exported", || has(&["keep/b.txt"], &[]));
    eventually("every auto-export ended", tasks_ended);
    assert_eq!(
        keys(&s3, "data16"),
        [
            "keep/a.txt",
            "keep/b.txt",
            "train/dir/unseen.txt",
            "train/dir2/",
            "train/dir2/in.txt",
            "train/new.txt"
        ]
    );
}

#[test]
fn swapped_released_files_keep_their_bytes_through_auto_export() {
    let Some(moto) = s3_available("auto-export-swap") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-swap");
    s3.aws(&["s3api", "create-bucket", "--bucket", "data17"]);
    let (a, b) = (
        fill(3, 0, 3 * CHUNK as usize + 5),
        fill(4, 0, 2 * CHUNK as usize),
    );
    s3.put(c.dir(), "data17", "train/a", &a, None);
    s3.put(c.dir(), "data17", "train/b", &b, None);
    c.ok(&["mkdir", "/data"]);
    c.ok(&[
        "repo",
        "link",
        "/data",
        "s3://data17/train",
        "--endpoint",
        &s3.endpoint,
        "--chunk-size",
        &CHUNK.to_string(),
        "--auto-export",
        "new,changed,deleted",
        "--import-now",
    ]);
    let client = c.client();
    // Released both; swapped through a third name. Each export of a file at the other's
    // old key would overwrite that file's only copy: it must wait, or the other go first.
    client.rename("/data/a", "/data/tmp").unwrap();
    client.rename("/data/b", "/data/a").unwrap();
    client.rename("/data/tmp", "/data/b").unwrap();
    eventually("every auto-export ended", || {
        client
            .task_list()
            .unwrap()
            .iter()
            .all(|t| !matches!(t.state, TaskState::Pending | TaskState::Executing))
    });
    let read = |path: &str| {
        let file = client.open(path, &OpenOptions::new().read(true)).unwrap();
        let mut buf = vec![0u8; 4 * CHUNK as usize];
        let n = file.read_at(&mut buf, 0).unwrap();
        buf.truncate(n);
        buf
    };
    assert!(read("/data/a") == b, "/data/a holds b's bytes");
    assert!(read("/data/b") == a, "/data/b holds a's bytes");
    assert_eq!(flags(&c, "/data/a") & HS_LOST, 0);
    assert_eq!(flags(&c, "/data/b") & HS_LOST, 0);
}

#[test]
fn symlinks_import_and_export_as_fsx_stores_them() {
    let Some(moto) = s3_available("symlinks") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-symlinks");
    s3.aws(&["s3api", "create-bucket", "--bucket", "links"]);
    s3.put(c.dir(), "links", "train/real.txt", b"hello", None);
    s3.put(
        c.dir(),
        "links",
        "train/to-real",
        b"real.txt",
        Some("file-permissions=0120777,file-owner=1001,file-group=2002,file-mtime=1700000000000000000ns"),
    );
    s3.put(
        c.dir(),
        "links",
        "train/sub/up",
        b"../real.txt",
        Some("file-permissions=0120777"),
    );
    let out = link(&c, &s3, "links");
    assert!(out.contains("3 files created"), "{out}");
    assert!(out.contains("0 failed"), "{out}");

    let client = c.client();
    let link_attr = client.attr("/data/to-real").unwrap();
    assert!(link_attr.is_symlink());
    assert_eq!(link_attr.symlink.as_deref(), Some("real.txt"));
    assert_eq!((link_attr.uid, link_attr.gid), (1001, 2002));
    assert_eq!(link_attr.mtime_ns, 1_700_000_000_000_000_000);
    assert_eq!(client.lstat("/data/to-real").unwrap().size_bytes, 8);
    assert_eq!(c.ok(&["readlink", "/data/sub/up"]), "../real.txt\n");
    // Read through the links: the released file behind them is fetched.
    assert_eq!(c.ok(&["get", "/data/sub/up", "-"]), "hello");
    assert_eq!(client.stat("/data/to-real").unwrap().size_bytes, 5);
    let ls = c.ok(&["ls", "-l", "/data"]);
    assert!(
        ls.contains("lrwxrwxrwx") && ls.contains("to-real -> real.txt"),
        "{ls}"
    );
    assert_eq!(
        flags(&c, "/data/to-real"),
        HS_EXISTS | HS_ARCHIVED,
        "a link is archived, never released"
    );
    let again = c.ok(&["task", "import", "/data"]);
    assert!(
        again.contains("0 files created, 0 updated, 3 unchanged"),
        "{again}"
    );

    // A link made here goes to S3 as FSx writes one: the target as the body.
    c.ok(&["ln", "-s", "sub/up", "/data/new-link"]);
    let out = c.ok(&["task", "export", "/data"]);
    assert!(out.contains("1 files (6 bytes)"), "{out}");
    let head = s3.head("links", "train/new-link");
    assert!(head.contains("\"file-permissions\": \"0120777\""), "{head}");
    assert!(head.contains("\"ContentLength\": 6"), "{head}");
    let local = c.dir().join("body");
    s3.aws(&[
        "s3",
        "cp",
        "s3://links/train/new-link",
        local.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&local).unwrap(), b"sub/up");
    assert_eq!(flags(&c, "/data/new-link"), HS_EXISTS | HS_ARCHIVED);
    // Archived: the next export leaves it, and an import takes it as its own.
    let out = c.ok(&["task", "export", "/data"]);
    assert!(out.contains("0 files (0 bytes)"), "{out}");
    let again = c.ok(&["task", "import", "/data"]);
    assert!(
        again.contains("0 files created, 0 updated, 4 unchanged"),
        "{again}"
    );

    // A link replaced in S3 takes the new target at the next import.
    s3.put(
        c.dir(),
        "links",
        "train/to-real",
        b"sub/up",
        Some("file-permissions=0120777"),
    );
    let again = c.ok(&["task", "import", "/data"]);
    assert!(again.contains("0 files created, 1 updated"), "{again}");
    assert_eq!(c.ok(&["readlink", "/data/to-real"]), "sub/up\n");
    assert_eq!(c.ok(&["get", "/data/to-real", "-"]), "hello");

    // A link replaced by a rename (`ln -sfn`'s way) is exported at its key: the replaced
    // one's link to the object went with it.
    c.ok(&["ln", "-s", "real.txt", "/data/tmp-link"]);
    c.ok(&["mv", "/data/tmp-link", "/data/new-link"]);
    let out = c.ok(&["task", "export", "/data"]);
    assert!(
        out.contains("1 files (8 bytes)") && out.contains("0 failed"),
        "{out}"
    );
    s3.aws(&[
        "s3",
        "cp",
        "s3://links/train/new-link",
        local.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&local).unwrap(), b"real.txt");

    // A task's path through a link exports the file at its own key.
    let made = client.create("/data/sub/made.txt", 0o644, None).unwrap();
    made.write_at(b"made", 0).unwrap();
    drop(made);
    c.ok(&["ln", "-s", "sub", "/data/sub-link"]);
    c.ok(&["task", "export", "/data/sub-link/made.txt"]);
    let held = keys(&s3, "links");
    assert!(held.contains(&"train/sub/made.txt".to_owned()), "{held:?}");
    assert!(
        !held.iter().any(|k| k.starts_with("train/sub-link/")),
        "{held:?}"
    );

    // An import never writes through a link of the namespace: objects under a directory
    // where a link stands are reported, and nothing appears where the link leads.
    c.ok(&["mkdir", "/outside"]);
    c.ok(&["ln", "-s", "/outside", "/data/esc"]);
    s3.put(c.dir(), "links", "train/esc/x.txt", b"escaped?", None);
    s3.put(
        c.dir(),
        "links",
        "train/esc/deeper/y.txt",
        b"escaped?",
        None,
    );
    let out = c.nacre(&["task", "import", "/data"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("/data/esc,failed,ResourceBusy"), "{stdout}");
    assert!(
        stdout.contains("/data/esc/x.txt,failed,ResourceBusy"),
        "{stdout}"
    );
    assert!(client.readdir("/outside").unwrap().is_empty());

    // Hard links are not kept under an association (its objects are one per path).
    for (from, to) in [
        ("/data/real.txt", "/data/hard"),
        ("/data/real.txt", "/outside/hard"),
    ] {
        let refused = client.link(from, to).unwrap_err();
        assert_eq!(refused.errno(), libc::EXDEV, "{refused}");
        assert!(refused.to_string().contains("hard links"), "{refused}");
    }
    // Nor moved into one, nor made of a file linked to an object, nor exported where links
    // were made before the association.
    let plain = client.create("/outside/plain", 0o644, None).unwrap();
    plain.write_at(b"two names", 0).unwrap();
    drop(plain);
    client.link("/outside/plain", "/outside/plain2").unwrap();
    let moved = client
        .rename("/outside/plain2", "/data/plain2")
        .unwrap_err();
    assert_eq!(moved.errno(), libc::EXDEV, "{moved}");
    client
        .rename("/data/sub/made.txt", "/outside/made.txt")
        .unwrap();
    let refused = client
        .link("/outside/made.txt", "/outside/made2")
        .unwrap_err();
    assert_eq!(refused.errno(), libc::EXDEV, "{refused}");
    c.ok(&[
        "repo",
        "link",
        "/outside",
        "s3://links/other",
        "--endpoint",
        &s3.endpoint,
    ]);
    let out = c.nacre(&["task", "export", "/outside"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("/outside/plain,failed,HardLinked"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/outside/plain2,failed,HardLinked"),
        "{stdout}"
    );
    let held = keys(&s3, "links");
    assert!(
        !held.iter().any(|k| k.starts_with("other/plain")),
        "{held:?}"
    );
}

#[test]
fn links_are_auto_exported_when_made_and_deleted_with_their_objects() {
    let Some(moto) = s3_available("auto-export-links") else {
        return;
    };
    let s3 = S3::start(&moto);
    let c = cluster("repo-auto-links");
    s3.aws(&["s3api", "create-bucket", "--bucket", "links2"]);
    c.ok(&["mkdir", "/data"]);
    c.ok(&[
        "repo",
        "link",
        "/data",
        "s3://links2/train",
        "--endpoint",
        &s3.endpoint,
        "--auto-export",
        "new,changed,deleted",
    ]);
    c.ok(&["mkdir", "/data/sub"]);
    c.ok(&["ln", "-s", "/data/sub", "/data/to-sub"]);
    eventually("the link's auto-export", || auto_exports_done(&c) == 1);
    let head = s3.head("links2", "train/to-sub");
    assert!(head.contains("\"file-permissions\": \"0120777\""), "{head}");
    assert_eq!(flags(&c, "/data/to-sub"), HS_EXISTS | HS_ARCHIVED);

    // A file written through the link is exported under its own path.
    let client = c.client();
    let file = client.create("/data/to-sub/f.txt", 0o644, None).unwrap();
    file.write_at(b"through a link", 0).unwrap();
    drop(file);
    eventually("the file's auto-export", || auto_exports_done(&c) == 2);
    assert!(keys(&s3, "links2").contains(&"train/sub/f.txt".to_owned()));

    // Removed through the link, the file's object goes; the link's goes with the link.
    client.unlink("/data/to-sub/f.txt").unwrap();
    eventually("the file's deletion", || auto_exports_done(&c) == 3);
    client.unlink("/data/to-sub").unwrap();
    eventually("the link's deletion", || auto_exports_done(&c) == 4);
    let left = keys(&s3, "links2");
    assert!(
        !left
            .iter()
            .any(|k| k == "train/sub/f.txt" || k == "train/to-sub"),
        "{left:?}"
    );
    assert!(client.attr("/data/sub").unwrap().is_dir());
}

#[test]
fn credentials_come_from_the_credentials_file_and_are_never_shown() {
    let Some(moto) = s3_available("credentials-file") else {
        return;
    };
    let s3 = S3::start(&moto);
    s3.aws(&["s3api", "create-bucket", "--bucket", "creds"]);
    let files = common::TempDir::new("repo-creds-file");
    let file = files.0.join("credentials");
    std::fs::write(
        &file,
        "[default]\naws_access_key_id = WRONGPROFILE\naws_secret_access_key = x\n\n\
         [ci]\naws_access_key_id = AKIDFROMFILE\naws_secret_access_key = SECRETFROMFILE\n",
    )
    .unwrap();
    // No key in the environment: the service finds profile `ci` in the file (moto takes
    // any key, so that the right one was used is not shown here; the missing profile below
    // shows that the profile is looked for).
    let c = Cluster::start_with_env(
        "repo-creds",
        1,
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()),
            ("AWS_PROFILE", "ci"),
        ],
    );
    s3.put(c.dir(), "creds", "train/a.txt", b"signed", None);
    let out = link(&c, &s3, "creds");
    assert!(out.contains("1 files created"), "{out}");
    assert_eq!(c.ok(&["get", "/data/a.txt", "-"]), "signed");
    let list = c.ok(&["repo", "list"]);
    let log = c.meta_log();
    for secret in ["AKIDFROMFILE", "SECRETFROMFILE"] {
        assert!(!list.contains(secret), "repo list shows {secret}: {list}");
        assert!(!log.contains(secret), "the service logged {secret}: {log}");
    }
    // A profile the file lacks: the task fails naming the profile and the file.
    drop(c);
    let c = Cluster::start_with_env(
        "repo-creds-missing",
        1,
        &[
            ("AWS_ACCESS_KEY_ID", ""),
            ("AWS_SECRET_ACCESS_KEY", ""),
            ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()),
            ("AWS_PROFILE", "absent"),
        ],
    );
    c.ok(&["mkdir", "/data"]);
    let err = c.fails(&[
        "repo",
        "link",
        "/data",
        "s3://creds/train",
        "--endpoint",
        &s3.endpoint,
        "--import-now",
    ]);
    assert!(
        err.contains("\"absent\"") && err.contains("credentials"),
        "{err}"
    );
}
