//! Hydration as the metadata service runs it: the chunks a request needs are fetched once,
//! however many requests need them at the same time.
//!
//! A request's thread claims the chunks it needs that no one is fetching, has the
//! [`Repository`] fetch those, marks them present in the store, and waits (bounded by
//! [`HYDRATE_WAIT_MS`]) for the chunks others claimed; then it looks at the store again,
//! since a fetch it waited for may have failed. A chunk is marked present only after its
//! bytes were written durably, so a process killed midway leaves each chunk either present
//! or still released.
//!
//! A release (`Hydrator::release`) takes the whole file: no hydration of it runs while its
//! data is dropped, and it waits for those that run before it starts.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::limits::HYDRATE_WAIT_MS;
use crate::meta::repo::{HS_LOST, HydrateJob, ReleaseOutcome, Repository};
use crate::meta::store::MetaStore;
use crate::meta::types::MetaError;

/// The chunks being fetched, shared by the threads that answer hydration requests.
pub struct Hydrator {
    repository: Option<Arc<dyn Repository>>,
    claims: Mutex<Claims>,
    done: Condvar,
}

/// What is being fetched and released.
#[derive(Debug, Default)]
struct Claims {
    /// (ino, chunk) being fetched.
    chunks: HashSet<(u64, u64)>,
    /// Files being released: none of their chunks is fetched meanwhile.
    releasing: HashSet<u64>,
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
            claims: Mutex::new(Claims::default()),
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
        let repository = self.repository(&job.path)?;
        let deadline = Instant::now() + Duration::from_millis(HYDRATE_WAIT_MS);
        loop {
            // The map is read and the chunks claimed under one lock: a fetch marks its chunks
            // present before it gives up its claims, so a chunk is either seen present here
            // or seen claimed, never fetched again after it was made present (and written).
            let mut claims = self.lock();
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
            let releasing = claims.releasing.contains(&ino);
            let mine: Vec<u64> = missing
                .filter(|&c| {
                    let theirs = releasing || claims.chunks.contains(&(ino, c));
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
                    .wait_timeout(claims, left)
                    .unwrap_or_else(PoisonError::into_inner);
                drop(guard);
                continue;
            }
            for &c in &mine {
                claims.chunks.insert((ino, c));
            }
            drop(claims);
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
            self.release_claims(ino, &mine);
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

    /// Releases the file of `job` (planned by `MetaStore::release_plan`): waits for its
    /// hydrations to end, keeps new ones off, marks it released in the store (refused while
    /// a handle is open on it) and only then drops its data from the targets, durably.
    /// A service killed midway leaves it released, its data partly still on the targets:
    /// its next read fetches every chunk again.
    pub fn release(
        &self,
        store: &MetaStore,
        job: &HydrateJob,
    ) -> Result<ReleaseOutcome, MetaError> {
        let ino = job.attr.ino;
        let busy = |reason: &str| MetaError::Busy {
            path: job.path.clone(),
            reason: reason.into(),
        };
        let repository = self.repository(&job.path)?;
        let deadline = Instant::now() + Duration::from_millis(HYDRATE_WAIT_MS);
        {
            let mut claims = self.lock();
            loop {
                if claims.releasing.contains(&ino) {
                    return Err(busy("another release of it runs"));
                }
                if !claims.chunks.iter().any(|&(i, _)| i == ino) {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(busy(&format!(
                        "its chunks were still being fetched after {HYDRATE_WAIT_MS} ms"
                    )));
                }
                claims = self
                    .done
                    .wait_timeout(claims, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            claims.releasing.insert(ino);
        }
        let outcome = store.mark_released(job);
        let punched = match outcome {
            Ok(ReleaseOutcome::Released(_)) => repository.punch(job),
            _ => Ok(()),
        };
        self.lock().releasing.remove(&ino);
        self.done.notify_all();
        let outcome = outcome?;
        punched.map_err(|e| MetaError::Repository {
            path: job.path.clone(),
            reason: format!(
                "released, but its data was not all dropped from its targets: {}",
                e.message
            ),
        })?;
        Ok(outcome)
    }

    fn repository(&self, path: &str) -> Result<&Arc<dyn Repository>, MetaError> {
        self.repository
            .as_ref()
            .ok_or_else(|| MetaError::Repository {
                path: path.to_owned(),
                reason: "its data is in its repository, and this metadata service runs no \
                         repository mover (start it with `nacre serve --meta`)"
                    .into(),
            })
    }

    /// Gives up the claims on `chunks` of `ino` and wakes those waiting for them.
    fn release_claims(&self, ino: u64, chunks: &[u64]) {
        {
            let mut claims = self.lock();
            for &c in chunks {
                claims.chunks.remove(&(ino, c));
            }
        }
        self.done.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
