//! The repository mover: fetches chunks of released files from S3 (ranged GETs in parallel,
//! each for the object version the file was imported from) and writes them into the files'
//! objects on the targets, through a Nacre client of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nacre::Client;
use nacre::meta::repo::{Association, FetchError, HydrateJob, Repository};
use object_store::aws::AmazonS3;
use object_store::path::{Path, PathPart};
use object_store::{GetOptions, GetRange, ObjectStore};

use crate::error::RepoError;
use crate::limits::{FETCH_PARALLEL, RUNTIME_THREADS};
use crate::s3::{Purpose, credentials, is_lost, store_for};

/// What reaching S3 takes in one process: a runtime to drive object_store, and a client
/// per association (made when first needed, with the credentials of that moment).
pub struct S3Access {
    /// Started at the first request: a metadata service that never reaches S3 runs no
    /// threads for it.
    runtime: OnceLock<tokio::runtime::Runtime>,
    stores: Mutex<HashMap<(u32, String, Purpose), Arc<AmazonS3>>>,
}

impl std::fmt::Debug for S3Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Access")
    }
}

impl S3Access {
    /// An access whose runtime starts with its first request.
    pub fn new() -> Result<S3Access, RepoError> {
        Ok(S3Access {
            runtime: OnceLock::new(),
            stores: Mutex::new(HashMap::new()),
        })
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, RepoError> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("nacre-s3")
            .enable_all()
            .build()
            .map_err(RepoError::Runtime)?;
        // Two threads racing to start it: one runtime is kept, the other dropped.
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// The client of `assoc`'s bucket for every request but uploads.
    pub fn store(&self, assoc: &Association) -> Result<Arc<AmazonS3>, RepoError> {
        self.client_for(assoc, Purpose::Requests)
    }

    /// The client of `assoc`'s bucket for uploads (PUTs of files and parts).
    pub fn upload_store(&self, assoc: &Association) -> Result<Arc<AmazonS3>, RepoError> {
        self.client_for(assoc, Purpose::Uploads)
    }

    fn client_for(
        &self,
        assoc: &Association,
        purpose: Purpose,
    ) -> Result<Arc<AmazonS3>, RepoError> {
        let key = (
            assoc.id,
            format!("{}|{:?}|{:?}", assoc.url(), assoc.endpoint, assoc.region),
            purpose,
        );
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = stores.get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = store_for(assoc, &credentials()?, purpose)?;
        stores.insert(key, Arc::clone(&store));
        Ok(store)
    }

    /// Checks that `assoc`'s bucket answers (one listing request): `Err` with what S3, or
    /// the credentials, or the connection said.
    pub fn check(&self, assoc: &Association) -> Result<(), String> {
        let store = self.store(assoc).map_err(|e| e.to_string())?;
        let prefix = (!assoc.prefix.is_empty()).then(|| Path::from(assoc.prefix.as_str()));
        self.block_on(store.list_with_delimiter(prefix.as_ref()))
            .map_err(|e| e.to_string())?
            .map(drop)
            .map_err(|e| format!("{}: {e}", assoc.url()))
    }

    /// A handle on this access's runtime (started now if it was not), to spawn requests on.
    pub fn handle(&self) -> Result<tokio::runtime::Handle, RepoError> {
        Ok(self.runtime()?.handle().clone())
    }

    /// Runs a future of S3 requests to its end, on this access's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, RepoError> {
        Ok(self.runtime()?.block_on(future))
    }
}

/// GETs in flight; those left when a fetch gives up are aborted.
struct Window<T>(std::collections::VecDeque<tokio::task::JoinHandle<T>>);

impl<T> Drop for Window<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The object key as object_store names it.
pub fn location(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| Path::from(key))
}

/// The key of a directory's marker object, `key/`, as object_store names it: parsing drops
/// a trailing `/`, and a path keeps one only as an empty last part.
pub fn marker_location(key: &str) -> Path {
    location(key.trim_end_matches('/')).join(PathPart::from(""))
}

/// The repository mover of a metadata service (see the module's documentation).
pub struct Mover {
    s3: S3Access,
    /// The metadata service the mover's client connects to, once it listens.
    meta: OnceLock<String>,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Mover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mover")
            .field("meta", &self.meta.get())
            .finish()
    }
}

impl Mover {
    /// A mover; [`Mover::set_meta`] tells it where its metadata service listens.
    pub fn new() -> Result<Mover, RepoError> {
        Ok(Mover {
            s3: S3Access::new()?,
            meta: OnceLock::new(),
            client: Mutex::new(None),
        })
    }

    /// Where the metadata service listens (its client writes the chunks it fetches).
    pub fn set_meta(&self, endpoint: &str) {
        let _ = self.meta.set(endpoint.to_owned());
    }

    fn client(&self) -> Result<Client, String> {
        let mut client = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let meta = self
            .meta
            .get()
            .ok_or("the repository mover does not know its metadata service yet")?;
        let c = Client::connect(meta).map_err(|e| format!("the repository mover: {e}"))?;
        *client = Some(c.clone());
        Ok(c)
    }
}

impl Repository for Mover {
    fn fetch(&self, job: &HydrateJob) -> Result<(), FetchError> {
        let object = format!("s3://{}/{}", job.assoc.bucket, job.file.key);
        let store = self.s3.store(&job.assoc).map_err(|e| e.to_string())?;
        let file = self
            .client()?
            .open_for_mover(&job.path, job.attr.clone())
            .map_err(|e| e.to_string())?;
        let at = location(&job.file.key);
        let runtime = self.s3.handle().map_err(|e| e.to_string())?;
        // A sliding window of FETCH_PARALLEL GETs, each a task of the runtime: a chunk is
        // written (in order) while the GETs after it go on.
        let mut window = Window(std::collections::VecDeque::with_capacity(FETCH_PARALLEL));
        let mut next = job.chunks.iter();
        loop {
            while window.0.len() < FETCH_PARALLEL {
                let Some(&c) = next.next() else { break };
                let range = job.file.chunk_range(c);
                let options = GetOptions {
                    range: Some(GetRange::Bounded(range.clone())),
                    if_match: Some(job.file.etag.clone()),
                    ..GetOptions::default()
                };
                let (store, at) = (Arc::clone(&store), at.clone());
                window.0.push_back(runtime.spawn(async move {
                    let got = store.get_opts(&at, options).await?;
                    let bytes = got.bytes().await?;
                    Ok::<_, object_store::Error>((range, bytes))
                }));
            }
            let Some(task) = window.0.pop_front() else {
                break;
            };
            let joined = runtime.block_on(task);
            let result = match joined {
                Ok(result) => result,
                Err(e) => return Err(format!("{object}: the fetch stopped: {e}").into()),
            };
            let (range, bytes) = match result {
                Ok(got) => got,
                Err(e) if is_lost(&e) => {
                    return Err(FetchError::lost(format!(
                        "{object} changed or went away since it was imported (ETag {}): {e}",
                        job.file.etag
                    )));
                }
                Err(e) => return Err(format!("{object}: {e}").into()),
            };
            if bytes.len() as u64 != range.end - range.start {
                return Err(format!(
                    "{object}: bytes {}..{} came back as {} bytes",
                    range.start,
                    range.end,
                    bytes.len()
                )
                .into());
            }
            file.write_at(&bytes, range.start)
                .map_err(|e| format!("{object}: writing it to the file: {e}"))?;
        }
        // Durable before the chunks are marked present.
        file.sync()
            .map_err(|e| format!("{object}: making it durable: {e}"))?;
        let bytes: u64 = job
            .chunks
            .iter()
            .map(|&c| {
                let r = job.file.chunk_range(c);
                r.end - r.start
            })
            .sum();
        nacre::transport::log_line!(
            "nacre meta: fetched {} chunks ({bytes} bytes) of {object} into {}",
            job.chunks.len(),
            job.path
        );
        Ok(())
    }

    fn punch(&self, job: &HydrateJob) -> Result<(), FetchError> {
        let file = self
            .client()?
            .open_for_mover(&job.path, job.attr.clone())
            .map_err(|e| e.to_string())?;
        file.punch_all().map_err(|e| e.to_string())?;
        nacre::transport::log_line!(
            "nacre meta: released {} ({} bytes; in s3://{}/{})",
            job.path,
            job.file.size,
            job.assoc.bucket,
            job.file.key
        );
        Ok(())
    }
}
