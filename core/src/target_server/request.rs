//! What a request to a target means, apart from who runs it: its extents cut into pieces
//! laid over payload memory (`begin`), and the reply built from the pieces' results
//! (`finish`). Both the workers' event loops (TCP) and the connection threads (RDMA) use it.

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nacre_io::{AlignedBuf, IoError, Target};
use nacre_transport::Span;
use nacre_transport::limits::MAX_PAYLOAD_BYTES;
use nacre_transport::wire::{ANY_TARGET, Extent, Header, Opcode, decode_extents};

use crate::codec::Writer;
use crate::limits::{MAX_IO_PIECE_BYTES, STAGING_WAIT_MS};
use crate::mem::{MemPool, PoolBuf};

/// What every thread of a target server shares.
pub(super) struct Context {
    /// The targets it serves (one, or several sharing the workers), by index. A request
    /// names its target by id; one naming none is for the target whose listener accepted
    /// its connection (decision 0016).
    pub(super) targets: Vec<Target>,
    /// The body of the reply to [`Opcode::Targets`]: the server's instance, then each
    /// target's id and registered endpoint.
    pub(super) served_reply: Vec<u8>,
    /// The server's connection counts (the workers count connections closed on an error).
    pub(super) counts: Arc<super::Accepted>,
    pub(super) pool: Arc<MemPool>,
    pub(super) stop: Arc<AtomicBool>,
    /// Requests whose pieces are being run: workers stop only when none is left, so no
    /// piece is ever sent to a worker that has gone.
    pub(super) in_flight: AtomicUsize,
    /// Bytes of staging (payloads received and replies not yet written) the server holds,
    /// over all its connections.
    pub(super) staged: Arc<AtomicUsize>,
    /// Client connections the workers hold, all together.
    pub(super) connections: AtomicUsize,
    /// The most they may hold (past it, a worker closes its oldest idle one or refuses).
    pub(super) connection_bound: usize,
    /// The most it may hold: the pool and
    /// [`STAGED_BYTES_BEYOND_POOL`](crate::limits::STAGED_BYTES_BEYOND_POOL) of other memory.
    pub(super) staged_bound: usize,
}

impl Context {
    /// Reserves `bytes` of staging within the server's bound, or `None` when that would
    /// pass it (one request alone may always go: the bound holds at least the largest).
    fn reserve(&self, bytes: usize) -> Option<Reserved> {
        let reserved = self
            .staged
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held == 0 || held + bytes <= self.staged_bound).then_some(held + bytes)
            });
        reserved.ok().map(|_| Reserved {
            counter: Arc::clone(&self.staged),
            bytes,
        })
    }

    /// Counts a request in before its pieces go out; false (and not counted) when the
    /// server is stopping. The stop flag is read after the count is raised, so a worker
    /// that saw the flag and then a zero count can be sure no request will come.
    pub(super) fn enter(&self) -> bool {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.stop.load(Ordering::SeqCst) {
            self.leave();
            return false;
        }
        true
    }

    /// Counts a request out once all its pieces are done (or abandoned).
    pub(super) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn stopping(&self) -> Failure {
        Failure {
            errno: libc::ESHUTDOWN,
            message: format!("{} is stopping", self.name()),
        }
    }

    /// The answer to a request of target `t` that waited [`STAGING_WAIT_MS`] for staging
    /// memory in vain (EAGAIN: the client may send it again).
    pub(super) fn staging_waited(&self, t: usize) -> Failure {
        Failure {
            errno: libc::EAGAIN,
            message: format!(
                "{}: the server's staging memory stayed at its bound for {STAGING_WAIT_MS} ms; try again",
                self.target_name(t)
            ),
        }
    }

    /// "target N", or "targets N, M, ..." for a server of several, for messages.
    pub(super) fn name(&self) -> String {
        let ids: Vec<String> = self
            .targets
            .iter()
            .map(|t| t.target_id().to_string())
            .collect();
        match ids.as_slice() {
            [one] => format!("target {one}"),
            _ => format!("targets {}", ids.join(", ")),
        }
    }

    /// The index of the target a request names (`target`), or `accepted_by`'s (the index
    /// of the target whose listener accepted the connection) when it names none.
    pub(super) fn resolve(&self, accepted_by: usize, target: u32) -> Result<usize, Failure> {
        if target == ANY_TARGET {
            return Ok(accepted_by);
        }
        self.targets
            .iter()
            .position(|t| t.target_id() == target)
            .ok_or_else(|| Failure {
                errno: libc::ENXIO,
                message: format!(
                    "target {target} is not served here (this server serves {})",
                    self.name()
                ),
            })
    }

    /// "target N" for the target of index `t`.
    pub(super) fn target_name(&self, t: usize) -> String {
        format!("target {}", self.targets[t].target_id())
    }
}

/// One operation of a piece.
#[derive(Debug, Clone, Copy)]
pub(super) enum PieceOp {
    Read { buf: *mut u8, len: usize },
    Write { buf: *const u8, len: usize },
    Sync,
    Truncate,
    Punch { len: u64 },
    Stat,
    Remove,
}

/// One storage operation on one object: a request is cut into pieces.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    pub(super) op: PieceOp,
    /// The object's target (its index in [`Context::targets`]).
    pub(super) target: usize,
    pub(super) object_id: u64,
    /// Offset (or, for truncate, the new size).
    pub(super) offset_bytes: u64,
}

/// The result of one piece: bytes moved (or the object's size, for stat).
pub(super) type PieceResult = Result<u64, IoError>;

/// The error reply of a failed request: its errno and a message naming what failed.
pub(super) struct Failure {
    pub(super) errno: i32,
    pub(super) message: String,
}

impl From<IoError> for Failure {
    fn from(e: IoError) -> Self {
        Failure {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

/// A request ready to be run: its pieces, and the memory a read lands in or a write's
/// payload arrives in.
pub(super) struct Prepared {
    pub(super) opcode: Opcode,
    pub(super) extents: Vec<Extent>,
    pub(super) pieces: Vec<Piece>,
    pub(super) staging: Option<Staging>,
}

/// How a request goes on.
pub(super) enum Work {
    /// Answered at once: a status and a body (ping, statfs, and every refusal).
    Reply { status: i32, body: Vec<u8> },
    /// Pieces to run (after a write's payload has arrived in its staging).
    Run(Prepared),
    /// The server holds its bound of staging: the request waits (ask again later with the
    /// same header and body), and its connection is not read meanwhile, so that what
    /// clients send stays in their sockets instead of in the server's memory.
    Wait,
}

impl Work {
    fn failed(f: Failure) -> Work {
        Work::Reply {
            status: f.errno,
            body: f.message.into_bytes(),
        }
    }
}

/// The reply to a request whose pieces have run: a status, a body, and for a read the
/// staging's bytes as payload.
pub(super) struct Answer {
    pub(super) status: i32,
    pub(super) body: Vec<u8>,
    /// The read's payload length (the staging holds it), 0 for everything else.
    pub(super) payload_len: u64,
}

/// Reads a request, header and body, that came on a connection accepted by the listener
/// of target `accepted_by` (its index in `ctx.targets`), and says what it takes.
pub(super) fn begin(ctx: &Context, accepted_by: usize, header: &Header, body: &[u8]) -> Work {
    let opcode = header.opcode;
    let t = match ctx.resolve(accepted_by, header.target) {
        Ok(t) => t,
        Err(f) => return Work::failed(f),
    };
    match opcode {
        Opcode::Ping => Work::Reply {
            status: 0,
            body: Vec::new(),
        },
        Opcode::Targets => Work::Reply {
            status: 0,
            body: ctx.served_reply.clone(),
        },
        Opcode::Statfs => match statfs(&ctx.targets[t]) {
            Ok(body) => Work::Reply { status: 0, body },
            Err(f) => Work::failed(f),
        },
        Opcode::Read | Opcode::Write => match transfer(ctx, t, header, body) {
            Ok(Some(p)) => Work::Run(p),
            Ok(None) => Work::Wait,
            Err(f) => Work::failed(f),
        },
        Opcode::Sync
        | Opcode::Truncate
        | Opcode::Punch
        | Opcode::Stat
        | Opcode::Remove
        | Opcode::Create => match plain(opcode, t, body) {
            Ok(p) => Work::Run(p),
            Err(f) => Work::failed(f),
        },
        Opcode::Meta | Opcode::Error => Work::failed(Failure {
            errno: libc::EOPNOTSUPP,
            message: format!("{} does not serve {opcode:?} requests", ctx.target_name(t)),
        }),
    }
}

fn decode(body: &[u8], extents: &mut Vec<Extent>) -> Result<u64, Failure> {
    decode_extents(body, extents).map_err(|e| Failure {
        errno: libc::EINVAL,
        message: format!("bad extent list: {e}"),
    })
}

fn statfs(target: &Target) -> Result<Vec<u8>, Failure> {
    let cap = target.capacity()?;
    let mut out = Vec::new();
    Writer::new(&mut out)
        .u32(target.target_id())
        .str(&target.stamp().uuid_string())
        .u64(cap.total_bytes)
        .u64(cap.available_bytes)
        .u64(cap.used_bytes);
    Ok(out)
}

/// The body of the reply to [`Opcode::Targets`] of a server `instance` serving `targets`,
/// each registered at its endpoint.
pub(super) fn served_reply(instance: u64, targets: &[(u32, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = Writer::new(&mut out);
    w.u64(instance).u32(targets.len() as u32);
    for (id, endpoint) in targets {
        w.u32(*id).str(endpoint);
    }
    out
}

/// Sync, truncate, punch, stat, remove, create: one piece per extent, no payload.
fn plain(opcode: Opcode, target: usize, body: &[u8]) -> Result<Prepared, Failure> {
    let mut extents = Vec::new();
    decode(body, &mut extents)?;
    let pieces = extents
        .iter()
        .map(|e| Piece {
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
            target,
            object_id: e.object_id,
            offset_bytes: e.offset_bytes,
        })
        .collect();
    Ok(Prepared {
        opcode,
        extents,
        pieces,
        staging: None,
    })
}

/// A read or a write: its extents laid over staging memory of the pool; `None` when the
/// server holds its bound of staging.
fn transfer(
    ctx: &Context,
    t: usize,
    header: &Header,
    body: &[u8],
) -> Result<Option<Prepared>, Failure> {
    let mut extents = Vec::new();
    let total = decode(body, &mut extents)?;
    let write = header.opcode == Opcode::Write;
    if write && total != header.payload_len {
        return Err(Failure {
            errno: libc::EINVAL,
            message: format!(
                "write extents add up to {total} bytes; the payload is {}",
                header.payload_len
            ),
        });
    }
    if total > MAX_PAYLOAD_BYTES {
        return Err(Failure {
            errno: libc::EINVAL,
            message: format!(
                "a {} of {total} bytes; at most {MAX_PAYLOAD_BYTES} go in one request",
                if write { "write" } else { "read" }
            ),
        });
    }
    let Some(reserved) = ctx.reserve(total as usize) else {
        return Ok(None);
    };
    let mut staging = Staging::new(&ctx.pool, total as usize, reserved)?;
    let pieces = if write {
        staging.pieces(t, &extents, |buf, len| PieceOp::Write { buf, len })
    } else {
        staging.pieces(t, &extents, |buf, len| PieceOp::Read { buf, len })
    };
    Ok(Some(Prepared {
        opcode: header.opcode,
        extents,
        pieces,
        staging: Some(staging),
    }))
}

/// The reply to a request whose pieces all ran, `results` in piece order. A read's reply
/// carries each extent's full length (zeros past the object's end) as payload, and in its
/// body each extent's bytes that exist, so the client can tell a short read from a hole;
/// stat-like requests answer one number per extent.
pub(super) fn finish(prepared: &Prepared, results: &[PieceResult]) -> Answer {
    let failed = |e: &IoError| Answer {
        status: e.errno(),
        body: e.to_string().into_bytes(),
        payload_len: 0,
    };
    match prepared.opcode {
        Opcode::Read => {
            let mut body = Vec::with_capacity(prepared.extents.len() * 8);
            let mut at = 0;
            let mut total = 0u64;
            for extent in &prepared.extents {
                let mut left = extent.len;
                let mut present = 0u64;
                while left > 0 {
                    let PieceOp::Read { buf, len } = prepared.pieces[at].op else {
                        unreachable!("a read's pieces are reads")
                    };
                    let got = match &results[at] {
                        Ok(n) => *n as usize,
                        Err(e) => return failed(e),
                    };
                    if got < len {
                        // SAFETY: the piece's run is over, so its memory (`len` bytes at
                        // `buf`, inside the staging) is the caller's alone again.
                        unsafe { std::ptr::write_bytes(buf.add(got), 0, len - got) };
                    }
                    present += got as u64;
                    left -= len as u64;
                    at += 1;
                }
                total += extent.len;
                body.extend_from_slice(&present.to_le_bytes());
            }
            Answer {
                status: 0,
                body,
                payload_len: total,
            }
        }
        Opcode::Write => match results.iter().find_map(|r| r.as_ref().err()) {
            Some(e) => failed(e),
            None => Answer {
                status: 0,
                body: Vec::new(),
                payload_len: 0,
            },
        },
        _ => {
            let mut body = Vec::with_capacity(results.len() * 8);
            for r in results {
                match r {
                    Ok(n) => body.extend_from_slice(&n.to_le_bytes()),
                    Err(e) => return failed(e),
                }
            }
            Answer {
                status: 0,
                body,
                payload_len: 0,
            }
        }
    }
}

/// The memory a request's payload lives in: chunks of the registered pool, or, when the
/// pool is exhausted, an aligned allocation of its own (still O_DIRECT-able, not registered).
pub(super) struct Staging {
    chunks: Vec<PoolBuf>,
    heap: Option<AlignedBuf>,
    chunk_bytes: usize,
    len: usize,
    /// Its share of the server's bound, given back when it goes.
    reserved: Reserved,
}

/// Bytes of staging counted in the server's total ([`Context::staged`]) until dropped.
pub(super) struct Reserved {
    counter: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl Staging {
    /// Chunks of the pool for `len` bytes, or memory of its own when the pool has too few
    /// free; ENOMEM when the system refuses that memory.
    fn new(pool: &MemPool, len: usize, reserved: Reserved) -> Result<Staging, Failure> {
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
            let heap = AlignedBuf::zeroed(len.max(1)).map_err(|e| Failure {
                errno: libc::ENOMEM,
                message: format!("no memory for a request's {len} bytes: {e}"),
            })?;
            return Ok(Staging {
                chunks,
                heap: Some(heap),
                chunk_bytes,
                len,
                reserved,
            });
        }
        Ok(Staging {
            chunks,
            heap: None,
            chunk_bytes,
            len,
            reserved,
        })
    }

    /// Bytes of payload it holds.
    pub(super) fn len(&self) -> usize {
        self.len
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

    /// The memory as destinations for a payload. The caller must not let it be read or
    /// written by pieces at the same time.
    pub(super) fn slices_mut(&mut self) -> Vec<IoSliceMut<'_>> {
        self.regions()
            .into_iter()
            // SAFETY: each region is memory this staging owns, valid for its length while
            // `self` is borrowed; no piece runs on it while a payload is received.
            .map(|(p, n)| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(p, n) }))
            .collect()
    }

    /// The memory as a reply's payload (once the pieces that fill it are done).
    pub(super) fn slices(&mut self) -> Vec<IoSlice<'_>> {
        self.regions()
            .into_iter()
            // SAFETY: as in slices_mut, shared.
            .map(|(p, n)| IoSlice::new(unsafe { std::slice::from_raw_parts(p, n) }))
            .collect()
    }

    /// The memory as a reply's payload written from it later (once the pieces that fill it
    /// are done): the caller keeps the staging, untouched, until the reply is written.
    pub(super) fn spans(&mut self) -> Vec<Span> {
        self.regions()
            .into_iter()
            .map(|(ptr, len)| Span { ptr, len })
            .collect()
    }

    /// Lays the extents (of target `target`'s objects) out over the memory in order,
    /// cutting them where a chunk (or [`MAX_IO_PIECE_BYTES`]) ends.
    fn pieces(
        &mut self,
        target: usize,
        extents: &[Extent],
        op: impl Fn(*mut u8, usize) -> PieceOp,
    ) -> Vec<Piece> {
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
                    target,
                    object_id: e.object_id,
                    offset_bytes: e.offset_bytes + done,
                });
                done += n as u64;
                in_region += n;
            }
        }
        out
    }

    /// Gives up the memory without freeing it: a piece that did not finish in time may
    /// still use it. Its share of the server's staging bound is given back all the same:
    /// kept, it would count against the bound for ever, and enough of them would stop
    /// every later transfer until a restart. Giving up is rare (storage that did not answer
    /// for [`WORKER_REPLY_TIMEOUT_MS`](crate::limits::WORKER_REPLY_TIMEOUT_MS)) and
    /// logged.
    pub(super) fn abandon(mut self) {
        for c in self.chunks.drain(..) {
            std::mem::forget(c);
        }
        if let Some(h) = self.heap.take() {
            std::mem::forget(h);
        }
        drop(self.reserved);
    }
}
