//! A worker: one thread per core, owning an [`ObjectStore`] (its ring, its registered files,
//! the pool registered with it), the TCP connections the acceptor handed it, and the objects
//! whose id hashes to it (decision 0008).
//!
//! One loop does everything, without a lock on the data path: it waits in epoll on its
//! connections, on an eventfd other threads ring when they send it a message, and on the
//! eventfd its ring signals when a completion is posted. A request read from a connection
//! is cut into pieces; reads run on this worker's own store, whoever owns the object, and
//! every other piece runs on the object's owner, so that writes to one object stay ordered
//! without a lock (decision 0002). Pieces for another owner travel as a message, and their
//! results come back as one. The reply goes out from the same memory the pieces used.

use std::collections::{HashSet, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nacre_io::{Completion, IoError, ObjectStore, Op, StoreConfig};
use nacre_transport::limits::REQUEST_TIMEOUT_MS;
use nacre_transport::wire::{Header, Opcode};
use nacre_transport::{Incoming, Progress, StreamConn, TransportError};

use super::request::{
    self, Context, Failure, Piece, PieceOp, PieceResult, Prepared, Staging, Work,
};
use crate::error::Error;
use crate::limits::{IDLE_POLL_MS, MAX_KNOWN_OBJECTS, WORKER_REPLY_TIMEOUT_MS};
use crate::sys::{Epoll, EventFd};

/// Most client connections one worker serves at once; more are refused (closed).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 16 * 1024;
/// The epoll token of a worker's wake-up eventfd.
const WAKE_TOKEN: u64 = u64::MAX;
/// The epoll token of the eventfd the worker's ring signals.
const RING_TOKEN: u64 = u64::MAX - 1;
/// Bits of a store tag that hold the piece index.
const PIECE_BITS: u32 = 24;
/// Bits of a request's results token that hold its connection slot; the bits above hold
/// the request's sequence number, so that late results of a request given up on can never
/// complete a later request on the same connection.
const SLOT_BITS: u32 = 24;
const _: () = assert!(MAX_CONNECTIONS_PER_WORKER < 1 << SLOT_BITS);

/// The worker that owns an object: the one that runs every piece but reads.
pub(super) fn owner(object_id: u64, workers: usize) -> usize {
    // Stripes of one file differ in the low bits of the id; mix so that files spread too.
    (object_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % workers
}

/// What other threads tell a worker.
pub(super) enum Msg {
    /// A client connection to serve from now on.
    Connection(StreamConn),
    /// Pieces of objects this worker owns.
    Job(Job),
    /// The results of a job this worker sent out, for the request `token` names (its
    /// sequence number and connection slot).
    Results {
        token: u64,
        from: usize,
        results: Vec<PieceResult>,
    },
    /// An object was removed: close its file if this worker's store holds it open.
    Forget(u64),
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
            wake: EventFd::new()?,
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

/// Gives a request's pieces up and counts it out: its memory is leaked, not freed, because
/// pieces still out may yet use it.
fn give_up(ctx: &Context, mut serving: Box<Serving>) {
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

/// A request whose pieces are out (or whose payload is arriving).
struct Serving {
    header: Header,
    prepared: Prepared,
    results: Vec<Option<PieceResult>>,
    /// Piece indexes of each worker's share.
    per_worker: Vec<Vec<usize>>,
    jobs_left: usize,
    /// Set when a share could not be sent.
    failure: Option<Failure>,
    /// Names this request in its results (see [`SLOT_BITS`]).
    token: u64,
    /// When its pieces went out.
    started: Instant,
}

enum State {
    /// Reading the next request.
    Idle,
    /// Receiving a write's payload into its staging.
    Payload(Box<Serving>),
    /// Pieces out; the reply waits for their results.
    Serving(Box<Serving>),
    /// Writing the reply (a read's payload from its staging).
    Replying(Option<Staging>),
}

/// A connection. One whose request's pieces are out is never closed (it is not driven
/// until they are back, and `sweep` gives their memory up first), so their memory is never
/// freed under them.
struct Conn {
    stream: StreamConn,
    state: State,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// A worker thread's whole state.
pub(super) struct Worker {
    index: usize,
    ctx: Arc<Context>,
    inboxes: Arc<Vec<Inbox>>,
    rx: mpsc::Receiver<Msg>,
    // Storage.
    store: ObjectStore,
    ring_event: EventFd,
    running: Vec<Option<RunningJob>>,
    free_jobs: Vec<usize>,
    /// (job slot, piece index) not yet started.
    queue: VecDeque<(usize, usize)>,
    /// Objects known to exist (a cache: cleared when it grows past its bound).
    known: HashSet<u64>,
    completions: Vec<Completion>,
    /// Objects to close once their operations are done.
    forget: Vec<u64>,
    // Network.
    epoll: Epoll,
    slots: Vec<Slot>,
    /// Slots with no connection (every other slot has one).
    free_slots: Vec<usize>,
    /// Results for this worker's requests, to apply outside of whatever produced them.
    delivered: VecDeque<(u64, usize, Vec<PieceResult>)>,
    /// The sequence number of the last request this worker started.
    requests: u64,
    /// Tokens epoll found ready, and whether each may be read.
    ready_tokens: Vec<(u64, bool)>,
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
        let mut store = ObjectStore::new(&ctx.target, store_config)?;
        for (ptr, len) in ctx.pool.registrations() {
            // SAFETY: the pool's slab outlives the store: `ctx` holds the pool, and `run`
            // drops the worker (and its store) before its `ctx`.
            unsafe { store.register_memory(ptr, len) }?;
        }
        let ring_event = EventFd::new()?;
        store.register_eventfd(ring_event.raw())?;
        let epoll = Epoll::new()?;
        let io = |e: std::io::Error| Error::Server {
            what: format!("target {} worker {index}", ctx.target_id),
            reason: format!("epoll_ctl: {e}"),
        };
        epoll
            .add(inboxes[index].wake.raw(), WAKE_TOKEN, false)
            .map_err(io)?;
        epoll.add(ring_event.raw(), RING_TOKEN, false).map_err(io)?;
        Ok(Worker {
            index,
            ctx,
            inboxes,
            rx,
            store,
            ring_event,
            running: Vec::new(),
            free_jobs: Vec::new(),
            queue: VecDeque::new(),
            known: HashSet::new(),
            completions: Vec::new(),
            forget: Vec::new(),
            epoll,
            slots: Vec::new(),
            free_slots: Vec::new(),
            delivered: VecDeque::new(),
            requests: 0,
            ready_tokens: Vec::new(),
            last_sweep: Instant::now(),
        })
    }

    fn serve(mut self) {
        let idle = Duration::from_millis(IDLE_POLL_MS);
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
            if self.last_sweep.elapsed() >= idle {
                self.sweep();
            }
            if self.ctx.stop.load(Ordering::SeqCst) {
                self.close_idle();
                if self.finished() {
                    break;
                }
            }
            let timeout = if busy { Duration::ZERO } else { idle };
            if let Err(e) = self.sleep(timeout) {
                return self.fail(&e);
            }
        }
    }

    /// The worker's ring or epoll failed: the target cannot go on without it, so the whole
    /// server stops. Every request this worker serves is given up (its memory leaked, since
    /// pieces on other workers may still use it) and counted out, so that the other workers
    /// can finish and stop.
    fn fail(&mut self, e: &Error) {
        nacre_transport::log_line!(
            "nacre target {}: worker {} failed ({e}); the target server stops",
            self.ctx.target_id,
            self.index
        );
        self.ctx.stop.store(true, Ordering::SeqCst);
        for slot in &mut self.slots {
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            if let State::Serving(serving) = std::mem::replace(&mut conn.state, State::Idle) {
                give_up(&self.ctx, serving);
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
        waited?;
        for &(token, readable) in &tokens {
            match token {
                WAKE_TOKEN => self.inboxes[self.index].wake.clear(),
                RING_TOKEN => self.ring_event.clear(),
                t => {
                    let Some(slot) = self.slot_of(t) else {
                        continue;
                    };
                    if readable && let Some(conn) = self.slots[slot].conn.as_mut() {
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

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Connection(stream) => self.adopt(stream),
            Msg::Job(job) => self.accept(job),
            Msg::Results {
                token,
                from,
                results,
            } => self.delivered.push_back((token, from, results)),
            Msg::Forget(object_id) => {
                self.known.remove(&object_id);
                self.forget.push(object_id);
            }
        }
    }

    /// Whether the server is stopping and nothing is left for this worker: no request in
    /// flight anywhere (another worker's may still need this one's store), no connection.
    fn finished(&self) -> bool {
        self.ctx.in_flight.load(Ordering::SeqCst) == 0
            && self.open_conns() == 0
            && self.queue.is_empty()
            && self.store.outstanding() == 0
            && self.running.iter().all(Option::is_none)
    }

    // ---- connections ----

    fn open_conns(&self) -> usize {
        self.slots.len() - self.free_slots.len()
    }

    fn token(&self, slot: usize) -> u64 {
        (u64::from(self.slots[slot].generation) << 32) | slot as u64
    }

    fn slot_of(&self, token: u64) -> Option<usize> {
        let slot = (token & u64::from(u32::MAX)) as usize;
        let s = self.slots.get(slot)?;
        (u64::from(s.generation) == token >> 32 && s.conn.is_some()).then_some(slot)
    }

    fn adopt(&mut self, stream: StreamConn) {
        if self.open_conns() >= MAX_CONNECTIONS_PER_WORKER || self.ctx.stop.load(Ordering::SeqCst) {
            nacre_transport::log_line!(
                "nacre target {}: {} refused: worker {} serves {MAX_CONNECTIONS_PER_WORKER} connections",
                self.ctx.target_id,
                stream.peer(),
                self.index
            );
            return;
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(Slot {
                generation: 0,
                conn: None,
            });
            self.slots.len() - 1
        });
        let token = self.token(slot);
        if let Err(e) = self.epoll.add(stream.fd(), token, true) {
            nacre_transport::log_line!(
                "nacre target {}: {}: cannot watch the connection: {e}",
                self.ctx.target_id,
                stream.peer()
            );
            self.free_slots.push(slot);
            return;
        }
        self.slots[slot].conn = Some(Conn {
            stream,
            state: State::Idle,
        });
        // Bytes may have arrived before the connection was watched.
        self.drive(slot);
    }

    /// Moves a connection on as far as its socket allows: the reply being written, the
    /// payload being received, then the next requests.
    fn drive(&mut self, slot: usize) {
        loop {
            let stopping = self.ctx.stop.load(Ordering::SeqCst);
            let Some(Conn { stream, state }) = self.slots[slot].conn.as_mut() else {
                return;
            };
            match state {
                State::Replying(staging) => {
                    let mut slices: Vec<IoSlice<'_>> = Vec::new();
                    if let Some(s) = staging {
                        slices = s.slices();
                    }
                    match stream.flush(&slices) {
                        Ok(Progress::Pending) => return,
                        Ok(Progress::Done) => *state = State::Idle,
                        Err(e) => return self.close(slot, Some(e)),
                    }
                }
                State::Serving(_) => return,
                State::Payload(serving) => {
                    let staging = serving.prepared.staging.as_mut();
                    let mut dests = staging.map(Staging::slices_mut).unwrap_or_default();
                    match stream.recv_payload(&mut dests) {
                        Ok(Progress::Pending) => return,
                        Ok(Progress::Done) => {
                            drop(dests);
                            let State::Payload(serving) = std::mem::replace(state, State::Idle)
                            else {
                                unreachable!("matched above")
                            };
                            self.start(slot, serving);
                        }
                        Err(e) => return self.close(slot, Some(e)),
                    }
                }
                State::Idle => {
                    if stopping {
                        return self.close(slot, None);
                    }
                    match stream.recv_request() {
                        Ok(Incoming::Pending) => return,
                        Ok(Incoming::Closed) => return self.close(slot, None),
                        Ok(Incoming::Request(header)) => self.begin(slot, header),
                        Err(e) => return self.close(slot, Some(e)),
                    }
                }
            }
        }
    }

    /// A request arrived on `slot`'s connection.
    fn begin(&mut self, slot: usize, header: Header) {
        let Some(conn) = self.slots[slot].conn.as_mut() else {
            return;
        };
        match request::begin(&self.ctx, &header, conn.stream.body()) {
            Work::Reply { status, body } => self.reply(slot, &header, status, &body, None),
            Work::Run(prepared) => {
                let serving = Box::new(Serving {
                    header,
                    results: (0..prepared.pieces.len()).map(|_| None).collect(),
                    prepared,
                    per_worker: Vec::new(),
                    jobs_left: 0,
                    failure: None,
                    token: 0,
                    started: Instant::now(),
                });
                // Only a write's payload is taken; any other request's is dropped with
                // its reply.
                if header.opcode == Opcode::Write && header.payload_len > 0 {
                    conn.state = State::Payload(serving);
                } else {
                    self.start(slot, serving);
                }
            }
        }
    }

    /// Starts a reply on `slot`'s connection, with all of `payload` (a read's staging) as
    /// its payload.
    fn reply(
        &mut self,
        slot: usize,
        header: &Header,
        status: i32,
        body: &[u8],
        payload: Option<Staging>,
    ) {
        let Some(conn) = self.slots[slot].conn.as_mut() else {
            return;
        };
        let payload_len = payload.as_ref().map_or(0, |s| s.len() as u64);
        match conn.stream.start_reply(header, status, body, payload_len) {
            Ok(()) => conn.state = State::Replying(payload),
            Err(e) => self.close(slot, Some(e)),
        }
    }

    fn reply_failure(&mut self, slot: usize, header: &Header, f: &Failure) {
        self.reply(slot, header, f.errno, f.message.as_bytes(), None);
    }

    /// Sends a request's pieces out: reads to this worker's store, the rest to each
    /// object's owner.
    fn start(&mut self, slot: usize, mut serving: Box<Serving>) {
        if !self.ctx.enter() {
            let failure = self.ctx.stopping();
            return self.reply_failure(slot, &serving.header, &failure);
        }
        self.requests += 1;
        let token = (self.requests << SLOT_BITS) | slot as u64;
        serving.token = token;
        serving.started = Instant::now();
        let workers = self.inboxes.len();
        let mut per_worker = vec![Vec::new(); workers];
        for (i, p) in serving.prepared.pieces.iter().enumerate() {
            let w = match p.op {
                PieceOp::Read { .. } => self.index,
                _ => owner(p.object_id, workers),
            };
            per_worker[w].push(i);
        }
        for (w, indexes) in per_worker.iter().enumerate() {
            if indexes.is_empty() {
                continue;
            }
            let job = Job {
                pieces: indexes
                    .iter()
                    .map(|&i| serving.prepared.pieces[i])
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
        if let Some(conn) = self.slots[slot].conn.as_mut() {
            conn.state = State::Serving(serving);
        }
    }

    /// Applies results that came back; replies to the requests they complete.
    fn deliver(&mut self) -> bool {
        let mut any = false;
        while let Some((token, from, results)) = self.delivered.pop_front() {
            any = true;
            let slot = (token & ((1 << SLOT_BITS) - 1)) as usize;
            // Results of a request given up on (timed out, its connection gone) find no
            // request with their token: nothing to do.
            let Some(Conn {
                state: State::Serving(serving),
                ..
            }) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut())
            else {
                continue;
            };
            if serving.token != token {
                continue;
            }
            if let Some(indexes) = serving.per_worker.get(from) {
                for (&i, r) in indexes.iter().zip(results) {
                    serving.results[i] = Some(r);
                }
            }
            serving.jobs_left -= 1;
            if serving.jobs_left == 0 {
                self.complete(slot);
            }
        }
        any
    }

    /// All pieces of `slot`'s request are back: reply.
    fn complete(&mut self, slot: usize) {
        let Some(conn) = self.slots[slot].conn.as_mut() else {
            return;
        };
        let State::Serving(mut serving) = std::mem::replace(&mut conn.state, State::Idle) else {
            return;
        };
        self.ctx.leave();
        let results: Vec<PieceResult> = serving.results.drain(..).flatten().collect();
        if serving.failure.is_none() && results.len() != serving.prepared.pieces.len() {
            serving.failure = Some(self.ctx.stopping());
        }
        if let Some(f) = &serving.failure {
            self.reply_failure(slot, &serving.header, f);
            return self.drive(slot);
        }
        let answer = request::finish(&serving.prepared, &results);
        let staging = if answer.payload_len > 0 {
            serving.prepared.staging.take()
        } else {
            None
        };
        self.reply(slot, &serving.header, answer.status, &answer.body, staging);
        self.drive(slot);
    }

    /// Closes a connection (saying why, when it failed) and frees its slot; its epoll
    /// token goes stale with the slot's generation.
    fn close(&mut self, slot: usize, why: Option<TransportError>) {
        let Some(conn) = self.slots[slot].conn.take() else {
            return;
        };
        if let Some(e) = why {
            nacre_transport::log_line!(
                "nacre target {}: {e}; connection closed",
                self.ctx.target_id
            );
        }
        self.epoll.remove(conn.stream.fd());
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        self.free_slots.push(slot);
    }

    /// Closes connections stuck mid-message past the request timeout, and gives up on
    /// requests whose pieces did not come back in time.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let stalled = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let storage = Duration::from_millis(WORKER_REPLY_TIMEOUT_MS);
        for slot in 0..self.slots.len() {
            let Some(conn) = self.slots[slot].conn.as_mut() else {
                continue;
            };
            if let State::Serving(serving) = &mut conn.state {
                if now.duration_since(serving.started) < storage {
                    continue;
                }
                let State::Serving(serving) = std::mem::replace(&mut conn.state, State::Idle)
                else {
                    unreachable!("matched above")
                };
                let header = serving.header;
                give_up(&self.ctx, serving);
                let failure = Failure {
                    errno: libc::ETIMEDOUT,
                    message: format!(
                        "target {}: storage did not answer within {WORKER_REPLY_TIMEOUT_MS} ms",
                        self.ctx.target_id
                    ),
                };
                self.reply_failure(slot, &header, &failure);
                self.drive(slot);
            } else if conn.stream.mid_message()
                && now.duration_since(conn.stream.last_progress()) >= stalled
            {
                let peer = conn.stream.peer();
                nacre_transport::log_line!(
                    "nacre target {}: {peer} made no progress for {REQUEST_TIMEOUT_MS} ms; connection closed",
                    self.ctx.target_id
                );
                self.close(slot, None);
            }
        }
    }

    /// When stopping: closes every connection not waiting for pieces or writing a reply.
    fn close_idle(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(conn) = &self.slots[slot].conn
                && matches!(conn.state, State::Idle | State::Payload(_))
            {
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

    /// Starts queued pieces while the store has room, and collects completions without
    /// waiting. Whether anything happened.
    fn step(&mut self) -> Result<bool, IoError> {
        let max_ops = self.store.config().max_ops as usize;
        let mut moved = false;
        while let Some(&(slot, i)) = self.queue.front() {
            if self.store.outstanding() >= max_ops {
                break;
            }
            self.queue.pop_front();
            moved = true;
            let Some(piece) = self.running[slot].as_ref().map(|r| r.job.pieces[i]) else {
                continue;
            };
            if let Some(result) = self.start_piece(piece, ((slot as u64) << PIECE_BITS) | i as u64)
            {
                self.record(slot, i, result);
            }
        }
        if self.store.outstanding() > 0 || moved {
            let mut completions = std::mem::take(&mut self.completions);
            self.store.poll(&mut completions)?;
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
        }
        Ok(moved)
    }

    /// Starts a piece: submits it to the store, or does it now and returns its result.
    fn start_piece(&mut self, piece: Piece, tag: u64) -> Option<PieceResult> {
        let object_id = piece.object_id;
        let op = match piece.op {
            PieceOp::Read { buf, len } => Op::Read {
                object_id,
                offset_bytes: piece.offset_bytes,
                buf,
                len,
            },
            PieceOp::Write { buf, len } => {
                if let Err(e) = self.ensure_exists(object_id) {
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
                if let Err(e) = self.ensure_exists(object_id) {
                    return Some(Err(e));
                }
                Op::Truncate {
                    object_id,
                    size_bytes: piece.offset_bytes,
                }
            }
            PieceOp::Sync => {
                if let Err(e) = self.ensure_exists(object_id) {
                    return Some(Err(e));
                }
                Op::Sync { object_id }
            }
            PieceOp::Punch { len } => {
                if !self.exists(object_id) {
                    return Some(Ok(0));
                }
                Op::Punch {
                    object_id,
                    offset_bytes: piece.offset_bytes,
                    len,
                }
            }
            PieceOp::Stat => {
                return Some(match self.ctx.target.stat(object_id) {
                    Ok(s) => Ok(s.size_bytes),
                    Err(e) if e.errno() == libc::ENOENT => Ok(0),
                    Err(e) => Err(e),
                });
            }
            PieceOp::Remove => return Some(self.remove(object_id)),
        };
        // SAFETY: a read's or write's memory belongs to the job's request, whose owner
        // leaves it alone until this job's results are back (see `Job`).
        match unsafe { self.store.submit(op, tag) } {
            Ok(()) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Removes an object, after every worker closed its file (reads run on any worker).
    fn remove(&mut self, object_id: u64) -> PieceResult {
        self.known.remove(&object_id);
        for (w, inbox) in self.inboxes.iter().enumerate() {
            if w != self.index {
                // A worker that has gone has closed its files.
                let _ = inbox.send(Msg::Forget(object_id));
            }
        }
        self.store.close_object(object_id)?;
        match self.ctx.target.remove(object_id) {
            Err(e) if e.errno() == libc::ENOENT => Ok(0),
            other => other.map(|()| 0),
        }
    }

    /// Closes the files of removed objects that are idle now; the others wait.
    fn forget_objects(&mut self) {
        let mut waiting = std::mem::take(&mut self.forget);
        waiting.retain(|&id| self.store.close_object(id).is_err());
        self.forget = waiting;
    }

    fn exists(&mut self, object_id: u64) -> bool {
        self.known.contains(&object_id) || self.ctx.target.stat(object_id).is_ok()
    }

    fn ensure_exists(&mut self, object_id: u64) -> Result<(), IoError> {
        if self.known.contains(&object_id) {
            return Ok(());
        }
        match self.ctx.target.create(object_id) {
            Ok(()) | Err(IoError::ObjectExists { .. }) => {}
            Err(e) => return Err(e),
        }
        if self.known.len() >= MAX_KNOWN_OBJECTS {
            self.known.clear();
        }
        self.known.insert(object_id);
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
