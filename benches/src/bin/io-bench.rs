//! `io-bench`: drives one object of a target through `nacre_io::ObjectStore` the way fio's
//! io_uring engine drives a file (O_DIRECT, registered buffers and files, a fixed queue
//! depth), and prints one line of figures. `scripts/bench-io.sh` runs it next to fio.
//!
//! ```text
//! io-bench --dir DIR --mode write|read|randread [--size BYTES] [--bs BYTES] [--qd N] [--seconds S] [--offload]
//! ```
//! Sizes take K, M and G suffixes (powers of 1024). `write` writes the object from scratch,
//! `read` reads it sequentially, `randread` reads random blocks for `--seconds`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nacre_benches::parse_size;
use nacre_io::{AlignedBuf, Completion, ObjectStore, Op, StoreConfig, Target};

/// The object the benchmark uses.
const BENCH_OBJECT_ID: u64 = 1;
/// Id given to the target when the benchmark formats its directory.
const BENCH_TARGET_ID: u32 = 0;
/// Longest a single wait for completions may take before the run is declared stuck.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Write,
    Read,
    RandRead,
}

struct Args {
    dir: std::path::PathBuf,
    mode: Mode,
    size_bytes: u64,
    block_bytes: u64,
    queue_depth: u32,
    seconds: f64,
    offload_issue: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut mode = None;
    let mut size_bytes = 1 << 30;
    let mut block_bytes = 1 << 20;
    let mut queue_depth = 32;
    let mut seconds = 5.0;
    let mut offload_issue = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => dir = Some(std::path::PathBuf::from(value()?)),
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "write" => Mode::Write,
                    "read" => Mode::Read,
                    "randread" => Mode::RandRead,
                    other => {
                        return Err(format!("--mode {other}: expected write, read or randread"));
                    }
                })
            }
            "--size" => size_bytes = parse_size(&value()?)?,
            "--bs" => block_bytes = parse_size(&value()?)?,
            "--qd" => {
                queue_depth = value()?
                    .parse()
                    .map_err(|_| "--qd takes a whole number".to_string())?
            }
            "--seconds" => {
                seconds = value()?
                    .parse()
                    .map_err(|_| "--seconds takes a number".to_string())?
            }
            "--offload" => offload_issue = true,
            "-h" | "--help" => {
                return Err("usage: io-bench --dir DIR --mode write|read|randread [--size BYTES] [--bs BYTES] [--qd N] [--seconds S] [--offload]".into());
            }
            other => return Err(format!("unknown argument {other}; see --help")),
        }
    }
    let args = Args {
        dir: dir.ok_or("--dir is required")?,
        mode: mode.ok_or("--mode is required")?,
        size_bytes,
        block_bytes,
        queue_depth,
        seconds,
        offload_issue,
    };
    if args.block_bytes == 0 || args.block_bytes > nacre_io::limits::MAX_IO_BYTES {
        return Err(format!(
            "--bs {}: allowed 1 byte to 4 MiB",
            args.block_bytes
        ));
    }
    if args.size_bytes < args.block_bytes || !args.size_bytes.is_multiple_of(args.block_bytes) {
        return Err(format!(
            "--size {} must be a multiple of --bs {}",
            args.size_bytes, args.block_bytes
        ));
    }
    if !(2..=1024).contains(&args.queue_depth) {
        return Err(format!("--qd {}: allowed 2 to 1024", args.queue_depth));
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(format!(
            "--seconds {}: allowed above 0 up to 3600",
            args.seconds
        ));
    }
    Ok(args)
}

fn open_target(dir: &std::path::Path) -> Result<Target, String> {
    if !dir.join(nacre_io::STAMP_FILE).exists() {
        Target::format(dir, BENCH_TARGET_ID).map_err(|e| e.to_string())?;
    }
    Target::open(dir).map_err(|e| e.to_string())
}

fn run(args: &Args) -> Result<(), String> {
    let target = open_target(&args.dir)?;
    let config = StoreConfig {
        queue_depth: args.queue_depth,
        max_ops: args.queue_depth,
        offload_issue: args.offload_issue,
        ..StoreConfig::default()
    };
    let mut store = ObjectStore::new(&target, config).map_err(|e| e.to_string())?;
    if args.mode == Mode::Write {
        match target.remove(BENCH_OBJECT_ID) {
            Ok(()) | Err(nacre_io::IoError::NoSuchObject { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        target.create(BENCH_OBJECT_ID).map_err(|e| e.to_string())?;
    }
    let bs = args.block_bytes as usize;
    let qd = args.queue_depth as usize;
    let mut memory = AlignedBuf::zeroed(bs * qd).expect("buffer");
    for (i, b) in memory.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    // One registered buffer per slot, as fio's fixedbufs registers one per I/O unit.
    let base = memory.as_mut_ptr();
    for slot in 0..qd {
        // SAFETY: `memory` lives until the end of this function, after the store (declared
        // earlier, dropped explicitly before it) has no op outstanding: every submitted op
        // is reaped below. slot < qd keeps the slice inside `memory`.
        unsafe { store.register_memory(base.add(slot * bs), bs) }.map_err(|e| e.to_string())?;
    }

    let blocks = args.size_bytes / args.block_bytes;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next_block = 0u64;
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let mut bytes = 0u64;
    let mut free_slots: Vec<usize> = (0..qd).collect();
    let mut out: Vec<Completion> = Vec::with_capacity(qd);
    let deadline_secs = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    loop {
        let more = match args.mode {
            Mode::RandRead => start.elapsed() < deadline_secs,
            _ => next_block < blocks,
        };
        while more && let Some(slot) = free_slots.pop() {
            let block = match args.mode {
                Mode::RandRead => {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % blocks
                }
                _ => {
                    next_block += 1;
                    next_block - 1
                }
            };
            // SAFETY: slot < qd, so the slice lies inside `memory`.
            let ptr = unsafe { base.add(slot * bs) };
            let offset_bytes = block * args.block_bytes;
            let op = match args.mode {
                Mode::Write => Op::Write {
                    object_id: BENCH_OBJECT_ID,
                    offset_bytes,
                    buf: ptr,
                    len: bs,
                },
                _ => Op::Read {
                    object_id: BENCH_OBJECT_ID,
                    offset_bytes,
                    buf: ptr,
                    len: bs,
                },
            };
            // SAFETY: the slot's memory is not touched again until its completion is reaped.
            unsafe { store.submit(op, slot as u64) }.map_err(|e| e.to_string())?;
            submitted += 1;
            if args.mode != Mode::RandRead && next_block == blocks {
                break;
            }
        }
        if completed == submitted {
            break;
        }
        out.clear();
        store
            .wait(1, WAIT_TIMEOUT, &mut out)
            .map_err(|e| e.to_string())?;
        if out.is_empty() {
            return Err(format!("no completion within {} s", WAIT_TIMEOUT.as_secs()));
        }
        for c in out.drain(..) {
            let n = c.result.map_err(|e| e.to_string())?;
            if n != args.block_bytes {
                return Err(format!("short transfer: {n} of {} bytes", args.block_bytes));
            }
            bytes += n;
            completed += 1;
            free_slots.push(c.tag as usize);
        }
    }
    if args.mode == Mode::Write {
        store.sync(BENCH_OBJECT_ID).map_err(|e| e.to_string())?;
    }
    let secs = start.elapsed().as_secs_f64();
    let mode = match args.mode {
        Mode::Write => "write",
        Mode::Read => "read",
        Mode::RandRead => "randread",
    };
    println!(
        "mode={mode} bs={} qd={} bytes={bytes} ops={completed} secs={secs:.3} MBps={:.1} iops={:.0}",
        args.block_bytes,
        args.queue_depth,
        bytes as f64 / secs / 1e6,
        completed as f64 / secs
    );
    drop(store);
    drop(memory);
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("io-bench: {message}");
            ExitCode::from(2)
        }
    }
}
