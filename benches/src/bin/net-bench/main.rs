//! `net-bench`: Nacre's transport measured the way `scripts/bench-net.sh` compares it with
//! iperf3 and with a plain blocking-socket ping-pong.
//!
//! ```text
//! net-bench server   --listen ENDPOINT [--seconds S] [--zc]
//! net-bench bulk     --connect ENDPOINT [--size BYTES] [--conns N] [--window W] [--seconds S] [--zc]
//! net-bench pingpong --connect ENDPOINT [--size BYTES] [--seconds S]
//! net-bench plain-server --listen HOST:PORT [--size BYTES] [--seconds S]
//! net-bench plain-pingpong --connect HOST:PORT [--size BYTES] [--seconds S]
//! net-bench loop-server   --listen ENDPOINT [--seconds S]
//! net-bench loop-bulk     --connect ENDPOINT [--size BYTES] [--conns N] [--window W] [--seconds S]
//! net-bench loop-pingpong --connect ENDPOINT [--size BYTES] [--seconds S]
//! ```
//! `server`, `bulk` and `pingpong` use the blocking connections (a thread each), as the
//! metadata path does; the `loop-` commands use the engine's data path ([`evloop`]): one
//! thread drives all of a side's connections. Servers print `listening on ADDRESS` once ready and stop after `--seconds` (default 120)
//! or when killed. Clients print one line of `key=value` figures.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod evloop;

use nacre_benches::parse_size;
use nacre_transport::Endpoint;
use nacre_transport::client::{ConnectOptions, Connection};
use nacre_transport::server::{Listener, ServerConnection};
use nacre_transport::wire::Opcode;

/// How often an idle server looks at its deadline.
const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// Most requests kept in flight on one connection by the bulk client.
const MAX_WINDOW: usize = 64;
/// Most connections the bulk client opens.
const MAX_CONNS: usize = 64;
/// Largest message size the benchmark takes.
const MAX_SIZE_BYTES: u64 = 16 << 20;

struct Args {
    endpoint: String,
    size_bytes: u64,
    conns: usize,
    window: usize,
    seconds: f64,
    send_zc: bool,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        endpoint: String::new(),
        size_bytes: 1 << 20,
        conns: 1,
        window: 4,
        seconds: 5.0,
        send_zc: false,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" | "--connect" => args.endpoint = value()?,
            "--zc" => args.send_zc = true,
            "--size" => {
                args.size_bytes = parse_size(&value()?)?;
                if args.size_bytes == 0 || args.size_bytes > MAX_SIZE_BYTES {
                    return Err(format!("--size {}: allowed 1 byte to 16M", args.size_bytes));
                }
            }
            "--conns" => args.conns = value()?.parse().map_err(|_| "--conns takes a number")?,
            "--window" => args.window = value()?.parse().map_err(|_| "--window takes a number")?,
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|_| "--seconds takes a number")?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.endpoint.is_empty() {
        return Err("--listen or --connect is required".into());
    }
    if !(1..=MAX_CONNS).contains(&args.conns) {
        return Err(format!("--conns {}: allowed 1 to {MAX_CONNS}", args.conns));
    }
    if !(1..=MAX_WINDOW).contains(&args.window) {
        return Err(format!(
            "--window {}: allowed 1 to {MAX_WINDOW}",
            args.window
        ));
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(format!(
            "--seconds {}: allowed above 0 up to 3600",
            args.seconds
        ));
    }
    Ok(args)
}

fn endpoint(text: &str) -> Result<Endpoint, String> {
    Endpoint::parse(text).map_err(|e| e.to_string())
}

/// Serves Write (payload received into a reused buffer, empty reply) and Ping (payload echoed).
fn serve_connection(mut conn: ServerConnection, send_zc: bool) {
    if send_zc && conn.enable_send_zc().is_err() {
        return;
    }
    let mut body = Vec::new();
    let mut buf = vec![0u8; MAX_SIZE_BYTES as usize];
    while let Ok(Some(req)) = conn.next_request(&mut body) {
        let len = req.header.payload_len as usize;
        if len > buf.len()
            || conn
                .recv_payload(&mut [IoSliceMut::new(&mut buf[..len])])
                .is_err()
        {
            return;
        }
        let payload = [IoSlice::new(&buf[..len])];
        let echo: &[IoSlice<'_>] = if req.header.opcode == Opcode::Ping {
            &payload
        } else {
            &[]
        };
        if conn.reply(&req, 0, &[], echo).is_err() {
            return;
        }
    }
}

fn server(args: &Args) -> Result<(), String> {
    let listener = Listener::bind(&endpoint(&args.endpoint)?).map_err(|e| e.to_string())?;
    println!("listening on {}", listener.endpoint());
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    while Instant::now() < deadline {
        if let Some(conn) = listener.accept(ACCEPT_POLL).map_err(|e| e.to_string())? {
            let send_zc = args.send_zc;
            std::thread::spawn(move || serve_connection(conn, send_zc));
        }
    }
    Ok(())
}

fn bulk(args: &Args) -> Result<(), String> {
    let ep = endpoint(&args.endpoint)?;
    let duration = Duration::from_secs_f64(args.seconds);
    let threads: Vec<_> = (0..args.conns)
        .map(|_| {
            let ep = ep.clone();
            let (size, window) = (args.size_bytes as usize, args.window);
            std::thread::spawn(move || -> Result<u64, String> {
                let mut conn = Connection::connect(&ep, ConnectOptions::default())
                    .map_err(|e| e.to_string())?;
                let payload = vec![0x5Au8; size];
                let mut inflight = std::collections::VecDeque::with_capacity(window);
                let mut body = Vec::new();
                let mut bytes = 0u64;
                let start = Instant::now();
                while start.elapsed() < duration || !inflight.is_empty() {
                    if start.elapsed() < duration && inflight.len() < window {
                        let id = conn
                            .send_request(Opcode::Write, &[], &[IoSlice::new(&payload)])
                            .map_err(|e| e.to_string())?;
                        inflight.push_back(id);
                        continue;
                    }
                    if let Some(id) = inflight.pop_front() {
                        conn.recv_reply(id, &mut body, &mut [])
                            .map_err(|e| e.to_string())?;
                        bytes += size as u64;
                    }
                }
                Ok(bytes)
            })
        })
        .collect();
    let start = Instant::now();
    let mut bytes = 0;
    for t in threads {
        bytes += t
            .join()
            .map_err(|_| "a client thread panicked".to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mode=bulk conns={} size={} gbps={:.3} secs={secs:.3}",
        args.conns,
        args.size_bytes,
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

fn report_rtts(mode: &str, size: u64, mut rtts_us: Vec<f64>) {
    rtts_us.sort_by(f64::total_cmp);
    let median = rtts_us.get(rtts_us.len() / 2).copied().unwrap_or(0.0);
    let p99 = rtts_us
        .get(rtts_us.len() * 99 / 100)
        .copied()
        .unwrap_or(0.0);
    let mean = rtts_us.iter().sum::<f64>() / rtts_us.len().max(1) as f64;
    println!(
        "mode={mode} size={size} count={} median_us={median:.2} mean_us={mean:.2} p99_us={p99:.2}",
        rtts_us.len()
    );
}

fn pingpong(args: &Args) -> Result<(), String> {
    let mut conn = Connection::connect(&endpoint(&args.endpoint)?, ConnectOptions::default())
        .map_err(|e| e.to_string())?;
    let out = vec![0x33u8; args.size_bytes as usize];
    let mut back = vec![0u8; args.size_bytes as usize];
    let mut body = Vec::new();
    let mut rtts = Vec::new();
    let duration = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        let id = conn
            .send_request(Opcode::Ping, &[], &[IoSlice::new(&out)])
            .map_err(|e| e.to_string())?;
        conn.recv_reply(id, &mut body, &mut [IoSliceMut::new(&mut back)])
            .map_err(|e| e.to_string())?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report_rtts("pingpong", args.size_bytes, rtts);
    Ok(())
}

fn plain_server(args: &Args) -> Result<(), String> {
    let listener = TcpListener::bind(&args.endpoint).map_err(|e| e.to_string())?;
    println!(
        "listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs_f64(args.seconds)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; args.size_bytes as usize];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            break;
        }
    }
    Ok(())
}

fn plain_pingpong(args: &Args) -> Result<(), String> {
    let mut stream = TcpStream::connect(&args.endpoint).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let out = vec![0x33u8; args.size_bytes as usize];
    let mut back = vec![0u8; args.size_bytes as usize];
    let mut rtts = Vec::new();
    let duration = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        stream.write_all(&out).map_err(|e| e.to_string())?;
        stream.read_exact(&mut back).map_err(|e| e.to_string())?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report_rtts("plain-pingpong", args.size_bytes, rtts);
    Ok(())
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().unwrap_or_default();
    let result = parse(argv).and_then(|args| match command.as_str() {
        "server" => server(&args),
        "bulk" => bulk(&args),
        "pingpong" => pingpong(&args),
        "plain-server" => plain_server(&args),
        "plain-pingpong" => plain_pingpong(&args),
        "loop-server" => evloop::server(&args),
        "loop-bulk" => evloop::bulk(&args),
        "loop-pingpong" => evloop::pingpong(&args),
        other => Err(format!(
            "unknown command '{other}'; expected server, bulk, pingpong, plain-server, \
             plain-pingpong, loop-server, loop-bulk or loop-pingpong"
        )),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("net-bench: {message}");
            ExitCode::from(2)
        }
    }
}
