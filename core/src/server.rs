//! What the target and metadata servers share: the acceptor, and the loop of a connection
//! thread that takes requests until the client leaves or the server stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nacre_transport::{Listener, Request, ServerConnection, TransportError};

use crate::error::Error;
use crate::limits::{ACCEPT_POLL_MS, IDLE_POLL_MS};

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
/// those threads.
pub(crate) fn accept_loop<F: FnOnce() + Send + 'static>(
    listener: Listener,
    stop: Arc<AtomicBool>,
    name: String,
    mut route: impl FnMut(ServerConnection) -> Option<F>,
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        connections.retain(|t| !t.is_finished());
        match listener.accept(Duration::from_millis(ACCEPT_POLL_MS)) {
            Ok(Some(conn)) => {
                let Some(serve) = route(conn) else { continue };
                match spawn(format!("{name}-conn"), serve) {
                    Ok(t) => connections.push(t),
                    Err(e) => nacre_transport::log_line!("{name}: {e}"),
                }
            }
            Ok(None) => {}
            Err(e) => nacre_transport::log_line!("{name}: accept: {e}"),
        }
    }
    join_all(connections);
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
