//! Connecting, the namespace (mkdir, unlink, rename, stat, readdir) and registering memory.

use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::meta::types::{DirEntry, FileType, TimeSet};
use engine::{Client, ClientOptions, Stat};

use crate::boundary::{
    Failure, check_buffer, check_out, copy_c_string, path_arg, run_int, str_arg,
};
use crate::handle::{self, Object};
use crate::limits::{
    NACRE_DT_DIR, NACRE_DT_LNK, NACRE_DT_REG, NACRE_NAME_BUF, NACRE_PATH_MAX, NACRE_UTIME_NOFOLLOW,
    NACRE_UTIME_NOW, NACRE_UTIME_OMIT,
};

/// A connection to a Nacre file system (opaque).
pub struct nacre_client {
    _opaque: [u8; 0],
}

/// An open directory listing (opaque).
pub struct nacre_dir {
    _opaque: [u8; 0],
}

/// Memory registered for zero-copy bulk (opaque).
pub struct nacre_mem {
    _opaque: [u8; 0],
}

/// Options for `nacre_connect_ex`; a field left 0 takes its default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nacre_options {
    /// How long connecting, and each request, may take (default 30000 ms).
    pub timeout_ms: u32,
    /// Connections kept to each target for requests without bulk and for transfers over
    /// RDMA, so that several threads' requests travel in parallel (default 4, at most 64).
    /// Reads and writes over TCP run on the client's call queues instead: a connection
    /// per target for each call in progress.
    pub connections_per_target: u32,
    /// Threads an asynchronous queue runs its operations on (default 8).
    pub progress_threads: u32,
    /// Room for options of later versions: must be zero.
    pub reserved: [u32; 5],
}

/// A path's attributes and size, as `nacre_stat` and `nacre_fstat` fill them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct nacre_attr {
    /// Inode number.
    pub ino: u64,
    /// Bytes: for a file, what its objects imply (Lustre's glimpse); 0 for a directory.
    pub size: u64,
    /// File type (`S_IFREG` or `S_IFDIR`) and permission bits, as `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links.
    pub nlink: u32,
    /// Last access, nanoseconds since the Unix epoch.
    pub atime_ns: i64,
    /// Last change of the contents, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Last change of the attributes, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
}

/// One directory entry, as `nacre_readdir` fills it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct nacre_dirent {
    /// Inode number.
    pub ino: u64,
    /// `NACRE_DT_REG` or `NACRE_DT_DIR`.
    pub file_type: u32,
    /// The name, NUL-terminated.
    pub name: [c_char; NACRE_NAME_BUF],
}

/// What a `nacre_dir` handle holds: the listing taken at open, and how far it was read.
pub(crate) struct DirState {
    entries: Vec<DirEntry>,
    next: Mutex<usize>,
}

/// What a `nacre_mem` handle holds.
pub(crate) struct MemState {
    client: Client,
    id: u64,
}

fn connect(
    name: &str,
    address: *const c_char,
    options: Result<ClientOptions, Failure>,
    out: *mut *mut nacre_client,
) -> c_int {
    run_int(name, || {
        let options = options?;
        check_out(out, "out")?;
        // SAFETY: the header's contract: a NUL-terminated string.
        let address = unsafe { str_arg(address, "address", NACRE_PATH_MAX) }?;
        let client = Client::connect_with(address, options)?;
        // SAFETY: `out` is not NULL and, by the header's contract, points to a handle.
        unsafe { *out = handle::insert(Object::Client(client)) };
        Ok(0)
    })
}

/// Connects to the metadata service at `address` (`host:port`, or `tcp://`, `rdma://` or
/// `auto://host:port`; a bare `host:port` means `auto`, which picks RDMA when a device
/// reaches the service and TCP otherwise) as the calling process's uid, gid and groups, and
/// stores the client in `*out`. Returns 0, or a negative errno (`-ECONNREFUSED`,
/// `-ETIMEDOUT` when nothing answers within the timeout, `-EINVAL` for a malformed address).
///
/// Thread safety: safe from any thread; the client may then be used by every thread at once.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_connect(address: *const c_char, out: *mut *mut nacre_client) -> c_int {
    connect("nacre_connect", address, Ok(ClientOptions::default()), out)
}

/// `nacre_connect` with options (`options` may be NULL: every default).
///
/// Thread safety: as `nacre_connect`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_connect_ex(
    address: *const c_char,
    options: *const nacre_options,
    out: *mut *mut nacre_client,
) -> c_int {
    let chosen = if options.is_null() {
        Ok(ClientOptions::default())
    } else {
        // SAFETY: not NULL, and by the header's contract a nacre_options the caller owns.
        client_options(unsafe { &*options })
    };
    connect("nacre_connect_ex", address, chosen, out)
}

/// The engine's options from C's (0: the default).
fn client_options(o: &nacre_options) -> Result<ClientOptions, Failure> {
    if o.reserved.iter().any(|&r| r != 0) {
        return Err(Failure::invalid(
            "nacre_options.reserved",
            "zeros (set the struct to {0} before filling it)",
        ));
    }
    let mut chosen = ClientOptions::default();
    if o.timeout_ms != 0 {
        chosen.timeout = Duration::from_millis(u64::from(o.timeout_ms));
    }
    if o.connections_per_target != 0 {
        chosen.connections_per_target = o.connections_per_target as usize;
    }
    if o.progress_threads != 0 {
        chosen.progress_threads = o.progress_threads as usize;
    }
    Ok(chosen)
}

/// Closes the client handle. Files, queues, listings and registrations opened through it
/// stay usable until they are closed themselves (they share its connections). Returns 0,
/// or `-EBADF` for a handle that is not an open client.
///
/// Thread safety: safe from any thread; calls already running on the handle in other
/// threads finish normally, later ones get `-EBADF`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_disconnect(client: *mut nacre_client) -> c_int {
    run_int("nacre_disconnect", || {
        handle::remove(client, "client", |o| matches!(o, Object::Client(_))).map(|_| 0)
    })
}

/// Runs a namespace call on `client` with one path argument.
fn with_path(
    name: &str,
    client: *mut nacre_client,
    path: *const c_char,
    f: impl FnOnce(&Client, &str) -> Result<(), engine::Error>,
) -> c_int {
    run_int(name, || {
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        f(&c, path)?;
        Ok(0)
    })
}

/// As [`with_path`], for a call of two paths (each with the name its errors give it).
fn with_paths(
    name: &str,
    client: *mut nacre_client,
    (first, first_name): (*const c_char, &str),
    (second, second_name): (*const c_char, &str),
    f: impl FnOnce(&Client, &str, &str) -> Result<(), engine::Error>,
) -> c_int {
    run_int(name, || {
        let c = handle::client(client)?;
        // SAFETY: the header's contract: NUL-terminated paths.
        let (first, second) =
            unsafe { (path_arg(first, first_name)?, path_arg(second, second_name)?) };
        f(&c, first, second)?;
        Ok(0)
    })
}

/// Makes directory `path` with permission bits `mode` less the process's umask. Returns 0, or `-EEXIST`, `-ENOENT`
/// (no parent), `-EACCES`, ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_mkdir(client: *mut nacre_client, path: *const c_char, mode: u32) -> c_int {
    with_path("nacre_mkdir", client, path, |c, p| {
        c.mkdir(p, mode).map(drop)
    })
}

/// Removes the empty directory `path`. Returns 0, or `-ENOTEMPTY`, `-ENOENT`, ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_rmdir(client: *mut nacre_client, path: *const c_char) -> c_int {
    with_path("nacre_rmdir", client, path, Client::rmdir)
}

/// Removes the file `path` and its objects. Handles still open on it keep working on the
/// objects that remain. Returns 0, or `-ENOENT`, `-EISDIR`, `-EACCES`, ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_unlink(client: *mut nacre_client, path: *const c_char) -> c_int {
    with_path("nacre_unlink", client, path, Client::unlink)
}

/// Renames `from` to `to`, replacing a file at `to`. Returns 0 or a negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_rename(
    client: *mut nacre_client,
    from: *const c_char,
    to: *const c_char,
) -> c_int {
    with_paths(
        "nacre_rename",
        client,
        (from, "from"),
        (to, "to"),
        |c, from, to| c.rename(from, to),
    )
}

/// Sets the permission bits (with setuid, setgid and sticky) of `path` to `mode`, as
/// `chmod(2)` (the umask does not apply). Only the owner, or root, may. Returns 0 or a
/// negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_chmod(client: *mut nacre_client, path: *const c_char, mode: u32) -> c_int {
    with_path("nacre_chmod", client, path, |c, p| c.chmod(p, mode))
}

/// Changes the owner and group of `path`, as `chown(2)`: `uid` or `gid` `(uint32_t)-1`
/// leaves that one as it is. Returns 0, or `-EPERM`, ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_chown(
    client: *mut nacre_client,
    path: *const c_char,
    uid: u32,
    gid: u32,
) -> c_int {
    let keep = |id: u32| (id != u32::MAX).then_some(id);
    with_path("nacre_chown", client, path, |c, p| {
        c.chown(p, keep(uid), keep(gid))
    })
}

/// Fills a `nacre_stat` from the engine's attributes.
pub(crate) fn fill_stat(stat: &Stat, out: *mut nacre_attr) {
    let a = &stat.attr;
    let kind = match a.file_type {
        FileType::File => libc::S_IFREG,
        FileType::Dir => libc::S_IFDIR,
        FileType::Symlink => libc::S_IFLNK,
    };
    let filled = nacre_attr {
        ino: a.ino,
        size: stat.size_bytes,
        mode: kind | a.mode,
        uid: a.uid,
        gid: a.gid,
        nlink: a.nlink,
        atime_ns: a.atime_ns,
        mtime_ns: a.mtime_ns,
        ctime_ns: a.ctime_ns,
    };
    // SAFETY: callers check `out` is not NULL; by the header's contract it points to a
    // nacre_attr the caller owns.
    unsafe { *out = filled };
}

/// Fills `*out` with the attributes of what `path` names, a symbolic link at its end
/// followed, as `stat(2)` (a file's size from its objects). Returns 0 or a negative errno
/// (`-ELOOP` past 40 links).
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_stat(
    client: *mut nacre_client,
    path: *const c_char,
    out: *mut nacre_attr,
) -> c_int {
    stat_with("nacre_stat", client, path, out, Client::stat)
}

/// Fills `*out` with the attributes of `path`, a symbolic link at its end not followed, as
/// `lstat(2)` (a link's size is its target's length). Returns 0 or a negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_lstat(
    client: *mut nacre_client,
    path: *const c_char,
    out: *mut nacre_attr,
) -> c_int {
    stat_with("nacre_lstat", client, path, out, Client::lstat)
}

fn stat_with(
    name: &str,
    client: *mut nacre_client,
    path: *const c_char,
    out: *mut nacre_attr,
    stat: impl FnOnce(&Client, &str) -> Result<Stat, engine::Error>,
) -> c_int {
    run_int(name, || {
        check_out(out, "out")?;
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        fill_stat(&stat(&c, path)?, out);
        Ok(0)
    })
}

/// Makes a symbolic link at `path` naming `target` (1 to `NACRE_PATH_MAX - 1` bytes, resolved
/// when the link is followed), as `symlink(2)`. Returns 0, or `-EEXIST`, `-ENOENT` (no
/// parent), `-EACCES`, ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_symlink(
    client: *mut nacre_client,
    target: *const c_char,
    path: *const c_char,
) -> c_int {
    with_paths(
        "nacre_symlink",
        client,
        (target, "target"),
        (path, "path"),
        |c, target, path| c.symlink(target, path).map(drop),
    )
}

/// Makes `to` another name of the file or symbolic link at `from`, as `link(2)` (a link
/// at the end of `from` is linked itself). Returns 0, or `-EEXIST`, `-EPERM` (a directory;
/// or another's file, as Linux's `fs.protected_hardlinks`), `-EXDEV` (under a data
/// repository association), ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_link(
    client: *mut nacre_client,
    from: *const c_char,
    to: *const c_char,
) -> c_int {
    with_paths(
        "nacre_link",
        client,
        (from, "from"),
        (to, "to"),
        |c, from, to| c.link(from, to).map(drop),
    )
}

/// Sets the access and modification times of `path`, nanoseconds since the epoch, or
/// `NACRE_UTIME_NOW` or `NACRE_UTIME_OMIT`, as `utimensat(2)` (`flags`
/// `NACRE_UTIME_NOFOLLOW`: a symbolic link at the end is changed itself). Both now needs the
/// owner or write permission (`-EACCES`); a time given, the owner (`-EPERM`). Returns 0 or a
/// negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_utimens(
    client: *mut nacre_client,
    path: *const c_char,
    atime_ns: i64,
    mtime_ns: i64,
    flags: u32,
) -> c_int {
    run_int("nacre_utimens", || {
        if flags & !NACRE_UTIME_NOFOLLOW != 0 {
            return Err(Failure::invalid(
                &format!("flags {flags:#x}"),
                "0 or NACRE_UTIME_NOFOLLOW",
            ));
        }
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        let set = |ns: i64| match ns {
            NACRE_UTIME_NOW => TimeSet::Now,
            NACRE_UTIME_OMIT => TimeSet::Omit,
            ns => TimeSet::At(ns),
        };
        let follow = flags & NACRE_UTIME_NOFOLLOW == 0;
        c.set_times(path, set(atime_ns), set(mtime_ns), follow)?;
        Ok(0)
    })
}

/// Copies what the symbolic link at `path` names, NUL-terminated, into `buf` of `len`
/// bytes and returns its length. Unlike `readlink(2)` nothing is cut: `-ERANGE` when `len`
/// is too small (`NACRE_PATH_MAX + 1` always holds it), `-EINVAL` when `path` is not a
/// link, or another negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_readlink(
    client: *mut nacre_client,
    path: *const c_char,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    run_int("nacre_readlink", || {
        check_out(buf, "buf")?;
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        let target = c.readlink(path)?;
        if target.len() >= len {
            return Err(Failure {
                errno: libc::ERANGE,
                message: format!(
                    "a buffer of {len} bytes cannot hold the {} bytes {path} names and a NUL",
                    target.len()
                ),
            });
        }
        // SAFETY: `buf` holds `len` > target.len() bytes by the header's contract.
        unsafe { copy_c_string(&target, buf) };
        Ok(target.len() as i64)
    })
}

/// Lustre's `HS_EXISTS`: the file has a copy in its data repository (`nacre_hsm_state`).
pub const NACRE_HS_EXISTS: u32 = 0x1;
/// Lustre's `HS_DIRTY`: the file changed since its copy was made.
pub const NACRE_HS_DIRTY: u32 = 0x2;
/// Lustre's `HS_RELEASED`: some of the file's data is only in its repository (read on
/// demand).
pub const NACRE_HS_RELEASED: u32 = 0x4;
/// Lustre's `HS_ARCHIVED`: the repository's copy is complete.
pub const NACRE_HS_ARCHIVED: u32 = 0x8;
/// Lustre's `HS_NORELEASE`: the file is never released.
pub const NACRE_HS_NORELEASE: u32 = 0x10;
/// Lustre's `HS_LOST`: the repository's copy changed or went away since the import.
pub const NACRE_HS_LOST: u32 = 0x40;

// The engine's values (Lustre's), spelled out for the header.
const _: () = assert!(
    NACRE_HS_EXISTS == engine::meta::repo::HS_EXISTS
        && NACRE_HS_DIRTY == engine::meta::repo::HS_DIRTY
        && NACRE_HS_RELEASED == engine::meta::repo::HS_RELEASED
        && NACRE_HS_ARCHIVED == engine::meta::repo::HS_ARCHIVED
        && NACRE_HS_NORELEASE == engine::meta::repo::HS_NORELEASE
        && NACRE_HS_LOST == engine::meta::repo::HS_LOST
);

/// Stores in `*flags` the HSM flags of `path` (`NACRE_HS_*`, Lustre's values, as
/// `llapi_hsm_state_get`; 0 for a file never imported from a data repository). Returns 0
/// or a negative errno.
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_hsm_state(
    client: *mut nacre_client,
    path: *const c_char,
    flags: *mut u32,
) -> c_int {
    run_int("nacre_hsm_state", || {
        check_out(flags, "flags")?;
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        let (state, _) = c.hsm_state(path)?;
        // SAFETY: checked not NULL above; by the header's contract it points to a uint32_t
        // the caller owns.
        unsafe { *flags = state };
        Ok(0)
    })
}

/// Lists directory `path` (every entry at the time of the call, in name order) and stores
/// the listing in `*out`, to be read with `nacre_readdir` and freed with `nacre_closedir`.
/// Returns 0, or `-ENOTDIR`, `-ENOENT`, ...
///
/// Thread safety: safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_opendir(
    client: *mut nacre_client,
    path: *const c_char,
    out: *mut *mut nacre_dir,
) -> c_int {
    run_int("nacre_opendir", || {
        check_out(out, "out")?;
        let c = handle::client(client)?;
        // SAFETY: the header's contract: a NUL-terminated path.
        let path = unsafe { path_arg(path, "path") }?;
        let entries = c.readdir(path)?;
        let state = Arc::new(DirState {
            entries,
            next: Mutex::new(0),
        });
        // SAFETY: `out` is not NULL and, by the header's contract, points to a handle.
        unsafe { *out = handle::insert(Object::Dir(state)) };
        Ok(0)
    })
}

/// Fills `*entry` with the listing's next entry: returns 1 when it did, 0 at the end, or a
/// negative errno.
///
/// Thread safety: safe from any thread; threads reading one listing at once each get
/// different entries.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_readdir(dir: *mut nacre_dir, entry: *mut nacre_dirent) -> c_int {
    run_int("nacre_readdir", || {
        check_out(entry, "entry")?;
        let Some(Object::Dir(state)) = handle::get(dir) else {
            return Err(Failure::bad_handle("directory listing"));
        };
        let mut next = state.next.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = state.entries.get(*next) else {
            return Ok(0);
        };
        *next += 1;
        let mut filled = nacre_dirent {
            ino: e.ino,
            file_type: match e.file_type {
                FileType::File => NACRE_DT_REG,
                FileType::Dir => NACRE_DT_DIR,
                FileType::Symlink => NACRE_DT_LNK,
            },
            name: [0; NACRE_NAME_BUF],
        };
        // Names are at most NACRE_NAME_MAX bytes (the service checks); the last byte stays
        // the NUL whatever a name holds.
        for (to, &from) in filled.name[..NACRE_NAME_BUF - 1]
            .iter_mut()
            .zip(e.name.as_bytes())
        {
            *to = from as c_char;
        }
        // SAFETY: not NULL; by the header's contract a nacre_dirent the caller owns.
        unsafe { *entry = filled };
        Ok(1)
    })
}

/// Frees a listing. Returns 0, or `-EBADF`.
///
/// Thread safety: safe from any thread; other threads' later calls on it get `-EBADF`.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_closedir(dir: *mut nacre_dir) -> c_int {
    run_int("nacre_closedir", || {
        handle::remove(dir, "directory listing", |o| matches!(o, Object::Dir(_))).map(|_| 0)
    })
}

/// Registers `[buf, buf + len)` for zero-copy transfers with every target of the client
/// and stores the registration in `*out`. Over RDMA, reads into and writes from registered
/// memory move with no copy (the target's RDMA WRITE and READ reach it directly); other
/// memory is staged through a connection's buffer. Over TCP bulk always moves straight
/// between the socket and the caller's memory, and registering costs nothing. The memory
/// must stay allocated until `nacre_mem_unregister` returns. Returns 0, or `-EINVAL` (NULL,
/// zero or over 2 GiB), or the error of a target that refused it.
///
/// Thread safety: safe from any thread, also while other threads move bytes.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_mem_register(
    client: *mut nacre_client,
    buf: *mut c_void,
    len: usize,
    out: *mut *mut nacre_mem,
) -> c_int {
    run_int("nacre_mem_register", || {
        check_out(out, "out")?;
        let c = handle::client(client)?;
        check_buffer(buf.cast(), len, "buf")?;
        // SAFETY: the header's contract: the memory stays allocated until it is
        // unregistered; the engine checks the length against what one registration spans.
        let id = unsafe { c.register_memory(buf.cast(), len) }?;
        let state = Arc::new(MemState { client: c, id });
        // SAFETY: `out` is not NULL and, by the header's contract, points to a handle.
        unsafe { *out = handle::insert(Object::Mem(state)) };
        Ok(0)
    })
}

/// Drops a registration; once this returns, the memory may be freed. Returns 0, or
/// `-EBADF`.
///
/// Thread safety: safe from any thread, but no call naming the memory may be in progress.
#[unsafe(no_mangle)]
pub extern "C" fn nacre_mem_unregister(mem: *mut nacre_mem) -> c_int {
    run_int("nacre_mem_unregister", || {
        let Object::Mem(state) =
            handle::remove(mem, "memory registration", |o| matches!(o, Object::Mem(_)))?
        else {
            return Err(Failure::bad_handle("memory registration"));
        };
        state.client.unregister_memory(state.id)?;
        Ok(0)
    })
}
