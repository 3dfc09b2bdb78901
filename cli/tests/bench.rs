//! `nacre bench` against a cluster of real processes (a metadata service and two targets,
//! each a `nacre serve`), with small sizes: IOR's shared and file-per-process layouts, `-C`,
//! `-z`, `-i`, the ior-hard shape with 47,008-byte transfers, the JSON object, a corrupted
//! byte found by the read check, and usage errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::{Cluster, nacre, text};
use nacre::OpenOptions;

/// Targets of each test's cluster.
const TARGETS: u32 = 2;

/// A JSON token.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open(char),
    Close(char),
    Colon,
    Comma,
    Str(String),
    Literal(String),
}

fn tokenize(json: &str) -> Vec<Token> {
    let chars: Vec<char> = json.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '{' | '[' => out.push(Token::Open(c)),
            '}' | ']' => out.push(Token::Close(c)),
            ':' => out.push(Token::Colon),
            ',' => out.push(Token::Comma),
            ' ' | '\t' | '\n' | '\r' => {}
            '"' => {
                let mut s = String::new();
                loop {
                    let c = chars[i];
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let escaped = chars[i];
                            i += 1;
                            match escaped {
                                'n' => s.push('\n'),
                                't' => s.push('\t'),
                                'r' => s.push('\r'),
                                'u' => {
                                    let hex: String = chars[i..i + 4].iter().collect();
                                    i += 4;
                                    let code = u32::from_str_radix(&hex, 16).unwrap();
                                    s.push(char::from_u32(code).unwrap());
                                }
                                other => s.push(other),
                            }
                        }
                        c => {
                            assert!(c >= ' ', "raw control character in a JSON string");
                            s.push(c)
                        }
                    }
                }
                out.push(Token::Str(s));
            }
            _ => {
                let start = i - 1;
                while i < chars.len() && !",:]} \n".contains(chars[i]) {
                    i += 1;
                }
                let literal: String = chars[start..i].iter().collect();
                assert!(
                    ["true", "false", "null"].contains(&literal.as_str())
                        || literal.parse::<f64>().is_ok(),
                    "not a JSON literal: {literal}"
                );
                out.push(Token::Literal(literal));
            }
        }
    }
    out
}

/// Parses one JSON value (an object or array) into a map from the path of each scalar
/// (`params.tasks`, `results.0.access`) to its text; panics on anything malformed.
fn flatten_json(json: &str) -> BTreeMap<String, String> {
    struct Frame {
        object: bool,
        path: String,
        index: usize,
        key: Option<String>,
        after_value: bool,
    }
    fn child(frame: &Frame) -> String {
        let name = if frame.object {
            frame.key.clone().expect("a key before each value")
        } else {
            frame.index.to_string()
        };
        if frame.path.is_empty() {
            name
        } else {
            format!("{}.{name}", frame.path)
        }
    }
    let tokens = tokenize(json);
    assert!(matches!(tokens.first(), Some(Token::Open(_))), "{json}");
    let mut stack: Vec<Frame> = Vec::new();
    let mut out = BTreeMap::new();
    let mut pos = 0;
    while pos < tokens.len() {
        let token = tokens[pos].clone();
        pos += 1;
        match token {
            Token::Open(c) => {
                let path = match stack.last_mut() {
                    Some(top) => {
                        assert!(!top.after_value, "a missing comma in {json}");
                        top.after_value = true;
                        child(top)
                    }
                    None => String::new(),
                };
                stack.push(Frame {
                    object: c == '{',
                    path,
                    index: 0,
                    key: None,
                    after_value: false,
                });
            }
            Token::Close(c) => {
                let frame = stack.pop().unwrap();
                assert_eq!(frame.object, c == '}', "mismatched brackets in {json}");
                if stack.is_empty() {
                    assert_eq!(pos, tokens.len(), "text after the value in {json}");
                    return out;
                }
            }
            Token::Comma => {
                let top = stack.last_mut().unwrap();
                assert!(top.after_value, "a stray comma in {json}");
                top.after_value = false;
                top.key = None;
                top.index += 1;
            }
            Token::Colon => panic!("a stray colon in {json}"),
            Token::Str(s) if stack.last().is_some_and(|f| f.object && f.key.is_none()) => {
                assert_eq!(tokens.get(pos), Some(&Token::Colon), "{json}");
                pos += 1;
                stack.last_mut().unwrap().key = Some(s);
            }
            Token::Str(s) | Token::Literal(s) => {
                let top = stack.last_mut().unwrap();
                assert!(!top.after_value, "a missing comma in {json}");
                top.after_value = true;
                out.insert(child(top), s);
            }
        }
    }
    panic!("unterminated JSON: {json}");
}

/// `nacre bench ARGS --json` against the cluster, which must succeed; the report's text
/// and its JSON object (the last line), flattened.
fn bench_json(cluster: &Cluster, args: &[&str]) -> (String, BTreeMap<String, String>) {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let stdout = cluster.ok(&all);
    let last = stdout.lines().last().unwrap_or_default();
    (stdout.clone(), flatten_json(last))
}

fn number(json: &BTreeMap<String, String>, key: &str) -> f64 {
    let value = json
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from {json:?}"));
    value.parse().unwrap()
}

/// Every result of the run: (access, iter, bytes, ops).
fn results(json: &BTreeMap<String, String>) -> Vec<(String, u64, u64, u64)> {
    let mut out = Vec::new();
    for i in 0.. {
        let Some(access) = json.get(&format!("results.{i}.access")) else {
            break;
        };
        let field = |name: &str| number(json, &format!("results.{i}.{name}")) as u64;
        out.push((access.clone(), field("iter"), field("bytes"), field("ops")));
        for name in [
            "bw_mib_s",
            "iops",
            "open_s",
            "rdwr_s",
            "close_s",
            "total_s",
            "latency_s.mean",
            "latency_s.p50",
            "latency_s.p99",
            "latency_s.max",
        ] {
            let value = number(json, &format!("results.{i}.{name}"));
            assert!(
                value >= 0.0 && value.is_finite(),
                "results.{i}.{name} = {value}"
            );
        }
        assert!(
            number(json, &format!("results.{i}.latency_s.p50"))
                <= number(json, &format!("results.{i}.latency_s.max"))
        );
    }
    out
}

#[test]
fn shared_file_reordered_random_repeated_and_ior_hard() {
    let cluster = Cluster::start("bench-shared", TARGETS);

    // A shared file, each task reading what the next one wrote.
    let (report, json) = bench_json(
        &cluster,
        &[
            "-o", "/shared", "-N", "3", "-t", "64k", "-b", "256k", "-s", "2", "-C",
        ],
    );
    for heading in [
        "Options:",
        "Results:",
        "Summary of all tests:",
        "Max Write:",
        "Max Read:",
    ] {
        assert!(report.contains(heading), "{heading} missing:\n{report}");
    }
    assert!(report.contains("single-shared-file"), "{report}");
    assert!(report.contains("constant task offset (1)"), "{report}");
    for (key, value) in [
        ("tool", "nacre bench"),
        ("driver", "threads"),
        ("params.path", "/shared"),
        ("params.tasks", "3"),
        ("params.transfer_bytes", "65536"),
        ("params.block_bytes", "262144"),
        ("params.segments", "2"),
        ("params.file_per_process", "false"),
        ("params.reorder_tasks", "true"),
        ("params.random_offsets", "false"),
        ("params.aggregate_bytes", "1572864"),
        ("size_bytes", "1572864"),
        ("transfer_bytes", "65536"),
        ("threads", "3"),
    ] {
        assert_eq!(
            json.get(key).map(String::as_str),
            Some(value),
            "{key}: {json:?}"
        );
    }
    let aggregate = 3 * 256 * 1024 * 2;
    assert_eq!(
        results(&json),
        [
            ("write".to_string(), 0, aggregate, 24),
            ("read".to_string(), 0, aggregate, 24)
        ]
    );
    for key in [
        "write_mib_s",
        "read_mib_s",
        "summary.write.bw_mib_s.mean",
        "summary.read.iops.max",
    ] {
        assert!(number(&json, key) > 0.0, "{key}");
    }
    assert!(!json.contains_key("rand4k_iops"));
    // The file was removed at the end (no -k).
    assert_eq!(cluster.ok(&["ls", "/"]), "");

    // Random offsets, two repetitions, a queue of 3 per task, then random 4 KiB reads.
    let (report, json) = bench_json(
        &cluster,
        &[
            "-o",
            "/random",
            "-N",
            "2",
            "-t",
            "4k",
            "-b",
            "32k",
            "-s",
            "3",
            "-z",
            "-i",
            "2",
            "--queue-depth",
            "3",
            "--rand4k-ops",
            "50",
        ],
    );
    assert!(report.contains("ordering in a file  : random"), "{report}");
    assert_eq!(json["params.random_offsets"], "true");
    assert_eq!(json["params.repetitions"], "2");
    let got: Vec<(String, u64)> = results(&json)
        .into_iter()
        .map(|(access, iter, _, _)| (access, iter))
        .collect();
    let want: Vec<(String, u64)> = [0, 1]
        .into_iter()
        .flat_map(|iter| ["write", "read", "rand4k"].map(|a| (a.to_string(), iter)))
        .collect();
    assert_eq!(got, want);
    assert_eq!(number(&json, "results.2.ops"), 50.0);
    assert!(number(&json, "rand4k_iops") > 0.0);
    let bw = |key: &str| number(&json, &format!("summary.write.bw_mib_s.{key}"));
    assert!(
        bw("min") <= bw("mean") && bw("mean") <= bw("max"),
        "{json:?}"
    );

    // ior-hard: 47,008-byte transfers (not a multiple of 4 KiB) into one shared file, with
    // fsync and reordered reads; fewer segments than IO500 asks.
    let (report, json) = bench_json(
        &cluster,
        &[
            "-o",
            "/hard",
            "--preset",
            "ior-hard",
            "-N",
            "3",
            "-s",
            "6",
            "--queue-depth",
            "2",
        ],
    );
    assert!(report.contains("47008 bytes"), "{report}");
    for (key, value) in [
        ("params.transfer_bytes", "47008"),
        ("params.block_bytes", "47008"),
        ("params.segments", "6"),
        ("params.file_per_process", "false"),
        ("params.reorder_tasks", "true"),
        ("params.fsync", "true"),
    ] {
        assert_eq!(json.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert_eq!(
        results(&json)[1],
        ("read".to_string(), 0, 3 * 6 * 47_008, 18)
    );
}

#[test]
fn ior_easy_is_large_transfers_into_a_file_per_task() {
    let cluster = Cluster::start("bench-easy", TARGETS);
    // IO500's ior-easy shape, with a smaller block than the preset's.
    let (_, json) = bench_json(
        &cluster,
        &["-o", "/easy", "--preset", "ior-easy", "-N", "2", "-b", "4m"],
    );
    for (key, value) in [
        ("params.transfer_bytes", "2097152"),
        ("params.block_bytes", "4194304"),
        ("params.file_per_process", "true"),
        ("params.reorder_tasks", "true"),
        ("params.fsync", "true"),
    ] {
        assert_eq!(json.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert_eq!(
        results(&json)[1],
        ("read".to_string(), 0, 2 * 4 * 1024 * 1024, 4)
    );
}

#[test]
fn file_per_process_kept_files_and_a_corrupted_byte() {
    let cluster = Cluster::start("bench-fpp", TARGETS);
    let (report, json) = bench_json(
        &cluster,
        &[
            "-o", "/fpp", "-F", "-N", "3", "-t", "16k", "-b", "64k", "-s", "2", "-e", "-k", "-w",
        ],
    );
    assert!(report.contains("file-per-process"), "{report}");
    assert_eq!(json["params.file_per_process"], "true");
    assert_eq!(
        results(&json),
        [("write".to_string(), 0, 3 * 128 * 1024, 24)]
    );
    // IOR's names, one file per task, each of one task's bytes.
    assert_eq!(
        cluster.ok(&["ls", "/"]),
        "fpp.00000000\nfpp.00000001\nfpp.00000002\n"
    );
    let client = cluster.client();
    for i in 0..3 {
        assert_eq!(
            client.stat(&format!("/fpp.{i:08}")).unwrap().size_bytes,
            128 * 1024
        );
    }

    // Read back what the run left, each task reading the next task's file.
    let read_args = [
        "-o", "/fpp", "-F", "-N", "3", "-t", "16k", "-b", "64k", "-s", "2", "-r", "-C",
    ];
    let (_, json) = bench_json(&cluster, &read_args);
    assert_eq!(
        results(&json),
        [("read".to_string(), 0, 3 * 128 * 1024, 24)]
    );
    // A read-only run leaves the files.
    assert_eq!(cluster.ok(&["ls", "/"]).lines().count(), 3);

    // One wrong byte in file 2 is found, named by file and offset, and read by task 1
    // (which reads the file of task 2 under -C).
    let file = client
        .open("/fpp.00000002", &OpenOptions::new().read(true).write(true))
        .unwrap();
    let mut byte = [0u8];
    assert_eq!(file.read_at(&mut byte, 70_001).unwrap(), 1);
    file.write_at(&[!byte[0]], 70_001).unwrap();
    let mut args = vec!["bench"];
    args.extend_from_slice(&read_args);
    let stderr = cluster.fails(&args);
    assert!(
        stderr.contains("task 1: verification failed: /fpp.00000002 at offset 70001"),
        "{stderr}"
    );

    // Without file 1, the task that reads it is task 0 under -C, and task 1 without.
    cluster.ok(&["rm", "/fpp.00000001"]);
    let stderr = cluster.fails(&args);
    assert!(
        stderr.contains("task 0: cannot open /fpp.00000001"),
        "{stderr}"
    );
    let without_c: Vec<&str> = args.iter().copied().filter(|a| *a != "-C").collect();
    let stderr = cluster.fails(&without_c);
    assert!(
        stderr.contains("task 1: cannot open /fpp.00000001"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_are_usage_errors_naming_the_flag() {
    // Checked before any connection: no cluster is needed.
    for (args, flag) in [
        (&["-t", "300", "-b", "1000"][..], "-b/--block-size"),
        (&["-t", "0"], "-t/--transfer-size"),
        (&["-N", "0"], "-N/--tasks"),
        (&["-s", "0"], "-s/--segments"),
        (&["-i", "0"], "-i/--repetitions"),
        (&["--queue-depth", "0"], "--queue-depth"),
        (&["--size", "10M", "-t", "4M"], "--size"),
        (&["--size", "8M", "-N", "0"], "-N/--tasks"),
        (&["--size", "8M", "-t", "0"], "-t/--transfer-size"),
        (&["--size", "12M", "-t", "4M", "-N", "2"], "--size"),
        (&["-S", "1000"], "-S/--stripe-size"),
        (&["--size", "8M", "-b", "1M"], "--size"),
        (&["--preset", "ior-medium"], "--preset"),
        (&["-t", "1X"], "-t"),
    ] {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        let out = nacre(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} should name {flag}: {stderr}"
        );
        assert!(stderr.contains("try '--help'"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
