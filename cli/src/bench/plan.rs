//! The arithmetic of an IOR run: which bytes of which file each task moves, and in what
//! order. Pure (no I/O, no threads), so a driver of any kind (threads here, MPI ranks
//! through the C ABI) follows the same plan. With `N` tasks, transfer size `t`, block size
//! `b` and `s` segments, task `r` moves `b` bytes per segment in `b/t` transfers:
//!
//! ```text
//! shared file:       offset = seg * (N * b) + r * b + i * t     (one file, N*b*s bytes)
//! file per process:  offset = seg * b + i * t                   (file r, b*s bytes)
//! ```
//!
//! for `seg` in `0..s` and `i` in `0..b/t`; transfer number `n = seg * (b/t) + i`.
//!
//! Reads use the data of the "pretend rank": the task itself, or with `-C` (IOR's
//! reorderTasks, one task per node on one node) task `(r + 1) mod N`, so no task reads back
//! what it wrote itself. With `-z` a task visits its `s * b/t` transfers in a random order:
//! a Fisher-Yates shuffle of `0..s*b/t` drawn from splitmix64 seeded with
//! `splitmix64(ORDER_SEED xor (rep << 32) xor (phase << 24) xor pretend_rank)` (phase 0 for
//! write, 1 for read; draw `k` is the state advanced by the golden-ratio step `k+1` times,
//! index `j = draw mod (i + 1)` for `i` from the last down to 1). Every transfer is still
//! moved exactly once. IOR 3.3 instead deals a shared file's transfers out to random tasks;
//! keeping each task on its own blocks gives the same coverage and makes `-C` meaningful.

use std::fmt;

use super::pattern::splitmix64;

/// How far `-C` moves a reading task: one task, the shift IOR uses for one task per node.
pub(super) const READ_TASK_SHIFT: u32 = 1;
/// Mixed into every random order's seed.
pub(super) const ORDER_SEED: u64 = 0x7a5f_0ff5_e7a5_0001;
/// The golden-ratio step of splitmix64's state.
const SPLITMIX_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
/// Most tasks in one run.
pub(super) const MAX_TASKS: u32 = 1024;
/// Deepest queue of one task.
pub(super) const MAX_QUEUE_DEPTH: u32 = 256;
/// Most transfers in flight over all tasks (each is a thread of its own).
pub(super) const MAX_IN_FLIGHT: u64 = 1024;
/// Largest transfer.
pub(super) const MAX_TRANSFER_BYTES: u64 = 1 << 30;
/// Most memory for transfer buffers (one per transfer in flight).
pub(super) const MAX_BUFFER_BYTES: u64 = 4 << 30;
/// Most transfers over all tasks whose order `-z` shuffles (8 bytes of memory each).
pub(super) const MAX_SHUFFLED_TRANSFERS: u64 = 1 << 25;
/// Most repetitions.
pub(super) const MAX_REPETITIONS: u32 = 10_000;
/// Size of each read of `--rand4k-ops`.
pub(super) const RAND4K_BYTES: u64 = 4096;

/// The access of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// The write phase (`-w`).
    Write,
    /// The read phase (`-r`), every byte checked.
    Read,
    /// Random 4 KiB reads of the read phase's files (`--rand4k-ops`), every byte checked.
    Rand4k,
}

impl Access {
    /// Its name in reports (IOR's `access` column).
    pub(super) fn name(self) -> &'static str {
        match self {
            Access::Write => "write",
            Access::Read => "read",
            Access::Rand4k => "rand4k",
        }
    }

    fn order_code(self) -> u64 {
        match self {
            Access::Write => 0,
            Access::Read => 1,
            Access::Rand4k => 2,
        }
    }
}

/// A resolved, checked run: every IOR parameter with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    /// The test file (IOR `-o`); with file per process, the prefix of each task's file.
    pub path: String,
    /// Tasks (`-N`).
    pub tasks: u32,
    /// Bytes per transfer (`-t`).
    pub transfer_bytes: u64,
    /// Bytes per task per segment (`-b`).
    pub block_bytes: u64,
    /// Segments (`-s`).
    pub segments: u64,
    /// One file per task (`-F`) rather than one shared file.
    pub file_per_process: bool,
    /// Reads take the data of the next task (`-C`).
    pub reorder_tasks: bool,
    /// Transfers in a random order (`-z`).
    pub random_offsets: bool,
    /// fsync at the end of the write phase (`-e`).
    pub fsync: bool,
    /// Run the write phase (`-w`).
    pub write: bool,
    /// Run the read phase (`-r`).
    pub read: bool,
    /// Repetitions (`-i`).
    pub repetitions: u32,
    /// Transfers each task keeps in flight (`--queue-depth`).
    pub queue_depth: u32,
    /// Stripes of a created file (`-c`, -1 for every target).
    pub stripe_count: i32,
    /// Bytes per stripe of a created file (`-S`).
    pub stripe_size_bytes: u64,
    /// Random 4 KiB reads after the read phase, over all tasks (`--rand4k-ops`).
    pub rand4k_ops: u64,
    /// Keep the files at the end (`-k`).
    pub keep: bool,
}

impl Plan {
    /// Checks every parameter and the relations between them; the error names the flag.
    pub(super) fn check(&self) -> Result<(), UsageError> {
        let bad = |flag, message: String| Err(UsageError::new(flag, message));
        if !self.path.starts_with('/') || self.path.len() < 2 || self.path.ends_with('/') {
            return bad(
                "-o/--path",
                format!(
                    "'{}'; the test file is an absolute path in the file system, such as \
                     /nacre-bench",
                    self.path
                ),
            );
        }
        if self.tasks == 0 || self.tasks > MAX_TASKS {
            return bad(
                "-N/--tasks",
                format!("{} tasks; allowed 1 to {MAX_TASKS}", self.tasks),
            );
        }
        if self.transfer_bytes == 0 || self.transfer_bytes > MAX_TRANSFER_BYTES {
            return bad(
                "-t/--transfer-size",
                format!(
                    "transfer size {}; allowed 1 byte to {MAX_TRANSFER_BYTES} bytes",
                    self.transfer_bytes
                ),
            );
        }
        if self.block_bytes == 0 || !self.block_bytes.is_multiple_of(self.transfer_bytes) {
            return bad(
                "-b/--block-size",
                format!(
                    "block size {} must be a non-zero multiple of the transfer size (-t {})",
                    self.block_bytes, self.transfer_bytes
                ),
            );
        }
        if self.segments == 0 {
            return bad("-s/--segments", "0 segments; at least 1".into());
        }
        let aggregate = self
            .block_bytes
            .checked_mul(self.segments)
            .and_then(|b| b.checked_mul(u64::from(self.tasks)));
        if aggregate.is_none() {
            return bad(
                "-s/--segments",
                format!(
                    "{} tasks x {} segments x {}-byte blocks is more bytes than a file can hold",
                    self.tasks, self.segments, self.block_bytes
                ),
            );
        }
        if self.repetitions == 0 || self.repetitions > MAX_REPETITIONS {
            return bad(
                "-i/--repetitions",
                format!(
                    "{} repetitions; allowed 1 to {MAX_REPETITIONS}",
                    self.repetitions
                ),
            );
        }
        if self.queue_depth == 0 || self.queue_depth > MAX_QUEUE_DEPTH {
            return bad(
                "--queue-depth",
                format!("{}; allowed 1 to {MAX_QUEUE_DEPTH}", self.queue_depth),
            );
        }
        let in_flight = u64::from(self.tasks) * u64::from(self.queue_depth);
        if in_flight > MAX_IN_FLIGHT {
            return bad(
                "--queue-depth",
                format!(
                    "{} tasks x queue depth {} = {in_flight} transfers in flight; at most {MAX_IN_FLIGHT}",
                    self.tasks, self.queue_depth
                ),
            );
        }
        if in_flight * self.transfer_bytes > MAX_BUFFER_BYTES {
            return bad(
                "-t/--transfer-size",
                format!(
                    "{in_flight} transfers in flight of {} bytes need more than {MAX_BUFFER_BYTES} bytes of buffers",
                    self.transfer_bytes
                ),
            );
        }
        if self.random_offsets
            && u64::from(self.tasks) * self.transfers_per_task() > MAX_SHUFFLED_TRANSFERS
        {
            return bad(
                "-z/--random",
                format!(
                    "{} transfers to shuffle; at most {MAX_SHUFFLED_TRANSFERS} (use a larger -t or fewer segments)",
                    u64::from(self.tasks) * self.transfers_per_task()
                ),
            );
        }
        if self.rand4k_ops > 0 && self.file_bytes() < RAND4K_BYTES {
            return bad(
                "--rand4k-ops",
                format!(
                    "files of {} bytes are too small for {RAND4K_BYTES}-byte reads",
                    self.file_bytes()
                ),
            );
        }
        if !self.write && !self.read && self.rand4k_ops == 0 {
            return bad(
                "-w/--write",
                "no phase to run (-w, -r or --rand4k-ops)".into(),
            );
        }
        Ok(())
    }

    /// Transfers per block.
    pub(super) fn transfers_per_block(&self) -> u64 {
        self.block_bytes / self.transfer_bytes
    }

    /// Transfers each task makes in a read or write phase.
    pub(super) fn transfers_per_task(&self) -> u64 {
        self.transfers_per_block() * self.segments
    }

    /// Bytes each task moves in a read or write phase.
    pub(super) fn bytes_per_task(&self) -> u64 {
        self.block_bytes * self.segments
    }

    /// Bytes all tasks move in a read or write phase (IOR's aggregate file size).
    pub(super) fn aggregate_bytes(&self) -> u64 {
        self.bytes_per_task() * u64::from(self.tasks)
    }

    /// Size of each file once written.
    pub(super) fn file_bytes(&self) -> u64 {
        if self.file_per_process {
            self.bytes_per_task()
        } else {
            self.aggregate_bytes()
        }
    }

    /// How many files the run uses.
    pub(super) fn files(&self) -> u32 {
        if self.file_per_process { self.tasks } else { 1 }
    }

    /// The task whose data `task` moves in a phase of `access`.
    pub(super) fn pretend_rank(&self, task: u32, access: Access) -> u32 {
        debug_assert!(task < self.tasks);
        if access != Access::Write && self.reorder_tasks {
            (task + READ_TASK_SHIFT) % self.tasks
        } else {
            task
        }
    }

    /// The file holding the data of `pretend_rank` (0 for a shared file).
    pub(super) fn file_index(&self, pretend_rank: u32) -> u32 {
        if self.file_per_process {
            pretend_rank
        } else {
            0
        }
    }

    /// The path of file `index`: the test file, or with file per process the test file
    /// followed by a dot and the index in eight digits, as IOR names them.
    pub(super) fn file_path(&self, index: u32) -> String {
        if self.file_per_process {
            format!("{}.{index:08}", self.path)
        } else {
            self.path.clone()
        }
    }

    /// The file offset of transfer `n` (in sequential order) of `pretend_rank`'s data.
    pub(super) fn offset(&self, pretend_rank: u32, n: u64) -> u64 {
        debug_assert!(n < self.transfers_per_task());
        let segment = n / self.transfers_per_block();
        let i = n % self.transfers_per_block();
        let within_block = i * self.transfer_bytes;
        if self.file_per_process {
            segment * self.block_bytes + within_block
        } else {
            segment * u64::from(self.tasks) * self.block_bytes
                + u64::from(pretend_rank) * self.block_bytes
                + within_block
        }
    }

    /// The task that wrote the byte at `offset` of file `file_index`.
    pub(super) fn writer_of(&self, file_index: u32, offset: u64) -> u32 {
        if self.file_per_process {
            file_index
        } else {
            ((offset / self.block_bytes) % u64::from(self.tasks)) as u32
        }
    }

    /// The order in which a task visits its transfers in repetition `rep`.
    pub(super) fn order(&self, pretend_rank: u32, rep: u32, access: Access) -> Order {
        let count = self.transfers_per_task();
        if !self.random_offsets {
            return Order::Sequential(count);
        }
        let seed = splitmix64(
            ORDER_SEED
                ^ (u64::from(rep) << 32)
                ^ (access.order_code() << 24)
                ^ u64::from(pretend_rank),
        );
        Order::Shuffled(shuffled(count, seed))
    }
}

/// A random permutation of `0..count` (Fisher-Yates, draws from splitmix64).
fn shuffled(count: u64, seed: u64) -> Vec<u64> {
    let mut out: Vec<u64> = (0..count).collect();
    let mut state = seed;
    for i in (1..out.len()).rev() {
        state = state.wrapping_add(SPLITMIX_STEP);
        let draw = splitmix64(state);
        let j = (draw % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

/// The order of a task's transfers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Order {
    /// `0, 1, 2, ...` up to the count.
    Sequential(u64),
    /// A permutation.
    Shuffled(Vec<u64>),
}

impl Order {
    /// How many transfers.
    pub(super) fn len(&self) -> u64 {
        match self {
            Order::Sequential(n) => *n,
            Order::Shuffled(v) => v.len() as u64,
        }
    }

    /// The transfer number visited `k`-th.
    pub(super) fn get(&self, k: u64) -> u64 {
        match self {
            Order::Sequential(_) => k,
            Order::Shuffled(v) => v[k as usize],
        }
    }
}

/// A usage error: the flag and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UsageError {
    /// The flag, as typed (`-b`, `--queue-depth`).
    pub flag: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.message)
    }
}

impl UsageError {
    /// An error about `flag`.
    pub(super) fn new(flag: &'static str, message: String) -> UsageError {
        UsageError { flag, message }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan(tasks: u32, transfer: u64, block: u64, segments: u64, fpp: bool) -> Plan {
        Plan {
            path: "/f".into(),
            tasks,
            transfer_bytes: transfer,
            block_bytes: block,
            segments,
            file_per_process: fpp,
            reorder_tasks: false,
            random_offsets: false,
            fsync: false,
            write: true,
            read: true,
            repetitions: 1,
            queue_depth: 1,
            stripe_count: -1,
            stripe_size_bytes: 1 << 20,
            rand4k_ops: 0,
            keep: false,
        }
    }

    /// Every byte of every file is moved by exactly one transfer of one task.
    fn assert_covers_exactly_once(p: &Plan, access: Access) {
        let mut seen: Vec<Vec<u32>> = vec![vec![0; p.file_bytes() as usize]; p.files() as usize];
        for task in 0..p.tasks {
            let pretend = p.pretend_rank(task, access);
            let file = p.file_index(pretend) as usize;
            let order = p.order(pretend, 0, access);
            assert_eq!(order.len(), p.transfers_per_task());
            for k in 0..order.len() {
                let offset = p.offset(pretend, order.get(k));
                for at in offset..offset + p.transfer_bytes {
                    assert_eq!(p.writer_of(file as u32, at), pretend, "{p:?} at {at}");
                    seen[file][at as usize] += 1;
                }
            }
        }
        assert!(seen.iter().flatten().all(|&n| n == 1), "{p:?} {access:?}");
    }

    #[test]
    fn shared_and_per_process_layouts_cover_each_byte_once() {
        for fpp in [false, true] {
            for (tasks, t, b, s) in [(1, 8, 8, 1), (3, 5, 15, 2), (4, 47, 94, 3), (2, 4, 16, 4)] {
                let mut p = plan(tasks, t, b, s, fpp);
                for (reorder, random) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    p.reorder_tasks = reorder;
                    p.random_offsets = random;
                    assert_covers_exactly_once(&p, Access::Write);
                    assert_covers_exactly_once(&p, Access::Read);
                }
            }
        }
    }

    #[test]
    fn bad_parameters_name_their_flag() {
        let good = plan(4, 47_008, 47_008 * 2, 3, false);
        assert_eq!(good.check(), Ok(()));
        let flag_of = |change: &dyn Fn(&mut Plan)| {
            let mut p = good.clone();
            change(&mut p);
            p.check().map_err(|e| e.flag)
        };
        assert_eq!(flag_of(&|p| p.path = "relative".into()), Err("-o/--path"));
        assert_eq!(flag_of(&|p| p.path = "/".into()), Err("-o/--path"));
        assert_eq!(flag_of(&|p| p.path = "/dir/".into()), Err("-o/--path"));
        assert_eq!(flag_of(&|p| p.tasks = 0), Err("-N/--tasks"));
        assert_eq!(
            flag_of(&|p| p.transfer_bytes = 0),
            Err("-t/--transfer-size")
        );
        assert_eq!(flag_of(&|p| p.block_bytes = 47_009), Err("-b/--block-size"));
        assert_eq!(flag_of(&|p| p.block_bytes = 0), Err("-b/--block-size"));
        assert_eq!(flag_of(&|p| p.segments = 0), Err("-s/--segments"));
        assert_eq!(flag_of(&|p| p.segments = u64::MAX), Err("-s/--segments"));
        assert_eq!(flag_of(&|p| p.repetitions = 0), Err("-i/--repetitions"));
        assert_eq!(flag_of(&|p| p.queue_depth = 0), Err("--queue-depth"));
        assert_eq!(flag_of(&|p| p.queue_depth = 257), Err("--queue-depth"));
        assert_eq!(
            flag_of(&|p| {
                p.tasks = 8;
                p.queue_depth = 200;
            }),
            Err("--queue-depth")
        );
        assert_eq!(
            flag_of(&|p| p.transfer_bytes = 1 << 30),
            Err("-b/--block-size")
        );
        assert_eq!(
            flag_of(&|p| {
                p.transfer_bytes = 1 << 30;
                p.block_bytes = 1 << 30;
                p.queue_depth = 2;
            }),
            Err("-t/--transfer-size")
        );
        assert_eq!(
            flag_of(&|p| {
                p.random_offsets = true;
                p.transfer_bytes = 1;
                p.segments = 100;
            }),
            Err("-z/--random")
        );
        assert_eq!(
            flag_of(&|p| {
                p.rand4k_ops = 1;
                p.block_bytes = 8;
                p.transfer_bytes = 8;
                p.segments = 1;
            }),
            Err("--rand4k-ops")
        );
    }

    #[test]
    fn offsets_follow_ior() {
        let p = plan(4, 1024, 4096, 3, false);
        // Segment 2, task 3, transfer 1 of the block.
        assert_eq!(p.offset(3, 2 * 4 + 1), 2 * 4 * 4096 + 3 * 4096 + 1024);
        let p = plan(4, 1024, 4096, 3, true);
        assert_eq!(p.offset(3, 2 * 4 + 1), 2 * 4096 + 1024);
        assert_eq!(p.file_path(3), "/f.00000003");
        assert_eq!(p.aggregate_bytes(), 4 * 4096 * 3);
        assert_eq!(p.file_bytes(), 4096 * 3);
    }

    #[test]
    fn reordered_reads_take_the_next_task() {
        let mut p = plan(4, 8, 8, 1, false);
        p.reorder_tasks = true;
        assert_eq!(p.pretend_rank(0, Access::Write), 0);
        assert_eq!(p.pretend_rank(0, Access::Read), 1);
        assert_eq!(p.pretend_rank(3, Access::Read), 0);
        let mut one = plan(1, 8, 8, 1, false);
        one.reorder_tasks = true;
        assert_eq!(one.pretend_rank(0, Access::Read), 0);
    }

    #[test]
    fn random_orders_are_permutations_that_differ() {
        let mut p = plan(2, 1, 64, 4, false);
        p.random_offsets = true;
        let a = p.order(0, 0, Access::Write);
        let b = p.order(0, 0, Access::Read);
        let c = p.order(0, 1, Access::Write);
        assert_eq!(a, p.order(0, 0, Access::Write), "reproducible");
        for order in [&a, &b, &c] {
            let Order::Shuffled(v) = order else {
                panic!("-z gives a shuffled order")
            };
            let mut sorted = v.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..256).collect::<Vec<_>>());
        }
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, Order::Shuffled((0..256).collect()));
    }
}
