//! The `nacre` command: run the services, manage the namespace and layouts, see the targets'
//! use, and measure the data path.
//!
//! Exit status: 0 on success, 1 when the operation failed (the message says what and
//! where), 2 on a usage error.
#![forbid(unsafe_code)]

mod bench;
mod repo;
mod serve;
mod stripe;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nacre::meta::types::{FileType, TimeSet};
use nacre::{Client, Error};

/// The metadata service the client commands use when --meta is not given.
const DEFAULT_META: &str = "127.0.0.1:7400";
/// The environment variable that names the metadata service.
const META_ENV: &str = "NACRE_META";

#[derive(Parser, Debug)]
#[command(
    name = "nacre",
    version,
    about = "Nacre: a striped parallel file system data path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the metadata service is, for client commands.
#[derive(clap::Args, Debug, Clone)]
struct MetaArg {
    /// The metadata service (host:port or tcp://, rdma://, auto://host:port).
    #[arg(long, env = META_ENV, default_value = DEFAULT_META)]
    meta: String,
}

impl MetaArg {
    /// Connects to the metadata service named; an empty or malformed name is refused
    /// naming where it came from (--meta or NACRE_META).
    fn connect(&self) -> Result<Client, Failure> {
        if self.meta.trim().is_empty() {
            return Err(Failure::Message(format!(
                "no metadata service given: --meta or {META_ENV} is empty (give host:port, \
                 e.g. {DEFAULT_META})"
            )));
        }
        if let Err(e) = nacre::transport::Endpoint::parse(&self.meta) {
            return Err(Failure::Message(format!(
                "--meta or {META_ENV} '{}': {e}",
                self.meta
            )));
        }
        Ok(Client::connect(&self.meta)?)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the metadata service (--meta DIR) or targets (--target DIR ... --meta ADDR).
    Serve(serve::ServeArgs),
    /// Format a directory as a target.
    Mkfs(serve::MkfsArgs),
    /// List a directory.
    Ls {
        #[command(flatten)]
        meta: MetaArg,
        /// Long listing: type, mode, owner, group, size.
        #[arg(short = 'l')]
        long: bool,
        /// The directory.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Show a path's attributes and size.
    Stat {
        #[command(flatten)]
        meta: MetaArg,
        /// Follow a symbolic link at the end of the path (as `stat -L`).
        #[arg(short = 'L', long)]
        dereference: bool,
        /// The path.
        path: String,
    },
    /// Make a link: `ln TARGET PATH` another name of a file, `ln -s TARGET PATH` a
    /// symbolic link.
    Ln {
        #[command(flatten)]
        meta: MetaArg,
        /// Make a symbolic link naming TARGET (any text, resolved when followed).
        #[arg(short = 's', long)]
        symbolic: bool,
        /// The file to name again, or what the symbolic link names.
        target: String,
        /// The new name.
        path: String,
    },
    /// Print what a symbolic link names.
    Readlink {
        #[command(flatten)]
        meta: MetaArg,
        /// The link.
        path: String,
    },
    /// Make a directory.
    Mkdir {
        #[command(flatten)]
        meta: MetaArg,
        /// Permission bits, in octal.
        #[arg(short = 'm', long, default_value = "755", value_parser = parse_mode)]
        mode: u32,
        /// Make missing parents too, and accept an existing directory.
        #[arg(short = 'p')]
        parents: bool,
        /// The directory.
        path: String,
    },
    /// Remove a file, or an empty directory with -d.
    Rm {
        #[command(flatten)]
        meta: MetaArg,
        /// Remove an empty directory.
        #[arg(short = 'd')]
        dir: bool,
        /// The path.
        path: String,
    },
    /// Rename a file or directory.
    Mv {
        #[command(flatten)]
        meta: MetaArg,
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Change permission bits.
    /// Set a path's access and modification times (to now, or to `--time`), making an
    /// empty file where nothing is, as touch(1) (`--no-dereference` is its `-h`).
    Touch {
        #[command(flatten)]
        meta: MetaArg,
        /// The time to set, nanoseconds since the epoch (default: now).
        #[arg(long)]
        time: Option<i64>,
        /// Change a symbolic link itself, not what it names.
        #[arg(long)]
        no_dereference: bool,
        /// The path.
        path: String,
    },
    Chmod {
        #[command(flatten)]
        meta: MetaArg,
        /// Permission bits, in octal.
        #[arg(value_parser = parse_mode)]
        mode: u32,
        /// The path.
        path: String,
    },
    /// Change owner and group (UID, UID:GID or :GID).
    Chown {
        #[command(flatten)]
        meta: MetaArg,
        /// UID, UID:GID or :GID (numbers).
        owner: String,
        /// The path.
        path: String,
    },
    /// Copy a local file into Nacre.
    Put {
        #[command(flatten)]
        meta: MetaArg,
        /// The local file.
        local: std::path::PathBuf,
        /// The Nacre path.
        path: String,
    },
    /// Copy a Nacre file to a local file ("-" for standard output).
    Get {
        #[command(flatten)]
        meta: MetaArg,
        /// The Nacre path.
        path: String,
        /// The local file.
        local: String,
    },
    /// Set the layout of a new file or a directory's default, as `lfs setstripe`.
    #[command(
        after_help = "Composite layouts: repeat -E END (a size or -1 for EOF) before each \
component's options, e.g. setstripe -E 4M -c 1 -E -1 -c -1 /file"
    )]
    Setstripe(stripe::SetstripeArgs),
    /// Show a file's layout or a directory's default, as `lfs getstripe`.
    Getstripe {
        #[command(flatten)]
        meta: MetaArg,
        /// The path.
        path: String,
    },
    /// Show each target's size and use, as `lfs df`.
    Df {
        #[command(flatten)]
        meta: MetaArg,
        /// Sizes in powers of 1024 with units.
        #[arg(short = 'H', long)]
        human: bool,
    },
    /// Write then read back a striped file with verification, and print throughput.
    Bench(bench::BenchArgs),
    /// Link directories to S3 prefixes (data repositories), list and unlink them.
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// Import from data repositories, restore released files.
    #[command(subcommand)]
    Task(repo::TaskCommand),
    /// Show the HSM state of files (exists, dirty, released, archived, lost).
    #[command(subcommand)]
    Hsm(repo::HsmCommand),
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("'{text}' is not an octal mode (0 to 7777)"))
}

/// Prints to standard output as `print!` does, through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::emit(format_args!($($arg)*)) };
}

/// Prints a line to standard output as `println!` does, through [`emit`].
macro_rules! outln {
    () => { $crate::emit(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::emit(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use {out, outln};

/// Writes to standard output. Rust starts programs with SIGPIPE ignored, so `println!` into
/// a pipe whose reader has gone (`nacre ls | head -1`) panics; here the command ends as
/// other tools do, by SIGPIPE (exit status 141 if the signal cannot be raised). Another
/// write error ends it with status 1 and a message.
fn emit(args: std::fmt::Arguments) {
    let Err(e) = std::io::stdout().lock().write_fmt(args) else {
        return;
    };
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
        std::process::exit(141);
    }
    eprintln!("nacre: cannot write to standard output: {e}");
    std::process::exit(1);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nacre: {e}");
            ExitCode::from(1)
        }
    }
}

/// A command's failure: an engine error or a message of the command's own.
#[derive(Debug)]
enum Failure {
    Engine(Error),
    Message(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Engine(e) => write!(f, "{e}"),
            Failure::Message(m) => f.write_str(m),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Engine(e)
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Self {
        Failure::Message(m)
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(args) => serve::serve(args),
        Command::Mkfs(args) => serve::mkfs(args),
        Command::Ls { meta, long, path } => ls(&meta.connect()?, &path, long),
        Command::Stat {
            meta,
            dereference,
            path,
        } => stat(&meta.connect()?, &path, dereference),
        Command::Ln {
            meta,
            symbolic,
            target,
            path,
        } => {
            let client = meta.connect()?;
            let made = if symbolic {
                client.symlink(&target, &path)
            } else {
                client.link(&target, &path)
            };
            Ok(made.map(drop)?)
        }
        Command::Readlink { meta, path } => {
            outln!("{}", meta.connect()?.readlink(&path)?);
            Ok(())
        }
        Command::Mkdir {
            meta,
            mode,
            parents,
            path,
        } => mkdir(&meta.connect()?, &path, mode, parents),
        Command::Rm { meta, dir, path } => {
            let client = meta.connect()?;
            if dir {
                client.rmdir(&path)?;
            } else {
                client.unlink(&path)?;
            }
            Ok(())
        }
        Command::Mv { meta, from, to } => Ok(meta.connect()?.rename(&from, &to)?),
        Command::Chmod { meta, mode, path } => Ok(meta.connect()?.chmod(&path, mode)?),
        Command::Touch {
            meta,
            time,
            no_dereference,
            path,
        } => touch(&meta.connect()?, &path, time, !no_dereference),
        Command::Chown { meta, owner, path } => {
            let (uid, gid) = parse_owner(&owner)?;
            Ok(meta.connect()?.chown(&path, uid, gid)?)
        }
        Command::Put { meta, local, path } => put(&meta.connect()?, &local, &path),
        Command::Get { meta, path, local } => get(&meta.connect()?, &path, &local),
        Command::Setstripe(args) => stripe::setstripe(args),
        Command::Getstripe { meta, path } => stripe::getstripe(&meta.connect()?, &path),
        Command::Df { meta, human } => df(&meta.connect()?, human),
        Command::Bench(args) => bench::bench(args),
        Command::Repo(command) => repo::repo(command),
        Command::Task(command) => repo::task(command),
        Command::Hsm(command) => repo::hsm(command),
    }
}

fn parse_owner(text: &str) -> Result<(Option<u32>, Option<u32>), String> {
    let bad = || format!("'{text}' is not UID, UID:GID or :GID (numbers)");
    let (u, g) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let uid = if u.is_empty() {
        None
    } else {
        Some(u.parse().map_err(|_| bad())?)
    };
    let gid = match g {
        Some(g) if !g.is_empty() => Some(g.parse().map_err(|_| bad())?),
        _ => None,
    };
    if uid.is_none() && gid.is_none() {
        return Err(bad());
    }
    Ok((uid, gid))
}

fn type_char(t: FileType) -> char {
    match t {
        FileType::Dir => 'd',
        FileType::File => '-',
        FileType::Symlink => 'l',
    }
}

fn mode_string(t: FileType, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(type_char(t));
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `nacre ls [-l]`. With -l, an entry whose attributes or size cannot be had (a target
/// down holds its objects) shows `?` where they go and its error on standard error; the
/// others list as usual, and the command then fails saying how many could not.
fn ls(client: &Client, path: &str, long: bool) -> Result<(), Failure> {
    let mut unknown = 0usize;
    for e in client.readdir(path)? {
        if !long {
            outln!("{}", e.name);
            continue;
        }
        let full = format!("{}/{}", path.trim_end_matches('/'), e.name);
        let attr = match client.attr(&full) {
            Ok(attr) => attr,
            Err(err) => {
                unknown += 1;
                eprintln!("nacre: ls: {full}: {err}");
                outln!("{:<10} {:>5} {:>5} {:>14} {}", "?", "?", "?", "?", e.name);
                continue;
            }
        };
        let mode = mode_string(attr.file_type, attr.mode);
        let (uid, gid) = (attr.uid, attr.gid);
        let name = match &attr.symlink {
            Some(target) => format!("{} -> {target}", e.name),
            None => e.name.clone(),
        };
        let size = match client.stat_of(attr) {
            Ok(st) => st.size_bytes.to_string(),
            Err(err) => {
                unknown += 1;
                eprintln!("nacre: ls: {full}: size unknown: {err}");
                "?".to_string()
            }
        };
        outln!("{mode} {uid:>5} {gid:>5} {size:>14} {name}");
    }
    if unknown > 0 {
        return Err(Failure::Message(format!(
            "ls: {unknown} entries of {path} could not be listed whole (see above)"
        )));
    }
    Ok(())
}

/// `nacre stat [-L]`: as stat(1), a symbolic link at the end is shown, not followed,
/// unless `-L`.
fn stat(client: &Client, path: &str, dereference: bool) -> Result<(), Failure> {
    let st = if dereference {
        client.stat(path)?
    } else {
        client.lstat(path)?
    };
    let a = &st.attr;
    match &a.symlink {
        Some(target) => outln!("  File: {path} -> {target}"),
        None => outln!("  File: {path}"),
    }
    outln!(
        "  Size: {:<14} Type: {}",
        st.size_bytes,
        match a.file_type {
            FileType::Dir => "directory",
            FileType::File => "regular file",
            FileType::Symlink => "symbolic link",
        }
    );
    outln!("Inode: {:<14} Links: {}", a.ino, a.nlink);
    outln!(
        "Access: ({:04o}/{})  Uid: {:>5}  Gid: {:>5}",
        a.mode & 0o7777,
        mode_string(a.file_type, a.mode),
        a.uid,
        a.gid
    );
    outln!("Modify: {} ns since the epoch", a.mtime_ns);
    outln!("Change: {} ns since the epoch", a.ctime_ns);
    Ok(())
}

/// `nacre touch`: an empty file made where nothing is (unless `--no-dereference`), then its
/// times set.
fn touch(client: &Client, path: &str, time: Option<i64>, follow: bool) -> Result<(), Failure> {
    let when = time.map_or(TimeSet::Now, TimeSet::At);
    match client.set_times(path, when, when, follow) {
        Err(e) if e.errno() == libc::ENOENT && follow => {
            drop(client.create(path, 0o666, None)?);
            Ok(client.set_times(path, when, when, follow)?)
        }
        done => Ok(done?),
    }
}

fn mkdir(client: &Client, path: &str, mode: u32, parents: bool) -> Result<(), Failure> {
    if !parents {
        client.mkdir(path, mode)?;
        return Ok(());
    }
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        match client.mkdir(&at, mode) {
            Ok(_) => {}
            Err(e) if e.errno() == libc::EEXIST => {
                if !client.stat(&at)?.attr.is_dir() {
                    return Err(format!("{at} exists and is not a directory").into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bytes moved per call by put and get.
const COPY_CHUNK_BYTES: usize = 8 * 1024 * 1024;

fn put(client: &Client, local: &std::path::Path, path: &str) -> Result<(), Failure> {
    let mut input =
        std::fs::File::open(local).map_err(|e| format!("cannot open {}: {e}", local.display()))?;
    let file = client.create(path, nacre::client::DEFAULT_FILE_MODE, None)?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf)
            .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
        if n == 0 {
            break;
        }
        file.write_at(&buf[..n], offset)?;
        offset += n as u64;
    }
    file.sync()?;
    Ok(())
}

fn read_full(input: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn get(client: &Client, path: &str, local: &str) -> Result<(), Failure> {
    let file = client.open(path, &nacre::OpenOptions::new().read(true))?;
    let mut out: Box<dyn Write> = if local == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(local).map_err(|e| format!("cannot create {local}: {e}"))?)
    };
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    let mut offset = 0u64;
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .map_err(|e| format!("cannot write {local}: {e}"))?;
        offset += n as u64;
    }
    out.flush()
        .map_err(|e| format!("cannot write {local}: {e}"))?;
    Ok(())
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Message(e.to_string())
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn df(client: &Client, human_sizes: bool) -> Result<(), Failure> {
    let usage = client.df()?;
    let size = |b: u64| {
        if human_sizes {
            human(b)
        } else {
            (b / 1024).to_string()
        }
    };
    outln!(
        "{:<40} {:>14} {:>14} {:>14} {:>5} Mounted on",
        "UUID",
        if human_sizes { "bytes" } else { "1K-blocks" },
        "Used",
        "Available",
        "Use%",
    );
    let (mut total, mut used, mut avail) = (0u64, 0u64, 0u64);
    for u in &usage {
        let name = format!("nacre-{}_UUID", &u.uuid[..u.uuid.len().min(8)]);
        match &u.live {
            Some(live) => {
                total += live.capacity_bytes;
                used += live.used_bytes;
                avail += live.available_bytes;
                let pct = if live.capacity_bytes == 0 {
                    0
                } else {
                    (live.used_bytes * 100).div_ceil(live.capacity_bytes)
                };
                outln!(
                    "{:<40} {:>14} {:>14} {:>14} {:>4}% nacre[OST:{}] {}",
                    name,
                    size(live.capacity_bytes),
                    size(live.used_bytes),
                    size(live.available_bytes),
                    pct,
                    u.target_id,
                    u.endpoint
                );
            }
            None => outln!(
                "{:<40} {:>14} {:>14} {:>14} {:>5} nacre[OST:{}] {} (not answering: {})",
                name,
                "-",
                "-",
                "-",
                "-",
                u.target_id,
                u.endpoint,
                u.error.as_deref().unwrap_or("")
            ),
        }
    }
    let pct = if total == 0 {
        0
    } else {
        (used * 100).div_ceil(total)
    };
    outln!();
    outln!(
        "{:<40} {:>14} {:>14} {:>14} {:>4}% nacre",
        "filesystem_summary:",
        size(total),
        size(used),
        size(avail),
        pct
    );
    Ok(())
}
