//! The metadata protocol: what a client (or a target registering itself) asks the metadata
//! service, in the body of an [`Opcode::Meta`](nacre_transport::wire::Opcode::Meta) message.
//!
//! A request body is the operation's code, the caller's [`Cred`], then the operation's
//! fields. A successful reply's body is the result ([`MetaRequest`] says which); a failed
//! one has the errno as its status and a message naming what was wrong as its body.

use crate::codec::{CodecError, Reader, Writer};
use crate::limits::{
    MAX_ETAG_BYTES, MAX_REPO_URL_BYTES, MAX_S3_KEY_BYTES, MAX_TASK_MESSAGE_BYTES,
    MAX_TASK_REPORT_LINES,
};
use crate::meta::repo::{AssocState, Association, ImportedFile};
use crate::meta::store::TaskEnd;
use crate::meta::task::{TaskCounts, TaskFailure, TaskKind, TaskState};
use crate::meta::types::{
    Access, Cred, LayoutSpec, MAX_PATH_BYTES, MAX_TARGET_UUID_BYTES, TargetInfo, TimeSet,
};

/// One metadata operation.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaRequest {
    /// The attributes of a path, a symbolic link at its end not followed (`lstat`).
    Lookup {
        /// The path.
        path: String,
    },
    /// The attributes of what a path names, a symbolic link at its end followed (`stat`).
    Stat {
        /// The path.
        path: String,
    },
    /// Make a symbolic link; the reply is its attributes.
    Symlink {
        /// Where.
        path: String,
        /// What it names (1 to 4095 bytes without NUL, resolved when followed).
        target: String,
    },
    /// Make another name of a file or symbolic link (`link(2)`); the reply is its
    /// attributes.
    Link {
        /// The existing name (a link at its end is not followed).
        from: String,
        /// The new name.
        to: String,
    },
    /// Create (or bring up to date) the symbolic link of an imported object (root only):
    /// the reply is its attributes and an [`ImportOutcome`](crate::meta::repo::ImportOutcome).
    ImportSymlink {
        /// The link, its attributes and object (`mode` is not used: a link's is 0o777).
        file: ImportedFile,
        /// What it names: the object's body.
        target: String,
    },
    /// Make a directory.
    Mkdir {
        /// The path.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// Create (or, unless exclusive, open) a file.
    Create {
        /// The path.
        path: String,
        /// Permission bits of a new file.
        mode: u32,
        /// Fail if it exists (O_EXCL).
        exclusive: bool,
        /// Its layout; the directory's default when absent.
        layout: Option<LayoutSpec>,
    },
    /// Open an existing file or directory.
    Open {
        /// The path.
        path: String,
        /// What access is asked for.
        access: Access,
    },
    /// Entries of a directory, in name order after `after`: at most `max`, and as many as
    /// one reply holds (the reply says whether more remain).
    Readdir {
        /// The directory.
        path: String,
        /// The last name of the previous page.
        after: Option<String>,
        /// At most this many (up to
        /// [`MAX_READDIR_ENTRIES`](crate::meta::types::MAX_READDIR_ENTRIES)).
        max: u32,
    },
    /// Remove a file (the service removes its objects).
    Unlink {
        /// The path.
        path: String,
    },
    /// Remove an empty directory.
    Rmdir {
        /// The path.
        path: String,
    },
    /// Rename.
    Rename {
        /// From.
        from: String,
        /// To.
        to: String,
    },
    /// Set (or clear) a directory's default layout.
    SetDefaultLayout {
        /// The directory.
        path: String,
        /// The new default.
        spec: Option<LayoutSpec>,
    },
    /// Create an empty file with a layout (`setstripe` on a new path).
    SetLayoutOnNewFile {
        /// The path.
        path: String,
        /// The layout.
        spec: LayoutSpec,
        /// Permission bits.
        mode: u32,
    },
    /// Change permission bits.
    Chmod {
        /// The path.
        path: String,
        /// The new bits (a symbolic link at the end of the path is followed).
        mode: u32,
    },
    /// Change owner and/or group.
    Chown {
        /// The path.
        path: String,
        /// New owner.
        uid: Option<u32>,
        /// New group.
        gid: Option<u32>,
        /// Follow a symbolic link at the end of the path (`chown`; without, `lchown`).
        follow: bool,
    },
    /// Set the access and modification times (`utimensat`); the change time becomes now.
    SetTimes {
        /// The path.
        path: String,
        /// The access time.
        atime: TimeSet,
        /// The modification time.
        mtime: TimeSet,
        /// Follow a symbolic link at the end of the path (without: `AT_SYMLINK_NOFOLLOW`).
        follow: bool,
    },
    /// A target announces itself. The reply is the file system's uuid (text), which a
    /// target not bound yet binds itself to.
    RegisterTarget {
        /// Who it is, where, and how full.
        info: TargetInfo,
        /// The file system the target belongs to (uuid text), or `None` for a target never
        /// registered: the service refuses a target of another file system.
        filesystem: Option<String>,
    },
    /// A target reports its usage.
    Usage {
        /// The target.
        target_id: u32,
        /// Its size.
        capacity_bytes: u64,
        /// Its free bytes.
        free_bytes: u64,
    },
    /// The registered targets of ids above `after`, in id order, as many as one reply holds
    /// (the reply says whether more remain).
    Targets {
        /// The last id of the previous page.
        after: Option<u32>,
    },
    /// Counts of files and directories.
    Statfs,
    /// Link a directory to a data repository (root only); the reply is the association.
    RepoLink {
        /// The association (its id and state are given by the service).
        assoc: Association,
    },
    /// Every association; the reply is a u32 count and the associations.
    RepoList,
    /// Unlink the association at a directory (root only).
    RepoUnlink {
        /// The directory.
        path: String,
    },
    /// Set the state of the association at a directory (root only).
    RepoSetState {
        /// The directory.
        path: String,
        /// The new state.
        state: AssocState,
        /// Why.
        reason: String,
    },
    /// Create or update the released file of an imported object (root only); the reply is
    /// its attributes and what was done ([`ImportOutcome`]).
    ImportFile {
        /// What the object says the file is.
        file: ImportedFile,
    },
    /// A file's HSM flags; the reply is the flags (u32), then a flag byte and, for an
    /// imported file, its object's URL.
    HsmState {
        /// The file.
        path: String,
    },
    /// A file's data is now the repository object `key` at `etag` (root only): it was
    /// exported, so it is archived and not dirty; the reply is its HSM flags (u32).
    Archived {
        /// The file.
        path: String,
        /// Its association.
        repo: u32,
        /// The object's key.
        key: String,
        /// The object's ETag.
        etag: String,
        /// The object's size.
        size: u64,
    },
    /// Make `len` bytes at `offset` of a file present, fetching what is released from its
    /// repository first; the reply is the file's HSM flags after (u32).
    Hydrate {
        /// The file.
        path: String,
        /// Its inode as the client opened it: a path that names another file since (a
        /// rename over it) is refused rather than hydrated for the wrong file.
        ino: u64,
        /// Where.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// Ask for a data repository task; the reply is the task, pending.
    TaskCreate {
        /// What it does.
        kind: TaskKind,
        /// Its paths.
        paths: Vec<String>,
    },
    /// Tasks after an id; the reply is a flag (more follow), a u32 count and the tasks.
    TaskList {
        /// The last id of the page before (0 for the first).
        after: u64,
    },
    /// One task; the reply is the task.
    TaskShow {
        /// Its id.
        id: u64,
    },
    /// A page of a task's completion report; the reply is a u32 count and the lines.
    TaskReport {
        /// The task.
        id: u64,
        /// The first line wanted.
        from: u32,
    },
    /// Cancel a task; the reply is the task after.
    TaskCancel {
        /// Its id.
        id: u64,
    },
    /// The task runner takes the oldest pending task (root only); the reply is a flag and
    /// the task, now executing.
    TaskClaim,
    /// The task runner's progress (root only); the reply is the task after.
    TaskUpdate {
        /// The task.
        id: u64,
        /// What is done so far.
        counts: TaskCounts,
        /// Report lines to add.
        failures: Vec<TaskFailure>,
        /// How it ended, if it did.
        end: Option<TaskEnd>,
    },
    /// A handle on a file under a data repository association was closed (the open's reply
    /// asked for this notice); the reply is a flag: queued for auto-export.
    Closed {
        /// The file.
        path: String,
        /// Its inode as it was opened.
        ino: u64,
        /// The service's start that counted the open (its reply said).
        instance: u64,
        /// The handle was open for writing: the file is dirty again, and may be exported.
        wrote: bool,
    },
    /// Which of `keys` of association `repo` a file's record still holds (root only): an
    /// auto-export deletes only objects no file needs. The reply is a count and a byte (1:
    /// held) per key, in order.
    KeysLinked {
        /// The association.
        repo: u32,
        /// Object keys, at most [`MAX_TASK_PATHS`](crate::limits::MAX_TASK_PATHS).
        keys: Vec<String>,
    },
    /// Sets and clears the user-settable HSM flags of the file at `path` (its owner or root:
    /// [`HS_USER_MASK`](crate::meta::repo::HS_USER_MASK), as `lfs hsm_set`); the reply is
    /// the flags after.
    HsmSet {
        /// The file.
        path: String,
        /// Flags to set.
        set: u32,
        /// Flags to clear.
        clear: u32,
    },
    /// Releases the file at `path` (root only): its data is dropped from the targets if it
    /// is archived, unchanged, not accessed for `idle_days` and no handle is open on it
    /// (`EBUSY` otherwise); the reply is a
    /// [`ReleaseOutcome`](crate::meta::repo::ReleaseOutcome).
    Release {
        /// The file.
        path: String,
        /// Days since its last access (0: whatever its age).
        idle_days: u32,
    },
}

const RECORD: &str = "metadata request";

fn put_opt_u32(w: &mut Writer<'_>, v: Option<u32>) {
    match v {
        Some(v) => w.u8(1).u32(v),
        None => w.u8(0),
    };
}

fn get_flag(r: &mut Reader<'_>, field: &'static str) -> Result<bool, CodecError> {
    match r.u8(field)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(r.bad_value(field, u64::from(v), "0 or 1")),
    }
}

fn get_opt_u32(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u32>, CodecError> {
    Ok(if get_flag(r, field)? {
        Some(r.u32(field)?)
    } else {
        None
    })
}

fn get_path(r: &mut Reader<'_>, field: &'static str) -> Result<String, CodecError> {
    Ok(r.str(field, MAX_PATH_BYTES)?.to_string())
}

fn get_opt_spec(r: &mut Reader<'_>) -> Result<Option<LayoutSpec>, CodecError> {
    Ok(if get_flag(r, "has_layout")? {
        Some(LayoutSpec::decode(r)?)
    } else {
        None
    })
}

fn put_opt_spec(w: &mut Vec<u8>, spec: Option<&LayoutSpec>) {
    match spec {
        Some(s) => {
            w.push(1);
            s.encode(w);
        }
        None => w.push(0),
    }
}

impl MetaRequest {
    /// The operation's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            MetaRequest::Lookup { .. } => "lstat",
            MetaRequest::Stat { .. } => "stat",
            MetaRequest::Symlink { .. } => "symlink",
            MetaRequest::Link { .. } => "link",
            MetaRequest::ImportSymlink { .. } => "import",
            MetaRequest::Mkdir { .. } => "mkdir",
            MetaRequest::Create { .. } => "create",
            MetaRequest::Open { .. } => "open",
            MetaRequest::Readdir { .. } => "readdir",
            MetaRequest::Unlink { .. } => "unlink",
            MetaRequest::Rmdir { .. } => "rmdir",
            MetaRequest::Rename { .. } => "rename",
            MetaRequest::SetDefaultLayout { .. } => "setstripe",
            MetaRequest::SetLayoutOnNewFile { .. } => "setstripe",
            MetaRequest::Chmod { .. } => "chmod",
            MetaRequest::Chown { .. } => "chown",
            MetaRequest::SetTimes { .. } => "utimens",
            MetaRequest::RegisterTarget { .. } => "register target",
            MetaRequest::Usage { .. } => "report usage",
            MetaRequest::Targets { .. } => "list targets",
            MetaRequest::Statfs => "statfs",
            MetaRequest::RepoLink { .. } => "repo link",
            MetaRequest::RepoList => "repo list",
            MetaRequest::RepoUnlink { .. } => "repo unlink",
            MetaRequest::RepoSetState { .. } => "repo state",
            MetaRequest::ImportFile { .. } => "import",
            MetaRequest::HsmState { .. } => "hsm state",
            MetaRequest::Hydrate { .. } => "hydrate",
            MetaRequest::Archived { .. } => "archive",
            MetaRequest::TaskCreate { .. } => "task create",
            MetaRequest::TaskList { .. } => "task list",
            MetaRequest::TaskShow { .. } => "task show",
            MetaRequest::TaskReport { .. } => "task report",
            MetaRequest::TaskCancel { .. } => "task cancel",
            MetaRequest::TaskClaim => "task claim",
            MetaRequest::TaskUpdate { .. } => "task update",
            MetaRequest::Closed { .. } => "close",
            MetaRequest::Release { .. } => "release",
            MetaRequest::KeysLinked { .. } => "keys linked",
            MetaRequest::HsmSet { .. } => "hsm set",
        }
    }

    /// The path it is about ("" when none).
    pub fn path(&self) -> &str {
        match self {
            MetaRequest::Lookup { path }
            | MetaRequest::Stat { path }
            | MetaRequest::Symlink { path, .. }
            | MetaRequest::Mkdir { path, .. }
            | MetaRequest::Create { path, .. }
            | MetaRequest::Open { path, .. }
            | MetaRequest::Readdir { path, .. }
            | MetaRequest::Unlink { path }
            | MetaRequest::Rmdir { path }
            | MetaRequest::SetDefaultLayout { path, .. }
            | MetaRequest::SetLayoutOnNewFile { path, .. }
            | MetaRequest::Chmod { path, .. }
            | MetaRequest::Chown { path, .. }
            | MetaRequest::SetTimes { path, .. }
            | MetaRequest::RepoUnlink { path }
            | MetaRequest::RepoSetState { path, .. }
            | MetaRequest::HsmState { path }
            | MetaRequest::Hydrate { path, .. }
            | MetaRequest::Archived { path, .. }
            | MetaRequest::Closed { path, .. }
            | MetaRequest::Release { path, .. }
            | MetaRequest::HsmSet { path, .. } => path,
            MetaRequest::Rename { from, .. } | MetaRequest::Link { from, .. } => from,
            MetaRequest::RepoLink { assoc } => &assoc.path,
            MetaRequest::ImportFile { file } | MetaRequest::ImportSymlink { file, .. } => {
                &file.path
            }
            MetaRequest::RegisterTarget { .. }
            | MetaRequest::Usage { .. }
            | MetaRequest::Targets { .. }
            | MetaRequest::RepoList
            | MetaRequest::TaskCreate { .. }
            | MetaRequest::TaskList { .. }
            | MetaRequest::TaskShow { .. }
            | MetaRequest::TaskReport { .. }
            | MetaRequest::TaskCancel { .. }
            | MetaRequest::TaskClaim
            | MetaRequest::TaskUpdate { .. }
            | MetaRequest::KeysLinked { .. }
            | MetaRequest::Statfs => "",
        }
    }

    fn code(&self) -> u8 {
        match self {
            MetaRequest::Lookup { .. } => 1,
            MetaRequest::Mkdir { .. } => 2,
            MetaRequest::Create { .. } => 3,
            MetaRequest::Open { .. } => 4,
            MetaRequest::Readdir { .. } => 5,
            MetaRequest::Unlink { .. } => 6,
            MetaRequest::Rmdir { .. } => 7,
            MetaRequest::Rename { .. } => 8,
            MetaRequest::SetDefaultLayout { .. } => 9,
            MetaRequest::SetLayoutOnNewFile { .. } => 10,
            MetaRequest::Chmod { .. } => 11,
            MetaRequest::Chown { .. } => 12,
            MetaRequest::RegisterTarget { .. } => 13,
            MetaRequest::Usage { .. } => 14,
            MetaRequest::Targets { .. } => 15,
            MetaRequest::Statfs => 16,
            MetaRequest::RepoLink { .. } => 17,
            MetaRequest::RepoList => 18,
            MetaRequest::RepoUnlink { .. } => 19,
            MetaRequest::RepoSetState { .. } => 20,
            MetaRequest::ImportFile { .. } => 21,
            MetaRequest::HsmState { .. } => 22,
            MetaRequest::Hydrate { .. } => 23,
            MetaRequest::Archived { .. } => 24,
            MetaRequest::TaskCreate { .. } => 25,
            MetaRequest::TaskList { .. } => 26,
            MetaRequest::TaskShow { .. } => 27,
            MetaRequest::TaskReport { .. } => 28,
            MetaRequest::TaskCancel { .. } => 29,
            MetaRequest::TaskClaim => 30,
            MetaRequest::TaskUpdate { .. } => 31,
            MetaRequest::Closed { .. } => 32,
            MetaRequest::Release { .. } => 33,
            MetaRequest::KeysLinked { .. } => 34,
            MetaRequest::HsmSet { .. } => 35,
            MetaRequest::Stat { .. } => 36,
            MetaRequest::Symlink { .. } => 37,
            MetaRequest::ImportSymlink { .. } => 38,
            MetaRequest::Link { .. } => 39,
            MetaRequest::SetTimes { .. } => 40,
        }
    }

    /// Appends the request, made by `cred`, to `out`.
    pub fn encode(&self, cred: &Cred, out: &mut Vec<u8>) {
        out.push(self.code());
        cred.encode(out);
        match self {
            MetaRequest::Lookup { path }
            | MetaRequest::Stat { path }
            | MetaRequest::Unlink { path }
            | MetaRequest::Rmdir { path } => {
                Writer::new(out).str(path);
            }
            MetaRequest::Symlink { path, target } => {
                Writer::new(out).str(path).str(target);
            }
            MetaRequest::ImportSymlink { file, target } => {
                file.encode(out);
                Writer::new(out).str(target);
            }
            MetaRequest::Mkdir { path, mode } | MetaRequest::Chmod { path, mode } => {
                Writer::new(out).str(path).u32(*mode);
            }
            MetaRequest::Create {
                path,
                mode,
                exclusive,
                layout,
            } => {
                Writer::new(out)
                    .str(path)
                    .u32(*mode)
                    .u8(u8::from(*exclusive));
                put_opt_spec(out, layout.as_ref());
            }
            MetaRequest::Open { path, access } => {
                Writer::new(out).str(path).u8(access.to_u8());
            }
            MetaRequest::Readdir { path, after, max } => {
                let mut w = Writer::new(out);
                w.str(path);
                match after {
                    Some(a) => w.u8(1).str(a),
                    None => w.u8(0),
                };
                w.u32(*max);
            }
            MetaRequest::Rename { from, to } | MetaRequest::Link { from, to } => {
                Writer::new(out).str(from).str(to);
            }
            MetaRequest::SetTimes {
                path,
                atime,
                mtime,
                follow,
            } => {
                Writer::new(out).str(path);
                atime.encode(out);
                mtime.encode(out);
                out.push(u8::from(*follow));
            }
            MetaRequest::SetDefaultLayout { path, spec } => {
                Writer::new(out).str(path);
                put_opt_spec(out, spec.as_ref());
            }
            MetaRequest::SetLayoutOnNewFile { path, spec, mode } => {
                Writer::new(out).str(path).u32(*mode);
                spec.encode(out);
            }
            MetaRequest::Chown {
                path,
                uid,
                gid,
                follow,
            } => {
                let mut w = Writer::new(out);
                w.str(path);
                put_opt_u32(&mut w, *uid);
                put_opt_u32(&mut w, *gid);
                w.u8(u8::from(*follow));
            }
            MetaRequest::RegisterTarget { info, filesystem } => {
                info.encode(out);
                match filesystem {
                    Some(fs) => Writer::new(out).u8(1).str(fs),
                    None => Writer::new(out).u8(0),
                };
            }
            MetaRequest::Usage {
                target_id,
                capacity_bytes,
                free_bytes,
            } => {
                Writer::new(out)
                    .u32(*target_id)
                    .u64(*capacity_bytes)
                    .u64(*free_bytes);
            }
            MetaRequest::Targets { after } => put_opt_u32(&mut Writer::new(out), *after),
            MetaRequest::Statfs | MetaRequest::RepoList => {}
            MetaRequest::RepoLink { assoc } => assoc.encode(out),
            MetaRequest::RepoUnlink { path } | MetaRequest::HsmState { path } => {
                Writer::new(out).str(path);
            }
            MetaRequest::RepoSetState {
                path,
                state,
                reason,
            } => {
                Writer::new(out).str(path).u8(state.code()).str(reason);
            }
            MetaRequest::ImportFile { file } => file.encode(out),
            MetaRequest::Hydrate {
                path,
                ino,
                offset,
                len,
            } => {
                Writer::new(out).str(path).u64(*ino).u64(*offset).u64(*len);
            }
            MetaRequest::Archived {
                path,
                repo,
                key,
                etag,
                size,
            } => {
                Writer::new(out)
                    .str(path)
                    .u32(*repo)
                    .str(key)
                    .str(etag)
                    .u64(*size);
            }
            MetaRequest::TaskCreate { kind, paths } => {
                crate::meta::task::encode_new(*kind, paths, out)
            }
            MetaRequest::TaskList { after: id }
            | MetaRequest::TaskShow { id }
            | MetaRequest::TaskCancel { id } => {
                Writer::new(out).u64(*id);
            }
            MetaRequest::TaskReport { id, from } => {
                Writer::new(out).u64(*id).u32(*from);
            }
            MetaRequest::TaskClaim => {}
            MetaRequest::Closed {
                path,
                ino,
                instance,
                wrote,
            } => {
                Writer::new(out)
                    .str(path)
                    .u64(*ino)
                    .u64(*instance)
                    .u8(u8::from(*wrote));
            }
            MetaRequest::Release { path, idle_days } => {
                Writer::new(out).str(path).u32(*idle_days);
            }
            MetaRequest::HsmSet { path, set, clear } => {
                Writer::new(out).str(path).u32(*set).u32(*clear);
            }
            MetaRequest::KeysLinked { repo, keys } => {
                let mut w = Writer::new(out);
                w.u32(*repo).u32(keys.len() as u32);
                for k in keys {
                    w.str(k);
                }
            }
            MetaRequest::TaskUpdate {
                id,
                counts,
                failures,
                end,
            } => {
                Writer::new(out).u64(*id);
                counts.encode(out);
                Writer::new(out).u32(failures.len() as u32);
                for f in failures {
                    f.encode(out);
                }
                match end {
                    Some(end) => {
                        out.push(1);
                        end.state.encode(out);
                        Writer::new(out)
                            .str(crate::meta::task::cut(&end.message, MAX_TASK_MESSAGE_BYTES));
                    }
                    None => out.push(0),
                }
            }
        }
    }

    /// Takes a request and its caller's credentials from a message body.
    pub fn decode(body: &[u8]) -> Result<(Cred, MetaRequest), CodecError> {
        let mut r = Reader::new(body, RECORD);
        let code = r.u8("operation")?;
        let cred = Cred::decode(&mut r)?;
        let request = match code {
            1 => MetaRequest::Lookup {
                path: get_path(&mut r, "path")?,
            },
            2 => MetaRequest::Mkdir {
                path: get_path(&mut r, "path")?,
                mode: r.u32("mode")?,
            },
            3 => MetaRequest::Create {
                path: get_path(&mut r, "path")?,
                mode: r.u32("mode")?,
                exclusive: get_flag(&mut r, "exclusive")?,
                layout: get_opt_spec(&mut r)?,
            },
            4 => {
                let path = get_path(&mut r, "path")?;
                let access = Access::decode(&mut r)?;
                MetaRequest::Open { path, access }
            }
            5 => MetaRequest::Readdir {
                path: get_path(&mut r, "path")?,
                after: if get_flag(&mut r, "has_after")? {
                    Some(get_path(&mut r, "after")?)
                } else {
                    None
                },
                max: r.u32("max")?,
            },
            6 => MetaRequest::Unlink {
                path: get_path(&mut r, "path")?,
            },
            7 => MetaRequest::Rmdir {
                path: get_path(&mut r, "path")?,
            },
            8 => MetaRequest::Rename {
                from: get_path(&mut r, "from")?,
                to: get_path(&mut r, "to")?,
            },
            9 => MetaRequest::SetDefaultLayout {
                path: get_path(&mut r, "path")?,
                spec: get_opt_spec(&mut r)?,
            },
            10 => MetaRequest::SetLayoutOnNewFile {
                path: get_path(&mut r, "path")?,
                mode: r.u32("mode")?,
                spec: LayoutSpec::decode(&mut r)?,
            },
            11 => MetaRequest::Chmod {
                path: get_path(&mut r, "path")?,
                mode: r.u32("mode")?,
            },
            12 => MetaRequest::Chown {
                path: get_path(&mut r, "path")?,
                uid: get_opt_u32(&mut r, "uid")?,
                gid: get_opt_u32(&mut r, "gid")?,
                follow: get_flag(&mut r, "follow")?,
            },
            13 => MetaRequest::RegisterTarget {
                info: TargetInfo::decode(&mut r)?,
                filesystem: if get_flag(&mut r, "filesystem")? {
                    Some(r.str("filesystem", MAX_TARGET_UUID_BYTES)?.to_string())
                } else {
                    None
                },
            },
            14 => MetaRequest::Usage {
                target_id: r.u32("target_id")?,
                capacity_bytes: r.u64("capacity_bytes")?,
                free_bytes: r.u64("free_bytes")?,
            },
            15 => MetaRequest::Targets {
                after: get_opt_u32(&mut r, "after")?,
            },
            16 => MetaRequest::Statfs,
            17 => MetaRequest::RepoLink {
                assoc: Association::decode(&mut r)?,
            },
            18 => MetaRequest::RepoList,
            19 => MetaRequest::RepoUnlink {
                path: get_path(&mut r, "path")?,
            },
            20 => MetaRequest::RepoSetState {
                path: get_path(&mut r, "path")?,
                state: AssocState::read(&mut r)?,
                reason: r.str("reason", MAX_REPO_URL_BYTES)?.to_owned(),
            },
            21 => MetaRequest::ImportFile {
                file: ImportedFile::decode(&mut r)?,
            },
            22 => MetaRequest::HsmState {
                path: get_path(&mut r, "path")?,
            },
            23 => MetaRequest::Hydrate {
                path: get_path(&mut r, "path")?,
                ino: r.u64("ino")?,
                offset: r.u64("offset")?,
                len: r.u64("len")?,
            },
            24 => MetaRequest::Archived {
                path: get_path(&mut r, "path")?,
                repo: r.u32("repo")?,
                key: r.str("key", MAX_S3_KEY_BYTES)?.to_owned(),
                etag: r.str("etag", MAX_ETAG_BYTES)?.to_owned(),
                size: r.u64("size")?,
            },
            25 => {
                let (kind, paths) = crate::meta::task::decode_new(&mut r)?;
                MetaRequest::TaskCreate { kind, paths }
            }
            26 => MetaRequest::TaskList {
                after: r.u64("after")?,
            },
            27 => MetaRequest::TaskShow { id: r.u64("id")? },
            28 => MetaRequest::TaskReport {
                id: r.u64("id")?,
                from: r.u32("from")?,
            },
            29 => MetaRequest::TaskCancel { id: r.u64("id")? },
            30 => MetaRequest::TaskClaim,
            31 => {
                let id = r.u64("id")?;
                let counts = TaskCounts::decode(&mut r)?;
                let n = r.count("failures", MAX_TASK_REPORT_LINES as usize, 12)?;
                let mut failures = Vec::with_capacity(n);
                for _ in 0..n {
                    failures.push(TaskFailure::decode(&mut r)?);
                }
                let end = if get_flag(&mut r, "end")? {
                    Some(TaskEnd {
                        state: TaskState::decode(&mut r)?,
                        message: r.str("message", MAX_TASK_MESSAGE_BYTES)?.to_owned(),
                    })
                } else {
                    None
                };
                MetaRequest::TaskUpdate {
                    id,
                    counts,
                    failures,
                    end,
                }
            }
            32 => MetaRequest::Closed {
                path: get_path(&mut r, "path")?,
                ino: r.u64("ino")?,
                instance: r.u64("instance")?,
                wrote: get_flag(&mut r, "wrote")?,
            },
            33 => MetaRequest::Release {
                path: get_path(&mut r, "path")?,
                idle_days: crate::meta::task::idle_days(&mut r)?,
            },
            34 => {
                let repo = r.u32("repo")?;
                let n = r.count("keys", crate::limits::MAX_TASK_PATHS, 4)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.str("key", MAX_S3_KEY_BYTES)?.to_owned());
                }
                MetaRequest::KeysLinked { repo, keys }
            }
            35 => MetaRequest::HsmSet {
                path: get_path(&mut r, "path")?,
                set: r.u32("set")?,
                clear: r.u32("clear")?,
            },
            36 => MetaRequest::Stat {
                path: get_path(&mut r, "path")?,
            },
            37 => MetaRequest::Symlink {
                path: get_path(&mut r, "path")?,
                target: get_path(&mut r, "target")?,
            },
            38 => MetaRequest::ImportSymlink {
                file: ImportedFile::decode(&mut r)?,
                target: get_path(&mut r, "target")?,
            },
            39 => MetaRequest::Link {
                from: get_path(&mut r, "from")?,
                to: get_path(&mut r, "to")?,
            },
            40 => MetaRequest::SetTimes {
                path: get_path(&mut r, "path")?,
                atime: TimeSet::decode(&mut r)?,
                mtime: TimeSet::decode(&mut r)?,
                follow: get_flag(&mut r, "follow")?,
            },
            other => return Err(r.bad_value("operation", u64::from(other), "1 to 40")),
        };
        r.finish()?;
        Ok((cred, request))
    }
}
