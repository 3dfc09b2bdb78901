//! What a run measured and how it is printed: IOR's reduction of per-task timings into a
//! phase's figures, the IOR-shaped text report, and the JSON object for scripts.
//!
//! # Reduction (the same for threads and MPI ranks)
//!
//! Each task of a phase records six times, in seconds from one instant all tasks share (in
//! MPI: after a barrier, `MPI_Wtime` minus the barrier's exit time on rank 0, broadcast),
//! plus the bytes and transfers it moved and a histogram of its transfers' latencies
//! ([`super::latency`]). Starts reduce by minimum, ends by maximum (`MPI_MIN`, `MPI_MAX`;
//! histograms by `MPI_SUM`), exactly as IOR reduces its timers:
//!
//! ```text
//! open(s)   = max(open_end)  - min(open_start)
//! wr/rd(s)  = max(io_end)    - min(io_start)
//! close(s)  = max(close_end) - min(close_start)     (the fsync of -e is in close)
//! total(s)  = max(close_end) - min(open_start)
//! bw(MiB/s) = bytes / 2^20 / total(s)
//! IOPS      = transfers / wr/rd(s)
//! ```
//!
//! Latency is that of each transfer (the call alone, not the filling or checking of its
//! buffer): mean, p50, p99 and max over every transfer of every task. (IOR's single
//! `Latency` column is the best task's mean; ours is the mean over all transfers.)
//!
//! # Text report (standard output)
//!
//! An `Options:` block of `name : value` lines; then `Results:`, a heading line and one
//! line per phase and repetition, as it finishes, with these whitespace-separated columns:
//!
//! ```text
//! access bw(MiB/s) IOPS Latency(s) p50(s) p99(s) max(s) block(KiB) xfer(KiB) open(s) wr/rd(s) close(s) total(s) iter
//! ```
//!
//! (`access` is `write`, `read` or `rand4k`; `iter` counts from 0); then `Max Write:` and
//! `Max Read:` lines (`N MiB/sec (M MB/sec)`); then `Summary of all tests:`, a heading and
//! one line per access:
//!
//! ```text
//! Operation Max(MiB) Min(MiB) Mean(MiB) StdDev Max(OPs) Min(OPs) Mean(OPs) StdDev Mean(s) Lat(s) p99(s) #Tasks QD reps fPP reord segcnt blksiz xsize aggs(MiB) API
//! ```
//!
//! where the MiB columns are bandwidth in MiB/s, OPs are IOPS, StdDev is the population
//! standard deviation over repetitions, Mean(s) the mean total time, Lat(s) and p99(s) the
//! means over repetitions of the mean and 99th-percentile latency.
//!
//! # JSON (`--json`: one object, the last line of standard output)
//!
//! `{"tool":"nacre bench","format":1,"driver":"threads"|"mpi","command":STR,"params":{..},
//! "results":[{..} per phase and repetition],"summary":{ACCESS:{..}},` followed by the keys
//! older scripts read: `"size_bytes"` (aggregate bytes), `"transfer_bytes"`, `"threads"`
//! (tasks), `"write_mib_s"`, `"read_mib_s"` (means over repetitions) and `"rand4k_iops"`,
//! each present when its phase ran. `params` holds `path, tasks, queue_depth,
//! transfer_bytes, block_bytes, segments, file_per_process, reorder_tasks, random_offsets,
//! fsync, repetitions, stripe_count, stripe_size_bytes, aggregate_bytes, rand4k_ops`; each
//! result `access, iter, bytes, ops, bw_mib_s, iops, open_s, rdwr_s, close_s, total_s` and
//! `latency_s:{count, mean, min, p50, p99, max}`; each summary `bw_mib_s` and `iops` as
//! `{max, min, mean, stddev}`, `latency_mean_s` and `latency_p99_s` as `{max, min, mean}`,
//! and `total_s_mean`.

use std::fmt::Write;

use super::latency::{Latencies, LatencySummary};
use super::plan::{Access, Plan, RAND4K_BYTES};

/// Bytes per MiB.
const MIB: f64 = (1u64 << 20) as f64;
/// Bytes per KiB.
const KIB: f64 = 1024.0;
/// Bytes per MB (IOR's second figure on its Max lines).
const MB: f64 = 1e6;
/// The shortest time a rate is divided by, so that an empty phase is not a division by 0.
const MIN_SECONDS: f64 = 1e-9;
/// The version of the JSON object's shape.
pub(super) const JSON_FORMAT: u32 = 1;
/// The driver these tasks run under (an MPI driver says "mpi").
pub(super) const DRIVER: &str = "threads";

/// When a task did what in one phase, in seconds since the phase's shared start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct TaskTimes {
    /// Before opening (or creating) its file.
    pub open_start: f64,
    /// After opening.
    pub open_end: f64,
    /// Before its first transfer.
    pub io_start: f64,
    /// After its last transfer.
    pub io_end: f64,
    /// Before closing (and the fsync of -e).
    pub close_start: f64,
    /// After closing.
    pub close_end: f64,
}

/// What one task did in one phase.
#[derive(Debug, Clone, Default)]
pub(super) struct TaskRecord {
    /// Its times.
    pub times: TaskTimes,
    /// Bytes moved.
    pub bytes: u64,
    /// Transfers made.
    pub ops: u64,
    /// Each transfer's latency.
    pub latencies: Latencies,
}

/// One phase of one repetition, reduced over its tasks.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PhaseResult {
    /// Which phase.
    pub access: Access,
    /// Which repetition (from 0).
    pub iter: u32,
    /// Bytes moved by all tasks.
    pub bytes: u64,
    /// Transfers made by all tasks.
    pub ops: u64,
    /// Opening, first start to last end.
    pub open_s: f64,
    /// Transfers, first start to last end.
    pub rdwr_s: f64,
    /// Closing (with fsync), first start to last end.
    pub close_s: f64,
    /// First open to last close.
    pub total_s: f64,
    /// Bytes per total time, in MiB/s.
    pub bw_mib_s: f64,
    /// Transfers per transfer time.
    pub iops: f64,
    /// Per-transfer latencies.
    pub latency: LatencySummary,
}

fn spread(records: &[TaskRecord], start: fn(&TaskTimes) -> f64, end: fn(&TaskTimes) -> f64) -> f64 {
    let first = records
        .iter()
        .map(|r| start(&r.times))
        .fold(f64::INFINITY, f64::min);
    let last = records
        .iter()
        .map(|r| end(&r.times))
        .fold(f64::NEG_INFINITY, f64::max);
    (last - first).max(0.0)
}

impl PhaseResult {
    /// IOR's reduction of the tasks' records (see the module's documentation).
    pub(super) fn reduce(access: Access, iter: u32, records: &[TaskRecord]) -> PhaseResult {
        assert!(!records.is_empty(), "a phase has at least one task");
        let bytes = records.iter().map(|r| r.bytes).sum::<u64>();
        let ops = records.iter().map(|r| r.ops).sum::<u64>();
        let mut latencies = Latencies::default();
        for r in records {
            latencies.merge(&r.latencies);
        }
        let open_s = spread(records, |t| t.open_start, |t| t.open_end);
        let rdwr_s = spread(records, |t| t.io_start, |t| t.io_end);
        let close_s = spread(records, |t| t.close_start, |t| t.close_end);
        let total_s = spread(records, |t| t.open_start, |t| t.close_end);
        PhaseResult {
            access,
            iter,
            bytes,
            ops,
            open_s,
            rdwr_s,
            close_s,
            total_s,
            bw_mib_s: bytes as f64 / MIB / total_s.max(MIN_SECONDS),
            iops: ops as f64 / rdwr_s.max(MIN_SECONDS),
            latency: latencies.summary(),
        }
    }
}

/// A size as IOR's option block shows it: whole units where exact, else bytes.
pub(super) fn size_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    format!("{bytes} bytes")
}

fn yes_no(on: bool) -> &'static str {
    if on { "yes" } else { "no" }
}

/// The options block: what the run is.
pub(super) fn header(plan: &Plan, meta: &str, command: &str) -> String {
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<20}: {value}");
    };
    line(
        "nacre bench",
        "IOR-shaped test of the Nacre data path".into(),
    );
    line("Command line", command.to_string());
    line("Metadata service", meta.to_string());
    out.push_str("\nOptions:\n");
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<20}: {value}");
    };
    line("api", format!("nacre (tasks are {DRIVER})"));
    line("test filename", plan.path.clone());
    line(
        "access",
        if plan.file_per_process {
            "file-per-process"
        } else {
            "single-shared-file"
        }
        .into(),
    );
    line(
        "ordering in a file",
        if plan.random_offsets {
            "random"
        } else {
            "sequential"
        }
        .into(),
    );
    line(
        "ordering inter file",
        if plan.reorder_tasks {
            "constant task offset (1)"
        } else {
            "no tasks offsets"
        }
        .into(),
    );
    line("tasks", plan.tasks.to_string());
    line("queue depth", format!("{} per task", plan.queue_depth));
    line("repetitions", plan.repetitions.to_string());
    line("xfersize", size_text(plan.transfer_bytes));
    line("blocksize", size_text(plan.block_bytes));
    line("segments", plan.segments.to_string());
    line("aggregate filesize", size_text(plan.aggregate_bytes()));
    line(
        "stripes",
        format!(
            "count {}, size {}",
            plan.stripe_count,
            size_text(plan.stripe_size_bytes)
        ),
    );
    line("fsync", yes_no(plan.fsync).into());
    line("verification", "every byte read".into());
    if plan.rand4k_ops > 0 {
        line("rand4k ops", plan.rand4k_ops.to_string());
    }
    out
}

/// The results table's columns and their widths (IOR's, with the latency percentiles).
const RESULT_COLUMNS: [(&str, usize); 14] = [
    ("access", 9),
    ("bw(MiB/s)", 11),
    ("IOPS", 11),
    ("Latency(s)", 11),
    ("p50(s)", 11),
    ("p99(s)", 11),
    ("max(s)", 11),
    ("block(KiB)", 11),
    ("xfer(KiB)", 10),
    ("open(s)", 9),
    ("wr/rd(s)", 9),
    ("close(s)", 9),
    ("total(s)", 9),
    ("iter", 4),
];

/// The summary table's columns and their widths.
const SUMMARY_COLUMNS: [(&str, usize); 22] = [
    ("Operation", 9),
    ("Max(MiB)", 10),
    ("Min(MiB)", 10),
    ("Mean(MiB)", 10),
    ("StdDev", 10),
    ("Max(OPs)", 11),
    ("Min(OPs)", 11),
    ("Mean(OPs)", 11),
    ("StdDev", 10),
    ("Mean(s)", 9),
    ("Lat(s)", 10),
    ("p99(s)", 10),
    ("#Tasks", 6),
    ("QD", 4),
    ("reps", 4),
    ("fPP", 3),
    ("reord", 5),
    ("segcnt", 8),
    ("blksiz", 10),
    ("xsize", 9),
    ("aggs(MiB)", 10),
    ("API", 3),
];

/// Cells padded to their columns' widths (left-aligned, or right-aligned after the first).
fn row(cells: &[String], columns: &[(&str, usize)], right: bool) -> String {
    debug_assert_eq!(cells.len(), columns.len());
    let mut out = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(columns).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if right && i > 0 {
            let _ = write!(out, "{cell:>width$}");
        } else {
            let _ = write!(out, "{cell:<width$}");
        }
    }
    out.trim_end().to_string()
}

fn heading(columns: &[(&str, usize)], right: bool) -> String {
    let names: Vec<String> = columns.iter().map(|(name, _)| name.to_string()).collect();
    row(&names, columns, right)
}

/// The heading of the results table.
pub(super) fn results_heading() -> String {
    let rule: Vec<String> = RESULT_COLUMNS
        .iter()
        .map(|(name, _)| "-".repeat(name.len()))
        .collect();
    format!(
        "\nResults:\n\n{}\n{}\n",
        heading(&RESULT_COLUMNS, false),
        row(&rule, &RESULT_COLUMNS, false)
    )
}

fn block_and_transfer(plan: &Plan, access: Access) -> (u64, u64) {
    match access {
        Access::Rand4k => (RAND4K_BYTES, RAND4K_BYTES),
        Access::Write | Access::Read => (plan.block_bytes, plan.transfer_bytes),
    }
}

/// One line of the results table.
pub(super) fn result_line(plan: &Plan, r: &PhaseResult) -> String {
    let (block, transfer) = block_and_transfer(plan, r.access);
    let cells = [
        r.access.name().to_string(),
        format!("{:.2}", r.bw_mib_s),
        format!("{:.2}", r.iops),
        format!("{:.6}", r.latency.mean_s),
        format!("{:.6}", r.latency.p50_s),
        format!("{:.6}", r.latency.p99_s),
        format!("{:.6}", r.latency.max_s),
        format!("{:.2}", block as f64 / KIB),
        format!("{:.2}", transfer as f64 / KIB),
        format!("{:.4}", r.open_s),
        format!("{:.4}", r.rdwr_s),
        format!("{:.4}", r.close_s),
        format!("{:.4}", r.total_s),
        r.iter.to_string(),
    ];
    row(&cells, &RESULT_COLUMNS, false)
}

/// Max, min, mean and population standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    max: f64,
    min: f64,
    mean: f64,
    stddev: f64,
}

fn spread_of(values: &[f64]) -> Spread {
    if values.is_empty() {
        return Spread {
            max: 0.0,
            min: 0.0,
            mean: 0.0,
            stddev: 0.0,
        };
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    Spread {
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        mean,
        stddev: variance.sqrt(),
    }
}

/// One access's figures over its repetitions.
struct AccessSummary {
    access: Access,
    bw: Spread,
    iops: Spread,
    latency_mean: Spread,
    latency_p99: Spread,
    total_s_mean: f64,
}

const ACCESSES: [Access; 3] = [Access::Write, Access::Read, Access::Rand4k];

fn summaries(results: &[PhaseResult]) -> Vec<AccessSummary> {
    let mut out = Vec::new();
    for access in ACCESSES {
        let of: Vec<&PhaseResult> = results.iter().filter(|r| r.access == access).collect();
        if of.is_empty() {
            continue;
        }
        let values = |f: fn(&PhaseResult) -> f64| of.iter().map(|r| f(r)).collect::<Vec<f64>>();
        out.push(AccessSummary {
            access,
            bw: spread_of(&values(|r| r.bw_mib_s)),
            iops: spread_of(&values(|r| r.iops)),
            latency_mean: spread_of(&values(|r| r.latency.mean_s)),
            latency_p99: spread_of(&values(|r| r.latency.p99_s)),
            total_s_mean: spread_of(&values(|r| r.total_s)).mean,
        });
    }
    out
}

/// The Max lines and the summary table.
pub(super) fn summary(plan: &Plan, results: &[PhaseResult]) -> String {
    let all = summaries(results);
    let mut out = String::new();
    for s in &all {
        let label = match s.access {
            Access::Write => "Max Write:",
            Access::Read => "Max Read: ",
            Access::Rand4k => continue,
        };
        let _ = writeln!(
            out,
            "{label} {:.2} MiB/sec ({:.2} MB/sec)",
            s.bw.max,
            s.bw.max * MIB / MB
        );
    }
    out.push_str("\nSummary of all tests:\n");
    out.push_str(&heading(&SUMMARY_COLUMNS, true));
    out.push('\n');
    for s in &all {
        let (block, transfer) = block_and_transfer(plan, s.access);
        let cells = [
            s.access.name().to_string(),
            format!("{:.2}", s.bw.max),
            format!("{:.2}", s.bw.min),
            format!("{:.2}", s.bw.mean),
            format!("{:.2}", s.bw.stddev),
            format!("{:.2}", s.iops.max),
            format!("{:.2}", s.iops.min),
            format!("{:.2}", s.iops.mean),
            format!("{:.2}", s.iops.stddev),
            format!("{:.5}", s.total_s_mean),
            format!("{:.6}", s.latency_mean.mean),
            format!("{:.6}", s.latency_p99.mean),
            plan.tasks.to_string(),
            plan.queue_depth.to_string(),
            plan.repetitions.to_string(),
            u8::from(plan.file_per_process).to_string(),
            u8::from(plan.reorder_tasks).to_string(),
            plan.segments.to_string(),
            block.to_string(),
            transfer.to_string(),
            format!("{:.2}", plan.aggregate_bytes() as f64 / MIB),
            "nacre".to_string(),
        ];
        out.push_str(&row(&cells, &SUMMARY_COLUMNS, true));
        out.push('\n');
    }
    out
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A number as JSON (which has no infinities).
fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.9}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    } else {
        "null".into()
    }
}

fn json_spread(s: &Spread, with_stddev: bool) -> String {
    let mut out = format!(
        "{{\"max\":{},\"min\":{},\"mean\":{}",
        json_number(s.max),
        json_number(s.min),
        json_number(s.mean)
    );
    if with_stddev {
        let _ = write!(out, ",\"stddev\":{}", json_number(s.stddev));
    }
    out.push('}');
    out
}

/// The whole run as one line of JSON.
pub(super) fn json(plan: &Plan, command: &str, results: &[PhaseResult]) -> String {
    let mut out = format!(
        "{{\"tool\":\"nacre bench\",\"format\":{JSON_FORMAT},\"driver\":\"{DRIVER}\",\"command\":{}",
        json_string(command)
    );
    let _ = write!(
        out,
        ",\"params\":{{\"path\":{},\"tasks\":{},\"queue_depth\":{},\"transfer_bytes\":{},\"block_bytes\":{},\"segments\":{},\"file_per_process\":{},\"reorder_tasks\":{},\"random_offsets\":{},\"fsync\":{},\"repetitions\":{},\"stripe_count\":{},\"stripe_size_bytes\":{},\"aggregate_bytes\":{},\"rand4k_ops\":{}}}",
        json_string(&plan.path),
        plan.tasks,
        plan.queue_depth,
        plan.transfer_bytes,
        plan.block_bytes,
        plan.segments,
        plan.file_per_process,
        plan.reorder_tasks,
        plan.random_offsets,
        plan.fsync,
        plan.repetitions,
        plan.stripe_count,
        plan.stripe_size_bytes,
        plan.aggregate_bytes(),
        plan.rand4k_ops
    );
    out.push_str(",\"results\":[");
    for (i, r) in results.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let l = &r.latency;
        let _ = write!(
            out,
            "{{\"access\":\"{}\",\"iter\":{},\"bytes\":{},\"ops\":{},\"bw_mib_s\":{},\"iops\":{},\"open_s\":{},\"rdwr_s\":{},\"close_s\":{},\"total_s\":{},\"latency_s\":{{\"count\":{},\"mean\":{},\"min\":{},\"p50\":{},\"p99\":{},\"max\":{}}}}}",
            r.access.name(),
            r.iter,
            r.bytes,
            r.ops,
            json_number(r.bw_mib_s),
            json_number(r.iops),
            json_number(r.open_s),
            json_number(r.rdwr_s),
            json_number(r.close_s),
            json_number(r.total_s),
            l.count,
            json_number(l.mean_s),
            json_number(l.min_s),
            json_number(l.p50_s),
            json_number(l.p99_s),
            json_number(l.max_s)
        );
    }
    out.push_str("],\"summary\":{");
    let all = summaries(results);
    for (i, s) in all.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "\"{}\":{{\"bw_mib_s\":{},\"iops\":{},\"latency_mean_s\":{},\"latency_p99_s\":{},\"total_s_mean\":{}}}",
            s.access.name(),
            json_spread(&s.bw, true),
            json_spread(&s.iops, true),
            json_spread(&s.latency_mean, false),
            json_spread(&s.latency_p99, false),
            json_number(s.total_s_mean)
        );
    }
    out.push('}');
    // The keys scripts written for the first `nacre bench` read.
    let _ = write!(
        out,
        ",\"size_bytes\":{},\"transfer_bytes\":{},\"threads\":{}",
        plan.aggregate_bytes(),
        plan.transfer_bytes,
        plan.tasks
    );
    for s in &all {
        let (key, value) = match s.access {
            Access::Write => ("write_mib_s", s.bw.mean),
            Access::Read => ("read_mib_s", s.bw.mean),
            Access::Rand4k => ("rand4k_iops", s.iops.mean),
        };
        let _ = write!(out, ",\"{key}\":{}", json_number(value));
    }
    out.push('}');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(open: f64, io: (f64, f64), close: f64, bytes: u64, ops: u64) -> TaskRecord {
        let mut latencies = Latencies::default();
        for _ in 0..ops {
            latencies.record(Duration::from_millis(2));
        }
        TaskRecord {
            times: TaskTimes {
                open_start: open,
                open_end: io.0,
                io_start: io.0,
                io_end: io.1,
                close_start: io.1,
                close_end: close,
            },
            bytes,
            ops,
            latencies,
        }
    }

    #[test]
    fn starts_reduce_by_min_and_ends_by_max() {
        let records = [
            record(0.0, (0.5, 2.0), 2.5, 1 << 20, 4),
            record(0.1, (0.25, 3.0), 4.0, 1 << 20, 4),
        ];
        let r = PhaseResult::reduce(Access::Write, 0, &records);
        assert_eq!(r.bytes, 2 << 20);
        assert_eq!(r.ops, 8);
        assert_eq!(r.open_s, 0.5);
        assert_eq!(r.rdwr_s, 2.75);
        assert_eq!(r.close_s, 2.0);
        assert_eq!(r.total_s, 4.0);
        assert_eq!(r.bw_mib_s, 0.5);
        assert!((r.iops - 8.0 / 2.75).abs() < 1e-12);
        assert_eq!(r.latency.count, 8);
        assert!((r.latency.mean_s - 0.002).abs() < 1e-12);
    }

    #[test]
    fn spread_is_ior_s() {
        let s = spread_of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((s.max, s.min, s.mean), (4.0, 1.0, 2.5));
        assert!((s.stddev - 1.25f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn json_strings_and_numbers_are_valid() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_number(2.5), "2.5");
        assert_eq!(json_number(3.0), "3");
        assert_eq!(json_number(f64::NAN), "null");
        assert_eq!(size_text(47_008), "47008 bytes");
        assert_eq!(size_text(2 << 20), "2 MiB");
    }
}
