//! The engine's TCP data path, measured on its own: a server that drives every connection
//! from one epoll loop through [`StreamConn`] (as a target worker does), and clients that
//! keep their requests in flight on [`PipeConn`]s driven by one thread (as a `nacre::Queue`
//! does).

use std::io::IoSliceMut;
use std::os::fd::AsFd as _;
use std::os::fd::BorrowedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nacre_transport::client::{ConnectOptions, Connection, Finished, PipeConn};
use nacre_transport::event::{Epoll, EventFd};
use nacre_transport::server::{Incoming, Listener, Progress, StreamConn};
use nacre_transport::wire::{ANY_TARGET, Header, Opcode};
use nacre_transport::{Span, TransportError};

use super::{ACCEPT_POLL, Args, MAX_SIZE_BYTES, endpoint, report_rtts};

/// Longest sleep of a loop in `epoll_wait`.
const WAIT: Duration = Duration::from_millis(100);
/// A client whose requests have seen no reply for this long gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The epoll token of the server's eventfd (new connections).
const WAKE_TOKEN: u64 = u64::MAX;
/// The token of a Ping's echo reply, whose payload is the connection's buffer.
const ECHO_TOKEN: u64 = 1;

/// Waits up to [`WAIT`] and puts the ready (token, readable) pairs in `ready`.
fn wait(epoll: &mut Epoll, ready: &mut Vec<(u64, bool)>) -> Result<(), String> {
    ready.clear();
    epoll
        .wait(WAIT, |token, readable| ready.push((token, readable)))
        .map_err(|e| format!("epoll_wait: {e}"))
}

/// Watches a connection's socket both ways, edge-triggered.
fn watch(epoll: &Epoll, fd: BorrowedFd<'_>, token: u64) -> Result<(), String> {
    epoll
        .add(fd, token, true)
        .map_err(|e| format!("epoll_ctl: {e}"))
}

/// One connection the loop server drives.
struct Served {
    conn: StreamConn,
    buf: Vec<u8>,
    /// The request whose payload is being received.
    current: Option<Header>,
    /// A Ping's echo is being written from `buf`: no payload may land there until it is.
    echoing: bool,
}

/// Serves Write (payload received into the connection's buffer, empty reply) and Ping
/// (payload echoed) on every connection from one epoll loop, until `--seconds` passed.
pub(crate) fn server(args: &Args) -> Result<(), String> {
    let listener = Listener::bind(&endpoint(&args.endpoint)?).map_err(|e| e.to_string())?;
    println!("listening on {}", listener.endpoint());
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let mut epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    let wake = EventFd::new().map_err(|e| format!("eventfd: {e}"))?;
    epoll
        .add(wake.as_fd(), WAKE_TOKEN, false)
        .map_err(|e| format!("epoll_ctl: {e}"))?;
    let (tx, rx) = mpsc::channel::<StreamConn>();
    std::thread::scope(|s| {
        let (listener, wake) = (&listener, &wake);
        s.spawn(move || {
            while Instant::now() < deadline {
                if let Ok(Some(conn)) = listener.accept(ACCEPT_POLL)
                    && let Ok(conn) = conn.into_stream()
                    && tx.send(conn).is_ok()
                {
                    wake.ring();
                }
            }
        });
        let mut conns: Vec<Option<Served>> = Vec::new();
        let mut events = Vec::new();
        while Instant::now() < deadline {
            wait(&mut epoll, &mut events)?;
            for &(token, readable) in &events {
                if token == WAKE_TOKEN {
                    wake.clear();
                    while let Ok(conn) = rx.try_recv() {
                        let token = conns.len() as u64;
                        watch(&epoll, conn.fd(), token)?;
                        conns.push(Some(Served {
                            conn,
                            buf: vec![0u8; MAX_SIZE_BYTES as usize],
                            current: None,
                            echoing: false,
                        }));
                    }
                    continue;
                }
                let slot = &mut conns[token as usize];
                // A closed or broken connection is dropped, which closes its socket.
                if let Some(c) = slot
                    && !matches!(serve(c, readable), Ok(true))
                {
                    *slot = None;
                }
            }
        }
        Ok(())
    })
}

/// Moves one connection as far as its socket allows; `Ok(false)` once the peer closed.
fn serve(c: &mut Served, readable: bool) -> Result<bool, TransportError> {
    if readable {
        c.conn.readable();
    }
    let mut sent = Vec::new();
    loop {
        let mut moved = false;
        if let Some(h) = c.current {
            let len = h.payload_len as usize;
            if len > 0
                && c.conn
                    .recv_payload(&mut [IoSliceMut::new(&mut c.buf[..len])])?
                    == Progress::Pending
            {
                c.conn.flush(&mut sent)?;
                return Ok(true);
            }
            if h.opcode == Opcode::Ping {
                let echo = vec![Span {
                    ptr: c.buf.as_mut_ptr(),
                    len,
                }];
                // SAFETY: `buf` lives as long as the connection and takes no payload while
                // `echoing` is set, which lasts until flush hands ECHO_TOKEN back.
                unsafe {
                    c.conn
                        .reply_with_payload(&h, 0, Vec::new(), echo, ECHO_TOKEN)?
                };
                c.echoing = true;
            } else {
                c.conn.reply(&h, 0, Vec::new(), 0)?;
            }
            c.current = None;
            moved = true;
        }
        if !c.echoing {
            match c.conn.recv_request()? {
                Incoming::Pending => {}
                Incoming::Closed => return Ok(false),
                Incoming::Request(h) => {
                    if h.payload_len > c.buf.len() as u64 {
                        return Ok(false);
                    }
                    c.current = Some(h);
                    moved = true;
                }
            }
        }
        c.conn.flush(&mut sent)?;
        if sent.drain(..).any(|t| t == ECHO_TOKEN) {
            c.echoing = false;
            moved = true;
        }
        if !moved {
            return Ok(true);
        }
    }
}

/// Opens a connection as the engine's queue does, as a [`PipeConn`].
fn pipe_connect(args: &Args) -> Result<PipeConn, String> {
    let conn = Connection::connect(&endpoint(&args.endpoint)?, ConnectOptions::default())
        .map_err(|e| e.to_string())?;
    let (stream, peer) = conn
        .into_tcp_stream()
        .map_err(|_| "the loop client speaks TCP only".to_string())?;
    PipeConn::new(stream, peer).map_err(|e| e.to_string())
}

/// Keeps `--window` 1 MiB (`--size`) writes in flight on each of `--conns` connections,
/// all driven by this one thread, for `--seconds`.
pub(crate) fn bulk(args: &Args) -> Result<(), String> {
    let mut epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    let mut conns = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let conn = pipe_connect(args)?;
        watch(&epoll, conn.fd(), i as u64)?;
        conns.push(conn);
    }
    let size = args.size_bytes as usize;
    let payload = vec![0x5Au8; size];
    let mut done: Vec<Finished> = Vec::new();
    let mut events = Vec::new();
    let duration = Duration::from_secs_f64(args.seconds);
    let (mut bytes, mut last_reply) = (0u64, Instant::now());
    let start = Instant::now();
    loop {
        let sending = start.elapsed() < duration;
        if !sending && conns.iter().all(|c| c.in_flight() == 0) {
            break;
        }
        for conn in conns.iter_mut() {
            while sending && conn.in_flight() < args.window {
                let from = vec![Span {
                    ptr: payload.as_ptr().cast_mut(),
                    len: size,
                }];
                // SAFETY: `payload` outlives every request (it is dropped after the loop,
                // which ends only with none in flight) and is only read.
                unsafe { conn.push(Opcode::Write, ANY_TARGET, Vec::new(), from, Vec::new(), 0) }
                    .map_err(|e| e.to_string())?;
            }
            if conn.wants_write() {
                conn.flush().map_err(|e| e.to_string())?;
            }
        }
        wait(&mut epoll, &mut events)?;
        for &(token, readable) in &events {
            let conn = &mut conns[token as usize];
            if readable {
                conn.readable();
            }
            if conn.wants_write() {
                conn.flush().map_err(|e| e.to_string())?;
            }
            conn.recv(&mut done).map_err(|e| e.to_string())?;
        }
        if !done.is_empty() {
            last_reply = Instant::now();
        }
        bytes += done.drain(..).map(|f| f.status).filter(|&s| s == 0).count() as u64 * size as u64;
        if last_reply.elapsed() > STALL_TIMEOUT {
            return Err(format!("no reply for {} s", STALL_TIMEOUT.as_secs()));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mode=loop-bulk conns={} size={size} gbps={:.3} secs={secs:.3}",
        args.conns,
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// Round trips of one Ping of `--size` bytes each way, one at a time, waiting in epoll as
/// the engine's blocking calls do.
pub(crate) fn pingpong(args: &Args) -> Result<(), String> {
    let mut epoll = Epoll::new().map_err(|e| format!("epoll_create1: {e}"))?;
    let mut conn = pipe_connect(args)?;
    watch(&epoll, conn.fd(), 0)?;
    let size = args.size_bytes as usize;
    let out = vec![0x33u8; size];
    let mut back = vec![0u8; size];
    let mut done: Vec<Finished> = Vec::new();
    let mut events = Vec::new();
    let mut rtts = Vec::new();
    let duration = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let from = vec![Span {
            ptr: out.as_ptr().cast_mut(),
            len: size,
        }];
        let into = vec![Span {
            ptr: back.as_mut_ptr(),
            len: size,
        }];
        // SAFETY: both buffers outlive the request, which ends in this iteration (or the
        // function returns an error, dropping the connection before them).
        unsafe { conn.push(Opcode::Ping, ANY_TARGET, Vec::new(), from, into, 0) }
            .map_err(|e| e.to_string())?;
        conn.flush().map_err(|e| e.to_string())?;
        while done.is_empty() {
            wait(&mut epoll, &mut events)?;
            for &(_, readable) in &events {
                if readable {
                    conn.readable();
                }
                if conn.wants_write() {
                    conn.flush().map_err(|e| e.to_string())?;
                }
                conn.recv(&mut done).map_err(|e| e.to_string())?;
            }
            if t.elapsed() > STALL_TIMEOUT {
                return Err(format!("no reply for {} s", STALL_TIMEOUT.as_secs()));
            }
        }
        if done
            .drain(..)
            .any(|f| f.status != 0 || f.payload_len != size as u64)
        {
            return Err("a ping came back wrong".into());
        }
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report_rtts("loop-pingpong", args.size_bytes, rtts);
    Ok(())
}
