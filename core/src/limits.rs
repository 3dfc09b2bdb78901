//! Every bound of the engine, in one place. Units are in the names.

/// Size of a huge page: slabs are aligned to it and asked to be backed by huge pages.
pub const HUGE_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Alignment of every chunk (O_DIRECT and page-granular registration need at least this).
pub const CHUNK_ALIGN_BYTES: usize = 4096;
/// Largest chunk a pool hands out.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024 * 1024;
/// Largest pool (all its chunks together).
pub const MAX_POOL_BYTES: usize = 64 * 1024 * 1024 * 1024;
/// Largest registered region io_uring accepts; a slab is registered in pieces of this size.
pub const MAX_REGISTRATION_BYTES: usize = 1 << 30;
