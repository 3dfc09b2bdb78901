//! Every bound of the engine, in one place. Units are in the names.

/// Alignment of every chunk (O_DIRECT and page-granular registration need at least this).
pub const CHUNK_ALIGN_BYTES: usize = 4096;
/// Largest chunk a pool hands out.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024 * 1024;
/// Largest pool (all its chunks together).
pub const MAX_POOL_BYTES: usize = 64 * 1024 * 1024 * 1024;
/// Largest registered region io_uring accepts; a slab is registered in pieces of this size.
pub const MAX_REGISTRATION_BYTES: usize = nacre_io::limits::MAX_REGION_BYTES as usize;

/// How long an acceptor waits for a client before it looks at the stop flag again.
pub const ACCEPT_POLL_MS: u64 = 100;
/// How long an acceptor waits after its first failed accept (out of descriptors, say)
/// before it tries again; the wait doubles while failures go on, up to
/// [`ACCEPT_BACKOFF_MAX_MS`].
pub const ACCEPT_BACKOFF_MIN_MS: u64 = 10;
/// The longest wait of an acceptor between failed accepts.
pub const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;
/// How often a server logs one kind of error that keeps coming (the others of the kind are
/// counted, and the count logged with the next one).
pub const ERROR_LOG_INTERVAL_MS: u64 = 10_000;
/// Kinds of error a server's rate-limited log tells apart (more are logged each time).
pub const MAX_ERROR_LOG_KINDS: usize = 32;
/// The fewest connections a server must have room for in its open-file limit: with less it
/// refuses to start, naming the limit.
pub const MIN_CONNECTIONS: usize = 16;
/// How long an idle connection or worker waits before it looks at the stop flag again.
pub const IDLE_POLL_MS: u64 = 200;
/// Largest piece of a request one storage operation moves (the io crate's bound).
pub const MAX_IO_PIECE_BYTES: usize = nacre_io::limits::MAX_IO_BYTES as usize;
/// How long a connection thread waits for the workers to finish a request's pieces.
pub const WORKER_REPLY_TIMEOUT_MS: u64 = 60_000;
/// How long a stopping target server waits for the work it holds (storage operations,
/// replies being written) before it stops without it, saying per worker and store what
/// was left: SIGTERM stops a target within this bound (plus [`IDLE_POLL_MS`]) whatever is
/// outstanding.
pub const STOP_TIMEOUT_MS: u64 = 10_000;
/// Objects a worker remembers as existing before it forgets them all and asks again.
pub const MAX_KNOWN_OBJECTS: usize = 1 << 20;
/// Most targets one target server serves with its shared workers (each worker opens a ring
/// per target).
pub const MAX_TARGETS_PER_SERVER: usize = 64;
/// Payload memory a target's connection may hold for requests it has read and not answered
/// (write payloads, read data): past it, the connection's next request waits until replies
/// go out, so pipelined requests cannot make a target allocate without bound.
pub const MAX_STAGED_BYTES_PER_CONNECTION: usize = 32 << 20;
/// Staging a target server may hold beyond its registered pool, over all its connections:
/// payloads received and read data not yet written back. Past the pool and this, a request
/// waits before its payload is read (its connection is not read meanwhile), so what
/// clients send stays in their sockets. 24 connections each announcing a 64 MiB write
/// raised a server's memory by 1,472 MiB (its pool 64 MiB) before.
pub const STAGED_BYTES_BEYOND_POOL: usize = 128 << 20;
/// How long a request waits for staging (the server at its bound) before it is answered
/// EAGAIN, well within a client's request timeout so that the client hears why.
pub const STAGING_WAIT_MS: u64 = 10_000;
/// How long the metadata service tries to reach a target to remove an unlinked file's
/// objects.
pub const OBJECT_REMOVE_TIMEOUT_MS: u64 = 5_000;
/// How often a target reports its free space to the metadata service.
pub const HEARTBEAT_MS: u64 = 5_000;
/// How long a target keeps trying to register with the metadata service at start.
pub const REGISTER_TIMEOUT_MS: u64 = 30_000;
/// Progress threads an asynchronous queue runs by default.
pub const DEFAULT_PROGRESS_THREADS: usize = 8;
/// Deepest asynchronous queue.
pub const MAX_QUEUE_DEPTH: usize = 4096;
/// Most connections an asynchronous queue opens to one server (they carry the requests of
/// every target it serves, decision 0016). A new one opens only while every open one has
/// [`QUEUE_REQUESTS_BEFORE_NEW_CONNECTION`] requests in flight; past the bound, requests
/// are pipelined on the least busy one (a server reads a connection's next requests while
/// it serves the last, decision 0010).
pub const MAX_QUEUE_CONNECTIONS_PER_SERVER: usize = 2;
/// Idle queues a client keeps for its blocking reads and writes (each a queue of depth 1
/// with its connections); one more is opened while every kept one is in use.
pub const MAX_IDLE_CALL_QUEUES: usize = 64;
/// Requests in flight on each of a queue's connections to a server before it opens another
/// (up to [`MAX_QUEUE_CONNECTIONS_PER_SERVER`]). Requests that share a connection share its
/// system calls on both sides; a deep queue still spreads over two of the server's workers.
pub const QUEUE_REQUESTS_BEFORE_NEW_CONNECTION: usize = 16;
/// The length an extent carries in requests about whole objects (sync, stat, truncate,
/// remove), where the length means nothing but the wire allows no empty extent.
pub const OBJECT_ONLY_LEN: u64 = 1;
/// Largest piece of caller memory one registration covers: what one RDMA memory region
/// may span (the transport's bound).
pub const MAX_REGISTER_BYTES: usize = nacre_transport::limits::MAX_RDMA_REGION_BYTES;
/// Most registrations of caller memory a client keeps at once.
pub const MAX_REGISTRATIONS: usize = 1024;
/// Largest binary form of a file's layout: a file's attributes (its layout with them) travel
/// whole in one metadata reply, whose body is at most the wire's 64 KiB; the rest of the
/// attributes take far less than the 4 KiB left. About 15,000 stripes in all components.
pub const MAX_FILE_LAYOUT_BYTES: usize = nacre_transport::limits::MAX_BODY_BYTES as usize - 4096;
/// Event-loop threads of the metadata service: they serve every TCP client, however many.
pub const META_LOOPS: usize = 2;
/// Threads of the metadata service that work removal logs for requests (unlinks,
/// registrations), contacting targets, before those requests' replies go.
pub const META_REMOVERS: usize = 2;
/// How long a target that could not be reached to remove objects is left alone by
/// requests (its log stays, worked at its next registration or heartbeat).
pub const REMOVE_RETRY_MS: u64 = 5_000;
/// Most client connections the metadata service holds (fewer when the open-file limit
/// leaves less room); past it, a loop closes its oldest idle connection to make room, or
/// refuses the new one when none is idle.
pub const MAX_META_CONNECTIONS: usize = 16 * 1024;
/// Descriptors the metadata service keeps for itself (its store, listener, loops, and
/// connections to targets) out of the open-file limit.
pub const META_RESERVED_FDS: u64 = 128;
/// Most RDMA connections the metadata service serves, each on a thread of its own (the
/// loops drive TCP only); more are refused.
pub const MAX_META_THREAD_CONNECTIONS: usize = 256;
/// Bytes of replies one connection of the metadata service may have unsent (its client
/// does not read them) before the service stops reading its requests.
pub const MAX_META_UNSENT_BYTES_PER_CONNECTION: usize = 1 << 20;
/// Bytes of replies all connections of the metadata service may have unsent before it
/// stops reading requests from any (connections that hold them that long are closed at
/// the request timeout, and reading goes on).
pub const MAX_META_UNSENT_BYTES: usize = 64 << 20;
/// Most client connections a target server holds (fewer when the open-file limit leaves
/// less room beside its object files); past it, a worker closes its oldest idle connection
/// to make room, or refuses the new one when none is idle.
pub const MAX_TARGET_CONNECTIONS: usize = 16 * 1024;
/// Descriptors a target server keeps for itself (rings, epolls, eventfds, listeners, its
/// link to the metadata service) out of the open-file limit.
pub const TARGET_RESERVED_FDS: u64 = 128;
/// How often, at most, the metadata store opens its database again after a storage failure
/// (a full device, an I/O error); operations in between fail at once with that failure.
pub const REOPEN_INTERVAL_MS: u64 = 1_000;

// Relations between the bounds, checked when the crate is built.
const _: () = assert!(MAX_CHUNK_BYTES.is_multiple_of(CHUNK_ALIGN_BYTES));
// A slab is whole huge pages (the io crate's `AlignedBuf::pinned`), so every chunk of it is
// aligned as O_DIRECT needs.
const _: () =
    assert!((nacre_io::limits::HUGE_PAGE_BYTES as usize).is_multiple_of(CHUNK_ALIGN_BYTES));
const _: () =
    assert!(CHUNK_ALIGN_BYTES.is_multiple_of(nacre_io::limits::DIRECT_IO_ALIGN_BYTES as usize));
const _: () = assert!(MAX_IO_PIECE_BYTES <= MAX_CHUNK_BYTES);
const _: () =
    assert!(STAGED_BYTES_BEYOND_POOL >= nacre_transport::limits::MAX_PAYLOAD_BYTES as usize);
const _: () = assert!(STAGING_WAIT_MS < nacre_transport::limits::REQUEST_TIMEOUT_MS);
const _: () = assert!(STOP_TIMEOUT_MS < WORKER_REPLY_TIMEOUT_MS);
const _: () = assert!(MAX_META_UNSENT_BYTES_PER_CONNECTION <= MAX_META_UNSENT_BYTES);
const _: () = assert!(MAX_FILE_LAYOUT_BYTES < nacre_transport::limits::MAX_BODY_BYTES as usize);
const _: () = assert!(ACCEPT_BACKOFF_MIN_MS <= ACCEPT_BACKOFF_MAX_MS);
const _: () = assert!(MAX_REGISTER_BYTES >= MAX_REGISTRATION_BYTES);

/// Most data repository associations (linked S3 prefixes) one file system holds, as FSx.
pub const MAX_REPO_ASSOCIATIONS: usize = 8;
/// Bytes a released file is fetched from its repository by, one ranged GET per chunk, when
/// the association names none: large enough that a GET's latency is paid per many MiB,
/// small enough that a random 4 KiB read waits for one chunk, not the file.
pub const DEFAULT_REPO_CHUNK_BYTES: u64 = 8 << 20;
/// The smallest hydration chunk an association may set.
pub const MIN_REPO_CHUNK_BYTES: u64 = 64 << 10;
/// The largest hydration chunk an association may set.
pub const MAX_REPO_CHUNK_BYTES: u64 = 1 << 30;
/// Most chunks one file's hydration map holds (a bit each, stored with the file): a file
/// with more at its association's chunk size is fetched by larger chunks.
pub const MAX_REPO_CHUNKS_PER_FILE: u64 = 1 << 20;
/// Longest object key S3 allows, in bytes (FSx does not export longer paths either).
pub const MAX_S3_KEY_BYTES: usize = 1024;
/// Longest ETag kept, in bytes (S3's are 34 to about 40).
pub const MAX_ETAG_BYTES: usize = 256;
/// Longest repository URL, endpoint or region kept, in bytes.
pub const MAX_REPO_URL_BYTES: usize = 2048;
/// Threads of the metadata service that wait for hydrations (each waits for one request's
/// chunks; requests for a chunk already being fetched wait for that fetch).
pub const META_HYDRATORS: usize = 8;
/// How long a request waits for the chunks it needs to be hydrated (by its own fetch or
/// another's) before it fails with EIO: well within a client's request timeout.
pub const HYDRATE_WAIT_MS: u64 = 25_000;
/// The largest file size, and the end of any byte range read or written: POSIX's `off_t`
/// (what a target's file system and the kernel's file calls take).
pub const MAX_FILE_BYTES: u64 = i64::MAX as u64;
/// Most bytes of a released file one client request asks to be made present (a larger read
/// asks in several), so that each request's wait stays well within the request timeout.
pub const HYDRATE_REQUEST_BYTES: u64 = 64 << 20;
/// Chunks a hydration fetches past what was asked when the read goes forward (the chunk
/// before it is present): a sequential reader then waits for several GETs in parallel, not
/// one after another. A random reader (the chunk before absent) gets only its own.
pub const HYDRATE_READAHEAD_CHUNKS: u64 = 8;
/// The largest file a data repository holds: S3's largest object (5 TiB). An import of a
/// larger size is refused (the chunk arithmetic stays far from overflow).
pub const MAX_REPO_FILE_BYTES: u64 = 5 << 40;

/// Most bytes of object keys one `KeysLinked` request carries (a longer list is asked in
/// several): well within a message's body.
pub const KEYS_LINKED_REQUEST_BYTES: usize = 48 << 10;
/// The longest idle time a release task takes, in days (a hundred years).
pub const MAX_RELEASE_IDLE_DAYS: u32 = 36_500;
/// Tasks the metadata store keeps: creating one more drops the oldest finished one (and
/// its report); when every kept task is unfinished, a new one is refused.
pub const MAX_TASKS: usize = 1000;
/// Most paths one task names.
pub const MAX_TASK_PATHS: usize = 1000;
/// Most bytes of paths one task names: a task record fits one message with room to spare.
pub const MAX_TASK_PATHS_BYTES: usize = 32 << 10;
/// Longest message, summary or report reason a task keeps, in bytes (longer ones are cut).
pub const MAX_TASK_MESSAGE_BYTES: usize = 1024;
/// Longest error code of a report line, in bytes.
pub const MAX_TASK_FAILURE_CODE_BYTES: usize = 64;
/// Most lines one task's completion report keeps (failures past it are only counted).
pub const MAX_TASK_REPORT_LINES: u32 = 100_000;
/// Most bytes of tasks or report lines one reply carries (a page; the next is asked for).
pub const TASK_PAGE_BYTES: usize = 48 << 10;
const _: () = assert!(
    MAX_TASK_PATHS_BYTES + 4 * MAX_TASK_PATHS + 3 * MAX_TASK_MESSAGE_BYTES + 256 <= TASK_PAGE_BYTES
);
const _: () = assert!(
    crate::meta::types::MAX_PATH_BYTES + MAX_TASK_FAILURE_CODE_BYTES + MAX_TASK_MESSAGE_BYTES + 12
        <= TASK_PAGE_BYTES
);
const _: () = assert!(TASK_PAGE_BYTES + 4096 <= nacre_transport::limits::MAX_BODY_BYTES as usize);

/// The most symbolic links one path resolution follows before it fails with `ELOOP`
/// (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINK_FOLLOWS: usize = 40;

/// The most names (hard links) one file has, as ext4's `EXT4_LINK_MAX`: `EMLINK` past it.
pub const MAX_LINKS: u32 = 65_000;
