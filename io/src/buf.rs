//! `AlignedBuf`: owned, zeroed memory aligned for O_DIRECT, the kind of buffer the store
//! registers with io_uring (glommio's DmaBuffer is the model).

use std::alloc::Layout;
use std::ptr::NonNull;

use crate::limits::{DIRECT_IO_ALIGN_BYTES, HUGE_PAGE_BYTES};

/// Heap memory aligned to [`DIRECT_IO_ALIGN_BYTES`], zeroed at allocation, freed on drop.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (rounded up to the alignment; at least one block).
    ///
    /// Panics only when the allocator fails, as `Vec` does.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let layout = Self::layout_for(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        if layout.align() == HUGE_PAGE_BYTES as usize {
            // Transparent huge pages make a large transfer a few physically contiguous
            // segments instead of one per 4 KiB page (a 1 MiB O_DIRECT read over 4 KiB pages
            // is 256 segments, more than a virtio disk takes in one request). Only a hint:
            // where the system refuses, the buffer works as it is.
            // SAFETY: the range is exactly the allocation just made.
            unsafe { libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        AlignedBuf { ptr, len }
    }

    /// Buffers of at least a huge page are aligned to huge pages, smaller ones to blocks.
    fn layout_for(len: usize) -> Layout {
        let align = if len as u64 >= HUGE_PAGE_BYTES {
            HUGE_PAGE_BYTES as usize
        } else {
            DIRECT_IO_ALIGN_BYTES as usize
        };
        let rounded = len.max(1).div_ceil(align) * align;
        match Layout::from_size_align(rounded, align) {
            Ok(layout) => layout,
            Err(_) => panic!("buffer of {len} bytes exceeds the address space"),
        }
    }

    /// The number of bytes asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte's address.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The first byte's address, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn layout(&self) -> Layout {
        Self::layout_for(self.len)
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = self.layout();
        // SAFETY: ptr was allocated in `zeroed` with this very layout and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut buf = AlignedBuf::zeroed(10_000);
        assert_eq!(buf.as_ptr() as u64 % DIRECT_IO_ALIGN_BYTES, 0);
        assert_eq!(buf.len(), 10_000);
        assert!(buf.iter().all(|&b| b == 0));
        buf[9_999] = 7;
        assert_eq!(buf[9_999], 7);
    }
}
