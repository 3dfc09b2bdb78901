//! A worker: one thread per core, owning an [`ObjectStore`] for each target of its server
//! (its ring, its registered files, the pool registered with it), the connections the
//! acceptors handed it (TCP and RDMA, decision 0013; each belongs to one target), and the
//! objects whose target and id hash to it (decision 0008). The targets of one server share
//! its workers (decision 0015).
//!
//! One loop does everything, without a lock on the data path: it waits in epoll on its
//! connections, on an eventfd other threads ring when they send it a message, and on the
//! eventfd its ring signals when a completion is posted. A request read from a connection
//! is cut into pieces; reads run on this worker's own store, whoever owns the object, and
//! every other piece runs on the object's owner, so that writes to one object stay ordered
//! without a lock (decision 0002). Pieces for another owner travel as a message, and their
//! results come back as one. The reply goes out from the same memory the pieces used.

use std::collections::{HashSet, VecDeque};
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nacre_io::{Completion, IoError, ObjectStore, Op, StoreConfig};
use nacre_transport::TransportError;
use nacre_transport::event::{Epoll, EventFd};
use nacre_transport::limits::{MAX_PIPELINED_REQUESTS, REQUEST_TIMEOUT_MS};
use nacre_transport::server::{Incoming, Progress};
use nacre_transport::wire::{Header, Opcode};

use super::request::{
    self, Context, Failure, Piece, PieceOp, PieceResult, Prepared, Staging, Work,
};
use super::wire::Wire;
use crate::error::Error;
use crate::limits::{
    IDLE_POLL_MS, MAX_KNOWN_OBJECTS, MAX_STAGED_BYTES_PER_CONNECTION, STAGING_WAIT_MS,
    STOP_TIMEOUT_MS, WORKER_REPLY_TIMEOUT_MS,
};
use crate::server::ErrorLog;
use crate::slots::{Admit, Slots};

/// Most client connections one worker serves at once; more are refused (closed).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 16 * 1024;
/// The epoll token of a worker's wake-up eventfd.
const WAKE_TOKEN: u64 = u64::MAX;
/// The epoll token of the eventfd the worker's ring signals.
const RING_TOKEN: u64 = u64::MAX - 1;
/// Bits of a store tag that hold the piece index.
const PIECE_BITS: u32 = 24;
/// Bits of a request's token that hold its index in the worker's table of requests; the
/// bits above hold its sequence number, so that late results of a request given up on, or
/// the token of a reply written after its connection went, can never touch a later request
/// in the same place.
const REQUEST_BITS: u32 = 24;
const _: () = assert!(MAX_CONNECTIONS_PER_WORKER * MAX_PIPELINED_REQUESTS < 1 << REQUEST_BITS);
/// The reply token of a request answered at once (it has no place in the table).
const NO_REQUEST: u64 = u64::MAX;

/// The worker that owns an object of target `target` (its index in the server): the one
/// that runs every piece but reads.
pub(super) fn owner(target: usize, object_id: u64, workers: usize) -> usize {
    // Stripes of one file differ in the low bits of the id; mix so that files spread too,
    // and so that one file's objects on several targets of a server spread over workers.
    let key = object_id ^ (target as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % workers
}

/// What other threads tell a worker.
pub(super) enum Msg {
    /// A client connection to serve from now on, to the target of this index.
    Connection(Wire, usize),
    /// Pieces of objects this worker owns.
    Job(Job),
    /// The results of a job this worker sent out, for the request `token` names (its
    /// sequence number and connection slot).
    Results {
        token: u64,
        from: usize,
        results: Vec<PieceResult>,
    },
    /// An object (target index, id) was removed: close its file if this worker's store
    /// holds it open.
    Forget(usize, u64),
}

/// Where a job's results go.
pub(super) enum ReplyTo {
    /// A connection thread waiting on a channel.
    Thread(mpsc::Sender<(usize, Vec<PieceResult>)>),
    /// The worker serving the request (`token` names its connection and request).
    Worker { worker: usize, token: u64 },
}

/// The pieces of one request that one worker runs.
pub(super) struct Job {
    pub(super) pieces: Vec<Piece>,
    /// Which worker's share of the request this is.
    pub(super) index: usize,
    pub(super) reply: ReplyTo,
}

// SAFETY: the raw pointers in a job's pieces name staging memory its request's owner (a
// connection thread or a worker) keeps, and leaves alone, until this job's results are back;
// when it gives up waiting it leaks the memory instead of freeing it (`Staging::abandon`).
unsafe impl Send for Job {}

/// How other threads reach a worker.
pub(super) struct Inbox {
    tx: mpsc::Sender<Msg>,
    wake: EventFd,
    /// The worker is about to sleep, or sleeps: a sender must ring `wake`.
    asleep: AtomicBool,
}

impl Inbox {
    pub(super) fn new() -> Result<(Inbox, mpsc::Receiver<Msg>), Error> {
        let (tx, rx) = mpsc::channel();
        let inbox = Inbox {
            tx,
            wake: EventFd::new().map_err(|e| Error::event_loop("eventfd", e))?,
            asleep: AtomicBool::new(false),
        };
        Ok((inbox, rx))
    }

    /// Sends `msg` and wakes the worker if it sleeps; false when the worker has gone (the
    /// server is stopping).
    pub(super) fn send(&self, msg: Msg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        // Pairs with the fence in `Worker::sleep`: either the worker sees the message, or
        // this sees it asleep and rings.
        fence(Ordering::SeqCst);
        if self.asleep.swap(false, Ordering::SeqCst) {
            self.wake.ring();
        }
        true
    }
}

/// Gives a running request's pieces up and counts it out: its memory is leaked, not freed,
/// because pieces still out may yet use it.
fn give_up(ctx: &Context, serving: &mut Serving) {
    if let Some(s) = serving.prepared.staging.take() {
        s.abandon();
    }
    ctx.leave();
}

/// A job being run.
struct RunningJob {
    job: Job,
    results: Vec<Option<PieceResult>>,
    left: usize,
}

/// Where a request of this worker's connections is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its write's payload is arriving into its staging.
    Payload,
    /// Its pieces are out; its reply waits for their results.
    Running,
    /// Its reply is given: it is written from its staging when its turn comes.
    Replying,
}

/// A request read from one of this worker's connections, from its header until its reply
/// is all written (or its pieces are back, when its connection closed first).
struct Serving {
    /// Its connection's slot; `None` once that connection closed.
    conn: Option<usize>,
    phase: Phase,
    header: Header,
    prepared: Prepared,
    results: Vec<Option<PieceResult>>,
    /// Piece indexes of each worker's share.
    per_worker: Vec<Vec<usize>>,
    jobs_left: usize,
    /// Set when a share could not be sent.
    failure: Option<Failure>,
    /// Names this request in its results and as its reply's token (see [`REQUEST_BITS`]).
    token: u64,
    /// When its pieces went out.
    started: Instant,
    /// Bytes of staging it was given (counted in its connection's `staged`).
    staged: usize,
}

/// A connection. A request whose pieces are out outlives its connection (in the worker's
/// table), so its memory is never freed under them.
struct Conn {
    stream: Wire,
    /// Its target's index in the server.
    target: usize,
    /// The request whose write payload is arriving (its index in the table).
    payload: Option<usize>,
    /// Its requests in the table, oldest first.
    requests: Vec<usize>,
    /// Bytes of staging its requests in the table hold (see
    /// [`MAX_STAGED_BYTES_PER_CONNECTION`]).
    staged: usize,
    /// It is in the worker's `answered` list.
    answered: bool,
    /// When it last brought a request (the oldest idle connection makes room past the
    /// server's bound of connections).
    last_request: Instant,
    /// A request read whose staging the server could not give yet (its bound was reached),
    /// and since when: it is begun again when staging is given back, nothing more is read
    /// meanwhile, and after [`STAGING_WAIT_MS`] it is answered EAGAIN instead.
    parked: Option<(Header, Instant)>,
}

/// A worker thread's whole state.
pub(super) struct Worker {
    index: usize,
    ctx: Arc<Context>,
    inboxes: Arc<Vec<Inbox>>,
    rx: mpsc::Receiver<Msg>,
    // Storage: a store per target of the server, by index; their rings signal one eventfd.
    stores: Vec<ObjectStore>,
    ring_event: EventFd,
    running: Vec<Option<RunningJob>>,
    free_jobs: Vec<usize>,
    /// (job slot, piece index) not yet started.
    queue: VecDeque<(usize, usize)>,
    /// Scratch for `step`: the pieces that wait for room in their store.
    waiting: VecDeque<(usize, usize)>,
    /// Objects (target index, id) known to exist (a cache: cleared when it grows past its
    /// bound).
    known: HashSet<(usize, u64)>,
    completions: Vec<Completion>,
    /// Objects (target index, id) to close once their operations are done.
    forget: Vec<(usize, u64)>,
    // Network.
    epoll: Epoll,
    slots: Slots<Conn>,
    /// Results for this worker's requests, to apply outside of whatever produced them.
    delivered: VecDeque<(u64, usize, Vec<PieceResult>)>,
    /// Requests read from the connections, by index (see [`REQUEST_BITS`]).
    table: Vec<Option<Box<Serving>>>,
    /// Indexes of the table with no request.
    free_entries: Vec<usize>,
    /// The sequence number of the last request put in the table.
    sequence: u64,
    /// Tokens of replies a flush wrote out (kept to reuse its memory).
    sent: Vec<u64>,
    /// Connections with replies made ready since the loop last drove them.
    answered: Vec<usize>,
    /// Tokens epoll found ready, and whether each may be read.
    ready_tokens: Vec<(u64, bool)>,
    /// Slots whose connection holds a request parked for staging memory.
    parked: Vec<usize>,
    errors: ErrorLog,
    last_sweep: Instant,
}

/// Opens the worker's store and event loop, says whether that worked on `ready`, then runs
/// until the server stops.
pub(super) fn run(
    index: usize,
    ctx: Arc<Context>,
    inboxes: Arc<Vec<Inbox>>,
    rx: mpsc::Receiver<Msg>,
    store_config: StoreConfig,
    ready: mpsc::Sender<Result<(), Error>>,
) {
    let worker = match Worker::new(index, Arc::clone(&ctx), inboxes, rx, store_config) {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    worker.serve();
    // `worker` (and its store, registered with the pool) is gone before `ctx`'s pool.
    drop(ctx);
}

impl Worker {
    fn new(
        index: usize,
        ctx: Arc<Context>,
        inboxes: Arc<Vec<Inbox>>,
        rx: mpsc::Receiver<Msg>,
        store_config: StoreConfig,
    ) -> Result<Worker, Error> {
        let ring_event = EventFd::new().map_err(|e| Error::event_loop("eventfd", e))?;
        let errors = ErrorLog::new(format!("nacre {} worker {index}", ctx.name()));
        let mut stores = Vec::with_capacity(ctx.targets.len());
        for target in &ctx.targets {
            let mut store = ObjectStore::new(target, store_config)?;
            for (ptr, len) in ctx.pool.registrations() {
                // SAFETY: the pool's slab outlives the store: `ctx` holds the pool, and
                // `run` drops the worker (and its stores) before its `ctx`.
                unsafe { store.register_memory(ptr, len) }?;
            }
            store.register_eventfd(ring_event.raw())?;
            stores.push(store);
        }
        let epoll = Epoll::new().map_err(|e| Error::event_loop("epoll_create1", e))?;
        let io = |e: std::io::Error| Error::Server {
            what: format!("{} worker {index}", ctx.name()),
            reason: format!("epoll_ctl: {e}"),
        };
        epoll
            .add(inboxes[index].wake.as_fd(), WAKE_TOKEN, false)
            .map_err(io)?;
        epoll
            .add(ring_event.as_fd(), RING_TOKEN, false)
            .map_err(io)?;
        Ok(Worker {
            index,
            ctx,
            inboxes,
            rx,
            stores,
            ring_event,
            running: Vec::new(),
            free_jobs: Vec::new(),
            queue: VecDeque::new(),
            waiting: VecDeque::new(),
            known: HashSet::new(),
            completions: Vec::new(),
            forget: Vec::new(),
            epoll,
            slots: Slots::new(MAX_CONNECTIONS_PER_WORKER),
            delivered: VecDeque::new(),
            table: Vec::new(),
            free_entries: Vec::new(),
            sequence: 0,
            sent: Vec::new(),
            answered: Vec::new(),
            ready_tokens: Vec::new(),
            parked: Vec::new(),
            errors,
            last_sweep: Instant::now(),
        })
    }

    fn serve(mut self) {
        let idle = Duration::from_millis(IDLE_POLL_MS);
        let mut stopping_since: Option<Instant> = None;
        loop {
            let mut busy = false;
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
                busy = true;
            }
            // Files of removed objects close before queued reads could open them again.
            if !self.forget.is_empty() {
                self.forget_objects();
            }
            match self.step() {
                Ok(moved) => busy |= moved,
                Err(e) => return self.fail(&e.into()),
            }
            busy |= self.deliver();
            busy |= self.drive_answered();
            busy |= self.unpark();
            if self.last_sweep.elapsed() >= idle {
                self.sweep();
            }
            if self.ctx.stop.load(Ordering::SeqCst) {
                self.close_idle();
                if self.finished() {
                    self.check_stores();
                    break;
                }
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(STOP_TIMEOUT_MS) {
                    self.stop_unfinished();
                    self.check_stores();
                    break;
                }
            }
            let timeout = if busy { Duration::ZERO } else { idle };
            if let Err(e) = self.sleep(timeout) {
                return self.fail(&e);
            }
        }
    }

    /// The server has been stopping for [`STOP_TIMEOUT_MS`] and this worker still holds
    /// work: it says what (each store's accounts, the requests and connections left) and
    /// gives its requests up, so that the server stops within its bound whatever is
    /// outstanding. Their memory is leaked, not freed, as the kernel may still use it, and
    /// so is a store with operations still in the kernel.
    fn stop_unfinished(&mut self) {
        let requests = self.table.iter().flatten().count();
        nacre_transport::log_line!(
            "nacre {}: worker {} stops after {STOP_TIMEOUT_MS} ms with work left: {requests} requests, {} connections, {} pieces not started, {} requests in flight in the server",
            self.ctx.name(),
            self.index,
            self.slots.open(),
            self.queue.len(),
            self.ctx.in_flight.load(Ordering::SeqCst)
        );
        for store in &self.stores {
            if store.outstanding() > 0 {
                nacre_transport::log_line!(
                    "nacre {}: worker {}: {} operations of target {} did not complete: {}",
                    self.ctx.name(),
                    self.index,
                    store.outstanding(),
                    store.target().target_id(),
                    store.accounts()
                );
            }
        }
        for serving in self.table.iter_mut().flatten() {
            if serving.phase == Phase::Running {
                give_up(&self.ctx, serving);
                serving.phase = Phase::Replying;
            }
        }
        // A store whose ring still has operations in the kernel would wait for them when
        // dropped (and abort the process if they never came): it is leaked instead, ring
        // and buffers, so that the stop keeps its bound. The kernel holds the pages of
        // transfers it has begun; the process is about to go.
        let (stuck, done): (Vec<ObjectStore>, Vec<ObjectStore>) = std::mem::take(&mut self.stores)
            .into_iter()
            .partition(|s| s.accounts().ring_in_kernel > 0);
        self.stores = done;
        for store in stuck {
            nacre_transport::log_line!(
                "nacre {}: worker {}: the store of target {} is left with {} operations in the kernel",
                self.ctx.name(),
                self.index,
                store.target().target_id(),
                store.accounts().ring_in_kernel
            );
            std::mem::forget(store);
        }
    }

    /// The worker's ring or epoll failed: the target cannot go on without it, so the whole
    /// server stops. Every request this worker serves is given up (its memory leaked, since
    /// pieces on other workers may still use it) and counted out, so that the other workers
    /// can finish and stop.
    fn fail(&mut self, e: &Error) {
        nacre_transport::log_line!(
            "nacre {}: worker {} failed ({e}); the target server stops",
            self.ctx.name(),
            self.index
        );
        self.ctx.stop.store(true, Ordering::SeqCst);
        for serving in self.table.iter_mut().flatten() {
            if serving.phase == Phase::Running {
                give_up(&self.ctx, serving);
                serving.phase = Phase::Replying;
            }
        }
    }

    /// Waits up to `timeout` for a connection, a message or a completion, and drives the
    /// connections that became ready.
    fn sleep(&mut self, timeout: Duration) -> Result<(), Error> {
        let inbox = &self.inboxes[self.index];
        if !timeout.is_zero() {
            inbox.asleep.store(true, Ordering::SeqCst);
            // Pairs with the fence in `Inbox::send`.
            fence(Ordering::SeqCst);
            if let Ok(msg) = self.rx.try_recv() {
                inbox.asleep.store(false, Ordering::SeqCst);
                self.handle(msg);
                return Ok(());
            }
        }
        let mut tokens = std::mem::take(&mut self.ready_tokens);
        let waited = self
            .epoll
            .wait(timeout, |t, readable| tokens.push((t, readable)));
        self.inboxes[self.index]
            .asleep
            .store(false, Ordering::SeqCst);
        waited.map_err(|e| Error::event_loop("epoll_wait", e))?;
        for &(token, readable) in &tokens {
            match token {
                WAKE_TOKEN => self.inboxes[self.index].wake.clear(),
                RING_TOKEN => self.ring_event.clear(),
                t => {
                    let Some(slot) = self.slots.slot_of(t) else {
                        continue;
                    };
                    if readable && let Some(conn) = self.slots.get_mut(slot) {
                        conn.stream.readable();
                    }
                    self.drive(slot);
                }
            }
        }
        tokens.clear();
        self.ready_tokens = tokens;
        Ok(())
    }

    /// Begins the parked requests again while the server's staging has room (any worker
    /// may have given some back); whether one of them got going.
    fn unpark(&mut self) -> bool {
        if self.parked.is_empty() || self.ctx.staged.load(Ordering::SeqCst) >= self.ctx.staged_bound
        {
            return false;
        }
        let mut moved = false;
        for slot in std::mem::take(&mut self.parked) {
            let is_parked = |w: &Worker| w.slots.get(slot).is_some_and(|c| c.parked.is_some());
            if !is_parked(self) {
                continue;
            }
            self.drive(slot);
            if !is_parked(self) {
                moved = true;
            } else if !self.parked.contains(&slot) {
                // Parked again by `begin`, or not reached this time.
                self.parked.push(slot);
            }
        }
        moved
    }

    /// Says so, by name, when a store's accounts of its operations do not balance (an
    /// operation was lost): checked as the worker stops, in every build.
    fn check_stores(&self) {
        for store in &self.stores {
            if let Err(e) = store.check_accounts() {
                nacre_transport::log_line!("nacre {}: worker {}: {e}", self.ctx.name(), self.index);
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Connection(stream, t) => self.adopt(stream, t),
            Msg::Job(job) => self.accept(job),
            Msg::Results {
                token,
                from,
                results,
            } => self.delivered.push_back((token, from, results)),
            Msg::Forget(t, object_id) => {
                self.known.remove(&(t, object_id));
                self.forget.push((t, object_id));
            }
        }
    }

    /// Whether the server is stopping and nothing is left for this worker: no request in
    /// flight anywhere (another worker's may still need this one's store), no connection.
    fn finished(&self) -> bool {
        self.ctx.in_flight.load(Ordering::SeqCst) == 0
            && self.slots.open() == 0
            && self.queue.is_empty()
            && self.stores.iter().all(|s| s.outstanding() == 0)
            && self.running.iter().all(Option::is_none)
    }

    // ---- connections ----

    /// Takes a new connection in, making room past the bound by closing this worker's
    /// oldest idle connection, or refusing the new one when none is idle.
    fn adopt(&mut self, stream: Wire, target: usize) {
        if self.ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        let admit = self.slots.admit(
            (&self.ctx.connections, self.ctx.connection_bound),
            &stream.peer(),
            &mut self.errors,
            |c| {
                c.requests.is_empty()
                    && c.parked.is_none()
                    && !c.stream.mid_message()
                    && !c.stream.wants_write()
            },
            |c| c.last_request,
        );
        match admit {
            Admit::Claimed => {}
            Admit::Evict(slot) => self.close(slot, None),
            Admit::Refused => return,
        }
        let slot = self.slots.insert(Conn {
            last_request: Instant::now(),
            stream,
            target,
            payload: None,
            requests: Vec::new(),
            staged: 0,
            answered: false,
            parked: None,
        });
        let token = self.slots.token(slot);
        let watched = self
            .slots
            .get(slot)
            .map(|c| c.stream.watch(&self.epoll, token));
        if let Some(Err(e)) = watched {
            if let Some(conn) = self.slots.remove(slot) {
                nacre_transport::log_line!(
                    "nacre {}: {}: cannot watch the connection: {e}",
                    self.ctx.target_name(target),
                    conn.stream.peer()
                );
            }
            self.ctx.connections.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        // Bytes may have arrived before the connection was watched.
        self.drive(slot);
    }

    /// Moves a connection on as far as its socket allows: the replies ready go out, the
    /// payload being received comes in, then the next requests, up to the bound of requests
    /// unanswered per connection. While the server stops it reads nothing new and closes
    /// once it holds no request being served or answered.
    fn drive(&mut self, slot: usize) {
        loop {
            let Some(blocked) = self.flush(slot) else {
                return;
            };
            if self.ctx.stop.load(Ordering::SeqCst) {
                if !self.holds_work(slot) {
                    self.close(slot, None);
                }
                return;
            }
            let Some(conn) = self.slots.get_mut(slot) else {
                return;
            };
            let moved = if let Some(i) = conn.payload {
                let staging = self.table[i]
                    .as_mut()
                    .and_then(|s| s.prepared.staging.as_mut());
                let mut dests = staging.map(Staging::slices_mut).unwrap_or_default();
                match conn.stream.recv_payload(&mut dests) {
                    Ok(Progress::Pending) => false,
                    Ok(Progress::Done) => {
                        drop(dests);
                        conn.payload = None;
                        self.start(i);
                        true
                    }
                    Err(e) => return self.close(slot, Some(e)),
                }
            } else if let Some((header, since)) = conn.parked.take() {
                self.begin_parked(slot, header, since);
                self.slots.get(slot).is_some_and(|c| c.parked.is_none())
            } else if conn.staged >= MAX_STAGED_BYTES_PER_CONNECTION {
                // The next request waits for replies to go out (`release`).
                false
            } else {
                match conn.stream.recv_request() {
                    Ok(Incoming::Pending) => false,
                    Ok(Incoming::Closed) => return self.close(slot, None),
                    Ok(Incoming::Request(header)) => {
                        self.begin(slot, header);
                        true
                    }
                    Err(e) => return self.close(slot, Some(e)),
                }
            };
            if moved {
                continue;
            }
            // Reading stopped: once more round only for replies it made ready.
            let (wants_write, still_blocked) = self.slots.get(slot).map_or((false, true), |c| {
                (c.stream.wants_write(), c.stream.writes_wait_for_an_event())
            });
            // A flush that was blocked at the start of this turn is tried again only if
            // reading unblocked it (RDMA reads reap send completions too; no event would
            // come for those).
            if !wants_write || (blocked && still_blocked) {
                return;
            }
        }
    }

    /// Writes out `slot`'s replies that are ready and lets go of the memory of those all
    /// written: `Some(true)` when the socket is full, `None` when the connection failed
    /// (and is closed).
    fn flush(&mut self, slot: usize) -> Option<bool> {
        let conn = self.slots.get_mut(slot)?;
        if !conn.stream.wants_write() {
            return Some(false);
        }
        let mut sent = std::mem::take(&mut self.sent);
        let flushed = conn.stream.flush(&mut sent);
        for &token in &sent {
            self.release(token);
        }
        sent.clear();
        self.sent = sent;
        match flushed {
            Ok(progress) => Some(progress == Progress::Pending),
            Err(e) => {
                self.close(slot, Some(e));
                None
            }
        }
    }

    /// Whether `slot`'s connection holds a request being served or answered (one whose
    /// payload is still arriving does not count: it has not started).
    fn holds_work(&self, slot: usize) -> bool {
        let Some(conn) = self.slots.get(slot) else {
            return false;
        };
        conn.stream.wants_write()
            || conn.requests.iter().any(|&i| {
                self.table[i]
                    .as_ref()
                    .is_some_and(|s| s.phase != Phase::Payload)
            })
    }

    /// A request parked since `since` is tried again: begun if staging has room now,
    /// parked on, or answered EAGAIN once it has waited [`STAGING_WAIT_MS`] (its payload,
    /// still in the socket, is dropped as the connection reads on).
    fn begin_parked(&mut self, slot: usize, header: Header, since: Instant) {
        if since.elapsed() < Duration::from_millis(STAGING_WAIT_MS) {
            self.begin(slot, header);
            if let Some((_, parked_at)) = self.slots.get_mut(slot).and_then(|c| c.parked.as_mut()) {
                *parked_at = since;
            }
            return;
        }
        let Some(conn) = self.slots.get_mut(slot) else {
            return;
        };
        let f = self.ctx.staging_waited(conn.target);
        if let Err(e) = conn
            .stream
            .reply(&header, f.errno, f.message.into_bytes(), NO_REQUEST)
        {
            self.close(slot, Some(e));
        }
    }

    /// A request arrived on `slot`'s connection.
    fn begin(&mut self, slot: usize, header: Header) {
        let Some(conn) = self.slots.get_mut(slot) else {
            return;
        };
        let now = Instant::now();
        conn.last_request = now;
        let prepared = match request::begin(&self.ctx, conn.target, &header, conn.stream.body()) {
            Work::Reply { status, body } => {
                if let Err(e) = conn.stream.reply(&header, status, body, NO_REQUEST) {
                    self.close(slot, Some(e));
                }
                return;
            }
            Work::Wait => {
                conn.parked = Some((header, now));
                if !self.parked.contains(&slot) {
                    self.parked.push(slot);
                }
                return;
            }
            Work::Run(prepared) => prepared,
        };
        // Only a write's payload is taken; any other request's is dropped when the next
        // request is read.
        let wants_payload = header.opcode == Opcode::Write && header.payload_len > 0;
        let staged = prepared.staging.as_ref().map_or(0, Staging::len);
        let i = self.insert(Serving {
            conn: Some(slot),
            phase: Phase::Payload,
            header,
            results: (0..prepared.pieces.len()).map(|_| None).collect(),
            prepared,
            per_worker: Vec::new(),
            jobs_left: 0,
            failure: None,
            token: 0,
            started: now,
            staged,
        });
        let Some(conn) = self.slots.get_mut(slot) else {
            return;
        };
        conn.requests.push(i);
        conn.staged += staged;
        if wants_payload {
            conn.payload = Some(i);
        } else {
            self.start(i);
        }
    }

    /// Puts a request in the table, naming it with a fresh token; its index.
    fn insert(&mut self, mut serving: Serving) -> usize {
        let i = self.free_entries.pop().unwrap_or_else(|| {
            self.table.push(None);
            self.table.len() - 1
        });
        self.sequence += 1;
        serving.token = (self.sequence << REQUEST_BITS) | i as u64;
        self.table[i] = Some(Box::new(serving));
        i
    }

    /// The table index of the request `token` names, if it is still there.
    fn entry(&self, token: u64) -> Option<usize> {
        let i = (token & ((1 << REQUEST_BITS) - 1)) as usize;
        let serving = self.table.get(i)?.as_ref()?;
        (serving.token == token).then_some(i)
    }

    /// Takes a request out of the table (its memory is freed with it, and no longer counted
    /// against its connection).
    fn free(&mut self, i: usize) {
        let Some(serving) = self.table[i].take() else {
            return;
        };
        self.free_entries.push(i);
        if let Some(slot) = serving.conn
            && let Some(conn) = self.slots.get_mut(slot)
        {
            conn.staged -= serving.staged;
        }
    }

    /// A reply is all written: its request leaves the table and its connection.
    fn release(&mut self, token: u64) {
        let Some(i) = self.entry(token) else {
            return;
        };
        if let Some(slot) = self.table[i].as_ref().and_then(|s| s.conn)
            && let Some(conn) = self.slots.get_mut(slot)
            && let Some(at) = conn.requests.iter().position(|&r| r == i)
        {
            conn.requests.remove(at);
        }
        self.free(i);
    }

    /// Gives request `i`'s reply, with all of its staging as the payload when `with_payload`
    /// (a read's); a request whose connection has gone just leaves the table.
    fn answer(&mut self, i: usize, status: i32, body: Vec<u8>, with_payload: bool) {
        let Some(serving) = self.table[i].as_mut() else {
            return;
        };
        serving.phase = Phase::Replying;
        if !with_payload {
            // Its pieces are done (or given up, the staging leaked already): free it now.
            serving.prepared.staging = None;
        }
        let Some(slot) = serving.conn else {
            return self.free(i);
        };
        let Some(conn) = self.slots.get_mut(slot) else {
            return self.free(i);
        };
        let payload = serving
            .prepared
            .staging
            .as_mut()
            .map(Staging::spans)
            .unwrap_or_default();
        // SAFETY: the staging stays in the table, untouched, until this reply's token comes
        // back from a flush (`release`) or its connection (and with it the reply) is
        // dropped (`close`), whichever comes first.
        let given = unsafe {
            conn.stream
                .reply_with_payload(&serving.header, status, body, payload, serving.token)
        };
        if let Err(e) = given {
            self.close(slot, Some(e));
        }
    }

    fn answer_failure(&mut self, i: usize, f: Failure) {
        self.answer(i, f.errno, f.message.into_bytes(), false);
    }

    /// Sends request `i`'s pieces out: reads to this worker's store, the rest to each
    /// object's owner.
    fn start(&mut self, i: usize) {
        if !self.ctx.enter() {
            let failure = self.ctx.stopping();
            return self.answer_failure(i, failure);
        }
        let Some(mut serving) = self.table[i].take() else {
            self.ctx.leave();
            return;
        };
        serving.phase = Phase::Running;
        serving.started = Instant::now();
        let token = serving.token;
        let workers = self.inboxes.len();
        let mut per_worker = vec![Vec::new(); workers];
        for (n, p) in serving.prepared.pieces.iter().enumerate() {
            let w = match p.op {
                PieceOp::Read { .. } => self.index,
                _ => owner(p.target, p.object_id, workers),
            };
            per_worker[w].push(n);
        }
        for (w, indexes) in per_worker.iter().enumerate() {
            if indexes.is_empty() {
                continue;
            }
            let job = Job {
                pieces: indexes
                    .iter()
                    .map(|&n| serving.prepared.pieces[n])
                    .collect(),
                index: w,
                reply: ReplyTo::Worker {
                    worker: self.index,
                    token,
                },
            };
            serving.jobs_left += 1;
            if w == self.index {
                self.accept(job);
            } else if !self.inboxes[w].send(Msg::Job(job)) {
                // The owner is gone, which happens only when the server stops.
                serving.failure = Some(self.ctx.stopping());
                self.delivered.push_back((token, w, Vec::new()));
            }
        }
        serving.per_worker = per_worker;
        if serving.jobs_left == 0 {
            // No pieces (an empty extent list): done already.
            self.delivered.push_back((token, usize::MAX, Vec::new()));
            serving.jobs_left = 1;
        }
        self.table[i] = Some(serving);
    }

    /// Applies results that came back; answers the requests they complete.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        while let Some((token, from, results)) = self.delivered.pop_front() {
            any = true;
            // Results of a request given up on find it answered already, or gone.
            let Some(i) = self.entry(token) else {
                continue;
            };
            let Some(serving) = self.table[i].as_mut() else {
                continue;
            };
            if serving.phase != Phase::Running {
                continue;
            }
            if let Some(indexes) = serving.per_worker.get(from) {
                for (&n, r) in indexes.iter().zip(results) {
                    serving.results[n] = Some(r);
                }
            }
            serving.jobs_left -= 1;
            if serving.jobs_left == 0 {
                self.complete(i);
            }
        }
        any
    }

    /// All pieces of request `i` are back: answer it.
    fn complete(&mut self, i: usize) {
        let Some(serving) = self.table[i].as_mut() else {
            return;
        };
        self.ctx.leave();
        let results: Vec<PieceResult> = serving.results.drain(..).flatten().collect();
        if serving.failure.is_none() && results.len() != serving.prepared.pieces.len() {
            serving.failure = Some(self.ctx.stopping());
        }
        let slot = serving.conn;
        if let Some(f) = serving.failure.take() {
            self.answer_failure(i, f);
        } else {
            let answer = request::finish(&serving.prepared, &results);
            let with_payload = answer.payload_len > 0;
            self.answer(i, answer.status, answer.body, with_payload);
        }
        if let Some(slot) = slot {
            self.answered(slot);
        }
    }

    /// A reply is ready on `slot`'s connection: it goes out with the others made ready in
    /// the same turn of the loop (`drive_answered`), in one `sendmsg` where they follow each
    /// other.
    fn answered(&mut self, slot: usize) {
        if let Some(conn) = self.slots.get_mut(slot)
            && !conn.answered
        {
            conn.answered = true;
            self.answered.push(slot);
        }
    }

    /// Drives every connection a reply was made ready on; whether there was any.
    fn drive_answered(&mut self) -> bool {
        let mut slots = std::mem::take(&mut self.answered);
        let any = !slots.is_empty();
        for &slot in &slots {
            if let Some(conn) = self.slots.get_mut(slot) {
                conn.answered = false;
                self.drive(slot);
            }
        }
        slots.clear();
        self.answered = slots;
        any
    }

    /// Closes a connection (saying why, when it failed) and frees its slot; its epoll
    /// token goes stale with the slot's generation. Its requests whose pieces are out stay
    /// in the table until they are back; the others leave it now.
    fn close(&mut self, slot: usize, why: Option<TransportError>) {
        let Some(conn) = self.slots.remove(slot) else {
            return;
        };
        if let Some(e) = why {
            self.errors
                .note("connection", &format_args!("{e}; connection closed"));
            self.ctx.counts.failed.fetch_add(1, Ordering::SeqCst);
        }
        self.ctx.connections.fetch_sub(1, Ordering::SeqCst);
        conn.stream.unwatch(&self.epoll);
        let Conn {
            stream, requests, ..
        } = conn;
        // Nothing writes from or reads into the requests' memory once the stream is gone.
        drop(stream);
        for i in requests {
            match self.table[i].as_mut() {
                Some(serving) if serving.phase == Phase::Running => serving.conn = None,
                Some(_) => self.free(i),
                None => {}
            }
        }
    }

    /// Answers requests whose pieces did not come back in time (ETIMEDOUT), and closes
    /// connections stuck mid-message past the request timeout.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let storage = Duration::from_millis(WORKER_REPLY_TIMEOUT_MS);
        for i in 0..self.table.len() {
            let late = self.table[i].as_ref().is_some_and(|s| {
                s.phase == Phase::Running && now.duration_since(s.started) >= storage
            });
            if !late {
                continue;
            }
            let Some(serving) = self.table[i].as_mut() else {
                continue;
            };
            give_up(&self.ctx, serving);
            let slot = serving.conn;
            let name = serving
                .prepared
                .pieces
                .first()
                .map_or_else(|| self.ctx.name(), |p| self.ctx.target_name(p.target));
            let failure = Failure {
                errno: libc::ETIMEDOUT,
                message: format!(
                    "{name}: storage did not answer within {WORKER_REPLY_TIMEOUT_MS} ms"
                ),
            };
            self.answer_failure(i, failure);
            if let Some(slot) = slot {
                self.drive(slot);
            }
        }
        // Parked requests past their wait are answered now, memory or not.
        let waited = Duration::from_millis(STAGING_WAIT_MS);
        let overdue: Vec<usize> = self
            .parked
            .iter()
            .copied()
            .filter(|&slot| {
                self.slots
                    .get(slot)
                    .and_then(|c| c.parked.as_ref())
                    .is_some_and(|(_, since)| now.duration_since(*since) >= waited)
            })
            .collect();
        for slot in overdue {
            self.drive(slot);
        }
        let stalled = Duration::from_millis(REQUEST_TIMEOUT_MS);
        for slot in self.slots.indices() {
            let Some(conn) = self.slots.get(slot) else {
                continue;
            };
            // A parked request is the server's wait, not the client's stall; it has its own
            // deadline (`begin_parked`).
            if conn.parked.is_none()
                && conn.stream.mid_message()
                && now.duration_since(conn.stream.last_progress()) >= stalled
            {
                let peer = conn.stream.peer();
                nacre_transport::log_line!(
                    "nacre {}: {peer} made no progress for {REQUEST_TIMEOUT_MS} ms; connection closed",
                    self.ctx.name()
                );
                self.ctx.counts.failed.fetch_add(1, Ordering::SeqCst);
                self.close(slot, None);
            }
        }
    }

    /// When stopping: closes every connection holding no request being served or answered.
    fn close_idle(&mut self) {
        for slot in self.slots.indices() {
            if self.slots.get(slot).is_some() && !self.holds_work(slot) {
                self.close(slot, None);
            }
        }
    }

    // ---- storage ----

    /// Takes a job's pieces in.
    fn accept(&mut self, job: Job) {
        let n = job.pieces.len();
        let slot = self.free_jobs.pop().unwrap_or_else(|| {
            self.running.push(None);
            self.running.len() - 1
        });
        self.running[slot] = Some(RunningJob {
            results: (0..n).map(|_| None).collect(),
            left: n,
            job,
        });
        self.queue.extend((0..n).map(|i| (slot, i)));
        if n == 0 {
            self.finish(slot);
        }
    }

    /// Starts queued pieces whose stores have room, in order, and collects completions
    /// without waiting. A piece whose store is full waits, and so do the later pieces of
    /// that store (none can start before it frees room), but other targets' pieces go on.
    /// Whether anything happened.
    fn step(&mut self) -> Result<bool, IoError> {
        let mut moved = false;
        let mut waiting = std::mem::take(&mut self.waiting);
        while let Some((slot, i)) = self.queue.pop_front() {
            let Some(piece) = self.running[slot].as_ref().map(|r| r.job.pieces[i]) else {
                moved = true;
                continue;
            };
            let store = &self.stores[piece.target];
            if store.outstanding() >= store.config().max_ops as usize {
                waiting.push_back((slot, i));
                continue;
            }
            moved = true;
            if let Some(result) = self.start_piece(piece, ((slot as u64) << PIECE_BITS) | i as u64)
            {
                self.record(slot, i, result);
            }
        }
        // The queue is empty now; what waits goes back in its order.
        std::mem::swap(&mut self.queue, &mut waiting);
        self.waiting = waiting;
        let mut completions = std::mem::take(&mut self.completions);
        // A failed ring stops the server, but the completions already taken from the other
        // stores are applied first.
        let mut failed = None;
        // A store given a piece this turn holds it in `outstanding` until its completion is
        // handed back (even one done at once), so idle stores are not polled.
        for store in &mut self.stores {
            if store.outstanding() > 0
                && let Err(e) = store.poll(&mut completions)
            {
                failed = Some(e);
                break;
            }
        }
        moved |= !completions.is_empty();
        for c in completions.drain(..) {
            let slot = (c.tag >> PIECE_BITS) as usize;
            let i = (c.tag & ((1 << PIECE_BITS) - 1)) as usize;
            let is_read = self.running[slot]
                .as_ref()
                .is_some_and(|r| matches!(r.job.pieces[i].op, PieceOp::Read { .. }));
            let result = match c.result {
                // A stripe never written reads as a hole.
                Err(e) if is_read && e.errno() == libc::ENOENT => Ok(0),
                other => other,
            };
            self.record(slot, i, result);
        }
        self.completions = completions;
        match failed {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    /// Starts a piece: submits it to the store, or does it now and returns its result.
    fn start_piece(&mut self, piece: Piece, tag: u64) -> Option<PieceResult> {
        let (t, object_id) = (piece.target, piece.object_id);
        let op = match piece.op {
            PieceOp::Read { buf, len } => Op::Read {
                object_id,
                offset_bytes: piece.offset_bytes,
                buf,
                len,
            },
            PieceOp::Write { buf, len } => {
                if let Err(e) = self.ensure_exists(t, object_id) {
                    return Some(Err(e));
                }
                Op::Write {
                    object_id,
                    offset_bytes: piece.offset_bytes,
                    buf,
                    len,
                }
            }
            PieceOp::Truncate => {
                if let Err(e) = self.ensure_exists(t, object_id) {
                    return Some(Err(e));
                }
                Op::Truncate {
                    object_id,
                    size_bytes: piece.offset_bytes,
                }
            }
            PieceOp::Sync => {
                if let Err(e) = self.ensure_exists(t, object_id) {
                    return Some(Err(e));
                }
                Op::Sync { object_id }
            }
            PieceOp::Punch { len } => {
                if !self.exists(t, object_id) {
                    return Some(Ok(0));
                }
                Op::Punch {
                    object_id,
                    offset_bytes: piece.offset_bytes,
                    len,
                }
            }
            PieceOp::Stat => {
                return Some(match self.ctx.targets[t].stat(object_id) {
                    Ok(s) => Ok(s.size_bytes),
                    Err(e) if e.errno() == libc::ENOENT => Ok(0),
                    Err(e) => Err(e),
                });
            }
            PieceOp::Remove => return Some(self.remove(t, object_id)),
        };
        // SAFETY: a read's or write's memory belongs to the job's request, whose owner
        // leaves it alone until this job's results are back (see `Job`).
        match unsafe { self.stores[t].submit(op, tag) } {
            Ok(()) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Removes an object, after every worker closed its file (reads run on any worker).
    fn remove(&mut self, t: usize, object_id: u64) -> PieceResult {
        self.known.remove(&(t, object_id));
        for (w, inbox) in self.inboxes.iter().enumerate() {
            if w != self.index {
                // A worker that has gone has closed its files.
                let _ = inbox.send(Msg::Forget(t, object_id));
            }
        }
        self.stores[t].close_object(object_id)?;
        match self.ctx.targets[t].remove(object_id) {
            Err(e) if e.errno() == libc::ENOENT => Ok(0),
            other => other.map(|()| 0),
        }
    }

    /// Closes the files of removed objects that are idle now; the others wait.
    fn forget_objects(&mut self) {
        let mut waiting = std::mem::take(&mut self.forget);
        waiting.retain(|&(t, id)| self.stores[t].close_object(id).is_err());
        self.forget = waiting;
    }

    fn exists(&mut self, t: usize, object_id: u64) -> bool {
        self.known.contains(&(t, object_id)) || self.ctx.targets[t].stat(object_id).is_ok()
    }

    fn ensure_exists(&mut self, t: usize, object_id: u64) -> Result<(), IoError> {
        if self.known.contains(&(t, object_id)) {
            return Ok(());
        }
        match self.ctx.targets[t].create(object_id) {
            Ok(()) | Err(IoError::ObjectExists { .. }) => {}
            Err(e) => return Err(e),
        }
        if self.known.len() >= MAX_KNOWN_OBJECTS {
            self.known.clear();
        }
        self.known.insert((t, object_id));
        Ok(())
    }

    fn record(&mut self, slot: usize, i: usize, result: PieceResult) {
        let Some(r) = self.running[slot].as_mut() else {
            return;
        };
        r.results[i] = Some(result);
        r.left -= 1;
        if r.left == 0 {
            self.finish(slot);
        }
    }

    /// A job is done: its results go where it asked.
    fn finish(&mut self, slot: usize) {
        let Some(r) = self.running[slot].take() else {
            return;
        };
        self.free_jobs.push(slot);
        let results = r.results.into_iter().flatten().collect();
        match r.job.reply {
            // The connection thread may have given up waiting; nothing else to do then.
            ReplyTo::Thread(tx) => {
                let _ = tx.send((r.job.index, results));
            }
            ReplyTo::Worker { worker, token } if worker == self.index => {
                self.delivered.push_back((token, r.job.index, results));
            }
            ReplyTo::Worker { worker, token } => {
                let msg = Msg::Results {
                    token,
                    from: r.job.index,
                    results,
                };
                // A worker waits for every request it sent out before it goes.
                let _ = self.inboxes[worker].send(msg);
            }
        }
    }
}
