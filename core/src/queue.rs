//! The asynchronous API: submit reads, writes and syncs with a tag, then wait for or poll
//! their completions. Operations run on the queue's progress threads, each a blocking call
//! of the same client code the blocking API uses, so any number up to the queue's depth
//! are in flight at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::File;
use crate::error::Error;
use crate::limits::{IDLE_POLL_MS, MAX_QUEUE_DEPTH};
use crate::server::{join_all, spawn};

/// An operation for a [`Queue`].
#[derive(Debug)]
pub enum QueueOp {
    /// Read `len` bytes at `offset` into `buf`; completes with the bytes read.
    Read {
        /// The file (open for reading).
        file: File,
        /// Where the bytes go.
        buf: *mut u8,
        /// How many.
        len: usize,
        /// Where in the file.
        offset: u64,
    },
    /// Write `len` bytes from `buf` at `offset`; completes with `len`.
    Write {
        /// The file (open for writing).
        file: File,
        /// The bytes.
        buf: *const u8,
        /// How many.
        len: usize,
        /// Where in the file.
        offset: u64,
    },
    /// Make the file's writes durable; completes with 0.
    Sync {
        /// The file.
        file: File,
    },
}

// SAFETY: the pointers name memory the submitter lends to the queue until the operation's
// completion is returned (the contract of `Queue::submit`).
unsafe impl Send for QueueOp {}

/// The end of a queued operation.
#[derive(Debug)]
pub struct Completion {
    /// The tag given at submission.
    pub tag: u64,
    /// Bytes moved, or the error.
    pub result: Result<u64, Error>,
}

struct Shared {
    done: Mutex<VecDeque<Completion>>,
    ready: Condvar,
    in_flight: AtomicUsize,
}

/// A queue of asynchronous operations; dropping it waits for those in flight.
pub struct Queue {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<(QueueOp, u64)>>,
    threads: Vec<JoinHandle<()>>,
    depth: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Queue {
    /// A queue of `depth` (1 to [`MAX_QUEUE_DEPTH`]) operations run by up to `threads`
    /// progress threads.
    pub fn new(depth: usize, threads: usize) -> Result<Queue, Error> {
        if depth == 0 || depth > MAX_QUEUE_DEPTH {
            return Err(Error::Invalid {
                field: "depth",
                value: depth.to_string(),
                allowed: format!("1 to {MAX_QUEUE_DEPTH}"),
            });
        }
        let shared = Arc::new(Shared {
            done: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            in_flight: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel::<(QueueOp, u64)>();
        let rx = Arc::new(Mutex::new(rx));
        let mut handles = Vec::new();
        for i in 0..threads.clamp(1, depth) {
            let rx = Arc::clone(&rx);
            let shared = Arc::clone(&shared);
            handles.push(spawn(format!("nacre-queue-{i}"), move || {
                progress(&rx, &shared)
            })?);
        }
        Ok(Queue {
            shared,
            tx: Some(tx),
            threads: handles,
            depth,
        })
    }

    /// Operations submitted and not yet returned by [`Queue::wait`] or [`Queue::poll`].
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The queue's depth.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Submits an operation; its completion carries `tag`. [`Error::QueueFull`] (EAGAIN)
    /// when `depth` operations are in flight.
    ///
    /// # Safety
    /// The memory a read or write names must stay valid, and for a read be touched by no
    /// one else, until the operation's completion has been returned by [`Queue::wait`] or
    /// [`Queue::poll`] (dropping the queue also waits for it).
    pub unsafe fn submit(&self, op: QueueOp, tag: u64) -> Result<(), Error> {
        let claimed = self
            .shared
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.depth).then_some(n + 1)
            });
        if claimed.is_err() {
            return Err(Error::QueueFull { depth: self.depth });
        }
        let sent = self.tx.as_ref().map(|tx| tx.send((op, tag)));
        if !matches!(sent, Some(Ok(()))) {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Server {
                what: "queue".into(),
                reason: "its progress threads have stopped".into(),
            });
        }
        Ok(())
    }

    /// Waits until at least `min` completions are ready (fewer if fewer are in flight) or
    /// `timeout` passes, and returns every ready completion.
    pub fn wait(&self, min: usize, timeout: Duration) -> Vec<Completion> {
        let mut done = self.wait_until(timeout, |done| done.len() >= min.min(self.in_flight()));
        let out: Vec<Completion> = done.drain(..).collect();
        self.shared.in_flight.fetch_sub(out.len(), Ordering::SeqCst);
        out
    }

    /// Takes the completions lock and waits, up to `timeout`, until `enough` holds of the
    /// ready completions (checked under the lock at each wake-up).
    fn wait_until(
        &self,
        timeout: Duration,
        enough: impl Fn(&VecDeque<Completion>) -> bool,
    ) -> MutexGuard<'_, VecDeque<Completion>> {
        let deadline = Instant::now() + timeout;
        let mut done = self.shared.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if enough(&done) || left.is_zero() {
                return done;
            }
            done = self
                .shared
                .ready
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Returns the completions ready now, without waiting.
    pub fn poll(&self) -> Vec<Completion> {
        self.wait(0, Duration::ZERO)
    }

    /// Waits as [`Queue::wait`] does but takes nothing: returns how many completions are
    /// ready, for a caller that takes them with [`Queue::poll`] under a lock of its own.
    pub fn wait_ready(&self, min: usize, timeout: Duration) -> usize {
        self.wait_until(timeout, |done| done.len() >= min.min(self.in_flight()))
            .len()
    }

    /// Waits until no submitted operation is still running (each is bounded by the
    /// client's request timeout) or `timeout` passes; true when none is. Completions stay
    /// ready to be taken.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        // Under the lock, in_flight less the ready ones is what still runs: takers lower
        // in_flight while they hold it.
        let idle = |done: &VecDeque<Completion>| self.in_flight() <= done.len();
        idle(&self.wait_until(timeout, idle))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.tx = None;
        join_all(std::mem::take(&mut self.threads));
    }
}

fn progress(rx: &Mutex<mpsc::Receiver<(QueueOp, u64)>>, shared: &Shared) {
    loop {
        let next = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv_timeout(Duration::from_millis(IDLE_POLL_MS))
        };
        let (op, tag) = match next {
            Ok(task) => task,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // A panic in an operation becomes its failure: its completion must still come, or
        // its caller would wait for it (and for the memory it lent) forever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(op)))
            .unwrap_or_else(|_| {
                Err(Error::Server {
                    what: "queue".into(),
                    reason: "the operation panicked".into(),
                })
            });
        let mut done = shared.done.lock().unwrap_or_else(|p| p.into_inner());
        done.push_back(Completion { tag, result });
        shared.ready.notify_all();
    }
}

/// Runs one operation with the blocking calls.
fn run(op: QueueOp) -> Result<u64, Error> {
    match op {
        QueueOp::Read {
            file,
            buf,
            len,
            offset,
        } => {
            // SAFETY: the submitter lends `buf` for `len` bytes, untouched by others,
            // until this completion is returned (Queue::submit's contract).
            let slice = unsafe { std::slice::from_raw_parts_mut(buf, len) };
            file.read_at(slice, offset).map(|n| n as u64)
        }
        QueueOp::Write {
            file,
            buf,
            len,
            offset,
        } => {
            // SAFETY: as for reads, shared.
            let slice = unsafe { std::slice::from_raw_parts(buf, len) };
            file.write_at(slice, offset).map(|n| n as u64)
        }
        QueueOp::Sync { file } => file.sync().map(|()| 0),
    }
}
