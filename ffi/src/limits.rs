//! The C ABI's limits and constants, in the header as `NACRE_*`.

/// Longest path a call takes, in bytes without the terminating NUL.
pub const NACRE_PATH_MAX: usize = 4096;
/// Longest name in a directory entry, in bytes without the terminating NUL.
pub const NACRE_NAME_MAX: usize = 255;
/// Size of `nacre_dirent.name`: the longest name and its NUL.
pub const NACRE_NAME_BUF: usize = 256;
/// Largest read or write of one call (64 GiB): a larger length is taken for a mistake.
pub const NACRE_IO_MAX: u64 = 68_719_476_736;
/// Most buffers in one `nacre_preadv` or `nacre_pwritev` (as IOV_MAX).
pub const NACRE_IOV_MAX: i32 = 1024;
/// Longest wait a queue accepts, in milliseconds (one hour).
pub const NACRE_WAIT_MAX_MS: i32 = 3_600_000;
/// Longest pool name, in bytes without the terminating NUL.
pub const NACRE_POOL_NAME_MAX: usize = 15;

/// A stripe count meaning every target (of the pool).
pub const NACRE_STRIPE_COUNT_ALL: i64 = -1;
/// A stripe index letting the metadata service pick the first target.
pub const NACRE_STRIPE_INDEX_ANY: i64 = -1;
/// The end of the last component of a layout: the end of the file.
pub const NACRE_EXTENT_EOF: u64 = u64::MAX;

/// `nacre_dirent.file_type` of a regular file (as `DT_REG`).
pub const NACRE_DT_REG: u32 = 8;
/// `nacre_dirent.file_type` of a directory (as `DT_DIR`).
pub const NACRE_DT_DIR: u32 = 4;
/// A time of `nacre_utimens` that sets the time to now (as `UTIME_NOW`).
pub const NACRE_UTIME_NOW: i64 = i64::MAX;
/// A time of `nacre_utimens` that leaves the time as it is (as `UTIME_OMIT`).
pub const NACRE_UTIME_OMIT: i64 = i64::MAX - 1;
/// `nacre_utimens` flag: change a symbolic link itself (as `AT_SYMLINK_NOFOLLOW`).
pub const NACRE_UTIME_NOFOLLOW: u32 = 1;

/// `nacre_dirent.file_type` of a symbolic link (as `DT_LNK`).
pub const NACRE_DT_LNK: u32 = 10;

/// First handle number; handles count up from it and are never reused, and it lies above
/// every user-space address, so no pointer is ever mistaken for a handle.
pub(crate) const FIRST_HANDLE: u64 = 0x6e61_6300_0000_0001;
/// Bytes of a thread's last error message, its NUL included.
pub(crate) const LAST_ERROR_BYTES: usize = 1024;
/// Errno values `nacre_strerror` has a text for (0 to this).
pub(crate) const MAX_ERRNO_TEXT: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;
    use engine::layout::limits as layout;
    use engine::meta::types as meta;

    /// The header needs literal values; they must say what the engine enforces.
    #[test]
    fn constants_match_the_engine() {
        assert_eq!(NACRE_PATH_MAX, meta::MAX_PATH_BYTES);
        assert_eq!(NACRE_NAME_MAX, meta::MAX_NAME_BYTES);
        assert_eq!(NACRE_NAME_BUF, NACRE_NAME_MAX + 1);
        assert_eq!(NACRE_IO_MAX, 64 << 30);
        assert_eq!(NACRE_POOL_NAME_MAX, layout::MAX_POOL_NAME_BYTES);
        assert_eq!(NACRE_STRIPE_COUNT_ALL, i64::from(layout::STRIPE_COUNT_ALL));
        assert_eq!(NACRE_STRIPE_INDEX_ANY, layout::STRIPE_INDEX_ANY);
        assert_eq!(NACRE_EXTENT_EOF, layout::EOF_OFFSET_BYTES);
        assert_eq!(NACRE_DT_REG, u32::from(libc::DT_REG));
        assert_eq!(NACRE_DT_DIR, u32::from(libc::DT_DIR));
        assert_eq!(NACRE_DT_LNK, u32::from(libc::DT_LNK));
    }
}
