//! `AlignedBuf`: owned, zeroed memory from an anonymous mapping, aligned for O_DIRECT, the
//! kind of buffer the store registers with io_uring (glommio's DmaBuffer is the model). It
//! is the one aligned-memory type of the workspace: the engine's memory pool cuts its slab
//! out of one ([`AlignedBuf::pinned`]).
//!
//! The mapping is memmap2's, so making, advising, locking and freeing it take no unsafe
//! code here.

use memmap2::{Advice, MmapMut, MmapOptions};

use crate::limits::{DIRECT_IO_ALIGN_BYTES, HUGE_PAGE_BYTES};

/// How a buffer's memory ended up backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Explicit huge pages (MAP_HUGETLB).
    HugeTlb,
    /// 4 KiB pages with transparent huge pages asked for (MADV_HUGEPAGE) on a range aligned
    /// to huge pages.
    TransparentHuge,
    /// 4 KiB pages.
    Pages,
}

/// Memory aligned to at least [`DIRECT_IO_ALIGN_BYTES`] (to [`HUGE_PAGE_BYTES`] when it is
/// that large), zeroed when made, unmapped on drop.
pub struct AlignedBuf {
    map: MmapMut,
    /// Where the buffer starts in `map`: the first huge-page boundary when the mapping was
    /// made larger to find one, else 0.
    offset: usize,
    len: usize,
    backing: Backing,
}

/// `len` rounded up to a whole number of `align` (at least one).
fn round_up(len: usize, align: u64) -> std::io::Result<usize> {
    let align = align as usize;
    len.max(1)
        .div_ceil(align)
        .checked_mul(align)
        .ok_or_else(|| too_large(len))
}

fn too_large(len: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("a buffer of {len} bytes exceeds the address space"),
    )
}

impl AlignedBuf {
    /// Maps `len` zeroed bytes (rounded up to a block; at least one). A buffer of at least a
    /// huge page starts on a huge-page boundary and asks for transparent huge pages: a large
    /// transfer is then a few physically contiguous segments instead of one per 4 KiB page
    /// (a 1 MiB O_DIRECT read over 4 KiB pages is 256 segments, more than a virtio disk
    /// takes in one request). Where the system refuses the hint, the buffer works as it is.
    ///
    /// Fails only when the system refuses the mapping (out of memory or of mappings).
    pub fn zeroed(len: usize) -> std::io::Result<AlignedBuf> {
        if len as u64 >= HUGE_PAGE_BYTES {
            return AlignedBuf::huge_aligned(len, false);
        }
        let rounded = round_up(len, DIRECT_IO_ALIGN_BYTES)?;
        let map = MmapOptions::new().len(rounded).map_anon()?;
        Ok(AlignedBuf {
            map,
            offset: 0,
            len,
            backing: Backing::Pages,
        })
    }

    /// Maps `len` bytes (rounded up to whole huge pages) for memory that stays registered
    /// for a process's life, every page faulted in now so the data path never faults:
    /// explicit huge pages first when `huge` (hugetlbfs pages reserved by the system), then
    /// 4 KiB pages with transparent huge pages asked for, then plain pages.
    pub fn pinned(len: usize, huge: bool) -> std::io::Result<AlignedBuf> {
        let rounded = round_up(len, HUGE_PAGE_BYTES)?;
        if huge {
            let explicit = MmapOptions::new()
                .len(rounded)
                .huge(Some(HUGE_PAGE_BYTES.trailing_zeros() as u8))
                .populate()
                .map_anon();
            if let Ok(map) = explicit {
                return Ok(AlignedBuf {
                    map,
                    offset: 0,
                    len: rounded,
                    backing: Backing::HugeTlb,
                });
            }
            return AlignedBuf::huge_aligned(rounded, true);
        }
        let map = MmapOptions::new().len(rounded).populate().map_anon()?;
        Ok(AlignedBuf {
            map,
            offset: 0,
            len: rounded,
            backing: Backing::Pages,
        })
    }

    /// A mapping one huge page larger than `len` needs, so that a huge-page boundary lies
    /// within its first huge page; the buffer starts there and asks for transparent huge
    /// pages (before any page is touched, so the faults that follow take huge pages). The
    /// pages past either end of the buffer are never touched and cost no memory.
    fn huge_aligned(len: usize, populate: bool) -> std::io::Result<AlignedBuf> {
        let rounded = round_up(len, DIRECT_IO_ALIGN_BYTES)?;
        let huge = HUGE_PAGE_BYTES as usize;
        let mapped = rounded.checked_add(huge).ok_or_else(|| too_large(len))?;
        let mut map = MmapOptions::new().len(mapped).map_anon()?;
        let start = map.as_ptr() as usize;
        let offset = start.next_multiple_of(huge) - start;
        let backing = match map.advise_range(Advice::HugePage, offset, rounded) {
            Ok(()) => Backing::TransparentHuge,
            Err(_) => Backing::Pages,
        };
        if populate
            && map
                .advise_range(Advice::PopulateWrite, offset, rounded)
                .is_err()
        {
            // Kernels before 5.14 have no MADV_POPULATE_WRITE: touching each page faults it
            // in the same way.
            map[offset..offset + rounded].fill(0);
        }
        Ok(AlignedBuf {
            map,
            offset,
            len,
            backing,
        })
    }

    /// Locks the buffer's pages in memory (mlock); false where the system does not permit
    /// it (RLIMIT_MEMLOCK), which leaves the buffer as it was.
    pub fn lock(&self) -> bool {
        self.map.lock().is_ok()
    }

    /// How the memory is backed.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The number of bytes asked for (for [`AlignedBuf::pinned`], rounded to huge pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte's address.
    pub fn as_ptr(&self) -> *const u8 {
        self.map[self.offset..].as_ptr()
    }

    /// The first byte's address, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map[self.offset..].as_mut_ptr()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.offset..self.offset + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.offset..self.offset + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("backing", &self.backing)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut buf = AlignedBuf::zeroed(10_000).expect("buffer");
        assert_eq!(buf.as_ptr() as u64 % DIRECT_IO_ALIGN_BYTES, 0);
        assert_eq!(buf.len(), 10_000);
        assert!(buf.iter().all(|&b| b == 0));
        buf[9_999] = 7;
        assert_eq!(buf[9_999], 7);
    }

    #[test]
    fn large_buffers_start_on_a_huge_page() {
        for len in [
            HUGE_PAGE_BYTES as usize,
            3 * HUGE_PAGE_BYTES as usize + 4096,
        ] {
            let mut buf = AlignedBuf::zeroed(len).expect("buffer");
            assert_eq!(buf.as_ptr() as u64 % HUGE_PAGE_BYTES, 0, "{len} bytes");
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&b| b == 0));
            buf[len - 1] = 9;
            assert_eq!(buf[len - 1], 9);
        }
    }

    #[test]
    fn pinned_buffers_are_whole_huge_pages_of_zeros() {
        for huge in [false, true] {
            let mut buf = AlignedBuf::pinned(HUGE_PAGE_BYTES as usize + 1, huge).expect("buffer");
            assert_eq!(buf.len(), 2 * HUGE_PAGE_BYTES as usize);
            assert_eq!(buf.as_ptr() as u64 % DIRECT_IO_ALIGN_BYTES, 0);
            assert!(buf.iter().all(|&b| b == 0));
            buf[0] = 1;
            assert_eq!(buf[0], 1);
            if !huge {
                assert_eq!(buf.backing(), Backing::Pages);
            }
        }
    }

    #[test]
    fn a_buffer_beyond_the_address_space_is_an_error() {
        let err = AlignedBuf::zeroed(usize::MAX).expect_err("too large");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    }
}
