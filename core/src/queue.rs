//! The asynchronous API: submit reads, writes and syncs with a tag, then wait for or poll
//! their completions (decision 0009).
//!
//! Reads and writes over TCP run on the queue's own nonblocking connections, with no thread
//! per operation: `submit` splits an operation by the file's layout and sends every
//! target's request at once (the requests of one submission, or of a [`Queue::batch`],
//! leave together, each connection's in one system call), and the threads inside `wait`,
//! `poll` or `wait_idle` read the replies as epoll reports them, each reply's payload
//! straight into the caller's buffer. The client's blocking reads and writes are one
//! operation each on a queue of depth 1 (decision 0012). Operations make progress while
//! some thread is inside one of those calls (or `submit`). Syncs, and reads and writes of
//! files on targets reached over RDMA, run on progress threads as blocking calls of the
//! client (started when first needed).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nacre_transport::client::{Finished, Kind, PipeConn, Progress};
use nacre_transport::event::{Epoll, EventFd, Events};
use nacre_transport::wire::Opcode;
use nacre_transport::{Endpoint, Span, TransportError, TransportOp};

use crate::client::{File, Planned, TargetLink, extents_whole};
use crate::error::Error;
use crate::limits::{
    IDLE_POLL_MS, MAX_QUEUE_CONNECTIONS_PER_SERVER, MAX_QUEUE_DEPTH,
    QUEUE_REQUESTS_BEFORE_NEW_CONNECTION,
};
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
    /// The buffer of a [`Queue::submit_read`] or [`Queue::submit_write`], given back.
    pub buffer: Option<Vec<u8>>,
    /// The address of that buffer while the queue holds it (0: none).
    lent: usize,
}

/// An owned-buffer submission the queue refused: why, and the buffer back.
#[derive(Debug)]
pub struct Refused {
    /// Why (a full queue is [`Error::QueueFull`]).
    pub error: Error,
    /// The buffer that was offered.
    pub buffer: Vec<u8>,
}

impl Completion {
    fn new(tag: u64, result: Result<u64, Error>, lent: usize) -> Completion {
        Completion {
            tag,
            result,
            buffer: None,
            lent,
        }
    }
}

/// The epoll token of the wake-up eventfd (connections' tokens are generation and slot).
const WAKE_TOKEN: u64 = u64::MAX;
/// Bits of a request's token that name its batch within the operation.
const BATCH_BITS: u32 = 20;
/// Most readiness events one waiter takes per wait.
const EVENTS_PER_WAIT: usize = 64;

/// What [`Queue::begin`] did with a read or write.
enum Began {
    /// Its requests are queued on the queue's connections, or it completed at once.
    Queued,
    /// Some target of it is reached over RDMA: nothing was started.
    Elsewhere,
}

/// One of the queue's connections.
struct Slot {
    conn: PipeConn,
    /// Its server's key in `State::servers` (the server's instance).
    server: u64,
    generation: u32,
}

/// A target the queue has sent requests to.
struct Target {
    /// Held so that its address, the target's key, stays this target's.
    _link: Arc<TargetLink>,
    /// The server last found serving it (its key in `State::servers`, if still there).
    server: Option<u64>,
    /// The target is reached over RDMA: its operations go to the progress threads.
    rdma: bool,
}

/// A server the queue has connections to: they carry the requests of every target it
/// serves (decision 0016).
struct Server {
    slots: Vec<usize>,
    /// The targets it said it serves, and the endpoints they registered.
    serves: Vec<(u32, Endpoint)>,
    /// How long a request to it may go without progress (its client's timeout).
    timeout: Duration,
}

/// A read or write in flight on the queue's connections.
struct Op {
    tag: u64,
    file: File,
    write: bool,
    offset: u64,
    len: u64,
    /// Requests not yet answered.
    left: usize,
    /// Some extent of a read came back short.
    short: bool,
    error: Option<Error>,
    batches: Vec<(Arc<TargetLink>, Vec<u64>)>,
    /// The held buffer it moves through (0: the caller's memory).
    lent: usize,
}

/// Everything behind the queue's lock.
struct State {
    done: VecDeque<Completion>,
    /// Handles of operations that ended, dropped once the lock is let go: the drop of a
    /// file's last handle may tell the metadata service it closed (a blocking call).
    released: Vec<File>,
    targets: HashMap<usize, Target>,
    /// By instance (see [`nacre_transport::wire::Opcode::Targets`]); a server goes when its
    /// last connection does.
    servers: HashMap<u64, Server>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    next_generation: u32,
    ops: HashMap<u64, Op>,
    next_op: u64,
    /// Buffers the queue holds for operations in flight, by address.
    lent: HashMap<usize, Vec<u8>>,
    /// Replies read and not yet accounted.
    finished: Vec<Finished>,
    /// A completion was added since waiters were last woken.
    completed: bool,
    /// Connections holding requests that have not been handed to the socket yet.
    unsent: Vec<usize>,
    /// Open [`Queue::batch`] calls: while any is, submissions leave requests unsent.
    batching: usize,
    fallback: Option<Fallback>,
}

/// The progress threads, for what the queue's connections do not carry.
struct Fallback {
    tx: mpsc::Sender<(QueueOp, u64, usize)>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    epoll: Epoll,
    wake: EventFd,
    /// Threads asleep in `epoll_wait` (changed under the state lock when going to sleep).
    sleepers: AtomicUsize,
    in_flight: AtomicUsize,
}

/// A queue of asynchronous operations; dropping it waits for those in flight.
pub struct Queue {
    shared: Arc<Shared>,
    depth: usize,
    progress_threads: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes a thread asleep in `epoll_wait` if completions came and anyone sleeps. Called
    /// under the state lock, so a waiter that checked the completions and went to sleep
    /// (counted under the lock) is seen.
    fn wake_sleepers(&self, st: &mut State) {
        if st.completed && self.sleepers.load(Ordering::SeqCst) > 0 {
            self.wake.ring();
        }
        st.completed = false;
    }
}

impl Queue {
    /// A queue of `depth` (1 to [`MAX_QUEUE_DEPTH`]) operations; syncs and RDMA transfers
    /// run on up to `threads` progress threads, started when first needed.
    pub fn new(depth: usize, threads: usize) -> Result<Queue, Error> {
        if depth == 0 || depth > MAX_QUEUE_DEPTH {
            return Err(Error::Invalid {
                field: "depth",
                value: depth.to_string(),
                allowed: format!("1 to {MAX_QUEUE_DEPTH}"),
            });
        }
        let epoll = Epoll::new().map_err(|e| Error::event_loop("epoll_create1", e))?;
        let wake = EventFd::new().map_err(|e| Error::event_loop("eventfd", e))?;
        epoll
            .add(wake.as_fd(), WAKE_TOKEN, false)
            .map_err(|e| Error::Server {
                what: "queue".into(),
                reason: format!("epoll_ctl: {e}"),
            })?;
        let state = State {
            done: VecDeque::new(),
            released: Vec::new(),
            targets: HashMap::new(),
            servers: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            ops: HashMap::new(),
            next_op: 1,
            lent: HashMap::new(),
            finished: Vec::new(),
            completed: false,
            unsent: Vec::new(),
            batching: 0,
            fallback: None,
        };
        Ok(Queue {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                epoll,
                wake,
                sleepers: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
            }),
            depth,
            progress_threads: threads.clamp(1, depth),
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
    /// when `depth` operations are in flight. An operation that cannot start (a bad
    /// handle, an unreachable target) completes with its error.
    ///
    /// # Safety
    /// The memory a read or write names must stay valid, and for a read be touched by no
    /// one else, until the operation's completion has been returned by [`Queue::wait`] or
    /// [`Queue::poll`] (dropping the queue also waits for it).
    pub unsafe fn submit(&self, op: QueueOp, tag: u64) -> Result<(), Error> {
        // SAFETY: this function's contract is the inner one's, with nothing lent.
        unsafe { self.submit_lent(op, tag, 0) }
    }

    /// Submits a read of `buf.len()` bytes at `offset` of `file` into `buf`, which the
    /// queue holds until the completion gives it back ([`Completion::buffer`]); no `unsafe`
    /// is needed, since nothing else can reach the buffer meanwhile. On an error (a full
    /// queue, say) the buffer comes back with it.
    pub fn submit_read(
        &self,
        file: &File,
        buf: Vec<u8>,
        offset: u64,
        tag: u64,
    ) -> Result<(), Box<Refused>> {
        self.submit_owned(file, buf, offset, tag, false)
    }

    /// Submits a write of all of `buf` at `offset` of `file`, holding `buf` as
    /// [`Queue::submit_read`] does.
    pub fn submit_write(
        &self,
        file: &File,
        buf: Vec<u8>,
        offset: u64,
        tag: u64,
    ) -> Result<(), Box<Refused>> {
        self.submit_owned(file, buf, offset, tag, true)
    }

    fn submit_owned(
        &self,
        file: &File,
        mut buf: Vec<u8>,
        offset: u64,
        tag: u64,
        write: bool,
    ) -> Result<(), Box<Refused>> {
        if buf.is_empty() {
            let e = Error::Invalid {
                field: "buffer",
                value: "0 bytes".into(),
                allowed: "at least 1 byte".into(),
            };
            return Err(Box::new(Refused {
                error: e,
                buffer: buf,
            }));
        }
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        // A buffer of at least one byte has an allocation of its own: its address names it
        // while the queue holds it (moving the Vec does not move its bytes).
        let lent = ptr as usize;
        self.shared.lock().lent.insert(lent, buf);
        let file = file.clone();
        let op = if write {
            QueueOp::Write {
                file,
                buf: ptr,
                len,
                offset,
            }
        } else {
            QueueOp::Read {
                file,
                buf: ptr,
                len,
                offset,
            }
        };
        // SAFETY: the queue owns the buffer (in `lent`) until the completion that gives it
        // back is taken, and hands it to nobody else meanwhile.
        match unsafe { self.submit_lent(op, tag, lent) } {
            Ok(()) => Ok(()),
            Err(e) => {
                let buf = self.shared.lock().lent.remove(&lent).unwrap_or_default();
                Err(Box::new(Refused {
                    error: e,
                    buffer: buf,
                }))
            }
        }
    }

    /// Submits `op`, whose completion gives back the held buffer at address `lent` (0:
    /// none).
    ///
    /// # Safety
    /// As [`Queue::submit`].
    unsafe fn submit_lent(&self, op: QueueOp, tag: u64, lent: usize) -> Result<(), Error> {
        let claimed = self
            .shared
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.depth).then_some(n + 1)
            });
        let Ok(before) = claimed else {
            return Err(Error::QueueFull { depth: self.depth });
        };
        let (file, write, buf, len, offset) = match op {
            QueueOp::Read {
                ref file,
                buf,
                len,
                offset,
            } => (file, false, buf, len, offset),
            QueueOp::Write {
                ref file,
                buf,
                len,
                offset,
            } => (file, true, buf.cast_mut(), len, offset),
            QueueOp::Sync { .. } => return self.to_threads(op, tag, lent),
        };
        if before == 0 {
            self.notice_hang_ups();
        }
        let memory = [Span { ptr: buf, len }];
        // SAFETY: this function's contract is the inner one's.
        match unsafe { self.begin(file, write, offset, &memory, tag, lent) } {
            Began::Queued => Ok(()),
            Began::Elsewhere => self.to_threads(op, tag, lent),
        }
    }

    /// Runs one read or write as a blocking call (the client's `read_at`, `write_at` and
    /// their vectored forms): queued as any other, then waited for. `None` when it must
    /// run elsewhere (some target is reached over RDMA); nothing was started then. The
    /// caller has this queue to itself, and nothing else is in flight on it.
    ///
    /// # Safety
    /// The memory must stay valid (and for a read be touched by no one else) for the call.
    pub(crate) unsafe fn call(
        &self,
        file: &File,
        write: bool,
        offset: u64,
        memory: &[Span],
    ) -> Option<Result<u64, Error>> {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        // Idle until now: a connection its target closed meanwhile is noticed first.
        self.notice_hang_ups();
        // SAFETY: the operation ends before this function returns: it waits below for the
        // completion, which comes within the client's timeout while it is driven.
        match unsafe { self.begin(file, write, offset, memory, 0, 0) } {
            Began::Queued => loop {
                if let Some(c) = self.wait(1, Duration::from_millis(IDLE_POLL_MS)).pop() {
                    return Some(c.result);
                }
            },
            Began::Elsewhere => {
                self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                None
            }
        }
    }

    /// Handles the readiness events already reported, without waiting: connections that
    /// were idle while their target closed them end here, before a request is put on them.
    fn notice_hang_ups(&self) {
        let shared = &*self.shared;
        let mut events = Events::<EVENTS_PER_WAIT>::new();
        let mut ready: Vec<(u64, bool)> = Vec::new();
        // A look that saw nothing lets the request meet the closed connection and fail
        // naming its target, as one sent just before it closed.
        look(&shared.epoll, &mut events, Duration::ZERO, &mut ready);
        if !ready.is_empty() {
            let mut st = shared.lock();
            st.drive(&shared.epoll, &shared.wake, &ready);
            shared.wake_sleepers(&mut st);
            let released = std::mem::take(&mut st.released);
            drop(st);
            drop(released);
        }
    }

    /// Plans a read or write of `memory` at `offset` and queues its requests, holding the
    /// place in flight the caller claimed (an error, or nothing to move, completes at
    /// once). [`Began::Elsewhere`] when some target is reached over RDMA.
    ///
    /// # Safety
    /// As [`Queue::submit`], for `memory`.
    unsafe fn begin(
        &self,
        file: &File,
        write: bool,
        offset: u64,
        memory: &[Span],
        tag: u64,
        lent: usize,
    ) -> Began {
        let len: u64 = memory.iter().map(|s| s.len as u64).sum();
        // A released file's chunks are fetched from its repository first, outside the lock.
        let present = file.make_present(offset, len);
        let mut st = self.shared.lock();
        let planned = match present.and_then(|()| file.plan(write, offset, memory)) {
            Ok(p) if p.len() >= 1 << BATCH_BITS => Err(Error::Invalid {
                field: "len",
                value: len.to_string(),
                allowed: format!(
                    "a length split into fewer than {} requests",
                    1 << BATCH_BITS
                ),
            }),
            planned => planned,
        };
        let planned = match planned {
            Ok(p) if p.is_empty() => {
                st.complete(tag, Ok(0), lent);
                self.shared.wake_sleepers(&mut st);
                return Began::Queued;
            }
            Ok(p) => p,
            Err(e) => {
                st.complete(tag, Err(e), lent);
                self.shared.wake_sleepers(&mut st);
                return Began::Queued;
            }
        };
        // A connection for every request before any is sent.
        let mut chosen = Vec::with_capacity(planned.len());
        for p in &planned {
            match st.connection_for(&self.shared.epoll, &p.link, file.timeout(), self.depth) {
                Ok(Some(slot)) => chosen.push(slot),
                Ok(None) => return Began::Elsewhere,
                Err(e) => {
                    st.complete(tag, Err(e), lent);
                    self.shared.wake_sleepers(&mut st);
                    return Began::Queued;
                }
            }
        }
        // SAFETY: the caller lends the memory until the completion is returned (this
        // function's contract); `start` hands it to the connections on those terms.
        unsafe {
            st.start(
                Op {
                    tag,
                    file: file.clone(),
                    write,
                    offset,
                    len,
                    left: planned.len(),
                    short: false,
                    error: None,
                    batches: Vec::new(),
                    lent,
                },
                planned,
                chosen,
            )
        };
        if st.batching == 0 {
            st.send_unsent(&self.shared.epoll);
        }
        self.shared.wake_sleepers(&mut st);
        Began::Queued
    }

    /// Runs `f` (which submits operations to this queue) and then sends every request
    /// its submissions made at once: a connection's requests leave in one system call
    /// instead of one each. Requests wait while any thread is inside `batch`, or until a
    /// thread drives the queue (in [`Queue::wait`], [`Queue::poll`] and the like), so
    /// waiting inside `f` cannot stall them.
    pub fn batch<R>(&self, f: impl FnOnce(&Queue) -> R) -> R {
        /// Ends the batch also when `f` panics, so that its requests still leave.
        struct Open<'q>(&'q Queue);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                let shared = &*self.0.shared;
                let mut st = shared.lock();
                st.batching -= 1;
                if st.batching == 0 {
                    st.send_unsent(&shared.epoll);
                }
                shared.wake_sleepers(&mut st);
            }
        }
        self.shared.lock().batching += 1;
        let _open = Open(self);
        f(self)
    }

    /// Hands an operation to the progress threads (starting them if need be).
    fn to_threads(&self, op: QueueOp, tag: u64, lent: usize) -> Result<(), Error> {
        let mut st = self.shared.lock();
        if st.fallback.is_none() {
            let (tx, rx) = mpsc::channel::<(QueueOp, u64, usize)>();
            let rx = Arc::new(Mutex::new(rx));
            let mut threads = Vec::new();
            for i in 0..self.progress_threads {
                let rx = Arc::clone(&rx);
                let shared = Arc::clone(&self.shared);
                match spawn(format!("nacre-queue-{i}"), move || progress(&rx, &shared)) {
                    Ok(t) => threads.push(t),
                    Err(e) if threads.is_empty() => {
                        drop(st);
                        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                        return Err(e);
                    }
                    Err(_) => break,
                }
            }
            st.fallback = Some(Fallback { tx, threads });
        }
        let sent = st.fallback.as_ref().map(|f| f.tx.send((op, tag, lent)));
        if !matches!(sent, Some(Ok(()))) {
            drop(st);
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
        let mut st = self.wait_until(timeout, |st, in_flight| st.done.len() >= min.min(in_flight));
        let mut out: Vec<Completion> = st.done.drain(..).collect();
        for c in &mut out {
            if c.lent != 0 {
                c.buffer = st.lent.remove(&c.lent);
            }
        }
        self.shared.in_flight.fetch_sub(out.len(), Ordering::SeqCst);
        let released = std::mem::take(&mut st.released);
        drop(st);
        drop(released);
        out
    }

    /// Drives the queue's connections, sleeping in `epoll_wait` between rounds, up to
    /// `timeout` or until `enough` holds of the state (checked under the lock after each
    /// round, with the number in flight); returns with the lock held.
    fn wait_until(
        &self,
        timeout: Duration,
        enough: impl Fn(&State, usize) -> bool,
    ) -> MutexGuard<'_, State> {
        let shared = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut events = Events::<EVENTS_PER_WAIT>::new();
        let mut ready: Vec<(u64, bool)> = Vec::new();
        // Whether epoll was asked what has arrived. A call with no time to wait (a poll)
        // looks first, so that it drives the connections as liburing's peek reaps; one whose
        // time ran out before it waited looks once at the end; one that waits looks in its
        // wait, with no system call more.
        let mut looked = timeout.is_zero();
        if looked {
            look(&shared.epoll, &mut events, Duration::ZERO, &mut ready);
        }
        loop {
            let mut st = shared.lock();
            st.drive(&shared.epoll, &shared.wake, &ready);
            ready.clear();
            shared.wake_sleepers(&mut st);
            let now = Instant::now();
            if enough(&st, self.in_flight()) {
                return st;
            }
            if now >= deadline {
                if looked {
                    return st;
                }
                let released = std::mem::take(&mut st.released);
                drop(st);
                drop(released);
                look(&shared.epoll, &mut events, Duration::ZERO, &mut ready);
                looked = true;
                continue;
            }
            let until = st.next_deadline().map_or(deadline, |d| d.min(deadline));
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            let released = std::mem::take(&mut st.released);
            drop(st);
            drop(released);
            look(
                &shared.epoll,
                &mut events,
                until.saturating_duration_since(now),
                &mut ready,
            );
            looked = true;
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Returns the completions ready now, without waiting.
    pub fn poll(&self) -> Vec<Completion> {
        self.wait(0, Duration::ZERO)
    }

    /// Waits as [`Queue::wait`] does but takes nothing: returns how many completions are
    /// ready, for a caller that takes them with [`Queue::poll`] under a lock of its own.
    pub fn wait_ready(&self, min: usize, timeout: Duration) -> usize {
        self.wait_until(timeout, |st, in_flight| st.done.len() >= min.min(in_flight))
            .done
            .len()
    }

    /// Waits until no submitted operation is still running (each is bounded by the
    /// client's request timeout) or `timeout` passes; true when none is. Completions stay
    /// ready to be taken.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        // Under the lock, in_flight less the ready ones is what still runs: takers lower
        // in_flight while they hold it.
        let idle = |st: &State, in_flight: usize| in_flight <= st.done.len();
        let st = self.wait_until(timeout, idle);
        idle(&st, self.in_flight())
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Every operation ends within its client's request timeout while it is driven.
        while !self.wait_idle(Duration::from_millis(IDLE_POLL_MS)) {}
        let fallback = self.shared.lock().fallback.take();
        if let Some(Fallback { tx, threads }) = fallback {
            drop(tx);
            join_all(threads);
        }
    }
}

/// Waits up to `timeout` for readiness reports and adds them to `ready`. An error (epoll
/// has none to give but EINTR, which it reports as no events) is a look that saw nothing:
/// callers look again, within their own deadline.
fn look(
    epoll: &Epoll,
    events: &mut Events<EVENTS_PER_WAIT>,
    timeout: Duration,
    ready: &mut Vec<(u64, bool)>,
) {
    let _ = epoll.wait_into(events, timeout, |token, readable| {
        ready.push((token, readable))
    });
}

/// A request's token: its operation's id and its batch within the operation.
fn request_token(id: u64, batch: usize) -> u64 {
    (id << BATCH_BITS) | batch as u64
}

/// The operation's id and the batch a request's token names.
fn split_token(token: u64) -> (u64, usize) {
    (
        token >> BATCH_BITS,
        (token & ((1 << BATCH_BITS) - 1)) as usize,
    )
}

impl State {
    /// Adds a completion (the next wake-up of sleepers rings for it).
    fn complete(&mut self, tag: u64, result: Result<u64, Error>, lent: usize) {
        self.done.push_back(Completion::new(tag, result, lent));
        self.completed = true;
    }

    /// A connection of the queue to `link`'s target for one more request: the least busy
    /// one to the server that serves it (whichever of its targets the connection was made
    /// to), or a new one while every one has [`QUEUE_REQUESTS_BEFORE_NEW_CONNECTION`] in
    /// flight and fewer than the limit are open. `None` when the target is reached over
    /// RDMA.
    fn connection_for(
        &mut self,
        epoll: &Epoll,
        link: &Arc<TargetLink>,
        timeout: Duration,
        depth: usize,
    ) -> Result<Option<usize>, Error> {
        let key = Arc::as_ptr(link) as usize;
        let target = self.targets.entry(key).or_insert_with(|| Target {
            _link: Arc::clone(link),
            server: None,
            rdma: false,
        });
        if target.rdma || link.over_rdma.load(Ordering::Relaxed) {
            target.rdma = true;
            return Ok(None);
        }
        let (id, endpoint) = (link.target_id, link.peer.endpoint());
        let known = target
            .server
            .filter(|k| self.servers.contains_key(k))
            .or_else(|| {
                self.servers
                    .iter()
                    .find(|(_, s)| s.serves.iter().any(|(t, e)| *t == id && e == endpoint))
                    .map(|(k, _)| *k)
            });
        target.server = known;
        if let Some(server) = known.and_then(|k| self.servers.get(&k)) {
            let best = server.slots.iter().copied().min_by_key(|&i| {
                self.slots[i]
                    .as_ref()
                    .map_or(usize::MAX, |s| s.conn.in_flight())
            });
            let busy = best
                .and_then(|i| self.slots[i].as_ref())
                .map(|s| s.conn.in_flight());
            let limit = depth.min(MAX_QUEUE_CONNECTIONS_PER_SERVER);
            if let (Some(i), Some(n)) = (best, busy)
                && (n < QUEUE_REQUESTS_BEFORE_NEW_CONNECTION || server.slots.len() >= limit)
            {
                return Ok(Some(i));
            }
        }
        let mut conn = link.peer.connect_unpooled().map_err(|e| link.fail(e))?;
        if conn.kind() != Kind::Tcp {
            target.rdma = true;
            link.over_rdma.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        let (instance, serves) = link.served(&mut conn)?;
        let Ok((stream, peer)) = conn.into_tcp_stream() else {
            unreachable!("a TCP connection has a TCP stream");
        };
        let conn = PipeConn::new(stream, peer).map_err(|e| link.fail(e))?;
        target.server = Some(instance);
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let token = (u64::from(generation) << 32) | index as u64;
        if let Err(e) = epoll.add(conn.fd(), token, true) {
            self.free.push(index);
            return Err(Error::Server {
                what: "queue".into(),
                reason: format!("epoll_ctl: {e}"),
            });
        }
        self.slots[index] = Some(Slot {
            conn,
            server: instance,
            generation,
        });
        let server = self.servers.entry(instance).or_insert_with(|| Server {
            slots: Vec::new(),
            serves: Vec::new(),
            timeout,
        });
        server.serves = serves;
        // Files of several clients may share the server: the longest timeout of theirs.
        server.timeout = server.timeout.max(timeout);
        server.slots.push(index);
        Ok(Some(index))
    }

    /// Queues an operation's requests on the chosen connections (`send_unsent` hands them
    /// to the sockets).
    ///
    /// # Safety
    /// The memory the planned requests name must stay valid (and a read's untouched by
    /// others) until the operation completes.
    unsafe fn start(&mut self, mut op: Op, planned: Vec<Planned>, chosen: Vec<usize>) {
        let id = self.next_op;
        self.next_op += 1;
        let opcode = if op.write {
            Opcode::Write
        } else {
            Opcode::Read
        };
        let mut failed: Vec<(usize, TransportError)> = Vec::new();
        self.unsent.extend_from_slice(&chosen);
        for (batch, (p, slot)) in planned.into_iter().zip(chosen).enumerate() {
            op.batches.push((Arc::clone(&p.link), p.extent_lens));
            let token = request_token(id, batch);
            let (payload, dests) = if op.write {
                (p.memory, Vec::new())
            } else {
                (Vec::new(), p.memory)
            };
            let Some(s) = self.slots[slot].as_mut() else {
                continue;
            };
            let target = p.link.target_id;
            // SAFETY: the caller's memory, lent until the operation completes (this
            // function's contract), which is no sooner than this request ends.
            let pushed = unsafe { s.conn.push(opcode, target, p.body, payload, dests, token) };
            if let Err(e) = pushed {
                failed.push((batch, e));
            }
        }
        self.ops.insert(id, op);
        for (batch, e) in failed {
            self.batch_done(id, batch, Err(e));
        }
    }

    /// Hands every connection's queued requests to its socket, each connection's in one
    /// call.
    fn send_unsent(&mut self, epoll: &Epoll) {
        let mut unsent = std::mem::take(&mut self.unsent);
        unsent.sort_unstable();
        unsent.dedup();
        for &i in &unsent {
            let wants = self.slots[i].as_ref().is_some_and(|s| s.conn.wants_write());
            if wants {
                self.service(epoll, i, false);
            }
        }
        unsent.clear();
        self.unsent = unsent;
    }

    /// Sends requests left unsent, handles readiness reports, then connections whose
    /// requests have not moved for the client's timeout.
    fn drive(&mut self, epoll: &Epoll, wake: &EventFd, ready: &[(u64, bool)]) {
        self.send_unsent(epoll);
        for &(token, readable) in ready {
            if token == WAKE_TOKEN {
                wake.clear();
                continue;
            }
            let index = (token & u64::from(u32::MAX)) as usize;
            let current = self.slots.get(index).and_then(|s| s.as_ref());
            if current.is_some_and(|s| u64::from(s.generation) == token >> 32) {
                self.service(epoll, index, readable);
            }
        }
        let now = Instant::now();
        for i in 0..self.slots.len() {
            let Some(s) = self.slots[i].as_ref() else {
                continue;
            };
            if s.conn.in_flight() == 0 {
                continue;
            }
            let timeout = self.timeout_of(s);
            if now.duration_since(s.conn.last_progress()) < timeout {
                continue;
            }
            // Replies may wait unread (no thread drove the queue for a while): look first.
            self.service(epoll, i, true);
            let Some(s) = self.slots[i].as_ref() else {
                continue;
            };
            if s.conn.in_flight() > 0 && now.duration_since(s.conn.last_progress()) >= timeout {
                let e = TransportError::TimedOut {
                    op: TransportOp::Recv,
                    peer: s.conn.peer(),
                    timeout_ms: timeout.as_millis() as u64,
                };
                self.fail_slot(epoll, i, e);
            }
        }
    }

    /// The request timeout of the client whose server a connection reaches.
    fn timeout_of(&self, s: &Slot) -> Duration {
        self.servers.get(&s.server).map_or(
            Duration::from_millis(nacre_transport::limits::REQUEST_TIMEOUT_MS),
            |t| t.timeout,
        )
    }

    /// When the first connection with requests in flight would time out.
    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.conn.in_flight() > 0)
            .map(|s| s.conn.last_progress() + self.timeout_of(s))
            .min()
    }

    /// Moves what a connection can move now: queued request bytes out, replies in.
    fn service(&mut self, epoll: &Epoll, index: usize, readable: bool) {
        let Some(s) = self.slots[index].as_mut() else {
            return;
        };
        if readable {
            s.conn.readable();
        }
        let mut result = Ok(());
        if s.conn.wants_write() {
            result = s.conn.flush().map(|_: Progress| ());
        }
        // An idle connection that is readable is closing (or the peer misbehaves): reading
        // says which, and either ends it.
        if result.is_ok() && (s.conn.in_flight() > 0 || readable) {
            result = s.conn.recv(&mut self.finished);
        }
        let mut finished = std::mem::take(&mut self.finished);
        for f in finished.drain(..) {
            self.reply(&f);
        }
        self.finished = finished;
        if let Err(e) = result {
            self.fail_slot(epoll, index, e);
        }
    }

    /// A reply came: account it to its operation.
    fn reply(&mut self, f: &Finished) {
        let (id, batch) = split_token(f.token);
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        let Some((link, lens)) = op.batches.get(batch) else {
            return;
        };
        if f.status != 0 {
            let what = if op.write { "write" } else { "read" };
            let e = link.reply_error(what, f.status, &f.body);
            op.error.get_or_insert(e);
        } else if !op.write && !extents_whole(lens, &f.body) {
            op.short = true;
        }
        self.batch_done(id, batch, Ok(()));
    }

    /// One request of operation `id` ended (with `result` from the transport); the last
    /// one completes the operation.
    fn batch_done(&mut self, id: u64, batch: usize, result: Result<(), TransportError>) {
        let Some(op) = self.ops.get_mut(&id) else {
            return;
        };
        if let Err(e) = result
            && let Some((link, _)) = op.batches.get(batch)
        {
            let e = link.fail(e);
            op.error.get_or_insert(e);
        }
        op.left -= 1;
        if op.left > 0 {
            return;
        }
        let Some(op) = self.ops.remove(&id) else {
            return;
        };
        let result = match op.error {
            Some(e) => Err(e),
            None if op.write || !op.short => Ok(op.len),
            // Rare (a read across the end of the file or past an object's end): the size
            // comes from the targets, with a blocking call.
            None => op.file.short_read(op.offset, op.len),
        };
        self.complete(op.tag, result, op.lent);
        self.released.push(op.file);
    }

    /// Ends a connection: every request in flight on it fails with `e`.
    fn fail_slot(&mut self, epoll: &Epoll, index: usize, e: TransportError) {
        let Some(mut s) = self.slots[index].take() else {
            return;
        };
        epoll.remove(s.conn.fd());
        let tokens = s.conn.fail();
        if let Some(server) = self.servers.get_mut(&s.server) {
            server.slots.retain(|&i| i != index);
            if server.slots.is_empty() {
                // Its next connection asks again which server it reaches (it may have
                // restarted, or its targets moved).
                self.servers.remove(&s.server);
            }
        }
        self.free.push(index);
        for token in tokens {
            let (id, batch) = split_token(token);
            self.batch_done(id, batch, Err(e.duplicate()));
        }
    }
}

fn progress(rx: &Mutex<mpsc::Receiver<(QueueOp, u64, usize)>>, shared: &Shared) {
    loop {
        let next = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv_timeout(Duration::from_millis(IDLE_POLL_MS))
        };
        let (op, tag, lent) = match next {
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
        let mut st = shared.lock();
        st.complete(tag, result, lent);
        shared.wake_sleepers(&mut st);
    }
}

/// Runs one operation with the blocking connections.
fn run(op: QueueOp) -> Result<u64, Error> {
    // The submitter lends the memory a read or write names, untouched by others, until
    // this completion is returned (Queue::submit's contract): the call may use it.
    match op {
        QueueOp::Read {
            file,
            buf,
            len,
            offset,
        } => file.call_direct(false, &[Span { ptr: buf, len }], offset),
        QueueOp::Write {
            file,
            buf,
            len,
            offset,
        } => file.call_direct(
            true,
            &[Span {
                ptr: buf.cast_mut(),
                len,
            }],
            offset,
        ),
        QueueOp::Sync { file } => file.sync().map(|()| 0),
    }
}
