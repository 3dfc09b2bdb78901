//! Hydration as the metadata service runs it: the chunks a request needs are fetched once,
//! however many requests need them at the same time.
//!
//! A request's thread claims the chunks it needs that no one is fetching, has the
//! [`Repository`] fetch those, marks them present in the store, and waits (bounded by
//! [`HYDRATE_WAIT_MS`]) for the chunks others claimed; then it looks at the store again,
//! since a fetch it waited for may have failed. A chunk is marked present only after its
//! bytes were written durably, so a process killed midway leaves each chunk either present
//! or still released.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::limits::HYDRATE_WAIT_MS;
use crate::meta::repo::{HS_LOST, HydrateJob, Repository};
use crate::meta::store::MetaStore;
use crate::meta::types::MetaError;

/// The chunks being fetched, shared by the threads that answer hydration requests.
pub struct Hydrator {
    repository: Option<Arc<dyn Repository>>,
    /// (ino, chunk) being fetched.
    fetching: Mutex<HashSet<(u64, u64)>>,
    done: Condvar,
}

impl std::fmt::Debug for Hydrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hydrator")
            .field("repository", &self.repository.is_some())
            .finish()
    }
}

impl Hydrator {
    /// A hydrator over `repository` (none: released files cannot be read).
    pub fn new(repository: Option<Arc<dyn Repository>>) -> Hydrator {
        Hydrator {
            repository,
            fetching: Mutex::new(HashSet::new()),
            done: Condvar::new(),
        }
    }

    /// Makes `job.chunks` present (see the module's documentation); the file's HSM flags
    /// after.
    pub fn run(&self, store: &MetaStore, job: &HydrateJob) -> Result<u32, MetaError> {
        let ino = job.attr.ino;
        let failed = |reason: String| MetaError::Repository {
            path: job.path.clone(),
            reason,
        };
        let Some(repository) = &self.repository else {
            return Err(failed(
                "its data is in its repository, and this metadata service runs no \
                 repository mover (start it with `nacre serve --meta`)"
                    .into(),
            ));
        };
        let deadline = Instant::now() + Duration::from_millis(HYDRATE_WAIT_MS);
        loop {
            // The map is read and the chunks claimed under one lock: a fetch marks its chunks
            // present before it gives up its claims, so a chunk is either seen present here
            // or seen claimed, never fetched again after it was made present (and written).
            let mut fetching = self.lock();
            let Some(file) = store.repo_file(ino)? else {
                return Err(failed("it is no longer an imported file".into()));
            };
            if file.etag != job.file.etag {
                return Err(failed(format!(
                    "its object {} was imported again while it was being read; read again",
                    file.key
                )));
            }
            if file.flags & HS_LOST != 0 {
                return Err(failed(format!(
                    "its object {} changed or went away in the repository since it was \
                     imported; import it again",
                    file.key
                )));
            }
            let missing = job.chunks.iter().copied().filter(|&c| !file.is_present(c));
            let mut others = false;
            let mine: Vec<u64> = missing
                .filter(|&c| {
                    let theirs = fetching.contains(&(ino, c));
                    others |= theirs;
                    !theirs
                })
                .collect();
            if mine.is_empty() {
                if !others {
                    return Ok(file.flags);
                }
                // Others fetch the rest: wait for one of theirs to end, then look again.
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(failed(format!(
                        "chunks of {} were not fetched within {HYDRATE_WAIT_MS} ms",
                        file.key
                    )));
                }
                let (guard, _) = self
                    .done
                    .wait_timeout(fetching, left)
                    .unwrap_or_else(PoisonError::into_inner);
                drop(guard);
                continue;
            }
            for &c in &mine {
                fetching.insert((ino, c));
            }
            drop(fetching);
            let part = HydrateJob {
                chunks: mine.clone(),
                file: file.clone(),
                ..job.clone()
            };
            let fetched = repository.fetch(&part);
            let marked = match &fetched {
                Ok(()) => store.mark_present(ino, &file.etag, &mine).map(drop),
                Err(_) => Ok(()),
            };
            self.release(ino, &mine);
            marked?;
            if let Err(e) = fetched {
                if e.lost {
                    // Only the version that failed is lost (not one imported since).
                    let _ = store.mark_lost(ino, &file.etag);
                }
                return Err(failed(e.message));
            }
        }
    }

    /// Gives up the claims on `chunks` of `ino` and wakes those waiting for them.
    fn release(&self, ino: u64, chunks: &[u64]) {
        {
            let mut fetching = self.lock();
            for &c in chunks {
                fetching.remove(&(ino, c));
            }
        }
        self.done.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(u64, u64)>> {
        self.fetching.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
