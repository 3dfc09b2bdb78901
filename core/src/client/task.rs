//! The client's calls for data repository tasks (`crate::meta::task`): asking for them,
//! following them, canceling them, and the task runner's own claims and updates.

use super::Client;
use crate::codec::{CodecError, Reader};
use crate::error::Error;
use crate::limits::MAX_TASKS;
use crate::meta::proto::MetaRequest;
use crate::meta::store::TaskEnd;
use crate::meta::task::{Task, TaskCounts, TaskFailure, TaskKind};

fn lines(r: &mut Reader<'_>) -> Result<Vec<TaskFailure>, CodecError> {
    let n = r.count("lines", usize::MAX, 12)?;
    let mut page = Vec::with_capacity(n);
    for _ in 0..n {
        page.push(TaskFailure::decode(r)?);
    }
    Ok(page)
}

impl Client {
    fn task_call<T>(
        &self,
        request: &MetaRequest,
        decode: impl FnOnce(&mut Reader<'_>) -> Result<T, CodecError>,
    ) -> Result<T, Error> {
        self.inner
            .meta
            .call_decode(&self.inner.options.cred, request, decode)
    }

    /// Asks the metadata service for a task over `paths` (imports and exports: root only);
    /// the task as kept, pending until the service's runner takes it.
    pub fn task_create(&self, kind: TaskKind, paths: &[String]) -> Result<Task, Error> {
        let request = MetaRequest::TaskCreate {
            kind,
            paths: paths.to_vec(),
        };
        self.task_call(&request, Task::decode)
    }

    /// Every kept task, in id order.
    pub fn task_list(&self) -> Result<Vec<Task>, Error> {
        let mut all: Vec<Task> = Vec::new();
        loop {
            let after = all.last().map_or(0, |t| t.id);
            let request = MetaRequest::TaskList { after };
            let (page, more) = self.task_call(&request, |r| {
                let more = r.u8("more")? != 0;
                let n = r.count("tasks", MAX_TASKS, 8)?;
                let mut page = Vec::with_capacity(n);
                for _ in 0..n {
                    page.push(Task::decode(r)?);
                }
                Ok((page, more))
            })?;
            let progressed = !page.is_empty();
            all.extend(page);
            if !more || !progressed {
                return Ok(all);
            }
        }
    }

    /// The task `id`.
    pub fn task_show(&self, id: u64) -> Result<Task, Error> {
        self.task_call(&MetaRequest::TaskShow { id }, Task::decode)
    }

    /// The completion report of task `id` (its failed paths), from line `from` on.
    pub fn task_report(&self, id: u64, from: u32) -> Result<Vec<TaskFailure>, Error> {
        let mut all = Vec::new();
        loop {
            let at = from.saturating_add(u32::try_from(all.len()).unwrap_or(u32::MAX));
            let page = self.task_call(&MetaRequest::TaskReport { id, from: at }, lines)?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// Cancels task `id`: a pending one at once, an executing one at its next item.
    pub fn task_cancel(&self, id: u64) -> Result<Task, Error> {
        self.task_call(&MetaRequest::TaskCancel { id }, Task::decode)
    }

    /// For the task runner (root only): the oldest pending task, now executing.
    pub fn task_claim(&self) -> Result<Option<Task>, Error> {
        self.task_call(&MetaRequest::TaskClaim, |r| match r.u8("claimed")? {
            0 => Ok(None),
            _ => Task::decode(r).map(Some),
        })
    }

    /// For the task runner (root only): the counts of task `id`, report lines to add (as
    /// many as fit a message: [`crate::limits::TASK_PAGE_BYTES`]), and its end if it ended;
    /// the task after (a cancel asked for shows in it).
    pub fn task_update(
        &self,
        id: u64,
        counts: &TaskCounts,
        failures: &[TaskFailure],
        end: Option<TaskEnd>,
    ) -> Result<Task, Error> {
        let request = MetaRequest::TaskUpdate {
            id,
            counts: counts.clone(),
            failures: failures.to_vec(),
            end,
        };
        self.task_call(&request, Task::decode)
    }
}
