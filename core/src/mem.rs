//! The memory pool: one pinned, aligned slab (an anonymous mapping, on 2 MiB huge pages
//! where the system has them, locked in memory where permitted), cut into fixed-size chunks
//! handed out from a lock-free free list. The slab is registered once with each io_uring
//! and each RDMA connection or domain that moves bytes to or from it (see
//! [`MemPool::registrations`]), so the data path never registers memory per request.
//!
//! A [`PoolBuf`] returns its chunk to the free list when dropped; the slab lives until the
//! pool and every chunk taken from it are gone.

use std::ptr::NonNull;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use nacre_io::AlignedBuf;

use crate::limits::{CHUNK_ALIGN_BYTES, MAX_CHUNK_BYTES, MAX_POOL_BYTES, MAX_REGISTRATION_BYTES};

/// How a pool is sized and backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Size of each chunk: a multiple of 4 KiB, at most [`MAX_CHUNK_BYTES`].
    pub chunk_bytes: usize,
    /// Number of chunks (at least 1; all together at most [`MAX_POOL_BYTES`]).
    pub chunks: usize,
    /// Try to back the slab with huge pages (explicit hugetlbfs pages first, then
    /// transparent huge pages); falls back to 4 KiB pages.
    pub huge_pages: bool,
    /// Try to lock the slab in memory (mlock); carries on unlocked where not permitted.
    pub lock: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            chunk_bytes: 1024 * 1024,
            chunks: 64,
            huge_pages: true,
            lock: true,
        }
    }
}

/// What went wrong making a pool.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// A field of the configuration is outside what is allowed.
    #[error("memory pool: {field} = {value} is invalid; allowed: {allowed}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// The value given.
        value: usize,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The system refused the mapping.
    #[error("memory pool: mapping {bytes} bytes failed: {source}")]
    Map {
        /// The size asked for.
        bytes: usize,
        /// The system's error.
        source: std::io::Error,
    },
}

/// How the slab ended up backed (the aligned-memory type's own answer).
pub use nacre_io::Backing;

struct PoolInner {
    /// The mapping; only `base` is used to reach its bytes once the pool is made.
    slab: AlignedBuf,
    /// The slab's first byte, taken with exclusive access when the pool was made.
    base: NonNull<u8>,
    chunk_bytes: usize,
    chunks: usize,
    free: ArrayQueue<u32>,
    locked: bool,
}

// SAFETY: the slab is plain memory owned by the pool; its chunks are reached through `base`
// only by the PoolBuf the free list handed each one to, so sharing the pool between threads
// shares no byte.
unsafe impl Send for PoolInner {}
// SAFETY: as above.
unsafe impl Sync for PoolInner {}

/// A pool of pinned, aligned chunks. Cheap to clone; every clone hands out the same chunks.
#[derive(Clone)]
pub struct MemPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for MemPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemPool")
            .field("chunk_bytes", &self.inner.chunk_bytes)
            .field("chunks", &self.inner.chunks)
            .field("free", &self.inner.free.len())
            .field("backing", &self.inner.slab.backing())
            .field("locked", &self.inner.locked)
            .finish()
    }
}

impl MemPool {
    /// Maps, populates and (where permitted) locks the slab, and fills the free list.
    pub fn new(config: PoolConfig) -> Result<MemPool, MemError> {
        let invalid = |field, value, allowed| MemError::InvalidConfig {
            field,
            value,
            allowed,
        };
        if config.chunk_bytes == 0
            || !config.chunk_bytes.is_multiple_of(CHUNK_ALIGN_BYTES)
            || config.chunk_bytes > MAX_CHUNK_BYTES
        {
            return Err(invalid(
                "chunk_bytes",
                config.chunk_bytes,
                "a multiple of 4 KiB up to 64 MiB",
            ));
        }
        let total = config
            .chunk_bytes
            .checked_mul(config.chunks)
            .filter(|&t| t <= MAX_POOL_BYTES);
        if config.chunks == 0 || config.chunks > u32::MAX as usize || total.is_none() {
            return Err(invalid(
                "chunks",
                config.chunks,
                "1 or more, all chunks together at most 64 GiB",
            ));
        }
        let bytes = total.unwrap_or(0);
        let mut slab = AlignedBuf::pinned(bytes, config.huge_pages)
            .map_err(|source| MemError::Map { bytes, source })?;
        debug_assert!(slab.len() >= bytes);
        let locked = config.lock && slab.lock();
        let base = NonNull::from(&mut slab[..]).cast::<u8>();
        let free = ArrayQueue::new(config.chunks);
        for index in 0..config.chunks as u32 {
            // The queue holds exactly `chunks` entries, so every push fits.
            let pushed = free.push(index);
            debug_assert!(pushed.is_ok());
        }
        Ok(MemPool {
            inner: Arc::new(PoolInner {
                slab,
                base,
                chunk_bytes: config.chunk_bytes,
                chunks: config.chunks,
                free,
                locked,
            }),
        })
    }

    /// A free chunk, or `None` when every chunk is in use. Never blocks, never allocates.
    pub fn get(&self) -> Option<PoolBuf> {
        let index = self.inner.free.pop()?;
        Some(PoolBuf {
            pool: Arc::clone(&self.inner),
            index,
            len: self.inner.chunk_bytes,
        })
    }

    /// Size of every chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.inner.chunk_bytes
    }

    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.inner.chunks
    }

    /// Chunks free now.
    pub fn free_chunks(&self) -> usize {
        self.inner.free.len()
    }

    /// How the slab is backed.
    pub fn backing(&self) -> Backing {
        self.inner.slab.backing()
    }

    /// Whether the slab is locked in memory.
    pub fn locked(&self) -> bool {
        self.inner.locked
    }

    /// The slab as pieces of at most [`MAX_REGISTRATION_BYTES`] (io_uring's limit for one
    /// fixed buffer), to register with each ring and RDMA connection that moves its bytes.
    /// The pieces stay valid while this pool or any chunk of it lives; whoever registers
    /// them must keep a clone of the pool for as long as the registration stands.
    pub fn registrations(&self) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        let (base, len) = (self.inner.base, self.inner.slab.len());
        (0..len).step_by(MAX_REGISTRATION_BYTES).map(move |at| {
            // SAFETY: at < len, inside the mapping.
            let ptr = unsafe { base.as_ptr().add(at) };
            (ptr, (len - at).min(MAX_REGISTRATION_BYTES))
        })
    }
}

/// One chunk of a pool, exclusively the holder's until dropped.
pub struct PoolBuf {
    pool: Arc<PoolInner>,
    index: u32,
    len: usize,
}

impl PoolBuf {
    /// The chunk's first byte (aligned to at least 4 KiB).
    pub fn as_ptr(&self) -> *const u8 {
        self.base()
    }

    /// The chunk's first byte, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.base()
    }

    fn base(&self) -> *mut u8 {
        let offset = self.index as usize * self.pool.chunk_bytes;
        debug_assert!(offset + self.pool.chunk_bytes <= self.pool.slab.len());
        // SAFETY: index < chunks, so the chunk lies inside the slab.
        unsafe { self.pool.base.as_ptr().add(offset) }
    }
}

impl std::ops::Deref for PoolBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the chunk is inside the live slab (the PoolBuf holds the pool), and the
        // free list gave it to this PoolBuf alone.
        unsafe { std::slice::from_raw_parts(self.base(), self.len) }
    }
}

impl std::ops::DerefMut for PoolBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for Deref, and `&mut self` is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.base(), self.len) }
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        // The queue has room for every chunk and this index is out of it, so it fits.
        let returned = self.pool.free.push(self.index);
        debug_assert!(returned.is_ok(), "chunk {} returned twice", self.index);
    }
}

impl std::fmt::Debug for PoolBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuf")
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}
