//! POSIX attributes in S3 user metadata, as FSx for Lustre (and AWS DataSync) write and read
//! them: `x-amz-meta-file-permissions` (`0100644`: the file type and the mode, octal),
//! `file-owner` and `file-group` (decimal ids), `file-atime` and `file-mtime` (nanoseconds
//! with an `ns` suffix, milliseconds without). An object without them imports as FSx
//! imports it: mode 0755, owned by root, its last-modified time as mtime. setuid, setgid
//! and sticky are not kept, as FSx does not keep them.

use std::collections::HashMap;

/// The metadata key of the type and mode.
pub const KEY_PERMISSIONS: &str = "file-permissions";
/// The metadata key of the owner.
pub const KEY_OWNER: &str = "file-owner";
/// The metadata key of the group.
pub const KEY_GROUP: &str = "file-group";
/// The metadata key of the access time.
pub const KEY_ATIME: &str = "file-atime";
/// The metadata key of the modification time.
pub const KEY_MTIME: &str = "file-mtime";

/// The mode an object without POSIX metadata imports with.
pub const DEFAULT_MODE: u32 = 0o755;
/// `S_IFMT`: the file type bits.
const TYPE_MASK: u32 = 0o170_000;
/// `S_IFREG`.
pub const TYPE_FILE: u32 = 0o100_000;
/// `S_IFDIR`.
pub const TYPE_DIR: u32 = 0o040_000;
/// `S_IFLNK`.
pub const TYPE_SYMLINK: u32 = 0o120_000;

/// What an object's metadata says of its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixAttrs {
    /// The file type bits (`TYPE_*`), when the metadata names one.
    pub file_type: Option<u32>,
    /// Permission bits (0o777 at most).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time, ns since the epoch.
    pub atime_ns: i64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// The attributes of an object with user metadata `meta` (keys without `x-amz-meta-`) and
/// last-modified time `modified_ns`. A value that does not parse is taken as absent (as an
/// object without it), so that one bad header does not stop an import.
pub fn attrs_of(meta: &HashMap<String, String>, modified_ns: i64) -> PosixAttrs {
    let get = |k: &str| meta.get(k).map(|v| v.trim());
    let permissions = get(KEY_PERMISSIONS).and_then(|v| u32::from_str_radix(v, 8).ok());
    let mtime_ns = get(KEY_MTIME).and_then(parse_time).unwrap_or(modified_ns);
    PosixAttrs {
        file_type: permissions.map(|p| p & TYPE_MASK).filter(|&t| t != 0),
        mode: permissions.map_or(DEFAULT_MODE, |p| p & 0o777),
        uid: get(KEY_OWNER).and_then(|v| v.parse().ok()).unwrap_or(0),
        gid: get(KEY_GROUP).and_then(|v| v.parse().ok()).unwrap_or(0),
        atime_ns: get(KEY_ATIME).and_then(parse_time).unwrap_or(mtime_ns),
        mtime_ns,
    }
}

/// A time as FSx writes it: `1700000000000000000ns`, or milliseconds without the suffix.
pub fn parse_time(text: &str) -> Option<i64> {
    match text.strip_suffix("ns") {
        Some(ns) => ns.parse().ok(),
        None => text.parse::<i64>().ok()?.checked_mul(1_000_000),
    }
}

/// The metadata FSx writes for a file or directory of `mode` (type bits included).
pub fn metadata_of(
    mode: u32,
    uid: u32,
    gid: u32,
    atime_ns: i64,
    mtime_ns: i64,
) -> Vec<(String, String)> {
    vec![
        (KEY_PERMISSIONS.into(), format!("{mode:07o}")),
        (KEY_OWNER.into(), uid.to_string()),
        (KEY_GROUP.into(), gid.to_string()),
        (KEY_ATIME.into(), format!("{atime_ns}ns")),
        (KEY_MTIME.into(), format!("{mtime_ns}ns")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn fsx_metadata_gives_mode_owner_group_and_times() {
        let a = attrs_of(
            &meta(&[
                ("file-permissions", "0100640"),
                ("file-owner", "1001"),
                ("file-group", "2002"),
                ("file-mtime", "1700000000123456789ns"),
                ("file-atime", "1700000000000"),
            ]),
            5,
        );
        assert_eq!(a.file_type, Some(TYPE_FILE));
        assert_eq!((a.mode, a.uid, a.gid), (0o640, 1001, 2002));
        assert_eq!(a.mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(a.atime_ns, 1_700_000_000_000_000_000);
    }

    #[test]
    fn an_object_without_metadata_imports_as_fsx_does() {
        let a = attrs_of(&HashMap::new(), 42);
        assert_eq!((a.file_type, a.mode, a.uid, a.gid), (None, 0o755, 0, 0));
        assert_eq!((a.atime_ns, a.mtime_ns), (42, 42));
    }

    #[test]
    fn setuid_is_dropped_and_bad_values_are_ignored() {
        let a = attrs_of(
            &meta(&[("file-permissions", "0104755"), ("file-owner", "root")]),
            1,
        );
        assert_eq!(a.mode, 0o755);
        assert_eq!(a.uid, 0);
        let b = attrs_of(&meta(&[("file-permissions", "rwxr-xr-x")]), 1);
        assert_eq!(b.mode, DEFAULT_MODE);
    }

    #[test]
    fn written_metadata_reads_back() {
        let pairs = metadata_of(TYPE_FILE | 0o600, 7, 8, 11, 22);
        let map: HashMap<String, String> = pairs.into_iter().collect();
        assert_eq!(map[KEY_PERMISSIONS], "0100600");
        let a = attrs_of(&map, 0);
        assert_eq!(
            (a.mode, a.uid, a.gid, a.atime_ns, a.mtime_ns),
            (0o600, 7, 8, 11, 22)
        );
    }
}
