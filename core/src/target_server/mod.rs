//! The target server: serves one target's objects over the transport.
//!
//! Threads (decisions 0005, 0008 and 0013):
//! - **workers**, one per core (`worker`): each owns an [`ObjectStore`](nacre_io::ObjectStore)
//!   (its own io_uring, registered file table and the memory pool registered with it), the
//!   connections handed to it (TCP, and RDMA: a `wire::Wire` either way), and the objects
//!   whose id hashes to it. One epoll loop per worker drives its sockets, its RDMA
//!   completion channels and its ring; nothing on the data path takes a lock. The memory
//!   pool is registered once with each RDMA device clients come through
//!   ([`Listener::register_memory`]), not per connection.
//! - **connection threads** only for RDMA connections the loops cannot drive (`threaded`):
//!   those whose device could not get the pool registered, whose bulk is staged.
//! - an acceptor, which hands each connection to a worker in turn, and a heartbeat that
//!   keeps the metadata service's view of free space fresh.

mod request;
mod threaded;
mod wire;
mod worker;

pub use worker::MAX_CONNECTIONS_PER_WORKER;

use wire::Wire;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nacre_io::{StoreConfig, Target};
use nacre_transport::{Endpoint, Listener, ServerConnection};

use crate::error::Error;
use crate::limits::{ACCEPT_POLL_MS, HEARTBEAT_MS, IDLE_POLL_MS, REGISTER_TIMEOUT_MS};
use crate::mem::{MemPool, PoolConfig};
use crate::meta::link::{MetaLink, link_options};
use crate::meta::proto::MetaRequest;
use crate::meta::types::{Cred, TargetInfo};
use crate::server::{Threads, accept_loop, join_all, spawn};
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

/// A running target server; stops when dropped.
pub struct TargetServer {
    endpoint: Endpoint,
    target_id: u32,
    target: Target,
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
}

/// The acceptor's counts behind [`ConnectionCounts`].
#[derive(Debug, Default)]
struct Accepted {
    on_loops: AtomicU64,
    on_threads: AtomicU64,
}

impl std::fmt::Debug for TargetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetServer")
            .field("endpoint", &self.endpoint)
            .field("target_id", &self.target_id)
            .finish()
    }
}

impl TargetServer {
    /// Opens the target in `dir`, starts its workers and listens on `config.listen`.
    pub fn start(dir: &Path, config: &TargetConfig) -> Result<TargetServer, Error> {
        let target = Target::open(dir)?;
        let target_id = target.target_id();
        let endpoint = Endpoint::parse(&config.listen)?;
        let listener = Listener::bind(&endpoint)?;
        let endpoint = listener.endpoint().clone();
        let pool = Arc::new(MemPool::new(config.pool)?);
        // Over RDMA the pool is registered once per device, for every connection through it.
        for (ptr, len) in pool.registrations() {
            // SAFETY: the pool's slab stays mapped while the pool lives, and the listener
            // and its connections hold a clone of `pool` with each registration.
            if let Err(e) = unsafe { listener.register_memory(Arc::clone(&pool), ptr, len) } {
                nacre_transport::log_line!(
                    "nacre target {target_id}: cannot register the pool for RDMA ({e}); \
                     payloads will be staged"
                );
                break;
            }
        }
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Context {
            target_id,
            target: target.clone(),
            pool,
            stop: Arc::clone(&stop),
            in_flight: AtomicUsize::new(0),
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
            let store_config = config.store;
            let ready = ready_tx.clone();
            let started = spawn(format!("nacre-t{target_id}-w{w}"), move || {
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
        // Every worker reports whether its store opened; the first failure is the answer.
        for _ in 0..workers {
            let failure = match ready_rx.recv() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => Error::Server {
                    what: format!("target {target_id}"),
                    reason: "a worker thread ended while starting".into(),
                },
            };
            stop.store(true, Ordering::SeqCst);
            join_all(threads);
            return Err(failure);
        }
        let accept_stop = Arc::clone(&stop);
        let accepted = Arc::new(Accepted::default());
        let counts = Arc::clone(&accepted);
        // Serving before registering: the metadata service may call in while it answers the
        // registration (to remove objects of files removed while this target was down).
        threads.push(spawn(format!("nacre-t{target_id}"), move || {
            let name = format!("nacre-t{target_id}");
            let mut next = 0;
            accept_loop(listener, accept_stop, name, move |conn| {
                // Connections go to the workers in turn; one that cannot be driven by an
                // event loop (an RDMA connection without the pool registered) gets a thread
                // of its own.
                let conn = match conn.into_stream().map(Wire::Tcp).or_else(rdma_stream) {
                    Ok(wire) => {
                        counts.on_loops.fetch_add(1, Ordering::Relaxed);
                        let w = next % inboxes.len();
                        next = next.wrapping_add(1);
                        // A worker that has gone (the server stops) drops the connection.
                        let _ = inboxes[w].send(Msg::Connection(wire));
                        return None;
                    }
                    Err(conn) => conn,
                };
                counts.on_threads.fetch_add(1, Ordering::Relaxed);
                let (ctx, inboxes) = (Arc::clone(&ctx), Arc::clone(&inboxes));
                Some(move || threaded::serve_connection(conn, ctx, inboxes))
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
            accepted,
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

    /// How the connections accepted so far are served.
    pub fn connections(&self) -> ConnectionCounts {
        ConnectionCounts {
            on_loops: self.accepted.on_loops.load(Ordering::Relaxed),
            on_threads: self.accepted.on_threads.load(Ordering::Relaxed),
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

/// An RDMA connection as an event loop's, or the connection back when it cannot be one.
#[cfg(feature = "rdma")]
fn rdma_stream(conn: ServerConnection) -> Result<Wire, ServerConnection> {
    conn.into_rdma_stream().map(|s| Wire::Rdma(Box::new(s)))
}

/// Without RDMA every connection the acceptor cannot hand a worker gets a thread.
#[cfg(not(feature = "rdma"))]
fn rdma_stream(conn: ServerConnection) -> Result<Wire, ServerConnection> {
    Err(conn)
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
