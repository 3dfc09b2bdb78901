//! `nacre bench`: IOR's test of a parallel file system, spoken in IOR's language, against
//! Nacre. Tasks (threads of this process) write and read back a shared file, or one file
//! each, in transfers of `-t` bytes, `-b` bytes per task per segment, `-s` segments; each
//! phase is timed and reported as IOR reports it, and every byte read is checked.
//!
//! | flag | IOR's meaning |
//! |---|---|
//! | `-t`, `-b`, `-s` | transfer size, block size (a multiple of the transfer size), segments |
//! | `-N` | tasks (here threads; MPI ranks under an MPI driver) |
//! | `-F` | a file per task (`PATH.00000007`) rather than one shared file |
//! | `-w`, `-r` | the write and read phases (neither given: both) |
//! | `-C` | task `r` reads what task `(r + 1) mod N` wrote |
//! | `-e` | fsync at the end of the write phase (timed, in close) |
//! | `-z` | each task visits its transfers in a random order |
//! | `-i` | repetitions; the summary gives min, max, mean and deviation over them |
//! | `-k`, `-o` | keep the files; the test file's path |
//!
//! plus Nacre's `-c`/`--stripe-count`, `-S`/`--stripe-size` (the layout of created files)
//! and `--queue-depth` (transfers each task keeps in flight), the IO500 shapes as
//! `--preset ior-easy` and `--preset ior-hard`, and the first `nacre bench`'s flags:
//! `--size` (the aggregate bytes, run as `-b` equal to `-t` and as many segments as make up
//! the size, with `-e`, as that command always synced), `--threads` (`-N`), `--transfer`
//! (`-t`) and `--rand4k-ops` (random 4 KiB reads after the read phase, checked).
//!
//! A repetition: the write phase (stale files removed first, untimed; every task opens its
//! file with create, writes, fsyncs with `-e`, closes; then the file sizes are checked), the
//! read phase (every transfer checked against the pattern of [`pattern`], a wrong byte is an
//! error naming the file, offset and writer), the random 4 KiB reads, and the removal of
//! the files the repetition wrote (unless `-k`). A run that only reads (`-r` without `-w`)
//! reads files a run with `-k` left and removes nothing.
//!
//! # For an MPI driver (C, through the C ABI)
//!
//! Tasks here are threads; with `--queue-depth` above 1 each task keeps that many transfers
//! in flight through a [`nacre::Queue`] of its own, with buffers the queue holds until each
//! transfer completes (`submit_read`/`submit_write`). An MPI driver reproduces a
//! run by following [`plan`] (which task moves which bytes, in which order, and which file
//! it opens), [`pattern`] (the bytes, and their check), [`latency`] (the histogram) and
//! [`report`] (the reduction of per-task times, and the text and JSON it prints, with
//! `"driver":"mpi"`): rank `r` is task `r`, the barrier before each phase starts its clock,
//! and rank 0 prints.

mod latency;
mod pattern;
mod plan;
mod progress;
mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::Args;
use nacre::layout::{LayoutError, StripeSpec};
use nacre::meta::types::LayoutSpec;
use nacre::transport::limits::{DEFAULT_CONNECTIONS_PER_PEER, MAX_CONNECTIONS_PER_PEER};
use nacre::units::parse_size;
use nacre::{Client, ClientOptions, File, OpenOptions};

use crate::{Failure, MetaArg, out, outln};
use latency::Latencies;
use plan::{Access, ORDER_SEED, Order, Plan, RAND4K_BYTES, UsageError};
use report::{PhaseResult, TaskRecord, TaskTimes};

/// Tasks when `-N` is not given.
const DEFAULT_TASKS: u32 = 4;
/// Transfer size when neither `-t` nor a preset gives one.
const DEFAULT_TRANSFER_BYTES: u64 = 4 << 20;
/// Block size when neither `-b` nor a preset gives one (rounded down to a multiple of the
/// transfer size, and at least one transfer).
const DEFAULT_BLOCK_BYTES: u64 = 256 << 20;
/// Segments when neither `-s` nor a preset gives them.
const DEFAULT_SEGMENTS: u64 = 1;
/// ior-easy: large transfers (IO500's 2 MiB), a file per task.
const EASY_TRANSFER_BYTES: u64 = 2 << 20;
/// ior-easy: bytes per task (IO500 writes for a fixed time instead; sizes here are fixed).
const EASY_BLOCK_BYTES: u64 = 256 << 20;
/// ior-hard: IO500's 47,008-byte transfers, one per block, into one shared file.
const HARD_TRANSFER_BYTES: u64 = 47_008;
/// ior-hard: segments (so 2048 transfers per task).
const HARD_SEGMENTS: u64 = 2048;
/// The errno of a file that is not there.
const ENOENT: i32 = 2;
/// Longest a task waits for the start of its phase (all tasks are started by then).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a task waits for one of its queued transfers to complete (each is bounded by
/// the client's request timeout, well under this).
const QUEUE_WAIT: Duration = Duration::from_secs(120);

/// The IO500 shapes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Preset {
    /// Large transfers, a file per task: -F -t 2M -b 256M -e -C.
    IorEasy,
    /// 47,008-byte transfers into one shared file: -t 47008 -b 47008 -s 2048 -e -C.
    IorHard,
}

/// `nacre bench`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Sizes take K, M, G and T (powers of 1024). Without -w or -r both \
phases run. Every byte read is checked; a wrong byte fails the run (exit status 1)."
)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    meta: MetaArg,
    /// The test file (replaced); with -F each task's file is PATH.NNNNNNNN.
    #[arg(short = 'o', long, default_value = "/nacre-bench")]
    path: String,
    /// An IO500 shape; -t, -b and -s given with it replace its sizes.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Tasks (threads) doing I/O [default: 4].
    #[arg(short = 'N', long, alias = "threads")]
    tasks: Option<u32>,
    /// Bytes per transfer [default: 4M, or the preset's].
    #[arg(short = 't', long = "transfer-size", alias = "transfer", value_parser = parse_size)]
    transfer_size: Option<u64>,
    /// Bytes per task per segment, a multiple of -t [default: 256M, or the preset's].
    #[arg(short = 'b', long = "block-size", value_parser = parse_size, conflicts_with = "size")]
    block_size: Option<u64>,
    /// Segments [default: 1, or the preset's].
    #[arg(short = 's', long, conflicts_with = "size")]
    segments: Option<u64>,
    /// Total bytes (the first nacre bench's form): sets -b and -s from -t and -N, implies -e.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// A file per task instead of one shared file.
    #[arg(short = 'F', long)]
    file_per_process: bool,
    /// Run the write phase.
    #[arg(short = 'w', long)]
    write: bool,
    /// Run the read phase (every byte checked).
    #[arg(short = 'r', long)]
    read: bool,
    /// Each task reads what the next task wrote.
    #[arg(short = 'C', long)]
    reorder_tasks: bool,
    /// fsync at the end of the write phase.
    #[arg(short = 'e', long)]
    fsync: bool,
    /// Random transfer order within each task's blocks.
    #[arg(short = 'z', long)]
    random: bool,
    /// Repetitions of the whole test.
    #[arg(short = 'i', long, default_value_t = 1)]
    repetitions: u32,
    /// Stripes of created files (-1: every target).
    #[arg(short = 'c', long, default_value_t = -1, allow_hyphen_values = true)]
    stripe_count: i32,
    /// Bytes per stripe of created files.
    #[arg(short = 'S', long, default_value = "1M", value_parser = parse_size)]
    stripe_size: u64,
    /// Transfers each task keeps in flight.
    #[arg(long, default_value_t = 1)]
    queue_depth: u32,
    /// Random 4 KiB reads after the read phase, over all tasks (0: none); checked.
    #[arg(long, default_value_t = 0)]
    rand4k_ops: u64,
    /// Keep the files at the end.
    #[arg(short = 'k', long)]
    keep: bool,
    /// Also print the results as one JSON object, the last line of standard output.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    /// Resolves presets, defaults and the old flags into a checked plan.
    fn plan(&self) -> Result<Plan, UsageError> {
        let (preset_transfer, preset_block, preset_segments) = match self.preset {
            Some(Preset::IorEasy) => (Some(EASY_TRANSFER_BYTES), Some(EASY_BLOCK_BYTES), None),
            Some(Preset::IorHard) => (
                Some(HARD_TRANSFER_BYTES),
                Some(HARD_TRANSFER_BYTES),
                Some(HARD_SEGMENTS),
            ),
            None => (None, None, None),
        };
        let preset_on = self.preset.is_some();
        let mut tasks = self.tasks.unwrap_or(DEFAULT_TASKS);
        let transfer_bytes = self
            .transfer_size
            .or(preset_transfer)
            .unwrap_or(DEFAULT_TRANSFER_BYTES);
        let (block_bytes, segments) = match self.size {
            // A zero -t or -N is left to Plan::check, which names its flag.
            Some(size) if transfer_bytes > 0 && tasks > 0 => {
                if size == 0 || !size.is_multiple_of(transfer_bytes) {
                    return Err(UsageError::new(
                        "--size",
                        format!(
                            "{size} bytes: must be a non-zero multiple of the transfer size (-t {transfer_bytes})"
                        ),
                    ));
                }
                let transfers = size / transfer_bytes;
                // As the first nacre bench did: no more tasks than transfers.
                tasks = u32::try_from(transfers).map_or(tasks, |t| tasks.min(t));
                if !transfers.is_multiple_of(u64::from(tasks)) {
                    return Err(UsageError::new(
                        "--size",
                        format!(
                            "{size} bytes are {transfers} transfers of {transfer_bytes}, which {tasks} tasks (-N) cannot share evenly"
                        ),
                    ));
                }
                (transfer_bytes, transfers / u64::from(tasks))
            }
            Some(_) => (transfer_bytes, DEFAULT_SEGMENTS),
            None => {
                let default_block =
                    (DEFAULT_BLOCK_BYTES / transfer_bytes.max(1)).max(1) * transfer_bytes;
                (
                    self.block_size.or(preset_block).unwrap_or(default_block),
                    self.segments
                        .or(preset_segments)
                        .unwrap_or(DEFAULT_SEGMENTS),
                )
            }
        };
        let neither_phase = !self.write && !self.read;
        let plan = Plan {
            path: self.path.clone(),
            tasks,
            transfer_bytes,
            block_bytes,
            segments,
            file_per_process: self.file_per_process || self.preset == Some(Preset::IorEasy),
            reorder_tasks: self.reorder_tasks || preset_on,
            random_offsets: self.random,
            fsync: self.fsync || preset_on || self.size.is_some(),
            write: self.write || neither_phase,
            read: self.read || neither_phase,
            repetitions: self.repetitions,
            queue_depth: self.queue_depth,
            stripe_count: self.stripe_count,
            stripe_size_bytes: self.stripe_size,
            rand4k_ops: self.rand4k_ops,
            keep: self.keep,
        };
        plan.check()?;
        Ok(plan)
    }
}

/// The layout of created files, checked.
fn layout_spec(plan: &Plan) -> Result<LayoutSpec, UsageError> {
    let spec = LayoutSpec::plain(StripeSpec {
        stripe_count: plan.stripe_count,
        stripe_size_bytes: plan.stripe_size_bytes,
        ..StripeSpec::default()
    });
    spec.check().map_err(|e| {
        let flag = match &e {
            LayoutError::InvalidField { field, .. } if field.contains("size") => "-S/--stripe-size",
            _ => "-c/--stripe-count",
        };
        UsageError::new(flag, format!("invalid layout: {e}"))
    })?;
    Ok(spec)
}

/// Prints a usage error as clap prints its own and exits with status 2.
fn usage_exit(error: &UsageError) -> ! {
    let mut command = BenchArgs::augment_args(clap::Command::new("bench").bin_name("nacre bench"));
    command
        .error(clap::error::ErrorKind::ValueValidation, error.to_string())
        .exit()
}

/// The command line, as the report shows it.
fn command_line() -> String {
    let mut words: Vec<String> = std::env::args().collect();
    if let Some(first) = words.first_mut()
        && let Some(name) = std::path::Path::new(first.as_str()).file_name()
    {
        *first = name.to_string_lossy().into_owned();
    }
    words.join(" ")
}

/// `nacre bench`.
pub(crate) fn bench(args: BenchArgs) -> Result<(), Failure> {
    let plan = args.plan().unwrap_or_else(|e| usage_exit(&e));
    let spec = layout_spec(&plan).unwrap_or_else(|e| usage_exit(&e));
    // Room in the pool for one connection per transfer in flight (up to the transport's
    // bound; made only when used): tasks with a queue depth of 1 make blocking calls through
    // it, and so do the queues' progress threads for targets reached over RDMA.
    let in_flight = (plan.tasks as usize) * (plan.queue_depth as usize);
    let options = ClientOptions {
        connections_per_target: in_flight
            .clamp(DEFAULT_CONNECTIONS_PER_PEER, MAX_CONNECTIONS_PER_PEER),
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&args.meta.meta, options)?;
    let command = command_line();
    out!("{}", report::header(&plan, &args.meta.meta, &command));
    out!("{}", report::results_heading());
    let show_progress = progress::wanted();
    let mut results = Vec::new();
    for rep in 0..plan.repetitions {
        let mut phases = Vec::new();
        if plan.write {
            remove_files(&client, &plan)?;
            phases.push(Access::Write);
        }
        if plan.read {
            phases.push(Access::Read);
        }
        if plan.rand4k_ops > 0 {
            phases.push(Access::Rand4k);
        }
        for access in phases {
            let phase = Phase {
                client: &client,
                plan: &plan,
                spec: &spec,
                access,
                rep,
            };
            let result = phase.run(show_progress)?;
            outln!("{}", report::result_line(&plan, &result));
            results.push(result);
            if access == Access::Write {
                check_sizes(&client, &plan)?;
            }
        }
        if plan.write && !plan.keep {
            remove_files(&client, &plan)?;
        }
    }
    outln!();
    out!("{}", report::summary(&plan, &results));
    if args.json {
        outln!("{}", report::json(&plan, &command, &results));
    }
    Ok(())
}

fn remove_files(client: &Client, plan: &Plan) -> Result<(), Failure> {
    for index in 0..plan.files() {
        match client.unlink(&plan.file_path(index)) {
            Err(e) if e.errno() != ENOENT => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// After a write phase every file holds exactly what was written: a lost or misplaced
/// write shows here before any read.
fn check_sizes(client: &Client, plan: &Plan) -> Result<(), Failure> {
    for index in 0..plan.files() {
        let path = plan.file_path(index);
        let size = client.stat(&path)?.size_bytes;
        if size != plan.file_bytes() {
            return Err(format!(
                "after the write phase {path} is {size} bytes; {} were written",
                plan.file_bytes()
            )
            .into());
        }
    }
    Ok(())
}

/// Why a task stopped.
enum TaskError {
    /// It failed; the message says what, where and which task.
    Failed(String),
    /// Another task failed first.
    Stopped,
}

/// The start of a phase: tasks wait for it, so that every task is running before any
/// clock starts, and none starts when some could not be.
struct Gate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            state: Mutex::new(None),
            opened: Condvar::new(),
        }
    }

    /// Opens the gate: `go` says whether to run or to stop.
    fn open(&self, go: bool) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(go);
        self.opened.notify_all();
    }

    /// Waits for the gate; true to run.
    fn wait(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (state, _) = self
            .opened
            .wait_timeout_while(state, START_TIMEOUT, |s| s.is_none())
            .unwrap_or_else(|p| p.into_inner());
        *state == Some(true)
    }
}

/// One phase of one repetition.
struct Phase<'a> {
    client: &'a Client,
    plan: &'a Plan,
    spec: &'a LayoutSpec,
    access: Access,
    rep: u32,
}

/// What every task of a running phase shares.
struct Shared {
    gate: Gate,
    failed: AtomicBool,
    /// Transfers done by all tasks (for the progress bar).
    done: AtomicU64,
    /// The phase's clock.
    epoch: Instant,
}

impl Shared {
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }
}

/// What one thread of a task measured.
#[derive(Default)]
struct LaneRecord {
    bytes: u64,
    ops: u64,
    latencies: Latencies,
}

/// What one task's threads share.
struct TaskWork<'a> {
    task: u32,
    file: &'a File,
    path: &'a str,
    seed: u64,
    pretend_rank: u32,
    order: &'a Order,
    /// Transfers this task makes.
    count: u64,
    /// The next transfer to make (threads take them in turn).
    next: AtomicU64,
    /// Draws of the random 4 KiB reads.
    rand_seed: u64,
}

impl Phase<'_> {
    fn transfer_len(&self) -> u64 {
        match self.access {
            Access::Rand4k => RAND4K_BYTES,
            Access::Write | Access::Read => self.plan.transfer_bytes,
        }
    }

    fn transfers_of(&self, task: u32) -> u64 {
        match self.access {
            Access::Rand4k => {
                let tasks = u64::from(self.plan.tasks);
                let ops = self.plan.rand4k_ops;
                ops / tasks + u64::from(u64::from(task) < ops % tasks)
            }
            Access::Write | Access::Read => self.plan.transfers_per_task(),
        }
    }

    /// Runs every task, then reduces their records.
    fn run(&self, show_progress: bool) -> Result<PhaseResult, Failure> {
        let shared = Shared {
            gate: Gate::new(),
            failed: AtomicBool::new(false),
            done: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        let total: u64 = (0..self.plan.tasks).map(|t| self.transfers_of(t)).sum();
        let outcomes: Vec<Result<TaskRecord, TaskError>> =
            std::thread::scope(|s| {
                let shared = &shared;
                let (stop, stopped) = mpsc::channel::<()>();
                if show_progress {
                    let label = self.access.name();
                    let unit = self.transfer_len();
                    // Without a bar the run is the same; a failed spawn only loses the bar.
                    let _ = std::thread::Builder::new()
                        .name("bench-progress".into())
                        .spawn_scoped(s, move || {
                            progress::run(label, &shared.done, total, unit, &stopped)
                        });
                }
                let mut handles = Vec::new();
                let mut outcomes = Vec::new();
                for task in 0..self.plan.tasks {
                    let spawned = std::thread::Builder::new()
                        .name(format!("bench-task-{task}"))
                        .spawn_scoped(s, move || self.task(shared, task));
                    match spawned {
                        Ok(handle) => handles.push(handle),
                        Err(e) => {
                            outcomes.push(Err(TaskError::Failed(format!(
                                "cannot start task {task}: {e}"
                            ))));
                            break;
                        }
                    }
                }
                shared.gate.open(outcomes.is_empty());
                for handle in handles {
                    outcomes.push(handle.join().unwrap_or_else(|_| {
                        Err(TaskError::Failed("a bench task panicked".into()))
                    }));
                }
                drop(stop);
                outcomes
            });
        let mut records = Vec::with_capacity(outcomes.len());
        let mut stopped = false;
        for outcome in outcomes {
            match outcome {
                Ok(record) => records.push(record),
                Err(TaskError::Failed(message)) => return Err(message.into()),
                Err(TaskError::Stopped) => stopped = true,
            }
        }
        if stopped || records.is_empty() {
            return Err("the bench tasks stopped without saying why"
                .to_string()
                .into());
        }
        Ok(PhaseResult::reduce(self.access, self.rep, &records))
    }

    /// One task: open, transfer (in `--queue-depth` threads), close.
    fn task(&self, shared: &Shared, task: u32) -> Result<TaskRecord, TaskError> {
        if !shared.gate.wait() {
            return Err(TaskError::Stopped);
        }
        let fail = |message: String| {
            shared.failed.store(true, Ordering::SeqCst);
            TaskError::Failed(message)
        };
        let plan = self.plan;
        let pretend_rank = plan.pretend_rank(task, self.access);
        let file_index = plan.file_index(pretend_rank);
        let path = plan.file_path(file_index);
        let order = match self.access {
            Access::Rand4k => Order::Sequential(0),
            Access::Write | Access::Read => plan.order(pretend_rank, self.rep, self.access),
        };
        debug_assert!(
            self.access == Access::Rand4k || order.len() == self.transfers_of(task),
            "a task's order visits each of its transfers"
        );
        let open_start = shared.now();
        let options = match self.access {
            Access::Write => OpenOptions::new()
                .write(true)
                .create(true)
                .layout(self.spec.clone()),
            Access::Read | Access::Rand4k => OpenOptions::new().read(true),
        };
        let file = self
            .client
            .open(&path, &options)
            .map_err(|e| fail(format!("task {task}: cannot open {path}: {e}")))?;
        let open_end = shared.now();
        let work = TaskWork {
            task,
            file: &file,
            path: &path,
            seed: pattern::file_seed(file_index),
            pretend_rank,
            order: &order,
            count: self.transfers_of(task),
            next: AtomicU64::new(0),
            rand_seed: pattern::splitmix64(
                ORDER_SEED ^ (u64::from(self.rep) << 32) ^ (0xff << 24) ^ u64::from(task),
            ),
        };
        let io_start = shared.now();
        let lanes: Vec<Result<LaneRecord, TaskError>> = if plan.queue_depth > 1 {
            vec![self.queued(shared, &work, plan.queue_depth as usize)]
        } else {
            vec![self.lane(shared, &work)]
        };
        let io_end = shared.now();
        let mut record = TaskRecord::default();
        let mut stopped = false;
        for lane in lanes {
            match lane {
                Ok(lane) => {
                    record.bytes += lane.bytes;
                    record.ops += lane.ops;
                    record.latencies.merge(&lane.latencies);
                }
                Err(TaskError::Stopped) => stopped = true,
                Err(failed) => return Err(failed),
            }
        }
        if stopped {
            return Err(TaskError::Stopped);
        }
        let close_start = shared.now();
        if self.access == Access::Write && plan.fsync {
            file.sync()
                .map_err(|e| fail(format!("task {task}: fsync of {path} failed: {e}")))?;
        }
        drop(file);
        let close_end = shared.now();
        record.times = TaskTimes {
            open_start,
            open_end,
            io_start,
            io_end,
            close_start,
            close_end,
        };
        Ok(record)
    }

    /// One thread of a task: takes the task's transfers in turn until none are left.
    fn lane(&self, shared: &Shared, work: &TaskWork<'_>) -> Result<LaneRecord, TaskError> {
        let fail = |message: String| {
            shared.failed.store(true, Ordering::SeqCst);
            TaskError::Failed(message)
        };
        let (task, path) = (work.task, work.path);
        let len = self.transfer_len();
        let mut buf = vec![0u8; len as usize];
        let mut record = LaneRecord::default();
        loop {
            if shared.failed.load(Ordering::Relaxed) {
                return Err(TaskError::Stopped);
            }
            let k = work.next.fetch_add(1, Ordering::Relaxed);
            if k >= work.count {
                return Ok(record);
            }
            let offset = self.offset_of(work, k);
            if self.access == Access::Write {
                pattern::fill(&mut buf, offset, work.seed);
                let started = Instant::now();
                work.file.write_at(&buf, offset).map_err(|e| {
                    fail(format!(
                        "task {task}: write of {len} bytes at offset {offset} of {path} failed: {e}"
                    ))
                })?;
                record.latencies.record(started.elapsed());
            } else {
                let started = Instant::now();
                let n = work.file.read_at(&mut buf, offset).map_err(|e| {
                    fail(format!(
                        "task {task}: read of {len} bytes at offset {offset} of {path} failed: {e}"
                    ))
                })?;
                record.latencies.record(started.elapsed());
                self.check_read(work, &buf, n as u64, offset)
                    .map_err(fail)?;
            }
            record.bytes += len;
            record.ops += 1;
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Where transfer `k` of a task goes.
    fn offset_of(&self, work: &TaskWork<'_>, k: u64) -> u64 {
        match self.access {
            Access::Write | Access::Read => self.plan.offset(work.pretend_rank, work.order.get(k)),
            Access::Rand4k => {
                let blocks = self.plan.file_bytes() / RAND4K_BYTES;
                (pattern::splitmix64(work.rand_seed ^ k) % blocks) * RAND4K_BYTES
            }
        }
    }

    /// Checks a read of `n` bytes at `offset` into `buf`: whole, and every byte what its
    /// writer wrote.
    fn check_read(
        &self,
        work: &TaskWork<'_>,
        buf: &[u8],
        n: u64,
        offset: u64,
    ) -> Result<(), String> {
        let (task, path, len) = (work.task, work.path, buf.len());
        if n != len as u64 {
            return Err(format!(
                "task {task}: short read at offset {offset} of {path}: {n} of {len} bytes"
            ));
        }
        pattern::verify(buf, offset, work.seed).map_err(|m| {
            let writer = self
                .plan
                .writer_of(self.plan.file_index(work.pretend_rank), m.offset);
            format!(
                "task {task}: verification failed: {path} at offset {} holds {:#04x}, \
                 expected {:#04x} (written by task {writer})",
                m.offset, m.found, m.expected
            )
        })
    }

    /// A task's transfers through one [`nacre::Queue`] of `depth`: this thread keeps
    /// `depth` of them in flight, each with a buffer of its own that the queue holds until
    /// the transfer completes.
    fn queued(
        &self,
        shared: &Shared,
        work: &TaskWork<'_>,
        depth: usize,
    ) -> Result<LaneRecord, TaskError> {
        let fail = |message: String| {
            shared.failed.store(true, Ordering::SeqCst);
            TaskError::Failed(message)
        };
        let (task, path) = (work.task, work.path);
        let len = self.transfer_len();
        let queue = self
            .client
            .queue(depth)
            .map_err(|e| fail(format!("task {task}: cannot open a queue of {depth}: {e}")))?;
        let mut free: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; len as usize]).collect();
        // By tag (the transfer's index): where it went and when it started.
        let mut started: HashMap<u64, (u64, Instant)> = HashMap::with_capacity(depth);
        let mut record = LaneRecord::default();
        let mut next = 0u64;
        let write = self.access == Access::Write;
        while next < work.count || !started.is_empty() {
            if shared.failed.load(Ordering::Relaxed) {
                // Dropping the queue waits for what is in flight.
                return Err(TaskError::Stopped);
            }
            // Every transfer a buffer is free for, its requests sent together.
            queue.batch(|queue| {
                while next < work.count {
                    let Some(mut buf) = free.pop() else {
                        break;
                    };
                    let offset = self.offset_of(work, next);
                    let submitted = if write {
                        pattern::fill(&mut buf, offset, work.seed);
                        queue.submit_write(work.file, buf, offset, next)
                    } else {
                        queue.submit_read(work.file, buf, offset, next)
                    };
                    submitted.map_err(|r| {
                        fail(format!(
                            "task {task}: cannot queue a transfer of {path}: {}",
                            r.error
                        ))
                    })?;
                    started.insert(next, (offset, Instant::now()));
                    next += 1;
                }
                Ok(())
            })?;
            let done = queue.wait(1, QUEUE_WAIT);
            if done.is_empty() {
                return Err(fail(format!(
                    "task {task}: no transfer of {path} completed within {} s",
                    QUEUE_WAIT.as_secs()
                )));
            }
            for c in done {
                let Some((offset, at)) = started.remove(&c.tag) else {
                    return Err(fail(format!(
                        "task {task}: a completion with unknown tag {}",
                        c.tag
                    )));
                };
                record.latencies.record(at.elapsed());
                let what = if write { "write" } else { "read" };
                let n = c.result.map_err(|e| {
                    fail(format!(
                        "task {task}: {what} of {len} bytes at offset {offset} of {path} failed: {e}"
                    ))
                })?;
                let buf = c.buffer.unwrap_or_else(|| vec![0u8; len as usize]);
                if !write {
                    self.check_read(work, &buf, n, offset).map_err(fail)?;
                }
                free.push(buf);
                record.bytes += len;
                record.ops += 1;
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(record)
    }
}
