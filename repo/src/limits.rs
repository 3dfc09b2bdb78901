//! Every bound of the repository mover and importer, in one place. Units are in the names.

/// How long one S3 request other than an upload may take (a chunk's GET included): short
/// enough that a read waiting on a hydration hears of a failure, retries included, before
/// its own wait for the metadata service ends.
pub const S3_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long one upload request (a PUT of a file or a part) may take in all: its body is up
/// to a part (8 MiB, more for a file of over 80 GiB), and nobody waits on it but the task.
pub const S3_UPLOAD_TIMEOUT_MS: u64 = 300_000;
/// How long an upload's retries may go on in all.
pub const S3_UPLOAD_RETRY_TIMEOUT_MS: u64 = 600_000;
const _: () = assert!(S3_UPLOAD_TIMEOUT_MS <= S3_UPLOAD_RETRY_TIMEOUT_MS);
/// How long connecting to S3 may take.
pub const S3_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Retries of a failed S3 request (object_store's, with backoff).
pub const S3_MAX_RETRIES: usize = 3;
/// How long a request's retries may go on in all.
pub const S3_RETRY_TIMEOUT_MS: u64 = 10_000;
/// Chunks fetched at once by one hydration (ranged GETs in parallel).
pub const FETCH_PARALLEL: usize = 8;
/// Objects whose metadata an import asks for at once (HEADs in parallel).
pub const HEAD_PARALLEL: usize = 16;
/// Most objects one import lists (its listing is held in memory), and one deletion of a
/// gone directory looks through for its markers.
pub const MAX_LISTED_OBJECTS: usize = 1 << 24;
/// Worker threads of the runtime that drives S3 requests.
pub const RUNTIME_THREADS: usize = 2;
/// Files up to this size go to S3 in one PUT; larger ones in a multipart upload.
pub const MULTIPART_THRESHOLD_BYTES: u64 = 8 << 20;
/// The part size of a multipart upload (S3 takes 5 MiB to 5 GiB; 10,000 parts at most).
pub const PART_BYTES: u64 = 8 << 20;
/// Parts of one upload in flight at once.
pub const UPLOAD_PARALLEL: usize = 8;
/// The largest object S3 holds (5 TiB).
pub const MAX_OBJECT_BYTES: u64 = 5 << 40;
/// Most parts of one multipart upload (S3's bound): a file over `PART_BYTES` times this
/// goes in larger parts.
pub const MAX_PARTS: u64 = 10_000;
const _: () = assert!(MAX_OBJECT_BYTES.div_ceil(MAX_PARTS) <= 5 << 30);
/// Files a restore task restores at once (each one's chunks are fetched in parallel too).
pub const RESTORE_PARALLEL: usize = 8;
/// How often the task runner looks for a pending task when it has none.
pub const TASK_POLL_MS: u64 = 200;
/// How often a running task's counts and report lines are written to the store.
pub const TASK_UPDATE_MS: u64 = 500;
/// Tries of a task's last update (its end), [`TASK_POLL_MS`] apart.
pub const TASK_END_TRIES: usize = 10;
