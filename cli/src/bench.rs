//! `nacre bench`: writes a striped file, reads it back with verification, optionally reads
//! random 4 KiB blocks, and prints what it measured.

use std::time::{Duration, Instant};

use nacre::File;
use nacre::layout::StripeSpec;
use nacre::meta::types::LayoutSpec;
use nacre::units::parse_size;

use crate::{Failure, MetaArg};

/// Granule of the verification pattern: every block of a file carries its offset.
const BLOCK_BYTES: usize = 4096;
/// Mixed into each block's offset stamp, so that zeros never verify.
const STAMP_SEED: u64 = 0x6e61_6372_6521_0001;

/// `nacre bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    meta: MetaArg,
    /// The file to write (replaced).
    #[arg(long, default_value = "/nacre-bench")]
    path: String,
    /// Bytes to write and read back.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Bytes per request (a multiple of 4K).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    transfer: u64,
    /// Threads issuing requests at once.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Stripes (-1: every target).
    #[arg(short = 'c', long, default_value_t = -1, allow_hyphen_values = true)]
    stripe_count: i32,
    /// Bytes per stripe.
    #[arg(short = 'S', long, default_value = "1M", value_parser = parse_size)]
    stripe_size: u64,
    /// Then read this many random 4 KiB blocks (0: skip) and report IOPS.
    #[arg(long, default_value_t = 0)]
    rand4k_ops: u64,
    /// Keep the file afterwards.
    #[arg(long)]
    keep: bool,
    /// Also print the results as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn stamp_for(offset: u64) -> [u8; 8] {
    (offset ^ STAMP_SEED).to_le_bytes()
}

fn base_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) + 7) as u8
}

/// Fills `buf` with the pattern of the file bytes at `offset`.
fn fill(buf: &mut [u8], offset: u64) {
    for (b, block) in buf.chunks_mut(BLOCK_BYTES).enumerate() {
        block[..8].copy_from_slice(&stamp_for(offset + (b * BLOCK_BYTES) as u64));
    }
}

/// Checks `buf` holds the pattern of the file bytes at `offset`; the first wrong offset.
fn verify(buf: &[u8], base: &[u8], offset: u64) -> Result<(), u64> {
    for (b, block) in buf.chunks(BLOCK_BYTES).enumerate() {
        let at = offset + (b * BLOCK_BYTES) as u64;
        let start = b * BLOCK_BYTES;
        if block[..8] != stamp_for(at) || block[8..] != base[start + 8..start + block.len()] {
            return Err(at);
        }
    }
    Ok(())
}

struct Phase {
    name: &'static str,
    bytes: u64,
    ops: u64,
    elapsed: Duration,
}

impl Phase {
    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn iops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn run_threads(
    threads: usize,
    f: impl Fn(usize) -> Result<u64, String> + Sync,
) -> Result<(u64, Duration), Failure> {
    let start = Instant::now();
    let f = &f;
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || f(t))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a bench thread panicked".into()))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok((total, elapsed))
}

pub fn bench(args: BenchArgs) -> Result<(), Failure> {
    if args.transfer == 0 || !args.transfer.is_multiple_of(BLOCK_BYTES as u64) {
        return Err(format!(
            "--transfer {}: must be a non-zero multiple of 4K",
            args.transfer
        )
        .into());
    }
    if args.size == 0 || !args.size.is_multiple_of(args.transfer) {
        return Err(format!(
            "--size {}: must be a non-zero multiple of --transfer ({})",
            args.size, args.transfer
        )
        .into());
    }
    if args.threads == 0 || args.threads > nacre::limits::MAX_QUEUE_DEPTH {
        return Err(format!(
            "--threads {}: allowed 1 to {}",
            args.threads,
            nacre::limits::MAX_QUEUE_DEPTH
        )
        .into());
    }
    let client = args.meta.connect()?;
    let spec = LayoutSpec::plain(StripeSpec {
        stripe_count: args.stripe_count,
        stripe_size_bytes: args.stripe_size,
        ..StripeSpec::default()
    });
    spec.check().map_err(|e| format!("invalid layout: {e}"))?;
    match client.unlink(&args.path) {
        Err(e) if e.errno() != 2 => return Err(e.into()),
        _ => {}
    }
    let file = client.create(&args.path, 0o644, Some(spec))?;
    let transfers = args.size / args.transfer;
    let transfer = args.transfer as usize;
    let threads = args.threads.min(transfers as usize).max(1);
    let base: Vec<u8> = (0..transfer).map(base_byte).collect();
    println!(
        "nacre bench: {} ({} targets, stripe size {}), {} in {} transfers of {}, {} threads",
        args.path,
        file.layout().components()[0].stripe.stripe_count(),
        crate::human(args.stripe_size),
        crate::human(args.size),
        transfers,
        crate::human(args.transfer),
        threads
    );

    let write = |t: usize| -> Result<u64, String> {
        let mut buf = base.clone();
        let mut done = 0;
        for i in (t as u64..transfers).step_by(threads) {
            let offset = i * args.transfer;
            fill(&mut buf, offset);
            file.write_at(&buf, offset).map_err(|e| e.to_string())?;
            done += args.transfer;
        }
        Ok(done)
    };
    let start = Instant::now();
    let (written, _) = run_threads(threads, write)?;
    file.sync()?;
    let write_phase = Phase {
        name: "write",
        bytes: written,
        ops: transfers,
        elapsed: start.elapsed(),
    };
    report(&write_phase, "sync included");

    let size = file.size()?;
    if size != args.size {
        return Err(format!("after writing {} bytes the file is {size} bytes", args.size).into());
    }
    let read = |t: usize| -> Result<u64, String> {
        let mut buf = vec![0u8; transfer];
        let mut done = 0;
        for i in (t as u64..transfers).step_by(threads) {
            let offset = i * args.transfer;
            let n = file.read_at(&mut buf, offset).map_err(|e| e.to_string())?;
            if n != transfer {
                return Err(format!("short read at {offset}: {n} of {transfer} bytes"));
            }
            verify(&buf, &base, offset)
                .map_err(|at| format!("verification failed: wrong bytes at offset {at}"))?;
            done += n as u64;
        }
        Ok(done)
    };
    let (read_bytes, elapsed) = run_threads(threads, read)?;
    let read_phase = Phase {
        name: "read",
        bytes: read_bytes,
        ops: transfers,
        elapsed,
    };
    report(&read_phase, "every byte verified");

    let rand_phase = if args.rand4k_ops > 0 {
        let phase = random_reads(&file, &base, args.size, args.rand4k_ops, threads)?;
        report(&phase, "verified");
        Some(phase)
    } else {
        None
    };
    drop(file);
    if !args.keep {
        client.unlink(&args.path)?;
    }
    if args.json {
        let mut json = format!(
            "{{\"size_bytes\":{},\"transfer_bytes\":{},\"threads\":{},\"write_mib_s\":{:.1},\"read_mib_s\":{:.1}",
            args.size,
            args.transfer,
            threads,
            write_phase.mib_per_s(),
            read_phase.mib_per_s()
        );
        if let Some(p) = &rand_phase {
            json.push_str(&format!(",\"rand4k_iops\":{:.0}", p.iops()));
        }
        json.push('}');
        println!("{json}");
    }
    Ok(())
}

fn report(p: &Phase, note: &str) {
    println!(
        "{:<8} {:>10} in {:>8.3} s  {:>9.1} MiB/s  {:>9.0} IOPS  ({note})",
        p.name,
        crate::human(p.bytes),
        p.elapsed.as_secs_f64(),
        p.mib_per_s(),
        p.iops()
    );
}

fn random_reads(
    file: &File,
    base: &[u8],
    size: u64,
    ops: u64,
    threads: usize,
) -> Result<Phase, Failure> {
    let blocks = size / BLOCK_BYTES as u64;
    let per_thread = ops.div_ceil(threads as u64);
    let read = |t: usize| -> Result<u64, String> {
        // A per-thread xorshift: reproducible and cheap.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
        let mut buf = vec![0u8; BLOCK_BYTES];
        let mut done = 0;
        for _ in 0..per_thread {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let offset = (x % blocks) * BLOCK_BYTES as u64;
            file.read_at(&mut buf, offset).map_err(|e| e.to_string())?;
            // The block's position in a transfer buffer decides its base bytes.
            let in_transfer = (offset as usize) % base.len();
            let block_base = &base[in_transfer..in_transfer + BLOCK_BYTES];
            if buf[..8] != stamp_for(offset) || buf[8..] != block_base[8..] {
                return Err(format!(
                    "verification failed: wrong bytes at offset {offset}"
                ));
            }
            done += 1;
        }
        Ok(done)
    };
    let (done, elapsed) = run_threads(threads, read)?;
    Ok(Phase {
        name: "rand4k",
        bytes: done * BLOCK_BYTES as u64,
        ops: done,
        elapsed,
    })
}
