//! Every bound of the io crate, in one place. Units are in the names.

/// Alignment of file offsets, lengths and memory addresses for O_DIRECT. 4 KiB covers every
/// logical block size a target's device is expected to have (512 B or 4 KiB).
pub const DIRECT_IO_ALIGN_BYTES: u64 = 4096;

/// Size of a transparent huge page; buffers at least this large are aligned to it and
/// asked to be backed by huge pages.
pub const HUGE_PAGE_BYTES: u64 = 2 * 1024 * 1024;

/// Largest single read or write. Callers split larger transfers (Lustre's default RPC is
/// 4 MiB, so one op is one stripe-sized chunk).
pub const MAX_IO_BYTES: u64 = 4 * 1024 * 1024;

/// Size of one bounce buffer: the largest op plus an aligned block at each edge.
pub const BOUNCE_BUFFER_BYTES: u64 = MAX_IO_BYTES + 2 * DIRECT_IO_ALIGN_BYTES;

/// Default number of bounce buffers an [`crate::ObjectStore`] allocates at start.
pub const DEFAULT_BOUNCE_BUFFERS: u32 = 4;

/// Most bounce buffers one store may allocate.
pub const MAX_BOUNCE_BUFFERS: u32 = 64;

/// Default io_uring queue depth (submission queue entries) of a store.
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;

/// Largest io_uring queue depth a store accepts.
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// Default number of objects a store keeps open in its registered file table.
pub const DEFAULT_OPEN_OBJECTS: u32 = 1024;

/// Most objects a store keeps open at once (the registered file table's size).
pub const MAX_OPEN_OBJECTS: u32 = 65_536;

/// Default bound on operations accepted but not yet completed by a store.
pub const DEFAULT_MAX_OPS: u32 = 1024;

/// Largest bound on operations accepted but not yet completed by a store.
pub const MAX_OPS: u32 = 65_536;

/// Most memory regions a caller may register with one store (the fixed-buffer table's
/// size, bounce buffers included).
pub const MAX_REGISTERED_REGIONS: u32 = 1024;

/// Largest registered memory region: io_uring refuses fixed buffers over 1 GiB.
pub const MAX_REGION_BYTES: u64 = 1 << 30;

/// How long the blocking helpers wait for their operations before giving up on them.
pub const IO_TIMEOUT_MS: u64 = 30_000;

/// How many times a short write is continued before it is reported as an error.
pub const MAX_SHORT_WRITE_RETRIES: u32 = 16;

/// Number of subdirectories objects are spread over, so no directory grows without bound.
pub const OBJECT_SUBDIRS: u64 = 256;

/// Version of the on-disk target format this build writes and reads.
pub const TARGET_FORMAT_VERSION: u32 = 1;
