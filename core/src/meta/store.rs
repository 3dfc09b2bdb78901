//! The namespace and the target registry, kept in one redb database file.
//!
//! [`MetaStore`] owns the directories, files and their attributes and layouts, the inode
//! counter, and the registered targets. Every mutation is one redb write transaction,
//! committed with [`Durability::Immediate`] before the call returns: a process killed right
//! after a call returns has lost nothing. Reads run in read transactions, concurrently with
//! each other and with the one writer. Permissions are checked as a Linux kernel checks
//! them for the caller's [`Cred`]. It never touches the network or a target.
//!
//! Tables (every value is a [`crate::codec`] record):
//! - `inodes`: ino (`u64`) → [`Attr`];
//! - `dirents`: parent ino (8 bytes big-endian) followed by the entry's name → the entry's
//!   ino and type; big-endian keeps each directory's entries together, in name order;
//! - `targets`: target id (`u32`) → [`TargetInfo`] as last registered;
//! - `repos`, `repo_files`: data repository associations and imported files
//!   (`store/repo_ops.rs`); `tasks`, `task_reports`: their tasks (`store/task_ops.rs`);
//! - `super`: `"super"` → the format version, the next inode number and the file and
//!   directory counts.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nacre_layout::{Layout, LayoutError};
use redb::{
    CommitError, Database, DatabaseError, Durability, ReadableDatabase, ReadableTable,
    SetDurabilityError, StorageError, Table, TableDefinition, TableError, TransactionError,
};

use crate::codec::{CodecError, Reader, Record, Writer};

mod release_ops;
mod repo_ops;
mod task_ops;

pub use task_ops::{Linked, TaskEnd};

use crate::limits::{MAX_FILE_LAYOUT_BYTES, MAX_LINKS, MAX_SYMLINK_FOLLOWS, REOPEN_INTERVAL_MS};
use crate::meta::repo::{Association, under};
use crate::meta::types::{
    Access, Attr, Cred, DirEntry, FileType, LayoutSpec, MAX_ENDPOINT_BYTES, MAX_INO,
    MAX_NAME_BYTES, MAX_PATH_BYTES, MAX_POOLS_PER_TARGET, MAX_READDIR_ENTRIES,
    MAX_TARGET_UUID_BYTES, MODE_PERMISSION_BITS, MODE_SETGID, MODE_SETUID, MODE_STICKY, MetaError,
    ROOT_INO, SYMLINK_MODE, StatFs, TargetInfo, TimeSet, check_name, check_symlink_target, excerpt,
};

const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
const DIRENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dirents");
const TARGETS: TableDefinition<u32, &[u8]> = TableDefinition::new("targets");
const SUPER: TableDefinition<&str, &[u8]> = TableDefinition::new("super");
/// Objects of removed files still to be removed from their targets: key target id
/// (big-endian) then object id (big-endian), so one target's are one range; no value.
const REMOVALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("removals");
/// Data repository associations: id (`u32`) → [`crate::meta::repo::Association`].
const REPOS: TableDefinition<u32, &[u8]> = TableDefinition::new("repos");
/// The repository state of imported files: ino → [`crate::meta::repo::RepoFile`].
const REPO_FILES: TableDefinition<u64, &[u8]> = TableDefinition::new("repo_files");
/// Bytes of a [`REMOVALS`] key.
const REMOVAL_KEY_BYTES: usize = 12;
const SUPER_KEY: &str = "super";
/// The `super` table's key of the file system's uuid (16 bytes), made when the store is
/// first opened: the targets of this file system are bound to it.
const FS_UUID_KEY: &str = "fs_uuid";

/// The version of the tables' layout and records this build writes and reads.
const FORMAT_VERSION: u32 = 1;

/// Permission bits asked of a class (owner, group, other).
const MAY_READ: u32 = 4;
const MAY_WRITE: u32 = 2;
const MAY_EXEC: u32 = 1;

/// Free space within this share of the freest target counts as balanced: the first target
/// of a new file then goes round-robin rather than to the freest.
const BALANCED_FREE_SPREAD_PERCENT: u64 = 10;

// The counter's values are inode numbers; the root takes the first.
const FIRST_FREE_INO: u64 = ROOT_INO + 1;

/// `From` each redb error for [`MetaError::Store`] (or [`MetaError::NoSpace`] when the
/// device is full), naming what the store was doing. `$storage` gives the error's
/// [`StorageError`], if it has one, to look at its I/O error.
macro_rules! store_errors {
    ($($error:ty => $op:literal, $storage:expr);* $(;)?) => {
        $(
            impl From<$error> for MetaError {
                fn from(error: $error) -> Self {
                    let storage: fn(&$error) -> Option<&StorageError> = $storage;
                    store_error($op, storage(&error), &error)
                }
            }
        )*
    };
}

store_errors! {
    DatabaseError => "open database", |e| match e { DatabaseError::Storage(s) => Some(s), _ => None };
    TransactionError => "begin transaction", |e| match e { TransactionError::Storage(s) => Some(s), _ => None };
    TableError => "open table", |e| match e { TableError::Storage(s) => Some(s), _ => None };
    StorageError => "read or write", |e| Some(e);
    CommitError => "commit", |e| match e { CommitError::Storage(s) => Some(s), _ => None };
    SetDurabilityError => "set durability", |_| None;
}

fn store_error(
    op: &'static str,
    storage: Option<&StorageError>,
    error: &dyn std::fmt::Display,
) -> MetaError {
    let reason = error.to_string();
    match storage {
        Some(StorageError::Io(e))
            if e.raw_os_error() == Some(libc::ENOSPC)
                || e.kind() == std::io::ErrorKind::StorageFull =>
        {
            MetaError::NoSpace { op, reason }
        }
        Some(StorageError::Io(_) | StorageError::PreviousIo | StorageError::DatabaseClosed) => {
            MetaError::StoreIo { op, reason }
        }
        _ => MetaError::Store { op, reason },
    }
}

fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |ns| -ns),
    }
}

/// The counters kept in the `super` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Superblock {
    next_ino: u64,
    files: u64,
    dirs: u64,
}

impl Superblock {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Writer::new(&mut out)
            .u32(FORMAT_VERSION)
            .u64(self.next_ino)
            .u64(self.files)
            .u64(self.dirs);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Superblock, CodecError> {
        let mut reader = Reader::new(bytes, "Superblock");
        let version = reader.u32("format_version")?;
        if version != FORMAT_VERSION {
            return Err(reader.bad_value("format_version", u64::from(version), "1"));
        }
        let next_ino = reader.u64("next_ino")?;
        let files = reader.u64("files")?;
        let dirs = reader.u64("dirs")?;
        reader.finish()?;
        Ok(Superblock {
            next_ino,
            files,
            dirs,
        })
    }
}

/// What a directory entry records of its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    ino: u64,
    file_type: FileType,
}

impl Link {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Writer::new(&mut out)
            .u64(self.ino)
            .u8(self.file_type.to_u8());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Link, CodecError> {
        let mut reader = Reader::new(bytes, "Link");
        let ino = reader.u64("ino")?;
        let file_type = FileType::decode(&mut reader)?;
        reader.finish()?;
        Ok(Link { ino, file_type })
    }
}

fn dirent_key(parent_ino: u64, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + name.len());
    key.extend_from_slice(&parent_ino.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// An absolute path split into its names: repeated slashes collapse, `.` and `..` are
/// refused, every name is checked; a `/` at the end says the last name is a directory.
#[derive(Debug)]
struct NsPath<'a> {
    names: Vec<&'a str>,
    /// The path ends in `/` after a name: what it names must be a directory (and a link
    /// there is followed where a lookup would not follow it), as on Linux.
    dir_only: bool,
}

impl<'a> NsPath<'a> {
    fn parse(field: &'static str, path: &'a str) -> Result<NsPath<'a>, MetaError> {
        if path.len() > MAX_PATH_BYTES {
            return Err(MetaError::too_long("path", path, MAX_PATH_BYTES));
        }
        if !path.starts_with('/') {
            return Err(MetaError::Invalid {
                field,
                value: format!("{:?}", excerpt(path)),
                allowed: "an absolute path (starting with '/')".to_owned(),
            });
        }
        // At most MAX_PATH_BYTES / 2 names.
        let names: Vec<&str> = path.split('/').filter(|name| !name.is_empty()).collect();
        for name in &names {
            if *name == "." || *name == ".." {
                return Err(MetaError::Invalid {
                    field,
                    value: format!("{:?}", excerpt(path)),
                    allowed: "a path without \".\" or \"..\" components".to_owned(),
                });
            }
            check_name(name)?;
        }
        let dir_only = !names.is_empty() && path.ends_with('/');
        Ok(NsPath { names, dir_only })
    }

    /// The path of the first `depth` names.
    fn prefix(&self, depth: usize) -> String {
        if depth == 0 {
            return "/".to_owned();
        }
        let mut out = String::new();
        for name in &self.names[..depth] {
            out.push('/');
            out.push_str(name);
        }
        out
    }

    fn full(&self) -> String {
        self.prefix(self.names.len())
    }

    fn parent(&self) -> String {
        self.prefix(self.names.len().saturating_sub(1))
    }

    fn last(&self) -> &'a str {
        self.names.last().copied().unwrap_or("")
    }

    fn is_root(&self) -> bool {
        self.names.is_empty()
    }
}

/// Whether `cred` has the `want` bits (of [`MAY_READ`], [`MAY_WRITE`], [`MAY_EXEC`]) on
/// `attr`, as Linux's `generic_permission` decides without ACLs: root passes read and write
/// always and search on directories; otherwise the owner class, else the group class, else
/// the other class decides alone.
fn permits(cred: &Cred, attr: &Attr, want: u32) -> bool {
    if cred.is_root() {
        return want & MAY_EXEC == 0 || attr.is_dir() || attr.mode & 0o111 != 0;
    }
    let class_bits = if cred.uid == attr.uid {
        attr.mode >> 6
    } else if cred.in_group(attr.gid) {
        attr.mode >> 3
    } else {
        attr.mode
    } & 0o7;
    class_bits & want == want
}

/// The directory part of a resolved path (`/` for a name in the root).
fn parent_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => dir.to_owned(),
        _ => "/".to_owned(),
    }
}

/// Whether `cred` may make another name for `attr`, as Linux's `may_linkat` decides with
/// `fs.protected_hardlinks`: root or the owner; else a regular file that is not setuid, nor
/// setgid and group-executable, and that the caller may read and write.
fn may_hardlink(cred: &Cred, attr: &Attr) -> bool {
    if cred.is_root() || cred.uid == attr.uid {
        return true;
    }
    let setgid_exec = attr.mode & MODE_SETGID != 0 && attr.mode & 0o010 != 0;
    attr.is_file()
        && attr.mode & MODE_SETUID == 0
        && !setgid_exec
        && permits(cred, attr, MAY_READ | MAY_WRITE)
}

fn require(
    cred: &Cred,
    attr: &Attr,
    want: u32,
    need: &'static str,
    path: impl FnOnce() -> String,
) -> Result<(), MetaError> {
    if permits(cred, attr, want) {
        Ok(())
    } else {
        Err(MetaError::Access { path: path(), need })
    }
}

/// The sticky bit of `parent`: only the owner of `victim`, the owner of `parent`, or root
/// may remove or rename `victim`.
fn require_sticky(cred: &Cred, parent: &Attr, victim: &Attr, path: &str) -> Result<(), MetaError> {
    if parent.mode & MODE_STICKY == 0
        || cred.is_root()
        || cred.uid == victim.uid
        || cred.uid == parent.uid
    {
        return Ok(());
    }
    Err(MetaError::Perm {
        path: path.to_owned(),
        reason: "the directory is sticky: only the owner of the entry or of the directory, \
                 or root, may remove or rename it"
            .to_owned(),
    })
}

fn require_owner(cred: &Cred, attr: &Attr, path: &str, what: &str) -> Result<(), MetaError> {
    if cred.is_root() || cred.uid == attr.uid {
        return Ok(());
    }
    Err(MetaError::Perm {
        path: path.to_owned(),
        reason: format!("only the owner (uid {}) or root may {what}", attr.uid),
    })
}

fn corrupt(what: String) -> MetaError {
    MetaError::Store {
        op: "read",
        reason: what,
    }
}

/// Where a path led ([`Ns::resolve`]).
#[derive(Debug)]
struct Resolved {
    /// The path as resolved (symbolic links replaced by what they name), for messages and
    /// for the checks that compare paths.
    path: String,
    /// The directory holding the last name, and that name; `None` when the path resolved
    /// to the root.
    at: Option<(Attr, String)>,
    /// What the last name names, if anything.
    entry: Option<Attr>,
    /// Whether the last name must be a directory (a `/` after it).
    dir_only: bool,
}

/// What [`Ns::resolve`] does with the last name of a path, which (or the last name of a
/// link target that it leads to) may be followed by `/`: then it must name a directory, as
/// on Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Follow a link there (`stat`, `open`); with `/`, not a directory → `ENOTDIR`.
    Follow,
    /// Follow a link there unless `/` follows the name, and leave `/` to the caller
    /// (`O_CREAT`: `EISDIR`).
    Create,
    /// Not followed (`lstat`); with `/` it is, and not a directory → `ENOTDIR`.
    Lstat,
    /// The entry itself, never followed (`unlink`, `rename`, `mkdir`...); `/` is the
    /// caller's.
    Entry,
}

/// The namespace tables of one transaction, read-only or writable.
struct Ns<I, D> {
    inodes: I,
    dirents: D,
}

type WriteNs<'t> = Ns<Table<'t, u64, &'static [u8]>, Table<'t, &'static [u8], &'static [u8]>>;

impl<I, D> Ns<I, D>
where
    I: ReadableTable<u64, &'static [u8]>,
    D: ReadableTable<&'static [u8], &'static [u8]>,
{
    fn attr(&self, ino: u64) -> Result<Attr, MetaError> {
        let guard = self
            .inodes
            .get(ino)?
            .ok_or_else(|| corrupt(format!("inode {ino} is named by a directory but missing")))?;
        Ok(Attr::from_bytes(guard.value())?)
    }

    fn child(&self, parent_ino: u64, name: &str) -> Result<Option<Link>, MetaError> {
        let key = dirent_key(parent_ino, name);
        match self.dirents.get(key.as_slice())? {
            Some(guard) => Ok(Some(Link::decode(guard.value())?)),
            None => Ok(None),
        }
    }

    /// Where `path` leads, searching every directory walked. Symbolic links in the middle
    /// of the path are followed (a relative target from the link's directory, `..` up to
    /// the root at most, [`MAX_SYMLINK_FOLLOWS`] links at most); one at the end as `last`
    /// says. A name that ends in `/` (the path's, or a followed link target's) names a
    /// directory: see [`Last`].
    fn resolve(&self, cred: &Cred, path: &NsPath<'_>, last: Last) -> Result<Resolved, MetaError> {
        // The names still to walk, the next one last, each with whether it must name a
        // directory (a `/` after it). The path's own names are borrowed: only a link's
        // target is copied.
        let mut pending: Vec<(Cow<'_, str>, bool)> = path
            .names
            .iter()
            .rev()
            .enumerate()
            .map(|(i, n)| (Cow::Borrowed(*n), i == 0 && path.dir_only))
            .collect();
        // The directories walked from the root, with the names they were reached by.
        let mut walked: Vec<(Attr, Cow<'_, str>)> = vec![(self.attr(ROOT_INO)?, Cow::Borrowed(""))];
        let mut follows = 0;
        let at = |walked: &[(Attr, Cow<'_, str>)], name: Option<&str>| {
            let mut out = String::new();
            for (_, n) in &walked[1..] {
                out.push('/');
                out.push_str(n);
            }
            if let Some(name) = name {
                out.push('/');
                out.push_str(name);
            }
            if out.is_empty() {
                out.push('/');
            }
            out
        };
        while let Some((name, dir_only)) = pending.pop() {
            // Every name, `.` and `..` too, is looked up in a directory that may be searched.
            let (current, _) = walked.last().expect("the root is never popped");
            if !current.is_dir() {
                return Err(MetaError::NotDir {
                    path: at(&walked, None),
                });
            }
            require(cred, current, MAY_EXEC, "search", || at(&walked, None))?;
            match name.as_ref() {
                "." => continue,
                ".." => {
                    if walked.len() > 1 {
                        walked.pop();
                    }
                    continue;
                }
                _ => {}
            }
            check_name(&name)?;
            let is_last = pending.is_empty();
            let Some(link) = self.child(current.ino, &name)? else {
                if is_last {
                    let parent = current.clone();
                    return Ok(Resolved {
                        path: at(&walked, Some(&name)),
                        at: Some((parent, name.into_owned())),
                        entry: None,
                        dir_only,
                    });
                }
                return Err(MetaError::NotFound {
                    path: at(&walked, Some(&name)),
                });
            };
            let attr = self.attr(link.ino)?;
            let follow = match last {
                Last::Follow => true,
                // `O_CREAT` refuses a `/` before it follows anything.
                Last::Create => !dir_only,
                Last::Lstat => dir_only,
                Last::Entry => false,
            };
            if attr.is_symlink() && (!is_last || follow) {
                follows += 1;
                if follows > MAX_SYMLINK_FOLLOWS {
                    return Err(MetaError::Loop {
                        path: at(&walked, Some(&name)),
                        max: MAX_SYMLINK_FOLLOWS,
                    });
                }
                let target = attr.symlink.as_deref().unwrap_or("");
                if target.starts_with('/') {
                    walked.truncate(1);
                }
                // The target's last name must be a directory if the target ends in `/`, or
                // if the link's own name had to be one.
                let target_dir_only = is_last && (dir_only || target.ends_with('/'));
                let names: Vec<&str> = target.split('/').filter(|n| !n.is_empty()).collect();
                pending.extend(
                    names
                        .iter()
                        .rev()
                        .enumerate()
                        .map(|(i, n)| (Cow::Owned((*n).to_owned()), i == 0 && target_dir_only)),
                );
                continue;
            }
            if is_last {
                if dir_only && !attr.is_dir() && matches!(last, Last::Follow | Last::Lstat) {
                    return Err(MetaError::NotDir {
                        path: at(&walked, Some(&name)),
                    });
                }
                let (parent, _) = walked.last().expect("the root is never popped").clone();
                return Ok(Resolved {
                    path: at(&walked, Some(&name)),
                    at: Some((parent, name.into_owned())),
                    entry: Some(attr),
                    dir_only,
                });
            }
            walked.push((attr, name));
        }
        // The path (or a link's target) ended at a directory walked to: the root, or one
        // reached through `..` or a link.
        let (entry, name) = walked.pop().expect("the root is never popped");
        if walked.is_empty() {
            return Ok(Resolved {
                path: "/".to_owned(),
                at: None,
                entry: Some(entry),
                dir_only: false,
            });
        }
        let parent = walked.last().expect("checked").0.clone();
        let path = at(&walked, Some(&name));
        Ok(Resolved {
            path,
            at: Some((parent, name.into_owned())),
            entry: Some(entry),
            dir_only: false,
        })
    }

    /// The parent directory of a non-root `path` (searched) and the entry, if it exists;
    /// a symbolic link at the end is the entry (not followed).
    fn lookup_parent(
        &self,
        cred: &Cred,
        path: &NsPath<'_>,
    ) -> Result<(Attr, Option<Attr>), MetaError> {
        assert!(!path.is_root(), "the root has no parent");
        let resolved = self.resolve(cred, path, Last::Entry)?;
        let (parent, _) = resolved
            .at
            .expect("a path not ending at the root whose last name is not followed has a parent");
        Ok((parent, resolved.entry))
    }

    /// What `path` names, a symbolic link at the end not followed (`lstat`).
    fn lookup(&self, cred: &Cred, path: &NsPath<'_>) -> Result<Attr, MetaError> {
        self.lookup_with(cred, path, false)
    }

    /// What `path` names, a symbolic link at the end followed when `follow_last` (`stat`).
    fn lookup_with(
        &self,
        cred: &Cred,
        path: &NsPath<'_>,
        follow_last: bool,
    ) -> Result<Attr, MetaError> {
        if path.is_root() {
            return self.attr(ROOT_INO);
        }
        let mode = if follow_last {
            Last::Follow
        } else {
            Last::Lstat
        };
        let resolved = self.resolve(cred, path, mode)?;
        resolved.entry.ok_or(MetaError::NotFound {
            path: resolved.path,
        })
    }

    fn list(
        &self,
        dir_ino: u64,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<DirEntry>, MetaError> {
        let first = match after {
            Some(name) => Bound::Excluded(dirent_key(dir_ino, name)),
            None => Bound::Included(dirent_key(dir_ino, "")),
        };
        let end = Bound::Excluded(dirent_key(dir_ino + 1, ""));
        let range = (
            first.as_ref().map(Vec::as_slice),
            end.as_ref().map(Vec::as_slice),
        );
        let mut entries = Vec::with_capacity(max.min(MAX_READDIR_ENTRIES));
        for item in self.dirents.range::<&[u8]>(range)?.take(max) {
            let (key, value) = item?;
            let name = std::str::from_utf8(&key.value()[8..])
                .map_err(|_| corrupt(format!("directory {dir_ino} has a name not UTF-8")))?;
            let link = Link::decode(value.value())?;
            entries.push(DirEntry {
                name: name.to_owned(),
                ino: link.ino,
                file_type: link.file_type,
            });
        }
        Ok(entries)
    }

    fn has_entries(&self, dir_ino: u64) -> Result<bool, MetaError> {
        Ok(!self.list(dir_ino, None, 1)?.is_empty())
    }
}

impl WriteNs<'_> {
    /// The directory a new entry at `path` goes in: the path must not exist, and `cred` must
    /// be allowed to add to its parent.
    fn parent_of_new(&self, cred: &Cred, path: &NsPath<'_>) -> Result<Attr, MetaError> {
        let (parent, entry) = self.lookup_parent(cred, path)?;
        if entry.is_some() {
            return Err(MetaError::Exists { path: path.full() });
        }
        require(cred, &parent, MAY_WRITE | MAY_EXEC, "write", || {
            path.parent()
        })?;
        Ok(parent)
    }

    fn put_attr(&mut self, attr: &Attr) -> Result<(), MetaError> {
        assert!((1..=MAX_INO).contains(&attr.ino));
        self.inodes.insert(attr.ino, attr.to_bytes().as_slice())?;
        Ok(())
    }

    fn remove_attr(&mut self, ino: u64) -> Result<(), MetaError> {
        let removed = self.inodes.remove(ino)?.is_some();
        assert!(removed, "inode {ino} was read in this transaction");
        Ok(())
    }

    fn link(&mut self, parent_ino: u64, name: &str, attr: &Attr) -> Result<(), MetaError> {
        let link = Link {
            ino: attr.ino,
            file_type: attr.file_type,
        };
        let key = dirent_key(parent_ino, name);
        let replaced = self
            .dirents
            .insert(key.as_slice(), link.encode().as_slice())?
            .is_some();
        assert!(!replaced, "callers unlink a name before linking it again");
        Ok(())
    }

    fn unlink(&mut self, parent_ino: u64, name: &str) -> Result<(), MetaError> {
        let key = dirent_key(parent_ino, name);
        let removed = self.dirents.remove(key.as_slice())?.is_some();
        assert!(removed, "the entry was read in this transaction");
        Ok(())
    }

    /// Reads, changes and writes back one inode: two changes to one directory in one
    /// transaction (a rename within it) see each other.
    fn update(&mut self, ino: u64, change: impl FnOnce(&mut Attr)) -> Result<Attr, MetaError> {
        let mut attr = self.attr(ino)?;
        change(&mut attr);
        self.put_attr(&attr)?;
        Ok(attr)
    }

    /// Marks a directory's entries changed.
    fn touch_dir(&mut self, ino: u64, now: i64, nlink_change: i32) -> Result<Attr, MetaError> {
        self.update(ino, |dir| {
            assert!(dir.is_dir());
            dir.mtime_ns = now;
            dir.ctime_ns = now;
            dir.nlink = dir.nlink.saturating_add_signed(nlink_change);
            assert!(dir.nlink >= 2, "a directory has at least . and its name");
        })
    }
}

/// One write transaction's tables and counters.
struct Tx<'t> {
    ns: WriteNs<'t>,
    counters: Superblock,
    removals: Table<'t, &'static [u8], &'static [u8]>,
    repos: Table<'t, u32, &'static [u8]>,
    repo_files: Table<'t, u64, &'static [u8]>,
}

fn removal_key(target_id: u32, object_id: u64) -> [u8; REMOVAL_KEY_BYTES] {
    let mut key = [0u8; REMOVAL_KEY_BYTES];
    key[..4].copy_from_slice(&target_id.to_be_bytes());
    key[4..].copy_from_slice(&object_id.to_be_bytes());
    key
}

impl Tx<'_> {
    /// Logs the objects of removed file `victim` for removal from their targets, in the
    /// transaction that removes the file: a crash or an unreachable target cannot leave
    /// them behind unlogged.
    fn log_removal(&mut self, victim: &Attr) -> Result<(), MetaError> {
        let Some(layout) = &victim.layout else {
            return Ok(());
        };
        let per_target = layout
            .objects_by_target(victim.ino)
            .map_err(|e| corrupt(format!("inode {}: {e}", victim.ino)))?;
        for (target_id, objects) in per_target {
            for o in objects {
                self.removals.insert(
                    removal_key(target_id, o.object_id).as_slice(),
                    [].as_slice(),
                )?;
            }
        }
        Ok(())
    }

    /// Refuses (`EXDEV`) to `what` at `path` when it lies under a data repository
    /// association, read from this transaction's own table.
    fn refuse_in_association(&self, path: &str, what: &str) -> Result<(), MetaError> {
        for assoc in self.associations()? {
            if under(&assoc.path, path).is_some() {
                return Err(MetaError::CrossDevice {
                    path: path.to_owned(),
                    reason: format!(
                        "{what} under a data repository association ({} with {}): its objects \
                         are one per path",
                        assoc.path,
                        assoc.url()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Every association, from this transaction's own table.
    fn associations(&self) -> Result<Vec<Association>, MetaError> {
        let mut all = Vec::new();
        for item in self.repos.range::<u32>(..)? {
            let (_, value) = item?;
            all.push(Association::from_bytes(value.value())?);
        }
        Ok(all)
    }

    /// One name of file (or symbolic link) `victim` was removed: with its last, the inode
    /// goes, its objects are logged for removal and its link to a repository object goes;
    /// else it has one link fewer. Whether the inode went.
    fn drop_name(&mut self, victim: &Attr, now: i64) -> Result<bool, MetaError> {
        assert!(!victim.is_dir(), "directories have one name");
        if victim.nlink > 1 {
            self.ns.update(victim.ino, |attr| {
                attr.nlink -= 1;
                attr.ctime_ns = now;
            })?;
            return Ok(false);
        }
        self.ns.remove_attr(victim.ino)?;
        self.counters.files -= 1;
        self.log_removal(victim)?;
        self.repo_files.remove(victim.ino)?;
        Ok(true)
    }

    /// A new symbolic link's inode, stored and counted, not yet in a directory.
    fn new_symlink(
        &mut self,
        target: &str,
        uid: u32,
        gid: u32,
        (atime_ns, mtime_ns): (i64, i64),
    ) -> Result<Attr, MetaError> {
        let link = Attr {
            ino: self.alloc_ino()?,
            file_type: FileType::Symlink,
            mode: SYMLINK_MODE,
            uid,
            gid,
            nlink: 1,
            atime_ns,
            mtime_ns,
            ctime_ns: now_ns(),
            layout: None,
            default_layout: None,
            symlink: Some(target.to_owned()),
        };
        self.ns.put_attr(&link)?;
        self.counters.files += 1;
        Ok(link)
    }

    fn alloc_ino(&mut self) -> Result<u64, MetaError> {
        let ino = self.counters.next_ino;
        if ino > MAX_INO {
            return Err(MetaError::NoInodes { max: MAX_INO });
        }
        self.counters.next_ino = ino + 1;
        Ok(ino)
    }
}

/// How [`MetaStore::create`] treats a path that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfExists {
    /// Return it (after a write permission check), as `open(O_CREAT)` does.
    Open,
    /// Refuse it, as `open(O_CREAT | O_EXCL)` does.
    Refuse,
    /// Refuse it, saying whether it is a directory, as `lfs setstripe` does.
    Setstripe,
}

/// The metadata store: a namespace and a target registry in one redb file. `Send + Sync`:
/// share it between threads behind an `Arc`.
pub struct MetaStore {
    /// The database; `None` while it is closed to be opened again after an I/O failure.
    db: RwLock<Option<Database>>,
    /// Where it is.
    path: PathBuf,
    /// An operation failed in the storage: the database is closed and opened again before
    /// the next one (redb refuses every later change after an I/O error until then).
    broken: AtomicBool,
    /// When it was last opened again, and whether the failure before was a full device:
    /// it is opened again at most once per [`REOPEN_INTERVAL_MS`].
    last_reopen: Mutex<Option<(Instant, bool)>>,
    /// The file system's uuid (see [`FS_UUID_KEY`]).
    fs_uuid: [u8; 16],
    /// The registered targets, with the usage they last reported (kept in memory only).
    targets: Mutex<BTreeMap<u32, TargetInfo>>,
    /// Serialises registrations so that the cache follows the commits in order. Taken
    /// before a write transaction; `targets` is taken after one, never the reverse.
    register_lock: Mutex<()>,
    /// Spreads the first target of new files when targets are balanced.
    round_robin: AtomicU64,
    /// Whether any file was ever imported or exported (the `repo_files` table has held a
    /// record): until then an open needs no look at that table.
    has_repo_files: AtomicBool,
    /// Whether the `repos` table was ever non-empty since the store opened: until then an
    /// open for writing does not look for its file's association.
    has_repos: AtomicBool,
    /// This start's number (see [`MetaStore::instance`]).
    instance: u64,
    /// Handles open while associations exist, by inode, counted from their opens to their
    /// close notices (in memory: see `release_ops`).
    handles: Mutex<HashMap<u64, u32>>,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore")
            .field("targets", &self.lock_targets().len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent across a panic: each change is one assignment.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MetaStore {
    /// Opens the database at `path`, creating it (with the root directory: ino 1, mode 0755,
    /// owned by root) if the file does not exist or is empty.
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let db = Database::create(path)?;
        let fs_uuid;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut inodes = txn.open_table(INODES)?;
            txn.open_table(DIRENTS)?;
            txn.open_table(TARGETS)?;
            txn.open_table(REPOS)?;
            txn.open_table(REPO_FILES)?;
            txn.open_table(task_ops::TASKS)?;
            txn.open_table(task_ops::TASK_REPORTS)?;
            let mut sup = txn.open_table(SUPER)?;
            let existing = sup.get(SUPER_KEY)?.map(|guard| guard.value().to_vec());
            match existing {
                Some(bytes) => {
                    Superblock::decode(&bytes)?;
                }
                None => {
                    let now = now_ns();
                    let root = Attr {
                        ino: ROOT_INO,
                        file_type: FileType::Dir,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        nlink: 2,
                        atime_ns: now,
                        mtime_ns: now,
                        ctime_ns: now,
                        layout: None,
                        default_layout: None,
                        symlink: None,
                    };
                    inodes.insert(ROOT_INO, root.to_bytes().as_slice())?;
                    let counters = Superblock {
                        next_ino: FIRST_FREE_INO,
                        files: 0,
                        dirs: 1,
                    };
                    sup.insert(SUPER_KEY, counters.encode().as_slice())?;
                }
            }
            let stored = sup.get(FS_UUID_KEY)?.map(|guard| guard.value().to_vec());
            fs_uuid = match stored {
                Some(bytes) => <[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| {
                    corrupt(format!(
                        "the file system uuid is {} bytes, not 16",
                        bytes.len()
                    ))
                })?,
                // A new store, or one made before file systems had uuids.
                None => {
                    let uuid = nacre_io::random_uuid().map_err(|e| MetaError::Store {
                        op: "make the file system uuid",
                        reason: e.to_string(),
                    })?;
                    sup.insert(FS_UUID_KEY, uuid.as_slice())?;
                    uuid
                }
            };
        }
        txn.commit()?;
        task_ops::requeue_executing(&db)?;

        let mut targets = BTreeMap::new();
        let has_repo_files;
        let has_repos;
        {
            let read = db.begin_read()?;
            let table = read.open_table(TARGETS)?;
            for item in table.range::<u32>(..)? {
                let (_, value) = item?;
                let info = TargetInfo::from_bytes(value.value())?;
                targets.insert(info.target_id, info);
            }
            has_repo_files = !redb::ReadableTableMetadata::is_empty(&read.open_table(REPO_FILES)?)?;
            has_repos = !redb::ReadableTableMetadata::is_empty(&read.open_table(REPOS)?)?;
        }
        Ok(MetaStore {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            broken: AtomicBool::new(false),
            last_reopen: Mutex::new(None),
            fs_uuid,
            targets: Mutex::new(targets),
            register_lock: Mutex::new(()),
            round_robin: AtomicU64::new(0),
            has_repo_files: AtomicBool::new(has_repo_files),
            has_repos: AtomicBool::new(has_repos),
            instance: crate::server::instance(),
            handles: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` on the database, opening it again first when an earlier operation failed
    /// in the storage (a full disk, say): a failed operation changed nothing, and once the
    /// cause is gone the next one succeeds without a restart of the service.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        if self.broken.load(Ordering::SeqCst) {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_ref() else {
            return Err(MetaError::Store {
                op: "open database",
                reason: "it is closed after an I/O failure; the next request opens it again"
                    .to_owned(),
            });
        };
        let result = f(db);
        if let Err(MetaError::StoreIo { .. } | MetaError::NoSpace { .. }) = &result {
            self.broken.store(true, Ordering::SeqCst);
            let full = matches!(result, Err(MetaError::NoSpace { .. }));
            if let Some((_, was_full)) = lock(&self.last_reopen).as_mut() {
                *was_full = full;
            }
        }
        result
    }

    /// Closes the database and opens it again (redb checks and repairs it as it opens),
    /// at most once per [`REOPEN_INTERVAL_MS`]: in between, operations fail at once with the
    /// last failure's kind, so that a full device is not a reopen per request. One thread
    /// does it; the others wait for it at the lock.
    fn reopen(&self) -> Result<(), MetaError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        {
            let mut last = lock(&self.last_reopen);
            if let Some((at, was_full)) = *last
                && at.elapsed() < Duration::from_millis(REOPEN_INTERVAL_MS)
            {
                let reason = format!(
                    "it failed less than {REOPEN_INTERVAL_MS} ms ago and is tried again after"
                );
                return Err(if was_full {
                    MetaError::NoSpace {
                        op: "write",
                        reason,
                    }
                } else {
                    MetaError::StoreIo {
                        op: "open database",
                        reason,
                    }
                });
            }
            *last = Some((Instant::now(), false));
        }
        // The old one must be gone first: a database file is opened once at a time.
        drop(guard.take());
        let db = Database::create(&self.path)?;
        *guard = Some(db);
        self.broken.store(false, Ordering::SeqCst);
        nacre_transport::log_line!(
            "nacre meta: {} opened again after a storage failure",
            self.path.display()
        );
        Ok(())
    }

    /// The file system's uuid: made when the store was first opened, the same ever after.
    pub fn fs_uuid(&self) -> [u8; 16] {
        self.fs_uuid
    }

    fn lock_targets(&self) -> MutexGuard<'_, BTreeMap<u32, TargetInfo>> {
        lock(&self.targets)
    }

    /// Runs `op` in one read transaction.
    fn read<T>(
        &self,
        op: impl FnOnce(
            &Ns<
                redb::ReadOnlyTable<u64, &'static [u8]>,
                redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
            >,
        ) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let ns = Ns {
                inodes: txn.open_table(INODES)?,
                dirents: txn.open_table(DIRENTS)?,
            };
            op(&ns)
        })
    }

    /// Runs `op` in one write transaction of its own tables, committed durably if `op`
    /// succeeds and aborted (nothing changed) if it fails.
    fn transaction<T>(
        &self,
        op: impl FnOnce(&redb::WriteTransaction) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        self.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            match op(&txn) {
                Ok(value) => {
                    txn.commit()?;
                    Ok(value)
                }
                Err(error) => {
                    txn.abort()?;
                    Err(error)
                }
            }
        })
    }

    /// Runs `op` in one write transaction of the namespace and repository tables (see
    /// [`MetaStore::transaction`]), keeping the super record's counters.
    fn write<T>(
        &self,
        op: impl FnOnce(&mut Tx<'_>) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        self.transaction(|txn| {
            let mut sup = txn.open_table(SUPER)?;
            let counters = {
                let guard = sup
                    .get(SUPER_KEY)?
                    .ok_or_else(|| corrupt("the super record is missing".to_owned()))?;
                Superblock::decode(guard.value())?
            };
            let mut tx = Tx {
                ns: Ns {
                    inodes: txn.open_table(INODES)?,
                    dirents: txn.open_table(DIRENTS)?,
                },
                counters,
                removals: txn.open_table(REMOVALS)?,
                repos: txn.open_table(REPOS)?,
                repo_files: txn.open_table(REPO_FILES)?,
            };
            let outcome = op(&mut tx);
            if outcome.is_ok() && tx.counters != counters {
                assert!(
                    tx.counters.next_ino >= counters.next_ino,
                    "inode numbers never go back"
                );
                sup.insert(SUPER_KEY, tx.counters.encode().as_slice())?;
            }
            outcome
        })
    }

    /// The attributes at `path`, a symbolic link at its end not followed (what `lstat`
    /// answers; links in the middle of the path are followed).
    pub fn lookup(&self, cred: &Cred, path: &str) -> Result<Attr, MetaError> {
        let path = NsPath::parse("path", path)?;
        self.read(|ns| ns.lookup(cred, &path))
    }

    /// The attributes of what `path` names, a symbolic link at its end followed (what
    /// `stat` answers).
    pub fn stat(&self, cred: &Cred, path: &str) -> Result<Attr, MetaError> {
        let path = NsPath::parse("path", path)?;
        self.read(|ns| ns.lookup_with(cred, &path, true))
    }

    /// `path` with its symbolic links replaced by what they name (the one at its end only
    /// with `follow_last`): the one path of what it names, which the associations' paths
    /// are compared with. The last name need not exist.
    pub fn canonical(
        &self,
        cred: &Cred,
        path: &str,
        follow_last: bool,
    ) -> Result<String, MetaError> {
        let path = NsPath::parse("path", path)?;
        if path.is_root() {
            return Ok("/".to_owned());
        }
        let mode = if follow_last {
            Last::Follow
        } else {
            Last::Entry
        };
        let at = self.read(|ns| Ok(ns.resolve(cred, &path, mode)?.path))?;
        if at.len() > MAX_PATH_BYTES {
            return Err(MetaError::too_long("path", &at, MAX_PATH_BYTES));
        }
        Ok(at)
    }

    /// Makes `to` another name of the file or symbolic link at `from` (`link(2)`: a link at
    /// the end of `from` is linked itself, not followed) and returns its attributes, one
    /// link more. A directory → [`MetaError::Perm`]; `to` there already →
    /// [`MetaError::Exists`]. As Linux with `fs.protected_hardlinks` (Debian's default),
    /// only root, the owner, or a caller who may read and write a regular file that is not
    /// setuid or setgid-executable may link it. Hard links are not kept under data
    /// repository associations, whose objects are per path ([`MetaError::CrossDevice`]).
    pub fn link(&self, cred: &Cred, from: &str, to: &str) -> Result<Attr, MetaError> {
        let from = NsPath::parse("from", from)?;
        let to = NsPath::parse("to", to)?;
        if to.is_root() {
            return Err(MetaError::Exists { path: to.full() });
        }
        self.write(|tx| {
            // `from` as `lstat` finds it (a link at its end is linked itself), and where.
            let from_at = tx.ns.resolve(cred, &from, Last::Lstat)?;
            let source = from_at.entry.ok_or_else(|| MetaError::NotFound {
                path: from_at.path.clone(),
            })?;
            let from_at = from_at.path;
            let at = tx.ns.resolve(cred, &to, Last::Entry)?;
            let (parent, name) = at.at.expect("a non-root path has a parent");
            if at.entry.is_some() {
                return Err(MetaError::Exists { path: at.path });
            }
            if to.dir_only {
                return Err(MetaError::NotFound {
                    path: format!("{}/ (only a directory is named with a / after it)", at.path),
                });
            }
            if !may_hardlink(cred, &source) {
                return Err(MetaError::Perm {
                    path: from.full(),
                    reason: "only its owner, or one who may read and write it (a regular \
                             file, not setuid or setgid-executable), may link it"
                        .to_owned(),
                });
            }
            require(cred, &parent, MAY_WRITE | MAY_EXEC, "write", || to.parent())?;
            if source.is_dir() {
                return Err(MetaError::Perm {
                    path: from.full(),
                    reason: "a directory has one name".to_owned(),
                });
            }
            if source.nlink >= MAX_LINKS {
                return Err(MetaError::TooManyLinks {
                    path: from.full(),
                    max: MAX_LINKS,
                });
            }
            // A repository's objects are one per path, its records one per inode: a file
            // of an association, or one linked to an object, keeps one name.
            for path in [&from_at, &at.path] {
                tx.refuse_in_association(path, "hard links are not kept")?;
            }
            if tx.repo_files.get(source.ino)?.is_some() {
                return Err(MetaError::CrossDevice {
                    path: from_at,
                    reason: "it is linked to a data repository's object, which is one per \
                             path: it keeps one name"
                        .to_owned(),
                });
            }
            let now = now_ns();
            let linked = tx.ns.update(source.ino, |attr| {
                attr.nlink += 1;
                attr.ctime_ns = now;
            })?;
            tx.ns.link(parent.ino, &name, &linked)?;
            tx.ns.touch_dir(parent.ino, now, 0)?;
            Ok(linked)
        })
    }

    /// Makes a symbolic link at `path` naming `target` (any text of 1 to
    /// [`MAX_SYMLINK_TARGET_BYTES`](crate::meta::types::MAX_SYMLINK_TARGET_BYTES) bytes
    /// without NUL, resolved when the link is followed). Its mode
    /// is 0o777, as on Linux; its group is the parent's if the parent is setgid.
    pub fn symlink(&self, cred: &Cred, path: &str, target: &str) -> Result<Attr, MetaError> {
        check_symlink_target(target)?;
        let path = NsPath::parse("path", path)?;
        if path.is_root() {
            return Err(MetaError::Exists { path: path.full() });
        }
        self.write(|tx| {
            let (parent, entry) = tx.ns.lookup_parent(cred, &path)?;
            if entry.is_some() {
                return Err(MetaError::Exists { path: path.full() });
            }
            if path.dir_only {
                // Only a directory may be named with a `/` after it (Linux: `ENOENT`).
                return Err(MetaError::NotFound {
                    path: format!("{}/ (a symbolic link is not a directory)", path.full()),
                });
            }
            require(cred, &parent, MAY_WRITE | MAY_EXEC, "write", || {
                path.parent()
            })?;
            let now = now_ns();
            let gid = if parent.mode & MODE_SETGID != 0 {
                parent.gid
            } else {
                cred.gid
            };
            let link = tx.new_symlink(target, cred.uid, gid, (now, now))?;
            tx.ns.link(parent.ino, path.last(), &link)?;
            tx.ns.touch_dir(parent.ino, now, 0)?;
            Ok(link)
        })
    }

    /// Makes a directory. `mode` is masked with 0o7777 (the client applied its umask). It
    /// inherits its parent's default layout; its group is the parent's if the parent is
    /// setgid (and it is then setgid too, as on Linux), else the caller's.
    pub fn mkdir(&self, cred: &Cred, path: &str, mode: u32) -> Result<Attr, MetaError> {
        let path = NsPath::parse("path", path)?;
        if path.is_root() {
            return Err(MetaError::Exists { path: path.full() });
        }
        self.write(|tx| {
            let parent = tx.ns.parent_of_new(cred, &path)?;
            let now = now_ns();
            let parent_setgid = parent.mode & MODE_SETGID != 0;
            let dir = Attr {
                ino: tx.alloc_ino()?,
                file_type: FileType::Dir,
                mode: (mode & MODE_PERMISSION_BITS) | if parent_setgid { MODE_SETGID } else { 0 },
                uid: cred.uid,
                gid: if parent_setgid { parent.gid } else { cred.gid },
                nlink: 2,
                atime_ns: now,
                mtime_ns: now,
                ctime_ns: now,
                layout: None,
                default_layout: parent.default_layout.clone(),
                symlink: None,
            };
            tx.ns.put_attr(&dir)?;
            tx.ns.link(parent.ino, path.last(), &dir)?;
            tx.ns.touch_dir(parent.ino, now, 1)?;
            tx.counters.dirs += 1;
            Ok(dir)
        })
    }

    /// Creates a file, or returns the one there (`created` false).
    ///
    /// If the path exists: `exclusive` → [`MetaError::Exists`]; a directory →
    /// [`MetaError::IsDir`]; else it is returned if the caller may write it. A new file gets
    /// `layout`, else its parent's default layout, else the root's, else the filesystem's
    /// ([`LayoutSpec::filesystem_default`]), resolved against the registered targets.
    pub fn create(
        &self,
        cred: &Cred,
        path: &str,
        mode: u32,
        exclusive: bool,
        layout: Option<&LayoutSpec>,
    ) -> Result<(Attr, bool), MetaError> {
        let if_exists = if exclusive {
            IfExists::Refuse
        } else {
            IfExists::Open
        };
        self.create_file(cred, path, mode, if_exists, layout)
    }

    /// What `lfs setstripe` does on a path that does not exist: creates an empty file with
    /// `layout`. A file there already → [`MetaError::Exists`] (a file cannot be restriped);
    /// a directory → [`MetaError::IsDir`] (use [`MetaStore::set_default_layout`]).
    pub fn set_layout_on_new_file(
        &self,
        cred: &Cred,
        path: &str,
        layout: &LayoutSpec,
        mode: u32,
    ) -> Result<Attr, MetaError> {
        self.create_file(cred, path, mode, IfExists::Setstripe, Some(layout))
            .map(|(attr, _)| attr)
    }

    fn create_file(
        &self,
        cred: &Cred,
        path: &str,
        mode: u32,
        if_exists: IfExists,
        layout: Option<&LayoutSpec>,
    ) -> Result<(Attr, bool), MetaError> {
        let path = NsPath::parse("path", path)?;
        if path.is_root() {
            return Err(match if_exists {
                IfExists::Refuse => MetaError::Exists { path: path.full() },
                IfExists::Open | IfExists::Setstripe => MetaError::IsDir { path: path.full() },
            });
        }
        self.write(|tx| {
            // O_CREAT follows a symbolic link at the end, and through a dangling one creates
            // what it names (as Linux); with O_EXCL, and for setstripe, the link itself is
            // what exists.
            let last = match if_exists {
                IfExists::Open => Last::Create,
                IfExists::Refuse | IfExists::Setstripe => Last::Entry,
            };
            let resolved = tx.ns.resolve(cred, &path, last)?;
            let full = resolved.path;
            let Some((parent, name)) = resolved.at else {
                return Err(MetaError::IsDir { path: full });
            };
            // A name that must be a directory is never created as a file (Linux: `EISDIR`).
            if resolved.dir_only {
                return Err(MetaError::IsDir { path: full });
            }
            if let Some(existing) = resolved.entry {
                match (if_exists, existing.is_dir()) {
                    (IfExists::Refuse, _) | (IfExists::Setstripe, false) => {
                        return Err(MetaError::Exists { path: full });
                    }
                    (IfExists::Open | IfExists::Setstripe, true) => {
                        return Err(MetaError::IsDir { path: full });
                    }
                    (IfExists::Open, false) => {}
                }
                require(cred, &existing, MAY_WRITE, "write", || full.clone())?;
                return Ok((existing, false));
            }
            require(cred, &parent, MAY_WRITE | MAY_EXEC, "write", || {
                parent_path(&full)
            })?;
            let spec = match (layout, &parent.default_layout) {
                (Some(spec), _) => spec.clone(),
                (None, Some(spec)) => spec.clone(),
                (None, None) => tx
                    .ns
                    .attr(ROOT_INO)?
                    .default_layout
                    .unwrap_or_else(LayoutSpec::filesystem_default),
            };
            let resolved = self.resolve_layout(&full, &spec)?;
            let now = now_ns();
            let parent_setgid = parent.mode & MODE_SETGID != 0;
            let file = Attr {
                ino: tx.alloc_ino()?,
                file_type: FileType::File,
                mode: mode & MODE_PERMISSION_BITS,
                uid: cred.uid,
                gid: if parent_setgid { parent.gid } else { cred.gid },
                nlink: 1,
                atime_ns: now,
                mtime_ns: now,
                ctime_ns: now,
                layout: Some(resolved),
                default_layout: None,
                symlink: None,
            };
            tx.ns.put_attr(&file)?;
            tx.ns.link(parent.ino, &name, &file)?;
            tx.ns.touch_dir(parent.ino, now, 0)?;
            tx.counters.files += 1;
            Ok((file, true))
        })
    }

    /// Resolves a layout request against the registered targets: for each component, the
    /// targets of its pool (all when it has none) in id order, the first target picked by
    /// [`pick_first_target`] when the request leaves it open.
    fn resolve_layout(&self, path: &str, spec: &LayoutSpec) -> Result<Layout, MetaError> {
        let layout_error = |source: LayoutError| MetaError::Layout {
            path: path.to_owned(),
            source,
        };
        spec.check().map_err(layout_error)?;
        let turn = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let targets = self.lock_targets();
        let mut stripes = Vec::with_capacity(spec.components.len());
        for component in &spec.components {
            let pool = component.stripe.pool.as_deref();
            let pool_targets: Vec<&TargetInfo> = targets
                .values()
                .filter(|info| pool.is_none_or(|pool| info.pools.iter().any(|p| p == pool)))
                .collect();
            let first_target_pick =
                pick_first_target(&pool_targets, turn).ok_or_else(|| MetaError::NoTargets {
                    pool: pool.map(str::to_owned),
                })?;
            let target_ids: Vec<u32> = pool_targets.iter().map(|info| info.target_id).collect();
            stripes.push(
                component
                    .stripe
                    .resolve(&target_ids, first_target_pick)
                    .map_err(layout_error)?,
            );
        }
        let layout = spec.build(stripes).map_err(layout_error)?;
        // A file's attributes travel whole in one reply, its layout with them.
        let stripes: usize = layout
            .components()
            .iter()
            .map(|c| c.stripe.target_ids().len())
            .sum();
        if layout.encoded_len_bytes() > MAX_FILE_LAYOUT_BYTES {
            return Err(MetaError::Invalid {
                field: "layout",
                value: format!(
                    "{} components of {stripes} stripes in all ({} bytes encoded)",
                    layout.components().len(),
                    layout.encoded_len_bytes()
                ),
                allowed: format!(
                    "a layout of at most {MAX_FILE_LAYOUT_BYTES} bytes encoded (about {} \
                     stripes in all): a file's attributes, its layout with them, travel in \
                     one message",
                    MAX_FILE_LAYOUT_BYTES / nacre_layout::limits::ENCODED_TARGET_ID_BYTES
                ),
            });
        }
        Ok(layout)
    }

    /// Checks that `cred` may open `path` for `access` and returns its attributes (named
    /// `open_file` because [`MetaStore::open`] opens the store). A directory opened for
    /// writing → [`MetaError::IsDir`]. Opens do not change the access time.
    pub fn open_file(&self, cred: &Cred, path: &str, access: Access) -> Result<Attr, MetaError> {
        let path = NsPath::parse("path", path)?;
        self.read(|ns| {
            let attr = ns.lookup_with(cred, &path, true)?;
            let (want, need) = match access {
                Access::Read => (MAY_READ, "read"),
                Access::Write => (MAY_WRITE, "write"),
                Access::ReadWrite => (MAY_READ | MAY_WRITE, "read and write"),
            };
            if attr.is_dir() && want & MAY_WRITE != 0 {
                return Err(MetaError::IsDir { path: path.full() });
            }
            require(cred, &attr, want, need, || path.full())?;
            Ok(attr)
        })
    }

    /// The entries of the directory at `path` in name order, starting after the name
    /// `after`, at most `max` of them (and at most [`MAX_READDIR_ENTRIES`]; 0 gives none).
    pub fn readdir(
        &self,
        cred: &Cred,
        path: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<DirEntry>, MetaError> {
        let path = NsPath::parse("path", path)?;
        if let Some(name) = after
            && name.len() > MAX_NAME_BYTES
        {
            return Err(MetaError::too_long("name", name, MAX_NAME_BYTES));
        }
        self.read(|ns| {
            let dir = ns.lookup_with(cred, &path, true)?;
            if !dir.is_dir() {
                return Err(MetaError::NotDir { path: path.full() });
            }
            require(cred, &dir, MAY_READ, "read", || path.full())?;
            ns.list(dir.ino, after, max.min(MAX_READDIR_ENTRIES))
        })
    }

    /// Removes a file and returns its attributes, so that the caller removes its objects.
    pub fn unlink(&self, cred: &Cred, path: &str) -> Result<Attr, MetaError> {
        let path = NsPath::parse("path", path)?;
        if path.is_root() {
            return Err(MetaError::IsDir { path: path.full() });
        }
        self.write(|tx| {
            let (parent, entry) = tx.ns.lookup_parent(cred, &path)?;
            let victim = entry.ok_or_else(|| MetaError::NotFound { path: path.full() })?;
            // A `/` after the name is answered first, as Linux does.
            if path.dir_only {
                return Err(if victim.is_dir() {
                    MetaError::IsDir { path: path.full() }
                } else {
                    MetaError::NotDir { path: path.full() }
                });
            }
            require(cred, &parent, MAY_WRITE | MAY_EXEC, "write", || {
                path.parent()
            })?;
            require_sticky(cred, &parent, &victim, &path.full())?;
            if victim.is_dir() {
                return Err(MetaError::IsDir { path: path.full() });
            }
            let now = now_ns();
            tx.ns.unlink(parent.ino, path.last())?;
            tx.drop_name(&victim, now)?;
            tx.ns.touch_dir(parent.ino, now, 0)?;
            Ok(victim)
        })
    }

    /// Removes an empty directory. The root cannot be removed ([`MetaError::Perm`], where
    /// Linux says `EBUSY`).
    pub fn rmdir(&self, cred: &Cred, path: &str) -> Result<(), MetaError> {
        let path = NsPath::parse("path", path)?;
        if path.is_root() {
            return Err(MetaError::Perm {
                path: path.full(),
                reason: "the root directory cannot be removed".to_owned(),
            });
        }
        self.write(|tx| {
            let (parent, entry) = tx.ns.lookup_parent(cred, &path)?;
            let victim = entry.ok_or_else(|| MetaError::NotFound { path: path.full() })?;
            require(cred, &parent, MAY_WRITE | MAY_EXEC, "write", || {
                path.parent()
            })?;
            require_sticky(cred, &parent, &victim, &path.full())?;
            if !victim.is_dir() {
                return Err(MetaError::NotDir { path: path.full() });
            }
            if tx.ns.has_entries(victim.ino)? {
                return Err(MetaError::NotEmpty { path: path.full() });
            }
            tx.ns.unlink(parent.ino, path.last())?;
            tx.ns.remove_attr(victim.ino)?;
            tx.ns.touch_dir(parent.ino, now_ns(), -1)?;
            tx.counters.dirs -= 1;
            Ok(())
        })
    }

    /// POSIX rename. An existing file at `to` is replaced and returned (so that the caller
    /// removes its objects); a directory may replace an empty directory (`None` is
    /// returned then). File over directory → [`MetaError::IsDir`]; directory over file →
    /// [`MetaError::NotDir`]; over a non-empty directory → [`MetaError::NotEmpty`]; a
    /// directory into its own subtree → [`MetaError::Invalid`]; onto itself → nothing
    /// happens. The root cannot be renamed or replaced ([`MetaError::Perm`]).
    pub fn rename(&self, cred: &Cred, from: &str, to: &str) -> Result<Option<Attr>, MetaError> {
        let from = NsPath::parse("from", from)?;
        let to = NsPath::parse("to", to)?;
        if from.is_root() || to.is_root() {
            return Err(MetaError::Perm {
                path: "/".to_owned(),
                reason: "the root directory cannot be renamed or replaced".to_owned(),
            });
        }
        self.write(|tx| {
            // Compared as resolved: a link on the way must not hide a directory moved into
            // itself.
            let from_at = tx.ns.resolve(cred, &from, Last::Entry)?;
            let to_at = tx.ns.resolve(cred, &to, Last::Entry)?;
            let (from_full, to_full) = (from_at.path, to_at.path);
            let (from_parent, from_name) = from_at.at.expect("a non-root path has a parent");
            let (to_parent, to_name) = to_at.at.expect("a non-root path has a parent");
            let moved = from_at.entry.ok_or_else(|| MetaError::NotFound {
                path: from_full.clone(),
            })?;
            let victim = to_at.entry;
            // A `/` after either name says a directory is moved (Linux: `ENOTDIR`).
            if !moved.is_dir() && (from.dir_only || to.dir_only) {
                return Err(MetaError::NotDir {
                    path: if from.dir_only { from_full } else { to_full },
                });
            }
            if from_full == to_full || victim.as_ref().is_some_and(|v| v.ino == moved.ino) {
                return Ok(None);
            }
            if !moved.is_dir() && moved.nlink > 1 {
                tx.refuse_in_association(&to_full, "a file of several names does not move")?;
            }
            if moved.is_dir() && to_full.starts_with(&format!("{from_full}/")) {
                return Err(MetaError::Invalid {
                    field: "to",
                    value: to_full.clone(),
                    allowed: format!("a path outside the directory being moved ({from_full})"),
                });
            }
            if victim.is_some() && from_full.starts_with(&format!("{to_full}/")) {
                return Err(MetaError::NotEmpty {
                    path: to_full.clone(),
                });
            }
            require(cred, &from_parent, MAY_WRITE | MAY_EXEC, "write", || {
                from.parent()
            })?;
            require_sticky(cred, &from_parent, &moved, &from_full)?;
            require(cred, &to_parent, MAY_WRITE | MAY_EXEC, "write", || {
                to.parent()
            })?;
            if let Some(victim) = &victim {
                require_sticky(cred, &to_parent, victim, &to_full)?;
                match (moved.is_dir(), victim.is_dir()) {
                    (true, false) => {
                        return Err(MetaError::NotDir {
                            path: to_full.clone(),
                        });
                    }
                    (false, true) => {
                        return Err(MetaError::IsDir {
                            path: to_full.clone(),
                        });
                    }
                    _ => {}
                }
            }
            // A directory changing parent gets a new "..": Linux asks write on it.
            if moved.is_dir() && from_parent.ino != to_parent.ino {
                require(cred, &moved, MAY_WRITE, "write", || from_full.clone())?;
            }
            if let Some(victim) = &victim
                && victim.is_dir()
                && tx.ns.has_entries(victim.ino)?
            {
                return Err(MetaError::NotEmpty {
                    path: to_full.clone(),
                });
            }

            let now = now_ns();
            tx.ns.unlink(from_parent.ino, &from_name)?;
            if let Some(victim) = &victim {
                tx.ns.unlink(to_parent.ino, &to_name)?;
                if victim.is_dir() {
                    tx.ns.remove_attr(victim.ino)?;
                    tx.counters.dirs -= 1;
                } else {
                    // Gone as by an unlink: with its last name, its objects and its link to
                    // an object go (else the key stays "linked" and no other file may be
                    // exported to it).
                    tx.drop_name(victim, now)?;
                }
            }
            tx.ns.link(to_parent.ino, &to_name, &moved)?;
            tx.ns.update(moved.ino, |attr| attr.ctime_ns = now)?;
            let moved_dirs = i32::from(moved.is_dir());
            let replaced_dirs = i32::from(victim.as_ref().is_some_and(Attr::is_dir));
            tx.ns.touch_dir(from_parent.ino, now, -moved_dirs)?;
            tx.ns
                .touch_dir(to_parent.ino, now, moved_dirs - replaced_dirs)?;
            Ok(victim.filter(|victim| !victim.is_dir()))
        })
    }

    /// Sets (or with `None` clears) the default layout of the directory at `path`, which
    /// new files and subdirectories inherit. Owner or root only. The request's shape is
    /// checked; a pool or a stripe index no target has yet is accepted.
    pub fn set_default_layout(
        &self,
        cred: &Cred,
        path: &str,
        layout: Option<LayoutSpec>,
    ) -> Result<(), MetaError> {
        let path = NsPath::parse("path", path)?;
        if let Some(spec) = &layout {
            spec.check().map_err(|source| MetaError::Layout {
                path: path.full(),
                source,
            })?;
        }
        self.write(|tx| {
            let dir = tx.ns.lookup_with(cred, &path, true)?;
            if !dir.is_dir() {
                return Err(MetaError::NotDir { path: path.full() });
            }
            require_owner(cred, &dir, &path.full(), "set the default layout")?;
            let now = now_ns();
            tx.ns.update(dir.ino, |dir| {
                dir.default_layout = layout;
                dir.ctime_ns = now;
            })?;
            Ok(())
        })
    }

    /// Changes the permission bits (`mode & 0o7777`) of what `path` names, a symbolic
    /// link at its end followed (a link's own mode is never used, as on Linux). Owner or
    /// root only; as on Linux, a caller other than root outside the file's group loses the
    /// setgid bit.
    pub fn chmod(&self, cred: &Cred, path: &str, mode: u32) -> Result<(), MetaError> {
        let path = NsPath::parse("path", path)?;
        self.write(|tx| {
            let attr = tx.ns.lookup_with(cred, &path, true)?;
            require_owner(cred, &attr, &path.full(), "change the mode")?;
            let mut mode = mode & MODE_PERMISSION_BITS;
            if !cred.is_root() && !cred.in_group(attr.gid) {
                mode &= !MODE_SETGID;
            }
            let now = now_ns();
            tx.ns.update(attr.ino, |attr| {
                attr.mode = mode;
                attr.ctime_ns = now;
            })?;
            Ok(())
        })
    }

    /// Changes the owner and/or the group of what `path` names, a symbolic link at its
    /// end followed (`chown`). Root may change both; the owner may change the group to one
    /// of its own groups; anything else → [`MetaError::Perm`]. As on Linux, a file whose
    /// owner or group changes loses setuid (and setgid when group-executable).
    pub fn chown(
        &self,
        cred: &Cred,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), MetaError> {
        self.chown_with(cred, path, uid, gid, true)
    }

    /// As [`MetaStore::chown`], a symbolic link at the end of `path` changed itself
    /// (`lchown`).
    pub fn lchown(
        &self,
        cred: &Cred,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), MetaError> {
        self.chown_with(cred, path, uid, gid, false)
    }

    fn chown_with(
        &self,
        cred: &Cred,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
        follow: bool,
    ) -> Result<(), MetaError> {
        let path = NsPath::parse("path", path)?;
        self.write(|tx| {
            let attr = tx.ns.lookup_with(cred, &path, follow)?;
            let changes_uid = uid.is_some_and(|uid| uid != attr.uid);
            let changes_gid = gid.is_some_and(|gid| gid != attr.gid);
            if !cred.is_root() {
                if changes_uid {
                    return Err(MetaError::Perm {
                        path: path.full(),
                        reason: "only root may change the owner".to_owned(),
                    });
                }
                if uid.is_some() || gid.is_some() {
                    require_owner(cred, &attr, &path.full(), "change the group")?;
                }
                if let Some(gid) = gid
                    && changes_gid
                    && !cred.in_group(gid)
                {
                    return Err(MetaError::Perm {
                        path: path.full(),
                        reason: format!(
                            "the owner may change the group only to one of its own groups, \
                             not to {gid}"
                        ),
                    });
                }
            }
            let now = now_ns();
            tx.ns.update(attr.ino, |attr| {
                if let Some(uid) = uid {
                    attr.uid = uid;
                }
                if let Some(gid) = gid {
                    attr.gid = gid;
                }
                if attr.is_file() && (uid.is_some() || gid.is_some()) {
                    attr.mode &= !MODE_SETUID;
                    if attr.mode & 0o010 != 0 {
                        attr.mode &= !MODE_SETGID;
                    }
                }
                attr.ctime_ns = now;
            })?;
            Ok(())
        })
    }

    /// Sets the access and modification times of what `path` names (a symbolic link at
    /// its end followed when `follow`), as `utimensat`: both [`TimeSet::Omit`] does nothing
    /// (and succeeds whatever the path, as Linux); both [`TimeSet::Now`] needs the owner,
    /// write permission or root ([`MetaError::Access`]); anything else the owner or root
    /// ([`MetaError::Perm`]). The change time becomes now.
    pub fn set_times(
        &self,
        cred: &Cred,
        path: &str,
        atime: TimeSet,
        mtime: TimeSet,
        follow: bool,
    ) -> Result<(), MetaError> {
        if atime == TimeSet::Omit && mtime == TimeSet::Omit {
            return Ok(());
        }
        let path = NsPath::parse("path", path)?;
        self.write(|tx| {
            let attr = tx.ns.lookup_with(cred, &path, follow)?;
            // Both now: as a write would (the owner, root, or write permission); any time
            // given: the owner or root.
            let touch = atime == TimeSet::Now && mtime == TimeSet::Now;
            if !touch {
                require_owner(cred, &attr, &path.full(), "set its times")?;
            } else if !(cred.is_root() || cred.uid == attr.uid) {
                require(cred, &attr, MAY_WRITE, "write", || path.full())?;
            }
            let now = now_ns();
            let pick = |set: TimeSet, old: i64| match set {
                TimeSet::Omit => old,
                TimeSet::Now => now,
                TimeSet::At(ns) => ns,
            };
            tx.ns.update(attr.ino, |a| {
                a.atime_ns = pick(atime, a.atime_ns);
                a.mtime_ns = pick(mtime, a.mtime_ns);
                a.ctime_ns = now;
            })?;
            Ok(())
        })
    }

    /// Registers a target, or updates its endpoint, pools and usage when the same id comes
    /// back with the same uuid (a restart). The same id with another uuid (another disk
    /// claiming it), or a target of another file system (`filesystem`, the uuid it is bound
    /// to, is not this store's) → [`MetaError::TargetConflict`]. Persisted before
    /// returning. Returns this file system's uuid, which a target not bound yet binds to.
    pub fn register_target(
        &self,
        info: TargetInfo,
        filesystem: Option<&str>,
    ) -> Result<String, MetaError> {
        check_target(&info)?;
        let ours = nacre_io::uuid_text(&self.fs_uuid);
        if let Some(theirs) = filesystem
            && theirs != ours
        {
            return Err(MetaError::TargetConflict {
                target_id: info.target_id,
                reason: format!(
                    "target uuid {:?} belongs to file system {theirs:?}, and this is file system \
                     {ours:?}: a target serves the file system it was first registered with \
                     (format a new target directory for this one)",
                    info.uuid
                ),
            });
        }
        let _serialised = lock(&self.register_lock);
        self.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let outcome = {
                let mut table = txn.open_table(TARGETS)?;
                let existing = match table.get(info.target_id)? {
                    Some(guard) => Some(TargetInfo::from_bytes(guard.value())?),
                    None => None,
                };
                match existing {
                    Some(existing) if existing.uuid != info.uuid => {
                        Err(MetaError::TargetConflict {
                            target_id: info.target_id,
                            reason: format!(
                                "registered with uuid {:?}, claimed now by uuid {:?}",
                                existing.uuid, info.uuid
                            ),
                        })
                    }
                    _ => {
                        table.insert(info.target_id, info.to_bytes().as_slice())?;
                        Ok(())
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    txn.commit()?;
                    self.lock_targets().insert(info.target_id, info);
                    Ok(ours)
                }
                Err(error) => {
                    txn.abort()?;
                    Err(error)
                }
            }
        })
    }

    /// Records a target's latest usage, in memory only: the registration record keeps the
    /// usage given at registration, and a restart of this store starts from it.
    pub fn update_usage(
        &self,
        target_id: u32,
        capacity_bytes: u64,
        free_bytes: u64,
    ) -> Result<(), MetaError> {
        check_usage(capacity_bytes, free_bytes)?;
        let mut targets = self.lock_targets();
        let info = targets
            .get_mut(&target_id)
            .ok_or_else(|| MetaError::Invalid {
                field: "target_id",
                value: target_id.to_string(),
                allowed: "a registered target id".to_owned(),
            })?;
        info.capacity_bytes = capacity_bytes;
        info.free_bytes = free_bytes;
        Ok(())
    }

    /// Up to `max` objects on target `target_id` whose files were removed and that are not
    /// yet known to be gone from it, in id order.
    pub fn pending_removals(&self, target_id: u32, max: usize) -> Result<Vec<u64>, MetaError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(REMOVALS) {
                Ok(t) => t,
                // A store no file was ever removed from has no log yet.
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let start = removal_key(target_id, 0);
            let end = removal_key(target_id, u64::MAX);
            let mut out = Vec::new();
            for entry in table.range(start.as_slice()..=end.as_slice())?.take(max) {
                let (key, _) = entry?;
                let key = key.value();
                let object_id = key
                    .get(4..REMOVAL_KEY_BYTES)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| corrupt(format!("a removal key of {} bytes", key.len())))?;
                out.push(object_id);
            }
            Ok(out)
        })
    }

    /// Forgets objects of target `target_id` that are gone from it (durably).
    pub fn removals_done(&self, target_id: u32, object_ids: &[u64]) -> Result<(), MetaError> {
        self.with_db(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(REMOVALS)?;
                for &object_id in object_ids {
                    table.remove(removal_key(target_id, object_id).as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The registered targets in id order, with their latest usage.
    pub fn targets(&self) -> Vec<TargetInfo> {
        self.lock_targets().values().cloned().collect()
    }

    /// Inode counts and the targets' summed usage, for `df`.
    pub fn statfs(&self) -> Result<StatFs, MetaError> {
        let counters = self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SUPER)?;
            let guard = table
                .get(SUPER_KEY)?
                .ok_or_else(|| corrupt("the super record is missing".to_owned()))?;
            Ok(Superblock::decode(guard.value())?)
        })?;
        let (capacity_bytes, free_bytes) =
            self.lock_targets()
                .values()
                .fold((0u64, 0u64), |(capacity, free), info| {
                    (
                        capacity.saturating_add(info.capacity_bytes),
                        free.saturating_add(info.free_bytes),
                    )
                });
        Ok(StatFs {
            files: counters.files,
            dirs: counters.dirs,
            free_inodes: (MAX_INO + 1).saturating_sub(counters.next_ino),
            capacity_bytes,
            free_bytes,
        })
    }
}

fn check_usage(capacity_bytes: u64, free_bytes: u64) -> Result<(), MetaError> {
    if free_bytes > capacity_bytes {
        return Err(MetaError::Invalid {
            field: "free_bytes",
            value: free_bytes.to_string(),
            allowed: format!("at most capacity_bytes ({capacity_bytes})"),
        });
    }
    Ok(())
}

fn check_target(info: &TargetInfo) -> Result<(), MetaError> {
    let invalid = |field: &'static str, value: &str, allowed: String| MetaError::Invalid {
        field,
        value: format!("{:?}", excerpt(value)),
        allowed,
    };
    if info.uuid.is_empty() || info.uuid.len() > MAX_TARGET_UUID_BYTES {
        return Err(invalid(
            "uuid",
            &info.uuid,
            format!("1 to {MAX_TARGET_UUID_BYTES} bytes"),
        ));
    }
    if info.endpoint.is_empty() || info.endpoint.len() > MAX_ENDPOINT_BYTES {
        return Err(invalid(
            "endpoint",
            &info.endpoint,
            format!("1 to {MAX_ENDPOINT_BYTES} bytes"),
        ));
    }
    if info.pools.len() > MAX_POOLS_PER_TARGET {
        return Err(MetaError::Invalid {
            field: "pools",
            value: format!("{} pools", info.pools.len()),
            allowed: format!("at most {MAX_POOLS_PER_TARGET}"),
        });
    }
    for (index, pool) in info.pools.iter().enumerate() {
        nacre_layout::PoolName::new(pool).map_err(|_| {
            invalid(
                "pools",
                pool,
                "1 to 15 characters of [A-Za-z0-9_.-]".to_owned(),
            )
        })?;
        if info.pools[..index].contains(pool) {
            return Err(invalid("pools", pool, "each pool once".to_owned()));
        }
    }
    check_usage(info.capacity_bytes, info.free_bytes)
}

/// The first target of a new component among `pool_targets` (in id order): the freest,
/// unless every target's free space is within [`BALANCED_FREE_SPREAD_PERCENT`] of the
/// freest's, in which case the `turn`-th in round-robin so that successive files spread.
/// `None` for an empty pool.
fn pick_first_target(pool_targets: &[&TargetInfo], turn: u64) -> Option<u32> {
    let most_free = pool_targets.iter().map(|info| info.free_bytes).max()?;
    let least_free = pool_targets.iter().map(|info| info.free_bytes).min()?;
    let balanced = (most_free - least_free) as u128 * 100
        <= most_free as u128 * u128::from(BALANCED_FREE_SPREAD_PERCENT);
    if balanced {
        let position = (turn % pool_targets.len() as u64) as usize;
        return Some(pool_targets[position].target_id);
    }
    pool_targets
        .iter()
        .find(|info| info.free_bytes == most_free)
        .map(|info| info.target_id)
}

// The server shares one store between its threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<MetaStore>();
};
