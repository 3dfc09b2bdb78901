//! `nacre repo`, `nacre task` and `nacre hsm`: data repositories (S3 prefixes linked to the
//! namespace, as FSx for Lustre's data repository associations), their tasks (imports,
//! exports, restores: run by the metadata service, kept in its store), and the HSM state of
//! files.

use std::io::IsTerminal;

use nacre::Client;
use nacre::limits::{DEFAULT_REPO_CHUNK_BYTES, MAX_RELEASE_IDLE_DAYS};
use nacre::meta::repo::{
    AssocState, Association, HS_DIRTY, HS_NORELEASE, event_names, hsm_flag_names, parse_events,
    parse_s3_url,
};
use nacre::meta::task::{Task, TaskFailure, TaskKind, TaskState};
use nacre_repo::S3Access;

use crate::{Failure, MetaArg, outln};

/// `nacre repo ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum RepoCommand {
    /// Link a directory to an S3 prefix (it must exist and overlap no other association).
    Link {
        #[command(flatten)]
        meta: MetaArg,
        /// The directory of the namespace.
        path: String,
        /// The repository: s3://BUCKET or s3://BUCKET/PREFIX.
        url: String,
        /// An S3 endpoint other than AWS's (http://127.0.0.1:5000).
        #[arg(long)]
        endpoint: Option<String>,
        /// The bucket's region (default: AWS_REGION, AWS_DEFAULT_REGION, or us-east-1).
        #[arg(long)]
        region: Option<String>,
        /// Objects to reflect as they appear, change or go: new,changed,deleted.
        #[arg(long, default_value = "")]
        auto_import: String,
        /// Files to export as they are closed or moved: new,changed; with deleted, the
        /// objects of files unlinked or moved away are deleted.
        #[arg(long, default_value = "")]
        auto_export: String,
        /// Bytes a released file is fetched by (K, M, G suffixes; default 8M).
        #[arg(long, value_parser = nacre::units::parse_size)]
        chunk_size: Option<u64>,
        /// Import the prefix's files and directories at once (no bytes are copied).
        #[arg(long)]
        import_now: bool,
    },
    /// List the associations, their state and why.
    List {
        #[command(flatten)]
        meta: MetaArg,
    },
    /// Unlink the association at a directory (its files stay; released ones can no longer
    /// be read).
    Unlink {
        #[command(flatten)]
        meta: MetaArg,
        /// The directory.
        path: String,
    },
}

/// `nacre task ...`: data repository tasks, run by the metadata service and kept in its
/// store (decision 0021).
#[derive(clap::Subcommand, Debug)]
pub(crate) enum TaskCommand {
    /// Import the files and directories of the associations at (or above) each path.
    Import {
        #[command(flatten)]
        meta: MetaArg,
        #[command(flatten)]
        wait: WaitArg,
        /// Linked directories.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Upload new and changed files at or under each path to their repository, with their
    /// POSIX metadata (as FSx's export task); they become archived.
    Export {
        #[command(flatten)]
        meta: MetaArg,
        #[command(flatten)]
        wait: WaitArg,
        /// Files or directories under linked directories.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Fetch released files at or under each path whole from their repository (as `lfs
    /// hsm_restore`).
    Restore {
        #[command(flatten)]
        meta: MetaArg,
        #[command(flatten)]
        wait: WaitArg,
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Drop the data of archived, unchanged files at or under each path from the targets,
    /// keeping their metadata (FSx's release task); their next read fetches them again.
    /// Files never exported, changed since, or newer than --idle are left; a file held
    /// open by a client is reported busy.
    Release {
        #[command(flatten)]
        meta: MetaArg,
        #[command(flatten)]
        wait: WaitArg,
        /// Only files whose atime, mtime and ctime are all this many days old (Nacre does
        /// not update atime on reads); 0 releases whatever their age.
        #[arg(long, default_value_t = 0, value_name = "DAYS",
              value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RELEASE_IDLE_DAYS)))]
        idle: u32,
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// List the tasks kept, with their state and counts.
    List {
        #[command(flatten)]
        meta: MetaArg,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one task: its state, counts and completion report.
    Show {
        #[command(flatten)]
        meta: MetaArg,
        /// The task's id.
        id: u64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait for a task to end, then show it as `show` does (exit status 1 unless it
    /// succeeded with nothing failed).
    Wait {
        #[command(flatten)]
        meta: MetaArg,
        /// The task's id.
        id: u64,
    },
    /// Cancel a task: a pending one at once, an executing one at its next file.
    Cancel {
        #[command(flatten)]
        meta: MetaArg,
        /// The task's id.
        id: u64,
    },
}

/// Whether a task command waits for its task.
#[derive(clap::Args, Debug)]
pub(crate) struct WaitArg {
    /// Print the task's id and return at once (follow it with `nacre task show` or `wait`).
    #[arg(long)]
    no_wait: bool,
}

/// `nacre hsm ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum HsmCommand {
    /// Print a file's HSM flags as `lfs hsm_state` does.
    State {
        #[command(flatten)]
        meta: MetaArg,
        /// The file.
        path: String,
    },
    /// Set HSM flags of an imported or exported file, as `lfs hsm_set` (its owner or root).
    Set {
        #[command(flatten)]
        meta: MetaArg,
        #[command(flatten)]
        flags: HsmFlagArgs,
        /// The file.
        path: String,
    },
    /// Clear HSM flags of an imported or exported file, as `lfs hsm_clear`.
    Clear {
        #[command(flatten)]
        meta: MetaArg,
        #[command(flatten)]
        flags: HsmFlagArgs,
        /// The file.
        path: String,
    },
}

/// The flags `nacre hsm set` and `clear` take.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = true)]
pub(crate) struct HsmFlagArgs {
    /// Never release the file (`task release` leaves it).
    #[arg(long)]
    norelease: bool,
    /// The repository's copy is old: the next export takes the file, and no release does.
    #[arg(long)]
    dirty: bool,
}

impl HsmFlagArgs {
    fn bits(&self) -> u32 {
        let mut bits = 0;
        if self.norelease {
            bits |= HS_NORELEASE;
        }
        if self.dirty {
            bits |= HS_DIRTY;
        }
        bits
    }
}

/// Runs `nacre repo`.
pub(crate) fn repo(command: RepoCommand) -> Result<(), Failure> {
    match command {
        RepoCommand::Link {
            meta,
            path,
            url,
            endpoint,
            region,
            auto_import,
            auto_export,
            chunk_size,
            import_now,
        } => {
            let client = meta.connect()?;
            let (bucket, prefix) = parse_s3_url(&url).map_err(|e| e.to_string())?;
            let assoc = Association {
                id: 0,
                path,
                bucket,
                prefix,
                endpoint,
                region,
                chunk_bytes: chunk_size.unwrap_or(DEFAULT_REPO_CHUNK_BYTES),
                auto_import: parse_events(&auto_import).map_err(|e| e.to_string())?,
                auto_export: parse_events(&auto_export).map_err(|e| e.to_string())?,
                state: AssocState::Creating,
                reason: String::new(),
            };
            let linked = client.repo_link(&assoc)?;
            let s3 = S3Access::new().map_err(|e| e.to_string())?;
            let checked = check(&client, &s3, &linked)?;
            outln!(
                "linked {} to {} (association {}, {})",
                checked.path,
                checked.url(),
                checked.id,
                checked.state.name()
            );
            if checked.state != AssocState::Available {
                return Err(Failure::Message(format!(
                    "{}: {}",
                    checked.url(),
                    checked.reason
                )));
            }
            if import_now {
                run_task(
                    &client,
                    TaskKind::Import,
                    std::slice::from_ref(&checked.path),
                    true,
                )?;
            }
            Ok(())
        }
        RepoCommand::List { meta } => {
            let all = meta.connect()?.repo_list()?;
            outln!(
                "{:<4} {:<24} {:<36} {:<14} {:>8} {:<22} {:<22} REASON",
                "ID",
                "PATH",
                "REPOSITORY",
                "STATE",
                "CHUNK",
                "AUTO-IMPORT",
                "AUTO-EXPORT"
            );
            for a in all {
                outln!(
                    "{:<4} {:<24} {:<36} {:<14} {:>8} {:<22} {:<22} {}",
                    a.id,
                    a.path,
                    a.url(),
                    a.state.name(),
                    crate::human(a.chunk_bytes),
                    event_names(a.auto_import),
                    event_names(a.auto_export),
                    if a.reason.is_empty() { "-" } else { &a.reason }
                );
            }
            Ok(())
        }
        RepoCommand::Unlink { meta, path } => {
            let gone = meta.connect()?.repo_unlink(&path)?;
            outln!("unlinked {} from {}", gone.path, gone.url());
            Ok(())
        }
    }
}

/// Asks the association's bucket for one key: available, or misconfigured with S3's
/// answer as the reason (credentials refused, no such bucket, unreachable).
fn check(client: &Client, s3: &S3Access, assoc: &Association) -> Result<Association, Failure> {
    let reached = s3.check(assoc);
    let (state, reason) = match reached {
        Ok(()) => (AssocState::Available, String::new()),
        Err(reason) => (AssocState::Misconfigured, reason),
    };
    Ok(client.repo_set_state(&assoc.path, state, &reason)?)
}

fn csv(field: &str) -> String {
    let risky = field.starts_with(['@', '+', '-', '=']);
    if risky || field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// Runs `nacre task`.
pub(crate) fn task(command: TaskCommand) -> Result<(), Failure> {
    let (meta, kind, paths, wait) = match command {
        TaskCommand::Import { meta, wait, paths } => (meta, TaskKind::Import, paths, wait),
        TaskCommand::Export { meta, wait, paths } => (meta, TaskKind::Export, paths, wait),
        TaskCommand::Restore { meta, wait, paths } => (meta, TaskKind::Restore, paths, wait),
        TaskCommand::Release {
            meta,
            wait,
            idle,
            paths,
        } => (meta, TaskKind::Release { idle_days: idle }, paths, wait),
        TaskCommand::List { meta, json } => return list_tasks(&meta.connect()?, json),
        TaskCommand::Show { meta, id, json } => {
            let client = meta.connect()?;
            let task = client.task_show(id)?;
            return show_task(&client, &task, json);
        }
        TaskCommand::Wait { meta, id } => {
            let client = meta.connect()?;
            let task = follow(&client, id)?;
            show_task(&client, &task, false)?;
            return outcome(&task);
        }
        TaskCommand::Cancel { meta, id } => {
            let task = meta.connect()?.task_cancel(id)?;
            let what = if task.state == TaskState::Canceled {
                "canceled"
            } else {
                "asked to cancel; it stops at its next file"
            };
            outln!("task {id} ({}): {what}", task.kind.name());
            return Ok(());
        }
    };
    let client = meta.connect()?;
    let full: Vec<String> = paths
        .iter()
        .map(|p| match p.trim_end_matches('/') {
            "" => "/".to_owned(),
            p => p.to_owned(),
        })
        .collect();
    run_task(&client, kind, &full, !wait.no_wait)
}

/// Asks for a task; with `wait`, follows it to its end, prints it, and fails unless it
/// succeeded with nothing failed.
fn run_task(client: &Client, kind: TaskKind, paths: &[String], wait: bool) -> Result<(), Failure> {
    let task = client.task_create(kind, paths)?;
    if !wait {
        outln!("task {} ({}): {}", task.id, kind.name(), task.state.name());
        return Ok(());
    }
    let task = follow(client, task.id)?;
    show_task(client, &task, false)?;
    outcome(&task)
}

/// Exit status 1 for a task that did not succeed, or that failed for some paths.
fn outcome(task: &Task) -> Result<(), Failure> {
    match task.state {
        TaskState::Succeeded if task.counts.failed == 0 => Ok(()),
        TaskState::Succeeded => Err(Failure::Message(format!(
            "task {}: {} paths failed (the report is above)",
            task.id, task.counts.failed
        ))),
        TaskState::Failed => Err(Failure::Message(format!(
            "task {} failed: {}",
            task.id, task.message
        ))),
        other => Err(Failure::Message(format!(
            "task {} is {}",
            task.id,
            other.name()
        ))),
    }
}

/// How often a follower asks for its task.
const TASK_FOLLOW_MS: u64 = 200;
/// How long a follower waits for a pending task while no task executes (no runner), or
/// for a metadata service that does not answer, before it leaves the task (which goes on)
/// and says how to find it. An executing task is bounded by the runner's own timeouts.
const TASK_STALL_MS: u64 = 120_000;

/// Cells of the progress bar a follower draws on a terminal.
const PROGRESS_BAR_CELLS: u64 = 24;

/// The progress line of task `id`: a bar of items done, the counts and the bytes moved.
fn progress_line(id: u64, task: &Task) -> String {
    let c = &task.counts;
    let filled = (c.done.min(c.total) * PROGRESS_BAR_CELLS)
        .checked_div(c.total)
        .unwrap_or(0) as usize;
    let bar = format!(
        "{}{}",
        "#".repeat(filled),
        ".".repeat(PROGRESS_BAR_CELLS as usize - filled)
    );
    format!(
        "\rtask {id} ({}) {} [{bar}] {} of {} done, {} failed, {}   ",
        task.kind.name(),
        task.state.name(),
        c.done,
        c.total,
        c.failed,
        crate::human(c.bytes)
    )
}

/// Waits for task `id` to finish, a progress bar on a terminal meanwhile (redrawn as the
/// counts move, and once more at the end, so that a terminal always shows how it ended);
/// gives up (the
/// task goes on) after [`TASK_STALL_MS`] of a pending task with no runner at work, or of
/// a service that does not answer.
fn follow(client: &Client, id: u64) -> Result<Task, Failure> {
    let bar = std::io::stderr().is_terminal();
    let mut last: Option<(TaskState, nacre::meta::task::TaskCounts)> = None;
    let stall = std::time::Duration::from_millis(TASK_STALL_MS);
    let mut idle_since: Option<std::time::Instant> = None;
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(TASK_FOLLOW_MS));
        let task = match client.task_show(id) {
            Ok(task) => {
                failing_since = None;
                task
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < stall {
                    continue;
                }
                return Err(Failure::Message(format!(
                    "task {id}: {e}; it goes on in the metadata service (nacre task show {id})"
                )));
            }
        };
        if task.state.is_finished() {
            if bar {
                eprintln!("{}", progress_line(id, &task));
            }
            return Ok(task);
        }
        let runner_busy = task.state == TaskState::Executing
            || client
                .task_list()
                .is_ok_and(|all| all.iter().any(|t| t.state == TaskState::Executing));
        if runner_busy {
            idle_since = None;
        } else if idle_since
            .get_or_insert_with(std::time::Instant::now)
            .elapsed()
            >= stall
        {
            return Err(Failure::Message(format!(
                "task {id} is still pending and no task ran for {} s (is `nacre serve --meta` \
                 running, without --no-task-runner?); it goes on: nacre task show {id}",
                TASK_STALL_MS / 1000
            )));
        }
        let now = (task.state, task.counts.clone());
        if bar && last.as_ref() != Some(&now) {
            eprint!("{}", progress_line(id, &task));
        }
        last = Some(now);
    }
}

/// A time in nanoseconds since the epoch as RFC 3339 (UTC, seconds); `-` for 0 (not yet).
fn time(ns: i64) -> String {
    if ns <= 0 {
        return "-".into();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

fn task_json(task: &Task, report: Option<&[TaskFailure]>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": task.id,
        "kind": task.kind.name(),
        "owner": task.owner,
        "state": task.state.name(),
        "paths": task.paths,
        "cancel_requested": task.cancel_requested,
        "created": time(task.created_ns),
        "started": time(task.started_ns),
        "ended": time(task.ended_ns),
        "total": task.counts.total,
        "done": task.counts.done,
        "failed": task.counts.failed,
        "bytes": task.counts.bytes,
        "summary": task.counts.summary,
        "message": task.message,
        "report_lines": task.reported,
    });
    if let TaskKind::Release { idle_days } = task.kind {
        v["idle_days"] = idle_days.into();
    }
    if let Some(lines) = report {
        v["report"] = lines
            .iter()
            .map(|l| serde_json::json!({"path": l.path, "code": l.code, "message": l.message}))
            .collect();
    }
    v
}

fn list_tasks(client: &Client, json: bool) -> Result<(), Failure> {
    let all = client.task_list()?;
    if json {
        let v: Vec<serde_json::Value> = all.iter().map(|t| task_json(t, None)).collect();
        outln!("{}", serde_json::Value::from(v));
        return Ok(());
    }
    outln!(
        "{:<6} {:<8} {:<10} {:>8} {:>8} {:>8} {:<20} PATHS",
        "ID",
        "KIND",
        "STATE",
        "DONE",
        "TOTAL",
        "FAILED",
        "CREATED"
    );
    for t in &all {
        outln!(
            "{:<6} {:<8} {:<10} {:>8} {:>8} {:>8} {:<20} {}",
            t.id,
            t.kind.name(),
            t.state.name(),
            t.counts.done,
            t.counts.total,
            t.counts.failed,
            time(t.created_ns),
            t.paths.join(" ")
        );
    }
    Ok(())
}

/// A task's fields, its counts in words, and its completion report as FSx writes it: a CSV
/// line per failed path (`FilePath,FileStatus,ErrorCode,Message`, quoted per RFC 4180 and
/// against formula injection).
fn show_task(client: &Client, task: &Task, json: bool) -> Result<(), Failure> {
    let report = if task.reported > 0 {
        client.task_report(task.id, 0)?
    } else {
        Vec::new()
    };
    if json {
        outln!("{}", task_json(task, Some(&report)));
        return Ok(());
    }
    outln!(
        "task {} ({}) {}: {}",
        task.id,
        task.kind.name(),
        task.state.name(),
        task.paths.join(" ")
    );
    outln!(
        "  created {}, started {}, ended {}",
        time(task.created_ns),
        time(task.started_ns),
        time(task.ended_ns)
    );
    outln!(
        "  {} of {} done, {} failed, {} bytes: {}",
        task.counts.done,
        task.counts.total,
        task.counts.failed,
        task.counts.bytes,
        if task.counts.summary.is_empty() {
            "-"
        } else {
            &task.counts.summary
        }
    );
    if !task.message.is_empty() {
        outln!("  {}", task.message);
    }
    if !report.is_empty() {
        outln!("FilePath,FileStatus,ErrorCode,Message");
        for f in &report {
            outln!(
                "{},failed,{},{}",
                csv(&f.path),
                csv(&f.code),
                csv(&f.message)
            );
        }
        if u64::from(task.reported) < task.counts.failed {
            outln!(
                "# {} more failures were counted but not kept",
                task.counts.failed - u64::from(task.reported)
            );
        }
    }
    Ok(())
}

/// Runs `nacre hsm`.
pub(crate) fn hsm(command: HsmCommand) -> Result<(), Failure> {
    match command {
        HsmCommand::State { meta, path } => {
            let (flags, object) = meta.connect()?.hsm_state(&path)?;
            let names = hsm_flag_names(flags).join(" ");
            let archive = if flags == 0 { "" } else { ", archive_id:1" };
            outln!("{path}: ({flags:#010x}) {names}{archive}");
            if let Some(url) = object {
                outln!("{path}: object {url}");
            }
            Ok(())
        }
        HsmCommand::Set { meta, flags, path } => {
            let after = meta.connect()?.hsm_set(&path, flags.bits(), 0)?;
            outln!(
                "{path}: ({after:#010x}) {}",
                hsm_flag_names(after).join(" ")
            );
            Ok(())
        }
        HsmCommand::Clear { meta, flags, path } => {
            let after = meta.connect()?.hsm_set(&path, 0, flags.bits())?;
            outln!(
                "{path}: ({after:#010x}) {}",
                hsm_flag_names(after).join(" ")
            );
            Ok(())
        }
    }
}
