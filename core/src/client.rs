//! The striped client: the namespace through the metadata service, and file bytes straight
//! between the caller's memory and the targets.
//!
//! A read or write of a range is split by the file's layout into object extents; the
//! extents of each target go in one request (several when they exceed a message's limits),
//! and the requests to every target are all sent before any reply is awaited, so the
//! targets work in parallel. Over TCP the blocking calls are a thin layer over the
//! asynchronous [`Queue`]: each submits its one operation to a queue of the
//! client's (kept for the next call) and waits for it, so a read's reply payload lands
//! straight in the caller's buffer and a write's payload leaves straight from it, with the
//! queue's framing, pipelining and timeouts. Over RDMA, where a connection carries one call
//! at a time, each target's calls run on a thread of their own, and bulk moves straight
//! between the caller's memory and the target when it is registered with
//! [`Client::register_memory`].
//!
//! The size of a file is not kept by the metadata service: it is derived from the sizes of
//! its objects through the layout (Lustre's glimpse), so writers on several clients agree.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nacre_layout::{
    Layout, LayoutObject, MemoryMap, ObjectExtent, ObjectSize, RequestBounds, plan_requests,
};
use nacre_transport::client::{Bulk, ConnectOptions, Kind, Peer};
use nacre_transport::limits::{MAX_EXTENTS_PER_REQUEST, MAX_PAYLOAD_BYTES, REQUEST_TIMEOUT_MS};
use nacre_transport::wire::{Extent, Opcode, encode_extents};
use nacre_transport::{Endpoint, Span, TransportError};

use crate::codec::{CodecError, Reader};
use crate::error::Error;
use crate::limits::{
    HYDRATE_REQUEST_BYTES, MAX_FILE_BYTES, MAX_IDLE_CALL_QUEUES, MAX_REGISTER_BYTES,
    MAX_REGISTRATIONS, MAX_TARGETS_PER_SERVER, OBJECT_ONLY_LEN,
};
use crate::meta::link::MetaLink;
use crate::meta::proto::MetaRequest;
use crate::meta::repo::HS_RELEASED;
use crate::meta::types::{
    Access, Attr, Cred, DirEntry, LayoutSpec, MAX_ENDPOINT_BYTES, MAX_READDIR_ENTRIES, TargetInfo,
    TimeSet,
};
use crate::queue::Queue;

mod repo;
mod task;

/// How a client connects and who it acts as.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The identity permission checks use (by default the process's uid, gid and groups).
    pub cred: Cred,
    /// Connections kept to each target for requests without bulk (sync, stat, truncate)
    /// and for transfers over RDMA; requests from several threads travel in parallel.
    /// Reads and writes over TCP run on the client's call queues instead (decision 0012).
    pub connections_per_target: usize,
    /// How long connecting, and each request, may take.
    pub timeout: Duration,
    /// Threads an asynchronous [`Queue`] runs syncs, and transfers over RDMA, on (its TCP
    /// transfers need none).
    pub progress_threads: usize,
    /// Permission bits cleared from the mode of every file and directory this client
    /// creates, as the kernel applies a process's umask (by default the process's umask
    /// when the options are made).
    pub umask: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cred: current_cred(),
            connections_per_target: nacre_transport::limits::DEFAULT_CONNECTIONS_PER_PEER,
            timeout: Duration::from_millis(REQUEST_TIMEOUT_MS),
            progress_threads: crate::limits::DEFAULT_PROGRESS_THREADS,
            umask: current_umask(),
        }
    }
}

/// The process's umask, read from /proc/self/status (reading it with umask(2) would change
/// it for a moment under other threads); the common 022 when it cannot be read.
pub fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(DEFAULT_UMASK)
}

/// The calling process's identity.
pub fn current_cred() -> Cred {
    use rustix::process::{getgid, getgroups, getuid};
    // The metadata service takes at most MAX_GROUPS groups: the first of them.
    let groups = getgroups()
        .unwrap_or_default()
        .into_iter()
        .take(crate::meta::types::MAX_GROUPS)
        .map(|g| g.as_raw())
        .collect();
    Cred {
        uid: getuid().as_raw(),
        gid: getgid().as_raw(),
        groups,
    }
}

/// A file's attributes with the size its objects imply.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// What the metadata service keeps.
    pub attr: Attr,
    /// Bytes: for a file, derived from its objects; 0 for a directory.
    pub size_bytes: u64,
}

/// A target's use as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveUsage {
    /// Size of the file system under the target.
    pub capacity_bytes: u64,
    /// Bytes free for the target.
    pub available_bytes: u64,
    /// Bytes used.
    pub used_bytes: u64,
}

/// One line of `nacre df`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUsage {
    /// The target.
    pub target_id: u32,
    /// Its uuid.
    pub uuid: String,
    /// Where it is served.
    pub endpoint: String,
    /// Its pools.
    pub pools: Vec<String>,
    /// Its use, if it answered.
    pub live: Option<LiveUsage>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// How to open a file, as `open(2)`'s flags say it.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    exclusive: bool,
    truncate: bool,
    mode: Option<u32>,
    layout: Option<LayoutSpec>,
}

/// Permission bits of a file created without a mode.
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// The umask when the process's cannot be read.
pub const DEFAULT_UMASK: u32 = 0o022;

impl OpenOptions {
    /// Nothing asked yet.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// From `open(2)` flags (O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC) and mode.
    pub fn from_flags(flags: i32, mode: u32) -> Result<OpenOptions, Error> {
        let known = libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC;
        if flags & !known & !(libc::O_CLOEXEC | libc::O_DIRECT | libc::O_LARGEFILE) != 0 {
            return Err(Error::Invalid {
                field: "flags",
                value: format!("{flags:#o}"),
                allowed: "O_RDONLY, O_WRONLY or O_RDWR with O_CREAT, O_EXCL, O_TRUNC".into(),
            });
        }
        let (read, write) = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => (true, false),
            libc::O_WRONLY => (false, true),
            libc::O_RDWR => (true, true),
            other => {
                return Err(Error::Invalid {
                    field: "flags",
                    value: format!("access mode {other}"),
                    allowed: "O_RDONLY, O_WRONLY or O_RDWR".into(),
                });
            }
        };
        Ok(OpenOptions {
            read,
            write,
            create: flags & libc::O_CREAT != 0,
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
            mode: Some(mode),
            layout: None,
        })
    }

    /// Open for reading.
    pub fn read(mut self, on: bool) -> Self {
        self.read = on;
        self
    }
    /// Open for writing.
    pub fn write(mut self, on: bool) -> Self {
        self.write = on;
        self
    }
    /// Create the file if it does not exist.
    pub fn create(mut self, on: bool) -> Self {
        self.create = on;
        self
    }
    /// With create: fail if it exists.
    pub fn exclusive(mut self, on: bool) -> Self {
        self.exclusive = on;
        self
    }
    /// Cut the file to 0 bytes (needs write).
    pub fn truncate(mut self, on: bool) -> Self {
        self.truncate = on;
        self
    }
    /// Permission bits of a created file.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }
    /// Layout of a created file (else its directory's default).
    pub fn layout(mut self, layout: LayoutSpec) -> Self {
        self.layout = Some(layout);
        self
    }

    fn access(&self) -> Result<Access, Error> {
        match (self.read, self.write) {
            (true, false) => Ok(Access::Read),
            (false, true) => Ok(Access::Write),
            (true, true) => Ok(Access::ReadWrite),
            (false, false) => Err(Error::Invalid {
                field: "access",
                value: "neither read nor write".into(),
                allowed: "read, write or both".into(),
            }),
        }
    }
}

/// A connection to a Nacre file system. Cheap to clone; every clone shares connections.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    meta: MetaLink,
    options: ClientOptions,
    targets: RwLock<HashMap<u32, Arc<TargetLink>>>,
    /// Caller memory registered for bulk: id, address, length. Every target's pool of
    /// connections carries each of them (see [`Client::register_memory`]).
    registrations: Mutex<Vec<(u64, usize, usize)>>,
    next_registration_id: AtomicU64,
    /// Queues of depth 1 the blocking reads and writes run on, idle (at most
    /// [`MAX_IDLE_CALL_QUEUES`]); a call takes one, or opens one if none is idle.
    call_queues: Mutex<Vec<Queue>>,
}

/// A registered target and the pool of connections to it.
#[derive(Debug)]
pub(crate) struct TargetLink {
    pub(crate) target_id: u32,
    pub(crate) peer: Peer,
    /// A connection to it turned out to be RDMA: queues hand its transfers to threads
    /// without connecting first.
    pub(crate) over_rdma: AtomicBool,
}

impl TargetLink {
    /// A transport failure on the way to this target, as the caller sees it.
    pub(crate) fn fail(&self, source: TransportError) -> Error {
        Error::Target {
            target_id: self.target_id,
            endpoint: self.peer.endpoint().to_string(),
            source,
        }
    }

    /// Asks the server `conn` reaches (a connection to this target) which it is and which
    /// targets it serves: its instance, and each target's id and registered endpoint.
    pub(crate) fn served(
        &self,
        conn: &mut nacre_transport::client::Connection,
    ) -> Result<(u64, Vec<(u32, Endpoint)>), Error> {
        let body = self.call_plain(conn, Opcode::Targets, "targets")?;
        let mut r = Reader::new(&body, "targets reply");
        let decoded = (|| {
            let instance = r.u64("instance")?;
            let n = r.count("targets", MAX_TARGETS_PER_SERVER, 8)?;
            let mut served = Vec::with_capacity(n);
            for _ in 0..n {
                let id = r.u32("target_id")?;
                let endpoint = r.str("endpoint", MAX_ENDPOINT_BYTES)?;
                served.push((id, endpoint));
            }
            r.finish()?;
            Ok((instance, served))
        })();
        let (instance, listed) = decoded.map_err(|source| Error::Codec {
            from: format!("target {}", self.target_id),
            source,
        })?;
        // An endpoint that does not parse names no target this client reaches.
        let served = listed
            .into_iter()
            .filter_map(|(id, e)| Endpoint::parse(e).ok().map(|e| (id, e)))
            .collect();
        Ok((instance, served))
    }

    /// A call with no body and no payload on `conn` (a connection to this target): the
    /// reply's body, or its failure or error reply as the caller sees it.
    fn call_plain(
        &self,
        conn: &mut nacre_transport::client::Connection,
        opcode: Opcode,
        op: &'static str,
    ) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        let reply = conn
            .call(opcode, &[], Bulk::None, &mut body)
            .map_err(|e| self.fail(e))?;
        if reply.status != 0 {
            return Err(self.reply_error(op, reply.status, &body));
        }
        Ok(body)
    }

    /// The target's error reply to `op`, as the caller sees it.
    pub(crate) fn reply_error(&self, op: &'static str, status: i32, body: &[u8]) -> Error {
        let message = String::from_utf8_lossy(body).into_owned();
        Error::TargetReply {
            target_id: self.target_id,
            endpoint: self.peer.endpoint().to_string(),
            op,
            errno: status,
            message: if message.is_empty() {
                crate::error::errno_text(status)
            } else {
                message
            },
        }
    }
}

/// An open file. Cheap to clone; clones share the handle, and every method may be called
/// from several threads at once.
#[derive(Debug, Clone)]
pub struct File {
    inner: Arc<FileInner>,
}

#[derive(Debug)]
struct FileInner {
    client: Client,
    path: String,
    attr: Attr,
    layout: Layout,
    access: Access,
    /// The HSM flags of a file imported from a data repository (0 otherwise), as last
    /// heard: while [`HS_RELEASED`] is set, ranges are made present before they are read
    /// or written.
    hsm: AtomicU32,
    /// The repository mover's own handle: it writes released chunks, and never asks for
    /// them to be fetched.
    mover: bool,
    /// Tell the metadata service when the last clone of the handle goes (a file under a data
    /// repository association: its open handles are counted; one opened for writing is
    /// dirty again, and may be exported), naming the service's start that counted it.
    notify_close: Option<u64>,
}

impl Drop for FileInner {
    /// The last clone of a handle that the metadata service asked to hear of is gone: it is
    /// told (best effort: a client killed first does not tell; the file keeps the dirty
    /// flag its open set, so the next export takes it, and counts as open until the
    /// service restarts, so it is not released).
    fn drop(&mut self) {
        if let Some(instance) = self.notify_close {
            let path = std::mem::take(&mut self.path);
            let wrote = self.access != Access::Read;
            self.client
                .closed_notice(path, self.attr.ino, instance, wrote);
        }
    }
}

/// One request of a read or write planned for the asynchronous queue: the target, the
/// encoded extents, each extent's length, and the caller's memory the bytes move through,
/// in order.
pub(crate) struct Planned {
    pub(crate) link: Arc<TargetLink>,
    pub(crate) body: Vec<u8>,
    pub(crate) extent_lens: Vec<u64>,
    pub(crate) memory: Vec<Span>,
}

/// Whether a read reply's body says every extent came back whole.
pub(crate) fn extents_whole(extent_lens: &[u64], body: &[u8]) -> bool {
    extent_lens
        .iter()
        .enumerate()
        .all(|(i, &len)| u64_at(body, i) == Some(len))
}

/// One request to one target: its extents (in request order) and where each extent's bytes
/// are in the caller's memory.
struct Batch {
    target_id: u32,
    extents: Vec<Extent>,
    /// The pieces of the caller's memory its extents' bytes are in, extent after extent.
    memory: Vec<Span>,
}

impl Client {
    /// Connects to the metadata service at `meta` (`tcp://`, `rdma://` or `auto://host:port`,
    /// or `host:port`, meaning `auto://`) as the calling process.
    pub fn connect(meta: &str) -> Result<Client, Error> {
        Client::connect_with(meta, ClientOptions::default())
    }

    /// [`Client::connect`] with options.
    pub fn connect_with(meta: &str, options: ClientOptions) -> Result<Client, Error> {
        let endpoint = if meta.contains("://") {
            meta.to_string()
        } else {
            format!("auto://{meta}")
        };
        let link_options = ConnectOptions {
            connect_timeout: options.timeout,
            request_timeout: options.timeout,
        };
        let meta = MetaLink::new(&endpoint, link_options, options.connections_per_target)?;
        let client = Client {
            inner: Arc::new(Inner {
                meta,
                options,
                targets: RwLock::new(HashMap::new()),
                registrations: Mutex::new(Vec::new()),
                next_registration_id: AtomicU64::new(1),
                call_queues: Mutex::new(Vec::new()),
            }),
        };
        // Reach the service now, so a wrong address is an error here and not at first use.
        client.refresh_targets()?;
        Ok(client)
    }

    /// `mode` without the bits of the client's umask (which never clears setuid, setgid or
    /// sticky: it holds permission bits only).
    fn masked(&self, mode: u32) -> u32 {
        mode & !(self.inner.options.umask & 0o777)
    }

    /// The identity this client acts as.
    pub fn cred(&self) -> &Cred {
        &self.inner.options.cred
    }

    fn meta(&self, request: &MetaRequest) -> Result<Vec<u8>, Error> {
        self.inner.meta.call(&self.inner.options.cred, request)
    }

    /// Opens `path` on the metadata service: its attributes and, for an imported file, its
    /// HSM flags.
    fn open_attr(&self, path: &str, access: Access) -> Result<(Attr, RepoTail), Error> {
        let request = MetaRequest::Open {
            path: path.into(),
            access,
        };
        self.inner
            .meta
            .call_decode(&self.inner.options.cred, &request, |r| {
                Ok((Attr::decode(r)?, trailing_flags(r)?))
            })
    }

    /// Tells the metadata service that a handle on `path` (inode `ino`) that its start
    /// `instance` counted is closed, best effort (`wrote`: it was open for writing).
    fn closed_notice(&self, path: String, ino: u64, instance: u64, wrote: bool) {
        let request = MetaRequest::Closed {
            path,
            ino,
            instance,
            wrote,
        };
        if let Err(e) = self
            .inner
            .meta
            .call_decode(&self.inner.options.cred, &request, |r| r.u8("queued"))
        {
            nacre_transport::log_line!("nacre: close of {}: {e}", request.path());
        }
    }

    fn meta_attr(&self, request: &MetaRequest) -> Result<Attr, Error> {
        self.inner
            .meta
            .call_decode(&self.inner.options.cred, request, Attr::decode)
    }

    /// Every registered target, in id order.
    pub fn targets(&self) -> Result<Vec<TargetInfo>, Error> {
        self.listing(
            "targets",
            |last: Option<&TargetInfo>| MetaRequest::Targets {
                after: last.map(|t| t.target_id),
            },
            TargetInfo::decode,
        )
    }

    /// Every record of a listing the metadata service sends by pages: each request asks for
    /// the records after the last one received, until no more remain.
    fn listing<T>(
        &self,
        what: &'static str,
        request_after: impl Fn(Option<&T>) -> MetaRequest,
        decode: impl Fn(&mut Reader<'_>) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, Error> {
        let mut all = Vec::new();
        loop {
            let (page, more) = self.inner.meta.call_decode(
                &self.inner.options.cred,
                &request_after(all.last()),
                |r| decode_page(r, what, &decode),
            )?;
            let progressed = !page.is_empty();
            all.extend(page);
            // A page that brings nothing ends the listing, whatever it says.
            if !more || !progressed {
                return Ok(all);
            }
        }
    }

    fn refresh_targets(&self) -> Result<(), Error> {
        let targets = self.targets()?;
        let options = ConnectOptions {
            connect_timeout: self.inner.options.timeout,
            request_timeout: self.inner.options.timeout,
        };
        // Lock order, everywhere: registrations, then targets.
        let registrations = self.registrations();
        let mut map = self
            .inner
            .targets
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for t in targets {
            let current = map.get(&t.target_id);
            if current.is_some_and(|c| c.peer.endpoint().to_string() == t.endpoint) {
                continue;
            }
            let endpoint = Endpoint::parse(&t.endpoint)?;
            let peer = Peer::new(endpoint, options, self.inner.options.connections_per_target)?
                .for_target(t.target_id);
            for &(id, addr, len) in registrations.iter() {
                // SAFETY: the registration's owner keeps the memory valid until it is
                // unregistered, which unregisters it from this peer too: the peer is in the
                // map before the registrations lock is released.
                if let Err(e) = unsafe { peer.register_memory(id, addr as *mut u8, len) } {
                    nacre_transport::log_line!(
                        "nacre: target {}: memory stays unregistered: {e}",
                        t.target_id
                    );
                }
            }
            map.insert(
                t.target_id,
                Arc::new(TargetLink {
                    target_id: t.target_id,
                    peer,
                    over_rdma: AtomicBool::new(false),
                }),
            );
        }
        Ok(())
    }

    fn target(&self, target_id: u32) -> Result<Arc<TargetLink>, Error> {
        let known = |c: &Client| {
            c.inner
                .targets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&target_id)
                .cloned()
        };
        if let Some(t) = known(self) {
            return Ok(t);
        }
        self.refresh_targets()?;
        known(self).ok_or_else(|| Error::Invalid {
            field: "target_id",
            value: target_id.to_string(),
            allowed: "a target registered with the metadata service".into(),
        })
    }

    fn registrations(&self) -> std::sync::MutexGuard<'_, Vec<(u64, usize, usize)>> {
        self.inner
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `[ptr, ptr + len)` for zero-copy bulk with every target, now and as new
    /// ones appear, and returns the registration's id. Over RDMA, reads into and writes
    /// from registered memory move with no copy (the target's RDMA WRITE and READ reach it
    /// directly); other memory is staged through a buffer of the connection. Over TCP,
    /// bulk already moves straight between the socket and the caller's memory, so there is
    /// nothing to do and registering costs nothing.
    ///
    /// # Safety
    /// The memory must stay allocated until [`Client::unregister_memory`] with the returned
    /// id has returned, or the client (every clone of it) is dropped.
    pub unsafe fn register_memory(&self, ptr: *mut u8, len: usize) -> Result<u64, Error> {
        if ptr.is_null() {
            return Err(Error::Invalid {
                field: "memory",
                value: "NULL".into(),
                allowed: "a pointer to the caller's memory".into(),
            });
        }
        if len == 0 || len > MAX_REGISTER_BYTES {
            return Err(Error::Invalid {
                field: "length",
                value: len.to_string(),
                allowed: format!("1 to {MAX_REGISTER_BYTES} bytes"),
            });
        }
        let mut registrations = self.registrations();
        if registrations.len() >= MAX_REGISTRATIONS {
            return Err(Error::Invalid {
                field: "registrations",
                value: registrations.len().to_string(),
                allowed: format!("at most {MAX_REGISTRATIONS} at once; unregister some first"),
            });
        }
        let id = self
            .inner
            .next_registration_id
            .fetch_add(1, Ordering::Relaxed);
        let targets: Vec<Arc<TargetLink>> = self
            .inner
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for (i, t) in targets.iter().enumerate() {
            // SAFETY: the caller keeps the memory valid until it unregisters the id, which
            // unregisters it from every peer.
            if let Err(e) = unsafe { t.peer.register_memory(id, ptr, len) } {
                for done in &targets[..i] {
                    done.peer.unregister_memory(id);
                }
                return Err(t.fail(e));
            }
        }
        registrations.push((id, ptr as usize, len));
        Ok(id)
    }

    /// Drops registration `id` (from [`Client::register_memory`]); once this returns the
    /// memory may be freed. An unknown id is an error.
    pub fn unregister_memory(&self, id: u64) -> Result<(), Error> {
        let mut registrations = self.registrations();
        let Some(at) = registrations.iter().position(|r| r.0 == id) else {
            return Err(Error::Invalid {
                field: "registration",
                value: id.to_string(),
                allowed: "an id register_memory returned and not yet unregistered".into(),
            });
        };
        registrations.remove(at);
        for t in self
            .inner
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            t.peer.unregister_memory(id);
        }
        Ok(())
    }

    /// Bytes of bulk this client's idle connections copied through staging buffers (RDMA
    /// bulk outside registered memory; always 0 over TCP).
    pub fn staged_bytes(&self) -> u64 {
        self.inner
            .targets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|t| t.peer.staged_bytes())
            .sum()
    }

    /// Makes a directory with permission bits `mode` less the client's umask.
    pub fn mkdir(&self, path: &str, mode: u32) -> Result<Attr, Error> {
        self.meta_attr(&MetaRequest::Mkdir {
            path: path.into(),
            mode: self.masked(mode),
        })
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, path: &str) -> Result<(), Error> {
        self.meta(&MetaRequest::Rmdir { path: path.into() })
            .map(drop)
    }

    /// Removes a file (and its objects).
    pub fn unlink(&self, path: &str) -> Result<(), Error> {
        self.meta(&MetaRequest::Unlink { path: path.into() })
            .map(drop)
    }

    /// Renames `from` to `to`, replacing a file at `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), Error> {
        self.meta(&MetaRequest::Rename {
            from: from.into(),
            to: to.into(),
        })
        .map(drop)
    }

    /// Changes the permission bits of what `path` names (a symbolic link at its end is
    /// followed, as `chmod`).
    pub fn chmod(&self, path: &str, mode: u32) -> Result<(), Error> {
        self.meta(&MetaRequest::Chmod {
            path: path.into(),
            mode,
        })
        .map(drop)
    }

    /// Changes the owner and/or group of what `path` names (a symbolic link at its end is
    /// followed, as `chown`).
    pub fn chown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(), Error> {
        self.meta(&MetaRequest::Chown {
            path: path.into(),
            uid,
            gid,
            follow: true,
        })
        .map(drop)
    }

    /// Changes the owner and/or group of `path` itself, a symbolic link at its end not
    /// followed (`lchown`).
    pub fn lchown(&self, path: &str, uid: Option<u32>, gid: Option<u32>) -> Result<(), Error> {
        self.meta(&MetaRequest::Chown {
            path: path.into(),
            uid,
            gid,
            follow: false,
        })
        .map(drop)
    }

    /// Sets the access and modification times of what `path` names, as `utimensat`
    /// (`follow` false: a symbolic link at its end is changed itself, as
    /// `AT_SYMLINK_NOFOLLOW`). Both [`TimeSet::Now`] needs the owner or write permission;
    /// any time given, the owner.
    pub fn set_times(
        &self,
        path: &str,
        atime: TimeSet,
        mtime: TimeSet,
        follow: bool,
    ) -> Result<(), Error> {
        self.meta(&MetaRequest::SetTimes {
            path: path.into(),
            atime,
            mtime,
            follow,
        })
        .map(drop)
    }

    /// Attributes and size of what a path names, a symbolic link at its end followed
    /// (`stat`).
    pub fn stat(&self, path: &str) -> Result<Stat, Error> {
        let attr = self.meta_attr(&MetaRequest::Stat { path: path.into() })?;
        self.stat_of(attr)
    }

    /// Attributes and size of a path, a symbolic link at its end not followed (`lstat`: a
    /// link's size is its target's length).
    pub fn lstat(&self, path: &str) -> Result<Stat, Error> {
        let attr = self.attr(path)?;
        self.stat_of(attr)
    }

    /// The attributes of a path as the metadata service keeps them, without the size (a
    /// file's size comes from its targets, see [`Client::stat`]); a symbolic link at its
    /// end is not followed.
    pub fn attr(&self, path: &str) -> Result<Attr, Error> {
        self.meta_attr(&MetaRequest::Lookup { path: path.into() })
    }

    /// The size of what `attr` describes, asked of its targets, with the attributes.
    pub fn stat_of(&self, attr: Attr) -> Result<Stat, Error> {
        let size_bytes = match (&attr.layout, &attr.symlink) {
            (_, Some(target)) => target.len() as u64,
            (Some(layout), None) if attr.is_file() => self.glimpse(attr.ino, layout)?,
            _ => 0,
        };
        Ok(Stat { attr, size_bytes })
    }

    /// Makes a symbolic link at `path` naming `target` (`symlink(2)`: any text of 1 to
    /// 4095 bytes without NUL, resolved when the link is followed).
    pub fn symlink(&self, target: &str, path: &str) -> Result<Attr, Error> {
        self.meta_attr(&MetaRequest::Symlink {
            path: path.into(),
            target: target.into(),
        })
    }

    /// Makes `to` another name of the file or symbolic link at `from` (`link(2)`; a link at
    /// the end of `from` is linked itself): its attributes, one link more.
    pub fn link(&self, from: &str, to: &str) -> Result<Attr, Error> {
        self.meta_attr(&MetaRequest::Link {
            from: from.into(),
            to: to.into(),
        })
    }

    /// What the symbolic link at `path` names (`readlink(2)`); anything else →
    /// `EINVAL`.
    pub fn readlink(&self, path: &str) -> Result<String, Error> {
        let attr = self.attr(path)?;
        attr.symlink.ok_or_else(|| Error::Meta {
            op: "readlink",
            path: path.into(),
            errno: libc::EINVAL,
            message: format!("{path}: not a symbolic link"),
        })
    }

    /// Every entry of a directory, in name order.
    pub fn readdir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.listing(
            "entries",
            |last: Option<&DirEntry>| MetaRequest::Readdir {
                path: path.into(),
                after: last.map(|e| e.name.clone()),
                max: MAX_READDIR_ENTRIES as u32,
            },
            DirEntry::decode,
        )
    }

    /// Sets (or with `None` clears) a directory's default layout, which files created in it
    /// and directories made in it inherit.
    pub fn set_default_layout(&self, dir: &str, spec: Option<LayoutSpec>) -> Result<(), Error> {
        self.meta(&MetaRequest::SetDefaultLayout {
            path: dir.into(),
            spec,
        })
        .map(drop)
    }

    /// What `lfs setstripe` does: on a directory, sets its default layout; on a path that
    /// does not exist, creates an empty file with the layout.
    pub fn setstripe(&self, path: &str, spec: LayoutSpec, mode: u32) -> Result<Attr, Error> {
        match self.meta_attr(&MetaRequest::Stat { path: path.into() }) {
            Ok(attr) if attr.is_dir() => {
                self.set_default_layout(path, Some(spec))?;
                self.meta_attr(&MetaRequest::Stat { path: path.into() })
            }
            Ok(_) => Err(Error::Meta {
                op: "setstripe",
                path: path.into(),
                errno: libc::EEXIST,
                message: format!(
                    "{path}: the file exists; a file's layout is set when it is created"
                ),
            }),
            Err(e) if e.errno() == libc::ENOENT => {
                self.meta_attr(&MetaRequest::SetLayoutOnNewFile {
                    path: path.into(),
                    spec,
                    mode: self.masked(mode),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Creates (or truncates) a file for reading and writing, as `creat(2)` does but
    /// readable too.
    pub fn create(&self, path: &str, mode: u32, layout: Option<LayoutSpec>) -> Result<File, Error> {
        let mut options = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode);
        options.layout = layout;
        self.open(path, &options)
    }

    /// Opens a file; one it creates gets the options' mode less the client's umask.
    pub fn open(&self, path: &str, options: &OpenOptions) -> Result<File, Error> {
        let access = options.access()?;
        if options.truncate && access == Access::Read {
            return Err(Error::Invalid {
                field: "flags",
                value: "O_TRUNC with O_RDONLY".into(),
                allowed: "O_TRUNC with O_WRONLY or O_RDWR".into(),
            });
        }
        let (attr, created, hsm) = if options.create {
            let request = MetaRequest::Create {
                path: path.into(),
                mode: self.masked(options.mode.unwrap_or(DEFAULT_FILE_MODE)),
                exclusive: options.exclusive,
                layout: options.layout.clone(),
            };
            let (attr, created, hsm) =
                self.inner
                    .meta
                    .call_decode(&self.inner.options.cred, &request, |r| {
                        let attr = Attr::decode(r)?;
                        let created = r.u8("created")? == 1;
                        Ok((attr, created, trailing_flags(r)?))
                    })?;
            if !created && access != Access::Write {
                // An existing file: check the access asked for. The create's handle is not
                // used, nor was it written through.
                if let Some(instance) = hsm.notify_close {
                    self.closed_notice(path.into(), attr.ino, instance, false);
                }
                let (attr, hsm) = self.open_attr(path, access)?;
                (attr, false, hsm)
            } else {
                (attr, created, hsm)
            }
        } else {
            let (attr, hsm) = self.open_attr(path, access)?;
            (attr, false, hsm)
        };
        let layout = match file_layout(path, &attr) {
            Ok(layout) => layout,
            Err(e) => {
                if let Some(instance) = hsm.notify_close {
                    self.closed_notice(path.into(), attr.ino, instance, false);
                }
                return Err(e);
            }
        };
        let file = File {
            inner: Arc::new(FileInner {
                client: self.clone(),
                path: path.into(),
                attr,
                layout,
                access,
                hsm: AtomicU32::new(hsm.flags),
                mover: false,
                notify_close: hsm.notify_close,
            }),
        };
        if options.truncate && !created {
            file.truncate(0)?;
        }
        Ok(file)
    }

    /// The size of file `ino` its objects imply: every object's size, asked of every target
    /// at once.
    fn glimpse(&self, ino: u64, layout: &Layout) -> Result<u64, Error> {
        let per_target = layout.objects_by_target(ino)?;
        let requests = whole_object_requests(&per_target, |_, _| 0);
        let replies = self.plain_requests(Opcode::Stat, "stat", &requests)?;
        let mut sizes = Vec::new();
        for ((_, objects), body) in per_target.iter().zip(replies) {
            for (i, o) in objects.iter().enumerate() {
                let size_bytes = u64_at(&body, i).unwrap_or(0);
                sizes.push(ObjectSize {
                    component: o.component,
                    stripe: o.stripe,
                    size_bytes,
                });
            }
        }
        Ok(layout.file_size(&sizes)?)
    }

    /// Sends a request without payload to each target at once and returns each reply body.
    fn plain_requests(
        &self,
        opcode: Opcode,
        op: &'static str,
        requests: &[(u32, Vec<Extent>)],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let batches: Vec<Batch> = requests
            .iter()
            .flat_map(|(t, extents)| {
                extents
                    .chunks(MAX_EXTENTS_PER_REQUEST)
                    .map(|chunk| Batch {
                        target_id: *t,
                        extents: chunk.to_vec(),
                        memory: Vec::new(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let bodies = self.run_batches(opcode, op, &batches)?;
        // Put the bodies of one target's batches back together.
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(requests.len());
        let mut at = 0;
        for (_, extents) in requests {
            let mut body = Vec::new();
            for _ in 0..extents.len().div_ceil(MAX_EXTENTS_PER_REQUEST).max(1) {
                if let Some(b) = bodies.get(at) {
                    body.extend_from_slice(b);
                }
                at += 1;
            }
            out.push(body);
        }
        Ok(out)
    }

    /// Runs every batch: sends all requests first (pipelined over TCP), then takes the
    /// replies. Returns each batch's reply body; the first failure is the error, after every
    /// reply still owed has been taken (so no connection goes back to its pool mid-reply).
    /// (A pool hands out no idle connection its peer closed: see `Peer::checkout`.)
    fn run_batches(
        &self,
        opcode: Opcode,
        op: &'static str,
        batches: &[Batch],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let mut links = Vec::with_capacity(batches.len());
        for b in batches {
            links.push(self.target(b.target_id)?);
        }
        // One connection per target, reused for all of its batches.
        let mut conns: BTreeMap<u32, nacre_transport::client::PooledConnection<'_>> =
            BTreeMap::new();
        let mut first_error: Option<Error> = None;
        let mut bodies: Vec<Vec<u8>> = vec![Vec::new(); batches.len()];
        let mut pending: Vec<(usize, u64)> = Vec::new();
        let mut rdma_calls: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut body = Vec::new();
        for (i, b) in batches.iter().enumerate() {
            let link = &links[i];
            let conn = match conns.entry(b.target_id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => match link.peer.checkout() {
                    Ok(c) => v.insert(c),
                    Err(e) => {
                        first_error.get_or_insert(link.fail(e));
                        continue;
                    }
                },
            };
            if conn.is_broken() {
                continue;
            }
            if conn.kind() == Kind::Tcp {
                body.clear();
                encode_extents(&b.extents, &mut body);
                let send_slices = send_slices(b, opcode);
                match conn.send_request(opcode, &body, &send_slices) {
                    Ok(id) => pending.push((i, id)),
                    Err(e) => {
                        first_error.get_or_insert(link.fail(e));
                    }
                }
            } else {
                // RDMA carries one call at a time per connection: each target's calls run
                // in turn, and the targets at once (below).
                rdma_calls.entry(b.target_id).or_default().push(i);
            }
        }
        let rdma_results = run_rdma_calls(opcode, op, batches, &links, &mut conns, &rdma_calls);
        for (i, result) in rdma_results {
            match result {
                Ok(reply_body) => bodies[i] = reply_body,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for (i, id) in pending {
            let b = &batches[i];
            let link = &links[i];
            let Some(conn) = conns.get_mut(&b.target_id) else {
                continue;
            };
            let mut dests = recv_slices(b, opcode);
            match conn.recv_reply(id, &mut bodies[i], &mut dests) {
                Ok(r) if r.status == 0 => {}
                Ok(r) => {
                    first_error.get_or_insert(link.reply_error(op, r.status, &bodies[i]));
                }
                Err(e) => {
                    first_error.get_or_insert(link.fail(e));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(bodies),
        }
    }

    /// Reads or writes `[offset, offset + len)` of a file between its objects and `memory`
    /// (the caller's buffers in order). Returns, for a read, whether every extent was whole.
    fn transfer(
        &self,
        file: &FileInner,
        opcode: Opcode,
        offset: u64,
        memory: &[Span],
    ) -> Result<bool, Error> {
        let len: u64 = memory.iter().map(|s| s.len as u64).sum();
        let extents: Vec<ObjectExtent> = file.layout.extents(file.attr.ino, offset, len)?.collect();
        let batches = make_batches(&extents, memory);
        let op = if opcode == Opcode::Read {
            "read"
        } else {
            "write"
        };
        let bodies = self.run_batches(opcode, op, &batches)?;
        if opcode != Opcode::Read {
            return Ok(true);
        }
        let whole = batches.iter().zip(&bodies).all(|(b, body)| {
            let lens: Vec<u64> = b.extents.iter().map(|e| e.len).collect();
            extents_whole(&lens, body)
        });
        Ok(whole)
    }

    /// The transport this client's connections to a target use (connecting if needed).
    pub fn target_transport(&self, target_id: u32) -> Result<Kind, Error> {
        let link = self.target(target_id)?;
        let conn = link.peer.checkout().map_err(|e| link.fail(e))?;
        Ok(conn.kind())
    }

    /// Each registered target's size and use, asked of the target itself.
    pub fn df(&self) -> Result<Vec<TargetUsage>, Error> {
        let targets = self.targets()?;
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let asked = self.target(t.target_id).and_then(|link| {
                let body = link
                    .peer
                    .with_connection(|c| Ok(link.call_plain(c, Opcode::Statfs, "statfs")))
                    .map_err(|e| link.fail(e))??;
                let mut r = Reader::new(&body, "statfs reply");
                let decoded = (|| {
                    let _id = r.u32("target_id")?;
                    let _uuid = r.str("uuid", crate::meta::types::MAX_TARGET_UUID_BYTES)?;
                    Ok(LiveUsage {
                        capacity_bytes: r.u64("capacity_bytes")?,
                        available_bytes: r.u64("available_bytes")?,
                        used_bytes: r.u64("used_bytes")?,
                    })
                })();
                decoded.map_err(|source| Error::Codec {
                    from: format!("target {}", t.target_id),
                    source,
                })
            });
            let (live, error) = match asked {
                Ok(l) => (Some(l), None),
                Err(e) => (None, Some(e.to_string())),
            };
            out.push(TargetUsage {
                target_id: t.target_id,
                uuid: t.uuid,
                endpoint: t.endpoint,
                pools: t.pools,
                live,
                error,
            });
        }
        Ok(out)
    }

    /// Opens an asynchronous queue of up to `depth` operations in flight.
    pub fn queue(&self, depth: usize) -> Result<Queue, Error> {
        Queue::new(depth, self.inner.options.progress_threads)
    }

    /// A queue of depth 1 for one blocking call: an idle one, or a new one.
    fn call_queue(&self) -> Result<Queue, Error> {
        let idle = self
            .inner
            .call_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        match idle {
            Some(q) => Ok(q),
            // It runs nothing on progress threads: what it cannot carry runs in the call.
            None => Queue::new(1, 1),
        }
    }

    /// Keeps a call's queue (and its connections) for the next call, unless enough are
    /// idle already.
    fn put_back(&self, queue: Queue) {
        let mut idle = self
            .inner
            .call_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_CALL_QUEUES {
            idle.push(queue);
        }
    }
}

fn u64_at(body: &[u8], i: usize) -> Option<u64> {
    let bytes = body.get(i * 8..i * 8 + 8)?;
    let mut r = Reader::new(bytes, "reply");
    r.u64("value").ok()
}

/// The calls of `calls` (batch indexes per target) over RDMA connections: each target's in
/// turn on its connection, the targets at once (a scoped thread per target when there are
/// several). Returns each batch's reply body or error.
fn run_rdma_calls(
    opcode: Opcode,
    op: &'static str,
    batches: &[Batch],
    links: &[Arc<TargetLink>],
    conns: &mut BTreeMap<u32, nacre_transport::client::PooledConnection<'_>>,
    calls: &BTreeMap<u32, Vec<usize>>,
) -> Vec<(usize, Result<Vec<u8>, Error>)> {
    let one_target = |conn: &mut nacre_transport::client::Connection, indexes: &[usize]| {
        let mut out = Vec::with_capacity(indexes.len());
        let mut body = Vec::new();
        for &i in indexes {
            let b = &batches[i];
            let link = &links[i];
            body.clear();
            encode_extents(&b.extents, &mut body);
            let send_slices = send_slices(b, opcode);
            let mut dests = recv_slices(b, opcode);
            let bulk = match opcode {
                Opcode::Write => Bulk::Send(&send_slices),
                Opcode::Read => Bulk::Recv(&mut dests),
                _ => Bulk::None,
            };
            let mut reply_body = Vec::new();
            let result = match conn.call(opcode, &body, bulk, &mut reply_body) {
                Ok(r) if r.status == 0 => Ok(reply_body),
                Ok(r) => Err(link.reply_error(op, r.status, &reply_body)),
                Err(e) => Err(link.fail(e)),
            };
            let failed = result.is_err();
            out.push((i, result));
            if failed {
                // The connection may be broken; the target's later batches are not tried.
                break;
            }
        }
        out
    };
    let mut work: Vec<(&mut nacre_transport::client::Connection, &[usize])> = conns
        .iter_mut()
        .filter_map(|(t, conn)| calls.get(t).map(|i| (&mut **conn, i.as_slice())))
        .collect();
    if work.len() <= 1 {
        return work
            .pop()
            .map(|(conn, indexes)| one_target(conn, indexes))
            .unwrap_or_default();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .into_iter()
            .map(|(conn, indexes)| (indexes, scope.spawn(move || one_target(conn, indexes))))
            .collect();
        handles
            .into_iter()
            .flat_map(|(indexes, h)| {
                h.join().unwrap_or_else(|_| {
                    // A panic in a call: fail its target's batches rather than lose them.
                    let failed = Error::Server {
                        what: "client".into(),
                        reason: "an RDMA call panicked".into(),
                    };
                    vec![(indexes[0], Err(failed))]
                })
            })
            .collect()
    })
}

fn send_slices<'a>(b: &Batch, opcode: Opcode) -> Vec<IoSlice<'a>> {
    if opcode != Opcode::Write {
        return Vec::new();
    }
    b.memory
        .iter()
        // SAFETY: the caller's memory, valid for reads for the call (see File::write_at).
        .map(|s| IoSlice::new(unsafe { std::slice::from_raw_parts(s.ptr, s.len) }))
        .collect()
}

fn recv_slices<'a>(b: &Batch, opcode: Opcode) -> Vec<IoSliceMut<'a>> {
    if opcode != Opcode::Read {
        return Vec::new();
    }
    b.memory
        .iter()
        // SAFETY: the caller's memory, valid for writes for the call and not touched by
        // anyone else meanwhile (see File::read_at); the extents' pieces do not overlap.
        .map(|s| IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(s.ptr, s.len) }))
        .collect()
}

/// Groups extents by target into requests within the message limits, and finds each
/// extent's bytes in the caller's memory (the layout crate's planner, [`plan_requests`]).
fn make_batches(extents: &[ObjectExtent], memory: &[Span]) -> Vec<Batch> {
    let map = MemoryMap::new(memory.iter().map(|s| s.len));
    let bounds = RequestBounds {
        max_extents: MAX_EXTENTS_PER_REQUEST,
        max_bytes: MAX_PAYLOAD_BYTES,
    };
    plan_requests(extents.iter().copied(), bounds)
        .into_iter()
        .map(|r| Batch {
            target_id: r.target_id,
            memory: r
                .extents
                .iter()
                .flat_map(|e| map.pieces(e.buf_offset, e.len))
                .map(|p| memory[p.segment].piece(p.offset, p.len))
                .collect(),
            extents: r
                .extents
                .iter()
                .map(|e| Extent {
                    object_id: e.object_id,
                    offset_bytes: e.object_offset,
                    len: e.len,
                })
                .collect(),
        })
        .collect()
}

impl File {
    /// The path it was opened by.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The attributes it was opened with.
    pub fn attr(&self) -> &Attr {
        &self.inner.attr
    }

    /// Its layout.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The HSM flags last heard for the file (0 for a file never imported).
    pub fn hsm_flags(&self) -> u32 {
        self.inner.hsm.load(Ordering::Acquire)
    }

    /// Makes `len` bytes at `offset` present on the targets when the file is released:
    /// the metadata service fetches the chunks missing from the file's data repository (each
    /// once, however many clients ask), in requests of at most [`HYDRATE_REQUEST_BYTES`].
    /// Nothing to do for a file not released, or for the mover's own handle.
    pub(crate) fn make_present(&self, offset: u64, len: u64) -> Result<(), Error> {
        if self.inner.mover || self.hsm_flags() & HS_RELEASED == 0 || len == 0 {
            return Ok(());
        }
        let end = offset.saturating_add(len);
        let mut at = offset;
        while at < end && self.hsm_flags() & HS_RELEASED != 0 {
            let piece = (end - at).min(HYDRATE_REQUEST_BYTES);
            let request = MetaRequest::Hydrate {
                path: self.inner.path.clone(),
                ino: self.inner.attr.ino,
                offset: at,
                len: piece,
            };
            let client = &self.inner.client.inner;
            let flags = client
                .meta
                .call_decode(&client.options.cred, &request, |r| r.u32("hsm flags"))?;
            self.inner.hsm.store(flags, Ordering::Release);
            at += piece;
        }
        Ok(())
    }

    fn check(&self, want_write: bool) -> Result<(), Error> {
        let ok = match self.inner.access {
            Access::Read => !want_write,
            Access::Write => want_write,
            Access::ReadWrite => true,
        };
        if !ok {
            return Err(Error::BadHandle {
                what: self.inner.path.clone(),
                reason: if want_write {
                    "not open for writing"
                } else {
                    "not open for reading"
                },
            });
        }
        Ok(())
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file. Holes
    /// read as zeros.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, Error> {
        let seg = [Span {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }];
        // The segment is `buf`, borrowed mutably for the call.
        self.read_segments(&seg, offset).map(|n| n as usize)
    }

    /// Reads into several buffers in order, as `preadv(2)`.
    pub fn readv_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Result<usize, Error> {
        let segs: Vec<Span> = bufs
            .iter_mut()
            .map(|b| Span {
                ptr: b.as_mut_ptr(),
                len: b.len(),
            })
            .collect();
        self.read_segments(&segs, offset).map(|n| n as usize)
    }

    fn read_segments(&self, segs: &[Span], offset: u64) -> Result<u64, Error> {
        self.call(false, segs, offset)
    }

    /// A blocking read or write of `memory` at `offset`: one operation on a queue of the
    /// client's, waited for; when some target is reached over RDMA, the blocking
    /// connections' path ([`File::call_direct`]).
    fn call(&self, write: bool, memory: &[Span], offset: u64) -> Result<u64, Error> {
        self.check(write)?;
        if memory.iter().all(|s| s.len == 0) {
            return Ok(0);
        }
        let client = &self.inner.client;
        let queue = client.call_queue()?;
        // SAFETY: `memory` is the caller's, borrowed for this call (mutably for a read),
        // and `Queue::call` returns only once the operation has ended.
        let done = unsafe { queue.call(self, write, offset, memory) };
        client.put_back(queue);
        match done {
            Some(result) => result,
            None => self.call_direct(write, memory, offset),
        }
    }

    /// A blocking read or write over the client's pooled blocking connections (RDMA, and
    /// the queues' progress threads).
    pub(crate) fn call_direct(
        &self,
        write: bool,
        memory: &[Span],
        offset: u64,
    ) -> Result<u64, Error> {
        self.check(write)?;
        let len: u64 = memory.iter().map(|s| s.len as u64).sum();
        if len == 0 {
            return Ok(0);
        }
        File::check_range(offset, len)?;
        self.make_present(offset, len)?;
        let client = &self.inner.client;
        let opcode = if write { Opcode::Write } else { Opcode::Read };
        if client.transfer(&self.inner, opcode, offset, memory)? || write {
            return Ok(len);
        }
        self.short_read(offset, len)
    }

    /// Refuses a range that ends past [`MAX_FILE_BYTES`], naming it (the layout would map
    /// it, and the targets' file systems refuse it with less to go on).
    fn check_range(offset: u64, len: u64) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= MAX_FILE_BYTES => Ok(()),
            _ => Err(past_largest_file(
                "range",
                format!("{len} bytes at {offset}"),
            )),
        }
    }

    /// What a read of `len` bytes at `offset` gave when some extent came back short: the
    /// file ends inside the range, or the range has holes past some object's end. The
    /// file's size says which.
    pub(crate) fn short_read(&self, offset: u64, len: u64) -> Result<u64, Error> {
        let size = self.size()?;
        Ok(size.saturating_sub(offset).min(len))
    }

    /// How long each request of this file's client may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.client.inner.options.timeout
    }

    /// Plans a read (into) or write (from) the caller's `memory` (in order) at `offset` of
    /// the file: one request per target batch.
    pub(crate) fn plan(
        &self,
        write: bool,
        offset: u64,
        memory: &[Span],
    ) -> Result<Vec<Planned>, Error> {
        self.check(write)?;
        let inner = &self.inner;
        let len: u64 = memory.iter().map(|s| s.len as u64).sum();
        File::check_range(offset, len)?;
        let extents: Vec<ObjectExtent> =
            inner.layout.extents(inner.attr.ino, offset, len)?.collect();
        let batches = make_batches(&extents, memory);
        let mut planned = Vec::with_capacity(batches.len());
        for b in batches {
            let mut body = Vec::new();
            encode_extents(&b.extents, &mut body);
            planned.push(Planned {
                link: inner.client.target(b.target_id)?,
                body,
                extent_lens: b.extents.iter().map(|e| e.len).collect(),
                memory: b.memory,
            });
        }
        Ok(planned)
    }

    /// Writes all of `buf` at `offset`; returns its length.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<usize, Error> {
        let seg = [Span {
            ptr: buf.as_ptr().cast_mut(),
            len: buf.len(),
        }];
        // Only read through: a write's payload is sent from the segment.
        self.write_segments(&seg, offset).map(|n| n as usize)
    }

    /// Writes several buffers in order, as `pwritev(2)`.
    pub fn writev_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> Result<usize, Error> {
        let segs: Vec<Span> = bufs
            .iter()
            .map(|b| Span {
                ptr: b.as_ptr().cast_mut(),
                len: b.len(),
            })
            .collect();
        self.write_segments(&segs, offset).map(|n| n as usize)
    }

    fn write_segments(&self, segs: &[Span], offset: u64) -> Result<u64, Error> {
        self.call(true, segs, offset)
    }

    fn objects_per_target(
        &self,
        offset_of: impl Fn(u16, u32) -> u64,
    ) -> Result<Vec<(u32, Vec<Extent>)>, Error> {
        let per_target = self.inner.layout.objects_by_target(self.inner.attr.ino)?;
        Ok(whole_object_requests(&per_target, offset_of))
    }

    /// Makes every byte written to the file durable on its targets.
    pub fn sync(&self) -> Result<(), Error> {
        let requests = self.objects_per_target(|_, _| 0)?;
        self.inner
            .client
            .plain_requests(Opcode::Sync, "sync", &requests)
            .map(drop)
    }

    /// The file's size, from its objects.
    pub fn size(&self) -> Result<u64, Error> {
        self.inner
            .client
            .glimpse(self.inner.attr.ino, &self.inner.layout)
    }

    /// Attributes and size.
    pub fn stat(&self) -> Result<Stat, Error> {
        Ok(Stat {
            attr: self.inner.attr.clone(),
            size_bytes: self.size()?,
        })
    }

    /// Sets the file's size: cuts it, or extends it with a hole.
    ///
    /// The object that holds the new last byte carries the size: it is set first, alone,
    /// and the other objects only once it is. A truncate that fails part way (a target
    /// gone) then leaves the file between its old size and the new one. Had every object
    /// been set at once, a carrier left at its old size when its end was a hole (shorter
    /// than its new size) while the others were cut would leave the file shorter than
    /// both: found by the crash-point test.
    pub fn truncate(&self, size_bytes: u64) -> Result<(), Error> {
        self.check(true)?;
        if size_bytes > MAX_FILE_BYTES {
            return Err(past_largest_file("size", size_bytes.to_string()));
        }
        // A released file is all made present first: its chunks past a new end would be
        // fetched later and extend it again.
        if self.hsm_flags() & HS_RELEASED != 0 {
            let size = self.size()?;
            self.make_present(0, size)?;
        }
        let inner = &self.inner;
        let layout = &inner.layout;
        let mut requests = self.objects_per_target(|c, s| layout.object_size(c, s, size_bytes))?;
        let carrier = match size_bytes.checked_sub(1) {
            Some(last) => layout.extents(inner.attr.ino, last, 1)?.next(),
            None => None,
        };
        if let Some(carrier) = carrier {
            let mut first = Vec::new();
            for (t, extents) in &mut requests {
                if *t == carrier.target_id
                    && let Some(at) = extents
                        .iter()
                        .position(|e| e.object_id == carrier.object_id)
                {
                    first.push((*t, vec![extents.remove(at)]));
                }
            }
            requests.retain(|(_, extents)| !extents.is_empty());
            inner
                .client
                .plain_requests(Opcode::Truncate, "truncate", &first)?;
        }
        inner
            .client
            .plain_requests(Opcode::Truncate, "truncate", &requests)
            .map(drop)
    }

    /// Closes the handle (dropping the last clone does the same; nothing is buffered).
    pub fn close(self) {}
}

/// The layout of the file `attr` at `path`; a directory has none (`EISDIR`).
/// The refusal of a range or size that ends past [`MAX_FILE_BYTES`].
fn past_largest_file(field: &'static str, value: String) -> Error {
    Error::Invalid {
        field,
        value,
        allowed: format!("an end at most {MAX_FILE_BYTES} (2^63 - 1, off_t's largest)"),
    }
}

fn file_layout(path: &str, attr: &Attr) -> Result<Layout, Error> {
    attr.layout.clone().ok_or_else(|| Error::Meta {
        op: "open",
        path: path.into(),
        errno: libc::EISDIR,
        message: format!("{path} is a directory"),
    })
}

/// What an open's reply ends with for a file of a data repository.
#[derive(Debug, Clone, Copy, Default)]
struct RepoTail {
    /// The HSM flags of a file imported or exported (0 for another).
    flags: u32,
    /// The file lies under an association: the metadata service (this start of it) counts
    /// the handle open and wants to hear when it is closed.
    notify_close: Option<u64>,
}

/// The end of an open's reply: nothing, the HSM flags, or the flags and the close notice
/// (a byte 1 and the service's start).
fn trailing_flags(r: &mut Reader<'_>) -> Result<RepoTail, CodecError> {
    if r.remaining() == 0 {
        return Ok(RepoTail::default());
    }
    let flags = r.u32("hsm flags")?;
    let notify_close = match r.remaining() {
        0 => None,
        _ => match r.u8("close notice")? {
            1 => Some(r.u64("instance")?),
            v => return Err(r.bad_value("close notice", u64::from(v), "1")),
        },
    };
    Ok(RepoTail {
        flags,
        notify_close,
    })
}

/// A page of records as the metadata service sends them: a count, the records, and whether
/// more remain. Each record takes at least a byte, so the count is bounded by the body.
fn decode_page<T>(
    r: &mut Reader<'_>,
    what: &'static str,
    decode: impl Fn(&mut Reader<'_>) -> Result<T, CodecError>,
) -> Result<(Vec<T>, bool), CodecError> {
    let n = r.count(
        what,
        MAX_READDIR_ENTRIES.max(nacre_transport::limits::MAX_BODY_BYTES as usize),
        1,
    )?;
    let records = (0..n).map(|_| decode(r)).collect::<Result<Vec<T>, _>>()?;
    let more = match r.u8("more")? {
        0 => false,
        1 => true,
        v => return Err(r.bad_value("more", u64::from(v), "0 or 1")),
    };
    Ok((records, more))
}

/// The objects of a file on each target, by target id ([`Layout::objects_by_target`]).
pub(crate) type ObjectsByTarget = BTreeMap<u32, Vec<LayoutObject>>;

/// Requests about whole objects: per target, one extent per object, at the offset
/// `offset_of(component, stripe)` gives (a truncate's new size; 0 otherwise).
pub(crate) fn whole_object_requests(
    per_target: &ObjectsByTarget,
    offset_of: impl Fn(u16, u32) -> u64,
) -> Vec<(u32, Vec<Extent>)> {
    per_target
        .iter()
        .map(|(&t, objects)| {
            let extents = objects
                .iter()
                .map(|o| Extent {
                    object_id: o.object_id,
                    offset_bytes: offset_of(o.component, o.stripe),
                    len: OBJECT_ONLY_LEN,
                })
                .collect();
            (t, extents)
        })
        .collect()
}
