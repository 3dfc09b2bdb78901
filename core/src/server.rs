//! What the target and metadata servers share: the acceptor, and the loop of a connection
//! thread that takes requests until the client leaves or the server stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nacre_transport::TransportError;
use nacre_transport::server::{Listener, Request, ServerConnection};

use crate::error::Error;
use crate::limits::{
    ACCEPT_BACKOFF_MAX_MS, ACCEPT_BACKOFF_MIN_MS, ACCEPT_POLL_MS, ERROR_LOG_INTERVAL_MS,
    IDLE_POLL_MS, MAX_ERROR_LOG_KINDS, MIN_CONNECTIONS,
};

/// A server's threads and the flag that stops them; dropping it stops and joins them.
pub(crate) struct Threads {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) handles: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Sets the stop flag and waits for every thread.
    pub(crate) fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        join_all(std::mem::take(&mut self.handles));
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A number for this start of a server, different from any other server's (with
/// overwhelming odds): clients tell by it that connections reach the same server.
pub(crate) fn instance() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std's hasher keys are random per process (and per `RandomState` after the first).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Joins every thread, ignoring panics (a panicked thread has already said why).
pub(crate) fn join_all(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}

/// Starts a named thread, or says which could not start.
pub(crate) fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, Error> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| Error::Server {
            what: name,
            reason: format!("cannot start thread: {e}"),
        })
}

/// Accepts clients until `stop` is set, handing each to `route`, which takes it over
/// (`None`) or gives back the work of a thread to serve it on (`Some`); then waits for
/// those threads. An accept that fails (out of descriptors, say) backs off, from
/// [`ACCEPT_BACKOFF_MIN_MS`] doubling to [`ACCEPT_BACKOFF_MAX_MS`] while failures go on,
/// instead of trying again at once; each kind of failure is logged once per
/// [`ERROR_LOG_INTERVAL_MS`].
pub(crate) fn accept_loop<F: FnOnce() + Send + 'static>(
    listener: Listener,
    stop: Arc<AtomicBool>,
    name: String,
    mut route: impl FnMut(ServerConnection) -> Option<F>,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    let mut errors = ErrorLog::new(name.clone());
    let mut backoff = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        connections.retain(|t| !t.is_finished());
        match listener.accept(Duration::from_millis(ACCEPT_POLL_MS)) {
            Ok(Some(conn)) => {
                backoff = Duration::ZERO;
                let Some(serve) = route(conn) else { continue };
                match spawn(format!("{name}-conn"), serve) {
                    Ok(t) => connections.push(t),
                    Err(e) => errors.note("spawn", &e),
                }
            }
            Ok(None) => backoff = Duration::ZERO,
            Err(e) => {
                errors.note(accept_error_kind(&e), &format_args!("accept: {e}"));
                backoff = (backoff * 2).clamp(
                    Duration::from_millis(ACCEPT_BACKOFF_MIN_MS),
                    Duration::from_millis(ACCEPT_BACKOFF_MAX_MS),
                );
                // The pending connection waits in the listen backlog meanwhile; a pause is
                // the point (descriptors or memory come back), not an ordering.
                std::thread::sleep(backoff);
            }
        }
    }
    join_all(connections);
}

/// What kind of accept failure `e` is, for [`ErrorLog`].
fn accept_error_kind(e: &TransportError) -> &'static str {
    let errno = match e {
        TransportError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EMFILE | libc::ENFILE) => "accept: out of descriptors",
        Some(libc::ENOBUFS | libc::ENOMEM) => "accept: out of memory",
        _ => "accept",
    }
}

/// Logs each kind of error once per [`ERROR_LOG_INTERVAL_MS`], then how many more of that
/// kind came meanwhile, so that a flood of one failure cannot become a flood of lines (an
/// acceptor out of descriptors logged about 3 MB/s).
pub(crate) struct ErrorLog {
    name: String,
    /// Per kind: when it was last logged, and how many since were not.
    kinds: Vec<(&'static str, Instant, u64)>,
}

impl ErrorLog {
    pub(crate) fn new(name: String) -> ErrorLog {
        ErrorLog {
            name,
            kinds: Vec::new(),
        }
    }

    /// Logs `message` as an error of `kind`, unless one of that kind was logged less than
    /// an interval ago (it is counted then, and the count said with the next one logged).
    pub(crate) fn note(&mut self, kind: &'static str, message: &dyn std::fmt::Display) {
        let interval = Duration::from_millis(ERROR_LOG_INTERVAL_MS);
        let now = Instant::now();
        match self.kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, last, quiet)) if now.duration_since(*last) < interval => *quiet += 1,
            Some((_, last, quiet)) => {
                nacre_transport::log_line!(
                    "{}: {message} ({} more like it in the last {} s)",
                    self.name,
                    *quiet,
                    now.duration_since(*last).as_secs()
                );
                (*last, *quiet) = (now, 0);
            }
            None => {
                nacre_transport::log_line!("{}: {message}", self.name);
                if self.kinds.len() < MAX_ERROR_LOG_KINDS {
                    self.kinds.push((kind, now, 0));
                }
            }
        }
    }
}

/// Raises the process's soft limit on open descriptors to its hard limit (a server holds a
/// descriptor per connection, and a target per open object too) and returns the limit now
/// in force; `None` when it cannot be read.
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum.or(Some(u64::MAX));
        }
    }
    limit.current.or(Some(u64::MAX))
}

/// How many client connections a server may hold: `max`, or fewer when the open-file
/// limit (raised first) leaves less than `reserved_fds` plus one per connection. A limit
/// that leaves room for fewer than [`MIN_CONNECTIONS`] is an error naming it: a server
/// that could accept almost no one would only fail later, and less clearly.
pub(crate) fn connection_bound(what: &str, max: usize, reserved_fds: u64) -> Result<usize, Error> {
    let Some(limit) = raise_open_file_limit() else {
        return Ok(max);
    };
    let room = limit.saturating_sub(reserved_fds);
    if room < MIN_CONNECTIONS as u64 {
        return Err(Error::Server {
            what: what.to_owned(),
            reason: format!(
                "the open-file limit ({limit}) leaves room for {room} connections beside the \
                 {reserved_fds} descriptors it keeps; raise it (ulimit -n) to at least {}",
                reserved_fds + MIN_CONNECTIONS as u64
            ),
        });
    }
    Ok(max.min(usize::try_from(room).unwrap_or(usize::MAX)))
}

/// Takes requests from `conn` and hands each (with its body) to `handle`, until the client
/// closes the connection, `handle` fails, or `stop` is set (noticed within
/// [`IDLE_POLL_MS`] while idle).
pub(crate) fn request_loop(
    conn: &mut ServerConnection,
    stop: &AtomicBool,
    name: &str,
    mut handle: impl FnMut(&mut ServerConnection, &Request, &[u8]) -> Result<(), TransportError>,
) {
    let idle = Duration::from_millis(IDLE_POLL_MS);
    let busy = Duration::from_millis(nacre_transport::limits::REQUEST_TIMEOUT_MS);
    let mut body = Vec::new();
    loop {
        if stop.load(Ordering::SeqCst) || conn.set_timeout(idle).is_err() {
            return;
        }
        let request = match conn.next_request(&mut body) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(TransportError::TimedOut { .. }) => continue,
            Err(e) => {
                nacre_transport::log_line!("{name}: {e}; connection closed");
                return;
            }
        };
        if conn.set_timeout(busy).is_err() {
            return;
        }
        if let Err(e) = handle(conn, &request, &body) {
            nacre_transport::log_line!("{name}: {e}; connection closed");
            return;
        }
    }
}
