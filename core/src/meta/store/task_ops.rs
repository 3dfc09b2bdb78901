//! The store's side of data repository tasks (`crate::meta::task`): the `tasks` table
//! (id → task) and the `task_reports` table ((id, line) → report line).

use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::{MetaStore, NsPath, now_ns};
use crate::codec::Record;
use crate::limits::{
    MAX_TASK_PATHS, MAX_TASK_PATHS_BYTES, MAX_TASK_REPORT_LINES, MAX_TASKS, TASK_PAGE_BYTES,
};
use crate::meta::repo::{EVENT_CHANGED, EVENT_DELETED, EVENT_NEW, HS_ARCHIVED, HS_DIRTY};
use crate::meta::task::{Task, TaskCounts, TaskFailure, TaskKind, TaskState};
use crate::meta::types::{Cred, MetaError};

/// Tasks: id → [`Task`].
pub(super) const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// Completion reports: (task id, line number) → [`TaskFailure`].
pub(super) const TASK_REPORTS: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("task_reports");

/// How the runner ends a task, sent with its last update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnd {
    /// Succeeded, failed or canceled.
    pub state: TaskState,
    /// Why it failed (empty otherwise).
    pub message: String,
}

fn root_only(cred: &Cred, what: &str) -> Result<(), MetaError> {
    if cred.is_root() {
        return Ok(());
    }
    Err(MetaError::Perm {
        path: String::new(),
        reason: format!("only root may {what}"),
    })
}

fn not_found(id: u64) -> MetaError {
    MetaError::NotFound {
        path: format!("task {id}"),
    }
}

/// Whether `cred` may see and cancel `task`: root, or the user who asked for it.
fn sees(cred: &Cred, task: &Task) -> bool {
    cred.is_root() || cred.uid == task.owner
}

type Tasks<'t> = Table<'t, u64, &'static [u8]>;
type Reports<'t> = Table<'t, (u64, u32), &'static [u8]>;

fn get(tasks: &Tasks<'_>, id: u64) -> Result<Task, MetaError> {
    let bytes = tasks.get(id)?.ok_or_else(|| not_found(id))?;
    Ok(Task::from_bytes(bytes.value())?)
}

fn put(tasks: &mut Tasks<'_>, task: &Task) -> Result<(), MetaError> {
    tasks.insert(task.id, task.to_bytes().as_slice())?;
    Ok(())
}

fn drop_report(reports: &mut Reports<'_>, id: u64) -> Result<(), MetaError> {
    reports.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)?;
    Ok(())
}

/// Puts every executing task back to pending, its counts and report cleared: the process
/// that ran it is gone (this one starts), and the runner starts it again from the
/// beginning (imports, exports and restores skip what is done already).
pub(super) fn requeue_executing(db: &Database) -> Result<(), MetaError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut tasks = txn.open_table(TASKS)?;
        let mut reports = txn.open_table(TASK_REPORTS)?;
        let mut executing = Vec::new();
        for item in tasks.range::<u64>(..)? {
            let (_, value) = item?;
            let task = Task::from_bytes(value.value())?;
            if task.state == TaskState::Executing {
                executing.push(task);
            }
        }
        for mut task in executing {
            if task.cancel_requested {
                // Its cancel was asked for before the stop: it stays canceled.
                task.state = TaskState::Canceled;
                task.ended_ns = now_ns();
                put(&mut tasks, &task)?;
                continue;
            }
            task.state = TaskState::Pending;
            task.counts = TaskCounts::default();
            task.reported = 0;
            drop_report(&mut reports, task.id)?;
            put(&mut tasks, &task)?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Keeps a new pending task, dropping the oldest finished one when [`MAX_TASKS`] are kept.
fn insert_task(
    tasks: &mut Tasks<'_>,
    reports: &mut Reports<'_>,
    owner: u32,
    kind: TaskKind,
    paths: Vec<String>,
) -> Result<Task, MetaError> {
    // Before any removal: ids are never reused.
    let id = tasks.last()?.map_or(0, |(k, _)| k.value()) + 1;
    let mut kept = 0usize;
    let mut oldest_finished = None;
    for item in tasks.range::<u64>(..)? {
        let (id, value) = item?;
        kept += 1;
        if oldest_finished.is_none() && Task::from_bytes(value.value())?.state.is_finished() {
            oldest_finished = Some(id.value());
        }
    }
    if kept >= MAX_TASKS {
        let Some(old) = oldest_finished else {
            return Err(MetaError::Invalid {
                field: "tasks",
                value: format!("{kept} unfinished"),
                allowed: format!("at most {MAX_TASKS} kept; cancel or wait for some"),
            });
        };
        tasks.remove(old)?;
        drop_report(reports, old)?;
    }
    let task = Task {
        id,
        kind,
        owner,
        paths,
        state: TaskState::Pending,
        cancel_requested: false,
        created_ns: now_ns(),
        started_ns: 0,
        ended_ns: 0,
        counts: TaskCounts::default(),
        message: String::new(),
        reported: 0,
    };
    put(tasks, &task)?;
    Ok(task)
}

/// What a path taken away was, for auto-export ([`MetaStore::linked_to_object`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linked {
    /// A file linked to an object.
    File,
    /// A directory.
    Dir,
}

impl MetaStore {
    /// A handle on `path` (inode `ino`) opened for writing was closed. Under an
    /// association, an imported or exported file is dirty again (its handle may have written
    /// after an export), and with the association's auto-export events for it (new: never
    /// exported; changed: archived before) it joins the pending auto-export task. Whether it
    /// was queued. A path that names another file since (renamed over) is left alone.
    pub fn file_closed(&self, cred: &Cred, path: &str, ino: u64) -> Result<bool, MetaError> {
        // Every close of a written file comes here while associations exist: one outside
        // them is left at once.
        let full = NsPath::parse("path", path)?.full();
        if !self.has_associations() {
            return Ok(false);
        }
        // Opened through a symbolic link: the file is where the link leads.
        let full = match self.canonical(cred, &full, true) {
            Ok(at) => at,
            Err(MetaError::NotFound { .. } | MetaError::NameTooLong { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Some(assoc) = self.association_over(&full)? else {
            return Ok(false);
        };
        // Unlinked or renamed while open: nothing to export at that path.
        let attr = match self.lookup(cred, &full) {
            Ok(attr) => attr,
            Err(MetaError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if attr.ino != ino || !attr.is_file() {
            return Ok(false);
        }
        // Only a caller who may write it now marks it dirty and queues its export (one
        // that lost the right since its open leaves it to the next export: its open set
        // the dirty flag).
        match self.open_file(cred, &full, crate::meta::types::Access::Write) {
            Ok(_) => {}
            Err(MetaError::Access { .. } | MetaError::Perm { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
        let flags = match self.repo_file(ino)? {
            Some(_) => self.add_hsm_flags(ino, HS_DIRTY)?,
            None => 0,
        };
        let event = if flags & HS_ARCHIVED != 0 {
            EVENT_CHANGED
        } else {
            EVENT_NEW
        };
        if assoc.auto_export & event == 0 {
            return Ok(false);
        }
        self.queue_auto_export(vec![full])?;
        Ok(true)
    }

    /// A symbolic link was made at `path`: it is whole at once, so under an association
    /// whose auto-export takes new files it joins the pending auto-export task as a closed
    /// file does. Whether it was queued.
    pub fn symlink_made(&self, cred: &Cred, path: &str) -> Result<bool, MetaError> {
        if !self.has_associations() {
            return Ok(false);
        }
        let full = self.canonical(cred, path, false)?;
        match self.association_over(&full)? {
            Some(assoc) if assoc.auto_export & EVENT_NEW != 0 => {
                self.queue_auto_export(vec![full])?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Whether the file at `path` is linked to an object of its association's repository
    /// (imported or exported), or is a directory (its marker, and those of its
    /// subdirectories, may be there): its deletion is one an auto-export may reflect. Asked
    /// before an unlink, rmdir or rename (the link goes with the file).
    pub fn linked_to_object(&self, cred: &Cred, path: &str) -> Result<Option<Linked>, MetaError> {
        if !self.has_associations() {
            return Ok(None);
        }
        match self.lookup(cred, path) {
            Ok(attr) if attr.is_dir() => Ok(Some(Linked::Dir)),
            Ok(attr) => Ok(self.repo_file(attr.ino)?.map(|_| Linked::File)),
            Err(_) => Ok(None),
        }
    }

    /// A file or directory was unlinked or renamed: `gone` is its old path when it was
    /// linked to an object (or a directory), `to` where it went (for a rename). With the
    /// associations' auto-export events, the new path is queued for the auto-export task to
    /// export (`new` or `changed`), and the old one to delete its objects (`deleted`); a
    /// directory's old path is queued with a trailing `/`, so that the runner deletes its
    /// markers and never an object of the same name. A rename's old objects are deleted
    /// only with its new path exported (in one transaction): a released file moved holds
    /// its data only there. Whether anything was queued.
    pub fn path_gone(
        &self,
        gone: Option<(&str, Linked)>,
        to: Option<&str>,
    ) -> Result<bool, MetaError> {
        let mut paths = Vec::new();
        if let Some(to) = to {
            let to = NsPath::parse("path", to)?.full();
            if let Some(assoc) = self.association_over(&to)?
                && assoc.auto_export & (EVENT_NEW | EVENT_CHANGED) != 0
            {
                paths.push(to);
            }
        }
        if let Some((from, linked)) = gone
            && (to.is_none() || !paths.is_empty())
        {
            let from = NsPath::parse("path", from)?.full();
            if let Some(assoc) = self.association_over(&from)?
                && assoc.auto_export & EVENT_DELETED != 0
                && from != assoc.path
            {
                paths.push(match linked {
                    Linked::File => from,
                    Linked::Dir => format!("{from}/"),
                });
            }
        }
        if paths.is_empty() {
            return Ok(false);
        }
        self.queue_auto_export(paths)?;
        Ok(true)
    }

    /// Adds `paths` to the pending auto-export task, or asks for a new one when there is
    /// none or they do not fit; all in one task.
    fn queue_auto_export(&self, paths: Vec<String>) -> Result<(), MetaError> {
        // One transaction: two closes at once find the same pending task or make one.
        self.write_tasks(|tasks, reports| {
            let mut pending = None;
            for item in tasks.range::<u64>(..)?.rev() {
                let (_, value) = item?;
                let task = Task::from_bytes(value.value())?;
                if task.kind == TaskKind::AutoExport && task.state == TaskState::Pending {
                    pending = Some(task);
                    break;
                }
            }
            if let Some(mut task) = pending {
                let new: Vec<String> = paths
                    .iter()
                    .filter(|p| !task.paths.contains(p))
                    .cloned()
                    .collect();
                if new.is_empty() {
                    return Ok(());
                }
                let bytes: usize = task.paths.iter().chain(&new).map(String::len).sum();
                if task.paths.len() + new.len() <= MAX_TASK_PATHS && bytes <= MAX_TASK_PATHS_BYTES {
                    task.paths.extend(new);
                    return put(tasks, &task);
                }
            }
            insert_task(tasks, reports, 0, TaskKind::AutoExport, paths).map(drop)
        })
    }

    /// Runs `op` on the task tables in one write transaction, committed durably if it
    /// succeeds.
    fn write_tasks<T>(
        &self,
        op: impl FnOnce(&mut Tasks<'_>, &mut Reports<'_>) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        self.transaction(|txn| {
            let mut tasks = txn.open_table(TASKS)?;
            let mut reports = txn.open_table(TASK_REPORTS)?;
            op(&mut tasks, &mut reports)
        })
    }

    /// Asks for a task (root only; restores anyone): kept pending until the runner claims
    /// it. At most [`MAX_TASKS`] are kept: the oldest finished one makes room.
    pub fn task_create(
        &self,
        cred: &Cred,
        kind: TaskKind,
        paths: &[String],
    ) -> Result<Task, MetaError> {
        if kind != TaskKind::Restore {
            root_only(cred, &format!("ask for {} tasks", kind.name()))?;
        }
        if paths.is_empty() || paths.len() > MAX_TASK_PATHS {
            return Err(MetaError::Invalid {
                field: "paths",
                value: paths.len().to_string(),
                allowed: format!("1 to {MAX_TASK_PATHS} per task"),
            });
        }
        // Kept resolved: the runners walk and key what the paths name, never through a
        // link (one that does not resolve is reported by the runner).
        let mut full = Vec::with_capacity(paths.len());
        for p in paths {
            let given = NsPath::parse("path", p)?.full();
            full.push(self.canonical(cred, &given, false).unwrap_or(given));
        }
        let bytes: usize = full.iter().map(String::len).sum();
        if bytes > MAX_TASK_PATHS_BYTES {
            return Err(MetaError::Invalid {
                field: "paths",
                value: format!("{bytes} bytes"),
                allowed: format!("at most {MAX_TASK_PATHS_BYTES} bytes per task"),
            });
        }
        self.write_tasks(|tasks, reports| insert_task(tasks, reports, cred.uid, kind, full))
    }

    /// Tasks after id `after` in id order that `cred` may see (root: all; a user: their
    /// own), as many as fill a page; and whether more follow.
    pub fn task_list(&self, cred: &Cred, after: u64) -> Result<(Vec<Task>, bool), MetaError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let tasks = txn.open_table(TASKS)?;
            let mut page = Vec::new();
            let mut bytes = 0;
            for item in tasks.range(after.saturating_add(1)..)? {
                let (_, value) = item?;
                let task = Task::from_bytes(value.value())?;
                if !sees(cred, &task) {
                    continue;
                }
                bytes += value.value().len();
                if bytes > TASK_PAGE_BYTES {
                    return Ok((page, true));
                }
                page.push(task);
            }
            Ok((page, false))
        })
    }

    /// The task `id`, if `cred` may see it (another user's is not found).
    pub fn task(&self, cred: &Cred, id: u64) -> Result<Task, MetaError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let tasks = txn.open_table(TASKS)?;
            let bytes = tasks.get(id)?.ok_or_else(|| not_found(id))?;
            let task = Task::from_bytes(bytes.value())?;
            if !sees(cred, &task) {
                return Err(not_found(id));
            }
            Ok(task)
        })
    }

    /// Report lines of task `id` from line `from`, as many as fill a page.
    pub fn task_report(
        &self,
        cred: &Cred,
        id: u64,
        from: u32,
    ) -> Result<Vec<TaskFailure>, MetaError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let visible = match txn.open_table(TASKS)?.get(id)? {
                Some(bytes) => sees(cred, &Task::from_bytes(bytes.value())?),
                None => false,
            };
            if !visible {
                return Err(not_found(id));
            }
            let reports = txn.open_table(TASK_REPORTS)?;
            let mut page = Vec::new();
            let mut bytes = 0;
            for item in reports.range((id, from)..=(id, u32::MAX))? {
                let (_, value) = item?;
                bytes += value.value().len();
                if bytes > TASK_PAGE_BYTES {
                    break;
                }
                page.push(TaskFailure::from_bytes(value.value())?);
            }
            Ok(page)
        })
    }

    /// Cancels task `id` (root, or the user who asked for it): a pending one at once, an
    /// executing one when the runner next looks. A finished one is refused.
    pub fn task_cancel(&self, cred: &Cred, id: u64) -> Result<Task, MetaError> {
        self.write_tasks(|tasks, _| {
            let mut task = get(tasks, id)?;
            if !sees(cred, &task) {
                return Err(not_found(id));
            }
            match task.state {
                TaskState::Pending => {
                    task.state = TaskState::Canceled;
                    task.ended_ns = now_ns();
                }
                TaskState::Executing => task.cancel_requested = true,
                done => {
                    return Err(MetaError::Invalid {
                        field: "task",
                        value: format!("{id} ({})", done.name()),
                        allowed: "a pending or executing task".into(),
                    });
                }
            }
            put(tasks, &task)?;
            Ok(task)
        })
    }

    /// The runner's claim (root only): the oldest pending task, now executing.
    pub fn task_claim(&self, cred: &Cred) -> Result<Option<Task>, MetaError> {
        root_only(cred, "run tasks")?;
        // An idle runner asks often: a read first, and a durable write only for a claim.
        let any = self.with_db(|db| {
            let txn = db.begin_read()?;
            for item in txn.open_table(TASKS)?.range::<u64>(..)? {
                let (_, value) = item?;
                if Task::from_bytes(value.value())?.state == TaskState::Pending {
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        if !any {
            return Ok(None);
        }
        self.write_tasks(|tasks, _| {
            let mut found = None;
            for item in tasks.range::<u64>(..)? {
                let (_, value) = item?;
                let task = Task::from_bytes(value.value())?;
                if task.state == TaskState::Pending {
                    found = Some(task);
                    break;
                }
            }
            let Some(mut task) = found else {
                return Ok(None);
            };
            task.state = TaskState::Executing;
            task.started_ns = now_ns();
            put(tasks, &task)?;
            Ok(Some(task))
        })
    }

    /// The runner's update of an executing task (root only): its counts, report lines to
    /// add (past [`MAX_TASK_REPORT_LINES`] only counted), and how it ended if it did. The
    /// task after: `cancel_requested` tells the runner to stop.
    pub fn task_update(
        &self,
        cred: &Cred,
        id: u64,
        counts: &TaskCounts,
        failures: &[TaskFailure],
        end: Option<&TaskEnd>,
    ) -> Result<Task, MetaError> {
        root_only(cred, "run tasks")?;
        self.write_tasks(|tasks, reports| {
            let mut task = get(tasks, id)?;
            if task.state != TaskState::Executing {
                return Err(MetaError::Invalid {
                    field: "task",
                    value: format!("{id} ({})", task.state.name()),
                    allowed: "an executing task (it was restarted or ended)".into(),
                });
            }
            for f in failures {
                if task.reported >= MAX_TASK_REPORT_LINES {
                    break;
                }
                reports.insert((id, task.reported), f.to_bytes().as_slice())?;
                task.reported += 1;
            }
            task.counts = counts.clone();
            if let Some(end) = end {
                if !end.state.is_finished() {
                    return Err(MetaError::Invalid {
                        field: "task end",
                        value: end.state.name().into(),
                        allowed: "succeeded, failed or canceled".into(),
                    });
                }
                task.state = end.state;
                task.message = end.message.clone();
                task.ended_ns = now_ns();
            }
            put(tasks, &task)?;
            Ok(task)
        })
    }
}
