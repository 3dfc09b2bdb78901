//! Data repository tasks, as FSx's: an import, export or restore asked for by a client,
//! kept in the metadata store with its state, counts and completion report, and run by the
//! metadata service's task runner (`nacre serve --meta`), so that it goes on when the
//! command that asked for it goes away and starts again when the service restarts
//! (decision 0021).

use crate::codec::{CodecError, Reader, Writer};
use crate::limits::{
    MAX_RELEASE_IDLE_DAYS, MAX_TASK_FAILURE_CODE_BYTES, MAX_TASK_MESSAGE_BYTES, MAX_TASK_PATHS,
    MAX_TASK_PATHS_BYTES,
};
use crate::meta::types::{MAX_PATH_BYTES, whole_record};

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Import the associations at or above its paths (FSx's `IMPORT_METADATA_FROM_REPOSITORY`).
    Import,
    /// Export new and changed files at or under its paths (`EXPORT_TO_REPOSITORY`).
    Export,
    /// Make its released files present, whole (`lfs hsm_restore`).
    Restore,
    /// Export files closed after writing under associations with auto-export events: the
    /// service asks for these itself, and adds paths to the pending one.
    AutoExport,
    /// Drop the data of its archived, unchanged files not accessed for `idle_days` (FSx's
    /// `RELEASE_DATA_FROM_FILESYSTEM` with `DurationSinceLastAccess`; 0: whatever their age).
    Release {
        /// Days since the last access (the latest of atime, mtime and ctime).
        idle_days: u32,
    },
}

impl TaskKind {
    /// Its name, as the CLI takes and prints it.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Import => "import",
            TaskKind::Export => "export",
            TaskKind::Restore => "restore",
            TaskKind::AutoExport => "auto-export",
            TaskKind::Release { .. } => "release",
        }
    }

    /// Appends the binary form (a byte; a release's idle days after it).
    fn encode(self, w: &mut Writer<'_>) {
        match self {
            TaskKind::Import => w.u8(1),
            TaskKind::Export => w.u8(2),
            TaskKind::Restore => w.u8(3),
            TaskKind::AutoExport => w.u8(4),
            TaskKind::Release { idle_days } => w.u8(5).u32(idle_days),
        };
    }

    fn decode(r: &mut Reader<'_>) -> Result<TaskKind, CodecError> {
        match r.u8("kind")? {
            1 => Ok(TaskKind::Import),
            2 => Ok(TaskKind::Export),
            3 => Ok(TaskKind::Restore),
            4 => Ok(TaskKind::AutoExport),
            5 => Ok(TaskKind::Release {
                idle_days: idle_days(r)?,
            }),
            v => Err(r.bad_value("kind", u64::from(v), "1 to 5")),
        }
    }
}

/// Reads a release's idle time in days (at most [`MAX_RELEASE_IDLE_DAYS`]).
pub(crate) fn idle_days(r: &mut Reader<'_>) -> Result<u32, CodecError> {
    let days = r.u32("idle days")?;
    if days > MAX_RELEASE_IDLE_DAYS {
        return Err(r.bad_value(
            "idle days",
            u64::from(days),
            "at most MAX_RELEASE_IDLE_DAYS",
        ));
    }
    Ok(days)
}

/// Where a task is, as FSx's task lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for the runner.
    Pending,
    /// Being run (it starts again from the beginning if the service restarts).
    Executing,
    /// Done; every path was handled (some may be in the report as failed).
    Succeeded,
    /// Stopped by an error that ended the whole task (the bucket unreachable, say).
    Failed,
    /// Canceled before it was done.
    Canceled,
}

impl TaskState {
    /// Its name, as FSx prints it.
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Executing => "executing",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Canceled => "canceled",
        }
    }

    /// Whether it is over (succeeded, failed or canceled).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Canceled
        )
    }

    fn to_u8(self) -> u8 {
        match self {
            TaskState::Pending => 1,
            TaskState::Executing => 2,
            TaskState::Succeeded => 3,
            TaskState::Failed => 4,
            TaskState::Canceled => 5,
        }
    }

    /// Reads its binary form (one byte).
    pub fn decode(r: &mut Reader<'_>) -> Result<TaskState, CodecError> {
        match r.u8("state")? {
            1 => Ok(TaskState::Pending),
            2 => Ok(TaskState::Executing),
            3 => Ok(TaskState::Succeeded),
            4 => Ok(TaskState::Failed),
            5 => Ok(TaskState::Canceled),
            v => Err(r.bad_value("state", u64::from(v), "1 to 5")),
        }
    }

    /// Appends its binary form.
    pub fn encode(self, out: &mut Vec<u8>) {
        out.push(self.to_u8());
    }
}

/// One line of a task's completion report: a path it could not handle, FSx's error code
/// (`PathSizeTooLong`, `S3Error`, …) and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// The path (or object key) that failed.
    pub path: String,
    /// The error code.
    pub code: String,
    /// The reason.
    pub message: String,
}

impl TaskFailure {
    /// Appends the binary form (the fields cut to their bounds, at a character boundary).
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .str(cut(&self.path, MAX_PATH_BYTES))
            .str(cut(&self.code, MAX_TASK_FAILURE_CODE_BYTES))
            .str(cut(&self.message, MAX_TASK_MESSAGE_BYTES));
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<TaskFailure, CodecError> {
        Ok(TaskFailure {
            path: r.str("path", MAX_PATH_BYTES)?.to_owned(),
            code: r.str("code", MAX_TASK_FAILURE_CODE_BYTES)?.to_owned(),
            message: r.str("message", MAX_TASK_MESSAGE_BYTES)?.to_owned(),
        })
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What the runner has done so far, sent with each update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Items (files, directories, objects) it knows of so far.
    pub total: u64,
    /// Items handled, failed ones included.
    pub done: u64,
    /// Items that failed (each has a report line, up to the report's bound).
    pub failed: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// The counts in words, for the kind (`3 files created, 1 updated, …`).
    pub summary: String,
}

impl TaskCounts {
    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Writer::new(out)
            .u64(self.total)
            .u64(self.done)
            .u64(self.failed)
            .u64(self.bytes)
            .str(cut(&self.summary, MAX_TASK_MESSAGE_BYTES));
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<TaskCounts, CodecError> {
        Ok(TaskCounts {
            total: r.u64("total")?,
            done: r.u64("done")?,
            failed: r.u64("failed")?,
            bytes: r.u64("bytes")?,
            summary: r.str("summary", MAX_TASK_MESSAGE_BYTES)?.to_owned(),
        })
    }
}

/// A task as kept: what was asked, its state and counts. Its report lines are kept apart
/// (`reported` of them) and read in pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Its id (1 and up, never reused).
    pub id: u64,
    /// What it does.
    pub kind: TaskKind,
    /// The uid that asked for it (0 for root and the service's own): only root and that
    /// user see it and may cancel it.
    pub owner: u32,
    /// The paths it was asked for.
    pub paths: Vec<String>,
    /// Where it is.
    pub state: TaskState,
    /// A cancel was asked for while it executes: the runner stops at the next item.
    pub cancel_requested: bool,
    /// When it was asked for, when it last started executing, and when it finished
    /// (nanoseconds since the epoch; 0 for not yet).
    pub created_ns: i64,
    /// See `created_ns`.
    pub started_ns: i64,
    /// See `created_ns`.
    pub ended_ns: i64,
    /// What was done.
    pub counts: TaskCounts,
    /// Why it failed (empty otherwise).
    pub message: String,
    /// Lines in its report.
    pub reported: u32,
}

impl Task {
    /// Appends the binary form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer::new(out);
        w.u64(self.id);
        self.kind.encode(&mut w);
        w.u32(self.owner);
        w.u32(self.paths.len() as u32);
        for p in &self.paths {
            w.str(p);
        }
        w.u8(self.state.to_u8())
            .u8(u8::from(self.cancel_requested))
            .i64(self.created_ns)
            .i64(self.started_ns)
            .i64(self.ended_ns);
        self.counts.encode(out);
        Writer::new(out)
            .str(cut(&self.message, MAX_TASK_MESSAGE_BYTES))
            .u32(self.reported);
    }

    /// Reads the binary form.
    pub fn decode(r: &mut Reader<'_>) -> Result<Task, CodecError> {
        let id = r.u64("id")?;
        let kind = TaskKind::decode(r)?;
        let owner = r.u32("owner")?;
        let n = r.count("paths", MAX_TASK_PATHS, 4)?;
        let mut paths = Vec::with_capacity(n);
        let mut bytes = 0;
        for _ in 0..n {
            let p = r.str("path", MAX_PATH_BYTES)?;
            bytes += p.len();
            paths.push(p.to_owned());
        }
        if bytes > MAX_TASK_PATHS_BYTES {
            return Err(r.bad_value("paths", bytes as u64, "at most MAX_TASK_PATHS_BYTES"));
        }
        let state = TaskState::decode(r)?;
        let cancel_requested = match r.u8("cancel")? {
            0 => false,
            1 => true,
            v => return Err(r.bad_value("cancel", u64::from(v), "0 or 1")),
        };
        Ok(Task {
            id,
            kind,
            owner,
            paths,
            state,
            cancel_requested,
            created_ns: r.i64("created")?,
            started_ns: r.i64("started")?,
            ended_ns: r.i64("ended")?,
            counts: TaskCounts::decode(r)?,
            message: r.str("message", MAX_TASK_MESSAGE_BYTES)?.to_owned(),
            reported: r.u32("reported")?,
        })
    }

    /// Reads a task's kind from its name (`import`, `export`, `restore`, `auto-export`,
    /// `release`: with no idle time).
    pub fn kind_named(name: &str) -> Option<TaskKind> {
        [
            TaskKind::Import,
            TaskKind::Export,
            TaskKind::Restore,
            TaskKind::AutoExport,
            TaskKind::Release { idle_days: 0 },
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// A task's kind and paths as the wire carries a new one.
pub fn encode_new(kind: TaskKind, paths: &[String], out: &mut Vec<u8>) {
    let mut w = Writer::new(out);
    kind.encode(&mut w);
    w.u32(paths.len() as u32);
    for p in paths {
        w.str(p);
    }
}

/// Reads what [`encode_new`] wrote.
pub fn decode_new(r: &mut Reader<'_>) -> Result<(TaskKind, Vec<String>), CodecError> {
    let kind = TaskKind::decode(r)?;
    let n = r.count("paths", MAX_TASK_PATHS, 4)?;
    let mut paths = Vec::with_capacity(n);
    for _ in 0..n {
        paths.push(r.str("path", MAX_PATH_BYTES)?.to_owned());
    }
    Ok((kind, paths))
}

whole_record!(Task, "task");
whole_record!(TaskFailure, "task report line");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Record;

    #[test]
    fn a_task_round_trips_and_every_cut_of_it_is_refused() {
        let task = Task {
            id: 7,
            kind: TaskKind::Export,
            owner: 1000,
            paths: vec!["/data".into(), "/data/é".into()],
            state: TaskState::Executing,
            cancel_requested: true,
            created_ns: 1,
            started_ns: 2,
            ended_ns: 0,
            counts: TaskCounts {
                total: 10,
                done: 4,
                failed: 1,
                bytes: 1 << 33,
                summary: "4 files".into(),
            },
            message: String::new(),
            reported: 1,
        };
        let bytes = task.to_bytes();
        assert_eq!(Task::from_bytes(&bytes).expect("decodes"), task);
        for end in 0..bytes.len() {
            assert!(Task::from_bytes(&bytes[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn report_fields_are_cut_at_a_character_boundary() {
        let line = TaskFailure {
            path: "/a".into(),
            code: "S3Error".into(),
            message: "é".repeat(MAX_TASK_MESSAGE_BYTES),
        };
        let back = TaskFailure::from_bytes(&line.to_bytes()).expect("decodes");
        assert!(back.message.len() <= MAX_TASK_MESSAGE_BYTES);
        assert!(back.message.chars().all(|c| c == 'é'));
    }
}
