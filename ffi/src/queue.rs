//! The asynchronous queue, in the style of liburing and 3FS's USRBIO but simpler: prepare
//! reads, writes and syncs with a tag, submit them, then wait for or poll completions.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use engine::{Completion, Queue, QueueOp};

use crate::boundary::{Failure, check_buffer, note_failures, run_int};
use crate::client::nacre_client;
use crate::file::nacre_file;
use crate::handle::{self, Object};
use crate::limits::NACRE_WAIT_MAX_MS;

/// A queue of asynchronous operations (opaque).
pub struct nacre_queue {
    _opaque: [u8; 0],
}

/// The end of a queued operation.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nacre_completion {
    /// The tag the operation was prepared with.
    pub tag: u64,
    /// Bytes read or written (0 for a sync), or a negative errno.
    pub result: i64,
}

/// What a `nacre_queue` handle holds.
pub(crate) struct QueueState {
    queue: Queue,
    side: Mutex<Side>,
}

/// Operations prepared and not yet submitted, and completions taken from the engine's queue
/// and not yet handed to C.
struct Side {
    prepared: Vec<(QueueOp, u64)>,
    ready: VecDeque<Completion>,
    /// Set by `nacre_queue_destroy`: calls that still hold the queue start nothing more.
    closed: bool,
}

impl QueueState {
    fn side(&self) -> MutexGuard<'_, Side> {
        self.side.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations that hold a slot: prepared, submitted, or completed and not yet returned.
    fn used(&self, side: &Side) -> usize {
        side.prepared.len() + side.ready.len() + self.queue.in_flight()
    }

    fn prepare(&self, op: QueueOp, tag: u64) -> Result<i64, Failure> {
        let mut side = self.side();
        if side.closed {
            return Err(Failure::bad_handle("queue"));
        }
        if self.used(&side) >= self.queue.depth() {
            return Err(Failure::from(engine::Error::QueueFull {
                depth: self.queue.depth(),
            }));
        }
        side.prepared.push((op, tag));
        Ok(0)
    }
}

/// Stores in `*out` a queue of `depth` (1 to 4096) operations for files of `client`. Returns
/// 0, or `-EINVAL`.
///
/// Thread safety: safe from any thread. A queue may be used by several threads at once:
/// each prepared operation is submitted by whichever thread calls `nacre_queue_submit`
/// next, and each completion is returned to exactly one waiting thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_queue_create(
    client: *mut nacre_client,
    depth: u32,
    out: *mut *mut nacre_queue,
) -> c_int {
    run_int("nacre_queue_create", || {
        crate::boundary::check_out(out, "out")?;
        let c = handle::client(client)?;
        let queue = c.queue(depth as usize)?;
        let state = Arc::new(QueueState {
            queue,
            side: Mutex::new(Side {
                prepared: Vec::new(),
                ready: VecDeque::new(),
                closed: false,
            }),
        });
        // SAFETY: not NULL; by the header's contract it points to a handle.
        unsafe { *out = handle::insert(Object::Queue(state)) };
        Ok(0)
    })
}

/// Frees a queue. It first waits for every submitted operation to finish (their
/// completions are dropped), also when other threads are inside calls on the queue (those
/// calls then start nothing more), so every buffer the queue was lent may be freed when it
/// returns; prepared operations not yet submitted are discarded. Returns 0, or `-EBADF`.
///
/// Thread safety: safe from any thread; other threads' later calls on it get `-EBADF`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_queue_destroy(queue: *mut nacre_queue) -> c_int {
    run_int("nacre_queue_destroy", || {
        let Object::Queue(q) = handle::remove(queue, "queue", |o| matches!(o, Object::Queue(_)))?
        else {
            return Err(Failure::bad_handle("queue"));
        };
        {
            let mut side = q.side();
            side.closed = true;
            side.prepared.clear();
        }
        // Other threads' calls may still hold the queue, so dropping this reference need
        // not be the last: wait here until nothing submitted still runs. Each operation
        // ends within the client's request timeout, so every round of this wait is bounded
        // and the loop ends.
        while !q
            .queue
            .wait_idle(Duration::from_millis(NACRE_WAIT_MAX_MS as u64))
        {}
        Ok(0)
    })
}

/// Prepares a read of `len` bytes at `offset` of `file` into `buf`, completing with the
/// bytes read (short only at the end of the file; the rest of `buf` is zeroed then, as by
/// `nacre_pread`). `buf` must stay valid, and be touched by
/// no one else (no other queued read of the same bytes either), until the completion is
/// returned. Returns 0, `-EAGAIN` when `depth` operations are
/// prepared, in flight or completed but not yet returned, or `-EINVAL`/`-EBADF`.
///
/// Thread safety: see `nacre_queue_create`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_prep_read(
    queue: *mut nacre_queue,
    file: *mut nacre_file,
    buf: *mut c_void,
    len: usize,
    offset: u64,
    tag: u64,
) -> c_int {
    prep_transfer(
        "nacre_prep_read",
        queue,
        file,
        buf.cast(),
        len,
        tag,
        |file, buf| QueueOp::Read {
            file,
            buf,
            len,
            offset,
        },
    )
}

/// Checks a prepared read's or write's arguments and stages the operation `make` builds
/// from the file and the buffer.
fn prep_transfer(
    name: &str,
    queue: *mut nacre_queue,
    file: *mut nacre_file,
    buf: *mut u8,
    len: usize,
    tag: u64,
    make: impl FnOnce(engine::File, *mut u8) -> QueueOp,
) -> c_int {
    run_int(name, || {
        let q = handle::queue(queue)?;
        let file = handle::file(file)?;
        check_buffer(buf, len, "buf")?;
        q.prepare(make(file, buf), tag)
    })
}

/// Prepares a write of `len` bytes from `buf` at `offset` of `file`, completing with `len`.
/// `buf` must stay valid until the completion is returned. Returns as `nacre_prep_read`.
///
/// Thread safety: see `nacre_queue_create`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_prep_write(
    queue: *mut nacre_queue,
    file: *mut nacre_file,
    buf: *const c_void,
    len: usize,
    offset: u64,
    tag: u64,
) -> c_int {
    // A write only reads through the pointer.
    prep_transfer(
        "nacre_prep_write",
        queue,
        file,
        buf.cast_mut().cast(),
        len,
        tag,
        |file, buf| QueueOp::Write {
            file,
            buf,
            len,
            offset,
        },
    )
}

/// Prepares an fsync of `file`, completing with 0. It runs alongside the other operations:
/// to make earlier writes durable, submit it after their completions.
///
/// Thread safety: see `nacre_queue_create`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_prep_fsync(
    queue: *mut nacre_queue,
    file: *mut nacre_file,
    tag: u64,
) -> c_int {
    run_int("nacre_prep_fsync", || {
        let q = handle::queue(queue)?;
        let file = handle::file(file)?;
        q.prepare(QueueOp::Sync { file }, tag)
    })
}

/// Starts every prepared operation, the requests to each target sent together; returns
/// how many it started, or a negative errno.
///
/// Thread safety: see `nacre_queue_create`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_queue_submit(queue: *mut nacre_queue) -> c_int {
    run_int("nacre_queue_submit", || {
        let q = handle::queue(queue)?;
        // The side lock is held throughout (submitting only hands operations to the
        // progress threads), so no prepare slips in while operations move from prepared to
        // in flight and the depth is never exceeded.
        let mut side = q.side();
        if side.closed {
            return Err(Failure::bad_handle("queue"));
        }
        let mut started = 0;
        let mut left = std::mem::take(&mut side.prepared).into_iter();
        // One batch: each connection's requests leave in one system call.
        q.queue.batch(|queue| {
            for (op, tag) in left.by_ref() {
                // SAFETY: the memory each operation names was lent by the caller until its
                // completion is returned (nacre_prep_read's and nacre_prep_write's
                // contract), and the queue returns completions only through
                // nacre_queue_wait.
                if let Err(e) = unsafe { queue.submit(op, tag) } {
                    // Only if the progress threads stopped: keep what did not start.
                    side.prepared.extend(left);
                    return Err(e.into());
                }
                started += 1;
            }
            Ok(started)
        })
    })
}

/// Drives the queue's connections, waits until at least `min` completions are ready (fewer
/// if fewer operations are submitted) or `timeout_ms` (0 to one hour) passes, then copies
/// up to `max` of them to `out` and returns how many it copied, or a negative errno (`min`
/// greater than `max` is `-EINVAL`). A completion's `result` is the operation's bytes or its
/// negative errno. When any of those copied failed, this thread's `nacre_last_error`
/// describes each of them in order, naming its tag (as many as fit in its 1023 bytes, then
/// how many more failed). Completions beyond `max` stay for the next call.
///
/// Several threads may wait on one queue: each completion goes to exactly one of them, but
/// a thread already blocked here does not see completions another waiter set aside; it
/// returns at the next completion or its timeout. One waiting thread per queue is the
/// simple, fast use.
///
/// Thread safety: see `nacre_queue_create`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_queue_wait(
    queue: *mut nacre_queue,
    out: *mut nacre_completion,
    max: u32,
    min: u32,
    timeout_ms: c_int,
) -> c_int {
    run_int("nacre_queue_wait", || {
        let q = handle::queue(queue)?;
        if out.is_null() || max == 0 {
            return Err(Failure::invalid(
                "out and max",
                "an array of at least 1 nacre_completion",
            ));
        }
        if min > max {
            return Err(Failure::invalid(
                &format!("min {min}"),
                &format!("at most max ({max})"),
            ));
        }
        if !(0..=NACRE_WAIT_MAX_MS).contains(&timeout_ms) {
            return Err(Failure::invalid(
                &format!("timeout_ms {timeout_ms}"),
                &format!("0 to {NACRE_WAIT_MAX_MS}"),
            ));
        }
        let need = (min as usize).saturating_sub(q.side().ready.len());
        if need > 0 {
            // Wait without the side lock, so other threads may prepare meanwhile, and
            // without taking anything, so the depth stays counted.
            q.queue
                .wait_ready(need, Duration::from_millis(timeout_ms as u64));
        }
        let mut side = q.side();
        // Taken under the side lock: a completion is always in the engine or in `ready`.
        let done = q.queue.poll();
        side.ready.extend(done);
        let n = side.ready.len().min(max as usize);
        let mut failures = Vec::new();
        for (i, c) in side.ready.drain(..n).enumerate() {
            let result = match &c.result {
                Ok(bytes) => *bytes as i64,
                Err(e) => {
                    failures.push(format!("the operation tagged {}: {e}", c.tag));
                    -i64::from(e.errno())
                }
            };
            // SAFETY: not NULL; by the header's contract `max` > i completions.
            unsafe { *out.add(i) = nacre_completion { tag: c.tag, result } };
        }
        if !failures.is_empty() {
            note_failures("nacre_queue_wait", &failures);
        }
        Ok(n as i64)
    })
}

/// Takes in the replies that have arrived (so a loop that only polls makes progress) and
/// copies up to `max` ready completions to `out` without waiting; returns how many, or a
/// negative errno. Failed completions are described as by `nacre_queue_wait`.
///
/// Thread safety: see `nacre_queue_create`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_queue_poll(
    queue: *mut nacre_queue,
    out: *mut nacre_completion,
    max: u32,
) -> c_int {
    nacre_queue_wait(queue, out, max, 0, 0)
}
