//! The metadata service's event loops: [`META_LOOPS`] threads, each driving its share of the
//! TCP connections with epoll (decision 0018), so that the threads do not grow with the
//! clients (4,000 idle connections gave 3,886 threads when each had one).
//!
//! A request is answered on its loop: the store's calls are short. One that must first work
//! removal logs (it contacts targets, which may be slow or down) goes to one of
//! [`META_REMOVERS`] remover threads, whose reply comes back to the loop; the connection's
//! later requests are read meanwhile, and replies leave in request order.
//!
//! One that waits for chunks of a released file to be fetched from its data repository
//! goes to one of [`META_HYDRATORS`] hydrator threads (`crate::meta::hydrate`) the same way.
//!
//! Replies a client does not take are bounded: a connection with
//! [`MAX_META_UNSENT_BYTES_PER_CONNECTION`] of replies unsent is not read until they go, and
//! none is while all connections' unsent replies pass [`MAX_META_UNSENT_BYTES`].
//!
//! A connection may idle between messages as long as it likes, but one partway through a
//! message (or with replies the client does not take) for [`REQUEST_TIMEOUT_MS`] is closed:
//! a slow sender's pauses are waited out up to that bound, a slow-loris is not. Past the
//! server's bound of connections, the loop closes its oldest idle connection to make room,
//! or refuses the new one when none is idle.

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nacre_transport::TransportError;
use nacre_transport::event::{Epoll, EventFd};
use nacre_transport::limits::REQUEST_TIMEOUT_MS;
use nacre_transport::server::{Incoming, Progress, StreamConn};
use nacre_transport::wire::Header;

use crate::error::Error;
use crate::limits::{
    IDLE_POLL_MS, MAX_META_UNSENT_BYTES, MAX_META_UNSENT_BYTES_PER_CONNECTION, META_HYDRATORS,
    META_LOOPS, META_REMOVERS, REMOVE_RETRY_MS, STOP_TIMEOUT_MS,
};
use crate::meta::hydrate::Hydrator;
use crate::meta::server::{Answer, answer, remove_logged};
use crate::meta::store::MetaStore;
use crate::server::{ErrorLog, spawn};
use crate::slots::{Admit, Slots};

/// The epoll token of a loop's wake-up eventfd (connections' tokens are generation and
/// slot).
const WAKE_TOKEN: u64 = u64::MAX;

/// What a loop is told by other threads.
enum LoopMsg {
    /// A connection to serve from now on.
    Connection(StreamConn),
    /// The reply to a request whose removal logs the remover worked.
    Reply {
        token: u64,
        header: Header,
        answer: Answer,
    },
}

/// A request whose reply waits for the remover (the targets to work) or a hydrator (the
/// chunks to fetch), and the reply to give after.
struct Deferred {
    to_loop: usize,
    token: u64,
    header: Header,
    answer: Answer,
}

/// How other threads reach a loop.
struct Inbox {
    tx: mpsc::Sender<LoopMsg>,
    wake: EventFd,
}

impl Inbox {
    /// Sends `msg` and wakes the loop; false when it has gone.
    fn send(&self, msg: LoopMsg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        self.wake.ring();
        true
    }
}

/// The hydrator threads, started with the first hydration (a service whose files are never
/// released runs none): their queue until then, and their handles after.
struct Hydrators {
    jobs: Option<mpsc::Receiver<Deferred>>,
    handles: Vec<JoinHandle<()>>,
}

/// What the loops share.
struct Shared {
    store: Arc<MetaStore>,
    hydrator: Arc<Hydrator>,
    hydrators: Mutex<Hydrators>,
    /// Loops still running: the last to end joins the hydrators.
    live_loops: AtomicUsize,
    stop: Arc<AtomicBool>,
    inboxes: Vec<Inbox>,
    /// Connections the loops hold, all together.
    open: AtomicUsize,
    /// The most they may hold.
    bound: usize,
    /// Bytes of replies given and not yet written, over every connection.
    unsent: AtomicUsize,
}

/// The acceptor's handle on the loops.
pub(super) struct Loops {
    shared: Arc<Shared>,
    next: AtomicUsize,
}

impl Loops {
    /// Hands a new connection to a loop, in turn. One that finds every loop gone (the
    /// server stops) is dropped.
    pub(super) fn adopt(&self, stream: StreamConn) {
        let n = self.shared.inboxes.len();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let _ = self.shared.inboxes[i].send(LoopMsg::Connection(stream));
    }
}

/// Starts the loops and the remover over `store`, holding at most `bound` connections in
/// all; returns the acceptor's handle and the threads (they stop when `stop` is set).
pub(super) fn start(
    store: &Arc<MetaStore>,
    hydrator: &Arc<Hydrator>,
    stop: &Arc<AtomicBool>,
    bound: usize,
) -> Result<(Loops, Vec<JoinHandle<()>>), Error> {
    let mut inboxes = Vec::with_capacity(META_LOOPS);
    let mut receivers = Vec::with_capacity(META_LOOPS);
    for _ in 0..META_LOOPS {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new().map_err(|e| Error::event_loop("eventfd", e))?;
        inboxes.push(Inbox { tx, wake });
        receivers.push(rx);
    }
    let (hydrations_tx, hydrations_rx) = mpsc::channel::<Deferred>();
    let shared = Arc::new(Shared {
        store: Arc::clone(store),
        hydrator: Arc::clone(hydrator),
        hydrators: Mutex::new(Hydrators {
            jobs: Some(hydrations_rx),
            handles: Vec::new(),
        }),
        live_loops: AtomicUsize::new(META_LOOPS),
        stop: Arc::clone(stop),
        inboxes,
        open: AtomicUsize::new(0),
        bound,
        unsent: AtomicUsize::new(0),
    });
    let (removals_tx, removals_rx) = mpsc::channel::<Deferred>();
    let mut handles = Vec::with_capacity(META_LOOPS + META_REMOVERS);
    let started = (|| {
        for (index, rx) in receivers.into_iter().enumerate() {
            let senders = (removals_tx.clone(), hydrations_tx.clone());
            let meta_loop = MetaLoop::new(index, Arc::clone(&shared), rx, senders)?;
            handles.push(spawn(format!("nacre-meta-l{index}"), move || {
                let shared = Arc::clone(&meta_loop.shared);
                meta_loop.run();
                shared.loop_ended();
            })?);
        }
        let removers = Arc::new(Removers {
            jobs: Mutex::new(removals_rx),
            unreachable: Mutex::new(HashMap::new()),
        });
        for r in 0..META_REMOVERS {
            let (shared, removers) = (Arc::clone(&shared), Arc::clone(&removers));
            handles.push(spawn(format!("nacre-meta-remover{r}"), move || {
                remover(&shared, &removers)
            })?);
        }
        Ok(())
    })();
    // The loops hold the remover's and hydrators' senders: they end when the last loop has.
    drop(removals_tx);
    drop(hydrations_tx);
    if let Err(e) = started {
        stop.store(true, Ordering::SeqCst);
        crate::server::join_all(handles);
        return Err(e);
    }
    let loops = Loops {
        shared,
        next: AtomicUsize::new(0),
    };
    Ok((loops, handles))
}

/// What the removers share: their queue, and the targets that could not be reached
/// lately (by id: when).
struct Removers {
    jobs: Mutex<mpsc::Receiver<Deferred>>,
    unreachable: Mutex<HashMap<u32, Instant>>,
}

/// Works the removal logs requests named, then gives their replies back to their loops;
/// ends once every loop has (their senders are gone). A target that could not be reached
/// less than [`REMOVE_RETRY_MS`] ago is not tried again for a request (its log is durable;
/// its next registration or heartbeat works it), so that one target down does not hold up
/// every unlink behind its timeout. While the server stops, replies go without removals.
fn remover(shared: &Shared, removers: &Removers) {
    let retry = Duration::from_millis(REMOVE_RETRY_MS);
    loop {
        let next = removers
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(job) = next else { return };
        for &target_id in &job.answer.removals {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let recently = !job.answer.from_target
                && removers
                    .unreachable
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&target_id)
                    .is_some_and(|at| at.elapsed() < retry);
            if recently {
                continue;
            }
            let reached = remove_logged(&shared.store, target_id);
            let mut unreachable = removers
                .unreachable
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if reached {
                unreachable.remove(&target_id);
            } else {
                unreachable.insert(target_id, Instant::now());
            }
        }
        let reply = LoopMsg::Reply {
            token: job.token,
            header: job.header,
            answer: job.answer,
        };
        // A loop that has gone has closed the connection already.
        let _ = shared.inboxes[job.to_loop].send(reply);
    }
}

impl Shared {
    /// Starts the hydrator threads if they are not yet; how many run.
    fn start_hydrators(self: &Arc<Shared>) -> usize {
        let mut pool = self
            .hydrators
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = pool.jobs.take() {
            let jobs = Arc::new(Mutex::new(rx));
            for h in 0..META_HYDRATORS {
                let (shared, jobs) = (Arc::clone(self), Arc::clone(&jobs));
                match spawn(format!("nacre-meta-hydrator{h}"), move || {
                    hydrate_loop(&shared, &jobs)
                }) {
                    Ok(handle) => pool.handles.push(handle),
                    Err(e) => nacre_transport::log_line!("nacre meta: {e}"),
                }
            }
        }
        pool.handles.len()
    }

    /// A loop ended; the last one joins the hydrators (their queue closed with it).
    fn loop_ended(&self) {
        if self.live_loops.fetch_sub(1, Ordering::SeqCst) == 1 {
            let handles = std::mem::take(
                &mut self
                    .hydrators
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .handles,
            );
            crate::server::join_all(handles);
        }
    }
}

/// Hands a reply to the thread behind `queue` (a hydrator or the remover), which gives it
/// back to its loop when done; the answer back when that thread has gone.
fn defer(queue: &mpsc::Sender<Deferred>, job: Deferred) -> Option<Answer> {
    match queue.send(job) {
        Ok(()) => None,
        Err(mpsc::SendError(job)) => Some(job.answer),
    }
}

/// Runs the hydrations replies wait for, then gives the replies back to their loops; ends
/// once every loop has.
fn hydrate_loop(shared: &Shared, jobs: &Mutex<mpsc::Receiver<Deferred>>) {
    loop {
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else { return };
        let reply = LoopMsg::Reply {
            token: job.token,
            header: job.header,
            answer: job.answer.hydrated(&shared.store, &shared.hydrator),
        };
        // A loop that has gone has closed the connection already.
        let _ = shared.inboxes[job.to_loop].send(reply);
    }
}

struct Conn {
    stream: StreamConn,
    /// Requests of its whose replies wait for the remover.
    awaiting: usize,
    /// When it last brought a request.
    last_request: Instant,
    /// Bytes of its replies given and not yet written.
    unsent: usize,
}

/// One loop's whole state.
struct MetaLoop {
    index: usize,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<LoopMsg>,
    removals: mpsc::Sender<Deferred>,
    hydrations: mpsc::Sender<Deferred>,
    epoll: Epoll,
    slots: Slots<Conn>,
    /// Scratch for flushes: the tokens of replies written, each its body's length.
    sent: Vec<u64>,
    /// Slots whose connection is not read while replies are unsent past a bound.
    held: Vec<usize>,
    errors: ErrorLog,
    last_sweep: Instant,
}

impl MetaLoop {
    fn new(
        index: usize,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<LoopMsg>,
        (removals, hydrations): (mpsc::Sender<Deferred>, mpsc::Sender<Deferred>),
    ) -> Result<MetaLoop, Error> {
        let epoll = Epoll::new().map_err(|e| Error::event_loop("epoll_create1", e))?;
        epoll
            .add(shared.inboxes[index].wake.as_fd(), WAKE_TOKEN, false)
            .map_err(|e| Error::event_loop("epoll_ctl", e))?;
        Ok(MetaLoop {
            index,
            shared,
            rx,
            removals,
            hydrations,
            epoll,
            slots: Slots::new(usize::MAX),
            sent: Vec::new(),
            held: Vec::new(),
            errors: ErrorLog::new(format!("nacre meta: loop {index}")),
            last_sweep: Instant::now(),
        })
    }

    fn run(mut self) {
        let idle = Duration::from_millis(IDLE_POLL_MS);
        let mut stopping_since: Option<Instant> = None;
        let mut ready: Vec<(u64, bool)> = Vec::new();
        loop {
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            self.release_held();
            if self.last_sweep.elapsed() >= idle {
                self.sweep();
            }
            if self.shared.stop.load(Ordering::SeqCst) {
                for slot in self.slots.indices() {
                    if self.slots.get(slot).is_some_and(|c| !holds_work(c)) {
                        self.close(slot, None);
                    }
                }
                if self.slots.open() == 0 {
                    break;
                }
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_millis(STOP_TIMEOUT_MS) {
                    nacre_transport::log_line!(
                        "nacre meta: loop {} stops after {STOP_TIMEOUT_MS} ms with {} connections still busy",
                        self.index,
                        self.slots.open()
                    );
                    break;
                }
            }
            // An error here (EINTR comes back as none) is a round with no events; the
            // loop's own bounds still hold.
            let _ = self
                .epoll
                .wait(idle, |token, readable| ready.push((token, readable)));
            for &(token, readable) in &ready {
                if token == WAKE_TOKEN {
                    self.shared.inboxes[self.index].wake.clear();
                    continue;
                }
                let Some(slot) = self.slots.slot_of(token) else {
                    continue;
                };
                if readable && let Some(conn) = self.slots.get_mut(slot) {
                    conn.stream.readable();
                }
                self.drive(slot);
            }
            ready.clear();
        }
        for slot in self.slots.indices() {
            self.close(slot, None);
        }
    }

    fn handle(&mut self, msg: LoopMsg) {
        match msg {
            LoopMsg::Connection(stream) => self.adopt(stream),
            LoopMsg::Reply {
                token,
                header,
                answer,
            } => {
                let Some(slot) = self.slots.slot_of(token) else {
                    return;
                };
                let Some(conn) = self.slots.get_mut(slot) else {
                    return;
                };
                conn.awaiting -= 1;
                if self.reply(slot, &header, answer) {
                    self.drive(slot);
                }
            }
        }
    }

    /// Takes a new connection in, making room past the bound by closing this loop's oldest
    /// idle connection, or refusing the new one when none is idle.
    fn adopt(&mut self, stream: StreamConn) {
        if self.shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match self.slots.admit(
            (&self.shared.open, self.shared.bound),
            &stream.peer(),
            &mut self.errors,
            |c| !holds_work(c) && !c.stream.mid_message(),
            |c| c.last_request,
        ) {
            Admit::Claimed => {}
            Admit::Evict(slot) => self.close(slot, None),
            Admit::Refused => return,
        }
        let slot = self.slots.insert(Conn {
            stream,
            awaiting: 0,
            last_request: Instant::now(),
            unsent: 0,
        });
        let token = self.slots.token(slot);
        let watched = self
            .slots
            .get(slot)
            .map(|c| self.epoll.add(c.stream.fd(), token, true));
        if let Some(Err(e)) = watched {
            if let Some(conn) = self.slots.remove(slot) {
                self.errors.note(
                    "watch",
                    &format_args!("{}: cannot watch the connection: {e}", conn.stream.peer()),
                );
            }
            self.shared.open.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        // Bytes may have arrived before the connection was watched.
        self.drive(slot);
    }

    /// Moves a connection on as far as its socket allows: replies out, then the next
    /// requests, each answered. While the server stops it reads nothing new and closes
    /// once it holds no work.
    fn drive(&mut self, slot: usize) {
        loop {
            let Some(blocked) = self.flush(slot) else {
                return;
            };
            let Some(conn) = self.slots.get_mut(slot) else {
                return;
            };
            if self.shared.stop.load(Ordering::SeqCst) {
                if !holds_work(conn) {
                    self.close(slot, None);
                }
                return;
            }
            if !self.may_read(slot) {
                return;
            }
            let Some(conn) = self.slots.get_mut(slot) else {
                return;
            };
            match conn.stream.recv_request() {
                Ok(Incoming::Request(header)) => {
                    conn.last_request = Instant::now();
                    self.request(slot, header);
                }
                Ok(Incoming::Pending) => {
                    // Once more round only for replies made ready and a socket not full.
                    if !conn.stream.wants_write() || blocked {
                        return;
                    }
                }
                Ok(Incoming::Closed) => return self.close(slot, None),
                Err(e) => return self.close(slot, Some(e)),
            }
        }
    }

    /// Writes out `slot`'s ready replies: `Some(true)` when the socket is full, `None` when
    /// the connection failed (and is closed).
    fn flush(&mut self, slot: usize) -> Option<bool> {
        let conn = self.slots.get_mut(slot)?;
        if !conn.stream.wants_write() {
            return Some(false);
        }
        let flushed = conn.stream.flush(&mut self.sent);
        let written: usize = self.sent.drain(..).map(|len| len as usize).sum();
        conn.unsent -= written;
        self.shared.unsent.fetch_sub(written, Ordering::SeqCst);
        match flushed {
            Ok(progress) => Some(progress == Progress::Pending),
            Err(e) => {
                self.close(slot, Some(e));
                None
            }
        }
    }

    /// Answers a request: here, or through the remover when removal logs are to be worked
    /// first.
    fn request(&mut self, slot: usize, header: Header) {
        let token = self.slots.token(slot);
        let Some(conn) = self.slots.get_mut(slot) else {
            return;
        };
        let store = &self.shared.store;
        let answer = answer(store, &header, conn.stream.body());
        let deferred = |answer| Deferred {
            to_loop: self.index,
            token,
            header,
            answer,
        };
        let mut answer = if answer.hydrate.is_some() && self.shared.start_hydrators() > 0 {
            match defer(&self.hydrations, deferred(answer)) {
                None => {
                    conn.awaiting += 1;
                    return;
                }
                // The hydrators have gone (the server stops): answer here.
                Some(answer) => answer.hydrated(store, &self.shared.hydrator),
            }
        } else {
            // No hydrator thread could start: the loop hydrates itself.
            answer.hydrated(store, &self.shared.hydrator)
        };
        // Most removals (every heartbeat) find nothing logged: no need to wait.
        answer.removals.retain(|&t| {
            store
                .pending_removals(t, 1)
                .map_or(true, |logged| !logged.is_empty())
        });
        let answer = if answer.removals.is_empty() {
            answer
        } else {
            match defer(&self.removals, deferred(answer)) {
                None => {
                    conn.awaiting += 1;
                    return;
                }
                // The remover has gone: answer without the removals (they stay logged).
                Some(answer) => answer,
            }
        };
        self.reply(slot, &header, answer);
    }

    /// Gives `slot`'s connection its reply to `header`, counted unsent until written;
    /// false when the connection failed (and is closed).
    fn reply(&mut self, slot: usize, header: &Header, answer: Answer) -> bool {
        let Some(conn) = self.slots.get_mut(slot) else {
            return false;
        };
        let len = answer.body.len();
        match conn
            .stream
            .reply(header, answer.status, answer.body, len as u64)
        {
            Ok(()) => {
                conn.unsent += len;
                self.shared.unsent.fetch_add(len, Ordering::SeqCst);
                true
            }
            Err(e) => {
                self.close(slot, Some(e));
                false
            }
        }
    }

    /// Whether `slot`'s connection may bring another request: not while its own replies,
    /// or all connections', are unsent past their bounds (it is then held, and driven
    /// again when replies have gone).
    fn may_read(&mut self, slot: usize) -> bool {
        let Some(conn) = self.slots.get(slot) else {
            return false;
        };
        let over = conn.unsent >= MAX_META_UNSENT_BYTES_PER_CONNECTION
            || self.shared.unsent.load(Ordering::SeqCst) >= MAX_META_UNSENT_BYTES;
        if over && !self.held.contains(&slot) {
            self.held.push(slot);
        }
        !over
    }

    /// Drives the held connections again once replies have gone below the bounds.
    fn release_held(&mut self) {
        if self.held.is_empty()
            || self.shared.unsent.load(Ordering::SeqCst) >= MAX_META_UNSENT_BYTES
        {
            return;
        }
        for slot in std::mem::take(&mut self.held) {
            self.drive(slot);
        }
    }

    /// Closes connections whose request has been coming in for the request timeout, however
    /// slowly (a slow-loris), and those whose replies have not moved for it (a client that
    /// does not read).
    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let bound = Duration::from_millis(REQUEST_TIMEOUT_MS);
        for slot in self.slots.indices() {
            let Some(conn) = self.slots.get(slot) else {
                continue;
            };
            let stream = &conn.stream;
            let receiving_too_long = stream
                .receiving_since()
                .is_some_and(|since| now.duration_since(since) >= bound);
            let replies_stuck =
                stream.wants_write() && now.duration_since(stream.last_progress()) >= bound;
            if receiving_too_long || replies_stuck {
                let peer = stream.peer();
                let what = if receiving_too_long {
                    "sent part of a request"
                } else {
                    "left its replies unread"
                };
                self.errors.note(
                    "stalled",
                    &format_args!("{peer} {what} for {REQUEST_TIMEOUT_MS} ms; connection closed"),
                );
                self.close(slot, None);
            }
        }
    }

    fn close(&mut self, slot: usize, error: Option<TransportError>) {
        let Some(conn) = self.slots.remove(slot) else {
            return;
        };
        if let Some(e) = error {
            self.errors.note(
                "connection",
                &format_args!("{}: {e}; connection closed", conn.stream.peer()),
            );
        }
        self.epoll.remove(conn.stream.fd());
        self.shared.unsent.fetch_sub(conn.unsent, Ordering::SeqCst);
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a connection holds work: replies to write, or requests waiting for the remover.
fn holds_work(conn: &Conn) -> bool {
    conn.awaiting > 0 || conn.stream.wants_write()
}
