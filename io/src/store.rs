//! `ObjectStore`: one thread's engine for moving object bytes through io_uring.
//!
//! A store owns one ring, a registered file table of open objects (bounded, least recently
//! used evicted), a fixed-buffer table (its bounce buffers and the memory callers register),
//! and the state of every operation it accepted. It is `Send` but not `Sync`: a server runs
//! one store per core and gives each the objects it serves, so no lock sits on the data path.
//! Two stores writing the same object at once are not coordinated (docs/decisions/0002-one-object-store-per-thread.md).
//!
//! Aligned operations (offset, length and memory address multiples of
//! [`DIRECT_IO_ALIGN_BYTES`]) go straight between the caller's memory and the file with
//! O_DIRECT, as READ_FIXED/WRITE_FIXED when the memory is registered. Unaligned ones go
//! through a registered bounce buffer; an unaligned write reads its partial edge blocks,
//! merges, and writes whole blocks (read-modify-write).
//!
//! Writes, punches and truncates hold a range lock on the blocks they touch, so overlapping
//! ones run one after the other in submission order and a read-modify-write never loses a
//! neighbour's bytes.
//!
//! An unaligned write that ends past the object's end inside a block goes through the page
//! cache instead (a second descriptor of the object, without O_DIRECT): O_DIRECT writes
//! whole blocks, so its last block would make the object longer than anything written
//! until the store trimmed it back, and a target killed in between kept that size. Through
//! the page cache the size moves once, to the write's end, with the write. Such a write
//! locks everything from its first block to the end of the object, which it moves. Later
//! O_DIRECT reads and writes of those blocks see its bytes: the kernel writes dirty pages
//! back before a direct transfer of their range.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use crate::buf::AlignedBuf;
use crate::error::{IoError, Operation};
use crate::limits::*;
use crate::ring::{self, Ring};
use crate::target::Target;

/// Tags with this bit set are the store's own (its blocking helpers use them).
pub const RESERVED_TAG_BIT: u64 = 1 << 63;

/// How a store is sized. Every field is bounded by the constant in `limits` named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// io_uring submission queue depth: how many operations are in the kernel at once.
    pub queue_depth: u32,
    /// How many objects stay open in the registered file table.
    pub open_objects: u32,
    /// How many operations the store accepts before they complete.
    pub max_ops: u32,
    /// How many bounce buffers (each [`BOUNCE_BUFFER_BYTES`]) serve unaligned operations.
    pub bounce_buffers: u32,
    /// Issue reads and writes from io_uring's worker threads (IOSQE_ASYNC) instead of inline
    /// in the submitting thread. It spreads issuing over idle cores: worth it when the store's
    /// thread is the only busy one (here: 4 KiB random reads at queue depth 32 gain about
    /// 15%); not when every core runs its own store.
    pub offload_issue: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            queue_depth: DEFAULT_QUEUE_DEPTH,
            open_objects: DEFAULT_OPEN_OBJECTS,
            max_ops: DEFAULT_MAX_OPS,
            bounce_buffers: DEFAULT_BOUNCE_BUFFERS,
            offload_issue: false,
        }
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), IoError> {
        let check = |field, value: u32, max: u32, allowed| {
            if value == 0 || value > max {
                return Err(IoError::InvalidArgument {
                    op: Operation::Ring,
                    field,
                    value: u64::from(value),
                    allowed,
                });
            }
            Ok(())
        };
        // A read-modify-write puts its two edge reads in the kernel at once.
        if self.queue_depth < 2 {
            return Err(IoError::InvalidArgument {
                op: Operation::Ring,
                field: "queue_depth",
                value: u64::from(self.queue_depth),
                allowed: "2 to MAX_QUEUE_DEPTH (4096)",
            });
        }
        check(
            "queue_depth",
            self.queue_depth,
            MAX_QUEUE_DEPTH,
            "2 to MAX_QUEUE_DEPTH (4096)",
        )?;
        check(
            "open_objects",
            self.open_objects,
            MAX_OPEN_OBJECTS,
            "1 to MAX_OPEN_OBJECTS (65536)",
        )?;
        check("max_ops", self.max_ops, MAX_OPS, "1 to MAX_OPS (65536)")?;
        check(
            "bounce_buffers",
            self.bounce_buffers,
            MAX_BOUNCE_BUFFERS,
            "1 to MAX_BOUNCE_BUFFERS (64)",
        )
    }
}

/// One operation on an object. Memory is named by raw pointers because it is lent to the
/// kernel until the operation's completion is reaped; see [`ObjectStore::submit`].
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Read `len` bytes at `offset_bytes` into `buf`. Completes with the number of bytes
    /// read, short at the end of the object.
    Read {
        /// The object.
        object_id: u64,
        /// Where in the object.
        offset_bytes: u64,
        /// Destination.
        buf: *mut u8,
        /// How many bytes (1 to [`MAX_IO_BYTES`]).
        len: usize,
    },
    /// Write `len` bytes from `buf` at `offset_bytes`. Completes with `len`.
    Write {
        /// The object.
        object_id: u64,
        /// Where in the object.
        offset_bytes: u64,
        /// Source.
        buf: *const u8,
        /// How many bytes (1 to [`MAX_IO_BYTES`]).
        len: usize,
    },
    /// fdatasync: every write completed before this was submitted is durable when it completes.
    Sync {
        /// The object.
        object_id: u64,
    },
    /// Set the object's size.
    Truncate {
        /// The object.
        object_id: u64,
        /// The new size.
        size_bytes: u64,
    },
    /// Deallocate `[offset_bytes, offset_bytes + len)`; it reads as zeros, the size stays.
    Punch {
        /// The object.
        object_id: u64,
        /// Start of the hole.
        offset_bytes: u64,
        /// Length of the hole.
        len: u64,
    },
}

impl Op {
    fn object_id(&self) -> u64 {
        match *self {
            Op::Read { object_id, .. }
            | Op::Write { object_id, .. }
            | Op::Sync { object_id }
            | Op::Truncate { object_id, .. }
            | Op::Punch { object_id, .. } => object_id,
        }
    }

    fn operation(&self) -> Operation {
        match self {
            Op::Read { .. } => Operation::Read,
            Op::Write { .. } => Operation::Write,
            Op::Sync { .. } => Operation::Sync,
            Op::Truncate { .. } => Operation::Truncate,
            Op::Punch { .. } => Operation::Punch,
        }
    }
}

/// The end of one operation: the caller's tag and the bytes moved, or the error.
#[derive(Debug)]
pub struct Completion {
    /// The tag given at submission.
    pub tag: u64,
    /// Bytes read or written (0 for sync, truncate and punch), or the error.
    pub result: Result<u64, IoError>,
}

/// A read or write for [`ObjectStore::batch`], borrowing its memory for the call.
#[derive(Debug)]
pub enum BatchOp<'a> {
    /// Read into the slice at the offset.
    Read {
        /// The object.
        object_id: u64,
        /// Where in the object.
        offset_bytes: u64,
        /// Destination.
        buf: &'a mut [u8],
    },
    /// Write the slice at the offset.
    Write {
        /// The object.
        object_id: u64,
        /// Where in the object.
        offset_bytes: u64,
        /// Source.
        buf: &'a [u8],
    },
}

const ALIGN: u64 = DIRECT_IO_ALIGN_BYTES;
/// Sub-operation ids carried in the high half of an SQE's user data.
const SUB_MAIN: u64 = 0;
const SUB_HEAD: u64 = 1;
const SUB_TAIL: u64 = 2;
/// A write through the object's page-cache descriptor (see the module documentation).
const SUB_BUFFERED: u64 = 3;

/// Completions taken from the ring per step of [`ObjectStore::reap`] (it takes steps until
/// the ring has none left).
const REAP_BATCH: usize = 64;

/// Largest end offset of an operation: file offsets are signed 64-bit, and an unaligned
/// edge may round up by less than a bounce buffer.
const MAX_END_BYTES: u64 = i64::MAX as u64 - BOUNCE_BUFFER_BYTES;

fn align_down(x: u64) -> u64 {
    x - x % ALIGN
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Accepted, waiting for a lock, a file slot, a bounce buffer or ring space.
    Queued,
    /// The main SQE is in the kernel.
    Main,
    /// A read-modify-write is reading its partial edge blocks.
    EdgeReads,
}

struct OpState {
    tag: u64,
    op: Op,
    stage: Stage,
    /// Locked block range `[start, end)`, when the op holds one.
    lock: Option<(u64, u64)>,
    bounce: Option<u16>,
    file_slot: u32,
    /// SQEs of this op still in the kernel.
    sqes_out: u8,
    /// Bytes of a direct write already done (short writes are continued).
    done_bytes: u64,
    retries: u32,
    error: Option<IoError>,
}

struct OpenObject {
    slot: u32,
    file: OwnedFd,
    /// The object opened without O_DIRECT, for writes that end inside a block past the
    /// object's end; opened at the first such write.
    buffered: Option<OwnedFd>,
    /// The object's size as this store has made it (the file's size, except while an
    /// extending read-modify-write has written whole blocks and not yet trimmed).
    size_bytes: u64,
    /// Started ops that use the file slot.
    users: u32,
    last_use: u64,
}

#[derive(Debug, Clone, Copy)]
struct Region {
    start: usize,
    end: usize,
    index: u16,
}

/// One thread's engine over one target; see the module documentation.
pub struct ObjectStore {
    target: Target,
    config: StoreConfig,
    ring: Ring,
    objects: HashMap<u64, OpenObject>,
    free_file_slots: Vec<u32>,
    use_clock: u64,
    regions: Vec<Region>,
    free_region_slots: Vec<u16>,
    bounce: Vec<AlignedBuf>,
    free_bounce: Vec<u16>,
    ops: Vec<Option<OpState>>,
    free_ops: Vec<u32>,
    queued: VecDeque<u32>,
    /// (object, start, end, op) of every lock held by a started op.
    locks: Vec<(u64, u64, u64, u32)>,
    /// Scratch for `pump`: ranges of queued ops that wait on a lock.
    waiting_ranges: Vec<(u64, u64, u64)>,
    sqes_in_kernel: u32,
    ready: VecDeque<Completion>,
    next_helper_tag: u64,
    /// Operations accepted since the store was made.
    accepted: u64,
    /// Operations that ended since the store was made (completed, or given up before they
    /// started): `accepted - completed` are in flight.
    completed: u64,
    /// Unit tests: opening an object's page-cache descriptor fails (as when out of
    /// descriptors), to follow the failure's path.
    #[cfg(test)]
    fail_buffered_open: bool,
    /// Unit tests: after this many more entries are queued, the next one finds the queue
    /// full and the kernel refusing the submit, to follow that failure's path.
    #[cfg(test)]
    refuse_push_after: Option<u32>,
}

/// A store's count of its operations ([`ObjectStore::accounts`]). In a sound store
/// `accepted == completed + in_flight`, and the entries it counts in the kernel are the
/// ones its ring handed the kernel and has not handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounts {
    /// Operations accepted since the store was made.
    pub accepted: u64,
    /// Operations that ended (their completion made, or given up before they started).
    pub completed: u64,
    /// Operations held now: waiting to start, or with entries in the kernel.
    pub in_flight: u64,
    /// Those operations' entries that the store counts in the kernel.
    pub sqes_in_kernel: u64,
    /// Entries the ring handed the kernel and has not handed back as completions.
    pub ring_in_kernel: u64,
}

impl std::fmt::Display for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {}, completed {}, in flight {}, entries in the kernel {} (the ring's count: {})",
            self.accepted, self.completed, self.in_flight, self.sqes_in_kernel, self.ring_in_kernel
        )
    }
}

impl ObjectStore {
    /// Makes a store over `target`, allocating and registering everything it will use.
    pub fn new(target: &Target, config: StoreConfig) -> Result<ObjectStore, IoError> {
        config.validate()?;
        let ring = Ring::new(
            config.queue_depth,
            config.open_objects,
            MAX_REGISTERED_REGIONS,
        )?;
        let mut bounce = Vec::with_capacity(config.bounce_buffers as usize);
        let mut regions = Vec::with_capacity(MAX_REGISTERED_REGIONS as usize);
        for index in 0..config.bounce_buffers {
            let mut buf = AlignedBuf::zeroed(BOUNCE_BUFFER_BYTES as usize).map_err(|source| {
                IoError::Ring {
                    op: Operation::Register,
                    source,
                }
            })?;
            // SAFETY: the buffer is owned by the store and freed only after the ring (see
            // Drop), so it outlives its registration.
            unsafe { ring.set_buffer(index, buf.as_mut_ptr(), buf.len())? };
            regions.push(Region {
                start: buf.as_ptr() as usize,
                end: buf.as_ptr() as usize + buf.len(),
                index: index as u16,
            });
            bounce.push(buf);
        }
        regions.sort_by_key(|r| r.start);
        let free_region_slots = (config.bounce_buffers..MAX_REGISTERED_REGIONS)
            .rev()
            .map(|i| i as u16)
            .collect();
        Ok(ObjectStore {
            target: target.clone(),
            config,
            ring,
            objects: HashMap::with_capacity(config.open_objects as usize),
            free_file_slots: (0..config.open_objects).rev().collect(),
            use_clock: 0,
            regions,
            free_region_slots,
            free_bounce: (0..config.bounce_buffers as u16).rev().collect(),
            bounce,
            ops: (0..config.max_ops).map(|_| None).collect(),
            free_ops: (0..config.max_ops).rev().collect(),
            queued: VecDeque::with_capacity(config.max_ops as usize),
            locks: Vec::with_capacity(config.max_ops as usize),
            waiting_ranges: Vec::with_capacity(config.max_ops as usize),
            sqes_in_kernel: 0,
            ready: VecDeque::with_capacity(config.max_ops as usize),
            next_helper_tag: RESERVED_TAG_BIT,
            accepted: 0,
            completed: 0,
            #[cfg(test)]
            fail_buffered_open: false,
            #[cfg(test)]
            refuse_push_after: None,
        })
    }

    /// The target this store serves.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The store's sizing.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Operations accepted and not yet handed back as completions.
    pub fn outstanding(&self) -> usize {
        self.config.max_ops as usize - self.free_ops.len() + self.ready.len()
    }

    /// What the store accepted, completed and holds now.
    pub fn accounts(&self) -> Accounts {
        Accounts {
            accepted: self.accepted,
            completed: self.completed,
            in_flight: (self.config.max_ops as usize - self.free_ops.len()) as u64,
            sqes_in_kernel: u64::from(self.sqes_in_kernel),
            ring_in_kernel: self.ring.in_kernel(),
        }
    }

    /// Checks that the store's accounts balance: every accepted operation has completed
    /// or is held (waiting to start, or with entries in the kernel), and every entry the
    /// ring handed the kernel belongs to a held operation. An operation whose completion
    /// was lost breaks them. Costs a pass over the operation table; a debug build checks
    /// after every reap.
    pub fn check_accounts(&self) -> Result<Accounts, IoError> {
        let accounts = self.accounts();
        let (mut live, mut waiting, mut started_idle, mut sqes_out) = (0u64, 0u64, 0u64, 0u64);
        for state in self.ops.iter().flatten() {
            live += 1;
            sqes_out += u64::from(state.sqes_out);
            match (state.stage, state.sqes_out) {
                (Stage::Queued, _) => waiting += 1,
                (_, 0) => started_idle += 1,
                _ => {}
            }
        }
        let broken = if accounts.accepted != accounts.completed + accounts.in_flight {
            Some("accepted is not completed plus in flight".to_string())
        } else if accounts.sqes_in_kernel != accounts.ring_in_kernel {
            Some(
                "the store and its ring disagree on the entries in the kernel: a completion \
                 was lost"
                    .to_string(),
            )
        } else if live != accounts.in_flight || sqes_out != accounts.sqes_in_kernel {
            Some(format!(
                "the table holds {live} operations with {sqes_out} entries in the kernel"
            ))
        } else if waiting != self.queued.len() as u64 || started_idle > 0 {
            Some(format!(
                "{waiting} operations wait to start and {} are queued to; {started_idle} \
                 started ones have nothing in the kernel",
                self.queued.len()
            ))
        } else {
            None
        };
        match broken {
            None => Ok(accounts),
            Some(reason) => Err(IoError::Accounts {
                target_id: self.target.target_id(),
                accounts,
                reason,
            }),
        }
    }

    /// Registers `[ptr, ptr + len)` with io_uring, so reads and writes into it go as
    /// READ_FIXED/WRITE_FIXED. Any op whose memory lies inside a registered region uses it.
    ///
    /// # Safety
    /// The memory must stay allocated until [`ObjectStore::unregister_memory`] returns for it
    /// or the store is dropped.
    pub unsafe fn register_memory(&mut self, ptr: *mut u8, len: usize) -> Result<u16, IoError> {
        if len == 0 || len as u64 > MAX_REGION_BYTES {
            return Err(IoError::InvalidArgument {
                op: Operation::Register,
                field: "len",
                value: len as u64,
                allowed: "1 to MAX_REGION_BYTES (1 GiB)",
            });
        }
        let start = ptr as usize;
        let end = start.checked_add(len).ok_or(IoError::InvalidArgument {
            op: Operation::Register,
            field: "ptr",
            value: start as u64,
            allowed: "a region that does not wrap the address space",
        })?;
        if self.regions.iter().any(|r| r.start < end && start < r.end) {
            return Err(IoError::InvalidArgument {
                op: Operation::Register,
                field: "ptr",
                value: start as u64,
                allowed: "a region that overlaps no registered region",
            });
        }
        let Some(index) = self.free_region_slots.pop() else {
            return Err(IoError::InvalidArgument {
                op: Operation::Register,
                field: "regions",
                value: u64::from(MAX_REGISTERED_REGIONS),
                allowed: "at most MAX_REGISTERED_REGIONS registered regions",
            });
        };
        // SAFETY: the caller keeps the memory allocated while it is registered.
        if let Err(e) = unsafe { self.ring.set_buffer(u32::from(index), ptr, len) } {
            self.free_region_slots.push(index);
            return Err(e);
        }
        let at = self.regions.partition_point(|r| r.start < start);
        self.regions.insert(at, Region { start, end, index });
        Ok(index)
    }

    /// Forgets a region registered by [`ObjectStore::register_memory`]. Refused while an
    /// operation is outstanding, since the kernel may still use the memory.
    pub fn unregister_memory(&mut self, index: u16) -> Result<(), IoError> {
        let invalid = |allowed| IoError::InvalidArgument {
            op: Operation::Register,
            field: "index",
            value: u64::from(index),
            allowed,
        };
        if u32::from(index) < self.config.bounce_buffers {
            return Err(invalid("an index returned by register_memory"));
        }
        let Some(at) = self.regions.iter().position(|r| r.index == index) else {
            return Err(invalid("an index returned by register_memory"));
        };
        if self.outstanding() > self.ready.len() {
            return Err(invalid("no operation in flight while unregistering"));
        }
        // SAFETY: a zero-length registration releases the slot and names no memory.
        unsafe {
            self.ring
                .set_buffer(u32::from(index), std::ptr::null_mut(), 0)?
        };
        self.regions.remove(at);
        self.free_region_slots.push(index);
        Ok(())
    }

    /// Has the kernel signal eventfd `fd` whenever a completion of this store's ring is
    /// posted, so that an event loop can sleep in epoll (or poll) on sockets and storage at
    /// once, then collect completions with [`ObjectStore::poll`]. The eventfd must stay
    /// open while the store lives.
    pub fn register_eventfd(&mut self, fd: std::os::fd::RawFd) -> Result<(), IoError> {
        self.ring.register_eventfd(fd)
    }

    /// Accepts an operation; its [`Completion`] carries `tag`. Argument errors are returned
    /// here; errors of the operation itself arrive in its completion.
    ///
    /// # Safety
    /// The memory an `Op::Read` or `Op::Write` names must stay valid, and for a read not be
    /// touched by anyone else, until its completion has been returned by
    /// [`ObjectStore::wait`] or [`ObjectStore::poll`], or the store is dropped.
    pub unsafe fn submit(&mut self, op: Op, tag: u64) -> Result<(), IoError> {
        if tag & RESERVED_TAG_BIT != 0 {
            return Err(IoError::InvalidArgument {
                op: op.operation(),
                field: "tag",
                value: tag,
                allowed: "tags below 2^63 (the top bit is the store's own)",
            });
        }
        self.accept(op, tag)
    }

    fn accept(&mut self, op: Op, tag: u64) -> Result<(), IoError> {
        validate_op(&op)?;
        let Some(index) = self.free_ops.pop() else {
            return Err(IoError::QueueFull {
                limit: self.config.max_ops,
            });
        };
        self.ops[index as usize] = Some(OpState {
            tag,
            op,
            stage: Stage::Queued,
            lock: None,
            bounce: None,
            file_slot: 0,
            sqes_out: 0,
            done_bytes: 0,
            retries: 0,
            error: None,
        });
        self.queued.push_back(index);
        self.accepted += 1;
        Ok(())
    }

    /// Submits what can start, then waits until at least `min_completions` completions are
    /// in `out` (fewer when fewer are outstanding) or `timeout` passes. Returns how many it
    /// appended. Expiry of the timeout is not an error; the operations stay outstanding.
    pub fn wait(
        &mut self,
        min_completions: usize,
        timeout: Duration,
        out: &mut Vec<Completion>,
    ) -> Result<usize, IoError> {
        let deadline = Instant::now() + timeout;
        let before = out.len();
        let want = min_completions.min(self.outstanding());
        loop {
            self.pump()?;
            self.reap();
            out.extend(self.ready.drain(..));
            let enough = out.len() - before >= want || self.outstanding() == 0;
            // Every queued op waits on something a started op holds, so with nothing in the
            // kernel there is nothing to wait for.
            if enough || self.sqes_in_kernel == 0 || Instant::now() >= deadline {
                self.ring.submit()?;
                return Ok(out.len() - before);
            }
            // One system call submits what pump queued and waits for a completion.
            self.ring.wait_one(deadline)?;
        }
    }

    /// Submits what can start and appends the completions ready now, without blocking.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize, IoError> {
        self.wait(0, Duration::ZERO, out)
    }

    /// Reads into `buf` at `offset_bytes`; returns the bytes read (short at end of object).
    pub fn read(
        &mut self,
        object_id: u64,
        offset_bytes: u64,
        buf: &mut [u8],
    ) -> Result<usize, IoError> {
        let mut ops = [BatchOp::Read {
            object_id,
            offset_bytes,
            buf,
        }];
        let [result] = self.batch(&mut ops)?;
        result.map(|n| n as usize)
    }

    /// Writes all of `buf` at `offset_bytes`.
    pub fn write(&mut self, object_id: u64, offset_bytes: u64, buf: &[u8]) -> Result<(), IoError> {
        let mut ops = [BatchOp::Write {
            object_id,
            offset_bytes,
            buf,
        }];
        let [result] = self.batch(&mut ops)?;
        result.map(drop)
    }

    /// Makes every completed write of the object durable (fdatasync).
    pub fn sync(&mut self, object_id: u64) -> Result<(), IoError> {
        self.run_one(Op::Sync { object_id }).map(drop)
    }

    /// Sets the object's size.
    pub fn truncate(&mut self, object_id: u64, size_bytes: u64) -> Result<(), IoError> {
        self.run_one(Op::Truncate {
            object_id,
            size_bytes,
        })
        .map(drop)
    }

    /// Deallocates `[offset_bytes, offset_bytes + len)`: it reads as zeros; the size stays.
    pub fn punch(&mut self, object_id: u64, offset_bytes: u64, len: u64) -> Result<(), IoError> {
        self.run_one(Op::Punch {
            object_id,
            offset_bytes,
            len,
        })
        .map(drop)
    }

    fn run_one(&mut self, op: Op) -> Result<u64, IoError> {
        let tag = self.helper_tag();
        self.accept(op, tag)?;
        let mut results = self.collect(&[tag], op.operation())?;
        results.pop().unwrap_or(Ok(0))
    }

    /// Submits every op together and returns when all have completed, each with its own
    /// result, in the order given. Ops beyond the store's bound are fed in as others finish.
    /// An `Err` return means the store itself failed (the ring, or the time bound).
    pub fn batch<const N: usize>(
        &mut self,
        ops: &mut [BatchOp<'_>; N],
    ) -> Result<[Result<u64, IoError>; N], IoError> {
        let results = self.batch_slice(ops)?;
        let mut iter = results.into_iter();
        Ok(std::array::from_fn(|_| {
            iter.next().unwrap_or(Ok(0)) // invariant: batch_slice returns one result per op
        }))
    }

    /// [`ObjectStore::batch`] for a slice of any length.
    pub fn batch_slice(
        &mut self,
        ops: &mut [BatchOp<'_>],
    ) -> Result<Vec<Result<u64, IoError>>, IoError> {
        let first_tag = self.next_helper_tag;
        let mut tags = Vec::with_capacity(ops.len());
        let mut results: Vec<Option<Result<u64, IoError>>> = (0..ops.len()).map(|_| None).collect();
        let mut next = 0;
        let deadline = Instant::now() + Duration::from_millis(IO_TIMEOUT_MS);
        let mut out = Vec::new();
        let mut done = 0;
        while done < ops.len() {
            while next < ops.len() && !self.free_ops.is_empty() {
                let tag = self.helper_tag();
                let op = match &mut ops[next] {
                    BatchOp::Read {
                        object_id,
                        offset_bytes,
                        buf,
                    } => Op::Read {
                        object_id: *object_id,
                        offset_bytes: *offset_bytes,
                        buf: buf.as_mut_ptr(),
                        len: buf.len(),
                    },
                    BatchOp::Write {
                        object_id,
                        offset_bytes,
                        buf,
                    } => Op::Write {
                        object_id: *object_id,
                        offset_bytes: *offset_bytes,
                        buf: buf.as_ptr(),
                        len: buf.len(),
                    },
                };
                // The slices are borrowed for this whole call, and the call returns only
                // after every accepted op has completed (see `finish_helper_ops`).
                match self.accept(op, tag) {
                    Ok(()) => tags.push((tag, next)),
                    Err(e) => {
                        results[next] = Some(Err(e));
                        done += 1;
                    }
                }
                next += 1;
            }
            if done == ops.len() {
                break;
            }
            if Instant::now() >= deadline {
                self.finish_helper_ops(&tags, &mut results);
                return Err(IoError::TimedOut {
                    op: Operation::Ring,
                    pending: ops.len() - done,
                    timeout_ms: IO_TIMEOUT_MS,
                });
            }
            out.clear();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = self.wait(1, remaining, &mut out) {
                self.finish_helper_ops(&tags, &mut results);
                return Err(e);
            }
            for completion in out.drain(..) {
                // Helper tags are handed out consecutively, one per op of this batch.
                let at = completion.tag.wrapping_sub(first_tag) & !RESERVED_TAG_BIT;
                if completion.tag & RESERVED_TAG_BIT != 0
                    && (at as usize) < next
                    && results[at as usize].is_none()
                {
                    results[at as usize] = Some(completion.result);
                    done += 1;
                } else {
                    self.ready.push_back(completion);
                }
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(0))).collect())
    }

    /// Blocking helper for ops already accepted under `tags`.
    fn collect(
        &mut self,
        tags: &[u64],
        op: Operation,
    ) -> Result<Vec<Result<u64, IoError>>, IoError> {
        let deadline = Instant::now() + Duration::from_millis(IO_TIMEOUT_MS);
        let mut results: Vec<Option<Result<u64, IoError>>> = tags.iter().map(|_| None).collect();
        let mut out = Vec::new();
        let mut done = 0;
        while done < tags.len() {
            if Instant::now() >= deadline {
                let pairs: Vec<(u64, usize)> = tags.iter().copied().zip(0..).collect();
                self.finish_helper_ops(&pairs, &mut results);
                return Err(IoError::TimedOut {
                    op,
                    pending: tags.len() - done,
                    timeout_ms: IO_TIMEOUT_MS,
                });
            }
            out.clear();
            self.wait(
                1,
                deadline.saturating_duration_since(Instant::now()),
                &mut out,
            )?;
            for completion in out.drain(..) {
                match tags.iter().position(|t| *t == completion.tag) {
                    Some(at) => {
                        results[at] = Some(completion.result);
                        done += 1;
                    }
                    None => self.ready.push_back(completion),
                }
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Ok(0))).collect())
    }

    /// After a helper's time bound: drops its ops that never started, and waits for those
    /// the kernel holds, since their memory is borrowed only until the helper returns. The
    /// kernel's own block-layer timeouts bound that wait.
    fn finish_helper_ops(
        &mut self,
        tags: &[(u64, usize)],
        results: &mut [Option<Result<u64, IoError>>],
    ) {
        let is_ours = |tag: u64| tags.iter().any(|(t, _)| *t == tag);
        let ops = &mut self.ops;
        let free_ops = &mut self.free_ops;
        let completed = &mut self.completed;
        self.queued.retain(|&i| {
            let keep = ops[i as usize].as_ref().is_some_and(|s| !is_ours(s.tag));
            if !keep {
                ops[i as usize] = None;
                free_ops.push(i);
                *completed += 1;
            }
            keep
        });
        let mut out = Vec::new();
        while self.ops.iter().flatten().any(|s| is_ours(s.tag)) {
            out.clear();
            if self
                .wait(1, Duration::from_millis(IO_TIMEOUT_MS), &mut out)
                .is_err()
            {
                // The ring itself failed; nothing more can be reaped. Dying here is better
                // than handing the caller back memory the kernel may still write.
                eprintln!(
                    "nacre-io: io_uring failed with operations on borrowed memory in flight; aborting"
                );
                std::process::abort();
            }
            for completion in out.drain(..) {
                match tags.iter().find(|(t, _)| *t == completion.tag) {
                    Some(&(_, at)) => results[at] = Some(completion.result),
                    None => self.ready.push_back(completion),
                }
            }
        }
    }

    fn helper_tag(&mut self) -> u64 {
        let tag = self.next_helper_tag;
        self.next_helper_tag =
            RESERVED_TAG_BIT | (self.next_helper_tag.wrapping_add(1) & !RESERVED_TAG_BIT);
        tag
    }

    /// Starts queued ops in order while their locks, file slots, bounce buffers and ring
    /// space allow. An op that waits on a lock keeps later overlapping ops waiting too, so
    /// overlapping writes run in submission order.
    fn pump(&mut self) -> Result<(), IoError> {
        self.waiting_ranges.clear();
        let mut i = 0;
        while i < self.queued.len() {
            let index = self.queued[i];
            match self.try_start(index)? {
                Start::Started => {
                    self.queued.remove(i);
                }
                Start::Finished => {
                    self.queued.remove(i);
                }
                Start::WaitLock(range) => {
                    self.waiting_ranges.push(range);
                    i += 1;
                }
                Start::WaitResources => break,
            }
        }
        Ok(())
    }

    fn try_start(&mut self, index: u32) -> Result<Start, IoError> {
        let Some(state) = self.ops[index as usize].as_ref() else {
            unreachable!("queued op {index} has no state");
        };
        let op = state.op;
        let object_id = op.object_id();
        // Sqes this op needs at once: one, or two edge reads for a read-modify-write.
        let sqes_needed = if is_unaligned_write(&op) { 2 } else { 1 };
        if self.sqes_in_kernel + sqes_needed > self.config.queue_depth {
            return Ok(Start::WaitResources);
        }
        let slot = match self.open_object(object_id, op.operation()) {
            Ok(Some(slot)) => slot,
            Ok(None) => return Ok(Start::WaitResources),
            Err(e) => {
                self.complete(index, Err(e));
                return Ok(Start::Finished);
            }
        };
        let size_bytes = self.objects.get(&object_id).map_or(0, |o| o.size_bytes);
        let buffered = extends_inside_a_block(&op, size_bytes);
        let lock = lock_range(&op, size_bytes);
        if let Some((start, end)) = lock {
            let busy = self
                .locks
                .iter()
                .any(|&(o, s, e, _)| o == object_id && s < end && start < e)
                || self
                    .waiting_ranges
                    .iter()
                    .any(|&(o, s, e)| o == object_id && s < end && start < e);
            if busy {
                return Ok(Start::WaitLock((object_id, start, end)));
            }
        }
        let bounce = if needs_bounce(&op) && !buffered {
            match self.free_bounce.pop() {
                Some(b) => Some(b),
                None => return Ok(Start::WaitResources),
            }
        } else {
            None
        };
        // From here on the op starts: nothing below waits.
        if let Some(o) = self.objects.get_mut(&object_id) {
            o.users += 1;
        }
        if let Some((start, end)) = lock {
            self.locks.push((object_id, start, end, index));
        }
        {
            let state = self.state_mut(index);
            state.lock = lock;
            state.bounce = bounce;
            state.file_slot = slot;
        }
        match op {
            Op::Read {
                offset_bytes,
                buf,
                len,
                ..
            } => match bounce {
                None => self.push_main_read(index, slot, buf, len, offset_bytes),
                Some(b) => {
                    let span_start = align_down(offset_bytes);
                    let span_len = align_up(offset_bytes + len as u64) - span_start;
                    let ptr = self.bounce[b as usize].as_mut_ptr();
                    let entry = ring::read(slot, ptr, span_len as u32, span_start, Some(b));
                    self.push(index, entry, SUB_MAIN);
                }
            },
            Op::Write {
                offset_bytes, len, ..
            } => match bounce {
                None if buffered => {
                    if let Err(e) = self.push_buffered_write(index) {
                        // Started (it holds its lock and the file's use), so it ends as a
                        // started op does: `complete` gives both back.
                        self.state_mut(index).stage = Stage::Main;
                        self.complete(index, Err(e));
                        return Ok(Start::Finished);
                    }
                }
                None => self.push_direct_write(index),
                Some(b) => {
                    self.start_edge_reads(index, b, slot, offset_bytes, len as u64, size_bytes)
                }
            },
            Op::Sync { .. } => {
                self.push(index, ring::datasync(slot), SUB_MAIN);
            }
            Op::Truncate { size_bytes, .. } if self.ring.ftruncate => {
                self.push(index, ring::truncate(slot, size_bytes), SUB_MAIN);
            }
            Op::Truncate { size_bytes, .. } => {
                // A kernel without IORING_OP_FTRUNCATE (before 6.9): the op holds its lock
                // already, so truncate here and finish it as its completion would.
                let res = match self.objects.get(&object_id) {
                    Some(o) => match rustix::fs::ftruncate(&o.file, size_bytes) {
                        Ok(()) => 0,
                        Err(e) => -e.raw_os_error(),
                    },
                    None => -libc::EBADF,
                };
                // Accounted as one SQE in the kernel, as `push` would, so that `on_cqe` and
                // `complete` undo exactly what a ring truncate does (the file's use too).
                self.sqes_in_kernel += 1;
                let state = self.state_mut(index);
                state.sqes_out += 1;
                state.stage = Stage::Main;
                self.on_cqe(index, SUB_MAIN, res);
                return Ok(Start::Finished);
            }
            Op::Punch {
                offset_bytes, len, ..
            } => {
                self.push(index, ring::punch(slot, offset_bytes, len), SUB_MAIN);
            }
        }
        Ok(Start::Started)
    }

    fn push_main_read(
        &mut self,
        index: u32,
        slot: u32,
        buf: *mut u8,
        len: usize,
        offset_bytes: u64,
    ) {
        let region = self.region_of(buf as usize, len);
        let entry = ring::read(slot, buf, len as u32, offset_bytes, region);
        self.push(index, entry, SUB_MAIN);
    }

    fn push_direct_write(&mut self, index: u32) {
        let state = self.state_mut(index);
        let Op::Write {
            offset_bytes,
            buf,
            len,
            ..
        } = state.op
        else {
            unreachable!("direct write of a non-write op");
        };
        let done = state.done_bytes;
        let slot = state.file_slot;
        // SAFETY: done < len, so the pointer stays inside the caller's buffer.
        let ptr = unsafe { buf.add(done as usize) };
        let rest = len - done as usize;
        let region = self.region_of(ptr as usize, rest);
        let entry = ring::write(slot, ptr, rest as u32, offset_bytes + done, region);
        self.push(index, entry, SUB_MAIN);
    }

    /// A write that ends inside a block past the object's end, through the object's
    /// page-cache descriptor (opened now if need be), from where it stopped.
    fn push_buffered_write(&mut self, index: u32) -> Result<(), IoError> {
        let state = self.state_mut(index);
        let Op::Write {
            object_id,
            offset_bytes,
            buf,
            len,
        } = state.op
        else {
            unreachable!("buffered write of a non-write op");
        };
        let done = state.done_bytes;
        let fd = self.buffered_fd(object_id)?;
        // SAFETY: done < len, so the pointer stays inside the caller's buffer.
        let ptr = unsafe { buf.add(done as usize) };
        let entry = ring::write_plain(fd, ptr, (len - done as usize) as u32, offset_bytes + done);
        self.push(index, entry, SUB_BUFFERED);
        Ok(())
    }

    /// The descriptor of an open object without O_DIRECT, opened at its first use. It is
    /// closed with the object, which no started op lets go. It is opened through the direct
    /// descriptor's /proc link, so that it names the same file even if the object's path
    /// was removed and made again meanwhile (the object's path only where /proc is not).
    fn buffered_fd(&mut self, object_id: u64) -> Result<std::os::fd::RawFd, IoError> {
        #[cfg(test)]
        if self.fail_buffered_open {
            return Err(IoError::object(Operation::Write, object_id, libc::EMFILE));
        }
        let Some(o) = self.objects.get_mut(&object_id) else {
            unreachable!("a started op's object is open");
        };
        if o.buffered.is_none() {
            let path = self.target.object_path(object_id);
            let same_file =
                std::path::PathBuf::from(format!("/proc/self/fd/{}", o.file.as_raw_fd()));
            let open = |p: &std::path::Path| std::fs::OpenOptions::new().write(true).open(p);
            let file = open(&same_file)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => open(&path),
                    _ => Err(e),
                })
                .map_err(|e| {
                    IoError::object(
                        Operation::Write,
                        object_id,
                        e.raw_os_error().unwrap_or(libc::EIO),
                    )
                })?;
            o.buffered = Some(file.into());
        }
        Ok(o.buffered.as_ref().map_or(-1, |f| f.as_raw_fd()))
    }

    /// First step of a read-modify-write: read the partial first and last blocks that hold
    /// bytes of the object into the bounce buffer; blocks past the object's end are zeros.
    fn start_edge_reads(
        &mut self,
        index: u32,
        b: u16,
        slot: u32,
        offset_bytes: u64,
        len: u64,
        size_bytes: u64,
    ) {
        let span_start = align_down(offset_bytes);
        let span_end = align_up(offset_bytes + len);
        let head = span_start;
        let tail = span_end - ALIGN;
        let head_partial = offset_bytes != span_start;
        let tail_partial = offset_bytes + len != span_end;
        let base = self.bounce[b as usize].as_mut_ptr();
        let mut reads = Vec::<(u64, u64)>::new(); // at most two: (file offset, sub id)
        if head_partial {
            reads.push((head, SUB_HEAD));
        }
        if tail_partial && !(head_partial && tail == head) {
            reads.push((tail, SUB_TAIL));
        }
        for (file_off, sub) in reads {
            let at = (file_off - span_start) as usize;
            // SAFETY: at + ALIGN <= span_end - span_start <= BOUNCE_BUFFER_BYTES, inside the
            // store's own bounce buffer, which no operation is using.
            unsafe { std::ptr::write_bytes(base.add(at), 0, ALIGN as usize) };
            if file_off < size_bytes {
                // SAFETY: as above.
                let ptr = unsafe { base.add(at) };
                let entry = ring::read(slot, ptr, ALIGN as u32, file_off, Some(b));
                if !self.push(index, entry, sub) {
                    return;
                }
            }
        }
        let state = self.state_mut(index);
        if state.sqes_out > 0 {
            state.stage = Stage::EdgeReads;
        } else {
            self.push_merged_write(index);
        }
    }

    /// Second step of a read-modify-write: merge the caller's bytes over the edges and
    /// write whole blocks.
    fn push_merged_write(&mut self, index: u32) {
        let state = self.state_mut(index);
        let Op::Write {
            offset_bytes,
            buf,
            len,
            ..
        } = state.op
        else {
            unreachable!("merged write of a non-write op");
        };
        let (Some(b), slot) = (state.bounce, state.file_slot) else {
            unreachable!("read-modify-write without a bounce buffer");
        };
        let span_start = align_down(offset_bytes);
        let span_len = align_up(offset_bytes + len as u64) - span_start;
        let base = self.bounce[b as usize].as_mut_ptr();
        // SAFETY: the caller's buffer holds len bytes (submit's contract) and the bounce
        // buffer holds span_len >= (offset - span_start) + len bytes; they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(buf, base.add((offset_bytes - span_start) as usize), len);
        }
        let entry = ring::write(slot, base, span_len as u32, span_start, Some(b));
        self.push(index, entry, SUB_MAIN);
    }

    /// Queues one entry of op `index`. The queue holds `queue_depth` entries and
    /// `sqes_in_kernel` bounds what is queued, so a full queue only needs a submit; if the
    /// kernel refuses that submit (an operating error, never a panic), the entry is not
    /// queued and the op fails with the kernel's error: now, when nothing else of it is in
    /// the kernel (false: the op has ended and its state is gone), or else when its last
    /// entry completes (`on_cqe` reports the error kept in its state).
    fn push(&mut self, index: u32, entry: io_uring::squeue::Entry, sub: u64) -> bool {
        let mut entry = entry.user_data(u64::from(index) | (sub << 32));
        if self.config.offload_issue && sub == SUB_MAIN {
            entry = entry.flags(io_uring::squeue::Flags::ASYNC);
        }
        let refused = self.refused_in_test();
        // SAFETY: every buffer an entry names is either the store's own bounce buffer, held
        // by this op until it completes, or the caller's memory, which `submit`'s contract
        // keeps valid until the completion is reaped.
        let pushed = !refused && unsafe { self.ring.push(&entry) };
        if !pushed {
            let submitted = match refused {
                true => Err(IoError::Ring {
                    op: Operation::Ring,
                    source: std::io::Error::from_raw_os_error(libc::EBADR),
                }),
                false => self.ring.submit(),
            };
            let retried = submitted.and_then(|()| {
                // SAFETY: the same entry as above, whose buffers the same contract keeps valid.
                match unsafe { self.ring.push(&entry) } {
                    true => Ok(()),
                    false => Err(IoError::Ring {
                        op: Operation::Ring,
                        source: std::io::Error::from_raw_os_error(libc::EBUSY),
                    }),
                }
            });
            if let Err(e) = retried {
                let state = self.state_mut(index);
                if state.stage == Stage::Queued {
                    // Started: it holds its lock and the file's use, which `complete` gives back.
                    state.stage = Stage::Main;
                }
                let e = state.error.take().unwrap_or(e);
                if state.sqes_out == 0 {
                    self.complete(index, Err(e));
                    return false;
                }
                state.error = Some(e);
                return true;
            }
        }
        self.sqes_in_kernel += 1;
        let state = self.state_mut(index);
        state.sqes_out += 1;
        if state.stage == Stage::Queued {
            state.stage = Stage::Main;
        }
        true
    }

    /// Whether unit tests want this entry refused (`refuse_push_after`); never otherwise.
    fn refused_in_test(&mut self) -> bool {
        #[cfg(test)]
        match self.refuse_push_after {
            Some(0) => {
                self.refuse_push_after = None;
                return true;
            }
            Some(n) => self.refuse_push_after = Some(n - 1),
            None => {}
        }
        false
    }

    /// Handles every completion the kernel has posted, each exactly once: the ring hands
    /// them out a batch at a time and keeps the rest for the next batch.
    fn reap(&mut self) {
        let mut cqes = [(0u64, 0i32); REAP_BATCH];
        loop {
            let n = self.ring.take_completions(&mut cqes);
            for &(ud, res) in &cqes[..n] {
                self.on_cqe((ud & 0xffff_ffff) as u32, ud >> 32, res);
            }
            if n < cqes.len() {
                break;
            }
        }
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_accounts() {
            panic!("{e}");
        }
    }

    fn on_cqe(&mut self, index: u32, sub: u64, res: i32) {
        self.sqes_in_kernel -= 1;
        let state = self.state_mut(index);
        state.sqes_out -= 1;
        let op = state.op;
        let object_id = op.object_id();
        if res < 0 {
            if state.error.is_none() {
                state.error = Some(IoError::object(op.operation(), object_id, -res));
            }
            if state.sqes_out == 0 {
                let e = state
                    .error
                    .take()
                    .unwrap_or_else(|| IoError::object(op.operation(), object_id, -res));
                self.complete(index, Err(e));
            }
            return;
        }
        let n = res as u64;
        if state.stage == Stage::EdgeReads {
            debug_assert!(sub == SUB_HEAD || sub == SUB_TAIL);
            if state.sqes_out > 0 {
                return;
            }
            if let Some(e) = state.error.take() {
                self.complete(index, Err(e));
                return;
            }
            state.stage = Stage::Main;
            self.push_merged_write(index);
            return;
        }
        debug_assert!(sub == SUB_MAIN || sub == SUB_BUFFERED);
        match op {
            Op::Read {
                offset_bytes,
                buf,
                len,
                ..
            } => match state.bounce {
                None => self.complete(index, Ok(n)),
                Some(b) => {
                    let head_pad = offset_bytes - align_down(offset_bytes);
                    let got = n.saturating_sub(head_pad).min(len as u64);
                    let base = self.bounce[b as usize].as_ptr();
                    // SAFETY: got <= len, the caller's buffer holds len bytes, and the bounce
                    // buffer holds head_pad + got bytes read by the kernel.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            base.add(head_pad as usize),
                            buf,
                            got as usize,
                        )
                    };
                    self.complete(index, Ok(got));
                }
            },
            Op::Write {
                offset_bytes, len, ..
            } => {
                let end = offset_bytes + len as u64;
                if state.bounce.is_none() {
                    state.done_bytes += n;
                    if state.done_bytes < len as u64 {
                        // A short write: continue it from where it stopped, a bounded number
                        // of times, while a direct one stays aligned.
                        state.retries += 1;
                        let direct = sub == SUB_MAIN;
                        if n == 0
                            || (direct && !n.is_multiple_of(ALIGN))
                            || state.retries > MAX_SHORT_WRITE_RETRIES
                        {
                            self.complete(
                                index,
                                Err(IoError::object(Operation::Write, object_id, libc::EIO)),
                            );
                        } else if direct {
                            self.push_direct_write(index);
                        } else if let Err(e) = self.push_buffered_write(index) {
                            self.complete(index, Err(e));
                        }
                        return;
                    }
                    self.grow(object_id, end);
                    self.complete(index, Ok(len as u64));
                    return;
                }
                let span_end = align_up(end);
                if n != span_end - align_down(offset_bytes) {
                    self.complete(
                        index,
                        Err(IoError::object(Operation::Write, object_id, libc::EIO)),
                    );
                    return;
                }
                let size = self.grow(object_id, end);
                // A whole-block write never moves the end past the write's own: one whose
                // last block would lies past the object's end went through the page cache.
                debug_assert!(span_end <= size, "a read-modify-write grew the object");
                self.complete(index, Ok(len as u64));
            }
            Op::Truncate { size_bytes, .. } => {
                if let Some(o) = self.objects.get_mut(&object_id) {
                    o.size_bytes = size_bytes;
                }
                self.complete(index, Ok(0));
            }
            Op::Sync { .. } | Op::Punch { .. } => self.complete(index, Ok(0)),
        }
    }

    fn grow(&mut self, object_id: u64, end: u64) -> u64 {
        match self.objects.get_mut(&object_id) {
            Some(o) => {
                o.size_bytes = o.size_bytes.max(end);
                o.size_bytes
            }
            None => end,
        }
    }

    /// Ends an op: releases its lock, bounce buffer and file use, and queues its completion.
    fn complete(&mut self, index: u32, result: Result<u64, IoError>) {
        let Some(state) = self.ops[index as usize].take() else {
            unreachable!("completion of op {index}, which has no state");
        };
        debug_assert_eq!(state.sqes_out, 0);
        if state.lock.is_some() {
            self.locks.retain(|&(_, _, _, i)| i != index);
        }
        if let Some(b) = state.bounce {
            self.free_bounce.push(b);
        }
        if state.stage != Stage::Queued
            && let Some(o) = self.objects.get_mut(&state.op.object_id())
        {
            o.users -= 1;
        }
        self.free_ops.push(index);
        self.completed += 1;
        self.ready.push_back(Completion {
            tag: state.tag,
            result,
        });
    }

    fn state_mut(&mut self, index: u32) -> &mut OpState {
        match self.ops[index as usize].as_mut() {
            Some(state) => state,
            None => unreachable!("op {index} has no state"),
        }
    }

    /// The registered region holding `[addr, addr + len)`, if any.
    fn region_of(&self, addr: usize, len: usize) -> Option<u16> {
        let at = self.regions.partition_point(|r| r.start <= addr);
        let r = self.regions.get(at.checked_sub(1)?)?;
        (addr + len <= r.end).then_some(r.index)
    }

    /// The file slot of an object, opening it (and evicting the least recently used idle
    /// object when the table is full). `None` when every slot is busy.
    fn open_object(&mut self, object_id: u64, op: Operation) -> Result<Option<u32>, IoError> {
        self.use_clock += 1;
        if let Some(o) = self.objects.get_mut(&object_id) {
            o.last_use = self.use_clock;
            return Ok(Some(o.slot));
        }
        if self.free_file_slots.is_empty() {
            let victim = self
                .objects
                .iter()
                .filter(|(_, o)| o.users == 0)
                .min_by_key(|(_, o)| o.last_use)
                .map(|(&id, _)| id);
            let Some(victim) = victim else {
                return Ok(None);
            };
            if let Some(o) = self.objects.remove(&victim) {
                self.ring.set_file(o.slot, -1)?;
                self.free_file_slots.push(o.slot);
            }
        }
        let path = self.target.object_path(object_id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| IoError::object(op, object_id, e.raw_os_error().unwrap_or(libc::EIO)))?;
        let size_bytes = file
            .metadata()
            .map_err(|e| IoError::object(op, object_id, e.raw_os_error().unwrap_or(libc::EIO)))?
            .len();
        let Some(slot) = self.free_file_slots.pop() else {
            unreachable!("a file slot was freed above");
        };
        self.ring.set_file(slot, file.as_raw_fd())?;
        self.objects.insert(
            object_id,
            OpenObject {
                slot,
                file: file.into(),
                buffered: None,
                size_bytes,
                users: 0,
                last_use: self.use_clock,
            },
        );
        Ok(Some(slot))
    }

    /// Closes an idle object's file, e.g. before the target removes it. Refused while an
    /// operation on it is outstanding.
    pub fn close_object(&mut self, object_id: u64) -> Result<(), IoError> {
        let busy = self
            .ops
            .iter()
            .flatten()
            .any(|s| s.op.object_id() == object_id);
        if busy {
            return Err(IoError::InvalidArgument {
                op: Operation::Remove,
                field: "object_id",
                value: object_id,
                allowed: "an object with no operation outstanding",
            });
        }
        if let Some(o) = self.objects.remove(&object_id) {
            self.ring.set_file(o.slot, -1)?;
            self.free_file_slots.push(o.slot);
        }
        Ok(())
    }
}

enum Start {
    Started,
    Finished,
    WaitLock((u64, u64, u64)),
    WaitResources,
}

fn is_aligned(offset_bytes: u64, addr: usize, len: usize) -> bool {
    offset_bytes.is_multiple_of(ALIGN)
        && (addr as u64).is_multiple_of(ALIGN)
        && (len as u64).is_multiple_of(ALIGN)
}

/// The object offset, memory address and length of a read or write.
fn memory(op: &Op) -> Option<(u64, usize, usize)> {
    match *op {
        Op::Read {
            offset_bytes,
            buf,
            len,
            ..
        } => Some((offset_bytes, buf as usize, len)),
        Op::Write {
            offset_bytes,
            buf,
            len,
            ..
        } => Some((offset_bytes, buf as usize, len)),
        _ => None,
    }
}

/// Whether a read or write must go through a bounce buffer.
fn needs_bounce(op: &Op) -> bool {
    memory(op).is_some_and(|(offset_bytes, addr, len)| !is_aligned(offset_bytes, addr, len))
}

fn is_unaligned_write(op: &Op) -> bool {
    matches!(op, Op::Write { .. }) && needs_bounce(op)
}

/// Whether `op` is an unaligned write whose last block would lie past the end of an object
/// of `size_bytes` and of the write: it goes through the page cache (module documentation).
fn extends_inside_a_block(op: &Op, size_bytes: u64) -> bool {
    match *op {
        Op::Write {
            offset_bytes, len, ..
        } if is_unaligned_write(op) => {
            let end = offset_bytes + len as u64;
            align_up(end) > size_bytes.max(end)
        }
        _ => false,
    }
}

/// The block range an op must hold alone, if any.
fn lock_range(op: &Op, size_bytes: u64) -> Option<(u64, u64)> {
    match *op {
        Op::Read { .. } | Op::Sync { .. } => None,
        Op::Write {
            offset_bytes, len, ..
        } => {
            let span_end = align_up(offset_bytes + len as u64);
            let moves_the_end = extends_inside_a_block(op, size_bytes);
            Some((
                align_down(offset_bytes),
                if moves_the_end { u64::MAX } else { span_end },
            ))
        }
        Op::Punch {
            offset_bytes, len, ..
        } => Some((align_down(offset_bytes), align_up(offset_bytes + len))),
        Op::Truncate { .. } => Some((0, u64::MAX)),
    }
}

fn validate_op(op: &Op) -> Result<(), IoError> {
    let operation = op.operation();
    let invalid = |field, value, allowed| {
        Err(IoError::InvalidArgument {
            op: operation,
            field,
            value,
            allowed,
        })
    };
    if let Some((offset_bytes, addr, len)) = memory(op) {
        if addr == 0 {
            return invalid("buf", 0, "a non-null pointer");
        }
        return check_range(offset_bytes, len as u64, operation);
    }
    match *op {
        Op::Read { .. } | Op::Write { .. } => unreachable!("memory() covers reads and writes"),
        Op::Truncate { size_bytes, .. } => {
            if size_bytes > MAX_END_BYTES {
                return invalid(
                    "size_bytes",
                    size_bytes,
                    "at most 2^63 - 1 minus one bounce buffer",
                );
            }
        }
        Op::Punch {
            offset_bytes, len, ..
        } => {
            if len == 0 {
                return invalid("len", 0, "at least 1 byte");
            }
            if offset_bytes
                .checked_add(len)
                .is_none_or(|end| end > MAX_END_BYTES)
            {
                return invalid("offset_bytes", offset_bytes, "offset + len within 2^63 - 1");
            }
        }
        Op::Sync { .. } => {}
    }
    Ok(())
}

fn check_range(offset_bytes: u64, len: u64, op: Operation) -> Result<(), IoError> {
    if len == 0 || len > MAX_IO_BYTES {
        return Err(IoError::InvalidArgument {
            op,
            field: "len",
            value: len,
            allowed: "1 to MAX_IO_BYTES (4 MiB)",
        });
    }
    if offset_bytes
        .checked_add(len)
        .is_none_or(|end| end > MAX_END_BYTES)
    {
        return Err(IoError::InvalidArgument {
            op,
            field: "offset_bytes",
            value: offset_bytes,
            allowed: "offset + len within 2^63 - 1",
        });
    }
    Ok(())
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        // The kernel may still hold bounce buffers and callers' memory: wait for every op in
        // the kernel before the ring and the buffers go.
        // The ring's own count says what the kernel holds, even if the store's accounts were
        // broken.
        let deadline = Instant::now() + Duration::from_millis(IO_TIMEOUT_MS);
        while self.ring.in_kernel() > 0 {
            if Instant::now() >= deadline || self.ring.wait_one(deadline).is_err() {
                eprintln!(
                    "nacre-io: target {}: {} operations still in the kernel after {IO_TIMEOUT_MS} ms at drop; aborting rather than freeing memory the kernel may write",
                    self.target.target_id(),
                    self.ring.in_kernel()
                );
                std::process::abort();
            }
            let mut cqes = [(0u64, 0i32); REAP_BATCH];
            while self.ring.take_completions(&mut cqes) > 0 {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the directory when the test ends, failed or not.
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn target_in(name: &str) -> (Gone, Target) {
        let dir = std::env::temp_dir().join(format!("nacre-io-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let gone = Gone(dir.clone());
        Target::format(&dir, 1).expect("format");
        (gone, Target::open(&dir).expect("open"))
    }

    /// A reap that meets more completions than it takes in one step hands every one to
    /// its operation: before, the completions past the first 64 of one drain were taken
    /// from the ring and dropped, so their operations never completed.
    #[test]
    fn a_reap_of_more_completions_than_one_step_loses_none() {
        let (_gone, target) = target_in("reap");
        let ops = 4 * REAP_BATCH + 3;
        let config = StoreConfig {
            queue_depth: 512,
            ..StoreConfig::default()
        };
        let mut store = ObjectStore::new(&target, config).expect("store");
        target.create(3).expect("create");
        store.write(3, 0, &[5u8; 1 << 16]).expect("write");
        // Aligned reads: each goes straight to the kernel, none waits for a bounce buffer.
        let block = ALIGN as usize;
        let mut bufs = AlignedBuf::zeroed(ops * block).expect("buffer");
        for (i, buf) in bufs.chunks_mut(block).enumerate() {
            let op = Op::Read {
                object_id: 3,
                offset_bytes: (i * block) as u64 % (1 << 16),
                buf: buf.as_mut_ptr(),
                len: buf.len(),
            };
            // SAFETY: `bufs` outlives every op: all complete (checked) before it drops.
            unsafe { store.submit(op, i as u64) }.expect("submit");
        }
        store.pump().expect("pump");
        assert_eq!(store.sqes_in_kernel as usize, ops);
        // Every completion is posted before the reap looks.
        store.ring.wait_for_completions(ops).expect("wait");
        store.reap();
        assert_eq!(store.ready.len(), ops, "{}", store.accounts());
        let accounts = store.check_accounts().expect("accounts balance");
        assert_eq!(
            (accounts.accepted, accounts.completed),
            (ops as u64 + 1, ops as u64 + 1)
        );
        let mut out = Vec::new();
        assert_eq!(store.poll(&mut out).expect("poll"), ops);
        assert!(out.iter().all(|c| matches!(c.result, Ok(4096))));
        assert!(bufs.iter().all(|&x| x == 5));
    }

    /// A page-cache write that cannot start (its descriptor cannot be opened: out of
    /// descriptors, here made so) fails by name and gives the file slot back: with one slot,
    /// another object opens after it.
    #[test]
    fn a_page_cache_write_that_cannot_start_gives_its_file_back() {
        let (_gone, target) = target_in("buffered-fail");
        let config = StoreConfig {
            open_objects: 1,
            ..StoreConfig::default()
        };
        let mut store = ObjectStore::new(&target, config).expect("store");
        target.create(5).expect("create");
        store
            .write(5, 0, &[1u8; 4096])
            .expect("open it with an aligned write");
        store.fail_buffered_open = true;
        let e = store
            .write(5, 4096, b"x")
            .expect_err("no descriptor to open");
        assert_eq!(e.errno(), libc::EMFILE, "{e}");
        store.fail_buffered_open = false;
        target.create(6).expect("create");
        store
            .write(6, 0, b"another object")
            .expect("the slot is free");
        store.check_accounts().expect("balanced");
    }

    /// An entry the kernel will not take (its submit refused while the queue is full)
    /// fails its op with the kernel's error instead of ending the process, whether it was
    /// the op's only entry or the second of a read-modify-write's two edge reads; the op's
    /// lock, bounce buffer and file come back, and the store goes on serving.
    #[test]
    fn an_entry_the_kernel_refuses_fails_its_op_and_nothing_else() {
        let (_gone, target) = target_in("refused");
        let mut store = ObjectStore::new(&target, StoreConfig::default()).expect("store");
        target.create(7).expect("create");
        store.write(7, 0, &[3u8; 16384]).expect("write");
        for (refuse_after, what) in [(0, "an aligned read"), (1, "the second edge read")] {
            store.refuse_push_after = Some(refuse_after);
            let e = if refuse_after == 0 {
                let mut back = AlignedBuf::zeroed(4096).expect("buffer");
                store.read(7, 0, &mut back).expect_err(what)
            } else {
                // Partial blocks at both ends, both inside the object: two edge reads.
                store.write(7, 100, &[9u8; 8192]).expect_err(what)
            };
            assert_eq!(e.errno(), libc::EBADR, "{what}: {e}");
            assert_eq!(
                store.refuse_push_after, None,
                "{what}: the refusal was not reached"
            );
            store.check_accounts().expect("balanced");
        }
        // The same range again: its lock and bounce buffer were given back.
        store
            .write(7, 100, &[9u8; 8192])
            .expect("write after the refusals");
        let mut back = [0u8; 16384];
        assert_eq!(store.read(7, 0, &mut back).expect("read"), 16384);
        assert!(back[..100].iter().all(|&b| b == 3));
        assert!(back[100..8292].iter().all(|&b| b == 9));
        assert!(back[8292..].iter().all(|&b| b == 3));
    }

    /// The page-cache descriptor names the file the direct one does, even when the
    /// object's path was removed and made again under the store: bytes written through
    /// either land in the same file.
    #[test]
    fn both_descriptors_of_an_object_name_one_file() {
        let (_gone, target) = target_in("same-file");
        let mut store = ObjectStore::new(&target, StoreConfig::default()).expect("store");
        target.create(6).expect("create");
        store
            .write(6, 0, &[1u8; 4096])
            .expect("open it with an aligned write");
        target.remove(6).expect("remove its path");
        target.create(6).expect("a new file at the path");
        store
            .write(6, 4096, b"tail")
            .expect("through the page cache");
        let mut back = [0u8; 4100];
        assert_eq!(store.read(6, 0, &mut back).expect("read"), 4100);
        assert_eq!(&back[4096..], b"tail");
        assert_eq!(
            target.stat(6).expect("stat").size_bytes,
            0,
            "the new file is untouched"
        );
    }

    /// A broken account is found and named: an operation the store holds while its ring
    /// holds nothing (what a lost completion leaves).
    #[test]
    fn a_lost_completion_breaks_the_accounts_by_name() {
        let (_gone, target) = target_in("accounts");
        let mut store = ObjectStore::new(&target, StoreConfig::default()).expect("store");
        target.create(3).expect("create");
        let mut buf = AlignedBuf::zeroed(4096).expect("buffer");
        let op = Op::Read {
            object_id: 3,
            offset_bytes: 0,
            buf: buf.as_mut_ptr(),
            len: buf.len(),
        };
        // SAFETY: the op completes (taken below) before `buf` drops.
        unsafe { store.submit(op, 1) }.expect("submit");
        store.pump().expect("pump");
        store.ring.wait_for_completions(1).expect("wait");
        let mut cqe = [(0u64, 0i32); 1];
        assert_eq!(store.ring.take_completions(&mut cqe), 1);
        let e = store
            .check_accounts()
            .expect_err("a completion was taken and not handled");
        assert!(e.to_string().contains("a completion was lost"), "{e}");
        assert!(e.to_string().contains("target 1"), "{e}");
        // Handled after all, the accounts balance again.
        store.on_cqe((cqe[0].0 & 0xffff_ffff) as u32, cqe[0].0 >> 32, cqe[0].1);
        store.check_accounts().expect("balanced");
        let mut out = Vec::new();
        assert_eq!(store.poll(&mut out).expect("poll"), 1);
    }

    /// On a kernel without IORING_OP_FTRUNCATE (as Debian 12's 6.1) truncates still work:
    /// the store does them with ftruncate(2), in order with the object's writes.
    #[test]
    fn truncate_without_the_ring_opcode() {
        let (_gone, target) = target_in("ftruncate");
        // Two file slots: every truncate must give its slot back, or the third object
        // could not be opened.
        let config = StoreConfig {
            open_objects: 2,
            ..StoreConfig::default()
        };
        let mut store = ObjectStore::new(&target, config).expect("store");
        store.ring.ftruncate = false;
        target.create(9).expect("create");
        store.write(9, 0, &[7u8; 8192]).expect("write");
        store.truncate(9, 100).expect("shrink");
        assert_eq!(target.stat(9).expect("stat").size_bytes, 100);
        let mut back = [0u8; 4096];
        assert_eq!(store.read(9, 0, &mut back).expect("read"), 100);
        store.truncate(9, 1 << 20).expect("grow");
        assert_eq!(target.stat(9).expect("stat").size_bytes, 1 << 20);
        // An error is the object's, named: a truncate of an object that does not exist.
        let e = store.truncate(10, 0).expect_err("no such object");
        assert_eq!(e.errno(), libc::ENOENT, "{e}");
        for id in 11..15 {
            target.create(id).expect("create");
            store.truncate(id, 4096).expect("truncate another object");
        }
        target.create(15).expect("create");
        store
            .write(15, 0, &[1u8; 4096])
            .expect("a file slot is free again");
        drop(store);
    }
}
