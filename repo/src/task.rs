//! The task runner of the metadata service (`nacre serve --meta`): it takes the pending
//! data repository tasks kept in the store one at a time, runs them (imports, exports,
//! restores), and keeps their counts and report in the store as it goes, so that any client
//! can follow or cancel them. A task the service was running when it stopped is pending
//! again when it restarts, and runs again from the beginning: what is done already is
//! skipped (unchanged objects, archived files, present chunks). Decision 0021.

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nacre::codec::Record;
use nacre::meta::repo::{Association, HS_RELEASED, ReleaseOutcome, under};
use nacre::meta::store::TaskEnd;
use nacre::meta::task::{Task, TaskCounts, TaskFailure, TaskKind, TaskState};
use nacre::{Client, OpenOptions};

use crate::export::{Deletion, ExportReport};
use crate::import::ImportFailure;
use crate::limits::{RESTORE_PARALLEL, TASK_END_TRIES, TASK_POLL_MS, TASK_UPDATE_MS};
use crate::mover::S3Access;
use crate::{export, import};

/// Runs tasks until `stop`: claims the oldest pending one from the metadata service at
/// `meta` and runs it; with none pending, looks again every [`TASK_POLL_MS`]. Stopped
/// midway, a task stays executing in the store and is run again when the service restarts.
pub fn run_tasks(meta: &str, s3: &S3Access, stop: &AtomicBool) {
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match &client {
            Some(c) => c.clone(),
            None => match Client::connect(meta) {
                Ok(c) => {
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    nacre::transport::log_line!("nacre meta: task runner: {e}");
                    pause(stop);
                    continue;
                }
            },
        };
        match c.task_claim() {
            Ok(Some(task)) => run(&c, s3, &task, stop),
            Ok(None) => pause(stop),
            Err(e) => {
                nacre::transport::log_line!("nacre meta: task runner: {e}");
                pause(stop);
            }
        }
    }
}

fn pause(stop: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_millis(TASK_POLL_MS);
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(Duration::from_millis(TASK_POLL_MS / 4));
    }
}

/// A task's counts and report lines on their way to the store: sent every
/// [`TASK_UPDATE_MS`], and at the end.
struct Reporter<'a> {
    client: &'a Client,
    id: u64,
    counts: TaskCounts,
    lines: Vec<TaskFailure>,
    lines_bytes: usize,
    last_sent: Instant,
    canceled: bool,
    stop: &'a AtomicBool,
}

impl<'a> Reporter<'a> {
    fn new(client: &'a Client, id: u64, stop: &'a AtomicBool) -> Reporter<'a> {
        Reporter {
            client,
            id,
            counts: TaskCounts::default(),
            lines: Vec::new(),
            lines_bytes: 0,
            last_sent: Instant::now(),
            canceled: false,
            stop,
        }
    }

    fn fail(&mut self, f: &ImportFailure) {
        self.counts.failed += 1;
        let line = TaskFailure {
            path: f.path.clone(),
            code: f.code.to_owned(),
            message: f.message.clone(),
        };
        self.lines_bytes += line.to_bytes().len();
        self.lines.push(line);
        if self.lines_bytes >= nacre::limits::TASK_PAGE_BYTES / 2 {
            self.send(None);
        }
    }

    /// Sends what is new if it is time; breaks when the task is to stop (canceled, or the
    /// service stopping).
    fn tick(&mut self) -> ControlFlow<()> {
        if self.last_sent.elapsed() >= Duration::from_millis(TASK_UPDATE_MS) {
            self.send(None);
        }
        if self.canceled || self.stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Sends the counts and the report lines kept, in messages that fit.
    fn send(&mut self, end: Option<TaskEnd>) {
        let mut lines = std::mem::take(&mut self.lines);
        self.lines_bytes = 0;
        loop {
            let mut bytes = 0;
            let fit = lines
                .iter()
                .take_while(|l| {
                    bytes += l.to_bytes().len();
                    bytes <= nacre::limits::TASK_PAGE_BYTES
                })
                .count();
            let rest = lines.split_off(fit);
            let last = rest.is_empty();
            let ending = if last { end.clone() } else { None };
            // The last update is tried again (its end must reach the store, or the task
            // stays executing until the service restarts); another keeps its lines for the
            // next one.
            let tries = if ending.is_some() { TASK_END_TRIES } else { 1 };
            let mut sent = false;
            for attempt in 0..tries {
                match self
                    .client
                    .task_update(self.id, &self.counts, &lines, ending.clone())
                {
                    Ok(task) => {
                        self.canceled |= task.cancel_requested;
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        nacre::transport::log_line!("nacre meta: task {}: {e}", self.id);
                        if attempt + 1 < tries {
                            std::thread::sleep(Duration::from_millis(TASK_POLL_MS));
                        }
                    }
                }
            }
            if !sent {
                lines.extend(rest);
                self.lines_bytes = lines.iter().map(|l| l.to_bytes().len()).sum();
                self.lines = lines;
                break;
            }
            lines = rest;
            if last {
                break;
            }
        }
        self.last_sent = Instant::now();
    }
}

/// Runs one claimed task to its end (or until the service stops).
fn run(client: &Client, s3: &S3Access, task: &Task, stop: &AtomicBool) {
    let mut r = Reporter::new(client, task.id, stop);
    let outcome = match task.kind {
        TaskKind::Import => run_import(client, s3, task, &mut r),
        TaskKind::Export | TaskKind::AutoExport => run_export(client, s3, task, &mut r),
        TaskKind::Restore => run_restore(client, task, &mut r),
        TaskKind::Release { idle_days } => run_release(client, task, idle_days, &mut r),
    };
    if stop.load(Ordering::SeqCst) && !r.canceled {
        // Left executing: the service's next start runs it again.
        r.send(None);
        return;
    }
    let end = match outcome {
        Ok(()) if r.canceled => TaskEnd {
            state: TaskState::Canceled,
            message: String::new(),
        },
        Ok(()) => TaskEnd {
            state: TaskState::Succeeded,
            message: String::new(),
        },
        Err(message) => TaskEnd {
            state: TaskState::Failed,
            message,
        },
    };
    nacre::transport::log_line!(
        "nacre meta: task {} ({}) {}: {}{}",
        task.id,
        task.kind.name(),
        end.state.name(),
        r.counts.summary,
        if end.message.is_empty() {
            String::new()
        } else {
            format!("; {}", end.message)
        }
    );
    r.send(Some(end));
}

/// The association `path` lies under.
fn association_of<'a>(all: &'a [Association], path: &str) -> Result<&'a Association, String> {
    all.iter()
        .find(|a| under(&a.path, path).is_some())
        .ok_or_else(|| format!("{path}: no data repository is linked at or above it"))
}

fn run_import(
    client: &Client,
    s3: &S3Access,
    task: &Task,
    r: &mut Reporter<'_>,
) -> Result<(), String> {
    let all = client.repo_list().map_err(|e| e.to_string())?;
    let (mut created, mut updated, mut unchanged, mut dirs) = (0, 0, 0, 0);
    let mut base = (0, 0);
    let only = task.paths.len() == 1;
    for path in &task.paths {
        let assoc = match association_of(&all, path) {
            Ok(assoc) => assoc,
            Err(e) if only => return Err(e),
            Err(e) => {
                r.fail(&crate::import::failure(path, "InternalError", e));
                continue;
            }
        };
        let listed = import(client, s3, assoc, |done, total| {
            r.counts.total = base.0 + total;
            r.counts.done = base.1 + done;
            r.tick()
        });
        // One path's listing refused: the whole task's reason when it is the only one,
        // else that path's report line.
        let report = match listed {
            Ok(report) => report,
            Err(e) if only => return Err(format!("{}: {e}", assoc.url())),
            Err(e) => {
                r.fail(&crate::import::failure(
                    path,
                    "S3Error",
                    format!("{}: {e}", assoc.url()),
                ));
                continue;
            }
        };
        base = (r.counts.total, r.counts.done);
        for f in &report.failed {
            r.fail(f);
        }
        created += report.created;
        updated += report.updated;
        unchanged += report.unchanged;
        dirs += report.dirs;
        r.counts.summary = format!(
            "{created} files created, {updated} updated, {unchanged} unchanged, {dirs} \
             directories, {} failed",
            r.counts.failed
        );
        if r.canceled {
            break;
        }
    }
    Ok(())
}

fn run_export(
    client: &Client,
    s3: &S3Access,
    task: &Task,
    r: &mut Reporter<'_>,
) -> Result<(), String> {
    let all = client.repo_list().map_err(|e| e.to_string())?;
    // What the paths before this one did (their failures are in `r`; their paths counted
    // here, those failed before an export too).
    let mut total = ExportReport::default();
    let only = task.paths.len() == 1;
    let force = task.kind == TaskKind::AutoExport;
    // Paths that are there first, those gone (deletions) after: a released file renamed
    // is exported from its old object before that is deleted.
    let (here, gone): (Vec<&String>, Vec<&String>) = if force {
        task.paths.iter().partition(|p| client.attr(p).is_ok())
    } else {
        (task.paths.iter().collect(), Vec::new())
    };
    // Objects that a file still links to (moved, and not exported at its new path yet; or
    // moved out of its association) are not deleted: they may be a released file's only
    // copy. Those of the paths gone are asked for together once the paths there are
    // exported (an export links the file to its new object); a path there that is gone by
    // its turn is asked for alone.
    let here_count = here.len();
    let every: Vec<&String> = here.into_iter().chain(gone).collect();
    let mut still_linked = std::collections::HashSet::new();
    for (i, &path) in every.iter().enumerate() {
        if force && i == here_count {
            still_linked = linked_keys(client, &all, &every[here_count..])?;
        }
        let assoc = match association_of(&all, path) {
            Ok(assoc) => assoc,
            Err(e) if only => return Err(e),
            Err(e) => {
                r.fail(&crate::import::failure(path, "InternalError", e));
                total.paths += 1;
                continue;
            }
        };
        let deletion = if r.counts.failed > 0 {
            Deletion::Refused
        } else if i < here_count {
            Deletion::Ask
        } else if still_linked.contains(path.as_str()) {
            Deletion::Kept
        } else {
            Deletion::Allowed
        };
        let report = export(
            client,
            s3,
            assoc,
            std::slice::from_ref(path),
            force,
            deletion,
            |so_far| {
                let now = total.plus(so_far);
                r.counts.done = now.handled();
                r.counts.total = r.counts.done + 1;
                r.counts.bytes = now.bytes;
                r.counts.summary =
                    export_summary(&now, r.counts.failed + so_far.failed.len() as u64);
                r.tick()
            },
        );
        let report = match report {
            Ok(report) => report,
            Err(e) if only => return Err(format!("{}: {e}", assoc.url())),
            Err(e) => {
                r.fail(&crate::import::failure(
                    path,
                    "S3Error",
                    format!("{}: {e}", assoc.url()),
                ));
                total.paths += 1;
                continue;
            }
        };
        for f in &report.failed {
            r.fail(f);
        }
        total = total.plus(&ExportReport {
            failed: Vec::new(),
            ..report
        });
        r.counts.bytes = total.bytes;
        r.counts.done = total.handled();
        r.counts.total = r.counts.done;
        r.counts.summary = export_summary(&total, r.counts.failed);
        if r.canceled {
            break;
        }
    }
    Ok(())
}

/// The summary line of an export task: what `total` did, and `failed` paths.
fn export_summary(total: &ExportReport, failed: u64) -> String {
    let deleted = match (total.deleted, total.kept) {
        (0, 0) => String::new(),
        (d, 0) => format!(", {d} deleted"),
        (d, k) => format!(", {d} deleted, {k} kept (a file links to them)"),
    };
    format!(
        "{} files ({} bytes), {} directories, {} unchanged{deleted}, {failed} failed",
        total.exported, total.bytes, total.dirs, total.unchanged
    )
}

/// Those of the `gone` paths whose object (at the path's key) a file still links to.
fn linked_keys<'p>(
    client: &Client,
    all: &[Association],
    gone: &[&'p String],
) -> Result<std::collections::HashSet<&'p str>, String> {
    let mut linked = std::collections::HashSet::new();
    for assoc in all {
        let (paths, keys): (Vec<&str>, Vec<String>) = gone
            .iter()
            .filter_map(|p| Some((p.as_str(), assoc.key_of(p)?)))
            .unzip();
        if keys.is_empty() {
            continue;
        }
        let held = client
            .keys_linked(assoc.id, &keys)
            .map_err(|e| e.to_string())?;
        linked.extend(
            paths
                .into_iter()
                .zip(held)
                .filter(|(_, h)| *h)
                .map(|(p, _)| p),
        );
    }
    Ok(linked)
}

/// Every file at or under `paths` (symbolic links are not followed: a link holds no data
/// of its own); what cannot be read is a report line.
fn files_of(client: &Client, paths: &[String], r: &mut Reporter<'_>) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending: Vec<String> = paths.iter().rev().cloned().collect();
    while let Some(path) = pending.pop() {
        match client.attr(&path) {
            Ok(attr) if attr.is_dir() => match client.readdir(&path) {
                Ok(entries) => {
                    let base = path.trim_end_matches('/');
                    for e in entries.iter().rev() {
                        pending.push(format!("{base}/{}", e.name));
                    }
                }
                Err(e) => r.fail(&crate::import::failure(&path, "InternalError", e)),
            },
            Ok(attr) if attr.is_symlink() => {}
            Ok(_) => files.push(path),
            Err(e) => r.fail(&crate::import::failure(&path, "InternalError", e)),
        }
    }
    files
}

/// Restores every released file at or under the task's paths, [`RESTORE_PARALLEL`] at a
/// time (each one's chunks are fetched in parallel too: many small files would otherwise
/// wait for one GET after another).
fn run_restore<'a>(client: &'a Client, task: &Task, r: &mut Reporter<'a>) -> Result<(), String> {
    let files = files_of(client, &task.paths, r);
    r.counts.total = files.len() as u64 + r.counts.failed;
    r.counts.done = r.counts.failed;
    let next = AtomicUsize::new(0);
    let restored = AtomicUsize::new(0);
    let present = AtomicUsize::new(0);
    let placeholder = Reporter::new(client, task.id, r.stop);
    let shared = Mutex::new(std::mem::replace(r, placeholder));
    let lock = || {
        shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    std::thread::scope(|scope| {
        for _ in 0..RESTORE_PARALLEL.min(files.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = files.get(i) else { return };
                    let mut last = 0;
                    let outcome =
                        client
                            .open(path, &OpenOptions::new().read(true))
                            .and_then(|file| {
                                if file.hsm_flags() & HS_RELEASED == 0 {
                                    // Present already (or never imported): nothing moved.
                                    present.fetch_add(1, Ordering::Relaxed);
                                    return Ok(true);
                                }
                                let whole = file.restore(|done, _| {
                                    let mut r = lock();
                                    r.counts.bytes += done - last;
                                    last = done;
                                    r.tick()
                                })?;
                                if whole {
                                    restored.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(whole)
                            });
                    let mut r = lock();
                    match outcome {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(e) => r.fail(&crate::import::failure(path, "S3Error", e)),
                    }
                    r.counts.done += 1;
                    r.counts.summary = restore_summary(
                        restored.load(Ordering::Relaxed),
                        present.load(Ordering::Relaxed),
                        &r.counts,
                    );
                    if r.tick().is_break() {
                        return;
                    }
                }
            });
        }
    });
    *r = shared
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    r.counts.summary = restore_summary(restored.into_inner(), present.into_inner(), &r.counts);
    Ok(())
}

/// Releases every file at or under the task's paths that is archived, unchanged and idle
/// for `idle_days`, one after another (a release is a punch of each object on its target:
/// quick, whatever the size). Files skipped are counted by why; a file held open is a
/// `ResourceBusy` line of the report, as FSx has it.
fn run_release(
    client: &Client,
    task: &Task,
    idle_days: u32,
    r: &mut Reporter<'_>,
) -> Result<(), String> {
    let files = files_of(client, &task.paths, r);
    r.counts.total = files.len() as u64 + r.counts.failed;
    r.counts.done = r.counts.failed;
    let mut released = 0u64;
    let mut skipped: Vec<(&'static str, u64)> = Vec::new();
    for path in &files {
        if r.tick().is_break() {
            break;
        }
        match client.release(path, idle_days) {
            Ok(ReleaseOutcome::Released(bytes)) => {
                released += 1;
                r.counts.bytes += bytes;
            }
            Ok(ReleaseOutcome::AlreadyReleased) => count(&mut skipped, "released already"),
            Ok(ReleaseOutcome::Skipped(why)) => count(&mut skipped, why.name()),
            Err(e) => {
                let code = match e.errno() {
                    libc::EBUSY => "ResourceBusy",
                    libc::EPERM | libc::EACCES => "AccessDenied",
                    _ => "InternalError",
                };
                r.fail(&crate::import::failure(path, code, e));
            }
        }
        r.counts.done += 1;
        r.counts.summary = release_summary(released, &skipped, r.counts.bytes, r.counts.failed);
    }
    r.counts.summary = release_summary(released, &skipped, r.counts.bytes, r.counts.failed);
    Ok(())
}

/// Counts one more file under `why`.
fn count(skipped: &mut Vec<(&'static str, u64)>, why: &'static str) {
    match skipped.iter_mut().find(|(w, _)| *w == why) {
        Some((_, n)) => *n += 1,
        None => skipped.push((why, 1)),
    }
}

fn release_summary(
    released: u64,
    skipped: &[(&'static str, u64)],
    bytes: u64,
    failed: u64,
) -> String {
    let mut summary = format!("{released} files released ({bytes} bytes)");
    for (why, n) in skipped {
        summary.push_str(&format!(", {n} {why}"));
    }
    summary.push_str(&format!(", {failed} failed"));
    summary
}

fn restore_summary(restored: usize, present: usize, counts: &TaskCounts) -> String {
    format!(
        "{restored} files restored ({} bytes), {present} present already, {} failed",
        counts.bytes, counts.failed
    )
}
