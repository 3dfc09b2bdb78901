//! Releases (decision 0022): the data of an archived, unchanged file is dropped from its
//! targets and fetched again on its next read. A client reads a file it holds open straight
//! from the targets, so a file is released only while no handle is open on it: while any
//! association exists, every open is counted here, in memory, until its close notice.

use std::collections::HashMap;
use std::sync::{MutexGuard, PoisonError};

use redb::ReadableTable;

use super::{MetaStore, now_ns};
use crate::codec::Record;
use crate::meta::repo::{
    HS_ARCHIVED, HS_DIRTY, HS_LOST, HS_NORELEASE, HS_RELEASED, HS_USER_MASK, HydrateJob,
    ReleaseOutcome, ReleaseSkip, RepoFile,
};
use crate::meta::types::{Cred, MetaError};

/// Nanoseconds in a day.
const DAY_NS: i64 = 86_400 * 1_000_000_000;

impl MetaStore {
    /// This start's number (new at every open of the store): an open's reply gives it, and
    /// the close notice brings it back, so that a close of a handle opened before a restart
    /// takes nothing from the handles counted since.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// A handle on file `ino` was opened (while associations exist): it counts until its
    /// close notice.
    pub fn handle_opened(&self, ino: u64) {
        *self.handles().entry(ino).or_default() += 1;
    }

    /// A handle on file `ino` that an open of start `instance` counted was closed.
    pub fn handle_closed(&self, ino: u64, instance: u64) {
        if instance != self.instance {
            return;
        }
        let mut handles = self.handles();
        if let Some(n) = handles.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                handles.remove(&ino);
            }
        }
    }

    /// Handles counted open on file `ino`.
    pub fn open_handles(&self, ino: u64) -> u32 {
        self.handles().get(&ino).copied().unwrap_or(0)
    }

    fn handles(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        self.handles.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets `set` and clears `clear` of the file's HSM flags (only [`HS_USER_MASK`] ones; its
    /// owner or root); its flags after. The file must be imported or exported: the flags
    /// live with its link to its object.
    pub fn hsm_set(&self, cred: &Cred, path: &str, set: u32, clear: u32) -> Result<u32, MetaError> {
        let bad = (set | clear) & !HS_USER_MASK;
        if bad != 0 {
            return Err(MetaError::Invalid {
                field: "hsm flags",
                value: format!("{bad:#x}"),
                allowed: "norelease and dirty".into(),
            });
        }
        let attr = self.lookup(cred, path)?;
        if !cred.is_root() && cred.uid != attr.uid {
            return Err(MetaError::Perm {
                path: path.to_owned(),
                reason: "only its owner or root may set its HSM flags".into(),
            });
        }
        self.change_flags(attr.ino, set, clear, |_| true)?
            .ok_or_else(|| MetaError::Invalid {
                field: "path",
                value: path.to_owned(),
                allowed: "a file imported from or exported to a data repository".into(),
            })
    }

    /// What releasing the file at `path` takes (root only): the job naming it, its
    /// association and objects, or what is done instead when it is not to be released
    /// (never exported, changed since, accessed within `idle_days`, released already).
    pub fn release_plan(
        &self,
        cred: &Cred,
        path: &str,
        idle_days: u32,
    ) -> Result<Result<HydrateJob, ReleaseOutcome>, MetaError> {
        super::repo_ops::root_only(cred, path, "release data")?;
        let attr = self.lookup(cred, path)?;
        if attr.is_dir() {
            return Err(MetaError::IsDir {
                path: path.to_owned(),
            });
        }
        if attr.is_symlink() {
            // A link's target is in its inode: no data to drop.
            return Ok(Err(ReleaseOutcome::Skipped(ReleaseSkip::Empty)));
        }
        let Some(file) = self.repo_file(attr.ino)? else {
            return Ok(Err(ReleaseOutcome::Skipped(ReleaseSkip::NotArchived)));
        };
        if let Some(outcome) = not_releasable(path, &file)? {
            return Ok(Err(outcome));
        }
        let last_access = attr.atime_ns.max(attr.mtime_ns).max(attr.ctime_ns);
        if idle_days > 0 && now_ns().saturating_sub(last_access) < i64::from(idle_days) * DAY_NS {
            return Ok(Err(ReleaseOutcome::Skipped(ReleaseSkip::Recent)));
        }
        let assoc = self.association_of_file(path, &file)?;
        Ok(Ok(HydrateJob {
            path: path.to_owned(),
            attr,
            assoc,
            file,
            chunks: Vec::new(),
        }))
    }

    /// Marks the file of `job` released (every chunk absent), if it still holds the same
    /// object version, archived and unchanged, and no handle is open on it
    /// ([`MetaError::Busy`] otherwise). The count is held while the flags are written: an
    /// open counts its handle before it reads them, so it is either seen here or sees the
    /// file released (and fetches what it reads).
    pub fn mark_released(&self, job: &HydrateJob) -> Result<ReleaseOutcome, MetaError> {
        let ino = job.attr.ino;
        let handles = self.handles();
        if let Some(n) = handles.get(&ino) {
            return Err(MetaError::Busy {
                path: job.path.clone(),
                reason: format!(
                    "{n} handle{} open on it; it is released once none is",
                    if *n == 1 { " is" } else { "s are" }
                ),
            });
        }
        let outcome = self.write(|tx| {
            let mut record = match tx.repo_files.get(ino)? {
                Some(guard) => RepoFile::from_bytes(guard.value())?,
                None => return Ok(ReleaseOutcome::Skipped(ReleaseSkip::NotArchived)),
            };
            if record.etag != job.file.etag {
                return Err(MetaError::Busy {
                    path: job.path.clone(),
                    reason: "it was exported or imported again while being released".into(),
                });
            }
            if let Some(outcome) = not_releasable(&job.path, &record)? {
                return Ok(outcome);
            }
            record.set_released();
            tx.repo_files.insert(ino, record.to_bytes().as_slice())?;
            Ok(ReleaseOutcome::Released(record.size))
        });
        drop(handles);
        outcome
    }
}

/// Why `file` is not to be released, if it is not: what a release does instead.
fn not_releasable(path: &str, file: &RepoFile) -> Result<Option<ReleaseOutcome>, MetaError> {
    if file.flags & HS_LOST != 0 {
        return Err(MetaError::Repository {
            path: path.to_owned(),
            reason: format!(
                "its object {} changed or went away in the repository: releasing it would \
                 lose its data",
                file.key
            ),
        });
    }
    let skip = |why| Ok(Some(ReleaseOutcome::Skipped(why)));
    if file.flags & HS_RELEASED != 0 {
        return Ok(Some(ReleaseOutcome::AlreadyReleased));
    }
    if file.flags & HS_ARCHIVED == 0 {
        return skip(ReleaseSkip::NotArchived);
    }
    if file.flags & HS_DIRTY != 0 {
        return skip(ReleaseSkip::Dirty);
    }
    if file.flags & HS_NORELEASE != 0 {
        return skip(ReleaseSkip::NoRelease);
    }
    if file.size == 0 {
        return skip(ReleaseSkip::Empty);
    }
    Ok(None)
}
