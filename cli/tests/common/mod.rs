//! A cluster of real processes for the command's tests: the metadata service and targets,
//! each a `nacre serve` child listening on loopback TCP, on a temporary directory. Every wait
//! has a deadline; on drop every child still running gets SIGTERM, then SIGKILL when it has
//! not stopped by [`STOP_TIMEOUT`], and the directory is removed, whether the test passed
//! or not.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nacre::{Client, ClientOptions};

/// The command under test.
pub(crate) const NACRE_BIN: &str = env!("CARGO_BIN_EXE_nacre");
/// How long a service may take to say it is serving (debug builds on a busy machine).
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service may take to stop after SIGTERM before it gets SIGKILL.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one client command may run.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait for a child's exit looks again.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Targets stay small: one worker, 16 MiB of registered memory.
const TARGET_WORKERS: &str = "1";
const TARGET_POOL_MIB: &str = "16";

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

static NEXT_PORT: AtomicU64 = AtomicU64::new(0);
/// The lowest port [`free_port`] hands out.
const FIRST_TEST_PORT: u64 = 10_000;

/// A port on the loopback free a moment ago, below the kernel's ephemeral range: a port
/// `bind(0)` picks is also what any outgoing connection may take before the server it is
/// for binds it (a clean run once lost a target so: "Address already in use"). Ports come
/// from a sequence of this process's own (offset by its pid, so that two test processes
/// seldom meet), the first that binds now.
pub(crate) fn free_port() -> u16 {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(FIRST_TEST_PORT).max(1_000);
    let offset = u64::from(std::process::id()) * 7_919;
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = (FIRST_TEST_PORT + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The pattern byte of offset `at` under `seed`.
pub(crate) fn pattern(seed: u64, at: u64) -> u8 {
    let x = (at ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 | 1
}

/// `len` pattern bytes starting at offset `offset`.
pub(crate) fn fill(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(seed, offset + i)).collect()
}

/// Makes the child get SIGKILL if the thread that started it dies, so a test process killed
/// outright leaves no servers behind (the drop guards cover every other way out).
/// Makes `command`'s process start with at most `files` open descriptors, soft and hard
/// limit alike (so it cannot raise its own).
pub(crate) fn limit_open_files(command: &mut Command, files: u64) {
    // SAFETY: the closure runs in the child between fork and exec and only calls setrlimit,
    // which is async-signal-safe, allocates nothing and reads only the local struct.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe, allocates nothing and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits for `child` to exit until `deadline`; `None` if it is still running then.
pub(crate) fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(EXIT_POLL_INTERVAL),
            Ok(None) => return None,
            Err(e) => panic!("cannot wait for child {}: {e}", child.id()),
        }
    }
}

/// Runs `command` to its end (killed and a panic after [`COMMAND_TIMEOUT`]) and returns
/// what it printed.
pub(crate) fn run(command: Command) -> Output {
    run_to(command, Stdio::piped())
}

/// As [`run`], with standard output going to `stdout` (`Output::stdout` holds it only when
/// piped).
pub(crate) fn run_to(mut command: Command, stdout: Stdio) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = child.stdout.take().map(|pipe| drain(Box::new(pipe)));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let Some(status) = wait_until(&mut child, Instant::now() + COMMAND_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} hung: still running after {COMMAND_TIMEOUT:?}");
    };
    Output {
        status,
        stdout: stdout.map(|d| d.join().unwrap()).unwrap_or_default(),
        stderr: stderr.join().unwrap(),
    }
}

/// `nacre ARGS` without a cluster.
pub(crate) fn nacre(args: &[&str]) -> Output {
    let mut command = Command::new(NACRE_BIN);
    command.args(args).env_remove("NACRE_META");
    run(command)
}

/// A child process whose standard output is read line by line on a thread of its own (so
/// it never blocks on a full pipe), and which is stopped on drop.
pub(crate) struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    /// Where its standard error goes, if to a file.
    stderr_log: Option<PathBuf>,
}

impl Process {
    /// Starts `command` with piped standard input and output; standard error goes to
    /// `stderr_log` (appended) or, without one, to the test's.
    pub(crate) fn start(name: &str, mut command: Command, stderr_log: Option<&Path>) -> Process {
        let stderr = match stderr_log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::inherit(),
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Process {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            lines,
            reader: Some(reader),
            stderr_log: stderr_log.map(Path::to_path_buf),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_text(&self) -> String {
        self.stderr_log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits until it prints a line containing `text` and returns the line; panics, with
    /// what it wrote on standard error, if it exits first or `timeout` passes.
    pub(crate) fn wait_for_line(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{} did not print {text:?} within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{} exited before printing {text:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Writes a line to its standard input.
    pub(crate) fn send_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for it to exit until `timeout` passes; panics if it does not.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match wait_until(&mut self.child, Instant::now() + timeout) {
            Some(status) => status,
            None => panic!("{} still running after {timeout:?}", self.name),
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM if it is still running (and so not reaped: the pid is still its own).
    pub(crate) fn terminate(&mut self) {
        if self.running() {
            let pid = libc::pid_t::try_from(self.child.id()).unwrap();
            // SAFETY: kill(2) touches no memory; the pid is our unreaped child's.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// SIGKILL, and waits for it to be gone.
    pub(crate) fn kill(mut self) {
        if self.running() {
            self.child.kill().unwrap();
        }
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
        if wait_until(&mut self.child, Instant::now() + STOP_TIMEOUT).is_none() {
            eprintln!(
                "{} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it",
                self.name
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        drop(self.stdin.take());
        // Its standard output is closed now that it is gone: the reader ends.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A directory under the system's temporary directory, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("nacre-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A metadata service and targets, each its own `nacre serve` process.
pub(crate) struct Cluster {
    meta_port: u16,
    /// The metadata service's address, as clients and `--meta` take it.
    pub meta_addr: String,
    meta: Option<Process>,
    targets: Vec<Option<Process>>,
    target_ports: Vec<u16>,
    /// The open-file limit its servers start with, if one is set.
    fd_limit: Option<u64>,
    /// Environment the metadata service and the commands get (S3 credentials, say).
    env: Vec<(String, String)>,
    // Last: removed after every process is gone.
    dir: TempDir,
}

impl Cluster {
    /// Starts a metadata service and `targets` targets (ids 0 to `targets - 1`), and waits
    /// until each says it is serving.
    pub(crate) fn start(tag: &str, targets: u32) -> Cluster {
        Cluster::start_with_fd_limit(tag, targets, None)
    }

    /// As [`Cluster::start`], every server starting with at most `fd_limit` open
    /// descriptors (soft and hard) when given.
    pub(crate) fn start_with_fd_limit(tag: &str, targets: u32, fd_limit: Option<u64>) -> Cluster {
        Cluster::start_with(tag, targets, fd_limit, &[])
    }

    /// As [`Cluster::start`], the metadata service and every command run with `env` added
    /// to this process's environment.
    pub(crate) fn start_with_env(tag: &str, targets: u32, env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with(tag, targets, None, env)
    }

    fn start_with(tag: &str, targets: u32, fd_limit: Option<u64>, env: &[(&str, &str)]) -> Cluster {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.0.join("logs")).unwrap();
        let meta_port = free_port();
        let mut cluster = Cluster {
            meta_port,
            meta_addr: format!("tcp://127.0.0.1:{meta_port}"),
            meta: None,
            targets: Vec::new(),
            target_ports: Vec::new(),
            fd_limit,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dir,
        };
        cluster.restart_meta();
        for i in 0..targets {
            let target_dir = cluster.target_dir(i);
            let index = i.to_string();
            let out = nacre(&["mkfs", "--index", &index, target_dir.to_str().unwrap()]);
            assert!(out.status.success(), "mkfs {i}: {}", text(&out.stderr));
            cluster.target_ports.push(free_port());
            cluster.targets.push(None);
        }
        // Start every target, then wait for each: they come up in parallel.
        let started: Vec<Process> = (0..targets).map(|i| cluster.spawn_target(i)).collect();
        for (i, process) in started.into_iter().enumerate() {
            cluster.targets[i] = Some(process);
        }
        for process in cluster.targets.iter().flatten() {
            process.wait_for_line("serving", START_TIMEOUT);
        }
        cluster
    }

    /// The temporary directory (for local files too).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Target `i`'s directory.
    pub(crate) fn target_dir(&self, i: u32) -> PathBuf {
        self.dir.0.join(format!("target{i}"))
    }

    /// Where target `i` listens.
    pub(crate) fn target_endpoint(&self, i: u32) -> String {
        format!("tcp://127.0.0.1:{}", self.target_ports[i as usize])
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.0.join("logs").join(format!("{name}.stderr"))
    }

    fn spawn_target(&self, i: u32) -> Process {
        let name = format!("target{i}");
        let mut command = self.serve_target_command(i, &self.target_endpoint(i));
        if let Some(files) = self.fd_limit {
            limit_open_files(&mut command, files);
        }
        Process::start(&name, command, Some(&self.log(&name)))
    }

    /// Target `i`'s process id.
    pub(crate) fn target_pid(&self, i: u32) -> u32 {
        self.targets[i as usize].as_ref().unwrap().pid()
    }

    /// A `nacre serve` command for target `i`'s directory on `listen`, as the cluster
    /// starts its own (for a test that starts another).
    pub(crate) fn serve_target_command(&self, i: u32, listen: &str) -> Command {
        let mut command = Command::new(NACRE_BIN);
        command.args([
            "serve",
            "--target",
            self.target_dir(i).to_str().unwrap(),
            "--meta",
            &self.meta_addr,
            "--listen",
            listen,
            "--workers",
            TARGET_WORKERS,
            "--pool-mib",
            TARGET_POOL_MIB,
        ]);
        command
    }

    /// SIGKILLs target `i` and waits until it is gone.
    pub(crate) fn kill_target(&mut self, i: u32) {
        let process = self.targets[i as usize].take().unwrap();
        process.kill();
    }

    /// Starts target `i` again, on the same directory and port, and waits until it serves.
    pub(crate) fn restart_target(&mut self, i: u32) {
        assert!(self.targets[i as usize].is_none(), "target {i} is running");
        let process = self.spawn_target(i);
        process.wait_for_line("serving", START_TIMEOUT);
        self.targets[i as usize] = Some(process);
    }

    /// The metadata service's process id.
    pub(crate) fn meta_pid(&self) -> u32 {
        self.meta.as_ref().unwrap().pid()
    }

    /// What the metadata service wrote on its standard error so far.
    pub(crate) fn meta_log(&self) -> String {
        std::fs::read_to_string(self.log("meta")).unwrap_or_default()
    }

    /// What target `i` wrote on its standard error so far.
    pub(crate) fn target_log(&self, i: u32) -> String {
        std::fs::read_to_string(self.log(&format!("target{i}"))).unwrap_or_default()
    }

    /// SIGTERMs target `i` and waits (up to `timeout`) until it has exited; its status.
    pub(crate) fn stop_target(&mut self, i: u32, timeout: Duration) -> ExitStatus {
        let mut process = self.targets[i as usize].take().unwrap();
        process.terminate();
        process.wait_exit(timeout)
    }

    /// SIGTERMs the metadata service and waits (up to `timeout`) until it has exited.
    pub(crate) fn stop_meta(&mut self, timeout: Duration) -> ExitStatus {
        let mut process = self.meta.take().unwrap();
        process.terminate();
        process.wait_exit(timeout)
    }

    /// SIGKILLs the metadata service and waits until it is gone.
    pub(crate) fn kill_meta(&mut self) {
        self.meta.take().unwrap().kill();
    }

    /// Starts the metadata service (again), on the same directory and port, and waits until
    /// it serves.
    pub(crate) fn restart_meta(&mut self) {
        assert!(self.meta.is_none(), "the metadata service is running");
        let mut command = Command::new(NACRE_BIN);
        command.args([
            "serve",
            "--meta",
            self.dir.0.join("meta").to_str().unwrap(),
            "--listen",
            &self.meta_addr,
        ]);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(files) = self.fd_limit {
            limit_open_files(&mut command, files);
        }
        let process = Process::start("meta", command, Some(&self.log("meta")));
        process.wait_for_line("serving", START_TIMEOUT);
        self.meta = Some(process);
    }

    /// A client in this process with default options.
    pub(crate) fn client(&self) -> Client {
        Client::connect(&self.meta_addr).unwrap()
    }

    /// A client in this process with `options`.
    pub(crate) fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect_with(&self.meta_addr, options).unwrap()
    }

    /// `nacre ARGS` against this cluster (through NACRE_META).
    pub(crate) fn nacre(&self, args: &[&str]) -> Output {
        let mut command = Command::new(NACRE_BIN);
        command.args(args).env("NACRE_META", &self.meta_addr);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        run(command)
    }

    /// `nacre ARGS`, which must succeed; returns its standard output.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.nacre(args);
        assert!(
            out.status.success(),
            "nacre {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `nacre ARGS`, which must fail with exit status 1; returns its standard error.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let out = self.nacre(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "nacre {args:?}: stdout {:?} stderr {:?}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with("nacre: "), "nacre {args:?}: {stderr}");
        stderr
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Everyone is told at once; then each gets its deadline (Process::drop).
        for process in self.targets.iter_mut().flatten() {
            process.terminate();
        }
        self.targets.clear();
        if let Some(mut meta) = self.meta.take() {
            meta.terminate();
        }
    }
}

/// Bytes as text (lossy).
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A field of `/proc/PID/status` in its unit (kB for memory), e.g. `VmRSS`, `VmHWM`,
/// `Threads`.
pub(crate) fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
