//! `nacre serve` and `nacre mkfs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nacre::io::Target;
use nacre::{MetaServer, TargetConfig, TargetServer, TargetSpec};

use crate::{Failure, outln};

/// How often `serve` looks whether it was asked to stop.
const STOP_POLL_MS: u64 = 100;
/// The port the metadata service listens on by default.
const DEFAULT_META_LISTEN: &str = "auto://0.0.0.0:7400";
/// Where targets listen by default (each target takes the next port).
const DEFAULT_TARGET_LISTEN: &str = "auto://0.0.0.0:7401";

/// `nacre serve`.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Serve these target directories (formatted with `nacre mkfs`), one listener each;
    /// they share the server's worker threads and memory.
    #[arg(long = "target", value_name = "DIR")]
    targets: Vec<PathBuf>,
    /// With --target: the metadata service to register with (host:port or a URI).
    /// Without: serve the metadata service, keeping its database in this directory.
    #[arg(long, value_name = "ADDR|DIR")]
    meta: String,
    /// Where to listen (tcp://, rdma:// or auto://host:port). Targets take consecutive
    /// ports from this one (port 0: any free port each).
    #[arg(long)]
    listen: Option<String>,
    /// The address targets register, when clients must reach them by another name than
    /// the listening one (e.g. listening on 0.0.0.0). Consecutive ports as for --listen.
    #[arg(long)]
    advertise: Option<String>,
    /// Pools the targets belong to.
    #[arg(long = "pool", value_name = "NAME")]
    pools: Vec<String>,
    /// Worker threads, shared by the targets served (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Registered memory per target, in MiB (one pool for all the targets served).
    #[arg(long, default_value_t = 256)]
    pool_mib: usize,
    /// With the metadata service: how often, in seconds, associations with --auto-import
    /// events list their prefix and reflect new, changed and deleted objects.
    #[arg(long, env = "NACRE_AUTO_IMPORT_INTERVAL", default_value_t = 60)]
    auto_import_interval: u64,
    /// With the metadata service: run no data repository tasks (they wait, pending, for a
    /// service that runs them: for maintenance, and for tests of pending tasks).
    #[arg(long, env = "NACRE_NO_TASK_RUNNER", value_parser = clap::builder::BoolishValueParser::new())]
    no_task_runner: bool,
}

/// `nacre mkfs`.
#[derive(clap::Args, Debug)]
pub(crate) struct MkfsArgs {
    /// The target's index (its id in layouts and `nacre df`).
    #[arg(long)]
    index: u32,
    /// The directory to format (created if missing; must be empty of a target).
    dir: PathBuf,
}

pub(crate) fn mkfs(args: MkfsArgs) -> Result<(), Failure> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let stamp = Target::format(&args.dir, args.index).map_err(nacre::Error::from)?;
    outln!(
        "formatted {} as target {} (uuid {})",
        args.dir.display(),
        stamp.target_id,
        stamp.uuid_string()
    );
    Ok(())
}

/// Sets the flag on SIGINT and SIGTERM.
fn stop_on_signals() -> Result<Arc<AtomicBool>, Failure> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    Ok(flag)
}

/// Where a process on this host reaches a server listening at `endpoint` (a wildcard
/// address as loopback).
fn local_endpoint(endpoint: &nacre::transport::Endpoint) -> String {
    let mut local = endpoint.clone();
    if local.host == "0.0.0.0" || local.host == "::" {
        local.host = "127.0.0.1".into();
    }
    local.to_string()
}

fn with_port(uri: &str, i: usize) -> Result<String, Failure> {
    let endpoint = nacre::transport::Endpoint::parse(uri).map_err(nacre::Error::from)?;
    let port = if endpoint.port == 0 {
        0
    } else {
        u16::try_from(usize::from(endpoint.port) + i)
            .map_err(|_| format!("{uri}: no port left for target {i}"))?
    };
    Ok(nacre::transport::Endpoint { port, ..endpoint }.to_string())
}

pub(crate) fn serve(args: ServeArgs) -> Result<(), Failure> {
    let stop = stop_on_signals()?;
    if args.targets.is_empty() {
        let dir = PathBuf::from(&args.meta);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let listen = args.listen.as_deref().unwrap_or(DEFAULT_META_LISTEN);
        // The repository mover fetches released files' data from S3 on first read.
        let mover = Arc::new(nacre_repo::Mover::new().map_err(|e| format!("nacre meta: {e}"))?);
        let repository: Arc<dyn nacre::meta::repo::Repository> = mover.clone();
        let server = MetaServer::start_with(&dir.join("meta.redb"), listen, Some(repository))?;
        mover.set_meta(&local_endpoint(server.endpoint()));
        outln!(
            "nacre meta: serving {} at {}",
            dir.display(),
            server.endpoint()
        );
        let interval = Duration::from_secs(args.auto_import_interval.max(1));
        let (meta, poll_stop) = (local_endpoint(server.endpoint()), Arc::clone(&stop));
        let poller = std::thread::Builder::new()
            .name("nacre-auto-import".into())
            .spawn(move || auto_import(&meta, interval, &poll_stop))
            .map_err(|e| format!("nacre meta: cannot start the auto-import thread: {e}"))?;
        // The task runner: imports, exports and restores asked for by clients, kept in the
        // store (decision 0021).
        let (meta, task_stop) = (local_endpoint(server.endpoint()), Arc::clone(&stop));
        let runs_tasks = !args.no_task_runner;
        let runner = std::thread::Builder::new()
            .name("nacre-tasks".into())
            .spawn(move || match nacre_repo::S3Access::new() {
                Ok(_) if !runs_tasks => {}
                Ok(s3) => nacre_repo::run_tasks(&meta, &s3, &task_stop),
                Err(e) => nacre::transport::log_line!("nacre meta: tasks are off: {e}"),
            })
            .map_err(|e| format!("nacre meta: cannot start the task runner: {e}"))?;
        wait_for(&stop);
        let _ = poller.join();
        let _ = runner.join();
        server.stop();
        outln!("nacre meta: stopped");
        return Ok(());
    }
    let listen = args.listen.as_deref().unwrap_or(DEFAULT_TARGET_LISTEN);
    let mut specs = Vec::with_capacity(args.targets.len());
    for (i, dir) in args.targets.iter().enumerate() {
        specs.push(TargetSpec {
            dir: dir.clone(),
            listen: with_port(listen, i)?,
            advertise: args
                .advertise
                .as_deref()
                .map(|a| with_port(a, i))
                .transpose()?,
        });
    }
    let config = TargetConfig {
        workers: args.workers,
        pool: nacre::mem::PoolConfig {
            chunk_bytes: 1024 * 1024,
            chunks: args.pool_mib.max(1).saturating_mul(specs.len()),
            huge_pages: true,
            lock: true,
        },
        meta: Some(args.meta.clone()),
        pools: args.pools.clone(),
        ..TargetConfig::default()
    };
    let server = TargetServer::start_shared(&specs, &config)?;
    for (spec, s) in specs.iter().zip(server.served()) {
        outln!(
            "nacre target {}: serving {} at {}",
            s.target_id(),
            spec.dir.display(),
            s.endpoint
        );
    }
    wait_for(&stop);
    let ids: Vec<u32> = server.served().iter().map(|s| s.target_id()).collect();
    server.stop();
    for id in ids {
        outln!("nacre target {id}: stopped");
    }
    Ok(())
}

/// Every `interval` until `stop`: the associations with auto-import events (and available)
/// list their prefix and reflect what changed; a line per association that changed.
fn auto_import(meta: &str, interval: Duration, stop: &AtomicBool) {
    let s3 = match nacre_repo::S3Access::new() {
        Ok(s3) => s3,
        Err(e) => {
            nacre::transport::log_line!("nacre meta: auto-import is off: {e}");
            return;
        }
    };
    let mut client: Option<nacre::Client> = None;
    loop {
        let deadline = std::time::Instant::now() + interval;
        while std::time::Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(STOP_POLL_MS));
        }
        let c = match &client {
            Some(c) => c.clone(),
            None => match nacre::Client::connect(meta) {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    nacre::transport::log_line!("nacre meta: auto-import: {e}");
                    continue;
                }
            },
        };
        let all = match c.repo_list() {
            Ok(all) => all,
            Err(e) => {
                nacre::transport::log_line!("nacre meta: auto-import: {e}");
                continue;
            }
        };
        for assoc in all
            .iter()
            .filter(|a| a.auto_import != 0 && a.state == nacre::meta::repo::AssocState::Available)
        {
            match nacre_repo::import_events(&c, &s3, assoc, assoc.auto_import, |_, _| {
                if stop.load(Ordering::SeqCst) {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            }) {
                Ok(r) if r.created + r.updated + r.deleted + r.dirs > 0 || !r.failed.is_empty() => {
                    let first = r.failed.first().map_or(String::new(), |f| {
                        format!(" (first: {} {}: {})", f.path, f.code, f.message)
                    });
                    nacre::transport::log_line!(
                        "nacre meta: auto-import {}: {} created, {} updated, {} deleted, {} failed{first}",
                        assoc.path,
                        r.created,
                        r.updated,
                        r.deleted,
                        r.failed.len()
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    nacre::transport::log_line!("nacre meta: auto-import {}: {e}", assoc.path)
                }
            }
        }
    }
}

fn wait_for(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(STOP_POLL_MS));
    }
}
