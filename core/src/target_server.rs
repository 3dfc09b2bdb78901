//! The target server: serves one target's objects over the transport.
//!
//! Threads (decision 0005):
//! - **workers**, one per core: each owns an [`ObjectStore`] (its own io_uring, registered
//!   file table and the memory pool registered with it) and a share of the objects, chosen by
//!   object id. Every operation on an object runs on its owner, so writes to one object are
//!   ordered without a lock (decision 0002), and nothing on the data path takes a lock.
//! - **connection threads**, one per client connection, because the transport's sockets are
//!   blocking (decision 0003). A connection thread receives a request, lands a write's payload
//!   straight in chunks of the registered pool, hands each worker the extents of its objects
//!   over a channel, and sends a read's reply payload straight from the chunks the workers
//!   read into: no copy in user space.
//! - an acceptor, and a heartbeat that keeps the metadata service's view of free space fresh.

use std::io::{IoSlice, IoSliceMut};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nacre_io::AlignedBuf;
use nacre_io::{Completion, IoError, ObjectStore, Op, StoreConfig, Target};
use nacre_transport::wire::{Extent, Opcode, decode_extents};
use nacre_transport::{Endpoint, Listener, Request, ServerConnection, TransportError};

use crate::codec::Writer;
use crate::error::Error;
use crate::limits::{
    ACCEPT_POLL_MS, HEARTBEAT_MS, IDLE_POLL_MS, MAX_IO_PIECE_BYTES, REGISTER_TIMEOUT_MS,
    WORKER_REPLY_TIMEOUT_MS, WORKER_WAIT_US,
};
use crate::mem::{MemPool, PoolBuf, PoolConfig};
use crate::meta::link::{MetaLink, link_options};
use crate::meta::proto::MetaRequest;
use crate::meta::types::{Cred, TargetInfo};
use crate::server::{Threads, accept_loop, join_all, request_loop, spawn};

/// How a target server is set up.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Where to listen (`tcp://`, `rdma://` or `auto://host:port`; port 0 picks one).
    pub listen: String,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// The registered memory requests' payloads go through.
    pub pool: PoolConfig,
    /// Each worker's object store.
    pub store: StoreConfig,
    /// The metadata service to register with (and report free space to), if any.
    pub meta: Option<String>,
    /// The pools the target belongs to.
    pub pools: Vec<String>,
    /// The endpoint to register (default: the one it listens on, with the port it got).
    pub advertise: Option<String>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            listen: "auto://127.0.0.1:0".into(),
            workers: 0,
            pool: PoolConfig {
                chunk_bytes: 1024 * 1024,
                chunks: 256,
                huge_pages: true,
                lock: true,
            },
            store: StoreConfig::default(),
            meta: None,
            pools: Vec::new(),
            advertise: None,
        }
    }
}

/// A running target server; stops when dropped.
pub struct TargetServer {
    endpoint: Endpoint,
    target_id: u32,
    target: Target,
    threads: Threads,
}

impl std::fmt::Debug for TargetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetServer")
            .field("endpoint", &self.endpoint)
            .field("target_id", &self.target_id)
            .finish()
    }
}

/// One operation of a worker's job.
#[derive(Debug, Clone, Copy)]
enum PieceOp {
    Read { buf: *mut u8, len: usize },
    Write { buf: *const u8, len: usize },
    Sync,
    Truncate,
    Punch { len: u64 },
    Stat,
    Remove,
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    op: PieceOp,
    object_id: u64,
    /// Offset (or, for truncate, the new size).
    offset_bytes: u64,
}

/// The pieces of one request that belong to one worker, and where to say they are done.
struct Job {
    pieces: Vec<Piece>,
    /// Which of the request's jobs this is.
    index: usize,
    done: mpsc::Sender<(usize, Vec<Result<u64, IoError>>)>,
}

// SAFETY: the raw pointers in a job's pieces name chunks the connection thread owns and does
// not touch until the worker has sent the job's results back (or forever, if it never does:
// see `Staging::abandon`).
unsafe impl Send for Job {}

impl TargetServer {
    /// Opens the target in `dir`, starts its workers and listens on `config.listen`.
    pub fn start(dir: &Path, config: &TargetConfig) -> Result<TargetServer, Error> {
        let target = Target::open(dir)?;
        let target_id = target.target_id();
        let endpoint = Endpoint::parse(&config.listen)?;
        let listener = Listener::bind(&endpoint)?;
        let endpoint = listener.endpoint().clone();
        let pool = Arc::new(MemPool::new(config.pool)?);
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut senders = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        for w in 0..workers {
            let (tx, rx) = mpsc::channel::<Job>();
            senders.push(tx);
            let target = target.clone();
            let pool = Arc::clone(&pool);
            let store_config = config.store;
            let ready = ready_tx.clone();
            let stop = Arc::clone(&stop);
            threads.push(spawn(format!("nacre-t{target_id}-w{w}"), move || {
                worker(target, pool, store_config, rx, ready, stop)
            })?);
        }
        drop(ready_tx);
        // Every worker reports whether its store opened; the first failure is the answer.
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.store(true, Ordering::SeqCst);
                    drop(senders);
                    join_all(threads);
                    return Err(e);
                }
                Err(_) => {
                    return Err(Error::Server {
                        what: format!("target {target_id}"),
                        reason: "a worker thread ended while starting".into(),
                    });
                }
            }
        }
        let shared = Arc::new(Shared {
            target_id,
            target: target.clone(),
            workers: senders,
            pool,
            stop: Arc::clone(&stop),
        });
        let accept_stop = Arc::clone(&stop);
        // Serving before registering: the metadata service may call in while it answers the
        // registration (to remove objects of files removed while this target was down).
        threads.push(spawn(format!("nacre-t{target_id}"), move || {
            let name = format!("nacre-t{target_id}");
            accept_loop(listener, accept_stop, name, move |conn| {
                serve_connection(conn, Arc::clone(&shared))
            })
        })?);
        if let Some(meta) = &config.meta {
            let info = TargetInfo {
                target_id,
                uuid: target.stamp().uuid_string(),
                endpoint: config
                    .advertise
                    .clone()
                    .unwrap_or_else(|| endpoint.to_string()),
                pools: config.pools.clone(),
                capacity_bytes: 0,
                free_bytes: 0,
            };
            let link = register(meta, info, &target).inspect_err(|_| {
                stop.store(true, Ordering::SeqCst);
            })?;
            let (target, stop) = (target.clone(), Arc::clone(&stop));
            threads.push(spawn(format!("nacre-t{target_id}-beat"), move || {
                heartbeat(&link, &target, &stop)
            })?);
        }
        Ok(TargetServer {
            endpoint,
            target_id,
            target,
            threads: Threads {
                stop,
                handles: threads,
            },
        })
    }

    /// Where clients reach the server.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The target's id.
    pub fn target_id(&self) -> u32 {
        self.target_id
    }

    /// The target it serves.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// A flag that stops the server when set (for signal handlers and tests).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.threads.stop)
    }

    /// Stops accepting, lets every connection finish its current request, and waits for
    /// the threads (each notices the stop within [`IDLE_POLL_MS`]).
    pub fn stop(mut self) {
        self.threads.shutdown();
    }
}

/// Registers the target with the metadata service, trying until [`REGISTER_TIMEOUT_MS`]
/// passes (the service may be starting too).
fn register(meta: &str, mut info: TargetInfo, target: &Target) -> Result<MetaLink, Error> {
    let timeout = Duration::from_millis(REGISTER_TIMEOUT_MS);
    let link = MetaLink::new(meta, link_options(timeout), 1)?;
    let deadline = Instant::now() + timeout;
    let cap = target.capacity()?;
    info.capacity_bytes = cap.total_bytes;
    info.free_bytes = cap.available_bytes;
    let request = MetaRequest::RegisterTarget { info };
    loop {
        match link.call(&Cred::root(), &request) {
            Ok(_) => return Ok(link),
            Err(Error::MetaUnreachable { .. }) if Instant::now() < deadline => {
                // Nothing to wait on but time: the service is not listening yet.
                std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reports free space every [`HEARTBEAT_MS`] until the server stops.
fn heartbeat(link: &MetaLink, target: &Target, stop: &AtomicBool) {
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(IDLE_POLL_MS));
        if last.elapsed() < Duration::from_millis(HEARTBEAT_MS) {
            continue;
        }
        last = Instant::now();
        let Ok(cap) = target.capacity() else { continue };
        let request = MetaRequest::Usage {
            target_id: target.target_id(),
            capacity_bytes: cap.total_bytes,
            free_bytes: cap.available_bytes,
        };
        if let Err(e) = link.call(&Cred::root(), &request) {
            nacre_transport::log_line!("nacre target {}: usage report: {e}", target.target_id());
        }
    }
}

/// What the acceptor and connection threads share.
struct Shared {
    target_id: u32,
    target: Target,
    workers: Vec<mpsc::Sender<Job>>,
    pool: Arc<MemPool>,
    stop: Arc<AtomicBool>,
}

fn serve_connection(mut conn: ServerConnection, shared: Arc<Shared>) {
    for (ptr, len) in shared.pool.registrations() {
        // SAFETY: `shared` holds the pool, so the slab stays mapped until `shared` is
        // dropped, which happens after `conn` (explicit drops at the end of this function).
        if let Err(e) = unsafe { conn.register_memory(ptr, len) } {
            nacre_transport::log_line!(
                "nacre target {}: {}: cannot register the pool ({e}); payloads will be staged",
                shared.target_id,
                conn.peer()
            );
            break;
        }
    }
    let mut handler = Handler {
        shared: &shared,
        extents: Vec::new(),
        reply_body: Vec::new(),
    };
    let name = format!("nacre target {}", shared.target_id);
    request_loop(&mut conn, &shared.stop, &name, |conn, request, body| {
        handler.handle(conn, request, body)
    });
    // The connection (and its registrations of the pool) goes before the pool's last holder.
    drop(conn);
    drop(shared);
}

struct Handler<'a> {
    shared: &'a Shared,
    extents: Vec<Extent>,
    reply_body: Vec<u8>,
}

/// The error reply of a failed request: its errno and a message naming what failed.
struct Failure {
    errno: i32,
    message: String,
}

impl From<IoError> for Failure {
    fn from(e: IoError) -> Self {
        Failure {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

impl Handler<'_> {
    fn handle(
        &mut self,
        conn: &mut ServerConnection,
        request: &Request,
        body: &[u8],
    ) -> Result<(), TransportError> {
        let opcode = request.header.opcode;
        let outcome = match opcode {
            Opcode::Ping => Ok(Vec::new()),
            Opcode::Statfs => self.statfs(),
            Opcode::Read => return self.read(conn, request, body),
            Opcode::Write => self.write(conn, request, body),
            Opcode::Sync
            | Opcode::Truncate
            | Opcode::Punch
            | Opcode::Stat
            | Opcode::Remove
            | Opcode::Create => self.plain(opcode, body),
            Opcode::Meta | Opcode::Error => Err(Failure {
                errno: libc::EOPNOTSUPP,
                message: format!(
                    "target {} does not serve {opcode:?} requests",
                    self.shared.target_id
                ),
            }),
        };
        match outcome {
            Ok(pieces_body) => conn.reply(request, 0, &pieces_body, &[]),
            Err(f) => conn.reply(request, f.errno, f.message.as_bytes(), &[]),
        }
    }

    fn decode(&mut self, body: &[u8]) -> Result<u64, Failure> {
        decode_extents(body, &mut self.extents).map_err(|e| Failure {
            errno: libc::EINVAL,
            message: format!("bad extent list: {e}"),
        })
    }

    fn statfs(&mut self) -> Result<Vec<u8>, Failure> {
        let cap = self.shared.target.capacity()?;
        let mut out = Vec::new();
        Writer::new(&mut out)
            .u32(self.shared.target_id)
            .str(&self.shared.target.stamp().uuid_string())
            .u64(cap.total_bytes)
            .u64(cap.available_bytes)
            .u64(cap.used_bytes);
        Ok(out)
    }

    /// Sync, truncate, punch, stat, remove, create: one result per extent, no payload. Stat
    /// answers each object's size (0 for one that does not exist).
    fn plain(&mut self, opcode: Opcode, body: &[u8]) -> Result<Vec<u8>, Failure> {
        self.decode(body)?;
        let pieces = self.extents.iter().map(|e| Piece {
            op: match opcode {
                Opcode::Sync => PieceOp::Sync,
                Opcode::Truncate => PieceOp::Truncate,
                Opcode::Punch => PieceOp::Punch { len: e.len },
                Opcode::Stat => PieceOp::Stat,
                Opcode::Remove => PieceOp::Remove,
                // Create makes the object exist: a zero-length truncate that never shrinks
                // would be wrong, so it is a sync, which creates a missing object first.
                _ => PieceOp::Sync,
            },
            object_id: e.object_id,
            offset_bytes: e.offset_bytes,
        });
        let pieces: Vec<Piece> = pieces.collect();
        let results = self.run(&pieces, None)?;
        let mut out = Vec::with_capacity(results.len() * 8);
        for r in results {
            out.extend_from_slice(&r?.to_le_bytes());
        }
        Ok(out)
    }

    fn write(
        &mut self,
        conn: &mut ServerConnection,
        request: &Request,
        body: &[u8],
    ) -> Result<Vec<u8>, Failure> {
        let total = self.decode(body)?;
        if total != request.header.payload_len {
            return Err(Failure {
                errno: libc::EINVAL,
                message: format!(
                    "write extents add up to {total} bytes; the payload is {}",
                    request.header.payload_len
                ),
            });
        }
        let mut staging = Staging::new(&self.shared.pool, total as usize);
        {
            let mut dests: Vec<IoSliceMut<'_>> = staging.slices_mut();
            if let Err(e) = conn.recv_payload(&mut dests) {
                return Err(Failure {
                    errno: e.errno(),
                    message: e.to_string(),
                });
            }
        }
        let pieces = staging.pieces(&self.extents, |buf, len| PieceOp::Write { buf, len });
        let results = self.run(&pieces, Some(&mut staging))?;
        for r in results {
            r?;
        }
        Ok(Vec::new())
    }

    /// Reads every extent into pool chunks and replies with them as the payload: each
    /// extent's full length, zeros past the object's end, and in the body each extent's
    /// bytes that exist (so the client can tell a short read from a hole).
    fn read(
        &mut self,
        conn: &mut ServerConnection,
        request: &Request,
        body: &[u8],
    ) -> Result<(), TransportError> {
        let total = match self.decode(body) {
            Ok(t) => t,
            Err(f) => return conn.reply(request, f.errno, f.message.as_bytes(), &[]),
        };
        let mut staging = Staging::new(&self.shared.pool, total as usize);
        let pieces = staging.pieces(&self.extents, |buf, len| PieceOp::Read { buf, len });
        let results = match self.run(&pieces, Some(&mut staging)) {
            Ok(r) => r,
            Err(f) => return conn.reply(request, f.errno, f.message.as_bytes(), &[]),
        };
        // Per extent: bytes present. Pieces are in extent order.
        self.reply_body.clear();
        let mut piece_at = 0;
        for extent in &self.extents {
            let mut left = extent.len;
            let mut present = 0u64;
            while left > 0 {
                let piece = pieces[piece_at];
                let PieceOp::Read { buf, len } = piece.op else {
                    unreachable!("read pieces only")
                };
                let got = match &results[piece_at] {
                    Ok(n) => *n as usize,
                    Err(e) => {
                        let message = e.to_string();
                        return conn.reply(request, e.errno(), message.as_bytes(), &[]);
                    }
                };
                if got < len {
                    // SAFETY: the worker is done with the chunk; `buf + len` is inside it.
                    unsafe { std::ptr::write_bytes(buf.add(got), 0, len - got) };
                }
                present += got as u64;
                left -= len as u64;
                piece_at += 1;
            }
            self.reply_body.extend_from_slice(&present.to_le_bytes());
        }
        let slices = staging.slices();
        conn.reply(request, 0, &self.reply_body, &slices)
    }

    /// Hands each worker its pieces and waits for all results, in piece order.
    fn run(
        &mut self,
        pieces: &[Piece],
        staging: Option<&mut Staging>,
    ) -> Result<Vec<Result<u64, IoError>>, Failure> {
        let workers = self.shared.workers.len();
        let mut per_worker: Vec<Vec<usize>> = vec![Vec::new(); workers];
        for (i, p) in pieces.iter().enumerate() {
            per_worker[owner(p.object_id, workers)].push(i);
        }
        let (tx, rx) = mpsc::channel();
        let mut sent = 0;
        for (w, indexes) in per_worker.iter().enumerate() {
            if indexes.is_empty() {
                continue;
            }
            let job = Job {
                pieces: indexes.iter().map(|&i| pieces[i]).collect(),
                index: w,
                done: tx.clone(),
            };
            if self.shared.workers[w].send(job).is_err() {
                // A worker is gone only when the server stops; the pieces already sent
                // still finish, and their results are awaited below.
                break;
            }
            sent += 1;
        }
        let mut results: Vec<Option<Result<u64, IoError>>> =
            (0..pieces.len()).map(|_| None).collect();
        let timeout = Duration::from_millis(WORKER_REPLY_TIMEOUT_MS);
        for _ in 0..sent {
            match rx.recv_timeout(timeout) {
                Ok((w, worker_results)) => {
                    for (&i, r) in per_worker[w].iter().zip(worker_results) {
                        results[i] = Some(r);
                    }
                }
                Err(_) => {
                    if let Some(s) = staging {
                        s.abandon();
                    }
                    return Err(Failure {
                        errno: libc::ETIMEDOUT,
                        message: format!(
                            "target {}: storage did not answer within {WORKER_REPLY_TIMEOUT_MS} ms",
                            self.shared.target_id
                        ),
                    });
                }
            }
        }
        if results.iter().any(Option::is_none) {
            return Err(Failure {
                errno: libc::ESHUTDOWN,
                message: format!("target {} is stopping", self.shared.target_id),
            });
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// The worker that owns an object.
fn owner(object_id: u64, workers: usize) -> usize {
    // Stripes of one file differ in the low bits of the id; mix so that files spread too.
    (object_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % workers
}

/// The memory a request's payload lives in: chunks of the registered pool, or, when the
/// pool is exhausted, an aligned allocation of its own (still O_DIRECT-able, not registered).
struct Staging {
    chunks: Vec<PoolBuf>,
    heap: Option<AlignedBuf>,
    chunk_bytes: usize,
    len: usize,
}

impl Staging {
    fn new(pool: &MemPool, len: usize) -> Staging {
        let chunk_bytes = pool.chunk_bytes().min(MAX_IO_PIECE_BYTES);
        let need = len.div_ceil(pool.chunk_bytes());
        let mut chunks = Vec::with_capacity(need);
        while chunks.len() < need {
            match pool.get() {
                Some(c) => chunks.push(c),
                None => break,
            }
        }
        if chunks.len() < need {
            chunks.clear();
            return Staging {
                chunks,
                heap: Some(AlignedBuf::zeroed(len.max(1))),
                chunk_bytes,
                len,
            };
        }
        Staging {
            chunks,
            heap: None,
            chunk_bytes,
            len,
        }
    }

    /// `(pointer, length)` of each contiguous piece of memory, in payload order.
    fn regions(&mut self) -> Vec<(*mut u8, usize)> {
        if let Some(h) = &mut self.heap {
            return vec![(h.as_mut_ptr(), self.len)];
        }
        let mut left = self.len;
        let mut out = Vec::with_capacity(self.chunks.len());
        for c in &mut self.chunks {
            let n = left.min(c.len());
            out.push((c.as_mut_ptr(), n));
            left -= n;
        }
        out
    }

    fn slices_mut(&mut self) -> Vec<IoSliceMut<'_>> {
        self.regions()
            .into_iter()
            // SAFETY: each region is memory this staging owns exclusively, valid for its
            // length while `self` is borrowed.
            .map(|(p, n)| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(p, n) }))
            .collect()
    }

    fn slices(&mut self) -> Vec<IoSlice<'_>> {
        self.regions()
            .into_iter()
            // SAFETY: as in slices_mut, shared.
            .map(|(p, n)| IoSlice::new(unsafe { std::slice::from_raw_parts(p, n) }))
            .collect()
    }

    /// Lays the extents out over the memory in order, cutting them where a chunk (or
    /// [`MAX_IO_PIECE_BYTES`]) ends.
    fn pieces(&mut self, extents: &[Extent], op: impl Fn(*mut u8, usize) -> PieceOp) -> Vec<Piece> {
        let regions = self.regions();
        let mut out = Vec::with_capacity(extents.len());
        let (mut region, mut in_region) = (0usize, 0usize);
        for e in extents {
            let mut done = 0u64;
            while done < e.len {
                while in_region == regions[region].1 {
                    region += 1;
                    in_region = 0;
                }
                let (base, region_len) = regions[region];
                let n = (e.len - done)
                    .min((region_len - in_region) as u64)
                    .min(self.chunk_bytes as u64) as usize;
                // SAFETY: in_region + n <= region_len: inside the region.
                let ptr = unsafe { base.add(in_region) };
                out.push(Piece {
                    op: op(ptr, n),
                    object_id: e.object_id,
                    offset_bytes: e.offset_bytes + done,
                });
                done += n as u64;
                in_region += n;
            }
        }
        out
    }

    /// Gives up the memory without freeing it: a worker that did not answer in time may
    /// still use it.
    fn abandon(&mut self) {
        for c in self.chunks.drain(..) {
            std::mem::forget(c);
        }
        if let Some(h) = self.heap.take() {
            std::mem::forget(h);
        }
    }
}

/// A worker: owns a store and its objects, runs the pieces jobs hand it.
fn worker(
    target: Target,
    pool: Arc<MemPool>,
    store_config: StoreConfig,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(), Error>>,
    stop: Arc<AtomicBool>,
) {
    let mut store = match ObjectStore::new(&target, store_config) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    for (ptr, len) in pool.registrations() {
        // SAFETY: the pool's slab outlives the store: `pool` is dropped after `store` (locals
        // drop in reverse order of declaration).
        if let Err(e) = unsafe { store.register_memory(ptr, len) } {
            let _ = ready.send(Err(e.into()));
            return;
        }
    }
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut w = Worker {
        target,
        store,
        running: Vec::new(),
        free_slots: Vec::new(),
        queue: std::collections::VecDeque::new(),
        known: std::collections::HashSet::new(),
        completions: Vec::new(),
    };
    let idle = Duration::from_millis(IDLE_POLL_MS);
    loop {
        if w.store.outstanding() == 0 && w.queue.is_empty() {
            match jobs.recv_timeout(idle) {
                Ok(job) => w.accept(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            w.accept(job);
        }
        if let Err(e) = w.step() {
            nacre_transport::log_line!(
                "nacre target {}: worker stopped: {e}",
                w.target.target_id()
            );
            break;
        }
    }
    drop(w);
    drop(pool);
}

struct RunningJob {
    job: Job,
    results: Vec<Option<Result<u64, IoError>>>,
    left: usize,
}

struct Worker {
    target: Target,
    store: ObjectStore,
    running: Vec<Option<RunningJob>>,
    free_slots: Vec<usize>,
    /// (job slot, piece index) not yet started.
    queue: std::collections::VecDeque<(usize, usize)>,
    /// Objects known to exist (a cache: cleared when it grows past its bound).
    known: std::collections::HashSet<u64>,
    completions: Vec<Completion>,
}

/// Bits of a store tag that hold the piece index.
const PIECE_BITS: u32 = 24;

impl Worker {
    fn accept(&mut self, job: Job) {
        let n = job.pieces.len();
        let slot = self.free_slots.pop().unwrap_or_else(|| {
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

    fn step(&mut self) -> Result<(), IoError> {
        let max_ops = self.store.config().max_ops as usize;
        while let Some(&(slot, i)) = self.queue.front() {
            if self.store.outstanding() >= max_ops {
                break;
            }
            self.queue.pop_front();
            let Some(piece) = self.running[slot].as_ref().map(|r| r.job.pieces[i]) else {
                continue;
            };
            if let Some(result) = self.start(piece, ((slot as u64) << PIECE_BITS) | i as u64) {
                self.record(slot, i, result);
            }
        }
        if self.store.outstanding() > 0 {
            let mut completions = std::mem::take(&mut self.completions);
            self.store
                .wait(1, Duration::from_micros(WORKER_WAIT_US), &mut completions)?;
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
        Ok(())
    }

    /// Starts a piece: submits it to the store, or does it now and returns its result.
    fn start(&mut self, piece: Piece, tag: u64) -> Option<Result<u64, IoError>> {
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
                return Some(match self.target.stat(object_id) {
                    Ok(s) => Ok(s.size_bytes),
                    Err(e) if e.errno() == libc::ENOENT => Ok(0),
                    Err(e) => Err(e),
                });
            }
            PieceOp::Remove => {
                self.known.remove(&object_id);
                let closed = self.store.close_object(object_id);
                return Some(closed.and_then(|()| match self.target.remove(object_id) {
                    Err(e) if e.errno() == libc::ENOENT => Ok(0),
                    other => other.map(|()| 0),
                }));
            }
        };
        // SAFETY: a read's or write's memory belongs to the job's connection thread, which
        // leaves it alone until this job's results are sent (see `Job`).
        match unsafe { self.store.submit(op, tag) } {
            Ok(()) => None,
            Err(e) => Some(Err(e)),
        }
    }

    fn exists(&mut self, object_id: u64) -> bool {
        self.known.contains(&object_id) || self.target.stat(object_id).is_ok()
    }

    fn ensure_exists(&mut self, object_id: u64) -> Result<(), IoError> {
        if self.known.contains(&object_id) {
            return Ok(());
        }
        match self.target.create(object_id) {
            Ok(()) | Err(IoError::ObjectExists { .. }) => {}
            Err(e) => return Err(e),
        }
        if self.known.len() >= crate::limits::MAX_KNOWN_OBJECTS {
            self.known.clear();
        }
        self.known.insert(object_id);
        Ok(())
    }

    fn record(&mut self, slot: usize, i: usize, result: Result<u64, IoError>) {
        let Some(r) = self.running[slot].as_mut() else {
            return;
        };
        r.results[i] = Some(result);
        r.left -= 1;
        if r.left == 0 {
            self.finish(slot);
        }
    }

    fn finish(&mut self, slot: usize) {
        if let Some(r) = self.running[slot].take() {
            let results = r.results.into_iter().flatten().collect();
            // The connection thread may have given up waiting; nothing else to do then.
            let _ = r.job.done.send((r.job.index, results));
            self.free_slots.push(slot);
        }
    }
}
