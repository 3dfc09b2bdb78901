//! Connections served by a thread each: RDMA connections the workers' loops cannot drive,
//! because the pool could not be registered with their device (decision 0013). The thread
//! receives a request, lands a write's payload in pool memory (through the connection's
//! staging buffer), hands each object's owner its pieces as a job, waits for the results,
//! and replies from the same memory.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use nacre_transport::TransportError;
use nacre_transport::server::{Request, ServerConnection};

use super::request::{self, Context, Failure, PieceResult, Prepared, Work};
use super::worker::{Inbox, Job, Msg, ReplyTo, owner};
use crate::limits::{IDLE_POLL_MS, STAGING_WAIT_MS, WORKER_REPLY_TIMEOUT_MS};
use crate::server::request_loop;

/// Serves one connection accepted by the listener of target `t` (its index in
/// `ctx.targets`; the target of requests that name none) until the client leaves or the
/// server stops.
pub(super) fn serve_connection(
    mut conn: ServerConnection,
    t: usize,
    ctx: Arc<Context>,
    inboxes: Arc<Vec<Inbox>>,
) {
    let name = format!("nacre {}", ctx.target_name(t));
    request_loop(&mut conn, &ctx.stop, &name, |conn, request, body| {
        handle(&ctx, t, &inboxes, conn, request, body)
    });
}

fn handle(
    ctx: &Context,
    t: usize,
    inboxes: &[Inbox],
    conn: &mut ServerConnection,
    request: &Request,
    body: &[u8],
) -> Result<(), TransportError> {
    // A request that waits for staging memory waits here (this connection's thread is its
    // own), as long as a worker's parked request does.
    let deadline = Instant::now() + Duration::from_millis(STAGING_WAIT_MS);
    let mut prepared = loop {
        match request::begin(ctx, t, &request.header, body) {
            Work::Reply { status, body } => return conn.reply(request, status, &body, &[]),
            Work::Run(p) => break p,
            Work::Wait if Instant::now() < deadline && !ctx.stop.load(Ordering::SeqCst) => {
                std::thread::sleep(Duration::from_millis(IDLE_POLL_MS));
            }
            Work::Wait => {
                let f = ctx.staging_waited(t);
                return conn.reply(request, f.errno, f.message.as_bytes(), &[]);
            }
        }
    };
    if request.header.payload_len > 0
        && let Some(staging) = prepared.staging.as_mut()
    {
        conn.recv_payload(&mut staging.slices_mut())?;
    }
    if !ctx.enter() {
        let f = ctx.stopping();
        return conn.reply(request, f.errno, f.message.as_bytes(), &[]);
    }
    let results = run(ctx, inboxes, &prepared);
    ctx.leave();
    let results = match results {
        Ok(r) => r,
        Err(f) => {
            if let Some(s) = prepared.staging.take() {
                // Pieces that did not answer may still use the memory: leak it.
                s.abandon();
            }
            return conn.reply(request, f.errno, f.message.as_bytes(), &[]);
        }
    };
    let answer = request::finish(&prepared, &results);
    match prepared.staging.as_mut() {
        Some(staging) if answer.payload_len > 0 => {
            conn.reply(request, answer.status, &answer.body, &staging.slices())
        }
        _ => conn.reply(request, answer.status, &answer.body, &[]),
    }
}

/// Hands each object's owner its pieces and waits for all results, in piece order.
fn run(ctx: &Context, inboxes: &[Inbox], prepared: &Prepared) -> Result<Vec<PieceResult>, Failure> {
    let pieces = &prepared.pieces;
    let workers = inboxes.len();
    let mut per_worker: Vec<Vec<usize>> = vec![Vec::new(); workers];
    for (i, p) in pieces.iter().enumerate() {
        per_worker[owner(p.target, p.object_id, workers)].push(i);
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
            reply: ReplyTo::Thread(tx.clone()),
        };
        if !inboxes[w].send(Msg::Job(job)) {
            // A worker is gone only when the server stops; the pieces already sent still
            // finish, and their results are awaited below.
            break;
        }
        sent += 1;
    }
    let mut results: Vec<Option<PieceResult>> = (0..pieces.len()).map(|_| None).collect();
    let timeout = Duration::from_millis(WORKER_REPLY_TIMEOUT_MS);
    for _ in 0..sent {
        match rx.recv_timeout(timeout) {
            Ok((w, worker_results)) => {
                for (&i, r) in per_worker[w].iter().zip(worker_results) {
                    results[i] = Some(r);
                }
            }
            Err(_) => {
                return Err(Failure {
                    errno: libc::ETIMEDOUT,
                    message: format!(
                        "{}: storage did not answer within {WORKER_REPLY_TIMEOUT_MS} ms",
                        pieces
                            .first()
                            .map_or_else(|| ctx.name(), |p| ctx.target_name(p.target))
                    ),
                });
            }
        }
    }
    if results.iter().any(Option::is_none) {
        return Err(ctx.stopping());
    }
    Ok(results.into_iter().flatten().collect())
}
