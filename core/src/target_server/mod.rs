//! The target server: serves the objects of one target, or of several targets of a host,
//! over the transport.
//!
//! Threads (decisions 0005, 0008, 0013 and 0015):
//! - **workers**, one per core (`worker`), shared by every target of the server: each owns
//!   an [`ObjectStore`](nacre_io::ObjectStore) per target (its own io_uring, registered
//!   file table and the memory pool registered with it), the connections handed to it (TCP,
//!   and RDMA: a `wire::Wire` either way), and the objects whose target and id hash to it.
//!   One epoll loop per worker drives its sockets, its RDMA completion channels and its
//!   rings; nothing on the data path takes a lock. The memory pool is registered once with
//!   each RDMA device clients come through ([`Listener::register_memory`]), per target's
//!   listener, not per connection.
//! - **connection threads** only for RDMA connections the loops cannot drive (`threaded`):
//!   those whose device could not get the pool registered, whose bulk is staged.
//! - an acceptor per target (each target has its own listener), which hands each
//!   connection to a worker in turn, and a heartbeat per target that keeps the metadata
//!   service's view of free space fresh.
//!
//! Any connection carries requests for any target of the server: each request names its
//! target (decision 0016), and [`Opcode::Targets`](nacre_transport::wire::Opcode::Targets)
//! tells a client which targets a server serves, so that it opens one set of connections
//! per server instead of one per target.

mod request;
mod threaded;
mod wire;
mod worker;

pub use worker::MAX_CONNECTIONS_PER_WORKER;

use wire::Wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nacre_io::{StoreConfig, Target};
use nacre_transport::Endpoint;
use nacre_transport::server::{Listener, ServerConnection};

use crate::codec::Reader;
use crate::error::Error;
use crate::limits::{
    ACCEPT_POLL_MS, HEARTBEAT_MS, IDLE_POLL_MS, MAX_TARGET_CONNECTIONS, MAX_TARGETS_PER_SERVER,
    MIN_CONNECTIONS, REGISTER_TIMEOUT_MS, STAGED_BYTES_BEYOND_POOL, TARGET_RESERVED_FDS,
};
use crate::mem::{MemPool, PoolConfig};
use crate::meta::link::{MetaLink, link_options};
use crate::meta::proto::MetaRequest;
use crate::meta::types::{Cred, MAX_TARGET_UUID_BYTES, TargetInfo};
use crate::server::{Threads, accept_loop, join_all, raise_open_file_limit, spawn};
use request::Context;
use worker::{Inbox, Msg};

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

/// One target of a server started with [`TargetServer::start_shared`].
#[derive(Debug, Clone)]
pub struct TargetSpec {
    /// Its directory (formatted with `nacre mkfs`).
    pub dir: PathBuf,
    /// Where it listens (`tcp://`, `rdma://` or `auto://host:port`; port 0 picks one).
    pub listen: String,
    /// The endpoint it registers (default: the one it listens on, with the port it got).
    pub advertise: Option<String>,
}

/// A target a server serves, and where clients reach it.
#[derive(Debug, Clone)]
pub struct ServedTarget {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// The target itself.
    pub target: Target,
}

impl ServedTarget {
    /// Its id.
    pub fn target_id(&self) -> u32 {
        self.target.target_id()
    }
}

/// A running target server; stops when dropped. It serves one target, or several that
/// share its workers (decision 0015).
pub struct TargetServer {
    served: Vec<ServedTarget>,
    threads: Threads,
    accepted: Arc<Accepted>,
}

/// How the connections a target server accepted are served, counted since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCounts {
    /// Driven by the workers' event loops: TCP, and RDMA with the pool registered.
    pub on_loops: u64,
    /// Served by a thread of their own: RDMA connections the loops cannot drive (the pool
    /// could not be registered with their device, so their bulk is staged).
    pub on_threads: u64,
    /// Closed by the event loops on an error rather than by the client: a transfer or reply
    /// that failed because the client went, a malformed message, a stalled transfer (each
    /// also logged). An RDMA client that goes while its request is with the storage, nothing
    /// on the wire, is seen as a clean close.
    pub failed: u64,
}

/// The counts behind [`ConnectionCounts`]: the acceptors' and the workers'.
#[derive(Debug, Default)]
struct Accepted {
    on_loops: AtomicU64,
    on_threads: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for TargetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetServer")
            .field("served", &self.served)
            .finish()
    }
}

impl TargetServer {
    /// Opens the target in `dir`, starts its workers and listens on `config.listen`.
    pub fn start(dir: &Path, config: &TargetConfig) -> Result<TargetServer, Error> {
        let spec = TargetSpec {
            dir: dir.to_path_buf(),
            listen: config.listen.clone(),
            advertise: config.advertise.clone(),
        };
        TargetServer::start_shared(&[spec], config)
    }

    /// Opens every target of `specs` and serves them all with one set of workers (one per
    /// core, or `config.workers`), as a host serves its drives: each worker has a store (a
    /// ring) per target and drives the connections of every target, so a host's load
    /// shares its cores' threads, their wake-ups and their memory pool, instead of each
    /// target bringing threads of its own. Each target keeps its own listener; a request
    /// names its target, whichever listener accepted its connection (one naming none is
    /// for that listener's target). `config.listen` and
    /// `config.advertise` are not used: each spec says its own.
    pub fn start_shared(
        specs: &[TargetSpec],
        config: &TargetConfig,
    ) -> Result<TargetServer, Error> {
        if specs.is_empty() || specs.len() > MAX_TARGETS_PER_SERVER {
            return Err(Error::Invalid {
                field: "targets",
                value: specs.len().to_string(),
                allowed: format!("1 to {MAX_TARGETS_PER_SERVER} per server"),
            });
        }
        let mut targets: Vec<Target> = Vec::with_capacity(specs.len());
        for spec in specs {
            let target = Target::open_exclusive(&spec.dir)?;
            let target_id = target.target_id();
            if let Some(other) = targets.iter().find(|t| t.target_id() == target_id) {
                return Err(Error::Invalid {
                    field: "targets",
                    value: spec.dir.display().to_string(),
                    allowed: format!(
                        "targets with distinct ids ({} is target {target_id} too)",
                        other.dir().display()
                    ),
                });
            }
            targets.push(target);
        }
        let mut listeners = Vec::with_capacity(specs.len());
        for spec in specs {
            let listener = Listener::bind(&Endpoint::parse(&spec.listen)?)?;
            listeners.push(listener);
        }
        let pool = Arc::new(MemPool::new(config.pool)?);
        // Over RDMA the pool is registered once per device and listener, for every
        // connection through them.
        for (listener, target) in listeners.iter().zip(&targets) {
            for (ptr, len) in pool.registrations() {
                // SAFETY: the pool's slab stays mapped while the pool lives, and the
                // listener and its connections hold a clone of `pool` with each
                // registration.
                if let Err(e) = unsafe { listener.register_memory(Arc::clone(&pool), ptr, len) } {
                    nacre_transport::log_line!(
                        "nacre target {}: cannot register the pool for RDMA ({e}); \
                         payloads will be staged",
                        target.target_id()
                    );
                    break;
                }
            }
        }
        let served: Vec<ServedTarget> = targets
            .iter()
            .zip(&listeners)
            .map(|(t, l)| ServedTarget {
                endpoint: l.endpoint().clone(),
                target: t.clone(),
            })
            .collect();
        // What each target registers: where clients reach it.
        let registered: Vec<(u32, String)> = specs
            .iter()
            .zip(&served)
            .map(|(spec, s)| {
                let endpoint = spec
                    .advertise
                    .clone()
                    .unwrap_or_else(|| s.endpoint.to_string());
                (s.target_id(), endpoint)
            })
            .collect();
        let first_id = targets[0].target_id();
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let (store_config, connection_bound) =
            descriptor_budget(config.store, workers, targets.len())?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Accepted::default());
        let ctx = Arc::new(Context {
            connections: AtomicUsize::new(0),
            connection_bound,
            targets,
            served_reply: request::served_reply(crate::server::instance(), &registered),
            counts: Arc::clone(&accepted),
            staged_bound: pool.chunks() * pool.chunk_bytes() + STAGED_BYTES_BEYOND_POOL,
            pool,
            stop: Arc::clone(&stop),
            in_flight: AtomicUsize::new(0),
            staged: Arc::new(AtomicUsize::new(0)),
        });
        let mut inboxes = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (inbox, rx) = Inbox::new()?;
            inboxes.push(inbox);
            receivers.push(rx);
        }
        let inboxes = Arc::new(inboxes);
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        for (w, rx) in receivers.into_iter().enumerate() {
            let (ctx, inboxes) = (Arc::clone(&ctx), Arc::clone(&inboxes));
            let ready = ready_tx.clone();
            let started = spawn(format!("nacre-t{first_id}-w{w}"), move || {
                worker::run(w, ctx, inboxes, rx, store_config, ready)
            });
            match started {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    join_all(threads);
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        // Every worker reports whether its stores opened; the first failure is the answer.
        for _ in 0..workers {
            let failure = match ready_rx.recv() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => Error::Server {
                    what: ctx.name(),
                    reason: "a worker thread ended while starting".into(),
                },
            };
            stop.store(true, Ordering::SeqCst);
            join_all(threads);
            return Err(failure);
        }
        // From here on, a failure stops and joins every thread started (`Threads` does on
        // drop), so nothing is left serving behind an error.
        let mut threads = Threads {
            stop: Arc::clone(&stop),
            handles: threads,
        };
        // Connections go to the workers in turn, whichever target they are for.
        let next = Arc::new(AtomicUsize::new(0));
        // Serving before registering: the metadata service may call in while it answers the
        // registration (to remove objects of files removed while this target was down).
        for (t, listener) in listeners.into_iter().enumerate() {
            let target_id = served[t].target_id();
            let (accept_stop, counts) = (Arc::clone(&stop), Arc::clone(&accepted));
            let (ctx, inboxes, next) = (Arc::clone(&ctx), Arc::clone(&inboxes), Arc::clone(&next));
            threads
                .handles
                .push(spawn(format!("nacre-t{target_id}"), move || {
                    let name = format!("nacre-t{target_id}");
                    accept_loop(listener, accept_stop, name, move |conn| {
                        // One that cannot be driven by an event loop (an RDMA connection without
                        // the pool registered) gets a thread of its own.
                        let conn = match conn.into_stream().map(Wire::Tcp).or_else(rdma_stream) {
                            Ok(wire) => {
                                counts.on_loops.fetch_add(1, Ordering::Relaxed);
                                let w = next.fetch_add(1, Ordering::Relaxed) % inboxes.len();
                                // A worker that has gone (the server stops) drops the connection.
                                let _ = inboxes[w].send(Msg::Connection(wire, t));
                                return None;
                            }
                            Err(conn) => conn,
                        };
                        counts.on_threads.fetch_add(1, Ordering::Relaxed);
                        let (ctx, inboxes) = (Arc::clone(&ctx), Arc::clone(&inboxes));
                        Some(move || threaded::serve_connection(conn, t, ctx, inboxes))
                    })
                })?);
        }
        if let Some(meta) = &config.meta {
            for ((_, endpoint), s) in registered.into_iter().zip(&served) {
                let info = TargetInfo {
                    target_id: s.target_id(),
                    uuid: s.target.stamp().uuid_string(),
                    endpoint,
                    pools: config.pools.clone(),
                    capacity_bytes: 0,
                    free_bytes: 0,
                };
                let link = register(meta, info, &s.target)?;
                let (target, stop) = (s.target.clone(), Arc::clone(&stop));
                threads.handles.push(spawn(
                    format!("nacre-t{}-beat", s.target_id()),
                    move || heartbeat(&link, &target, &stop),
                )?);
            }
        }
        Ok(TargetServer {
            served,
            threads,
            accepted,
        })
    }

    /// Where clients reach the server's (first) target.
    pub fn endpoint(&self) -> &Endpoint {
        &self.served[0].endpoint
    }

    /// The (first) target's id.
    pub fn target_id(&self) -> u32 {
        self.served[0].target_id()
    }

    /// The (first) target it serves.
    pub fn target(&self) -> &Target {
        &self.served[0].target
    }

    /// Every target it serves, in the order they were given.
    pub fn served(&self) -> &[ServedTarget] {
        &self.served
    }

    /// How the connections accepted so far are served.
    pub fn connections(&self) -> ConnectionCounts {
        ConnectionCounts {
            on_loops: self.accepted.on_loops.load(Ordering::Relaxed),
            on_threads: self.accepted.on_threads.load(Ordering::Relaxed),
            failed: self.accepted.failed.load(Ordering::SeqCst),
        }
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

/// Shares the open-file limit (raised to the hard limit first) between the stores' object
/// files and the client connections: each of the `workers` x `targets` stores may keep
/// `store.open_objects` objects open, two descriptors each (direct and page cache), within
/// half of what is left after [`TARGET_RESERVED_FDS`] and the server's own descriptors;
/// connections get the rest, at most [`MAX_TARGET_CONNECTIONS`]. Returns the stores' sizing (fewer open objects when the limit
/// is low) and the bound of connections.
fn descriptor_budget(
    mut store: StoreConfig,
    workers: usize,
    targets: usize,
) -> Result<(StoreConfig, usize), Error> {
    let Some(limit) = raise_open_file_limit() else {
        return Ok((store, MAX_TARGET_CONNECTIONS));
    };
    let stores = workers * targets;
    // Beside the constant share: a ring per store, an epoll and two eventfds per worker, a
    // listener and a lock file per target.
    let kept = TARGET_RESERVED_FDS + (stores + 3 * workers + 2 * targets) as u64;
    let budget = limit.saturating_sub(kept);
    // Below this a server could hold almost nothing: said at start, by name.
    let least = (MIN_CONNECTIONS + 2 * stores) as u64;
    if budget < least {
        return Err(Error::Server {
            what: "nacre target".into(),
            reason: format!(
                "the open-file limit ({limit}) leaves {budget} descriptors beside the {kept} \
                 it keeps; its {stores} stores' files and its connections need {least}: \
                 raise it (ulimit -n) to at least {}",
                kept + least
            ),
        });
    }
    let per_store = (budget / 2 / (2 * stores.max(1) as u64)).max(1);
    if u64::from(store.open_objects) > per_store {
        let open = u32::try_from(per_store).unwrap_or(u32::MAX);
        nacre_transport::log_line!(
            "nacre target: the open-file limit ({limit}) lets each of {stores} stores keep {open} objects open, not {}",
            store.open_objects
        );
        store.open_objects = open;
    }
    let files = 2 * stores as u64 * u64::from(store.open_objects);
    let room = budget.saturating_sub(files).max(MIN_CONNECTIONS as u64);
    let connections = MAX_TARGET_CONNECTIONS.min(usize::try_from(room).unwrap_or(usize::MAX));
    Ok((store, connections))
}

/// An RDMA connection as an event loop's, or the connection back when it cannot be one.
fn rdma_stream(conn: ServerConnection) -> Result<Wire, ServerConnection> {
    conn.into_rdma_stream().map(|s| Wire::Rdma(Box::new(s)))
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
    let request = MetaRequest::RegisterTarget {
        info,
        filesystem: target.filesystem().map(|fs| nacre_io::uuid_text(&fs)),
    };
    loop {
        match link.call(&Cred::root(), &request) {
            Ok(reply) => {
                // The file system the service accepted the target into: a target registered
                // for the first time belongs to it from now on.
                let fs = Reader::new(&reply, "register target reply")
                    .str("filesystem", MAX_TARGET_UUID_BYTES)
                    .ok()
                    .and_then(nacre_io::parse_uuid)
                    .ok_or_else(|| Error::Server {
                        what: format!("nacre target {}", target.target_id()),
                        reason: format!(
                            "{meta} answered the registration without a file system uuid"
                        ),
                    })?;
                target.bind_filesystem(fs)?;
                return Ok(link);
            }
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
